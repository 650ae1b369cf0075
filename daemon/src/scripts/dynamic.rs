//! The Dynamic Prompts extension (sd-dynamic-prompts 2.17.1, prompts.md §2.8): its
//! `alwayson_scripts` arguments and the per-image expansion of a job's prompts and seeds.

use std::sync::Arc;

use serde_json::{Map, Value};
use wildcards::{Generator, Mode, Template, WildcardSource};

use crate::engine::job::JobError;
use crate::error::ApiError;
use crate::validate::{is_dynamic_prompts_title, PerImage, PromptInputs};

/// The extension's arguments that change what is generated (§2.8.9), with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DpArgs {
    pub enabled: bool,
    pub combinatorial: bool,
    /// Times the combinatorial enumeration is repeated (1–10).
    pub combinatorial_batches: usize,
    pub fixed_seed: bool,
    pub unlink_seed: bool,
    /// Combinatorial limit; 0 = every combination.
    pub max_generations: usize,
}

impl Default for DpArgs {
    fn default() -> Self {
        // On by default, as on an A1111 server with the extension installed.
        DpArgs {
            enabled: true,
            combinatorial: false,
            combinatorial_batches: 1,
            fixed_seed: false,
            unlink_seed: false,
            max_generations: 0,
        }
    }
}

/// Positional argument indices of the features this daemon does not have.
const UNSUPPORTED: &[(usize, &str)] = &[
    (3, "Magic Prompt"),
    (4, "I'm feeling lucky"),
    (5, "the attention grabber"),
    (13, "Jinja2 templates"),
    (14, "\"Don't generate images\""),
];

impl DpArgs {
    /// Reads the extension's entry of `alwayson_scripts`; a shorter list overrides only its
    /// first arguments, as in A1111.
    pub fn from_scripts(scripts: Option<&Map<String, Value>>) -> Result<DpArgs, ApiError> {
        let mut out = DpArgs::default();
        let Some(entry) = scripts.and_then(|m| m.iter().find(|(k, _)| is_dynamic_prompts_title(k))) else {
            return Ok(out);
        };
        let args = match entry.1 {
            Value::Object(o) => o.get("args").and_then(Value::as_array).cloned().unwrap_or_default(),
            Value::Array(a) => a.clone(),
            _ => Vec::new(),
        };
        let flag = |i: usize| args.get(i).and_then(truthy);
        let int = |i: usize| args.get(i).and_then(|v| v.as_f64()).map(|f| f.max(0.0) as usize);
        if let Some(b) = flag(0) {
            out.enabled = b;
        }
        if let Some(b) = flag(1) {
            out.combinatorial = b;
        }
        if let Some(n) = int(2) {
            out.combinatorial_batches = n.clamp(1, 10);
        }
        if let Some(b) = flag(10) {
            out.fixed_seed = b;
        }
        if let Some(b) = flag(11) {
            out.unlink_seed = b;
        }
        if let Some(n) = int(15) {
            out.max_generations = n.min(1000);
        }
        if out.enabled {
            for &(i, what) in UNSUPPORTED {
                if flag(i) == Some(true) {
                    return Err(
                        JobError::Unsupported(format!("Dynamic Prompts: {what} is not supported")).into()
                    );
                }
            }
        }
        Ok(out)
    }
}

/// A1111 hands script arguments over as sent; clients send booleans, sometimes as 0/1.
fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        _ => None,
    }
}

fn parse(field: &str, text: &str) -> Result<Template, ApiError> {
    Template::parse(text).map_err(|e| super::template_error(field, e))
}

/// Expands the job's templates per image (§2.8.1, §2.8.3): the image count, prompts, negative
/// prompts, seeds and subseeds.
pub fn expand(
    source: Arc<dyn WildcardSource>,
    args: &DpArgs,
    inputs: &PromptInputs,
) -> Result<PerImage, ApiError> {
    let positive = parse("prompt", &inputs.prompt)?;
    let negative = parse("negative_prompt", &inputs.negative_prompt)?;
    let err = |field: &'static str| move |e| super::template_error(field, e);
    let variation = inputs.subseed_strength != 0.0;
    let out = if args.combinatorial {
        let gen = Generator::with_shared_source(source, Mode::Combinatorial);
        let limit = args.max_generations;
        let positives = gen.generate(&positive, limit, inputs.seed).map_err(err("prompt"))?;
        log_warnings(&positives.warnings);
        let mut negatives = if inputs.negative_prompt.is_empty() {
            vec![String::new()]
        } else {
            let n = gen.generate(&negative, limit, inputs.seed).map_err(err("negative_prompt"))?;
            log_warnings(&n.warnings);
            n.prompts
        };
        if negatives.is_empty() {
            negatives.push(String::new());
        }
        let pairs: Vec<(String, String)> = if limit == 0 && negatives.len() > 1 {
            // "All combinations" of both: every positive with every negative.
            positives
                .prompts
                .iter()
                .flat_map(|p| negatives.iter().map(move |n| (p.clone(), n.clone())))
                .collect()
        } else {
            positives
                .prompts
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), negatives[i % negatives.len()].clone()))
                .collect()
        };
        if pairs.is_empty() {
            return Err(ApiError::field("prompt", "the prompt template produced no prompts"));
        }
        let batches = args.combinatorial_batches;
        let all: Vec<(String, String)> = (0..batches).flat_map(|_| pairs.iter().cloned()).collect();
        let k = all.len();
        let per_batch = pairs.len();
        let seeds = (0..k)
            .map(|i| match (args.fixed_seed, variation) {
                // Fixed seed: each repetition of the enumeration gets its own seed.
                (true, _) => inputs.seed + (i / per_batch) as i64,
                (false, true) => inputs.seed,
                (false, false) => inputs.seed + i as i64,
            })
            .collect();
        let subseeds = (0..k)
            .map(|i| if args.fixed_seed { inputs.subseed } else { inputs.subseed + i as i64 })
            .collect();
        let (prompts, negative_prompts) = all.into_iter().unzip();
        PerImage { prompts, negative_prompts, seeds, subseeds }
    } else {
        let count = inputs.seeds.len();
        let mode = if args.unlink_seed { Mode::RandomUnlinked } else { Mode::Random };
        let gen = Generator::with_shared_source(source, mode);
        // Unlinked prompts leave the image seeds as A1111 computed them.
        let fixed = args.fixed_seed && !args.unlink_seed;
        let (seeds, subseeds) = if fixed {
            (vec![inputs.seed; count], vec![inputs.subseed; count])
        } else {
            (inputs.seeds.clone(), inputs.subseeds.clone())
        };
        // With variation strength the prompt is frozen: one prompt seed for every image.
        let prompt_seeds = if variation { vec![seeds[0]; count] } else { seeds.clone() };
        let prompts = gen.generate_with_seeds(&positive, &prompt_seeds).map_err(err("prompt"))?;
        log_warnings(&prompts.warnings);
        let negative_prompts = if inputs.negative_prompt.is_empty() {
            vec![String::new(); count]
        } else {
            let n = gen.generate_with_seeds(&negative, &prompt_seeds).map_err(err("negative_prompt"))?;
            log_warnings(&n.warnings);
            n.prompts
        };
        if prompts.prompts.len() != count || negative_prompts.len() != count {
            return Err(ApiError::field("prompt", "the prompt template produced fewer prompts than images"));
        }
        PerImage { prompts: prompts.prompts, negative_prompts, seeds, subseeds }
    };
    Ok(out)
}

fn log_warnings(warnings: &[wildcards::Warning]) {
    for w in warnings {
        tracing::warn!("dynamic prompts: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wildcards::MemorySource;

    fn inputs(prompt: &str, negative: &str, seed: i64, count: usize) -> PromptInputs {
        PromptInputs {
            prompt: prompt.into(),
            negative_prompt: negative.into(),
            seeds: (0..count as i64).map(|i| seed + i).collect(),
            subseeds: (0..count as i64).map(|i| 100 + i).collect(),
            seed,
            subseed: 100,
            subseed_strength: 0.0,
            batch_size: 1,
            n_iter: count,
        }
    }

    fn source() -> Arc<dyn WildcardSource> {
        Arc::new(MemorySource::new().with("color", ["red", "green", "blue", "cyan", "pink"]))
    }

    #[test]
    fn dp_args_short_list_overrides_first_entries_only() {
        let scripts = json!({"Dynamic Prompts v2.17.1": {"args": [true, true]}});
        let a = DpArgs::from_scripts(scripts.as_object()).unwrap();
        assert!(a.enabled && a.combinatorial && !a.fixed_seed);
        assert_eq!(a.combinatorial_batches, 1);
        let scripts = json!({"dynamic prompts v2.0": {"args": [true, false, 1, true]}});
        assert!(matches!(DpArgs::from_scripts(scripts.as_object()), Err(ApiError::Job(_))));
    }

    #[test]
    fn expand_random_same_seed_same_prompt_and_negative_follows() {
        let a = expand(source(), &DpArgs::default(), &inputs("__color__", "", 7, 4)).unwrap();
        let b = expand(source(), &DpArgs::default(), &inputs("__color__", "", 8, 3)).unwrap();
        assert_eq!(a.prompts[1..], b.prompts[..], "image i's prompt depends only on its seed");
        assert_eq!(a.seeds, vec![7, 8, 9, 10]);
        let t = "{red|green|blue|cyan|pink}";
        let c = expand(source(), &DpArgs::default(), &inputs(t, t, 7, 8)).unwrap();
        assert_eq!(c.prompts, c.negative_prompts, "same seed, same option index");
        assert!(c.prompts.iter().any(|p| *p != c.prompts[0]), "{:?}", c.prompts);
    }

    #[test]
    fn expand_combinatorial_sets_count_and_fixed_seed_per_repetition() {
        let args =
            DpArgs { combinatorial: true, combinatorial_batches: 2, fixed_seed: true, ..DpArgs::default() };
        let out = expand(source(), &args, &inputs("{a|b} x", "", 50, 1)).unwrap();
        assert_eq!(out.prompts, ["a x", "b x", "a x", "b x"]);
        assert_eq!(out.seeds, [50, 50, 51, 51]);
        assert_eq!(out.subseeds, [100; 4]);
    }

    #[test]
    fn expand_fixed_seed_random_mode_repeats_the_prompt() {
        let args = DpArgs { fixed_seed: true, ..DpArgs::default() };
        let out = expand(source(), &args, &inputs("__color__", "", 3, 4)).unwrap();
        assert!(out.prompts.iter().all(|p| *p == out.prompts[0]));
        assert_eq!(out.seeds, [3; 4]);
    }

    #[test]
    fn expand_parse_error_is_422_with_position() {
        let err = expand(source(), &DpArgs::default(), &inputs("a {b", "", 1, 1)).err().unwrap();
        let ApiError::Validation(body) = err else { panic!("{err:?}") };
        assert_eq!(body.detail[0].loc, vec![json!("body"), json!("prompt")]);
        assert!(body.detail[0].ctx.as_ref().unwrap().get("column").is_some());
    }
}
