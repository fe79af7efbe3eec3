//! The state machine's redb tables (in the Database the raft layer owns, next to its log) and the read
//! helpers the APIs use. Tables are created on first write; reading a table that does not exist yet reads as
//! empty. Every value is JSON of a `model` type, except change-log rows (see [`CHANGES`]) and counters.
//!
//! Every value is stored sealed ([`checksum::seal`]: format tag and CRC-32C) and verified on every read
//! ([`checksum::open`]): in apply (`fsm/redb_state.rs`), in snapshots (`fsm/snapshot.rs`) and here in the
//! [`Reader`] the APIs use. A mismatch is [`StoreError::Corrupt`]: apply stops the node as a corrupt replica;
//! a read answers an error for that request and raises the node's damage flag (see [`watch_damage`]) so the
//! node stops as a corrupt replica too. Panics inside redb while reading (damaged pages) are caught at this
//! boundary and become the same error. Stores written before checksums (format 1: the `fsm_meta` counters
//! table of u64s, unsealed values) are sealed in place once by [`open_store`]. The seal covers each record's
//! table key too ([`RowKey`], [`checksum::seal_keyed`]), so a row whose key bytes changed is caught like an
//! altered value; records sealed before keys were covered (format 2) still read and are resealed with their
//! key by [`open_store`].

use std::ops::{Bound, ControlFlow};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
    TableHandle, WriteTransaction,
};
use state_machines::ObjectId;

use crate::checksum;

use crate::model::{AgentRecord, ChangeEvent, HistoryEntry, MemberRecord, ObjectCore, ObjectRecord};
use crate::safety::{AuditEntry, Proposal, ProposalFilter, ProposalStatus, SafetyConfig, ScopeRecord};

/// Counters: [`META_REVISION`], [`META_CHANGELOG_FIRST`], ...; each value is sealed 8 bytes big-endian.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_counters");
/// The counters of a store written before checksums (format 1): unsealed u64 values. [`open_store`] moves
/// them to [`META`] and drops this table; its presence (or fsm tables without [`META`]) marks format 1.
const LEGACY_META: TableDefinition<&str, u64> = TableDefinition::new("fsm_meta");
/// Object id -> ObjectRecord JSON.
pub const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_objects");
/// (object id, history seq) -> HistoryEntry JSON.
pub const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("fsm_history");
/// First revision of a batch -> 8 bytes big-endian last revision of the batch, then the batch's events as a
/// JSON array. One row per applied entry keeps the change log cheap at 20,000 changes per second.
pub const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("fsm_changes");
/// Agent id -> AgentRecord JSON.
pub const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_agents");
/// Raft node id -> MemberRecord JSON (client API addresses).
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("fsm_members");

/// Safety net (see `safety.rs`): scope name -> ScopeRecord JSON.
pub const SCOPES: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_scopes");
/// Proposal id -> Proposal JSON (pending and decided; decided ones are bounded).
pub const PROPOSALS: TableDefinition<u64, &[u8]> = TableDefinition::new("fsm_proposals");
/// Object id -> 8 bytes big-endian id of its latest proposal.
pub const PROPOSAL_OBJ: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_proposal_obj");
/// Pending proposal id -> object id (utf-8): the index bulk decisions and listings scan.
pub const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("fsm_pending");
/// Replicated settings: [`SETTING_SAFETY`] -> SafetyConfig JSON, [`SETTING_TOPOLOGY`] ->
/// `model::ActiveTopology` JSON (absent: no replicated topology).
pub const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_settings");
/// Alert/audit log: id -> AuditEntry JSON (bounded).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("fsm_audit");

/// Idempotency key -> RequestRecord JSON (bounded: [`crate::model::MAX_REQUEST_KEYS`]).
pub const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_requests");
/// Key sequence -> idempotency key (utf-8): the eviction order of [`REQUESTS`].
pub const REQUEST_ORDER: TableDefinition<u64, &[u8]> = TableDefinition::new("fsm_request_order");

pub const SETTING_SAFETY: &str = "safety";
pub const SETTING_TOPOLOGY: &str = "topology";
/// The cluster's heartbeat secret (32 bytes, sealed; `Command::SetBeatSecret`): absent until a leader sets it.
pub const SETTING_BEAT_SECRET: &str = "beat_secret";

/// A stored heartbeat secret: exactly 32 bytes under its seal.
pub fn decode_beat_secret(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    beat_secret_of(unseal("fsm_settings", SETTING_BEAT_SECRET, bytes)?)
}

/// A heartbeat secret's payload (a snapshot record, or a row once unsealed): exactly 32 bytes.
pub fn beat_secret_of(payload: &[u8]) -> Result<[u8; 32], StoreError> {
    payload.try_into().map_err(|_| StoreError::Corrupt {
        table: "fsm_settings",
        message: "beat secret is not 32 bytes".into(),
    })
}
/// The checker catalog: checker name -> `catalog::CheckerRecord` (versions, stable version, rollouts).
pub const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_catalog");
/// Artifact bytes, content-addressed: (sha256 hex, chunk index) -> up to `catalog::CHUNK_BYTES` bytes.
pub const BLOBS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("fsm_blobs");
/// Replicated counts (see `fsm/counts.rs`): `f/KIND/STATE` and `s/SCOPE/KIND/STATE` -> sealed u64 (as
/// [`META`]'s values); a zero count has no row.
pub const COUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_counts");
/// Objects in REPAIR without a ticket: ticket idempotency key `OBJECT@ENTERED_MS` -> object id (utf-8).
/// The ticket dispatcher's queue, in the order it files.
pub const REPAIR_QUEUE: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_repair_queue");
/// Bytes stored in [`BLOBS`] (the catalog's total limit), checkers in [`CATALOG`], whether the default
/// artifacts were seeded, and a counter bumped by every catalog change (the leader's assignment cache key).
pub const META_CATALOG_BYTES: &str = "catalog_bytes";
pub const META_CATALOG_CHECKERS: &str = "catalog_checkers";
pub const META_CATALOG_SEEDED: &str = "catalog_seeded";
pub const META_CATALOG_REV: &str = "catalog_rev";
/// Sequence the next idempotency key gets, and how many keys are remembered.
pub const META_REQUEST_NEXT: &str = "request_next";
pub const META_REQUEST_COUNT: &str = "request_count";
pub const META_PROPOSAL_NEXT: &str = "proposal_next";
pub const META_AUDIT_NEXT: &str = "audit_next";

pub const META_REVISION: &str = "revision";
/// Lowest revision still in the change log (revisions below it were compacted).
pub const META_CHANGELOG_FIRST: &str = "changelog_first";
/// Bytes of the change log's rows (unsealed `make_change_row` bytes), kept with each write so the byte bound
/// needs no scan; absent in stores written before it (counted once, at the first write that needs it).
pub const META_CHANGELOG_BYTES: &str = "changelog_bytes";
/// The cluster-wide `min_command_version` (absent: [`crate::model::DEFAULT_MIN_COMMAND_VERSION`]).
pub const META_MIN_COMMAND_VERSION: &str = "min_command_version";
/// Changes of the active topology (sets and clears): 0 means never set, which is when a leader with a
/// `[topology] file` pushes and activates it (once per cluster).
pub const META_TOPOLOGY_REV: &str = "topology_rev";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(String),
    /// Stored bytes fail verification (checksum, decoding, redb's page checks, a panic inside redb): never
    /// served or applied; the node stops as a corrupt replica.
    #[error("corrupt record in {table}: {message}")]
    Corrupt { table: &'static str, message: String },
    /// A committed entry this binary is too old to apply: the node must stop (never skip it) until upgraded.
    #[error(
        "entry {index} needs command version {needs}, this binary knows up to {knows}: upgrade this node"
    )]
    TooNew { index: u64, needs: u32, knows: u32 },
}

macro_rules! impl_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                match redb::Error::from(e) {
                    redb::Error::Corrupted(m) => StoreError::Corrupt { table: "redb", message: m },
                    e => StoreError::Storage(e.to_string()),
                }
            }
        }
    )*};
}
impl_from_redb!(redb::StorageError, redb::TableError, redb::TransactionError, redb::CommitError);

/// Decode a JSON payload (an unsealed value: snapshot records, the in-memory model).
pub fn decode<T: serde::de::DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table, message: e.to_string() })
}

/// The bytes of a table key that a record's seal covers ([`checksum::seal_keyed`]): utf-8 for string keys,
/// 8 bytes big-endian for numbers, `id ++ 0 ++ seq` (big-endian) for history rows: the same encoding the
/// snapshot records use for their keys, so a restore seals each record with its snapshot key as is.
pub trait RowKey {
    fn row_key(&self) -> std::borrow::Cow<'_, [u8]>;
}

impl RowKey for str {
    fn row_key(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.as_bytes())
    }
}

impl<T: RowKey + ?Sized> RowKey for &T {
    fn row_key(&self) -> std::borrow::Cow<'_, [u8]> {
        (**self).row_key()
    }
}

impl RowKey for u64 {
    fn row_key(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.to_be_bytes().to_vec())
    }
}

impl RowKey for (&str, u64) {
    fn row_key(&self) -> std::borrow::Cow<'_, [u8]> {
        let mut key = Vec::with_capacity(self.0.len() + 9);
        key.extend_from_slice(self.0.as_bytes());
        key.push(0);
        key.extend_from_slice(&self.1.to_be_bytes());
        std::borrow::Cow::Owned(key)
    }
}

/// Verify a stored value's checksum frame (over its key and payload; the older frame over the payload
/// alone still reads) and return its payload.
pub fn unseal<'a, K: RowKey + ?Sized>(
    table: &'static str,
    key: &K,
    bytes: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    checksum::open_keyed(&key.row_key(), bytes)
        .map_err(|e| StoreError::Corrupt { table, message: e.to_string() })
}

/// Verify and decode a stored (sealed) JSON value.
pub fn decode_sealed<T: serde::de::DeserializeOwned, K: RowKey + ?Sized>(
    table: &'static str,
    key: &K,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode(table, unseal(table, key, bytes)?)
}

/// The sealed JSON of `value` stored under `key` (encoded straight into its frame).
pub fn encode_sealed<T: serde::Serialize, K: RowKey + ?Sized>(key: &K, value: &T) -> Vec<u8> {
    checksum::seal_keyed_with(&key.row_key(), |buf| {
        // Model types are plain data with string map keys: serialization cannot fail (as in `encode`,
        // a failure would leave the payload empty).
        if serde_json::to_writer(&mut *buf, value).is_err() {
            buf.truncate(checksum::OVERHEAD);
        }
    })
}

/// Raw bytes sealed under `key`.
pub fn seal_bytes<K: RowKey + ?Sized>(key: &K, payload: &[u8]) -> Vec<u8> {
    checksum::seal_keyed(&key.row_key(), payload)
}

/// A stored counter under `key`: sealed 8 bytes big-endian.
pub fn seal_u64(key: &str, v: u64) -> [u8; 8 + checksum::OVERHEAD] {
    let mut out = [0u8; 8 + checksum::OVERHEAD];
    out.copy_from_slice(&checksum::seal_keyed(key.as_bytes(), &v.to_be_bytes()));
    out
}

/// Verify and decode a stored counter.
pub fn unseal_u64(table: &'static str, key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let plain: [u8; 8] = unseal(table, key, bytes)?
        .try_into()
        .map_err(|_| StoreError::Corrupt { table, message: "counter is not 8 bytes".into() })?;
    Ok(u64::from_be_bytes(plain))
}

/// The first damage a node found in its storage; the raft layer's flag of the same type (shared so a
/// corrupt read stops the node as a corrupt replica, as a corrupt raft record does).
pub type DamageFlag = Arc<OnceLock<String>>;

/// The damage flag of each open database (by address), registered by the node that owns it. Weak: a
/// stopped node's entry is pruned at the next registration, so the list is bounded by the live nodes.
static DAMAGE_FLAGS: Mutex<Vec<(usize, Weak<OnceLock<String>>)>> = Mutex::new(Vec::new());

fn db_key(db: &redb::Database) -> usize {
    std::ptr::from_ref(db) as usize
}

/// Make readers of `db` raise `flag` when they find damage (the raft loop then stops the node as a
/// corrupt replica and `/metrics` shows `storage_corrupt 1`).
pub fn watch_damage(db: &redb::Database, flag: &DamageFlag) {
    let mut flags = DAMAGE_FLAGS.lock().unwrap_or_else(|p| p.into_inner());
    let key = db_key(db);
    flags.retain(|(k, w)| *k != key && w.strong_count() > 0);
    flags.push((key, Arc::downgrade(flag)));
}

fn damage_flag_of(db: &redb::Database) -> Option<DamageFlag> {
    let flags = DAMAGE_FLAGS.lock().unwrap_or_else(|p| p.into_inner());
    let key = db_key(db);
    flags.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade())
}

/// Count damage found by a read and raise the node's flag (first damage wins).
fn note_damage(flag: Option<&DamageFlag>, e: &StoreError) {
    if let StoreError::Corrupt { table, message } = e {
        crate::raft::alarms::CORRUPTION_DETECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = format!("fsm read: corrupt record in {table}: {message}");
        tracing::error!(error = %text, "state machine storage is damaged: the node stops as a corrupt replica");
        if let Some(f) = flag {
            // Err: an earlier damage is already recorded; it is the one the node reports.
            if f.set(text).is_err() {
                tracing::debug!("damage flag already raised");
            }
        }
    }
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Run storage code, turning a panic inside redb (its btree code panics on damaged pages) into
/// [`StoreError::Corrupt`].
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(StoreError::Corrupt {
            table: "redb",
            message: format!("storage panic during {what}: {}", panic_text(&*p)),
        }),
    }
}

pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Model types are plain data with string map keys: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Split a change-log row (unsealed) into (last revision, encoded events).
pub fn split_change_row(row: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt { table: "fsm_changes", message: "short row".into() };
    let head: [u8; 8] = row.get(..8).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(head), &row[8..]))
}

/// A change-log row: the entry's last revision (8 bytes big-endian), then its events, as a protobuf
/// `ChangeRow` (`proto/entry.proto`) when `binary` (the cluster enabled
/// [`crate::model::BINARY_ENTRY_VERSION`] at this entry: the same on every member, so every member writes
/// rows of the same size and the byte bound compacts alike), else as a JSON array.
pub fn make_change_row(last: u64, events: &[ChangeEvent], binary: bool) -> Vec<u8> {
    let mut row = last.to_be_bytes().to_vec();
    if binary {
        proto::convert::encode_change_row(events, &mut row);
    } else {
        row.extend_from_slice(&encode(&events));
    }
    row
}

/// The events of a change-log row's payload ([`split_change_row`]) in either format: a JSON array starts
/// with `[`, which no protobuf `ChangeRow` does (its field 1 starts 0x0A; an empty row is empty).
/// Whether a change-log row's payload is in the binary format of command version 9 (a protobuf
/// `ChangeRow`) rather than a JSON array, which always starts with `[` (a protobuf row never does).
fn is_binary_change_row(payload: &[u8]) -> bool {
    payload.first() != Some(&b'[')
}

pub fn decode_change_events(payload: &[u8]) -> Result<Vec<ChangeEvent>, StoreError> {
    if !is_binary_change_row(payload) {
        return decode("fsm_changes", payload);
    }
    use prost::Message as _;
    let row = proto::entry::ChangeRow::decode(payload)
        .map_err(|e| StoreError::Corrupt { table: "fsm_changes", message: e.to_string() })?;
    Ok(row.events.into_iter().map(proto::convert::event_from_wire).collect())
}

/// Each event's revision and object id in a change-log row's payload, in order, without building the
/// events: the followed indexes need no more, and decoding whole events (with their detail texts) for
/// them was most of their reads under batched ingest (`perf`, 2026-12-05). A protobuf row is walked field
/// by field (an `Event`'s field 1 is its revision, field 3 its object; the rest is skipped, as a decoder
/// skips unknown fields); a JSON row is decoded whole. The row was verified by its seal before this, so
/// the walk's checks only keep a damaged payload from being misread: it fails where the full decode does
/// on truncations and wrong wire types (`tests::change_ids_are_what_the_full_decode_reads`).
pub fn for_each_change_id(payload: &[u8], mut f: impl FnMut(u64, &str)) -> Result<(), StoreError> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    if !is_binary_change_row(payload) {
        for e in decode_change_events(payload)? {
            f(e.revision, &e.object);
        }
        return Ok(());
    }
    let corrupt = |m: String| StoreError::Corrupt { table: "fsm_changes", message: m };
    let mut row: &[u8] = payload;
    while !row.is_empty() {
        let (tag, wire) = decode_key(&mut row).map_err(|e| corrupt(e.to_string()))?;
        if tag != 1 {
            skip_field(wire, tag, &mut row, DecodeContext::default()).map_err(|e| corrupt(e.to_string()))?;
            continue;
        }
        if wire != WireType::LengthDelimited {
            return Err(corrupt(format!("change row: event field of wire type {wire:?}")));
        }
        let len = decode_varint(&mut row).map_err(|e| corrupt(e.to_string()))?;
        let len = usize::try_from(len).ok().filter(|l| *l <= row.len());
        let Some(len) = len else { return Err(corrupt("change row: an event runs past the row".into())) };
        let (mut ev, rest) = row.split_at(len);
        row = rest;
        let (mut revision, mut object) = (0u64, "");
        while !ev.is_empty() {
            let (tag, wire) = decode_key(&mut ev).map_err(|e| corrupt(e.to_string()))?;
            match (tag, wire) {
                (1, WireType::Varint) => {
                    revision = decode_varint(&mut ev).map_err(|e| corrupt(e.to_string()))?
                }
                (3, WireType::LengthDelimited) => {
                    let n = decode_varint(&mut ev).map_err(|e| corrupt(e.to_string()))?;
                    let n = usize::try_from(n).ok().filter(|n| *n <= ev.len());
                    let Some(n) = n else {
                        return Err(corrupt("change row: an object id runs past its event".into()));
                    };
                    let (text, rest) = ev.split_at(n);
                    object = std::str::from_utf8(text)
                        .map_err(|e| corrupt(format!("change row: object id: {e}")))?;
                    ev = rest;
                }
                (1 | 3, w) => return Err(corrupt(format!("change row: field {tag} of wire type {w:?}"))),
                _ => skip_field(wire, tag, &mut ev, DecodeContext::default())
                    .map_err(|e| corrupt(e.to_string()))?,
            }
        }
        f(revision, object);
    }
    Ok(())
}

/// Open a table for reading; a table never written reads as absent.
macro_rules! open_read {
    ($txn:expr, $def:expr) => {
        match $txn.open_table($def) {
            Ok(t) => Some(t),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
}

/// What [`open_store`] found: the records it verified and whether it sealed a format-1 store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub records: u64,
    pub bytes: u64,
    /// The store was written before checksums and was sealed in place by this open.
    pub upgraded: bool,
    /// Records found in the frame that does not cover their key (written before keys were covered):
    /// [`open_store`] reseals them in place, `huatuo master --verify` only counts them.
    pub unkeyed: u64,
    /// Records resealed with their key by this open (format 2 -> 3).
    pub resealed: u64,
    /// Objects counted into the replicated counts and ticket queue by this open (a store written before
    /// the counters, see `fsm/counts.rs`); 0 when the store had them.
    pub recounted: u64,
}

/// The value tables keyed by strings and by u64s, with their names (for errors); with [`HISTORY`] and
/// [`META`], every fsm table.
type StrTable = TableDefinition<'static, &'static str, &'static [u8]>;
type U64Table = TableDefinition<'static, u64, &'static [u8]>;
const STR_TABLES: [(&str, StrTable); 9] = [
    ("fsm_objects", OBJECTS),
    ("fsm_counts", COUNTS),
    ("fsm_repair_queue", REPAIR_QUEUE),
    ("fsm_catalog", CATALOG),
    ("fsm_agents", AGENTS),
    ("fsm_scopes", SCOPES),
    ("fsm_proposal_obj", PROPOSAL_OBJ),
    ("fsm_settings", SETTINGS),
    ("fsm_requests", REQUESTS),
];
const U64_TABLES: [(&str, U64Table); 6] = [
    ("fsm_changes", CHANGES),
    ("fsm_members", MEMBERS),
    ("fsm_proposals", PROPOSALS),
    ("fsm_pending", PENDING),
    ("fsm_audit", AUDIT),
    ("fsm_request_order", REQUEST_ORDER),
];

/// Prepare the state machine's tables before anything is applied or read: seal a format-1 store in place
/// (one transaction, all or nothing), verify the checksum of every record, and reseal records whose frame
/// does not cover their key yet (format 2, one transaction). Damage is [`StoreError::Corrupt`] (the node
/// refuses to start).
pub fn open_store(db: &redb::Database) -> Result<OpenReport, StoreError> {
    guard("opening the state machine's tables", || {
        let upgraded = needs_upgrade(db)?;
        if upgraded {
            upgrade(db)?;
        }
        // Before the verification, so it covers the rows the recount writes.
        let recounted = recount_if_missing(db)?;
        let mut report = verify_store(db)?;
        report.upgraded = upgraded;
        report.recounted = recounted;
        if report.unkeyed > 0 {
            report.resealed = reseal_with_keys(db)?;
        }
        Ok(report)
    })
}

/// Count every object into the replicated counts and ticket queue when the store has objects but no
/// counts (written by a binary before them; one transaction); returns how many objects were counted.
fn recount_if_missing(db: &redb::Database) -> Result<u64, StoreError> {
    if !crate::fsm::counts::needs_recount(&db.begin_read()?)? {
        return Ok(0);
    }
    let txn = crate::raft::begin_durable(db)?;
    let objects = crate::fsm::counts::recount_store(&txn)?;
    txn.commit()?;
    tracing::warn!(
        objects,
        "state machine written before the replicated counters: counts and ticket queue recounted"
    );
    Ok(objects)
}

/// Format 1: the legacy counters table exists, or fsm tables exist without the sealed counters table.
fn needs_upgrade(db: &redb::Database) -> Result<bool, StoreError> {
    let txn = db.begin_read()?;
    let names: Vec<String> = txn.list_tables()?.map(|h| h.name().to_string()).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    let ours =
        STR_TABLES.iter().map(|d| d.0).chain(U64_TABLES.iter().map(|d| d.0)).chain(["fsm_history"]).any(has);
    Ok(has("fsm_meta") || (ours && !has("fsm_counters")))
}

/// The new payload of a rewritten record (None: leave the record as it is).
type Rewrite<'a> = &'a dyn Fn(&'static str, &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

/// Rewrite every record of every fsm table whose `rewrite` gives a payload, sealed with its key; returns
/// how many were rewritten.
fn rewrite_all(txn: &WriteTransaction, rewrite: Rewrite<'_>) -> Result<u64, StoreError> {
    let mut rows =
        rewrite_table(txn, "fsm_counters", META, |k: &str| k.to_string(), |k| k.as_str(), rewrite)?;
    for (name, def) in STR_TABLES {
        rows += rewrite_table(txn, name, def, |k: &str| k.to_string(), |k| k.as_str(), rewrite)?;
    }
    for (name, def) in U64_TABLES {
        rows += rewrite_table(txn, name, def, |k: u64| k, |k| *k, rewrite)?;
    }
    rows += rewrite_table(
        txn,
        "fsm_history",
        HISTORY,
        |(id, seq): (&str, u64)| (id.to_string(), seq),
        |(id, seq)| (id.as_str(), *seq),
        rewrite,
    )?;
    Ok(rows)
}

/// Seal every value of a format-1 store and move its counters to [`META`]. Holds one table's rows in
/// memory at a time (the migration runs once per store).
fn upgrade(db: &redb::Database) -> Result<(), StoreError> {
    let txn = crate::raft::begin_durable(db)?;
    let mut rows = 0u64;
    {
        let legacy: Vec<(String, u64)> = match txn.open_table(LEGACY_META) {
            Ok(t) => t
                .iter()?
                .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value())))
                .collect::<Result<_, _>>()?,
            Err(TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        txn.delete_table(LEGACY_META)?;
        let mut meta = txn.open_table(META)?;
        for (k, v) in &legacy {
            meta.insert(k.as_str(), seal_u64(k, *v).as_slice())?;
            rows += 1;
        }
    }
    // Every value is a plain payload; the counters just written are sealed already (skipped).
    rows += rewrite_all(&txn, &|table, v| Ok((table != "fsm_counters").then(|| v.to_vec())))?;
    txn.commit()?;
    tracing::warn!(rows, "state machine tables written before checksums: sealed every record in place");
    Ok(())
}

/// Reseal every record whose frame does not cover its key (format 2) with its key, in one transaction;
/// returns how many. Each is verified first: a damaged one stops the open (never resealed as if good).
fn reseal_with_keys(db: &redb::Database) -> Result<u64, StoreError> {
    let txn = crate::raft::begin_durable(db)?;
    let rows = rewrite_all(&txn, &|table, v| {
        if !checksum::is_unkeyed(v) {
            return Ok(None);
        }
        let payload = checksum::open(v).map_err(|e| StoreError::Corrupt { table, message: e.to_string() })?;
        Ok(Some(payload.to_vec()))
    })?;
    txn.commit()?;
    tracing::info!(rows, "state machine records resealed with their keys (format 2 -> 3)");
    Ok(rows)
}

/// Rewrite the records of `def` that `rewrite` gives a payload for, sealed under their key.
fn rewrite_table<K, O>(
    txn: &WriteTransaction,
    table: &'static str,
    def: TableDefinition<K, &[u8]>,
    own: impl Fn(K::SelfType<'_>) -> O,
    borrow: impl for<'a> Fn(&'a O) -> K::SelfType<'a>,
    rewrite: Rewrite<'_>,
) -> Result<u64, StoreError>
where
    K: redb::Key + 'static,
    for<'a> K::SelfType<'a>: RowKey,
{
    let mut t = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut new = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if let Some(payload) = rewrite(table, v.value())? {
            let key = k.value();
            let sealed = checksum::seal_keyed(&key.row_key(), &payload);
            new.push((own(key), sealed));
        }
    }
    for (k, v) in &new {
        t.insert(borrow(k), v.as_slice())?;
    }
    Ok(new.len() as u64)
}

/// Verify the checksum of every record of the state machine's tables, over its key and value (payloads
/// are not decoded).
pub fn verify_store(db: &redb::Database) -> Result<OpenReport, StoreError> {
    let txn = db.begin_read()?;
    let mut report = OpenReport::default();
    let mut count = |table: &'static str, key: &[u8], bytes: &[u8]| -> Result<(), StoreError> {
        checksum::open_keyed(key, bytes)
            .map_err(|e| StoreError::Corrupt { table, message: e.to_string() })?;
        report.records += 1;
        report.bytes += bytes.len() as u64;
        if checksum::is_unkeyed(bytes) {
            report.unkeyed += 1;
        }
        Ok(())
    };
    if let Some(t) = open_read!(txn, META) {
        for row in t.iter()? {
            let (k, v) = row?;
            unseal_u64("fsm_counters", k.value(), v.value())?;
            count("fsm_counters", k.value().as_bytes(), v.value())?;
        }
    }
    for (name, def) in STR_TABLES {
        if let Some(t) = open_read!(txn, def) {
            for row in t.iter()? {
                let (k, v) = row?;
                count(name, k.value().as_bytes(), v.value())?;
            }
        }
    }
    for (name, def) in U64_TABLES {
        if let Some(t) = open_read!(txn, def) {
            for row in t.iter()? {
                let (k, v) = row?;
                count(name, &k.value().to_be_bytes(), v.value())?;
            }
        }
    }
    if let Some(t) = open_read!(txn, HISTORY) {
        for row in t.iter()? {
            let (k, v) = row?;
            count("fsm_history", &k.value().row_key(), v.value())?;
        }
    }
    if let Some(t) = open_read!(txn, BLOBS) {
        for row in t.iter()? {
            let (k, v) = row?;
            count("fsm_blobs", &k.value().row_key(), v.value())?;
        }
    }
    Ok(report)
}

/// Visit the object rows `filter` can match ([`Filter::key_ranges`]) with keys strictly after `after`, in
/// key order, until `visit` breaks.
fn rows_in<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    filter: &Filter,
    after: Option<&str>,
    mut visit: impl FnMut(&str, &[u8]) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    for range in filter.key_ranges() {
        match range {
            KeyRange::Exact(key) => {
                if after.is_some_and(|a| key.as_str() <= a) {
                    continue;
                }
                if let Some(v) = t.get(key.as_str())?
                    && visit(&key, v.value())?.is_break()
                {
                    return Ok(());
                }
            }
            KeyRange::Prefix(prefix) => {
                let start = match after {
                    Some(a) if a >= prefix.as_str() => Bound::Excluded(a),
                    _ => Bound::Included(prefix.as_str()),
                };
                for row in t.range::<&str>((start, Bound::Unbounded))? {
                    let (k, v) = row?;
                    let key = k.value();
                    if !key.starts_with(&prefix) {
                        break;
                    }
                    if visit(key, v.value())?.is_break() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// A consistent read view of the state machine. Every value is verified before it is decoded; damage
/// (a checksum mismatch, an undecodable record, a panic inside redb) is answered as
/// [`StoreError::Corrupt`] and raises the node's damage flag (see [`watch_damage`]).
pub struct Reader {
    txn: ReadTransaction,
    damage: Option<DamageFlag>,
}

/// Filter for listings and watches. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub kind: Option<state_machines::Kind>,
    pub state: Option<String>,
    pub host: Option<String>,
    pub labels: Vec<(String, String)>,
}

/// Where object keys a [`Filter`] can match lie ([`Filter::key_ranges`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// This one key.
    Exact(String),
    /// Every key that starts with this.
    Prefix(String),
}

impl Filter {
    /// The keys the filter can match, as disjoint ranges in key order: a listing reads only these. A host
    /// is exact: `KIND/HOST` and the keys under `KIND/HOST/`, never `KIND/HOST2...` (a prefix `KIND/HOST`
    /// alone would read every host whose name starts with HOST's). A host without a kind reads those two
    /// ranges of every host object kind, so listing one host's objects reads that host's rows only, not the
    /// whole table (at 1.5 M objects a listing of every row took seconds, and a page stopped at its scan
    /// budget before reaching most hosts).
    pub fn key_ranges(&self) -> Vec<KeyRange> {
        let of_host = |k: state_machines::Kind, h: &str| {
            [KeyRange::Exact(format!("{}/{h}", k.as_str())), KeyRange::Prefix(format!("{}/{h}/", k.as_str()))]
        };
        match (self.kind, &self.host) {
            (Some(k), Some(h)) => of_host(k, h).into(),
            (None, Some(h)) => {
                let mut kinds: Vec<state_machines::Kind> =
                    state_machines::Kind::ALL.into_iter().filter(|k| k.is_host_object()).collect();
                kinds.sort_by_key(|k| k.as_str());
                kinds.into_iter().flat_map(|k| of_host(k, h)).collect()
            }
            (Some(k), None) => vec![KeyRange::Prefix(format!("{}/", k.as_str()))],
            (None, None) => vec![KeyRange::Prefix(String::new())],
        }
    }

    /// The prefix every object key the filter can match starts with (`KIND/` or `KIND/HOST`; empty without
    /// a kind): a listing reads only the keys under it.
    pub fn key_prefix(&self) -> String {
        match (self.kind, &self.host) {
            (Some(k), Some(h)) => format!("{k}/{h}"),
            (Some(k), None) => format!("{k}/"),
            _ => String::new(),
        }
    }

    pub fn matches_object(&self, r: &ObjectRecord) -> bool {
        self.kind.is_none_or(|k| r.id.kind() == k)
            && self.host.as_deref().is_none_or(|h| r.id.host_name() == Some(h))
            && self.state.as_deref().is_none_or(|s| crate::sm_seam::state_name(&r.sm).eq_ignore_ascii_case(s))
            && self.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
    }

    /// Events carry only the object id and state: label filters apply to listings only.
    pub fn matches_event(&self, e: &ChangeEvent) -> bool {
        let state_ok = self.state.as_deref().is_none_or(|s| e.state.eq_ignore_ascii_case(s));
        if self.kind.is_none() && self.host.is_none() {
            // Nothing to parse the id for (a watch of everything, the archive's reads).
            return state_ok;
        }
        let id = e.object.parse::<ObjectId>().ok();
        let kind_ok = self.kind.is_none_or(|k| id.as_ref().is_some_and(|id| id.kind() == k));
        let host_ok =
            self.host.as_deref().is_none_or(|h| id.as_ref().is_some_and(|id| id.host_name() == Some(h)));
        kind_ok && host_ok && state_ok
    }
}

/// One page of agents (id, record) and the id to continue after (`None`: the listing is complete).
pub type AgentsPage = (Vec<(String, AgentRecord)>, Option<String>);

/// What a watch read returns: events from the requested revision on, or "compacted".
#[derive(Debug)]
pub enum ChangesRead {
    Events { events: Vec<ChangeEvent>, next: u64 },
    Compacted { first_available: u64 },
}

impl Reader {
    pub fn new(db: &redb::Database) -> Result<Reader, StoreError> {
        let damage = damage_flag_of(db);
        let txn =
            guard("begin_read", || Ok(db.begin_read()?)).inspect_err(|e| note_damage(damage.as_ref(), e))?;
        Ok(Reader { txn, damage })
    }

    pub fn from_txn(txn: ReadTransaction) -> Reader {
        Reader { txn, damage: None }
    }

    /// [`Reader::read`] for tests that inject a storage panic.
    #[cfg(test)]
    pub(crate) fn read_for_test<T>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read("test", f)
    }

    /// Run one read: a panic inside redb becomes [`StoreError::Corrupt`], and damage raises the flag.
    fn read<T>(&self, what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        guard(what, f).inspect_err(|e| note_damage(self.damage.as_ref(), e))
    }

    pub fn txn(&self) -> &ReadTransaction {
        &self.txn
    }

    pub fn meta(&self, key: &str) -> Result<u64, StoreError> {
        self.read("meta", || {
            let Some(t) = open_read!(self.txn, META) else { return Ok(0) };
            t.get(key)?
                .map(|g| unseal_u64("fsm_counters", key, g.value()))
                .transpose()
                .map(|v| v.unwrap_or(0))
        })
    }

    pub fn revision(&self) -> Result<u64, StoreError> {
        self.read("revision", || self.meta(META_REVISION))
    }

    /// The replicated `min_command_version` (commands of newer versions may not be proposed yet).
    pub fn min_command_version(&self) -> Result<u32, StoreError> {
        self.read("min_command_version", || {
            let v = self.meta(META_MIN_COMMAND_VERSION)?;
            if v == 0 {
                return Ok(crate::model::DEFAULT_MIN_COMMAND_VERSION);
            }
            Ok(u32::try_from(v).unwrap_or(u32::MAX))
        })
    }

    pub fn object(&self, id: &str) -> Result<Option<ObjectRecord>, StoreError> {
        self.object_as(id)
    }

    /// An object's [`ObjectCore`] (its id, state machine and labels), verified like [`Reader::object`].
    pub fn object_core(&self, id: &str) -> Result<Option<ObjectCore>, StoreError> {
        self.object_as(id)
    }

    /// A stored object decoded as `T` (the whole record, or the part of it `T` names).
    fn object_as<T: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<T>, StoreError> {
        self.read("object", || {
            let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok(None) };
            t.get(id)?.map(|g| decode_sealed("fsm_objects", id, g.value())).transpose()
        })
    }

    pub fn object_count(&self) -> Result<u64, StoreError> {
        self.read("object_count", || {
            let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok(0) };
            Ok(t.len()?)
        })
    }

    /// Objects matching `filter`, in id order, at most `limit`. A host filter scans only ids of that host's
    /// kinds when a kind is given too (ids start with `KIND/HOST`).
    pub fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<ObjectRecord>, StoreError> {
        self.read("list", || {
            let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            rows_in(&t, filter, None, |key, value| {
                let rec: ObjectRecord = decode_sealed("fsm_objects", key, value)?;
                if filter.matches_object(&rec) {
                    out.push(rec);
                    if out.len() >= limit {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(out)
        })
    }

    /// One page of a listing: objects matching `filter` with ids strictly after `after` (all ids when
    /// `None`), in id order, at most `limit` of them, examining at most `scan` rows. Returns the page and,
    /// when more objects may match, the key to continue after: the last object served when a further
    /// match was seen, or the last row examined when the scan budget ran out first (the page may then be
    /// short, even empty). `None`: the listing is complete (a listing of exactly `limit` objects ends).
    pub fn list_page(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
        scan: usize,
    ) -> Result<(Vec<ObjectRecord>, Option<String>), StoreError> {
        self.read("list_page", || {
            let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok((Vec::new(), None)) };
            let (limit, scan) = (limit.max(1), scan.max(1));
            let mut out: Vec<ObjectRecord> = Vec::new();
            let mut scanned = 0usize;
            let mut next = None;
            rows_in(&t, filter, after, |key, value| {
                let rec: ObjectRecord = decode_sealed("fsm_objects", key, value)?;
                if filter.matches_object(&rec) {
                    if out.len() >= limit {
                        // One more match exists: continue after the last one served.
                        next = out.last().map(|r| r.id.to_string());
                        return Ok(ControlFlow::Break(()));
                    }
                    out.push(rec);
                }
                scanned += 1;
                if scanned >= scan {
                    next = Some(key.to_string());
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            })?;
            Ok((out, next))
        })
    }

    /// One page of a listing whose candidates are known (`ids`: object ids in id order, a superset of the
    /// objects `filter` matches in the range they cover, e.g. from an index of the objects by state): each
    /// candidate is read and checked against `filter` here, so the page is exact at this reader's state.
    /// At most `limit` (at least 1) objects; the id to continue after when one more match exists, else
    /// `cut` (the candidates stopped short of the end: continue after the last one), else `None`.
    pub fn list_candidates(
        &self,
        filter: &Filter,
        ids: impl IntoIterator<Item = String>,
        limit: usize,
        cut: Option<String>,
    ) -> Result<(Vec<ObjectRecord>, Option<String>), StoreError> {
        let limit = limit.max(1);
        let mut out: Vec<ObjectRecord> = Vec::new();
        for id in ids {
            let Some(rec) = self.object(&id)? else { continue };
            if filter.matches_object(&rec) {
                if out.len() >= limit {
                    // One more match exists: continue after the last one served.
                    let last = out.last().map(|r| r.id.to_string());
                    return Ok((out, last));
                }
                out.push(rec);
            }
        }
        Ok((out, cut))
    }

    /// One page of the agent table: agents with ids strictly after `after`, in id order, at most `limit`
    /// (at least 1), and the id to continue after when more follow (`None`: complete).
    pub fn agents_page(&self, after: Option<&str>, limit: usize) -> Result<AgentsPage, StoreError> {
        self.read("agents_page", || {
            let Some(t) = open_read!(self.txn, AGENTS) else { return Ok((Vec::new(), None)) };
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut out: Vec<(String, AgentRecord)> = Vec::new();
            for row in t.range::<&str>((start, Bound::Unbounded))? {
                let (k, v) = row?;
                if out.len() >= limit.max(1) {
                    let last = out.last().map(|(id, _)| id.clone());
                    return Ok((out, last));
                }
                out.push((k.value().to_string(), decode_sealed("fsm_agents", k.value(), v.value())?));
            }
            Ok((out, None))
        })
    }

    /// Visit every object in id order, one decoded record at a time (never the whole table in memory).
    pub fn for_each_object(&self, f: impl FnMut(ObjectRecord)) -> Result<(), StoreError> {
        self.for_each_object_as(f)
    }

    /// Every object's [`ObjectCore`], in id order (an index build).
    pub fn for_each_object_core(&self, f: impl FnMut(ObjectCore)) -> Result<(), StoreError> {
        self.for_each_object_as(f)
    }

    /// Every stored object decoded as `T`, in id order.
    fn for_each_object_as<T: serde::de::DeserializeOwned>(
        &self,
        mut f: impl FnMut(T),
    ) -> Result<(), StoreError> {
        self.read("for_each_object", || {
            let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok(()) };
            for row in t.iter()? {
                let (k, v) = row?;
                f(decode_sealed("fsm_objects", k.value(), v.value())?);
            }
            Ok(())
        })
    }

    pub fn history(&self, rec: &ObjectRecord) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read("history", || {
            let Some(t) = open_read!(self.txn, HISTORY) else { return Ok(Vec::new()) };
            let id = rec.id.to_string();
            let mut out = Vec::new();
            for row in t.range((id.as_str(), 0u64)..=(id.as_str(), u64::MAX))? {
                let (k, v) = row?;
                out.push(decode_sealed("fsm_history", &k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    pub fn agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        self.read("agents", || {
            let Some(t) = open_read!(self.txn, AGENTS) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_string(), decode_sealed("fsm_agents", k.value(), v.value())?));
            }
            Ok(out)
        })
    }

    /// One agent record by id: a point lookup (the heartbeat path; never a scan).
    pub fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.read("agent", || {
            let Some(t) = open_read!(self.txn, AGENTS) else { return Ok(None) };
            t.get(id)?.map(|g| decode_sealed("fsm_agents", id, g.value())).transpose()
        })
    }

    /// The agents recorded alive, with their hosts (what a new leader learns once per term; one pass over
    /// the agent table, keeping only two strings per alive agent).
    pub fn alive_agents(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read("alive_agents", || {
            let Some(t) = open_read!(self.txn, AGENTS) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let rec: AgentRecord = decode_sealed("fsm_agents", k.value(), v.value())?;
                if rec.alive {
                    out.push((k.value().to_string(), rec.host));
                }
            }
            Ok(out)
        })
    }

    pub fn members(&self) -> Result<Vec<(u64, MemberRecord)>, StoreError> {
        self.read("members", || {
            let Some(t) = open_read!(self.txn, MEMBERS) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), decode_sealed("fsm_members", &k.value(), v.value())?));
            }
            Ok(out)
        })
    }

    /// One checker of the catalog.
    pub fn catalog(&self, name: &str) -> Result<Option<crate::catalog::CheckerRecord>, StoreError> {
        self.read("catalog", || {
            let Some(t) = open_read!(self.txn, CATALOG) else { return Ok(None) };
            t.get(name)?.map(|g| decode_sealed("fsm_catalog", name, g.value())).transpose()
        })
    }

    /// Every checker of the catalog, in name order (at most `catalog::MAX_CATALOG_CHECKERS`).
    pub fn catalog_all(&self) -> Result<Vec<crate::catalog::CheckerRecord>, StoreError> {
        self.read("catalog_all", || {
            let Some(t) = open_read!(self.txn, CATALOG) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push(decode_sealed("fsm_catalog", k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// One stored chunk of an artifact's bytes (verified).
    pub fn blob_chunk(&self, sha256: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read("blob", || {
            let Some(t) = open_read!(self.txn, BLOBS) else { return Ok(None) };
            t.get((sha256, index))?
                .map(|g| unseal("fsm_blobs", &(sha256, index), g.value()).map(<[u8]>::to_vec))
                .transpose()
        })
    }

    /// The active replicated topology (one point read), None when none is set.
    pub fn active_topology(&self) -> Result<Option<crate::model::ActiveTopology>, StoreError> {
        self.read("active_topology", || {
            let Some(t) = open_read!(self.txn, SETTINGS) else { return Ok(None) };
            t.get(SETTING_TOPOLOGY)?
                .map(|g| decode_sealed("fsm_settings", SETTING_TOPOLOGY, g.value()))
                .transpose()
        })
    }

    /// The cluster's heartbeat secret (one point read), None until a leader set it.
    pub fn beat_secret(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.read("beat_secret", || {
            let Some(t) = open_read!(self.txn, SETTINGS) else { return Ok(None) };
            t.get(SETTING_BEAT_SECRET)?.map(|g| decode_beat_secret(g.value())).transpose()
        })
    }

    /// The replicated safety config (defaults until an operator sets one).
    pub fn safety_config(&self) -> Result<SafetyConfig, StoreError> {
        self.read("safety_config", || {
            let Some(t) = open_read!(self.txn, SETTINGS) else { return Ok(SafetyConfig::default()) };
            t.get(SETTING_SAFETY)?
                .map(|g| decode_sealed("fsm_settings", SETTING_SAFETY, g.value()))
                .transpose()
                .map(|c| c.unwrap_or_default())
        })
    }

    pub fn scopes(&self) -> Result<Vec<(String, ScopeRecord)>, StoreError> {
        self.read("scopes", || {
            let Some(t) = open_read!(self.txn, SCOPES) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_string(), decode_sealed("fsm_scopes", k.value(), v.value())?));
            }
            Ok(out)
        })
    }

    /// One scope's record (a point lookup).
    pub fn scope(&self, name: &str) -> Result<Option<ScopeRecord>, StoreError> {
        self.read("scope", || {
            let Some(t) = open_read!(self.txn, SCOPES) else { return Ok(None) };
            t.get(name)?.map(|g| decode_sealed("fsm_scopes", name, g.value())).transpose()
        })
    }

    pub fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError> {
        self.read("proposal", || {
            let Some(t) = open_read!(self.txn, PROPOSALS) else { return Ok(None) };
            t.get(id)?.map(|g| decode_sealed("fsm_proposals", &id, g.value())).transpose()
        })
    }

    /// Every count with `from <= key < to`, in key order.
    pub fn counts_between(&self, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.read("counts", || {
            let Some(t) = open_read!(self.txn, COUNTS) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            if from >= to {
                return Ok(out);
            }
            for row in t.range::<&str>(from..to)? {
                let (k, v) = row?;
                out.push((k.value().to_string(), unseal_u64("fsm_counts", k.value(), v.value())?));
            }
            Ok(out)
        })
    }

    /// Every replicated count whose key starts with `prefix` (see `fsm/counts.rs`), in key order.
    pub fn counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.read("counts", || {
            let Some(t) = open_read!(self.txn, COUNTS) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in t.range::<&str>(prefix..)? {
                let (k, v) = row?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_string(), unseal_u64("fsm_counts", k.value(), v.value())?));
            }
            Ok(out)
        })
    }

    /// Up to `limit` entries of the ticket queue (objects in REPAIR without a ticket) after the queue key
    /// `after`, in queue-key order: (queue key `OBJECT@ENTERED_MS`, object id).
    pub fn repair_queue(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read("repair_queue", || {
            let Some(t) = open_read!(self.txn, REPAIR_QUEUE) else { return Ok(Vec::new()) };
            let range = match after {
                Some(a) => t.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?,
                None => t.range::<&str>(..)?,
            };
            let mut out = Vec::new();
            for row in range {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row?;
                let id = unseal("fsm_repair_queue", k.value(), v.value())?;
                let id = std::str::from_utf8(id).map_err(|_| StoreError::Corrupt {
                    table: "fsm_repair_queue",
                    message: "object id is not utf-8".into(),
                })?;
                out.push((k.value().to_string(), id.to_string()));
            }
            Ok(out)
        })
    }

    /// How many objects are in REPAIR without a ticket (the ticket queue's length).
    pub fn repair_queue_len(&self) -> Result<u64, StoreError> {
        self.read("repair_queue_len", || {
            let Some(t) = open_read!(self.txn, REPAIR_QUEUE) else { return Ok(0) };
            Ok(t.len()?)
        })
    }

    pub fn pending_count(&self) -> Result<u64, StoreError> {
        self.read("pending_count", || {
            let Some(t) = open_read!(self.txn, PENDING) else { return Ok(0) };
            Ok(t.len()?)
        })
    }

    /// Proposals with `status` (None: any), matching `filter`, newest first, at most `limit`.
    pub fn proposals(
        &self,
        status: Option<ProposalStatus>,
        filter: &ProposalFilter,
        limit: usize,
    ) -> Result<Vec<Proposal>, StoreError> {
        self.read("proposals", || {
            let mut out = Vec::new();
            if status == Some(ProposalStatus::Pending) {
                let Some(idx) = open_read!(self.txn, PENDING) else { return Ok(out) };
                for row in idx.iter()?.rev() {
                    let id = row?.0.value();
                    if let Some(p) = self.proposal(id)?
                        && filter.matches(&p)
                    {
                        out.push(p);
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
                return Ok(out);
            }
            let Some(t) = open_read!(self.txn, PROPOSALS) else { return Ok(out) };
            for row in t.iter()?.rev() {
                let (k, v) = row?;
                let p: Proposal = decode_sealed("fsm_proposals", &k.value(), v.value())?;
                if status.is_none_or(|s| p.status == s) && filter.matches(&p) {
                    out.push(p);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// The alert/audit log, newest first; `alerts_only` skips audit rows.
    pub fn audit(&self, alerts_only: bool, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read("audit", || {
            let Some(t) = open_read!(self.txn, AUDIT) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in t.iter()?.rev() {
                let (k, v) = row?;
                let e: AuditEntry = decode_sealed("fsm_audit", &k.value(), v.value())?;
                if !alerts_only || e.kind == "alert" {
                    out.push(e);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// Events with revision >= `from`, at most about `max` of them (whole batches), passing `filter`.
    /// `next` is the revision to ask for next time (past the last event read, filtered or not).
    pub fn changes(&self, from: u64, filter: &Filter, max: usize) -> Result<ChangesRead, StoreError> {
        self.read("changes", || {
            // Revision 0 is never a change; the first change is revision 1.
            let from = from.max(1);
            let mut events = Vec::new();
            let walked = self.walk_change_rows(from, max, |payload| {
                let before = events.len();
                for e in decode_change_events(payload)? {
                    if e.revision >= from && filter.matches_event(&e) {
                        events.push(e);
                    }
                }
                Ok(events.len() - before)
            })?;
            Ok(match walked {
                Ok(next) => ChangesRead::Events { events, next },
                Err(first_available) => ChangesRead::Compacted { first_available },
            })
        })
    }

    /// What [`Reader::changes`] with no filter reads from `from`, as each event's revision and object id
    /// only ([`for_each_change_id`]): `f(object)` per event (objectless events included, as ""), and the
    /// next revision, or `None` when `from` was compacted away. Same rows, same bound (`max` events or
    /// rows, in whole rows): both are [`Reader::walk_change_rows`].
    pub fn changed_objects(
        &self,
        from: u64,
        max: usize,
        mut f: impl FnMut(&str),
    ) -> Result<Option<u64>, StoreError> {
        self.read("changes", || {
            let from = from.max(1);
            let walked = self.walk_change_rows(from, max, |payload| {
                let mut taken = 0usize;
                for_each_change_id(payload, |revision, object| {
                    if revision >= from {
                        taken += 1;
                        f(object);
                    }
                })?;
                Ok(taken)
            })?;
            Ok(walked.ok())
        })
    }

    /// The first revision of the oldest change-log row in the binary format of command version 9, if the
    /// log holds one: a binary that knows only older versions cannot read it (nor a snapshot carrying it).
    /// Reads the log from its oldest row up to the first binary one; the log is bounded by its byte and
    /// row limits, and only the rare lowering of `min_command_version` asks.
    pub fn oldest_binary_change_row(&self) -> Result<Option<u64>, StoreError> {
        self.read("changes", || {
            let Some(t) = open_read!(self.txn, CHANGES) else { return Ok(None) };
            for row in t.iter()? {
                let (k, v) = row?;
                let (_, payload) = split_change_row(unseal("fsm_changes", &k.value(), v.value())?)?;
                if is_binary_change_row(payload) {
                    return Ok(Some(k.value()));
                }
            }
            Ok(None)
        })
    }

    /// The change log's rows from the one holding `from` (>= 1) on, each sealed row's payload handed to
    /// `each`, which says how many events it took. Stops after the row that brings the events taken or
    /// the rows read to `max`. `Ok(next)`: the revision to ask for next (past the last row read);
    /// `Err(first_available)`: `from` was compacted away and nothing was read.
    fn walk_change_rows(
        &self,
        from: u64,
        max: usize,
        mut each: impl FnMut(&[u8]) -> Result<usize, StoreError>,
    ) -> Result<Result<u64, u64>, StoreError> {
        let first = self.meta(META_CHANGELOG_FIRST)?.max(1);
        if from < first {
            return Ok(Err(first));
        }
        let Some(t) = open_read!(self.txn, CHANGES) else { return Ok(Ok(from)) };
        // The row holding `from` is the last row starting at or before it.
        let start = match t.range(..=from)?.next_back() {
            Some(row) => row?.0.value(),
            None => from,
        };
        let (mut next, mut taken, mut scanned) = (from, 0usize, 0usize);
        for row in t.range::<u64>((Bound::Included(start), Bound::Unbounded))? {
            let (k, v) = row?;
            let (last, payload) = split_change_row(unseal("fsm_changes", &k.value(), v.value())?)?;
            if last < from {
                continue;
            }
            taken += each(payload)?;
            next = last + 1;
            scanned += 1;
            if taken >= max || scanned >= max {
                break;
            }
        }
        Ok(Ok(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<ChangeEvent> {
        vec![
            ChangeEvent {
                revision: 41,
                time_ms: 1_700_000_000_000,
                object: "disk/node-7/sdb".into(),
                what: "finding".into(),
                state: "WARNING".into(),
                grade: "high".into(),
                from_state: String::new(),
                detail: "kernel-log io-error: I/O error, dev sdb \u{e9}\"q\"".into(),
            },
            ChangeEvent {
                revision: 42,
                time_ms: 1_700_000_000_001,
                object: "disk/node-7/sdb".into(),
                what: "transition".into(),
                state: "ERROR".into(),
                grade: String::new(),
                from_state: "WARNING".into(),
                detail: String::new(),
            },
        ]
    }

    #[test]
    fn change_rows_read_back_in_both_formats() {
        let ev = events();
        let json = make_change_row(42, &ev, false);
        let pb = make_change_row(42, &ev, true);
        for row in [&json, &pb] {
            let (last, payload) = split_change_row(row).expect("split");
            assert_eq!(last, 42);
            assert_eq!(decode_change_events(payload).expect("decode"), ev);
        }
        assert_eq!(json[8], b'[');
        assert!(pb.len() < json.len(), "{} vs {}", pb.len(), json.len());
        // An entry without events is not written, but an empty row still reads as nothing in both formats.
        assert_eq!(decode_change_events(&make_change_row(1, &[], true)[8..]).expect("empty"), vec![]);
        assert_eq!(decode_change_events(&make_change_row(1, &[], false)[8..]).expect("empty"), vec![]);
    }

    #[test]
    fn a_damaged_change_row_is_corrupt_in_both_formats() {
        let ev = events();
        for binary in [false, true] {
            let row = make_change_row(42, &ev, binary);
            let cut = &row[8..row.len() - 3];
            let e = decode_change_events(cut).expect_err("cut row");
            assert!(matches!(e, StoreError::Corrupt { table: "fsm_changes", .. }), "{e}");
        }
        let e = decode_change_events(b"\xff\xff\xff").expect_err("garbage");
        assert!(matches!(e, StoreError::Corrupt { table: "fsm_changes", .. }), "{e}");
    }

    fn change_ids(payload: &[u8]) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for_each_change_id(payload, |r, o| out.push((r, o.to_owned())))?;
        Ok(out)
    }

    #[test]
    fn change_ids_are_what_the_full_decode_reads() {
        let mut ev = events();
        // Objectless (an agent's event), zero revision, empty strings, a long detail, non-ASCII ids.
        ev.push(ChangeEvent { revision: 43, object: String::new(), what: "agent".into(), ..ev[0].clone() });
        ev.push(ChangeEvent {
            revision: 0,
            object: "disk/h\u{e9}/sda".into(),
            detail: "x".repeat(300),
            ..ev[1].clone()
        });
        for binary in [false, true] {
            let row = make_change_row(42, &ev, binary);
            let payload = &row[8..];
            let full: Vec<(u64, String)> = decode_change_events(payload)
                .expect("full")
                .into_iter()
                .map(|e| (e.revision, e.object))
                .collect();
            assert_eq!(change_ids(payload).expect("ids"), full, "binary {binary}");
            // Every cut of the row: refused by both, or (a cut at an event's end) read alike by both.
            for cut in 0..payload.len() {
                match (decode_change_events(&payload[..cut]), change_ids(&payload[..cut])) {
                    (Ok(full), Ok(ids)) => assert_eq!(
                        ids,
                        full.into_iter().map(|e| (e.revision, e.object)).collect::<Vec<_>>(),
                        "binary {binary}, cut {cut}"
                    ),
                    (Err(_), Err(e)) => {
                        assert!(matches!(e, StoreError::Corrupt { table: "fsm_changes", .. }), "{e}")
                    }
                    (a, b) => {
                        panic!("binary {binary}, cut {cut}: full {:?} vs ids {:?}", a.is_ok(), b.is_ok())
                    }
                }
            }
        }
        assert_eq!(change_ids(&make_change_row(1, &[], true)[8..]).expect("empty"), vec![]);
        // A revision sent as a string, an object as a number: refused, as the full decode refuses them.
        for bad in [&b"\x0a\x03\x0a\x01\x31"[..], &b"\x0a\x02\x18\x05"[..]] {
            assert!(decode_change_events(bad).is_err());
            assert!(change_ids(bad).is_err());
        }
        // Invalid UTF-8 in an object id.
        let bad = b"\x0a\x04\x1a\x02\xff\xfe";
        assert!(decode_change_events(bad).is_err());
        assert!(change_ids(bad).is_err());
    }
}
