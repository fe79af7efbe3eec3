//! The export's tables (deploy/analytics/SCHEMA.md): typed columns, rows, one writer per format (Parquet
//! through the `parquet` crate's column writers, CSV by hand) and a reader that yields any exported table's
//! rows as `BTreeMap<column, text>` for both formats (the predictor's loaders read exports through it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;

/// Rows per Parquet row group: bounds the writer's memory per column chunk.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// The schema version written to the manifest (SCHEMA.md).
pub const SCHEMA_VERSION: u32 = 1;
/// The SMART attributes exported as columns (`smart_N_raw`).
pub const SMART_ATTRS: [u16; predict::ATTRIBUTES.len()] = predict::ATTRIBUTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    I64,
    I32,
    F64,
    Bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Str(String),
    I64(i64),
    I32(i32),
    F64(f64),
    Bool(bool),
}

impl Val {
    pub fn opt_str(s: &str) -> Val {
        if s.is_empty() { Val::Null } else { Val::Str(s.to_string()) }
    }
    pub fn ms(v: u64) -> Val {
        Val::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

pub type Row = Vec<Val>;

#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub cols: Vec<(String, Ty)>,
}

fn cols(list: &[(&str, Ty)]) -> Vec<(String, Ty)> {
    list.iter().map(|(n, t)| (n.to_string(), *t)).collect()
}

fn smart_cols() -> Vec<(String, Ty)> {
    SMART_ATTRS.iter().map(|n| (format!("smart_{n}_raw"), Ty::F64)).collect()
}

use Ty::*;

pub fn objects() -> Table {
    Table {
        name: "objects",
        cols: cols(&[
            ("object", Str),
            ("kind", Str),
            ("host", Str),
            ("state", Str),
            ("state_since_ms", I64),
            ("model", Str),
            ("firmware", Str),
            ("serial", Str),
            ("capacity_bytes", I64),
            ("labels", Str),
            ("attributes", Str),
        ]),
    }
}

pub fn transitions() -> Table {
    Table {
        name: "transitions",
        cols: cols(&[
            ("time_ms", I64),
            ("object", Str),
            ("kind", Str),
            ("host", Str),
            ("from_state", Str),
            ("to_state", Str),
            ("cause", Str),
            ("checker", Str),
            ("checker_version", Str),
            ("revision", I64),
            ("cause_detail", Str),
            ("finding_time_ms", I64),
        ]),
    }
}

pub fn findings() -> Table {
    let mut c = cols(&[
        ("time_ms", I64),
        ("object", Str),
        ("kind", Str),
        ("host", Str),
        ("checker", Str),
        ("checker_version", Str),
        ("rule", Str),
        ("severity", Str),
        ("shadow", Bool),
        ("evidence", Str),
        ("readings", Str),
    ]);
    c.extend(smart_cols());
    c.push(("failure_probability".into(), F64));
    Table { name: "findings", cols: c }
}

pub fn disk_days() -> Table {
    let mut c = cols(&[
        ("date", Str),
        ("serial_number", Str),
        ("model", Str),
        ("capacity_bytes", I64),
        ("failure", I32),
        ("object", Str),
    ]);
    c.extend(smart_cols());
    Table { name: "disk_days", cols: c }
}

pub fn tickets() -> Table {
    Table {
        name: "tickets",
        cols: cols(&[
            ("object", Str),
            ("ticket", Str),
            ("filed_ms", I64),
            ("updated_ms", I64),
            ("status", Str),
            ("repair_entered_ms", I64),
            ("repair_left_ms", I64),
        ]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
        }
    }
}

/// The file of one day's partition: `DIR/table/day=YYYY-MM-DD/part-0.EXT`.
pub fn partition_file(dir: &Path, table: &str, day: &str, f: Format) -> PathBuf {
    dir.join(table).join(format!("day={day}")).join(format!("part-0.{}", f.ext()))
}

/// Write one partition (the rows of one table and day).
pub fn write_partition(dir: &Path, t: &Table, day: &str, rows: &[Row], f: Format) -> anyhow::Result<PathBuf> {
    // A row of the wrong width is refused before the file exists.
    check_widths(t, rows)?;
    let mut w = PartitionWriter::create(dir, t, day, f)?;
    w.push(rows)?;
    w.finish()
}

/// One partition written as its rows come: a caller that produces many rows (the objects of a whole
/// fleet) hands them over a row group at a time ([`ROW_GROUP_ROWS`]) and holds no more than that. Rows
/// pushed in row-group-sized batches give exactly the file [`write_partition`] writes for all of them.
pub struct PartitionWriter<'t> {
    path: PathBuf,
    t: &'t Table,
    out: Out,
}

enum Out {
    Parquet(SerializedFileWriter<File>),
    Csv(BufWriter<File>),
}

impl<'t> PartitionWriter<'t> {
    pub fn create(dir: &Path, t: &'t Table, day: &str, f: Format) -> anyhow::Result<Self> {
        let path = partition_file(dir, t.name, day, f);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let open = || -> anyhow::Result<Out> {
            let file = File::create(&path)?;
            Ok(match f {
                Format::Parquet => {
                    let schema = Arc::new(parquet::schema::parser::parse_message_type(&message_type(t))?);
                    let props =
                        Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
                    Out::Parquet(SerializedFileWriter::new(file, schema, props)?)
                }
                Format::Csv => {
                    let mut w = BufWriter::new(file);
                    let header: Vec<&str> = t.cols.iter().map(|(n, _)| n.as_str()).collect();
                    writeln!(w, "{}", header.join(","))?;
                    Out::Csv(w)
                }
            })
        };
        let out = open().with_context(|| format!("cannot write {}", path.display()))?;
        Ok(PartitionWriter { path, t, out })
    }

    /// Rows of the partition, in order: Parquet row groups of at most [`ROW_GROUP_ROWS`] each.
    pub fn push(&mut self, rows: &[Row]) -> anyhow::Result<()> {
        let t = self.t;
        check_widths(t, rows)?;
        let written = match &mut self.out {
            Out::Parquet(w) => {
                rows.chunks(ROW_GROUP_ROWS.max(1)).try_for_each(|group| write_row_group(w, t, group))
            }
            Out::Csv(w) => rows.iter().try_for_each(|r| {
                let line: Vec<String> = r.iter().map(csv_field).collect();
                writeln!(w, "{}", line.join(",")).map_err(anyhow::Error::from)
            }),
        };
        written.with_context(|| format!("cannot write {}", self.path.display()))
    }

    pub fn finish(self) -> anyhow::Result<PathBuf> {
        let done = match self.out {
            Out::Parquet(w) => w.close().map(|_| ()).map_err(anyhow::Error::from),
            Out::Csv(mut w) => w.flush().map_err(anyhow::Error::from),
        };
        done.with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(self.path)
    }
}

fn message_type(t: &Table) -> String {
    let mut s = format!("message {} {{\n", t.name);
    for (name, ty) in &t.cols {
        let ty = match ty {
            Str => "BYTE_ARRAY",
            I64 => "INT64",
            I32 => "INT32",
            F64 => "DOUBLE",
            Bool => "BOOLEAN",
        };
        let logical = if ty == "BYTE_ARRAY" { " (STRING)" } else { "" };
        s.push_str(&format!("  OPTIONAL {ty} {name}{logical};\n"));
    }
    s.push('}');
    s
}

fn check_widths(t: &Table, rows: &[Row]) -> anyhow::Result<()> {
    for r in rows {
        if r.len() != t.cols.len() {
            bail!("{}: a row of {} values for {} columns", t.name, r.len(), t.cols.len());
        }
    }
    Ok(())
}

fn write_row_group(w: &mut SerializedFileWriter<File>, t: &Table, group: &[Row]) -> anyhow::Result<()> {
    let mut rg = w.next_row_group()?;
    let mut i = 0;
    while let Some(mut col) = rg.next_column()? {
        let ty = t.cols[i].1;
        let defs: Vec<i16> = group.iter().map(|r| i16::from(r[i] != Val::Null)).collect();
        match ty {
            Str => {
                let v: Vec<ByteArray> = group
                    .iter()
                    .filter_map(|r| match &r[i] {
                        Val::Str(s) => Some(ByteArray::from(s.as_str())),
                        _ => None,
                    })
                    .collect();
                col.typed::<ByteArrayType>().write_batch(&v, Some(&defs), None)?;
            }
            I64 => {
                let v: Vec<i64> = group
                    .iter()
                    .filter_map(|r| if let Val::I64(x) = r[i] { Some(x) } else { None })
                    .collect();
                col.typed::<Int64Type>().write_batch(&v, Some(&defs), None)?;
            }
            I32 => {
                let v: Vec<i32> = group
                    .iter()
                    .filter_map(|r| if let Val::I32(x) = r[i] { Some(x) } else { None })
                    .collect();
                col.typed::<Int32Type>().write_batch(&v, Some(&defs), None)?;
            }
            F64 => {
                let v: Vec<f64> = group
                    .iter()
                    .filter_map(|r| if let Val::F64(x) = r[i] { Some(x) } else { None })
                    .collect();
                col.typed::<DoubleType>().write_batch(&v, Some(&defs), None)?;
            }
            Bool => {
                let v: Vec<bool> = group
                    .iter()
                    .filter_map(|r| if let Val::Bool(x) = r[i] { Some(x) } else { None })
                    .collect();
                col.typed::<BoolType>().write_batch(&v, Some(&defs), None)?;
            }
        }
        // A value of the wrong type for its column would silently shift the column: refuse it.
        let typed = group.iter().filter(|r| r[i] != Val::Null).count();
        let ok = group
            .iter()
            .filter(|r| {
                matches!(
                    (&r[i], ty),
                    (Val::Str(_), Str)
                        | (Val::I64(_), I64)
                        | (Val::I32(_), I32)
                        | (Val::F64(_), F64)
                        | (Val::Bool(_), Bool)
                )
            })
            .count();
        if ok != typed {
            bail!("{}: column {} holds values of another type", t.name, t.cols[i].0);
        }
        col.close()?;
        i += 1;
    }
    rg.close()?;
    Ok(())
}

fn csv_field(v: &Val) -> String {
    match v {
        Val::Null => String::new(),
        Val::Str(s) => format!("\"{}\"", s.replace('"', "\"\"")),
        Val::I64(x) => x.to_string(),
        Val::I32(x) => x.to_string(),
        // Always with a decimal point, so every file of a column reads as DOUBLE.
        Val::F64(x) => format!("{x:?}"),
        Val::Bool(b) => b.to_string(),
    }
}

/// Every row of `table` in an export directory (either format), partitions in day order, with the
/// partition's `day`; NULL values are absent from the map.
// Used by the predictor's loaders (`huatuo predict train --from DIR`), plugged on at merge; tested below.
#[cfg_attr(not(test), allow(dead_code))]
pub fn read_table(dir: &Path, table: &str) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let tdir = dir.join(table);
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&tdir)
        .with_context(|| format!("cannot read {}", tdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("day=")))
        .collect();
    parts.sort();
    let mut out = Vec::new();
    for p in parts {
        let day =
            p.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_start_matches("day=").to_string();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&p)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| f.is_file()).collect();
        files.sort();
        for f in files {
            let rows = match f.extension().and_then(|e| e.to_str()) {
                Some("parquet") => read_parquet(&f),
                Some("csv") => read_csv(&f),
                _ => continue,
            }
            .with_context(|| format!("cannot read {}", f.display()))?;
            for mut r in rows {
                r.insert("day".into(), day.clone());
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// One Parquet part as a header (the file's columns, in schema order) and rows of text fields ("" = NULL),
/// the shape of a CSV part: the predictor's loaders read both through one path.
pub fn read_parquet_table(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let columns: Vec<String> = SerializedFileReader::new(File::open(path)?)?
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let rows = read_parquet(path)?
        .into_iter()
        .map(|mut m| columns.iter().map(|c| m.remove(c).unwrap_or_default()).collect())
        .collect();
    Ok((columns, rows))
}

fn read_parquet(path: &Path) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let r = SerializedFileReader::new(File::open(path)?)?;
    let mut out = Vec::new();
    for row in r.get_row_iter(None)? {
        let row = row?;
        let mut m = BTreeMap::new();
        for (name, field) in row.get_column_iter() {
            let v = match field {
                Field::Null => continue,
                Field::Str(s) => s.clone(),
                Field::Bool(b) => b.to_string(),
                Field::Int(x) => x.to_string(),
                Field::Long(x) => x.to_string(),
                Field::Double(x) => x.to_string(),
                other => other.to_string(),
            };
            m.insert(name.clone(), v);
        }
        out.push(m);
    }
    Ok(out)
}

/// Split CSV text into records of fields (RFC 4180 quoting); `None` marks an empty unquoted field (NULL).
fn csv_records(text: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let mut out = Vec::new();
    let mut rec: Vec<Option<String>> = Vec::new();
    let mut field = String::new();
    let (mut quoted, mut in_quotes, mut at_start) = (false, false, true);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                in_quotes = true;
                at_start = false;
            }
            ',' | '\n' => {
                let f = std::mem::take(&mut field);
                rec.push(if f.is_empty() && !quoted { None } else { Some(f) });
                quoted = false;
                at_start = true;
                if c == '\n' {
                    out.push(std::mem::take(&mut rec));
                }
            }
            '\r' => {}
            c => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if in_quotes {
        bail!("unterminated quoted field");
    }
    if !field.is_empty() || !rec.is_empty() {
        rec.push(if field.is_empty() && !quoted { None } else { Some(field) });
        out.push(rec);
    }
    Ok(out)
}

fn read_csv(path: &Path) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let text = std::fs::read_to_string(path)?;
    let mut recs = csv_records(&text)?.into_iter();
    let header: Vec<String> =
        recs.next().ok_or_else(|| anyhow!("no header"))?.into_iter().map(|h| h.unwrap_or_default()).collect();
    let mut out = Vec::new();
    for (i, r) in recs.enumerate() {
        if r.len() != header.len() {
            bail!("line {}: {} fields for {} columns", i + 2, r.len(), header.len());
        }
        out.push(header.iter().zip(r).filter_map(|(h, v)| v.map(|v| (h.clone(), v))).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Table, Vec<Row>) {
        let t =
            Table { name: "t", cols: cols(&[("s", Str), ("n", I64), ("i", I32), ("x", F64), ("b", Bool)]) };
        let rows = vec![
            vec![
                Val::Str("a, \"quoted\"\nline".into()),
                Val::I64(-5),
                Val::I32(1),
                Val::F64(2.5),
                Val::Bool(true),
            ],
            vec![Val::Null, Val::Null, Val::Null, Val::Null, Val::Null],
            vec![Val::Str(String::new()), Val::I64(i64::MAX), Val::I32(0), Val::F64(12.0), Val::Bool(false)],
        ];
        (t, rows)
    }

    #[test]
    fn both_formats_read_back_what_was_written() {
        for f in [Format::Parquet, Format::Csv] {
            let dir = tempfile::tempdir().unwrap();
            let (t, rows) = sample();
            write_partition(dir.path(), &t, "2026-12-01", &rows, f).unwrap();
            write_partition(dir.path(), &t, "2026-11-30", &rows[..1], f).unwrap();
            let back = read_table(dir.path(), "t").unwrap();
            assert_eq!(back.len(), 4, "{f:?}");
            assert_eq!(back[0]["day"], "2026-11-30", "partitions in day order");
            let r = &back[1];
            assert_eq!(r["s"], "a, \"quoted\"\nline", "{f:?}");
            assert_eq!(r["n"], "-5");
            assert_eq!(r["x"], "2.5");
            assert_eq!(r["b"], "true");
            assert_eq!(back[2].len(), 1, "{f:?}: NULLs are absent, only the day remains: {:?}", back[2]);
            assert_eq!(back[3]["s"], "", "{f:?}: an empty string is not NULL");
            assert_eq!(back[3]["n"], i64::MAX.to_string());
            assert_eq!(back[3]["x"].parse::<f64>().unwrap(), 12.0);
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = sample();
        let bad = vec![vec![Val::I64(1), Val::I64(1), Val::I32(1), Val::F64(1.0), Val::Bool(true)]];
        assert!(write_partition(dir.path(), &t, "2026-12-01", &bad, Format::Parquet).is_err());
        let short = vec![vec![Val::Null]];
        let csv = dir.path().join("other");
        assert!(write_partition(&csv, &t, "2026-12-01", &short, Format::Csv).is_err());
        assert!(
            !partition_file(&csv, "t", "2026-12-01", Format::Csv).exists(),
            "refused before the file exists"
        );
    }

    /// Rows pushed a row group at a time make the file `write_partition` makes of all of them, byte for
    /// byte, in both formats; across several row groups and a last short one.
    #[test]
    fn a_partition_written_as_rows_come_is_the_same_file() {
        let (t, sample) = sample();
        let rows: Vec<Row> = (0..ROW_GROUP_ROWS * 2 + 7).map(|i| sample[i % sample.len()].clone()).collect();
        for f in [Format::Parquet, Format::Csv] {
            let (whole, parts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let a = write_partition(whole.path(), &t, "2026-12-01", &rows, f).unwrap();
            let mut w = PartitionWriter::create(parts.path(), &t, "2026-12-01", f).unwrap();
            for group in rows.chunks(ROW_GROUP_ROWS) {
                w.push(group).unwrap();
            }
            let b = w.finish().unwrap();
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{f:?}");
            assert_eq!(read_table(parts.path(), "t").unwrap().len(), rows.len(), "{f:?}");
        }
    }
}
