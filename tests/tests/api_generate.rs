//! txt2img and img2img end to end over HTTP: requests are validated, queued, run by the engine
//! thread through the pipeline, and answered with A1111's response shape. The images equal what
//! the A1111-rules reference makes for the same request (±2 levels), every client gets exactly
//! its own answer, and a bad prompt fails alone.

use base64::Engine;
use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

fn decode_images(answer: &tests::Answer) -> Vec<image::RgbImage> {
    answer.json["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|s| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap();
            image::load_from_memory(&bytes).unwrap().to_rgb8()
        })
        .collect()
}

/// Posts the request stored with a reference case and compares the returned pixels.
fn check_reference_case(d: &TestDaemon, case: &str) {
    use models::weights::safetensors_file::SafetensorsFile;
    use models::weights::TensorSource;
    let golden = SafetensorsFile::open(fixture(&format!("golden/a1111/{case}.safetensors"))).unwrap();
    let meta = golden.metadata();
    let mut request: Value = serde_json::from_str(&meta["request"]).unwrap();
    if request.get("init_images").is_some() {
        let png = std::fs::read(fixture("images/init_32x32.png")).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        request["init_images"] = json!([format!("data:image/png;base64,{b64}")]);
    }
    if request.get("mask").is_some() {
        let png = std::fs::read(fixture("images/mask_32x32.png")).unwrap();
        request["mask"] = json!(base64::engine::general_purpose::STANDARD.encode(png));
    }
    let endpoint = meta["endpoint"].clone();
    let answer = d.post(&endpoint, &request).unwrap();
    assert_eq!(answer.status, 200, "{case}: {}", answer.text);
    let info: Value = serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap();
    let expected = golden.read("images").unwrap();
    let images = decode_images(&answer);
    assert_eq!(images.len() as i64, expected.size()[0], "{case}: image count");
    for (i, img) in images.iter().enumerate() {
        let ours =
            tch::Tensor::from_slice(img.as_raw()).reshape([img.height() as i64, img.width() as i64, 3]);
        let diff = (ours.to_kind(tch::Kind::Int) - expected.get(i as i64).to_kind(tch::Kind::Int))
            .abs()
            .max()
            .int64_value(&[]);
        assert!(diff <= 2, "{case}: image {i} differs by {diff}");
    }
    let seed = request["seed"].as_i64().unwrap();
    assert_eq!(info["all_seeds"][0], json!(seed), "{case}: {info}");
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert!(infotext.contains(&format!("Seed: {seed}")), "{case}: {infotext}");
}

#[test]
fn txt2img_and_img2img_over_http_match_reference() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    for case in [
        "euler",
        "euler_a",
        "prompt_editing",
        "variation",
        "clip_skip2",
        "dpmpp_2m_sde",
        "img2img_dpmpp_2m",
        "inpaint_euler_a",
    ] {
        check_reference_case(&d, case);
    }
}

#[test]
fn bad_prompt_fails_alone_with_a1111_error_and_daemon_lives_on() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let bad = json!({"prompt": "a (cat:1.5.2)", "steps": 2, "width": 32, "height": 32});
    let answer = d.post("/sdapi/v1/txt2img", &bad).unwrap();
    assert!((400..500).contains(&answer.status), "{} {}", answer.status, answer.text);
    assert!(answer.text.contains("1.5.2"), "{}", answer.text);
    let good = json!({"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 1});
    let answer = d.post("/sdapi/v1/txt2img", &good).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(decode_images(&answer).len(), 1);
}

#[test]
fn concurrent_clients_each_get_exactly_their_own_answer() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let answers: Vec<(String, tests::Answer)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let d = &d;
                s.spawn(move || {
                    let id = format!("client-{i}");
                    let body = json!({"prompt": format!("prompt {i}"), "steps": 2, "width": 32, "height": 32,
                        "seed": 100 + i, "force_task_id": id});
                    (id, d.post("/sdapi/v1/txt2img", &body).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers.len(), 8);
    let mut seen: Vec<&str> = answers.iter().map(|(_, a)| a.headers["x-task-id"].as_str()).collect();
    for (i, (id, answer)) in answers.iter().enumerate() {
        assert_eq!(&answer.headers["x-task-id"], id, "an answer for another client's job");
        assert_eq!(answer.status, 200, "{}", answer.text);
        let info: Value = serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap();
        assert_eq!(info["seed"], json!(100 + i), "client {i} got another job's result");
        assert_eq!(info["prompt"], json!(format!("prompt {i}")));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every job answered once");
    let p = d.get_json("/sdapi/v1/progress").unwrap();
    assert_eq!(p["state"]["job_count"], 0, "the queue drained");
}
