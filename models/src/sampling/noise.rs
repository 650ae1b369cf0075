//! Where samplers get their random numbers.
//!
//! Every random draw of every sampler goes through one [`NoiseSource`]: ancestral noise, the
//! "churn" noise of Euler/Heun/DPM2, the `eta` noise of DDIM, Restart's re-noising and the SDE
//! samplers' Brownian increments. This mirrors A1111, which routes k-diffusion's
//! `torch.randn_like` and its default noise sampler to the per-image generator (`TorchHijack` →
//! `p.rng.next()`), and hands the SDE samplers a `BrownianTreeNoiseSampler` seeded with the image
//! seeds instead (see [`super::brownian`]). The pipeline picks the source per sampler from
//! [`super::SamplerOptions::brownian_noise`].
//!
//! Each draw names the step it is for (`sigma` → `sigma_next`); stream-like sources ignore it,
//! the Brownian tree needs it.

use tch::Tensor;

use crate::error::Result;

/// A source of standard normal noise for sampler steps.
pub trait NoiseSource {
    /// Noise with the shape, dtype and device of `like`, for the step from `sigma` to
    /// `sigma_next`.
    fn noise(&mut self, like: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor>;
}

impl<F> NoiseSource for F
where
    F: FnMut(&Tensor, f64, f64) -> Result<Tensor>,
{
    fn noise(&mut self, like: &Tensor, sigma: f64, sigma_next: f64) -> Result<Tensor> {
        self(like, sigma, sigma_next)
    }
}

/// Noise from libtorch's default generator on the tensor's device (`torch.randn_like`).
///
/// For callers that have no seeded per-image stream; results depend on the global generator state.
#[derive(Debug, Default, Clone, Copy)]
pub struct GlobalRandn;

impl NoiseSource for GlobalRandn {
    fn noise(&mut self, like: &Tensor, _sigma: f64, _sigma_next: f64) -> Result<Tensor> {
        Ok(like.f_randn_like()?)
    }
}

/// A fixed list of noise tensors handed out in order: replays a recorded stream (reference
/// goldens, reproductions). Asking for more than it holds, or for another shape, is an error.
#[derive(Debug)]
pub struct NoiseList {
    items: std::collections::VecDeque<Tensor>,
    used: usize,
}

impl NoiseList {
    /// Replays `items` in order.
    pub fn new(items: Vec<Tensor>) -> Self {
        NoiseList { items: items.into(), used: 0 }
    }

    /// How many tensors have been handed out.
    pub fn used(&self) -> usize {
        self.used
    }
}

impl NoiseSource for NoiseList {
    fn noise(&mut self, like: &Tensor, _sigma: f64, _sigma_next: f64) -> Result<Tensor> {
        let next = self.items.pop_front().ok_or_else(|| {
            crate::Error::Sampling(format!("noise list exhausted after {} draws", self.used))
        })?;
        if next.size() != like.size() {
            return Err(crate::Error::Sampling(format!(
                "noise list item {} has shape {:?}, the sampler asked for {:?}",
                self.used,
                next.size(),
                like.size()
            )));
        }
        self.used += 1;
        Ok(next.to_device(like.device()).to_kind(like.kind()))
    }
}
