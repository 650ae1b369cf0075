//! diffusers pipeline folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`), presented
//! under A1111 single-file names so the rest of the code sees one layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::{names, open_file, TensorInfo, TensorSource};
use crate::error::{Error, Result};

/// A diffusers folder as one tensor source with LDM names.
pub struct DiffusersFolder {
    root: PathBuf,
    parts: Vec<Box<dyn TensorSource>>,
    /// Canonical name → (part index, stored name).
    map: HashMap<String, (usize, String)>,
}

/// Whether `dir` looks like a diffusers pipeline folder.
pub fn is_diffusers_folder(dir: &Path) -> bool {
    dir.join("model_index.json").is_file() || dir.join("unet").is_dir()
}

/// The weights file of one component folder: safetensors preferred, fp32 before the fp16 variant,
/// PyTorch `.bin` as the fallback.
fn component_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["safetensors", "fp16.safetensors", "bin", "fp16.bin"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

impl DiffusersFolder {
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let mut parts: Vec<Box<dyn TensorSource>> = Vec::new();
        let mut map = HashMap::new();
        type Mapper = fn(&[String]) -> HashMap<String, String>;
        // transformers 5 saves `CLIPTextModel` without the `text_model.` level; earlier versions
        // (and most published folders) with it.
        let clip: Mapper = |names| {
            names
                .iter()
                .map(|n| {
                    (format!("{}{}", names::CLIP, n.strip_prefix("text_model.").unwrap_or(n)), n.clone())
                })
                .collect()
        };
        let components: [(&str, &str, &str, Mapper); 3] = [
            ("unet", "diffusion_pytorch_model", names::UNET, names::unet_diffusers_to_ldm),
            ("vae", "diffusion_pytorch_model", names::VAE, names::vae_diffusers_to_ldm),
            ("text_encoder", "model", "", clip),
        ];
        for (dir, stem, prefix, mapper) in components {
            let Some(file) = component_file(&root.join(dir), stem) else {
                return Err(Error::UnknownCheckpoint {
                    file: root.clone(),
                    reason: format!("diffusers folder without `{dir}/{stem}.safetensors` (or .bin)"),
                });
            };
            let source = open_file(&file)?;
            let index = parts.len();
            for (canonical, stored) in mapper(&source.names()) {
                map.insert(format!("{prefix}{canonical}"), (index, stored));
            }
            parts.push(source);
        }
        Ok(DiffusersFolder { root, parts, map })
    }
}

impl TensorSource for DiffusersFolder {
    fn origin(&self) -> &Path {
        &self.root
    }
    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
    fn info(&self, name: &str) -> Option<TensorInfo> {
        let (part, stored) = self.map.get(name)?;
        self.parts[*part].info(stored)
    }
    fn read(&self, name: &str) -> Result<Tensor> {
        match self.map.get(name) {
            Some((part, stored)) => self.parts[*part].read(stored),
            None => Err(Error::MissingTensor { name: name.into(), file: self.root.clone() }),
        }
    }
}
