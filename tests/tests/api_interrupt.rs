//! Progress and interrupt while a generation runs: `/progress` answers during the job with the
//! step, `eta_relative` and a preview image, and `/interrupt` makes the running call return 200
//! with what it has, as A1111 does.

use serde_json::json;
use tests::{fixture, TestDaemon};

#[test]
fn progress_during_job_and_interrupt_returns_partial_result() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    // Make previews frequent so one shows up during the run.
    let answer = d.post("/sdapi/v1/options", &json!({"show_progress_every_n_steps": 1})).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    let long = json!({"prompt": "a cat", "steps": 150, "width": 64, "height": 64, "seed": 5,
        "sampler_name": "Euler", "n_iter": 3});
    std::thread::scope(|s| {
        let job = s.spawn(|| d.post("/sdapi/v1/txt2img", &long).unwrap());
        // A deadline rather than a count: on a loaded 2-core machine the job may take a while to
        // reach its third step.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut seen_running = None;
        while std::time::Instant::now() < deadline {
            let p = d.get_json("/sdapi/v1/progress").unwrap();
            if p["state"]["sampling_step"].as_u64().unwrap_or(0) >= 3 {
                seen_running = Some(p);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let Some(p) = seen_running else {
            // Stop the long job so the scope does not wait for all of it before failing.
            let _ = d.post("/sdapi/v1/interrupt", &json!({}));
            panic!("progress never showed the running job");
        };
        assert_eq!(p["state"]["job"], "scripts_txt2img", "{p}");
        assert_eq!(p["state"]["sampling_steps"], 150, "{p}");
        let progress = p["progress"].as_f64().unwrap();
        assert!(progress > 0.0 && progress < 1.0, "{p}");
        assert!(p["eta_relative"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["current_image"].is_string(), "no preview: {p}");
        assert_eq!(d.post("/sdapi/v1/interrupt", &json!({})).unwrap().status, 200);
        let answer = job.join().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text);
        // Interrupted during the first batch: that batch's image, no further batches.
        assert_eq!(answer.json["images"].as_array().map(Vec::len), Some(1), "{}", answer.json["info"]);
    });
    let p = d.get_json("/sdapi/v1/progress").unwrap();
    assert_eq!(p["state"]["job_count"], 0);
    // The next job is not affected by the earlier interrupt.
    let answer = d
        .post("/sdapi/v1/txt2img", &json!({"prompt": "a cat", "steps": 2, "width": 32, "height": 32}))
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["images"].as_array().map(Vec::len), Some(1));
}
