//! Lenient field parsing with pydantic v1 semantics (a1111-api.md §1.3).
//!
//! A1111's request models are pydantic v1 models whose every field is `Optional`, so clients rely
//! on coercions a strict serde derive would refuse: `"20"` for an int, `15.7` for an int
//! (truncated), `7` for a float, `"yes"` for a bool, a number for a string. [`lax`] is the single
//! `deserialize_with` used by every request field: it reads any JSON value, maps `null` to `None`
//! and coerces the rest through [`Lax`]. Error messages are pydantic's, so the 422 body built in
//! [`super::error`] carries the same `msg` and `type` A1111 sends.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::infotext::py_float_repr;
use crate::prompt::text::{py_float, py_int};

/// pydantic's message for a value that is not an int.
pub const NOT_INT: &str = "value is not a valid integer";
/// pydantic's message for a value that is not a float.
pub const NOT_FLOAT: &str = "value is not a valid float";
/// pydantic's message for a value that is not a bool.
pub const NOT_BOOL: &str = "value could not be parsed to a boolean";
/// pydantic's message for a value that is not a string.
pub const NOT_STR: &str = "str type expected";
/// pydantic's message for a value that is not a list.
pub const NOT_LIST: &str = "value is not a valid list";
/// pydantic's message for a value that is not an object.
pub const NOT_DICT: &str = "value is not a valid dict";

/// The pydantic error `type` for one of the messages above (`value_error` otherwise).
pub fn error_type(msg: &str) -> &'static str {
    match msg {
        NOT_INT => "type_error.integer",
        NOT_FLOAT => "type_error.float",
        NOT_BOOL => "type_error.bool",
        NOT_STR => "type_error.str",
        NOT_LIST => "type_error.list",
        NOT_DICT => "type_error.dict",
        _ => "value_error",
    }
}

/// A type a JSON value can be coerced into the way pydantic v1 coerces it.
pub trait Lax: Sized {
    /// Converts a non-null value, or returns one of the pydantic messages above.
    fn from_value(value: Value) -> Result<Self, &'static str>;
}

/// `deserialize_with` for every optional request field: `null` → `None`, otherwise [`Lax`].
pub fn lax<'de, D: Deserializer<'de>, T: Lax>(d: D) -> Result<Option<T>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => T::from_value(v).map(Some).map_err(D::Error::custom),
    }
}

impl Lax for i64 {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        match value {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(i)
                } else {
                    // Python's int(float) truncates toward zero; nan, inf and values beyond i64
                    // are errors there or here.
                    let f = n.as_f64().ok_or(NOT_INT)?;
                    if f.is_finite() && f.abs() < 9.2e18 {
                        Ok(f.trunc() as i64)
                    } else {
                        Err(NOT_INT)
                    }
                }
            }
            // bool is a subclass of int in Python.
            Value::Bool(b) => Ok(b as i64),
            Value::String(s) => py_int(&s).ok_or(NOT_INT),
            _ => Err(NOT_INT),
        }
    }
}

impl Lax for f64 {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        match value {
            Value::Number(n) => n.as_f64().ok_or(NOT_FLOAT),
            Value::Bool(b) => Ok(if b { 1.0 } else { 0.0 }),
            Value::String(s) => py_float(&s).ok_or(NOT_FLOAT),
            _ => Err(NOT_FLOAT),
        }
    }
}

impl Lax for bool {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        match value {
            Value::Bool(b) => Ok(b),
            // Python compares 1.0 == 1, so floats equal to 0 or 1 pass too.
            Value::Number(n) => match n.as_f64() {
                Some(1.0) => Ok(true),
                Some(0.0) => Ok(false),
                _ => Err(NOT_BOOL),
            },
            // Lower-cased but not stripped, as pydantic does.
            Value::String(s) => match s.to_lowercase().as_str() {
                "1" | "on" | "t" | "true" | "y" | "yes" => Ok(true),
                "0" | "off" | "f" | "false" | "n" | "no" => Ok(false),
                _ => Err(NOT_BOOL),
            },
            _ => Err(NOT_BOOL),
        }
    }
}

impl Lax for String {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        match value {
            Value::String(s) => Ok(s),
            // A number sent to a str field becomes its Python str(); bools are ints there.
            Value::Number(n) => Ok(match n.as_f64() {
                Some(f) if n.is_f64() => py_float_repr(f),
                _ => n.to_string(),
            }),
            Value::Bool(b) => Ok(if b { "True" } else { "False" }.to_string()),
            _ => Err(NOT_STR),
        }
    }
}

impl Lax for Vec<String> {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        match value {
            Value::Array(items) => items.into_iter().map(String::from_value).collect(),
            _ => Err(NOT_LIST),
        }
    }
}

impl Lax for Vec<Value> {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        match value {
            Value::Array(items) => Ok(items),
            _ => Err(NOT_LIST),
        }
    }
}

impl Lax for Map<String, Value> {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        match value {
            Value::Object(map) => Ok(map),
            _ => Err(NOT_DICT),
        }
    }
}

/// Fields typed `Any` upstream take every value as is.
impl Lax for Value {
    fn from_value(value: Value) -> Result<Self, &'static str> {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn int_from_string_float_and_bool_coerces_like_pydantic() {
        assert_eq!(i64::from_value(json!("20")), Ok(20));
        assert_eq!(i64::from_value(json!(" -3 ")), Ok(-3));
        assert_eq!(i64::from_value(json!("1_000")), Ok(1000));
        assert_eq!(i64::from_value(json!(15.7)), Ok(15));
        assert_eq!(i64::from_value(json!(-15.7)), Ok(-15));
        assert_eq!(i64::from_value(json!(true)), Ok(1));
        assert_eq!(i64::from_value(json!("15.7")), Err(NOT_INT));
        assert_eq!(i64::from_value(json!("abc")), Err(NOT_INT));
        assert_eq!(i64::from_value(json!([1])), Err(NOT_INT));
        assert_eq!(i64::from_value(json!("1__0")), Err(NOT_INT));
    }

    #[test]
    fn float_from_int_and_string_coerces() {
        assert_eq!(f64::from_value(json!(7)), Ok(7.0));
        assert_eq!(f64::from_value(json!("7.5")), Ok(7.5));
        assert_eq!(f64::from_value(json!("1e3")), Ok(1000.0));
        assert!(f64::from_value(json!("nan")).unwrap().is_nan());
        assert_eq!(f64::from_value(json!("-inf")), Ok(f64::NEG_INFINITY));
        assert_eq!(f64::from_value(json!("seven")), Err(NOT_FLOAT));
        assert_eq!(f64::from_value(json!("--1")), Err(NOT_FLOAT));
        assert_eq!(f64::from_value(json!({})), Err(NOT_FLOAT));
    }

    #[test]
    fn bool_from_strings_and_numbers_coerces() {
        for v in [json!("yes"), json!("ON"), json!("t"), json!(1), json!(1.0), json!("1")] {
            assert_eq!(bool::from_value(v.clone()), Ok(true), "{v}");
        }
        for v in [json!("no"), json!("False"), json!(0), json!("off"), json!("0")] {
            assert_eq!(bool::from_value(v.clone()), Ok(false), "{v}");
        }
        for v in [json!(2), json!(" true"), json!("maybe"), json!([])] {
            assert_eq!(bool::from_value(v.clone()), Err(NOT_BOOL), "{v}");
        }
    }

    #[test]
    fn string_from_numbers_uses_python_str() {
        assert_eq!(String::from_value(json!(42)), Ok("42".into()));
        assert_eq!(String::from_value(json!(7.0)), Ok("7.0".into()));
        assert_eq!(String::from_value(json!(true)), Ok("True".into()));
        assert_eq!(String::from_value(json!({"a": 1})), Err(NOT_STR));
    }

    #[test]
    fn list_of_strings_coerces_each_item_and_rejects_scalars() {
        assert_eq!(Vec::<String>::from_value(json!(["a", 1])), Ok(vec!["a".into(), "1".into()]));
        assert_eq!(Vec::<String>::from_value(json!("a")), Err(NOT_LIST));
        assert_eq!(Vec::<String>::from_value(json!([{}])), Err(NOT_STR));
    }
}
