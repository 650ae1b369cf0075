//! The engine: one named OS thread owns the device and every tensor; handlers reach it only
//! through the queue actor (anchors §6).
//!
//! ```text
//! handlers ──append(Job{reply})──▶ queue task (tokio): State ◀──next(resident)── engine thread
//!    ▲  ▲                                                                         │
//!    │  └── watch<ProgressSnapshot>, watch<EngineStatus> ◀────────────────────────┤
//!    │      InterruptFlags (job-id atomics) ────────────────────────────────────▶ │
//!    └──────────────────────── oneshot JobOutcome ◀───────────────────────────────┘
//! ```
//!
//! - [`job`]: the engine-side job types (validated parameters, images, errors).
//! - [`queue`]: the queue actor and its ordering policy.
//! - [`worker`]: the engine thread's loop.
//! - [`cache`]: the device / host-memory LRU of loaded checkpoints.
//! - [`progress`]: progress snapshots, interrupt and skip targeting, [`StepHooks`].
//! - [`generate`]: the sampling pipeline's entry point.
//!
//! Start-up keeps the ready handshake: [`start`] returns only once the start-up checkpoint has
//! loaded (or with the load error), before the server accepts requests.

pub mod cache;
pub mod generate;
pub mod job;
pub mod progress;
pub mod queue;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use models::device::Placement;
use tokio::sync::{oneshot, watch};

pub use job::{
    CheckpointRef, GeneratedImage, GenerationJob, GenerationMode, Job, JobError, JobId, JobKind, JobOutcome,
    JobOutput,
};
pub use progress::{InterruptFlags, ProgressBoard, ProgressSnapshot, StepHooks};
pub use queue::{Queue, QueueError};
pub use worker::EngineStatus;

use cache::{CheckpointTiers, ModelCache};
use worker::Worker;

/// Sizes of the engine's caches.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    pub vram_checkpoints: usize,
    pub ram_checkpoints: usize,
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("loading {title}: {source}")]
    Load { title: String, source: JobError },
    #[error("starting the engine thread: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("the engine thread stopped while loading")]
    Died,
}

/// A job to submit: its work, the checkpoint it needs, and its A1111 task id.
pub struct Submission {
    pub kind: JobKind,
    pub checkpoint: Option<CheckpointRef>,
    pub task_id: String,
    pub keep_if_abandoned: bool,
}

tokio::task_local! {
    /// Set around a generate-forever batch; see [`in_background`].
    static BACKGROUND: bool;
}

/// Runs `work` so that every job it submits queues as background work, which the queue runs only
/// when no interactive job waits. A scope rather than a [`Submission`] field, so that a forever
/// batch goes through the same script and generation path as an interactive request.
pub async fn in_background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope(true, work).await
}

/// A queued job: its id and where its outcome will arrive.
pub struct Submitted {
    pub id: JobId,
    pub outcome: oneshot::Receiver<JobOutcome>,
}

/// A cheap handle to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    queue: Queue,
    board: Arc<ProgressBoard>,
    flags: Arc<InterruptFlags>,
    status: watch::Receiver<EngineStatus>,
    next_id: Arc<AtomicU64>,
}

impl EngineHandle {
    /// Queues a job. Fails at once when the queue is full or the engine has stopped.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted, QueueError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            id,
            kind: submission.kind,
            checkpoint: submission.checkpoint,
            task_id: submission.task_id,
            keep_if_abandoned: submission.keep_if_abandoned,
            background: BACKGROUND.try_with(|b| *b).unwrap_or(false),
            reply,
            span: tracing::Span::current(),
        };
        let ahead = self.queue.append(job).await?;
        tracing::debug!(job_id = id, ahead, "job queued");
        Ok(Submitted { id, outcome })
    }

    /// The latest progress snapshot.
    pub fn progress(&self) -> ProgressSnapshot {
        self.board.snapshot()
    }

    /// The interrupt and skip targets (for `/progress`'s `interrupted` and `skipped`).
    pub fn flags(&self) -> &InterruptFlags {
        &self.flags
    }

    /// Interrupts the running job, if any; returns its id.
    pub fn interrupt(&self) -> Option<JobId> {
        let id = self.board.snapshot().job_id?;
        self.flags.interrupt(id);
        Some(id)
    }

    /// Skips the running job's current batch, if any; returns its id.
    pub fn skip(&self) -> Option<JobId> {
        let id = self.board.snapshot().job_id?;
        self.flags.skip(id);
        Some(id)
    }

    /// What the engine holds.
    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    /// Stops taking jobs; the engine thread ends after its current job.
    pub fn shutdown(&self) {
        self.queue.shutdown();
    }
}

/// Starts the engine thread serving `queue` and waits until it has loaded `initial`, if any.
/// Blocks: call it off the async runtime.
pub fn start(
    placement: Placement,
    limits: EngineLimits,
    queue: Queue,
    initial: Option<CheckpointRef>,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>), StartError> {
    let board = Arc::new(ProgressBoard::default());
    let flags = Arc::new(InterruptFlags::default());
    let (status_tx, status_rx) = watch::channel(EngineStatus::default());
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), StartError>>(1);
    let mut worker = Worker {
        cache: ModelCache::new(
            CheckpointTiers { placement },
            limits.vram_checkpoints,
            limits.ram_checkpoints,
        ),
        board: board.clone(),
        flags: flags.clone(),
        status: status_tx,
        training: None,
    };
    let engine_queue = queue.clone();
    let join = std::thread::Builder::new().name("engine".into()).spawn(move || {
        // Grad mode is per thread; nothing on this thread ever needs gradients.
        let _no_grad = tch::no_grad_guard();
        if let Some(checkpoint) = initial {
            let started = std::time::Instant::now();
            if let Err(source) = worker.load_initial(&checkpoint.path) {
                let _ = ready_tx.send(Err(StartError::Load { title: checkpoint.title, source }));
                return;
            }
            let arch = worker.status.borrow().architecture.clone().unwrap_or_default();
            tracing::info!(checkpoint = %checkpoint.title, seconds = started.elapsed().as_secs_f64(), "loaded {arch}");
        }
        let _ = ready_tx.send(Ok(()));
        worker.run(engine_queue);
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {
            let handle =
                EngineHandle { queue, board, flags, status: status_rx, next_id: Arc::new(AtomicU64::new(1)) };
            Ok((handle, join))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StartError::Died),
    }
}
