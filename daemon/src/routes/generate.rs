//! `POST /sdapi/v1/txt2img` and `/img2img`: parse → validate (blocking pool) → queue → await
//! the engine → encode and save (blocking pool) → respond (a1111-api.md §3, §4, §8).

use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpResponse, ResponseError};
use compat::api::error::parse_body;
use compat::api::{pyjson, GenerationInfo, Img2ImgRequest, Txt2ImgRequest, Txt2ImgResponse};
use serde_json::{Map, Value};

use super::blocking;
use crate::catalog::CheckpointEntry;
use crate::engine::job::{GeneratedImage, GenerationJob, GenerationMode};
use crate::engine::{JobKind, JobOutput, Submission};
use crate::error::ApiError;
use crate::images::{self, ImageFormat};
use crate::options::OptionView;
use crate::validate::{self, ValidateContext, ValidatedJob, VERSION};
use crate::AppState;

/// Every generation response names its job, success or not, so a client (or a test) can tell
/// which job an answer belongs to.
const TASK_ID_HEADER: &str = "x-task-id";

pub async fn txt2img(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let parsed = parse_body::<Txt2ImgRequest>(&body).map_err(ApiError::Validation);
    let state2 = state.clone();
    respond(
        state,
        async move {
            let req = parsed?;
            blocking(move || with_context(&state2, |ctx| validate::txt2img(&req, ctx))).await
        }
        .await,
    )
    .await
}

pub async fn img2img(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let parsed = parse_body::<Img2ImgRequest>(&body).map_err(ApiError::Validation);
    let state2 = state.clone();
    respond(
        state,
        async move {
            let req = parsed?;
            blocking(move || with_context(&state2, |ctx| validate::img2img(&req, ctx))).await
        }
        .await,
    )
    .await
}

fn with_context<T>(state: &AppState, f: impl FnOnce(&ValidateContext) -> T) -> T {
    let snapshot = state.catalog.snapshot();
    let selected = state.selected_entry();
    let catalog = state.catalog.clone();
    let file_hash = move |p: &std::path::Path| catalog.file_sha256(p).ok();
    let ctx = ValidateContext {
        catalog: &snapshot,
        options: state.options.all(),
        selected: selected.as_ref(),
        lora_dir: &state.config.lora_dir(),
        embeddings_dir: &state.config.embeddings_dir(),
        file_hash: &file_hash,
    };
    f(&ctx)
}

async fn respond(state: web::Data<AppState>, validated: Result<ValidatedJob, ApiError>) -> HttpResponse {
    let validated = match validated {
        Ok(v) => v,
        Err(e) => return e.error_response(),
    };
    let task_id = validated.task_id.clone();
    let mut response = match run(state, validated).await {
        Ok(r) => r,
        Err(e) => e.error_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&task_id) {
        response.headers_mut().insert(HeaderName::from_static(TASK_ID_HEADER), v);
    }
    response
}

async fn run(state: web::Data<AppState>, v: ValidatedJob) -> Result<HttpResponse, ApiError> {
    if v.restore_faces_ignored {
        tracing::warn!(task = %v.task_id, "face restoration requested, but no face restorer is available");
    }
    let job = Arc::new(v.job);
    let submitted = state
        .engine
        .submit(Submission {
            kind: JobKind::Generate(job.clone()),
            checkpoint: Some(v.checkpoint.reference()),
            task_id: v.task_id.clone(),
            keep_if_abandoned: v.save_images,
        })
        .await?;
    let job_timestamp = chrono::Local::now().format("%Y%m%d%H%M%S").to_string();
    let outcome = submitted.outcome.await.map_err(|_| ApiError::EngineStopped)?;
    let images = match outcome? {
        JobOutput::Images(images) => images,
        other => return Err(ApiError::Runtime(format!("the engine answered a generation with {other:?}"))),
    };

    // The checkpoint was just used; hash it in the background if that has not happened yet, so
    // its title becomes `name [hash]` as in A1111.
    if v.checkpoint.sha256.is_none() && v.checkpoint.path.is_file() {
        let (catalog, path) = (state.catalog.clone(), v.checkpoint.path.clone());
        actix_web::rt::spawn(async move {
            if let Ok(Err(e)) = web::block(move || catalog.hash_checkpoint(&path)).await {
                tracing::warn!(cause = %e, "could not hash checkpoint");
            }
        });
    }
    if !v.persist_overrides.is_empty() {
        let (state, changes) = (state.clone(), v.persist_overrides.clone());
        blocking(move || state.options.set(changes).map_err(|e| ApiError::Runtime(e.to_string()))).await?;
    }

    let inpainting = state.engine.status().unet_in_channels == Some(9) && job.mode == GenerationMode::Img2Img;
    let info = generation_info(&job, &v.checkpoint, &images, job_timestamp, inpainting);
    let names = NameContext::new(&job, &v.checkpoint);
    let output = Output {
        options: v.options,
        data_dir: state.config.data_dir.clone(),
        mode: job.mode,
        send_images: v.send_images,
        save_images: v.save_images,
        names,
    };
    let state2 = state.clone();
    let encoded = blocking(move || output.write(&images, &state2.save_lock)).await?;
    let body = Txt2ImgResponse { images: encoded, parameters: v.parameters, info: pyjson::to_string(&info) };
    Ok(HttpResponse::Ok().json(body))
}

fn generation_info(
    job: &GenerationJob,
    checkpoint: &CheckpointEntry,
    images: &[GeneratedImage],
    job_timestamp: String,
    inpainting: bool,
) -> GenerationInfo {
    let mut extra = Map::new();
    if job.scheduler != "Automatic" {
        extra.insert("Schedule type".into(), Value::from(job.scheduler.clone()));
    }
    let (seed_resize_w, seed_resize_h) = job.seed_resize_from.map_or((-1, -1), |(w, h)| (w as i64, h as i64));
    GenerationInfo {
        prompt: job.prompts.first().cloned().unwrap_or_default(),
        all_prompts: job.prompts.clone(),
        negative_prompt: job.negative_prompts.first().cloned().unwrap_or_default(),
        all_negative_prompts: job.negative_prompts.clone(),
        seed: job.seeds.first().copied().unwrap_or(-1),
        all_seeds: job.seeds.clone(),
        subseed: job.subseeds.first().copied().unwrap_or(-1),
        all_subseeds: job.subseeds.clone(),
        subseed_strength: job.subseed_strength,
        width: job.width as i64,
        height: job.height as i64,
        sampler_name: job.sampler.clone(),
        cfg_scale: job.cfg_scale,
        steps: job.steps as i64,
        batch_size: job.batch_size as i64,
        restore_faces: false,
        face_restoration_model: None,
        sd_model_name: Some(checkpoint.stem()),
        sd_model_hash: checkpoint.short_hash().map(str::to_string),
        sd_vae_name: job.infotext.vae_name.clone(),
        sd_vae_hash: job.infotext.vae_hash.clone(),
        seed_resize_from_w: seed_resize_w,
        seed_resize_from_h: seed_resize_h,
        denoising_strength: job.denoising_strength,
        extra_generation_params: extra,
        index_of_first_image: 0,
        infotexts: images.iter().map(|i| i.infotext.clone()).collect(),
        styles: job.styles.clone(),
        job_timestamp,
        clip_skip: job.clip_skip as i64,
        is_using_inpainting_conditioning: inpainting,
        version: Some(VERSION.to_string()),
    }
}

/// How a job's images leave the daemon: encoded into the response and, with `save_images`,
/// written under `outputs/` (a1111-api.md §8.1–8.2).
struct Output {
    options: Map<String, Value>,
    data_dir: std::path::PathBuf,
    mode: GenerationMode,
    send_images: bool,
    save_images: bool,
    /// What `samples_filename_pattern` tokens are filled from.
    names: NameContext,
}

impl Output {
    /// Encodes (and saves) every image; returns the base64 strings for the response.
    fn write(
        &self,
        images: &[GeneratedImage],
        save_lock: &std::sync::Mutex<()>,
    ) -> Result<Vec<String>, ApiError> {
        let view = OptionView(&self.options);
        let format = ImageFormat::from_option(&view.string("samples_format"));
        let with_info = view.bool("enable_pnginfo");
        let quality = view.i64("jpeg_quality").clamp(1, 100) as u8;
        let encode_err = |e: images::ImageError| ApiError::Runtime(e.to_string());
        let mut out = Vec::new();
        for (index, image) in images.iter().enumerate() {
            let rgb = crate::engine::job::RgbImage {
                width: image.width,
                height: image.height,
                rgb: image.rgb.clone(),
            };
            let texts: &[(&str, &str)] = if with_info && !image.infotext.is_empty() {
                &[("parameters", image.infotext.as_str())]
            } else {
                &[]
            };
            let bytes = images::encode(&rgb, format, texts, quality).map_err(encode_err)?;
            if self.save_images {
                let dir = self.samples_dir(&view);
                // A1111's defaults when the pattern option is empty.
                let pattern = match view.string("samples_filename_pattern") {
                    p if !p.trim().is_empty() => p,
                    _ if view.bool("save_to_dirs") => "[seed]".to_string(),
                    _ => "[seed]-[prompt_spaces]".to_string(),
                };
                let words = view.i64("directories_max_prompt_words").max(1) as usize;
                let mut stem = self.names.apply(&pattern, image, index, words);
                if stem.is_empty() {
                    stem = image.seed.to_string();
                }
                let path = images::save_numbered(&dir, &stem, format.extension(), &bytes, save_lock)
                    .map_err(|e| ApiError::Runtime(format!("saving to {}: {e}", dir.display())))?;
                tracing::info!(file = %path.display(), "image saved");
            }
            if self.send_images {
                out.push(images::encode_base64(&bytes));
            }
        }
        // A1111 rewrites params.txt with the first infotext after every job.
        if let Some(first) = images.first().filter(|i| !i.infotext.is_empty()) {
            if let Err(e) =
                crate::fsutil::write_atomic(&self.data_dir.join("params.txt"), first.infotext.as_bytes())
            {
                tracing::warn!(cause = %e, "could not write params.txt");
            }
        }
        Ok(out)
    }

    /// `outdir_*_samples` (relative to the data folder), plus the dated sub-folder when
    /// `save_to_dirs` is on.
    fn samples_dir(&self, view: &OptionView) -> std::path::PathBuf {
        let key = match self.mode {
            GenerationMode::Txt2Img => "outdir_txt2img_samples",
            GenerationMode::Img2Img => "outdir_img2img_samples",
        };
        output_dir(&self.data_dir, view, key, view.bool("save_to_dirs"))
    }
}

/// The job-wide values of A1111's `FilenameGenerator` (modules/images.py), which expands
/// `samples_filename_pattern`: `[seed]`, `[seed_first]`, `[seed_last]`, `[steps]`, `[cfg]`,
/// `[width]`, `[height]`, `[sampler]`, `[scheduler]`, `[model_name]`, `[model_hash]`, `[date]`,
/// `[datetime]` (with an optional `<strftime format>`), `[job_timestamp]`, `[prompt]`,
/// `[prompt_spaces]`, `[prompt_no_styles]`, `[prompt_words]`, `[batch_number]`,
/// `[generation_number]`, `[batch_size]`, `[clip_skip]`, `[denoising]`, `[none]`. Unknown
/// tokens stay in the name as written, as A1111 leaves them.
struct NameContext {
    all_seeds: Vec<i64>,
    steps: u32,
    cfg_scale: f64,
    width: u32,
    height: u32,
    sampler: String,
    scheduler: String,
    model_name: String,
    model_hash: Option<String>,
    batch_size: usize,
    n_iter: usize,
    clip_skip: u32,
    denoising: Option<f64>,
    job_timestamp: String,
}

/// Characters A1111 replaces with `_` in file-name parts.
const INVALID_FILENAME_CHARS: &str = "#<>:\"/\\|?*\n\r\t";

/// A1111's `sanitize_filename_part`: spaces to `_` (when asked), forbidden characters to `_`,
/// no leading spaces, at most 128 characters, no trailing spaces or dots.
fn sanitize_filename_part(text: &str, replace_spaces: bool) -> String {
    let replaced: String = text
        .chars()
        .map(|c| if INVALID_FILENAME_CHARS.contains(c) || (replace_spaces && c == ' ') { '_' } else { c })
        .collect();
    let cut: String = replaced.trim_start_matches(' ').chars().take(128).collect();
    cut.trim_end_matches([' ', '.']).to_string()
}

impl NameContext {
    fn new(job: &GenerationJob, checkpoint: &CheckpointEntry) -> Self {
        NameContext {
            all_seeds: job.seeds.clone(),
            steps: job.steps,
            cfg_scale: job.cfg_scale,
            width: job.width,
            height: job.height,
            sampler: job.sampler.clone(),
            scheduler: job.scheduler.clone(),
            model_name: checkpoint.model_name.clone(),
            model_hash: checkpoint.sha256.as_ref().map(|h| h.chars().take(10).collect()),
            batch_size: job.batch_size,
            n_iter: job.n_iter,
            clip_skip: job.clip_skip,
            denoising: job.denoising_strength,
            job_timestamp: chrono::Local::now().format("%Y%m%d%H%M%S").to_string(),
        }
    }

    /// The value of `token` for image `index` of the job; `Some("")` for a token that drops the
    /// text before it (A1111's `NOTHING_AND_SKIP_PREVIOUS_TEXT`) is returned as `Err(())`.
    fn value(
        &self,
        token: &str,
        args: &[String],
        image: &GeneratedImage,
        index: usize,
        words: usize,
    ) -> Option<Result<String, ()>> {
        let skip_single = |skip: bool, value: usize| if skip { Err(()) } else { Ok(value.to_string()) };
        let batch = self.batch_size.max(1);
        Some(Ok(match token {
            "seed" => image.seed.to_string(),
            "seed_first" => self.all_seeds.first().copied().unwrap_or(image.seed).to_string(),
            "seed_last" => self.all_seeds.last().copied().unwrap_or(image.seed).to_string(),
            "steps" => self.steps.to_string(),
            "cfg" => format!("{:?}", self.cfg_scale),
            "width" => self.width.to_string(),
            "height" => self.height.to_string(),
            "sampler" => sanitize_filename_part(&self.sampler, false),
            "scheduler" => sanitize_filename_part(&self.scheduler, false),
            "model_name" => sanitize_filename_part(&self.model_name, false),
            "model_hash" => self.model_hash.clone()?,
            "date" => chrono::Local::now().format("%Y-%m-%d").to_string(),
            "datetime" => {
                let format = args.first().map_or("%Y%m%d%H%M%S", String::as_str);
                let mut out = String::new();
                // A format chrono cannot render leaves the token as written, not a panic.
                std::fmt::write(&mut out, format_args!("{}", chrono::Local::now().format(format))).ok()?;
                out
            }
            "job_timestamp" => self.job_timestamp.clone(),
            "prompt" | "prompt_no_styles" => sanitize_filename_part(&image.prompt, true),
            "prompt_spaces" => sanitize_filename_part(&image.prompt, false),
            "prompt_words" => {
                let split = image.prompt.split(|c: char| c.is_whitespace() || c.is_ascii_punctuation());
                let kept: Vec<&str> = split.filter(|w| !w.is_empty()).take(words).collect();
                sanitize_filename_part(&kept.join(" "), false)
            }
            "batch_number" => return Some(skip_single(self.batch_size <= 1, index % batch + 1)),
            "generation_number" => {
                return Some(skip_single(self.n_iter <= 1 && self.batch_size <= 1, index + 1))
            }
            "batch_size" => self.batch_size.to_string(),
            "clip_skip" => self.clip_skip.to_string(),
            "denoising" => format!("{:?}", self.denoising?),
            "none" => String::new(),
            _ => return None,
        }))
    }

    /// Expands `pattern` for image `index` as A1111's `FilenameGenerator.apply` does: text
    /// between tokens is kept, `[token<arg>…]` is replaced by its value, an unknown token is kept
    /// as written, and a token that yields nothing drops the text before it.
    fn apply(&self, pattern: &str, image: &GeneratedImage, index: usize, words: usize) -> String {
        let tokens = regex::Regex::new(r"\[([^\[\]]+)\]").expect("a constant regex compiles; this is a bug");
        let mut out = String::new();
        let mut last = 0;
        for m in tokens.captures_iter(pattern) {
            let whole = m.get(0).expect("group 0 always matches");
            let text = &pattern[last..whole.start()];
            last = whole.end();
            // `name<arg1><arg2>`: arguments are peeled off the end.
            let mut name = m[1].to_string();
            let mut args = Vec::new();
            while let Some(stripped) = name.strip_suffix('>') {
                let Some(open) = stripped.rfind('<') else { break };
                args.insert(0, stripped[open + 1..].to_string());
                name = stripped[..open].to_string();
            }
            match self.value(&name.to_lowercase(), &args, image, index, words) {
                Some(Ok(value)) => {
                    out.push_str(text);
                    out.push_str(&value);
                }
                Some(Err(())) => {}
                None => {
                    out.push_str(text);
                    out.push_str(whole.as_str());
                }
            }
        }
        out.push_str(&pattern[last..]);
        out
    }
}

/// The folder option `outdir_key` names (relative to the data folder), plus the dated
/// sub-folder of `directories_filename_pattern` when `to_dirs` (`save_to_dirs` for images,
/// `grid_save_to_dirs` for grids).
pub(crate) fn output_dir(
    data_dir: &std::path::Path,
    view: &OptionView,
    outdir_key: &str,
    to_dirs: bool,
) -> std::path::PathBuf {
    let mut dir = data_dir.join(view.string(outdir_key));
    if to_dirs {
        let pattern = view.string("directories_filename_pattern");
        let date = chrono::Local::now().format("%Y-%m-%d").to_string();
        // Only the `[date]` token is expanded; other tokens are dropped.
        let expanded = pattern.replace("[date]", &date);
        let cleaned: String = regex::Regex::new(r"\[[^\]]*\]")
            .expect("a constant regex compiles; this is a bug")
            .replace_all(&expanded, "")
            .into_owned();
        let sub = images::sanitize_for_file_name(&cleaned);
        if !sub.is_empty() {
            dir = dir.join(sub);
        }
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: i64) -> GeneratedImage {
        GeneratedImage {
            rgb: vec![10; 4 * 2 * 3],
            width: 4,
            height: 2,
            seed,
            subseed: 0,
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            infotext: format!("a cat\nSteps: 2, Seed: {seed}"),
        }
    }

    fn names() -> NameContext {
        NameContext {
            all_seeds: vec![1003, 1004],
            steps: 20,
            cfg_scale: 7.0,
            width: 512,
            height: 768,
            sampler: "DPM++ 2M".into(),
            scheduler: "Karras".into(),
            model_name: "v1-5-pruned".into(),
            model_hash: Some("6ce0161689".into()),
            batch_size: 2,
            n_iter: 1,
            clip_skip: 2,
            denoising: None,
            job_timestamp: "20240101120000".into(),
        }
    }

    #[test]
    fn filename_pattern_expands_a1111_tokens() {
        let n = names();
        let mut img = image(1004);
        img.prompt = "a cat: on/a mat, (best) quality.".into();
        let apply = |p: &str| n.apply(p, &img, 1, 3);
        assert_eq!(apply("[seed]-[prompt_spaces]"), "1004-a cat_ on_a mat, (best) quality");
        assert_eq!(apply("[prompt]"), "a_cat__on_a_mat,_(best)_quality");
        assert_eq!(apply("[prompt_words]"), "a cat on");
        assert_eq!(
            apply("[model_name]-[model_hash]-[sampler]-[steps]-[cfg]-[width]x[height]"),
            "v1-5-pruned-6ce0161689-DPM++ 2M-20-7.0-512x768"
        );
        assert_eq!(apply("[seed_first]_[seed_last]_[batch_number]_[clip_skip]"), "1003_1004_2_2");
        assert_eq!(apply("[job_timestamp]"), "20240101120000");
        assert_eq!(apply("[datetime<%Y>]"), chrono::Local::now().format("%Y").to_string());
        assert_eq!(apply("[date]"), chrono::Local::now().format("%Y-%m-%d").to_string());
        // Unknown tokens stay as written; [denoising] without a strength too; a token that
        // yields nothing takes the text before it along.
        assert_eq!(apply("x-[no_such]-[denoising]"), "x-[no_such]-[denoising]");
        let single = NameContext { batch_size: 1, ..names() };
        assert_eq!(single.apply("[seed]-[batch_number]", &img, 0, 8), "1004");
    }

    #[test]
    fn output_write_uses_the_filename_pattern_and_exif_for_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = compat::api::options::defaults();
        options.insert("samples_filename_pattern".into(), "[seed]-[steps]-[model_name]".into());
        options.insert("samples_format".into(), "jpg".into());
        let output = Output {
            options,
            data_dir: dir.path().to_path_buf(),
            mode: GenerationMode::Txt2Img,
            send_images: false,
            save_images: true,
            names: names(),
        };
        output.write(&[image(1003)], &std::sync::Mutex::new(())).unwrap();
        let date = chrono::Local::now().format("%Y-%m-%d").to_string();
        let file = dir.path().join("outputs/txt2img-images").join(date).join("00000-1003-20-v1-5-pruned.jpg");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(images::read_user_comment(&bytes).as_deref(), Some("a cat\nSteps: 2, Seed: 1003"));
        assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 4);
    }

    #[test]
    fn output_write_saves_numbered_pngs_with_infotext_and_params_txt() {
        let dir = tempfile::tempdir().unwrap();
        let output = Output {
            options: compat::api::options::defaults(),
            data_dir: dir.path().to_path_buf(),
            mode: GenerationMode::Txt2Img,
            send_images: true,
            save_images: true,
            names: names(),
        };
        let lock = std::sync::Mutex::new(());
        let encoded = output.write(&[image(1003), image(1004)], &lock).unwrap();
        assert_eq!(encoded.len(), 2);
        let date = chrono::Local::now().format("%Y-%m-%d").to_string();
        let day = dir.path().join("outputs/txt2img-images").join(date);
        let first = std::fs::read(day.join("00000-1003.png")).unwrap();
        assert_eq!(images::decode_base64(&encoded[0]).unwrap(), first, "the saved file is the sent image");
        let chunks = images::png_text_chunks(&first).unwrap();
        assert_eq!(chunks, vec![("parameters".to_string(), "a cat\nSteps: 2, Seed: 1003".to_string())]);
        assert!(day.join("00001-1004.png").is_file());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("params.txt")).unwrap(),
            "a cat\nSteps: 2, Seed: 1003"
        );

        // Without save_images nothing is written; without send_images nothing is returned.
        let quiet = Output { send_images: false, save_images: false, ..output };
        assert!(quiet.write(&[image(7)], &lock).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&day).unwrap().count(), 2);
    }
}
