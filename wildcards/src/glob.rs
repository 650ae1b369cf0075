//! `fnmatch.fnmatchcase` as Python 3.11 translates it: `*` matches any run (`/` included),
//! `?` one character, `[seq]` / `[!seq]` a class with `a-z` ranges; anything else is literal.

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Star,
    Any,
    Char(char),
    /// Ranges (inclusive); `negated` inverts.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// An empty class: matches nothing.
    Never,
}

/// A compiled glob pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Self {
        let pat: Vec<char> = pattern.chars().collect();
        let n = pat.len();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < n {
            let c = pat[i];
            i += 1;
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '[' => {
                    let mut j = i;
                    if j < n && pat[j] == '!' {
                        j += 1;
                    }
                    if j < n && pat[j] == ']' {
                        j += 1;
                    }
                    while j < n && pat[j] != ']' {
                        j += 1;
                    }
                    if j >= n {
                        tokens.push(Token::Char('['));
                        continue;
                    }
                    tokens.push(class(&pat[i..j]));
                    i = j + 1;
                }
                c => tokens.push(Token::Char(c)),
            }
        }
        Glob { tokens }
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let s: Vec<char> = name.chars().collect();
        let t = &self.tokens;
        // Greedy star matching with backtracking to the last star: every other token
        // consumes exactly one character.
        let (mut si, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if ti < t.len() && t[ti] == Token::Star {
                star = Some((ti, si));
                ti += 1;
                continue;
            }
            if ti < t.len() && one(&t[ti], s[si]) {
                si += 1;
                ti += 1;
                continue;
            }
            match star {
                Some((st, ss)) => {
                    ti = st + 1;
                    si = ss + 1;
                    star = Some((st, ss + 1));
                }
                None => return false,
            }
        }
        while ti < t.len() && t[ti] == Token::Star {
            ti += 1;
        }
        ti == t.len()
    }
}

fn one(token: &Token, c: char) -> bool {
    match token {
        Token::Star => true,
        Token::Any => true,
        Token::Char(x) => *x == c,
        Token::Class { negated, ranges } => ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated,
        Token::Never => false,
    }
}

/// The inside of `[...]`.
fn class(stuff: &[char]) -> Token {
    let (negated, body) = match stuff.first() {
        Some('!') => (true, &stuff[1..]),
        _ => (false, stuff),
    };
    if body.is_empty() {
        // `[!]` matches any character; `[]` cannot occur (a leading `]` is literal).
        return if negated { Token::Any } else { Token::Never };
    }
    let mut ranges = Vec::new();
    let mut k = 0;
    while k < body.len() {
        let lo = body[k];
        if k + 2 < body.len() && body[k + 1] == '-' {
            let hi = body[k + 2];
            // Python drops reversed ranges ("empty ranges -- invalid in RE").
            if lo <= hi {
                ranges.push((lo, hi));
            }
            k += 3;
        } else {
            ranges.push((lo, lo));
            k += 1;
        }
    }
    if ranges.is_empty() {
        return if negated { Token::Any } else { Token::Never };
    }
    Token::Class { negated, ranges }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_crosses_slashes() {
        assert!(Glob::new("animals/*").matches("animals/a/b"));
        assert!(Glob::new("*/mammals").matches("animals/mammals"));
        assert!(!Glob::new("**/mammals").matches("mammals"));
        assert!(Glob::new("colors*").matches("colors-warm"));
    }

    #[test]
    fn glob_classes_and_question_mark() {
        assert!(Glob::new("c[a-c]t?").matches("cats"));
        assert!(!Glob::new("c[!a]t").matches("cat"));
        assert!(Glob::new("[").matches("["));
        assert!(Glob::new("a[]]").matches("a]"));
    }
}
