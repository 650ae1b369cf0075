//! Randomizer Keywords (prompts.md §3): `<steps:20>`, `<cfg_scale:{5|7}>`, `<checkpoint:…>` …
//! written in a prompt set that image's generation parameters.
//!
//! Differences from the A1111 extension, on purpose (§3.5): every image gets the values of its
//! own prompt (the extension applies the first prompt's values to the whole batch; a batch
//! whose images draw different values is split into sub-batches by [`crate::scripts`]),
//! `width`/`height` work, `seed`/`subseed` set the image's seed, booleans read `false`/`0`/`no`
//! as false, and the tags are removed from the prompt so the infotext shows the settings that
//! were used rather than the tags.

use std::collections::BTreeMap;

use compat::samplers::{sampler_by_name, scheduler_by_name_or_label};
use serde_json::{json, Map, Value};

use crate::catalog::Snapshot;
use crate::engine::job::GenerationMode;
use crate::error::ApiError;
use crate::validate::find_checkpoint_loosely;

/// Keywords that carry over between images as per-image seeds rather than job settings.
pub const SEED_KEYWORDS: &[&str] = &["seed", "subseed"];

/// Every keyword recognised, both modes.
const KEYWORDS: &[&str] = &[
    "checkpoint",
    "vae",
    "clip_skip",
    "cfg_scale",
    "seed",
    "subseed",
    "subseed_strength",
    "sampler_name",
    "scheduler",
    "steps",
    "width",
    "height",
    "tiling",
    "restore_faces",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
    "eta",
    "ddim_discretize",
    "denoising_strength",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "mask_blur",
    "inpainting_mask_weight",
];

/// A prompt with its keyword tags taken out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extracted {
    /// The prompt without the tags.
    pub text: String,
    /// keyword → value of its first occurrence (the value is the tag's first argument).
    pub values: BTreeMap<String, String>,
}

impl Extracted {
    /// The values that decide a sub-batch: everything except the per-image seeds.
    pub fn settings(&self) -> BTreeMap<&str, &str> {
        self.values
            .iter()
            .filter(|(k, _)| !SEED_KEYWORDS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

fn tag_pattern() -> &'static regex::Regex {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        // The extra-network syntax: `<name:arg1:arg2…>`; arguments cannot contain `>`.
        regex::Regex::new(r"<([A-Za-z_0-9]+):([^>]*)>").expect("a constant regex compiles; this is a bug")
    })
}

/// Takes the keyword tags out of `prompt`. Other `<…>` tags (`<lora:…>`) stay.
pub fn extract(prompt: &str) -> Extracted {
    let mut values = BTreeMap::new();
    let text = tag_pattern().replace_all(prompt, |caps: &regex::Captures| {
        let name = caps[1].to_string();
        if !KEYWORDS.contains(&name.as_str()) {
            return caps[0].to_string();
        }
        // Like every extra network, arguments are separated by `:`; the value is the first.
        let value = caps[2].split(':').next().unwrap_or("").trim().to_string();
        values.entry(name).or_insert(value);
        String::new()
    });
    Extracted { text: text.into_owned(), values }
}

fn bad(keyword: &str, value: &str, expected: &str) -> ApiError {
    ApiError::field("prompt", format!("Randomizer keyword <{keyword}:{value}>: expected {expected}"))
}

fn int(keyword: &str, value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .or_else(|_| value.parse::<f64>().map(|f| f as i64))
        .map_err(|_| bad(keyword, value, "an integer"))
}

fn float(keyword: &str, value: &str) -> Result<f64, ApiError> {
    value.parse::<f64>().ok().filter(|f| f.is_finite()).ok_or_else(|| bad(keyword, value, "a number"))
}

fn boolean(keyword: &str, value: &str) -> Result<bool, ApiError> {
    match value.to_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(keyword, value, "true or false")),
    }
}

/// A size keyword: at least 64, rounded down to a multiple of 8.
fn size(keyword: &str, value: &str) -> Result<i64, ApiError> {
    Ok((int(keyword, value)?.max(64) / 8) * 8)
}

/// The value a seed keyword gives (`-1` is left to the caller to draw).
pub fn seed_value(keyword: &str, value: &str) -> Result<i64, ApiError> {
    Ok(int(keyword, value)?.max(-1))
}

/// Writes the settings of `values` into a request body (a txt2img or img2img JSON object).
/// Seeds are not handled here (they are per image).
pub fn apply(
    values: &BTreeMap<&str, &str>,
    body: &mut Map<String, Value>,
    mode: GenerationMode,
    catalog: &Snapshot,
) -> Result<(), ApiError> {
    let mut overrides = Map::new();
    for (&keyword, &value) in values {
        let field = |v: Value| (keyword.to_string(), v);
        let set = match keyword {
            "checkpoint" => {
                let found = find_checkpoint_loosely(catalog, value)
                    .or_else(|| catalog.checkpoints.iter().find(|e| e.model_name == value))
                    .ok_or_else(|| bad(keyword, value, "a checkpoint name"))?;
                overrides.insert("sd_model_checkpoint".into(), json!(found.title()));
                None
            }
            "vae" => {
                let choice = match value.to_lowercase().as_str() {
                    "auto" | "automatic" => "Automatic".to_string(),
                    "none" => "None".to_string(),
                    wanted => {
                        let mut vaes: Vec<&str> = catalog
                            .vaes
                            .iter()
                            .map(|v| v.model_name.as_str())
                            .filter(|n| n.to_lowercase().contains(wanted))
                            .collect();
                        vaes.sort_by_key(|n| n.len());
                        vaes.first().ok_or_else(|| bad(keyword, value, "a VAE name"))?.to_string()
                    }
                };
                overrides.insert("sd_vae".into(), json!(choice));
                None
            }
            "clip_skip" => {
                overrides.insert("CLIP_stop_at_last_layers".into(), json!(int(keyword, value)?.clamp(1, 12)));
                None
            }
            "s_churn" | "s_tmin" | "s_tmax" | "s_noise" | "inpainting_mask_weight" => {
                overrides.insert(keyword.into(), json!(float(keyword, value)?));
                None
            }
            "cfg_scale" => Some(field(json!(float(keyword, value)?.max(1.0)))),
            "subseed_strength" | "eta" | "denoising_strength" => Some(field(json!(float(keyword, value)?))),
            "steps" => Some(field(json!(int(keyword, value)?.max(1)))),
            "width" | "height" => Some(field(json!(size(keyword, value)?))),
            "tiling" | "restore_faces" => Some(field(json!(boolean(keyword, value)?))),
            "sampler_name" => {
                let sampler = sampler_by_name(value).ok_or_else(|| bad(keyword, value, "a sampler name"))?;
                Some(field(json!(sampler.name)))
            }
            "scheduler" => {
                let scheduler = scheduler_by_name_or_label(value)
                    .ok_or_else(|| bad(keyword, value, "a schedule type"))?;
                Some(field(json!(scheduler.label)))
            }
            // The pipeline has a single DDIM discretisation; accepted so prompts written for
            // A1111 keep working.
            "ddim_discretize" => None,
            "hr_scale" if mode == GenerationMode::Txt2Img => {
                Some(field(json!(float(keyword, value)?.max(1.0))))
            }
            "hr_upscaler" if mode == GenerationMode::Txt2Img => Some(field(json!(value))),
            "hr_second_pass_steps" if mode == GenerationMode::Txt2Img => {
                Some(field(json!(int(keyword, value)?.max(1))))
            }
            "hr_resize_x" | "hr_resize_y" if mode == GenerationMode::Txt2Img => {
                Some(field(json!(size(keyword, value)?)))
            }
            "mask_blur" if mode == GenerationMode::Img2Img => {
                Some(field(json!(float(keyword, value)? as i64)))
            }
            // Keywords of the other mode are ignored, as A1111 does.
            _ => None,
        };
        if let Some((k, v)) = set {
            body.insert(k, v);
        }
    }
    if !overrides.is_empty() {
        let slot = body.entry("override_settings").or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        if let Value::Object(map) = slot {
            map.extend(overrides);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_keywords_removed_first_occurrence_wins_other_tags_kept() {
        let e = extract("a cat <steps:3> <lora:x:0.5>, <steps:9><cfg_scale:4.5:extra>");
        assert_eq!(e.text, "a cat  <lora:x:0.5>, ");
        assert_eq!(e.values.get("steps").map(String::as_str), Some("3"));
        assert_eq!(e.values.get("cfg_scale").map(String::as_str), Some("4.5"));
        assert_eq!(e.values.len(), 2);
    }

    #[test]
    fn apply_converts_clamps_and_routes_options() {
        let e =
            extract("<steps:0><width:100><cfg_scale:0.5><clip_skip:30><tiling:false><sampler_name:Euler a>");
        let mut body = Map::new();
        apply(&e.settings(), &mut body, GenerationMode::Txt2Img, &Snapshot::default()).unwrap();
        assert_eq!(body["steps"], json!(1));
        assert_eq!(body["width"], json!(96));
        assert_eq!(body["cfg_scale"], json!(1.0));
        assert_eq!(body["tiling"], json!(false));
        assert_eq!(body["sampler_name"], json!("Euler a"));
        assert_eq!(body["override_settings"]["CLIP_stop_at_last_layers"], json!(12));
    }

    #[test]
    fn apply_unknown_sampler_or_checkpoint_fails() {
        let mut body = Map::new();
        for prompt in ["<sampler_name:Nope>", "<checkpoint:missing>", "<steps:many>"] {
            let e = extract(prompt);
            let err = apply(&e.settings(), &mut body, GenerationMode::Txt2Img, &Snapshot::default());
            assert!(matches!(err, Err(ApiError::Validation(_))), "{prompt}");
        }
    }
}
