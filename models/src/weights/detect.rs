//! Which kind of model a checkpoint holds, from its keys and shapes alone (formats.md §5.1).
//! A1111 single files carry no config, so this is the only source of truth.

use super::names::UNET;
use super::TensorSource;
use crate::error::{Error, Result};

/// Model families diffusiond recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamily {
    /// SD1.x text-to-image (4 input channels).
    Sd1,
    /// SD1.x inpainting (9 input channels: latent, mask, masked-image latent).
    Sd1Inpainting,
    /// instruct-pix2pix (8 input channels).
    Sd1Pix2Pix,
    Sd2,
    Sdxl,
    SdxlRefiner,
}

impl ModelFamily {
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::Sd1 => "SD1.x",
            ModelFamily::Sd1Inpainting => "SD1.x inpainting",
            ModelFamily::Sd1Pix2Pix => "SD1.x instruct-pix2pix",
            ModelFamily::Sd2 => "SD2.x",
            ModelFamily::Sdxl => "SDXL",
            ModelFamily::SdxlRefiner => "SDXL refiner",
        }
    }

    /// Whether this build can run the family.
    pub fn is_supported(self) -> bool {
        matches!(self, ModelFamily::Sd1 | ModelFamily::Sd1Inpainting | ModelFamily::Sd1Pix2Pix)
    }
}

/// Applies the decision table of formats.md §5.1 to canonical (A1111) names.
pub fn detect_family(src: &dyn TensorSource) -> Result<ModelFamily> {
    let shape = |name: &str| src.info(name).map(|i| i.shape);
    if src.contains("conditioner.embedders.1.model.ln_final.weight") {
        return Ok(ModelFamily::Sdxl);
    }
    if let Some(s) = shape("conditioner.embedders.0.model.ln_final.weight") {
        return Ok(if s[0] == 1280 { ModelFamily::SdxlRefiner } else { ModelFamily::Sd2 });
    }
    if shape("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight").is_some() {
        return Ok(ModelFamily::Sd2);
    }
    let conv_in =
        shape(&format!("{UNET}input_blocks.0.0.weight")).ok_or_else(|| Error::UnknownCheckpoint {
            file: src.origin().into(),
            reason: format!("not a Stable Diffusion checkpoint: no `{UNET}input_blocks.0.0.weight`"),
        })?;
    // SD2 files without the OpenCLIP keys still show their 1024-wide context in the UNet.
    let context = src
        .names()
        .into_iter()
        .find(|n| n.starts_with(UNET) && n.ends_with("attn2.to_k.weight"))
        .and_then(|n| shape(&n))
        .map(|s| s[1]);
    if context == Some(1024) {
        return Ok(ModelFamily::Sd2);
    }
    if context == Some(2048) {
        return Ok(ModelFamily::Sdxl);
    }
    Ok(match conv_in.get(1) {
        Some(9) => ModelFamily::Sd1Inpainting,
        Some(8) => ModelFamily::Sd1Pix2Pix,
        _ => ModelFamily::Sd1,
    })
}
