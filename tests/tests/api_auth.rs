//! `--api-auth`: HTTP Basic on every route but the liveness and documentation ones (LoRA, wildcard,
//! forever and training routes included), A1111's three
//! 401 details, open `/internal`, docs and unknown paths; without the flag any `Authorization`
//! header is ignored.

use serde_json::json;
use tests::{basic_auth, fixture, TestDaemon};

#[test]
fn auth_enabled_protects_api_routes_with_a1111_details() {
    let d =
        TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &["--api-auth", "alice:s3cret,bob:pw"])
            .unwrap();
    let without = d.get("/sdapi/v1/cmd-flags", &[]).unwrap();
    assert_eq!(without.status, 401);
    assert_eq!(
        without.json,
        json!({"error": "HTTPException", "detail": "Not authenticated", "body": "", "errors": ""})
    );
    let detail = |header: &str| {
        d.get("/sdapi/v1/cmd-flags", &[("authorization", header)]).unwrap().json["detail"].clone()
    };
    assert_eq!(detail("Bearer abc"), "Not authenticated");
    assert_eq!(detail("Basic !!!"), "Invalid authentication credentials");
    assert_eq!(detail(&basic_auth("alice:wrong")), "Incorrect username or password");
    assert_eq!(detail(&basic_auth("carol:s3cret")), "Incorrect username or password");

    for user in ["alice:s3cret", "bob:pw"] {
        let ok = d.get("/sdapi/v1/cmd-flags", &[("authorization", &basic_auth(user))]).unwrap();
        assert_eq!(ok.status, 200, "{user}");
        assert!(!ok.text.contains("s3cret"), "the credentials must not be echoed");
    }
    // LoRA routes are protected here too (A1111 leaves them open).
    assert_eq!(d.get("/sdapi/v1/loras", &[]).unwrap().status, 401);
    assert_eq!(d.post_raw("/sdapi/v1/refresh-loras", "", &[]).unwrap().status, 401);
    assert_eq!(d.post_raw("/sdapi/v1/txt2img", "{}", &[]).unwrap().status, 401);
    let ok = d.get("/sdapi/v1/loras", &[("authorization", &basic_auth("alice:s3cret"))]).unwrap();
    assert_eq!((ok.status, ok.json.clone()), (200, json!([])));

    let open = ["/internal/ping", "/openapi.json", "/docs"];
    for path in open {
        assert_eq!(d.get(path, &[]).unwrap().status, 200, "{path}");
    }
    // Every other documented route and method, our own (/wildcards, /jobs/forever, /train)
    // included, answers 401 before doing anything.
    let openapi = d.get_json("/openapi.json").unwrap();
    for (path, methods) in openapi["paths"].as_object().unwrap() {
        if open.contains(&path.as_str()) {
            continue;
        }
        for method in methods.as_object().unwrap().keys() {
            let answer = d.request(method, path, "{}").unwrap();
            assert_eq!(answer.status, 401, "{method} {path}: {}", answer.text);
        }
    }
    // An unknown path is a 404 with or without credentials (AIYA tells "no API" from "auth").
    assert_eq!(d.get("/sdapi/v1/version", &[]).unwrap().status, 404);
}

#[test]
fn auth_disabled_ignores_empty_and_blank_authorization_headers() {
    let d = TestDaemon::start(&[fixture("tiny/tiny-sd15.safetensors")], &[]).unwrap();
    // Open WebUI sends an empty header; SillyTavern sends Basic base64("").
    for header in ["", "Basic ", &basic_auth("")] {
        let answer = d.get("/sdapi/v1/options", &[("authorization", header)]).unwrap();
        assert_eq!(answer.status, 200, "{header:?}");
    }
}
