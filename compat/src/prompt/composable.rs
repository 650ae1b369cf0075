//! Layer 2: composable diffusion, `a AND b :1.2`.
//!
//! A1111 splits the (tag-stripped) positive prompt on `\bAND\b` (case-sensitive, whole word)
//! and then takes a trailing weight off each piece with the pattern
//! `^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$`: the text keeps its leading whitespace and
//! loses its trailing whitespace, and a piece that ends in `:number` gets that weight (which is
//! why `aspect ratio 16:9` becomes text `aspect ratio 16` with weight 9).

use super::text::{is_py_space, is_py_word, py_float, Sourced};
use crate::error::PromptError;

/// One `AND` sub-prompt of a sourced prompt, with where its weight literal was.
#[derive(Debug, Clone)]
pub(crate) struct SourcedSubPrompt {
    pub text: Sourced,
    pub weight: f64,
    /// Origin offset and text of the weight literal, when the piece had one.
    pub weight_literal: Option<(usize, String)>,
}

/// Byte offsets of every `AND` separator, scanning left to right without overlaps.
fn and_positions(s: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(rel) = s[from..].find("AND") {
        let at = from + rel;
        let before_ok = s[..at].chars().next_back().is_none_or(|c| !is_py_word(c));
        let after_ok = s[at + 3..].chars().next().is_none_or(|c| !is_py_word(c));
        if before_ok && after_ok {
            found.push(at);
            from = at + 3;
        } else {
            from = at + 1;
        }
    }
    found
}

/// Splits one piece into its text range and optional weight literal range, following the lazy
/// regex: the text is the shortest prefix after which only `ws* (: ws* number)? ws*` remains.
fn split_weight(piece: &str) -> (usize, Option<std::ops::Range<usize>>) {
    let trimmed_end = piece.trim_end_matches(is_py_space).len();
    let body = &piece[..trimmed_end];
    // The number and the whitespace before it contain no colon, so only the last colon can
    // introduce the weight.
    if let Some(colon) = body.rfind(':') {
        let after = &body[colon + 1..];
        let lead = after.len() - after.trim_start_matches(is_py_space).len();
        let literal = &after[lead..];
        if is_and_weight_number(literal) {
            let text_end = body[..colon].trim_end_matches(is_py_space).len();
            let start = colon + 1 + lead;
            return (text_end, Some(start..start + literal.len()));
        }
    }
    (trimmed_end, None)
}

/// `[-+]?(?:\d+\.?|\d*\.\d+)` over the whole string (ASCII digits).
fn is_and_weight_number(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    match frac_part {
        None => !int_part.is_empty() && all_digits(int_part),
        Some(f) => all_digits(int_part) && all_digits(f) && !(int_part.is_empty() && f.is_empty()),
    }
}

pub(crate) fn split_sourced(prompt: &Sourced) -> Vec<SourcedSubPrompt> {
    let text = prompt.text.as_str();
    let mut bounds = vec![0];
    for at in and_positions(text) {
        bounds.push(at);
        bounds.push(at + 3);
    }
    bounds.push(text.len());
    bounds
        .chunks(2)
        .map(|pair| {
            let (start, end) = (pair[0], pair[1]);
            let (text_len, literal) = split_weight(&text[start..end]);
            let (weight, weight_literal) = match literal {
                Some(r) => {
                    let lit = &text[start + r.start..start + r.end];
                    let w = py_float(lit).expect("a matched weight literal is always a float");
                    (w, Some((prompt.origin(start + r.start), lit.to_owned())))
                }
                None => (1.0, None),
            };
            SourcedSubPrompt { text: prompt.slice(start..start + text_len), weight, weight_literal }
        })
        .collect()
}

/// Splits a positive prompt into `AND` sub-prompts with their weights, exactly as A1111 does.
pub fn split_and(prompt: &str) -> Vec<(String, f64)> {
    split_sourced(&Sourced::identity(prompt)).into_iter().map(|s| (s.text.text, s.weight)).collect()
}

/// Rejects sub-prompt weights that overflow to infinity.
pub(crate) fn check_weights(subs: &[SourcedSubPrompt]) -> Result<(), PromptError> {
    for sub in subs {
        if let Some((position, literal)) = &sub.weight_literal {
            if !sub.weight.is_finite() {
                return Err(PromptError::AndWeightOutOfRange {
                    position: *position,
                    literal: literal.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        v.iter().map(|(s, w)| (s.to_string(), *w)).collect()
    }

    #[test]
    fn split_and_spec_table_matches() {
        // prompts.md §1.3 table.
        assert_eq!(split_and("a cat AND a dog"), owned(&[("a cat", 1.0), (" a dog", 1.0)]));
        assert_eq!(split_and("a cat :1.2 AND a dog :0.8"), owned(&[("a cat", 1.2), (" a dog", 0.8)]));
        assert_eq!(split_and("a AND b:1.5 AND c: 2"), owned(&[("a", 1.0), (" b", 1.5), (" c", 2.0)]));
        assert_eq!(split_and("x AND y :-1"), owned(&[("x", 1.0), (" y", -1.0)]));
        assert_eq!(split_and("a cat AND"), owned(&[("a cat", 1.0), ("", 1.0)]));
        assert_eq!(split_and("photo of a cat:0.5"), owned(&[("photo of a cat", 0.5)]));
        assert_eq!(split_and("aspect ratio 16:9"), owned(&[("aspect ratio 16", 9.0)]));
        assert_eq!(split_and("(cat:1.2)"), owned(&[("(cat:1.2)", 1.0)]));
    }

    #[test]
    fn split_and_needs_whole_uppercase_word() {
        assert_eq!(split_and("cats and dogs"), owned(&[("cats and dogs", 1.0)]));
        assert_eq!(split_and("ANDROID"), owned(&[("ANDROID", 1.0)]));
        assert_eq!(split_and("sandy AND x"), owned(&[("sandy", 1.0), (" x", 1.0)]));
        assert_eq!(split_and("ANDAND"), owned(&[("ANDAND", 1.0)]));
        assert_eq!(split_and("AND"), owned(&[("", 1.0), ("", 1.0)]));
        assert_eq!(split_and("a,AND,b"), owned(&[("a,", 1.0), (",b", 1.0)]));
    }

    #[test]
    fn split_and_weight_forms() {
        assert_eq!(split_and("a:12."), owned(&[("a", 12.0)]));
        assert_eq!(split_and("a:.5"), owned(&[("a", 0.5)]));
        assert_eq!(split_and("a:+2 \n"), owned(&[("a", 2.0)]));
        assert_eq!(split_and("a:1.2.3"), owned(&[("a:1.2.3", 1.0)]));
        assert_eq!(split_and("a:."), owned(&[("a:.", 1.0)]));
        assert_eq!(split_and("a :1.2 :1.3"), owned(&[("a :1.2", 1.3)]));
        assert_eq!(split_and("  lead  "), owned(&[("  lead", 1.0)]));
        assert_eq!(split_and(" :3"), owned(&[("", 3.0)]));
        assert_eq!(split_and(""), owned(&[("", 1.0)]));
    }

    #[test]
    fn check_weights_rejects_overflowing_weight() {
        let prompt = format!("a AND b:{}", "9".repeat(400));
        let subs = split_sourced(&Sourced::identity(&prompt));
        assert_eq!(subs[1].weight, f64::INFINITY);
        let err = check_weights(&subs).unwrap_err();
        assert_eq!(err.position(), 8);
    }
}
