//! SMART part of a disk TEST: the overall health verdict and, where the device supports it, a short
//! self-test waited for within its own bound. A device without SMART (a loop device, a virtual disk) is
//! recorded as "not supported", which is not a failure: the benchmark still judges it. Parsing reuses the
//! disk checker's smartctl JSON parser.

use std::path::Path;
use std::time::{Duration, Instant};

use checkers::smart::{ProbeProblem, SmartReport, parse_report};

use super::exec::Exec;
use crate::worker::StepError;

/// Timeout of one smartctl call: a healthy device answers in well under a second; a hang is evidence.
pub const SMARTCTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Self-test settings (from `worker.disk`).
#[derive(Debug, Clone, Copy)]
pub struct SelfTest {
    pub enabled: bool,
    /// Longest wait for the test to finish.
    pub timeout: Duration,
    /// Polling interval while it runs.
    pub poll: Duration,
}

/// What the SMART part found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartResult {
    /// SMART is not available on this device (recorded, not a failure).
    pub unsupported: Option<String>,
    /// The overall health verdict, when the device gave one.
    pub passed: Option<bool>,
    /// What happened with the short self-test.
    pub self_test: String,
    /// Why the disk fails the SMART part (None = no SMART objection).
    pub failure: Option<String>,
}

/// Whether a self-test is still running, from `smartctl -j -c` (ATA: status value 0xF_ in
/// `ata_smart_data.self_test.status`; NVMe: a non-zero `current_self_test_operation`).
pub fn self_test_running(json: &[u8]) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    if let Some(st) = v.pointer("/ata_smart_data/self_test/status/value").and_then(|x| x.as_u64()) {
        return Some(st >> 4 == 0xf);
    }
    if let Some(op) =
        v.pointer("/nvme_self_test_log/current_self_test_operation/value").and_then(|x| x.as_u64())
    {
        return Some(op != 0);
    }
    None
}

fn unsupported_reason(out: &[u8], node: &str) -> Result<SmartReport, StepError> {
    let rep = parse_report(out, node).map_err(|e| StepError::Failed(format!("no SMART data: {e}")))?;
    match &rep.problem {
        Some(ProbeProblem::OpenFailed { reason, .. }) => {
            Err(StepError::Failed(format!("SMART not available: {reason}")))
        }
        Some(p) => Err(StepError::Failed(format!("SMART not available: {p}"))),
        None => Ok(rep),
    }
}

/// Run the SMART part on `node`. `self_test_timeout` bounds the wait for the short self-test; the
/// action's deadline bounds everything.
pub fn check(ex: &mut Exec, smartctl: &str, node: &Path, st: &SelfTest) -> SmartResult {
    let (self_test, self_test_timeout, poll_every) = (st.enabled, st.timeout, st.poll);
    let dev = node.display().to_string();
    let argv = |args: &[&str]| -> Vec<String> {
        std::iter::once(smartctl.to_string())
            .chain(args.iter().map(|s| s.to_string()))
            .chain([dev.clone()])
            .collect()
    };
    let mut res = SmartResult { unsupported: None, passed: None, self_test: "not run".into(), failure: None };
    let ran = ex.inspect(&argv(&["-j", "-H", "-i"]), Some(SMARTCTL_TIMEOUT));
    if ran.timed_out {
        res.failure = Some("smartctl hung and was killed".into());
        return res;
    }
    let rep = match unsupported_reason(ran.stdout.as_bytes(), &dev) {
        Ok(r) => r,
        Err(why) => {
            res.self_test = "not supported".into();
            res.unsupported = Some(why.to_string());
            return res;
        }
    };
    res.passed = rep.passed;
    if rep.passed == Some(false) {
        res.failure = Some("SMART overall health self-assessment: FAILED".into());
        return res;
    }
    if !self_test {
        res.self_test = "disabled in config".into();
        return res;
    }
    let started = ex.change(&argv(&["-j", "-t", "short"]), Some(SMARTCTL_TIMEOUT));
    if ex.dry_run {
        res.self_test = "planned".into();
        return res;
    }
    if !started.ok {
        res.self_test = format!("not supported (smartctl -t short exit {:?})", started.code);
        return res;
    }
    let until = Instant::now() + self_test_timeout;
    loop {
        let wait = poll_every.min(until.saturating_duration_since(Instant::now())).min(ex.remaining());
        if wait.is_zero() {
            res.failure = Some(format!(
                "short self-test did not finish within {} s",
                self_test_timeout.as_secs().min(ex.remaining().as_secs())
            ));
            return res;
        }
        std::thread::sleep(wait);
        let poll = ex.inspect(&argv(&["-j", "-c", "-l", "selftest"]), Some(SMARTCTL_TIMEOUT));
        match self_test_running(poll.stdout.as_bytes()) {
            Some(true) => continue,
            Some(false) => {
                let done = parse_report(poll.stdout.as_bytes(), &dev).ok();
                if done.is_some_and(|r| r.last_self_test_failed) {
                    res.self_test = "failed".into();
                    res.failure = Some("SMART short self-test failed".into());
                } else {
                    res.self_test = "passed".into();
                }
                return res;
            }
            None => {
                res.self_test = "status unreadable; not judged".into();
                return res;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/worker").join(name)).unwrap()
    }

    #[test]
    fn self_test_status_from_recorded_outputs() {
        // Recorded: a healthy SATA SSD whose last self-test completed (status 0).
        assert_eq!(self_test_running(&fixture("sat_xall.json")), Some(false));
        let running = br#"{"ata_smart_data":{"self_test":{"status":{"value":249,"string":"in progress, 90% remaining"}}}}"#;
        assert_eq!(self_test_running(running), Some(true));
        let nvme = br#"{"nvme_self_test_log":{"current_self_test_operation":{"value":1}}}"#;
        assert_eq!(self_test_running(nvme), Some(true));
        assert_eq!(self_test_running(b"not json"), None);
        assert_eq!(self_test_running(&fixture("nvme_xall.json")), None, "no self-test log asked for");
    }

    #[test]
    fn verdicts_from_recorded_outputs() {
        let failing = fixture("usbjmicron_a_when_failed_now.json");
        let r = unsupported_reason(&failing, "/dev/sdx").unwrap();
        assert_eq!(r.passed, Some(false));
        assert!(r.last_self_test_failed);
        let ok = unsupported_reason(&fixture("sat_xall.json"), "/dev/sda").unwrap();
        assert_eq!(ok.passed, Some(true));
        let err = unsupported_reason(&fixture("nvme_xall_error.json"), "/dev/nvme0").unwrap_err();
        assert!(err.to_string().contains("Permission denied"), "{err}");
        assert!(
            unsupported_reason(b"\x00\x01garbage", "/dev/x")
                .unwrap_err()
                .to_string()
                .contains("no SMART data")
        );
    }
}
