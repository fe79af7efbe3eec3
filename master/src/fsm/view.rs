//! What a decision may read and what it writes. [`View`] is the replicated state as of the start of an
//! entry, read-only (implemented over the redb tables by `redb_state.rs` and in memory by `mem.rs`);
//! [`Writes`] is everything one entry changes, keyed so that applying it is order-independent (the last
//! value per key wins). `decide` reads through its own writes first, then the view.

use std::collections::BTreeMap;

use crate::catalog::CheckerRecord;
use crate::model::{AgentRecord, MemberRecord, ObjectRecord};
use crate::safety::{AuditEntry, Proposal, SafetyConfig, ScopeRecord};
use crate::store::StoreError;

/// Read access to the replicated state. Implementations read one consistent state (the transaction the
/// entry is applied in, before the entry's writes), in key order wherever they list.
pub trait View {
    /// A counter of the meta table; None when never written.
    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError>;
    fn object(&self, id: &str) -> Result<Option<ObjectRecord>, StoreError>;
    /// Every object, in id order (recounts after a config change: O(objects), once per change).
    fn objects(&self) -> Result<Vec<ObjectRecord>, StoreError>;
    fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// Every agent, in id order.
    fn agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError>;
    fn scope(&self, name: &str) -> Result<Option<ScopeRecord>, StoreError>;
    /// Every stored scope name, in order.
    fn scope_names(&self) -> Result<Vec<String>, StoreError>;
    /// The replicated safety config (defaults until an operator sets one).
    fn safety_config(&self) -> Result<SafetyConfig, StoreError>;
    fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError>;
    fn has_proposal(&self, id: u64) -> Result<bool, StoreError>;
    /// The id of the latest proposal about `object`.
    fn proposal_of(&self, object: &str) -> Result<Option<u64>, StoreError>;
    fn proposal_count(&self) -> Result<u64, StoreError>;
    /// Up to `limit` proposal ids >= `from`, ascending.
    fn proposal_ids(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError>;
    fn is_pending(&self, id: u64) -> Result<bool, StoreError>;
    fn pending_count(&self) -> Result<u64, StoreError>;
    /// Up to `limit` pending proposal ids >= `from`, ascending.
    fn pending_ids(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError>;
    /// What is remembered about an idempotency key.
    fn request(&self, key: &str) -> Result<Option<crate::model::RequestRecord>, StoreError>;
    /// The key with eviction sequence `seq`.
    fn request_at(&self, seq: u64) -> Result<Option<String>, StoreError>;
    /// Up to `limit` key sequences >= `from`, ascending (the eviction order).
    fn request_seqs(&self, from: u64, limit: usize) -> Result<Vec<u64>, StoreError>;
    /// One checker of the catalog.
    fn catalog(&self, name: &str) -> Result<Option<CheckerRecord>, StoreError>;
    /// One replicated count (`fsm_counts`, see `counts.rs`); None when zero.
    fn count(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Every count whose key starts with `prefix`, in key order.
    fn counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError>;
    /// Up to `limit` counts with `from <= key < to`, in key order (the safety net's window rows).
    fn counts_range(&self, from: &str, to: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError>;
    /// Whether chunk `index` of the bytes with `sha256` is stored.
    fn has_blob(&self, sha256: &str, index: u64) -> Result<bool, StoreError>;
    /// Chunk `index` of the bytes with `sha256`.
    fn blob(&self, sha256: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The active replicated topology (`fsm_settings` row `topology`).
    fn topology(&self) -> Result<Option<crate::model::ActiveTopology>, StoreError>;
    /// The cluster's heartbeat secret (`fsm_settings` row `beat_secret`).
    fn beat_secret(&self) -> Result<Option<[u8; 32]>, StoreError>;
}

/// Everything one entry changes. `None` removes a row. Scopes that end up empty
/// ([`ScopeRecord::is_empty`]) are removed when written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    pub meta: BTreeMap<&'static str, u64>,
    /// Boxed: an entry of many findings inserts and removes records here once per finding, and a B-tree
    /// node moves its values on every insert and remove (whole records were a tenth of a member's apply).
    pub objects: BTreeMap<String, Box<ObjectRecord>>,
    pub history: BTreeMap<(String, u64), Option<crate::model::HistoryEntry>>,
    pub agents: BTreeMap<String, AgentRecord>,
    pub members: BTreeMap<u64, MemberRecord>,
    pub scopes: BTreeMap<String, ScopeRecord>,
    pub proposals: BTreeMap<u64, Option<Proposal>>,
    pub proposal_obj: BTreeMap<String, u64>,
    pub pending: BTreeMap<u64, Option<String>>,
    pub safety: Option<SafetyConfig>,
    /// The active topology: Some(None) clears it.
    pub topology: Option<Option<crate::model::ActiveTopology>>,
    /// The heartbeat secret, when this entry set it.
    pub beat_secret: Option<[u8; 32]>,
    pub audit: BTreeMap<u64, Option<AuditEntry>>,
    pub requests: BTreeMap<String, Option<crate::model::RequestRecord>>,
    pub request_order: BTreeMap<u64, Option<String>>,
    pub catalog: BTreeMap<String, CheckerRecord>,
    /// Artifact chunks written (never removed: content-addressed, referenced by catalog versions).
    pub blobs: BTreeMap<(String, u64), Vec<u8>>,
    /// Counts (`fsm_counts`); 0 removes the row.
    pub counts: BTreeMap<String, u64>,
    /// The ticket queue (`fsm_repair_queue`): queue key -> object id, None removes.
    pub repair: BTreeMap<String, Option<String>>,
}

/// Page size when merging a view's id listing with an entry's writes: bounds memory per step; the walks
/// stop as soon as they found what they need.
pub(super) const ID_PAGE: usize = 256;

/// Visit the ids of a table as `view` lists them (pages of [`ID_PAGE`]) merged with `writes` (Some: present,
/// None: removed), ascending, until `visit` returns false.
pub(super) fn walk_ids<T>(
    list: &dyn Fn(u64, usize) -> Result<Vec<u64>, StoreError>,
    writes: &BTreeMap<u64, Option<T>>,
    visit: &mut dyn FnMut(u64) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut added = writes.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k).peekable();
    let mut from = 0u64;
    loop {
        let page = list(from, ID_PAGE)?;
        let full = page.len() == ID_PAGE;
        for id in page {
            from = id.saturating_add(1);
            while let Some(a) = added.next_if(|a| *a < id) {
                if !visit(a)? {
                    return Ok(());
                }
            }
            added.next_if(|a| *a == id);
            if matches!(writes.get(&id), Some(None)) {
                continue;
            }
            if !visit(id)? {
                return Ok(());
            }
        }
        if !full {
            break;
        }
    }
    for a in added {
        if !visit(a)? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk `base` (as a view lists it) merged with `writes`, stopping after `stop_after` visits.
    fn walk(base: &[u64], writes: &BTreeMap<u64, Option<()>>, stop_after: usize) -> Vec<u64> {
        let list = |from: u64, n: usize| -> Result<Vec<u64>, StoreError> {
            Ok(base.iter().copied().filter(|id| *id >= from).take(n).collect())
        };
        let mut seen = Vec::new();
        walk_ids(&list, writes, &mut |id| {
            seen.push(id);
            Ok(seen.len() < stop_after)
        })
        .expect("walk");
        seen
    }

    #[test]
    fn walks_view_ids_merged_with_writes_across_pages() {
        // More than two pages, with removals on a page boundary and additions between and after.
        let base: Vec<u64> = (0..(2 * ID_PAGE as u64 + 10)).map(|i| i * 2).collect();
        let mut writes = BTreeMap::new();
        let boundary = base[ID_PAGE - 1];
        writes.insert(boundary, None);
        writes.insert(base[0], None);
        writes.insert(3, Some(()));
        writes.insert(base[ID_PAGE] + 1, Some(()));
        writes.insert(10_000, Some(()));
        writes.insert(base[5], Some(()));
        let mut want: std::collections::BTreeSet<u64> = base.iter().copied().collect();
        want.remove(&boundary);
        want.remove(&base[0]);
        want.extend([3, base[ID_PAGE] + 1, 10_000]);
        assert_eq!(walk(&base, &writes, usize::MAX), want.iter().copied().collect::<Vec<_>>());
        assert_eq!(walk(&base, &writes, 3), want.iter().copied().take(3).collect::<Vec<_>>(), "stops early");
        assert_eq!(walk(&[], &writes, usize::MAX), vec![3, base[5], base[ID_PAGE] + 1, 10_000]);
    }
}
