//! SMART trend baselines that survive restarts.
//!
//! The disk checker grades a rising UDMA CRC count (ATA attribute 199: a cable or link corrupting
//! transfers now) and rising NVMe error-log entries against the values seen when it first saw the disk
//! (with that serial). Kept only in memory, an agent restart would take the current counts as a new
//! baseline and hide a rise that had already started. So the baselines travel as the checker's
//! [`Checkpoint`](crate::Checkpoint) (key [`TREND_CHECKPOINT_KEY`]), committed by the agent in the same
//! outbox transaction as that run's findings, and are handed back when the agent starts
//! ([`crate::registry::HostConfig::smart_trend_resume`]).
//!
//! The encoding is text, one disk per line (`name TAB serial TAB crc TAB errlog`, empty for none) after a
//! version header, bounded by [`MAX_TREND_DISKS`] disks and [`MAX_SERIAL_LEN`] bytes of serial, so a
//! checkpoint is at most [`MAX_TREND_BYTES`]. A value that does not decode is refused as a whole (the
//! trends start over; never half a table).

use std::collections::BTreeMap;

/// Key of the baselines in a checkpoint (and in the agent's KV).
pub const TREND_CHECKPOINT_KEY: &str = "disk.smart-trend";
/// Most disks with a baseline: the disk checker's slot limit (a JBOD has ~100 disks; 1024 leaves room).
pub const MAX_TREND_DISKS: usize = 1024;
/// Longest serial kept (longer ones are cut; serials are ~20 characters).
pub const MAX_SERIAL_LEN: usize = 256;
/// Longest disk name accepted when decoding (object names are far shorter).
pub const MAX_NAME_LEN: usize = 128;
/// Largest encoded table: header plus the longest line per disk (name, serial, two 39-digit u128s, tabs).
pub const MAX_TREND_BYTES: usize =
    HEADER.len() + 1 + MAX_TREND_DISKS * (MAX_NAME_LEN + MAX_SERIAL_LEN + 2 * 39 + 4);

const HEADER: &str = "smart-trend v1";

/// What a disk showed when it was first seen with its serial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    pub serial: Option<String>,
    /// UDMA CRC error count (ATA 199, low 32 bits of the raw value).
    pub udma_crc: Option<u128>,
    /// NVMe error-information log entries.
    pub nvme_error_log: Option<u128>,
}

/// The baselines of every disk, by object name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmartTrend {
    bases: BTreeMap<String, Baseline>,
    /// Changed since the last checkpoint was taken.
    changed: bool,
}

/// Why a stored table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrendError {
    #[error("SMART trend checkpoint larger than {MAX_TREND_BYTES} bytes")]
    TooLarge,
    #[error("SMART trend checkpoint: not UTF-8")]
    NotText,
    #[error("SMART trend checkpoint: unknown header {0:?} (expected {HEADER:?})")]
    Header(String),
    #[error("SMART trend checkpoint line {line}: {msg}")]
    Line { line: usize, msg: String },
    #[error("SMART trend checkpoint: more than {MAX_TREND_DISKS} disks")]
    TooMany,
}

/// A serial as kept: control characters (a tab or newline would break the encoding) become `_`, cut at
/// [`MAX_SERIAL_LEN`] on a character boundary; empty means none.
fn clean_serial(s: Option<&str>) -> Option<String> {
    let s = s?.trim();
    let mut out: String = s.chars().map(|c| if c.is_control() { '_' } else { c }).collect();
    let mut end = out.len().min(MAX_SERIAL_LEN);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    (!out.is_empty()).then_some(out)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME_LEN && !n.chars().any(char::is_control)
}

impl SmartTrend {
    pub fn len(&self) -> usize {
        self.bases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bases.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Baseline> {
        self.bases.get(name)
    }

    /// The baseline of disk `name` seen now with `serial` and these counts: the stored one, or these
    /// values when the disk is new or carries another serial (a replaced disk starts a new baseline).
    /// None when the table is full ([`MAX_TREND_DISKS`]) and the disk is new: it gets no trend.
    pub fn observe(
        &mut self,
        name: &str,
        serial: Option<&str>,
        udma_crc: Option<u128>,
        nvme_error_log: Option<u128>,
    ) -> Option<&Baseline> {
        if !valid_name(name) || (!self.bases.contains_key(name) && self.bases.len() >= MAX_TREND_DISKS) {
            return None;
        }
        let serial = clean_serial(serial);
        let stale = self.bases.get(name).is_none_or(|b| b.serial != serial);
        if stale {
            self.bases.insert(name.to_string(), Baseline { serial, udma_crc, nvme_error_log });
            self.changed = true;
        }
        self.bases.get(name)
    }

    /// Whether the table changed since the last call (then it should be checkpointed).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn encode(&self) -> Vec<u8> {
        let num = |v: Option<u128>| v.map(|n| n.to_string()).unwrap_or_default();
        let mut out = String::from(HEADER);
        out.push('\n');
        for (name, b) in &self.bases {
            out.push_str(&format!(
                "{name}\t{}\t{}\t{}\n",
                b.serial.as_deref().unwrap_or(""),
                num(b.udma_crc),
                num(b.nvme_error_log)
            ));
        }
        out.into_bytes()
    }

    /// Decode a table written by [`encode`](Self::encode); anything else is refused whole.
    pub fn decode(raw: &[u8]) -> Result<SmartTrend, TrendError> {
        if raw.len() > MAX_TREND_BYTES {
            return Err(TrendError::TooLarge);
        }
        let text = std::str::from_utf8(raw).map_err(|_| TrendError::NotText)?;
        let mut lines = text.lines();
        match lines.next() {
            Some(HEADER) => {}
            other => return Err(TrendError::Header(other.unwrap_or("").chars().take(64).collect())),
        }
        let mut bases = BTreeMap::new();
        for (i, l) in lines.enumerate() {
            let line = i + 2;
            let bad = |msg: &str| TrendError::Line { line, msg: msg.to_string() };
            let f: Vec<&str> = l.split('\t').collect();
            let [name, serial, crc, errlog] = f[..] else {
                return Err(bad("expected 4 tab-separated fields"));
            };
            if !valid_name(name) {
                return Err(bad("bad disk name"));
            }
            if serial.len() > MAX_SERIAL_LEN {
                return Err(bad("serial too long"));
            }
            let num = |s: &str| -> Result<Option<u128>, TrendError> {
                if s.is_empty() {
                    return Ok(None);
                }
                s.parse::<u128>().map(Some).map_err(|_| bad("count is not a number"))
            };
            let b = Baseline {
                serial: clean_serial(Some(serial)),
                udma_crc: num(crc)?,
                nvme_error_log: num(errlog)?,
            };
            if bases.insert(name.to_string(), b).is_some() {
                return Err(bad("disk listed twice"));
            }
            if bases.len() > MAX_TREND_DISKS {
                return Err(TrendError::TooMany);
            }
        }
        Ok(SmartTrend { bases, changed: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_baselines() {
        let mut t = SmartTrend::default();
        assert_eq!(t.observe("sda", Some("WD-1"), Some(12), None).cloned().unwrap().udma_crc, Some(12));
        assert!(t.take_changed());
        // a later reading keeps the first baseline and changes nothing
        assert_eq!(t.observe("sda", Some("WD-1"), Some(15), None).unwrap().udma_crc, Some(12));
        assert!(!t.take_changed());
        // a new serial in the slot starts over
        assert_eq!(t.observe("sda", Some("WD-2"), Some(3), None).unwrap().udma_crc, Some(3));
        assert!(t.take_changed());
        t.observe("nvme0n1", Some("S\tN\n1"), None, Some(62));
        t.observe("sdb", None, None, None);
        let back = SmartTrend::decode(&t.encode()).unwrap();
        assert_eq!(back.bases, t.bases);
        assert_eq!(back.get("nvme0n1").unwrap().serial.as_deref(), Some("S_N_1"));
        // the decoded serial compares equal to the live (uncleaned) one
        let mut back = back;
        assert_eq!(
            back.observe("nvme0n1", Some("S\tN\n1"), None, Some(70)).unwrap().nvme_error_log,
            Some(62)
        );
        assert!(!back.take_changed(), "a restored table is already committed");
    }

    #[test]
    fn bad_tables_are_refused_whole() {
        for bad in [
            &b"smart-trend v9\nsda\t\t1\t\n"[..],
            b"smart-trend v1\nsda\t\t1\n",
            b"smart-trend v1\nsda\t\tx\t\n",
            b"smart-trend v1\nsda\t\t1\t\nsda\t\t2\t\n",
            b"smart-trend v1\n\t\t1\t\n",
            b"\xff\xfe",
            b"",
        ] {
            assert!(SmartTrend::decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(SmartTrend::decode(&vec![b'a'; MAX_TREND_BYTES + 1]), Err(TrendError::TooLarge));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = SmartTrend::default();
        for i in 0..MAX_TREND_DISKS {
            assert!(
                t.observe(&format!("sd{i}"), Some(&"S".repeat(MAX_SERIAL_LEN * 2)), Some(1), Some(1))
                    .is_some()
            );
        }
        assert!(t.observe("one-more", None, Some(1), None).is_none(), "a full table takes no new disk");
        assert!(t.observe("sd0", None, Some(1), None).is_some(), "a known disk still gets its baseline");
        let raw = t.encode();
        assert!(raw.len() <= MAX_TREND_BYTES, "{} > {MAX_TREND_BYTES}", raw.len());
        assert_eq!(SmartTrend::decode(&raw).unwrap().len(), MAX_TREND_DISKS);
        let mut over = raw.clone();
        over.extend_from_slice(b"extra\t\t1\t\n");
        assert_eq!(SmartTrend::decode(&over), Err(TrendError::TooMany));
    }
}
