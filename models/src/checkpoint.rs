//! Opening a Stable Diffusion checkpoint in any supported layout and building its components.
//!
//! Layouts: A1111 single files (`.safetensors`, or a legacy `.ckpt`/`.pt` through the safe pickle
//! reader) and diffusers folders. All are presented under A1111 names ([`crate::weights::names`]),
//! the family and every architecture setting are read from tensor shapes, and tensors are copied
//! to the device one at a time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Mutex;

use tch::{Device, Tensor};

use crate::clip::{ClipConfig, ClipTextModel};
use crate::device::Placement;
use crate::error::{Error, Result};
use crate::unet::{Unet, UnetConfig};
use crate::vae::{Vae, VaeConfig};
use crate::weights::detect::{detect_family, ModelFamily};
use crate::weights::diffusers::{is_diffusers_folder, DiffusersFolder};
use crate::weights::{names, open_file, Renamed, TensorSource, Weights};

/// Opens `path` (a file or a diffusers folder) as a tensor source with A1111 names.
pub fn open(path: &Path) -> Result<Box<dyn TensorSource>> {
    if path.is_dir() {
        if is_diffusers_folder(path) {
            return Ok(Box::new(DiffusersFolder::open(path)?));
        }
        return Err(Error::UnknownCheckpoint {
            file: path.into(),
            reason: "a folder, but not a diffusers pipeline".into(),
        });
    }
    let file = open_file(path)?;
    let map = names::single_file_map(&file.names());
    Ok(Box::new(Renamed::new(file, map)))
}

/// Loads a standalone VAE file (`models/VAE/*.safetensors`, `.pt`, `.ckpt`) in any of the layouts
/// of formats.md §6: LDM names with or without `first_stage_model.`/`vae.`, or diffusers names.
/// The latent scale is not a property of the file: it comes from the checkpoint it decodes for.
pub fn load_vae(path: &Path, placement: Placement) -> Result<Vae> {
    let file = open_file(path)?;
    let map = names::vae_file_map(&file.names());
    let src = Renamed::new(file, map);
    let config = VaeConfig::detect(&src, "")?;
    let _guard = tch::no_grad_guard();
    Vae::new(&Weights::from_source(&src, placement), &config)
}

/// What a checkpoint holds, read from its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointConfig {
    pub family: ModelFamily,
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub clip: ClipConfig,
}

impl CheckpointConfig {
    /// The real SD1.5 architecture (for random-weight benchmarks).
    pub fn v1_5() -> Self {
        CheckpointConfig {
            family: ModelFamily::Sd1,
            unet: UnetConfig::v1_5(),
            vae: VaeConfig::sd(),
            clip: ClipConfig::vit_l14(),
        }
    }

    pub fn detect(src: &dyn TensorSource) -> Result<Self> {
        let family = detect_family(src)?;
        if !family.is_supported() {
            return Err(Error::UnknownCheckpoint {
                file: src.origin().into(),
                reason: format!("{} checkpoints are not supported yet", family.name()),
            });
        }
        Ok(CheckpointConfig {
            family,
            unet: UnetConfig::detect(src, names::UNET)?,
            vae: VaeConfig::detect(src, names::VAE)?,
            clip: ClipConfig::detect(src, names::CLIP)?,
        })
    }
}

/// Told how far a checkpoint load has got: the file, tensors read so far and tensors in all.
pub type LoadProgress = dyn Fn(&Path, usize, usize) + Send + Sync;

static LOAD_PROGRESS: std::sync::OnceLock<Box<LoadProgress>> = std::sync::OnceLock::new();

/// Sets the process-wide observer of [`StableDiffusion::load`] (a terminal progress bar, say).
/// Only the first call takes effect; returns whether this one did.
pub fn set_load_progress(observer: Box<LoadProgress>) -> bool {
    LOAD_PROGRESS.set(observer).is_ok()
}

/// A source that reports every tensor read to a progress observer. The total is the number of
/// stored CLIP, UNet and VAE tensors, about what a build reads; completion is reported once the
/// build has succeeded.
struct CountingSource<'a> {
    inner: &'a dyn TensorSource,
    path: &'a Path,
    observer: &'a LoadProgress,
    read: std::cell::Cell<usize>,
    total: usize,
}

impl<'a> CountingSource<'a> {
    fn new(inner: &'a dyn TensorSource, path: &'a Path, observer: &'a LoadProgress) -> Self {
        let total = inner
            .names()
            .iter()
            .filter(|n| [names::CLIP, names::UNET, names::VAE].iter().any(|p| n.starts_with(p)))
            .count();
        observer(path, 0, total);
        CountingSource { inner, path, observer, read: std::cell::Cell::new(0), total }
    }
}

impl CountingSource<'_> {
    /// Reports completion: a build may skip stored tensors it does not need (`position_ids`).
    fn finish(&self) {
        if self.read.get() < self.total {
            (self.observer)(self.path, self.total, self.total);
        }
    }
}

impl TensorSource for CountingSource<'_> {
    fn origin(&self) -> &Path {
        self.inner.origin()
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn info(&self, name: &str) -> Option<crate::weights::TensorInfo> {
        self.inner.info(name)
    }
    fn read(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.read(name)?;
        let done = self.read.get() + 1;
        self.read.set(done);
        (self.observer)(self.path, done.min(self.total), self.total);
        Ok(t)
    }
}

/// A loaded SD1.x model: text encoder, UNet and VAE on one device.
pub struct StableDiffusion {
    pub config: CheckpointConfig,
    pub clip: ClipTextModel,
    pub unet: Unet,
    pub vae: Vae,
    pub placement: Placement,
    /// Every module weight by its A1111 name, sharing storage with the modules: what LoRA merges
    /// update in place.
    pub params: HashMap<String, Tensor>,
    /// Every linear and convolution layer's adapter slot, by its weight's A1111 name: where a
    /// LoRA network being trained attaches its modules.
    pub adapters: HashMap<String, crate::nn::AdapterSlot>,
    /// The LoRA set merged into `params` and the originals it replaced.
    pub lora: Mutex<crate::lora::LoraState>,
}

impl StableDiffusion {
    /// Opens, detects and loads the checkpoint at `path`, reporting each tensor read to the
    /// observer set by [`set_load_progress`], if any.
    pub fn load(path: &Path, placement: Placement) -> Result<Self> {
        let src = open(path)?;
        let config = CheckpointConfig::detect(src.as_ref())?;
        match LOAD_PROGRESS.get() {
            Some(observer) => {
                let counted = CountingSource::new(src.as_ref(), path, observer.as_ref());
                let model = Self::build(&Weights::from_source(&counted, placement), config)?;
                counted.finish();
                Ok(model)
            }
            None => Self::build(&Weights::from_source(src.as_ref(), placement), config),
        }
    }

    /// Builds the components from `weights` (a file's, or random ones) for a known `config`.
    pub fn build(weights: &Weights, config: CheckpointConfig) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let weights_placement = weights.placement();
        let strip = |p: &str| p.trim_end_matches('.').to_string();
        let registry = Rc::new(RefCell::new(HashMap::new()));
        let adapters = Rc::new(RefCell::new(HashMap::new()));
        let weights = weights.with_registry(registry.clone()).with_adapters(adapters.clone());
        let clip = ClipTextModel::new(&weights.pp(strip(names::CLIP)), &config.clip)?;
        let unet = Unet::new(&weights.pp(strip(names::UNET)), &config.unet)?;
        let vae = Vae::new(&weights.pp(strip(names::VAE)), &config.vae)?;
        drop(weights);
        let params = registry.take();
        let adapters = adapters.take();
        Ok(StableDiffusion {
            clip,
            unet,
            vae,
            placement: weights_placement,
            params,
            adapters,
            lora: Mutex::new(crate::lora::LoraState::default()),
            config,
        })
    }
}

impl StableDiffusion {
    /// Parks the model in host memory: merged LoRAs are restored first (so the host copy is the
    /// checkpoint's own weights and the merge state stays true), then every weight moves to the
    /// CPU, into pinned memory when it came from a GPU so that [`Self::to_device`] can copy it
    /// back asynchronously. The modules see the move because they share each weight's tensor
    /// with [`Self::params`]. On a CPU model nothing moves.
    pub fn to_host(&mut self) -> Result<()> {
        let from = self.placement.device;
        if from == Device::Cpu {
            return Ok(());
        }
        self.lora.get_mut().unwrap_or_else(|p| p.into_inner()).restore(&self.params)?;
        self.move_params(Device::Cpu, Some(from))
    }

    /// Moves every weight to `device` (the inverse of [`Self::to_host`]); the file is not read.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.move_params(device, None)
    }

    /// Replaces the data of every registered weight with a copy on `device`. `set_data` swaps the
    /// storage under the tensor every module holds, so nothing is rebuilt and each old copy is
    /// freed as soon as its replacement is in place (the model never exists twice on the GPU).
    /// `pin_for`: pin the new host copies for transfers to this GPU. If a move fails half-way
    /// (out of memory, say), the weights already moved are moved back, so the model stays usable
    /// where it was.
    fn move_params(&mut self, device: Device, pin_for: Option<Device>) -> Result<()> {
        let from = self.placement.device;
        if from == device {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let mut moved: Vec<String> = Vec::new();
        let mut failure = None;
        for (name, param) in self.params.iter_mut() {
            match move_tensor(param, device, pin_for) {
                Ok(()) => moved.push(name.clone()),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for name in moved {
                if let Some(param) = self.params.get_mut(&name) {
                    // Best effort: the original error is the one worth reporting.
                    let _ = move_tensor(param, from, None);
                }
            }
            synchronize(from);
            return Err(e);
        }
        // Copies to a GPU are issued non-blocking from pinned memory; wait for them before the
        // host copies (now unreferenced) can be reused.
        synchronize(device);
        self.placement.device = device;
        Ok(())
    }
}

fn move_tensor(param: &mut Tensor, device: Device, pin_for: Option<Device>) -> Result<()> {
    // Only host-to-GPU copies are issued non-blocking (a non-blocking copy to the host could be
    // read by `pin_memory` before it lands); `move_params` synchronizes after the last one.
    let non_blocking = matches!(device, Device::Cuda(_));
    let copy = param.f_to_device_(device, param.kind(), non_blocking, false)?;
    let copy = match pin_for {
        Some(_) if tch::Cuda::is_available() => crate::device::pin_memory(&copy)?,
        _ => copy,
    };
    param.f_set_data(&copy)?;
    Ok(())
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}
