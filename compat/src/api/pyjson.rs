//! JSON text as Python's `json.dumps` writes it with default arguments: `", "` and `": "`
//! separators, every non-ASCII character as `\uXXXX` (`ensure_ascii=True`), floats in `repr`
//! form (`1e+16`, `7.0`). A1111's response `info` is such a string, and some clients compare or
//! re-parse it textually, so it is reproduced exactly rather than approximately.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

use crate::infotext::py_float_repr;

/// Python-style JSON of `value`.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    value.serialize(&mut ser).expect("serialising to memory with string keys cannot fail; this is a bug");
    String::from_utf8(out).expect("the formatter writes ASCII only; this is a bug")
}

struct PyFormatter;

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(py_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(w, value as f64)
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        // serde_json hands over runs that need no JSON escape; Python additionally escapes
        // everything outside printable ASCII, with surrogate pairs above the BMP.
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn to_string_matches_python_json_dumps() {
        // Python: json.dumps({"a": [1, 2.0, "é😀"], "b": {"c": None, "d": True}, "e": 1e16, "f": "x\n\u007f"})
        let v = json!({"a": [1, 2.0, "é😀"], "b": {"c": null, "d": true}, "e": 1e16, "f": "x\n\u{7f}"});
        assert_eq!(
            to_string(&v),
            r#"{"a": [1, 2.0, "\u00e9\ud83d\ude00"], "b": {"c": null, "d": true}, "e": 1e+16, "f": "x\n\u007f"}"#
        );
    }

    #[test]
    fn to_string_empty_containers_have_no_separators() {
        assert_eq!(to_string(&json!({"a": [], "b": {}})), r#"{"a": [], "b": {}}"#);
    }
}
