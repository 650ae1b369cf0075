//! The KL autoencoder shared by SD1, SD2 and SDXL: port of diffusers `AutoencoderKL` (equivalently
//! LDM `AutoencoderKL` with `ddconfig`), addressed by LDM key names (`encoder.down.L.block.j`,
//! `decoder.up.L.block.j`, `mid.attn_1`, `quant_conv`, …; formats spec §2.6).
//!
//! No latent scaling happens here: [`Vae::encode`] returns the raw posterior and [`Vae::decode`]
//! expects raw latents, because the factor (0.18215 for SD1/2, 0.13025 for SDXL) belongs to the
//! base model family, not to the VAE file.

mod blocks;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm};
use crate::weights::{TensorSource, Weights};

use blocks::{AttnBlock, Downsample, ResnetBlock, Upsample, EPS};

/// Shape of a KL autoencoder (LDM `ddconfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// Channels of the highest-resolution level.
    pub ch: i64,
    /// Channels of level `L` are `ch · ch_mult[L]`; `len − 1` = number of 2× downsamplings.
    pub ch_mult: Vec<i64>,
    /// ResBlocks per encoder level (the decoder has one more).
    pub num_res_blocks: i64,
    /// Channels of the encoder output (doubled: mean ‖ logvar) and decoder input.
    pub z_channels: i64,
    /// Channels of the latent the diffusion model sees (after `quant_conv`).
    pub embed_dim: i64,
    pub in_channels: i64,
    pub out_channels: i64,
    pub norm_groups: i64,
}

impl VaeConfig {
    /// The SD VAE (kl-f8): 83.7 M parameters.
    pub fn sd() -> Self {
        VaeConfig {
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 4,
            embed_dim: 4,
            in_channels: 3,
            out_channels: 3,
            norm_groups: 32,
        }
    }

    /// Reads the architecture from tensor shapes under `prefix` (`"first_stage_model."` in
    /// checkpoints, `""` for standalone VAE files; a missing trailing dot is added).
    pub fn detect(src: &dyn TensorSource, prefix: &str) -> Result<VaeConfig> {
        let prefix = if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_string()
        } else {
            format!("{prefix}.")
        };
        let full = |name: &str| format!("{prefix}{name}");
        let dim = |name: &str, i: usize, why: &str| -> Result<i64> {
            let shape = src.info(&full(name)).map(|info| info.shape);
            shape.as_ref().and_then(|s| s.get(i).copied()).ok_or_else(|| Error::UnknownCheckpoint {
                file: src.origin().to_path_buf(),
                reason: match shape {
                    None => format!("not a VAE under `{prefix}`: expected tensor `{}` ({why})", full(name)),
                    Some(s) => format!("VAE tensor `{}` has shape {s:?}, too few dimensions", full(name)),
                },
            })
        };

        let ch = dim("encoder.conv_in.weight", 0, "encoder input conv")?;
        let in_channels = dim("encoder.conv_in.weight", 1, "encoder input conv")?;
        let block_conv = |level: i64, j: i64| format!("encoder.down.{level}.block.{j}.conv1.weight");
        let levels = (0..).take_while(|&l| src.contains(&full(&block_conv(l, 0)))).count() as i64;
        if levels == 0 {
            dim(&block_conv(0, 0), 0, "first encoder ResBlock")?;
        }
        let mut ch_mult = Vec::with_capacity(levels as usize);
        for level in 0..levels {
            let channels = dim(&block_conv(level, 0), 0, "encoder ResBlock")?;
            if channels % ch != 0 {
                return Err(Error::UnknownCheckpoint {
                    file: src.origin().to_path_buf(),
                    reason: format!(
                        "`{}` has {channels} channels, not a multiple of ch {ch}",
                        full(&block_conv(level, 0))
                    ),
                });
            }
            ch_mult.push(channels / ch);
        }
        let num_res_blocks = (0..).take_while(|&j| src.contains(&full(&block_conv(0, j)))).count() as i64;

        Ok(VaeConfig {
            ch,
            ch_mult,
            num_res_blocks,
            z_channels: dim("decoder.conv_in.weight", 1, "decoder input conv")?,
            embed_dim: dim("post_quant_conv.weight", 1, "post-quant conv")?,
            in_channels,
            out_channels: dim("decoder.conv_out.weight", 0, "decoder output conv")?,
            norm_groups: 32,
        })
    }
}

/// `mid.block_1` → `mid.attn_1` → `mid.block_2`, at the lowest resolution of both halves.
#[derive(Debug)]
struct MidBlock {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl MidBlock {
    fn new(w: &Weights, channels: i64, groups: i64) -> Result<Self> {
        Ok(MidBlock {
            block_1: ResnetBlock::new(&w.pp("block_1"), channels, channels, groups)?,
            attn_1: AttnBlock::new(&w.pp("attn_1"), channels, groups)?,
            block_2: ResnetBlock::new(&w.pp("block_2"), channels, channels, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.block_2.forward(&self.attn_1.forward(&self.block_1.forward(x)))
    }
}

/// Image → `2·z_channels` moments.
#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    /// Per level: its ResBlocks and, except the last level, a downsampler.
    down: Vec<(Vec<ResnetBlock>, Option<Downsample>)>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(w: &Weights, c: &VaeConfig) -> Result<Self> {
        let g = c.norm_groups;
        let conv_in = Conv2d::new(&w.pp("conv_in"), c.in_channels, c.ch, 3, 1, 1)?;
        let mut ch = c.ch;
        let mut down = Vec::with_capacity(c.ch_mult.len());
        for (level, mult) in c.ch_mult.iter().enumerate() {
            let lw = w.pp(format!("down.{level}"));
            let out_ch = c.ch * mult;
            let mut blocks = Vec::new();
            for j in 0..c.num_res_blocks {
                blocks.push(ResnetBlock::new(&lw.pp(format!("block.{j}")), ch, out_ch, g)?);
                ch = out_ch;
            }
            let sampler = if level + 1 < c.ch_mult.len() {
                Some(Downsample::new(&lw.pp("downsample"), ch)?)
            } else {
                None
            };
            down.push((blocks, sampler));
        }
        Ok(Encoder {
            conv_in,
            down,
            mid: MidBlock::new(&w.pp("mid"), ch, g)?,
            norm_out: GroupNorm::new(&w.pp("norm_out"), g, ch, EPS)?,
            conv_out: Conv2d::new(&w.pp("conv_out"), ch, 2 * c.z_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for (blocks, sampler) in &self.down {
            for block in blocks {
                h = block.forward(&h);
            }
            if let Some(sampler) = sampler {
                h = sampler.forward(&h);
            }
        }
        h = self.mid.forward(&h);
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// `z_channels` latent → image.
#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    /// In execution order, lowest resolution first: LDM `up.{levels−1}` down to `up.0`. Each
    /// level's ResBlocks and, except `up.0`, an upsampler.
    up: Vec<(Vec<ResnetBlock>, Option<Upsample>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(w: &Weights, c: &VaeConfig) -> Result<Self> {
        let g = c.norm_groups;
        let mut ch = c.ch * c.ch_mult.last().copied().unwrap_or(1);
        let conv_in = Conv2d::new(&w.pp("conv_in"), c.z_channels, ch, 3, 1, 1)?;
        let mid = MidBlock::new(&w.pp("mid"), ch, g)?;
        let mut up = Vec::with_capacity(c.ch_mult.len());
        // LDM numbers decoder levels like the encoder's (up.0 = full resolution) but runs them
        // from the last: diffusers `up_blocks.i` is LDM `up.{levels−1−i}`.
        for (level, mult) in c.ch_mult.iter().enumerate().rev() {
            let lw = w.pp(format!("up.{level}"));
            let out_ch = c.ch * mult;
            let mut blocks = Vec::new();
            for j in 0..=c.num_res_blocks {
                blocks.push(ResnetBlock::new(&lw.pp(format!("block.{j}")), ch, out_ch, g)?);
                ch = out_ch;
            }
            let sampler = if level > 0 { Some(Upsample::new(&lw.pp("upsample"), ch)?) } else { None };
            up.push((blocks, sampler));
        }
        Ok(Decoder {
            conv_in,
            mid,
            up,
            norm_out: GroupNorm::new(&w.pp("norm_out"), g, ch, EPS)?,
            conv_out: Conv2d::new(&w.pp("conv_out"), ch, c.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid.forward(&self.conv_in.forward(z));
        for (blocks, sampler) in &self.up {
            for block in blocks {
                h = block.forward(&h);
            }
            if let Some(sampler) = sampler {
                h = sampler.forward(&h);
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// The KL autoencoder: [`encode`](Vae::encode) images in [−1, 1] to a diagonal Gaussian over
/// latents, [`decode`](Vae::decode) latents back to images.
#[derive(Debug)]
pub struct Vae {
    config: VaeConfig,
    kind: Kind,
    encoder: Encoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    decoder: Decoder,
}

impl Vae {
    /// Builds the VAE from `w`, already positioned at the VAE prefix (`w.pp("first_stage_model")`
    /// for checkpoints, `w` itself for standalone files). Tensors are shape-checked against `config`.
    pub fn new(w: &Weights, config: &VaeConfig) -> Result<Vae> {
        let c = config;
        Ok(Vae {
            config: c.clone(),
            kind: w.placement().kind,
            encoder: Encoder::new(&w.pp("encoder"), c)?,
            quant_conv: Conv2d::new(&w.pp("quant_conv"), 2 * c.z_channels, 2 * c.embed_dim, 1, 1, 0)?,
            post_quant_conv: Conv2d::new(&w.pp("post_quant_conv"), c.embed_dim, c.z_channels, 1, 1, 0)?,
            decoder: Decoder::new(&w.pp("decoder"), c)?,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Raw latents `[B, embed_dim, h, w]` (already divided by the family's scaling factor) →
    /// images `[B, out_channels, h·2^(levels−1), w·2^(levels−1)]`, nominally in [−1, 1] (not clamped).
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let z = z.to_kind(self.kind);
        self.decoder.forward(&self.post_quant_conv.forward(&z))
    }

    /// Images `[B, in_channels, H, W]` in [−1, 1] → `(mean, logvar)`, each `[B, embed_dim, H/f, W/f]`,
    /// unscaled. logvar is clamped to [−30, 20] as diffusers' and LDM's
    /// `DiagonalGaussianDistribution` do. Sides should be multiples of 2^(levels−1).
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = x.to_kind(self.kind);
        let moments = self.quant_conv.forward(&self.encoder.forward(&x));
        let parts = moments.chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].clamp(-30.0, 20.0))
    }
}
