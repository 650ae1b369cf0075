//! The few Python string and number rules the library's behaviour depends on.

/// `str.isspace()` for one character: Unicode White_Space plus the four ASCII separators
/// U+001C..U+001F that Python also counts.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip()`.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `" ".join(s.split())`: whitespace runs become one space, ends trimmed.
pub fn squash_whitespace(s: &str) -> String {
    s.split(is_space).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `float(text)` for the forms the wildcard files use: surrounding whitespace, sign,
/// digits with single underscores between them, decimal point, exponent, `inf`/`nan`.
pub fn parse_float(text: &str) -> Option<f64> {
    let t = strip(text);
    if t.is_empty() {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if lower.len() - unsigned.len() > 1 {
        return None;
    }
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        let v = if unsigned == "nan" { f64::NAN } else { f64::INFINITY };
        return Some(if lower.starts_with('-') { -v } else { v });
    }
    // Underscores are only allowed between two digits.
    let bytes = t.as_bytes();
    let mut cleaned = String::with_capacity(t.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let ok = i > 0
                && i + 1 < bytes.len()
                && bytes[i - 1].is_ascii_digit()
                && bytes[i + 1].is_ascii_digit();
            if !ok {
                return None;
            }
            continue;
        }
        if !(b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E')) {
            return None;
        }
        cleaned.push(b as char);
    }
    if !cleaned.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    cleaned.parse::<f64>().ok()
}

/// `repr(float)` for the values that can reach a prompt (weights read as text).
pub fn float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == v.trunc() && v.abs() < 1e16 {
        return format!("{v:.1}");
    }
    let s = format!("{v:?}");
    if let Some((mantissa, exp)) = s.split_once('e') {
        let exp: i32 = exp.parse().unwrap_or(0);
        if (-4..16).contains(&exp) {
            return format!("{v}");
        }
        return format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_float_python_forms_accepted() {
        assert_eq!(parse_float(" 2 "), Some(2.0));
        assert_eq!(parse_float("1_0.5"), Some(10.5));
        assert_eq!(parse_float("1."), Some(1.0));
        assert_eq!(parse_float(".5"), Some(0.5));
        assert_eq!(parse_float("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float("1__0"), None);
        assert_eq!(parse_float("x"), None);
        assert_eq!(parse_float("1::2"), None);
    }

    #[test]
    fn squash_whitespace_mixed_runs_single_spaces() {
        assert_eq!(squash_whitespace("  a \t\n b\u{a0}c  "), "a b c");
    }

    #[test]
    fn float_repr_matches_python() {
        assert_eq!(float_repr(2.0), "2.0");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(1e20), "1e+20");
        assert_eq!(float_repr(1.5e-7), "1.5e-07");
    }
}
