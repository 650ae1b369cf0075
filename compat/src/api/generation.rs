//! `/sdapi/v1/txt2img` and `/sdapi/v1/img2img` (a1111-api.md §3, §4).
//!
//! A1111 builds these request models from the processing classes' constructor signatures, so every
//! field is optional and nullable: an absent field takes the A1111 default below, an explicit
//! `null` stays `None` (processing then falls back to an option, exactly as upstream), unknown
//! fields are ignored, and every value goes through pydantic's coercions ([`super::coerce`]).
//! Serialising a parsed request gives the `parameters` echo of the response: defaults filled,
//! nulls kept, fields in schema order.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::coerce;

/// Declares a request struct whose fields are all `Option`, coerced by [`coerce::lax`], with a
/// `Default` that holds A1111's defaults (serde takes missing fields from it).
macro_rules! request {
    ($(#[$meta:meta])* $name:ident { $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                #[serde(deserialize_with = "coerce::lax")]
                pub $field: Option<$ty>,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }
    };
}

/// The fields both endpoints share, around the endpoint's own ones, in A1111's schema order:
/// the processing base class, then the endpoint's class, then the API-only fields.
macro_rules! generation_request {
    ($(#[$meta:meta])* $name:ident, denoising_strength = $ds:expr, { $($specific:tt)* }) => {
        request! {
            $(#[$meta])*
            $name {
                /// Positive prompt (attention syntax, `<lora:…>`, `BREAK`, `AND`). Default `""`.
                prompt: String = Some(String::new()),
                /// Default `""`.
                negative_prompt: String = Some(String::new()),
                /// Prompt-style names from `styles.csv`; unknown names are ignored.
                styles: Vec<String> = None,
                /// -1 or null: random.
                seed: i64 = Some(-1),
                /// Variation seed; -1 or null: random.
                subseed: i64 = Some(-1),
                /// 0 disables variation.
                subseed_strength: f64 = Some(0.0),
                /// "Resize seed from height"; ≤ 0 disables.
                seed_resize_from_h: i64 = Some(-1),
                /// "Resize seed from width"; ≤ 0 disables.
                seed_resize_from_w: i64 = Some(-1),
                /// Sampler name; null falls back to `sampler_index`.
                sampler_name: String = None,
                /// Schedule type name or label; null means automatic.
                scheduler: String = None,
                /// Images generated together.
                batch_size: i64 = Some(1),
                /// Batches run one after another.
                n_iter: i64 = Some(1),
                /// The API's default is 50 (the UI's is 20).
                steps: i64 = Some(50),
                cfg_scale: f64 = Some(7.0),
                width: i64 = Some(512),
                height: i64 = Some(512),
                /// Null: option `face_restoration`.
                restore_faces: bool = None,
                /// Null: option `tiling`.
                tiling: bool = None,
                /// Ignored upstream (overwritten with `not save_images`).
                do_not_save_samples: bool = Some(false),
                /// Ignored upstream (overwritten with `not save_images`).
                do_not_save_grid: bool = Some(false),
                /// Null: option `eta_ancestral` or `eta_ddim` by sampler family.
                eta: f64 = None,
                /// img2img strength; in txt2img only used by hires fix (default null there).
                denoising_strength: f64 = $ds,
                s_min_uncond: f64 = None,
                s_churn: f64 = None,
                s_tmax: f64 = None,
                s_tmin: f64 = None,
                s_noise: f64 = None,
                /// Temporary option overrides; null means none.
                override_settings: Map<String, Value> = None,
                override_settings_restore_afterwards: bool = Some(true),
                refiner_checkpoint: String = None,
                refiner_switch_at: f64 = None,
                /// Ignore `<lora:…>` and other extra-network tags.
                disable_extra_networks: bool = Some(false),
                /// Typed as an image upstream but never decoded.
                firstpass_image: String = None,
                comments: Map<String, Value> = None,
                $($specific)*
                /// Use this id instead of a generated `task(…)` id.
                force_task_id: String = None,
                /// Legacy sampler field, used when `sampler_name` is null or empty: the effective
                /// API default sampler is therefore `Euler`.
                sampler_index: String = Some("Euler".into()),
                /// A selectable script title; none exist here, so any name is a 422.
                script_name: String = None,
                script_args: Vec<Value> = Some(Vec::new()),
                /// false: the response's `images` is empty.
                send_images: bool = Some(true),
                /// true: write the images under `outputs/` (the API default saves nothing).
                save_images: bool = Some(false),
                /// `{"<script title>": {"args": [...]}}`.
                alwayson_scripts: Map<String, Value> = Some(Map::new()),
                /// An infotext to fill unset fields from.
                infotext: String = None,
            }
        }
    };
}

generation_request! {
    /// `POST /sdapi/v1/txt2img` (A1111's `StableDiffusionTxt2ImgProcessingAPI`).
    Txt2ImgRequest, denoising_strength = None, {
        /// Hires fix (two passes).
        enable_hr: bool = Some(false),
        /// Legacy hires API: if either is non-zero, `width`/`height` are the target.
        firstphase_width: i64 = Some(0),
        firstphase_height: i64 = Some(0),
        /// Upscale factor when `hr_resize_x == hr_resize_y == 0`.
        hr_scale: f64 = Some(2.0),
        /// A latent mode or an upscaler name; null means `Latent`.
        hr_upscaler: String = None,
        /// 0: same as `steps`. Floats are truncated (AIYA sends `steps / 2`).
        hr_second_pass_steps: i64 = Some(0),
        hr_resize_x: i64 = Some(0),
        hr_resize_y: i64 = Some(0),
        hr_checkpoint_name: String = None,
        hr_sampler_name: String = None,
        hr_scheduler: String = None,
        /// `""`: same as `prompt`.
        hr_prompt: String = Some(String::new()),
        /// `""`: same as `negative_prompt`.
        hr_negative_prompt: String = Some(String::new()),
    }
}

generation_request! {
    /// `POST /sdapi/v1/img2img` (A1111's `StableDiffusionImg2ImgProcessingAPI`).
    Img2ImgRequest, denoising_strength = Some(0.75), {
        /// Base64 images or `data:image/…` URLs; required (null is a 404 upstream).
        init_images: Vec<String> = None,
        /// 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale.
        resize_mode: i64 = Some(0),
        /// instruct-pix2pix models only.
        image_cfg_scale: f64 = None,
        /// Base64 mask; white is regenerated; a transparent RGBA mask uses its alpha.
        mask: String = None,
        mask_blur_x: i64 = Some(4),
        mask_blur_y: i64 = Some(4),
        /// If set, overrides both `mask_blur_x` and `mask_blur_y`.
        mask_blur: i64 = None,
        /// Binarise the mask.
        mask_round: bool = Some(true),
        /// Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
        inpainting_fill: i64 = Some(0),
        /// true: "Only masked"; false: "Whole picture".
        inpaint_full_res: bool = Some(true),
        inpaint_full_res_padding: i64 = Some(0),
        /// 1: inpaint the unmasked area.
        inpainting_mask_invert: i64 = Some(0),
        /// Null: option `initial_noise_multiplier`.
        initial_noise_multiplier: f64 = None,
        /// Typed as an image upstream but never decoded.
        latent_mask: String = None,
        /// false: the echoed `parameters` has `init_images` and `mask` null.
        include_init_images: bool = Some(false),
    }
}

/// The response of both generation endpoints. `P` is the echoed request: the request type
/// itself when answering (so the echo keeps the schema's field order), a `Value` when reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Txt2ImgResponse<P = Value> {
    /// Raw base64 (no `data:` prefix) of every image, PNG with a `parameters` text chunk.
    pub images: Vec<String>,
    /// The request after defaults were filled (see the module docs).
    pub parameters: P,
    /// [`GenerationInfo`] as a JSON string in Python's `json.dumps` style.
    pub info: String,
}

/// img2img answers with the same three keys.
pub type Img2ImgResponse<P = Value> = Txt2ImgResponse<P>;

/// The `info` object (a1111-api.md §4.1), fields in A1111's order. Serialise it with
/// [`super::pyjson::to_string`] to get the string A1111 sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub prompt: String,
    pub all_prompts: Vec<String>,
    pub negative_prompt: String,
    pub all_negative_prompts: Vec<String>,
    pub seed: i64,
    pub all_seeds: Vec<i64>,
    pub subseed: i64,
    pub all_subseeds: Vec<i64>,
    pub subseed_strength: f64,
    pub width: i64,
    pub height: i64,
    pub sampler_name: String,
    pub cfg_scale: f64,
    pub steps: i64,
    pub batch_size: i64,
    pub restore_faces: bool,
    pub face_restoration_model: Option<String>,
    pub sd_model_name: Option<String>,
    pub sd_model_hash: Option<String>,
    pub sd_vae_name: Option<String>,
    pub sd_vae_hash: Option<String>,
    pub seed_resize_from_w: i64,
    pub seed_resize_from_h: i64,
    pub denoising_strength: Option<f64>,
    pub extra_generation_params: Map<String, Value>,
    pub index_of_first_image: i64,
    pub infotexts: Vec<String>,
    pub styles: Vec<String>,
    pub job_timestamp: String,
    pub clip_skip: i64,
    pub is_using_inpainting_conditioning: bool,
    pub version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::parse_body;
    use serde_json::json;

    #[test]
    fn txt2img_empty_body_takes_a1111_defaults() {
        let r: Txt2ImgRequest = parse_body(b"{}").unwrap();
        assert_eq!(r.steps, Some(50));
        assert_eq!(r.cfg_scale, Some(7.0));
        assert_eq!(r.sampler_index.as_deref(), Some("Euler"));
        assert_eq!(r.sampler_name, None);
        assert_eq!(r.save_images, Some(false));
        assert_eq!(r.denoising_strength, None);
        assert_eq!(r.hr_scale, Some(2.0));
        let i: Img2ImgRequest = parse_body(b"{}").unwrap();
        assert_eq!(i.denoising_strength, Some(0.75));
        assert_eq!(i.mask_blur_x, Some(4));
        assert_eq!(i.init_images, None);
    }

    #[test]
    fn txt2img_lenient_body_coerces_ignores_unknown_and_keeps_nulls() {
        let body = json!({
            "prompt": 42, "steps": "20", "cfg_scale": 7, "width": 512.9, "restore_faces": "yes",
            "hr_second_pass_steps": 7.5, "seed": null, "denoising_strength": null,
            "url": "http://x", "n": 3, "clip_skip": 2, "styles": ["a", 1]
        });
        let r: Txt2ImgRequest = parse_body(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("42"));
        assert_eq!(r.steps, Some(20));
        assert_eq!(r.cfg_scale, Some(7.0));
        assert_eq!(r.width, Some(512));
        assert_eq!(r.restore_faces, Some(true));
        assert_eq!(r.hr_second_pass_steps, Some(7));
        assert_eq!(r.seed, None);
        assert_eq!(r.styles, Some(vec!["a".into(), "1".into()]));
    }

    #[test]
    fn txt2img_echo_keeps_schema_order_defaults_and_nulls() {
        let r: Txt2ImgRequest = parse_body(br#"{"prompt": "cat", "seed": null}"#).unwrap();
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            text.starts_with(r#"{"prompt":"cat","negative_prompt":"","styles":null,"seed":null"#),
            "{text}"
        );
        assert!(text.find("\"enable_hr\"").unwrap() < text.find("\"sampler_index\"").unwrap());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["steps"], json!(50));
        assert_eq!(v["cfg_scale"], json!(7.0));
        assert_eq!(v["alwayson_scripts"], json!({}));
    }
}
