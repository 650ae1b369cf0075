//! Latent caching (training spec §1.9): each image is encoded once into ONE posterior sample
//! (not the mean), stored unscaled; with `flip_aug` the mirrored image is encoded too, as kohya's
//! `latents_flipped`.
//!
//! On disk, a cache file per image lives in the cache folder, named by the image's content hash,
//! and records in its metadata everything that changes the latent: the content hash of the
//! (already resized and cropped) pixels, the bucket size, whether a flipped latent is stored and a
//! fingerprint of the VAE encoder's weights. A file whose record differs from what the run needs,
//! or whose tensors have the wrong shape, is stale: the image is encoded again and the file
//! replaced. kohya's v0.10 cache only checks key presence, so users must delete caches by hand
//! after changing resolution or VAE; this check makes that unnecessary.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::checkpoint::StableDiffusion;
use crate::error::Result;
use crate::weights::names;
use crate::weights::safetensors_file::{write_atomic, SafetensorsFile};
use crate::weights::TensorSource;

use super::dataset::{SplitMix64, TAG_CACHE};
use super::{train_error, TrainImage};

/// The metadata key of a cache file.
const CACHE_KEY: &str = "diffusiond_latent_cache";

/// One image's unscaled latents and, with flip, its mirror's.
pub type ImageLatents = (Tensor, Option<Tensor>);

/// What the cache did while a session was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Images whose latents were read from a valid cache file.
    pub reused: usize,
    /// Images encoded by the VAE (no cache folder, no file, or a stale one).
    pub encoded: usize,
}

/// SHA-256 hex of a tensor's shape and float32 bytes.
pub fn content_hash(pixels: &Tensor) -> String {
    let t = pixels.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
    let mut h = Sha256::new();
    h.update(format!("{:?}", t.size()).as_bytes());
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * 4];
    t.copy_data_u8(&mut bytes, numel);
    h.update(&bytes);
    hex::encode(h.finalize())
}

/// SHA-256 hex over the VAE encoder's weights (names and bytes, in name order): the identity of
/// the encoder that produced a cached latent.
pub fn vae_fingerprint(sd: &StableDiffusion) -> String {
    let mut keys: Vec<&String> = sd
        .params
        .keys()
        .filter(|k| {
            k.strip_prefix(names::VAE)
                .is_some_and(|rest| rest.starts_with("encoder.") || rest.starts_with("quant_conv."))
        })
        .collect();
    keys.sort();
    let mut h = Sha256::new();
    for k in keys {
        let t = sd.params[k].detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * 4];
        t.copy_data_u8(&mut bytes, numel);
        h.update(k.as_bytes());
        h.update(&bytes);
    }
    hex::encode(h.finalize())
}

/// The record a valid cache file carries for one image.
fn record(content: &str, pixels: &Tensor, flip: bool, vae: &str) -> serde_json::Value {
    let s = pixels.size();
    serde_json::json!({ "content": content, "size": [s[2], s[1]], "flip": flip, "vae": vae })
}

/// The cache file of an image with `content` hash.
pub fn cache_path(dir: &Path, content: &str) -> PathBuf {
    dir.join(format!("{}.safetensors", &content[..32]))
}

/// Reads a cache file if it is valid for `want`: the record matches and the latents have the
/// shape `[1, 4, h/8, w/8]` of the image.
fn read_valid(
    path: &Path,
    want: &serde_json::Value,
    latent_hw: (i64, i64),
    flip: bool,
) -> Option<ImageLatents> {
    let file = SafetensorsFile::open(path).ok()?;
    let stored: serde_json::Value = serde_json::from_str(file.metadata().get(CACHE_KEY)?).ok()?;
    if &stored != want {
        return None;
    }
    let read = |name: &str| -> Option<Tensor> {
        let t = file.read(name).ok()?;
        (t.size() == [1, 4, latent_hw.0, latent_hw.1]).then_some(t)
    };
    let latent = read("latents")?;
    let flipped = if flip { Some(read("latents_flipped")?) } else { None };
    Some((latent, flipped))
}

/// One posterior sample of each image (and of its mirror with `flip`), unscaled fp32 `[1, 4, h, w]`
/// on the model's device. Each image's draws come from its own seeded stream, so a latent does not
/// depend on the other images or on what the cache held. With `dir`, valid cache files are reused
/// and missing or stale ones (re)written.
pub fn encode_all(
    sd: &StableDiffusion,
    images: &[TrainImage],
    flip: bool,
    seed: i64,
    dir: Option<&Path>,
) -> Result<(Vec<ImageLatents>, CacheStats)> {
    let device = sd.placement.device;
    let factor = 1i64 << (sd.config.vae.ch_mult.len() as i64 - 1);
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(|e| crate::error::Error::io(d, e))?;
    }
    let vae = dir.map(|_| vae_fingerprint(sd));
    let mut stats = CacheStats::default();
    let mut out = Vec::with_capacity(images.len());
    for (i, img) in images.iter().enumerate() {
        let s = img.pixels.size();
        if s[1] % factor != 0 || s[2] % factor != 0 {
            return Err(train_error(format!(
                "image {i} is {}×{}: sides must be multiples of {factor} (bucket sizes are multiples of 64)",
                s[2], s[1]
            )));
        }
        let latent_hw = (s[1] / factor, s[2] / factor);
        let cached = match (dir, &vae) {
            (Some(d), Some(v)) => {
                let content = content_hash(&img.pixels);
                let want = record(&content, &img.pixels, flip, v);
                let path = cache_path(d, &content);
                Some((path, want))
            }
            _ => None,
        };
        if let Some((path, want)) = &cached {
            if let Some((l, f)) = read_valid(path, want, latent_hw, flip) {
                stats.reused += 1;
                out.push((l.to_device(device), f.map(|f| f.to_device(device))));
                continue;
            }
        }
        let stream = SplitMix64::derive(seed, TAG_CACHE, i as u64, 0).next_u64() >> 1;
        tch::manual_seed(stream as i64);
        let (latent, flipped) = tch::no_grad(|| {
            let x = img.pixels.unsqueeze(0).to_device(device);
            let sample = |x: &Tensor| {
                let (mean, logvar) = sd.vae.encode(x);
                (&mean + (&logvar * 0.5).exp() * mean.randn_like()).to_kind(Kind::Float)
            };
            let latent = sample(&x);
            let flipped = flip.then(|| sample(&x.flip([3])));
            (latent, flipped)
        });
        stats.encoded += 1;
        if let Some((path, want)) = cached {
            let mut tensors = vec![("latents".to_string(), latent.shallow_clone())];
            if let Some(f) = &flipped {
                tensors.push(("latents_flipped".to_string(), f.shallow_clone()));
            }
            let meta = std::collections::HashMap::from([(CACHE_KEY.to_string(), want.to_string())]);
            write_atomic(&path, &tensors, Some(meta))?;
        }
        out.push((latent, flipped));
    }
    Ok((out, stats))
}
