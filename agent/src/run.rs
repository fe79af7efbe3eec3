//! The agent daemon: wires the configured checkers, the durable outbox, the reporter and the local HTTP
//! surface together, and shuts them all down in order on request (stop checkers, flush what can be flushed
//! within a bounded time, close the stream; the outbox keeps the rest for the next start).
//!
//! Data flow: checker run (blocking thread) -> `RunReport` (findings + that run's checkpoint) over a bounded
//! channel -> sink task (hands the findings to the derived checkers that consume them, drops unchanged
//! healthy readings, then ONE outbox transaction with the findings and the checkpoint) -> reporter.
//! Reports are committed in the order they were produced, each with its own checkpoint, so the kmsg
//! cursor can never pass a finding that is not durable: a crash before the commit re-reads those lines,
//! a crash after it has them in the outbox.
//!
//! Which checkers run and which consume whose findings is built here from the config in one place:
//! [`node_specs`] declares the graph, `topology::validate` checks it, [`build_checkers`] builds the registry
//! (built-in, rule-set and external checkers alike) and schedules it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use checkers::external::ExternalChecker;
use checkers::kernel_log::{Cursor, KMSG_CHECKPOINT_KEY, KernelLogChecker, RuleSet, RulesSwap};
use checkers::registry::{HostConfig, Registry, Source, host_checkers};
use checkers::scoring::ProfileOverrides;
use checkers::scoring::history::{HISTORY_CHECKPOINT_KEY, Histories, ModelSwap};
use checkers::scoring::trend::{SmartTrend, TREND_CHECKPOINT_KEY};
use checkers::{CheckContext, Checker};
use state_machines::{Finding, Severity};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::AgentConfig;
use crate::local::LocalState;
use crate::outbox::{Limits, OutboxError, OutboxStore, RedbOutbox};
use crate::reporter::{self, ReporterConfig};
use crate::scheduler::{MIN_INTERVAL, RunReport, RunStatus, Scheduled, now_ms, run_loop};
use crate::topology::{self, Derived, Inbox, NodeSpec, Routes};

/// Pending run reports between the checkers and the sink: a slow disk under the outbox makes checkers
/// wait (back-pressure) instead of growing memory.
pub const REPORT_QUEUE: usize = 64;
/// How often an unchanged healthy reading is sent again anyway, so the master sees it is still true.
pub const HEALTHY_REFRESH_MS: u64 = 10 * 60 * 1000;
/// Interval of the kernel-log checker when nothing wakes it. It follows /dev/kmsg on a thread of its own
/// and is woken by every new record (see `scheduler::WAKE_LINGER`); this timer only bounds how long a
/// missed wake-up could delay it.
pub const KMSG_POLL: Duration = Duration::from_secs(1);
/// A report with nothing to send but a moved checkpoint (a storm of benign kernel lines) is committed at
/// once only if no such commit happened in this period; otherwise it is kept and committed with the next
/// commit or when the period ends. The woken kernel-log checker runs up to every few ms, and one fsync per
/// run would cost more CPU and disk than the log itself; a crash re-reads at most this much benign log.
pub const CHECKPOINT_ONLY_EVERY: Duration = Duration::from_secs(1);
/// Bound on the shutdown: tasks that do not stop in time are abandoned (the outbox keeps their data).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default checker timeout when neither the config nor the checker says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The scheduler's timeout of an external checker is its own timeout plus this: the runner kills the
/// process group first and reports `checker.broken` with what it saw, rather than a bare `checker.hung`.
pub const EXTERNAL_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Knobs for tests only (the binary uses the defaults): a slow outbox disk, and a kmsg poll faster than a
/// config may ask for, so crash tests see many kmsg runs queued behind a slow sink in little time.
#[derive(Debug, Clone, Default)]
pub struct RunHooks {
    /// Sleep before every outbox commit of the sink.
    pub sink_delay: Duration,
    /// Interval of the kernel-log checker instead of the config's or [`KMSG_POLL`].
    pub kmsg_interval: Option<Duration>,
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
    Some(Scheduled { checker, interval: interval.max(MIN_INTERVAL), timeout, jitter: 0.1, wake: None })
}

/// Names of the compiled-in checkers (config sections `[checkers.NAME]` are checked against it).
pub fn known_checkers() -> Vec<String> {
    let mut names: Vec<String> = checkers::registry::catalog().into_iter().map(|c| c.name).collect();
    names.push(checkers::kernel_log::CHECKER_NAME.to_string());
    names
}

/// The checker graph this config declares: every checker (built-in, rule-set, external) with the inputs
/// it consumes (the config's `inputs`, else the default of `topology::DEFAULT_INPUTS`).
pub fn node_specs(cfg: &AgentConfig) -> Vec<NodeSpec> {
    let inputs = |name: &str| {
        cfg.checkers
            .get(name)
            .and_then(|c| c.inputs.clone())
            .unwrap_or_else(|| topology::default_inputs(name))
    };
    let mut nodes: Vec<NodeSpec> = checkers::registry::catalog()
        .into_iter()
        .map(|i| NodeSpec { inputs: inputs(&i.name), name: i.name, consumes_inputs: i.consumes_inputs })
        .collect();
    let kl = checkers::kernel_log::CHECKER_NAME;
    nodes.push(NodeSpec { name: kl.into(), consumes_inputs: false, inputs: inputs(kl) });
    for e in &cfg.external {
        nodes.push(NodeSpec { name: e.name.clone(), consumes_inputs: false, inputs: Vec::new() });
    }
    nodes
}

fn setting_path(cfg: &AgentConfig, checker: &str, key: &str) -> anyhow::Result<Option<PathBuf>> {
    match cfg.checkers.get(checker).and_then(|c| c.settings.get(key)) {
        None => Ok(None),
        Some(toml::Value::String(p)) => Ok(Some(PathBuf::from(p))),
        Some(_) => anyhow::bail!("checkers.{checker}.settings.{key} must be a path string"),
    }
}

/// The kmsg cursor the last run committed (with its findings), if any.
fn committed_kmsg_cursor(outbox: &dyn OutboxStore) -> anyhow::Result<Option<Cursor>> {
    let raw = outbox.kv_get(KMSG_CHECKPOINT_KEY).context("reading the kmsg cursor")?;
    Ok(raw.and_then(|v| {
        let c = String::from_utf8(v).ok().and_then(|s| Cursor::decode(&s));
        if c.is_none() {
            tracing::warn!("malformed kmsg cursor in the outbox KV; reading the kernel log from its start");
        }
        c
    }))
}

/// The SMART trend baselines the disk checker last committed, if any (a malformed value: start over).
fn committed_smart_trend(outbox: &dyn OutboxStore) -> anyhow::Result<Option<SmartTrend>> {
    let raw = outbox.kv_get(TREND_CHECKPOINT_KEY).context("reading the SMART trend baselines")?;
    Ok(raw.and_then(|v| match SmartTrend::decode(&v) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("{e}; SMART trends start over");
            None
        }
    }))
}

/// The per-disk SMART histories the disk checker last committed, if any (a corrupt value is dropped with a
/// log line: the histories start over, predictions wait for enough days again).
fn committed_smart_history(outbox: &dyn OutboxStore) -> anyhow::Result<Option<Histories>> {
    let raw = outbox.kv_get(HISTORY_CHECKPOINT_KEY).context("reading the SMART histories")?;
    Ok(raw.and_then(|v| match Histories::decode(&v) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("{e}; SMART histories start over");
            None
        }
    }))
}

/// The scheduled checkers and the routes that feed derived checkers.
pub struct Built {
    pub scheduled: Vec<Scheduled>,
    pub routes: Routes,
    /// Hands catalog rule sets to the kernel-log checker between runs.
    pub rules_swap: Arc<RulesSwap>,
    /// Catalog disk profiles, read by the disk checker at each scoring pass.
    pub profiles: Arc<ProfileOverrides>,
    /// The catalog's disk-failure model, read by the disk checker at each scoring pass.
    pub model: Arc<ModelSwap>,
    /// The version of the built-in kernel-log rules (reported as `fallback` before an assignment).
    pub builtin_rules_version: String,
    /// The built-in compiled rule set and its source's sha256 (None when the rules came from a dir).
    pub builtin_rules: Option<(String, Arc<RuleSet>)>,
    /// The master's clock as the reporter's heartbeats measure it, judged by the machine checker.
    pub master_clock: Arc<checkers::machine::MasterClock>,
}

/// Build the registry the config asks for and schedule it along the validated graph.
pub fn build_checkers(
    cfg: &AgentConfig,
    outbox: &dyn OutboxStore,
    hooks: &RunHooks,
) -> anyhow::Result<Built> {
    let graph = topology::validate(&node_specs(cfg)).context("checker inputs")?;
    let mut host = HostConfig::default();
    // SMART: the configured smartctl, else the standard one when probing this host and it is installed.
    host.disk.smartctl = setting_path(cfg, "disk", "smartctl")?.or_else(|| {
        let std_path = PathBuf::from("/usr/sbin/smartctl");
        (cfg.root == Path::new("/") && std_path.exists()).then_some(std_path)
    });
    host.disk.profile_dir = setting_path(cfg, "disk", "profiles")?;
    let profiles = Arc::new(ProfileOverrides::default());
    host.disk.catalog_profiles = Some(Arc::clone(&profiles));
    let model = Arc::new(ModelSwap::default());
    host.disk.model = Some(Arc::clone(&model));
    host.disk.predict_threshold = cfg.predict.threshold;
    host.smart_history_resume = committed_smart_history(outbox)?;
    host.rasdaemon_resume = outbox
        .kv_get(checkers::rasdaemon::CHECKPOINT_KEY)
        .context("reading the rasdaemon cursor")?
        .and_then(|raw| checkers::rasdaemon::RasCursor::decode(&raw));
    host.smart_trend_resume = committed_smart_trend(outbox)?;
    let master_clock = Arc::new(checkers::machine::MasterClock::default());
    host.master_clock = Some(Arc::clone(&master_clock));
    let mut registry = Registry::new();
    for c in host_checkers(&host) {
        registry.insert(c, Source::BuiltIn)?;
    }
    let (rules, builtin_rules_sha) = match setting_path(cfg, "kernel-log", "rules")? {
        Some(dir) => (RuleSet::from_dir(&dir).context("kernel-log rules")?, None),
        None => (
            RuleSet::default_rules().context("built-in kernel-log rules")?,
            Some(checkers::external::sha256_bytes(checkers::kernel_log::rules::DEFAULT_RULES.as_bytes())),
        ),
    };
    let rules = Arc::new(rules);
    let builtin_rules_version =
        format!("{}+rules.{}", checkers::kernel_log::CHECKER_VERSION, rules.version());
    let resume = committed_kmsg_cursor(outbox)?;
    let kmsg_wake = Arc::new(Notify::new());
    let notify = Arc::clone(&kmsg_wake);
    let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || notify.notify_one());
    let rules_swap = Arc::new(RulesSwap::default());
    let mut kernel_log = KernelLogChecker::kmsg_following(Arc::clone(&rules), resume, wake);
    kernel_log.set_swap(Arc::clone(&rules_swap));
    registry.insert(Box::new(kernel_log), Source::RuleSet)?;
    for e in &cfg.external {
        let interval = Duration::from_secs(e.interval_s);
        registry.insert(Box::new(ExternalChecker::new(e.spec(), e.kinds()?, interval)), Source::External)?;
    }
    let mut routes = Routes::default();
    let mut out = Vec::new();
    for name in &graph.order {
        let Some((info, checker)) = registry.remove(name) else { continue };
        let s = match info.source {
            Source::External => Some(Scheduled {
                wake: None,
                interval: info.interval.max(MIN_INTERVAL),
                timeout: cfg
                    .external
                    .iter()
                    .find(|e| &e.name == name)
                    .map(|e| Duration::from_secs(e.timeout_s))
                    .unwrap_or(checkers::external::DEFAULT_TIMEOUT)
                    + EXTERNAL_TIMEOUT_SLACK,
                checker,
                jitter: 0.1,
            }),
            Source::RuleSet => {
                let mut s = scheduled(cfg, checker, Some(KMSG_POLL));
                if let Some(s) = s.as_mut() {
                    s.wake = Some(Arc::clone(&kmsg_wake));
                    if let Some(i) = hooks.kmsg_interval {
                        s.interval = i;
                    }
                }
                s
            }
            Source::BuiltIn => scheduled(cfg, checker, None),
        };
        let Some(mut s) = s else { continue }; // disabled
        if let Some(inputs) = graph.inputs.get(name) {
            let inbox = Inbox::default();
            for i in inputs {
                routes.add(i, inbox.clone());
            }
            s.checker = Box::new(Derived { inner: s.checker, inbox });
        }
        out.push(s);
    }
    // The graph and the registry are built from the same lists; a checker in one but not the other is a
    // bug in this function, not in the config.
    if let Some(left) = registry.infos().next() {
        anyhow::bail!("checker {:?} is registered but not declared in the checker graph", left.name);
    }
    let builtin_rules = builtin_rules_sha.map(|sha| (sha, rules));
    Ok(Built {
        scheduled: out,
        routes,
        rules_swap,
        profiles,
        model,
        builtin_rules_version,
        builtin_rules,
        master_clock,
    })
}

/// Keeps unchanged healthy readings from being re-sent every run.
#[derive(Default)]
struct Dedupe {
    last: BTreeMap<(String, String, String, bool), (Severity, u64)>,
}

/// Most (object, checker, rule) keys remembered: bounded memory on a host with a huge device count.
const DEDUPE_KEYS: usize = 50_000;

impl Dedupe {
    fn keep(&mut self, f: &Finding, now: u64) -> bool {
        // A shadow run and the current version of one checker are deduplicated apart.
        let key = (f.object.to_string(), f.checker.clone(), f.rule.clone(), f.shadow);
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

/// Most queued reports the sink merges into one outbox commit: when commits are slower than reports
/// arrive (a busy disk), the queue turns into bigger commits instead of a longer wait, bounded so one
/// commit stays small.
pub const MERGE_REPORTS: usize = 64;

/// Commit `items` and the checkpoints in `kv` in one outbox transaction.
async fn commit(
    outbox: &Arc<dyn OutboxStore>,
    items: Vec<(Severity, Vec<u8>)>,
    kv: &BTreeMap<String, Vec<u8>>,
    delay: Duration,
    batch_max: usize,
) -> Result<(), CommitError> {
    let ob = Arc::clone(outbox);
    let kv = kv.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), OutboxError> {
        if !delay.is_zero() {
            std::thread::sleep(delay); // RunHooks: a slow disk under the outbox
        }
        let kv: Vec<(&str, &[u8])> = kv.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        ob.enqueue_pinning(&items, &kv, &reporter::pin_rule(batch_max)).map(|_| ())
    })
    .await;
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CommitError::Outbox(e)),
        Err(e) => Err(CommitError::Task(e)),
    }
}

/// Why the sink could not commit a merged set of reports.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error("outbox enqueue failed: {0}")]
    Outbox(OutboxError),
    #[error("outbox task failed: {0}")]
    Task(tokio::task::JoinError),
}

async fn sink(
    mut rx: mpsc::Receiver<RunReport>,
    outbox: Arc<dyn OutboxStore>,
    shared: Arc<LocalState>,
    routes: Routes,
    wake: Arc<Notify>,
    delay: Duration,
    batch_max: usize,
) {
    let mut dedupe = Dedupe::default();
    // Checkpoint keys that lost a commit (bounded by the number of checkers that hand out checkpoints).
    let mut frozen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    // Checkpoints of reports that had nothing else to commit, kept for CHECKPOINT_ONLY_EVERY (one value
    // per key: a later checkpoint of the same checker replaces an earlier one).
    let mut deferred: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut last_checkpoint: Option<tokio::time::Instant> = None;
    let mut open = true;
    while open || !deferred.is_empty() {
        let flush_at =
            last_checkpoint.map(|t| t + CHECKPOINT_ONLY_EVERY).unwrap_or_else(tokio::time::Instant::now);
        // None: the period of the deferred checkpoints ended, or the channel closed (then `open` is false).
        let first = tokio::select! {
            r = rx.recv(), if open => {
                open = r.is_some();
                r
            }
            _ = tokio::time::sleep_until(flush_at), if !deferred.is_empty() => None,
        };
        let mut reports = Vec::new();
        match first {
            Some(r) => reports.push(r),
            None if deferred.is_empty() => continue,
            None => {}
        }
        // Reports that queued up while the last commit ran go into this one (in order).
        while open && !reports.is_empty() && reports.len() < MERGE_REPORTS {
            match rx.try_recv() {
                Ok(r) => reports.push(r),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut findings: Vec<Finding> = Vec::new();
        let mut checkpoints: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut checkers = Vec::new();
        for report in reports {
            let labels = vec![("checker".to_string(), report.checker.clone())];
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
                    ("checker".to_string(), report.checker.clone()),
                    ("reason".to_string(), r.to_string()),
                ];
                shared.metrics.checker_failures.get_or_create(&l).inc();
            }
            // A finding the master would refuse is never queued (it would block the outbox behind its batch).
            let screened = crate::screen::screen(
                &report.checker,
                env!("CARGO_PKG_VERSION"),
                &shared.host,
                report.findings,
                now,
            );
            if screened.refused > 0 {
                shared.metrics.invalid_findings.get_or_create(&labels).inc_by(screened.refused as u64);
                tracing::warn!(
                    checker = report.checker,
                    refused = screened.refused,
                    "invalid findings not queued"
                );
            }
            // Shadow findings (a canary version) never drive anything locally: no derived checker sees them.
            if screened.findings.iter().any(|f| f.shadow) {
                let live: Vec<Finding> = screened.findings.iter().filter(|f| !f.shadow).cloned().collect();
                routes.deliver(&report.checker, &live);
            } else {
                routes.deliver(&report.checker, &screened.findings);
            }
            findings.extend(screened.findings.into_iter().filter(|f| dedupe.keep(f, now)));
            // A checkpoint whose key lost a commit stays where it was until the agent restarts.
            if let Some(c) = report.checkpoint.filter(|c| !frozen.contains(&c.key)) {
                checkpoints.insert(c.key, c.value);
            }
            checkers.push(report.checker);
        }
        let recent = last_checkpoint.is_some_and(|t| t.elapsed() < CHECKPOINT_ONLY_EVERY);
        if open && findings.is_empty() && recent {
            // Nothing but checkpoints: keep them for the next commit (at most CHECKPOINT_ONLY_EVERY).
            deferred.extend(checkpoints);
            continue;
        }
        let mut kv = std::mem::take(&mut deferred);
        kv.extend(checkpoints);
        let items: Vec<(Severity, Vec<u8>)> =
            findings.iter().filter_map(|f| serde_json::to_vec(f).ok().map(|b| (f.severity, b))).collect();
        let res = commit(&outbox, items, &kv, delay, batch_max).await;
        shared.metrics.outbox_commits.set(outbox.commits() as i64);
        match res {
            Ok(()) => {
                if !kv.is_empty() {
                    last_checkpoint = Some(tokio::time::Instant::now());
                }
                shared.record(&findings);
                if !findings.is_empty() {
                    wake.notify_one();
                }
            }
            // The findings are not durable and neither are these checkpoints. The checker has moved on
            // in memory, so a later run's checkpoint would skip these lines: the keys are frozen, later
            // findings are still committed, and after a restart the lines since the last committed
            // checkpoint are read again (at least once, never lost). Other checkers will report the same
            // condition on their next run.
            Err(e) => {
                tracing::error!(checkers = ?checkers, error = %e, "outbox commit failed");
                frozen.extend(kv.into_keys());
            }
        }
    }
}

/// Who catalog external checkers run as: the configured `checker_user` when the agent is root (an
/// unknown user or root itself: they do not run, and say why), else the agent's own user.
fn checker_identity(cfg: &AgentConfig) -> Result<Option<checkers::external::RunAs>, String> {
    if !checkers::external::running_as_root() {
        return Ok(None);
    }
    checkers::external::lookup_user(&cfg.checker_user, Path::new("/etc/passwd"))
        .map(Some)
        .map_err(|e| format!("checker_user: {e}; catalog external checkers are not run as root"))
}

/// Run the agent until `shutdown` turns true.
pub async fn run(cfg: AgentConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    run_with(cfg, RunHooks::default(), shutdown).await
}

/// [`run`] with test knobs.
pub async fn run_with(
    cfg: AgentConfig,
    hooks: RunHooks,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
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
    // Created once per outbox: a wiped data dir is a new epoch, so the master resets this agent's sequence.
    let epoch = reporter::epoch(outbox.as_ref()).context("reading or creating the agent epoch")?;
    let started = now_ms();
    let shared = LocalState::new(host.clone(), started);
    let Built {
        scheduled: checkers,
        routes,
        rules_swap,
        profiles,
        model,
        builtin_rules_version,
        builtin_rules,
        master_clock,
    } = build_checkers(&cfg, outbox.as_ref(), &hooks)?;
    // The persisted assignment (if any) runs from the first pass on, with or without a master.
    let catalog = crate::catalog::Catalog::open(&cfg.data_dir).context("the checker catalog state")?;
    let policy = crate::catalog::ExternalPolicy { run_as: checker_identity(&cfg) };
    if shared.catalog.set(Arc::clone(&catalog)).is_err() {
        tracing::warn!("catalog state was already set on the local surface");
    }
    let mut versions: BTreeMap<String, String> =
        checkers.iter().map(|s| (s.checker.name().to_string(), s.checker.version().to_string())).collect();
    if cfg.net_probe.enabled {
        versions.insert(crate::netprobe::CHECKER_NAME.into(), crate::netprobe::CHECKER_VERSION.into());
    }
    let inventory = crate::inventory::collect(&cfg.root, &host);
    tracing::info!(host, checkers = checkers.len(), objects = inventory.len(), "agent starting");
    let executor = crate::executor::Executor::new(
        crate::worker::Worker::new(&host, cfg.worker.clone()).context("worker config")?,
    );

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
    let supervisor = crate::catalog::Supervisor::new(
        Arc::clone(&catalog),
        crate::catalog::Fetcher::new(cfg.masters.clone(), security.clone(), &host, &host),
        tx.clone(),
        ctx.clone(),
        rules_swap,
        profiles,
        builtin_rules_version,
        policy,
    );
    let supervisor = supervisor.with_model_swap(model);
    let supervisor = match builtin_rules {
        Some((sha, rules)) => supervisor.with_builtin_rules(sha, rules),
        None => supervisor,
    };
    checker_tasks.spawn(supervisor.run(stop_rx.clone()));
    // The probe responder and the net-probe checker: tasks on this runtime, stopped with the checkers.
    let net = if cfg.net_probe.enabled {
        let n = crate::netprobe::start(
            &cfg.net_probe,
            &host,
            &cfg.masters,
            cfg.root.clone(),
            Arc::clone(&shared),
            stop_rx.clone(),
            &mut checker_tasks,
        )
        .await;
        Some(n)
    } else {
        None
    };
    drop(tx);
    let wake = Arc::new(Notify::new());
    let mut sink_task = tokio::task::JoinSet::new();
    sink_task.spawn(sink(
        rx,
        Arc::clone(&outbox),
        Arc::clone(&shared),
        routes,
        Arc::clone(&wake),
        hooks.sink_delay,
        cfg.report.batch_max,
    ));

    let rcfg = ReporterConfig {
        masters: cfg.masters.clone(),
        agent_id: host.clone(),
        epoch,
        host: host.clone(),
        version: AGENT_VERSION.to_string(),
        batch_max: cfg.report.batch_max,
        heartbeat: Duration::from_secs(cfg.report.heartbeat_s),
        backoff_max: Duration::from_secs(cfg.report.backoff_max_s),
        checkers: versions,
        labels: cfg.labels.clone(),
        executor: Some(Arc::clone(&executor)),
        catalog: Some(Arc::clone(&catalog)),
        inventory_every: Duration::from_secs(cfg.report.inventory_s.max(1)),
        root: cfg.root.clone(),
        security,
        net,
        master_clock: Some(master_clock),
        heartbeat_datagrams: cfg.report.heartbeat_datagrams,
        idle_connection: (cfg.report.idle_connection_s > 0)
            .then(|| Duration::from_secs(cfg.report.idle_connection_s)),
    };
    tasks.spawn(reporter::run(
        rcfg,
        Arc::clone(&outbox),
        Arc::clone(&shared),
        inventory,
        wake,
        stop_rx.clone(),
    ));
    let trim_stop = stop_rx.clone();
    tasks.spawn(async move {
        crate::memtrim::run(crate::memtrim::TRIM_FIRST, crate::memtrim::TRIM_EVERY, trim_stop).await;
    });
    let mut http_stop = stop_rx.clone();
    let app = crate::local::router(Arc::clone(&shared));
    tasks.spawn(async move {
        // Nagle off, as on the master's ports: a reply written in pieces would wait for the delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on a local HTTP connection");
            }
        });
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // An Err means the sender is gone, which is a stop too.
                http_stop.wait_for(|s| *s).await.ok();
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "local HTTP surface failed");
        }
    });

    // An Err means the caller dropped its sender: stop as well.
    shutdown.wait_for(|s| *s).await.ok();
    tracing::info!("agent stopping");
    stop_tx.send_replace(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    // Checkers first (their last reports reach the sink), then the sink drains, then the reporter and the
    // HTTP surface, then running actions. Whatever misses the deadline is aborted (never left detached);
    // the outbox keeps its data.
    let stopped = join_until(&mut checker_tasks, deadline).await;
    let sank = join_until(&mut sink_task, deadline).await;
    let rest = join_until(&mut tasks, deadline).await;
    let actions = executor.shutdown(deadline).await;
    tracing::info!(checkers = stopped, sink = sank, tasks = rest, actions, "agent stopped");
    Ok(())
}

/// Await every task of `set` until `deadline`, then abort the rest. Returns how many ended in time.
async fn join_until<T: 'static>(set: &mut tokio::task::JoinSet<T>, deadline: tokio::time::Instant) -> usize {
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        n += 1;
    }
    set.abort_all();
    // Reap the aborted ones so none outlives this call unobserved.
    while set.join_next().await.is_some() {}
    n
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
            shadow: false,
        }
    }

    /// An outbox whose first `fail` enqueues fail; records the KV pairs of the ones that succeed.
    struct Flaky {
        inner: RedbOutbox,
        fail: std::sync::atomic::AtomicUsize,
    }

    impl OutboxStore for Flaky {
        fn enqueue_with(
            &self,
            items: &[(Severity, Vec<u8>)],
            kv: &[crate::outbox::KvWrite<'_>],
        ) -> Result<Vec<u64>, OutboxError> {
            use std::sync::atomic::Ordering;
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(OutboxError::Storage("disk full".into()));
            }
            self.inner.enqueue_with(items, kv)
        }
        fn peek(&self, c: usize, b: usize) -> Result<Vec<crate::outbox::Entry>, OutboxError> {
            self.inner.peek(c, b)
        }
        fn ack_with(&self, upto: u64, kv: &[crate::outbox::KvWrite<'_>]) -> Result<u64, OutboxError> {
            self.inner.ack_with(upto, kv)
        }
        fn ack_lazy(&self, upto: u64, kv: &[crate::outbox::KvWrite<'_>]) -> Result<u64, OutboxError> {
            self.inner.ack_lazy(upto, kv)
        }
        fn depth(&self) -> Result<crate::outbox::Depth, OutboxError> {
            self.inner.depth()
        }
        fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, OutboxError> {
            self.inner.kv_get(key)
        }
        fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), OutboxError> {
            self.inner.kv_put(key, value)
        }
    }

    fn kmsg_report(seq: u64, sector: u64) -> RunReport {
        let mut finding = f(Severity::Warning);
        finding.checker = "kernel-log".into();
        finding.evidence = format!("sector {sector}");
        RunReport {
            checker: "kernel-log".into(),
            version: "0.1.0".into(),
            findings: vec![finding],
            checkpoint: Some(checkers::Checkpoint {
                key: "kmsg.cursor".into(),
                value: format!("b {seq}").into_bytes(),
            }),
            status: RunStatus::Ok { findings: 1 },
            elapsed: Duration::ZERO,
        }
    }

    /// The disk checker's SMART trend baselines come back from the outbox KV after a restart; a value that
    /// does not decode starts the trends over instead of failing the agent.
    #[test]
    fn committed_smart_trend_is_read_back_and_bad_values_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap();
        assert_eq!(committed_smart_trend(&outbox).unwrap(), None);
        let mut t = SmartTrend::default();
        t.observe("sda", Some("WD-1"), Some(12), None);
        outbox.kv_put(TREND_CHECKPOINT_KEY, &t.encode()).unwrap();
        let back = committed_smart_trend(&outbox).unwrap().unwrap();
        assert_eq!(back.get("sda").and_then(|b| b.udma_crc), Some(12));
        outbox.kv_put(TREND_CHECKPOINT_KEY, b"smart-trend v1\nsda\tonly-two-fields\n").unwrap();
        assert_eq!(committed_smart_trend(&outbox).unwrap(), None);
    }

    /// The SMART histories come back from the outbox KV after a restart; a corrupt value is dropped (the
    /// histories start over) instead of failing the agent.
    #[test]
    fn committed_smart_history_is_read_back_and_a_corrupt_value_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap();
        assert_eq!(committed_smart_history(&outbox).unwrap(), None);
        let mut h = Histories::default();
        h.observe("sda", Some("WD-1"), Some("WDC"), 20_000, [(5u16, 3.0)].into_iter().collect());
        outbox.kv_put(HISTORY_CHECKPOINT_KEY, &h.encode()).unwrap();
        let back = committed_smart_history(&outbox).unwrap().unwrap();
        assert_eq!(back.get("sda").map(|x| x.days.len()), Some(1));
        outbox.kv_put(HISTORY_CHECKPOINT_KEY, b"smart-history v1\ndisk\tsda\n").unwrap();
        assert_eq!(committed_smart_history(&outbox).unwrap(), None);
    }

    #[tokio::test]
    async fn a_checkpoint_that_lost_its_commit_is_never_passed_by_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap();
        inner.kv_put("kmsg.cursor", b"b 1").unwrap();
        let outbox = Arc::new(Flaky { inner, fail: std::sync::atomic::AtomicUsize::new(1) });
        let (tx, rx) = mpsc::channel(4);
        let dyn_outbox: Arc<dyn OutboxStore> = outbox.clone();
        let task = tokio::spawn(sink(
            rx,
            dyn_outbox,
            LocalState::new("h1".into(), 0),
            Routes::default(),
            Arc::new(Notify::new()),
            Duration::ZERO,
            500,
        ));
        tx.send(kmsg_report(2, 2)).await.unwrap(); // this commit fails
        // Send the next report only once that commit ran (queued together, the sink would merge them).
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while outbox.fail.load(std::sync::atomic::Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(kmsg_report(3, 3)).await.unwrap(); // committed, but without its checkpoint
        drop(tx);
        task.await.unwrap();
        assert_eq!(
            outbox.kv_get("kmsg.cursor").unwrap().as_deref(),
            Some(&b"b 1"[..]),
            "cursor stays before line 2"
        );
        let kept = outbox.peek(10, 1 << 20).unwrap();
        assert_eq!(kept.len(), 1, "the later findings are still durable");
    }

    #[tokio::test]
    async fn checkpoint_only_reports_are_committed_at_most_once_per_period_and_flushed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let outbox: Arc<dyn OutboxStore> =
            Arc::new(RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap());
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        let task = tokio::spawn(sink(
            rx,
            Arc::clone(&outbox),
            LocalState::new("h1".into(), 0),
            Routes::default(),
            Arc::new(Notify::new()),
            Duration::ZERO,
            500,
        ));
        let before = outbox.commits();
        for seq in 1..=20u64 {
            let mut r = kmsg_report(seq, seq);
            r.findings.clear(); // benign lines: nothing but a moved cursor
            tx.send(r).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(tx);
        task.await.unwrap();
        let commits = outbox.commits() - before;
        // 20 reports within well under CHECKPOINT_ONLY_EVERY (unless the machine stalls): the first at once,
        // the rest deferred and flushed when the channel closed.
        assert!(commits <= 3, "{commits} commits for 20 checkpoint-only reports");
        assert_eq!(outbox.kv_get("kmsg.cursor").unwrap().as_deref(), Some(&b"b 20"[..]), "last one kept");
    }

    #[tokio::test]
    async fn reports_queued_behind_a_commit_go_into_one_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let outbox: Arc<dyn OutboxStore> =
            Arc::new(RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap());
        let (tx, rx) = mpsc::channel(MERGE_REPORTS + 6);
        for seq in 1..=(MERGE_REPORTS as u64 + 6) {
            tx.send(kmsg_report(seq, seq)).await.unwrap();
        }
        drop(tx);
        let before = outbox.commits();
        sink(
            rx,
            Arc::clone(&outbox),
            LocalState::new("h1".into(), 0),
            Routes::default(),
            Arc::new(Notify::new()),
            Duration::ZERO,
            500,
        )
        .await;
        assert_eq!(outbox.commits() - before, 2, "MERGE_REPORTS in the first commit, the rest in a second");
        let kept = outbox.peek(1000, 1 << 24).unwrap();
        let sectors: Vec<String> =
            kept.iter().map(|e| serde_json::from_slice::<Finding>(&e.payload).unwrap().evidence).collect();
        let want: Vec<String> = (1..=(MERGE_REPORTS as u64 + 6)).map(|s| format!("sector {s}")).collect();
        assert_eq!(sectors, want);
        let cursor = format!("b {}", MERGE_REPORTS + 6);
        assert_eq!(outbox.kv_get("kmsg.cursor").unwrap(), Some(cursor.into_bytes()));
    }

    #[tokio::test]
    async fn shadow_findings_are_kept_but_never_routed_to_derived_checkers() {
        let dir = tempfile::tempdir().unwrap();
        let outbox: Arc<dyn OutboxStore> =
            Arc::new(RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap());
        let inbox = Inbox::default();
        let mut routes = Routes::default();
        routes.add("kernel-log", inbox.clone());
        let (tx, rx) = mpsc::channel(4);
        let mut r = kmsg_report(1, 1);
        let mut shadow = r.findings[0].clone();
        shadow.shadow = true;
        shadow.version = "2".into();
        r.findings.push(shadow);
        tx.send(r).await.unwrap();
        drop(tx);
        sink(
            rx,
            Arc::clone(&outbox),
            LocalState::new("h1".into(), 0),
            routes,
            Arc::new(Notify::new()),
            Duration::ZERO,
            500,
        )
        .await;
        let routed = inbox.drain();
        assert_eq!(routed.len(), 1, "only the live finding reaches the disk grader: {routed:?}");
        assert!(!routed[0].shadow);
        let kept = outbox.peek(10, 1 << 20).unwrap();
        let shadows = kept
            .iter()
            .filter(|e| {
                serde_json::from_slice::<Finding>(&e.payload).is_ok_and(|f| f.shadow && f.version == "2")
            })
            .count();
        assert_eq!((kept.len(), shadows), (2, 1), "both go to the master, the shadow one marked");
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
        let mut shadow = f(Severity::Good);
        shadow.shadow = true;
        assert!(d.keep(&shadow, 4001 + HEALTHY_REFRESH_MS), "a shadow run is deduplicated apart");
    }
}
