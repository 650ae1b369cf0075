//! `ApiError`: every way a request can fail, and the one place that maps failures to HTTP
//! (anchors §5). Bodies follow A1111 (a1111-api.md §1.5): FastAPI's `{"detail": [...]}` for
//! validation, `{"error", "detail", "body", "errors"}` for everything else, `{"detail": "Not
//! Found"}` for unknown routes.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use compat::api::{ErrorBody, ValidationBody};
use serde_json::json;

use crate::engine::{JobError, QueueError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body does not parse, or a field is out of range: 422 with FastAPI's body.
    #[error("invalid request: {}", .0.detail.first().map(|d| d.msg.as_str()).unwrap_or(""))]
    Validation(ValidationBody),

    /// What A1111 raises as `HTTPException(status, detail)`.
    #[error("{detail}")]
    Http { status: StatusCode, detail: String },

    /// `sd_model_checkpoint` (or another checkpoint field) names no checkpoint: A1111's 500
    /// `RuntimeError`.
    #[error("model '{0}' not found")]
    UnknownCheckpoint(String),

    /// An option name that does not exist: A1111's 500 `KeyError`.
    #[error("'{0}'")]
    UnknownOption(String),

    /// Any other failure A1111 would report as a 500 `RuntimeError`.
    #[error("{0}")]
    Runtime(String),

    /// Missing or wrong credentials (the detail is one of A1111's three messages).
    #[error("{0}")]
    Unauthorized(&'static str),

    /// The queue is full; the client should retry later.
    #[error("{0}")]
    Overloaded(QueueError),

    /// The engine has stopped (the daemon is shutting down).
    #[error("the engine has stopped")]
    EngineStopped,

    /// The job ran and failed.
    #[error(transparent)]
    Job(#[from] JobError),

    /// No route has this path.
    #[error("Not Found")]
    RouteNotFound,

    /// The path exists, but not with this method.
    #[error("Method Not Allowed")]
    MethodNotAllowed,
}

impl ApiError {
    pub fn http(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError::Http { status, detail: detail.into() }
    }

    pub fn field(field: &str, msg: impl Into<String>) -> Self {
        ApiError::Validation(ValidationBody::field(field, msg))
    }

    fn body(&self) -> serde_json::Value {
        let body = match self {
            ApiError::Validation(v) => return json!(v),
            ApiError::RouteNotFound | ApiError::MethodNotAllowed => {
                return json!({"detail": self.to_string()})
            }
            ApiError::Http { detail, .. } => ErrorBody::http(detail.clone()),
            ApiError::Unauthorized(detail) => ErrorBody::http(*detail),
            ApiError::UnknownCheckpoint(_) | ApiError::Runtime(_) => {
                ErrorBody::exception("RuntimeError", self.to_string())
            }
            ApiError::UnknownOption(_) => ErrorBody::exception("KeyError", self.to_string()),
            ApiError::Overloaded(e) => ErrorBody::http(e.to_string()),
            ApiError::EngineStopped => ErrorBody::exception("RuntimeError", self.to_string()),
            ApiError::Job(e) => {
                let class = match e {
                    JobError::Unsupported(_) => "NotImplementedError",
                    JobError::Invalid(_) => "ValueError",
                    JobError::Oom(_) => "OutOfMemoryError",
                    _ => "RuntimeError",
                };
                ErrorBody::exception(class, e.to_string())
            }
        };
        json!(body)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full(_) => ApiError::Overloaded(e),
            QueueError::Stopped => ApiError::EngineStopped,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Http { status, .. } => *status,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Overloaded(_) | ApiError::EngineStopped => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Job(JobError::Unsupported(_)) => StatusCode::NOT_IMPLEMENTED,
            ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnknownCheckpoint(_)
            | ApiError::UnknownOption(_)
            | ApiError::Runtime(_)
            | ApiError::Job(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            // A1111 drops this header; Forge and SD.Next keep it, and no client minds either way.
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Basic"));
            }
            ApiError::Overloaded(_) => {
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            _ => {}
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn render(e: ApiError) -> (u16, serde_json::Value) {
        let response = e.error_response();
        let status = response.status().as_u16();
        let bytes = response.into_body().try_into_bytes().unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn api_error_renders_a1111_shapes() {
        assert_eq!(
            render(ApiError::UnknownCheckpoint("foo".into())),
            (
                500,
                json!({"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'foo' not found"})
            )
        );
        assert_eq!(
            render(ApiError::http(StatusCode::NOT_FOUND, "Init image not found")),
            (
                404,
                json!({"error": "HTTPException", "detail": "Init image not found", "body": "", "errors": ""})
            )
        );
        assert_eq!(
            render(ApiError::UnknownOption("nope".into())),
            (500, json!({"error": "KeyError", "detail": "", "body": "", "errors": "'nope'"}))
        );
        assert_eq!(render(ApiError::RouteNotFound), (404, json!({"detail": "Not Found"})));
        let (status, body) = render(ApiError::Job(JobError::Unsupported("no pipeline".into())));
        assert_eq!((status, body["error"].as_str()), (501, Some("NotImplementedError")));
        let (status, body) = render(ApiError::field("steps", "`steps` must be in 1..=1000, got 0"));
        assert_eq!(status, 422);
        assert_eq!(body["detail"][0]["loc"], json!(["body", "steps"]));
    }
}
