//! The master's API core, shared by the gRPC and REST front ends: validates requests, turns writes into
//! replicated commands (coalesced into few Raft entries by the proposal batcher), serves reads linearizably
//! (read index) or explicitly stale, streams watches from the change log, keeps agent heartbeats in the
//! leader's memory, and runs the leader's duties (announce its addresses, agent liveness, deadline ticks).
//! Every error leaves as an [`ApiError`] with one of the closed set of codes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::error::{ApiError, Code};
use redb::Database;
use state_machines::{Finding, ObjectId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fsm::FsmStats;
use crate::model::*;
use crate::raft::{ProposeError, RaftNode, Role};
use crate::sm_seam::{Input, Policy};
use crate::store::{ChangesRead, Filter, Reader, StoreError};

/// Commands waiting for the batcher; callers beyond it wait (backpressure), bounded.
pub const PROPOSAL_QUEUE: usize = 8192;
/// Most commands coalesced into one Raft entry.
pub const MAX_CMDS_PER_ENTRY: usize = 256;
/// Proposals in flight at once from this node; the raft layer batches them into one fsync per turn.
pub const MAX_INFLIGHT_ENTRIES: usize = 64;
/// Events per watch response (a response is one gRPC message / a few NDJSON lines).
pub const WATCH_BATCH: usize = 1000;
/// A watch with nothing to say still sends its progress this often, so clients detect dead streams.
pub const WATCH_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Responses buffered per watch stream before the stream waits for its client.
pub const WATCH_BUFFER: usize = 16;
/// Most objects one listing returns.
pub const MAX_LIST: usize = 10_000;
/// How often the leader's duty loop runs (announce, liveness, ticks).
pub const DUTY_INTERVAL: Duration = Duration::from_millis(200);
/// How often the leader steps objects whose deadlines passed.
pub const TICK_EVERY: Duration = Duration::from_secs(5);
/// Most agents tracked in the leader's heartbeat memory (a datacenter has ~10-100k hosts).
pub const MAX_TRACKED_AGENTS: usize = 200_000;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub grpc_addr: String,
    pub http_addr: String,
    /// An agent with no heartbeat for this long is marked silent (replicated).
    pub agent_silent_after: Duration,
    pub policy: Policy,
}

/// What an agent says about itself in each heartbeat (leader memory only; never replicated).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeartbeatInfo {
    pub version: String,
    pub started_ms: u64,
    pub checkers: BTreeMap<String, String>,
    pub outbox_entries: u64,
    pub outbox_dropped: u64,
}

/// Most checkers one heartbeat may list, and the longest version string kept (hostile input stays small).
pub const MAX_HEARTBEAT_CHECKERS: usize = 64;
const MAX_VERSION_LEN: usize = 64;

/// One agent as the leader's heartbeat memory sees it (`GET /api/v1/agents`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentView {
    pub agent: String,
    pub host: String,
    pub alive: bool,
    pub last_heartbeat_ms_ago: u64,
    /// Times this agent's start time changed while this leader watched it.
    pub restarts: u64,
    #[serde(flatten)]
    pub info: HeartbeatInfo,
}

/// One agent for `huatuo inspect` and the portal: replicated liveness plus the leader's memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentListing {
    pub agent: String,
    pub host: String,
    pub alive: bool,
    pub since_ms: u64,
    pub heard: bool,
    pub last_heartbeat_ms_ago: u64,
    pub restarts: u64,
    pub info: HeartbeatInfo,
}

struct Seen {
    host: String,
    info: HeartbeatInfo,
    restarts: u64,
    last: Instant,
    /// Whether the replicated state says alive (as far as this leader knows).
    alive: bool,
}

struct Pending {
    cmd: Vec<u8>,
    /// The command version the command needs (the entry is stamped with the highest of its commands).
    version: u32,
    tx: oneshot::Sender<Result<CmdResult, ApiError>>,
}

pub struct Service {
    raft: RaftNode,
    db: Arc<Database>,
    revision: watch::Receiver<u64>,
    cfg: ServiceConfig,
    proposals: mpsc::Sender<Pending>,
    heartbeats: Mutex<BTreeMap<String, Seen>>,
    pub stats: Arc<FsmStats>,
    pub started: Instant,
    /// The revision in the store when the service started (the fsm only reports revisions it applies).
    base_revision: u64,
    /// Open watch streams: id -> the next revision each will read (for /metrics: count and lag).
    watchers: Mutex<BTreeMap<u64, u64>>,
    next_watcher: std::sync::atomic::AtomicU64,
    /// Leader changes this node observed (its duty loop samples the leader every DUTY_INTERVAL).
    pub leader_changes: std::sync::atomic::AtomicU64,
}

/// Removes a watch stream from the registry when its task ends, however it ends.
struct WatcherGuard {
    svc: std::sync::Weak<Service>,
    id: u64,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        if let Some(s) = self.svc.upgrade() {
            lock(&s.watchers).remove(&self.id);
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store read failed");
    ApiError::internal(e.to_string())
}

fn check_text(what: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_TEXT_LEN {
        return Err(ApiError::invalid(format!("{what} is {} bytes (limit {MAX_TEXT_LEN})", s.len())));
    }
    Ok(())
}

fn check_map(what: &str, m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.len() > MAX_MAP_ENTRIES {
        return Err(ApiError::invalid(format!("{} {what} (limit {MAX_MAP_ENTRIES})", m.len())));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_MAP_KEY_LEN || v.len() > MAX_MAP_VALUE_LEN {
            return Err(ApiError::invalid(format!(
                "{what} entry {:?}: keys 1..={MAX_MAP_KEY_LEN} bytes, values up to {MAX_MAP_VALUE_LEN}",
                k.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// A write from an API, before it becomes a [`Command`].
pub struct IngestBatch {
    pub agent: String,
    pub seq: u64,
    pub findings: Vec<Finding>,
}

/// What watchers receive: events and the revision the stream has covered so far.
pub type WatchItem = Result<(Vec<ChangeEvent>, u64), ApiError>;

impl Service {
    /// Wire the service to a started raft node. Spawns the proposal batcher and the leader duty loop; both
    /// end when the raft node stops.
    pub fn start(
        raft: RaftNode,
        db: Arc<Database>,
        revision: watch::Receiver<u64>,
        stats: Arc<FsmStats>,
        cfg: ServiceConfig,
    ) -> Arc<Service> {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE);
        let base_revision = Reader::new(&db).and_then(|r| r.revision()).unwrap_or(0);
        let svc = Arc::new(Service {
            base_revision,
            raft,
            db,
            revision,
            cfg,
            proposals: tx,
            heartbeats: Mutex::new(BTreeMap::new()),
            stats,
            started: Instant::now(),
            watchers: Mutex::new(BTreeMap::new()),
            next_watcher: std::sync::atomic::AtomicU64::new(1),
            leader_changes: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(batcher(Arc::downgrade(&svc), rx));
        tokio::spawn(duties(Arc::downgrade(&svc)));
        svc
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn current_revision(&self) -> u64 {
        (*self.revision.borrow()).max(self.base_revision)
    }

    /// The gRPC address of node `id`, from the replicated member table.
    fn grpc_addr_of(&self, id: u64) -> Option<String> {
        let reader = Reader::new(&self.db).ok()?;
        reader.members().ok()?.into_iter().find(|(m, _)| *m == id).map(|(_, r)| r.grpc)
    }

    fn map_propose_error(&self, e: ProposeError) -> ApiError {
        match e {
            ProposeError::NotLeader { leader, .. } => {
                ApiError::not_leader(leader.and_then(|id| self.grpc_addr_of(id)))
            }
            ProposeError::Dropped => ApiError::unavailable("proposal dropped by a leader change; retry"),
            ProposeError::Timeout => ApiError::unavailable("timed out waiting for the commit; retry"),
            ProposeError::Stopped => ApiError::unavailable("this master node is stopped"),
            ProposeError::TooLarge => ApiError::invalid(format!(
                "request too large (limit {} bytes)",
                crate::raft::MAX_COMMAND_BYTES
            )),
            ProposeError::Fsm(m) => ApiError::internal(m),
            e @ ProposeError::NoSpace { .. } => ApiError::unavailable(e.to_string()),
        }
    }

    /// Fail fast on followers, before queueing (the batcher would learn the same from raft).
    fn leader_gate(&self) -> Result<(), ApiError> {
        let st = self.raft.status();
        if st.role == Role::Leader {
            return Ok(());
        }
        if st.role == Role::Stopped {
            return Err(ApiError::unavailable("this master node is stopped"));
        }
        Err(ApiError::not_leader(st.leader_id.and_then(|id| self.grpc_addr_of(id))))
    }

    /// [`Service::submit`] for the other API modules of this crate.
    pub(crate) async fn submit_cmd(&self, cmd: Command) -> Result<CmdResult, ApiError> {
        self.submit(cmd).await
    }

    /// Queue one command for the next entry and wait for its result.
    async fn submit(&self, cmd: Command) -> Result<CmdResult, ApiError> {
        self.leader_gate()?;
        // Command kinds newer than the cluster enabled would stop members still running older binaries.
        check_proposable(&cmd, self.stats.min_command_version())
            .map_err(|e| ApiError::new(proto::error::Code::Conflict, e.to_string()))?;
        let version = cmd.version();
        let bytes = serde_json::to_vec(&cmd).map_err(|e| ApiError::internal(e.to_string()))?;
        // Envelope overhead is a few dozen bytes.
        if bytes.len() + 64 > crate::raft::MAX_COMMAND_BYTES {
            return Err(ApiError::invalid(format!(
                "request encodes to {} bytes (limit {}); send smaller batches",
                bytes.len(),
                crate::raft::MAX_COMMAND_BYTES - 64
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send(Pending { cmd: bytes, version, tx })
            .await
            .map_err(|_| ApiError::unavailable("master is shutting down"))?;
        let res = rx.await.map_err(|_| ApiError::unavailable("master is shutting down"))??;
        match res.error.clone() {
            Some((code, message)) if res.applied == 0 => Err(ApiError::new(code, message)),
            _ => Ok(res),
        }
    }

    pub async fn ingest(&self, batch: IngestBatch) -> Result<CmdResult, ApiError> {
        if batch.findings.is_empty() {
            return Err(ApiError::invalid("no findings in the batch"));
        }
        if batch.findings.len() > MAX_FINDINGS_PER_BATCH {
            return Err(ApiError::invalid(format!(
                "{} findings in one batch (limit {MAX_FINDINGS_PER_BATCH})",
                batch.findings.len()
            )));
        }
        check_text("agent", &batch.agent)?;
        if !batch.agent.is_empty() && batch.seq == 0 {
            return Err(ApiError::invalid("an agent batch needs a sequence number >= 1"));
        }
        let cmd = Command::Ingest { agent: batch.agent, seq: batch.seq, findings: batch.findings };
        self.submit(cmd).await
    }

    pub async fn register(
        &self,
        agent: String,
        host: String,
        objects: Vec<Registration>,
    ) -> Result<CmdResult, ApiError> {
        check_text("agent", &agent)?;
        if !host.is_empty() {
            state_machines::id::validate_host(&host).map_err(|e| ApiError::invalid(e.to_string()))?;
        }
        if objects.is_empty() {
            return Err(ApiError::invalid("no objects to register"));
        }
        if objects.len() > MAX_OBJECTS_PER_REGISTER {
            return Err(ApiError::invalid(format!(
                "{} objects in one registration (limit {MAX_OBJECTS_PER_REGISTER})",
                objects.len()
            )));
        }
        for o in &objects {
            check_map("attributes", &o.attributes)?;
            check_map("labels", &o.labels)?;
            if !host.is_empty() && o.id.host() != host {
                return Err(ApiError::invalid(format!("{} is not on host {host}", o.id)));
            }
        }
        self.submit(Command::Register { agent, host, objects }).await
    }

    pub async fn object_command(&self, object: ObjectId, input: Input) -> Result<CmdResult, ApiError> {
        if matches!(input, Input::Finding(_) | Input::Tick | Input::Replacement { .. }) {
            return Err(ApiError::invalid("findings, ticks and replacements have their own calls"));
        }
        self.submit(Command::Object { object, input }).await
    }

    /// Open watch streams and the largest lag among them (revisions not yet read).
    pub fn watcher_lag(&self) -> (u64, u64) {
        let current = self.current_revision();
        let w = lock(&self.watchers);
        let lag = w.values().map(|next| current.saturating_add(1).saturating_sub(*next)).max().unwrap_or(0);
        (w.len() as u64, lag)
    }

    /// The actions waiting to run on `host` (handed out with heartbeats; this node's copy, which on the
    /// leader includes everything it acknowledged).
    pub fn actions_for(&self, host: &str) -> Result<Vec<crate::actions::ActionOrder>, ApiError> {
        let r = Reader::new(&self.db).map_err(store_err)?;
        crate::actions::orders_for(&r, host).map_err(store_err)
    }

    /// Record a heartbeat in the leader's memory; only a change of liveness is replicated.
    pub async fn heartbeat(&self, agent: String, host: String, info: HeartbeatInfo) -> Result<u64, ApiError> {
        self.leader_gate()?;
        if agent.is_empty() {
            return Err(ApiError::invalid("heartbeat without an agent id"));
        }
        check_text("agent", &agent)?;
        if info.checkers.len() > MAX_HEARTBEAT_CHECKERS {
            return Err(ApiError::invalid(format!(
                "heartbeat lists more than {MAX_HEARTBEAT_CHECKERS} checkers"
            )));
        }
        if info.version.len() > MAX_VERSION_LEN
            || info.checkers.iter().any(|(k, v)| k.len() > MAX_VERSION_LEN || v.len() > MAX_VERSION_LEN)
        {
            return Err(ApiError::invalid(format!(
                "heartbeat names and versions are limited to {MAX_VERSION_LEN} bytes"
            )));
        }
        state_machines::id::validate_host(&host).map_err(|e| ApiError::invalid(e.to_string()))?;
        let need_alive = {
            let mut hb = lock(&self.heartbeats);
            if !hb.contains_key(&agent) && hb.len() >= MAX_TRACKED_AGENTS {
                return Err(ApiError::unavailable("too many agents tracked by this leader"));
            }
            let seen = hb.entry(agent.clone()).or_insert_with(|| Seen {
                host: host.clone(),
                info: info.clone(),
                restarts: 0,
                last: Instant::now(),
                alive: false,
            });
            seen.last = Instant::now();
            if seen.info.started_ms != info.started_ms {
                seen.restarts += 1;
            }
            seen.info = info;
            let moved = seen.host != host;
            seen.host = host.clone();
            !seen.alive || moved
        };
        if need_alive {
            let replicated_alive = Reader::new(&self.db)
                .and_then(|r| r.agents())
                .map(|a| a.iter().any(|(id, r)| *id == agent && r.alive && r.host == host))
                .map_err(store_err)?;
            if !replicated_alive {
                self.submit(Command::AgentLiveness { agent: agent.clone(), host, alive: true }).await?;
            }
            if let Some(s) = lock(&self.heartbeats).get_mut(&agent) {
                s.alive = true;
            }
        }
        Ok(self.current_revision())
    }

    /// The leader's heartbeat memory: every agent it has heard from, with what it said last.
    pub fn agents(&self) -> Result<Vec<AgentView>, ApiError> {
        self.leader_gate()?;
        let hb = lock(&self.heartbeats);
        Ok(hb
            .iter()
            .map(|(agent, s)| AgentView {
                agent: agent.clone(),
                host: s.host.clone(),
                alive: s.alive,
                last_heartbeat_ms_ago: u64::try_from(s.last.elapsed().as_millis()).unwrap_or(u64::MAX),
                restarts: s.restarts,
                info: s.info.clone(),
            })
            .collect())
    }

    /// Every agent in the replicated state, with the leader's heartbeat memory where it has any.
    pub async fn agent_list(&self) -> Result<Vec<AgentListing>, ApiError> {
        let heard: BTreeMap<String, AgentView> =
            self.agents()?.into_iter().map(|a| (a.agent.clone(), a)).collect();
        let r = self.read_view(false).await?;
        Ok(r.agents()
            .map_err(store_err)?
            .into_iter()
            .map(|(id, rec)| {
                let h = heard.get(&id);
                AgentListing {
                    agent: id.clone(),
                    host: rec.host,
                    alive: rec.alive,
                    since_ms: rec.since_ms,
                    heard: h.is_some(),
                    last_heartbeat_ms_ago: h.map_or(0, |h| h.last_heartbeat_ms_ago),
                    restarts: h.map_or(0, |h| h.restarts),
                    info: h.map(|h| h.info.clone()).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// A read view: after a read-index barrier (linearizable), or this node's copy as is (`stale`).
    pub async fn read_view(&self, stale: bool) -> Result<Reader, ApiError> {
        if !stale {
            self.raft.read_index().await.map_err(|e| self.map_propose_error(e))?;
        }
        Reader::new(&self.db).map_err(store_err)
    }

    pub async fn list(
        &self,
        filter: &Filter,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<ObjectRecord>, u64), ApiError> {
        let r = self.read_view(stale).await?;
        let limit = if limit == 0 { MAX_LIST } else { limit.min(MAX_LIST) };
        let objects = r.list(filter, limit).map_err(store_err)?;
        Ok((objects, r.revision().map_err(store_err)?))
    }

    pub async fn get(
        &self,
        id: &ObjectId,
        stale: bool,
    ) -> Result<(ObjectRecord, Vec<HistoryEntry>, u64), ApiError> {
        let r = self.read_view(stale).await?;
        let rec = r
            .object(&id.to_string())
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found(format!("no object {id}")))?;
        let history = r.history(&rec).map_err(store_err)?;
        Ok((rec, history, r.revision().map_err(store_err)?))
    }

    /// Stream changes from `from` (0: from now) matching `filter`. The first item is an error if `from` was
    /// compacted. Ends when the receiver is dropped or this node stops.
    pub fn watch(self: &Arc<Self>, from: u64, filter: Filter) -> mpsc::Receiver<WatchItem> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let svc = Arc::downgrade(self);
        let mut rev_rx = self.revision.clone();
        let start = self.current_revision() + 1;
        let id = self.next_watcher.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guard = WatcherGuard { svc: svc.clone(), id };
        tokio::spawn(async move {
            let _guard = guard;
            let _ = rev_rx.borrow_and_update();
            let mut next = if from == 0 { start } else { from };
            let mut last_sent = Instant::now();
            loop {
                let Some(s) = svc.upgrade() else { return };
                lock(&s.watchers).insert(id, next);
                let read = Reader::new(&s.db).and_then(|r| r.changes(next, &filter, WATCH_BATCH));
                drop(s);
                match read {
                    Err(e) => {
                        let _ = tx.send(Err(store_err(e))).await;
                        return;
                    }
                    Ok(ChangesRead::Compacted { first_available }) => {
                        let msg = format!(
                            "revision {next} was compacted (oldest available {first_available}): resync from a \
                             snapshot (list objects, then watch from the listed revision + 1)"
                        );
                        let _ = tx.send(Err(ApiError::new(Code::Compacted, msg))).await;
                        return;
                    }
                    Ok(ChangesRead::Events { events, next: n }) => {
                        let progressed = n > next;
                        next = n;
                        if !events.is_empty() || (progressed && last_sent.elapsed() >= WATCH_PROGRESS_EVERY) {
                            if tx.send(Ok((events, next - 1))).await.is_err() {
                                return;
                            }
                            last_sent = Instant::now();
                            continue;
                        }
                    }
                }
                // Nothing new: wait for the next commit, or send progress so the client knows we're alive.
                let current = *rev_rx.borrow_and_update();
                if current >= next {
                    continue;
                }
                match tokio::time::timeout(WATCH_PROGRESS_EVERY, rev_rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        if tx.send(Ok((Vec::new(), next - 1))).await.is_err() {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                }
            }
        });
        rx
    }

    pub fn cluster_info(&self) -> Result<ClusterInfo, ApiError> {
        let st = self.raft.status();
        let r = Reader::new(&self.db).map_err(store_err)?;
        let members = r.members().map_err(store_err)?;
        let addr = |id: u64| members.iter().find(|(m, _)| *m == id).map(|(_, r)| r.clone());
        let (_, scopes) = crate::safety_api::scope_views(&r, now_ms()).map_err(store_err)?;
        let level = scopes
            .iter()
            .find(|s| s.scope == crate::safety::CLUSTER)
            .map_or(crate::safety::Level::Auto, |s| s.level);
        let agents = r.agents().map_err(store_err)?;
        let info = ClusterInfo {
            id: st.id,
            leader_id: st.leader_id.unwrap_or(0),
            term: st.term,
            role: format!("{:?}", st.role).to_lowercase(),
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            revision: r.revision().map_err(store_err)?,
            level: level.as_str().into(),
            leader_grpc: st.leader_id.and_then(addr).map(|m| m.grpc).unwrap_or_default(),
            members: st
                .peers
                .iter()
                .map(|(id, peer)| {
                    let m = addr(*id);
                    MemberInfo {
                        id: *id,
                        peer_addr: peer.clone(),
                        grpc_addr: m.as_ref().map(|m| m.grpc.clone()).unwrap_or_default(),
                        http_addr: m.map(|m| m.http).unwrap_or_default(),
                    }
                })
                .collect(),
            agents_alive: agents.iter().filter(|(_, a)| a.alive).count() as u64,
            agents: agents.len() as u64,
            objects: r.object_count().map_err(store_err)?,
            last_error: st.last_error.unwrap_or_default(),
            pending_proposals: r.pending_count().map_err(store_err)?,
            scopes,
        };
        Ok(info)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub peer_addr: String,
    pub grpc_addr: String,
    pub http_addr: String,
}

/// `huatuo status` / `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterInfo {
    pub id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub role: String,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub level: String,
    pub leader_grpc: String,
    pub members: Vec<MemberInfo>,
    pub agents_alive: u64,
    #[serde(default)]
    pub agents: u64,
    pub objects: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Per scope: level, quota use vs limit, pending proposals, why the last automatic action was blocked.
    #[serde(default)]
    pub scopes: Vec<crate::safety_api::ScopeView>,
    #[serde(default)]
    pub pending_proposals: u64,
}

/// Coalesce queued commands into entries: while entries are in flight, new commands pile up in the queue
/// and go out together in the next entry (many findings per entry, many entries per fsync).
async fn batcher(svc: std::sync::Weak<Service>, mut rx: mpsc::Receiver<Pending>) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_ENTRIES));
    let limit = crate::raft::MAX_COMMAND_BYTES - 64;
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        let mut size = batch[0].cmd.len();
        while batch.len() < MAX_CMDS_PER_ENTRY {
            match rx.try_recv() {
                Ok(p) if size + p.cmd.len() < limit => {
                    size += p.cmd.len() + 1;
                    batch.push(p);
                }
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        let Some(s) = svc.upgrade() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            let v = batch.iter().map(|p| p.version).max().unwrap_or(DEFAULT_MIN_COMMAND_VERSION);
            let entry = entry_bytes(now_ms(), v, batch.iter().map(|p| p.cmd.as_slice()));
            let out = match s.raft.propose(entry).await {
                Ok(bytes) => serde_json::from_slice::<ApplyResult>(&bytes)
                    .map_err(|e| ApiError::internal(format!("bad apply result: {e}")))
                    .and_then(|r| {
                        if r.results.len() == batch.len() {
                            Ok(r.results)
                        } else {
                            Err(ApiError::internal("apply result does not match the entry"))
                        }
                    }),
                Err(e) => Err(s.map_propose_error(e)),
            };
            match out {
                Ok(results) => {
                    for (p, r) in batch.into_iter().zip(results) {
                        let _ = p.tx.send(Ok(r));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// The leader's periodic duties. Followers only keep their heartbeat memory empty.
async fn duties(svc: std::sync::Weak<Service>) {
    let mut interval = tokio::time::interval(DUTY_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since: Option<Instant> = None;
    let mut last_tick = Instant::now();
    let mut last_leader: Option<u64> = None;
    loop {
        interval.tick().await;
        let Some(s) = svc.upgrade() else { return };
        let st = s.raft.status();
        if st.leader_id.is_some() && st.leader_id != last_leader {
            if last_leader.is_some() {
                s.leader_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            last_leader = st.leader_id;
        }
        if st.role == Role::Stopped {
            return;
        }
        if st.role != Role::Leader {
            leader_since = None;
            lock(&s.heartbeats).clear();
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        if let Err(e) = leader_duties(&s, since, &mut last_tick).await {
            tracing::debug!(error = %e, "leader duty failed; retrying next round");
        }
    }
}

async fn leader_duties(
    s: &Arc<Service>,
    leader_since: Instant,
    last_tick: &mut Instant,
) -> Result<(), ApiError> {
    let reader = Reader::new(&s.db).map_err(store_err)?;
    // 1. Announce where this leader's APIs listen, so followers can redirect clients here.
    let me = MemberRecord { grpc: s.cfg.grpc_addr.clone(), http: s.cfg.http_addr.clone() };
    let id = s.raft.id();
    if !reader.members().map_err(store_err)?.iter().any(|(m, r)| *m == id && *r == me) {
        s.submit(Command::Announce { id, grpc: me.grpc, http: me.http }).await?;
    }
    // 2. Agents that went silent. A new leader first waits a full period (it has no heartbeat memory yet).
    if leader_since.elapsed() >= s.cfg.agent_silent_after {
        let silent: Vec<(String, String)> = {
            let hb = lock(&s.heartbeats);
            reader
                .agents()
                .map_err(store_err)?
                .into_iter()
                .filter(|(id, a)| {
                    a.alive && hb.get(id).is_none_or(|seen| seen.last.elapsed() >= s.cfg.agent_silent_after)
                })
                .map(|(id, a)| (id, a.host))
                .collect()
        };
        for (agent, host) in silent {
            s.submit(Command::AgentLiveness { agent: agent.clone(), host, alive: false }).await?;
            if let Some(seen) = lock(&s.heartbeats).get_mut(&agent) {
                seen.alive = false;
            }
        }
    }
    // 3. Step objects whose deadlines passed.
    if last_tick.elapsed() >= TICK_EVERY {
        *last_tick = Instant::now();
        let now = now_ms();
        let due: Vec<ObjectId> = reader
            .list(&Filter::default(), usize::MAX)
            .map_err(store_err)?
            .into_iter()
            .filter(|r| r.sm.next_deadline_ms(&s.cfg.policy).is_some_and(|d| d <= now))
            .map(|r| r.id)
            .take(MAX_TICK_OBJECTS)
            .collect();
        if !due.is_empty() {
            s.submit(Command::Tick { objects: due }).await?;
        }
    }
    Ok(())
}
