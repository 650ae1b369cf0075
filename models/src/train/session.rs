//! [`TrainSession`]: a LoRA training run that owns everything but the model, so it can live
//! across engine jobs (generation may run between two steps) and be saved and resumed.
//!
//! Reproducibility does not depend on a running random generator: the LoRA init and latent
//! samples come from the run's seed, each batch's noise, timesteps and flips from the seed and the
//! batch's draw number, and each epoch's order from the seed and the epoch (see [`super::dataset`]).
//! Generation jobs that use libtorch's generator between two steps therefore do not change the
//! run, and a session restored by [`TrainSession::load_state`] continues with exactly the batches
//! and losses of an uninterrupted run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::checkpoint::StableDiffusion;
use crate::clip::tokenizer::{ClipTokenizer, EOS};
use crate::error::{Error, Result};
use crate::pipeline::SD1_LATENT_SCALE;
use crate::weights::safetensors_file::{write_atomic, SafetensorsFile};
use crate::weights::TensorSource;

use super::dataset::{self, SplitMix64, TAG_FLIP, TAG_NOISE};
use super::latent_cache::{self, CacheStats};
use super::lora_net::LoraNetwork;
use super::loss::{self, NoiseSchedule};
use super::optim::Optimizer;
use super::scaler::LossScaler;
use super::schedule::LrSchedule;
use super::{train_error, FixedBatch, StepRecord, TrainConfig, TrainImage};

/// The metadata key of a saved state and the version of its layout.
const STATE_KEY: &str = "diffusiond_train_state";
const STATE_VERSION: u64 = 1;

/// One image's cached inputs.
struct Sample {
    /// Scaled latents `[1, 4, h, w]`: one posterior sample, as kohya's cache.
    latent: Tensor,
    /// The mirrored image's latents, with `flip_aug`.
    flipped: Option<Tensor>,
    /// Token ids `[1, 77]`.
    ids: Tensor,
    is_reg: bool,
}

/// A training run that holds no borrow of the model, so it can live across engine jobs.
pub struct TrainSession {
    config: TrainConfig,
    network: LoraNetwork,
    optimizer: Optimizer,
    schedule: LrSchedule,
    noise: NoiseSchedule,
    samples: Vec<Sample>,
    /// Per bucket (one latent size), its entries: sample indices, each repeated as often as the
    /// image is seen per epoch.
    buckets: Vec<Vec<usize>>,
    /// The current epoch (1-based; 0 before the first batch) and its batches.
    epoch: u64,
    batches: Vec<Vec<usize>>,
    cursor: usize,
    /// Batches drawn so far (steps plus any [`TrainSession::draw_batch`] calls).
    draws: u64,
    step: u64,
    /// Optimizer steps actually taken: the schedule's position. Below `step` only when fp16 loss
    /// scaling skipped steps (as accelerate's scheduler does not advance on a skipped step).
    sched_steps: u64,
    /// fp16 only.
    scaler: Option<LossScaler>,
    cache_stats: CacheStats,
}

impl std::fmt::Debug for TrainSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainSession")
            .field("step", &self.step)
            .field("epoch", &self.epoch)
            .field("images", &self.samples.len())
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

impl TrainSession {
    /// Seeds, builds the LoRA network on `sd`'s device, caches latents (and token ids) of `images`.
    /// Images may have different sizes (buckets): each batch is drawn from one size only.
    ///
    /// Any inference LoRA merged into `sd` is taken out first: the network keeps the weights it
    /// finds as the frozen originals.
    pub fn new(
        sd: &StableDiffusion,
        tokenizer: &ClipTokenizer,
        images: &[TrainImage],
        config: TrainConfig,
    ) -> Result<Self> {
        if images.iter().all(|i| i.is_reg) {
            return Err(train_error("no training images".into()));
        }
        if config.batch_size == 0 {
            return Err(train_error("batch size must be at least 1".into()));
        }
        if let Some(bad) = images.iter().position(|i| i.pixels.dim() != 3 || i.pixels.size()[0] != 3) {
            return Err(train_error(format!(
                "image {bad} has shape {:?}, expected [3, H, W]",
                images[bad].pixels.size()
            )));
        }
        sd.apply_loras(&[])?;
        tch::manual_seed(config.seed);
        if sd.placement.kind != config.mixed_precision.kind() {
            return Err(train_error(format!(
                "mixed precision {} needs the model in {:?}, it is in {:?}",
                config.mixed_precision.name(),
                config.mixed_precision.kind(),
                sd.placement.kind
            )));
        }
        let device = sd.placement.device;
        let network = LoraNetwork::new(sd, &config.network)?;
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

        let (latents, cache_stats) = latent_cache::encode_all(
            sd,
            images,
            config.flip_aug,
            config.seed,
            config.latent_cache_dir.as_deref(),
        )?;
        let mut samples = Vec::with_capacity(images.len());
        for (img, (latent, flipped)) in images.iter().zip(latents) {
            let tokens = tokenizer.encode_framed(&img.caption, EOS);
            samples.push(Sample {
                latent: latent * SD1_LATENT_SCALE,
                flipped: flipped.map(|f| f * SD1_LATENT_SCALE),
                ids: Tensor::from_slice(&tokens).unsqueeze(0).to_device(device),
                is_reg: img.is_reg,
            });
        }

        // Repeats: train images as given; reg images as kohya pairs them with the train total.
        let num_train: u64 = images.iter().filter(|i| !i.is_reg).map(|i| u64::from(i.repeats)).sum();
        let reg_given: Vec<u32> = images.iter().filter(|i| i.is_reg).map(|i| i.repeats).collect();
        let mut reg_used = dataset::pair_regularisation(num_train, &reg_given).into_iter();
        let mut by_size: BTreeMap<Vec<i64>, Vec<usize>> = BTreeMap::new();
        for (i, img) in images.iter().enumerate() {
            let repeats = if img.is_reg { reg_used.next().unwrap_or(0) } else { img.repeats };
            let entries = by_size.entry(samples[i].latent.size()).or_default();
            entries.extend(std::iter::repeat_n(i, repeats as usize));
        }
        let buckets: Vec<Vec<usize>> = by_size.into_values().filter(|b| !b.is_empty()).collect();
        if buckets.is_empty() {
            return Err(train_error("every training image has 0 repeats".into()));
        }
        Ok(TrainSession {
            network,
            optimizer,
            schedule,
            noise: NoiseSchedule::sd1(),
            samples,
            buckets,
            epoch: 0,
            batches: Vec::new(),
            cursor: 0,
            draws: 0,
            step: 0,
            sched_steps: 0,
            scaler: (config.mixed_precision == super::MixedPrecision::Fp16).then(LossScaler::default),
            cache_stats,
            config,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn network(&self) -> &LoraNetwork {
        &self.network
    }

    /// Detaches the network from the model and hands it over.
    pub fn into_network(self) -> LoraNetwork {
        self.network.detach();
        self.network
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Optimizer steps taken.
    pub fn global_step(&self) -> u64 {
        self.step
    }

    /// The epoch of the last batch drawn (1-based; 0 before the first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Steps per epoch = number of batches in one pass over the (repeated) dataset.
    pub fn steps_per_epoch(&self) -> u64 {
        dataset::batches_per_epoch(self.buckets.iter().map(|b| b.len() as u64), self.config.batch_size as u64)
    }

    /// Entries per epoch (train and regularisation, with repeats).
    pub fn entries_per_epoch(&self) -> u64 {
        self.buckets.iter().map(|b| b.len() as u64).sum()
    }

    /// Latent size `(w, h)` (in latent pixels) and entry count of every bucket.
    pub fn bucket_sizes(&self) -> Vec<((i64, i64), usize)> {
        self.buckets
            .iter()
            .map(|b| {
                let s = self.samples[b[0]].latent.size();
                ((s[3], s[2]), b.len())
            })
            .collect()
    }

    /// How many latents were read from the disk cache and how many were encoded.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache_stats
    }

    /// The next batch's entries, moving to the next epoch when this one is used up.
    fn next_entries(&mut self) -> Vec<usize> {
        if self.cursor >= self.batches.len() {
            self.epoch += 1;
            self.batches =
                dataset::epoch_batches(&self.buckets, self.config.batch_size, self.config.seed, self.epoch);
            self.cursor = 0;
        }
        self.cursor += 1;
        self.batches[self.cursor - 1].clone()
    }

    /// Draws the next batch with its noise, timesteps and flips, without training on it.
    pub fn draw_batch(&mut self) -> Result<FixedBatch> {
        let idx = self.next_entries();
        let draw = self.draws;
        self.draws += 1;
        let mut flips = SplitMix64::derive(self.config.seed, TAG_FLIP, draw, 0);
        let latents: Vec<Tensor> = idx
            .iter()
            .map(|&i| {
                let s = &self.samples[i];
                match &s.flipped {
                    // p = 0.5 per sample per fetch (§1.10).
                    Some(f) if flips.unit() < 0.5 => f.shallow_clone(),
                    _ => s.latent.shallow_clone(),
                }
            })
            .collect();
        let latents = Tensor::cat(&latents, 0);
        let ids =
            Tensor::cat(&idx.iter().map(|&i| self.samples[i].ids.shallow_clone()).collect::<Vec<_>>(), 0);
        // The tensors' randomness comes from libtorch's generator, seeded per draw (module docs).
        let noise_seed = SplitMix64::derive(self.config.seed, TAG_NOISE, draw, 0).next_u64() >> 1;
        tch::manual_seed(noise_seed as i64);
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
            is_reg: idx.iter().map(|&i| self.samples[i].is_reg).collect(),
        })
    }

    /// The weighted batch loss of `sd` (with the network attached) on `batch`: a graph when
    /// gradients are enabled.
    fn forward_loss(&self, sd: &StableDiffusion, batch: &FixedBatch) -> Tensor {
        let context = sd.clip.encode(&batch.ids, self.config.clip_skip);
        let (noisy, t) = self.noisy_input(batch);
        self.loss_of(&sd.unet.forward(&noisy, &t, &context), batch)
    }

    /// The noised latents and float timesteps the UNet sees.
    fn noisy_input(&self, batch: &FixedBatch) -> (Tensor, Tensor) {
        let noisy = self.noise.add_noise(&batch.latents, &batch.noise, &batch.timesteps);
        let t = batch.timesteps.to_kind(Kind::Float).to_device(noisy.device());
        (noisy, t)
    }

    /// The weighted batch loss of a prediction.
    fn loss_of(&self, pred: &Tensor, batch: &FixedBatch) -> Tensor {
        let per_sample = loss::per_sample_loss(
            &self.noise,
            pred,
            &batch.noise,
            &batch.timesteps,
            &batch.is_reg,
            &self.config.weighting,
        );
        loss::batch_loss(&per_sample)
    }

    /// Forward and backward on `batch` with the network attached, accumulating the parameters'
    /// gradients (of the loss times the fp16 loss scale, if any); with gradient checkpointing the
    /// UNet keeps only its segment boundaries (see [`crate::unet::Unet::backward_checkpointed`]).
    /// Returns the loss, unscaled and detached.
    fn forward_backward(&self, sd: &StableDiffusion, batch: &FixedBatch) -> Tensor {
        let scale = self.scaler.as_ref().map(|s| s.scale);
        // The loss is reported unscaled: taken before the scaling, not divided back (a scaled
        // loss may be inf).
        let unscaled = std::cell::RefCell::new(None);
        let scaled = |loss: Tensor| {
            *unscaled.borrow_mut() = Some(loss.detach());
            match scale {
                Some(s) => loss * s,
                None => loss,
            }
        };
        if self.config.gradient_checkpointing {
            let context = tch::with_grad(|| sd.clip.encode(&batch.ids, self.config.clip_skip));
            let (noisy, t) = self.noisy_input(batch);
            let _scaled_loss =
                sd.unet.backward_checkpointed(&noisy, &t, &context, |pred| scaled(self.loss_of(pred, batch)));
        } else {
            tch::with_grad(|| scaled(self.forward_loss(sd, batch))).backward();
        }
        unscaled.into_inner().expect("the loss closure ran")
    }

    /// The fp16 loss scaler's state (`None` unless the run is fp16).
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// Mutable access to the fp16 loss scaler (to test the skipping of overflowing steps).
    pub fn loss_scaler_mut(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }

    /// Optimizer steps actually taken (below [`Self::global_step`] when fp16 steps were skipped).
    pub fn optimizer_steps(&self) -> u64 {
        self.sched_steps
    }

    /// Refuses a model other than the one the network was built on: its targets are that model's
    /// tensors.
    fn check_model(&self, sd: &StableDiffusion) -> Result<()> {
        let same = self.network.modules.first().is_some_and(|m| m.belongs_to(sd));
        if same {
            Ok(())
        } else {
            Err(train_error("the session was created with another model".into()))
        }
    }

    /// The loss on `batch` with the current network, without gradients; `sd` is left unchanged.
    pub fn eval_loss(&self, sd: &StableDiffusion, batch: &FixedBatch) -> Result<f64> {
        self.check_model(sd)?;
        sd.apply_loras(&[])?;
        self.network.attach();
        let value = tch::no_grad(|| self.forward_loss(sd, batch).double_value(&[]));
        self.network.detach();
        Ok(value)
    }

    /// One optimizer step on `sd` (the same model it was created with; weights restored afterwards):
    /// batch, forward, backward, gradient clip, optimizer and scheduler step.
    pub fn step(&mut self, sd: &StableDiffusion) -> Result<StepRecord> {
        self.check_model(sd)?;
        // Generation between steps may have merged inference LoRAs into the weights.
        sd.apply_loras(&[])?;
        let batch = self.draw_batch()?;
        self.optimizer.zero_grad();
        self.network.attach();
        let loss = self.forward_backward(sd, &batch);
        self.network.detach();
        // Read only now: reading the value waits for the device, and doing so before backward
        // would stall it between the forward and backward passes.
        let value = loss.double_value(&[]);
        let params = self.network.parameters();
        // fp16: unscale, and skip the step (backing the scale off) when a gradient overflowed.
        let overflow = self.scaler.as_ref().is_some_and(|s| !s.unscale(&params));
        if let Some(scaler) = &mut self.scaler {
            scaler.update(overflow);
        }
        if !overflow {
            if !value.is_finite() {
                return Err(train_error(format!("loss is {value} at step {}", self.step + 1)));
            }
            if self.config.max_grad_norm > 0.0 {
                super::clip_grad_norm(&params, self.config.max_grad_norm);
            }
            self.optimizer.step(self.schedule.factor(self.sched_steps))?;
            self.sched_steps += 1;
        }
        self.step += 1;
        let lr =
            self.config.unet_lr.unwrap_or(self.config.learning_rate) * self.schedule.factor(self.sched_steps);
        let d_lr = self.optimizer.config().is_adaptive().then(|| self.optimizer.d() * lr);
        Ok(StepRecord { step: self.step, epoch: self.epoch, loss: value, lr, d_lr })
    }

    /// Everything needed to resume (network weights, optimizer state, step, epoch order state) as
    /// named tensors + JSON metadata; written with the crate's atomic safetensors writer.
    pub fn save_state(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for m in &self.network.modules {
            tensors.push((format!("net.{}.down", m.name), m.down.detach().to_device(tch::Device::Cpu)));
            tensors.push((format!("net.{}.up", m.name), m.up.detach().to_device(tch::Device::Cpu)));
        }
        let (opt_tensors, opt_meta) = self.optimizer.export_state("optim");
        tensors.extend(opt_tensors);
        let meta = serde_json::json!({
            "version": STATE_VERSION,
            "step": self.step,
            "optimizer_steps": self.sched_steps,
            "loss_scale": self.scaler.as_ref().map(|s| serde_json::json!([s.scale, s.growth_tracker])),
            "epoch": self.epoch,
            "cursor": self.cursor,
            "draws": self.draws,
            "fingerprint": self.fingerprint(),
            "optimizer": opt_meta,
        });
        let metadata = HashMap::from([(STATE_KEY.to_string(), meta.to_string())]);
        write_atomic(path, &tensors, Some(metadata))
    }

    /// What must match between the run that saved a state and the session restoring it.
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.config.seed,
            "batch_size": self.config.batch_size,
            "modules": self.network.modules.len(),
            "buckets": self.buckets.iter().map(Vec::len).collect::<Vec<_>>(),
            "optimizer": self.optimizer.config().describe(),
        })
    }

    /// Restores a state written by `save_state` into a session freshly built with the same images
    /// and config.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let file = SafetensorsFile::open(path)?;
        let bad = |reason: String| Error::UnknownFormat { file: path.into(), reason };
        let raw =
            file.metadata().get(STATE_KEY).ok_or_else(|| bad("not a training state (no metadata)".into()))?;
        let meta: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| bad(format!("training state metadata: {e}")))?;
        if meta["version"].as_u64() != Some(STATE_VERSION) {
            return Err(bad(format!("training state version {} is not {STATE_VERSION}", meta["version"])));
        }
        if meta["fingerprint"] != self.fingerprint() {
            return Err(bad(format!(
                "the state belongs to another run: saved {}, this session {}",
                meta["fingerprint"],
                self.fingerprint()
            )));
        }
        let names: std::collections::HashSet<String> = file.names().into_iter().collect();
        {
            let _guard = tch::no_grad_guard();
            for m in &self.network.modules {
                for (slot, t) in [("down", &m.down), ("up", &m.up)] {
                    let stored = file.read(&format!("net.{}.{slot}", m.name))?;
                    if stored.size() != t.size() {
                        return Err(bad(format!("{}.{slot} has shape {:?}", m.name, stored.size())));
                    }
                    t.shallow_clone().copy_(&stored);
                }
            }
        }
        self.optimizer.import_state("optim", &meta["optimizer"], |name| {
            if names.contains(name) {
                file.read(name).map(Some)
            } else {
                Ok(None)
            }
        })?;
        let num = |key: &str| meta[key].as_u64().ok_or_else(|| bad(format!("training state: bad `{key}`")));
        self.step = num("step")?;
        // States written before fp16 loss scaling existed took every step.
        self.sched_steps = meta["optimizer_steps"].as_u64().unwrap_or(self.step);
        if let (Some(scaler), Some([scale, tracker])) =
            (&mut self.scaler, meta["loss_scale"].as_array().map(Vec::as_slice))
        {
            scaler.scale = scale.as_f64().ok_or_else(|| bad("training state: bad `loss_scale`".into()))?;
            scaler.growth_tracker =
                tracker.as_u64().ok_or_else(|| bad("training state: bad `loss_scale`".into()))?;
        }
        self.epoch = num("epoch")?;
        self.cursor = num("cursor")? as usize;
        self.draws = num("draws")?;
        self.batches = if self.epoch == 0 {
            Vec::new()
        } else {
            dataset::epoch_batches(&self.buckets, self.config.batch_size, self.config.seed, self.epoch)
        };
        Ok(())
    }
}
