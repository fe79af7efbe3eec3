//! The sans-IO heart of a Raft member: one raft-rs `RawNode` over [`RedbStorage`], the [`Fsm`], the
//! proposal/read waiters, and the Ready handling in raft-rs's documented order. No sockets, no clock, no
//! threads: the async driver (`node.rs`) and the seeded simulation (`sim.rs`) both feed it events and
//! carry its outgoing messages, so the code the simulation checks is the code that runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use redb::{Database, ReadableDatabase, WriteTransaction};

use super::snapfile::{Descriptor, FileSource, Flusher, Hold, SnapDir};
use super::storage::{LOG_RECORD_OVERHEAD, RedbStorage, StoreError, applied_point, guard};
use super::{DEFAULT_SNAPSHOT_LOG_BYTES, Fsm, FsmError, NodeId, ProposeError, RaftError};

/// Upper bound on proposals waiting for their entry to be applied, per node. Past it new proposals are
/// refused (Dropped) instead of growing memory without bound while the cluster cannot commit.
pub const MAX_INFLIGHT_PROPOSALS: usize = 16_384;
/// Upper bound on outstanding read-index requests, for the same reason.
pub const MAX_INFLIGHT_READS: usize = 16_384;
/// Largest Fsm command accepted by `propose` (bytes). Keeps every raft message well under the transport's
/// per-message limit even though one entry always goes out whole.
pub const MAX_COMMAND_BYTES: usize = 1 << 20;
/// `max_size_per_msg`: bytes of entries per append message (the engineering guide's ~1 MiB).
pub const MAX_SIZE_PER_MSG: u64 = 1 << 20;
/// `max_inflight_msgs`: append messages in flight per follower before waiting for acks.
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// About how long one Ready and its LightReady together may spend applying committed entries: raft-rs's
/// `max_committed_size_per_ready` is set before each from the member's measured apply rate
/// ([`apply_limit`]; the LightReady gets what the Ready left of the budget), so a backlog is applied over
/// several turns. Without it, a member that received a backlog applied it in one turn: a follower caught
/// up by a snapshot applied 5,545 entries (15.6 MB) in one 3.6 s turn (`bench fleet`, 2026-12-04),
/// unanswering its peers all that time, as a leader would be with such a backlog. Bytes alone do not say
/// how long: that backlog applied at about 5 MB/s, batches of findings several times faster.
pub const APPLY_BUDGET: Duration = Duration::from_millis(200);
/// Bounds of the bytes of committed entries handed over per Ready (raft-rs always hands at least one
/// entry): a member starts at the bottom until it has measured its rate, and no budget asks for more
/// than the top.
pub const MIN_APPLY_BYTES_PER_READY: u64 = 256 << 10;
pub const MAX_APPLY_BYTES_PER_READY: u64 = 64 << 20;

/// The bytes of committed entries a Ready may carry to spend about `budget` applying at `rate` bytes per
/// second: [`MIN_APPLY_BYTES_PER_READY`] while the rate is unmeasured, 1 (one entry) once the budget is
/// spent, never more than [`MAX_APPLY_BYTES_PER_READY`].
pub fn apply_limit(rate: f64, budget: Duration) -> u64 {
    if !(rate.is_finite() && rate > 0.0) {
        return MIN_APPLY_BYTES_PER_READY;
    }
    let bytes = rate * budget.as_secs_f64();
    if bytes >= 1.0 { (bytes as u64).min(MAX_APPLY_BYTES_PER_READY) } else { 1 }
}

/// The apply rate after one measured apply of `bytes` in `took` (a moving average; applies under 2 ms
/// are too short to time and leave it as it was).
pub fn next_apply_rate(rate: f64, bytes: u64, took: Duration) -> f64 {
    if took < Duration::from_millis(2) || bytes == 0 {
        return rate;
    }
    let sample = bytes as f64 / took.as_secs_f64();
    0.7 * rate + 0.3 * sample
}

/// Ticks a follower that is not ready to lead ([`Core::set_ready_to_lead`]) waits past its election
/// timeout before campaigning (once per timeout): a member restored from a snapshot rebuilds its indexes
/// for seconds, and leading meanwhile it answered heartbeats slowly (`bench fleet` runs A, D and E of
/// 2026-12-04: p99 523-822 ms in the worst second after the leader kill). 10 ticks (1 s) leaves a ready
/// member, whose timeout is at most two ticks after the lowest, time to win first.
pub const CAMPAIGN_DEFER_TICKS: usize = 10;

/// Ticks after a member starts a pre-vote campaign during which it ignores the pre-vote requests of
/// higher-ranked members (larger ids, later timeouts, `raft::election_rank`) whose logs are no newer than
/// its own. Why: when the leader dies, the two survivors' timers fire 0-200 ms apart; if the second fires
/// before the first one's pre-vote reaches it (a busy Raft loop or a slow fsync widens that window far
/// beyond a message's flight), both are pre-candidates, raft-rs grants each the other's pre-vote, both
/// become candidates of the same term, each votes for itself, and the vote splits: the next try comes a
/// whole timeout later (`bench fleet` run Z2, 2026-12-06: first write 2,646 ms after the kill, terms +2).
/// With this, the lower-ranked pre-candidate does not answer; the higher-ranked one, which answers it (a
/// pre-candidate grants any later term's pre-vote), is then asked for a real vote and gives it. Ignoring a
/// message is as safe as losing it. Bounded to 3 ticks so that a member whose pre-votes cannot reach the
/// other (a one-way partition) does not hold it off for longer than one pre-vote in several of its tries.
pub const PREVOTE_PRIORITY_TICKS: usize = 3;

/// Length of the request id carried in each proposed entry's `context`:
/// proposer id (u64 LE) ++ proposer incarnation (u64 LE) ++ token (u64 LE).
const CTX_LEN: usize = 24;

/// A finished request, handed back to whoever drives the core.
#[derive(Debug, PartialEq)]
pub enum Completion {
    Proposal(u64, Result<Vec<u8>, ProposeError>),
    Read(u64, Result<(), ProposeError>),
}

#[derive(Debug)]
struct Pending {
    token: u64,
    term: u64,
}

/// Settings the core needs (a subset of `RaftConfig`).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub id: NodeId,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_every: u64,
    /// raft-rs draws election timeouts from `[min_election_ticks, max_election_ticks)` with its own
    /// unseeded RNG; 0 means raft-rs's defaults (`election_ticks`, 2 * `election_ticks`). The simulation
    /// sets `[election_ticks, election_ticks + 1)` so runs are reproducible from the seed (its tick schedule
    /// is the randomness); real nodes start the range a tick above the lease (`raft::min_election_ticks`).
    pub min_election_ticks: usize,
    pub max_election_ticks: usize,
    /// While campaigning (pre-candidate or candidate), each tick counts with probability 1/2: a member whose
    /// timeout is fixed (a one-tick range, see `raft::ranked_election_ticks`) retries a failed campaign after
    /// a random time, so two members that collided once (the same timeout at the same tick phase) do not
    /// collide again in lockstep. Off in the simulation, whose tick schedule is its randomness.
    pub campaign_jitter: bool,
    /// Distinguishes this process's request ids from those of earlier runs of the same node.
    pub incarnation: u64,
}

/// A snapshot file the builder finished: the state at `index` (term `term`), held until recorded.
pub struct Built {
    pub index: u64,
    pub term: u64,
    pub file: Descriptor,
    pub hold: Hold,
}

/// What the builder reports back to the loop.
pub type BuildOutcome = Result<Built, StoreError>;

/// Where snapshots are built. `Inline` (the simulation, tests): on the calling thread, recorded at once.
/// `Thread`: on a background thread, reported through the callback (the node's mailbox); the loop goes on.
pub enum BuildMode {
    Inline,
    Thread(Arc<dyn Fn(BuildOutcome) + Send + Sync>),
}

/// Writes the Fsm's snapshot from one read transaction into a new file: the applied index and term come
/// from the same commit as the tables, so the file is exactly the state at that index. Memory: one chunk.
pub fn build_snapshot<F: Fsm>(db: &Database, dir: &Arc<SnapDir>) -> BuildOutcome {
    let started = std::time::Instant::now();
    let out = build_snapshot_file::<F>(db, dir);
    match &out {
        Ok(b) => super::fsync_stats::SNAPSHOTS.built(b.index, b.file.size, started.elapsed()),
        Err(_) => super::fsync_stats::SNAPSHOTS.build_failed(),
    }
    out
}

fn build_snapshot_file<F: Fsm>(db: &Database, dir: &Arc<SnapDir>) -> BuildOutcome {
    let txn = db.begin_read()?;
    let (index, term) = applied_point(&txn)?;
    let mut w = dir.create(index, term)?;
    if let Some(gate) = dir.gate() {
        gate.pass(dir.cancelled());
    }
    F::write_snapshot(&txn, &mut w).map_err(fsm_store_err)?;
    drop(txn);
    let (file, hold) = w.finish()?;
    Ok(Built { index, term, file, hold })
}

/// The empty state machine's snapshot at (1, 1) for a fixed cluster's bootstrap, written to a file.
pub fn bootstrap_snapshot<F: Fsm>(
    db: &Database,
    dir: &Arc<SnapDir>,
) -> Result<(Descriptor, Hold), StoreError> {
    let txn = db.begin_read()?;
    let mut w = dir.create(1, 1)?;
    F::write_snapshot(&txn, &mut w).map_err(fsm_store_err)?;
    Ok(w.finish()?)
}

pub struct Core<F: Fsm> {
    pub(crate) raw: RawNode<RedbStorage>,
    fsm: F,
    db: Arc<Database>,
    cfg: CoreConfig,
    /// Our proposals by log index (the entry's index and term identify it; the context double-checks).
    proposals: BTreeMap<u64, Pending>,
    /// Read requests not yet handed to raft (waiting for a leader that has committed in its term).
    reads_unsent: Vec<u64>,
    /// Read requests handed to raft, waiting for their ReadState.
    reads_sent: BTreeSet<u64>,
    /// Read requests with a read index, waiting for `applied >= index`.
    reads_ready: BTreeMap<u64, Vec<u64>>,
    completions: Vec<Completion>,
    /// Peers heard from since the last persisted Ready (rejoin detection, see README).
    seen_unpersisted: BTreeSet<NodeId>,
    last_term: u64,
    fatal: Option<RaftError>,
    /// Messages the core itself generated (see `handle_lost_data`), sent with the next Ready.
    extra_out: Vec<Message>,
    /// Compact once the applied log since the last snapshot takes this many bytes (0 = only by count).
    snapshot_log_bytes: u64,
    build_mode: BuildMode,
    /// The builder thread while a build runs (at most one at a time).
    building: Option<std::thread::JoinHandle<()>>,
    /// Where the last compaction trigger fired: (applied index, bytes applied by then as counted by
    /// `compacted_bytes` + the log's bytes). The next trigger counts from here and compacts up to here, so
    /// the log keeps one trigger's worth of entries for a member that was briefly away (etcd keeps 5,000
    /// entries for the same reason).
    mark: Option<(u64, u64)>,
    /// Where the log is to be compacted to: the mark before the last trigger, reached as soon as no
    /// follower holds it back ([`compaction_target`]).
    compact_to: u64,
    /// Bytes of log this process's compactions deleted.
    compacted_bytes: u64,
    /// Followers a snapshot was delivered to, and its index, until they acknowledge it ([`peer_need`]).
    delivered: BTreeMap<NodeId, u64>,
    /// Received snapshot files stepped into raft this turn: kept until the next Ready installed (or
    /// ignored) them.
    stepped_files: Vec<Hold>,
    /// The builder was refused (file limit, I/O): warn once until a build succeeds.
    build_warned: bool,
    /// Flushes the database file while a received snapshot is restored into it (None: only the commit's
    /// fsync, as in the simulation).
    restore_flush: Option<Flusher>,
    /// Ticks not passed to raft-rs while campaigning ([`CoreConfig::campaign_jitter`]).
    skipped_ticks: u64,
    /// What the Readies since the last [`Core::take_work`] did (a slow turn's breakdown).
    work: ReadyWork,
    /// Bytes of committed entries applied per second, measured ([`next_apply_rate`]); sets how many one
    /// Ready hands over ([`apply_limit`]).
    apply_rate: f64,
    /// Whether the application could lead at once ([`Core::set_ready_to_lead`]).
    ready_to_lead: bool,
    /// Ticks deferred in the current election timeout ([`CAMPAIGN_DEFER_TICKS`]).
    deferred_ticks: usize,
    /// Pre-vote requests ignored as a pre-candidate of lower rank ([`PREVOTE_PRIORITY_TICKS`]).
    prevotes_held_off: u64,
    /// This member's NOSPACE alarm is up ([`Core::set_short_of_disk`]): appends carrying entries are not
    /// taken.
    short_of_disk: bool,
    /// Appends with entries dropped while short of disk.
    appends_refused: u64,
}

/// Where the Raft thread's time went in the Readies of one loop turn: applying committed entries (the state
/// machine's writes, both the Ready's and the LightReady's), committing the write transactions (redb's
/// flush and fsync), and installing a received snapshot. A slow turn is explained by these, or, when they
/// are small, by the loop's events or by the thread not being scheduled (the loop compares its CPU time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadyWork {
    pub apply: Duration,
    pub commit: Duration,
    pub install: Duration,
    /// Compacting the log (its delete and commit).
    pub compact: Duration,
    /// Committed entries applied, and their bytes in the log.
    pub entries: u64,
    pub bytes: u64,
    /// The largest per-Ready limit of committed bytes in force ([`apply_limit`]).
    pub limit: u64,
}

fn ctx_bytes(id: NodeId, incarnation: u64, token: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(CTX_LEN);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&incarnation.to_le_bytes());
    v.extend_from_slice(&token.to_le_bytes());
    v
}

/// Builds raft-rs's config from ours; `applied` comes from storage (raft-rs pitfall: set it on restart).
pub fn raft_config(cfg: &CoreConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_inflight_msgs: MAX_INFLIGHT_MSGS,
        max_committed_size_per_ready: MIN_APPLY_BYTES_PER_READY,
        check_quorum: true,
        pre_vote: true,
        min_election_tick: cfg.min_election_ticks,
        max_election_tick: cfg.max_election_ticks,
        ..Default::default()
    }
}

impl<F: Fsm> Core<F> {
    /// Builds the core over already-opened (bootstrapped or joining) storage.
    pub fn new(
        cfg: CoreConfig,
        storage: RedbStorage,
        fsm: F,
        logger: &slog::Logger,
    ) -> Result<Self, RaftError> {
        let db = storage.db().clone();
        let applied = storage.applied();
        let rc = raft_config(&cfg, applied);
        rc.validate().map_err(|e| RaftError::Config(e.to_string()))?;
        let raw = RawNode::new(&rc, storage, logger).map_err(|e| RaftError::Raft(e.to_string()))?;
        let last_term = raw.raft.term;
        Ok(Core {
            raw,
            fsm,
            db,
            cfg,
            proposals: BTreeMap::new(),
            reads_unsent: Vec::new(),
            reads_sent: BTreeSet::new(),
            reads_ready: BTreeMap::new(),
            completions: Vec::new(),
            seen_unpersisted: BTreeSet::new(),
            last_term,
            fatal: None,
            extra_out: Vec::new(),
            snapshot_log_bytes: DEFAULT_SNAPSHOT_LOG_BYTES,
            build_mode: BuildMode::Inline,
            building: None,
            mark: None,
            compact_to: 0,
            compacted_bytes: 0,
            delivered: BTreeMap::new(),
            stepped_files: Vec::new(),
            build_warned: false,
            restore_flush: None,
            skipped_ticks: 0,
            work: ReadyWork::default(),
            apply_rate: 0.0,
            ready_to_lead: true,
            deferred_ticks: 0,
            prevotes_held_off: 0,
            short_of_disk: false,
            appends_refused: 0,
        })
    }

    /// Flush the database file as received snapshots are restored into it (see [`Flusher`]).
    pub fn with_restore_flush(mut self, flush: Flusher) -> Self {
        self.restore_flush = Some(flush);
        self
    }

    /// Builds snapshots on a background thread reporting through `done` (see [`BuildMode`]).
    pub fn with_build_thread(mut self, done: Arc<dyn Fn(BuildOutcome) + Send + Sync>) -> Self {
        self.build_mode = BuildMode::Thread(done);
        self
    }

    /// Steps a MsgSnapshot whose data names a file the transport received into our snapshot directory;
    /// the file is kept until the next Ready installed it (or raft ignored it).
    pub fn step_snapshot(&mut self, m: Message, file: Hold) {
        self.stepped_files.push(file);
        self.step(m);
    }

    /// Stops a build in progress and waits for its thread (it gives up at its next chunk).
    pub fn stop_builder(&mut self) {
        if let Some(h) = self.building.take() {
            self.storage().snap_dir().cancel();
            if h.join().is_err() {
                tracing::error!(node = self.cfg.id, "snapshot builder panicked");
            }
        }
    }

    /// Sets the byte limit of the applied log (see `StorageLimits::snapshot_log_bytes`; 0 = off).
    pub fn with_snapshot_log_bytes(mut self, bytes: u64) -> Self {
        self.snapshot_log_bytes = bytes;
        self
    }

    pub fn storage(&self) -> &RedbStorage {
        self.raw.store()
    }
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }
    /// The leader this node believes in: itself when leading; for a follower, the leader it heard from
    /// within the last election timeout. A follower that has not heard from its leader for
    /// `election_ticks` answers "no leader known" instead of pointing clients at a leader that is
    /// probably dead (raft-rs keeps `leader_id` until its randomised timeout, up to twice as long).
    pub fn leader(&self) -> Option<NodeId> {
        let r = &self.raw.raft;
        if r.leader_id == raft::INVALID_ID {
            return None;
        }
        if r.state == StateRole::Follower && r.election_elapsed >= self.cfg.election_ticks {
            return None;
        }
        Some(r.leader_id)
    }
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }
    pub fn applied(&self) -> u64 {
        self.raw.store().applied()
    }
    pub fn voters(&self) -> Vec<NodeId> {
        self.raw.store().conf_state().voters.clone()
    }

    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    pub fn tick(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        if self.cfg.campaign_jitter
            && matches!(self.raw.raft.state, StateRole::Candidate | StateRole::PreCandidate)
            && rand::random::<bool>()
        {
            self.skipped_ticks += 1;
            return;
        }
        let r = &mut self.raw.raft;
        if r.state == StateRole::Follower && r.election_elapsed + 1 >= r.randomized_election_timeout() {
            if !self.ready_to_lead && self.deferred_ticks < CAMPAIGN_DEFER_TICKS {
                // The tick counts (the leader lease runs out as usual, so this member grants another's
                // vote), but it does not campaign yet.
                r.election_elapsed += 1;
                self.deferred_ticks += 1;
                return;
            }
        } else {
            self.deferred_ticks = 0;
        }
        self.raw.tick();
    }

    /// Whether the application could lead at once; a follower that could not defers its campaign (see
    /// [`CAMPAIGN_DEFER_TICKS`]).
    pub fn set_ready_to_lead(&mut self, ready: bool) {
        self.ready_to_lead = ready;
    }

    /// Whether this member's NOSPACE alarm is up. While it is, a follower drops every append that carries
    /// entries (as if the network lost it) instead of writing them, so it stops at its floor rather than
    /// filling its disk to the last byte: the other members are a quorum and commit without it, its leader
    /// sends again on each heartbeat answer (raft-rs's flow control bounds what is in flight), and once space
    /// returns the next append is taken, or rejected and probed back, as after any loss. Heartbeats and empty
    /// appends are still stepped (they write nothing but a commit index within the log it has), and so are
    /// votes (a small hard-state write), so the member keeps its place in elections it does not start.
    pub fn set_short_of_disk(&mut self, short: bool) {
        self.short_of_disk = short;
    }

    /// Appends with entries dropped while short of disk ([`Core::set_short_of_disk`]).
    #[cfg(test)]
    pub fn appends_refused(&self) -> u64 {
        self.appends_refused
    }

    /// Hand leadership to `to` (raft-rs's leader transfer: `to` is brought up to date, then told to campaign
    /// at once; raft-rs aborts the transfer after an election timeout). Only a leader does anything.
    pub fn transfer_leader(&mut self, to: NodeId) {
        if self.fatal.is_none() && self.raw.raft.state == StateRole::Leader {
            self.raw.transfer_leader(to);
        }
    }

    /// The member a transfer started by [`Core::transfer_leader`] is under way to.
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.raw.raft.lead_transferee
    }

    /// On a leader, the voters it heard from within the last election timeout, itself included (raft-rs's
    /// `recent_active`, which check_quorum resets each election timeout); none on other roles. Written
    /// into `out` (cleared first), which keeps its allocation: the loop calls this every turn.
    pub fn recently_active_into(&self, out: &mut Vec<NodeId>) {
        out.clear();
        if self.raw.raft.state == StateRole::Leader {
            out.extend(self.raw.raft.prs().iter().filter(|(_, p)| p.recent_active).map(|(id, _)| *id));
        }
    }

    /// The highest log index this leader knows `id` to hold (None: not a leader, or no progress for it).
    pub fn matched(&self, id: NodeId) -> Option<u64> {
        if self.raw.raft.state != StateRole::Leader {
            return None;
        }
        self.raw.raft.prs().get(id).map(|p| p.matched)
    }

    /// What the Readies did since the last call (see [`ReadyWork`]); resets it.
    pub fn take_work(&mut self) -> ReadyWork {
        std::mem::take(&mut self.work)
    }

    /// Whether `m` is a pre-vote request this member ignores ([`PREVOTE_PRIORITY_TICKS`]): it is itself a
    /// pre-candidate that started within that many ticks, the sender ranks higher, and the sender's log is
    /// no newer than this member's (otherwise the sender should win, and is answered as usual).
    fn holds_off_prevote(&self, m: &Message) -> bool {
        let r = &self.raw.raft;
        if m.get_msg_type() != MessageType::MsgRequestPreVote
            || r.state != StateRole::PreCandidate
            || r.election_elapsed >= PREVOTE_PRIORITY_TICKS
        {
            return false;
        }
        let voters = self.voters();
        if crate::raft::election_rank(m.from, voters.iter().copied())
            <= crate::raft::election_rank(self.cfg.id, voters.iter().copied())
        {
            return false;
        }
        (r.raft_log.last_term(), r.raft_log.last_index()) >= (m.log_term, m.index)
    }

    /// Pre-vote requests ignored so far ([`PREVOTE_PRIORITY_TICKS`]).
    #[cfg(test)]
    pub fn prevotes_held_off(&self) -> u64 {
        self.prevotes_held_off
    }

    /// Ticks skipped while campaigning ([`CoreConfig::campaign_jitter`]).
    #[cfg(test)]
    pub fn skipped_ticks(&self) -> u64 {
        self.skipped_ticks
    }

    /// Steps a message from a peer. Errors are the peer's problem (stale, unknown sender): ignored.
    pub fn step(&mut self, m: Message) {
        if self.fatal.is_some() || m.from == self.cfg.id || m.to != self.cfg.id {
            return;
        }
        if raft::raw_node::is_local_msg(m.get_msg_type()) {
            return;
        }
        let from = m.from;
        if !self.raw.store().seen().contains(&from) {
            self.seen_unpersisted.insert(from);
        }
        if self.holds_off_prevote(&m) {
            self.prevotes_held_off += 1;
            super::fsync_stats::TURNS.prevotes_held_off.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                node = self.cfg.id,
                from,
                term = m.term,
                "pre-vote of a higher-ranked member ignored: this member's own pre-vote campaign goes first"
            );
            return;
        }
        if self.short_of_disk && m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty() {
            self.appends_refused += 1;
            super::fsync_stats::TURNS
                .appends_refused_nospace
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.appends_refused.is_power_of_two() {
                tracing::warn!(
                    node = self.cfg.id,
                    from,
                    refused = self.appends_refused,
                    "short of disk (NOSPACE): appends are dropped until space returns; the other members commit"
                );
            }
            return;
        }
        let mut m = m;
        self.handle_lost_data(&mut m);
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(node = self.cfg.id, from, error = %e, "raft step refused a message");
        }
    }

    /// Support for a member that restarted empty under its old id (`join`). raft-rs assumes a follower
    /// never loses acknowledged entries, so the leader's progress for it is stale (`matched` too high):
    /// the leader would send heartbeats committing entries the joiner does not have (raft-rs panics) and
    /// ignore its rejections as stale (it would never catch up). So:
    /// - a joiner (no conf state yet) answers every heartbeat with a rejection "I have nothing" (index 0,
    ///   hint 0) so the leader notices even when idle;
    /// - any member getting a heartbeat whose commit is past its last index (a joiner; or a heartbeat the
    ///   leader sent before it reset the joiner's progress, delivered after the joiner installed a snapshot:
    ///   seen in the fault suite under load) keeps its own commit index (the heartbeat commits nothing: a
    ///   commit past the log is meaningless and raft-rs would panic) and answers with that rejection,
    ///   hint = its last index. Commits then advance only through appends, which check log matching;
    /// - a leader that gets a current-term rejection whose hint is below the follower's `matched` resets
    ///   that follower's progress to zero and probes again (which ends in a snapshot). Lowering `matched`
    ///   only delays commits, it can never commit anything unsafely; for normal followers the condition
    ///   only arises from a reordered old rejection, costing a redundant catch-up.
    fn handle_lost_data(&mut self, m: &mut Message) {
        match m.get_msg_type() {
            MessageType::MsgHeartbeat
                if !self.raw.store().has_conf() || m.commit > self.raw.raft.raft_log.last_index() =>
            {
                let last = self.raw.raft.raft_log.last_index();
                if m.commit > last {
                    m.commit = self.raw.raft.raft_log.committed.min(last);
                }
                let mut r = Message::default();
                r.set_msg_type(MessageType::MsgAppendResponse);
                r.from = self.cfg.id;
                r.to = m.from;
                r.term = m.term;
                r.index = 0;
                r.reject = true;
                r.reject_hint = last;
                self.extra_out.push(r);
            }
            MessageType::MsgAppendResponse
                if m.reject && self.raw.raft.state == StateRole::Leader && m.term == self.raw.raft.term =>
            {
                if let Some(pr) = self.raw.raft.mut_prs().get_mut(m.from)
                    && m.reject_hint < pr.matched
                {
                    tracing::warn!(
                        node = self.cfg.id,
                        peer = m.from,
                        matched = pr.matched,
                        has = m.reject_hint,
                        "follower lost acknowledged entries (rejoined empty?): resetting its progress"
                    );
                    pr.matched = 0;
                    pr.become_probe();
                    // Make raft's own rejection handling line up with the reset probe.
                    m.index = 0;
                    m.reject_hint = 0;
                }
            }
            _ => {}
        }
    }

    pub fn report_unreachable(&mut self, id: NodeId) {
        if self.fatal.is_none() {
            self.raw.report_unreachable(id);
        }
    }

    pub fn report_snapshot(&mut self, id: NodeId, ok: bool) {
        if self.fatal.is_none() {
            if ok && let Some(pr) = self.raw.raft.prs().get(id) {
                // The follower installs it now (seconds at 1.5 M objects): keep the log after it meanwhile.
                self.delivered.insert(id, pr.pending_snapshot);
            }
            let st = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            self.raw.report_snapshot(id, st);
        }
    }

    /// Proposes a command; its completion comes back through `take_completions` with `token`.
    pub fn propose(&mut self, token: u64, cmd: Vec<u8>) -> Result<(), ProposeError> {
        if self.fatal.is_some() {
            return Err(ProposeError::Stopped);
        }
        if cmd.len() > MAX_COMMAND_BYTES {
            return Err(ProposeError::TooLarge);
        }
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader(), leader_addr: None });
        }
        if self.proposals.len() >= MAX_INFLIGHT_PROPOSALS {
            return Err(ProposeError::Dropped);
        }
        let before = self.raw.raft.raft_log.last_index();
        let ctx = ctx_bytes(self.cfg.id, self.cfg.incarnation, token);
        match self.raw.propose(ctx, cmd) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                if index != before + 1 {
                    // raft-rs appends exactly one entry per accepted proposal; anything else means we
                    // cannot tell which index is ours, so do not promise an answer.
                    return Err(ProposeError::Dropped);
                }
                self.proposals.insert(index, Pending { token, term: self.raw.raft.term });
                Ok(())
            }
            Err(raft::Error::ProposalDropped) => {
                Err(ProposeError::NotLeader { leader: self.leader(), leader_addr: None })
            }
            Err(e) => Err(ProposeError::Fsm(format!("raft refused the proposal: {e}"))),
        }
    }

    /// Starts a linearizable read; completes once `applied >= ` the leader's commit index at call time.
    pub fn read_index(&mut self, token: u64) -> Result<(), ProposeError> {
        if self.fatal.is_some() {
            return Err(ProposeError::Stopped);
        }
        if self.leader().is_none() {
            return Err(ProposeError::NotLeader { leader: None, leader_addr: None });
        }
        if self.short_of_disk && self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::ShortOfDisk { leader: self.leader() });
        }
        if self.reads_unsent.len() + self.reads_sent.len() >= MAX_INFLIGHT_READS {
            return Err(ProposeError::Dropped);
        }
        self.reads_unsent.push(token);
        self.flush_reads();
        Ok(())
    }

    /// Hands queued reads to raft once it can serve them: a leader only answers after committing an entry
    /// in its own term (otherwise raft-rs drops the request silently).
    fn flush_reads(&mut self) {
        if self.reads_unsent.is_empty() {
            return;
        }
        let ready = match self.raw.raft.state {
            StateRole::Leader => {
                self.raw.raft.raft_log.term(self.raw.raft.raft_log.committed).ok() == Some(self.raw.raft.term)
            }
            StateRole::Follower => self.leader().is_some(),
            _ => false,
        };
        if !ready {
            return;
        }
        for token in std::mem::take(&mut self.reads_unsent) {
            let mut ctx = self.cfg.incarnation.to_le_bytes().to_vec();
            ctx.extend_from_slice(&token.to_le_bytes());
            self.raw.read_index(ctx);
            self.reads_sent.insert(token);
        }
    }

    /// Forgets a request whose caller gave up (timeout): its completion will simply not be produced.
    pub fn forget_read(&mut self, token: u64) {
        self.reads_unsent.retain(|t| *t != token);
        self.reads_sent.remove(&token);
    }

    fn fail_all(&mut self, err: ProposeError) {
        for (_, p) in std::mem::take(&mut self.proposals) {
            self.completions.push(Completion::Proposal(p.token, Err(err.clone())));
        }
        for t in
            std::mem::take(&mut self.reads_unsent).into_iter().chain(std::mem::take(&mut self.reads_sent))
        {
            self.completions.push(Completion::Read(t, Err(err.clone())));
        }
        for (_, ts) in std::mem::take(&mut self.reads_ready) {
            for t in ts {
                self.completions.push(Completion::Read(t, Err(err.clone())));
            }
        }
    }

    /// Marks the node dead after a storage/Fsm failure: never advance after it.
    fn set_fatal(&mut self, e: &StoreError) -> RaftError {
        let err = match e {
            StoreError::Damaged(m) => {
                let flag = self.raw.store().damage_flag();
                if flag.set(m.clone()).is_ok() {
                    super::alarms::CORRUPTION_DETECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                RaftError::Corrupt(m.clone())
            }
            StoreError::Incompatible(m) => RaftError::Incompatible(m.clone()),
            e => RaftError::Storage(e.to_string()),
        };
        let msg = err.to_string();
        tracing::error!(node = self.cfg.id, error = %msg, "raft storage failure: node stopped");
        self.fatal = Some(err.clone());
        self.fail_all(ProposeError::Stopped);
        err
    }

    /// The error this core stopped with, if it did.
    fn fatal_error(&self) -> Option<RaftError> {
        let f = self.fatal.as_ref()?;
        let flag = self.raw.store().damage_flag();
        Some(match flag.get() {
            Some(m) => RaftError::Corrupt(m.clone()),
            None => f.clone(),
        })
    }

    /// A transaction failed: the answers computed inside it never became durable, so their waiters get
    /// `Stopped` like every other pending request.
    fn fail_batch(&mut self, e: &StoreError, lost: Vec<Completion>) -> RaftError {
        for c in lost {
            self.completions.push(match c {
                Completion::Proposal(t, _) => Completion::Proposal(t, Err(ProposeError::Stopped)),
                Completion::Read(t, _) => Completion::Read(t, Err(ProposeError::Stopped)),
            });
        }
        self.set_fatal(e)
    }

    /// Stops the core if a storage read (raft-rs reads entries and terms outside `on_ready`) found damage:
    /// raft-rs may have worked around the failed read (e.g. by sending a snapshot instead of entries), but
    /// a replica with damaged bytes must not go on.
    pub fn check_damage(&mut self) -> Result<(), RaftError> {
        if self.fatal.is_none()
            && let Some(m) = self.raw.store().damage_flag().get().cloned()
        {
            return Err(self.set_fatal(&StoreError::Damaged(m)));
        }
        match self.fatal_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn has_ready(&self) -> bool {
        self.fatal.is_none()
            && (self.raw.has_ready()
                || !self.extra_out.is_empty()
                || (self.building.is_none() && self.raw.store().snapshot_wanted()))
    }

    /// Handles one Ready in the documented order, calling `send` for every outgoing message. Returns an
    /// error (and stays stopped) on any storage or Fsm storage failure.
    pub fn on_ready(&mut self, send: &mut dyn FnMut(Message)) -> Result<(), RaftError> {
        if let Some(e) = self.fatal_error() {
            return Err(e);
        }
        for m in std::mem::take(&mut self.extra_out) {
            send(m);
        }
        if !self.raw.has_ready() {
            // Nothing pending: a snapshot stepped this turn was not taken.
            self.stepped_files.clear();
            self.after_ready();
            if let Err(e) = self.maybe_build() {
                return Err(self.set_fatal(&e));
            }
            return Ok(());
        }
        let applied_before = self.work.apply;
        self.limit_apply(APPLY_BUDGET);
        let mut rd = self.raw.ready();
        // 1. Messages that may go out before persistence (a leader's appends and heartbeats).
        for m in rd.take_messages() {
            send(m);
        }
        // 2-5. Snapshot, committed entries, new entries, HardState: one write transaction, one fsync when
        // raft needs one (`must_sync`: entries, a snapshot, a new term or vote; newly seen peers too) or
        // the state machine asks for one (`Fsm::wants_durable`). A Ready that only moves the commit index
        // and applies is committed without an fsync otherwise: see [`lazy_durability`].
        let durable = rd.must_sync() || !self.seen_unpersisted.is_empty();
        let mut done = Vec::new();
        let res = guard("the Ready's write transaction", || {
            let txn = self.db.begin_write()?;
            let mut install = None;
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot();
                let file = Descriptor::decode(snap.get_data())?;
                let dir = self.raw.store().snap_dir().clone();
                let flushes = self.restore_flush.as_ref().map_or(0, Flusher::flushes);
                install = Some((std::time::Instant::now(), file.size, flushes));
                let source = FileSource { dir: &dir, desc: file.clone(), flush: self.restore_flush.as_ref() };
                self.fsm.restore(&txn, &source).map_err(fsm_store_err)?;
                self.raw.mut_store().apply_snapshot(&txn, snap.get_metadata(), &file)?;
                if let Some((started, ..)) = install {
                    self.work.install += started.elapsed();
                }
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(&txn, committed, &mut done)?;
            self.raw.mut_store().append(&txn, rd.entries())?;
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(&txn, hs)?;
            }
            if !self.seen_unpersisted.is_empty() {
                let seen = std::mem::take(&mut self.seen_unpersisted);
                self.raw.mut_store().add_seen(&txn, &seen)?;
            }
            self.commit_txn(txn, durable)?;
            if let Some((started, size, flushes)) = install {
                let now = self.restore_flush.as_ref().map_or(0, Flusher::flushes);
                super::fsync_stats::SNAPSHOTS.installed(size, started.elapsed(), now - flushes);
            }
            Ok(())
        });
        if let Err(e) = res {
            self.raw.mut_store().abort_staged();
            return Err(self.fail_batch(&e, done));
        }
        self.raw.mut_store().commit_staged();
        // A received file is current now, or was not taken: either way our claim ends.
        self.stepped_files.clear();
        if !rd.snapshot().is_empty() {
            let idx = rd.snapshot().get_metadata().index;
            // Proposals at or below the snapshot index: their outcome is folded into the snapshot; we can
            // no longer tell which, so they end as Dropped (the caller may retry idempotently).
            let rest = self.proposals.split_off(&(idx + 1));
            for (_, p) in std::mem::replace(&mut self.proposals, rest) {
                done.push(Completion::Proposal(p.token, Err(ProposeError::Dropped)));
            }
        }
        self.fsm.after_commit();
        self.completions.append(&mut done);
        // 6. Messages that must wait for persistence (votes, append responses).
        for m in rd.take_persisted_messages() {
            send(m);
        }
        for rs in rd.take_read_states() {
            self.on_read_state(rs.request_ctx, rs.index);
        }
        // 7. Advance, then the LightReady: commit index, messages, committed entries.
        self.limit_apply(APPLY_BUDGET.saturating_sub(self.work.apply.saturating_sub(applied_before)));
        let mut light = self.raw.advance(rd);
        let commit = light.commit_index();
        let committed = light.take_committed_entries();
        for m in light.take_messages() {
            send(m);
        }
        if commit.is_some() || !committed.is_empty() {
            let res = guard("the LightReady's write transaction", || {
                // A commit index and committed entries only: never what raft needs durable.
                let txn = self.db.begin_write()?;
                if let Some(c) = commit {
                    self.raw.mut_store().set_commit(&txn, c)?;
                }
                self.apply_entries(&txn, committed, &mut done)?;
                self.commit_txn(txn, false)
            });
            if let Err(e) = res {
                self.raw.mut_store().abort_staged();
                return Err(self.fail_batch(&e, done));
            }
            self.raw.mut_store().commit_staged();
            self.fsm.after_commit();
            self.completions.append(&mut done);
        }
        self.raw.advance_apply();
        self.after_ready();
        if let Err(e) = self.maybe_snapshot() {
            return Err(self.set_fatal(&e));
        }
        Ok(())
    }

    /// Commit one of the loop's write transactions: with an fsync when `durable` (raft needs it) or the
    /// state machine asks for one (`Fsm::wants_durable`), else without (see [`lazy_durability`]). The
    /// commit's time counts in the turn; durable commits go to the fsync histogram, the others are counted.
    fn commit_txn(&mut self, mut txn: WriteTransaction, durable: bool) -> Result<(), StoreError> {
        let durable = self.fsm.wants_durable() || durable;
        if durable {
            super::storage::set_two_phase(&mut txn);
        } else {
            lazy_durability(&mut txn)?;
        }
        let t = std::time::Instant::now();
        txn.commit()?;
        let took = t.elapsed();
        self.work.commit += took;
        if durable {
            super::fsync_stats::FSYNC.observe(took);
        } else {
            super::fsync_stats::TURNS.lazy_commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sets the bytes of committed entries the next Ready or LightReady may hand over: `budget` of
    /// applying at the measured rate.
    fn limit_apply(&mut self, budget: Duration) {
        let limit = apply_limit(self.apply_rate, budget);
        self.raw.raft.set_max_committed_size_per_ready(limit);
        self.work.limit = self.work.limit.max(limit);
    }

    /// Bookkeeping after each Ready: resolve reads, drop proposals whose entry was overwritten, hand
    /// queued reads to raft.
    fn after_ready(&mut self) {
        let applied = self.applied();
        let rest = self.reads_ready.split_off(&(applied + 1));
        for (_, ts) in std::mem::replace(&mut self.reads_ready, rest) {
            for t in ts {
                self.completions.push(Completion::Read(t, Ok(())));
            }
        }
        let term = self.raw.raft.term;
        if term != self.last_term {
            // Read requests raft accepted in an earlier term may be silently lost with that leader.
            self.last_term = term;
            for t in std::mem::take(&mut self.reads_sent) {
                self.completions.push(Completion::Read(t, Err(ProposeError::Dropped)));
            }
        }
        if self.raw.raft.state != StateRole::Leader && !self.proposals.is_empty() {
            // Our entry is lost once the log holds a different term at its index, or no longer reaches it.
            let log = &self.raw.raft.raft_log;
            let lost: Vec<u64> = self
                .proposals
                .iter()
                .filter(|(idx, p)| match log.term(**idx) {
                    Ok(t) => t != p.term,
                    Err(raft::Error::Store(raft::StorageError::Compacted)) => false,
                    Err(_) => true,
                })
                .map(|(i, _)| *i)
                .collect();
            for i in lost {
                if let Some(p) = self.proposals.remove(&i) {
                    self.completions.push(Completion::Proposal(p.token, Err(ProposeError::Dropped)));
                }
            }
        }
        self.flush_reads();
    }

    fn on_read_state(&mut self, ctx: Vec<u8>, index: u64) {
        if ctx.len() != 16 {
            return;
        }
        let (inc, tok) = ctx.split_at(8);
        let inc = u64::from_le_bytes(inc.try_into().unwrap_or([0; 8]));
        let token = u64::from_le_bytes(tok.try_into().unwrap_or([0; 8]));
        if inc != self.cfg.incarnation || !self.reads_sent.remove(&token) {
            return;
        }
        if index <= self.applied() {
            self.completions.push(Completion::Read(token, Ok(())));
        } else {
            self.reads_ready.entry(index).or_default().push(token);
        }
    }

    fn apply_entries(
        &mut self,
        txn: &WriteTransaction,
        entries: Vec<Entry>,
        done: &mut Vec<Completion>,
    ) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
        let started = std::time::Instant::now();
        let mut applied = self.raw.store().staged_applied();
        let mut bytes = 0u64;
        let mut count = 0u64;
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index > applied).collect();
        for (i, e) in entries.iter().enumerate() {
            if e.index != applied + 1 + i as u64 {
                return Err(StoreError::Invariant(format!(
                    "applying {} after {}",
                    e.index,
                    applied + i as u64
                )));
            }
        }
        // The state machine's entries go to it in one batch (it shares per-transaction work between them);
        // their results are matched back in log order below.
        let normal = |e: &Entry| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty();
        let batch: Vec<(u64, &[u8])> =
            entries.iter().filter(|e| normal(e)).map(|e| (e.index, &e.data[..])).collect();
        let mut results = Vec::with_capacity(batch.len());
        self.fsm.apply_batch(txn, &batch, &mut results);
        drop(batch);
        let mut results = results.into_iter();
        for e in entries {
            count += 1;
            bytes += LOG_RECORD_OVERHEAD + u64::from(e.compute_size());
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if normal(&e) => match results.next() {
                    Some(Ok(r)) => Ok(r),
                    Some(Err(FsmError::Rejected(m))) => Err(ProposeError::Fsm(m)),
                    Some(Err(FsmError::Storage(m))) => {
                        return Err(StoreError::Invariant(format!("fsm apply at {}: {m}", e.index)));
                    }
                    Some(Err(FsmError::Corrupt(m))) => {
                        return Err(StoreError::Damaged(format!("fsm apply at {}: {m}", e.index)));
                    }
                    Some(Err(FsmError::TooNew(m))) => {
                        return Err(StoreError::Incompatible(format!("fsm apply at {}: {m}", e.index)));
                    }
                    None => {
                        return Err(StoreError::Invariant(format!("fsm apply at {}: no result", e.index)));
                    }
                },
                EntryType::EntryNormal => Err(ProposeError::Dropped), // leader's no-op
                _ => {
                    // Fixed membership: nothing proposes conf changes. Never expected; skipping keeps
                    // every replica identical.
                    tracing::warn!(index = e.index, "ignoring a conf-change entry (membership is fixed)");
                    Err(ProposeError::Dropped)
                }
            };
            applied = e.index;
            // Proposals below this index were overwritten by entries we applied without a match.
            while let Some((&idx, _)) = self.proposals.first_key_value() {
                if idx >= e.index {
                    break;
                }
                if let Some((_, p)) = self.proposals.pop_first() {
                    done.push(Completion::Proposal(p.token, Err(ProposeError::Dropped)));
                }
            }
            if let Some(p) = self.proposals.remove(&e.index) {
                let ours = e.term == p.term
                    && e.context.len() == CTX_LEN
                    && e.context[..] == ctx_bytes(self.cfg.id, self.cfg.incarnation, p.token)[..];
                let r = if ours { result } else { Err(ProposeError::Dropped) };
                done.push(Completion::Proposal(p.token, r));
            }
        }
        debug_assert_eq!(applied, last);
        self.raw.mut_store().set_applied(txn, applied, bytes)?;
        let took = started.elapsed();
        self.apply_rate = next_apply_rate(self.apply_rate, bytes, took);
        self.work.apply += took;
        self.work.bytes += bytes;
        self.work.entries += count;
        Ok(())
    }

    /// Every `snapshot_every` applied entries, or once the log applied since the last trigger takes
    /// `snapshot_log_bytes` (whichever comes first): compact the log up to the last trigger's applied index
    /// (one trigger's worth stays), on a leader no further than its recently active followers still need
    /// ([`compaction_target`]). No file is built for it: the state
    /// machine's tables hold the applied state. Then start a build if raft-rs asked for a snapshot no file
    /// holds (a follower behind the log start).
    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        self.maybe_compact()?;
        self.maybe_build()
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let applied = self.applied();
        let st = self.raw.store();
        let start = st.snapshot_index();
        let log_bytes = st.applied_log_bytes();
        // Bytes applied since this process started counting: what the log holds plus what compactions
        // deleted (an installed snapshot's log is not counted; the mark then starts again below).
        let applied_total = log_bytes + self.compacted_bytes;
        // No mark yet, or one the log start passed (an installed snapshot): count from the start.
        let (mark, mark_total) = match self.mark {
            Some((m, t)) if m >= start && t <= applied_total => (m, t),
            _ => (start, applied_total),
        };
        let every = self.cfg.snapshot_every;
        let fired = applied > mark
            && ((every != 0 && applied >= mark + every)
                || (self.snapshot_log_bytes != 0 && applied_total - mark_total >= self.snapshot_log_bytes));
        if fired {
            // Compact up to the last trigger's point: the log keeps what was applied since.
            self.compact_to = self.compact_to.max(mark);
            self.mark = Some((applied, applied_total));
        } else {
            self.mark = Some((mark, mark_total));
        }
        if self.compact_to <= start {
            return Ok(());
        }
        let limit =
            if self.snapshot_log_bytes == 0 { DEFAULT_SNAPSHOT_LOG_BYTES } else { self.snapshot_log_bytes };
        let held = LogHolds {
            leader: self.role() == StateRole::Leader,
            building: self.building.is_some(),
            over_limit: log_bytes >= limit.saturating_mul(HELD_LOG_FACTOR),
            file: st.file_index(),
        };
        let me = self.cfg.id;
        let prs = self.raw.raft.prs();
        // A delivered snapshot stops holding once acknowledged or set back (a failure, a new leader).
        self.delivered.retain(|id, at| {
            prs.get(*id).is_some_and(|pr| {
                pr.state == raft::ProgressState::Probe && pr.matched < *at && pr.next_idx == *at + 1
            })
        });
        let peers: Vec<PeerNeed> = prs
            .iter()
            .filter(|(id, _)| **id != me)
            .filter_map(|(id, pr)| peer_need(pr, self.delivered.get(id).copied()))
            .collect();
        // Held back (a follower still needs the entries), it is tried again on the next turn.
        let target = compaction_target(self.compact_to, start, &held, &peers);
        if target <= start {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let res = guard("compaction", || {
            let txn = super::storage::begin_durable(&self.db)?;
            let reached = self.raw.mut_store().compact_log(&txn, target, COMPACT_STEP_BYTES)?;
            txn.commit()?;
            Ok(reached)
        });
        match res {
            Ok(reached) => {
                self.raw.mut_store().commit_staged();
                let freed = log_bytes.saturating_sub(self.raw.store().applied_log_bytes());
                self.compacted_bytes += freed;
                let took = started.elapsed();
                self.work.compact += took;
                super::fsync_stats::SNAPSHOTS.compacted(freed, took);
                tracing::debug!(node = self.cfg.id, index = reached, target, "log compacted");
                Ok(())
            }
            Err(e) => {
                self.raw.mut_store().abort_staged();
                Err(e)
            }
        }
    }

    /// Starts a snapshot build (at most one at a time) when raft-rs asked for a snapshot no file holds.
    /// Inline, it is recorded at once; on a thread, [`Core::finish_snapshot`] records it when the builder
    /// reports.
    fn maybe_build(&mut self) -> Result<(), StoreError> {
        if self.building.is_some() || !self.raw.store().take_snapshot_wanted() {
            return Ok(());
        }
        let db = self.db.clone();
        let dir = self.raw.store().snap_dir().clone();
        match &self.build_mode {
            BuildMode::Inline => {
                let r = guard("snapshot build", || build_snapshot::<F>(&db, &dir));
                self.record_snapshot(r)
            }
            BuildMode::Thread(done) => {
                let done = done.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("snap-{}", self.cfg.id))
                    .spawn(move || done(guard("snapshot build", || build_snapshot::<F>(&db, &dir))));
                match spawned {
                    Ok(h) => {
                        self.building = Some(h);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(node = self.cfg.id, error = %e, "cannot start the snapshot builder");
                        Ok(())
                    }
                }
            }
        }
    }

    /// The builder thread reported: record its file (or stop on damage). Returns the node's fatal error
    /// if it stopped.
    pub fn finish_snapshot(&mut self, r: BuildOutcome) -> Result<(), RaftError> {
        if let Some(h) = self.building.take() {
            // The thread has sent its outcome: it is finishing now.
            if h.join().is_err() {
                tracing::error!(node = self.cfg.id, "snapshot builder panicked");
            }
        }
        if self.fatal.is_some() {
            return self.check_damage();
        }
        if let Err(e) = self.record_snapshot(r) {
            return Err(self.set_fatal(&e));
        }
        Ok(())
    }

    /// Records a built file as the one to send. A build that failed without damage (file limit, I/O) is
    /// skipped: raft-rs asks again. A file the log start passed meanwhile (the log outgrew what a build
    /// may hold, [`HELD_LOG_FACTOR`]) or not newer than the kept one is dropped.
    fn record_snapshot(&mut self, r: BuildOutcome) -> Result<(), StoreError> {
        let b = match r {
            Ok(b) => b,
            Err(e @ StoreError::Damaged(_)) => return Err(e),
            Err(e) => {
                if !self.build_warned {
                    tracing::warn!(node = self.cfg.id, error = %e, "snapshot build failed; retrying later");
                    self.build_warned = true;
                }
                return Ok(());
            }
        };
        self.build_warned = false;
        if !self.raw.store().takes_file(b.index) {
            // The log start passed it, or the kept file is as new: the hold's drop deletes the file.
            return Ok(());
        }
        let res = guard("recording a snapshot file", || {
            let txn = super::storage::begin_durable(&self.db)?;
            self.raw.mut_store().record_file(&txn, b.index, b.term, &b.file)?;
            txn.commit()?;
            Ok(())
        });
        match res {
            Ok(()) => {
                self.raw.mut_store().commit_staged();
                tracing::debug!(
                    node = self.cfg.id,
                    index = b.index,
                    bytes = b.file.size,
                    "snapshot recorded"
                );
                // The file is current now: letting go of the build's claim keeps it.
                drop(b.hold);
                // Requests raft-rs made while the build ran are answered by this file; one it cannot serve
                // is made again (on the follower's next heartbeat response). Left set, it started a second
                // build of the whole state at once (947 MB at 1.5 M objects, `bench fleet` run R).
                self.raw.store().take_snapshot_wanted();
                Ok(())
            }
            Err(e) => {
                self.raw.mut_store().abort_staged();
                Err(e)
            }
        }
    }
}

/// Bytes of log records one compaction step deletes (one write transaction, one turn of the loop; the
/// next turns go on towards the target). Deleting 64 MiB at once took 466-1,133 ms of a Raft turn at
/// 1.5 M objects, on every member at once (`bench fleet` run S3, session 22).
pub const COMPACT_STEP_BYTES: u64 = 4 << 20;

/// The log a leader keeps for its followers (and while a build for one runs) may grow to this many times
/// the compaction trigger (`snapshot_log_bytes`, or the default when compacting by count only) before it
/// is compacted anyway: a follower that far behind gets a snapshot instead, and the disk stays bounded
/// (512 MiB with the defaults, beside a 1.5 M-object state of about 1.7 GiB and its snapshot file).
pub const HELD_LOG_FACTOR: u64 = 8;

/// What holds a compaction back ([`compaction_target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHolds {
    /// Only a leader keeps log for others.
    pub leader: bool,
    /// A build for a follower is running: the log start must not pass its index (unknown until it ends).
    pub building: bool,
    /// The log is at `HELD_LOG_FACTOR` times its trigger: nothing holds it any more.
    pub over_limit: bool,
    /// The index of the kept snapshot file.
    pub file: Option<u64>,
}

/// A recently active follower, as the leader's progress tracker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNeed {
    /// A snapshot is being sent to it (raft-rs's Snapshot state).
    pub sending: bool,
    pub matched: u64,
    /// The index of the snapshot being sent.
    pub pending_snapshot: u64,
}

/// What a follower's progress asks of the leader's log ([`compaction_target`]), or nothing:
/// - a snapshot is streaming to it (Snapshot state), or was delivered (`delivered`, the transport's
///   report) and not acknowledged yet: it is installing, which at 1.5 M objects keeps its loop busy for
///   seconds, long enough to stop counting as recently active. The log after that snapshot, whether or
///   not it was heard from lately; a failed send sets it back, which releases this;
/// - otherwise, if it was heard from within an election timeout (raft-rs's `recent_active`, kept up by
///   check-quorum), what it matched; a follower cut off holds nothing.
fn peer_need(pr: &raft::Progress, delivered: Option<u64>) -> Option<PeerNeed> {
    if pr.state == raft::ProgressState::Snapshot {
        return Some(PeerNeed { sending: true, matched: pr.matched, pending_snapshot: pr.pending_snapshot });
    }
    if let Some(at) = delivered {
        return Some(PeerNeed { sending: true, matched: pr.matched, pending_snapshot: at });
    }
    pr.recent_active.then_some(PeerNeed { sending: false, matched: pr.matched, pending_snapshot: 0 })
}

/// Where to compact the log to: `applied` (the caller passes the last trigger's point), except on a leader whose recently active followers
/// still need entries: it keeps the log after what each has (a follower a snapshot is being sent to: after
/// the snapshot's index; one behind the log start: after the kept file, which it will be sent), and keeps
/// all of it while a build runs. A follower cut off is not recently active and holds nothing; past
/// [`HELD_LOG_FACTOR`] nothing holds the log.
pub fn compaction_target(applied: u64, start: u64, held: &LogHolds, peers: &[PeerNeed]) -> u64 {
    if !held.leader || held.over_limit {
        return applied;
    }
    if held.building {
        return start;
    }
    peers.iter().fold(applied, |t, p| {
        let need = if p.sending {
            p.pending_snapshot
        } else if p.matched >= start {
            p.matched
        } else {
            held.file.filter(|f| *f >= start).unwrap_or(start)
        };
        t.min(need)
    })
}

impl<F: Fsm> Drop for Core<F> {
    /// Cancels a build still running (it stops at its next chunk) without waiting for it: during a panic's
    /// unwinding the mailbox its outcome goes to may still be open and full. The normal shutdown waits
    /// (`stop_builder`, after closing the mailbox).
    fn drop(&mut self) {
        if self.building.take().is_some() {
            self.storage().snap_dir().cancel();
        }
    }
}

fn fsm_store_err(e: FsmError) -> StoreError {
    match e {
        FsmError::Corrupt(m) => StoreError::Damaged(format!("fsm: {m}")),
        e => StoreError::Invariant(format!("fsm: {e}")),
    }
}

/// Commit `txn` without an fsync (redb `Durability::None`): for a write that holds only a commit index
/// and applied entries, which raft does not need durable (raft-rs `Ready::must_sync`, etcd's `MustSync`).
/// redb keeps commits in order and a later durable commit (the next Ready with entries, a term or a vote)
/// persists every commit before it, so the file after a crash is always some earlier commit of the
/// sequence: the applied index, the commit index and the state machine's tables of one moment, never
/// ahead of the durable log. A member that loses such commits applies those entries again from its log
/// at start (the same bytes give the same outcome); every acknowledged entry is in the logs of a
/// majority before it is applied anywhere, so an acknowledgement never depends on it.
fn lazy_durability(txn: &mut WriteTransaction) -> Result<(), StoreError> {
    txn.set_durability(redb::Durability::None).map_err(|e| StoreError::from(redb::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state machine whose snapshot is `SNAP` zero bytes whatever it applied. Its restore reads the
    /// snapshot twice in small reads, as the master's does (check, then replace), and checks the bytes.
    struct TestFsm<const SNAP: usize>;
    type NopFsm = TestFsm<0>;
    const BIG_SNAPSHOT: usize = 1 << 20;
    impl<const SNAP: usize> Fsm for TestFsm<SNAP> {
        fn apply(&mut self, _: &WriteTransaction, index: u64, _: &[u8]) -> Result<Vec<u8>, FsmError> {
            Ok(index.to_le_bytes().to_vec())
        }
        fn write_snapshot(_: &redb::ReadTransaction, out: &mut dyn std::io::Write) -> Result<(), FsmError> {
            out.write_all(&vec![0u8; SNAP])?;
            Ok(())
        }
        fn restore(
            &mut self,
            _: &WriteTransaction,
            src: &dyn crate::raft::SnapshotSource,
        ) -> Result<(), FsmError> {
            // In small reads, as the master's record reader does.
            for _ in 0..2 {
                let (mut r, mut buf, mut total) = (src.open()?, [0u8; 4096], 0);
                loop {
                    let n = std::io::Read::read(&mut r, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    assert!(buf[..n].iter().all(|b| *b == 0), "the snapshot's bytes pass through unchanged");
                    total += n;
                }
                assert_eq!(total, SNAP);
            }
            Ok(())
        }
    }

    /// Member 1 of `voters`, its store in `dir`: election after `election_ticks` (raft-rs waits up to
    /// `max_election_ticks`), a snapshot every `snapshot_every` entries (0: never by count).
    fn core<const SNAP: usize>(
        dir: &std::path::Path,
        voters: &[u64],
        elections: (usize, usize),
        snapshot_every: u64,
    ) -> Core<TestFsm<SNAP>> {
        core_of::<SNAP>(1, dir, voters, elections, snapshot_every)
    }

    /// [`core`] for member `id` of `voters`.
    fn core_of<const SNAP: usize>(
        id: u64,
        dir: &std::path::Path,
        voters: &[u64],
        (election_ticks, max_election_ticks): (usize, usize),
        snapshot_every: u64,
    ) -> Core<TestFsm<SNAP>> {
        let (_db, st) = crate::raft::sim::open_store::<TestFsm<SNAP>>(dir, id, voters);
        let cfg = CoreConfig {
            id,
            election_ticks,
            heartbeat_ticks: 2,
            snapshot_every,
            min_election_ticks: 0,
            max_election_ticks,
            campaign_jitter: false,
            incarnation: 1,
        };
        Core::new(cfg, st, TestFsm::<SNAP>, &slog::Logger::root(slog::Discard, slog::o!())).expect("core")
    }

    /// A follower of a 3-member cluster; raft-rs may wait up to 3x the election timeout before campaigning.
    fn follower(dir: &std::path::Path, election_ticks: usize) -> Core<NopFsm> {
        core(dir, &[1, 2, 3], (election_ticks, 3 * election_ticks), 0)
    }

    /// Issue 13 item 10: a follower keeps pointing at a dead leader until its randomised election timeout
    /// fires (raft-rs clears `leader_id` only when it campaigns). The hint must go once the leader has been
    /// silent for the election timeout, while the follower is still waiting to campaign.
    #[test]
    fn follower_forgets_a_silent_leader_after_the_election_timeout() {
        let tmp = tempfile::tempdir().expect("tmp");
        let election = 10;
        let mut c = follower(tmp.path(), election);
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        hb.from = 2;
        hb.to = 1;
        hb.term = 2;
        hb.commit = 1;
        c.step(hb.clone());
        // Campaigning only after 2.5 timeouts leaves a window where raft-rs still names the leader.
        c.raw.raft.set_randomized_election_timeout(25);
        assert_eq!((c.role(), c.leader()), (StateRole::Follower, Some(2)));
        for _ in 0..election - 1 {
            c.tick();
        }
        assert_eq!(c.leader(), Some(2), "heard from within the election timeout");
        assert_eq!(
            c.propose(1, b"x".to_vec()),
            Err(ProposeError::NotLeader { leader: Some(2), leader_addr: None })
        );
        c.tick();
        assert_eq!(c.role(), StateRole::Follower, "not campaigning yet");
        assert_eq!(c.raw.raft.leader_id, 2, "raft-rs still names the silent leader");
        assert_eq!(c.leader(), None, "silent for the election timeout: no leader known");
        assert_eq!(
            c.propose(2, b"x".to_vec()),
            Err(ProposeError::NotLeader { leader: None, leader_addr: None })
        );
        assert_eq!(c.read_index(3), Err(ProposeError::NotLeader { leader: None, leader_addr: None }));
        // The leader speaks again: it is named again at once.
        c.step(hb);
        assert_eq!(c.leader(), Some(2));
    }

    /// Ranks count the distinct member ids below a member's own, whatever the order or repeats given.
    #[test]
    fn election_rank_is_the_place_among_the_members() {
        use crate::raft::election_rank;
        assert_eq!(election_rank(1, [3, 1, 2]), 0);
        assert_eq!(election_rank(3, [1, 2, 3, 3, 2]), 2, "repeats count once");
        assert_eq!(election_rank(7, [7, 12, 4]), 1, "ids need not be 1..N");
        assert_eq!(election_rank(5, []), 0, "no member known: rank 0");
    }

    /// Member `id` of [1, 2, 3] with its rank's fixed election timeout (10 election ticks), as real nodes
    /// have; returns it with that timeout in ticks.
    fn ranked(dir: &std::path::Path, id: u64, campaign_jitter: bool) -> (Core<NopFsm>, usize) {
        let (_db, st) = crate::raft::sim::open_store::<NopFsm>(dir, id, &[1, 2, 3]);
        let (min, max) = crate::raft::ranked_election_ticks(10, crate::raft::election_rank(id, [1, 2, 3]));
        let cfg = CoreConfig {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 0,
            min_election_ticks: min,
            max_election_ticks: max,
            campaign_jitter,
            incarnation: 1,
        };
        let c =
            Core::new(cfg, st, TestFsm::<0>, &slog::Logger::root(slog::Discard, slog::o!())).expect("core");
        (c, min)
    }

    /// A member with a fixed (ranked) timeout campaigns exactly at it, then, while its campaign goes
    /// unanswered, lets each tick through with probability 1/2 (`campaign_jitter`): its retries come at random
    /// times, so two members that collided once do not stay in lockstep. Without the jitter, every tick counts.
    #[test]
    fn a_campaigning_member_skips_ticks_at_random_only_with_jitter() {
        for jitter in [true, false] {
            let tmp = tempfile::tempdir().expect("tmp");
            let (mut c, min) = ranked(tmp.path(), 2, jitter);
            for _ in 0..min - 1 {
                c.tick();
            }
            assert_eq!(c.role(), StateRole::Follower, "jitter {jitter}: not before its rank's timeout");
            c.tick();
            assert_eq!(c.role(), StateRole::PreCandidate, "jitter {jitter}: exactly at 12 ticks");
            assert_eq!(c.skipped_ticks(), 0, "a follower's ticks all count");
            // Nobody answers: the member keeps campaigning; 2,000 ticks with the jitter skip about 1,000
            // (a binomial's standard deviation is 22; the bounds are 13 of them away).
            for _ in 0..2_000 {
                c.tick();
            }
            assert!(matches!(c.role(), StateRole::PreCandidate | StateRole::Candidate));
            let skipped = c.skipped_ticks();
            if jitter {
                assert!((700..=1_300).contains(&skipped), "skipped {skipped} of 2000");
            } else {
                assert_eq!(skipped, 0);
            }
        }
    }

    /// A heartbeat committing past the follower's log (sent by a leader whose progress for this member
    /// predates its rejoin, delivered after the member installed a snapshot) commits nothing, does not
    /// panic the raft loop, and is answered with a rejection naming the follower's last index. Before the
    /// fix raft-rs panicked: "to_commit 65 is out of range [last_index 1]" (fault suite, CI 2026-12-02).
    #[test]
    fn heartbeat_committing_past_the_log_is_refused_not_fatal() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut c = follower(tmp.path(), 10);
        let last = c.raw.raft.raft_log.last_index();
        let committed = c.raw.raft.raft_log.committed;
        assert!(c.raw.store().has_conf(), "a member with conf state, as after a snapshot");
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        hb.from = 2;
        hb.to = 1;
        hb.term = 2;
        hb.commit = last + 64;
        c.step(hb.clone());
        assert!(c.fatal.is_none(), "the raft loop survives");
        assert_eq!(c.raw.raft.raft_log.committed, committed, "nothing committed by the heartbeat");
        assert_eq!((c.role(), c.leader()), (StateRole::Follower, Some(2)), "the leader is still heard");
        let reject = c.extra_out.iter().find(|r| r.get_msg_type() == MessageType::MsgAppendResponse);
        let reject = reject.expect("a rejection so the leader resets its progress");
        assert!(reject.reject && reject.reject_hint == last && reject.to == 2, "{reject:?}");
        // A heartbeat within the log is handled as raft-rs always did: no rejection.
        c.extra_out.clear();
        hb.commit = last;
        c.step(hb);
        assert!(c.extra_out.is_empty(), "{:?}", c.extra_out);
    }

    /// Drives a single-member core until it leads.
    fn lead<const SNAP: usize>(c: &mut Core<TestFsm<SNAP>>) {
        for _ in 0..12 {
            c.tick();
            settle(c);
        }
        assert_eq!(c.role(), StateRole::Leader);
    }

    fn settle<const SNAP: usize>(c: &mut Core<TestFsm<SNAP>>) {
        while c.has_ready() {
            c.on_ready(&mut |_| {}).expect("ready");
        }
    }

    /// The log is compacted every `snapshot_every` entries, up to the previous trigger's point (one
    /// trigger's worth of entries stays), without building a file: the bootstrap file, which the log start
    /// passed, is let go and deleted, and nothing else is written to the snapshot directory. The log start
    /// and the missing file survive a restart.
    #[test]
    fn the_log_keeps_one_trigger_of_entries_and_is_compacted_without_a_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut c = core::<0>(tmp.path(), &[1], (10, 11), 20);
        lead(&mut c);
        let dir = c.storage().snap_dir().clone();
        assert_eq!(c.storage().file_index(), Some(1), "the bootstrap file");
        let mut starts = Vec::new();
        for t in 0..100u64 {
            c.propose(t, b"x".to_vec()).expect("propose");
            settle(&mut c);
            let st = c.storage();
            if starts.last() != Some(&st.snapshot_index()) {
                starts.push(st.snapshot_index());
            }
            let kept = c.applied() - st.snapshot_index();
            assert!(kept <= 40, "after entry {t}: {kept} entries kept, log start {starts:?}");
            if starts.len() > 1 {
                assert!(kept >= 20, "after entry {t}: {kept} entries kept, log start {starts:?}");
            }
        }
        assert!(starts.len() >= 4, "compacted every 20 entries: {starts:?}");
        assert_eq!(c.storage().file_index(), None, "the bootstrap file is let go");
        assert!(dir.files().expect("ls").is_empty(), "no file built or kept: {:?}", dir.files());
        let (start, applied) = (c.storage().snapshot_index(), c.applied());
        drop(c);
        let c = core::<0>(tmp.path(), &[1], (10, 11), 20);
        assert_eq!(
            (c.storage().snapshot_index(), c.applied(), c.storage().file_index()),
            (start, applied, None)
        );
        assert_eq!(raft::Storage::first_index(c.storage()).expect("first"), start + 1);
    }

    /// A snapshot asked for when no file stands at or after the log start is built from the applied
    /// state on the next turn (raft-rs asks again and gets it); it is not rebuilt while it serves, and it
    /// is let go once the log start passes it.
    #[test]
    fn a_snapshot_asked_for_is_built_from_the_applied_state() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut c = core::<0>(tmp.path(), &[1], (10, 11), 10);
        lead(&mut c);
        for t in 0..25u64 {
            c.propose(t, b"x".to_vec()).expect("propose");
            settle(&mut c);
        }
        let start = c.storage().snapshot_index();
        assert!(start > 1 && c.storage().file_index().is_none(), "log start {start}");
        let asked = raft::Storage::snapshot(c.storage(), 0, 2).expect_err("no file yet");
        assert_eq!(asked, raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
        assert!(c.has_ready(), "a wanted snapshot is work for the loop");
        settle(&mut c);
        let applied = c.applied();
        let snap = raft::Storage::snapshot(c.storage(), 0, 2).expect("built");
        assert_eq!(snap.get_metadata().index, applied);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1]);
        let desc = Descriptor::decode(snap.get_data()).expect("descriptor");
        let dir = c.storage().snap_dir().clone();
        assert_eq!(dir.files().expect("ls"), vec![desc.name.clone()]);
        assert_eq!(c.storage().snapshot_index(), start, "building does not compact");
        // Asked again, the same file serves; a request past it asks for a newer one.
        let again = raft::Storage::snapshot(c.storage(), 0, 2).expect("kept");
        assert_eq!(again.get_data(), snap.get_data());
        assert!(!c.has_ready());
        assert!(raft::Storage::snapshot(c.storage(), applied + 1, 2).is_err());
        assert!(c.storage().take_snapshot_wanted());
        for t in 25..60u64 {
            c.propose(t, b"y".to_vec()).expect("propose");
            settle(&mut c);
        }
        assert!(c.storage().snapshot_index() > applied);
        assert_eq!(c.storage().file_index(), None, "the log start passed the file");
        assert!(dir.files().expect("ls").is_empty(), "and it was deleted");
    }

    /// What a leader keeps for its recently active followers ([`compaction_target`]).
    #[test]
    fn a_leader_keeps_the_log_its_active_followers_still_need() {
        let held = |leader, building, over_limit, file| LogHolds { leader, building, over_limit, file };
        let peer = |matched, sending: Option<u64>| PeerNeed {
            sending: sending.is_some(),
            matched,
            pending_snapshot: sending.unwrap_or(0),
        };
        let quick = [peer(100, None), peer(98, None)];
        // A follower or a leader with followers at the end compacts to the applied index...
        assert_eq!(compaction_target(100, 50, &held(false, false, false, None), &[peer(10, None)]), 100);
        assert_eq!(compaction_target(100, 50, &held(true, false, false, None), &quick[..1]), 100);
        // ...a leader keeps what the slowest active follower lacks...
        assert_eq!(compaction_target(100, 50, &held(true, false, false, None), &quick), 98);
        // ...a follower a snapshot at 70 is being sent to keeps the log after 70...
        assert_eq!(
            compaction_target(100, 50, &held(true, false, false, Some(70)), &[peer(20, Some(70))]),
            70
        );
        // ...one behind the log start keeps it after the kept file, or where it is without one...
        assert_eq!(compaction_target(100, 50, &held(true, false, false, Some(60)), &[peer(20, None)]), 60);
        assert_eq!(compaction_target(100, 50, &held(true, false, false, Some(40)), &[peer(20, None)]), 50);
        assert_eq!(compaction_target(100, 50, &held(true, false, false, None), &[peer(20, None)]), 50);
        // ...a running build keeps all of it; past the limit nothing holds it.
        assert_eq!(compaction_target(100, 50, &held(true, true, false, None), &quick[..1]), 50);
        assert_eq!(compaction_target(100, 50, &held(true, true, true, None), &[peer(20, Some(70))]), 100);
    }

    /// Compaction by bytes (issue 13 item 9): a few large entries trigger a compaction long before
    /// `snapshot_every` entries, and the log keeps at most about twice the byte limit (one trigger's worth
    /// stays after each compaction).
    #[test]
    fn large_entries_compact_by_bytes_before_the_entry_count() {
        let tmp = tempfile::tempdir().expect("tmp");
        let limit = 1 << 20;
        let mut c = core::<0>(tmp.path(), &[1], (10, 11), 10_000).with_snapshot_log_bytes(limit);
        let db = c.storage().db().clone();
        for _ in 0..12 {
            c.tick();
            while c.has_ready() {
                c.on_ready(&mut |_| {}).expect("ready");
            }
        }
        assert_eq!(c.role(), StateRole::Leader);
        let entry = 300 << 10;
        for t in 0..10u64 {
            c.propose(t, vec![7u8; entry]).expect("propose");
            while c.has_ready() {
                c.on_ready(&mut |_| {}).expect("ready");
            }
            let st = c.storage();
            assert!(
                st.applied_log_bytes() < 2 * limit + entry as u64,
                "after entry {t}: {} applied log bytes kept, limit {limit}",
                st.applied_log_bytes()
            );
        }
        assert!(c.storage().snapshot_index() > 1, "compacted by bytes, not by the 10,000-entry count");
        let r = db.begin_read().expect("r");
        let rows = redb::ReadableTableMetadata::len(&r.open_table(super::super::storage::LOG).expect("log"))
            .expect("len");
        assert!(rows <= 8, "{rows} log records of 300 KiB kept with a 1 MiB limit");
    }

    /// A compaction deletes at most `COMPACT_STEP_BYTES` (plus the record that reaches it) per step, one
    /// step per turn, and goes on over the next turns: 8 MiB of 512 KiB entries goes in two steps.
    #[test]
    fn a_compaction_goes_in_bounded_steps_over_turns() {
        let tmp = tempfile::tempdir().expect("tmp");
        let limit = 8 << 20;
        let mut c = core::<0>(tmp.path(), &[1], (10, 11), 0).with_snapshot_log_bytes(limit);
        lead(&mut c);
        let entry = 512 << 10;
        let mut starts = vec![c.storage().snapshot_index()];
        for t in 0..48u64 {
            c.propose(t, vec![5u8; entry]).expect("propose");
            while c.has_ready() {
                c.on_ready(&mut |_| {}).expect("ready");
                let now = c.storage().snapshot_index();
                if starts.last() != Some(&now) {
                    starts.push(now);
                }
            }
        }
        let steps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        let per_step = COMPACT_STEP_BYTES / entry as u64 + 1;
        assert!(steps.len() >= 3, "compacted in steps: log start {starts:?}");
        assert!(steps.iter().all(|s| *s <= per_step), "at most {per_step} entries a step: {starts:?}");
        assert!(
            c.storage().applied_log_bytes() < 2 * limit + COMPACT_STEP_BYTES,
            "{} bytes of log kept",
            c.storage().applied_log_bytes()
        );
    }

    /// Issue 17: a received snapshot is restored with the database file flushed as it goes (every
    /// `every` bytes of snapshot read, both passes), not left to the commit's one fsync: a 1 MiB snapshot
    /// read twice with a flush every 64 KiB flushes 32 times, and the install lands at its index.
    #[test]
    fn a_received_snapshot_is_restored_with_the_database_flushed_as_it_goes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let c = core::<BIG_SNAPSHOT>(tmp.path(), &[1, 2, 3], (10, 11), 0);
        let flush = Flusher::open(&crate::raft::node::db_path(tmp.path())).expect("flusher").every(64 << 10);
        let mut c = c.with_restore_flush(flush);
        let mut w = c.storage().snap_dir().create(40, 2).expect("create");
        std::io::Write::write_all(&mut w, &vec![0u8; BIG_SNAPSHOT]).expect("write");
        let (desc, hold) = w.finish().expect("finish");
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        (m.from, m.to, m.term) = (2, 1, 2);
        let snap = m.mut_snapshot();
        snap.set_data(desc.encode().into());
        let meta = snap.mut_metadata();
        (meta.index, meta.term) = (40, 2);
        meta.mut_conf_state().voters = vec![1, 2, 3];
        c.step_snapshot(m, hold);
        c.on_ready(&mut |_| {}).expect("ready");
        assert_eq!((c.storage().snapshot_index(), c.applied()), (40, 40), "installed");
        assert_eq!(c.restore_flush.as_ref().map(Flusher::flushes), Some(32), "16 flushes per pass");
    }

    /// What a follower's progress holds of the leader's log: a snapshot streaming or delivered and not yet
    /// acknowledged holds the log after it even once the follower, busy installing, is no longer recently
    /// active; otherwise only a recently active follower holds what it matched.
    #[test]
    fn a_follower_installing_a_snapshot_holds_the_log_after_it() {
        let mut pr = raft::Progress::new(11, 16);
        pr.matched = 10;
        pr.recent_active = true;
        assert_eq!(peer_need(&pr, None), Some(PeerNeed { sending: false, matched: 10, pending_snapshot: 0 }));
        pr.recent_active = false;
        assert_eq!(peer_need(&pr, None), None, "cut off: holds nothing");
        pr.become_snapshot(70);
        assert_eq!(peer_need(&pr, None).map(|n| (n.sending, n.pending_snapshot)), Some((true, 70)));
        // Delivered: raft-rs probes after it; the follower installs, silent.
        pr.become_probe();
        assert_eq!(pr.next_idx, 71);
        assert_eq!(peer_need(&pr, Some(70)).map(|n| (n.sending, n.pending_snapshot)), Some((true, 70)));
        let held = LogHolds { leader: true, building: false, over_limit: false, file: Some(70) };
        let need = peer_need(&pr, Some(70)).expect("held");
        assert_eq!(compaction_target(100, 50, &held, &[need]), 70);
    }

    /// The builder's path without a thread: a file built at index X while the loop went on applying is
    /// recorded after the fact as the file to send, without touching the log, and answers the requests
    /// raft-rs made meanwhile; one not newer than the kept file is dropped, its file deleted.
    #[test]
    fn a_build_finished_behind_the_applied_index_is_recorded_without_compacting() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut c = core::<0>(tmp.path(), &[1], (10, 11), 0).with_snapshot_log_bytes(0);
        let db = c.storage().db().clone();
        lead(&mut c);
        for t in 0..5u64 {
            c.propose(t, vec![1u8; 100]).expect("propose");
            settle(&mut c);
        }
        let dir = c.storage().snap_dir().clone();
        let old = c.storage().snapshot_file().expect("bootstrap file").name.clone();
        let built = build_snapshot::<NopFsm>(&db, &dir).expect("build");
        let at = built.index;
        assert_eq!(at, c.applied());
        for t in 5..8u64 {
            c.propose(t, vec![2u8; 100]).expect("propose");
            settle(&mut c);
        }
        assert_eq!(c.applied(), at + 3);
        let (start, kept) = (c.storage().snapshot_index(), c.storage().applied_log_bytes());
        let name = built.file.name.clone();
        // raft-rs asked (again) while the build ran; the recorded file answers it, so no second build.
        assert!(raft::Storage::snapshot(c.storage(), at, 2).is_err());
        assert!(c.has_ready(), "a request is work for the loop");
        c.finish_snapshot(Ok(built)).expect("recorded");
        assert!(!c.has_ready(), "the request made during the build is answered by its file");
        assert_eq!(raft::Storage::snapshot(c.storage(), at, 2).expect("served").get_metadata().index, at);
        assert_eq!(c.storage().file_index(), Some(at));
        assert_eq!(
            (c.storage().snapshot_index(), c.storage().applied_log_bytes()),
            (start, kept),
            "log untouched"
        );
        assert!(kept >= 8 * (LOG_RECORD_OVERHEAD + 100), "{kept}");
        let files = dir.files().expect("ls");
        assert_eq!(files, vec![name], "the superseded file {old} is gone");
        // A build not newer than the kept file is dropped, its file with it.
        let stale = build_snapshot::<NopFsm>(&db, &dir).expect("build");
        let stale_name = stale.file.name.clone();
        let mut older = stale;
        older.index = at;
        c.finish_snapshot(Ok(older)).expect("ignored");
        assert_eq!(c.storage().file_index(), Some(at));
        assert!(!dir.files().expect("ls").contains(&stale_name), "its file was deleted");
    }

    /// A follower short of disk drops appends that carry entries (nothing written, counted, exported), still
    /// steps heartbeats (it keeps its leader and commits within the log it has), and takes the next append
    /// once its alarm clears. Without the check the first append is taken (tried).
    #[test]
    fn a_follower_short_of_disk_drops_appends_until_space_returns() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut c = follower(tmp.path(), 10);
        let first = c.raw.raft.raft_log.last_index() + 1;
        let log_term = c.raw.raft.raft_log.last_term();
        let append = |from_index: u64, n: u64| {
            let mut app = Message::default();
            app.set_msg_type(MessageType::MsgAppend);
            app.from = 2;
            app.to = 1;
            app.term = 2;
            app.index = from_index - 1;
            app.log_term = if from_index == first { log_term } else { 2 };
            app.commit = from_index + n - 1;
            app.entries = (0..n)
                .map(|i| Entry {
                    index: from_index + i,
                    term: 2,
                    data: vec![7u8; 64].into(),
                    ..Default::default()
                })
                .collect();
            app
        };
        let drain = |c: &mut Core<NopFsm>| {
            while c.has_ready() {
                c.on_ready(&mut |_| {}).expect("ready");
            }
        };
        let exported_before = crate::raft::fsync_stats::TURNS
            .appends_refused_nospace
            .load(std::sync::atomic::Ordering::Relaxed);
        c.set_short_of_disk(true);
        c.step(append(first, 5));
        c.step(append(first, 5));
        drain(&mut c);
        assert_eq!(c.raw.raft.raft_log.last_index(), first - 1, "nothing appended while short of disk");
        assert_eq!(c.appends_refused(), 2);
        let exported = crate::raft::fsync_stats::TURNS
            .appends_refused_nospace
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(exported >= exported_before + 2, "exported {exported}");
        // A heartbeat is still stepped: the member follows the leader of term 2.
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        hb.from = 2;
        hb.to = 1;
        hb.term = 2;
        hb.commit = first - 1;
        c.step(hb);
        drain(&mut c);
        assert_eq!((c.role(), c.leader()), (StateRole::Follower, Some(2)));
        // A linearizable read could only be answered once space returns: it is sent to the leader at once.
        assert_eq!(c.read_index(1), Err(ProposeError::ShortOfDisk { leader: Some(2) }));
        // Space back: the same append is taken and applied.
        c.set_short_of_disk(false);
        c.step(append(first, 5));
        drain(&mut c);
        assert_eq!(c.raw.raft.raft_log.last_index(), first + 4, "the append is taken once space returns");
        assert_eq!(c.applied(), first + 4);
        assert_eq!(c.appends_refused(), 2);
        assert_eq!(c.read_index(2), Ok(()), "reads are served again");
    }

    /// A backlog of committed entries is applied over several Readies, each at most the limit in force
    /// ([`apply_limit`], plus one entry) in the Ready and again in the LightReady, and every entry exactly
    /// once, in order. Before the limit, one Ready applied the whole backlog.
    #[test]
    fn a_committed_backlog_is_applied_a_bounded_amount_per_ready() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut c = follower(tmp.path(), 10);
        let first = c.raw.raft.raft_log.last_index() + 1;
        let log_term = c.raw.raft.raft_log.last_term();
        let (count, size) = (3_000u64, 4_096usize);
        let mut app = Message::default();
        app.set_msg_type(MessageType::MsgAppend);
        app.from = 2;
        app.to = 1;
        app.term = 2;
        app.index = first - 1;
        app.log_term = log_term;
        app.commit = first + count - 1;
        app.entries = (0..count)
            .map(|i| Entry { index: first + i, term: 2, data: vec![1u8; size].into(), ..Default::default() })
            .collect();
        c.step(app);
        let per_entry = u64::try_from(size).expect("size") + 64;
        let (mut readies, mut applied) = (0, 0);
        while c.has_ready() {
            c.on_ready(&mut |_| {}).expect("ready");
            let w = c.take_work();
            readies += 1;
            assert!(w.bytes <= 2 * (w.limit + per_entry), "Ready {readies} applied beyond its limit: {w:?}");
            if readies == 1 {
                assert_eq!(w.limit, MIN_APPLY_BYTES_PER_READY, "a member starts at the bottom");
            }
            applied += w.entries;
            assert!(readies < 1_000, "the backlog never drained");
        }
        assert_eq!((applied, c.applied()), (count, first + count - 1), "every entry applied once");
        assert!(readies >= 2, "{readies} Readies for {} bytes", count * per_entry);
    }

    /// The per-Ready limit follows the measured rate: about [`APPLY_BUDGET`] of applying, within its
    /// bounds; applies too short to time leave the rate alone.
    #[test]
    fn the_apply_limit_is_the_budget_at_the_measured_rate() {
        assert_eq!(apply_limit(0.0, APPLY_BUDGET), MIN_APPLY_BYTES_PER_READY, "unmeasured");
        assert_eq!(apply_limit(f64::NAN, APPLY_BUDGET), MIN_APPLY_BYTES_PER_READY);
        assert_eq!(apply_limit(5e6, APPLY_BUDGET), 1_000_000, "5 MB/s: 1 MB in 200 ms");
        assert_eq!(apply_limit(5e6, Duration::from_millis(50)), 250_000, "what the Ready left");
        assert_eq!(apply_limit(5e6, Duration::ZERO), 1, "budget spent: one entry");
        assert_eq!(apply_limit(1e12, APPLY_BUDGET), MAX_APPLY_BYTES_PER_READY);
        let r = next_apply_rate(0.0, 5_000_000, Duration::from_secs(1));
        assert!((r - 1.5e6).abs() < 1.0, "{r}");
        assert_eq!(next_apply_rate(r, 1 << 20, Duration::from_millis(1)), r, "1 ms is not timed");
        let mut r = 0.0;
        for _ in 0..30 {
            r = next_apply_rate(r, 2_000_000, Duration::from_millis(100));
        }
        assert!((r - 2e7).abs() < 2e5, "settles on 20 MB/s: {r}");
    }

    /// The leader dies and both survivors' timers fire before either's pre-vote arrives (a busy loop or a
    /// slow fsync holds the messages): the lower-ranked pre-candidate ignores the other's pre-vote
    /// (`PREVOTE_PRIORITY_TICKS`), is granted its own, and wins the next term's vote, so the term rises by
    /// one and no vote splits. (Without the rule both are granted the other's pre-vote, both become
    /// candidates of term 3 and each keeps its vote: checked by hand with the rule turned off.) When the
    /// higher-ranked one's log is newer it is answered as before and wins.
    #[test]
    fn simultaneous_pre_candidates_elect_one_leader_without_a_split_vote() {
        for newer_log_on_3 in [false, true] {
            let (t2, t3) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
            let (mut c2, min2) = ranked(t2.path(), 2, false);
            let (mut c3, min3) = ranked(t3.path(), 3, false);
            assert!(min2 < min3, "member 2 fires first");
            let last = c2.raw.raft.raft_log.last_index();
            let hb = |to| Message {
                msg_type: MessageType::MsgHeartbeat,
                from: 1,
                to,
                term: 2,
                commit: last,
                ..Default::default()
            };
            let mut net: Vec<Message> = Vec::new();
            let drain = |c: &mut Core<NopFsm>, net: &mut Vec<Message>| {
                while c.has_ready() {
                    c.on_ready(&mut |m| net.push(m)).expect("ready");
                }
            };
            c2.step(hb(2));
            c3.step(hb(3));
            if newer_log_on_3 {
                // Leader 1 appended one more entry that only member 3 received before it died.
                let e = Entry { term: 2, index: last + 1, data: b"x".to_vec().into(), ..Default::default() };
                c3.step(Message {
                    msg_type: MessageType::MsgAppend,
                    from: 1,
                    to: 3,
                    term: 2,
                    log_term: c3.raw.raft.raft_log.last_term(),
                    index: last,
                    commit: last,
                    entries: vec![e].into(),
                    ..Default::default()
                });
            }
            drain(&mut c2, &mut net);
            drain(&mut c3, &mut net);
            net.clear(); // answers to the dead leader
            for _ in 0..min2 {
                c2.tick();
            }
            drain(&mut c2, &mut net);
            for _ in 0..min3 {
                c3.tick();
            }
            drain(&mut c3, &mut net);
            assert_eq!((c2.role(), c3.role()), (StateRole::PreCandidate, StateRole::PreCandidate));
            // Deliver everything between the survivors until nothing moves (what goes to 1 is lost).
            for _ in 0..20 {
                let batch = std::mem::take(&mut net);
                if batch.is_empty() {
                    break;
                }
                for m in batch {
                    match m.to {
                        2 => c2.step(m),
                        3 => c3.step(m),
                        _ => {}
                    }
                }
                drain(&mut c2, &mut net);
                drain(&mut c3, &mut net);
            }
            let (winner, loser) = if newer_log_on_3 { (&c3, &c2) } else { (&c2, &c3) };
            assert_eq!(winner.role(), StateRole::Leader, "newer log on 3: {newer_log_on_3}");
            assert_eq!(loser.role(), StateRole::Follower, "newer log on 3: {newer_log_on_3}");
            assert_eq!((c2.raw.raft.term, c3.raw.raft.term), (3, 3), "one election, no split vote");
            assert_eq!(c2.prevotes_held_off(), u64::from(!newer_log_on_3));
            // The process's count on /metrics moves with it (other tests only ever add to it).
            let exported =
                crate::raft::fsync_stats::TURNS.prevotes_held_off.load(std::sync::atomic::Ordering::Relaxed);
            assert!(exported >= c2.prevotes_held_off(), "exported {exported}");
            assert_eq!(c3.prevotes_held_off(), 0, "a higher-ranked member never holds off a lower one");
        }
    }

    /// A follower that is not ready to lead lets its election timeout pass by `CAMPAIGN_DEFER_TICKS`
    /// before campaigning, while its leader lease runs out as usual, so it grants another member's
    /// pre-vote meanwhile; a ready one campaigns at its timeout.
    #[test]
    fn a_member_not_ready_to_lead_defers_its_campaign_but_still_votes() {
        for ready in [true, false] {
            let tmp = tempfile::tempdir().expect("tmp");
            let (mut c, min) = ranked(tmp.path(), 1, false);
            c.set_ready_to_lead(ready);
            let last = c.raw.raft.raft_log.last_index();
            let last_term = c.raw.raft.raft_log.last_term();
            // Leader 3 is heard once, then goes silent.
            let hb = Message {
                msg_type: MessageType::MsgHeartbeat,
                from: 3,
                to: 1,
                term: 2,
                commit: last,
                ..Default::default()
            };
            c.step(hb);
            while c.has_ready() {
                c.on_ready(&mut |_| {}).expect("ready");
            }
            assert_eq!(c.leader(), Some(3));
            for _ in 0..min - 1 {
                c.tick();
            }
            assert_eq!(c.role(), StateRole::Follower, "ready {ready}: not before the timeout");
            c.tick();
            if ready {
                assert_eq!(c.role(), StateRole::PreCandidate, "a ready member campaigns at its timeout");
                continue;
            }
            assert_eq!(c.role(), StateRole::Follower, "deferred");
            // Past the lease, another member's pre-vote is granted.
            let pre = Message {
                msg_type: MessageType::MsgRequestPreVote,
                from: 2,
                to: 1,
                term: 3,
                index: last,
                log_term: last_term,
                ..Default::default()
            };
            c.step(pre);
            let mut out = Vec::new();
            while c.has_ready() {
                c.on_ready(&mut |m| out.push(m)).expect("ready");
            }
            let answer = out.iter().find(|m| m.get_msg_type() == MessageType::MsgRequestPreVoteResponse);
            assert!(answer.is_some_and(|m| !m.reject && m.to == 2), "granted: {out:?}");
            for _ in 1..CAMPAIGN_DEFER_TICKS {
                c.tick();
            }
            assert_eq!(c.role(), StateRole::Follower, "still deferred after {CAMPAIGN_DEFER_TICKS} ticks");
            c.tick();
            assert_eq!(c.role(), StateRole::PreCandidate, "nobody else won: it campaigns after the deferral");
        }
    }
}
