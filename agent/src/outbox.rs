//! The agent's durable outbox and small local KV.
//!
//! Findings enter the outbox (fsync'd) before the agent tries to send them, and leave it only when the master
//! acknowledges them, so nothing is lost while the master is unreachable or the agent crashes (at-least-once;
//! every entry carries a per-agent sequence number that keeps increasing across restarts, and the master
//! applies each sequence number once). The outbox is bounded in entries and bytes: when full it evicts the
//! oldest entries of the lowest severity class first and counts what it dropped, so a storm of healthy
//! readings never pushes out an ERROR. The KV holds checker state (last kmsg seq + boot id, counter
//! baselines) and the reporter's pinned batch. Checkpoints travel WITH their findings: `enqueue_with`
//! writes the entries and the KV pairs (the kmsg cursor) in one transaction (`enqueue_pinning` also pins
//! the next batch in it when none is pinned), and `ack_with` removes acknowledged entries and unpins in
//! one, so a batch costs one commit (fsync) to enter and one to leave. [`OutboxStore::commits`] counts
//! the commits.
//!
//! Storage sits behind [`OutboxStore`] so engines can be compared by the same crash harness (redb is the
//! engine we ship; sled 0.34 can be built with `--features sled` for the comparison recorded in
//! ARCHITECTURE.md).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use state_machines::Severity;

/// Default bound on queued entries: a day of a busy host's findings at one per second.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Default bound on queued bytes: keeps the agent's disk use small on every node of a fleet.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Largest single entry: a finding is bounded to a few KiB; anything this big is a bug upstream.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// redb page cache for the outbox.
pub const OUTBOX_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// seq -> (severity class, payload).
const OUTBOX: TableDefinition<u64, (u8, &[u8])> = TableDefinition::new("outbox");
/// (severity class, seq) -> (): eviction order.
const BY_CLASS: TableDefinition<(u8, u64), ()> = TableDefinition::new("outbox_by_class");
/// counters: next_seq, bytes, dropped.<class>.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// checker state.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Eviction classes: 0 = healthy/informational readings, 1 = degraded (SLOW, WARNING), 2 = faults.
pub fn class_of(sev: Severity) -> u8 {
    match sev {
        Severity::Unknown | Severity::Info | Severity::Good => 0,
        Severity::Slow | Severity::Warning => 1,
        Severity::Error | Severity::Fatal => 2,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage: {0}")]
    Storage(String),
    #[error("outbox task: {0}")]
    Task(String),
    #[error("entry of {0} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("corrupt outbox entry at seq {0}")]
    Corrupt(u64),
}

fn storage_err<E: std::fmt::Display>(e: E) -> OutboxError {
    OutboxError::Storage(e.to_string())
}

/// Limits of one outbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entries: DEFAULT_MAX_ENTRIES, max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// One queued entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub severity_class: u8,
    pub payload: Vec<u8>,
}

/// What an outbox holds and has dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Depth {
    pub entries: u64,
    pub bytes: u64,
    pub next_seq: u64,
    /// Entries evicted because the outbox was full, per severity class.
    pub dropped: [u64; 3],
}

/// A KV pair written in the same transaction as an enqueue or an ack (a checkpoint, the reporter's pin).
pub type KvWrite<'a> = (&'a str, &'a [u8]);

/// How the reporter pins a batch: the KV key holding the last seq of the batch in flight (big-endian u64,
/// 0 = none) and the limits of one batch (those of [`OutboxStore::peek`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRule<'a> {
    pub key: &'a str,
    pub max_count: usize,
    pub max_bytes: usize,
}

/// The operations the agent needs from its durable queue. Every mutating call is durable (fsync'd) when it
/// returns Ok, and is ONE transaction: all of it or nothing survives a crash.
pub trait OutboxStore: Send + Sync {
    /// Append entries and write `kv` in one transaction; returns the entries' sequence numbers. Evicts to
    /// stay within limits. With no items and no KV pairs it writes nothing.
    fn enqueue_with(
        &self,
        items: &[(Severity, Vec<u8>)],
        kv: &[KvWrite<'_>],
    ) -> Result<Vec<u64>, OutboxError>;
    /// The oldest entries, at most `max_count` of them and about `max_bytes` (always at least one if any).
    fn peek(&self, max_count: usize, max_bytes: usize) -> Result<Vec<Entry>, OutboxError>;
    /// Remove every entry with seq <= `upto` (the master acknowledged them) and write `kv`, in one
    /// transaction.
    fn ack_with(&self, upto: u64, kv: &[KvWrite<'_>]) -> Result<u64, OutboxError>;
    /// [`ack_with`](Self::ack_with) without its own fsync: the removal is visible at once and becomes
    /// durable with the next durable commit (the next enqueue or pin). A crash before that brings the
    /// entries and the pin back, so the same batch is resent under the same sequence number and the master
    /// answers it as a duplicate (it dedupes by agent, epoch and sequence): nothing is lost or applied
    /// twice, and a storm costs one fsync per batch instead of two. Engines without it ack durably.
    fn ack_lazy(&self, upto: u64, kv: &[KvWrite<'_>]) -> Result<u64, OutboxError> {
        self.ack_with(upto, kv)
    }
    fn depth(&self) -> Result<Depth, OutboxError>;
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, OutboxError>;
    fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), OutboxError>;
    /// Write transactions committed (each one fsync) since this store was opened.
    fn commits(&self) -> u64 {
        0
    }

    /// [`enqueue_with`](Self::enqueue_with), and when no batch is pinned under `pin.key`, pin the first
    /// batch (the entries `peek(pin.max_count, pin.max_bytes)` returns) in the same transaction, so the
    /// reporter need not spend a commit on it. Engines without it pin later (the default).
    fn enqueue_pinning(
        &self,
        items: &[(Severity, Vec<u8>)],
        kv: &[KvWrite<'_>],
        _pin: &PinRule<'_>,
    ) -> Result<Vec<u64>, OutboxError> {
        self.enqueue_with(items, kv)
    }

    /// Append entries; returns their sequence numbers.
    fn enqueue(&self, items: &[(Severity, Vec<u8>)]) -> Result<Vec<u64>, OutboxError> {
        self.enqueue_with(items, &[])
    }
    /// Remove every entry with seq <= `upto`.
    fn ack(&self, upto: u64) -> Result<u64, OutboxError> {
        self.ack_with(upto, &[])
    }
}

/// The redb-backed store we ship.
pub struct RedbOutbox {
    db: Database,
    limits: Limits,
    commits: AtomicU64,
}

const DROPPED_KEYS: [&str; 3] = ["dropped.0", "dropped.1", "dropped.2"];

impl RedbOutbox {
    pub fn open(path: &Path, limits: Limits) -> Result<Self, OutboxError> {
        // A small page cache: the outbox is written once and read once per entry, and the agent's memory
        // budget on every host is tight (tens of MiB).
        let db = Database::builder().set_cache_size(OUTBOX_CACHE_BYTES).create(path).map_err(storage_err)?;
        let txn = db.begin_write().map_err(storage_err)?;
        {
            // Create the tables so readers never see them missing.
            txn.open_table(OUTBOX).map_err(storage_err)?;
            txn.open_table(BY_CLASS).map_err(storage_err)?;
            txn.open_table(META).map_err(storage_err)?;
            txn.open_table(KV).map_err(storage_err)?;
        }
        txn.commit().map_err(storage_err)?;
        Ok(RedbOutbox { db, limits, commits: AtomicU64::new(0) })
    }

    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), OutboxError> {
        txn.commit().map_err(storage_err)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Remove every entry with seq <= `upto` and write `kv`, in one transaction of `durability` (a
    /// non-durable one is not counted in `commits`: it costs no fsync).
    fn ack_inner(
        &self,
        upto: u64,
        kv: &[KvWrite<'_>],
        durability: redb::Durability,
    ) -> Result<u64, OutboxError> {
        let mut txn = self.db.begin_write().map_err(storage_err)?;
        let lazy = matches!(durability, redb::Durability::None);
        txn.set_durability(durability).map_err(storage_err)?;
        kv_write(&txn, kv)?;
        let mut removed = 0;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(storage_err)?;
            let mut by_class = txn.open_table(BY_CLASS).map_err(storage_err)?;
            let mut meta = txn.open_table(META).map_err(storage_err)?;
            let mut bytes = meta_get(&meta, "bytes")?;
            let gone = outbox.extract_if(|k, _| k <= upto).map_err(storage_err)?;
            let mut victims = Vec::new();
            for row in gone {
                let (k, v) = row.map_err(storage_err)?;
                let (class, payload) = v.value();
                bytes = bytes.saturating_sub(payload.len() as u64);
                victims.push((class, k.value()));
            }
            for v in victims {
                by_class.remove(v).map_err(storage_err)?;
                removed += 1;
            }
            meta.insert("bytes", bytes).map_err(storage_err)?;
        }
        if lazy {
            txn.commit().map_err(storage_err)?;
        } else {
            self.commit(txn)?;
        }
        Ok(removed)
    }

    fn enqueue_inner(
        &self,
        items: &[(Severity, Vec<u8>)],
        kv: &[KvWrite<'_>],
        pin: Option<&PinRule<'_>>,
    ) -> Result<Vec<u64>, OutboxError> {
        if let Some((_, p)) = items.iter().find(|(_, p)| p.len() > MAX_ENTRY_BYTES) {
            return Err(OutboxError::TooLarge(p.len()));
        }
        if items.is_empty() && kv.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write().map_err(storage_err)?;
        kv_write(&txn, kv)?;
        let mut seqs = Vec::with_capacity(items.len());
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(storage_err)?;
            let mut by_class = txn.open_table(BY_CLASS).map_err(storage_err)?;
            let mut meta = txn.open_table(META).map_err(storage_err)?;
            let mut next = meta_get(&meta, "next_seq")?.max(1);
            let mut bytes = meta_get(&meta, "bytes")?;
            let mut count = outbox.len().map_err(storage_err)?;
            let mut dropped = [0u64; 3];
            for (sev, payload) in items {
                let class = class_of(*sev);
                outbox.insert(next, (class, payload.as_slice())).map_err(storage_err)?;
                by_class.insert((class, next), ()).map_err(storage_err)?;
                seqs.push(next);
                next += 1;
                count += 1;
                bytes += payload.len() as u64;
                // Evict the oldest entry of the lowest class present until within limits.
                while count > self.limits.max_entries || bytes > self.limits.max_bytes {
                    let victim = by_class.first().map_err(storage_err)?.map(|(k, _)| k.value());
                    let Some((vclass, vseq)) = victim else { break };
                    by_class.remove((vclass, vseq)).map_err(storage_err)?;
                    let removed = outbox.remove(vseq).map_err(storage_err)?.map(|v| v.value().1.len() as u64);
                    bytes = bytes.saturating_sub(removed.unwrap_or(0));
                    count = count.saturating_sub(1);
                    dropped[usize::from(vclass.min(2))] += 1;
                }
            }
            meta.insert("next_seq", next).map_err(storage_err)?;
            meta.insert("bytes", bytes).map_err(storage_err)?;
            for (i, d) in dropped.iter().enumerate() {
                if *d > 0 {
                    let old = meta_get(&meta, DROPPED_KEYS[i])?;
                    meta.insert(DROPPED_KEYS[i], old + d).map_err(storage_err)?;
                }
            }
        }
        if let Some(rule) = pin
            && !items.is_empty()
        {
            pin_first_batch(&txn, rule)?;
        }
        self.commit(txn)?;
        Ok(seqs)
    }
}

/// Inside `txn`: when nothing is pinned under `rule.key`, pin the batch `peek` would return now.
fn pin_first_batch(txn: &redb::WriteTransaction, rule: &PinRule<'_>) -> Result<(), OutboxError> {
    let mut kv = txn.open_table(KV).map_err(storage_err)?;
    let pinned = kv
        .get(rule.key)
        .map_err(storage_err)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map_or(0, u64::from_be_bytes);
    if pinned != 0 {
        return Ok(());
    }
    let outbox = txn.open_table(OUTBOX).map_err(storage_err)?;
    let (mut count, mut size, mut last) = (0usize, 0usize, 0u64);
    for row in outbox.iter().map_err(storage_err)? {
        let (k, v) = row.map_err(storage_err)?;
        let len = v.value().1.len();
        // The same cut as `peek`: at least one entry, then within both limits.
        if count > 0 && (count >= rule.max_count || size + len > rule.max_bytes) {
            break;
        }
        count += 1;
        size += len;
        last = k.value();
    }
    if last != 0 {
        kv.insert(rule.key, last.to_be_bytes().as_slice()).map_err(storage_err)?;
    }
    Ok(())
}

fn kv_write(txn: &redb::WriteTransaction, kv: &[KvWrite<'_>]) -> Result<(), OutboxError> {
    if kv.is_empty() {
        return Ok(());
    }
    let mut t = txn.open_table(KV).map_err(storage_err)?;
    for (k, v) in kv {
        t.insert(*k, *v).map_err(storage_err)?;
    }
    Ok(())
}

fn meta_get(t: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, OutboxError> {
    Ok(t.get(key).map_err(storage_err)?.map(|v| v.value()).unwrap_or(0))
}

impl OutboxStore for RedbOutbox {
    fn enqueue_with(
        &self,
        items: &[(Severity, Vec<u8>)],
        kv: &[KvWrite<'_>],
    ) -> Result<Vec<u64>, OutboxError> {
        self.enqueue_inner(items, kv, None)
    }

    fn enqueue_pinning(
        &self,
        items: &[(Severity, Vec<u8>)],
        kv: &[KvWrite<'_>],
        pin: &PinRule<'_>,
    ) -> Result<Vec<u64>, OutboxError> {
        self.enqueue_inner(items, kv, Some(pin))
    }

    fn peek(&self, max_count: usize, max_bytes: usize) -> Result<Vec<Entry>, OutboxError> {
        let txn = self.db.begin_read().map_err(storage_err)?;
        let outbox = txn.open_table(OUTBOX).map_err(storage_err)?;
        let mut out = Vec::new();
        let mut size = 0usize;
        for row in outbox.iter().map_err(storage_err)? {
            let (k, v) = row.map_err(storage_err)?;
            let (class, payload) = v.value();
            if !out.is_empty() && (out.len() >= max_count || size + payload.len() > max_bytes) {
                break;
            }
            size += payload.len();
            out.push(Entry { seq: k.value(), severity_class: class, payload: payload.to_vec() });
        }
        Ok(out)
    }

    fn ack_with(&self, upto: u64, kv: &[KvWrite<'_>]) -> Result<u64, OutboxError> {
        self.ack_inner(upto, kv, redb::Durability::Immediate)
    }

    fn ack_lazy(&self, upto: u64, kv: &[KvWrite<'_>]) -> Result<u64, OutboxError> {
        self.ack_inner(upto, kv, redb::Durability::None)
    }

    fn depth(&self) -> Result<Depth, OutboxError> {
        let txn = self.db.begin_read().map_err(storage_err)?;
        let outbox = txn.open_table(OUTBOX).map_err(storage_err)?;
        let meta = txn.open_table(META).map_err(storage_err)?;
        let mut dropped = [0u64; 3];
        for (i, k) in DROPPED_KEYS.iter().enumerate() {
            dropped[i] = meta_get(&meta, k)?;
        }
        Ok(Depth {
            entries: outbox.len().map_err(storage_err)?,
            bytes: meta_get(&meta, "bytes")?,
            next_seq: meta_get(&meta, "next_seq")?.max(1),
            dropped,
        })
    }

    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        let txn = self.db.begin_read().map_err(storage_err)?;
        let kv = txn.open_table(KV).map_err(storage_err)?;
        Ok(kv.get(key).map_err(storage_err)?.map(|v| v.value().to_vec()))
    }

    fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), OutboxError> {
        let txn = self.db.begin_write().map_err(storage_err)?;
        txn.open_table(KV).map_err(storage_err)?.insert(key, value).map_err(storage_err)?;
        self.commit(txn)
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir, limits: Limits) -> RedbOutbox {
        RedbOutbox::open(&dir.path().join("outbox.redb"), limits).unwrap()
    }

    #[test]
    fn a_lazy_ack_is_visible_at_once_costs_no_fsync_and_is_made_durable_by_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(&dir, Limits::default());
        ob.enqueue(&[(Severity::Error, b"a".to_vec()), (Severity::Error, b"b".to_vec())]).unwrap();
        ob.kv_put("pin", &2u64.to_be_bytes()).unwrap();
        let fsyncs = ob.commits();
        assert_eq!(ob.ack_lazy(2, &[("pin", &0u64.to_be_bytes())]).unwrap(), 2);
        assert_eq!(ob.commits(), fsyncs, "no durable commit spent on the ack");
        assert_eq!(ob.depth().unwrap().entries, 0, "the removal is visible at once");
        assert_eq!(ob.kv_get("pin").unwrap().as_deref(), Some(&0u64.to_be_bytes()[..]));
        // The next durable commit carries the removal with it.
        ob.enqueue(&[(Severity::Info, b"c".to_vec())]).unwrap();
        assert_eq!(ob.commits(), fsyncs + 1);
        drop(ob);
        let ob = open(&dir, Limits::default());
        let left: Vec<u64> = ob.peek(10, 1 << 20).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(left, vec![3], "acked entries stay gone after a restart");
        assert_eq!(ob.kv_get("pin").unwrap().as_deref(), Some(&0u64.to_be_bytes()[..]));
    }

    #[test]
    fn enqueue_peek_ack_and_seq_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(&dir, Limits::default());
        let seqs = ob.enqueue(&[(Severity::Error, b"a".to_vec()), (Severity::Good, b"bb".to_vec())]).unwrap();
        assert_eq!(seqs, vec![1, 2]);
        let got = ob.peek(10, 1 << 20).unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(ob.ack(1).unwrap(), 1);
        assert_eq!(ob.depth().unwrap().bytes, 2);
        assert_eq!(ob.ack(2).unwrap(), 1);
        drop(ob);
        let ob = open(&dir, Limits::default());
        // Sequence numbers never repeat, even after the queue emptied and the agent restarted.
        assert_eq!(ob.enqueue(&[(Severity::Info, b"c".to_vec())]).unwrap(), vec![3]);
        assert_eq!(ob.depth().unwrap().entries, 1);
    }

    #[test]
    fn full_outbox_drops_oldest_low_severity_first() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(&dir, Limits { max_entries: 3, max_bytes: 1 << 20 });
        ob.enqueue(&[(Severity::Error, b"e1".to_vec())]).unwrap();
        ob.enqueue(&[(Severity::Good, b"g1".to_vec())]).unwrap();
        ob.enqueue(&[(Severity::Warning, b"w1".to_vec())]).unwrap();
        ob.enqueue(&[(Severity::Good, b"g2".to_vec())]).unwrap(); // evicts g1
        ob.enqueue(&[(Severity::Error, b"e2".to_vec())]).unwrap(); // evicts g2
        ob.enqueue(&[(Severity::Fatal, b"f1".to_vec())]).unwrap(); // evicts w1
        let payloads: Vec<_> = ob.peek(10, 1 << 20).unwrap().into_iter().map(|e| e.payload).collect();
        assert_eq!(payloads, vec![b"e1".to_vec(), b"e2".to_vec(), b"f1".to_vec()]);
        ob.enqueue(&[(Severity::Error, b"e3".to_vec())]).unwrap(); // only faults left: oldest fault goes
        let d = ob.depth().unwrap();
        assert_eq!(d.entries, 3);
        assert_eq!(d.dropped, [2, 1, 1]);
    }

    #[test]
    fn byte_limit_and_oversized_entries() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(&dir, Limits { max_entries: 100, max_bytes: 10 });
        ob.enqueue(&[(Severity::Info, vec![0; 6])]).unwrap();
        ob.enqueue(&[(Severity::Info, vec![1; 6])]).unwrap();
        let d = ob.depth().unwrap();
        assert_eq!((d.entries, d.bytes, d.dropped[0]), (1, 6, 1));
        let err = ob.enqueue(&[(Severity::Info, vec![0; MAX_ENTRY_BYTES + 1])]).unwrap_err();
        assert!(matches!(err, OutboxError::TooLarge(_)));
        assert_eq!(ob.depth().unwrap().entries, 1, "a rejected enqueue changes nothing");
    }

    #[test]
    fn peek_respects_count_and_bytes_but_returns_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(&dir, Limits::default());
        ob.enqueue(&[(Severity::Info, vec![0; 100]), (Severity::Info, vec![0; 100])]).unwrap();
        assert_eq!(ob.peek(1, 1 << 20).unwrap().len(), 1);
        assert_eq!(ob.peek(10, 150).unwrap().len(), 1);
        assert_eq!(ob.peek(10, 10).unwrap().len(), 1);
        assert_eq!(ob.peek(10, 1000).unwrap().len(), 2);
    }

    #[test]
    fn entries_and_checkpoint_commit_together_and_count_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(&dir, Limits::default());
        let before = ob.commits();
        ob.enqueue_with(&[(Severity::Error, b"e".to_vec())], &[("kmsg.cursor", b"b 7")]).unwrap();
        assert_eq!(ob.commits() - before, 1, "entries + checkpoint = one transaction");
        assert_eq!(ob.kv_get("kmsg.cursor").unwrap().as_deref(), Some(&b"b 7"[..]));
        // A refused enqueue writes neither the entries nor the checkpoint.
        let big = vec![0; MAX_ENTRY_BYTES + 1];
        assert!(ob.enqueue_with(&[(Severity::Error, big)], &[("kmsg.cursor", b"b 9")]).is_err());
        assert_eq!(ob.kv_get("kmsg.cursor").unwrap().as_deref(), Some(&b"b 7"[..]));
        // Nothing to write: no transaction at all.
        let n = ob.commits();
        ob.enqueue_with(&[], &[]).unwrap();
        assert_eq!(ob.commits(), n);
        // Ack and unpin in one.
        ob.ack_with(1, &[("report.inflight", &0u64.to_be_bytes())]).unwrap();
        assert_eq!(ob.commits(), n + 1);
        assert_eq!(ob.depth().unwrap().entries, 0);
    }

    #[test]
    fn kv_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(&dir, Limits::default());
        assert_eq!(ob.kv_get("kmsg.cursor").unwrap(), None);
        ob.kv_put("kmsg.cursor", b"boot-1:42").unwrap();
        drop(ob);
        let ob = open(&dir, Limits::default());
        assert_eq!(ob.kv_get("kmsg.cursor").unwrap().as_deref(), Some(&b"boot-1:42"[..]));
    }
}
