//! The X/Y/Z plot script over HTTP: each cell is the same image a direct request with the axis
//! values makes, and the grid with legends comes first.

use base64::Engine;
use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

fn decode(b64: &Value) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

#[test]
fn xyz_plot_steps_by_sampler_cells_equal_direct_requests() {
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
    assert!(grid_text.contains("Script: X/Y/Z plot, X Type: Steps, X Values: \"2-3\""), "{grid_text}");
    assert_eq!(info["all_seeds"], json!([5, 5, 5, 5, 5, 5, 5, 5]));

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
