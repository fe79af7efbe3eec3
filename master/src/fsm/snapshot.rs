//! The snapshot format: a magic line, then records `tag u8, key_len u32, key, value_len u32, value`
//! (big-endian lengths). Keys: table 1 meta (utf-8 name, value u64 BE), 2 objects, 3 history (utf-8 id,
//! 0x00, u64 BE seq), 4 agents, 5 members (u64 BE), 6 scopes, 7 proposals (u64 BE), 8 proposal by object,
//! 9 pending proposals (u64 BE), 10 settings, 11 alert/audit log (u64 BE), 12 change-log rows (u64 BE first
//! revision; value as in [`CHANGES`]), 13 idempotency keys (utf-8 key, RequestRecord JSON), 14 their
//! eviction order (u64 BE seq, utf-8 key), 15 the checker catalog (utf-8 name, CheckerRecord JSON), 16
//! artifact chunks (utf-8 sha256, 0x00, u64 BE chunk index; the raw bytes), 17 counts (utf-8 key, u64 BE;
//! see `counts.rs`), 18 the ticket queue (utf-8 queue key, utf-8 object id). Records come in the order tags
//! 1, 2, 3, 4, 5, 6, 8, 10, 7, 9, 11, 12, 13, 14, 15, 16, 17, 18, each table in key order, so equal states
//! give equal bytes (the in-memory model writes the same format). Version 4 snapshots have no counts (tags
//! 17, 18): restoring one counts them from the objects once. Version 3 snapshots have no catalog (tags 15,
//! 16).
//!
//! The change log travels in the snapshot (it is bounded by the retention window), so a member caught up by a
//! snapshot serves the same watch history. Version 1 snapshots (older binaries) have no change log: restoring
//! one starts the change log at the snapshot's revision; version 2 ones have no idempotency keys (a retry
//! of a write applied before it is applied again). Unknown tags and truncation are errors, not panics.
//!
//! Records carry the plain values (the whole snapshot is sealed by the raft layer where it is stored): writing
//! verifies every stored value's checksum (damage is `StoreError::Corrupt`, never copied into a snapshot),
//! restoring seals every value again.

use std::io::{Read, Write};

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::redb_state::Tables;
use crate::checksum;
use crate::raft::SnapshotSource;
use crate::store::{
    self, AGENTS, AUDIT, BLOBS, CATALOG, CHANGES, COUNTS, HISTORY, MEMBERS, META, META_CHANGELOG_FIRST,
    META_REVISION, OBJECTS, PENDING, PROPOSAL_OBJ, PROPOSALS, REPAIR_QUEUE, REQUEST_ORDER, REQUESTS, SCOPES,
    SETTINGS, StoreError,
};

pub(super) const MAGIC: &[u8] = b"huatuo-fsm-snapshot-v5\n";
/// Snapshots before the replicated counts (no tags 17, 18): still restorable (counted once on restore).
const MAGIC_V4: &[u8] = b"huatuo-fsm-snapshot-v4\n";
const LAST_TAG_V4: u8 = 16;
/// [`MAGIC`] for benchmarks that build snapshots by hand.
#[cfg(test)]
pub(crate) const MAGIC_FOR_BENCH: &[u8] = MAGIC;
/// Snapshots before the checker catalog (no tags 15, 16): still restorable.
const MAGIC_V3: &[u8] = b"huatuo-fsm-snapshot-v3\n";
const LAST_TAG_V3: u8 = 14;
/// Snapshots before idempotency keys travelled in snapshots (no tags 13, 14): still restorable.
const MAGIC_V2: &[u8] = b"huatuo-fsm-snapshot-v2\n";
const LAST_TAG_V2: u8 = 12;
/// Snapshots of binaries before the change log travelled in snapshots: still restorable.
const MAGIC_V1: &[u8] = b"huatuo-fsm-snapshot-v1\n";
/// Highest record tag of each format.
const LAST_TAG_V1: u8 = 11;
const LAST_TAG: u8 = 18;
/// Largest single key or value accepted when decoding (an object record is a few KiB; a change-log row holds
/// one entry's events, bounded by the raft layer's command size).
const MAX_FIELD: usize = 16 << 20;

/// Where snapshot records go: a `Vec` (the in-memory model, tests) or a stream ([`write_to`]: the raft
/// layer's snapshot file, chunk by chunk).
pub(super) trait RecordSink {
    fn put(&mut self, bytes: &[u8]);
}

impl RecordSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A stream sink that keeps the first write error (returned by [`StreamSink::finish`]) and ignores the
/// rest, so the table walk in [`write_to`] reads like the in-memory one.
struct StreamSink<'a> {
    out: &'a mut dyn Write,
    err: Option<std::io::Error>,
}

impl RecordSink for StreamSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if self.err.is_none()
            && let Err(e) = self.out.write_all(bytes)
        {
            self.err = Some(e);
        }
    }
}

impl StreamSink<'_> {
    fn finish(self) -> Result<(), StoreError> {
        match self.err {
            None => self.out.flush().map_err(|e| StoreError::Storage(format!("writing the snapshot: {e}"))),
            Some(e) => Err(StoreError::Storage(format!("writing the snapshot: {e}"))),
        }
    }
}

/// Append one record.
pub(super) fn push_record(out: &mut impl RecordSink, tag: u8, key: &[u8], value: &[u8]) {
    out.put(&[tag]);
    out.put(&(key.len() as u32).to_be_bytes());
    out.put(key);
    out.put(&(value.len() as u32).to_be_bytes());
    out.put(value);
}

/// [`push_record`] for tests that build snapshots by hand.
#[cfg(test)]
pub(crate) fn push_record_for_test(out: &mut Vec<u8>, tag: u8, key: &[u8], value: &[u8]) {
    push_record(out, tag, key, value);
}

/// `snap` (this format) as a version 4 snapshot: the same records without the counts (tags 17, 18), as a
/// binary before the counters wrote it (tests of the older formats build theirs from this).
#[cfg(test)]
pub(crate) fn as_v4_for_test(snap: &[u8]) -> Vec<u8> {
    let parsed = parse(snap).expect("a snapshot of this format");
    let mut out = MAGIC_V4.to_vec();
    for (tag, key, value) in parsed.records.into_iter().filter(|r| r.0 <= LAST_TAG_V4) {
        push_record(&mut out, tag, key, value);
    }
    out
}

/// `snap` (this format) without the hourly transition counters (tag 17 keys under `h/`): what a restore
/// of an older snapshot or a recount of a store from before them yields (they cannot be recounted).
#[cfg(test)]
pub(crate) fn without_hourly_for_test(snap: &[u8]) -> Vec<u8> {
    let parsed = parse(snap).expect("a snapshot of this format");
    let mut out = MAGIC.to_vec();
    for (tag, key, value) in parsed.records {
        if tag == 17 && key.starts_with(super::counts::HOURLY.as_bytes()) {
            continue;
        }
        push_record(&mut out, tag, key, value);
    }
    out
}

/// The key of a history record: utf-8 object id, 0x00, u64 BE sequence.
pub(super) fn history_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

macro_rules! open_read {
    ($txn:expr, $def:expr) => {
        match $txn.open_table($def) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
}

/// Everything the state machine holds in redb, as snapshot bytes in memory (tests, small states; the raft
/// layer streams with [`write_to`]).
pub fn write(txn: &ReadTransaction) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::new();
    write_to(txn, &mut v)?;
    Ok(v)
}

/// Everything the state machine holds in redb, as snapshot bytes written to `w` record by record (memory
/// bounded by one record, whatever the state's size).
pub fn write_to(txn: &ReadTransaction, w: &mut dyn Write) -> Result<(), StoreError> {
    let mut out = StreamSink { out: w, err: None };
    out.put(MAGIC);
    if let Some(t) = open_read!(txn, META) {
        for row in t.iter()? {
            let (k, v) = row?;
            push_record(
                &mut out,
                1,
                k.value().as_bytes(),
                &store::unseal_u64("fsm_counters", k.value(), v.value())?.to_be_bytes(),
            );
        }
    }
    if let Some(t) = open_read!(txn, OBJECTS) {
        for row in t.iter()? {
            let (k, v) = row?;
            push_record(
                &mut out,
                2,
                k.value().as_bytes(),
                store::unseal("fsm_objects", k.value(), v.value())?,
            );
        }
    }
    if let Some(t) = open_read!(txn, HISTORY) {
        for row in t.iter()? {
            let (k, v) = row?;
            let (id, seq) = k.value();
            push_record(
                &mut out,
                3,
                &history_key(id, seq),
                store::unseal("fsm_history", &(id, seq), v.value())?,
            );
        }
    }
    if let Some(t) = open_read!(txn, AGENTS) {
        for row in t.iter()? {
            let (k, v) = row?;
            push_record(
                &mut out,
                4,
                k.value().as_bytes(),
                store::unseal("fsm_agents", k.value(), v.value())?,
            );
        }
    }
    if let Some(t) = open_read!(txn, MEMBERS) {
        for row in t.iter()? {
            let (k, v) = row?;
            push_record(
                &mut out,
                5,
                &k.value().to_be_bytes(),
                store::unseal("fsm_members", &k.value(), v.value())?,
            );
        }
    }
    for (tag, name, def) in
        [(6, "fsm_scopes", SCOPES), (8, "fsm_proposal_obj", PROPOSAL_OBJ), (10, "fsm_settings", SETTINGS)]
    {
        if let Some(t) = open_read!(txn, def) {
            for row in t.iter()? {
                let (k, v) = row?;
                push_record(&mut out, tag, k.value().as_bytes(), store::unseal(name, k.value(), v.value())?);
            }
        }
    }
    for (tag, name, def) in [
        (7, "fsm_proposals", PROPOSALS),
        (9, "fsm_pending", PENDING),
        (11, "fsm_audit", AUDIT),
        (12, "fsm_changes", CHANGES),
    ] {
        if let Some(t) = open_read!(txn, def) {
            for row in t.iter()? {
                let (k, v) = row?;
                push_record(
                    &mut out,
                    tag,
                    &k.value().to_be_bytes(),
                    store::unseal(name, &k.value(), v.value())?,
                );
            }
        }
    }
    if let Some(t) = open_read!(txn, REQUESTS) {
        for row in t.iter()? {
            let (k, v) = row?;
            push_record(
                &mut out,
                13,
                k.value().as_bytes(),
                store::unseal("fsm_requests", k.value(), v.value())?,
            );
        }
    }
    if let Some(t) = open_read!(txn, REQUEST_ORDER) {
        for row in t.iter()? {
            let (k, v) = row?;
            push_record(
                &mut out,
                14,
                &k.value().to_be_bytes(),
                store::unseal("fsm_request_order", &k.value(), v.value())?,
            );
        }
    }
    if let Some(t) = open_read!(txn, CATALOG) {
        for row in t.iter()? {
            let (k, v) = row?;
            push_record(
                &mut out,
                15,
                k.value().as_bytes(),
                store::unseal("fsm_catalog", k.value(), v.value())?,
            );
        }
    }
    if let Some(t) = open_read!(txn, BLOBS) {
        for row in t.iter()? {
            let (k, v) = row?;
            let (sha, idx) = k.value();
            push_record(
                &mut out,
                16,
                &history_key(sha, idx),
                store::unseal("fsm_blobs", &(sha, idx), v.value())?,
            );
        }
    }
    for (tag, name, def) in [(17, "fsm_counts", COUNTS), (18, "fsm_repair_queue", REPAIR_QUEUE)] {
        if let Some(t) = open_read!(txn, def) {
            for row in t.iter()? {
                let (k, v) = row?;
                push_record(&mut out, tag, k.value().as_bytes(), store::unseal(name, k.value(), v.value())?);
            }
        }
    }
    out.finish()
}

fn corrupt(message: &str) -> StoreError {
    StoreError::Corrupt { table: "snapshot", message: message.to_string() }
}

/// Split `n` bytes off the front of `data`.
fn split_front<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if data.len() < n {
        return Err(corrupt("truncated"));
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

fn field<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
    let len = u32::from_be_bytes(split_front(data, 4)?.try_into().map_err(|_| corrupt("length"))?) as usize;
    if len > MAX_FIELD {
        return Err(corrupt("field too large"));
    }
    split_front(data, len)
}

pub(super) fn utf8(b: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(b).map_err(|_| corrupt("key is not utf-8"))
}

pub(super) fn u64_be(b: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| corrupt("bad u64"))?))
}

/// The (object id, seq) of a history key.
pub(super) fn split_history_key(key: &[u8]) -> Result<(&str, u64), StoreError> {
    let split = key.len().checked_sub(9).ok_or_else(|| corrupt("history key"))?;
    if key[split] != 0 {
        return Err(corrupt("history key"));
    }
    Ok((utf8(&key[..split])?, u64_be(&key[split + 1..])?))
}

/// A validated snapshot: its records, whether it carries a change log (format 2) and counts (format 5).
pub(super) struct Parsed<'a> {
    pub records: Vec<(u8, &'a [u8], &'a [u8])>,
    pub has_change_log: bool,
    pub has_counts: bool,
}

/// The magic every format starts with (all the same length) -> the highest tag of that format.
fn format_of(magic: &[u8]) -> Result<u8, StoreError> {
    match magic {
        m if m == MAGIC => Ok(LAST_TAG),
        m if m == MAGIC_V4 => Ok(LAST_TAG_V4),
        m if m == MAGIC_V3 => Ok(LAST_TAG_V3),
        m if m == MAGIC_V2 => Ok(LAST_TAG_V2),
        m if m == MAGIC_V1 => Ok(LAST_TAG_V1),
        _ => Err(corrupt("bad magic")),
    }
}

/// Checks one record of a format whose highest tag is `last_tag`.
fn check_record(tag: u8, key: &[u8], value: &[u8], last_tag: u8) -> Result<(), StoreError> {
    if !(1..=last_tag).contains(&tag) {
        return Err(corrupt("unknown record tag"));
    }
    match tag {
        1 => {
            utf8(key)?;
            u64_be(value)?;
        }
        2 | 4 | 6 | 8 | 10 | 13 | 15 => {
            utf8(key)?;
        }
        17 => {
            utf8(key)?;
            u64_be(value)?;
        }
        18 => {
            utf8(key)?;
            utf8(value)?;
        }
        3 | 16 => {
            split_history_key(key)?;
        }
        12 => {
            u64_be(key)?;
            store::split_change_row(value)?;
        }
        14 => {
            u64_be(key)?;
            utf8(value)?;
        }
        _ => {
            u64_be(key)?;
        }
    }
    Ok(())
}

/// Check a whole snapshot before anything is replaced.
pub(super) fn parse(data: &[u8]) -> Result<Parsed<'_>, StoreError> {
    let last_tag = format_of(data.get(..MAGIC.len()).ok_or_else(|| corrupt("bad magic"))?)?;
    let mut rest = &data[MAGIC.len()..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        let tag = split_front(&mut rest, 1)?[0];
        let key = field(&mut rest)?;
        let value = field(&mut rest)?;
        check_record(tag, key, value, last_tag)?;
        records.push((tag, key, value));
    }
    Ok(Parsed { records, has_change_log: last_tag >= LAST_TAG_V2, has_counts: last_tag >= LAST_TAG })
}

/// Reads records one at a time from a stream (a snapshot file), reusing its buffers: memory bounded by the
/// largest record.
struct RecordReader<'a> {
    r: Box<dyn Read + 'a>,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn read_err(e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt("truncated"),
        std::io::ErrorKind::InvalidData => corrupt(&e.to_string()),
        _ => StoreError::Storage(format!("reading the snapshot: {e}")),
    }
}

impl<'a> RecordReader<'a> {
    /// Opens `src` and reads its magic: the reader and the format's highest tag.
    fn open(src: &'a dyn SnapshotSource) -> Result<(Self, u8), StoreError> {
        let mut r = src.open().map_err(read_err)?;
        let mut magic = vec![0u8; MAGIC.len()];
        r.read_exact(&mut magic).map_err(|_| corrupt("bad magic"))?;
        let last_tag = format_of(&magic)?;
        Ok((RecordReader { r, key: Vec::new(), value: Vec::new() }, last_tag))
    }

    fn field(r: &mut dyn Read, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(read_err)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FIELD {
            return Err(corrupt("field too large"));
        }
        buf.resize(len, 0);
        r.read_exact(buf).map_err(read_err)
    }

    /// The next record's tag (its key and value are in `self.key`/`self.value`), `None` at the end.
    fn next(&mut self) -> Result<Option<u8>, StoreError> {
        let mut tag = [0u8; 1];
        loop {
            match self.r.read(&mut tag) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        Self::field(&mut *self.r, &mut self.key)?;
        Self::field(&mut *self.r, &mut self.value)?;
        Ok(Some(tag[0]))
    }
}

/// Replace the tables with the snapshot's records; returns the snapshot's revision. The whole snapshot is
/// validated before anything is deleted, so a corrupt snapshot changes nothing.
pub fn restore(txn: &WriteTransaction, data: &[u8]) -> Result<u64, StoreError> {
    restore_from(txn, &data)
}

/// [`restore`] from a stream read twice (check every record, then replace): memory bounded by one record
/// whatever the snapshot's size.
pub fn restore_from(txn: &WriteTransaction, src: &dyn SnapshotSource) -> Result<u64, StoreError> {
    let (mut rd, last_tag) = RecordReader::open(src)?;
    while let Some(tag) = rd.next()? {
        check_record(tag, &rd.key, &rd.value, last_tag)?;
    }
    let has_change_log = last_tag >= LAST_TAG_V2;
    for def in [OBJECTS, AGENTS, SCOPES, PROPOSAL_OBJ, SETTINGS] {
        txn.delete_table(def)?;
    }
    for def in [PROPOSALS, PENDING, AUDIT] {
        txn.delete_table(def)?;
    }
    txn.delete_table(META)?;
    txn.delete_table(HISTORY)?;
    txn.delete_table(CHANGES)?;
    txn.delete_table(MEMBERS)?;
    txn.delete_table(REQUESTS)?;
    txn.delete_table(REQUEST_ORDER)?;
    txn.delete_table(CATALOG)?;
    txn.delete_table(BLOBS)?;
    txn.delete_table(COUNTS)?;
    txn.delete_table(REPAIR_QUEUE)?;
    let mut t = Tables::open(txn)?;
    let mut sealed = Vec::new();
    let (mut rd, _) = RecordReader::open(src)?;
    while let Some(tag) = rd.next()? {
        let (key, value) = (rd.key.as_slice(), rd.value.as_slice());
        sealed.clear();
        // Snapshot keys are encoded as the seal's key bytes (`store::RowKey`).
        checksum::seal_keyed_into(&mut sealed, key, value);
        let v = sealed.as_slice();
        match tag {
            1 => {
                let name = utf8(key)?;
                t.meta.insert(name, store::seal_u64(name, u64_be(value)?).as_slice())?;
            }
            2 => {
                t.objects.insert(utf8(key)?, v)?;
            }
            3 => {
                t.history.insert(split_history_key(key)?, v)?;
            }
            4 => {
                t.agents.insert(utf8(key)?, v)?;
            }
            5 => {
                t.members.insert(u64_be(key)?, v)?;
            }
            6 => {
                t.scopes.insert(utf8(key)?, v)?;
            }
            7 => {
                t.proposals.insert(u64_be(key)?, v)?;
            }
            8 => {
                t.proposal_obj.insert(utf8(key)?, v)?;
            }
            9 => {
                t.pending.insert(u64_be(key)?, v)?;
            }
            10 => {
                t.settings.insert(utf8(key)?, v)?;
            }
            11 => {
                t.audit.insert(u64_be(key)?, v)?;
            }
            12 => {
                t.changes.insert(u64_be(key)?, v)?;
            }
            13 => {
                t.requests.insert(utf8(key)?, v)?;
            }
            15 => {
                t.catalog.insert(utf8(key)?, v)?;
            }
            16 => {
                t.blobs.insert(split_history_key(key)?, v)?;
            }
            17 => {
                t.counts.insert(utf8(key)?, v)?;
            }
            18 => {
                t.repair.insert(utf8(key)?, v)?;
            }
            _ => {
                t.request_order.insert(u64_be(key)?, v)?;
            }
        }
    }
    let revision = match t.meta.get(META_REVISION)? {
        Some(g) => store::unseal_u64("fsm_counters", META_REVISION, g.value())?,
        None => 0,
    };
    if !has_change_log {
        // No change log in the snapshot: watches resume from the snapshot's revision on.
        t.meta
            .insert(META_CHANGELOG_FIRST, store::seal_u64(META_CHANGELOG_FIRST, revision + 1).as_slice())?;
    }
    if last_tag < LAST_TAG {
        let objects = t.recount()?;
        tracing::info!(objects, "snapshot older than format v5: counts and ticket queue recounted");
    }
    Ok(revision)
}
