//! A1111's error bodies (a1111-api.md §1.5) and request-body parsing that produces them.
//!
//! Two shapes exist: FastAPI's validation body `{"detail": [{"loc", "msg", "type"}]}` (422), and
//! the catch-all `{"error", "detail", "body", "errors"}` A1111's exception handler writes for
//! everything else. [`parse_body`] turns raw request bytes into a request type, reporting failures
//! as FastAPI would: invalid JSON at its character offset, a non-object body, or the first field
//! that cannot be coerced, named by its path.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::coerce;

/// The body A1111 returns for every error except request validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The Python exception class name (`HTTPException`, `RuntimeError`, `KeyError`, …).
    pub error: String,
    /// The `HTTPException` detail, or `""` for other exceptions.
    pub detail: String,
    /// Always `""` upstream.
    pub body: String,
    /// `str(exception)` for non-HTTP exceptions, `""` for `HTTPException`s.
    pub errors: String,
}

impl ErrorBody {
    /// An `HTTPException` body: the message goes in `detail`.
    pub fn http(detail: impl Into<String>) -> Self {
        ErrorBody {
            error: "HTTPException".into(),
            detail: detail.into(),
            body: String::new(),
            errors: String::new(),
        }
    }

    /// Any other exception: the class name in `error`, the message in `errors`.
    pub fn exception(class: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody { error: class.into(), detail: String::new(), body: String::new(), errors: message.into() }
    }
}

/// One entry of FastAPI's 422 `detail` list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationItem {
    /// Where the problem is: `["body", "steps"]`, `["body", 12]` for a JSON syntax error at
    /// character 12, `["body"]` for the body as a whole.
    pub loc: Vec<Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Extra context (FastAPI adds it for JSON syntax errors).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ctx: Option<Value>,
}

/// FastAPI's 422 body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationBody {
    pub detail: Vec<ValidationItem>,
}

impl ValidationBody {
    /// A field value that parses but is out of range: `loc: ["body", field]`, `value_error`.
    pub fn field(field: &str, msg: impl Into<String>) -> Self {
        Self::new(vec![json!("body"), json!(field)], msg, "value_error")
    }

    /// One problem at `loc` (e.g. `["query", "skip_current_image"]`).
    pub fn new(loc: Vec<Value>, msg: impl Into<String>, kind: impl Into<String>) -> Self {
        ValidationBody { detail: vec![ValidationItem { loc, msg: msg.into(), kind: kind.into(), ctx: None }] }
    }
}

/// Parses a JSON request body into `T` with FastAPI's error reporting. The content type is not
/// checked: curl users often send JSON as form data, and A1111 clients never send anything else.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationBody> {
    let value = parse_json(bytes)?;
    if !value.is_object() {
        return Err(ValidationBody::new(vec![json!("body")], coerce::NOT_DICT, "type_error.dict"));
    }
    from_value(value)
}

/// Parses raw bytes as JSON; an empty body is FastAPI's "field required".
pub fn parse_json(bytes: &[u8]) -> Result<Value, ValidationBody> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ValidationBody::new(vec![json!("body")], "field required", "value_error.missing"));
    }
    serde_json::from_slice(bytes).map_err(|e| json_syntax_error(bytes, &e))
}

/// Converts an already parsed object into `T`, naming the first field that does not fit.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValidationBody> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut loc = vec![json!("body")];
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key } => loc.push(json!(key)),
                serde_path_to_error::Segment::Seq { index } => loc.push(json!(index)),
                serde_path_to_error::Segment::Enum { variant } => loc.push(json!(variant)),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let msg = e.into_inner().to_string();
        let kind = coerce::error_type(&msg);
        ValidationBody::new(loc, msg, kind)
    })
}

/// FastAPI reports a syntax error at its character offset, with Python's `line L column C
/// (char P)` suffix.
fn json_syntax_error(bytes: &[u8], e: &serde_json::Error) -> ValidationBody {
    let text = String::from_utf8_lossy(bytes);
    // serde_json places an end-of-input error on the last character; Python one past it.
    let (line, column) = if e.is_eof() {
        let last = text.rsplit('\n').next().unwrap_or("");
        (text.matches('\n').count() + 1, last.len() + 1)
    } else {
        (e.line(), e.column())
    };
    // serde_json counts columns in bytes; Python counts characters. Walk the text to get both
    // the character column and the absolute character offset.
    let mut pos = 0usize;
    let mut col_chars = column.max(1);
    for (i, l) in text.split('\n').enumerate() {
        if i + 1 == line {
            let prefix = l.get(..column.saturating_sub(1).min(l.len())).unwrap_or(l);
            col_chars = prefix.chars().count() + 1;
            pos += col_chars - 1;
            break;
        }
        pos += l.chars().count() + 1;
    }
    let what = e.to_string();
    let what = what.split(" at line ").next().unwrap_or(&what).to_string();
    let msg = format!("{what}: line {line} column {col_chars} (char {pos})");
    ValidationBody {
        detail: vec![ValidationItem {
            loc: vec![json!("body"), json!(pos)],
            msg: msg.clone(),
            kind: "value_error.jsondecode".into(),
            ctx: Some(json!({"msg": what, "pos": pos, "lineno": line, "colno": col_chars})),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::generation::Txt2ImgRequest;

    #[test]
    fn parse_body_invalid_json_reports_jsondecode_at_offset() {
        let err = parse_body::<Txt2ImgRequest>(b"{\"prompt\": ").unwrap_err();
        let item = &err.detail[0];
        assert_eq!(item.kind, "value_error.jsondecode");
        assert_eq!(item.loc, vec![json!("body"), json!(11)]);
        assert!(item.msg.ends_with("line 1 column 12 (char 11)"), "{}", item.msg);
        let err = parse_body::<Txt2ImgRequest>(b"{\"a\": x}").unwrap_err();
        assert_eq!(err.detail[0].loc, vec![json!("body"), json!(6)]);
        assert!(err.detail[0].msg.ends_with("line 1 column 7 (char 6)"), "{}", err.detail[0].msg);
    }

    #[test]
    fn parse_body_bad_field_type_names_the_field() {
        let err = parse_body::<Txt2ImgRequest>(br#"{"prompt": "a", "steps": "many"}"#).unwrap_err();
        assert_eq!(
            err.detail,
            vec![ValidationItem {
                loc: vec![json!("body"), json!("steps")],
                msg: "value is not a valid integer".into(),
                kind: "type_error.integer".into(),
                ctx: None,
            }]
        );
    }

    #[test]
    fn parse_body_non_object_and_empty_bodies_are_rejected() {
        let err = parse_body::<Txt2ImgRequest>(b"[1, 2]").unwrap_err();
        assert_eq!(err.detail[0].kind, "type_error.dict");
        let err = parse_body::<Txt2ImgRequest>(b"  ").unwrap_err();
        assert_eq!(err.detail[0].kind, "value_error.missing");
    }

    #[test]
    fn error_body_constructors_fill_a1111_fields() {
        let body = serde_json::to_value(ErrorBody::http("Init image not found")).unwrap();
        assert_eq!(
            body,
            json!({"error": "HTTPException", "detail": "Init image not found", "body": "", "errors": ""})
        );
        let body = serde_json::to_value(ErrorBody::exception("KeyError", "'foo'")).unwrap();
        assert_eq!(body, json!({"error": "KeyError", "detail": "", "body": "", "errors": "'foo'"}));
    }
}
