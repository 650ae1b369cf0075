//! Where wildcard values come from.
//!
//! A [`WildcardSource`] hands out a snapshot of named collections ([`Collections`]); the
//! generator matches names against it. [`DirSource`] reads a wildcard folder the way
//! dynamicprompts' `WildcardManager` does and re-reads it whenever a file was added,
//! removed or changed (checked on every snapshot), so edits apply without a restart.
//! [`MemorySource`] holds collections (or file contents) in memory, for tests and embedding.
//!
//! Naming rules: `x/y/name.txt` → `x/y/name`; every key path of `x/file.yaml` / `.json` →
//! `x/key/subkey` (the file name is not part of it), a top-level list → `x/file`. Folders
//! starting with `.` are skipped. A later collection with the same name replaces an earlier
//! one in place. Text files: one value per line, stripped, blank lines and `#` lines
//! skipped, invalid UTF-8 dropped.
//!
//! Two deliberate differences from the library: `.yml` files are read like `.yaml` (the
//! library only reads `.yaml`), and folder entries are visited in name order (the library
//! uses the file system's order), so which of two same-named collections wins is stable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::pystr;
use crate::structured::{self, Value};
use crate::Error;

/// One wildcard value.
#[derive(Debug, Clone)]
pub enum Item {
    /// A plain value (weight 1).
    Text(String),
    /// A value with a weight from a structured file (`"3::heavy"`, `{text, weight}`).
    Weighted {
        /// The value.
        text: String,
        /// Relative weight in random mode; repeat count (truncated) otherwise.
        weight: f64,
    },
}

impl Item {
    /// The value text.
    pub fn text(&self) -> &str {
        match self {
            Item::Text(t) | Item::Weighted { text: t, .. } => t,
        }
    }

    /// The weight (1 for plain values).
    pub fn weight(&self) -> f64 {
        match self {
            Item::Text(_) => 1.0,
            Item::Weighted { weight, .. } => *weight,
        }
    }
}

impl PartialEq for Item {
    /// Deduplication equality: a plain value never equals a weighted one, even with the
    /// same text (they are different Python types in the library).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Item::Text(a), Item::Text(b)) => a == b,
            (Item::Weighted { text: a, weight: wa }, Item::Weighted { text: b, weight: wb }) => {
                a == b && wa == wb
            }
            _ => false,
        }
    }
}

/// Named collections in discovery order.
#[derive(Debug, Clone, Default)]
pub struct Collections {
    entries: Vec<(String, Arc<Vec<Item>>)>,
    index: HashMap<String, usize>,
}

impl Collections {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces (in place, as a Python dict does) the collection `name`.
    pub fn insert(&mut self, name: impl Into<String>, items: Vec<Item>) {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = Arc::new(items),
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, Arc::new(items)));
            }
        }
    }

    /// Collections in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Item])> {
        self.entries.iter().map(|(n, i)| (n.as_str(), i.as_slice()))
    }

    /// The collection `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[Item]> {
        self.index.get(name).map(|&i| self.entries[i].1.as_slice())
    }

    /// Number of collections.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the collections of one file at `rel_path` (relative to the wildcard root,
    /// `/`-separated). Files of other types are ignored; unreadable structured files are
    /// skipped and reported through the returned message.
    pub fn add_file(&mut self, rel_path: &str, bytes: &[u8]) -> Option<String> {
        let (dir, file) = match rel_path.rfind('/') {
            Some(i) => (&rel_path[..i], &rel_path[i + 1..]),
            None => ("", rel_path),
        };
        let (stem, ext) = split_suffix(file)?;
        let stem_path = if dir.is_empty() { stem.to_string() } else { format!("{dir}/{stem}") };
        match ext {
            "txt" => {
                self.insert(stem_path, text_values(bytes));
                None
            }
            "json" | "yaml" | "yml" => {
                let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
                let text = match std::str::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(e) => return Some(format!("{rel_path}: {e}")),
                };
                let parsed =
                    if ext == "json" { structured::parse_json(text) } else { structured::parse_yaml(text) };
                match parsed {
                    Ok(value) => {
                        for (name, items) in structured_collections(&value, stem) {
                            self.insert(format!("{prefix}{name}"), items);
                        }
                        None
                    }
                    Err(e) => Some(format!("{rel_path}: {e}")),
                }
            }
            _ => None,
        }
    }
}

/// `Path.suffix` rules: the part after the last dot, unless the name is a dot file.
fn split_suffix(file: &str) -> Option<(&str, &str)> {
    let i = file.rfind('.')?;
    if i == 0 || i + 1 == file.len() {
        return None;
    }
    Some((&file[..i], &file[i + 1..]))
}

/// Values of a `.txt` file: UTF-8 with invalid bytes dropped, universal newlines, each line
/// stripped, blank and `#` lines skipped. Duplicates stay (removed when values are fetched).
pub fn text_values(bytes: &[u8]) -> Vec<Item> {
    let text = decode_utf8_ignore(bytes).replace("\r\n", "\n").replace('\r', "\n");
    text.split('\n')
        .map(pystr::strip)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Item::Text(l.to_string()))
        .collect()
}

/// `bytes.decode("utf-8", errors="ignore")`.
fn decode_utf8_ignore(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).expect("valid prefix"));
                let skip = e.error_len().unwrap_or(rest.len());
                bytes = &rest[skip..];
            }
        }
    }
}

/// Collections of a parsed JSON/YAML document (names relative to its folder).
fn structured_collections(value: &Value, stem: &str) -> Vec<(String, Vec<Item>)> {
    let mut out = Vec::new();
    match value {
        Value::Map(entries) => dict_collections(entries, "", &mut out),
        Value::List(items) => {
            // A flat list: only the strings count, taken as they are (no weights).
            let strings: Vec<Item> = items
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(Item::Text(s.clone())),
                    _ => None,
                })
                .collect();
            if !strings.is_empty() {
                out.push((stem.to_string(), strings));
            }
        }
        _ => {}
    }
    out
}

fn dict_collections(entries: &[(Value, Value)], prefix: &str, out: &mut Vec<(String, Vec<Item>)>) {
    for (key, value) in dedup_keys(entries) {
        let Value::Str(key) = key else { continue };
        if !value.truthy() {
            continue;
        }
        let name = format!("{prefix}{key}");
        match value {
            Value::Str(s) => out.push((name, vec![Item::Text(s.clone())])),
            Value::List(items) => {
                // A failing weight conversion drops the whole key, as the library's
                // try/except around the list does.
                if let Some(items) = list_items(items) {
                    out.push((name, items));
                }
            }
            Value::Map(inner) => dict_collections(inner, &format!("{name}/"), out),
            _ => {}
        }
    }
}

/// Python dict semantics for mapping entries: a repeated key keeps its first position and
/// its last value.
fn dedup_keys(entries: &[(Value, Value)]) -> Vec<(&Value, &Value)> {
    let mut out: Vec<(&Value, &Value)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        match out.iter_mut().find(|(k2, _)| *k2 == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

fn list_items(items: &[Value]) -> Option<Vec<Item>> {
    let mut out = Vec::new();
    for item in items {
        if !item.truthy() {
            continue;
        }
        match item {
            Value::Str(s) => {
                let first_digit = s.chars().next().is_some_and(|c| c.is_ascii_digit());
                if first_digit && s.contains("::") {
                    let i = s.rfind("::").expect("contains ::");
                    if let Some(weight) = pystr::parse_float(&s[..i]) {
                        out.push(Item::Weighted { text: s[i + 2..].to_string(), weight });
                        continue;
                    }
                }
                out.push(Item::Text(s.clone()));
            }
            Value::Map(fields) => {
                let fields = dedup_keys(fields);
                let field = |name: &str| {
                    fields.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == name)).map(|(_, v)| *v)
                };
                let weight = match field("weight") {
                    None => 1.0,
                    Some(w) => w.as_float()?,
                };
                let content = [field("text"), field("content")].into_iter().flatten().find(|v| v.truthy());
                if let Some(content) = content {
                    let Some(text) = content.display() else { continue };
                    if weight == 1.0 {
                        out.push(Item::Text(text));
                    } else {
                        out.push(Item::Weighted { text, weight });
                    }
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// A provider of wildcard collections.
pub trait WildcardSource: Send + Sync {
    /// The current collections. Called once per generation; implementations may cache as
    /// long as the snapshot reflects the files as they are now.
    fn collections(&self) -> Result<Arc<Collections>, Error>;
}

/// Collections held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    collections: Arc<Collections>,
}

impl MemorySource {
    /// No collections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a collection of plain values.
    pub fn with<I, S>(mut self, name: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let items = values.into_iter().map(|v| Item::Text(v.into())).collect();
        Arc::make_mut(&mut self.collections).insert(name, items);
        self
    }

    /// Adds the collections a file with this relative path and content would give in a
    /// [`DirSource`] folder (`.txt`, `.json`, `.yaml`, `.yml`).
    pub fn with_file(mut self, rel_path: &str, content: &str) -> Self {
        Arc::make_mut(&mut self.collections).add_file(rel_path, content.as_bytes());
        self
    }
}

impl WildcardSource for MemorySource {
    fn collections(&self) -> Result<Arc<Collections>, Error> {
        Ok(self.collections.clone())
    }
}

/// One file found by the walk, with what decides whether it changed.
#[derive(Debug, Clone, PartialEq)]
struct FileStamp {
    rel: String,
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// A wildcard folder on disk.
#[derive(Debug)]
pub struct DirSource {
    root: PathBuf,
    cache: Mutex<Option<(Vec<FileStamp>, Arc<Collections>)>>,
    problems: Mutex<Vec<String>>,
}

/// Folder depth at which the walk stops (guards against symlink cycles).
const MAX_WALK_DEPTH: usize = 32;

impl DirSource {
    /// Reads collections from `root` (which need not exist yet: it then has none).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirSource { root: root.into(), cache: Mutex::new(None), problems: Mutex::new(Vec::new()) }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Files skipped at the last reload (unreadable or malformed structured files).
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The walk: files of a folder (sorted by name) before its subfolders (sorted, in
    /// depth-first order), following symlinks, skipping folders whose name starts with `.`.
    fn walk(&self) -> Result<Vec<FileStamp>, Error> {
        let mut out = Vec::new();
        if self.root.is_dir() {
            walk_dir(&self.root, "", 0, &mut out)?;
        }
        Ok(out)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}

fn walk_dir(dir: &Path, rel: &str, depth: usize, out: &mut Vec<FileStamp>) -> Result<(), Error> {
    if depth > MAX_WALK_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    entries.sort();
    let mut subdirs = Vec::new();
    for (name, path) in entries {
        // `metadata` follows symlinks, as os.walk(followlinks=True) does.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        if meta.is_dir() {
            if !name.starts_with('.') {
                subdirs.push((rel_path, path));
            }
        } else if meta.is_file() {
            out.push(FileStamp { rel: rel_path, path, len: meta.len(), modified: meta.modified().ok() });
        }
    }
    for (rel_path, path) in subdirs {
        walk_dir(&path, &rel_path, depth + 1, out)?;
    }
    Ok(())
}

impl WildcardSource for DirSource {
    fn collections(&self) -> Result<Arc<Collections>, Error> {
        let stamps = self.walk()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old, cols)) = cache.as_ref() {
            if *old == stamps {
                return Ok(cols.clone());
            }
        }
        let mut cols = Collections::new();
        let mut problems = Vec::new();
        for stamp in &stamps {
            let bytes = match std::fs::read(&stamp.path) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("{}: {e}", stamp.rel));
                    continue;
                }
            };
            if let Some(problem) = cols.add_file(&stamp.rel, &bytes) {
                problems.push(problem);
            }
        }
        let cols = Arc::new(cols);
        *cache = Some((stamps, cols.clone()));
        if let Ok(mut p) = self.problems.lock() {
            *p = problems;
        }
        Ok(cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_strip_skip_comments_keep_duplicates() {
        let items = text_values(b"red\n\n  blue \r\n#x\nred\xff\rgreen");
        let texts: Vec<&str> = items.iter().map(Item::text).collect();
        assert_eq!(texts, ["red", "blue", "red", "green"]);
    }

    #[test]
    fn add_file_yaml_names_ignore_file_name() {
        let mut c = Collections::new();
        c.add_file("x/people.yaml", b"finnish: [A, B]\nnested:\n  k: v\n");
        let names: Vec<&str> = c.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["x/finnish", "x/nested/k"]);
    }

    #[test]
    fn add_file_json_list_named_after_stem() {
        let mut c = Collections::new();
        c.add_file("lists/l.json", br#"["a", 1, "b"]"#);
        assert_eq!(c.get("lists/l").map(|i| i.len()), Some(2));
    }

    #[test]
    fn dir_source_file_change_visible_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.txt"), "a\n").unwrap();
        let src = DirSource::new(dir.path());
        assert_eq!(src.collections().unwrap().get("c").unwrap().len(), 1);
        std::fs::write(dir.path().join("c.txt"), "a\nbb\n").unwrap();
        std::fs::write(dir.path().join("d.yml"), "k: [v]\n").unwrap();
        let cols = src.collections().unwrap();
        assert_eq!(cols.get("c").unwrap().len(), 2);
        assert!(cols.get("k").is_some());
    }
}
