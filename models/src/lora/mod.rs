//! LoRA and LyCORIS networks at inference, merged into the model's weights (formats.md §8).
//!
//! A set of networks (`<lora:name:te:unet>` tags) is merged in place into the weights the model's
//! modules hold ([`StableDiffusion::params`]): `W ← W + m·s·ΔW`, computed in fp32 and cast back
//! to the weight's dtype, one network after another as A1111 does. [`LoraState`] keeps a CPU copy
//! of every weight it changed and restores those copies before merging a different set, so
//! rounding never accumulates across requests and an empty set gives back the checkpoint's own
//! weights bit for bit. Re-applying the set that is already merged does nothing (the set is keyed
//! by file, modification time and multipliers).
//!
//! - [`names`]: the forward table from kohya's flattened module names to the model's weights.
//! - [`network`]: reading a file and each algorithm's update (LoRA/LoCon, LoHa, LoKr, (IA)³,
//!   full diff, DoRA).

pub mod names;
pub mod network;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::StableDiffusion;
use crate::error::{Error, Result};
use names::{key_table, Component};
use network::{Module, Network};

/// One network of a set and its multipliers.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub te_multiplier: f64,
    pub unet_multiplier: f64,
}

/// What identifies a merged set: a file edited on disk is a different network.
#[derive(Clone, Debug, PartialEq)]
struct SetKey {
    path: PathBuf,
    modified: Option<SystemTime>,
    te_multiplier: f64,
    unet_multiplier: f64,
}

/// The set of networks merged into a model and the original weights they replaced.
pub struct LoraState {
    /// The merged set; `None` while the weights are in no known state (a merge failed midway).
    applied: Option<Vec<SetKey>>,
    /// Original values (CPU) of every weight changed since the last restore.
    backups: HashMap<String, Tensor>,
}

impl Default for LoraState {
    fn default() -> Self {
        LoraState { applied: Some(Vec::new()), backups: HashMap::new() }
    }
}

impl LoraState {
    /// Number of weights currently differing from the checkpoint's.
    pub fn changed_weights(&self) -> usize {
        self.backups.len()
    }

    /// Puts every changed weight back, bit-exactly.
    pub fn restore(&mut self, params: &HashMap<String, Tensor>) -> Result<()> {
        for (name, original) in self.backups.drain() {
            if let Some(p) = params.get(&name) {
                p.shallow_clone().f_copy_(&original)?;
            }
        }
        self.applied = Some(Vec::new());
        Ok(())
    }

    /// Merges `set` into `params` (a UNet with `res_blocks` res blocks per level), restoring the
    /// previous set first. Returns whether any weight was touched (false when `set` is already
    /// merged). Files that cannot be read and modules that match nothing are skipped with a
    /// warning, as A1111 does.
    pub fn apply(
        &mut self,
        params: &HashMap<String, Tensor>,
        res_blocks: usize,
        set: &[LoraSpec],
    ) -> Result<bool> {
        let key: Vec<SetKey> = set
            .iter()
            .map(|s| SetKey {
                path: s.path.clone(),
                modified: std::fs::metadata(&s.path).and_then(|m| m.modified()).ok(),
                te_multiplier: s.te_multiplier,
                unet_multiplier: s.unet_multiplier,
            })
            .collect();
        if self.applied.as_ref() == Some(&key) {
            return Ok(false);
        }
        let _guard = tch::no_grad_guard();
        self.applied = None;
        self.restore(params)?;
        self.applied = None;
        let table = key_table(params.keys(), res_blocks);
        for spec in set {
            let net = match Network::load(&spec.path) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(file = %spec.path.display(), cause = %e, "LoRA skipped: cannot read it");
                    continue;
                }
            };
            let mut unmatched = 0usize;
            for (name, module) in &net.modules {
                let Some(target) = table.get(name) else {
                    unmatched += 1;
                    continue;
                };
                let m = match target.component {
                    Component::TextEncoder => spec.te_multiplier,
                    Component::Unet => spec.unet_multiplier,
                };
                let result = self.merge_module(params, &target.module, module, m);
                if let Err(e) = result {
                    tracing::warn!(file = %spec.path.display(), module = %name, cause = %e, "LoRA module skipped");
                }
            }
            if unmatched > 0 {
                tracing::warn!(file = %spec.path.display(), unmatched, "LoRA modules matched no weight of this model");
            }
        }
        self.applied = Some(key);
        Ok(true)
    }

    fn merge_module(
        &mut self,
        params: &HashMap<String, Tensor>,
        target: &str,
        module: &Module,
        m: f64,
    ) -> Result<()> {
        let weight = format!("{target}.weight");
        if let Some(w) = params.get(&weight) {
            let new = module.merged_weight(&w.to_kind(Kind::Float), m, &weight)?;
            self.overwrite(&weight, w, &new)?;
        }
        let bias = format!("{target}.bias");
        if let Some(b) = params.get(&bias) {
            if let Some(new) = module.merged_bias(&b.to_kind(Kind::Float), m, &bias)? {
                self.overwrite(&bias, b, &new)?;
            }
        }
        Ok(())
    }

    fn overwrite(&mut self, name: &str, param: &Tensor, value: &Tensor) -> Result<()> {
        if !self.backups.contains_key(name) {
            // `copy` so that a CPU parameter's backup owns its storage.
            let backup =
                if param.device() == Device::Cpu { param.copy() } else { param.to_device(Device::Cpu) };
            self.backups.insert(name.to_string(), backup);
        }
        param.shallow_clone().f_copy_(&value.to_kind(param.kind()))?;
        Ok(())
    }
}

impl StableDiffusion {
    /// Merges `set` into the model, replacing whatever set was merged before (an empty set
    /// restores the checkpoint's weights). Returns whether weights changed.
    pub fn apply_loras(&self, set: &[LoraSpec]) -> Result<bool> {
        let mut state = self.lora.lock().unwrap_or_else(|p| p.into_inner());
        state.apply(&self.params, self.config.unet.num_res_blocks as usize, set)
    }
}

const EXTENSIONS: [&str; 3] = ["safetensors", "pt", "ckpt"];

fn network_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            network_files(&p, out);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        {
            out.push(p);
        }
    }
}

/// Finds the network `<lora:name>` refers to under `dir` (sub-folders included): a file whose stem
/// is `name`, else a safetensors file whose `ss_output_name` metadata is `name` (A1111's alias).
pub fn find_network(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut files = Vec::new();
    network_files(dir, &mut files);
    if let Some(p) = files.iter().find(|p| p.file_stem().and_then(|s| s.to_str()) == Some(name)) {
        return Some(p.clone());
    }
    files.into_iter().find(|p| {
        safetensors_header(p)
            .ok()
            .and_then(|(_, h)| h.get("__metadata__")?.get("ss_output_name")?.as_str().map(|s| s == name))
            .unwrap_or(false)
    })
}

/// The header length and parsed header of a safetensors file.
fn safetensors_header(path: &Path) -> Result<(u64, serde_json::Value)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(Error::UnknownFormat { file: path.into(), reason: "not a safetensors file".into() });
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let json = serde_json::from_slice(&header).map_err(|e| Error::UnknownFormat {
        file: path.into(),
        reason: format!("bad safetensors header: {e}"),
    })?;
    Ok((n, json))
}

/// A1111's LoRA short hash (formats.md §12): `sshs_model_hash` from the metadata when present,
/// else the sha256 of the tensor bytes after the safetensors header, else of the whole file;
/// first 12 hex digits.
pub fn shorthash(path: &Path) -> Result<String> {
    let mut skip = 0;
    if let Ok((n, header)) = safetensors_header(path) {
        let stored =
            header.get("__metadata__").and_then(|m| m.get("sshs_model_hash")).and_then(|v| v.as_str());
        if let Some(h) = stored.filter(|h| h.len() >= 12) {
            return Ok(h[..12].to_lowercase());
        }
        skip = 8 + n;
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(skip)).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(hasher.finalize())[..12].to_string())
}
