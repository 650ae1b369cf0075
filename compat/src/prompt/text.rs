//! Character classes and number conversions with Python's semantics, plus [`Sourced`], a text
//! that remembers where each of its bytes came from.
//!
//! A1111's prompt code is regular expressions over Python `str`, so `\s`, `\w` and `float()`
//! decide what parses. These functions reproduce them for the characters prompts actually contain;
//! the known gaps (Unicode decimal digits other than ASCII, combining marks counted as word
//! characters) are listed where they arise.

/// Python's `str.isspace()` (what `\s` matches in a `str` pattern): Unicode White_Space plus the
/// four ASCII information separators U+001C..U+001F, which Python counts and Unicode does not.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` for `str` patterns: letters, numbers and `_`. Rust's Alphabetic property also
/// includes some combining marks that Python does not; prompts where that matters (a mark right
/// next to `AND`, `BREAK` or inside an extra-network kind) are not expected.
pub(crate) fn is_py_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Strips Python whitespace from both ends, as `str.strip()` does.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Removes the digit-group underscores Python's `float()` and `int()` accept (`1_000`); `None`
/// when an underscore is not between two digits.
fn without_digit_underscores(s: &str) -> Option<String> {
    if !s.contains('_') {
        return Some(s.to_owned());
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            let before = i.checked_sub(1).map(|j| chars[j].is_ascii_digit()).unwrap_or(false);
            let after = chars.get(i + 1).map(|d| d.is_ascii_digit()).unwrap_or(false);
            if !(before && after) {
                return None;
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Python's `float(s)` for ASCII input: surrounding whitespace ignored, `inf`/`nan` spellings
/// and digit underscores accepted. Huge literals give infinity, as in Python.
pub(crate) fn py_float(s: &str) -> Option<f64> {
    let cleaned = without_digit_underscores(py_strip(s))?;
    // Rust accepts exactly Python's spellings (decimal, exponent, inf/infinity/nan in any case)
    // once whitespace and underscores are gone; a leading `+` is accepted by both.
    cleaned.parse::<f64>().ok()
}

/// Python's `int(s)` (base 10) for values that fit an `i64`.
pub(crate) fn py_int(s: &str) -> Option<i64> {
    let cleaned = without_digit_underscores(py_strip(s))?;
    let digits = cleaned.strip_prefix(['+', '-']).unwrap_or(&cleaned);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cleaned.parse::<i64>().ok()
}

/// Text assembled from pieces of an original string, with a map back to the original byte
/// offsets. Every layer of the prompt front end only deletes or selects parts of its input, so
/// any byte of a derived text (a sub-prompt, a scheduled text) has exactly one origin; errors
/// found late are reported at that origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sourced {
    pub text: String,
    /// `(offset in text, offset in origin)` at the start of each contiguous run.
    runs: Vec<(usize, usize)>,
}

impl Sourced {
    /// The whole of `s`, mapping to itself.
    pub fn identity(s: &str) -> Sourced {
        let mut out = Sourced::default();
        out.push(s, 0);
        out
    }

    /// Appends `piece`, whose first byte sits at `origin` in the original.
    pub fn push(&mut self, piece: &str, origin: usize) {
        if piece.is_empty() {
            return;
        }
        let here = self.text.len();
        let continues = self.runs.last().is_some_and(|&(out, src)| src + (here - out) == origin);
        if !continues {
            self.runs.push((here, origin));
        }
        self.text.push_str(piece);
    }

    /// Appends a slice of another sourced text, keeping its origins.
    pub fn push_sourced(&mut self, other: &Sourced, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        let mut start = range.start;
        while start < range.end {
            let idx = other.run_index(start);
            let run_end = other.runs.get(idx + 1).map(|r| r.0).unwrap_or(other.text.len()).min(range.end);
            self.push(&other.text[start..run_end], other.origin(start));
            start = run_end;
        }
    }

    /// A sourced copy of `range` of this text.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Sourced {
        let mut out = Sourced::default();
        out.push_sourced(self, range);
        out
    }

    fn run_index(&self, offset: usize) -> usize {
        match self.runs.binary_search_by(|r| r.0.cmp(&offset)) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        }
    }

    /// Origin of byte `offset` of this text; the end of the text maps just past its last byte.
    pub fn origin(&self, offset: usize) -> usize {
        if self.runs.is_empty() {
            return 0;
        }
        if offset >= self.text.len() {
            let &(out, src) = self.runs.last().expect("runs checked non-empty");
            return src + (self.text.len() - out);
        }
        let (out, src) = self.runs[self.run_index(offset)];
        src + (offset - out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_float_python_spellings_accepted() {
        assert_eq!(py_float(" 0.8 "), Some(0.8));
        assert_eq!(py_float("1_000.5"), Some(1000.5));
        assert_eq!(py_float("+.5"), Some(0.5));
        assert_eq!(py_float("5."), Some(5.0));
        assert_eq!(py_float("1e3"), Some(1000.0));
        assert_eq!(py_float("-Infinity"), Some(f64::NEG_INFINITY));
        assert!(py_float("nan").unwrap().is_nan());
        assert_eq!(py_float("1".repeat(400).as_str()), Some(f64::INFINITY));
    }

    #[test]
    fn py_float_non_numbers_rejected() {
        for s in ["", ".", "1.5.2", "1e", "_1", "1__0", "1_", "abc", "0x10", "1,5"] {
            assert_eq!(py_float(s), None, "{s:?}");
        }
    }

    #[test]
    fn py_int_accepts_only_integers() {
        assert_eq!(py_int(" 16 "), Some(16));
        assert_eq!(py_int("+1_6"), Some(16));
        assert_eq!(py_int("-3"), Some(-3));
        assert_eq!(py_int("1.0"), None);
        assert_eq!(py_int(""), None);
        assert_eq!(py_int("+"), None);
    }

    #[test]
    fn is_py_space_includes_information_separators() {
        assert!(is_py_space('\u{1f}'));
        assert!(is_py_space('\u{a0}'));
        assert!(is_py_space('\u{3000}'));
        assert!(!is_py_space('\u{200b}'));
    }

    #[test]
    fn sourced_origin_follows_pieces() {
        let mut s = Sourced::default();
        s.push("ab", 10);
        s.push("cd", 12);
        s.push("ef", 40);
        assert_eq!(s.text, "abcdef");
        assert_eq!(s.origin(0), 10);
        assert_eq!(s.origin(3), 13);
        assert_eq!(s.origin(4), 40);
        assert_eq!(s.origin(6), 42);
        let sub = s.slice(3..5);
        assert_eq!(sub.text, "de");
        assert_eq!(sub.origin(0), 13);
        assert_eq!(sub.origin(1), 40);
    }
}
