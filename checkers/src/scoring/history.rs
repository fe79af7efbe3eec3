//! Per-disk daily SMART history for the disk-failure predictor (issue 20), and the model the catalog
//! assigned.
//!
//! The disk checker records, for each disk it probes, one [`predict::DaySample`] per day: the raw values of
//! [`predict::ATTRIBUTES`] the disk reports (the last probe of a day wins). A model scores the history on the
//! host ([`predict::Model::score`]); a disk whose history is shorter than the model needs gets no prediction.
//!
//! The histories survive restarts the way the SMART trend baselines do ([`super::trend`]): as the disk
//! checker's checkpoint (key [`HISTORY_CHECKPOINT_KEY`]) in the agent's KV, written when a day is added to
//! a disk, a disk appears or one is forgotten (a new day's later probes only change memory: after a restart
//! the first probe of the day puts today's values back). The text encoding (`smart-history v1`, then per disk
//! a `disk NAME TAB SERIAL TAB MODEL` line and one `DAY TAB ID=RAW,...` line per day) is bounded: at most
//! [`MAX_HISTORY_DISKS`] disks of [`predict::MAX_HISTORY_DAYS`] days, [`MAX_HISTORY_BYTES`] in all. A value
//! that does not decode is refused as a whole (the histories start over; never half a table).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use predict::{DaySample, DiskHistory, MAX_HISTORY_DAYS, Model};

use crate::smart::SmartReport;

/// Key of the histories in a checkpoint (and in the agent's KV).
pub const HISTORY_CHECKPOINT_KEY: &str = "disk.smart-history";
/// Most disks with a history: the disk checker's slot limit, as for the trend baselines.
pub const MAX_HISTORY_DISKS: usize = super::trend::MAX_TREND_DISKS;
/// Longest serial and disk model string kept (longer ones are cut on a character boundary).
pub const MAX_SERIAL_LEN: usize = super::trend::MAX_SERIAL_LEN;
/// Longest disk name accepted.
pub const MAX_NAME_LEN: usize = super::trend::MAX_NAME_LEN;
/// Longest encoded day line: the day (10 digits), and per attribute its id (3), `=`, a raw value of at most
/// 16 digits ([`predict::MAX_RAW`] is 2^53) and a comma.
const MAX_DAY_LINE: usize = 11 + predict::ATTRIBUTES.len() * 21;
/// Largest encoded table: the header plus, per disk, its `disk` line and a full history.
pub const MAX_HISTORY_BYTES: usize = HEADER.len()
    + 1
    + MAX_HISTORY_DISKS
        * (6 + MAX_NAME_LEN + MAX_SERIAL_LEN + predict::MAX_NAME_LEN * 4 + MAX_HISTORY_DAYS * MAX_DAY_LINE);

const HEADER: &str = "smart-history v1";
const MS_PER_DAY: u64 = 86_400_000;

/// The day number (days since 1970-01-01, UTC) of a wall-clock time in milliseconds.
pub fn day_of(now_ms: u64) -> u32 {
    u32::try_from(now_ms / MS_PER_DAY).unwrap_or(u32::MAX)
}

/// The raw values of [`predict::ATTRIBUTES`] a SMART report carries, as the model and the training data
/// (Backblaze's `smart_N_raw` columns) see them: the whole raw value, except the temperature (194), whose
/// upper bytes pack the lifetime minimum and maximum (the current value is the low 16 bits). A raw value
/// above [`predict::MAX_RAW`] is left out (it cannot be a count).
pub fn sample_of(report: &SmartReport) -> BTreeMap<u16, f64> {
    let mut out = BTreeMap::new();
    if !report.has_data() {
        return out;
    }
    for attr in predict::ATTRIBUTES {
        let Some(raw) = report.attribute(u32::from(attr)).and_then(|a| a.raw) else { continue };
        let raw = if attr == 194 { raw & 0xffff } else { raw };
        let v = raw as f64;
        if v <= predict::MAX_RAW {
            out.insert(attr, v);
        }
    }
    out
}

/// Why a stored table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("SMART history checkpoint larger than {MAX_HISTORY_BYTES} bytes")]
    TooLarge,
    #[error("SMART history checkpoint: not UTF-8")]
    NotText,
    #[error("SMART history checkpoint: unknown header {0:?} (expected {HEADER:?})")]
    Header(String),
    #[error("SMART history checkpoint line {line}: {msg}")]
    Line { line: usize, msg: String },
    #[error("SMART history checkpoint: more than {MAX_HISTORY_DISKS} disks")]
    TooMany,
}

#[derive(Debug, Clone, PartialEq)]
struct Tracked {
    serial: Option<String>,
    history: DiskHistory,
}

/// Every disk's history, by object name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histories {
    disks: BTreeMap<String, Tracked>,
    /// Changed (a day added, a disk added or forgotten) since the last checkpoint was taken.
    changed: bool,
}

/// Text as kept: control characters (a tab or newline would break the encoding) become `_`, cut at `max`
/// bytes on a character boundary.
fn clean(s: &str, max: usize) -> String {
    let mut out: String = s.trim().chars().map(|c| if c.is_control() { '_' } else { c }).collect();
    let mut end = out.len().min(max);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME_LEN && !n.chars().any(char::is_control)
}

impl Histories {
    pub fn len(&self) -> usize {
        self.disks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.disks.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&DiskHistory> {
        self.disks.get(name).map(|t| &t.history)
    }

    /// Record today's sample of disk `name` (seen with `serial` and disk model `model`). A new serial in the
    /// slot (a replaced disk) starts a new history; an empty sample (no SMART data) records nothing; a sample
    /// the history refuses (a clock that went back a day) is dropped with a log line. A new disk when
    /// [`MAX_HISTORY_DISKS`] are tracked gets no history. Returns the disk's history.
    pub fn observe(
        &mut self,
        name: &str,
        serial: Option<&str>,
        model: Option<&str>,
        day: u32,
        raw: BTreeMap<u16, f64>,
    ) -> Option<&DiskHistory> {
        if !valid_name(name) || raw.is_empty() {
            return self.get(name);
        }
        if !self.disks.contains_key(name) && self.disks.len() >= MAX_HISTORY_DISKS {
            return None;
        }
        let serial = serial.map(|s| clean(s, MAX_SERIAL_LEN)).filter(|s| !s.is_empty());
        let model = clean(model.unwrap_or(""), predict::MAX_NAME_LEN);
        let stale = self.disks.get(name).is_none_or(|t| t.serial != serial);
        if stale {
            self.disks.insert(name.to_string(), Tracked { serial, history: DiskHistory::new(&model) });
            self.changed = true;
        }
        let t = self.disks.get_mut(name)?;
        let new_day = t.history.days.last().is_none_or(|s| s.day != day);
        match t.history.push(DaySample { day, raw }) {
            Ok(()) => self.changed |= new_day,
            Err(e) => tracing::warn!(disk = name, error = %e, "SMART sample not added to the history"),
        }
        self.get(name)
    }

    /// Forget disks not seen for [`MAX_HISTORY_DAYS`] days before `today` (removed disks; the table
    /// stays bounded by the disks a host has had lately).
    pub fn forget_older_than_window(&mut self, today: u32) {
        let from = today.saturating_sub(MAX_HISTORY_DAYS as u32);
        let before = self.disks.len();
        self.disks.retain(|_, t| t.history.days.last().is_some_and(|s| s.day >= from));
        self.changed |= self.disks.len() != before;
    }

    /// Whether the table changed since the last call (then it should be checkpointed).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::from(HEADER);
        out.push('\n');
        for (name, t) in &self.disks {
            out.push_str(&format!(
                "disk\t{name}\t{}\t{}\n",
                t.serial.as_deref().unwrap_or(""),
                t.history.model
            ));
            for s in &t.history.days {
                let vals: Vec<String> = s.raw.iter().map(|(a, v)| format!("{a}={v}")).collect();
                out.push_str(&format!("{}\t{}\n", s.day, vals.join(",")));
            }
        }
        out.into_bytes()
    }

    /// Decode a table written by [`encode`](Self::encode); anything else is refused whole.
    pub fn decode(raw: &[u8]) -> Result<Histories, HistoryError> {
        if raw.len() > MAX_HISTORY_BYTES {
            return Err(HistoryError::TooLarge);
        }
        let text = std::str::from_utf8(raw).map_err(|_| HistoryError::NotText)?;
        let mut lines = text.lines();
        match lines.next() {
            Some(HEADER) => {}
            other => return Err(HistoryError::Header(other.unwrap_or("").chars().take(64).collect())),
        }
        let mut disks: BTreeMap<String, Tracked> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (i, l) in lines.enumerate() {
            let line = i + 2;
            let bad = |msg: String| HistoryError::Line { line, msg };
            if let Some(rest) = l.strip_prefix("disk\t") {
                let f: Vec<&str> = rest.split('\t').collect();
                let [name, serial, model] = f[..] else {
                    return Err(bad(format!("{} fields, expected name, serial and model", f.len())));
                };
                if !valid_name(name) || serial.len() > MAX_SERIAL_LEN || model.len() > predict::MAX_NAME_LEN {
                    return Err(bad("disk name, serial or model out of bounds".into()));
                }
                if disks.len() >= MAX_HISTORY_DISKS {
                    return Err(HistoryError::TooMany);
                }
                let serial = (!serial.is_empty()).then(|| serial.to_string());
                let t = Tracked { serial, history: DiskHistory::new(model) };
                if disks.insert(name.to_string(), t).is_some() {
                    return Err(bad(format!("disk {name} appears twice")));
                }
                current = Some(name.to_string());
                continue;
            }
            let Some(t) = current.as_ref().and_then(|n| disks.get_mut(n)) else {
                return Err(bad("a day before any disk line".into()));
            };
            let (day, vals) = l.split_once('\t').ok_or_else(|| bad("expected DAY TAB values".into()))?;
            let day: u32 = day.parse().map_err(|_| bad(format!("day {day:?} is not a number")))?;
            let mut sample = DaySample { day, raw: BTreeMap::new() };
            for kv in vals.split(',').filter(|s| !s.is_empty()) {
                let (a, v) = kv.split_once('=').ok_or_else(|| bad(format!("{kv:?} is not ID=RAW")))?;
                let a: u16 = a.parse().map_err(|_| bad(format!("attribute {a:?} is not a number")))?;
                let v: f64 = v.parse().map_err(|_| bad(format!("raw value {v:?} is not a number")))?;
                if !predict::ATTRIBUTES.contains(&a) || sample.raw.insert(a, v).is_some() {
                    return Err(bad(format!("attribute {a} unknown or repeated")));
                }
            }
            // Days strictly increase in what `encode` writes; a repeated day would replace silently.
            if t.history.days.last().is_some_and(|s| s.day >= day) || t.history.days.len() >= MAX_HISTORY_DAYS
            {
                return Err(bad(format!("day {day} out of order or over {MAX_HISTORY_DAYS} days")));
            }
            t.history.push(sample).map_err(|e| bad(e.to_string()))?;
        }
        Ok(Histories { disks, changed: false })
    }
}

/// A model as the catalog assigned it.
#[derive(Debug, Clone)]
pub struct AssignedModel {
    pub model: Arc<Model>,
    /// The catalog artifact's name and version (`disk-failure`, `3`).
    pub name: String,
    pub version: String,
}

impl AssignedModel {
    /// Parse a model artifact's bytes (every check of [`Model::from_json`]: size, format, numbers).
    pub fn parse(name: &str, version: &str, bytes: &[u8]) -> Result<AssignedModel, predict::Error> {
        let model = Model::from_json(bytes)?;
        Ok(AssignedModel { model: Arc::new(model), name: name.to_string(), version: version.to_string() })
    }

    /// `NAME@VERSION`: the finding's `model_version` reading and the safety net's scope for its predictions.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The failure model the catalog assigned, handed by the agent's catalog supervisor to the disk checker,
/// which reads it at each scoring pass (as [`super::ProfileOverrides`] for profiles). None: no prediction.
#[derive(Debug, Default)]
pub struct ModelSwap {
    cur: Mutex<Option<AssignedModel>>,
}

impl ModelSwap {
    pub fn set(&self, m: Option<AssignedModel>) {
        *self.cur.lock().unwrap_or_else(PoisonError::into_inner) = m;
    }

    pub fn get(&self) -> Option<AssignedModel> {
        self.cur.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kv: &[(u16, f64)]) -> BTreeMap<u16, f64> {
        kv.iter().copied().collect()
    }

    #[test]
    fn days_accumulate_round_trip_and_a_new_serial_starts_over() {
        let mut h = Histories::default();
        h.observe("sda", Some("S1"), Some("ST8000DM002"), 100, raw(&[(5, 0.0), (9, 1000.0)]));
        assert!(h.take_changed(), "a new disk is checkpointed");
        h.observe("sda", Some("S1"), Some("ST8000DM002"), 100, raw(&[(5, 1.0), (9, 1001.0)]));
        assert!(!h.take_changed(), "the same day again changes memory only");
        h.observe("sda", Some("S1"), Some("ST8000DM002"), 101, raw(&[(5, 8.0), (9, 1024.0)]));
        assert!(h.take_changed(), "a new day is checkpointed");
        assert_eq!(h.get("sda").map(DiskHistory::span_days), Some(2));
        assert_eq!(
            h.get("sda").and_then(|x| x.days[0].raw.get(&5)).copied(),
            Some(1.0),
            "last of the day wins"
        );
        let back = Histories::decode(&h.encode()).expect("round trip");
        assert_eq!(back.disks, h.disks);
        h.observe("sda", Some("S2"), Some("ST8000DM002"), 102, raw(&[(5, 0.0)]));
        assert_eq!(h.get("sda").map(|x| x.days.len()), Some(1), "a replaced disk has its own history");
        h.observe("sdb", None, None, 102, BTreeMap::new());
        assert!(h.get("sdb").is_none(), "no SMART data: nothing recorded");
    }

    #[test]
    fn history_is_bounded_in_days_and_disks_and_forgets_removed_disks() {
        let mut h = Histories::default();
        for d in 0..(MAX_HISTORY_DAYS as u32 + 20) {
            h.observe("sda", Some("S"), None, 1000 + d, raw(&[(5, f64::from(d))]));
        }
        assert_eq!(h.get("sda").map(|x| x.days.len()), Some(MAX_HISTORY_DAYS));
        for i in 0..MAX_HISTORY_DISKS {
            h.observe(&format!("d{i}"), None, None, 1079, raw(&[(5, 1.0)]));
        }
        assert_eq!(h.len(), MAX_HISTORY_DISKS, "at the limit a new disk gets no history");
        assert!(h.observe("one-more", None, None, 1079, raw(&[(5, 1.0)])).is_none());
        let full = h.encode();
        assert!(full.len() <= MAX_HISTORY_BYTES);
        assert_eq!(Histories::decode(&full).map(|x| x.len()), Ok(MAX_HISTORY_DISKS));
        h.take_changed();
        h.forget_older_than_window(1079 + MAX_HISTORY_DAYS as u32 + 1);
        assert!(h.is_empty() && h.take_changed());
    }

    #[test]
    fn a_corrupt_table_is_refused_whole() {
        for bad in [
            &b"smart-trend v1\n"[..],
            b"smart-history v1\n100\t5=1\n",
            b"smart-history v1\ndisk\tsda\tS\n",
            b"smart-history v1\ndisk\tsda\tS\tM\n100\t5=x\n",
            b"smart-history v1\ndisk\tsda\tS\tM\n100\t5=-1\n",
            b"smart-history v1\ndisk\tsda\tS\tM\n100\t5=NaN\n",
            b"smart-history v1\ndisk\tsda\tS\tM\n100\t6=1\n",
            b"smart-history v1\ndisk\tsda\tS\tM\n101\t5=1\n100\t5=1\n",
            b"smart-history v1\ndisk\tsda\tS\tM\n100\t5=1,5=2\n",
            b"smart-history v1\ndisk\tsda\tS\tM\ndisk\tsda\tS\tM\n",
            b"\xff\xfe",
        ] {
            assert!(Histories::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(Histories::decode(&vec![b'x'; MAX_HISTORY_BYTES + 1]), Err(HistoryError::TooLarge));
    }
}
