//! Infotext writing and reading against the worked examples of a1111-api.md §5.6, and the
//! format → parse round trip.

use compat::infotext::{
    format_infotext, parse_infotext, GenerationInfo, HiresInfo, HiresSize, InfotextValue, ParseOptions,
};
use proptest::prelude::*;

const EXAMPLE_1: &str = "cute squirrel\nNegative prompt: ugly, out of frame\nSteps: 20, Sampler: Euler a, \
Schedule type: Automatic, CFG scale: 7.0, Seed: 1003, Size: 512x512, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Version: v1.10.1";

const EXAMPLE_2: &str = "masterpiece, 1girl, <lora:add_detail:0.8>\nNegative prompt: lowres, bad anatomy\n\
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.0, Seed: 42, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Clip skip: 2, \
Hires upscale: 2.0, Hires steps: 10, Hires upscaler: Latent, Lora hashes: \"add_detail: 7c6bad76eb54\", \
Version: v1.10.1";

const EXAMPLE_3: &str = "a red scarf\nSteps: 30, Sampler: Euler, Schedule type: Automatic, CFG scale: 5.5, \
Seed: 1000, Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, \
VAE: sdxl_vae.safetensors, Variation seed: 2000, Variation seed strength: 0.3, Denoising strength: 0.75, \
Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Version: v1.10.1";

fn example_1_info() -> GenerationInfo {
    let mut info =
        GenerationInfo::new("cute squirrel", "ugly, out of frame", 20, "Euler a", 7.0, 1003, (512, 512));
    info.schedule_type = Some("Automatic".into());
    info.model_hash = Some("6ce0161689".into());
    info.model = Some("v1-5-pruned-emaonly".into());
    info.version = Some("v1.10.1".into());
    info
}

#[test]
fn format_infotext_example_1_plain_txt2img() {
    assert_eq!(format_infotext(&example_1_info()), EXAMPLE_1);
}

#[test]
fn format_infotext_example_2_hires_lora_clip_skip() {
    let mut info = GenerationInfo::new(
        "masterpiece, 1girl, <lora:add_detail:0.8>",
        "lowres, bad anatomy",
        25,
        "DPM++ 2M",
        6.0,
        42,
        (512, 768),
    );
    info.schedule_type = Some("Karras".into());
    info.model_hash = Some("6ce0161689".into());
    info.model = Some("v1-5-pruned-emaonly".into());
    info.clip_skip = 2;
    info.version = Some("v1.10.1".into());
    // txt2img's init records the denoising strength first; it still prints in its fixed slot.
    info.push_extra("Denoising strength", 0.5);
    info.push_hires(&HiresInfo {
        checkpoint: None,
        sampler: Some("DPM++ 2M".into()),
        prompt: Some("masterpiece, 1girl, <lora:add_detail:0.8>".into()),
        negative_prompt: Some("lowres, bad anatomy".into()),
        schedule_type: None,
        size: HiresSize::Scale(2.0),
        steps: 10,
        upscaler: Some("Latent".into()),
    });
    info.push_extra("Lora hashes", "add_detail: 7c6bad76eb54");
    assert_eq!(format_infotext(&info), EXAMPLE_2);
}

#[test]
fn format_infotext_example_3_img2img_variation_vae() {
    let mut info = GenerationInfo::new("a red scarf", "", 30, "Euler", 5.5, 1000, (1024, 1024));
    info.schedule_type = Some("Automatic".into());
    info.model_hash = Some("31e35c80fc".into());
    info.model = Some("sd_xl_base_1.0".into());
    info.vae_hash = Some("235745af8d".into());
    info.vae = Some("sdxl_vae.safetensors".into());
    info.variation_seed = Some(2000);
    info.variation_seed_strength = Some(0.3);
    info.denoising_strength = Some(0.75);
    info.push_extra("Mask blur", 4i64);
    info.push_extra("Inpaint area", "Only masked");
    info.push_extra("Masked area padding", 32i64);
    info.version = Some("v1.10.1".into());
    assert_eq!(format_infotext(&info), EXAMPLE_3);
}

#[test]
fn format_infotext_quotes_hires_prompt_with_json_escapes() {
    let mut info = example_1_info();
    info.push_hires(&HiresInfo {
        checkpoint: None,
        sampler: None,
        prompt: Some("sharp focus, \"8k\"".into()),
        negative_prompt: None,
        schedule_type: None,
        size: HiresSize::Resize(1024, 1536),
        steps: 0,
        upscaler: None,
    });
    let text = format_infotext(&info);
    assert!(
        text.contains(", Hires prompt: \"sharp focus, \\\"8k\\\"\", Hires resize: 1024x1536, Version"),
        "{text}"
    );
    assert_eq!(parse_infotext(&text).get("Hires prompt"), Some("sharp focus, \"8k\""));
}

#[test]
fn parse_infotext_example_1_parameters_with_defaults() {
    let parsed = parse_infotext(EXAMPLE_1);
    assert_eq!(parsed.prompt, "cute squirrel");
    assert_eq!(parsed.negative_prompt, "ugly, out of frame");
    let params = parsed.to_parameters(&ParseOptions::default());
    let s = |v: &str| InfotextValue::Str(v.into());
    let i = InfotextValue::Int;
    let want: Vec<(&str, InfotextValue)> = vec![
        ("Steps", s("20")),
        ("Sampler", s("Euler a")),
        ("Schedule type", s("Automatic")),
        ("CFG scale", s("7.0")),
        ("Seed", s("1003")),
        ("Size-1", s("512")),
        ("Size-2", s("512")),
        ("Model hash", s("6ce0161689")),
        ("Model", s("v1-5-pruned-emaonly")),
        ("Version", s("v1.10.1")),
        ("Prompt", s("cute squirrel")),
        ("Negative prompt", s("ugly, out of frame")),
        ("Clip skip", s("1")),
        ("Hires resize-1", i(0)),
        ("Hires resize-2", i(0)),
        ("Hires sampler", s("Use same sampler")),
        ("Hires schedule type", s("Use same scheduler")),
        ("Hires checkpoint", s("Use same checkpoint")),
        ("Hires prompt", s("")),
        ("Hires negative prompt", s("")),
        ("Mask mode", s("Inpaint masked")),
        ("Masked content", s("original")),
        ("Inpaint area", s("Whole picture")),
        ("Masked area padding", i(32)),
        ("RNG", s("GPU")),
        ("Schedule max sigma", i(0)),
        ("Schedule min sigma", i(0)),
        ("Schedule rho", i(0)),
        ("VAE Encoder", s("Full")),
        ("VAE Decoder", s("Full")),
        ("FP8 weight", s("Disable")),
        ("Refiner switch by sampling steps", InfotextValue::Bool(false)),
    ];
    let got: Vec<(&str, InfotextValue)> = params.0.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    assert_eq!(got, want);
    let json = serde_json::to_string(&params).unwrap();
    assert!(json.starts_with("{\"Steps\":\"20\",\"Sampler\":\"Euler a\","), "{json}");
    assert!(json.contains("\"Hires resize-1\":0,"), "{json}");
}

#[test]
fn parse_infotext_example_2_values() {
    let parsed = parse_infotext(EXAMPLE_2);
    assert_eq!(parsed.get("Lora hashes"), Some("add_detail: 7c6bad76eb54"));
    assert_eq!(parsed.get("Hires upscale"), Some("2.0"));
    assert_eq!(parsed.get("Clip skip"), Some("2"));
    assert_eq!((parsed.get("Size-1"), parsed.get("Size-2")), (Some("512"), Some("768")));
    let params = parsed.to_parameters(&ParseOptions::default());
    assert_eq!(params.get("Clip skip"), Some(&InfotextValue::Str("2".into())));
    assert_eq!(params.get("Hires sampler"), Some(&InfotextValue::Str("Use same sampler".into())));
}

#[test]
fn parse_infotext_examples_round_trip_to_same_text() {
    for text in [EXAMPLE_1, EXAMPLE_2, EXAMPLE_3] {
        let info = parse_infotext(text).to_generation_info().unwrap();
        assert_eq!(format_infotext(&info), text);
    }
    let info = parse_infotext(EXAMPLE_3).to_generation_info().unwrap();
    assert_eq!(info.negative_prompt, "");
    assert_eq!(info.variation_seed_strength, Some(0.3));
    assert_eq!(
        info.extra,
        vec![
            ("Mask blur".to_string(), "4".to_string()),
            ("Inpaint area".to_string(), "Only masked".to_string()),
            ("Masked area padding".to_string(), "32".to_string()),
        ]
    );
}

#[test]
fn format_infotext_empty_prompt_and_multiline_negative() {
    let mut info = GenerationInfo::new("", "bad\nworse", 4, "Euler", 1.5, 7, (64, 64));
    info.tiling = true;
    info.seed_resize_from = Some((32, 48));
    info.rng = Some("CPU".into());
    let text = format_infotext(&info);
    assert_eq!(
        text,
        "Negative prompt: bad\nworse\nSteps: 4, Sampler: Euler, CFG scale: 1.5, Seed: 7, Size: 64x64, \
         Seed resize from: 32x48, RNG: CPU, Tiling: True"
    );
    assert_eq!(parse_infotext(&text).to_generation_info().unwrap(), info);
}

/// Text that survives A1111's line handling: no edge whitespace, no line that starts a negative
/// prompt, no carriage returns.
fn line_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9é(),:\\[\\]<>\"\\\\]([a-zA-Z0-9é(),:\\[\\]<> \"\\\\]{0,20}[a-zA-Z0-9é(),:\\[\\]<>\"\\\\])?"
}

fn multi_line() -> impl Strategy<Value = String> {
    prop::collection::vec(line_text(), 1..3).prop_map(|v| v.join("\n"))
}

/// Extra values: any text without edge whitespace that A1111 reads back unchanged. Excluded, as
/// A1111 mis-reads them too: a value equal to its key (written as the bare key), and a value
/// that starts with `"` but is written unquoted (the reader takes it for a quoted value, which
/// can swallow the entries after it).
fn extra_value() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9é.,:/\"\\\\]([a-zA-Z0-9é.,:/ \"\\\\\n]{0,12}[a-zA-Z0-9é.,:/\"\\\\])?"
        .prop_filter("unquoted value starting with a quote", |v| {
            !v.starts_with('"') || v.contains([',', ':', '\n'])
        })
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![(-1e6f64..1e6), (0u32..200).prop_map(|i| f64::from(i) / 8.0), Just(1e-7), Just(3e17)]
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

/// Keys with a fixed slot; an extra entry with such a key is written at the slot.
const FIXED_SLOTS: &[&str] = &[
    "Steps",
    "Sampler",
    "Schedule type",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "Clip skip",
    "Tiling",
    "Version",
    "User",
];

fn info_strategy() -> impl Strategy<Value = GenerationInfo> {
    let base = (
        multi_line(),
        prop_oneof![Just(String::new()), multi_line()],
        1u32..150,
        "[A-Za-z+]([A-Za-z+ ]{0,6}[A-Za-z+])?",
        finite(),
        any::<i64>(),
        (1u32..4096, 1u32..4096),
    );
    let optional = (
        opt("[A-Za-z]{1,8}"),
        opt(finite()),
        opt(any::<i64>()),
        opt(finite()),
        opt((1u32..2048, 1u32..2048)),
        opt(finite()),
        1u32..13,
        any::<bool>(),
        opt("[a-f0-9]{10}"),
        opt("v1\\.[0-9]{1,2}\\.[0-9]"),
    );
    let extra = prop::collection::vec(("[A-Z][a-z]{2,8}( [a-z]{2,6})?", extra_value()), 0..4);
    (base, optional, extra).prop_map(|(b, o, extra)| {
        let mut info = GenerationInfo::new(b.0, b.1, b.2, b.3, b.4, b.5, b.6);
        info.schedule_type = o.0;
        info.image_cfg_scale = o.1;
        info.variation_seed = o.2;
        info.variation_seed_strength = o.3;
        info.seed_resize_from = o.4;
        info.denoising_strength = o.5;
        info.clip_skip = o.6;
        info.tiling = o.7;
        info.model_hash = o.8;
        info.version = o.9;
        for (k, v) in extra {
            // Keys that collide with fixed slots are covered by dedicated tests.
            if k != v && !FIXED_SLOTS.contains(&k.as_str()) {
                info.push_extra(k, v);
            }
        }
        info
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn infotext_format_then_parse_round_trips(info in info_strategy()) {
        let text = format_infotext(&info);
        let parsed = parse_infotext(&text);
        prop_assert_eq!(&parsed.prompt, &info.prompt);
        prop_assert_eq!(&parsed.negative_prompt, &info.negative_prompt);
        let back = parsed.to_generation_info();
        prop_assert_eq!(back.as_ref(), Ok(&info), "text: {:?}", text);
    }

    #[test]
    fn infotext_parse_arbitrary_text_never_panics(text in any::<String>()) {
        let parsed = parse_infotext(&text);
        let _ = parsed.to_parameters(&ParseOptions::default());
        let _ = parsed.to_generation_info();
    }
}
