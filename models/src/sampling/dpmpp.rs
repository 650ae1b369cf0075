//! The DPM-Solver++ family of k-diffusion: `sample_dpmpp_2s_ancestral`, `sample_dpmpp_2m`,
//! `sample_dpmpp_sde`, `sample_dpmpp_2m_sde` (midpoint and Heun corrections) and
//! `sample_dpmpp_3m_sde`.
//!
//! All work in `t = -log(sigma)` (half log-SNR in sigma space), where the exact solution of the
//! linear part gives `x_next = (sigma_next / sigma) x - expm1(-h) D` for `h = t_next - t`;
//! the variants differ in how they extrapolate `D` (single-step midpoint "2S", multistep "2M",
//! "3M") and in how much noise they re-inject (`eta`). The SDE variants draw their noise through
//! [`SamplerCtx`], which A1111 backs with a Brownian tree.

use tch::Tensor;

use super::step::{self, euler_step, Stepper};
use super::{ancestral_step, to_d, DenoiseFn, Flow, Sampled, SamplerCtx, SolverType};
use crate::error::Result;

fn t_fn(sigma: f64) -> f64 {
    -sigma.ln()
}

fn sigma_fn(t: f64) -> f64 {
    (-t).exp()
}

/// The SDE samplers' noise term: `x + z · sigma_next · sqrt(1 - e^(-2 eta h)) · s_noise`, with
/// `z` drawn for this step (nothing when `eta` is 0).
fn sde_noise(s: &mut Stepper<'_, '_, '_, '_>, x: Tensor, eta: f64, eta_h: f64, s_noise: f64) -> Flow<Tensor> {
    if eta == 0.0 {
        return Ok(x);
    }
    let (sigma, sigma_next) = (s.sigma, s.sigma_next);
    let scale = sigma_next * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise;
    Ok(s.noise(&x, sigma, sigma_next)? * scale + x)
}

/// DPM-Solver++(2S) ancestral steps over `sigmas`.
pub fn dpmpp_2s_ancestral(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    step::run_ancestral(model, x, sigmas, eta, ctx, |s, x, denoised, (sigma_down, sigma_up)| {
        let (sigma, sigma_next) = (s.sigma, s.sigma_next);
        let x = if sigma_down == 0.0 {
            let d = to_d(&x, sigma, &denoised);
            euler_step(x, d, sigma, sigma_down)
        } else {
            let (t, t_next) = (t_fn(sigma), t_fn(sigma_down));
            let r = 0.5;
            let h = t_next - t;
            let s_mid = t + r * h;
            let x_2 = &x * (sigma_fn(s_mid) / sigma_fn(t)) - &denoised * (-h * r).exp_m1();
            let denoised_2 = s.denoise(&x_2, sigma_fn(s_mid));
            x * (sigma_fn(t_next) / sigma_fn(t)) - denoised_2 * (-h).exp_m1()
        };
        if sigma_next > 0.0 {
            return s.ancestral_noise(x, &denoised, s_noise, sigma_up);
        }
        Ok(x)
    })
}

/// DPM-Solver++(2M) steps over `sigmas` (deterministic).
pub fn dpmpp_2m(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let mut old_denoised: Option<Tensor> = None;
    step::run(model, x, sigmas, ctx, |s, x| {
        let (sigma, sigma_next) = (s.sigma, s.sigma_next);
        let denoised = s.denoise_reported(&x, sigma)?;
        let (t, t_next) = (t_fn(sigma), t_fn(sigma_next));
        let h = t_next - t;
        let scale = sigma_fn(t_next) / sigma_fn(t);
        let x = match &old_denoised {
            Some(old) if sigma_next != 0.0 => {
                let h_last = t - t_fn(sigmas[s.i - 1]);
                let r = h_last / h;
                let denoised_d = &denoised * (1.0 + 1.0 / (2.0 * r)) - old * (1.0 / (2.0 * r));
                x * scale - denoised_d * (-h).exp_m1()
            }
            _ => x * scale - &denoised * (-h).exp_m1(),
        };
        old_denoised = Some(denoised);
        Ok(x)
    })
}

/// DPM-Solver++ (stochastic, "DPM++ SDE") steps over `sigmas`: a stochastic midpoint step at
/// `t + r h`, then a full step with the weighted denoised estimates.
pub fn dpmpp_sde(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    r: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    step::run(model, x, sigmas, ctx, |s, x| {
        let (sigma, sigma_next) = (s.sigma, s.sigma_next);
        let denoised = s.denoise_reported(&x, sigma)?;
        if sigma_next == 0.0 {
            let d = to_d(&x, sigma, &denoised);
            return Ok(euler_step(x, d, sigma, sigma_next));
        }
        let (t, t_next) = (t_fn(sigma), t_fn(sigma_next));
        let h = t_next - t;
        let s_mid = t + h * r;
        let fac = 1.0 / (2.0 * r);

        // Step 1: to the intermediate time s.
        let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(s_mid), eta);
        let s_ = t_fn(sd);
        let x_2 = &x * (sigma_fn(s_) / sigma_fn(t)) - &denoised * (t - s_).exp_m1();
        let x_2 = s.noise(&x_2, sigma_fn(t), sigma_fn(s_mid))? * s_noise * su + x_2;
        let denoised_2 = s.denoise(&x_2, sigma_fn(s_mid));

        // Step 2: the full step with the blended estimate.
        let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(t_next), eta);
        let t_next_ = t_fn(sd);
        let denoised_d = &denoised * (1.0 - fac) + denoised_2 * fac;
        let x = x * (sigma_fn(t_next_) / sigma_fn(t)) - denoised_d * (t - t_next_).exp_m1();
        Ok(s.noise(&x, sigma_fn(t), sigma_fn(t_next))? * s_noise * su + x)
    })
}

/// DPM-Solver++(2M) SDE steps over `sigmas`; the step to sigma 0 returns the denoised estimate.
pub fn dpmpp_2m_sde(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    solver_type: SolverType,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let mut old_denoised: Option<Tensor> = None;
    let mut h_last: Option<f64> = None;
    step::run(model, x, sigmas, ctx, |s, mut x| {
        let (sigma, sigma_next) = (s.sigma, s.sigma_next);
        let denoised = s.denoise_reported(&x, sigma)?;
        // `h` is kept from the previous step when this one has no h (k-diffusion carries the
        // Python variable over); only the final step, which leaves the loop, can lack it.
        let mut h = h_last.unwrap_or(0.0);
        if sigma_next == 0.0 {
            x = denoised.shallow_clone();
        } else {
            let (t, s_next) = (-sigma.ln(), -sigma_next.ln());
            h = s_next - t;
            let eta_h = eta * h;
            let phi = -(-h - eta_h).exp_m1();
            x = x * (sigma_next / sigma * (-eta_h).exp()) + &denoised * phi;
            if let (Some(old), Some(hl)) = (&old_denoised, h_last) {
                let r = hl / h;
                let diff = &denoised - old;
                x = match solver_type {
                    SolverType::Heun => x + diff * ((phi / (-h - eta_h) + 1.0) * (1.0 / r)),
                    SolverType::Midpoint => x + diff * (0.5 * phi * (1.0 / r)),
                };
            }
            x = sde_noise(s, x, eta, eta_h, s_noise)?;
        }
        old_denoised = Some(denoised);
        h_last = Some(h);
        Ok(x)
    })
}

/// DPM-Solver++(3M) SDE steps over `sigmas`; the step to sigma 0 returns the denoised estimate.
pub fn dpmpp_3m_sde(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let (mut denoised_1, mut denoised_2): (Option<Tensor>, Option<Tensor>) = (None, None);
    let (mut h_1, mut h_2): (Option<f64>, Option<f64>) = (None, None);
    step::run(model, x, sigmas, ctx, |s, mut x| {
        let (sigma, sigma_next) = (s.sigma, s.sigma_next);
        let denoised = s.denoise_reported(&x, sigma)?;
        let mut h = h_1.unwrap_or(0.0);
        if sigma_next == 0.0 {
            x = denoised.shallow_clone();
        } else {
            let (t, s_next) = (-sigma.ln(), -sigma_next.ln());
            h = s_next - t;
            let h_eta = h * (eta + 1.0);
            x = x * (-h_eta).exp() + &denoised * -(-h_eta).exp_m1();
            if let (Some(h1), Some(h2), Some(d1), Some(d2)) = (h_1, h_2, &denoised_1, &denoised_2) {
                let r0 = h1 / h;
                let r1 = h2 / h;
                let d1_0 = (&denoised - d1) / r0;
                let d1_1 = (d1 - d2) / r1;
                let d1 = &d1_0 + (&d1_0 - &d1_1) * (r0 / (r0 + r1));
                let d2 = (d1_0 - d1_1) / (r0 + r1);
                let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
                let phi_3 = phi_2 / h_eta - 0.5;
                x = x + d1 * phi_2 - d2 * phi_3;
            } else if let (Some(h1), Some(d1)) = (h_1, &denoised_1) {
                let r = h1 / h;
                let d = (&denoised - d1) / r;
                let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
                x = x + d * phi_2;
            }
            x = sde_noise(s, x, eta, h * eta, s_noise)?;
        }
        denoised_2 = denoised_1.take();
        denoised_1 = Some(denoised);
        h_2 = h_1;
        h_1 = Some(h);
        Ok(x)
    })
}
