//! `/sdapi/v1/options`: the GET object, posting it back whole (Open WebUI), persistence across a
//! restart, checkpoint switching by every alias, and A1111's errors for unknown names.

use serde_json::{json, Value};
use sha2::Digest as _;
use tests::{fixture, short_hash, TestDaemon};

fn two_checkpoints() -> TestDaemon {
    TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors"), fixture("tiny/tiny-sd15.ckpt")], &[]).unwrap()
}

fn titles(d: &TestDaemon) -> Vec<String> {
    let models = d.get_json("/sdapi/v1/sd-models").unwrap();
    models.as_array().unwrap().iter().map(|m| m["title"].as_str().unwrap().to_string()).collect()
}

#[test]
fn options_get_posted_back_whole_is_accepted_and_changes_nothing() {
    let d = two_checkpoints();
    let options = d.get_json("/sdapi/v1/options").unwrap();
    let current = options["sd_model_checkpoint"].as_str().unwrap();
    assert!(titles(&d).iter().any(|t| t == current), "{current} is not a listed title");
    // A1111 types options by their default: non-zero int defaults come back as floats.
    assert!(options["CLIP_stop_at_last_layers"].is_f64(), "{}", options["CLIP_stop_at_last_layers"]);
    assert_eq!(options["CLIP_stop_at_last_layers"], json!(1.0));
    assert_eq!(options["samples_format"], "png");
    assert!(options.get("forge_preset").is_none(), "must not look like Forge");

    let answer = d.post("/sdapi/v1/options", &options).unwrap();
    assert_eq!((answer.status, &answer.json), (200, &Value::Null), "{}", answer.text);
    assert_eq!(d.get_json("/sdapi/v1/options").unwrap(), options);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(d.data_dir.path().join("config.json")).unwrap()).unwrap();
    assert!(stored.get("CLIP_stop_at_last_layers").is_none(), "an echoed default is not stored: {stored}");
}

#[test]
fn options_changes_persist_across_restart() {
    let d = two_checkpoints();
    let hash = short_hash(&fixture("tiny/tiny-sd15.safetensors"));
    let answer = d
        .post(
            "/sdapi/v1/options",
            &json!({"CLIP_stop_at_last_layers": 2, "samples_format": "jpg", "sd_model_checkpoint": "tiny-sd15.safetensors"}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    let check = |d: &TestDaemon| {
        let options = d.get_json("/sdapi/v1/options").unwrap();
        assert_eq!(options["CLIP_stop_at_last_layers"], json!(2.0));
        assert_eq!(options["samples_format"], "jpg");
        assert_eq!(options["sd_model_checkpoint"], format!("tiny-sd15.safetensors [{hash}]").as_str());
        assert_eq!(options["sd_checkpoint_hash"].as_str().unwrap()[..10], hash);
    };
    check(&d);
    let d = d.restart(&[]).unwrap();
    check(&d);
}

#[test]
fn options_checkpoint_switch_accepts_every_a1111_alias() {
    let d = two_checkpoints();
    let file = fixture("tiny/tiny-sd15.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let full = hex::encode(sha2::Sha256::digest(&bytes));
    let short = &full[..10];
    let legacy = &hex::encode(sha2::Sha256::digest(&bytes[0x100000..0x110000]))[..8];
    let aliases = [
        "tiny-sd15.safetensors".to_string(),
        short.to_string(),
        full.clone(),
        format!("tiny-sd15.safetensors [{short}]"),
        format!("tiny-sd15 [{short}]"),
        legacy.to_string(),
        format!("tiny-sd15.safetensors [{legacy}]"),
    ];
    for alias in aliases {
        let back = d.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "tiny-sd15.ckpt"})).unwrap();
        assert_eq!(back.status, 200, "{}", back.text);
        let current = d.get_json("/sdapi/v1/options").unwrap()["sd_model_checkpoint"].clone();
        assert!(current.as_str().unwrap().starts_with("tiny-sd15.ckpt"), "{current}");
        let answer = d.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": alias})).unwrap();
        assert_eq!(answer.status, 200, "{alias}: {}", answer.text);
        let options = d.get_json("/sdapi/v1/options").unwrap();
        assert_eq!(
            options["sd_model_checkpoint"],
            format!("tiny-sd15.safetensors [{short}]").as_str(),
            "{alias}"
        );
    }
    // The switch ran through the queue and is over: the daemon reports idle.
    let progress = d.get_json("/sdapi/v1/progress").unwrap();
    assert_eq!(
        (progress["progress"].as_f64(), progress["state"]["job_count"].as_i64()),
        (Some(0.0), Some(0))
    );
    // Loading the .ckpt hashed it: both titles now carry a hash.
    assert!(titles(&d).iter().all(|t| t.ends_with(']')), "{:?}", titles(&d));
}

#[test]
fn options_unknown_checkpoint_or_key_is_500_and_applies_nothing() {
    let d = two_checkpoints();
    let answer = d
        .post(
            "/sdapi/v1/options",
            &json!({"sd_model_checkpoint": "nope.safetensors", "samples_format": "jpg"}),
        )
        .unwrap();
    assert_eq!(answer.status, 500);
    assert_eq!(
        answer.json,
        json!({"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'nope.safetensors' not found"})
    );
    let answer = d.post("/sdapi/v1/options", &json!({"no_such_option": 1, "samples_format": "jpg"})).unwrap();
    assert_eq!(answer.status, 500);
    assert_eq!(
        answer.json,
        json!({"error": "KeyError", "detail": "", "body": "", "errors": "'no_such_option'"})
    );
    assert_eq!(d.get_json("/sdapi/v1/options").unwrap()["samples_format"], "png");
    // An unknown key with a null value is no change, as in A1111.
    assert_eq!(d.post("/sdapi/v1/options", &json!({"no_such_option": null})).unwrap().status, 200);
    let answer = d.post_raw("/sdapi/v1/options", "[1]", &[]).unwrap();
    assert_eq!(answer.status, 422, "{}", answer.text);
}

#[test]
fn options_switch_to_a_broken_checkpoint_fails_alone() {
    let d = two_checkpoints();
    let before = d.get_json("/sdapi/v1/options").unwrap()["sd_model_checkpoint"].clone();
    std::fs::write(d.data_dir.path().join("models/Stable-diffusion/broken.safetensors"), b"not a model")
        .unwrap();
    d.post("/sdapi/v1/refresh-checkpoints", &json!({})).unwrap();
    let answer = d.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "broken.safetensors"})).unwrap();
    assert_eq!(answer.status, 500, "{}", answer.text);
    assert_eq!(answer.json["error"], "RuntimeError");
    assert!(answer.json["errors"].as_str().unwrap().contains("broken.safetensors"), "{}", answer.text);
    // The engine is still there, with the old selection, and the loaded model was not evicted
    // for a file that cannot load.
    let options = d.get_json("/sdapi/v1/options").unwrap();
    assert_eq!(options["sd_model_checkpoint"], before);
    assert!(options["diffusiond_architecture"].is_string(), "{}", options["diffusiond_architecture"]);
    let answer = d.post("/sdapi/v1/txt2img", &json!({"steps": 2, "width": 64, "height": 64})).unwrap();
    assert_eq!(answer.status, 200, "generation still works: {}", answer.text);
    assert_eq!(answer.json["images"].as_array().map(Vec::len), Some(1));
}
