//! LoRA / LyCORIS at inference: merged weights and the merged UNet against
//! reference/gen_lora_fixtures.py, exact restoration, the set cache, name resolution, and
//! `<lora:name:w>` through HTTP txt2img.

use std::collections::HashMap;

use models::checkpoint::StableDiffusion;
use models::device::Placement;
use models::lora::names::unet_ldm_to_diffusers;
use models::lora::{find_network, shorthash, LoraSpec};
use models::weights::names;
use serde_json::json;
use tch::{Device, Kind, Tensor};
use tests::{fixture, golden, max_rel_err, TestDaemon};

fn load() -> StableDiffusion {
    StableDiffusion::load(
        &fixture("tiny/tiny-sd15.safetensors"),
        Placement { device: Device::Cpu, kind: Kind::Float },
    )
    .unwrap()
}

fn spec(name: &str, te: f64, unet: f64) -> LoraSpec {
    LoraSpec { path: fixture(&format!("lora/{name}.safetensors")), te_multiplier: te, unet_multiplier: unet }
}

fn snapshot(sd: &StableDiffusion) -> HashMap<String, Tensor> {
    sd.params.iter().map(|(k, v)| (k.clone(), v.copy())).collect()
}

/// Every golden `network/<weight name>` against the model's weight after merging `network`.
fn check_weights(sd: &StableDiffusion, network: &str) {
    let g = golden("lora.safetensors");
    let prefix = format!("{network}/");
    let mut checked = 0;
    for (key, expected) in &g {
        let Some(name) = key.strip_prefix(&prefix) else { continue };
        if name == "unet_out" {
            continue;
        }
        let ours = sd.params.get(name).unwrap_or_else(|| panic!("no weight {name}")).reshape(expected.size());
        let err = max_rel_err(&ours, expected);
        assert!(err < 1e-6, "{network} {name}: relative error {err}");
        checked += 1;
    }
    assert!(checked >= 2, "{network}: only {checked} golden weights");
}

#[test]
fn lora_kohya_merge_matches_reference_weights_and_unet() {
    let sd = load();
    assert!(sd.apply_loras(&[spec("tiny_lora", 0.5, 0.8)]).unwrap());
    check_weights(&sd, "tiny_lora");
    let g = golden("unet.safetensors");
    let reference = golden("lora.safetensors");
    let _guard = tch::no_grad_guard();
    let out = sd.unet.forward(&g["x"], &g["t"], &g["context"]);
    let err = max_rel_err(&out, &reference["tiny_lora/unet_out"]);
    assert!(err < 1e-4, "merged unet: relative error {err}");
    assert!(max_rel_err(&out, &g["out"]) > 1e-3, "the LoRA must change the UNet's output");
}

#[test]
fn lora_loha_merge_matches_reference_weights() {
    let sd = load();
    sd.apply_loras(&[spec("tiny_loha", 1.0, 1.0)]).unwrap();
    check_weights(&sd, "tiny_loha");
}

#[test]
fn lora_lokr_ia3_dora_merge_matches_reference_weights() {
    let sd = load();
    sd.apply_loras(&[spec("tiny_lyco", 1.0, 1.0)]).unwrap();
    check_weights(&sd, "tiny_lyco");
}

#[test]
fn lora_restore_after_any_set_gives_original_weights_bit_exactly() {
    let sd = load();
    let original = snapshot(&sd);
    sd.apply_loras(&[spec("tiny_lora", 1.0, 1.0), spec("tiny_loha", 0.7, 0.3)]).unwrap();
    let changed = sd.lora.lock().unwrap().changed_weights();
    assert!(changed >= 14, "only {changed} weights changed");
    // A different set restores first: no rounding carried over from the first set.
    sd.apply_loras(&[spec("tiny_lyco", 1.0, 1.0)]).unwrap();
    assert!(sd.apply_loras(&[]).unwrap());
    assert_eq!(sd.lora.lock().unwrap().changed_weights(), 0);
    for (name, t) in &original {
        assert!(sd.params[name].equal(t), "{name} not restored exactly");
    }
}

#[test]
fn lora_same_set_applied_twice_changes_nothing() {
    let sd = load();
    let set = [spec("tiny_lora", 0.5, 0.8)];
    assert!(sd.apply_loras(&set).unwrap());
    let merged = snapshot(&sd);
    assert!(!sd.apply_loras(&set).unwrap(), "second apply must be a cache hit");
    for (name, t) in &merged {
        assert!(sd.params[name].equal(t), "{name} changed on re-apply");
    }
    // Another multiplier is another set.
    assert!(sd.apply_loras(&[spec("tiny_lora", 0.5, 0.7)]).unwrap());
}

#[test]
fn lora_unet_name_inverse_agrees_with_loader_mapping() {
    let sd = load();
    let r = sd.config.unet.num_res_blocks as usize;
    let mut diffusers = Vec::new();
    let mut expected = HashMap::new();
    for name in sd.params.keys() {
        let Some(ldm) = name.strip_prefix(names::UNET) else { continue };
        let module = ldm.rsplit_once('.').unwrap().0;
        let d = unet_ldm_to_diffusers(module, r).unwrap_or_else(|| panic!("no diffusers name for {ldm}"));
        let full = format!("{d}.{}", ldm.rsplit_once('.').unwrap().1);
        expected.insert(ldm.to_string(), full.clone());
        diffusers.push(full);
    }
    assert!(expected.len() > 100);
    let forward = names::unet_diffusers_to_ldm(&diffusers);
    for (ldm, d) in &expected {
        assert_eq!(forward.get(ldm), Some(d), "{ldm}");
    }
}

#[test]
fn lora_find_network_and_shorthash_follow_a1111() {
    let dir = fixture("lora");
    assert_eq!(find_network(&dir, "tiny_lora"), Some(dir.join("tiny_lora.safetensors")));
    assert_eq!(find_network(&dir, "missing"), None);
    let bytes = std::fs::read(dir.join("tiny_lora.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    use sha2::Digest;
    let expected = hex::encode(sha2::Sha256::digest(&bytes[8 + n..]));
    assert_eq!(shorthash(&dir.join("tiny_lora.safetensors")).unwrap(), expected[..12]);
}

/// The decoded pixels of the first image (the PNG itself carries the prompt) and the infotext.
fn txt2img(d: &TestDaemon, prompt: &str) -> (Vec<u8>, String) {
    let answer = d
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": prompt, "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    use base64::Engine as _;
    let png =
        base64::engine::general_purpose::STANDARD.decode(answer.json["images"][0].as_str().unwrap()).unwrap();
    let image = image::load_from_memory(&png).unwrap().to_rgb8().into_raw();
    let info = answer.json["info"].as_str().unwrap().to_string();
    (image, info)
}

#[test]
fn lora_tag_over_http_changes_image_and_restores_after() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let lora_dir = d.data_dir.path().join("models/Lora");
    std::fs::create_dir_all(&lora_dir).unwrap();
    std::fs::copy(fixture("lora/tiny_lora.safetensors"), lora_dir.join("tiny_lora.safetensors")).unwrap();
    let (plain, plain_info) = txt2img(&d, "a cat");
    assert!(!plain_info.contains("Lora hashes"));
    let (with_lora, info) = txt2img(&d, "a cat <lora:tiny_lora:0.8>");
    assert_ne!(with_lora, plain, "the LoRA must change the image");
    let hash = shorthash(&fixture("lora/tiny_lora.safetensors")).unwrap();
    assert!(info.contains(&format!(r#"Lora hashes: \"tiny_lora: {hash}\""#)), "{info}");
    let (again, _) = txt2img(&d, "a cat <lora:tiny_lora:0.8>");
    assert_eq!(again, with_lora, "the same set gives the same image");
    // An unknown name is skipped (A1111 warns and generates): the image is the plain one.
    let (missing, _) = txt2img(&d, "a cat <lora:missing:1>");
    assert_eq!(missing, plain, "unknown LoRA must be ignored and the previous set removed");
}
