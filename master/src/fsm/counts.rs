//! Replicated counters (issue 17): objects per (kind, state) for the whole fleet and per safety scope, and
//! the index of objects with a ticket filing outstanding (the ticket dispatcher's queue: REPAIR without a
//! ticket, and network devices whose incident's ticket is not recorded yet, `tickets::pending_key`). Kept exact in `decide`
//! by diffing every saved record against its stored version (as `safety.rs` `account` does for the
//! per-scope populations), so the summary views, `/metrics` and ticket filing never scan the objects.
//!
//! Where they live: the table `fsm_counts` (key -> sealed u64; a count that drops to 0 is removed) and the
//! table `fsm_repair_queue` (ticket idempotency key `OBJECT@ENTERED_MS` -> object id). Why tables of their own
//! rather than fields of `ScopeRecord`: the fleet counts have no scope record to live in; a transition
//! rewrites two 8-byte rows per scope instead of re-encoding the scope's JSON (with its windows); and an
//! older binary decoding a `ScopeRecord` would drop unknown fields on its next write, silently zeroing
//! counts, whereas a table it does not know is left alone (and recounted, see below).
//!
//! Keys of `fsm_counts`: `f/KIND/STATE` (the fleet), `s/SCOPE/KIND/STATE` (a safety scope: `cluster`,
//! `rack=r1`, ...; objects of kind `checker` count in the fleet only, like the scope populations). Kinds and
//! states never contain `/`; a scope may (label values), so keys are split from the right.
//!
//! Hourly transition counters (issue 19, the portal's charts): `h/HOUR_MS/KIND/STATE` (HOUR_MS the start of
//! the entry's hour, zero-padded to 20 digits so that key order is time order) counts the transitions of
//! objects of KIND into STATE applied by entries stamped in that hour. Incremented in
//! `objects.rs` `store_outcome`, where every transition is applied (the same place as the node's
//! `huatuo_master_transitions_total`); pruned by the entry's time, never a clock: the first transition of a
//! (hour, kind, state) removes every row older than [`HOURLY_KEEP_HOURS`] before that hour. They have no
//! recount from the objects (objects do not remember every transition): a store or snapshot from before
//! them starts with none, and the recounts above leave them alone.
//!
//! Recounted from the objects once (the same [`Recount`] everywhere): by `store::open_store` when a store
//! has objects but no counts (written by a binary before the counters), by a restore of a snapshot older
//! than format v5, and in `decide` after a safety-config change re-scopes (scope counts only).

use std::collections::BTreeMap;

use state_machines::Kind;

use super::decide::Decider;
use crate::model::ObjectRecord;
use crate::safety::SafetyConfig;
use crate::store::StoreError;

/// Prefix of the fleet's counts.
pub const FLEET: &str = "f/";
/// Prefix of the per-scope counts.
pub const SCOPE: &str = "s/";

/// Prefix of the hourly transition counters.
pub const HOURLY: &str = "h/";
/// One hour in milliseconds: the hourly counters' bucket.
pub const HOUR_MS: u64 = 3_600_000;
/// Hours of hourly counters kept (8 days): the portal draws the last 7 days (168 hours), plus a day so the
/// oldest drawn hour is complete whatever the leader's clock skew. Bounds the rows to
/// 192 x kinds x states (about 10,000).
pub const HOURLY_KEEP_HOURS: u64 = 192;

/// The start of the hour `time_ms` falls in.
pub fn hour_of(time_ms: u64) -> u64 {
    time_ms - time_ms % HOUR_MS
}

/// The hourly key of transitions into `state` of objects of `kind` in the hour starting at `hour_ms`.
pub fn hourly_key(hour_ms: u64, kind: &str, state: &str) -> String {
    format!("{HOURLY}{hour_ms:020}/{kind}/{state}")
}

/// What an hourly key names: (hour start ms, kind, state); None for a key of another shape.
pub fn parse_hourly(key: &str) -> Option<(u64, &str, &str)> {
    let rest = key.strip_prefix(HOURLY)?;
    let mut parts = rest.splitn(3, '/');
    let hour = parts.next()?;
    if hour.len() != 20 {
        return None;
    }
    let hour = hour.parse().ok()?;
    Some((hour, parts.next()?, parts.next()?))
}

/// The fleet key of (kind, state).
pub fn fleet_key(kind: &str, state: &str) -> String {
    format!("{FLEET}{kind}/{state}")
}

/// The key of (scope, kind, state).
pub fn scope_key(scope: &str, kind: &str, state: &str) -> String {
    format!("{SCOPE}{scope}/{kind}/{state}")
}

/// What a counts key names: (scope or None for the fleet, kind, state); None for a key of another shape.
pub fn parse_key(key: &str) -> Option<(Option<&str>, &str, &str)> {
    if let Some(rest) = key.strip_prefix(FLEET) {
        let (kind, state) = rest.split_once('/')?;
        return Some((None, kind, state));
    }
    let rest = key.strip_prefix(SCOPE)?;
    let mut parts = rest.rsplitn(3, '/');
    let state = parts.next()?;
    let kind = parts.next()?;
    let scope = parts.next()?;
    Some((Some(scope), kind, state))
}

/// The ticket queue key of a record: `OBJECT@ENTERED_MS` while it is in REPAIR without a ticket, or while a
/// network device's incident (entered ERROR at ENTERED_MS) has no ticket recorded.
pub fn queue_key(rec: &ObjectRecord) -> Option<String> {
    crate::tickets::pending_key(&rec.sm)
}

/// The fleet key of a record.
fn fleet_of(rec: &ObjectRecord) -> String {
    fleet_key(rec.id.kind().as_str(), crate::sm_seam::state_name(&rec.sm))
}

/// The scope keys of a record under `cfg` (none for checker objects).
fn scopes_of(cfg: &SafetyConfig, rec: &ObjectRecord) -> Vec<String> {
    let kind = rec.id.kind();
    if kind == Kind::Checker {
        return Vec::new();
    }
    let state = crate::sm_seam::state_name(&rec.sm);
    cfg.scopes_of(&rec.labels).into_iter().map(|s| scope_key(&s, kind.as_str(), state)).collect()
}

/// Counts and queue built from records alone (the recount every path that lacks counters runs once, and
/// the reference the property tests compare with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recount {
    pub counts: BTreeMap<String, u64>,
    /// Queue key -> object id.
    pub queue: BTreeMap<String, String>,
}

impl Recount {
    pub fn add(&mut self, cfg: &SafetyConfig, rec: &ObjectRecord) {
        *self.counts.entry(fleet_of(rec)).or_default() += 1;
        for k in scopes_of(cfg, rec) {
            *self.counts.entry(k).or_default() += 1;
        }
        if let Some(k) = queue_key(rec) {
            self.queue.insert(k, rec.id.as_str().to_owned());
        }
    }

    pub fn of<'a>(cfg: &SafetyConfig, records: impl IntoIterator<Item = &'a ObjectRecord>) -> Recount {
        let mut r = Recount::default();
        for rec in records {
            r.add(cfg, rec);
        }
        r
    }
}

/// Whether a store needs [`recount_store`]: it has objects but no counts (written by a binary before the
/// counters; every object counts in the fleet, so a maintained store with objects has counts).
pub(crate) fn needs_recount(txn: &redb::ReadTransaction) -> Result<bool, StoreError> {
    use redb::ReadableTableMetadata;
    let len = |def| match txn.open_table(def) {
        Ok(t) => Ok(t.len()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(StoreError::from(e)),
    };
    Ok(len(crate::store::OBJECTS)? > 0 && len(crate::store::COUNTS)? == 0)
}

/// Count every stored object into the counts and the ticket queue (replacing them), in `txn`; returns how
/// many objects were counted.
pub(crate) fn recount_store(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    super::redb_state::Tables::open(txn)?.recount()
}

impl Decider<'_> {
    /// A count as this entry sees it.
    pub(super) fn count_of(&self, key: &str) -> Result<u64, StoreError> {
        match self.w.counts.get(key) {
            Some(v) => Ok(*v),
            None => Ok(self.view.count(key)?.unwrap_or(0)),
        }
    }

    fn bump(&mut self, key: &str, up: bool) -> Result<(), StoreError> {
        let v = self.count_of(key)?;
        let v = if up { v + 1 } else { v.saturating_sub(1) };
        self.w.counts.insert(key.to_string(), v);
        Ok(())
    }

    /// Move a record's contribution to the counts and the ticket queue from `prev` to `next`.
    pub(super) fn count_record(
        &mut self,
        prev: Option<&ObjectRecord>,
        next: Option<&ObjectRecord>,
    ) -> Result<(), StoreError> {
        // The hot path (a finding that changes no state): same state and labels count the same, and
        // outside REPAIR nothing is queued, except a network device's incident (its filing outstanding is
        // an attribute, which changes without a transition); no key is built.
        let same = matches!((prev, next), (Some(p), Some(n))
            if p.sm.state == n.sm.state && p.labels == n.labels && p.id == n.id);
        if same
            && next.is_some_and(|n| n.sm.state != state_machines::State::Repair && !n.id.kind().is_network())
        {
            return Ok(());
        }
        let keys = |r: &ObjectRecord| {
            let mut k = scopes_of(&self.cfg, r);
            k.push(fleet_of(r));
            k
        };
        let (before, after) = if same {
            (Vec::new(), Vec::new())
        } else {
            (prev.map(keys).unwrap_or_default(), next.map(keys).unwrap_or_default())
        };
        if before != after {
            for k in &before {
                self.bump(k, false)?;
            }
            for k in &after {
                self.bump(k, true)?;
            }
        }
        let (old, new) = (prev.and_then(queue_key), next.and_then(queue_key));
        if old != new {
            if let Some(k) = old {
                self.w.repair.insert(k, None);
            }
            if let (Some(k), Some(r)) = (new, next) {
                self.w.repair.insert(k, Some(r.id.to_string()));
            }
        }
        Ok(())
    }

    /// Count one transition of an object of `kind` into `state` at this entry's time, pruning rows older
    /// than [`HOURLY_KEEP_HOURS`] when it is the first of its (hour, kind, state): at most once per hour and
    /// pair, each a read of at most 192 x kinds x states rows.
    pub(super) fn count_transition(&mut self, kind: &str, state: &str) -> Result<(), StoreError> {
        let hour = hour_of(self.now);
        let key = hourly_key(hour, kind, state);
        let n = self.count_of(&key)?;
        if n == 0 {
            let keep_from = hour.saturating_sub(HOURLY_KEEP_HOURS * HOUR_MS);
            for (k, _) in self.view.counts(HOURLY)? {
                match parse_hourly(&k) {
                    Some((h, _, _)) if h < keep_from => {
                        self.w.counts.insert(k, 0);
                    }
                    _ => break,
                }
            }
        }
        self.w.counts.insert(key, n + 1);
        Ok(())
    }

    /// Zero every per-scope count (before a recount after the scopes may have changed).
    pub(super) fn clear_scope_counts(&mut self) -> Result<(), StoreError> {
        let mut keys: Vec<String> = self.view.counts(SCOPE)?.into_iter().map(|(k, _)| k).collect();
        keys.extend(self.w.counts.keys().filter(|k| k.starts_with(SCOPE)).cloned());
        for k in keys {
            self.w.counts.insert(k, 0);
        }
        Ok(())
    }

    /// Add a record to the per-scope counts (the recount after a config change).
    pub(super) fn count_scopes(&mut self, rec: &ObjectRecord) -> Result<(), StoreError> {
        for k in scopes_of(&self.cfg, rec) {
            self.bump(&k, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_from_the_right_so_scopes_may_hold_slashes() {
        assert_eq!(parse_key(&fleet_key("disk", "GOOD")), Some((None, "disk", "GOOD")));
        assert_eq!(
            parse_key(&scope_key("pool=a/b", "disk", "REPAIR")),
            Some((Some("pool=a/b"), "disk", "REPAIR"))
        );
        assert_eq!(parse_key("x/disk/GOOD"), None);
        assert_eq!(parse_key("s/disk"), None);
    }
}
