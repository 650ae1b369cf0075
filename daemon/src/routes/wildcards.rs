//! `GET /wildcards` (the collections under `<data-dir>/wildcards`, re-read when files change)
//! and `POST /wildcards/expand` (a template expanded without generating images).

use actix_web::{web, HttpResponse};
use compat::api::error::parse_body;
use serde::{Deserialize, Serialize};
use wildcards::{Generator, Mode, Template, WildcardSource};

use super::blocking;
use crate::error::ApiError;
use crate::scripts::template_error;
use crate::AppState;

/// The most prompts one expand request may ask for.
const MAX_COUNT: usize = 10_000;

/// One collection of `GET /wildcards`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WildcardCollection {
    /// The name written between `__` (`animals/mammals`).
    pub name: String,
    /// Number of values.
    pub count: usize,
}

/// `GET /wildcards`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WildcardList {
    pub root: String,
    pub collections: Vec<WildcardCollection>,
    /// Files that could not be read (malformed YAML/JSON, unreadable).
    pub problems: Vec<String>,
}

/// `POST /wildcards/expand`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpandRequest {
    pub template: String,
    /// `random` (default), `combinatorial` or `cyclical`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Prompts wanted; combinatorial: at most this many, 0 or absent = all (up to 1000).
    #[serde(default)]
    pub count: Option<usize>,
    /// Random mode: prompt `i` uses `seed + i`; absent or −1 draws one.
    #[serde(default)]
    pub seed: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExpandResponse {
    pub prompts: Vec<String>,
    pub warnings: Vec<String>,
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = blocking(move || {
        let source = &state.wildcards;
        let cols = source.collections().map_err(|e| ApiError::Runtime(e.to_string()))?;
        Ok(WildcardList {
            root: source.root().display().to_string(),
            collections: cols
                .iter()
                .map(|(name, items)| WildcardCollection { name: name.to_string(), count: items.len() })
                .collect(),
            problems: source.problems(),
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(body))
}

pub async fn expand(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: ExpandRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let mode = match req.mode.as_deref().unwrap_or("random") {
        "random" => Mode::Random,
        "combinatorial" => Mode::Combinatorial,
        "cyclical" => Mode::Cyclical,
        other => {
            return Err(ApiError::field(
                "mode",
                format!("`mode` must be random, combinatorial or cyclical, got {other}"),
            ))
        }
    };
    let count = match (mode, req.count) {
        (_, Some(n)) if n > MAX_COUNT => {
            return Err(ApiError::field("count", format!("`count` must be at most {MAX_COUNT}, got {n}")))
        }
        (_, Some(n)) => n,
        (Mode::Combinatorial, None) => 0,
        (_, None) => 1,
    };
    let seed = crate::validate::resolve_seed(req.seed);
    let template = Template::parse(&req.template).map_err(|e| template_error("template", e))?;
    let out = blocking(move || {
        let source: std::sync::Arc<dyn WildcardSource> = state.wildcards.clone();
        Generator::with_shared_source(source, mode)
            .generate(&template, count, seed)
            .map_err(|e| template_error("template", e))
    })
    .await?;
    Ok(HttpResponse::Ok().json(ExpandResponse {
        prompts: out.prompts,
        warnings: out.warnings.iter().map(ToString::to_string).collect(),
    }))
}
