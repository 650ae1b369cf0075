//! The checkpoint catalog: files under the checkpoint folder, named as A1111 names them (§7.1 of
//! the API spec): `name` is the path relative to the folder, `model_name` the same with separators
//! replaced by `_` and without extension, `title` is `name` until the hash is known.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointEntry {
    pub title: String,
    pub model_name: String,
    pub hash: Option<String>,
    pub sha256: Option<String>,
    pub filename: String,
    pub config: Option<String>,
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub path: PathBuf,
}

fn is_checkpoint(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext_ok = name.ends_with(".safetensors") || name.ends_with(".ckpt");
    ext_ok && !name.ends_with(".vae.safetensors") && !name.ends_with(".vae.ckpt")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // A diffusers pipeline folder is one checkpoint; other folders are walked.
            if models::weights::diffusers::is_diffusers_folder(&path) {
                out.push(path);
            } else {
                walk(&path, out);
            }
        } else if is_checkpoint(&path) {
            out.push(path);
        }
    }
}

/// Lists the checkpoints under `dir`, sorted by name.
pub fn scan_checkpoints(dir: &Path) -> Vec<CheckpointEntry> {
    let mut paths = Vec::new();
    walk(dir, &mut paths);
    let mut entries: Vec<CheckpointEntry> = paths
        .into_iter()
        .map(|path| {
            let name = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            let stem = name
                .strip_suffix(".safetensors")
                .or_else(|| name.strip_suffix(".ckpt"))
                .unwrap_or(&name)
                .to_string();
            let yaml = path.with_extension("yaml");
            CheckpointEntry {
                title: name.clone(),
                model_name: stem.replace('/', "_"),
                hash: None,
                sha256: None,
                filename: std::fs::canonicalize(&path).unwrap_or(path.clone()).to_string_lossy().into_owned(),
                config: yaml.is_file().then(|| yaml.to_string_lossy().into_owned()),
                name,
                path,
            }
        })
        .collect();
    entries.sort_by_key(|e| e.name.to_lowercase());
    entries
}

/// Finds a checkpoint by any name A1111 accepts before hashing: title, name, model_name or
/// file stem.
pub fn find<'a>(entries: &'a [CheckpointEntry], wanted: &str) -> Option<&'a CheckpointEntry> {
    entries.iter().find(|e| {
        let stem = e.path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        e.title == wanted || e.name == wanted || e.model_name == wanted || stem == wanted
    })
}
