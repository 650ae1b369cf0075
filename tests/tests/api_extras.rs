//! Upscalers over HTTP: `/upscalers` lists the ESRGAN files of `models/ESRGAN` after the built-in
//! ones, and `/extra-single-image` / `/extra-batch-images` run them on the engine thread with
//! A1111's tiling and final resize. The expected pixels are the goldens of
//! reference/gen_upscaler_fixtures.py (A1111's `upscale_with_model` on the tiny RRDBNet).

use daemon::engine::job::RgbImage;
use daemon::images::{self, Pixels, Resample};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use serde_json::{json, Value};
use tests::{fixture, TestDaemon};

/// A daemon whose `models/ESRGAN` holds the tiny upscaler in the old and the new key layout.
fn daemon() -> TestDaemon {
    let data_dir = tempfile::tempdir().unwrap();
    let ckpt = data_dir.path().join("models/Stable-diffusion");
    let esrgan = data_dir.path().join("models/ESRGAN");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::create_dir_all(&esrgan).unwrap();
    std::fs::copy(fixture("tiny/tiny-sd15.safetensors"), ckpt.join("tiny-sd15.safetensors")).unwrap();
    for f in ["tiny-esrgan-old.pth", "tiny-esrgan-new.safetensors"] {
        std::fs::copy(fixture(&format!("esrgan/{f}")), esrgan.join(f)).unwrap();
    }
    TestDaemon::start_in(data_dir, &[]).unwrap()
}

/// A golden uint8 HWC image as (width, height, bytes).
fn golden_image(name: &str) -> Pixels {
    let file = SafetensorsFile::open(fixture("esrgan/golden.safetensors")).unwrap();
    let t = file.read(name).unwrap();
    let (h, w) = (t.size()[0] as u32, t.size()[1] as u32);
    Pixels::new(w, h, 3, Vec::<u8>::try_from(t.view([-1])).unwrap())
}

fn png_b64(p: &Pixels) -> String {
    let rgb = RgbImage { width: p.width, height: p.height, rgb: p.data.clone() };
    images::encode_base64(&images::encode_png(&rgb, &[]).unwrap())
}

fn decode(v: &Value) -> Pixels {
    let bytes = images::decode_base64(v.as_str().expect("a base64 image")).unwrap();
    let rgb = images::decode_rgb(&bytes, [0, 0, 0]).unwrap();
    Pixels::new(rgb.width, rgb.height, 3, rgb.rgb)
}

/// Largest per-channel difference of two images of equal size.
fn max_diff(a: &Pixels, b: &Pixels) -> u8 {
    assert_eq!((a.width, a.height), (b.width, b.height), "size");
    a.data.iter().zip(&b.data).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn upscalers_esrgan_files_listed_after_builtin_ones() {
    let d = daemon();
    let list = d.get_json("/sdapi/v1/upscalers").unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["None", "Lanczos", "Nearest", "tiny-esrgan-new", "tiny-esrgan-old"]);
    assert_eq!(
        list[0],
        json!({"name": "None", "model_name": null, "model_path": null, "model_url": null, "scale": 4.0})
    );
    let old = &list[4];
    assert_eq!((old["model_name"].clone(), old["scale"].clone()), (json!("ESRGAN_4x"), json!(4.0)));
    assert!(old["model_path"].as_str().unwrap().ends_with("models/ESRGAN/tiny-esrgan-old.pth"), "{old}");
    assert_eq!(old["model_url"], Value::Null);
}

#[test]
fn extra_single_image_esrgan_by_4_matches_a1111_tiled_upscale() {
    let d = daemon();
    // 40×28 at the default tile (192) and overlap (8): one tile reaching outside the image.
    let input = golden_image("tiled_default_input");
    let expected = golden_image("tiled_default_output");
    for model in ["tiny-esrgan-old", "tiny-esrgan-new"] {
        let answer = d
            .post(
                "/sdapi/v1/extra-single-image",
                &json!({"image": png_b64(&input), "upscaling_resize": 4, "upscaler_1": model}),
            )
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(
            answer.json["html_info"],
            format!("<p>Postprocess upscale by: 4, Postprocess upscaler: {model}</p>")
        );
        // 160×112 is a multiple of 8, so no Lanczos fix-up follows the model.
        let out = decode(&answer.json["image"]);
        assert!(max_diff(&out, &expected) <= 1, "{model}: differs from A1111's tiled upscale by more than 1");
    }
}

#[test]
fn extra_single_image_esrgan_by_2_finishes_with_lanczos_resize() {
    let d = daemon();
    let input = golden_image("tiled_default_input");
    // The ×4 model overshoots the 80×56 target once; A1111 then resizes with Lanczos.
    let expected = images::resize_pil(&golden_image("tiled_default_output"), 80, 56, Resample::Lanczos, None);
    let answer = d
        .post(
            "/sdapi/v1/extra-single-image",
            &json!({"image": png_b64(&input), "upscaling_resize": 2, "upscaler_1": "tiny-esrgan-new",
                "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(max_diff(&decode(&answer.json["image"]), &expected) <= 1);
    // Visibility 0 leaves the second upscaler out of the result and the infotext.
    assert!(!answer.json["html_info"].as_str().unwrap().contains("upscaler 2"));
}

#[test]
fn extra_batch_images_esrgan_with_second_upscaler_blends_and_crops() {
    let d = daemon();
    let input = golden_image("tiled_default_input");
    let b64 = png_b64(&input);
    let answer = d
        .post(
            "/sdapi/v1/extra-batch-images",
            &json!({"imageList": [{"data": b64, "name": "a.png"}, {"data": b64, "name": "b.png"}],
                "resize_mode": 1, "upscaling_resize_w": 160, "upscaling_resize_h": 100, "upscaling_crop": true,
                "upscaler_1": "tiny-esrgan-old", "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.json["html_info"],
        "<p>Postprocess upscale to: 160x100, Postprocess upscaler: tiny-esrgan-old, \
         Postprocess upscaler 2: Lanczos, Postprocess crop to: 160x100</p>"
    );
    let outputs = answer.json["images"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    // Scale max(160/40, 100/28) = 4: the model's 160×112, blended half with Lanczos's
    // 160×112, pasted centred on a 160×100 canvas (6 rows cut at the top).
    let model = golden_image("tiled_default_output");
    let lanczos = images::resize_pil(&input, 160, 112, Resample::Lanczos, None);
    let blended: Vec<u8> = model
        .data
        .iter()
        .zip(&lanczos.data)
        .map(|(&a, &b)| (f32::from(a) + 0.5 * (f32::from(b) - f32::from(a))) as u8)
        .collect();
    let blended = Pixels::new(160, 112, 3, blended);
    let expected = blended.crop(0, 6, 160, 106);
    for out in outputs {
        let out = decode(out);
        assert!(max_diff(&out, &expected) <= 1, "blend or crop differs");
    }
    assert_eq!(decode(&outputs[0]), decode(&outputs[1]));
}

#[test]
fn extra_single_image_unknown_upscaler_is_a_500_naming_it() {
    let d = daemon();
    let input = golden_image("tiled_default_input");
    let answer = d
        .post("/sdapi/v1/extra-single-image", &json!({"image": png_b64(&input), "upscaler_1": "4x-Missing"}))
        .unwrap();
    assert_eq!(
        (answer.status, answer.json["errors"].clone()),
        (500, json!("could not find upscaler named 4x-Missing"))
    );
}

/// Hires fix through an ESRGAN file: the first pass is decoded, run through the model with
/// A1111's tiling, resized to the target and encoded again for the second pass.
#[test]
fn txt2img_hires_esrgan_upscaler_reaches_target_and_differs_from_lanczos() {
    let d = daemon();
    let run = |upscaler: &str| {
        let answer = d
            .post(
                "/sdapi/v1/txt2img",
                &json!({"prompt": "a cat", "negative_prompt": "", "seed": 5, "steps": 3, "width": 32,
                    "height": 32, "sampler_name": "Euler", "enable_hr": true, "hr_scale": 2,
                    "hr_upscaler": upscaler, "denoising_strength": 0.5, "hr_second_pass_steps": 2}),
            )
            .unwrap();
        assert_eq!(answer.status, 200, "{upscaler}: {}", answer.text);
        let info: Value = serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap();
        (decode(&answer.json["images"][0]), info["infotexts"][0].as_str().unwrap().to_string())
    };
    let (esrgan, infotext) = run("tiny-esrgan-new");
    assert_eq!((esrgan.width, esrgan.height), (64, 64));
    assert!(
        infotext.ends_with(&format!(
            "Denoising strength: 0.5, Hires upscale: 2.0, Hires steps: 2, Hires upscaler: tiny-esrgan-new, \
             Version: {}",
            daemon::validate::VERSION
        )),
        "{infotext}"
    );
    let (lanczos, _) = run("Lanczos");
    assert_eq!((lanczos.width, lanczos.height), (64, 64));
    let differing = esrgan.data.iter().zip(&lanczos.data).filter(|(a, b)| a != b).count();
    assert!(differing > esrgan.data.len() / 10, "only {differing} values differ from the Lanczos result");
    // The old key layout loads too and gives the same model.
    let (old, _) = run("tiny-esrgan-old");
    assert!(max_diff(&old, &esrgan) <= 1);
}

#[test]
fn txt2img_hires_unknown_upscaler_is_refused_naming_it() {
    let d = daemon();
    let answer = d
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "enable_hr": true,
                "hr_upscaler": "4x-Missing", "denoising_strength": 0.5}),
        )
        .unwrap();
    // A1111's txt2img init raises this for an upscaler missing from `sd_upscalers`.
    assert_eq!(
        (answer.status, answer.json["errors"].clone()),
        (500, json!("could not find upscaler named 4x-Missing"))
    );
}
