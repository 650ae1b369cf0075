//! Hires fix's latent upscalers: A1111's `latent_upscale_modes`, each one
//! `torch.nn.functional.interpolate(samples, size=…, mode=…, antialias=…)` with an explicit
//! output size (so no scale factors reach the kernels) and `align_corners` left at its default.

use tch::Tensor;

use crate::error::{Error, Result};

/// One of A1111's latent upscale modes (the `hr_upscaler` names that start with `Latent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentUpscale {
    Bilinear,
    BilinearAntialiased,
    Bicubic,
    BicubicAntialiased,
    Nearest,
    NearestExact,
}

impl LatentUpscale {
    /// The mode for an `hr_upscaler` name; `None` for pixel upscalers.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Latent" => LatentUpscale::Bilinear,
            "Latent (antialiased)" => LatentUpscale::BilinearAntialiased,
            "Latent (bicubic)" => LatentUpscale::Bicubic,
            "Latent (bicubic antialiased)" => LatentUpscale::BicubicAntialiased,
            "Latent (nearest)" => LatentUpscale::Nearest,
            "Latent (nearest-exact)" => LatentUpscale::NearestExact,
            _ => return None,
        })
    }

    /// Resizes latents `[B, C, h, w]` to `[B, C, height, width]`.
    pub fn apply(self, latents: &Tensor, height: i64, width: i64) -> Result<Tensor> {
        if latents.dim() != 4 || height <= 0 || width <= 0 {
            return Err(Error::Sampling(format!(
                "latent upscale of a {:?} tensor to {height}×{width}",
                latents.size()
            )));
        }
        let size = [height, width];
        Ok(match self {
            LatentUpscale::Bilinear => latents.f_upsample_bilinear2d(size, false, None, None)?,
            LatentUpscale::BilinearAntialiased => {
                latents.f_internal_upsample_bilinear2d_aa(size, false, None, None)?
            }
            LatentUpscale::Bicubic => latents.f_upsample_bicubic2d(size, false, None, None)?,
            LatentUpscale::BicubicAntialiased => {
                latents.f_internal_upsample_bicubic2d_aa(size, false, None, None)?
            }
            LatentUpscale::Nearest => latents.f_upsample_nearest2d(size, None, None)?,
            LatentUpscale::NearestExact => latents.f_internal_upsample_nearest_exact2d(size, None, None)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn latent_upscale_names_map_to_torch_modes_and_sizes() {
        let x = Tensor::arange(16, (Kind::Float, Device::Cpu)).reshape([1, 1, 4, 4]);
        for name in [
            "Latent",
            "Latent (antialiased)",
            "Latent (bicubic)",
            "Latent (bicubic antialiased)",
            "Latent (nearest)",
            "Latent (nearest-exact)",
        ] {
            let mode = LatentUpscale::from_name(name).unwrap();
            assert_eq!(mode.apply(&x, 8, 6).unwrap().size(), [1, 1, 8, 6], "{name}");
        }
        assert_eq!(LatentUpscale::from_name("Lanczos"), None);
        // Nearest doubling repeats every cell; bilinear (align_corners false) keeps the corner
        // value and puts the half-way value a quarter cell in.
        let n = LatentUpscale::Nearest.apply(&x, 8, 8).unwrap();
        assert_eq!(n.double_value(&[0, 0, 1, 1]), 0.0);
        assert_eq!(n.double_value(&[0, 0, 2, 2]), 5.0);
        let b = LatentUpscale::Bilinear.apply(&x, 8, 8).unwrap();
        assert_eq!(b.double_value(&[0, 0, 0, 0]), 0.0);
        assert!((b.double_value(&[0, 0, 0, 1]) - 0.25).abs() < 1e-6);
    }
}
