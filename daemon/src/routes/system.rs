//! Progress, interrupt and skip, checkpoint unload and reload, png-info, extras, interrogate,
//! memory, command-line flags, scripts, and the documentation routes.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use compat::api::coerce::Lax;
use compat::api::error::parse_body;
use compat::api::misc::{
    ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasOptions, ExtrasSingleImageRequest,
    ExtrasSingleImageResponse, InterrogateRequest, MemoryResponse, PngInfoRequest, PngInfoResponse,
    ScriptInfo, ScriptsList,
};
use compat::api::progress::{ProgressResponse, ProgressState};
use compat::api::ValidationBody;
use compat::infotext::{parse_infotext, ParseOptions};
use serde_json::{json, Map, Value};

use super::{blocking, ROUTES};
use crate::engine::job::RgbImage;
use crate::engine::{JobError, JobKind, Submission};
use crate::error::ApiError;
use crate::images;
use crate::validate::{BUILTIN_ALWAYSON_SCRIPTS, BUILTIN_UPSCALERS};
use crate::AppState;

pub async fn ping() -> HttpResponse {
    HttpResponse::Ok().json(json!({}))
}

/// `GET /progress[?skip_current_image=bool]`: answered from the latest snapshot, never
/// waiting for the engine.
pub async fn progress(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let skip_image = match query.get("skip_current_image") {
        None => false,
        Some(v) => bool::from_value(Value::String(v.clone())).map_err(|msg| {
            ApiError::Validation(ValidationBody::new(
                vec![json!("query"), json!("skip_current_image")],
                msg,
                "type_error.bool",
            ))
        })?,
    };
    let snap = state.engine.progress();
    let flags = state.engine.flags();
    let id = snap.job_id.unwrap_or(0);
    let current_image = match (&snap.preview, skip_image) {
        (Some(preview), false) => {
            let cached = state.preview_cache.lock().expect("preview lock poisoned; this is a bug").clone();
            match cached {
                Some((serial, b64)) if serial == preview.serial => Some(b64),
                _ => {
                    let preview = preview.clone();
                    let b64 = blocking(move || {
                        images::encode_png(&preview.image, &[])
                            .map(|png| (preview.serial, images::encode_base64(&png)))
                            .map_err(|e| ApiError::Runtime(e.to_string()))
                    })
                    .await?;
                    *state.preview_cache.lock().expect("preview lock poisoned; this is a bug") =
                        Some(b64.clone());
                    Some(b64.1)
                }
            }
        }
        _ => None,
    };
    Ok(HttpResponse::Ok().json(ProgressResponse {
        progress: snap.fraction(),
        eta_relative: snap.eta_relative(Instant::now()),
        state: ProgressState {
            skipped: flags.is_skipped(id),
            interrupted: flags.is_interrupted(id),
            stopping_generation: false,
            job: snap.job.clone(),
            job_count: snap.job_count as i64,
            job_timestamp: snap.job_timestamp.clone(),
            job_no: snap.job_no as i64,
            sampling_step: snap.sampling_step as i64,
            sampling_steps: snap.sampling_steps as i64,
        },
        current_image,
        textinfo: snap.textinfo.clone(),
    }))
}

/// Stops the running job at its next step (no-op when idle); answers `{}`.
pub async fn interrupt(state: web::Data<AppState>) -> HttpResponse {
    if let Some(id) = state.engine.interrupt() {
        tracing::info!(job_id = id, "interrupt requested");
    }
    HttpResponse::Ok().json(json!({}))
}

/// Ends the running job's current batch (no-op when idle); answers `null`.
pub async fn skip(state: web::Data<AppState>) -> HttpResponse {
    if let Some(id) = state.engine.skip() {
        tracing::info!(job_id = id, "skip requested");
    }
    HttpResponse::Ok().json(Value::Null)
}

/// Moves the loaded checkpoints off the device (into host memory when `--ram-checkpoints`
/// allows, else frees them); the next generation loads what it needs again.
pub async fn unload_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let submitted = state
        .engine
        .submit(Submission {
            kind: JobKind::Unload,
            checkpoint: None,
            task_id: "unload-checkpoint".into(),
            keep_if_abandoned: true,
        })
        .await?;
    submitted.outcome.await.map_err(|_| ApiError::EngineStopped)??;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Loads the selected checkpoint back onto the device.
pub async fn reload_checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Some(entry) = state.selected_entry() {
        let submitted = state
            .engine
            .submit(Submission {
                kind: JobKind::LoadCheckpoint,
                checkpoint: Some(entry.reference()),
                task_id: "reload-checkpoint".into(),
                keep_if_abandoned: true,
            })
            .await?;
        submitted.outcome.await.map_err(|_| ApiError::EngineStopped)??;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// `POST /png-info`: the `parameters` text chunk and the other text chunks of a PNG.
pub async fn png_info(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: PngInfoRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let image = req.image.unwrap_or_default();
    if image.trim().is_empty() {
        return Ok(HttpResponse::Ok().json(PngInfoResponse::default()));
    }
    let options = ParseOptions {
        skip_pasting: state
            .options
            .get("infotext_skip_pasting")
            .and_then(|v| Vec::<String>::from_value(v).ok())
            .unwrap_or_default(),
        ..ParseOptions::default()
    };
    let response = blocking(move || {
        let bytes = images::decode_base64(&image).map_err(invalid_image)?;
        // Other formats keep their infotext in EXIF, which is not read here.
        let chunks = match images::png_text_chunks(&bytes) {
            Some(chunks) => chunks,
            None => {
                image::guess_format(&bytes).map_err(|_| invalid_image(images::ImageError::Invalid))?;
                Vec::new()
            }
        };
        let mut response = PngInfoResponse::default();
        for (key, text) in chunks {
            if key == "parameters" {
                response.info = text;
            } else {
                response.items.insert(key, Value::String(text));
            }
        }
        // Like A1111, an image without infotext still gets the parser's defaults.
        let parameters = parse_infotext(&response.info).to_parameters(&options);
        if let Ok(Value::Object(map)) = serde_json::to_value(parameters) {
            response.parameters = map;
        }
        Ok(response)
    })
    .await?;
    Ok(HttpResponse::Ok().json(response))
}

fn invalid_image(e: images::ImageError) -> ApiError {
    ApiError::http(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `POST /interrogate`: the checks A1111 makes, then "not available" (no captioning model here).
pub async fn interrogate(body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: InterrogateRequest = parse_body(&body).map_err(ApiError::Validation)?;
    if req.image.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::http(StatusCode::NOT_FOUND, "Image not found"));
    }
    match req.model.as_deref() {
        Some("clip") | Some("deepdanbooru") => {
            Err(JobError::Unsupported("image interrogation is not available in this build".into()).into())
        }
        _ => Err(ApiError::http(StatusCode::NOT_FOUND, "Model not found")),
    }
}

/// Training routes of A1111 that this daemon does not offer.
pub async fn training() -> Result<HttpResponse, ApiError> {
    Err(JobError::Unsupported("embedding and hypernetwork training are not available".into()).into())
}

pub async fn extra_single_image(body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: ExtrasSingleImageRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let response = blocking(move || {
        let (image, info) = postprocess(req.image.as_deref().unwrap_or(""), &req.options)?;
        Ok(ExtrasSingleImageResponse { html_info: html_info(&info), image })
    })
    .await?;
    Ok(HttpResponse::Ok().json(response))
}

pub async fn extra_batch_images(body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: ExtrasBatchImagesRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let response = blocking(move || {
        let mut images = Vec::new();
        let mut info = String::new();
        for file in &req.image_list {
            let (image, text) = postprocess(file.data.as_deref().unwrap_or(""), &req.options)?;
            images.push(image);
            info = text;
        }
        Ok(ExtrasBatchImagesResponse { html_info: html_info(&info), images })
    })
    .await?;
    Ok(HttpResponse::Ok().json(response))
}

fn html_info(info: &str) -> String {
    let escaped = info.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    format!("<p>{escaped}</p>")
}

/// The extras upscale: scale by a factor or to a size (optionally cropping to cover), with one
/// or two of the model-free upscalers blended. Returns the base64 PNG and its infotext.
fn postprocess(encoded: &str, o: &ExtrasOptions) -> Result<(String, String), ApiError> {
    if o.gfpgan_visibility.unwrap_or(0.0) > 0.0 || o.codeformer_visibility.unwrap_or(0.0) > 0.0 {
        return Err(JobError::Unsupported("face restoration is not available in this build".into()).into());
    }
    let bytes = images::decode_base64(encoded).map_err(invalid_image)?;
    let original = images::png_text_chunks(&bytes).unwrap_or_default();
    let input = images::decode_rgb(&bytes, [255, 255, 255]).map_err(invalid_image)?;
    let upscaler_1 = o.upscaler_1.clone().unwrap_or_else(|| "None".into());
    let upscaler_2 = o.upscaler_2.clone().unwrap_or_else(|| "None".into());
    for name in [&upscaler_1, &upscaler_2] {
        if !BUILTIN_UPSCALERS.contains(&name.as_str()) {
            return Err(ApiError::Runtime(format!("could not find upscaler named {name}")));
        }
    }
    let mut info = Vec::new();
    let output = if upscaler_1 == "None" {
        input
    } else {
        let (w, h, crop) = match o.resize_mode.unwrap_or(0) {
            1 => {
                let (w, h) = (o.upscaling_resize_w.unwrap_or(512), o.upscaling_resize_h.unwrap_or(512));
                if !(1..=8192).contains(&w) || !(1..=8192).contains(&h) {
                    return Err(ApiError::field("upscaling_resize_w", "the target size must be in 1..=8192"));
                }
                info.push(format!("Postprocess upscale to: {w}x{h}"));
                (w as u32, h as u32, o.upscaling_crop.unwrap_or(true))
            }
            _ => {
                let by = o.upscaling_resize.unwrap_or(2.0);
                if !(by > 0.0 && by <= 8.0) {
                    return Err(ApiError::field("upscaling_resize", format!("must be in (0, 8], got {by}")));
                }
                let shown = if by.fract() == 0.0 { format!("{}", by as i64) } else { format!("{by}") };
                info.push(format!("Postprocess upscale by: {shown}"));
                ((input.width as f64 * by) as u32, (input.height as f64 * by) as u32, false)
            }
        };
        let first = resize(&input, w.max(1), h.max(1), crop, &upscaler_1)?;
        info.push(format!("Postprocess upscaler: {upscaler_1}"));
        let visibility = o.extras_upscaler_2_visibility.unwrap_or(0.0).clamp(0.0, 1.0);
        if upscaler_2 != "None" && visibility > 0.0 {
            let second = resize(&input, w.max(1), h.max(1), crop, &upscaler_2)?;
            info.push(format!("Postprocess upscaler 2: {upscaler_2}"));
            let rgb = first
                .rgb
                .iter()
                .zip(&second.rgb)
                .map(|(&a, &b)| (a as f64 * (1.0 - visibility) + b as f64 * visibility).round() as u8)
                .collect();
            RgbImage { rgb, ..first }
        } else {
            first
        }
    };
    let info = info.join(", ");
    let mut texts: Vec<(&str, &str)> =
        original.iter().filter(|(k, _)| k == "parameters").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if !info.is_empty() {
        texts.push(("postprocessing", info.as_str()));
    }
    let png = images::encode_png(&output, &texts).map_err(|e| ApiError::Runtime(e.to_string()))?;
    Ok((images::encode_base64(&png), info))
}

fn resize(input: &RgbImage, w: u32, h: u32, crop: bool, upscaler: &str) -> Result<RgbImage, ApiError> {
    use image::imageops::{self, FilterType};
    let filter = if upscaler == "Nearest" { FilterType::Nearest } else { FilterType::Lanczos3 };
    let buffer = image::RgbImage::from_raw(input.width, input.height, input.rgb.clone())
        .ok_or_else(|| ApiError::Runtime("decoded image has an inconsistent size".into()))?;
    let out = if crop {
        // Scale to cover the target, then cut the centre.
        let scale = (w as f64 / input.width as f64).max(h as f64 / input.height as f64);
        let (cw, ch) = (
            ((input.width as f64 * scale).round() as u32).max(w),
            ((input.height as f64 * scale).round() as u32).max(h),
        );
        let covered = imageops::resize(&buffer, cw, ch, filter);
        imageops::crop_imm(&covered, (cw - w) / 2, (ch - h) / 2, w, h).to_image()
    } else {
        imageops::resize(&buffer, w, h, filter)
    };
    Ok(RgbImage { width: out.width(), height: out.height(), rgb: out.into_raw() })
}

/// `GET /memory`: process and machine memory from `/proc` (bytes). CUDA statistics are not
/// collected by this build.
pub async fn memory(state: web::Data<AppState>) -> HttpResponse {
    let ram = match read_ram() {
        Some((used, total)) => json!({"free": (total - used) as f64, "used": used, "total": total as f64}),
        None => json!({"error": "memory information is not available on this system"}),
    };
    let cuda = match state.device {
        tch::Device::Cuda(_) => json!({"error": "CUDA memory statistics are not collected by diffusiond"}),
        _ => json!({"error": "unavailable"}),
    };
    HttpResponse::Ok().json(MemoryResponse { ram, cuda })
}

/// (this process's resident bytes, the machine's total bytes), from `/proc`.
fn read_ram() -> Option<(i64, i64)> {
    let kib = |text: &str, key: &str| -> Option<i64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<i64>().ok().map(|k| k * 1024)
    };
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some((kib(&status, "VmRSS:")?, kib(&meminfo, "MemTotal:")?))
}

/// `GET /cmd-flags`: the flags in A1111's names (clients only need an object; AIYA probes it
/// to detect auth). The `--api-auth` credentials are not echoed.
pub async fn cmd_flags(state: web::Data<AppState>) -> HttpResponse {
    let c = &state.config;
    let path = |p: std::path::PathBuf| Value::String(p.to_string_lossy().into_owned());
    HttpResponse::Ok().json(json!({
        "api": true,
        "nowebui": true,
        "api_auth": c.api_auth.as_ref().map(|_| "<set>"),
        "api_log": false,
        "api_server_stop": false,
        "listen": c.listen,
        "port": c.port,
        "server_name": null,
        "subpath": null,
        "data_dir": path(c.data_dir.clone()),
        "models_dir": path(c.data_dir.join("models")),
        "ckpt_dir": path(c.ckpt_dir()),
        "ckpt": c.ckpt.as_ref().map(|p| p.to_string_lossy().into_owned()),
        "lora_dir": path(c.lora_dir()),
        "vae_dir": path(c.vae_dir()),
        "embeddings_dir": path(c.embeddings_dir()),
        "cors_allow_origins": c.cors_allow_origins,
        "cors_allow_origins_regex": c.cors_allow_origins_regex,
        "device": c.device,
        "bf16": c.bf16,
        "vram_checkpoints": c.vram_checkpoints,
        "ram_checkpoints": c.ram_checkpoints,
        "max_queued": c.max_queued,
        "medvram": false,
        "lowvram": false,
        "xformers": false,
        "no_half": matches!(state.device, tch::Device::Cpu),
        "no_hashing": false,
        "timeout_keep_alive": 30,
    }))
}

/// `GET /scripts`: the always-on scripts whose API arguments are accepted (and, as in A1111,
/// ignored in favour of the top-level fields). No selectable scripts exist.
/// Scripts a request can select by `script_name` (A1111 lists them with the always-on ones).
const SELECTABLE_SCRIPTS: &[&str] = &["x/y/z plot"];
/// Always-on scripts that are extensions in A1111 and built in here, listed so that clients
/// detecting them by name find them.
const EXTENSION_SCRIPTS: &[&str] = &["dynamic prompts v2.17.1"];

fn script_names() -> impl Iterator<Item = (&'static str, bool)> {
    SELECTABLE_SCRIPTS
        .iter()
        .map(|n| (*n, false))
        .chain(BUILTIN_ALWAYSON_SCRIPTS.iter().chain(EXTENSION_SCRIPTS).map(|n| (*n, true)))
}

pub async fn scripts() -> HttpResponse {
    let names: Vec<String> = script_names().map(|(n, _)| n.to_string()).collect();
    HttpResponse::Ok().json(ScriptsList { txt2img: names.clone(), img2img: names })
}

pub async fn script_info() -> HttpResponse {
    let info: Vec<ScriptInfo> = [false, true]
        .into_iter()
        .flat_map(|is_img2img| {
            script_names().map(move |(name, is_alwayson)| ScriptInfo {
                name: name.to_string(),
                is_alwayson,
                is_img2img,
                args: Vec::new(),
            })
        })
        .collect();
    HttpResponse::Ok().json(info)
}

/// A small OpenAPI description generated from the route table.
pub async fn openapi() -> HttpResponse {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for r in ROUTES {
        paths.entry(r.path).or_default().insert(
            r.method.to_lowercase(),
            json!({"summary": r.summary, "responses": {"200": {"description": "Successful Response"}}}),
        );
    }
    HttpResponse::Ok().json(json!({
        "openapi": "3.0.2",
        "info": {"title": "diffusiond", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    }))
}

/// A plain HTML index of the routes.
pub async fn docs() -> HttpResponse {
    let rows: String = ROUTES
        .iter()
        .map(|r| {
            format!("<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n", r.method, r.path, r.summary)
        })
        .collect();
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>diffusiond API</title></head><body>\n\
         <h1>diffusiond API</h1>\n<p>The AUTOMATIC1111 <code>/sdapi/v1</code> API. Machine-readable: \
         <a href=\"/openapi.json\">/openapi.json</a>.</p>\n<table>\n<tr><th>method</th><th>path</th>\
         <th>summary</th></tr>\n{rows}</table>\n</body></html>\n"
    );
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page)
}
