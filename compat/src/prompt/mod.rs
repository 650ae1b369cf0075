//! The AUTOMATIC1111 prompt language (prompts.md §1), layer by layer:
//!
//! 1. [`extract_extra_networks`]: `<lora:name:0.8>` and other `<kind:args>` tags are removed
//!    from positive prompts and returned as [`ExtraNetwork`]s.
//! 2. [`split_and`]: composable diffusion, `a AND b :1.2`, positive prompts only.
//! 3. [`prompt_schedule`]: prompt editing `[a:b:when]` and alternation `[a|b]` become a list
//!    of `(end_at_step, text)` entries; [`text_at_step`] picks the text for a sampler step.
//! 4. [`parse_attention`]: emphasis `(x)`, `[x]`, `(x:1.3)`, escapes and `BREAK`, run by the
//!    conditioning code on each scheduled text.
//!
//! [`parse_prompts`] runs layers 1–3 for a whole request (prompt, negative prompt, and the
//! hires-fix pair) and returns a [`ParsedPrompt`]. The layers themselves are lenient and
//! reproduce A1111 for every prompt it can render; [`validate_prompt`] and the strict entry point
//! report the inputs A1111 would fail on (a malformed weight such as `(a:1.5.2)`, an infinite
//! editing step, unusable LoRA arguments, absurd nesting) as a [`PromptError`] with its byte
//! position, so the daemon can answer 4xx instead of failing mid-job.

mod attention;
mod composable;
mod extra_networks;
mod schedule;
pub(crate) mod text;

pub use attention::{check_attention, is_break, parse_attention, AttentionSegment};
pub use composable::split_and;
pub use extra_networks::{extract_extra_networks, group_by_handler, ExtraNetwork};
pub use schedule::{prompt_schedule, text_at_step, ScheduleEntry, ScheduleParams, MAX_NESTING};

use crate::error::{PromptError, PromptField};
use text::Sourced;

/// The prompts of one generation request and the step counts their schedules are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptRequest<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    /// Total sampler steps of the first pass (doubled for second-order samplers).
    pub steps: u32,
    /// The hires-fix pass, when enabled.
    pub hires: Option<HiresPromptRequest<'a>>,
    /// A1111's "Old prompt editing timelines" setting.
    pub use_old_scheduling: bool,
}

/// The hires-fix half of a [`PromptRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiresPromptRequest<'a> {
    /// `hr_prompt`; empty means "same as the first-pass prompt", as in A1111.
    pub prompt: &'a str,
    /// `hr_negative_prompt`; empty means "same as the first-pass negative prompt".
    pub negative_prompt: &'a str,
    /// Total steps of the hires sampler (hires steps, or the first-pass steps when "Hires steps"
    /// is 0; doubled for second-order samplers).
    pub steps: u32,
}

/// One `AND` sub-prompt with its guidance weight and editing schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct SubPrompt {
    /// Sub-prompt text after the `:weight` suffix is removed (tags already stripped).
    pub text: String,
    pub weight: f64,
    pub schedule: Vec<ScheduleEntry>,
}

/// Everything the conditioning code needs for one sampling pass.
#[derive(Debug, Clone, PartialEq)]
pub struct PassPrompts {
    /// Extra-network tags of the positive prompt, in order of appearance.
    pub extra_networks: Vec<ExtraNetwork>,
    /// The positive prompt's `AND` sub-prompts (at least one).
    pub sub_prompts: Vec<SubPrompt>,
    /// The negative prompt's schedule; negative prompts are neither split on `AND` nor scanned
    /// for extra networks.
    pub negative: Vec<ScheduleEntry>,
}

/// The per-request prompt front end's result: layers 1–3 for the first pass and, with hires fix,
/// the second pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedPrompt {
    pub first_pass: PassPrompts,
    pub hires_pass: Option<PassPrompts>,
}

/// Layers 1–3 for a positive prompt, with the problems A1111 would fail on.
fn positive_pass(prompt: &str, params: &ScheduleParams) -> (PassPrompts, Option<PromptError>) {
    let original = Sourced::identity(prompt);
    let (stripped, extra_networks) = extra_networks::extract_sourced(&original);
    let mut problem = extra_networks.iter().find_map(|n| n.error.clone());
    let subs = composable::split_sourced(&stripped);
    if problem.is_none() {
        problem = composable::check_weights(&subs).err();
    }
    let sub_prompts = subs
        .into_iter()
        .map(|sub| {
            let (schedule, found) = sourced_schedule(&sub.text, params);
            if problem.is_none() {
                problem = found;
            }
            SubPrompt { text: sub.text.text, weight: sub.weight, schedule }
        })
        .collect();
    (PassPrompts { extra_networks, sub_prompts, negative: Vec::new() }, problem)
}

/// A schedule plus the first problem in it: an unconvertible step, too deep nesting, or a weight
/// in any scheduled text that the attention layer cannot use. Positions refer to the field.
fn sourced_schedule(text: &Sourced, params: &ScheduleParams) -> (Vec<ScheduleEntry>, Option<PromptError>) {
    let built = schedule::schedule_sourced(text, params);
    let mut problem = built.problem;
    let mut entries = Vec::with_capacity(built.entries.len());
    for (end_at_step, scheduled) in built.entries {
        if problem.is_none() {
            problem = check_attention(&scheduled.text).err().map(|e| e.map_position(|p| scheduled.origin(p)));
        }
        entries.push(ScheduleEntry { end_at_step, text: scheduled.text });
    }
    (entries, problem)
}

fn pass(
    prompt: &str,
    negative: &str,
    params: &ScheduleParams,
    fields: (PromptField, PromptField),
) -> Result<PassPrompts, PromptError> {
    let (mut pass, problem) = positive_pass(prompt, params);
    if let Some(p) = problem {
        return Err(p.in_field(fields.0));
    }
    let (negative, problem) = sourced_schedule(&Sourced::identity(negative), params);
    if let Some(p) = problem {
        return Err(p.in_field(fields.1));
    }
    pass.negative = negative;
    Ok(pass)
}

/// The whole prompt front end for one request: extra networks, `AND` sub-prompts with weights,
/// and the editing schedule of every sub-prompt and of the negative prompt, for the first pass
/// and (with hires fix) the second.
///
/// Fails with a [`PromptError`] naming the field and byte position when A1111 would fail the
/// job on these prompts; use [`parse_prompts_lenient`] to get A1111's output regardless.
pub fn parse_prompts(request: &PromptRequest<'_>) -> Result<ParsedPrompt, PromptError> {
    validate_prompt(request.prompt).map_err(|e| e.in_field(PromptField::Prompt))?;
    validate_negative_prompt(request.negative_prompt).map_err(|e| e.in_field(PromptField::NegativePrompt))?;
    let first = first_params(request);
    let first_pass = pass(
        request.prompt,
        request.negative_prompt,
        &first,
        (PromptField::Prompt, PromptField::NegativePrompt),
    )?;
    let hires_pass = match hires_inputs(request) {
        Some((prompt, negative, params, fields)) => {
            validate_prompt(prompt).map_err(|e| e.in_field(fields.0))?;
            validate_negative_prompt(negative).map_err(|e| e.in_field(fields.1))?;
            Some(pass(prompt, negative, &params, fields)?)
        }
        None => None,
    };
    Ok(ParsedPrompt { first_pass, hires_pass })
}

/// [`parse_prompts`] without validation: what A1111 computes, with the documented lenient
/// stand-ins where A1111 would raise.
pub fn parse_prompts_lenient(request: &PromptRequest<'_>) -> ParsedPrompt {
    let lenient = |prompt: &str, negative: &str, params: &ScheduleParams| {
        let (mut pass, _) = positive_pass(prompt, params);
        pass.negative = prompt_schedule(negative, params);
        pass
    };
    let first_pass = lenient(request.prompt, request.negative_prompt, &first_params(request));
    let hires_pass =
        hires_inputs(request).map(|(prompt, negative, params, _)| lenient(prompt, negative, &params));
    ParsedPrompt { first_pass, hires_pass }
}

fn first_params(request: &PromptRequest<'_>) -> ScheduleParams {
    ScheduleParams { steps: request.steps, hires_steps: None, use_old_scheduling: request.use_old_scheduling }
}

type HiresInputs<'a> = (&'a str, &'a str, ScheduleParams, (PromptField, PromptField));

fn hires_inputs<'a>(request: &PromptRequest<'a>) -> Option<HiresInputs<'a>> {
    let hires = request.hires?;
    let prompt = if hires.prompt.is_empty() { request.prompt } else { hires.prompt };
    let negative =
        if hires.negative_prompt.is_empty() { request.negative_prompt } else { hires.negative_prompt };
    let params = ScheduleParams {
        steps: request.steps,
        hires_steps: Some(hires.steps),
        use_old_scheduling: request.use_old_scheduling,
    };
    Some((prompt, negative, params, (PromptField::HiresPrompt, PromptField::HiresNegativePrompt)))
}

/// Checks a positive prompt for input A1111 cannot process, independent of the step count:
/// extra-network tags whose arguments its handler cannot convert, `AND` weights or attention
/// weights that are not finite numbers (`(a:1.5.2)`), editing steps that are infinite, and
/// nesting beyond [`MAX_NESTING`]. Attention weights are checked on the text as written (tags
/// removed, per sub-prompt); [`parse_prompts`] additionally checks every scheduled text.
pub fn validate_prompt(prompt: &str) -> Result<(), PromptError> {
    let original = Sourced::identity(prompt);
    let (stripped, networks) = extra_networks::extract_sourced(&original);
    if let Some(err) = networks.into_iter().find_map(|n| n.error) {
        return Err(err);
    }
    let subs = composable::split_sourced(&stripped);
    composable::check_weights(&subs)?;
    for sub in &subs {
        check_text(&sub.text)?;
    }
    Ok(())
}

/// [`validate_prompt`] for a negative prompt, which A1111 does not scan for extra networks or
/// split on `AND`.
pub fn validate_negative_prompt(prompt: &str) -> Result<(), PromptError> {
    check_text(&Sourced::identity(prompt))
}

fn check_text(text: &Sourced) -> Result<(), PromptError> {
    schedule::check_static(text)?;
    check_attention(&text.text).map_err(|e| e.map_position(|p| text.origin(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_prompt_reports_position_in_original_text() {
        let err = validate_prompt("<lora:x:1> a AND (b:1.5.2)").unwrap_err();
        assert_eq!(err, PromptError::MalformedWeight { position: 20, literal: "1.5.2".into() });
        assert_eq!(&"<lora:x:1> a AND (b:1.5.2)"[20..25], "1.5.2");
    }

    #[test]
    fn parse_prompts_finds_weight_created_by_scheduling() {
        // Only the scheduled text `(a:1.5.2)` contains the malformed weight.
        let prompt = "(a:1.5.[x|]2)";
        assert_eq!(validate_prompt(prompt), Ok(()));
        let request =
            PromptRequest { prompt, negative_prompt: "", steps: 4, hires: None, use_old_scheduling: false };
        let err = parse_prompts(&request).unwrap_err();
        assert_eq!(err.field(), Some(PromptField::Prompt));
        assert!(matches!(err, PromptError::InField { .. }));
        assert_eq!(err.position(), 3);
        assert!(err.to_string().starts_with("prompt: malformed attention weight `1.5.2` at byte 3"), "{err}");
    }
}
