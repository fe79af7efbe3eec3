//! The state machine's redb tables (in the Database the raft layer owns, next to its log) and the read
//! helpers the APIs use. Tables are created on first write; reading a table that does not exist yet reads as
//! empty. Every value is JSON of a `model` type, except change-log rows (see [`CHANGES`]).

use std::ops::Bound;

use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};
use state_machines::ObjectId;

use crate::model::{AgentRecord, ChangeEvent, HistoryEntry, MemberRecord, ObjectRecord};
use crate::safety::{AuditEntry, Proposal, ProposalFilter, ProposalStatus, SafetyConfig, ScopeRecord};

/// Counters: [`META_REVISION`], [`META_CHANGELOG_FIRST`].
pub const META: TableDefinition<&str, u64> = TableDefinition::new("fsm_meta");
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
/// Replicated settings: [`SETTING_SAFETY`] -> SafetyConfig JSON.
pub const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("fsm_settings");
/// Alert/audit log: id -> AuditEntry JSON (bounded).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("fsm_audit");

pub const SETTING_SAFETY: &str = "safety";
pub const META_PROPOSAL_NEXT: &str = "proposal_next";
pub const META_AUDIT_NEXT: &str = "audit_next";

pub const META_REVISION: &str = "revision";
/// Lowest revision still in the change log (revisions below it were compacted).
pub const META_CHANGELOG_FIRST: &str = "changelog_first";
/// The cluster-wide `min_command_version` (absent: [`crate::model::DEFAULT_MIN_COMMAND_VERSION`]).
pub const META_MIN_COMMAND_VERSION: &str = "min_command_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(String),
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
                StoreError::Storage(e.to_string())
            }
        }
    )*};
}
impl_from_redb!(redb::StorageError, redb::TableError, redb::TransactionError, redb::CommitError);

pub fn decode<T: serde::de::DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table, message: e.to_string() })
}

pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Model types are plain data with string map keys: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Split a change-log row into (last revision, events JSON).
pub fn split_change_row(row: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt { table: "fsm_changes", message: "short row".into() };
    let head: [u8; 8] = row.get(..8).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(head), &row[8..]))
}

pub fn make_change_row(last: u64, events: &[ChangeEvent]) -> Vec<u8> {
    let mut row = last.to_be_bytes().to_vec();
    row.extend_from_slice(&encode(&events));
    row
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

/// A consistent read view of the state machine.
pub struct Reader {
    txn: ReadTransaction,
}

/// Filter for listings and watches. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub kind: Option<state_machines::Kind>,
    pub state: Option<String>,
    pub host: Option<String>,
    pub labels: Vec<(String, String)>,
}

impl Filter {
    pub fn matches_object(&self, r: &ObjectRecord) -> bool {
        self.kind.is_none_or(|k| r.id.kind() == k)
            && self.host.as_deref().is_none_or(|h| r.id.host() == h)
            && self.state.as_deref().is_none_or(|s| crate::sm_seam::state_name(&r.sm).eq_ignore_ascii_case(s))
            && self.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
    }

    /// Events carry only the object id and state: label filters apply to listings only.
    pub fn matches_event(&self, e: &ChangeEvent) -> bool {
        let id = e.object.parse::<ObjectId>().ok();
        let kind_ok = self.kind.is_none_or(|k| id.as_ref().is_some_and(|id| id.kind() == k));
        let host_ok = self.host.as_deref().is_none_or(|h| id.as_ref().is_some_and(|id| id.host() == h));
        let state_ok = self.state.as_deref().is_none_or(|s| e.state.eq_ignore_ascii_case(s));
        kind_ok && host_ok && state_ok
    }
}

/// What a watch read returns: events from the requested revision on, or "compacted".
pub enum ChangesRead {
    Events { events: Vec<ChangeEvent>, next: u64 },
    Compacted { first_available: u64 },
}

impl Reader {
    pub fn new(db: &redb::Database) -> Result<Reader, StoreError> {
        Ok(Reader { txn: db.begin_read()? })
    }

    pub fn from_txn(txn: ReadTransaction) -> Reader {
        Reader { txn }
    }

    pub fn txn(&self) -> &ReadTransaction {
        &self.txn
    }

    pub fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let Some(t) = open_read!(self.txn, META) else { return Ok(0) };
        Ok(t.get(key)?.map(|g| g.value()).unwrap_or(0))
    }

    pub fn revision(&self) -> Result<u64, StoreError> {
        self.meta(META_REVISION)
    }

    /// The replicated `min_command_version` (commands of newer versions may not be proposed yet).
    pub fn min_command_version(&self) -> Result<u32, StoreError> {
        let v = self.meta(META_MIN_COMMAND_VERSION)?;
        if v == 0 {
            return Ok(crate::model::DEFAULT_MIN_COMMAND_VERSION);
        }
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    pub fn object(&self, id: &str) -> Result<Option<ObjectRecord>, StoreError> {
        let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok(None) };
        t.get(id)?.map(|g| decode("fsm_objects", g.value())).transpose()
    }

    pub fn object_count(&self) -> Result<u64, StoreError> {
        let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok(0) };
        Ok(t.len()?)
    }

    /// Objects matching `filter`, in id order, at most `limit`. A host filter scans only ids of that host's
    /// kinds when a kind is given too (ids start with `KIND/HOST`).
    pub fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<ObjectRecord>, StoreError> {
        let Some(t) = open_read!(self.txn, OBJECTS) else { return Ok(Vec::new()) };
        let prefix = match (filter.kind, &filter.host) {
            (Some(k), Some(h)) => format!("{k}/{h}"),
            (Some(k), None) => format!("{k}/"),
            _ => String::new(),
        };
        let mut out = Vec::new();
        for row in t.range::<&str>(prefix.as_str()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let rec: ObjectRecord = decode("fsm_objects", v.value())?;
            if filter.matches_object(&rec) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn history(&self, rec: &ObjectRecord) -> Result<Vec<HistoryEntry>, StoreError> {
        let Some(t) = open_read!(self.txn, HISTORY) else { return Ok(Vec::new()) };
        let id = rec.id.to_string();
        let mut out = Vec::new();
        for row in t.range((id.as_str(), 0u64)..=(id.as_str(), u64::MAX))? {
            let (_, v) = row?;
            out.push(decode("fsm_history", v.value())?);
        }
        Ok(out)
    }

    pub fn agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        let Some(t) = open_read!(self.txn, AGENTS) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode("fsm_agents", v.value())?));
        }
        Ok(out)
    }

    pub fn members(&self) -> Result<Vec<(u64, MemberRecord)>, StoreError> {
        let Some(t) = open_read!(self.txn, MEMBERS) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value(), decode("fsm_members", v.value())?));
        }
        Ok(out)
    }

    /// The replicated safety config (defaults until an operator sets one).
    pub fn safety_config(&self) -> Result<SafetyConfig, StoreError> {
        let Some(t) = open_read!(self.txn, SETTINGS) else { return Ok(SafetyConfig::default()) };
        t.get(SETTING_SAFETY)?
            .map(|g| decode("fsm_settings", g.value()))
            .transpose()
            .map(|c| c.unwrap_or_default())
    }

    pub fn scopes(&self) -> Result<Vec<(String, ScopeRecord)>, StoreError> {
        let Some(t) = open_read!(self.txn, SCOPES) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode("fsm_scopes", v.value())?));
        }
        Ok(out)
    }

    pub fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError> {
        let Some(t) = open_read!(self.txn, PROPOSALS) else { return Ok(None) };
        t.get(id)?.map(|g| decode("fsm_proposals", g.value())).transpose()
    }

    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let Some(t) = open_read!(self.txn, PENDING) else { return Ok(0) };
        Ok(t.len()?)
    }

    /// Proposals with `status` (None: any), matching `filter`, newest first, at most `limit`.
    pub fn proposals(
        &self,
        status: Option<ProposalStatus>,
        filter: &ProposalFilter,
        limit: usize,
    ) -> Result<Vec<Proposal>, StoreError> {
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
            let (_, v) = row?;
            let p: Proposal = decode("fsm_proposals", v.value())?;
            if status.is_none_or(|s| p.status == s) && filter.matches(&p) {
                out.push(p);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The alert/audit log, newest first; `alerts_only` skips audit rows.
    pub fn audit(&self, alerts_only: bool, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let Some(t) = open_read!(self.txn, AUDIT) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter()?.rev() {
            let (_, v) = row?;
            let e: AuditEntry = decode("fsm_audit", v.value())?;
            if !alerts_only || e.kind == "alert" {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Events with revision >= `from`, at most about `max` of them (whole batches), passing `filter`.
    /// `next` is the revision to ask for next time (past the last event read, filtered or not).
    pub fn changes(&self, from: u64, filter: &Filter, max: usize) -> Result<ChangesRead, StoreError> {
        // Revision 0 is never a change; the first change is revision 1.
        let from = from.max(1);
        let first = self.meta(META_CHANGELOG_FIRST)?.max(1);
        if from < first {
            return Ok(ChangesRead::Compacted { first_available: first });
        }
        let Some(t) = open_read!(self.txn, CHANGES) else {
            return Ok(ChangesRead::Events { events: Vec::new(), next: from });
        };
        // The row holding `from` is the last row starting at or before it.
        let start = match t.range(..=from)?.next_back() {
            Some(row) => row?.0.value(),
            None => from,
        };
        let mut events = Vec::new();
        let mut next = from;
        let mut scanned = 0usize;
        for row in t.range::<u64>((Bound::Included(start), Bound::Unbounded))? {
            let (_, v) = row?;
            let (last, json) = split_change_row(v.value())?;
            if last < from {
                continue;
            }
            let batch: Vec<ChangeEvent> = decode("fsm_changes", json)?;
            for e in batch {
                if e.revision >= from && filter.matches_event(&e) {
                    events.push(e);
                }
            }
            next = last + 1;
            scanned += 1;
            if events.len() >= max || scanned >= max {
                break;
            }
        }
        Ok(ChangesRead::Events { events, next })
    }
}
