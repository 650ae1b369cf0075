//! Syntax tree of a template, shaped like the command tree dynamicprompts builds.
//!
//! The shape matters beyond printing: the library compares commands for equality when it
//! draws without replacement and when it enumerates selections (`{2$$a|a|b}` treats the two
//! `a` options as one), so a node with a single child is that child, adjacent text is one
//! literal, and equality ignores source positions.

use std::ops::Range;
use std::sync::Arc;

/// Byte range of a node in the text it was parsed from.
pub type Span = Range<usize>;

/// Sampler prefix of a variant or wildcard: `~` random, `!` combinatorial, `@` cyclical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampler {
    /// `~`: every prompt draws independently.
    Random,
    /// `!`: every combination in order.
    Combinatorial,
    /// `@`: options in order, one step per prompt.
    Cyclical,
}

impl Sampler {
    /// Random and cyclical samplers never run out of values.
    pub fn is_nonfinite(self) -> bool {
        !matches!(self, Sampler::Combinatorial)
    }

    /// The prefix character.
    pub fn symbol(self) -> char {
        match self {
            Sampler::Random => '~',
            Sampler::Combinatorial => '!',
            Sampler::Cyclical => '@',
        }
    }
}

/// A template node with its source range.
#[derive(Debug, Clone)]
pub struct Node {
    /// What the node is.
    pub kind: NodeKind,
    /// Where it came from (bytes of the parsed text).
    pub span: Span,
}

/// The node kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// Plain text.
    Literal(String),
    /// Parts rendered one after another.
    Sequence(Vec<Arc<Node>>),
    /// `{…|…}`.
    Variant(Variant),
    /// `__name__`.
    Wildcard(Wildcard),
    /// `${name=value}` (only at the top level of a template or wildcard value).
    Assign(Assign),
    /// `${name}` or `${name:default}`.
    Access(Access),
    /// `%{wrapper$$inner}`.
    Wrap(Wrap),
}

/// `{N-M$$separator$$a|b|…}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Options in written order.
    pub options: Vec<VariantOption>,
    /// Lower bound on the number of options picked (already ordered and raised to 0).
    pub min: usize,
    /// Upper bound (may exceed the option count; it is clamped when sampling).
    pub max: usize,
    /// Joins several picked options.
    pub separator: String,
    /// Explicit sampler prefix.
    pub sampler: Option<Sampler>,
}

/// One option of a variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantOption {
    /// Relative weight (random mode only); 1 unless written `w::`.
    pub weight: f64,
    /// The option's template.
    pub value: Arc<Node>,
}

/// What names a wildcard: plain text, or a template rendered to a name first.
#[derive(Debug, Clone, PartialEq)]
pub enum WildcardPath {
    /// `__colors__`.
    Text(String),
    /// `__{colors|animals}__`, `__${kind}__`.
    Template(Arc<Node>),
}

/// `__~name(var=value)__`.
#[derive(Debug, Clone)]
pub struct Wildcard {
    /// The name or name template.
    pub path: WildcardPath,
    /// Explicit sampler prefix.
    pub sampler: Option<Sampler>,
    /// Parameters, in order, a later duplicate replacing the earlier value in place.
    pub params: Vec<(String, Arc<Node>)>,
}

impl PartialEq for Wildcard {
    fn eq(&self, other: &Self) -> bool {
        // Parameters are a dict in the library: equal regardless of order.
        self.path == other.path
            && self.sampler == other.sampler
            && self.params.len() == other.params.len()
            && self.params.iter().all(|(k, v)| other.params.iter().any(|(k2, v2)| k == k2 && v == v2))
    }
}

/// `${name=value}`, `${name=!value}`, `${name?=value}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    /// Variable name.
    pub name: String,
    /// Value template.
    pub value: Arc<Node>,
    /// `=!`: sample once when the assignment is processed.
    pub immediate: bool,
    /// `false` for `?=`: keep a value set by an outer scope.
    pub overwrite: bool,
}

/// `${name}` / `${name:default}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    /// Variable name.
    pub name: String,
    /// Used when the variable is not set.
    pub default: Option<Arc<Node>>,
}

/// `%{wrapper$$inner}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Wrap {
    /// Text split at its first ellipsis marker around the inner text.
    pub wrapper: Arc<Node>,
    /// Wrapped template.
    pub inner: Arc<Node>,
}

impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Node {
    /// A node covering `span`.
    pub fn new(kind: NodeKind, span: Span) -> Self {
        Node { kind, span }
    }

    /// A literal covering `span`.
    pub fn literal(text: impl Into<String>, span: Span) -> Self {
        Node::new(NodeKind::Literal(text.into()), span)
    }

    /// The explicit sampler prefix, for the node kinds that can have one.
    pub fn sampler(&self) -> Option<Sampler> {
        match &self.kind {
            NodeKind::Variant(v) => v.sampler,
            NodeKind::Wildcard(w) => w.sampler,
            _ => None,
        }
    }

    /// Python truthiness of the command: an empty sequence or a variant without options is
    /// "false", which the library treats as "no template" (no prompts, undefined variable).
    pub fn is_empty_command(&self) -> bool {
        match &self.kind {
            NodeKind::Sequence(items) => items.is_empty(),
            NodeKind::Variant(v) => v.options.is_empty(),
            _ => false,
        }
    }

    /// Calls `f` on this node and every node below it (parameters and defaults included).
    pub fn walk(&self, f: &mut dyn FnMut(&Node)) {
        f(self);
        match &self.kind {
            NodeKind::Literal(_) => {}
            NodeKind::Sequence(items) => items.iter().for_each(|n| n.walk(f)),
            NodeKind::Variant(v) => v.options.iter().for_each(|o| o.value.walk(f)),
            NodeKind::Wildcard(w) => {
                if let WildcardPath::Template(n) = &w.path {
                    n.walk(f);
                }
                w.params.iter().for_each(|(_, n)| n.walk(f));
            }
            NodeKind::Assign(a) => a.value.walk(f),
            NodeKind::Access(a) => {
                if let Some(d) = &a.default {
                    d.walk(f);
                }
            }
            NodeKind::Wrap(w) => {
                w.wrapper.walk(f);
                w.inner.walk(f);
            }
        }
    }
}
