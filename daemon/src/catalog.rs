//! The model files under the data folder, named as A1111 names them (a1111-api.md §7.1–7.4):
//! checkpoints, standalone VAEs, LoRAs, textual-inversion embeddings, and prompt styles.
//!
//! Read-mostly state beside the engine (anchors §6, refinement 3): handlers read an
//! `Arc<Snapshot>`; a refresh or a new hash builds a new snapshot and swaps it in whole. File
//! hashes (sha256, for titles `name [hash10]`) are computed once, off the engine thread, and kept
//! in `<data-dir>/cache.json` keyed by path, modification time and size.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use compat::api::catalog::{LoraItem, PromptStyleItem, SdModelItem, SdVaeItem};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::engine::CheckpointRef;
use crate::fsutil::{lower_name, walk_files, write_atomic};

/// One checkpoint file or diffusers folder.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointEntry {
    /// Path relative to the checkpoint folder, `/`-separated (`SDXL/juggernaut.safetensors`).
    pub name: String,
    /// `name` with separators replaced by `_`, without extension.
    pub model_name: String,
    pub path: PathBuf,
    /// Absolute path.
    pub filename: String,
    /// A `.yaml` next to the file, if any.
    pub config: Option<String>,
    /// Full sha256 of the file, once computed (folders are never hashed).
    pub sha256: Option<String>,
    /// A1111's legacy 8-hex "model hash" (sha256 of 64 KiB at offset 1 MiB).
    pub legacy_hash: Option<String>,
}

impl CheckpointEntry {
    /// The first 10 hex digits of the sha256.
    pub fn short_hash(&self) -> Option<&str> {
        self.sha256.as_deref().map(|h| &h[..10])
    }

    /// `"<name> [<shorthash>]"`, or `name` until hashed.
    pub fn title(&self) -> String {
        match self.short_hash() {
            Some(h) => format!("{} [{h}]", self.name),
            None => self.name.clone(),
        }
    }

    /// The file name without extension (infotext `Model`, info `sd_model_name`).
    pub fn stem(&self) -> String {
        let base = self.name.rsplit('/').next().unwrap_or(&self.name);
        strip_model_ext(base).to_string()
    }

    pub fn item(&self) -> SdModelItem {
        SdModelItem {
            title: self.title(),
            model_name: self.model_name.clone(),
            hash: self.short_hash().map(str::to_string),
            sha256: self.sha256.clone(),
            filename: self.filename.clone(),
            config: self.config.clone(),
        }
    }

    pub fn reference(&self) -> CheckpointRef {
        CheckpointRef { path: self.path.clone(), title: self.title() }
    }

    /// Whether `wanted` is one of the names A1111 accepts for this checkpoint (exact match).
    pub fn is_called(&self, wanted: &str) -> bool {
        let stem = self.stem();
        let mut names = vec![self.model_name.clone(), self.title(), self.name.clone(), stem.clone()];
        if let Some(legacy) = &self.legacy_hash {
            names.push(legacy.clone());
            names.push(format!("{} [{legacy}]", self.name));
        }
        if let (Some(short), Some(full)) = (self.short_hash(), &self.sha256) {
            names.push(short.to_string());
            names.push(full.clone());
            names.push(format!("{stem} [{short}]"));
        }
        names.iter().any(|n| n == wanted)
    }
}

fn strip_model_ext(name: &str) -> &str {
    [".safetensors", ".ckpt", ".pt", ".pth", ".bin"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name)
}

fn is_checkpoint(path: &Path) -> bool {
    let name = lower_name(path);
    let ext_ok = name.ends_with(".safetensors") || name.ends_with(".ckpt");
    ext_ok && !name.ends_with(".vae.safetensors") && !name.ends_with(".vae.ckpt")
}

/// Checkpoint files and diffusers folders under `dir` (a diffusers folder is one checkpoint).
fn checkpoint_paths(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if models::weights::diffusers::is_diffusers_folder(&path) {
                out.push(path);
            } else {
                checkpoint_paths(&path, out);
            }
        } else if is_checkpoint(&path) {
            out.push(path);
        }
    }
}

fn checkpoint_entry(dir: &Path, path: PathBuf) -> CheckpointEntry {
    let name = match path.strip_prefix(dir) {
        Ok(rel) => rel.to_string_lossy().replace('\\', "/"),
        // A `--ckpt` file outside the folder is listed under its file name.
        Err(_) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let model_name = strip_model_ext(&name).replace('/', "_");
    let yaml = path.with_extension("yaml");
    CheckpointEntry {
        model_name,
        filename: std::fs::canonicalize(&path).unwrap_or(path.clone()).to_string_lossy().into_owned(),
        config: yaml.is_file().then(|| yaml.to_string_lossy().into_owned()),
        sha256: None,
        legacy_hash: if path.is_file() { legacy_hash(&path).ok() } else { None },
        name,
        path,
    }
}

/// Lists the checkpoints under `dir`, sorted by name (case-insensitively).
pub fn scan_checkpoints(dir: &Path) -> Vec<CheckpointEntry> {
    let mut paths = Vec::new();
    checkpoint_paths(dir, &mut paths);
    let mut entries: Vec<_> = paths.into_iter().map(|p| checkpoint_entry(dir, p)).collect();
    entries.sort_by_key(|e| e.name.to_lowercase());
    entries
}

/// A1111's legacy hash: sha256 of the 64 KiB at offset 1 MiB (less for small files), 8 hex.
fn legacy_hash(path: &Path) -> std::io::Result<String> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(0x100000))?;
    let mut buf = Vec::with_capacity(0x10000);
    file.take(0x10000).read_to_end(&mut buf)?;
    Ok(hex::encode(Sha256::digest(&buf))[..8].to_string())
}

/// Streams a file through sha256.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// One textual-inversion embedding file, as far as its header tells.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingFile {
    pub name: String,
    pub path: PathBuf,
    /// Width of one vector.
    pub shape: i64,
    pub vectors: i64,
}

/// Everything the catalog lists, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub checkpoints: Vec<CheckpointEntry>,
    pub vaes: Vec<SdVaeItem>,
    pub loras: Vec<LoraItem>,
    pub embeddings: Vec<EmbeddingFile>,
    pub styles: Vec<PromptStyleItem>,
    /// ESRGAN-family model files in `models/ESRGAN`, sorted case-insensitively by name.
    pub upscalers: Vec<UpscalerFile>,
}

/// An upscaler model file. A1111 names it by its file stem (`4x-UltraSharp.pth` → `4x-UltraSharp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpscalerFile {
    pub name: String,
    pub path: PathBuf,
}

/// The extensions A1111's ESRGAN upscaler picks up.
const UPSCALER_EXTENSIONS: [&str; 3] = [".pt", ".pth", ".safetensors"];

/// Every upscaler model under `dir` (sub-folders included), sorted case-insensitively by name as
/// A1111 sorts `sd_upscalers`.
pub fn scan_upscalers(dir: &Path) -> Vec<UpscalerFile> {
    let mut files: Vec<UpscalerFile> = walk_files(dir, &|p: &Path| {
        let n = lower_name(p);
        UPSCALER_EXTENSIONS.iter().any(|e| n.ends_with(e))
    })
    .into_iter()
    .filter_map(|path| Some(UpscalerFile { name: path.file_stem()?.to_string_lossy().into_owned(), path }))
    .collect();
    files.sort_by(|a, b| a.name.to_lowercase().cmp(&b.name.to_lowercase()).then_with(|| a.path.cmp(&b.path)));
    files
}

impl Snapshot {
    /// The upscaler model called `name` (exactly, as A1111 matches `upscaler_1` and `hr_upscaler`).
    pub fn find_upscaler(&self, name: &str) -> Option<&UpscalerFile> {
        self.upscalers.iter().find(|u| u.name == name)
    }

    /// Finds a checkpoint by any alias A1111 accepts (a1111-api.md §7.1).
    pub fn find_checkpoint(&self, wanted: &str) -> Option<&CheckpointEntry> {
        self.checkpoints.iter().find(|e| e.is_called(wanted))
    }

    pub fn checkpoint_at(&self, path: &Path) -> Option<&CheckpointEntry> {
        self.checkpoints
            .iter()
            .find(|e| e.path == path)
            .or_else(|| self.checkpoints.iter().find(|e| same_file(&e.path, path)))
    }
}

/// Where the catalog looks.
#[derive(Clone, Debug)]
pub struct CatalogDirs {
    pub data_dir: PathBuf,
    pub ckpt_dir: PathBuf,
    pub lora_dir: PathBuf,
    pub vae_dir: PathBuf,
    pub embeddings_dir: PathBuf,
    /// A `--ckpt` file outside the checkpoint folder, listed with the others.
    pub extra_checkpoint: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct HashRecord {
    mtime: f64,
    size: u64,
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HashCacheFile {
    #[serde(default)]
    hashes: BTreeMap<String, HashRecord>,
}

/// Model files and their hashes.
pub struct Catalog {
    dirs: CatalogDirs,
    snapshot: RwLock<Arc<Snapshot>>,
    hashes: Mutex<HashCacheFile>,
}

fn file_stamp(path: &Path) -> Option<(f64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    Some((mtime, meta.len()))
}

impl Catalog {
    /// Scans everything (blocking: reads file headers).
    pub fn load(dirs: CatalogDirs) -> Catalog {
        let cache_path = dirs.data_dir.join("cache.json");
        let hashes = match std::fs::read(&cache_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %cache_path.display(), cause = %e, "unreadable hash cache; starting afresh");
                HashCacheFile::default()
            }),
            Err(_) => HashCacheFile::default(),
        };
        let catalog = Catalog {
            dirs,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            hashes: Mutex::new(hashes),
        };
        let snapshot = Snapshot {
            checkpoints: catalog.scan_checkpoints(),
            vaes: catalog.scan_vaes(),
            loras: scan_loras(&catalog.dirs.lora_dir),
            embeddings: scan_embeddings(&catalog.dirs.embeddings_dir),
            styles: read_styles(&catalog.dirs.data_dir.join("styles.csv")),
            upscalers: scan_upscalers(&catalog.esrgan_dir()),
        };
        *catalog.snapshot.write().expect("catalog lock poisoned; this is a bug") = Arc::new(snapshot);
        catalog
    }

    pub fn dirs(&self) -> &CatalogDirs {
        &self.dirs
    }

    /// A1111's `models/ESRGAN` folder.
    pub fn esrgan_dir(&self) -> PathBuf {
        self.dirs.data_dir.join("models").join("ESRGAN")
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("catalog lock poisoned; this is a bug").clone()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut guard = self.snapshot.write().expect("catalog lock poisoned; this is a bug");
        let mut next = (**guard).clone();
        f(&mut next);
        *guard = Arc::new(next);
    }

    fn scan_checkpoints(&self) -> Vec<CheckpointEntry> {
        let mut entries = scan_checkpoints(&self.dirs.ckpt_dir);
        if let Some(extra) = &self.dirs.extra_checkpoint {
            if !entries.iter().any(|e| same_file(&e.path, extra)) {
                entries.push(checkpoint_entry(&self.dirs.ckpt_dir, extra.clone()));
            }
        }
        let hashes = self.hashes.lock().expect("hash cache lock poisoned; this is a bug");
        for e in &mut entries {
            e.sha256 = cached_hash(&hashes, &e.path);
        }
        entries
    }

    fn scan_vaes(&self) -> Vec<SdVaeItem> {
        let ext_ok = |p: &Path| {
            let n = lower_name(p);
            n.ends_with(".safetensors") || n.ends_with(".ckpt") || n.ends_with(".pt")
        };
        let mut files = walk_files(&self.dirs.vae_dir, &ext_ok);
        files.extend(walk_files(&self.dirs.ckpt_dir, &|p: &Path| {
            let n = lower_name(p);
            [".vae.safetensors", ".vae.ckpt", ".vae.pt"].iter().any(|e| n.ends_with(e))
        }));
        let mut items: Vec<SdVaeItem> = files
            .into_iter()
            .map(|p| SdVaeItem {
                model_name: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                filename: std::fs::canonicalize(&p).unwrap_or(p).to_string_lossy().into_owned(),
            })
            .collect();
        items.sort_by_key(|v| v.model_name.to_lowercase());
        items
    }

    /// Rescans the checkpoint folder.
    pub fn refresh_checkpoints(&self) {
        let checkpoints = self.scan_checkpoints();
        // A1111 has no refresh route for upscalers; they are rescanned with the checkpoints.
        let upscalers = scan_upscalers(&self.esrgan_dir());
        self.update(|s| {
            s.checkpoints = checkpoints;
            s.upscalers = upscalers;
        });
    }

    pub fn refresh_vaes(&self) {
        let vaes = self.scan_vaes();
        self.update(|s| s.vaes = vaes);
    }

    pub fn refresh_loras(&self) {
        let loras = scan_loras(&self.dirs.lora_dir);
        self.update(|s| s.loras = loras);
    }

    pub fn refresh_embeddings(&self) {
        let embeddings = scan_embeddings(&self.dirs.embeddings_dir);
        self.update(|s| s.embeddings = embeddings);
    }

    pub fn refresh_styles(&self) {
        let styles = read_styles(&self.dirs.data_dir.join("styles.csv"));
        self.update(|s| s.styles = styles);
    }

    /// The sha256 of the checkpoint at `path`, computing and recording it if it is not known
    /// (blocking: reads the whole file). Folders have none.
    pub fn hash_checkpoint(&self, path: &Path) -> std::io::Result<Option<String>> {
        if !path.is_file() {
            return Ok(None);
        }
        let sha256 = self.file_sha256(path)?;
        self.update(|s| {
            for e in s.checkpoints.iter_mut().filter(|e| e.path == path) {
                e.sha256 = Some(sha256.clone());
            }
        });
        Ok(Some(sha256))
    }

    /// The sha256 of any file, from `cache.json` when its path, modification time and size
    /// match, else computed and recorded there (blocking).
    pub fn file_sha256(&self, path: &Path) -> std::io::Result<String> {
        if let Some(hash) =
            cached_hash(&self.hashes.lock().expect("hash cache lock poisoned; this is a bug"), path)
        {
            return Ok(hash);
        }
        let (mtime, size) = file_stamp(path)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, path.display().to_string()))?;
        let started = std::time::Instant::now();
        let sha256 = sha256_file(path)?;
        tracing::info!(file = %path.display(), seconds = started.elapsed().as_secs_f64(), "hashed");
        let mut hashes = self.hashes.lock().expect("hash cache lock poisoned; this is a bug");
        hashes
            .hashes
            .insert(path.to_string_lossy().into_owned(), HashRecord { mtime, size, sha256: sha256.clone() });
        let text = serde_json::to_vec_pretty(&*hashes).expect("the hash cache serialises; this is a bug");
        if let Err(e) = write_atomic(&self.dirs.data_dir.join("cache.json"), &text) {
            tracing::warn!(cause = %e, "could not write cache.json");
        }
        Ok(sha256)
    }
}

/// Whether two paths name the same file (`./data/x` and `data/x`, symlinks).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

fn cached_hash(hashes: &HashCacheFile, path: &Path) -> Option<String> {
    let record = hashes.hashes.get(path.to_string_lossy().as_ref())?;
    let (mtime, size) = file_stamp(path)?;
    (record.size == size && (record.mtime - mtime).abs() < 1e-6).then(|| record.sha256.clone())
}

/// LoRA files (`.safetensors`, `.pt`, `.ckpt`) with their safetensors metadata.
fn scan_loras(dir: &Path) -> Vec<LoraItem> {
    let files = walk_files(dir, &|p: &Path| {
        let n = lower_name(p);
        n.ends_with(".safetensors") || n.ends_with(".pt") || n.ends_with(".ckpt")
    });
    let mut items: Vec<LoraItem> = files
        .into_iter()
        .map(|path| {
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name = strip_model_ext(&file_name).to_string();
            let metadata = if lower_name(&path).ends_with(".safetensors") {
                safetensors_metadata(&path)
            } else {
                Map::new()
            };
            let alias = metadata.get("ss_output_name").and_then(Value::as_str).unwrap_or(&name).to_string();
            LoraItem { name, alias, path: path.to_string_lossy().into_owned(), metadata }
        })
        .collect();
    items.sort_by_key(|l| l.name.to_lowercase());
    items
}

/// The `__metadata__` of a safetensors header; values holding a JSON object are decoded, as A1111
/// does. Unreadable headers give an empty map.
pub fn safetensors_metadata(path: &Path) -> Map<String, Value> {
    let read = || -> Option<Map<String, Value>> {
        let mut file = std::fs::File::open(path).ok()?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).ok()?;
        let len = u64::from_le_bytes(len);
        // A header is a few MB at most; anything larger is not a safetensors file.
        if len > 100 << 20 {
            return None;
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).ok()?;
        let header: Map<String, Value> = serde_json::from_slice(&header).ok()?;
        let Value::Object(meta) = header.get("__metadata__")?.clone() else { return None };
        Some(
            meta.into_iter()
                .map(|(k, v)| {
                    let v = match &v {
                        Value::String(s) if s.starts_with('{') => serde_json::from_str(s).unwrap_or(v),
                        _ => v,
                    };
                    (k, v)
                })
                .collect(),
        )
    };
    read().unwrap_or_default()
}

/// Embedding files, described from their headers (no tensor data is read).
fn scan_embeddings(dir: &Path) -> Vec<EmbeddingFile> {
    let files = walk_files(dir, &|p: &Path| {
        let n = lower_name(p);
        n.ends_with(".safetensors") || n.ends_with(".pt") || n.ends_with(".bin")
    });
    let mut out: Vec<EmbeddingFile> = files
        .into_iter()
        .filter_map(|path| {
            let src = models::weights::open_file(&path)
                .map_err(|e| tracing::warn!(file = %path.display(), cause = %e, "unreadable embedding"))
                .ok()?;
            let names = src.names();
            // A1111 format (`string_to_param.*`), plain safetensors (`emb_params`), SDXL pairs
            // (`clip_l`), or a file holding a single tensor.
            let pick = names
                .iter()
                .find(|n| n.as_str() == "emb_params")
                .or_else(|| names.iter().find(|n| n.starts_with("string_to_param")))
                .or_else(|| names.iter().find(|n| n.as_str() == "clip_l"))
                .or_else(|| (names.len() == 1).then(|| &names[0]))?;
            let info = src.info(pick)?;
            let shape = *info.shape.last()?;
            let vectors =
                if info.shape.len() > 1 { info.shape[..info.shape.len() - 1].iter().product() } else { 1 };
            let file_name = path.file_name()?.to_string_lossy().into_owned();
            Some(EmbeddingFile { name: strip_model_ext(&file_name).to_string(), path, shape, vectors })
        })
        .collect();
    out.sort_by_key(|e| e.name.to_lowercase());
    out
}

/// A1111's `styles.csv` (`name,prompt,negative_prompt`, RFC 4180 quoting).
fn read_styles(path: &Path) -> Vec<PromptStyleItem> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let mut rows = parse_csv(&text).into_iter();
    let Some(header) = rows.next() else { return Vec::new() };
    let column: HashMap<&str, usize> = header.iter().enumerate().map(|(i, h)| (h.trim(), i)).collect();
    let get = |row: &Vec<String>, key: &str| column.get(key).and_then(|&i| row.get(i)).cloned();
    rows.filter_map(|row| {
        let name = get(&row, "name")?;
        (!name.is_empty()).then(|| PromptStyleItem {
            name,
            prompt: get(&row, "prompt"),
            negative_prompt: get(&row, "negative_prompt"),
        })
    })
    .collect()
}

/// Splits CSV text into rows of fields: quoted fields may hold commas, newlines and `""`.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, sha256: Option<&str>) -> CheckpointEntry {
        CheckpointEntry {
            name: name.into(),
            model_name: strip_model_ext(name).replace('/', "_"),
            path: PathBuf::from("/m").join(name),
            filename: format!("/m/{name}"),
            config: None,
            sha256: sha256.map(str::to_string),
            legacy_hash: Some("abcd1234".into()),
        }
    }

    #[test]
    fn checkpoint_aliases_before_and_after_hashing() {
        let e = entry("SDXL/juggernaut.safetensors", None);
        assert_eq!(e.title(), "SDXL/juggernaut.safetensors");
        for alias in ["SDXL/juggernaut.safetensors", "SDXL_juggernaut", "juggernaut", "abcd1234"] {
            assert!(e.is_called(alias), "{alias}");
        }
        assert!(e.is_called("SDXL/juggernaut.safetensors [abcd1234]"));
        assert!(!e.is_called("Juggernaut"), "matching is exact");
        let full = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let e = entry("SDXL/juggernaut.safetensors", Some(full));
        assert_eq!(e.title(), "SDXL/juggernaut.safetensors [0123456789]");
        for alias in [
            "SDXL/juggernaut.safetensors [0123456789]",
            "0123456789",
            full,
            "juggernaut [0123456789]",
            "SDXL/juggernaut.safetensors",
        ] {
            assert!(e.is_called(alias), "{alias}");
        }
    }

    #[test]
    fn parse_csv_handles_quotes_commas_and_newlines() {
        let rows = parse_csv("name,prompt,negative_prompt\r\nA,\"x, \"\"y\"\"\",\"n\nm\"\nB,,\n");
        assert_eq!(rows[1], vec!["A", "x, \"y\"", "n\nm"]);
        assert_eq!(rows[2], vec!["B", "", ""]);
    }

    #[test]
    fn hash_checkpoint_is_cached_by_path_mtime_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt_dir = dir.path().join("ckpt");
        std::fs::create_dir_all(&ckpt_dir).unwrap();
        let file = ckpt_dir.join("m.safetensors");
        std::fs::write(&file, b"weights").unwrap();
        let dirs = CatalogDirs {
            data_dir: dir.path().into(),
            ckpt_dir: ckpt_dir.clone(),
            lora_dir: dir.path().join("lora"),
            vae_dir: dir.path().join("vae"),
            embeddings_dir: dir.path().join("emb"),
            extra_checkpoint: None,
        };
        let catalog = Catalog::load(dirs.clone());
        assert_eq!(catalog.snapshot().checkpoints[0].sha256, None);
        let expected = hex::encode(Sha256::digest(b"weights"));
        assert_eq!(catalog.hash_checkpoint(&file).unwrap(), Some(expected.clone()));
        assert_eq!(catalog.snapshot().checkpoints[0].title(), format!("m.safetensors [{}]", &expected[..10]));
        // A fresh catalog reads the hash from cache.json.
        let again = Catalog::load(dirs);
        assert_eq!(again.snapshot().checkpoints[0].sha256, Some(expected));
        // A changed file is not trusted.
        std::fs::write(&file, b"other weights").unwrap();
        again.refresh_checkpoints();
        assert_eq!(again.snapshot().checkpoints[0].sha256, None);
    }
}
