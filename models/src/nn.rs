//! The layers SD models are built from. Each holds plain tensors taken from [`Weights`] under the
//! PyTorch state-dict names (`weight`, `bias`), so files load without renaming.
//!
//! [`Linear`] and [`Conv2d`] also carry an [`AdapterSlot`]: while a LoRA network is trained its
//! modules sit there and add kohya's `up(down(x)) · scale` to the layer's output. Inference LoRAs
//! do not use the slots; they are merged into the weights ([`crate::lora`]).

use std::sync::{Arc, Mutex};

use tch::Tensor;

use crate::error::Result;
use crate::weights::Weights;

/// A trainable low-rank term of kohya's LoRA forward: the layer computes
/// `layer(x) + up(down(x)) · scale`. `down` and `up` keep their own dtype (fp32 under mixed
/// precision) and are cast to the input's dtype on the fly, as autocast does; the cast is part of
/// the autograd graph, so gradients reach the fp32 parameters.
#[derive(Debug)]
pub struct Adapter {
    /// `[r, in]` for a linear layer, `[r, in, k, k]` for a convolution (the layer's kernel,
    /// stride and padding).
    pub down: Tensor,
    /// `[out, r]`, or `[out, r, 1, 1]` for a convolution.
    pub up: Tensor,
    /// `alpha / rank · multiplier`.
    pub scale: f64,
}

/// Where a layer finds its [`Adapter`]; shared between the layer and whoever attaches one.
#[derive(Clone, Debug, Default)]
pub struct AdapterSlot(Arc<Mutex<Option<Adapter>>>);

impl AdapterSlot {
    /// Attaches `adapter` (or detaches, with `None`).
    pub fn set(&self, adapter: Option<Adapter>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = adapter;
    }

    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Whether both handles lead to the same slot (the same layer).
    pub fn same_as(&self, other: &AdapterSlot) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The attached adapter's `(down, up, scale)`, sharing storage (and autograd identity).
    fn current(&self) -> Option<(Tensor, Tensor, f64)> {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|a| (a.down.shallow_clone(), a.up.shallow_clone(), a.scale))
    }
}

/// `y = x Wᵀ + b`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub adapter: AdapterSlot,
}

impl Linear {
    pub fn new(w: &Weights, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.get_reshaped(&[out_dim, in_dim], "weight")?,
            bias: if bias { Some(w.get(&[out_dim], "bias")?) } else { None },
            adapter: w.adapter_slot(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match self.adapter.current() {
            None => y,
            Some((down, up, scale)) => {
                let k = x.kind();
                let low = x.linear(&down.to_kind(k), None::<Tensor>).linear(&up.to_kind(k), None::<Tensor>);
                y + low * scale
            }
        }
    }
}

/// A 2-D convolution with square kernel, stride and padding.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub adapter: AdapterSlot,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(w: &Weights, in_ch: i64, out_ch: i64, kernel: i64, stride: i64, padding: i64) -> Result<Self> {
        let shape = [out_ch, in_ch, kernel, kernel];
        let weight = if kernel == 1 { w.get_reshaped(&shape, "weight")? } else { w.get(&shape, "weight")? };
        Ok(Conv2d {
            weight,
            bias: Some(w.get(&[out_ch], "bias")?),
            adapter: w.adapter_slot(),
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.conv2d(&self.weight, self.bias.as_ref(), [self.stride], [self.padding], [1], 1);
        match self.adapter.current() {
            None => y,
            Some((down, up, scale)) => {
                // kohya: lora_down takes the layer's kernel, stride and padding; lora_up is 1×1.
                let k = x.kind();
                let low = x
                    .conv2d(&down.to_kind(k), None::<Tensor>, [self.stride], [self.padding], [1], 1)
                    .conv2d(&up.to_kind(k), None::<Tensor>, [1], [0], [1], 1);
                y + low * scale
            }
        }
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
