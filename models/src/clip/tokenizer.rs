//! The CLIP byte-level BPE tokenizer: prompt text → CLIP token ids.
//!
//! Reference: OpenAI CLIP's `SimpleTokenizer` (`clip/simple_tokenizer.py`) as shipped in the PyPI
//! package `clip-anytorch` 2.6.0, the tokenizer SD's CLIP text encoders were trained with; this
//! port matches it token for token (goldens: `reference/gen_tokenizer_golden.py`, spec:
//! `formats.md` §7). The pipeline is the reference's:
//!
//! 1. clean: `ftfy.fix_text`, HTML-unescape twice, strip; collapse whitespace runs; lowercase;
//! 2. pre-tokenize with CLIP's regex (letter runs, single digits, punctuation runs, contractions);
//! 3. map each piece's UTF-8 bytes to the 256-character byte alphabet, append `</w>` to the last
//!    symbol and apply BPE merges, lowest rank first;
//! 4. look the merged symbols up in the 49,408-entry vocabulary (no UNK is possible).
//!
//! ftfy has no Rust port; [`clean_text`] re-implements every ftfy 6.3 fixer that applies to text
//! which is not mojibake (HTML entities to a fixed point, C1 controls, Latin ligatures,
//! full/half-width forms, curly quotes, line breaks, terminal escapes, control characters, NFC).
//! Only ftfy's mojibake repair (`fix_encoding`, e.g. `cafÃ©` → `café`) is missing, so such input
//! tokenizes as typed. The other known divergence is the Unicode version: the goldens come from
//! CPython 3.11 (Unicode 14), while Rust's tables are newer, so characters assigned since then
//! (e.g. U+1C89) may classify, lowercase or normalize differently, as they would on a newer Python.
//!
//! Vocabulary: `models/vocab/bpe_simple_vocab_16e6.txt.gz`, byte-identical to the file in the
//! clip-anytorch 2.6.0 wheel (OpenAI, MIT license; see `models/vocab/LICENSE`), embedded with
//! `include_bytes!` and decompressed once per [`ClipTokenizer::new`]. The HTML5 entity table
//! `models/vocab/html5_entities.tsv` is Python's `html.entities.html5`, which both
//! `html.unescape` and ftfy decode with.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::{Mutex, OnceLock, PoisonError};

use regex::{Captures, Regex};
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// `<|startoftext|>`, the first id of every framed sequence.
pub const BOS: i64 = 49406;
/// `<|endoftext|>`; also the pad id of SD1.x and SDXL's CLIP-L.
pub const EOS: i64 = 49407;
/// Number of entries in the vocabulary (ids `0..VOCAB_SIZE`).
pub const VOCAB_SIZE: usize = 49408;
/// Length of a framed sequence: BOS, [`MAX_TOKENS`] prompt tokens, EOS.
pub const CONTEXT_LEN: usize = 77;
/// Prompt tokens that fit between BOS and EOS.
pub const MAX_TOKENS: usize = CONTEXT_LEN - 2;

/// The gzip-compressed merges file, exactly as shipped by the reference.
pub static VOCAB_GZ: &[u8] = include_bytes!("../../vocab/bpe_simple_vocab_16e6.txt.gz");
/// sha256 of [`VOCAB_GZ`] (formats.md §7.1).
pub const VOCAB_GZ_SHA256: &str = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a";

/// Python's `html.entities.html5`, `name<TAB>hex code points` per line.
static HTML5_ENTITIES_TSV: &str = include_str!("../../vocab/html5_entities.tsv");
const HTML5_ENTITY_COUNT: usize = 2231;

/// The reference uses merges file lines `1..=48894`: 49152 ids minus 256 bytes minus 2 specials.
const MERGE_COUNT: usize = 49152 - 256 - 2;

/// The per-piece BPE cache is dropped when it reaches this many entries, so a long-running daemon
/// fed endless distinct words does not grow without bound (the reference's cache is unbounded).
const CACHE_LIMIT: usize = 1 << 16;

/// ftfy repeats its fixers until the text stops changing; every round that changes anything
/// either shortens an entity or replaces characters that no fixer produces, so a handful of rounds
/// suffices. The cap only guards against looping forever on a bug.
const FTFY_MAX_ROUNDS: usize = 64;

const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";

/// CLIP's pre-tokenizer: `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|
/// [^\s\p{L}\p{N}]+`, compiled by the reference with `re.IGNORECASE`. The text is lowercase by
/// then, so the flag only matters where case folding reaches outside the letters: Python's
/// `regex` lets `'s` match `'ſ` (kept here with `(?i:…)`), does not widen `\p{L}`, and makes the
/// negated class reject U+0345 (a combining mark that folds to `ι`), so that character matches
/// no alternative and is dropped. Rust's `(?i)` would instead fold it into `\p{L}`, hence the
/// explicit exclusion.
const PRETOKENIZE_PATTERN: &str =
    r"(?i:<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+";

/// CLIP BPE tokenizer; cheap to share (`Send + Sync`), caches BPE results per pre-tokenized piece.
pub struct ClipTokenizer {
    /// Token string (in the byte alphabet, `</w>` marking word ends) → id.
    encoder: HashMap<String, u32>,
    /// Id → token string.
    decoder: Vec<String>,
    /// `(left id, right id)` → `(merge rank, id of the merged symbol)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id of the single-symbol token for each byte (add 256 for the `</w>` variant).
    byte_ids: [u32; 256],
    /// Byte value of each character of the byte alphabet, indexed by code point (all `< 0x144`).
    char_bytes: Vec<Option<u8>>,
    pretokenize: Regex,
    cache: Mutex<HashMap<String, Vec<i64>>>,
}

impl fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.decoder.len())
            .field("merges", &self.merges.len())
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Decompresses the embedded vocabulary and builds the tables (tens of milliseconds; build one
    /// and share it).
    pub fn new() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| Error::Tokenizer(format!("embedded BPE vocabulary does not decompress: {e}")))?;

        // Line 0 is the `#version` header.
        let mut merge_pairs = Vec::with_capacity(MERGE_COUNT);
        for (n, line) in text.split('\n').enumerate().skip(1).take(MERGE_COUNT) {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merge_pairs.push((a, b)),
                _ => {
                    return Err(Error::Tokenizer(format!("BPE vocabulary line {n} is not a merge: {line:?}")))
                }
            }
        }
        if merge_pairs.len() != MERGE_COUNT {
            return Err(Error::Tokenizer(format!(
                "BPE vocabulary has {} merges, expected {MERGE_COUNT}",
                merge_pairs.len()
            )));
        }

        let alphabet = bytes_to_unicode();
        let mut vocab: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        vocab.extend(alphabet.iter().map(|&(_, c)| c.to_string()));
        vocab.extend(alphabet.iter().map(|&(_, c)| format!("{c}</w>")));
        vocab.extend(merge_pairs.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push(START_OF_TEXT.to_owned());
        vocab.push(END_OF_TEXT.to_owned());

        // Later duplicates would win, as in the reference's `dict(zip(vocab, range))`; the file
        // has none, which the size check below confirms.
        let encoder: HashMap<String, u32> =
            vocab.iter().enumerate().map(|(id, tok)| (tok.clone(), id as u32)).collect();
        if vocab.len() != VOCAB_SIZE || encoder.len() != VOCAB_SIZE {
            return Err(Error::Tokenizer(format!(
                "BPE vocabulary has {} entries ({} distinct), expected {VOCAB_SIZE}",
                vocab.len(),
                encoder.len()
            )));
        }

        // Every symbol of a word in progress is a vocabulary entry (a byte character, one with
        // `</w>`, or an earlier merge's result), so a merge whose halves are not in the vocabulary
        // can never apply and is skipped.
        let mut merges = HashMap::with_capacity(MERGE_COUNT);
        for (rank, (a, b)) in merge_pairs.iter().enumerate() {
            let merged = encoder.get(&format!("{a}{b}"));
            if let (Some(&left), Some(&right), Some(&merged)) = (encoder.get(*a), encoder.get(*b), merged) {
                merges.insert((left, right), (rank as u32, merged));
            }
        }

        let mut byte_ids = [0u32; 256];
        let mut char_bytes = vec![None; 0x144];
        for (id, &(byte, c)) in alphabet.iter().enumerate() {
            byte_ids[byte as usize] = id as u32;
            char_bytes[c as usize] = Some(byte);
        }

        let pretokenize = Regex::new(PRETOKENIZE_PATTERN)
            .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;

        let entities = html5_entities().len();
        if entities != HTML5_ENTITY_COUNT {
            return Err(Error::Tokenizer(format!(
                "embedded HTML5 entity table has {entities} entries, expected {HTML5_ENTITY_COUNT}"
            )));
        }

        Ok(ClipTokenizer {
            encoder,
            decoder: vocab,
            merges,
            byte_ids,
            char_bytes,
            pretokenize,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Number of ids (49,408).
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// The raw BPE ids of `text` (no BOS/EOS, no truncation), as `SimpleTokenizer.encode`.
    ///
    /// Each pre-tokenized piece (a word, a digit, a punctuation run) is BPE-merged once and then
    /// served from a cache, so re-encoding prompts and their parts (A1111's chunking) is cheap.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let text = clean_text(text);
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        // One lock per call: uncontended it costs nanoseconds, and a miss only runs BPE on one
        // short piece.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for piece in self.pretokenize.find_iter(&text) {
            let piece = piece.as_str();
            if let Some(hit) = cache.get(piece) {
                ids.extend_from_slice(hit);
                continue;
            }
            // The reference seeds its cache with the two special tokens, so their literal text
            // in a prompt becomes BOS/EOS rather than being split.
            let tokens = match piece {
                START_OF_TEXT => vec![BOS],
                END_OF_TEXT => vec![EOS],
                _ => self.bpe(piece),
            };
            ids.extend_from_slice(&tokens);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(piece.to_owned(), tokens);
        }
        ids
    }

    /// The 77 ids a CLIP text encoder takes: BOS, the first 75 tokens of `text`, EOS, then `pad`
    /// (EOS for SD1.x and SDXL CLIP-L, 0 for SD2.x OpenCLIP-H and SDXL bigG; formats.md §7.4).
    pub fn encode_framed(&self, text: &str, pad: i64) -> Vec<i64> {
        Self::frame(&self.encode(text), pad)
    }

    /// Frames already-encoded tokens (e.g. one A1111 75-token chunk) like [`Self::encode_framed`]:
    /// tokens past the 75th are dropped.
    pub fn frame(tokens: &[i64], pad: i64) -> Vec<i64> {
        let body = &tokens[..tokens.len().min(MAX_TOKENS)];
        let mut ids = Vec::with_capacity(CONTEXT_LEN);
        ids.push(BOS);
        ids.extend_from_slice(body);
        ids.push(EOS);
        ids.resize(CONTEXT_LEN, pad);
        ids
    }

    /// Text of `ids` as the reference decodes it: word ends become spaces, invalid UTF-8 becomes
    /// U+FFFD. Ids outside the vocabulary are skipped (the reference raises).
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for token in ids.iter().filter_map(|&id| self.id_to_token(id)) {
            bytes.extend(token.chars().filter_map(|c| self.char_bytes.get(c as usize).copied().flatten()));
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    /// Id of a vocabulary entry, written in the byte alphabet (`"cat</w>"`, `"<|endoftext|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.encoder.get(token).map(|&id| i64::from(id))
    }

    /// Vocabulary entry of an id, in the byte alphabet.
    pub fn id_to_token(&self, id: i64) -> Option<&str> {
        usize::try_from(id).ok().and_then(|i| self.decoder.get(i)).map(String::as_str)
    }

    /// BPE of one pre-tokenized piece: the reference's `bpe`, on ids instead of strings.
    fn bpe(&self, piece: &str) -> Vec<i64> {
        let mut word: Vec<u32> = piece.bytes().map(|b| self.byte_ids[b as usize]).collect();
        let Some(last) = word.last_mut() else { return Vec::new() };
        *last += 256; // the same byte character with `</w>`
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|pair| {
                    self.merges.get(&(pair[0], pair[1])).map(|&(rank, merged)| (rank, pair, merged))
                })
                .min_by_key(|&(rank, _, _)| rank);
            let Some((_, &[first, second], merged)) = best else { break };
            // Merge every occurrence of the pair, left to right, without overlaps.
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        word.into_iter().map(i64::from).collect()
    }
}

/// GPT-2's reversible byte → printable character map, in vocabulary order: the printable Latin-1
/// bytes map to themselves, the other 68 bytes to U+0100.. in byte order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut map: Vec<(u8, char)> =
        (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).map(|b| (b, char::from(b))).collect();
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        if !map.iter().any(|&(x, _)| x == b) {
            // 0x100..0x143 are all valid scalar values.
            map.push((b, char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER)));
            next += 1;
        }
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Text cleaning: `whitespace_clean(basic_clean(text)).lower()`.

/// The text the reference pre-tokenizes: ftfy-style fixes, HTML-unescape twice, Python `strip`,
/// whitespace runs collapsed to one space, lowercase.
pub fn clean_text(text: &str) -> String {
    let text = ftfy_fix_text(text);
    let text = html_unescape(&html_unescape(&text));
    let text = collapse_whitespace(py_strip(&text));
    py_strip(&text).to_lowercase()
}

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(text: &str) -> &str {
    text.trim_matches(py_isspace)
}

/// `regex.sub(r'\s+', ' ', text)`; the `regex` module's `\s` is exactly Unicode White_Space.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// `ftfy.fix_text` with its default configuration, less `fix_encoding` (mojibake repair) and
/// `fix_surrogates` (a Rust `str` cannot hold surrogates).
fn ftfy_fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // ftfy fixes line by line; its HTML unescaping is "auto": off for a line containing `<`
    // (it looks like real HTML) and, because fix_text overwrites its config, for every later
    // line too.
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        unescape &= !segment.contains('<');
        out.push_str(&ftfy_fix_segment(segment, unescape));
    }
    out
}

/// ftfy's `fix_and_explain` loop: the fixers in ftfy's order, repeated until nothing changes.
fn ftfy_fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    for _ in 0..FTFY_MAX_ROUNDS {
        let mut next = if unescape { ftfy_unescape_html(&text) } else { text.clone() };
        if !next.is_ascii() {
            next = fix_c1_controls(&next);
            next = fix_latin_ligatures(&next);
            next = fix_character_width(&next);
            next = uncurl_quotes(&next);
        }
        next = fix_line_breaks(&next);
        next = remove_terminal_escapes(next);
        next = remove_control_chars(next);
        if !next.is_ascii() {
            next = next.nfc().collect();
        }
        if next == text {
            break;
        }
        text = next;
    }
    text
}

/// Windows-1252 for the bytes 0x80..=0x9F, the five undefined ones mapping to themselves: both
/// ftfy's `fix_c1_controls` ("sloppy-windows-1252") and `html.unescape`'s invalid numeric
/// references use exactly this table.
const CP1252_C1: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{2c6}',
    '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}', '\u{90}', '\u{2018}',
    '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}',
    '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

fn cp1252_c1(c: char) -> Option<char> {
    let i = (c as u32).checked_sub(0x80)?;
    CP1252_C1.get(i as usize).copied()
}

fn fix_c1_controls(text: &str) -> String {
    text.chars().map(|c| cp1252_c1(c).unwrap_or(c)).collect()
}

/// ftfy's `LIGATURES` table.
fn latin_ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "\u{2bc}n",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

fn fix_latin_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match latin_ligature(c) {
            Some(s) => out.push_str(s),
            None => out.push(c),
        }
    }
    out
}

/// ftfy's `WIDTH_MAP`: U+3000 → space, and every character of U+FF01..U+FFEF whose NFKC form
/// differs from itself → that form (fullwidth ASCII, halfwidth katakana and hangul, ...).
fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc()),
            _ => out.push(c),
        }
    }
    out
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            _ => c,
        })
        .collect()
}

/// CRLF, CR, U+2028, U+2029 and U+0085 → `\n`.
fn fix_line_breaks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            _ => out.push(c),
        }
    }
    out
}

/// ANSI terminal escapes (`ESC [ digits-and-semicolons letter`).
fn remove_terminal_escapes(text: String) -> String {
    static ANSI: OnceLock<Option<Regex>> = OnceLock::new();
    if !text.contains('\u{1b}') {
        return text;
    }
    match ANSI.get_or_init(|| Regex::new(r"\x1b\[(?:\d|;)*[a-zA-Z]").ok()) {
        Some(re) => re.replace_all(&text, "").into_owned(),
        None => text,
    }
}

/// ftfy's `CONTROL_CHARS`: C0 controls other than \t \n \f \r, DEL, the deprecated Arabic format
/// controls, the BOM and the interlinear annotation characters.
fn remove_control_chars(text: String) -> String {
    let is_control = |c: char| {
        matches!(c,
            '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}'
            | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
    };
    if text.contains(is_control) {
        text.chars().filter(|&c| !is_control(c)).collect()
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------
// HTML entities.

/// Python's `html.entities.html5`: entity name (with its `;` where the name has one) → text.
fn html5_entities() -> &'static HashMap<&'static str, String> {
    static TABLE: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        HTML5_ENTITIES_TSV
            .lines()
            .filter_map(|line| {
                let (name, code_points) = line.split_once('\t')?;
                let value = code_points
                    .split(' ')
                    .map(|hex| u32::from_str_radix(hex, 16).ok().and_then(char::from_u32))
                    .collect::<Option<String>>()?;
                Some((name, value))
            })
            .collect()
    })
}

/// ftfy's `HTML_ENTITIES`: the `;`-terminated html5 names, plus the upper-cased form of each
/// all-lowercase name (`&EACUTE;` → `É`) where that form is not itself an entity.
fn ftfy_entities() -> &'static HashMap<String, String> {
    static TABLE: OnceLock<HashMap<String, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for (&name, value) in html5_entities().iter().filter(|(name, _)| name.ends_with(';')) {
            table.insert(name.to_owned(), value.clone());
            if name == name.to_lowercase() {
                let upper = name.to_uppercase();
                let escaped = format!("&{upper}");
                if html_unescape(&escaped) == escaped {
                    table.insert(upper, value.to_uppercase());
                }
            }
        }
        table
    })
}

/// ftfy's `unescape_html`: only `;`-terminated references of at most 24 ASCII alphanumerics.
fn ftfy_unescape_html(text: &str) -> String {
    static ENTITY: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(re) = ENTITY.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").ok()) else {
        return text.to_owned();
    };
    if !text.contains('&') {
        return text.to_owned();
    }
    re.replace_all(text, |caps: &Captures<'_>| {
        let entity = &caps[0];
        if let Some(value) = ftfy_entities().get(&entity[1..]) {
            value.clone()
        } else if entity.starts_with("&#") {
            // A numeric reference html.unescape only partly decodes keeps its original text.
            let decoded = html_unescape(entity);
            if decoded.contains(';') {
                entity.to_owned()
            } else {
                decoded
            }
        } else {
            entity.to_owned()
        }
    })
    .into_owned()
}

/// Python's `html.unescape` (HTML5 rules: named references with or without `;`, longest legacy
/// prefix, numeric references with the Windows-1252 and invalid-code-point fix-ups).
fn html_unescape(text: &str) -> String {
    static CHARREF: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(re) =
        CHARREF.get_or_init(|| Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)").ok())
    else {
        return text.to_owned();
    };
    if !text.contains('&') {
        return text.to_owned();
    }
    re.replace_all(text, |caps: &Captures<'_>| replace_charref(&caps[1])).into_owned()
}

fn replace_charref(reference: &str) -> String {
    if let Some(number) = reference.strip_prefix('#') {
        let (digits, radix) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (number, 10),
        };
        // Saturate: anything above U+10FFFF decodes the same way.
        let code = digits
            .trim_end_matches(';')
            .chars()
            .filter_map(|d| d.to_digit(radix))
            .fold(0u32, |acc, d| acc.saturating_mul(radix).saturating_add(d));
        if let Some(c) = char::from_u32(code).and_then(cp1252_c1) {
            return c.to_string();
        }
        return match code {
            0x00 => "\u{fffd}".to_owned(),
            0x0d => "\r".to_owned(),
            0xd800..=0xdfff | 0x110000.. => "\u{fffd}".to_owned(),
            0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
            _ if code & 0xfffe == 0xfffe => String::new(),
            _ => char::from_u32(code).map(String::from).unwrap_or_else(|| "\u{fffd}".to_owned()),
        };
    }
    let entities = html5_entities();
    if let Some(value) = entities.get(reference) {
        return value.clone();
    }
    // The longest prefix of at least two characters that is an entity (only the legacy names
    // without `;` can match here), followed by the rest unchanged.
    let bounds: Vec<usize> = reference.char_indices().map(|(i, _)| i).collect();
    for &end in bounds.iter().skip(2).rev() {
        if let Some(value) = entities.get(&reference[..end]) {
            return format!("{value}{}", &reference[end..]);
        }
    }
    format!("&{reference}")
}
