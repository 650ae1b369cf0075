//! What the engine runs: validated, engine-side job types. A1111's wire names stop at
//! `validate`; everything here is already resolved (seeds drawn, sampler and scheduler picked,
//! options and overrides applied, images decoded to RGB), so the pipeline never looks at JSON.

use std::path::PathBuf;

use tokio::sync::oneshot;

/// A monotonic job number, starting at 1 (0 means "no job" in [`super::progress::InterruptFlags`]).
pub type JobId = u64;

/// A checkpoint as the engine knows it: its path is the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckpointRef {
    pub path: PathBuf,
    /// The title at submission time, for logs and errors.
    pub title: String,
}

/// txt2img or img2img.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationMode {
    Txt2Img,
    Img2Img,
}

impl GenerationMode {
    /// The `state.job` name `/progress` shows while the job runs.
    pub fn job_name(self) -> &'static str {
        match self {
            GenerationMode::Txt2Img => "scripts_txt2img",
            GenerationMode::Img2Img => "scripts_img2img",
        }
    }
}

/// An 8-bit RGB image, rows top to bottom, `rgb.len() == width * height * 3`.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// An inpainting mask, one byte per pixel: 255 marks the area to regenerate (after
/// `inpainting_mask_invert` has been applied by the pipeline, not before).
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub luma: Vec<u8>,
}

/// Hires fix: the second pass of txt2img (a1111-api.md §3.2).
#[derive(Clone, Debug, PartialEq)]
pub struct HiresParams {
    /// Final size; the first pass renders at the job's `width` × `height`.
    pub target_width: u32,
    pub target_height: u32,
    /// True when both `hr_resize_x` and `hr_resize_y` were given: scale to cover, then crop.
    pub crop_to_target: bool,
    /// The requested factor (for the infotext's `Hires upscale`), when no explicit size was given.
    pub scale: Option<f64>,
    /// `hr_resize_x` × `hr_resize_y` as requested (one may be 0), for the infotext's
    /// `Hires resize`; `None` when the size came from `hr_scale`.
    pub resize: Option<(u32, u32)>,
    /// A latent mode (`Latent`, `Latent (bicubic)`, …) or an upscaler name (`Lanczos`, an
    /// ESRGAN file's name, …).
    pub upscaler: String,
    /// Whether the request named the upscaler (A1111 writes `Hires upscaler` only then; the
    /// default is `Latent`).
    pub upscaler_given: bool,
    /// The model file behind `upscaler` when it is not built in (ESRGAN), with A1111's tiling.
    pub upscaler_model: Option<UpscalerModel>,
    pub steps: u32,
    /// `hr_second_pass_steps` as requested (0: the first pass's steps), for `Hires steps`.
    pub second_pass_steps: u32,
    pub sampler: String,
    pub scheduler: String,
    /// One per image; equal to the first-pass prompts unless `hr_prompt` was set.
    pub prompts: Vec<String>,
    pub negative_prompts: Vec<String>,
    pub denoising_strength: f64,
}

/// An upscaler model file resolved from the catalog, with the `ESRGAN_tile` /
/// `ESRGAN_tile_overlap` options at submission time.
#[derive(Clone, Debug, PartialEq)]
pub struct UpscalerModel {
    pub path: PathBuf,
    /// Tile size in pixels (0 = the whole image at once).
    pub tile: u32,
    pub tile_overlap: u32,
}

/// img2img inputs (a1111-api.md §3.3).
#[derive(Clone, Debug, PartialEq)]
pub struct Img2ImgParams {
    /// One image (repeated over the batch) or exactly `batch_size` images.
    pub init_images: Vec<RgbImage>,
    pub mask: Option<Mask>,
    /// 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale.
    pub resize_mode: u8,
    pub mask_blur_x: u32,
    pub mask_blur_y: u32,
    pub mask_round: bool,
    /// 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    pub inpainting_fill: u8,
    /// "Only masked" when true.
    pub inpaint_full_res: bool,
    pub inpaint_full_res_padding: u32,
    pub inpainting_mask_invert: bool,
    /// instruct-pix2pix models only.
    pub image_cfg_scale: Option<f64>,
}

/// Sampler settings that come from options (A1111 reads them there even when a request sends
/// same-named fields), after `override_settings`.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerSettings {
    pub eta_ancestral: f64,
    pub eta_ddim: f64,
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
    pub s_min_uncond: f64,
    /// 0 means the model's own value.
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub rho: f64,
    pub always_discard_next_to_last_sigma: bool,
    /// ENSD.
    pub eta_noise_seed_delta: i64,
    /// `GPU`, `CPU` or `NV`.
    pub randn_source: String,
    pub initial_noise_multiplier: f64,
    pub img2img_fix_steps: bool,
    pub inpainting_mask_weight: f64,
    /// `Original`, `No norm`, `Ignore`, `None`.
    pub emphasis: String,
}

/// What the infotext needs to know that is not a generation parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct InfotextContext {
    /// Checkpoint file name without extension (infotext `Model`).
    pub model_name: String,
    /// 10-hex short sha256 (infotext `Model hash`), when known.
    pub model_hash: Option<String>,
    /// External VAE file name and short hash, when one is used.
    pub vae_name: Option<String>,
    pub vae_hash: Option<String>,
    /// Infotext `Version`.
    pub version: String,
    pub add_model_hash: bool,
    pub add_model_name: bool,
    pub add_vae_name: bool,
    pub add_vae_hash: bool,
    pub add_version: bool,
    pub lora_add_hashes: bool,
    pub textual_inversion_add_hashes: bool,
}

/// A validated txt2img or img2img request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationJob {
    pub mode: GenerationMode,
    /// One per image (`n_iter * batch_size`), styles applied, extra-network tags kept.
    pub prompts: Vec<String>,
    pub negative_prompts: Vec<String>,
    /// One per image: `seed + i`, or all equal when variation is on (a1111-api.md §8.3).
    pub seeds: Vec<i64>,
    /// One per image: `subseed + i`.
    pub subseeds: Vec<i64>,
    pub subseed_strength: f64,
    /// "Resize seed from" (width, height), when both are positive.
    pub seed_resize_from: Option<(u32, u32)>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f64,
    /// A sampler name of `/samplers` (`Euler a`, `DPM++ 2M`, …).
    pub sampler: String,
    /// A schedule label of `/schedulers` (`Automatic`, `Karras`, …).
    pub scheduler: String,
    pub batch_size: usize,
    pub n_iter: usize,
    /// `CLIP_stop_at_last_layers` (1 = last layer).
    pub clip_skip: u32,
    /// The request's `eta`; `None` means the option for the sampler's family.
    pub eta: Option<f64>,
    /// img2img strength; in txt2img only set with hires fix.
    pub denoising_strength: Option<f64>,
    pub tiling: bool,
    pub disable_extra_networks: bool,
    /// The style names that were applied to the prompts.
    pub styles: Vec<String>,
    pub hires: Option<HiresParams>,
    pub img2img: Option<Img2ImgParams>,
    pub sampler_settings: SamplerSettings,
    /// An external VAE file to decode with instead of the checkpoint's own.
    pub vae: Option<PathBuf>,
    /// Where `<lora:name:w>` and textual-inversion names are looked up.
    pub lora_dir: PathBuf,
    pub embeddings_dir: PathBuf,
    /// Live previews every N steps; `None` when disabled.
    pub preview_every_n_steps: Option<u32>,
    pub infotext: InfotextContext,
}

impl GenerationJob {
    /// Total images.
    pub fn image_count(&self) -> usize {
        self.batch_size * self.n_iter
    }
}

/// One image the pipeline produced.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedImage {
    /// 8-bit RGB, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub seed: i64,
    pub subseed: i64,
    pub prompt: String,
    pub negative_prompt: String,
    /// The A1111 "parameters" text for this image.
    pub infotext: String,
}

/// Why a job failed. Everything a job can do wrong ends here; the engine itself carries on.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A feature this build does not have.
    #[error("{0}")]
    Unsupported(String),
    /// The request is well-formed but cannot be run (e.g. a mask the size of no init image).
    #[error("{0}")]
    Invalid(String),
    /// The device ran out of memory; the job is dropped and its memory released.
    #[error("out of memory: {0}")]
    Oom(String),
    /// The job panicked (libtorch exceptions surface as panics in tch).
    #[error("the job failed unexpectedly: {0}")]
    Panic(String),
    /// Loading or running a model failed.
    #[error(transparent)]
    Model(#[from] models::Error),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl JobError {
    /// Classifies a failure message: libtorch reports device exhaustion only in text.
    pub fn from_message(message: String) -> JobError {
        if message.contains("out of memory") || message.contains("OutOfMemory") {
            JobError::Oom(message)
        } else {
            JobError::Panic(message)
        }
    }

    /// Re-labels errors whose text says the device ran out of memory.
    pub fn classify(self) -> JobError {
        match self {
            JobError::Torch(e) if e.to_string().contains("out of memory") => JobError::Oom(e.to_string()),
            JobError::Model(models::Error::Torch(e)) if e.to_string().contains("out of memory") => {
                JobError::Oom(e.to_string())
            }
            other => other,
        }
    }
}

/// The kinds of work the engine does, all ordered through the one queue.
#[derive(Debug)]
pub enum JobKind {
    /// Shared with the submitting handler, which builds the response `info` from it.
    Generate(std::sync::Arc<GenerationJob>),
    /// Make the job's checkpoint resident (`sd_model_checkpoint` changes).
    LoadCheckpoint,
    /// Move every device-resident checkpoint off the device (`/unload-checkpoint`).
    Unload,
    /// A slice of a LoRA training run: steps for about two seconds, then back to the queue
    /// ([`crate::train`]).
    TrainSlice(std::sync::Arc<crate::train::TrainRun>),
    /// Images through an ESRGAN-family model file (extras and hires fix's pixel upscale).
    Upscale(std::sync::Arc<UpscaleJob>),
}

/// A model upscale: each image goes through A1111's `Upscaler.upscale` loop with the model, up to
/// `int(size · scale) // 8 · 8`; the caller makes the final resize.
#[derive(Debug)]
pub struct UpscaleJob {
    pub model: PathBuf,
    pub images: Vec<RgbImage>,
    pub scale: f64,
    /// `ESRGAN_tile` / `ESRGAN_tile_overlap` (0 = no tiling).
    pub tile: u32,
    pub tile_overlap: u32,
    /// Device and compute dtype for the model (the engine's).
    pub placement: models::device::Placement,
}

/// What a finished job hands back.
#[derive(Debug)]
pub enum JobOutput {
    Images(Vec<GeneratedImage>),
    /// A checkpoint job finished; the architecture line of the model now active, if any.
    Loaded(Option<String>),
    /// The upscaled images of a [`JobKind::Upscale`], in order.
    Upscaled(Vec<RgbImage>),
    Done,
}

pub type JobOutcome = Result<JobOutput, JobError>;

/// A job in the queue: its work, the checkpoint it needs and where its result goes.
#[derive(Debug)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    /// The checkpoint that must be active; `None` for work that needs no model.
    pub checkpoint: Option<CheckpointRef>,
    /// The A1111 task id (`force_task_id` or `task(txt2img-…)`), for logs.
    pub task_id: String,
    /// Keep running when the client has gone away (the images are saved to disk).
    pub keep_if_abandoned: bool,
    /// Unattended work (a generate-forever batch): it runs only when no interactive job waits.
    pub background: bool,
    pub reply: oneshot::Sender<JobOutcome>,
    /// The submitting request's span, so the engine's logs attach to it.
    pub span: tracing::Span,
}

impl Job {
    /// Whether nobody waits for the result any more and nothing else needs it.
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed() && !self.keep_if_abandoned
    }
}
