//! The VAE's building blocks: residual block, single-head spatial self-attention and the 2×
//! samplers. Port of diffusers `ResnetBlock2D` (no time embedding), `Attention` as built for
//! `UNetMidBlock2D` (one head, residual), `Downsample2D` and `Upsample2D`, under LDM
//! `ldm/modules/diffusionmodules/model.py` names (`norm1`, `nin_shortcut`, `attn_1.q`, …).

use tch::Tensor;

use crate::error::Result;
use crate::nn::{self, Conv2d, GroupNorm, Linear};
use crate::weights::Weights;

/// Every VAE norm is LDM `Normalize`: `GroupNorm(32, C, eps=1e-6)`.
pub const EPS: f64 = 1e-6;

/// `x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`, 1×1 `nin_shortcut` when channels change.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(w: &Weights, in_ch: i64, out_ch: i64, groups: i64) -> Result<Self> {
        let shortcut = if in_ch != out_ch {
            Some(Conv2d::new(&w.pp("nin_shortcut"), in_ch, out_ch, 1, 1, 0)?)
        } else {
            None
        };
        Ok(ResnetBlock {
            norm1: GroupNorm::new(&w.pp("norm1"), groups, in_ch, EPS)?,
            conv1: Conv2d::new(&w.pp("conv1"), in_ch, out_ch, 3, 1, 1)?,
            norm2: GroupNorm::new(&w.pp("norm2"), groups, out_ch, EPS)?,
            conv2: Conv2d::new(&w.pp("conv2"), out_ch, out_ch, 3, 1, 1)?,
            shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the H·W positions, with residual (`mid.attn_1`).
/// q/k/v/proj_out are stored as 1×1 convs `[C,C,1,1]` in original files and as linears `[C,C]`
/// in converted ones; [`Linear::new`] accepts both, and linears over tokens are what diffusers runs.
#[derive(Debug)]
pub struct AttnBlock {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    proj_out: Linear,
}

impl AttnBlock {
    pub fn new(w: &Weights, channels: i64, groups: i64) -> Result<Self> {
        Ok(AttnBlock {
            norm: GroupNorm::new(&w.pp("norm"), groups, channels, EPS)?,
            q: Linear::new(&w.pp("q"), channels, channels, true)?,
            k: Linear::new(&w.pp("k"), channels, channels, true)?,
            v: Linear::new(&w.pp("v"), channels, channels, true)?,
            proj_out: Linear::new(&w.pp("proj_out"), channels, channels, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("VAE attention input must be [B, C, H, W]; this is a bug");
        let tokens = self.norm.forward(x).reshape([b, c, h * w]).transpose(1, 2);
        let q = self.q.forward(&tokens);
        let k = self.k.forward(&tokens);
        let v = self.v.forward(&tokens);
        let out = self.proj_out.forward(&nn::attention(&q, &k, &v, 1, false));
        out.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

/// Pad right and bottom by one, then a 3×3 stride-2 convolution without padding (LDM
/// `Downsample(with_conv=True)`; note the asymmetry, unlike the UNet's padding-1 downsampler).
#[derive(Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(w: &Weights, channels: i64) -> Result<Self> {
        Ok(Downsample { conv: Conv2d::new(&w.pp("conv"), channels, channels, 3, 2, 0)? })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
    }
}

/// Nearest 2× then a 3×3 convolution.
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(w: &Weights, channels: i64) -> Result<Self> {
        Ok(Upsample { conv: Conv2d::new(&w.pp("conv"), channels, channels, 3, 1, 1)? })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        self.conv.forward(&x.upsample_nearest2d([size[2] * 2, size[3] * 2], None, None))
    }
}
