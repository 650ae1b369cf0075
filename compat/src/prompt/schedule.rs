//! Layer 3: prompt editing `[from:to:when]`, `[to:when]`, `[from::when]` and alternation
//! `[a|b|c]`, turned into a step schedule.
//!
//! A1111 parses with an ambiguous lark grammar (prompts.md §1.4.1):
//!
//! ```text
//! start:      (prompt | /[][():]/+)*
//! prompt:     (emphasized | scheduled | alternate | plain | WHITESPACE)*
//! emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
//! scheduled:  "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
//! alternate:  "[" prompt ("|" [prompt])+ "]"
//! plain:      /([^\\\[\]():|]|\\.)+/
//! ```
//!
//! Inside a bracket group everything must itself be a well-formed group, so whether a group
//! starting at a given bracket is valid, and where it ends, does not depend on its context. This
//! parser therefore decides validity for every opening bracket in one iterative pass (a bracket
//! stack), then walks the top level taking each valid group and treating every other `[ ] ( ) :`
//! as literal text, which is what the grammar's `start` rule allows. The parse fails, and the
//! prompt is used unchanged for every step, when a `|` is left outside any alternation or a
//! backslash escapes nothing (end of text, or a newline).
//!
//! Where lark's result is ambiguous between a group and literal brackets (`[a:3]]`), A1111's
//! choice depends on Python's per-process string hash seed; this parser always takes the group.

use std::ops::Range;

use super::text::{is_py_space, py_float, Sourced};
use crate::error::PromptError;

/// Deepest bracket nesting accepted. A1111 walks the parse tree recursively and hits Python's
/// recursion limit somewhere above 240 levels (less when called from deep in the web server);
/// anything deeper than this is rejected by validation and left unscheduled by the lenient
/// parser.
pub const MAX_NESTING: usize = 200;

/// One entry of a prompt schedule: `text` is used up to and including `end_at_step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleEntry {
    pub end_at_step: u32,
    pub text: String,
}

/// The step counts a schedule is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleParams {
    /// Total sampler steps of the first pass, as A1111 counts them (doubled for second-order
    /// samplers such as Heun, DPM2 or DPM++ SDE). A prompt with alternation gets one entry per
    /// step, so callers bound this as they bound the request's step count.
    pub steps: u32,
    /// For the hires-fix pass: the hires sampler's total steps. Integer `when` values then count
    /// on from the first pass (`when - steps`) and decimals span 1.0..2.0.
    pub hires_steps: Option<u32>,
    /// A1111's "Old prompt editing timelines" setting: a number below 1 is a fraction, anything
    /// else a step, and the hires pass uses the first-pass step count.
    pub use_old_scheduling: bool,
}

impl ScheduleParams {
    /// Parameters for a first pass of `steps` total steps.
    pub fn first_pass(steps: u32) -> ScheduleParams {
        ScheduleParams { steps, hires_steps: None, use_old_scheduling: false }
    }

    /// Parameters for a hires-fix pass following a first pass of `base_steps`.
    pub fn hires(base_steps: u32, hires_steps: u32) -> ScheduleParams {
        ScheduleParams { steps: base_steps, hires_steps: Some(hires_steps), use_old_scheduling: false }
    }

    /// Step count the schedule is laid out over, and the offsets subtracted from integer and
    /// decimal `when` values.
    fn frame(&self) -> (i64, f64, f64) {
        match self.hires_steps {
            Some(hires) if !self.use_old_scheduling => (hires as i64, self.steps as f64, 1.0),
            _ => (self.steps as i64, 0.0, 0.0),
        }
    }

    /// Converts the number of a `[...:when]` group to the last step of its first part.
    /// `Err` carries A1111's failure: the value is not finite, so `int()` raises.
    fn when_step(&self, literal: &str) -> Result<i64, f64> {
        let (steps, int_offset, flt_offset) = self.frame();
        let written = py_float(literal).expect("a lexed NUMBER always converts");
        let v = if self.use_old_scheduling {
            if written < 1.0 {
                written * steps as f64
            } else {
                written
            }
        } else if literal.contains('.') {
            (written - flt_offset) * steps as f64
        } else {
            written - int_offset
        };
        if !v.is_finite() {
            return Err(v);
        }
        // Python `min(steps, int(v))`; the float-to-int cast saturates, which only affects
        // values far outside any step range.
        Ok((v.trunc() as i64).min(steps))
    }

    /// The lenient stand-in for a failing conversion: +inf behaves like "never switch",
    /// anything else like "switch before the first step".
    fn when_step_lenient(&self, literal: &str) -> i64 {
        match self.when_step(literal) {
            Ok(w) => w,
            Err(v) if v == f64::INFINITY => self.frame().0,
            Err(_) => i64::MIN,
        }
    }
}

#[derive(Debug, Clone)]
enum Node {
    /// Literal bytes of the input (plain text, whitespace, emphasis brackets, stray brackets).
    Text(Range<usize>),
    Scheduled {
        before: Option<Vec<Node>>,
        after: Vec<Node>,
        number: Range<usize>,
    },
    Alternate(Vec<Vec<Node>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    Emphasized,
    Scheduled,
    Alternate,
}

/// A valid bracket group: where it closes, its separators at its own level, its kind and depth.
#[derive(Debug, Clone)]
struct Group {
    end: usize,
    kind: GroupKind,
    separators: Vec<usize>,
    depth: usize,
}

struct Frame {
    open: usize,
    round: bool,
    separators: Vec<(usize, u8)>,
    child_depth: usize,
    invalid: bool,
}

/// Result of parsing a prompt for scheduling.
enum Parsed {
    Tree(Vec<Node>),
    /// Grammar failure: the prompt is used unchanged.
    Unparsed,
    /// Valid, but nested beyond [`MAX_NESTING`] at the group opening at this byte.
    TooDeep(usize),
}

/// `\s* SIGNED_NUMBER \s*` over the whole slice, returning the number's range within it.
/// SIGNED_NUMBER is lark's: `[+-]? (INT _EXP | INT "." INT? _EXP? | "." INT _EXP? | INT)`.
fn scheduled_number(segment: &str) -> Option<Range<usize>> {
    let start = segment.len() - segment.trim_start_matches(is_py_space).len();
    let end = segment.trim_end_matches(is_py_space).len();
    if start >= end {
        return None;
    }
    let b = &segment.as_bytes()[start..end];
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let from = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - from
    };
    let int_digits = digits(&mut i);
    let mut frac_digits = 0;
    let has_dot = i < b.len() && b[i] == b'.';
    if has_dot {
        i += 1;
        frac_digits = digits(&mut i);
    }
    if int_digits == 0 && frac_digits == 0 {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return None;
        }
    }
    (i == b.len()).then_some(start..end)
}

struct Grammar<'a> {
    s: &'a str,
    /// Valid groups by the byte offset of their opening bracket.
    groups: std::collections::HashMap<usize, Group>,
}

impl<'a> Grammar<'a> {
    /// One pass over the text deciding, for every opening bracket, whether a valid group starts
    /// there. `None` when a backslash escapes nothing, which fails the whole parse.
    fn analyse(s: &'a str) -> Option<Grammar<'a>> {
        let bytes = s.as_bytes();
        let mut groups = std::collections::HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => {
                    // `\\.`: the escaped character may be anything but a newline.
                    let next = s[i + 1..].chars().next();
                    match next {
                        Some(c) if c != '\n' => i += 1 + c.len_utf8(),
                        _ => return None,
                    }
                    continue;
                }
                b'[' | b'(' => stack.push(Frame {
                    open: i,
                    round: bytes[i] == b'(',
                    separators: Vec::new(),
                    child_depth: 0,
                    invalid: false,
                }),
                c @ (b':' | b'|') => {
                    if let Some(top) = stack.last_mut() {
                        top.separators.push((i, c));
                    }
                }
                c @ (b']' | b')') => {
                    let round = c == b')';
                    match stack.last() {
                        Some(top) if top.round == round => {
                            let frame = stack.pop().expect("stack top checked");
                            let group = Self::classify(s, frame, i);
                            match (stack.last_mut(), &group) {
                                (Some(parent), Some(g)) => {
                                    parent.child_depth = parent.child_depth.max(g.1.depth)
                                }
                                // A group that contains an invalid group is itself invalid.
                                (Some(parent), None) => parent.invalid = true,
                                _ => {}
                            }
                            if let Some((open, g)) = group {
                                groups.insert(open, g);
                            }
                        }
                        // A closer of the wrong kind can be part of no group, so no group that
                        // is still open can ever close validly.
                        Some(_) => stack.clear(),
                        None => {}
                    }
                }
                _ => {}
            }
            i += 1;
        }
        Some(Grammar { s, groups })
    }

    fn classify(s: &str, frame: Frame, close: usize) -> Option<(usize, Group)> {
        if frame.invalid {
            return None;
        }
        let colons: Vec<usize> =
            frame.separators.iter().filter(|(_, c)| *c == b':').map(|(p, _)| *p).collect();
        let pipes: Vec<usize> =
            frame.separators.iter().filter(|(_, c)| *c == b'|').map(|(p, _)| *p).collect();
        let (kind, separators) = if frame.round {
            if !pipes.is_empty() || colons.len() > 1 {
                return None;
            }
            (GroupKind::Emphasized, Vec::new())
        } else if colons.is_empty() && pipes.is_empty() {
            (GroupKind::Emphasized, Vec::new())
        } else if colons.is_empty() {
            (GroupKind::Alternate, pipes)
        } else if pipes.is_empty() && colons.len() <= 2 {
            let last = *colons.last().expect("colons checked non-empty");
            scheduled_number(&s[last + 1..close])?;
            (GroupKind::Scheduled, colons)
        } else {
            return None;
        };
        Some((frame.open, Group { end: close, kind, separators, depth: frame.child_depth + 1 }))
    }

    /// The top-level sequence: valid groups where they start, literal text elsewhere.
    fn parse(&self) -> Parsed {
        let bytes = self.s.as_bytes();
        let mut nodes = Vec::new();
        // A1111 only walks the tree (and overflows the stack) after the whole prompt parsed,
        // so a grammar failure later in the text takes precedence over excessive depth.
        let mut too_deep = None;
        let mut text_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => {
                    i += 1 + self.s[i + 1..].chars().next().map_or(0, char::len_utf8);
                    continue;
                }
                b'|' => return Parsed::Unparsed,
                b'[' | b'(' => {
                    if let Some(group) = self.groups.get(&i) {
                        if group.depth > MAX_NESTING {
                            too_deep.get_or_insert(i);
                        } else {
                            if text_start < i {
                                nodes.push(Node::Text(text_start..i));
                            }
                            self.build_group(i, &mut nodes);
                        }
                        i = group.end + 1;
                        text_start = i;
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if let Some(at) = too_deep {
            return Parsed::TooDeep(at);
        }
        if text_start < bytes.len() {
            nodes.push(Node::Text(text_start..bytes.len()));
        }
        Parsed::Tree(nodes)
    }

    /// Nodes for the content `range` of a valid group: text and the nested groups (which are
    /// all valid, or the enclosing group would not be).
    fn build_content(&self, range: Range<usize>, out: &mut Vec<Node>) {
        let bytes = self.s.as_bytes();
        let mut text_start = range.start;
        let mut i = range.start;
        while i < range.end {
            match bytes[i] {
                b'\\' => {
                    i += 1 + self.s[i + 1..].chars().next().map_or(0, char::len_utf8);
                    continue;
                }
                b'[' | b'(' => {
                    if text_start < i {
                        out.push(Node::Text(text_start..i));
                    }
                    self.build_group(i, out);
                    i = self.groups[&i].end + 1;
                    text_start = i;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        if text_start < range.end {
            out.push(Node::Text(text_start..range.end));
        }
    }

    fn build_group(&self, open: usize, out: &mut Vec<Node>) {
        let group = &self.groups[&open];
        let content = open + 1..group.end;
        match group.kind {
            GroupKind::Emphasized => {
                // Re-emitted verbatim, brackets included, for the attention layer.
                out.push(Node::Text(open..open + 1));
                self.build_content(content, out);
                out.push(Node::Text(group.end..group.end + 1));
            }
            GroupKind::Alternate => {
                let mut options = Vec::new();
                let mut start = content.start;
                for &sep in group.separators.iter().chain(std::iter::once(&group.end)) {
                    let mut option = Vec::new();
                    self.build_content(start..sep, &mut option);
                    options.push(option);
                    start = sep + 1;
                }
                out.push(Node::Alternate(options));
            }
            GroupKind::Scheduled => {
                let seps = &group.separators;
                let last = *seps.last().expect("a scheduled group has a colon");
                let number_in_segment =
                    scheduled_number(&self.s[last + 1..group.end]).expect("checked when classified");
                let number = last + 1 + number_in_segment.start..last + 1 + number_in_segment.end;
                let (before, after_range) = if seps.len() == 2 {
                    let mut before = Vec::new();
                    self.build_content(content.start..seps[0], &mut before);
                    (Some(before), seps[0] + 1..seps[1])
                } else {
                    (None, content.start..seps[0])
                };
                let mut after = Vec::new();
                self.build_content(after_range, &mut after);
                out.push(Node::Scheduled { before, after, number });
            }
        }
    }
}

fn parse(s: &str) -> Parsed {
    match Grammar::analyse(s) {
        Some(grammar) => grammar.parse(),
        None => Parsed::Unparsed,
    }
}

/// Visits every scheduled number and notes whether any alternation exists, in all branches.
fn collect(nodes: &[Node], numbers: &mut Vec<Range<usize>>, has_alternate: &mut bool) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Scheduled { before, after, number } => {
                numbers.push(number.clone());
                if let Some(b) = before {
                    collect(b, numbers, has_alternate);
                }
                collect(after, numbers, has_alternate);
            }
            Node::Alternate(options) => {
                *has_alternate = true;
                for option in options {
                    collect(option, numbers, has_alternate);
                }
            }
        }
    }
}

fn render(nodes: &[Node], step: i64, src: &Sourced, params: &ScheduleParams, out: &mut Sourced) {
    for node in nodes {
        match node {
            Node::Text(r) => out.push_sourced(src, r.clone()),
            Node::Scheduled { before, after, number } => {
                if step <= params.when_step_lenient(&src.text[number.clone()]) {
                    if let Some(b) = before {
                        render(b, step, src, params, out);
                    }
                } else {
                    render(after, step, src, params, out);
                }
            }
            Node::Alternate(options) => {
                let n = options.len() as i64;
                render(&options[(step - 1).rem_euclid(n) as usize], step, src, params, out);
            }
        }
    }
}

/// A schedule over a sourced text, plus what validation found.
pub(crate) struct SourcedSchedule {
    pub entries: Vec<(u32, Sourced)>,
    pub problem: Option<PromptError>,
}

pub(crate) fn schedule_sourced(src: &Sourced, params: &ScheduleParams) -> SourcedSchedule {
    let (steps, _, _) = params.frame();
    let unchanged = |problem| SourcedSchedule { entries: vec![(steps as u32, src.clone())], problem };
    let nodes = match parse(&src.text) {
        Parsed::Tree(nodes) => nodes,
        Parsed::Unparsed => return unchanged(None),
        Parsed::TooDeep(at) => {
            return unchanged(Some(PromptError::NestingTooDeep {
                position: src.origin(at),
                limit: MAX_NESTING,
            }))
        }
    };
    let mut numbers = Vec::new();
    let mut has_alternate = false;
    collect(&nodes, &mut numbers, &mut has_alternate);
    let mut problem = None;
    let mut boundaries = vec![steps];
    for number in &numbers {
        let literal = &src.text[number.clone()];
        match params.when_step(literal) {
            Ok(w) if w >= 1 => boundaries.push(w),
            Ok(_) => {}
            Err(_) => {
                problem.get_or_insert(PromptError::StepOutOfRange {
                    position: src.origin(number.start),
                    literal: literal.to_owned(),
                });
                let w = params.when_step_lenient(literal);
                if w >= 1 {
                    boundaries.push(w);
                }
            }
        }
    }
    if has_alternate {
        boundaries.extend(1..=steps);
    }
    boundaries.sort_unstable();
    boundaries.dedup();
    let entries = boundaries
        .into_iter()
        .map(|t| {
            let mut text = Sourced::default();
            render(&nodes, t, src, params, &mut text);
            (t as u32, text)
        })
        .collect();
    SourcedSchedule { entries, problem }
}

/// Builds A1111's schedule for one (sub-)prompt: `(end_at_step, text)` entries in step order.
/// A prompt the grammar rejects is used unchanged: `[(steps, prompt)]`.
pub fn prompt_schedule(prompt: &str, params: &ScheduleParams) -> Vec<ScheduleEntry> {
    schedule_sourced(&Sourced::identity(prompt), params)
        .entries
        .into_iter()
        .map(|(end_at_step, text)| ScheduleEntry { end_at_step, text: text.text })
        .collect()
}

/// The text the denoiser uses at sampler counter `step` (0-based, one per model evaluation):
/// the first entry with `step <= end_at_step`, or the first entry when none qualifies (A1111's
/// loop leaves its index at 0). This is the documented off-by-one: `[cat:dog:10]` uses `cat`
/// for counters 0..=10.
pub fn text_at_step(schedule: &[ScheduleEntry], step: u32) -> &str {
    schedule
        .iter()
        .find(|e| step <= e.end_at_step)
        .or_else(|| schedule.first())
        .map_or("", |e| e.text.as_str())
}

/// Static check of a prompt's editing syntax: nesting depth and `when` numbers that no step
/// count can convert.
pub(crate) fn check_static(src: &Sourced) -> Result<(), PromptError> {
    // With one step every finite literal converts; only literals that are themselves infinite
    // fail regardless of the step count.
    match schedule_sourced(src, &ScheduleParams::first_pass(1)).problem {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(prompt: &str, steps: u32) -> Vec<(u32, String)> {
        prompt_schedule(prompt, &ScheduleParams::first_pass(steps))
            .into_iter()
            .map(|e| (e.end_at_step, e.text))
            .collect()
    }

    fn hires(prompt: &str, base: u32, hires: u32) -> Vec<(u32, String)> {
        prompt_schedule(prompt, &ScheduleParams::hires(base, hires))
            .into_iter()
            .map(|e| (e.end_at_step, e.text))
            .collect()
    }

    fn owned(v: &[(u32, &str)]) -> Vec<(u32, String)> {
        v.iter().map(|(s, t)| (*s, t.to_string())).collect()
    }

    #[test]
    fn scheduled_number_accepts_lark_signed_number() {
        for ok in ["5", " 5 ", ".5", "5.", "-3", "+3", "1e1", "2.5E-1", "1.e5", "+.5e-3"] {
            assert!(scheduled_number(ok).is_some(), "{ok:?}");
        }
        for bad in ["", " ", ".", "+", "1e", "e5", "1.2.3", "1_0", "1 .5", "٣", "0x1"] {
            assert!(scheduled_number(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn when_step_new_and_old_scheduling_table() {
        // prompts.md §1.4.3 table, 20 steps unless noted.
        let new = ScheduleParams::first_pass(20);
        let old = ScheduleParams { use_old_scheduling: true, ..new };
        for (lit, n, o) in [("0.5", 10, 10), ("10", 10, 10), ("1", 1, 1), ("1.0", 20, 1), ("0.33", 6, 6)] {
            assert_eq!(new.when_step(lit), Ok(n), "new {lit}");
            assert_eq!(old.when_step(lit), Ok(o), "old {lit}");
        }
        for lit in ["0", "0.01", "-5"] {
            assert!(new.when_step(lit).unwrap() < 1, "{lit}");
        }
        let ten = ScheduleParams::first_pass(10);
        let ten_old = ScheduleParams { use_old_scheduling: true, ..ten };
        assert_eq!(ten.when_step("2.5"), Ok(10));
        assert_eq!(ten_old.when_step("2.5"), Ok(2));
        assert_eq!(ten.when_step("100"), Ok(10));
        assert_eq!(ten_old.when_step("100"), Ok(10));
        assert_eq!(ten.when_step("1e1"), Ok(10));
    }

    #[test]
    fn when_step_infinite_literal_is_an_error() {
        let p = ScheduleParams::first_pass(20);
        assert!(p.when_step("1e400").is_err());
        assert!(p.when_step("-1e400").is_err());
        assert_eq!(p.when_step_lenient("1e400"), 20);
        assert!(p.when_step_lenient("-1e400") < 1);
    }

    #[test]
    fn schedule_hires_pass_table() {
        // prompts.md §1.4.6: first pass 20 steps, hires 10 steps.
        assert_eq!(sched("[cat:dog:0.5]", 20), owned(&[(10, "cat"), (20, "dog")]));
        assert_eq!(hires("[cat:dog:0.5]", 20, 10), owned(&[(10, "dog")]));
        assert_eq!(sched("[cat:dog:1.5]", 20), owned(&[(20, "cat")]));
        assert_eq!(hires("[cat:dog:1.5]", 20, 10), owned(&[(5, "cat"), (10, "dog")]));
        assert_eq!(sched("[cat:dog:25]", 20), owned(&[(20, "cat")]));
        assert_eq!(hires("[cat:dog:25]", 20, 10), owned(&[(5, "cat"), (10, "dog")]));
        assert_eq!(sched("[cat:dog:5]", 20), owned(&[(5, "cat"), (20, "dog")]));
        assert_eq!(hires("[cat:dog:5]", 20, 10), owned(&[(10, "dog")]));
    }

    #[test]
    fn schedule_hires_with_old_scheduling_uses_first_pass_steps() {
        let p = ScheduleParams { steps: 20, hires_steps: Some(10), use_old_scheduling: true };
        let got: Vec<(u32, String)> =
            prompt_schedule("[cat:dog:5]", &p).into_iter().map(|e| (e.end_at_step, e.text)).collect();
        assert_eq!(got, owned(&[(5, "cat"), (20, "dog")]));
    }

    #[test]
    fn schedule_unparsable_prompts_are_unchanged() {
        for p in ["x | y", "a [b|c", "[a:b:3] | x", "[a|b:3]", "(a|b)", "a\\", "a\\\nb [c:3]"] {
            assert_eq!(sched(p, 10), owned(&[(10, p)]), "{p:?}");
        }
    }

    #[test]
    fn schedule_escaped_brackets_are_plain() {
        assert_eq!(sched("\\[a:b:5\\]", 20), owned(&[(20, "\\[a:b:5\\]")]));
        assert_eq!(sched("\\|", 20), owned(&[(20, "\\|")]));
    }

    #[test]
    fn schedule_group_preferred_over_literal_brackets() {
        // A1111's own choice here varies with Python's hash seed; the group is one of its
        // outcomes.
        assert_eq!(sched("[a:3]]", 10), owned(&[(3, "]"), (10, "a]")]));
        assert_eq!(sched("[[a:3]", 10), owned(&[(3, "["), (10, "[a")]));
        assert_eq!(sched("[a:[b:3]", 10), owned(&[(3, "[a:"), (10, "[a:b")]));
    }

    #[test]
    fn schedule_steps_zero_renders_once() {
        // Step 0: alternation index (0 - 1) mod 2 = 1, and 0 <= when (0) keeps the first part.
        assert_eq!(sched("[a|b] [c:d:0.5]", 0), owned(&[(0, "b c")]));
    }

    #[test]
    fn schedule_nesting_limit() {
        let ok = format!("{}[a:b:3]{}", "(".repeat(MAX_NESTING - 1), ")".repeat(MAX_NESTING - 1));
        assert_eq!(sched(&ok, 10).len(), 2);
        let deep = format!("x{}[a:b:3]{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(sched(&deep, 10), owned(&[(10, &deep)]));
        let problem = schedule_sourced(&Sourced::identity(&deep), &ScheduleParams::first_pass(10)).problem;
        assert_eq!(problem, Some(PromptError::NestingTooDeep { position: 1, limit: MAX_NESTING }));
        // Unclosed brackets build no tree, however many there are.
        let unclosed = format!("{}[a:b:3]", "(".repeat(5000));
        assert_eq!(sched(&unclosed, 10).len(), 2);
    }

    #[test]
    fn text_at_step_uses_first_entry_not_past() {
        let s = prompt_schedule("[cat:dog:10]", &ScheduleParams::first_pass(20));
        assert_eq!(text_at_step(&s, 0), "cat");
        assert_eq!(text_at_step(&s, 10), "cat");
        assert_eq!(text_at_step(&s, 11), "dog");
        assert_eq!(text_at_step(&s, 20), "dog");
        // Past the last entry A1111 falls back to the first one.
        assert_eq!(text_at_step(&s, 21), "cat");
        assert_eq!(text_at_step(&[], 3), "");
    }
}
