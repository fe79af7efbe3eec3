//! Decisions about objects: findings (which create unknown objects), inventory registration (replacements),
//! acknowledgements/operator commands/ticket updates/action results, and the leader's ticks. Every successful
//! step of a state machine goes through [`Decider::store_outcome`]: admission by the safety net, then the new
//! state, history and the change event.

use state_machines::{Effect, Finding, ObjectId};

use super::decide::{Decider, first_line};
use crate::model::*;
use crate::sm_seam::{self, Input, Outcome};
use crate::store::StoreError;

/// How a transition reached admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Automatic (findings, acks, ticks, results): levels, quotas and spikes apply.
    Auto,
    /// An operator's own command: allowed in manual drive, refused in blind.
    Operator,
    /// An operator approved proposal N.
    Approved(u64),
}

/// What caused a step and how to record it.
pub(super) struct StepRecord<'a> {
    pub input: &'a Input,
    /// The history/event name when no transition happened (`finding`, `tick`, ...).
    pub what: &'a str,
    pub detail: String,
    /// Record history even without a transition or effects.
    pub always_history: bool,
    pub mode: Mode,
}

impl Decider<'_> {
    /// Store a successful step: admission by the safety net (levels, quotas, spikes), then state, history and
    /// the change event. Returns whether the state changed. A held transition changes nothing on the object
    /// but is recorded (history, event, proposal) and noted in `self.held`.
    pub(super) fn store_outcome(
        &mut self,
        rec: &mut ObjectRecord,
        out: Outcome,
        step: StepRecord<'_>,
    ) -> Result<bool, StoreError> {
        let StepRecord { input, what, detail, always_history, mode } = step;
        if let Some(t) = out.transition.as_ref()
            && let super::safety::Admission::Hold { proposal, reason, new } =
                self.admit(rec, &out, t, input, mode)?
        {
            if new {
                let entry = HistoryEntry {
                    revision: 0,
                    time_ms: self.now,
                    what: if proposal > 0 { "held" } else { "blocked" }.into(),
                    from_state: t.from.as_str().into(),
                    to_state: t.to.as_str().into(),
                    cause: sm_seam::cause_text(&t.cause),
                    detail: reason.clone(),
                };
                let what = entry.what.clone();
                let rev = self.change(rec, &what, "", reason.clone());
                self.push_history(rec, HistoryEntry { revision: rev, ..entry });
            }
            self.held = Some((proposal, reason));
            self.tally.held += 1;
            return Ok(false);
        }
        for e in &out.effects {
            if let Effect::AlertOperator { object, message } = e {
                self.audit_row("alert", "", &object.to_string(), "", message)?;
            }
        }
        let from = sm_seam::state_name(&rec.sm);
        let transition = out.transition.clone();
        if let Some(t) = &transition {
            *self.tally.transitions.entry((rec.id.kind().as_str(), t.to.as_str())).or_default() += 1;
            self.count_transition(rec.id.kind().as_str(), t.to.as_str())?;
        }
        let effects = sm_seam::effects_text(&out.effects);
        if let Input::Ticket { ticket, update } = input {
            self.archive.push(crate::archive::ArchiveEvent::Ticket(crate::archive::TicketRow {
                time_ms: self.now,
                object: rec.id.as_str().to_owned(),
                ticket: ticket.clone(),
                status: update.as_str().into(),
            }));
        }
        rec.sm = out.next;
        match transition {
            Some(t) => {
                let rev = self.change(rec, "transition", from, detail.clone());
                self.archive.push(crate::archive::ArchiveEvent::Transition(
                    crate::archive::TransitionRow::new(self.now, rec.id.as_str().to_owned(), &t, input, rev),
                ));
                let mut detail = detail;
                if !effects.is_empty() {
                    detail = format!("{detail}; effects: {effects}");
                }
                let entry = HistoryEntry {
                    revision: rev,
                    time_ms: self.now,
                    what: "transition".into(),
                    from_state: t.from.as_str().into(),
                    to_state: t.to.as_str().into(),
                    cause: sm_seam::cause_text(&t.cause),
                    detail,
                };
                self.push_history(rec, entry);
                Ok(true)
            }
            None => {
                let rev = self.change(rec, what, "", detail.clone());
                if always_history || !effects.is_empty() {
                    let detail =
                        if effects.is_empty() { detail } else { format!("{detail}; effects: {effects}") };
                    let entry = HistoryEntry {
                        revision: rev,
                        time_ms: self.now,
                        what: what.into(),
                        from_state: String::new(),
                        to_state: String::new(),
                        cause: what.into(),
                        detail,
                    };
                    self.push_history(rec, entry);
                }
                Ok(false)
            }
        }
    }

    /// Apply one finding; an unknown object is created (findings are how objects first appear for external
    /// detectors). Err is a refusal (by the state machine, or a time too far ahead or behind), which changes
    /// nothing.
    pub(super) fn finding(
        &mut self,
        f: Finding,
    ) -> Result<Result<bool, (proto::error::Code, String)>, StoreError> {
        let id = f.object.as_str().to_owned();
        if f.time_ms > self.now.saturating_add(MAX_FINDING_FUTURE_MS) {
            let e = format!(
                "finding about {id}: time_ms {} is more than {} ahead of the master's clock ({}); refused",
                f.time_ms,
                crate::safety::human_ms(MAX_FINDING_FUTURE_MS),
                self.now
            );
            return Ok(Err((proto::error::Code::InvalidArgument, e)));
        }
        if self.min_version >= FINDING_AGE_RULE_VERSION
            && f.time_ms < self.now.saturating_sub(MAX_FINDING_AGE_MS)
        {
            let e = format!(
                "finding about {id}: time_ms {} is more than {} behind the master's clock ({}); refused",
                f.time_ms,
                crate::safety::human_ms(MAX_FINDING_AGE_MS),
                self.now
            );
            return Ok(Err((proto::error::Code::InvalidArgument, e)));
        }
        self.canary_note(&f)?;
        if f.shadow {
            let archived = f.clone();
            let r = self.shadow_finding(f)?;
            if r.is_ok() {
                self.archive.push(crate::archive::ArchiveEvent::Finding(archived));
            }
            return Ok(r);
        }
        let (mut rec, taken) = match self.take(&id)? {
            Some((r, t)) => (r, Some(t)),
            None => (self.new_record(&f.object), None),
        };
        let input = Input::Finding(f);
        let out = match sm_seam::step(&rec.sm, &input, self.now, self.policy, self.rules()) {
            Ok(out) => out,
            Err(e) => {
                if let Some(t) = taken {
                    self.untake(rec, t);
                }
                return Ok(Err((sm_seam::step_error_code(&e), e.to_string())));
            }
        };
        let Input::Finding(f) = &input else { unreachable!("constructed above") };
        let detail = finding_detail(f);
        if !rec.evidence.contains_key(&f.checker) && rec.evidence.len() >= MAX_EVIDENCE_CHECKERS {
            // Evict the stalest checker's evidence (ties by name: deterministic).
            if let Some(oldest) = rec.evidence.stalest()? {
                rec.evidence.remove(&oldest);
            }
        }
        // Fault findings go into history even without a transition (operators ask "what did the checkers
        // see?"); healthy repeats only refresh the evidence, so they cannot push transitions out of history.
        let record = f.severity.is_fault();
        self.archive.push(crate::archive::ArchiveEvent::Finding(f.clone()));
        rec.findings_seen += 1;
        let step =
            StepRecord { input: &input, what: "finding", detail, always_history: record, mode: Mode::Auto };
        let transitioned = self.store_outcome(&mut rec, out, step)?;
        // The evidence is stored after the outcome (which reads the input, never the evidence), so the
        // finding moves into the record instead of being copied.
        let Input::Finding(f) = input else { unreachable!("constructed above") };
        rec.evidence.insert(f.checker.clone(), f);
        self.save_taken(rec, taken)?;
        Ok(Ok(transitioned))
    }

    pub(super) fn register(
        &mut self,
        agent: &str,
        host: &str,
        objects: Vec<Registration>,
    ) -> Result<CmdResult, StoreError> {
        let prev_agent = if agent.is_empty() { None } else { self.agent(agent)? };
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
                match sm_seam::step(&rec.sm, &input, self.now, self.policy, self.rules()) {
                    Ok(out) if out.transition.is_some() => {
                        let detail = format!("registered by {agent} with serial {serial}");
                        let step = StepRecord {
                            input: &input,
                            what: "replacement",
                            detail,
                            always_history: true,
                            mode: Mode::Auto,
                        };
                        transitioned = self.store_outcome(&mut rec, out, step)?;
                    }
                    Ok(out) => rec.sm = out.next,
                    Err(e) => {
                        res.error.get_or_insert((sm_seam::step_error_code(&e), format!("{id}: {e}")));
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
                self.push_history(&mut rec, entry);
            }
            if created || rec != before {
                self.save(rec)?;
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
                    epoch: 0,
                    retired_epochs: Vec::new(),
                },
            };
            self.put_agent(agent, prev_agent.as_ref(), rec, false)?;
        }
        res.revision = self.revision;
        Ok(res)
    }

    pub(super) fn object_input(&mut self, object: &ObjectId, input: Input) -> Result<CmdResult, StoreError> {
        let id = object.to_string();
        let Some(mut rec) = self.load(&id)? else {
            return Ok(self.refuse(proto::error::Code::NotFound, format!("no object {id}")));
        };
        let out = match sm_seam::step(&rec.sm, &input, self.now, self.policy, self.rules()) {
            Ok(out) => out,
            Err(e) => {
                self.tally.rejected += 1;
                return Ok(CmdResult {
                    error: Some((sm_seam::step_error_code(&e), e.to_string())),
                    state: sm_seam::state_name(&rec.sm).into(),
                    ..self.result()
                });
            }
        };
        let detail = input_text(&input);
        let mode = if matches!(input, Input::Operator { .. }) { Mode::Operator } else { Mode::Auto };
        self.held = None;
        let step = StepRecord { input: &input, what: input.name(), detail, always_history: true, mode };
        let transitioned = self.store_outcome(&mut rec, out, step)?;
        let state = sm_seam::state_name(&rec.sm).into();
        if let Some((0, why)) = &self.held {
            // Blind: nothing changes, and the caller must know its command was not applied.
            let why = why.clone();
            self.held = None;
            self.save(rec)?;
            return Ok(CmdResult {
                error: Some((proto::error::Code::Conflict, format!("{id}: {why}"))),
                state,
                ..self.result()
            });
        }
        self.save(rec)?;
        let (proposal, held) = self.held.take().map_or((0, None), |(p, r)| (p, Some(r)));
        Ok(CmdResult { applied: 1, transitioned, state, held, proposal, ..self.result() })
    }

    pub(super) fn tick(&mut self, objects: Vec<ObjectId>) -> Result<CmdResult, StoreError> {
        let mut res = self.result();
        for object in objects.iter().take(MAX_TICK_OBJECTS) {
            let Some(mut rec) = self.load(&object.to_string())? else { continue };
            let Ok(out) = sm_seam::step(&rec.sm, &Input::Tick, self.now, self.policy, self.rules()) else {
                continue;
            };
            if !out.changed(&rec.sm) {
                continue;
            }
            if out.transition.is_none() && out.effects.is_empty() {
                // Only bookkeeping moved (e.g. escalation flags): store quietly, no event.
                rec.sm = out.next;
            } else {
                let step = StepRecord {
                    input: &Input::Tick,
                    what: "tick",
                    detail: String::new(),
                    always_history: true,
                    mode: Mode::Auto,
                };
                res.transitioned |= self.store_outcome(&mut rec, out, step)?;
            }
            self.save(rec)?;
            res.applied += 1;
        }
        res.revision = self.revision;
        Ok(res)
    }
}

/// One line about an input for history details.
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

/// `CHECKER RULE SEVERITY: first line of the evidence`, the detail of a finding's change event and history
/// entry; built in one allocation (every finding makes one, and `format!` was 7% of a member's batched apply).
fn finding_detail(f: &Finding) -> String {
    let (checker, rule, severity, line) =
        (f.checker.as_str(), f.rule.as_str(), f.severity.as_str(), first_line(&f.evidence));
    let mut d = String::with_capacity(checker.len() + rule.len() + severity.len() + line.len() + 4);
    for (part, sep) in [(checker, " "), (rule, " "), (severity, ": "), (line, "")] {
        d.push_str(part);
        d.push_str(sep);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_detail_is_what_format_wrote() {
        let mut f = Finding {
            object: "disk/h1/sda".parse().expect("id"),
            severity: state_machines::finding::Severity::Error,
            checker: "kernel-log".into(),
            version: "1.0.0".into(),
            rule: "io-error".into(),
            evidence: "blk_update_request: I/O error, dev sda, sector 500000\nsecond line".into(),
            readings: std::collections::BTreeMap::new(),
            time_ms: 1,
            shadow: false,
        };
        let old =
            |f: &Finding| format!("{} {} {}: {}", f.checker, f.rule, f.severity, first_line(&f.evidence));
        assert_eq!(finding_detail(&f), old(&f));
        assert_eq!(
            finding_detail(&f),
            "kernel-log io-error ERROR: blk_update_request: I/O error, dev sda, sector 500000"
        );
        // A long first line is cut at 200 bytes on a character boundary, and empty parts stay empty.
        f.evidence = "é".repeat(150);
        f.rule.clear();
        assert_eq!(finding_detail(&f), old(&f));
        assert!(finding_detail(&f).len() < 230);
    }
}
