//! Conformance with dynamicprompts 0.31.0 and CPython's `random`, against the goldens that
//! `reference/gen_wildcard_goldens.py` writes to `tests/fixtures/golden/wildcards.json`
//! (prompts generated from the fixture folder `tests/fixtures/wildcards/`).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use wildcards::ast::{NodeKind, WildcardPath};
use wildcards::{
    DirSource, Error, Generator, Mode, Node, PyRandom, Sampler, Template, Warning, WildcardSource,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden() -> Value {
    let path = repo().join("tests/fixtures/golden/wildcards.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn seed_of(v: &Value) -> i128 {
    // Seeds up to 2**64 - 1 and negative ones are in the goldens.
    v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from)).expect("integer seed")
}

#[test]
fn rng_cpython_draws_reproduced_exactly() {
    let g = golden();
    let seeds = g["rng"].as_array().expect("rng section");
    assert!(seeds.len() >= 10);
    for entry in seeds {
        let seed = seed_of(&entry["seed"]);
        let mut r = PyRandom::new(seed);
        for op in entry["ops"].as_array().expect("ops") {
            let name = op[0].as_str().expect("op name");
            let data = &op[1];
            match name {
                "random" => {
                    for v in data.as_array().expect("floats") {
                        let want: f64 = v.as_str().expect("repr string").parse().expect("float");
                        assert_eq!(r.random(), want, "seed {seed} random()");
                    }
                }
                "getrandbits" => {
                    for pair in data.as_array().expect("pairs") {
                        assert_eq!(r.getrandbits(u(&pair[0]) as u32), u(&pair[1]), "seed {seed} getrandbits");
                    }
                }
                "randrange" => {
                    for pair in data.as_array().expect("pairs") {
                        assert_eq!(r.randrange(u(&pair[0])), u(&pair[1]), "seed {seed} randrange");
                    }
                }
                "randint" => {
                    for t in data.as_array().expect("triples") {
                        let (a, b) = (t[0].as_i64().unwrap(), t[1].as_i64().unwrap());
                        assert_eq!(r.randint(a, b), t[2].as_i64().unwrap(), "seed {seed} randint");
                    }
                }
                "choice" => {
                    for v in data.as_array().expect("choices") {
                        assert_eq!(r.choice(7) as u64, u(v), "seed {seed} choice");
                    }
                }
                "choices_weights" => {
                    let w: Vec<f64> =
                        data["weights"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                    let got = r.choices_weighted(&w, u(&data["k"]) as usize).expect("valid weights");
                    let want: Vec<usize> =
                        data["out"].as_array().unwrap().iter().map(|x| u(x) as usize).collect();
                    assert_eq!(got, want, "seed {seed} choices(weights)");
                }
                "choices_cum" => {
                    let w: Vec<f64> =
                        data["cum_weights"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                    let got = r.choices_cum(&w, u(&data["k"]) as usize).expect("valid weights");
                    let want: Vec<usize> =
                        data["out"].as_array().unwrap().iter().map(|x| u(x) as usize).collect();
                    assert_eq!(got, want, "seed {seed} choices(cum_weights)");
                }
                "choices_plain" => {
                    let got = r.choices_uniform(u(&data["n"]) as usize, u(&data["k"]) as usize);
                    let want: Vec<usize> =
                        data["out"].as_array().unwrap().iter().map(|x| u(x) as usize).collect();
                    assert_eq!(got, want, "seed {seed} choices()");
                }
                "sample" => {
                    for t in data.as_array().expect("triples") {
                        let got = r.sample(u(&t[0]) as usize, u(&t[1]) as usize);
                        let want: Vec<usize> =
                            t[2].as_array().unwrap().iter().map(|x| u(x) as usize).collect();
                        assert_eq!(got, want, "seed {seed} sample({}, {})", t[0], t[1]);
                    }
                }
                "shuffle" => {
                    let mut x: Vec<u64> = (0..10).collect();
                    r.shuffle(&mut x);
                    let want: Vec<u64> = data.as_array().unwrap().iter().map(u).collect();
                    assert_eq!(x, want, "seed {seed} shuffle");
                }
                other => panic!("unknown rng op {other}"),
            }
        }
    }
}

/// The tree in the golden's neutral form (see `dump` in the generator script), with
/// weights as numbers.
fn dump(node: &Node) -> Value {
    match &node.kind {
        NodeKind::Literal(t) => json!({ "lit": t }),
        NodeKind::Sequence(items) => json!({ "seq": items.iter().map(|n| dump(n)).collect::<Vec<_>>() }),
        NodeKind::Variant(v) => json!({ "variant": {
            "options": v.options.iter().map(|o| json!([o.weight, dump(&o.value)])).collect::<Vec<_>>(),
            "min": v.min, "max": v.max, "sep": v.separator,
            "method": v.sampler.map(|s| s.symbol().to_string()),
        }}),
        NodeKind::Wildcard(w) => json!({ "wildcard": {
            "path": match &w.path { WildcardPath::Text(t) => json!({ "text": t }), WildcardPath::Template(n) => dump(n) },
            "method": w.sampler.map(|s| s.symbol().to_string()),
            "params": w.params.iter().map(|(k, v)| json!([k, dump(v)])).collect::<Vec<_>>(),
        }}),
        NodeKind::Assign(a) => json!({ "set": {
            "name": a.name, "value": dump(&a.value), "immediate": a.immediate, "overwrite": a.overwrite,
        }}),
        NodeKind::Access(a) => {
            json!({ "get": { "name": a.name, "default": a.default.as_ref().map(|d| dump(d)) }})
        }
        NodeKind::Wrap(w) => json!({ "wrap": { "wrapper": dump(&w.wrapper), "inner": dump(&w.inner) }}),
    }
}

/// Golden weights are Python `repr` strings; turn them into numbers to compare.
fn normalise_weights(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(variant)) = map.get_mut("variant") {
                if let Some(Value::Array(options)) = variant.get_mut("options") {
                    for o in options.iter_mut() {
                        if let Some(Value::String(w)) = o.get(0).cloned() {
                            let f: f64 = match w.as_str() {
                                "inf" => f64::INFINITY,
                                "-inf" => f64::NEG_INFINITY,
                                s => s.parse().expect("weight"),
                            };
                            o[0] = json!(f);
                        }
                    }
                }
            }
            map.values_mut().for_each(normalise_weights);
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_weights),
        _ => {}
    }
}

#[test]
fn parse_trees_and_error_positions_match_dynamicprompts() {
    let g = golden();
    let cases = g["parse"].as_array().expect("parse section");
    assert!(cases.len() > 500);
    let mut failures = Vec::new();
    for case in cases {
        let template = case["template"].as_str().expect("template");
        let strict = wildcards::parse::parse(template, true);
        let lenient = wildcards::parse::parse(template, false);
        if let Some(tree) = case.get("tree") {
            let mut want = tree.clone();
            normalise_weights(&mut want);
            match &strict {
                Ok(node) if dump(node) == want => {}
                Ok(node) => {
                    failures.push(format!("{template:?}: tree\n  got  {}\n  want {want}", dump(node)))
                }
                Err(e) => failures.push(format!("{template:?}: unexpected error {e}")),
            }
            // Lenient parsing only differs where the library fails.
            match &lenient {
                Ok(node) if dump(node) == want => {}
                other => failures.push(format!("{template:?}: lenient parse differs: {other:?}")),
            }
        } else {
            let err = &case["error"];
            match (&strict, err["kind"].as_str()) {
                (Err(Error::Parse { char_offset, .. }), Some("parse"))
                    if *char_offset as u64 == u(&err["loc"]) => {}
                (Err(Error::Parse { .. }), Some(kind)) if kind != "parse" => {}
                (other, _) => failures.push(format!("{template:?}: want error {err}, got {other:?}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} parse cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn error_matches(err: &Error, want: &Value) -> bool {
    match want["kind"].as_str().unwrap_or("") {
        "parse" => matches!(err, Error::Parse { char_offset, .. } if *char_offset as u64 == u(&want["loc"])),
        "undefined_variable" => matches!(err, Error::UndefinedVariable(_)),
        "recursion" => matches!(err, Error::Recursion { .. } | Error::RecursiveVariable(_)),
        "NotImplementedError" => matches!(err, Error::Unsupported(_)),
        "RuntimeError" | "StopIteration" => matches!(err, Error::Exhausted),
        "ValueError" => matches!(err, Error::InvalidWeights),
        "hang" => matches!(err, Error::NoSelection | Error::TooComplex),
        _ => false,
    }
}

#[test]
fn generation_cases_match_dynamicprompts() {
    let g = golden();
    let cases = g["cases"].as_array().expect("cases section");
    assert!(cases.len() > 300);
    let source: Arc<dyn WildcardSource> = Arc::new(DirSource::new(repo().join("tests/fixtures/wildcards")));
    let mut failures = Vec::new();
    let mut templates = std::collections::HashSet::new();
    for case in cases {
        let template = case["template"].as_str().expect("template");
        templates.insert(template);
        let ws = case["ignore_whitespace"].as_bool().unwrap_or(false);
        let mode = case["mode"].as_str().expect("mode");
        let result = Template::parse_strict(template).and_then(|t| match mode {
            "random" => {
                let seeds: Vec<i64> =
                    case["seeds"].as_array().unwrap().iter().map(|s| s.as_i64().unwrap()).collect();
                Generator::with_shared_source(source.clone(), Mode::Random)
                    .ignore_whitespace(ws)
                    .generate_with_seeds(&t, &seeds)
            }
            "unlinked" | "combinatorial" | "cyclical" => {
                let m = match mode {
                    "unlinked" => Mode::RandomUnlinked,
                    "combinatorial" => Mode::Combinatorial,
                    _ => Mode::Cyclical,
                };
                let count = case.get("max").or(case.get("count")).map(u).expect("count") as usize;
                let seed = case["seed"].as_i64().expect("seed");
                Generator::with_shared_source(source.clone(), m)
                    .ignore_whitespace(ws)
                    .generate(&t, count, seed)
            }
            other => panic!("unknown mode {other}"),
        });
        let label = format!("{template:?} {mode} ws={ws}");
        match (result, case.get("prompts")) {
            (Ok(got), Some(want)) => {
                let want: Vec<&str> = want.as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
                if got.prompts != want {
                    failures.push(format!("{label}: prompts\n  got  {:?}\n  want {want:?}", got.prompts));
                }
                let mut unknown: Vec<String> = got
                    .warnings
                    .iter()
                    .filter_map(|w| match w {
                        Warning::UnknownWildcard(n) => Some(n.clone()),
                        _ => None,
                    })
                    .collect();
                unknown.sort();
                unknown.dedup();
                let want_unknown: Vec<String> = case["unknown"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().to_string())
                    .collect();
                if unknown != want_unknown {
                    failures.push(format!("{label}: unknown wildcards {unknown:?}, want {want_unknown:?}"));
                }
            }
            (Err(e), None) if error_matches(&e, &case["error"]) => {}
            (got, _) => failures.push(format!(
                "{label}: got {got:?}, want {}",
                case.get("error").unwrap_or(&case["prompts"])
            )),
        }
    }
    assert!(templates.len() >= 80, "only {} templates", templates.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn sampler_symbols_match_golden_prefixes() {
    // The dump above relies on the prefix characters; keep them tied to the enum.
    let symbols: Vec<char> =
        [Sampler::Random, Sampler::Combinatorial, Sampler::Cyclical].iter().map(|s| s.symbol()).collect();
    assert_eq!(symbols, ['~', '!', '@']);
}
