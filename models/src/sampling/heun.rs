//! Heun (k-diffusion `sample_heun`): Karras et al. 2022, Algorithm 2 — an Euler predictor and a
//! trapezoidal corrector, two model calls per step except the last (to sigma 0), which is a
//! plain Euler step.

use tch::Tensor;

use super::step::{self, euler_step, Stepper};
use super::{to_d, Churn, DenoiseFn, Sampled, SamplerCtx};
use crate::error::Result;

/// Heun steps over `sigmas`, with Karras churn.
pub fn heun(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    churn: Churn,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    step::run_churned(model, x, sigmas, churn, ctx, heun_step)
}

/// The Heun update from `sigma` (derivative `d` at `x`) to the step's `sigma_next`: the
/// trapezoid of the derivatives at both ends, or an Euler step into sigma 0. Restart takes the
/// same step.
pub(crate) fn heun_step(s: &mut Stepper<'_, '_, '_, '_>, x: Tensor, d: Tensor, sigma: f64) -> Tensor {
    let sigma_next = s.sigma_next;
    if sigma_next == 0.0 {
        return euler_step(x, d, sigma, sigma_next);
    }
    let dt = sigma_next - sigma;
    let x_2 = &x + &d * dt;
    let denoised_2 = s.denoise(&x_2, sigma_next);
    let d_2 = to_d(&x_2, sigma_next, &denoised_2);
    let d_prime = (d + d_2) / 2.0;
    x + d_prime * dt
}
