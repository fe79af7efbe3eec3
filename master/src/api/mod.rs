//! The master's one API layer, shared by the gRPC (`grpc.rs`) and REST (`http.rs`) adapters, which only
//! convert wire messages to the calls below and results back. Everything an API does is here, split by
//! responsibility:
//!
//! - [`validate`]: the limits and checks every request passes before anything is proposed;
//! - [`requests`]: request strings (filters, object commands, proposal filters) parsed into domain values;
//! - [`objects`]: writes (ingest, register, object commands) and reads (list, get, the object view);
//! - [`pages`]: page sizes and continuation tokens of the paginated listings (objects, agents);
//! - [`watch`]: watch streams from the change log;
//! - [`heartbeats`]: the leader's memory of agent heartbeats (only liveness changes are replicated);
//! - [`cluster`]: cluster info;
//! - [`safety`]: the safety net's operator commands and views;
//! - [`catalog`]: the checker catalog (artifacts, rollouts, assignments, fetches, the canary duty);
//! - [`topology`]: the replicated fabric topology (issue 16): set, clear, show;
//! - [`proposer`]: coalesces concurrent commands into few Raft entries;
//! - [`duties`]: what the leader does on its own (announce itself, agent liveness, deadline ticks);
//! - [`tasks`]: the owned task groups every background task above runs in, stopped in order by
//!   `server::run`.
//!
//! Every error leaves as an [`ApiError`] with one of the closed set of codes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::error::ApiError;
use redb::Database;
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

use crate::fsm::FsmStats;
use crate::model::{CmdResult, Command};
use crate::raft::{ProposeError, RaftNode, Role};
use crate::store::{Reader, StoreError};

pub mod catalog;
pub mod charts;
pub mod cluster;
pub mod duties;
pub mod heartbeats;
pub mod objects;
pub mod pages;
pub mod proposer;
pub mod requests;
pub mod safety;
pub mod summary;
pub mod tasks;
pub mod topology;
pub mod validate;
pub mod watch;

pub use cluster::{ClusterInfo, MemberInfo};
pub use heartbeats::{AgentListing, AgentView, HeartbeatInfo};
pub use objects::{IngestBatch, WriteResult, object_view};
pub use pages::{AgentPage, ObjectPage};
pub use proposer::{MAX_CMDS_PER_ENTRY, MAX_INFLIGHT_ENTRIES, PROPOSAL_QUEUE};
pub use tasks::{ShutdownReport, TaskGroup};
pub use validate::MAX_HEARTBEAT_CHECKERS;
pub use watch::{WATCH_BATCH, WATCH_BUFFER, WATCH_PROGRESS_EVERY, WatchItem};

/// Most objects one page of a listing returns ([`validate::MAX_PAGE`]; listings continue with a page
/// token, see [`pages`]).
pub const MAX_LIST: usize = validate::MAX_PAGE;

/// How long shutdown waits for open watch streams to end once told to (they stop at their next await).
pub const WATCHER_DRAIN: Duration = Duration::from_secs(2);
/// How long shutdown waits for the leader duties, the proposer and the ticket dispatcher: an entry in
/// flight waits at most for its commit (the raft layer's propose timeout bounds that too).
pub const DUTY_STOP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub grpc_addr: String,
    pub http_addr: String,
    /// An agent with no heartbeat for this long is marked silent (replicated).
    pub agent_silent_after: Duration,
    pub policy: state_machines::Policy,
    /// Most open watch streams on this node ([`watch::MAX_WATCHES`] unless configured).
    pub max_watches: usize,
    /// Most open heartbeat streams on this node ([`heartbeats::MAX_HEARTBEAT_STREAMS`] unless configured;
    /// 0: none, agents beat one call at a time).
    pub max_heartbeat_streams: usize,
    /// Most open ingest streams on this node ([`heartbeats::MAX_INGEST_STREAMS`] unless configured; 0:
    /// none, agents send Ingest calls).
    pub max_ingest_streams: usize,
    /// An ingest stream without a batch for this long ends cleanly ([`heartbeats::INGEST_STREAM_IDLE`];
    /// shorter only in tests).
    pub ingest_stream_idle: Duration,
    /// A heartbeat or ingest stream ends cleanly after its first beat past this age
    /// ([`heartbeats::HEARTBEAT_STREAM_MAX_AGE`] unless configured).
    pub heartbeat_stream_max_age: Duration,
    /// The newest command version this node's binary knows ([`crate::model::COMMAND_VERSION`], lower only
    /// when rehearsing an upgrade).
    pub knows_command_version: u32,
    /// Raise `min_command_version` to what this binary knows as soon as every member reports knowing it
    /// (the leader's duty, like CockroachDB's auto-finalized upgrades). Off: an operator raises it.
    pub auto_upgrade: bool,
}

impl ServiceConfig {
    /// The settings a master config without any of them resolves to, advertising `grpc_addr` and
    /// `http_addr` (in-process nodes of tests and tools; `server.rs` fills every field from the config).
    pub fn new(grpc_addr: impl Into<String>, http_addr: impl Into<String>) -> Self {
        ServiceConfig {
            grpc_addr: grpc_addr.into(),
            http_addr: http_addr.into(),
            agent_silent_after: Duration::from_millis(crate::config::default_agent_silent_after_ms()),
            policy: state_machines::Policy::default(),
            max_watches: watch::MAX_WATCHES,
            max_heartbeat_streams: heartbeats::MAX_HEARTBEAT_STREAMS,
            max_ingest_streams: heartbeats::MAX_INGEST_STREAMS,
            ingest_stream_idle: heartbeats::INGEST_STREAM_IDLE,
            heartbeat_stream_max_age: heartbeats::HEARTBEAT_STREAM_MAX_AGE,
            knows_command_version: crate::model::COMMAND_VERSION,
            auto_upgrade: crate::config::default_auto_upgrade(),
        }
    }
}

/// The API core of one master node. Built by [`Service::start`]; its background tasks run in
/// [`Service::watchers`] and [`Service::duties`], which [`Service::shutdown`] stops in that order.
pub struct Service {
    raft: RaftNode,
    db: Arc<Database>,
    revision: tokio_watch::Receiver<u64>,
    cfg: ServiceConfig,
    proposals: mpsc::Sender<proposer::Pending>,
    heartbeats: heartbeats::Memory,
    /// Open heartbeat streams and what was refused (`max_heartbeat_streams`).
    beat_streams: Arc<heartbeats::StreamCount>,
    /// What became of the heartbeat datagrams this node received (`datagrams.rs`).
    pub datagrams: crate::datagrams::Counters,
    /// Open ingest streams and what was refused (`max_ingest_streams`).
    ingest_streams: Arc<heartbeats::StreamCount>,
    /// Agents to propose alive, for the liveness batcher (`heartbeats::run_liveness`).
    coming_alive: mpsc::Sender<heartbeats::ComingAlive>,
    /// The pending orders of every host, for heartbeat answers (see `actions::OrderIndex`).
    orders: Arc<crate::actions::OrderIndex>,
    /// The objects' deadlines, for the leader's ticks, and the objects out of GOOD by state, for listings
    /// by state (see `deadlines::DeadlineIndex` and `by_state`).
    deadlines: Arc<crate::deadlines::DeadlineIndex>,
    pub stats: Arc<FsmStats>,
    pub started: Instant,
    /// The revision in the store when the service started (the fsm only reports revisions it applies).
    base_revision: u64,
    watch_registry: watch::Registry,
    /// Leader changes this node observed (its duty loop samples the leader every DUTY_INTERVAL).
    pub leader_changes: AtomicU64,
    /// Pages of listings by state (other than GOOD) served from the index of the objects out of GOOD, and
    /// those that scanned because it could not serve them (see `by_state`).
    pub state_pages_indexed: AtomicU64,
    pub state_pages_scanned: AtomicU64,
    /// The catalog as last read for assignments, keyed by the replicated catalog counter.
    catalog_cache: catalog::CatalogCache,
    /// Per-host assignment hashes for heartbeats, keyed by the replicated catalog counter.
    assignments: Mutex<catalog::AssignmentCache>,
    /// The canary-stop thresholds (master config `[canary]`).
    canary: Mutex<crate::catalog::CanaryConfig>,
    /// Network localisation (issue 16): the leader's peer book, window and last verdict. Set once by
    /// [`Service::start_net`] (which also starts the window task); defaults until then.
    net: std::sync::OnceLock<Arc<crate::net::Net>>,
    /// This member's archive (issue 19), set once by the server; None in in-process tests without one.
    archive: std::sync::OnceLock<Arc<crate::archive::Archive>>,
    /// The cluster's heartbeat secret once this member read it from its state ([`Service::beat_secret`]),
    /// and when it last looked (ms; at most every [`BEAT_SECRET_LOOK_EVERY_MS`] while there is none).
    beat_secret: std::sync::OnceLock<proto::datagram::BeatSecret>,
    beat_secret_looked_ms: AtomicU64,
    /// Watch streams (stopped first on shutdown, so the API servers can finish their connections).
    pub watchers: TaskGroup,
    /// The proposer, its entries in flight, the leader duties and the ticket dispatcher.
    pub duties: TaskGroup,
}

/// While a member holds no heartbeat secret it reads its state for one at most this often (a datagram
/// under a secret it has not read yet, a call), so a new leader takes agents' own keys within a second.
pub const BEAT_SECRET_LOOK_EVERY_MS: u64 = 1000;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A poisoned lock still holds consistent data here (every critical section is a few map operations).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store read failed");
    ApiError::internal(e.to_string())
}

impl Service {
    /// The cluster's heartbeat secret (`Command::SetBeatSecret`), read from this member's state once it
    /// exists (never changes after: set once); `None` until then, looked for at most every
    /// [`BEAT_SECRET_LOOK_EVERY_MS`].
    pub fn beat_secret(&self) -> Option<&proto::datagram::BeatSecret> {
        if let Some(s) = self.beat_secret.get() {
            return Some(s);
        }
        let now = now_ms();
        let last = self.beat_secret_looked_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < BEAT_SECRET_LOOK_EVERY_MS {
            return None;
        }
        self.beat_secret_looked_ms.store(now.max(1), Ordering::Relaxed);
        match Reader::new(&self.db).and_then(|r| r.beat_secret()) {
            Ok(Some(secret)) => {
                Some(self.beat_secret.get_or_init(|| proto::datagram::BeatSecret::new(&secret)))
            }
            Ok(None) => None,
            Err(e) => {
                // Damage raised the node's flag in the read; looked for again within a second.
                tracing::warn!(error = %e, "reading the heartbeat secret failed");
                None
            }
        }
    }

    /// Set the cluster's heartbeat secret (the leader's duty once the cluster enabled command version 12):
    /// 32 bytes from the thread's CSPRNG (seeded by the OS), proposed once; a secret another leader set
    /// first (refused Conflict) is as good.
    pub(crate) async fn set_beat_secret(&self) -> Result<(), ApiError> {
        use rand::RngCore as _;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = crate::model::SecretHex::new(hex::encode(secret));
        let r = self.submit(Command::SetBeatSecret { secret }).await?;
        match r.error {
            None => Ok(()),
            Some((proto::error::Code::Conflict, _)) => Ok(()),
            Some((code, message)) => Err(ApiError::new(code, message)),
        }
    }

    /// Wire the service to a started raft node. Spawns the proposer and the leader duty loop into
    /// [`Service::duties`]; they end on [`Service::shutdown`] (or when the raft node stops, or when the
    /// service is dropped: tasks hold only a `Weak` so a dropped service is never kept alive by them).
    pub fn start(
        raft: RaftNode,
        db: Arc<Database>,
        revision: tokio_watch::Receiver<u64>,
        stats: Arc<FsmStats>,
        cfg: ServiceConfig,
    ) -> Arc<Service> {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE);
        let (alive_tx, alive_rx) = mpsc::channel(heartbeats::LIVENESS_QUEUE);
        let base_revision = Reader::new(&db).and_then(|r| r.revision()).unwrap_or(0);
        let deadlines = Arc::new(crate::deadlines::index(cfg.policy.clone()));
        let orders: Arc<crate::actions::OrderIndex> = Arc::default();
        deadlines.follow_hint(Arc::clone(&stats.core_changes));
        orders.follow_hint(Arc::clone(&stats.core_changes));
        let svc = Arc::new(Service {
            base_revision,
            deadlines,
            raft,
            db,
            revision,
            cfg,
            proposals: tx,
            heartbeats: heartbeats::Memory::default(),
            beat_streams: Arc::default(),
            datagrams: crate::datagrams::Counters::default(),
            beat_secret: std::sync::OnceLock::new(),
            beat_secret_looked_ms: AtomicU64::new(0),
            ingest_streams: Arc::default(),
            coming_alive: alive_tx,
            orders,
            stats,
            started: Instant::now(),
            watch_registry: watch::Registry::default(),
            leader_changes: AtomicU64::new(0),
            state_pages_indexed: AtomicU64::new(0),
            state_pages_scanned: AtomicU64::new(0),
            catalog_cache: Mutex::new(None),
            assignments: Mutex::default(),
            canary: Mutex::new(crate::catalog::CanaryConfig::default()),
            net: std::sync::OnceLock::new(),
            archive: std::sync::OnceLock::new(),
            watchers: TaskGroup::new("watchers"),
            duties: TaskGroup::new("duties"),
        });
        svc.duties.spawn(proposer::run(Arc::downgrade(&svc), rx, svc.duties.stopped()));
        svc.duties.spawn(duties::run(Arc::downgrade(&svc), svc.duties.stopped()));
        svc.duties.spawn(heartbeats::run_liveness(Arc::downgrade(&svc), alive_rx, svc.duties.stopped()));
        svc.duties.spawn(crate::stalls::probe(&crate::stalls::RUNTIME, svc.duties.stopped()));
        svc
    }

    /// Stop the background tasks in order: watch streams first, then the duties. Each group gets its
    /// limit; what is still running at the limit is aborted and counted in the report.
    pub async fn shutdown(&self) -> ShutdownReport {
        let watchers = self.watchers.shutdown(WATCHER_DRAIN).await;
        let duties = self.duties.shutdown(DUTY_STOP).await;
        ShutdownReport { watchers, duties }
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The store, shared (for reads off the async runtime).
    pub fn db_arc(&self) -> Arc<Database> {
        self.db.clone()
    }

    pub fn current_revision(&self) -> u64 {
        (*self.revision.borrow()).max(self.base_revision)
    }

    /// Where each member's APIs are reached, by id: the replicated member table (a leader announces itself
    /// there), overlaid with what members said over the peer port lately (live, and known before an
    /// announcement could commit: none does while a quorum is short of disk), and this node's own.
    pub(crate) fn member_addrs(
        &self,
        stored: &[(u64, crate::model::MemberRecord)],
    ) -> std::collections::BTreeMap<u64, crate::model::MemberRecord> {
        let mut out: std::collections::BTreeMap<u64, _> = stored.iter().cloned().collect();
        for (id, p) in self.raft.peer_answers() {
            if !p.grpc.is_empty() {
                out.insert(id, crate::model::MemberRecord { grpc: p.grpc, http: p.http });
            }
        }
        if !self.cfg.grpc_addr.is_empty() {
            let me = crate::model::MemberRecord {
                grpc: self.cfg.grpc_addr.clone(),
                http: self.cfg.http_addr.clone(),
            };
            out.insert(self.raft.id(), me);
        }
        out
    }

    fn member_addrs_now(&self) -> Option<std::collections::BTreeMap<u64, crate::model::MemberRecord>> {
        Some(self.member_addrs(&Reader::new(&self.db).ok()?.members().ok()?))
    }

    /// The gRPC address of node `id` ([`Service::member_addrs`]).
    fn grpc_addr_of(&self, id: u64) -> Option<String> {
        self.member_addrs_now()?.remove(&id).map(|r| r.grpc)
    }

    /// The HTTP address of the member whose gRPC address is `grpc` (REST clients redirect over HTTP).
    pub fn http_addr_for(&self, grpc: &str) -> Option<String> {
        self.member_addrs_now()?.into_values().find(|m| m.grpc == grpc).map(|m| m.http)
    }

    /// What a follower short of disk answers instead of serving a read or a watch: it takes no new entries
    /// while its NOSPACE alarm is up (`raft::core::Core::set_short_of_disk`), so what it holds falls behind.
    /// A redirect to the leader, which clients follow. None on a leader or a member with space.
    pub(crate) fn short_of_disk_redirect(&self) -> Option<ApiError> {
        self.raft.nospace()?;
        let (role, leader) = self.raft.role_and_leader();
        (role != Role::Leader).then(|| self.map_propose_error(ProposeError::ShortOfDisk { leader }))
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
            e @ (ProposeError::NoSpace { .. } | ProposeError::QuorumNoSpace { .. }) => {
                ApiError::unavailable(e.to_string())
            }
            // A redirect, as for a write asked of a follower: clients follow `leader` to get their answer.
            e @ ProposeError::ShortOfDisk { leader } => {
                let addr = leader.and_then(|id| self.grpc_addr_of(id));
                let message = match &addr {
                    Some(a) => format!("{e}; the leader is at {a}"),
                    None => format!("{e}; no leader known yet"),
                };
                ApiError { code: proto::error::Code::NotLeader, message, leader: addr }
            }
        }
    }

    /// The network localisation memory (issue 16).
    pub fn net(&self) -> &crate::net::Net {
        self.net.get_or_init(|| Arc::new(crate::net::Net::new(crate::net::NetConfig::default())))
    }

    /// Configure network localisation and start the leader's window task (once; later calls are ignored
    /// and return false).
    pub fn start_net(self: &Arc<Self>, cfg: crate::net::NetConfig) -> bool {
        if self.net.set(Arc::new(crate::net::Net::new(cfg))).is_err() {
            return false;
        }
        self.duties.spawn(crate::net::run(Arc::downgrade(self), self.duties.stopped()));
        true
    }

    /// Serve `archive` on the archive routes (once; later calls are ignored).
    pub fn set_archive(&self, archive: Arc<crate::archive::Archive>) {
        let _ = self.archive.set(archive);
    }

    /// This member's archive, if it has one.
    pub fn archive(&self) -> Option<&Arc<crate::archive::Archive>> {
        self.archive.get()
    }

    /// How long an agent may stay silent before it is marked so (and stops being handed out as a peer).
    pub fn silent_after(&self) -> Duration {
        self.cfg.agent_silent_after
    }

    /// NOT_LEADER (with the leader's address) on a follower; for reads served from the leader's memory.
    pub fn leader_check(&self) -> Result<(), ApiError> {
        self.leader_gate()
    }

    /// Fail fast on followers, before queueing (the proposer would learn the same from raft).
    pub(crate) fn leader_gate(&self) -> Result<(), ApiError> {
        let (role, leader) = self.raft.role_and_leader();
        if role == Role::Leader {
            return Ok(());
        }
        if role == Role::Stopped {
            return Err(ApiError::unavailable("this master node is stopped"));
        }
        Err(ApiError::not_leader(leader.and_then(|id| self.grpc_addr_of(id))))
    }

    /// [`Service::submit`] with the client's idempotency key (validated here: length and charset): the
    /// replicated state applies the command once and answers a retry with the first result and
    /// `duplicate: true` (see `fsm/requests.rs`). Until the cluster enabled command version 3
    /// (`set-min-command-version 3`, once every master runs a binary that knows it) the key cannot be
    /// replicated and the command is submitted without it (a retry may then apply twice, as before).
    pub(crate) async fn submit_keyed(
        &self,
        cmd: Command,
        key: Option<String>,
    ) -> Result<CmdResult, ApiError> {
        let Some(key) = key else { return self.submit(cmd).await };
        crate::model::validate_request_key(&key).map_err(|e| ApiError::invalid(e.to_string()))?;
        if self.stats.min_command_version() < cmd.version().max(crate::model::KEYED_COMMAND_VERSION) {
            tracing::debug!(key, "idempotency key ignored: command version 3 is not enabled in this cluster");
            return self.submit(cmd).await;
        }
        self.submit(Command::Keyed { key, cmd: Box::new(cmd) }).await
    }

    /// Queue one (validated) command for the next entry and wait for its result.
    pub(crate) async fn submit(&self, cmd: Command) -> Result<CmdResult, ApiError> {
        self.leader_gate()?;
        // Command kinds newer than the cluster enabled would stop members still running older binaries.
        crate::model::check_proposable(&cmd, self.stats.min_command_version())
            .map_err(|e| ApiError::new(proto::error::Code::Conflict, e.to_string()))?;
        let version = cmd.version();
        // Binary entries once every member knows them (the proposer gate's view of the replicated version).
        let binary = self.stats.min_command_version() >= crate::model::BINARY_ENTRY_VERSION;
        let bytes = if binary {
            crate::model::encode_command_binary(&cmd)
        } else {
            serde_json::to_vec(&cmd).map_err(|e| ApiError::internal(e.to_string()))?
        };
        let cost = crate::model::entry_cost(bytes.len(), binary);
        if cost + proposer::ENVELOPE_OVERHEAD > crate::raft::MAX_COMMAND_BYTES {
            return Err(ApiError::invalid(format!(
                "request encodes to {cost} bytes (limit {}); send smaller batches",
                crate::raft::MAX_COMMAND_BYTES - proposer::ENVELOPE_OVERHEAD
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send(proposer::Pending { cmd: bytes, binary, cost, version, tx })
            .await
            .map_err(|_| ApiError::unavailable("master is shutting down"))?;
        let res = rx.await.map_err(|_| ApiError::unavailable("master is shutting down"))??;
        match res.error.clone() {
            Some((code, message)) if res.applied == 0 => Err(ApiError::new(code, message)),
            _ => Ok(res),
        }
    }

    /// A read view: after a read-index barrier (linearizable), or this node's copy as is (`stale`).
    pub async fn read_view(&self, stale: bool) -> Result<Reader, ApiError> {
        if !stale {
            self.raft.read_index().await.map_err(|e| self.map_propose_error(e))?;
        }
        Reader::new(&self.db).map_err(store_err)
    }
}
