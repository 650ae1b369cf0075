//! txt2img and img2img for SD1.x, following A1111's `processing.py`: per-image noise streams
//! (`rng`), a sampling plan (`sampling`), A1111's CFG denoiser — conditional and unconditional
//! predictions in one batch, `AND` sub-prompts combined with their weights, the conditioning of
//! each step picked from the prompt-editing schedules — and decoding with clamp and truncation.
//! Inpainting (9-channel) checkpoints get A1111's image conditioning (`c_concat`) next to the
//! latent in every UNet call.
//!
//! Inputs arrive already encoded: the caller turns prompt text into conditioning schedules with
//! [`crate::conditioning`] (A1111 syntax is parsed in `compat::prompt`), so this module sees only
//! tensors and plain numbers.

use tch::{Device, Kind, Tensor};

use crate::checkpoint::StableDiffusion;
use crate::error::{Error, Result};
use crate::rng::{ImageRng, NoiseGenerator, NoiseOptions, RandnSource};
use crate::sampling::brownian::{BrownianTreeNoise, SeededNormal};
use crate::sampling::denoiser::CompVisDenoiser;
use crate::sampling::noise::NoiseSource;
use crate::sampling::schedule::DiscreteSchedule;
use crate::sampling::{
    sample, Control, Model, ModelInput, SamplerCtx, SamplerKind, SamplerParams, SamplingPlan,
    ScheduleOptions, SchedulerKind, StepInfo,
};

/// SD1.x latent scale factor (`scale_factor` of the LDM config).
pub const SD1_LATENT_SCALE: f64 = 0.18215;

/// One prompt's conditioning over the steps: `(end_at_step, cond [1, L, C])`, as A1111's
/// `ScheduledPromptConditioning` list.
#[derive(Debug)]
pub struct CondSchedule(pub Vec<(u32, Tensor)>);

impl Clone for CondSchedule {
    /// Shares the tensors (conditioning is read-only during sampling).
    fn clone(&self) -> Self {
        CondSchedule(self.0.iter().map(|(s, t)| (*s, t.shallow_clone())).collect())
    }
}

impl CondSchedule {
    /// A1111's `reconstruct_cond_batch` choice: the first entry whose end step is at or after
    /// `step`, else the first entry.
    pub fn at(&self, step: u32) -> &Tensor {
        &self.0[self.index_at(step)].1
    }

    /// The index of the entry [`CondSchedule::at`] picks.
    fn index_at(&self, step: u32) -> usize {
        self.0.iter().position(|(end, _)| step <= *end).unwrap_or(0)
    }
}

/// The batched conditioning of a model evaluation: the positive rows of every image (all
/// sub-prompts), then the negatives, each group padded to one length, and both stacked into one
/// batch when their lengths agree.
struct BatchedConds {
    cond: Tensor,
    uncond: Tensor,
    /// `cat([cond, uncond])`, when cond and uncond have the same length.
    joint: Option<Tensor>,
}

impl BatchedConds {
    fn build(p: &BatchParams, step: u32) -> BatchedConds {
        let conds: Vec<Tensor> =
            p.conds.iter().flat_map(|c| c.positive.iter().map(|(s, _)| s.at(step).shallow_clone())).collect();
        let mut cond = Tensor::cat(&crate::conditioning::pad_to_same_length(&conds), 0);
        let uncond_list: Vec<Tensor> = p.conds.iter().map(|c| c.negative.at(step).shallow_clone()).collect();
        let mut uncond = Tensor::cat(&crate::conditioning::pad_to_same_length(&uncond_list), 0);
        if let Some(empty) = p.pad_cond_uncond.as_ref() {
            // A1111's `pad_cond_uncond`: extend the shorter one with encodings of the empty prompt.
            let (lc, lu, le) = (cond.size()[1], uncond.size()[1], empty.size()[1]);
            let pad = |t: &Tensor, n: i64| {
                let rows = t.size()[0];
                Tensor::cat(&[t.shallow_clone(), empty.to_kind(t.kind()).repeat([rows, n, 1])], 1)
            };
            let repeats = (lc - lu) / le;
            if repeats < 0 {
                cond = pad(&cond, -repeats);
            } else if repeats > 0 {
                uncond = pad(&uncond, repeats);
            }
        }
        let joint = (cond.size()[1] == uncond.size()[1]).then(|| Tensor::cat(&[&cond, &uncond], 0));
        BatchedConds { cond, uncond, joint }
    }
}

/// The [`BatchedConds`] of one sampling run. The conditioning changes only where a
/// prompt-editing schedule moves to its next entry, so the batch is built once per such segment
/// rather than on every model evaluation; it is keyed by the entry each schedule is at.
#[derive(Default)]
struct CondBatches {
    current: std::cell::RefCell<Option<(Vec<usize>, std::rc::Rc<BatchedConds>)>>,
}

impl CondBatches {
    fn at(&self, p: &BatchParams, step: u32) -> std::rc::Rc<BatchedConds> {
        let key: Vec<usize> = p
            .conds
            .iter()
            .flat_map(|c| c.positive.iter().map(|(s, _)| s).chain([&c.negative]))
            .map(|s| s.index_at(step))
            .collect();
        let mut current = self.current.borrow_mut();
        match current.as_ref() {
            Some((k, batch)) if *k == key => batch.clone(),
            _ => {
                let batch = std::rc::Rc::new(BatchedConds::build(p, step));
                *current = Some((key, batch.clone()));
                batch
            }
        }
    }
}

/// What one image of the batch is conditioned on.
#[derive(Clone, Debug)]
pub struct ImageConds {
    /// `AND` sub-prompts with their weights.
    pub positive: Vec<(CondSchedule, f64)>,
    pub negative: CondSchedule,
}

/// The inputs of one batch.
pub struct BatchParams<'a> {
    pub width: i64,
    pub height: i64,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: SamplerKind,
    pub scheduler: SchedulerKind,
    pub sampler_params: SamplerParams,
    pub schedule_options: ScheduleOptions,
    pub noise: NoiseOptions,
    /// One seed and subseed per image of the batch.
    pub seeds: &'a [u64],
    pub subseeds: &'a [u64],
    /// One entry per image.
    pub conds: &'a [ImageConds],
    /// img2img: the init latents `[B, 4, h, w]` (already scaled) and the denoising strength.
    pub init: Option<(&'a Tensor, f64)>,
    /// img2img step count as A1111's `setup_img2img_steps` computes it when steps are given
    /// explicitly (the hires pass) or option `img2img_fix_steps` is on: `steps` steps are run
    /// out of a schedule of `steps / strength`, instead of `strength × steps` out of `steps`.
    pub img2img_fix_steps: bool,
    /// A1111's `pad_cond_uncond` option: the empty prompt's conditioning `[1, 77, C]` to pad the
    /// shorter of cond and uncond with; `None` runs them as separate model calls instead.
    pub pad_cond_uncond: Option<Tensor>,
    /// Inpainting: A1111's `p.mask` (1 keeps the init latent) and `p.nmask` (1 regenerates),
    /// `[4, h, w]`. Needs `init`; the init latent is blended back in every model evaluation and
    /// once more after sampling.
    pub mask: Option<(&'a Tensor, &'a Tensor)>,
    /// Inpainting (9-channel) UNets: A1111's `image_conditioning` (`c_concat`), `[B, 5, h, w]`
    /// on the model's device — a mask channel, then the encoded (masked) picture; see
    /// [`StableDiffusion::inpainting_conditioning`]. It is concatenated to the latent input of
    /// every UNet call, after the denoiser's input scaling. Required exactly when the UNet has
    /// more than 4 input channels.
    pub image_cond: Option<&'a Tensor>,
}

/// Brownian-tree draws through the request's noise source, as A1111's
/// `replace_torchsde_browinan` (`rng.randn_local(seed, shape)`).
struct SourceNormal(RandnSource);

impl SeededNormal for SourceNormal {
    fn randn(&mut self, seed: u32, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        Ok(NoiseGenerator::new(self.0, u64::from(seed), device)?.randn(shape)?.to_kind(kind))
    }
}

/// One guided model evaluation's prediction: `(context, x, sigma or t, image_cond)` → denoised
/// latents (sigma samplers) or eps (timestep samplers), rows of `image_cond` matching those of `x`.
type Predict<'a> = dyn Fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>) -> Tensor + 'a;

/// A decoded image: RGB, row-major, 8 bits per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Called after every sampler step with (step, total steps, denoised latent); `Stop` ends the
/// batch early with the latest denoised latent (A1111's interrupt).
pub type StepHook<'a> = dyn FnMut(usize, usize, &Tensor) -> Control + 'a;

impl StableDiffusion {
    /// How many pixels one latent cell covers (8 for real SD; the tiny test models use 2).
    pub fn latent_factor(&self) -> i64 {
        1 << (self.config.vae.ch_mult.len() - 1)
    }

    /// Runs one batch through the sampler and returns the final latents `[B, 4, h, w]`.
    pub fn sample_batch(&self, p: &BatchParams, hook: &mut StepHook) -> Result<Tensor> {
        let device = self.placement.device;
        let f = self.latent_factor();
        if p.width % f != 0 || p.height % f != 0 {
            return Err(Error::Sampling(format!("width and height must be multiples of {f}")));
        }
        let b = p.seeds.len();
        if p.conds.len() != b || p.subseeds.len() != b {
            return Err(Error::Sampling("one conditioning, seed and subseed per image".into()));
        }
        let schedule = DiscreteSchedule::sd1();
        let plan = match p.init {
            None => SamplingPlan::txt2img(p.sampler, p.scheduler, p.steps, &schedule, &p.schedule_options)?,
            Some((_, strength)) => SamplingPlan::img2img(
                p.sampler,
                p.scheduler,
                p.steps,
                strength,
                p.img2img_fix_steps,
                &schedule,
                &p.schedule_options,
            )?,
        };
        let masks = match (p.mask, p.init) {
            (Some(_), None) => return Err(Error::Sampling("an inpainting mask needs an init latent".into())),
            (Some((m, n)), Some(_)) => Some((m.to_device(device), n.to_device(device))),
            (None, _) => None,
        };
        let shape = [4, p.height / f, p.width / f];
        let extra = self.config.unet.in_channels - 4;
        match p.image_cond.map(Tensor::size) {
            None if extra == 0 => {}
            Some(s) if s == [b as i64, extra, shape[1], shape[2]] => {}
            got => {
                return Err(Error::Sampling(format!(
                "a UNet with {} input channels needs an image conditioning of shape [{b}, {extra}, {}, {}], \
                     got {got:?}",
                self.config.unet.in_channels, shape[1], shape[2]
            )))
            }
        }
        let mut rng = ImageRng::new(&p.noise, shape, p.seeds, p.subseeds, device)?;
        let noise = rng.next_batch()?;
        let x = plan.start_latent(&noise, p.init.map(|(t, _)| t), false)?;

        let denoiser = CompVisDenoiser::new(schedule);
        let kind = self.placement.kind;
        // `image_cond` rows match `xs` rows (see `cfg`); LDM's "hybrid" conditioning appends them
        // as extra input channels of the (already scaled) latent.
        let eps_of = |context: &Tensor, xs: &Tensor, t: &Tensor, image_cond: Option<&Tensor>| {
            let xs = match image_cond {
                Some(c) => Tensor::cat(&[xs, &c.to_kind(xs.kind())], 1),
                None => xs.shallow_clone(),
            };
            self.unet.forward(&xs.to_kind(kind), t, &context.to_kind(kind)).to_kind(Kind::Float)
        };
        let denoised_of = |context: &Tensor, xs: &Tensor, sigmas: &Tensor, image_cond: Option<&Tensor>| {
            let mut eps = |xx: &Tensor, t: &Tensor| eps_of(context, xx, t, image_cond);
            denoiser.denoise(&mut eps, xs, sigmas)
        };
        // A1111 counts model evaluations to pick each evaluation's conditioning.
        let model_step = std::cell::Cell::new(0u32);
        let next_step = || {
            let s = model_step.get();
            model_step.set(s + 1);
            s
        };
        let total = p.steps;
        let mut on_step = |info: &StepInfo| hook(info.step, total, info.denoised);

        let mut brownian;
        let mut stream = |like: &Tensor, _: f64, _: f64| rng.try_next_noise(like);
        let noise_source: &mut dyn NoiseSource =
            match (p.sampler.options().brownian_noise, plan.brownian_range()) {
                (true, Some((lo, hi))) => {
                    let normal = Box::new(SourceNormal(p.noise.source));
                    brownian = BrownianTreeNoise::new(&x, lo, hi, p.seeds, normal)?;
                    &mut brownian
                }
                _ => &mut stream,
            };
        let mut ctx = SamplerCtx::new(noise_source).with_callback(&mut on_step);
        // Inpainting blend `x·nmask + init·mask`. A1111's CFG denoiser applies it to the
        // denoised prediction for sigma samplers and to the model's input latent for the
        // timestep samplers (DDIM, PLMS, UniPC), whose prediction is eps.
        let blend = |x: Tensor| match (masks.as_ref(), p.init) {
            (Some((mask, nmask)), Some((init, _))) => x * nmask + init * mask,
            _ => x,
        };
        let cond_batches = CondBatches::default();
        let sampled = match p.sampler.model_input() {
            ModelInput::Denoised => {
                let mut f = |x: &Tensor, sigma: &Tensor| {
                    blend(self.cfg(x, sigma, p, &cond_batches, next_step(), &denoised_of).0)
                };
                sample(&plan, Model::Denoised(&mut f), x, &p.sampler_params, &mut ctx)?
            }
            ModelInput::Eps => {
                let mut f = |x: &Tensor, t: &Tensor| {
                    let x = blend(x.shallow_clone());
                    self.cfg(&x, t, p, &cond_batches, next_step(), &eps_of).0
                };
                sample(&plan, Model::Eps(&mut f), x, &p.sampler_params, &mut ctx)?
            }
            ModelInput::EpsCfgPp => {
                let mut f = |x: &Tensor, t: &Tensor| {
                    let x = blend(x.shallow_clone());
                    self.cfg(&x, t, p, &cond_batches, next_step(), &eps_of)
                };
                sample(&plan, Model::EpsCfgPp(&mut f), x, &p.sampler_params, &mut ctx)?
            }
        };
        // `StableDiffusionProcessingImg2Img.sample` blends once more after the sampler.
        Ok(blend(sampled.latent))
    }

    /// A1111's `CFGDenoiser.forward` for one model evaluation: `predict(context, x, s)` is the
    /// model (denoised for sigma samplers, eps for timestep samplers). Returns the guided
    /// prediction and the unconditional one.
    fn cfg(
        &self,
        x: &Tensor,
        s: &Tensor,
        p: &BatchParams,
        conds: &CondBatches,
        step: u32,
        predict: &Predict,
    ) -> (Tensor, Tensor) {
        let b = p.conds.len() as i64;
        let batch = conds.at(p, step);
        let BatchedConds { cond, uncond, joint } = &*batch;
        let repeats: Vec<i64> = p.conds.iter().map(|c| c.positive.len() as i64).collect();
        let mut x_parts = Vec::new();
        let mut s_parts = Vec::new();
        let mut c_parts = Vec::new();
        for (i, &n) in repeats.iter().enumerate() {
            let xi = x.narrow(0, i as i64, 1);
            let si = s.narrow(0, i as i64, 1);
            let ci = p.image_cond.map(|c| c.narrow(0, i as i64, 1));
            for _ in 0..n {
                x_parts.push(xi.shallow_clone());
                s_parts.push(si.shallow_clone());
                c_parts.extend(ci.as_ref().map(Tensor::shallow_clone));
            }
        }
        x_parts.push(x.shallow_clone());
        s_parts.push(s.shallow_clone());
        c_parts.extend(p.image_cond.map(Tensor::shallow_clone));
        let x_in = Tensor::cat(&x_parts, 0);
        let s_in = Tensor::cat(&s_parts, 0);
        // The image conditioning follows the latents row for row (A1111's `image_cond_in`).
        let c_in = p.image_cond.map(|_| Tensor::cat(&c_parts, 0));
        let n_cond = cond.size()[0];
        let x_out = if let Some(joint) = joint {
            predict(joint, &x_in, &s_in, c_in.as_ref())
        } else {
            // Different lengths: separate model calls, as A1111 does without padding.
            let rows = |t: &Tensor, start: i64, len: i64| t.narrow(0, start, len);
            let ca = c_in.as_ref().map(|c| rows(c, 0, n_cond));
            let cu = c_in.as_ref().map(|c| rows(c, n_cond, b));
            let a = predict(cond, &rows(&x_in, 0, n_cond), &rows(&s_in, 0, n_cond), ca.as_ref());
            let u = predict(uncond, &rows(&x_in, n_cond, b), &rows(&s_in, n_cond, b), cu.as_ref());
            Tensor::cat(&[a, u], 0)
        };
        // combine_denoised: uncond + Σ (cond − uncond) · (weight · cfg), per image.
        let cfg_scale = p.cfg_scale * p.sampler.cfg_scale_multiplier();
        let out_uncond = x_out.narrow(0, n_cond, b);
        let guided = out_uncond.copy();
        let mut index = 0;
        for (i, c) in p.conds.iter().enumerate() {
            let ui = out_uncond.narrow(0, i as i64, 1);
            for (_, weight) in &c.positive {
                let delta = (x_out.narrow(0, index, 1) - &ui) * (weight * cfg_scale);
                let mut gi = guided.narrow(0, i as i64, 1);
                gi += delta;
                index += 1;
            }
        }
        (guided, out_uncond)
    }

    /// Decodes latents one image at a time, as A1111 does: `vae(latent / scale)`, mapped from
    /// [-1, 1] to [0, 1], clamped, scaled by 255 and truncated to `u8`.
    pub fn decode_to_rgb(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let kind = self.placement.kind;
        let mut images = Vec::new();
        for i in 0..latents.size()[0] {
            let z = latents.narrow(0, i, 1).to_kind(kind) / SD1_LATENT_SCALE;
            let x = self.vae.decode(&z).to_kind(Kind::Float);
            let x = ((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0;
            let hwc =
                x.squeeze_dim(0).permute([1, 2, 0]).to_device(Device::Cpu).to_kind(Kind::Uint8).contiguous();
            let (h, w) = (hwc.size()[0], hwc.size()[1]);
            let mut data = vec![0u8; (h * w * 3) as usize];
            let n = data.len();
            hwc.f_copy_data(&mut data, n)?;
            images.push(RgbImage { width: w as u32, height: h as u32, data });
        }
        Ok(images)
    }

    /// Encodes RGB images `[B, 3, H, W]` in [0, 1] to scaled latents (the distribution's mean; A1111
    /// samples it, see the note in the issue tracker-independent docs of img2img).
    pub fn encode_rgb(&self, images: &Tensor) -> Tensor {
        self.encode_signed(&(images * 2.0 - 1.0))
    }

    /// [`Self::encode_rgb`] for pictures already mapped to [-1, 1].
    pub fn encode_signed(&self, images: &Tensor) -> Tensor {
        let x = images.to_kind(self.placement.kind).to_device(self.placement.device);
        let (mean, _) = self.vae.encode(&x);
        mean.to_kind(Kind::Float) * SD1_LATENT_SCALE
    }

    /// Whether the UNet takes A1111's inpainting conditioning (9 input channels: LDM's "hybrid"
    /// conditioning key).
    pub fn is_inpainting(&self) -> bool {
        self.config.unet.in_channels == 9
    }

    /// A1111's `inpainting_image_conditioning` for a batch of pictures `source` `[B, 3, H, W]` in
    /// [-1, 1]: the conditioning mask `mask` `[1, 1, H, W]` in [0, 1] (1 = regenerate; all ones
    /// without a mask), the picture moved towards its masked version `source·(1 − mask)` by
    /// `weight` (option `inpainting_mask_weight`, `torch.lerp`) and VAE-encoded as one batch, the
    /// mask resized to the latent size `(h, w)` by nearest-neighbour interpolation; the result is
    /// `[mask, latent]`, `[B, 5, h, w]`, on the model's device.
    ///
    /// txt2img (`txt2img_image_conditioning`) is the same with a 0.5-grey picture and a mask of
    /// ones; the hires pass (no mask) with weight 1 encodes the same all-zero picture.
    pub fn inpainting_conditioning(
        &self,
        source: &Tensor,
        mask: Option<&Tensor>,
        weight: f64,
        latent_size: (i64, i64),
    ) -> Tensor {
        let device = self.placement.device;
        let source = source.to_kind(Kind::Float).to_device(device);
        let (bsz, h, w) = (source.size()[0], source.size()[2], source.size()[3]);
        let mask = match mask {
            Some(m) => m.to_kind(Kind::Float).to_device(device),
            None => Tensor::ones([1, 1, h, w], (Kind::Float, device)),
        };
        let masked = &source * (1.0 - &mask);
        let picture = source.lerp(&masked, weight);
        let latent = self.encode_signed(&picture);
        let small = mask.upsample_nearest2d([latent_size.0, latent_size.1], None::<f64>, None::<f64>);
        Tensor::cat(&[small.expand([bsz, 1, latent_size.0, latent_size.1], false), latent], 1)
    }

    /// A1111's `txt2img_image_conditioning` for an inpainting UNet: `batch` copies of an encoded
    /// 0.5-grey `width`×`height` picture (0 in [-1, 1]) behind a mask channel of ones.
    pub fn txt2img_inpainting_conditioning(&self, batch: i64, width: i64, height: i64) -> Tensor {
        let f = self.latent_factor();
        let device = self.placement.device;
        // The images of the batch are identical; one encode serves them all.
        let latent = self.encode_signed(&Tensor::zeros([1, 3, height, width], (Kind::Float, device)));
        let ones = Tensor::ones([1, 1, height / f, width / f], (Kind::Float, device));
        Tensor::cat(&[ones, latent], 1).repeat([batch, 1, 1, 1])
    }
}
