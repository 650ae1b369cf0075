//! Noise schedules: the SD1 discrete schedule, conversions between noise level and timestep, and
//! every A1111 1.10 scheduler.
//!
//! A1111 builds its sigma arrays with float32 torch ops on the CPU (`k_diffusion.external
//! .DiscreteSchedule` over `alphas_cumprod` stored as float32, `k_diffusion.sampling.get_sigmas_*`,
//! `modules/sd_schedulers.py`). The functions here replay the same tensor operations through
//! libtorch in the same dtypes, element by element where A1111 loops over 0-dim tensors, so the
//! arrays come out bit-identical rather than merely close; values are handed out as `f64`.
//! The NumPy/SciPy parts (Align Your Steps, Beta) are computed in `f64` and rounded to `f32` as
//! `torch.FloatTensor` does.
//!
//! Every scheduler returns `n + 1` values: `n` noise levels followed by a final 0, except KL Optimal,
//! which in A1111 1.10 ends at `sigma_min` instead of 0 (its `kl_optimal` returns `tan` of `n + 1`
//! angles and nothing appends a zero); that is reproduced.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// `linear_start` of the SD1 (and SD2) LDM configs.
pub const SD1_LINEAR_START: f64 = 0.00085;
/// `linear_end` of the SD1 (and SD2) LDM configs.
pub const SD1_LINEAR_END: f64 = 0.012;
/// Number of discrete training timesteps of SD1.
pub const SD1_TIMESTEPS: usize = 1000;

/// Align Your Steps noise levels for SD1.5 (NVIDIA's published 10-step schedule).
pub const AYS_SD15: [f64; 11] =
    [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029];
/// Align Your Steps noise levels for SDXL.
pub const AYS_SDXL: [f64; 11] =
    [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029];

/// LCM's number of original (distillation) timesteps, fixed in A1111's `LCMCompVisDenoiser`.
pub const LCM_ORIGINAL_TIMESTEPS: usize = 50;

const CPU: Device = Device::Cpu;

/// `alphas_cumprod` of SD1 as the LDM code builds it: the "scaled linear" betas
/// `linspace(sqrt(0.00085), sqrt(0.012), 1000, float64) ** 2`, their running product of `1 - beta`
/// in float64, stored as float32.
pub fn sd1_alphas_cumprod() -> Vec<f32> {
    scaled_linear_alphas_cumprod(SD1_LINEAR_START, SD1_LINEAR_END, SD1_TIMESTEPS)
}

/// `alphas_cumprod` of a "scaled linear" beta schedule (see [`sd1_alphas_cumprod`]).
pub fn scaled_linear_alphas_cumprod(linear_start: f64, linear_end: f64, timesteps: usize) -> Vec<f32> {
    let roots =
        Tensor::linspace(linear_start.sqrt(), linear_end.sqrt(), timesteps as i64, (Kind::Double, CPU));
    let roots = Vec::<f64>::try_from(&roots).expect("a CPU float64 tensor converts to Vec<f64>");
    let mut acc = 1.0_f64;
    roots
        .iter()
        .map(|r| {
            acc *= 1.0 - r * r;
            acc as f32
        })
        .collect()
}

/// Reads a CPU tensor of any float dtype into `f64`s.
pub(crate) fn tensor_to_vec(t: &Tensor) -> Result<Vec<f64>> {
    let t = t.to_device(CPU).to_kind(Kind::Double).contiguous().reshape([-1]);
    Ok(Vec::<f64>::try_from(&t)?)
}

/// How timesteps map to noise levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// k-diffusion `DiscreteSchedule` without quantization: `t` interpolates `log(sigma)` linearly.
    Interpolated,
    /// A1111's `LCMCompVisDenoiser`: every `skip`-th training timestep, quantized.
    Lcm { skip: i64 },
}

/// A table of discrete noise levels and the conversions between noise level `sigma` and
/// (fractional) timestep `t`, as k-diffusion's `DiscreteSchedule`.
#[derive(Debug)]
pub struct DiscreteSchedule {
    alphas_cumprod: Vec<f32>,
    /// Increasing noise levels, float32 on the CPU: `sqrt((1 - a) / a)` for each `alphas_cumprod` `a`.
    sigmas: Tensor,
    log_sigmas: Tensor,
    mapping: Mapping,
}

impl Clone for DiscreteSchedule {
    fn clone(&self) -> Self {
        // The tensors are never modified in place, so sharing their storage is safe.
        DiscreteSchedule {
            alphas_cumprod: self.alphas_cumprod.clone(),
            sigmas: self.sigmas.shallow_clone(),
            log_sigmas: self.log_sigmas.shallow_clone(),
            mapping: self.mapping,
        }
    }
}

fn check_alphas(alphas_cumprod: &[f32]) -> Result<()> {
    if alphas_cumprod.len() < 2 {
        return Err(Error::Sampling(format!(
            "a discrete schedule needs at least 2 noise levels, got {}",
            alphas_cumprod.len()
        )));
    }
    if let Some(bad) = alphas_cumprod.iter().find(|a| !(**a > 0.0 && **a < 1.0)) {
        return Err(Error::Sampling(format!("alphas_cumprod value {bad} is outside (0, 1)")));
    }
    Ok(())
}

fn sigmas_from_alphas(alphas: &[f32]) -> Tensor {
    let a = Tensor::from_slice(alphas);
    let one_minus: Tensor = 1.0 - &a;
    (one_minus / &a).pow_tensor_scalar(0.5)
}

impl DiscreteSchedule {
    /// The schedule of a model trained on `alphas_cumprod` (k-diffusion's `CompVisDenoiser`).
    pub fn from_alphas_cumprod(alphas_cumprod: &[f32]) -> Result<Self> {
        check_alphas(alphas_cumprod)?;
        let sigmas = sigmas_from_alphas(alphas_cumprod);
        let log_sigmas = sigmas.log();
        Ok(DiscreteSchedule {
            alphas_cumprod: alphas_cumprod.to_vec(),
            sigmas,
            log_sigmas,
            mapping: Mapping::Interpolated,
        })
    }

    /// The SD1 schedule ([`sd1_alphas_cumprod`]).
    pub fn sd1() -> Self {
        Self::from_alphas_cumprod(&sd1_alphas_cumprod()).expect("the SD1 schedule is valid")
    }

    /// The schedule of A1111's `LCMCompVisDenoiser`: 50 levels taken at every 20th training
    /// timestep counted back from the last (`alphas_cumprod[999 - 20 k]`), with quantized
    /// timesteps `20 i + 19`.
    pub fn lcm(alphas_cumprod: &[f32]) -> Result<Self> {
        check_alphas(alphas_cumprod)?;
        let total = alphas_cumprod.len();
        let skip = total / LCM_ORIGINAL_TIMESTEPS;
        if skip == 0 {
            return Err(Error::Sampling(format!("LCM needs at least {LCM_ORIGINAL_TIMESTEPS} timesteps")));
        }
        let mut valid = vec![0.0_f32; LCM_ORIGINAL_TIMESTEPS];
        for x in 0..LCM_ORIGINAL_TIMESTEPS {
            valid[LCM_ORIGINAL_TIMESTEPS - 1 - x] = alphas_cumprod[total - 1 - x * skip];
        }
        let sigmas = sigmas_from_alphas(&valid);
        let log_sigmas = sigmas.log();
        Ok(DiscreteSchedule {
            alphas_cumprod: alphas_cumprod.to_vec(),
            sigmas,
            log_sigmas,
            mapping: Mapping::Lcm { skip: skip as i64 },
        })
    }

    /// Whether this is the LCM schedule.
    pub fn is_lcm(&self) -> bool {
        matches!(self.mapping, Mapping::Lcm { .. })
    }

    /// The model's full `alphas_cumprod` (all training timesteps, also for the LCM schedule).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The discrete noise levels, increasing.
    pub fn sigmas(&self) -> Vec<f64> {
        tensor_to_vec(&self.sigmas).expect("the schedule's own tensor converts")
    }

    /// Number of discrete noise levels.
    pub fn len(&self) -> usize {
        self.sigmas.size()[0] as usize
    }

    /// Always false: a schedule has at least two levels.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The smallest noise level (`model_wrap.sigmas[0]` in A1111).
    pub fn sigma_min(&self) -> f64 {
        self.sigmas.double_value(&[0])
    }

    /// The largest noise level (`model_wrap.sigmas[-1]` in A1111).
    pub fn sigma_max(&self) -> f64 {
        self.sigmas.double_value(&[-1])
    }

    /// Timestep of each noise level in `sigma` (any shape, any float dtype, any device), as
    /// k-diffusion's `sigma_to_t`: linear interpolation in `log(sigma)` between the two nearest
    /// levels, clamped to `[0, len - 1]` (fractional). The LCM schedule quantizes instead.
    pub fn sigma_to_t(&self, sigma: &Tensor) -> Tensor {
        let shape = sigma.size();
        let flat = sigma.reshape([-1]);
        let log_sigmas = self.log_sigmas.to_device(sigma.device());
        let log_sigma = flat.log();
        let dists = &log_sigma - log_sigmas.unsqueeze(1);
        let t = match self.mapping {
            Mapping::Lcm { skip } => dists.abs().argmin(0, false) * skip + (skip - 1),
            Mapping::Interpolated => {
                let last = log_sigmas.size()[0] - 2;
                let low_idx = dists.ge(0).cumsum(0, Kind::Int64).argmax(0, false).clamp_max(last);
                let high_idx = &low_idx + 1;
                let low = log_sigmas.index_select(0, &low_idx);
                let high = log_sigmas.index_select(0, &high_idx);
                let w = ((&low - &log_sigma) / (&low - &high)).clamp(0.0, 1.0);
                (1.0 - &w) * &low_idx + &w * &high_idx
            }
        };
        t.reshape(shape)
    }

    /// Noise level at each (fractional) timestep in `t`, as k-diffusion's `t_to_sigma`: linear
    /// interpolation of `log(sigma)` between the neighbouring integer timesteps, in float32.
    pub fn t_to_sigma(&self, t: &Tensor) -> Tensor {
        let t = match self.mapping {
            Mapping::Interpolated => t.to_kind(Kind::Float),
            Mapping::Lcm { skip } => {
                let max = (self.len() - 1) as f64;
                ((t - (skip - 1)) / skip).to_kind(Kind::Float).clamp(0.0, max)
            }
        };
        self.interpolate_log_sigma(&t)
    }

    fn interpolate_log_sigma(&self, t: &Tensor) -> Tensor {
        let shape = t.size();
        let flat = t.reshape([-1]);
        let log_sigmas = self.log_sigmas.to_device(t.device());
        let low_idx = flat.floor().to_kind(Kind::Int64);
        let high_idx = flat.ceil().to_kind(Kind::Int64);
        let w = flat.frac();
        let one_minus_w: Tensor = 1.0 - &w;
        let log_sigma =
            one_minus_w * log_sigmas.index_select(0, &low_idx) + &w * log_sigmas.index_select(0, &high_idx);
        log_sigma.exp().reshape(shape)
    }

    fn sigma_to_t_scalar(&self, sigma: f64) -> Tensor {
        self.sigma_to_t(&Tensor::from(sigma as f32))
    }

    /// `n` noise levels evenly spaced in timestep from the largest to the smallest, plus 0
    /// (k-diffusion `get_sigmas(n)`; A1111's "Uniform" and, for samplers without a default
    /// scheduler, "Automatic").
    pub fn get_sigmas(&self, n: usize) -> Result<Vec<f64>> {
        check_steps(n)?;
        let t = match self.mapping {
            Mapping::Interpolated => {
                Tensor::linspace((self.len() - 1) as f64, 0.0, n as i64, (Kind::Float, CPU))
            }
            Mapping::Lcm { .. } => {
                let sigma_max = self.sigmas.get(-1);
                let sigma_min = self.sigmas.get(0);
                let start = self.sigma_to_t(&sigma_max).double_value(&[]);
                let end = self.sigma_to_t(&sigma_min).double_value(&[]);
                Tensor::linspace(start, end, n as i64, (Kind::Float, CPU))
            }
        };
        let mut out = tensor_to_vec(&self.t_to_sigma(&t))?;
        out.push(0.0);
        Ok(out)
    }
}

fn check_steps(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Sampling("a schedule needs at least one step".into()));
    }
    Ok(())
}

fn f32_round(v: f64) -> f64 {
    v as f32 as f64
}

/// k-diffusion `get_sigmas_karras`: `(max^(1/rho) + ramp (min^(1/rho) - max^(1/rho)))^rho` over a
/// float32 `ramp = linspace(0, 1, n)`, plus 0.
pub fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    check_steps(n)?;
    let ramp = Tensor::linspace(0.0, 1.0, n as i64, (Kind::Float, CPU));
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let sigmas = (ramp * (min_inv_rho - max_inv_rho) + max_inv_rho).pow_tensor_scalar(rho);
    let mut out = tensor_to_vec(&sigmas)?;
    out.push(0.0);
    Ok(out)
}

/// k-diffusion `get_sigmas_exponential`: evenly spaced in `log(sigma)`, plus 0.
pub fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f64>> {
    check_steps(n)?;
    let sigmas = Tensor::linspace(sigma_max.ln(), sigma_min.ln(), n as i64, (Kind::Float, CPU)).exp();
    let mut out = tensor_to_vec(&sigmas)?;
    out.push(0.0);
    Ok(out)
}

/// k-diffusion `get_sigmas_polyexponential`: `log(sigma)` a polynomial of degree `rho` in the
/// step, plus 0 (A1111 default `rho` = 1, which equals [`exponential`] up to rounding).
pub fn polyexponential(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    check_steps(n)?;
    let ramp = Tensor::linspace(1.0, 0.0, n as i64, (Kind::Float, CPU)).pow_tensor_scalar(rho);
    let sigmas = (ramp * (sigma_max.ln() - sigma_min.ln()) + sigma_min.ln()).exp();
    let mut out = tensor_to_vec(&sigmas)?;
    out.push(0.0);
    Ok(out)
}

/// A1111 `sgm_uniform`: `n + 1` timesteps evenly spaced from `t(sigma_max)` to `t(sigma_min)`,
/// the last dropped, each converted back one at a time; plus 0.
pub fn sgm_uniform(
    schedule: &DiscreteSchedule,
    n: usize,
    sigma_min: f64,
    sigma_max: f64,
) -> Result<Vec<f64>> {
    timestep_spaced(schedule, n, sigma_min, sigma_max, true)
}

/// A1111 `normal_scheduler`: `n` timesteps evenly spaced from `t(sigma_max)` to `t(sigma_min)`
/// inclusive, each converted back one at a time; plus 0.
pub fn normal(schedule: &DiscreteSchedule, n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f64>> {
    timestep_spaced(schedule, n, sigma_min, sigma_max, false)
}

fn timestep_spaced(
    schedule: &DiscreteSchedule,
    n: usize,
    sigma_min: f64,
    sigma_max: f64,
    sgm: bool,
) -> Result<Vec<f64>> {
    check_steps(n)?;
    let start = schedule.sigma_to_t_scalar(sigma_max).double_value(&[]);
    let end = schedule.sigma_to_t_scalar(sigma_min).double_value(&[]);
    let count = if sgm { n + 1 } else { n };
    let ts = Tensor::linspace(start, end, count as i64, (Kind::Float, CPU));
    let mut out = Vec::with_capacity(n + 1);
    for i in 0..n {
        // A1111 converts each 0-dim timestep separately; doing the same keeps libtorch on the
        // same (scalar) code path and the results bit-identical.
        out.push(f32_round(schedule.t_to_sigma(&ts.get(i as i64)).double_value(&[])));
    }
    out.push(0.0);
    Ok(out)
}

/// A1111 `kl_optimal`: `tan` of angles evenly spaced from `atan(sigma_max)` to `atan(sigma_min)`,
/// `n + 1` values, the last being `sigma_min` (no trailing 0 in A1111 1.10).
pub fn kl_optimal(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f64>> {
    check_steps(n)?;
    let alpha_min = Tensor::from(sigma_min as f32).arctan();
    let alpha_max = Tensor::from(sigma_max as f32).arctan();
    let idx = Tensor::arange(n as i64 + 1, (Kind::Int64, CPU));
    let frac = idx.true_divide_scalar(n as i64);
    let one_minus: Tensor = 1.0 - &frac;
    let sigmas = (&frac * &alpha_min + one_minus * &alpha_max).tan();
    tensor_to_vec(&sigmas)
}

/// NumPy's `linspace(start, stop, num)` in float64: `i * step + start`, the last set to `stop`.
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut out: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    out[num - 1] = stop;
    out
}

/// NumPy's `interp` for increasing `xp`, with `x` inside `[xp[0], xp[last]]`.
fn np_interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let last = xp.len() - 1;
    if x >= xp[last] {
        return fp[last];
    }
    if x <= xp[0] {
        return fp[0];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// A1111 `get_align_your_steps_sigmas`: the 11-level table itself for `n == 11`, otherwise its
/// log-linear interpolation to `n` levels (NumPy, float64); plus 0, rounded to float32.
pub fn align_your_steps(n: usize, table: &[f64; 11]) -> Result<Vec<f64>> {
    check_steps(n)?;
    let mut out: Vec<f64> = if n == table.len() {
        table.to_vec()
    } else {
        let xs = np_linspace(0.0, 1.0, table.len());
        let ys: Vec<f64> = table.iter().rev().map(|s| s.ln()).collect();
        let new_xs = np_linspace(0.0, 1.0, n);
        new_xs.iter().rev().map(|&x| np_interp(x, &xs, &ys).exp()).collect()
    };
    out.push(0.0);
    Ok(out.into_iter().map(f32_round).collect())
}

/// A1111 `simple_scheduler`: every `len / n`-th discrete level counted from the largest, plus 0.
pub fn simple(schedule: &DiscreteSchedule, n: usize) -> Result<Vec<f64>> {
    check_steps(n)?;
    let sigmas = schedule.sigmas();
    let ss = sigmas.len() as f64 / n as f64;
    let mut out: Vec<f64> = (0..n).map(|x| sigmas[sigmas.len() - 1 - (x as f64 * ss) as usize]).collect();
    out.push(0.0);
    Ok(out)
}

/// A1111 `ddim_scheduler`: levels `1, 1 + s, 1 + 2s, …` with `s = max(len / n, 1)` (integer
/// division), reversed, plus 0. Gives `ceil((len - 1) / s)` levels, which need not be `n`.
pub fn ddim_uniform(schedule: &DiscreteSchedule, n: usize) -> Result<Vec<f64>> {
    check_steps(n)?;
    let sigmas = schedule.sigmas();
    let ss = (sigmas.len() / n).max(1);
    let mut out: Vec<f64> = (1..sigmas.len()).step_by(ss).map(|x| sigmas[x]).collect();
    out.reverse();
    out.push(0.0);
    Ok(out)
}

/// A1111 `beta_scheduler` ("Beta Sampling is All You Need"): `sigma_min + q (sigma_max - sigma_min)`
/// for the Beta(alpha, beta) quantiles `q` of `1 - linspace(0, 1, n)`, plus 0, rounded to float32.
pub fn beta(n: usize, sigma_min: f64, sigma_max: f64, alpha: f64, beta: f64) -> Result<Vec<f64>> {
    check_steps(n)?;
    let mut out: Vec<f64> = np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| {
            let q = super::special::beta_ppf(1.0 - x, alpha, beta);
            f32_round(sigma_min + q * (sigma_max - sigma_min))
        })
        .collect();
    out.push(0.0);
    Ok(out)
}

/// Drops the next-to-last value (A1111's `discard_next_to_last_sigma`: `cat(sigmas[:-2], sigmas[-1:])`).
pub fn discard_next_to_last(mut sigmas: Vec<f64>) -> Vec<f64> {
    if sigmas.len() >= 2 {
        sigmas.remove(sigmas.len() - 2);
    }
    sigmas
}

/// Timesteps of A1111's timestep samplers (DDIM, PLMS, UniPC):
/// `clip(range(0, 1000, 1000 // steps) + 1, 0, 999)`. Gives `ceil(1000 / (1000 // steps))`
/// timesteps, which exceeds `steps` when 1000 is not a multiple of it.
pub fn timestep_sampler_timesteps(steps: usize) -> Result<Vec<i64>> {
    check_steps(steps)?;
    let stride = 1000 / steps;
    if stride == 0 {
        return Err(Error::Sampling(format!("timestep samplers support at most 1000 steps, got {steps}")));
    }
    Ok((0..1000).step_by(stride).map(|t| (t as i64 + 1).clamp(0, 999)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn np_linspace_single_point_is_start() {
        assert_eq!(np_linspace(0.0, 1.0, 1), vec![0.0]);
    }

    #[test]
    fn np_interp_hits_knots_exactly() {
        let xp = [0.0, 0.5, 1.0];
        let fp = [1.0, 2.0, 4.0];
        assert_eq!(np_interp(0.5, &xp, &fp), 2.0);
        assert_eq!(np_interp(1.0, &xp, &fp), 4.0);
        assert_eq!(np_interp(0.75, &xp, &fp), 3.0);
    }

    #[test]
    fn timesteps_uneven_steps_overshoot_count() {
        let ts = timestep_sampler_timesteps(7).unwrap();
        assert_eq!(ts, vec![1, 143, 285, 427, 569, 711, 853, 995]);
    }
}
