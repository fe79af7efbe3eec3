//! Runs each enabled checker on its interval with jitter, its own timeout and an output limit, and hands
//! the findings to the agent's sink (the outbox). A checker that fails, hangs or floods becomes a finding
//! about the checker (`checker/HOST/NAME`), never a stuck or crashed agent. A hung run is never overlapped
//! by a second run of the same checker: the next run starts only after the hung one returned, and what that
//! late run found (and its checkpoint) is reported then, so nothing it read is skipped.
//!
//! Each report carries the checkpoint of its own run (taken from the checker on the run's thread, right
//! after the run): the sink commits findings and checkpoint together, in report order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use checkers::{CheckContext, CheckError, Checker, Checkpoint};
use state_machines::{Finding, Kind, ObjectId, Severity};
use tokio::sync::{mpsc, watch};

/// Most findings one checker run may produce; beyond this the run is cut and reported as flooding (a buggy
/// rule or a hostile external checker must not fill the outbox).
pub const MAX_FINDINGS_PER_RUN: usize = 1_000;
/// Shortest interval a config may ask for: protects the host from a typo like `interval_s = 0`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest wait the loop itself accepts (whatever built the schedule): a zero interval must not spin.
pub const MIN_LOOP_WAIT: Duration = Duration::from_millis(10);
/// After a wake-up (new kernel log data), the loop waits this long before running the checker, so the lines
/// of one burst are taken in one run: a few ms of latency bought for one run per burst instead of one per
/// line. It also bounds a storm to at most one run per linger.
pub const WAKE_LINGER: Duration = Duration::from_millis(5);
/// Under a sustained stream of wake-ups (a kernel-log storm) the linger doubles after each woken run that
/// follows another within [`BUSY_GAP`], up to this: a storm then costs about six runs (and outbox commits
/// and batches) a second instead of two hundred, while a lone fault line still waits only [`WAKE_LINGER`].
/// At 5 ms flat, `huatuo bench agent` measured 14% of a core during a 5,000 lines/s storm (49 batches/s);
/// at 100 ms, 2.7% (10 batches/s; every batch is a commit, a send and their wake-ups). The bound is also
/// the latency a fault line may wait during a storm (the storm floor of issue 18 is 250 ms end to end).
pub const WAKE_LINGER_MAX: Duration = Duration::from_millis(160);
/// A wake-up within this of the previous woken run counts as the same burst (the linger keeps growing);
/// after a quieter gap the linger is back at [`WAKE_LINGER`]. Short enough that a steady trickle of faults
/// (10 a second: `huatuo bench e2e`'s steady phase, p99 124 ms with a 1 s gap) keeps the short linger,
/// long enough that a storm (lines every few ms) is one burst.
pub const BUSY_GAP: Duration = Duration::from_millis(50);

/// The linger before a woken run: [`WAKE_LINGER`] for the first wake of a burst, doubling for each wake
/// that comes within [`BUSY_GAP`] of the previous woken run, at most [`WAKE_LINGER_MAX`].
pub fn next_linger(previous: Option<Duration>, since_last_woken_run: Option<Duration>) -> Duration {
    match (previous, since_last_woken_run) {
        (Some(p), Some(gap)) if gap < BUSY_GAP => (p * 2).clamp(WAKE_LINGER, WAKE_LINGER_MAX),
        _ => WAKE_LINGER,
    }
}

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
            shadow: false,
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
    /// Run early when this is notified (the kernel-log checker's follower: new data), after
    /// [`WAKE_LINGER`]. `interval` still applies when nothing wakes it.
    pub wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// Outcome of one run, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Ok { findings: usize },
    Failed(String),
    TimedOut,
    Flooded { produced: usize },
}

/// What a run reports to the agent: the checker, its findings, its checkpoint, and how the run went.
pub struct RunReport {
    pub checker: String,
    pub version: String,
    pub findings: Vec<Finding>,
    /// Where this run stopped reading (the kmsg cursor); committed with `findings` in one transaction.
    pub checkpoint: Option<Checkpoint>,
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
    // The linger of the last woken run and when that run ended (adaptive linger: see WAKE_LINGER_MAX).
    let mut linger: Option<Duration> = None;
    let mut last_woken_run: Option<tokio::time::Instant> = None;
    let mut woken_run = false;
    loop {
        let (checker, reports) = run_once(s.checker, &ctx, s.timeout, &mut shutdown).await;
        if woken_run {
            last_woken_run = Some(tokio::time::Instant::now());
        }
        for report in reports {
            if tx.send(report).await.is_err() {
                return;
            }
        }
        s.checker = match checker {
            Some(c) => c,
            None => return, // shut down while a hung run was still in flight
        };
        let wait = jittered(s.interval.max(MIN_LOOP_WAIT), s.jitter, &mut rng);
        let woken = async {
            match &s.wake {
                Some(n) => {
                    n.notified().await;
                    let l = next_linger(linger, last_woken_run.map(|t| t.elapsed()));
                    tokio::time::sleep(l).await;
                    l
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                woken_run = false;
                linger = None;
            }
            l = woken => {
                woken_run = true;
                linger = Some(l);
            }
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

type Joined = (Box<dyn Checker>, Result<Vec<Finding>, CheckError>, Option<Checkpoint>);

/// Runs a checker once on a blocking thread with a timeout. Returns the checker back (None only when the
/// agent shut down while a timed-out run was still going, or the checker panicked) and the reports of the
/// run: one, or for a hung run two (the hang at once, then what the late run found when it returned).
pub async fn run_once(
    checker: Box<dyn Checker>,
    ctx: &CheckContext,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> (Option<Box<dyn Checker>>, Vec<RunReport>) {
    let name = checker.name().to_string();
    let version = checker.version().to_string();
    let mut run_ctx = ctx.clone();
    run_ctx.now_ms = now_ms();
    let started = std::time::Instant::now();
    let mut handle = tokio::task::spawn_blocking(move || -> Joined {
        let mut checker = checker;
        let res = checker.run(&run_ctx);
        // Taken on the run's thread, right after the run: the checkpoint belongs to exactly these findings.
        let checkpoint = checker.take_checkpoint();
        (checker, res, checkpoint)
    });
    let report = |findings: Vec<Finding>, checkpoint, status, elapsed| RunReport {
        checker: name.clone(),
        version: version.clone(),
        findings,
        checkpoint,
        status,
        elapsed,
    };
    let panicked = |e: tokio::task::JoinError| {
        // The checker panicked: it is gone; report it and stop scheduling it.
        let f =
            checker_finding(&ctx.host, &name, &version, "checker.panicked", format!("checker panicked: {e}"));
        report(f.into_iter().collect(), None, RunStatus::Failed("panicked".into()), started.elapsed())
    };
    tokio::select! {
        joined = &mut handle => match joined {
            Ok((c, res, cp)) => {
                let (st, f) = judge(&ctx.host, &name, &version, res);
                (Some(c), vec![report(f, cp, st, started.elapsed())])
            }
            Err(e) => (None, vec![panicked(e)]),
        },
        _ = tokio::time::sleep(timeout) => {
            // Report the hang, then wait for the run to return before the checker may run again; what
            // the late run found is reported after the hang, with its checkpoint.
            let f = checker_finding(&ctx.host, &name, &version, "checker.hung",
                format!("checker did not finish within {timeout:?}"));
            let mut reports = vec![report(f.into_iter().collect(), None, RunStatus::TimedOut, started.elapsed())];
            let back = tokio::select! {
                joined = handle => match joined {
                    Ok((c, res, cp)) => {
                        let (_, f) = judge(&ctx.host, &name, &version, res);
                        if !f.is_empty() || cp.is_some() {
                            let late = RunStatus::Ok { findings: f.len() };
                            reports.push(report(f, cp, late, started.elapsed()));
                        }
                        Some(c)
                    }
                    Err(e) => {
                        reports.push(panicked(e));
                        None
                    }
                },
                _ = shutdown.changed() => None,
            };
            (back, reports)
        }
    }
}

fn judge(
    host: &str,
    name: &str,
    version: &str,
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

    #[test]
    fn linger_grows_within_a_burst_up_to_its_bound_and_resets_after_a_quiet_gap() {
        // The first wake of a burst waits the short linger.
        assert_eq!(next_linger(None, None), WAKE_LINGER);
        // Each wake close to the previous woken run doubles it, never past the bound.
        let mut l = WAKE_LINGER;
        let mut seen = vec![l];
        for _ in 0..20 {
            l = next_linger(Some(l), Some(Duration::from_millis(1)));
            seen.push(l);
        }
        assert_eq!(&seen[..6], &[5, 10, 20, 40, 80, 160].map(Duration::from_millis));
        assert_eq!(l, WAKE_LINGER_MAX, "stays at the bound under a storm");
        // A quiet gap (or a run that was not woken) starts again from the short linger.
        assert_eq!(next_linger(Some(WAKE_LINGER_MAX), Some(BUSY_GAP)), WAKE_LINGER);
        assert_eq!(next_linger(Some(WAKE_LINGER_MAX), None), WAKE_LINGER);
    }

    struct Fake {
        mode: &'static str,
        runs: Arc<AtomicUsize>,
        concurrent: Arc<AtomicUsize>,
    }

    impl Checker for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn version(&self) -> &str {
            "1.0.0"
        }
        fn kinds(&self) -> &[Kind] {
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
                        shadow: false,
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
        let (back, reports) = run_once(c, &ctx(), Duration::from_millis(20), &mut rx).await;
        let report = &reports[0];
        assert_eq!(report.status, RunStatus::TimedOut);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.findings[0].object.to_string(), "checker/h1/fake");
        assert_eq!(report.findings[0].rule, "checker.hung");
        // The checker came back only after the hung run returned; running again does not overlap.
        let back = back.expect("checker returned after the hung run finished");
        let (_, _) = run_once(back, &ctx(), Duration::from_secs(5), &mut rx).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// Hangs past the timeout, then returns a finding and a checkpoint.
    struct Late;

    impl Checker for Late {
        fn name(&self) -> &str {
            "late"
        }
        fn version(&self) -> &str {
            "1.0.0"
        }
        fn kinds(&self) -> &[Kind] {
            &[Kind::Disk]
        }
        fn default_interval(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
            std::thread::sleep(Duration::from_millis(200));
            let f = checker_finding(&ctx.host, "late", "1.0.0", "late.found", String::new());
            Ok(f.into_iter().collect())
        }
        fn take_checkpoint(&mut self) -> Option<Checkpoint> {
            Some(Checkpoint { key: "late.cursor".into(), value: b"9".to_vec() })
        }
    }

    #[tokio::test]
    async fn a_hung_run_reports_its_late_findings_with_their_checkpoint() {
        let (_tx, mut rx) = watch::channel(false);
        let (back, reports) = run_once(Box::new(Late), &ctx(), Duration::from_millis(20), &mut rx).await;
        assert!(back.is_some());
        assert_eq!(reports.len(), 2);
        assert_eq!((reports[0].status.clone(), reports[0].checkpoint.clone()), (RunStatus::TimedOut, None));
        assert_eq!(reports[1].findings[0].rule, "late.found");
        assert_eq!(reports[1].checkpoint.as_ref().map(|c| c.value.clone()), Some(b"9".to_vec()));
    }

    #[tokio::test]
    async fn failing_checker_becomes_a_finding_about_the_checker() {
        let (c, _) = fake("fail");
        let (_tx, mut rx) = watch::channel(false);
        let (back, reports) = run_once(c, &ctx(), Duration::from_secs(5), &mut rx).await;
        let report = &reports[0];
        assert!(back.is_some());
        assert!(matches!(report.status, RunStatus::Failed(_)));
        assert_eq!(report.findings[0].object.kind(), Kind::Checker);
        assert!(report.findings[0].evidence.contains("no such device"));
    }

    #[tokio::test]
    async fn flooding_checker_is_cut_at_the_limit() {
        let (c, _) = fake("flood");
        let (_tx, mut rx) = watch::channel(false);
        let (_, reports) = run_once(c, &ctx(), Duration::from_secs(5), &mut rx).await;
        let report = &reports[0];
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
            wake: None,
        };
        let task = tokio::spawn(run_loop(s, ctx(), tx, rx, 7));
        assert!(reports.recv().await.is_some());
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("loop stopped").unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_wake_runs_the_checker_long_before_its_interval() {
        let (c, runs) = fake("ok");
        let (_stop, rx) = watch::channel(false);
        let (tx, mut reports) = mpsc::channel(4);
        let wake = Arc::new(tokio::sync::Notify::new());
        let s = Scheduled {
            checker: c,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            jitter: 0.0,
            wake: Some(wake.clone()),
        };
        let _task = tokio::spawn(run_loop(s, ctx(), tx, rx, 7));
        assert!(reports.recv().await.is_some(), "first run at start");
        // Several wakes while the loop waits make one run (the linger gathers them), not one each.
        wake.notify_one();
        wake.notify_one();
        let second = tokio::time::timeout(Duration::from_secs(30), reports.recv()).await;
        assert!(second.expect("woken long before the 1 h interval").is_some());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
