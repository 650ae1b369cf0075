//! The job queue: a small actor between the HTTP handlers and the engine thread, after TGI's
//! `Queue` (cheap handle) / `queue_task` (the actor) / `State` (plain data) split.
//!
//! Handlers append; the engine, when free, asks for its next job and says which checkpoints are
//! on the device, so the choice is made at the last moment with exact knowledge. [`State`] holds
//! the policy and is tested synchronously:
//! - FIFO, except that a job whose checkpoint is already on the device may run before queued jobs
//!   that would need a checkpoint switch, so a switch does not evict a model that queued work is
//!   about to use. Each job can be passed at most [`MAX_OVERTAKES`] times, so nobody starves.
//! - Jobs without a checkpoint (unloading) are barriers: nothing passes them.
//! - Two classes: interactive jobs (API requests) and background jobs (generate-forever
//!   batches). A background job runs only when no interactive job is queued; within each class
//!   the rules above apply unchanged, and passing a job of the other class counts for nothing.
//!   Each forever job keeps at most one batch queued, so among background jobs the
//!   resident-first rule is what orders several forever jobs to minimise checkpoint switches:
//!   batches for the checkpoint on the device run before those that would switch, and a batch
//!   that needs a switch waits for at most [`MAX_OVERTAKES`] others.
//! - Jobs whose client has gone away are dropped before they cost device time.
//! - Past the capacity, new jobs are refused (the handler answers 503).

use std::collections::VecDeque;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::job::Job;

/// How many times one queued job may be passed by jobs for a resident checkpoint.
pub const MAX_OVERTAKES: u32 = 4;

struct Entry {
    job: Job,
    overtaken: u32,
}

/// The queue's contents and ordering policy.
pub struct State {
    entries: VecDeque<Entry>,
    capacity: usize,
}

impl State {
    pub fn new(capacity: usize) -> Self {
        State { entries: VecDeque::new(), capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues `job`, returning how many jobs are ahead of it, or the job back when full.
    pub fn append(&mut self, job: Job) -> Result<usize, Box<Job>> {
        self.entries.retain(|e| !e.job.abandoned());
        if self.entries.len() >= self.capacity {
            return Err(Box::new(job));
        }
        self.entries.push_back(Entry { job, overtaken: 0 });
        Ok(self.entries.len() - 1)
    }

    /// The next job to run, given the checkpoints now on the device.
    pub fn next(&mut self, resident: &[PathBuf]) -> Option<Job> {
        self.entries.retain(|e| !e.job.abandoned());
        // Background work waits while any interactive job is queued.
        let background = self.entries.iter().all(|e| e.job.background);
        let class: Vec<usize> =
            (0..self.entries.len()).filter(|&i| self.entries[i].job.background == background).collect();
        let cheap = |e: &Entry| e.job.checkpoint.as_ref().is_some_and(|c| resident.contains(&c.path));
        let mut chosen = *class.first()?;
        for &i in &class {
            let e = &self.entries[i];
            if cheap(e) {
                chosen = i;
                break;
            }
            let barrier = e.job.checkpoint.is_none();
            if barrier || e.overtaken >= MAX_OVERTAKES {
                break;
            }
        }
        for &i in class.iter().take_while(|&&i| i != chosen) {
            self.entries[i].overtaken += 1;
        }
        self.entries.remove(chosen).map(|e| e.job)
    }
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({0} jobs waiting)")]
    Full(usize),
    #[error("the engine has stopped")]
    Stopped,
}

enum QueueCommand {
    Append { job: Job, accepted: oneshot::Sender<Result<usize, QueueError>> },
    Next { resident: Vec<PathBuf>, reply: oneshot::Sender<Job> },
    Shutdown,
}

/// A cheap handle to the queue actor.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<QueueCommand>,
}

impl Queue {
    /// Spawns the actor on the current tokio runtime.
    pub fn spawn(capacity: usize) -> Queue {
        // Commands are answered immediately, so a short channel only bounds bursts.
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(queue_task(rx, State::new(capacity)));
        Queue { tx }
    }

    /// Queues `job`; returns how many jobs are ahead of it.
    pub async fn append(&self, job: Job) -> Result<usize, QueueError> {
        let (accepted, rx) = oneshot::channel();
        self.tx.send(QueueCommand::Append { job, accepted }).await.map_err(|_| QueueError::Stopped)?;
        rx.await.map_err(|_| QueueError::Stopped)?
    }

    /// For the engine thread: blocks until a job is available; `None` once the queue has shut
    /// down.
    pub fn blocking_next(&self, resident: Vec<PathBuf>) -> Option<Job> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(QueueCommand::Next { resident, reply }).ok()?;
        rx.blocking_recv().ok()
    }

    /// Stops the actor; queued jobs are dropped (their callers see the engine stop) and the
    /// engine's next request for work returns `None`.
    pub fn shutdown(&self) {
        let _ = self.tx.try_send(QueueCommand::Shutdown);
    }
}

async fn queue_task(mut rx: mpsc::Receiver<QueueCommand>, mut state: State) {
    // The engine's outstanding request for work, if it is idle.
    let mut waiting: Option<(Vec<PathBuf>, oneshot::Sender<Job>)> = None;
    while let Some(command) = rx.recv().await {
        match command {
            QueueCommand::Append { job, accepted } => {
                let result = state.append(job).map_err(|_| QueueError::Full(state.len()));
                let _ = accepted.send(result);
            }
            QueueCommand::Next { resident, reply } => waiting = Some((resident, reply)),
            QueueCommand::Shutdown => break,
        }
        if let Some((resident, reply)) = waiting.take() {
            match state.next(&resident) {
                Some(job) => {
                    if let Err(job) = reply.send(job) {
                        // The engine stopped between asking and receiving; nobody will run it.
                        drop(job);
                        break;
                    }
                }
                None => waiting = Some((resident, reply)),
            }
        }
    }
    tracing::debug!(dropped = state.len(), "queue stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::{CheckpointRef, JobKind, JobOutcome};

    fn job(id: u64, checkpoint: Option<&str>) -> (Job, oneshot::Receiver<JobOutcome>) {
        job_of_class(id, checkpoint, false)
    }

    fn background(id: u64, checkpoint: &str) -> (Job, oneshot::Receiver<JobOutcome>) {
        job_of_class(id, Some(checkpoint), true)
    }

    fn job_of_class(
        id: u64,
        checkpoint: Option<&str>,
        background: bool,
    ) -> (Job, oneshot::Receiver<JobOutcome>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            id,
            kind: if checkpoint.is_some() { JobKind::LoadCheckpoint } else { JobKind::Unload },
            checkpoint: checkpoint.map(|c| CheckpointRef { path: c.into(), title: c.into() }),
            task_id: format!("task({id})"),
            keep_if_abandoned: false,
            background,
            reply,
            span: tracing::Span::none(),
        };
        (job, rx)
    }

    fn ids(state: &mut State, resident: &[&str]) -> Vec<u64> {
        let resident: Vec<PathBuf> = resident.iter().map(PathBuf::from).collect();
        std::iter::from_fn(|| state.next(&resident).map(|j| j.id)).collect()
    }

    #[test]
    fn state_append_past_capacity_rejects() {
        let mut state = State::new(2);
        let (a, _ra) = job(1, Some("a"));
        let (b, _rb) = job(2, Some("a"));
        let (c, _rc) = job(3, Some("a"));
        assert_eq!(state.append(a).unwrap(), 0);
        assert_eq!(state.append(b).unwrap(), 1);
        assert_eq!(state.append(c).unwrap_err().id, 3);
    }

    #[test]
    fn state_next_runs_resident_checkpoint_jobs_before_a_switch() {
        let mut state = State::new(16);
        let mut keep = Vec::new();
        for (id, ckpt) in [(1, "b"), (2, "a"), (3, "a"), (4, "b")] {
            let (j, rx) = job(id, Some(ckpt));
            keep.push(rx);
            state.append(j).unwrap();
        }
        // "a" is on the device: its jobs go first, then the switch to "b".
        assert_eq!(ids(&mut state, &["a"]), vec![2, 3, 1, 4]);
    }

    #[test]
    fn state_next_fifo_when_nothing_is_resident() {
        let mut state = State::new(16);
        let mut keep = Vec::new();
        for (id, ckpt) in [(1, "b"), (2, "a"), (3, "c")] {
            let (j, rx) = job(id, Some(ckpt));
            keep.push(rx);
            state.append(j).unwrap();
        }
        assert_eq!(ids(&mut state, &[]), vec![1, 2, 3]);
    }

    #[test]
    fn state_next_overtaken_job_runs_after_the_limit() {
        let mut state = State::new(64);
        let mut keep = Vec::new();
        let (switch, rx) = job(1, Some("b"));
        keep.push(rx);
        state.append(switch).unwrap();
        for id in 2..=10 {
            let (j, rx) = job(id, Some("a"));
            keep.push(rx);
            state.append(j).unwrap();
        }
        let order = ids(&mut state, &["a"]);
        let pos = order.iter().position(|&id| id == 1).unwrap();
        assert_eq!(pos as u32, MAX_OVERTAKES, "the switch waits for at most {MAX_OVERTAKES} jobs: {order:?}");
        assert_eq!(order.len(), 10);
    }

    #[test]
    fn state_next_never_passes_a_barrier() {
        let mut state = State::new(16);
        let mut keep = Vec::new();
        for (id, ckpt) in [(1, Some("b")), (2, None), (3, Some("a"))] {
            let (j, rx) = job(id, ckpt);
            keep.push(rx);
            state.append(j).unwrap();
        }
        assert_eq!(ids(&mut state, &["a"]), vec![1, 2, 3]);
    }

    #[test]
    fn state_next_drops_jobs_whose_client_left() {
        let mut state = State::new(16);
        let (a, ra) = job(1, Some("a"));
        let (b, _rb) = job(2, Some("a"));
        state.append(a).unwrap();
        state.append(b).unwrap();
        drop(ra);
        assert_eq!(ids(&mut state, &["a"]), vec![2]);
    }

    fn fill(
        state: &mut State,
        jobs: Vec<(Job, oneshot::Receiver<JobOutcome>)>,
    ) -> Vec<oneshot::Receiver<JobOutcome>> {
        jobs.into_iter()
            .map(|(j, rx)| {
                state.append(j).unwrap();
                rx
            })
            .collect()
    }

    #[test]
    fn state_next_runs_interactive_jobs_before_background_ones() {
        let mut state = State::new(16);
        let _keep = fill(
            &mut state,
            vec![background(1, "a"), job(2, Some("b")), background(3, "a"), job(4, Some("b"))],
        );
        // Even with "a" resident, the interactive jobs for "b" go first.
        assert_eq!(ids(&mut state, &["a"]), vec![2, 4, 1, 3]);
    }

    #[test]
    fn state_next_interactive_job_arriving_later_goes_ahead_of_waiting_background() {
        let mut state = State::new(16);
        let mut keep = fill(&mut state, vec![background(1, "a"), background(2, "a")]);
        assert_eq!(state.next(&[PathBuf::from("a")]).unwrap().id, 1);
        keep.extend(fill(&mut state, vec![job(3, Some("a"))]));
        assert_eq!(ids(&mut state, &["a"]), vec![3, 2]);
    }

    #[test]
    fn state_next_background_jobs_prefer_the_resident_checkpoint() {
        let mut state = State::new(16);
        // Three forever jobs, one batch each: the one for the resident checkpoint runs first.
        let _keep = fill(&mut state, vec![background(1, "b"), background(2, "a"), background(3, "c")]);
        assert_eq!(ids(&mut state, &["a"]), vec![2, 1, 3]);
    }

    #[test]
    fn state_next_background_job_for_a_switch_waits_at_most_the_limit() {
        let mut state = State::new(64);
        let mut jobs = vec![background(1, "b")];
        jobs.extend((2..=10).map(|id| background(id, "a")));
        let _keep = fill(&mut state, jobs);
        let order = ids(&mut state, &["a"]);
        assert_eq!(order.iter().position(|&id| id == 1), Some(MAX_OVERTAKES as usize), "{order:?}");
    }

    #[test]
    fn state_next_passing_background_jobs_is_not_an_overtake() {
        let mut state = State::new(64);
        let mut jobs = vec![background(1, "b")];
        jobs.extend((2..=6).map(|id| job(id, Some("a"))));
        jobs.extend((7..=12).map(|id| background(id, "a")));
        let _keep = fill(&mut state, jobs);
        // Five interactive jobs pass job 1 without using up its overtakes: it still lets
        // MAX_OVERTAKES background jobs for the resident checkpoint go first.
        assert_eq!(ids(&mut state, &["a"]), vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 11, 12]);
    }

    #[tokio::test]
    async fn queue_actor_hands_jobs_to_a_waiting_engine_in_order() {
        let queue = Queue::spawn(8);
        let engine_queue = queue.clone();
        let engine = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Some(job) = engine_queue.blocking_next(Vec::new()) {
                seen.push(job.id);
                let _ = job.reply.send(Ok(crate::engine::job::JobOutput::Done));
            }
            seen
        });
        let mut receivers = Vec::new();
        for id in 1..=5 {
            let (j, rx) = job(id, Some("a"));
            queue.append(j).await.unwrap();
            receivers.push(rx);
        }
        for rx in receivers {
            assert!(matches!(rx.await, Ok(Ok(_))));
        }
        queue.shutdown();
        let seen = tokio::task::spawn_blocking(move || engine.join().unwrap()).await.unwrap();
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    }
}
