//! Sends the outbox to the master: registers the host's inventory, then loops peek -> Ingest -> ack, with a
//! heartbeat on a timer. Delivery is at-least-once and applied once: each batch is pinned before it is sent
//! (its last sequence number is written to the KV as `report.inflight`), so a resend after a failure or a
//! restart carries exactly the same entries under the same batch number, and the master acknowledges a batch
//! it has already applied without applying it again. Leader discovery and redirects are the client's;
//! between failed attempts the reporter backs off exponentially with jitter, capped.
//!
//! Commits per batch: the entries come in with their checkpoint in one commit of the sink, which also pins
//! them as the next batch when nothing is pinned; acknowledging and unpinning is one more. Only a batch
//! of entries that arrived while another was in flight costs a commit of its own to pin.

use std::sync::Arc;
use std::time::Duration;

use proto::api;
use proto::client::Client;
use proto::convert::finding_to_wire;
use proto::error::ApiError;
use state_machines::Finding;
use tokio::sync::{Notify, watch};

use crate::inventory::Item;
use crate::local::LocalState;
use crate::outbox::{OutboxError, OutboxStore};

/// Largest batch in bytes of encoded findings: well under the gRPC message limit.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Largest `report.batch_max` a config may set. A pinned batch is re-read with this count, so a batch
/// pinned under a larger `batch_max` (before a restart with a smaller one) is still resent whole: sending
/// only part of it under its batch number would let the ack remove entries that were never sent.
pub const MAX_BATCH_ENTRIES: usize = 10_000;
/// First backoff after a failed send; doubles up to the configured cap.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// On shutdown, how long the reporter keeps trying to deliver what is queued (the rest stays in the
/// outbox for the next start).
pub const FINAL_FLUSH: Duration = Duration::from_secs(3);
/// KV key of the pinned in-flight batch.
pub const INFLIGHT_KEY: &str = "report.inflight";

/// How batches are pinned: the sink pins the first batch in its enqueue transaction when nothing is
/// pinned, with exactly the limits [`pin_batch`] uses, so a sparse batch costs no commit of its own.
pub fn pin_rule(batch_max: usize) -> crate::outbox::PinRule<'static> {
    crate::outbox::PinRule { key: INFLIGHT_KEY, max_count: batch_max, max_bytes: MAX_BATCH_BYTES }
}

/// Why one step of the reporter failed (the loop logs it, backs off and tries again).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{call}: {err}")]
    Rpc { call: &'static str, err: ApiError },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("outbox task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn rpc(call: &'static str) -> impl FnOnce(ApiError) -> ReportError {
    move |err| ReportError::Rpc { call, err }
}

pub struct ReporterConfig {
    pub masters: Vec<String>,
    pub agent_id: String,
    pub host: String,
    pub version: String,
    pub batch_max: usize,
    pub heartbeat: Duration,
    pub backoff_max: Duration,
    /// Checker name -> version this agent runs (sent with every heartbeat).
    pub checkers: std::collections::BTreeMap<String, String>,
    /// Labels attached to every registered object (cluster, rack, switch, profile).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Runs the actions the master hands out with heartbeats (None: this agent runs no actions).
    pub executor: Option<Arc<crate::executor::Executor>>,
    /// Re-read the inventory this often and register again when it changed (a replaced disk shows up as a
    /// new serial in its slot); `root` is where the probes read /sys.
    pub inventory_every: Duration,
    pub root: std::path::PathBuf,
    /// TLS and bearer token towards the masters (empty for insecure clusters).
    pub security: proto::client::ClientSecurity,
}

/// Send the results of finished actions; a result the master refuses for good (the action is no longer
/// pending: already reported, or the object moved on) is dropped with a log line, a failed send is kept.
async fn send_results(cfg: &ReporterConfig, client: &mut Client) -> Result<(), ReportError> {
    let Some(ex) = &cfg.executor else { return Ok(()) };
    for f in ex.pending() {
        let req = crate::executor::result_request(&f);
        match client.call(req, |mut c, r| async move { c.command(r).await }).await {
            Ok(r) => {
                tracing::info!(object = f.key.0, state = r.state, "action result delivered");
                ex.delivered(&f.key);
            }
            Err(e)
                if matches!(
                    e.code,
                    proto::error::Code::Conflict
                        | proto::error::Code::NotFound
                        | proto::error::Code::InvalidArgument
                ) =>
            {
                tracing::warn!(object = f.key.0, error = %e, "action result refused; dropping it");
                ex.delivered(&f.key);
            }
            Err(e) => return Err(rpc("action results")(e)),
        }
    }
    Ok(())
}

fn inflight(outbox: &dyn OutboxStore) -> u64 {
    outbox
        .kv_get(INFLIGHT_KEY)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Outcome of one send attempt.
enum Sent {
    Nothing,
    Batch,
}

/// The batch to send: the pinned one if it still has entries, else a new one, pinned (one commit) before it
/// is sent. Returns the pin (the batch's last seq) and the entries; no entries and pin 0 when idle.
pub fn pin_batch(
    ob: &dyn OutboxStore,
    batch_max: usize,
) -> Result<(u64, Vec<crate::outbox::Entry>), OutboxError> {
    let pinned = inflight(ob);
    if pinned > 0 {
        let still: Vec<_> =
            ob.peek(MAX_BATCH_ENTRIES, MAX_BATCH_BYTES)?.into_iter().filter(|e| e.seq <= pinned).collect();
        if !still.is_empty() {
            return Ok((pinned, still));
        }
        // Everything pinned was evicted or acked already: the new pin below replaces it.
    }
    let mut entries = ob.peek(batch_max, MAX_BATCH_BYTES)?;
    let new_pin = entries.last().map_or(0, |e| e.seq);
    if new_pin != pinned {
        ob.kv_put(INFLIGHT_KEY, &new_pin.to_be_bytes())?;
    }
    if new_pin == 0 {
        entries.clear();
    }
    Ok((new_pin, entries))
}

/// The master took the batch pinned at `pinned`: remove it and unpin, in one commit.
pub fn finish_batch(ob: &dyn OutboxStore, pinned: u64) -> Result<u64, OutboxError> {
    ob.ack_with(pinned, &[(INFLIGHT_KEY, &0u64.to_be_bytes())])
}

/// One batch: pin, send, ack. Errors leave the pin in place so the same batch is resent.
async fn send_one(
    cfg: &ReporterConfig,
    client: &mut Client,
    outbox: &Arc<dyn OutboxStore>,
    shared: &LocalState,
) -> Result<Sent, ReportError> {
    let ob = outbox.clone();
    let batch_max = cfg.batch_max;
    let (pinned, entries) = tokio::task::spawn_blocking(move || pin_batch(ob.as_ref(), batch_max)).await??;
    if entries.is_empty() {
        return Ok(Sent::Nothing);
    }
    let mut findings = Vec::with_capacity(entries.len());
    for e in &entries {
        match serde_json::from_slice::<Finding>(&e.payload) {
            Ok(f) => findings.push(finding_to_wire(&f)),
            // A corrupt entry cannot be repaired; it is acknowledged with its batch and counted.
            Err(err) => tracing::error!(seq = e.seq, error = %err, "dropping undecodable outbox entry"),
        }
    }
    let n = findings.len();
    let req = api::IngestRequest { agent: cfg.agent_id.clone(), seq: pinned, findings };
    client.call(req, |mut c, r| async move { c.ingest(r).await }).await.map_err(rpc("ingest"))?;
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || finish_batch(ob.as_ref(), pinned)).await??;
    shared.metrics.sent_findings.inc_by(n as u64);
    shared.metrics.sent_batches.inc();
    Ok(Sent::Batch)
}

async fn register(cfg: &ReporterConfig, client: &mut Client, items: &[Item]) -> Result<(), ReportError> {
    let objects = items
        .iter()
        .map(|i| api::RegisteredObject {
            id: i.id.to_string(),
            attributes: i.attributes.clone().into_iter().collect(),
            labels: cfg.labels.clone().into_iter().collect(),
        })
        .collect();
    let req = api::RegisterRequest { agent: cfg.agent_id.clone(), host: cfg.host.clone(), objects };
    client.call(req, |mut c, r| async move { c.register(r).await }).await.map(|_| ()).map_err(rpc("register"))
}

async fn heartbeat(
    cfg: &ReporterConfig,
    client: &mut Client,
    outbox: &Arc<dyn OutboxStore>,
    shared: &LocalState,
) -> Result<(), ReportError> {
    let depth = outbox.depth().unwrap_or_default();
    let req = api::HeartbeatRequest {
        agent: cfg.agent_id.clone(),
        host: cfg.host.clone(),
        version: cfg.version.clone(),
        started_ms: shared.started_ms,
        checkers: cfg.checkers.clone().into_iter().collect(),
        outbox_entries: depth.entries,
        outbox_dropped: depth.dropped.iter().sum(),
    };
    let resp =
        client.call(req, |mut c, r| async move { c.heartbeat(r).await }).await.map_err(rpc("heartbeat"))?;
    if let Some(ex) = &cfg.executor {
        ex.accept(&resp.actions, crate::scheduler::now_ms());
    }
    Ok(())
}

/// Runs until shutdown. `wake` is notified when new findings enter the outbox.
pub async fn run(
    cfg: ReporterConfig,
    outbox: Arc<dyn OutboxStore>,
    shared: Arc<LocalState>,
    mut inventory: Vec<Item>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client = Client::with_security(cfg.masters.clone(), cfg.security.clone());
    // The reporter owns the outer retry loop (with its own backoff), so each call gives up quickly.
    client.max_attempts = 4;
    let mut registered = false;
    let mut backoff = BACKOFF_START;
    let mut rng: u64 = shared.started_ms | 1;
    let mut next_heartbeat = tokio::time::Instant::now();
    let mut next_inventory = tokio::time::Instant::now() + cfg.inventory_every;
    let results_ready = cfg.executor.as_ref().map(|e| Arc::clone(&e.ready)).unwrap_or_default();
    loop {
        if *shutdown.borrow() {
            // Best effort, bounded: deliver what is queued; whatever is left stays durable in the outbox.
            let flush =
                async { while let Ok(Sent::Batch) = send_one(&cfg, &mut client, &outbox, &shared).await {} };
            let _ = tokio::time::timeout(FINAL_FLUSH, flush).await;
            return;
        }
        let mut failed = None;
        if tokio::time::Instant::now() >= next_inventory {
            next_inventory = tokio::time::Instant::now() + cfg.inventory_every;
            let (root, host) = (cfg.root.clone(), cfg.host.clone());
            if let Ok(now) =
                tokio::task::spawn_blocking(move || crate::inventory::collect(&root, &host)).await
                && now != inventory
            {
                tracing::info!(objects = now.len(), "inventory changed; registering again");
                inventory = now;
                registered = false;
            }
        }
        if !registered {
            match register(&cfg, &mut client, &inventory).await {
                Ok(()) => registered = true,
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_none() && tokio::time::Instant::now() >= next_heartbeat {
            match heartbeat(&cfg, &mut client, &outbox, &shared).await {
                Ok(()) => next_heartbeat = tokio::time::Instant::now() + cfg.heartbeat,
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_none()
            && let Err(e) = send_results(&cfg, &mut client).await
        {
            failed = Some(e);
        }
        let mut idle = false;
        if failed.is_none() {
            match send_one(&cfg, &mut client, &outbox, &shared).await {
                Ok(Sent::Batch) => {}
                Ok(Sent::Nothing) => idle = true,
                Err(e) => failed = Some(e),
            }
        }
        shared.metrics.outbox_commits.set(outbox.commits() as i64);
        if let Ok(d) = outbox.depth() {
            shared.metrics.outbox_entries.set(d.entries as i64);
            shared.metrics.outbox_bytes.set(d.bytes as i64);
            for (class, n) in d.dropped.iter().enumerate() {
                shared
                    .metrics
                    .outbox_dropped
                    .get_or_create(&vec![("class".into(), class.to_string())])
                    .set(*n as i64);
            }
        }
        if let Some(e) = failed {
            shared.metrics.send_errors.inc();
            tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "report to master failed");
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let jitter = backoff.mul_f64((rng % 1000) as f64 / 2000.0);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                r = shutdown.changed() => if r.is_err() { return },
            }
            backoff = (backoff * 2).min(cfg.backoff_max);
            continue;
        }
        backoff = BACKOFF_START;
        if idle {
            tokio::select! {
                _ = wake.notified() => {}
                _ = results_ready.notified() => {}
                _ = tokio::time::sleep_until(next_heartbeat.min(next_inventory)) => {}
                r = shutdown.changed() => if r.is_err() { return },
            }
        }
    }
}
