//! Error shapes (a1111-api.md §1.5): FastAPI's 422 for bodies that do not parse or fit, A1111's
//! `{error, detail, body, errors}` for everything else, JSON 404/405 bodies; and the headers every
//! response carries (`X-Process-Time`, CORS per flag, gzip on request).

use serde_json::json;
use tests::{fixture, TestDaemon};

#[test]
fn malformed_json_and_bad_types_are_422_with_fastapi_bodies() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let answer = d.post_raw("/sdapi/v1/txt2img", "{\"prompt\": \"cat\",}", &[]).unwrap();
    assert_eq!(answer.status, 422, "{}", answer.text);
    let item = &answer.json["detail"][0];
    assert_eq!(item["type"], "value_error.jsondecode");
    assert_eq!(item["loc"], json!(["body", 17]), "Python: line 1 column 18 (char 17)");
    assert!(item["msg"].as_str().unwrap().ends_with("line 1 column 18 (char 17)"), "{item}");

    let answer = d.post("/sdapi/v1/txt2img", &json!({"prompt": "cat", "steps": "many"})).unwrap();
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.json,
        json!({"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]})
    );
    let answer = d.post("/sdapi/v1/txt2img", &json!({"restore_faces": "maybe"})).unwrap();
    assert_eq!(answer.json["detail"][0]["type"], "type_error.bool");
    let answer = d.post_raw("/sdapi/v1/img2img", "[]", &[]).unwrap();
    assert_eq!((answer.status, answer.json["detail"][0]["type"].clone()), (422, json!("type_error.dict")));
    // Range checks use the same shape.
    let answer = d.post("/sdapi/v1/txt2img", &json!({"steps": 0})).unwrap();
    assert_eq!((answer.status, answer.json["detail"][0]["loc"].clone()), (422, json!(["body", "steps"])));
}

#[test]
fn handler_errors_use_a1111_error_bodies() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let answer = d.post("/sdapi/v1/img2img", &json!({"prompt": "cat"})).unwrap();
    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.json,
        json!({"error": "HTTPException", "detail": "Init image not found", "body": "", "errors": ""})
    );
    let answer = d.post("/sdapi/v1/img2img", &json!({"init_images": ["bm90IGFuIGltYWdl"]})).unwrap();
    assert_eq!((answer.status, answer.json["detail"].clone()), (500, json!("Invalid encoded image")));
    let answer = d.post("/sdapi/v1/txt2img", &json!({"script_name": "nope"})).unwrap();
    assert_eq!((answer.status, answer.json["detail"].clone()), (422, json!("Script 'nope' not found")));
    let answer =
        d.post("/sdapi/v1/txt2img", &json!({"override_settings": {"forge_additional_modules": []}})).unwrap();
    assert_eq!(answer.status, 500);
    assert_eq!(
        answer.json,
        json!({"error": "KeyError", "detail": "", "body": "", "errors": "'forge_additional_modules'"})
    );
    let answer = d.post("/sdapi/v1/interrogate", &json!({"image": ""})).unwrap();
    assert_eq!((answer.status, answer.json["detail"].clone()), (404, json!("Image not found")));

    let answer = d.get("/config", &[]).unwrap();
    assert_eq!((answer.status, answer.json.clone()), (404, json!({"detail": "Not Found"})));
    let answer = d.get("/sdapi/v1/txt2img", &[]).unwrap();
    assert_eq!((answer.status, answer.json.clone()), (405, json!({"detail": "Method Not Allowed"})));
}

#[test]
fn responses_carry_process_time_cors_and_gzip() {
    let d = TestDaemon::start(
        &[fixture("tiny/tiny-sd15.safetensors")],
        &["--cors-allow-origins", "http://ui.test,http://other.test"],
    )
    .unwrap();
    let answer = d.get("/sdapi/v1/samplers", &[("origin", "http://ui.test")]).unwrap();
    let time = &answer.headers["x-process-time"];
    let (whole, decimals) = time.split_once('.').unwrap();
    assert!(whole.parse::<u64>().is_ok() && decimals.len() == 4, "{time}");
    assert_eq!(answer.headers["access-control-allow-origin"], "http://ui.test");
    assert_eq!(answer.headers["access-control-allow-credentials"], "true");
    let stranger = d.get("/sdapi/v1/samplers", &[("origin", "http://evil.test")]).unwrap();
    assert!(!stranger.headers.contains_key("access-control-allow-origin"));
    // Preflight: answered before auth and routing.
    let preflight = ureq::request("OPTIONS", &d.url("/sdapi/v1/txt2img"))
        .set("origin", "http://other.test")
        .set("access-control-request-method", "POST")
        .set("access-control-request-headers", "content-type")
        .call()
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("http://other.test"));
    assert_eq!(preflight.header("access-control-allow-headers"), Some("content-type"));
    assert!(preflight.header("access-control-allow-methods").unwrap().contains("POST"));
    // A large response is gzip-encoded when asked for.
    let raw = ureq::get(&d.url("/sdapi/v1/samplers")).set("accept-encoding", "gzip").call().unwrap();
    assert_eq!(raw.header("content-encoding"), Some("gzip"));

    let plain = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let answer = plain.get("/sdapi/v1/samplers", &[("origin", "http://ui.test")]).unwrap();
    assert!(!answer.headers.contains_key("access-control-allow-origin"), "no CORS without the flag");
}

#[test]
fn openapi_lists_every_route_and_each_route_exists() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    let openapi = d.get_json("/openapi.json").unwrap();
    let paths = openapi["paths"].as_object().unwrap();
    assert!(paths.len() >= 40, "{}", paths.len());
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            // An empty body: routes with a body answer 422 (or their own error), none "Not Found".
            let answer = match method.as_str() {
                "get" => d.get(path, &[]).unwrap(),
                "post" => d.post_raw(path, "", &[]).unwrap(),
                "put" | "delete" => d.request(method, path, "").unwrap(),
                other => panic!("unexpected method {other}"),
            };
            assert_ne!(answer.json, json!({"detail": "Not Found"}), "{method} {path}");
            assert_ne!(answer.status, 405, "{method} {path}");
        }
    }
    let docs = d.get("/docs", &[]).unwrap();
    assert!(docs.headers["content-type"].starts_with("text/html"));
    assert!(docs.text.contains("/sdapi/v1/txt2img"));
}
