//! LoRA training of a person the way kohya sd-scripts' `train_network.py` does it for SD1.5
//! epsilon-prediction models (spec: `training.md`).
//!
//! - [`optim`]: DAdaptAdam, Prodigy and AdamW, step-for-step equal to the reference packages.
//! - [`schedule`]: the LR schedules (transformers' LambdaLR factors).
//! - [`loss`]: the DDPM noise schedule, noise offset, timestep sampling, min-SNR-γ and prior-loss
//!   weighting.
//! - [`lora_net`]: the trainable LoRA network and how it is injected into the frozen model.
//! - [`save`]: kohya-format `.safetensors` with `ss_*` metadata and `sshs_*` hashes.
//! - [`Trainer`] (here): caches latents and token ids, then runs optimizer steps.
//!
//! Not here yet: datasets (folder parsing, captions, buckets), gradient accumulation, mixed
//! precision, dropout variants, sampling during training and TensorBoard logs.

pub mod lora_net;
pub mod loss;
pub mod optim;
pub mod save;
pub mod schedule;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::StableDiffusion;
use crate::clip::tokenizer::{ClipTokenizer, EOS};
use crate::error::{Error, Result};
use crate::pipeline::SD1_LATENT_SCALE;

use lora_net::{LoraConfig, LoraNetwork};
use loss::{LossWeighting, NoiseSchedule};
use optim::{Optimizer, OptimizerConfig};
use schedule::{LrSchedule, LrScheduleKind};

/// Training errors share one constructor so they read alike (`training: …`).
pub(crate) fn train_error(message: String) -> Error {
    Error::Torch(tch::TchError::Torch(format!("training: {message}")))
}

/// One training image.
#[derive(Debug)]
pub struct TrainImage {
    /// `[3, H, W]` in [−1, 1]; every image of a run has the same size (no buckets yet).
    pub pixels: Tensor,
    pub caption: String,
    /// A regularisation image: its loss is scaled by `prior_loss_weight`.
    pub is_reg: bool,
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
    /// Seeds libtorch's global generator at the start (LoRA init, latent sampling, noise, order).
    pub seed: i64,
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
        }
    }
}

/// What one optimizer step logged (sd-scripts' TensorBoard values).
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// `global_step` after the step (1-based).
    pub step: u64,
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

/// Runs training steps on a loaded model. The model's weights are modified in place while the
/// trainer lives and restored when it is dropped (or by [`Trainer::finish`]).
pub struct Trainer<'a> {
    sd: &'a StableDiffusion,
    config: TrainConfig,
    network: LoraNetwork,
    optimizer: Optimizer,
    schedule: LrSchedule,
    noise: NoiseSchedule,
    /// Cached scaled latents `[1, 4, h, w]` (one posterior sample each, as kohya's cache).
    latents: Vec<Tensor>,
    ids: Vec<Tensor>,
    is_reg: Vec<bool>,
    order: Vec<usize>,
    cursor: usize,
    step: u64,
}

impl<'a> Trainer<'a> {
    /// Seeds the generator, builds the network, caches latents and token ids.
    pub fn new(
        sd: &'a StableDiffusion,
        tokenizer: &ClipTokenizer,
        images: &[TrainImage],
        config: TrainConfig,
    ) -> Result<Self> {
        if images.is_empty() {
            return Err(train_error("no training images".into()));
        }
        if config.batch_size == 0 {
            return Err(train_error("batch size must be at least 1".into()));
        }
        tch::manual_seed(config.seed);
        let device = sd.placement.device;
        let res_blocks = sd.config.unet.num_res_blocks as usize;
        let network = LoraNetwork::new(&sd.params, res_blocks, &config.network, device)?;
        let te_lr = config.text_encoder_lr.unwrap_or(config.learning_rate);
        let unet_lr = config.unet_lr.unwrap_or(config.learning_rate);
        let groups = network.param_groups(te_lr, unet_lr);
        if groups.is_empty() {
            return Err(train_error("every parameter group has lr 0: nothing to train".into()));
        }
        let optimizer = Optimizer::new(config.optimizer.clone(), groups);
        let schedule = LrSchedule::new(
            config.scheduler,
            config.warmup_steps,
            config.max_train_steps,
            config.learning_rate,
        )?;

        let (latents, ids) = tch::no_grad(|| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
            let mut latents = Vec::with_capacity(images.len());
            let mut ids = Vec::with_capacity(images.len());
            for img in images {
                let x = img.pixels.unsqueeze(0).to_device(device);
                let (mean, logvar) = sd.vae.encode(&x);
                let sample = &mean + (&logvar * 0.5).exp() * mean.randn_like();
                latents.push(sample.to_kind(Kind::Float) * SD1_LATENT_SCALE);
                let tokens = tokenizer.encode_framed(&img.caption, EOS);
                ids.push(Tensor::from_slice(&tokens).unsqueeze(0).to_device(device));
            }
            Ok((latents, ids))
        })?;
        let shape = latents[0].size();
        if let Some(bad) = latents.iter().position(|l| l.size() != shape) {
            return Err(train_error(format!(
                "image {bad} has latent shape {:?}, image 0 {shape:?}: all images must share one size",
                latents[bad].size()
            )));
        }
        Ok(Trainer {
            sd,
            network,
            optimizer,
            schedule,
            noise: NoiseSchedule::sd1(),
            is_reg: images.iter().map(|i| i.is_reg).collect(),
            latents,
            ids,
            order: Vec::new(),
            cursor: 0,
            step: 0,
            config,
        })
    }

    pub fn network(&self) -> &LoraNetwork {
        &self.network
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Optimizer steps taken.
    pub fn global_step(&self) -> u64 {
        self.step
    }

    /// The next batch's sample indices: consecutive slices of a fresh random permutation each
    /// epoch (the last slice of an epoch may be short).
    fn next_indices(&mut self) -> Vec<usize> {
        if self.cursor >= self.order.len() {
            let perm = Tensor::randperm(self.latents.len() as i64, (Kind::Int64, Device::Cpu));
            self.order =
                Vec::<i64>::try_from(&perm).unwrap_or_default().into_iter().map(|i| i as usize).collect();
            self.cursor = 0;
        }
        let end = (self.cursor + self.config.batch_size).min(self.order.len());
        let out = self.order[self.cursor..end].to_vec();
        self.cursor = end;
        out
    }

    /// Draws a batch of cached samples with fresh noise and timesteps, without training on it.
    pub fn draw_batch(&mut self) -> Result<FixedBatch> {
        let idx = self.next_indices();
        let latents =
            Tensor::cat(&idx.iter().map(|&i| self.latents[i].shallow_clone()).collect::<Vec<_>>(), 0);
        let ids = Tensor::cat(&idx.iter().map(|&i| self.ids[i].shallow_clone()).collect::<Vec<_>>(), 0);
        let mut noise = latents.randn_like();
        if let Some(offset) = self.config.noise_offset {
            noise = loss::apply_noise_offset(&noise, offset, &loss::noise_offset_draw(&noise));
        }
        let timesteps =
            loss::sample_timesteps(idx.len() as i64, self.config.min_timestep, self.config.max_timestep)?;
        Ok(FixedBatch {
            latents,
            ids,
            noise,
            timesteps,
            is_reg: idx.iter().map(|&i| self.is_reg[i]).collect(),
        })
    }

    /// The weighted batch loss of the model with the network applied (a graph when gradients are
    /// enabled).
    fn forward_loss(&self, batch: &FixedBatch) -> Tensor {
        self.network.inject();
        let context = self.sd.clip.encode(&batch.ids, self.config.clip_skip);
        let noisy = self.noise.add_noise(&batch.latents, &batch.noise, &batch.timesteps);
        let t = batch.timesteps.to_kind(Kind::Float).to_device(noisy.device());
        let pred = self.sd.unet.forward(&noisy, &t, &context);
        let per_sample = loss::per_sample_loss(
            &self.noise,
            &pred,
            &batch.noise,
            &batch.timesteps,
            &batch.is_reg,
            &self.config.weighting,
        );
        loss::batch_loss(&per_sample)
    }

    /// The loss on `batch` with the current network, without gradients.
    pub fn eval_loss(&self, batch: &FixedBatch) -> f64 {
        let value = tch::no_grad(|| self.forward_loss(batch).double_value(&[]));
        self.network.restore();
        value
    }

    /// One optimizer step: batch, forward, backward, gradient clip, optimizer and scheduler step.
    pub fn train_step(&mut self) -> Result<StepRecord> {
        let batch = self.draw_batch()?;
        let loss = tch::with_grad(|| self.forward_loss(&batch));
        let value = loss.double_value(&[]);
        self.optimizer.zero_grad();
        loss.backward();
        // The targets hold this step's graph until the next injection; dropping it now frees the
        // activations' memory early.
        self.network.restore();
        if self.config.max_grad_norm > 0.0 {
            clip_grad_norm(&self.network.parameters(), self.config.max_grad_norm);
        }
        self.optimizer.step(self.schedule.factor(self.step))?;
        self.step += 1;
        let lr = self.config.unet_lr.unwrap_or(self.config.learning_rate) * self.schedule.factor(self.step);
        let d_lr = self.optimizer.config().is_adaptive().then(|| self.optimizer.d() * lr);
        Ok(StepRecord { step: self.step, loss: value, lr, d_lr })
    }

    /// Runs the remaining steps up to `max_train_steps`, calling `on_step` after each.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepRecord)) -> Result<Vec<StepRecord>> {
        let mut records = Vec::new();
        while self.step < self.config.max_train_steps {
            let r = self.train_step()?;
            on_step(&r);
            records.push(r);
        }
        Ok(records)
    }

    /// Restores the model's weights and hands over the trained network.
    pub fn finish(self) -> LoraNetwork {
        self.network.restore();
        self.network
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
