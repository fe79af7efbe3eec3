//! The replicated state machine: applies committed Raft entries (an [`Envelope`] of commands stamped with the
//! leader's `now_ms`) deterministically: no clock, no randomness, no HashMap order, so every node computes
//! byte-identical state. Apply is decide + write: the entry's commands are decided by the pure
//! [`decide_entry`] over a [`View`] of the redb tables (`redb_state.rs`), and the resulting [`Decision`] is
//! written in the same transaction. Each change gets the next global revision and an event in the change log
//! (one row per entry) for watchers; watchers are woken in `after_commit`, once the transaction that holds
//! the change is durable.
//!
//! Layout: `decide.rs` (the decider and its reads-through-writes), the rules by subject in `objects.rs`,
//! `agents.rs`, `safety.rs` and `tickets.rs`, `view.rs` (what decide reads and writes), `redb_state.rs` and
//! `mem.rs` (the two homes of the state), `snapshot.rs` (the snapshot format).
//!
//! Command versions: an entry this binary is too old to know ([`DecodeError::TooNew`]) stops apply on this node
//! with a clear error (the raft layer treats it as fatal and never advances the applied index past it), so
//! members of different versions never diverge; it is counted in [`FsmStats::incompatible`]. Garbage that no
//! binary could decode is logged and applied as a no-op on every node alike. A command the state machine
//! refuses is answered with an error and changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use tokio::sync::watch;

use crate::model::*;
use crate::sm_seam::Policy;
use crate::store::{self, META_CATALOG_REV, META_MIN_COMMAND_VERSION, StoreError};

mod agents;
mod catalog;
pub mod counts;
mod decide;
mod mem;
mod objects;
mod redb_state;
mod requests;
mod safety;
pub mod snapshot;
mod tickets;
mod view;
pub mod windows;

pub use catalog::topology_not_rolled_out;
pub use decide::{Decision, Tally, decide, decide_entry, decide_entry_limited};
pub use mem::{MemFsm, MemState};
use redb_state::Tables;
pub use view::{View, Writes};

/// Counters the node exports on /metrics. Not replicated: each node counts what it applied.
#[derive(Debug, Default)]
pub struct FsmStats {
    pub entries: AtomicU64,
    pub findings: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub undecodable: AtomicU64,
    /// Entries this binary is too old to apply (each one stopped the node: upgrade it).
    pub incompatible: AtomicU64,
    /// The replicated `min_command_version` as of the last entry applied here (the proposal gate reads it).
    pub min_command_version: AtomicU64,
    /// Transitions applied, by (kind, target state).
    pub transitions: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Transitions held by the safety net (proposals and blind refusals).
    pub held: AtomicU64,
    /// Moves on after every commit that changed the replicated catalog counter (and after a snapshot is
    /// restored, and at start-up), never before the commit: a cache keyed by the catalog counter compares
    /// this instead of reading the counter from the store on every heartbeat.
    pub catalog_generation: AtomicU64,
    /// The objects whose core applied entries changed, for the followed indexes (member-local).
    pub core_changes: Arc<crate::follow::CoreChanges>,
}

impl FsmStats {
    /// Read the replicated values the node follows (`min_command_version`) from the store at start-up,
    /// before any entry is applied.
    pub fn load_replicated(&self, db: &redb::Database) -> Result<(), StoreError> {
        let min = store::Reader::new(db)?.min_command_version()?;
        self.min_command_version.store(u64::from(min), Ordering::Relaxed);
        Ok(())
    }

    /// The replicated `min_command_version` as this node last applied it (the default until the first entry
    /// or the start-up read: no member can store 0, an operator's 0 is refused).
    pub fn min_command_version(&self) -> u32 {
        match self.min_command_version.load(Ordering::Relaxed) {
            0 => DEFAULT_MIN_COMMAND_VERSION,
            v => u32::try_from(v).unwrap_or(u32::MAX),
        }
    }
}

pub struct MasterFsm {
    policy: Policy,
    /// Revision reached by the entries applied in the transaction being built; published in `after_commit`.
    pending: Option<u64>,
    notify: watch::Sender<u64>,
    stats: Arc<FsmStats>,
    /// Revisions kept in the change log: [`CHANGELOG_RETAIN`]; smaller only in tests. Must be equal on every
    /// node (compaction happens during apply).
    changelog: crate::model::ChangelogLimits,
    /// The newest command version this fsm decodes: [`COMMAND_VERSION`]; lower only in tests that play an
    /// older binary.
    knows: u32,
    /// Idempotency keys remembered: [`MAX_REQUEST_KEYS`]; smaller only in tests. Must be equal on every node.
    request_keys: u64,
    /// This member's archive (`archive.rs`): each applied entry's events are queued to it, never waited on.
    archive: Option<crate::archive::Feed>,
    /// The transaction being built changed the catalog counter: `catalog_generation` moves at its commit.
    catalog_moved: bool,
    /// The transaction being built changed `min_command_version`: it is committed with an fsync, so that a
    /// member that crashes after it and is restarted as an older binary (a rollback's second step) never
    /// has to apply the newer entries before it again.
    version_moved: bool,
}

/// The oldest revision the change log keeps after reaching `revision` (None: nothing to drop yet).
fn changelog_keep_from(revision: u64, retain: u64) -> Option<u64> {
    (revision > retain).then(|| revision - retain + 1)
}

impl MasterFsm {
    /// A state machine and the receiver of its committed revision (watchers wait on it).
    pub fn new(policy: Policy) -> (MasterFsm, watch::Receiver<u64>) {
        let (notify, rx) = watch::channel(0);
        (
            MasterFsm {
                policy,
                pending: None,
                notify,
                stats: Arc::default(),
                changelog: crate::model::ChangelogLimits::default(),
                knows: COMMAND_VERSION,
                request_keys: MAX_REQUEST_KEYS,
                archive: None,
                catalog_moved: false,
                version_moved: false,
            },
            rx,
        )
    }

    /// Same as [`MasterFsm::new`] with a smaller change-log window, for tests of compaction.
    pub fn with_changelog_retain(mut self, retain: u64) -> Self {
        self.changelog.retain = retain.max(1);
        self
    }

    /// Same as [`MasterFsm::new`] with a smaller change-log byte bound, for tests of it.
    pub fn with_changelog_max_bytes(mut self, bytes: u64) -> Self {
        self.changelog.max_bytes = bytes;
        self
    }

    /// Same as [`MasterFsm::new`] remembering fewer idempotency keys, for tests of eviction.
    pub fn with_request_keys(mut self, keys: u64) -> Self {
        self.request_keys = keys.max(1);
        self
    }

    /// Feed every applied entry's archive events to `feed` (the member's `archive.redb`).
    pub fn with_archive(mut self, feed: crate::archive::Feed) -> Self {
        self.archive = Some(feed);
        self
    }

    /// Play a binary that knows command versions up to `knows` only (mixed-version tests).
    pub fn knowing_command_version(mut self, knows: u32) -> Self {
        self.knows = knows;
        self
    }

    pub fn stats(&self) -> Arc<FsmStats> {
        self.stats.clone()
    }

    /// Apply the committed entry at `index`. The result is an encoded [`ApplyResult`] for the proposer.
    pub fn apply_entry(
        &mut self,
        txn: &WriteTransaction,
        index: u64,
        cmd: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.apply_in(&mut Tables::open(txn)?, index, cmd)
    }

    /// [`MasterFsm::apply_entry`] with the tables already open in the entry's transaction (a batch of
    /// entries opens them once: opening and closing the 18 tables per entry was a sixteenth of a
    /// follower's CPU under single-finding load).
    fn apply_in(&mut self, tables: &mut Tables<'_>, index: u64, cmd: &[u8]) -> Result<Vec<u8>, StoreError> {
        let env = match Envelope::decode_knowing(cmd, self.knows) {
            Ok(env) => env,
            Err(DecodeError::TooNew { needs, knows }) => {
                // Never skip: members that know the version apply it, so skipping would diverge. The raft
                // layer stops this node without advancing past the entry; an upgraded binary applies it.
                self.stats.incompatible.fetch_add(1, Ordering::Relaxed);
                let e = StoreError::TooNew { index, needs, knows };
                tracing::error!(index, needs, knows, error = %e, "cannot apply committed entry: node stops");
                return Err(e);
            }
            Err(e @ DecodeError::Undecodable(_)) => {
                // Proposals are validated before they are proposed, so this is a bug; no binary of any
                // version can decode it, so every node skips it alike.
                self.stats.entries.fetch_add(1, Ordering::Relaxed);
                self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(index, error = %e, "skipping undecodable committed entry");
                return Ok(store::encode(&ApplyResult::default()));
            }
        };
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        let mut d = decide_entry_limited(&*tables, &self.policy, env.now_ms, env.cmds, self.request_keys)?;
        tables.write(&d, self.changelog)?;
        self.catalog_moved |= d.writes.meta.contains_key(META_CATALOG_REV);
        self.version_moved |= self.stats.min_command_version.load(Ordering::Relaxed) != d.min_command_version;
        self.count(&d);
        if let Some(feed) = &self.archive
            && !d.archive.is_empty()
        {
            feed.push(index, env.now_ms, std::mem::take(&mut d.archive));
        }
        if let Some(first) = d.events.first() {
            self.pending = Some(d.revision);
            // Before the transaction commits: a reader at this revision finds the entry's changes.
            self.stats.core_changes.record(first.revision, d.revision, std::mem::take(&mut d.core_changed));
        }
        Ok(store::encode(&ApplyResult { results: d.results }))
    }

    /// Add a written decision's counters to the node's.
    fn count(&self, d: &Decision) {
        let s = &self.stats;
        s.findings.fetch_add(d.tally.findings, Ordering::Relaxed);
        s.duplicates.fetch_add(d.tally.duplicates, Ordering::Relaxed);
        s.rejected.fetch_add(d.tally.rejected, Ordering::Relaxed);
        s.held.fetch_add(d.tally.held, Ordering::Relaxed);
        if !d.tally.transitions.is_empty() {
            let mut m = s.transitions.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in &d.tally.transitions {
                *m.entry(*k).or_default() += n;
            }
        }
        s.min_command_version.store(d.min_command_version, Ordering::Relaxed);
    }

    /// Call after the transaction holding applied entries is durable: wakes watchers.
    pub fn committed(&mut self) {
        if std::mem::take(&mut self.catalog_moved) {
            self.stats.catalog_generation.fetch_add(1, Ordering::Release);
        }
        if let Some(rev) = self.pending.take() {
            self.notify.send_replace(rev);
        }
    }

    /// Publish the revision found in the store at start-up (before any entry is applied).
    pub fn publish_revision(&self, db: &redb::Database) -> Result<(), StoreError> {
        let reader = store::Reader::new(db)?;
        self.stats.min_command_version.store(u64::from(reader.min_command_version()?), Ordering::Relaxed);
        self.stats.catalog_generation.fetch_add(1, Ordering::Release);
        let rev = reader.revision()?;
        self.notify.send_if_modified(|cur| {
            let newer = rev > *cur;
            if newer {
                *cur = rev;
            }
            newer
        });
        Ok(())
    }

    /// Everything the state machine holds, as bytes (see [`snapshot`]), the change log included (it is
    /// bounded by the retention window): a member caught up by a snapshot serves the same watch history as
    /// the member that made it.
    pub fn snapshot_data(&self, txn: &ReadTransaction) -> Result<Vec<u8>, StoreError> {
        snapshot::write(txn)
    }

    /// Replace the state machine's tables with a snapshot's contents.
    pub fn restore_data(&mut self, txn: &WriteTransaction, data: &[u8]) -> Result<(), StoreError> {
        self.restore_from(txn, &data)
    }

    /// [`MasterFsm::restore_data`] streaming from a source read twice (a snapshot file).
    pub fn restore_from(
        &mut self,
        txn: &WriteTransaction,
        src: &dyn crate::raft::SnapshotSource,
    ) -> Result<(), StoreError> {
        let revision = snapshot::restore_from(txn, src)?;
        self.stats.core_changes.reset();
        if let Some(feed) = &self.archive {
            feed.restored();
        }
        let min = match txn.open_table(store::META)?.get(META_MIN_COMMAND_VERSION)? {
            Some(g) => Some(store::unseal_u64("fsm_counters", META_MIN_COMMAND_VERSION, g.value())?),
            None => None,
        };
        self.stats
            .min_command_version
            .store(min.unwrap_or(u64::from(DEFAULT_MIN_COMMAND_VERSION)), Ordering::Relaxed);
        self.pending = Some(revision);
        self.catalog_moved = true;
        Ok(())
    }
}

/// How the raft layer sees a store error: damage is a corrupt replica, an entry too new for this binary
/// stops the node until it is upgraded, anything else is a storage failure. All three are fatal.
pub fn fsm_error(e: StoreError) -> crate::raft::FsmError {
    match e {
        StoreError::Corrupt { .. } => crate::raft::FsmError::Corrupt(e.to_string()),
        StoreError::TooNew { .. } => crate::raft::FsmError::TooNew(e.to_string()),
        StoreError::Storage(_) => crate::raft::FsmError::Storage(e.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests;

impl crate::raft::Fsm for MasterFsm {
    fn apply(
        &mut self,
        txn: &WriteTransaction,
        index: u64,
        cmd: &[u8],
    ) -> Result<Vec<u8>, crate::raft::FsmError> {
        self.apply_entry(txn, index, cmd).map_err(fsm_error)
    }

    fn apply_batch(
        &mut self,
        txn: &WriteTransaction,
        entries: &[(u64, &[u8])],
        out: &mut Vec<Result<Vec<u8>, crate::raft::FsmError>>,
    ) {
        let mut tables = match Tables::open(txn) {
            Ok(t) => t,
            Err(e) => return out.push(Err(fsm_error(e))),
        };
        crate::raft::apply_each(entries, out, |index, cmd| {
            self.apply_in(&mut tables, index, cmd).map_err(fsm_error)
        });
    }

    fn write_snapshot(
        txn: &ReadTransaction,
        out: &mut dyn std::io::Write,
    ) -> Result<(), crate::raft::FsmError> {
        snapshot::write_to(txn, out).map_err(fsm_error)
    }

    fn open(&mut self, db: &redb::Database, damage: &store::DamageFlag) -> Result<(), crate::raft::FsmError> {
        // A pass over every record (8.8 s at 1.5 M objects on a 2-core machine) before this member serves:
        // niced, so a member restarting beside others (one machine in `huatuo dev` and the benchmarks, any
        // host shared with busier work) does not take the cores from the ones answering the fleet meanwhile.
        let report =
            crate::follow::run_niced("verify-tables", || store::open_store(db)).map_err(fsm_error)?;
        store::watch_damage(db, damage);
        tracing::info!(
            records = report.records,
            bytes = report.bytes,
            upgraded = report.upgraded,
            resealed = report.resealed,
            "state machine tables verified"
        );
        Ok(())
    }

    fn restore(
        &mut self,
        txn: &WriteTransaction,
        snap: &dyn crate::raft::SnapshotSource,
    ) -> Result<(), crate::raft::FsmError> {
        self.restore_from(txn, snap).map_err(fsm_error)
    }

    fn after_commit(&mut self) {
        self.committed();
    }

    fn wants_durable(&mut self) -> bool {
        std::mem::take(&mut self.version_moved)
    }
}
