//! `/metrics`: the node's raft and state-machine figures in Prometheus text format (prometheus-client),
//! built at scrape time from the live values so nothing has to be kept in sync.

use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use proto::error::ApiError;

use crate::service::Service;

pub fn render(svc: &Service) -> Result<String, ApiError> {
    let st = svc.raft().status();
    let info = svc.cluster_info()?;
    let mut reg = Registry::with_prefix("huatuo_master");
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register("term", "Current Raft term", gauge(st.term));
    reg.register("commit_index", "Raft commit index", gauge(st.commit_index));
    reg.register("applied_index", "Raft index applied to the state machine", gauge(st.applied_index));
    reg.register(
        "is_leader",
        "1 if this node is the Raft leader",
        gauge(u64::from(st.role == crate::raft::Role::Leader)),
    );
    reg.register("revision", "Global revision of the object store", gauge(info.revision));
    reg.register("objects", "Objects known", gauge(info.objects));
    reg.register("agents_alive", "Agents whose heartbeats are current", gauge(info.agents_alive));
    reg.register(
        "uptime_seconds",
        "Seconds since this process started",
        gauge(svc.started.elapsed().as_secs()),
    );
    let s = &svc.stats;
    let counter = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
    reg.register("entries_applied", "Raft entries applied by this node", counter(&s.entries));
    reg.register("findings_applied", "Findings applied by this node", counter(&s.findings));
    reg.register("duplicate_batches", "Resent agent batches recognised and skipped", counter(&s.duplicates));
    reg.register("rejected", "Inputs refused by the state machines", counter(&s.rejected));
    reg.register("undecodable_entries", "Committed entries skipped as undecodable", counter(&s.undecodable));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(out)
}
