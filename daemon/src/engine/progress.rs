//! Progress and interruption, kept out of the queue so that `/progress`, `/interrupt` and `/skip`
//! never wait behind the job they are about (anchors §6, refinement 2).
//!
//! The engine publishes a [`ProgressSnapshot`] on a `watch` channel ([`ProgressBoard`]) and
//! handlers read the latest one. Interrupt and skip store the *target job id* in atomics
//! ([`InterruptFlags`]); the pipeline compares it with its own id once per step through
//! [`StepHooks`], so a late interrupt cannot stop the next job, as a plain boolean would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use tokio::sync::watch;

use super::job::{JobId, RgbImage};

/// A live preview, as the pipeline produced it; encoded to PNG only when `/progress` asks.
#[derive(Debug)]
pub struct Preview {
    pub image: RgbImage,
    /// Increases with every new preview, so an encoded copy can be reused until it changes.
    pub serial: u64,
}

/// What the engine is doing right now.
#[derive(Clone, Debug, Default)]
pub struct ProgressSnapshot {
    /// The running job, `None` when idle.
    pub job_id: Option<JobId>,
    /// A1111's `state.job`: `""` when idle.
    pub job: String,
    pub job_count: u32,
    pub job_no: u32,
    pub sampling_step: u32,
    pub sampling_steps: u32,
    pub started: Option<Instant>,
    /// `YYYYmmddHHMMSS`, local time of the job start.
    pub job_timestamp: String,
    pub preview: Option<Arc<Preview>>,
    pub textinfo: Option<String>,
}

impl ProgressSnapshot {
    /// A1111's progress fraction: `min(1, 0.01 + job_no/job_count + (step/steps)/job_count)`,
    /// 0 when idle.
    pub fn fraction(&self) -> f64 {
        if self.job_id.is_none() || self.job_count == 0 {
            return 0.0;
        }
        let count = self.job_count as f64;
        let mut p = 0.01 + self.job_no as f64 / count;
        if self.sampling_steps > 0 {
            p += self.sampling_step as f64 / self.sampling_steps as f64 / count;
        }
        p.min(1.0)
    }

    /// Seconds left: `elapsed / progress - elapsed`.
    pub fn eta_relative(&self, now: Instant) -> f64 {
        let (Some(started), p) = (self.started, self.fraction()) else { return 0.0 };
        if p <= 0.0 {
            return 0.0;
        }
        let elapsed = now.saturating_duration_since(started).as_secs_f64();
        elapsed / p - elapsed
    }
}

/// The sending side of the progress channel, owned by the engine.
#[derive(Debug)]
pub struct ProgressBoard {
    tx: watch::Sender<ProgressSnapshot>,
    serial: AtomicU64,
}

impl Default for ProgressBoard {
    fn default() -> Self {
        ProgressBoard { tx: watch::Sender::new(ProgressSnapshot::default()), serial: AtomicU64::new(0) }
    }
}

impl ProgressBoard {
    /// The latest snapshot (cloned; the preview is shared).
    pub fn snapshot(&self) -> ProgressSnapshot {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<ProgressSnapshot> {
        self.tx.subscribe()
    }

    /// A job starts.
    pub fn start(&self, job_id: JobId, job: &str, job_count: u32) {
        let timestamp = chrono::Local::now().format("%Y%m%d%H%M%S").to_string();
        self.tx.send_replace(ProgressSnapshot {
            job_id: Some(job_id),
            job: job.to_string(),
            job_count,
            started: Some(Instant::now()),
            job_timestamp: timestamp,
            ..ProgressSnapshot::default()
        });
    }

    /// The engine is idle again.
    pub fn idle(&self) {
        let timestamp = self.tx.borrow().job_timestamp.clone();
        self.tx.send_replace(ProgressSnapshot { job_timestamp: timestamp, ..ProgressSnapshot::default() });
    }

    fn update(&self, f: impl FnOnce(&mut ProgressSnapshot)) {
        self.tx.send_modify(f);
    }

    fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Interrupt and skip requests, each holding the id of the job it targets (0: none).
#[derive(Debug, Default)]
pub struct InterruptFlags {
    interrupt: AtomicU64,
    skip: AtomicU64,
}

impl InterruptFlags {
    /// Stops `job` at its next step; the rest of its batches are dropped.
    pub fn interrupt(&self, job: JobId) {
        self.interrupt.store(job, Ordering::Release);
    }

    /// Ends the current batch of `job`; the next batch still runs.
    pub fn skip(&self, job: JobId) {
        self.skip.store(job, Ordering::Release);
    }

    pub fn is_interrupted(&self, job: JobId) -> bool {
        job != 0 && self.interrupt.load(Ordering::Acquire) == job
    }

    pub fn is_skipped(&self, job: JobId) -> bool {
        job != 0 && self.skip.load(Ordering::Acquire) == job
    }

    /// Clears a skip aimed at `job` (at a batch boundary), leaving one aimed elsewhere alone.
    pub fn clear_skip(&self, job: JobId) {
        let _ = self.skip.compare_exchange(job, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// SD1.x latent → RGB factors: a 4×3 linear map that approximates the VAE decoder well enough
/// for a progress thumbnail (the widely used "latent RGB factors" for the SD1 latent space).
const SD1_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// The pipeline's line to the outside world while it samples: progress per step, previews,
/// and the interrupt and skip checks. One per job.
pub struct StepHooks<'a> {
    job_id: JobId,
    board: Arc<ProgressBoard>,
    flags: Arc<InterruptFlags>,
    abandoned: Box<dyn Fn() -> bool + 'a>,
    preview_every: Option<u32>,
}

impl<'a> StepHooks<'a> {
    /// Hooks for `job_id` reporting to `board`; `abandoned` says whether the client went away.
    pub fn new(
        job_id: JobId,
        board: Arc<ProgressBoard>,
        flags: Arc<InterruptFlags>,
        abandoned: Box<dyn Fn() -> bool + 'a>,
        preview_every: Option<u32>,
    ) -> Self {
        StepHooks { job_id, board, flags, abandoned, preview_every }
    }

    /// Hooks that report to nothing and are never interrupted (pipeline tests, benchmarks).
    pub fn detached() -> StepHooks<'static> {
        StepHooks::new(
            0,
            Arc::new(ProgressBoard::default()),
            Arc::new(InterruptFlags::default()),
            Box::new(|| false),
            None,
        )
    }

    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// Changes the number of passes `/progress` counts (hires fix doubles it).
    pub fn set_job_count(&mut self, job_count: usize) {
        self.board.update(|s| s.job_count = job_count as u32);
    }

    /// Batch `batch_no` (0-based) starts sampling `steps` steps. A skip aimed at an earlier batch
    /// of this job is forgotten here.
    pub fn begin_batch(&mut self, batch_no: usize, steps: usize) {
        self.flags.clear_skip(self.job_id);
        self.board.update(|s| {
            s.job_no = batch_no as u32;
            s.sampling_step = 0;
            s.sampling_steps = steps as u32;
        });
    }

    /// `step` steps of the current batch are done.
    pub fn step(&mut self, step: usize) {
        self.board.update(|s| s.sampling_step = step as u32);
    }

    /// The current batch is finished (decoded).
    pub fn end_batch(&mut self) {
        self.board.update(|s| {
            s.job_no += 1;
            s.sampling_step = 0;
        });
    }

    /// Whether a preview is due after `step` steps (option `show_progress_every_n_steps`).
    pub fn wants_preview(&self, step: usize) -> bool {
        self.preview_every.is_some_and(|n| n > 0 && step > 0 && step.is_multiple_of(n as usize))
    }

    /// Publishes a preview image.
    pub fn preview_rgb(&mut self, image: RgbImage) {
        let preview = Arc::new(Preview { image, serial: self.board.next_serial() });
        self.board.update(|s| s.preview = Some(preview));
    }

    /// Publishes a cheap preview of an SD1.x latent batch `[n, 4, h, w]` (first image only):
    /// a linear map to RGB at latent resolution, no VAE.
    pub fn preview_latent(&mut self, latent: &Tensor) -> Result<(), tch::TchError> {
        let image = latent_preview(latent)?;
        self.preview_rgb(image);
        Ok(())
    }

    /// True once this job is interrupted, or nobody waits for its result any more.
    pub fn interrupted(&self) -> bool {
        self.flags.is_interrupted(self.job_id) || (self.abandoned)()
    }

    /// True when the current batch should end now (the next one still runs).
    pub fn skipped(&self) -> bool {
        self.flags.is_skipped(self.job_id)
    }
}

fn latent_preview(latent: &Tensor) -> Result<RgbImage, tch::TchError> {
    let x = latent.f_get(0)?.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
    let (_, h, w) = x.size3()?;
    let factors = Tensor::from_slice(&SD1_LATENT_RGB.concat()).f_reshape([4, 3])?;
    let rgb = x.f_permute([1, 2, 0])?.f_matmul(&factors)?;
    let rgb = ((rgb + 1.0) * 127.5).f_clamp(0.0, 255.0)?.f_to_kind(Kind::Uint8)?.f_contiguous()?;
    let bytes = Vec::<u8>::try_from(rgb.f_flatten(0, -1)?)?;
    Ok(RgbImage { width: w as u32, height: h as u32, rgb: bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_flags_target_only_their_job() {
        let flags = InterruptFlags::default();
        flags.interrupt(3);
        assert!(flags.is_interrupted(3));
        assert!(!flags.is_interrupted(4), "a late interrupt must not stop the next job");
        flags.skip(4);
        flags.clear_skip(3);
        assert!(flags.is_skipped(4), "clearing another job's skip leaves this one");
        flags.clear_skip(4);
        assert!(!flags.is_skipped(4));
        assert!(!flags.is_interrupted(0));
    }

    #[test]
    fn step_hooks_report_progress_and_fraction() {
        let board = Arc::new(ProgressBoard::default());
        let flags = Arc::new(InterruptFlags::default());
        board.start(7, "scripts_txt2img", 2);
        let mut hooks = StepHooks::new(7, board.clone(), flags.clone(), Box::new(|| false), Some(5));
        hooks.begin_batch(1, 20);
        hooks.step(10);
        let s = board.snapshot();
        assert_eq!((s.job_no, s.sampling_step, s.sampling_steps), (1, 10, 20));
        assert!((s.fraction() - (0.01 + 0.5 + 0.25)).abs() < 1e-9);
        assert!(hooks.wants_preview(10) && !hooks.wants_preview(11));
        flags.skip(7);
        assert!(hooks.skipped());
        hooks.begin_batch(2, 20);
        assert!(!hooks.skipped(), "a skip ends one batch only");
        flags.interrupt(7);
        assert!(hooks.interrupted());
        board.idle();
        assert_eq!(board.snapshot().fraction(), 0.0);
    }

    #[test]
    fn preview_latent_maps_to_rgb_at_latent_size() {
        let mut hooks = StepHooks::detached();
        let board = hooks.board.clone();
        hooks.preview_latent(&Tensor::zeros([2, 4, 3, 5], (Kind::Float, Device::Cpu))).unwrap();
        let preview = board.snapshot().preview.unwrap();
        assert_eq!((preview.image.width, preview.image.height), (5, 3));
        // A zero latent maps to mid-grey.
        assert!(preview.image.rgb.iter().all(|&v| v == 127));
        assert_eq!(preview.image.rgb.len(), 5 * 3 * 3);
    }
}
