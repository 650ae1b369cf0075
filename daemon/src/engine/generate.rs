//! The one function through which the engine runs a generation job: it maps the validated job
//! onto the pipeline ([`crate::generation`]), reports progress, honours interrupt and skip, and
//! writes each image's infotext.

use compat::infotext::{format_infotext, GenerationInfo};
use models::checkpoint::StableDiffusion;
use models::conditioning::EmphasisMode;
use models::pipeline::RgbImage as PipelineImage;
use models::rng::RandnSource;
use models::sampling::{Control, UniPcOptions};

use super::job::{GeneratedImage, GenerationJob, GenerationMode, JobError};
use super::progress::StepHooks;
use crate::generation::{txt2img, GenerationError, TextEncoders, Txt2ImgSpec};

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
    if job.hires.is_some() {
        return Err(JobError::Unsupported("hires fix is not available in this build yet".into()));
    }
    let init = match (&job.mode, &job.img2img) {
        (GenerationMode::Img2Img, Some(i)) => {
            if i.mask.is_some() {
                return Err(JobError::Unsupported("inpainting is not available in this build yet".into()));
            }
            if i.init_images.iter().any(|im| im.width != job.width || im.height != job.height) {
                return Err(JobError::Unsupported(
                    "init images must have the requested width and height (resizing is not available yet)"
                        .into(),
                ));
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
    let embedding_files: Vec<std::path::PathBuf> = std::fs::read_dir(&job.embeddings_dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    let text = TextEncoders::new(model, &embedding_files)?;
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
    };
    hooks.set_job_count(job.n_iter);
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
    let generated = txt2img(model, &text, &spec, &mut on_step, &mut stop_after_batch)?;
    Ok(generated
        .into_iter()
        .map(|g| {
            let mut info = GenerationInfo::new(
                g.prompt.clone(),
                g.negative_prompt.clone(),
                job.steps,
                job.sampler.clone(),
                job.cfg_scale,
                g.seed as i64,
                (job.width, job.height),
            );
            if job.scheduler != "Automatic" {
                info.schedule_type = Some(job.scheduler.clone());
            }
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
            if job.mode == GenerationMode::Img2Img {
                info.denoising_strength = job.denoising_strength;
            }
            info.clip_skip = job.clip_skip;
            if settings.eta_noise_seed_delta != 0 {
                info.ensd = Some(settings.eta_noise_seed_delta);
            }
            if settings.randn_source != "GPU" {
                info.rng = Some(settings.randn_source.clone());
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
