//! HTTP routes.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/internal/ping", web::get().to(ping))
        .route("/sdapi/v1/sd-models", web::get().to(sd_models))
        .route("/sdapi/v1/options", web::get().to(options));
}

async fn ping() -> HttpResponse {
    HttpResponse::Ok().json(json!({}))
}

async fn sd_models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.checkpoints)
}

async fn options(state: web::Data<AppState>) -> HttpResponse {
    let status = state.engine.status.read().expect("status lock poisoned; this is a bug").clone();
    HttpResponse::Ok().json(json!({
        "sd_model_checkpoint": status.checkpoint,
        "diffusiond_architecture": status.architecture,
    }))
}
