//! The state machine's tables inside the raft layer's write transaction: the [`View`] `decide` reads, and
//! the writer that stores a [`Decision`] (rows, the change-log row of the entry, and change-log compaction)
//! in the same transaction. The only place the fsm touches redb during apply. Every value is written sealed
//! and verified when read (see `store.rs`): damage is `StoreError::Corrupt`, which stops the node.

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::decide::Decision;
use super::view::View;
use crate::model::{AgentRecord, ObjectRecord};
use crate::safety::{Proposal, SafetyConfig, ScopeRecord};
use crate::store::{
    self, AGENTS, AUDIT, BLOBS, CATALOG, CHANGES, COUNTS, HISTORY, MEMBERS, META, META_CHANGELOG_BYTES,
    META_CHANGELOG_FIRST, META_REVISION, OBJECTS, PENDING, PROPOSAL_OBJ, PROPOSALS, REPAIR_QUEUE,
    REQUEST_ORDER, REQUESTS, SCOPES, SETTING_BEAT_SECRET, SETTING_SAFETY, SETTING_TOPOLOGY, SETTINGS,
    StoreError,
};

/// Handles of every fsm table in one write transaction.
pub(super) struct Tables<'t> {
    pub meta: Table<'t, &'static str, &'static [u8]>,
    pub objects: Table<'t, &'static str, &'static [u8]>,
    pub history: Table<'t, (&'static str, u64), &'static [u8]>,
    pub changes: Table<'t, u64, &'static [u8]>,
    pub agents: Table<'t, &'static str, &'static [u8]>,
    pub members: Table<'t, u64, &'static [u8]>,
    pub scopes: Table<'t, &'static str, &'static [u8]>,
    pub proposals: Table<'t, u64, &'static [u8]>,
    pub proposal_obj: Table<'t, &'static str, &'static [u8]>,
    pub pending: Table<'t, u64, &'static [u8]>,
    pub settings: Table<'t, &'static str, &'static [u8]>,
    pub audit: Table<'t, u64, &'static [u8]>,
    pub requests: Table<'t, &'static str, &'static [u8]>,
    pub request_order: Table<'t, u64, &'static [u8]>,
    pub catalog: Table<'t, &'static str, &'static [u8]>,
    pub blobs: Table<'t, (&'static str, u64), &'static [u8]>,
    pub counts: Table<'t, &'static str, &'static [u8]>,
    pub repair: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            meta: txn.open_table(META)?,
            objects: txn.open_table(OBJECTS)?,
            history: txn.open_table(HISTORY)?,
            changes: txn.open_table(CHANGES)?,
            agents: txn.open_table(AGENTS)?,
            members: txn.open_table(MEMBERS)?,
            scopes: txn.open_table(SCOPES)?,
            proposals: txn.open_table(PROPOSALS)?,
            proposal_obj: txn.open_table(PROPOSAL_OBJ)?,
            pending: txn.open_table(PENDING)?,
            settings: txn.open_table(SETTINGS)?,
            audit: txn.open_table(AUDIT)?,
            requests: txn.open_table(REQUESTS)?,
            request_order: txn.open_table(REQUEST_ORDER)?,
            catalog: txn.open_table(CATALOG)?,
            blobs: txn.open_table(BLOBS)?,
            counts: txn.open_table(COUNTS)?,
            repair: txn.open_table(REPAIR_QUEUE)?,
        })
    }

    /// Store a decision: its rows, one change-log row for its events, the revision, and compaction of the
    /// change log to the newest `retain` revisions.
    pub fn write(&mut self, d: &Decision, limits: crate::model::ChangelogLimits) -> Result<(), StoreError> {
        let w = &d.writes;
        for (k, v) in &w.meta {
            self.meta.insert(*k, store::seal_u64(k, *v).as_slice())?;
        }
        for (id, rec) in &w.objects {
            self.objects.insert(id.as_str(), store::encode_sealed(id.as_str(), rec).as_slice())?;
        }
        for ((id, seq), e) in &w.history {
            match e {
                Some(e) => self
                    .history
                    .insert((id.as_str(), *seq), store::encode_sealed(&(id.as_str(), *seq), e).as_slice())?,
                None => self.history.remove((id.as_str(), *seq))?,
            };
        }
        for (id, a) in &w.agents {
            self.agents.insert(id.as_str(), store::encode_sealed(id.as_str(), a).as_slice())?;
        }
        for (id, m) in &w.members {
            self.members.insert(*id, store::encode_sealed(id, m).as_slice())?;
        }
        for (name, r) in &w.scopes {
            if r.is_empty() {
                self.scopes.remove(name.as_str())?;
            } else {
                self.scopes.insert(name.as_str(), store::encode_sealed(name.as_str(), r).as_slice())?;
            }
        }
        for (id, p) in &w.proposals {
            match p {
                Some(p) => self.proposals.insert(*id, store::encode_sealed(id, p).as_slice())?,
                None => self.proposals.remove(*id)?,
            };
        }
        for (oid, id) in &w.proposal_obj {
            self.proposal_obj
                .insert(oid.as_str(), store::seal_bytes(oid.as_str(), &id.to_be_bytes()).as_slice())?;
        }
        for (id, oid) in &w.pending {
            match oid {
                Some(oid) => self.pending.insert(*id, store::seal_bytes(id, oid.as_bytes()).as_slice())?,
                None => self.pending.remove(*id)?,
            };
        }
        if let Some(cfg) = &w.safety {
            self.settings.insert(SETTING_SAFETY, store::encode_sealed(SETTING_SAFETY, cfg).as_slice())?;
        }
        if let Some(secret) = &w.beat_secret {
            self.settings
                .insert(SETTING_BEAT_SECRET, store::seal_bytes(SETTING_BEAT_SECRET, secret).as_slice())?;
        }
        match &w.topology {
            Some(Some(t)) => {
                self.settings
                    .insert(SETTING_TOPOLOGY, store::encode_sealed(SETTING_TOPOLOGY, t).as_slice())?;
            }
            Some(None) => {
                self.settings.remove(SETTING_TOPOLOGY)?;
            }
            None => {}
        }
        for (id, row) in &w.audit {
            match row {
                Some(row) => self.audit.insert(*id, store::encode_sealed(id, row).as_slice())?,
                None => self.audit.remove(*id)?,
            };
        }
        for (k, r) in &w.requests {
            match r {
                Some(r) => {
                    self.requests.insert(k.as_str(), store::encode_sealed(k.as_str(), r).as_slice())?
                }
                None => self.requests.remove(k.as_str())?,
            };
        }
        for (seq, k) in &w.request_order {
            match k {
                Some(k) => {
                    self.request_order.insert(*seq, store::seal_bytes(seq, k.as_bytes()).as_slice())?
                }
                None => self.request_order.remove(*seq)?,
            };
        }
        for (name, c) in &w.catalog {
            self.catalog.insert(name.as_str(), store::encode_sealed(name.as_str(), c).as_slice())?;
        }
        for ((sha, idx), bytes) in &w.blobs {
            self.blobs
                .insert((sha.as_str(), *idx), store::seal_bytes(&(sha.as_str(), *idx), bytes).as_slice())?;
        }
        self.write_counts(&w.counts, &w.repair)?;
        if let Some(first) = d.events.first().map(|e| e.revision) {
            let bytes = self.changelog_bytes()?;
            let row = store::make_change_row(
                d.revision,
                &d.events,
                d.min_command_version >= u64::from(crate::model::BINARY_ENTRY_VERSION),
            );
            let bytes = bytes + row.len() as u64;
            self.changes.insert(first, store::seal_bytes(&first, &row).as_slice())?;
            self.meta.insert(META_REVISION, store::seal_u64(META_REVISION, d.revision).as_slice())?;
            self.compact_changes(d.revision, first, bytes, limits)?;
        }
        Ok(())
    }

    /// Store counts (0 removes the row) and ticket-queue rows (None removes).
    pub fn write_counts(
        &mut self,
        counts: &std::collections::BTreeMap<String, u64>,
        repair: &std::collections::BTreeMap<String, Option<String>>,
    ) -> Result<(), StoreError> {
        for (k, v) in counts {
            match v {
                0 => self.counts.remove(k.as_str())?,
                v => self.counts.insert(k.as_str(), store::seal_u64(k, *v).as_slice())?,
            };
        }
        for (k, id) in repair {
            match id {
                Some(id) => {
                    self.repair.insert(k.as_str(), store::seal_bytes(k.as_str(), id.as_bytes()).as_slice())?
                }
                None => self.repair.remove(k.as_str())?,
            };
        }
        Ok(())
    }

    /// Replace the counts and the ticket queue with a recount of every stored object (a store or snapshot
    /// from before the counters); returns how many objects were counted.
    pub fn recount(&mut self) -> Result<u64, StoreError> {
        let cfg = self.safety_config()?;
        let mut r = super::counts::Recount::default();
        let mut objects = 0u64;
        for row in self.objects.iter()? {
            let (k, v) = row?;
            let rec: ObjectRecord = store::decode_sealed("fsm_objects", k.value(), v.value())?;
            r.add(&cfg, &rec);
            objects += 1;
        }
        // The hourly transition counters and the safety net's window rows are not derived from the
        // objects: kept as they are.
        self.counts
            .retain(|k, _| k.starts_with(super::counts::HOURLY) || k.starts_with(super::windows::WINDOWS))?;
        self.repair.retain(|_, _| false)?;
        let repair = r.queue.into_iter().map(|(k, v)| (k, Some(v))).collect();
        self.write_counts(&r.counts, &repair)?;
        Ok(objects)
    }

    /// The change log's row bytes ([`META_CHANGELOG_BYTES`]); a store from before the counter is counted once
    /// (at most [`crate::model::CHANGELOG_RETAIN`] rows), identically on every member.
    fn changelog_bytes(&self) -> Result<u64, StoreError> {
        if let Some(g) = self.meta.get(META_CHANGELOG_BYTES)? {
            return store::unseal_u64("fsm_counters", META_CHANGELOG_BYTES, g.value());
        }
        let mut bytes = 0u64;
        for row in self.changes.iter()? {
            let (k, v) = row?;
            bytes += store::unseal("fsm_changes", &k.value(), v.value())?.len() as u64;
        }
        Ok(bytes)
    }

    /// Drop change-log rows that hold only revisions older than the retained window, and the oldest rows
    /// while the log holds more than `limits.max_bytes` (never the row just written, `newest`).
    fn compact_changes(
        &mut self,
        revision: u64,
        newest: u64,
        mut bytes: u64,
        limits: crate::model::ChangelogLimits,
    ) -> Result<(), StoreError> {
        let keep_from = super::changelog_keep_from(revision, limits.retain);
        // Bounded by the rows an entry can make obsolete; each entry adds one row, so this removes at most a
        // few (a lower byte bound after an upgrade removes more, once).
        loop {
            let Some((k, v)) = self.changes.first()? else { break };
            let first = k.value();
            let row = store::unseal("fsm_changes", &first, v.value())?;
            let (len, (last, _)) = (row.len() as u64, store::split_change_row(row)?);
            drop((k, v));
            let too_old = keep_from.is_some_and(|keep| last < keep);
            let too_big = bytes > limits.max_bytes && first != newest;
            if !too_old && !too_big {
                if keep_from.is_some() {
                    self.meta.insert(
                        META_CHANGELOG_FIRST,
                        store::seal_u64(META_CHANGELOG_FIRST, first).as_slice(),
                    )?;
                }
                break;
            }
            self.changes.remove(first)?;
            bytes = bytes.saturating_sub(len);
            self.meta
                .insert(META_CHANGELOG_FIRST, store::seal_u64(META_CHANGELOG_FIRST, last + 1).as_slice())?;
        }
        self.meta.insert(META_CHANGELOG_BYTES, store::seal_u64(META_CHANGELOG_BYTES, bytes).as_slice())?;
        Ok(())
    }
}

fn ids<V: redb::Value + 'static>(
    t: &Table<'_, u64, V>,
    from: u64,
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for row in t.range(from..)? {
        out.push(row?.0.value());
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

impl View for Tables<'_> {
    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.meta.get(key)?.map(|g| store::unseal_u64("fsm_counters", key, g.value())).transpose()
    }

    fn object(&self, id: &str) -> Result<Option<ObjectRecord>, StoreError> {
        self.objects.get(id)?.map(|g| store::decode_sealed("fsm_objects", id, g.value())).transpose()
    }

    fn objects(&self) -> Result<Vec<ObjectRecord>, StoreError> {
        let mut out = Vec::new();
        for row in self.objects.iter()? {
            let (k, v) = row?;
            out.push(store::decode_sealed("fsm_objects", k.value(), v.value())?);
        }
        Ok(out)
    }

    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.agents.get(id)?.map(|g| store::decode_sealed("fsm_agents", id, g.value())).transpose()
    }

    fn agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        let mut out = Vec::new();
        for row in self.agents.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), store::decode_sealed("fsm_agents", k.value(), v.value())?));
        }
        Ok(out)
    }

    fn scope(&self, name: &str) -> Result<Option<ScopeRecord>, StoreError> {
        self.scopes.get(name)?.map(|g| store::decode_sealed("fsm_scopes", name, g.value())).transpose()
    }

    fn scope_names(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for row in self.scopes.iter()? {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    fn safety_config(&self) -> Result<SafetyConfig, StoreError> {
        match self.settings.get(SETTING_SAFETY)? {
            Some(g) => store::decode_sealed("fsm_settings", SETTING_SAFETY, g.value()),
            None => Ok(SafetyConfig::default()),
        }
    }

    fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError> {
        self.proposals.get(id)?.map(|g| store::decode_sealed("fsm_proposals", &id, g.value())).transpose()
    }

    fn has_proposal(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.proposals.get(id)?.is_some())
    }

    fn proposal_of(&self, object: &str) -> Result<Option<u64>, StoreError> {
        let Some(g) = self.proposal_obj.get(object)? else { return Ok(None) };
        let bytes: [u8; 8] = store::unseal("fsm_proposal_obj", object, g.value())?
            .try_into()
            .map_err(|_| StoreError::Corrupt { table: "fsm_proposal_obj", message: "bad id".into() })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    fn proposal_count(&self) -> Result<u64, StoreError> {
        Ok(self.proposals.len()?)
    }

    fn proposal_ids(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        ids(&self.proposals, from, limit)
    }

    fn is_pending(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.pending.get(id)?.is_some())
    }

    fn pending_count(&self) -> Result<u64, StoreError> {
        Ok(self.pending.len()?)
    }

    fn pending_ids(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        ids(&self.pending, from, limit)
    }

    fn request(&self, key: &str) -> Result<Option<crate::model::RequestRecord>, StoreError> {
        self.requests.get(key)?.map(|g| store::decode_sealed("fsm_requests", key, g.value())).transpose()
    }

    fn request_at(&self, seq: u64) -> Result<Option<String>, StoreError> {
        let Some(g) = self.request_order.get(seq)? else { return Ok(None) };
        let key = store::unseal("fsm_request_order", &seq, g.value())?;
        let key = std::str::from_utf8(key).map_err(|_| StoreError::Corrupt {
            table: "fsm_request_order",
            message: "key is not utf-8".into(),
        })?;
        Ok(Some(key.to_string()))
    }

    fn request_seqs(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        ids(&self.request_order, from, limit)
    }

    fn count(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.counts.get(key)?.map(|g| store::unseal_u64("fsm_counts", key, g.value())).transpose()
    }

    fn counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for row in self.counts.range::<&str>(prefix..)? {
            let (k, v) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), store::unseal_u64("fsm_counts", k.value(), v.value())?));
        }
        Ok(out)
    }

    fn counts_range(&self, from: &str, to: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for row in self.counts.range::<&str>(from..to)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value().to_string(), store::unseal_u64("fsm_counts", k.value(), v.value())?));
        }
        Ok(out)
    }

    fn catalog(&self, name: &str) -> Result<Option<crate::catalog::CheckerRecord>, StoreError> {
        self.catalog.get(name)?.map(|g| store::decode_sealed("fsm_catalog", name, g.value())).transpose()
    }

    fn has_blob(&self, sha256: &str, index: u64) -> Result<bool, StoreError> {
        Ok(self.blobs.get((sha256, index))?.is_some())
    }

    fn beat_secret(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.settings.get(SETTING_BEAT_SECRET)?.map(|g| store::decode_beat_secret(g.value())).transpose()
    }

    fn topology(&self) -> Result<Option<crate::model::ActiveTopology>, StoreError> {
        self.settings
            .get(SETTING_TOPOLOGY)?
            .map(|g| store::decode_sealed("fsm_settings", SETTING_TOPOLOGY, g.value()))
            .transpose()
    }

    fn blob(&self, sha256: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.blobs
            .get((sha256, index))?
            .map(|g| store::unseal("fsm_blobs", &(sha256, index), g.value()).map(<[u8]>::to_vec))
            .transpose()
    }
}
