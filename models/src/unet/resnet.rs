//! The UNet's convolutional pieces: the timestep-conditioned residual block and the 2× down/up
//! samplers. Port of diffusers `ResnetBlock2D` (`time_embedding_norm="default"`), `Downsample2D`
//! and `Upsample2D`, under LDM `openaimodel` names (`in_layers`, `emb_layers`, `out_layers`,
//! `skip_connection`, `op`, `conv`).

use tch::Tensor;

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::Weights;

/// GroupNorm eps inside UNet ResBlocks (LDM `normalization()` = `GroupNorm32(32, C)`, torch default
/// eps), unlike the 1e-6 of the transformers and the VAE.
const RES_EPS: f64 = 1e-5;

/// `x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))) + proj(SiLU(temb)))))`, with a 1×1 shortcut
/// when the channel count changes.
#[derive(Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(w: &Weights, in_ch: i64, out_ch: i64, temb_dim: i64, groups: i64) -> Result<Self> {
        let shortcut = if in_ch != out_ch {
            Some(Conv2d::new(&w.pp("skip_connection"), in_ch, out_ch, 1, 1, 0)?)
        } else {
            None
        };
        Ok(ResBlock {
            norm1: GroupNorm::new(&w.pp("in_layers.0"), groups, in_ch, RES_EPS)?,
            conv1: Conv2d::new(&w.pp("in_layers.2"), in_ch, out_ch, 3, 1, 1)?,
            time_emb_proj: Linear::new(&w.pp("emb_layers.1"), temb_dim, out_ch, true)?,
            norm2: GroupNorm::new(&w.pp("out_layers.0"), groups, out_ch, RES_EPS)?,
            conv2: Conv2d::new(&w.pp("out_layers.3"), out_ch, out_ch, 3, 1, 1)?,
            shortcut,
        })
    }

    /// `x` `[B, in, H, W]`, `temb` `[B, temb_dim]` (before its SiLU) → `[B, out, H, W]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let t = self.time_emb_proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        let h = self.conv2.forward(&self.norm2.forward(&(h + t)).silu());
        match &self.shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// 3×3 convolution, stride 2, padding 1 (`input_blocks.N.0.op`).
#[derive(Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(w: &Weights, channels: i64) -> Result<Self> {
        Ok(Downsample { conv: Conv2d::new(&w.pp("op"), channels, channels, 3, 2, 1)? })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(x)
    }
}

/// Nearest-neighbour upsampling then a 3×3 convolution (`output_blocks.N.{1|2}.conv`).
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(w: &Weights, channels: i64) -> Result<Self> {
        Ok(Upsample { conv: Conv2d::new(&w.pp("conv"), channels, channels, 3, 1, 1)? })
    }

    /// Upsamples to exactly `size` (the matching skip activation's height and width) rather than
    /// by a fixed 2×: equal to 2× for even sizes, and it is how diffusers lets latents whose sides
    /// are not multiples of 2^(levels−1) through (a stride-2 conv rounds odd sides up).
    pub fn forward(&self, x: &Tensor, size: [i64; 2]) -> Tensor {
        self.conv.forward(&x.upsample_nearest2d(size, None, None))
    }
}
