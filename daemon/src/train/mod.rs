//! LoRA training over HTTP with kohya's recipe (`/train/lora`, `/train/jobs`; training spec
//! §1, §7, §8).
//!
//! - [`request`]: the request body, the guide's defaults and the resolved [`request::Recipe`].
//!   The repeats/epochs plan is `models::train::plan`, with the steps per epoch counted per
//!   bucket ([`dataset::steps_per_epoch`]).
//! - [`dataset`]: decoding (EXIF orientation), square crop or buckets (`models::train::bucket`),
//!   resizing, caption files, kohya folder names and regularisation pairing
//!   (`models::train::dataset`); the prepared images are stored with the job.
//! - [`jobs`]: job records, `job.json` persistence and the [`jobs::TrainManager`] task.
//! - [`slice`]: the engine side: one slice of steps per engine job.
//! - [`tensorboard`]: event files. Sample prompts are parsed by `models::train::sample_prompt`.
//!
//! # Sharing the engine with generation
//!
//! One training run at a time uses the device; it runs on the engine thread in *slices*. The
//! manager task submits a [`crate::engine::JobKind::TrainSlice`] job; the slice takes optimizer
//! steps for about two seconds, or up to the end of an epoch (where the LoRA is saved and samples
//! are drawn), and returns. The manager then persists `job.json` and submits the next slice at the
//! back of the queue, so a generation request queued meanwhile runs between two slices and waits
//! at most one slice. The run owns its own fp32 copy of the base model, loaded with
//! `StableDiffusion::load` rather than taken from the checkpoint cache, kept by the worker between
//! slices ([`slice::ActiveTraining`]): LoRA merges of generation requests never touch the training
//! weights. While a slice runs, `/sdapi/v1/progress` shows `state.job` `"train"` with the global
//! step as `sampling_step` and the total steps as `sampling_steps`.
//!
//! # Files
//!
//! - `<data-dir>/train/<id>/job.json`: the job record (temporary file, then rename).
//! - `<data-dir>/train/<id>/dataset/`: the prepared images (`NNNN.png`) and `dataset.json`.
//! - `<data-dir>/train/<id>/state.safetensors`: the resumable state of the last save point.
//! - `<data-dir>/train/<id>/events.out.tfevents.*`: TensorBoard scalars (`loss/current`,
//!   `loss/average`, `loss/epoch`, `lr/unet`, `lr/textencoder`, `lr/d*lr`).
//! - `<data-dir>/train/<id>/samples/`: sample images.
//! - `<lora dir>/<name>-NNNNNN.safetensors` at every `save_every_n_epochs` epoch (the last epoch
//!   included) and `<name>.safetensors` at the end, in kohya's format.
//!
//! A daemon that stops during a run leaves its job `running` in `job.json`; at the next start
//! the job is queued again and resumes from `state.safetensors` (steps after the last save are
//! trained again, with the same batches: the session's randomness is derived from the seed and
//! the step).

pub mod dataset;
pub mod jobs;
pub mod request;
pub mod slice;
pub mod tensorboard;

pub use jobs::{TrainJobRecord, TrainManager, TrainRun, TrainState};
pub use slice::ActiveTraining;
