//! UNet and VAE: parity with diffusers on the tiny fixture checkpoint (goldens written by
//! diffusers `UNet2DConditionModel` / `AutoencoderKL` in fp32 from the same fp16 weights), shape
//! detection, and random-weight checks (shapes, determinism, full-size parameter counts).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use models::device::Placement;
use models::error::Error;
use models::unet::{AttentionHeads, Unet, UnetConfig};
use models::vae::{Vae, VaeConfig};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::{MemorySource, RandomWeights, TensorSource, Weights};
use tch::{Kind, Tensor};

/// Largest |ours − reference| allowed, relative to max |reference|, in fp32 on CPU.
const TOLERANCE: f64 = 1e-5;

/// `RandomWeights` and the inputs below draw from libtorch's global generator after
/// `manual_seed`; tests run on parallel threads, so seeding and drawing must not interleave.
static GLOBAL_RNG: Mutex<()> = Mutex::new(());

fn rng() -> MutexGuard<'static, ()> {
    GLOBAL_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seeded standard-normal noise.
fn randn(shape: &[i64], seed: i64) -> Tensor {
    let _rng = rng();
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Float, tch::Device::Cpu))
}

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
}

fn open(relative: &str) -> SafetensorsFile {
    let path = fixtures().join(relative);
    SafetensorsFile::open(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn read(file: &SafetensorsFile, name: &str) -> Tensor {
    file.read(name).unwrap().to_kind(Kind::Float)
}

fn max_rel_error(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "output shape");
    let diff = (ours - reference).abs().max().double_value(&[]);
    diff / reference.abs().max().double_value(&[])
}

fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    let err = max_rel_error(ours, reference);
    println!("{what}: max relative error {err:.3e}");
    assert!(err <= TOLERANCE, "{what}: max relative error {err:.3e} > {TOLERANCE:e}");
}

/// The tiny test UNet: diffusers block_out_channels (32, 64, 64), attention on levels 0 and 1.
fn tiny_unet_config(in_channels: i64) -> UnetConfig {
    UnetConfig {
        in_channels,
        out_channels: 4,
        model_channels: 32,
        channel_mult: vec![1, 2, 2],
        num_res_blocks: 2,
        transformer_depth: vec![1, 1, 0],
        mid_transformer_depth: 1,
        context_dim: 32,
        heads: AttentionHeads::Count(8),
        use_linear_projection: false,
        time_embed_dim: 128,
        norm_groups: 32,
        adm_in_channels: None,
    }
}

fn tiny_vae_config() -> VaeConfig {
    VaeConfig {
        ch: 32,
        ch_mult: vec![1, 2],
        num_res_blocks: 2,
        z_channels: 4,
        embed_dim: 4,
        in_channels: 3,
        out_channels: 3,
        norm_groups: 32,
    }
}

fn unet_parity(checkpoint: &str, golden: &str, in_channels: i64) {
    let _guard = tch::no_grad_guard();
    let file = open(checkpoint);
    let config = UnetConfig::detect(&file, "model.diffusion_model.").unwrap();
    assert_eq!(config, tiny_unet_config(in_channels));
    let w = Weights::from_source(&file, Placement::cpu());
    let unet = Unet::new(&w.pp("model.diffusion_model"), &config).unwrap();
    let g = open(golden);
    let out = unet.forward(&read(&g, "x"), &read(&g, "t"), &read(&g, "context"));
    assert_close(golden, &out, &read(&g, "out"));
}

#[test]
fn unet_tiny_fixture_matches_diffusers() {
    unet_parity("tiny/tiny-sd15.safetensors", "golden/unet.safetensors", 4);
}

#[test]
fn unet_tiny_inpainting_fixture_matches_diffusers() {
    unet_parity("tiny/tiny-sd15-inpainting.safetensors", "golden/unet_inpainting.safetensors", 9);
}

#[test]
fn vae_tiny_fixture_matches_diffusers() {
    let _guard = tch::no_grad_guard();
    let file = open("tiny/tiny-sd15.safetensors");
    let config = VaeConfig::detect(&file, "first_stage_model.").unwrap();
    assert_eq!(config, tiny_vae_config());
    let w = Weights::from_source(&file, Placement::cpu());
    let vae = Vae::new(&w.pp("first_stage_model"), &config).unwrap();
    let g = open("golden/vae.safetensors");
    assert_close("vae decode", &vae.decode(&read(&g, "latent")), &read(&g, "decoded"));
    let (mean, logvar) = vae.encode(&read(&g, "image"));
    assert_close("vae encode mean", &mean, &read(&g, "mean"));
    assert_close("vae encode logvar", &logvar, &read(&g, "logvar"));
}

/// A random tiny UNet and the tensors it was built from.
fn random_unet(config: &UnetConfig, seed: i64) -> (Unet, HashMap<String, Tensor>) {
    let _rng = rng();
    let random = RandomWeights::new(seed);
    let unet = Unet::new(&Weights::random(random.clone(), Placement::cpu()), config).unwrap();
    (unet, random.tensors())
}

fn unet_inputs(batch: i64, in_channels: i64, h: i64, w: i64) -> (Tensor, Tensor, Tensor) {
    let x = randn(&[batch, in_channels, h, w], 7);
    let t = Tensor::from_slice(&[999.0f32, 412.625][..batch as usize]);
    let context = randn(&[batch, 77, 32], 8);
    (x, t, context)
}

#[test]
fn unet_random_tiny_forward_is_finite_and_deterministic() {
    let _guard = tch::no_grad_guard();
    let config = tiny_unet_config(4);
    let (unet, _) = random_unet(&config, 1);
    let (x, t, context) = unet_inputs(2, 4, 16, 16);
    let out = unet.forward(&x, &t, &context);
    assert_eq!(out.size(), [2, 4, 16, 16]);
    assert!(bool::try_from(out.isfinite().all()).unwrap());
    assert!(out.abs().max().double_value(&[]) > 0.0);
    // Same seed, fresh build: bit-identical.
    let (again, _) = random_unet(&config, 1);
    assert!(out.equal(&again.forward(&x, &t, &context)));
    // The batch items are independent: item 1 alone equals item 1 of the batch.
    let single = unet.forward(&x.narrow(0, 1, 1), &t.narrow(0, 1, 1), &context.narrow(0, 1, 1));
    assert!(max_rel_error(&single, &out.narrow(0, 1, 1)) < 1e-5);
}

#[test]
fn unet_random_tiny_odd_latent_keeps_its_size() {
    let _guard = tch::no_grad_guard();
    let (unet, _) = random_unet(&tiny_unet_config(4), 2);
    let (x, t, context) = unet_inputs(1, 4, 13, 10);
    let out = unet.forward(&x, &t, &context);
    assert_eq!(out.size(), [1, 4, 13, 10]);
    assert!(bool::try_from(out.isfinite().all()).unwrap());
}

#[test]
fn unet_random_tiny_long_context_and_scalar_timestep_run() {
    let _guard = tch::no_grad_guard();
    let (unet, _) = random_unet(&tiny_unet_config(4), 3);
    let (x, _, _) = unet_inputs(2, 4, 8, 8);
    let context = randn(&[2, 154, 32], 9);
    let shared = unet.forward(&x, &Tensor::from_slice(&[500.5f32]), &context);
    let per_item = unet.forward(&x, &Tensor::from_slice(&[500.5f32, 500.5]), &context);
    assert_eq!(shared.size(), [2, 4, 8, 8]);
    assert!(shared.equal(&per_item));
}

#[test]
fn unet_detect_on_written_tiny_model_gives_its_config() {
    for in_channels in [4, 9] {
        let config = tiny_unet_config(in_channels);
        let (_, tensors) = random_unet(&config, 4);
        let tensors = tensors.into_iter().map(|(k, v)| (format!("model.diffusion_model.{k}"), v)).collect();
        let src = MemorySource::new(tensors);
        assert_eq!(UnetConfig::detect(&src, "model.diffusion_model.").unwrap(), config);
        // Without the trailing dot too.
        assert_eq!(UnetConfig::detect(&src, "model.diffusion_model").unwrap(), config);
    }
}

#[test]
fn unet_detect_without_unet_keys_names_expected_tensor() {
    let (_, tensors) = random_unet(&tiny_unet_config(4), 5);
    let src = MemorySource::new(tensors);
    match UnetConfig::detect(&src, "model.diffusion_model.") {
        Err(Error::UnknownCheckpoint { reason, .. }) => {
            assert!(reason.contains("model.diffusion_model.input_blocks.0.0.weight"), "{reason}")
        }
        other => panic!("expected UnknownCheckpoint, got {other:?}"),
    }
}

#[test]
fn unet_new_with_wrong_context_dim_reports_shape_mismatch() {
    let (_, tensors) = random_unet(&tiny_unet_config(4), 6);
    let src = MemorySource::new(tensors);
    let mut config = tiny_unet_config(4);
    config.context_dim = 64;
    match Unet::new(&Weights::from_source(&src, Placement::cpu()), &config) {
        Err(Error::ShapeMismatch { name, expected, got, .. }) => {
            assert!(name.ends_with("attn2.to_k.weight"), "{name}");
            assert_eq!((expected, got), (vec![32, 64], vec![32, 32]));
        }
        other => panic!("expected ShapeMismatch, got {:?}", other.map(|_| ())),
    }
}

fn random_vae(config: &VaeConfig, seed: i64) -> (Vae, HashMap<String, Tensor>) {
    let _rng = rng();
    let random = RandomWeights::new(seed);
    let vae = Vae::new(&Weights::random(random.clone(), Placement::cpu()), config).unwrap();
    (vae, random.tensors())
}

#[test]
fn vae_random_tiny_round_trip_has_expected_shapes() {
    let _guard = tch::no_grad_guard();
    let (vae, _) = random_vae(&tiny_vae_config(), 1);
    let image = (randn(&[2, 3, 16, 16], 3) * 0.5).clamp(-1.0, 1.0);
    let (mean, logvar) = vae.encode(&image);
    assert_eq!(mean.size(), [2, 4, 8, 8]);
    assert_eq!(logvar.size(), [2, 4, 8, 8]);
    let decoded = vae.decode(&mean);
    assert_eq!(decoded.size(), [2, 3, 16, 16]);
    assert!(bool::try_from(decoded.isfinite().all()).unwrap());
    let (again, _) = random_vae(&tiny_vae_config(), 1);
    assert!(decoded.equal(&again.decode(&mean)));
}

#[test]
fn vae_attention_stored_as_linear_gives_same_output() {
    let _guard = tch::no_grad_guard();
    let (vae, tensors) = random_vae(&tiny_vae_config(), 2);
    // Converted files store mid.attn_1.{q,k,v,proj_out} as [C, C] instead of [C, C, 1, 1].
    let linear: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let is_attn = k.contains("attn_1.") && k.ends_with(".weight") && !k.contains(".norm.");
            let v = if is_attn { v.squeeze_dim(-1).squeeze_dim(-1) } else { v };
            (k, v)
        })
        .collect();
    assert_eq!(linear["decoder.mid.attn_1.q.weight"].size(), [64, 64]);
    let src = MemorySource::new(linear);
    assert_eq!(VaeConfig::detect(&src, "").unwrap(), tiny_vae_config());
    let from_linear = Vae::new(&Weights::from_source(&src, Placement::cpu()), &tiny_vae_config()).unwrap();
    let z = randn(&[1, 4, 8, 8], 4);
    assert!(vae.decode(&z).equal(&from_linear.decode(&z)));
}

#[test]
fn vae_detect_on_written_tiny_model_gives_its_config() {
    let (_, tensors) = random_vae(&tiny_vae_config(), 3);
    let prefixed =
        tensors.iter().map(|(k, v)| (format!("first_stage_model.{k}"), v.shallow_clone())).collect();
    assert_eq!(
        VaeConfig::detect(&MemorySource::new(prefixed), "first_stage_model.").unwrap(),
        tiny_vae_config()
    );
    assert_eq!(VaeConfig::detect(&MemorySource::new(tensors), "").unwrap(), tiny_vae_config());
}

fn parameter_count(tensors: &HashMap<String, Tensor>) -> i64 {
    tensors.values().map(|t| t.numel() as i64).sum()
}

#[test]
fn unet_v1_5_random_build_has_sd15_parameter_count() {
    let _guard = tch::no_grad_guard();
    let (unet, tensors) = random_unet(&UnetConfig::v1_5(), 0);
    // 686 tensors, 859,520,964 parameters: the SD1.5 UNet (spec §2.1).
    assert_eq!(tensors.len(), 686);
    assert_eq!(parameter_count(&tensors), 859_520_964);
    // A small latent through the full-size graph: every level, 8 heads of 40..160 dims.
    let x = randn(&[1, 4, 8, 8], 10);
    let context = randn(&[1, 77, 768], 11);
    let out = unet.forward(&x, &Tensor::from_slice(&[999.0f32]), &context);
    assert_eq!(out.size(), [1, 4, 8, 8]);
    assert!(bool::try_from(out.isfinite().all()).unwrap());
}

#[test]
fn vae_sd_random_build_has_sd_vae_parameter_count() {
    let _guard = tch::no_grad_guard();
    let (vae, tensors) = random_vae(&VaeConfig::sd(), 0);
    assert_eq!(parameter_count(&tensors), 83_653_863);
    let decoded = vae.decode(&randn(&[1, 4, 4, 4], 12));
    assert_eq!(decoded.size(), [1, 3, 32, 32]);
}
