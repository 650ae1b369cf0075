//! Timestep conditioning of the UNet: the sinusoidal embedding and the two-layer MLP on top of it.
//! Port of diffusers `get_timestep_embedding` (`flip_sin_to_cos=True, downscale_freq_shift=0`)
//! and `TimestepEmbedding`, under LDM names (`time_embed.0` / `time_embed.2`).

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::nn::Linear;
use crate::weights::Weights;

/// `[cos(t·f_k), sin(t·f_k)]` with `f_k = exp(−ln(10000)·k/half)`, `k = 0..half`, for float
/// timesteps `t` of shape `[B]`. Computed in fp32 whatever `kind` is: in fp16 `t·f` for t≈999 loses
/// the fractional part that k-diffusion samplers rely on. Cast to `kind` at the end.
pub fn timestep_embedding(timesteps: &Tensor, dim: i64, kind: Kind) -> Tensor {
    let half = dim / 2;
    let device = timesteps.device();
    let t = timesteps.to_kind(Kind::Float).reshape([-1, 1]);
    // Same operation order as diffusers (scale, then divide, then exp), so fp32 rounding matches
    // bit for bit: at t≈1000 an ulp in the frequency moves the phase by ~1e-4.
    let exponent = Tensor::arange(half, (Kind::Float, device)) * -(10000f64.ln()) / half as f64;
    let args = t * exponent.exp().unsqueeze(0);
    let mut emb = Tensor::cat(&[args.cos(), args.sin()], 1);
    if dim % 2 == 1 {
        // diffusers pads odd dimensions with one zero column; no SD model has one, but keep the
        // shapes right.
        emb = emb.constant_pad_nd([0, 1, 0, 0]);
    }
    emb.to_kind(kind)
}

/// `time_embed.0` → SiLU → `time_embed.2`: model_channels → time_embed_dim → time_embed_dim.
#[derive(Debug)]
pub struct TimestepMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepMlp {
    pub fn new(w: &Weights, in_dim: i64, out_dim: i64) -> Result<Self> {
        Ok(TimestepMlp {
            linear_1: Linear::new(&w.pp("0"), in_dim, out_dim, true)?,
            linear_2: Linear::new(&w.pp("2"), out_dim, out_dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}
