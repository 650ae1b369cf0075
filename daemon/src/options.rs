//! The runtime options of `/sdapi/v1/options` (a1111-api.md §6), persisted in
//! `<data-dir>/config.json`.
//!
//! Only values that differ from their defaults are stored, with the JSON type the client sent
//! (A1111 does not cast). Keys the file holds that this daemon does not know (written by A1111
//! extensions, say) are kept in the file but not served. Every write replaces the file
//! atomically.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use compat::api::coerce::Lax;
use compat::api::options::{default_of, defaults};
use serde_json::{Map, Value};

use crate::fsutil::write_atomic;

/// The persisted option values.
pub struct OptionsStore {
    path: PathBuf,
    stored: Mutex<Map<String, Value>>,
}

impl OptionsStore {
    /// Reads `path` if it exists; an unreadable file is reported and ignored.
    pub fn load(path: &Path) -> OptionsStore {
        let stored = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => map,
                _ => {
                    tracing::warn!(file = %path.display(), "config.json is not a JSON object; using defaults");
                    Map::new()
                }
            },
            Err(_) => Map::new(),
        };
        OptionsStore { path: path.to_path_buf(), stored: Mutex::new(stored) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map<String, Value>> {
        self.stored.lock().expect("options lock poisoned; this is a bug")
    }

    /// The value of a known option (stored or default), `None` for unknown keys.
    pub fn get(&self, key: &str) -> Option<Value> {
        let default = default_of(key)?;
        Some(self.lock().get(key).cloned().unwrap_or(default))
    }

    /// Every known option with its current value.
    pub fn all(&self) -> Map<String, Value> {
        let stored = self.lock();
        let mut all = defaults();
        for (k, v) in all.iter_mut() {
            if let Some(s) = stored.get(k) {
                *v = s.clone();
            }
        }
        all
    }

    /// Applies `changes` (known keys only; the caller checks) and writes the file once. Values
    /// equal to the current one are skipped, numbers compared by value so that an echoed `1.0`
    /// does not count as a change of `1`.
    pub fn set(&self, changes: impl IntoIterator<Item = (String, Value)>) -> std::io::Result<()> {
        let mut stored = self.lock();
        let mut changed = false;
        for (key, value) in changes {
            let current = stored.get(&key).cloned().or_else(|| default_of(&key)).unwrap_or(Value::Null);
            if same_value(&current, &value) {
                continue;
            }
            stored.insert(key, value);
            changed = true;
        }
        if changed {
            let text = serde_json::to_vec_pretty(&*stored).expect("options serialise; this is a bug");
            write_atomic(&self.path, &text)?;
        }
        Ok(())
    }
}

/// JSON equality with numbers compared as numbers.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Typed, lenient reads of an options map (values may arrive as `2.0` for an int, `"true"` for
/// a bool): a value that does not coerce falls back to the option's default.
pub struct OptionView<'a>(pub &'a Map<String, Value>);

impl OptionView<'_> {
    fn typed<T: Lax>(&self, key: &str) -> Option<T> {
        let coerce = |v: Option<Value>| v.filter(|v| !v.is_null()).and_then(|v| T::from_value(v).ok());
        coerce(self.0.get(key).cloned()).or_else(|| coerce(default_of(key)))
    }

    pub fn f64(&self, key: &str) -> f64 {
        self.typed(key).unwrap_or(0.0)
    }

    pub fn i64(&self, key: &str) -> i64 {
        self.typed(key).unwrap_or(0)
    }

    pub fn bool(&self, key: &str) -> bool {
        self.typed(key).unwrap_or(false)
    }

    pub fn string(&self, key: &str) -> String {
        self.typed(key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_store_persists_changes_and_skips_equal_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let store = OptionsStore::load(&path);
        store.set([("CLIP_stop_at_last_layers".to_string(), json!(1.0))]).unwrap();
        assert!(!path.exists(), "an echoed default is not a change");
        store
            .set([
                ("CLIP_stop_at_last_layers".to_string(), json!(2)),
                ("samples_format".into(), json!("jpg")),
            ])
            .unwrap();
        let again = OptionsStore::load(&path);
        assert_eq!(again.get("CLIP_stop_at_last_layers"), Some(json!(2)));
        assert_eq!(again.all()["samples_format"], json!("jpg"));
        assert_eq!(again.get("no_such_option"), None);
    }

    #[test]
    fn option_view_coerces_and_falls_back_to_defaults() {
        let map: Map<String, Value> = serde_json::from_value(
            json!({"CLIP_stop_at_last_layers": 2.0, "enable_pnginfo": "no", "eta_ancestral": "bad"}),
        )
        .unwrap();
        let view = OptionView(&map);
        assert_eq!(view.i64("CLIP_stop_at_last_layers"), 2);
        assert!(!view.bool("enable_pnginfo"));
        assert_eq!(view.f64("eta_ancestral"), 1.0);
        assert_eq!(view.string("randn_source"), "GPU");
    }
}
