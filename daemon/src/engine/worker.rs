//! The engine thread: the only thread that touches the device or a tensor. It takes one job at a
//! time from the queue, runs it under `catch_unwind` (tch turns libtorch exceptions, CUDA
//! out-of-memory included, into panics), and sends the outcome to the job's caller. A failing or
//! panicking job fails alone; the thread carries on with the next one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use models::checkpoint::CheckpointConfig;
use tokio::sync::watch;

use super::cache::{CheckpointTiers, ModelCache};
use super::generate::generate;
use super::job::{Job, JobError, JobKind, JobOutcome, JobOutput};
use super::progress::{InterruptFlags, ProgressBoard, StepHooks};
use super::queue::Queue;

/// What the engine holds, readable by handlers without going through the engine thread.
#[derive(Clone, Debug, Default)]
pub struct EngineStatus {
    /// The most recently used checkpoint on the device.
    pub active: Option<PathBuf>,
    /// One line describing the active checkpoint's architecture.
    pub architecture: Option<String>,
    /// Width of the active text encoder's embeddings (768 for SD1), for embedding compatibility.
    pub clip_width: Option<i64>,
    /// UNet input channels of the active checkpoint (9 for inpainting models).
    pub unet_in_channels: Option<i64>,
    pub device_checkpoints: Vec<PathBuf>,
    pub host_checkpoints: Vec<PathBuf>,
    /// Jobs the engine has finished (any outcome).
    pub jobs_done: u64,
    /// Checkpoint files read into the cache so far; switching between cached checkpoints leaves
    /// it unchanged.
    pub checkpoint_loads: u64,
}

pub(crate) struct Worker {
    pub cache: ModelCache<CheckpointTiers>,
    pub board: Arc<ProgressBoard>,
    pub flags: Arc<InterruptFlags>,
    pub status: watch::Sender<EngineStatus>,
    /// The training run whose slices this thread is executing: its own model copy and session,
    /// kept between slices ([`crate::train::slice`]).
    pub training: Option<crate::train::ActiveTraining>,
}

impl Worker {
    /// Loads the start-up checkpoint; any failure (panics included) comes back as an error.
    pub fn load_initial(&mut self, path: &std::path::Path) -> Result<(), JobError> {
        install_load_progress_bar();
        let result = contained(|| self.cache.get(path).map(|_| ()));
        self.publish_status(None);
        result
    }

    /// Serves jobs until the queue shuts down.
    pub fn run(mut self, queue: Queue) {
        install_load_progress_bar();
        while let Some(job) = queue.blocking_next(self.cache.device_paths()) {
            self.run_job(job);
        }
        tracing::info!("engine stopped");
    }

    fn run_job(&mut self, job: Job) {
        let span = job.span.clone();
        let _entered = span.enter();
        if job.abandoned() {
            tracing::debug!(job_id = job.id, task = %job.task_id, "client left before the job started; skipped");
            return;
        }
        let started = Instant::now();
        let outcome = contained(|| self.execute(&job));
        self.board.idle();
        self.publish_status(Some(1));
        let seconds = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(_) => tracing::info!(job_id = job.id, task = %job.task_id, seconds, "job finished"),
            Err(JobError::Unsupported(reason)) => {
                tracing::info!(job_id = job.id, task = %job.task_id, %reason, "job refused")
            }
            Err(e) => {
                tracing::error!(job_id = job.id, task = %job.task_id, cause = %e, seconds, "job failed")
            }
        }
        // The caller may have gone away meanwhile; the outcome then has nowhere to go.
        let _ = job.reply.send(outcome);
    }

    fn execute(&mut self, job: &Job) -> JobOutcome {
        let board = self.board.clone();
        match &job.kind {
            JobKind::Generate(generation) => {
                let checkpoint = job
                    .checkpoint
                    .as_ref()
                    .ok_or_else(|| JobError::Invalid("no checkpoint is selected".into()))?;
                board.start(job.id, generation.mode.job_name(), generation.n_iter as u32);
                let model = self.cache.get(&checkpoint.path)?;
                let mut hooks = StepHooks::new(
                    job.id,
                    board,
                    self.flags.clone(),
                    Box::new(|| job.abandoned()),
                    generation.preview_every_n_steps,
                );
                Ok(JobOutput::Images(generate(model, generation, &mut hooks)?))
            }
            JobKind::LoadCheckpoint => {
                let checkpoint = job
                    .checkpoint
                    .as_ref()
                    .ok_or_else(|| JobError::Invalid("no checkpoint to load".into()))?;
                board.start(job.id, "load_checkpoint", 1);
                let model = self.cache.get(&checkpoint.path)?;
                Ok(JobOutput::Loaded(Some(describe(&model.config))))
            }
            JobKind::Unload => {
                board.start(job.id, "unload_checkpoint", 1);
                self.cache.unload_all();
                Ok(JobOutput::Done)
            }
            JobKind::TrainSlice(run) => {
                crate::train::slice::run_slice(&mut self.training, run, job.id, board, self.flags.clone())?;
                Ok(JobOutput::Done)
            }
            JobKind::Upscale(upscale) => {
                board.start(job.id, "extras", 1);
                // A1111 does not interrupt an upscale; only a caller that has gone stops it.
                let abandoned = || job.abandoned();
                Ok(JobOutput::Upscaled(crate::routes::system::run_upscale(upscale, &abandoned)?))
            }
        }
    }

    fn publish_status(&mut self, finished: Option<u64>) {
        let device = self.cache.device_paths();
        let active = device.first().cloned();
        let (architecture, clip_width, in_channels) = match self.cache.most_recent() {
            Some(m) => {
                (Some(describe(&m.config)), Some(m.config.clip.hidden), Some(m.config.unet.in_channels))
            }
            None => (None, None, None),
        };
        let host = self.cache.host_paths();
        let loads = self.cache.loads();
        self.status.send_modify(|s| {
            s.checkpoint_loads = loads;
            s.active = active;
            s.architecture = architecture;
            s.clip_width = clip_width;
            s.unet_in_channels = in_channels;
            s.device_checkpoints = device;
            s.host_checkpoints = host;
            s.jobs_done += finished.unwrap_or(0);
        });
    }
}

/// Shows a progress bar (tensors read) on the terminal while a checkpoint loads, when stderr is
/// one; logs go on as usual. Installs itself once per process.
fn install_load_progress_bar() {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return;
    }
    let current: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);
    models::checkpoint::set_load_progress(Box::new(move |path, done, total| {
        let mut slot = current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if done == 0 {
            // A load that failed half-way leaves its bar behind; the next one replaces it.
            if let Some(old) = slot.take() {
                old.abandon();
            }
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tensors ({elapsed})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            bar.set_message(format!("loading {name}"));
            *slot = Some(bar);
        } else if let Some(bar) = slot.as_ref() {
            bar.set_position(done as u64);
            if done >= total {
                bar.finish_and_clear();
                *slot = None;
            }
        }
    }));
}

/// One line describing a checkpoint's architecture, for logs and the options' informational key.
pub fn describe(c: &CheckpointConfig) -> String {
    format!(
        "{}: UNet {} ch × {:?}, {} input channels, context {}; CLIP {} wide, {} layers; VAE {} ch × {:?}",
        c.family.name(),
        c.unet.model_channels,
        c.unet.channel_mult,
        c.unet.in_channels,
        c.unet.context_dim,
        c.clip.hidden,
        c.clip.layers,
        c.vae.ch,
        c.vae.ch_mult,
    )
}

/// Runs `f`, turning a panic into a [`JobError`] and naming out-of-memory failures as such, so
/// that nothing a job does can take the engine thread down.
pub fn contained<T>(f: impl FnOnce() -> Result<T, JobError>) -> Result<T, JobError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(JobError::from_message(panic_message(payload))))
        .map_err(JobError::classify)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_turns_panics_into_job_errors_and_names_oom() {
        let oom = contained::<()>(|| {
            panic!("called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB\")")
        });
        assert!(matches!(oom, Err(JobError::Oom(m)) if m.contains("Tried to allocate")));
        let other = contained::<()>(|| panic!("index {} out of range", 3));
        assert!(matches!(other, Err(JobError::Panic(m)) if m == "index 3 out of range"));
        let torch = contained::<()>(|| Err(tch::TchError::Torch("CUDA error: out of memory".into()).into()));
        assert!(matches!(torch, Err(JobError::Oom(_))));
        assert_eq!(contained(|| Ok(5)).unwrap(), 5);
    }
}
