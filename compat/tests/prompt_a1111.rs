//! A1111 prompt-language behaviour as documented: the doctests of `modules/prompt_parser.py`
//! (v1.10), the worked examples of prompts.md §1.9 and edge cases. Expected values were
//! confirmed against A1111's own functions; weights are compared exactly because the
//! multiplications happen in A1111's order.

use compat::error::{PromptError, PromptField};
use compat::prompt::{
    parse_attention, parse_prompts, parse_prompts_lenient, prompt_schedule, split_and, text_at_step,
    validate_negative_prompt, validate_prompt, HiresPromptRequest, PromptRequest, ScheduleEntry,
    ScheduleParams,
};

fn sched(prompt: &str, steps: u32) -> Vec<(u32, String)> {
    entries(&prompt_schedule(prompt, &ScheduleParams::first_pass(steps)))
}

fn sched_hires(prompt: &str, base: u32, hires: u32) -> Vec<(u32, String)> {
    entries(&prompt_schedule(prompt, &ScheduleParams::hires(base, hires)))
}

fn entries(schedule: &[ScheduleEntry]) -> Vec<(u32, String)> {
    schedule.iter().map(|e| (e.end_at_step, e.text.clone())).collect()
}

fn s(v: &[(u32, &str)]) -> Vec<(u32, String)> {
    v.iter().map(|(n, t)| (*n, t.to_string())).collect()
}

fn a(v: &[(&str, f64)]) -> Vec<(String, f64)> {
    v.iter().map(|(t, w)| (t.to_string(), *w)).collect()
}

fn alternating(steps: u32, even: &str, odd: &str) -> Vec<(u32, String)> {
    (1..=steps).map(|i| (i, if i % 2 == 1 { even } else { odd }.to_string())).collect()
}

#[test]
fn schedule_doctests_of_get_learned_conditioning_prompt_schedules_match() {
    assert_eq!(sched("test", 10), s(&[(10, "test")]));
    assert_eq!(sched("a [b:3]", 10), s(&[(3, "a "), (10, "a b")]));
    assert_eq!(sched("a [b: 3]", 10), s(&[(3, "a "), (10, "a b")]));
    assert_eq!(sched("a [[[b]]:2]", 10), s(&[(2, "a "), (10, "a [[b]]")]));
    assert_eq!(sched("[(a:2):3]", 10), s(&[(3, ""), (10, "(a:2)")]));
    assert_eq!(sched("a [b : c : 1] d", 10), s(&[(1, "a b  d"), (10, "a  c  d")]));
    assert_eq!(sched("a[b:[c:d:2]:1]e", 10), s(&[(1, "abe"), (2, "ace"), (10, "ade")]));
    assert_eq!(sched("a [unbalanced", 10), s(&[(10, "a [unbalanced")]));
    assert_eq!(sched("a [b:.5] c", 10), s(&[(5, "a  c"), (10, "a b c")]));
    // The v1.10 doctest still expects `[(5, "a  c"), (10, "a {b|d{ c")]`, written before `|`
    // was excluded from plain text; A1111's actual grammar rejects the stray `|` and leaves the
    // prompt unchanged, which is what it really does.
    assert_eq!(sched("a [{b|d{:.5] c", 10), s(&[(10, "a [{b|d{:.5] c")]));
    assert_eq!(sched("((a][:b:c [d:3]", 10), s(&[(3, "((a][:b:c "), (10, "((a][:b:c d")]));
    assert_eq!(sched("[a|(b:1.1)]", 10), alternating(10, "a", "(b:1.1)"));
    assert_eq!(sched("[fe|]male", 10), alternating(10, "female", "male"));
    let fe: Vec<(u32, String)> =
        (1..=10).map(|i| (i, if i % 4 == 1 { "female" } else { "male" }.to_string())).collect();
    assert_eq!(sched("[fe|||]male", 10), fe);
    // get_learned_conditioning's docstring: end steps 20 and 5/20.
    assert_eq!(sched("a red crown", 20), s(&[(20, "a red crown")]));
    assert_eq!(
        sched("a [blue:green:5] jeweled crown", 20),
        s(&[(5, "a blue jeweled crown"), (20, "a green jeweled crown")])
    );
    assert_eq!(sched_hires("a [b:.5] c", 10, 10), s(&[(10, "a b c")]));
    assert_eq!(sched_hires("a [b:1.5] c", 10, 10), s(&[(5, "a  c"), (10, "a b c")]));
}

#[test]
fn schedule_source_comment_example_matches() {
    // The example at the top of prompt_parser.py, 100 steps.
    let prompt = "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]\
                  [ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]";
    assert_eq!(
        sched(prompt, 100),
        s(&[
            (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
            (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
            (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
            (75, "fantasy landscape with a lake and an oak in background masterful"),
            (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
        ])
    );
}

#[test]
fn attention_doctests_of_parse_prompt_attention_match() {
    assert_eq!(parse_attention("normal text"), a(&[("normal text", 1.0)]));
    assert_eq!(
        parse_attention("an (important) word"),
        a(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
    );
    assert_eq!(parse_attention("(unbalanced"), a(&[("unbalanced", 1.1)]));
    assert_eq!(parse_attention("\\(literal\\]"), a(&[("(literal]", 1.0)]));
    assert_eq!(parse_attention("(unnecessary)(parens)"), a(&[("unnecessaryparens", 1.1)]));
    assert_eq!(
        parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
        a(&[
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ])
    );
}

#[test]
fn attention_worked_examples_1_to_8_match() {
    assert_eq!(parse_attention("a (b) c"), a(&[("a ", 1.0), ("b", 1.1), (" c", 1.0)]));
    assert_eq!(
        parse_attention("a ((b:1.3)) [c] [[d]]"),
        a(&[
            ("a ", 1.0),
            ("b", 1.4300000000000002),
            (" ", 1.0),
            ("c", 0.9090909090909091),
            (" ", 1.0),
            ("d", 0.8264462809917354),
        ])
    );
    assert_eq!(parse_attention("[unbalanced"), a(&[("unbalanced", 0.9090909090909091)]));
    assert_eq!(parse_attention("x) y] z"), a(&[("x) y] z", 1.0)]));
    assert_eq!(parse_attention("\\(literal\\) (x:0.5)"), a(&[("(literal) ", 1.0), ("x", 0.5)]));
    assert_eq!(parse_attention("(a:b)"), a(&[("a:b", 1.1)]));
    assert_eq!(parse_attention("( a )"), a(&[(" a ", 1.1)]));
    assert_eq!(parse_attention("(a:1e3)"), a(&[("a:1e3", 1.1)]));
    assert_eq!(parse_attention("(a:-1)"), a(&[("a", -1.0)]));
    assert_eq!(parse_attention("(a)(b)"), a(&[("ab", 1.1)]));
    assert_eq!(parse_attention("(a:1.2) (b:1.2)"), a(&[("a", 1.2), (" ", 1.0), ("b", 1.2)]));
    assert_eq!(parse_attention("a, BREAK, b"), a(&[("a,", 1.0), ("BREAK", -1.0), (", b", 1.0)]));
    assert_eq!(parse_attention("(a BREAK b:1.5)"), a(&[("a", 1.5), ("BREAK", -1.5), ("b", 1.5)]));
    assert_eq!(parse_attention("((x))"), a(&[("x", 1.2100000000000002)]));
    assert_eq!(parse_attention("(((x:1.3)))"), a(&[("x", 1.5730000000000004)]));
    assert_eq!(parse_attention("[[x]]"), a(&[("x", 0.8264462809917354)]));
}

#[test]
fn schedule_worked_examples_9_to_16_match() {
    assert_eq!(sched("[cat:dog:0.5]", 20), s(&[(10, "cat"), (20, "dog")]));
    assert_eq!(sched("a [hat:5]", 20), s(&[(5, "a "), (20, "a hat")]));
    assert_eq!(sched("a [hat::5]", 20), s(&[(5, "a hat"), (20, "a ")]));
    assert_eq!(
        sched("[a|b] [c|d|e]", 6),
        s(&[(1, "a c"), (2, "b d"), (3, "a e"), (4, "b c"), (5, "a d"), (6, "b e")])
    );
    assert_eq!(sched("[a:[b|c]:3]", 6), s(&[(1, "a"), (2, "a"), (3, "a"), (4, "c"), (5, "b"), (6, "c")]));
    let thirteen = sched("(a [b:c:0.5]:1.2)", 10);
    assert_eq!(thirteen, s(&[(5, "(a b:1.2)"), (10, "(a c:1.2)")]));
    assert_eq!(parse_attention(&thirteen[0].1), a(&[("a b", 1.2)]));
    assert_eq!(parse_attention(&thirteen[1].1), a(&[("a c", 1.2)]));
    assert_eq!(sched("[word:0.8]", 20), s(&[(16, ""), (20, "word")]));
    assert_eq!(sched("\\[a:b:5\\]", 20), s(&[(20, "\\[a:b:5\\]")]));
    assert_eq!(parse_attention("\\[a:b:5\\]"), a(&[("[a:b:5]", 1.0)]));
    assert_eq!(sched("[a:b:c:5]", 20), s(&[(20, "[a:b:c:5]")]));
    assert_eq!(parse_attention("[a:b:c:5]"), a(&[("a:b:c:5", 0.9090909090909091)]));
}

#[test]
fn parse_prompts_worked_example_17_and_sub_prompts() {
    let request = PromptRequest {
        prompt: "[a:b:5] AND c :0.7",
        negative_prompt: "",
        steps: 10,
        hires: None,
        use_old_scheduling: false,
    };
    let parsed = parse_prompts(&request).unwrap();
    let subs = &parsed.first_pass.sub_prompts;
    assert_eq!(subs.len(), 2);
    assert_eq!((subs[0].text.as_str(), subs[0].weight), ("[a:b:5]", 1.0));
    assert_eq!(entries(&subs[0].schedule), s(&[(5, "a"), (10, "b")]));
    assert_eq!((subs[1].text.as_str(), subs[1].weight), (" c", 0.7));
    assert_eq!(entries(&subs[1].schedule), s(&[(10, " c")]));
    assert_eq!(entries(&parsed.first_pass.negative), s(&[(10, "")]));
    assert!(parsed.hires_pass.is_none());
}

#[test]
fn parse_prompts_worked_example_18_hires_and_lora() {
    let request = PromptRequest {
        prompt: "masterpiece, <lora:foo:0.8> [cat:dog:1.5] :1.1",
        negative_prompt: "lowres, [blurry:5]",
        steps: 20,
        hires: Some(HiresPromptRequest { prompt: "", negative_prompt: "", steps: 10 }),
        use_old_scheduling: false,
    };
    let parsed = parse_prompts(&request).unwrap();
    for pass in [&parsed.first_pass, parsed.hires_pass.as_ref().unwrap()] {
        let lora = &pass.extra_networks[0];
        assert_eq!((lora.kind.as_str(), lora.name.as_str()), ("lora", "foo"));
        assert_eq!((lora.te_multiplier, lora.unet_multiplier, lora.dyn_dim), (0.8, 0.8, None));
        assert_eq!(pass.sub_prompts.len(), 1);
        assert_eq!(pass.sub_prompts[0].text, "masterpiece,  [cat:dog:1.5]");
        assert_eq!(pass.sub_prompts[0].weight, 1.1);
    }
    assert_eq!(entries(&parsed.first_pass.sub_prompts[0].schedule), s(&[(20, "masterpiece,  cat")]));
    let hires = parsed.hires_pass.as_ref().unwrap();
    assert_eq!(
        entries(&hires.sub_prompts[0].schedule),
        s(&[(5, "masterpiece,  cat"), (10, "masterpiece,  dog")])
    );
    // Negative prompts keep their tags and are scheduled with the same rules.
    assert_eq!(entries(&parsed.first_pass.negative), s(&[(5, "lowres, "), (20, "lowres, blurry")]));
    assert_eq!(entries(&hires.negative), s(&[(10, "lowres, blurry")]));
}

#[test]
fn parse_prompts_hires_prompt_replaces_first_pass_prompt() {
    let request = PromptRequest {
        prompt: "<lora:a:1> cat",
        negative_prompt: "bad <lora:n:1>",
        steps: 20,
        hires: Some(HiresPromptRequest { prompt: "<lora:b:0.5> dog", negative_prompt: "worse", steps: 15 }),
        use_old_scheduling: false,
    };
    let parsed = parse_prompts(&request).unwrap();
    assert_eq!(parsed.first_pass.extra_networks[0].name, "a");
    assert_eq!(parsed.first_pass.negative[0].text, "bad <lora:n:1>");
    let hires = parsed.hires_pass.unwrap();
    assert_eq!(hires.extra_networks[0].name, "b");
    assert_eq!(hires.sub_prompts[0].text, " dog");
    assert_eq!(entries(&hires.negative), s(&[(15, "worse")]));
}

#[test]
fn schedule_edge_cases() {
    assert_eq!(sched("", 5), s(&[(5, "")]));
    assert_eq!(sched("BREAK", 3), s(&[(3, "BREAK")]));
    assert_eq!(parse_attention(""), a(&[("", 1.0)]));
    assert_eq!(parse_attention("BREAK"), a(&[("", 1.0), ("BREAK", -1.0), ("", 1.0)]));
    assert_eq!(
        parse_attention("BREAK BREAK"),
        a(&[("", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("", 1.0)])
    );
    // `when` 0 never shows the first part, 1 shows it for step 1, beyond steps always.
    assert_eq!(sched("[a:b:0]", 5), s(&[(5, "b")]));
    assert_eq!(sched("[a:b:1]", 5), s(&[(1, "a"), (5, "b")]));
    assert_eq!(sched("[a:b:7]", 5), s(&[(5, "a")]));
    assert_eq!(sched("[a:b:1.0]", 5), s(&[(5, "a")]));
    assert_eq!(sched("[a|b]", 1), s(&[(1, "a")]));
    assert_eq!(sched("[a:[b:c:0.5]:0.8]", 10), s(&[(5, "a"), (8, "a"), (10, "c")]));
    // A stray `|` anywhere disables scheduling for the whole prompt.
    assert_eq!(sched("[a:b:3] x|y", 10), s(&[(10, "[a:b:3] x|y")]));
    // Tags are stripped before scheduling: the LoRA is not scheduled, the brackets remain.
    let request = PromptRequest {
        prompt: "[<lora:x:1>:5]",
        negative_prompt: "",
        steps: 10,
        hires: None,
        use_old_scheduling: false,
    };
    let parsed = parse_prompts(&request).unwrap();
    assert_eq!(parsed.first_pass.extra_networks.len(), 1);
    assert_eq!(entries(&parsed.first_pass.sub_prompts[0].schedule), s(&[(5, ""), (10, "")]));
    // `AND` inside brackets still splits.
    assert_eq!(split_and("[cat AND dog:5]"), vec![("[cat".to_string(), 1.0), (" dog:5]".to_string(), 1.0)]);
}

#[test]
fn text_at_step_reproduces_a1111_off_by_one() {
    let schedule = prompt_schedule("[cat:dog:10]", &ScheduleParams::first_pass(20));
    let used: Vec<&str> = (0..20).map(|k| text_at_step(&schedule, k)).collect();
    assert_eq!(used.iter().filter(|t| **t == "cat").count(), 11);
    assert_eq!(used.iter().filter(|t| **t == "dog").count(), 9);
    let alt = prompt_schedule("[a|b]", &ScheduleParams::first_pass(4));
    let used: Vec<&str> = (0..4).map(|k| text_at_step(&alt, k)).collect();
    assert_eq!(used, vec!["a", "a", "b", "a"]);
}

#[test]
fn validate_prompt_malformed_weight_is_an_error_naming_position() {
    let err = validate_prompt("a photo, (a:1.5.2)").unwrap_err();
    assert_eq!(err, PromptError::MalformedWeight { position: 12, literal: "1.5.2".into() });
    assert_eq!(err.to_string(), "malformed attention weight `1.5.2` at byte 12: not a number");
    assert_eq!(validate_prompt("a photo, (a:1.5)"), Ok(()));
    // Without an open parenthesis A1111 reads the same characters as text.
    assert_eq!(validate_prompt("a:1.5.2)"), Ok(()));
    assert!(validate_negative_prompt("(bad:..)").is_err());
    // A negative prompt is not scanned for tags, so a bad tag there is just text.
    assert_eq!(validate_negative_prompt("<lora:x:strong>"), Ok(()));
    assert!(validate_prompt("<lora:x:strong>").is_err());
    assert!(matches!(validate_prompt("[a:b:1e999]"), Err(PromptError::StepOutOfRange { position: 5, .. })));
}

#[test]
fn parse_prompts_reports_field_of_error() {
    let mut request = PromptRequest {
        prompt: "ok",
        negative_prompt: "(x:1..2)",
        steps: 20,
        hires: None,
        use_old_scheduling: false,
    };
    let err = parse_prompts(&request).unwrap_err();
    assert_eq!(err.field(), Some(PromptField::NegativePrompt));
    assert_eq!(err.to_string(), "negative_prompt: malformed attention weight `1..2` at byte 3: not a number");
    request.negative_prompt = "";
    request.hires = Some(HiresPromptRequest { prompt: "x (y:.)", negative_prompt: "", steps: 10 });
    assert_eq!(parse_prompts(&request).unwrap_err().field(), Some(PromptField::HiresPrompt));
    // The lenient entry point still produces A1111's output.
    let lenient = parse_prompts_lenient(&request);
    assert_eq!(lenient.hires_pass.unwrap().sub_prompts[0].text, "x (y:.)");
}

#[test]
fn parse_prompts_hires_step_overflow_only_in_hires_pass() {
    // (1.7e308 - 1.0) * 2 overflows only in the hires conversion.
    let prompt = "[a:b:1.7e308]";
    let request = PromptRequest {
        prompt,
        negative_prompt: "",
        steps: 1,
        hires: Some(HiresPromptRequest { prompt: "", negative_prompt: "", steps: 2 }),
        use_old_scheduling: false,
    };
    let err = parse_prompts(&request).unwrap_err();
    assert_eq!(err.field(), Some(PromptField::HiresPrompt));
    assert!(
        matches!(err, PromptError::InField { ref source, .. } if matches!(**source, PromptError::StepOutOfRange { position: 5, .. }))
    );
}
