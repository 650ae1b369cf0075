//! The checkpoint cache over HTTP: a checkpoint parked in the host-memory tier comes back without
//! its file being read, and a checkpoint that fails to load evicts nothing.
//!
//! File reads are observed through the process-wide load observer
//! (`models::checkpoint::set_load_progress`), which reports the start of every checkpoint load:
//! a signal that does not depend on timings.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

/// Every checkpoint load started in this process, by file.
fn load_log() -> &'static Mutex<Vec<PathBuf>> {
    static LOG: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    let log = LOG.get_or_init(|| Mutex::new(Vec::new()));
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Installed before any daemon starts, so the daemon's own terminal progress bar (which
        // would install itself on first load) never takes the slot.
        let installed = models::checkpoint::set_load_progress(Box::new(|path, done, _total| {
            if done == 0 {
                load_log().lock().unwrap().push(path.to_path_buf());
            }
        }));
        assert!(installed, "the load observer was already set");
    });
    log
}

/// Loads started for files under `dir`, oldest first, as file names.
fn loads_under(dir: &Path) -> Vec<String> {
    load_log()
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.starts_with(dir))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn txt2img(d: &TestDaemon, checkpoint: &str) -> tests::Answer {
    d.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a red cube", "seed": 1234, "steps": 2, "width": 64, "height": 64,
                "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": checkpoint}}),
    )
    .unwrap()
}

fn only_image(answer: &tests::Answer) -> String {
    assert_eq!(answer.status, 200, "{}", answer.text);
    let images: &Vec<Value> = answer.json["images"].as_array().expect("images");
    assert_eq!(images.len(), 1);
    images[0].as_str().unwrap().to_string()
}

#[test]
fn cache_host_tier_switch_back_reads_no_file_and_gives_the_same_image() {
    load_log();
    let d = TestDaemon::start(
        &[fixture("tiny/tiny-sd15.safetensors"), fixture("tiny/tiny-sd15.ckpt")],
        &["--ckpt", "tiny-sd15.safetensors", "--vram-checkpoints", "1", "--ram-checkpoints", "1"],
    )
    .unwrap();
    let dir = d.data_dir.path().to_path_buf();
    let first = only_image(&txt2img(&d, "tiny-sd15.safetensors"));
    // The switch parks tiny-sd15.safetensors in host memory.
    only_image(&txt2img(&d, "tiny-sd15.ckpt"));
    assert_eq!(loads_under(&dir), ["tiny-sd15.safetensors", "tiny-sd15.ckpt"]);

    // A file read from now on would fail: the parked model must come back from memory.
    let file = dir.join("models/Stable-diffusion/tiny-sd15.safetensors");
    let size = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![0x5a; size]).unwrap();
    let again = only_image(&txt2img(&d, "tiny-sd15.safetensors"));
    assert_eq!(again, first, "the parked checkpoint makes the same image");
    assert_eq!(loads_under(&dir), ["tiny-sd15.safetensors", "tiny-sd15.ckpt"], "no file was read");

    // And back again: the .ckpt was parked in its turn.
    std::fs::write(dir.join("models/Stable-diffusion/tiny-sd15.ckpt"), b"gone").unwrap();
    only_image(&txt2img(&d, "tiny-sd15.ckpt"));
    assert_eq!(loads_under(&dir).len(), 2);
}

/// A copy of the tiny checkpoint without one VAE tensor: its header is fine and the architecture
/// detects (the cache's pre-check passes), but building the model fails.
fn write_incomplete_checkpoint(path: &Path) {
    use models::weights::safetensors_file::{write_atomic, SafetensorsFile};
    use models::weights::TensorSource;
    let src = SafetensorsFile::open(fixture("tiny/tiny-sd15.safetensors")).unwrap();
    let dropped = "first_stage_model.decoder.conv_out.bias";
    let tensors: Vec<(String, tch::Tensor)> = src
        .names()
        .into_iter()
        .filter(|n| n != dropped)
        .map(|n| {
            let t = src.read(&n).unwrap();
            (n, t)
        })
        .collect();
    assert_eq!(tensors.len() + 1, src.names().len(), "the fixture has {dropped}");
    write_atomic(path, &tensors, None).unwrap();
    let opened = models::checkpoint::open(path).unwrap();
    models::checkpoint::CheckpointConfig::detect(opened.as_ref()).expect("the pre-check passes");
}

#[test]
fn cache_failed_load_keeps_the_resident_checkpoint_loaded() {
    load_log();
    let d = TestDaemon::start(
        &[fixture("tiny/tiny-sd15.safetensors")],
        &["--ckpt", "tiny-sd15.safetensors", "--vram-checkpoints", "1", "--ram-checkpoints", "0"],
    )
    .unwrap();
    let dir = d.data_dir.path().to_path_buf();
    let before = only_image(&txt2img(&d, "tiny-sd15.safetensors"));
    write_incomplete_checkpoint(&dir.join("models/Stable-diffusion/incomplete.safetensors"));
    assert_eq!(d.post("/sdapi/v1/refresh-checkpoints", &json!({})).unwrap().status, 200);

    let answer = txt2img(&d, "incomplete.safetensors");
    assert_eq!(answer.status, 500, "{}", answer.text);
    assert!(answer.text.contains("conv_out.bias"), "the error names the missing tensor: {}", answer.text);
    let answer =
        d.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "incomplete.safetensors"})).unwrap();
    assert_eq!(answer.status, 500, "{}", answer.text);
    assert_eq!(
        loads_under(&dir),
        ["tiny-sd15.safetensors", "incomplete.safetensors", "incomplete.safetensors"]
    );

    // The resident checkpoint was never evicted: using it again reads nothing.
    let after = only_image(&txt2img(&d, "tiny-sd15.safetensors"));
    assert_eq!(after, before);
    let options = d.get_json("/sdapi/v1/options").unwrap();
    assert!(
        options["sd_model_checkpoint"].as_str().unwrap().starts_with("tiny-sd15.safetensors"),
        "{options}"
    );
    assert_eq!(
        loads_under(&dir),
        ["tiny-sd15.safetensors", "incomplete.safetensors", "incomplete.safetensors"]
    );
}
