//! A LoRA written by our trainer, applied by diffusers' `load_lora_weights` (peft) and by our own
//! merge (`models::lora`), gives the same tiny UNet and text-encoder outputs (training spec §4.7;
//! goldens from reference/gen_trained_lora_golden.py), and the LoRA changes them.
//!
//! The LoRA file itself is committed (tests/fixtures/training/tiny_trained_lora.safetensors); the
//! ignored test `trained_lora_fixture_write` trains and writes it again:
//!     cargo test -p models --test train_diffusers -- --ignored trained_lora_fixture_write
//! then rerun the reference script.

use std::path::PathBuf;

use models::checkpoint::StableDiffusion;
use models::clip::tokenizer::ClipTokenizer;
use models::device::Placement;
use models::lora::LoraSpec;
use models::train::lora_net::LoraConfig;
use models::train::optim::{AdamWConfig, OptimizerConfig};
use models::train::save::{kohya_metadata, save_kohya, RunInfo};
use models::train::schedule::LrScheduleKind;
use models::train::{TrainConfig, TrainImage, TrainSession};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use tch::{Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
}

fn tiny() -> StableDiffusion {
    StableDiffusion::load(&fixtures().join("tiny/tiny-sd15.safetensors"), Placement::cpu()).unwrap()
}

fn lora_file() -> PathBuf {
    fixtures().join("training/tiny_trained_lora.safetensors")
}

#[test]
#[ignore = "regenerates the committed fixture"]
fn trained_lora_fixture_write() {
    let sd = tiny();
    let tok = ClipTokenizer::new().unwrap();
    tch::manual_seed(5);
    let images: Vec<TrainImage> = (0..3)
        .map(|i| {
            let px = Tensor::rand([3, 32, 32], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
            TrainImage::new(px, format!("photo of ohwx cube {i}"), false)
        })
        .collect();
    let config = TrainConfig {
        network: LoraConfig { rank: 4, alpha: Some(2.0), ..Default::default() },
        optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
        learning_rate: 2e-2,
        scheduler: LrScheduleKind::Constant,
        max_train_steps: 12,
        batch_size: 3,
        seed: 21,
        ..Default::default()
    };
    let mut session = TrainSession::new(&sd, &tok, &images, config.clone()).unwrap();
    for _ in 0..config.max_train_steps {
        session.step(&sd).unwrap();
    }
    let run = RunInfo {
        output_name: "tiny_trained_lora".into(),
        steps: config.max_train_steps,
        epoch: 12,
        num_train_images: 3,
        resolution: (32, 32),
        ..Default::default()
    };
    let meta = kohya_metadata(session.network(), &config, &run);
    save_kohya(session.network(), &lora_file(), &meta, Kind::Float).unwrap();
}

/// Relative max-abs difference.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

#[test]
fn trained_lora_matches_diffusers_load_lora_weights() {
    // One intra-op thread: faster than two on a busy machine for a model this small.
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let sd = tiny();
    let golden = SafetensorsFile::open(fixtures().join("training/trained_lora_golden.safetensors")).unwrap();
    let g = |n: &str| golden.read(n).unwrap().to_kind(Kind::Float);
    let (x, t, context, ids) = (g("x"), g("t"), g("context"), golden.read("input_ids").unwrap());

    let unet_base = sd.unet.forward(&x, &t, &context);
    let te_base = sd.clip.encode(&ids, 2);
    assert!(
        rel(&unet_base, &g("unet_base")) < 1e-4,
        "base UNet differs: {}",
        rel(&unet_base, &g("unet_base"))
    );
    assert!(
        rel(&te_base, &g("te_base")) < 1e-4,
        "base text encoder differs: {}",
        rel(&te_base, &g("te_base"))
    );

    let spec = LoraSpec { path: lora_file(), te_multiplier: 1.0, unet_multiplier: 1.0 };
    sd.apply_loras(&[spec]).unwrap();
    let unet_lora = sd.unet.forward(&x, &t, &context);
    let te_lora = sd.clip.encode(&ids, 2);
    sd.apply_loras(&[]).unwrap();

    let (unet_err, te_err) = (rel(&unet_lora, &g("unet_lora")), rel(&te_lora, &g("te_lora")));
    let (unet_moved, te_moved) = (rel(&unet_lora, &unet_base), rel(&te_lora, &te_base));
    println!("vs diffusers: UNet {unet_err:.2e}, TE {te_err:.2e}; LoRA effect: UNet {unet_moved:.2e}, TE {te_moved:.2e}");
    assert!(unet_err < 1e-4, "UNet with the LoRA differs from diffusers by {unet_err}");
    assert!(te_err < 1e-4, "text encoder with the LoRA differs from diffusers by {te_err}");
    assert!(unet_moved > 1e-3, "the LoRA barely changes the UNet output ({unet_moved})");
    assert!(te_moved > 1e-3, "the LoRA barely changes the text encoder output ({te_moved})");
}
