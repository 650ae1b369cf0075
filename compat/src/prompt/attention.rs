//! Layer 4: attention/emphasis, `(x)`, `[x]`, `(x:1.3)`, backslash escapes and `BREAK`.
//!
//! A1111 scans the text left to right with these alternatives, first match wins:
//! `\(` `\)` `\[` `\]` `\\` (the escaped character), a lone `\` (which contributes an empty
//! segment, so the backslash disappears), `(`, `[`, a weight close `:\s*[+-]?[.\d]+\s*\)`, `)`,
//! `]`, a run of characters other than `\ ( ) [ ] :`, and a lone `:`. Brackets open ranges that
//! are multiplied by 1.1, 1/1.1 or the given weight when they close; unmatched closers are text;
//! still-open brackets multiply the rest of the prompt at the end. Text runs are split on
//! whole-word `BREAK` (with surrounding whitespace) into a `("BREAK", -1)` marker. Finally
//! adjacent segments with exactly equal weights merge. Weights are `f64` multiplied in A1111's
//! order, so they are bit-identical to Python's (`((x))` = 1.2100000000000002).
//!
//! Known gap: Python's `\d` also matches non-ASCII decimal digits (`(a:٣)` is weight 3 there);
//! only ASCII digits are recognised here, so such a weight stays literal text.

use super::text::{is_py_space, is_py_word, py_float};
use crate::error::PromptError;

const ROUND_MULTIPLIER: f64 = 1.1;

/// One segment of attention-parsed text: the text and its multiplier.
pub type AttentionSegment = (String, f64);

/// Whether a segment is the chunk-break marker the tokenizer acts on. A `BREAK` inside brackets
/// has its weight multiplied and is then ordinary text (A1111 quirk).
pub fn is_break(segment: &AttentionSegment) -> bool {
    segment.0 == "BREAK" && segment.1 == -1.0
}

enum Token<'a> {
    /// Escaped character or lone backslash (empty text).
    Literal(&'a str),
    OpenRound,
    OpenSquare,
    /// `:weight)`: the whole match and the weight run with its sign.
    WeightClose {
        whole: &'a str,
        weight: &'a str,
        weight_at: usize,
    },
    CloseRound,
    CloseSquare,
    /// Plain run or lone `:` — text that is split on `BREAK`.
    Text(&'a str),
}

/// Tries the weight-close alternative at `i` (which holds `:`); returns its end and the range of
/// the weight run. Backtracking cannot change the outcome: whitespace, sign and the digit run are
/// each followed by a character that the next part cannot start with.
fn weight_close_at(s: &str, i: usize) -> Option<(usize, std::ops::Range<usize>)> {
    let after_colon = &s[i + 1..];
    let ws = after_colon.len() - after_colon.trim_start_matches(is_py_space).len();
    let start = i + 1 + ws;
    let b = s.as_bytes();
    let mut j = start;
    if matches!(b.get(j), Some(b'+' | b'-')) {
        j += 1;
    }
    let run_start = j;
    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
        j += 1;
    }
    if j == run_start {
        return None;
    }
    let weight = start..j;
    let rest = &s[j..];
    let ws = rest.len() - rest.trim_start_matches(is_py_space).len();
    let close = j + ws;
    (b.get(close) == Some(&b')')).then_some((close + 1, weight))
}

fn next_token(s: &str, i: usize) -> (Token<'_>, usize) {
    let b = s.as_bytes();
    match b[i] {
        b'\\' => match b.get(i + 1) {
            Some(b'(' | b')' | b'[' | b']' | b'\\') => (Token::Literal(&s[i + 1..i + 2]), i + 2),
            _ => (Token::Literal(""), i + 1),
        },
        b'(' => (Token::OpenRound, i + 1),
        b'[' => (Token::OpenSquare, i + 1),
        b':' => match weight_close_at(s, i) {
            Some((end, weight)) => (
                Token::WeightClose { whole: &s[i..end], weight: &s[weight.clone()], weight_at: weight.start },
                end,
            ),
            None => (Token::Text(&s[i..i + 1]), i + 1),
        },
        b')' => (Token::CloseRound, i + 1),
        b']' => (Token::CloseSquare, i + 1),
        _ => {
            let end = s[i..].find(['\\', '(', ')', '[', ']', ':']).map_or(s.len(), |k| i + k);
            (Token::Text(&s[i..end]), end)
        }
    }
}

/// Splits a text run on `\s*\bBREAK\b\s*`, appending the parts with markers between them.
fn push_text_with_breaks(run: &str, res: &mut Vec<AttentionSegment>) {
    let mut part_start = 0;
    let mut search = 0;
    while let Some(rel) = run[search..].find("BREAK") {
        let at = search + rel;
        let end = at + 5;
        let before_ok = run[..at].chars().next_back().is_none_or(|c| !is_py_word(c));
        let after_ok = run[end..].chars().next().is_none_or(|c| !is_py_word(c));
        if !(before_ok && after_ok) {
            search = at + 1;
            continue;
        }
        // The leftmost match starts at the whitespace run directly before the word, but never
        // before the end of the previous match.
        let lead = run[part_start..at].len() - run[part_start..at].trim_end_matches(is_py_space).len();
        res.push((run[part_start..at - lead].to_owned(), 1.0));
        res.push(("BREAK".to_owned(), -1.0));
        let trail = run[end..].len() - run[end..].trim_start_matches(is_py_space).len();
        part_start = end + trail;
        search = part_start;
    }
    res.push((run[part_start..].to_owned(), 1.0));
}

/// Problems found while scanning, reported in text order.
#[derive(Default)]
struct Scan {
    segments: Vec<AttentionSegment>,
    problem: Option<PromptError>,
}

fn scan(text: &str) -> Scan {
    let mut out = Scan::default();
    let res = &mut out.segments;
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<AttentionSegment>, from: usize, m: f64| {
        for seg in &mut res[from..] {
            seg.1 *= m;
        }
    };
    let mut i = 0;
    while i < text.len() {
        let (token, next) = next_token(text, i);
        match token {
            Token::Literal(t) => res.push((t.to_owned(), 1.0)),
            Token::OpenRound => round.push(res.len()),
            Token::OpenSquare => square.push(res.len()),
            Token::WeightClose { whole, weight, weight_at } if !round.is_empty() => match py_float(weight) {
                Some(w) => {
                    if !w.is_finite() && out.problem.is_none() {
                        out.problem = Some(PromptError::WeightOutOfRange {
                            position: weight_at,
                            literal: weight.to_owned(),
                        });
                    }
                    let from = round.pop().expect("round stack checked non-empty");
                    multiply(res, from, w);
                }
                None => {
                    // A1111 raises here and the job fails. Leniently the match stays literal
                    // text and its `(` remains open.
                    if out.problem.is_none() {
                        out.problem = Some(PromptError::MalformedWeight {
                            position: weight_at,
                            literal: weight.to_owned(),
                        });
                    }
                    push_text_with_breaks(whole, res);
                }
            },
            Token::CloseRound if !round.is_empty() => {
                let from = round.pop().expect("round stack checked non-empty");
                multiply(res, from, ROUND_MULTIPLIER);
            }
            Token::CloseSquare if !square.is_empty() => {
                let from = square.pop().expect("square stack checked non-empty");
                multiply(res, from, 1.0 / ROUND_MULTIPLIER);
            }
            Token::WeightClose { whole: t, .. } | Token::Text(t) => push_text_with_breaks(t, res),
            Token::CloseRound => push_text_with_breaks(")", res),
            Token::CloseSquare => push_text_with_breaks("]", res),
        }
        i = next;
    }
    // Unclosed brackets: all round ones first, then all square ones, each from the bottom of
    // its stack, as A1111 does.
    for from in round {
        multiply(res, from, ROUND_MULTIPLIER);
    }
    for from in square {
        multiply(res, from, 1.0 / ROUND_MULTIPLIER);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<AttentionSegment> = Vec::with_capacity(res.len());
    for seg in res.drain(..) {
        match merged.last_mut() {
            Some(last) if last.1 == seg.1 => last.0.push_str(&seg.0),
            _ => merged.push(seg),
        }
    }
    *res = merged;
    out
}

/// A1111's `parse_prompt_attention`: the text split into `(text, multiplier)` segments.
///
/// This is the lenient parse: a malformed weight such as `(a:1.5.2)` (on which A1111 fails the
/// job) is kept as literal text; [`check_attention`] reports it.
pub fn parse_attention(text: &str) -> Vec<AttentionSegment> {
    scan(text).segments
}

/// Reports the first weight A1111 cannot use: not a number (`(a:1.5.2)`) or overflowing to
/// infinity. Positions are byte offsets into `text`.
pub fn check_attention(text: &str) -> Result<(), PromptError> {
    match scan(text).problem {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(v: &[(&str, f64)]) -> Vec<AttentionSegment> {
        v.iter().map(|(s, w)| (s.to_string(), *w)).collect()
    }

    #[test]
    fn parse_attention_lone_backslash_vanishes() {
        assert_eq!(parse_attention("a\\b"), segs(&[("ab", 1.0)]));
        assert_eq!(parse_attention("(a)\\"), segs(&[("a", 1.1), ("", 1.0)]));
        assert_eq!(parse_attention("\\x(y)"), segs(&[("x", 1.0), ("y", 1.1)]));
        assert_eq!(parse_attention("a\\\\b"), segs(&[("a\\b", 1.0)]));
    }

    #[test]
    fn parse_attention_break_keeps_empty_neighbours() {
        assert_eq!(parse_attention("BREAK"), segs(&[("", 1.0), ("BREAK", -1.0), ("", 1.0)]));
        assert_eq!(parse_attention(" BREAK "), segs(&[("", 1.0), ("BREAK", -1.0), ("", 1.0)]));
        assert_eq!(
            parse_attention("a BREAK BREAK b"),
            segs(&[("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("b", 1.0)])
        );
        assert_eq!(parse_attention("aBREAK b"), segs(&[("aBREAK b", 1.0)]));
        assert_eq!(parse_attention("BREAKs"), segs(&[("BREAKs", 1.0)]));
        assert_eq!(parse_attention("x\tBREAK\ny"), segs(&[("x", 1.0), ("BREAK", -1.0), ("y", 1.0)]));
    }

    #[test]
    fn parse_attention_weight_close_without_open_is_text() {
        assert_eq!(parse_attention("a:1.2)"), segs(&[("a:1.2)", 1.0)]));
        assert_eq!(parse_attention("(a: 1.5 )"), segs(&[("a", 1.5)]));
        assert_eq!(parse_attention("(a:+2)"), segs(&[("a", 2.0)]));
    }

    #[test]
    fn check_attention_malformed_weight_reports_position() {
        assert_eq!(
            check_attention("x (a:1.5.2)"),
            Err(PromptError::MalformedWeight { position: 5, literal: "1.5.2".into() })
        );
        assert_eq!(
            check_attention("(a:.)"),
            Err(PromptError::MalformedWeight { position: 3, literal: ".".into() })
        );
        // Without an open `(` the same characters are plain text in A1111 too.
        assert_eq!(check_attention("a:1.5.2)"), Ok(()));
        assert_eq!(check_attention("(a:1.5)"), Ok(()));
        let huge = format!("(a:{})", "9".repeat(400));
        assert!(matches!(check_attention(&huge), Err(PromptError::WeightOutOfRange { position: 3, .. })));
    }

    #[test]
    fn parse_attention_malformed_weight_is_lenient_text() {
        assert_eq!(parse_attention("(a:1.5.2)"), segs(&[("a:1.5.2)", 1.1)]));
    }

    #[test]
    fn is_break_only_for_unweighted_marker() {
        let parsed = parse_attention("a, BREAK, b");
        assert!(is_break(&parsed[1]));
        let weighted = parse_attention("(a BREAK b:1.5)");
        assert!(!is_break(&weighted[1]));
    }
}
