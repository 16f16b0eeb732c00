//! Turning byte spans into `file:line:column` diagnostics, and toml/serde errors into messages
//! that name the key, its section and what was expected.
//!
//! serde reports "unknown field `bse`, expected `base` or `platform`" and "invalid type: integer
//! `3`, expected a string" without saying where; the span toml attaches is found again in the
//! document's spanned tree ([`toml::de::DeTable`]) to name the key and its section.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, DiagnosticKind};

/// The file being read, for placing diagnostics.
pub(crate) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// A diagnostic at the start of `span`.
    pub fn error(
        &self,
        span: Range<usize>,
        kind: DiagnosticKind,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError::Invalid {
            file: PathBuf::from(self.file),
            line,
            column,
            kind,
            message: message.into(),
            hint,
        }
    }

    /// A toml parse or deserialize error, rewritten to name its key and section.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let raw = err.message().trim_end_matches('\n');
        let doc = DeTable::parse(self.text).ok();
        let doc = doc.as_ref().map(|d| d.get_ref());
        let path = doc.and_then(|d| locate(d, &span));
        if let Some(rest) = raw.strip_prefix("unknown field ") {
            return self.unknown_key(span, rest, path.as_deref());
        }
        if let Some(rest) = raw.strip_prefix("invalid type: ") {
            let datetime = doc
                .zip(path.as_deref())
                .and_then(|(d, p)| value_at(d, p))
                .is_some_and(|v| matches!(v, DeValue::Datetime(_)));
            return self.wrong_type(span, rest, path.as_deref(), datetime);
        }
        if let Some(rest) = raw.strip_prefix("invalid value: ") {
            let place = path.as_deref().map_or_else(|| "a value".into(), describe);
            return self.error(
                span,
                DiagnosticKind::WrongType,
                format!("invalid value for {place}: {}", readable(rest)),
                None,
            );
        }
        if let Some(rest) = raw.strip_prefix("missing field ") {
            let table = self.text.get(span.clone()).unwrap_or("").trim();
            let table = table.lines().next().unwrap_or(table);
            return self.error(
                span,
                DiagnosticKind::Value,
                format!("{table} needs {rest}"),
                Some(format!("add {} = … under {table}", rest.trim_matches('`'))),
            );
        }
        // A syntax error: toml's own words, plus the offending text when it is short.
        let snippet = self.text.get(span.clone()).unwrap_or("").trim();
        let message = if raw == "duplicate key" && !snippet.is_empty() && snippet.len() <= 40 {
            format!("duplicate key `{snippet}`")
        } else {
            format!("invalid TOML: {raw}")
        };
        self.error(
            span,
            DiagnosticKind::Syntax,
            message,
            Some("see https://toml.io for TOML syntax".into()),
        )
    }

    fn unknown_key(&self, span: Range<usize>, rest: &str, path: Option<&[Seg]>) -> ConfigError {
        // rest: "`bse`, expected `base` or `platform`" / "…, expected one of `a`, `b`"
        let (key_part, expected_part) = rest.split_once(", expected").unwrap_or((rest, ""));
        let key = key_part.trim_matches('`');
        let expected = backticked(expected_part);
        let table = match path {
            Some([parent @ .., _]) if !parent.is_empty() => format!(" in {}", table_name(parent)),
            _ => String::new(),
        };
        let message = if expected.is_empty() {
            format!("unknown key `{key}`{table}")
        } else {
            format!(
                "unknown key `{key}`{table}, expected one of: {}",
                expected.join(", ")
            )
        };
        let in_section = matches!(path, Some([_, _, ..]));
        let top_level = key == "version" || super::SECTIONS.contains(&key);
        let hint = if in_section && top_level {
            Some(format!(
                "keys after a [section] header belong to that section; move `{key}` above the first header"
            ))
        } else {
            closest(key, &expected).map(|k| format!("did you mean `{k}`?"))
        };
        let hint = hint.or_else(|| Some("docs/env-toml.md lists every key".into()));
        self.error(span, DiagnosticKind::UnknownKey, message, hint)
    }

    fn wrong_type(
        &self,
        span: Range<usize>,
        rest: &str,
        path: Option<&[Seg]>,
        datetime: bool,
    ) -> ConfigError {
        // rest: "integer `3`, expected a string"
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
        let expected = readable_expected(expected);
        let place = path.map(describe).unwrap_or_else(|| "a value".into());
        // A TOML date-time reaches serde as a map; say what the user wrote instead.
        let found_text = if datetime {
            format!(
                "date-time {}",
                self.text.get(span.clone()).unwrap_or("").trim()
            )
        } else {
            readable(found)
        };
        let message = format!("wrong type for {place}: expected {expected}, found {found_text}");
        let literal = self.text.get(span.clone()).unwrap_or("").trim();
        let hint = if expected == "a string"
            && (found.starts_with("integer") || found.starts_with("floating point"))
        {
            Some(format!("quote it: \"{literal}\""))
        } else if expected == "an array" && found.starts_with("string") {
            Some(format!("write a list: [{literal}]"))
        } else {
            None
        };
        self.error(span, DiagnosticKind::WrongType, message, hint)
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// The key path of the deepest key or value whose span holds `span`. Standard tables' spans
/// cover only their `[header]`, so every subtree is searched, not only the enclosing ones.
pub(crate) fn locate(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<Seg>> {
    let mut path = Vec::new();
    locate_in_table(table, span, &mut path).then_some(path)
}

fn locate_in_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<Seg>) -> bool {
    for (key, value) in table.iter() {
        path.push(Seg::Key(key.get_ref().to_string()));
        if locate_in_value(value.get_ref(), span, path)
            || holds(&key.span(), span)
            || holds(&value.span(), span)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn locate_in_value(value: &DeValue<'_>, span: &Range<usize>, path: &mut Vec<Seg>) -> bool {
    match value {
        DeValue::Table(t) => locate_in_table(t, span, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                if locate_in_value(item.get_ref(), span, path) || holds(&item.span(), span) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// The value at `path`, when the path leads to one.
fn value_at<'a, 'i>(table: &'a DeTable<'i>, path: &[Seg]) -> Option<&'a DeValue<'i>> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(k) = first else { return None };
    let mut value = table.get(k.as_str())?.get_ref();
    for seg in rest {
        value = match (seg, value) {
            (Seg::Key(k), DeValue::Table(t)) => t.get(k.as_str())?.get_ref(),
            (Seg::Index(i), DeValue::Array(a)) => a.get(*i)?.get_ref(),
            _ => return None,
        };
    }
    Some(value)
}

fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start < outer.end && outer.start <= inner.start && inner.end <= outer.end
}

/// `[image]`, `[tools.python]`.
fn table_name(path: &[Seg]) -> String {
    format!("[{}]", dotted(path))
}

fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// How a message names a place: `[image]`, `` `base` in [image] ``, `` `apt[1]` in [packages] ``,
/// `` `version` ``.
pub(crate) fn describe(path: &[Seg]) -> String {
    match path {
        [] => "the file".into(),
        [Seg::Key(k)] if super::SECTIONS.contains(&k.as_str()) => format!("[{k}]"),
        [Seg::Key(section), rest @ ..] if super::SECTIONS.contains(&section.as_str()) => {
            let mut inner = dotted(rest);
            if inner.starts_with('[') {
                inner.insert_str(0, section);
                return format!("`{inner}`");
            }
            inner = format!("`{inner}` in [{section}]");
            inner
        }
        _ => format!("`{}`", dotted(path)),
    }
}

/// The names between backticks: "`a`, `b` or `c`" → [a, b, c].
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// serde's type words in TOML's: "sequence" → "an array", "map" → "a table".
fn readable(found: &str) -> String {
    let found = found
        .replace('`', "")
        .replace(" as i128", "")
        .replace(" as u128", "");
    match found.as_str() {
        "sequence" => "an array".into(),
        "map" => "a table".into(),
        "unit value" => "nothing".into(),
        _ => found
            .replacen("floating point", "float", 1)
            .replacen("boolean", "bool", 1),
    }
}

fn readable_expected(expected: &str) -> String {
    if expected.starts_with("struct ") || expected == "a map" {
        return "a table".into();
    }
    match expected {
        "a sequence" => "an array".into(),
        "a boolean" => "true or false".into(),
        "i64" | "u32" | "u64" | "an integer" => "an integer".into(),
        other => other.into(),
    }
}

/// The expected name within two edits of `key`, for "did you mean".
fn closest<'a>(key: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // `=` after a two-byte character is the third character of line 2.
        assert_eq!(line_column(text, 10), (2, 4));
        // Past the end and inside a character do not panic.
        assert_eq!(line_column(text, 999), (3, 1));
        assert_eq!(line_column(text, 8), (2, 2));
    }

    #[test]
    fn describe_names_sections_and_items() {
        let k = |s: &str| Seg::Key(s.into());
        assert_eq!(describe(&[k("image")]), "[image]");
        assert_eq!(describe(&[k("image"), k("base")]), "`base` in [image]");
        assert_eq!(
            describe(&[k("packages"), k("apt"), Seg::Index(1)]),
            "`apt[1]` in [packages]"
        );
        assert_eq!(describe(&[k("version")]), "`version`");
    }

    #[test]
    fn closest_suggests_near_misses_only() {
        let c = vec!["base".to_string(), "platform".to_string()];
        assert_eq!(closest("bse", &c), Some("base"));
        assert_eq!(closest("platfrom", &c), Some("platform"));
        assert_eq!(closest("registry", &c), None);
    }
}
