//! Runs each enabled checker on its interval with jitter, its own timeout and an output limit, and hands
//! the findings to the agent's sink (the outbox). A checker that fails, hangs or floods becomes a finding
//! about the checker (`checker/HOST/NAME`), never a stuck or crashed agent. A hung run is never overlapped
//! by a second run of the same checker: the next run starts only after the hung one returned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use checkers::{CheckContext, CheckError, Checker};
use state_machines::{Finding, Kind, ObjectId, Severity};
use tokio::sync::{mpsc, watch};

/// Most findings one checker run may produce; beyond this the run is cut and reported as flooding (a buggy
/// rule or a hostile external checker must not fill the outbox).
pub const MAX_FINDINGS_PER_RUN: usize = 1_000;
/// Shortest interval a config may ask for: protects the host from a typo like `interval_s = 0`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Wall-clock milliseconds: the edge where time enters the agent.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A finding about a checker itself (it failed, hung or misbehaved). Never about the host's hardware.
pub fn checker_finding(
    host: &str,
    checker: &str,
    version: &str,
    rule: &str,
    evidence: String,
) -> Option<Finding> {
    let object = ObjectId::new(Kind::Checker, host, Some(checker)).ok()?;
    Some(
        Finding {
            object,
            severity: Severity::Warning,
            checker: checker.to_string(),
            version: version.to_string(),
            rule: rule.to_string(),
            evidence,
            readings: Default::default(),
            time_ms: now_ms(),
        }
        .bounded(),
    )
}

/// One scheduled checker.
pub struct Scheduled {
    pub checker: Box<dyn Checker>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Fraction of the interval added at random to each wait, so a fleet does not probe in lockstep.
    pub jitter: f64,
}

/// Outcome of one run, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Ok { findings: usize },
    Failed(String),
    TimedOut,
    Flooded { produced: usize },
}

/// What a run reports to the agent: the checker, its findings, and how the run went.
pub struct RunReport {
    pub checker: &'static str,
    pub version: &'static str,
    pub findings: Vec<Finding>,
    pub status: RunStatus,
    pub elapsed: Duration,
}

/// Runs one checker forever (until shutdown): run, report, wait interval + jitter.
pub async fn run_loop(
    mut s: Scheduled,
    ctx: CheckContext,
    tx: mpsc::Sender<RunReport>,
    mut shutdown: watch::Receiver<bool>,
    seed: u64,
) {
    let mut rng = seed | 1;
    loop {
        let (checker, report) = run_once(s.checker, &ctx, s.timeout, &mut shutdown).await;
        s.checker = match checker {
            Some(c) => c,
            None => return, // shut down while a hung run was still in flight
        };
        if tx.send(report).await.is_err() {
            return;
        }
        let wait = jittered(s.interval.max(MIN_INTERVAL), s.jitter, &mut rng);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn jittered(interval: Duration, jitter: f64, rng: &mut u64) -> Duration {
    // xorshift64: decorrelates hosts, determinism is not needed here (it is not a decision).
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let frac = (*rng % 10_000) as f64 / 10_000.0 * jitter.clamp(0.0, 1.0);
    interval + interval.mul_f64(frac)
}

/// Runs a checker once on a blocking thread with a timeout. Returns the checker back (None only when the
/// agent shut down while a timed-out run was still going).
pub async fn run_once(
    checker: Box<dyn Checker>,
    ctx: &CheckContext,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> (Option<Box<dyn Checker>>, RunReport) {
    let name = checker.name();
    let version = checker.version();
    let mut run_ctx = ctx.clone();
    run_ctx.now_ms = now_ms();
    let started = std::time::Instant::now();
    let mut handle = tokio::task::spawn_blocking(move || {
        let mut checker = checker;
        let res = checker.run(&run_ctx);
        (checker, res)
    });
    let (checker, status, findings) = tokio::select! {
        joined = &mut handle => match joined {
            Ok((c, res)) => { let (st, f) = judge(&ctx.host, name, version, res); (Some(c), st, f) }
            Err(e) => {
                // The checker panicked: it is gone; report it and stop scheduling it.
                let f = checker_finding(&ctx.host, name, version, "checker.panicked", format!("checker panicked: {e}"));
                return (None, RunReport { checker: name, version, findings: f.into_iter().collect(),
                    status: RunStatus::Failed("panicked".into()), elapsed: started.elapsed() });
            }
        },
        _ = tokio::time::sleep(timeout) => {
            // Report the hang now, then wait for the run to return before the checker may run again.
            let f = checker_finding(&ctx.host, name, version, "checker.hung",
                format!("checker did not finish within {timeout:?}"));
            let report = RunReport { checker: name, version, findings: f.into_iter().collect(),
                status: RunStatus::TimedOut, elapsed: started.elapsed() };
            let back = tokio::select! {
                joined = handle => joined.ok().map(|(c, _)| c),
                _ = shutdown.changed() => None,
            };
            return (back, report);
        }
    };
    (checker, RunReport { checker: name, version, findings, status, elapsed: started.elapsed() })
}

fn judge(
    host: &str,
    name: &'static str,
    version: &'static str,
    res: Result<Vec<Finding>, CheckError>,
) -> (RunStatus, Vec<Finding>) {
    match res {
        Ok(mut findings) if findings.len() > MAX_FINDINGS_PER_RUN => {
            let produced = findings.len();
            findings.truncate(MAX_FINDINGS_PER_RUN);
            findings.extend(checker_finding(
                host,
                name,
                version,
                "checker.flooding",
                format!("run produced {produced} findings; kept the first {MAX_FINDINGS_PER_RUN}"),
            ));
            (RunStatus::Flooded { produced }, findings.into_iter().map(Finding::bounded).collect())
        }
        Ok(findings) => {
            let n = findings.len();
            (RunStatus::Ok { findings: n }, findings.into_iter().map(Finding::bounded).collect())
        }
        Err(e) => {
            let f = checker_finding(host, name, version, "checker.failed", e.to_string());
            (RunStatus::Failed(e.to_string()), f.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        mode: &'static str,
        runs: Arc<AtomicUsize>,
        concurrent: Arc<AtomicUsize>,
    }

    impl Checker for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn version(&self) -> &'static str {
            "1.0.0"
        }
        fn kinds(&self) -> &'static [Kind] {
            &[Kind::Disk]
        }
        fn default_interval(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
            let now = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(now, 1, "two runs of one checker overlapped");
            self.runs.fetch_add(1, Ordering::SeqCst);
            let out = match self.mode {
                "hang" => {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(vec![])
                }
                "fail" => Err(CheckError::Probe("no such device".into())),
                "flood" => Ok((0..MAX_FINDINGS_PER_RUN + 5)
                    .map(|i| Finding {
                        object: ObjectId::new(Kind::Disk, &ctx.host, Some(&format!("sd{i}"))).unwrap(),
                        severity: Severity::Warning,
                        checker: "fake".into(),
                        version: "1.0.0".into(),
                        rule: "r".into(),
                        evidence: String::new(),
                        readings: Default::default(),
                        time_ms: ctx.now_ms,
                    })
                    .collect()),
                _ => Ok(vec![]),
            };
            self.concurrent.fetch_sub(1, Ordering::SeqCst);
            out
        }
    }

    fn ctx() -> CheckContext {
        CheckContext { root: "/".into(), host: "h1".into(), now_ms: 0, profile: "online".into() }
    }

    fn fake(mode: &'static str) -> (Box<dyn Checker>, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        (Box::new(Fake { mode, runs: runs.clone(), concurrent: Arc::new(AtomicUsize::new(0)) }), runs)
    }

    #[tokio::test]
    async fn hung_checker_is_reported_and_never_overlapped() {
        let (c, runs) = fake("hang");
        let (_tx, mut rx) = watch::channel(false);
        let (back, report) = run_once(c, &ctx(), Duration::from_millis(20), &mut rx).await;
        assert_eq!(report.status, RunStatus::TimedOut);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.findings[0].object.to_string(), "checker/h1/fake");
        assert_eq!(report.findings[0].rule, "checker.hung");
        // The checker came back only after the hung run returned; running again does not overlap.
        let back = back.expect("checker returned after the hung run finished");
        let (_, _) = run_once(back, &ctx(), Duration::from_secs(5), &mut rx).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failing_checker_becomes_a_finding_about_the_checker() {
        let (c, _) = fake("fail");
        let (_tx, mut rx) = watch::channel(false);
        let (back, report) = run_once(c, &ctx(), Duration::from_secs(5), &mut rx).await;
        assert!(back.is_some());
        assert!(matches!(report.status, RunStatus::Failed(_)));
        assert_eq!(report.findings[0].object.kind(), Kind::Checker);
        assert!(report.findings[0].evidence.contains("no such device"));
    }

    #[tokio::test]
    async fn flooding_checker_is_cut_at_the_limit() {
        let (c, _) = fake("flood");
        let (_tx, mut rx) = watch::channel(false);
        let (_, report) = run_once(c, &ctx(), Duration::from_secs(5), &mut rx).await;
        assert_eq!(report.status, RunStatus::Flooded { produced: MAX_FINDINGS_PER_RUN + 5 });
        assert_eq!(report.findings.len(), MAX_FINDINGS_PER_RUN + 1);
        assert_eq!(report.findings.last().unwrap().rule, "checker.flooding");
    }

    #[tokio::test]
    async fn loop_stops_on_shutdown() {
        let (c, runs) = fake("ok");
        let (stop, rx) = watch::channel(false);
        let (tx, mut reports) = mpsc::channel(4);
        let s = Scheduled {
            checker: c,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            jitter: 0.1,
        };
        let task = tokio::spawn(run_loop(s, ctx(), tx, rx, 7));
        assert!(reports.recv().await.is_some());
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("loop stopped").unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
