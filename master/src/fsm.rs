//! The replicated state machine: applies committed Raft entries (an [`Envelope`] of commands stamped with the
//! leader's `now_ms`) to the redb tables of `store.rs`, deterministically: no clock, no randomness, no HashMap
//! order, so every node computes byte-identical state. Each change gets the next global revision and an
//! event in the change log (one row per entry) for watchers; watchers are woken in `after_commit`, once the
//! transaction that holds the change is durable.
//!
//! Command versions: an entry this binary is too old to know ([`DecodeError::TooNew`]) stops apply on this node
//! with a clear error (the raft layer treats it as fatal and never advances the applied index past it), so
//! members of different versions never diverge; it is counted in [`FsmStats::incompatible`]. Garbage that no
//! binary could decode is logged and applied as a no-op on every node alike. A command the state machine
//! refuses is answered with an error and changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use state_machines::{Finding, ObjectId};
use tokio::sync::watch;

use crate::machine::{self, Input, ObjectState, Outcome, Policy};
use crate::model::*;
use crate::safety::{
    self, AuditEntry, Level, Proposal, ProposalFilter, ProposalStatus, SafetyConfig, ScopeRecord,
};
use crate::store::{
    self, AGENTS, AUDIT, CHANGES, HISTORY, MEMBERS, META, META_AUDIT_NEXT, META_CHANGELOG_FIRST,
    META_MIN_COMMAND_VERSION, META_PROPOSAL_NEXT, META_REVISION, OBJECTS, PENDING, PROPOSAL_OBJ, PROPOSALS,
    SCOPES, SETTING_SAFETY, SETTINGS, StoreError,
};
use state_machines::{Cause, Effect, Kind, Transition};

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
}

pub struct MasterFsm {
    policy: Policy,
    /// Revision reached by the entries applied in the transaction being built; published in `after_commit`.
    pending: Option<u64>,
    notify: watch::Sender<u64>,
    stats: Arc<FsmStats>,
    /// Revisions kept in the change log: [`CHANGELOG_RETAIN`]; smaller only in tests. Must be equal on every
    /// node (compaction happens during apply).
    changelog_retain: u64,
    /// The newest command version this fsm decodes: [`COMMAND_VERSION`]; lower only in tests that play an
    /// older binary.
    knows: u32,
}

impl FsmStats {
    /// The replicated `min_command_version` as this node last applied it.
    pub fn min_command_version(&self) -> u32 {
        u32::try_from(self.min_command_version.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }
}

struct Tables<'t> {
    meta: Table<'t, &'static str, u64>,
    objects: Table<'t, &'static str, &'static [u8]>,
    history: Table<'t, (&'static str, u64), &'static [u8]>,
    changes: Table<'t, u64, &'static [u8]>,
    agents: Table<'t, &'static str, &'static [u8]>,
    members: Table<'t, u64, &'static [u8]>,
    scopes: Table<'t, &'static str, &'static [u8]>,
    proposals: Table<'t, u64, &'static [u8]>,
    proposal_obj: Table<'t, &'static str, &'static [u8]>,
    pending: Table<'t, u64, &'static [u8]>,
    settings: Table<'t, &'static str, &'static [u8]>,
    audit: Table<'t, u64, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
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
        })
    }
}

/// Applies one envelope; holds the revision counter and the events made so far.
struct Apply<'a, 't> {
    t: &'a mut Tables<'t>,
    policy: &'a Policy,
    now: u64,
    revision: u64,
    events: Vec<Event>,
    stats: &'a FsmStats,
    /// Records changed by this entry, written once at the end: an agent batch touches each of its host's
    /// objects many times (several checkers), so this saves most decode/encode/write work.
    dirty: BTreeMap<String, ObjectRecord>,
    /// The stored version of each record loaded by this entry (None: did not exist), to keep the per-scope
    /// population counters exact when a record changes.
    originals: BTreeMap<String, Option<ObjectRecord>>,
    /// The replicated safety config, and the scope records read or changed by this entry.
    cfg: SafetyConfig,
    scopes: BTreeMap<String, ScopeRecord>,
    /// Set when the safety net held the current command's transition: (proposal id or 0, why).
    held: Option<(u64, String)>,
    /// The replicated `min_command_version`: commands of a newer version are refused (alike on every node).
    min_version: u64,
}

/// How a transition reached admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Automatic (findings, acks, ticks, results): levels, quotas and spikes apply.
    Auto,
    /// An operator's own command: allowed in manual drive, refused in blind.
    Operator,
    /// An operator approved proposal N.
    Approved(u64),
}

/// What admission decided about a transition.
enum Decision {
    Admit,
    /// Not applied. `new`: first time (history and an event); repeats only bump the proposal.
    Hold {
        proposal: u64,
        reason: String,
        new: bool,
    },
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
                changelog_retain: CHANGELOG_RETAIN,
                knows: COMMAND_VERSION,
            },
            rx,
        )
    }

    /// Same as [`MasterFsm::new`] with a smaller change-log window, for tests of compaction.
    pub fn with_changelog_retain(mut self, retain: u64) -> Self {
        self.changelog_retain = retain.max(1);
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
        let mut tables = Tables::open(txn)?;
        let revision = tables.meta.get(META_REVISION)?.map(|g| g.value()).unwrap_or(0);
        let min_version = tables
            .meta
            .get(META_MIN_COMMAND_VERSION)?
            .map_or(u64::from(DEFAULT_MIN_COMMAND_VERSION), |g| g.value());
        let cfg = match tables.settings.get(SETTING_SAFETY)? {
            Some(g) => store::decode("fsm_settings", g.value())?,
            None => SafetyConfig::default(),
        };
        let mut a = Apply {
            t: &mut tables,
            policy: &self.policy,
            now: env.now_ms,
            revision,
            events: Vec::new(),
            stats: &self.stats,
            dirty: BTreeMap::new(),
            originals: BTreeMap::new(),
            cfg,
            scopes: BTreeMap::new(),
            held: None,
            min_version,
        };
        let mut results = Vec::with_capacity(env.cmds.len());
        for cmd in env.cmds {
            results.push(a.command(cmd)?);
        }
        a.flush()?;
        self.stats.min_command_version.store(a.min_version, Ordering::Relaxed);
        let (revision, events) = (a.revision, std::mem::take(&mut a.events));
        if let Some(first) = events.first().map(|e| e.revision) {
            tables.changes.insert(first, store::make_change_row(revision, &events).as_slice())?;
            tables.meta.insert(META_REVISION, revision)?;
            compact_changes(&mut tables, revision, self.changelog_retain)?;
            self.pending = Some(revision);
        }
        Ok(store::encode(&ApplyResult { results }))
    }

    /// Call after the transaction holding applied entries is durable: wakes watchers.
    pub fn committed(&mut self) {
        if let Some(rev) = self.pending.take() {
            self.notify.send_replace(rev);
        }
    }

    /// Publish the revision found in the store at start-up (before any entry is applied).
    pub fn publish_revision(&self, db: &redb::Database) -> Result<(), StoreError> {
        let reader = store::Reader::new(db)?;
        self.stats.min_command_version.store(u64::from(reader.min_command_version()?), Ordering::Relaxed);
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

    /// Everything the state machine holds, as bytes (see [`snapshot_codec`]), the change log included (it is
    /// bounded by the retention window): a member caught up by a snapshot serves the same watch history as
    /// the member that made it.
    pub fn snapshot_data(&self, txn: &ReadTransaction) -> Result<Vec<u8>, StoreError> {
        snapshot_codec::write(txn)
    }

    /// Replace the state machine's tables with a snapshot's contents.
    pub fn restore_data(&mut self, txn: &WriteTransaction, data: &[u8]) -> Result<(), StoreError> {
        let revision = snapshot_codec::restore(txn, data)?;
        self.pending = Some(revision);
        Ok(())
    }
}

/// Drop change-log rows that hold only revisions older than the retained window.
fn compact_changes(t: &mut Tables<'_>, revision: u64, retain: u64) -> Result<(), StoreError> {
    if revision <= retain {
        return Ok(());
    }
    let keep_from = revision - retain + 1;
    // Bounded by the rows an entry can make obsolete; each entry adds one row, so this removes at most a few.
    loop {
        let Some((k, v)) = t.changes.first()? else { break };
        let (first, (last, _)) = (k.value(), store::split_change_row(v.value())?);
        drop((k, v));
        if last >= keep_from {
            t.meta.insert(META_CHANGELOG_FIRST, first)?;
            break;
        }
        t.changes.remove(first)?;
        t.meta.insert(META_CHANGELOG_FIRST, last + 1)?;
    }
    Ok(())
}

impl Apply<'_, '_> {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn result(&self) -> CmdResult {
        CmdResult { revision: self.revision, ..CmdResult::default() }
    }

    fn command(&mut self, cmd: Command) -> Result<CmdResult, StoreError> {
        if !matches!(cmd, Command::SetMinCommandVersion { .. }) && u64::from(cmd.version()) > self.min_version
        {
            // The leader's gate refuses these before Raft; one that slipped through (a gate that raced a
            // lowering) is refused here the same way on every node.
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            let min = u32::try_from(self.min_version).unwrap_or(u32::MAX);
            let e = VersionError::NotEnabled { kind: cmd.kind(), needs: cmd.version(), min };
            return Ok(CmdResult {
                error: Some((proto::error::Code::Conflict, e.to_string())),
                ..self.result()
            });
        }
        match cmd {
            Command::Ingest { agent, seq, findings } => self.ingest(&agent, seq, findings),
            Command::Register { agent, host, objects } => self.register(&agent, &host, objects),
            Command::Object { object, input } => self.object_input(&object, input),
            Command::AgentLiveness { agent, host, alive } => self.liveness(&agent, &host, alive),
            Command::Announce { id, grpc, http } => {
                self.t.members.insert(id, store::encode(&MemberRecord { grpc, http }).as_slice())?;
                Ok(self.result())
            }
            Command::Tick { objects } => self.tick(objects),
            Command::SetLevel { scope, level, by, reason } => self.set_level(&scope, level, &by, &reason),
            Command::Release { scope, by, reason } => self.set_level(&scope, Level::Auto, &by, &reason),
            Command::Decide { ids, filter, approve, by, reason } => {
                self.decide(ids, &filter, approve, &by, &reason)
            }
            Command::SetSafety { config, by, reason } => self.set_safety(config, &by, &reason),
            Command::Alert { object, message } => self.alert_object(&object, &message),
            Command::SetMinCommandVersion { version, by, reason } => {
                self.set_min_command_version(version, &by, &reason)
            }
        }
    }

    fn load(&mut self, id: &str) -> Result<Option<ObjectRecord>, StoreError> {
        if let Some(r) = self.dirty.get(id) {
            return Ok(Some(r.clone()));
        }
        if let Some(r) = self.originals.get(id) {
            return Ok(r.clone());
        }
        let rec: Option<ObjectRecord> =
            self.t.objects.get(id)?.map(|g| store::decode("fsm_objects", g.value())).transpose()?;
        self.originals.insert(id.to_string(), rec.clone());
        Ok(rec)
    }

    fn save(&mut self, rec: &ObjectRecord) -> Result<(), StoreError> {
        let id = rec.id.to_string();
        let prev = match self.dirty.get(&id) {
            Some(r) => Some(r.clone()),
            None => self.load(&id)?,
        };
        self.account(prev.as_ref(), Some(rec))?;
        self.dirty.insert(id, rec.clone());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        for (id, rec) in std::mem::take(&mut self.dirty) {
            self.t.objects.insert(id.as_str(), store::encode(&rec).as_slice())?;
        }
        self.originals.clear();
        for (name, rec) in std::mem::take(&mut self.scopes) {
            if rec.is_empty() {
                self.t.scopes.remove(name.as_str())?;
            } else {
                self.t.scopes.insert(name.as_str(), store::encode(&rec).as_slice())?;
            }
        }
        Ok(())
    }

    fn new_record(&self, id: &ObjectId) -> ObjectRecord {
        ObjectRecord {
            id: id.clone(),
            sm: ObjectState::new(id.clone(), self.now),
            labels: BTreeMap::new(),
            attributes: BTreeMap::new(),
            evidence: BTreeMap::new(),
            revision: 0,
            created_ms: self.now,
            history_next: 0,
            history_compacted: 0,
            findings_seen: 0,
        }
    }

    fn push_history(&mut self, rec: &mut ObjectRecord, entry: HistoryEntry) -> Result<(), StoreError> {
        let id = rec.id.to_string();
        self.t.history.insert((id.as_str(), rec.history_next), store::encode(&entry).as_slice())?;
        rec.history_next += 1;
        while rec.history_len() > HISTORY_LIMIT {
            self.t.history.remove((id.as_str(), rec.history_compacted))?;
            rec.history_compacted += 1;
        }
        Ok(())
    }

    /// Give `rec` a new revision and log a change event for it.
    fn change(&mut self, rec: &mut ObjectRecord, what: &str, from_state: &str, detail: String) -> u64 {
        let revision = self.next_revision();
        rec.revision = revision;
        self.events.push(Event {
            revision,
            time_ms: self.now,
            object: rec.id.to_string(),
            what: what.to_string(),
            state: machine::state_name(&rec.sm).to_string(),
            grade: machine::grade_name(&rec.sm).to_string(),
            from_state: from_state.to_string(),
            detail,
        });
        revision
    }

    /// Store a successful step: admission by the safety net (levels, quotas, spikes), then state, history and
    /// the change event. Returns whether the state changed. A held transition changes nothing on the object
    /// but is recorded (history, event, proposal) and noted in `self.held`.
    #[allow(clippy::too_many_arguments)]
    fn store_outcome(
        &mut self,
        rec: &mut ObjectRecord,
        out: Outcome,
        input: &Input,
        what: &str,
        detail: String,
        always_history: bool,
        mode: Mode,
    ) -> Result<bool, StoreError> {
        if let Some(t) = out.transition.as_ref()
            && let Decision::Hold { proposal, reason, new } = self.admit(rec, &out, t, input, mode)?
        {
            if new {
                let entry = HistoryEntry {
                    revision: 0,
                    time_ms: self.now,
                    what: if proposal > 0 { "held" } else { "blocked" }.into(),
                    from_state: t.from.as_str().into(),
                    to_state: t.to.as_str().into(),
                    cause: machine::cause_text(&t.cause),
                    detail: reason.clone(),
                };
                let what = entry.what.clone();
                let rev = self.change(rec, &what, "", reason.clone());
                self.push_history(rec, HistoryEntry { revision: rev, ..entry })?;
            }
            self.held = Some((proposal, reason));
            self.stats.held.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        for e in &out.effects {
            if let Effect::AlertOperator { object, message } = e {
                self.audit_row("alert", "", &object.to_string(), "", message)?;
            }
        }
        let from = machine::state_name(&rec.sm);
        let transition = out.transition.clone();
        if let Some(t) = &transition {
            let mut m = self.stats.transitions.lock().unwrap_or_else(|p| p.into_inner());
            *m.entry((rec.id.kind().as_str(), t.to.as_str())).or_default() += 1;
        }
        let effects = machine::effects_text(&out.effects);
        rec.sm = out.next;
        match transition {
            Some(t) => {
                let rev = self.change(rec, "transition", from, detail.clone());
                let mut detail = detail;
                if !effects.is_empty() {
                    detail = format!("{detail}; effects: {effects}");
                }
                self.push_history(
                    rec,
                    HistoryEntry {
                        revision: rev,
                        time_ms: self.now,
                        what: "transition".into(),
                        from_state: t.from.as_str().into(),
                        to_state: t.to.as_str().into(),
                        cause: machine::cause_text(&t.cause),
                        detail,
                    },
                )?;
                Ok(true)
            }
            None => {
                let rev = self.change(rec, what, "", detail.clone());
                if always_history || !effects.is_empty() {
                    let detail =
                        if effects.is_empty() { detail } else { format!("{detail}; effects: {effects}") };
                    self.push_history(
                        rec,
                        HistoryEntry {
                            revision: rev,
                            time_ms: self.now,
                            what: what.into(),
                            from_state: String::new(),
                            to_state: String::new(),
                            cause: what.into(),
                            detail,
                        },
                    )?;
                }
                Ok(false)
            }
        }
    }

    fn ingest(&mut self, agent: &str, seq: u64, findings: Vec<Finding>) -> Result<CmdResult, StoreError> {
        if !agent.is_empty() {
            let prev: Option<AgentRecord> =
                self.t.agents.get(agent)?.map(|g| store::decode("fsm_agents", g.value())).transpose()?;
            if let Some(p) = &prev
                && seq <= p.last_seq
            {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return Ok(CmdResult { duplicate: true, ..self.result() });
            }
            let last = prev.as_ref().map_or(0, |p| p.last_seq);
            if seq - last > MAX_SEQ_STEP {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let e = format!(
                    "agent {agent}: batch sequence {seq} jumps more than {MAX_SEQ_STEP} past the last applied \
                     {last}; refused (sequences move forward by a bounded step)"
                );
                return Ok(CmdResult {
                    error: Some((proto::error::Code::InvalidArgument, e)),
                    ..self.result()
                });
            }
            let host = findings.first().map(|f| f.object.host().to_string()).unwrap_or_default();
            let rec = match &prev {
                Some(p) => AgentRecord { last_seq: seq, ..p.clone() },
                None => {
                    AgentRecord { host, last_seq: seq, alive: false, since_ms: self.now, scopes: Vec::new() }
                }
            };
            self.put_agent(agent, prev.as_ref(), rec, false)?;
        }
        let mut res = self.result();
        for f in findings {
            match self.finding(f)? {
                Ok(transitioned) => {
                    res.applied += 1;
                    res.transitioned |= transitioned;
                }
                Err(e) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    // Keep the first refusal: the batch's other findings still apply.
                    res.error.get_or_insert(e);
                }
            }
        }
        self.stats.findings.fetch_add(u64::from(res.applied), Ordering::Relaxed);
        res.revision = self.revision;
        Ok(res)
    }

    /// Apply one finding; an unknown object is created (findings are how objects first appear for external
    /// detectors). Err is a refusal by the state machine, which changes nothing.
    fn finding(&mut self, f: Finding) -> Result<Result<bool, (proto::error::Code, String)>, StoreError> {
        let id = f.object.to_string();
        if f.time_ms > self.now.saturating_add(MAX_FINDING_FUTURE_MS) {
            let e = format!(
                "finding about {id}: time_ms {} is more than {} ahead of the master's clock ({}); refused",
                f.time_ms,
                safety::human_ms(MAX_FINDING_FUTURE_MS),
                self.now
            );
            return Ok(Err((proto::error::Code::InvalidArgument, e)));
        }
        let mut rec = match self.load(&id)? {
            Some(r) => r,
            None => self.new_record(&f.object),
        };
        let input = Input::Finding(f);
        let out = match machine::step(&rec.sm, &input, self.now, self.policy) {
            Ok(out) => out,
            Err(e) => return Ok(Err((machine::step_error_code(&e), e.to_string()))),
        };
        let Input::Finding(f) = &input else { unreachable!("constructed above") };
        let f = f.clone();
        let detail = format!("{} {} {}: {}", f.checker, f.rule, f.severity, first_line(&f.evidence));
        if !rec.evidence.contains_key(&f.checker) && rec.evidence.len() >= MAX_EVIDENCE_CHECKERS {
            // Evict the stalest checker's evidence (ties by name: deterministic).
            if let Some(oldest) =
                rec.evidence.iter().min_by_key(|(k, v)| (v.time_ms, (*k).clone())).map(|(k, _)| k.clone())
            {
                rec.evidence.remove(&oldest);
            }
        }
        // Fault findings go into history even without a transition (operators ask "what did the checkers
        // see?"); healthy repeats only refresh the evidence, so they cannot push transitions out of history.
        let record = f.severity.is_fault();
        rec.evidence.insert(f.checker.clone(), f);
        rec.findings_seen += 1;
        let transitioned =
            self.store_outcome(&mut rec, out, &input, "finding", detail, record, Mode::Auto)?;
        self.save(&rec)?;
        Ok(Ok(transitioned))
    }

    fn register(
        &mut self,
        agent: &str,
        host: &str,
        objects: Vec<Registration>,
    ) -> Result<CmdResult, StoreError> {
        let prev_agent: Option<AgentRecord> = if agent.is_empty() {
            None
        } else {
            self.t.agents.get(agent)?.map(|g| store::decode("fsm_agents", g.value())).transpose()?
        };
        let mut res = self.result();
        for reg in objects {
            let id = reg.id.to_string();
            let (mut rec, created) = match self.load(&id)? {
                Some(r) => (r, false),
                None => (self.new_record(&reg.id), true),
            };
            let before = rec.clone();
            rec.attributes = reg.attributes.clone();
            if !reg.labels.is_empty() {
                rec.labels = reg.labels;
            }
            let mut transitioned = false;
            if let Some(serial) = reg.attributes.get("serial") {
                let attrs = reg.attributes.iter().filter(|(k, _)| *k != "serial");
                let input = Input::Replacement {
                    serial: serial.clone(),
                    attrs: attrs.map(|(k, v)| (k.clone(), v.clone())).collect(),
                };
                match machine::step(&rec.sm, &input, self.now, self.policy) {
                    Ok(out) if out.transition.is_some() => {
                        let detail = format!("registered by {agent} with serial {serial}");
                        transitioned = self.store_outcome(
                            &mut rec,
                            out,
                            &input,
                            "replacement",
                            detail,
                            true,
                            Mode::Auto,
                        )?;
                    }
                    Ok(out) => rec.sm = out.next,
                    Err(e) => {
                        res.error.get_or_insert((machine::step_error_code(&e), format!("{id}: {e}")));
                        continue;
                    }
                }
            }
            if created {
                res.created += 1;
            } else if rec != before {
                res.updated += 1;
            }
            if !transitioned && (created || rec != before) {
                let what = if created { "registered" } else { "inventory updated" };
                let detail = format!("{what} by {}", if agent.is_empty() { "operator" } else { agent });
                let rev = self.change(&mut rec, "register", "", detail.clone());
                let entry = HistoryEntry {
                    revision: rev,
                    time_ms: self.now,
                    what: "register".into(),
                    from_state: String::new(),
                    to_state: String::new(),
                    cause: "register".into(),
                    detail,
                };
                self.push_history(&mut rec, entry)?;
            }
            if created || rec != before {
                self.save(&rec)?;
            }
            res.transitioned |= transitioned;
            res.applied += 1;
        }
        if !agent.is_empty() {
            // After the objects: the agent's scopes come from its machine's labels.
            let rec = match &prev_agent {
                Some(p) => p.clone(),
                None => AgentRecord {
                    host: host.to_string(),
                    last_seq: 0,
                    alive: false,
                    since_ms: self.now,
                    scopes: Vec::new(),
                },
            };
            self.put_agent(agent, prev_agent.as_ref(), rec, false)?;
        }
        res.revision = self.revision;
        Ok(res)
    }

    fn object_input(&mut self, object: &ObjectId, input: Input) -> Result<CmdResult, StoreError> {
        let id = object.to_string();
        let Some(mut rec) = self.load(&id)? else {
            return Ok(CmdResult {
                error: Some((proto::error::Code::NotFound, format!("no object {id}"))),
                ..self.result()
            });
        };
        let out = match machine::step(&rec.sm, &input, self.now, self.policy) {
            Ok(out) => out,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Ok(CmdResult {
                    error: Some((machine::step_error_code(&e), e.to_string())),
                    state: machine::state_name(&rec.sm).into(),
                    ..self.result()
                });
            }
        };
        let detail = input_text(&input);
        let mode = if matches!(input, Input::Operator { .. }) { Mode::Operator } else { Mode::Auto };
        self.held = None;
        let transitioned = self.store_outcome(&mut rec, out, &input, input.name(), detail, true, mode)?;
        if let Some((0, why)) = &self.held {
            // Blind: nothing changes, and the caller must know its command was not applied.
            let why = why.clone();
            self.held = None;
            self.save(&rec)?;
            return Ok(CmdResult {
                error: Some((proto::error::Code::Conflict, format!("{id}: {why}"))),
                state: machine::state_name(&rec.sm).into(),
                ..self.result()
            });
        }
        self.save(&rec)?;
        let (proposal, held) = self.held.take().map_or((0, None), |(p, r)| (p, Some(r)));
        Ok(CmdResult {
            applied: 1,
            transitioned,
            state: machine::state_name(&rec.sm).into(),
            held,
            proposal,
            ..self.result()
        })
    }

    fn tick(&mut self, objects: Vec<ObjectId>) -> Result<CmdResult, StoreError> {
        let mut res = self.result();
        for object in objects.iter().take(MAX_TICK_OBJECTS) {
            let Some(mut rec) = self.load(&object.to_string())? else { continue };
            let Ok(out) = machine::step(&rec.sm, &Input::Tick, self.now, self.policy) else { continue };
            if !out.changed(&rec.sm) {
                continue;
            }
            if out.transition.is_none() && out.effects.is_empty() {
                // Only bookkeeping moved (e.g. escalation flags): store quietly, no event.
                rec.sm = out.next;
            } else {
                res.transitioned |=
                    self.store_outcome(&mut rec, out, &Input::Tick, "tick", String::new(), true, Mode::Auto)?;
            }
            self.save(&rec)?;
            res.applied += 1;
        }
        res.revision = self.revision;
        Ok(res)
    }

    fn liveness(&mut self, agent: &str, host: &str, alive: bool) -> Result<CmdResult, StoreError> {
        let prev: Option<AgentRecord> =
            self.t.agents.get(agent)?.map(|g| store::decode("fsm_agents", g.value())).transpose()?;
        if prev.as_ref().is_some_and(|p| p.alive == alive && p.host == host) {
            return Ok(self.result());
        }
        let rec = AgentRecord {
            host: host.to_string(),
            last_seq: prev.as_ref().map(|p| p.last_seq).unwrap_or(0),
            alive,
            since_ms: self.now,
            scopes: Vec::new(),
        };
        self.put_agent(agent, prev.as_ref(), rec, true)?;
        let revision = self.next_revision();
        let object = ObjectId::machine(host).map(|m| m.to_string()).unwrap_or_default();
        self.events.push(Event {
            revision,
            time_ms: self.now,
            object,
            what: "agent".into(),
            state: String::new(),
            grade: String::new(),
            from_state: String::new(),
            detail: format!("agent {agent} {}", if alive { "alive" } else { "silent" }),
        });
        Ok(CmdResult { applied: 1, ..self.result() })
    }
}

fn first_line(s: &str) -> &str {
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

fn input_text(input: &Input) -> String {
    match input {
        Input::Ack { role, ack } => format!("{role} acknowledged {ack}"),
        Input::Operator { operator, command } => match command {
            state_machines::OperatorCommand::Force { to, reason } => {
                format!("{operator} forced {to}: {reason}")
            }
            state_machines::OperatorCommand::Approve { reason } => format!("{operator} approved: {reason}"),
        },
        Input::Ticket { ticket, update } => format!("ticket {ticket} {}", update.as_str()),
        Input::ActionResult { action, success, detail } => {
            format!("{action} {}: {detail}", if *success { "succeeded" } else { "failed" })
        }
        Input::Replacement { serial, .. } => format!("serial {serial}"),
        Input::Finding(f) => format!("{} {} {}", f.checker, f.rule, f.severity),
        Input::Tick => "tick".into(),
    }
}

/// The snapshot format: a magic line, then records `tag u8, key_len u32, key, value_len u32, value`
/// (big-endian lengths). Keys: table 1 meta (utf-8 name, value u64 BE), 2 objects, 3 history (utf-8 id,
/// 0x00, u64 BE seq), 4 agents, 5 members (u64 BE), 6 scopes, 7 proposals (u64 BE), 8 proposal by object,
/// 9 pending proposals (u64 BE), 10 settings, 11 alert/audit log (u64 BE), 12 change-log rows (u64 BE first
/// revision; value as in [`CHANGES`]). Version 1 snapshots (older binaries) have no change log: restoring one
/// starts the change log at the snapshot's revision. Unknown tags and truncation are errors, not panics.
pub mod snapshot_codec {
    use super::*;

    const MAGIC: &[u8] = b"huatuo-fsm-snapshot-v2\n";
    /// Snapshots of binaries before the change log travelled in snapshots: still restorable.
    const MAGIC_V1: &[u8] = b"huatuo-fsm-snapshot-v1\n";
    /// Highest record tag of each format.
    const LAST_TAG_V1: u8 = 11;
    const LAST_TAG: u8 = 12;
    /// Largest single key or value accepted when decoding (an object record is a few KiB).
    const MAX_FIELD: usize = 16 << 20;

    fn put(out: &mut Vec<u8>, tag: u8, key: &[u8], value: &[u8]) {
        out.push(tag);
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
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

    pub fn write(txn: &ReadTransaction) -> Result<Vec<u8>, StoreError> {
        let mut out = MAGIC.to_vec();
        if let Some(t) = open_read!(txn, META) {
            for row in t.iter()? {
                let (k, v) = row?;
                put(&mut out, 1, k.value().as_bytes(), &v.value().to_be_bytes());
            }
        }
        if let Some(t) = open_read!(txn, OBJECTS) {
            for row in t.iter()? {
                let (k, v) = row?;
                put(&mut out, 2, k.value().as_bytes(), v.value());
            }
        }
        if let Some(t) = open_read!(txn, HISTORY) {
            for row in t.iter()? {
                let (k, v) = row?;
                let (id, seq) = k.value();
                let mut key = id.as_bytes().to_vec();
                key.push(0);
                key.extend_from_slice(&seq.to_be_bytes());
                put(&mut out, 3, &key, v.value());
            }
        }
        if let Some(t) = open_read!(txn, AGENTS) {
            for row in t.iter()? {
                let (k, v) = row?;
                put(&mut out, 4, k.value().as_bytes(), v.value());
            }
        }
        if let Some(t) = open_read!(txn, MEMBERS) {
            for row in t.iter()? {
                let (k, v) = row?;
                put(&mut out, 5, &k.value().to_be_bytes(), v.value());
            }
        }
        for (tag, def) in [(6, SCOPES), (8, PROPOSAL_OBJ), (10, SETTINGS)] {
            if let Some(t) = open_read!(txn, def) {
                for row in t.iter()? {
                    let (k, v) = row?;
                    put(&mut out, tag, k.value().as_bytes(), v.value());
                }
            }
        }
        for (tag, def) in [(7, PROPOSALS), (9, PENDING), (11, AUDIT), (12, CHANGES)] {
            if let Some(t) = open_read!(txn, def) {
                for row in t.iter()? {
                    let (k, v) = row?;
                    put(&mut out, tag, &k.value().to_be_bytes(), v.value());
                }
            }
        }
        Ok(out)
    }

    fn corrupt(message: &str) -> StoreError {
        StoreError::Corrupt { table: "snapshot", message: message.to_string() }
    }

    fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        if data.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Ok(head)
    }

    fn field<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        let len = u32::from_be_bytes(take(data, 4)?.try_into().map_err(|_| corrupt("length"))?) as usize;
        if len > MAX_FIELD {
            return Err(corrupt("field too large"));
        }
        take(data, len)
    }

    fn utf8(b: &[u8]) -> Result<&str, StoreError> {
        std::str::from_utf8(b).map_err(|_| corrupt("key is not utf-8"))
    }

    fn u64_be(b: &[u8]) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(b.try_into().map_err(|_| corrupt("bad u64"))?))
    }

    /// Replace the tables with the snapshot's records; returns the snapshot's revision. The whole snapshot
    /// is validated before anything is deleted, so a corrupt snapshot changes nothing.
    pub fn restore(txn: &WriteTransaction, data: &[u8]) -> Result<u64, StoreError> {
        let (mut rest, last_tag) = match data.strip_prefix(MAGIC) {
            Some(rest) => (rest, LAST_TAG),
            None => (data.strip_prefix(MAGIC_V1).ok_or_else(|| corrupt("bad magic"))?, LAST_TAG_V1),
        };
        let mut records = Vec::new();
        while !rest.is_empty() {
            let tag = take(&mut rest, 1)?[0];
            let key = field(&mut rest)?;
            let value = field(&mut rest)?;
            if tag == 12 {
                store::split_change_row(value)?;
            }
            if !(1..=last_tag).contains(&tag) {
                return Err(corrupt("unknown record tag"));
            }
            records.push((tag, key, value));
        }
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
        let mut t = Tables::open(txn)?;
        for (tag, key, value) in records {
            match tag {
                1 => {
                    t.meta.insert(utf8(key)?, u64_be(value)?)?;
                }
                2 => {
                    t.objects.insert(utf8(key)?, value)?;
                }
                3 => {
                    let split = key.len().checked_sub(9).ok_or_else(|| corrupt("history key"))?;
                    if key[split] != 0 {
                        return Err(corrupt("history key"));
                    }
                    t.history.insert((utf8(&key[..split])?, u64_be(&key[split + 1..])?), value)?;
                }
                4 => {
                    t.agents.insert(utf8(key)?, value)?;
                }
                5 => {
                    t.members.insert(u64_be(key)?, value)?;
                }
                6 => {
                    t.scopes.insert(utf8(key)?, value)?;
                }
                7 => {
                    t.proposals.insert(u64_be(key)?, value)?;
                }
                8 => {
                    t.proposal_obj.insert(utf8(key)?, value)?;
                }
                9 => {
                    t.pending.insert(u64_be(key)?, value)?;
                }
                10 => {
                    t.settings.insert(utf8(key)?, value)?;
                }
                11 => {
                    t.audit.insert(u64_be(key)?, value)?;
                }
                _ => {
                    t.changes.insert(u64_be(key)?, value)?;
                }
            }
        }
        let revision = t.meta.get(META_REVISION)?.map(|g| g.value()).unwrap_or(0);
        if last_tag == LAST_TAG_V1 {
            // No change log in the snapshot: watches resume from the snapshot's revision on.
            t.meta.insert(META_CHANGELOG_FIRST, revision + 1)?;
        }
        Ok(revision)
    }
}

mod safety_apply;
#[cfg(test)]
mod tests;

impl crate::raft::Fsm for MasterFsm {
    fn apply(
        &mut self,
        txn: &WriteTransaction,
        index: u64,
        cmd: &[u8],
    ) -> Result<Vec<u8>, crate::raft::FsmError> {
        self.apply_entry(txn, index, cmd).map_err(|e| crate::raft::FsmError::Storage(e.to_string()))
    }

    fn snapshot(&self, txn: &ReadTransaction) -> Result<Vec<u8>, crate::raft::FsmError> {
        self.snapshot_data(txn).map_err(|e| crate::raft::FsmError::Storage(e.to_string()))
    }

    fn restore(&mut self, txn: &WriteTransaction, data: &[u8]) -> Result<(), crate::raft::FsmError> {
        self.restore_data(txn, data).map_err(|e| crate::raft::FsmError::Storage(e.to_string()))
    }

    fn after_commit(&mut self) {
        self.committed();
    }
}
