//! The CLIP text transformer (port of transformers `CLIPTextModel`), as SD1.x uses it: causal
//! self-attention only (no padding mask), quick-GELU MLPs, pre-norm layers, and every hidden state
//! kept so that A1111's "clip skip" can pick `hidden_states[-N]` before the final layer norm.
//!
//! Key names are HF's under `text_model.` (in A1111 files:
//! `cond_stage_model.transformer.text_model.`); see formats.md §2.7.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::{attention, LayerNorm, Linear};
use crate::weights::{TensorSource, Weights};

/// Shape of a CLIP text tower, read from its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub vocab_size: i64,
    pub hidden: i64,
    pub intermediate: i64,
    pub layers: i64,
    pub heads: i64,
    pub max_positions: i64,
}

impl ClipConfig {
    /// OpenAI CLIP ViT-L/14, the SD1.x text encoder.
    pub fn vit_l14() -> Self {
        ClipConfig {
            vocab_size: 49408,
            hidden: 768,
            intermediate: 3072,
            layers: 12,
            heads: 12,
            max_positions: 77,
        }
    }

    /// Infers the configuration from the tensors under `prefix` (ending in `text_model.`).
    ///
    /// The head count is not stored in any shape; every released CLIP text tower uses 64-wide
    /// heads (ViT-L 768/12, OpenCLIP-H 1024/16, bigG 1280/20), so heads = hidden / 64, and at
    /// least one for the narrow test models.
    pub fn detect(src: &dyn TensorSource, prefix: &str) -> Result<Self> {
        let shape = |name: &str| {
            src.info(&format!("{prefix}{name}")).map(|i| i.shape).ok_or_else(|| Error::UnknownCheckpoint {
                file: src.origin().into(),
                reason: format!("no CLIP text encoder: `{prefix}{name}` is missing"),
            })
        };
        let tok = shape("embeddings.token_embedding.weight")?;
        let pos = shape("embeddings.position_embedding.weight")?;
        let fc1 = shape("encoder.layers.0.mlp.fc1.weight")?;
        let mut layers = 0;
        while src.contains(&format!("{prefix}encoder.layers.{layers}.layer_norm1.weight")) {
            layers += 1;
        }
        let hidden = tok[1];
        Ok(ClipConfig {
            vocab_size: tok[0],
            hidden,
            intermediate: fc1[0],
            layers,
            heads: (hidden / 64).max(1),
            max_positions: pos[0],
        })
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
}

impl EncoderLayer {
    fn new(w: &Weights, c: &ClipConfig) -> Result<Self> {
        let attn = w.pp("self_attn");
        let h = c.hidden;
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::new(&w.pp("layer_norm1"), h, 1e-5)?,
            q_proj: Linear::new(&attn.pp("q_proj"), h, h, true)?,
            k_proj: Linear::new(&attn.pp("k_proj"), h, h, true)?,
            v_proj: Linear::new(&attn.pp("v_proj"), h, h, true)?,
            out_proj: Linear::new(&attn.pp("out_proj"), h, h, true)?,
            layer_norm2: LayerNorm::new(&w.pp("layer_norm2"), h, 1e-5)?,
            fc1: Linear::new(&w.pp("mlp.fc1"), h, c.intermediate, true)?,
            fc2: Linear::new(&w.pp("mlp.fc2"), c.intermediate, h, true)?,
            heads: c.heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.layer_norm1.forward(x);
        let a = attention(
            &self.q_proj.forward(&h),
            &self.k_proj.forward(&h),
            &self.v_proj.forward(&h),
            self.heads,
            true,
        );
        let x = x + self.out_proj.forward(&a);
        let h = self.fc1.forward(&self.layer_norm2.forward(&x));
        // quick_gelu: x·σ(1.702x)
        let h = &h * (&h * 1.702).sigmoid();
        x + self.fc2.forward(&h)
    }
}

/// The CLIP text transformer.
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipConfig,
}

impl ClipTextModel {
    /// Builds the model from weights positioned at `text_model` (A1111:
    /// `cond_stage_model.transformer.text_model`). The stored `embeddings.position_ids` buffer is
    /// ignored: merged checkpoints often hold corrupted float copies of it (formats.md §5.6), and
    /// positions are always `0..n`.
    pub fn new(w: &Weights, config: &ClipConfig) -> Result<Self> {
        let c = config;
        let emb = w.pp("embeddings");
        let layers = (0..c.layers)
            .map(|i| EncoderLayer::new(&w.pp(format!("encoder.layers.{i}")), c))
            .collect::<Result<_>>()?;
        Ok(ClipTextModel {
            token_embedding: emb.get(&[c.vocab_size, c.hidden], "token_embedding.weight")?,
            position_embedding: emb.get(&[c.max_positions, c.hidden], "position_embedding.weight")?,
            layers,
            final_layer_norm: LayerNorm::new(&w.pp("final_layer_norm"), c.hidden, 1e-5)?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    fn embed_with(&self, input_ids: &Tensor, fixes: &[crate::conditioning::EmbeddingFix]) -> Tensor {
        let len = input_ids.size()[1];
        let ids = input_ids.to_device(self.token_embedding.device()).to_kind(Kind::Int64);
        let tokens = Tensor::embedding(&self.token_embedding, &ids, -1, false, false);
        for &(b, offset, vectors) in fixes {
            let n = vectors.size()[0].min(len - offset as i64);
            let v = vectors.narrow(0, 0, n).to_device(tokens.device()).to_kind(tokens.kind());
            tokens.get(b as i64).narrow(0, offset as i64, n).copy_(&v);
        }
        tokens + self.position_embedding.narrow(0, 0, len).unsqueeze(0)
    }

    /// Every hidden state for `input_ids` `[B, L]` (int64, L ≤ max positions): entry 0 is the
    /// embedding output and entry i the output of layer i, as HF's `hidden_states` (length
    /// layers + 1). The final layer norm is not applied.
    pub fn hidden_states(&self, input_ids: &Tensor) -> Vec<Tensor> {
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        states.push(self.embed_with(input_ids, &[]));
        for layer in &self.layers {
            let next = layer.forward(states.last().expect("non-empty"));
            states.push(next);
        }
        states
    }

    /// The SD1 conditioning for `input_ids` with A1111's clip skip: `hidden_states[-clip_skip]`
    /// followed by the final layer norm (clip skip 1 is the last layer). `clip_skip` is clamped
    /// to the available layers; the layers past the chosen one are not run.
    pub fn encode(&self, input_ids: &Tensor, clip_skip: usize) -> Tensor {
        self.encode_with_embeddings(input_ids, &[], clip_skip)
    }

    /// [`encode`](Self::encode) with textual-inversion vectors: each `(batch index, offset,
    /// vectors [n, width])` overwrites the token embeddings at `offset..offset+n` before the
    /// position embeddings are added (A1111's `EmbeddingsWithFixes`).
    pub fn encode_with_embeddings(
        &self,
        input_ids: &Tensor,
        fixes: &[crate::conditioning::EmbeddingFix],
        clip_skip: usize,
    ) -> Tensor {
        let n = clip_skip.clamp(1, self.layers.len());
        let mut x = self.embed_with(input_ids, fixes);
        for layer in &self.layers[..self.layers.len() + 1 - n] {
            x = layer.forward(&x);
        }
        self.final_layer_norm.forward(&x)
    }

    /// Applies the final layer norm (for callers that pick their own hidden state).
    pub fn final_layer_norm(&self, x: &Tensor) -> Tensor {
        self.final_layer_norm.forward(x)
    }
}
