//! Request and response types of the `/sdapi/v1` routes, with A1111's field names, defaults and
//! pydantic v1 parsing rules.
//!
//! - [`coerce`]: the lenient field parser every request field goes through.
//! - [`error`]: the error bodies and [`error::parse_body`], which produces FastAPI's 422 body.
//! - [`generation`]: txt2img and img2img requests, the response and its `info` object.
//! - [`options`]: option names and defaults; the GET typing quirk.
//! - [`progress`]: the progress response.
//! - [`catalog`]: list items, and the fixed sampler, scheduler and latent-mode tables.
//! - [`misc`]: png-info, interrogate, extras, scripts, extensions, memory.
//! - [`pyjson`]: JSON text as Python's `json.dumps` writes it (the response `info`).

pub mod catalog;
pub mod coerce;
pub mod error;
pub mod generation;
pub mod misc;
pub mod options;
pub mod progress;
pub mod pyjson;

pub use error::{ErrorBody, ValidationBody, ValidationItem};
pub use generation::{GenerationInfo, Img2ImgRequest, Img2ImgResponse, Txt2ImgRequest, Txt2ImgResponse};
