//! The one place YAML is read. serde-saphyr rejects duplicate keys and gives
//! every error a line and column; this layer turns its errors into our
//! `Diagnostic`s (adding "did you mean") and offers `Spanned` helpers so
//! semantic checks can point at the exact key or value.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{MessageFormatter, Spanned};

use super::diagnostic::{suggestion, Diagnostic, Pos};

/// Limits against hostile input (alias bombs, absurd nesting): far above any
/// real topology, far below what could hurt the agent.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 64;
    budget.max_nodes = 1_000_000;
    budget.max_reader_input_bytes = Some(16 * 1024 * 1024);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Nothing but blank lines and comments.
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// Parses one YAML document into `T`, or says exactly where and why not.
pub(crate) fn parse<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, Diagnostic> {
    if is_blank(text) {
        return Err(Diagnostic::new(
            file,
            Pos::START,
            "the file is empty; expected a mapping of settings",
        ));
    }
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| to_diagnostic(&e, text, file))
}

fn to_diagnostic(error: &serde_saphyr::Error, text: &str, file: &Path) -> Diagnostic {
    let error = error.without_snippet();
    let mut pos = error.location().map(|l| Pos::of(&l)).unwrap_or(Pos::START);
    let message = match error {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => match suggestion(field, expected.iter().copied()) {
            hint if !hint.is_empty() => format!("unknown field `{field}`{hint}"),
            _ => format!(
                "unknown field `{field}`, expected one of: {}",
                expected.join(", ")
            ),
        },
        serde_saphyr::Error::SerdeUnknownVariant {
            variant, expected, ..
        } => format!(
            "unknown value `{variant}`, expected one of: {}{}",
            expected.join(", "),
            suggestion(variant, expected.iter().copied())
        ),
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            match first_occurrence(text, key, pos) {
                Some(line) => format!("duplicate key `{key}` (first at line {line})"),
                None => format!("duplicate key `{key}`"),
            }
        }
        other => {
            let message = serde_saphyr::DefaultMessageFormatter.format_message(other);
            match message.as_ref() {
                "expected mapping start" => "expected a mapping (`key: value` lines)".to_string(),
                "expected string scalar" => {
                    "expected a text value, not a list or mapping".to_string()
                }
                m if m.starts_with("tabs disallowed") => {
                    // The parser points just past the tab; point at the tab.
                    if let Some(column) = tab_column(text, pos.line) {
                        pos.column = column;
                    }
                    "tab character in indentation; YAML indents with spaces".to_string()
                }
                m if m.contains("DuplicateKeyPolicy") => "duplicate key".to_string(),
                _ => message.into_owned(),
            }
        }
    };
    Diagnostic::new(file, pos, message)
}

/// The 1-based column of the first tab on `line`.
fn tab_column(text: &str, line: u64) -> Option<u64> {
    let line = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    line.chars().position(|c| c == '\t').map(|i| i as u64 + 1)
}

/// The line where a block-mapping key first stood, looking back from its
/// duplicate at the same indentation. Flow mappings (`{a: 1, a: 2}`) are not
/// searched: the duplicate's own position is enough there.
fn first_occurrence(text: &str, key: &str, duplicate: Pos) -> Option<u64> {
    let indent = usize::try_from(duplicate.column.checked_sub(1)?).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let last = usize::try_from(duplicate.line).ok()?.checked_sub(1)?;
    for (index, line) in lines.get(..last)?.iter().enumerate().rev() {
        let content = line.get(indent..).unwrap_or("");
        let this_indent = line.len() - line.trim_start().len();
        if this_indent < indent
            && !line.trim().is_empty()
            && !line.trim_start().starts_with('#')
            && !line.trim_start().starts_with('-')
        {
            return None; // left the enclosing mapping
        }
        if this_indent == indent {
            let content = content.trim_start_matches(['"', '\'']);
            if let Some(rest) = content.strip_prefix(key) {
                if rest
                    .trim_start_matches(['"', '\''])
                    .trim_start()
                    .starts_with(':')
                {
                    return Some(index as u64 + 1);
                }
            }
        }
    }
    None
}

/// Where a spanned value stands in its file.
pub(crate) fn pos<T>(value: &Spanned<T>) -> Pos {
    Pos::of(&value.referenced)
}

/// A mapping that keeps the file's order and where each key stands, so
/// messages can point at a key and output follows what the operator wrote.
/// Duplicate keys never reach it: the parser rejects them first.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<V> OrderedMap<V> {
    pub fn iter(&self) -> impl Iterator<Item = (&Spanned<String>, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.value.as_str())
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = OrderedMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                // `key:` with nothing after it is an empty mapping.
                Ok(OrderedMap(Vec::new()))
            }
        }

        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}
