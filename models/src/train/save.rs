//! Saving a trained network as kohya writes it (training spec §4.4–4.6, formats.md §8.1, §8.6):
//! `<name>.lora_down.weight` / `.lora_up.weight` / 0-dim `.alpha`, string metadata with the
//! `ss_*` keys, and the `sshs_model_hash` / `sshs_legacy_hash` that A1111 reads instead of hashing
//! the file, written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};
use tch::Kind;

use crate::error::{Error, Result};
use crate::weights::safetensors_file::{serialize, write_atomic};

use super::lora_net::LoraNetwork;
use super::optim::py_float;
use super::TrainConfig;

/// Facts about the run that the metadata records and the network does not know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunInfo {
    pub output_name: String,
    /// Checkpoint file name (`ss_sd_model_name`).
    pub sd_model_name: String,
    pub steps: u64,
    pub epoch: u64,
    pub num_train_images: u64,
    pub num_reg_images: u64,
    /// `(width, height)` (`ss_resolution`).
    pub resolution: (u32, u32),
    pub training_started_at: f64,
    pub training_finished_at: f64,
    pub session_id: u64,
}

/// The `ss_*` metadata kohya writes for `config` and `run` (a subset: the dataset keys the
/// trainer does not know yet are absent). Values are Python `str()` forms.
pub fn kohya_metadata(
    network: &LoraNetwork,
    config: &TrainConfig,
    run: &RunInfo,
) -> BTreeMap<String, String> {
    let n = &network.config;
    let opt_float = |x: Option<f64>| x.map_or("None".to_string(), py_float);
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("ss_session_id", run.session_id.to_string());
    put("ss_training_started_at", py_float(run.training_started_at));
    put("ss_training_finished_at", py_float(run.training_finished_at));
    put("ss_output_name", run.output_name.clone());
    put("ss_sd_model_name", run.sd_model_name.clone());
    put("ss_v2", "False".into());
    put("ss_base_model_version", "sd_v1".into());
    put("ss_network_module", "networks.lora".into());
    put("ss_network_dim", n.rank.to_string());
    put("ss_network_alpha", n.alpha.map_or("None".to_string(), py_float));
    put("ss_network_dropout", "None".into());
    if let Some((dim, alpha)) = n.conv {
        put(
            "ss_network_args",
            format!("{{\"conv_dim\": \"{dim}\", \"conv_alpha\": \"{}\"}}", py_float(alpha)),
        );
    }
    put("ss_learning_rate", py_float(config.learning_rate));
    put("ss_unet_lr", opt_float(config.unet_lr));
    put("ss_text_encoder_lr", opt_float(config.text_encoder_lr));
    put("ss_optimizer", config.optimizer.describe());
    put("ss_lr_scheduler", config.scheduler.name().into());
    put("ss_lr_warmup_steps", config.warmup_steps.to_string());
    put("ss_max_train_steps", config.max_train_steps.to_string());
    put("ss_max_grad_norm", py_float(config.max_grad_norm));
    put("ss_batch_size_per_device", config.batch_size.to_string());
    put("ss_total_batch_size", config.batch_size.to_string());
    put("ss_gradient_accumulation_steps", "1".into());
    put("ss_steps", run.steps.to_string());
    put("ss_epoch", run.epoch.to_string());
    put("ss_num_train_images", run.num_train_images.to_string());
    put("ss_num_reg_images", run.num_reg_images.to_string());
    put("ss_resolution", format!("({}, {})", run.resolution.0, run.resolution.1));
    put("ss_clip_skip", config.clip_skip.to_string());
    put("ss_seed", config.seed.to_string());
    put("ss_noise_offset", opt_float(config.noise_offset));
    put("ss_min_snr_gamma", opt_float(config.weighting.min_snr_gamma));
    put("ss_prior_loss_weight", py_float(config.weighting.prior_loss_weight));
    put("ss_cache_latents", "True".into());
    put("ss_mixed_precision", config.mixed_precision.name().into());
    put("ss_full_fp16", "False".into());
    put("ss_gradient_checkpointing", if config.gradient_checkpointing { "True" } else { "False" }.into());
    put("ss_loss_type", "l2".into());
    m
}

/// kohya's `precalculate_safetensors_hashes`: serialise the tensors with only the `ss_*`
/// metadata, then `sshs_model_hash` = SHA-256 of everything after the header and
/// `sshs_legacy_hash` = first 8 hex digits of SHA-256 of bytes `[0x100000, 0x110000)`.
pub fn kohya_hashes(bytes_of_ss_only_file: &[u8]) -> Result<(String, String)> {
    let b = bytes_of_ss_only_file;
    let bad =
        || Error::UnknownFormat { file: "<memory>".into(), reason: "safetensors buffer too short".into() };
    let len = u64::from_le_bytes(b.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let data = b.get(8 + len..).ok_or_else(bad)?;
    let model = hex::encode(Sha256::digest(data));
    let lo = 0x100000.min(b.len());
    let hi = 0x110000.min(b.len());
    let legacy = hex::encode(Sha256::digest(&b[lo..hi]))[..8].to_string();
    Ok((model, legacy))
}

/// Writes `network` to `path` in kohya's format with `metadata` (kohya's keys from
/// [`kohya_metadata`], plus any others) and the two `sshs_*` hashes, every tensor in `kind`.
pub fn save_kohya(
    network: &LoraNetwork,
    path: &Path,
    metadata: &BTreeMap<String, String>,
    kind: Kind,
) -> Result<()> {
    let tensors = network.state_dict(kind);
    let ss_only: HashMap<String, String> =
        metadata.iter().filter(|(k, _)| k.starts_with("ss_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    // Laid out as `write_atomic` lays the file out, so the data section hashes the same.
    let bytes = serialize(&tensors, Some(ss_only), Path::new("<memory>"))?;
    let (model_hash, legacy_hash) = kohya_hashes(&bytes)?;
    let mut full: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    full.insert("sshs_model_hash".into(), model_hash);
    full.insert("sshs_legacy_hash".into(), legacy_hash);
    write_atomic(path, &tensors, Some(full))
}
