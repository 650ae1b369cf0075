//! The smaller endpoints: `/png-info`, `/interrogate`, the extras routes, `/scripts`,
//! `/script-info`, `/extensions`, `/memory` (a1111-api.md §5.5, §7.12–7.14).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::coerce;

/// `POST /sdapi/v1/png-info` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PngInfoRequest {
    /// Base64 or a `data:image/…` URL.
    #[serde(deserialize_with = "coerce::lax")]
    pub image: Option<String>,
}

/// `POST /sdapi/v1/png-info` response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PngInfoResponse {
    /// The raw infotext (`parameters` chunk), or `""`.
    pub info: String,
    /// The other text chunks.
    pub items: BTreeMap<String, Value>,
    /// The parsed infotext (string values).
    pub parameters: Map<String, Value>,
}

/// `POST /sdapi/v1/interrogate` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterrogateRequest {
    #[serde(deserialize_with = "coerce::lax")]
    pub image: Option<String>,
    /// `clip` or `deepdanbooru`.
    #[serde(deserialize_with = "coerce::lax")]
    pub model: Option<String>,
}

impl Default for InterrogateRequest {
    fn default() -> Self {
        InterrogateRequest { image: Some(String::new()), model: Some("clip".into()) }
    }
}

/// The fields shared by both extras requests (a1111-api.md §7.14).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtrasOptions {
    /// 0: scale by `upscaling_resize`; 1: to `upscaling_resize_w` × `upscaling_resize_h`.
    #[serde(deserialize_with = "coerce::lax")]
    pub resize_mode: Option<i64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub show_extras_results: Option<bool>,
    #[serde(deserialize_with = "coerce::lax")]
    pub gfpgan_visibility: Option<f64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub codeformer_visibility: Option<f64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub codeformer_weight: Option<f64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub upscaling_resize: Option<f64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub upscaling_resize_w: Option<i64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub upscaling_resize_h: Option<i64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub upscaling_crop: Option<bool>,
    #[serde(deserialize_with = "coerce::lax")]
    pub upscaler_1: Option<String>,
    #[serde(deserialize_with = "coerce::lax")]
    pub upscaler_2: Option<String>,
    #[serde(deserialize_with = "coerce::lax")]
    pub extras_upscaler_2_visibility: Option<f64>,
    #[serde(deserialize_with = "coerce::lax")]
    pub upscale_first: Option<bool>,
}

impl Default for ExtrasOptions {
    fn default() -> Self {
        ExtrasOptions {
            resize_mode: Some(0),
            show_extras_results: Some(true),
            gfpgan_visibility: Some(0.0),
            codeformer_visibility: Some(0.0),
            codeformer_weight: Some(0.0),
            upscaling_resize: Some(2.0),
            upscaling_resize_w: Some(512),
            upscaling_resize_h: Some(512),
            upscaling_crop: Some(true),
            upscaler_1: Some("None".into()),
            upscaler_2: Some("None".into()),
            extras_upscaler_2_visibility: Some(0.0),
            upscale_first: Some(false),
        }
    }
}

/// `POST /sdapi/v1/extra-single-image` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtrasSingleImageRequest {
    #[serde(flatten)]
    pub options: ExtrasOptions,
    #[serde(deserialize_with = "coerce::lax")]
    pub image: Option<String>,
}

impl Default for ExtrasSingleImageRequest {
    fn default() -> Self {
        ExtrasSingleImageRequest { options: ExtrasOptions::default(), image: Some(String::new()) }
    }
}

/// One image of `extra-batch-images`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileData {
    #[serde(deserialize_with = "coerce::lax")]
    pub data: Option<String>,
    #[serde(deserialize_with = "coerce::lax")]
    pub name: Option<String>,
}

/// `POST /sdapi/v1/extra-batch-images` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtrasBatchImagesRequest {
    #[serde(flatten)]
    pub options: ExtrasOptions,
    #[serde(rename = "imageList")]
    pub image_list: Vec<FileData>,
}

/// `extra-single-image` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtrasSingleImageResponse {
    /// `<p>…</p>` around the HTML-escaped postprocessing infotext.
    pub html_info: String,
    pub image: String,
}

/// `extra-batch-images` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtrasBatchImagesResponse {
    pub html_info: String,
    pub images: Vec<String>,
}

/// `GET /sdapi/v1/scripts`: lower-cased script titles per tab.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptsList {
    pub txt2img: Vec<String>,
    pub img2img: Vec<String>,
}

/// One argument of a script (`/script-info`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptArg {
    pub label: Option<String>,
    pub value: Value,
    pub minimum: Value,
    pub maximum: Value,
    pub step: Value,
    pub choices: Option<Vec<String>>,
}

/// One `/script-info` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptInfo {
    pub name: String,
    pub is_alwayson: bool,
    pub is_img2img: bool,
    pub args: Vec<ScriptArg>,
}

/// One `/extensions` entry (git-installed extensions only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtensionItem {
    pub name: String,
    pub remote: String,
    pub branch: String,
    pub commit_hash: String,
    pub version: String,
    pub commit_date: i64,
    pub enabled: bool,
}

/// `ram` of `GET /sdapi/v1/memory`, in bytes: `used` is this process's resident size, `free`
/// the rest of the machine's memory, as upstream computes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RamUsage {
    pub free: f64,
    pub used: i64,
    pub total: f64,
}

/// `GET /sdapi/v1/memory`. `cuda` is `{"error": "…"}` when no statistics are available.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryResponse {
    pub ram: Value,
    pub cuda: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::parse_body;

    #[test]
    fn extras_single_image_defaults_and_flattened_fields_parse() {
        let r: ExtrasSingleImageRequest =
            parse_body(br#"{"image": "abc", "upscaling_resize": "3", "upscaler_1": "Lanczos"}"#).unwrap();
        assert_eq!(r.image.as_deref(), Some("abc"));
        assert_eq!(r.options.upscaling_resize, Some(3.0));
        assert_eq!(r.options.upscaler_1.as_deref(), Some("Lanczos"));
        assert_eq!(r.options.upscaling_resize_w, Some(512));
    }

    #[test]
    fn interrogate_defaults_to_clip() {
        let r: InterrogateRequest = parse_body(b"{}").unwrap();
        assert_eq!(r.model.as_deref(), Some("clip"));
    }
}
