//! Euler and Euler ancestral (k-diffusion `sample_euler`, `sample_euler_ancestral`).
//!
//! Euler integrates the probability-flow ODE `dx/dsigma = (x - D(x, sigma)) / sigma` with one
//! model call per step (Karras et al. 2022, Algorithm 2 with optional churn). The ancestral
//! variant steps down to `sigma_down` and adds fresh noise of size `sigma_up`, with
//! `sigma_down² + sigma_up² = sigma_next²` (`eta` scales the stochastic part).

use tch::Tensor;

use super::{ancestral_step, finish, sigma_batch, to_d, Churn, DenoiseFn, Flow, Sampled, SamplerCtx};
use crate::error::Result;

/// Euler steps over `sigmas`, with Karras churn.
pub fn euler(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    finish(euler_flow(model, x, sigmas, churn, ctx))
}

fn euler_flow(
    model: &mut DenoiseFn<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Flow<Tensor> {
    let steps = sigmas.len().saturating_sub(1);
    for i in 0..steps {
        let (xc, sigma_hat) = churn.apply(ctx, x, steps, sigmas[i], sigmas[i + 1])?;
        x = xc;
        let denoised = model(&x, &sigma_batch(&x, sigma_hat));
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.report(i, &x, &denoised, sigmas[i], sigma_hat)?;
        let dt = sigmas[i + 1] - sigma_hat;
        x = x + d * dt;
    }
    Ok(x)
}

/// Ancestral Euler steps over `sigmas`.
pub fn euler_ancestral(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    finish(euler_ancestral_flow(model, x, sigmas, eta, s_noise, ctx))
}

fn euler_ancestral_flow(
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
        x = x + d * (sigma_down - sigma);
        if sigma_next > 0.0 {
            x = x + ctx.noise(&denoised, sigma, sigma_next)? * s_noise * sigma_up;
        }
    }
    Ok(x)
}
