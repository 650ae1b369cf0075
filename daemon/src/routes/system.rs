//! Progress, interrupt and skip, checkpoint unload and reload, png-info, extras, interrogate,
//! memory, command-line flags, scripts, and the documentation routes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use compat::api::coerce::Lax;
use compat::api::error::parse_body;
use compat::api::misc::{
    ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasOptions, ExtrasSingleImageRequest,
    ExtrasSingleImageResponse, InterrogateRequest, MemoryResponse, PngInfoRequest, PngInfoResponse,
    ScriptInfo, ScriptsList,
};
use compat::api::progress::{ProgressResponse, ProgressState};
use compat::api::ValidationBody;
use compat::infotext::{parse_infotext, ParseOptions};
use serde_json::{json, Map, Value};

use super::{blocking, ROUTES};
use models::device::Placement;
use models::upscale::{tiling, Esrgan, RgbBuffer, ESRGAN_TILE, ESRGAN_TILE_OVERLAP};

use crate::engine::job::{JobOutput, RgbImage, UpscaleJob};
use crate::engine::{JobError, JobKind, Submission};
use crate::error::ApiError;
use crate::images::{self, Pixels};
use crate::validate::BUILTIN_ALWAYSON_SCRIPTS;
use crate::AppState;

pub async fn ping() -> HttpResponse {
    HttpResponse::Ok().json(json!({}))
}

/// `GET /progress[?skip_current_image=bool]`: answered from the latest snapshot, never
/// waiting for the engine.
pub async fn progress(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let skip_image = match query.get("skip_current_image") {
        None => false,
        Some(v) => bool::from_value(Value::String(v.clone())).map_err(|msg| {
            ApiError::Validation(ValidationBody::new(
                vec![json!("query"), json!("skip_current_image")],
                msg,
                "type_error.bool",
            ))
        })?,
    };
    let snap = state.engine.progress();
    let flags = state.engine.flags();
    let id = snap.job_id.unwrap_or(0);
    let current_image = match (&snap.preview, skip_image) {
        (Some(preview), false) => {
            let cached = state.preview_cache.lock().expect("preview lock poisoned; this is a bug").clone();
            match cached {
                Some((serial, b64)) if serial == preview.serial => Some(b64),
                _ => {
                    let preview = preview.clone();
                    let b64 = blocking(move || {
                        images::encode_png(&preview.image, &[])
                            .map(|png| (preview.serial, images::encode_base64(&png)))
                            .map_err(|e| ApiError::Runtime(e.to_string()))
                    })
                    .await?;
                    *state.preview_cache.lock().expect("preview lock poisoned; this is a bug") =
                        Some(b64.clone());
                    Some(b64.1)
                }
            }
        }
        _ => None,
    };
    Ok(HttpResponse::Ok().json(ProgressResponse {
        progress: snap.fraction(),
        eta_relative: snap.eta_relative(Instant::now()),
        state: ProgressState {
            skipped: flags.is_skipped(id),
            interrupted: flags.is_interrupted(id),
            stopping_generation: false,
            job: snap.job.clone(),
            job_count: snap.job_count as i64,
            job_timestamp: snap.job_timestamp.clone(),
            job_no: snap.job_no as i64,
            sampling_step: snap.sampling_step as i64,
            sampling_steps: snap.sampling_steps as i64,
        },
        current_image,
        textinfo: snap.textinfo.clone(),
    }))
}

/// Stops the running job at its next step (no-op when idle); answers `{}`.
pub async fn interrupt(state: web::Data<AppState>) -> HttpResponse {
    if let Some(id) = state.engine.interrupt() {
        tracing::info!(job_id = id, "interrupt requested");
    }
    HttpResponse::Ok().json(json!({}))
}

/// Ends the running job's current batch (no-op when idle); answers `null`.
pub async fn skip(state: web::Data<AppState>) -> HttpResponse {
    if let Some(id) = state.engine.skip() {
        tracing::info!(job_id = id, "skip requested");
    }
    HttpResponse::Ok().json(Value::Null)
}

/// Moves the loaded checkpoints off the device (into host memory when `--ram-checkpoints`
/// allows, else frees them); the next generation loads what it needs again.
pub async fn unload_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let submitted = state
        .engine
        .submit(Submission {
            kind: JobKind::Unload,
            checkpoint: None,
            task_id: "unload-checkpoint".into(),
            keep_if_abandoned: true,
        })
        .await?;
    submitted.outcome.await.map_err(|_| ApiError::EngineStopped)??;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Loads the selected checkpoint back onto the device.
pub async fn reload_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Some(entry) = state.selected_entry() {
        let submitted = state
            .engine
            .submit(Submission {
                kind: JobKind::LoadCheckpoint,
                checkpoint: Some(entry.reference()),
                task_id: "reload-checkpoint".into(),
                keep_if_abandoned: true,
            })
            .await?;
        submitted.outcome.await.map_err(|_| ApiError::EngineStopped)??;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// `POST /png-info`: the `parameters` text chunk and the other text chunks of a PNG.
pub async fn png_info(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: PngInfoRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let image = req.image.unwrap_or_default();
    if image.trim().is_empty() {
        return Ok(HttpResponse::Ok().json(PngInfoResponse::default()));
    }
    let options = ParseOptions {
        skip_pasting: state
            .options
            .get("infotext_skip_pasting")
            .and_then(|v| Vec::<String>::from_value(v).ok())
            .unwrap_or_default(),
        ..ParseOptions::default()
    };
    let response = blocking(move || {
        let bytes = images::decode_base64(&image).map_err(invalid_image)?;
        // JPEG and WebP keep their infotext in EXIF's UserComment; A1111 lists it as
        // `exif comment` among the items.
        let chunks = match images::png_text_chunks(&bytes) {
            Some(chunks) => chunks,
            None => {
                image::guess_format(&bytes).map_err(|_| invalid_image(images::ImageError::Invalid))?;
                match images::read_user_comment(&bytes) {
                    Some(text) => {
                        vec![("exif comment".to_string(), text.clone()), ("parameters".into(), text)]
                    }
                    None => Vec::new(),
                }
            }
        };
        let mut response = PngInfoResponse::default();
        for (key, text) in chunks {
            if key == "parameters" {
                response.info = text;
            } else {
                response.items.insert(key, Value::String(text));
            }
        }
        // Like A1111, an image without infotext still gets the parser's defaults.
        let parameters = parse_infotext(&response.info).to_parameters(&options);
        if let Ok(Value::Object(map)) = serde_json::to_value(parameters) {
            response.parameters = map;
        }
        Ok(response)
    })
    .await?;
    Ok(HttpResponse::Ok().json(response))
}

fn invalid_image(e: images::ImageError) -> ApiError {
    ApiError::http(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `POST /interrogate`: the checks A1111 makes, then "not available" (no captioning model here).
pub async fn interrogate(body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: InterrogateRequest = parse_body(&body).map_err(ApiError::Validation)?;
    if req.image.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::http(StatusCode::NOT_FOUND, "Image not found"));
    }
    match req.model.as_deref() {
        Some("clip") | Some("deepdanbooru") => {
            Err(JobError::Unsupported("image interrogation is not available in this build".into()).into())
        }
        _ => Err(ApiError::http(StatusCode::NOT_FOUND, "Model not found")),
    }
}

/// Training routes of A1111 that this daemon does not offer.
pub async fn training() -> Result<HttpResponse, ApiError> {
    Err(JobError::Unsupported("embedding and hypernetwork training are not available".into()).into())
}

/// `POST /extra-single-image`: one image through the extras upscale (a1111-api.md §7.14).
pub async fn extra_single_image(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: ExtrasSingleImageRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let (mut images, info) = run_extras(&state, vec![req.image.unwrap_or_default()], req.options).await?;
    let image = images.pop().unwrap_or_default();
    Ok(HttpResponse::Ok().json(ExtrasSingleImageResponse { html_info: html_info(&info), image }))
}

/// `POST /extra-batch-images`: every image of `imageList` through the same extras upscale.
pub async fn extra_batch_images(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: ExtrasBatchImagesRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let encoded = req.image_list.into_iter().map(|f| f.data.unwrap_or_default()).collect();
    let (images, info) = run_extras(&state, encoded, req.options).await?;
    Ok(HttpResponse::Ok().json(ExtrasBatchImagesResponse { html_info: html_info(&info), images }))
}

/// Pillow's `ui_common.plaintext_to_html`: `html.escape` per line, joined by `<br>`.
fn html_info(info: &str) -> String {
    let lines: Vec<String> = info
        .split('\n')
        .map(|l| {
            l.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#x27;")
        })
        .collect();
    format!("<p>{}</p>", lines.join("<br>\n"))
}

/// An upscaler named by a request, resolved.
#[derive(Clone, Debug)]
enum Upscaler {
    /// `Lanczos` or `Nearest`: `Upscaler.upscale` with a Pillow resize as each step.
    Resample(images::Resample),
    /// An ESRGAN-family file, run on the engine thread.
    Model(PathBuf),
}

fn resolve_upscaler(state: &AppState, name: &str) -> Result<Upscaler, ApiError> {
    match name {
        "Lanczos" => Ok(Upscaler::Resample(images::Resample::Lanczos)),
        "Nearest" => Ok(Upscaler::Resample(images::Resample::Nearest)),
        _ => match state.catalog.snapshot().find_upscaler(name) {
            Some(file) => Ok(Upscaler::Model(file.path.clone())),
            None => Err(ApiError::Runtime(format!("could not find upscaler named {name}"))),
        },
    }
}

/// The size A1111's `Upscaler.upscale` ends at: `int((size · scale) // 8 · 8)`. Where that is 0
/// (a result under 8 pixels, which makes Pillow fail in A1111) the unrounded `int(size · scale)`
/// is used instead, at least 1.
fn upscale_target(size: u32, scale: f64) -> u32 {
    let exact = (f64::from(size) * scale).max(0.0);
    match (exact / 8.0).floor() as u32 * 8 {
        0 => (exact as u32).max(1),
        rounded => rounded,
    }
}

/// `Upscaler.upscale` for the resampling upscalers: up to three steps of `size · scale` until the
/// target is reached or nothing changes, then a Lanczos resize to the target when needed.
fn resample_upscale(img: &Pixels, scale: f64, filter: images::Resample) -> Pixels {
    let (dest_w, dest_h) = (upscale_target(img.width, scale), upscale_target(img.height, scale));
    let mut im = img.clone();
    for _ in 0..3 {
        let before = (im.width, im.height);
        let (w, h) = ((f64::from(im.width) * scale) as u32, (f64::from(im.height) * scale) as u32);
        im = images::resize_pil(&im, w.max(1), h.max(1), filter, None);
        if before == (im.width, im.height) || (im.width >= dest_w && im.height >= dest_h) {
            break;
        }
    }
    finish_upscale(im, dest_w, dest_h)
}

/// The last step of `Upscaler.upscale`: a Lanczos resize to the target size when it differs.
fn finish_upscale(im: Pixels, dest_w: u32, dest_h: u32) -> Pixels {
    if im.width != dest_w || im.height != dest_h {
        images::resize_pil(&im, dest_w.max(1), dest_h.max(1), images::Resample::Lanczos, None)
    } else {
        im
    }
}

fn pixels(img: &RgbImage) -> Pixels {
    Pixels::new(img.width, img.height, 3, img.rgb.clone())
}

/// How the extras upscale sizes its output.
#[derive(Clone, Copy, Debug)]
struct ExtrasSize {
    /// `upscale_to` mode: the target size, and whether to crop (paste centred) to it.
    to: Option<(u32, u32, bool)>,
    /// Scale factor for `by` mode.
    by: f64,
}

impl ExtrasSize {
    fn scale_for(&self, w: u32, h: u32) -> f64 {
        match self.to {
            Some((tw, th, _)) => (f64::from(tw) / f64::from(w)).max(f64::from(th) / f64::from(h)),
            None => self.by,
        }
    }
}

/// Upscales every image with one upscaler (`ScriptPostprocessingUpscale.upscale`, before the
/// crop). Model upscalers run as one engine job for the whole batch.
async fn upscale_all(
    state: &AppState,
    inputs: &Arc<Vec<RgbImage>>,
    upscaler: &Upscaler,
    size: ExtrasSize,
) -> Result<Vec<Pixels>, ApiError> {
    match upscaler {
        Upscaler::Resample(filter) => {
            let (inputs, filter) = (inputs.clone(), *filter);
            blocking(move || {
                Ok(inputs
                    .iter()
                    .map(|img| resample_upscale(&pixels(img), size.scale_for(img.width, img.height), filter))
                    .collect())
            })
            .await
        }
        Upscaler::Model(path) => {
            // One job per distinct scale keeps each job's `scale` exact; in `by` mode (and for a
            // batch of equal sizes) that is one job.
            let mut out: Vec<Option<Pixels>> = vec![None; inputs.len()];
            let mut pending: Vec<usize> = (0..inputs.len()).collect();
            while let Some(&first) = pending.first() {
                let scale = size.scale_for(inputs[first].width, inputs[first].height);
                let (group, rest): (Vec<usize>, Vec<usize>) = pending
                    .iter()
                    .partition(|&&i| size.scale_for(inputs[i].width, inputs[i].height) == scale);
                pending = rest;
                let option = |key: &str, default: u32| {
                    state.options.get(key).and_then(|v| v.as_u64()).map(|v| v as u32).unwrap_or(default)
                };
                let job = UpscaleJob {
                    model: path.clone(),
                    images: group.iter().map(|&i| inputs[i].clone()).collect(),
                    scale,
                    tile: option("ESRGAN_tile", ESRGAN_TILE),
                    tile_overlap: option("ESRGAN_tile_overlap", ESRGAN_TILE_OVERLAP),
                    placement: Placement::for_device(state.device, state.config.bf16),
                };
                let submitted = state
                    .engine
                    .submit(Submission {
                        kind: JobKind::Upscale(Arc::new(job)),
                        checkpoint: None,
                        task_id: "extras".into(),
                        keep_if_abandoned: false,
                    })
                    .await?;
                let upscaled = match submitted.outcome.await.map_err(|_| ApiError::EngineStopped)?? {
                    JobOutput::Upscaled(images) => images,
                    other => return Err(ApiError::Runtime(format!("unexpected engine answer {other:?}"))),
                };
                let sizes: Vec<(u32, u32)> =
                    group.iter().map(|&i| (inputs[i].width, inputs[i].height)).collect();
                // The job stops at the model's own factor; the last resize, to the target
                // relative to the input, runs off the engine thread.
                let finished = blocking(move || {
                    Ok(upscaled
                        .iter()
                        .zip(&sizes)
                        .map(|(img, &(w, h))| {
                            finish_upscale(pixels(img), upscale_target(w, scale), upscale_target(h, scale))
                        })
                        .collect::<Vec<_>>())
                })
                .await?;
                for (&i, p) in group.iter().zip(finished) {
                    out[i] = Some(p);
                }
            }
            Ok(out.into_iter().map(|p| p.expect("every image belongs to one group")).collect())
        }
    }
}

/// Pillow's `Image.blend(a, b, alpha)`: `a + alpha · (b − a)` in float32, truncated.
fn blend(a: &Pixels, b: &Pixels, alpha: f64) -> Pixels {
    let alpha = alpha as f32;
    let data = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| {
            let t = f32::from(x) + alpha * (f32::from(y) - f32::from(x));
            t.clamp(0.0, 255.0) as u8
        })
        .collect();
    Pixels::new(a.width, a.height, a.channels, data)
}

/// The extras pipeline (A1111's `run_extras` with the upscale script): decode, upscale with
/// `upscaler_1` (and `upscaler_2` blended in at `extras_upscaler_2_visibility`), crop in
/// `upscale_to` mode, encode as PNG with the `postprocessing` infotext. Returns the base64
/// images and the infotext of the last one.
async fn run_extras(
    state: &AppState,
    encoded: Vec<String>,
    o: ExtrasOptions,
) -> Result<(Vec<String>, String), ApiError> {
    if o.gfpgan_visibility.unwrap_or(0.0) > 0.0 || o.codeformer_visibility.unwrap_or(0.0) > 0.0 {
        return Err(JobError::Unsupported("face restoration is not available in this build".into()).into());
    }
    let size = match o.resize_mode.unwrap_or(0) {
        1 => {
            let (w, h) = (o.upscaling_resize_w.unwrap_or(512), o.upscaling_resize_h.unwrap_or(512));
            if !(1..=8192).contains(&w) || !(1..=8192).contains(&h) {
                return Err(ApiError::field("upscaling_resize_w", "the target size must be in 1..=8192"));
            }
            ExtrasSize { to: Some((w as u32, h as u32, o.upscaling_crop.unwrap_or(true))), by: 1.0 }
        }
        _ => {
            let by = o.upscaling_resize.unwrap_or(2.0);
            if !(by > 0.0 && by <= 8.0) {
                return Err(ApiError::field("upscaling_resize", format!("must be in (0, 8], got {by}")));
            }
            ExtrasSize { to: None, by }
        }
    };
    let named = |n: &Option<String>| n.clone().filter(|n| n != "None");
    let upscaler_1 = named(&o.upscaler_1).map(|n| resolve_upscaler(state, &n).map(|u| (n, u))).transpose()?;
    let upscaler_2 = named(&o.upscaler_2).map(|n| resolve_upscaler(state, &n).map(|u| (n, u))).transpose()?;
    let visibility = o.extras_upscaler_2_visibility.unwrap_or(0.0).clamp(0.0, 1.0);

    let decoded = blocking(move || {
        encoded
            .iter()
            .map(|e| {
                let bytes = images::decode_base64(e).map_err(invalid_image)?;
                let chunks = images::png_text_chunks(&bytes).unwrap_or_default();
                let parameters = chunks.into_iter().find(|(k, _)| k == "parameters").map(|(_, v)| v);
                Ok((images::decode_rgb(&bytes, [255, 255, 255]).map_err(invalid_image)?, parameters))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    let (inputs, parameters): (Vec<RgbImage>, Vec<Option<String>>) = decoded.into_iter().unzip();
    let inputs = Arc::new(inputs);

    let mut info = Vec::new();
    let outputs: Vec<Pixels> = match &upscaler_1 {
        None => inputs.iter().map(pixels).collect(),
        Some((name_1, up_1)) => {
            match size.to {
                Some((w, h, _)) => info.push(format!("Postprocess upscale to: {w}x{h}")),
                None => {
                    let by = size.by;
                    let shown = if by.fract() == 0.0 { format!("{}", by as i64) } else { format!("{by}") };
                    info.push(format!("Postprocess upscale by: {shown}"));
                }
            }
            let mut first = upscale_all(state, &inputs, up_1, size).await?;
            info.push(format!("Postprocess upscaler: {name_1}"));
            if let Some((name_2, up_2)) = upscaler_2.as_ref().filter(|_| visibility > 0.0) {
                let second = upscale_all(state, &inputs, up_2, size).await?;
                first = first.iter().zip(&second).map(|(a, b)| blend(a, b, visibility)).collect();
                info.push(format!("Postprocess upscaler 2: {name_2}"));
            }
            if let Some((w, h, true)) = size.to {
                // Pasted centred on a black canvas of the target size.
                first = first
                    .into_iter()
                    .map(|im| {
                        let mut canvas = Pixels::blank(w, h, 3);
                        let (x, y) = (
                            i64::from(w / 2) - i64::from(im.width / 2),
                            i64::from(h / 2) - i64::from(im.height / 2),
                        );
                        canvas.paste(&im, x, y);
                        canvas
                    })
                    .collect();
                info.push(format!("Postprocess crop to: {w}x{h}"));
            }
            first
        }
    };
    let info = info.join(", ");
    let text = info.clone();
    let encoded = blocking(move || {
        outputs
            .iter()
            .zip(&parameters)
            .map(|(im, params)| {
                let mut texts: Vec<(&str, &str)> = Vec::new();
                if let Some(p) = params {
                    texts.push(("parameters", p.as_str()));
                }
                if !text.is_empty() {
                    texts.push(("postprocessing", text.as_str()));
                }
                let rgb = RgbImage { width: im.width, height: im.height, rgb: im.data.clone() };
                let png = images::encode_png(&rgb, &texts).map_err(|e| ApiError::Runtime(e.to_string()))?;
                Ok(images::encode_base64(&png))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    Ok((encoded, info))
}

thread_local! {
    /// The upscaler model last used on this thread (only the engine thread runs upscale jobs), so
    /// repeated calls with the same model load nothing.
    static LOADED_UPSCALER: RefCell<Option<(PathBuf, Rc<Esrgan>)>> = const { RefCell::new(None) };
}

/// Runs an [`UpscaleJob`] on the engine thread: for each image, A1111's `Upscaler.upscale` loop
/// with the model (tiled as `ESRGAN_tile` says) until the image covers `int(size·scale)//8·8`, at
/// most three passes. The final resize to that size is left to the caller. `stop` is polled
/// between tiles (the caller has gone); what is left then stays black.
pub(crate) fn run_upscale(job: &UpscaleJob, stop: &dyn Fn() -> bool) -> Result<Vec<RgbImage>, JobError> {
    let placement = job.placement;
    let model = LOADED_UPSCALER.with(|cell| -> Result<Rc<Esrgan>, JobError> {
        let mut slot = cell.borrow_mut();
        if let Some((path, model)) = slot.as_ref() {
            if *path == job.model && model.placement() == placement {
                return Ok(model.clone());
            }
        }
        // Free the previous model before loading the next.
        *slot = None;
        let started = Instant::now();
        let model = Rc::new(Esrgan::load(&job.model, placement)?);
        tracing::info!(
            upscaler = %job.model.display(),
            scale = model.scale(),
            seconds = started.elapsed().as_secs_f64(),
            "loaded upscaler"
        );
        *slot = Some((job.model.clone(), model.clone()));
        Ok(model)
    })?;
    job.images
        .iter()
        .map(|img| {
            let (dest_w, dest_h) =
                (upscale_target(img.width, job.scale), upscale_target(img.height, job.scale));
            let mut current = RgbBuffer::new(img.width, img.height, img.rgb.clone())?;
            for _ in 0..3 {
                if stop() {
                    break;
                }
                let before = (current.width, current.height);
                current = tiling::upscale(&model, &current, job.tile, job.tile_overlap, stop)?;
                if before == (current.width, current.height)
                    || (current.width >= dest_w && current.height >= dest_h)
                {
                    break;
                }
            }
            Ok(RgbImage { width: current.width, height: current.height, rgb: current.data })
        })
        .collect()
}

/// `GET /memory`: process and machine memory from `/proc` (bytes), and on CUDA the device's
/// memory and the caching allocator's statistics in A1111's shape. Without CUDA, `cuda` holds an
/// `error` as A1111's does.
pub async fn memory(state: web::Data<AppState>) -> HttpResponse {
    let ram = match read_ram() {
        Some((used, total)) => json!({"free": (total - used) as f64, "used": used, "total": total as f64}),
        None => json!({"error": "memory information is not available on this system"}),
    };
    let cuda = match models::device::cuda_memory(state.device) {
        Some(m) => cuda_json(&m),
        None => match state.device {
            tch::Device::Cuda(_) => json!({"error": "CUDA memory statistics are not available"}),
            _ => json!({"error": "unavailable"}),
        },
    };
    HttpResponse::Ok().json(MemoryResponse { ram, cuda })
}

/// A1111's `cuda` object: `system` from `mem_get_info`, the pools as `{current, peak}` and the
/// allocator's `events`.
fn cuda_json(m: &models::device::CudaMemory) -> Value {
    let pool = |(current, peak): (i64, i64)| json!({"current": current, "peak": peak});
    json!({
        "system": {"free": m.free, "used": m.total - m.free, "total": m.total},
        "active": pool(m.active),
        "allocated": pool(m.allocated),
        "reserved": pool(m.reserved),
        "inactive": pool(m.inactive),
        "events": {"retries": m.retries, "oom": m.ooms},
    })
}

/// (this process's resident bytes, the machine's total bytes), from `/proc`.
fn read_ram() -> Option<(i64, i64)> {
    let kib = |text: &str, key: &str| -> Option<i64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<i64>().ok().map(|k| k * 1024)
    };
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some((kib(&status, "VmRSS:")?, kib(&meminfo, "MemTotal:")?))
}

/// `GET /cmd-flags`: the flags in A1111's names (clients only need an object; AIYA probes it
/// to detect auth). The `--api-auth` credentials are not echoed.
pub async fn cmd_flags(state: web::Data<AppState>) -> HttpResponse {
    let c = &state.config;
    let path = |p: std::path::PathBuf| Value::String(p.to_string_lossy().into_owned());
    HttpResponse::Ok().json(json!({
        "api": true,
        "nowebui": true,
        "api_auth": c.api_auth.as_ref().map(|_| "<set>"),
        "api_log": false,
        "api_server_stop": false,
        "listen": c.listen,
        "port": c.port,
        "server_name": null,
        "subpath": null,
        "data_dir": path(c.data_dir.clone()),
        "models_dir": path(c.data_dir.join("models")),
        "ckpt_dir": path(c.ckpt_dir()),
        "ckpt": c.ckpt.as_ref().map(|p| p.to_string_lossy().into_owned()),
        "lora_dir": path(c.lora_dir()),
        "vae_dir": path(c.vae_dir()),
        "embeddings_dir": path(c.embeddings_dir()),
        "cors_allow_origins": c.cors_allow_origins,
        "cors_allow_origins_regex": c.cors_allow_origins_regex,
        "device": c.device,
        "bf16": c.bf16,
        "vram_checkpoints": c.vram_checkpoints,
        "ram_checkpoints": c.ram_checkpoints,
        "max_queued": c.max_queued,
        "medvram": false,
        "lowvram": false,
        "xformers": false,
        "no_half": matches!(state.device, tch::Device::Cpu),
        "no_hashing": false,
        "timeout_keep_alive": 30,
    }))
}

/// `GET /scripts`: the always-on scripts whose API arguments are accepted (and, as in A1111,
/// ignored in favour of the top-level fields). No selectable scripts exist.
/// Scripts a request can select by `script_name` (A1111 lists them with the always-on ones).
const SELECTABLE_SCRIPTS: &[&str] = &["x/y/z plot"];
/// Always-on scripts that are extensions in A1111 and built in here, listed so that clients
/// detecting them by name find them.
const EXTENSION_SCRIPTS: &[&str] = &["dynamic prompts v2.17.1"];

fn script_names() -> impl Iterator<Item = (&'static str, bool)> {
    SELECTABLE_SCRIPTS
        .iter()
        .map(|n| (*n, false))
        .chain(BUILTIN_ALWAYSON_SCRIPTS.iter().chain(EXTENSION_SCRIPTS).map(|n| (*n, true)))
}

pub async fn scripts() -> HttpResponse {
    let names: Vec<String> = script_names().map(|(n, _)| n.to_string()).collect();
    HttpResponse::Ok().json(ScriptsList { txt2img: names.clone(), img2img: names })
}

pub async fn script_info() -> HttpResponse {
    let info: Vec<ScriptInfo> = [false, true]
        .into_iter()
        .flat_map(|is_img2img| {
            script_names().map(move |(name, is_alwayson)| ScriptInfo {
                name: name.to_string(),
                is_alwayson,
                is_img2img,
                args: Vec::new(),
            })
        })
        .collect();
    HttpResponse::Ok().json(info)
}

/// A small OpenAPI description generated from the route table.
pub async fn openapi() -> HttpResponse {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for r in ROUTES {
        paths.entry(r.path).or_default().insert(
            r.method.to_lowercase(),
            json!({"summary": r.summary, "responses": {"200": {"description": "Successful Response"}}}),
        );
    }
    HttpResponse::Ok().json(json!({
        "openapi": "3.0.2",
        "info": {"title": "diffusiond", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    }))
}

/// A plain HTML index of the routes.
pub async fn docs() -> HttpResponse {
    let rows: String = ROUTES
        .iter()
        .map(|r| {
            format!("<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n", r.method, r.path, r.summary)
        })
        .collect();
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>diffusiond API</title></head><body>\n\
         <h1>diffusiond API</h1>\n<p>The AUTOMATIC1111 <code>/sdapi/v1</code> API. Machine-readable: \
         <a href=\"/openapi.json\">/openapi.json</a>.</p>\n<table>\n<tr><th>method</th><th>path</th>\
         <th>summary</th></tr>\n{rows}</table>\n</body></html>\n"
    );
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page)
}
