//! Loaded checkpoints, in two least-recently-used tiers: on the device (`--vram-checkpoints`,
//! at least 1) and in host memory (`--ram-checkpoints`). Switching to a checkpoint on the device
//! loads nothing; one in host memory is moved back without reading its file.
//!
//! The LRU bookkeeping is generic over [`Tiers`] (how a model is loaded and moved), so it is
//! tested with a counting fake; [`CheckpointTiers`] is the real implementation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use models::checkpoint::{CheckpointConfig, StableDiffusion};
use models::device::Placement;
use models::weights::{names, MemorySource, Weights};
use tch::Device;

use super::job::JobError;

/// How models are loaded and moved between the two tiers.
pub trait Tiers {
    /// A model ready to run.
    type Device;
    /// A model parked in host memory.
    type Host;
    /// Cheap checks that `path` can be loaded at all, made before anything is evicted for it,
    /// so a broken file does not cost the models already loaded.
    fn probe(&mut self, _path: &Path) -> Result<(), JobError> {
        Ok(())
    }
    fn load(&mut self, path: &Path) -> Result<Self::Device, JobError>;
    fn to_host(&mut self, path: &Path, model: Self::Device) -> Result<Self::Host, JobError>;
    fn to_device(&mut self, path: &Path, model: Self::Host) -> Result<Self::Device, JobError>;
}

/// The two LRU tiers; index 0 is the most recently used.
pub struct ModelCache<T: Tiers> {
    tiers: T,
    device: Vec<(PathBuf, T::Device)>,
    host: Vec<(PathBuf, T::Host)>,
    device_capacity: usize,
    host_capacity: usize,
}

impl<T: Tiers> ModelCache<T> {
    pub fn new(tiers: T, device_capacity: usize, host_capacity: usize) -> Self {
        ModelCache {
            tiers,
            device: Vec::new(),
            host: Vec::new(),
            device_capacity: device_capacity.max(1),
            host_capacity,
        }
    }

    /// The model at `path` on the device, loading or moving it there if needed.
    pub fn get(&mut self, path: &Path) -> Result<&T::Device, JobError> {
        if let Some(i) = self.device.iter().position(|(p, _)| p == path) {
            let entry = self.device.remove(i);
            self.device.insert(0, entry);
        } else {
            let parked_at = self.host.iter().position(|(p, _)| p == path);
            if parked_at.is_none() {
                self.tiers.probe(path)?;
            }
            let parked = parked_at.map(|i| self.host.remove(i).1);
            // Make room first, so the device never holds more than its capacity, even briefly.
            self.evict_device_to(self.device_capacity - 1);
            let model = match parked {
                Some(m) => self.tiers.to_device(path, m)?,
                None => self.tiers.load(path)?,
            };
            self.device.insert(0, (path.to_path_buf(), model));
        }
        Ok(&self.device[0].1)
    }

    /// Moves every device model to host memory (or frees it when the host tier holds none).
    pub fn unload_all(&mut self) {
        self.evict_device_to(0);
    }

    /// The most recently used model on the device.
    pub fn most_recent(&self) -> Option<&T::Device> {
        self.device.first().map(|(_, m)| m)
    }

    /// Checkpoints on the device, most recently used first.
    pub fn device_paths(&self) -> Vec<PathBuf> {
        self.device.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Checkpoints parked in host memory, most recently used first.
    pub fn host_paths(&self) -> Vec<PathBuf> {
        self.host.iter().map(|(p, _)| p.clone()).collect()
    }

    fn evict_device_to(&mut self, keep: usize) {
        while self.device.len() > keep {
            let (path, model) = self.device.pop().expect("length checked above");
            if self.host_capacity == 0 {
                drop(model);
                continue;
            }
            match self.tiers.to_host(&path, model) {
                Ok(parked) => {
                    self.host.insert(0, (path, parked));
                    self.host.truncate(self.host_capacity);
                }
                Err(e) => {
                    tracing::warn!(checkpoint = %path.display(), cause = %e, "could not keep checkpoint in host memory")
                }
            }
        }
    }
}

/// A checkpoint parked in host memory.
pub enum HostModel {
    /// On a CPU device the model already lives in host memory: parking moves nothing.
    Resident(Box<StableDiffusion>),
    /// Off a GPU: the checkpoint's tensors in host memory.
    Tensors(Box<HostTensors>),
}

/// A checkpoint's tensors in host memory, in the compute dtype, under A1111 names, ready to be
/// rebuilt on the device without reading the file.
pub struct HostTensors {
    pub config: CheckpointConfig,
    pub tensors: MemorySource,
}

/// Loads checkpoints onto one device and parks them in host memory.
pub struct CheckpointTiers {
    pub placement: Placement,
}

impl Tiers for CheckpointTiers {
    type Device = StableDiffusion;
    type Host = HostModel;

    /// Opens the file and detects the architecture from tensor headers (no tensor data).
    fn probe(&mut self, path: &Path) -> Result<(), JobError> {
        let src = models::checkpoint::open(path)?;
        CheckpointConfig::detect(src.as_ref())?;
        Ok(())
    }

    fn load(&mut self, path: &Path) -> Result<StableDiffusion, JobError> {
        Ok(StableDiffusion::load(path, self.placement)?)
    }

    fn to_host(&mut self, path: &Path, model: StableDiffusion) -> Result<HostModel, JobError> {
        if self.placement.device == Device::Cpu {
            return Ok(HostModel::Resident(Box::new(model)));
        }
        // The model's modules do not expose their tensors, so the host copy is read from the
        // (usually page-cached) file once, after the device copy is freed.
        let config = model.config.clone();
        drop(model);
        Ok(HostModel::Tensors(Box::new(HostTensors {
            config,
            tensors: read_host_tensors(path, self.placement)?,
        })))
    }

    fn to_device(&mut self, _path: &Path, model: HostModel) -> Result<StableDiffusion, JobError> {
        match model {
            HostModel::Resident(m) => Ok(*m),
            HostModel::Tensors(host) => {
                let HostTensors { config, tensors } = *host;
                Ok(StableDiffusion::build(&Weights::from_source(&tensors, self.placement), config)?)
            }
        }
    }
}

/// The CLIP, UNet and VAE tensors of a checkpoint on the CPU, floats cast to the compute dtype.
fn read_host_tensors(path: &Path, placement: Placement) -> Result<MemorySource, JobError> {
    let src = models::checkpoint::open(path)?;
    let mut tensors = HashMap::new();
    for name in src.names() {
        if ![names::CLIP, names::UNET, names::VAE].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let t = src.read(&name)?;
        let t = if t.is_floating_point() { t.f_to_kind(placement.kind)? } else { t };
        tensors.insert(name, t);
    }
    Ok(MemorySource::new(tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what the cache asks for; "models" are their path strings.
    #[derive(Default)]
    struct Fake {
        loads: Vec<String>,
        to_host: usize,
        to_device: usize,
    }

    impl Tiers for Fake {
        type Device = String;
        type Host = String;
        fn probe(&mut self, path: &Path) -> Result<(), JobError> {
            match path.to_str() {
                Some("unreadable") => Err(JobError::Invalid("not a model file".into())),
                _ => Ok(()),
            }
        }
        fn load(&mut self, path: &Path) -> Result<String, JobError> {
            let name = path.display().to_string();
            if name == "broken" {
                return Err(JobError::Invalid("broken file".into()));
            }
            self.loads.push(name.clone());
            Ok(name)
        }
        fn to_host(&mut self, _: &Path, m: String) -> Result<String, JobError> {
            self.to_host += 1;
            Ok(m)
        }
        fn to_device(&mut self, _: &Path, m: String) -> Result<String, JobError> {
            self.to_device += 1;
            Ok(m)
        }
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn cache_resident_checkpoint_loads_nothing() {
        let mut cache = ModelCache::new(Fake::default(), 2, 0);
        assert_eq!(cache.get(&p("a")).unwrap(), "a");
        cache.get(&p("b")).unwrap();
        cache.get(&p("a")).unwrap();
        cache.get(&p("b")).unwrap();
        assert_eq!(cache.tiers.loads, vec!["a", "b"]);
        assert_eq!(cache.device_paths(), vec![p("b"), p("a")]);
    }

    #[test]
    fn cache_evicted_checkpoint_is_parked_then_moved_back_without_loading() {
        let mut cache = ModelCache::new(Fake::default(), 1, 1);
        cache.get(&p("a")).unwrap();
        cache.get(&p("b")).unwrap();
        assert_eq!(cache.host_paths(), vec![p("a")]);
        cache.get(&p("a")).unwrap();
        assert_eq!(cache.tiers.loads, vec!["a", "b"], "a came back from host memory");
        assert_eq!((cache.tiers.to_host, cache.tiers.to_device), (2, 1));
        assert_eq!(cache.device_paths(), vec![p("a")]);
        assert_eq!(cache.host_paths(), vec![p("b")]);
    }

    #[test]
    fn cache_without_host_tier_frees_and_reloads() {
        let mut cache = ModelCache::new(Fake::default(), 1, 0);
        for name in ["a", "b", "a"] {
            cache.get(&p(name)).unwrap();
        }
        assert_eq!(cache.tiers.loads, vec!["a", "b", "a"]);
        assert!(cache.host_paths().is_empty());
    }

    #[test]
    fn cache_host_tier_drops_least_recently_used() {
        let mut cache = ModelCache::new(Fake::default(), 1, 2);
        for name in ["a", "b", "c", "d"] {
            cache.get(&p(name)).unwrap();
        }
        assert_eq!(cache.host_paths(), vec![p("c"), p("b")]);
    }

    #[test]
    fn cache_unload_all_parks_everything_and_failed_load_leaves_room() {
        let mut cache = ModelCache::new(Fake::default(), 2, 2);
        cache.get(&p("a")).unwrap();
        cache.get(&p("b")).unwrap();
        cache.unload_all();
        assert!(cache.device_paths().is_empty());
        assert_eq!(cache.host_paths(), vec![p("b"), p("a")]);
        assert!(cache.get(&p("broken")).is_err());
        assert!(cache.device_paths().is_empty());
    }

    #[test]
    fn cache_unreadable_file_evicts_nothing() {
        let mut cache = ModelCache::new(Fake::default(), 1, 0);
        cache.get(&p("a")).unwrap();
        assert!(cache.get(&p("unreadable")).is_err());
        assert_eq!(cache.device_paths(), vec![p("a")], "the loaded model survives a file that cannot load");
    }

    #[test]
    fn host_tensors_rebuild_the_same_model_without_the_file() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/tiny-sd15.safetensors");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::copy(&fixture, &path).unwrap();
        let placement = Placement::cpu();
        let _guard = tch::no_grad_guard();
        let original = StableDiffusion::load(&path, placement).unwrap();
        let host = HostTensors {
            config: original.config.clone(),
            tensors: read_host_tensors(&path, placement).unwrap(),
        };
        // Moving back to the device must not need the file.
        std::fs::remove_file(&path).unwrap();
        let rebuilt =
            CheckpointTiers { placement }.to_device(&path, HostModel::Tensors(Box::new(host))).unwrap();
        assert_eq!(rebuilt.config, original.config);
        let latent = tch::Tensor::randn([1, 4, 8, 8], (tch::Kind::Float, Device::Cpu));
        let (a, b) = (original.vae.decode(&latent), rebuilt.vae.decode(&latent));
        assert_eq!(a.size(), b.size());
        assert_eq!((a - b).abs().max().double_value(&[]), 0.0);
    }
}
