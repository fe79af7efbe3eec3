//! `huatuo objects` printed as its pages arrive: the table, JSON and YAML alike hold one page at a time
//! (a listing of 1.5 M objects held whole was gigabytes in the operator's CLI).
//!
//! The documents are the ones `print_document` wrote for the whole listing, with the keys in the order
//! they become known: `objects`, then `more` and `revision` (JSON readers do not depend on key order;
//! the values are the same). The table's ID column is as wide as the longest id among the first
//! [`WIDTH_SAMPLE`] objects (it used to be the longest of all, which needs all of them first); a longer
//! id later pushes its row's other columns right.

use std::io::Write;

use proto::api;
use serde_json::Value;

use crate::output::Format;

/// Objects the table waits for before fixing its ID column's width (the master's default page).
pub const WIDTH_SAMPLE: usize = 1_000;

/// Writes one listing as its objects arrive.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    /// Table: objects held until the ID column's width is fixed (at most [`WIDTH_SAMPLE`]).
    held: Vec<api::Object>,
    width: Option<usize>,
    printed: usize,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format) -> Self {
        Printer { out, format, held: Vec::new(), width: None, printed: 0 }
    }

    /// One object of the listing, in listing order.
    pub fn object(&mut self, o: api::Object) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                let text = serde_json::to_string_pretty(&object_json(&o)).map_err(std::io::Error::other)?;
                let sep = if self.printed == 0 { "{\n  \"objects\": [\n" } else { ",\n" };
                self.out.write_all(sep.as_bytes())?;
                for (i, line) in text.lines().enumerate() {
                    if i > 0 {
                        self.out.write_all(b"\n")?;
                    }
                    write!(self.out, "    {line}")?;
                }
            }
            Format::Yaml => {
                if self.printed == 0 {
                    self.out.write_all(b"objects:\n")?;
                }
                let item = crate::output::to_yaml(&Value::Array(vec![object_json(&o)]));
                self.out.write_all(item.as_bytes())?;
            }
            Format::Table | Format::Wide => {
                if self.width.is_none() {
                    self.held.push(o);
                    if self.held.len() >= WIDTH_SAMPLE {
                        self.fix_width()?;
                    }
                    return Ok(());
                }
                self.row(&o)?;
            }
        }
        self.printed += 1;
        Ok(())
    }

    /// The end of the listing: its revision (its first page's) and whether more objects match than shown.
    pub fn finish(mut self, revision: u64, more: bool) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                let head = if self.printed == 0 { "{\n  \"objects\": []" } else { "\n  ]" };
                write!(self.out, "{head},\n  \"more\": {more},\n  \"revision\": {revision}\n}}\n")?;
            }
            Format::Yaml => {
                if self.printed == 0 {
                    self.out.write_all(b"objects: []\n")?;
                }
                write!(self.out, "more: {more}\nrevision: {revision}\n")?;
            }
            Format::Table | Format::Wide => {
                if self.width.is_none() {
                    self.fix_width()?;
                }
                let n = self.printed;
                let more = if more { format!(" (the first {n}: more match)") } else { String::new() };
                writeln!(self.out, "{n} objects at revision {revision}{more}")?;
            }
        }
        self.out.flush()
    }

    fn fix_width(&mut self) -> std::io::Result<()> {
        let w = self.held.iter().map(|o| o.id.len()).max().unwrap_or(2).max(2);
        self.width = Some(w);
        if self.format == Format::Wide {
            writeln!(
                self.out,
                "{:<w$}  {:<8} {:<8} {:>10}  {:<20}  {:>8}  LABELS",
                "ID", "STATE", "GRADE", "REVISION", "SINCE", "EVIDENCE"
            )?;
        } else {
            writeln!(self.out, "{:<w$}  {:<8} {:<8} {:>10}  LABELS", "ID", "STATE", "GRADE", "REVISION")?;
        }
        for o in std::mem::take(&mut self.held) {
            self.row(&o)?;
            self.printed += 1;
        }
        Ok(())
    }

    fn row(&mut self, o: &api::Object) -> std::io::Result<()> {
        let w = self.width.unwrap_or(2);
        let mut labels: Vec<String> = o.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        if self.format == Format::Wide {
            return writeln!(
                self.out,
                "{:<w$}  {:<8} {:<8} {:>10}  {:<20}  {:>8}  {}",
                o.id,
                o.state,
                o.grade,
                o.revision,
                crate::ops_cmd::utc(o.state_since_ms),
                o.evidence.len(),
                labels.join(",")
            );
        }
        writeln!(
            self.out,
            "{:<w$}  {:<8} {:<8} {:>10}  {}",
            o.id,
            o.state,
            o.grade,
            o.revision,
            labels.join(",")
        )
    }
}

/// One object as the JSON and YAML documents show it.
pub fn object_json(o: &api::Object) -> Value {
    serde_json::json!({
        "id": o.id, "kind": o.kind, "host": o.host, "state": o.state, "grade": o.grade,
        "state_since_ms": o.state_since_ms, "labels": o.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "attributes": o.attributes.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "revision": o.revision, "history_len": o.history_len, "history_compacted": o.history_compacted,
        "created_ms": o.created_ms,
        "evidence": o.evidence.iter().map(|f| serde_json::json!({
            "checker": f.checker, "version": f.version, "rule": f.rule, "severity": f.severity,
            "evidence": f.evidence, "time_ms": f.time_ms,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Object `i` on host `h` + `i` zero-padded to `pad` digits.
    fn obj(i: usize, pad: usize) -> api::Object {
        let host = format!("h{i:0>pad$}");
        api::Object {
            id: format!("disk/{host}/sda"),
            kind: "disk".into(),
            host,
            state: if i.is_multiple_of(3) { "ERROR" } else { "GOOD" }.into(),
            grade: String::new(),
            revision: i as u64 + 1,
            labels: [("rack".to_string(), format!("r{i}")), ("note".to_string(), "a: b".to_string())].into(),
            evidence: vec![api::Finding {
                checker: "smart".into(),
                evidence: "yes: no\n\"quoted\"".into(),
                time_ms: 7,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn print(objects: &[api::Object], format: Format, revision: u64, more: bool) -> String {
        let mut buf = Vec::new();
        let mut p = Printer::new(&mut buf, format);
        for o in objects {
            p.object(o.clone()).expect("write");
        }
        p.finish(revision, more).expect("finish");
        String::from_utf8(buf).expect("utf-8")
    }

    /// The document `huatuo objects` printed before it streamed: every object, then printed whole.
    fn whole(objects: &[api::Object], revision: u64, more: bool) -> Value {
        serde_json::json!({
            "revision": revision,
            "objects": objects.iter().map(object_json).collect::<Vec<_>>(),
            "more": more,
        })
    }

    #[test]
    fn the_streamed_json_is_the_whole_document() {
        for n in [0, 1, 2, 1_500] {
            let objects: Vec<_> = (0..n).map(|i| obj(i, 5)).collect();
            for more in [false, true] {
                let text = print(&objects, Format::Json, 42, more);
                let v: Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{n} objects: {e}\n{text}"));
                assert_eq!(v, whole(&objects, 42, more), "{n} objects");
                assert!(text.ends_with("}\n"));
            }
        }
    }

    #[test]
    fn the_streamed_yaml_is_the_whole_document_with_objects_first() {
        for n in [0, 1, 3] {
            let objects: Vec<_> = (0..n).map(|i| obj(i, 5)).collect();
            let text = print(&objects, Format::Yaml, 9, true);
            let old = crate::output::to_yaml(&whole(&objects, 9, true));
            // The old document: `more`, then `objects` (its items), then `revision` (keys sorted).
            let items = old
                .strip_prefix("more: true\n")
                .and_then(|r| r.strip_suffix("revision: 9\n"))
                .unwrap_or_else(|| panic!("{old}"));
            assert_eq!(text, format!("{items}more: true\nrevision: 9\n"), "{n} objects");
        }
    }

    #[test]
    fn the_table_is_aligned_by_the_first_objects_and_counts_every_one() {
        // Fewer than the sample: one width for all, as before.
        let objects: Vec<_> = (0..5).map(|i| obj(i, 2 + i)).collect();
        let text = print(&objects, Format::Table, 3, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        let state_col = lines[0].find("STATE").expect("header");
        assert!(
            lines[1..6]
                .iter()
                .all(|l| l[state_col..].starts_with("GOOD") || l[state_col..].starts_with("ERROR"))
        );
        assert_eq!(lines[6], "5 objects at revision 3");
        // More than the sample: rows printed as they come, a longer id later pushes its own row only.
        let mut objects: Vec<_> = (0..WIDTH_SAMPLE + 2).map(|i| obj(i, 5)).collect();
        objects[WIDTH_SAMPLE + 1] = obj(WIDTH_SAMPLE + 1, 20);
        let text = print(&objects, Format::Wide, 8, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), WIDTH_SAMPLE + 4);
        let state_col = lines[0].find("STATE").expect("header");
        assert!(lines[WIDTH_SAMPLE + 1][state_col..].starts_with("GOOD"), "{}", lines[WIDTH_SAMPLE + 1]);
        assert!(lines[WIDTH_SAMPLE + 2].len() > lines[WIDTH_SAMPLE + 1].len());
        assert_eq!(
            lines[WIDTH_SAMPLE + 3],
            format!(
                "{} objects at revision 8 (the first {}: more match)",
                WIDTH_SAMPLE + 2,
                WIDTH_SAMPLE + 2
            )
        );
        // Nothing listed: the header and the count.
        assert_eq!(
            print(&[], Format::Table, 1, false),
            "ID  STATE    GRADE      REVISION  LABELS\n0 objects at revision 1\n"
        );
    }
}
