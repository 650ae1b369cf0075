//! txt2img and img2img for SD1.x, following A1111's `processing.py`: per-image noise streams
//! (`rng`), a sampling plan (`sampling`), A1111's CFG denoiser — conditional and unconditional
//! predictions in one batch, `AND` sub-prompts combined with their weights, the conditioning of
//! each step picked from the prompt-editing schedules — and decoding with clamp and truncation.
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
        let i = self.0.iter().position(|(end, _)| step <= *end).unwrap_or(0);
        &self.0[i].1
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
}

/// Brownian-tree draws through the request's noise source, as A1111's
/// `replace_torchsde_browinan` (`rng.randn_local(seed, shape)`).
struct SourceNormal(RandnSource);

impl SeededNormal for SourceNormal {
    fn randn(&mut self, seed: u32, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        Ok(NoiseGenerator::new(self.0, u64::from(seed), device)?.randn(shape)?.to_kind(kind))
    }
}

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
        let mut rng = ImageRng::new(&p.noise, shape, p.seeds, p.subseeds, device)?;
        let noise = rng.next_batch()?;
        let x = plan.start_latent(&noise, p.init.map(|(t, _)| t), false)?;

        let denoiser = CompVisDenoiser::new(schedule);
        let kind = self.placement.kind;
        let eps_of = |context: &Tensor, xs: &Tensor, t: &Tensor| {
            self.unet.forward(&xs.to_kind(kind), t, &context.to_kind(kind)).to_kind(Kind::Float)
        };
        let denoised_of = |context: &Tensor, xs: &Tensor, sigmas: &Tensor| {
            let mut eps = |xx: &Tensor, t: &Tensor| eps_of(context, xx, t);
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
        let sampled = match p.sampler.model_input() {
            ModelInput::Denoised => {
                let mut f =
                    |x: &Tensor, sigma: &Tensor| blend(self.cfg(x, sigma, p, next_step(), &denoised_of).0);
                sample(&plan, Model::Denoised(&mut f), x, &p.sampler_params, &mut ctx)?
            }
            ModelInput::Eps => {
                let mut f = |x: &Tensor, t: &Tensor| {
                    let x = blend(x.shallow_clone());
                    self.cfg(&x, t, p, next_step(), &eps_of).0
                };
                sample(&plan, Model::Eps(&mut f), x, &p.sampler_params, &mut ctx)?
            }
            ModelInput::EpsCfgPp => {
                let mut f = |x: &Tensor, t: &Tensor| {
                    let x = blend(x.shallow_clone());
                    self.cfg(&x, t, p, next_step(), &eps_of)
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
        step: u32,
        predict: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    ) -> (Tensor, Tensor) {
        let b = p.conds.len() as i64;
        // Positive conditionings of every image (all sub-prompts), then the negatives.
        let mut conds = Vec::new();
        let mut repeats = Vec::with_capacity(p.conds.len());
        for c in p.conds {
            repeats.push(c.positive.len() as i64);
            conds.extend(c.positive.iter().map(|(s, _)| s.at(step).shallow_clone()));
        }
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
        let mut x_parts = Vec::new();
        let mut s_parts = Vec::new();
        for (i, &n) in repeats.iter().enumerate() {
            let xi = x.narrow(0, i as i64, 1);
            let si = s.narrow(0, i as i64, 1);
            for _ in 0..n {
                x_parts.push(xi.shallow_clone());
                s_parts.push(si.shallow_clone());
            }
        }
        x_parts.push(x.shallow_clone());
        s_parts.push(s.shallow_clone());
        let x_in = Tensor::cat(&x_parts, 0);
        let s_in = Tensor::cat(&s_parts, 0);
        let n_cond = cond.size()[0];
        let x_out = if cond.size()[1] == uncond.size()[1] {
            predict(&Tensor::cat(&[&cond, &uncond], 0), &x_in, &s_in)
        } else {
            // Different lengths: separate model calls, as A1111 does without padding.
            let a = predict(&cond, &x_in.narrow(0, 0, n_cond), &s_in.narrow(0, 0, n_cond));
            let u = predict(&uncond, &x_in.narrow(0, n_cond, b), &s_in.narrow(0, n_cond, b));
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
        let x = (images * 2.0 - 1.0).to_kind(self.placement.kind).to_device(self.placement.device);
        let (mean, _) = self.vae.encode(&x);
        mean.to_kind(Kind::Float) * SD1_LATENT_SCALE
    }
}
