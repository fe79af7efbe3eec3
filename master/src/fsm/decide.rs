//! The pure core of the master: `decide(view, commands, now_ms) -> Decision`. It reads the replicated state
//! only through a [`View`] and its own pending [`Writes`], takes time only from the entry, and uses ordered
//! maps only, so every node (and the in-memory model the property tests use) decides byte-identically. The
//! caller writes the decision in the same transaction (`redb_state.rs`) and adds its [`Tally`] to the node's
//! counters. The per-subject rules live in `objects.rs`, `agents.rs`, `safety.rs` and `tickets.rs`; this file
//! holds the reads-through-writes helpers they share.

use std::collections::BTreeMap;

use state_machines::ObjectId;

use super::view::{View, Writes, walk_ids};
use crate::model::*;
use crate::safety::{self, AuditEntry, Proposal, SafetyConfig, ScopeRecord};
use crate::sm_seam::{self, ObjectState, Policy};
use crate::store::{META_AUDIT_NEXT, META_MIN_COMMAND_VERSION, META_REVISION, StoreError};

/// Counters a decision moves; the node adds them to [`super::FsmStats`] once the decision is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub findings: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub held: u64,
    /// Transitions applied, by (kind, target state).
    pub transitions: BTreeMap<(&'static str, &'static str), u64>,
}

/// What one entry does: the rows to write, the change events for watchers (dense revisions), one result per
/// command for the proposer, and the counters. State-machine effects are recorded in history (as text) and in
/// the alert log by the rules; executing them is the leader's integrations' job, outside the fsm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub writes: Writes,
    pub events: Vec<ChangeEvent>,
    pub results: Vec<CmdResult>,
    pub tally: Tally,
    /// The revision after the entry (unchanged when nothing changed).
    pub revision: u64,
    /// The replicated `min_command_version` after the entry (the node's proposal gate follows it).
    pub min_command_version: u64,
    /// What the entry adds to the member's archive (accepted findings, transitions, ticket updates): fed to
    /// `archive.rs` after the entry is written; not part of the replicated state.
    pub archive: Vec<crate::archive::ArchiveEvent>,
    /// The objects whose core (state machine or labels) the entry changed or created: the member's hint
    /// for its followed indexes (`follow::CoreChanges`); not part of the replicated state.
    pub core_changed: std::collections::BTreeSet<String>,
}

/// Decide a whole entry: the commands in order, each seeing what the earlier ones wrote.
pub fn decide_entry(
    view: &dyn View,
    policy: &Policy,
    now_ms: u64,
    cmds: Vec<Command>,
) -> Result<Decision, StoreError> {
    decide_entry_limited(view, policy, now_ms, cmds, MAX_REQUEST_KEYS)
}

/// [`decide_entry`] remembering at most `request_keys` idempotency keys (must be equal on every node:
/// [`MAX_REQUEST_KEYS`]; smaller only in tests of eviction).
pub fn decide_entry_limited(
    view: &dyn View,
    policy: &Policy,
    now_ms: u64,
    cmds: Vec<Command>,
    request_keys: u64,
) -> Result<Decision, StoreError> {
    let mut d = Decider::new(view, policy, now_ms)?;
    d.request_keys = request_keys;
    let mut results = Vec::with_capacity(cmds.len());
    for cmd in cmds {
        results.push(d.command(cmd)?);
    }
    d.drop_silent_rows_of_empty()?;
    Ok(d.finish(results))
}

/// Decide one command on its own (an entry of one command).
pub fn decide(view: &dyn View, policy: &Policy, cmd: Command, now_ms: u64) -> Result<Decision, StoreError> {
    decide_entry(view, policy, now_ms, vec![cmd])
}

/// The state of one entry's decision: the view, what the entry wrote so far, its events and counters.
pub(super) struct Decider<'v> {
    pub(super) view: &'v dyn View,
    pub(super) policy: &'v Policy,
    pub(super) now: u64,
    pub(super) revision: u64,
    pub(super) events: Vec<ChangeEvent>,
    pub(super) w: Writes,
    /// Objects read from the view by this entry (None: absent), so repeated reads decode once.
    seen: BTreeMap<String, Option<Box<ObjectRecord>>>,
    /// The replicated safety config (as changed by this entry).
    pub(super) cfg: SafetyConfig,
    /// Set when the safety net held the current command's transition: (proposal id or 0, why).
    pub(super) held: Option<(u64, String)>,
    /// The replicated `min_command_version`: commands of a newer version are refused (alike on every node).
    pub(super) min_version: u64,
    pub(super) tally: Tally,
    /// Most idempotency keys remembered ([`MAX_REQUEST_KEYS`]).
    pub(super) request_keys: u64,
    /// Catalog records read from the view by this entry (None: absent): findings look their checker up.
    pub(super) catalog_seen: BTreeMap<String, Option<crate::catalog::CheckerRecord>>,
    /// The entry's archive events so far (see [`Decision::archive`]).
    pub(super) archive: Vec<crate::archive::ArchiveEvent>,
    /// See [`Decision::core_changed`].
    core_changed: std::collections::BTreeSet<String>,
    /// Per window-row prefix, a key below which this entry dropped every row (`windows.rs` `trim`).
    pub(super) window_from: BTreeMap<String, String>,
}

impl<'v> Decider<'v> {
    pub(super) fn new(view: &'v dyn View, policy: &'v Policy, now: u64) -> Result<Self, StoreError> {
        Ok(Decider {
            view,
            policy,
            now,
            revision: view.meta(META_REVISION)?.unwrap_or(0),
            events: Vec::new(),
            w: Writes::default(),
            seen: BTreeMap::new(),
            cfg: view.safety_config()?,
            held: None,
            min_version: view
                .meta(META_MIN_COMMAND_VERSION)?
                .unwrap_or(u64::from(DEFAULT_MIN_COMMAND_VERSION)),
            tally: Tally::default(),
            request_keys: MAX_REQUEST_KEYS,
            catalog_seen: BTreeMap::new(),
            archive: Vec::new(),
            core_changed: std::collections::BTreeSet::new(),
            window_from: BTreeMap::new(),
        })
    }

    pub(super) fn finish(mut self, results: Vec<CmdResult>) -> Decision {
        if !self.events.is_empty() {
            self.w.meta.insert(META_REVISION, self.revision);
        }
        Decision {
            writes: self.w,
            events: self.events,
            results,
            tally: self.tally,
            revision: self.revision,
            min_command_version: self.min_version,
            archive: self.archive,
            core_changed: self.core_changed,
        }
    }

    /// The state-machine rules of this point of the entry (a `SetMinCommandVersion` earlier in the entry
    /// counts): deterministic on every member.
    pub(super) fn rules(&self) -> sm_seam::Rules {
        sm_seam::rules_at(self.min_version)
    }

    pub(super) fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// An empty result at the current revision.
    pub(super) fn result(&self) -> CmdResult {
        CmdResult { revision: self.revision, ..CmdResult::default() }
    }

    /// A refusal: nothing changes, the proposer gets `code` and `message`.
    pub(super) fn refuse(&self, code: proto::error::Code, message: String) -> CmdResult {
        CmdResult { error: Some((code, message)), ..self.result() }
    }

    pub(super) fn command(&mut self, cmd: Command) -> Result<CmdResult, StoreError> {
        if !matches!(cmd, Command::SetMinCommandVersion { .. }) && u64::from(cmd.version()) > self.min_version
        {
            // The leader's gate refuses these before Raft; one that slipped through (a gate that raced a
            // lowering) is refused here the same way on every node.
            self.tally.rejected += 1;
            let min = u32::try_from(self.min_version).unwrap_or(u32::MAX);
            let e = VersionError::NotEnabled { kind: cmd.kind(), needs: cmd.version(), min };
            return Ok(self.refuse(proto::error::Code::Conflict, e.to_string()));
        }
        match cmd {
            Command::Ingest { agent, seq, findings, epoch } => self.ingest(&agent, seq, epoch, findings),
            Command::Register { agent, host, objects } => self.register(&agent, &host, objects),
            Command::Object { object, input } => self.object_input(&object, input),
            Command::AgentLiveness { agent, host, alive } => self.liveness(&agent, &host, alive),
            Command::Announce { id, grpc, http } => {
                self.w.members.insert(id, MemberRecord { grpc, http });
                Ok(self.result())
            }
            Command::Tick { objects } => self.tick(objects),
            Command::SetLevel { scope, level, by, reason } => self.set_level(&scope, level, &by, &reason),
            Command::Release { scope, by, reason } => {
                self.set_level(&scope, safety::Level::Auto, &by, &reason)
            }
            Command::Decide { ids, filter, approve, by, reason } => {
                self.decide_proposals(ids, &filter, approve, &by, &reason)
            }
            Command::SetSafety { config, by, reason } => self.set_safety(config, &by, &reason),
            Command::Alert { object, message } => self.alert_object(&object, &message),
            Command::SetMinCommandVersion { version, by, reason } => {
                self.set_min_command_version(version, &by, &reason)
            }
            Command::Keyed { key, cmd } => self.keyed(key, *cmd),
            Command::CatalogChunk { sha256, index, data } => self.catalog_chunk(&sha256, index, &data),
            Command::CatalogPush { artifact, data } => self.catalog_push(artifact, &data),
            Command::CatalogSeed { items } => self.catalog_seed(items),
            Command::Rollout { action, name, version, target, shadow, by, reason } => {
                self.rollout(action, &name, &version, target, shadow, &by, &reason)
            }
            Command::CanaryCheck { name, version, deviation, pause } => {
                self.canary_check(&name, &version, deviation, pause)
            }
            Command::SetTopology { name, version, by, reason } => {
                self.set_topology(&name, &version, &by, &reason)
            }
            Command::SetBeatSecret { secret } => self.set_beat_secret(secret.expose()),
        }
    }

    // ---- reads through this entry's writes ------------------------------------------------------------

    pub(super) fn meta(&self, key: &'static str) -> Result<u64, StoreError> {
        match self.w.meta.get(key) {
            Some(v) => Ok(*v),
            None => Ok(self.view.meta(key)?.unwrap_or(0)),
        }
    }

    /// The object as this entry sees it.
    pub(super) fn load(&mut self, id: &str) -> Result<Option<ObjectRecord>, StoreError> {
        if let Some(r) = self.w.objects.get(id) {
            return Ok(Some(ObjectRecord::clone(r)));
        }
        if let Some(r) = self.seen.get(id) {
            return Ok(r.as_deref().cloned());
        }
        let rec = self.view.object(id)?;
        self.seen.insert(id.to_string(), rec.clone().map(Box::new));
        Ok(rec)
    }

    /// The object a finding updates, moved out of where this entry sees it (its writes, its cached read, or
    /// the store) instead of copied as [`Decider::load`] copies it: with what the accounting of its write
    /// needs of this version ([`Taken`]). The caller writes it back with [`Decider::save_taken`], or hands
    /// it back unchanged with [`Decider::untake`]. `None` (nothing moved) when the object does not exist.
    /// Under load a record's copy was a tenth of a member's Raft thread (batched findings: every further
    /// finding about an object in the same entry copied the whole record, its evidence included).
    pub(super) fn take(&mut self, id: &str) -> Result<Option<(ObjectRecord, Taken)>, StoreError> {
        let (rec, written) = if let Some(r) = self.w.objects.remove(id) {
            (r, true)
        } else {
            match self.seen.remove(id) {
                Some(Some(r)) => (r, false),
                Some(None) => {
                    self.seen.insert(id.to_string(), None);
                    return Ok(None);
                }
                None => match self.view.object(id)? {
                    Some(r) => (Box::new(r), false),
                    None => {
                        self.seen.insert(id.to_string(), None);
                        return Ok(None);
                    }
                },
            }
        };
        let prev = core_of(&rec);
        Ok(Some((*rec, Taken { prev, written })))
    }

    /// Hand back a record [`Decider::take`] moved out, unchanged, where this entry sees it.
    pub(super) fn untake(&mut self, rec: ObjectRecord, taken: Taken) {
        let id = rec.id.as_str().to_owned();
        if taken.written {
            self.w.objects.insert(id, Box::new(rec));
        } else {
            self.seen.insert(id, Some(Box::new(rec)));
        }
    }

    /// Write an object, keeping the per-scope population counters, the (kind, state) counts and the ticket
    /// queue exact.
    /// Takes the record and the previous one it replaces by value: an object carries up to 256 history
    /// entries, and cloning both on every finding was a tenth of the leader's Raft thread under load.
    pub(super) fn save(&mut self, rec: ObjectRecord) -> Result<(), StoreError> {
        let id = rec.id.as_str();
        // The previous version is not needed once replaced: this entry's write, else the cached read (once
        // written, `load` answers from the writes, never from `seen`), else the store.
        let prev = match self.w.objects.remove(id) {
            Some(p) => Some(p),
            None => match self.seen.remove(id) {
                Some(p) => p,
                None => self.view.object(id)?.map(Box::new),
            },
        };
        self.write_over(rec, prev.as_deref())
    }

    /// [`Decider::save`] of a record [`Decider::take`] moved out (`None`: a new object), against the version
    /// it took.
    pub(super) fn save_taken(&mut self, rec: ObjectRecord, taken: Option<Taken>) -> Result<(), StoreError> {
        self.write_over(rec, taken.as_ref().map(|t| &t.prev))
    }

    fn write_over(&mut self, rec: ObjectRecord, prev: Option<&ObjectRecord>) -> Result<(), StoreError> {
        let id = rec.id.as_str().to_owned();
        self.account(prev, Some(&rec))?;
        self.count_record(prev, Some(&rec))?;
        if prev.is_none_or(|p| p.sm != rec.sm || p.labels != rec.labels) {
            self.core_changed.insert(id.clone());
        }
        self.w.objects.insert(id, Box::new(rec));
        Ok(())
    }

    /// Every object as this entry sees it, in id order.
    pub(super) fn all_objects(&self) -> Result<Vec<ObjectRecord>, StoreError> {
        let mut all: BTreeMap<String, ObjectRecord> =
            self.view.objects()?.into_iter().map(|r| (r.id.to_string(), r)).collect();
        all.extend(self.w.objects.iter().map(|(k, v)| (k.clone(), ObjectRecord::clone(v))));
        Ok(all.into_values().collect())
    }

    pub(super) fn agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        match self.w.agents.get(id) {
            Some(a) => Ok(Some(a.clone())),
            None => self.view.agent(id),
        }
    }

    pub(super) fn all_agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        let mut all: BTreeMap<String, AgentRecord> = self.view.agents()?.into_iter().collect();
        all.extend(self.w.agents.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(all.into_iter().collect())
    }

    /// The scope record, loaded into this entry's writes (every scope an entry touches is written back).
    pub(super) fn scope_mut(&mut self, name: &str) -> Result<&mut ScopeRecord, StoreError> {
        if !self.w.scopes.contains_key(name) {
            let rec = self.view.scope(name)?.unwrap_or_default();
            self.w.scopes.insert(name.to_string(), rec);
        }
        Ok(self.w.scopes.entry(name.to_string()).or_default())
    }

    /// Scopes that became empty are gone (as if written and re-read): used before a recount.
    pub(super) fn drop_empty_scopes(&mut self) -> Result<(), StoreError> {
        self.drop_silent_rows_of_empty()?;
        for r in self.w.scopes.values_mut() {
            if r.is_empty() {
                *r = ScopeRecord::default();
            }
        }
        Ok(())
    }

    /// Every scope name that exists as this entry sees it, in order.
    pub(super) fn scope_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: std::collections::BTreeSet<String> = self.view.scope_names()?.into_iter().collect();
        for (n, r) in &self.w.scopes {
            if r.is_empty() {
                names.remove(n);
            } else {
                names.insert(n.clone());
            }
        }
        Ok(names.into_iter().collect())
    }

    pub(super) fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError> {
        match self.w.proposals.get(&id) {
            Some(p) => Ok(p.clone()),
            None => self.view.proposal(id),
        }
    }

    pub(super) fn latest_proposal(&self, object: &ObjectId) -> Result<Option<Proposal>, StoreError> {
        let oid = object.to_string();
        let id = match self.w.proposal_obj.get(&oid) {
            Some(id) => Some(*id),
            None => self.view.proposal_of(&oid)?,
        };
        match id {
            Some(id) => self.proposal(id),
            None => Ok(None),
        }
    }

    pub(super) fn is_pending(&self, id: u64) -> Result<bool, StoreError> {
        match self.w.pending.get(&id) {
            Some(p) => Ok(p.is_some()),
            None => self.view.is_pending(id),
        }
    }

    /// Rows of a table as this entry sees it: the view's count plus rows added, minus rows removed.
    fn merged_count<T>(
        base: u64,
        writes: &BTreeMap<u64, Option<T>>,
        exists: &dyn Fn(u64) -> Result<bool, StoreError>,
    ) -> Result<u64, StoreError> {
        let mut n = base;
        for (id, v) in writes {
            match (v.is_some(), exists(*id)?) {
                (true, false) => n += 1,
                (false, true) => n = n.saturating_sub(1),
                _ => {}
            }
        }
        Ok(n)
    }

    pub(super) fn proposal_count(&self) -> Result<u64, StoreError> {
        Self::merged_count(self.view.proposal_count()?, &self.w.proposals, &|id| self.view.has_proposal(id))
    }

    pub(super) fn pending_count(&self) -> Result<u64, StoreError> {
        Self::merged_count(self.view.pending_count()?, &self.w.pending, &|id| self.view.is_pending(id))
    }

    /// Proposal ids in order until `visit` returns false.
    pub(super) fn walk_proposals(
        &self,
        visit: &mut dyn FnMut(u64) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        walk_ids(&|from, n| self.view.proposal_ids(from, n), &self.w.proposals, visit)
    }

    /// Pending proposal ids in order until `visit` returns false.
    pub(super) fn walk_pending(
        &self,
        visit: &mut dyn FnMut(u64) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        walk_ids(&|from, n| self.view.pending_ids(from, n), &self.w.pending, visit)
    }

    // ---- writes ---------------------------------------------------------------------------------------

    pub(super) fn new_record(&self, id: &ObjectId) -> ObjectRecord {
        ObjectRecord {
            id: id.clone(),
            sm: ObjectState::new(id.clone(), self.now),
            labels: BTreeMap::new(),
            attributes: BTreeMap::new(),
            evidence: Evidence::new(),
            revision: 0,
            created_ms: self.now,
            history_next: 0,
            history_compacted: 0,
            findings_seen: 0,
        }
    }

    /// Append to an object's history, dropping the oldest beyond [`HISTORY_LIMIT`].
    pub(super) fn push_history(&mut self, rec: &mut ObjectRecord, entry: HistoryEntry) {
        let id = rec.id.as_str().to_owned();
        self.w.history.insert((id.clone(), rec.history_next), Some(entry));
        rec.history_next += 1;
        while rec.history_len() > HISTORY_LIMIT {
            self.w.history.insert((id.clone(), rec.history_compacted), None);
            rec.history_compacted += 1;
        }
    }

    /// Give `rec` a new revision and log a change event for it.
    pub(super) fn change(
        &mut self,
        rec: &mut ObjectRecord,
        what: &str,
        from_state: &str,
        detail: String,
    ) -> u64 {
        let revision = self.next_revision();
        rec.revision = revision;
        self.events.push(ChangeEvent {
            revision,
            time_ms: self.now,
            object: rec.id.as_str().to_owned(),
            what: what.to_string(),
            state: sm_seam::state_name(&rec.sm).to_string(),
            grade: sm_seam::grade_name(&rec.sm).to_string(),
            from_state: from_state.to_string(),
            detail,
        });
        revision
    }

    /// A change that is about no single object (levels, alerts, config): an event with an empty object.
    pub(super) fn global_event(&mut self, what: &str, detail: String) {
        let revision = self.next_revision();
        self.events.push(ChangeEvent {
            revision,
            time_ms: self.now,
            object: String::new(),
            what: what.into(),
            state: String::new(),
            grade: String::new(),
            from_state: String::new(),
            detail,
        });
    }

    /// Set the cluster's heartbeat secret once (64 hex digits); a second one is refused (Conflict), so of two
    /// leaders that both proposed one the first applied wins on every member. Audited without its value.
    fn set_beat_secret(&mut self, secret: &str) -> Result<CmdResult, StoreError> {
        let parsed: Option<[u8; 32]> = hex::decode(secret).ok().and_then(|b| b.try_into().ok());
        let Some(parsed) = parsed else {
            self.tally.rejected += 1;
            return Ok(
                self.refuse(proto::error::Code::InvalidArgument, "a beat secret is 64 hex digits".into())
            );
        };
        let current = match self.w.beat_secret {
            Some(s) => Some(s),
            None => self.view.beat_secret()?,
        };
        if current.is_some() {
            self.tally.rejected += 1;
            return Ok(
                self.refuse(proto::error::Code::Conflict, "the heartbeat secret is already set".into())
            );
        }
        self.w.beat_secret = Some(parsed);
        self.audit_row("audit", "cluster", "", "leader", "heartbeat datagram secret set")?;
        Ok(CmdResult { applied: 1, updated: 1, ..self.result() })
    }

    /// A row of the bounded alert/audit log (alerts are change events too).
    pub(super) fn audit_row(
        &mut self,
        kind: &str,
        scope: &str,
        object: &str,
        by: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let id = self.meta(META_AUDIT_NEXT)? + 1;
        self.w.meta.insert(META_AUDIT_NEXT, id);
        let row = AuditEntry {
            id,
            time_ms: self.now,
            kind: kind.into(),
            scope: scope.into(),
            object: object.into(),
            by: bounded_text(by),
            message: bounded_text(message),
        };
        let message = row.message.clone();
        self.w.audit.insert(id, Some(row));
        if id > safety::MAX_AUDIT_ROWS {
            self.w.audit.insert(id - safety::MAX_AUDIT_ROWS, None);
        }
        if kind == "alert" {
            self.global_event("alert", message);
        }
        Ok(())
    }
}

/// Operator- and rule-made text, bounded like other replicated text.
pub(super) fn bounded_text(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The first line of `s`, at most 200 bytes (evidence in history details).
pub(super) fn first_line(s: &str) -> &str {
    const MAX: usize = 200;
    let line = s.lines().next().unwrap_or("");
    if line.len() <= MAX {
        return line;
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// A history entry that is not a transition.
pub(super) fn history(
    what: &str,
    revision: u64,
    time_ms: u64,
    cause: String,
    detail: String,
) -> HistoryEntry {
    HistoryEntry {
        revision,
        time_ms,
        what: what.into(),
        from_state: String::new(),
        to_state: String::new(),
        cause,
        detail,
    }
}

/// What [`Decider::take`] keeps of the version of an object it moved out: the parts the accounting of its
/// write reads (its id, state machine and labels; the rest at their defaults), and whether it came from
/// this entry's writes.
pub(super) struct Taken {
    prev: ObjectRecord,
    written: bool,
}

/// `rec`'s id, state machine and labels, the rest at their defaults: all that [`Decider::save`]'s
/// accounting (`account`, `count_record`, the core-changed hint) reads of the version a write replaces.
fn core_of(rec: &ObjectRecord) -> ObjectRecord {
    ObjectRecord {
        id: rec.id.clone(),
        sm: rec.sm.clone(),
        labels: rec.labels.clone(),
        attributes: Default::default(),
        evidence: Default::default(),
        revision: rec.revision,
        created_ms: rec.created_ms,
        history_next: rec.history_next,
        history_compacted: rec.history_compacted,
        findings_seen: rec.findings_seen,
    }
}
