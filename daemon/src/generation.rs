//! From a validated request to images: A1111's `process_images` for txt2img, batch by batch.
//! Parses the prompts (`compat::prompt`), builds and encodes the conditioning schedules
//! (`models::conditioning`), resolves the sampler and scheduler, and runs the pipeline
//! (`models::pipeline`) with A1111's seeds.

use std::rc::Rc;

use compat::prompt::{
    extract_extra_networks, parse_attention, parse_prompts, HiresPromptRequest, PromptRequest, ScheduleEntry,
};
use compat::samplers::resolve;
use models::checkpoint::StableDiffusion;
use models::clip::tokenizer::ClipTokenizer;
use models::conditioning::{chunk_text, encode_texts, ChunkedText, Embedding, EmbeddingDb, EmphasisMode};
use models::lora::{find_network, shorthash, LoraSpec};
use models::pipeline::{BatchParams, CondSchedule, ImageConds, RgbImage, StepHook};
use models::upscale_latent::LatentUpscale;

use crate::engine::job::{JobError, RgbImage as JobImage, UpscaleJob, UpscalerModel};
use crate::images::{
    alpha_composite, gaussian_blur_axis, inpaint_crop_region, overlay_image, resize_image, resize_pil,
    rgb_of, rgba_of, upscale_with, Pixels, Resample,
};
use crate::routes::system::run_upscale;
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
    /// img2img: the init images (any size; one image is used for the whole batch, as A1111
    /// does) and the denoising strength.
    pub init: Option<(Vec<RgbImage>, f64)>,
    /// img2img `resize_mode`: 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent
    /// upscale (the init latent is resized bilinearly instead of the image).
    pub resize_mode: u8,
    /// img2img with a mask.
    pub inpaint: Option<InpaintSpec>,
    /// txt2img hires fix.
    pub hires: Option<HiresSpec>,
}

impl Txt2ImgSpec {
    /// One txt2img image with A1111's defaults for everything not given (noise from the GPU
    /// source, clip skip 1, no hires fix, no init image).
    #[allow(clippy::too_many_arguments)]
    pub fn single(
        prompt: &str,
        negative_prompt: &str,
        seed: u64,
        steps: usize,
        cfg_scale: f64,
        width: i64,
        height: i64,
        sampler_name: &str,
    ) -> Self {
        Txt2ImgSpec {
            prompts: vec![prompt.to_string()],
            negative_prompts: vec![negative_prompt.to_string()],
            seeds: vec![seed],
            subseeds: vec![seed],
            subseed_strength: 0.0,
            seed_resize_from_w: 0,
            seed_resize_from_h: 0,
            steps,
            cfg_scale,
            width,
            height,
            sampler_name: sampler_name.to_string(),
            scheduler: None,
            batch_size: 1,
            n_iter: 1,
            clip_skip: 1,
            emphasis: EmphasisMode::Original,
            randn_source: RandnSource::Gpu,
            eta_noise_seed_delta: 0,
            eta: None,
            comma_padding_backtrack: 20,
            pad_cond_uncond: false,
            uni_pc: UniPcOptions::default(),
            init: None,
            resize_mode: 0,
            inpaint: None,
            hires: None,
        }
    }
}

/// Inpainting settings (a1111-api.md §3.3).
#[derive(Clone, Debug)]
pub struct InpaintSpec {
    /// The mask as an `L` image, 255 where the picture is regenerated (before `invert`).
    pub mask: Pixels,
    pub mask_blur_x: u32,
    pub mask_blur_y: u32,
    pub mask_round: bool,
    /// Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    pub fill: u8,
    /// "Only masked": generate the mask's region (plus `full_res_padding`) at full size and
    /// paste it back.
    pub full_res: bool,
    pub full_res_padding: u32,
    pub invert: bool,
    /// Option `inpainting_mask_weight` (inpainting checkpoints only): how far the picture the
    /// UNet is conditioned on moves from the original (0) to the masked-out one (1).
    pub mask_weight: f64,
}

/// Hires fix settings (a1111-api.md §3.2), sizes in pixels.
#[derive(Clone, Debug)]
pub struct HiresSpec {
    /// The size the first pass is upscaled to (`hr_upscale_to_x/y`).
    pub upscale_to_width: i64,
    pub upscale_to_height: i64,
    /// The final size; smaller than the upscale size only when both `hr_resize_x` and
    /// `hr_resize_y` were given (the latent is then centre-cropped).
    pub target_width: i64,
    pub target_height: i64,
    /// `Latent…` modes or a pixel upscaler (`None`, `Lanczos`, `Nearest`, or a model's name).
    pub upscaler: String,
    /// The model file when `upscaler` names one (ESRGAN); the pixels then go through it.
    pub upscaler_model: Option<UpscalerModel>,
    /// `hr_second_pass_steps`; 0 means the first pass's steps.
    pub steps: usize,
    pub sampler_name: String,
    pub scheduler: Option<String>,
    /// `hr_prompt` / `hr_negative_prompt` per image (empty: the first-pass prompt).
    pub prompts: Vec<String>,
    pub negative_prompts: Vec<String>,
    pub denoising_strength: f64,
}

/// One generated image and what it was made with.
#[derive(Clone, Debug)]
pub struct Generated {
    pub image: RgbImage,
    pub seed: u64,
    pub subseed: u64,
    pub prompt: String,
    pub negative_prompt: String,
    /// The LoRA networks merged for this image's batch: (name as written in the prompt, A1111
    /// short hash), for the infotext's `Lora hashes`.
    pub lora_hashes: Vec<(String, String)>,
    /// What A1111's text encoder adds to the infotext (`model_hijack.extra_generation_params`)
    /// as of this image's batch, in insertion order: `TI hashes` (`"name: hash, …"`, A1111's
    /// accumulation across encoder calls included) and `Emphasis` (when not Original and a text
    /// has brackets).
    pub encoder_params: Vec<(String, String)>,
}

/// Errors a generation can end with.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("invalid prompt: {0}")]
    Prompt(#[from] compat::error::PromptError),
    #[error("{0}")]
    Model(#[from] models::Error),
    /// The hires pass's model upscaler failed (loading or running it).
    #[error("{0}")]
    Upscale(#[from] JobError),
}

/// The text-side state a generation needs besides the model: the tokenizer and the embeddings.
pub struct TextEncoders {
    pub tokenizer: ClipTokenizer,
    pub embeddings: EmbeddingDb,
    /// Embedding name → A1111's short hash (first 12 hex digits of the file's sha256).
    ti_hashes: std::collections::HashMap<String, String>,
}

impl TextEncoders {
    /// The tokenizer and the embeddings in `embedding_files` that fit `model`'s text encoder.
    pub fn new(model: &StableDiffusion, embedding_files: &[std::path::PathBuf]) -> models::Result<Self> {
        let tokenizer = ClipTokenizer::new()?;
        let mut loaded = Vec::new();
        let mut ti_hashes = std::collections::HashMap::new();
        for path in embedding_files {
            match Embedding::load(path) {
                Ok(e) => {
                    match crate::catalog::sha256_file(path) {
                        Ok(h) => {
                            ti_hashes.insert(e.name.clone(), h[..12].to_string());
                        }
                        Err(err) => {
                            tracing::warn!(path = %path.display(), cause = %err, "embedding not hashed")
                        }
                    }
                    loaded.push(Rc::new(e));
                }
                Err(err) => tracing::warn!(path = %path.display(), cause = %err, "embedding skipped"),
            }
        }
        let embeddings = EmbeddingDb::new(&tokenizer, loaded, model.config.clip.hidden);
        Ok(TextEncoders { tokenizer, embeddings, ti_hashes })
    }

    /// Each text of `schedule` split into 75-token chunks with its attention weights (none parsed
    /// when emphasis is None), as the encoder and the infotext's `TI hashes` both see it.
    fn chunk_schedule(&self, schedule: &[ScheduleEntry], spec: &Txt2ImgSpec) -> Vec<ChunkedText> {
        schedule
            .iter()
            .map(|entry| {
                let segments = if spec.emphasis == EmphasisMode::None {
                    vec![(entry.text.clone(), 1.0)]
                } else {
                    parse_attention(&entry.text)
                };
                chunk_text(&self.tokenizer, &segments, &self.embeddings, spec.comma_padding_backtrack)
            })
            .collect()
    }

    /// The embeddings one encoder call over `schedule`'s texts uses, in the order A1111's
    /// `used_embeddings` dict collects them: chunk by chunk, text by text within a chunk.
    fn embeddings_used(&self, schedule: &[ScheduleEntry], spec: &Txt2ImgSpec) -> Vec<String> {
        let chunked = self.chunk_schedule(schedule, spec);
        let most = chunked.iter().map(|c| c.chunks.len()).max().unwrap_or(0);
        let mut names: Vec<String> = Vec::new();
        for i in 0..most {
            for text in &chunked {
                for (_, emb) in text.chunks.get(i).map_or(&[][..], |c| &c.fixes[..]) {
                    if !names.contains(&emb.name) {
                        names.push(emb.name.clone());
                    }
                }
            }
        }
        names
    }

    /// Encodes one prompt's schedule as A1111 does: all its texts in one batch.
    fn encode_schedule(
        &self,
        model: &StableDiffusion,
        schedule: &[ScheduleEntry],
        spec: &Txt2ImgSpec,
    ) -> CondSchedule {
        let chunked = self.chunk_schedule(schedule, spec);
        let z = encode_texts(&model.clip, &chunked, spec.clip_skip, spec.emphasis);
        CondSchedule(
            schedule.iter().enumerate().map(|(i, e)| (e.end_at_step, z.narrow(0, i as i64, 1))).collect(),
        )
    }
}

/// A1111's `model_hijack.extra_generation_params` over one request, as a fresh process
/// computes it: every text-encoder call (one per distinct prompt, negatives before positives,
/// skipped when the batch's prompts equal the previous batch's, as A1111's cond cache does)
/// prepends the hashes of the embeddings it used to the `TI hashes` string so far, and marks
/// `Emphasis` when the mode is not Original and a text has `(` or `[`.
#[derive(Default)]
struct EncoderParams {
    entries: Vec<(String, String)>,
    /// The prompt lists of the last encoded batch, per cache (`uc`, `c`, `hr_uc`, `hr_c`).
    cache: std::collections::HashMap<&'static str, Vec<String>>,
}

impl EncoderParams {
    fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// One `get_conds_with_caching` call: `prompts` is its cache key, `calls` the distinct
    /// prompts' schedules in encoding order.
    fn encode(
        &mut self,
        cache: &'static str,
        prompts: Vec<String>,
        calls: &[&[ScheduleEntry]],
        text: &TextEncoders,
        spec: &Txt2ImgSpec,
    ) {
        if self.cache.get(cache) == Some(&prompts) {
            return;
        }
        self.cache.insert(cache, prompts);
        for schedule in calls {
            let hashes: Vec<String> = text
                .embeddings_used(schedule, spec)
                .into_iter()
                .filter_map(|name| {
                    let hash = text.ti_hashes.get(&name)?;
                    Some(format!("{}: {hash}", name.replace([':', ','], "")))
                })
                .collect();
            if !hashes.is_empty() {
                let mut all = hashes;
                if let Some((_, before)) = self.entries.iter().find(|(k, _)| k == "TI hashes") {
                    all.push(before.clone());
                }
                self.set("TI hashes", all.join(", "));
            }
            let label = match spec.emphasis {
                EmphasisMode::Original => None,
                EmphasisMode::NoNorm => Some("No norm"),
                EmphasisMode::Ignore => Some("Ignore"),
                EmphasisMode::None => Some("None"),
            };
            if let Some(label) = label {
                if schedule.iter().any(|e| e.text.contains('(') || e.text.contains('[')) {
                    self.set("Emphasis", label.to_string());
                }
            }
        }
    }

    /// The encoder calls of one pass of a batch (`cache_prefix` "" or "hr_").
    fn encode_pass<'p>(
        &mut self,
        hires: bool,
        passes: impl Iterator<Item = (&'p str, &'p str, &'p compat::prompt::PassPrompts)> + Clone,
        text: &TextEncoders,
        spec: &Txt2ImgSpec,
    ) {
        let (uc_key, c_key) = if hires { ("hr_uc", "hr_c") } else { ("uc", "c") };
        let mut seen = Vec::new();
        let mut negatives: Vec<&[ScheduleEntry]> = Vec::new();
        for (_, negative, pass) in passes.clone() {
            if !seen.contains(&negative) {
                seen.push(negative);
                negatives.push(&pass.negative);
            }
        }
        let keys = passes.clone().map(|(_, n, _)| n.to_string()).collect();
        self.encode(uc_key, keys, &negatives, text, spec);
        let mut seen = Vec::new();
        let mut positives: Vec<&[ScheduleEntry]> = Vec::new();
        for (_, _, pass) in passes.clone() {
            for sub in &pass.sub_prompts {
                if !seen.contains(&sub.text.as_str()) {
                    seen.push(sub.text.as_str());
                    positives.push(&sub.schedule);
                }
            }
        }
        let keys = passes.map(|(p, _, _)| p.to_string()).collect();
        self.encode(c_key, keys, &positives, text, spec);
    }
}

/// Runs every batch of a txt2img request. `hook` sees each step of each batch. LoRA tags cannot
/// be resolved without a folder: they are ignored and any merged networks are removed.
pub fn txt2img(
    model: &StableDiffusion,
    text: &TextEncoders,
    spec: &Txt2ImgSpec,
    hook: &mut StepHook,
    stop_after_batch: &mut dyn FnMut() -> bool,
) -> Result<Vec<Generated>, GenerationError> {
    txt2img_with_loras(model, text, spec, None, hook, stop_after_batch)
}

/// The `lora`/`lyco` tags of `prompt` resolved to files in `lora_dir`, with the names as written.
/// Unknown names are skipped with A1111's warning.
fn lora_set(prompt: &str, lora_dir: Option<&std::path::Path>) -> (Vec<LoraSpec>, Vec<String>) {
    let (_, nets) = extract_extra_networks(prompt);
    let mut set = Vec::new();
    let mut names = Vec::new();
    for net in nets.iter().filter(|n| n.kind == "lora" || n.kind == "lyco") {
        match lora_dir.and_then(|dir| find_network(dir, &net.name)) {
            Some(path) => {
                set.push(LoraSpec {
                    path,
                    te_multiplier: net.te_multiplier,
                    unet_multiplier: net.unet_multiplier,
                });
                names.push(net.name.clone());
            }
            None => tracing::warn!("couldn't find Lora with name {}", net.name),
        }
    }
    (set, names)
}

/// [`txt2img`] with `<lora:name:w>` tags resolved in `lora_dir`: each batch runs with the networks
/// of its first image's prompt merged into the model (A1111 activates one set per batch).
pub fn txt2img_with_loras(
    model: &StableDiffusion,
    text: &TextEncoders,
    spec: &Txt2ImgSpec,
    lora_dir: Option<&std::path::Path>,
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
    // Each distinct (prompt, negative prompt) pair is parsed and encoded once per merged LoRA set
    // (`epoch` counts set changes: networks change the text encoder).
    let mut encoded: Vec<((String, String, usize), ImageConds)> = Vec::new();
    let mut conds_for = |prompt: &str, negative: &str, epoch: usize| -> Result<ImageConds, GenerationError> {
        if let Some((_, c)) =
            encoded.iter().find(|((p, n, e), _)| p == prompt && n == negative && *e == epoch)
        {
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
        encoded.push(((prompt.to_string(), negative.to_string(), epoch), c.clone()));
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
    let pad_cond_uncond = || {
        spec.pad_cond_uncond.then(|| {
            let empty = [ScheduleEntry { end_at_step: schedule_steps as u32, text: String::new() }];
            text.encode_schedule(model, &empty, spec).0.remove(0).1
        })
    };
    let mut epoch = 0;
    let mut out = Vec::with_capacity(total);
    // img2img: the init latents of one batch (A1111 encodes once per request).
    let prepared = match &spec.init {
        Some((images, _)) => Some(prepare_init(model, images, spec)?),
        None => None,
    };
    let init = prepared.as_ref().map(|p| p.latents.shallow_clone());
    // Inpainting checkpoints: the conditioning built with the init images (img2img), or A1111's
    // txt2img one (grey picture, mask of ones); the same for every batch of the request.
    let image_cond = match &prepared {
        Some(p) => p.image_cond.as_ref().map(|t| t.shallow_clone()),
        None if model.is_inpainting() => {
            Some(model.txt2img_inpainting_conditioning(spec.batch_size as i64, spec.width, spec.height))
        }
        None => None,
    };
    let mut hashes: std::collections::HashMap<std::path::PathBuf, String> = std::collections::HashMap::new();
    let mut encoder_params = EncoderParams::default();
    for batch in 0..spec.n_iter {
        let range = batch * spec.batch_size..(batch + 1) * spec.batch_size;
        // Networks change the text encoder too, so they are merged before this batch's prompts
        // are encoded.
        let (loras, lora_names) = lora_set(&spec.prompts[range.start], lora_dir);
        if model.apply_loras(&loras)? {
            epoch += 1;
        }
        let pad_cond_uncond = pad_cond_uncond();
        let mut lora_hashes = Vec::new();
        for (spec, name) in loras.iter().zip(&lora_names) {
            if !hashes.contains_key(&spec.path) {
                hashes.insert(spec.path.clone(), shorthash(&spec.path)?);
            }
            lora_hashes.push((name.replace([':', ','], ""), hashes[&spec.path].clone()));
        }
        let conds = range
            .clone()
            .map(|i| conds_for(&spec.prompts[i], &spec.negative_prompts[i], epoch))
            .collect::<Result<Vec<_>, _>>()?;
        let parsed = range
            .clone()
            .map(|i| {
                parse_prompts(&PromptRequest {
                    prompt: &spec.prompts[i],
                    negative_prompt: &spec.negative_prompts[i],
                    steps: schedule_steps as u32,
                    hires: None,
                    use_old_scheduling: false,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        encoder_params.encode_pass(
            false,
            range
                .clone()
                .zip(&parsed)
                .map(|(i, p)| (spec.prompts[i].as_str(), spec.negative_prompts[i].as_str(), &p.first_pass)),
            text,
            spec,
        );
        let batch_encoder_params = encoder_params.entries.clone();
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
            img2img_fix_steps: false,
            pad_cond_uncond: pad_cond_uncond.as_ref().map(|t| t.shallow_clone()),
            mask: prepared.as_ref().and_then(|p| p.masks.as_ref()).map(|(m, n)| (m, n)),
            image_cond: image_cond.as_ref(),
        };
        let mut latents = model.sample_batch(&params, hook)?;
        if let Some(hires) = &spec.hires {
            let ctx = HiresBatch {
                seeds: &seeds[range.clone()],
                subseeds: &subseeds[range.clone()],
                noise: &noise,
            };
            latents = hires_pass(
                model,
                text,
                spec,
                hires,
                &latents,
                range.clone(),
                &ctx,
                &mut encoder_params,
                hook,
            )?;
        }
        let mut decoded = model.decode_to_rgb(&latents)?;
        if let Some(p) = &prepared {
            decoded = decoded.into_iter().enumerate().map(|(i, im)| p.apply_overlay(i, im)).collect();
        }
        for (i, image) in decoded.into_iter().enumerate() {
            out.push(Generated {
                image,
                seed: seeds[range.start + i],
                subseed: subseeds[range.start + i],
                prompt: spec.prompts[range.start + i].clone(),
                negative_prompt: spec.negative_prompts[range.start + i].clone(),
                lora_hashes: lora_hashes.clone(),
                encoder_params: batch_encoder_params.clone(),
            });
        }
        if stop_after_batch() {
            break;
        }
    }
    Ok(out)
}

/// The img2img inputs of a request after A1111's `StableDiffusionProcessingImg2Img.init`.
struct PreparedInit {
    /// Scaled init latents `[B, 4, h, w]`, masked content already applied.
    latents: tch::Tensor,
    /// `(p.mask, p.nmask)`, `[4, h, w]`: 1 keeps the init latent / 1 regenerates.
    masks: Option<(tch::Tensor, tch::Tensor)>,
    /// RGBA overlay of the original's kept pixels, per image of a batch.
    overlays: Vec<Pixels>,
    /// "Only masked": where the generated region goes in the original (`x, y, w, h`).
    paste_to: Option<(i64, i64, i64, i64)>,
    /// Inpainting checkpoints: A1111's `img2img_image_conditioning`, `[B, 5, h, w]`.
    image_cond: Option<tch::Tensor>,
}

impl PreparedInit {
    /// A1111's `apply_overlay`: the generated image (scaled back into its region for "only
    /// masked") under the original's unmasked pixels.
    fn apply_overlay(&self, i: usize, image: RgbImage) -> RgbImage {
        let Some(overlay) = self.overlays.get(i) else { return image };
        let generated = Pixels::new(image.width, image.height, 3, image.data);
        let mut base = match self.paste_to {
            Some((x, y, w, h)) => {
                let mut base = Pixels::blank(overlay.width, overlay.height, 4);
                base.paste(&resize_image(1, &generated, w as u32, h as u32), x, y);
                base
            }
            None => rgba_of(&generated),
        };
        alpha_composite(&mut base, overlay);
        let rgb = rgb_of(&base);
        RgbImage { width: rgb.width, height: rgb.height, data: rgb.data }
    }
}

/// A1111's `images.resize_image(0, …, upscaler_name)` with a model upscaler: when the target is
/// larger, `Upscaler.upscale` runs the model (tiled, on this thread, through the same code as
/// `/extra-single-image`) until the picture covers `int(size·scale)//8·8`, a Lanczos resize
/// brings it to exactly that size, and a last Lanczos resize gives the target.
fn upscale_with_model(
    m: &UpscalerModel,
    img: &Pixels,
    width: u32,
    height: u32,
    placement: models::device::Placement,
) -> Result<Pixels, GenerationError> {
    let scale = (width as f64 / img.width as f64).max(height as f64 / img.height as f64);
    let mut im = img.clone();
    if scale > 1.0 {
        let dest = |size: u32| ((size as f64 * scale) / 8.0).floor() as u32 * 8;
        let (dest_w, dest_h) = (dest(img.width), dest(img.height));
        // `Upscaler.upscale` checks the size before each model pass.
        if im.width < dest_w || im.height < dest_h {
            let job = UpscaleJob {
                model: m.path.clone(),
                images: vec![JobImage { width: im.width, height: im.height, rgb: im.data.clone() }],
                scale,
                tile: m.tile,
                tile_overlap: m.tile_overlap,
                placement,
            };
            let out = run_upscale(&job, &|| false)?.remove(0);
            im = Pixels::new(out.width, out.height, 3, out.rgb);
        }
        if (im.width, im.height) != (dest_w, dest_h) {
            im = resize_pil(&im, dest_w, dest_h, Resample::Lanczos, None);
        }
    }
    if (im.width, im.height) != (width, height) {
        im = resize_pil(&im, width, height, Resample::Lanczos, None);
    }
    Ok(im)
}

fn invalid(msg: String) -> GenerationError {
    models::Error::Sampling(msg).into()
}

/// A1111's img2img preparation: the mask (invert, blur, "only masked" crop region or resize,
/// overlay mask), the init images (resize mode, crop, overlays), the VAE encode (posterior mean,
/// see `reference/A1111_REFERENCE.md`), the latent mask and the masked content.
fn prepare_init(
    model: &StableDiffusion,
    images: &[RgbImage],
    spec: &Txt2ImgSpec,
) -> Result<PreparedInit, GenerationError> {
    let (w, h) = (spec.width as u32, spec.height as u32);
    let mut image_mask: Option<Pixels> = None;
    let mut mask_for_overlay: Option<Pixels> = None;
    let mut crop_region = None;
    let mut paste_to = None;
    if let Some(ip) = &spec.inpaint {
        if ip.mask.channels != 1 {
            return Err(invalid("the inpainting mask must be a one-channel image".into()));
        }
        let mut m = ip.mask.clone();
        if ip.invert {
            m.data.iter_mut().for_each(|v| *v = 255 - *v);
        }
        m = gaussian_blur_axis(&m, ip.mask_blur_x, true);
        m = gaussian_blur_axis(&m, ip.mask_blur_y, false);
        if ip.full_res {
            if let Some((x1, y1, x2, y2)) = inpaint_crop_region(&m, ip.full_res_padding, w, h) {
                let cropped = m.crop(x1.max(0) as u32, y1.max(0) as u32, x2 as u32, y2 as u32);
                image_mask = Some(resize_image(2, &cropped, w, h));
                crop_region = Some((x1, y1, x2, y2));
                paste_to = Some((x1, y1, x2 - x1, y2 - y1));
                mask_for_overlay = Some(m);
            }
            // An empty mask: A1111 falls back to plain img2img.
        } else {
            let resized = resize_image(spec.resize_mode, &m, w, h);
            let doubled = resized.data.iter().map(|v| v.saturating_mul(2)).collect();
            mask_for_overlay = Some(Pixels::new(w, h, 1, doubled));
            image_mask = Some(resized);
        }
    }
    let mut overlays = Vec::new();
    let mut tensors = Vec::new();
    for img in images {
        let mut image = Pixels::new(img.width, img.height, 3, img.data.clone());
        if crop_region.is_none() && spec.resize_mode != 3 {
            image = resize_image(spec.resize_mode, &image, w, h);
        }
        if let Some(mfo) = mask_for_overlay.as_mut() {
            if image_mask.is_some() {
                if (mfo.width, mfo.height) != (image.width, image.height) {
                    *mfo = resize_image(spec.resize_mode, mfo, image.width, image.height);
                }
                overlays.push(overlay_image(&image, mfo));
            }
        }
        if let Some((x1, y1, x2, y2)) = crop_region {
            image = image.crop(x1.max(0) as u32, y1.max(0) as u32, x2 as u32, y2 as u32);
            image = resize_image(2, &image, w, h);
        }
        // A1111 smears the masked area for every masked content but "original" (1), also for
        // latent noise and latent nothing, whose encoded surroundings it changes.
        if let (Some(m), Some(ip)) = (image_mask.as_ref(), spec.inpaint.as_ref()) {
            if ip.fill != 1 {
                image = masking_fill(&image, m);
            }
        }
        tensors.push(
            tch::Tensor::from_slice(&image.data)
                .reshape([image.height as i64, image.width as i64, 3])
                .permute([2, 0, 1])
                .to_kind(tch::Kind::Float)
                / 255.0,
        );
    }
    let batch: Vec<tch::Tensor> = if tensors.len() == 1 {
        overlays = overlays.iter().cycle().take(spec.batch_size * overlays.len()).cloned().collect();
        (0..spec.batch_size).map(|_| tensors[0].shallow_clone()).collect()
    } else {
        tensors
    };
    if batch.len() != spec.batch_size {
        return Err(invalid(format!("{} init images for a batch of {}", images.len(), spec.batch_size)));
    }
    let pictures = tch::Tensor::stack(&batch, 0);
    let mut latents = model.encode_rgb(&pictures);
    let f = model.latent_factor();
    if spec.resize_mode == 3 {
        latents = LatentUpscale::Bilinear.apply(&latents, spec.height / f, spec.width / f)?;
    }
    let masks = match image_mask.as_ref() {
        Some(m) => {
            let (lh, lw) = (latents.size()[2], latents.size()[3]);
            let small = resize_pil(m, lw as u32, lh as u32, Resample::Bicubic, None);
            let values: Vec<f32> = small
                .data
                .iter()
                .map(|&v| {
                    let x = f32::from(v) / 255.0;
                    if spec.inpaint.as_ref().is_some_and(|i| i.mask_round) {
                        x.round()
                    } else {
                        x
                    }
                })
                .collect();
            let device = latents.device();
            let nmask =
                tch::Tensor::from_slice(&values).reshape([1, lh, lw]).repeat([4, 1, 1]).to_device(device);
            let mask = 1.0 - &nmask;
            match spec.inpaint.as_ref().map_or(1, |i| i.fill) {
                2 => {
                    // Latent noise: `create_random_tensors` with the request's first seeds.
                    let b = latents.size()[0] as usize;
                    let options = NoiseOptions {
                        source: spec.randn_source,
                        subseed_strength: 0.0,
                        seed_resize_from_w: 0,
                        seed_resize_from_h: 0,
                        eta_noise_seed_delta: 0,
                    };
                    let seeds = &spec.seeds[..b];
                    let mut rng = models::rng::ImageRng::new(
                        &options,
                        [4, lh, lw],
                        seeds,
                        &spec.subseeds[..b],
                        device,
                    )?;
                    latents = &latents * &mask + rng.next_batch()? * &nmask;
                }
                3 => latents = &latents * &mask,
                _ => {}
            }
            Some((mask, nmask))
        }
        None => None,
    };
    let image_cond = model.is_inpainting().then(|| {
        // `inpainting_image_conditioning`: the processed mask at full size (`/255`, rounded with
        // `mask_round`), all ones without a mask; the filled pictures in [-1, 1].
        let ip = spec.inpaint.as_ref();
        let mask = image_mask.as_ref().map(|m| {
            let round = ip.is_some_and(|i| i.mask_round);
            let values: Vec<f32> = m
                .data
                .iter()
                .map(|&v| {
                    let x = f32::from(v) / 255.0;
                    if round {
                        x.round_ties_even()
                    } else {
                        x
                    }
                })
                .collect();
            tch::Tensor::from_slice(&values).reshape([1, 1, i64::from(m.height), i64::from(m.width)])
        });
        let weight = ip.map_or(1.0, |i| i.mask_weight);
        let (lh, lw) = (latents.size()[2], latents.size()[3]);
        model.inpainting_conditioning(&(&pictures * 2.0 - 1.0), mask.as_ref(), weight, (lh, lw))
    });
    Ok(PreparedInit { latents, masks, overlays, paste_to, image_cond })
}

/// A1111's `masking.fill`: the picture with the masked area cut out (premultiplied RGBa, alpha
/// = 255 − mask) is blurred with Pillow's Gaussian blur at radii 256, 64, 16, 4, 2 and 0, and
/// the blurs are alpha-composited onto a transparent canvas 1, 1, 2, 4, 2 and 1 times, so the
/// hole fills with the surrounding colours, wide blurs first. `image` is RGB and `mask` an `L`
/// image of the same size.
fn masking_fill(image: &Pixels, mask: &Pixels) -> Pixels {
    let div255 = |a: u32| {
        let t = a + 128;
        ((t >> 8) + t) >> 8
    };
    // `paste(image as RGBa, mask=invert(mask))` onto zeros: every channel, alpha included, is
    // blended as `DIV255(v · keep)`.
    let mut data = Vec::with_capacity(image.data.len() / 3 * 4);
    for (px, m) in image.data.chunks_exact(3).zip(&mask.data) {
        let keep = 255 - u32::from(*m);
        data.extend(px.iter().map(|&c| div255(u32::from(c) * keep) as u8));
        data.push(div255(255 * keep) as u8);
    }
    let masked = Pixels::new(image.width, image.height, 4, data);
    let mut canvas = Pixels::blank(image.width, image.height, 4);
    for (radius, repeats) in [(256.0f32, 1), (64.0, 1), (16.0, 2), (4.0, 4), (2.0, 2), (0.0, 1)] {
        let blurred = unpremultiply(&pil_gaussian_blur(&masked, radius));
        for _ in 0..repeats {
            alpha_composite(&mut canvas, &blurred);
        }
    }
    rgb_of(&canvas)
}

/// Pillow's `RGBa → RGBA` conversion: colours divided by alpha, truncated and clipped.
fn unpremultiply(img: &Pixels) -> Pixels {
    let mut out = img.clone();
    for px in out.data.chunks_exact_mut(4) {
        let a = u32::from(px[3]);
        if a != 0 && a != 255 {
            for c in &mut px[..3] {
                *c = ((255 * u32::from(*c)) / a).min(255) as u8;
            }
        }
    }
    out
}

/// Pillow's `GaussianBlur(radius)`: three passes of an extended box blur (fractional radius,
/// 24-bit fixed-point weights) horizontally, then three vertically, on every channel. The box
/// radius follows Gwosdek et al. (2011) in single precision, as Pillow computes it.
fn pil_gaussian_blur(img: &Pixels, radius: f32) -> Pixels {
    // Three passes each way: the box radius is chosen for that count.
    let sigma2 = radius * radius / 3.0;
    let big_l = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l = ((f64::from(big_l) - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    let box_radius = l + a;
    if box_radius == 0.0 {
        return img.clone();
    }
    let (w, h, ch) = (img.width as usize, img.height as usize, img.channels);
    let mut data = img.data.clone();
    blur_lines(&mut data, ch, box_radius, h, w, |y| y * w * ch, ch);
    blur_lines(&mut data, ch, box_radius, w, h, |x| x * ch, w * ch);
    Pixels::new(img.width, img.height, ch, data)
}

/// Three box-blur passes over each of `lines` lines of `len` pixels; line `i` starts at byte
/// `start(i)` and its pixels are `stride` bytes apart (rows, or columns for the vertical passes
/// that Pillow runs on the transposed image).
fn blur_lines(
    data: &mut [u8],
    ch: usize,
    radius: f32,
    lines: usize,
    len: usize,
    start: impl Fn(usize) -> usize,
    stride: usize,
) {
    let mut line = vec![0u8; len * ch];
    for i in 0..lines {
        for _ in 0..3 {
            for x in 0..len {
                let o = start(i) + x * stride;
                line[x * ch..(x + 1) * ch].copy_from_slice(&data[o..o + ch]);
            }
            let blurred = box_blur_line(&line, len, ch, radius);
            for x in 0..len {
                let o = start(i) + x * stride;
                data[o..o + ch].copy_from_slice(&blurred[x * ch..(x + 1) * ch]);
            }
        }
    }
}

/// One line of Pillow's `ImagingLineBoxBlur`: a running sum over `2r + 1` pixels (edge pixels
/// repeated beyond the ends) plus the two next-farther pixels at the fractional weight, in
/// wrapping 32-bit arithmetic as the C code does.
fn box_blur_line(line: &[u8], len: usize, ch: usize, float_radius: f32) -> Vec<u8> {
    let radius = float_radius as i64;
    let ww = (16_777_216.0f32 / (float_radius * 2.0 + 1.0)) as u32;
    let fw = (16_777_216u32.wrapping_sub(((radius * 2 + 1) as u32).wrapping_mul(ww))) / 2;
    let n = len as i64;
    let last = n - 1;
    let edge_a = (radius + 1).min(n);
    let edge_b = (n - radius - 1).max(0);
    let mut out = vec![0u8; line.len()];
    for c in 0..ch {
        let px = |x: i64| u32::from(line[x as usize * ch + c]);
        let mut acc = px(0).wrapping_mul((radius + 1) as u32);
        for x in 0..edge_a - 1 {
            acc = acc.wrapping_add(px(x));
        }
        acc = acc.wrapping_add(px(last).wrapping_mul((radius - edge_a + 1) as u32));
        let mut step = |x: i64, sub: i64, add: i64, left: i64, right: i64, acc: &mut u32| {
            *acc = acc.wrapping_add(px(add)).wrapping_sub(px(sub));
            let bulk = acc.wrapping_mul(ww).wrapping_add((px(left) + px(right)).wrapping_mul(fw));
            out[x as usize * ch + c] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
        };
        if edge_a <= edge_b {
            for x in 0..edge_a {
                step(x, 0, x + radius, 0, x + radius + 1, &mut acc);
            }
            for x in edge_a..edge_b {
                step(x, x - radius - 1, x + radius, x - radius - 1, x + radius + 1, &mut acc);
            }
            for x in edge_b..=last {
                step(x, x - radius - 1, last, x - radius - 1, last, &mut acc);
            }
        } else {
            for x in 0..edge_b {
                step(x, 0, x + radius, 0, x + radius + 1, &mut acc);
            }
            for x in edge_b..edge_a {
                step(x, 0, last, 0, last, &mut acc);
            }
            for x in edge_a..=last {
                step(x, x - radius - 1, last, x - radius - 1, last, &mut acc);
            }
        }
    }
    out
}

/// The per-batch noise inputs the hires pass shares with the first pass.
struct HiresBatch<'a> {
    seeds: &'a [u64],
    subseeds: &'a [u64],
    noise: &'a NoiseOptions,
}

/// A1111's `sample_hr_pass` for one batch: upscale the first pass (in latent space, or decode,
/// upscale the pixels and encode again), crop to the target, then img2img with the hires
/// sampler, steps, strength and prompts, with fresh noise streams from the same seeds.
#[allow(clippy::too_many_arguments)]
fn hires_pass(
    model: &StableDiffusion,
    text: &TextEncoders,
    spec: &Txt2ImgSpec,
    hires: &HiresSpec,
    latents: &tch::Tensor,
    range: std::ops::Range<usize>,
    batch: &HiresBatch,
    encoder_params: &mut EncoderParams,
    hook: &mut StepHook,
) -> Result<tch::Tensor, GenerationError> {
    let f = model.latent_factor();
    let (up_w, up_h) = (hires.upscale_to_width, hires.upscale_to_height);
    let samples = match LatentUpscale::from_name(&hires.upscaler) {
        Some(mode) => mode.apply(latents, up_h / f, up_w / f)?,
        None => {
            let mut upscaled = Vec::new();
            for im in model.decode_to_rgb(latents)? {
                let px = Pixels::new(im.width, im.height, 3, im.data);
                let big = match &hires.upscaler_model {
                    Some(m) => upscale_with_model(m, &px, up_w as u32, up_h as u32, model.placement)?,
                    None => {
                        upscale_with(&hires.upscaler, &px, up_w as u32, up_h as u32).ok_or_else(|| {
                            invalid(format!("hires upscaler {} is not available", hires.upscaler))
                        })?
                    }
                };
                upscaled.push(
                    tch::Tensor::from_slice(&big.data)
                        .reshape([big.height as i64, big.width as i64, 3])
                        .permute([2, 0, 1])
                        .to_kind(tch::Kind::Float)
                        / 255.0,
                );
            }
            model.encode_rgb(&tch::Tensor::stack(&upscaled, 0))
        }
    };
    // A1111's truncate_x/y (in latent cells): a centred crop when both resize sizes were given.
    let (tx, ty) = ((up_w - hires.target_width) / f, (up_h - hires.target_height) / f);
    let (lh, lw) = (samples.size()[2], samples.size()[3]);
    let samples =
        samples.narrow(2, ty / 2, lh - ty / 2 - (ty + 1) / 2).narrow(3, tx / 2, lw - tx / 2 - (tx + 1) / 2);
    let resolved = resolve(Some(&hires.sampler_name), hires.scheduler.as_deref());
    let sampler = SamplerKind::from_id(resolved.sampler.id)
        .ok_or_else(|| invalid(format!("unknown sampler {}", resolved.sampler.id)))?;
    let scheduler = SchedulerKind::from_id(resolved.scheduler.name).unwrap_or(SchedulerKind::Automatic);
    let first_resolved = resolve(Some(&spec.sampler_name), spec.scheduler.as_deref());
    let first_second_order =
        SamplerKind::from_id(first_resolved.sampler.id).is_some_and(|s| s.options().second_order);
    let first_steps = spec.steps * if first_second_order { 2 } else { 1 };
    let steps = if hires.steps == 0 { spec.steps } else { hires.steps };
    let hr_total = steps * if sampler.options().second_order { 2 } else { 1 };
    let mut conds = Vec::new();
    let mut passes = Vec::new();
    for i in range.clone() {
        let parsed = parse_prompts(&PromptRequest {
            prompt: &spec.prompts[i],
            negative_prompt: &spec.negative_prompts[i],
            steps: first_steps as u32,
            hires: Some(HiresPromptRequest {
                prompt: hires.prompts.get(i).map_or("", String::as_str),
                negative_prompt: hires.negative_prompts.get(i).map_or("", String::as_str),
                steps: hr_total as u32,
            }),
            use_old_scheduling: false,
        })?;
        let pass = parsed.hires_pass.as_ref().unwrap_or(&parsed.first_pass);
        conds.push(ImageConds {
            positive: pass
                .sub_prompts
                .iter()
                .map(|s| (text.encode_schedule(model, &s.schedule, spec), s.weight))
                .collect(),
            negative: text.encode_schedule(model, &pass.negative, spec),
        });
        passes.push(pass.clone());
    }
    // The hires prompts as A1111 keys its hires cond cache: empty hires prompts mean the
    // first-pass ones.
    let hr_text = |list: &[String], fallback: &[String], i: usize| {
        list.get(i).filter(|s| !s.is_empty()).unwrap_or(&fallback[i]).clone()
    };
    let hr_prompts: Vec<(String, String)> = range
        .clone()
        .map(|i| {
            (
                hr_text(&hires.prompts, &spec.prompts, i),
                hr_text(&hires.negative_prompts, &spec.negative_prompts, i),
            )
        })
        .collect();
    encoder_params.encode_pass(
        true,
        hr_prompts.iter().zip(&passes).map(|((p, n), pass)| (p.as_str(), n.as_str(), pass)),
        text,
        spec,
    );
    let pad_cond_uncond = spec.pad_cond_uncond.then(|| {
        let empty = [ScheduleEntry { end_at_step: hr_total as u32, text: String::new() }];
        text.encode_schedule(model, &empty, spec).0.remove(0).1
    });
    let image_cond = model.is_inpainting().then(|| {
        model.txt2img_inpainting_conditioning(samples.size()[0], samples.size()[3] * f, samples.size()[2] * f)
    });
    let params = BatchParams {
        width: samples.size()[3] * f,
        height: samples.size()[2] * f,
        steps,
        cfg_scale: spec.cfg_scale,
        sampler,
        scheduler,
        sampler_params: SamplerParams { eta: spec.eta, uni_pc: spec.uni_pc, ..SamplerParams::default() },
        schedule_options: ScheduleOptions::default(),
        noise: batch.noise.clone(),
        seeds: batch.seeds,
        subseeds: batch.subseeds,
        conds: &conds,
        init: Some((&samples, hires.denoising_strength)),
        // `sample_hr_pass` passes its steps to `sample_img2img` explicitly.
        img2img_fix_steps: true,
        pad_cond_uncond,
        mask: None,
        // `sample_hr_pass`'s `img2img_image_conditioning` has no mask, so with the default
        // `inpainting_mask_weight` of 1 its picture is all zeros, as in txt2img.
        image_cond: image_cond.as_ref(),
    };
    Ok(model.sample_batch(&params, hook)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::weights::safetensors_file::SafetensorsFile;
    use models::weights::TensorSource;

    fn fixture(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
    }

    /// `masking.fill` on the inpainting fixture equals, byte for byte, the filled init image the
    /// A1111-rules reference encoded (Pillow's blur, premultiplication and composite).
    #[test]
    fn masking_fill_matches_reference_bytes() {
        let init = image::open(fixture("images/init_32x32.png")).unwrap().to_rgb8();
        let mask = image::open(fixture("images/mask_32x32.png")).unwrap().to_luma8();
        let init = Pixels::new(init.width(), init.height(), 3, init.into_raw());
        let mask = Pixels::new(mask.width(), mask.height(), 1, mask.into_raw());
        let filled = masking_fill(&init, &mask);
        let golden = SafetensorsFile::open(fixture("golden/a1111/inpaint_fill_euler.safetensors")).unwrap();
        let expected = golden.read("filled_init_image").unwrap().flatten(0, -1);
        let mut want = vec![0u8; filled.data.len()];
        expected.copy_data(&mut want, filled.data.len());
        assert_eq!(filled.data, want);
        // The masked area was filled from its surroundings, not left black.
        assert!(mask
            .data
            .iter()
            .zip(filled.data.chunks_exact(3))
            .any(|(&m, px)| m == 255 && px != [0, 0, 0]));
    }

    /// A zero radius leaves the picture unchanged (Pillow copies it); a positive one spreads a
    /// lone opaque pixel into its transparent neighbours.
    #[test]
    fn pil_gaussian_blur_radius_zero_is_identity_and_blurs_otherwise() {
        let img = Pixels::new(3, 1, 4, vec![0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]);
        assert_eq!(pil_gaussian_blur(&img, 0.0).data, img.data);
        let blurred = pil_gaussian_blur(&img, 2.0);
        assert!(blurred.data[0] > 0 && blurred.data[4] < 255, "{:?}", blurred.data);
    }
}
