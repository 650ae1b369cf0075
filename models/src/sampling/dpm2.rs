//! DPM2 and DPM2 ancestral (k-diffusion `sample_dpm_2`, `sample_dpm_2_ancestral`): a second-order
//! step inspired by DPM-Solver-2 — an Euler half-step to the geometric midpoint
//! `sigma_mid = exp(lerp(log sigma, log sigma_next, 1/2))`, then a full step with the midpoint
//! derivative. A step to sigma 0 is plain Euler. A1111 runs both with
//! `discard_next_to_last_sigma`, so the tiny penultimate sigma never becomes a midpoint.

use tch::Tensor;

use super::step::{self, euler_step, Stepper};
use super::{to_d, Churn, DenoiseFn, Sampled, SamplerCtx};
use crate::error::Result;

/// `exp(lerp(log a, log b, 0.5))`, with torch's `lerp` formula for weight 0.5
/// (`end - (end - start) * (1 - weight)`).
fn log_midpoint(a: f64, b: f64) -> f64 {
    let (la, lb) = (a.ln(), b.ln());
    (lb - (lb - la) * 0.5).exp()
}

/// The DPM2 update from `sigma` (derivative `d` at `x`) to `sigma_to`: the derivative at the
/// log midpoint carries the full step; a step into sigma 0 is Euler.
fn dpm_2_step(s: &mut Stepper<'_, '_, '_, '_>, x: Tensor, d: Tensor, sigma: f64, sigma_to: f64) -> Tensor {
    if sigma_to == 0.0 {
        return euler_step(x, d, sigma, sigma_to);
    }
    let sigma_mid = log_midpoint(sigma, sigma_to);
    let dt_1 = sigma_mid - sigma;
    let dt_2 = sigma_to - sigma;
    let x_2 = &x + d * dt_1;
    let denoised_2 = s.denoise(&x_2, sigma_mid);
    let d_2 = to_d(&x_2, sigma_mid, &denoised_2);
    x + d_2 * dt_2
}

/// DPM2 steps over `sigmas`, with Karras churn.
pub fn dpm_2(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    step::run_churned(model, x, sigmas, churn, ctx, |s, x, d, sigma_hat| {
        let sigma_next = s.sigma_next;
        dpm_2_step(s, x, d, sigma_hat, sigma_next)
    })
}

/// Ancestral DPM2 steps over `sigmas`.
pub fn dpm_2_ancestral(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    step::run_ancestral(model, x, sigmas, eta, ctx, |s, x, denoised, (sigma_down, sigma_up)| {
        let sigma = s.sigma;
        let d = to_d(&x, sigma, &denoised);
        let x = dpm_2_step(s, x, d, sigma, sigma_down);
        if sigma_down == 0.0 {
            // Upstream adds the noise only after a midpoint step: the final step to sigma 0
            // takes the Euler branch and stays noise-free.
            return Ok(x);
        }
        s.ancestral_noise(x, &denoised, s_noise, sigma_up)
    })
}
