//! LCM (A1111 `sample_lcm`): a latent consistency model maps any noisy latent straight to its
//! clean estimate, so each step takes the denoised prediction and re-noises it to the next level:
//! `x = D(x, sigma_i) + sigma_{i+1} · z`. Run it with [`super::denoiser::LcmDenoiser`].

use tch::Tensor;

use super::{finish, sigma_batch, DenoiseFn, Flow, Sampled, SamplerCtx};
use crate::error::Result;

/// LCM steps over `sigmas`.
pub fn lcm(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    finish(lcm_flow(model, x, sigmas, ctx))
}

fn lcm_flow(
    model: &mut DenoiseFn<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    ctx: &mut SamplerCtx<'_>,
) -> Flow<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model(&x, &sigma_batch(&x, sigma));
        ctx.report(i, &x, &denoised, sigma, sigma)?;
        x = denoised;
        if sigma_next > 0.0 {
            x = ctx.noise(&x, sigma, sigma_next)? * sigma_next + x;
        }
    }
    Ok(x)
}
