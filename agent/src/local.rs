//! The agent's local surface on 127.0.0.1:7790: `/healthz`, `/metrics` (Prometheus text: findings by
//! checker and severity, checker run time and failures, outbox depth, send errors) and `/api/v1/local`
//! (the most recent findings of this host, newest last, and the checker runs table with the assignment
//! hash: what each checker actually runs, as the heartbeat reports it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use state_machines::Finding;

/// Findings kept for `/api/v1/local`: enough to see what the host said recently, bounded memory.
pub const RECENT_FINDINGS: usize = 1_000;

type Labels = Vec<(String, String)>;

/// Metrics the agent exports.
pub struct Metrics {
    pub findings: Family<Labels, Counter>,
    pub checker_runs: Family<Labels, Counter>,
    pub checker_failures: Family<Labels, Counter>,
    pub checker_seconds: Family<Labels, Histogram>,
    pub outbox_entries: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_dropped: Family<Labels, Gauge>,
    pub send_errors: Counter,
    pub sent_findings: Counter,
    pub kmsg_lost: Gauge,
    /// Outbox write transactions (each one fsync) since start.
    pub outbox_commits: Gauge,
    /// The master's clock minus this host's, as the last heartbeat measured it (ms).
    pub master_clock_offset_ms: Gauge,
    /// Batches the master acknowledged.
    pub sent_batches: Counter,
    /// Heartbeats answered over the heartbeat stream, and sent as single calls (no stream, or it broke).
    pub heartbeats_streamed: Counter,
    pub heartbeats_called: Counter,
    /// Heartbeats answered by a datagram (`proto::datagram`).
    pub heartbeats_datagram: Counter,
    /// 1 while the reporter holds a connection to the masters (closed after `idle_connection_s` unused).
    pub master_connected: Gauge,
    /// Batches answered over the ingest stream, and sent as single calls (no stream, or it could not
    /// carry the batch).
    pub batches_streamed: Counter,
    pub batches_called: Counter,
    /// Findings refused by the sink before queueing (they break the master's rules), by checker.
    pub invalid_findings: Family<Labels, Counter>,
    /// Batches the master refused for good, set aside in the dead-letter area.
    pub dead_batches: Counter,
    /// Dead batches pushed out of the full dead-letter area (oldest first).
    pub dead_dropped: Counter,
    /// net-probe (issue 16): probes sent and lost, votes cast (own host included), reports dropped from
    /// the full heartbeat queue, bytes the prober sent, peers not probed for the byte budget.
    pub net_probes_sent: Counter,
    pub net_probes_lost: Counter,
    pub net_votes: Counter,
    pub net_reports_dropped: Counter,
    pub net_probe_bytes: Counter,
    pub net_peers_skipped: Counter,
    /// Paths of lossy flows traced, and lossy flows not traced (per-window limit, byte budget or time).
    pub net_traces: Counter,
    pub net_traces_skipped: Counter,
}

impl Metrics {
    fn new(reg: &mut Registry) -> Self {
        let m = Metrics {
            findings: Family::default(),
            checker_runs: Family::default(),
            checker_failures: Family::default(),
            checker_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0])
            }),
            outbox_entries: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_dropped: Family::default(),
            send_errors: Counter::default(),
            sent_findings: Counter::default(),
            kmsg_lost: Gauge::default(),
            outbox_commits: Gauge::default(),
            master_clock_offset_ms: Gauge::default(),
            sent_batches: Counter::default(),
            heartbeats_streamed: Counter::default(),
            heartbeats_called: Counter::default(),
            heartbeats_datagram: Counter::default(),
            master_connected: Gauge::default(),
            batches_streamed: Counter::default(),
            batches_called: Counter::default(),
            invalid_findings: Family::default(),
            dead_batches: Counter::default(),
            dead_dropped: Counter::default(),
            net_probes_sent: Counter::default(),
            net_probes_lost: Counter::default(),
            net_votes: Counter::default(),
            net_reports_dropped: Counter::default(),
            net_probe_bytes: Counter::default(),
            net_peers_skipped: Counter::default(),
            net_traces: Counter::default(),
            net_traces_skipped: Counter::default(),
        };
        reg.register(
            "huatuo_agent_net_probes",
            "Probes the net-probe checker sent",
            m.net_probes_sent.clone(),
        );
        reg.register(
            "huatuo_agent_net_probes_lost",
            "Probes lost (no answer in time or failed connect)",
            m.net_probes_lost.clone(),
        );
        reg.register(
            "huatuo_agent_net_votes",
            "Votes cast by the local rule (this host's own vote included)",
            m.net_votes.clone(),
        );
        reg.register(
            "huatuo_agent_net_reports_dropped",
            "Probe window reports dropped from the full heartbeat queue, oldest first",
            m.net_reports_dropped.clone(),
        );
        reg.register(
            "huatuo_agent_net_probe_bytes",
            "Bytes the prober sent on the wire (headers included)",
            m.net_probe_bytes.clone(),
        );
        reg.register(
            "huatuo_agent_net_peers_skipped",
            "Peers not probed because the window's byte budget was spent",
            m.net_peers_skipped.clone(),
        );
        reg.register(
            "huatuo_agent_net_traces",
            "Paths of lossy probe flows traced (TTL-limited connects on the flow's own 5-tuple)",
            m.net_traces.clone(),
        );
        reg.register(
            "huatuo_agent_net_traces_skipped",
            "Lossy probe flows not traced: the window's trace limit, byte budget or time was spent",
            m.net_traces_skipped.clone(),
        );
        reg.register(
            "huatuo_agent_invalid_findings",
            "Findings refused before queueing (they break the master's rules), by checker",
            m.invalid_findings.clone(),
        );
        reg.register(
            "huatuo_agent_dead_batches",
            "Batches the master refused for good, set aside in the outbox's dead-letter area",
            m.dead_batches.clone(),
        );
        reg.register(
            "huatuo_agent_dead_dropped",
            "Dead batches pushed out of the full dead-letter area, oldest first",
            m.dead_dropped.clone(),
        );
        reg.register(
            "huatuo_agent_outbox_commits",
            "Outbox write transactions (each one fsync) since start",
            m.outbox_commits.clone(),
        );
        reg.register(
            "huatuo_agent_master_clock_offset_ms",
            "The master's clock minus this host's as the last heartbeat measured it, ms (positive: this host is behind)",
            m.master_clock_offset_ms.clone(),
        );
        reg.register(
            "huatuo_agent_sent_batches",
            "Batches acknowledged by the master",
            m.sent_batches.clone(),
        );
        reg.register(
            "huatuo_agent_batches_streamed",
            "Batches answered over the agent's ingest stream",
            m.batches_streamed.clone(),
        );
        reg.register(
            "huatuo_agent_batches_called",
            "Batches sent as single Ingest calls (no stream open, or it could not carry the batch)",
            m.batches_called.clone(),
        );
        reg.register(
            "huatuo_agent_heartbeats_streamed",
            "Heartbeats answered over the agent's heartbeat stream",
            m.heartbeats_streamed.clone(),
        );
        reg.register(
            "huatuo_agent_heartbeats_called",
            "Heartbeats sent as single calls (no stream open, or it could not carry the beat)",
            m.heartbeats_called.clone(),
        );
        reg.register(
            "huatuo_agent_heartbeats_datagram",
            "Heartbeats answered by a datagram (the stream and calls carry the rest)",
            m.heartbeats_datagram.clone(),
        );
        reg.register(
            "huatuo_agent_master_connected",
            "1 while the agent holds a connection to the masters (closed after report.idle_connection_s unused)",
            m.master_connected.clone(),
        );
        reg.register(
            "huatuo_agent_findings",
            "Findings produced, by checker and severity",
            m.findings.clone(),
        );
        reg.register("huatuo_agent_checker_runs", "Checker runs, by checker", m.checker_runs.clone());
        reg.register(
            "huatuo_agent_checker_failures",
            "Checker runs that failed, hung or flooded, by checker and reason",
            m.checker_failures.clone(),
        );
        reg.register("huatuo_agent_checker_run_seconds", "Checker run time", m.checker_seconds.clone());
        reg.register(
            "huatuo_agent_outbox_entries",
            "Findings waiting in the outbox",
            m.outbox_entries.clone(),
        );
        reg.register("huatuo_agent_outbox_bytes", "Bytes waiting in the outbox", m.outbox_bytes.clone());
        reg.register(
            "huatuo_agent_outbox_dropped",
            "Findings evicted from a full outbox, by severity class",
            m.outbox_dropped.clone(),
        );
        reg.register("huatuo_agent_send_errors", "Failed sends to the master", m.send_errors.clone());
        reg.register(
            "huatuo_agent_sent_findings",
            "Findings acknowledged by the master",
            m.sent_findings.clone(),
        );
        reg.register(
            "huatuo_agent_kmsg_lost_records",
            "Kernel log records overwritten before read",
            m.kmsg_lost.clone(),
        );
        m
    }
}

/// What the agent's tasks publish and its local HTTP surface shows: host, metrics, recent findings.
pub struct LocalState {
    pub host: String,
    pub registry: Registry,
    pub metrics: Metrics,
    pub recent: Mutex<VecDeque<Finding>>,
    pub started_ms: u64,
    /// The checker catalog state (set once at start): `/api/v1/local` shows its runs table.
    pub catalog: std::sync::OnceLock<Arc<crate::catalog::Catalog>>,
}

impl LocalState {
    pub fn new(host: String, started_ms: u64) -> Arc<Self> {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        Arc::new(LocalState {
            host,
            registry,
            metrics,
            recent: Mutex::new(VecDeque::new()),
            started_ms,
            catalog: std::sync::OnceLock::new(),
        })
    }

    /// Remember findings for the local API and count them.
    pub fn record(&self, findings: &[Finding]) {
        for f in findings {
            self.metrics
                .findings
                .get_or_create(&vec![
                    ("checker".into(), f.checker.clone()),
                    ("severity".into(), f.severity.to_string()),
                ])
                .inc();
        }
        if let Ok(mut recent) = self.recent.lock() {
            for f in findings {
                if recent.len() >= RECENT_FINDINGS {
                    recent.pop_front();
                }
                recent.push_back(f.clone());
            }
        }
    }
}

pub fn router(shared: Arc<LocalState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/local", get(local))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<LocalState>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")).into_response(),
    }
}

async fn local(State(s): State<Arc<LocalState>>) -> Response {
    let findings: Vec<Finding> = s.recent.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default();
    // What each checker actually runs (catalog versions, statuses), as the heartbeat reports it.
    let runs: Vec<serde_json::Value> = s
        .catalog
        .get()
        .map(|c| c.runs())
        .unwrap_or_default()
        .into_iter()
        .map(|((name, shadow), r)| {
            serde_json::json!({
                "name": name, "shadow": shadow, "version": r.version, "sha256": r.sha256, "status": r.status,
                "runs": r.runs, "failures": r.failures, "timeouts": r.timeouts, "last_error": r.last_error,
                "last_run_ms": r.last_run_ms,
            })
        })
        .collect();
    let hash = s.catalog.get().map(|c| c.hash()).unwrap_or_default();
    axum::Json(serde_json::json!({
        "host": s.host, "started_ms": s.started_ms, "findings": findings, "assignment_hash": hash, "runs": runs,
    }))
    .into_response()
}
