//! Turns a TOML parser error into a [`ConfigError`] that names its key and line.
//!
//! `toml::de::Error` gives a message and a byte span but not the key path, and its `Display`
//! quotes the source line, which may hold a secret. So we take only `message()` and `span()`,
//! and find the dotted key path at the span by parsing the text a second time into a tree of
//! spanned keys and values (only on the error path, so the cost does not matter).

use crate::error::{line_of, ConfigError};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// Converts a parser error for `text` into a config error.
pub(crate) fn toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let span = err.span();
    let key = span
        .as_ref()
        .map(|s| key_at(text, s.start))
        .unwrap_or_default();
    ConfigError {
        // The key path is the file's own text: a key file given as the config (its one line
        // reads as a key with no value) would print the secret as the key's name.
        key: redact_key_like(&key),
        line: span.map(|s| line_of(text, s.start)),
        message: plain_words(&redact_key_like(err.message())),
    }
}

/// The parser's words for a type, in the config's: `expected i64` is `expected an integer`.
/// A number beyond TOML's integers says what the largest is.
fn plain_words(message: &str) -> String {
    // One line per error: the parser's message may span several (a duplicate table: "invalid
    // table header" and then which key), which printed as a second line with no file or line.
    let mut m = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    for ty in ["i64", "u64", "i32", "u32", "u16", "u8", "usize"] {
        m = m.replace(&format!("expected {ty}"), "expected an integer");
    }
    if m.starts_with("number too large") {
        m = format!("{m} (TOML integers are at most 9223372036854775807)");
    }
    m
}

/// The dotted key path (`service[1].name`) at byte `offset`, or "" when it cannot be found
/// (a syntax error, or a value kind the tree does not model such as a datetime).
fn key_at(text: &str, offset: usize) -> String {
    let Ok(tree) = toml::from_str::<Tree>(text) else {
        // The value does not parse at all (an integer beyond TOML's): read the key off its line.
        return key_of_line(text, offset);
    };
    let mut path = String::new();
    if let Tree::Table(entries) = tree {
        find_in_table(&entries, offset, &mut path);
    }
    path
}

/// The dotted key of the `key = value` line at byte `offset`, under the table header above it
/// (`[server]`, or `[[service]]` counted: `service[1]`); "" when the line has no `=`.
fn key_of_line(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return String::new();
    };
    let key = key.trim().trim_matches('"');
    let mut table = String::new();
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for l in text[..start].lines().map(str::trim) {
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let n = counts.entry(name.trim()).or_insert(0);
            table = format!("{}[{n}]", name.trim());
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = name.trim().to_owned();
        }
    }
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end
}

fn find_in_table(entries: &[(Spanned<String>, Spanned<Tree>)], offset: usize, path: &mut String) {
    for (key, value) in entries {
        let in_key = contains(&key.span(), offset);
        if in_key || contains(&value.span(), offset) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key.get_ref());
            if !in_key {
                find_in_value(value.get_ref(), offset, path);
            }
            return;
        }
    }
}

fn find_in_value(value: &Tree, offset: usize, path: &mut String) {
    match value {
        Tree::Table(entries) => find_in_table(entries, offset, path),
        Tree::Array(items) => {
            if let Some((i, item)) = items
                .iter()
                .enumerate()
                .find(|(_, v)| contains(&v.span(), offset))
            {
                path.push_str(&format!("[{i}]"));
                find_in_value(item.get_ref(), offset, path);
            }
        }
        Tree::Leaf => {}
    }
}

/// A TOML document reduced to its shape, with the span of every key and value.
enum Tree {
    Table(Vec<(Spanned<String>, Spanned<Tree>)>),
    Array(Vec<Spanned<Tree>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value::<Spanned<Tree>>()?));
        }
        Ok(Tree::Table(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Tree>>()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<Tree, E> {
        Ok(Tree::Leaf)
    }
}

/// Replaces every run of 40 or more base64 characters with `<redacted>`.
///
/// The parser's type errors quote the offending string (`invalid type: string "…", expected
/// i64`); if someone pasted a key into the wrong field, that would print it. A 32-byte key is
/// 44 base64 characters. Paths and host names contain `.`, `-` or `_` often enough that they
/// are left alone in practice.
pub(crate) fn redact_key_like(message: &str) -> String {
    fn is_b64(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='
    }
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 40 {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in message.chars() {
        if is_b64(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}
