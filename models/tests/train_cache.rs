//! Latent caching and flip augmentation on the tiny fixture (training spec §1.9, §1.10): cache
//! files are reused when valid and rewritten when stale (flip setting, VAE weights, image
//! content), reused latents train exactly like fresh ones, and `flip_aug` draws both the image's
//! and its mirror's cached latents.

use std::path::PathBuf;

use models::clip::tokenizer::ClipTokenizer;
use models::train::latent_cache::{cache_path, content_hash};
use models::train::lora_net::LoraConfig;
use models::train::optim::{AdamWConfig, OptimizerConfig};
use models::train::{TrainConfig, TrainImage, TrainSession};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use tch::{Kind, Tensor};

mod train_support;

use train_support::{rng, tiny};

fn images() -> Vec<TrainImage> {
    tch::manual_seed(11);
    (0..2)
        .map(|i| {
            let px = Tensor::rand([3, 32, 32], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
            TrainImage::new(px, format!("ohwx man {i}"), false)
        })
        .collect()
}

fn config(dir: Option<PathBuf>, flip: bool) -> TrainConfig {
    TrainConfig {
        network: LoraConfig { rank: 2, ..Default::default() },
        optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
        learning_rate: 1e-3,
        max_train_steps: 4,
        batch_size: 1,
        flip_aug: flip,
        latent_cache_dir: dir,
        seed: 3,
        ..Default::default()
    }
}

#[test]
fn latent_cache_reused_when_valid_and_rewritten_when_stale() {
    let _rng = rng();
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let imgs = images();
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(Some(dir.path().to_path_buf()), false);

    let mut first = TrainSession::new(&sd, &tok, &imgs, cfg()).unwrap();
    assert_eq!((first.cache_stats().reused, first.cache_stats().encoded), (0, 2));
    let file = cache_path(dir.path(), &content_hash(&imgs[0].pixels));
    let stored = SafetensorsFile::open(&file).unwrap();
    assert_eq!(stored.read("latents").unwrap().size(), vec![1, 4, 16, 16], "unscaled [1, 4, h/2, w/2]");
    assert!(stored.read("latents_flipped").is_err());
    drop(stored);
    let fresh_loss = first.step(&sd).unwrap().loss;
    drop(first);

    let mut second = TrainSession::new(&sd, &tok, &imgs, cfg()).unwrap();
    assert_eq!((second.cache_stats().reused, second.cache_stats().encoded), (2, 0));
    assert_eq!(second.step(&sd).unwrap().loss, fresh_loss, "cached latents train like fresh ones");
    drop(second);

    // Stale: flip now needs a mirrored latent the files lack.
    let flipped = TrainSession::new(&sd, &tok, &imgs, config(Some(dir.path().to_path_buf()), true)).unwrap();
    assert_eq!(flipped.cache_stats().encoded, 2);
    assert_eq!(
        SafetensorsFile::open(&file).unwrap().read("latents_flipped").unwrap().size(),
        vec![1, 4, 16, 16]
    );
    drop(flipped);

    // Stale: another VAE (one encoder weight changed).
    let name =
        sd.params.keys().find(|k| k.starts_with("first_stage_model.encoder.conv_in.weight")).unwrap().clone();
    let saved = sd.params[&name].copy();
    tch::no_grad(|| {
        let _ = sd.params[&name].shallow_clone().g_add_scalar_(0.01);
    });
    let other_vae =
        TrainSession::new(&sd, &tok, &imgs, config(Some(dir.path().to_path_buf()), true)).unwrap();
    assert_eq!(other_vae.cache_stats().encoded, 2);
    drop(other_vae);
    tch::no_grad(|| sd.params[&name].shallow_clone().copy_(&saved));
    let back = TrainSession::new(&sd, &tok, &imgs, config(Some(dir.path().to_path_buf()), true)).unwrap();
    assert_eq!(back.cache_stats().encoded, 2, "files now hold the other VAE's latents");
    drop(back);

    // Stale: a damaged file (wrong shape under the right record) is re-encoded, the other reused.
    let good = SafetensorsFile::open(&file).unwrap();
    let meta = good.metadata().clone();
    drop(good);
    let bad = vec![("latents".to_string(), Tensor::zeros([1, 4, 8, 8], (Kind::Float, tch::Device::Cpu)))];
    models::weights::safetensors_file::write_atomic(&file, &bad, Some(meta)).unwrap();
    let repaired = TrainSession::new(&sd, &tok, &imgs, config(Some(dir.path().to_path_buf()), true)).unwrap();
    assert_eq!((repaired.cache_stats().reused, repaired.cache_stats().encoded), (1, 1));
}

/// The distinct latents batch-of-one draws return over `draws` fetches of a one-image set.
fn distinct_latents(flip: bool, draws: usize) -> usize {
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let imgs = images().into_iter().take(1).collect::<Vec<_>>();
    let mut s = TrainSession::new(&sd, &tok, &imgs, config(None, flip)).unwrap();
    let mut seen: Vec<Tensor> = Vec::new();
    let mut mirrored = 0;
    for _ in 0..draws {
        let b = s.draw_batch().unwrap();
        if !seen.iter().any(|t| t.equal(&b.latents)) {
            seen.push(b.latents.shallow_clone());
        }
        if !seen[0].equal(&b.latents) {
            mirrored += 1;
        }
    }
    if flip {
        assert!((5..=15).contains(&mirrored), "p = 0.5 over {draws} draws, got {mirrored}");
    }
    seen.len()
}

#[test]
fn flip_aug_draws_image_and_mirror_latents() {
    let _rng = rng();
    assert_eq!(distinct_latents(false, 20), 1);
    assert_eq!(distinct_latents(true, 20), 2);
}
