//! UniPC (Zhao et al. 2023, unified predictor–corrector) as A1111 runs it
//! (`modules/models/diffusion/uni_pc/uni_pc.py`, multistep, data prediction, no thresholding).
//!
//! Time is continuous, `t ∈ [1/N, 1]` for `N` training steps; the model sees
//! `(t - 1/N) · 1000`, a fractional timestep. The noise schedule interpolates
//! `log alpha_t = ½ log alphas_cumprod` linearly between the grid points `t_n = n / N`, and
//! `lambda_t = log alpha_t - log sigma_t` is the half log-SNR. Each step predicts with the
//! multistep UniP update of the requested order from the stored data predictions, then (except at
//! the last step) evaluates the model at the new point and applies the UniC corrector; lower
//! orders are used for warm-up and, with `lower_order_final`, for the last steps. The `B(h)`
//! variants "bh1" (`B(h) = h`, A1111's default) and "bh2" (`B(h) = e^h - 1`) and the
//! "vary_coeff" update are supported.
//!
//! The time grid is float32 (`torch.linspace` and A1111's `timesteps / 1000`), as upstream; the
//! schedule arithmetic is `f64`.

use tch::Tensor;

use super::special::solve;
use super::{finish, Flow, Sampled, SamplerCtx, TimestepEpsFn, UniPcOptions};
use crate::error::{Error, Result};

/// UniPC's update rule (A1111 option `uni_pc_variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Bh1,
    Bh2,
    VaryCoeff,
}

/// How the time grid is spaced (A1111 option `uni_pc_skip_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipType {
    TimeUniform,
    TimeQuadratic,
    LogSnr,
}

/// The discrete VP noise schedule with piecewise-linear `log alpha_t` (UniPC's
/// `NoiseScheduleVP('discrete')`).
struct NoiseSchedule {
    t_array: Vec<f64>,
    log_alpha: Vec<f64>,
}

/// Piecewise-linear interpolation through `(xp, yp)` (`xp` increasing), extended linearly
/// beyond the ends, choosing the segment as `interpolate_fn` does (a point equal to a knot
/// interpolates on the segment to its left).
fn interpolate(x: f64, xp: &[f64], yp: &[f64]) -> f64 {
    let k = xp.len();
    let below = xp.partition_point(|&v| v < x);
    let j = below.saturating_sub(1).min(k - 2);
    let (start_x, end_x) = (xp[j], xp[j + 1]);
    let (start_y, end_y) = (yp[j], yp[j + 1]);
    start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)
}

impl NoiseSchedule {
    fn new(alphas_cumprod: &[f64]) -> Result<Self> {
        let n = alphas_cumprod.len();
        if n < 2 {
            return Err(Error::Sampling("UniPC needs a schedule of at least 2 steps".into()));
        }
        let grid = Tensor::linspace(0.0, 1.0, n as i64 + 1, (tch::Kind::Float, tch::Device::Cpu));
        let grid = super::schedule::tensor_to_vec(&grid)?;
        Ok(NoiseSchedule {
            t_array: grid[1..].to_vec(),
            log_alpha: alphas_cumprod.iter().map(|a| 0.5 * a.ln()).collect(),
        })
    }

    fn total_n(&self) -> usize {
        self.t_array.len()
    }

    fn log_mean_coeff(&self, t: f64) -> f64 {
        interpolate(t, &self.t_array, &self.log_alpha)
    }

    fn alpha(&self, t: f64) -> f64 {
        self.log_mean_coeff(t).exp()
    }

    fn std(&self, t: f64) -> f64 {
        (1.0 - (2.0 * self.log_mean_coeff(t)).exp()).sqrt()
    }

    fn lambda(&self, t: f64) -> f64 {
        let lmc = self.log_mean_coeff(t);
        lmc - 0.5 * (1.0 - (2.0 * lmc).exp()).ln()
    }

    fn inverse_lambda(&self, lamb: f64) -> f64 {
        // -0.5 * logaddexp(0, -2 lambda)
        let v = -2.0 * lamb;
        let lse = v.max(0.0) + (-(v.abs())).exp().ln_1p();
        let log_alpha = -0.5 * lse;
        let xp: Vec<f64> = self.log_alpha.iter().rev().copied().collect();
        let yp: Vec<f64> = self.t_array.iter().rev().copied().collect();
        interpolate(log_alpha, &xp, &yp)
    }
}

fn linspace_f32(start: f64, end: f64, n: usize) -> Result<Vec<f64>> {
    let t = Tensor::linspace(start, end, n as i64, (tch::Kind::Float, tch::Device::Cpu));
    super::schedule::tensor_to_vec(&t)
}

/// What both update rules start from: the step `h` in lambda, the ratios `r_k` of the earlier
/// steps to it, the scaled differences `D1_k` of the stored predictions, `alpha_t`,
/// `h_phi_1 = expm1(-h)` and the first-order prediction `x_t_`.
struct Setup {
    h: f64,
    rks: Vec<f64>,
    d1s: Vec<Tensor>,
    alpha_t: f64,
    h_phi_1: f64,
    x_t_: Tensor,
}

struct UniPc<'m, 'a, 'c, 'd> {
    model: &'m mut TimestepEpsFn<'a>,
    ctx: &'c mut SamplerCtx<'d>,
    ns: NoiseSchedule,
    variant: Variant,
    index: usize,
}

impl UniPc<'_, '_, '_, '_> {
    /// The data prediction `x0 = (x - sigma_t eps) / alpha_t`, eps from the model at
    /// `(t - 1/N) · 1000` (float32, as A1111's `get_model_input_time`).
    fn data_prediction(&mut self, x: &Tensor, t: f64) -> Tensor {
        let inv_n = (1.0 / self.ns.total_n() as f64) as f32;
        let t_input = ((t as f32 - inv_n) * 1000.0_f32) as f64;
        let t_in = Tensor::full([x.size()[0]], t_input, (x.kind(), x.device()));
        let eps = (self.model)(x, &t_in);
        (x - eps * self.ns.std(t)) / self.ns.alpha(t)
    }

    fn time_steps(&self, skip: SkipType, t_t: f64, t_0: f64, n: usize) -> Result<Vec<f64>> {
        match skip {
            SkipType::TimeUniform => linspace_f32(t_t, t_0, n + 1),
            SkipType::TimeQuadratic => {
                let roots = linspace_f32(t_t.sqrt(), t_0.sqrt(), n + 1)?;
                Ok(roots.into_iter().map(|r| ((r as f32) * (r as f32)) as f64).collect())
            }
            SkipType::LogSnr => {
                let l_t = self.ns.lambda(t_t as f32 as f64) as f32 as f64;
                let l_0 = self.ns.lambda(t_0 as f32 as f64) as f32 as f64;
                let lambdas = linspace_f32(l_t, l_0, n + 1)?;
                Ok(lambdas.into_iter().map(|l| self.ns.inverse_lambda(l)).collect())
            }
        }
    }

    fn update(
        &mut self,
        x: &Tensor,
        models: &[Tensor],
        ts: &[f64],
        t: f64,
        order: usize,
        use_corrector: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let setup = self.setup(x, models, ts, t, order);
        match self.variant {
            Variant::VaryCoeff => self.update_vary(setup, models, t, use_corrector),
            _ => self.update_bh(setup, models, t, order, use_corrector),
        }
    }

    /// What both update rules start from (see [`Setup`]).
    fn setup(&self, x: &Tensor, models: &[Tensor], ts: &[f64], t: f64, order: usize) -> Setup {
        let last = ts.len() - 1;
        let lambda_prev_0 = self.ns.lambda(ts[last]);
        let h = self.ns.lambda(t) - lambda_prev_0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let rk = (self.ns.lambda(ts[last - i]) - lambda_prev_0) / h;
            rks.push(rk);
            d1s.push((&models[last - i] - &models[last]) / rk);
        }
        rks.push(1.0);
        let (sigma_prev_0, sigma_t) = (self.ns.std(ts[last]), self.ns.std(t));
        let alpha_t = self.ns.alpha(t);
        let h_phi_1 = (-h).exp_m1();
        let x_t_ = x * (sigma_t / sigma_prev_0) - &models[last] * (alpha_t * h_phi_1);
        Setup { h, rks, d1s, alpha_t, h_phi_1, x_t_ }
    }

    /// The corrector's model evaluation at the predicted `x_t` and its difference `D1_t` from
    /// the newest stored prediction.
    fn corrector_input(&mut self, x_t: &Tensor, models: &[Tensor], t: f64) -> (Tensor, Tensor) {
        let model_t = self.data_prediction(x_t, t);
        let d1_t = &model_t - &models[models.len() - 1];
        (model_t, d1_t)
    }

    fn weighted_sum(weights: &[f64], tensors: &[Tensor]) -> Option<Tensor> {
        tensors.iter().zip(weights).map(|(t, w)| t * *w).reduce(|a, b| a + b)
    }

    fn update_bh(
        &mut self,
        setup: Setup,
        models: &[Tensor],
        t: f64,
        order: usize,
        use_corrector: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Setup { h, rks, d1s, alpha_t, h_phi_1, x_t_ } = setup;
        let hh = -h;
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = if self.variant == Variant::Bh2 { hh.exp_m1() } else { hh };
        let mut factorial_i = 1.0;
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect::<Vec<f64>>());
            b.push(h_phi_k * factorial_i / b_h);
            factorial_i *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial_i;
        }
        let singular = || Error::Sampling("UniPC coefficient system is singular".into());

        let mut x_t = x_t_.shallow_clone();
        if !d1s.is_empty() {
            let rhos_p = if order == 2 {
                vec![0.5]
            } else {
                let sub: Vec<Vec<f64>> = r[..order - 1].iter().map(|row| row[..order - 1].to_vec()).collect();
                solve(&sub, &b[..order - 1]).ok_or_else(singular)?
            };
            if let Some(pred_res) = Self::weighted_sum(&rhos_p, &d1s) {
                x_t = &x_t_ - pred_res * (alpha_t * b_h);
            }
        }
        if !use_corrector {
            return Ok((x_t, None));
        }
        let rhos_c = if order == 1 { vec![0.5] } else { solve(&r, &b).ok_or_else(singular)? };
        let (model_t, d1_t) = self.corrector_input(&x_t, models, t);
        let mut corr = &d1_t * rhos_c[rhos_c.len() - 1];
        if let Some(corr_res) = Self::weighted_sum(&rhos_c[..rhos_c.len() - 1], &d1s) {
            corr = corr_res + corr;
        }
        let x_t = x_t_ - corr * (alpha_t * b_h);
        Ok((x_t, Some(model_t)))
    }

    fn update_vary(
        &mut self,
        setup: Setup,
        models: &[Tensor],
        t: f64,
        use_corrector: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Setup { h, rks, d1s, alpha_t, h_phi_1, x_t_ } = setup;
        let k_len = rks.len();
        // C[i][k] = rks[i]^k / (k + 1)!
        let mut c = vec![vec![0.0; k_len]; k_len];
        let mut col: Vec<f64> = vec![1.0; k_len];
        for k in 1..=k_len {
            for i in 0..k_len {
                c[i][k - 1] = col[i];
            }
            col = col.iter().zip(&rks).map(|(c, r)| c * r / (k + 1) as f64).collect();
        }
        let singular = || Error::Sampling("UniPC coefficient matrix is singular".into());
        let inverse = |m: &[Vec<f64>]| -> Result<Vec<Vec<f64>>> {
            let n = m.len();
            let mut cols = Vec::with_capacity(n);
            for j in 0..n {
                let e: Vec<f64> = (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect();
                cols.push(solve(m, &e).ok_or_else(singular)?);
            }
            Ok((0..n).map(|i| (0..n).map(|j| cols[j][i]).collect()).collect())
        };

        let hh = -h;
        let mut h_phi_ks = Vec::with_capacity(k_len + 1);
        let mut factorial_k = 1.0;
        let mut h_phi_k = h_phi_1;
        for k in 1..=k_len + 1 {
            h_phi_ks.push(h_phi_k);
            h_phi_k = h_phi_k / hh - 1.0 / factorial_k;
            factorial_k *= (k + 1) as f64;
        }

        let mut x_t = x_t_.shallow_clone();
        if !d1s.is_empty() {
            let sub: Vec<Vec<f64>> = c[..k_len - 1].iter().map(|row| row[..k_len - 1].to_vec()).collect();
            let a_p = inverse(&sub)?;
            for k in 0..k_len - 1 {
                if let Some(res) = Self::weighted_sum(&a_p[k], &d1s) {
                    x_t = x_t - res * (alpha_t * h_phi_ks[k + 1]);
                }
            }
        }
        if !use_corrector {
            return Ok((x_t, None));
        }
        let a_c = inverse(&c)?;
        let (model_t, d1_t) = self.corrector_input(&x_t, models, t);
        let mut x_t = x_t_;
        for k in 0..k_len - 1 {
            if let Some(res) = Self::weighted_sum(&a_c[k][..k_len - 1], &d1s) {
                x_t = x_t - res * (alpha_t * h_phi_ks[k + 1]);
            }
        }
        // Upstream reuses the loop variable here: the last row visited, or row 0.
        let k = k_len.saturating_sub(2);
        let x_t = x_t - d1_t * (a_c[k][k_len - 1] * alpha_t * h_phi_ks[k_len]);
        Ok((x_t, Some(model_t)))
    }

    fn report(&mut self, x: &Tensor, model_x: &Tensor) -> Flow<()> {
        let i = self.index;
        self.index += 1;
        self.ctx.report(i, x, model_x, 0.0, 0.0)
    }
}

/// UniPC over `steps` steps (A1111 passes the number of timesteps of its timestep schedule).
/// For img2img, `last_timestep` (the largest timestep of the truncated schedule) sets the start
/// time `last_timestep / 1000 + 1 / 1000`.
#[allow(clippy::too_many_arguments)]
pub fn unipc(
    model: &mut TimestepEpsFn<'_>,
    x: Tensor,
    steps: usize,
    img2img: bool,
    last_timestep: Option<i64>,
    alphas_cumprod: &[f64],
    opts: &UniPcOptions,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    let ns = NoiseSchedule::new(alphas_cumprod)?;
    if opts.order == 0 || steps < opts.order {
        return Err(Error::Sampling(format!(
            "UniPC order must be < sampling steps (order {}, steps {steps})",
            opts.order
        )));
    }
    let t_0 = 1.0 / ns.total_n() as f64;
    let t_t = match (img2img, last_timestep) {
        (true, Some(t)) => ((t as f32 / 1000.0_f32) + (1.0_f64 / 1000.0) as f32) as f64,
        (true, None) => return Err(Error::Sampling("UniPC img2img needs timesteps".into())),
        (false, _) => 1.0,
    };
    let mut u = UniPc { model, ctx, ns, variant: opts.variant, index: 0 };
    let grid = u.time_steps(opts.skip_type, t_t, t_0, steps)?;
    finish(unipc_flow(&mut u, x, &grid, steps, opts))
}

fn unipc_flow(
    u: &mut UniPc<'_, '_, '_, '_>,
    mut x: Tensor,
    grid: &[f64],
    steps: usize,
    opts: &UniPcOptions,
) -> Flow<Tensor> {
    let order = opts.order;
    let mut models = vec![u.data_prediction(&x, grid[0])];
    let mut ts = vec![grid[0]];
    for (init_order, &t) in grid.iter().enumerate().take(order).skip(1) {
        let (nx, model_x) = u.update(&x, &models, &ts, t, init_order, true)?;
        x = nx;
        let model_x = model_x.unwrap_or_else(|| u.data_prediction(&x, t));
        u.report(&x, &model_x)?;
        models.push(model_x);
        ts.push(t);
    }
    for (step, &t) in grid.iter().enumerate().take(steps + 1).skip(order) {
        let step_order = if opts.lower_order_final { order.min(steps + 1 - step) } else { order };
        let use_corrector = step != steps;
        let (nx, model_x) = u.update(&x, &models, &ts, t, step_order, use_corrector)?;
        x = nx;
        // The last step has no corrector and hence no model value; the callback gets the sample.
        u.report(&x, model_x.as_ref().unwrap_or(&x))?;
        drop(models.remove(0));
        ts.remove(0);
        ts.push(t);
        if step < steps {
            models.push(model_x.unwrap_or_else(|| u.data_prediction(&x, t)));
        } else {
            // Keep the lists aligned; the value is never read again.
            models.push(x.shallow_clone());
        }
    }
    Ok(x)
}
