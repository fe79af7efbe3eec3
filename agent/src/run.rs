//! The agent daemon: wires the configured checkers, the durable outbox, the reporter and the local HTTP
//! surface together, and shuts them all down in order on request (stop checkers, flush what can be flushed
//! within a bounded time, close the stream; the outbox keeps the rest for the next start).
//!
//! Data flow: checker run (blocking thread) -> `RunReport` over a bounded channel -> sink task (dedupe of
//! unchanged healthy readings, outbox enqueue with fsync, then the kmsg cursor is committed) -> reporter.
//! The kmsg cursor is committed only after the findings of the lines it covers are durable, so a crash
//! between the two re-reads lines instead of losing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use checkers::edac::EdacChecker;
use checkers::kernel_log::{Cursor, CursorError, CursorStore, KernelLogChecker, RuleSet};
use checkers::machine::MachineChecker;
use checkers::nic::NicChecker;
use checkers::registry::HostConfig;
use checkers::scoring::disk::DiskChecker;
use checkers::{CheckContext, Checker};
use state_machines::{Finding, Severity};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::AgentConfig;
use crate::local::Shared;
use crate::outbox::{Limits, OutboxStore, RedbOutbox};
use crate::reporter::{self, ReporterConfig};
use crate::scheduler::{RunReport, RunStatus, Scheduled, now_ms, run_loop};

/// Pending run reports between the checkers and the sink: a slow disk under the outbox makes checkers
/// wait (back-pressure) instead of growing memory.
pub const REPORT_QUEUE: usize = 64;
/// How often an unchanged healthy reading is sent again anyway, so the master sees it is still true.
pub const HEALTHY_REFRESH_MS: u64 = 10 * 60 * 1000;
/// Interval of the kernel-log checker: it follows /dev/kmsg by polling it this often.
pub const KMSG_POLL: Duration = Duration::from_secs(1);
/// Bound on the shutdown: tasks that do not stop in time are abandoned (the outbox keeps their data).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default checker timeout when neither the config nor the checker says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// KV key of the kmsg cursor.
const KMSG_CURSOR_KEY: &str = "kmsg.cursor";

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The kmsg cursor in the outbox's KV, committed by the sink after the findings are durable.
struct KvCursorStore {
    outbox: Arc<dyn OutboxStore>,
    pending: Arc<Mutex<Option<Cursor>>>,
}

impl CursorStore for KvCursorStore {
    fn load(&mut self) -> Result<Option<Cursor>, CursorError> {
        let raw = self.outbox.kv_get(KMSG_CURSOR_KEY).ok().flatten();
        Ok(raw.and_then(|v| {
            let s = String::from_utf8(v).ok()?;
            let (boot, seq) = s.split_once(' ')?;
            Some(Cursor { boot_id: boot.to_string(), seq: seq.parse().ok()? })
        }))
    }

    fn save(&mut self, cursor: &Cursor) -> Result<(), CursorError> {
        if let Ok(mut p) = self.pending.lock() {
            *p = Some(cursor.clone());
        }
        Ok(())
    }
}

/// This machine's host name (from the real /proc, not the probe root).
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| state_machines::id::validate_host(s).is_ok())
        .unwrap_or_else(|| "localhost".to_string())
}

fn scheduled(cfg: &AgentConfig, checker: Box<dyn Checker>, interval: Option<Duration>) -> Option<Scheduled> {
    let c = cfg.checkers.get(checker.name()).cloned().unwrap_or_default();
    if cfg.checkers.contains_key(checker.name()) && !c.enabled {
        return None;
    }
    let interval = c.interval_s.map(Duration::from_secs).or(interval).unwrap_or(checker.default_interval());
    let timeout = c.timeout_s.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
    Some(Scheduled { checker, interval, timeout, jitter: 0.1 })
}

/// Most kernel-log findings buffered for one consumer between its runs (a log storm must not grow memory;
/// the kernel-log findings themselves still go to the master in full).
pub const KERNEL_FEED_MAX: usize = 10_000;

/// Kernel-log findings on their way to a checker that grades with them (disk, machine).
#[derive(Clone, Default)]
pub struct KernelFeed(Arc<Mutex<Vec<Finding>>>);

impl KernelFeed {
    fn push(&self, findings: &[Finding]) {
        if let Ok(mut v) = self.0.lock() {
            for f in findings {
                if v.len() >= KERNEL_FEED_MAX {
                    v.remove(0);
                }
                v.push(f.clone());
            }
        }
    }

    fn take(&self) -> Vec<Finding> {
        self.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }
}

/// Checkers that take the kernel-log findings since their last run as an input.
trait KernelFed: Checker {
    fn set_kernel_findings(&mut self, findings: Vec<Finding>);
}

impl KernelFed for DiskChecker {
    fn set_kernel_findings(&mut self, findings: Vec<Finding>) {
        DiskChecker::set_kernel_findings(self, findings)
    }
}

impl KernelFed for MachineChecker {
    fn set_kernel_findings(&mut self, findings: Vec<Finding>) {
        MachineChecker::set_kernel_findings(self, findings)
    }
}

/// A checker that is handed the kernel findings of its feed before each run.
struct Fed<C> {
    inner: C,
    feed: KernelFeed,
}

impl<C: KernelFed> Checker for Fed<C> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn version(&self) -> &'static str {
        self.inner.version()
    }
    fn kinds(&self) -> &'static [state_machines::Kind] {
        self.inner.kinds()
    }
    fn default_interval(&self) -> Duration {
        self.inner.default_interval()
    }
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, checkers::CheckError> {
        self.inner.set_kernel_findings(self.feed.take());
        self.inner.run(ctx)
    }
}

/// Names of the checkers this agent can run (config sections are checked against it).
pub fn known_checkers() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = checkers::registry::catalog().iter().map(|c| c.name).collect();
    names.push(checkers::kernel_log::CHECKER_NAME);
    names
}

fn setting_path(cfg: &AgentConfig, checker: &str, key: &str) -> anyhow::Result<Option<PathBuf>> {
    match cfg.checkers.get(checker).and_then(|c| c.settings.get(key)) {
        None => Ok(None),
        Some(toml::Value::String(p)) => Ok(Some(PathBuf::from(p))),
        Some(_) => anyhow::bail!("checkers.{checker}.settings.{key} must be a path string"),
    }
}

/// Build the checkers the config enables; returns them with the feeds the sink fills with kernel findings.
fn build_checkers(
    cfg: &AgentConfig,
    outbox: &Arc<dyn OutboxStore>,
    cursor: &Arc<Mutex<Option<Cursor>>>,
) -> anyhow::Result<(Vec<Scheduled>, Vec<KernelFeed>)> {
    let mut host = HostConfig::default();
    // SMART: the configured smartctl, else the standard one when probing this host and it is installed.
    host.disk.smartctl = setting_path(cfg, "disk", "smartctl")?.or_else(|| {
        let std_path = PathBuf::from("/usr/sbin/smartctl");
        (cfg.root == Path::new("/") && std_path.exists()).then_some(std_path)
    });
    host.disk.profile_dir = setting_path(cfg, "disk", "profiles")?;
    let feeds = vec![KernelFeed::default(), KernelFeed::default()];
    let mut out = Vec::new();
    let disk = Fed { inner: DiskChecker::new(host.disk.clone()), feed: feeds[0].clone() };
    out.extend(scheduled(cfg, Box::new(disk), None));
    out.extend(scheduled(cfg, Box::new(EdacChecker::new(host.edac)), None));
    out.extend(scheduled(cfg, Box::new(NicChecker::new(host.nic.clone())), None));
    let machine = Fed { inner: MachineChecker::new(host.machine.clone()), feed: feeds[1].clone() };
    out.extend(scheduled(cfg, Box::new(machine), None));
    let rules = match setting_path(cfg, "kernel-log", "rules")? {
        Some(dir) => RuleSet::from_dir(&dir).context("kernel-log rules")?,
        None => RuleSet::default_rules().context("built-in kernel-log rules")?,
    };
    let store = KvCursorStore { outbox: Arc::clone(outbox), pending: Arc::clone(cursor) };
    let kl = KernelLogChecker::kmsg(Arc::new(rules), Box::new(store));
    out.extend(scheduled(cfg, Box::new(kl), Some(KMSG_POLL)));
    Ok((out, feeds))
}

/// Keeps unchanged healthy readings from being re-sent every run.
#[derive(Default)]
struct Dedupe {
    last: BTreeMap<(String, String, String), (Severity, u64)>,
}

/// Most (object, checker, rule) keys remembered: bounded memory on a host with a huge device count.
const DEDUPE_KEYS: usize = 50_000;

impl Dedupe {
    fn keep(&mut self, f: &Finding, now: u64) -> bool {
        let key = (f.object.to_string(), f.checker.clone(), f.rule.clone());
        let send = match self.last.get(&key) {
            Some((sev, at)) => {
                // Faults about hardware go out every run (hysteresis counts readings); a checker that keeps
                // failing is reported on change and refresh only, like a healthy reading.
                let counts = f.severity.is_fault() && f.object.kind() != state_machines::Kind::Checker;
                *sev != f.severity || counts || now.saturating_sub(*at) >= HEALTHY_REFRESH_MS
            }
            None => true,
        };
        if send {
            if self.last.len() >= DEDUPE_KEYS && !self.last.contains_key(&key) {
                self.last.pop_first();
            }
            self.last.insert(key, (f.severity, now));
        }
        send
    }
}

async fn sink(
    mut rx: mpsc::Receiver<RunReport>,
    outbox: Arc<dyn OutboxStore>,
    shared: Arc<Shared>,
    cursor: Arc<Mutex<Option<Cursor>>>,
    feeds: Vec<KernelFeed>,
    wake: Arc<Notify>,
) {
    let mut dedupe = Dedupe::default();
    while let Some(report) = rx.recv().await {
        let labels = vec![("checker".to_string(), report.checker.to_string())];
        shared.metrics.checker_runs.get_or_create(&labels).inc();
        shared.metrics.checker_seconds.get_or_create(&labels).observe(report.elapsed.as_secs_f64());
        let reason = match &report.status {
            RunStatus::Ok { .. } => None,
            RunStatus::Failed(_) => Some("failed"),
            RunStatus::TimedOut => Some("hung"),
            RunStatus::Flooded { .. } => Some("flooding"),
        };
        if let Some(r) = reason {
            let l = vec![
                ("checker".to_string(), report.checker.to_string()),
                ("reason".to_string(), r.to_string()),
            ];
            shared.metrics.checker_failures.get_or_create(&l).inc();
        }
        let now = now_ms();
        let is_kmsg = report.checker == checkers::kernel_log::CHECKER_NAME;
        if is_kmsg {
            for feed in &feeds {
                feed.push(&report.findings);
            }
        }
        let findings: Vec<Finding> = report.findings.into_iter().filter(|f| dedupe.keep(f, now)).collect();
        let items: Vec<(Severity, Vec<u8>)> =
            findings.iter().filter_map(|f| serde_json::to_vec(f).ok().map(|b| (f.severity, b))).collect();
        let ob = Arc::clone(&outbox);
        let pending = if is_kmsg { cursor.lock().ok().and_then(|mut c| c.take()) } else { None };
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            if !items.is_empty() {
                ob.enqueue(&items).map_err(|e| e.to_string())?;
            }
            if let Some(c) = pending {
                ob.kv_put(KMSG_CURSOR_KEY, format!("{} {}", c.boot_id, c.seq).as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await;
        match res {
            Ok(Ok(())) => {
                shared.record(&findings);
                if !findings.is_empty() {
                    wake.notify_one();
                }
            }
            // The findings are not durable; the kmsg cursor was not advanced, so those lines are read again
            // after a restart. Other checkers will report the same condition on their next run.
            Ok(Err(e)) => tracing::error!(checker = report.checker, error = %e, "outbox enqueue failed"),
            Err(e) => tracing::error!(checker = report.checker, error = %e, "outbox task failed"),
        }
    }
}

/// Run the agent until `shutdown` turns true.
pub async fn run(cfg: AgentConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let host = cfg.host.clone().unwrap_or_else(local_hostname);
    // TLS files and token are read before anything starts, so a bad path is a clear startup error.
    let security = cfg.client_security().context("agent TLS/token settings")?;
    if cfg.insecure {
        let banner = "INSECURE MODE (--insecure): this agent talks to the masters without TLS and without a \
token. For tests and experiments only.";
        eprintln!("\n!!!!!!!!!!\n!!! {banner}\n!!!!!!!!!!\n");
        tracing::warn!("{banner}");
    } else if security.tls.is_none() || security.token.is_none() {
        tracing::warn!(
            tls = security.tls.is_some(),
            token = security.token.is_some(),
            "no [tls] and/or token_file in the agent config: a secured master will refuse this agent"
        );
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let db: PathBuf = cfg.data_dir.join("outbox.redb");
    let limits = Limits { max_entries: cfg.outbox.max_entries, max_bytes: cfg.outbox.max_bytes };
    let outbox: Arc<dyn OutboxStore> =
        Arc::new(RedbOutbox::open(&db, limits).with_context(|| format!("opening {}", db.display()))?);
    let started = now_ms();
    let shared = Shared::new(host.clone(), started);
    let cursor = Arc::new(Mutex::new(None));
    let (checkers, feeds) = build_checkers(&cfg, &outbox, &cursor)?;
    let versions: BTreeMap<String, String> =
        checkers.iter().map(|s| (s.checker.name().to_string(), s.checker.version().to_string())).collect();
    let inventory = crate::inventory::collect(&cfg.root, &host);
    tracing::info!(host, checkers = checkers.len(), objects = inventory.len(), "agent starting");

    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding the local HTTP surface on {}", cfg.http_listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    let (tx, rx) = mpsc::channel(REPORT_QUEUE);
    let ctx = CheckContext {
        root: cfg.root.clone(),
        host: host.clone(),
        now_ms: started,
        profile: cfg.profile.clone(),
    };
    let mut checker_tasks = tokio::task::JoinSet::new();
    for (i, s) in checkers.into_iter().enumerate() {
        checker_tasks.spawn(run_loop(s, ctx.clone(), tx.clone(), stop_rx.clone(), started ^ (i as u64 + 1)));
    }
    drop(tx);
    let wake = Arc::new(Notify::new());
    let sink_task =
        tokio::spawn(sink(rx, Arc::clone(&outbox), Arc::clone(&shared), cursor, feeds, Arc::clone(&wake)));

    let rcfg = ReporterConfig {
        masters: cfg.masters.clone(),
        agent_id: host.clone(),
        host: host.clone(),
        version: AGENT_VERSION.to_string(),
        batch_max: cfg.report.batch_max,
        heartbeat: Duration::from_secs(cfg.report.heartbeat_s),
        backoff_max: Duration::from_secs(cfg.report.backoff_max_s),
        checkers: versions,
        labels: cfg.labels.clone(),
        executor: Some(crate::executor::Executor::new(
            crate::worker::Worker::new(&host, cfg.worker.clone()).context("worker config")?,
        )),
        inventory_every: Duration::from_secs(cfg.report.inventory_s.max(1)),
        root: cfg.root.clone(),
        security,
    };
    tasks.spawn(reporter::run(
        rcfg,
        Arc::clone(&outbox),
        Arc::clone(&shared),
        inventory,
        wake,
        stop_rx.clone(),
    ));
    let mut http_stop = stop_rx.clone();
    let app = crate::local::router(Arc::clone(&shared));
    tasks.spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "local HTTP surface failed");
        }
    });

    let _ = shutdown.wait_for(|s| *s).await;
    tracing::info!("agent stopping");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    // Checkers first (their last reports reach the sink), then the sink drains, then the rest.
    while tokio::time::timeout_at(deadline, checker_tasks.join_next()).await.ok().flatten().is_some() {}
    checker_tasks.abort_all();
    let _ = tokio::time::timeout_at(deadline, sink_task).await;
    while tokio::time::timeout_at(deadline, tasks.join_next()).await.ok().flatten().is_some() {}
    tasks.abort_all();
    tracing::info!("agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sev: Severity) -> Finding {
        Finding {
            object: "disk/h1/sda".parse().unwrap(),
            severity: sev,
            checker: "disk".into(),
            version: "1.0.0".into(),
            rule: "grade".into(),
            evidence: String::new(),
            readings: Default::default(),
            time_ms: 0,
        }
    }

    #[test]
    fn dedupe_sends_changes_faults_and_refreshes() {
        let mut d = Dedupe::default();
        assert!(d.keep(&f(Severity::Good), 0));
        assert!(!d.keep(&f(Severity::Good), 1000), "unchanged healthy reading is not resent");
        assert!(d.keep(&f(Severity::Slow), 2000), "a change is sent");
        assert!(d.keep(&f(Severity::Slow), 3000), "faults are sent every run (hysteresis counts them)");
        assert!(d.keep(&f(Severity::Good), 4000));
        assert!(d.keep(&f(Severity::Good), 4000 + HEALTHY_REFRESH_MS), "refreshed after the period");
    }
}
