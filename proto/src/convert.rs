//! Wire <-> domain conversions for the types shared by every master API: findings and severities. Converting
//! from the wire validates everything (ids, severities, name lengths) and bounds evidence, so nothing past this
//! point sees unchecked outside data.

use state_machines::{Finding, ObjectId, Severity};

use crate::api;
use crate::error::ApiError;

/// Longest checker name, version or rule name we accept (real ones are a few dozen characters).
pub const MAX_LABEL_LEN: usize = 128;

fn check_label(what: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_LABEL_LEN {
        return Err(ApiError::invalid(format!("{what} is {} bytes long (limit {MAX_LABEL_LEN})", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("{what} contains control characters")));
    }
    Ok(())
}

/// Parse and validate an object id from the wire.
pub fn object_id(s: &str) -> Result<ObjectId, ApiError> {
    s.parse::<ObjectId>().map_err(|e| ApiError::invalid(e.to_string()))
}

/// Parse a severity from the wire.
pub fn severity(s: &str) -> Result<Severity, ApiError> {
    s.parse::<Severity>().map_err(|e| ApiError::invalid(e.to_string()))
}

/// A wire finding to a validated, bounded domain finding.
pub fn finding_from_wire(f: api::Finding) -> Result<Finding, ApiError> {
    let object = object_id(&f.object)?;
    let severity = severity(&f.severity)?;
    if f.checker.is_empty() {
        return Err(ApiError::invalid(format!("finding about {object} has no checker name")));
    }
    check_label("checker", &f.checker)?;
    check_label("version", &f.version)?;
    check_label("rule", &f.rule)?;
    for (k, v) in &f.readings {
        check_label("reading name", k)?;
        check_label("reading value", v)?;
    }
    Ok(Finding {
        object,
        severity,
        checker: f.checker,
        version: f.version,
        rule: f.rule,
        evidence: f.evidence,
        readings: f.readings.into_iter().collect(),
        time_ms: f.time_ms,
    }
    .bounded())
}

/// A domain finding to the wire.
pub fn finding_to_wire(f: &Finding) -> api::Finding {
    api::Finding {
        object: f.object.to_string(),
        severity: f.severity.as_str().to_string(),
        checker: f.checker.clone(),
        version: f.version.clone(),
        rule: f.rule.clone(),
        evidence: f.evidence.clone(),
        readings: f.readings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        time_ms: f.time_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn wire(object: &str, severity: &str) -> api::Finding {
        api::Finding {
            object: object.into(),
            severity: severity.into(),
            checker: "smart".into(),
            version: "1.0.0".into(),
            rule: "smart.reallocated".into(),
            evidence: "Reallocated_Sector_Ct 12".into(),
            readings: [("reallocated".to_string(), "12".to_string())].into_iter().collect(),
            time_ms: 1_700_000_000_000,
        }
    }

    fn check(input: api::Finding, expected: Result<(), &str>) {
        match (finding_from_wire(input.clone()), expected) {
            (Ok(f), Ok(())) => assert_eq!(finding_to_wire(&f), input),
            (Err(e), Err(want)) => {
                assert_eq!(e.code, Code::InvalidArgument);
                assert!(e.message.contains(want), "{e}");
            }
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn validates_findings() {
        check(wire("disk/h1/sda", "ERROR"), Ok(()));
        check(wire("disk/h1", "ERROR"), Err("needs a name"));
        check(wire("disk/h1/sda", "BROKEN"), Err("unknown severity"));
        let mut f = wire("disk/h1/sda", "ERROR");
        f.checker = String::new();
        check(f, Err("no checker"));
        let mut f = wire("disk/h1/sda", "ERROR");
        f.rule = "x".repeat(MAX_LABEL_LEN + 1);
        check(f, Err("limit"));
        let mut f = wire("disk/h1/sda", "ERROR");
        f.checker = "a\u{0}b".into();
        check(f, Err("control"));
    }

    #[test]
    fn evidence_is_bounded() {
        let mut f = wire("disk/h1/sda", "ERROR");
        f.evidence = "x".repeat(state_machines::finding::MAX_EVIDENCE_LEN * 2);
        let got = finding_from_wire(f).expect("valid");
        assert_eq!(got.evidence.len(), state_machines::finding::MAX_EVIDENCE_LEN);
    }
}
