//! `GET` and `POST /sdapi/v1/options` (a1111-api.md §6).
//!
//! GET returns every known option; `sd_model_checkpoint` is always the current title of the
//! selected checkpoint, so it equals one of `/sd-models`' titles. POST accepts the whole GET
//! object back (Open WebUI does exactly that). Changing `sd_model_checkpoint` is a job on the
//! engine queue, ordered with generations; the request returns once the model is ready.
//!
//! Unlike A1111, a POST is all or nothing: unknown keys and unknown checkpoints are reported
//! before anything is applied (A1111 applies the keys before a bad one).

use actix_web::{web, HttpResponse};
use compat::api::coerce::Lax;
use compat::api::error::parse_json;
use compat::api::options::{default_of, to_wire, API_RESTRICTED};
use compat::api::ValidationBody;
use serde_json::{json, Value};

use super::blocking;
use crate::catalog::CheckpointEntry;
use crate::engine::{JobKind, Submission};
use crate::error::ApiError;
use crate::AppState;

/// Keys GET adds that are derived, not stored: posting them back is accepted and ignored.
const DERIVED: &[&str] = &["sd_checkpoint_hash", "diffusiond_architecture"];

pub async fn get_options(state: web::Data<AppState>) -> HttpResponse {
    let mut all = state.options.all();
    let selected = state.selected_entry();
    all.insert("sd_model_checkpoint".into(), selected.as_ref().map_or(Value::Null, |e| e.title().into()));
    all.insert(
        "sd_checkpoint_hash".into(),
        selected.as_ref().and_then(|e| e.sha256.clone()).unwrap_or_default().into(),
    );
    let mut wire: serde_json::Map<String, Value> = all
        .into_iter()
        .map(|(k, v)| {
            let v = match default_of(&k) {
                Some(default) => to_wire(&default, v),
                None => v,
            };
            (k, v)
        })
        .collect();
    // Informational: what the active checkpoint is, as detected from its tensors.
    wire.insert("diffusiond_architecture".into(), json!(state.engine.status().architecture));
    HttpResponse::Ok().json(wire)
}

pub async fn set_options(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let Value::Object(changes) = parse_json(&body).map_err(ApiError::Validation)? else {
        return Err(ApiError::Validation(ValidationBody::new(
            vec![json!("body")],
            "value is not a valid dict",
            "type_error.dict",
        )));
    };
    let snapshot = state.catalog.snapshot();
    let target = match changes.get("sd_model_checkpoint") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let name = String::from_value(value.clone()).unwrap_or_else(|_| value.to_string());
            Some(snapshot.find_checkpoint(&name).cloned().ok_or(ApiError::UnknownCheckpoint(name))?)
        }
    };
    if let Some(key) = changes
        .iter()
        .find(|(k, v)| !v.is_null() && default_of(k).is_none() && !DERIVED.contains(&k.as_str()))
        .map(|(k, _)| k.clone())
    {
        return Err(ApiError::UnknownOption(key));
    }
    if let Some(entry) = target {
        let current = state.selected.read().expect("selection lock poisoned; this is a bug").clone();
        if current.as_ref() != Some(&entry.path) {
            switch_checkpoint(&state, entry).await?;
        }
    }
    let updates: Vec<(String, Value)> = changes
        .into_iter()
        .filter(|(k, _)| {
            k != "sd_model_checkpoint"
                && !DERIVED.contains(&k.as_str())
                && !API_RESTRICTED.contains(&k.as_str())
                && default_of(k).is_some()
        })
        .collect();
    let state2 = state.clone();
    blocking(move || {
        state2.options.set(updates).map_err(|e| ApiError::Runtime(format!("saving config.json: {e}")))
    })
    .await?;
    Ok(HttpResponse::Ok().json(Value::Null))
}

/// Loads `entry` through the engine queue, then makes it the selected checkpoint and records
/// its canonical title (hashing the file first if needed, as A1111 does on load).
pub async fn switch_checkpoint(state: &web::Data<AppState>, entry: CheckpointEntry) -> Result<(), ApiError> {
    let submitted = state
        .engine
        .submit(Submission {
            kind: JobKind::LoadCheckpoint,
            checkpoint: Some(entry.reference()),
            task_id: format!("load({})", entry.name),
            // The switch completes even if the client hangs up, as in A1111.
            keep_if_abandoned: true,
        })
        .await?;
    submitted.outcome.await.map_err(|_| ApiError::EngineStopped)??;
    state.select(&entry.path);
    let state2 = state.clone();
    let path = entry.path.clone();
    blocking(move || {
        if let Err(e) = state2.catalog.hash_checkpoint(&path) {
            tracing::warn!(cause = %e, "could not hash checkpoint");
        }
        let title = state2.catalog.snapshot().checkpoint_at(&path).map(|e| e.title()).unwrap_or_default();
        state2
            .options
            .set([("sd_model_checkpoint".to_string(), Value::from(title))])
            .map_err(|e| ApiError::Runtime(format!("saving config.json: {e}")))
    })
    .await?;
    tracing::info!(checkpoint = %entry.name, "checkpoint selected");
    Ok(())
}
