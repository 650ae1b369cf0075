//! Generate forever, server-side (issue 5, deliverable 6): a stored txt2img request run batch
//! after batch until it is stopped, every image saved under `outputs/` with its infotext.
//!
//! - Each batch is the stored request sent through [`crate::scripts::txt2img`], the path an
//!   interactive request takes, so templates and Randomizer Keywords expand afresh per batch and
//!   a seed of -1 (or none) is drawn afresh. `save_images` is forced on (and `send_images` off,
//!   since nobody reads the answer's images) whatever the request says.
//! - Every batch reads the job's current request, so one replaced through
//!   [`Forever::replace_request`] takes effect from the next batch on.
//! - Batches are submitted inside [`crate::engine::in_background`]: the queue runs them only when
//!   no interactive request waits. Each forever job keeps at most one batch queued, so among
//!   several forever jobs the queue's resident-checkpoint-first rule orders their batches to
//!   minimise checkpoint switches (see [`crate::engine::queue`]).
//! - A failed batch records `last_error` and the job goes on; after
//!   [`MAX_CONSECUTIVE_FAILURES`] failures in a row it becomes `failed`. A full queue is not a
//!   failure: the batch is retried after a pause. A batch that panics fails alone, in its own
//!   task.
//! - Jobs are stored in `<data-dir>/jobs/forever.json` (written through a temporary file and a
//!   rename after every change); at start-up running jobs resume with their counters, and a
//!   job that was stopping is stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::AppState;

/// Failed batches in a row after which a job gives up.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// How long a batch refused by a full queue waits before it is offered again.
const BUSY_RETRY: Duration = Duration::from_millis(500);

/// The longest `last_error` kept (some errors quote whole requests).
const MAX_ERROR_CHARS: usize = 2000;

/// Where a forever job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForeverState {
    /// Generating batch after batch.
    Running,
    /// Asked to stop; the current batch finishes first.
    Stopping,
    Stopped,
    /// Gave up after [`MAX_CONSECUTIVE_FAILURES`] failed batches in a row.
    Failed,
}

/// One forever job, as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForeverJob {
    pub id: String,
    /// The txt2img request body as it was posted.
    pub request: Map<String, Value>,
    pub state: ForeverState,
    /// Batches that finished successfully.
    pub batches: u64,
    /// Images those batches made (and saved).
    pub images: u64,
    pub failed_batches: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
    pub updated: String,
}

/// How one batch ended.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchOutcome {
    /// The batch made this many images.
    Done(u64),
    Failed(String),
}

impl ForeverJob {
    fn new(id: String, request: Map<String, Value>) -> ForeverJob {
        let now = now();
        ForeverJob {
            id,
            request,
            state: ForeverState::Running,
            batches: 0,
            images: 0,
            failed_batches: 0,
            consecutive_failures: 0,
            last_error: None,
            created: now.clone(),
            updated: now,
        }
    }

    /// Counts a finished batch; a stopping job is then stopped, and one failure too many makes
    /// a job failed.
    pub fn record(&mut self, outcome: BatchOutcome) {
        match outcome {
            BatchOutcome::Done(images) => {
                self.batches += 1;
                self.images += images;
                self.consecutive_failures = 0;
            }
            BatchOutcome::Failed(message) => {
                self.failed_batches += 1;
                self.consecutive_failures += 1;
                self.last_error = Some(message.chars().take(MAX_ERROR_CHARS).collect());
                if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                    self.state = ForeverState::Failed;
                }
            }
        }
        if self.state == ForeverState::Stopping {
            self.state = ForeverState::Stopped;
        }
        self.updated = now();
    }

    /// Asks the job to stop after its current batch; jobs already ended stay as they are.
    pub fn request_stop(&mut self) {
        if self.state == ForeverState::Running {
            self.state = ForeverState::Stopping;
            self.updated = now();
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The file's layout.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    jobs: Vec<ForeverJob>,
}

/// The forever jobs of one daemon and their store.
pub struct Forever {
    path: PathBuf,
    jobs: Mutex<Vec<ForeverJob>>,
    /// Set when the daemon shuts down: batches cut short by the engine stopping are not failures.
    closed: AtomicBool,
}

impl Forever {
    /// Reads `<data-dir>/jobs/forever.json`. A file that does not parse is moved aside (with a
    /// warning) rather than overwritten, and the daemon starts without jobs.
    pub fn load(data_dir: &Path) -> Forever {
        let path = data_dir.join("jobs").join("forever.json");
        let jobs = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Stored>(&bytes) {
                Ok(stored) => stored.jobs,
                Err(e) => {
                    let aside = path.with_extension("json.unreadable");
                    tracing::warn!(file = %path.display(), cause = %e, aside = %aside.display(),
                        "forever jobs file does not parse; moving it aside");
                    let _ = std::fs::rename(&path, &aside);
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), cause = %e, "cannot read forever jobs");
                Vec::new()
            }
        };
        Forever { path, jobs: Mutex::new(jobs), closed: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ForeverJob>> {
        self.jobs.lock().expect("forever jobs lock poisoned; this is a bug")
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<ForeverJob> {
        self.lock().clone()
    }

    pub fn get(&self, id: &str) -> Option<ForeverJob> {
        self.lock().iter().find(|j| j.id == id).cloned()
    }

    /// Replaces a job's request; its next batch uses the new one (the browser feature's "edits
    /// take effect on the next iteration"). `None` for an unknown id.
    pub fn replace_request(&self, id: &str, request: Map<String, Value>) -> Option<ForeverJob> {
        self.update(id, |j| {
            j.request = request;
            j.updated = now();
        })
    }

    /// Asks a job to stop after its current batch; `None` for an unknown id.
    pub fn stop(&self, id: &str) -> Option<ForeverJob> {
        self.update(id, ForeverJob::request_stop)
    }

    /// Stops driving jobs (the daemon is shutting down); their stored state stays as it is so
    /// that they resume at the next start.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Adds a running job for `request` and starts driving it.
    pub fn start(self: &Arc<Self>, app: web::Data<AppState>, request: Map<String, Value>) -> ForeverJob {
        let job = {
            let mut jobs = self.lock();
            // Ids count up across restarts: one past the largest stored.
            let next = jobs.iter().filter_map(|j| j.id.parse::<u64>().ok()).max().unwrap_or(0) + 1;
            let job = ForeverJob::new(next.to_string(), request);
            jobs.push(job.clone());
            self.persist(&jobs);
            job
        };
        actix_web::rt::spawn(drive(self.clone(), app, job.id.clone()));
        job
    }

    /// At start-up: settles jobs a previous run left stopping and drives the running ones.
    pub fn resume(self: &Arc<Self>, app: web::Data<AppState>) {
        let running: Vec<String> = {
            let mut jobs = self.lock();
            for job in jobs.iter_mut().filter(|j| j.state == ForeverState::Stopping) {
                job.state = ForeverState::Stopped;
                job.updated = now();
            }
            self.persist(&jobs);
            jobs.iter().filter(|j| j.state == ForeverState::Running).map(|j| j.id.clone()).collect()
        };
        for id in running {
            tracing::info!(job = %id, "resuming forever job");
            actix_web::rt::spawn(drive(self.clone(), app.clone(), id));
        }
    }

    /// Applies `change` to a job and stores the result.
    fn update(&self, id: &str, change: impl FnOnce(&mut ForeverJob)) -> Option<ForeverJob> {
        let mut jobs = self.lock();
        let job = jobs.iter_mut().find(|j| j.id == id)?;
        change(job);
        let out = job.clone();
        self.persist(&jobs);
        Some(out)
    }

    /// Writes the store; called with the lock held so that writes land in order. A failed
    /// write is logged: the jobs go on, and the next change writes everything again.
    fn persist(&self, jobs: &[ForeverJob]) {
        let stored = Stored { jobs: jobs.to_vec() };
        let bytes = serde_json::to_vec_pretty(&stored).expect("forever jobs serialise; this is a bug");
        if let Err(e) = crate::fsutil::write_atomic(&self.path, &bytes) {
            tracing::warn!(file = %self.path.display(), cause = %e, "could not store forever jobs");
        }
    }
}

/// How one attempt at a batch ended, as the driving loop sees it.
enum Attempt {
    Finished(BatchOutcome),
    /// The queue was full: try again later, uncounted.
    Busy,
}

/// Runs job `id` batch after batch until it is no longer running or the daemon shuts down.
async fn drive(forever: Arc<Forever>, app: web::Data<AppState>, id: String) {
    loop {
        if forever.is_closed() {
            return;
        }
        let Some(job) = forever.get(&id) else { return };
        match job.state {
            ForeverState::Running => {}
            ForeverState::Stopping => {
                // Stopped between batches.
                forever.update(&id, |j| {
                    j.state = ForeverState::Stopped;
                    j.updated = now();
                });
                return;
            }
            ForeverState::Stopped | ForeverState::Failed => return,
        }
        let body = batch_body(&job.request);
        // Its own task, so that a panic in the batch fails the batch, not this loop.
        let attempt = actix_web::rt::spawn(crate::engine::in_background(run_batch(app.clone(), body))).await;
        if forever.is_closed() {
            return;
        }
        let outcome = match attempt {
            Ok(Attempt::Busy) => {
                actix_web::rt::time::sleep(BUSY_RETRY).await;
                continue;
            }
            Ok(Attempt::Finished(outcome)) => outcome,
            Err(e) => BatchOutcome::Failed(format!("the batch failed unexpectedly: {e}")),
        };
        if let BatchOutcome::Failed(message) = &outcome {
            tracing::warn!(job = %id, cause = %message, "forever batch failed");
        }
        match forever.update(&id, |j| j.record(outcome)) {
            Some(j) if j.state == ForeverState::Failed => {
                tracing::error!(job = %id, failures = j.consecutive_failures, "forever job gave up");
                return;
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// The stored request as one batch: saved to disk whatever it says, and no images sent back
/// (the X/Y/Z plot builds its grid from the images its cells send, so there it is left alone).
fn batch_body(request: &Map<String, Value>) -> web::Bytes {
    let mut body = request.clone();
    body.insert("save_images".into(), Value::Bool(true));
    let script = body.get("script_name").and_then(Value::as_str).unwrap_or("");
    if script.is_empty() {
        body.insert("send_images".into(), Value::Bool(false));
    }
    web::Bytes::from(serde_json::to_vec(&body).expect("a JSON map serialises; this is a bug"))
}

async fn run_batch(app: web::Data<AppState>, body: web::Bytes) -> Attempt {
    let response = crate::scripts::txt2img(app, body).await;
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        return Attempt::Busy;
    }
    if response.status() != StatusCode::OK {
        return Attempt::Finished(BatchOutcome::Failed(error_text(response).await));
    }
    Attempt::Finished(match crate::scripts::read_answer(response).await {
        Ok(answer) => BatchOutcome::Done(answer.info.infotexts.len() as u64),
        Err(e) => BatchOutcome::Failed(e.to_string()),
    })
}

/// The message of an error answer: its `detail` (or `errors`) when it is a string, else the
/// body as it is, prefixed by the status.
async fn error_text(response: HttpResponse) -> String {
    let status = response.status();
    let bytes = actix_web::body::to_bytes(response.into_body()).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let message = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
        ["errors", "detail"].iter().find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
    });
    format!("{}: {}", status.as_u16(), message.unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> ForeverJob {
        ForeverJob::new("1".into(), json!({"prompt": "a cat"}).as_object().unwrap().clone())
    }

    #[test]
    fn forever_job_record_counts_batches_and_images() {
        let mut j = job();
        j.record(BatchOutcome::Done(2));
        j.record(BatchOutcome::Done(3));
        assert_eq!((j.batches, j.images, j.state), (2, 5, ForeverState::Running));
    }

    #[test]
    fn forever_job_record_fails_after_five_failures_in_a_row() {
        let mut j = job();
        for _ in 0..4 {
            j.record(BatchOutcome::Failed("boom".into()));
        }
        j.record(BatchOutcome::Done(1));
        assert_eq!((j.state, j.consecutive_failures), (ForeverState::Running, 0), "a success resets");
        for i in 1..=MAX_CONSECUTIVE_FAILURES {
            assert_eq!(j.state, ForeverState::Running, "after {} failures", i - 1);
            j.record(BatchOutcome::Failed(format!("boom {i}")));
        }
        assert_eq!(j.state, ForeverState::Failed);
        assert_eq!(j.failed_batches, 9);
        assert_eq!(j.last_error.as_deref(), Some("boom 5"));
    }

    #[test]
    fn forever_job_stop_takes_effect_after_the_current_batch() {
        let mut j = job();
        j.request_stop();
        assert_eq!(j.state, ForeverState::Stopping);
        j.record(BatchOutcome::Done(1));
        assert_eq!((j.state, j.images), (ForeverState::Stopped, 1));
        j.request_stop();
        assert_eq!(j.state, ForeverState::Stopped, "an ended job stays ended");
    }

    #[test]
    fn forever_load_reads_what_was_stored_and_moves_a_broken_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let forever = Forever::load(dir.path());
        let stored = job();
        forever.lock().push(stored.clone());
        forever.persist(&forever.lock());
        assert_eq!(Forever::load(dir.path()).list(), vec![stored]);

        std::fs::write(dir.path().join("jobs/forever.json"), b"{not json").unwrap();
        assert!(Forever::load(dir.path()).list().is_empty());
        assert!(dir.path().join("jobs/forever.json.unreadable").is_file());
    }

    #[test]
    fn batch_body_forces_saving_and_skips_sending() {
        let request = json!({"prompt": "a cat", "save_images": false, "send_images": true});
        let body: Value = serde_json::from_slice(&batch_body(request.as_object().unwrap())).unwrap();
        assert_eq!(body, json!({"prompt": "a cat", "save_images": true, "send_images": false}));
    }
}
