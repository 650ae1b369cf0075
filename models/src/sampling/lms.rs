//! LMS (k-diffusion `sample_lms`): a linear multistep (Adams–Bashforth-type) method on the
//! derivatives `d_i = (x - D(x, sigma_i)) / sigma_i` over the non-uniform sigma grid.
//!
//! The coefficient of the derivative from `j` steps back is the integral over the step
//! `[sigma_i, sigma_{i+1}]` of the Lagrange basis polynomial through the last `order` sigmas:
//! `c_j = ∫ Π_{k≠j} (tau - sigma_{i-k}) / (sigma_{i-j} - sigma_{i-k}) dtau`.
//! k-diffusion evaluates it with `scipy.integrate.quad`; the integrand is a polynomial of degree
//! `order - 1 ≤ 3`, which QUADPACK's first 21-point Gauss–Kronrod pass integrates exactly and
//! accepts, so [`super::special::gauss_kronrod_21`] reproduces SciPy's values to round-off.

use tch::Tensor;

use super::special::gauss_kronrod_21;
use super::step;
use super::{to_d, DenoiseFn, Sampled, SamplerCtx};
use crate::error::{Error, Result};

/// k-diffusion's (and A1111's) LMS order.
pub const DEFAULT_ORDER: usize = 4;

/// The LMS coefficient of the derivative `j` steps back, for step `i` of `t` with `order`
/// points (k-diffusion `linear_multistep_coeff`).
pub fn linear_multistep_coeff(order: usize, t: &[f64], i: usize, j: usize) -> Result<f64> {
    if order == 0 || order - 1 > i {
        return Err(Error::Sampling(format!("LMS order {order} too high for step {i}")));
    }
    let basis = |tau: f64| {
        let mut prod = 1.0;
        for k in 0..order {
            if j == k {
                continue;
            }
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k]);
        }
        prod
    };
    Ok(gauss_kronrod_21(basis, t[i], t[i + 1]))
}

/// LMS steps over `sigmas` with up to `order` past derivatives.
pub fn lms(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    order: usize,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let mut ds: Vec<Tensor> = Vec::with_capacity(order + 1);
    step::run(model, x, sigmas, ctx, |s, x| {
        let denoised = s.denoise_reported(&x, s.sigma)?;
        ds.push(to_d(&x, s.sigma, &denoised));
        if ds.len() > order {
            drop(ds.remove(0));
        }
        let cur_order = (s.i + 1).min(order);
        let mut update: Option<Tensor> = None;
        for (j, d) in ds.iter().rev().enumerate().take(cur_order) {
            let term = d * linear_multistep_coeff(cur_order, sigmas, s.i, j)?;
            update = Some(match update {
                None => term,
                Some(acc) => acc + term,
            });
        }
        Ok(match update {
            Some(u) => x + u,
            None => x,
        })
    })
}
