//! The UNet's transformer pieces: `SpatialTransformer` (LDM name; diffusers `Transformer2DModel`),
//! `BasicTransformerBlock`, `CrossAttention` (diffusers `Attention` with `AttnProcessor2_0`) and
//! the GEGLU feed-forward. Port of diffusers `models/transformers/transformer_2d.py` and
//! `models/attention.py`, under LDM `ldm/modules/attention.py` key names.

use tch::Tensor;

use crate::error::Result;
use crate::nn::{self, Conv2d, GroupNorm, LayerNorm, Linear};
use crate::weights::Weights;

/// GroupNorm eps of the transformer's input norm (LDM `Normalize`: `GroupNorm(32, C, eps=1e-6)`).
const NORM_EPS: f64 = 1e-6;
/// LayerNorm eps inside transformer blocks (torch default).
const LAYER_NORM_EPS: f64 = 1e-5;

/// Multi-head attention with bias-free q/k/v projections: self-attention when `context` is
/// `None`, cross-attention over `context` otherwise.
#[derive(Debug)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl CrossAttention {
    pub fn new(w: &Weights, query_dim: i64, context_dim: i64, heads: i64, head_dim: i64) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(CrossAttention {
            to_q: Linear::new(&w.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::new(&w.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::new(&w.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::new(&w.pp("to_out.0"), inner, query_dim, true)?,
            heads,
        })
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context);
        let v = self.to_v.forward(context);
        self.to_out.forward(&nn::attention(&q, &k, &v, self.heads, false))
    }
}

/// `net.0.proj` to 2·inner, split, `value · gelu(gate)` (value first), then `net.2` back to dim.
#[derive(Debug)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(w: &Weights, dim: i64, mult: i64) -> Result<Self> {
        let inner = dim * mult;
        Ok(FeedForward {
            proj: Linear::new(&w.pp("net.0.proj"), dim, inner * 2, true)?,
            out: Linear::new(&w.pp("net.2"), inner, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.proj.forward(x);
        let parts = h.chunk(2, -1);
        // Exact (erf) GELU, as torch's `F.gelu` default that GEGLU uses.
        self.out.forward(&(&parts[0] * parts[1].gelu("none")))
    }
}

/// Pre-norm self-attention, cross-attention and feed-forward, each with a residual.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(w: &Weights, dim: i64, context_dim: i64, heads: i64, head_dim: i64) -> Result<Self> {
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::new(&w.pp("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: CrossAttention::new(&w.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: LayerNorm::new(&w.pp("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: CrossAttention::new(&w.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: LayerNorm::new(&w.pp("norm3"), dim, LAYER_NORM_EPS)?,
            ff: FeedForward::new(&w.pp("ff"), dim, 4)?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let x = self.attn2.forward(&self.norm2.forward(&x), Some(context)) + &x;
        self.ff.forward(&self.norm3.forward(&x)) + &x
    }
}

/// How a transformer maps between the `[B, C, H, W]` feature map and `[B, H·W, inner]` tokens:
/// 1×1 convolutions before/after flattening (SD1) or linears after/before it (SD2, SDXL).
#[derive(Debug)]
enum Projection {
    Conv { proj_in: Conv2d, proj_out: Conv2d },
    Linear { proj_in: Linear, proj_out: Linear },
}

/// GroupNorm, project in, `depth` transformer blocks over the H·W tokens, project out, residual.
#[derive(Debug)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    projection: Projection,
    blocks: Vec<BasicTransformerBlock>,
}

/// Shape parameters of one [`SpatialTransformer`].
#[derive(Clone, Copy, Debug)]
pub struct TransformerShape {
    pub channels: i64,
    pub context_dim: i64,
    pub heads: i64,
    pub head_dim: i64,
    pub depth: i64,
    pub linear_projection: bool,
    pub groups: i64,
}

impl SpatialTransformer {
    pub fn new(w: &Weights, s: TransformerShape) -> Result<Self> {
        let inner = s.heads * s.head_dim;
        let projection = if s.linear_projection {
            Projection::Linear {
                proj_in: Linear::new(&w.pp("proj_in"), s.channels, inner, true)?,
                proj_out: Linear::new(&w.pp("proj_out"), inner, s.channels, true)?,
            }
        } else {
            Projection::Conv {
                proj_in: Conv2d::new(&w.pp("proj_in"), s.channels, inner, 1, 1, 0)?,
                proj_out: Conv2d::new(&w.pp("proj_out"), inner, s.channels, 1, 1, 0)?,
            }
        };
        let blocks = (0..s.depth)
            .map(|i| {
                let bw = w.pp(format!("transformer_blocks.{i}"));
                BasicTransformerBlock::new(&bw, inner, s.context_dim, s.heads, s.head_dim)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SpatialTransformer {
            norm: GroupNorm::new(&w.pp("norm"), s.groups, s.channels, NORM_EPS)?,
            projection,
            blocks,
        })
    }

    /// `x` `[B, C, H, W]`, `context` `[B, L, context_dim]` → `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (b, _, h, w) = x.size4().expect("SpatialTransformer input must be [B, C, H, W]; this is a bug");
        let to_tokens = |t: &Tensor| {
            let c = t.size()[1];
            t.permute([0, 2, 3, 1]).reshape([b, h * w, c])
        };
        let to_map = |t: &Tensor| {
            let c = t.size()[2];
            t.reshape([b, h, w, c]).permute([0, 3, 1, 2]).contiguous()
        };
        let normed = self.norm.forward(x);
        let mut tokens = match &self.projection {
            Projection::Conv { proj_in, .. } => to_tokens(&proj_in.forward(&normed)),
            Projection::Linear { proj_in, .. } => proj_in.forward(&to_tokens(&normed)),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context);
        }
        let out = match &self.projection {
            Projection::Conv { proj_out, .. } => proj_out.forward(&to_map(&tokens)),
            Projection::Linear { proj_out, .. } => to_map(&proj_out.forward(&tokens)),
        };
        out + x
    }
}
