//! Turning a noise-predicting (eps) model into the denoiser the k-diffusion samplers call.
//!
//! k-diffusion samplers work in "sigma space": `x = x0 + sigma · noise`, and call a denoiser
//! `D(x, sigma) ≈ x0`. An SD1 UNet predicts the noise of the variance-preserving latent
//! `x_vp = x / sqrt(sigma² + 1)` at timestep `t(sigma)`. k-diffusion's `CompVisDenoiser`
//! (`DiscreteEpsDDPMDenoiser`) bridges the two:
//!
//! ```text
//! c_in = 1 / sqrt(sigma² + 1),  c_out = -sigma
//! D(x, sigma) = x + eps(x · c_in, t(sigma)) · c_out
//! ```
//!
//! with `t(sigma)` the fractional timestep of [`DiscreteSchedule::sigma_to_t`]. A1111's LCM
//! sampler uses its own wrapper ([`LcmDenoiser`]), which quantizes the timestep to the 50 LCM
//! timesteps and applies LCM's consistency boundary condition on top.
//!
//! Classifier-free guidance is not done here: the pipeline batches cond and uncond rows into `x`,
//! calls [`CompVisDenoiser::denoise`] once, and combines the denoised halves (A1111's
//! `CFGDenoiser` does the same around `CompVisDenoiser`).

use tch::Tensor;

use super::schedule::DiscreteSchedule;

/// A noise prediction model: `eps(x_vp, t)` for a batch `x_vp` `[B, C, H, W]` and timesteps
/// `t` `[B]` (float, possibly fractional).
pub type EpsFn<'a> = dyn FnMut(&Tensor, &Tensor) -> Tensor + 'a;

/// `sigma` `[B]` as a `[B, 1, 1, 1]`-style tensor that broadcasts against `x`.
fn append_dims(v: &Tensor, ndim: usize) -> Tensor {
    let mut shape = v.size();
    shape.resize(ndim.max(shape.len()), 1);
    v.reshape(shape)
}

/// k-diffusion's `CompVisDenoiser` for eps-prediction models.
#[derive(Debug, Clone)]
pub struct CompVisDenoiser {
    schedule: DiscreteSchedule,
}

impl CompVisDenoiser {
    /// A denoiser over the model's discrete schedule.
    pub fn new(schedule: DiscreteSchedule) -> Self {
        CompVisDenoiser { schedule }
    }

    /// The schedule (for building sigma arrays).
    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    /// `(c_out, c_in)` for each noise level in `sigma`.
    pub fn scalings(sigma: &Tensor) -> (Tensor, Tensor) {
        let c_out = -sigma;
        // `1 / (sigma² + sigma_data²) ** 0.5` with sigma_data = 1; `reciprocal` is what Python's
        // `1 / tensor` computes.
        let c_in = (sigma.pow_tensor_scalar(2) + 1.0).pow_tensor_scalar(0.5).reciprocal();
        (c_out, c_in)
    }

    /// `D(x, sigma) = x + eps(x · c_in, t(sigma)) · c_out`; `sigma` is `[B]`.
    pub fn denoise(&self, eps: &mut EpsFn<'_>, x: &Tensor, sigma: &Tensor) -> Tensor {
        let (c_out, c_in) = Self::scalings(sigma);
        let nd = x.dim();
        let t = self.schedule.sigma_to_t(sigma);
        let e = eps(&(x * append_dims(&c_in, nd)), &t);
        x + e * append_dims(&c_out, nd)
    }
}

/// A1111's `LCMCompVisDenoiser`: the eps denoiser on the 50-level LCM schedule, with the timestep
/// quantized to `20 i + 19`, followed by LCM's boundary condition
/// `c_skip · x + c_out · D` with `s = 10 t`, `c_skip = 0.25 / (s² + 0.25)`,
/// `c_out = s / sqrt(s² + 0.25)` (sigma_data = 0.5).
#[derive(Debug, Clone)]
pub struct LcmDenoiser {
    schedule: DiscreteSchedule,
}

impl LcmDenoiser {
    /// A denoiser over `DiscreteSchedule::lcm(alphas_cumprod)`.
    pub fn new(schedule: DiscreteSchedule) -> Self {
        LcmDenoiser { schedule }
    }

    /// The (LCM) schedule.
    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    /// The LCM-scaled denoised prediction; `sigma` is `[B]`.
    pub fn denoise(&self, eps: &mut EpsFn<'_>, x: &Tensor, sigma: &Tensor) -> Tensor {
        let (c_out, c_in) = CompVisDenoiser::scalings(sigma);
        let nd = x.dim();
        let t = self.schedule.sigma_to_t(sigma);
        let e = eps(&(x * append_dims(&c_in, nd)), &t);
        let denoised = x + e * append_dims(&c_out, nd);

        let sigma_data = 0.5;
        let scaled = append_dims(&self.schedule.sigma_to_t(sigma), nd) * 10.0;
        let c_skip =
            (scaled.pow_tensor_scalar(2) + sigma_data * sigma_data).reciprocal() * (sigma_data * sigma_data);
        let c_out = &scaled / (scaled.pow_tensor_scalar(2) + sigma_data * sigma_data).pow_tensor_scalar(0.5);
        c_out * denoised + c_skip * x
    }
}
