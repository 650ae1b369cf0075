//! Properties of the prompt front end over arbitrary input: no layer panics, and the outputs keep
//! the invariants the conditioning code relies on.

use compat::prompt::{
    extract_extra_networks, parse_attention, parse_prompts, parse_prompts_lenient, prompt_schedule,
    split_and, text_at_step, validate_negative_prompt, validate_prompt, HiresPromptRequest, PromptRequest,
    ScheduleParams,
};
use proptest::prelude::*;

/// Strings dense in prompt syntax, so the parsers' interesting paths are reached often.
fn prompt_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(":".to_string()),
        Just("|".to_string()),
        Just("\\".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("BREAK".to_string()),
        Just(" AND ".to_string()),
        Just("<lora:x:0.5>".to_string()),
        Just("<".to_string()),
        Just(">".to_string()),
        Just("1e999".to_string()),
        "[0-9.+-]{1,4}",
        "[a-zé ]{1,5}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

fn request<'a>(prompt: &'a str, negative: &'a str, steps: u32, hires: Option<u32>) -> PromptRequest<'a> {
    PromptRequest {
        prompt,
        negative_prompt: negative,
        steps,
        hires: hires.map(|h| HiresPromptRequest { prompt: "", negative_prompt: "", steps: h }),
        use_old_scheduling: steps.is_multiple_of(3),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prompt_layers_arbitrary_text_never_panic(text in any::<String>(), steps in 0u32..40) {
        let (stripped, _) = extract_extra_networks(&text);
        let subs = split_and(&stripped);
        prop_assert!(!subs.is_empty());
        let schedule = prompt_schedule(&text, &ScheduleParams::first_pass(steps));
        prop_assert!(!schedule.is_empty());
        prop_assert!(!parse_attention(&text).is_empty());
        let _ = validate_prompt(&text);
        let _ = validate_negative_prompt(&text);
        let _ = parse_prompts(&request(&text, &text, steps, Some(steps / 2)));
    }

    #[test]
    fn prompt_layers_syntax_heavy_text_never_panic(text in prompt_like(), steps in 0u32..30, hires in 1u32..20) {
        let parsed = parse_prompts_lenient(&request(&text, &text, steps, Some(hires)));
        let _ = parse_prompts(&request(&text, &text, steps, Some(hires)));
        for pass in std::iter::once(&parsed.first_pass).chain(parsed.hires_pass.as_ref()) {
            prop_assert!(!pass.sub_prompts.is_empty());
            for sub in &pass.sub_prompts {
                prop_assert!(!sub.schedule.is_empty());
                for entry in &sub.schedule {
                    prop_assert!(!parse_attention(&entry.text).is_empty());
                }
            }
        }
    }

    #[test]
    fn schedule_steps_are_increasing_and_end_at_step_count(text in prompt_like(), steps in 1u32..30) {
        let schedule = prompt_schedule(&text, &ScheduleParams::first_pass(steps));
        prop_assert_eq!(schedule.last().map(|e| e.end_at_step), Some(steps));
        prop_assert!(schedule.windows(2).all(|w| w[0].end_at_step < w[1].end_at_step));
        prop_assert!(schedule.iter().all(|e| e.end_at_step >= 1));
        // Every counter value of the pass resolves to one of the entries.
        for k in 0..steps {
            let text_used = text_at_step(&schedule, k);
            prop_assert!(schedule.iter().any(|e| e.text == text_used));
        }
    }

    #[test]
    fn parse_prompts_strict_agrees_with_lenient_when_valid(text in prompt_like(), steps in 1u32..25) {
        let req = request(&text, "", steps, None);
        if let Ok(strict) = parse_prompts(&req) {
            prop_assert_eq!(strict, parse_prompts_lenient(&req));
        }
    }

    #[test]
    fn prompt_errors_point_inside_the_field(text in prompt_like(), steps in 1u32..25) {
        if let Err(err) = parse_prompts(&request(&text, "", steps, None)) {
            prop_assert!(err.position() < text.len().max(1), "{} in {:?}", err, text);
            prop_assert!(text.is_char_boundary(err.position()));
        }
    }

    #[test]
    fn attention_weights_are_products_of_bracket_multipliers(words in prop::collection::vec("[a-z]{1,4}", 1..5), depth in 0usize..5) {
        // `(` … `)` nested `depth` times multiplies by 1.1 per level, in order.
        let inner = words.join(" ");
        let text = format!("{}{}{}", "(".repeat(depth), inner, ")".repeat(depth));
        let mut want = 1.0f64;
        for _ in 0..depth {
            want *= 1.1;
        }
        prop_assert_eq!(parse_attention(&text), vec![(inner, want)]);
    }
}
