//! Request validation, once, for every front end: the gRPC and REST adapters (and in-process callers)
//! hand the API layer domain values, and these checks run before anything is queued for Raft, so a bad
//! request gets INVALID_ARGUMENT (HTTP 400) and the revision does not move. Every limit is a named constant;
//! the table test in `tests/tests/api_validation.rs` drives both front ends with the same bad inputs.

use std::collections::BTreeMap;

use proto::error::ApiError;
use state_machines::Finding;

pub use crate::model::{
    MAX_FINDINGS_PER_BATCH, MAX_MAP_ENTRIES, MAX_MAP_KEY_LEN, MAX_MAP_VALUE_LEN, MAX_OBJECTS_PER_REGISTER,
    MAX_TEXT_LEN,
};

/// Longest checker name, checker version, rule name, reading name or reading value.
pub const MAX_LABEL_LEN: usize = state_machines::finding::MAX_LABEL_LEN;
/// Most readings one finding may carry (the state machines keep at most this many; more is refused rather
/// than silently cut).
pub const MAX_READINGS: usize = state_machines::finding::MAX_READINGS;
/// Longest evidence text kept (longer evidence is cut at a character boundary by `Finding::bounded`: it is
/// a kernel log line or a probe's output, where the head says what happened).
pub const MAX_EVIDENCE_LEN: usize = state_machines::finding::MAX_EVIDENCE_LEN;
/// Longest reason of an object command, which for an action result is the agent's report (the worker
/// caps its own detail at 2 KiB and appends its figures; the master keeps what it gets, bounded here).
pub const MAX_DETAIL_LEN: usize = 8192;
/// Most checkers one heartbeat may list, and the longest version string kept (hostile input stays small).
pub const MAX_HEARTBEAT_CHECKERS: usize = 64;
pub const MAX_VERSION_LEN: usize = 64;

/// Objects (or agents) one page of a listing holds when the request says 0: big enough that a subscriber
/// listing 1.5 M objects needs 1,500 calls, small enough that a page of objects with their evidence stays
/// far under the gRPC message limit (`grpc::MAX_GRPC_MESSAGE`, 16 MiB: about 1.6 KiB per object at the cap).
pub const DEFAULT_PAGE: usize = 1_000;
/// Largest page served; a request for more is served this many (the proto's "served as the maximum").
pub const MAX_PAGE: usize = 10_000;
/// Rows one page examines at most (a selective filter such as a label over 1.5 M objects): the page then
/// ends early, possibly empty, with a token that continues after the last row examined, so one call never
/// holds a read transaction over the whole table. A filter by state other than GOOD reads the objects in
/// that state instead (`by_state`).
pub const MAX_PAGE_SCAN: usize = 100_000;
/// Longest page token accepted (a token carries one object id, at most a few hundred bytes, in base64).
pub const MAX_PAGE_TOKEN_LEN: usize = 2_048;

/// At most this many characters of a bad value are quoted back in an error message.
const QUOTE_CHARS: usize = 40;

fn quoted(s: &str) -> String {
    format!("{:?}", s.chars().take(QUOTE_CHARS).collect::<String>())
}

/// A one-line name (checker, rule, reading name, agent id, operator): bounded, no control characters.
pub fn name(what: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.len() > max {
        return Err(ApiError::invalid(format!("{what} is {} bytes long (limit {max})", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("{what} {} contains control characters", quoted(s))));
    }
    Ok(())
}

/// Free text (evidence, a reason): bounded, and no NUL byte (NUL ends C strings in every tool that reads
/// these texts later). Other characters pass: evidence quotes log lines and probe output as they were
/// (carriage returns from CRLF files included), and every reader escapes what it shows.
pub fn text(what: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.len() > max {
        return Err(ApiError::invalid(format!("{what} is {} bytes long (limit {max})", s.len())));
    }
    if s.contains('\0') {
        return Err(ApiError::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// One finding, as any front end delivers it (the object id and severity are already typed). The rules are
/// `Finding::validate` in `state-machines`, which the agent also runs before it queues a finding.
pub fn finding(f: &Finding) -> Result<(), ApiError> {
    f.validate().map_err(|e| ApiError::invalid(format!("finding about {}: {e}", f.object)))
}

/// An ingest batch: 1..=MAX_FINDINGS_PER_BATCH valid findings; an agent batch carries a sequence >= 1.
pub fn ingest(agent: &str, seq: u64, findings: &[Finding]) -> Result<(), ApiError> {
    if findings.is_empty() {
        return Err(ApiError::invalid("no findings in the batch"));
    }
    if findings.len() > MAX_FINDINGS_PER_BATCH {
        return Err(ApiError::invalid(format!(
            "{} findings in one batch (limit {MAX_FINDINGS_PER_BATCH})",
            findings.len()
        )));
    }
    name("agent", agent, MAX_TEXT_LEN)?;
    if !agent.is_empty() && seq == 0 {
        return Err(ApiError::invalid("an agent batch needs a sequence number >= 1"));
    }
    for (i, f) in findings.iter().enumerate() {
        finding(f).map_err(|e| ApiError::new(e.code, format!("finding {i}: {}", e.message)))?;
        if !agent.is_empty() && f.object.kind().is_network() {
            // Switches and links are judged by the leader's localisation over many agents' reports; one
            // agent naming a switch would bypass the vote (and no agent runs on a switch).
            return Err(ApiError::invalid(format!(
                "finding {i}: {} is a network device: an agent may not report about it (the master's \
                 network localisation does)",
                f.object
            )));
        }
    }
    Ok(())
}

/// A heartbeat's `probe_addr` (issue 16): empty (does not answer probes) or an IP:PORT.
pub fn probe_addr(addr: &str) -> Result<(), ApiError> {
    if addr.is_empty() || addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    Err(ApiError::invalid(format!("probe_addr {} is not IP:PORT", quoted(addr))))
}

/// Labels or attributes of a registered object: bounded inventory data.
pub fn map(what: &str, m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.len() > MAX_MAP_ENTRIES {
        return Err(ApiError::invalid(format!("{} {what} (limit {MAX_MAP_ENTRIES})", m.len())));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_MAP_KEY_LEN || v.len() > MAX_MAP_VALUE_LEN {
            return Err(ApiError::invalid(format!(
                "{what} entry {}: keys 1..={MAX_MAP_KEY_LEN} bytes, values up to {MAX_MAP_VALUE_LEN}",
                quoted(k)
            )));
        }
        // Keys are names; values are inventory text as the host reports it (a model string may carry
        // odd bytes; only NUL is refused).
        name(what, k, MAX_MAP_KEY_LEN)?;
        text(what, v, MAX_MAP_VALUE_LEN)?;
    }
    Ok(())
}

/// A host name as object ids use it.
pub fn host(h: &str) -> Result<(), ApiError> {
    state_machines::id::validate_host(h).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Operator name and reason: both required (the audit log says who and why), bounded, one line for the
/// name; the reason may span lines.
pub fn operator(by: &str, reason: &str) -> Result<(), ApiError> {
    if by.trim().is_empty() {
        return Err(ApiError::invalid("say who you are (by)"));
    }
    if reason.trim().is_empty() {
        return Err(ApiError::invalid("a reason is required"));
    }
    name("by", by, MAX_TEXT_LEN)?;
    text("reason", reason, MAX_TEXT_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::error::Code;
    use state_machines::Severity;

    fn good() -> Finding {
        Finding {
            object: "disk/h1/sda".parse().expect("id"),
            severity: Severity::Error,
            checker: "smart".into(),
            version: "1.0.0".into(),
            rule: "smart.reallocated".into(),
            evidence: "Reallocated_Sector_Ct 12\nline two".into(),
            readings: [("reallocated".to_string(), "12".to_string())].into_iter().collect(),
            time_ms: 1_700_000_000_000,
            shadow: false,
        }
    }

    fn check(f: Finding, expected: Result<(), &str>) {
        match (finding(&f), expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) => {
                assert_eq!(e.code, Code::InvalidArgument);
                assert!(e.message.contains(want), "want {want:?}: {e}");
            }
            (got, want) => panic!("{f:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn findings() {
        check(good(), Ok(()));
        check(Finding { checker: String::new(), ..good() }, Err("no checker"));
        check(Finding { checker: "sm\nart".into(), ..good() }, Err("control"));
        check(Finding { rule: "r\u{7}".into(), ..good() }, Err("control"));
        check(Finding { checker: "a\u{0}b".into(), ..good() }, Err("control"));
        check(Finding { evidence: "a\u{0}b".into(), ..good() }, Err("NUL"));
        check(Finding { evidence: "a\r\n\tb".into(), ..good() }, Ok(()));
        check(Finding { checker: "c".repeat(MAX_LABEL_LEN), ..good() }, Ok(()));
        check(Finding { checker: "c".repeat(MAX_LABEL_LEN + 1), ..good() }, Err("limit 128"));
        check(Finding { rule: "x".repeat(200), ..good() }, Err("limit"));
        let many = |n: usize| (0..n).map(|i| (format!("r{i}"), "1".to_string())).collect();
        check(Finding { readings: many(MAX_READINGS), ..good() }, Ok(()));
        check(Finding { readings: many(MAX_READINGS + 1), ..good() }, Err("readings (limit"));
        let one = |k: String, v: String| [(k, v)].into_iter().collect();
        check(Finding { readings: one("k".repeat(10_000), "1".into()), ..good() }, Err("reading name"));
        check(Finding { readings: one("k".into(), "v".repeat(100_000)), ..good() }, Err("reading value"));
    }

    #[test]
    fn batches() {
        assert!(ingest("", 0, &[good()]).is_ok());
        assert!(ingest("a", 1, &[good()]).is_ok());
        assert!(ingest("a", 0, &[good()]).expect_err("seq").message.contains("sequence"));
        assert!(ingest("", 0, &[]).expect_err("empty").message.contains("no findings"));
        let full = vec![good(); MAX_FINDINGS_PER_BATCH];
        assert!(ingest("", 0, &full).is_ok(), "the limit itself is fine");
        let over = vec![good(); MAX_FINDINGS_PER_BATCH + 1];
        assert!(ingest("", 0, &over).expect_err("over").message.contains("limit"));
        let bad = vec![good(), Finding { rule: "\u{7}".into(), ..good() }];
        assert!(ingest("", 0, &bad).expect_err("second").message.starts_with("finding 1:"));
        assert!(ingest("ag\nent", 1, &[good()]).is_err());
    }

    #[test]
    fn maps_and_operators() {
        let m = |k: &str, v: &str| [(k.to_string(), v.to_string())].into_iter().collect::<BTreeMap<_, _>>();
        assert!(map("labels", &m("rack", "r1")).is_ok());
        assert!(map("labels", &m("", "r1")).is_err());
        assert!(map("labels", &m("ra\nck", "r1")).is_err());
        assert!(map("labels", &m("rack", "r\u{0}1")).is_err());
        assert!(map("attributes", &m("model", "ST4000\tNM")).is_ok());
        assert!(map("labels", &m("rack", &"v".repeat(MAX_MAP_VALUE_LEN + 1))).is_err());
        let full: BTreeMap<String, String> =
            (0..MAX_MAP_ENTRIES).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(map("labels", &full).is_ok());
        let mut over = full;
        over.insert("one-more".into(), "v".into());
        assert!(map("labels", &over).is_err());
        assert!(operator("ops", "disk swap\nticket 1").is_ok());
        assert!(operator("", "r").is_err());
        assert!(operator("ops", " ").is_err());
        assert!(operator("o\u{1b}ps", "r").is_err());
        assert!(operator("ops", "r\u{0}").is_err());
        assert!(operator("ops", &"r".repeat(MAX_TEXT_LEN + 1)).is_err());
    }
}
