//! The infotext ("parameters" text) A1111 stores in every image and returns in `info`
//! (a1111-api.md §5): how it is written ([`format_infotext`]) and read ([`parse_infotext`]).
//!
//! Layout: the prompt (possibly several lines), then `Negative prompt: ...` when the negative
//! prompt is non-empty, then one line of `Key: value` entries joined with `", "`; the whole text
//! is stripped. A value is JSON-quoted when its text contains `,`, `:` or a newline, otherwise
//! written as Python's `str()` prints it (`7.0`, `True`). Keys come in A1111's fixed order, then
//! the extra generation parameters in insertion order, then `Version` and `User`.
//!
//! Reading splits off the last line as parameters when it holds at least three `Key: value`
//! matches, unquotes JSON values, splits `WxH` values into `Key-1`/`Key-2`, and
//! [`ParsedInfotext::to_parameters`] adds A1111's defaults (`Clip skip: "1"`, `Hires resize-1: 0`,
//! ...) and its version back-compat flags, producing the png-info `parameters` object.

use std::fmt::Write as _;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::error::InfotextError;
use crate::prompt::parse_attention;
use crate::prompt::text::{is_py_space, is_py_word, py_float, py_int, py_strip};

/// A value as A1111 holds it before printing: printed with Python's `str()`.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl PyValue {
    /// Python's `str(value)`.
    pub fn to_py_string(&self) -> String {
        match self {
            PyValue::Str(s) => s.clone(),
            PyValue::Int(i) => i.to_string(),
            PyValue::Float(f) => py_float_repr(*f),
            PyValue::Bool(true) => "True".to_owned(),
            PyValue::Bool(false) => "False".to_owned(),
        }
    }
}

impl From<&str> for PyValue {
    fn from(s: &str) -> Self {
        PyValue::Str(s.to_owned())
    }
}
impl From<String> for PyValue {
    fn from(s: String) -> Self {
        PyValue::Str(s)
    }
}
impl From<i64> for PyValue {
    fn from(i: i64) -> Self {
        PyValue::Int(i)
    }
}
impl From<u32> for PyValue {
    fn from(i: u32) -> Self {
        PyValue::Int(i.into())
    }
}
impl From<f64> for PyValue {
    fn from(f: f64) -> Self {
        PyValue::Float(f)
    }
}
impl From<bool> for PyValue {
    fn from(b: bool) -> Self {
        PyValue::Bool(b)
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in positional notation when the
/// decimal exponent is in -4..16 (always with a fractional part, `7.0`), otherwise scientific
/// with a signed two-digit-minimum exponent (`1e-05`, `1.5e+16`).
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` also prints the shortest round-trip digits; only the layout differs.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp output has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let point = exp + 1;
    let body = if point <= -4 || point > 16 {
        let m = if digits.len() == 1 { digits.clone() } else { format!("{}.{}", &digits[..1], &digits[1..]) };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    if x < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

/// `json.dumps(s, ensure_ascii=False)`: quotes, `\"`, `\\`, the short escapes for \b \f \n \r \t
/// and `\u00XX` for other control characters; everything else raw.
fn json_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A1111's `quote()`: JSON-quotes a value whose text contains `,`, `:` or a newline.
pub fn quote(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        json_quote(value)
    } else {
        value.to_owned()
    }
}

/// The parameters of one generated image, in A1111's fixed infotext slots, plus the extra
/// generation parameters in insertion order.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationInfo {
    /// The prompt as submitted after styles (extra-network tags, `AND` and brackets kept).
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: u32,
    /// Sampler name without the scheduler suffix (`DPM++ 2M`).
    pub sampler: String,
    /// Scheduler label (`Automatic`, `Karras`, ...); A1111 writes it since 1.9.
    pub schedule_type: Option<String>,
    pub cfg_scale: f64,
    /// Instruct-pix2pix models only.
    pub image_cfg_scale: Option<f64>,
    pub seed: i64,
    /// Face restoration model name, when faces were restored.
    pub face_restoration: Option<String>,
    /// First-pass request size.
    pub width: u32,
    pub height: u32,
    pub model_hash: Option<String>,
    pub model: Option<String>,
    pub fp8_weight: Option<String>,
    pub cache_fp16_weight_for_lora: Option<bool>,
    pub vae_hash: Option<String>,
    pub vae: Option<String>,
    /// Set when the subseed strength is non-zero.
    pub variation_seed: Option<i64>,
    pub variation_seed_strength: Option<f64>,
    pub seed_resize_from: Option<(u32, u32)>,
    /// img2img always; txt2img only with hires fix.
    pub denoising_strength: Option<f64>,
    pub conditional_mask_weight: Option<f64>,
    /// Effective CLIP skip; written only when greater than 1.
    pub clip_skip: u32,
    pub ensd: Option<i64>,
    pub token_merging_ratio: Option<f64>,
    pub token_merging_ratio_hr: Option<f64>,
    pub init_image_hash: Option<String>,
    /// `CPU` or `NV` when the noise source is not the default `GPU`.
    pub rng: Option<String>,
    pub tiling: bool,
    /// A1111's `extra_generation_params` in insertion order, values already printed
    /// ([`PyValue::to_py_string`]): hires keys, img2img mask keys, `Lora hashes`, `TI hashes`,
    /// `Emphasis`, sampler settings, script keys. A key with a fixed slot (for example
    /// `Denoising strength`) is written at that slot, as Python's dict merge does.
    pub extra: Vec<(String, String)>,
    pub version: Option<String>,
    pub user: Option<String>,
}

impl GenerationInfo {
    /// An info with the always-present slots filled and every optional one empty.
    pub fn new(
        prompt: impl Into<String>,
        negative_prompt: impl Into<String>,
        steps: u32,
        sampler: impl Into<String>,
        cfg_scale: f64,
        seed: i64,
        (width, height): (u32, u32),
    ) -> GenerationInfo {
        GenerationInfo {
            prompt: prompt.into(),
            negative_prompt: negative_prompt.into(),
            steps,
            sampler: sampler.into(),
            schedule_type: None,
            cfg_scale,
            image_cfg_scale: None,
            seed,
            face_restoration: None,
            width,
            height,
            model_hash: None,
            model: None,
            fp8_weight: None,
            cache_fp16_weight_for_lora: None,
            vae_hash: None,
            vae: None,
            variation_seed: None,
            variation_seed_strength: None,
            seed_resize_from: None,
            denoising_strength: None,
            conditional_mask_weight: None,
            clip_skip: 1,
            ensd: None,
            token_merging_ratio: None,
            token_merging_ratio_hr: None,
            init_image_hash: None,
            rng: None,
            tiling: false,
            extra: Vec::new(),
            version: None,
            user: None,
        }
    }

    /// Records an extra generation parameter the way A1111's dict assignment does: a new key is
    /// appended, an existing one keeps its position and takes the new value.
    pub fn push_extra(&mut self, key: impl Into<String>, value: impl Into<PyValue>) {
        let key = key.into();
        let value = value.into().to_py_string();
        match self.extra.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.extra.push((key, value)),
        }
    }

    /// Appends the hires-fix keys in the order and with the presence rules of A1111's txt2img.
    pub fn push_hires(&mut self, hires: &HiresInfo) {
        if let Some(checkpoint) = &hires.checkpoint {
            self.push_extra("Hires checkpoint", checkpoint.as_str());
        }
        if let Some(sampler) = hires.sampler.as_ref().filter(|s| **s != self.sampler) {
            let sampler = sampler.clone();
            self.push_extra("Hires sampler", sampler);
        }
        if let Some(prompt) = hires.prompt.as_ref().filter(|p| **p != self.prompt) {
            let prompt = prompt.clone();
            self.push_extra("Hires prompt", prompt);
        }
        if let Some(negative) = hires.negative_prompt.as_ref().filter(|p| **p != self.negative_prompt) {
            let negative = negative.clone();
            self.push_extra("Hires negative prompt", negative);
        }
        if let Some(schedule) = &hires.schedule_type {
            self.push_extra("Hires schedule type", schedule.as_str());
        }
        match hires.size {
            HiresSize::Scale(scale) => self.push_extra("Hires upscale", scale),
            HiresSize::Resize(w, h) => self.push_extra("Hires resize", format!("{w}x{h}")),
        }
        if hires.steps != 0 {
            self.push_extra("Hires steps", hires.steps);
        }
        if let Some(upscaler) = &hires.upscaler {
            self.push_extra("Hires upscaler", upscaler.as_str());
        }
    }
}

/// How the hires pass sized its output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HiresSize {
    /// `hr_scale` (no explicit resize): `Hires upscale: 2.0`.
    Scale(f64),
    /// `hr_resize_x`/`hr_resize_y`: `Hires resize: 1024x1536`.
    Resize(u32, u32),
}

/// The hires-fix request fields that appear in the infotext.
#[derive(Debug, Clone, PartialEq)]
pub struct HiresInfo {
    /// Checkpoint short title, when the hires pass used a different checkpoint.
    pub checkpoint: Option<String>,
    /// Hires sampler; written only when it differs from the main sampler.
    pub sampler: Option<String>,
    /// Hires prompt; written only when it differs from the main prompt.
    pub prompt: Option<String>,
    /// Hires negative prompt; written only when it differs from the main one.
    pub negative_prompt: Option<String>,
    /// The schedule label the hires pass recorded (`KDiffusionSampler.get_sigmas`), when it
    /// differs from the one recorded for the first pass.
    pub schedule_type: Option<String>,
    pub size: HiresSize,
    /// `hr_second_pass_steps`; 0 (same as the first pass) is not written.
    pub steps: u32,
    pub upscaler: Option<String>,
}

/// Writes the infotext A1111 would write for `info`.
pub fn format_infotext(info: &GenerationInfo) -> String {
    let s = |v: &Option<String>| v.clone();
    let f = |v: Option<f64>| v.map(py_float_repr);
    let size = |w: u32, h: u32| format!("{w}x{h}");
    // Python dict literal: every slot exists (possibly None) so that extra keys with a fixed
    // slot land there; None values are dropped when joining.
    let mut params: Vec<(String, Option<String>)> = vec![
        ("Steps".into(), Some(info.steps.to_string())),
        ("Sampler".into(), Some(info.sampler.clone())),
        ("Schedule type".into(), s(&info.schedule_type)),
        ("CFG scale".into(), Some(py_float_repr(info.cfg_scale))),
        ("Image CFG scale".into(), f(info.image_cfg_scale)),
        ("Seed".into(), Some(info.seed.to_string())),
        ("Face restoration".into(), s(&info.face_restoration)),
        ("Size".into(), Some(size(info.width, info.height))),
        ("Model hash".into(), s(&info.model_hash)),
        ("Model".into(), s(&info.model)),
        ("FP8 weight".into(), s(&info.fp8_weight)),
        (
            "Cache FP16 weight for LoRA".into(),
            info.cache_fp16_weight_for_lora.map(|b| PyValue::Bool(b).to_py_string()),
        ),
        ("VAE hash".into(), s(&info.vae_hash)),
        ("VAE".into(), s(&info.vae)),
        ("Variation seed".into(), info.variation_seed.map(|v| v.to_string())),
        ("Variation seed strength".into(), f(info.variation_seed_strength)),
        ("Seed resize from".into(), info.seed_resize_from.map(|(w, h)| size(w, h))),
        ("Denoising strength".into(), f(info.denoising_strength)),
        ("Conditional mask weight".into(), f(info.conditional_mask_weight)),
        ("Clip skip".into(), (info.clip_skip > 1).then(|| info.clip_skip.to_string())),
        ("ENSD".into(), info.ensd.map(|v| v.to_string())),
        ("Token merging ratio".into(), f(info.token_merging_ratio)),
        ("Token merging ratio hr".into(), f(info.token_merging_ratio_hr)),
        ("Init image hash".into(), s(&info.init_image_hash)),
        ("RNG".into(), s(&info.rng)),
        ("Tiling".into(), info.tiling.then(|| "True".to_owned())),
    ];
    let mut set = |key: &str, value: Option<String>| match params.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => params.push((key.to_owned(), value)),
    };
    for (key, value) in &info.extra {
        set(key, Some(value.clone()));
    }
    set("Version", s(&info.version));
    set("User", s(&info.user));

    let line = params
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| if k == v { k.clone() } else { format!("{k}: {}", quote(v)) })
        })
        .collect::<Vec<_>>()
        .join(", ");
    let negative = if info.negative_prompt.is_empty() {
        String::new()
    } else {
        format!("\nNegative prompt: {}", info.negative_prompt)
    };
    py_strip(&format!("{}{negative}\n{line}", info.prompt)).to_owned()
}

/// One `Key: value` match of A1111's parameter pattern
/// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` starting at `pos`; returns key, raw
/// value and the end of the match. Every part is greedy and cannot backtrack into a different
/// result, so a direct scan gives the regex's answer.
fn param_at(line: &str, pos: usize) -> Option<(&str, &str, usize)> {
    let rest = &line[pos..];
    let key_start = pos + (rest.len() - rest.trim_start_matches(is_py_space).len());
    let mut chars = line[key_start..].char_indices();
    let (_, first) = chars.next()?;
    if !is_py_word(first) {
        return None;
    }
    let mut key_end = key_start + first.len_utf8();
    for (off, c) in chars {
        if is_py_word(c) || c == ' ' || c == '-' || c == '/' {
            key_end = key_start + off + c.len_utf8();
        } else {
            break;
        }
    }
    if key_end == key_start + first.len_utf8() || line.as_bytes().get(key_end) != Some(&b':') {
        return None;
    }
    let after = &line[key_end + 1..];
    let value_start = key_end + 1 + (after.len() - after.trim_start_matches(is_py_space).len());
    let value_end = quoted_value_end(line, value_start)
        .unwrap_or_else(|| line[value_start..].find(',').map_or(line.len(), |i| value_start + i));
    let end = if line.as_bytes().get(value_end) == Some(&b',') { value_end + 1 } else { value_end };
    Some((&line[key_start..key_end], &line[value_start..value_end], end))
}

/// `"(?:\\.|[^\\"])+"` at `start`, accepted only when followed by `,` or the end of the line.
fn quoted_value_end(line: &str, start: usize) -> Option<usize> {
    let b = line.as_bytes();
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                // `.` does not match a newline; lines never contain one here.
                let next = line[i + 1..].chars().next()?;
                i += 1 + next.len_utf8();
            }
            b'"' => break,
            _ => i += 1,
        }
    }
    if i >= b.len() || i == start + 1 {
        return None;
    }
    let end = i + 1;
    (end == b.len() || b[end] == b',').then_some(end)
}

/// All parameter matches of a line, as `re.findall` finds them.
fn find_params(line: &str) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < line.len() {
        match param_at(line, pos) {
            Some((key, value, end)) => {
                found.push((key, value));
                pos = end;
            }
            None => pos += line[pos..].chars().next().map_or(1, char::len_utf8),
        }
    }
    found
}

/// `json.loads` of a quoted value, or the value unchanged when it is not valid JSON.
fn unquote(value: &str) -> String {
    serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_owned())
}

/// `^(\d+)x(\d+)$` (Python's `$` also matches before one final newline).
fn image_size(value: &str) -> Option<(&str, &str)> {
    let v = value.strip_suffix('\n').unwrap_or(value);
    let (w, h) = v.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then_some((w, h))
}

/// Sets `key` in an insertion-ordered map: existing keys keep their position.
fn dict_set<V>(map: &mut Vec<(String, V)>, key: &str, value: V) {
    match map.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => map.push((key.to_owned(), value)),
    }
}

/// An infotext split into prompt, negative prompt and parameters, before A1111's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedInfotext {
    pub prompt: String,
    pub negative_prompt: String,
    /// Parameters in order of first appearance (a repeated key keeps its first position and its
    /// last value), JSON-quoted values unquoted, `WxH` values split into `Key-1` and `Key-2`.
    /// Entries with an empty value are dropped, as A1111 does.
    pub params: Vec<(String, String)>,
}

/// Reads an infotext as A1111's `parse_generation_parameters` does (styles are not extracted).
pub fn parse_infotext(text: &str) -> ParsedInfotext {
    let mut lines: Vec<&str> = py_strip(text).split('\n').collect();
    let last = lines.pop().expect("split yields at least one piece");
    let param_line = if find_params(last).len() >= 3 {
        last
    } else {
        lines.push(last);
        ""
    };

    let mut prompt = String::new();
    let mut negative_prompt = String::new();
    let mut in_negative = false;
    for line in lines {
        let mut line = py_strip(line);
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = py_strip(rest);
        }
        let target = if in_negative { &mut negative_prompt } else { &mut prompt };
        // A1111 joins with "\n" only once the text is non-empty, so leading blank lines vanish.
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }

    let mut params: Vec<(String, String)> = Vec::new();
    for (key, raw) in find_params(param_line) {
        // An empty value makes A1111's `v[0]` raise; the entry is skipped.
        if raw.is_empty() {
            continue;
        }
        let value = if raw.starts_with('"') && raw.ends_with('"') { unquote(raw) } else { raw.to_owned() };
        match image_size(&value) {
            Some((w, h)) => {
                dict_set(&mut params, &format!("{key}-1"), w.to_owned());
                dict_set(&mut params, &format!("{key}-2"), h.to_owned());
            }
            None => dict_set(&mut params, key, value),
        }
    }
    ParsedInfotext { prompt, negative_prompt, params }
}

/// A value of the png-info `parameters` object: parsed values are strings, some defaults are
/// numbers or booleans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfotextValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Serialize for InfotextValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            InfotextValue::Str(s) => serializer.serialize_str(s),
            InfotextValue::Int(i) => serializer.serialize_i64(*i),
            InfotextValue::Bool(b) => serializer.serialize_bool(*b),
        }
    }
}

impl InfotextValue {
    fn as_str(&self) -> Option<&str> {
        match self {
            InfotextValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python `int(value)` for the values A1111 converts.
    fn as_int(&self) -> Option<i64> {
        match self {
            InfotextValue::Str(s) => py_int(s),
            InfotextValue::Int(i) => Some(*i),
            InfotextValue::Bool(b) => Some(i64::from(*b)),
        }
    }
}

/// The png-info `parameters` object: keys in A1111's insertion order. Serialises as a JSON
/// object in that order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfotextParameters(pub Vec<(String, InfotextValue)>);

impl InfotextParameters {
    pub fn get(&self, key: &str) -> Option<&InfotextValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn set(&mut self, key: &str, value: InfotextValue) {
        dict_set(&mut self.0, key, value);
    }

    fn set_default(&mut self, key: &str, value: InfotextValue) {
        if !self.contains(key) {
            self.0.push((key.to_owned(), value));
        }
    }

    fn str_of(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(InfotextValue::as_str)
    }
}

impl Serialize for InfotextParameters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A1111 settings that change how infotext is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// `auto_backcompat` (default true): add compatibility flags for old `Version` values.
    pub auto_backcompat: bool,
    /// `infotext_skip_pasting` (default empty): keys removed from the result.
    pub skip_pasting: Vec<String>,
    /// `use_old_hires_fix_width_height` (default false).
    pub use_old_hires_fix_width_height: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            auto_backcompat: true,
            skip_pasting: Vec::new(),
            use_old_hires_fix_width_height: false,
        }
    }
}

impl ParsedInfotext {
    /// A parsed parameter value (before defaults).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The dictionary A1111's `parse_generation_parameters` returns (png-info `parameters`):
    /// the parameters, `Prompt`, `Negative prompt`, then the defaults for absent keys, the
    /// legacy `First pass size` conversion, the `Emphasis` default, version back-compat flags,
    /// minus skipped keys.
    pub fn to_parameters(&self, options: &ParseOptions) -> InfotextParameters {
        use InfotextValue::{Bool, Int, Str};
        let mut res =
            InfotextParameters(self.params.iter().map(|(k, v)| (k.clone(), Str(v.clone()))).collect());
        res.set("Prompt", Str(self.prompt.clone()));
        res.set("Negative prompt", Str(self.negative_prompt.clone()));
        res.set_default("Clip skip", Str("1".into()));
        if let Some(hypernet) = res.str_of("Hypernet").map(str::to_owned) {
            let strength = res.str_of("Hypernet strength").unwrap_or("1.0").to_owned();
            let prompt = format!("{}<hypernet:{hypernet}:{strength}>", res.str_of("Prompt").unwrap_or(""));
            res.set("Prompt", Str(prompt));
        }
        if !res.contains("Hires resize-1") {
            res.set("Hires resize-1", Int(0));
            res.set("Hires resize-2", Int(0));
        }
        res.set_default("Hires sampler", Str("Use same sampler".into()));
        res.set_default("Hires schedule type", Str("Use same scheduler".into()));
        res.set_default("Hires checkpoint", Str("Use same checkpoint".into()));
        res.set_default("Hires prompt", Str(String::new()));
        res.set_default("Hires negative prompt", Str(String::new()));
        res.set_default("Mask mode", Str("Inpaint masked".into()));
        res.set_default("Masked content", Str("original".into()));
        res.set_default("Inpaint area", Str("Whole picture".into()));
        res.set_default("Masked area padding", Int(32));
        restore_old_hires_fix_params(&mut res, options.use_old_hires_fix_width_height);
        res.set_default("RNG", Str("GPU".into()));
        res.set_default("Schedule type", Str("Automatic".into()));
        res.set_default("Schedule max sigma", Int(0));
        res.set_default("Schedule min sigma", Int(0));
        res.set_default("Schedule rho", Int(0));
        res.set_default("VAE Encoder", Str("Full".into()));
        res.set_default("VAE Decoder", Str("Full".into()));
        res.set_default("FP8 weight", Str("Disable".into()));
        if !res.contains("Cache FP16 weight for LoRA") && res.str_of("FP8 weight") != Some("Disable") {
            res.set("Cache FP16 weight for LoRA", Bool(false));
        }
        // A1111 checks the prompt as read from the text, without the re-inserted hypernet tag.
        let uses_emphasis = parse_attention(&self.prompt)
            .into_iter()
            .chain(parse_attention(&self.negative_prompt))
            .any(|(text, weight)| weight != 1.0 && text != "BREAK");
        if !res.contains("Emphasis") && uses_emphasis {
            res.set("Emphasis", Str("Original".into()));
        }
        res.set_default("Refiner switch by sampling steps", Bool(false));
        if options.auto_backcompat {
            version_backcompat(&mut res);
        }
        res.0.retain(|(k, _)| !options.skip_pasting.contains(k));
        res
    }

    /// The typed view of the parameters, the inverse of [`format_infotext`]: fixed slots become
    /// fields, every other key (with `Key-1`/`Key-2` pairs joined back into `WxH`) goes to
    /// `extra` in order.
    pub fn to_generation_info(&self) -> Result<GenerationInfo, InfotextError> {
        let required = |key: &str| self.get(key).ok_or_else(|| InfotextError::MissingKey(key.to_owned()));
        let invalid =
            |key: &str, value: &str| InfotextError::InvalidValue { key: key.into(), value: value.into() };
        let float = |key: &str| -> Result<Option<f64>, InfotextError> {
            self.get(key).map(|v| py_float(v).ok_or_else(|| invalid(key, v))).transpose()
        };
        let int = |key: &str| -> Result<Option<i64>, InfotextError> {
            self.get(key).map(|v| py_int(v).ok_or_else(|| invalid(key, v))).transpose()
        };
        let uint = |key: &str| -> Result<Option<u32>, InfotextError> {
            self.get(key)
                .map(|v| py_int(v).and_then(|i| u32::try_from(i).ok()).ok_or_else(|| invalid(key, v)))
                .transpose()
        };
        let text = |key: &str| self.get(key).map(str::to_owned);
        let pair = |key: &str| -> Result<Option<(u32, u32)>, InfotextError> {
            match (uint(&format!("{key}-1"))?, uint(&format!("{key}-2"))?) {
                (Some(w), Some(h)) => Ok(Some((w, h))),
                _ => Ok(None),
            }
        };

        let steps_text = required("Steps")?;
        let steps = uint("Steps")?.ok_or_else(|| invalid("Steps", steps_text))?;
        let sampler = required("Sampler")?.to_owned();
        let cfg_text = required("CFG scale")?;
        let cfg_scale = float("CFG scale")?.ok_or_else(|| invalid("CFG scale", cfg_text))?;
        let seed_text = required("Seed")?;
        let seed = int("Seed")?.ok_or_else(|| invalid("Seed", seed_text))?;
        let (width, height) = pair("Size")?.ok_or_else(|| InfotextError::MissingKey("Size".into()))?;
        let bool_of = |key: &str| -> Result<Option<bool>, InfotextError> {
            match self.get(key) {
                None => Ok(None),
                Some("True") => Ok(Some(true)),
                Some("False") => Ok(Some(false)),
                Some(v) => Err(invalid(key, v)),
            }
        };

        let mut info = GenerationInfo::new(
            self.prompt.clone(),
            self.negative_prompt.clone(),
            steps,
            sampler,
            cfg_scale,
            seed,
            (width, height),
        );
        info.schedule_type = text("Schedule type");
        info.image_cfg_scale = float("Image CFG scale")?;
        info.face_restoration = text("Face restoration");
        info.model_hash = text("Model hash");
        info.model = text("Model");
        info.fp8_weight = text("FP8 weight");
        info.cache_fp16_weight_for_lora = bool_of("Cache FP16 weight for LoRA")?;
        info.vae_hash = text("VAE hash");
        info.vae = text("VAE");
        info.variation_seed = int("Variation seed")?;
        info.variation_seed_strength = float("Variation seed strength")?;
        info.seed_resize_from = pair("Seed resize from")?;
        info.denoising_strength = float("Denoising strength")?;
        info.conditional_mask_weight = float("Conditional mask weight")?;
        info.clip_skip = uint("Clip skip")?.unwrap_or(1);
        info.ensd = int("ENSD")?;
        info.token_merging_ratio = float("Token merging ratio")?;
        info.token_merging_ratio_hr = float("Token merging ratio hr")?;
        info.init_image_hash = text("Init image hash");
        info.rng = text("RNG");
        info.tiling = bool_of("Tiling")?.unwrap_or(false);
        info.version = text("Version");
        info.user = text("User");

        const SLOTS: &[&str] = &[
            "Steps",
            "Sampler",
            "Schedule type",
            "CFG scale",
            "Image CFG scale",
            "Seed",
            "Face restoration",
            "Size-1",
            "Size-2",
            "Model hash",
            "Model",
            "FP8 weight",
            "Cache FP16 weight for LoRA",
            "VAE hash",
            "VAE",
            "Variation seed",
            "Variation seed strength",
            "Seed resize from-1",
            "Seed resize from-2",
            "Denoising strength",
            "Conditional mask weight",
            "Clip skip",
            "ENSD",
            "Token merging ratio",
            "Token merging ratio hr",
            "Init image hash",
            "RNG",
            "Tiling",
            "Version",
            "User",
        ];
        for (key, value) in &self.params {
            if SLOTS.contains(&key.as_str()) {
                continue;
            }
            // `Key-1`/`Key-2` came from one `WxH` value; rebuild it at the first half's place.
            if let Some(base) = key.strip_suffix("-1") {
                if let Some(h) = self.get(&format!("{base}-2")) {
                    info.extra.push((base.to_owned(), format!("{value}x{h}")));
                    continue;
                }
            }
            if let Some(base) = key.strip_suffix("-2") {
                if self.get(&format!("{base}-1")).is_some() {
                    continue;
                }
            }
            info.extra.push((key.clone(), value.clone()));
        }
        Ok(info)
    }
}

/// A1111's `restore_old_hires_fix_params`: converts the pre-1.0 `First pass size` key.
fn restore_old_hires_fix_params(res: &mut InfotextParameters, use_old_width_height: bool) {
    use InfotextValue::Int;
    if use_old_width_height {
        let w = res.get("Hires resize-1").and_then(InfotextValue::as_int).unwrap_or(0);
        let h = res.get("Hires resize-2").and_then(InfotextValue::as_int).unwrap_or(0);
        if w != 0 && h != 0 {
            res.set("Size-1", Int(w));
            res.set("Size-2", Int(h));
            return;
        }
    }
    let (Some(fw), Some(fh)) = (res.get("First pass size-1"), res.get("First pass size-2")) else {
        return;
    };
    // A1111 would raise on non-integers; the conversion is skipped instead.
    let (Some(mut fw), Some(mut fh)) = (fw.as_int(), fh.as_int()) else {
        return;
    };
    let width = res.get("Size-1").map_or(Some(512), InfotextValue::as_int);
    let height = res.get("Size-2").map_or(Some(512), InfotextValue::as_int);
    let (Some(width), Some(height)) = (width, height) else {
        return;
    };
    if fw == 0 || fh == 0 {
        if width * height == 0 {
            return;
        }
        // The old automatic first-pass size: scale to 512x512 worth of pixels, round up to 64.
        let scale = ((512.0 * 512.0) / (width as f64 * height as f64)).sqrt();
        fw = (scale * width as f64 / 64.0).ceil() as i64 * 64;
        fh = (scale * height as f64 / 64.0).ceil() as i64 * 64;
    }
    res.set("Size-1", Int(fw));
    res.set("Size-2", Int(fh));
    res.set("Hires resize-1", Int(width));
    res.set("Hires resize-2", Int(height));
}

/// A PEP 440 version, enough of it to order A1111's version strings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PyVersion {
    epoch: u64,
    release: Vec<u64>,
    /// (a=0, b=1, rc=2; number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: bool,
}

impl PyVersion {
    /// `packaging.version.parse`, `None` for strings it rejects.
    fn parse(text: &str) -> Option<PyVersion> {
        let lower = py_strip(text).to_ascii_lowercase();
        let mut s = lower.strip_prefix('v').unwrap_or(&lower);
        let num = |s: &mut &str| -> Option<u64> {
            let n = s.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            let v = s[..n].parse().ok();
            *s = &s[n..];
            v
        };
        let sep = |s: &mut &str| {
            if let Some(rest) = s.strip_prefix(['-', '_', '.']) {
                *s = rest;
            }
        };
        let mut epoch = 0;
        if let Some(bang) = s.find('!') {
            let mut e = &s[..bang];
            epoch = num(&mut e)?;
            if !e.is_empty() {
                return None;
            }
            s = &s[bang + 1..];
        }
        let mut release = vec![num(&mut s)?];
        while let Some(rest) = s.strip_prefix('.') {
            let mut r = rest;
            match num(&mut r) {
                Some(n) => {
                    release.push(n);
                    s = r;
                }
                None => break,
            }
        }
        let mut pre = None;
        {
            let mut t = s;
            sep(&mut t);
            let labels: [(&str, u8); 7] =
                [("alpha", 0), ("a", 0), ("beta", 1), ("b", 1), ("rc", 2), ("c", 2), ("preview", 2)];
            let labels = labels.iter().chain(&[("pre", 2u8)]);
            if let Some((label, rank)) = labels.clone().find(|(l, _)| t.starts_with(l)) {
                t = &t[label.len()..];
                let mut u = t;
                sep(&mut u);
                let n = num(&mut u);
                if n.is_some() {
                    t = u;
                }
                pre = Some((*rank, n.unwrap_or(0)));
                s = t;
            }
        }
        let mut post = None;
        if let Some(rest) = s.strip_prefix('-') {
            let mut t = rest;
            if let Some(n) = num(&mut t) {
                post = Some(n);
                s = t;
            }
        }
        if post.is_none() {
            let mut t = s;
            sep(&mut t);
            if let Some(label) = ["post", "rev", "r"].into_iter().find(|l| t.starts_with(l)) {
                t = &t[label.len()..];
                let mut u = t;
                sep(&mut u);
                let n = num(&mut u);
                if n.is_some() {
                    t = u;
                }
                post = Some(n.unwrap_or(0));
                s = t;
            }
        }
        let mut dev = None;
        {
            let mut t = s;
            sep(&mut t);
            if let Some(rest) = t.strip_prefix("dev") {
                let mut u = rest;
                sep(&mut u);
                let n = num(&mut u);
                t = if n.is_some() { u } else { rest };
                dev = Some(n.unwrap_or(0));
                s = t;
            }
        }
        let mut local = false;
        if let Some(rest) = s.strip_prefix('+') {
            let ok = !rest.is_empty()
                && rest
                    .split(['-', '_', '.'])
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
            if !ok {
                return None;
            }
            local = true;
            s = "";
        }
        if !s.is_empty() {
            return None;
        }
        while release.len() > 1 && release.last() == Some(&0) {
            release.pop();
        }
        Some(PyVersion { epoch, release, pre, post, dev, local })
    }

    /// packaging's pre-release key: a dev-only release sorts before any pre-release, a release
    /// without pre-release after all of them.
    fn pre_key(&self) -> (u8, u8, u64) {
        match (self.pre, self.post, self.dev) {
            (None, None, Some(_)) => (0, 0, 0),
            (None, _, _) => (2, 0, 0),
            (Some((rank, n)), _, _) => (1, rank, n),
        }
    }
}

impl PartialOrd for PyVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PyVersion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Trailing zero release segments were stripped, so comparing the vectors
        // lexicographically equals comparing them zero-padded. No post-release sorts first, no
        // dev release sorts last.
        let post = |v: &PyVersion| v.post.map_or((0, 0), |n| (1, n));
        let dev = |v: &PyVersion| v.dev.map_or((1, 0), |n| (0, n));
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| self.release.cmp(&other.release))
            .then_with(|| self.pre_key().cmp(&other.pre_key()))
            .then_with(|| post(self).cmp(&post(other)))
            .then_with(|| dev(self).cmp(&dev(other)))
            .then_with(|| self.local.cmp(&other.local))
    }
}

/// A1111's `infotext_versions.parse_version`: a `git describe` string is cut after its second
/// dash-separated part (`v1.7.0-225-gabc` → `v1.7.0-225`, a post-release) before parsing.
fn parse_a1111_version(text: &str) -> Option<PyVersion> {
    let mut parts = text.splitn(3, '-');
    let cut = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(_)) if !a.is_empty() && !b.is_empty() => format!("{a}-{b}"),
        _ => text.to_owned(),
    };
    PyVersion::parse(&cut)
}

/// A1111's `infotext_versions.backcompat`.
fn version_backcompat(res: &mut InfotextParameters) {
    use InfotextValue::Bool;
    let Some(version) = res.str_of("Version").and_then(parse_a1111_version) else {
        return;
    };
    let v = |s: &str| PyVersion::parse(s).expect("constant versions parse");
    let before_160 = version < v("1.6.0");
    if before_160 && res.str_of("Prompt").is_some_and(|p| p.contains('[')) {
        res.set("Old prompt editing timelines", Bool(true));
    }
    if before_160 && matches!(res.str_of("Sampler"), Some("DDIM" | "PLMS")) {
        res.set("Pad conds v0", Bool(true));
    }
    if version < v("v1.7.0-225") {
        res.set("Downcast alphas_cumprod", Bool(true));
    }
    let refiner = res.get("Refiner").is_some_and(|r| match r {
        InfotextValue::Str(s) => !s.is_empty(),
        InfotextValue::Int(i) => *i != 0,
        InfotextValue::Bool(b) => *b,
    });
    if version < v("1.8.0") && refiner {
        res.set("Refiner switch by sampling steps", Bool(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_float_repr_matches_python() {
        let cases = [
            (7.0, "7.0"),
            (0.5, "0.5"),
            (2.0, "2.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e16, "1.5e+16"),
            (123456.789, "123456.789"),
            (-0.75, "-0.75"),
            (-0.0, "-0.0"),
            (1.4300000000000002, "1.4300000000000002"),
            (2.5e-7, "2.5e-07"),
            (1e100, "1e+100"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn quote_only_values_with_comma_colon_or_newline() {
        assert_eq!(quote("Euler a"), "Euler a");
        assert_eq!(quote("say \"hi\""), "say \"hi\"");
        assert_eq!(quote("a: 1"), "\"a: 1\"");
        assert_eq!(quote("sharp focus, \"8k\""), "\"sharp focus, \\\"8k\\\"\"");
        assert_eq!(quote("two\nlines\t\u{1}é"), "\"two\\nlines\\t\\u0001é\"");
    }

    #[test]
    fn find_params_follows_a1111_regex() {
        assert_eq!(
            find_params("Steps: 20, Sampler: Euler a, Lora hashes: \"a: 1, b: 2\", Xy: \"q\" r, Y/Z-w: "),
            vec![
                ("Steps", "20"),
                ("Sampler", "Euler a"),
                ("Lora hashes", "\"a: 1, b: 2\""),
                ("Xy", "\"q\" r"),
                ("Y/Z-w", "")
            ]
        );
        // A key needs two characters and a colon; the scan restarts one character later.
        assert_eq!(find_params("a: 1, Steps 20, bc:2"), vec![("bc", "2")]);
        assert_eq!(
            find_params("x \"\", Empty: \"\", E2: \"\\\"\""),
            vec![("Empty", "\"\""), ("E2", "\"\\\"\"")]
        );
    }

    #[test]
    fn parse_infotext_empty_value_is_dropped_and_bad_json_kept() {
        let p = parse_infotext("p\nSteps: 20, Empty: , Bad: \"\\x\", Seed: 1");
        assert_eq!(p.get("Empty"), None);
        assert_eq!(p.get("Bad"), Some("\"\\x\""));
        assert_eq!(p.get("Seed"), Some("1"));
    }

    #[test]
    fn parse_infotext_short_last_line_is_prompt() {
        let p = parse_infotext("a cat\nSteps: 20, Seed: 1");
        assert_eq!(p.prompt, "a cat\nSteps: 20, Seed: 1");
        assert!(p.params.is_empty());
        let p = parse_infotext("\n\n  first  \n\nsecond\nNegative prompt:  bad \nworse\nAa: 1, Bb: 2, Cc: 3");
        assert_eq!(p.prompt, "first\n\nsecond");
        assert_eq!(p.negative_prompt, "bad\nworse");
    }

    #[test]
    fn pyversion_orders_like_packaging() {
        let v = |s: &str| PyVersion::parse(s).unwrap();
        assert!(v("v1.10.1") > v("1.6.0"));
        assert!(v("1.6.0rc1") < v("1.6.0"));
        assert!(v("1.6") == v("1.6.0"));
        assert!(v("1.7.0-225") > v("1.7.0"));
        assert!(v("1.7.0-224") < v("1.7.0.post225"));
        assert!(v("1.7.0.dev3") < v("1.7.0a1"));
        assert!(v("1.7.0") < v("1.7.0+local"));
        assert!(PyVersion::parse("f2.0.1v1.10.1").is_none());
        assert!(PyVersion::parse("1.0-").is_none());
        assert_eq!(parse_a1111_version("v1.7.0-RC-5-gf92d6149"), Some(v("1.7.0rc0")));
        assert_eq!(parse_a1111_version("v1.6.0-2-g4afaaf8a"), Some(v("1.6.0.post2")));
    }

    #[test]
    fn to_parameters_backcompat_for_old_versions() {
        let p = parse_infotext("[a:b:5]\nSteps: 20, Sampler: DDIM, Seed: 1, Refiner: r, Version: v1.5.2");
        let params = p.to_parameters(&ParseOptions::default());
        assert_eq!(params.get("Old prompt editing timelines"), Some(&InfotextValue::Bool(true)));
        assert_eq!(params.get("Pad conds v0"), Some(&InfotextValue::Bool(true)));
        assert_eq!(params.get("Downcast alphas_cumprod"), Some(&InfotextValue::Bool(true)));
        assert_eq!(params.get("Refiner switch by sampling steps"), Some(&InfotextValue::Bool(true)));
        let off = p.to_parameters(&ParseOptions { auto_backcompat: false, ..ParseOptions::default() });
        assert_eq!(off.get("Old prompt editing timelines"), None);
        assert_eq!(off.get("Refiner switch by sampling steps"), Some(&InfotextValue::Bool(false)));
    }

    #[test]
    fn to_parameters_first_pass_size_conversion() {
        let p = parse_infotext("x\nSteps: 20, Size: 1024x768, First pass size: 0x0, Seed: 3");
        let params = p.to_parameters(&ParseOptions::default());
        assert_eq!(params.get("Size-1"), Some(&InfotextValue::Int(640)));
        assert_eq!(params.get("Size-2"), Some(&InfotextValue::Int(448)));
        assert_eq!(params.get("Hires resize-1"), Some(&InfotextValue::Int(1024)));
        assert_eq!(params.get("Hires resize-2"), Some(&InfotextValue::Int(768)));
    }

    #[test]
    fn to_parameters_hypernet_and_emphasis_and_skip() {
        let p = parse_infotext("a (b)\nSteps: 20, Hypernet: h, Hypernet strength: 0.5, Seed: 1");
        let params =
            p.to_parameters(&ParseOptions { skip_pasting: vec!["Seed".into()], ..ParseOptions::default() });
        assert_eq!(params.get("Prompt"), Some(&InfotextValue::Str("a (b)<hypernet:h:0.5>".into())));
        assert_eq!(params.get("Emphasis"), Some(&InfotextValue::Str("Original".into())));
        assert_eq!(params.get("Seed"), None);
        let plain = parse_infotext("a BREAK b\nSteps: 20, Sampler: x, Seed: 1")
            .to_parameters(&ParseOptions::default());
        assert_eq!(plain.get("Emphasis"), None);
        assert_eq!(plain.get("Cache FP16 weight for LoRA"), None);
    }

    #[test]
    fn to_generation_info_missing_or_invalid_values_error() {
        let p = parse_infotext("x\nSteps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1");
        assert_eq!(p.to_generation_info(), Err(InfotextError::MissingKey("Size".into())));
        let p = parse_infotext("x\nSteps: many, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 1x1");
        assert_eq!(
            p.to_generation_info(),
            Err(InfotextError::InvalidValue { key: "Steps".into(), value: "many".into() })
        );
    }

    #[test]
    fn push_extra_keeps_first_position() {
        let mut info = GenerationInfo::new("p", "", 20, "Euler", 7.0, 1, (512, 512));
        info.push_extra("Eta", 0.5);
        info.push_extra("Script", "x");
        info.push_extra("Eta", 0.25);
        assert_eq!(info.extra, vec![("Eta".into(), "0.25".into()), ("Script".into(), "x".into())]);
    }

    #[test]
    fn format_infotext_extra_with_fixed_slot_lands_in_slot() {
        let mut info = GenerationInfo::new("p", "", 20, "Euler", 7.0, 1, (512, 512));
        info.push_extra("Hires upscale", 2.0);
        info.push_extra("Denoising strength", 0.7);
        info.version = Some("v1.10.1".into());
        assert_eq!(
            format_infotext(&info),
            "p\nSteps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 512x512, Denoising strength: 0.7, \
             Hires upscale: 2.0, Version: v1.10.1"
        );
    }
}
