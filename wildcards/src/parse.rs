//! Template text → [`Node`] tree, following dynamicprompts' pyparsing grammar.
//!
//! The grammar is an ordered-choice (PEG) grammar; the notes below record the pyparsing
//! behaviours it depends on, because they decide what parses:
//!
//! * Comments (`#…` and `//…` to the end of the line, `/*…*/`) are skipped at the start of
//!   *every* grammar element, so they only count where a new token starts. The `#` and `//`
//!   forms also swallow the whitespace in front of them there (`{a|b} # c` renders `a`).
//!   Inside running text `#` still ends the literal (it is excluded from literals), and the
//!   pieces of one literal run split by comments are joined with a space.
//! * Literal runs exclude `#{$%` and never start a `__`; inside variant options also `|`
//!   and `}`; inside wildcard names also `(` and `)`.
//! * Whitespace is significant: only the explicit optional-whitespace slots (after `{`,
//!   around options, inside `${…}`, …) drop it.
//! * A wildcard name stops before `(`, even after whitespace, which opens the parameters.
//!
//! Strict mode reports what dynamicprompts rejects as a parse error. The default, lenient
//! mode keeps ordinary text that the library would reject as literal text instead: a `%`,
//! a `$` (inside options: one not followed by another `$`, which delimits bounds and wraps)
//! or a `__` that does not start a valid construct. An unclosed `{` stays an error.

use std::sync::Arc;

use crate::ast::{
    Access, Assign, Node, NodeKind, Sampler, Variant, VariantOption, Wildcard, WildcardPath, Wrap,
};
use crate::pystr;
use crate::Error;

/// Deepest nesting of templates inside templates the parser accepts.
pub const MAX_NESTING: usize = 100;

/// Parses `text`; `strict` reproduces the library's errors (see the module docs).
///
/// pyparsing expands tabs (8-column stops, `str.expandtabs`) before parsing, so a tab in a
/// template reaches the prompt as spaces; the tree and error positions are mapped back to
/// `text` (`char_offset` of an error stays in expanded characters, as the library reports).
pub fn parse(text: &str, strict: bool) -> Result<Node, Error> {
    if !text.contains('\t') {
        return parse_expanded(text, strict);
    }
    let (expanded, map) = expand_tabs(text);
    match parse_expanded(&expanded, strict) {
        Ok(node) => Ok(map_spans(node, &|o| map[o])),
        Err(Error::Parse { offset, char_offset, message, .. }) => {
            let original = map[offset];
            match Error::parse(text, original, message) {
                Error::Parse { offset, line, column, message, .. } => {
                    Err(Error::Parse { offset, char_offset, line, column, message })
                }
                other => Err(other),
            }
        }
        Err(e) => Err(e),
    }
}

/// `str.expandtabs()` and, for every byte offset of the result (end included), the
/// offset in `text` it came from.
fn expand_tabs(text: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len() + 16);
    let mut map = Vec::with_capacity(text.len() + 17);
    let mut column = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '\t' => {
                let n = 8 - column % 8;
                for _ in 0..n {
                    out.push(' ');
                    map.push(i);
                }
                column += n;
            }
            _ => {
                out.push(c);
                map.extend(std::iter::repeat_n(i, c.len_utf8()));
                column = if c == '\n' || c == '\r' { 0 } else { column + 1 };
            }
        }
    }
    map.push(text.len());
    (out, map)
}

fn parse_expanded(text: &str, strict: bool) -> Result<Node, Error> {
    let mut p = Parser { s: text, b: text.as_bytes(), strict, depth: 0 };
    let (node, end) = p.prompt(0, Ctx::Top)?;
    // `parse_all`: trailing comments and whitespace may follow, nothing else.
    let end = p.skip_ws(p.skip(end));
    if end < text.len() {
        return Err(p.error_at(end));
    }
    Ok(node)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Template top level (also wildcard values): assignments allowed.
    Top,
    /// Variant options, variable values and defaults, wrap parts.
    Option,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LiteralKind {
    Top,
    Option,
    WildcardName,
}

/// `Ok(None)`: this alternative does not match here (the caller tries the next one).
type Parsed<T> = Result<Option<(T, usize)>, Error>;

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    strict: bool,
    depth: usize,
}

/// `{lo-hi$$separator$$`: a missing bound defaults later (1, or the option count).
struct Bounds {
    lo: Option<usize>,
    hi: Option<usize>,
    separator: String,
}

struct Chunk {
    node: Node,
    /// Recovered text (lenient mode) that merges with neighbouring literals.
    glue: bool,
}

impl<'a> Parser<'a> {
    fn error_at(&self, offset: usize) -> Error {
        let rest = &self.s[offset..];
        let message = if rest.starts_with('{') {
            "this `{` opens a variant that is never closed with `}`".to_string()
        } else if rest.starts_with("${") {
            "this `${` does not form a variable `${name}` or `${name=value}`".to_string()
        } else if rest.starts_with('$') {
            "a `$` must start a variable `${…}`".to_string()
        } else if rest.starts_with("%{") {
            "this `%{` does not form a wrap command `%{wrapper$$inner}`".to_string()
        } else if rest.starts_with('%') {
            "a `%` must start a wrap command `%{…}`".to_string()
        } else if rest.starts_with("__") {
            "this `__` opens a wildcard that is never closed with `__`".to_string()
        } else {
            format!("unexpected text {:?}", rest.chars().take(12).collect::<String>())
        };
        Error::parse(self.s, offset, message)
    }

    // ---------------------------------------------------------------- lexical helpers

    fn at(&self, pos: usize, lit: &str) -> bool {
        self.b.get(pos..pos + lit.len()) == Some(lit.as_bytes())
    }

    fn skip_ws(&self, mut pos: usize) -> usize {
        while pos < self.b.len() && matches!(self.b[pos], b' ' | b'\t' | b'\n' | b'\r') {
            pos += 1;
        }
        pos
    }

    fn end_of_line(&self, pos: usize) -> usize {
        self.s[pos..].find('\n').map_or(self.b.len(), |i| pos + i)
    }

    /// pyparsing's `_skipIgnorables`: each comment form repeatedly, in order, until none
    /// moves the position.
    fn skip(&self, mut pos: usize) -> usize {
        loop {
            let start = pos;
            loop {
                let q = self.skip_ws(pos);
                if self.at(q, "#") {
                    pos = self.end_of_line(q);
                } else {
                    break;
                }
            }
            loop {
                let q = self.skip_ws(pos);
                if self.at(q, "//") {
                    pos = self.end_of_line(q);
                } else {
                    break;
                }
            }
            while self.at(pos, "/*") {
                match self.s[pos + 2..].find("*/") {
                    Some(i) => pos = pos + 2 + i + 2,
                    None => break,
                }
            }
            if pos == start {
                return pos;
            }
        }
    }

    /// A fixed token after skipped comments.
    fn token(&self, pos: usize, lit: &str) -> Option<usize> {
        let p = self.skip(pos);
        self.at(p, lit).then_some(p + lit.len())
    }

    /// `Opt(White())`: comments, then a run of spaces, tabs, CR and LF.
    fn opt_ws(&self, pos: usize) -> usize {
        self.skip_ws(self.skip(pos))
    }

    /// `Opt(sampler_symbol)`.
    fn sampler(&self, pos: usize) -> (Option<Sampler>, usize) {
        let p = self.skip(pos);
        let sampler = match self.b.get(p) {
            Some(b'~') => Some(Sampler::Random),
            Some(b'!') => Some(Sampler::Combinatorial),
            Some(b'@') => Some(Sampler::Cyclical),
            _ => None,
        };
        (sampler, if sampler.is_some() { p + 1 } else { p })
    }

    /// `Word(nums)` as a Python int, saturating (bounds are clamped to the option count).
    fn integer(&self, pos: usize) -> Option<(usize, usize)> {
        let p = self.skip(pos);
        let mut end = p;
        let mut value = 0usize;
        while end < self.b.len() && self.b[end].is_ascii_digit() {
            value = value.saturating_mul(10).saturating_add(usize::from(self.b[end] - b'0'));
            end += 1;
        }
        (end > p).then_some((value, end))
    }

    /// `Word(alphas + "_-", alphanums + "_-")`.
    fn var_name(&self, pos: usize) -> Option<(String, usize)> {
        let p = self.skip(pos);
        let first = *self.b.get(p)?;
        if !(first.is_ascii_alphabetic() || first == b'_' || first == b'-') {
            return None;
        }
        let mut end = p + 1;
        while end < self.b.len()
            && (self.b[end].is_ascii_alphanumeric() || matches!(self.b[end], b'_' | b'-'))
        {
            end += 1;
        }
        Some((self.s[p..end].to_string(), end))
    }

    /// `pyparsing.common.real | pyparsing.common.integer` followed by `::`.
    fn weight(&self, pos: usize) -> Option<(f64, usize)> {
        let p = self.skip(pos);
        let digits = |mut i: usize| {
            while i < self.b.len() && self.b[i].is_ascii_digit() {
                i += 1;
            }
            i
        };
        // real: [+-]?(\d+\.\d*|\.\d+)
        let mut i = p;
        if matches!(self.b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let int_end = digits(i);
        let real_end = if int_end > i && self.b.get(int_end) == Some(&b'.') {
            Some(digits(int_end + 1))
        } else if int_end == i && self.b.get(i) == Some(&b'.') && digits(i + 1) > i + 1 {
            Some(digits(i + 1))
        } else {
            None
        };
        let end = match real_end {
            Some(e) => e,
            None => {
                let e = digits(p);
                if e == p {
                    return None;
                }
                e
            }
        };
        let value = pystr::parse_float(&self.s[p..end])?;
        let after = self.token(end, "::")?;
        Some((value, after))
    }

    // ---------------------------------------------------------------- grammar

    /// `ZeroOrMore(chunk)`; never fails.
    fn prompt(&mut self, pos: usize, ctx: Ctx) -> Result<(Node, usize), Error> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(Error::parse(
                self.s,
                pos,
                format!("templates nested deeper than {MAX_NESTING} levels"),
            ));
        }
        let start = self.skip(pos);
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut loc = start;
        loop {
            let p = self.skip(loc);
            if let Some((node, end)) = self.chunk(p, ctx)? {
                chunks.push(Chunk { node, glue: false });
                loc = end;
                continue;
            }
            if let Some(len) = self.recoverable(p, ctx) {
                chunks.push(Chunk { node: Node::literal(&self.s[p..p + len], p..p + len), glue: true });
                loc = p + len;
                continue;
            }
            break;
        }
        self.depth -= 1;
        Ok((collapse(merge_glued(chunks), start), loc))
    }

    /// Lenient mode: length of text at `pos` that the library would reject but that reads
    /// as ordinary text.
    fn recoverable(&self, pos: usize, ctx: Ctx) -> Option<usize> {
        if self.strict {
            return None;
        }
        match self.b.get(pos)? {
            b'%' => Some(1),
            b'$' if ctx == Ctx::Top || !self.at(pos + 1, "$") => Some(1),
            b'_' if self.at(pos, "__") => Some(2),
            _ => None,
        }
    }

    fn chunk(&mut self, pos: usize, ctx: Ctx) -> Parsed<Node> {
        if ctx == Ctx::Top {
            if let Some(r) = self.assignment(pos)? {
                return Ok(Some(r));
            }
        }
        if let Some(r) = self.access(pos, false)? {
            return Ok(Some(r));
        }
        if let Some(r) = self.wrap(pos)? {
            return Ok(Some(r));
        }
        if let Some(r) = self.variants(pos)? {
            return Ok(Some(r));
        }
        if let Some(r) = self.wildcard(pos)? {
            return Ok(Some(r));
        }
        let kind = if ctx == Ctx::Top { LiteralKind::Top } else { LiteralKind::Option };
        Ok(self.literal_run(pos, kind))
    }

    /// One regex match of a literal: characters not excluded, never starting a `__`.
    fn literal_piece(&self, pos: usize, kind: LiteralKind) -> Option<usize> {
        let mut end = pos;
        for (i, c) in self.s[pos..].char_indices() {
            let at = pos + i;
            let excluded = match c {
                '#' | '{' | '$' | '%' => true,
                '|' | '}' => kind == LiteralKind::Option,
                '(' | ')' => kind == LiteralKind::WildcardName,
                '_' => self.at(at, "__"),
                _ => false,
            };
            if excluded {
                break;
            }
            end = at + c.len_utf8();
        }
        (end > pos).then_some(end)
    }

    /// `OneOrMore(literal)`: pieces separated by comments, joined with a space.
    fn literal_run(&self, pos: usize, kind: LiteralKind) -> Option<(Node, usize)> {
        let start = self.skip(pos);
        let first_end = self.literal_piece(start, kind)?;
        let mut text = self.s[start..first_end].to_string();
        let mut loc = first_end;
        loop {
            let p = self.skip(loc);
            match self.literal_piece(p, kind) {
                Some(e) => {
                    text.push(' ');
                    text.push_str(&self.s[p..e]);
                    loc = e;
                }
                None => break,
            }
        }
        Some((Node::literal(text, start..loc), loc))
    }

    /// `${name=value}`.
    fn assignment(&mut self, pos: usize) -> Parsed<Node> {
        let start = self.skip(pos);
        let Some(p) = self.token(start, "${") else { return Ok(None) };
        let p = self.opt_ws(p);
        let Some((name, p)) = self.var_name(p) else { return Ok(None) };
        let p = self.opt_ws(p);
        let (overwrite, p) = match self.token(p, "?") {
            Some(q) => (false, q),
            None => (true, self.skip(p)),
        };
        let Some(p) = self.token(p, "=") else { return Ok(None) };
        let (immediate, p) = match self.token(p, "!") {
            Some(q) => (true, q),
            None => (false, self.skip(p)),
        };
        let p = self.opt_ws(p);
        let (value, p) = self.prompt(p, Ctx::Option)?;
        let p = self.opt_ws(p);
        let Some(end) = self.token(p, "}") else { return Ok(None) };
        let node = NodeKind::Assign(Assign { name, value: Arc::new(value), immediate, overwrite });
        Ok(Some((Node::new(node, start..end), end)))
    }

    /// `${name}` / `${name:default}`; inside a wildcard name the default is plain text and
    /// an absent default means the variable's own name.
    fn access(&mut self, pos: usize, in_wildcard_name: bool) -> Parsed<Node> {
        let start = self.skip(pos);
        let Some(p) = self.token(start, "${") else { return Ok(None) };
        let p = self.opt_ws(p);
        let Some((name, p)) = self.var_name(p) else { return Ok(None) };
        let p = self.opt_ws(p);
        let (default, p) = match self.token(p, ":") {
            Some(q) => {
                let q = self.opt_ws(q);
                let (d, q) = self.prompt(q, Ctx::Option)?;
                (Some(d), q)
            }
            None => (None, self.skip(p)),
        };
        let p = self.opt_ws(p);
        let Some(end) = self.token(p, "}") else { return Ok(None) };
        let default = if in_wildcard_name {
            let span = default.as_ref().map_or(start..end, |d| d.span.clone());
            let text = match default {
                Some(d) if !d.is_empty_command() => match d.kind {
                    NodeKind::Literal(t) => t,
                    _ => {
                        return Err(Error::parse(
                            self.s,
                            span.start,
                            "the default of a variable inside a wildcard name must be plain text",
                        ))
                    }
                },
                _ => name.clone(),
            };
            Some(Arc::new(Node::literal(pystr::strip(&text), span)))
        } else {
            default.map(Arc::new)
        };
        Ok(Some((Node::new(NodeKind::Access(Access { name, default }), start..end), end)))
    }

    /// `%{wrapper$$inner}`.
    fn wrap(&mut self, pos: usize) -> Parsed<Node> {
        let start = self.skip(pos);
        let Some(p) = self.token(start, "%{") else { return Ok(None) };
        let p = self.opt_ws(p);
        let (wrapper, p) = self.prompt(p, Ctx::Option)?;
        let p = self.opt_ws(p);
        let Some(p) = self.token(p, "$$") else { return Ok(None) };
        let p = self.opt_ws(p);
        let (inner, p) = self.prompt(p, Ctx::Option)?;
        let Some(end) = self.token(p, "}") else { return Ok(None) };
        let node = NodeKind::Wrap(Wrap { wrapper: Arc::new(wrapper), inner: Arc::new(inner) });
        Ok(Some((Node::new(node, start..end), end)))
    }

    /// `N$$`, `N-$$`, `-M$$`, `N-M$$` and an optional `separator$$`.
    fn bound_expr(&self, pos: usize) -> Option<(Bounds, usize)> {
        let p = self.skip(pos);
        let range = (|| {
            if let Some((lo, q)) = self.integer(p) {
                if let Some(q) = self.token(q, "-") {
                    if let Some((hi, r)) = self.integer(q) {
                        return Some(((Some(lo), Some(hi)), r));
                    }
                }
            }
            if let Some(q) = self.token(p, "-") {
                if let Some((hi, r)) = self.integer(q) {
                    return Some(((None, Some(hi)), r));
                }
            }
            if let Some((lo, q)) = self.integer(p) {
                if let Some(r) = self.token(q, "-") {
                    return Some(((Some(lo), None), r));
                }
                // An exact count sets both bounds.
                return Some(((Some(lo), Some(lo)), q));
            }
            None
        })();
        let ((lo, hi), q) = range?;
        let q = self.token(q, "$$")?;
        // Word(printables + " ", exclude "${}") then `$$`; otherwise the default ",".
        let s = self.skip(q);
        let mut e = s;
        while e < self.b.len()
            && (0x20..=0x7e).contains(&self.b[e])
            && !matches!(self.b[e], b'$' | b'{' | b'}')
        {
            e += 1;
        }
        if e > s {
            if let Some(after) = self.token(e, "$$") {
                return Some((Bounds { lo, hi, separator: self.s[s..e].to_string() }, after));
            }
        }
        Some((Bounds { lo, hi, separator: ",".to_string() }, s))
    }

    /// `{…}`.
    fn variants(&mut self, pos: usize) -> Parsed<Node> {
        let start = self.skip(pos);
        let Some(p) = self.token(start, "{") else { return Ok(None) };
        let p = self.opt_ws(p);
        let (sampler, p) = self.sampler(p);
        let (bounds, p) = match self.bound_expr(p) {
            Some((b, q)) => (Some(b), q),
            None => (None, self.skip(p)),
        };
        let p = self.opt_ws(p);
        let mut options = Vec::new();
        let (first, mut p) = self.option(p)?;
        options.push(first);
        while let Some(q) = self.token(p, "|") {
            let (opt, q) = self.option(q)?;
            options.push(opt);
            p = q;
        }
        let p = self.opt_ws(p);
        let Some(end) = self.token(p, "}") else { return Ok(None) };
        let (min, max, separator) = match bounds {
            None => (1, 1, ",".to_string()),
            Some(b) => (b.lo.unwrap_or(1), b.hi.unwrap_or(options.len()), b.separator),
        };
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        let node = NodeKind::Variant(Variant { options, min, max, separator, sampler });
        Ok(Some((Node::new(node, start..end), end)))
    }

    /// One option: optional whitespace, optional `weight::`, template, optional whitespace.
    fn option(&mut self, pos: usize) -> Result<(VariantOption, usize), Error> {
        let p = self.opt_ws(pos);
        let (weight, p) = match self.weight(p) {
            Some((w, q)) => (w, q),
            None => (1.0, self.skip(p)),
        };
        let (value, p) = self.prompt(p, Ctx::Option)?;
        let p = self.opt_ws(p);
        Ok((VariantOption { weight, value: Arc::new(value) }, p))
    }

    /// `__name__`, `__~name__`, `__name(a=b, c=d)__`.
    fn wildcard(&mut self, pos: usize) -> Parsed<Node> {
        let start = self.skip(pos);
        let Some(p) = self.token(start, "__") else { return Ok(None) };
        let (sampler, p) = self.sampler(p);
        let Some((path, p)) = self.wildcard_name(p)? else { return Ok(None) };
        let (params, p) = match self.wildcard_params(p)? {
            Some((params, q)) => (params, q),
            None => (Vec::new(), self.skip(p)),
        };
        let Some(end) = self.token(p, "__") else { return Ok(None) };
        let path = match path.kind {
            NodeKind::Literal(text) => WildcardPath::Text(text),
            _ => WildcardPath::Template(Arc::new(path)),
        };
        let node = NodeKind::Wildcard(Wildcard { path, sampler, params });
        Ok(Some((Node::new(node, start..end), end)))
    }

    /// The stop marker of a wildcard name: `(` after optional whitespace.
    fn at_params(&self, pos: usize) -> bool {
        self.at(self.skip_ws(pos), "(")
    }

    /// `OneOrMore(wildcard_chunk, stop_on="(")`.
    fn wildcard_name(&mut self, pos: usize) -> Parsed<Node> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(Error::parse(
                self.s,
                pos,
                format!("templates nested deeper than {MAX_NESTING} levels"),
            ));
        }
        let start = self.skip(pos);
        let mut chunks = Vec::new();
        let mut loc = start;
        loop {
            if self.at_params(loc) {
                break;
            }
            let p = self.skip(loc);
            let found = if let Some(r) = self.access(p, true)? {
                Some(r)
            } else if let Some(r) = self.variants(p)? {
                Some(r)
            } else if let Some(r) = self.literal_run(p, LiteralKind::WildcardName) {
                Some(r)
            } else {
                self.literal_run(p, LiteralKind::Option)
            };
            match found {
                Some((node, end)) => {
                    chunks.push(Chunk { node, glue: false });
                    loc = end;
                }
                None => break,
            }
        }
        self.depth -= 1;
        if chunks.is_empty() {
            return Ok(None);
        }
        Ok(Some((collapse(chunks, start), loc)))
    }

    /// `( name=value, … )` after optional whitespace.
    fn wildcard_params(&mut self, pos: usize) -> Parsed<Vec<(String, Arc<Node>)>> {
        let p = self.opt_ws(pos);
        let Some(p) = self.token(p, "(") else { return Ok(None) };
        let s = self.skip(p);
        let Some(len) = self.s[s..].find(')') else { return Ok(None) };
        if len == 0 {
            return Ok(None);
        }
        let spec = &self.s[s..s + len];
        let end = s + len + 1;
        let mut params: Vec<(String, Arc<Node>)> = Vec::new();
        let mut offset = s;
        for pair in spec.split(',') {
            let (key, value, value_at) = match pair.find('=') {
                Some(i) => (&pair[..i], &pair[i + 1..], i + 1),
                None => (pair, "", pair.len()),
            };
            let key = pystr::strip(key).to_string();
            let value_start = offset + value_at;
            let trimmed = pystr::strip(value);
            let lead = value.len() - value.trim_start_matches(pystr::is_space).len();
            let base = value_start + lead;
            // A value that fails to parse makes the whole wildcard fail to match, as a
            // parse error raised inside a pyparsing parse action does.
            let node = match parse(trimmed, self.strict) {
                Ok(node) => shift(node, base),
                Err(_) => return Ok(None),
            };
            match params.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = Arc::new(node),
                None => params.push((key, Arc::new(node))),
            }
            offset += pair.len() + 1;
        }
        Ok(Some((params, end)))
    }
}

/// Lenient recovery pieces merge with the literals around them into one literal.
fn merge_glued(chunks: Vec<Chunk>) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        if let Some(prev) = out.last_mut() {
            if prev.glue || chunk.glue {
                if let (NodeKind::Literal(a), NodeKind::Literal(b)) = (&mut prev.node.kind, &chunk.node.kind)
                {
                    a.push_str(b);
                    prev.node.span.end = chunk.node.span.end;
                    prev.glue = true;
                    continue;
                }
            }
        }
        out.push(chunk);
    }
    out
}

/// One chunk is the node itself; otherwise a sequence (empty at `start`).
fn collapse(mut chunks: Vec<Chunk>, start: usize) -> Node {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk").node;
    }
    let span = match (chunks.first(), chunks.last()) {
        (Some(a), Some(b)) => a.node.span.start..b.node.span.end,
        _ => start..start,
    };
    Node::new(NodeKind::Sequence(chunks.into_iter().map(|c| Arc::new(c.node)).collect()), span)
}

/// Moves the spans of a tree parsed from a substring to the enclosing text.
fn shift(node: Node, by: usize) -> Node {
    map_spans(node, &|o| o + by)
}

/// Rewrites every span offset of a tree with `f`.
fn map_spans(node: Node, f: &dyn Fn(usize) -> usize) -> Node {
    let span = f(node.span.start)..f(node.span.end);
    let sh = |n: &Arc<Node>| Arc::new(map_spans((**n).clone(), f));
    let kind = match node.kind {
        NodeKind::Literal(t) => NodeKind::Literal(t),
        NodeKind::Sequence(items) => NodeKind::Sequence(items.iter().map(sh).collect()),
        NodeKind::Variant(v) => NodeKind::Variant(Variant {
            options: v
                .options
                .iter()
                .map(|o| VariantOption { weight: o.weight, value: sh(&o.value) })
                .collect(),
            ..v
        }),
        NodeKind::Wildcard(w) => NodeKind::Wildcard(Wildcard {
            path: match &w.path {
                WildcardPath::Text(t) => WildcardPath::Text(t.clone()),
                WildcardPath::Template(n) => WildcardPath::Template(sh(n)),
            },
            sampler: w.sampler,
            params: w.params.iter().map(|(k, v)| (k.clone(), sh(v))).collect(),
        }),
        NodeKind::Assign(a) => NodeKind::Assign(Assign { value: sh(&a.value), ..a }),
        NodeKind::Access(a) => NodeKind::Access(Access { default: a.default.as_ref().map(sh), name: a.name }),
        NodeKind::Wrap(w) => NodeKind::Wrap(Wrap { wrapper: sh(&w.wrapper), inner: sh(&w.inner) }),
    };
    Node::new(kind, span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(node: &Node) -> &str {
        match &node.kind {
            NodeKind::Literal(t) => t,
            other => panic!("not a literal: {other:?}"),
        }
    }

    #[test]
    fn parse_comment_in_literal_joins_with_space() {
        let node = parse("red # blue\ngreen", true).unwrap();
        assert_eq!(lit(&node), "red  \ngreen");
    }

    #[test]
    fn parse_percent_strict_errors_lenient_keeps_text() {
        let err = parse("a 50% discount", true).unwrap_err();
        assert!(matches!(err, Error::Parse { offset: 4, .. }), "{err:?}");
        assert_eq!(lit(&parse("a 50% discount", false).unwrap()), "a 50% discount");
    }

    #[test]
    fn parse_unclosed_variant_lenient_still_errors() {
        let err = parse("a {b", false).unwrap_err();
        assert!(matches!(err, Error::Parse { offset: 2, .. }), "{err:?}");
    }

    #[test]
    fn parse_spans_cover_source_text() {
        let text = "x {a|b} __c__";
        let node = parse(text, true).unwrap();
        let NodeKind::Sequence(items) = &node.kind else { panic!("{node:?}") };
        let spans: Vec<&str> = items.iter().map(|n| &text[n.span.clone()]).collect();
        assert_eq!(spans, ["x ", "{a|b}", " ", "__c__"]);
    }

    #[test]
    fn parse_deep_nesting_reports_error_instead_of_overflowing() {
        let text = "{".repeat(5000);
        assert!(parse(&text, false).is_err());
    }
}
