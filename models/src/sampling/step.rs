//! The loop that every sigma-schedule sampler shares, so that each sampler module states only the
//! mathematics of one step, as k-diffusion's `sample_*` functions read.
//!
//! [`run`] walks the `(sigma, sigma_next)` pairs of a schedule and hands each step a [`Stepper`]:
//! the step's index and noise levels, model evaluation at a noise level, the callback report
//! (which may stop the run), noise draws named by their step (for the Brownian tree) and the
//! pieces several samplers share (Karras churn, the ancestral re-noising, a plain Euler step).
//! A step closure returns the next latent; state a sampler carries between steps (multistep
//! history) lives in the closure.
//!
//! Every shared piece applies its tensor and scalar operations in k-diffusion's order:
//! `noise * s_noise * sigma_up` is `(noise * s_noise) * sigma_up`, not one fused factor, because
//! the scalar is rounded to the latent's dtype at each multiplication.

use tch::Tensor;

use super::{ancestral_step, finish, sigma_batch, to_d, Churn, DenoiseFn, Flow, Sampled, SamplerCtx};
use crate::error::Result;

/// One step of a sigma-schedule sampler: where it is, and the model and context it may use.
pub(crate) struct Stepper<'m, 'a, 'c, 'd> {
    model: &'m mut DenoiseFn<'a>,
    ctx: &'c mut SamplerCtx<'d>,
    /// Step index, from 0 (what the callback reports).
    pub i: usize,
    /// How many steps the run has (Karras churn divides by it).
    pub steps: usize,
    /// The noise level the step starts from.
    pub sigma: f64,
    /// The noise level the step goes to.
    pub sigma_next: f64,
}

impl Stepper<'_, '_, '_, '_> {
    /// `D(x, sigma)`: one model evaluation (k-diffusion's `model(x, sigma * s_in)`).
    pub fn denoise(&mut self, x: &Tensor, sigma: f64) -> Tensor {
        (self.model)(x, &sigma_batch(x, sigma))
    }

    /// The step's first model evaluation, at `sigma_hat` (the step's `sigma` unless churned),
    /// reported to the callback with the step's `sigma`; a stop ends the run with this
    /// prediction.
    pub fn denoise_reported(&mut self, x: &Tensor, sigma_hat: f64) -> Flow<Tensor> {
        let denoised = self.denoise(x, sigma_hat);
        self.report(x, &denoised, self.sigma, sigma_hat)?;
        Ok(denoised)
    }

    /// Reports this step to the callback with explicit noise levels (Restart reports its own).
    pub fn report(&mut self, x: &Tensor, denoised: &Tensor, sigma: f64, sigma_hat: f64) -> Flow<()> {
        self.ctx.report(self.i, x, denoised, sigma, sigma_hat)
    }

    /// Standard normal noise shaped like `like`, for the move from `sigma` to `sigma_next`.
    pub fn noise(&mut self, like: &Tensor, sigma: f64, sigma_next: f64) -> Flow<Tensor> {
        Ok(self.ctx.noise(like, sigma, sigma_next)?)
    }

    /// Karras churn at the start of the step: returns `(x, sigma_hat)` (see [`Churn`]).
    pub fn churn(&mut self, x: Tensor, churn: &Churn) -> Flow<(Tensor, f64)> {
        Ok(churn.apply(self.ctx, x, self.steps, self.sigma, self.sigma_next)?)
    }

    /// The ancestral re-noising `x + z · s_noise · sigma_up`, with `z` drawn for this step's
    /// `sigma → sigma_next` and shaped like `like`.
    pub fn ancestral_noise(&mut self, x: Tensor, like: &Tensor, s_noise: f64, sigma_up: f64) -> Flow<Tensor> {
        let (sigma, sigma_next) = (self.sigma, self.sigma_next);
        Ok(x + self.noise(like, sigma, sigma_next)? * s_noise * sigma_up)
    }
}

/// An Euler step `x + d · (sigma_to - sigma_from)` along the ODE derivative `d`.
pub(crate) fn euler_step(x: Tensor, d: Tensor, sigma_from: f64, sigma_to: f64) -> Tensor {
    x + d * (sigma_to - sigma_from)
}

/// Runs `step` over consecutive pairs of `sigmas`, from the latent `x`.
pub(crate) fn run(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    ctx: &mut SamplerCtx<'_>,
    step: impl FnMut(&mut Stepper<'_, '_, '_, '_>, Tensor) -> Flow<Tensor>,
) -> Result<Sampled> {
    let pairs: Vec<(f64, f64)> = sigmas.windows(2).map(|w| (w[0], w[1])).collect();
    run_pairs(model, x, &pairs, ctx, step)
}

/// Runs the frame that Euler, Heun and DPM2 share (Karras et al. 2022, Algorithm 2): churn, one
/// reported model evaluation at `sigma_hat` and the ODE derivative `d` there; `update(s, x, d,
/// sigma_hat)` then takes the step to `s.sigma_next`.
pub(crate) fn run_churned(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
    mut update: impl FnMut(&mut Stepper<'_, '_, '_, '_>, Tensor, Tensor, f64) -> Tensor,
) -> Result<Sampled> {
    run(model, x, sigmas, ctx, |s, x| {
        let (x, sigma_hat) = s.churn(x, &churn)?;
        let denoised = s.denoise_reported(&x, sigma_hat)?;
        let d = to_d(&x, sigma_hat, &denoised);
        Ok(update(s, x, d, sigma_hat))
    })
}

/// Runs the frame of the ancestral samplers: one reported model evaluation at the step's
/// `sigma` and the split of the step into `(sigma_down, sigma_up)` for `eta`
/// ([`ancestral_step`]); `update(s, x, denoised, (sigma_down, sigma_up))` does the rest.
pub(crate) fn run_ancestral(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    ctx: &mut SamplerCtx<'_>,
    mut update: impl FnMut(&mut Stepper<'_, '_, '_, '_>, Tensor, Tensor, (f64, f64)) -> Flow<Tensor>,
) -> Result<Sampled> {
    run(model, x, sigmas, ctx, |s, x| {
        let denoised = s.denoise_reported(&x, s.sigma)?;
        let split = ancestral_step(s.sigma, s.sigma_next, eta);
        update(s, x, denoised, split)
    })
}

/// Runs `step` over explicit `(sigma, sigma_next)` pairs (Restart's step list), from `x`.
pub(crate) fn run_pairs(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    pairs: &[(f64, f64)],
    ctx: &mut SamplerCtx<'_>,
    mut step: impl FnMut(&mut Stepper<'_, '_, '_, '_>, Tensor) -> Flow<Tensor>,
) -> Result<Sampled> {
    let mut s = Stepper { model, ctx, i: 0, steps: pairs.len(), sigma: 0.0, sigma_next: 0.0 };
    let mut walk = |mut x: Tensor| -> Flow<Tensor> {
        for (i, &(sigma, sigma_next)) in pairs.iter().enumerate() {
            (s.i, s.sigma, s.sigma_next) = (i, sigma, sigma_next);
            x = step(&mut s, x)?;
        }
        Ok(x)
    };
    finish(walk(x))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::{run, run_ancestral};
    use crate::sampling::{Control, SamplerCtx, StepInfo};

    fn scalar(v: f64) -> Tensor {
        Tensor::full([1, 1, 1, 1], v, (Kind::Double, Device::Cpu))
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[0, 0, 0, 0])
    }

    #[test]
    fn run_sigma_pairs_visited_in_order_with_index_and_count() {
        let mut model = |x: &Tensor, _: &Tensor| x.shallow_clone();
        let mut noise = |like: &Tensor, _: f64, _: f64| Ok(like.zeros_like());
        let mut ctx = SamplerCtx::new(&mut noise);
        let mut seen = Vec::new();
        let out = run(&mut model, scalar(0.0), &[3.0, 2.0, 1.0, 0.0], &mut ctx, |s, x| {
            seen.push((s.i, s.steps, s.sigma, s.sigma_next));
            Ok(x + 1.0)
        })
        .unwrap();
        assert_eq!(seen, [(0, 3, 3.0, 2.0), (1, 3, 2.0, 1.0), (2, 3, 1.0, 0.0)]);
        assert_eq!(value(&out.latent), 3.0);
        assert!(!out.stopped);
    }

    #[test]
    fn run_callback_stop_returns_that_steps_denoised() {
        // The model's prediction is the noise level it was called at.
        let mut model = |x: &Tensor, sigma: &Tensor| x.zeros_like() + sigma.reshape([-1, 1, 1, 1]);
        let mut noise = |like: &Tensor, _: f64, _: f64| Ok(like.zeros_like());
        let mut cb = |info: &StepInfo<'_>| if info.step == 1 { Control::Stop } else { Control::Continue };
        let mut ctx = SamplerCtx::new(&mut noise).with_callback(&mut cb);
        let mut steps_run = 0;
        let out = run(&mut model, scalar(5.0), &[3.0, 2.0, 1.0, 0.0], &mut ctx, |s, x| {
            steps_run += 1;
            let _denoised = s.denoise_reported(&x, s.sigma)?;
            Ok(x)
        })
        .unwrap();
        assert!(out.stopped);
        assert_eq!(steps_run, 2);
        assert_eq!(value(&out.latent), 2.0);
    }

    #[test]
    fn ancestral_noise_drawn_for_the_step_and_scaled_by_s_noise_and_sigma_up() {
        let mut model = |x: &Tensor, _: &Tensor| x.zeros_like();
        let mut draws = Vec::new();
        let mut noise = |like: &Tensor, sigma: f64, sigma_next: f64| {
            draws.push((sigma, sigma_next));
            Ok(like.ones_like())
        };
        let mut ctx = SamplerCtx::new(&mut noise);
        let mut splits = Vec::new();
        let out =
            run_ancestral(&mut model, scalar(0.0), &[2.0, 1.0], 1.0, &mut ctx, |s, x, denoised, split| {
                splits.push(split);
                s.ancestral_noise(x, &denoised, 0.5, split.1)
            })
            .unwrap();
        // eta 1 from 2 to 1: sigma_up = sqrt(1 · (4 - 1) / 4), sigma_down = sqrt(1 - 3/4).
        let (sigma_down, sigma_up) = splits[0];
        assert!((sigma_up - 0.75f64.sqrt()).abs() < 1e-15);
        assert!((sigma_down - 0.5).abs() < 1e-15);
        assert_eq!(draws, [(2.0, 1.0)]);
        assert_eq!(value(&out.latent), 0.5 * sigma_up);
    }
}
