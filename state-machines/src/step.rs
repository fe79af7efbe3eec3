//! The pure step function: one object, one input, the time, the policy -> the next record, the transition (if
//! any) and the effects it asks for. Deterministic (no clock, no randomness, no hash-order iteration) and
//! total: inputs that do not apply return a [`StepError`] and change nothing. Every transition goes through
//! [`Ctx::go`], which refuses edges that are not in the kind's table and attaches the entry effects of the
//! target state, so the tables in `table.rs` are the only place where behaviour can gain an edge.

use crate::finding::{Finding, Severity};
use crate::id::Kind;
use crate::invariants;
use crate::model::{
    AckKind, Action, Cause, Effect, Evidence, Input, MAX_ATTRS, MAX_FIELD_LEN, MAX_FIX_HISTORY,
    MAX_REASON_LEN, ObjectState, OperatorCommand, Outcome, PendingAck, PendingAction, Policy, StepError,
    Streak, TicketUpdate, Transition,
};
use crate::table::{State, StateMachine, state_machine_for};

/// Attribute recording the serial of the part that went to REPAIR (the one the worker must never touch).
pub const REPAIR_SERIAL_ATTR: &str = "repair-serial";

/// Attribute recording the last fix a machine got (the FIX ladder escalates a repeated fix to a reboot).
pub const LAST_FIX_ATTR: &str = "last-fix";

/// Apply one input to one object at `now_ms`. See the crate README for the model.
pub fn step(obj: &ObjectState, input: &Input, now_ms: u64, policy: &Policy) -> Result<Outcome, StepError> {
    policy.validate()?;
    let Some(machine) = state_machine_for(obj.kind()) else {
        return checker_step(obj, input);
    };
    let mut cx =
        Ctx { obj, next: obj.clone(), policy, now: now_ms, machine, transition: None, effects: Vec::new() };
    match input {
        Input::Finding(f) => cx.on_finding(f)?,
        Input::Ack { role, ack } => cx.on_ack(role, *ack)?,
        Input::Operator { operator, command } => cx.on_operator(operator, command)?,
        Input::Ticket { ticket, update } => cx.on_ticket(ticket, *update)?,
        Input::ActionResult { action, success, detail } => cx.on_result(*action, *success, detail)?,
        Input::Replacement { serial, attrs } => cx.on_replacement(serial, attrs)?,
        Input::Tick => cx.on_tick()?,
    }
    let out = Outcome { next: cx.next, transition: cx.transition, effects: cx.effects };
    debug_assert!(
        invariants::check_outcome(obj, &out).is_ok(),
        "invariant violated: {:?}",
        invariants::check_outcome(obj, &out)
    );
    Ok(out)
}

/// `checker` objects have no machine: a finding about one is recorded (grade) and nothing else applies.
fn checker_step(obj: &ObjectState, input: &Input) -> Result<Outcome, StepError> {
    match input {
        Input::Finding(f) => {
            check_finding(obj, f)?;
            let mut next = obj.clone();
            record_grade(&mut next, f.severity);
            Ok(Outcome { next, transition: None, effects: Vec::new() })
        }
        _ => Err(StepError::NoStateMachine(obj.id.clone())),
    }
}

fn check_field(field: &'static str, value: &str, max: usize) -> Result<(), StepError> {
    if value.is_empty() || value.len() > max { Err(StepError::BadField { field, max }) } else { Ok(()) }
}

fn check_finding(obj: &ObjectState, f: &Finding) -> Result<(), StepError> {
    if f.object != obj.id {
        return Err(StepError::WrongObject { expected: obj.id.clone(), got: f.object.clone() });
    }
    check_field("checker", &f.checker, MAX_FIELD_LEN)?;
    check_field("version", &f.version, MAX_FIELD_LEN)?;
    check_field("rule", &f.rule, MAX_FIELD_LEN)
}

fn record_grade(next: &mut ObjectState, sev: Severity) {
    if sev >= Severity::Good {
        next.grade = Some(sev);
    }
}

/// Cut agent-supplied text to [`MAX_FIELD_LEN`] on a char boundary.
fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_FIELD_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The in-service level a severity points at for this kind (`None`: says nothing about service level).
fn level_of(kind: Kind, sev: Severity) -> Option<State> {
    match (kind, sev) {
        (_, Severity::Unknown | Severity::Info) => None,
        (_, Severity::Good) => Some(State::Good),
        (Kind::Disk, Severity::Slow) => Some(State::Slow),
        (
            Kind::Disk | Kind::Dimm | Kind::Nic | Kind::Switch | Kind::Link,
            Severity::Slow | Severity::Warning,
        ) => Some(State::Warning),
        // A machine has no degraded in-service state: SLOW/WARNING about a machine is recorded only.
        (_, Severity::Slow | Severity::Warning) => None,
        (_, Severity::Error | Severity::Fatal) => Some(State::Error),
    }
}

fn rank(s: State) -> u8 {
    match s {
        State::Good => 0,
        State::Slow => 1,
        _ => 2,
    }
}

struct Ctx<'a> {
    obj: &'a ObjectState,
    next: ObjectState,
    policy: &'a Policy,
    now: u64,
    machine: &'static StateMachine,
    transition: Option<Transition>,
    effects: Vec<Effect>,
}

impl Ctx<'_> {
    fn state(&self) -> State {
        self.obj.state
    }

    fn not_applicable(&self, input: &'static str, why: &'static str) -> StepError {
        StepError::NotApplicable { object: self.obj.id.clone(), state: self.obj.state, input, why }
    }

    /// Take the edge `state -> to` (refused unless it is in the table) and attach `to`'s entry effects.
    fn go(&mut self, to: State, cause: Cause, evidence: Option<Evidence>) -> Result<(), StepError> {
        let from = self.obj.state;
        if !self.machine.is_legal(from, to) {
            return Err(StepError::IllegalEdge { kind: self.machine.kind, from, to });
        }
        let id = self.obj.id.clone();
        let n = &mut self.next;
        n.state = to;
        n.since_ms = self.now;
        n.last_cause = Some(cause.clone());
        if let Some(ev) = &evidence {
            n.last_evidence = Some(ev.clone());
        }
        n.pending_ack = None;
        n.pending_action = None;
        n.hysteresis = Default::default();
        if matches!(to, State::Slow | State::Warning) {
            // Quiet recovery counts from entering the degraded state.
            n.hysteresis.last_fault_ms = Some(self.now);
        }
        self.effects.push(Effect::Publish { object: id, from, to });
        self.transition =
            Some(Transition { object: self.obj.id.clone(), from, to, cause, evidence, time_ms: self.now });
        self.enter(to);
        Ok(())
    }

    /// Set up what `to` waits for and ask for its entry effects (acks, actions, tickets).
    fn enter(&mut self, to: State) {
        let id = self.obj.id.clone();
        let from = self.obj.state;
        let by = self.transition.as_ref().map_or("set-up", |t| t.cause.name());
        let n = &mut self.next;
        match to {
            // A network device is not drained by anyone: ERROR tells subscribers (the publish) and an
            // operator, and waits for the suspicion to clear or an operator's force.
            State::Error if self.machine.kind.is_network() => {
                let msg =
                    format!("{id}: network suspect in ERROR ({from} -> ERROR by {by}); check the device");
                self.alert(msg);
            }
            State::Error => {
                let (role, ack) = if self.machine.kind == Kind::Disk {
                    (self.policy.disk_evacuate_role.clone(), AckKind::DataEvacuated)
                } else {
                    (self.policy.drain_role.clone(), AckKind::Drained)
                };
                let deadline_ms = self.now.saturating_add(self.policy.ack_timeout_ms);
                n.pending_ack = Some(PendingAck {
                    role: role.clone(),
                    ack,
                    requested_ms: self.now,
                    deadline_ms,
                    escalated: false,
                });
                self.effects.push(Effect::RequestAck { object: id, role, ack, deadline_ms });
            }
            State::Fix => {
                // The FIX ladder: the fix for the cause (restart a service, clean a filesystem, ...); if that
                // same fix was already tried within the window and the machine is back, a reboot; after
                // `fix_escalate_after` fixes in the window it goes to REPAIR instead (see `release`).
                let window_start = self.now.saturating_sub(self.policy.fix_window_ms);
                let recent = n.fix_history_ms.iter().any(|t| *t >= window_start);
                let by_cause = self.policy.fix_for(n.last_evidence.as_ref());
                let fix =
                    if recent && n.attrs.get(LAST_FIX_ATTR).map(String::as_str) == Some(by_cause.as_str()) {
                        crate::model::FixAction::Reboot
                    } else {
                        by_cause
                    };
                n.attrs.insert(LAST_FIX_ATTR.into(), fix.as_str().into());
                n.fix_history_ms.push(self.now);
                let excess = n.fix_history_ms.len().saturating_sub(MAX_FIX_HISTORY);
                n.fix_history_ms.drain(..excess);
                self.request_action(Action::Fix { fix });
            }
            State::Repair => {
                n.attrs.remove("ticket");
                n.attrs.remove("ticket-status");
                // The part that failed: provisioning must never run on it (only on a different serial).
                if let Some(serial) = n.attrs.get("serial").cloned() {
                    n.attrs.insert(REPAIR_SERIAL_ATTR.into(), serial);
                }
                let why = match &n.last_evidence {
                    Some(e) => format!("{} ({} {}): {}", e.rule, e.checker, e.version, e.evidence),
                    None => "no finding recorded".to_string(),
                };
                let reason = bounded_reason(&format!("{id}: {from} -> REPAIR by {by}; {why}"));
                let idempotency_key = format!("{id}@{}", self.now);
                self.effects.push(Effect::FileTicket { object: id, reason, idempotency_key });
            }
            State::Newbie => self.request_action(Action::Provision),
            State::Test => self.request_action(Action::Test),
            State::Good | State::Slow | State::Warning => {}
        }
    }

    fn request_action(&mut self, action: Action) {
        let deadline_ms = self.now.saturating_add(self.policy.action_timeout_ms);
        self.next.pending_action =
            Some(PendingAction { action, requested_ms: self.now, deadline_ms, escalated: false });
        self.effects.push(Effect::RunAction {
            object: self.obj.id.clone(),
            host: self.obj.id.host().to_string(),
            action,
        });
    }

    fn alert(&mut self, message: String) {
        self.effects.push(Effect::AlertOperator { object: self.obj.id.clone(), message });
    }

    fn on_finding(&mut self, f: &Finding) -> Result<(), StepError> {
        check_finding(self.obj, f)?;
        if matches!(self.state(), State::Newbie | State::Test) && f.time_ms < self.obj.since_ms {
            // Measured before the new part arrived (a reading of the old disk delivered late): it says
            // nothing about the replacement. Clocks of agents and masters are NTP-synced; a reading a
            // moment too early is simply taken on the checker's next run.
            return Ok(());
        }
        record_grade(&mut self.next, f.severity);
        let cause = Cause::Finding {
            checker: f.checker.clone(),
            version: f.version.clone(),
            rule: f.rule.clone(),
            severity: f.severity,
        };
        let Some(level) = level_of(self.machine.kind, f.severity) else { return Ok(()) };
        let state = self.state();
        if self.machine.kind.is_network() {
            // The master's localisation holds suspicion over windows itself (a suspect for one window,
            // cleared after `clear_windows`): its findings move the device at once, to the level they say.
            return if level == state {
                Ok(())
            } else {
                self.go(level, cause, Some(Evidence::from_finding(f)))
            };
        }
        if level == State::Error {
            return match state {
                // ERROR/FATAL acts at once, no hysteresis.
                State::Good | State::Slow | State::Warning | State::Newbie | State::Test => self.go(
                    if state.in_service() { State::Error } else { State::Repair },
                    cause,
                    Some(Evidence::from_finding(f)),
                ),
                // Already out of service: the finding is recorded (grade) and changes nothing else.
                State::Error | State::Fix | State::Repair => Ok(()),
            };
        }
        if !state.in_service() {
            return Ok(());
        }
        let (p, now) = (self.policy, self.now);
        let h = &mut self.next.hysteresis;
        let continues = |s: &Option<Streak>| {
            s.as_ref().filter(|s| now.saturating_sub(s.last_ms) <= p.streak_gap_ms).cloned()
        };
        if rank(level) > rank(state) {
            h.better = None;
            h.last_fault_ms = Some(now);
            let s = match continues(&h.worse) {
                Some(mut s) => {
                    s.count = s.count.saturating_add(1);
                    s.last_ms = now;
                    // The streak holds for the mildest condition all its readings agree on.
                    if rank(level) < rank(s.target) {
                        s.target = level;
                    }
                    s
                }
                None => Streak { target: level, count: 1, since_ms: now, last_ms: now },
            };
            let held = s.count >= p.enter_readings
                || (s.count >= 2 && now.saturating_sub(s.since_ms) >= p.enter_hold_ms);
            let target = s.target;
            h.worse = Some(s);
            if held {
                return self.go(target, cause, Some(Evidence::from_finding(f)));
            }
        } else if rank(level) == rank(state) {
            h.worse = None;
            h.better = None;
            if state != State::Good {
                h.last_fault_ms = Some(now);
            }
        } else {
            h.worse = None;
            let s = match continues(&h.better) {
                Some(mut s) => {
                    s.count = s.count.saturating_add(1);
                    s.last_ms = now;
                    // Leave only as far as the worst of the healthier readings allows.
                    if rank(level) > rank(s.target) {
                        s.target = level;
                    }
                    s
                }
                None => Streak { target: level, count: 1, since_ms: now, last_ms: now },
            };
            let held = s.count >= p.leave_readings && now.saturating_sub(s.since_ms) >= p.leave_hold_ms;
            let target = s.target;
            h.better = Some(s);
            if held {
                return self.go(target, cause, Some(Evidence::from_finding(f)));
            }
        }
        Ok(())
    }

    fn on_ack(&mut self, role: &str, ack: AckKind) -> Result<(), StepError> {
        check_field("role", role, MAX_FIELD_LEN)?;
        let Some(p) = &self.obj.pending_ack else {
            return Err(StepError::NoPendingAck { object: self.obj.id.clone(), state: self.state() });
        };
        if p.role != role || p.ack != ack {
            return Err(StepError::WrongAck {
                object: self.obj.id.clone(),
                expected_role: p.role.clone(),
                expected_ack: p.ack,
                got_role: role.to_string(),
                got_ack: ack,
            });
        }
        self.release(Cause::Ack { role: role.to_string(), ack })
    }

    /// The acknowledgement (or an operator's approve) arrived: leave ERROR.
    fn release(&mut self, by: Cause) -> Result<(), StepError> {
        if self.machine.kind != Kind::Machine {
            return self.go(State::Repair, by, None);
        }
        let window_start = self.now.saturating_sub(self.policy.fix_window_ms);
        let attempts = self.obj.fix_history_ms.iter().filter(|t| **t >= window_start).count() as u32;
        if attempts >= self.policy.fix_escalate_after {
            let cause =
                Cause::FixEscalation { attempts, window_ms: self.policy.fix_window_ms, by: Box::new(by) };
            self.go(State::Repair, cause, None)
        } else {
            self.go(State::Fix, by, None)
        }
    }

    fn on_operator(&mut self, operator: &str, command: &OperatorCommand) -> Result<(), StepError> {
        check_field("operator", operator, MAX_FIELD_LEN)?;
        match command {
            OperatorCommand::Force { to, reason } => {
                check_field("reason", reason, MAX_REASON_LEN)?;
                let cause = Cause::Operator {
                    operator: operator.to_string(),
                    command: "force".into(),
                    reason: reason.clone(),
                };
                self.go(*to, cause, None)
            }
            OperatorCommand::Approve { reason } => {
                check_field("reason", reason, MAX_REASON_LEN)?;
                if self.obj.pending_ack.is_none() {
                    return Err(StepError::NoPendingAck { object: self.obj.id.clone(), state: self.state() });
                }
                let cause = Cause::Operator {
                    operator: operator.to_string(),
                    command: "approve".into(),
                    reason: reason.clone(),
                };
                self.release(cause)
            }
        }
    }

    fn on_ticket(&mut self, ticket: &str, update: TicketUpdate) -> Result<(), StepError> {
        check_field("ticket", ticket, MAX_FIELD_LEN)?;
        if self.state() != State::Repair {
            return Err(self.not_applicable("ticket", "no repair ticket is open"));
        }
        if self.obj.attrs.get("ticket").is_some_and(|t| t != ticket) {
            return Err(self.not_applicable("ticket", "a different ticket is open for this object"));
        }
        self.next.attrs.insert("ticket".into(), ticket.to_string());
        self.next.attrs.insert("ticket-status".into(), update.as_str().to_string());
        match update {
            TicketUpdate::Filed | TicketUpdate::Accepted => Ok(()),
            TicketUpdate::PartReplaced | TicketUpdate::Closed => {
                self.go(State::Newbie, Cause::Ticket { ticket: ticket.to_string(), update }, None)
            }
        }
    }

    fn on_result(&mut self, action: Action, success: bool, detail: &str) -> Result<(), StepError> {
        if self.obj.pending_action.as_ref().map(|p| p.action) != Some(action) {
            return Err(self.not_applicable("result", "no such action is pending"));
        }
        let to = match (action, success) {
            (Action::Fix { .. }, true) | (Action::Test, true) => State::Good,
            (Action::Provision, true) => State::Test,
            (_, false) => State::Repair,
        };
        self.go(to, Cause::Action { action, success, detail: bounded(detail) }, None)?;
        if !success {
            // A failed fix, provisioning or test is worth a human's look even though REPAIR follows.
            self.alert(format!("{action} failed on {}: {}", self.obj.id, bounded(detail)));
        }
        Ok(())
    }

    fn on_replacement(
        &mut self,
        serial: &str,
        attrs: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StepError> {
        check_field("serial", serial, MAX_FIELD_LEN)?;
        if attrs.len() > MAX_ATTRS {
            return Err(StepError::BadField { field: "attrs", max: MAX_ATTRS });
        }
        for (k, v) in attrs {
            check_field("attribute name", k, MAX_FIELD_LEN)?;
            if v.len() > MAX_FIELD_LEN {
                return Err(StepError::BadField { field: "attribute value", max: MAX_FIELD_LEN });
            }
        }
        let old = self.obj.serial().map(str::to_string);
        let replaced = match &old {
            Some(o) => o != serial,
            // First sighting of the slot's serial: a replacement only if we were waiting for one.
            None => self.state() == State::Repair,
        };
        for (k, v) in attrs {
            if k != "serial" && k != "ticket" && k != "ticket-status" {
                self.next.attrs.insert(k.clone(), v.clone());
            }
        }
        self.next.attrs.insert("serial".into(), serial.to_string());
        if self.next.attrs.len() > MAX_ATTRS + 2 {
            return Err(StepError::BadField { field: "attrs", max: MAX_ATTRS });
        }
        if !replaced {
            return Ok(());
        }
        if self.state() == State::Newbie {
            // Replaced again while provisioning: provision the new part, no transition.
            self.request_action(Action::Provision);
            return Ok(());
        }
        self.go(State::Newbie, Cause::Replacement { old_serial: old, new_serial: serial.to_string() }, None)
    }

    fn on_tick(&mut self) -> Result<(), StepError> {
        let now = self.now;
        if let Some(p) = self.next.pending_ack.as_mut().filter(|p| !p.escalated && now >= p.deadline_ms) {
            p.escalated = true;
            let msg = format!(
                "{}: no {} acknowledgement from {} within {} ms; approve or force",
                self.obj.id, p.ack, p.role, self.policy.ack_timeout_ms
            );
            self.alert(msg);
        }
        if let Some(p) = self.next.pending_action.as_mut().filter(|p| !p.escalated && now >= p.deadline_ms) {
            p.escalated = true;
            let msg = format!(
                "{}: action {} has no result after {} ms",
                self.obj.id, p.action, self.policy.action_timeout_ms
            );
            self.alert(msg);
        }
        if matches!(self.state(), State::Slow | State::Warning) {
            let last = self.obj.hysteresis.last_fault_ms.unwrap_or(self.obj.since_ms);
            if now.saturating_sub(last) >= self.policy.recover_quiet_ms {
                let what = format!("no fault reading for {} ms", self.policy.recover_quiet_ms);
                // Escalation alerts above are moot once the object leaves (there are none in SLOW/WARNING).
                return self.go(State::Good, Cause::Timeout { what }, None);
            }
        }
        Ok(())
    }
}

fn bounded_reason(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl ObjectState {
    /// An object already in `state` since `now_ms`, waiting for what that state waits for (the ack of ERROR,
    /// the action of FIX/NEWBIE/TEST), with no history. For imports from another system and for test set-up;
    /// normal objects start with [`ObjectState::new`]. Refused for states the kind does not have.
    pub fn in_state(
        id: crate::id::ObjectId,
        state: State,
        now_ms: u64,
        policy: &Policy,
    ) -> Result<Self, StepError> {
        let kind = id.kind();
        let mut obj = ObjectState::new(id, now_ms);
        if state == State::Good {
            return Ok(obj);
        }
        let Some(machine) = state_machine_for(kind).filter(|m| m.has_state(state)) else {
            return Err(StepError::IllegalEdge { kind, from: State::Good, to: state });
        };
        obj.state = state;
        let mut cx = Ctx {
            obj: &obj,
            next: obj.clone(),
            policy,
            now: now_ms,
            machine,
            transition: None,
            effects: Vec::new(),
        };
        cx.enter(state);
        Ok(cx.next)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{FixAction, MAX_ATTRS};

    fn finding(id: &str, sev: Severity, rule: &str) -> Input {
        Input::Finding(Finding {
            object: id.parse().expect("valid"),
            severity: sev,
            checker: "kernel-log".into(),
            version: "1.0.0".into(),
            rule: rule.into(),
            evidence: "e".into(),
            readings: BTreeMap::new(),
            time_ms: 0,
            shadow: false,
        })
    }

    fn obj(id: &str) -> ObjectState {
        ObjectState::new(id.parse().expect("valid"), 0)
    }

    #[test]
    fn fatal_acts_at_once_and_asks_the_right_subscriber() {
        let p = Policy::default();
        let out = step(&obj("disk/h/sda"), &finding("disk/h/sda", Severity::Fatal, "io-error"), 5, &p)
            .expect("applies");
        let t = out.transition.as_ref().expect("transition");
        assert_eq!((t.from, t.to, t.time_ms), (State::Good, State::Error, 5));
        assert!(out.removes_capacity());
        assert_eq!(
            out.next.pending_ack.as_ref().map(|a| (a.role.as_str(), a.ack)),
            Some(("storage", AckKind::DataEvacuated))
        );
        assert_eq!(out.next.grade, Some(Severity::Fatal));
        assert_eq!(out.next.last_evidence.as_ref().map(|e| e.rule.as_str()), Some("io-error"));
        let m = step(&obj("machine/h"), &finding("machine/h", Severity::Error, "x"), 5, &p).expect("applies");
        assert_eq!(m.effects[1].summary(), "request-ack scheduler drained");
    }

    #[test]
    fn fix_action_is_chosen_by_cause() {
        let p = Policy::default();
        for (rule, fix) in [
            ("root-fs-readonly", FixAction::Reboot),
            ("fs-full", FixAction::CleanFs),
            ("load-runaway", FixAction::RestartService),
            ("unmapped-rule", FixAction::Reboot),
        ] {
            let e =
                step(&obj("machine/h"), &finding("machine/h", Severity::Error, rule), 1, &p).expect("error");
            let ack = Input::Ack { role: "scheduler".into(), ack: AckKind::Drained };
            let f = step(&e.next, &ack, 2, &p).expect("fix");
            assert_eq!(f.next.state, State::Fix);
            assert_eq!(f.next.pending_action.as_ref().map(|a| a.action), Some(Action::Fix { fix }), "{rule}");
        }
    }

    #[test]
    fn bad_inputs_are_refused_with_clear_errors() {
        let p = Policy::default();
        let o = obj("disk/h/sda");
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        let force = |op: &str, reason: &str| Input::Operator {
            operator: op.into(),
            command: OperatorCommand::Force { to: State::Error, reason: reason.into() },
        };
        assert_eq!(step(&o, &force(&long, "r"), 1, &p).map_err(|e| e.code()), Err("bad-field"));
        assert_eq!(step(&o, &force("op", ""), 1, &p).map_err(|e| e.code()), Err("bad-field"));
        assert_eq!(
            step(&o, &force("op", &"r".repeat(MAX_REASON_LEN + 1)), 1, &p).map_err(|e| e.code()),
            Err("bad-field")
        );
        assert!(step(&o, &force("op", &"r".repeat(MAX_REASON_LEN)), 1, &p).is_ok(), "at the limit is fine");
        let many: BTreeMap<String, String> = (0..=MAX_ATTRS).map(|i| (format!("k{i}"), "v".into())).collect();
        let r = Input::Replacement { serial: "S".into(), attrs: many };
        assert_eq!(step(&o, &r, 1, &p).map_err(|e| e.code()), Err("bad-field"));
        let ok: BTreeMap<String, String> = (0..MAX_ATTRS).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(step(&o, &Input::Replacement { serial: "S".into(), attrs: ok }, 1, &p).is_ok());
        let err = step(&o, &finding("disk/h/sdb", Severity::Error, "r"), 1, &p).expect_err("wrong object");
        assert!(err.to_string().contains("disk/h/sdb"), "{err}");
        let bad_policy = Policy { enter_readings: 0, ..Policy::default() };
        assert_eq!(step(&o, &Input::Tick, 1, &bad_policy).map_err(|e| e.code()), Err("bad-policy"));
        let c = obj("checker/h/smart");
        assert_eq!(step(&c, &Input::Tick, 1, &p).map_err(|e| e.code()), Err("no-state-machine"));
    }

    #[test]
    fn fix_history_stays_bounded() {
        // Escalation set at the memory limit: the history never grows beyond it and still escalates.
        let p = Policy { fix_escalate_after: MAX_FIX_HISTORY as u32, ..Policy::default() };
        let mut o = obj("machine/h");
        let mut now = 0;
        let mut escalated = false;
        for _ in 0..(MAX_FIX_HISTORY + 3) {
            now += 1000;
            o = step(&o, &finding("machine/h", Severity::Error, "x"), now, &p).expect("error").next;
            now += 1000;
            let ack = Input::Ack { role: "scheduler".into(), ack: AckKind::Drained };
            o = step(&o, &ack, now, &p).expect("released").next;
            assert!(o.fix_history_ms.len() <= MAX_FIX_HISTORY);
            if o.state == State::Repair {
                escalated = true;
                break;
            }
            now += 1000;
            let ok = Input::ActionResult {
                action: Action::Fix { fix: FixAction::Reboot },
                success: true,
                detail: String::new(),
            };
            o = step(&o, &ok, now, &p).expect("fixed").next;
        }
        assert!(escalated, "{MAX_FIX_HISTORY} fixes in the window must escalate");
        assert_eq!(o.fix_history_ms.len(), MAX_FIX_HISTORY);
    }

    #[test]
    fn json_names_are_stable() {
        let i = Input::Ack { role: "storage".into(), ack: AckKind::DataEvacuated };
        assert_eq!(
            serde_json::to_string(&i).expect("ser"),
            r#"{"input":"ack","role":"storage","ack":"data-evacuated"}"#
        );
        let r = Input::ActionResult {
            action: Action::Fix { fix: FixAction::CleanFs },
            success: true,
            detail: "d".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).expect("ser"),
            r#"{"input":"action-result","action":{"action":"fix","fix":"clean-fs"},"success":true,"detail":"d"}"#
        );
        let f = finding("disk/h/sda", Severity::Slow, "latency");
        let json = serde_json::to_string(&f).expect("ser");
        assert!(json.starts_with(r#"{"input":"finding","object":"disk/h/sda","severity":"SLOW""#), "{json}");
        assert_eq!(serde_json::from_str::<Input>(&json).expect("de"), f);
        let out =
            step(&obj("disk/h/sda"), &finding("disk/h/sda", Severity::Fatal, "io"), 7, &Policy::default())
                .expect("step");
        let json = serde_json::to_string(&out).expect("ser");
        assert!(
            json.contains(r#""from":"GOOD","to":"ERROR""#) && json.contains(r#""effect":"request-ack""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Outcome>(&json).expect("de"), out);
        let p: Policy = serde_json::from_str(r#"{"enter_readings":5}"#).expect("partial policy");
        assert_eq!(p.enter_readings, 5);
        assert!(serde_json::from_str::<Policy>(r#"{"enter_reading":5}"#).is_err(), "unknown fields refused");
    }

    #[test]
    fn next_deadline_tells_the_master_when_to_tick() {
        let p = Policy::default();
        let o = obj("disk/h/sda");
        assert_eq!(o.next_deadline_ms(&p), None);
        let e = step(&o, &finding("disk/h/sda", Severity::Fatal, "io"), 10, &p).expect("step").next;
        assert_eq!(e.next_deadline_ms(&p), Some(10 + p.ack_timeout_ms));
        let w = ObjectState::in_state("disk/h/sdb".parse().expect("id"), State::Warning, 50, &p)
            .expect("in_state");
        assert_eq!(w.next_deadline_ms(&p), Some(50 + p.recover_quiet_ms));
        assert!(ObjectState::in_state("disk/h/sdb".parse().expect("id"), State::Fix, 0, &p).is_err());
    }
}
