//! The one function through which the engine runs a generation job: it maps the validated job
//! onto the pipeline ([`crate::generation`]), reports progress, honours interrupt and skip, and
//! writes each image's infotext.

use compat::infotext::{format_infotext, GenerationInfo, HiresInfo, HiresSize};
use compat::samplers::{sampler_by_name, scheduler_by_name_or_label};
use models::checkpoint::StableDiffusion;
use models::conditioning::EmphasisMode;
use models::pipeline::RgbImage as PipelineImage;
use models::rng::RandnSource;
use models::sampling::{Control, UniPcOptions};

use super::job::{GeneratedImage, GenerationJob, GenerationMode, HiresParams, Img2ImgParams, JobError};
use super::progress::StepHooks;
use crate::generation::{
    txt2img_with_loras, GenerationError, HiresSpec, InpaintSpec, TextEncoders, Txt2ImgSpec,
};
use crate::images::Pixels;
use models::upscale_latent::LatentUpscale;

fn emphasis(name: &str) -> EmphasisMode {
    match name {
        "No norm" => EmphasisMode::NoNorm,
        "Ignore" => EmphasisMode::Ignore,
        "None" => EmphasisMode::None,
        _ => EmphasisMode::Original,
    }
}

fn randn_source(name: &str) -> RandnSource {
    match name {
        "CPU" => RandnSource::Cpu,
        "NV" => RandnSource::Nv,
        _ => RandnSource::Gpu,
    }
}

impl From<GenerationError> for JobError {
    fn from(e: GenerationError) -> Self {
        match e {
            GenerationError::Prompt(p) => JobError::Invalid(p.to_string()),
            GenerationError::Model(m) => JobError::Model(m),
            GenerationError::Upscale(j) => j,
        }
    }
}

/// Runs `job` on `model`, reporting each step through `hooks` and returning one image per
/// requested image (fewer when interrupted). Called on the engine thread, under `catch_unwind`.
pub fn generate(
    model: &StableDiffusion,
    job: &GenerationJob,
    hooks: &mut StepHooks,
) -> Result<Vec<GeneratedImage>, JobError> {
    // 4 channels: plain SD; 9: inpainting checkpoints (A1111's image conditioning). Others
    // (instruct-pix2pix's 8) need conditionings this daemon does not build.
    let channels = model.config.unet.in_channels;
    if channels != 4 && channels != 9 {
        return Err(JobError::Unsupported(format!("UNets with {channels} input channels are not supported")));
    }
    let mut inpaint = None;
    let mut resize_mode = 0;
    let init = match (&job.mode, &job.img2img) {
        (GenerationMode::Img2Img, Some(i)) => {
            resize_mode = i.resize_mode;
            inpaint = i.mask.as_ref().map(|m| InpaintSpec {
                mask: Pixels::new(m.width, m.height, 1, m.luma.clone()),
                mask_blur_x: i.mask_blur_x,
                mask_blur_y: i.mask_blur_y,
                mask_round: i.mask_round,
                fill: i.inpainting_fill,
                full_res: i.inpaint_full_res,
                full_res_padding: i.inpaint_full_res_padding,
                invert: i.inpainting_mask_invert,
                mask_weight: job.sampler_settings.inpainting_mask_weight,
            });
            if let Some(m) = i.mask.as_ref() {
                let first = &i.init_images[0];
                if i.inpaint_full_res && (m.width, m.height) != (first.width, first.height) {
                    return Err(JobError::Invalid(format!(
                        "the mask is {}x{} but the init image is {}x{}; \"only masked\" needs them equal",
                        m.width, m.height, first.width, first.height
                    )));
                }
            }
            let images = i
                .init_images
                .iter()
                .map(|im| PipelineImage { width: im.width, height: im.height, data: im.rgb.clone() })
                .collect();
            Some((images, job.denoising_strength.unwrap_or(0.75)))
        }
        _ => None,
    };
    let hires = job.hires.as_ref().map(|h| {
        let (w, h_) = (job.width as i64, job.height as i64);
        let (tw, th) = (h.target_width as i64, h.target_height as i64);
        // A1111's hr_upscale_to_x/y: with both resize sizes, scale to cover the target and let
        // the second pass crop the latent.
        let (up_w, up_h) = if h.crop_to_target {
            if (w as f64 / h_ as f64) < (tw as f64 / th as f64) {
                (tw, tw * h_ / w)
            } else {
                (th * w / h_, th)
            }
        } else {
            (tw, th)
        };
        HiresSpec {
            upscale_to_width: up_w,
            upscale_to_height: up_h,
            target_width: tw,
            target_height: th,
            upscaler: h.upscaler.clone(),
            upscaler_model: h.upscaler_model.clone(),
            steps: h.steps as usize,
            sampler_name: h.sampler.clone(),
            scheduler: Some(h.scheduler.clone()),
            prompts: h.prompts.clone(),
            negative_prompts: h.negative_prompts.clone(),
            denoising_strength: h.denoising_strength,
        }
    });
    if let Some(h) = &hires {
        if LatentUpscale::from_name(&h.upscaler).is_none()
            && h.upscaler_model.is_none()
            && !["None", "Lanczos", "Nearest"].contains(&h.upscaler.as_str())
        {
            return Err(JobError::Unsupported(format!(
                "the {} upscaler is not available in this build",
                h.upscaler
            )));
        }
    }
    let text = text_encoders(model, &job.embeddings_dir)?;
    let settings = &job.sampler_settings;
    let spec = Txt2ImgSpec {
        prompts: job.prompts.clone(),
        negative_prompts: job.negative_prompts.clone(),
        seeds: job.seeds.iter().map(|&s| s as u64).collect(),
        subseeds: job.subseeds.iter().map(|&s| s as u64).collect(),
        subseed_strength: job.subseed_strength,
        seed_resize_from_w: job.seed_resize_from.map_or(0, |(w, _)| w as i64),
        seed_resize_from_h: job.seed_resize_from.map_or(0, |(_, h)| h as i64),
        steps: job.steps as usize,
        cfg_scale: job.cfg_scale,
        width: job.width as i64,
        height: job.height as i64,
        sampler_name: job.sampler.clone(),
        scheduler: Some(job.scheduler.clone()),
        batch_size: job.batch_size,
        n_iter: job.n_iter,
        clip_skip: job.clip_skip.max(1) as usize,
        emphasis: emphasis(&settings.emphasis),
        randn_source: randn_source(&settings.randn_source),
        eta_noise_seed_delta: settings.eta_noise_seed_delta,
        eta: job.eta,
        comma_padding_backtrack: 20,
        pad_cond_uncond: false,
        uni_pc: UniPcOptions::default(),
        init,
        resize_mode,
        inpaint,
        hires,
    };
    // The hires pass counts as a job of its own in A1111's progress.
    hooks.set_job_count(job.n_iter * if spec.hires.is_some() { 2 } else { 1 });
    let mut batch_no = 0;
    let steps = job.steps as usize;
    let cell = std::cell::RefCell::new(hooks);
    let mut on_step = |step: usize, _total: usize, denoised: &tch::Tensor| {
        let mut h = cell.borrow_mut();
        if step == 0 {
            h.begin_batch(batch_no, steps);
            batch_no += 1;
        }
        h.step(step);
        if h.wants_preview(step) {
            let _ = h.preview_latent(denoised);
        }
        if h.interrupted() || h.skipped() {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let mut stop_after_batch = || {
        let mut h = cell.borrow_mut();
        h.end_batch();
        h.interrupted()
    };
    let lora_dir = (!job.disable_extra_networks).then_some(job.lora_dir.as_path());
    let generated = txt2img_with_loras(model, &text, &spec, lora_dir, &mut on_step, &mut stop_after_batch)?;
    Ok(generated
        .into_iter()
        .enumerate()
        .map(|(index, g)| {
            let mut info = GenerationInfo::new(
                g.prompt.clone(),
                g.negative_prompt.clone(),
                job.steps,
                job.sampler.clone(),
                job.cfg_scale,
                g.seed as i64,
                (job.width, job.height),
            );
            // A1111 writes the request's label, unless the first pass ran a scheduler function
            // other than Automatic (the sampler's default one, e.g. Karras for DPM++ 2M).
            let first_schedule = recorded_schedule_label(&job.sampler, &job.scheduler);
            info.schedule_type = Some(first_schedule.unwrap_or(&job.scheduler).to_string());
            if job.infotext.add_model_hash {
                info.model_hash = job.infotext.model_hash.clone();
            }
            if job.infotext.add_model_name {
                info.model = Some(job.infotext.model_name.clone());
            }
            if job.subseed_strength > 0.0 {
                info.variation_seed = Some(g.subseed as i64);
                info.variation_seed_strength = Some(job.subseed_strength);
            }
            if job.mode == GenerationMode::Img2Img || job.hires.is_some() {
                info.denoising_strength = job.denoising_strength;
            }
            info.clip_skip = job.clip_skip;
            if settings.eta_noise_seed_delta != 0 {
                info.ensd = Some(settings.eta_noise_seed_delta);
            }
            if settings.randn_source != "GPU" {
                info.rng = Some(settings.randn_source.clone());
            }
            // `extra_generation_params` in A1111's insertion order: the txt2img/img2img `init`
            // keys (hires fix, mask), then per batch the LoRA hashes (network activation) and
            // the text encoder's keys (`setup_conds`).
            if let Some(h) = &job.hires {
                info.push_hires(&hires_info(h, index, first_schedule));
            }
            if let Some(i) = job.img2img.as_ref().filter(|i| i.mask.is_some()) {
                push_mask_keys(&mut info, i);
            }
            if job.infotext.lora_add_hashes && !g.lora_hashes.is_empty() {
                let hashes: Vec<String> = g.lora_hashes.iter().map(|(n, h)| format!("{n}: {h}")).collect();
                info.push_extra("Lora hashes", hashes.join(", ").as_str());
            }
            for (key, value) in &g.encoder_params {
                if key == "TI hashes" && !job.infotext.textual_inversion_add_hashes {
                    continue;
                }
                info.push_extra(key.as_str(), value.as_str());
            }
            if job.infotext.add_version {
                info.version = Some(job.infotext.version.clone());
            }
            GeneratedImage {
                rgb: g.image.data,
                width: g.image.width,
                height: g.image.height,
                seed: g.seed as i64,
                subseed: g.subseed as i64,
                prompt: g.prompt,
                negative_prompt: g.negative_prompt,
                infotext: format_infotext(&info),
            }
        })
        .collect())
}

/// Samplers that sample over timesteps (`sd_samplers_timesteps`): they never record a schedule.
const TIMESTEP_SAMPLERS: [&str; 4] = ["DDIM", "DDIM CFG++", "PLMS", "UniPC"];

/// The schedule label A1111's `KDiffusionSampler.get_sigmas` records for a pass: the scheduler
/// function it runs (for `Automatic`, the sampler's default); `None` when it runs none (the
/// timestep samplers, or `Automatic` for a sampler without a default).
fn recorded_schedule_label(sampler: &str, scheduler: &str) -> Option<&'static str> {
    let info = sampler_by_name(sampler)?;
    if TIMESTEP_SAMPLERS.contains(&info.name) {
        return None;
    }
    let name = match scheduler {
        "Automatic" => info.default_scheduler()?,
        label => scheduler_by_name_or_label(label)?.name,
    };
    scheduler_by_name_or_label(name).filter(|s| s.name != "automatic").map(|s| s.label)
}

/// The hires keys as `StableDiffusionProcessingTxt2Img.init` and the hires pass's `get_sigmas`
/// record them: `Hires schedule type` when the hires pass ran a scheduler other than the one
/// recorded for the first pass, `Hires steps` and `Hires upscaler` only when requested.
fn hires_info(h: &HiresParams, index: usize, first_schedule: Option<&str>) -> HiresInfo {
    let hires_schedule = recorded_schedule_label(&h.sampler, &h.scheduler);
    HiresInfo {
        checkpoint: None,
        sampler: Some(h.sampler.clone()),
        // Per image; push_hires leaves them out where equal to the image's own prompts (the
        // validated lists hold the first-pass prompts where no hires prompt was given).
        prompt: h.prompts.get(index).cloned(),
        negative_prompt: h.negative_prompts.get(index).cloned(),
        schedule_type: hires_schedule.filter(|s| Some(*s) != first_schedule).map(str::to_string),
        size: match (h.resize, h.scale) {
            (Some((w, hh)), _) => HiresSize::Resize(w, hh),
            (None, scale) => HiresSize::Scale(scale.unwrap_or(2.0)),
        },
        steps: h.second_pass_steps,
        upscaler: h.upscaler_given.then(|| h.upscaler.clone()),
    }
}

/// The img2img `init` keys of an inpainting job, in A1111's order.
fn push_mask_keys(info: &mut GenerationInfo, i: &Img2ImgParams) {
    if i.inpainting_mask_invert {
        info.push_extra("Mask mode", "Inpaint not masked");
    }
    if i.mask_blur_x > 0 || i.mask_blur_y > 0 {
        // The `mask_blur` property is None (and the key left out) when the two directions differ.
        if i.mask_blur_x == i.mask_blur_y {
            info.push_extra("Mask blur", i64::from(i.mask_blur_x));
        }
    }
    // A blank mask makes A1111 fall back to the whole picture without these keys.
    let blank = i.mask.as_ref().is_some_and(|m| m.luma.iter().all(|&v| v == 0));
    if i.inpaint_full_res && !blank {
        info.push_extra("Inpaint area", "Only masked");
        info.push_extra("Masked area padding", i64::from(i.inpaint_full_res_padding));
    }
    match i.inpainting_fill {
        0 => info.push_extra("Masked content", "fill"),
        2 => info.push_extra("Masked content", "latent noise"),
        3 => info.push_extra("Masked content", "latent nothing"),
        _ => {}
    }
}

/// What the cached text encoders were built for: the model (its text-encoder width; embeddings
/// of another width are skipped) and every embedding file with its size and modification time,
/// so added, removed or replaced files are picked up on the next job.
#[derive(PartialEq)]
struct TextKey {
    width: i64,
    files: Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)>,
}

thread_local! {
    /// Building the tokenizer and reading the embeddings costs tens of milliseconds per job; the
    /// engine thread keeps the last set (tensors never leave this thread).
    static TEXT_ENCODERS: std::cell::RefCell<Option<(TextKey, std::rc::Rc<TextEncoders>)>> =
        const { std::cell::RefCell::new(None) };
}

fn text_encoders(
    model: &StableDiffusion,
    embeddings_dir: &std::path::Path,
) -> Result<std::rc::Rc<TextEncoders>, JobError> {
    let mut files: Vec<_> = std::fs::read_dir(embeddings_dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let meta = e.metadata().ok().filter(|m| m.is_file())?;
                    Some((e.path(), meta.len(), meta.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let key = TextKey { width: model.config.clip.hidden, files };
    if let Some(cached) =
        TEXT_ENCODERS.with_borrow(|c| c.as_ref().filter(|(k, _)| *k == key).map(|(_, t)| t.clone()))
    {
        return Ok(cached);
    }
    let paths: Vec<_> = key.files.iter().map(|(p, _, _)| p.clone()).collect();
    let text = std::rc::Rc::new(TextEncoders::new(model, &paths)?);
    TEXT_ENCODERS.with_borrow_mut(|c| *c = Some((key, text.clone())));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_schedule_label_follows_get_sigmas() {
        // Automatic runs the sampler's default schedule, which A1111 then records.
        assert_eq!(recorded_schedule_label("DPM++ 2M", "Automatic"), Some("Karras"));
        assert_eq!(recorded_schedule_label("DPM++ 2M SDE", "Automatic"), Some("Exponential"));
        // No default: the model's own sigmas, nothing recorded.
        assert_eq!(recorded_schedule_label("Euler a", "Automatic"), None);
        assert_eq!(recorded_schedule_label("Euler", "Karras"), Some("Karras"));
        // Timestep samplers never call get_sigmas.
        assert_eq!(recorded_schedule_label("DDIM", "Karras"), None);
        assert_eq!(recorded_schedule_label("UniPC", "Automatic"), None);
    }
}
