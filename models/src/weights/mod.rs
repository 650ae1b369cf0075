//! Where tensors come from and how module constructors receive them.
//!
//! A [`TensorSource`] lists and reads the tensors of one model file or folder, in the dtype they
//! are stored in. [`Weights`] wraps a source (or a seeded random generator, for tiny test models
//! and benchmarks) with a key prefix, a target device and a compute dtype; module constructors ask
//! it for a tensor by name and expected shape, and get it shape-checked, cast and placed, one
//! tensor at a time, so loading never holds a second full copy of a model in host memory.

pub mod detect;
pub mod diffusers;
pub mod names;
pub mod pickle;
pub mod safetensors_file;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::nn::AdapterSlot;

use crate::device::Placement;
use crate::error::{Error, Result};

/// Name-independent facts about one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub kind: Kind,
    pub shape: Vec<i64>,
}

/// A read-only collection of named tensors: one file, or a folder of files.
pub trait TensorSource {
    /// The file or folder, for error messages.
    fn origin(&self) -> &Path;
    /// Every tensor name, in no particular order.
    fn names(&self) -> Vec<String>;
    /// Dtype and shape of `name`, without reading its data.
    fn info(&self, name: &str) -> Option<TensorInfo>;
    /// Reads `name` into a new CPU tensor of its stored dtype.
    fn read(&self, name: &str) -> Result<Tensor>;

    fn contains(&self, name: &str) -> bool {
        self.info(name).is_some()
    }
}

/// A source that presents another under different names: `map` goes from the presented name to
/// the inner one. Used for legacy key dialects and diffusers folders.
pub struct Renamed<S> {
    inner: S,
    map: HashMap<String, String>,
}

impl<S: TensorSource> Renamed<S> {
    pub fn new(inner: S, map: HashMap<String, String>) -> Self {
        Renamed { inner, map }
    }
}

impl<S: TensorSource> TensorSource for Renamed<S> {
    fn origin(&self) -> &Path {
        self.inner.origin()
    }
    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.inner.info(self.map.get(name)?)
    }
    fn read(&self, name: &str) -> Result<Tensor> {
        match self.map.get(name) {
            Some(inner) => self.inner.read(inner),
            None => Err(Error::MissingTensor { name: name.into(), file: self.origin().into() }),
        }
    }
}

impl TensorSource for Box<dyn TensorSource> {
    fn origin(&self) -> &Path {
        self.as_ref().origin()
    }
    fn names(&self) -> Vec<String> {
        self.as_ref().names()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.as_ref().info(name)
    }
    fn read(&self, name: &str) -> Result<Tensor> {
        self.as_ref().read(name)
    }
}

/// In-memory tensors, for tests and for writing generated models to disk.
pub struct MemorySource {
    origin: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl MemorySource {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        MemorySource { origin: PathBuf::from("<memory>"), tensors }
    }
    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }
}

impl TensorSource for MemorySource {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors.get(name).map(|t| TensorInfo { kind: t.kind(), shape: t.size() })
    }
    fn read(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .map(|t| t.shallow_clone())
            .ok_or_else(|| Error::MissingTensor { name: name.into(), file: self.origin.clone() })
    }
}

/// Deterministic random weights with roughly the statistics of trained ones (unit-gain norms,
/// fan-in scaled matrices), for full-size benchmarks and tiny test models. Every tensor it makes
/// is recorded, so the model can be written to disk afterwards.
pub struct RandomWeights {
    seed: i64,
    made: RefCell<HashMap<String, Tensor>>,
}

impl RandomWeights {
    pub fn new(seed: i64) -> Rc<Self> {
        Rc::new(RandomWeights { seed, made: RefCell::new(HashMap::new()) })
    }

    /// Every tensor generated so far, by full name (fp32, CPU).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.made.borrow().iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect()
    }

    fn make(&self, name: &str, shape: &[i64]) -> Tensor {
        if let Some(t) = self.made.borrow().get(name) {
            return t.shallow_clone();
        }
        // One generator per tensor, seeded from the seed and the name, so values depend neither
        // on the order in which modules are built nor on libtorch's global generator (which
        // other threads may be drawing from).
        let mut state = self.seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
        for b in name.bytes() {
            state = (state ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let numel: i64 = shape.iter().product();
        // Uniform on [-√3, √3): zero mean, unit variance.
        let values: Vec<f32> = (0..numel)
            .map(|_| {
                let bits = splitmix64(&mut state) >> 40; // 24 random bits
                (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 3f32.sqrt()
            })
            .collect();
        let unit = Tensor::from_slice(&values).reshape(shape);
        let t = if shape.len() <= 1 {
            let noise = unit * 0.1;
            if name.ends_with("weight") {
                noise + 1.0
            } else {
                noise
            }
        } else {
            let fan_in: i64 = shape[1..].iter().product();
            unit / (fan_in as f64).sqrt()
        };
        self.made.borrow_mut().insert(name.to_string(), t.shallow_clone());
        t
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Clone)]
enum Backend<'a> {
    Source(&'a dyn TensorSource),
    Random(Rc<RandomWeights>),
}

/// Every tensor a [`Weights`] handed out, by full name: handles sharing the modules' storage, so
/// in-place updates (LoRA merges) reach the modules without rebuilding them.
pub type ParamRegistry = Rc<RefCell<HashMap<String, Tensor>>>;

/// Every adapter slot a [`Weights`] handed out, by the full name of the layer's weight.
pub type AdapterRegistry = Rc<RefCell<HashMap<String, AdapterSlot>>>;

/// Hands tensors to module constructors: `w.pp("encoder").get(&[768, 768], "weight")`.
#[derive(Clone)]
pub struct Weights<'a> {
    backend: Backend<'a>,
    prefix: String,
    placement: Placement,
    registry: Option<ParamRegistry>,
    adapters: Option<AdapterRegistry>,
}

impl<'a> Weights<'a> {
    pub fn from_source(source: &'a dyn TensorSource, placement: Placement) -> Self {
        Weights {
            backend: Backend::Source(source),
            prefix: String::new(),
            placement,
            registry: None,
            adapters: None,
        }
    }

    pub fn random(random: Rc<RandomWeights>, placement: Placement) -> Weights<'static> {
        Weights {
            backend: Backend::Random(random),
            prefix: String::new(),
            placement,
            registry: None,
            adapters: None,
        }
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The same weights, recording every tensor handed out (under its full name) in `registry`.
    pub fn with_registry(&self, registry: ParamRegistry) -> Self {
        Weights { registry: Some(registry), ..self.clone() }
    }

    /// The same weights, recording every layer's adapter slot in `adapters`.
    pub fn with_adapters(&self, adapters: AdapterRegistry) -> Self {
        Weights { adapters: Some(adapters), ..self.clone() }
    }

    /// A fresh adapter slot for the layer at this prefix, recorded under `<prefix>.weight`.
    pub fn adapter_slot(&self) -> AdapterSlot {
        let slot = AdapterSlot::default();
        if let Some(adapters) = &self.adapters {
            adapters.borrow_mut().insert(self.full_name("weight"), slot.clone());
        }
        slot
    }

    /// The same weights under `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix =
            if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Weights {
            backend: self.backend.clone(),
            prefix,
            placement: self.placement,
            registry: self.registry.clone(),
            adapters: self.adapters.clone(),
        }
    }

    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the tensor exists (always true for random weights).
    pub fn contains(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Source(s) => s.contains(&self.full_name(name)),
            Backend::Random(_) => true,
        }
    }

    /// The tensor `name` with exactly `shape`, cast to the compute dtype and placed on the device.
    pub fn get(&self, shape: &[i64], name: &str) -> Result<Tensor> {
        self.get_as(shape, name, false)
    }

    /// Like [`get`](Self::get), but also accepts a stored tensor whose shape differs only by
    /// trailing or inserted unit dimensions (1×1 convolutions stored for linears and back).
    pub fn get_reshaped(&self, shape: &[i64], name: &str) -> Result<Tensor> {
        self.get_as(shape, name, true)
    }

    fn get_as(&self, shape: &[i64], name: &str, squeeze_ok: bool) -> Result<Tensor> {
        let full = self.full_name(name);
        let t = match &self.backend {
            Backend::Random(r) => r.make(&full, shape),
            Backend::Source(s) => {
                let file = s.origin().to_path_buf();
                let info = s
                    .info(&full)
                    .ok_or_else(|| Error::MissingTensor { name: full.clone(), file: file.clone() })?;
                let same = info.shape == shape;
                let squeezable = squeeze_ok && squeeze(&info.shape) == squeeze(shape);
                if !same && !squeezable {
                    return Err(Error::ShapeMismatch {
                        name: full,
                        file,
                        expected: shape.to_vec(),
                        got: info.shape,
                    });
                }
                if !is_float(info.kind) {
                    return Err(Error::UnsupportedDtype {
                        name: full,
                        file,
                        dtype: format!("{:?}", info.kind),
                    });
                }
                let t = s.read(&full)?;
                if same {
                    t
                } else {
                    t.reshape(shape)
                }
            }
        };
        let Placement { device, kind } = self.placement;
        let t = t.to_device(device).to_kind(kind).detach();
        if let Some(registry) = &self.registry {
            registry.borrow_mut().insert(full, t.shallow_clone());
        }
        Ok(t)
    }
}

fn squeeze(shape: &[i64]) -> Vec<i64> {
    shape.iter().copied().filter(|&d| d != 1).collect()
}

pub(crate) fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
}

/// Opens one weights file, classified by its content, never by its extension (formats.md §1.2):
/// safetensors (memory-mapped) or a PyTorch pickle (read by the safe evaluator; nothing in it runs).
pub fn open_file(path: &Path) -> Result<Box<dyn TensorSource>> {
    use std::io::Read;
    let mut head = [0u8; 64];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    if safetensors_file::sniff(head) {
        return Ok(Box::new(safetensors_file::SafetensorsFile::open(path)?));
    }
    if pickle::sniff(head) {
        return Ok(Box::new(pickle::PickleFile::open(path)?));
    }
    Err(Error::UnknownFormat {
        file: path.into(),
        reason: "neither safetensors nor a PyTorch checkpoint (zip or legacy pickle)".into(),
    })
}
