//! The replicated state in memory: a [`View`] over ordered maps and the same writer as redb's, so property
//! tests and simulations can drive `decide` without a database, and compare the result with the redb-backed
//! state machine byte for byte (both write the same snapshot format).

use std::collections::BTreeMap;

use super::decide::{Decision, decide_entry_limited};
use super::snapshot::{self, history_key, push_record, split_history_key, u64_be, utf8};
use super::view::View;
use crate::catalog::CheckerRecord;
use crate::model::*;
use crate::safety::{AuditEntry, Proposal, SafetyConfig, ScopeRecord};
use crate::sm_seam::Policy;
use crate::store::{
    self, META_CHANGELOG_BYTES, META_CHANGELOG_FIRST, META_REVISION, SETTING_BEAT_SECRET, SETTING_SAFETY,
    SETTING_TOPOLOGY, StoreError,
};

/// Every fsm table as an ordered map (values typed; encoded only for snapshots).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemState {
    pub meta: BTreeMap<String, u64>,
    pub objects: BTreeMap<String, ObjectRecord>,
    pub history: BTreeMap<(String, u64), HistoryEntry>,
    /// First revision -> change-log row bytes (as in redb).
    pub changes: BTreeMap<u64, Vec<u8>>,
    pub agents: BTreeMap<String, AgentRecord>,
    pub members: BTreeMap<u64, MemberRecord>,
    pub scopes: BTreeMap<String, ScopeRecord>,
    pub proposals: BTreeMap<u64, Proposal>,
    pub proposal_obj: BTreeMap<String, u64>,
    pub pending: BTreeMap<u64, String>,
    pub safety: Option<SafetyConfig>,
    pub topology: Option<crate::model::ActiveTopology>,
    pub beat_secret: Option<[u8; 32]>,
    pub audit: BTreeMap<u64, AuditEntry>,
    pub requests: BTreeMap<String, RequestRecord>,
    pub request_order: BTreeMap<u64, String>,
    pub catalog: BTreeMap<String, CheckerRecord>,
    pub blobs: BTreeMap<(String, u64), Vec<u8>>,
    /// Counts (`fsm_counts`, see `counts.rs`); no zero values.
    pub counts: BTreeMap<String, u64>,
    /// The ticket queue (`fsm_repair_queue`): queue key -> object id.
    pub repair: BTreeMap<String, String>,
}

fn range_ids<T>(m: &BTreeMap<u64, T>, from: u64, limit: usize) -> Vec<u64> {
    m.range(from..).take(limit).map(|(k, _)| *k).collect()
}

impl View for MemState {
    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.meta.get(key).copied())
    }
    fn object(&self, id: &str) -> Result<Option<ObjectRecord>, StoreError> {
        Ok(self.objects.get(id).cloned())
    }
    fn objects(&self) -> Result<Vec<ObjectRecord>, StoreError> {
        Ok(self.objects.values().cloned().collect())
    }
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.agents.get(id).cloned())
    }
    fn agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        Ok(self.agents.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn scope(&self, name: &str) -> Result<Option<ScopeRecord>, StoreError> {
        Ok(self.scopes.get(name).cloned())
    }
    fn scope_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.scopes.keys().cloned().collect())
    }
    fn safety_config(&self) -> Result<SafetyConfig, StoreError> {
        Ok(self.safety.clone().unwrap_or_default())
    }
    fn request(&self, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.requests.get(key).cloned())
    }
    fn request_at(&self, seq: u64) -> Result<Option<String>, StoreError> {
        Ok(self.request_order.get(&seq).cloned())
    }
    fn request_seqs(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        Ok(range_ids(&self.request_order, from, limit))
    }
    fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError> {
        Ok(self.proposals.get(&id).cloned())
    }
    fn has_proposal(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.proposals.contains_key(&id))
    }
    fn proposal_of(&self, object: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.proposal_obj.get(object).copied())
    }
    fn proposal_count(&self) -> Result<u64, StoreError> {
        Ok(self.proposals.len() as u64)
    }
    fn proposal_ids(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        Ok(range_ids(&self.proposals, from, limit))
    }
    fn is_pending(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.pending.contains_key(&id))
    }
    fn pending_count(&self) -> Result<u64, StoreError> {
        Ok(self.pending.len() as u64)
    }
    fn pending_ids(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        Ok(range_ids(&self.pending, from, limit))
    }
    fn count(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.counts.get(key).copied())
    }
    fn counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .counts
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }
    fn counts_range(&self, from: &str, to: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .counts
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to)))
            .take(limit)
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }
    fn catalog(&self, name: &str) -> Result<Option<CheckerRecord>, StoreError> {
        Ok(self.catalog.get(name).cloned())
    }
    fn beat_secret(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.beat_secret)
    }

    fn topology(&self) -> Result<Option<crate::model::ActiveTopology>, StoreError> {
        Ok(self.topology.clone())
    }
    fn has_blob(&self, sha256: &str, index: u64) -> Result<bool, StoreError> {
        Ok(self.blobs.contains_key(&(sha256.to_string(), index)))
    }
    fn blob(&self, sha256: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(&(sha256.to_string(), index)).cloned())
    }
}

impl MemState {
    /// Store a decision exactly as `redb_state.rs` does.
    pub fn write(&mut self, d: &Decision, limits: crate::model::ChangelogLimits) -> Result<(), StoreError> {
        let w = &d.writes;
        for (k, v) in &w.meta {
            self.meta.insert((*k).to_string(), *v);
        }
        self.objects.extend(w.objects.iter().map(|(k, v)| (k.clone(), ObjectRecord::clone(v))));
        for (k, e) in &w.history {
            match e {
                Some(e) => self.history.insert(k.clone(), e.clone()),
                None => self.history.remove(k),
            };
        }
        self.agents.extend(w.agents.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.members.extend(w.members.iter().map(|(k, v)| (*k, v.clone())));
        for (name, r) in &w.scopes {
            if r.is_empty() {
                self.scopes.remove(name);
            } else {
                self.scopes.insert(name.clone(), r.clone());
            }
        }
        for (id, p) in &w.proposals {
            match p {
                Some(p) => self.proposals.insert(*id, p.clone()),
                None => self.proposals.remove(id),
            };
        }
        self.proposal_obj.extend(w.proposal_obj.iter().map(|(k, v)| (k.clone(), *v)));
        for (id, oid) in &w.pending {
            match oid {
                Some(oid) => self.pending.insert(*id, oid.clone()),
                None => self.pending.remove(id),
            };
        }
        if let Some(cfg) = &w.safety {
            self.safety = Some(cfg.clone());
        }
        if let Some(secret) = w.beat_secret {
            self.beat_secret = Some(secret);
        }
        if let Some(t) = &w.topology {
            self.topology = t.clone();
        }
        for (id, row) in &w.audit {
            match row {
                Some(row) => self.audit.insert(*id, row.clone()),
                None => self.audit.remove(id),
            };
        }
        for (k, r) in &w.requests {
            match r {
                Some(r) => self.requests.insert(k.clone(), r.clone()),
                None => self.requests.remove(k),
            };
        }
        for (seq, k) in &w.request_order {
            match k {
                Some(k) => self.request_order.insert(*seq, k.clone()),
                None => self.request_order.remove(seq),
            };
        }
        self.catalog.extend(w.catalog.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.blobs.extend(w.blobs.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (k, v) in &w.counts {
            match v {
                0 => self.counts.remove(k),
                v => self.counts.insert(k.clone(), *v),
            };
        }
        for (k, id) in &w.repair {
            match id {
                Some(id) => self.repair.insert(k.clone(), id.clone()),
                None => self.repair.remove(k),
            };
        }
        if let Some(first) = d.events.first().map(|e| e.revision) {
            // The same steps as the redb state's `compact_changes`, so both write the same snapshot.
            let mut bytes = match self.meta.get(META_CHANGELOG_BYTES) {
                Some(b) => *b,
                None => self.changes.values().map(|r| r.len() as u64).sum(),
            };
            let row = store::make_change_row(
                d.revision,
                &d.events,
                d.min_command_version >= u64::from(crate::model::BINARY_ENTRY_VERSION),
            );
            bytes += row.len() as u64;
            self.changes.insert(first, row);
            self.meta.insert(META_REVISION.into(), d.revision);
            let keep_from = super::changelog_keep_from(d.revision, limits.retain);
            while let Some((&oldest, row)) = self.changes.first_key_value() {
                let (len, (last, _)) = (row.len() as u64, store::split_change_row(row)?);
                let too_old = keep_from.is_some_and(|keep| last < keep);
                let too_big = bytes > limits.max_bytes && oldest != first;
                if !too_old && !too_big {
                    if keep_from.is_some() {
                        self.meta.insert(META_CHANGELOG_FIRST.into(), oldest);
                    }
                    break;
                }
                self.changes.remove(&oldest);
                bytes = bytes.saturating_sub(len);
                self.meta.insert(META_CHANGELOG_FIRST.into(), last + 1);
            }
            self.meta.insert(META_CHANGELOG_BYTES.into(), bytes);
        }
        Ok(())
    }

    /// The snapshot bytes the redb state machine would write for the same state.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = snapshot::MAGIC.to_vec();
        for (k, v) in &self.meta {
            push_record(&mut out, 1, k.as_bytes(), &v.to_be_bytes());
        }
        for (k, v) in &self.objects {
            push_record(&mut out, 2, k.as_bytes(), &store::encode(v));
        }
        for ((id, seq), v) in &self.history {
            push_record(&mut out, 3, &history_key(id, *seq), &store::encode(v));
        }
        for (k, v) in &self.agents {
            push_record(&mut out, 4, k.as_bytes(), &store::encode(v));
        }
        for (k, v) in &self.members {
            push_record(&mut out, 5, &k.to_be_bytes(), &store::encode(v));
        }
        for (k, v) in &self.scopes {
            push_record(&mut out, 6, k.as_bytes(), &store::encode(v));
        }
        for (k, v) in &self.proposal_obj {
            push_record(&mut out, 8, k.as_bytes(), &v.to_be_bytes());
        }
        // Settings in key order, as redb lists them ("beat_secret" < "safety" < "topology").
        if let Some(secret) = &self.beat_secret {
            push_record(&mut out, 10, SETTING_BEAT_SECRET.as_bytes(), secret);
        }
        if let Some(cfg) = &self.safety {
            push_record(&mut out, 10, SETTING_SAFETY.as_bytes(), &store::encode(cfg));
        }
        if let Some(t) = &self.topology {
            push_record(&mut out, 10, SETTING_TOPOLOGY.as_bytes(), &store::encode(t));
        }
        for (k, v) in &self.proposals {
            push_record(&mut out, 7, &k.to_be_bytes(), &store::encode(v));
        }
        for (k, v) in &self.pending {
            push_record(&mut out, 9, &k.to_be_bytes(), v.as_bytes());
        }
        for (k, v) in &self.audit {
            push_record(&mut out, 11, &k.to_be_bytes(), &store::encode(v));
        }
        for (k, v) in &self.changes {
            push_record(&mut out, 12, &k.to_be_bytes(), v);
        }
        for (k, v) in &self.requests {
            push_record(&mut out, 13, k.as_bytes(), &store::encode(v));
        }
        for (k, v) in &self.request_order {
            push_record(&mut out, 14, &k.to_be_bytes(), v.as_bytes());
        }
        for (k, v) in &self.catalog {
            push_record(&mut out, 15, k.as_bytes(), &store::encode(v));
        }
        for ((sha, idx), v) in &self.blobs {
            push_record(&mut out, 16, &history_key(sha, *idx), v);
        }
        for (k, v) in &self.counts {
            push_record(&mut out, 17, k.as_bytes(), &v.to_be_bytes());
        }
        for (k, v) in &self.repair {
            push_record(&mut out, 18, k.as_bytes(), v.as_bytes());
        }
        out
    }

    /// The state a snapshot holds (the same validation as the redb restore).
    pub fn from_snapshot(data: &[u8]) -> Result<MemState, StoreError> {
        let parsed = snapshot::parse(data)?;
        let mut s = MemState::default();
        for (tag, key, value) in parsed.records {
            match tag {
                1 => {
                    s.meta.insert(utf8(key)?.to_string(), u64_be(value)?);
                }
                2 => {
                    s.objects.insert(utf8(key)?.to_string(), store::decode("fsm_objects", value)?);
                }
                3 => {
                    let (id, seq) = split_history_key(key)?;
                    s.history.insert((id.to_string(), seq), store::decode("fsm_history", value)?);
                }
                4 => {
                    s.agents.insert(utf8(key)?.to_string(), store::decode("fsm_agents", value)?);
                }
                5 => {
                    s.members.insert(u64_be(key)?, store::decode("fsm_members", value)?);
                }
                6 => {
                    s.scopes.insert(utf8(key)?.to_string(), store::decode("fsm_scopes", value)?);
                }
                7 => {
                    s.proposals.insert(u64_be(key)?, store::decode("fsm_proposals", value)?);
                }
                8 => {
                    s.proposal_obj.insert(utf8(key)?.to_string(), u64_be(value)?);
                }
                9 => {
                    s.pending.insert(u64_be(key)?, utf8(value)?.to_string());
                }
                10 => {
                    if key == SETTING_TOPOLOGY.as_bytes() {
                        s.topology = Some(store::decode("fsm_settings", value)?);
                    } else if key == SETTING_BEAT_SECRET.as_bytes() {
                        s.beat_secret = Some(store::beat_secret_of(value)?);
                    } else {
                        s.safety = Some(store::decode("fsm_settings", value)?);
                    }
                }
                11 => {
                    s.audit.insert(u64_be(key)?, store::decode("fsm_audit", value)?);
                }
                12 => {
                    s.changes.insert(u64_be(key)?, value.to_vec());
                }
                13 => {
                    s.requests.insert(utf8(key)?.to_string(), store::decode("fsm_requests", value)?);
                }
                15 => {
                    s.catalog.insert(utf8(key)?.to_string(), store::decode("fsm_catalog", value)?);
                }
                16 => {
                    let (sha, idx) = split_history_key(key)?;
                    s.blobs.insert((sha.to_string(), idx), value.to_vec());
                }
                17 => {
                    s.counts.insert(utf8(key)?.to_string(), u64_be(value)?);
                }
                18 => {
                    s.repair.insert(utf8(key)?.to_string(), utf8(value)?.to_string());
                }
                _ => {
                    s.request_order.insert(u64_be(key)?, utf8(value)?.to_string());
                }
            }
        }
        if !parsed.has_change_log {
            let revision = s.meta.get(META_REVISION).copied().unwrap_or(0);
            s.meta.insert(META_CHANGELOG_FIRST.into(), revision + 1);
        }
        if !parsed.has_counts {
            // Older than format v5: count once from the objects.
            let r = super::counts::Recount::of(&s.safety.clone().unwrap_or_default(), s.objects.values());
            s.counts = r.counts;
            s.repair = r.queue;
        }
        Ok(s)
    }
}

/// The master's state machine without redb: decodes entries like [`super::MasterFsm`] and applies them to a
/// [`MemState`]. For property tests and simulations.
#[derive(Debug, Clone)]
pub struct MemFsm {
    pub state: MemState,
    policy: Policy,
    limits: crate::model::ChangelogLimits,
    knows: u32,
    request_keys: u64,
}

impl MemFsm {
    pub fn new(policy: Policy) -> MemFsm {
        MemFsm {
            state: MemState::default(),
            policy,
            limits: crate::model::ChangelogLimits::default(),
            knows: COMMAND_VERSION,
            request_keys: MAX_REQUEST_KEYS,
        }
    }

    pub fn with_changelog_retain(mut self, retain: u64) -> Self {
        self.limits.retain = retain.max(1);
        self
    }

    /// Keep at most `bytes` of change-log rows (tests of the byte bound).
    pub fn with_changelog_max_bytes(mut self, bytes: u64) -> Self {
        self.limits.max_bytes = bytes;
        self
    }

    /// Remember at most `keys` idempotency keys (tests of eviction).
    pub fn with_request_keys(mut self, keys: u64) -> Self {
        self.request_keys = keys.max(1);
        self
    }

    /// Apply one committed entry; errors as [`super::MasterFsm::apply_entry`] (a too-new entry changes nothing).
    pub fn apply(&mut self, index: u64, entry: &[u8]) -> Result<ApplyResult, StoreError> {
        let env = match Envelope::decode_knowing(entry, self.knows) {
            Ok(env) => env,
            Err(DecodeError::TooNew { needs, knows }) => {
                return Err(StoreError::TooNew { index, needs, knows });
            }
            Err(DecodeError::Undecodable(_)) => return Ok(ApplyResult::default()),
        };
        let d = decide_entry_limited(&self.state, &self.policy, env.now_ms, env.cmds, self.request_keys)?;
        self.state.write(&d, self.limits)?;
        Ok(ApplyResult { results: d.results })
    }
}
