//! `/jobs/forever`: start, list, show and stop generate-forever jobs ([`crate::forever`]).
//!
//! - `POST /jobs/forever` with a txt2img request body → the new job.
//! - `GET /jobs/forever` → `{"jobs": [...]}`, oldest first.
//! - `GET /jobs/forever/{id}` → one job; `PUT /jobs/forever/{id}` with a txt2img request body
//!   replaces its request from the next batch on; `DELETE /jobs/forever/{id}` asks it to stop
//!   after its current batch. Each answers the job; an unknown id is a 404 in A1111's error
//!   shape.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use compat::api::error::{parse_body, parse_json};
use compat::api::Txt2ImgRequest;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::forever::Forever;
use crate::AppState;

pub async fn start(
    app: web::Data<AppState>,
    forever: web::Data<Forever>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request = txt2img_body(&body)?;
    let job = forever.into_inner().start(app, request);
    tracing::info!(job = %job.id, "forever job started");
    Ok(HttpResponse::Ok().json(job))
}

pub async fn replace(
    forever: web::Data<Forever>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request = txt2img_body(&body)?;
    let job = forever.replace_request(&id, request).ok_or_else(|| unknown(&id))?;
    tracing::info!(job = %job.id, "forever job request replaced");
    Ok(HttpResponse::Ok().json(job))
}

/// The body as a JSON object, checked as txt2img would check it, so that a malformed request is
/// refused now rather than failing batch after batch.
fn txt2img_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    parse_body::<Txt2ImgRequest>(body).map_err(ApiError::Validation)?;
    match parse_json(body) {
        Ok(Value::Object(request)) => Ok(request),
        _ => Err(ApiError::Runtime("a parsed request is not a JSON object; this is a bug".into())),
    }
}

pub async fn list(forever: web::Data<Forever>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"jobs": forever.list()}))
}

pub async fn get(forever: web::Data<Forever>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = forever.get(&id).ok_or_else(|| unknown(&id))?;
    Ok(HttpResponse::Ok().json(job))
}

pub async fn stop(forever: web::Data<Forever>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = forever.stop(&id).ok_or_else(|| unknown(&id))?;
    tracing::info!(job = %job.id, state = ?job.state, "forever job asked to stop");
    Ok(HttpResponse::Ok().json(job))
}

fn unknown(id: &str) -> ApiError {
    ApiError::http(StatusCode::NOT_FOUND, format!("forever job {id} not found"))
}
