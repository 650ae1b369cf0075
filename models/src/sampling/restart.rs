//! Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes") as
//! A1111 implements it in `modules/sd_samplers_extra.py`: Heun steps, plus, for 20 steps or more,
//! a restart segment that jumps back up from sigma ≈ 0.1 to sigma ≈ 2 (adding the matching
//! fresh noise) and descends again on its own Karras grid.
//!
//! With `steps ≥ 20` the caller's sigmas only provide the range: A1111 rebuilds a Karras schedule
//! of `steps - restart_steps · restart_times` levels between the last nonzero and the first sigma,
//! with `restart_steps = 9, restart_times = 1` (or `steps / 4` and 2 from 36 steps), and restarts
//! once per `restart_times` at the level closest to 0.1, up to the level closest to 2.

use tch::Tensor;

use super::heun::heun_step;
use super::schedule::karras;
use super::step;
use super::{to_d, DenoiseFn, Sampled, SamplerCtx};
use crate::error::Result;

fn argmin_distance(sigmas: &[f64], key: f64) -> usize {
    let mut best = 0;
    for (i, s) in sigmas.iter().enumerate() {
        if (s - key).abs() < (sigmas[best] - key).abs() {
            best = i;
        }
    }
    best
}

/// The `(from, to)` sigma pairs Restart walks for a schedule of `sigmas` (A1111's `step_list`).
pub fn restart_steps(sigmas: &[f64]) -> Result<Vec<(f64, f64)>> {
    let steps = sigmas.len().saturating_sub(1);
    let mut sigmas = sigmas.to_vec();
    // restart at the level nearest `key`: (restart_steps, restart_times, restart_max)
    let mut restart: Option<(f64, usize, usize, f64)> = None;
    if steps >= 20 {
        let (mut restart_steps, mut restart_times) = (9, 1);
        if steps >= 36 {
            restart_steps = steps / 4;
            restart_times = 2;
        }
        sigmas = karras(steps - restart_steps * restart_times, sigmas[sigmas.len() - 2], sigmas[0], 7.0)?;
        restart = Some((0.1, restart_steps + 1, restart_times, 2.0));
    }
    let restart_at =
        restart.map(|(key, steps, times, max)| (argmin_distance(&sigmas, key), steps, times, max));

    let mut list = Vec::new();
    for i in 0..sigmas.len().saturating_sub(1) {
        list.push((sigmas[i], sigmas[i + 1]));
        if let Some((at, r_steps, r_times, r_max)) = restart_at {
            if i + 1 != at {
                continue;
            }
            let min_idx = i + 1;
            let max_idx = argmin_distance(&sigmas, r_max);
            if max_idx < min_idx {
                let mut levels = karras(r_steps, sigmas[min_idx], sigmas[max_idx], 7.0)?;
                levels.pop();
                for _ in 0..r_times {
                    list.extend(levels.windows(2).map(|w| (w[0], w[1])));
                }
            }
        }
    }
    Ok(list)
}

/// Restart sampling over `sigmas`; `s_noise` scales the restart noise (A1111 uses 1).
pub fn restart(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f64],
    s_noise: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let list = restart_steps(sigmas)?;
    let mut last_sigma: Option<f64> = None;
    step::run_pairs(model, x, &list, ctx, |s, mut x| {
        let (old_sigma, new_sigma) = (s.sigma, s.sigma_next);
        if let Some(last) = last_sigma {
            if last < old_sigma {
                let noise = s.noise(&x, last, old_sigma)?;
                x = x + noise * s_noise * (old_sigma * old_sigma - last * last).sqrt();
            }
        }
        let denoised = s.denoise(&x, old_sigma);
        let d = to_d(&x, old_sigma, &denoised);
        // A1111 reports the target level as `sigma` and the start level as `sigma_hat`.
        s.report(&x, &denoised, new_sigma, old_sigma)?;
        last_sigma = Some(new_sigma);
        Ok(heun_step(s, x, d, old_sigma))
    })
}
