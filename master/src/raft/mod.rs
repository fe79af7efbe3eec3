//! The master's consensus layer: a fixed-membership Raft group (raft-rs 0.7 `RawNode`) with durable redb
//! storage, a gRPC peer transport and a handle ([`RaftNode`]) the APIs use to propose commands, run
//! linearizable reads and read status. The replicated state machine plugs in through [`Fsm`].
//!
//! See `README.md` in this folder for the storage layout, the loop and the invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

pub mod alarms;
mod core;
pub mod fsync_stats;
mod logger;
mod node;
pub mod snapfile;
mod storage;
mod transport;
pub use snapfile::SnapshotSource;
pub use transport::set_peer_tls;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod snapbench;

pub use self::core::{MAX_COMMAND_BYTES, MAX_INFLIGHT_PROPOSALS, MAX_INFLIGHT_READS};
pub use self::node::{
    CompactReport, MAX_COMPACT_PASSES, PROPOSE_TIMEOUT, RaftNode, START_PROBE_WINDOW, StorageUsage,
    TableUsage, VerifyReport, compact_data_dir, compact_data_dir_at_most, storage_usage, storage_usage_of,
    verify_data_dir,
};
pub use self::storage::begin_durable;
pub use self::transport::{PeerService, TransportError};
/// The peer transport's counters and switch (`/metrics`, tests).
pub mod peer_streams {
    pub use super::transport::{BATCHES_CALLED, BATCHES_STREAMED, RPC_TIMEOUT, STREAMS_ENV, STREAMS_OPENED};
}

pub type NodeId = u64;

/// An error from the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsmError {
    /// Deterministic refusal of this command in this state (every replica refuses it the same way). The
    /// Fsm must not have changed anything. The proposer gets `ProposeError::Fsm(message)`; the node goes on.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Storage failure or corrupt state. Fatal: the node stops and never advances past the failed Ready.
    #[error("storage: {0}")]
    Storage(String),
    /// Stored bytes fail verification (e.g. `checksum::open`): fatal, and the node stops as a corrupt
    /// replica ("rebuild with --join") rather than serving or applying them.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A committed entry this binary is too old to apply (a newer command version): fatal, and the node
    /// stops without advancing past it until it is upgraded (skipping it would diverge from the members
    /// that apply it).
    #[error("incompatible: {0}")]
    TooNew(String),
}

macro_rules! fsm_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for FsmError {
            fn from(e: $t) -> Self {
                FsmError::Storage(e.to_string())
            }
        }
    )*};
}
fsm_from_redb!(redb::Error, redb::StorageError, redb::TableError, redb::TransactionError, redb::CommitError);

impl From<std::io::Error> for FsmError {
    /// Reading a snapshot: bytes failing their checksum are damage, anything else a storage failure.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::InvalidData {
            FsmError::Corrupt(e.to_string())
        } else {
            FsmError::Storage(e.to_string())
        }
    }
}

/// Push each entry's result from `apply` to `out`, in order, until one stops the node (anything but
/// [`FsmError::Rejected`]): the rule of [`Fsm::apply_batch`], for its default and for overrides.
pub fn apply_each(
    entries: &[(u64, &[u8])],
    out: &mut Vec<Result<Vec<u8>, FsmError>>,
    mut apply: impl FnMut(u64, &[u8]) -> Result<Vec<u8>, FsmError>,
) {
    for (index, cmd) in entries {
        let r = apply(*index, cmd);
        let stop = matches!(r, Err(ref e) if !matches!(e, FsmError::Rejected(_)));
        out.push(r);
        if stop {
            return;
        }
    }
}

/// The replicated state machine. Called only from the Raft loop thread, in log order.
pub trait Fsm: Send + 'static {
    /// Apply one committed normal entry inside the same redb write transaction that records applied_index
    /// (so state and applied index never diverge). Must be deterministic: the command carries any time it
    /// needs. Returns the response bytes handed to the proposer's waiter (if this node proposed it).
    fn apply(&mut self, txn: &redb::WriteTransaction, index: u64, cmd: &[u8]) -> Result<Vec<u8>, FsmError>;
    /// Apply consecutive committed normal entries (index, command) in order inside one write transaction,
    /// pushing one result per entry to `out`; after a result that stops the node (anything but
    /// [`FsmError::Rejected`]) nothing more is applied. The same as calling [`Fsm::apply`] on each, which
    /// the default does; a state machine overrides it to share per-transaction work between the entries
    /// (the master opens its tables once per batch, not once per entry).
    fn apply_batch(
        &mut self,
        txn: &redb::WriteTransaction,
        entries: &[(u64, &[u8])],
        out: &mut Vec<Result<Vec<u8>, FsmError>>,
    ) {
        apply_each(entries, out, |index, cmd| self.apply(txn, index, cmd));
    }
    /// Write the whole state machine (a Raft snapshot) from a read transaction into `out`, as a stream
    /// (never the whole state in memory). Runs on the snapshot builder thread while the loop goes on
    /// applying entries, hence no `self`: everything comes from `txn` (one consistent commit, the applied
    /// index included). Must work on a database where the Fsm's tables do not exist yet (the bootstrap
    /// snapshot of an empty cluster). An error from `out` must be returned.
    fn write_snapshot(txn: &redb::ReadTransaction, out: &mut dyn std::io::Write) -> Result<(), FsmError>
    where
        Self: Sized;
    /// Called once at start, after the raft storage was opened and verified and before anything is applied
    /// or served: the place to upgrade and verify the Fsm's own tables. `damage` is the node's damage flag:
    /// whoever raises it (e.g. a read of the Fsm's tables that found a bad checksum) stops the node as a
    /// corrupt replica. Default: nothing.
    fn open(
        &mut self,
        _db: &redb::Database,
        _damage: &std::sync::Arc<std::sync::OnceLock<String>>,
    ) -> Result<(), FsmError> {
        Ok(())
    }
    /// Replace the whole state machine with a snapshot's content, inside the given write transaction.
    /// `snap` can be opened more than once (check everything, then replace); its bytes are what
    /// `write_snapshot` wrote, read from a file chunk by chunk (damaged bytes read as `InvalidData`).
    fn restore(&mut self, txn: &redb::WriteTransaction, snap: &dyn SnapshotSource) -> Result<(), FsmError>;
    /// Called after each write transaction that applied entries has been committed: the place to notify
    /// watchers of changes buffered during apply(). Default: nothing.
    fn after_commit(&mut self) {}
    /// Whether what was applied since the last commit must be made durable by this commit (an fsync) even
    /// though raft does not need it: asked once per commit, after applying and before committing; answering
    /// true is taken as done. The loop otherwise commits a commit index and applied entries without an
    /// fsync, and a crash can take the state back to an earlier commit, whose entries are applied again
    /// at start. Default: never.
    fn wants_durable(&mut self) -> bool {
        false
    }
}

/// How to run one member.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's id (non-zero, a key of `peers`).
    pub id: NodeId,
    /// Every member of the fixed cluster, this node included: id -> host:port of its peer gRPC service.
    pub peers: BTreeMap<NodeId, String>,
    /// Directory for `raft.redb` (created if missing).
    pub data_dir: PathBuf,
    /// Length of one raft tick.
    pub tick: Duration,
    /// The leader lease and check-quorum timeout: a member that heard its leader within this many ticks
    /// ignores vote requests. A follower campaigns after a timeout drawn from
    /// `[min_election_ticks(election_ticks), max_election_ticks)`.
    pub election_ticks: usize,
    /// The (exclusive) top of that range; 0 = the member's fixed timeout by rank ([`ranked_election_ticks`]);
    /// else above [`min_election_ticks`], a range raft-rs draws from at random.
    pub max_election_ticks: usize,
    /// Ticks between leader heartbeats; must be below `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Applied entries between compactions of the log (each keeps the entries applied since the one
    /// before; no file is built: see `core::Core`'s compaction). 0 = by bytes only.
    pub snapshot_every: u64,
    /// Start with an empty data dir as a new member (gets a snapshot from the leader) instead of refusing.
    pub join: bool,
}

impl RaftConfig {
    /// A group of one member (id 1, peer address `peer`) in `data_dir`, with quick ticks (20 ms, elections
    /// after 10, heartbeats every 2), compaction by bytes only, not joining: the single-node masters of
    /// tests and tools.
    pub fn single_member(data_dir: impl Into<PathBuf>, peer: impl Into<String>) -> Self {
        RaftConfig {
            id: 1,
            peers: BTreeMap::from([(1, peer.into())]),
            data_dir: data_dir.into(),
            tick: Duration::from_millis(20),
            election_ticks: 10,
            max_election_ticks: 0,
            heartbeat_ticks: 2,
            snapshot_every: 0,
            join: false,
        }
    }
}

/// The bottom of the range a follower's election timeout is drawn from: one tick above `election_ticks`, the
/// leader lease during which a member ignores vote requests (raft-rs's check-quorum lease). With the bottom at
/// the lease itself, the survivor that times out first often found the other still in its lease (it heard
/// the dead leader a tick later), so its pre-vote was ignored; when the other's log was behind, the other
/// could not win either, and the election waited for the first one's next timeout (`huatuo bench master
/// --kills 12`: one failover in 12 took 2,109 ms with the range [10, 13)).
pub fn min_election_ticks(election_ticks: usize) -> usize {
    election_ticks + 1
}

/// A member's place among the cluster's members: how many member ids are below its own (0 for the lowest).
pub fn election_rank(id: NodeId, members: impl IntoIterator<Item = NodeId>) -> usize {
    members.into_iter().filter(|m| *m < id).collect::<BTreeSet<_>>().len()
}

/// The election timeout range `[min, max)` of the member of rank `rank` when none is configured: one tick
/// wide, so fixed, and one tick later per rank: [`min_election_ticks`] for the lowest member, a tick more
/// for the next (10 ticks of 100 ms: 1.1 s, 1.2 s, 1.3 s for a 3-member cluster).
///
/// Why not a random range: with one member dead, the survivors split a vote when the second one's timer
/// fires within a message's flight of the first (both pre-candidates grant each other, then both vote for
/// themselves). Drawn from [1.1 s, 1.4 s), that happened once in 60 kills (`huatuo bench master --kills`,
/// 2026-12-04: 2,792 ms for that failover), enough to break a p99. With ranks a tick apart, the two fire
/// 0-200 ms apart (each timer fires within its own 100 ms tick phase), within `d` ms of each other with
/// probability d^2 / 20,000 (0.1% for 5 ms), and the next survivor still fires 1.1-1.2 s after the last
/// heartbeat when the lowest member is the one lost. A failed campaign is retried after a random time
/// (`CoreConfig::campaign_jitter`), so members that collide anyway (two members of one rank after a
/// membership change without a restart) do not stay in lockstep. The lease, what a leader's pause must
/// exceed to cause an election, is unchanged. Under load the window is wider than a message's flight (a
/// Ready's fsync, a busy loop): a pre-candidate then holds off higher-ranked pre-votes for a few ticks
/// (`core::PREVOTE_PRIORITY_TICKS`), so two members that fire together still elect the lower one.
pub fn ranked_election_ticks(election_ticks: usize, rank: usize) -> (usize, usize) {
    let min = min_election_ticks(election_ticks) + rank;
    (min, min + 1)
}

/// Compact the Raft log once its applied part takes this many bytes, even before `snapshot_every`
/// entries: a few hundred large entries must not fill a small disk (issue 13: 155 MB after 130 entries of
/// ~600 KB). 64 MiB keeps catch-up by log possible for minutes of normal traffic.
pub const DEFAULT_SNAPSHOT_LOG_BYTES: u64 = 64 << 20;
/// Free bytes under the data dir below which a node refuses new proposals (the NOSPACE alarm, as etcd's):
/// room for one more snapshot of a large store plus the log in flight, so the node can still compact
/// and apply what is already committed instead of dying on a full disk.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 512 << 20;

/// Disk-use limits of one member (see [`RaftNode::start_with`]). 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Compact when the log applied since the last compaction trigger exceeds this many bytes (or
    /// `snapshot_every` entries, whichever comes first).
    pub snapshot_log_bytes: u64,
    /// Raise the NOSPACE alarm (refuse proposals with [`ProposeError::NoSpace`], keep serving reads and
    /// replicating) while the file system of the data dir has less than this many bytes free; cleared
    /// when space returns.
    pub min_free_bytes: u64,
    /// redb's page cache for the data dir's database (`cache_mb`). redb's own default is 1 GiB, which a
    /// member at fleet scale fills (issue 17: 2.2 GiB leader RSS at 1.5 M objects); the OS page cache still
    /// holds the file, so a smaller redb cache costs copies, not disk reads.
    pub cache_bytes: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            snapshot_log_bytes: DEFAULT_SNAPSHOT_LOG_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Default redb cache of a member's database: a quarter of redb's default. At 1.5 M objects the hot set
/// (agent records, the objects and counters heartbeats and findings touch) is far smaller than the 3 GB file.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;
/// Smallest redb cache accepted: below a few MiB every transaction re-reads the B-tree roots.
pub const MIN_CACHE_BYTES: usize = 8 << 20;

/// Errors starting or running a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("raft storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    /// The data dir is empty but the cluster already heard from this node id: its old state (votes,
    /// log) is gone, so rejoining as if new could break Raft's guarantees. Start with `join` to come
    /// back as a new, empty member.
    #[error(
        "refusing to start node {id}: the data dir is empty but peer {peer} already knows this node id \
         (its data was lost?); start with join=true to rejoin as a new empty member"
    )]
    RejoinRefused { id: NodeId, peer: NodeId },
    /// The data dir's bytes fail verification (checksums, redb's integrity check, undecodable records, a
    /// panic inside the storage engine). The node never serves them: it stops.
    #[error(
        "corrupt replica: {0}. Rebuild with --join: stop this node, move its data dir away, start it again \
         with --join (it gets a snapshot from the leader)"
    )]
    Corrupt(String),
    /// A committed entry needs a newer binary ([`FsmError::TooNew`]): the node stopped without applying it.
    #[error("incompatible committed entry: {0}")]
    Incompatible(String),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
}

/// Why a proposal or read did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader_addr` is the leader's peer address when known.
    #[error("not the leader (leader: {leader:?} at {leader_addr:?})")]
    NotLeader { leader: Option<NodeId>, leader_addr: Option<String> },
    /// The entry was lost or its outcome cannot be known (leader/term change, overwritten, folded into a
    /// snapshot, overload): not applied as ours, or unknown. Safe to retry idempotent commands.
    #[error("proposal dropped (leader change or overload); outcome unknown, retry")]
    Dropped,
    /// No answer within the bounded wait (`PROPOSE_TIMEOUT`): outcome unknown.
    #[error("timed out waiting for commit")]
    Timeout,
    /// The node is stopped (shut down or a fatal storage error).
    #[error("raft node stopped")]
    Stopped,
    /// The command exceeds `MAX_COMMAND_BYTES`.
    #[error("command too large")]
    TooLarge,
    /// The state machine rejected the command (`FsmError::Rejected`), or raft refused it.
    #[error("state machine: {0}")]
    Fsm(String),
    /// The NOSPACE alarm is raised on this node: its data dir's file system has fewer free bytes than the
    /// configured floor. Reads still work; writes resume once space is freed.
    #[error(
        "no space: {free_bytes} bytes free under the data dir, below the floor of {floor_bytes}; free disk space"
    )]
    NoSpace { free_bytes: u64, floor_bytes: u64 },
    /// Fewer than a quorum of members have disk space above their floor (their alarms as this leader last
    /// heard them over the peer port): an entry could only commit on members short of space. `members`
    /// names them with their free bytes and floors.
    #[error(
        "no space: {members}; fewer than a quorum of members can store new entries; free disk space there"
    )]
    QuorumNoSpace { members: String },
    /// A linearizable read asked of a follower short of disk: it takes no new entries while its alarm is
    /// up ([`core::Core::set_short_of_disk`]), so it could only answer once space returns. Clients go to
    /// `leader` instead.
    #[error(
        "this member is short of disk (NOSPACE) and takes no new entries, so it serves no reads or watches; ask the leader"
    )]
    ShortOfDisk { leader: Option<NodeId> },
}

/// Role of this node as seen by the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Empty data dir: asking peers whether this id is known before bootstrapping.
    Probing,
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// Shut down or failed (see `last_error`).
    Stopped,
}

/// A point-in-time view of the node (cheap to read: a copy published by the loop).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RaftStatus {
    pub id: NodeId,
    pub leader_id: Option<NodeId>,
    /// The leader's peer address (host:port), when a leader is known.
    pub leader_addr: Option<String>,
    pub term: u64,
    pub role: Role,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Index of the latest snapshot (the log starts after it).
    pub snapshot_index: u64,
    pub members: Vec<NodeId>,
    /// Peer addresses: configured, updated with the address each peer reports when it sends to us.
    pub peers: BTreeMap<NodeId, String>,
    pub last_error: Option<String>,
    /// The NOSPACE alarm: proposals are refused until free space is back above the floor.
    pub nospace: bool,
    /// The node stopped because its storage is damaged (`last_error` says where).
    pub corrupt: bool,
}
