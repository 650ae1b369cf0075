//! Euler and Euler ancestral (k-diffusion `sample_euler`, `sample_euler_ancestral`).
//!
//! Euler integrates the probability-flow ODE `dx/dsigma = (x - D(x, sigma)) / sigma` with one
//! model call per step (Karras et al. 2022, Algorithm 2 with optional churn). The ancestral
//! variant steps down to `sigma_down` and adds fresh noise of size `sigma_up`, with
//! `sigma_down² + sigma_up² = sigma_next²` (`eta` scales the stochastic part).

use tch::Tensor;

use super::step::{self, euler_step};
use super::{to_d, Churn, DenoiseFn, Sampled, SamplerCtx};
use crate::error::Result;

/// Euler steps over `sigmas`, with Karras churn.
pub fn euler(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    step::run_churned(model, x, sigmas, churn, ctx, |s, x, d, sigma_hat| {
        euler_step(x, d, sigma_hat, s.sigma_next)
    })
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
    step::run_ancestral(model, x, sigmas, eta, ctx, |s, x, denoised, (sigma_down, sigma_up)| {
        let d = to_d(&x, s.sigma, &denoised);
        let x = euler_step(x, d, s.sigma, sigma_down);
        if s.sigma_next > 0.0 {
            return s.ancestral_noise(x, &denoised, s_noise, sigma_up);
        }
        Ok(x)
    })
}
