//! `.safetensors` files, memory-mapped: only the header is parsed up front, and each tensor is
//! copied out of the map when asked for, so a checkpoint never sits in host RAM twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use super::{TensorInfo, TensorSource};
use crate::error::{Error, Result};

/// Largest header accepted (ComfyUI uses the same cap).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

struct Entry {
    info: TensorInfo,
    start: usize,
    end: usize,
}

/// One memory-mapped `.safetensors` file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    entries: HashMap<String, Entry>,
    metadata: HashMap<String, String>,
}

/// Whether `bytes` (the start of a file) look like a safetensors header.
pub fn sniff(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{' && u64::from_le_bytes(bytes[..8].try_into().unwrap()) <= MAX_HEADER
}

pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only and model files are not modified while the daemon reads
        // them (the catalog writes new files under temporary names and renames them in).
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let bad = |reason: String| Error::UnknownFormat { file: path.clone(), reason };
        if !sniff(&mmap) {
            return Err(bad("no safetensors header".into()));
        }
        let (header_len, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|e| bad(format!("bad safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = HashMap::new();
        for (name, ti) in meta.tensors() {
            let shape: Vec<i64> = ti.shape.iter().map(|&d| d as i64).collect();
            let kind = match kind_of(ti.dtype) {
                Some(kind) => kind,
                // Unusual dtypes are listed but refused when read (see `read`).
                None => Kind::ComplexHalf,
            };
            let (start, end) = (data_start + ti.data_offsets.0, data_start + ti.data_offsets.1);
            entries.insert(name, Entry { info: TensorInfo { kind, shape }, start, end });
        }
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafetensorsFile { path, mmap, entries, metadata })
    }

    /// The `__metadata__` string map.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Offset of the first tensor byte (after the header): the start of the AutoV3 hash range.
    pub fn data_bytes(&self) -> &[u8] {
        let start = self.entries.values().map(|e| e.start).min().unwrap_or(self.mmap.len());
        &self.mmap[start..]
    }
}

impl TensorSource for SafetensorsFile {
    fn origin(&self) -> &Path {
        &self.path
    }
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|e| e.info.clone())
    }
    fn read(&self, name: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into(), file: self.path.clone() })?;
        if e.info.kind == Kind::ComplexHalf {
            return Err(Error::UnsupportedDtype {
                name: name.into(),
                file: self.path.clone(),
                dtype: "(not F64/F32/F16/BF16/integer)".into(),
            });
        }
        Ok(Tensor::f_from_data_size(&self.mmap[e.start..e.end], &e.info.shape, e.info.kind)?)
    }
}

/// Writes tensors to `path` atomically (a temporary file in the same folder, then a rename).
pub fn write_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let bytes = serialize(tensors, metadata, path)?;
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// The safetensors bytes [`write_atomic`] writes for `tensors` and `metadata` (the crate's
/// `serialize`, which orders tensors by dtype then name); `file` names the destination in errors.
pub fn serialize(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
    file: &Path,
) -> Result<Vec<u8>> {
    let path = file;
    let mut owned: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let dtype = match t.kind() {
            Kind::Double => Dtype::F64,
            Kind::Float => Dtype::F32,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::BOOL,
            k => {
                return Err(Error::UnsupportedDtype {
                    name: name.clone(),
                    file: path.into(),
                    dtype: format!("{k:?}"),
                })
            }
        };
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), bytes, dtype, shape));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, b, d, s)| {
            (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("valid view"))
        })
        .collect();
    safetensors::serialize(views, &metadata)
        .map_err(|e| Error::UnknownFormat { file: path.into(), reason: e.to_string() })
}
