//! One model, several file layouts: an A1111 single file, a legacy `.ckpt`, a diffusers folder,
//! and re-saved fp32 / bf16 single files all load to the same tensors; broken files are errors
//! that name the tensor and the file.

use std::collections::HashMap;

use models::checkpoint::{self, CheckpointConfig, StableDiffusion};
use models::device::Placement;
use models::weights::detect::ModelFamily;
use models::weights::safetensors_file::write_atomic;
use models::weights::{names, TensorSource};
use models::Error;
use tch::{Kind, Tensor};
use tests::fixture;

/// Every canonical model tensor (UNet, VAE, CLIP weights; not the extra buffers), as fp32.
fn model_tensors(src: &dyn TensorSource) -> HashMap<String, Tensor> {
    src.names()
        .into_iter()
        .filter(|n| {
            [names::UNET, names::VAE, names::CLIP].iter().any(|p| n.starts_with(p))
                && !n.ends_with("position_ids")
        })
        .map(|n| {
            let t = src.read(&n).unwrap().to_kind(Kind::Float);
            (n, t)
        })
        .collect()
}

fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{what}: tensor names differ");
    for (name, t) in a {
        let u = &b[name];
        // Linear-vs-1×1-conv storage of the VAE attention differs only in shape.
        assert_eq!(t.numel(), u.numel(), "{what}: {name}");
        assert!(t.reshape([-1]).equal(&u.reshape([-1])), "{what}: {name} differs");
    }
}

#[test]
fn layouts_single_file_ckpt_and_diffusers_give_identical_tensors() {
    let single = checkpoint::open(&fixture("tiny/tiny-sd15.safetensors")).unwrap();
    let ckpt = checkpoint::open(&fixture("tiny/tiny-sd15.ckpt")).unwrap();
    let folder = checkpoint::open(&fixture("tiny/tiny-sd15-diffusers")).unwrap();
    let reference = model_tensors(single.as_ref());
    assert!(reference.len() > 300, "only {} tensors", reference.len());
    assert_same(&reference, &model_tensors(ckpt.as_ref()), ".ckpt");
    assert_same(&reference, &model_tensors(folder.as_ref()), "diffusers folder");
    for src in [&single, &ckpt, &folder] {
        assert_eq!(
            CheckpointConfig::detect(src.as_ref()).unwrap(),
            CheckpointConfig::detect(single.as_ref()).unwrap()
        );
    }
}

#[test]
fn detect_tiny_checkpoint_reads_architecture_from_shapes() {
    let single = checkpoint::open(&fixture("tiny/tiny-sd15.safetensors")).unwrap();
    let c = CheckpointConfig::detect(single.as_ref()).unwrap();
    assert_eq!(c.family, ModelFamily::Sd1);
    assert_eq!(c.unet.in_channels, 4);
    assert_eq!(c.unet.model_channels, 32);
    assert_eq!(c.unet.context_dim, 32);
    assert_eq!(c.vae.ch, 32);
    assert_eq!(c.clip.layers, 3);
    let inpaint = checkpoint::open(&fixture("tiny/tiny-sd15-inpainting.safetensors")).unwrap();
    assert_eq!(models::weights::detect::detect_family(inpaint.as_ref()).unwrap(), ModelFamily::Sd1Inpainting);
}

/// Rewrites the tiny single file with every float tensor cast to `kind`, plus `extra` tensors.
fn resave(
    kind: Kind,
    dir: &std::path::Path,
    edit: impl Fn(&mut Vec<(String, Tensor)>),
) -> std::path::PathBuf {
    let src = models::weights::safetensors_file::SafetensorsFile::open(fixture("tiny/tiny-sd15.safetensors"))
        .unwrap();
    let mut tensors: Vec<(String, Tensor)> = src
        .names()
        .into_iter()
        .map(|n| {
            let t = src.read(&n).unwrap();
            let t = if t.is_floating_point() { t.to_kind(kind) } else { t };
            (n, t)
        })
        .collect();
    edit(&mut tensors);
    let path = dir.join(format!("resaved-{kind:?}.safetensors"));
    write_atomic(&path, &tensors, None).unwrap();
    path
}

#[test]
fn dtypes_fp32_bf16_and_float_position_ids_load() {
    let dir = tempfile::tempdir().unwrap();
    let fp16 = StableDiffusion::load(&fixture("tiny/tiny-sd15.safetensors"), Placement::cpu()).unwrap();
    // fp32 copy of fp16 values: identical model.
    let fp32 = resave(Kind::Float, dir.path(), |t| {
        // Merged checkpoints often carry position_ids as floats; they must be tolerated.
        for (name, tensor) in t.iter_mut() {
            if name.ends_with("position_ids") {
                *tensor = tensor.to_kind(Kind::Float) + 0.4;
            }
        }
    });
    let m32 = StableDiffusion::load(&fp32, Placement::cpu()).unwrap();
    let ids = Tensor::from_slice(&[49406i64, 320, 1125, 539, 320, 2368, 49407]).unsqueeze(0);
    let _guard = tch::no_grad_guard();
    assert!(fp16.clip.encode(&ids, 1).equal(&m32.clip.encode(&ids, 1)));
    // bf16 loads and computes in fp32 on CPU.
    let bf16 = resave(Kind::BFloat16, dir.path(), |_| {});
    let mbf = StableDiffusion::load(&bf16, Placement::cpu()).unwrap();
    let out = mbf.clip.encode(&ids, 2);
    assert_eq!(out.kind(), Kind::Float);
    assert!(out.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn load_missing_tensor_names_tensor_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = "model.diffusion_model.output_blocks.4.1.proj_out.weight";
    let path = resave(Kind::Half, dir.path(), |t| t.retain(|(n, _)| n != missing));
    let err = StableDiffusion::load(&path, Placement::cpu()).err().expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensor { .. }), "{msg}");
    assert!(msg.contains(missing) && msg.contains("resaved-Half.safetensors"), "{msg}");
}

#[test]
fn load_misshapen_tensor_names_tensor_file_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let name = "first_stage_model.decoder.conv_in.weight";
    let path = resave(Kind::Half, dir.path(), |t| {
        for (n, tensor) in t.iter_mut() {
            if n == name {
                *tensor = tensor.narrow(0, 0, 16).contiguous();
            }
        }
    });
    let err = StableDiffusion::load(&path, Placement::cpu()).err().expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains(name) && msg.contains("resaved-Half.safetensors"), "{msg}");
}

#[test]
fn open_rejects_non_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.safetensors");
    std::fs::write(&path, b"this is not a model").unwrap();
    let err = checkpoint::open(&path).err().expect("must fail");
    assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
}

#[test]
fn standalone_vae_files_in_ldm_and_diffusers_layouts_decode_like_reference() {
    use models::checkpoint::load_vae;
    let g = tests::golden("vae.safetensors");
    let _guard = tch::no_grad_guard();
    // diffusers layout (as sdxl-vae-fp16-fix and friends ship).
    let diffusers = load_vae(
        &fixture("tiny/tiny-sd15-diffusers/vae/diffusion_pytorch_model.safetensors"),
        Placement::cpu(),
    )
    .unwrap();
    let err = tests::max_rel_err(&diffusers.decode(&g["latent"]), &g["decoded"]);
    assert!(err <= 1e-5, "diffusers-layout VAE: {err}");
    // LDM layout without prefix (as vae-ft-mse-840000-ema-pruned ships), with training leftovers.
    let dir = tempfile::tempdir().unwrap();
    let single =
        models::weights::safetensors_file::SafetensorsFile::open(fixture("tiny/tiny-sd15.safetensors"))
            .unwrap();
    let mut tensors: Vec<(String, Tensor)> = single
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix(names::VAE).map(|s| (s.to_string(), single.read(&n).unwrap())))
        .collect();
    tensors.push(("model_ema.decay".into(), Tensor::from(0.9999f32)));
    tensors.push(("loss.logvar".into(), Tensor::from(0.0f32)));
    let path = dir.path().join("standalone.vae.safetensors");
    write_atomic(&path, &tensors, None).unwrap();
    let ldm = load_vae(&path, Placement::cpu()).unwrap();
    let err = tests::max_rel_err(&ldm.decode(&g["latent"]), &g["decoded"]);
    assert!(err <= 1e-5, "LDM-layout VAE: {err}");
    let (mean, _) = ldm.encode(&g["image"]);
    assert!(tests::max_rel_err(&mean, &g["mean"]) <= 1e-5);
}
