//! Benchmark (not a test): one full-size SD1.5 UNet step (batch 2, 64×64 latent, 77-token
//! context) and one VAE decode (64×64 latent → 512×512) on random weights, in the compute dtype of
//! the chosen device. Prints one JSON line with the median seconds of each; `reference/bench_sd15.py`
//! runs this and diffusers side by side and prints the ratio.
//!
//! Usage: bench_sd15 [--device cpu|cuda] [--iters N]

use std::time::Instant;

use models::device::{parse_device, Placement};
use models::unet::{Unet, UnetConfig};
use models::vae::{Vae, VaeConfig};
use models::weights::{RandomWeights, Weights};
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(iters: usize, device: Device, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    sync();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f();
        sync();
        times.push(t.elapsed().as_secs_f64());
    }
    median(times)
}

fn main() -> models::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let device =
        parse_device(&arg("--device").unwrap_or_else(|| "cpu".into())).expect("--device cpu|cuda[:N]");
    let iters: usize = arg("--iters").and_then(|s| s.parse().ok()).unwrap_or(3);
    let placement = Placement::for_device(device, false);
    let _guard = tch::no_grad_guard();

    let random = RandomWeights::new(0);
    let w = Weights::random(random, placement);
    let build = Instant::now();
    let unet = Unet::new(&w.pp("model.diffusion_model"), &UnetConfig::v1_5())?;
    let vae = Vae::new(&w.pp("first_stage_model"), &VaeConfig::sd())?;
    let build_s = build.elapsed().as_secs_f64();

    let opts = (placement.kind, device);
    tch::manual_seed(1);
    let x = Tensor::randn([2, 4, 64, 64], opts);
    let t = Tensor::from_slice(&[999.0f32, 999.0]).to_device(device);
    let context = Tensor::randn([2, 77, 768], opts);
    let unet_s = time(iters, device, || {
        let _ = unet.forward(&x, &t, &context);
    });
    let z = Tensor::randn([1, 4, 64, 64], opts);
    let vae_s = time(iters, device, || {
        let _ = vae.decode(&z);
    });
    let kind = match placement.kind {
        Kind::Half => "fp16",
        Kind::BFloat16 => "bf16",
        _ => "fp32",
    };
    println!(
        "{{\"impl\": \"diffusiond\", \"device\": \"{device:?}\", \"dtype\": \"{kind}\", \"threads\": {}, \"build_s\": {build_s:.3}, \"unet_step_s\": {unet_s:.4}, \"vae_decode_s\": {vae_s:.4}}}",
        tch::get_num_threads()
    );
    Ok(())
}
