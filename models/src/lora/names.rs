//! Resolving kohya's flattened module names (`lora_unet_down_blocks_0_…_to_q`) to the model's own
//! parameters. Flattening `.` to `_` is lossy, so the table is built forward (formats.md §8.2):
//! every weight of the loaded model is written out in each dialect a LoRA may address it by (LDM
//! names, diffusers names, HF CLIP names), flattened, prefixed, and looked up by exact match.

use std::collections::HashMap;

use crate::weights::names;

/// Which multiplier of `<lora:name:te:unet>` applies to a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    TextEncoder,
    Unet,
}

/// One resolvable target: the canonical name of the module (the parameter name without
/// `.weight`) and the component it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub module: String,
    pub component: Component,
}

fn flatten(path: &str) -> String {
    path.replace('.', "_")
}

/// diffusers' resnet sub-module names for LDM ResBlock ones (the inverse of the loader's map).
fn resnet_diffusers(tail: &str) -> Option<String> {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ];
    MAP.iter().find(|(ldm, _)| *ldm == tail).map(|(_, d)| d.to_string())
}

fn index_and_rest(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// The diffusers module path of an LDM UNet module path (no `model.diffusion_model.` prefix, no
/// `.weight`), for a UNet with `r` res blocks per down level. `None` for modules diffusers does not
/// have. The inverse of [`names::unet_diffusers_to_ldm`]; a test checks they agree.
pub fn unet_ldm_to_diffusers(ldm: &str, r: usize) -> Option<String> {
    let simple = [
        ("input_blocks.0.0", "conv_in"),
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ];
    if let Some((_, d)) = simple.iter().find(|(l, _)| *l == ldm) {
        return Some(d.to_string());
    }
    if let Some(rest) = ldm.strip_prefix("input_blocks.") {
        let (k, rest) = index_and_rest(rest)?;
        let (slot, tail) = index_and_rest(rest)?;
        let (level, j) = ((k - 1) / (r + 1), (k - 1) % (r + 1));
        return match (slot, j == r) {
            (0, true) => (tail == "op").then(|| format!("down_blocks.{level}.downsamplers.0.conv")),
            (0, false) => Some(format!("down_blocks.{level}.resnets.{j}.{}", resnet_diffusers(tail)?)),
            (1, false) => Some(format!("down_blocks.{level}.attentions.{j}.{tail}")),
            _ => None,
        };
    }
    if let Some(rest) = ldm.strip_prefix("middle_block.") {
        let (slot, tail) = index_and_rest(rest)?;
        return match slot {
            0 | 2 => Some(format!("mid_block.resnets.{}.{}", slot / 2, resnet_diffusers(tail)?)),
            1 => Some(format!("mid_block.attentions.0.{tail}")),
            _ => None,
        };
    }
    if let Some(rest) = ldm.strip_prefix("output_blocks.") {
        let (k, rest) = index_and_rest(rest)?;
        let (slot, tail) = index_and_rest(rest)?;
        let (level, j) = (k / (r + 1), k % (r + 1));
        // The upsampler sits in slot 1 when the level has no attention, else in slot 2; either
        // way it is the only module named `conv` in an output block.
        if slot > 0 && tail == "conv" {
            return (j == r).then(|| format!("up_blocks.{level}.upsamplers.0.conv"));
        }
        return match slot {
            0 => Some(format!("up_blocks.{level}.resnets.{j}.{}", resnet_diffusers(tail)?)),
            1 => Some(format!("up_blocks.{level}.attentions.{j}.{tail}")),
            _ => None,
        };
    }
    None
}

/// Flattened LoRA module name → target, for every weight in `params` (A1111 names).
/// `res_blocks` is the UNet's res blocks per down level.
pub fn key_table<'a>(
    params: impl IntoIterator<Item = &'a String>,
    res_blocks: usize,
) -> HashMap<String, Target> {
    let mut table = HashMap::new();
    for name in params {
        let Some(module) = name.strip_suffix(".weight") else { continue };
        let target = |component| Target { module: module.to_string(), component };
        if let Some(ldm) = module.strip_prefix(names::UNET) {
            table.insert(format!("lora_unet_{}", flatten(ldm)), target(Component::Unet));
            if let Some(d) = unet_ldm_to_diffusers(ldm, res_blocks) {
                table.insert(format!("lora_unet_{}", flatten(&d)), target(Component::Unet));
            }
        } else if let Some(hf) = module.strip_prefix(names::CLIP) {
            for prefix in ["lora_te_text_model_", "lora_te1_text_model_"] {
                table.insert(format!("{prefix}{}", flatten(hf)), target(Component::TextEncoder));
            }
        }
    }
    table
}
