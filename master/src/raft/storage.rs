//! Durable Raft storage on redb: the log, HardState, ConfState, snapshot metadata and data, the applied
//! index and the rejoin-detection facts, plus raft-rs's `Storage` trait over them.
//!
//! Writes never commit on their own: every mutating method takes the caller's `WriteTransaction` (one per
//! Ready, shared with the state machine) and stages the new in-memory view; the caller calls
//! [`RedbStorage::commit_staged`] only after `commit()` returned (the data is fsync'd), so raft never reads
//! a state that is not durable. Reads (`entries`, `term`) go to the database; the small metadata lives in
//! memory.

use std::collections::BTreeSet;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::NodeId;

/// `index -> term (8 bytes LE) ++ eraftpb::Entry (protobuf 2)`. The term prefix lets `term()` avoid
/// decoding (possibly large) entries.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small named facts; see the `K_*` keys.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// `"data" -> bytes of the latest snapshot` (what `Fsm::snapshot` produced, or what a leader sent).
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const K_NODE_ID: &str = "node_id"; // u64 LE: the id this store belongs to
const K_HARD_STATE: &str = "hard_state"; // eraftpb::HardState
const K_CONF_STATE: &str = "conf_state"; // eraftpb::ConfState
const K_SNAP_META: &str = "snapshot_meta"; // eraftpb::SnapshotMetadata: also the log truncation point
const K_APPLIED: &str = "applied"; // u64 LE: last index applied to the Fsm (same txn as the Fsm writes)
const K_SEEN: &str = "seen_peers"; // u64 LE * n: peers we ever received a raft message from
const K_SNAP_DATA: &str = "data";

/// A storage failure: fatal for the node (the Ready loop stops and never advances after it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("corrupt raft storage: {0}")]
    Corrupt(String),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

impl From<protobuf::ProtobufError> for StoreError {
    fn from(e: protobuf::ProtobufError) -> Self {
        StoreError::Corrupt(format!("protobuf: {e}"))
    }
}

fn raft_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn u64_from(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(format!("{what}: bad length")))?;
    Ok(u64::from_le_bytes(arr))
}

/// In-memory copy of the durable metadata.
#[derive(Clone, Debug, Default)]
struct Meta {
    hard_state: HardState,
    conf_state: ConfState,
    /// Latest snapshot; `index`/`term` are also the log truncation point (first_index = index + 1).
    snap: SnapshotMetadata,
    last_index: u64,
    applied: u64,
    seen: BTreeSet<NodeId>,
}

/// raft-rs `Storage` over a redb database (shared with the Fsm's tables).
pub struct RedbStorage {
    db: Arc<Database>,
    cur: Meta,
    staged: Option<Meta>,
}

/// What `open` found in the database.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No raft state at all: a brand-new data dir.
    Empty,
    /// Initialized storage belonging to this node id.
    Initialized { node_id: NodeId },
}

impl RedbStorage {
    /// Reads whatever raft state the database holds (possibly none).
    pub fn open(db: Arc<Database>) -> Result<(Self, Found), StoreError> {
        let mut meta = Meta::default();
        let found;
        {
            let r = db.begin_read()?;
            let t = match r.open_table(META) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            match t.as_ref().map(|t| t.get(K_NODE_ID)).transpose()?.flatten() {
                None => found = Found::Empty,
                Some(v) => {
                    let t = t.as_ref().ok_or_else(|| StoreError::Corrupt("no meta".into()))?;
                    found = Found::Initialized { node_id: u64_from(v.value(), K_NODE_ID)? };
                    let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
                        Ok(t.get(k)?.map(|v| v.value().to_vec()))
                    };
                    if let Some(b) = get(K_HARD_STATE)? {
                        meta.hard_state = HardState::parse_from_bytes(&b)?;
                    }
                    if let Some(b) = get(K_CONF_STATE)? {
                        meta.conf_state = ConfState::parse_from_bytes(&b)?;
                    }
                    if let Some(b) = get(K_SNAP_META)? {
                        meta.snap = SnapshotMetadata::parse_from_bytes(&b)?;
                    }
                    if let Some(b) = get(K_APPLIED)? {
                        meta.applied = u64_from(&b, K_APPLIED)?;
                    }
                    if let Some(b) = get(K_SEEN)? {
                        for c in b.chunks(8) {
                            meta.seen.insert(u64_from(c, K_SEEN)?);
                        }
                    }
                }
            }
            meta.last_index = meta.snap.index;
            match r.open_table(LOG) {
                Ok(log) => {
                    if let Some((k, _)) = log.last()? {
                        meta.last_index = meta.last_index.max(k.value());
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if found != Found::Empty
            && (meta.applied < meta.snap.index || meta.applied > meta.hard_state.commit.max(meta.snap.index))
        {
            return Err(StoreError::Corrupt(format!(
                "applied {} outside [snapshot {}, commit {}]",
                meta.applied, meta.snap.index, meta.hard_state.commit
            )));
        }
        Ok((RedbStorage { db, cur: meta, staged: None }, found))
    }

    /// Writes the fixed-cluster bootstrap state: a snapshot at index 1, term 1 whose ConfState has every
    /// voter (identical on all nodes, so their logs agree from the start), commit = applied = 1.
    /// `initial_data` is the empty state machine's snapshot (sent to members that join empty).
    pub fn bootstrap(
        &mut self,
        txn: &WriteTransaction,
        node_id: NodeId,
        voters: &[NodeId],
        initial_data: &[u8],
    ) -> Result<(), StoreError> {
        let m = self.stage();
        if m.snap.index != 0 || m.last_index != 0 {
            return Err(StoreError::Corrupt("refusing to bootstrap a non-empty store".into()));
        }
        let cs = ConfState { voters: voters.to_vec(), ..Default::default() };
        let snap =
            SnapshotMetadata { index: 1, term: 1, conf_state: Some(cs.clone()).into(), ..Default::default() };
        m.hard_state.term = 1;
        m.hard_state.commit = 1;
        m.conf_state = cs;
        m.snap = snap;
        m.last_index = 1;
        m.applied = 1;
        let mut t = txn.open_table(META)?;
        t.insert(K_NODE_ID, node_id.to_le_bytes().as_slice())?;
        t.insert(K_HARD_STATE, m.hard_state.write_to_bytes()?.as_slice())?;
        t.insert(K_CONF_STATE, m.conf_state.write_to_bytes()?.as_slice())?;
        t.insert(K_SNAP_META, m.snap.write_to_bytes()?.as_slice())?;
        t.insert(K_APPLIED, 1u64.to_le_bytes().as_slice())?;
        txn.open_table(SNAPSHOT)?.insert(K_SNAP_DATA, initial_data)?;
        txn.open_table(LOG)?;
        Ok(())
    }

    /// Marks an empty store as belonging to `node_id` without any raft state: a member joining an existing
    /// cluster, which gets everything (conf state included) from the leader's snapshot.
    pub fn init_joining(&mut self, txn: &WriteTransaction, node_id: NodeId) -> Result<(), StoreError> {
        self.stage();
        let mut t = txn.open_table(META)?;
        t.insert(K_NODE_ID, node_id.to_le_bytes().as_slice())?;
        txn.open_table(LOG)?;
        txn.open_table(SNAPSHOT)?;
        Ok(())
    }

    fn stage(&mut self) -> &mut Meta {
        let cur = &self.cur;
        self.staged.get_or_insert_with(|| cur.clone())
    }

    /// Makes the staged view current. Call only after the transaction holding the staged writes committed.
    pub fn commit_staged(&mut self) {
        if let Some(m) = self.staged.take() {
            self.cur = m;
        }
    }

    /// Forgets staged writes (their transaction was not committed).
    pub fn abort_staged(&mut self) {
        self.staged = None;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.cur.hard_state
    }
    pub fn conf_state(&self) -> &ConfState {
        &self.cur.conf_state
    }
    pub fn applied(&self) -> u64 {
        self.cur.applied
    }
    pub fn snapshot_index(&self) -> u64 {
        self.cur.snap.index
    }
    pub fn seen(&self) -> &BTreeSet<NodeId> {
        &self.cur.seen
    }
    /// True once the store holds a conf state (bootstrapped, or a joiner that received a snapshot).
    pub fn has_conf(&self) -> bool {
        !self.cur.conf_state.voters.is_empty()
    }
    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// Appends entries (truncating any conflicting suffix first, as raft requires).
    pub fn append(&mut self, txn: &WriteTransaction, ents: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = ents.first() else { return Ok(()) };
        let m = self.stage();
        if first.index <= m.snap.index {
            return Err(StoreError::Corrupt(format!(
                "append at {} at or below the snapshot index {}",
                first.index, m.snap.index
            )));
        }
        if first.index > m.last_index + 1 {
            return Err(StoreError::Corrupt(format!(
                "append at {} leaves a gap after {}",
                first.index, m.last_index
            )));
        }
        let mut t = txn.open_table(LOG)?;
        if first.index <= m.last_index {
            t.retain_in(first.index..=m.last_index, |_, _| false)?;
        }
        let mut buf = Vec::new();
        for e in ents {
            buf.clear();
            buf.extend_from_slice(&e.term.to_le_bytes());
            e.write_to_vec(&mut buf)?;
            t.insert(e.index, buf.as_slice())?;
        }
        m.last_index = ents.last().map_or(m.last_index, |e| e.index);
        Ok(())
    }

    pub fn set_hard_state(&mut self, txn: &WriteTransaction, hs: &HardState) -> Result<(), StoreError> {
        let m = self.stage();
        m.hard_state = hs.clone();
        txn.open_table(META)?.insert(K_HARD_STATE, hs.write_to_bytes()?.as_slice())?;
        Ok(())
    }

    pub fn set_commit(&mut self, txn: &WriteTransaction, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.stage().hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(txn, &hs)
    }

    pub fn set_applied(&mut self, txn: &WriteTransaction, applied: u64) -> Result<(), StoreError> {
        self.stage().applied = applied;
        txn.open_table(META)?.insert(K_APPLIED, applied.to_le_bytes().as_slice())?;
        Ok(())
    }

    pub fn staged_applied(&self) -> u64 {
        self.staged.as_ref().unwrap_or(&self.cur).applied
    }

    pub fn add_seen(&mut self, txn: &WriteTransaction, ids: &BTreeSet<NodeId>) -> Result<(), StoreError> {
        let m = self.stage();
        m.seen.extend(ids.iter().copied());
        let bytes: Vec<u8> = m.seen.iter().flat_map(|i| i.to_le_bytes()).collect();
        txn.open_table(META)?.insert(K_SEEN, bytes.as_slice())?;
        Ok(())
    }

    /// Installs a snapshot received from the leader: replaces the log (cleared), conf state, snapshot
    /// metadata and data; commit and applied move to the snapshot index. The caller restores the Fsm in the
    /// same transaction.
    pub fn apply_snapshot(&mut self, txn: &WriteTransaction, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        let m = self.stage();
        if meta.index <= m.snap.index {
            return Err(StoreError::Corrupt(format!(
                "snapshot {} not newer than ours {}",
                meta.index, m.snap.index
            )));
        }
        let mut t = txn.open_table(LOG)?;
        t.retain(|_, _| false)?;
        m.hard_state.term = m.hard_state.term.max(meta.term);
        m.hard_state.commit = meta.index;
        m.conf_state = meta.get_conf_state().clone();
        m.snap = meta.clone();
        m.last_index = meta.index;
        m.applied = meta.index;
        let mut mt = txn.open_table(META)?;
        mt.insert(K_HARD_STATE, m.hard_state.write_to_bytes()?.as_slice())?;
        mt.insert(K_CONF_STATE, m.conf_state.write_to_bytes()?.as_slice())?;
        mt.insert(K_SNAP_META, m.snap.write_to_bytes()?.as_slice())?;
        mt.insert(K_APPLIED, meta.index.to_le_bytes().as_slice())?;
        txn.open_table(SNAPSHOT)?.insert(K_SNAP_DATA, snap.get_data())?;
        Ok(())
    }

    /// Records a snapshot of our own applied state at `index` and drops the log up to it.
    pub fn compact_with_snapshot(
        &mut self,
        txn: &WriteTransaction,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let m = self.stage();
        if index <= m.snap.index || index > m.applied {
            return Err(StoreError::Corrupt(format!(
                "snapshot at {index} outside (snapshot {}, applied {}]",
                m.snap.index, m.applied
            )));
        }
        let meta = SnapshotMetadata {
            index,
            term,
            conf_state: Some(m.conf_state.clone()).into(),
            ..Default::default()
        };
        txn.open_table(LOG)?.retain_in(..=index, |_, _| false)?;
        txn.open_table(META)?.insert(K_SNAP_META, meta.write_to_bytes()?.as_slice())?;
        txn.open_table(SNAPSHOT)?.insert(K_SNAP_DATA, data)?;
        m.snap = meta;
        Ok(())
    }

    fn read_term(&self, idx: u64) -> Result<Option<u64>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(LOG)?;
        match t.get(idx)? {
            None => Ok(None),
            Some(v) => {
                let b = v.value();
                Ok(Some(u64_from(b.get(..8).unwrap_or(&[]), "log term")?))
            }
        }
    }

    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(LOG)?;
        let mut out = Vec::new();
        let mut size = 0u64;
        for item in t.range(low..high)? {
            let (k, v) = item?;
            let b = v.value();
            if b.len() < 8 {
                return Err(StoreError::Corrupt(format!("log entry {} too short", k.value())));
            }
            let e = Entry::parse_from_bytes(&b[8..])?;
            if e.index != k.value() || e.index != low + out.len() as u64 {
                return Err(StoreError::Corrupt(format!("log hole or misplaced entry at {}", k.value())));
            }
            size += u64::from(e.compute_size());
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }
}

impl raft::Storage for RedbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.cur.hard_state.clone(), self.cur.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.cur.snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.cur.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let ents = self.read_entries(low, high, max_size.into()).map_err(raft_err)?;
        if ents.is_empty() {
            return Err(raft_err(format!("log entries [{low}, {high}) missing")));
        }
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.cur.snap.index {
            return Ok(self.cur.snap.term);
        }
        if idx < self.cur.snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.cur.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.read_term(idx).map_err(raft_err)? {
            Some(t) => Ok(t),
            None => Err(raft_err(format!("log entry {idx} missing"))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cur.snap.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cur.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.cur.snap.index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let r = self.db.begin_read().map_err(raft_err)?;
        let t = r.open_table(SNAPSHOT).map_err(raft_err)?;
        let data = t.get(K_SNAP_DATA).map_err(raft_err)?.map(|v| v.value().to_vec()).unwrap_or_default();
        let mut s = Snapshot::default();
        s.set_metadata(self.cur.snap.clone());
        s.set_data(data.into());
        Ok(s)
    }
}
