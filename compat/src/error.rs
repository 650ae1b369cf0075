//! Errors of the prompt front end and the infotext reader.
//!
//! A [`PromptError`] is raised only for input that AUTOMATIC1111 itself cannot process (it would
//! raise mid-generation, or silently produce NaN images); every prompt A1111 renders is accepted
//! by the lenient parsers. Each variant names the problem and the byte offset where it starts,
//! so the daemon can answer with a 4xx that points at the offending text.

use std::fmt;

use thiserror::Error;

/// Which request field a [`PromptError`] was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptField {
    Prompt,
    NegativePrompt,
    HiresPrompt,
    HiresNegativePrompt,
}

impl PromptField {
    /// The A1111 request field name (`prompt`, `negative_prompt`, `hr_prompt`, ...).
    pub fn api_name(self) -> &'static str {
        match self {
            PromptField::Prompt => "prompt",
            PromptField::NegativePrompt => "negative_prompt",
            PromptField::HiresPrompt => "hr_prompt",
            PromptField::HiresNegativePrompt => "hr_negative_prompt",
        }
    }
}

impl fmt::Display for PromptField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// A prompt that A1111 would fail on. Positions are byte offsets into the text that was checked
/// (the whole field, before any tag stripping or scheduling).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PromptError {
    /// `(text:weight)` whose weight is made of digits and dots but is not a number, such as
    /// `1.5.2` or `.`; A1111 raises `could not convert string to float` for the whole job.
    #[error("malformed attention weight `{literal}` at byte {position}: not a number")]
    MalformedWeight { position: usize, literal: String },
    /// A weight so long that it overflows to infinity, which turns the conditioning into NaN.
    #[error("attention weight `{literal}` at byte {position} is out of range")]
    WeightOutOfRange { position: usize, literal: String },
    /// A trailing `:weight` of an `AND` sub-prompt that overflows to infinity.
    #[error("composable prompt weight `{literal}` at byte {position} is out of range")]
    AndWeightOutOfRange { position: usize, literal: String },
    /// The number of a `[from:to:when]` group that does not convert to a finite step count;
    /// A1111 raises `OverflowError` converting it to an integer.
    #[error("prompt editing step `{literal}` at byte {position} is out of range")]
    StepOutOfRange { position: usize, literal: String },
    /// Editing/emphasis groups nested so deeply that A1111's tree walk hits Python's recursion
    /// limit.
    #[error("brackets nested deeper than {limit} levels at byte {position}")]
    NestingTooDeep { position: usize, limit: usize },
    /// An extra-network tag whose arguments A1111's handler cannot convert (for example
    /// `<lora:name:strong>`); A1111 logs the error and applies none of the prompt's networks.
    #[error("extra network `{tag}` at byte {position}: {problem}")]
    ExtraNetworkArguments { position: usize, tag: String, problem: String },
    /// Any of the above, located in one field of a generation request.
    #[error("{field}: {source}")]
    InField {
        field: PromptField,
        #[source]
        source: Box<PromptError>,
    },
}

impl PromptError {
    /// Byte offset of the problem within the checked text.
    pub fn position(&self) -> usize {
        match self {
            PromptError::MalformedWeight { position, .. }
            | PromptError::WeightOutOfRange { position, .. }
            | PromptError::AndWeightOutOfRange { position, .. }
            | PromptError::StepOutOfRange { position, .. }
            | PromptError::NestingTooDeep { position, .. }
            | PromptError::ExtraNetworkArguments { position, .. } => *position,
            PromptError::InField { source, .. } => source.position(),
        }
    }

    /// The field the error was found in, when it came from a whole request.
    pub fn field(&self) -> Option<PromptField> {
        match self {
            PromptError::InField { field, .. } => Some(*field),
            _ => None,
        }
    }

    pub(crate) fn in_field(self, field: PromptField) -> PromptError {
        PromptError::InField { field, source: Box::new(self) }
    }

    /// The same error with its position moved by `f` (used to map offsets in derived texts back
    /// to the original field).
    pub(crate) fn map_position(self, f: impl Fn(usize) -> usize) -> PromptError {
        match self {
            PromptError::MalformedWeight { position, literal } => {
                PromptError::MalformedWeight { position: f(position), literal }
            }
            PromptError::WeightOutOfRange { position, literal } => {
                PromptError::WeightOutOfRange { position: f(position), literal }
            }
            PromptError::AndWeightOutOfRange { position, literal } => {
                PromptError::AndWeightOutOfRange { position: f(position), literal }
            }
            PromptError::StepOutOfRange { position, literal } => {
                PromptError::StepOutOfRange { position: f(position), literal }
            }
            PromptError::NestingTooDeep { position, limit } => {
                PromptError::NestingTooDeep { position: f(position), limit }
            }
            PromptError::ExtraNetworkArguments { position, tag, problem } => {
                PromptError::ExtraNetworkArguments { position: f(position), tag, problem }
            }
            PromptError::InField { field, source } => {
                PromptError::InField { field, source: Box::new(source.map_position(f)) }
            }
        }
    }
}

/// An infotext whose parameters cannot be turned into a typed [`crate::infotext::GenerationInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InfotextError {
    /// A parameter every A1111 infotext carries (Steps, Sampler, CFG scale, Seed, Size) is absent.
    #[error("infotext has no `{0}` parameter")]
    MissingKey(String),
    /// A parameter is present but its value does not have the expected type.
    #[error("infotext parameter `{key}` has invalid value `{value}`")]
    InvalidValue { key: String, value: String },
}
