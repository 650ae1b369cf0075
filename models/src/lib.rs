//! Stable Diffusion model code on tch (libtorch).
//!
//! # Layout
//! - [`weights`]: tensor sources (safetensors memory maps, the safe pickle reader, diffusers
//!   folders), key-name dialects, architecture detection from tensor shapes, and [`weights::Weights`],
//!   the builder that hands named, shape-checked, cast tensors to module constructors.
//! - [`nn`]: the small set of layers the models are made of (linear, conv, norms, attention).
//! - [`clip`]: the CLIP BPE tokenizer and the CLIP text transformer.
//! - [`conditioning`]: prompt segments → 75-token chunks → weighted CLIP conditioning (A1111 rules).
//! - [`unet`]: the SD1.x UNet (port of diffusers `UNet2DConditionModel`, LDM key names).
//! - [`vae`]: the KL autoencoder (port of diffusers `AutoencoderKL`, LDM key names).
//! - [`lora`]: LoRA / LyCORIS networks merged into a loaded model's weights, and restored.
//! - [`checkpoint`]: opening a checkpoint in any supported layout and building its components.
//! - [`device`]: device and compute-dtype policy.
//! - [`sampling`]: sigma schedules, the CompVis denoiser and every A1111 sampler (k-diffusion maths).
//! - [`upscale`]: ESRGAN-family pixel upscalers (RRDBNet) and A1111's tiled inference.
//! - [`upscale_latent`]: hires fix's latent upscale modes (torch `interpolate`).
//! - [`train`]: kohya-style LoRA training: optimizers, LR schedules, loss weighting, the trainable
//!   LoRA network, the training loop and kohya-format saving.
//! - [`rng`]: A1111's seeded noise (CPU, GPU and NV sources), variation seeds, seed resize, ENSD.
//!
//! Weights are addressed by their A1111/LDM single-file key names throughout; other layouts are
//! renamed to those names when opened (see [`weights::names`]).

pub mod checkpoint;
pub mod clip;
pub mod conditioning;
pub mod device;
pub mod error;
pub mod lora;
pub mod nn;
pub mod pipeline;
pub mod rng;
pub mod sampling;
pub mod train;
pub mod unet;
pub mod upscale;
pub mod upscale_latent;
pub mod vae;
pub mod weights;

pub use error::{Error, Result};
