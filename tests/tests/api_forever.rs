//! Generate forever over HTTP: a job saves every image with its infotext (templates expanded,
//! seeds drawn afresh per batch), counts them, takes a replaced request (PUT), stops on DELETE,
//! resumes after a restart while a stopped job stays stopped, lets interactive requests through,
//! gives up after five failed batches in a row, and saves X/Y/Z grids.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

const COLORS: [&str; 6] = ["red", "green", "blue", "cyan", "magenta", "yellow"];

fn request(prompt: &str) -> Value {
    json!({"prompt": prompt, "steps": 2, "width": 32, "height": 32, "batch_size": 1,
        "sampler_name": "Euler", "save_images": false})
}

fn job(d: &TestDaemon, id: &str) -> Value {
    let a = d.get(&format!("/jobs/forever/{id}"), &[]).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    a.json
}

/// Polls job `id` until `done` holds, for at most 60 s (the machine may be busy).
fn wait_for(d: &TestDaemon, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let j = job(d, id);
        if done(&j) {
            return j;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn images(j: &Value) -> u64 {
    j["images"].as_u64().unwrap()
}

/// Every saved txt2img PNG under `outputs/` with its `parameters` text.
fn saved(data_dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![data_dir.join("outputs/txt2img-images")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "png") {
                let chunks = daemon::images::png_text_chunks(&std::fs::read(&path).unwrap()).unwrap();
                let text = chunks.into_iter().find(|(k, _)| k == "parameters").map(|(_, v)| v);
                out.push((path, text.unwrap_or_default()));
            }
        }
    }
    out
}

fn seed_of(infotext: &str) -> i64 {
    let at = infotext.find("Seed: ").expect("a seed in the infotext") + "Seed: ".len();
    infotext[at..].split(',').next().unwrap().trim().parse().unwrap()
}

#[test]
fn forever_jobs_save_images_take_edits_stop_and_resume_after_a_restart() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    std::fs::write(d.data_dir.path().join("wildcards/color.txt"), COLORS.join("\n")).unwrap();

    let a = d.post("/jobs/forever", &request("a __color__ ball")).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["state"], "running");
    assert_eq!(a.json["request"]["prompt"], "a __color__ ball");
    let kept = a.json["id"].as_str().unwrap().to_string();
    let b = d.post("/jobs/forever", &request("a plain cat")).unwrap();
    assert_eq!(b.status, 200, "{}", b.text);
    let stopped = b.json["id"].as_str().unwrap().to_string();
    assert_ne!(kept, stopped);

    wait_for(&d, &kept, "two images", |j| images(j) >= 2);
    // An interactive request is served while both jobs keep the engine busy.
    let direct = d.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a dog", "steps": 2, "width": 32,
        "height": 32, "seed": 7, "sampler_name": "Euler"}),
    );
    let direct = direct.unwrap();
    assert_eq!(direct.status, 200, "{}", direct.text);
    assert_eq!(direct.json["images"].as_array().unwrap().len(), 1);

    // DELETE answers the job and stops it after its current batch; then its count stays put.
    let del = d.post_raw("/jobs/forever/x", "", &[]).unwrap();
    assert_eq!(del.status, 405, "{}", del.text);
    let answer = ureq::delete(&d.url(&format!("/jobs/forever/{stopped}"))).call().unwrap();
    let answer: Value = answer.into_json().unwrap();
    assert_eq!(answer["id"], json!(stopped));
    assert!(answer["state"] == "stopping" || answer["state"] == "stopped", "{answer}");
    let stopped_job = wait_for(&d, &stopped, "the stop", |j| j["state"] == "stopped");
    let stopped_images = images(&stopped_job);
    assert!(stopped_images >= 1, "{stopped_job}");
    let before = images(&job(&d, &kept));
    wait_for(&d, &kept, "more images", |j| images(j) > before);
    assert_eq!(images(&job(&d, &stopped)), stopped_images, "a stopped job makes no more images");

    let listed = d.get_json("/jobs/forever").unwrap();
    let ids: Vec<&str> =
        listed["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [kept.as_str(), stopped.as_str()]);

    // Every image is saved with its infotext: templates expanded, seeds distinct.
    let counted = images(&job(&d, &kept)) + stopped_images;
    let files = saved(d.data_dir.path());
    assert!(files.len() as u64 >= counted, "{} files, {counted} counted", files.len());
    let seeds: HashSet<i64> = files.iter().map(|(_, text)| seed_of(text)).collect();
    assert_eq!(seeds.len(), files.len(), "every image has its own seed");
    let balls: Vec<&String> =
        files.iter().map(|(_, t)| t).filter(|t| t.starts_with("a ") && t.contains(" ball")).collect();
    assert!(balls.len() >= 2, "{files:?}");
    for text in &balls {
        let prompt = text.lines().next().unwrap();
        assert!(COLORS.iter().any(|c| prompt == format!("a {c} ball")), "expanded prompt: {prompt}");
    }
    assert!(files.iter().any(|(_, t)| t.starts_with("a plain cat\n")), "{files:?}");

    // After a restart the running job carries on from its counters; the stopped one stays.
    let at_stop = images(&job(&d, &kept));
    let d = d.restart(&[]).unwrap();
    let resumed = job(&d, &kept);
    assert_eq!(resumed["state"], "running");
    assert!(images(&resumed) >= at_stop, "{resumed}");
    wait_for(&d, &kept, "the resumed job's images", |j| images(j) > at_stop);
    let still = job(&d, &stopped);
    assert_eq!((still["state"].as_str(), images(&still)), (Some("stopped"), stopped_images));
    let stored: Value =
        serde_json::from_slice(&std::fs::read(d.data_dir.path().join("jobs/forever.json")).unwrap()).unwrap();
    assert_eq!(stored["jobs"].as_array().unwrap().len(), 2);

    // PUT replaces the request from the next batch on.
    let put = |id: &str, body: &Value| {
        let answer = ureq::put(&d.url(&format!("/jobs/forever/{id}"))).send_json(body.clone());
        match answer {
            Ok(r) => (r.status(), r.into_json::<Value>().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json::<Value>().unwrap_or(Value::Null)),
            Err(e) => panic!("{e}"),
        }
    };
    let (status, replaced) = put(&kept, &request("a tiny box"));
    assert_eq!((status, &replaced["request"]["prompt"]), (200, &json!("a tiny box")), "{replaced}");
    assert_eq!(put(&kept, &json!({"steps": "many"})).0, 422);
    assert_eq!(put("999", &request("a tiny box")).0, 404);
    let start = Instant::now();
    while !saved(d.data_dir.path()).iter().any(|(_, t)| t.starts_with("a tiny box\n")) {
        assert!(start.elapsed() < Duration::from_secs(60), "no image of the replaced request");
        std::thread::sleep(Duration::from_millis(100));
    }

    let unknown = d.get("/jobs/forever/999", &[]).unwrap();
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json["error"], "HTTPException", "{}", unknown.text);
    ureq::delete(&d.url(&format!("/jobs/forever/{kept}"))).call().unwrap();
    wait_for(&d, &kept, "the final stop", |j| j["state"] == "stopped");
}

#[test]
fn forever_job_failing_five_batches_in_a_row_becomes_failed_and_the_daemon_carries_on() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let bad = d.post(
        "/jobs/forever",
        &json!({"prompt": "a cat", "steps": 2, "width": 32, "height": 32,
        "override_settings": {"no_such_option": 1}}),
    );
    let bad = bad.unwrap();
    assert_eq!(bad.status, 200, "{}", bad.text);
    let id = bad.json["id"].as_str().unwrap().to_string();
    let failed = wait_for(&d, &id, "the job to give up", |j| j["state"] == "failed");
    assert_eq!(failed["consecutive_failures"], 5, "{failed}");
    assert_eq!(failed["images"], 0);
    assert!(failed["last_error"].as_str().unwrap().contains("no_such_option"), "{failed}");

    // A body that is not a txt2img request is refused up front.
    let malformed = d.post("/jobs/forever", &json!({"prompt": "a cat", "steps": "many"})).unwrap();
    assert_eq!(malformed.status, 422, "{}", malformed.text);
    let ok = d.post("/sdapi/v1/txt2img", &request("a dog")).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text);
}

#[test]
fn forever_job_with_the_xyz_plot_saves_its_grids_with_infotext() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let mut body = request("a red cat");
    body["script_name"] = json!("X/Y/Z plot");
    body["script_args"] = json!(["Steps", "2-3", [], "Nothing", "", [], "Nothing", "", []]);
    let a = d.post("/jobs/forever", &body).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_string();
    wait_for(&d, &id, "one plot", |j| j["batches"].as_u64() >= Some(1));
    ureq::delete(&d.url(&format!("/jobs/forever/{id}"))).call().unwrap();
    wait_for(&d, &id, "the stop", |j| j["state"] == "stopped");

    let date = dated_folder(&d.data_dir.path().join("outputs/txt2img-grids"));
    let mut grids: Vec<PathBuf> = std::fs::read_dir(&date).unwrap().map(|e| e.unwrap().path()).collect();
    grids.sort();
    assert!(!grids.is_empty());
    let first = &grids[0];
    let text = daemon::images::png_text_chunks(&std::fs::read(first).unwrap()).unwrap();
    let (_, infotext) = text.iter().find(|(k, _)| k == "parameters").expect("a parameters chunk");
    assert!(infotext.contains("Script: X/Y/Z plot, X Type: Steps, X Values: 2-3"), "{infotext}");
    let name = first.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(name, format!("00000-{}.png", seed_of(infotext)), "numbered and named by the seed");
    // The cells are saved as ordinary images too, both with the plot's seed.
    let cells = saved(d.data_dir.path());
    assert!(cells.len() >= 2, "{cells:?}");
    assert!(cells.iter().all(|(_, t)| t.starts_with("a red cat\n")), "{cells:?}");
}

/// The one folder under `dir`, checked to be named like a date (`YYYY-MM-DD`).
fn dated_folder(dir: &Path) -> PathBuf {
    let days: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(days.len(), 1, "{days:?}");
    let name = days[0].file_name().unwrap().to_string_lossy().into_owned();
    let shape: String = name.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
    assert_eq!(shape, "9999-99-99", "{name}");
    days.into_iter().next().unwrap()
}
