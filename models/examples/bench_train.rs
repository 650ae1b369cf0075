//! Benchmark (not a test): seconds per LoRA training step of [`TrainSession`] on a checkpoint
//! (any layout the loader reads; `reference/bench_train.py` passes a diffusers folder so that
//! diffusers builds the very same weights). One step is what the trainer does per batch: draw the
//! batch, attach the LoRA, text encoder and UNet forward, min-SNR loss, backward, gradient clip,
//! AdamW and scheduler step, detach. The model is fp32, or bf16 with `--mixed-precision bf16`
//! (fp32 LoRA, as the daemon trains under `mixed_precision: "bf16"`); `--gradient-checkpointing`
//! recomputes the UNet's segments during backward.
//!
//! Prints one JSON line: the median step time after warm-up, every timed step, and the process's
//! peak resident memory (over the whole run, and over the training steps alone) and, on CUDA, the caching allocator's peak allocated bytes over the whole
//! run (model load and latent caching included), the statistic of
//! `torch.cuda.max_memory_allocated`.
//!
//! Usage: bench_train --model PATH [--device cpu|cuda] [--resolution PX] [--batch N] [--rank R]
//! [--alpha A] [--warmup N] [--iters N] [--threads N] [--mixed-precision no|bf16]
//! [--gradient-checkpointing]

use std::time::Instant;

use models::checkpoint::StableDiffusion;
use models::clip::tokenizer::ClipTokenizer;
use models::device::{cuda_memory, parse_device, Placement};
use models::train::lora_net::LoraConfig;
use models::train::loss::LossWeighting;
use models::train::optim::{AdamWConfig, OptimizerConfig};
use models::train::schedule::LrScheduleKind;
use models::train::{MixedPrecision, TrainConfig, TrainImage, TrainSession};
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The process's peak resident set (VmHWM) in MiB, where /proc has it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets VmHWM to the current resident set (Linux `clear_refs` 5), so that the next
/// [`peak_rss_mib`] sees the training steps' peak without the model load's.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn main() -> models::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let num = |flag: &str, default: f64| arg(flag).and_then(|s| s.parse::<f64>().ok()).unwrap_or(default);
    let model = arg("--model").expect("--model PATH (a checkpoint file or diffusers folder)");
    let device =
        parse_device(&arg("--device").unwrap_or_else(|| "cpu".into())).expect("--device cpu|cuda[:N]");
    let resolution = num("--resolution", 64.0) as i64;
    let batch = num("--batch", 3.0) as usize;
    let rank = num("--rank", 128.0) as i64;
    let alpha = num("--alpha", 1.0);
    let warmup = num("--warmup", 2.0) as usize;
    let iters = num("--iters", 5.0) as usize;
    if let Some(threads) = arg("--threads").and_then(|s| s.parse::<i32>().ok()) {
        tch::set_num_threads(threads);
    }
    let mixed_precision = match arg("--mixed-precision").as_deref() {
        None | Some("no") => MixedPrecision::No,
        Some("bf16") => MixedPrecision::Bf16,
        Some(other) => panic!("--mixed-precision no|bf16, got {other}"),
    };
    let gradient_checkpointing = args.iter().any(|a| a == "--gradient-checkpointing");

    let placement = Placement { device, kind: mixed_precision.kind() };
    let load = Instant::now();
    let sd = StableDiffusion::load(std::path::Path::new(&model), placement)?;
    let load_s = load.elapsed().as_secs_f64();
    let tokenizer = ClipTokenizer::new()?;

    // One bucket holding exactly one batch: every step trains on the same-size latents.
    tch::manual_seed(7);
    let images: Vec<TrainImage> = (0..batch)
        .map(|i| {
            let pixels = Tensor::rand([3, resolution, resolution], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            TrainImage::new(pixels.to_device(device), format!("photo of ohwx man, view {i}"), false)
        })
        .collect();
    let config = TrainConfig {
        network: LoraConfig { rank, alpha: Some(alpha), ..Default::default() },
        optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
        learning_rate: 1e-4,
        scheduler: LrScheduleKind::Constant,
        max_train_steps: (warmup + iters) as u64,
        batch_size: batch,
        noise_offset: Some(0.0357),
        weighting: LossWeighting { min_snr_gamma: Some(5.0), prior_loss_weight: 1.0 },
        clip_skip: 2,
        max_grad_norm: 1.0,
        seed: 1234,
        mixed_precision,
        gradient_checkpointing,
        ..Default::default()
    };
    let setup = Instant::now();
    let mut session = TrainSession::new(&sd, &tokenizer, &images, config)?;
    let setup_s = setup.elapsed().as_secs_f64();
    let modules = session.network().modules.len();
    let trainable: i64 = session.network().parameters().iter().map(|p| p.numel() as i64).sum();

    let peak_rss_setup = peak_rss_mib();
    let reset = reset_peak_rss();
    for _ in 0..warmup {
        session.step(&sd)?;
    }
    sync(device);
    let mut steps = Vec::with_capacity(iters);
    let mut last_loss = f64::NAN;
    for _ in 0..iters {
        let t = Instant::now();
        let record = session.step(&sd)?;
        sync(device);
        steps.push(t.elapsed().as_secs_f64());
        last_loss = record.loss;
    }

    let json = serde_json::json!({
        "impl": "diffusiond",
        "device": format!("{device:?}"),
        "dtype": mixed_precision.name(),
        "gradient_checkpointing": gradient_checkpointing,
        "threads": tch::get_num_threads(),
        "resolution": resolution,
        "batch": batch,
        "rank": rank,
        "alpha": alpha,
        "modules": modules,
        "trainable_params": trainable,
        "load_s": load_s,
        "setup_s": setup_s,
        "step_s": median(steps.clone()),
        "steps_s": steps,
        "last_loss": last_loss,
        "peak_rss_mib": peak_rss_setup.zip(peak_rss_mib()).map(|(a, b)| a.max(b)),
        "peak_rss_steps_mib": if reset { peak_rss_mib() } else { None },
        "peak_cuda_mib": cuda_memory(device).map(|m| m.allocated.1 as f64 / (1u64 << 20) as f64),
    });
    println!("{json}");
    Ok(())
}
