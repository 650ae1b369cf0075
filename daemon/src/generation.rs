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
use models::conditioning::{chunk_text, encode_texts, Embedding, EmbeddingDb, EmphasisMode};
use models::lora::{find_network, shorthash, LoraSpec};
use models::pipeline::{BatchParams, CondSchedule, ImageConds, RgbImage, StepHook};
use models::upscale_latent::LatentUpscale;

use crate::images::{
    alpha_composite, gaussian_blur_axis, inpaint_crop_region, overlay_image, resize_image, resize_pil,
    rgb_of, rgba_of, upscale_with, Pixels, Resample,
};
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
    /// `Latent…` modes or a pixel upscaler (`None`, `Lanczos`, `Nearest`).
    pub upscaler: String,
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
    let mut hashes: std::collections::HashMap<std::path::PathBuf, String> = std::collections::HashMap::new();
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
            mask: prepared.as_ref().and_then(|p| p.masks.as_ref()).map(|(m, n)| (m, n)),
        };
        let mut latents = model.sample_batch(&params, hook)?;
        if let Some(hires) = &spec.hires {
            let ctx = HiresBatch {
                seeds: &seeds[range.clone()],
                subseeds: &subseeds[range.clone()],
                noise: &noise,
            };
            latents = hires_pass(model, text, spec, hires, &latents, range.clone(), &ctx, hook)?;
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
        if image_mask.is_some() && ip.fill == 0 {
            return Err(invalid(
                "masked content 'fill' (inpainting_fill 0) is not supported; use 1, 2 or 3".into(),
            ));
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
    let mut latents = model.encode_rgb(&tch::Tensor::stack(&batch, 0));
    let f = model.latent_factor();
    if spec.resize_mode == 3 {
        latents = LatentUpscale::Bilinear.apply(&latents, spec.height / f, spec.width / f)?;
    }
    let masks = match image_mask {
        Some(m) => {
            let (lh, lw) = (latents.size()[2], latents.size()[3]);
            let small = resize_pil(&m, lw as u32, lh as u32, Resample::Bicubic, None);
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
    Ok(PreparedInit { latents, masks, overlays, paste_to })
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
                let big = upscale_with(&hires.upscaler, &px, up_w as u32, up_h as u32)
                    .ok_or_else(|| invalid(format!("hires upscaler {} is not available", hires.upscaler)))?;
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
    }
    let pad_cond_uncond = spec.pad_cond_uncond.then(|| {
        let empty = [ScheduleEntry { end_at_step: hr_total as u32, text: String::new() }];
        text.encode_schedule(model, &empty, spec).0.remove(0).1
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
        pad_cond_uncond,
        mask: None,
    };
    Ok(model.sample_batch(&params, hook)?)
}
