//! `/sdapi/v1/options` (a1111-api.md §6): the option names and defaults the daemon knows, and the
//! typing quirk of A1111's GET response.
//!
//! A1111 registers about 280 options, most of them for its UI. The table below holds the ones
//! clients read or post and the ones that steer generation, saving and previews; POSTing any other
//! key is a `KeyError` upstream and here. Values are JSON literals so the table stays readable.

use serde_json::{Map, Value};

/// `(name, default as a JSON literal)`, in A1111's settings order where it has one.
pub const DEFAULTS: &[(&str, &str)] = &[
    // Saving images (the API writes files only with `save_images: true`).
    ("samples_save", "true"),
    ("samples_format", "\"png\""),
    ("samples_filename_pattern", "\"\""),
    ("save_images_add_number", "true"),
    ("save_images_replace_action", "\"Replace\""),
    ("grid_save", "true"),
    ("grid_format", "\"png\""),
    ("grid_only_if_multiple", "true"),
    ("return_grid", "true"),
    ("enable_pnginfo", "true"),
    ("save_txt", "false"),
    ("jpeg_quality", "80"),
    ("webp_lossless", "false"),
    ("save_init_img", "false"),
    ("outdir_samples", "\"\""),
    ("outdir_txt2img_samples", "\"outputs/txt2img-images\""),
    ("outdir_img2img_samples", "\"outputs/img2img-images\""),
    ("outdir_extras_samples", "\"outputs/extras-images\""),
    ("outdir_txt2img_grids", "\"outputs/txt2img-grids\""),
    ("outdir_img2img_grids", "\"outputs/img2img-grids\""),
    ("outdir_init_images", "\"outputs/init-images\""),
    ("save_to_dirs", "true"),
    ("grid_save_to_dirs", "true"),
    ("directories_filename_pattern", "\"[date]\""),
    ("directories_max_prompt_words", "8"),
    // Stable Diffusion.
    ("sd_model_checkpoint", "null"),
    ("sd_checkpoint_hash", "\"\""),
    ("sd_checkpoints_limit", "1"),
    ("sd_checkpoints_keep_in_cpu", "true"),
    ("sd_checkpoint_cache", "0"),
    ("sd_vae_checkpoint_cache", "0"),
    ("sd_vae", "\"Automatic\""),
    ("sd_vae_overrides_per_model_preferences", "true"),
    ("sd_unet", "\"Automatic\""),
    ("CLIP_stop_at_last_layers", "1"),
    ("emphasis", "\"Original\""),
    ("enable_emphasis", "true"),
    ("comma_padding_backtrack", "20"),
    ("upcast_attn", "false"),
    ("randn_source", "\"GPU\""),
    ("tiling", "false"),
    ("hires_fix_refiner_pass", "\"second pass\""),
    ("disable_weights_auto_swap", "true"),
    ("fp8_storage", "\"Disable\""),
    ("initial_noise_multiplier", "1.0"),
    ("img2img_color_correction", "false"),
    ("img2img_fix_steps", "false"),
    ("img2img_background_color", "\"#ffffff\""),
    ("inpainting_mask_weight", "1.0"),
    ("upscaler_for_img2img", "null"),
    ("token_merging_ratio", "0.0"),
    ("token_merging_ratio_img2img", "0.0"),
    ("token_merging_ratio_hr", "0.0"),
    // Sampler parameters.
    ("eta_ddim", "0.0"),
    ("eta_ancestral", "1.0"),
    ("ddim_discretize", "\"uniform\""),
    ("s_churn", "0.0"),
    ("s_tmin", "0.0"),
    ("s_tmax", "0.0"),
    ("s_noise", "1.0"),
    ("sigma_min", "0.0"),
    ("sigma_max", "0.0"),
    ("rho", "0.0"),
    ("eta_noise_seed_delta", "0"),
    ("always_discard_next_to_last_sigma", "false"),
    ("sgm_noise_multiplier", "false"),
    ("uni_pc_variant", "\"bh1\""),
    ("uni_pc_skip_type", "\"time_uniform\""),
    ("uni_pc_order", "3"),
    ("uni_pc_lower_order_final", "true"),
    ("sd_noise_schedule", "\"Default\""),
    ("skip_early_cond", "0.0"),
    ("beta_dist_alpha", "0.6"),
    ("beta_dist_beta", "0.6"),
    // Face restoration and upscaling.
    ("face_restoration", "false"),
    ("face_restoration_model", "\"CodeFormer\""),
    ("code_former_weight", "0.5"),
    ("face_restoration_unload", "false"),
    ("ESRGAN_tile", "192"),
    ("ESRGAN_tile_overlap", "8"),
    ("realesrgan_enabled_models", "[\"R-ESRGAN 4x+\", \"R-ESRGAN 4x+ Anime6B\"]"),
    ("dat_enabled_models", "[\"DAT x2\", \"DAT x3\", \"DAT x4\"]"),
    // Infotext.
    ("add_model_hash_to_info", "true"),
    ("add_model_name_to_info", "true"),
    ("add_user_name_to_info", "false"),
    ("add_version_to_infotext", "true"),
    ("add_vae_name_to_info", "true"),
    ("add_vae_hash_to_info", "true"),
    ("infotext_styles", "\"Apply if any\""),
    ("infotext_skip_pasting", "[]"),
    ("lora_add_hashes_to_infotext", "true"),
    ("textual_inversion_add_hashes_to_infotext", "true"),
    // Live previews.
    ("live_previews_enable", "true"),
    ("live_previews_image_format", "\"png\""),
    ("show_progress_grid", "true"),
    ("show_progress_every_n_steps", "10"),
    ("show_progress_type", "\"Approx NN\""),
    ("live_preview_content", "\"Prompt\""),
    ("live_preview_refresh_period", "1000"),
    ("interrupt_after_current", "true"),
    // API.
    ("api_enable_requests", "true"),
    ("api_forbid_local_requests", "true"),
    ("api_useragent", "\"\""),
    // UI settings clients read.
    ("quicksettings_list", "[\"sd_model_checkpoint\"]"),
    ("hide_samplers", "[]"),
    // Extra networks.
    ("sd_lora", "\"None\""),
    ("lora_preferred_name", "\"Alias from file\""),
    ("sd_hypernetwork", "\"None\""),
    ("extra_networks_default_multiplier", "1.0"),
];

/// Options the API may not change (a1111-api.md §6.2): posted values are ignored.
pub const API_RESTRICTED: &[&str] = &["api_enable_requests", "api_forbid_local_requests", "api_useragent"];

/// Every option with its default value.
pub fn defaults() -> Map<String, Value> {
    DEFAULTS
        .iter()
        .map(|(k, v)| {
            let value =
                serde_json::from_str(v).expect("option defaults are valid JSON literals; this is a bug");
            (k.to_string(), value)
        })
        .collect()
}

/// The default of `key`, if it is a known option.
pub fn default_of(key: &str) -> Option<Value> {
    DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| {
        serde_json::from_str(v).expect("option defaults are valid JSON literals; this is a bug")
    })
}

/// A value as A1111's GET response writes it: that response model types each option by its
/// default, so an option whose default is a non-zero int is written as a float
/// (`"CLIP_stop_at_last_layers": 1.0`), while options with falsy defaults keep whatever JSON
/// value is stored.
pub fn to_wire(default: &Value, value: Value) -> Value {
    let int_typed = default.as_i64().is_some_and(|d| d != 0);
    match &value {
        Value::Number(n) if int_typed => n.as_f64().map(Value::from).unwrap_or(value),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_parse_and_have_no_duplicate_names() {
        let map = defaults();
        assert_eq!(map.len(), DEFAULTS.len());
        assert_eq!(map["samples_format"], json!("png"));
        assert_eq!(map["sd_model_checkpoint"], Value::Null);
    }

    #[test]
    fn to_wire_nonzero_int_default_is_written_as_float() {
        assert_eq!(to_wire(&json!(1), json!(2)), json!(2.0));
        assert_eq!(to_wire(&json!(0), json!(31337)), json!(31337));
        assert_eq!(to_wire(&json!(1.0), json!(1)), json!(1));
        assert_eq!(to_wire(&json!(80), json!("x")), json!("x"));
    }
}
