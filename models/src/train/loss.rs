//! The noise schedule and loss of sd-scripts' epsilon-prediction training (training spec §3.1–3.3):
//! diffusers' `DDPMScheduler` with kohya's arguments, noise offset, timestep sampling, min-SNR-γ
//! weighting, prior-loss weights for regularisation images and the mean reduction.

use tch::{Device, Kind, Tensor};

use crate::error::Result;

use super::train_error;

/// Training timesteps of SD1.
pub const TRAIN_TIMESTEPS: i64 = 1000;

/// The DDPM schedule kohya trains with: `scaled_linear` betas from 0.00085 to 0.012 over 1000
/// steps, computed in float32 as diffusers does (`linspace(√β0, √β1, 1000, float32) ** 2`, then a
/// float32 cumulative product), and `all_snr = (√ᾱ / √(1 − ᾱ))²` precomputed in float32.
#[derive(Debug)]
pub struct NoiseSchedule {
    /// ᾱ_t, float32 `[1000]` on the CPU.
    pub alphas_cumprod: Tensor,
    /// SNR_t = ᾱ_t / (1 − ᾱ_t), float32 `[1000]` on the CPU.
    pub all_snr: Tensor,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        Self::sd1()
    }
}

impl NoiseSchedule {
    pub fn sd1() -> Self {
        let opts = (Kind::Float, Device::Cpu);
        let roots = Tensor::linspace(0.00085f64.sqrt(), 0.012f64.sqrt(), TRAIN_TIMESTEPS, opts);
        let betas = roots.pow_tensor_scalar(2);
        let alphas = betas.neg() + 1.0;
        let alphas_cumprod = alphas.cumprod(0, Kind::Float);
        let alpha = alphas_cumprod.sqrt();
        let sigma = (alphas_cumprod.neg() + 1.0).sqrt();
        let all_snr = (alpha / sigma).pow_tensor_scalar(2);
        NoiseSchedule { alphas_cumprod, all_snr }
    }

    /// diffusers `add_noise`: `√ᾱ_t · latents + √(1 − ᾱ_t) · noise`, per sample, in float32
    /// (cast to the latents' dtype).
    pub fn add_noise(&self, latents: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Tensor {
        let ac = self
            .alphas_cumprod
            .to_device(latents.device())
            .index_select(0, &timesteps.to_device(latents.device()));
        let shape = [-1, 1, 1, 1];
        let sqrt_alpha = ac.pow_tensor_scalar(0.5).to_kind(latents.kind()).reshape(shape);
        let sqrt_one_minus = (ac.neg() + 1.0).pow_tensor_scalar(0.5).to_kind(latents.kind()).reshape(shape);
        sqrt_alpha * latents + sqrt_one_minus * noise
    }

    /// kohya's min-SNR-γ weight for epsilon prediction, `min(SNR_t, γ) / SNR_t`, float32 `[B]`.
    pub fn min_snr_weight(&self, timesteps: &Tensor, gamma: f64) -> Tensor {
        let snr = self.all_snr.index_select(0, &timesteps.to_device(Device::Cpu));
        snr.clamp_max(gamma) / &snr
    }
}

/// kohya `apply_noise_offset`: `noise + offset · draw` with `draw` standard normal `[B, C, 1, 1]`
/// (one value per sample and channel), drawn by [`noise_offset_draw`].
pub fn apply_noise_offset(noise: &Tensor, offset: f64, draw: &Tensor) -> Tensor {
    noise + draw * offset
}

/// The `[B, C, 1, 1]` standard-normal draw of the noise offset, from libtorch's global generator.
pub fn noise_offset_draw(noise: &Tensor) -> Tensor {
    let s = noise.size();
    Tensor::randn([s[0], s[1], 1, 1], (noise.kind(), noise.device()))
}

/// Timesteps uniform in `[min, max)` (kohya: `torch.randint(min_timestep, max_timestep, (B,))` on
/// the CPU), int64 `[batch]`.
pub fn sample_timesteps(batch: i64, min: i64, max: i64) -> Result<Tensor> {
    if !(0 <= min && min < max && max <= TRAIN_TIMESTEPS) {
        return Err(train_error(format!(
            "timestep range [{min}, {max}) must be non-empty and inside [0, {TRAIN_TIMESTEPS})"
        )));
    }
    Ok(Tensor::randint_low(min, max, [batch], (Kind::Int64, Device::Cpu)))
}

/// How the per-sample losses are weighted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeighting {
    /// `--min_snr_gamma`; `None` disables the weight.
    pub min_snr_gamma: Option<f64>,
    /// `--prior_loss_weight`, applied to regularisation samples (default 1).
    pub prior_loss_weight: f64,
}

impl Default for LossWeighting {
    fn default() -> Self {
        LossWeighting { min_snr_gamma: None, prior_loss_weight: 1.0 }
    }
}

/// The per-sample losses `[B]` (float32) of train_network.py: squared error in float32, mean over
/// C, H, W, × prior-loss weight for regularisation samples, × min-SNR weight. The batch loss is
/// their mean ([`batch_loss`]).
pub fn per_sample_loss(
    schedule: &NoiseSchedule,
    pred: &Tensor,
    target: &Tensor,
    timesteps: &Tensor,
    is_reg: &[bool],
    weighting: &LossWeighting,
) -> Tensor {
    let err = (pred.to_kind(Kind::Float) - target.to_kind(Kind::Float)).square();
    let loss = err.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
    let weights: Vec<f32> =
        is_reg.iter().map(|&r| if r { weighting.prior_loss_weight as f32 } else { 1.0 }).collect();
    let loss = loss * Tensor::from_slice(&weights).to_device(pred.device());
    match weighting.min_snr_gamma {
        Some(gamma) => loss * schedule.min_snr_weight(timesteps, gamma).to_device(pred.device()),
        None => loss,
    }
}

/// The batch loss: mean of [`per_sample_loss`].
pub fn batch_loss(per_sample: &Tensor) -> Tensor {
    per_sample.mean(Kind::Float)
}
