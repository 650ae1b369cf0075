//! txt2img, img2img and inpainting through the whole pipeline (prompt parsing,
//! conditioning, seeds, samplers, masks, upscaling, decoding)
//! against the A1111-rules reference (`reference/a1111_reference.py`) on the tiny model: every
//! pixel within ±2 of what A1111 would return, and the text encoder's infotext keys (`TI hashes`,
//! `Emphasis`) equal to the reference's.

use std::path::PathBuf;

use daemon::generation::{txt2img, HiresSpec, InpaintSpec, TextEncoders, Txt2ImgSpec};
use daemon::images::Pixels;
use models::checkpoint::StableDiffusion;
use models::conditioning::EmphasisMode;
use models::device::Placement;
use models::pipeline::RgbImage;
use models::rng::{all_seeds, all_subseeds, RandnSource};
use models::sampling::unipc::{SkipType, Variant};
use models::sampling::{Control, UniPcOptions};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use serde_json::Value;
use tests::fixture;

fn spec_from_request(r: &Value) -> Txt2ImgSpec {
    let o = &r["override_settings"];
    let num = |v: &Value, d: f64| v.as_f64().unwrap_or(d);
    let total = (r["batch_size"].as_u64().unwrap_or(1) * r["n_iter"].as_u64().unwrap_or(1)) as usize;
    Txt2ImgSpec {
        prompts: vec![r["prompt"].as_str().unwrap_or("").into(); total],
        negative_prompts: vec![r["negative_prompt"].as_str().unwrap_or("").into(); total],
        seeds: all_seeds(r["seed"].as_u64().expect("fixed seed"), num(&r["subseed_strength"], 0.0), total),
        subseeds: all_subseeds(r["subseed"].as_u64().unwrap_or(0), total),
        subseed_strength: num(&r["subseed_strength"], 0.0),
        seed_resize_from_w: 0,
        seed_resize_from_h: 0,
        steps: r["steps"].as_u64().unwrap_or(20) as usize,
        cfg_scale: num(&r["cfg_scale"], 7.0),
        width: r["width"].as_i64().unwrap_or(512),
        height: r["height"].as_i64().unwrap_or(512),
        sampler_name: r["sampler_name"].as_str().unwrap_or("DPM++ 2M").into(),
        scheduler: r["scheduler"].as_str().map(String::from),
        batch_size: r["batch_size"].as_u64().unwrap_or(1) as usize,
        n_iter: r["n_iter"].as_u64().unwrap_or(1) as usize,
        clip_skip: o["CLIP_stop_at_last_layers"].as_u64().unwrap_or(1) as usize,
        emphasis: match o["emphasis"].as_str() {
            Some("No norm") => EmphasisMode::NoNorm,
            Some("Ignore") => EmphasisMode::Ignore,
            Some("None") => EmphasisMode::None,
            _ => EmphasisMode::Original,
        },
        randn_source: match o["randn_source"].as_str() {
            Some("NV") => RandnSource::Nv,
            Some("GPU") => RandnSource::Gpu,
            _ => RandnSource::Cpu,
        },
        eta_noise_seed_delta: o["eta_noise_seed_delta"].as_i64().unwrap_or(0),
        eta: r["eta"].as_f64(),
        comma_padding_backtrack: 20,
        init: r["init_images"].as_array().map(|_| {
            (vec![load_png(&fixture("images/init_32x32.png"))], num(&r["denoising_strength"], 0.75))
        }),
        pad_cond_uncond: o["pad_cond_uncond"].as_bool().unwrap_or(false),
        resize_mode: r["resize_mode"].as_u64().unwrap_or(0) as u8,
        inpaint: r["mask"].as_str().map(|_| {
            let mask = image::open(fixture("images/mask_32x32.png")).unwrap().to_luma8();
            let blur = r["mask_blur"].as_u64();
            InpaintSpec {
                mask: Pixels::new(mask.width(), mask.height(), 1, mask.into_raw()),
                mask_blur_x: r["mask_blur_x"].as_u64().or(blur).unwrap_or(4) as u32,
                mask_blur_y: r["mask_blur_y"].as_u64().or(blur).unwrap_or(4) as u32,
                mask_round: r["mask_round"].as_bool().unwrap_or(true),
                fill: r["inpainting_fill"].as_u64().unwrap_or(0) as u8,
                full_res: r["inpaint_full_res"].as_bool().unwrap_or(true),
                full_res_padding: r["inpaint_full_res_padding"].as_u64().unwrap_or(0) as u32,
                invert: r["inpainting_mask_invert"].as_u64().unwrap_or(0) != 0,
                mask_weight: o["inpainting_mask_weight"].as_f64().unwrap_or(1.0),
            }
        }),
        hires: hires_from_request(r, total),
        uni_pc: UniPcOptions {
            variant: match o["uni_pc_variant"].as_str() {
                Some("bh2") => Variant::Bh2,
                Some("vary_coeff") => Variant::VaryCoeff,
                _ => Variant::Bh1,
            },
            skip_type: match o["uni_pc_skip_type"].as_str() {
                Some("time_quadratic") => SkipType::TimeQuadratic,
                Some("logSNR") => SkipType::LogSnr,
                _ => SkipType::TimeUniform,
            },
            order: o["uni_pc_order"].as_u64().unwrap_or(3) as usize,
            lower_order_final: o["uni_pc_lower_order_final"].as_bool().unwrap_or(true),
        },
    }
}

/// A1111's hires settings of a txt2img request (`enable_hr`), sizes as `StableDiffusionProcessingTxt2Img.init`
/// computes them.
fn hires_from_request(r: &Value, total: usize) -> Option<HiresSpec> {
    if !r["enable_hr"].as_bool().unwrap_or(false) {
        return None;
    }
    let (w, h) = (r["width"].as_i64().unwrap_or(512), r["height"].as_i64().unwrap_or(512));
    let (rx, ry) = (r["hr_resize_x"].as_i64().unwrap_or(0), r["hr_resize_y"].as_i64().unwrap_or(0));
    let scale = r["hr_scale"].as_f64().unwrap_or(2.0);
    let (up_w, up_h, tw, th) = match (rx, ry) {
        (0, 0) => {
            let (x, y) = ((w as f64 * scale) as i64, (h as f64 * scale) as i64);
            (x, y, x, y)
        }
        (x, 0) => (x, x * h / w, x, x * h / w),
        (0, y) => (y * w / h, y, y * w / h, y),
        (x, y) if (w as f64 / h as f64) < (x as f64 / y as f64) => (x, x * h / w, x, y),
        (x, y) => (y * w / h, y, x, y),
    };
    let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
    Some(HiresSpec {
        upscale_to_width: up_w,
        upscale_to_height: up_h,
        target_width: tw,
        target_height: th,
        upscaler: r["hr_upscaler"].as_str().unwrap_or("Latent").into(),
        upscaler_model: None,
        steps: r["hr_second_pass_steps"].as_u64().unwrap_or(0) as usize,
        sampler_name: r["hr_sampler_name"]
            .as_str()
            .or(r["sampler_name"].as_str())
            .unwrap_or("DPM++ 2M")
            .into(),
        scheduler: r["hr_scheduler"].as_str().or(r["scheduler"].as_str()).map(String::from),
        prompts: vec![text("hr_prompt"); total],
        negative_prompts: vec![text("hr_negative_prompt"); total],
        denoising_strength: r["denoising_strength"].as_f64().unwrap_or(0.7),
    })
}

fn load_png(path: &std::path::Path) -> RgbImage {
    let img = image::open(path).unwrap().to_rgb8();
    RgbImage { width: img.width(), height: img.height(), data: img.into_raw() }
}

/// Runs one golden case; returns the largest per-channel difference.
fn run_case(model: &StableDiffusion, text: &TextEncoders, path: &PathBuf) -> Result<i64, String> {
    let golden = SafetensorsFile::open(path).map_err(|e| e.to_string())?;
    let request: Value = serde_json::from_str(&golden.metadata()["request"]).map_err(|e| e.to_string())?;
    let spec = spec_from_request(&request);
    let mut hook = |_: usize, _: usize, _: &tch::Tensor| Control::Continue;
    let images = txt2img(model, text, &spec, &mut hook, &mut || false).map_err(|e| e.to_string())?;
    let expected = golden.read("images").map_err(|e| e.to_string())?;
    if expected.size()[0] != images.len() as i64 {
        return Err(format!("{} images, expected {}", images.len(), expected.size()[0]));
    }
    // The text encoder's infotext keys (TI hashes, Emphasis) per image; absent means none.
    let params: Vec<Vec<(String, String)>> = match golden.metadata().get("infotext_encoder_params") {
        Some(json) => serde_json::from_str(json).map_err(|e| e.to_string())?,
        None => vec![Vec::new(); images.len()],
    };
    for (i, (generated, want)) in images.iter().zip(&params).enumerate() {
        if &generated.encoder_params != want {
            return Err(format!(
                "image {i}: encoder infotext keys {:?}, expected {want:?}",
                generated.encoder_params
            ));
        }
    }
    let mut worst = 0;
    for (i, generated) in images.iter().enumerate() {
        let img = &generated.image;
        let ours = tch::Tensor::from_slice(&img.data).reshape([img.height as i64, img.width as i64, 3]);
        let theirs = expected.get(i as i64);
        if ours.size() != theirs.size() {
            return Err(format!("image {i}: size {:?}, expected {:?}", ours.size(), theirs.size()));
        }
        let diff =
            (ours.to_kind(tch::Kind::Int) - theirs.to_kind(tch::Kind::Int)).abs().max().int64_value(&[]);
        worst = worst.max(diff);
    }
    Ok(worst)
}

/// Runs every golden case whose name `select` accepts and fails with the list of mismatches.
fn check_cases(select: &dyn Fn(&str) -> bool) {
    check_cases_on(&fixture("tiny/tiny-sd15.safetensors"), select);
}

/// The checkpoint the reference's `sd_model_checkpoint: tiny-sd15-inpainting` stands for:
/// tiny-sd15 with its UNet replaced by the 9-channel one (the fixture holds only the UNet), written
/// into `dir`.
fn inpainting_checkpoint(dir: &std::path::Path) -> PathBuf {
    let base = SafetensorsFile::open(fixture("tiny/tiny-sd15.safetensors")).unwrap();
    let unet = SafetensorsFile::open(fixture("tiny/tiny-sd15-inpainting.safetensors")).unwrap();
    let mut tensors: Vec<(String, tch::Tensor)> = base
        .names()
        .into_iter()
        .filter(|n| !n.starts_with("model.diffusion_model."))
        .map(|n| (n.clone(), base.read(&n).unwrap()))
        .collect();
    tensors.extend(unet.names().into_iter().map(|n| (n.clone(), unet.read(&n).unwrap())));
    let path = dir.join("tiny-sd15-inpainting.safetensors");
    tch::Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn check_cases_on(checkpoint: &std::path::Path, select: &dyn Fn(&str) -> bool) {
    let model = StableDiffusion::load(checkpoint, Placement::cpu()).unwrap();
    let embeddings: Vec<PathBuf> = std::fs::read_dir(fixture("embeddings"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let text = TextEncoders::new(&model, &embeddings).unwrap();
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(fixture("golden/a1111")).unwrap().flatten().map(|e| e.path()).collect();
    cases.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &cases {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        // `cv2_*` files pin single operations (the mask blur), not whole requests.
        if name.starts_with("cv2_") || !select(&name) {
            continue;
        }
        checked += 1;
        match run_case(&model, &text, path) {
            Ok(d) if d <= 2 => println!("{name}: max difference {d}"),
            Ok(d) => failures.push(format!("{name}: max difference {d}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    println!("{checked} cases, {} failing", failures.len());
    assert!(checked > 0, "no cases found");
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

#[test]
fn txt2img_and_img2img_match_a1111_reference_within_two_levels() {
    check_cases(&|name| {
        !name.starts_with("hires_")
            && !name.starts_with("img2img_resize_")
            && !name.starts_with("inpaint_")
            && !name.starts_with("inpaintmodel_")
    });
}

/// The 9-channel inpainting checkpoint: txt2img (grey picture, mask of ones), img2img without a
/// mask, and inpainting with the `[mask, masked picture]` conditioning ("whole picture" and "only
/// masked", every masked content, `inpainting_mask_weight` 0.5, unrounded mask, DDIM's eps path).
#[test]
fn inpainting_checkpoint_matches_a1111_reference_within_two_levels() {
    let dir = tempfile::tempdir().unwrap();
    check_cases_on(&inpainting_checkpoint(dir.path()), &|name| name.starts_with("inpaintmodel_"));
}

/// A1111's txt2img conditioning for an inpainting checkpoint (`txt2img_image_conditioning`)
/// equals the reference's `c_concat`: a channel of ones, then the encoded grey picture.
#[test]
fn txt2img_inpainting_conditioning_matches_reference_c_concat() {
    let dir = tempfile::tempdir().unwrap();
    let model = StableDiffusion::load(&inpainting_checkpoint(dir.path()), Placement::cpu()).unwrap();
    assert!(model.is_inpainting());
    let golden =
        SafetensorsFile::open(fixture("golden/a1111/inpaintmodel_txt2img_euler_a.safetensors")).unwrap();
    let expected = golden.read("image_cond").unwrap();
    let ours = model.txt2img_inpainting_conditioning(2, 32, 32);
    assert_eq!(ours.size(), expected.size());
    let diff = (ours - &expected).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "largest difference {diff}");
    assert_eq!(expected.narrow(1, 0, 1).min().double_value(&[]), 1.0, "mask channel of ones");
}

/// A1111's mask blur (`cv2.GaussianBlur` on the uint8 mask, `(k, 1)` then `(1, k)`) equals
/// OpenCV byte for byte (golden by `reference/mask_blur_reference.py`): every sigma along both
/// axes on a random picture, an image smaller than the kernels, and the inpainting fixture's mask
/// through both passes.
#[test]
fn mask_blur_matches_opencv_byte_for_byte() {
    use daemon::images::gaussian_blur_axis;
    let golden = SafetensorsFile::open(fixture("golden/a1111/cv2_mask_blur.safetensors")).unwrap();
    let image = |name: &str| {
        let t = golden.read(name).unwrap();
        let (h, w) = (t.size()[0], t.size()[1]);
        let mut data = vec![0u8; (h * w) as usize];
        t.f_copy_data(&mut data, (h * w) as usize).unwrap();
        Pixels::new(w as u32, h as u32, 1, data)
    };
    let list = |key: &str| -> Vec<Value> { serde_json::from_str(&golden.metadata()[key]).unwrap() };
    let mut failures = Vec::new();
    let mut compare = |name: String, ours: Pixels| {
        let want = image(&name);
        let wrong = ours.data.iter().zip(&want.data).filter(|(a, b)| a != b).count();
        if wrong > 0 {
            failures.push(format!("{name}: {wrong} pixels differ"));
        }
    };
    let (input, edge, mask) = (image("input"), image("edge_input"), image("mask_input"));
    let sigmas = list("sigmas");
    assert!(sigmas.len() >= 10);
    for s in sigmas.iter().map(|v| v.as_u64().unwrap() as u32) {
        compare(format!("h{s}"), gaussian_blur_axis(&input, s, true));
        compare(format!("v{s}"), gaussian_blur_axis(&input, s, false));
    }
    for s in list("edge_sigmas").iter().map(|v| v.as_u64().unwrap() as u32) {
        compare(format!("edge_h{s}"), gaussian_blur_axis(&edge, s, true));
        compare(format!("edge_v{s}"), gaussian_blur_axis(&edge, s, false));
    }
    for pass in list("mask_passes") {
        let (a, b) = (pass[0].as_u64().unwrap() as u32, pass[1].as_u64().unwrap() as u32);
        let blurred = gaussian_blur_axis(&gaussian_blur_axis(&mask, a, true), b, false);
        compare(format!("mask_x{a}_y{b}"), blurred);
    }
    assert!(failures.is_empty(), "blur differs from OpenCV:\n{}", failures.join("\n"));
}

/// Inpainting with the plain checkpoint: masked content fill / original / latent noise / latent
/// nothing, mask blur, invert, "whole picture" and "only masked".
#[test]
fn inpaint_matches_a1111_reference_within_two_levels() {
    check_cases(&|name| name.starts_with("inpaint_"));
}

/// Hires fix with every latent upscale mode and the Pillow upscalers (`hr_scale`, `hr_resize_x/y`
/// with the latent crop, second-pass steps, a different hires sampler, scheduler and prompt).
#[test]
fn hires_fix_matches_a1111_reference_within_two_levels() {
    check_cases(&|name| name.starts_with("hires_"));
}

/// img2img resize modes 1 (crop and resize), 2 (resize and fill) and 3 (latent upscale).
#[test]
fn img2img_resize_modes_match_a1111_reference_within_two_levels() {
    check_cases(&|name| name.starts_with("img2img_resize_"));
}

/// The second pass runs at the upscaled size, crops to an explicit target, and a latent and a
/// pixel upscaler feed it different latents (the goldens above check the pixels themselves).
#[test]
fn hires_fix_latent_and_lanczos_upscalers_produce_target_sizes() {
    let model = StableDiffusion::load(&fixture("tiny/tiny-sd15.safetensors"), Placement::cpu()).unwrap();
    let text = TextEncoders::new(&model, &[]).unwrap();
    let base = serde_json::json!({"prompt": "a cat", "negative_prompt": "", "seed": 5, "steps": 3,
        "width": 32, "height": 32, "sampler_name": "Euler", "enable_hr": true, "denoising_strength": 0.5,
        "hr_second_pass_steps": 2});
    let mut hook = |_: usize, _: usize, _: &tch::Tensor| Control::Continue;
    let mut run = |extra: Value| {
        let mut r = base.clone();
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let images = txt2img(&model, &text, &spec_from_request(&r), &mut hook, &mut || false).unwrap();
        (images[0].image.width, images[0].image.height, images[0].image.data.clone())
    };
    let (w, h, latent) = run(serde_json::json!({"hr_upscaler": "Latent", "hr_scale": 2}));
    assert_eq!((w, h), (64, 64));
    let (w, h, _) = run(
        serde_json::json!({"hr_upscaler": "Latent (nearest-exact)", "hr_resize_x": 64, "hr_resize_y": 48}),
    );
    assert_eq!((w, h), (64, 48));
    let (w, h, lanczos) = run(serde_json::json!({"hr_upscaler": "Lanczos", "hr_scale": 2}));
    assert_eq!((w, h), (64, 64));
    assert_ne!(latent, lanczos, "latent and pixel upscaling feed different second passes");
}

/// The request a client sends for a golden case: `@init` / `@mask` replaced by the base64 of the
/// committed PNGs (as the reference's `expand_request` does).
fn expand_request(request: &Value) -> Value {
    let b64 = |rel: &str| daemon::images::encode_base64(&std::fs::read(fixture(rel)).unwrap());
    let mut sent = request.clone();
    if let Some(images) = sent.get_mut("init_images").and_then(Value::as_array_mut) {
        for im in images.iter_mut().filter(|im| im.as_str() == Some("@init")) {
            *im = Value::from(b64("images/init_32x32.png"));
        }
    }
    if sent.get("mask").and_then(Value::as_str) == Some("@mask") {
        sent["mask"] = Value::from(b64("images/mask_32x32.png"));
    }
    sent
}

/// Every golden case with recorded infotexts (hires fix with a hires sampler, scheduler, prompts
/// and resize; embeddings with emphasis; inpainting with invert, blur, "only masked" and the
/// masked-content modes), run over HTTP: each image's whole infotext equals the one A1111 writes,
/// key for key and in A1111's order. The one deliberate difference is `Version`, which names
/// this daemon.
#[test]
fn infotexts_over_http_equal_a1111_reference_key_for_key() {
    let data_dir = tempfile::tempdir().unwrap();
    let ckpt = data_dir.path().join("models/Stable-diffusion");
    let emb = data_dir.path().join("embeddings");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::create_dir_all(&emb).unwrap();
    std::fs::copy(fixture("tiny/tiny-sd15.safetensors"), ckpt.join("tiny-sd15.safetensors")).unwrap();
    for f in std::fs::read_dir(fixture("embeddings")).unwrap().flatten() {
        std::fs::copy(f.path(), emb.join(f.file_name())).unwrap();
    }
    let d = tests::TestDaemon::start_in(data_dir, &[]).unwrap();
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(fixture("golden/a1111")).unwrap().flatten().map(|e| e.path()).collect();
    cases.sort();
    let ours_version = format!("Version: {}", daemon::validate::VERSION);
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for path in &cases {
        let golden = SafetensorsFile::open(path).unwrap();
        let Some(expected) = golden.metadata().get("infotexts").cloned() else { continue };
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let expected: Vec<String> = serde_json::from_str(&expected).unwrap();
        let md = golden.metadata();
        let request: Value = serde_json::from_str(&md["request"]).unwrap();
        let endpoint = md["endpoint"].clone();
        let answer = d.post(&endpoint, &expand_request(&request)).unwrap();
        assert_eq!(answer.status, 200, "{name}: {}", answer.text);
        let info: Value = serde_json::from_str(answer.json["info"].as_str().unwrap()).unwrap();
        let ours: Vec<&str> =
            info["infotexts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let want: Vec<String> =
            expected.iter().map(|t| t.replace("Version: v1.10.1", &ours_version)).collect();
        if ours != want {
            failures.push(format!("{name}:\n  ours     {ours:?}\n  expected {want:?}"));
        }
        checked.push(name);
    }
    println!("{} cases: {checked:?}", checked.len());
    // The hires, embedding and inpainting cases must all be among them.
    for needed in ["hires_sampler_prompt", "embedding", "hires_embedding_n_iter2", "inpaint_only_masked"] {
        assert!(checked.iter().any(|c| c == needed), "no recorded infotexts for {needed}");
    }
    assert!(failures.is_empty(), "infotexts differ:\n{}", failures.join("\n"));
}

/// The inpainting checkpoint end to end over HTTP: every `inpaintmodel_*` request, sent to
/// `/sdapi/v1/txt2img` or `/img2img` as a client would (the checkpoint picked by
/// `override_settings.sd_model_checkpoint`), returns images within ±2 of the reference.
#[test]
fn inpainting_checkpoint_over_http_matches_a1111_reference_within_two_levels() {
    let data_dir = tempfile::tempdir().unwrap();
    let ckpt = data_dir.path().join("models/Stable-diffusion");
    std::fs::create_dir_all(&ckpt).unwrap();
    inpainting_checkpoint(&ckpt);
    let d = tests::TestDaemon::start_in(data_dir, &[]).unwrap();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixture("golden/a1111"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_stem().is_some_and(|s| s.to_string_lossy().starts_with("inpaintmodel_")))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "inpainting-checkpoint goldens missing");
    let mut failures = Vec::new();
    for path in &cases {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let golden = SafetensorsFile::open(path).unwrap();
        let md = golden.metadata();
        let request: Value = serde_json::from_str(&md["request"]).unwrap();
        let answer = d.post(&md["endpoint"], &expand_request(&request)).unwrap();
        assert_eq!(answer.status, 200, "{name}: {}", answer.text);
        let expected = golden.read("images").unwrap();
        let images = answer.json["images"].as_array().unwrap();
        assert_eq!(images.len() as i64, expected.size()[0], "{name}: image count");
        let mut worst = 0;
        for (i, b64) in images.iter().enumerate() {
            let png = daemon::images::decode_base64(b64.as_str().unwrap()).unwrap();
            let img = daemon::images::decode_rgb(&png, [0, 0, 0]).unwrap();
            let ours = tch::Tensor::from_slice(&img.rgb).reshape([img.height as i64, img.width as i64, 3]);
            let theirs = expected.get(i as i64);
            assert_eq!(ours.size(), theirs.size(), "{name}: image {i} size");
            let diff =
                (ours.to_kind(tch::Kind::Int) - theirs.to_kind(tch::Kind::Int)).abs().max().int64_value(&[]);
            worst = worst.max(diff);
        }
        println!("{name} over HTTP: max difference {worst}");
        if worst > 2 {
            failures.push(format!("{name}: max difference {worst}"));
        }
    }
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}
