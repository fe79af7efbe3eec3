//! The same [`OutboxStore`] over sled 0.34, built only with `--features sled`. It exists so the crash
//! harness (agent/tests/outbox_crash.rs) can compare engines; the agent ships redb (see ARCHITECTURE.md for
//! the measured results and the reasons).

use std::path::Path;

use state_machines::Severity;

use crate::outbox::{Depth, Entry, KvWrite, Limits, MAX_ENTRY_BYTES, OutboxError, OutboxStore, class_of};

pub struct SledOutbox {
    db: sled::Db,
    outbox: sled::Tree,
    limits: Limits,
    lock: std::sync::Mutex<()>,
}

fn storage_err<E: std::fmt::Display>(e: E) -> OutboxError {
    OutboxError::Storage(e.to_string())
}

fn get_u64(t: &sled::Tree, k: &str) -> Result<u64, OutboxError> {
    Ok(t.get(k)
        .map_err(storage_err)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

impl SledOutbox {
    pub fn open(path: &Path, limits: Limits) -> Result<Self, OutboxError> {
        let db = sled::open(path).map_err(storage_err)?;
        let outbox = db.open_tree("outbox").map_err(storage_err)?;
        Ok(SledOutbox { db, outbox, limits, lock: std::sync::Mutex::new(()) })
    }

    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>, OutboxError> {
        self.lock.lock().map_err(|_| OutboxError::Storage("poisoned".into()))
    }
}

impl OutboxStore for SledOutbox {
    // sled has no transaction across trees here: the KV pairs are flushed with the entries (this engine is
    // only kept for the crash-harness comparison, never shipped).
    fn enqueue_with(
        &self,
        items: &[(Severity, Vec<u8>)],
        kv: &[KvWrite<'_>],
    ) -> Result<Vec<u64>, OutboxError> {
        if let Some((_, p)) = items.iter().find(|(_, p)| p.len() > MAX_ENTRY_BYTES) {
            return Err(OutboxError::TooLarge(p.len()));
        }
        let _g = self.guard()?;
        let mut next = get_u64(&self.db, "next_seq")?.max(1);
        let mut batch = sled::Batch::default();
        let mut seqs = Vec::new();
        for (sev, payload) in items {
            let mut v = vec![class_of(*sev)];
            v.extend_from_slice(payload);
            batch.insert(&next.to_be_bytes(), v);
            seqs.push(next);
            next += 1;
        }
        self.outbox.apply_batch(batch).map_err(storage_err)?;
        // Simple eviction (oldest first): the crash harness never reaches the limits.
        while self.outbox.len() as u64 > self.limits.max_entries {
            self.outbox.pop_min().map_err(storage_err)?;
        }
        self.db.insert("next_seq", &next.to_be_bytes()).map_err(storage_err)?;
        let kvt = self.db.open_tree("kv").map_err(storage_err)?;
        for (k, v) in kv {
            kvt.insert(*k, *v).map_err(storage_err)?;
        }
        self.db.flush().map_err(storage_err)?;
        Ok(seqs)
    }

    fn peek(&self, max_count: usize, max_bytes: usize) -> Result<Vec<Entry>, OutboxError> {
        let mut out = Vec::new();
        let mut size = 0;
        for row in self.outbox.iter() {
            let (k, v) = row.map_err(storage_err)?;
            let seq =
                u64::from_be_bytes(<[u8; 8]>::try_from(k.as_ref()).map_err(|_| OutboxError::Corrupt(0))?);
            let (class, payload) = v.split_first().ok_or(OutboxError::Corrupt(seq))?;
            if !out.is_empty() && (out.len() >= max_count || size + payload.len() > max_bytes) {
                break;
            }
            size += payload.len();
            out.push(Entry { seq, severity_class: *class, payload: payload.to_vec() });
        }
        Ok(out)
    }

    fn ack_with(&self, upto: u64, kv: &[KvWrite<'_>]) -> Result<u64, OutboxError> {
        let _g = self.guard()?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for row in self.outbox.range(..=upto.to_be_bytes()) {
            let (k, _) = row.map_err(storage_err)?;
            batch.remove(k);
            n += 1;
        }
        self.outbox.apply_batch(batch).map_err(storage_err)?;
        let kvt = self.db.open_tree("kv").map_err(storage_err)?;
        for (k, v) in kv {
            kvt.insert(*k, *v).map_err(storage_err)?;
        }
        self.db.flush().map_err(storage_err)?;
        Ok(n)
    }

    fn depth(&self) -> Result<Depth, OutboxError> {
        let bytes = self.outbox.iter().values().filter_map(|v| v.ok()).map(|v| v.len() as u64 - 1).sum();
        Ok(Depth {
            entries: self.outbox.len() as u64,
            bytes,
            next_seq: get_u64(&self.db, "next_seq")?.max(1),
            dropped: [0; 3],
        })
    }

    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        Ok(self.db.open_tree("kv").map_err(storage_err)?.get(key).map_err(storage_err)?.map(|v| v.to_vec()))
    }

    fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), OutboxError> {
        self.db.open_tree("kv").map_err(storage_err)?.insert(key, value).map_err(storage_err)?;
        self.db.flush().map_err(storage_err)?;
        Ok(())
    }
}
