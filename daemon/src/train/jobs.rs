//! Training jobs: their records (the wire object of `/train/jobs`), persistence under
//! `<data-dir>/train/<id>/job.json` (written to a temporary file, then renamed), and the manager
//! task that runs one job at a time by resubmitting engine slices.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use models::device::Placement;
use serde::{Deserialize, Serialize};

use models::train::plan::TrainPlan;

use super::request::Recipe;
use crate::catalog::Catalog;
use crate::engine::{EngineHandle, JobKind, QueueError, Submission};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl TrainState {
    pub fn is_final(self) -> bool {
        matches!(self, TrainState::Done | TrainState::Failed | TrainState::Cancelled)
    }
}

/// A job as `GET /train/jobs/{id}` shows it and as `job.json` stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainJobRecord {
    pub id: String,
    pub name: String,
    pub state: TrainState,
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub total_epochs: u64,
    /// `loss/average` of the last step.
    pub loss: Option<f64>,
    /// `lr/unet` of the last step.
    pub lr: Option<f64>,
    pub eta_seconds: Option<f64>,
    /// LoRA files written, relative to the LoRA folder.
    pub outputs: Vec<String>,
    /// Sample images, relative to the job folder.
    pub samples: Vec<String>,
    pub error: Option<String>,
    /// Repeats, epochs, steps per epoch (counted per bucket), total steps, save and sample
    /// cadence, and notes where the plan departs from the guide.
    pub plan: TrainPlan,
    /// The base checkpoint's title and file.
    pub base_checkpoint: String,
    pub checkpoint_path: PathBuf,
    /// The step a restarted daemon resumed this job from (the last save), if it was resumed.
    pub resumed_from: Option<u64>,
    /// Unix seconds.
    pub created: f64,
    pub recipe: Recipe,
}

/// One job shared between the handlers, the manager task and the engine thread.
#[derive(Debug)]
pub struct TrainRun {
    pub id: String,
    /// `<data-dir>/train/<id>`.
    pub dir: PathBuf,
    pub lora_dir: PathBuf,
    pub placement: Placement,
    record: Mutex<TrainJobRecord>,
    cancel: AtomicBool,
    /// How the engine ended the run, until the manager publishes it.
    ended: Mutex<Option<TrainState>>,
}

impl TrainRun {
    pub fn new(record: TrainJobRecord, dir: PathBuf, lora_dir: PathBuf, placement: Placement) -> TrainRun {
        TrainRun {
            id: record.id.clone(),
            dir,
            lora_dir,
            placement,
            cancel: AtomicBool::new(false),
            ended: Mutex::new(None),
            record: Mutex::new(record),
        }
    }

    pub fn record(&self) -> MutexGuard<'_, TrainJobRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> TrainJobRecord {
        self.record().clone()
    }

    /// Called by the engine when the run has finished or stopped.
    pub fn set_ended(&self, state: TrainState) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }

    fn take_ended(&self) -> Option<TrainState> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// `job.json`, written atomically.
    pub fn persist(&self) {
        self.write_record(&self.snapshot());
    }

    fn write_record(&self, record: &TrainJobRecord) {
        let bytes = match serde_json::to_vec_pretty(record) {
            Ok(b) => b,
            Err(e) => return tracing::error!(job = %self.id, cause = %e, "could not encode job.json"),
        };
        if let Err(e) = crate::fsutil::write_atomic(&self.dir.join("job.json"), &bytes) {
            tracing::error!(job = %self.id, cause = %e, "could not write job.json");
        }
    }

    /// `state.safetensors`: the resumable training state of the last save point.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.safetensors")
    }

    pub fn dataset_dir(&self) -> PathBuf {
        self.dir.join("dataset")
    }
}

/// All training jobs of the data folder and the task that runs them.
pub struct TrainManager {
    root: PathBuf,
    lora_dir: PathBuf,
    placement: Placement,
    runs: Mutex<Vec<Arc<TrainRun>>>,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

impl TrainManager {
    /// Reads every `<data-dir>/train/*/job.json`; jobs a previous daemon left queued or running
    /// are queued again (they resume from their last save).
    pub fn load(data_dir: &Path, lora_dir: &Path, placement: Placement) -> TrainManager {
        let root = data_dir.join("train");
        let mut runs = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        dirs.sort();
        for dir in dirs {
            let path = dir.join("job.json");
            let Ok(bytes) = std::fs::read(&path) else { continue };
            match serde_json::from_slice::<TrainJobRecord>(&bytes) {
                Ok(mut record) => {
                    if !record.state.is_final() {
                        record.state = TrainState::Queued;
                    }
                    runs.push(Arc::new(TrainRun::new(record, dir, lora_dir.to_path_buf(), placement)));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), cause = %e, "unreadable training job skipped")
                }
            }
        }
        runs.sort_by(|a, b| a.snapshot().created.total_cmp(&b.snapshot().created));
        TrainManager {
            root,
            lora_dir: lora_dir.to_path_buf(),
            placement,
            runs: Mutex::new(runs),
            wake: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn runs(&self) -> MutexGuard<'_, Vec<Arc<TrainRun>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lora_dir(&self) -> &Path {
        &self.lora_dir
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// A fresh job id: the creation time and the output name, unique in the data folder.
    pub fn new_id(&self, name: &str) -> String {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .take(40)
            .collect();
        let runs = self.runs();
        (0..)
            .map(|n| if n == 0 { format!("{stamp}-{clean}") } else { format!("{stamp}-{clean}-{n}") })
            .find(|id| !self.root.join(id).exists() && !runs.iter().any(|r| &r.id == id))
            .expect("an unused id exists")
    }

    /// Registers a job (its folder and dataset already written) and wakes the task.
    pub fn add(&self, run: Arc<TrainRun>) {
        run.persist();
        self.runs().push(run);
        self.wake.notify_one();
    }

    pub fn list(&self) -> Vec<TrainJobRecord> {
        self.runs().iter().map(|r| r.snapshot()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<TrainRun>> {
        self.runs().iter().find(|r| r.id == id).cloned()
    }

    /// Asks a job to stop. A job that has not started is cancelled at once; a running one stops
    /// at its next step (the engine slice sees the flag). Finished jobs are left as they are.
    pub fn cancel(&self, id: &str) -> Option<TrainJobRecord> {
        let run = self.get(id)?;
        run.cancel.store(true, Ordering::Release);
        let changed = {
            let mut r = run.record();
            if r.state == TrainState::Queued {
                r.state = TrainState::Cancelled;
                r.eta_seconds = None;
                true
            } else {
                false
            }
        };
        if changed {
            run.persist();
        }
        Some(run.snapshot())
    }

    /// Called before the engine stops: slices cut short then are not failures.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn next_job(&self) -> Option<Arc<TrainRun>> {
        let runs = self.runs();
        runs.iter().find(|r| !r.snapshot().state.is_final()).cloned()
    }

    /// Starts the task that runs the jobs, one at a time, until [`TrainManager::close`].
    pub fn spawn(self: &Arc<Self>, engine: EngineHandle, catalog: Arc<Catalog>) {
        let manager = self.clone();
        actix_web::rt::spawn(async move { manager.drive(engine, catalog).await });
    }

    async fn drive(self: Arc<Self>, engine: EngineHandle, catalog: Arc<Catalog>) {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let Some(run) = self.next_job() else {
                self.wake.notified().await;
                continue;
            };
            if !self.run_to_end(&run, &engine, &catalog).await {
                return;
            }
        }
    }

    /// Submits slices of `run` until it ends. `false` when the engine stopped meanwhile.
    async fn run_to_end(&self, run: &Arc<TrainRun>, engine: &EngineHandle, catalog: &Catalog) -> bool {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            let outputs_before = run.record().outputs.len();
            let submission = Submission {
                kind: JobKind::TrainSlice(run.clone()),
                checkpoint: None,
                task_id: format!("train({})", run.id),
                keep_if_abandoned: true,
            };
            let submitted = match engine.submit(submission).await {
                Ok(s) => s,
                Err(QueueError::Full(_)) => {
                    actix_web::rt::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
                Err(QueueError::Stopped) => return false,
            };
            let outcome = match submitted.outcome.await {
                Ok(o) => o,
                // The engine dropped the job: the daemon is stopping. The job stays as it was
                // and resumes from its last save at the next start.
                Err(_) => return false,
            };
            if let Err(e) = outcome {
                if self.closed.load(Ordering::SeqCst) {
                    return false;
                }
                {
                    let mut r = run.record();
                    r.error = Some(e.to_string());
                    r.eta_seconds = None;
                }
                run.set_ended(TrainState::Failed);
                tracing::error!(job = %run.id, cause = %e, "training failed");
            }
            if run.record().outputs.len() != outputs_before {
                catalog.refresh_loras();
            }
            match run.take_ended() {
                // The file first: whoever sees the final state in `/train/jobs` finds it there too.
                Some(state) => {
                    let mut record = run.snapshot();
                    record.state = state;
                    run.write_record(&record);
                    *run.record() = record;
                }
                None => run.persist(),
            }
            if run.record().state.is_final() {
                return true;
            }
        }
    }
}
