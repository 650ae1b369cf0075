//! DPM2 and DPM2 ancestral (k-diffusion `sample_dpm_2`, `sample_dpm_2_ancestral`): a second-order
//! step inspired by DPM-Solver-2 — an Euler half-step to the geometric midpoint
//! `sigma_mid = exp(lerp(log sigma, log sigma_next, 1/2))`, then a full step with the midpoint
//! derivative. A step to sigma 0 is plain Euler. A1111 runs both with
//! `discard_next_to_last_sigma`, so the tiny penultimate sigma never becomes a midpoint.

use tch::Tensor;

use super::{ancestral_step, finish, sigma_batch, to_d, Churn, DenoiseFn, Flow, Sampled, SamplerCtx};
use crate::error::Result;

/// `exp(lerp(log a, log b, 0.5))`, with torch's `lerp` formula for weight 0.5
/// (`end - (end - start) * (1 - weight)`).
fn log_midpoint(a: f64, b: f64) -> f64 {
    let (la, lb) = (a.ln(), b.ln());
    (lb - (lb - la) * 0.5).exp()
}

/// DPM2 steps over `sigmas`, with Karras churn.
pub fn dpm_2(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    finish(dpm_2_flow(model, x, sigmas, churn, ctx))
}

fn dpm_2_flow(
    model: &mut DenoiseFn<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Flow<Tensor> {
    let steps = sigmas.len().saturating_sub(1);
    for i in 0..steps {
        let sigma_next = sigmas[i + 1];
        let (xc, sigma_hat) = churn.apply(ctx, x, steps, sigmas[i], sigma_next)?;
        x = xc;
        let denoised = model(&x, &sigma_batch(&x, sigma_hat));
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.report(i, &x, &denoised, sigmas[i], sigma_hat)?;
        if sigma_next == 0.0 {
            x = x + d * (sigma_next - sigma_hat);
        } else {
            let sigma_mid = log_midpoint(sigma_hat, sigma_next);
            let dt_1 = sigma_mid - sigma_hat;
            let dt_2 = sigma_next - sigma_hat;
            let x_2 = &x + d * dt_1;
            let denoised_2 = model(&x_2, &sigma_batch(&x_2, sigma_mid));
            let d_2 = to_d(&x_2, sigma_mid, &denoised_2);
            x = x + d_2 * dt_2;
        }
    }
    Ok(x)
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
    finish(dpm_2_ancestral_flow(model, x, sigmas, eta, s_noise, ctx))
}

fn dpm_2_ancestral_flow(
    model: &mut DenoiseFn<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Flow<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model(&x, &sigma_batch(&x, sigma));
        let (sigma_down, sigma_up) = ancestral_step(sigma, sigma_next, eta);
        ctx.report(i, &x, &denoised, sigma, sigma)?;
        let d = to_d(&x, sigma, &denoised);
        if sigma_down == 0.0 {
            x = x + d * (sigma_down - sigma);
        } else {
            let sigma_mid = log_midpoint(sigma, sigma_down);
            let dt_1 = sigma_mid - sigma;
            let dt_2 = sigma_down - sigma;
            let x_2 = &x + d * dt_1;
            let denoised_2 = model(&x_2, &sigma_batch(&x_2, sigma_mid));
            let d_2 = to_d(&x_2, sigma_mid, &denoised_2);
            x = x + d_2 * dt_2;
            // Upstream adds the noise only inside this branch: the final step to sigma 0 takes
            // the Euler branch above and stays noise-free.
            x = x + ctx.noise(&denoised, sigma, sigma_next)? * s_noise * sigma_up;
        }
    }
    Ok(x)
}
