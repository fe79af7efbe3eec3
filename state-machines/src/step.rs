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

/// Attribute of a network device (`switch`, `link`) holding the filing key of its open incident's repair
/// ticket, `OBJECT@ERROR_ENTERED_MS`: set when it enters ERROR with no open ticket, kept through ERROR ->
/// WARNING -> ERROR (one incident, one ticket). The incident ends, and the attribute goes, when the device
/// returns to GOOD with no open ticket recorded, or when its recorded ticket is closed while it is GOOD
/// (`Rules::net_incident_until_closed`: a device flapping through GOOD while its ticket is open stays one
/// incident; before that rule GOOD always ended it, one ticket per flap). While it is set and no `ticket`
/// is recorded, a filing is outstanding (`Rules::net_tickets`).
pub const TICKET_KEY_ATTR: &str = "ticket-key";

/// Which rules of the step function apply. A rule that changes what an existing input means must reach every
/// replica at the same log position, so the master turns it on from its replicated `min_command_version`
/// (the same on every member) rather than from the binary it runs; everything else calls [`step`], which
/// applies the newest rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Network devices in the repair flow (master command version 7): a `switch`/`link` entering ERROR
    /// with no open ticket files one ([`TICKET_KEY_ATTR`]), returning to GOOD ends the incident, and
    /// `Input::Ticket` records the ticket on it without ever changing its state.
    pub net_tickets: bool,
    /// A network device's incident lasts while its recorded ticket is open (master command version 10): a
    /// return to GOOD with an open ticket keeps [`TICKET_KEY_ATTR`], so a device that flaps back to ERROR
    /// files nothing new (its ERROR alert names the open ticket), and closing that ticket while the device
    /// is GOOD ends the incident. Without it GOOD always ends the incident: one ticket per flap.
    pub net_incident_until_closed: bool,
}

impl Rules {
    /// Every rule this crate knows.
    pub const LATEST: Rules = Rules { net_tickets: true, net_incident_until_closed: true };
    /// The rules before network devices filed tickets (master command versions 1-6).
    pub const BEFORE_NET_TICKETS: Rules = Rules { net_tickets: false, net_incident_until_closed: false };
    /// The rules before a network incident lasted while its ticket is open (master command versions 7-9).
    pub const BEFORE_NET_INCIDENTS: Rules = Rules { net_tickets: true, net_incident_until_closed: false };
}

/// Whether the ticket `attrs` record (if any) is closed.
fn ticket_closed(attrs: &std::collections::BTreeMap<String, String>) -> bool {
    attrs.get("ticket-status").map(String::as_str) == Some(TicketUpdate::Closed.as_str())
}

/// The ticket `attrs` record, when it is not closed.
fn open_ticket(attrs: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    attrs.get("ticket").filter(|_| !ticket_closed(attrs)).map(String::as_str)
}

/// Apply one input to one object at `now_ms` under the newest [`Rules`]. See the crate README for the model.
pub fn step(obj: &ObjectState, input: &Input, now_ms: u64, policy: &Policy) -> Result<Outcome, StepError> {
    step_with(obj, input, now_ms, policy, Rules::LATEST)
}

/// [`step`] under the given `rules` (the master passes those its replicated command version enables).
pub fn step_with(
    obj: &ObjectState,
    input: &Input,
    now_ms: u64,
    policy: &Policy,
    rules: Rules,
) -> Result<Outcome, StepError> {
    policy.validate()?;
    let Some(machine) = state_machine_for(obj.kind()) else {
        return checker_step(obj, input);
    };
    let mut cx = Ctx {
        obj,
        next: obj.clone(),
        policy,
        rules,
        now: now_ms,
        machine,
        transition: None,
        effects: Vec::new(),
    };
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
    rules: Rules,
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
                let mut msg =
                    format!("{id}: network suspect in ERROR ({from} -> ERROR by {by}); check the device");
                if self.rules.net_incident_until_closed
                    && n.attrs.contains_key(TICKET_KEY_ATTR)
                    && let Some(t) = open_ticket(&n.attrs)
                {
                    msg.push_str(&format!(" (its incident's ticket {t} is still open: no new ticket)"));
                }
                self.alert(msg);
                if self.rules.net_tickets {
                    self.file_net_ticket();
                }
            }
            // Back to GOOD: the incident is over unless its ticket is open (a flap is not a new incident:
            // `Rules::net_incident_until_closed`). An outstanding filing is withdrawn (the device recovered
            // before anyone could be told); a recorded ticket stays (`ticket`, `ticket-status`) so the
            // integration's later updates of it are still recorded. Once over, the next ERROR is a new
            // incident.
            State::Good if self.machine.kind.is_network() && self.rules.net_tickets => {
                if !(self.rules.net_incident_until_closed && open_ticket(&n.attrs).is_some()) {
                    n.attrs.remove(TICKET_KEY_ATTR);
                }
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

    /// A network device entered ERROR: file a repair ticket unless its incident already has an open one
    /// (ERROR -> WARNING -> ERROR is one incident: one ticket). A closed ticket is not open: the device is
    /// bad again, so a new ticket is filed under a new key.
    fn file_net_ticket(&mut self) {
        let n = &mut self.next;
        if n.attrs.contains_key(TICKET_KEY_ATTR) && !ticket_closed(&n.attrs) {
            return;
        }
        n.attrs.remove("ticket");
        n.attrs.remove("ticket-status");
        let idempotency_key = format!("{}@{}", self.obj.id, self.now);
        n.attrs.insert(TICKET_KEY_ATTR.into(), idempotency_key.clone());
        let reason = net_ticket_reason(n, self.now);
        self.effects.push(Effect::FileTicket { object: self.obj.id.clone(), reason, idempotency_key });
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
        if self.machine.kind.is_network() && self.rules.net_tickets {
            return self.on_net_ticket(ticket, update);
        }
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

    /// A ticket update about a network device: recorded (`ticket`, `ticket-status`), never a transition. Only
    /// the localisation moves these devices: a link that still loses packets stays ERROR whatever the ticket
    /// says. Accepted while an incident is open (a filing outstanding, or the device not GOOD: an operator may
    /// record a ticket filed by hand) and, for the ticket already recorded, after it returned to GOOD.
    fn on_net_ticket(&mut self, ticket: &str, update: TicketUpdate) -> Result<(), StepError> {
        let recorded = self.obj.attrs.get("ticket");
        if recorded.is_some_and(|t| t != ticket) {
            return Err(self.not_applicable("ticket", "a different ticket is open for this object"));
        }
        let incident = self.obj.attrs.contains_key(TICKET_KEY_ATTR);
        if !incident && recorded.is_none() && self.state() == State::Good {
            return Err(self.not_applicable("ticket", "no incident is open for this network device"));
        }
        let state = self.state();
        let n = &mut self.next;
        if !incident && state != State::Good {
            // A ticket filed by hand for an incident that filed none (it began before the rule was on): it
            // is this incident's ticket, so a return to ERROR files no second one.
            n.attrs.insert(TICKET_KEY_ATTR.into(), format!("{}@{}", self.obj.id, self.obj.since_ms));
        }
        n.attrs.insert("ticket".into(), ticket.to_string());
        n.attrs.insert("ticket-status".into(), update.as_str().to_string());
        if self.rules.net_incident_until_closed && update == TicketUpdate::Closed && state == State::Good {
            // The incident kept open by its ticket through a return to GOOD ends with the ticket.
            n.attrs.remove(TICKET_KEY_ATTR);
        }
        if update == TicketUpdate::Closed && state != State::Good {
            let msg = format!(
                "{}: ticket {ticket} closed while the device is still {state} (the localisation still suspects \
                 it); it changes state only by localisation or an operator's force, and a new ticket is filed \
                 when it enters ERROR again",
                self.obj.id
            );
            self.alert(msg);
        }
        Ok(())
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
        let internal = |k: &str| {
            k == "serial"
                || k == "ticket"
                || k == "ticket-status"
                || (self.rules.net_tickets && k == TICKET_KEY_ATTR)
        };
        for (k, v) in attrs {
            if !internal(k) {
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

/// The reason line of a network device's repair ticket, built from its record alone (so the leader that
/// files it derives the same text as the step that asked for it): the device and, for a link, both ends;
/// when it entered ERROR (`entered_ms`, the time in its filing key) and by what; its state now; and the
/// localisation's evidence (the finding behind its last transition), cut to [`MAX_REASON_LEN`].
pub fn net_ticket_reason(obj: &ObjectState, entered_ms: u64) -> String {
    let id = &obj.id;
    let what = match id.link_ends() {
        Some((a, b)) => format!("link between {a} and {b}"),
        None => format!("{} {}", id.kind(), id.host()),
    };
    let by = match &obj.last_cause {
        Some(Cause::Operator { operator, command, reason }) => {
            format!("operator {operator} {command}: {reason}")
        }
        Some(c) => c.name().to_string(),
        None => "unknown cause".to_string(),
    };
    let why = match &obj.last_evidence {
        Some(e) => format!("{} ({} {}, {}): {}", e.rule, e.checker, e.version, e.severity, e.evidence),
        None => "no finding recorded".to_string(),
    };
    let now = if obj.state == State::Error && obj.since_ms == entered_ms {
        String::new()
    } else {
        format!(", {} since {}", obj.state, obj.since_ms)
    };
    bounded_reason(&format!("{id} ({what}): entered ERROR at {entered_ms} by {by}{now}; {why}"))
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
            rules: Rules::LATEST,
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

    fn net_finding(id: &str, sev: Severity, evidence: &str) -> Input {
        Input::Finding(Finding {
            object: id.parse().expect("valid"),
            severity: sev,
            checker: "netvote".into(),
            version: "1".into(),
            rule: "link-suspect".into(),
            evidence: evidence.into(),
            readings: BTreeMap::new(),
            time_ms: 0,
            shadow: false,
        })
    }

    fn tickets_filed(out: &Outcome) -> Vec<(String, String)> {
        out.effects
            .iter()
            .filter_map(|e| match e {
                Effect::FileTicket { idempotency_key, reason, .. } => {
                    Some((idempotency_key.clone(), reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn ticket(id: &str, update: TicketUpdate) -> Input {
        Input::Ticket { ticket: id.into(), update }
    }

    #[test]
    fn a_network_device_entering_error_files_one_ticket_per_incident() {
        let p = Policy::default();
        let id = "link/agg-1--tor-1";
        let lossy = "20 of 22 flows through it lost >= 1%";
        // GOOD -> ERROR: one ticket, keyed by the ERROR entry time, naming both ends and the evidence.
        let out = step(&obj(id), &net_finding(id, Severity::Error, lossy), 1_000, &p).expect("error");
        assert_eq!(out.next.state, State::Error);
        let filed = tickets_filed(&out);
        assert_eq!(filed.len(), 1, "{:?}", out.effects);
        let (key, reason) = &filed[0];
        assert_eq!(key, "link/agg-1--tor-1@1000");
        assert_eq!(out.next.attrs.get(TICKET_KEY_ATTR), Some(key));
        for part in
            ["link/agg-1--tor-1", "between agg-1 and tor-1", "entered ERROR at 1000", "link-suspect", lossy]
        {
            assert!(reason.contains(part), "{part:?} not in {reason:?}");
        }
        assert_eq!(reason, &net_ticket_reason(&out.next, 1_000), "the record alone gives the same reason");
        assert!(out.effects.iter().any(|e| matches!(e, Effect::AlertOperator { .. })), "still alerts");
        assert!(out.next.pending_ack.is_none() && out.next.pending_action.is_none(), "no ack, no action");
        let mut o = out.next;
        // The integration records the ticket: no transition, the state stays ERROR.
        let out = step(&o, &ticket("NET-1", TicketUpdate::Filed), 2_000, &p).expect("filed");
        assert!(out.transition.is_none() && out.effects.is_empty(), "{out:?}");
        o = out.next;
        assert_eq!((o.state, o.attrs.get("ticket").map(String::as_str)), (State::Error, Some("NET-1")));
        // ERROR -> WARNING -> ERROR while the ticket is open: one incident, nothing filed again.
        let out = step(&o, &net_finding(id, Severity::Warning, "3 of 22"), 3_000, &p).expect("warning");
        assert_eq!(out.next.state, State::Warning);
        assert!(tickets_filed(&out).is_empty());
        let out = step(&out.next, &net_finding(id, Severity::Error, lossy), 4_000, &p).expect("error again");
        assert_eq!(out.next.state, State::Error);
        assert!(tickets_filed(&out).is_empty(), "{:?}", out.effects);
        assert_eq!(out.next.attrs.get(TICKET_KEY_ATTR).map(String::as_str), Some("link/agg-1--tor-1@1000"));
        o = out.next;
        // Accepted, part replaced, closed: recorded, never a transition (only localisation moves it).
        for u in [TicketUpdate::Accepted, TicketUpdate::PartReplaced, TicketUpdate::Closed] {
            let out = step(&o, &ticket("NET-1", u), 5_000, &p).expect("update");
            assert!(out.transition.is_none(), "{u:?}: {out:?}");
            assert_eq!(out.next.state, State::Error);
            assert_eq!(out.next.attrs.get("ticket-status").map(String::as_str), Some(u.as_str()));
            // Closing it while the link is still lossy tells an operator.
            assert_eq!(out.effects.len(), usize::from(u == TicketUpdate::Closed), "{u:?}: {:?}", out.effects);
            o = out.next;
        }
        // A different ticket id than the recorded one is refused, as for REPAIR.
        let e = step(&o, &ticket("NET-2", TicketUpdate::Filed), 6_000, &p).expect_err("other ticket");
        assert_eq!(e.code(), "not-applicable");
        // Cleared: GOOD ends the incident (no filing outstanding) but keeps the recorded ticket.
        let out = step(&o, &net_finding(id, Severity::Good, "quiet"), 7_000, &p).expect("good");
        o = out.next;
        assert_eq!(o.state, State::Good);
        assert!(!o.attrs.contains_key(TICKET_KEY_ATTR));
        assert_eq!(o.attrs.get("ticket").map(String::as_str), Some("NET-1"));
        assert!(
            step(&o, &ticket("NET-1", TicketUpdate::Closed), 7_500, &p)
                .expect("late update")
                .effects
                .is_empty()
        );
        // A new incident files a new ticket under a new key and forgets the old one.
        let out = step(&o, &net_finding(id, Severity::Error, lossy), 8_000, &p).expect("new incident");
        assert_eq!(tickets_filed(&out).len(), 1);
        assert_eq!(out.next.attrs.get(TICKET_KEY_ATTR).map(String::as_str), Some("link/agg-1--tor-1@8000"));
        assert!(!out.next.attrs.contains_key("ticket") && !out.next.attrs.contains_key("ticket-status"));
    }

    #[test]
    fn a_closed_ticket_is_not_open_and_an_unfiled_one_is_withdrawn_by_good() {
        let p = Policy::default();
        let id = "switch/tor-7";
        let e = step(&obj(id), &net_finding(id, Severity::Error, "12 of 12"), 10, &p).expect("error").next;
        // Closed while WARNING, then ERROR again: the device is bad again, a new ticket is filed.
        let w = step(&e, &net_finding(id, Severity::Warning, "5 of 12"), 20, &p).expect("warning").next;
        let c = step(&w, &ticket("T-1", TicketUpdate::Closed), 30, &p).expect("closed");
        assert_eq!(c.effects.len(), 1, "closed while WARNING alerts");
        let again = step(&c.next, &net_finding(id, Severity::Error, "12 of 12"), 40, &p).expect("error");
        assert_eq!(
            tickets_filed(&again).iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
            ["switch/tor-7@40"]
        );
        let reason = &tickets_filed(&again)[0].1;
        assert!(
            reason.starts_with("switch/tor-7 (switch tor-7): entered ERROR at 40 by finding"),
            "{reason}"
        );
        // Never filed (the sink was down) and back to GOOD: the filing is withdrawn.
        let g = step(&again.next, &net_finding(id, Severity::Good, "quiet"), 50, &p).expect("good").next;
        assert!(!g.attrs.contains_key(TICKET_KEY_ATTR) && !g.attrs.contains_key("ticket"));
        // Nothing open on a GOOD device: a ticket update is refused.
        let e = step(&g, &ticket("T-9", TicketUpdate::Filed), 60, &p).expect_err("no incident");
        assert_eq!(e.code(), "not-applicable");
        // An operator's force into ERROR is an incident too.
        let force = Input::Operator {
            operator: "erin".into(),
            command: OperatorCommand::Force { to: State::Error, reason: "bad optic".into() },
        };
        let f = step(&g, &force, 70, &p).expect("force");
        assert!(tickets_filed(&f)[0].1.contains("by operator erin force: bad optic"), "{:?}", f.effects);
    }

    /// A device that flaps through GOOD while its incident's ticket is open stays one incident (one ticket);
    /// closing the ticket while it is GOOD ends the incident. Before the rule, each flap filed a ticket.
    #[test]
    fn a_flapping_device_keeps_its_open_ticket_and_a_closed_one_ends_the_incident() {
        let p = Policy::default();
        let id = "link/agg-1--tor-1";
        let lossy = "20 of 22 flows";
        let e = step(&obj(id), &net_finding(id, Severity::Error, lossy), 1_000, &p).expect("error").next;
        let t = step(&e, &ticket("NET-1", TicketUpdate::Accepted), 2_000, &p).expect("ticket").next;
        let g = step(&t, &net_finding(id, Severity::Good, "quiet"), 3_000, &p).expect("good").next;
        assert_eq!(g.attrs.get(TICKET_KEY_ATTR).map(String::as_str), Some("link/agg-1--tor-1@1000"));
        let flap = step(&g, &net_finding(id, Severity::Error, lossy), 4_000, &p).expect("flap");
        assert!(tickets_filed(&flap).is_empty(), "{:?}", flap.effects);
        let alert = flap.effects.iter().find_map(|e| match e {
            Effect::AlertOperator { message, .. } => Some(message.clone()),
            _ => None,
        });
        assert!(alert.as_deref().is_some_and(|m| m.contains("ticket NET-1 is still open: no new ticket")));
        // Updates of the open ticket are taken while GOOD; closing it there ends the incident.
        let g = step(&flap.next, &net_finding(id, Severity::Good, "quiet"), 5_000, &p).expect("good").next;
        let part = step(&g, &ticket("NET-1", TicketUpdate::PartReplaced), 6_000, &p).expect("part").next;
        assert!(part.attrs.contains_key(TICKET_KEY_ATTR));
        let closed = step(&part, &ticket("NET-1", TicketUpdate::Closed), 7_000, &p).expect("closed");
        assert!(closed.effects.is_empty() && !closed.next.attrs.contains_key(TICKET_KEY_ATTR));
        let again = step(&closed.next, &net_finding(id, Severity::Error, lossy), 8_000, &p).expect("again");
        assert_eq!(
            tickets_filed(&again).iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
            ["link/agg-1--tor-1@8000"]
        );
        // The rules of command versions 7-9: the same flap files a second ticket.
        let old = Rules::BEFORE_NET_INCIDENTS;
        let g = step_with(&t, &net_finding(id, Severity::Good, "quiet"), 3_000, &p, old).expect("good").next;
        assert!(!g.attrs.contains_key(TICKET_KEY_ATTR));
        let flap = step_with(&g, &net_finding(id, Severity::Error, lossy), 4_000, &p, old).expect("flap");
        assert_eq!(tickets_filed(&flap).len(), 1);
    }

    #[test]
    fn before_net_tickets_network_devices_file_nothing_and_refuse_tickets() {
        let p = Policy::default();
        let id = "link/agg-1--tor-1";
        let old = Rules::BEFORE_NET_TICKETS;
        let out = step_with(&obj(id), &net_finding(id, Severity::Error, "lossy"), 1, &p, old).expect("error");
        assert!(tickets_filed(&out).is_empty());
        assert!(out.next.attrs.is_empty(), "{:?}", out.next.attrs);
        assert_eq!(out.effects.iter().map(Effect::summary).collect::<Vec<_>>(), ["publish", "alert"]);
        let e = step_with(&out.next, &ticket("T", TicketUpdate::Filed), 2, &p, old).expect_err("refused");
        assert_eq!(e.code(), "not-applicable");
        // Under the newest rules the same ERROR device (entered before them) may get a hand-filed ticket,
        // which becomes its incident's ticket: a return to ERROR files no second one.
        let t = step(&out.next, &ticket("T", TicketUpdate::Filed), 3, &p).expect("recorded").next;
        assert_eq!(t.attrs.get(TICKET_KEY_ATTR).map(String::as_str), Some("link/agg-1--tor-1@1"));
        let w = step(&t, &net_finding(id, Severity::Warning, "less"), 4, &p).expect("warning").next;
        assert!(
            tickets_filed(&step(&w, &net_finding(id, Severity::Error, "lossy"), 5, &p).expect("e"))
                .is_empty()
        );
        // Inventory cannot plant a filing key under the new rules; the old rules knew no such attribute.
        let attrs = BTreeMap::from([(TICKET_KEY_ATTR.to_string(), "x@1".to_string())]);
        let r = Input::Replacement { serial: "S".into(), attrs };
        assert!(!step(&obj(id), &r, 1, &p).expect("r").next.attrs.contains_key(TICKET_KEY_ATTR));
        assert!(step_with(&obj(id), &r, 1, &p, old).expect("r").next.attrs.contains_key(TICKET_KEY_ATTR));
    }
}
