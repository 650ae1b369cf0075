//! CUDA paths (fp16 and bf16 compute). Ignored by default: run on a machine with a GPU with
//! `cargo test -p tests --test gpu_cuda -- --ignored`.

use models::checkpoint::StableDiffusion;
use models::device::Placement;
use tch::{Device, Kind, Tensor};
use tests::{fixture, golden, max_rel_err};

fn run(kind: Kind, tolerance: f64) {
    assert!(tch::Cuda::is_available(), "no CUDA device");
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
