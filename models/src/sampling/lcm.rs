//! LCM (A1111 `sample_lcm`): a latent consistency model maps any noisy latent straight to its
//! clean estimate, so each step takes the denoised prediction and re-noises it to the next level:
//! `x = D(x, sigma_i) + sigma_{i+1} · z`. Run it with [`super::denoiser::LcmDenoiser`].

use tch::Tensor;

use super::step;
use super::{DenoiseFn, Sampled, SamplerCtx};
use crate::error::Result;

/// LCM steps over `sigmas`.
pub fn lcm(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    step::run(model, x, sigmas, ctx, |s, x| {
        let x = s.denoise_reported(&x, s.sigma)?;
        if s.sigma_next > 0.0 {
            let (sigma, sigma_next) = (s.sigma, s.sigma_next);
            return Ok(s.noise(&x, sigma, sigma_next)? * sigma_next + x);
        }
        Ok(x)
    })
}
