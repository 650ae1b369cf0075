//! What A1111 does around every request (a1111-api.md §1.2, §1.4): the `X-Process-Time` header,
//! CORS for the origins of `--cors-allow-origins`, and HTTP Basic authentication for
//! `--api-auth`.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};
use base64::Engine as _;

use crate::error::ApiError;
use crate::AppState;

/// Adds `X-Process-Time` (seconds, 4 decimals) to every response.
pub async fn process_time(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let mut res = next.call(req).await?;
    let value = format!("{:.4}", started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().insert(HeaderName::from_static("x-process-time"), v);
    }
    Ok(res)
}

/// Which browser origins may call the API.
pub struct CorsPolicy {
    origins: Vec<String>,
    regex: Option<regex::Regex>,
}

impl CorsPolicy {
    /// `None` when neither flag is set: then no CORS headers are sent at all, as in A1111.
    pub fn new(origins: Option<&str>, regex: Option<&str>) -> Result<Option<CorsPolicy>, regex::Error> {
        if origins.is_none() && regex.is_none() {
            return Ok(None);
        }
        let origins = origins
            .map(|o| o.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let regex = regex.map(|r| regex::Regex::new(&format!("^(?:{r})$"))).transpose()?;
        Ok(Some(CorsPolicy { origins, regex }))
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin)
            || self.regex.as_ref().is_some_and(|r| r.is_match(origin))
    }
}

/// CORS with credentials, any method and any header, for allowed origins. Preflights are
/// answered here, before authentication (browsers send no credentials with them).
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(state), Some(origin)) = (state, origin) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(policy) = state.cors.as_ref() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let allowed = policy.allows(&origin);
    let preflight = req.method() == actix_web::http::Method::OPTIONS
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let response = if allowed {
            let requested_headers = req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("*"));
            HttpResponse::Ok()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
                ))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, requested_headers))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .insert_header((header::VARY, "Origin"))
                .body("OK")
        } else {
            HttpResponse::BadRequest().body("Disallowed CORS origin")
        };
        return Ok(req.into_response(response).map_into_boxed_body());
    }
    let mut res = next.call(req).await?.map_into_boxed_body();
    if allowed {
        let headers = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(res)
}

/// HTTP Basic authentication against `--api-auth`; without that flag every request passes and
/// any `Authorization` header is ignored (Open WebUI and SillyTavern always send one).
pub async fn basic_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let verdict = match req.app_data::<web::Data<AppState>>() {
        Some(state) if !state.credentials.is_empty() => {
            check_basic(req.headers().get(header::AUTHORIZATION), &state.credentials)
        }
        _ => Ok(()),
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_boxed_body()),
        Err(e) => Ok(req.into_response(e.error_response()).map_into_boxed_body()),
    }
}

/// A1111's three failure cases, in its order.
pub fn check_basic(header: Option<&HeaderValue>, credentials: &[(String, String)]) -> Result<(), ApiError> {
    let value = header.and_then(|h| h.to_str().ok()).unwrap_or("");
    let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::Unauthorized("Not authenticated"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(ApiError::Unauthorized("Invalid authentication credentials"))?;
    let (user, password) =
        decoded.split_once(':').ok_or(ApiError::Unauthorized("Invalid authentication credentials"))?;
    // Every entry is compared in full, so the time taken does not reveal which part matched.
    let mut ok = false;
    for (u, p) in credentials {
        ok |= constant_time_eq(u.as_bytes(), user.as_bytes())
            & constant_time_eq(p.as_bytes(), password.as_bytes());
    }
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("Incorrect username or password"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> HeaderValue {
        let b64 = base64::engine::general_purpose::STANDARD.encode(user_pass);
        HeaderValue::from_str(&format!("Basic {b64}")).unwrap()
    }

    #[test]
    fn check_basic_reports_a1111_failure_details() {
        let creds = vec![("alice".to_string(), "s3cret".to_string())];
        assert!(check_basic(Some(&basic("alice:s3cret")), &creds).is_ok());
        let detail = |h: Option<HeaderValue>| check_basic(h.as_ref(), &creds).err().unwrap().to_string();
        assert_eq!(detail(None), "Not authenticated");
        assert_eq!(detail(Some(HeaderValue::from_static("Bearer x"))), "Not authenticated");
        assert_eq!(detail(Some(HeaderValue::from_static("Basic %%%"))), "Invalid authentication credentials");
        assert_eq!(detail(Some(basic("nocolon"))), "Invalid authentication credentials");
        assert_eq!(detail(Some(basic("alice:wrong"))), "Incorrect username or password");
        assert_eq!(detail(Some(basic("bob:s3cret"))), "Incorrect username or password");
    }

    #[test]
    fn cors_policy_matches_listed_origins_and_regex() {
        assert!(CorsPolicy::new(None, None).unwrap().is_none());
        let p = CorsPolicy::new(Some("http://a.test, http://b.test"), Some(r"https://.*\.example"))
            .unwrap()
            .unwrap();
        assert!(p.allows("http://b.test"));
        assert!(p.allows("https://ui.example"));
        assert!(!p.allows("https://ui.example.evil"));
        assert!(!p.allows("http://c.test"));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abcd"));
    }
}
