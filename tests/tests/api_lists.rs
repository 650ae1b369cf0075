//! The list routes: checkpoints (titles, hashes, refresh), LoRAs with metadata, VAEs,
//! embeddings sorted by fit, prompt styles, and the fixed sampler / scheduler / upscaler tables.

use std::path::Path;

use serde_json::{json, Value};
use tests::{fixture, short_hash, TestDaemon};

/// Writes a safetensors file of zero-filled F32 tensors, with optional `__metadata__`.
fn write_safetensors(path: &Path, tensors: &[(&str, &[i64])], metadata: Option<Value>) {
    let mut header = serde_json::Map::new();
    let mut offset = 0i64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<i64>() * 4;
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), m);
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.resize(out.len() + offset as usize, 0);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn sd_models_hash_what_was_loaded_and_refresh_finds_new_files() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors"), fixture("tiny/tiny-sd15.ckpt")], &[])
        .unwrap();
    let models = d.get_json("/sdapi/v1/sd-models").unwrap();
    let list = models.as_array().unwrap();
    assert_eq!(list.len(), 2);
    // Sorted by name: the .ckpt comes first and was loaded at start, so only it is hashed yet.
    let ckpt_hash = short_hash(&fixture("tiny/tiny-sd15.ckpt"));
    assert_eq!(list[0]["title"], format!("tiny-sd15.ckpt [{ckpt_hash}]").as_str());
    assert_eq!(list[0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(list[1]["title"], "tiny-sd15.safetensors");
    assert_eq!((list[1]["hash"].clone(), list[1]["sha256"].clone()), (Value::Null, Value::Null));
    assert!(list[1]["filename"].as_str().unwrap().ends_with("models/Stable-diffusion/tiny-sd15.safetensors"));
    assert_eq!(list[1]["config"], Value::Null);

    let sub = d.data_dir.path().join("models/Stable-diffusion/SD1");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(fixture("tiny/tiny-sd15.safetensors"), sub.join("copy.safetensors")).unwrap();
    assert_eq!(d.post("/sdapi/v1/refresh-checkpoints", &json!({})).unwrap().json, Value::Null);
    let models = d.get_json("/sdapi/v1/sd-models").unwrap();
    let added = models.as_array().unwrap().iter().find(|m| m["title"] == "SD1/copy.safetensors").unwrap();
    assert_eq!(added["model_name"], "SD1_copy");
}

#[test]
fn loras_vaes_and_embeddings_are_listed_after_refresh() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let root = d.data_dir.path();
    write_safetensors(
        &root.join("models/Lora/style/detail.safetensors"),
        &[("lora_unet_x.lora_up.weight", &[4, 1])],
        Some(
            json!({"ss_output_name": "add_detail", "ss_network_dim": "4", "ss_tag_frequency": "{\"a\": {\"b\": 1}}"}),
        ),
    );
    write_safetensors(
        &root.join("models/VAE/better.vae.safetensors"),
        &[("decoder.conv_in.weight", &[1])],
        None,
    );
    // The tiny checkpoint's text encoder is 32 wide: a 32-wide embedding fits, a 768-wide one
    // (SD1.5) does not.
    write_safetensors(&root.join("embeddings/fits.safetensors"), &[("emb_params", &[2, 32])], None);
    write_safetensors(&root.join("embeddings/sd15.safetensors"), &[("emb_params", &[3, 768])], None);

    for route in ["refresh-loras", "refresh-vae", "refresh-embeddings"] {
        let answer = d.post(&format!("/sdapi/v1/{route}"), &json!({})).unwrap();
        assert_eq!((answer.status, &answer.json), (200, &Value::Null), "{route}");
    }
    let loras = d.get_json("/sdapi/v1/loras").unwrap();
    assert_eq!(loras.as_array().unwrap().len(), 1);
    assert_eq!(loras[0]["name"], "detail");
    assert_eq!(loras[0]["alias"], "add_detail");
    assert_eq!(loras[0]["metadata"]["ss_network_dim"], "4");
    assert_eq!(
        loras[0]["metadata"]["ss_tag_frequency"],
        json!({"a": {"b": 1}}),
        "JSON-valued metadata is decoded"
    );
    assert!(loras[0]["path"].as_str().unwrap().ends_with("models/Lora/style/detail.safetensors"));

    let vaes = d.get_json("/sdapi/v1/sd-vae").unwrap();
    assert_eq!(vaes[0]["model_name"], "better.vae.safetensors");

    let embeddings = d.get_json("/sdapi/v1/embeddings").unwrap();
    assert_eq!(
        embeddings["loaded"]["fits"],
        json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null, "shape": 32, "vectors": 2})
    );
    assert_eq!(embeddings["skipped"]["sd15"]["shape"], 768);
    assert_eq!(embeddings["skipped"]["sd15"]["vectors"], 3);
}

#[test]
fn fixed_lists_match_a1111_tables() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    std::fs::write(
        d.data_dir.path().join("styles.csv"),
        "name,prompt,negative_prompt\nnoir,\"{prompt}, noir\",color\n",
    )
    .unwrap();
    d.post("/sdapi/v1/refresh-embeddings", &json!({})).unwrap();

    let samplers = d.get_json("/sdapi/v1/samplers").unwrap();
    let samplers = samplers.as_array().unwrap();
    assert_eq!(samplers.len(), 20);
    assert_eq!(
        samplers[0],
        json!({"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}})
    );
    let euler_a = samplers.iter().find(|s| s["name"] == "Euler a").unwrap();
    assert_eq!(euler_a["options"], json!({"uses_ensd": "True"}));

    let schedulers = d.get_json("/sdapi/v1/schedulers").unwrap();
    assert_eq!(schedulers.as_array().unwrap().len(), 12);
    assert_eq!(
        schedulers[2],
        json!({"name": "karras", "label": "Karras", "aliases": null, "default_rho": 7.0, "need_inner_model": false})
    );
    assert_eq!(schedulers[5]["aliases"], json!(["SGMUniform"]));

    let upscalers = d.get_json("/sdapi/v1/upscalers").unwrap();
    assert_eq!(
        upscalers[0],
        json!({"name": "None", "model_name": null, "model_path": null, "model_url": null, "scale": 4.0})
    );
    let modes = d.get_json("/sdapi/v1/latent-upscale-modes").unwrap();
    assert_eq!(modes.as_array().unwrap().len(), 6);
    assert_eq!(modes[0], json!({"name": "Latent"}));

    for empty in ["hypernetworks", "face-restorers", "realesrgan-models", "extensions"] {
        assert_eq!(d.get_json(&format!("/sdapi/v1/{empty}")).unwrap(), json!([]), "{empty}");
    }
    assert_eq!(
        d.get_json("/sdapi/v1/prompt-styles").unwrap(),
        json!([{"name": "noir", "prompt": "{prompt}, noir", "negative_prompt": "color"}])
    );
    let scripts = d.get_json("/sdapi/v1/scripts").unwrap();
    assert_eq!(
        scripts["txt2img"],
        json!(["x/y/z plot", "refiner", "sampler", "seed", "dynamic prompts v2.17.1"])
    );
    assert!(!scripts["txt2img"].as_array().unwrap().contains(&json!("controlnet m2m")));
    let info = d.get_json("/sdapi/v1/script-info").unwrap();
    assert_eq!(info.as_array().unwrap().len(), 10);
    assert_eq!(info[0], json!({"name": "x/y/z plot", "is_alwayson": false, "is_img2img": false, "args": []}));
    assert_eq!(info[1], json!({"name": "refiner", "is_alwayson": true, "is_img2img": false, "args": []}));

    let flags = d.get_json("/sdapi/v1/cmd-flags").unwrap();
    assert_eq!((flags["api"].clone(), flags["port"].clone()), (json!(true), json!(7860)));
    let memory = d.get_json("/sdapi/v1/memory").unwrap();
    assert!(memory["ram"]["total"].as_f64().unwrap() > memory["ram"]["used"].as_f64().unwrap());
    assert_eq!(memory["cuda"], json!({"error": "unavailable"}));
}

#[test]
fn ckpt_flag_outside_the_folder_is_listed_and_selected() {
    let outside = fixture("tiny/tiny-sd15.safetensors");
    let d =
        TestDaemon::start(&[fixture("tiny/tiny-sd15.ckpt")], &["--ckpt", outside.to_str().unwrap()]).unwrap();
    let models = d.get_json("/sdapi/v1/sd-models").unwrap();
    let titles: Vec<&str> = models.as_array().unwrap().iter().map(|m| m["title"].as_str().unwrap()).collect();
    let expected = format!("tiny-sd15.safetensors [{}]", short_hash(&outside));
    assert_eq!(titles, vec!["tiny-sd15.ckpt", expected.as_str()]);
    assert_eq!(d.get_json("/sdapi/v1/options").unwrap()["sd_model_checkpoint"], expected.as_str());
}
