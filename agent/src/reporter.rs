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

/// Most batches kept in the dead-letter area: a batch the master refuses for good (INVALID_ARGUMENT) is set
/// aside there so the batches behind it move on. Refusals are rare (the sink screens every finding with the
/// master's own rules), so a few dozen is plenty to inspect; at the limit the oldest is overwritten and
/// counted (`huatuo_agent_dead_dropped`).
pub const MAX_DEAD_BATCHES: u64 = 16;
/// Most bytes of findings kept with one dead batch (a full batch is up to `MAX_BATCH_BYTES`): the head of
/// the batch shows what was refused; the count of the entries left out is kept.
pub const MAX_DEAD_BATCH_BYTES: usize = 256 * 1024;
/// KV key counting the batches ever set aside; slot `n % MAX_DEAD_BATCHES` holds batch number `n`.
pub const DEAD_COUNT_KEY: &str = "report.dead.count";
/// KV key of the agent's epoch: a random non-zero id written once when the outbox is first used, sent with
/// every ingest so the master knows a wiped agent (a new epoch, sequences from 1 again) from a resend.
pub const EPOCH_KEY: &str = "report.epoch";

/// A batch the master refused for good, as kept in the dead-letter area of the outbox KV.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadBatch {
    /// The batch number (its last outbox sequence) it was sent under.
    pub seq: u64,
    /// The master's answer.
    pub error: String,
    pub time_ms: u64,
    /// The batch's entries (JSON findings), as far as `MAX_DEAD_BATCH_BYTES` allows.
    pub entries: Vec<String>,
    /// Entries left out at the byte limit.
    pub omitted: usize,
}

fn dead_key(n: u64) -> String {
    format!("report.dead.{}", n % MAX_DEAD_BATCHES)
}

fn kv_u64(ob: &dyn OutboxStore, key: &str) -> Result<u64, OutboxError> {
    Ok(ob.kv_get(key)?.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map_or(0, u64::from_be_bytes))
}

/// Set the batch pinned at `pinned` aside: copy it into the dead-letter area, remove it from the queue and
/// unpin, in one commit. Returns whether an older dead batch was overwritten (the area was full).
pub fn set_aside(
    ob: &dyn OutboxStore,
    pinned: u64,
    entries: &[crate::outbox::Entry],
    error: &str,
    now_ms: u64,
) -> Result<bool, OutboxError> {
    let n = kv_u64(ob, DEAD_COUNT_KEY)?;
    let mut dead = DeadBatch { seq: pinned, error: error.to_string(), time_ms: now_ms, ..Default::default() };
    let mut size = 0;
    for e in entries {
        if size + e.payload.len() > MAX_DEAD_BATCH_BYTES {
            dead.omitted += 1;
            continue;
        }
        size += e.payload.len();
        dead.entries.push(String::from_utf8_lossy(&e.payload).into_owned());
    }
    // Plain data with string keys: serializing cannot fail.
    let value = serde_json::to_vec(&dead).unwrap_or_default();
    let key = dead_key(n);
    ob.ack_with(
        pinned,
        &[(&key, &value), (DEAD_COUNT_KEY, &(n + 1).to_be_bytes()), (INFLIGHT_KEY, &0u64.to_be_bytes())],
    )?;
    Ok(n >= MAX_DEAD_BATCHES)
}

/// The dead batches kept, oldest first, and how many were ever set aside.
pub fn dead_batches(ob: &dyn OutboxStore) -> Result<(Vec<DeadBatch>, u64), OutboxError> {
    let n = kv_u64(ob, DEAD_COUNT_KEY)?;
    let mut out = Vec::new();
    for i in n.saturating_sub(MAX_DEAD_BATCHES)..n {
        if let Some(raw) = ob.kv_get(&dead_key(i))?
            && let Ok(d) = serde_json::from_slice(&raw)
        {
            out.push(d);
        }
    }
    Ok((out, n))
}

/// This agent's epoch, created (one commit) on first use.
pub fn epoch(ob: &dyn OutboxStore) -> Result<u64, OutboxError> {
    let e = kv_u64(ob, EPOCH_KEY)?;
    if e != 0 {
        return Ok(e);
    }
    let e = rand::random::<u64>().max(1);
    ob.kv_put(EPOCH_KEY, &e.to_be_bytes())?;
    Ok(e)
}

/// Whether the master refused a batch for good: resending the same bytes gets the same answer. Only
/// INVALID_ARGUMENT; unavailable, timeouts, not-leader and conflicts (an agent epoch older than the one the
/// master knows) are retried.
pub fn refused_for_good(e: &ApiError) -> bool {
    e.code == proto::error::Code::InvalidArgument
}

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
    /// This agent's epoch (see [`EPOCH_KEY`]; 0 = none, the master dedupes by sequence alone).
    pub epoch: u64,
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
    /// The checker catalog: its assignment hash and runs table go with every heartbeat, and the reply's
    /// assignment is handed to it (None: this agent follows no assignment).
    pub catalog: Option<Arc<crate::catalog::Catalog>>,
    /// Re-read the inventory this often and register again when it changed (a replaced disk shows up as a
    /// new serial in its slot); `root` is where the probes read /sys.
    pub inventory_every: Duration,
    pub root: std::path::PathBuf,
    /// TLS and bearer token towards the masters (empty for insecure clusters).
    pub security: proto::client::ClientSecurity,
    /// The net-probe checker's state: its `probe_addr`, queued reports and runs row go with every
    /// heartbeat, and the reply's peers are handed to it (None: net-probe is off).
    pub net: Option<Arc<crate::netprobe::NetProbe>>,
    /// Where each heartbeat's measure of the master's clock goes (read by the machine checker; None: not
    /// measured).
    pub master_clock: Option<Arc<checkers::machine::MasterClock>>,
    /// Try each heartbeat as a datagram first (`proto::datagram`), the stream when it cannot go that way.
    pub heartbeat_datagrams: bool,
    /// Close the connection to the masters after this long unused (None: keep it).
    pub idle_connection: Option<Duration>,
}

/// This agent's heartbeat datagrams, if on: sealed with its own key once a master handed it one (in the
/// answer to a heartbeat call or stream message, clusters at command version 12), until then with its
/// token's key, or the open key of a cluster without TLS or tokens. With TLS and no token, every beat goes
/// as a call until the agent has its own key.
fn datagrams(cfg: &ReporterConfig) -> Option<proto::datagram::Datagrams> {
    if !cfg.heartbeat_datagrams {
        return None;
    }
    let masters = cfg.masters.clone();
    Some(match (&cfg.security.token, &cfg.security.tls) {
        (Some(t), _) if !t.is_empty() => {
            proto::datagram::Datagrams::new(proto::datagram::BeatKey::from_token(t), masters)
        }
        (_, None) => proto::datagram::Datagrams::new(proto::datagram::BeatKey::open(), masters),
        (_, Some(_)) => proto::datagram::Datagrams::keyless(masters),
    })
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

/// The master took the batch pinned at `pinned`: remove it and unpin, in one commit that the next durable
/// commit makes durable ([`OutboxStore::ack_lazy`]: after a crash the batch is resent and deduped).
pub fn finish_batch(ob: &dyn OutboxStore, pinned: u64) -> Result<u64, OutboxError> {
    ob.ack_lazy(pinned, &[(INFLIGHT_KEY, &0u64.to_be_bytes())])
}

/// One batch: pin, send, ack. Errors leave the pin in place so the same batch is resent.
async fn send_one(
    cfg: &ReporterConfig,
    client: &mut Client,
    ingests: &mut proto::client::IngestStream,
    outbox: &Arc<dyn OutboxStore>,
    shared: &LocalState,
) -> Result<Sent, ReportError> {
    let ob = outbox.clone();
    let batch_max = cfg.batch_max;
    let (pinned, entries) = tokio::task::spawn_blocking(move || pin_batch(ob.as_ref(), batch_max)).await??;
    if entries.is_empty() {
        return Ok(Sent::Nothing);
    }
    let mut wire = Vec::with_capacity(entries.len());
    for e in &entries {
        match serde_json::from_slice::<Finding>(&e.payload) {
            Ok(f) => wire.push((e.seq, finding_to_wire(&f))),
            // A corrupt entry cannot be repaired; it is acknowledged with its batch and counted.
            Err(err) => tracing::error!(seq = e.seq, error = %err, "dropping undecodable outbox entry"),
        }
    }
    let n = wire.len();
    let mut delivered = n;
    if n > 0 {
        let findings = wire.iter().map(|(_, f)| f.clone()).collect();
        let req = api::IngestRequest { agent: cfg.agent_id.clone(), seq: pinned, findings, epoch: cfg.epoch };
        let before = ingests.stats();
        let sent = ingests.send(client, req).await;
        // Counted whatever the answer, as heartbeats are.
        let after = ingests.stats();
        shared.metrics.batches_streamed.inc_by(after.streamed - before.streamed);
        shared.metrics.batches_called.inc_by(after.called - before.called);
        match sent {
            Ok(_) => {}
            Err(e) if refused_for_good(&e) => {
                // Resending would be refused forever and block every batch behind this one. Send the
                // findings one by one instead, each under its own outbox sequence (below the pin, above the
                // previous batch: the master's dedupe holds, and a crash midway resends only duplicates),
                // and set aside just those refused again.
                let (refused, first) = if let [(seq, _)] = wire.as_slice() {
                    (vec![*seq], e.to_string())
                } else {
                    send_singly(cfg, client, &wire).await?
                };
                delivered = n - refused.len();
                if !refused.is_empty() {
                    let dead: Vec<_> = entries.into_iter().filter(|e| refused.contains(&e.seq)).collect();
                    let msg = format!("{} of {n} findings refused; first: {first}", dead.len());
                    let ob = outbox.clone();
                    let now = crate::scheduler::now_ms();
                    let full =
                        tokio::task::spawn_blocking(move || set_aside(ob.as_ref(), pinned, &dead, &msg, now))
                            .await??;
                    shared.metrics.dead_batches.inc();
                    if full {
                        shared.metrics.dead_dropped.inc();
                    }
                    tracing::error!(
                        batch = pinned,
                        refused = refused.len(),
                        findings = n,
                        error = %first,
                        "master refused findings for good; set aside in the outbox's dead-letter area"
                    );
                    shared.metrics.sent_findings.inc_by(delivered as u64);
                    return Ok(Sent::Batch);
                }
            }
            Err(e) => return Err(rpc("ingest")(e)),
        }
    }
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || finish_batch(ob.as_ref(), pinned)).await??;
    shared.metrics.sent_findings.inc_by(delivered as u64);
    shared.metrics.sent_batches.inc();
    Ok(Sent::Batch)
}

/// After the master refused a batch for good: send each finding alone under its own outbox sequence.
/// Returns the sequences refused again and the first refusal; a transient failure is an error (the pin
/// stays, and the batch is resent later: what was applied meanwhile is answered `duplicate`).
async fn send_singly(
    cfg: &ReporterConfig,
    client: &mut Client,
    wire: &[(u64, api::Finding)],
) -> Result<(Vec<u64>, String), ReportError> {
    let mut refused = Vec::new();
    let mut first = String::new();
    for (seq, f) in wire {
        let req = api::IngestRequest {
            agent: cfg.agent_id.clone(),
            seq: *seq,
            findings: vec![f.clone()],
            epoch: cfg.epoch,
        };
        match client.call(req, |mut c, r| async move { c.ingest(r).await }).await {
            Ok(_) => {}
            Err(e) if refused_for_good(&e) => {
                if first.is_empty() {
                    first = e.to_string();
                }
                refused.push(*seq);
            }
            Err(e) => return Err(rpc("ingest")(e)),
        }
    }
    Ok((refused, first))
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
    // One idempotency key for every try of this registration (the client retries through failovers): a
    // retry after a lost answer is answered `duplicate` instead of registering (and counting) again.
    let key = proto::client::request_key("agent").map_err(rpc("register"))?;
    client
        .call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.register(r).await }
        })
        .await
        .map(|_| ())
        .map_err(rpc("register"))
}

/// Checker name -> the version it runs now: the compiled versions, overridden by what the catalog runs
/// (non-shadow entries that are running), so the `checkers` map says the truth after a swap too.
fn checker_versions(cfg: &ReporterConfig) -> std::collections::BTreeMap<String, String> {
    let mut v = cfg.checkers.clone();
    if let Some(c) = &cfg.catalog {
        for ((name, shadow), r) in c.runs() {
            if !shadow && r.status == "running" {
                v.insert(name, r.version);
            }
        }
    }
    v
}

async fn heartbeat(
    cfg: &ReporterConfig,
    client: &mut Client,
    (stream, datagrams): (&mut proto::client::BeatStream, &mut Option<proto::datagram::Datagrams>),
    outbox: &Arc<dyn OutboxStore>,
    shared: &LocalState,
) -> Result<(), ReportError> {
    let depth = outbox.depth().unwrap_or_default();
    let net_reports = cfg.net.as_ref().map(|n| n.pending()).unwrap_or_default();
    let mut runs = cfg.catalog.as_ref().map(|c| c.runs_wire()).unwrap_or_default();
    if let Some(n) = &cfg.net {
        runs.push(n.run_wire());
    }
    let req = api::HeartbeatRequest {
        agent: cfg.agent_id.clone(),
        host: cfg.host.clone(),
        version: cfg.version.clone(),
        started_ms: shared.started_ms,
        checkers: checker_versions(cfg).into_iter().collect(),
        outbox_entries: depth.entries,
        outbox_dropped: depth.dropped.iter().sum(),
        runs,
        assignment_hash: cfg.catalog.as_ref().map(|c| c.hash()).unwrap_or_default(),
        probe_addr: cfg.net.as_ref().map(|n| n.probe_addr()).unwrap_or_default(),
        net: net_reports.clone(),
        beat_key_id: datagrams.as_ref().map(|d| d.own_key_id()).unwrap_or(0),
    };
    let sent_ms = crate::scheduler::now_ms();
    let answered = match datagrams {
        Some(d) => d.beat(client.current_addr(), &req).await,
        None => None,
    };
    let resp = match answered {
        Some(resp) => {
            shared.metrics.heartbeats_datagram.inc();
            // Beats need no stream while datagrams carry them: an open one would hold the connection.
            stream.close();
            resp
        }
        None => {
            let before = stream.stats();
            let resp = stream.beat(client, req).await;
            // Counted whatever the answer: a call that failed was still sent as a call.
            let after = stream.stats();
            shared.metrics.heartbeats_streamed.inc_by(after.streamed - before.streamed);
            shared.metrics.heartbeats_called.inc_by(after.called - before.called);
            let resp = resp.map_err(rpc("heartbeat"))?;
            if let Some(d) = datagrams.as_mut()
                && d.take_key_from(&resp)
            {
                tracing::info!(key_id = format!("{:016x}", resp.beat_key_id), "heartbeat datagrams: own key");
            }
            resp
        }
    };
    // The client may have retried: the round trip then covers every attempt, a wider uncertainty, never a
    // wrong offset beyond it (the master read its clock within the span).
    let received_ms = crate::scheduler::now_ms();
    if let Some(clock) = &cfg.master_clock
        && let Some(s) = checkers::machine::ClockSample::measure(sent_ms, received_ms, resp.master_time_ms)
    {
        clock.set(s);
        shared.metrics.master_clock_offset_ms.set(s.offset_ms);
    }
    if let Some(n) = &cfg.net {
        // Answered: the master has these windows (a failed heartbeat keeps them for the next one).
        n.delivered(&net_reports);
        n.set_peers(&resp.peers);
    }
    if let Some(catalog) = &cfg.catalog
        && resp.assignment_included
    {
        let (c, hash, entries) = (Arc::clone(catalog), resp.assignment_hash.clone(), resp.assignment.clone());
        // A refused assignment changes nothing (the agent keeps what it runs); the master resends it.
        match tokio::task::spawn_blocking(move || c.offer(&hash, &entries)).await? {
            Ok(true) => tracing::info!(hash = resp.assignment_hash, "new checker assignment"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "checker assignment refused"),
        }
    }
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
    // Heartbeats go over one long-lived stream, falling back to single calls (`BeatStream`).
    let mut beats = proto::client::BeatStream::default();
    // Before the stream, when on: a datagram each way (`proto::datagram`).
    let mut datagrams = datagrams(&cfg);
    // Batches too (`IngestStream`; the master ends an idle one, and the next batch opens another).
    let mut ingests = proto::client::IngestStream::default();
    let mut registered = false;
    let mut backoff = BACKOFF_START;
    let mut rng: u64 = shared.started_ms | 1;
    let mut next_heartbeat = tokio::time::Instant::now();
    let mut next_inventory = tokio::time::Instant::now() + cfg.inventory_every;
    let results_ready = cfg.executor.as_ref().map(|e| Arc::clone(&e.ready)).unwrap_or_default();
    loop {
        if *shutdown.borrow() {
            // Best effort, bounded: deliver what is queued; whatever is left stays durable in the outbox.
            let flush = async {
                while let Ok(Sent::Batch) = send_one(&cfg, &mut client, &mut ingests, &outbox, &shared).await
                {
                }
            };
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
            match heartbeat(&cfg, &mut client, (&mut beats, &mut datagrams), &outbox, &shared).await {
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
            match send_one(&cfg, &mut client, &mut ingests, &outbox, &shared).await {
                Ok(Sent::Batch) => {}
                Ok(Sent::Nothing) => idle = true,
                Err(e) => failed = Some(e),
            }
        }
        if let Some(idle) = cfg.idle_connection
            && client.close_if_idle(idle)
        {
            // Nothing used the connection for `idle`: its streams go with it (the next call reconnects).
            ingests.close();
            beats.close();
            tracing::debug!(?idle, "closed the idle connection to the masters");
        }
        shared.metrics.master_connected.set(i64::from(client.connected()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Limits, RedbOutbox};
    use state_machines::Severity;

    fn outbox(dir: &std::path::Path) -> RedbOutbox {
        RedbOutbox::open(&dir.join("outbox.redb"), Limits::default()).expect("open")
    }

    fn put(ob: &dyn OutboxStore, n: usize, size: usize) {
        let items: Vec<_> = (0..n)
            .map(|i| {
                let tag = i.to_string();
                (Severity::Error, format!("{}{tag}", "0".repeat(size - tag.len())).into_bytes())
            })
            .collect();
        ob.enqueue_pinning(&items, &[], &pin_rule(100)).expect("enqueue");
    }

    #[test]
    fn a_refused_batch_is_set_aside_and_the_next_one_is_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ob = outbox(dir.path());
        put(&ob, 3, 4);
        let (pin, entries) = pin_batch(&ob, 2).expect("pin");
        // The sink pinned with batch_max 100; a resend keeps the whole pinned batch.
        assert_eq!((pin, entries.len()), (3, 3));
        let full = set_aside(&ob, pin, &entries, "finding 1: NUL", 7).expect("set aside");
        assert!(!full);
        assert_eq!(inflight(&ob), 0, "unpinned");
        assert_eq!(ob.depth().expect("depth").entries, 0, "removed from the queue");
        let (dead, count) = dead_batches(&ob).expect("dead");
        assert_eq!(count, 1);
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].seq, dead[0].error.as_str(), dead[0].time_ms), (3, "finding 1: NUL", 7));
        assert_eq!(dead[0].entries, vec!["0000", "0001", "0002"]);
        put(&ob, 1, 4);
        let (pin, entries) = pin_batch(&ob, 10).expect("pin");
        assert_eq!((pin, entries.len()), (4, 1), "the next batch moves on");
    }

    #[test]
    fn the_dead_letter_area_keeps_the_newest_at_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ob = outbox(dir.path());
        for i in 0..MAX_DEAD_BATCHES + 3 {
            put(&ob, 1, 8);
            let (pin, entries) = pin_batch(&ob, 10).expect("pin");
            let full = set_aside(&ob, pin, &entries, &format!("refusal {i}"), i).expect("set aside");
            assert_eq!(full, i >= MAX_DEAD_BATCHES, "batch {i}");
        }
        let (dead, count) = dead_batches(&ob).expect("dead");
        assert_eq!(count, MAX_DEAD_BATCHES + 3);
        assert_eq!(dead.len() as u64, MAX_DEAD_BATCHES, "bounded");
        assert_eq!(dead[0].error, "refusal 3", "the three oldest were dropped");
        assert_eq!(
            dead.last().map(|d| d.error.as_str()),
            Some(&*format!("refusal {}", MAX_DEAD_BATCHES + 2))
        );
    }

    #[test]
    fn a_dead_batch_keeps_its_head_within_the_byte_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ob = outbox(dir.path());
        let per = 64 * 1024;
        put(&ob, 6, per);
        let (pin, entries) = pin_batch(&ob, 100).expect("pin");
        assert_eq!(entries.len(), 6);
        set_aside(&ob, pin, &entries, "too big", 1).expect("set aside");
        let (dead, _) = dead_batches(&ob).expect("dead");
        assert_eq!(dead[0].entries.len(), MAX_DEAD_BATCH_BYTES / per);
        assert_eq!(dead[0].omitted, 6 - MAX_DEAD_BATCH_BYTES / per);
    }

    #[test]
    fn the_epoch_is_created_once_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = {
            let ob = outbox(dir.path());
            let e = epoch(&ob).expect("epoch");
            assert_ne!(e, 0);
            assert_eq!(epoch(&ob).expect("again"), e);
            e
        };
        assert_eq!(epoch(&outbox(dir.path())).expect("reopened"), first);
        let wiped = tempfile::tempdir().expect("tempdir");
        assert_ne!(epoch(&outbox(wiped.path())).expect("new"), first, "a new outbox is a new epoch");
    }

    #[test]
    fn only_invalid_argument_is_a_refusal_for_good() {
        use proto::error::Code;
        for code in Code::ALL {
            assert_eq!(
                refused_for_good(&ApiError::new(code, "x")),
                code == Code::InvalidArgument,
                "{code:?}"
            );
        }
    }
}
