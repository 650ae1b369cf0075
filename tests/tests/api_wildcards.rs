//! Dynamic Prompts over HTTP: the wildcard listing and expand routes, templates in txt2img
//! expanded per image with seed-linked prompts, the extension's `alwayson_scripts` arguments,
//! and Randomizer Keywords applied per image.

use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

fn daemon() -> TestDaemon {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let root = d.data_dir.path().join("wildcards");
    std::fs::create_dir_all(root.join("animals")).unwrap();
    std::fs::write(root.join("color.txt"), "red\ngreen\nblue\ncyan\nmagenta\nyellow\n").unwrap();
    std::fs::write(root.join("animals/mammals.txt"), "cat\ndog\n").unwrap();
    d
}

fn txt2img(extra: Value) -> Value {
    let mut body = json!({"prompt": "a __color__ ball", "steps": 2, "width": 32, "height": 32,
        "seed": 1000, "batch_size": 2, "n_iter": 2, "sampler_name": "Euler"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn info(answer: &tests::Answer) -> Value {
    assert_eq!(answer.status, 200, "{}", answer.text);
    serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn wildcards_listing_shows_collections_and_picks_up_new_files() {
    let d = daemon();
    let list = d.get_json("/wildcards").unwrap();
    let names: Vec<(&str, u64)> = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(names, vec![("color", 6), ("animals/mammals", 2)]);
    std::fs::write(d.data_dir.path().join("wildcards/size.yaml"), "size: [big, small]\n").unwrap();
    let list = d.get_json("/wildcards").unwrap();
    assert!(list["collections"].as_array().unwrap().iter().any(|c| c["name"] == "size"), "{list}");
}

#[test]
fn wildcards_expand_each_mode_gives_the_library_output() {
    let d = daemon();
    let expand = |body: Value| {
        let a = d.post("/wildcards/expand", &body).unwrap();
        assert_eq!(a.status, 200, "{}", a.text);
        strings(&a.json["prompts"])
    };
    assert_eq!(
        expand(json!({"template": "__animals/mammals__ {big|small}", "mode": "combinatorial"})),
        ["cat big", "cat small", "dog big", "dog small"]
    );
    assert_eq!(expand(json!({"template": "{@a|b|c}", "mode": "cyclical", "count": 4})), ["a", "b", "c", "a"]);
    let random = expand(json!({"template": "__color__", "mode": "random", "count": 5, "seed": 42}));
    assert_eq!(random.len(), 5);
    assert!(random
        .iter()
        .all(|p| ["red", "green", "blue", "cyan", "magenta", "yellow"].contains(&p.as_str())));
    assert_eq!(random, expand(json!({"template": "__color__", "count": 5, "seed": 42})), "same seed");
    assert_eq!(random[1..], expand(json!({"template": "__color__", "count": 4, "seed": 43}))[..], "seed + i");

    let a = d.post("/wildcards/expand", &json!({"template": "__nope__"})).unwrap();
    assert_eq!(strings(&a.json["warnings"]), ["No values found for wildcard 'nope'"]);
}

#[test]
fn wildcards_expand_parse_error_is_422_with_position() {
    let d = daemon();
    let a = d.post("/wildcards/expand", &json!({"template": "a\nb {c|d"})).unwrap();
    assert_eq!(a.status, 422, "{}", a.text);
    let item = &a.json["detail"][0];
    assert_eq!(item["loc"], json!(["body", "template"]));
    assert_eq!(item["ctx"]["line"], json!(2), "{item}");
    let a = d.post("/wildcards/expand", &json!({"template": "x", "mode": "sideways"})).unwrap();
    assert_eq!(a.status, 422);
}

#[test]
fn txt2img_wildcard_each_image_gets_its_seeds_prompt_and_repeats() {
    let d = daemon();
    let first = info(&d.post("/sdapi/v1/txt2img", &txt2img(json!({}))).unwrap());
    let prompts = strings(&first["all_prompts"]);
    assert_eq!(prompts.len(), 4);
    assert_eq!(first["all_seeds"], json!([1000, 1001, 1002, 1003]));
    let colors = ["red", "green", "blue", "cyan", "magenta", "yellow"];
    for (p, infotext) in prompts.iter().zip(strings(&first["infotexts"])) {
        let color = p.strip_prefix("a ").and_then(|s| s.strip_suffix(" ball")).unwrap();
        assert!(colors.contains(&color), "{p}");
        assert!(infotext.starts_with(&format!("{p}\n")), "{infotext}");
    }
    let distinct: std::collections::BTreeSet<&String> = prompts.iter().collect();
    assert!(distinct.len() > 1, "images draw different prompts: {prompts:?}");

    let again = info(&d.post("/sdapi/v1/txt2img", &txt2img(json!({}))).unwrap());
    assert_eq!(again["all_prompts"], first["all_prompts"], "same request, same prompts");
    // The prompt is a function of the image seed: starting one seed later shifts the prompts.
    let shifted = info(&d.post("/sdapi/v1/txt2img", &txt2img(json!({"seed": 1001, "n_iter": 1}))).unwrap());
    assert_eq!(strings(&shifted["all_prompts"])[..], prompts[1..3]);
}

#[test]
fn txt2img_dynamic_prompts_args_disable_combinatorial_and_fixed_seed() {
    let d = daemon();
    let dp = |args: Value| json!({"alwayson_scripts": {"Dynamic Prompts v2.17.1": {"args": args}}});

    let off = info(&d.post("/sdapi/v1/txt2img", &txt2img(dp(json!([false])))).unwrap());
    assert_eq!(strings(&off["all_prompts"]), vec!["a __color__ ball"; 4]);

    let body = txt2img(dp(json!([true, true])));
    let mut body = body.as_object().unwrap().clone();
    body.insert("prompt".into(), json!("__animals/mammals__ {big|small|tiny}"));
    body.insert("negative_prompt".into(), json!("{ugly|blurry}"));
    body.insert("n_iter".into(), json!(1));
    let a = d.post("/sdapi/v1/txt2img", &Value::Object(body.clone())).unwrap();
    let combos = info(&a);
    assert_eq!(a.json["images"].as_array().unwrap().len(), 12, "6 prompts × 2 negatives");
    assert_eq!(strings(&combos["all_prompts"])[..3], ["cat big", "cat big", "cat small"]);
    assert_eq!(strings(&combos["all_negative_prompts"])[..2], ["ugly", "blurry"]);
    assert_eq!(combos["all_seeds"].as_array().unwrap().len(), 12);

    body.insert(
        "alwayson_scripts".into(),
        dp(json!([
            true, true, 1, false, false, false, 1.1, 1.5, 100, 0.7, false, false, true, false, false, 4
        ]))["alwayson_scripts"]
            .clone(),
    );
    let limited = info(&d.post("/sdapi/v1/txt2img", &Value::Object(body)).unwrap());
    assert_eq!(strings(&limited["all_prompts"]), ["cat big", "cat small", "cat tiny", "dog big"]);
    assert_eq!(strings(&limited["all_negative_prompts"]), ["ugly", "blurry", "ugly", "blurry"]);

    let fixed = info(
        &d.post(
            "/sdapi/v1/txt2img",
            &txt2img(dp(json!([true, false, 1, false, false, false, 1.1, 1.5, 100, 0.7, true]))),
        )
        .unwrap(),
    );
    assert_eq!(fixed["all_seeds"], json!([1000, 1000, 1000, 1000]));
    let prompts = strings(&fixed["all_prompts"]);
    assert!(prompts.iter().all(|p| *p == prompts[0]), "{prompts:?}");
}

#[test]
fn txt2img_randomizer_keywords_apply_per_image_and_split_batches() {
    let d = daemon();
    let body = json!({"prompt": "a ball <steps:{2|3}> <width:{64|128}>", "height": 32, "seed": 7,
        "batch_size": 2, "n_iter": 2, "sampler_name": "Euler", "cfg_scale": 5});
    let a = d.post("/sdapi/v1/txt2img", &body).unwrap();
    let i = info(&a);
    let prompts = strings(&i["all_prompts"]);
    assert!(prompts.iter().all(|p| !p.contains('<')), "tags are removed: {prompts:?}");
    assert_eq!(i["all_seeds"], json!([7, 8, 9, 10]));
    let images = a.json["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    // Each image's infotext states the settings it was made with, drawn from its own seed.
    let expanded = d
        .post(
            "/wildcards/expand",
            &json!({"template": "<steps:{2|3}> <width:{64|128}>",
        "count": 4, "seed": 7}),
        )
        .unwrap();
    let drawn = strings(&expanded.json["prompts"]);
    assert!(drawn.iter().any(|t| *t != drawn[0]), "the seeds draw different settings: {drawn:?}");
    for (infotext, tags) in strings(&i["infotexts"]).iter().zip(&drawn) {
        let steps = if tags.contains("<steps:2>") { "Steps: 2," } else { "Steps: 3," };
        let size = if tags.contains("<width:64>") { "Size: 64x32" } else { "Size: 128x32" };
        assert!(infotext.contains(steps) && infotext.contains(size), "{tags} → {infotext}");
    }

    let bad = d
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "<sampler_name:Nope>", "steps": 2,
        "width": 32, "height": 32}),
        )
        .unwrap();
    assert_eq!(bad.status, 422, "{}", bad.text);
}
