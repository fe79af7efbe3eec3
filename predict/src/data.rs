//! Drive-day rows (Backblaze Drive Stats' shape, and the `disk_days` table of `huatuo export`), per-drive
//! histories built from them as a stream, labels "fails within H days", and the train/eval splits.
//!
//! Rows come through the [`Row`] trait (column name -> text), so a CSV reader (here, [`CsvHeader`]) and a
//! Parquet reader can feed the same loader. The loader keeps each drive's last [`crate::MAX_HISTORY_DAYS`] days (a
//! [`DiskHistory`], exactly what the agent keeps) and, per drive-day, only the candidate features' values: the
//! raw text is never held (the 88 MB 2013 file: 348 MB peak RSS for the whole `huatuo predict eval`, mostly
//! 20,120 drives' histories, every `smart_N_raw` column kept, and 763,303 x 32 f32 feature values).

use std::collections::{BTreeMap, HashMap};

use crate::{ATTRIBUTES, DaySample, DiskHistory, Feature, MAX_NAME_LEN, MAX_RAW};

/// Most drive-days one dataset holds (~100 bytes each: 2 GB at the limit). Backblaze's whole 2013-2024
/// history is ~500 million; a year of one fleet's disks far less. Past it the loader stops with an error
/// instead of eating the machine.
pub const MAX_ROWS: usize = 20_000_000;
/// Longest CSV line accepted (Backblaze's widest files are ~2 KB a line); a longer one is a broken file.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The attributes of the baseline rule: a drive-day is flagged when any of their raw values is above 0
/// (the rule Backblaze's own analysis points to).
pub const BASELINE_ATTRIBUTES: [u16; 5] = [5, 187, 188, 197, 198];
/// Counters whose growth the model watches (7- and 30-day deltas, nonzero flags). Error counters only: they
/// grow with faults, not with the calendar, which is what lets a snapshot's model use them (see
/// ARCHITECTURE.md, "date leakage"). 184 (end-to-end errors) was added for the 2019 snapshots.
pub const COUNTER_ATTRIBUTES: [u16; 7] = [5, 187, 188, 197, 198, 199, 184];
/// Windows of the delta features, in days.
pub const DELTA_WINDOWS: [u32; 2] = [7, 30];
/// Columns every drive-day source must have.
pub const REQUIRED_COLUMNS: [&str; 4] = ["date", "serial_number", "model", "failure"];

/// The features computed from a drive's history at every drive-day (model one-hots are added at training,
/// from the drive's model string). Order is fixed: it is the layout of [`Dataset`]'s feature table.
pub fn candidate_features() -> Vec<Feature> {
    let mut f: Vec<Feature> = ATTRIBUTES.iter().map(|&attr| Feature::Raw { attr }).collect();
    f.extend(COUNTER_ATTRIBUTES.iter().map(|&attr| Feature::NonZero { attr }));
    f.push(Feature::AnyNonZero { attrs: BASELINE_ATTRIBUTES.to_vec() });
    for days in DELTA_WINDOWS {
        f.extend(COUNTER_ATTRIBUTES.iter().map(|&attr| Feature::Delta { attr, days }));
    }
    f
}

/// `YYYY-MM-DD` -> days since 1970-01-01.
pub fn parse_day(s: &str) -> Result<u32, String> {
    let bad = || format!("date {s:?} is not YYYY-MM-DD");
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok()).ok_or_else(bad);
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1970..=2200).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return Err(bad());
    }
    Ok(days_from_civil(y, m as u32, d as u32) as u32)
}

/// Days since 1970-01-01 -> `YYYY-MM-DD`.
pub fn format_day(day: u32) -> String {
    civil_date(i64::from(day))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm); the one copy the
/// workspace uses (export partitions, kernel-log timestamps, drive-day files).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, negative before), the inverse of
/// [`days_from_civil`].
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Split one CSV line into `out` (cleared first). Fields may be quoted (`"a,b"`, `""` for a quote inside);
/// a field spanning lines is not supported (no drive-day source writes one) and is an error.
pub fn split_csv_line(line: &str, out: &mut Vec<String>) -> Result<(), String> {
    out.clear();
    if line.len() > MAX_LINE_BYTES {
        return Err(format!("line of {} bytes, over the {MAX_LINE_BYTES}-byte limit", line.len()));
    }
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        return Err("text after a closing quote".into());
                    }
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && at_start {
            quoted = true;
            at_start = false;
        } else if c == ',' {
            out.push(std::mem::take(&mut field));
            at_start = true;
        } else {
            field.push(c);
            at_start = false;
        }
    }
    if quoted {
        return Err("unterminated quote (fields spanning lines are not supported)".into());
    }
    out.push(field);
    Ok(())
}

/// One row of a table: a column's text by name (`None` when the source has no such column; an empty string
/// is a missing value).
pub trait Row {
    fn get(&self, column: &str) -> Option<&str>;
}

impl Row for HashMap<String, String> {
    fn get(&self, column: &str) -> Option<&str> {
        HashMap::get(self, column).map(String::as_str)
    }
}

/// A CSV file's header: column name -> position.
#[derive(Debug, Clone)]
pub struct CsvHeader {
    index: HashMap<String, usize>,
    len: usize,
}

impl CsvHeader {
    pub fn parse(line: &str) -> Result<CsvHeader, String> {
        let mut names = Vec::new();
        split_csv_line(line.trim_start_matches('\u{feff}'), &mut names)?;
        let mut index = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if index.insert(n.trim().to_string(), i).is_some() {
                return Err(format!("column {n:?} appears twice in the header"));
            }
        }
        Ok(CsvHeader { index, len: names.len() })
    }

    pub fn has(&self, column: &str) -> bool {
        self.index.contains_key(column)
    }

    /// A data line's fields as a [`Row`]; a line with another number of fields than the header is refused.
    pub fn row<'a>(&'a self, fields: &'a [String]) -> Result<CsvRow<'a>, String> {
        if fields.len() != self.len {
            return Err(format!("{} fields, the header has {}", fields.len(), self.len));
        }
        Ok(CsvRow { header: self, fields })
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }
}

pub struct CsvRow<'a> {
    header: &'a CsvHeader,
    fields: &'a [String],
}

impl Row for CsvRow<'_> {
    fn get(&self, column: &str) -> Option<&str> {
        self.header.index.get(column).map(|&i| self.fields[i].as_str())
    }
}

/// Check a drive-day source's columns: the required ones, and at least one known `smart_N_raw`.
pub fn check_drive_day_columns<'a>(columns: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let have: std::collections::BTreeSet<&str> = columns.into_iter().collect();
    let missing: Vec<&str> = REQUIRED_COLUMNS.iter().copied().filter(|c| !have.contains(c)).collect();
    if !missing.is_empty() {
        return Err(format!("missing required column(s) {}", missing.join(", ")));
    }
    if !ATTRIBUTES.iter().any(|a| have.contains(crate::raw_column(*a).as_str())) {
        let known: Vec<String> = ATTRIBUTES.iter().map(|a| crate::raw_column(*a)).collect();
        return Err(format!("no SMART raw column; at least one of {} is needed", known.join(", ")));
    }
    Ok(())
}

/// One disk's SMART readings on one day.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveDay {
    pub day: u32,
    pub serial: String,
    pub model: String,
    /// The drive failed (Backblaze) or entered ERROR/REPAIR (our export) on this day.
    pub failure: bool,
    pub raw: BTreeMap<u16, f64>,
}

/// Parse a raw SMART value: empty is missing; NaN, infinities, negative and absurd (> [`MAX_RAW`]) values are
/// errors. Backblaze writes integers, some extractors floats (`47884664.0`): both are taken.
pub fn parse_raw(column: &str, text: &str) -> Result<Option<f64>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let v: f64 = t.parse().map_err(|_| format!("{column} = {t:?} is not a number"))?;
    if !v.is_finite() || !(0.0..=MAX_RAW).contains(&v) {
        return Err(format!("{column} = {t} is not a plausible count (0 ..= 2^53)"));
    }
    Ok(Some(v))
}

/// The SMART attribute ids whose `smart_N_raw` column a source has (N in 1..=[`crate::MAX_SMART_ID`]),
/// ascending; other names (`smart_300_raw`, `smart_5_normalized`) are ignored.
pub fn smart_ids<'a>(columns: impl IntoIterator<Item = &'a str>) -> Vec<u16> {
    let mut ids: Vec<u16> = columns
        .into_iter()
        .filter_map(|c| c.strip_prefix("smart_")?.strip_suffix("_raw")?.parse::<u16>().ok())
        .filter(|id| (1..=crate::MAX_SMART_ID).contains(id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `smart_N_raw` for every id 0..=255, built once (the loader looks columns up by name on every row).
fn raw_column_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| (0..=crate::MAX_SMART_ID).map(crate::raw_column).collect())
}

/// Read one drive-day from a row, keeping every `smart_N_raw` column (N in 1..=255) it has. The columns must
/// have been checked with [`check_drive_day_columns`]. A loader that knows its columns should call
/// [`drive_day_with`] with [`smart_ids`] of them: it avoids 255 look-ups per row.
pub fn drive_day(row: &impl Row) -> Result<DriveDay, String> {
    let all: Vec<u16> = (1..=crate::MAX_SMART_ID).collect();
    drive_day_with(row, &all)
}

/// [`drive_day`] reading only the SMART ids given (those the source has; ids over 255 are ignored).
pub fn drive_day_with(row: &impl Row, smart: &[u16]) -> Result<DriveDay, String> {
    let col = |c: &str| row.get(c).ok_or_else(|| format!("missing column {c}"));
    let day = parse_day(col("date")?.trim())?;
    let serial = col("serial_number")?.trim();
    if serial.is_empty() || serial.len() > MAX_NAME_LEN {
        return Err(format!("serial_number of 1..={MAX_NAME_LEN} bytes wanted, got {serial:?}"));
    }
    let model = col("model")?.trim();
    if model.len() > MAX_NAME_LEN {
        return Err(format!("model string over {MAX_NAME_LEN} bytes"));
    }
    let failure = match col("failure")?.trim() {
        "0" | "0.0" | "false" | "" => false,
        "1" | "1.0" | "true" => true,
        other => return Err(format!("failure = {other:?}; 0 or 1 wanted")),
    };
    let mut raw = BTreeMap::new();
    let names = raw_column_names();
    for &attr in smart {
        let Some(name) = names.get(attr as usize).filter(|_| attr >= 1) else { continue };
        if let Some(text) = row.get(name)
            && let Some(v) = parse_raw(name, text)?
        {
            raw.insert(attr, v);
        }
    }
    Ok(DriveDay { day, serial: serial.to_string(), model: model.to_string(), failure, raw })
}

/// A drive as the dataset knows it.
#[derive(Debug, Clone)]
pub struct Drive {
    pub serial: String,
    pub model: String,
    pub first_day: u32,
    pub last_day: u32,
    /// Days on which it failed, ascending (Backblaze: at most one, its last day).
    pub failures: Vec<u32>,
}

/// One drive-day as kept: which drive, which day, how much history it had, and the baseline rule's verdict.
/// Its candidate features' values are row `i` of [`Dataset::features`].
#[derive(Debug, Clone, Copy)]
pub struct DayRow {
    pub drive: u32,
    pub day: u32,
    /// The drive's history span on this day (newest - oldest kept + 1), for `min_history_days`.
    pub span: u16,
    /// Any of [`BASELINE_ATTRIBUTES`] raw > 0 on this day.
    pub baseline: bool,
}

/// Drive-days streamed into per-drive histories and per-day candidate feature values.
pub struct Dataset {
    pub candidates: Vec<Feature>,
    pub drives: Vec<Drive>,
    pub rows: Vec<DayRow>,
    /// `rows.len() * candidates.len()` values, row-major; NaN = the history lacked the attribute.
    pub features: Vec<f32>,
    /// Each drive's history as of its last row (what the agent would hold): used to time scoring.
    pub histories: Vec<DiskHistory>,
    by_serial: HashMap<String, u32>,
    /// [`MAX_ROWS`] unless a test sets a smaller one.
    pub max_rows: usize,
}

impl Default for Dataset {
    fn default() -> Self {
        Self::new()
    }
}

impl Dataset {
    pub fn new() -> Dataset {
        Dataset {
            candidates: candidate_features(),
            drives: Vec::new(),
            rows: Vec::new(),
            features: Vec::new(),
            histories: Vec::new(),
            by_serial: HashMap::new(),
            max_rows: MAX_ROWS,
        }
    }

    /// Add one drive-day. A drive's rows must come in date order (Backblaze's files and our export's
    /// partitions do); a row older than the drive's newest is an error, a second row for the same day
    /// replaces nothing and is an error too (a duplicated file).
    pub fn push(&mut self, d: DriveDay) -> Result<(), String> {
        if self.rows.len() >= self.max_rows {
            return Err(format!("more than {} drive-days; load a shorter range", self.max_rows));
        }
        let id = match self.by_serial.get(&d.serial) {
            Some(&id) => id,
            None => {
                let id = self.drives.len() as u32;
                self.drives.push(Drive {
                    serial: d.serial.clone(),
                    model: d.model.clone(),
                    first_day: d.day,
                    last_day: d.day,
                    failures: Vec::new(),
                });
                self.histories.push(DiskHistory::new(&d.model));
                self.by_serial.insert(d.serial.clone(), id);
                id
            }
        };
        let drive = &mut self.drives[id as usize];
        let history = &mut self.histories[id as usize];
        if !history.days.is_empty() && d.day <= drive.last_day {
            return Err(format!(
                "drive {}: day {} comes after day {} (rows of a drive must be in date order, once per day)",
                d.serial,
                format_day(d.day),
                format_day(drive.last_day)
            ));
        }
        let baseline = BASELINE_ATTRIBUTES.iter().any(|a| d.raw.get(a).is_some_and(|v| *v > 0.0));
        history.push(DaySample { day: d.day, raw: d.raw }).map_err(|e| e.to_string())?;
        drive.last_day = d.day;
        if d.failure {
            drive.failures.push(d.day);
        }
        for f in &self.candidates {
            self.features.push(f.value(history).map_or(f32::NAN, |v| v as f32));
        }
        let span = history.span_days().min(u16::MAX as u32) as u16;
        self.rows.push(DayRow { drive: id, day: d.day, span, baseline });
        Ok(())
    }

    /// Candidate feature `j`'s value on row `i` (`None`: the history lacked the attribute).
    pub fn value(&self, i: usize, j: usize) -> Option<f64> {
        let v = self.features[i * self.candidates.len() + j];
        if v.is_nan() { None } else { Some(v as f64) }
    }

    /// A feature's value on row `i`: a candidate's stored value, or a model one-hot from the drive's model.
    /// `None` for a feature this dataset did not compute.
    pub fn feature_value(&self, i: usize, f: &Feature) -> Option<f64> {
        if let Feature::ModelIs { model } = f {
            let drive = &self.drives[self.rows[i].drive as usize];
            return Some(if drive.model == *model { 1.0 } else { 0.0 });
        }
        let j = self.candidates.iter().position(|c| c == f)?;
        self.value(i, j)
    }

    /// Does row `i`'s drive fail within `horizon` days of the row's day (on it, or up to `horizon - 1` days
    /// later)?
    pub fn label(&self, i: usize, horizon: u32) -> bool {
        let r = self.rows[i];
        self.drives[r.drive as usize].failures.iter().any(|&f| f >= r.day && f - r.day < horizon)
    }

    /// Every drive has exactly one row: a snapshot (the 2019 files), with no history to split in time.
    pub fn is_snapshot(&self) -> bool {
        !self.drives.is_empty() && self.rows.len() == self.drives.len()
    }

    pub fn day_range(&self) -> Option<(u32, u32)> {
        let lo = self.rows.iter().map(|r| r.day).min()?;
        let hi = self.rows.iter().map(|r| r.day).max()?;
        Some((lo, hi))
    }
}

/// Which side of the evaluation a drive-day is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Train,
    Eval,
}

/// Which drives a split evaluates (the others train). Either way the choice is the seeded hash of the serial,
/// so a drive's side depends on its serial and the seed only, never on the order rows arrive in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeldOut {
    /// One hold-out: the drives whose [`unit_hash`] is below the fraction.
    Fraction(f64),
    /// Fold `fold` (0-based) of a `folds`-fold cross-validation: the drives [`fold_of`] puts in it.
    Fold { fold: u32, folds: u32 },
}

/// Fewest and most folds a cross-validation may have: 2 is the least that leaves anything to train on, and
/// past 20 each fold holds a handful of the fixtures' failed drives while training costs grow linearly.
pub const FOLDS: std::ops::RangeInclusive<u32> = 2..=20;

/// How drive-days are split between training and evaluation. A drive is on one side only, always.
#[derive(Debug, Clone, PartialEq)]
pub enum Split {
    /// Time split with a drive-level split inside it: each drive is assigned to train or eval (seeded hash
    /// of its serial, see [`HeldOut`]); train uses the train drives' days before `cut_day`, eval the eval
    /// drives' days from `cut_day` on. So training never sees a later day than any evaluated one's cut, and
    /// never sees an evaluated drive at all.
    Time { cut_day: u32, held_out: HeldOut, seed: u64 },
    /// Drive split only (snapshots, one row per drive): seeded hash of the serial.
    Drive { held_out: HeldOut, seed: u64 },
}

/// splitmix64: a small, fixed, well-mixed hash (deterministic across platforms and releases).
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform number in [0, 1) from a seed and a string (FNV-1a then splitmix64).
pub fn unit_hash(seed: u64, s: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    (mix64(h ^ mix64(seed)) >> 11) as f64 / (1u64 << 53) as f64
}

/// The fold (0-based, below `folds`) a drive belongs to: equal slices of [`unit_hash`]. An integer, so each
/// drive is in exactly one fold with no floating-point boundary to fall between.
pub fn fold_of(seed: u64, serial: &str, folds: u32) -> u32 {
    let k = folds.max(1);
    ((unit_hash(seed, serial) * k as f64) as u32).min(k - 1)
}

impl Split {
    fn held_out_and_seed(&self) -> (HeldOut, u64) {
        match self {
            Split::Time { held_out, seed, .. } | Split::Drive { held_out, seed } => (*held_out, *seed),
        }
    }

    pub fn eval_drive(&self, serial: &str) -> bool {
        match self.held_out_and_seed() {
            (HeldOut::Fraction(frac), seed) => unit_hash(seed, serial) < frac,
            (HeldOut::Fold { fold, folds }, seed) => fold_of(seed, serial, folds) == fold,
        }
    }

    /// The `folds` splits of a cross-validation by drive, one per fold, each holding out that fold's drives
    /// with this split's kind, cut and seed (a time split stays a time split: every fold's model trains on
    /// its drives' days before the cut and scores its held-out drives' days from the cut on). Refused for a
    /// fold count outside [`FOLDS`].
    pub fn folds(&self, folds: u32) -> Result<Vec<Split>, String> {
        if !FOLDS.contains(&folds) {
            return Err(format!(
                "{folds} folds; {}..={} wanted (each fold is held out once, so at least 2)",
                FOLDS.start(),
                FOLDS.end()
            ));
        }
        let (_, seed) = self.held_out_and_seed();
        Ok((0..folds)
            .map(|fold| {
                let held_out = HeldOut::Fold { fold, folds };
                match self {
                    Split::Time { cut_day, .. } => Split::Time { cut_day: *cut_day, held_out, seed },
                    Split::Drive { .. } => Split::Drive { held_out, seed },
                }
            })
            .collect())
    }

    /// The side of row `i`, or `None` when it is on neither (a train drive's day after the cut, an eval
    /// drive's day before it).
    pub fn side(&self, ds: &Dataset, i: usize) -> Option<Side> {
        let r = ds.rows[i];
        let eval = self.eval_drive(&ds.drives[r.drive as usize].serial);
        match self {
            Split::Drive { .. } => Some(if eval { Side::Eval } else { Side::Train }),
            Split::Time { cut_day, .. } => match (eval, r.day >= *cut_day) {
                (false, false) => Some(Side::Train),
                (true, true) => Some(Side::Eval),
                _ => None,
            },
        }
    }

    /// What a `folds`-fold cross-validation over this split does, for the command to print.
    pub fn describe_folds(&self, folds: u32) -> String {
        let (_, seed) = self.held_out_and_seed();
        let how = format!(
            "{folds}-fold cross-validation by drive (seed {seed}), pooled scores: each drive is in one fold; each \
             fold's model is trained on the other folds' drives"
        );
        match self {
            Split::Time { cut_day, .. } => format!(
                "{how}' days before {} and scores its own drives' days from it on; the held-out scores of all \
                 folds are pooled and evaluated once",
                format_day(*cut_day)
            ),
            Split::Drive { .. } => format!(
                "{how} and scores its own; the held-out scores of all folds are pooled and evaluated once"
            ),
        }
    }

    pub fn describe(&self) -> String {
        let (held_out, seed) = self.held_out_and_seed();
        let drives = match held_out {
            HeldOut::Fraction(f) => format!("{:.0}% of drives (seed {seed})", f * 100.0),
            HeldOut::Fold { fold, folds } => format!("fold {} of {folds} by drive (seed {seed})", fold + 1),
        };
        match self {
            Split::Time { cut_day, .. } => format!(
                "time split at {} with a drive split inside it: {drives} evaluated on their days from the cut \
                 on, the others trained on their days before it",
                format_day(*cut_day)
            ),
            Split::Drive { .. } => format!("drive split: {drives} held out for evaluation"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn dd(day: u32, serial: &str, failure: bool, r5: f64) -> DriveDay {
        DriveDay { day, serial: serial.into(), model: "M".into(), failure, raw: [(5, r5), (9, 100.0)].into() }
    }

    #[test]
    fn days_round_trip_and_bad_dates_are_refused() {
        assert_eq!(parse_day("1970-01-01"), Ok(0));
        assert_eq!(parse_day("2013-04-10"), Ok(15_805));
        for d in [0, 15_805, 18_000, 20_000, 59, 60] {
            assert_eq!(parse_day(&format_day(d)), Ok(d));
        }
        assert_eq!(format_day(parse_day("2020-02-29").expect("leap")), "2020-02-29");
        for bad in ["2019-02-29", "2019-13-01", "2019-1-01", "x", "", "2019-00-10", "1969-12-31"] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_lines_split_with_quotes() {
        let mut out = Vec::new();
        split_csv_line("a,\"b,c\",,\"d\"\"e\"\r\n", &mut out).expect("ok");
        assert_eq!(out, ["a", "b,c", "", "d\"e"]);
        split_csv_line("", &mut out).expect("ok");
        assert_eq!(out, [""]);
        assert!(split_csv_line("a,\"b", &mut out).is_err());
        assert!(split_csv_line("a,\"b\"c", &mut out).is_err());
        assert!(split_csv_line(&"x".repeat(MAX_LINE_BYTES + 1), &mut out).is_err());
    }

    #[test]
    fn loader_errors_are_clear() {
        let cols = ["date", "serial_number", "model", "failure", "smart_5_raw"];
        assert!(check_drive_day_columns(cols).is_ok());
        let e = check_drive_day_columns(["date", "model", "smart_5_raw"]).expect_err("missing");
        assert!(e.contains("serial_number") && e.contains("failure"), "{e}");
        let e = check_drive_day_columns(["date", "serial_number", "model", "failure"]).expect_err("no smart");
        assert!(e.contains("smart_5_raw"), "{e}");
        let base = [("date", "2013-04-10"), ("serial_number", "S1"), ("model", "M"), ("failure", "0")];
        let ok =
            drive_day(&row(&[&base[..], &[("smart_5_raw", "3"), ("smart_9_raw", "")]].concat())).expect("ok");
        assert_eq!(ok.raw, [(5, 3.0)].into());
        for (v, what) in
            [("NaN", "plausible"), ("-1", "plausible"), ("1e300", "plausible"), ("abc", "number")]
        {
            let e = drive_day(&row(&[&base[..], &[("smart_5_raw", v)]].concat())).expect_err(v);
            assert!(e.contains("smart_5_raw") && e.contains(what), "{v}: {e}");
        }
        let e = drive_day(&row(&[
            ("date", "2013-04-10"),
            ("serial_number", "S"),
            ("model", "M"),
            ("failure", "2"),
        ]))
        .expect_err("failure");
        assert!(e.contains("failure"), "{e}");
    }

    #[test]
    fn every_smart_raw_column_is_kept_up_to_id_255() {
        let cols = [
            "date",
            "serial_number",
            "model",
            "failure",
            "smart_0_raw",
            "smart_1_raw",
            "smart_184_raw",
            "smart_184_normalized",
            "smart_241_raw",
            "smart_255_raw",
            "smart_256_raw",
            "smart_x_raw",
        ];
        // Ids 1..=255 only, ascending; normalized and out-of-range names are not SMART raw columns.
        assert_eq!(smart_ids(cols), vec![1, 184, 241, 255]);
        let vals = ["2019-06-01", "S", "M", "0", "7", "1", "2", "100", "3", "4", "5", "6"];
        let r = row(&cols.iter().copied().zip(vals).collect::<Vec<_>>());
        let all = drive_day(&r).expect("ok");
        assert_eq!(all.raw, [(1, 1.0), (184, 2.0), (241, 3.0), (255, 4.0)].into());
        assert_eq!(drive_day_with(&r, &smart_ids(cols)).expect("ok"), all);
        // Ids outside 1..=255 passed by a caller are ignored, not read or indexed out of bounds.
        assert_eq!(drive_day_with(&r, &[0, 184, 256, u16::MAX]).expect("ok").raw, [(184, 2.0)].into());
        // A column outside ATTRIBUTES is checked like the others.
        let bad = row(&[
            ("date", "2019-06-01"),
            ("serial_number", "S"),
            ("model", "M"),
            ("failure", "0"),
            ("smart_241_raw", "NaN"),
        ]);
        let e = drive_day(&bad).expect_err("NaN");
        assert!(e.contains("smart_241_raw") && e.contains("plausible"), "{e}");
    }

    #[test]
    fn dataset_labels_and_refuses_going_back() {
        let mut ds = Dataset::new();
        for d in 0..10 {
            ds.push(dd(100 + d, "A", d == 9, d as f64)).expect("push");
            ds.push(dd(100 + d, "B", false, 0.0)).expect("push");
        }
        assert!(ds.push(dd(105, "A", false, 0.0)).is_err(), "going back");
        assert!(ds.push(dd(109, "B", false, 0.0)).is_err(), "same day twice");
        assert_eq!(ds.rows.len(), 20);
        ds.max_rows = 21;
        ds.push(dd(110, "B", false, 0.0)).expect("the 21st row is at the limit");
        let e = ds.push(dd(111, "B", false, 0.0)).expect_err("over the limit");
        assert!(e.contains("more than 21 drive-days"), "{e}");
        assert_eq!(ds.rows.len(), 21, "a refused row changes nothing");
        ds.rows.pop();
        ds.features.truncate(ds.rows.len() * ds.candidates.len());
        // Row 0 is A's day 100; it fails on day 109: within 10 days, not within 9.
        assert!(ds.label(0, 10));
        assert!(!ds.label(0, 9));
        assert!(ds.label(18, 1), "the failure day itself is positive");
        assert!(!ds.label(1, 30), "B never fails");
        assert!(ds.rows[18].baseline && !ds.rows[0].baseline);
        let j = ds.candidates.iter().position(|f| *f == Feature::Delta { attr: 5, days: 7 }).expect("delta");
        let v = ds.value(18, j).expect("present");
        assert!((v - 7f64.ln_1p()).abs() < 1e-6, "{v} (stored as f32)");
        assert_eq!(ds.feature_value(18, &Feature::ModelIs { model: "M".into() }), Some(1.0));
        assert!(!ds.is_snapshot());
    }

    #[test]
    fn splits_never_put_a_drive_on_both_sides() {
        let mut ds = Dataset::new();
        for d in 0..40 {
            for s in 0..200 {
                ds.push(dd(1000 + d, &format!("S{s}"), false, 0.0)).expect("push");
            }
        }
        for split in [
            Split::Time { cut_day: 1020, held_out: HeldOut::Fraction(0.5), seed: 7 },
            Split::Drive { held_out: HeldOut::Fraction(0.3), seed: 7 },
        ] {
            let mut side_of: HashMap<u32, Side> = HashMap::new();
            let (mut train, mut eval) = (0, 0);
            for i in 0..ds.rows.len() {
                let Some(side) = split.side(&ds, i) else { continue };
                let prev = side_of.insert(ds.rows[i].drive, side);
                assert!(prev.is_none() || prev == Some(side), "{split:?}: drive on both sides");
                if let Split::Time { cut_day, .. } = split {
                    assert_eq!(side == Side::Eval, ds.rows[i].day >= cut_day);
                }
                if side == Side::Train { train += 1 } else { eval += 1 }
            }
            assert!(train > 0 && eval > 0, "{split:?}: {train} {eval}");
        }
    }

    /// 200 drives over 40 days (day 1000..1039), all healthy: enough to check where each drive-day goes.
    fn fleet() -> Dataset {
        let mut ds = Dataset::new();
        for d in 0..40 {
            for s in 0..200 {
                ds.push(dd(1000 + d, &format!("S{s}"), false, 0.0)).expect("push");
            }
        }
        ds
    }

    #[test]
    fn folds_hold_every_drive_out_once_and_never_train_on_it() {
        let ds = fleet();
        for base in [
            Split::Drive { held_out: HeldOut::Fraction(0.3), seed: 7 },
            Split::Time { cut_day: 1020, held_out: HeldOut::Fraction(0.5), seed: 7 },
        ] {
            for k in [2, 5, 20] {
                let folds = base.folds(k).expect("folds");
                assert_eq!(folds.len(), k as usize);
                // Per row: how many folds evaluate it; per drive: the folds evaluating any of its rows.
                let mut evaluated = vec![0; ds.rows.len()];
                let mut eval_folds: HashMap<u32, Vec<usize>> = HashMap::new();
                for (f, split) in folds.iter().enumerate() {
                    let mut drives_here = 0;
                    for (i, times) in evaluated.iter_mut().enumerate() {
                        let drive = ds.rows[i].drive;
                        let held = fold_of(7, &ds.drives[drive as usize].serial, k) == f as u32;
                        match split.side(&ds, i) {
                            Some(Side::Eval) => {
                                assert!(held, "{split:?}: row {i} evaluated outside its fold");
                                *times += 1;
                                eval_folds.entry(drive).or_default().push(f);
                                drives_here += 1;
                            }
                            Some(Side::Train) => assert!(!held, "{split:?}: row {i} trains its own fold"),
                            None => {}
                        }
                    }
                    assert!(drives_here > 0, "{split:?}: an empty fold");
                }
                for (i, n) in evaluated.iter().enumerate() {
                    // A time split evaluates days from the cut on; a drive split every row.
                    let want = match base {
                        Split::Time { cut_day, .. } => usize::from(ds.rows[i].day >= cut_day),
                        Split::Drive { .. } => 1,
                    };
                    assert_eq!(*n, want, "{base:?} k={k}: row {i} evaluated {n} times");
                }
                assert_eq!(eval_folds.len(), ds.drives.len(), "every drive is evaluated");
                for (drive, fs) in &eval_folds {
                    assert!(fs.windows(2).all(|w| w[0] == w[1]), "drive {drive} in folds {fs:?}");
                }
            }
        }
    }

    #[test]
    fn fold_assignment_is_fixed_by_the_seed_and_k_is_checked() {
        let base = Split::Drive { held_out: HeldOut::Fraction(0.3), seed: 3 };
        assert_eq!(base.folds(5), base.folds(5));
        let serials: Vec<String> = (0..500).map(|s| format!("Z{s}")).collect();
        let a: Vec<u32> = serials.iter().map(|s| fold_of(3, s, 5)).collect();
        assert_eq!(a, serials.iter().map(|s| fold_of(3, s, 5)).collect::<Vec<_>>(), "deterministic");
        assert_ne!(
            a,
            serials.iter().map(|s| fold_of(4, s, 5)).collect::<Vec<_>>(),
            "another seed, other folds"
        );
        assert!(a.iter().all(|f| *f < 5));
        // Roughly equal folds: 100 each expected, 500 drives.
        for f in 0..5 {
            let n = a.iter().filter(|x| **x == f).count();
            assert!((60..=140).contains(&n), "fold {f}: {n} drives");
        }
        for bad in [0, 1, 21, u32::MAX] {
            let e = base.folds(bad).expect_err("out of range");
            assert!(e.contains("2..=20"), "{bad}: {e}");
        }
        assert_eq!(base.folds(2).expect("2").len(), 2);
        assert_eq!(base.folds(20).expect("20").len(), 20);
        let s = &base.folds(5).expect("5")[0];
        assert_eq!(s.describe(), "drive split: fold 1 of 5 by drive (seed 3) held out for evaluation");
        assert!(
            base.describe_folds(5).starts_with("5-fold cross-validation by drive (seed 3), pooled scores")
        );
    }
}
