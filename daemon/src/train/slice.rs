//! The engine side of a training run: [`run_slice`] runs on the engine thread as one queued job,
//! takes optimizer steps for about [`SLICE_SECONDS`] (or up to the next save or sample point) and
//! returns, so queued generation requests run between slices. The run's model, session and event
//! file live in the worker's [`ActiveTraining`] between slices.

use std::sync::Arc;
use std::time::{Duration, Instant};

use models::checkpoint::StableDiffusion;
use models::clip::tokenizer::ClipTokenizer;
use models::device::Placement;
use models::rng::RandnSource;
use models::sampling::Control;
use models::train::sample_prompt::parse_line;
use models::train::save::{kohya_metadata, save_kohya, RunInfo};
use models::train::{StepRecord, TrainImage, TrainSession};
use tch::Kind;

use super::dataset;
use super::jobs::{TrainJobRecord, TrainRun, TrainState};
use super::tensorboard::EventWriter;
use crate::engine::job::{JobError, JobId};
use crate::engine::progress::{InterruptFlags, ProgressBoard, StepHooks};
use crate::generation::{txt2img, TextEncoders, Txt2ImgSpec};

/// How long one slice trains before giving the engine back.
pub const SLICE_SECONDS: f64 = 2.0;

/// The sampler of prompts without `--ss`: sd-scripts' `--sample_sampler` default.
const DEFAULT_SAMPLER: &str = "ddim";

/// kohya's sampler names (training spec §7) → A1111 sampler names for our pipeline; anything
/// else is DDIM, as kohya falls back to DDIM.
pub fn a1111_sampler(kohya: &str) -> &'static str {
    match kohya.to_ascii_lowercase().as_str() {
        "euler_a" | "k_euler_a" => "Euler a",
        "euler" | "k_euler" => "Euler",
        "lms" | "k_lms" => "LMS",
        "heun" => "Heun",
        "dpm_2" | "k_dpm_2" => "DPM2",
        "dpm_2_a" | "k_dpm_2_a" => "DPM2 a",
        "dpmsolver++" | "dpmsolver" => "DPM++ 2M",
        "dpmsingle" => "DPM++ SDE",
        _ => "DDIM",
    }
}

/// A run's state kept on the engine thread between slices.
pub struct ActiveTraining {
    id: String,
    model: StableDiffusion,
    session: TrainSession,
    events: Option<EventWriter>,
    /// The losses of the current epoch's steps, by position in the epoch (`loss/average`).
    window: Vec<f64>,
    started: Instant,
    steps_at_start: u64,
    training_started_at: f64,
    num_train_images: u64,
    num_reg_images: u64,
    resolution: (u32, u32),
}

impl std::fmt::Debug for ActiveTraining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveTraining").field("id", &self.id).field("session", &self.session).finish()
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn io_error(what: &str, e: impl std::fmt::Display) -> JobError {
    JobError::Invalid(format!("{what}: {e}"))
}

impl ActiveTraining {
    /// Loads the run's own copy of the base model (in the recipe's mixed-precision dtype; the
    /// LoRA stays fp32), builds the session and restores the last saved state, if any.
    fn start(run: &TrainRun) -> Result<ActiveTraining, JobError> {
        let record = run.snapshot();
        let placement = Placement { device: run.placement.device, kind: record.recipe.precision().kind() };
        let model = StableDiffusion::load(&record.checkpoint_path, placement)?;
        let tokenizer = ClipTokenizer::new()?;
        let stored =
            dataset::load_tensors(&run.dataset_dir()).map_err(|e| io_error("reading the dataset", e))?;
        let num_train_images = stored.iter().filter(|(e, _)| !e.is_reg).count() as u64;
        let num_reg_images = stored.iter().filter(|(e, _)| e.is_reg).count() as u64;
        let resolution = stored.first().map_or((0, 0), |(e, _)| (e.width, e.height));
        let images: Vec<TrainImage> = stored
            .into_iter()
            .map(|(e, t)| TrainImage::new(t, e.caption, e.is_reg).with_repeats(e.repeats))
            .collect();
        let make_session = |total_steps: u64| -> Result<TrainSession, JobError> {
            let mut config =
                record.recipe.train_config(total_steps).map_err(|e| JobError::Invalid(e.to_string()))?;
            if record.recipe.cache_latents_to_disk {
                config.latent_cache_dir = Some(run.dir.join("latents"));
            }
            config.flip_aug = record.recipe.flip_aug;
            Ok(TrainSession::new(&model, &tokenizer, &images, config)?)
        };
        let mut session = make_session(record.total_steps)?;
        let state = run.state_path();
        let actual = session.steps_per_epoch();
        if actual != record.plan.steps_per_epoch && !state.is_file() {
            // The session's per-bucket count is the one training follows: the plan (and with it
            // the schedule's length) is corrected before the first step, so every planned epoch
            // runs to its end. A resumed run keeps the plan its saved state was trained with.
            tracing::warn!(
                job = %run.id,
                planned = record.plan.steps_per_epoch,
                actual,
                "steps per epoch differ from the plan; plan corrected"
            );
            let plan = record.plan.clone().with_steps_per_epoch(actual);
            session = make_session(plan.total_steps)?;
            let mut r = run.record();
            r.total_steps = plan.total_steps;
            r.plan = plan;
        }
        let mut resumed = None;
        if state.is_file() {
            session.load_state(&state)?;
            resumed = Some(session.global_step());
            tracing::info!(job = %run.id, step = session.global_step(), "training resumed from its last save");
        }
        {
            let mut r = run.record();
            r.step = session.global_step();
            r.epoch = session.global_step() / session.steps_per_epoch().max(1);
            if resumed.is_some() {
                r.resumed_from = resumed;
            }
        }
        let events = match EventWriter::create(&run.dir) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(job = %run.id, cause = %e, "no TensorBoard log");
                None
            }
        };
        Ok(ActiveTraining {
            id: run.id.clone(),
            steps_at_start: session.global_step(),
            model,
            session,
            events,
            window: Vec::new(),
            started: Instant::now(),
            training_started_at: record.created,
            num_train_images,
            num_reg_images,
            resolution,
        })
    }

    fn log(&mut self, tag: &str, value: f64, step: u64) {
        if let Some(w) = self.events.as_mut() {
            if let Err(e) = w.scalar(tag, value, step) {
                tracing::warn!(job = %self.id, cause = %e, "TensorBoard write failed; logging stops");
                self.events = None;
            }
        }
    }

    /// The TensorBoard scalars of one step (training spec §8.1) and the moving average.
    fn record_step(&mut self, r: &StepRecord, steps_per_epoch: u64) -> f64 {
        let index = ((r.step - 1) % steps_per_epoch.max(1)) as usize;
        if index < self.window.len() {
            self.window[index] = r.loss;
        } else {
            self.window.push(r.loss);
        }
        let average = self.window.iter().sum::<f64>() / self.window.len() as f64;
        self.log("loss/current", r.loss, r.step);
        self.log("loss/average", average, r.step);
        let config = self.session.config();
        if config.network.train_text_encoder {
            let te = config.text_encoder_lr.unwrap_or(config.learning_rate);
            let unet = config.unet_lr.unwrap_or(config.learning_rate).max(f64::MIN_POSITIVE);
            self.log("lr/textencoder", r.lr * te / unet, r.step);
        }
        self.log("lr/unet", r.lr, r.step);
        if let Some(d_lr) = r.d_lr {
            self.log("lr/d*lr", d_lr, r.step);
        }
        average
    }

    /// Writes the network in kohya's format to `<lora dir>/<file>` and returns the file name.
    fn save_lora(
        &self,
        run: &TrainRun,
        record: &TrainJobRecord,
        file: &str,
        epoch: u64,
    ) -> Result<String, JobError> {
        let info = RunInfo {
            output_name: record.recipe.name.clone(),
            sd_model_name: record
                .checkpoint_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            steps: self.session.global_step(),
            epoch,
            num_train_images: self.num_train_images,
            num_reg_images: self.num_reg_images,
            resolution: self.resolution,
            training_started_at: self.training_started_at,
            training_finished_at: unix_now(),
            session_id: record.created as u64,
        };
        let metadata = kohya_metadata(self.session.network(), self.session.config(), &info);
        std::fs::create_dir_all(&run.lora_dir).map_err(|e| io_error("creating the LoRA folder", e))?;
        save_kohya(self.session.network(), &run.lora_dir.join(file), &metadata, Kind::Float)?;
        Ok(file.to_string())
    }

    /// Renders every sample prompt with the network applied and saves them as PNG (§7).
    fn sample(&self, run: &TrainRun, record: &TrainJobRecord, epoch: u64) -> Result<Vec<String>, JobError> {
        let prompts = &record.recipe.sample_prompts;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let dir = run.dir.join("samples");
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating the samples folder", e))?;
        let stamp = chrono::Local::now().format("%Y%m%d%H%M%S");
        let mut files = Vec::new();
        // Built per sampling: `TextEncoders` is not `Send`, and the worker must be.
        let text = TextEncoders::new(&self.model, &[])?;
        self.session.network().attach();
        let result = (|| -> Result<(), JobError> {
            for (index, p) in prompts.iter().filter_map(|line| parse_line(line)).enumerate() {
                let seed = p.seed.unwrap_or_else(|| (unix_now() * 1e6) as u64 & 0x7fff_ffff);
                let sampler = a1111_sampler(p.sampler.as_deref().unwrap_or(DEFAULT_SAMPLER));
                let spec = Txt2ImgSpec {
                    clip_skip: record.recipe.clip_skip as usize,
                    randn_source: RandnSource::Cpu,
                    ..Txt2ImgSpec::single(
                        &p.prompt,
                        &p.negative_prompt,
                        seed,
                        p.steps as usize,
                        p.cfg_scale,
                        p.width as i64,
                        p.height as i64,
                        sampler,
                    )
                };
                let generated =
                    txt2img(&self.model, &text, &spec, &mut |_, _, _| Control::Continue, &mut || false)
                        .map_err(JobError::from)?;
                for g in generated {
                    let img = crate::engine::job::RgbImage {
                        width: g.image.width,
                        height: g.image.height,
                        rgb: g.image.data,
                    };
                    let png = crate::images::encode_png(&img, &[("parameters", &p.prompt)])
                        .map_err(|e| io_error("encoding a sample", e))?;
                    let name = format!("{}_e{epoch:06}_{index:02}_{stamp}_{seed}.png", record.recipe.name);
                    crate::fsutil::write_atomic(&dir.join(&name), &png)
                        .map_err(|e| io_error("writing a sample", e))?;
                    files.push(format!("samples/{name}"));
                }
            }
            Ok(())
        })();
        self.session.network().detach();
        result.map(|()| files)
    }
}

/// Why a slice returned.
enum SliceEnd {
    /// Time is up or a save/sample point was reached; more slices follow.
    Paused,
    Finished,
    Cancelled,
}

/// Runs one slice of `run` on the engine thread. `slot` is the worker's training state: it is
/// (re)built when it belongs to another run and emptied when the run ends.
pub fn run_slice(
    slot: &mut Option<ActiveTraining>,
    run: &Arc<TrainRun>,
    job_id: JobId,
    board: Arc<ProgressBoard>,
    flags: Arc<InterruptFlags>,
) -> Result<(), JobError> {
    if slot.as_ref().is_some_and(|a| a.id != run.id) {
        *slot = None;
    }
    if run.cancel_requested() {
        *slot = None;
        finish(run, TrainState::Cancelled);
        return Ok(());
    }
    board.start(job_id, "train", 1);
    if slot.is_none() {
        run.record().state = TrainState::Running;
        *slot = Some(ActiveTraining::start(run)?);
    }
    let active = slot.as_mut().expect("set above");
    let result = slice(active, run, job_id, board, flags);
    match result {
        Ok(SliceEnd::Paused) => Ok(()),
        Ok(SliceEnd::Finished) => {
            *slot = None;
            finish(run, TrainState::Done);
            Ok(())
        }
        Ok(SliceEnd::Cancelled) => {
            *slot = None;
            finish(run, TrainState::Cancelled);
            Ok(())
        }
        Err(e) => {
            // The layers may hold the attached network; the model copy is dropped with it.
            *slot = None;
            Err(e)
        }
    }
}

/// Reports the end of the run to the manager, which makes it visible (state, `job.json`) only
/// after the LoRA list has been refreshed, so a client that sees `done` can use the file at once.
fn finish(run: &TrainRun, state: TrainState) {
    run.record().eta_seconds = None;
    run.set_ended(state);
}

fn slice(
    active: &mut ActiveTraining,
    run: &Arc<TrainRun>,
    job_id: JobId,
    board: Arc<ProgressBoard>,
    flags: Arc<InterruptFlags>,
) -> Result<SliceEnd, JobError> {
    let record = run.snapshot();
    let total = record.total_steps;
    let per_epoch = active.session.steps_per_epoch().max(1);
    let mut hooks = StepHooks::new(job_id, board, flags, Box::new(|| false), None);
    hooks.begin_batch(0, total as usize);
    hooks.step(active.session.global_step() as usize);
    let deadline = Instant::now() + Duration::from_secs_f64(SLICE_SECONDS);
    loop {
        // `/sdapi/v1/interrupt` is for generation; a run stops only through its cancel route.
        if run.cancel_requested() {
            return Ok(SliceEnd::Cancelled);
        }
        if active.session.global_step() >= total {
            return Ok(SliceEnd::Finished);
        }
        let r = active.session.step(&active.model)?;
        let average = active.record_step(&r, per_epoch);
        hooks.step(r.step as usize);
        let done_here = r.step - active.steps_at_start;
        let elapsed = active.started.elapsed().as_secs_f64();
        {
            let mut rec = run.record();
            rec.state = TrainState::Running;
            rec.step = r.step;
            rec.epoch = r.step.div_ceil(per_epoch);
            rec.loss = Some(average);
            rec.lr = Some(r.lr);
            rec.eta_seconds = Some(elapsed / done_here as f64 * total.saturating_sub(r.step) as f64);
        }
        let epoch_end = r.step.is_multiple_of(per_epoch) || r.step >= total;
        if !epoch_end {
            if Instant::now() >= deadline {
                return Ok(SliceEnd::Paused);
            }
            continue;
        }
        let epoch = r.step.div_ceil(per_epoch);
        active.log("loss/epoch", average, epoch);
        active.window.clear();
        let last = r.step >= total;
        let save_every = u64::from(record.plan.save_every_n_epochs.max(1));
        let sample_every = u64::from(record.plan.sample_every_n_epochs.max(1));
        let mut new_outputs = Vec::new();
        if epoch.is_multiple_of(save_every) {
            let file = format!("{}-{epoch:06}.safetensors", record.recipe.name);
            new_outputs.push(active.save_lora(run, &record, &file, epoch)?);
        }
        if last {
            let file = format!("{}.safetensors", record.recipe.name);
            new_outputs.push(active.save_lora(run, &record, &file, epoch)?);
        }
        if epoch.is_multiple_of(save_every) || last {
            active.session.save_state(&run.state_path())?;
        }
        let samples = if epoch.is_multiple_of(sample_every) || last {
            active.sample(run, &record, epoch)?
        } else {
            Vec::new()
        };
        {
            let mut rec = run.record();
            for o in new_outputs {
                if !rec.outputs.contains(&o) {
                    rec.outputs.push(o);
                }
            }
            rec.samples.extend(samples);
        }
        if last {
            return Ok(SliceEnd::Finished);
        }
        // A save point ends the slice, so the manager persists the job and refreshes the LoRA list.
        return Ok(SliceEnd::Paused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_sampler_maps_kohya_names_and_falls_back_to_ddim() {
        assert_eq!(a1111_sampler("euler_a"), "Euler a");
        assert_eq!(a1111_sampler("K_EULER"), "Euler");
        assert_eq!(a1111_sampler("dpmsolver++"), "DPM++ 2M");
        assert_eq!(a1111_sampler(DEFAULT_SAMPLER), "DDIM");
        assert_eq!(a1111_sampler("pndm"), "DDIM");
    }
}
