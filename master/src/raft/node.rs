//! [`RaftNode`]: the handle the rest of the master uses, and the one loop (on its own thread) that owns the
//! raft core. Everything reaches the loop through a bounded mailbox of [`LoopInput`]s; the loop publishes
//! a copy of its status after every turn so `status()` never waits on it.
//!
//! Start-up verifies the data dir before anything runs ([`verify_data_dir`] runs the same checks for
//! `huatuo master --verify`): redb's integrity check (every page checksum) and the raft storage's own
//! record checksums. A damaged file is refused with [`RaftError::Corrupt`]. While running, the loop
//! measures free space under the data dir and raises the NOSPACE alarm below the configured floor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use raft::StateRole;
use raft::eraftpb::{Message, MessageType};
use redb::Database;
use tokio::sync::{mpsc, oneshot};

use super::alarms::{self, DISK_CHECK_INTERVAL};
use super::core::{BuildOutcome, Completion, Core, CoreConfig, MAX_COMMAND_BYTES, bootstrap_snapshot};
use super::snapfile::{Flusher, Gate, Hold, SnapDir};
use super::storage::{Found, RedbStorage, StoreError, panic_text};
use super::transport::{self, PeerService, Transport};
use super::{Fsm, NodeId, ProposeError, RaftConfig, RaftError, RaftStatus, Role, StorageLimits};

/// Events queued for the loop. Bounded so a flood of proposals or peer traffic applies backpressure
/// (proposers wait, peers get RESOURCE_EXHAUSTED and raft retries) instead of growing memory.
pub const MAILBOX: usize = 4096;
/// Events handled per loop turn before the next Ready: batches many proposals into one Ready (one fsync)
/// while bounding how long ticks and Readies can be delayed.
pub const MAX_EVENTS_PER_TURN: usize = 1024;
/// Longest a `propose` or `read_index` caller waits for an answer (the outcome is then unknown).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `start` waits for the rejoin probe before returning a node that keeps probing in the
/// background (peers may not be up yet on a fresh cluster).
pub const START_PROBE_WINDOW: Duration = Duration::from_secs(2);
/// Pause between probe rounds while some peers have not answered.
pub const PROBE_RETRY: Duration = Duration::from_millis(300);

type ProposeTx = oneshot::Sender<Result<Vec<u8>, ProposeError>>;
type ReadTx = oneshot::Sender<Result<(), ProposeError>>;

/// Inputs of the raft loop.
pub(crate) enum LoopInput {
    Propose {
        cmd: Vec<u8>,
        tx: ProposeTx,
    },
    Read {
        tx: ReadTx,
    },
    Step(Vec<Message>),
    /// A MsgSnapshot whose data names a file the peer service received (held until its Ready).
    StepSnapshot(Message, Hold),
    /// The snapshot builder thread finished (or failed).
    SnapshotBuilt(BuildOutcome),
    Unreachable(NodeId),
    SnapshotStatus(NodeId, bool),
    Shutdown,
}

/// State shared by the handle, the loop, the peer service and the transport tasks.
pub(crate) struct NodeShared {
    pub id: NodeId,
    /// Configured members and their peer addresses (immutable).
    pub peers: BTreeMap<NodeId, String>,
    pub mailbox: mpsc::Sender<LoopInput>,
    status: RwLock<RaftStatus>,
    /// Peers we ever received a raft message from (superset of the durable set).
    seen: Mutex<BTreeSet<NodeId>>,
    /// Addresses peers report for themselves (override the configured ones for leader hints).
    addrs: Mutex<BTreeMap<NodeId, String>>,
    running: AtomicBool,
    initialized: AtomicBool,
    /// The application version this node reports in probe replies (0 until the application sets it).
    app_version: AtomicU32,
    /// Whether the application is ready to lead (see [`RaftNode::set_ready_to_lead`]); read by the loop at
    /// each tick.
    ready_to_lead: AtomicBool,
    /// Fault injection (tests): snapshot streams still to damage in transit ([`RaftNode::damage_snapshot_sends`]).
    pub(crate) corrupt_snapshot_sends: AtomicU32,
    /// Test hook: a snapshot stream being received stops after this many chunks and stays stalled (its
    /// `.part` on disk) until the node stops, as a follower killed mid-transfer (0 = off).
    pub(crate) stall_snapshot_receive_after: AtomicU32,
    /// This node's snapshot files (the transport streams from and receives into it).
    pub(crate) snaps: Arc<SnapDir>,
    /// The NOSPACE alarm as (free bytes, floor) while raised (written by the loop's disk check).
    nospace: Mutex<Option<(u64, u64)>>,
    /// This node's advertised gRPC and HTTP API addresses, told to members that probe it.
    api_addrs: Mutex<(String, String)>,
    /// The other members' NOSPACE alarms as last heard over the peer port ([`poll_peer_alarms`]): a leader
    /// refuses writes when fewer than a quorum have space, and hands over when it is short itself.
    peer_alarms: Mutex<BTreeMap<NodeId, alarms::PeerAnswer>>,
    /// On a leader, the voters it heard from within the last election timeout (raft-rs's `recent_active`,
    /// kept by check_quorum), as the loop last published it; empty on other roles.
    active: Mutex<Vec<NodeId>>,
    /// The task asking for them while the node runs.
    alarm_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    probe_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The runtime of the peer traffic: this node's sends (messages, snapshots) and, in the master, the
    /// peer port's server. See [`PeerRuntime`].
    net: PeerRuntime,
}

/// Threads of [`PeerRuntime`]: Raft's messages are small and few (heartbeats, appends of batched entries).
const PEER_RUNTIME_THREADS: usize = 1;

/// A runtime of its own for the traffic between members, apart from the API's: at 100,000 agents a new
/// leader's runtime holds thousands of queued heartbeat calls, and Raft's heartbeats and append responses
/// queued behind them arrived past the election timeout: the leader stepped down for lack of a quorum
/// while every member's loop was answering in time (issue 17, `bench fleet` phase 5: 7 terms in 60 s, the
/// first write 37.7 s after the kill). On its own threads, peer traffic waits for the OS scheduler only.
pub(crate) struct PeerRuntime(Option<tokio::runtime::Runtime>);

impl PeerRuntime {
    fn new(id: NodeId) -> Result<PeerRuntime, RaftError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(PEER_RUNTIME_THREADS)
            .thread_name(format!("raft-peer-{id}"))
            .enable_all()
            .build()
            .map(|rt| PeerRuntime(Some(rt)))
            .map_err(|e| RaftError::Raft(format!("peer runtime: {e}")))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the peer runtime lives as long as the node"),
        }
    }
}

impl Drop for PeerRuntime {
    fn drop(&mut self) {
        // The last handle may go on one of the runtime's own threads or inside another runtime, where a
        // blocking shutdown is not allowed: stop it without waiting (its tasks are the node's, all done).
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NodeShared {
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn note_peer_addr(&self, id: NodeId, addr: &str) {
        let mut a = lock(&self.addrs);
        if a.get(&id).map(String::as_str) != Some(addr) {
            a.insert(id, addr.to_string());
        }
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        lock(&self.addrs).get(&id).cloned()
    }

    pub fn probe_reply(&self, from: NodeId) -> proto::peer::ProbeReply {
        let voters =
            if self.initialized.load(Ordering::Acquire) { self.status().members } else { Vec::new() };
        let alarm = *lock(&self.nospace);
        let (grpc_addr, http_addr) = lock(&self.api_addrs).clone();
        proto::peer::ProbeReply {
            id: self.id,
            initialized: self.initialized.load(Ordering::Acquire),
            seen_you: lock(&self.seen).contains(&from),
            voters,
            app_version: self.app_version.load(Ordering::Relaxed),
            nospace: alarm.is_some(),
            free_bytes: alarm.map_or(0, |a| a.0),
            min_free_bytes: alarm.map_or(0, |a| a.1),
            grpc_addr,
            http_addr,
        }
    }

    fn status(&self) -> RaftStatus {
        self.status.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn role_and_leader(&self) -> (Role, Option<NodeId>) {
        let s = self.status.read().unwrap_or_else(|p| p.into_inner());
        (s.role, s.leader_id)
    }

    fn set_status(&self, f: impl FnOnce(&mut RaftStatus)) {
        let mut s = self.status.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    fn fail(&self, err: &str) {
        self.stop_with(err, false);
    }

    /// Stopped with `err`; a corrupt replica says so in the same status update, so nobody sees the node
    /// stopped with a corrupt-replica error but `corrupt` still false.
    fn stop_with(&self, err: &str, corrupt: bool) {
        self.running.store(false, Ordering::Release);
        self.set_status(|s| {
            s.role = Role::Stopped;
            s.leader_id = None;
            s.leader_addr = None;
            s.last_error = Some(err.to_string());
            s.corrupt |= corrupt;
        });
    }

    fn fail_with(&self, err: &RaftError) {
        self.stop_with(&err.to_string(), matches!(err, RaftError::Corrupt(_)));
    }

    /// On the leader, whether writes may be proposed as far as disk space goes: not while its own NOSPACE
    /// alarm is up (its loop hands leadership to a member with space meanwhile, when there is one), nor
    /// while fewer than a quorum of voters are above their floor ([`alarms::quorum_short`]).
    fn space_for_writes(&self) -> Result<(), ProposeError> {
        // Every proposal passes here: the common case (no alarm anywhere) takes two locks and copies nothing.
        if self.role_and_leader().0 != Role::Leader {
            return Ok(());
        }
        let own = *lock(&self.nospace);
        let peers = lock(&self.peer_alarms);
        if own.is_none() && peers.values().all(|p| p.alarm.is_none()) {
            return Ok(());
        }
        let voters = self.status().members;
        let now = Instant::now();
        let short = alarms::short_members(self.id, own, &voters, &peers, now);
        // A member neither Raft nor the alarm poll heard from lately cannot store entries either: with one
        // member down and another short, no quorum can, and writes would only time out.
        let active = lock(&self.active).clone();
        let silent = alarms::silent_members(self.id, &voters, &short, &active, &peers, now);
        drop(peers);
        // Fewer than a quorum with space names every member short (this one too) when others are, and the
        // silent ones; otherwise a leader short itself says so (it hands leadership over meanwhile, when
        // another member has space).
        if alarms::quorum_short(voters.len(), short.len() + silent.len())
            && short.iter().any(|m| m.0 != self.id)
        {
            let members = short
                .iter()
                .map(|(id, free, floor)| format!("member {id} has {free} bytes free (floor {floor})"))
                .chain(silent.iter().map(|id| format!("member {id} is not answering")))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ProposeError::QuorumNoSpace { members });
        }
        if let Some((free_bytes, floor_bytes)) = own {
            return Err(ProposeError::NoSpace { free_bytes, floor_bytes });
        }
        Ok(())
    }

    /// This member's NOSPACE alarm as (free bytes, floor) while raised.
    pub(super) fn nospace_alarm(&self) -> Option<(u64, u64)> {
        *lock(&self.nospace)
    }

    fn set_nospace(&self, alarm: Option<(u64, u64)>) {
        let mut cur = lock(&self.nospace);
        if cur.is_some() != alarm.is_some() {
            match alarm {
                Some((free, floor)) => tracing::warn!(
                    node = self.id,
                    free_bytes = free,
                    floor_bytes = floor,
                    "NOSPACE alarm raised: refusing new proposals until disk space is freed"
                ),
                None => tracing::info!(node = self.id, "NOSPACE alarm cleared: accepting proposals again"),
            }
            self.set_status(|s| s.nospace = alarm.is_some());
        }
        *cur = alarm;
    }
}

/// Handle to a running member. Cheap to clone. Call [`RaftNode::shutdown`] to stop it.
#[derive(Clone)]
pub struct RaftNode {
    shared: Arc<NodeShared>,
}

fn validate(cfg: &RaftConfig) -> Result<Vec<NodeId>, RaftError> {
    if cfg.id == 0 {
        return Err(RaftError::Config("id must not be 0".into()));
    }
    if !cfg.peers.contains_key(&cfg.id) {
        return Err(RaftError::Config(format!("peers must include this node ({})", cfg.id)));
    }
    if cfg.peers.contains_key(&0) {
        return Err(RaftError::Config("peer id 0 is reserved".into()));
    }
    if cfg.tick.is_zero() || cfg.heartbeat_ticks == 0 || cfg.election_ticks <= cfg.heartbeat_ticks {
        return Err(RaftError::Config("need tick > 0 and 0 < heartbeat_ticks < election_ticks".into()));
    }
    if cfg.max_election_ticks != 0 && cfg.max_election_ticks <= super::min_election_ticks(cfg.election_ticks)
    {
        return Err(RaftError::Config(
            "need max_election_ticks > election_ticks + 1 (or 0: the default)".into(),
        ));
    }
    Ok(cfg.peers.keys().copied().collect())
}

/// The raft database file inside a data dir.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("raft.redb")
}

/// Opens (or creates) `path` with redb's integrity check: every page checksum of the committed trees is
/// verified, so a file altered outside redb is refused here instead of panicking later in a read.
fn open_verified(path: &Path, cache_bytes: usize) -> Result<Database, RaftError> {
    open_checked(path, cache_bytes, |b| b.create(path))
}

/// Opens a member's database as every member does (redb's integrity check on, the cache sized), `open`
/// making it from the builder (a file, or in tests a simulated disk); `path` names it in errors. A file
/// whose newest durable commit fails its checksums is refused here, also after an unclean end: every
/// durable commit is two-phase ([`super::storage::begin_durable`]), so redb does not fall back to the
/// commit before it.
pub(crate) fn open_checked(
    path: &Path,
    cache_bytes: usize,
    open: impl FnOnce(&mut redb::Builder) -> Result<Database, redb::DatabaseError>,
) -> Result<Database, RaftError> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut b = Database::builder();
        b.set_check_integrity_on_open(true);
        b.set_cache_size(cache_bytes.max(super::MIN_CACHE_BYTES));
        open(&mut b)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(m)))) => {
            Err(RaftError::Corrupt(format!("{}: redb integrity check failed: {m}", path.display())))
        }
        // A file shorter than its own header says (truncated, e.g. by a copy cut short) ends reads early: redb
        // reports it as an I/O error of kind UnexpectedEof, which is damage, not a transient fault.
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Err(RaftError::Corrupt(format!(
                "{}: file shorter than its contents (truncated?): {e}",
                path.display()
            )))
        }
        Ok(Err(e @ redb::DatabaseError::DatabaseAlreadyOpen)) => Err(RaftError::Storage(format!(
            "open {}: {e} (a running node holds it: stop the node first)",
            path.display()
        ))),
        Ok(Err(e)) => Err(RaftError::Storage(format!("open {}: {e}", path.display()))),
        Err(p) => Err(RaftError::Corrupt(format!(
            "{}: storage panic while opening: {}",
            path.display(),
            panic_text(&*p)
        ))),
    }
}

fn open_db(dir: &Path, cache_bytes: usize) -> Result<Arc<Database>, RaftError> {
    std::fs::create_dir_all(dir).map_err(|e| RaftError::Storage(format!("create {}: {e}", dir.display())))?;
    Ok(Arc::new(open_verified(&db_path(dir), cache_bytes)?))
}

/// A storage error as the node reports it: damaged bytes are a corrupt replica.
fn storage_err(e: StoreError) -> RaftError {
    match e {
        StoreError::Damaged(m) => RaftError::Corrupt(m),
        StoreError::Incompatible(m) => RaftError::Incompatible(m),
        e => RaftError::Storage(e.to_string()),
    }
}

/// An error of the Fsm while bootstrapping.
fn fsm_err(e: super::FsmError) -> RaftError {
    match e {
        super::FsmError::Corrupt(m) => RaftError::Corrupt(m),
        e => RaftError::Storage(e.to_string()),
    }
}

/// What `huatuo master --verify` checked and found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub path: PathBuf,
    pub file_bytes: u64,
    /// `None`: the file holds no raft state (a new or wiped data dir).
    pub node_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub log_entries: u64,
    pub log_bytes: u64,
    pub snapshot_bytes: u64,
    /// The latest snapshot's file under `snapshots/` (verified whole: every chunk, size and CRC).
    pub snapshot_file: Option<String>,
    /// The snapshot was kept in the database by an older binary and was moved into a file by this check.
    pub snapshot_migrated: bool,
    /// The store predates checksums and was sealed in place by this check.
    pub upgraded: bool,
    /// Records of the state machine's tables whose checksums this check verified, and their bytes.
    pub fsm_records: u64,
    pub fsm_bytes: u64,
    /// The state machine's tables predate checksums and were sealed in place by this check.
    pub fsm_upgraded: bool,
    /// State machine records sealed before keys were covered, resealed with their key by this check.
    pub fsm_resealed: u64,
    /// Objects counted into the replicated counts by this check (a store written before them), else 0.
    pub fsm_recounted: u64,
    /// Where the file's bytes go: pages allocated, and each table's share.
    pub usage: StorageUsage,
}

/// What a database file's bytes hold, from redb's own accounting (`huatuo master --verify` prints it, so an
/// operator can tell live tables from free pages the file keeps).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StorageUsage {
    /// Pages in use (every table, redb's own trees), in bytes; the rest of the file is free pages redb
    /// reuses but does not return while later pages are in use.
    pub allocated_bytes: u64,
    /// Bytes of keys and values stored, of every table.
    pub stored_bytes: u64,
    /// The tables, largest first (leaf and branch pages).
    pub tables: Vec<TableUsage>,
}

/// One table's share of a database file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableUsage {
    pub name: String,
    pub entries: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
    /// Leaf and branch pages, in bytes.
    pub page_bytes: u64,
    /// Bytes of those pages left unused (fragmentation).
    pub fragmented_bytes: u64,
}

/// [`storage_usage`] of a stopped member's data dir, with the file's size: opens the database without the
/// start-up checks (they read every record; this reads the trees' pages once). The node must not be running.
pub fn storage_usage_of(dir: &Path) -> Result<(u64, StorageUsage), RaftError> {
    let path = db_path(dir);
    let file_bytes =
        std::fs::metadata(&path).map_err(|e| RaftError::Storage(format!("{}: {e}", path.display())))?.len();
    let db = Database::builder()
        .set_cache_size(super::MIN_CACHE_BYTES)
        .open(&path)
        .map_err(|e| RaftError::Storage(format!("open {}: {e}", path.display())))?;
    Ok((file_bytes, storage_usage(&db)?))
}

/// Measures `db`'s use of its file: walks every table's tree (reads every page header once), so it costs a
/// read of the file; `--verify` only.
pub fn storage_usage(db: &Database) -> Result<StorageUsage, RaftError> {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let err = |e: &dyn std::fmt::Display| RaftError::Storage(format!("storage usage: {e}"));
    let w = db.begin_write().map_err(|e| err(&e))?;
    let stats = w.stats().map_err(|e| err(&e))?;
    let page = stats.page_size() as u64;
    w.abort().map_err(|e| err(&e))?;
    let r = db.begin_read().map_err(|e| err(&e))?;
    let mut tables = Vec::new();
    for h in r.list_tables().map_err(|e| err(&e))? {
        let name = redb::TableHandle::name(&h).to_string();
        let t = r.open_untyped_table(h).map_err(|e| err(&e))?;
        let s = t.stats().map_err(|e| err(&e))?;
        tables.push(TableUsage {
            name,
            entries: t.len().map_err(|e| err(&e))?,
            stored_bytes: s.stored_bytes(),
            page_bytes: (s.leaf_pages() + s.branch_pages()) * page,
            fragmented_bytes: s.fragmented_bytes(),
        });
    }
    tables.sort_by(|a, b| b.page_bytes.cmp(&a.page_bytes).then_with(|| a.name.cmp(&b.name)));
    Ok(StorageUsage {
        allocated_bytes: stats.allocated_pages() * page,
        stored_bytes: stats.stored_bytes(),
        tables,
    })
}

/// Runs the start-up checks on a data dir without starting a node: redb's integrity check, then every
/// raft record's checksum (metadata, snapshot, the whole log). Refuses a missing file; a damaged one is
/// [`RaftError::Corrupt`]. The node must not be running (redb locks the file).
pub fn verify_data_dir(dir: &Path) -> Result<VerifyReport, RaftError> {
    let db = open_for_verify(dir)?;
    verify_opened(dir, &db)
}

/// A stopped member's database, opened with redb's integrity check; a missing file is refused, not created.
fn open_for_verify(dir: &Path) -> Result<Arc<Database>, RaftError> {
    let path = db_path(dir);
    std::fs::metadata(&path).map_err(|e| RaftError::Storage(format!("{}: {e}", path.display())))?;
    Ok(Arc::new(open_verified(&path, super::MIN_CACHE_BYTES)?))
}

/// The rest of [`verify_data_dir`] on the database `open_for_verify` opened: every Raft and state machine
/// record, and where the file's bytes go. Holds no handle on `db` when it returns.
fn verify_opened(dir: &Path, db: &Arc<Database>) -> Result<VerifyReport, RaftError> {
    let path = db_path(dir);
    let file_bytes =
        std::fs::metadata(&path).map_err(|e| RaftError::Storage(format!("{}: {e}", path.display())))?.len();
    let snaps = SnapDir::open(dir).map_err(|e| storage_err(e.into()))?;
    let (st, found) = RedbStorage::open(db.clone(), snaps).map_err(storage_err)?;
    let scan = st.scan_report().clone();
    let fsm = crate::store::open_store(db).map_err(|e| match e {
        crate::store::StoreError::Corrupt { .. } => RaftError::Corrupt(e.to_string()),
        e => RaftError::Storage(e.to_string()),
    })?;
    let usage = storage_usage(db)?;
    Ok(VerifyReport {
        path,
        file_bytes,
        node_id: match found {
            Found::Empty => None,
            Found::Initialized { node_id } => Some(node_id),
        },
        term: st.hard_state().term,
        commit_index: st.hard_state().commit,
        applied_index: st.applied(),
        snapshot_index: st.snapshot_index(),
        log_entries: scan.log_entries,
        log_bytes: scan.log_bytes,
        snapshot_bytes: scan.snapshot_bytes,
        snapshot_file: st.snapshot_file().map(|d| d.name.clone()),
        snapshot_migrated: scan.snapshot_migrated,
        upgraded: scan.upgraded,
        fsm_records: fsm.records,
        fsm_bytes: fsm.bytes,
        fsm_upgraded: fsm.upgraded,
        fsm_resealed: fsm.resealed,
        fsm_recounted: fsm.recounted,
        usage,
    })
}

/// Most compaction passes `huatuo master --compact` runs (redb compacts in passes, each moving pages down
/// and shrinking the file, until a pass finds nothing to move); a file that still shrinks after this many
/// is left as it is, sound, and the report says so.
pub const MAX_COMPACT_PASSES: u32 = 64;

/// What `huatuo master --compact` found and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CompactReport {
    /// The start-up checks before compacting (a damaged store is never compacted).
    pub before: VerifyReport,
    /// The same checks after: the compacted file is verified before the node may start on it.
    pub after: VerifyReport,
    /// Passes that moved pages.
    pub passes: u32,
    /// Whether the run stopped at its limit of passes ([`MAX_COMPACT_PASSES`]) after a pass that moved pages.
    pub more_possible: bool,
    /// The compaction passes' time (the checks before and after not included).
    pub took_ms: u64,
}

/// Gives back the free pages `raft.redb` keeps: redb reuses freed pages but does not shrink its file while
/// later pages are in use, so a member whose file grew (a snapshot build's read transaction keeps pages
/// freed meanwhile from reuse, and redb doubles a full file) holds up to twice its data (see ARCHITECTURE.md
/// "Fleet scale"). Runs the start-up checks first and refuses a damaged store ([`RaftError::Corrupt`]: rebuild
/// it with `--join` instead), compacts with redb's own `compact` (crash-safe: each pass is a commit), then
/// runs the checks again. The node must be stopped (redb locks the file). Raft state, log and state machine
/// are unchanged: only where the pages sit.
pub fn compact_data_dir(dir: &Path) -> Result<CompactReport, RaftError> {
    compact_data_dir_at_most(dir, MAX_COMPACT_PASSES)
}

/// [`compact_data_dir`] with its limit of passes given (tests reach the limit with a small one).
pub fn compact_data_dir_at_most(dir: &Path, max_passes: u32) -> Result<CompactReport, RaftError> {
    // One open (with redb's integrity check) serves the checks before and the compaction.
    let db = open_for_verify(dir)?;
    let before = verify_opened(dir, &db)?;
    let path = db_path(dir);
    let mut db = Arc::try_unwrap(db)
        .map_err(|_| RaftError::Storage(format!("{}: still in use after the checks", path.display())))?;
    let started = std::time::Instant::now();
    let (mut passes, mut more_possible) = (0u32, false);
    loop {
        let moved =
            db.compact().map_err(|e| RaftError::Storage(format!("compact {}: {e}", path.display())))?;
        if !moved {
            break;
        }
        passes += 1;
        if passes >= max_passes {
            more_possible = true;
            break;
        }
    }
    drop(db);
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let after = verify_data_dir(dir)?;
    Ok(CompactReport { before, after, passes, more_possible, took_ms })
}

enum ProbeOutcome {
    Bootstrap,
    Refuse(RaftError),
    Stopped,
}

/// Asks every other member whether it ever heard from us; see README "Rejoin detection".
async fn probe_peers(shared: &Arc<NodeShared>, voters: &[NodeId]) -> ProbeOutcome {
    let others: Vec<(NodeId, String)> =
        shared.peers.iter().filter(|(i, _)| **i != shared.id).map(|(i, a)| (*i, a.clone())).collect();
    let mut answered = BTreeSet::new();
    loop {
        let pending: Vec<_> = others.iter().filter(|(i, _)| !answered.contains(i)).cloned().collect();
        if pending.is_empty() {
            return ProbeOutcome::Bootstrap;
        }
        let calls = pending
            .iter()
            .map(|(i, a)| async move { (*i, transport::probe(a, *i, shared.id, voters).await) });
        for (peer, r) in futures::future::join_all(calls).await {
            match r {
                Ok(r) if r.id != peer => {
                    return ProbeOutcome::Refuse(RaftError::Config(format!(
                        "peer address of {peer} answers as node {}",
                        r.id
                    )));
                }
                Ok(r) if r.seen_you => {
                    return ProbeOutcome::Refuse(RaftError::RejoinRefused { id: shared.id, peer });
                }
                Ok(r) if r.initialized && !r.voters.is_empty() && r.voters != voters => {
                    return ProbeOutcome::Refuse(RaftError::Config(format!(
                        "peer {peer} has members {:?}, we are configured with {voters:?}",
                        r.voters
                    )));
                }
                Ok(_) => {
                    answered.insert(peer);
                }
                Err(e) => {
                    tracing::debug!(node = shared.id, peer, error = %e, "probe: peer not answering yet")
                }
            }
        }
        if answered.len() == others.len() {
            return ProbeOutcome::Bootstrap;
        }
        if shared.status().role == Role::Stopped {
            return ProbeOutcome::Stopped;
        }
        tokio::time::sleep(PROBE_RETRY).await;
    }
}

struct Launch<F: Fsm> {
    shared: Arc<NodeShared>,
    storage: RedbStorage,
    fsm: F,
    rx: mpsc::Receiver<LoopInput>,
    core_cfg: CoreConfig,
    tick: Duration,
    rt: tokio::runtime::Handle,
    limits: StorageLimits,
    data_dir: PathBuf,
}

impl<F: Fsm> Launch<F> {
    fn bootstrap(&mut self, voters: &[NodeId]) -> Result<(), RaftError> {
        let db = self.storage.db().clone();
        let (file, _hold) = bootstrap_snapshot::<F>(&db, self.storage.snap_dir()).map_err(storage_err)?;
        let txn = super::storage::begin_durable(&db).map_err(|e| storage_err(e.into()))?;
        self.storage.bootstrap(&txn, self.shared.id, voters, &file).map_err(storage_err)?;
        txn.commit().map_err(|e| storage_err(e.into()))?;
        self.storage.commit_staged();
        tracing::info!(node = self.shared.id, ?voters, "raft storage bootstrapped");
        Ok(())
    }

    /// Builds the core and the transport and starts the loop thread.
    fn run(self) -> Result<(), RaftError> {
        let Launch { shared, storage, fsm, rx, core_cfg, tick, rt, limits, data_dir } = self;
        let id = shared.id;
        let damage = storage.damage_flag();
        let mailbox = shared.mailbox.clone();
        let core = Core::new(core_cfg, storage, fsm, &super::logger::logger(id))?
            .with_snapshot_log_bytes(limits.snapshot_log_bytes)
            .with_restore_flush(
                Flusher::open(&db_path(&data_dir))
                    .map_err(|e| RaftError::Storage(format!("open the database file to flush it: {e}")))?,
            )
            .with_build_thread(Arc::new(move |r| {
                // From the builder thread (not a runtime thread). A stopped loop has closed the mailbox:
                // the outcome is dropped and its file with it.
                if mailbox.blocking_send(LoopInput::SnapshotBuilt(r)).is_err() {
                    tracing::debug!(node = id, "snapshot built after the loop stopped: discarded");
                }
            }));
        let transport = Transport::start(&rt, &shared)?;
        let disk = DiskWatch { dir: data_dir, floor: limits.min_free_bytes, next: Instant::now() };
        shared.initialized.store(true, Ordering::Release);
        shared.running.store(true, Ordering::Release);
        *lock(&shared.alarm_task) = Some(rt.spawn(poll_peer_alarms(shared.clone())));
        let s2 = shared.clone();
        let th = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                let s3 = s2.clone();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    run_loop(core, rx, s3, transport, tick, disk)
                }));
                // Damage found by a storage read ends the node as a corrupt replica, even when raft-rs
                // turned the failed read into a panic of its own.
                let damaged = || damage.get().map(|m| RaftError::Corrupt(m.clone()));
                match r {
                    Ok(Ok(())) => s2.fail("shut down"),
                    Ok(Err(e)) => s2.fail_with(&damaged().unwrap_or(e)),
                    Err(p) => {
                        let msg = panic_text(&*p);
                        tracing::error!(node = id, panic = %msg, "raft loop panicked");
                        let e = damaged()
                            .unwrap_or_else(|| RaftError::Raft(format!("raft loop panicked: {msg}")));
                        s2.fail_with(&e);
                    }
                }
            })
            .map_err(|e| RaftError::Raft(format!("spawn raft thread: {e}")))?;
        *lock(&shared.thread) = Some(th);
        Ok(())
    }
}

impl RaftNode {
    /// Opens (or bootstraps) storage in data_dir/raft.redb, starts the loop on a dedicated thread.
    ///
    /// With an empty data dir and `join == false`, first asks every peer whether it ever heard from this
    /// id (refusing with [`RaftError::RejoinRefused`] if one did) and bootstraps once all peers said no;
    /// if some peers do not answer within [`START_PROBE_WINDOW`], returns a node in role `Probing` that
    /// keeps asking in the background (it fails later, visible in `status()`, if a peer then says yes).
    ///
    /// Uses the default [`StorageLimits`]; see [`RaftNode::start_with`].
    pub async fn start<F: Fsm>(cfg: RaftConfig, fsm: F) -> Result<(RaftNode, Arc<Database>), RaftError> {
        Self::start_with(cfg, StorageLimits::default(), fsm).await
    }

    /// [`RaftNode::start`] with explicit disk-use limits. The data dir is verified first (redb's
    /// integrity check and every raft record's checksum): a damaged one is refused with
    /// [`RaftError::Corrupt`].
    pub async fn start_with<F: Fsm>(
        cfg: RaftConfig,
        limits: StorageLimits,
        mut fsm: F,
    ) -> Result<(RaftNode, Arc<Database>), RaftError> {
        let voters = validate(&cfg)?;
        // redb's integrity check and the check of every Raft record read the whole file (1.7 GiB at 1.5 M
        // objects): niced, as the state machine's own pass in `fsm.open` is, so a member restarting beside
        // others (the benchmarks, `huatuo dev`, a host shared with other work) leaves the cores to the ones
        // serving the fleet.
        let (db, snaps, mut storage, found) = crate::follow::run_niced("open-storage", || {
            let db = open_db(&cfg.data_dir, limits.cache_bytes)?;
            let snaps = SnapDir::open(&cfg.data_dir).map_err(|e| storage_err(e.into()))?;
            let (storage, found) = RedbStorage::open(db.clone(), snaps.clone()).map_err(storage_err)?;
            Ok::<_, RaftError>((db, snaps, storage, found))
        })?;
        fsm.open(&db, &storage.damage_flag()).map_err(fsm_err)?;
        let mut needs_probe = false;
        match found {
            Found::Initialized { node_id } if node_id != cfg.id => {
                return Err(RaftError::Config(format!(
                    "data dir {} belongs to node {node_id}, not {}",
                    cfg.data_dir.display(),
                    cfg.id
                )));
            }
            Found::Initialized { .. } => {
                let have = {
                    let mut v = storage.conf_state().voters.clone();
                    v.sort_unstable();
                    v
                };
                if storage.has_conf() && have != voters {
                    return Err(RaftError::Config(format!(
                        "stored members {have:?} differ from configured peers {voters:?} (membership is fixed)"
                    )));
                }
            }
            Found::Empty if cfg.join => {
                let txn = super::storage::begin_durable(&db).map_err(|e| storage_err(e.into()))?;
                storage.init_joining(&txn, cfg.id).map_err(storage_err)?;
                txn.commit().map_err(|e| storage_err(e.into()))?;
                storage.commit_staged();
            }
            Found::Empty => needs_probe = true,
        }
        let (tx, rx) = mpsc::channel(MAILBOX);
        let status = RaftStatus {
            id: cfg.id,
            leader_id: None,
            leader_addr: None,
            term: storage.hard_state().term,
            role: Role::Probing,
            commit_index: storage.hard_state().commit,
            applied_index: storage.applied(),
            snapshot_index: storage.snapshot_index(),
            members: storage.conf_state().voters.clone(),
            peers: cfg.peers.clone(),
            last_error: None,
            nospace: false,
            corrupt: false,
        };
        let shared = Arc::new(NodeShared {
            id: cfg.id,
            peers: cfg.peers.clone(),
            mailbox: tx,
            status: RwLock::new(status),
            seen: Mutex::new(storage.seen().clone()),
            addrs: Mutex::new(cfg.peers.clone()),
            running: AtomicBool::new(false),
            initialized: AtomicBool::new(false),
            app_version: AtomicU32::new(0),
            ready_to_lead: AtomicBool::new(true),
            corrupt_snapshot_sends: AtomicU32::new(0),
            stall_snapshot_receive_after: AtomicU32::new(0),
            snaps,
            nospace: Mutex::new(None),
            api_addrs: Mutex::default(),
            peer_alarms: Mutex::new(BTreeMap::new()),
            active: Mutex::new(Vec::new()),
            alarm_task: Mutex::new(None),
            thread: Mutex::new(None),
            probe_task: Mutex::new(None),
            net: PeerRuntime::new(cfg.id)?,
        });
        let node = RaftNode { shared: shared.clone() };
        // The members this node knows at start: the configured ones and the stored configuration's voters.
        let rank = super::election_rank(
            cfg.id,
            cfg.peers.keys().copied().chain(storage.conf_state().voters.iter().copied()),
        );
        let (min_election_ticks, max_election_ticks) = match cfg.max_election_ticks {
            0 => super::ranked_election_ticks(cfg.election_ticks, rank),
            n => (super::min_election_ticks(cfg.election_ticks), n),
        };
        let core_cfg = CoreConfig {
            id: cfg.id,
            election_ticks: cfg.election_ticks,
            heartbeat_ticks: cfg.heartbeat_ticks,
            snapshot_every: cfg.snapshot_every,
            min_election_ticks,
            max_election_ticks,
            campaign_jitter: true,
            incarnation: rand::random(),
        };
        let mut launch = Launch {
            shared: shared.clone(),
            storage,
            fsm,
            rx,
            core_cfg,
            tick: cfg.tick,
            rt: shared.net.handle(),
            limits,
            data_dir: cfg.data_dir.clone(),
        };
        if !needs_probe {
            launch.run()?;
            return Ok((node, db));
        }
        let (done_tx, done_rx) = oneshot::channel();
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let outcome = probe_peers(&s, &voters).await;
            // `launch` (and with it the database) is gone before the caller hears the outcome, so a
            // refused start can be retried on the same data dir at once.
            let r = match outcome {
                ProbeOutcome::Bootstrap => match launch.bootstrap(&voters) {
                    Ok(()) => launch.run(),
                    Err(e) => Err(e),
                },
                ProbeOutcome::Refuse(e) => {
                    drop(launch);
                    Err(e)
                }
                ProbeOutcome::Stopped => {
                    drop(launch);
                    Err(RaftError::Raft("stopped while probing".into()))
                }
            };
            if let Err(e) = &r {
                tracing::error!(node = s.id, error = %e, "raft node not started");
                s.fail_with(e);
            }
            let _ = done_tx.send(r);
        });
        *lock(&shared.probe_task) = Some(task);
        match tokio::time::timeout(START_PROBE_WINDOW, done_rx).await {
            Ok(Ok(Err(e))) => Err(e),
            _ => Ok((node, db)),
        }
    }

    /// Propose a command; resolves with the Fsm::apply response once committed AND applied on this node.
    pub async fn propose(&self, cmd: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        if cmd.len() > MAX_COMMAND_BYTES {
            return Err(ProposeError::TooLarge);
        }
        self.gate()?;
        // A follower answers NotLeader (from the loop) so clients find the leader; the leader refuses.
        self.shared.space_for_writes()?;
        let (tx, rx) = oneshot::channel();
        let fut = async {
            self.shared
                .mailbox
                .send(LoopInput::Propose { cmd, tx })
                .await
                .map_err(|_| ProposeError::Stopped)?;
            rx.await.map_err(|_| ProposeError::Stopped)?
        };
        tokio::time::timeout(PROPOSE_TIMEOUT, fut).await.unwrap_or(Err(ProposeError::Timeout))
    }

    /// Linearizable read barrier (ReadIndex): resolves once this node has applied up to the leader's commit
    /// index at call time. Works on followers too (they ask the leader).
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        self.gate()?;
        let (tx, rx) = oneshot::channel();
        let fut = async {
            self.shared.mailbox.send(LoopInput::Read { tx }).await.map_err(|_| ProposeError::Stopped)?;
            rx.await.map_err(|_| ProposeError::Stopped)?
        };
        tokio::time::timeout(PROPOSE_TIMEOUT, fut).await.unwrap_or(Err(ProposeError::Timeout))
    }

    fn gate(&self) -> Result<(), ProposeError> {
        if self.shared.is_running() {
            return Ok(());
        }
        match self.shared.status().role {
            Role::Probing => Err(ProposeError::NotLeader { leader: None, leader_addr: None }),
            _ => Err(ProposeError::Stopped),
        }
    }

    pub fn status(&self) -> RaftStatus {
        self.shared.status()
    }

    /// This node's role and the leader it knows, without copying the rest of the status (its peer map and
    /// addresses): what every API call's leader check needs, at heartbeat rate.
    pub fn role_and_leader(&self) -> (Role, Option<NodeId>) {
        self.shared.role_and_leader()
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Set the application version this node reports to peers that probe it (the master: the newest command
    /// version its binary knows).
    pub fn set_app_version(&self, version: u32) {
        self.shared.app_version.store(version, Ordering::Relaxed);
    }

    /// Set the API addresses this node tells members that probe it (the master: its advertised gRPC and
    /// HTTP addresses), so they can show and redirect to it before its announcement is in the log.
    pub fn set_api_addrs(&self, grpc: &str, http: &str) {
        *lock(&self.shared.api_addrs) = (grpc.to_string(), http.to_string());
    }

    /// Tell the node whether the application could lead at once (the master: its followed indexes are
    /// built). A follower that could not defers its campaign by up to `core::CAMPAIGN_DEFER_TICKS` once
    /// its election timeout passed, so a member that could lead wins first; it still grants votes as
    /// before, and campaigns after the deferral if nobody else did. Ready until told otherwise.
    pub fn set_ready_to_lead(&self, ready: bool) {
        self.shared.ready_to_lead.store(ready, Ordering::Relaxed);
    }

    /// Fault injection for tests of the peer transport (a bad link, not a stub of Raft): the next `streams`
    /// snapshots this node sends have one byte of their last chunk flipped after its checksum was computed,
    /// as a damaged network path would. The receiver must refuse each and the snapshot be sent again.
    pub fn damage_snapshot_sends(&self, streams: u32) {
        self.shared.corrupt_snapshot_sends.store(streams, Ordering::Relaxed);
    }

    /// Test hook: the snapshot builds of this node wait at the returned gate (after taking their read
    /// transaction and creating their file) until it is released: the loop must go on meanwhile.
    pub fn hold_snapshot_builds(&self) -> Arc<Gate> {
        self.shared.snaps.hold_builds()
    }

    /// Test hook: the next snapshot stream this node receives stops after `chunks` chunks and stays stalled,
    /// its `.part` on disk, until the node stops (a follower killed mid-transfer).
    pub fn stall_snapshot_receive_after(&self, chunks: u32) {
        self.shared.stall_snapshot_receive_after.store(chunks, Ordering::Relaxed);
    }

    /// The directory holding this node's snapshot files.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.shared.snaps.path().to_path_buf()
    }

    /// This node's NOSPACE alarm as (free bytes, floor) while raised.
    pub fn nospace(&self) -> Option<(u64, u64)> {
        self.shared.nospace_alarm()
    }

    /// The other members' answers as last heard by this node's own polling (every
    /// [`alarms::PEER_ALARM_EVERY`]), those at most [`alarms::PEER_ALARM_TTL`] old: what status pages show
    /// without asking over the network on the caller's time.
    pub fn peer_answers(&self) -> BTreeMap<NodeId, alarms::PeerAnswer> {
        let now = Instant::now();
        lock(&self.shared.peer_alarms)
            .iter()
            .filter(|(_, p)| p.fresh(now))
            .map(|(id, p)| (*id, p.clone()))
            .collect()
    }

    /// Probe every other configured member concurrently (bounded by `timeout` in all; a member that does not
    /// answer in time maps to the error): its application version and NOSPACE alarm.
    pub async fn peer_probes(
        &self,
        timeout: Duration,
    ) -> BTreeMap<NodeId, Result<proto::peer::ProbeReply, transport::TransportError>> {
        probe_all(&self.shared, timeout).await
    }

    /// The runtime the peer port's server should run on (see [`PeerRuntime`]): the sends of this node
    /// already do.
    pub fn peer_runtime(&self) -> tokio::runtime::Handle {
        self.shared.net.handle()
    }

    /// The gRPC service to mount on the master's peer port (7710 by default), with our size limits.
    pub fn peer_service(&self) -> proto::peer::peer_server::PeerServer<PeerService> {
        PeerService { shared: self.shared.clone() }.into_server()
    }

    /// Stops the loop (waiting for it) and the transport. Other handles then get `Stopped`.
    pub async fn shutdown(self) {
        if let Some(t) = lock(&self.shared.probe_task).take() {
            t.abort();
        }
        if let Some(t) = lock(&self.shared.alarm_task).take() {
            t.abort();
        }
        let _ = tokio::time::timeout(PROPOSE_TIMEOUT, self.shared.mailbox.send(LoopInput::Shutdown)).await;
        let th = lock(&self.shared.thread).take();
        if let Some(th) = th {
            let _ = tokio::task::spawn_blocking(move || th.join()).await;
        }
        if self.shared.status().role != Role::Stopped || self.shared.status().last_error.is_none() {
            self.shared.fail("shut down");
        }
    }
}

/// Probe every other configured member of `shared` concurrently (bounded by `timeout` in all).
async fn probe_all(
    shared: &NodeShared,
    timeout: Duration,
) -> BTreeMap<NodeId, Result<proto::peer::ProbeReply, transport::TransportError>> {
    let me = shared.id;
    let voters: Vec<NodeId> = shared.peers.keys().copied().collect();
    let asks = shared.peers.keys().filter(|id| **id != me).map(|id| {
        let addr = shared.addr_of(*id).unwrap_or_default();
        let voters = &voters;
        async move {
            let r = match tokio::time::timeout(timeout, transport::probe(&addr, *id, me, voters)).await {
                Ok(r) => r,
                Err(_) => Err(transport::TransportError::Timeout(timeout)),
            };
            (*id, r)
        }
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// While the node runs, ask the other members for their NOSPACE alarms every [`alarms::PEER_ALARM_EVERY`]
/// (a probe each, at most [`alarms::PEER_ALARM_TIMEOUT`]); a member that does not answer keeps its last
/// answer, which stops counting after [`alarms::PEER_ALARM_TTL`].
async fn poll_peer_alarms(shared: Arc<NodeShared>) {
    let mut every = tokio::time::interval(alarms::PEER_ALARM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shared.running.load(Ordering::Acquire) {
        every.tick().await;
        for (id, answer) in probe_all(&shared, alarms::PEER_ALARM_TIMEOUT).await {
            let Ok(p) = answer else { continue };
            let alarm = p.nospace.then_some((p.free_bytes, p.min_free_bytes));
            let heard = alarms::PeerAnswer {
                heard: Some(Instant::now()),
                alarm,
                app_version: p.app_version,
                grpc: p.grpc_addr,
                http: p.http_addr,
            };
            let before = lock(&shared.peer_alarms).insert(id, heard);
            if alarm.is_some() && before.is_none_or(|b| b.alarm.is_none()) {
                tracing::warn!(node = shared.id, member = id, "member {id} reports its NOSPACE alarm");
            }
        }
    }
}

/// The NOSPACE alarm's probe: free space under the data dir, measured every `DISK_CHECK_INTERVAL`.
struct DiskWatch {
    dir: PathBuf,
    /// `StorageLimits::min_free_bytes`; 0 = off.
    floor: u64,
    next: Instant,
}

impl DiskWatch {
    /// The alarm state to publish, when it is time to measure again.
    fn check(&mut self, now: Instant) -> Option<Option<(u64, u64)>> {
        if self.floor == 0 || now < self.next {
            return None;
        }
        self.next = now + DISK_CHECK_INTERVAL;
        match alarms::free_bytes(&self.dir) {
            Ok(free) => Some(alarms::nospace(free, self.floor)),
            Err(e) => {
                // Keep the current state: an unreadable statvfs says nothing about space.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure free space");
                None
            }
        }
    }
}

/// The loop's own state besides the core.
struct Driver<F: Fsm> {
    core: Core<F>,
    shared: Arc<NodeShared>,
    transport: Transport,
    proposals: BTreeMap<u64, ProposeTx>,
    reads: BTreeMap<u64, ReadTx>,
    next_token: u64,
    stop: bool,
    disk: DiskWatch,
    /// When this leader last started handing over for lack of disk space.
    handover: Option<Instant>,
}

fn run_loop<F: Fsm>(
    core: Core<F>,
    mut rx: mpsc::Receiver<LoopInput>,
    shared: Arc<NodeShared>,
    transport: Transport,
    tick: Duration,
    disk: DiskWatch,
) -> Result<(), RaftError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| RaftError::Raft(format!("raft loop runtime: {e}")))?;
    let mut d = Driver {
        core,
        shared,
        transport,
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        next_token: 0,
        stop: false,
        disk,
        handover: None,
    };
    let res = rt.block_on(async {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        d.publish();
        let mut last_end = Instant::now();
        loop {
            let ticked = tokio::select! {
                // A due tick first: heartbeats and elections keep time however busy the mailbox is (the
                // tick is ready at most once per `tick`, so it cannot starve the events).
                biased;
                due = ticker.tick() => Some(due),
                ev = rx.recv() => {
                    match ev {
                        Some(ev) => d.handle(ev),
                        None => d.stop = true,
                    }
                    None
                }
                // Committed entries left over by the last Ready's limit (`core::APPLY_BUDGET`):
                // the next turn at once, after any due tick and waiting events.
                () = std::future::ready(()), if d.core.has_ready() => None,
            };
            let turn = Instant::now();
            let cpu = super::fsync_stats::thread_cpu();
            // How long the loop waited past a due tick, not counting its own previous turn: the thread
            // was runnable and not running (the machine's other work), or the timer fired late.
            let late = ticked
                .map_or(Duration::ZERO, |due| turn.saturating_duration_since(due.into_std().max(last_end)));
            for _ in 0..MAX_EVENTS_PER_TURN {
                if d.stop {
                    break;
                }
                match rx.try_recv() {
                    Ok(ev) => d.handle(ev),
                    Err(_) => break,
                }
            }
            if d.stop {
                return Ok(());
            }
            // The tick after this turn's events: a member that was held up steps the messages that
            // waited (its peers' answers, a leader's heartbeat) before its timers count the wait.
            if ticked.is_some() {
                // A member short of disk defers its campaigns as one whose indexes are not built does.
                let short = lock(&d.shared.nospace).is_some();
                d.core.set_ready_to_lead(d.shared.ready_to_lead.load(Ordering::Relaxed) && !short);
                d.core.tick();
                if let Some(alarm) = d.disk.check(Instant::now()) {
                    d.shared.set_nospace(alarm);
                    d.core.set_short_of_disk(alarm.is_some());
                }
                d.hand_over_if_short();
                d.proposals.retain(|_, tx| !tx.is_closed());
                let closed: Vec<u64> =
                    d.reads.iter().filter(|(_, tx)| tx.is_closed()).map(|(t, _)| *t).collect();
                for t in closed {
                    d.reads.remove(&t);
                    d.core.forget_read(t);
                }
            }
            let events = turn.elapsed();
            d.ready()?;
            d.publish();
            last_end = Instant::now();
            let t = super::fsync_stats::Turn {
                wall: last_end - turn,
                cpu: super::fsync_stats::thread_cpu().saturating_sub(cpu),
                events,
                late,
                work: d.core.take_work(),
            };
            super::fsync_stats::TURNS.observe(&t, d.shared.id, d.core.role() == StateRole::Leader);
        }
    });
    d.transport.shutdown_now();
    // Close the mailbox first: a builder still running then finds it closed instead of waiting for room.
    drop(rx);
    d.core.stop_builder();
    res
}

impl<F: Fsm> Driver<F> {
    /// A leader whose NOSPACE alarm is up hands leadership to a member with space
    /// ([`alarms::handover_target`]), at most every [`alarms::HANDOVER_EVERY`]: writes go on there, while
    /// this member keeps only what it is sent as a follower. Without such a member it stays and refuses.
    fn hand_over_if_short(&mut self) {
        if self.core.role() != StateRole::Leader || lock(&self.shared.nospace).is_none() {
            return;
        }
        if self.core.lead_transferee().is_some()
            || self.handover.is_some_and(|t| t.elapsed() < alarms::HANDOVER_EVERY)
        {
            return;
        }
        let voters = self.core.voters();
        let target = alarms::handover_target(
            self.shared.id,
            &voters,
            &lock(&self.shared.peer_alarms),
            Instant::now(),
            |id| self.core.matched(id),
        );
        if let Some(to) = target {
            self.handover = Some(Instant::now());
            tracing::warn!(
                node = self.shared.id,
                to,
                "short of disk space: handing leadership to member {to}"
            );
            self.core.transfer_leader(to);
        }
    }

    fn handle(&mut self, ev: LoopInput) {
        match ev {
            LoopInput::Propose { cmd, tx } => {
                let token = self.next_token;
                self.next_token += 1;
                match self.core.propose(token, cmd) {
                    Ok(()) => {
                        self.proposals.insert(token, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(self.fill_leader(e)));
                    }
                }
            }
            LoopInput::Read { tx } => {
                let token = self.next_token;
                self.next_token += 1;
                match self.core.read_index(token) {
                    Ok(()) => {
                        self.reads.insert(token, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(self.fill_leader(e)));
                    }
                }
            }
            LoopInput::Step(msgs) => {
                for m in msgs {
                    {
                        let mut seen = lock(&self.shared.seen);
                        if !seen.contains(&m.from) {
                            seen.insert(m.from);
                        }
                    }
                    self.core.step(m);
                }
            }
            LoopInput::StepSnapshot(m, file) => {
                lock(&self.shared.seen).insert(m.from);
                self.core.step_snapshot(m, file);
            }
            LoopInput::SnapshotBuilt(r) => {
                // A fatal outcome (damage) stops the node at this turn's `ready` (check_damage).
                if let Err(e) = self.core.finish_snapshot(r) {
                    tracing::error!(node = self.shared.id, error = %e, "recording the snapshot failed");
                }
            }
            LoopInput::Unreachable(id) => self.core.report_unreachable(id),
            LoopInput::SnapshotStatus(id, ok) => self.core.report_snapshot(id, ok),
            LoopInput::Shutdown => self.stop = true,
        }
    }

    fn fill_leader(&self, e: ProposeError) -> ProposeError {
        match e {
            ProposeError::NotLeader { leader: Some(l), leader_addr: None } => {
                ProposeError::NotLeader { leader: Some(l), leader_addr: self.shared.addr_of(l) }
            }
            e => e,
        }
    }

    fn ready(&mut self) -> Result<(), RaftError> {
        if let Err(e) = self.core.check_damage() {
            self.deliver();
            return Err(e);
        }
        if self.core.has_ready() {
            let mut failed: Vec<(NodeId, bool)> = Vec::new();
            let transport = &self.transport;
            let res = self.core.on_ready(&mut |m: Message| {
                let (to, snap) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
                if !transport.send(m) {
                    failed.push((to, snap));
                }
            });
            if let Err(e) = res {
                self.deliver();
                return Err(e);
            }
            // After advance: raft may be stepped again.
            failed.dedup();
            for (to, snap) in failed {
                if snap {
                    self.core.report_snapshot(to, false);
                }
                self.core.report_unreachable(to);
            }
        }
        self.deliver();
        Ok(())
    }

    fn deliver(&mut self) {
        for c in self.core.take_completions() {
            match c {
                Completion::Proposal(t, r) => {
                    if let Some(tx) = self.proposals.remove(&t) {
                        let _ = tx.send(r);
                    }
                }
                Completion::Read(t, r) => {
                    if let Some(tx) = self.reads.remove(&t) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }

    fn publish(&self) {
        let c = &self.core;
        let role = match c.role() {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Follower => Role::Follower,
        };
        let leader = c.leader();
        let leader_addr = leader.and_then(|l| self.shared.addr_of(l));
        let term = c.term();
        let (commit, applied) = (c.commit_index(), c.applied());
        let snap = c.storage().snapshot_index();
        // Raft's activity changes without the rest of the status (a member goes quiet): kept every turn.
        c.recently_active_into(&mut lock(&self.shared.active));
        let unchanged = {
            let s = self.shared.status.read().unwrap_or_else(|p| p.into_inner());
            s.role == role
                && s.leader_id == leader
                && s.term == term
                && s.commit_index == commit
                && s.applied_index == applied
                && s.snapshot_index == snap
                && s.leader_addr == leader_addr
                && s.members == c.storage().conf_state().voters
        };
        if unchanged {
            return;
        }
        let members = c.voters();
        let peers = lock(&self.shared.addrs).clone();
        self.shared.set_status(|s| {
            s.role = role;
            s.leader_id = leader;
            s.leader_addr = leader_addr;
            s.term = term;
            s.commit_index = commit;
            s.applied_index = applied;
            s.snapshot_index = snap;
            s.members = members;
            s.peers = peers;
        });
    }
}
