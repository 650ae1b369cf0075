//! Heun (k-diffusion `sample_heun`): Karras et al. 2022, Algorithm 2 — an Euler predictor and a
//! trapezoidal corrector, two model calls per step except the last (to sigma 0), which is a
//! plain Euler step.

use tch::Tensor;

use super::{finish, sigma_batch, to_d, Churn, DenoiseFn, Flow, Sampled, SamplerCtx};
use crate::error::Result;

/// Heun steps over `sigmas`, with Karras churn.
pub fn heun(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    finish(heun_flow(model, x, sigmas, churn, ctx))
}

fn heun_flow(
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
        let dt = sigma_next - sigma_hat;
        if sigma_next == 0.0 {
            x = x + d * dt;
        } else {
            let x_2 = &x + &d * dt;
            let denoised_2 = model(&x_2, &sigma_batch(&x_2, sigma_next));
            let d_2 = to_d(&x_2, sigma_next, &denoised_2);
            let d_prime = (d + d_2) / 2.0;
            x = x + d_prime * dt;
        }
    }
    Ok(x)
}
