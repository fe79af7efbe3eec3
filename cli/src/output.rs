//! `-o table|wide|json|yaml` for every listing command (issue 19). `table` is the human output each command
//! always printed; `wide` adds columns; `json` and `yaml` print the listing as one document, the same
//! value in both. The old `--json` flags stay for scripts written before `-o`, each with the shape it always
//! had (some print JSON lines).
//!
//! YAML is emitted here from a `serde_json::Value` (serde_yaml is deprecated and a full YAML library is far
//! more than a printer needs): block style, two-space indents, and every string that a YAML 1.1 or 1.2
//! reader could take for something else (numbers, booleans, null, `~`, leading indicators, `: `, ` #`, ...)
//! is written double-quoted with JSON escapes, which YAML's double-quoted scalars accept.

use std::io::Write;

use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The human table (the default).
    Table,
    /// The table with more columns.
    Wide,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

impl Format {
    /// JSON or YAML: print the whole listing as one document.
    pub fn is_document(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output format: table (for people), wide (more columns), json or yaml (one document).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The command's original JSON output (kept for existing scripts; prefer -o json).
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
}

impl OutputArgs {
    /// The format to print in; `--json` is JSON.
    pub fn format(&self) -> Format {
        if self.json { Format::Json } else { self.output }
    }
}

/// Print `v` as one document in `f` (JSON pretty-printed, or YAML); tables are the command's business.
pub fn print_document(v: &Value, f: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match f {
        Format::Yaml => out.write_all(to_yaml(v).as_bytes())?,
        _ => writeln!(out, "{}", serde_json::to_string_pretty(v)?)?,
    }
    out.flush()?;
    Ok(())
}

/// Deepest nesting the YAML emitter follows: the CLI's documents are a few levels deep; a value nested
/// deeper is printed as flow-style JSON at that level (valid YAML) instead of recursing further.
pub const MAX_YAML_DEPTH: usize = 64;

/// `v` as a YAML document (ends with a newline).
pub fn to_yaml(v: &Value) -> String {
    let mut s = String::new();
    match v {
        Value::Array(a) if !a.is_empty() => seq(&mut s, a, 0, 0),
        Value::Object(o) if !o.is_empty() => map(&mut s, o, 0, 0, false),
        other => {
            s.push_str(&scalar(other));
            s.push('\n');
        }
    }
    s
}

fn indent(s: &mut String, n: usize) {
    s.extend(std::iter::repeat_n(' ', n));
}

/// A scalar, an empty collection, or (past [`MAX_YAML_DEPTH`]) any value, on one line.
fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(st) => string(st),
        // Flow style, which is JSON; its strings are quoted by serde_json, so escape what YAML refuses raw.
        other => yaml_safe_json(&other.to_string()),
    }
}

fn is_inline(v: &Value, depth: usize) -> bool {
    match v {
        Value::Array(a) => a.is_empty() || depth >= MAX_YAML_DEPTH,
        Value::Object(o) => o.is_empty() || depth >= MAX_YAML_DEPTH,
        _ => true,
    }
}

/// A block mapping whose keys sit at column `at`; `first_inline`: the first key goes right after a "- "
/// already written.
fn map(s: &mut String, o: &serde_json::Map<String, Value>, at: usize, depth: usize, first_inline: bool) {
    for (i, (k, v)) in o.iter().enumerate() {
        if i > 0 || !first_inline {
            indent(s, at);
        }
        s.push_str(&string(k));
        s.push(':');
        if is_inline(v, depth + 1) {
            s.push(' ');
            s.push_str(&scalar(v));
            s.push('\n');
            continue;
        }
        s.push('\n');
        match v {
            // A sequence under a key sits at the key's column, the usual block style.
            Value::Array(a) => seq(s, a, at, depth + 1),
            Value::Object(m) => map(s, m, at + 2, depth + 1, false),
            _ => {}
        }
    }
}

/// A block sequence whose dashes sit at column `at`.
fn seq(s: &mut String, a: &[Value], at: usize, depth: usize) {
    for v in a {
        indent(s, at);
        if is_inline(v, depth + 1) {
            s.push_str("- ");
            s.push_str(&scalar(v));
            s.push('\n');
            continue;
        }
        match v {
            Value::Object(m) => {
                s.push_str("- ");
                map(s, m, at + 2, depth + 1, true);
            }
            Value::Array(inner) => {
                s.push_str("-\n");
                seq(s, inner, at + 2, depth + 1);
            }
            _ => {}
        }
    }
}

/// A string as a YAML scalar: plain when no reader can mistake it, else double-quoted.
fn string(st: &str) -> String {
    if plain_ok(st) { st.to_string() } else { yaml_safe_json(&Value::String(st.to_string()).to_string()) }
}

/// JSON text made safe inside YAML: YAML's double-quoted scalars take JSON's escapes, but not raw DEL, C1
/// controls or the Unicode line separators, which JSON leaves unescaped.
fn yaml_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c as u32 {
            0x7f..=0x9f | 0x2028 | 0x2029 | 0xfeff => out.push_str(&format!("\\u{:04x}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

/// Words YAML 1.1 (still read by many tools) or 1.2 turn into booleans, null or a merge key.
const RESERVED: &[&str] = &[
    "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "yes", "Yes", "YES", "no",
    "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
];
/// Longest string printed plain (longer ones are quoted: a reader may fold or cap plain scalars).
const MAX_PLAIN: usize = 1024;

/// Plain only for a conservative shape: starts with a letter, `_` or `/` (so never a number, a date, an
/// indicator or `.inf`), then letters, digits and `_ - . / @ , ( ) =` or single inner spaces.
fn plain_ok(st: &str) -> bool {
    let Some(first) = st.chars().next() else { return false };
    if RESERVED.contains(&st) || st.len() > MAX_PLAIN {
        return false;
    }
    if !(first.is_ascii_alphabetic() || first == '_' || first == '/')
        || st.ends_with(' ')
        || st.contains("  ")
    {
        return false;
    }
    st.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@' | ',' | '(' | ')' | '=' | ' ')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_shapes() {
        let v = json!({
            "revision": 42,
            "more": false,
            "objects": [
                {"id": "disk/h1/sdb", "labels": {"rack": "r7"}, "evidence": [], "attributes": {}},
                {"id": "machine/h2", "labels": {}, "evidence": [{"rule": "x", "time_ms": 1}], "attributes": {}},
            ],
            "nested": [[1, 2], []],
            "none": null,
        });
        // serde_json's maps are sorted by key.
        let want = "\
more: false
nested:
-
  - 1
  - 2
- []
none: null
objects:
- attributes: {}
  evidence: []
  id: disk/h1/sdb
  labels:
    rack: r7
- attributes: {}
  evidence:
  - rule: x
    time_ms: 1
  id: machine/h2
  labels: {}
revision: 42
";
        assert_eq!(to_yaml(&v), want);
        assert_eq!(to_yaml(&json!([])), "[]\n");
        assert_eq!(to_yaml(&json!({})), "{}\n");
        assert_eq!(to_yaml(&json!("yes")), "\"yes\"\n");
        assert_eq!(to_yaml(&json!(["a", 1.5, true])), "- a\n- 1.5\n- true\n");
    }

    #[test]
    fn strings_a_reader_could_misread_are_quoted_and_round_trip() {
        let tricky = [
            "",
            " ",
            "yes",
            "No",
            "off",
            "Y",
            "null",
            "~",
            "true",
            "0.1.0",
            "1",
            "-1",
            "+1",
            ".5",
            ".inf",
            "-.inf",
            "0x1f",
            "1e3",
            "12:30",
            "2026-12-02",
            "2026-12-02T05:00:00Z",
            "a: b",
            "a #b",
            "#x",
            "- x",
            "? x",
            "[x]",
            "{x}",
            "*x",
            "&x",
            "!x",
            "%x",
            "@x",
            "`x",
            "|",
            ">",
            "'q'",
            "\"q\"",
            "a\nb",
            "tab\there",
            "trailing ",
            "two  spaces",
            "ctl\u{1}",
            "del\u{7f}",
            "c1\u{85}",
            "sep\u{2028}",
            "bom\u{feff}",
            "ünïcode",
            "<<",
            "=",
            "a\\b",
        ];
        for t in tricky {
            let y = string(t);
            assert!(y.starts_with('"') && y.ends_with('"'), "{t:?} must be quoted, got {y}");
            assert!(
                !y.chars().any(|c| (c as u32) >= 0x7f && (c as u32) <= 0x9f),
                "{t:?}: raw control in {y}"
            );
            // YAML's double-quoted escapes include JSON's: reading it as JSON gives the string back.
            let back: String = serde_json::from_str(&y).expect("valid JSON string");
            assert_eq!(back, t);
        }
        for t in ["disk/h1/sdb", "ERROR", "auto", "rack=r7", "probe@1", "a b", "/dev/kmsg", "host-017", "_x"]
        {
            assert_eq!(string(t), t, "{t:?} is safe plain");
        }
        let long = "a".repeat(MAX_PLAIN + 1);
        assert!(string(&long).starts_with('"'), "over MAX_PLAIN is quoted");
        assert_eq!(string(&"a".repeat(MAX_PLAIN)), "a".repeat(MAX_PLAIN), "at MAX_PLAIN stays plain");
    }

    #[test]
    fn nesting_past_the_limit_is_flow_json() {
        let mut v = json!("leaf");
        for _ in 0..(MAX_YAML_DEPTH + 5) {
            v = json!([v]);
        }
        let y = to_yaml(&v);
        let deepest = y.lines().last().expect("lines");
        assert!(deepest.trim_start().starts_with("- [[") && deepest.ends_with("\"leaf\"]]]]]"), "{deepest}");
        let dashes = y.lines().count();
        assert_eq!(dashes, MAX_YAML_DEPTH, "one block line per level up to the limit");
    }
}
