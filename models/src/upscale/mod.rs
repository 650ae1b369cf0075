//! Pixel-space upscalers: the ESRGAN family (RRDBNet), as A1111 runs them for extras and hires fix.
//!
//! - [`esrgan`]: the RRDBNet network, its settings inferred from tensor shapes, loading both the old
//!   ESRGAN key layout and the Real-ESRGAN / BSRGAN layouts from `.pth` or `.safetensors`.
//! - [`tiling`]: A1111's tiled inference (`split_grid` / `combine_grid`): overlapping tiles upscaled
//!   one at a time and joined with 8-bit linear ramps, so large images fit in device memory.
//!
//! The final resize to the requested size (Pillow's Lanczos) belongs to the caller, which owns the
//! image code; this module works on 8-bit RGB buffers and tensors only.

pub mod esrgan;
pub mod tiling;

pub use esrgan::{Esrgan, EsrganConfig};
pub use tiling::{RgbBuffer, ESRGAN_TILE, ESRGAN_TILE_OVERLAP};
