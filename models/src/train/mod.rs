//! LoRA training of a person the way kohya sd-scripts' `train_network.py` does it for SD1.5
//! epsilon-prediction models (spec: `training.md`).
//!
//! - [`optim`]: DAdaptAdam, Prodigy and AdamW, step-for-step equal to the reference packages.
//! - [`schedule`]: the LR schedules (transformers' LambdaLR factors).
//! - [`loss`]: the DDPM noise schedule, noise offset, timestep sampling, min-SNR-γ and prior-loss
//!   weighting.
//! - [`lora_net`]: the trainable LoRA network and how it attaches to the frozen model's layers.
//! - [`save`]: kohya-format `.safetensors` with `ss_*` metadata and `sshs_*` hashes.
//! - [`bucket`]: kohya's aspect-ratio buckets; [`dataset`]: repeats, regularisation pairing,
//!   one-bucket batches and per-epoch shuffling, captions; [`plan`]: epochs and steps.
//! - [`latent_cache`]: one posterior sample per image (and its mirror), cached on disk.
//! - [`sample_prompt`]: kohya's sample-prompt lines (`--n --w --h --l --s --d`).
//! - [`TrainSession`]: a run that owns everything but the model, can be saved and resumed;
//!   [`Trainer`] wraps one around a borrowed model.
//!
//! Mixed precision: the frozen model is loaded in bf16 or fp16 ([`MixedPrecision`]), the LoRA
//! parameters stay fp32 and are cast on the fly by the layers; fp16 adds dynamic loss scaling
//! ([`scaler`]). Gradient checkpointing covers the UNet (the
//! text encoder's activations, 77 tokens per sample, are small and kept).
//!
//! Not here yet: gradient accumulation, dropout variants, caption shuffling and dropout options.

pub mod bucket;
pub mod dataset;
pub mod latent_cache;
pub mod lora_net;
pub mod loss;
pub mod optim;
pub mod plan;
pub mod sample_prompt;
pub mod save;
pub mod scaler;
pub mod schedule;
pub mod session;

pub use session::TrainSession;

use std::path::PathBuf;

use tch::Tensor;

use crate::checkpoint::StableDiffusion;
use crate::clip::tokenizer::ClipTokenizer;
use crate::error::{Error, Result};

use lora_net::{LoraConfig, LoraNetwork};
use loss::LossWeighting;
use optim::{Optimizer, OptimizerConfig};
use schedule::LrScheduleKind;

/// Training errors share one constructor so they read alike (`training: …`).
pub(crate) fn train_error(message: String) -> Error {
    Error::Torch(tch::TchError::Torch(format!("training: {message}")))
}

/// One training image.
#[derive(Debug)]
pub struct TrainImage {
    /// `[3, H, W]` in [−1, 1], already resized and cropped to its bucket ([`bucket::assign_bucket`]);
    /// images of different sizes fall in different buckets.
    pub pixels: Tensor,
    pub caption: String,
    /// A regularisation image: its loss is scaled by `prior_loss_weight`.
    pub is_reg: bool,
    /// Times the image is seen per epoch (kohya's folder repeats). For regularisation images this
    /// is the folder's value; the run pairs them with the train total as kohya does
    /// ([`dataset::pair_regularisation`]).
    pub repeats: u32,
}

impl TrainImage {
    /// An image seen once per epoch.
    pub fn new(pixels: Tensor, caption: impl Into<String>, is_reg: bool) -> Self {
        TrainImage { pixels, caption: caption.into(), is_reg, repeats: 1 }
    }

    pub fn with_repeats(mut self, repeats: u32) -> Self {
        self.repeats = repeats;
        self
    }
}

/// The run's settings; defaults follow sd-scripts except where noted.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub network: LoraConfig,
    pub optimizer: OptimizerConfig,
    /// `--learning_rate` (1.0 for the adaptive optimizers).
    pub learning_rate: f64,
    /// `--unet_lr` / `--text_encoder_lr`; `None` uses `learning_rate`.
    pub unet_lr: Option<f64>,
    pub text_encoder_lr: Option<f64>,
    pub scheduler: LrScheduleKind,
    pub warmup_steps: u64,
    pub max_train_steps: u64,
    pub batch_size: usize,
    /// `--noise_offset`.
    pub noise_offset: Option<f64>,
    pub weighting: LossWeighting,
    /// 2 for the guide (hidden_states[−2] + final layer norm).
    pub clip_skip: usize,
    /// Global L2 gradient-norm clip (sd-scripts default 1.0; 0 disables).
    pub max_grad_norm: f64,
    pub min_timestep: i64,
    pub max_timestep: i64,
    /// The run's seed: LoRA init, latent samples, and (per batch) noise, timesteps, flips and order.
    pub seed: i64,
    /// `--flip_aug`: each sample is mirrored with p = 0.5 per fetch; both latents are cached.
    pub flip_aug: bool,
    /// `--cache_latents_to_disk` with this folder; `None` caches in memory only.
    pub latent_cache_dir: Option<PathBuf>,
    /// `--mixed_precision`: the dtype the model must be loaded in (the LoRA stays fp32).
    pub mixed_precision: MixedPrecision,
    /// `--gradient_checkpointing`: the UNet stores only its segment boundaries and recomputes
    /// each segment during backward (less memory, about one more forward pass of time).
    pub gradient_checkpointing: bool,
}

/// `--mixed_precision`: which dtype the frozen model computes in. The LoRA parameters, their
/// gradients and the optimizer state stay fp32, and the loss is computed in fp32 (spec §3.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MixedPrecision {
    /// fp32 throughout (`no`).
    #[default]
    No,
    /// bf16 model (`bf16`), the guide's setting on CUDA.
    Bf16,
    /// fp16 model (`fp16`, the kohya_ss GUI's default), with dynamic loss scaling
    /// ([`scaler::LossScaler`]).
    Fp16,
}

impl MixedPrecision {
    /// kohya's name (`ss_mixed_precision`).
    pub fn name(self) -> &'static str {
        match self {
            MixedPrecision::No => "no",
            MixedPrecision::Bf16 => "bf16",
            MixedPrecision::Fp16 => "fp16",
        }
    }

    /// The model's dtype.
    pub fn kind(self) -> tch::Kind {
        match self {
            MixedPrecision::No => tch::Kind::Float,
            MixedPrecision::Bf16 => tch::Kind::BFloat16,
            MixedPrecision::Fp16 => tch::Kind::Half,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            network: LoraConfig::default(),
            optimizer: OptimizerConfig::DAdaptAdam(optim::DAdaptAdamConfig::guide()),
            learning_rate: 1.0,
            unet_lr: None,
            text_encoder_lr: None,
            scheduler: LrScheduleKind::Cosine,
            warmup_steps: 0,
            max_train_steps: 1600,
            batch_size: 1,
            noise_offset: None,
            weighting: LossWeighting::default(),
            clip_skip: 2,
            max_grad_norm: 1.0,
            min_timestep: 0,
            max_timestep: loss::TRAIN_TIMESTEPS,
            seed: 0,
            flip_aug: false,
            latent_cache_dir: None,
            mixed_precision: MixedPrecision::No,
            gradient_checkpointing: false,
        }
    }
}

/// What one optimizer step logged (sd-scripts' TensorBoard values).
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// `global_step` after the step (1-based).
    pub step: u64,
    /// The epoch the step's batch belongs to (1-based).
    pub epoch: u64,
    /// `loss/current`.
    pub loss: f64,
    /// `lr/unet`: the scheduled lr of the next step (`get_last_lr()` after `scheduler.step()`).
    pub lr: f64,
    /// `lr/d*lr`: d after this step × `lr`, for the adaptive optimizers.
    pub d_lr: Option<f64>,
}

/// A batch with everything random fixed, for measuring the loss before and after training.
#[derive(Debug)]
pub struct FixedBatch {
    /// Scaled latents `[B, 4, h, w]`.
    pub latents: Tensor,
    /// Token ids `[B, 77]`.
    pub ids: Tensor,
    pub noise: Tensor,
    pub timesteps: Tensor,
    pub is_reg: Vec<bool>,
}

/// Runs training steps on a loaded model it borrows: a [`TrainSession`] tied to one model. The
/// network is attached to the model only during a step (and detached by [`Trainer::finish`]).
pub struct Trainer<'a> {
    sd: &'a StableDiffusion,
    session: TrainSession,
}

impl<'a> Trainer<'a> {
    /// Seeds the generator, builds the network, caches latents and token ids.
    pub fn new(
        sd: &'a StableDiffusion,
        tokenizer: &ClipTokenizer,
        images: &[TrainImage],
        config: TrainConfig,
    ) -> Result<Self> {
        Ok(Trainer { sd, session: TrainSession::new(sd, tokenizer, images, config)? })
    }

    pub fn network(&self) -> &LoraNetwork {
        self.session.network()
    }

    pub fn optimizer(&self) -> &Optimizer {
        self.session.optimizer()
    }

    pub fn session(&self) -> &TrainSession {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut TrainSession {
        &mut self.session
    }

    /// Optimizer steps taken.
    pub fn global_step(&self) -> u64 {
        self.session.global_step()
    }

    /// Draws a batch of cached samples with fresh noise and timesteps, without training on it.
    pub fn draw_batch(&mut self) -> Result<FixedBatch> {
        self.session.draw_batch()
    }

    /// The loss on `batch` with the current network, without gradients.
    pub fn eval_loss(&self, batch: &FixedBatch) -> f64 {
        self.session.eval_loss(self.sd, batch).unwrap_or(f64::NAN)
    }

    /// One optimizer step: batch, forward, backward, gradient clip, optimizer and scheduler step.
    pub fn train_step(&mut self) -> Result<StepRecord> {
        self.session.step(self.sd)
    }

    /// Runs the remaining steps up to `max_train_steps`, calling `on_step` after each.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepRecord)) -> Result<Vec<StepRecord>> {
        let mut records = Vec::new();
        while self.session.global_step() < self.session.config().max_train_steps {
            let r = self.train_step()?;
            on_step(&r);
            records.push(r);
        }
        Ok(records)
    }

    /// Detaches the network from the model and hands it over.
    pub fn finish(self) -> LoraNetwork {
        self.session.into_network()
    }
}

/// torch `clip_grad_norm_`: scales all gradients by `max_norm / (‖g‖₂ + 1e-6)` when below 1.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    for g in &grads {
        let _ = g.shallow_clone().g_mul_scalar_(coef);
    }
    total
}
