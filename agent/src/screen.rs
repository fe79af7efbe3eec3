//! The sink's screen: every finding is checked against the master's rules (`Finding::validate`, the same
//! function the master's API layer runs) BEFORE it is queued. An invalid finding never becomes durable: the
//! master would refuse the whole batch it travels in, and that batch would block the outbox behind it. In
//! its place goes one `checker.broken` finding about `checker/HOST/NAME` (as for a misbehaving external
//! checker) saying what was wrong, and the refusals are counted.

use state_machines::{Finding, Kind, ObjectId, Severity};

/// How many refused findings one `checker.broken` finding quotes (the count covers the rest).
pub const MAX_QUOTED_REFUSALS: usize = 3;

/// The outcome of screening one run's findings.
#[derive(Debug, Default)]
pub struct Screened {
    /// The valid findings, in order, plus the `checker.broken` finding when any was refused.
    pub findings: Vec<Finding>,
    /// How many findings were refused.
    pub refused: usize,
}

/// Keep the valid findings of `checker`'s run; replace the invalid ones by one `checker.broken` finding
/// about `checker/HOST/NAME` (HOST from the agent), timed `now_ms`.
pub fn screen(checker: &str, version: &str, host: &str, findings: Vec<Finding>, now_ms: u64) -> Screened {
    let mut out = Screened::default();
    let mut problems = Vec::new();
    for f in findings {
        match f.validate() {
            Ok(()) => out.findings.push(f),
            Err(e) => {
                out.refused += 1;
                if problems.len() < MAX_QUOTED_REFUSALS {
                    problems.push(format!("finding about {} ({}): {e}", f.object, f.rule.escape_debug()));
                }
            }
        }
    }
    if out.refused == 0 {
        return out;
    }
    let mut evidence = format!(
        "checker {} produced {} finding(s) the master would refuse; not sent: {}",
        checker.escape_debug(),
        out.refused,
        problems.join("; ")
    );
    if out.refused > MAX_QUOTED_REFUSALS {
        evidence.push_str(&format!("; and {} more", out.refused - MAX_QUOTED_REFUSALS));
    }
    let broken = ObjectId::new(Kind::Checker, host, Some(checker)).map(|object| {
        Finding {
            object,
            severity: Severity::Warning,
            checker: checker.to_string(),
            version: version.to_string(),
            rule: "checker.broken".into(),
            // The quotes are escaped, but a NUL could still come from a name: the text must pass too.
            evidence: evidence.replace('\0', "\\0"),
            readings: [("refused".to_string(), out.refused.to_string())].into_iter().collect(),
            time_ms: now_ms,
            shadow: false,
        }
        .bounded()
    });
    match broken {
        Ok(f) if f.validate().is_ok() => out.findings.push(f),
        // A checker whose own name cannot be an object id or a label: only the log and the counter say it.
        _ => tracing::error!(
            checker = checker.escape_debug().to_string(),
            evidence,
            "invalid findings dropped"
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_machines::finding::{MAX_LABEL_LEN, MAX_READINGS};

    fn good(rule: &str) -> Finding {
        Finding {
            object: "disk/h1/sda".parse().expect("id"),
            severity: Severity::Error,
            checker: "ext".into(),
            version: "1.0.0".into(),
            rule: rule.into(),
            evidence: "fine".into(),
            readings: Default::default(),
            time_ms: 5,
            shadow: false,
        }
    }

    #[test]
    fn valid_findings_pass_untouched() {
        let s = screen("ext", "1.0.0", "h1", vec![good("a"), good("b")], 9);
        assert_eq!(s.refused, 0);
        assert_eq!(s.findings, vec![good("a"), good("b")]);
    }

    #[test]
    fn invalid_findings_become_one_broken_finding_about_the_checker() {
        let nul = Finding { evidence: "a\0b".into(), ..good("nul") };
        let long = Finding {
            readings: [("k".to_string(), "v".repeat(MAX_LABEL_LEN + 1))].into_iter().collect(),
            ..good("long")
        };
        let many = Finding {
            readings: (0..=MAX_READINGS).map(|i| (format!("r{i}"), "1".to_string())).collect(),
            ..good("many")
        };
        let ctl = Finding { rule: "r\u{7}".into(), ..good("") };
        let s = screen("ext", "1.0.0", "h1", vec![good("a"), nul, long, many, ctl, good("b")], 9);
        assert_eq!(s.refused, 4);
        assert_eq!(s.findings.len(), 3, "two valid ones and the broken one");
        assert_eq!(s.findings[..2], [good("a"), good("b")]);
        let b = &s.findings[2];
        assert_eq!(b.object.to_string(), "checker/h1/ext");
        assert_eq!(b.rule, "checker.broken");
        assert_eq!(b.time_ms, 9);
        assert_eq!(b.readings.get("refused").map(String::as_str), Some("4"));
        assert!(b.evidence.contains("NUL"), "{}", b.evidence);
        assert!(b.evidence.contains("reading value is 129 bytes long (limit 128)"), "{}", b.evidence);
        assert!(b.evidence.contains("and 1 more"), "{}", b.evidence);
        assert!(b.validate().is_ok());
    }

    #[test]
    fn a_checker_whose_name_cannot_be_an_id_only_counts() {
        let nul = Finding { evidence: "a\0b".into(), ..good("nul") };
        let s = screen("bad name/with slash", "1", "h1", vec![nul, good("a")], 1);
        assert_eq!(s.refused, 1);
        assert_eq!(s.findings, vec![good("a")]);
    }
}
