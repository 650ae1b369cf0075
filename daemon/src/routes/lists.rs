//! The list routes and their refreshes (a1111-api.md §7.1–7.9).

use actix_web::{web, HttpResponse};
use compat::api::catalog::{
    sampler_item, scheduler_item, EmbeddingItem, EmbeddingsResponse, NameItem, UpscalerItem,
    LATENT_UPSCALE_MODES,
};
use compat::samplers::{SAMPLERS, SCHEDULERS};
use serde_json::Value;

use super::blocking;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::validate::BUILTIN_UPSCALERS;
use crate::AppState;

pub async fn sd_models(state: web::Data<AppState>) -> HttpResponse {
    let items: Vec<_> = state.catalog.snapshot().checkpoints.iter().map(|e| e.item()).collect();
    HttpResponse::Ok().json(items)
}

pub async fn sd_vae(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.catalog.snapshot().vaes)
}

pub async fn loras(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.catalog.snapshot().loras)
}

pub async fn prompt_styles(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.catalog.snapshot().styles)
}

/// Embeddings whose vector width does not match the active text encoder are `skipped`.
pub async fn embeddings(state: web::Data<AppState>) -> HttpResponse {
    let width = state.engine.status().clip_width;
    let mut response = EmbeddingsResponse::default();
    for e in &state.catalog.snapshot().embeddings {
        let item = EmbeddingItem {
            step: None,
            sd_checkpoint: None,
            sd_checkpoint_name: None,
            shape: e.shape,
            vectors: e.vectors,
        };
        if width.is_none_or(|w| w == e.shape) {
            response.loaded.insert(e.name.clone(), item);
        } else {
            response.skipped.insert(e.name.clone(), item);
        }
    }
    HttpResponse::Ok().json(response)
}

pub async fn samplers() -> HttpResponse {
    HttpResponse::Ok().json(SAMPLERS.iter().map(sampler_item).collect::<Vec<_>>())
}

pub async fn schedulers() -> HttpResponse {
    HttpResponse::Ok().json(SCHEDULERS.iter().map(scheduler_item).collect::<Vec<_>>())
}

/// The model-free upscalers (`None`, `Lanczos`, `Nearest`), then every ESRGAN-family file in
/// `models/ESRGAN` by name (A1111's `sd_upscalers` order and `get_upscalers` fields; A1111
/// reports 4 as the scale of every ESRGAN entry, whatever the file's factor).
pub async fn upscalers(state: web::Data<AppState>) -> HttpResponse {
    let builtin = BUILTIN_UPSCALERS.iter().map(|name| UpscalerItem {
        name: name.to_string(),
        model_name: None,
        model_path: None,
        model_url: None,
        scale: Some(4.0),
    });
    let snapshot = state.catalog.snapshot();
    let files = snapshot.upscalers.iter().map(|u| UpscalerItem {
        name: u.name.clone(),
        model_name: Some("ESRGAN_4x".into()),
        model_path: Some(u.path.to_string_lossy().into_owned()),
        model_url: None,
        scale: Some(4.0),
    });
    let items: Vec<UpscalerItem> = builtin.chain(files).collect();
    HttpResponse::Ok().json(items)
}

pub async fn latent_upscale_modes() -> HttpResponse {
    let items: Vec<NameItem> =
        LATENT_UPSCALE_MODES.iter().map(|n| NameItem { name: n.to_string() }).collect();
    HttpResponse::Ok().json(items)
}

/// Hypernetworks, face restorers, RealESRGAN models and extensions: none exist here.
pub async fn empty_list() -> HttpResponse {
    HttpResponse::Ok().json(Vec::<Value>::new())
}

async fn refresh(state: web::Data<AppState>, f: fn(&Catalog)) -> Result<HttpResponse, ApiError> {
    let catalog = state.catalog.clone();
    blocking(move || {
        f(&catalog);
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Ok().json(Value::Null))
}

pub async fn refresh_checkpoints(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    refresh(state, Catalog::refresh_checkpoints).await
}

pub async fn refresh_vae(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    refresh(state, Catalog::refresh_vaes).await
}

pub async fn refresh_loras(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    refresh(state, Catalog::refresh_loras).await
}

/// Also rereads `styles.csv`, which A1111 reloads on the same kind of user action.
pub async fn refresh_embeddings(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    refresh(state, |c| {
        c.refresh_embeddings();
        c.refresh_styles();
    })
    .await
}
