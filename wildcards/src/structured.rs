//! JSON and YAML wildcard files as the library sees them after `json.loads` /
//! `yaml.safe_load`.
//!
//! Only the Python *types* of the loaded values matter to the wildcard rules (strings are
//! values, numbers and booleans are skipped, falsy entries ignored), so YAML plain scalars
//! are resolved with PyYAML's YAML 1.1 rules: `yes`/`no`/`on`/`off` are booleans, `1_000`
//! and `0x1f` integers, `1.5` (with a dot) a float, `2024-01-02` a date, `~`/`null`/empty
//! null. Merge keys (`<<`) and anchors work as in PyYAML's safe loader.

use std::sync::OnceLock;

use regex::Regex;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::pystr;

/// A loaded document value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int` (saturated to i128).
    Int(i128),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `list`.
    List(Vec<Value>),
    /// `dict` entries in order (duplicates not yet merged).
    Map(Vec<(Value, Value)>),
    /// Anything else (dates, bytes, sets); only its truthiness matters.
    Other(bool),
    /// The YAML merge key `<<` (never escapes a finished mapping).
    MergeKey,
}

impl Value {
    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::Other(t) => *t,
            Value::MergeKey => true,
        }
    }

    /// `float(value)`; `None` where Python raises.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => pystr::parse_float(s),
            _ => None,
        }
    }

    /// `str(value)` for scalars; `None` for the container types (not supported as text).
    pub fn display(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(pystr::float_repr(*f)),
            Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
            _ => None,
        }
    }
}

/// `json.loads` (object keys in document order, as a Python dict keeps them).
pub fn parse_json(text: &str) -> Result<Value, String> {
    let v: JsonValue = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(v.0)
}

/// Deserialises straight into [`Value`] so that object key order survives.
struct JsonValue(Value);

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor).map(JsonValue)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, JsonValue(v))) = map.next_entry::<String, JsonValue>()? {
            entries.push((Value::Str(k), v));
        }
        Ok(Value::Map(entries))
    }
}

/// `yaml.safe_load` of a single document.
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| e.to_string())?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    match builder.documents.len() {
        0 => Ok(Value::Null),
        1 => Ok(builder.documents.pop().expect("one document")),
        _ => Err("expected a single document in the stream".into()),
    }
}

enum Frame {
    Seq(Vec<Value>, usize),
    Map(Vec<(Value, Value)>, Option<Value>, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Value>,
    documents: Vec<Value>,
    error: Option<String>,
}

impl Builder {
    fn push(&mut self, value: Value, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(value),
            Some(Frame::Seq(items, _)) => items.push(value),
            Some(Frame::Map(entries, key, _)) => match key.take() {
                None => *key = Some(value),
                Some(k) => entries.push((k, value)),
            },
        }
    }

    fn fail(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => match scalar(&text, style, tag.as_ref()) {
                Ok(v) => self.push(v, anchor),
                Err(e) => self.fail(e),
            },
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(v) => self.push(v, 0),
                None => self.fail(format!("unknown alias {id}")),
            },
            Event::SequenceStart(anchor, tag) => {
                if let Err(e) = collection_tag(tag.as_ref(), "seq") {
                    self.fail(e);
                }
                self.stack.push(Frame::Seq(Vec::new(), anchor));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, anchor)) = self.stack.pop() {
                    self.push(Value::List(items), anchor);
                }
            }
            Event::MappingStart(anchor, tag) => {
                if let Err(e) = collection_tag(tag.as_ref(), "map") {
                    self.fail(e);
                }
                self.stack.push(Frame::Map(Vec::new(), None, anchor));
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, anchor)) = self.stack.pop() {
                    match flatten_merges(entries) {
                        Ok(entries) => self.push(Value::Map(entries), anchor),
                        Err(e) => self.fail(e),
                    }
                }
            }
            _ => {}
        }
    }
}

/// PyYAML's `flatten_mapping`: merged entries go first, so the mapping's own keys win.
fn flatten_merges(entries: Vec<(Value, Value)>) -> Result<Vec<(Value, Value)>, String> {
    if !entries.iter().any(|(k, _)| *k == Value::MergeKey) {
        return Ok(entries);
    }
    let mut merged = Vec::new();
    let mut own = Vec::new();
    for (k, v) in entries {
        if k != Value::MergeKey {
            own.push((k, v));
            continue;
        }
        match v {
            Value::Map(m) => merged.extend(m),
            Value::List(maps) => {
                let mut parts = Vec::new();
                for m in maps {
                    match m {
                        Value::Map(m) => parts.push(m),
                        _ => return Err("merge list items must be mappings".into()),
                    }
                }
                for m in parts.into_iter().rev() {
                    merged.extend(m);
                }
            }
            _ => return Err("merge value must be a mapping or a list of mappings".into()),
        }
    }
    merged.extend(own);
    Ok(merged)
}

fn tag_name(tag: &Tag) -> String {
    let full = format!("{}{}", tag.handle, tag.suffix);
    match full.strip_prefix("tag:yaml.org,2002:") {
        Some(s) => format!("!!{s}"),
        None => full,
    }
}

fn collection_tag(tag: Option<&Tag>, kind: &str) -> Result<(), String> {
    match tag.map(tag_name) {
        None => Ok(()),
        Some(t) if t == format!("!!{kind}") || t == "!" => Ok(()),
        Some(t) => Err(format!("could not determine a constructor for the tag {t}")),
    }
}

fn scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        let name = tag_name(tag);
        return match name.as_str() {
            "!!str" | "!" => Ok(Value::Str(text.to_string())),
            "!!int" => int_value(text).ok_or_else(|| format!("invalid int {text:?}")),
            "!!float" => float_value(text).ok_or_else(|| format!("invalid float {text:?}")),
            "!!bool" => bool_value(text).ok_or_else(|| format!("invalid bool {text:?}")),
            "!!null" => Ok(Value::Null),
            "!!binary" | "!!timestamp" => Ok(Value::Other(!text.trim().is_empty())),
            other => Err(format!("could not determine a constructor for the tag {other}")),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::Str(text.to_string()));
    }
    resolve_plain(text)
}

struct Resolvers {
    float: Regex,
    int: Regex,
    timestamp: Regex,
}

fn resolvers() -> &'static Resolvers {
    static R: OnceLock<Resolvers> = OnceLock::new();
    R.get_or_init(|| Resolvers {
        float: Regex::new(
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        )
        .expect("float resolver"),
        int: Regex::new(
            r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
        )
        .expect("int resolver"),
        timestamp: Regex::new(
            r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
        )
        .expect("timestamp resolver"),
    })
}

/// PyYAML's implicit resolvers, in their order (bool, float, int, merge, null, timestamp,
/// value).
fn resolve_plain(text: &str) -> Result<Value, String> {
    if let Some(b) = bool_value(text) {
        return Ok(b);
    }
    let r = resolvers();
    if r.float.is_match(text) {
        return float_value(text).ok_or_else(|| format!("invalid float {text:?}"));
    }
    if r.int.is_match(text) {
        return int_value(text).ok_or_else(|| format!("invalid int {text:?}"));
    }
    if text == "<<" {
        return Ok(Value::MergeKey);
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if r.timestamp.is_match(text) {
        return Ok(Value::Other(true));
    }
    if text == "=" {
        return Err("could not determine a constructor for the tag tag:yaml.org,2002:value".into());
    }
    Ok(Value::Str(text.to_string()))
}

fn bool_value(text: &str) -> Option<Value> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(Value::Bool(true)),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// `construct_yaml_int`.
fn int_value(text: &str) -> Option<Value> {
    let cleaned = text.replace('_', "");
    let (neg, body) = match cleaned.strip_prefix('-') {
        Some(b) => (true, b.to_string()),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned).to_string()),
    };
    let value: i128 = if body == "0" {
        0
    } else if let Some(b) = body.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = body.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if body.starts_with('0') {
        i128::from_str_radix(&body, 8).ok()?
    } else if body.contains(':') {
        body.split(':')
            .try_fold(0i128, |acc, d| Some(acc.saturating_mul(60).saturating_add(d.parse().ok()?)))?
    } else {
        body.parse().unwrap_or(i128::MAX)
    };
    Some(Value::Int(if neg { -value } else { value }))
}

/// `construct_yaml_float`.
fn float_value(text: &str) -> Option<Value> {
    let cleaned = text.replace('_', "").to_lowercase();
    let (neg, body) = match cleaned.strip_prefix('-') {
        Some(b) => (true, b.to_string()),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned).to_string()),
    };
    let value = if body == ".inf" {
        f64::INFINITY
    } else if body == ".nan" {
        f64::NAN
    } else if body.contains(':') {
        body.split(':').try_fold(0.0f64, |acc, d| Some(acc * 60.0 + d.parse::<f64>().ok()?))?
    } else {
        body.parse::<f64>().ok()?
    };
    Some(Value::Float(if neg { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_yaml_yaml11_scalars_resolved_like_pyyaml() {
        let v = parse_yaml("k: [yes, 'no', on, 0, 1.5, 1e3, ~, 0x10, 2024-01-02, text]").unwrap();
        let Value::Map(m) = v else { panic!() };
        let Value::List(items) = &m[0].1 else { panic!() };
        assert_eq!(
            items,
            &vec![
                Value::Bool(true),
                Value::Str("no".into()),
                Value::Bool(true),
                Value::Int(0),
                Value::Float(1.5),
                Value::Str("1e3".into()),
                Value::Null,
                Value::Int(16),
                Value::Other(true),
                Value::Str("text".into()),
            ]
        );
    }

    #[test]
    fn parse_yaml_merge_keys_own_keys_win() {
        let v = parse_yaml("base: &b {a: [1], b: [2]}\nx:\n  <<: *b\n  b: [3]\n").unwrap();
        let Value::Map(m) = v else { panic!() };
        let Value::Map(x) = &m[1].1 else { panic!() };
        assert_eq!(x.len(), 3);
        assert_eq!(x[2], (Value::Str("b".into()), Value::List(vec![Value::Int(3)])));
    }

    #[test]
    fn parse_yaml_two_documents_rejected() {
        assert!(parse_yaml("a: [b]\n---\nc: [d]\n").is_err());
    }
}
