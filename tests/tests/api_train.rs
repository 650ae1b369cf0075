//! LoRA training over HTTP on the tiny checkpoint: a full run to kohya-format files that change
//! txt2img through `<lora:…>`, non-image rejection, cancel, and resuming after a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

fn daemon() -> TestDaemon {
    TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap()
}

/// Copies the fixture images to `<data-dir>/datasets/cube` (a kohya `4_ohwx cube` folder).
fn copy_dataset(d: &TestDaemon) -> PathBuf {
    let to = d.data_dir.path().join("datasets/cube/4_ohwx cube");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(fixture("train_images/4_ohwx cube")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    to
}

fn png_base64(seed: u8) -> String {
    use base64::Engine as _;
    let img = image::RgbImage::from_fn(40, 32, |x, y| {
        image::Rgb([seed.wrapping_mul(40), (x * 6) as u8, (y * 7) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A small, fast recipe: 64 px, rank 4, AdamW with a learning rate large enough to move pixels.
fn tiny_recipe(name: &str) -> Value {
    json!({
        "name": name,
        "base_checkpoint": "tiny-sd15",
        "resolution": 64,
        "network_rank": 4,
        "network_alpha": 4,
        "optimizer": "AdamW",
        "learning_rate": 0.005,
        "seed": 7,
        "instance_prompt": "ohwx cube",
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    for (k, v) in b.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

fn job(d: &TestDaemon, id: &str) -> Value {
    let a = d.get(&format!("/train/jobs/{id}"), &[]).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    a.json
}

fn wait_for(d: &TestDaemon, id: &str, seconds: u64, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(seconds);
    loop {
        let j = job(d, id);
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < until, "timed out; job is {j}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn metadata(path: &Path) -> serde_json::Map<String, Value> {
    daemon::catalog::safetensors_metadata(path)
}

fn txt2img(d: &TestDaemon, prompt: &str) -> String {
    let a = d
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": prompt, "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}),
        )
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    a.json["images"][0].as_str().unwrap().to_string()
}

#[test]
fn train_lora_tiny_run_writes_kohya_files_that_change_txt2img() {
    let d = daemon();
    copy_dataset(&d);
    let body = merge(
        tiny_recipe("cube"),
        json!({
            "dataset_dir": "datasets/cube",
            "batch_size": 4,
            "max_train_epochs": 2,
            "cache_latents_to_disk": true,
            "sample_prompts": "ohwx cube --w 64 --h 64 --s 2 --d 5 --l 5",
        }),
    );
    let a = d.post("/train/lora", &body).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    // 4 images × 4 repeats (folder name) in one 64² bucket, batch 4: 4 steps per epoch.
    assert_eq!(a.json["plan"]["repeats"], 4);
    assert_eq!(a.json["plan"]["steps_per_epoch"], 4);
    let plan = &a.json["plan"];
    assert_eq!((plan["epochs"].as_u64(), plan["total_steps"].as_u64()), (Some(2), Some(8)), "{plan}");
    assert_eq!((plan["num_train_images"].as_u64(), plan["num_reg_images"].as_u64()), (Some(16), Some(0)));
    // Every 10% of 2 epochs rounds to every epoch; folder repeats count as given.
    assert_eq!(
        (plan["save_every_n_epochs"].as_u64(), plan["sample_every_n_epochs"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (plan["repeats_planned"].as_bool(), plan["epochs_planned"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(plan["notes"], json!([]));
    assert_eq!((a.json["total_steps"].as_u64(), a.json["total_epochs"].as_u64()), (Some(8), Some(2)));
    let id = a.json["id"].as_str().unwrap().to_string();

    let j = wait_for(&d, &id, 60, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!((j["step"].as_u64(), j["epoch"].as_u64()), (Some(8), Some(2)));
    assert!(j["loss"].as_f64().is_some_and(f64::is_finite), "{j}");
    assert_eq!(
        j["outputs"],
        json!(["cube-000001.safetensors", "cube-000002.safetensors", "cube.safetensors"])
    );

    let lora_dir = d.data_dir.path().join("models/Lora");
    for file in ["cube-000001.safetensors", "cube-000002.safetensors", "cube.safetensors"] {
        let m = metadata(&lora_dir.join(file));
        assert_eq!(m.get("ss_output_name"), Some(&json!("cube")), "{file}");
        assert_eq!(m.get("ss_network_dim"), Some(&json!("4")), "{file}");
        assert_eq!(m.get("ss_sd_model_name"), Some(&json!("tiny-sd15.safetensors")), "{file}");
        assert!(m.get("sshs_model_hash").and_then(Value::as_str).is_some_and(|h| h.len() == 64), "{file}");
    }
    assert_eq!(metadata(&lora_dir.join("cube.safetensors")).get("ss_steps"), Some(&json!("8")));

    // Samples after each epoch, TensorBoard scalars for every step.
    let samples = j["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{j}");
    let job_dir = d.data_dir.path().join("train").join(&id);
    for s in samples {
        let img = image::open(job_dir.join(s.as_str().unwrap())).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    let events = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .expect("an event file");
    let scalars = daemon::train::tensorboard::read_scalars(&events).unwrap();
    let count = |tag: &str| scalars.iter().filter(|(t, _, _)| t == tag).count();
    assert_eq!((count("loss/current"), count("loss/average"), count("lr/unet")), (8, 8, 8));
    assert_eq!((count("lr/textencoder"), count("loss/epoch")), (8, 2));
    let cached = std::fs::read_dir(job_dir.join("latents")).map(|d| d.count()).unwrap_or(0);
    assert!(cached >= 4, "{cached} cached latents");
    let job_json: Value = serde_json::from_slice(&std::fs::read(job_dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(job_json["state"], "done", "{job_json}");

    // The LoRA is listed and applies at once.
    let loras = d.get_json("/sdapi/v1/loras").unwrap();
    assert!(loras.as_array().unwrap().iter().any(|l| l["name"] == "cube"), "{loras}");
    let plain = txt2img(&d, "ohwx cube");
    let with_lora = txt2img(&d, "ohwx cube <lora:cube:1>");
    assert_ne!(plain, with_lora, "the trained LoRA did not change the image");
    assert_eq!(plain, txt2img(&d, "ohwx cube"), "the LoRA leaked into a later generation");
}

#[test]
fn train_lora_bf16_and_fp16_mixed_precision_with_gradient_checkpointing_train_fp32_loras() {
    let d = daemon();
    copy_dataset(&d);
    let refused =
        d.post("/train/lora", &merge(tiny_recipe("half"), json!({"mixed_precision": "fp8"}))).unwrap();
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(refused.text.contains("mixed_precision"), "{}", refused.text);

    let plain = txt2img(&d, "ohwx cube");
    for precision in ["bf16", "fp16"] {
        let name = format!("cube{precision}");
        let body = merge(
            tiny_recipe(&name),
            json!({
                "dataset_dir": "datasets/cube",
                "batch_size": 4,
                "max_train_epochs": 1,
                "mixed_precision": precision,
                "gradient_checkpointing": true,
                "sample_prompts": "ohwx cube --w 64 --h 64 --s 2 --d 5",
            }),
        );
        let a = d.post("/train/lora", &body).unwrap();
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json["recipe"]["mixed_precision"], precision, "{}", a.text);
        let id = a.json["id"].as_str().unwrap().to_string();
        let j = wait_for(&d, &id, 120, |j| j["state"] != "queued" && j["state"] != "running");
        assert_eq!(j["state"], "done", "{j}");
        assert!(j["loss"].as_f64().is_some_and(f64::is_finite), "{j}");
        // Samples are drawn with the half-precision model copy and the attached network.
        let samples = j["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 1, "{j}");
        let sample = d.data_dir.path().join("train").join(&id).join(samples[0].as_str().unwrap());
        let img = image::open(sample).unwrap().to_rgb8();
        assert_eq!(img.width(), 64);
        let first = img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| p != first), "{precision}: the sample is one flat colour");

        let file = d.data_dir.path().join(format!("models/Lora/{name}.safetensors"));
        let m = metadata(&file);
        assert_eq!(m.get("ss_mixed_precision"), Some(&json!(precision)));
        assert_eq!(m.get("ss_gradient_checkpointing"), Some(&json!("True")));
        // The LoRA parameters trained in fp32 and are saved as such (save precision float).
        let bytes = std::fs::read(&file).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        let dtypes: std::collections::BTreeSet<&str> =
            header.values().filter_map(|t| t.get("dtype").and_then(Value::as_str)).collect();
        assert_eq!(dtypes, std::collections::BTreeSet::from(["F32"]), "{precision}: {header:?}");
        let with_lora = txt2img(&d, &format!("ohwx cube <lora:{name}:1>"));
        assert_ne!(plain, with_lora, "the {precision}-trained LoRA changes the image");
    }
}

#[test]
fn train_lora_non_images_get_one_422_listing_each() {
    let d = daemon();
    let body = merge(
        tiny_recipe("bad"),
        json!({"images": [{"image": png_base64(1)}, {"image": "aGVsbG8gd29ybGQ="}, {"image": "%%%"}]}),
    );
    let a = d.post("/train/lora", &body).unwrap();
    assert_eq!(a.status, 422, "{}", a.text);
    let mut locs: Vec<String> = a.json["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["loc"][1].as_str().unwrap().to_string())
        .collect();
    locs.sort();
    assert_eq!(locs, vec!["images[1]", "images[2]"], "{}", a.text);

    let dir = copy_dataset(&d);
    std::fs::write(dir.join("notes.pdf"), b"%PDF-1.4").unwrap();
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    let a =
        d.post("/train/lora", &merge(tiny_recipe("bad"), json!({"dataset_dir": "datasets/cube"}))).unwrap();
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(a.text.contains("notes.pdf") && a.text.contains("broken.png"), "{}", a.text);

    let a = d.post("/train/lora", &merge(tiny_recipe("bad"), json!({"dataset_dir": "../etc"}))).unwrap();
    assert_eq!((a.status, a.json["detail"][0]["loc"][1].as_str()), (422, Some("dataset_dir")));
    let a = d
        .post("/train/lora", &merge(tiny_recipe("bad"), json!({"images": [], "lr_scheduler": "step"})))
        .unwrap();
    assert_eq!((a.status, a.json["detail"][0]["loc"][1].as_str()), (422, Some("lr_scheduler")));
    assert!(d.get_json("/train/jobs").unwrap()["jobs"].as_array().unwrap().is_empty());
}

#[test]
fn train_jobs_unknown_id_is_404_and_cancel_stops_a_run() {
    let d = daemon();
    let a = d.get("/train/jobs/nope", &[]).unwrap();
    assert_eq!((a.status, a.json["error"].as_str()), (404, Some("HTTPException")));
    let a = d.post("/train/jobs/nope/cancel", &json!({})).unwrap();
    assert_eq!(a.status, 404);

    let images: Vec<Value> = (0..2).map(|i| json!({"image": png_base64(i)})).collect();
    let body = merge(
        tiny_recipe("long"),
        json!({"images": images, "batch_size": 2, "repeats": 1, "max_train_epochs": 10000, "save_every_n_epochs": 1000}),
    );
    let a = d.post("/train/lora", &body).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_string();
    let j = wait_for(&d, &id, 30, |j| j["step"].as_u64().is_some_and(|s| s >= 1));
    assert!(j["eta_seconds"].as_f64().is_some_and(|s| s > 0.0), "{j}");
    assert!(j["lr"].as_f64().is_some_and(|lr| lr > 0.0), "{j}");
    // While a slice runs, /progress shows the training.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let p = d.get_json("/sdapi/v1/progress").unwrap();
        if p["state"]["job"] == "train" {
            assert_eq!(p["state"]["sampling_steps"].as_u64(), Some(10000));
            break;
        }
        assert!(Instant::now() < until, "progress never showed the training: {p}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Generation runs between two slices instead of waiting for the whole run.
    let started = Instant::now();
    txt2img(&d, "a cube");
    assert!(started.elapsed() < Duration::from_secs(20), "txt2img waited {:?}", started.elapsed());
    assert_eq!(job(&d, &id)["state"], "running");

    // A job per base with `base_checkpoints`; queued behind the running one, it cancels at once.
    let a = d
        .post(
            "/train/lora",
            &merge(body.clone(), json!({"name": "multi", "base_checkpoints": ["tiny-sd15"]})),
        )
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let queued = &a.json["jobs"][0];
    assert_eq!(
        (queued["name"].as_str(), queued["state"].as_str()),
        (Some("multi_tiny-sd15"), Some("queued"))
    );
    let a = d.post(&format!("/train/jobs/{}/cancel", queued["id"].as_str().unwrap()), &json!({})).unwrap();
    assert_eq!(a.json["state"], "cancelled", "{}", a.text);

    let a = d.post(&format!("/train/jobs/{id}/cancel"), &json!({})).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let j = wait_for(&d, &id, 30, |j| j["state"] != "running" && j["state"] != "queued");
    assert_eq!(j["state"], "cancelled");
    assert!(j["step"].as_u64().unwrap() < 10000);
    assert!(!d.data_dir.path().join("models/Lora/long.safetensors").exists());
    let jobs = d.get_json("/train/jobs").unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2, "{jobs}");
}

#[test]
fn train_job_resumes_after_a_restart_from_its_last_save() {
    let d = daemon();
    let images: Vec<Value> =
        (0..2).map(|i| json!({"image": png_base64(i), "caption": "ohwx cube"})).collect();
    // One step per epoch and a save at each: stopping soon after the second save leaves most of
    // the run to the next daemon.
    let body = merge(
        tiny_recipe("resumed"),
        json!({"images": images, "batch_size": 2, "repeats": 1, "max_train_epochs": 16}),
    );
    let a = d.post("/train/lora", &body).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_string();
    wait_for(&d, &id, 30, |j| j["outputs"].as_array().is_some_and(|o| o.len() >= 2));
    let data_dir = d.stop().unwrap();
    let job_dir = data_dir.path().join("train").join(&id);
    let stored: Value = serde_json::from_slice(&std::fs::read(job_dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(stored["state"], "running", "the run ended before the daemon stopped: {stored}");
    assert!(job_dir.join("state.safetensors").is_file());

    let d = TestDaemon::start_in(data_dir, &[]).unwrap();
    let j = wait_for(&d, &id, 60, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(j["state"], "done", "{j}");
    let resumed = j["resumed_from"].as_u64().expect("resumed_from");
    assert!((2..16).contains(&resumed), "{j}");
    assert_eq!(j["step"].as_u64(), Some(16));
    let lora_dir = d.data_dir.path().join("models/Lora");
    assert!(lora_dir.join("resumed-000001.safetensors").is_file());
    assert!(lora_dir.join("resumed-000016.safetensors").is_file());
    assert_eq!(metadata(&lora_dir.join("resumed.safetensors")).get("ss_steps"), Some(&json!("16")));
}

#[test]
fn train_job_with_an_unloadable_base_fails_with_its_error() {
    let d = daemon();
    let broken = d.data_dir.path().join("models/Stable-diffusion/broken.safetensors");
    std::fs::write(&broken, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}        ").unwrap();
    assert_eq!(d.post("/sdapi/v1/refresh-checkpoints", &json!({})).unwrap().status, 200);
    let images: Vec<Value> = (0..2).map(|i| json!({"image": png_base64(i)})).collect();
    let body = merge(
        tiny_recipe("broken"),
        json!({"images": images, "base_checkpoint": "broken", "batch_size": 2, "max_train_epochs": 1}),
    );
    let a = d.post("/train/lora", &body).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_string();
    let j = wait_for(&d, &id, 30, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{j}");
    // The engine carries on.
    txt2img(&d, "a cube");
}
