//! kohya's sample-prompt syntax (training spec §7): one prompt per line, options after `" --"`:
//! `--n` negative prompt, `--w`/`--h` size, `--l` CFG scale, `--s` steps, `--d` seed, `--ss`
//! sampler. Blank lines and lines starting with `#` are skipped.
//!
//! As in sd-scripts' `line_to_prompt_dict`, the line is split on `" --"`, the first piece is the
//! prompt, and every piece (the first included, as there) is tried against each option in turn: an
//! option matches when the piece starts with its letter(s) and a space, case-insensitively, and its
//! value is the longest prefix of digits (`w h d s`), of digits and dots (`l`), or the rest of the
//! piece (`n ss`). A value that does not parse is ignored, as kohya logs and skips it.

use serde::{Deserialize, Serialize};

/// One sample image to render during training, with kohya's defaults applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplePrompt {
    pub prompt: String,
    /// `--n`; empty when absent.
    pub negative_prompt: String,
    /// `--w` / `--h`, floored to multiples of 8 with a minimum of 64 (default 512).
    pub width: u32,
    pub height: u32,
    /// `--l` (default 7.5).
    pub cfg_scale: f64,
    /// `--s`, clamped to 1–1000 (default 30).
    pub steps: u32,
    /// `--d`; `None` draws a random seed.
    pub seed: Option<u64>,
    /// `--ss`; `None` uses the run's sampler.
    pub sampler: Option<String>,
}

/// The value of option `key` in `piece`, if the piece starts with `key` and a space.
fn option<'a>(piece: &'a str, key: &str) -> Option<&'a str> {
    let head = piece.get(..key.len() + 1)?;
    (head[..key.len()].eq_ignore_ascii_case(key) && head.ends_with(' ')).then(|| &piece[key.len() + 1..])
}

/// The longest prefix of `s` whose characters satisfy `keep`, or `None` when empty.
fn prefix(s: &str, keep: impl Fn(char) -> bool) -> Option<&str> {
    let end = s.find(|c: char| !keep(c)).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// kohya's size rule: floored to a multiple of 8, at least 64.
fn size(v: u32) -> u32 {
    (v - v % 8).max(64)
}

/// Parses one line; `None` for blank lines and `#` comments.
pub fn parse_line(line: &str) -> Option<SamplePrompt> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let pieces: Vec<&str> = line.split(" --").collect();
    let mut out = SamplePrompt {
        prompt: pieces[0].to_string(),
        negative_prompt: String::new(),
        width: 512,
        height: 512,
        cfg_scale: 7.5,
        steps: 30,
        seed: None,
        sampler: None,
    };
    let digits = |s: &str| prefix(s, |c| c.is_ascii_digit()).and_then(|d| d.parse::<u64>().ok());
    for piece in pieces {
        // The order is kohya's: the first matching option takes the piece.
        if let Some(v) = option(piece, "w").and_then(digits) {
            out.width = size(v.min(u64::from(u32::MAX)) as u32);
        } else if let Some(v) = option(piece, "h").and_then(digits) {
            out.height = size(v.min(u64::from(u32::MAX)) as u32);
        } else if let Some(v) = option(piece, "d").and_then(digits) {
            out.seed = Some(v);
        } else if let Some(v) = option(piece, "s").and_then(digits) {
            out.steps = v.clamp(1, 1000) as u32;
        } else if let Some(v) = option(piece, "l") {
            if let Some(x) = prefix(v, |c| c.is_ascii_digit() || c == '.').and_then(|x| x.parse::<f64>().ok())
            {
                out.cfg_scale = x;
            }
        } else if let Some(v) = option(piece, "n").filter(|v| !v.is_empty()) {
            out.negative_prompt = v.to_string();
        } else if let Some(v) = option(piece, "ss").filter(|v| !v.is_empty()) {
            out.sampler = Some(v.to_string());
        }
    }
    Some(out)
}

/// Parses a prompt file's text: one [`SamplePrompt`] per non-blank, non-comment line.
pub fn parse(text: &str) -> Vec<SamplePrompt> {
    text.lines().filter_map(parse_line).collect()
}
