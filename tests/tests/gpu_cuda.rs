//! CUDA paths (fp16 and bf16 compute, the host-memory checkpoint tier, memory statistics).
//! Ignored by default: run on a machine with a GPU with
//! `cargo test -p tests --test gpu_cuda -- --ignored`.

use models::checkpoint::StableDiffusion;
use models::device::Placement;
use tch::{Device, Kind, Tensor};
use tests::{fixture, golden, max_rel_err};

/// Loads libtorch's CUDA backend and checks that a GPU is there.
fn require_cuda() {
    assert!(models::device::load_cuda_backend(), "this libtorch has no CUDA backend");
    assert!(tch::Cuda::is_available(), "no CUDA device");
}

fn run(kind: Kind, tolerance: f64) {
    require_cuda();
    let placement = Placement { device: Device::Cuda(0), kind };
    let sd = StableDiffusion::load(&fixture("tiny/tiny-sd15.safetensors"), placement).unwrap();
    let _guard = tch::no_grad_guard();
    let g = golden("clip.safetensors");
    let err = max_rel_err(&sd.clip.encode(&g["input_ids"], 2).to_kind(Kind::Float), &g["skip2"]);
    assert!(err < tolerance, "clip {kind:?}: {err}");
    let g = golden("unet.safetensors");
    let cuda = |t: &Tensor| t.to_device(placement.device).to_kind(kind);
    let out = sd.unet.forward(&cuda(&g["x"]), &g["t"].to_device(placement.device), &cuda(&g["context"]));
    let err = max_rel_err(&out.to_kind(Kind::Float), &g["out"]);
    assert!(err < tolerance, "unet {kind:?}: {err}");
    let g = golden("vae.safetensors");
    let err = max_rel_err(&sd.vae.decode(&cuda(&g["latent"])).to_kind(Kind::Float), &g["decoded"]);
    assert!(err < tolerance, "vae {kind:?}: {err}");
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_fp16_matches_fp32_reference() {
    run(Kind::Half, 1e-2);
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_bf16_matches_fp32_reference() {
    run(Kind::BFloat16, 5e-2);
}

/// The UNet's output on the golden inputs, on the model's device and dtype, back in fp32 on the CPU.
fn unet_out(sd: &StableDiffusion) -> Tensor {
    let g = golden("unet.safetensors");
    let Placement { device, kind } = sd.placement;
    let on = |t: &Tensor| t.to_device(device).to_kind(kind);
    let _guard = tch::no_grad_guard();
    sd.unet
        .forward(&on(&g["x"]), &g["t"].to_device(device), &on(&g["context"]))
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_host_tier_round_trip_reads_no_file_and_keeps_outputs_bit_exact() {
    use models::device::cuda_memory;
    use models::lora::LoraSpec;
    require_cuda();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::copy(fixture("tiny/tiny-sd15.safetensors"), &path).unwrap();
    let cuda = Device::Cuda(0);
    let mut sd = StableDiffusion::load(&path, Placement::for_device(cuda, false)).unwrap();
    let plain = unet_out(&sd);
    let lora =
        [LoraSpec { path: fixture("lora/tiny_lora.safetensors"), te_multiplier: 1.0, unet_multiplier: 1.0 }];
    assert!(sd.apply_loras(&lora).unwrap());
    let merged = unet_out(&sd);
    assert!((&merged - &plain).abs().max().double_value(&[]) > 0.0, "the LoRA changes the output");
    let on_device = cuda_memory(cuda).expect("CUDA statistics").allocated.0;

    sd.to_host().unwrap();
    assert_eq!(sd.placement.device, Device::Cpu);
    assert_eq!(sd.lora.lock().unwrap().changed_weights(), 0, "merges are restored before parking");
    for (name, p) in &sd.params {
        assert_eq!(p.device(), Device::Cpu, "{name}");
        assert!(models::device::is_pinned(p), "{name} is in pinned memory");
    }
    let parked = cuda_memory(cuda).unwrap().allocated.0;
    let weights: i64 = sd.params.values().map(|p| p.numel() as i64 * 2).sum();
    assert!(on_device - parked >= weights, "the weights left the GPU: {on_device} -> {parked} ({weights})");

    // Back without the file: the same outputs, bit for bit (a module left behind on the host
    // would fail on CUDA inputs), and LoRAs merge as before.
    std::fs::write(&path, b"gone").unwrap();
    sd.to_device(cuda).unwrap();
    assert_eq!(sd.placement.device, cuda);
    assert!(sd.params.values().all(|p| p.device() == cuda));
    assert_eq!((unet_out(&sd) - &plain).abs().max().double_value(&[]), 0.0);
    assert!(sd.apply_loras(&lora).unwrap());
    assert_eq!((unet_out(&sd) - &merged).abs().max().double_value(&[]), 0.0);
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_memory_reports_device_and_allocator_statistics() {
    require_cuda();
    let cuda = Device::Cuda(0);
    let block = Tensor::zeros([16, 1024, 1024], (Kind::Float, cuda));
    let m = models::device::cuda_memory(cuda).expect("CUDA statistics");
    assert!(m.total > m.free && m.free > 0, "{m:?}");
    assert!(m.allocated.0 >= 64 << 20 && m.allocated.1 >= m.allocated.0, "{m:?}");
    assert!(m.reserved.0 >= m.allocated.0, "{m:?}");
    assert!(m.active.0 >= 64 << 20, "{m:?}");
    assert_eq!(m.ooms, 0, "{m:?}");
    drop(block);
    let after = models::device::cuda_memory(cuda).unwrap();
    assert!(after.allocated.0 <= m.allocated.0 - (64 << 20), "{after:?}");
    assert_eq!(models::device::cuda_memory(Device::Cpu), None);
}

/// Step losses and the fixed-batch loss before and after 8 LoRA training steps of the tiny model
/// on CUDA in `precision`.
fn cuda_training(precision: models::train::MixedPrecision, checkpointing: bool) -> (Vec<f64>, f64, f64) {
    use models::clip::tokenizer::ClipTokenizer;
    use models::train::lora_net::LoraConfig;
    use models::train::optim::{AdamWConfig, OptimizerConfig};
    use models::train::schedule::LrScheduleKind;
    use models::train::{TrainConfig, TrainImage, Trainer};
    let placement = Placement { device: Device::Cuda(0), kind: precision.kind() };
    let sd = StableDiffusion::load(&fixture("tiny/tiny-sd15.safetensors"), placement).unwrap();
    tch::manual_seed(7);
    let images: Vec<TrainImage> = (0..2)
        .map(|i| {
            let pixels = Tensor::rand([3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            TrainImage::new(pixels.to_device(placement.device), format!("photo of ohwx man {i}"), false)
        })
        .collect();
    let config = TrainConfig {
        network: LoraConfig { rank: 4, alpha: Some(4.0), conv: Some((2, 2.0)), ..Default::default() },
        optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
        learning_rate: 1e-2,
        scheduler: LrScheduleKind::Constant,
        max_train_steps: 8,
        batch_size: 2,
        noise_offset: Some(0.0357),
        seed: 42,
        mixed_precision: precision,
        gradient_checkpointing: checkpointing,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&sd, &ClipTokenizer::new().unwrap(), &images, config).unwrap();
    let fixed = trainer.draw_batch().unwrap();
    let before = trainer.eval_loss(&fixed);
    let losses = trainer.run(|_| {}).unwrap().iter().map(|r| r.loss).collect();
    let after = trainer.eval_loss(&fixed);
    let net = trainer.finish();
    assert!(net.modules.iter().all(|m| m.up.kind() == Kind::Float), "the LoRA stays fp32");
    (losses, before, after)
}

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_bf16_and_fp16_training_follow_fp32_training() {
    require_cuda();
    use models::train::MixedPrecision;
    // The same seed draws the same batches and noise on the same device in every run.
    let (fp32, before32, after32) = cuda_training(MixedPrecision::No, false);
    println!("fp32 {fp32:.4?} {before32:.4} -> {after32:.4}");
    for (precision, checkpointing) in [(MixedPrecision::Bf16, true), (MixedPrecision::Fp16, false)] {
        let (losses, before, after) = cuda_training(precision, checkpointing);
        let name = precision.name();
        println!("{name} {losses:.4?} {before:.4} -> {after:.4}");
        assert!(after < before * 0.98, "{name} training lowers the fixed-batch loss: {before} -> {after}");
        for (b, f) in losses.iter().zip(&fp32) {
            assert!((b - f).abs() < 0.05 * f.abs() + 1e-3, "{name} step loss {b} vs fp32 {f}");
        }
    }
}
