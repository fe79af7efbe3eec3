//! Durable Raft storage on redb: the log and where it starts, HardState, ConfState, the kept snapshot
//! file's metadata and descriptor, the applied index and the rejoin-detection facts, plus raft-rs's
//! `Storage` trait over them.
//!
//! The log is compacted without a file ([`RedbStorage::compact_log`]): the state machine's tables hold the
//! applied state. A file is built only when raft-rs asks for a snapshot no kept file can serve
//! ([`raft::Storage::snapshot`] notes the request; the loop builds and [`RedbStorage::record_file`] keeps
//! it), and it is let go once the log start passes it.
//!
//! Writes never commit on their own: every mutating method takes the caller's `WriteTransaction` (one per
//! Ready, shared with the state machine) and stages the new in-memory view; the caller calls
//! [`RedbStorage::commit_staged`] only after `commit()` returned (the data is fsync'd), so raft never reads
//! a state that is not durable. Reads (`entries`, `term`) go to the database; the small metadata lives in
//! memory.
//!
//! Every value is framed by [`crate::checksum`] (CRC-32C) and verified on every read; `open` verifies all
//! the metadata, the snapshot and every log entry (the log is bounded by compaction). A record that fails
//! verification, bytes that do not decode, and a panic inside redb (its btree code panics on damaged
//! pages) all become [`StoreError::Damaged`], which stops the node as a corrupt replica: damaged bytes
//! are never handed to raft or the state machine.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::NodeId;
use super::snapfile::{Descriptor, SnapDir, SnapError};
use crate::checksum;

/// `index -> sealed(term (8 bytes LE) ++ eraftpb::Entry (protobuf 2))`. The term prefix lets `term()` avoid
/// decoding (possibly large) entries.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small named facts, each value sealed; see the `K_*` keys.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// `"data" -> sealed bytes of the latest snapshot`: where binaries before snapshot files kept it. `open`
/// moves it into a file once (the table then stays empty).
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const K_NODE_ID: &str = "node_id"; // u64 LE: the id this store belongs to
const K_HARD_STATE: &str = "hard_state"; // eraftpb::HardState
const K_CONF_STATE: &str = "conf_state"; // eraftpb::ConfState
const K_SNAP_META: &str = "snapshot_meta"; // eraftpb::SnapshotMetadata of the snapshot file (absent: no file)
/// eraftpb::SnapshotMetadata: where the log starts (it holds the entries after `index`). Absent in stores
/// written before the log was compacted without a file: the log then starts at `snapshot_meta`. A binary
/// older than this key reads the log against `snapshot_meta` and stops at the first entry as damage
/// ("expected index"), never serving a file under the wrong index.
const K_LOG_START: &str = "log_start";
const K_APPLIED: &str = "applied"; // u64 LE: last index applied to the Fsm (same txn as the Fsm writes)
const K_SEEN: &str = "seen_peers"; // u64 LE * n: peers we ever received a raft message from
const K_FORMAT: &str = "format"; // u64 LE: FORMAT
const K_SNAP_DATA: &str = "data";
const K_SNAP_FILE: &str = "snapshot_file"; // snapfile::Descriptor of the latest snapshot's file

/// Version of this layout. 2: every value sealed with a checksum. Stores without the key were written
/// before checksums (version 1); `open` seals their records in place once.
pub const FORMAT: u64 = 2;
/// Bytes a log record takes besides the encoded entry: the checksum frame and the term prefix. Used to
/// count the log's size for compaction (`applied_log_bytes`).
pub const LOG_RECORD_OVERHEAD: u64 = (checksum::OVERHEAD + 8) as u64;

/// A storage failure: fatal for the node (the Ready loop stops and never advances after it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Redb(redb::Error),
    /// Bytes on disk fail verification (checksum, decoding, redb's page checks, a panic inside redb): a
    /// corrupt replica. Never served; the node stops and must be rebuilt.
    #[error("{0}")]
    Damaged(String),
    /// A request raft or the loop should never make (append with a gap, an old snapshot...).
    #[error("raft storage: {0}")]
    Invariant(String),
    /// A snapshot file could not be written or read (I/O), or the file limit was reached.
    #[error("snapshot file: {0}")]
    File(String),
    /// The state machine cannot apply a committed entry with this binary ([`super::FsmError::TooNew`]).
    #[error("{0}")]
    Incompatible(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Corrupted(m) => StoreError::Damaged(format!("redb: {m}")),
            e => StoreError::Redb(e),
        }
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
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

impl From<SnapError> for StoreError {
    fn from(e: SnapError) -> Self {
        match e {
            SnapError::Damaged(m) => StoreError::Damaged(m),
            e => StoreError::File(e.to_string()),
        }
    }
}

impl From<protobuf::ProtobufError> for StoreError {
    fn from(e: protobuf::ProtobufError) -> Self {
        StoreError::Damaged(format!("protobuf: {e}"))
    }
}

fn raft_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn u64_from(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Damaged(format!("{what}: bad length")))?;
    Ok(u64::from_le_bytes(arr))
}

/// A write transaction on a member's database (`raft.redb`) whose commit is durable and two-phase: redb
/// writes and fsyncs the transaction's pages, then the header that names them, and fsyncs again. With a
/// one-phase commit (redb's default) the header goes out with the pages and, after an unclean end (kill -9,
/// power loss), redb checks the newest commit's pages on open and takes the commit before it when they fail
/// their checksums: right for a commit torn by the crash, wrong for one damaged after its fsync returned,
/// whose loss (an appended entry this member acknowledged) would then go unnoticed. After a two-phase
/// commit a damaged newest commit is refused instead ("Primary is corrupted despite 2-phase commit"), and
/// the member stops as a corrupt replica. Every durable commit of the file goes through here or through
/// [`set_two_phase`]; commits without an fsync (`Durability::None`) are never the one redb trusts.
pub fn begin_durable(db: &Database) -> Result<WriteTransaction, redb::TransactionError> {
    let mut txn = db.begin_write()?;
    set_two_phase(&mut txn);
    Ok(txn)
}

/// Makes `txn`'s commit two-phase (see [`begin_durable`]).
pub fn set_two_phase(txn: &mut WriteTransaction) {
    txn.set_two_phase_commit(true);
}

/// Verifies a sealed value read from `what` (a table and key, for the error).
fn unseal<'a>(bytes: &'a [u8], what: &dyn std::fmt::Display) -> Result<&'a [u8], StoreError> {
    checksum::open(bytes).map_err(|e| StoreError::Damaged(format!("{what}: {e}")))
}

/// The text of a caught panic.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs storage code, turning a panic (redb's btree code panics on damaged pages) into `Damaged`.
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(StoreError::Damaged(format!("storage panic during {what}: {}", panic_text(&*p)))),
    }
}

/// In-memory copy of the durable metadata.
#[derive(Clone, Debug, Default)]
struct Meta {
    hard_state: HardState,
    conf_state: ConfState,
    /// Where the log starts: it holds the entries after `index` (first_index = index + 1); the state machine's
    /// tables hold everything applied, so the log is compacted without building a file.
    log_start: SnapshotMetadata,
    /// The snapshot file's metadata (meaningful when `snap_file` is some): at or after `log_start` when it
    /// can catch a follower up, dropped once the log is compacted past it.
    file_meta: SnapshotMetadata,
    last_index: u64,
    applied: u64,
    seen: BTreeSet<NodeId>,
    /// Bytes of the log records in (log start, applied]: what compacting now would free.
    applied_log_bytes: u64,
    /// The file holding the latest snapshot's data: `None` for a joiner before its first snapshot, and
    /// once the log was compacted past the file (a build is asked for when a follower needs one).
    snap_file: Option<Descriptor>,
}

impl Meta {
    /// Whether a file of the applied state at `index` would be kept: at or after the log start (a follower
    /// installing it goes on with entries the log holds) and newer than the kept file.
    fn takes_file(&self, index: u64) -> bool {
        index >= self.log_start.index && self.snap_file.as_ref().is_none_or(|_| self.file_meta.index < index)
    }
}

/// The first damage a node found in its storage, shared with whoever reports the node's end (a panic in
/// raft-rs after a failed read must still end as "corrupt replica", not as a bare panic).
pub type DamageFlag = Arc<OnceLock<String>>;

/// What the startup verification read (`open`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub log_entries: u64,
    pub log_bytes: u64,
    pub snapshot_bytes: u64,
    /// Whether the store was written before checksums and was sealed in place by this open.
    pub upgraded: bool,
    /// The snapshot was kept in the `raft_snapshot` table (an older binary) and was moved into a file by
    /// this open.
    pub snapshot_migrated: bool,
}

/// raft-rs `Storage` over a redb database (shared with the Fsm's tables).
pub struct RedbStorage {
    db: Arc<Database>,
    snaps: Arc<SnapDir>,
    cur: Meta,
    staged: Option<Meta>,
    damage: DamageFlag,
    scan: ScanReport,
    /// Set when raft-rs asked for a snapshot that no file holds (`snapshot`): the loop starts a build.
    wanted: std::sync::atomic::AtomicBool,
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
    /// Reads whatever raft state the database holds (possibly none) and verifies all of it: every
    /// metadata record, the snapshot data and every log entry (checksum, decoding, index and term, no
    /// holes). A store written before checksums (no `format` key) is sealed in place first.
    ///
    /// The snapshot's file in `snaps` is verified whole (every frame, size, CRC): missing or damaged, it
    /// is a corrupt replica. A snapshot kept in the `raft_snapshot` table by an older binary is moved into
    /// a file once. Every other file in `snaps` (a `.part` left by a crash) is removed.
    pub fn open(db: Arc<Database>, snaps: Arc<SnapDir>) -> Result<(Self, Found), StoreError> {
        let (mut st, found, old_data) = guard("open", || {
            let upgraded = needs_upgrade(&db)?;
            if upgraded {
                upgrade(&db)?;
            }
            let (mut st, found, old) = Self::read_all(db, snaps)?;
            st.scan.upgraded = upgraded;
            Ok((st, found, old))
        })?;
        st.settle_snapshot_file(old_data)?;
        st.snaps.set_damage_flag(st.damage.clone());
        Ok((st, found))
    }

    /// Verifies the current snapshot file (or moves an older binary's in-table snapshot into one) and
    /// removes every other file of the snapshot directory.
    fn settle_snapshot_file(&mut self, old_data: Option<Vec<u8>>) -> Result<(), StoreError> {
        // Keeps a migrated file until it is current.
        let mut _migrated = None;
        if let Some(desc) = &self.cur.snap_file {
            self.snaps.verify(desc)?;
            self.scan.snapshot_bytes = desc.size;
        } else if let Some(data) = old_data {
            let mut w = self.snaps.create(self.cur.file_meta.index, self.cur.file_meta.term)?;
            std::io::Write::write_all(&mut w, &data)
                .map_err(|e| StoreError::File(format!("migrating the snapshot: {e}")))?;
            let (desc, hold) = w.finish()?;
            _migrated = Some(hold);
            let txn = begin_durable(&self.db)?;
            put_meta(&mut txn.open_table(META)?, K_SNAP_FILE, &desc.encode())?;
            txn.open_table(SNAPSHOT)?.remove(K_SNAP_DATA)?;
            txn.commit()?;
            tracing::warn!(
                file = %desc.name,
                bytes = desc.size,
                "snapshot kept in the database by an older binary: moved into a snapshot file"
            );
            self.scan.snapshot_bytes = desc.size;
            self.scan.snapshot_migrated = true;
            self.cur.snap_file = Some(desc);
        }
        self.snaps.reset(self.cur.snap_file.as_ref().map(|d| d.name.as_str()))?;
        Ok(())
    }

    /// The snapshot directory (shared with the builder thread and the transport).
    pub fn snap_dir(&self) -> &Arc<SnapDir> {
        &self.snaps
    }

    /// The descriptor of the latest snapshot's file.
    pub fn snapshot_file(&self) -> Option<&Descriptor> {
        self.cur.snap_file.as_ref()
    }

    #[allow(clippy::type_complexity)]
    fn read_all(
        db: Arc<Database>,
        snaps: Arc<SnapDir>,
    ) -> Result<(Self, Found, Option<Vec<u8>>), StoreError> {
        let mut old_data = None;
        let mut meta = Meta::default();
        let mut scan = ScanReport::default();
        let found;
        {
            let r = db.begin_read()?;
            let t = match r.open_table(META) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
                let Some(t) = t.as_ref() else { return Ok(None) };
                match t.get(k)? {
                    None => Ok(None),
                    Some(v) => Ok(Some(unseal(v.value(), &format_args!("raft_meta[{k}]"))?.to_vec())),
                }
            };
            match get(K_NODE_ID)? {
                None => found = Found::Empty,
                Some(v) => {
                    found = Found::Initialized { node_id: u64_from(&v, K_NODE_ID)? };
                    if let Some(b) = get(K_HARD_STATE)? {
                        meta.hard_state = HardState::parse_from_bytes(&b)?;
                    }
                    if let Some(b) = get(K_CONF_STATE)? {
                        meta.conf_state = ConfState::parse_from_bytes(&b)?;
                    }
                    if let Some(b) = get(K_SNAP_META)? {
                        meta.file_meta = SnapshotMetadata::parse_from_bytes(&b)?;
                    }
                    meta.log_start = match get(K_LOG_START)? {
                        Some(b) => SnapshotMetadata::parse_from_bytes(&b)?,
                        None => meta.file_meta.clone(),
                    };
                    if let Some(b) = get(K_APPLIED)? {
                        meta.applied = u64_from(&b, K_APPLIED)?;
                    }
                    if let Some(b) = get(K_SNAP_FILE)? {
                        meta.snap_file = Some(Descriptor::decode(&b)?);
                    }
                    if let Some(b) = get(K_SEEN)? {
                        for c in b.chunks(8) {
                            meta.seen.insert(u64_from(c, K_SEEN)?);
                        }
                    }
                }
            }
            meta.last_index = meta.log_start.index;
            match r.open_table(LOG) {
                Ok(log) => {
                    for item in log.iter()? {
                        let (k, v) = item?;
                        let idx = k.value();
                        let (term, e) = decode_log_record(idx, v.value())?;
                        if idx != meta.last_index + 1 || e.index != idx || e.term != term {
                            return Err(StoreError::Damaged(format!(
                                "raft_log[{idx}]: expected index {} (entry says index {}, term {} vs {term})",
                                meta.last_index + 1,
                                e.index,
                                e.term
                            )));
                        }
                        let bytes = v.value().len() as u64;
                        scan.log_entries += 1;
                        scan.log_bytes += bytes;
                        if idx <= meta.applied {
                            meta.applied_log_bytes += bytes;
                        }
                        meta.last_index = idx;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
            match r.open_table(SNAPSHOT) {
                Ok(t) => {
                    if let Some(v) = t.get(K_SNAP_DATA)? {
                        let data = unseal(v.value(), &"raft_snapshot[data]")?;
                        scan.snapshot_bytes = data.len() as u64;
                        if meta.snap_file.is_none() && found != Found::Empty {
                            old_data = Some(data.to_vec());
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let start = meta.log_start.index;
        if found != Found::Empty && (meta.applied < start || meta.applied > meta.hard_state.commit.max(start))
        {
            return Err(StoreError::Damaged(format!(
                "applied {} outside [log start {start}, commit {}]",
                meta.applied, meta.hard_state.commit
            )));
        }
        if meta.snap_file.is_some() && meta.file_meta.index > meta.applied {
            return Err(StoreError::Damaged(format!(
                "snapshot file at {} after the applied index {}",
                meta.file_meta.index, meta.applied
            )));
        }
        let damage = DamageFlag::default();
        let wanted = Default::default();
        Ok((RedbStorage { db, snaps, cur: meta, staged: None, damage, scan, wanted }, found, old_data))
    }

    /// What `open` verified.
    pub fn scan_report(&self) -> &ScanReport {
        &self.scan
    }

    /// Set once this storage found damage (shared with the node's end-of-life reporting).
    pub fn damage_flag(&self) -> DamageFlag {
        self.damage.clone()
    }

    /// Remembers the first damage found (and counts it for `/metrics`), then returns the error.
    fn note(&self, e: StoreError) -> StoreError {
        if let StoreError::Damaged(m) = &e
            && self.damage.set(m.clone()).is_ok()
        {
            super::alarms::CORRUPTION_DETECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %m, "raft storage is damaged");
        }
        e
    }

    /// Writes the fixed-cluster bootstrap state: a snapshot at index 1, term 1 whose ConfState has every
    /// voter (identical on all nodes, so their logs agree from the start), commit = applied = 1.
    /// `initial` is the file of the empty state machine's snapshot (sent to members that join empty).
    pub fn bootstrap(
        &mut self,
        txn: &WriteTransaction,
        node_id: NodeId,
        voters: &[NodeId],
        initial: &Descriptor,
    ) -> Result<(), StoreError> {
        let m = self.stage();
        if m.log_start.index != 0 || m.last_index != 0 {
            return Err(StoreError::Invariant("refusing to bootstrap a non-empty store".into()));
        }
        let cs = ConfState { voters: voters.to_vec(), ..Default::default() };
        let snap =
            SnapshotMetadata { index: 1, term: 1, conf_state: Some(cs.clone()).into(), ..Default::default() };
        m.hard_state.term = 1;
        m.hard_state.commit = 1;
        m.conf_state = cs;
        m.log_start = snap.clone();
        m.file_meta = snap;
        m.last_index = 1;
        m.applied = 1;
        m.snap_file = Some(initial.clone());
        let mut t = txn.open_table(META)?;
        put_meta(&mut t, K_FORMAT, &FORMAT.to_le_bytes())?;
        put_meta(&mut t, K_NODE_ID, &node_id.to_le_bytes())?;
        put_meta(&mut t, K_HARD_STATE, &m.hard_state.write_to_bytes()?)?;
        put_meta(&mut t, K_CONF_STATE, &m.conf_state.write_to_bytes()?)?;
        put_meta(&mut t, K_SNAP_META, &m.file_meta.write_to_bytes()?)?;
        put_meta(&mut t, K_APPLIED, &1u64.to_le_bytes())?;
        put_meta(&mut t, K_SNAP_FILE, &initial.encode())?;
        txn.open_table(LOG)?;
        Ok(())
    }

    /// Marks an empty store as belonging to `node_id` without any raft state: a member joining an existing
    /// cluster, which gets everything (conf state included) from the leader's snapshot.
    pub fn init_joining(&mut self, txn: &WriteTransaction, node_id: NodeId) -> Result<(), StoreError> {
        self.stage();
        let mut t = txn.open_table(META)?;
        put_meta(&mut t, K_FORMAT, &FORMAT.to_le_bytes())?;
        put_meta(&mut t, K_NODE_ID, &node_id.to_le_bytes())?;
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
            if m.snap_file != self.cur.snap_file {
                // The new snapshot's metadata is durable: the old file can go (once no send holds it).
                self.snaps.set_current(m.snap_file.as_ref().map(|d| d.name.as_str()));
            }
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
    /// Where the log starts (compacted up to; a member restored from a snapshot starts at its index).
    pub fn snapshot_index(&self) -> u64 {
        self.cur.log_start.index
    }
    /// Whether a built file at `index` would be kept (see [`RedbStorage::record_file`]); one that would
    /// not is dropped by the caller.
    pub fn takes_file(&self, index: u64) -> bool {
        self.cur.takes_file(index)
    }
    /// The index of the snapshot file, if one is kept.
    pub fn file_index(&self) -> Option<u64> {
        self.cur.snap_file.as_ref().map(|_| self.cur.file_meta.index)
    }
    /// Whether raft-rs asked for a snapshot no file holds since the last call (clears the request).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.wanted.swap(false, std::sync::atomic::Ordering::Relaxed)
    }
    /// Whether raft-rs asked for a snapshot no file holds (without clearing the request).
    pub fn snapshot_wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn seen(&self) -> &BTreeSet<NodeId> {
        &self.cur.seen
    }
    /// Bytes of the log records in (log start, applied] (what compaction frees).
    pub fn applied_log_bytes(&self) -> u64 {
        self.cur.applied_log_bytes
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
        if first.index <= m.log_start.index {
            return Err(StoreError::Invariant(format!(
                "append at {} at or below the log start {}",
                first.index, m.log_start.index
            )));
        }
        if first.index > m.last_index + 1 {
            return Err(StoreError::Invariant(format!(
                "append at {} leaves a gap after {}",
                first.index, m.last_index
            )));
        }
        let mut t = txn.open_table(LOG)?;
        if first.index <= m.last_index {
            t.retain_in(first.index..=m.last_index, |_, _| false)?;
        }
        let mut plain = Vec::new();
        let mut sealed = Vec::new();
        for e in ents {
            plain.clear();
            plain.extend_from_slice(&e.term.to_le_bytes());
            e.write_to_vec(&mut plain)?;
            sealed.clear();
            checksum::seal_into(&mut sealed, &plain);
            t.insert(e.index, sealed.as_slice())?;
        }
        m.last_index = ents.last().map_or(m.last_index, |e| e.index);
        Ok(())
    }

    pub fn set_hard_state(&mut self, txn: &WriteTransaction, hs: &HardState) -> Result<(), StoreError> {
        let m = self.stage();
        m.hard_state = hs.clone();
        put_meta(&mut txn.open_table(META)?, K_HARD_STATE, &hs.write_to_bytes()?)?;
        Ok(())
    }

    pub fn set_commit(&mut self, txn: &WriteTransaction, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.stage().hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(txn, &hs)
    }

    /// Records the applied index; `bytes` is what the newly applied log records take on disk.
    pub fn set_applied(
        &mut self,
        txn: &WriteTransaction,
        applied: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let m = self.stage();
        m.applied = applied;
        m.applied_log_bytes += bytes;
        put_meta(&mut txn.open_table(META)?, K_APPLIED, &applied.to_le_bytes())?;
        Ok(())
    }

    pub fn staged_applied(&self) -> u64 {
        self.staged.as_ref().unwrap_or(&self.cur).applied
    }

    pub fn add_seen(&mut self, txn: &WriteTransaction, ids: &BTreeSet<NodeId>) -> Result<(), StoreError> {
        let m = self.stage();
        m.seen.extend(ids.iter().copied());
        let bytes: Vec<u8> = m.seen.iter().flat_map(|i| i.to_le_bytes()).collect();
        put_meta(&mut txn.open_table(META)?, K_SEEN, &bytes)?;
        Ok(())
    }

    /// Installs a snapshot received from the leader: replaces the log (cleared), conf state, log start
    /// and snapshot file; commit and applied move to the snapshot index. The caller restores the Fsm in the
    /// same transaction.
    pub fn apply_snapshot(
        &mut self,
        txn: &WriteTransaction,
        meta: &SnapshotMetadata,
        file: &Descriptor,
    ) -> Result<(), StoreError> {
        let m = self.stage();
        if meta.index <= m.log_start.index {
            return Err(StoreError::Invariant(format!(
                "snapshot {} not newer than our log start {}",
                meta.index, m.log_start.index
            )));
        }
        let mut t = txn.open_table(LOG)?;
        t.retain(|_, _| false)?;
        m.hard_state.term = m.hard_state.term.max(meta.term);
        m.hard_state.commit = meta.index;
        m.conf_state = meta.get_conf_state().clone();
        m.log_start = meta.clone();
        m.file_meta = meta.clone();
        m.last_index = meta.index;
        m.applied = meta.index;
        m.applied_log_bytes = 0;
        m.snap_file = Some(file.clone());
        let mut mt = txn.open_table(META)?;
        put_meta(&mut mt, K_HARD_STATE, &m.hard_state.write_to_bytes()?)?;
        put_meta(&mut mt, K_CONF_STATE, &m.conf_state.write_to_bytes()?)?;
        put_meta(&mut mt, K_SNAP_META, &m.file_meta.write_to_bytes()?)?;
        put_meta(&mut mt, K_LOG_START, &m.log_start.write_to_bytes()?)?;
        put_meta(&mut mt, K_APPLIED, &meta.index.to_le_bytes())?;
        put_meta(&mut mt, K_SNAP_FILE, &file.encode())?;
        Ok(())
    }

    /// Drops the log towards `index`, an applied entry, deleting at most about `max_bytes` of records
    /// (the record that reaches it included; 0: no bound): returns where the log starts now. The state
    /// machine's tables, written in the same transactions as the applied index, already hold what the
    /// entries did, so no file is needed. A snapshot file older than the new start can no longer catch a
    /// follower up (the entries after it are gone): it is let go (deleted once no send holds it).
    /// Bounded because deleting is not free: 64 MiB of log at once took 466-1,133 ms of a Raft turn at
    /// 1.5 M objects (`bench fleet` run S3), on every member at the same index.
    pub fn compact_log(
        &mut self,
        txn: &WriteTransaction,
        index: u64,
        max_bytes: u64,
    ) -> Result<u64, StoreError> {
        let m = self.stage();
        if index <= m.log_start.index || index > m.applied {
            return Err(StoreError::Invariant(format!(
                "compaction to {index} outside (log start {}, applied {}]",
                m.log_start.index, m.applied
            )));
        }
        let mut log = txn.open_table(LOG)?;
        let (mut freed, mut at, mut term) = (0u64, m.log_start.index, m.log_start.term);
        while at < index && (max_bytes == 0 || freed < max_bytes) {
            let k = at + 1;
            let Some(v) = log.remove(k)? else {
                return Err(StoreError::Damaged(format!("raft_log[{k}]: an applied entry is missing")));
            };
            let record = v.value();
            term = u64_from(
                unseal(record, &format_args!("raft_log[{k}]"))?.get(..8).unwrap_or(&[]),
                "log term",
            )?;
            freed += record.len() as u64;
            at = k;
        }
        drop(log);
        m.applied_log_bytes = m.applied_log_bytes.saturating_sub(freed);
        m.log_start = SnapshotMetadata {
            index: at,
            term,
            conf_state: Some(m.conf_state.clone()).into(),
            ..Default::default()
        };
        let mut mt = txn.open_table(META)?;
        put_meta(&mut mt, K_LOG_START, &m.log_start.write_to_bytes()?)?;
        if m.snap_file.is_some() && m.file_meta.index < at {
            m.snap_file = None;
            m.file_meta = SnapshotMetadata::default();
            mt.remove(K_SNAP_FILE)?;
            mt.remove(K_SNAP_META)?;
        }
        Ok(at)
    }

    /// Records a snapshot file of our own applied state at `index` (term `term`), written by the builder
    /// for a follower that needs one. The log is not touched. A file older than the log start, or not
    /// newer than the file kept, is refused (the caller drops it).
    pub fn record_file(
        &mut self,
        txn: &WriteTransaction,
        index: u64,
        term: u64,
        file: &Descriptor,
    ) -> Result<(), StoreError> {
        let m = self.stage();
        if !m.takes_file(index) || index > m.applied {
            let kept = m.snap_file.as_ref().map(|_| m.file_meta.index);
            return Err(StoreError::Invariant(format!(
                "snapshot file at {index} outside [log start {}, applied {}] or not newer than {kept:?}",
                m.log_start.index, m.applied
            )));
        }
        m.file_meta = SnapshotMetadata {
            index,
            term,
            conf_state: Some(m.conf_state.clone()).into(),
            ..Default::default()
        };
        m.snap_file = Some(file.clone());
        let mut mt = txn.open_table(META)?;
        put_meta(&mut mt, K_SNAP_META, &m.file_meta.write_to_bytes()?)?;
        put_meta(&mut mt, K_SNAP_FILE, &file.encode())?;
        Ok(())
    }

    fn read_term(&self, idx: u64) -> Result<Option<u64>, StoreError> {
        guard("log term read", || {
            let r = self.db.begin_read()?;
            let t = r.open_table(LOG)?;
            match t.get(idx)? {
                None => Ok(None),
                Some(v) => {
                    let plain = unseal(v.value(), &format_args!("raft_log[{idx}]"))?;
                    Ok(Some(u64_from(plain.get(..8).unwrap_or(&[]), "log term")?))
                }
            }
        })
        .map_err(|e| self.note(e))
    }

    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        guard("log read", || {
            let r = self.db.begin_read()?;
            let t = r.open_table(LOG)?;
            let mut out = Vec::new();
            let mut size = 0u64;
            for item in t.range(low..high)? {
                let (k, v) = item?;
                let (_, e) = decode_log_record(k.value(), v.value())?;
                if e.index != k.value() || e.index != low + out.len() as u64 {
                    return Err(StoreError::Damaged(format!("log hole or misplaced entry at {}", k.value())));
                }
                size += u64::from(e.compute_size());
                if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                    break;
                }
                out.push(e);
            }
            Ok(out)
        })
        .map_err(|e| self.note(e))
    }
}

/// The (index, term) a snapshot taken from `txn` stands for: the applied index recorded in the same commit as
/// the Fsm's tables, and its term (from its log record, or the log start's metadata when the log starts
/// after it). Used by the builder thread, which reads everything from its one read transaction.
pub fn applied_point(txn: &redb::ReadTransaction) -> Result<(u64, u64), StoreError> {
    let meta = txn.open_table(META)?;
    let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
        match meta.get(k)? {
            None => Ok(None),
            Some(v) => Ok(Some(unseal(v.value(), &format_args!("raft_meta[{k}]"))?.to_vec())),
        }
    };
    let applied = match get(K_APPLIED)? {
        Some(b) => u64_from(&b, K_APPLIED)?,
        None => return Err(StoreError::Invariant("no applied index to snapshot".into())),
    };
    // The log starts at the applied entry after a compaction to it (or an installed snapshot).
    for key in [K_LOG_START, K_SNAP_META] {
        if let Some(b) = get(key)? {
            let at = SnapshotMetadata::parse_from_bytes(&b)?;
            if at.index == applied {
                return Ok((applied, at.term));
            }
        }
    }
    let log = txn.open_table(LOG)?;
    match log.get(applied)? {
        Some(v) => {
            let plain = unseal(v.value(), &format_args!("raft_log[{applied}]"))?;
            Ok((applied, u64_from(plain.get(..8).unwrap_or(&[]), "log term")?))
        }
        None => Err(StoreError::Damaged(format!("raft_log[{applied}]: the applied entry is missing"))),
    }
}

fn put_meta(t: &mut redb::Table<&str, &[u8]>, key: &str, value: &[u8]) -> Result<(), StoreError> {
    t.insert(key, checksum::seal(value).as_slice())?;
    Ok(())
}

/// Verifies and decodes one log record: `(term prefix, entry)`.
fn decode_log_record(idx: u64, record: &[u8]) -> Result<(u64, Entry), StoreError> {
    let plain = unseal(record, &format_args!("raft_log[{idx}]"))?;
    if plain.len() < 8 {
        return Err(StoreError::Damaged(format!("raft_log[{idx}]: too short")));
    }
    let term = u64_from(&plain[..8], "log term")?;
    let e = Entry::parse_from_bytes(&plain[8..])
        .map_err(|e| StoreError::Damaged(format!("raft_log[{idx}]: protobuf: {e}")))?;
    Ok((term, e))
}

/// True for a store written before checksums: it has a node id but no `format` key.
fn needs_upgrade(db: &Database) -> Result<bool, StoreError> {
    let r = db.begin_read()?;
    let t = match r.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(t.get(K_NODE_ID)?.is_some() && t.get(K_FORMAT)?.is_none())
}

/// Seals every raft record of a version-1 store in one transaction (all or nothing) and marks it FORMAT.
fn upgrade(db: &Database) -> Result<(), StoreError> {
    let txn = begin_durable(db)?;
    {
        let mut meta = txn.open_table(META)?;
        let old: Vec<(String, Vec<u8>)> = meta
            .iter()?
            .map(|i| i.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        for (k, v) in old {
            put_meta(&mut meta, &k, &v)?;
        }
        put_meta(&mut meta, K_FORMAT, &FORMAT.to_le_bytes())?;
        let mut log = txn.open_table(LOG)?;
        let keys: Vec<u64> = log.iter()?.map(|i| i.map(|(k, _)| k.value())).collect::<Result<_, _>>()?;
        for k in keys {
            let v = log.get(k)?.map(|v| v.value().to_vec()).unwrap_or_default();
            log.insert(k, checksum::seal(&v).as_slice())?;
        }
        let mut snap = txn.open_table(SNAPSHOT)?;
        let data = snap.get(K_SNAP_DATA)?.map(|v| v.value().to_vec());
        if let Some(d) = data {
            snap.insert(K_SNAP_DATA, checksum::seal(&d).as_slice())?;
        }
    }
    txn.commit()?;
    tracing::warn!(format = FORMAT, "raft storage written before checksums: sealed every record in place");
    Ok(())
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
        if low <= self.cur.log_start.index {
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
        if idx == self.cur.log_start.index {
            return Ok(self.cur.log_start.term);
        }
        if idx < self.cur.log_start.index {
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
        Ok(self.cur.log_start.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cur.last_index)
    }

    /// The kept file, when it stands at or after both the log start (a follower installing it goes on
    /// with entries the log still holds) and `request_index`. Otherwise the request is noted for the loop,
    /// which builds a file of the applied state, and raft-rs asks again (on the follower's next heartbeat
    /// response).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let floor = request_index.max(self.cur.log_start.index);
        match &self.cur.snap_file {
            Some(file) if self.cur.file_meta.index >= floor => {
                // The data is a descriptor of the file; the transport streams the file itself.
                let mut s = Snapshot::default();
                s.set_metadata(self.cur.file_meta.clone());
                s.set_data(file.encode().into());
                Ok(s)
            }
            _ => {
                self.wanted.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Default::default() }
    }

    /// A bootstrapped store with entries 2..=4 ("seq=001234", ...) applied.
    fn store(dir: &std::path::Path) -> (Arc<Database>, RedbStorage) {
        let db = Arc::new(Database::create(dir.join("raft.redb")).expect("open"));
        let (mut st, _) = RedbStorage::open(db.clone(), snaps(dir)).expect("storage");
        let mut w = st.snap_dir().create(1, 1).expect("file");
        std::io::Write::write_all(&mut w, b"fsm").expect("write");
        let (file, _hold) = w.finish().expect("finish");
        let txn = db.begin_write().expect("w");
        st.bootstrap(&txn, 1, &[1], &file).expect("bootstrap");
        let ents = [entry(2, 1, b"seq=001234"), entry(3, 1, b"seq=001235"), entry(4, 1, b"seq=001236")];
        st.append(&txn, &ents).expect("append");
        let mut hs = st.stage().hard_state.clone();
        hs.commit = 4;
        st.set_hard_state(&txn, &hs).expect("hs");
        st.set_applied(&txn, 4, record_bytes(&ents)).expect("applied");
        txn.commit().expect("commit");
        st.commit_staged();
        (db, st)
    }

    /// What the log records of `ents` take on disk, as the loop counts them.
    fn record_bytes(ents: &[Entry]) -> u64 {
        ents.iter().map(|e| LOG_RECORD_OVERHEAD + u64::from(e.compute_size())).sum()
    }

    fn snaps(dir: &std::path::Path) -> Arc<SnapDir> {
        SnapDir::open(dir).expect("snapshot dir")
    }

    /// Rewrites a stored value through redb (so redb's own page checksums stay valid): only the record's
    /// checksum can notice.
    fn alter_log(db: &Database, idx: u64, f: impl Fn(&mut Vec<u8>)) {
        let txn = db.begin_write().expect("w");
        {
            let mut t = txn.open_table(LOG).expect("table");
            let mut v = t.get(idx).expect("get").expect("present").value().to_vec();
            f(&mut v);
            t.insert(idx, v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }

    fn alter(db: &Database, table: TableDefinition<&str, &[u8]>, key: &str, f: impl Fn(&mut Vec<u8>)) {
        let txn = db.begin_write().expect("w");
        {
            let mut t = txn.open_table(table).expect("table");
            let mut v = t.get(key).expect("get").expect("present").value().to_vec();
            f(&mut v);
            t.insert(key, v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }

    fn replace(v: &mut [u8], from: &[u8], to: &[u8]) {
        let at = v.windows(from.len()).position(|w| w == from).expect("marker");
        v[at..at + to.len()].copy_from_slice(to);
    }

    #[test]
    fn damage_after_open_is_an_error_on_read_and_raises_the_flag() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (db, st) = store(tmp.path());
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(st.entries(2, 5, None, ctx()).expect("read").len(), 3);
        let ents = st.entries(2, 5, None, ctx()).expect("read");
        assert_eq!(st.applied_log_bytes(), record_bytes(&ents), "counted by set_applied");
        // The issue's reproduction, on a running node: same length, different digits.
        alter_log(&db, 2, |v| replace(v, b"001234", b"009999"));
        let e = st.entries(2, 5, None, ctx()).expect_err("altered entry served");
        assert!(e.to_string().contains("raft_log[2]: checksum mismatch"), "{e}");
        assert!(st.term(2).is_err());
        assert_eq!(st.term(3).expect("intact"), 1);
        assert!(st.damage_flag().get().is_some_and(|m| m.contains("raft_log[2]")));
        // raft-rs gets a descriptor of the snapshot's file, never its bytes.
        let snap = st.snapshot(0, 2).expect("snapshot");
        assert_eq!(Descriptor::decode(&snap.data).expect("descriptor").size, 3);
    }

    #[test]
    fn open_verifies_every_record() {
        type Alter = fn(&Database, &std::path::Path);
        /// Rewrites the snapshot file (the only one in the directory).
        fn alter_file(dir: &std::path::Path, f: impl Fn(&mut Vec<u8>)) {
            let d = dir.join(super::super::snapfile::DIR);
            let name = std::fs::read_dir(&d).expect("ls").next().expect("a file").expect("entry").path();
            let mut v = std::fs::read(&name).expect("read");
            f(&mut v);
            std::fs::write(&name, v).expect("write");
        }
        let cases: [(&str, Alter); 7] = [
            ("raft_log[3]", |db, _| alter_log(db, 3, |v| replace(v, b"001235", b"009999"))),
            ("raft_log[4]", |db, _| alter_log(db, 4, |v| v.truncate(v.len() - 1))),
            ("raft_meta[hard_state]", |db, _| {
                alter(db, META, K_HARD_STATE, |v| *v.last_mut().expect("b") ^= 1)
            }),
            ("raft_meta[applied]", |db, _| alter(db, META, K_APPLIED, |v| v[5] ^= 0x80)),
            ("raft_meta[snapshot_file]", |db, _| alter(db, META, K_SNAP_FILE, |v| v[8] ^= 1)),
            ("fails its checksum", |_, dir| alter_file(dir, |v| replace(v, b"fsm", b"FSM"))),
            ("is missing", |_, dir| {
                let d = dir.join(super::super::snapfile::DIR);
                std::fs::remove_dir_all(&d).expect("rm");
            }),
        ];
        for (want, f) in cases {
            let tmp = tempfile::tempdir().expect("tmp");
            let (db, st) = store(tmp.path());
            drop(st);
            f(&db, tmp.path());
            let e = RedbStorage::open(db, snaps(tmp.path()))
                .err()
                .unwrap_or_else(|| panic!("{want}: damage not found at open"));
            assert!(matches!(e, StoreError::Damaged(_)), "{want}: {e:?}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        // A log with a hole is damage too.
        let tmp = tempfile::tempdir().expect("tmp");
        let (db, st) = store(tmp.path());
        drop(st);
        let txn = db.begin_write().expect("w");
        txn.open_table(LOG).expect("log").remove(3u64).expect("remove");
        txn.commit().expect("commit");
        let e = RedbStorage::open(db, snaps(tmp.path())).err().expect("hole");
        assert!(e.to_string().contains("raft_log[4]: expected index 3"), "{e}");
    }

    #[test]
    fn a_store_written_before_checksums_is_sealed_in_place() {
        let tmp = tempfile::tempdir().expect("tmp");
        let db = Arc::new(Database::create(tmp.path().join("raft.redb")).expect("open"));
        // The version-1 layout: raw values, no format key.
        let hs = HardState { term: 3, commit: 2, ..Default::default() };
        let cs = ConfState { voters: vec![1], ..Default::default() };
        let snap =
            SnapshotMetadata { index: 1, term: 1, conf_state: Some(cs.clone()).into(), ..Default::default() };
        let e = entry(2, 3, b"seq=001234");
        let mut rec = 3u64.to_le_bytes().to_vec();
        e.write_to_vec(&mut rec).expect("encode");
        let txn = db.begin_write().expect("w");
        {
            let mut m = txn.open_table(META).expect("meta");
            m.insert(K_NODE_ID, 1u64.to_le_bytes().as_slice()).expect("i");
            m.insert(K_HARD_STATE, hs.write_to_bytes().expect("e").as_slice()).expect("i");
            m.insert(K_CONF_STATE, cs.write_to_bytes().expect("e").as_slice()).expect("i");
            m.insert(K_SNAP_META, snap.write_to_bytes().expect("e").as_slice()).expect("i");
            m.insert(K_APPLIED, 2u64.to_le_bytes().as_slice()).expect("i");
            txn.open_table(LOG).expect("log").insert(2u64, rec.as_slice()).expect("i");
            txn.open_table(SNAPSHOT).expect("snap").insert(K_SNAP_DATA, b"old".as_slice()).expect("i");
        }
        txn.commit().expect("commit");
        let (st, found) = RedbStorage::open(db.clone(), snaps(tmp.path())).expect("upgrade");
        assert_eq!(found, Found::Initialized { node_id: 1 });
        assert!(st.scan_report().upgraded);
        assert_eq!((st.hard_state().term, st.applied(), st.cur.last_index), (3, 2, 2));
        assert_eq!(st.entries(2, 3, None, GetEntriesContext::empty(false)).expect("read")[0], e);
        // The in-table snapshot of the old binary moved into a file, once.
        assert!(st.scan_report().snapshot_migrated);
        let file = Descriptor::decode(&st.snapshot(0, 1).expect("snap").data).expect("descriptor");
        let src = super::super::snapfile::FileSource { dir: st.snap_dir(), desc: file, flush: None };
        use super::super::snapfile::SnapshotSource as _;
        assert_eq!(src.read_all().expect("read"), b"old");
        drop(st);
        let (st, _) = RedbStorage::open(db.clone(), snaps(tmp.path())).expect("reopen");
        assert!(!st.scan_report().upgraded, "sealed once");
        assert!(!st.scan_report().snapshot_migrated, "moved once");
        let r = db.begin_read().expect("r");
        assert!(r.open_table(SNAPSHOT).expect("t").get(K_SNAP_DATA).expect("get").is_none());
        assert_eq!(st.scan_report().log_entries, 1);
    }

    /// The log start is kept apart from the snapshot file: compacting without a file lets a file older
    /// than the new start go, `snapshot` then notes a request instead of serving it, a recorded file serves
    /// again, and all of it survives a reopen. A store without the `log_start` key (written before it, or
    /// bootstrapped and never compacted) starts its log at the file.
    #[test]
    fn the_log_start_is_kept_apart_from_the_snapshot_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (db, mut st) = store(tmp.path());
        let has_start_key = |db: &Database| {
            db.begin_read()
                .expect("r")
                .open_table(META)
                .expect("meta")
                .get(K_LOG_START)
                .expect("get")
                .is_some()
        };
        assert!(!has_start_key(&db), "bootstrap writes what older binaries read");
        assert_eq!((st.snapshot_index(), st.file_index()), (1, Some(1)));
        let before = st.applied_log_bytes();
        // A step bounded to a byte deletes the one record that reaches it; the next goes on from there.
        let txn = db.begin_write().expect("w");
        assert_eq!(st.compact_log(&txn, 3, 1).expect("compact"), 2);
        txn.commit().expect("commit");
        st.commit_staged();
        assert_eq!((st.snapshot_index(), st.file_index()), (2, None), "the file at 1 is let go");
        let txn = db.begin_write().expect("w");
        assert_eq!(st.compact_log(&txn, 3, 0).expect("compact"), 3);
        txn.commit().expect("commit");
        st.commit_staged();
        assert_eq!((st.snapshot_index(), st.file_index()), (3, None), "the file at 1 is let go");
        let four = st.entries(4, 5, None, GetEntriesContext::empty(false)).expect("kept");
        assert_eq!(st.applied_log_bytes(), record_bytes(&four), "only entry 4 counts: {before} before");
        assert_eq!(st.first_index().expect("first"), 4);
        assert_eq!(st.term(3).expect("the start's term"), 1);
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(st.entries(3, 5, None, ctx()), Err(raft::Error::Store(StorageError::Compacted)));
        assert_eq!(st.entries(4, 5, None, ctx()).expect("kept").len(), 1);
        assert_eq!(st.snapshot(0, 2), Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)));
        assert!(st.take_snapshot_wanted() && !st.take_snapshot_wanted(), "noted once");
        // Out of range: at or below the start, past the applied index.
        for at in [3, 5] {
            let txn = db.begin_write().expect("w");
            assert!(matches!(st.compact_log(&txn, at, 0), Err(StoreError::Invariant(_))), "{at}");
            st.abort_staged();
        }
        // A file of the applied state serves; one not newer is refused.
        let mut w = st.snap_dir().create(4, 1).expect("file");
        std::io::Write::write_all(&mut w, b"fsm4").expect("write");
        let (file, _hold) = w.finish().expect("finish");
        let txn = db.begin_write().expect("w");
        st.record_file(&txn, 4, 1, &file).expect("record");
        txn.commit().expect("commit");
        st.commit_staged();
        let snap = st.snapshot(0, 2).expect("served");
        assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (4, 1));
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1]);
        assert_eq!(st.snapshot(5, 2), Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)));
        let txn = db.begin_write().expect("w");
        assert!(matches!(st.record_file(&txn, 4, 1, &file), Err(StoreError::Invariant(_))));
        st.abort_staged();
        drop(txn);
        let r = db.begin_read().expect("r");
        assert_eq!(applied_point(&r).expect("point"), (4, 1));
        drop(r);
        // Compacted to the applied index, the builder's point comes from the log start.
        let txn = db.begin_write().expect("w");
        // Bounded to one record's bytes, one step deletes one record.
        assert_eq!(st.compact_log(&txn, 4, 1).expect("compact"), 4);
        txn.commit().expect("commit");
        st.commit_staged();
        assert_eq!((st.snapshot_index(), st.file_index(), st.applied_log_bytes()), (4, Some(4), 0));
        let r = db.begin_read().expect("r");
        assert_eq!(applied_point(&r).expect("point"), (4, 1));
        drop(r);
        drop(st);
        let (st, _) = RedbStorage::open(db.clone(), snaps(tmp.path())).expect("reopen");
        assert!(has_start_key(&db));
        assert_eq!((st.snapshot_index(), st.file_index(), st.applied()), (4, Some(4), 4));
        assert_eq!(st.snapshot(0, 2).expect("kept").get_metadata().index, 4);
    }

    #[test]
    fn a_panic_inside_storage_code_becomes_damage() {
        let r: Result<(), StoreError> = guard("a read", || panic!("entered unreachable code"));
        let e = r.expect_err("panic caught");
        assert!(
            matches!(&e, StoreError::Damaged(m) if m.contains("storage panic during a read: entered unreachable code")),
            "{e:?}"
        );
    }
}
