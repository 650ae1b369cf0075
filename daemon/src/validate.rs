//! Wire requests → engine jobs: `compat::api::Txt2ImgRequest` / `Img2ImgRequest` become a
//! [`GenerationJob`] with every A1111 rule applied on the way (a1111-api.md §3, §8.3):
//! `override_settings` over the options, sampler and scheduler resolution, seeds drawn, styles
//! applied, hires-fix sizes computed, init images and masks decoded. Runs in `web::block`
//! (image decoding and, the first time, VAE hashing are CPU and disk work).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use actix_web::http::StatusCode;
use compat::api::catalog::LATENT_UPSCALE_MODES;
use compat::api::options::{default_of, API_RESTRICTED};
use compat::api::{Img2ImgRequest, Txt2ImgRequest};
use compat::samplers::{resolve, sampler_by_name, scheduler_by_name_or_label};
use models::upscale::{ESRGAN_TILE, ESRGAN_TILE_OVERLAP};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::catalog::{CheckpointEntry, Snapshot};
use crate::engine::job::{
    GenerationJob, GenerationMode, HiresParams, Img2ImgParams, InfotextContext, SamplerSettings,
    UpscalerModel,
};
use crate::engine::JobError;
use crate::error::ApiError;
use crate::images;
use crate::options::{same_value, OptionView};

/// The `Version` this daemon writes into infotexts and `info`. A1111's parser only derives
/// back-compatibility flags from strings that parse as versions, so this one triggers none.
pub const VERSION: &str = concat!("diffusiond v", env!("CARGO_PKG_VERSION"));

/// Upscalers that run without a model file (`/upscalers` lists them).
pub const BUILTIN_UPSCALERS: &[&str] = &["None", "Lanczos", "Nearest"];

/// Always-on scripts whose arguments the API ignores upstream too (top-level fields win), so a
/// request naming them is accepted.
pub const BUILTIN_ALWAYSON_SCRIPTS: &[&str] = &["refiner", "sampler", "seed"];

/// What validation needs to know about the daemon.
pub struct ValidateContext<'a> {
    pub catalog: &'a Snapshot,
    /// Every option's current value.
    pub options: Map<String, Value>,
    /// The checkpoint selected through the options.
    pub selected: Option<&'a CheckpointEntry>,
    pub lora_dir: &'a Path,
    pub embeddings_dir: &'a Path,
    /// The full sha256 of a file (VAEs), computed and cached on first use.
    pub file_hash: &'a dyn Fn(&Path) -> Option<String>,
}

/// The request as it is echoed back in `parameters`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Echo {
    Txt2Img(Box<Txt2ImgRequest>),
    Img2Img(Box<Img2ImgRequest>),
}

/// A request ready for the engine, with what the response needs.
pub struct ValidatedJob {
    pub job: GenerationJob,
    pub checkpoint: CheckpointEntry,
    pub task_id: String,
    pub parameters: Echo,
    pub send_images: bool,
    pub save_images: bool,
    /// The options in effect for this job (overrides applied): output format, folders, …
    pub options: Map<String, Value>,
    /// Overrides to keep after the job (`override_settings_restore_afterwards: false`).
    pub persist_overrides: Vec<(String, Value)>,
    /// Face restoration was asked for but no restorer exists here.
    pub restore_faces_ignored: bool,
}

/// The fields both request types share, borrowed.
struct Common<'a> {
    prompt: &'a str,
    negative_prompt: &'a str,
    styles: &'a [String],
    seed: Option<i64>,
    subseed: Option<i64>,
    subseed_strength: Option<f64>,
    seed_resize_from_h: Option<i64>,
    seed_resize_from_w: Option<i64>,
    sampler_name: Option<&'a str>,
    scheduler: Option<&'a str>,
    batch_size: Option<i64>,
    n_iter: Option<i64>,
    steps: Option<i64>,
    cfg_scale: Option<f64>,
    width: Option<i64>,
    height: Option<i64>,
    restore_faces: Option<bool>,
    tiling: Option<bool>,
    eta: Option<f64>,
    denoising_strength: Option<f64>,
    s_min_uncond: Option<f64>,
    override_settings: Option<&'a Map<String, Value>>,
    override_settings_restore_afterwards: Option<bool>,
    refiner_checkpoint: Option<&'a str>,
    disable_extra_networks: Option<bool>,
    force_task_id: Option<&'a str>,
    sampler_index: Option<&'a str>,
    script_name: Option<&'a str>,
    send_images: Option<bool>,
    save_images: Option<bool>,
    alwayson_scripts: Option<&'a Map<String, Value>>,
}

macro_rules! common {
    ($r:expr) => {
        Common {
            prompt: $r.prompt.as_deref().unwrap_or(""),
            negative_prompt: $r.negative_prompt.as_deref().unwrap_or(""),
            styles: $r.styles.as_deref().unwrap_or(&[]),
            seed: $r.seed,
            subseed: $r.subseed,
            subseed_strength: $r.subseed_strength,
            seed_resize_from_h: $r.seed_resize_from_h,
            seed_resize_from_w: $r.seed_resize_from_w,
            sampler_name: $r.sampler_name.as_deref(),
            scheduler: $r.scheduler.as_deref(),
            batch_size: $r.batch_size,
            n_iter: $r.n_iter,
            steps: $r.steps,
            cfg_scale: $r.cfg_scale,
            width: $r.width,
            height: $r.height,
            restore_faces: $r.restore_faces,
            tiling: $r.tiling,
            eta: $r.eta,
            denoising_strength: $r.denoising_strength,
            s_min_uncond: $r.s_min_uncond,
            override_settings: $r.override_settings.as_ref(),
            override_settings_restore_afterwards: $r.override_settings_restore_afterwards,
            refiner_checkpoint: $r.refiner_checkpoint.as_deref(),
            disable_extra_networks: $r.disable_extra_networks,
            force_task_id: $r.force_task_id.as_deref(),
            sampler_index: $r.sampler_index.as_deref(),
            script_name: $r.script_name.as_deref(),
            send_images: $r.send_images,
            save_images: $r.save_images,
            alwayson_scripts: $r.alwayson_scripts.as_ref(),
        }
    };
}

/// Validates a txt2img request.
/// Rejects prompts A1111 would crash on (e.g. `(a:1.5.2)`) before they are queued: a 422 naming
/// the problem and its position.
fn check_prompts(job: &GenerationJob) -> Result<(), ApiError> {
    for p in &job.prompts {
        compat::prompt::validate_prompt(p).map_err(|e| ApiError::field("prompt", e.to_string()))?;
    }
    for p in &job.negative_prompts {
        compat::prompt::validate_negative_prompt(p)
            .map_err(|e| ApiError::field("negative_prompt", e.to_string()))?;
    }
    Ok(())
}

pub fn txt2img(req: &Txt2ImgRequest, ctx: &ValidateContext) -> Result<ValidatedJob, ApiError> {
    let common = common!(req);
    let mut v = validate_common(&common, GenerationMode::Txt2Img, ctx)?;
    check_prompts(&v.job)?;
    let job = &mut v.job;
    if req.enable_hr.unwrap_or(false) {
        let (mut width, mut height) = (job.width, job.height);
        let (fw, fh) = (req.firstphase_width.unwrap_or(0), req.firstphase_height.unwrap_or(0));
        // The pre-1.0 hires API: width/height are the target and firstphase_* the first pass.
        let legacy_target = (fw != 0 || fh != 0).then(|| {
            let target = (width, height);
            width = if fw > 0 { fw as u32 } else { width };
            height = if fh > 0 { fh as u32 } else { height };
            target
        });
        job.width = width;
        job.height = height;
        let scale = req.hr_scale.unwrap_or(2.0);
        let (rx, ry) =
            (req.hr_resize_x.unwrap_or(0).max(0) as u32, req.hr_resize_y.unwrap_or(0).max(0) as u32);
        let (target_width, target_height, crop, scale) = match (legacy_target, rx, ry) {
            (Some((tw, th)), _, _) => (tw, th, true, None),
            (None, 0, 0) => {
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(ApiError::field("hr_scale", format!("`hr_scale` must be > 0, got {scale}")));
                }
                ((width as f64 * scale) as u32, (height as f64 * scale) as u32, false, Some(scale))
            }
            (None, rx, 0) => (rx, (rx as u64 * height as u64 / width as u64) as u32, false, None),
            (None, 0, ry) => ((ry as u64 * width as u64 / height as u64) as u32, ry, false, None),
            (None, rx, ry) => (rx, ry, true, None),
        };
        check_size("hr_resize_x", target_width)?;
        check_size("hr_resize_y", target_height)?;
        let upscaler_given = req.hr_upscaler.is_some();
        let upscaler = req.hr_upscaler.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "Latent".into());
        // Anything but a latent mode or a built-in resampler names a model file of `/upscalers`
        // (A1111 looks it up in `sd_upscalers` by name).
        let upscaler_model = if LATENT_UPSCALE_MODES.contains(&upscaler.as_str())
            || BUILTIN_UPSCALERS.contains(&upscaler.as_str())
        {
            None
        } else {
            let file = ctx
                .catalog
                .find_upscaler(&upscaler)
                .ok_or_else(|| ApiError::Runtime(format!("could not find upscaler named {upscaler}")))?;
            let option = |key: &str, default: u32| {
                v.options.get(key).and_then(Value::as_u64).map_or(default, |n| n as u32)
            };
            Some(UpscalerModel {
                path: file.path.clone(),
                tile: option("ESRGAN_tile", ESRGAN_TILE),
                tile_overlap: option("ESRGAN_tile_overlap", ESRGAN_TILE_OVERLAP),
            })
        };
        let sampler = match req.hr_sampler_name.as_deref() {
            None | Some("") | Some("Use same sampler") => job.sampler.clone(),
            Some(name) => sampler_by_name(name)
                .map(|s| s.name.to_string())
                .ok_or_else(|| ApiError::Runtime(format!("bad sampler name: {name}")))?,
        };
        let scheduler = match req.hr_scheduler.as_deref() {
            None | Some("") | Some("Use same scheduler") => job.scheduler.clone(),
            Some(name) => scheduler_by_name_or_label(name)
                .map(|s| s.label.to_string())
                .unwrap_or_else(|| job.scheduler.clone()),
        };
        match req.hr_checkpoint_name.as_deref() {
            None | Some("") | Some("Use same checkpoint") => {}
            Some(name) => {
                let found = find_checkpoint_loosely(ctx.catalog, name).ok_or_else(|| {
                    ApiError::Runtime(format!("Could not find checkpoint with name {name}"))
                })?;
                if found.path != v.checkpoint.path {
                    return Err(JobError::Unsupported(
                        "a different checkpoint for the hires pass is not supported".into(),
                    )
                    .into());
                }
            }
        }
        let hr_prompt = req.hr_prompt.as_deref().unwrap_or("");
        let hr_negative = req.hr_negative_prompt.as_deref().unwrap_or("");
        let count = job.image_count();
        // A1111's UI default for the hires pass; the API passes null through and clients that
        // enable hires always send a value in practice.
        let denoising_strength = job.denoising_strength.unwrap_or(0.7);
        check_unit("denoising_strength", denoising_strength)?;
        job.denoising_strength = Some(denoising_strength);
        job.hires = Some(HiresParams {
            target_width,
            target_height,
            crop_to_target: crop,
            scale,
            resize: match (legacy_target, rx, ry) {
                (None, 0, 0) => None,
                (Some(target), _, _) => Some(target),
                (None, rx, ry) => Some((rx, ry)),
            },
            upscaler,
            upscaler_given,
            upscaler_model,
            steps: match req.hr_second_pass_steps.unwrap_or(0) {
                n if n > 0 => check_steps("hr_second_pass_steps", n)?,
                _ => job.steps,
            },
            second_pass_steps: req.hr_second_pass_steps.unwrap_or(0).max(0) as u32,
            sampler,
            scheduler,
            prompts: if hr_prompt.is_empty() {
                job.prompts.clone()
            } else {
                vec![hr_prompt.to_string(); count]
            },
            negative_prompts: if hr_negative.is_empty() {
                job.negative_prompts.clone()
            } else {
                vec![hr_negative.to_string(); count]
            },
            denoising_strength,
        });
    } else {
        // Without hires fix txt2img has no use for a strength; A1111 leaves it out of the
        // infotext as well.
        job.denoising_strength = None;
    }
    v.parameters = Echo::Txt2Img(Box::new(req.clone()));
    Ok(v)
}

/// Validates an img2img request (decodes its images).
pub fn img2img(req: &Img2ImgRequest, ctx: &ValidateContext) -> Result<ValidatedJob, ApiError> {
    let encoded = match req.init_images.as_deref() {
        None | Some([]) => return Err(ApiError::http(StatusCode::NOT_FOUND, "Init image not found")),
        Some(images) => images,
    };
    let common = common!(req);
    let mut v = validate_common(&common, GenerationMode::Img2Img, ctx)?;
    check_prompts(&v.job)?;
    let view = OptionView(&v.options);
    let background = images::parse_color(&view.string("img2img_background_color"));
    let init_images = encoded
        .iter()
        .map(|s| images::decode_base64(s).and_then(|bytes| images::decode_rgb(&bytes, background)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(image_error)?;
    let mask = match req.mask.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => Some(images::decode_base64(m).and_then(|b| images::decode_mask(&b)).map_err(image_error)?),
        None => None,
    };
    let job = &mut v.job;
    // One image is repeated over the batch; k ≤ batch_size images shrink the batch to k.
    if init_images.len() > job.batch_size {
        return Err(ApiError::Runtime("bad number of images passed".into()));
    }
    if init_images.len() > 1 {
        job.batch_size = init_images.len();
        resize_per_image(job);
    }
    let (blur_x, blur_y) = match req.mask_blur {
        Some(b) => (b, b),
        None => (req.mask_blur_x.unwrap_or(4), req.mask_blur_y.unwrap_or(4)),
    };
    let resize_mode = req.resize_mode.unwrap_or(0);
    if !(0..=3).contains(&resize_mode) {
        return Err(ApiError::field(
            "resize_mode",
            format!("`resize_mode` must be in 0..=3, got {resize_mode}"),
        ));
    }
    let fill = req.inpainting_fill.unwrap_or(0);
    if !(0..=3).contains(&fill) {
        return Err(ApiError::field(
            "inpainting_fill",
            format!("`inpainting_fill` must be in 0..=3, got {fill}"),
        ));
    }
    let strength = job.denoising_strength.unwrap_or(0.75);
    check_unit("denoising_strength", strength)?;
    job.denoising_strength = Some(strength);
    if let Some(m) = req.initial_noise_multiplier {
        job.sampler_settings.initial_noise_multiplier = m;
    }
    job.img2img = Some(Img2ImgParams {
        init_images,
        mask,
        resize_mode: resize_mode as u8,
        mask_blur_x: blur_x.max(0) as u32,
        mask_blur_y: blur_y.max(0) as u32,
        mask_round: req.mask_round.unwrap_or(true),
        inpainting_fill: fill as u8,
        inpaint_full_res: req.inpaint_full_res.unwrap_or(true),
        inpaint_full_res_padding: req.inpaint_full_res_padding.unwrap_or(0).max(0) as u32,
        inpainting_mask_invert: req.inpainting_mask_invert.unwrap_or(0) != 0,
        image_cfg_scale: req.image_cfg_scale,
    });
    let mut echo = req.clone();
    if !req.include_init_images.unwrap_or(false) {
        echo.init_images = None;
        echo.mask = None;
    }
    v.parameters = Echo::Img2Img(Box::new(echo));
    Ok(v)
}

fn image_error(e: images::ImageError) -> ApiError {
    ApiError::http(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// After the batch size changed, the per-image lists follow (img2img with several images).
fn resize_per_image(job: &mut GenerationJob) {
    let count = job.image_count();
    let first = |v: &Vec<String>| v.first().cloned().unwrap_or_default();
    job.prompts = vec![first(&job.prompts); count];
    job.negative_prompts = vec![first(&job.negative_prompts); count];
    let (seed, subseed) = (job.seeds[0], job.subseeds[0]);
    let variation = job.subseed_strength != 0.0;
    job.seeds = (0..count as i64).map(|i| if variation { seed } else { seed + i }).collect();
    job.subseeds = (0..count as i64).map(|i| subseed + i).collect();
}

fn validate_common(
    c: &Common,
    mode: GenerationMode,
    ctx: &ValidateContext,
) -> Result<ValidatedJob, ApiError> {
    if let Some(name) = c.script_name.filter(|s| !s.is_empty()) {
        return Err(ApiError::http(StatusCode::UNPROCESSABLE_ENTITY, format!("Script '{name}' not found")));
    }
    for title in c.alwayson_scripts.into_iter().flat_map(|m| m.keys()) {
        let known = BUILTIN_ALWAYSON_SCRIPTS.contains(&title.to_lowercase().as_str())
            || is_dynamic_prompts_title(title)
            || title == PER_IMAGE_SCRIPT;
        if !known {
            return Err(ApiError::http(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("always on script {title} not found"),
            ));
        }
    }

    // Options in effect: the stored ones, then `override_settings`.
    let mut options = ctx.options.clone();
    let mut checkpoint = ctx.selected.cloned();
    let mut persist_overrides = Vec::new();
    for (key, value) in c.override_settings.into_iter().flatten() {
        if value.is_null() || API_RESTRICTED.contains(&key.as_str()) {
            continue;
        }
        if key == "sd_model_checkpoint" {
            // Not an exact alias: dropped silently, the selected model is used (A1111 does so).
            if let Some(found) = value.as_str().and_then(|name| ctx.catalog.find_checkpoint(name)) {
                checkpoint = Some(found.clone());
            }
            continue;
        }
        if default_of(key).is_none() {
            return Err(ApiError::UnknownOption(key.clone()));
        }
        if !same_value(options.get(key).unwrap_or(&Value::Null), value) {
            persist_overrides.push((key.clone(), value.clone()));
        }
        options.insert(key.clone(), value.clone());
    }
    let checkpoint = checkpoint.ok_or_else(|| {
        ApiError::Runtime("no checkpoint is available: put one in the checkpoint folder".into())
    })?;
    if let Some(name) = c.refiner_checkpoint.filter(|s| !matches!(*s, "" | "None" | "none")) {
        find_checkpoint_loosely(ctx.catalog, name)
            .ok_or_else(|| ApiError::Runtime(format!("Could not find checkpoint with name {name}")))?;
        return Err(JobError::Unsupported("refiner checkpoints are not supported".into()).into());
    }
    let view = OptionView(&options);

    let width = check_size("width", c.width.unwrap_or(512))?;
    let height = check_size("height", c.height.unwrap_or(512))?;
    let steps = check_steps("steps", c.steps.unwrap_or(50))?;
    let batch_size = check_range("batch_size", c.batch_size.unwrap_or(1), 1, 64)? as usize;
    let n_iter = check_range("n_iter", c.n_iter.unwrap_or(1), 1, 10_000)? as usize;
    let cfg_scale = c.cfg_scale.unwrap_or(7.0);
    if !cfg_scale.is_finite() {
        return Err(ApiError::field(
            "cfg_scale",
            format!("`cfg_scale` must be a finite number, got {cfg_scale}"),
        ));
    }
    let subseed_strength = c.subseed_strength.unwrap_or(0.0);
    if !subseed_strength.is_finite() {
        return Err(ApiError::field("subseed_strength", "`subseed_strength` must be a finite number"));
    }
    if let Some(d) = c.denoising_strength {
        check_unit("denoising_strength", d)?;
    }

    // `sampler_index` (default "Euler") stands in for an empty `sampler_name`.
    let requested = c.sampler_name.filter(|s| !s.is_empty()).or(c.sampler_index);
    let resolved = resolve(requested, c.scheduler);
    if resolved.sampler_fallback {
        tracing::warn!(sampler = requested.unwrap_or(""), "unknown sampler; using {}", resolved.sampler.name);
    }
    let (sampler, scheduler) = (resolved.sampler, resolved.scheduler);
    let count = batch_size * n_iter;
    let seed = resolve_seed(c.seed);
    let subseed = resolve_seed(c.subseed);
    let variation = subseed_strength != 0.0;
    let seeds = (0..count as i64).map(|i| if variation { seed } else { seed + i }).collect();
    let subseeds = (0..count as i64).map(|i| subseed + i).collect();
    let seed_resize_from = match (c.seed_resize_from_w.unwrap_or(-1), c.seed_resize_from_h.unwrap_or(-1)) {
        (w, h) if w > 0 && h > 0 => Some((w as u32, h as u32)),
        _ => None,
    };

    let (prompt, negative_prompt, styles) = apply_styles(ctx.catalog, c.prompt, c.negative_prompt, c.styles);

    let restore_faces = c.restore_faces.unwrap_or_else(|| view.bool("face_restoration"));
    let vae = resolve_vae(ctx.catalog, &checkpoint, &view.string("sd_vae"));
    let vae_name = vae.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    let vae_hash = vae.as_deref().and_then(|p| (ctx.file_hash)(p)).map(|h| h[..10].to_string());
    let preview_every = view.i64("show_progress_every_n_steps");
    let task_id = match c.force_task_id.filter(|s| !s.is_empty()) {
        Some(id) => id.to_string(),
        None => {
            let kind = if mode == GenerationMode::Txt2Img { "txt2img" } else { "img2img" };
            format!("task({kind}-{})", random_task_suffix())
        }
    };

    let job = GenerationJob {
        mode,
        prompts: vec![prompt; count],
        negative_prompts: vec![negative_prompt; count],
        seeds,
        subseeds,
        subseed_strength,
        seed_resize_from,
        width,
        height,
        steps,
        cfg_scale,
        sampler: sampler.name.to_string(),
        scheduler: scheduler.label.to_string(),
        batch_size,
        n_iter,
        clip_skip: view.i64("CLIP_stop_at_last_layers").clamp(1, 24) as u32,
        eta: c.eta,
        denoising_strength: c.denoising_strength,
        tiling: c.tiling.unwrap_or_else(|| view.bool("tiling")),
        disable_extra_networks: c.disable_extra_networks.unwrap_or(false),
        styles,
        hires: None,
        img2img: None,
        sampler_settings: SamplerSettings {
            eta_ancestral: view.f64("eta_ancestral"),
            eta_ddim: view.f64("eta_ddim"),
            s_churn: view.f64("s_churn"),
            s_tmin: view.f64("s_tmin"),
            s_tmax: view.f64("s_tmax"),
            s_noise: view.f64("s_noise"),
            s_min_uncond: c.s_min_uncond.unwrap_or(0.0),
            sigma_min: view.f64("sigma_min"),
            sigma_max: view.f64("sigma_max"),
            rho: view.f64("rho"),
            always_discard_next_to_last_sigma: view.bool("always_discard_next_to_last_sigma"),
            eta_noise_seed_delta: view.i64("eta_noise_seed_delta"),
            randn_source: view.string("randn_source"),
            initial_noise_multiplier: view.f64("initial_noise_multiplier"),
            img2img_fix_steps: view.bool("img2img_fix_steps"),
            inpainting_mask_weight: view.f64("inpainting_mask_weight"),
            emphasis: view.string("emphasis"),
        },
        vae,
        lora_dir: ctx.lora_dir.to_path_buf(),
        embeddings_dir: ctx.embeddings_dir.to_path_buf(),
        preview_every_n_steps: (view.bool("live_previews_enable") && preview_every > 0)
            .then_some(preview_every as u32),
        infotext: InfotextContext {
            model_name: checkpoint.stem(),
            model_hash: checkpoint.short_hash().map(str::to_string),
            vae_name,
            vae_hash,
            version: VERSION.to_string(),
            add_model_hash: view.bool("add_model_hash_to_info"),
            add_model_name: view.bool("add_model_name_to_info"),
            add_vae_name: view.bool("add_vae_name_to_info"),
            add_vae_hash: view.bool("add_vae_hash_to_info"),
            add_version: view.bool("add_version_to_infotext"),
            lora_add_hashes: view.bool("lora_add_hashes_to_infotext"),
            textual_inversion_add_hashes: view.bool("textual_inversion_add_hashes_to_infotext"),
        },
    };
    let mut job = job;
    apply_per_image(&mut job, c.alwayson_scripts)?;
    let restore_after = c.override_settings_restore_afterwards.unwrap_or(true);
    Ok(ValidatedJob {
        job,
        checkpoint,
        task_id,
        // Replaced by the endpoint-specific echo before returning.
        parameters: Echo::Txt2Img(Box::default()),
        send_images: c.send_images.unwrap_or(true),
        save_images: c.save_images.unwrap_or(false),
        options,
        persist_overrides: if restore_after { Vec::new() } else { persist_overrides },
        restore_faces_ignored: restore_faces,
    })
}

/// The internal always-on entry through which `crate::scripts` hands over prompts, negative
/// prompts, seeds and subseeds already expanded per image (Dynamic Prompts, Randomizer
/// Keywords). Its lists replace the ones built from the request's single prompt and seed.
pub const PER_IMAGE_SCRIPT: &str = "diffusiond per-image";

/// Whether an `alwayson_scripts` key names the Dynamic Prompts extension. A1111 wants the exact
/// title with its version (`Dynamic Prompts v2.17.1`); any version is accepted here, so clients
/// written against another release keep working.
pub fn is_dynamic_prompts_title(title: &str) -> bool {
    let lower = title.to_lowercase();
    lower.starts_with("dynamic prompts") || lower.starts_with("dynamicprompts")
}

/// The per-image lists of the [`PER_IMAGE_SCRIPT`] entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct PerImage {
    pub prompts: Vec<String>,
    pub negative_prompts: Vec<String>,
    pub seeds: Vec<i64>,
    pub subseeds: Vec<i64>,
}

fn apply_per_image(job: &mut GenerationJob, scripts: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    let Some(entry) = scripts.and_then(|m| m.get(PER_IMAGE_SCRIPT)) else { return Ok(()) };
    let lists: PerImage = entry
        .get("args")
        .and_then(|a| a.get(0))
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            ApiError::field("alwayson_scripts", format!("`{PER_IMAGE_SCRIPT}` takes one object"))
        })?;
    let count = job.image_count();
    let lens = [lists.prompts.len(), lists.negative_prompts.len(), lists.seeds.len(), lists.subseeds.len()];
    if lens.iter().any(|&n| n != count) {
        return Err(ApiError::field(
            "alwayson_scripts",
            format!("`{PER_IMAGE_SCRIPT}` needs {count} entries per list, got {lens:?}"),
        ));
    }
    job.prompts = lists.prompts;
    job.negative_prompts = lists.negative_prompts;
    job.seeds = lists.seeds;
    job.subseeds = lists.subseeds;
    Ok(())
}

/// What prompt expansion starts from (spec step 3): the prompts with styles applied, one seed
/// and subseed per image, and the batch shape.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptInputs {
    pub prompt: String,
    pub negative_prompt: String,
    pub seeds: Vec<i64>,
    pub subseeds: Vec<i64>,
    pub seed: i64,
    pub subseed: i64,
    pub subseed_strength: f64,
    pub batch_size: usize,
    pub n_iter: usize,
}

/// [`PromptInputs`] of a txt2img request (seeds −1 drawn here).
pub fn txt2img_prompt_inputs(req: &Txt2ImgRequest, catalog: &Snapshot) -> Result<PromptInputs, ApiError> {
    prompt_inputs(&common!(req), catalog, None)
}

/// [`PromptInputs`] of an img2img request: several init images set the batch size.
pub fn img2img_prompt_inputs(req: &Img2ImgRequest, catalog: &Snapshot) -> Result<PromptInputs, ApiError> {
    let images = req.init_images.as_ref().map_or(0, Vec::len);
    prompt_inputs(&common!(req), catalog, (images > 1).then_some(images))
}

fn prompt_inputs(c: &Common, catalog: &Snapshot, batch: Option<usize>) -> Result<PromptInputs, ApiError> {
    let batch_size = match batch {
        Some(b) => b,
        None => check_range("batch_size", c.batch_size.unwrap_or(1), 1, 64)? as usize,
    };
    let n_iter = check_range("n_iter", c.n_iter.unwrap_or(1), 1, 10_000)? as usize;
    let count = batch_size * n_iter;
    let subseed_strength = c.subseed_strength.unwrap_or(0.0);
    let (seed, subseed) = (resolve_seed(c.seed), resolve_seed(c.subseed));
    let variation = subseed_strength != 0.0;
    let (prompt, negative_prompt, _) = apply_styles(catalog, c.prompt, c.negative_prompt, c.styles);
    Ok(PromptInputs {
        prompt,
        negative_prompt,
        seeds: (0..count as i64).map(|i| if variation { seed } else { seed + i }).collect(),
        subseeds: (0..count as i64).map(|i| subseed + i).collect(),
        seed,
        subseed,
        subseed_strength,
        batch_size,
        n_iter,
    })
}

fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<i64, ApiError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::field(field, format!("`{field}` must be in {min}..={max}, got {value}")))
    }
}

fn check_size(field: &str, value: impl Into<i64>) -> Result<u32, ApiError> {
    check_range(field, value.into(), 8, 8192).map(|v| v as u32)
}

fn check_steps(field: &str, value: i64) -> Result<u32, ApiError> {
    check_range(field, value, 1, 1000).map(|v| v as u32)
}

fn check_unit(field: &str, value: f64) -> Result<(), ApiError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::field(field, format!("`{field}` must be in 0..=1, got {value}")))
    }
}

/// -1 (or null) draws a random seed in A1111's range `[0, 4294967294)`.
pub fn resolve_seed(seed: Option<i64>) -> i64 {
    match seed {
        Some(s) if s != -1 => s,
        _ => (random_u64() % 4_294_967_294) as i64,
    }
}

fn random_u64() -> u64 {
    // The standard library's hasher keys come from the OS's random source and differ for every
    // `RandomState`; mixing in the clock keeps consecutive draws apart too.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.finish()
}

fn random_task_suffix() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = random_u64();
    (0..7)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Applies prompt styles by name (unknown names are ignored, as A1111 does): a style holding
/// `{prompt}` wraps the prompt, any other is appended after `", "`.
fn apply_styles(
    catalog: &Snapshot,
    prompt: &str,
    negative: &str,
    names: &[String],
) -> (String, String, Vec<String>) {
    let merge = |style: &str, text: String| {
        if style.contains("{prompt}") {
            style.replace("{prompt}", &text)
        } else {
            [text.trim(), style.trim()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let (mut p, mut n) = (prompt.to_string(), negative.to_string());
    let mut applied = Vec::new();
    for name in names {
        if let Some(style) = catalog.styles.iter().find(|s| &s.name == name) {
            p = merge(style.prompt.as_deref().unwrap_or(""), p);
            n = merge(style.negative_prompt.as_deref().unwrap_or(""), n);
            applied.push(name.clone());
        }
    }
    (p, n, applied)
}

/// `hr_checkpoint_name` and `refiner_checkpoint` also accept a substring of a title.
pub fn find_checkpoint_loosely<'a>(catalog: &'a Snapshot, name: &str) -> Option<&'a CheckpointEntry> {
    catalog.find_checkpoint(name).or_else(|| catalog.checkpoints.iter().find(|e| e.title().contains(name)))
}

/// Option `sd_vae`: `Automatic` uses a VAE named after the checkpoint if there is one, `None`
/// the checkpoint's own; a file name from `/sd-vae` picks that file (unknown names fall back to
/// the checkpoint's own, as A1111 does).
fn resolve_vae(catalog: &Snapshot, checkpoint: &CheckpointEntry, choice: &str) -> Option<PathBuf> {
    match choice {
        "None" | "" => None,
        "Automatic" => {
            let stem = checkpoint.stem();
            catalog
                .vaes
                .iter()
                .find(|v| {
                    let name = v.model_name.as_str();
                    [".vae.safetensors", ".vae.ckpt", ".vae.pt", ".safetensors", ".ckpt", ".pt"]
                        .iter()
                        .any(|ext| name.strip_suffix(ext) == Some(stem.as_str()))
                })
                .map(|v| PathBuf::from(&v.filename))
        }
        name => {
            let found =
                catalog.vaes.iter().find(|v| v.model_name == name).map(|v| PathBuf::from(&v.filename));
            if found.is_none() {
                tracing::warn!(vae = name, "sd_vae names no VAE file; using the checkpoint's own");
            }
            found
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compat::api::catalog::PromptStyleItem;
    use compat::api::error::parse_body;
    use serde_json::json;

    fn entry() -> CheckpointEntry {
        CheckpointEntry {
            name: "m.safetensors".into(),
            model_name: "m".into(),
            path: "/ckpt/m.safetensors".into(),
            filename: "/ckpt/m.safetensors".into(),
            config: None,
            sha256: Some("6ce0161689aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
            legacy_hash: None,
        }
    }

    fn with_ctx<T>(f: impl FnOnce(&ValidateContext) -> T) -> T {
        let catalog = Snapshot {
            checkpoints: vec![entry()],
            styles: vec![PromptStyleItem {
                name: "cinematic".into(),
                prompt: Some("cinematic {prompt}".into()),
                negative_prompt: Some("blurry".into()),
            }],
            ..Snapshot::default()
        };
        let selected = catalog.checkpoints[0].clone();
        let ctx = ValidateContext {
            catalog: &catalog,
            options: compat::api::options::defaults(),
            selected: Some(&selected),
            lora_dir: Path::new("/l"),
            embeddings_dir: Path::new("/e"),
            file_hash: &|_| None,
        };
        f(&ctx)
    }

    fn t2i(body: Value) -> Result<ValidatedJob, ApiError> {
        let req: Txt2ImgRequest = parse_body(body.to_string().as_bytes()).unwrap();
        with_ctx(|ctx| txt2img(&req, ctx))
    }

    #[test]
    fn txt2img_defaults_resolve_to_a1111_values() {
        let v = t2i(json!({"prompt": "cat", "seed": 1003, "batch_size": 2, "n_iter": 2})).unwrap();
        let j = &v.job;
        assert_eq!((j.width, j.height, j.steps, j.cfg_scale), (512, 512, 50, 7.0));
        assert_eq!((j.sampler.as_str(), j.scheduler.as_str()), ("Euler", "Automatic"));
        assert_eq!(j.seeds, vec![1003, 1004, 1005, 1006]);
        assert_eq!(j.prompts.len(), 4);
        assert_eq!(j.clip_skip, 1);
        assert_eq!(j.denoising_strength, None);
        assert_eq!(j.infotext.model_hash.as_deref(), Some("6ce0161689"));
        assert_eq!(j.infotext.model_name, "m");
        assert!(v.task_id.starts_with("task(txt2img-") && v.task_id.len() == 21, "{}", v.task_id);
        assert!(!v.save_images && v.send_images);
    }

    #[test]
    fn txt2img_variation_seeds_share_the_seed() {
        let v = t2i(json!({"seed": 5, "subseed": 9, "subseed_strength": 0.3, "batch_size": 3})).unwrap();
        assert_eq!(v.job.seeds, vec![5, 5, 5]);
        assert_eq!(v.job.subseeds, vec![9, 10, 11]);
        let v = t2i(json!({"seed": -1})).unwrap();
        assert!((0..4_294_967_294).contains(&v.job.seeds[0]));
    }

    #[test]
    fn txt2img_override_settings_apply_and_reject_unknown_keys() {
        let v =
            t2i(json!({"override_settings": {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "nope"}}))
                .unwrap();
        assert_eq!(v.job.clip_skip, 2);
        assert_eq!(v.checkpoint.name, "m.safetensors", "an unknown checkpoint override is dropped");
        assert!(v.persist_overrides.is_empty());
        let v = t2i(json!({"override_settings": {"CLIP_stop_at_last_layers": 2},
            "override_settings_restore_afterwards": false}))
        .unwrap();
        assert_eq!(v.persist_overrides, vec![("CLIP_stop_at_last_layers".to_string(), json!(2))]);
        let err = t2i(json!({"override_settings": {"forge_additional_modules": ["x"]}})).err().unwrap();
        assert!(matches!(err, ApiError::UnknownOption(k) if k == "forge_additional_modules"));
    }

    #[test]
    fn txt2img_rejects_out_of_range_values_and_unknown_scripts() {
        assert!(matches!(t2i(json!({"steps": 0})), Err(ApiError::Validation(_))));
        assert!(matches!(t2i(json!({"width": 4})), Err(ApiError::Validation(_))));
        let err = t2i(json!({"script_name": "x/y/z plot"})).err().unwrap();
        assert_eq!(err.to_string(), "Script 'x/y/z plot' not found");
        let err = t2i(json!({"alwayson_scripts": {"ControlNet": {"args": []}}})).err().unwrap();
        assert_eq!(err.to_string(), "always on script ControlNet not found");
        assert!(t2i(json!({"alwayson_scripts": {"Seed": {"args": []}}})).is_ok());
    }

    #[test]
    fn txt2img_hires_computes_target_and_keeps_first_pass_size() {
        let v = t2i(json!({"width": 512, "height": 768, "enable_hr": true, "hr_scale": 2,
            "hr_second_pass_steps": 10.0, "denoising_strength": 0.5, "sampler_name": "DPM++ 2M Karras"}))
        .unwrap();
        let h = v.job.hires.as_ref().unwrap();
        assert_eq!((v.job.width, v.job.height), (512, 768));
        assert_eq!((h.target_width, h.target_height, h.steps), (1024, 1536, 10));
        assert_eq!((h.upscaler.as_str(), h.sampler.as_str()), ("Latent", "DPM++ 2M"));
        assert_eq!(v.job.denoising_strength, Some(0.5));
        let v = t2i(json!({"enable_hr": true, "hr_resize_x": 1024})).unwrap();
        assert_eq!(v.job.hires.unwrap().target_height, 1024);
        let err = t2i(json!({"enable_hr": true, "hr_upscaler": "Nope"})).err().unwrap();
        assert_eq!(err.to_string(), "could not find upscaler named Nope");
    }

    #[test]
    fn txt2img_styles_wrap_or_append() {
        let v =
            t2i(json!({"prompt": "a cat", "negative_prompt": "ugly", "styles": ["cinematic", "missing"]}))
                .unwrap();
        assert_eq!(v.job.prompts[0], "cinematic a cat");
        assert_eq!(v.job.negative_prompts[0], "ugly, blurry");
        assert_eq!(v.job.styles, vec!["cinematic"]);
    }

    #[test]
    fn img2img_requires_init_images_and_decodes_them() {
        let req: Img2ImgRequest = parse_body(b"{}").unwrap();
        let err = with_ctx(|ctx| img2img(&req, ctx)).err().unwrap();
        assert_eq!(err.to_string(), "Init image not found");
        let png = images::encode_png(
            &crate::engine::job::RgbImage { width: 1, height: 1, rgb: vec![1, 2, 3] },
            &[],
        )
        .unwrap();
        let b64 = images::encode_base64(&png);
        let body = json!({"init_images": [format!("data:image/png;base64,{b64}"), b64], "batch_size": 4});
        let req: Img2ImgRequest = parse_body(body.to_string().as_bytes()).unwrap();
        let v = with_ctx(|ctx| img2img(&req, ctx)).unwrap();
        assert_eq!(v.job.batch_size, 2, "two images shrink the batch to two");
        assert_eq!(v.job.seeds.len(), 2);
        let params = v.job.img2img.as_ref().unwrap();
        assert_eq!(params.init_images[0].rgb, vec![1, 2, 3]);
        assert_eq!(v.job.denoising_strength, Some(0.75));
        let echo = serde_json::to_value(&v.parameters).unwrap();
        assert_eq!(echo["init_images"], Value::Null);
        let body = json!({"init_images": ["!!!"]});
        let req: Img2ImgRequest = parse_body(body.to_string().as_bytes()).unwrap();
        let err = with_ctx(|ctx| img2img(&req, ctx)).err().unwrap();
        assert_eq!(err.to_string(), "Invalid encoded image");
    }
}
