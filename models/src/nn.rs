//! The layers SD models are built from. Each holds plain tensors taken from [`Weights`] under the
//! PyTorch state-dict names (`weight`, `bias`), so files load without renaming.

use tch::Tensor;

use crate::error::Result;
use crate::weights::Weights;

/// `y = x Wᵀ + b`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(w: &Weights, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.get_reshaped(&[out_dim, in_dim], "weight")?,
            bias: if bias { Some(w.get(&[out_dim], "bias")?) } else { None },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// A 2-D convolution with square kernel, stride and padding.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(w: &Weights, in_ch: i64, out_ch: i64, kernel: i64, stride: i64, padding: i64) -> Result<Self> {
        let shape = [out_ch, in_ch, kernel, kernel];
        let weight = if kernel == 1 { w.get_reshaped(&shape, "weight")? } else { w.get(&shape, "weight")? };
        Ok(Conv2d { weight, bias: Some(w.get(&[out_ch], "bias")?), stride, padding })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, self.bias.as_ref(), [self.stride], [self.padding], [1], 1)
    }
}

/// Group normalisation with affine parameters.
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(w: &Weights, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        Ok(GroupNorm {
            weight: w.get(&[channels], "weight")?,
            bias: w.get(&[channels], "bias")?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(self.groups, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(w: &Weights, dim: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm { weight: w.get(&[dim], "weight")?, bias: w.get(&[dim], "bias")?, dim, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Multi-head attention on already projected `q` `[B, Lq, H·D]`, `k`/`v` `[B, Lk, H·D]`, through
/// libtorch's `scaled_dot_product_attention` (scale `1/√D`). Returns `[B, Lq, H·D]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, causal: bool) -> Tensor {
    let (b, lq, c) = q.size3().expect("attention query must be [B, L, C]; this is a bug");
    let lk = k.size()[1];
    let d = c / heads;
    let split = |t: &Tensor, l: i64| t.reshape([b, l, heads, d]).transpose(1, 2);
    let out = Tensor::scaled_dot_product_attention(
        &split(q, lq),
        &split(k, lk),
        &split(v, lk),
        None::<Tensor>,
        0.0,
        causal,
        None,
        false,
    );
    out.transpose(1, 2).reshape([b, lq, c])
}
