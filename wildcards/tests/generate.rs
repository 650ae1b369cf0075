//! Behaviour of the public API beyond the reference goldens: lenient text, warnings,
//! errors, seeds, folders.

use wildcards::{extension_seeds, DirSource, Error, Generator, MemorySource, Mode, Template, Warning};

fn random(source: MemorySource) -> Generator {
    Generator::new(source, Mode::Random)
}

#[test]
fn generate_lenient_text_rejected_by_library_kept_literally() {
    let text = "a 50% discount, costs $5, snake__case";
    assert!(Template::parse_strict(text).is_err());
    let t = Template::parse(text).unwrap();
    let out = random(MemorySource::new()).generate(&t, 2, 1).unwrap();
    assert_eq!(out.prompts, [text, text]);
}

#[test]
fn generate_unknown_wildcard_kept_with_warning() {
    let t = Template::parse("a __nope__ b").unwrap();
    let out = random(MemorySource::new()).generate(&t, 3, 7).unwrap();
    assert_eq!(out.prompts, ["a __nope__ b"; 3]);
    assert_eq!(out.warnings, [Warning::UnknownWildcard("nope".into())]);
}

#[test]
fn generate_self_referencing_wildcard_recursion_error() {
    let source = MemorySource::new().with("loop", ["x __loop__"]);
    for mode in [Mode::Random, Mode::Combinatorial, Mode::Cyclical] {
        let t = Template::parse("__loop__").unwrap();
        let err = Generator::new(source.clone(), mode).generate(&t, 1, 0).unwrap_err();
        assert!(matches!(err, Error::Recursion { .. }), "{mode:?}: {err:?}");
    }
}

#[test]
fn generate_undefined_variable_names_it() {
    let t = Template::parse("hello ${who}").unwrap();
    let err = random(MemorySource::new()).generate(&t, 1, 0).unwrap_err();
    assert!(matches!(&err, Error::UndefinedVariable(n) if n == "who"), "{err:?}");
}

#[test]
fn generate_parse_error_reports_line_and_column() {
    let err = Template::parse("first line\nsecond {open").unwrap_err();
    match err {
        Error::Parse { line, column, offset, .. } => assert_eq!((line, column, offset), (2, 8, 18)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn generate_same_seeds_positive_and_negative_pick_same_index() {
    let seeds = extension_seeds(1000, 12, false);
    let pos = random(MemorySource::new())
        .generate_with_seeds(&Template::parse("{red|green|blue}").unwrap(), &seeds);
    let neg = random(MemorySource::new()).generate_with_seeds(&Template::parse("{r|g|b}").unwrap(), &seeds);
    let firsts: Vec<String> = pos.unwrap().prompts.iter().map(|p| p[..1].to_string()).collect();
    assert_eq!(firsts, neg.unwrap().prompts);
}

#[test]
fn generate_fixed_seed_repeats_prompt() {
    let seeds = extension_seeds(5, 4, true);
    assert_eq!(seeds, [5, 5, 5, 5]);
    let t = Template::parse("{a|b|c|d|e|f|g|h} {1|2|3|4}").unwrap();
    let out = random(MemorySource::new()).generate_with_seeds(&t, &seeds).unwrap();
    assert!(out.prompts.iter().all(|p| *p == out.prompts[0]));
}

#[test]
fn generate_cyclical_parts_walk_in_step() {
    let t = Template::parse("{@red|green|blue} {@square|circle}").unwrap();
    let out = Generator::new(MemorySource::new(), Mode::Cyclical).generate(&t, 4, 0).unwrap();
    assert_eq!(out.prompts, ["red square", "green circle", "blue square", "red circle"]);
}

#[test]
fn generate_ignore_whitespace_squashes_runs() {
    let t = Template::parse("a   b\n {c  c|d}  ").unwrap();
    let out =
        Generator::new(MemorySource::new(), Mode::Combinatorial).ignore_whitespace(true).generate(&t, 0, 0);
    assert_eq!(out.unwrap().prompts, ["a b c c", "a b d"]);
}

#[test]
fn generate_dir_source_picks_up_new_file_between_calls() {
    let dir = tempfile::tempdir().unwrap();
    let g = Generator::new(DirSource::new(dir.path()), Mode::Combinatorial);
    let t = Template::parse("__sub/fresh__").unwrap();
    // An unknown wildcard repeats forever in combinatorial mode; one prompt is enough.
    assert_eq!(g.generate(&t, 1, 0).unwrap().prompts, ["__sub/fresh__"]);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/fresh.txt"), "one\ntwo\n").unwrap();
    assert_eq!(g.generate(&t, 0, 0).unwrap().prompts, ["one", "two"]);
}

#[test]
fn generate_combinatorial_count_caps_infinite_template() {
    let t = Template::parse("{~x|y}").unwrap();
    let out = Generator::new(MemorySource::new(), Mode::Combinatorial).generate(&t, 0, 3).unwrap();
    assert_eq!(out.prompts.len(), wildcards::DEFAULT_MAX_PROMPTS);
}
