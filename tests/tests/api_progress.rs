//! Progress, interrupt and skip while idle; checkpoint unload and reload; png-info; extras.

use daemon::engine::job::RgbImage;
use daemon::images;
use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

#[test]
fn progress_idle_has_every_key_and_zeros() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let p = d.get_json("/sdapi/v1/progress").unwrap();
    assert_eq!((p["progress"].clone(), p["eta_relative"].clone()), (json!(0.0), json!(0.0)));
    assert_eq!((p["current_image"].clone(), p["textinfo"].clone()), (Value::Null, Value::Null));
    let state = p["state"].as_object().unwrap();
    let mut keys: Vec<_> = state.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "interrupted",
            "job",
            "job_count",
            "job_no",
            "job_timestamp",
            "sampling_step",
            "sampling_steps",
            "skipped",
            "stopping_generation"
        ]
    );
    assert_eq!((state["job"].clone(), state["job_count"].clone()), (json!(""), json!(0)));
    assert_eq!(d.get("/sdapi/v1/progress?skip_current_image=true", &[]).unwrap().status, 200);
    let bad = d.get("/sdapi/v1/progress?skip_current_image=maybe", &[]).unwrap();
    assert_eq!(
        (bad.status, bad.json["detail"][0]["loc"].clone()),
        (422, json!(["query", "skip_current_image"]))
    );
}

#[test]
fn interrupt_and_skip_without_a_job_are_no_ops() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let answer = d.post_raw("/sdapi/v1/interrupt", "", &[]).unwrap();
    assert_eq!((answer.status, answer.json), (200, json!({})));
    let answer = d.post_raw("/sdapi/v1/skip", "", &[]).unwrap();
    assert_eq!((answer.status, answer.json), (200, Value::Null));
    let p = d.get_json("/sdapi/v1/progress").unwrap();
    assert_eq!(
        (p["state"]["interrupted"].clone(), p["state"]["skipped"].clone()),
        (json!(false), json!(false))
    );
}

#[test]
fn unload_then_reload_checkpoint_keeps_the_daemon_usable() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &["--ram-checkpoints", "1"]).unwrap();
    let answer = d.post_raw("/sdapi/v1/unload-checkpoint", "", &[]).unwrap();
    assert_eq!((answer.status, answer.json), (200, json!({})));
    assert_eq!(d.get_json("/sdapi/v1/options").unwrap()["diffusiond_architecture"], Value::Null);
    let answer = d.post_raw("/sdapi/v1/reload-checkpoint", "", &[]).unwrap();
    assert_eq!((answer.status, answer.json), (200, json!({})));
    let arch = d.get_json("/sdapi/v1/options").unwrap()["diffusiond_architecture"].clone();
    assert!(arch.as_str().unwrap().starts_with("SD1.x"), "{arch}");
}

fn tiny_image() -> RgbImage {
    RgbImage { width: 4, height: 3, rgb: (0..36).map(|i| (i * 7) as u8).collect() }
}

#[test]
fn png_info_returns_parameters_and_other_text_chunks() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let infotext =
        "cute squirrel\nNegative prompt: ugly, out of frame\nSteps: 20, Sampler: Euler a, Seed: 1003";
    let png = images::encode_png(&tiny_image(), &[("parameters", infotext), ("Software", "test")]).unwrap();
    let b64 = images::encode_base64(&png);
    for image in [b64.clone(), format!("data:image/png;base64,{b64}")] {
        let answer = d.post("/sdapi/v1/png-info", &json!({ "image": image })).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.json["info"], infotext);
        assert_eq!(answer.json["items"], json!({"Software": "test"}));
        let parameters = &answer.json["parameters"];
        assert_eq!(parameters["Prompt"], "cute squirrel");
        assert_eq!(parameters["Negative prompt"], "ugly, out of frame");
        assert_eq!((parameters["Steps"].clone(), parameters["Seed"].clone()), (json!("20"), json!("1003")));
        assert_eq!(parameters["Clip skip"], "1", "A1111's defaults are filled in");
    }
    let plain = images::encode_base64(&images::encode_png(&tiny_image(), &[]).unwrap());
    let answer = d.post("/sdapi/v1/png-info", &json!({ "image": plain })).unwrap();
    assert_eq!((answer.json["info"].clone(), answer.json["items"].clone()), (json!(""), json!({})));
    assert_eq!(answer.json["parameters"]["Prompt"], "", "no infotext still gives the defaults");
    let answer = d.post("/sdapi/v1/png-info", &json!({"image": ""})).unwrap();
    assert_eq!(answer.json, json!({"info": "", "items": {}, "parameters": {}}));
    let answer = d.post("/sdapi/v1/png-info", &json!({"image": "bm90IGFuIGltYWdl"})).unwrap();
    assert_eq!((answer.status, answer.json["detail"].clone()), (500, json!("Invalid encoded image")));
}

#[test]
fn extra_single_image_upscales_with_builtin_upscalers() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let b64 = images::encode_base64(&images::encode_png(&tiny_image(), &[]).unwrap());
    let answer = d
        .post(
            "/sdapi/v1/extra-single-image",
            &json!({"image": b64, "upscaling_resize": 2, "upscaler_1": "Lanczos"}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["html_info"], "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>");
    let out = images::decode_base64(answer.json["image"].as_str().unwrap()).unwrap();
    let decoded = images::decode_rgb(&out, [0, 0, 0]).unwrap();
    assert_eq!((decoded.width, decoded.height), (8, 6));
    let chunks = images::png_text_chunks(&out).unwrap();
    assert!(chunks.iter().any(|(k, v)| k == "postprocessing" && v.contains("Lanczos")), "{chunks:?}");

    let batch = d
        .post(
            "/sdapi/v1/extra-batch-images",
            &json!({"imageList": [{"data": b64, "name": "a.png"}], "resize_mode": 1, "upscaling_resize_w": 2,
                "upscaling_resize_h": 2, "upscaler_1": "Nearest"}),
        )
        .unwrap();
    assert_eq!(batch.status, 200, "{}", batch.text);
    let out = images::decode_base64(batch.json["images"][0].as_str().unwrap()).unwrap();
    let decoded = images::decode_rgb(&out, [0, 0, 0]).unwrap();
    assert_eq!((decoded.width, decoded.height), (2, 2));
    let answer =
        d.post("/sdapi/v1/extra-single-image", &json!({"image": b64, "upscaler_1": "R-ESRGAN 4x+"})).unwrap();
    assert_eq!(
        (answer.status, answer.json["errors"].clone()),
        (500, json!("could not find upscaler named R-ESRGAN 4x+"))
    );
}
