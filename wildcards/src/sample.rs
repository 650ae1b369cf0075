//! Prompt generation: random, combinatorial and cyclical sampling of a template.
//!
//! The library implements sampling with lazily started Python generators that keep state
//! between prompts (a random wildcard buffers ten weighted draws, a cyclical variant keeps
//! its position, a combinatorial sequence pre-draws one value of every non-finite part),
//! and the order in which they consume the random number generator decides every prompt.
//! Each generator below is a state machine with the same start-up point (its first
//! `next`), the same draws in the same order and the same end conditions:
//!
//! * `Ok(None)` is a generator that finished (Python's `StopIteration` from a generator
//!   that returned);
//! * [`Error::Exhausted`] is a part that had to produce a value and could not (Python turns
//!   that `StopIteration` into a `RuntimeError`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use crate::ast::{Access, Node, NodeKind, Sampler, Variant, VariantOption, WildcardPath};
use crate::glob::Glob;
use crate::rng::{accumulate, PyRandom};
use crate::source::{Collections, Item};
use crate::{parse, pystr, Error, Warning};

/// Generator nesting (templates inside wildcard values inside templates…) at which
/// generation stops with [`Error::Recursion`] instead of exhausting the stack.
pub const MAX_DEPTH: usize = 300;

/// Upper bound on internal steps of one generation, so that templates the library would
/// loop on forever (e.g. a combinatorial filter that never yields) fail instead.
pub const MAX_STEPS: u64 = 20_000_000;

/// How many wildcard values a random draw may skip (values rendering to nothing) before
/// giving up.
const MAX_EMPTY_DRAWS: usize = 10_000;

/// Shared state of one generation run.
pub(crate) struct Env {
    pub rng: PyRandom,
    cols: Arc<Collections>,
    values: HashMap<String, Rc<Values>>,
    parsed: HashMap<String, Arc<Node>>,
    pub warnings: Vec<Warning>,
    pub ignore_whitespace: bool,
    strict: bool,
    steps: u64,
}

impl Env {
    pub fn new(cols: Arc<Collections>, rng: PyRandom, ignore_whitespace: bool, strict: bool) -> Self {
        Env {
            rng,
            cols,
            values: HashMap::new(),
            parsed: HashMap::new(),
            warnings: Vec::new(),
            ignore_whitespace,
            strict,
            steps: 0,
        }
    }

    fn tick(&mut self) -> Result<(), Error> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(Error::TooComplex);
        }
        Ok(())
    }

    fn warn(&mut self, w: Warning) {
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    fn parse(&mut self, text: &str) -> Result<Arc<Node>, Error> {
        if let Some(n) = self.parsed.get(text) {
            return Ok(n.clone());
        }
        let node = Arc::new(parse::parse(text, self.strict)?);
        self.parsed.insert(text.to_string(), node.clone());
        Ok(node)
    }

    /// `WildcardManager.get_values`: glob match, `**/` fallback, dedupe, sort by text.
    fn get_values(&mut self, wildcard: &str) -> Rc<Values> {
        if let Some(v) = self.values.get(wildcard) {
            return v.clone();
        }
        let mut items = self.match_collections(wildcard);
        if items.is_empty() && !wildcard.starts_with("**") {
            items = self.match_collections(&format!("**/{wildcard}"));
        }
        let mut deduped: Vec<Item> = Vec::with_capacity(items.len());
        for item in items {
            if !deduped.contains(&item) {
                deduped.push(item);
            }
        }
        // Stable sort by code point, as Python's sorted(key=str).
        deduped.sort_by(|a, b| a.text().cmp(b.text()));
        let values = Rc::new(Values::new(deduped));
        self.values.insert(wildcard.to_string(), values.clone());
        values
    }

    fn match_collections(&self, wildcard: &str) -> Vec<Item> {
        let Some(pattern) = clean_wildcard(wildcard) else { return Vec::new() };
        let glob = Glob::new(&pattern);
        let mut out = Vec::new();
        for (name, items) in self.cols.iter() {
            if glob.matches(name) {
                out.extend(items.iter().cloned());
            }
        }
        out
    }
}

/// `clean_wildcard`: strip the `__` wrap, collapse `\` and `/` runs, trim `/`; `None` for a
/// name containing `..`.
fn clean_wildcard(w: &str) -> Option<String> {
    let w = w.strip_prefix("__").unwrap_or(w);
    let w = w.strip_suffix("__").unwrap_or(w);
    let mut out = String::with_capacity(w.len());
    let mut in_sep = false;
    for c in w.chars() {
        if c == '/' || c == '\\' {
            if !in_sep {
                out.push('/');
            }
            in_sep = true;
        } else {
            out.push(c);
            in_sep = false;
        }
    }
    let out = out.trim_matches('/').to_string();
    (!out.contains("..")).then_some(out)
}

/// `to_wildcard`: re-wrap a name in `__` for the not-found fallback text.
fn to_wildcard(name: &str) -> String {
    let mut s = name.to_string();
    if !s.starts_with("__") {
        s = format!("__{s}");
    }
    if !s.ends_with("__") {
        s.push_str("__");
    }
    s
}

/// Values of one wildcard lookup.
pub(crate) struct Values {
    items: Vec<Item>,
    strings: Vec<String>,
    varied: bool,
    cum: Vec<f64>,
}

impl Values {
    fn new(items: Vec<Item>) -> Self {
        let strings = items.iter().map(|i| i.text().to_string()).collect();
        let weights: Vec<f64> = items.iter().map(Item::weight).collect();
        let varied = weights.iter().any(|w| *w != weights[0]);
        let cum = accumulate(&weights);
        Values { items, strings, varied, cum }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// `iterate_string_values_weighted`: each value `int(weight)` times.
    fn weighted_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for item in &self.items {
            let n = item.weight().trunc();
            let n = if n.is_finite() && n > 0.0 { n as usize } else { 0 };
            out.extend(std::iter::repeat_n(item.text().to_string(), n));
        }
        out
    }
}

/// Sampling context: default sampler, variables in scope, variables being expanded.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub method: Sampler,
    vars: Rc<HashMap<String, Arc<Node>>>,
    sampling: Rc<Vec<String>>,
    depth: usize,
}

impl Ctx {
    pub fn new(method: Sampler) -> Self {
        Ctx { method, vars: Rc::new(HashMap::new()), sampling: Rc::new(Vec::new()), depth: 0 }
    }

    fn with_method(&self, method: Sampler) -> Ctx {
        Ctx { method, ..self.clone() }
    }

    fn with_variables(&self, vars: &[(String, Arc<Node>)]) -> Ctx {
        if vars.is_empty() {
            return self.clone();
        }
        let mut map = (*self.vars).clone();
        for (k, v) in vars {
            map.insert(k.clone(), v.clone());
        }
        Ctx { vars: Rc::new(map), ..self.clone() }
    }
}

/// A lazily started prompt generator.
pub(crate) trait Gen {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error>;
}

type G = Box<dyn Gen>;

fn must(v: Option<String>) -> Result<String, Error> {
    v.ok_or(Error::Exhausted)
}

struct Repeat(String);
impl Gen for Repeat {
    fn next(&mut self, _: &mut Env) -> Result<Option<String>, Error> {
        Ok(Some(self.0.clone()))
    }
}

struct Once(Option<String>);
impl Gen for Once {
    fn next(&mut self, _: &mut Env) -> Result<Option<String>, Error> {
        Ok(self.0.take())
    }
}

struct Empty;
impl Gen for Empty {
    fn next(&mut self, _: &mut Env) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

struct Squash(G);
impl Gen for Squash {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        Ok(self.0.next(env)?.map(|s| pystr::squash_whitespace(&s)))
    }
}

/// `SamplingResult.joined`: one result as is; otherwise joined, then one leading and one
/// trailing separator removed.
fn joined(parts: Vec<String>, sep: &str) -> String {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    let j = parts.join(sep);
    if sep.is_empty() {
        return j;
    }
    let j = j.strip_prefix(sep).unwrap_or(&j);
    j.strip_suffix(sep).unwrap_or(j).to_string()
}

/// A prompt given to `sample_prompts`: text to parse or a parsed command.
pub(crate) enum Prompt<'a> {
    Text(&'a str),
    Node(&'a Arc<Node>),
    /// Text the caller already parsed (an empty tree still renders, as "").
    Parsed(&'a Arc<Node>),
}

/// `SamplingContext.sample_prompts`: nothing for an empty prompt, whitespace squashed when
/// the generator ignores whitespace.
pub(crate) fn sample_prompts(env: &mut Env, ctx: &Ctx, prompt: Prompt) -> Result<G, Error> {
    let node = match prompt {
        Prompt::Text("") => return Ok(Box::new(Empty)),
        Prompt::Text(s) => env.parse(s)?,
        Prompt::Node(n) if n.is_empty_command() => return Ok(Box::new(Empty)),
        Prompt::Node(n) | Prompt::Parsed(n) => n.clone(),
    };
    let g = gen_from(env, ctx, &node)?;
    Ok(if env.ignore_whitespace { Box::new(Squash(g)) } else { g })
}

fn first(env: &mut Env, ctx: &Ctx, prompt: Prompt) -> Result<String, Error> {
    let mut g = sample_prompts(env, ctx, prompt)?;
    must(g.next(env)?)
}

fn path_text(env: &mut Env, ctx: &Ctx, path: &WildcardPath) -> Result<String, Error> {
    match path {
        WildcardPath::Text(t) => first(env, ctx, Prompt::Text(t)),
        WildcardPath::Template(n) => first(env, ctx, Prompt::Node(n)),
    }
}

/// `SamplingContext.get_sampler_and_context`: a prefix switches sampler, except that a
/// combinatorial prefix inside a random or cyclical context is downgraded.
fn sampler_and_context(env: &mut Env, ctx: &Ctx, node: &Node) -> Ctx {
    let requested = node.sampler().unwrap_or(ctx.method);
    if requested == ctx.method {
        return ctx.clone();
    }
    let mut method = requested;
    if ctx.method.is_nonfinite() && !requested.is_nonfinite() {
        env.warn(Warning::SamplerDowngraded { requested, used: ctx.method });
        method = ctx.method;
    }
    ctx.with_method(method)
}

fn effective(ctx: &Ctx, node: &Node) -> Sampler {
    node.sampler().unwrap_or(ctx.method)
}

/// `SamplingContext.generator_from_command`.
pub(crate) fn gen_from(env: &mut Env, ctx: &Ctx, node: &Arc<Node>) -> Result<G, Error> {
    env.tick()?;
    if ctx.depth >= MAX_DEPTH {
        return Err(Error::Recursion { limit: MAX_DEPTH });
    }
    let mut ctx = sampler_and_context(env, ctx, node);
    ctx.depth += 1;
    let node = node.clone();
    let method = ctx.method;
    Ok(match &node.kind {
        NodeKind::Literal(s) => match method {
            Sampler::Combinatorial => Box::new(Once(Some(s.clone()))),
            _ => Box::new(Repeat(s.clone())),
        },
        NodeKind::Sequence(_) => match method {
            Sampler::Combinatorial => Box::new(CombSequence { ctx, node, state: CombSeqState::Start }),
            _ => Box::new(Sequence { ctx, node, subs: None }),
        },
        NodeKind::Variant(_) => match method {
            Sampler::Random => Box::new(RandomVariant { ctx, node, state: RVState::Start }),
            Sampler::Combinatorial => Box::new(CombVariant { ctx, node, state: CVState::Start }),
            Sampler::Cyclical => Box::new(CycVariant { ctx, node, state: CyState::Start }),
        },
        NodeKind::Wildcard(_) => Box::new(WildcardGen { ctx, node, state: WState::Start }),
        NodeKind::Assign(_) => {
            return Err(Error::Unsupported("a variable assignment on its own produces no prompt".into()))
        }
        NodeKind::Access(a) => return access(env, &ctx, a),
        NodeKind::Wrap(_) => match method {
            Sampler::Random => Box::new(RandomWrap { ctx, node, gens: None }),
            Sampler::Combinatorial => Box::new(CombWrap { ctx, node, state: None }),
            Sampler::Cyclical => {
                return Err(Error::Unsupported(
                    "the cyclical sampler does not support the wrap command %{…}".into(),
                ))
            }
        },
    })
}

/// `Sampler._get_variable` (runs when the generator is created, not lazily).
fn access(env: &mut Env, ctx: &Ctx, a: &Access) -> Result<G, Error> {
    let cmd = ctx.vars.get(&a.name).cloned().or_else(|| a.default.clone());
    let cmd = match cmd {
        Some(c) if !c.is_empty_command() => c,
        _ => return Err(Error::UndefinedVariable(a.name.clone())),
    };
    if ctx.sampling.contains(&a.name) {
        return Err(Error::RecursiveVariable(a.name.clone()));
    }
    let mut sampling = (*ctx.sampling).clone();
    sampling.push(a.name.clone());
    let inner = Ctx { sampling: Rc::new(sampling), ..ctx.clone() };
    gen_from(env, &inner, &cmd)
}

/// `process_variable_assignments`: assignments of a sequence, evaluated in the context
/// the sequence started with.
fn process_assignments(
    env: &mut Env,
    ctx: &Ctx,
    tokens: &[Arc<Node>],
) -> Result<(Vec<Arc<Node>>, Ctx), Error> {
    let mut new_vars: Vec<(String, Arc<Node>)> = Vec::new();
    let mut rest = Vec::with_capacity(tokens.len());
    for t in tokens {
        let NodeKind::Assign(a) = &t.kind else {
            rest.push(t.clone());
            continue;
        };
        let value = if !a.overwrite && ctx.vars.contains_key(&a.name) {
            ctx.vars[&a.name].clone()
        } else if a.immediate {
            if matches!(a.value.kind, NodeKind::Literal(_)) {
                a.value.clone()
            } else {
                let mut g = gen_from(env, ctx, &a.value)?;
                let text = must(g.next(env)?)?;
                Arc::new(Node::literal(text, a.value.span.clone()))
            }
        } else {
            a.value.clone()
        };
        match new_vars.iter_mut().find(|(k, _)| *k == a.name) {
            Some(slot) => slot.1 = value,
            None => new_vars.push((a.name.clone(), value)),
        }
    }
    Ok((rest, ctx.with_variables(&new_vars)))
}

fn tokens(node: &Node) -> &[Arc<Node>] {
    match &node.kind {
        NodeKind::Sequence(t) => t,
        _ => unreachable!("sequence generator on a non-sequence"),
    }
}

fn variant(node: &Node) -> &Variant {
    match &node.kind {
        NodeKind::Variant(v) => v,
        _ => unreachable!("variant generator on a non-variant"),
    }
}

// ------------------------------------------------------------------------ sequences

/// Random/cyclical `_get_sequence`: every part advances once per prompt.
struct Sequence {
    ctx: Ctx,
    node: Arc<Node>,
    subs: Option<Vec<G>>,
}

impl Gen for Sequence {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        if self.subs.is_none() {
            let (toks, ctx) = process_assignments(env, &self.ctx, tokens(&self.node))?;
            let mut subs = Vec::with_capacity(toks.len());
            for t in &toks {
                subs.push(gen_from(env, &ctx, t)?);
            }
            self.subs = Some(subs);
        }
        let subs = self.subs.as_mut().expect("started");
        let mut parts = Vec::with_capacity(subs.len());
        for g in subs.iter_mut() {
            parts.push(must(g.next(env)?)?);
        }
        Ok(Some(parts.concat()))
    }
}

/// `CommandCollection`: one running generator per non-`!` part of a combinatorial
/// sequence, with its next value drawn ahead.
struct Collection {
    cmds: Vec<Arc<Node>>,
    gens: Vec<G>,
    values: Vec<Option<String>>,
}

impl Collection {
    fn new(env: &mut Env, ctx: &Ctx, cmds: Vec<Arc<Node>>) -> Result<Self, Error> {
        let mut gens = Vec::with_capacity(cmds.len());
        for c in &cmds {
            gens.push(gen_from(env, ctx, c)?);
        }
        let mut values = Vec::with_capacity(gens.len());
        for g in gens.iter_mut() {
            values.push(Some(must(g.next(env)?)?));
        }
        Ok(Collection { cmds, gens, values })
    }

    /// The current value of the first part equal to `cmd`; draws that part's next one.
    fn get_value(&mut self, env: &mut Env, cmd: &Node) -> Result<Option<String>, Error> {
        let i = self.cmds.iter().position(|c| **c == *cmd).expect("part of the collection");
        let value = self.values[i].take();
        self.values[i] = self.gens[i].next(env)?;
        Ok(value)
    }
}

#[derive(Clone)]
enum SeqItem {
    /// The library's empty combinatorial literal around the parts.
    Sentinel,
    Part(Arc<Node>),
}

enum CombSeqState {
    Start,
    Run(Box<GetSeq>),
}

/// Combinatorial `_get_sequence`: odometer over the finite parts (rightmost fastest);
/// non-finite parts take the next value of their collection generator per prompt.
struct CombSequence {
    ctx: Ctx,
    node: Arc<Node>,
    state: CombSeqState,
}

impl Gen for CombSequence {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        if let CombSeqState::Start = self.state {
            let (toks, ctx) = process_assignments(env, &self.ctx, tokens(&self.node))?;
            let non_combo: Vec<Arc<Node>> =
                toks.iter().filter(|t| t.sampler() != Some(Sampler::Combinatorial)).cloned().collect();
            let coll = Rc::new(RefCell::new(Collection::new(env, &ctx, non_combo)?));
            let mut items = vec![SeqItem::Sentinel];
            items.extend(toks.into_iter().map(SeqItem::Part));
            items.push(SeqItem::Sentinel);
            self.state = CombSeqState::Run(Box::new(GetSeq::new(ctx, Rc::new(items), 0, coll)));
        }
        let CombSeqState::Run(root) = &mut self.state else { unreachable!() };
        Ok(root.next(env)?.map(|parts| parts.concat()))
    }
}

enum GetSeqState {
    Start,
    Leaf(bool),
    Nonfinite(Box<GetSeq>),
    Finite { gen: G, cur: Option<String>, rest: Option<Box<GetSeq>> },
}

/// The recursive `get_sequence` generator of the combinatorial sequence.
struct GetSeq {
    ctx: Ctx,
    items: Rc<Vec<SeqItem>>,
    idx: usize,
    coll: Rc<RefCell<Collection>>,
    state: GetSeqState,
}

impl GetSeq {
    fn new(ctx: Ctx, items: Rc<Vec<SeqItem>>, idx: usize, coll: Rc<RefCell<Collection>>) -> Self {
        GetSeq { ctx, items, idx, coll, state: GetSeqState::Start }
    }

    fn next(&mut self, env: &mut Env) -> Result<Option<Vec<String>>, Error> {
        env.tick()?;
        if let GetSeqState::Start = self.state {
            self.state = if self.idx == self.items.len() {
                GetSeqState::Leaf(false)
            } else {
                match &self.items[self.idx] {
                    SeqItem::Sentinel => GetSeqState::Finite {
                        gen: Box::new(Once(Some(String::new()))),
                        cur: None,
                        rest: None,
                    },
                    SeqItem::Part(p) if effective(&self.ctx, p).is_nonfinite() => {
                        GetSeqState::Nonfinite(Box::new(GetSeq::new(
                            self.ctx.clone(),
                            self.items.clone(),
                            self.idx + 1,
                            self.coll.clone(),
                        )))
                    }
                    SeqItem::Part(p) => {
                        GetSeqState::Finite { gen: gen_from(env, &self.ctx, p)?, cur: None, rest: None }
                    }
                }
            };
        }
        match &mut self.state {
            GetSeqState::Start => unreachable!(),
            GetSeqState::Leaf(done) => {
                if *done {
                    return Ok(None);
                }
                *done = true;
                Ok(Some(Vec::new()))
            }
            GetSeqState::Nonfinite(rest) => {
                let Some(rest_vals) = rest.next(env)? else { return Ok(None) };
                let SeqItem::Part(part) = &self.items[self.idx] else { unreachable!() };
                let value = self.coll.borrow_mut().get_value(env, part)?;
                Ok(Some(match value {
                    Some(v) => prepend(v, rest_vals),
                    None => rest_vals,
                }))
            }
            GetSeqState::Finite { gen, cur, rest } => loop {
                if cur.is_none() {
                    match gen.next(env)? {
                        None => return Ok(None),
                        Some(v) => {
                            *cur = Some(v);
                            *rest = Some(Box::new(GetSeq::new(
                                self.ctx.clone(),
                                self.items.clone(),
                                self.idx + 1,
                                self.coll.clone(),
                            )));
                        }
                    }
                }
                match rest.as_mut().expect("rest started").next(env)? {
                    Some(r) => return Ok(Some(prepend(cur.clone().expect("current value"), r))),
                    None => *cur = None,
                }
            },
        }
    }
}

fn prepend(v: String, mut rest: Vec<String>) -> Vec<String> {
    rest.insert(0, v);
    rest
}

// ------------------------------------------------------------------------ variants

/// `wildcard_to_variant`: `{N$$__name__}` becomes a variant over the wildcard's values
/// (parsed, weight 1 each, weighted repeats), bounds clamped to the number of values.
fn wildcard_to_variant(env: &mut Env, ctx: &Ctx, wc_node: &Node, v: &Variant) -> Result<Arc<Node>, Error> {
    let NodeKind::Wildcard(w) = &wc_node.kind else { unreachable!("wildcard variant") };
    let path = path_text(env, ctx, &w.path)?;
    let values = env.get_values(&path);
    let min = v.min.min(values.len());
    let max = v.max.min(values.len());
    let mut options = Vec::new();
    for s in values.weighted_strings() {
        options.push(VariantOption { weight: 1.0, value: env.parse(&s)? });
    }
    let (min, max) = if min <= max { (min, max) } else { (max, min) };
    let variant = Variant { options, min, max, separator: v.separator.clone(), sampler: w.sampler };
    Ok(Arc::new(Node::new(NodeKind::Variant(variant), wc_node.span.clone())))
}

fn single_wildcard(v: &Variant) -> Option<&Arc<Node>> {
    match v.options.as_slice() {
        [only] if matches!(only.value.kind, NodeKind::Wildcard(_)) => Some(&only.value),
        _ => None,
    }
}

/// `adjust_range`: bounds clamped to the number of options.
fn adjusted(v: &Variant) -> (usize, usize) {
    (v.min.min(v.options.len()), v.max.min(v.options.len()))
}

enum RVState {
    Start,
    Delegate(G),
    Loop,
}

/// `RandomSampler._get_variant`.
struct RandomVariant {
    ctx: Ctx,
    node: Arc<Node>,
    state: RVState,
}

impl Gen for RandomVariant {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        if let RVState::Start = self.state {
            let v = variant(&self.node);
            self.state = match v.options.len() {
                0 => return Ok(None),
                1 => match single_wildcard(v) {
                    Some(wc) => {
                        let node = wildcard_to_variant(env, &self.ctx, wc, v)?;
                        RVState::Delegate(Box::new(RandomVariant {
                            ctx: self.ctx.clone(),
                            node,
                            state: RVState::Start,
                        }))
                    }
                    None => RVState::Delegate(gen_from(env, &self.ctx, &v.options[0].value)?),
                },
                _ => RVState::Loop,
            };
        }
        match &mut self.state {
            RVState::Start => unreachable!(),
            RVState::Delegate(g) => g.next(env),
            RVState::Loop => {
                let v = variant(&self.node);
                let (min, max) = adjusted(v);
                let drawn = env.rng.randint(min as i64, max as i64) as usize;
                let selected = choose_without_replacement(env, &v.options, max.min(drawn))?;
                if selected.is_empty() {
                    return Ok(Some(String::new()));
                }
                let mut gens = Vec::with_capacity(selected.len());
                for s in &selected {
                    gens.push(gen_from(env, &self.ctx, s)?);
                }
                let mut parts = Vec::with_capacity(gens.len());
                for g in gens.iter_mut() {
                    parts.push(must(g.next(env)?)?);
                }
                Ok(Some(joined(parts, &v.separator)))
            }
        }
    }
}

/// `choose_without_replacement`: one weighted draw at a time; the chosen option's first
/// equal option and the first weight equal to that option's weight are removed (the
/// library removes by value, which this keeps).
fn choose_without_replacement(
    env: &mut Env,
    options: &[VariantOption],
    num: usize,
) -> Result<Vec<Arc<Node>>, Error> {
    let mut values: Vec<Arc<Node>> = options.iter().map(|o| o.value.clone()).collect();
    let mut weights: Vec<f64> = options.iter().map(|o| o.weight).collect();
    if values.len() <= 1 {
        return Ok(values);
    }
    let mut chosen = Vec::with_capacity(num);
    for _ in 0..num {
        let idx = env.rng.choices_weighted(&weights, 1).ok_or(Error::InvalidWeights)?[0];
        let pick = values[idx].clone();
        let vi = values.iter().position(|v| *v == pick).expect("chosen value present");
        let w = weights[vi];
        let wi = weights.iter().position(|x| *x == w || (x.is_nan() && w.is_nan())).expect("weight present");
        weights.remove(wi);
        values.remove(vi);
        chosen.push(pick);
    }
    Ok(chosen)
}

/// `get_value_combinations(k)`: ordered selections of `k` options in option order, each
/// step removing every option equal to the one taken.
struct Selections {
    values: Vec<Arc<Node>>,
    k: usize,
    stack: Vec<(Vec<Arc<Node>>, usize)>,
    prefix: Vec<Arc<Node>>,
    started: bool,
}

impl Selections {
    fn new(values: Vec<Arc<Node>>, k: usize) -> Self {
        Selections { values, k, stack: Vec::new(), prefix: Vec::new(), started: false }
    }

    fn next(&mut self, env: &mut Env) -> Result<Option<Vec<Arc<Node>>>, Error> {
        if self.k == 0 {
            if self.started {
                return Ok(None);
            }
            self.started = true;
            return Ok(Some(Vec::new()));
        }
        if !self.started {
            self.started = true;
            self.stack.push((self.values.clone(), 0));
        }
        loop {
            env.tick()?;
            let depth = self.stack.len();
            let Some((cands, pos)) = self.stack.last_mut() else { return Ok(None) };
            if *pos >= cands.len() {
                self.stack.pop();
                self.prefix.pop();
                continue;
            }
            let value = cands[*pos].clone();
            *pos += 1;
            if depth == self.k {
                let mut out = self.prefix.clone();
                out.push(value);
                return Ok(Some(out));
            }
            let others: Vec<Arc<Node>> = cands.iter().filter(|v| ***v != *value).cloned().collect();
            self.prefix.push(value);
            self.stack.push((others, 0));
        }
    }
}

enum ComboState {
    Start,
    Leaf(bool),
    Nonfinite { gen: G, rest: Box<ComboPrompts> },
    Finite { gen: G, cur: Option<String>, rest: Option<Box<ComboPrompts>> },
}

/// `_combo_to_prompt`: the cross product of the finite options of one selection.
struct ComboPrompts {
    ctx: Ctx,
    combo: Rc<Vec<Arc<Node>>>,
    idx: usize,
    state: ComboState,
}

impl ComboPrompts {
    fn new(ctx: Ctx, combo: Rc<Vec<Arc<Node>>>, idx: usize) -> Self {
        ComboPrompts { ctx, combo, idx, state: ComboState::Start }
    }

    fn next(&mut self, env: &mut Env) -> Result<Option<Vec<String>>, Error> {
        env.tick()?;
        if let ComboState::Start = self.state {
            self.state = if self.idx == self.combo.len() {
                ComboState::Leaf(false)
            } else {
                let c = &self.combo[self.idx];
                let gen = gen_from(env, &self.ctx, c)?;
                if effective(&self.ctx, c).is_nonfinite() {
                    let rest =
                        Box::new(ComboPrompts::new(self.ctx.clone(), self.combo.clone(), self.idx + 1));
                    ComboState::Nonfinite { gen, rest }
                } else {
                    ComboState::Finite { gen, cur: None, rest: None }
                }
            };
        }
        match &mut self.state {
            ComboState::Start => unreachable!(),
            ComboState::Leaf(done) => {
                if *done {
                    return Ok(None);
                }
                *done = true;
                Ok(Some(Vec::new()))
            }
            ComboState::Nonfinite { gen, rest } => {
                let Some(r) = rest.next(env)? else { return Ok(None) };
                let v = must(gen.next(env)?)?;
                Ok(Some(prepend(v, r)))
            }
            ComboState::Finite { gen, cur, rest } => loop {
                if cur.is_none() {
                    match gen.next(env)? {
                        None => return Ok(None),
                        Some(v) => {
                            *cur = Some(v);
                            *rest = Some(Box::new(ComboPrompts::new(
                                self.ctx.clone(),
                                self.combo.clone(),
                                self.idx + 1,
                            )));
                        }
                    }
                }
                match rest.as_mut().expect("rest started").next(env)? {
                    Some(r) => return Ok(Some(prepend(cur.clone().expect("current"), r))),
                    None => *cur = None,
                }
            },
        }
    }
}

enum CVState {
    Start,
    Delegate(G),
    Run {
        bound: usize,
        max: usize,
        selections: Box<Selections>,
        prompts: Option<Box<ComboPrompts>>,
        seen: HashSet<Vec<String>>,
    },
}

/// `CombinatorialSampler._get_variant`: counts from the lower bound up, ordered selections,
/// the product of their parts; a text set seen before, or with a repeated part, is skipped.
struct CombVariant {
    ctx: Ctx,
    node: Arc<Node>,
    state: CVState,
}

impl Gen for CombVariant {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        if let CVState::Start = self.state {
            let v = variant(&self.node);
            if v.options.is_empty() {
                return Ok(None);
            }
            self.state = match single_wildcard(v) {
                Some(wc) => {
                    let node = wildcard_to_variant(env, &self.ctx, wc, v)?;
                    CVState::Delegate(Box::new(CombVariant {
                        ctx: self.ctx.clone(),
                        node,
                        state: CVState::Start,
                    }))
                }
                None => {
                    let (min, max) = adjusted(v);
                    let values = v.options.iter().map(|o| o.value.clone()).collect();
                    CVState::Run {
                        bound: min,
                        max,
                        selections: Box::new(Selections::new(values, min)),
                        prompts: None,
                        seen: HashSet::new(),
                    }
                }
            };
        }
        let sep = variant(&self.node).separator.clone();
        match &mut self.state {
            CVState::Start => unreachable!(),
            CVState::Delegate(g) => g.next(env),
            CVState::Run { bound, max, selections, prompts, seen } => loop {
                if let Some(p) = prompts {
                    match p.next(env)? {
                        Some(arr) => {
                            let mut deduped: Vec<String> = Vec::with_capacity(arr.len());
                            for s in arr {
                                if !deduped.contains(&s) {
                                    deduped.push(s);
                                }
                            }
                            if deduped.len() == *bound && !seen.contains(&deduped) {
                                seen.insert(deduped.clone());
                                return Ok(Some(joined(deduped, &sep)));
                            }
                            continue;
                        }
                        None => *prompts = None,
                    }
                }
                match selections.next(env)? {
                    Some(combo) => {
                        *prompts = Some(Box::new(ComboPrompts::new(self.ctx.clone(), Rc::new(combo), 0)))
                    }
                    None => {
                        *bound += 1;
                        if *bound > *max {
                            return Ok(None);
                        }
                        let values = variant(&self.node).options.iter().map(|o| o.value.clone()).collect();
                        **selections = Selections::new(values, *bound);
                    }
                }
            },
        }
    }
}

enum CSState {
    Start,
    Leaf,
    Arrs { gen: G, rest: Box<CombSamples>, finished: bool },
}

/// The cyclical sampler's `_get_combination_samples` + `get_arrs`: one value of every part
/// of a selection per step, the rightmost part drawn first.
struct CombSamples {
    ctx: Ctx,
    combo: Rc<Vec<Arc<Node>>>,
    idx: usize,
    state: CSState,
}

impl CombSamples {
    fn new(ctx: Ctx, combo: Rc<Vec<Arc<Node>>>, idx: usize) -> Self {
        CombSamples { ctx, combo, idx, state: CSState::Start }
    }

    fn next(&mut self, env: &mut Env) -> Result<Option<Vec<String>>, Error> {
        env.tick()?;
        if let CSState::Start = self.state {
            self.state = if self.idx == self.combo.len() {
                CSState::Leaf
            } else {
                let gen = gen_from(env, &self.ctx, &self.combo[self.idx])?;
                let rest = Box::new(CombSamples::new(self.ctx.clone(), self.combo.clone(), self.idx + 1));
                CSState::Arrs { gen, rest, finished: false }
            };
        }
        match &mut self.state {
            CSState::Start => unreachable!(),
            CSState::Leaf => Ok(Some(Vec::new())),
            CSState::Arrs { gen, rest, finished } => {
                if *finished {
                    return Ok(None);
                }
                let Some(r) = rest.next(env)? else {
                    *finished = true;
                    return Ok(None);
                };
                match gen.next(env)? {
                    Some(v) => Ok(Some(prepend(v, r))),
                    None => {
                        // A part ran out: one empty selection, then the end.
                        *finished = true;
                        Ok(Some(Vec::new()))
                    }
                }
            }
        }
    }
}

enum CyState {
    Start,
    Delegate(G),
    Run { bound: usize, max: usize, selections: Option<Selections>, samplers: Vec<CombSamples>, pos: usize },
}

/// `CyclicalSampler._get_variant`: every selection (counts from the lower bound up) in
/// turn, each keeping its own running parts.
struct CycVariant {
    ctx: Ctx,
    node: Arc<Node>,
    state: CyState,
}

impl Gen for CycVariant {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        if let CyState::Start = self.state {
            let v = variant(&self.node);
            if v.options.is_empty() {
                return Ok(None);
            }
            self.state = match single_wildcard(v) {
                Some(wc) => {
                    let node = wildcard_to_variant(env, &self.ctx, wc, v)?;
                    CyState::Delegate(Box::new(CycVariant {
                        ctx: self.ctx.clone(),
                        node,
                        state: CyState::Start,
                    }))
                }
                None => {
                    let (min, max) = adjusted(v);
                    let values = v.options.iter().map(|o| o.value.clone()).collect();
                    CyState::Run {
                        bound: min,
                        max,
                        selections: Some(Selections::new(values, min)),
                        samplers: Vec::new(),
                        pos: 0,
                    }
                }
            };
        }
        let sep = variant(&self.node).separator.clone();
        match &mut self.state {
            CyState::Start => unreachable!(),
            CyState::Delegate(g) => g.next(env),
            CyState::Run { bound, max, selections, samplers, pos } => {
                // First pass: selections are created as the cycle reaches them.
                while let Some(sel) = selections {
                    match sel.next(env)? {
                        Some(combo) => {
                            samplers.push(CombSamples::new(self.ctx.clone(), Rc::new(combo), 0));
                            let last = samplers.last_mut().expect("just pushed");
                            let parts = last.next(env)?.ok_or(Error::Exhausted)?;
                            return Ok(Some(joined(parts, &sep)));
                        }
                        None => {
                            *bound += 1;
                            if *bound > *max {
                                *selections = None;
                            } else {
                                let values =
                                    variant(&self.node).options.iter().map(|o| o.value.clone()).collect();
                                *selections = Some(Selections::new(values, *bound));
                            }
                        }
                    }
                }
                if samplers.is_empty() {
                    // The library spins forever here.
                    return Err(Error::NoSelection);
                }
                let i = *pos % samplers.len();
                *pos = i + 1;
                let parts = samplers[i].next(env)?.ok_or(Error::Exhausted)?;
                Ok(Some(joined(parts, &sep)))
            }
        }
    }
}

// ------------------------------------------------------------------------ wildcards

enum WState {
    Start,
    Fallback(String),
    Random { ctx: Ctx, values: Rc<Values>, buffer: VecDeque<usize> },
    Comb { ctx: Ctx, list: Vec<String>, i: usize, cur: Option<G> },
    Cyc { gens: Vec<G>, pos: usize },
}

/// `_get_wildcard` of the three samplers: the name is rendered once, when the generator
/// starts; unknown names render as `__name__` forever, with a warning.
struct WildcardGen {
    ctx: Ctx,
    node: Arc<Node>,
    state: WState,
}

impl WildcardGen {
    fn start(&mut self, env: &mut Env) -> Result<(), Error> {
        let NodeKind::Wildcard(w) = &self.node.kind else { unreachable!() };
        let path = path_text(env, &self.ctx, &w.path)?;
        let mut ctx = self.ctx.with_variables(&w.params);
        if self.ctx.method == Sampler::Cyclical {
            ctx = ctx.with_method(Sampler::Cyclical);
        }
        let values = env.get_values(&path);
        if values.len() == 0 {
            // The fallback re-renders a templated name for its message and text.
            let name = match &w.path {
                WildcardPath::Text(t) => t.clone(),
                WildcardPath::Template(n) => first(env, &ctx, Prompt::Node(n))?,
            };
            env.warn(Warning::UnknownWildcard(name.clone()));
            self.state = WState::Fallback(to_wildcard(&name));
            return Ok(());
        }
        self.state = match self.ctx.method {
            Sampler::Random => WState::Random { ctx, values, buffer: VecDeque::new() },
            Sampler::Combinatorial => WState::Comb { ctx, list: values.weighted_strings(), i: 0, cur: None },
            Sampler::Cyclical => {
                let mut gens = Vec::new();
                for s in values.weighted_strings() {
                    gens.push(sample_prompts(env, &ctx, Prompt::Text(&s))?);
                }
                WState::Cyc { gens, pos: 0 }
            }
        };
        Ok(())
    }
}

impl Gen for WildcardGen {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        if let WState::Start = self.state {
            self.start(env)?;
        }
        match &mut self.state {
            WState::Start => unreachable!(),
            WState::Fallback(text) => Ok(Some(text.clone())),
            WState::Random { ctx, values, buffer } => {
                for _ in 0..MAX_EMPTY_DRAWS {
                    // `get_weighted_random_generator`: `choice` per value, or weighted
                    // `choices` ten at a time when the weights differ.
                    let i = if values.varied {
                        if buffer.is_empty() {
                            let drawn = env.rng.choices_cum(&values.cum, 10).ok_or(Error::InvalidWeights)?;
                            buffer.extend(drawn);
                        }
                        buffer.pop_front().expect("refilled")
                    } else {
                        env.rng.choice(values.len())
                    };
                    let text = values.strings[i].clone();
                    let mut g = sample_prompts(env, ctx, Prompt::Text(&text))?;
                    if let Some(s) = g.next(env)? {
                        return Ok(Some(s));
                    }
                }
                Err(Error::Exhausted)
            }
            WState::Comb { ctx, list, i, cur } => loop {
                env.tick()?;
                if let Some(g) = cur {
                    match g.next(env)? {
                        Some(s) => return Ok(Some(s)),
                        None => *cur = None,
                    }
                }
                if *i >= list.len() {
                    return Ok(None);
                }
                let text = list[*i].clone();
                *i += 1;
                *cur = Some(sample_prompts(env, ctx, Prompt::Text(&text))?);
            },
            WState::Cyc { gens, pos } => {
                if gens.is_empty() {
                    return Ok(None);
                }
                let i = *pos % gens.len();
                *pos = i + 1;
                Ok(Some(must(gens[i].next(env)?)?))
            }
        }
    }
}

// ------------------------------------------------------------------------ wrap

/// Splits a wrapper at its first ellipsis marker (`...` or longer, or a run of the
/// Unicode ellipsis characters); without one the inner text is appended, with a warning.
fn split_wrapper(env: &mut Env, text: &str) -> (String, String) {
    const MARKERS: [char; 7] =
        ['\u{1801}', '\u{2026}', '\u{22ee}', '\u{22ef}', '\u{22f0}', '\u{22f1}', '\u{fe19}'];
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(start, c)) in chars.iter().enumerate() {
        let run_end = |pred: &dyn Fn(char) -> bool| {
            let mut j = k;
            while j < chars.len() && pred(chars[j].1) {
                j += 1;
            }
            j
        };
        if MARKERS.contains(&c) {
            let j = run_end(&|x| MARKERS.contains(&x));
            let end = chars.get(j).map_or(text.len(), |p| p.0);
            return (text[..start].to_string(), text[end..].to_string());
        }
        if c == '.' {
            let j = run_end(&|x| x == '.');
            if j - k >= 3 {
                let end = chars.get(j).map_or(text.len(), |p| p.0);
                return (text[..start].to_string(), text[end..].to_string());
            }
        }
    }
    env.warn(Warning::NoWrapMarker(text.to_string()));
    (text.to_string(), String::new())
}

/// `RandomSampler._get_wrap`: wrapper and inner advance together.
struct RandomWrap {
    ctx: Ctx,
    node: Arc<Node>,
    gens: Option<(G, G)>,
}

impl Gen for RandomWrap {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        let NodeKind::Wrap(w) = &self.node.kind else { unreachable!() };
        if self.gens.is_none() {
            let wg = gen_from(env, &self.ctx, &w.wrapper)?;
            let ig = gen_from(env, &self.ctx, &w.inner)?;
            self.gens = Some((wg, ig));
        }
        let (wg, ig) = self.gens.as_mut().expect("started");
        let Some(wrapper) = wg.next(env)? else { return Ok(None) };
        let Some(inner) = ig.next(env)? else { return Ok(None) };
        let (prefix, suffix) = split_wrapper(env, &wrapper);
        Ok(Some(format!("{prefix}{inner}{suffix}")))
    }
}

/// `CombinatorialSampler._get_wrap`: every wrapper with every inner text.
struct CombWrap {
    ctx: Ctx,
    node: Arc<Node>,
    state: Option<(G, Option<WrapRun>)>,
}

/// One wrapper's prefix and suffix, and the inner texts still to wrap.
struct WrapRun {
    prefix: String,
    suffix: String,
    inners: G,
}

impl Gen for CombWrap {
    fn next(&mut self, env: &mut Env) -> Result<Option<String>, Error> {
        let NodeKind::Wrap(w) = &self.node.kind else { unreachable!() };
        if self.state.is_none() {
            self.state = Some((sample_prompts(env, &self.ctx, Prompt::Node(&w.wrapper))?, None));
        }
        let (wrappers, cur) = self.state.as_mut().expect("started");
        loop {
            env.tick()?;
            if let Some(run) = cur {
                match run.inners.next(env)? {
                    Some(i) => return Ok(Some(format!("{}{i}{}", run.prefix, run.suffix))),
                    None => *cur = None,
                }
            }
            let Some(wrapper) = wrappers.next(env)? else { return Ok(None) };
            let (prefix, suffix) = split_wrapper(env, &wrapper);
            let inners = sample_prompts(env, &self.ctx, Prompt::Node(&w.inner))?;
            *cur = Some(WrapRun { prefix, suffix, inners });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_strips_one_separator_each_side() {
        assert_eq!(joined(vec!["a".into(), String::new()], ","), "a");
        assert_eq!(joined(vec![",a".into(), "b,".into()], ","), "a,b");
        assert_eq!(joined(vec![",".into()], ","), ",");
    }

    #[test]
    fn clean_wildcard_normalises_separators_rejects_parent() {
        assert_eq!(clean_wildcard("__/a\\\\b//c/__").as_deref(), Some("a/b/c"));
        assert_eq!(clean_wildcard("../x"), None);
    }
}
