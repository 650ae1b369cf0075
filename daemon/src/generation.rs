//! From a validated request to images: A1111's `process_images` for txt2img, batch by batch.
//! Parses the prompts (`compat::prompt`), builds and encodes the conditioning schedules
//! (`models::conditioning`), resolves the sampler and scheduler, and runs the pipeline
//! (`models::pipeline`) with A1111's seeds.

use std::rc::Rc;

use compat::prompt::{parse_attention, parse_prompts, PromptRequest, ScheduleEntry};
use compat::samplers::resolve;
use models::checkpoint::StableDiffusion;
use models::clip::tokenizer::ClipTokenizer;
use models::conditioning::{chunk_text, encode_texts, Embedding, EmbeddingDb, EmphasisMode};
use models::pipeline::{BatchParams, CondSchedule, ImageConds, RgbImage, StepHook};
use models::rng::{NoiseOptions, RandnSource};
use models::sampling::{SamplerKind, SamplerParams, ScheduleOptions, SchedulerKind, UniPcOptions};

/// The generation settings of one txt2img request, after validation and `-1` seeds drawn.
#[derive(Clone, Debug)]
pub struct Txt2ImgSpec {
    /// One prompt and negative prompt per image (`n_iter × batch_size`).
    pub prompts: Vec<String>,
    pub negative_prompts: Vec<String>,
    /// One seed and subseed per image (A1111's `all_seeds` / `all_subseeds`).
    pub seeds: Vec<u64>,
    pub subseeds: Vec<u64>,
    pub subseed_strength: f64,
    pub seed_resize_from_w: i64,
    pub seed_resize_from_h: i64,
    pub steps: usize,
    pub cfg_scale: f64,
    pub width: i64,
    pub height: i64,
    pub sampler_name: String,
    pub scheduler: Option<String>,
    pub batch_size: usize,
    pub n_iter: usize,
    /// `CLIP_stop_at_last_layers`.
    pub clip_skip: usize,
    pub emphasis: EmphasisMode,
    pub randn_source: RandnSource,
    pub eta_noise_seed_delta: i64,
    pub eta: Option<f64>,
    pub comma_padding_backtrack: usize,
    /// A1111's `pad_cond_uncond` option.
    pub pad_cond_uncond: bool,
    /// UniPC options (`uni_pc_*`).
    pub uni_pc: UniPcOptions,
    /// img2img: the init images (already at `width`×`height`; one image is used for the whole
    /// batch, as A1111 does) and the denoising strength.
    pub init: Option<(Vec<RgbImage>, f64)>,
}

/// One generated image and what it was made with.
#[derive(Clone, Debug)]
pub struct Generated {
    pub image: RgbImage,
    pub seed: u64,
    pub subseed: u64,
    pub prompt: String,
    pub negative_prompt: String,
}

/// Errors a generation can end with.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("invalid prompt: {0}")]
    Prompt(#[from] compat::error::PromptError),
    #[error("{0}")]
    Model(#[from] models::Error),
}

/// The text-side state a generation needs besides the model: the tokenizer and the embeddings.
pub struct TextEncoders {
    pub tokenizer: ClipTokenizer,
    pub embeddings: EmbeddingDb,
}

impl TextEncoders {
    /// The tokenizer and the embeddings in `embedding_files` that fit `model`'s text encoder.
    pub fn new(model: &StableDiffusion, embedding_files: &[std::path::PathBuf]) -> models::Result<Self> {
        let tokenizer = ClipTokenizer::new()?;
        let mut loaded = Vec::new();
        for path in embedding_files {
            match Embedding::load(path) {
                Ok(e) => loaded.push(Rc::new(e)),
                Err(err) => tracing::warn!(path = %path.display(), cause = %err, "embedding skipped"),
            }
        }
        let embeddings = EmbeddingDb::new(&tokenizer, loaded, model.config.clip.hidden);
        Ok(TextEncoders { tokenizer, embeddings })
    }

    /// Encodes one prompt's schedule as A1111 does: all its texts in one batch.
    fn encode_schedule(
        &self,
        model: &StableDiffusion,
        schedule: &[ScheduleEntry],
        spec: &Txt2ImgSpec,
    ) -> CondSchedule {
        let chunked: Vec<_> = schedule
            .iter()
            .map(|entry| {
                let segments = if spec.emphasis == EmphasisMode::None {
                    vec![(entry.text.clone(), 1.0)]
                } else {
                    parse_attention(&entry.text)
                };
                chunk_text(&self.tokenizer, &segments, &self.embeddings, spec.comma_padding_backtrack)
            })
            .collect();
        let z = encode_texts(&model.clip, &chunked, spec.clip_skip, spec.emphasis);
        CondSchedule(
            schedule.iter().enumerate().map(|(i, e)| (e.end_at_step, z.narrow(0, i as i64, 1))).collect(),
        )
    }
}

/// Runs every batch of a txt2img request. `hook` sees each step of each batch.
pub fn txt2img(
    model: &StableDiffusion,
    text: &TextEncoders,
    spec: &Txt2ImgSpec,
    hook: &mut StepHook,
    stop_after_batch: &mut dyn FnMut() -> bool,
) -> Result<Vec<Generated>, GenerationError> {
    let _guard = tch::no_grad_guard();
    let resolved = resolve(Some(&spec.sampler_name), spec.scheduler.as_deref());
    let sampler = SamplerKind::from_id(resolved.sampler.id)
        .ok_or_else(|| models::Error::Sampling(format!("unknown sampler {}", resolved.sampler.id)))?;
    let scheduler = SchedulerKind::from_id(resolved.scheduler.name).unwrap_or(SchedulerKind::Automatic);
    // Prompt schedules count model evaluations: twice the steps for second-order samplers.
    let schedule_steps = spec.steps * if sampler.options().second_order { 2 } else { 1 };
    let total = spec.batch_size * spec.n_iter;
    if spec.prompts.len() != total
        || spec.negative_prompts.len() != total
        || spec.seeds.len() != total
        || spec.subseeds.len() != total
    {
        return Err(models::Error::Sampling(format!(
            "one prompt, negative prompt, seed and subseed per image ({total})"
        ))
        .into());
    }
    // Each distinct (prompt, negative prompt) pair is parsed and encoded once.
    let mut encoded: Vec<((String, String), ImageConds)> = Vec::new();
    let mut conds_for = |prompt: &str, negative: &str| -> Result<ImageConds, GenerationError> {
        if let Some((_, c)) = encoded.iter().find(|((p, n), _)| p == prompt && n == negative) {
            return Ok(c.clone());
        }
        let parsed = parse_prompts(&PromptRequest {
            prompt,
            negative_prompt: negative,
            steps: schedule_steps as u32,
            hires: None,
            use_old_scheduling: false,
        })?;
        let pass = &parsed.first_pass;
        let c = ImageConds {
            positive: pass
                .sub_prompts
                .iter()
                .map(|s| (text.encode_schedule(model, &s.schedule, spec), s.weight))
                .collect(),
            negative: text.encode_schedule(model, &pass.negative, spec),
        };
        encoded.push(((prompt.to_string(), negative.to_string()), c.clone()));
        Ok(c)
    };
    let (seeds, subseeds) = (&spec.seeds, &spec.subseeds);
    let noise = NoiseOptions {
        source: spec.randn_source,
        subseed_strength: spec.subseed_strength,
        seed_resize_from_w: spec.seed_resize_from_w,
        seed_resize_from_h: spec.seed_resize_from_h,
        eta_noise_seed_delta: spec.eta_noise_seed_delta,
    };
    let sampler_params = SamplerParams { eta: spec.eta, uni_pc: spec.uni_pc, ..SamplerParams::default() };
    let pad_cond_uncond = spec.pad_cond_uncond.then(|| {
        let empty = [ScheduleEntry { end_at_step: schedule_steps as u32, text: String::new() }];
        text.encode_schedule(model, &empty, spec).0.remove(0).1
    });
    let mut out = Vec::with_capacity(total);
    // img2img: the init latents of one batch (A1111 encodes once per request).
    let init = match &spec.init {
        Some((images, _)) => Some(init_latents(model, images, spec)?),
        None => None,
    };
    for batch in 0..spec.n_iter {
        let range = batch * spec.batch_size..(batch + 1) * spec.batch_size;
        let conds = range
            .clone()
            .map(|i| conds_for(&spec.prompts[i], &spec.negative_prompts[i]))
            .collect::<Result<Vec<_>, _>>()?;
        let params = BatchParams {
            width: spec.width,
            height: spec.height,
            steps: spec.steps,
            cfg_scale: spec.cfg_scale,
            sampler,
            scheduler,
            sampler_params: sampler_params.clone(),
            schedule_options: ScheduleOptions::default(),
            noise: noise.clone(),
            seeds: &seeds[range.clone()],
            subseeds: &subseeds[range.clone()],
            conds: &conds,
            init: init.as_ref().map(|t| (t, spec.init.as_ref().map_or(0.0, |(_, d)| *d))),
            pad_cond_uncond: pad_cond_uncond.as_ref().map(|t| t.shallow_clone()),
        };
        let latents = model.sample_batch(&params, hook)?;
        for (i, image) in model.decode_to_rgb(&latents)?.into_iter().enumerate() {
            out.push(Generated {
                image,
                seed: seeds[range.start + i],
                subseed: subseeds[range.start + i],
                prompt: spec.prompts[range.start + i].clone(),
                negative_prompt: spec.negative_prompts[range.start + i].clone(),
            });
        }
        if stop_after_batch() {
            break;
        }
    }
    Ok(out)
}

/// Encodes the init images of an img2img request into a batch of scaled latents: one image
/// repeated for the whole batch, or one per image.
fn init_latents(
    model: &StableDiffusion,
    images: &[RgbImage],
    spec: &Txt2ImgSpec,
) -> models::Result<tch::Tensor> {
    let to_tensor = |img: &RgbImage| {
        tch::Tensor::from_slice(&img.data)
            .reshape([img.height as i64, img.width as i64, 3])
            .permute([2, 0, 1])
            .to_kind(tch::Kind::Float)
            / 255.0
    };
    let batch: Vec<tch::Tensor> = if images.len() == 1 {
        (0..spec.batch_size).map(|_| to_tensor(&images[0])).collect()
    } else {
        images.iter().take(spec.batch_size).map(to_tensor).collect()
    };
    if batch.len() != spec.batch_size {
        return Err(models::Error::Sampling(format!(
            "{} init images for a batch of {}",
            images.len(),
            spec.batch_size
        )));
    }
    Ok(model.encode_rgb(&tch::Tensor::stack(&batch, 0)))
}
