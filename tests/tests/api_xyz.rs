//! The X/Y/Z plot script over HTTP: each cell is the same image a direct request with the axis
//! values makes, and the grid with legends comes first. The plot is given positionally
//! (`script_args`) or as the native `xyz_plot` object; a cell that fails while running is blank;
//! a checkpoint axis loads each checkpoint once.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use base64::Engine;
use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

/// Every checkpoint load of this test process, in order (the daemons run in-process). Installed
/// by each test before it starts a daemon, so it is the process's load observer whichever test
/// runs first.
fn checkpoint_loads() -> &'static Mutex<Vec<PathBuf>> {
    static LOADS: OnceLock<&'static Mutex<Vec<PathBuf>>> = OnceLock::new();
    LOADS.get_or_init(|| {
        let loads: &'static Mutex<Vec<PathBuf>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let installed = models::checkpoint::set_load_progress(Box::new(move |path, done, _total| {
            if done == 0 {
                loads.lock().unwrap().push(path.to_path_buf());
            }
        }));
        assert!(installed, "no daemon may start before the load observer is installed");
        loads
    })
}

/// The checkpoint loads of daemon `d` so far.
fn loads_of(d: &TestDaemon) -> Vec<String> {
    let dir = d.data_dir.path().file_name().unwrap().to_string_lossy().into_owned();
    checkpoint_loads()
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.to_string_lossy().contains(&dir))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn info(answer: &tests::Answer) -> Value {
    serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap()
}

fn decode(b64: &Value) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

#[test]
fn xyz_plot_steps_by_sampler_cells_equal_direct_requests() {
    checkpoint_loads();
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let base = json!({"prompt": "a red cat", "steps": 2, "width": 32, "height": 32, "seed": 5,
        "sampler_name": "Euler", "cfg_scale": 5});
    let mut plot = base.clone();
    plot["script_name"] = json!("X/Y/Z plot");
    // X: Steps by label, Y: Sampler by index with the dropdown list, Z: Prompt S/R.
    plot["script_args"] =
        json!(["Steps", "2-3", [], 9, "", ["Euler", "Euler a"], "Prompt S/R", "red, blue", [], true, true]);
    let a = d.post("/sdapi/v1/txt2img", &plot).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let images = a.json["images"].as_array().unwrap();
    assert_eq!(images.len(), 1 + 8, "grid, then the cells");
    let grid = decode(&images[0]);
    assert!(grid.width() > 2 * 2 * 32 && grid.height() > 2 * 32, "legends add room: {:?}", grid.dimensions());

    let mut cell = 1;
    for prompt in ["a red cat", "a blue cat"] {
        for sampler in ["Euler", "Euler a"] {
            for steps in [2, 3] {
                let mut direct = base.clone();
                direct["prompt"] = json!(prompt);
                direct["sampler_name"] = json!(sampler);
                direct["steps"] = json!(steps);
                let b = d.post("/sdapi/v1/txt2img", &direct).unwrap();
                assert_eq!(b.status, 200, "{}", b.text);
                assert_eq!(decode(&images[cell]), decode(&b.json["images"][0]), "{prompt} {sampler} {steps}");
                cell += 1;
            }
        }
    }
    let info: Value = serde_json::from_str(a.json["info"].as_str().unwrap()).unwrap();
    let grid_text = info["infotexts"][0].as_str().unwrap();
    // A1111 quotes a value only when it holds a comma, colon or newline, and the plot's keys stand
    // before `Version`.
    let keys = "Script: X/Y/Z plot, X Type: Steps, X Values: 2-3, Y Type: Sampler, \
        Y Values: \"Euler, Euler a\", Z Type: Prompt S/R, Z Values: \"red, blue\", Version: ";
    assert!(grid_text.contains(keys), "{grid_text}");
    assert_eq!(info["all_seeds"], json!([5, 5, 5, 5, 5, 5, 5, 5]));

    // A seed axis records the seeds it drew as `Fixed X Values`.
    let mut seeds = base.clone();
    seeds["script_name"] = json!("X/Y/Z plot");
    seeds["script_args"] = json!(["Seed", "-1, 7", [], "Nothing", "", [], "Nothing", "", []]);
    let s = d.post("/sdapi/v1/txt2img", &seeds).unwrap();
    assert_eq!(s.status, 200, "{}", s.text);
    let info: Value = serde_json::from_str(s.json["info"].as_str().unwrap()).unwrap();
    let drawn = info["all_seeds"][0].as_i64().unwrap();
    assert_ne!(drawn, -1);
    let expected = format!("X Type: Seed, X Values: \"-1, 7\", Fixed X Values: \"{drawn}, 7\", Version: ");
    assert!(info["infotexts"][0].as_str().unwrap().contains(&expected), "{}", info["infotexts"][0]);

    // Include Sub Grids without Sub Images: the grid, then one X×Y grid per Z value, each equal to
    // the grid of the same plot restricted to that Z value.
    plot["script_args"] = json!([
        "Steps",
        "2-3",
        [],
        9,
        "",
        ["Euler", "Euler a"],
        "Prompt S/R",
        "red, blue",
        [],
        true,
        false,
        true
    ]);
    let with_subs = d.post("/sdapi/v1/txt2img", &plot).unwrap();
    assert_eq!(with_subs.status, 200, "{}", with_subs.text);
    let subs = with_subs.json["images"].as_array().unwrap();
    assert_eq!(subs.len(), 3, "grid, then a sub-grid per Z value");
    assert_eq!(decode(&subs[0]), grid);
    for (i, (prompt, z)) in [("a red cat", "red"), ("a blue cat", "blue")].into_iter().enumerate() {
        let mut single = plot.clone();
        single["prompt"] = json!(prompt);
        single["script_args"][7] = json!(z);
        let one = d.post("/sdapi/v1/txt2img", &single).unwrap();
        assert_eq!(one.status, 200, "{}", one.text);
        assert_eq!(decode(&subs[1 + i]), decode(&one.json["images"][0]), "sub-grid {i}");
    }
}

#[test]
fn xyz_plot_unknown_sampler_or_missing_search_term_fails_before_any_image() {
    checkpoint_loads();
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let body = |args: Value| {
        json!({"prompt": "a cat", "steps": 2, "width": 32, "height": 32,
        "script_name": "x/y/z plot", "script_args": args})
    };
    let a = d
        .post(
            "/sdapi/v1/txt2img",
            &body(json!([
                "Sampler",
                "Nope",
                [],
                0,
                "",
                [],
                0,
                "",
                [],
                true,
                false,
                false,
                false,
                false,
                false,
                false,
                0,
                true
            ])),
        )
        .unwrap();
    assert_eq!(a.status, 422, "{}", a.text);
    let a = d.post("/sdapi/v1/txt2img", &body(json!([7, "dog, fox"]))).unwrap();
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(a.text.contains("Prompt S/R did not find dog"), "{}", a.text);
}

#[test]
fn xyz_plot_native_form_equals_positional_and_bad_axes_are_422_naming_the_axis() {
    checkpoint_loads();
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let base = json!({"prompt": "a red cat", "negative_prompt": "blurry", "steps": 2, "width": 32,
        "height": 32, "seed": 11, "sampler_name": "Euler", "cfg_scale": 5});
    let mut positional = base.clone();
    positional["script_name"] = json!("x/y/z plot");
    positional["script_args"] = json!([
        "Steps",
        "2-3",
        [],
        9,
        "",
        ["Euler", "DPM++ 2M"],
        "Prompt S/R",
        "red,blue",
        [],
        true,
        true,
        false,
        false,
        false,
        true,
        false,
        2,
        false
    ]);
    let mut native = base.clone();
    // Types by label and by index, values as text and as a JSON list, options by name.
    native["xyz_plot"] = json!({
        "x": {"type": "Steps", "values": "2-3"},
        "y": {"type": 9, "values": ["Euler", "DPM++ 2M"]},
        "z": {"type": "prompt s/r", "values": "red,blue"},
        "draw_legend": true, "include_lone_images": true, "include_sub_grids": false,
        "no_fixed_seeds": false, "vary_seeds": {"x": false, "y": true, "z": false},
        "margin_size": 2, "csv_mode": false
    });
    let a = d.post("/sdapi/v1/txt2img", &positional).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let b = d.post("/sdapi/v1/txt2img", &native).unwrap();
    assert_eq!(b.status, 200, "{}", b.text);
    let (ia, ib) = (info(&a), info(&b));
    assert_eq!(a.json["images"].as_array().unwrap().len(), 1 + 8);
    assert_eq!(a.json["images"], b.json["images"], "grid and cells, byte for byte");
    for key in ["infotexts", "all_prompts", "all_negative_prompts", "all_seeds"] {
        assert_eq!(ia[key], ib[key], "{key}");
    }
    // Vary seeds Y: each Y row adds its index to the seed.
    assert_eq!(ia["all_seeds"], json!([11, 11, 12, 12, 11, 11, 12, 12]));
    assert_eq!(ia["all_prompts"][4], json!("a blue cat"));

    // A single list value for a numeric axis works as a field of the text syntax would.
    let mut listed = base.clone();
    listed["xyz_plot"] = json!({"x": {"type": "Steps", "values": [2, "3"]}, "include_lone_images": true});
    let c = d.post("/sdapi/v1/txt2img", &listed).unwrap();
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["images"][1], a.json["images"][1]);
    assert_eq!(c.json["images"][2], a.json["images"][2]);

    let refused = |form: Value| {
        let mut body = base.clone();
        body["xyz_plot"] = form;
        let r = d.post("/sdapi/v1/txt2img", &body).unwrap();
        assert_eq!(r.status, 422, "{}", r.text);
        r.json["detail"][0].clone()
    };
    let e = refused(json!({"x": {"type": "Steps", "values": "2"}, "y": {"type": "Flavour", "values": "1"}}));
    assert_eq!(e["loc"], json!(["body", "xyz_plot", "y"]));
    assert!(e["msg"].as_str().unwrap().contains("Y type"), "{e}");
    let e = refused(json!({"z": {"type": "CFG Scale", "values": "7, lots"}}));
    assert_eq!(e["loc"], json!(["body", "xyz_plot", "z"]));
    assert!(e["msg"].as_str().unwrap().contains("Z axis (CFG Scale): `lots` is not a number"), "{e}");
    let e = refused(json!({"x": {"type": "Sampler", "values": ["Euler", "Nope"]}}));
    assert!(e["msg"].as_str().unwrap().contains("X axis (Sampler): unknown sampler `Nope`"), "{e}");
    let e = refused(json!({"x": {"type": "Steps", "values": {"from": 1}}}));
    assert_eq!(e["loc"], json!(["body", "xyz_plot", "x", "values"]));
    // Both forms at once is ambiguous.
    let mut both = positional.clone();
    both["xyz_plot"] = native["xyz_plot"].clone();
    assert_eq!(d.post("/sdapi/v1/txt2img", &both).unwrap().status, 422);
}

#[test]
fn xyz_plot_cell_failing_at_run_time_is_blank_and_the_others_run() {
    checkpoint_loads();
    let data = tempfile::tempdir().unwrap();
    let ckpt_dir = data.path().join("models/Stable-diffusion");
    std::fs::create_dir_all(&ckpt_dir).unwrap();
    std::fs::copy(fixture("tiny/tiny-sd15.safetensors"), ckpt_dir.join("tiny-sd15.safetensors")).unwrap();
    // Listed by the catalog (it goes by the extension) but not loadable.
    std::fs::write(ckpt_dir.join("zz-broken.safetensors"), b"\x10\0\0\0\0\0\0\0not a header").unwrap();
    let d = TestDaemon::start_in(data, &["--ckpt", "tiny-sd15.safetensors"]).unwrap();
    let base = json!({"prompt": "a red cat", "steps": 2, "width": 32, "height": 40, "seed": 3,
        "sampler_name": "Euler"});
    let mut plot = base.clone();
    plot["xyz_plot"] = json!({
        "x": {"type": "Checkpoint name", "values": ["zz-broken.safetensors", "tiny-sd15.safetensors"]},
        "y": {"type": "Steps", "values": "2-3"},
        "include_lone_images": true
    });
    let a = d.post("/sdapi/v1/txt2img", &plot).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let images = a.json["images"].as_array().unwrap();
    assert_eq!(images.len(), 1 + 4, "grid, then the cells");
    let i = info(&a);
    for (cell, steps) in [(1, 2), (3, 3)] {
        // The broken checkpoint's cells are black; the first cell itself failed, so they take
        // the request's size.
        let blank = decode(&images[cell]);
        assert_eq!(blank.dimensions(), (32, 40), "cell {cell}");
        assert!(blank.pixels().all(|p| p.0 == [0, 0, 0]), "cell {cell} is blank");
        assert_eq!(i["infotexts"][cell], json!(""), "a failed cell has no infotext");
        let mut direct = base.clone();
        direct["steps"] = json!(steps);
        let b = d.post("/sdapi/v1/txt2img", &direct).unwrap();
        assert_eq!(b.status, 200, "{}", b.text);
        assert_eq!(decode(&images[cell + 1]), decode(&b.json["images"][0]), "steps {steps}");
    }
    let grid = decode(&images[0]);
    assert!(grid.width() >= 2 * 32 && grid.height() >= 2 * 40, "{:?}", grid.dimensions());
    assert!(i["infotexts"][0].as_str().unwrap().contains("Script: X/Y/Z plot"), "{}", i["infotexts"][0]);

    // A plot whose every cell fails answers with the failure.
    plot["xyz_plot"]["x"]["values"] = json!(["zz-broken.safetensors"]);
    let all_failed = d.post("/sdapi/v1/txt2img", &plot).unwrap();
    assert_eq!(all_failed.status, 500, "{}", all_failed.text);
    // A checkpoint the catalog does not have is refused before any image, as A1111 does.
    plot["xyz_plot"]["x"]["values"] = json!(["nowhere.safetensors"]);
    let unknown = d.post("/sdapi/v1/txt2img", &plot).unwrap();
    assert_eq!(unknown.status, 422, "{}", unknown.text);
    assert!(unknown.text.contains("Checkpoint nowhere.safetensors for X axis not found"), "{}", unknown.text);
}

#[test]
fn xyz_plot_checkpoint_on_x_loads_each_checkpoint_once_and_cells_equal_direct_requests() {
    checkpoint_loads();
    let d = TestDaemon::start(
        &[fixture("tiny/tiny-sd15.safetensors"), fixture("tiny/tiny-sd15.ckpt")],
        &["--ckpt", "tiny-sd15.safetensors"],
    )
    .unwrap();
    let base = json!({"prompt": "a red cat", "steps": 2, "width": 32, "height": 32, "seed": 8,
        "sampler_name": "Euler", "cfg_scale": 4});
    let names = ["tiny-sd15.ckpt", "tiny-sd15.safetensors"];
    let mut plot = base.clone();
    plot["script_name"] = json!("X/Y/Z plot");
    // X changes fastest in grid order; the checkpoint axis still runs outermost.
    plot["script_args"] =
        json!(["Checkpoint name", "", names, "CFG Scale", "3, 4, 5", [], "Nothing", "", [], true, true]);
    let before = loads_of(&d).len();
    let a = d.post("/sdapi/v1/txt2img", &plot).unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    let during: Vec<String> = loads_of(&d)[before..].to_vec();
    // The start-up checkpoint is the second value: one load for the first, one to come back.
    assert_eq!(during, ["tiny-sd15.ckpt", "tiny-sd15.safetensors"], "each checkpoint loaded once");

    let images = a.json["images"].as_array().unwrap();
    assert_eq!(images.len(), 1 + 6);
    let mut cell = 1;
    for cfg in [3, 4, 5] {
        for name in names {
            let mut direct = base.clone();
            direct["cfg_scale"] = json!(cfg);
            direct["override_settings"] = json!({"sd_model_checkpoint": name});
            let b = d.post("/sdapi/v1/txt2img", &direct).unwrap();
            assert_eq!(b.status, 200, "{}", b.text);
            assert_eq!(decode(&images[cell]), decode(&b.json["images"][0]), "{name} cfg {cfg}");
            assert!(info(&a)["infotexts"][cell].as_str().unwrap().contains(name.split('.').next().unwrap()));
            cell += 1;
        }
    }
}
