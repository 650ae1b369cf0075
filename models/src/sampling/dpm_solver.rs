//! DPM fast and DPM adaptive (k-diffusion `sample_dpm_fast`, `sample_dpm_adaptive`): the original
//! DPM-Solver of Lu et al. 2022 in `t = -log(sigma)` with first/second/third-order single steps
//! on the noise prediction `eps = (x - D(x, sigma)) / sigma`.
//!
//! k-diffusion builds the time grid from `torch.tensor(sigma_min/max)`, i.e. float32 0-dim tensors,
//! so every scalar of these two solvers (times, step sizes, `expm1` factors) is float32 whatever
//! the latent's dtype. The scalar arithmetic here is done in `f32` in the same order (libm's
//! `expf`/`logf`/`expm1f` stand in for libtorch's 0-dim kernels, which may differ in the last
//! bit), and each scalar is widened only where it multiplies a tensor. On the goldens this agrees
//! with k-diffusion to ~1e-7 relative; the other samplers, whose scalars are `f64` upstream too
//! when the sigmas are, agree to ~1e-15.

use tch::Tensor;

use super::{finish, sigma_batch, DenoiseFn, Flow, Sampled, SamplerCtx};
use crate::error::{Error, Result};

fn t_of(sigma: f32) -> f32 {
    -sigma.ln()
}

fn sigma_of(t: f32) -> f32 {
    (-t).exp()
}

/// `get_ancestral_step` on float32 0-dim tensors.
fn ancestral_step_f32(sigma_from: f32, sigma_to: f32, eta: f64) -> (f32, f32) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let inner =
        sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from);
    let up = (eta as f32) * inner.sqrt();
    let sigma_up = if up < sigma_to { up } else { sigma_to };
    let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// Where an ancestral step from `t` towards `t_next` lands deterministically, and the noise
/// `sigma_up` it adds back there: `(t_next, 0)` when `eta` is 0.
fn ancestral_target(t: f32, t_next: f32, t_end: f32, eta: f64) -> (f32, f32) {
    if eta == 0.0 {
        return (t_next, 0.0);
    }
    let (sd, _) = ancestral_step_f32(sigma_of(t), sigma_of(t_next), eta);
    let t_next_ = t_end.min(t_of(sd));
    let (st, st_) = (sigma_of(t_next), sigma_of(t_next_));
    (t_next_, (st * st - st_ * st_).sqrt())
}

/// The model evaluations of one solver step, cached by stage like k-diffusion's `eps_cache`.
struct Solver<'m, 'a, 'c, 'd> {
    model: &'m mut DenoiseFn<'a>,
    ctx: &'c mut SamplerCtx<'d>,
}

impl Solver<'_, '_, '_, '_> {
    fn eps(&mut self, x: &Tensor, t: f32) -> Tensor {
        let sigma = sigma_of(t);
        let denoised = (self.model)(x, &sigma_batch(x, sigma as f64));
        (x - denoised) / (sigma as f64)
    }

    /// `eps` at the intermediate time `t + r1 h`, reached by a first-order step, unless the
    /// caller already has it (k-diffusion's `eps_cache`).
    fn eps_r1(
        &mut self,
        x: &Tensor,
        t: f32,
        h: f32,
        r1: f32,
        eps: &Tensor,
        cached: Option<&Tensor>,
    ) -> Tensor {
        if let Some(e) = cached {
            return e.shallow_clone();
        }
        let s1 = t + r1 * h;
        let u1 = x - eps * ((sigma_of(s1) * (r1 * h).exp_m1()) as f64);
        self.eps(&u1, s1)
    }

    /// `x + z · (sigma_up · s_noise)` with `z` shaped like `like`, drawn for the step between
    /// the times `ts`; the factor is float32, as upstream's.
    fn add_noise(&mut self, x: Tensor, like: &Tensor, ts: (f32, f32), su: f32, s_noise: f64) -> Flow<Tensor> {
        let noise = self.ctx.noise(like, sigma_of(ts.0) as f64, sigma_of(ts.1) as f64)?;
        Ok(x + noise * ((su * s_noise as f32) as f64))
    }

    fn step_1(&mut self, x: &Tensor, t: f32, t_next: f32, eps: &Tensor) -> Tensor {
        let h = t_next - t;
        x - eps * ((sigma_of(t_next) * h.exp_m1()) as f64)
    }

    /// Second-order step; returns the result and `eps` at the intermediate time.
    fn step_2(
        &mut self,
        x: &Tensor,
        t: f32,
        t_next: f32,
        r1: f64,
        eps: &Tensor,
        eps_r1: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        let h = t_next - t;
        let eps_r1 = self.eps_r1(x, t, h, r1 as f32, eps, eps_r1);
        let c1 = sigma_of(t_next) * h.exp_m1();
        let c2 = sigma_of(t_next) / ((2.0 * r1) as f32) * h.exp_m1();
        let x_2 = x - eps * (c1 as f64) - (&eps_r1 - eps) * (c2 as f64);
        (x_2, eps_r1)
    }

    /// Third-order step (r1 = 1/3, r2 = 2/3), reusing `eps_r1` when the caller has it.
    fn step_3(&mut self, x: &Tensor, t: f32, t_next: f32, eps: &Tensor, eps_r1: Option<&Tensor>) -> Tensor {
        let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
        let (r1f, r2f) = (r1 as f32, r2 as f32);
        let h = t_next - t;
        let s2 = t + r2f * h;
        let eps_r1 = self.eps_r1(x, t, h, r1f, eps, eps_r1);
        let a = sigma_of(s2) * (r2f * h).exp_m1();
        let b = sigma_of(s2) * ((r2 / r1) as f32) * ((r2f * h).exp_m1() / (r2f * h) - 1.0);
        let u2 = x - eps * (a as f64) - (&eps_r1 - eps) * (b as f64);
        let eps_r2 = self.eps(&u2, s2);
        let c1 = sigma_of(t_next) * h.exp_m1();
        let c2 = sigma_of(t_next) / r2f * (h.exp_m1() / h - 1.0);
        x - eps * (c1 as f64) - (eps_r2 - eps) * (c2 as f64)
    }
}

fn check_range(sigma_min: f64, sigma_max: f64) -> Result<()> {
    if sigma_min <= 0.0 || sigma_max <= 0.0 {
        return Err(Error::Sampling("sigma_min and sigma_max must not be 0".into()));
    }
    Ok(())
}

/// DPM-Solver-Fast: `n` model evaluations spread over `m = n / 3 + 1` steps of orders 3 (and a
/// final 2 and/or 1), evenly spaced in `t`. Draws one noise tensor per step, even at `eta = 0`.
#[allow(clippy::too_many_arguments)]
pub fn dpm_fast(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigma_min: f64,
    sigma_max: f64,
    n: usize,
    eta: f64,
    s_noise: f64,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    check_range(sigma_min, sigma_max)?;
    if n == 0 {
        return Err(Error::Sampling("DPM fast needs at least one model evaluation".into()));
    }
    let mut solver = Solver { model, ctx };
    finish(solver.fast(x, sigma_min as f32, sigma_max as f32, n, eta, s_noise))
}

impl Solver<'_, '_, '_, '_> {
    /// The loop of [`dpm_fast`] with `nfe` model evaluations.
    fn fast(
        &mut self,
        mut x: Tensor,
        sigma_min: f32,
        sigma_max: f32,
        nfe: usize,
        eta: f64,
        s_noise: f64,
    ) -> Flow<Tensor> {
        let (t_start, t_end) = (t_of(sigma_max), t_of(sigma_min));
        if t_end <= t_start && eta != 0.0 {
            return Err(Error::Sampling("eta must be 0 for reverse sampling".into()).into());
        }
        let m = nfe / 3 + 1;
        let ts = Tensor::linspace(
            t_start as f64,
            t_end as f64,
            m as i64 + 1,
            (tch::Kind::Float, tch::Device::Cpu),
        );
        let ts: Vec<f32> = Vec::<f32>::try_from(&ts)?;
        let orders: Vec<usize> = if nfe.is_multiple_of(3) {
            let mut o = vec![3; m - 2];
            o.extend([2, 1]);
            o
        } else {
            let mut o = vec![3; m - 1];
            o.push(nfe % 3);
            o
        };
        for (i, &order) in orders.iter().enumerate() {
            let (t, t_next) = (ts[i], ts[i + 1]);
            let (t_next_, su) = ancestral_target(t, t_next, t_end, eta);
            let eps = self.eps(&x, t);
            let denoised = &x - &eps * (sigma_of(t) as f64);
            self.ctx.report(i, &x, &denoised, sigma_of(t) as f64, sigma_of(t) as f64)?;
            x = match order {
                1 => self.step_1(&x, t, t_next_, &eps),
                2 => self.step_2(&x, t, t_next_, 0.5, &eps, None).0,
                _ => self.step_3(&x, t, t_next_, &eps, None),
            };
            x = self.add_noise(x.shallow_clone(), &x, (t, t_next), su, s_noise)?;
        }
        Ok(x)
    }
}

/// Settings of DPM adaptive (k-diffusion defaults; A1111 passes only `eta`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveOptions {
    pub order: usize,
    pub rtol: f64,
    pub atol: f64,
    pub h_init: f64,
    pub pcoeff: f64,
    pub icoeff: f64,
    pub dcoeff: f64,
    pub accept_safety: f64,
    pub eta: f64,
    pub s_noise: f64,
}

impl Default for AdaptiveOptions {
    fn default() -> Self {
        AdaptiveOptions {
            order: 3,
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.05,
            pcoeff: 0.0,
            icoeff: 1.0,
            dcoeff: 0.0,
            accept_safety: 0.81,
            eta: 0.0,
            s_noise: 1.0,
        }
    }
}

/// k-diffusion's PID step-size controller (Python floats, i.e. `f64`).
struct Pid {
    h: f64,
    b1: f64,
    b2: f64,
    b3: f64,
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl Pid {
    fn propose(&mut self, error: f64) -> bool {
        let inv_error = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv_error; 3]);
        errs[0] = inv_error;
        let factor = errs[0].powf(self.b1) * errs[1].powf(self.b2) * errs[2].powf(self.b3);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// DPM-Solver-12/23 with adaptive step size from `sigma_max` down to `sigma_min`. The callback
/// sees every attempt, accepted or not (its `step` counts attempts, as upstream).
pub fn dpm_adaptive(
    model: &mut DenoiseFn<'_>,
    x: Tensor,
    sigma_min: f64,
    sigma_max: f64,
    opts: &AdaptiveOptions,
    ctx: &mut SamplerCtx<'_>,
) -> Result<Sampled> {
    check_range(sigma_min, sigma_max)?;
    if !matches!(opts.order, 2 | 3) {
        return Err(Error::Sampling("DPM adaptive order should be 2 or 3".into()));
    }
    let mut solver = Solver { model, ctx };
    finish(solver.adaptive(x, sigma_min as f32, sigma_max as f32, opts))
}

impl Solver<'_, '_, '_, '_> {
    /// The loop of [`dpm_adaptive`].
    fn adaptive(
        &mut self,
        mut x: Tensor,
        sigma_min: f32,
        sigma_max: f32,
        o: &AdaptiveOptions,
    ) -> Flow<Tensor> {
        let (t_start, t_end) = (t_of(sigma_max), t_of(sigma_min));
        let forward = t_end > t_start;
        if !forward && o.eta != 0.0 {
            return Err(Error::Sampling("eta must be 0 for reverse sampling".into()).into());
        }
        let h_init = o.h_init.abs() * if forward { 1.0 } else { -1.0 };
        // `torch.tensor(atol)` / `torch.tensor(rtol)`: float32 constants.
        let atol = o.atol as f32 as f64;
        let rtol = o.rtol as f32 as f64;
        let order_for_pid = if o.eta != 0.0 { 1.5 } else { o.order as f64 };
        let mut pid = Pid {
            h: h_init,
            b1: (o.pcoeff + o.icoeff + o.dcoeff) / order_for_pid,
            b2: -(o.pcoeff + 2.0 * o.dcoeff) / order_for_pid,
            b3: o.dcoeff / order_for_pid,
            accept_safety: o.accept_safety,
            errs: None,
        };
        let numel = x.numel() as f64;
        let mut s = t_start;
        let mut x_prev = x.shallow_clone();
        let mut attempts = 0usize;
        let limit = 1e-5_f64 as f32;
        while if forward { s < t_end - limit } else { s > t_end + limit } {
            let t = if forward { t_end.min(s + pid.h as f32) } else { t_end.max(s + pid.h as f32) };
            let (t_, su) = ancestral_target(s, t, t_end, o.eta);
            let eps = self.eps(&x, s);
            let denoised = &x - &eps * (sigma_of(s) as f64);
            let (x_low, x_high) = if o.order == 2 {
                let low = self.step_1(&x, s, t_, &eps);
                let (high, _) = self.step_2(&x, s, t_, 0.5, &eps, None);
                (low, high)
            } else {
                let (low, eps_r1) = self.step_2(&x, s, t_, 1.0 / 3.0, &eps, None);
                let high = self.step_3(&x, s, t_, &eps, Some(&eps_r1));
                (low, high)
            };
            let delta = (x_low.abs().maximum(&x_prev.abs()) * rtol).clamp_min(atol);
            let error = ((&x_low - &x_high) / delta).norm().double_value(&[]) / numel.sqrt();
            if pid.propose(error) {
                x_prev = x_low;
                x = self.add_noise(x_high, &x, (s, t), su, o.s_noise)?;
                s = t;
            }
            attempts += 1;
            self.ctx.report(attempts - 1, &x, &denoised, sigma_of(s) as f64, sigma_of(s) as f64)?;
        }
        Ok(x)
    }
}
