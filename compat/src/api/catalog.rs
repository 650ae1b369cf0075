//! The list endpoints: `/sd-models`, `/sd-vae`, `/loras`, `/embeddings`, `/samplers`,
//! `/schedulers`, `/upscalers`, `/latent-upscale-modes` and the always-empty lists
//! (a1111-api.md §7.1–7.8), and the latent-mode table of A1111 v1.10.1. The sampler and
//! scheduler tables live in [`crate::samplers`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::samplers::{SamplerInfo, SchedulerInfo};

/// One checkpoint (`GET /sdapi/v1/sd-models`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SdModelItem {
    /// `"<name> [<shorthash>]"`, or `"<name>"` until the file has been hashed.
    pub title: String,
    /// `name` with separators replaced by `_`, without extension.
    pub model_name: String,
    /// First 10 hex digits of the file's sha256, once known.
    pub hash: Option<String>,
    /// Full sha256, once known.
    pub sha256: Option<String>,
    /// Absolute path.
    pub filename: String,
    /// A `.yaml` next to the checkpoint, if any.
    pub config: Option<String>,
}

/// One standalone VAE (`GET /sdapi/v1/sd-vae`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SdVaeItem {
    /// File name with extension.
    pub model_name: String,
    pub filename: String,
}

/// One LoRA (`GET /sdapi/v1/loras`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraItem {
    /// File stem.
    pub name: String,
    /// `ss_output_name` from the metadata, else `name`.
    pub alias: String,
    pub path: String,
    /// The safetensors `__metadata__` (values that hold JSON objects decoded).
    pub metadata: Map<String, Value>,
}

/// One textual-inversion embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingItem {
    pub step: Option<i64>,
    pub sd_checkpoint: Option<String>,
    pub sd_checkpoint_name: Option<String>,
    /// Width of one vector (768 for SD1).
    pub shape: i64,
    pub vectors: i64,
}

/// `GET /sdapi/v1/embeddings`: usable ones, and those that do not fit the loaded model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    pub loaded: BTreeMap<String, EmbeddingItem>,
    pub skipped: BTreeMap<String, EmbeddingItem>,
}

/// One sampler (`GET /sdapi/v1/samplers`); option values are strings upstream (`"True"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerItem {
    pub name: String,
    pub aliases: Vec<String>,
    pub options: BTreeMap<String, String>,
}

/// One schedule type (`GET /sdapi/v1/schedulers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerItem {
    pub name: String,
    pub label: String,
    pub aliases: Option<Vec<String>>,
    pub default_rho: Option<f64>,
    pub need_inner_model: Option<bool>,
}

/// One upscaler (`GET /sdapi/v1/upscalers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpscalerItem {
    pub name: String,
    pub model_name: Option<String>,
    pub model_path: Option<String>,
    pub model_url: Option<String>,
    pub scale: Option<f64>,
}

/// `{"name": …}` items (`/latent-upscale-modes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NameItem {
    pub name: String,
}

/// `/hypernetworks` items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HypernetworkItem {
    pub name: String,
    pub path: Option<String>,
}

/// `/face-restorers` items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceRestorerItem {
    pub name: String,
    pub cmd_dir: Option<String>,
}

/// `/realesrgan-models` items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealesrganItem {
    pub name: String,
    pub path: Option<String>,
    pub scale: Option<i64>,
}

/// `/prompt-styles` items (rows of `styles.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptStyleItem {
    pub name: String,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
}

/// The latent upscale modes (a1111-api.md §7.8).
pub const LATENT_UPSCALE_MODES: &[&str] = &[
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
];

/// The `/samplers` item of a sampler (`compat::samplers` holds the table).
pub fn sampler_item(s: &SamplerInfo) -> SamplerItem {
    SamplerItem {
        name: s.name.into(),
        aliases: s.aliases.iter().map(|a| a.to_string()).collect(),
        options: s.options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// The `/schedulers` item of a schedule type.
pub fn scheduler_item(s: &SchedulerInfo) -> SchedulerItem {
    SchedulerItem {
        name: s.name.into(),
        label: s.label.into(),
        aliases: s.aliases.map(|a| a.iter().map(|x| x.to_string()).collect()),
        default_rho: Some(s.default_rho),
        need_inner_model: Some(s.need_inner_model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::{SAMPLERS, SCHEDULERS};

    #[test]
    fn sampler_and_scheduler_items_serialise_as_a1111() {
        let item = serde_json::to_value(sampler_item(&SAMPLERS[1])).unwrap();
        assert_eq!(item["name"], "DPM++ SDE");
        assert_eq!(item["options"]["scheduler"], "karras");
        assert_eq!(item["options"]["second_order"], "True");
        let sgm = SCHEDULERS.iter().find(|s| s.name == "sgm_uniform").unwrap();
        assert_eq!(
            serde_json::to_value(scheduler_item(sgm)).unwrap(),
            serde_json::json!({"name": "sgm_uniform", "label": "SGM Uniform", "aliases": ["SGMUniform"],
                "default_rho": -1.0, "need_inner_model": true})
        );
    }
}
