//! Findings: what a checker says about one object at one time. Produced by checkers on hosts (or by
//! operators and external detectors through `huatuo report`), consumed by the state machines.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::ObjectId;

/// Largest evidence text kept with a finding; longer text is cut (hostile checker output stays bounded).
pub const MAX_EVIDENCE_LEN: usize = 4096;
/// Most readings kept with one finding.
pub const MAX_READINGS: usize = 64;

/// How bad a finding is. For disks this is the grade of PRODUCT.md section 5 (GOOD/SLOW/WARNING/ERROR/FATAL);
/// `Info` is recorded but never moves an object; `Unknown` means the probe could not tell (a failed or hung
/// probe), which is evidence about the probe, not about the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Unknown,
    Info,
    Good,
    Slow,
    Warning,
    Error,
    Fatal,
}

impl Severity {
    pub const ALL: [Severity; 7] = [
        Severity::Unknown,
        Severity::Info,
        Severity::Good,
        Severity::Slow,
        Severity::Warning,
        Severity::Error,
        Severity::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Info => "INFO",
            Severity::Good => "GOOD",
            Severity::Slow => "SLOW",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }

    /// Whether this severity says something is wrong with the object (SLOW and worse).
    pub fn is_fault(self) -> bool {
        self >= Severity::Slow
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?} (expected UNKNOWN, INFO, GOOD, SLOW, WARNING, ERROR or FATAL)")]
pub struct SeverityError(pub String);

impl FromStr for Severity {
    type Err = SeverityError;
    fn from_str(s: &str) -> Result<Self, SeverityError> {
        let up = s.to_ascii_uppercase();
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == up)
            .ok_or_else(|| SeverityError(s.chars().take(40).collect()))
    }
}

/// One checker's verdict on one object. `time_ms` is milliseconds since the Unix epoch, taken by the caller:
/// nothing in this crate reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub object: ObjectId,
    pub severity: Severity,
    /// Checker name, e.g. `kernel-log`, `smart`, `disk-stats`.
    pub checker: String,
    /// Checker version (semantic version string).
    pub version: String,
    /// The rule or scoring item that fired, e.g. `io-error`, `smart.reallocated`.
    pub rule: String,
    /// Human-readable evidence: a log line, a reading, a reason.
    pub evidence: String,
    /// Structured readings behind the verdict (attribute -> value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub readings: BTreeMap<String, String>,
    pub time_ms: u64,
}

impl Finding {
    /// Cut evidence and readings to their limits, so hostile or runaway checker output stays bounded.
    pub fn bounded(mut self) -> Self {
        if self.evidence.len() > MAX_EVIDENCE_LEN {
            let mut end = MAX_EVIDENCE_LEN;
            while !self.evidence.is_char_boundary(end) {
                end -= 1;
            }
            self.evidence.truncate(end);
        }
        while self.readings.len() > MAX_READINGS {
            self.readings.pop_last();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_parse_and_order() {
        assert_eq!("fatal".parse::<Severity>(), Ok(Severity::Fatal));
        assert_eq!("SLOW".parse::<Severity>(), Ok(Severity::Slow));
        assert!("bad".parse::<Severity>().is_err());
        assert!(Severity::Error > Severity::Warning);
        assert!(!Severity::Info.is_fault());
        assert!(Severity::Slow.is_fault());
    }

    #[test]
    fn bounded_cuts_hostile_evidence() {
        let f = Finding {
            object: "disk/h1/sda".parse().expect("valid id"),
            severity: Severity::Error,
            checker: "x".into(),
            version: "1.0.0".into(),
            rule: "r".into(),
            evidence: "é".repeat(MAX_EVIDENCE_LEN),
            readings: (0..100).map(|i| (format!("k{i:03}"), i.to_string())).collect(),
            time_ms: 1,
        }
        .bounded();
        assert!(f.evidence.len() <= MAX_EVIDENCE_LEN);
        assert_eq!(f.readings.len(), MAX_READINGS);
    }
}
