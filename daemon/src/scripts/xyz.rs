//! The X/Y/Z plot script (prompts.md §4): `script_name: "x/y/z plot"` with A1111's positional
//! `script_args`, or the same settings as a named `xyz_plot` object (axis types by label or
//! index, values as A1111's text or a JSON list); both forms become one [`Args`] and share
//! everything after. Every cell is an ordinary generation request (a copy of the request with the
//! axis values applied, templates and keywords included), run in A1111's loop order so the axis
//! that is dearest to switch (a checkpoint) changes least often; cells are answered in grid
//! order. A cell whose job fails while running is drawn as a black image of the first cell's
//! size, as A1111 does; bad axis types or values, and requests the route refuses, fail the whole
//! plot. The answer's first image is the grid with legends, followed by the cell images when
//! "Include Sub Images" is on. With `save_images` and the `grid_save` option on, the grid is
//! also saved with its infotext under `outdir_txt2img_grids` (or `outdir_img2img_grids`),
//! numbered and named by the first cell's seed as A1111 names it.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use compat::infotext::quote;
use compat::samplers::{sampler_by_name, scheduler_by_name_or_label};
use serde_json::{json, Map, Value};

use super::{generate_plain, read_answer, Answer};
use crate::engine::job::{GenerationMode, RgbImage};
use crate::error::ApiError;
use crate::images;
use crate::options::OptionView;
use crate::routes::generate::output_dir;
use crate::validate::{find_checkpoint_loosely, resolve_seed};
use crate::AppState;

/// `script_name` of the plot, lower-cased.
pub const SCRIPT_NAME: &str = "x/y/z plot";

/// More cells than this is refused up front (A1111 caps the grid's pixels instead).
const MAX_CELLS: usize = 1000;

/// What an axis does to a cell's request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Nothing,
    /// An integer request field.
    Int(&'static str),
    /// A float request field.
    Float(&'static str),
    /// An option set through `override_settings`.
    IntOption(&'static str),
    FloatOption(&'static str),
    BoolOption(&'static str),
    Seed(&'static str),
    PromptSr,
    PromptOrder,
    Sampler(&'static str),
    Scheduler,
    Checkpoint,
    Vae,
    Text(&'static str),
    Size,
    /// Listed so indices line up with A1111's; choosing it is an error.
    Unsupported,
}

use Kind::*;

/// A1111 v1.10's axis list of each tab, in order (indices are positions here).
fn axes(mode: GenerationMode) -> Vec<(&'static str, Kind)> {
    let txt = mode == GenerationMode::Txt2Img;
    let mut v: Vec<(&'static str, Kind)> = vec![
        ("Nothing", Nothing),
        ("Seed", Seed("seed")),
        ("Var. seed", Seed("subseed")),
        ("Var. strength", Float("subseed_strength")),
        ("Steps", Int("steps")),
    ];
    if txt {
        v.push(("Hires steps", Int("hr_second_pass_steps")));
    }
    v.push(("CFG Scale", Float("cfg_scale")));
    if !txt {
        v.push(("Image CFG Scale", Float("image_cfg_scale")));
    }
    v.extend([("Prompt S/R", PromptSr), ("Prompt order", PromptOrder), ("Sampler", Sampler("sampler_name"))]);
    if txt {
        v.push(("Hires sampler", Sampler("hr_sampler_name")));
    }
    v.extend([
        ("Checkpoint name", Checkpoint),
        ("Negative Guidance minimum sigma", Float("s_min_uncond")),
        ("Sigma Churn", FloatOption("s_churn")),
        ("Sigma min", FloatOption("s_tmin")),
        ("Sigma max", FloatOption("s_tmax")),
        ("Sigma noise", FloatOption("s_noise")),
        ("Schedule type", Scheduler),
        ("Schedule min sigma", FloatOption("sigma_min")),
        ("Schedule max sigma", FloatOption("sigma_max")),
        ("Schedule rho", FloatOption("rho")),
        ("Skip Early CFG", Unsupported),
        ("Beta schedule alpha", Unsupported),
        ("Beta schedule beta", Unsupported),
        ("Eta", Float("eta")),
        ("Clip skip", IntOption("CLIP_stop_at_last_layers")),
        ("Denoising", Float("denoising_strength")),
        ("Initial noise multiplier", FloatOption("initial_noise_multiplier")),
        ("Extra noise", Unsupported),
    ]);
    if txt {
        v.push(("Hires upscaler", Text("hr_upscaler")));
    } else {
        v.push(("Cond. Image Mask Weight", FloatOption("inpainting_mask_weight")));
    }
    v.extend([
        ("VAE", Vae),
        ("Styles", Unsupported),
        ("UniPC Order", Unsupported),
        ("Face restore", Unsupported),
        ("Token merging ratio", Unsupported),
        ("Token merging ratio high-res", Unsupported),
        ("Always discard next-to-last sigma", BoolOption("always_discard_next_to_last_sigma")),
        ("SGM noise multiplier", Unsupported),
        ("Refiner checkpoint", Unsupported),
        ("Refiner switch at", Unsupported),
        ("RNG source", Text("randn_source")),
        ("FP8 mode", Unsupported),
        ("Size", Size),
    ]);
    v
}

/// One resolved axis value.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Int(i64),
    Float(f64),
    Text(String),
    Size(i64, i64),
    Order(Vec<String>),
}

struct Axis {
    label: &'static str,
    kind: Kind,
    values: Vec<Val>,
    /// The values as written, for the grid infotext.
    text: String,
}

impl Axis {
    fn cost(&self) -> f64 {
        match self.kind {
            Checkpoint => 1.0,
            Vae => 0.7,
            _ => 0.0,
        }
    }

    fn cell_label(&self, v: &Val) -> String {
        let value = match v {
            Val::Int(i) => i.to_string(),
            Val::Float(f) => py_float((f * 1e8).round() / 1e8),
            Val::Text(s) => s.clone(),
            Val::Size(w, h) => format!("{w}x{h}"),
            Val::Order(o) => o.join(", "),
        };
        match self.kind {
            Nothing => String::new(),
            PromptSr | Sampler(_) => value,
            Checkpoint => std::path::Path::new(&value)
                .file_name()
                .map_or(value.clone(), |n| n.to_string_lossy().into_owned()),
            _ => format!("{}: {value}", self.label),
        }
    }
}

/// Python's `str(float)` for the values a grid label shows.
fn py_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// Where an axis's type and values come from.
#[derive(Clone, Debug)]
struct AxisSpec {
    /// An index into the tab's axis list (a number or a numeric string) or a label.
    ty: Value,
    values: AxisValues,
    /// Where a bad type or value is reported in a 422.
    loc: Vec<Value>,
}

#[derive(Clone, Debug)]
enum AxisValues {
    /// The positional form: the text field, and the dropdown list that replaces it for axes
    /// with choices unless `csv_mode` is on.
    Positional { text: String, dropdown: Vec<String> },
    /// The native form's JSON list: the values themselves, for any axis.
    List(Vec<String>),
}

/// The plot's settings, from either form (§4.1); both run through the same code from here on.
struct Args {
    axes: [AxisSpec; 3],
    draw_legend: bool,
    include_lone_images: bool,
    include_sub_grids: bool,
    no_fixed_seeds: bool,
    vary: [bool; 3],
    margin: u32,
    csv_mode: bool,
}

/// The body field holding the native form.
pub const NATIVE_FIELD: &str = "xyz_plot";

/// Margins above this are clamped (A1111's slider stops at 500).
const MAX_MARGIN: u64 = 500;

fn parse_args(args: &[Value]) -> Args {
    let text = |i: usize| match args.get(i) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let list = |i: usize| {
        args.get(i)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect())
            .unwrap_or_default()
    };
    let flag = |i: usize, default: bool| match args.get(i) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        _ => default,
    };
    let axis = |i: usize, default: Value| AxisSpec {
        ty: args.get(i).cloned().unwrap_or(default),
        values: AxisValues::Positional { text: text(i + 1), dropdown: list(i + 2) },
        loc: vec![json!("body"), json!("script_args")],
    };
    Args {
        axes: [axis(0, json!(1)), axis(3, json!(0)), axis(6, json!(0))],
        draw_legend: flag(9, true),
        include_lone_images: flag(10, false),
        include_sub_grids: flag(11, false),
        no_fixed_seeds: flag(12, false),
        vary: [flag(13, false), flag(14, false), flag(15, false)],
        margin: args.get(16).and_then(Value::as_u64).unwrap_or(0).min(MAX_MARGIN) as u32,
        csv_mode: flag(17, false),
    }
}

/// A 422 at `body.xyz_plot[.path]`.
fn native_error(path: &[&str], msg: impl Into<String>) -> ApiError {
    let mut loc = vec![json!("body"), json!(NATIVE_FIELD)];
    loc.extend(path.iter().map(|p| json!(p)));
    ApiError::Validation(compat::api::error::ValidationBody::new(loc, msg, "value_error"))
}

/// The native form: `{"x": {"type", "values"}, "y", "z", "draw_legend", …}` with the
/// positional arguments' names. A missing or null axis is Nothing (unlike the positional form,
/// whose X defaults to Seed); values are A1111's text syntax or a JSON list.
fn parse_native(form: &Value) -> Result<Args, ApiError> {
    let Value::Object(form) = form else {
        return Err(native_error(&[], "must be an object with the axes `x`, `y`, `z` and the plot options"));
    };
    let flag = |key: &str, default: bool| match form.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(native_error(&[key], "must be true or false")),
    };
    let axis = |letter: &'static str| -> Result<AxisSpec, ApiError> {
        let loc = vec![json!("body"), json!(NATIVE_FIELD), json!(letter)];
        let nothing = AxisSpec {
            ty: json!("Nothing"),
            values: AxisValues::Positional { text: String::new(), dropdown: Vec::new() },
            loc: loc.clone(),
        };
        let spec = match form.get(letter) {
            None | Some(Value::Null) => return Ok(nothing),
            Some(Value::Object(spec)) => spec,
            Some(_) => {
                return Err(native_error(&[letter], "an axis is an object: {\"type\": …, \"values\": …}"))
            }
        };
        let ty = match spec.get("type") {
            Some(t @ (Value::String(_) | Value::Number(_))) => t.clone(),
            None | Some(Value::Null) => {
                return Err(native_error(&[letter, "type"], "the axis type is missing"))
            }
            Some(_) => return Err(native_error(&[letter, "type"], "an axis label or index")),
        };
        let values = match spec.get("values") {
            None | Some(Value::Null) => AxisValues::List(Vec::new()),
            Some(Value::String(s)) => AxisValues::Positional { text: s.clone(), dropdown: Vec::new() },
            Some(Value::Array(items)) => AxisValues::List(
                items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        Value::Number(n) => Ok(n.to_string()),
                        Value::Bool(b) => Ok(b.to_string()),
                        _ => Err(native_error(&[letter, "values"], "list items are strings or numbers")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => {
                return Err(native_error(&[letter, "values"], "A1111's value text or a list of values"))
            }
        };
        Ok(AxisSpec { ty, values, loc })
    };
    let vary = match form.get("vary_seeds") {
        None | Some(Value::Null) => [false; 3],
        Some(Value::Object(v)) => {
            let mut out = [false; 3];
            for (slot, letter) in out.iter_mut().zip(["x", "y", "z"]) {
                *slot = match v.get(letter) {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(native_error(&["vary_seeds", letter], "must be true or false")),
                };
            }
            out
        }
        Some(_) => {
            return Err(native_error(&["vary_seeds"], "an object: {\"x\": bool, \"y\": bool, \"z\": bool}"))
        }
    };
    let margin = match form.get("margin_size") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| native_error(&["margin_size"], "a whole number of pixels"))?,
    };
    Ok(Args {
        axes: [axis("x")?, axis("y")?, axis("z")?],
        draw_legend: flag("draw_legend", true)?,
        include_lone_images: flag("include_lone_images", false)?,
        include_sub_grids: flag("include_sub_grids", false)?,
        no_fixed_seeds: flag("no_fixed_seeds", false)?,
        vary,
        margin: margin.min(MAX_MARGIN) as u32,
        csv_mode: flag("csv_mode", false)?,
    })
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::field("script_args", msg)
}

/// Splits one CSV record (comma-delimited, quotes only right after a comma), trimmed.
fn csv_fields(text: &str) -> Vec<String> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let mut field = String::new();
        if chars.get(i) == Some(&'"') {
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        field.push('"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                field.push(chars[i]);
                i += 1;
            }
        }
        while i < chars.len() && chars[i] != ',' {
            field.push(chars[i]);
            i += 1;
        }
        out.push(field.trim().to_string());
        if i >= chars.len() {
            return out;
        }
        i += 1;
    }
}

fn range_pattern(number: &str, suffix: &str) -> regex::Regex {
    regex::Regex::new(&format!(r"^\s*([+-]?\s*{number})\s*-\s*([+-]?\s*{number})(?:\s*{suffix})?\s*$"))
        .expect("a constant regex compiles; this is a bug")
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.replace(' ', "").parse().ok()
}

fn int_values(fields: &[String]) -> Result<Vec<i64>, String> {
    let step = range_pattern(r"\d+", r"\(([+-]\d+)\s*\)");
    let count = range_pattern(r"\d+", r"\[(\d+)\s*\]");
    let mut out = Vec::new();
    for f in fields.iter().filter(|f| !f.is_empty()) {
        if let Some(c) = step.captures(f) {
            let (a, b): (i64, i64) = (num(&c[1]).unwrap_or(0), num(&c[2]).unwrap_or(0));
            let s: i64 = c.get(3).and_then(|m| num(m.as_str())).unwrap_or(1);
            if s == 0 {
                return Err(format!("`{f}`: the step cannot be 0"));
            }
            // Python's range(a, b + 1, s).
            let mut x = a;
            while (s > 0 && x < b + 1) || (s < 0 && x > b + 1) {
                out.push(x);
                x += s;
            }
        } else if let Some(c) = count.captures(f) {
            let (a, b): (i64, i64) = (num(&c[1]).unwrap_or(0), num(&c[2]).unwrap_or(0));
            let n: usize = num(&c[3]).unwrap_or(0);
            out.extend(linspace(a as f64, b as f64, n).into_iter().map(|x| x as i64));
        } else {
            out.push(num(f).ok_or_else(|| format!("`{f}` is not an integer"))?);
        }
    }
    Ok(out)
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![a],
        _ => (0..n).map(|i| if i == n - 1 { b } else { a + (b - a) * i as f64 / (n - 1) as f64 }).collect(),
    }
}

fn float_values(fields: &[String]) -> Result<Vec<f64>, String> {
    let number = r"\d+(?:\.\d*)?";
    let step = range_pattern(number, &format!(r"\(([+-]{number})\s*\)"));
    let count = range_pattern(number, r"\[(\d+(?:\.\d*)?)\s*\]");
    let mut out = Vec::new();
    for f in fields.iter().filter(|f| !f.is_empty()) {
        if let Some(c) = step.captures(f) {
            let (a, b): (f64, f64) = (num(&c[1]).unwrap_or(0.0), num(&c[2]).unwrap_or(0.0));
            let s: f64 = c.get(3).and_then(|m| num(m.as_str())).unwrap_or(1.0);
            if s == 0.0 {
                return Err(format!("`{f}`: the step cannot be 0"));
            }
            // numpy.arange(a, b + s, s): floating error can add a value, as upstream.
            let stop = b + s;
            let n = ((stop - a) / s).ceil().max(0.0) as usize;
            out.extend((0..n.min(10_000)).map(|i| a + i as f64 * s));
        } else if let Some(c) = count.captures(f) {
            let (a, b): (f64, f64) = (num(&c[1]).unwrap_or(0.0), num(&c[2]).unwrap_or(0.0));
            let n: f64 = num(&c[3]).unwrap_or(0.0);
            out.extend(linspace(a, b, n as usize));
        } else {
            out.push(num(f).ok_or_else(|| format!("`{f}` is not a number"))?);
        }
    }
    Ok(out)
}

fn permutations(items: &[String]) -> Vec<Vec<String>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

fn resolve_axis(
    index: usize,
    spec: &AxisSpec,
    args: &Args,
    mode: GenerationMode,
    state: &AppState,
    request: &Map<String, Value>,
) -> Result<Axis, ApiError> {
    let list = axes(mode);
    let letter = ["X", "Y", "Z"][index];
    let fail = |msg: String| {
        ApiError::Validation(compat::api::error::ValidationBody::new(spec.loc.clone(), msg, "value_error"))
    };
    let found = match &spec.ty {
        Value::Number(n) => n.as_u64().and_then(|i| list.get(i as usize)),
        Value::String(s) => match s.trim().parse::<usize>() {
            Ok(i) => list.get(i),
            Err(_) => list.iter().find(|(label, _)| label.eq_ignore_ascii_case(s.trim())),
        },
        Value::Null => list.first(),
        _ => None,
    };
    let &(label, kind) = found.ok_or_else(|| fail(format!("{letter} type {}: no such axis", spec.ty)))?;
    if kind == Unsupported {
        return Err(crate::engine::job::JobError::Unsupported(format!(
            "X/Y/Z plot: the {label} axis ({letter}) is not supported"
        ))
        .into());
    }
    let has_choices =
        matches!(kind, Sampler(_) | Scheduler | Checkpoint | Vae | BoolOption(_) | Text("randn_source"));
    let (fields, text): (Vec<String>, String) = match &spec.values {
        AxisValues::List(items) => (items.clone(), items.join(", ")),
        AxisValues::Positional { dropdown, .. } if has_choices && !args.csv_mode && !dropdown.is_empty() => {
            (dropdown.clone(), dropdown.join(", "))
        }
        AxisValues::Positional { text, .. } => (csv_fields(text), text.clone()),
    };
    // Every value error names the axis, whichever form it came in.
    let fail = |msg: String| fail(format!("{letter} axis ({label}): {msg}"));
    let snapshot = state.catalog.snapshot();
    let values: Vec<Val> = match kind {
        Nothing => vec![Val::Text(String::new())],
        Int(_) | IntOption(_) => int_values(&fields).map_err(fail)?.into_iter().map(Val::Int).collect(),
        Float(_) | FloatOption(_) => {
            float_values(&fields).map_err(fail)?.into_iter().map(Val::Float).collect()
        }
        Seed(_) => {
            let mut seeds = int_values(&fields).map_err(fail)?;
            if seeds.is_empty() {
                seeds.push(-1);
            }
            seeds
                .into_iter()
                .map(|s| if args.no_fixed_seeds { s } else { resolve_seed(Some(s)) })
                .map(Val::Int)
                .collect()
        }
        BoolOption(_) => fields
            .iter()
            .map(|f| match f.to_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Val::Int(1)),
                "false" | "0" | "no" | "off" => Ok(Val::Int(0)),
                _ => Err(fail(format!("`{f}` is not true or false"))),
            })
            .collect::<Result<_, _>>()?,
        PromptSr => {
            let prompt = request.get("prompt").and_then(Value::as_str).unwrap_or("");
            let negative = request.get("negative_prompt").and_then(Value::as_str).unwrap_or("");
            let term = fields.first().ok_or_else(|| fail("Prompt S/R needs at least one value".into()))?;
            if !prompt.contains(term.as_str()) && !negative.contains(term.as_str()) {
                return Err(fail(format!("Prompt S/R did not find {term} in prompt or negative prompt.")));
            }
            fields.iter().cloned().map(Val::Text).collect()
        }
        PromptOrder => {
            let prompt = request.get("prompt").and_then(Value::as_str).unwrap_or("");
            for f in &fields {
                if !prompt.contains(f.as_str()) {
                    return Err(fail(format!("`{f}` is not in the prompt")));
                }
            }
            permutations(&fields).into_iter().map(Val::Order).collect()
        }
        Sampler(_) => fields
            .iter()
            .map(|f| {
                sampler_by_name(f)
                    .map(|s| Val::Text(s.name.to_string()))
                    .ok_or_else(|| fail(format!("unknown sampler `{f}`")))
            })
            .collect::<Result<_, _>>()?,
        Scheduler => fields
            .iter()
            .map(|f| {
                scheduler_by_name_or_label(f)
                    .map(|s| Val::Text(s.label.to_string()))
                    .ok_or_else(|| fail(format!("unknown schedule type `{f}`")))
            })
            .collect::<Result<_, _>>()?,
        Checkpoint => fields
            .iter()
            .map(|f| {
                find_checkpoint_loosely(&snapshot, f)
                    .map(|e| Val::Text(e.title()))
                    .ok_or_else(|| fail(format!("Checkpoint {f} for {letter} axis not found")))
            })
            .collect::<Result<_, _>>()?,
        Vae => fields
            .iter()
            .map(|f| {
                let known = matches!(f.as_str(), "Automatic" | "None")
                    || snapshot.vaes.iter().any(|v| v.model_name == *f);
                known.then(|| Val::Text(f.clone())).ok_or_else(|| fail(format!("VAE {f} not found")))
            })
            .collect::<Result<_, _>>()?,
        Text(_) => fields.iter().cloned().map(Val::Text).collect(),
        Size => fields
            .iter()
            .map(|f| {
                let wrong = || fail(format!("Size `{f}`: expected WxH"));
                let (w, h) = f.split_once(['x', 'X']).ok_or_else(wrong)?;
                Ok(Val::Size(w.trim().parse().map_err(|_| wrong())?, h.trim().parse().map_err(|_| wrong())?))
            })
            .collect::<Result<_, ApiError>>()?,
        Unsupported => unreachable!("refused above"),
    };
    if values.is_empty() {
        return Err(fail("no values".into()));
    }
    Ok(Axis { label, kind, values, text })
}

fn set_option(cell: &mut Map<String, Value>, key: &str, value: Value) {
    let slot = cell.entry("override_settings").or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    if let Value::Object(m) = slot {
        m.insert(key.to_string(), value);
    }
}

/// Applies one axis value to a cell's request.
fn apply(axis: &Axis, value: &Val, cell: &mut Map<String, Value>, original_prompt: &str) {
    let as_json = |v: &Val| match v {
        Val::Int(i) => json!(i),
        Val::Float(f) => json!(f),
        Val::Text(s) => json!(s),
        Val::Size(w, h) => json!(format!("{w}x{h}")),
        Val::Order(o) => json!(o),
    };
    match axis.kind {
        Nothing | Unsupported => {}
        Int(field) | Float(field) | Seed(field) | Sampler(field) | Text(field) => {
            if field == "randn_source" {
                set_option(cell, field, as_json(value));
            } else {
                cell.insert(field.into(), as_json(value));
            }
        }
        IntOption(key) | FloatOption(key) => set_option(cell, key, as_json(value)),
        BoolOption(key) => set_option(cell, key, json!(*value == Val::Int(1))),
        Scheduler => {
            cell.insert("scheduler".into(), as_json(value));
        }
        Checkpoint => set_option(cell, "sd_model_checkpoint", as_json(value)),
        Vae => set_option(cell, "sd_vae", as_json(value)),
        Size => {
            if let Val::Size(w, h) = value {
                cell.insert("width".into(), json!(w));
                cell.insert("height".into(), json!(h));
            }
        }
        PromptSr => {
            let (Some(Val::Text(term)), Val::Text(to)) = (axis.values.first(), value) else { return };
            for key in ["prompt", "negative_prompt"] {
                if let Some(Value::String(s)) = cell.get(key) {
                    let replaced = s.replace(term.as_str(), to);
                    cell.insert(key.into(), json!(replaced));
                }
            }
        }
        PromptOrder => {
            let Val::Order(order) = value else { return };
            let prompt = cell.get("prompt").and_then(Value::as_str).unwrap_or(original_prompt).to_string();
            cell.insert("prompt".into(), json!(reorder(&prompt, order)));
        }
    }
}

/// Puts `order`'s tokens into the slots the tokens occupy in `prompt`, slots ordered by first
/// occurrence.
fn reorder(prompt: &str, order: &[String]) -> String {
    let mut slots: Vec<(usize, &str)> =
        order.iter().filter_map(|t| prompt.find(t.as_str()).map(|i| (i, t.as_str()))).collect();
    slots.sort();
    let mut out = String::new();
    let mut pos = 0;
    for ((start, token), replacement) in slots.iter().zip(order) {
        out.push_str(&prompt[pos..*start]);
        out.push_str(replacement);
        pos = start + token.len();
    }
    out.push_str(&prompt[pos..]);
    out
}

/// The axes in loop order, outermost first, by A1111's rule (§4.5): an axis whose switch
/// cost is strictly the highest is the outer loop and the dearer of the other two the middle one
/// (ties: the later letter); with no strict maximum Z is outermost and X changes fastest.
fn loop_order(cost: [f64; 3]) -> [usize; 3] {
    let (x, y, z) = (cost[0], cost[1], cost[2]);
    let (first, second) = if x > y && x > z {
        (0, if y > z { 1 } else { 2 })
    } else if y > x && y > z {
        (1, if x > z { 0 } else { 2 })
    } else if z > x && z > y {
        (2, if x > y { 0 } else { 1 })
    } else {
        (2, 1)
    };
    [first, second, 3 - first - second]
}

/// What one cell came to.
enum Outcome {
    Done(Box<Answer>),
    /// The cell's job failed while running; the grid shows a blank image in its place.
    Failed {
        prompt: String,
        negative_prompt: String,
        seed: i64,
    },
}

/// Runs the plot given as `script_name: "x/y/z plot"` with positional `script_args`, or as the
/// native [`NATIVE_FIELD`] object; both become the same [`Args`].
pub async fn run(
    state: web::Data<AppState>,
    request: Map<String, Value>,
    mode: GenerationMode,
) -> Result<HttpResponse, ApiError> {
    let is_script = request
        .get("script_name")
        .and_then(Value::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case(SCRIPT_NAME));
    let native = request.get(NATIVE_FIELD).filter(|v| !v.is_null());
    let args = match native {
        Some(_) if is_script => {
            return Err(native_error(
                &[],
                "give the plot either as `xyz_plot` or as `script_name`/`script_args`, not both",
            ))
        }
        Some(form) => parse_native(form)?,
        None => {
            let raw_args = request.get("script_args").and_then(Value::as_array).cloned().unwrap_or_default();
            // A1111 would fill in the UI defaults (one Seed cell at the request's size), which is
            // never what an API client that forgot its arguments wants.
            if raw_args.is_empty() {
                return Err(bad("the X/Y/Z plot needs `script_args` (axis types and values)"));
            }
            parse_args(&raw_args)
        }
    };
    let mut base = request.clone();
    base.remove(NATIVE_FIELD);
    if is_script {
        base.remove("script_name");
        base.remove("script_args");
    }
    let prompt = base.get("prompt").and_then(Value::as_str).unwrap_or("").to_string();
    let axes = args
        .axes
        .iter()
        .enumerate()
        .map(|(i, spec)| resolve_axis(i, spec, &args, mode, &state, &base))
        .collect::<Result<Vec<_>, _>>()?;
    let dims = [axes[0].values.len(), axes[1].values.len(), axes[2].values.len()];
    let total = dims.iter().product::<usize>();
    if total > MAX_CELLS {
        return Err(bad(format!("the plot has {total} cells; at most {MAX_CELLS} are allowed")));
    }
    // Every cell uses the same seed unless "Keep -1 for seeds" is on.
    let seed = base.get("seed").and_then(Value::as_i64);
    if !args.no_fixed_seeds {
        base.insert("seed".into(), json!(resolve_seed(seed)));
    }

    let loop_order = loop_order([axes[0].cost(), axes[1].cost(), axes[2].cost()]);
    let mut cells: Vec<Option<Outcome>> = (0..total).map(|_| None).collect();
    let mut first_failure = None;
    let mut index = [0usize; 3];
    for n in 0..total {
        // Decompose n with the last axis of `loop_order` changing fastest.
        let mut rest = n;
        for &a in loop_order.iter().rev() {
            index[a] = rest % dims[a];
            rest /= dims[a];
        }
        let mut cell = base.clone();
        for (a, axis) in axes.iter().enumerate() {
            apply(axis, &axis.values[index[a]], &mut cell, &prompt);
        }
        if let Some(Value::Number(s)) = cell.get("seed") {
            if let (Some(s), true) = (s.as_i64(), !args.no_fixed_seeds) {
                let (ix, iy, iz) = (index[0] as i64, index[1] as i64, index[2] as i64);
                let x_stride = if args.vary[0] { dims[0] as i64 } else { 1 };
                let y_stride = if args.vary[1] { dims[1] as i64 } else { 1 };
                let offset = if args.vary[0] { ix } else { 0 }
                    + if args.vary[1] { iy * x_stride } else { 0 }
                    + if args.vary[2] { iz * x_stride * y_stride } else { 0 };
                cell.insert("seed".into(), json!(s + offset));
            }
        }
        let response = match super::run(state.clone(), cell.clone(), mode).await? {
            Some(r) => r,
            None => generate_plain(&state, &cell, mode).await,
        };
        let at = index[0] + index[1] * dims[0] + index[2] * dims[0] * dims[1];
        let status = response.status();
        cells[at] = Some(if status == StatusCode::OK {
            Outcome::Done(Box::new(read_answer(response).await?))
        } else if status == StatusCode::INTERNAL_SERVER_ERROR {
            // A job that failed while running (a checkpoint that does not load, say) costs its
            // cell, not the plot, as in A1111. Anything else (a request the route refuses, an
            // unsupported feature, a full queue) fails the whole plot.
            tracing::warn!(cell = at, status = %status, "an X/Y/Z plot cell failed; it stays blank");
            first_failure.get_or_insert(response);
            let text = |k: &str| cell.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Outcome::Failed {
                prompt: text("prompt"),
                negative_prompt: text("negative_prompt"),
                seed: cell.get("seed").and_then(Value::as_i64).unwrap_or(-1),
            }
        } else {
            return Ok(response);
        });
    }
    let cells: Vec<Outcome> = cells.into_iter().map(|c| c.expect("every cell ran")).collect();
    if !cells.iter().any(|c| matches!(c, Outcome::Done(_))) {
        // Nothing to draw: the first failure answers for the plot.
        return Ok(first_failure.expect("a plot without a finished cell has a failed one"));
    }
    let (response, grid) = assemble(cells, &axes, dims, &args, &request, &base)?;
    if let Some(save) = GridSave::for_request(&state, &request, mode) {
        let state2 = state.clone();
        crate::routes::blocking(move || save.write(&grid, &state2.save_lock)).await?;
    }
    Ok(response)
}

/// The finished grid, for saving.
struct Grid {
    image: RgbImage,
    infotext: String,
    /// The first cell's seed and prompt (A1111 names the file after them).
    seed: i64,
    prompt: String,
}

/// Where and how a grid is saved.
struct GridSave {
    options: Map<String, Value>,
    dir: std::path::PathBuf,
}

impl GridSave {
    /// `Some` when the request saves its images and the `grid_save` option (after the request's
    /// `override_settings`) is on.
    fn for_request(state: &AppState, request: &Map<String, Value>, mode: GenerationMode) -> Option<GridSave> {
        if request.get("save_images").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        let mut options = state.options.all();
        if let Some(Value::Object(overrides)) = request.get("override_settings") {
            options.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let view = OptionView(&options);
        if !view.bool("grid_save") {
            return None;
        }
        let key = match mode {
            GenerationMode::Txt2Img => "outdir_txt2img_grids",
            GenerationMode::Img2Img => "outdir_img2img_grids",
        };
        let dir = output_dir(&state.config.data_dir, &view, key, view.bool("grid_save_to_dirs"));
        Some(GridSave { options, dir })
    }

    /// Encodes the grid in `grid_format` (with its infotext when `enable_pnginfo`) and saves it
    /// as `NNNNN-<seed>` (`NNNNN-<seed>-<prompt>` without `save_to_dirs`).
    fn write(&self, grid: &Grid, save_lock: &std::sync::Mutex<()>) -> Result<(), ApiError> {
        let view = OptionView(&self.options);
        let format = images::ImageFormat::from_option(&view.string("grid_format"));
        let texts: &[(&str, &str)] =
            if view.bool("enable_pnginfo") { &[("parameters", grid.infotext.as_str())] } else { &[] };
        let quality = view.i64("jpeg_quality").clamp(1, 100) as u8;
        let bytes = images::encode(&grid.image, format, texts, quality)
            .map_err(|e| ApiError::Runtime(e.to_string()))?;
        let seed = grid.seed.to_string();
        let prompt = images::sanitize_for_file_name(&grid.prompt);
        let stem =
            if view.bool("save_to_dirs") || prompt.is_empty() { seed } else { format!("{seed}-{prompt}") };
        let path = images::save_numbered(&self.dir, &stem, format.extension(), &bytes, save_lock)
            .map_err(|e| ApiError::Runtime(format!("saving to {}: {e}", self.dir.display())))?;
        tracing::info!(file = %path.display(), "grid saved");
        Ok(())
    }
}

fn decode_first(answer: &Answer) -> Result<RgbImage, ApiError> {
    let b64 = answer.images().into_iter().next().ok_or_else(|| {
        ApiError::Runtime("an X/Y/Z plot cell returned no image (send_images must be on)".into())
    })?;
    let bytes = images::decode_base64(&b64).map_err(|e| ApiError::Runtime(e.to_string()))?;
    let img = image::load_from_memory(&bytes).map_err(|e| ApiError::Runtime(e.to_string()))?.to_rgb8();
    Ok(RgbImage { width: img.width(), height: img.height(), rgb: img.into_raw() })
}

/// A black image (PIL's `Image.new` default, which A1111 uses for a failed cell).
fn blank(width: u32, height: u32) -> RgbImage {
    RgbImage { width, height, rgb: vec![0; width as usize * height as usize * 3] }
}

fn assemble(
    cells: Vec<Outcome>,
    axes: &[Axis],
    dims: [usize; 3],
    args: &Args,
    request: &Map<String, Value>,
    base: &Map<String, Value>,
) -> Result<(HttpResponse, Grid), ApiError> {
    let mut pictures: Vec<Option<RgbImage>> = cells
        .iter()
        .map(|c| match c {
            Outcome::Done(answer) => decode_first(answer).map(Some),
            Outcome::Failed { .. } => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    // A failed cell takes the first cell's size, or the request's when that one failed too.
    let (blank_w, blank_h) = match &pictures[0] {
        Some(p) => (p.width, p.height),
        None => {
            let side = |k: &str| base.get(k).and_then(Value::as_u64).unwrap_or(512).clamp(1, 8192) as u32;
            (side("width"), side("height"))
        }
    };
    let mut blank_png = None;
    let pictures: Vec<RgbImage> =
        pictures.iter_mut().map(|p| p.take().unwrap_or_else(|| blank(blank_w, blank_h))).collect();
    let labels = |a: usize| -> Vec<String> { axes[a].values.iter().map(|v| axes[a].cell_label(v)).collect() };
    let (xl, yl, zl) = (labels(0), labels(1), labels(2));
    let cell_w = pictures.iter().map(|p| p.width).max().unwrap_or(1);
    let cell_h = pictures.iter().map(|p| p.height).max().unwrap_or(1);
    let per_z = dims[0] * dims[1];
    let subgrids: Vec<image::RgbImage> = (0..dims[2])
        .map(|z| {
            let imgs: Vec<image::RgbImage> =
                pictures[z * per_z..(z + 1) * per_z].iter().map(to_image).collect();
            grid::draw(
                &imgs,
                dims[0],
                cell_w,
                cell_h,
                args.draw_legend.then_some((&xl[..], &yl[..])),
                args.margin,
            )
        })
        .collect();
    // Sub-grids are answered only when there is more than one Z value (with one, the grid is
    // the sub-grid).
    let wanted_subgrids = if args.include_sub_grids && dims[2] > 1 { subgrids.clone() } else { Vec::new() };
    let grid = if dims[2] == 1 {
        subgrids.into_iter().next().expect("one Z value")
    } else {
        let (w, h) = (
            subgrids.iter().map(image::RgbImage::width).max().unwrap_or(1),
            subgrids.iter().map(image::RgbImage::height).max().unwrap_or(1),
        );
        let none = [String::new()];
        grid::draw(&subgrids, dims[2], w, h, args.draw_legend.then_some((&zl[..], &none[..])), args.margin)
    };

    let (mut prompts, mut negatives, mut seeds, mut subseeds) = (vec![], vec![], vec![], vec![]);
    let (mut cell_infotexts, mut cell_images) = (vec![], vec![]);
    // The first finished cell carries the answer's other fields, as A1111's first processed one.
    let mut merged: Option<Answer> = None;
    for c in cells {
        match c {
            Outcome::Done(answer) => {
                let info = &answer.info;
                prompts.push(info.all_prompts.first().cloned().unwrap_or_default());
                negatives.push(info.all_negative_prompts.first().cloned().unwrap_or_default());
                seeds.push(info.all_seeds.first().copied().unwrap_or(-1));
                subseeds.push(info.all_subseeds.first().copied().unwrap_or(-1));
                cell_infotexts.push(info.infotexts.first().cloned().unwrap_or_default());
                cell_images.push(answer.images().into_iter().next().unwrap_or_default());
                merged.get_or_insert(*answer);
            }
            Outcome::Failed { prompt, negative_prompt, seed } => {
                prompts.push(prompt);
                negatives.push(negative_prompt);
                seeds.push(seed);
                subseeds.push(-1);
                cell_infotexts.push(String::new());
                if blank_png.is_none() {
                    let png = images::encode_png(&blank(blank_w, blank_h), &[])
                        .map_err(|e| ApiError::Runtime(e.to_string()))?;
                    blank_png = Some(images::encode_base64(&png));
                }
                cell_images.push(blank_png.clone().unwrap_or_default());
            }
        }
    }
    let mut merged = merged.ok_or_else(|| ApiError::Runtime("no X/Y/Z plot cell finished".into()))?;
    let mut grid_info = merged.info.infotexts.first().cloned().unwrap_or_default();
    // A1111 adds these to the first cell's extra parameters, so they stand before `Version`, each
    // value quoted only when it holds a comma, colon or newline.
    let mut plot_keys = String::from(", Script: X/Y/Z plot");
    for (axis, letter) in axes.iter().zip(["X", "Y", "Z"]) {
        if axis.kind != Nothing {
            let (label, values) = (quote(axis.label), quote(&axis.text));
            plot_keys.push_str(&format!(", {letter} Type: {label}, {letter} Values: {values}"));
            if matches!(axis.kind, Seed(_)) && !args.no_fixed_seeds {
                let fixed: Vec<String> = axis
                    .values
                    .iter()
                    .map(|v| if let Val::Int(seed) = v { seed.to_string() } else { axis.cell_label(v) })
                    .collect();
                plot_keys.push_str(&format!(", Fixed {letter} Values: {}", quote(&fixed.join(", "))));
            }
        }
    }
    match grid_info.rfind(", Version: ") {
        Some(at) => grid_info.insert_str(at, &plot_keys),
        None => grid_info.push_str(&plot_keys),
    }
    let grid = RgbImage { width: grid.width(), height: grid.height(), rgb: grid.into_raw() };
    let png = images::encode_png(&grid, &[("parameters", grid_info.as_str())])
        .map_err(|e| ApiError::Runtime(e.to_string()))?;
    let grid = Grid { image: grid, infotext: grid_info.clone(), seed: seeds[0], prompt: prompts[0].clone() };
    let mut out_images = vec![images::encode_base64(&png)];
    let mut infotexts = vec![grid_info.clone()];
    for sub in wanted_subgrids {
        let sub = RgbImage { width: sub.width(), height: sub.height(), rgb: sub.into_raw() };
        let png = images::encode_png(&sub, &[("parameters", grid_info.as_str())])
            .map_err(|e| ApiError::Runtime(e.to_string()))?;
        out_images.push(images::encode_base64(&png));
        infotexts.push(grid_info.clone());
    }
    if args.include_lone_images {
        out_images.extend(cell_images);
        infotexts.extend(cell_infotexts);
    }
    merged.info.all_prompts = prompts;
    merged.info.all_negative_prompts = negatives;
    merged.info.all_seeds = seeds;
    merged.info.all_subseeds = subseeds;
    merged.info.infotexts = infotexts;
    merged.body.insert("images".into(), json!(out_images));
    if let Some(Value::Object(params)) = merged.body.get_mut("parameters") {
        for (k, v) in request {
            params.insert(k.clone(), v.clone());
        }
    }
    Ok((merged.into_response(), grid))
}

fn to_image(p: &RgbImage) -> image::RgbImage {
    image::RgbImage::from_raw(p.width, p.height, p.rgb.clone()).expect("decoded images have whole rows")
}

/// Grid drawing with a built-in 8×8 bitmap font.
mod grid {
    use image::{Rgb, RgbImage};

    const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
    const INK: Rgb<u8> = Rgb([0, 0, 0]);

    /// Text lines fitting `width` pixels at glyph scale `scale` (8·scale px per character).
    fn wrap(text: &str, width: u32, scale: u32) -> Vec<String> {
        let per_line = (width / (8 * scale)).max(1) as usize;
        let mut lines = Vec::new();
        let mut line = String::new();
        for word in text.split_whitespace() {
            let mut word: Vec<char> = word.chars().collect();
            loop {
                let room = if line.is_empty() {
                    per_line
                } else {
                    per_line.saturating_sub(line.chars().count() + 1)
                };
                if word.len() <= room {
                    if !line.is_empty() {
                        line.push(' ');
                    }
                    line.extend(word.iter());
                    break;
                }
                if line.is_empty() {
                    // A word longer than a line is cut.
                    line.extend(word.drain(..per_line));
                }
                lines.push(std::mem::take(&mut line));
            }
        }
        if !line.is_empty() {
            lines.push(line);
        }
        lines
    }

    /// The largest scale whose wrapped text takes at most three lines (at least 1).
    fn fit(text: &str, width: u32, font_px: u32) -> (u32, Vec<String>) {
        let mut scale = (font_px / 8).max(1);
        loop {
            let lines = wrap(text, width, scale);
            if lines.len() <= 3 || scale == 1 {
                return (scale, lines);
            }
            scale -= 1;
        }
    }

    fn draw_text(img: &mut RgbImage, lines: &[String], scale: u32, x0: u32, y0: u32, width: u32) {
        for (row, line) in lines.iter().enumerate() {
            let line_w = line.chars().count() as u32 * 8 * scale;
            let x_start = x0 + width.saturating_sub(line_w) / 2;
            let y = y0 + row as u32 * 8 * scale;
            for (i, c) in line.chars().enumerate() {
                let glyph = font8x8::legacy::BASIC_LEGACY.get(c as usize).copied().unwrap_or([0x7e; 8]);
                for (gy, bits) in glyph.iter().enumerate() {
                    for gx in 0..8 {
                        if bits & (1 << gx) == 0 {
                            continue;
                        }
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let px = x_start + (i as u32 * 8 + gx) * scale + dx;
                                let py = y + gy as u32 * scale + dy;
                                if px < img.width() && py < img.height() {
                                    img.put_pixel(px, py, INK);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `images` (row-major, `cols` per row) on a grid of `cell_w`×`cell_h` cells, smaller ones
    /// centred; with `legend`, column headers on top and row labels on the left.
    pub fn draw(
        images: &[RgbImage],
        cols: usize,
        cell_w: u32,
        cell_h: u32,
        legend: Option<(&[String], &[String])>,
        margin: u32,
    ) -> RgbImage {
        let rows = images.len().div_ceil(cols.max(1)) as u32;
        let cols = cols as u32;
        let font_px = (cell_w + cell_h) / 25;
        let spacing = (font_px / 2).max(2);
        let (mut header_h, mut left_w) = (0, 0);
        let mut headers = Vec::new();
        let mut row_labels = Vec::new();
        if let Some((col_text, row_text)) = legend {
            headers = col_text.iter().map(|t| fit(t, cell_w, font_px)).collect::<Vec<_>>();
            let tallest = headers.iter().map(|(s, l)| l.len() as u32 * 8 * s).max().unwrap_or(0);
            if tallest > 0 {
                header_h = tallest + 2 * spacing;
            }
            if row_text.iter().any(|t| !t.is_empty()) {
                left_w = cell_w * 3 / 4;
                row_labels = row_text.iter().map(|t| fit(t, left_w, font_px)).collect();
            }
        }
        let width = left_w + cols * cell_w + cols.saturating_sub(1) * margin;
        let height = header_h + rows * cell_h + rows.saturating_sub(1) * margin;
        let mut out = RgbImage::from_pixel(width.max(1), height.max(1), BACKGROUND);
        for (i, img) in images.iter().enumerate() {
            let (c, r) = (i as u32 % cols, i as u32 / cols);
            let x = left_w + c * (cell_w + margin) + (cell_w - img.width().min(cell_w)) / 2;
            let y = header_h + r * (cell_h + margin) + (cell_h - img.height().min(cell_h)) / 2;
            image::imageops::replace(&mut out, img, x as i64, y as i64);
        }
        for (c, (scale, lines)) in headers.iter().enumerate() {
            draw_text(&mut out, lines, *scale, left_w + c as u32 * (cell_w + margin), spacing, cell_w);
        }
        for (r, (scale, lines)) in row_labels.iter().enumerate() {
            let text_h = lines.len() as u32 * 8 * scale;
            let y = header_h + r as u32 * (cell_h + margin) + cell_h.saturating_sub(text_h) / 2;
            draw_text(&mut out, lines, *scale, 0, y, left_w);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_quotes_only_right_after_a_comma() {
        assert_eq!(csv_fields(r#"a,"b, c",d"#), ["a", "b, c", "d"]);
        assert_eq!(csv_fields(r#"a, "b, c", d"#), ["a", "\"b", "c\"", "d"]);
        assert_eq!(csv_fields(r#""x""y""#), ["x\"y"]);
    }

    #[test]
    fn int_values_ranges_steps_and_counts() {
        let f = |s: &str| int_values(&csv_fields(s)).unwrap();
        assert_eq!(f("1-5"), [1, 2, 3, 4, 5]);
        assert_eq!(f("1-5 (+2)"), [1, 3, 5]);
        assert_eq!(f("10-1 (-3)"), [10, 7, 4]);
        assert!(f("5-1").is_empty());
        assert_eq!(f("1-10 [5]"), [1, 3, 5, 7, 10]);
        assert_eq!(f("-5--3, 7"), [-5, -4, -3, 7]);
        assert!(int_values(&csv_fields("x")).is_err());
    }

    #[test]
    fn float_values_arange_keeps_the_floating_error() {
        let f = |s: &str| float_values(&csv_fields(s)).unwrap();
        assert_eq!(f("0.1-0.3 (+0.1)"), [0.1, 0.2, 0.30000000000000004, 0.4]);
        assert_eq!(f("1.5-2.5"), [1.5, 2.5]);
        assert_eq!(f("1-2 [3]"), [1.0, 1.5, 2.0]);
    }

    #[test]
    fn loop_order_dearest_axis_outermost_ties_keep_z_outer() {
        assert_eq!(loop_order([0.0, 0.0, 0.0]), [2, 1, 0]);
        assert_eq!(loop_order([1.0, 0.0, 0.0]), [0, 2, 1]);
        assert_eq!(loop_order([1.0, 0.7, 0.0]), [0, 1, 2]);
        assert_eq!(loop_order([0.0, 1.0, 0.0]), [1, 2, 0]);
        assert_eq!(loop_order([0.7, 1.0, 0.0]), [1, 0, 2]);
        assert_eq!(loop_order([0.0, 0.7, 1.0]), [2, 1, 0]);
        assert_eq!(loop_order([0.7, 0.0, 1.0]), [2, 0, 1]);
        // No strict maximum: A1111 keeps its default order even if X and Y are both dear.
        assert_eq!(loop_order([1.0, 1.0, 0.0]), [2, 1, 0]);
    }

    #[test]
    fn parse_native_fills_defaults_and_names_bad_fields() {
        let args = parse_native(&json!({"x": {"type": "Steps", "values": "1-3"},
            "y": {"type": 9, "values": ["Euler", 2]}, "vary_seeds": {"y": true}, "margin_size": 4}))
        .unwrap();
        assert!(matches!(&args.axes[0].values, AxisValues::Positional { text, .. } if text == "1-3"));
        assert!(matches!(&args.axes[1].values, AxisValues::List(l) if l == &["Euler", "2"]));
        assert_eq!(args.axes[2].ty, json!("Nothing"));
        assert_eq!(args.vary, [false, true, false]);
        assert_eq!(args.margin, 4);
        assert!(args.draw_legend && !args.include_lone_images && !args.csv_mode);
        let err = |v: Value| match parse_native(&v) {
            Err(ApiError::Validation(b)) => b.detail[0].loc.clone(),
            _ => panic!("{v} should be refused"),
        };
        assert_eq!(
            err(json!({"y": {"values": "1"}})),
            [json!("body"), json!("xyz_plot"), json!("y"), json!("type")]
        );
        assert_eq!(err(json!({"z": {"type": "Steps", "values": [{}]}}))[3], json!("values"));
        assert_eq!(err(json!({"draw_legend": "yes"}))[2], json!("draw_legend"));
        assert_eq!(err(json!([1])).len(), 2);
    }

    #[test]
    fn reorder_tokens_keep_their_slots() {
        assert_eq!(reorder("a, b, c", &["b".into(), "a".into()]), "b, a, c");
        assert_eq!(permutations(&["a".into(), "b".into()]).len(), 2);
    }
}
