//! Loaded checkpoints, in two least-recently-used tiers: on the device (`--vram-checkpoints`,
//! at least 1) and in host memory (`--ram-checkpoints`). Switching to a checkpoint on the device
//! loads nothing; one in host memory is moved back without reading its file.
//!
//! A checkpoint that is not cached is loaded completely before anything is evicted for it: when
//! the device is full it is first built in host memory and moved over only once it is whole, so a
//! file that fails half-way costs none of the models already loaded (and the device never holds
//! more than its capacity).
//!
//! The LRU bookkeeping is generic over [`Tiers`] (how a model is loaded and moved), so it is
//! tested with a counting fake; [`CheckpointTiers`] is the real implementation.

use std::path::{Path, PathBuf};

use models::checkpoint::{CheckpointConfig, StableDiffusion};
use models::device::Placement;
use tch::Device;

use super::job::JobError;

/// How models are loaded and moved between the two tiers.
pub trait Tiers {
    /// A model ready to run.
    type Device;
    /// A model parked in host memory.
    type Host;
    /// Cheap checks that `path` can be loaded at all, made before any work for it.
    fn probe(&mut self, _path: &Path) -> Result<(), JobError> {
        Ok(())
    }
    /// Loads straight onto the device (used while the device has room).
    fn load(&mut self, path: &Path) -> Result<Self::Device, JobError>;
    /// Loads into host memory, to be moved to the device once room is made.
    fn load_to_host(&mut self, path: &Path) -> Result<Self::Host, JobError>;
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
    /// Checkpoint files read so far (successful loads only).
    loads: u64,
}

impl<T: Tiers> ModelCache<T> {
    pub fn new(tiers: T, device_capacity: usize, host_capacity: usize) -> Self {
        ModelCache {
            tiers,
            device: Vec::new(),
            host: Vec::new(),
            device_capacity: device_capacity.max(1),
            host_capacity,
            loads: 0,
        }
    }

    /// The model at `path` on the device, loading or moving it there if needed.
    pub fn get(&mut self, path: &Path) -> Result<&T::Device, JobError> {
        if let Some(i) = self.device.iter().position(|(p, _)| p == path) {
            let entry = self.device.remove(i);
            self.device.insert(0, entry);
        } else if let Some(i) = self.host.iter().position(|(p, _)| p == path) {
            let parked = self.host.remove(i).1;
            // Make room first, so the device never holds more than its capacity, even briefly.
            self.evict_device_to(self.device_capacity - 1);
            let model = self.tiers.to_device(path, parked)?;
            self.device.insert(0, (path.to_path_buf(), model));
        } else {
            self.tiers.probe(path)?;
            let model = if self.device.len() < self.device_capacity {
                self.tiers.load(path)?
            } else {
                // The device is full: build the model in host memory, where a failure costs
                // nothing, and evict only once it is complete.
                let staged = self.tiers.load_to_host(path)?;
                self.evict_device_to(self.device_capacity - 1);
                self.tiers.to_device(path, staged)?
            };
            self.loads += 1;
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

    /// How many checkpoint files have been read into the cache (moves between tiers excluded).
    pub fn loads(&self) -> u64 {
        self.loads
    }

    fn evict_device_to(&mut self, keep: usize) {
        while self.device.len() > keep {
            let (path, model) = self.device.pop().expect("length checked above");
            if self.host_capacity == 0 {
                drop(model);
                continue;
            }
            // The least recently used parked model leaves first, so host memory never holds
            // more than its capacity either.
            self.host.truncate(self.host_capacity - 1);
            match self.tiers.to_host(&path, model) {
                Ok(parked) => self.host.insert(0, (path, parked)),
                Err(e) => {
                    tracing::warn!(checkpoint = %path.display(), cause = %e, "could not keep checkpoint in host memory")
                }
            }
        }
    }
}

/// Loads checkpoints onto one device and parks them in host memory. A parked checkpoint is the
/// same [`StableDiffusion`] with its weights moved to (pinned) host memory; on a CPU device
/// parking moves nothing, the tiers then differ only in their capacities.
pub struct CheckpointTiers {
    pub placement: Placement,
}

impl Tiers for CheckpointTiers {
    type Device = StableDiffusion;
    type Host = StableDiffusion;

    /// Opens the file and detects the architecture from tensor headers (no tensor data).
    fn probe(&mut self, path: &Path) -> Result<(), JobError> {
        let src = models::checkpoint::open(path)?;
        CheckpointConfig::detect(src.as_ref())?;
        Ok(())
    }

    fn load(&mut self, path: &Path) -> Result<StableDiffusion, JobError> {
        Ok(StableDiffusion::load(path, self.placement)?)
    }

    /// Builds the model on the CPU in the compute dtype, ready for [`Tiers::to_device`].
    fn load_to_host(&mut self, path: &Path) -> Result<StableDiffusion, JobError> {
        Ok(StableDiffusion::load(path, Placement { device: Device::Cpu, kind: self.placement.kind })?)
    }

    fn to_host(&mut self, _path: &Path, mut model: StableDiffusion) -> Result<StableDiffusion, JobError> {
        model.to_host()?;
        Ok(model)
    }

    fn to_device(&mut self, _path: &Path, mut model: StableDiffusion) -> Result<StableDiffusion, JobError> {
        model.to_device(self.placement.device)?;
        Ok(model)
    }
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
        fn load_to_host(&mut self, path: &Path) -> Result<String, JobError> {
            self.load(path)
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
        // b was built in host memory (the device was full) and moved over, then a came back.
        assert_eq!((cache.tiers.to_host, cache.tiers.to_device), (2, 2));
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
    fn cache_failed_load_on_full_device_evicts_nothing() {
        let mut cache = ModelCache::new(Fake::default(), 1, 1);
        cache.get(&p("a")).unwrap();
        // "broken" passes the probe and fails while loading.
        assert!(cache.get(&p("broken")).is_err());
        assert_eq!(cache.device_paths(), vec![p("a")]);
        assert!(cache.host_paths().is_empty());
        assert_eq!((cache.tiers.to_host, cache.tiers.to_device), (0, 0));
        cache.get(&p("a")).unwrap();
        assert_eq!(cache.loads(), 1, "a stayed loaded");
    }

    #[test]
    fn cache_loads_count_files_read_not_moves() {
        let mut cache = ModelCache::new(Fake::default(), 1, 1);
        for name in ["a", "b", "a", "b", "c"] {
            cache.get(&p(name)).unwrap();
        }
        assert_eq!(cache.loads(), 3);
        assert_eq!(cache.tiers.loads, vec!["a", "b", "c"]);
    }

    #[test]
    fn checkpoint_tiers_round_trip_without_the_file() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/tiny-sd15.safetensors");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::copy(&fixture, &path).unwrap();
        let placement = Placement::cpu();
        let _guard = tch::no_grad_guard();
        let mut tiers = CheckpointTiers { placement };
        let model = tiers.load(&path).unwrap();
        let latent = tch::Tensor::randn([1, 4, 8, 8], (tch::Kind::Float, Device::Cpu));
        let before = model.vae.decode(&latent);
        let parked = tiers.to_host(&path, model).unwrap();
        // Moving back must not need the file.
        std::fs::write(&path, b"not a checkpoint any more").unwrap();
        let back = tiers.to_device(&path, parked).unwrap();
        assert_eq!(back.placement, placement);
        let after = back.vae.decode(&latent);
        assert_eq!((before - after).abs().max().double_value(&[]), 0.0);
    }
}
