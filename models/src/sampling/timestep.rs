//! A1111's timestep samplers DDIM, DDIM CFG++ and PLMS (`modules/sd_samplers_timesteps_impl.py`),
//! which run on the variance-preserving latent with integer timesteps and an eps model.
//!
//! The timesteps are `1, 1 + s, 1 + 2s, …` ([`super::schedule::timestep_sampler_timesteps`]),
//! walked from the last down to the first: for the step at index `k` the model is evaluated at
//! `timesteps[k]` and the latent moves to `alphas_cumprod[timesteps[k - 1]]` (for `k = 0`,
//! `alphas_cumprod[0]`). Only `len - 1` steps run, so sampling ends at `timesteps[0] = 1`, not
//! at a clean latent — an A1111 quirk reproduced here. Every step draws a noise tensor, even with
//! `eta = 0`, as upstream does.

use tch::Tensor;

use super::{finish, CfgPpEpsFn, Flow, Sampled, SamplerCtx, TimestepEpsFn};
use crate::error::{Error, Result};

/// DDIM CFG++ divides the guidance scale by 12.5 (A1111's `cond_scale_miltiplier`): the pipeline
/// must multiply its CFG scale by this before combining.
pub const CFGPP_SCALE_MULTIPLIER: f64 = 1.0 / 12.5;

/// Per-index coefficients: `alphas_cumprod` at each timestep and at the previous one.
struct Alphas {
    at: Vec<f64>,
    prev: Vec<f64>,
}

fn alphas(timesteps: &[i64], alphas_cumprod: &[f64]) -> Result<Alphas> {
    let get = |t: i64| {
        usize::try_from(t)
            .ok()
            .and_then(|t| alphas_cumprod.get(t).copied())
            .ok_or_else(|| Error::Sampling(format!("timestep {t} is outside alphas_cumprod")))
    };
    let at = timesteps.iter().map(|&t| get(t)).collect::<Result<Vec<_>>>()?;
    let mut prev = vec![get(0)?];
    for &t in &timesteps[..timesteps.len().saturating_sub(1)] {
        prev.push(get(t)?);
    }
    Ok(Alphas { at, prev })
}

fn t_batch(x: &Tensor, t: i64) -> Tensor {
    Tensor::full([x.size()[0]], t as f64, (x.kind(), x.device()))
}

/// The k-diffusion noise level of `alphas_cumprod` value `a` (names the step for the noise source).
fn vp_sigma(a: f64) -> f64 {
    ((1.0 - a) / a).sqrt()
}

/// DDIM's `sigma_t` for eta: `eta · sqrt((1 - a_prev) / (1 - a) · (1 - a / a_prev))`.
fn ddim_sigma(eta: f64, a: f64, a_prev: f64) -> f64 {
    eta * ((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev)).sqrt()
}

/// DDIM over `timesteps` (increasing) with the model's `alphas_cumprod`.
pub fn ddim(
    model: &mut TimestepEpsFn<'_>,
    x: Tensor,
    timesteps: &[i64],
    alphas_cumprod: &[f64],
    eta: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let a = alphas(timesteps, alphas_cumprod)?;
    finish(ddim_flow(&mut |x, t| (model(x, t), None), x, timesteps, &a, eta, ctx))
}

/// DDIM CFG++: DDIM whose direction term uses the unconditional eps (`model` returns
/// `(eps_cfg, eps_uncond)`; see [`CFGPP_SCALE_MULTIPLIER`]).
pub fn ddim_cfgpp(
    model: &mut CfgPpEpsFn<'_>,
    x: Tensor,
    timesteps: &[i64],
    alphas_cumprod: &[f64],
    eta: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let a = alphas(timesteps, alphas_cumprod)?;
    finish(ddim_flow(
        &mut |x, t| {
            let (e, u) = model(x, t);
            (e, Some(u))
        },
        x,
        timesteps,
        &a,
        eta,
        ctx,
    ))
}

type EpsPair<'a> = dyn FnMut(&Tensor, &Tensor) -> (Tensor, Option<Tensor>) + 'a;

fn ddim_flow(
    model: &mut EpsPair<'_>,
    mut x: Tensor,
    timesteps: &[i64],
    a: &Alphas,
    eta: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Flow<Tensor> {
    let n = timesteps.len();
    for i in 0..n.saturating_sub(1) {
        let index = n - 1 - i;
        let (e_t, uncond) = model(&x, &t_batch(&x, timesteps[index]));
        let (a_t, a_prev) = (a.at[index], a.prev[index]);
        let sigma_t = ddim_sigma(eta, a_t, a_prev);
        let sqrt_one_minus_at = (1.0 - a_t).sqrt();
        let pred_x0 = (&x - &e_t * sqrt_one_minus_at) / a_t.sqrt();
        let direction = uncond.as_ref().unwrap_or(&e_t);
        let dir_xt = direction * (1.0 - a_prev - sigma_t * sigma_t).sqrt();
        let noise = ctx.noise(&x, vp_sigma(a_t), vp_sigma(a_prev))? * sigma_t;
        x = &pred_x0 * a_prev.sqrt() + dir_xt + noise;
        ctx.report(i, &x, &pred_x0, 0.0, 0.0)?;
    }
    Ok(x)
}

/// PLMS (pseudo linear multistep) over `timesteps` (increasing): a pseudo improved Euler first
/// step, then Adams–Bashforth combinations of up to four eps values.
pub fn plms(
    model: &mut TimestepEpsFn<'_>,
    x: Tensor,
    timesteps: &[i64],
    alphas_cumprod: &[f64],
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let a = alphas(timesteps, alphas_cumprod)?;
    finish(plms_flow(model, x, timesteps, &a, ctx))
}

fn plms_flow(
    model: &mut TimestepEpsFn<'_>,
    mut x: Tensor,
    timesteps: &[i64],
    a: &Alphas,
    ctx: &mut SamplerCtx<'_>,
) -> Flow<Tensor> {
    let n = timesteps.len();
    let mut old_eps: Vec<Tensor> = Vec::with_capacity(4);
    let x_prev_and_pred_x0 = |x: &Tensor, e_t: &Tensor, index: usize| {
        let (a_t, a_prev) = (a.at[index], a.prev[index]);
        let pred_x0 = (x - e_t * (1.0 - a_t).sqrt()) / a_t.sqrt();
        let dir_xt = e_t * (1.0 - a_prev).sqrt();
        (&pred_x0 * a_prev.sqrt() + dir_xt, pred_x0)
    };
    for i in 0..n.saturating_sub(1) {
        let index = n - 1 - i;
        let ts = t_batch(&x, timesteps[index]);
        let t_next = t_batch(&x, timesteps[index.saturating_sub(1)]);
        let e_t = model(&x, &ts);
        let e_t_prime = match old_eps.len() {
            0 => {
                let (x_prev, _) = x_prev_and_pred_x0(&x, &e_t, index);
                let e_t_next = model(&x_prev, &t_next);
                (&e_t + e_t_next) / 2.0
            }
            1 => (&e_t * 3.0 - &old_eps[0]) / 2.0,
            2 => (&e_t * 23.0 - &old_eps[1] * 16.0 + &old_eps[0] * 5.0) / 12.0,
            _ => (&e_t * 55.0 - &old_eps[2] * 59.0 + &old_eps[1] * 37.0 - &old_eps[0] * 9.0) / 24.0,
        };
        let (x_prev, pred_x0) = x_prev_and_pred_x0(&x, &e_t_prime, index);
        old_eps.push(e_t);
        if old_eps.len() >= 4 {
            drop(old_eps.remove(0));
        }
        x = x_prev;
        ctx.report(i, &x, &pred_x0, 0.0, 0.0)?;
    }
    Ok(x)
}
