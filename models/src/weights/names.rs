//! Key-name dialects, all in one place. diffusiond addresses every weight by its A1111/LDM
//! single-file name (`model.diffusion_model.input_blocks.1.0.in_layers.0.weight`); this module
//! maps the other dialects onto those names, always forward (from the names a file has to the
//! canonical ones), never by parsing flattened names back. Rules: formats.md §2.5–2.8 and §6.

use std::collections::{BTreeSet, HashMap};

/// Prefix of the UNet in A1111 single files.
pub const UNET: &str = "model.diffusion_model.";
/// Prefix of the VAE in A1111 single files.
pub const VAE: &str = "first_stage_model.";
/// Prefix of the SD1 CLIP text tower in A1111 single files.
pub const CLIP: &str = "cond_stage_model.transformer.text_model.";

/// Canonical name → stored name for an A1111 single file, rewriting the legacy CLIP prefixes
/// (`cond_stage_model.transformer.encoder.` without `text_model.`) that A1111 also rewrites.
pub fn single_file_map(names: &[String]) -> HashMap<String, String> {
    const LEGACY: [&str; 3] = ["embeddings.", "encoder.", "final_layer_norm."];
    names
        .iter()
        .map(|name| {
            let canonical = name
                .strip_prefix("cond_stage_model.transformer.")
                .filter(|rest| LEGACY.iter().any(|p| rest.starts_with(p)))
                .map(|rest| format!("{CLIP}{rest}"))
                .unwrap_or_else(|| name.clone());
            (canonical, name.clone())
        })
        .collect()
}

/// The distinct values of the numeric path component right after `prefix` (`down_blocks.` → {0,1,2}).
fn indices(names: &[String], prefix: &str) -> BTreeSet<usize> {
    names.iter().filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse().ok()).collect()
}

/// The index after `prefix` and the rest of the name: `("down_blocks.", "down_blocks.2.x.y")` → `(2, "x.y")`.
fn split_index<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (idx, tail) = rest.split_once('.')?;
    Some((idx.parse().ok()?, tail))
}

fn resnet_unet(tail: &str) -> String {
    const MAP: [(&str, &str); 6] = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("time_emb_proj.", "emb_layers.1."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("conv_shortcut.", "skip_connection."),
    ];
    for (from, to) in MAP {
        if let Some(rest) = tail.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    tail.to_string()
}

/// diffusers `UNet2DConditionModel` names → LDM names (without the `model.diffusion_model.`
/// prefix). Names with no LDM counterpart are left out.
pub fn unet_diffusers_to_ldm(names: &[String]) -> HashMap<String, String> {
    // Res blocks per down level (the up levels have one more).
    let r = indices(names, "down_blocks.0.resnets.").last().map_or(0, |j| j + 1);
    let up_levels_with_attention: BTreeSet<usize> = names
        .iter()
        .filter_map(|n| {
            split_index(n, "up_blocks.").filter(|(_, t)| t.starts_with("attentions.")).map(|(l, _)| l)
        })
        .collect();
    let mut map = HashMap::new();
    for name in names {
        let ldm = if let Some(rest) = name.strip_prefix("conv_in.") {
            Some(format!("input_blocks.0.0.{rest}"))
        } else if let Some(rest) = name.strip_prefix("time_embedding.linear_1.") {
            Some(format!("time_embed.0.{rest}"))
        } else if let Some(rest) = name.strip_prefix("time_embedding.linear_2.") {
            Some(format!("time_embed.2.{rest}"))
        } else if let Some(rest) = name.strip_prefix("conv_norm_out.") {
            Some(format!("out.0.{rest}"))
        } else if let Some(rest) = name.strip_prefix("conv_out.") {
            Some(format!("out.2.{rest}"))
        } else if let Some((level, tail)) = split_index(name, "down_blocks.") {
            if let Some((j, t)) = split_index(tail, "resnets.") {
                Some(format!("input_blocks.{}.0.{}", (r + 1) * level + j + 1, resnet_unet(t)))
            } else if let Some((j, t)) = split_index(tail, "attentions.") {
                Some(format!("input_blocks.{}.1.{t}", (r + 1) * level + j + 1))
            } else {
                tail.strip_prefix("downsamplers.0.conv.")
                    .map(|t| format!("input_blocks.{}.0.op.{t}", (r + 1) * (level + 1)))
            }
        } else if let Some(tail) = name.strip_prefix("mid_block.") {
            if let Some((j, t)) = split_index(tail, "resnets.") {
                Some(format!("middle_block.{}.{}", 2 * j, resnet_unet(t)))
            } else {
                tail.strip_prefix("attentions.0.").map(|t| format!("middle_block.1.{t}"))
            }
        } else if let Some((level, tail)) = split_index(name, "up_blocks.") {
            if let Some((j, t)) = split_index(tail, "resnets.") {
                Some(format!("output_blocks.{}.0.{}", (r + 1) * level + j, resnet_unet(t)))
            } else if let Some((j, t)) = split_index(tail, "attentions.") {
                Some(format!("output_blocks.{}.1.{t}", (r + 1) * level + j))
            } else {
                let slot = if up_levels_with_attention.contains(&level) { 2 } else { 1 };
                tail.strip_prefix("upsamplers.0.conv.")
                    .map(|t| format!("output_blocks.{}.{slot}.conv.{t}", (r + 1) * level + r))
            }
        } else {
            None
        };
        if let Some(ldm) = ldm {
            map.insert(ldm, name.clone());
        }
    }
    map
}

fn resnet_vae(tail: &str) -> String {
    match tail.strip_prefix("conv_shortcut.") {
        Some(rest) => format!("nin_shortcut.{rest}"),
        None => tail.to_string(),
    }
}

fn mid_vae(tail: &str) -> Option<String> {
    if let Some((j, t)) = split_index(tail, "resnets.") {
        return Some(format!("mid.block_{}.{}", j + 1, resnet_vae(t)));
    }
    let t = tail.strip_prefix("attentions.0.")?;
    const MAP: [(&str, &str); 9] = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
        ("query.", "q."),
        ("key.", "k."),
        ("value.", "v."),
        ("proj_attn.", "proj_out."),
    ];
    MAP.iter().find_map(|(from, to)| t.strip_prefix(from).map(|rest| format!("mid.attn_1.{to}{rest}")))
}

/// diffusers `AutoencoderKL` names → LDM names (without the `first_stage_model.` prefix).
pub fn vae_diffusers_to_ldm(names: &[String]) -> HashMap<String, String> {
    let up_levels = indices(names, "decoder.up_blocks.").last().map_or(0, |l| l + 1);
    let mut map = HashMap::new();
    for name in names {
        let ldm = if [
            "quant_conv.",
            "post_quant_conv.",
            "encoder.conv_in.",
            "encoder.conv_out.",
            "decoder.conv_in.",
            "decoder.conv_out.",
        ]
        .iter()
        .any(|p| name.starts_with(p))
        {
            Some(name.clone())
        } else if let Some(rest) = name.strip_prefix("encoder.conv_norm_out.") {
            Some(format!("encoder.norm_out.{rest}"))
        } else if let Some(rest) = name.strip_prefix("decoder.conv_norm_out.") {
            Some(format!("decoder.norm_out.{rest}"))
        } else if let Some((level, tail)) = split_index(name, "encoder.down_blocks.") {
            if let Some((j, t)) = split_index(tail, "resnets.") {
                Some(format!("encoder.down.{level}.block.{j}.{}", resnet_vae(t)))
            } else {
                tail.strip_prefix("downsamplers.0.conv.")
                    .map(|t| format!("encoder.down.{level}.downsample.conv.{t}"))
            }
        } else if let Some((i, tail)) = split_index(name, "decoder.up_blocks.") {
            // diffusers counts decoder levels from the lowest resolution, LDM from the highest.
            let level = up_levels.saturating_sub(1 + i);
            if let Some((j, t)) = split_index(tail, "resnets.") {
                Some(format!("decoder.up.{level}.block.{j}.{}", resnet_vae(t)))
            } else {
                tail.strip_prefix("upsamplers.0.conv.")
                    .map(|t| format!("decoder.up.{level}.upsample.conv.{t}"))
            }
        } else if let Some(tail) = name.strip_prefix("encoder.mid_block.") {
            mid_vae(tail).map(|t| format!("encoder.{t}"))
        } else if let Some(tail) = name.strip_prefix("decoder.mid_block.") {
            mid_vae(tail).map(|t| format!("decoder.{t}"))
        } else {
            None
        };
        if let Some(ldm) = ldm {
            map.insert(ldm, name.clone());
        }
    }
    map
}

/// Canonical (prefix-less LDM) name → stored name for a standalone VAE file in any layout:
/// LDM without prefix, LDM under `first_stage_model.` or `vae.`, or diffusers naming. Training
/// leftovers (`loss.*`, `model_ema.*`) are dropped.
pub fn vae_file_map(names: &[String]) -> HashMap<String, String> {
    let kept: Vec<&String> =
        names.iter().filter(|n| !n.starts_with("loss.") && !n.starts_with("model_ema.")).collect();
    let strip = |n: &str| -> String {
        n.strip_prefix(VAE).or_else(|| n.strip_prefix("vae.")).unwrap_or(n).to_string()
    };
    let stripped: Vec<String> = kept.iter().map(|n| strip(n)).collect();
    let diffusers = stripped.iter().any(|n| n.starts_with("encoder.down_blocks."));
    let by_stripped: HashMap<&String, &String> = stripped.iter().zip(kept.iter().copied()).collect();
    if diffusers {
        vae_diffusers_to_ldm(&stripped).into_iter().map(|(ldm, d)| (ldm, by_stripped[&d].clone())).collect()
    } else {
        stripped.iter().map(|s| (s.clone(), by_stripped[s].clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unet_map_sd15_blocks_follow_ldm_numbering() {
        let mut v = vec![
            "conv_in.weight",
            "down_blocks.0.resnets.0.norm1.weight",
            "down_blocks.0.resnets.1.conv2.bias",
            "down_blocks.0.attentions.1.proj_in.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
            "down_blocks.1.resnets.0.conv_shortcut.weight",
            "down_blocks.3.resnets.1.time_emb_proj.weight",
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "mid_block.resnets.1.norm2.bias",
            "up_blocks.0.resnets.2.conv1.weight",
            "up_blocks.0.upsamplers.0.conv.weight",
            "up_blocks.1.attentions.2.norm.weight",
            "up_blocks.1.upsamplers.0.conv.bias",
            "up_blocks.3.resnets.2.conv_shortcut.weight",
            "conv_norm_out.weight",
            "conv_out.bias",
            "time_embedding.linear_2.weight",
        ];
        v.push("up_blocks.3.attentions.0.proj_out.weight");
        let map = unet_diffusers_to_ldm(&names(&v));
        let expect = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("input_blocks.2.0.out_layers.3.bias", "down_blocks.0.resnets.1.conv2.bias"),
            ("input_blocks.2.1.proj_in.weight", "down_blocks.0.attentions.1.proj_in.weight"),
            ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("input_blocks.11.0.emb_layers.1.weight", "down_blocks.3.resnets.1.time_emb_proj.weight"),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            ("middle_block.2.out_layers.0.bias", "mid_block.resnets.1.norm2.bias"),
            ("output_blocks.2.0.in_layers.2.weight", "up_blocks.0.resnets.2.conv1.weight"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight"),
            ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            ("output_blocks.11.0.skip_connection.weight", "up_blocks.3.resnets.2.conv_shortcut.weight"),
            ("output_blocks.9.1.proj_out.weight", "up_blocks.3.attentions.0.proj_out.weight"),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
        ];
        for (ldm, diff) in expect {
            assert_eq!(map.get(ldm).map(String::as_str), Some(diff), "{ldm}");
        }
        assert_eq!(map.len(), expect.len());
    }

    #[test]
    fn vae_map_reverses_decoder_levels_and_renames_attention() {
        let v = names(&[
            "decoder.up_blocks.0.resnets.2.norm1.weight",
            "decoder.up_blocks.0.upsamplers.0.conv.weight",
            "decoder.up_blocks.3.resnets.0.conv_shortcut.weight",
            "encoder.down_blocks.1.downsamplers.0.conv.bias",
            "encoder.mid_block.attentions.0.to_q.weight",
            "decoder.mid_block.attentions.0.proj_attn.bias",
            "encoder.mid_block.resnets.1.conv2.weight",
            "encoder.conv_norm_out.weight",
            "post_quant_conv.weight",
        ]);
        let map = vae_diffusers_to_ldm(&v);
        assert_eq!(map["decoder.up.3.block.2.norm1.weight"], v[0]);
        assert_eq!(map["decoder.up.3.upsample.conv.weight"], v[1]);
        assert_eq!(map["decoder.up.0.block.0.nin_shortcut.weight"], v[2]);
        assert_eq!(map["encoder.down.1.downsample.conv.bias"], v[3]);
        assert_eq!(map["encoder.mid.attn_1.q.weight"], v[4]);
        assert_eq!(map["decoder.mid.attn_1.proj_out.bias"], v[5]);
        assert_eq!(map["encoder.mid.block_2.conv2.weight"], v[6]);
        assert_eq!(map["encoder.norm_out.weight"], v[7]);
        assert_eq!(map["post_quant_conv.weight"], v[8]);
    }

    #[test]
    fn single_file_map_rewrites_legacy_clip_prefix() {
        let v = names(&[
            "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            "model.diffusion_model.out.2.weight",
        ]);
        let map = single_file_map(&v);
        assert_eq!(map[&format!("{CLIP}encoder.layers.0.mlp.fc1.weight")], v[0]);
        assert_eq!(map[&format!("{CLIP}final_layer_norm.weight")], v[1]);
        assert_eq!(map["model.diffusion_model.out.2.weight"], v[2]);
    }

    #[test]
    fn vae_file_map_strips_checkpoint_prefix_and_drops_loss_keys() {
        let v = names(&["first_stage_model.decoder.conv_in.weight", "loss.logvar", "model_ema.decay"]);
        let map = vae_file_map(&v);
        assert_eq!(map.len(), 1);
        assert_eq!(map["decoder.conv_in.weight"], v[0]);
    }
}
