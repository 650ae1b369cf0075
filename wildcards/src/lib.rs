//! Dynamic Prompts templates: `{a|b}` variants, `__name__` wildcards, `${var}` variables,
//! `%{…$$…}` wraps, expanded exactly as the `dynamicprompts` 0.31.0 Python library (used by
//! the A1111 `sd-dynamic-prompts` extension) expands them, random draws included.
//!
//! ```
//! use wildcards::{Generator, MemorySource, Mode, Template};
//!
//! let source = MemorySource::new().with("colors", ["red", "green"]);
//! let template = Template::parse("a {big|small} __colors__ ball").unwrap();
//! let all = Generator::new(source, Mode::Combinatorial).generate(&template, 0, 0).unwrap();
//! assert_eq!(all.prompts, ["a big green ball", "a big red ball", "a small green ball", "a small red ball"]);
//! ```
//!
//! # Layout
//!
//! * [`ast`]: the template tree ([`Node`]), shaped like the library's commands, with byte
//!   spans.
//! * [`parse`]: text → tree, the library's grammar (comments, whitespace, bounds, weights);
//!   lenient by default about stray `%`, `$` and `__` (kept as text), or strict.
//! * [`source`]: [`WildcardSource`] with [`DirSource`] (a folder of `.txt`, `.json`,
//!   `.yaml`/`.yml` files, re-read when it changes) and [`MemorySource`].
//! * [`sample`]: the random, combinatorial and cyclical generators.
//! * [`rng`]: CPython's `random.Random` (Mersenne Twister, seeding, `choice`, `choices`,
//!   `sample`, `shuffle`, `randint`), so a seed gives the prompt the A1111 extension gives.
//! * `glob`, `structured`, `pystr`: `fnmatch`, JSON/YAML loading with PyYAML's scalar
//!   rules, and the Python string/number details the rules above depend on.
//!
//! # Seeds
//!
//! In [`Mode::Random`] the generator is re-seeded before every prompt, as the extension does
//! by default ("seed linked to prompt"): prompt `i` of [`Generator::generate`] uses
//! `seed + i`, the image seed, so the same image seed always gives the same prompt and a
//! negative prompt generated with the same seeds picks the same option indices.
//! [`Generator::generate_with_seeds`] takes the seeds explicitly (e.g. one fixed seed for
//! all). The other modes seed the generator once; it only feeds `~` parts.

#![warn(missing_docs)]

pub mod ast;
mod glob;
pub mod parse;
mod pystr;
pub mod rng;
pub mod sample;
pub mod source;
mod structured;

use std::path::PathBuf;
use std::sync::Arc;

pub use ast::{Node, NodeKind, Sampler, Span};
pub use rng::PyRandom;
pub use source::{Collections, DirSource, Item, MemorySource, WildcardSource};

use sample::{Ctx, Env, Prompt};

/// Everything that can go wrong while parsing or generating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The template does not parse.
    #[error("template error at line {line}, column {column}: {message}")]
    Parse {
        /// Byte offset in the template.
        offset: usize,
        /// Character offset (what Python reports).
        char_offset: usize,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// `${name}` without a value or default.
    #[error("variable `{0}` is not defined in this context")]
    UndefinedVariable(String),
    /// A variable whose value refers to itself.
    #[error("variable `{0}` refers to itself")]
    RecursiveVariable(String),
    /// Wildcards (or variables) nested without end, e.g. a wildcard file naming itself.
    #[error("templates nested deeper than {limit} levels: a wildcard probably refers to itself")]
    Recursion {
        /// The nesting limit.
        limit: usize,
    },
    /// A construct the sampler cannot render (the library raises there too).
    #[error("{0}")]
    Unsupported(String),
    /// A part that must produce a value produced none (e.g. `{2$$__empty__}`).
    #[error("a part of the template produced no value")]
    Exhausted,
    /// Variant or wildcard weights that do not add up to a positive, finite total.
    #[error("the weights of a variant or wildcard must add up to a positive finite number")]
    InvalidWeights,
    /// A cyclical variant with no possible selection (e.g. `{@2$$a|a}`).
    #[error("a cyclical variant has no selection to cycle through")]
    NoSelection,
    /// Generation took more internal steps than allowed.
    #[error("the template is too complex to expand")]
    TooComplex,
    /// Reading the wildcard folder failed.
    #[error("reading wildcards at {path}: {source}")]
    Io {
        /// File or folder.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl Error {
    /// A parse error at byte `offset` of `text`.
    pub fn parse(text: &str, offset: usize, message: impl Into<String>) -> Self {
        let before = &text[..offset];
        let char_offset = before.chars().count();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Error::Parse { offset, char_offset, line, column, message: message.into() }
    }
}

/// Something worth telling the user that did not stop generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// No collection matched; the wildcard was kept as `__name__` text.
    UnknownWildcard(String),
    /// A wrap command's wrapper had no `...`/`…` marker; the inner text was appended.
    NoWrapMarker(String),
    /// A `!` part inside a random or cyclical part was sampled with the outer sampler.
    SamplerDowngraded {
        /// The prefix written.
        requested: Sampler,
        /// The sampler used.
        used: Sampler,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::UnknownWildcard(name) => write!(f, "No values found for wildcard '{name}'"),
            Warning::NoWrapMarker(text) => write!(f, "Found no wrap marker in string '{text}'"),
            Warning::SamplerDowngraded { requested, used } => write!(
                f,
                "a '{}' part cannot be nested in a '{}' part; sampled with '{}'",
                requested.symbol(),
                used.symbol(),
                used.symbol()
            ),
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    text: String,
    root: Arc<Node>,
    strict: bool,
}

impl Template {
    /// Parses `text`, keeping stray `%`, `$` and unclosed `__` as text (an unclosed `{` is
    /// still an error).
    pub fn parse(text: &str) -> Result<Template, Error> {
        Self::parse_with(text, false)
    }

    /// Parses `text` rejecting everything dynamicprompts rejects (`50%`, `$5`,
    /// `snake__case`). Wildcard values are then parsed strictly too.
    pub fn parse_strict(text: &str) -> Result<Template, Error> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, strict: bool) -> Result<Template, Error> {
        let root = Arc::new(parse::parse(text, strict)?);
        Ok(Template { text: text.to_string(), root, strict })
    }

    /// The source text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The tree.
    pub fn root(&self) -> &Node {
        &self.root
    }
}

/// Generation mode (the default sampler of parts without a prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every prompt drawn independently; re-seeded per prompt like the A1111 extension.
    Random,
    /// Random, seeded once for the whole batch (the extension's "unlink seed from prompt",
    /// made reproducible).
    RandomUnlinked,
    /// All combinations in order.
    Combinatorial,
    /// Every part walks its options in order, one step per prompt.
    Cyclical,
}

/// Prompts of one generation and the warnings raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The prompts.
    pub prompts: Vec<String>,
    /// Warnings (deduplicated, first occurrence order).
    pub warnings: Vec<Warning>,
}

/// Default number of prompts of a combinatorial run asked for "all" (`count` 0), as the
/// library's `MAX_IMAGES`.
pub const DEFAULT_MAX_PROMPTS: usize = 1000;

/// Expands templates against a wildcard source.
#[derive(Clone)]
pub struct Generator {
    source: Arc<dyn WildcardSource>,
    mode: Mode,
    ignore_whitespace: bool,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("mode", &self.mode)
            .field("ignore_whitespace", &self.ignore_whitespace)
            .finish()
    }
}

impl Generator {
    /// A generator over `source` in `mode`.
    pub fn new(source: impl WildcardSource + 'static, mode: Mode) -> Self {
        Self::with_shared_source(Arc::new(source), mode)
    }

    /// A generator over a shared source.
    pub fn with_shared_source(source: Arc<dyn WildcardSource>, mode: Mode) -> Self {
        Generator { source, mode, ignore_whitespace: false }
    }

    /// Collapse whitespace runs to one space and trim (the extension's "ignore whitespace";
    /// applied to wildcard values and wrap parts as they are rendered, as the library does).
    pub fn ignore_whitespace(mut self, on: bool) -> Self {
        self.ignore_whitespace = on;
        self
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Generates prompts. Random mode: `count` prompts, prompt `i` seeded with `seed + i`.
    /// Unlinked random and cyclical modes: `count` prompts from one generator seeded with
    /// `seed`. Combinatorial mode: at most `count` prompts (0: up to
    /// [`DEFAULT_MAX_PROMPTS`]); `seed` feeds `~` parts.
    pub fn generate(&self, template: &Template, count: usize, seed: i64) -> Result<Generated, Error> {
        match self.mode {
            Mode::Random => {
                let seeds: Vec<i128> = (0..count).map(|i| i128::from(seed) + i as i128).collect();
                self.run_seeded(template, &seeds)
            }
            _ => self.run_once(template, count, i128::from(seed)),
        }
    }

    /// Random mode with one seed per prompt (the extension's seed lists: image seeds, or one
    /// fixed seed repeated). Other modes: the first seed, `seeds.len()` prompts.
    pub fn generate_with_seeds(&self, template: &Template, seeds: &[i64]) -> Result<Generated, Error> {
        let seeds: Vec<i128> = seeds.iter().map(|&s| i128::from(s)).collect();
        match self.mode {
            Mode::Random => self.run_seeded(template, &seeds),
            _ => self.run_once(template, seeds.len(), seeds.first().copied().unwrap_or(0)),
        }
    }

    fn env(&self, template: &Template, seed: i128) -> Result<Env, Error> {
        let cols = self.source.collections()?;
        Ok(Env::new(cols, PyRandom::new(seed), self.ignore_whitespace, template.strict))
    }

    fn run_seeded(&self, template: &Template, seeds: &[i128]) -> Result<Generated, Error> {
        let mut env = self.env(template, seeds.first().copied().unwrap_or(0))?;
        if template.text.is_empty() {
            return Ok(Generated { prompts: vec![String::new(); seeds.len()], warnings: Vec::new() });
        }
        let ctx = Ctx::new(Sampler::Random);
        let mut gen = sample::sample_prompts(&mut env, &ctx, Prompt::Parsed(&template.root))?;
        let mut prompts = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            env.rng.seed(seed);
            prompts.push(gen.next(&mut env)?.ok_or(Error::Exhausted)?);
        }
        Ok(Generated { prompts, warnings: env.warnings })
    }

    fn run_once(&self, template: &Template, count: usize, seed: i128) -> Result<Generated, Error> {
        let mut env = self.env(template, seed)?;
        let (method, limit) = match self.mode {
            Mode::Combinatorial => {
                (Sampler::Combinatorial, if count == 0 { DEFAULT_MAX_PROMPTS } else { count })
            }
            Mode::Cyclical => (Sampler::Cyclical, count),
            _ => (Sampler::Random, count),
        };
        let mut prompts = Vec::new();
        if template.text.is_empty() {
            return Ok(Generated { prompts, warnings: Vec::new() });
        }
        let ctx = Ctx::new(method);
        let mut gen = sample::sample_prompts(&mut env, &ctx, Prompt::Parsed(&template.root))?;
        while prompts.len() < limit {
            match gen.next(&mut env)? {
                Some(p) => prompts.push(p),
                None => break,
            }
        }
        Ok(Generated { prompts, warnings: env.warnings })
    }
}

/// The per-image prompt seeds the A1111 extension uses for `count` images starting at
/// `seed`: `seed + i`, or `seed` for every image with "fixed seed" on.
pub fn extension_seeds(seed: i64, count: usize, fixed: bool) -> Vec<i64> {
    (0..count).map(|i| if fixed { seed } else { seed.wrapping_add(i as i64) }).collect()
}
