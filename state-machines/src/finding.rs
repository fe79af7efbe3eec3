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
/// Longest checker name, checker version, rule name, reading name or reading value (real ones are a few
/// dozen characters; a reading is a number or a short word, never a payload).
pub const MAX_LABEL_LEN: usize = 128;
/// At most this many characters of a bad value are quoted back in a [`FindingError`].
const QUOTE_CHARS: usize = 40;

/// Why a finding is refused (by the master before proposing it, by the agent before queueing it). The
/// rules live here, once, so both sides refuse exactly the same findings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindingError {
    #[error("no checker name")]
    NoChecker,
    #[error("{field} is {len} bytes long (limit {max})")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} {quoted} contains control characters")]
    Control { field: &'static str, quoted: String },
    #[error("{field} contains a NUL byte")]
    Nul { field: &'static str },
    #[error("{count} readings (limit {max})", max = MAX_READINGS)]
    TooManyReadings { count: usize },
}

fn quoted(s: &str) -> String {
    format!("{:?}", s.chars().take(QUOTE_CHARS).collect::<String>())
}

/// A one-line label (checker, version, rule, reading name or value): bounded, no control characters.
pub fn check_label(field: &'static str, s: &str, max: usize) -> Result<(), FindingError> {
    if s.len() > max {
        return Err(FindingError::TooLong { field, len: s.len(), max });
    }
    if s.chars().any(char::is_control) {
        return Err(FindingError::Control { field, quoted: quoted(s) });
    }
    Ok(())
}

/// Free text (evidence, a reason): bounded, and no NUL byte (NUL ends C strings in every tool that reads
/// these texts later). Other characters pass: evidence quotes log lines and probe output as they were
/// (carriage returns from CRLF files included), and every reader escapes what it shows.
pub fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), FindingError> {
    if s.len() > max {
        return Err(FindingError::TooLong { field, len: s.len(), max });
    }
    if s.contains('\0') {
        return Err(FindingError::Nul { field });
    }
    Ok(())
}

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
        // Case-insensitive without an uppercased copy (this runs for every finding the master receives).
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
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
    /// Made by a shadow run of a canary checker version (issue 15): recorded in history and exports, never
    /// fed to a state machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

impl Finding {
    /// Whether the master accepts this finding (the object id and severity are typed already): a checker
    /// name, bounded one-line labels, at most [`MAX_READINGS`] bounded readings, evidence without NUL.
    /// Evidence longer than [`MAX_EVIDENCE_LEN`] is not refused: [`Finding::bounded`] cuts it.
    pub fn validate(&self) -> Result<(), FindingError> {
        if self.checker.is_empty() {
            return Err(FindingError::NoChecker);
        }
        check_label("checker", &self.checker, MAX_LABEL_LEN)?;
        check_label("version", &self.version, MAX_LABEL_LEN)?;
        check_label("rule", &self.rule, MAX_LABEL_LEN)?;
        if self.readings.len() > MAX_READINGS {
            return Err(FindingError::TooManyReadings { count: self.readings.len() });
        }
        for (k, v) in &self.readings {
            check_label("reading name", k, MAX_LABEL_LEN)?;
            check_label("reading value", v, MAX_LABEL_LEN)?;
        }
        check_text("evidence", &self.evidence, usize::MAX)
    }

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
            shadow: false,
        }
        .bounded();
        assert!(f.evidence.len() <= MAX_EVIDENCE_LEN);
        assert_eq!(f.readings.len(), MAX_READINGS);
    }
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn good() -> Finding {
        Finding {
            object: "disk/h1/sda".parse().expect("id"),
            severity: Severity::Error,
            checker: "smart".into(),
            version: "1.0.0".into(),
            rule: "smart.reallocated".into(),
            evidence: "Reallocated_Sector_Ct 12\r\n\tline two".into(),
            readings: [("reallocated".to_string(), "12".to_string())].into_iter().collect(),
            time_ms: 1,
            shadow: false,
        }
    }

    #[test]
    fn the_rules_at_their_limits() {
        assert_eq!(good().validate(), Ok(()));
        assert_eq!(Finding { checker: String::new(), ..good() }.validate(), Err(FindingError::NoChecker));
        let at = Finding { rule: "r".repeat(MAX_LABEL_LEN), ..good() };
        assert_eq!(at.validate(), Ok(()));
        let over = Finding { rule: "r".repeat(MAX_LABEL_LEN + 1), ..good() };
        assert_eq!(over.validate(), Err(FindingError::TooLong { field: "rule", len: 129, max: 128 }));
        assert!(matches!(
            Finding { version: "1\n".into(), ..good() }.validate(),
            Err(FindingError::Control { field: "version", .. })
        ));
        assert_eq!(
            Finding { evidence: "a\0".into(), ..good() }.validate(),
            Err(FindingError::Nul { field: "evidence" })
        );
        let n = |k: usize| (0..k).map(|i| (format!("r{i}"), "1".to_string())).collect();
        assert_eq!(Finding { readings: n(MAX_READINGS), ..good() }.validate(), Ok(()));
        assert_eq!(
            Finding { readings: n(MAX_READINGS + 1), ..good() }.validate(),
            Err(FindingError::TooManyReadings { count: MAX_READINGS + 1 })
        );
        let long_evidence = Finding { evidence: "e".repeat(MAX_EVIDENCE_LEN * 4), ..good() };
        assert_eq!(long_evidence.validate(), Ok(()), "long evidence is cut by `bounded`, not refused");
    }
}
