//! What runs around a txt2img/img2img request before and after the engine (prompts.md §2.8,
//! §3, §4): the Dynamic Prompts extension ([`dynamic`]), Randomizer Keywords
//! ([`crate::keywords`]) and the X/Y/Z plot ([`xyz`], positional or as the native `xyz_plot`
//! object).
//!
//! The routes here wrap [`crate::routes::generate`]: a request that needs none of this is
//! passed through untouched. Otherwise the templates are expanded per image, keyword tags are
//! taken out of each prompt, and the images are grouped into runs that share the same
//! settings. Each run becomes one ordinary generation request carrying its per-image prompts
//! and seeds (the [`PER_IMAGE_SCRIPT`] entry that [`crate::validate`] reads), and the answers
//! are merged in image order into one response. A job whose images all share their settings
//! is still one engine job; the engine job type has one set of settings, so images with
//! different settings run as several jobs.

pub mod dynamic;
pub mod xyz;

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use compat::api::error::{from_value, parse_json};
use compat::api::{pyjson, GenerationInfo, Img2ImgRequest, Txt2ImgRequest};
use serde_json::{json, Map, Value};

use crate::engine::job::{GenerationMode, JobError};
use crate::error::ApiError;
use crate::keywords;
use crate::routes::{blocking, generate};
use crate::validate::{self, is_dynamic_prompts_title, PerImage, PER_IMAGE_SCRIPT};
use crate::AppState;

/// `POST /sdapi/v1/txt2img`.
pub async fn txt2img(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    handle(state, body, GenerationMode::Txt2Img).await
}

/// `POST /sdapi/v1/img2img`.
pub async fn img2img(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    handle(state, body, GenerationMode::Img2Img).await
}

async fn handle(state: web::Data<AppState>, body: web::Bytes, mode: GenerationMode) -> HttpResponse {
    // Malformed bodies are reported by the generation route itself, with FastAPI's messages.
    let Ok(Value::Object(request)) = parse_json(&body) else { return delegate(state, body, mode).await };
    let script = request.get("script_name").and_then(Value::as_str).unwrap_or("").to_lowercase();
    let native_plot = request.get(xyz::NATIVE_FIELD).is_some_and(|v| !v.is_null());
    if script == xyz::SCRIPT_NAME || native_plot {
        return match xyz::run(state, request, mode).await {
            Ok(r) => r,
            Err(e) => e.error_response(),
        };
    }
    match run(state.clone(), request, mode).await {
        Ok(Some(response)) => response,
        Ok(None) => delegate(state, body, mode).await,
        Err(e) => e.error_response(),
    }
}

async fn delegate(state: web::Data<AppState>, body: web::Bytes, mode: GenerationMode) -> HttpResponse {
    match mode {
        GenerationMode::Txt2Img => generate::txt2img(state, body).await,
        GenerationMode::Img2Img => generate::img2img(state, body).await,
    }
}

/// Runs one request body as an ordinary generation (no script handling).
pub(crate) async fn generate_plain(
    state: &web::Data<AppState>,
    body: &Map<String, Value>,
    mode: GenerationMode,
) -> HttpResponse {
    let bytes = web::Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    delegate(state.clone(), bytes, mode).await
}

/// Runs `request` with templates and keywords applied; `None` when it has neither and can go
/// to the engine as it is.
pub(crate) async fn run(
    state: web::Data<AppState>,
    request: Map<String, Value>,
    mode: GenerationMode,
) -> Result<Option<HttpResponse>, ApiError> {
    let state2 = state.clone();
    let req2 = request.clone();
    let Some(subrequests) = blocking(move || plan(&state2, &req2, mode)).await? else { return Ok(None) };
    let mut answers = Vec::with_capacity(subrequests.len());
    for sub in &subrequests {
        let response = generate_plain(&state, sub, mode).await;
        if response.status() != StatusCode::OK {
            return Ok(Some(response));
        }
        answers.push(read_answer(response).await?);
    }
    let merged = merge(answers, &request)?;
    Ok(Some(merged.into_response()))
}

/// A successful generation answer, taken apart.
pub(crate) struct Answer {
    pub task_id: Option<String>,
    pub body: Map<String, Value>,
    pub info: GenerationInfo,
}

impl Answer {
    pub(crate) fn images(&self) -> Vec<String> {
        self.body
            .get("images")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn into_response(mut self) -> HttpResponse {
        self.body.insert("info".into(), Value::String(pyjson::to_string(&self.info)));
        let mut response = HttpResponse::Ok();
        if let Some(id) = &self.task_id {
            response.insert_header(("x-task-id", id.as_str()));
        }
        response.json(Value::Object(self.body))
    }
}

pub(crate) async fn read_answer(response: HttpResponse) -> Result<Answer, ApiError> {
    let task_id = response.headers().get("x-task-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = actix_web::body::to_bytes(response.into_body())
        .await
        .map_err(|e| ApiError::Runtime(format!("reading a generation answer: {e}")))?;
    let body: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Runtime(format!("a generation answer is not JSON: {e}")))?;
    let info_text = body.get("info").and_then(Value::as_str).unwrap_or("{}");
    let info: GenerationInfo = serde_json::from_str(info_text)
        .map_err(|e| ApiError::Runtime(format!("a generation answer's info does not parse: {e}")))?;
    Ok(Answer { task_id, body, info })
}

/// One answer out of several, in order: images and per-image lists concatenated, the rest
/// from the first; `parameters` echoes the original request.
fn merge(answers: Vec<Answer>, request: &Map<String, Value>) -> Result<Answer, ApiError> {
    let mut answers = answers.into_iter();
    let mut first = answers.next().ok_or_else(|| ApiError::Runtime("no images were generated".into()))?;
    let mut images = first.images();
    for next in answers {
        images.extend(next.images());
        let (a, b) = (&mut first.info, next.info);
        a.all_prompts.extend(b.all_prompts);
        a.all_negative_prompts.extend(b.all_negative_prompts);
        a.all_seeds.extend(b.all_seeds);
        a.all_subseeds.extend(b.all_subseeds);
        a.infotexts.extend(b.infotexts);
    }
    first.body.insert("images".into(), json!(images));
    if let Some(Value::Object(params)) = first.body.get_mut("parameters") {
        for (k, v) in request {
            params.insert(k.clone(), v.clone());
        }
        if !request.contains_key("alwayson_scripts") {
            params.insert("alwayson_scripts".into(), json!({}));
        }
    }
    Ok(first)
}

/// The requests to run in order, or `None` when the request needs no expansion.
fn plan(
    state: &AppState,
    request: &Map<String, Value>,
    mode: GenerationMode,
) -> Result<Option<Vec<Map<String, Value>>>, ApiError> {
    let snapshot = state.catalog.snapshot();
    let inputs = match mode {
        GenerationMode::Txt2Img => {
            let Ok(req) = from_value::<Txt2ImgRequest>(Value::Object(request.clone())) else {
                return Ok(None);
            };
            validate::txt2img_prompt_inputs(&req, &snapshot)
        }
        GenerationMode::Img2Img => {
            let Ok(req) = from_value::<Img2ImgRequest>(Value::Object(request.clone())) else {
                return Ok(None);
            };
            validate::img2img_prompt_inputs(&req, &snapshot)
        }
    };
    // Range errors are left to the generation route, which reports them in full.
    let Ok(inputs) = inputs else { return Ok(None) };
    let scripts = request.get("alwayson_scripts").and_then(Value::as_object);
    let args = dynamic::DpArgs::from_scripts(scripts)?;
    let source: std::sync::Arc<dyn wildcards::WildcardSource> = state.wildcards.clone();
    let mut per_image = if args.enabled {
        dynamic::expand(source, &args, &inputs)?
    } else {
        PerImage {
            prompts: vec![inputs.prompt.clone(); inputs.seeds.len()],
            negative_prompts: vec![inputs.negative_prompt.clone(); inputs.seeds.len()],
            seeds: inputs.seeds.clone(),
            subseeds: inputs.subseeds.clone(),
        }
    };

    let extracted: Vec<keywords::Extracted> =
        per_image.prompts.iter().map(|p| keywords::extract(p)).collect();
    let unchanged = per_image.prompts.iter().all(|p| *p == inputs.prompt)
        && per_image.negative_prompts.iter().all(|p| *p == inputs.negative_prompt)
        && per_image.seeds.len() == inputs.seeds.len()
        && extracted.iter().all(|e| e.values.is_empty());
    if unchanged && !has_dynamic_prompts_entry(scripts) {
        return Ok(None);
    }
    for (i, e) in extracted.iter().enumerate() {
        if let Some(v) = e.values.get("seed") {
            per_image.seeds[i] = validate::resolve_seed(Some(keywords::seed_value("seed", v)?));
        }
        if let Some(v) = e.values.get("subseed") {
            per_image.subseeds[i] = validate::resolve_seed(Some(keywords::seed_value("subseed", v)?));
        }
    }
    per_image.prompts = extracted.iter().map(|e| e.text.clone()).collect();

    let settings: Vec<BTreeMap<&str, &str>> = extracted.iter().map(keywords::Extracted::settings).collect();
    let runs = runs(&settings, inputs.batch_size);
    let init_images = request.get("init_images").and_then(Value::as_array).map_or(0, Vec::len);
    if runs.len() > 1 && init_images > 1 {
        return Err(JobError::Unsupported(
            "images with different Randomizer Keyword settings cannot share several init images".into(),
        )
        .into());
    }
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let range = run.start..run.start + run.batch_size * run.n_iter;
        let mut sub = request.clone();
        sub.insert("prompt".into(), json!(per_image.prompts[run.start]));
        sub.insert("negative_prompt".into(), json!(per_image.negative_prompts[run.start]));
        sub.insert("seed".into(), json!(per_image.seeds[run.start]));
        sub.insert("subseed".into(), json!(per_image.subseeds[run.start]));
        sub.insert("batch_size".into(), json!(run.batch_size));
        sub.insert("n_iter".into(), json!(run.n_iter));
        let lists = PerImage {
            prompts: per_image.prompts[range.clone()].to_vec(),
            negative_prompts: per_image.negative_prompts[range.clone()].to_vec(),
            seeds: per_image.seeds[range.clone()].to_vec(),
            subseeds: per_image.subseeds[range].to_vec(),
        };
        let mut scripts: Map<String, Value> = scripts
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !is_dynamic_prompts_title(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        scripts.insert(PER_IMAGE_SCRIPT.into(), json!({"args": [lists]}));
        sub.insert("alwayson_scripts".into(), Value::Object(scripts));
        keywords::apply(&settings[run.start], &mut sub, mode, &snapshot)?;
        out.push(sub);
    }
    Ok(Some(out))
}

fn has_dynamic_prompts_entry(scripts: Option<&Map<String, Value>>) -> bool {
    scripts.is_some_and(|m| m.keys().any(|k| is_dynamic_prompts_title(k)))
}

/// Consecutive images that share settings, as generation requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: usize,
    batch_size: usize,
    n_iter: usize,
}

/// Splits the images into runs of equal settings; a run is as many full batches as fit, then
/// one shorter batch for the rest.
fn runs<T: PartialEq>(settings: &[T], batch_size: usize) -> Vec<Run> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < settings.len() {
        let mut end = start + 1;
        while end < settings.len() && settings[end] == settings[start] {
            end += 1;
        }
        let len = end - start;
        let full = len / batch_size;
        if full > 0 {
            out.push(Run { start, batch_size, n_iter: full });
        }
        let rest = len % batch_size;
        if rest > 0 {
            out.push(Run { start: start + full * batch_size, batch_size: rest, n_iter: 1 });
        }
        start = end;
    }
    out
}

/// A template error as a 422 naming the field and, for syntax errors, the position.
pub fn template_error(field: &str, e: wildcards::Error) -> ApiError {
    let mut body = compat::api::error::ValidationBody::field(field, e.to_string());
    if let wildcards::Error::Parse { offset, char_offset, line, column, .. } = &e {
        body.detail[0].ctx =
            Some(json!({"offset": offset, "char_offset": char_offset, "line": line, "column": column}));
    }
    ApiError::Validation(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_uniform_settings_keep_the_batch_shape() {
        assert_eq!(runs(&[1, 1, 1, 1, 1, 1], 3), vec![Run { start: 0, batch_size: 3, n_iter: 2 }]);
    }

    #[test]
    fn runs_changing_settings_split_into_sub_batches() {
        assert_eq!(
            runs(&[1, 1, 2, 2, 2, 1], 2),
            vec![
                Run { start: 0, batch_size: 2, n_iter: 1 },
                Run { start: 2, batch_size: 2, n_iter: 1 },
                Run { start: 4, batch_size: 1, n_iter: 1 },
                Run { start: 5, batch_size: 1, n_iter: 1 },
            ]
        );
    }
}
