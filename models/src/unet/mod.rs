//! The SD1.x denoising UNet: port of diffusers `UNet2DConditionModel` (equivalently LDM
//! `openaimodel.UNetModel`), addressed by LDM single-file key names (`input_blocks.N.j`,
//! `middle_block.j`, `output_blocks.N.j`, `time_embed`, `out`; formats spec §2.2–2.5).
//!
//! The architecture is not hard-coded: [`UnetConfig::detect`] reads channel counts, level count,
//! res blocks per level, transformer depths, context width and projection style from tensor
//! shapes, so the real SD1.5 (320 channels), inpainting/pix2pix variants (9/8 input channels),
//! SD2-style linear projections and tiny test models all take the same code path.

mod attention;
mod embeddings;
mod resnet;

use std::collections::HashSet;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm};
use crate::weights::{TensorSource, Weights};

pub use embeddings::timestep_embedding;

use attention::{SpatialTransformer, TransformerShape};
use embeddings::TimestepMlp;
use resnet::{Downsample, ResBlock, Upsample};

/// How attention heads are sized. SD1 fixes the head count (`num_heads=8`, head width grows
/// with the channels); SD2 and SDXL fix the head width (`num_head_channels=64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionHeads {
    Count(i64),
    Dim(i64),
}

impl AttentionHeads {
    /// `(heads, head_dim)` for a transformer over `channels` channels.
    pub fn split(self, channels: i64) -> (i64, i64) {
        match self {
            AttentionHeads::Count(n) => (n, channels / n),
            AttentionHeads::Dim(d) => (channels / d, d),
        }
    }
}

/// Shape of a UNet, as found in LDM `UNetModel` configs.
#[derive(Clone, Debug, PartialEq)]
pub struct UnetConfig {
    /// 4, or 9 for inpainting, 8 for instruct-pix2pix (spec §5.3).
    pub in_channels: i64,
    pub out_channels: i64,
    /// Channels of level 0 (`input_blocks.0.0` output); also the sinusoidal embedding width.
    pub model_channels: i64,
    /// Channels of level `L` are `model_channels · channel_mult[L]`.
    pub channel_mult: Vec<i64>,
    /// ResBlocks per level on the way down (the way up has one more).
    pub num_res_blocks: i64,
    /// Transformer blocks per SpatialTransformer at each level; 0 = no attention at that level.
    pub transformer_depth: Vec<i64>,
    /// Transformer blocks in `middle_block.1`.
    pub mid_transformer_depth: i64,
    /// Width of the text conditioning (`attn2.to_k` input): 768 for SD1.
    pub context_dim: i64,
    pub heads: AttentionHeads,
    /// SD2/SDXL: `proj_in`/`proj_out` are linears over tokens rather than 1×1 convolutions.
    pub use_linear_projection: bool,
    /// Width of the timestep embedding after `time_embed` (4 · model_channels in every SD model).
    pub time_embed_dim: i64,
    pub norm_groups: i64,
    /// Input width of `label_emb` (SDXL 2816, unCLIP); `None` for SD1/SD2. Detected so callers can
    /// tell such files apart, but [`Unet::new`] refuses them.
    pub adm_in_channels: Option<i64>,
}

impl UnetConfig {
    /// The SD1.x UNet (v1-inference.yaml): 859.5 M parameters.
    pub fn v1_5() -> Self {
        UnetConfig {
            in_channels: 4,
            out_channels: 4,
            model_channels: 320,
            channel_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            transformer_depth: vec![1, 1, 1, 0],
            mid_transformer_depth: 1,
            context_dim: 768,
            heads: AttentionHeads::Count(8),
            use_linear_projection: false,
            time_embed_dim: 1280,
            norm_groups: 32,
            adm_in_channels: None,
        }
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.channel_mult.len()
    }

    /// Reads the architecture from tensor shapes under `prefix` (e.g. `"model.diffusion_model."`
    /// for single-file checkpoints, `""` for UNet-only files; a missing trailing dot is added).
    /// The rules follow ComfyUI `detect_unet_config` (spec §5.1).
    pub fn detect(src: &dyn TensorSource, prefix: &str) -> Result<UnetConfig> {
        let prefix = if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_string()
        } else {
            format!("{prefix}.")
        };
        let full = |name: &str| format!("{prefix}{name}");
        let missing = |name: &str, why: &str| Error::UnknownCheckpoint {
            file: src.origin().to_path_buf(),
            reason: format!("not a UNet under `{prefix}`: expected tensor `{}` ({why})", full(name)),
        };
        let shape = |name: &str, why: &str| -> Result<Vec<i64>> {
            src.info(&full(name)).map(|i| i.shape).ok_or_else(|| missing(name, why))
        };
        let has = |name: &str| src.contains(&full(name));
        let dim = |s: &[i64], i: usize, name: &str| -> Result<i64> {
            s.get(i).copied().ok_or_else(|| Error::UnknownCheckpoint {
                file: src.origin().to_path_buf(),
                reason: format!("tensor `{}` has shape {s:?}, too few dimensions", full(name)),
            })
        };

        let conv_in = shape("input_blocks.0.0.weight", "conv_in")?;
        let model_channels = dim(&conv_in, 0, "input_blocks.0.0.weight")?;
        let in_channels = dim(&conv_in, 1, "input_blocks.0.0.weight")?;
        let out_channels = dim(&shape("out.2.weight", "output conv")?, 0, "out.2.weight")?;
        let time_embed_dim =
            dim(&shape("time_embed.0.weight", "timestep embedding")?, 0, "time_embed.0.weight")?;

        // Input-block indices present, and which of them are downsamplers (`N.0.op`).
        let names: HashSet<String> = src.names().into_iter().collect();
        let mut blocks = Vec::new();
        let mut ops = Vec::new();
        let input_prefix = full("input_blocks.");
        for name in &names {
            let Some(rest) = name.strip_prefix(&input_prefix) else { continue };
            let Some((index, tail)) = rest.split_once('.') else { continue };
            let Ok(index) = index.parse::<i64>() else { continue };
            blocks.push(index);
            if tail == "0.op.weight" {
                ops.push(index);
            }
        }
        ops.sort_unstable();
        let last_block = blocks.iter().copied().max().unwrap_or(0);
        let num_res_blocks = match ops.first() {
            Some(&first) => first - 1,
            None => last_block,
        };
        let levels = ops.len() + 1;
        let uniform = num_res_blocks >= 1
            && ops.iter().enumerate().all(|(l, &op)| op == (num_res_blocks + 1) * (l as i64 + 1))
            && last_block == (num_res_blocks + 1) * (levels as i64 - 1) + num_res_blocks;
        if !uniform {
            return Err(Error::UnknownCheckpoint {
                file: src.origin().to_path_buf(),
                reason: format!(
                    "UNet under `{prefix}` has downsamplers at input blocks {ops:?} and {} input blocks: \
                     not a uniform number of res blocks per level",
                    last_block + 1
                ),
            });
        }

        let depth_at = |block: &str| {
            (0..).take_while(|n| has(&format!("{block}.1.transformer_blocks.{n}.norm1.weight"))).count()
                as i64
        };
        let mut channel_mult = Vec::with_capacity(levels);
        let mut transformer_depth = Vec::with_capacity(levels);
        for level in 0..levels as i64 {
            let block = format!("input_blocks.{}", (num_res_blocks + 1) * level + 1);
            let conv = format!("{block}.0.in_layers.2.weight");
            let channels = dim(&shape(&conv, "first ResBlock of a level")?, 0, &conv)?;
            if channels % model_channels != 0 {
                return Err(Error::UnknownCheckpoint {
                    file: src.origin().to_path_buf(),
                    reason: format!(
                        "`{}` has {channels} channels, not a multiple of model_channels {model_channels}",
                        full(&conv)
                    ),
                });
            }
            channel_mult.push(channels / model_channels);
            transformer_depth.push(depth_at(&block));
        }

        let mid_transformer_depth = depth_at("middle_block");
        if mid_transformer_depth == 0 {
            return Err(missing("middle_block.1.transformer_blocks.0.norm1.weight", "mid-block transformer"));
        }
        let to_k = "middle_block.1.transformer_blocks.0.attn2.to_k.weight";
        let context_dim = dim(&shape(to_k, "cross-attention key")?, 1, to_k)?;
        let use_linear_projection =
            shape("middle_block.1.proj_in.weight", "transformer input projection")?.len() == 2;
        let heads = if use_linear_projection { AttentionHeads::Dim(64) } else { AttentionHeads::Count(8) };
        let adm_in_channels = if has("label_emb.0.0.weight") {
            Some(dim(&shape("label_emb.0.0.weight", "class embedding")?, 1, "label_emb.0.0.weight")?)
        } else {
            None
        };

        Ok(UnetConfig {
            in_channels,
            out_channels,
            model_channels,
            channel_mult,
            num_res_blocks,
            transformer_depth,
            mid_transformer_depth,
            context_dim,
            heads,
            use_linear_projection,
            time_embed_dim,
            norm_groups: 32,
            adm_in_channels,
        })
    }

    fn transformer(&self, channels: i64, depth: i64) -> TransformerShape {
        let (heads, head_dim) = self.heads.split(channels);
        TransformerShape {
            channels,
            context_dim: self.context_dim,
            heads,
            head_dim,
            depth,
            linear_projection: self.use_linear_projection,
            groups: self.norm_groups,
        }
    }
}

/// One entry of `input_blocks`: a ResBlock (with a transformer at attention levels) or a
/// downsampler.
#[derive(Debug)]
// About a dozen per model, built once: boxing the big variant would save nothing that matters.
#[allow(clippy::large_enum_variant)]
enum InputBlock {
    Res(ResBlock, Option<SpatialTransformer>),
    Down(Downsample),
}

/// One entry of `output_blocks`: ResBlock over the concatenated skip, optional transformer,
/// and an upsampler at the end of every level but the last.
#[derive(Debug)]
struct OutputBlock {
    res: ResBlock,
    attn: Option<SpatialTransformer>,
    up: Option<Upsample>,
}

/// One sub-module of the forward pass ([`Unet::plan`]).
#[derive(Clone, Copy, Debug)]
enum Part {
    Input(usize),
    InputAttn(usize),
    MidRes1,
    MidAttn,
    MidRes2,
    OutputRes(usize),
    OutputAttn(usize),
    OutputUp(usize),
}

/// A segment and the activations it reads: `input` (the previous segment's output), the skip
/// an output ResBlock concatenates, and the activation whose size an upsampler matches.
#[derive(Clone, Copy, Debug)]
struct SegmentRef {
    part: Part,
    input: usize,
    skip: Option<usize>,
    like: Option<usize>,
}

/// The conditional denoising UNet.
#[derive(Debug)]
pub struct Unet {
    config: UnetConfig,
    kind: Kind,
    time_embed: TimestepMlp,
    conv_in: Conv2d,
    input_blocks: Vec<InputBlock>,
    mid_res1: ResBlock,
    mid_attn: SpatialTransformer,
    mid_res2: ResBlock,
    output_blocks: Vec<OutputBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Unet {
    /// Builds the UNet from `w`, already positioned at the UNet prefix (`w.pp("model.diffusion_model")`).
    /// Every tensor is shape-checked against `config`, so a mismatched file fails with
    /// `ShapeMismatch`/`MissingTensor` naming the tensor.
    pub fn new(w: &Weights, config: &UnetConfig) -> Result<Unet> {
        let c = config;
        if c.adm_in_channels.is_some() {
            return Err(Error::UnknownCheckpoint {
                file: w.full_name("label_emb").into(),
                reason: "class/vector-conditioned UNets (label_emb: SDXL, unCLIP) are not supported".into(),
            });
        }
        let levels = c.levels();
        if c.transformer_depth.len() != levels || levels == 0 {
            return Err(Error::UnknownCheckpoint {
                file: w.full_name("").into(),
                reason: format!(
                    "UNet config has {} channel multipliers but {} transformer depths",
                    levels,
                    c.transformer_depth.len()
                ),
            });
        }
        let temb = c.time_embed_dim;
        let groups = c.norm_groups;
        let time_embed = TimestepMlp::new(&w.pp("time_embed"), c.model_channels, temb)?;
        let conv_in = Conv2d::new(&w.pp("input_blocks.0.0"), c.in_channels, c.model_channels, 3, 1, 1)?;

        // Channels of every activation pushed on the skip stack, in push order.
        let mut skip_channels = vec![c.model_channels];
        let mut input_blocks = Vec::new();
        let mut ch = c.model_channels;
        let mut index = 1;
        for level in 0..levels {
            let out_ch = c.model_channels * c.channel_mult[level];
            let depth = c.transformer_depth[level];
            for _ in 0..c.num_res_blocks {
                let bw = w.pp(format!("input_blocks.{index}"));
                let res = ResBlock::new(&bw.pp("0"), ch, out_ch, temb, groups)?;
                let attn = if depth > 0 {
                    Some(SpatialTransformer::new(&bw.pp("1"), c.transformer(out_ch, depth))?)
                } else {
                    None
                };
                input_blocks.push(InputBlock::Res(res, attn));
                ch = out_ch;
                skip_channels.push(ch);
                index += 1;
            }
            if level + 1 < levels {
                let down = Downsample::new(&w.pp(format!("input_blocks.{index}.0")), ch)?;
                input_blocks.push(InputBlock::Down(down));
                skip_channels.push(ch);
                index += 1;
            }
        }

        let mid_res1 = ResBlock::new(&w.pp("middle_block.0"), ch, ch, temb, groups)?;
        let mid_attn =
            SpatialTransformer::new(&w.pp("middle_block.1"), c.transformer(ch, c.mid_transformer_depth))?;
        let mid_res2 = ResBlock::new(&w.pp("middle_block.2"), ch, ch, temb, groups)?;

        let mut output_blocks = Vec::new();
        let mut index = 0;
        for level in (0..levels).rev() {
            let out_ch = c.model_channels * c.channel_mult[level];
            let depth = c.transformer_depth[level];
            for j in 0..=c.num_res_blocks {
                let bw = w.pp(format!("output_blocks.{index}"));
                let skip = skip_channels.pop().expect("one skip per output block by construction");
                let res = ResBlock::new(&bw.pp("0"), ch + skip, out_ch, temb, groups)?;
                ch = out_ch;
                let attn = if depth > 0 {
                    Some(SpatialTransformer::new(&bw.pp("1"), c.transformer(ch, depth))?)
                } else {
                    None
                };
                let up = if level > 0 && j == c.num_res_blocks {
                    // The upsampler follows the transformer when there is one (spec §2.5).
                    let slot = if attn.is_some() { "2" } else { "1" };
                    Some(Upsample::new(&bw.pp(slot), ch)?)
                } else {
                    None
                };
                output_blocks.push(OutputBlock { res, attn, up });
                index += 1;
            }
        }

        Ok(Unet {
            config: c.clone(),
            kind: w.placement().kind,
            time_embed,
            conv_in,
            input_blocks,
            mid_res1,
            mid_attn,
            mid_res2,
            output_blocks,
            // The final norm is LDM `normalization()`, eps 1e-5 like the ResBlocks.
            norm_out: GroupNorm::new(&w.pp("out.0"), groups, ch, 1e-5)?,
            conv_out: Conv2d::new(&w.pp("out.2"), ch, c.out_channels, 3, 1, 1)?,
        })
    }

    pub fn config(&self) -> &UnetConfig {
        &self.config
    }

    /// Predicts noise (or v) for latents `x` `[B, in_channels, H, W]` at float `timesteps` `[B]`
    /// (or one timestep for the whole batch; fractional values allowed) given `context`
    /// `[B, L, context_dim]` (any L, e.g. 77·k for long prompts). Returns `[B, out_channels, H, W]`
    /// in the compute dtype. Any H, W work; sides that are not multiples of 2^(levels−1) are
    /// handled as in diffusers (each upsampler matches its skip's size).
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor, context: &Tensor) -> Tensor {
        let (h, temb) = self.stem(x, timesteps);
        let context = context.to_kind(self.kind);
        let plan = self.plan();
        // Activations no later segment reads are dropped as soon as they are used.
        let mut kept = vec![false; plan.len() + 1];
        for seg in &plan {
            for i in seg.skip.into_iter().chain(seg.like) {
                kept[i] = true;
            }
        }
        let mut acts: Vec<Option<Tensor>> = vec![Some(h)];
        for (i, seg) in plan.iter().enumerate() {
            let out = self.run_segment(seg, &acts, &temb, &context);
            if !kept[i] {
                acts[i] = None;
            }
            acts.push(Some(out));
        }
        let last = acts.pop().flatten().expect("the last activation is always kept");
        self.head(&last)
    }

    /// Timestep embedding and `conv_in`: the frozen stem before the first segment (no LoRA
    /// targets these layers). Returns the first activation and the embedding.
    fn stem(&self, x: &Tensor, timesteps: &Tensor) -> (Tensor, Tensor) {
        let x = x.to_kind(self.kind);
        let batch = x.size()[0];
        let timesteps = if timesteps.numel() == 1 && batch != 1 {
            timesteps.reshape([1]).expand([batch], false)
        } else {
            timesteps.shallow_clone()
        };
        let temb =
            timestep_embedding(&timesteps.to_device(x.device()), self.config.model_channels, self.kind);
        let temb = self.time_embed.forward(&temb);
        (self.conv_in.forward(&x), temb)
    }

    /// `norm_out`, SiLU, `conv_out`.
    fn head(&self, h: &Tensor) -> Tensor {
        self.conv_out.forward(&self.norm_out.forward(h).silu())
    }

    /// The forward pass as a chain of segments, one per ResBlock, transformer, downsampler and
    /// upsampler (the sub-modules kohya checkpoints). Segment `i` reads activation `i` (0 is
    /// `conv_in`'s output) and writes activation `i + 1`.
    fn plan(&self) -> Vec<SegmentRef> {
        let mut plan = Vec::new();
        let mut skips = vec![0usize];
        let seg =
            |part, plan: &Vec<SegmentRef>| SegmentRef { part, skip: None, like: None, input: plan.len() };
        for (i, block) in self.input_blocks.iter().enumerate() {
            plan.push(seg(Part::Input(i), &plan));
            if let InputBlock::Res(_, Some(_)) = block {
                plan.push(seg(Part::InputAttn(i), &plan));
            }
            skips.push(plan.len());
        }
        for part in [Part::MidRes1, Part::MidAttn, Part::MidRes2] {
            plan.push(seg(part, &plan));
        }
        for (j, block) in self.output_blocks.iter().enumerate() {
            let skip = skips.pop().expect("one skip per output block by construction");
            plan.push(SegmentRef { skip: Some(skip), ..seg(Part::OutputRes(j), &plan) });
            if block.attn.is_some() {
                plan.push(seg(Part::OutputAttn(j), &plan));
            }
            if block.up.is_some() {
                let like = *skips.last().expect("an upsampler is never the last block");
                plan.push(SegmentRef { like: Some(like), ..seg(Part::OutputUp(j), &plan) });
            }
        }
        plan
    }

    /// Runs one segment on the activations computed so far.
    fn run_segment(
        &self,
        seg: &SegmentRef,
        acts: &[Option<Tensor>],
        temb: &Tensor,
        context: &Tensor,
    ) -> Tensor {
        let get = |i: usize| acts[i].as_ref().expect("the plan keeps every activation a segment reads");
        let h = get(seg.input);
        match seg.part {
            Part::Input(i) => match &self.input_blocks[i] {
                InputBlock::Res(res, _) => res.forward(h, temb),
                InputBlock::Down(down) => down.forward(h),
            },
            Part::InputAttn(i) => match &self.input_blocks[i] {
                InputBlock::Res(_, Some(attn)) => attn.forward(h, context),
                _ => unreachable!("the plan only lists existing transformers"),
            },
            Part::MidRes1 => self.mid_res1.forward(h, temb),
            Part::MidAttn => self.mid_attn.forward(h, context),
            Part::MidRes2 => self.mid_res2.forward(h, temb),
            Part::OutputRes(j) => {
                let skip = get(seg.skip.expect("an output ResBlock reads a skip"));
                self.output_blocks[j].res.forward(&Tensor::cat(&[h, skip], 1), temb)
            }
            Part::OutputAttn(j) => {
                self.output_blocks[j].attn.as_ref().expect("listed by the plan").forward(h, context)
            }
            Part::OutputUp(j) => {
                let like = get(seg.like.expect("an upsampler reads its target size")).size();
                self.output_blocks[j].up.as_ref().expect("listed by the plan").forward(h, [like[2], like[3]])
            }
        }
    }

    /// Training with activation checkpointing: computes `loss_of(prediction)` and back-propagates
    /// it into every tensor that requires a gradient (adapter parameters, and `context`'s graph)
    /// while storing only the activations between segments ([`Self::plan`]).
    ///
    /// The forward pass runs without a graph, keeping each segment's output. Backward then goes
    /// through the segments in reverse: each is recomputed from its stored input with a graph, and
    /// `Σ out · ∂L/∂out` is back-propagated through it, which adds its share to the parameters'
    /// gradients and yields the gradients of its inputs. Only one segment's graph is alive at a
    /// time. The gradients equal plain backward's up to float rounding (sums in another order).
    /// `context` enters every transformer through one leaf; its gradient is back-propagated into
    /// `context`'s own graph (the text encoder) at the end. Returns the loss, detached.
    pub fn backward_checkpointed(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        loss_of: impl FnOnce(&Tensor) -> Tensor,
    ) -> Tensor {
        let plan = self.plan();
        let ctx_leaf = context.detach().to_kind(self.kind).set_requires_grad(context.requires_grad());
        let (acts, temb) = tch::no_grad(|| {
            let (h, temb) = self.stem(x, timesteps);
            let mut acts = vec![Some(h)];
            for seg in &plan {
                let out = self.run_segment(seg, &acts, &temb, &ctx_leaf);
                acts.push(Some(out));
            }
            (acts, temb)
        });
        let leaf = |i: usize| -> Tensor {
            acts[i].as_ref().expect("every activation is kept").detach().set_requires_grad(true)
        };
        let mut grads: Vec<Option<Tensor>> = (0..acts.len()).map(|_| None).collect();
        let add = |slot: &mut Option<Tensor>, g: Tensor| {
            if g.defined() {
                *slot = Some(match slot.take() {
                    Some(prev) => prev + g,
                    None => g,
                });
            }
        };

        let last = leaf(plan.len());
        let loss = tch::with_grad(|| loss_of(&self.head(&last)));
        loss.backward();
        add(&mut grads[plan.len()], last.grad());

        for (i, seg) in plan.iter().enumerate().rev() {
            let Some(grad_out) = grads[i + 1].take() else { continue };
            let mut inputs: Vec<Option<Tensor>> = (0..=i).map(|_| None).collect();
            inputs[seg.input] = Some(leaf(seg.input));
            if let Some(s) = seg.skip {
                inputs[s] = Some(leaf(s));
            }
            if let Some(l) = seg.like {
                inputs[l] = acts[l].as_ref().map(Tensor::shallow_clone);
            }
            // Under `with_grad` as a whole: callers may run with gradients disabled (the engine).
            tch::with_grad(|| {
                let out = self.run_segment(seg, &inputs, &temb, &ctx_leaf);
                (out * grad_out).sum(Kind::Float).backward();
            });
            for j in std::iter::once(seg.input).chain(seg.skip) {
                let g = inputs[j].as_ref().expect("set above").grad();
                add(&mut grads[j], g);
            }
        }
        // Activation 0 comes from the frozen stem: nothing before it needs a gradient.
        if context.requires_grad() {
            let g = ctx_leaf.grad();
            if g.defined() {
                tch::with_grad(|| (context * g.to_kind(context.kind())).sum(Kind::Float).backward());
            }
        }
        loss.detach()
    }
}
