//! The replicated state machine: applies committed Raft entries (an [`Envelope`] of commands stamped with the
//! leader's `now_ms`) to the redb tables of `store.rs`, deterministically: no clock, no randomness, no HashMap
//! order, so every node computes byte-identical state. Each change gets the next global revision and an
//! event in the change log (one row per entry) for watchers; watchers are woken in `after_commit`, once the
//! transaction that holds the change is durable.
//!
//! Bad entries never stop the node: an undecodable or future-version entry is logged and applied as a no-op;
//! a command the state machine refuses is answered with an error and changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use state_machines::{Finding, ObjectId};
use tokio::sync::watch;

use crate::machine::{self, Admission, Input, ObjectState, Outcome, Policy};
use crate::model::*;
use crate::store::{
    self, AGENTS, CHANGES, HISTORY, MEMBERS, META, META_CHANGELOG_FIRST, META_REVISION, OBJECTS, StoreError,
};

/// Counters the node exports on /metrics. Not replicated: each node counts what it applied.
#[derive(Debug, Default)]
pub struct FsmStats {
    pub entries: AtomicU64,
    pub findings: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub undecodable: AtomicU64,
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
}

struct Tables<'t> {
    meta: Table<'t, &'static str, u64>,
    objects: Table<'t, &'static str, &'static [u8]>,
    history: Table<'t, (&'static str, u64), &'static [u8]>,
    changes: Table<'t, u64, &'static [u8]>,
    agents: Table<'t, &'static str, &'static [u8]>,
    members: Table<'t, u64, &'static [u8]>,
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
            },
            rx,
        )
    }

    /// Same as [`MasterFsm::new`] with a smaller change-log window, for tests of compaction.
    pub fn with_changelog_retain(mut self, retain: u64) -> Self {
        self.changelog_retain = retain.max(1);
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
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        let env = match Envelope::decode(cmd) {
            Ok(env) => env,
            Err(e) => {
                // Proposals are validated before they are proposed, so this is a bug or a newer node's entry;
                // either way every node skips it alike.
                self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(index, error = %e, "skipping undecodable committed entry");
                return Ok(store::encode(&ApplyResult::default()));
            }
        };
        let mut tables = Tables::open(txn)?;
        let revision = tables.meta.get(META_REVISION)?.map(|g| g.value()).unwrap_or(0);
        let mut a = Apply {
            t: &mut tables,
            policy: &self.policy,
            now: env.now_ms,
            revision,
            events: Vec::new(),
            stats: &self.stats,
            dirty: BTreeMap::new(),
        };
        let mut results = Vec::with_capacity(env.cmds.len());
        for cmd in env.cmds {
            results.push(a.command(cmd)?);
        }
        a.flush()?;
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
        let rev = store::Reader::new(db)?.revision()?;
        self.notify.send_if_modified(|cur| {
            let newer = rev > *cur;
            if newer {
                *cur = rev;
            }
            newer
        });
        Ok(())
    }

    /// Everything the state machine holds, as bytes (see [`snapshot_codec`]). The change log is not included:
    /// a node restored from a snapshot serves watches from the snapshot's revision on (older ones: COMPACTED).
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
        }
    }

    fn load(&self, id: &str) -> Result<Option<ObjectRecord>, StoreError> {
        if let Some(r) = self.dirty.get(id) {
            return Ok(Some(r.clone()));
        }
        self.t.objects.get(id)?.map(|g| store::decode("fsm_objects", g.value())).transpose()
    }

    fn save(&mut self, rec: &ObjectRecord) -> Result<(), StoreError> {
        self.dirty.insert(rec.id.to_string(), rec.clone());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        for (id, rec) in std::mem::take(&mut self.dirty) {
            self.t.objects.insert(id.as_str(), store::encode(&rec).as_slice())?;
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

    /// Store a successful step: admission for capacity removal, then state, history and the change event.
    /// Returns whether the state changed.
    fn store_outcome(
        &mut self,
        rec: &mut ObjectRecord,
        out: Outcome,
        what: &str,
        detail: String,
        always_history: bool,
    ) -> Result<bool, StoreError> {
        if out.removes_capacity()
            && let Admission::Hold { reason } = machine::admit_capacity_removal(&rec.sm, &out, self.now)
        {
            // Manual drive: the object stays; the would-be transition is recorded for operators.
            let to = out.transition.as_ref().map(|t| t.to.as_str()).unwrap_or("");
            let entry = HistoryEntry {
                revision: 0,
                time_ms: self.now,
                what: "held".into(),
                from_state: machine::state_name(&rec.sm).into(),
                to_state: to.into(),
                cause: what.into(),
                detail: reason.clone(),
            };
            let rev = self.change(rec, "held", "", reason);
            self.push_history(rec, HistoryEntry { revision: rev, ..entry })?;
            return Ok(false);
        }
        let from = machine::state_name(&rec.sm);
        let transition = out.transition.clone();
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
            let host = findings.first().map(|f| f.object.host().to_string()).unwrap_or_default();
            let rec = match prev {
                Some(p) => AgentRecord { last_seq: seq, ..p },
                None => AgentRecord { host, last_seq: seq, alive: false, since_ms: self.now },
            };
            self.t.agents.insert(agent, store::encode(&rec).as_slice())?;
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
        let mut rec = match self.load(&id)? {
            Some(r) => r,
            None => self.new_record(&f.object),
        };
        let input = Input::Finding(f);
        let out = match machine::step(&rec.sm, &input, self.now, self.policy) {
            Ok(out) => out,
            Err(e) => return Ok(Err((machine::step_error_code(&e), e.to_string()))),
        };
        let Input::Finding(f) = input else { unreachable!("constructed above") };
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
        let transitioned = self.store_outcome(&mut rec, out, "finding", detail, record)?;
        self.save(&rec)?;
        Ok(Ok(transitioned))
    }

    fn register(
        &mut self,
        agent: &str,
        host: &str,
        objects: Vec<Registration>,
    ) -> Result<CmdResult, StoreError> {
        if !agent.is_empty() && self.t.agents.get(agent)?.is_none() {
            let rec = AgentRecord { host: host.to_string(), last_seq: 0, alive: false, since_ms: self.now };
            self.t.agents.insert(agent, store::encode(&rec).as_slice())?;
        }
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
                        transitioned = self.store_outcome(&mut rec, out, "replacement", detail, true)?;
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
        let transitioned = self.store_outcome(&mut rec, out, input.name(), detail, true)?;
        self.save(&rec)?;
        Ok(CmdResult {
            applied: 1,
            transitioned,
            state: machine::state_name(&rec.sm).into(),
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
                res.transitioned |= self.store_outcome(&mut rec, out, "tick", String::new(), true)?;
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
            last_seq: prev.map(|p| p.last_seq).unwrap_or(0),
            alive,
            since_ms: self.now,
        };
        self.t.agents.insert(agent, store::encode(&rec).as_slice())?;
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
/// 0x00, u64 BE seq), 4 agents, 5 members (u64 BE). Unknown tags and truncation are errors, not panics.
pub mod snapshot_codec {
    use super::*;

    const MAGIC: &[u8] = b"huatuo-fsm-snapshot-v1\n";
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
                // The change log is not in the snapshot; its bookkeeping is rebuilt on restore.
                if k.value() != META_CHANGELOG_FIRST {
                    put(&mut out, 1, k.value().as_bytes(), &v.value().to_be_bytes());
                }
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
        let mut rest = data.strip_prefix(MAGIC).ok_or_else(|| corrupt("bad magic"))?;
        let mut records = Vec::new();
        while !rest.is_empty() {
            let tag = take(&mut rest, 1)?[0];
            let key = field(&mut rest)?;
            let value = field(&mut rest)?;
            if !(1..=5).contains(&tag) {
                return Err(corrupt("unknown record tag"));
            }
            records.push((tag, key, value));
        }
        for def in [OBJECTS, AGENTS] {
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
                _ => {
                    t.members.insert(u64_be(key)?, value)?;
                }
            }
        }
        let revision = t.meta.get(META_REVISION)?.map(|g| g.value()).unwrap_or(0);
        t.meta.insert(META_CHANGELOG_FIRST, revision + 1)?;
        Ok(revision)
    }
}

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
