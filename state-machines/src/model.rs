//! The data the state machines work on: the per-object record the master replicates ([`ObjectState`]), the
//! inputs ([`Input`]), what a step produces ([`Outcome`], [`Transition`], [`Cause`], [`Effect`]), the tunables
//! ([`Policy`]) and the errors ([`StepError`]). Everything is serde-serialisable with stable names because the
//! master stores these records in its replicated store and sends them as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::finding::{Finding, Severity};
use crate::id::{Kind, ObjectId};
use crate::table::{State, is_capacity_removing};

/// Longest operator name, subscriber role, ticket id, serial number or action detail accepted in an input.
/// These come from clients; bounding them keeps replicated records small.
pub const MAX_FIELD_LEN: usize = 256;
/// Longest operator reason accepted with a force or approve.
pub const MAX_REASON_LEN: usize = 1024;
/// Most attributes (serial, model, firmware, ...) kept per object; a replacement report with more is refused.
pub const MAX_ATTRS: usize = 32;
/// Most FIX entry times remembered per machine for escalation; older ones beyond this are dropped (the
/// escalation threshold is far below it, see [`Policy::validate`]).
pub const MAX_FIX_HISTORY: usize = 16;

/// Tunables of the state machines. `Default` is a sane production setting; every field has a serde default so
/// a config file may set only what it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Consecutive fault readings needed to enter SLOW/WARNING (or see `enter_hold_ms`).
    pub enter_readings: u32,
    /// ... or a fault streak of at least two readings spanning this long also enters.
    pub enter_hold_ms: u64,
    /// Consecutive healthier readings needed to leave SLOW/WARNING, AND ...
    pub leave_readings: u32,
    /// ... the healthier streak must span at least this long (leaving is stricter than entering).
    pub leave_hold_ms: u64,
    /// A streak whose previous reading is older than this restarts (old readings do not add up with new ones).
    pub streak_gap_ms: u64,
    /// With no fault reading for this long, a SLOW/WARNING object returns to GOOD on a tick (checkers such as
    /// kernel-log only ever report faults, so silence is how they say "healthy").
    pub recover_quiet_ms: u64,
    /// How long a subscriber has to acknowledge (drained / data evacuated) before an operator is alerted.
    pub ack_timeout_ms: u64,
    /// How long an agent action (fix, provision, test) may take before an operator is alerted.
    pub action_timeout_ms: u64,
    /// This many FIX entries of one machine within `fix_window_ms` send the next one to REPAIR instead.
    pub fix_escalate_after: u32,
    pub fix_window_ms: u64,
    /// Subscriber role that must acknowledge "data evacuated" before a disk goes ERROR -> REPAIR.
    pub disk_evacuate_role: String,
    /// Subscriber role that must acknowledge "drained" before a machine/dimm/nic leaves ERROR.
    pub drain_role: String,
    /// The fix a machine gets, chosen by the rule (or, failing that, the checker) that sent it to ERROR.
    pub fix_by_rule: BTreeMap<String, FixAction>,
    /// The fix when no entry of `fix_by_rule` matches.
    pub default_fix: FixAction,
}

impl Default for Policy {
    fn default() -> Self {
        const MIN: u64 = 60_000;
        Policy {
            enter_readings: 3,
            enter_hold_ms: 10 * MIN,
            leave_readings: 6,
            leave_hold_ms: 30 * MIN,
            streak_gap_ms: 30 * MIN,
            recover_quiet_ms: 60 * MIN,
            ack_timeout_ms: 60 * MIN,
            action_timeout_ms: 30 * MIN,
            fix_escalate_after: 3,
            fix_window_ms: 24 * 60 * MIN,
            disk_evacuate_role: "storage".into(),
            drain_role: "scheduler".into(),
            fix_by_rule: [
                ("root-fs-readonly", FixAction::Reboot),
                ("load-runaway", FixAction::RestartService),
                ("hung-task", FixAction::Reboot),
                ("fs-full", FixAction::CleanFs),
                ("disk-full", FixAction::CleanFs),
                ("service-down", FixAction::RestartService),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            default_fix: FixAction::Reboot,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(pub String);

impl Policy {
    /// Reject settings that would make the machines meaningless (zero readings, escalation beyond memory).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |m: &str| Err(PolicyError(m.to_string()));
        if self.enter_readings == 0 || self.leave_readings == 0 {
            return bad("enter_readings and leave_readings must be at least 1");
        }
        if self.fix_escalate_after == 0 || self.fix_escalate_after as usize > MAX_FIX_HISTORY {
            return bad("fix_escalate_after must be 1..=16");
        }
        for role in [&self.disk_evacuate_role, &self.drain_role] {
            if role.is_empty() || role.len() > MAX_FIELD_LEN {
                return bad("subscriber roles must be 1..=256 bytes");
            }
        }
        Ok(())
    }

    /// The fix for a machine that entered ERROR with this evidence.
    pub fn fix_for(&self, evidence: Option<&Evidence>) -> FixAction {
        evidence
            .and_then(|e| self.fix_by_rule.get(&e.rule).or_else(|| self.fix_by_rule.get(&e.checker)))
            .copied()
            .unwrap_or(self.default_fix)
    }
}

/// What a finding said, kept with the transition it caused (a finding without its object id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub checker: String,
    pub version: String,
    pub rule: String,
    pub severity: Severity,
    pub evidence: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub readings: BTreeMap<String, String>,
    pub time_ms: u64,
}

impl Evidence {
    pub fn from_finding(f: &Finding) -> Self {
        let f = f.clone().bounded();
        Evidence {
            checker: f.checker,
            version: f.version,
            rule: f.rule,
            severity: f.severity,
            evidence: f.evidence,
            readings: f.readings,
            time_ms: f.time_ms,
        }
    }
}

/// What a subscriber acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckKind {
    /// The scheduler moved all work off the machine (or off the host of a dimm/nic).
    Drained,
    /// The storage system copied the data elsewhere; the disk may be pulled.
    DataEvacuated,
}

impl AckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AckKind::Drained => "drained",
            AckKind::DataEvacuated => "data-evacuated",
        }
    }
}

impl fmt::Display for AckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a machine in FIX is repaired, by the cause that sent it to ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FixAction {
    RestartService,
    CleanFs,
    Reboot,
}

impl FixAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FixAction::RestartService => "restart-service",
            FixAction::CleanFs => "clean-fs",
            FixAction::Reboot => "reboot",
        }
    }
}

/// An action the agent on the object's host runs for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// FIX: repair the machine by cause.
    Fix { fix: FixAction },
    /// NEWBIE: partition/format/pre-mount a disk, re-clone a machine, bring up a part.
    Provision,
    /// TEST: health checks and a small benchmark.
    Test,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Fix { fix } => write!(f, "fix:{}", fix.as_str()),
            Action::Provision => f.write_str("provision"),
            Action::Test => f.write_str("test"),
        }
    }
}

/// A name that is not an [`Action`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?} (provision, test, fix:restart-service, fix:clean-fs, fix:reboot)")]
pub struct UnknownAction(pub String);

/// For callers that report errors as text.
impl From<UnknownAction> for String {
    fn from(e: UnknownAction) -> String {
        e.to_string()
    }
}

impl std::str::FromStr for Action {
    type Err = UnknownAction;
    /// The names [`Action`]'s `Display` writes: `provision`, `test`, `fix:restart-service`, `fix:clean-fs`,
    /// `fix:reboot`.
    fn from_str(s: &str) -> Result<Self, UnknownAction> {
        Ok(match s {
            "provision" => Action::Provision,
            "test" => Action::Test,
            "fix:restart-service" => Action::Fix { fix: FixAction::RestartService },
            "fix:clean-fs" => Action::Fix { fix: FixAction::CleanFs },
            "fix:reboot" => Action::Fix { fix: FixAction::Reboot },
            other => return Err(UnknownAction(other.to_string())),
        })
    }
}

/// An update from the repair-ticket integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TicketUpdate {
    Filed,
    Accepted,
    PartReplaced,
    Closed,
}

impl TicketUpdate {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketUpdate::Filed => "filed",
            TicketUpdate::Accepted => "accepted",
            TicketUpdate::PartReplaced => "part-replaced",
            TicketUpdate::Closed => "closed",
        }
    }
}

/// What an operator tells one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum OperatorCommand {
    /// Move the object along a LEGAL edge of its table (illegal edges are refused: an operator who needs to
    /// go further takes several steps, each recorded). Entry effects run as for an automatic transition.
    Force { to: State, reason: String },
    /// Stand in for the acknowledgement the object waits for (the subscriber is down or slow).
    Approve { reason: String },
}

/// One input to a state machine. Time is not in here: `step` gets `now_ms` from the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "kebab-case")]
pub enum Input {
    /// A checker's verdict about this object.
    Finding(Finding),
    /// A subscriber acknowledges what the object waits for.
    Ack { role: String, ack: AckKind },
    /// An operator command.
    Operator { operator: String, command: OperatorCommand },
    /// The repair-ticket integration reports progress.
    Ticket { ticket: String, update: TicketUpdate },
    /// The agent reports how an action went.
    ActionResult {
        action: Action,
        success: bool,
        #[serde(default)]
        detail: String,
    },
    /// The agent saw this serial in the slot (with model, firmware, ... in `attrs`). A serial different from
    /// the known one is a replacement.
    Replacement {
        serial: String,
        #[serde(default)]
        attrs: BTreeMap<String, String>,
    },
    /// Time passed (the master ticks objects with deadlines or in SLOW/WARNING).
    Tick,
}

impl Input {
    /// Short name used in errors and transcripts.
    pub fn name(&self) -> &'static str {
        match self {
            Input::Finding(_) => "finding",
            Input::Ack { .. } => "ack",
            Input::Operator { command: OperatorCommand::Force { .. }, .. } => "force",
            Input::Operator { command: OperatorCommand::Approve { .. }, .. } => "approve",
            Input::Ticket { .. } => "ticket",
            Input::ActionResult { .. } => "result",
            Input::Replacement { .. } => "replacement",
            Input::Tick => "tick",
        }
    }
}

/// Why a transition happened. Every transition has exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum Cause {
    /// A finding (the last reading of a streak for hysteresis transitions); its details are the evidence.
    Finding { checker: String, version: String, rule: String, severity: Severity },
    /// The named subscriber role acknowledged.
    Ack { role: String, ack: AckKind },
    /// An operator forced the transition or approved in place of an ack.
    Operator { operator: String, command: String, reason: String },
    /// A ticket update.
    Ticket { ticket: String, update: TicketUpdate },
    /// An agent action's result.
    Action { action: Action, success: bool, detail: String },
    /// A new serial in the slot.
    Replacement { old_serial: Option<String>, new_serial: String },
    /// Time passed: the condition stopped holding (`what` says which).
    Timeout { what: String },
    /// A drained machine went to REPAIR instead of FIX: `attempts` FIX entries within `window_ms`. `by` is
    /// what released it from ERROR (an ack or an operator approve).
    FixEscalation { attempts: u32, window_ms: u64, by: Box<Cause> },
}

impl Cause {
    /// Short name: finding, ack, operator, ticket, action, replacement, timeout, fix-escalation.
    pub fn name(&self) -> &'static str {
        match self {
            Cause::Finding { .. } => "finding",
            Cause::Ack { .. } => "ack",
            Cause::Operator { .. } => "operator",
            Cause::Ticket { .. } => "ticket",
            Cause::Action { .. } => "action",
            Cause::Replacement { .. } => "replacement",
            Cause::Timeout { .. } => "timeout",
            Cause::FixEscalation { .. } => "fix-escalation",
        }
    }
}

/// One state change, as stored in the object's history and published to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub object: ObjectId,
    pub from: State,
    pub to: State,
    pub cause: Cause,
    /// The finding behind it, when a finding caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    pub time_ms: u64,
}

impl Transition {
    pub fn removes_capacity(&self) -> bool {
        is_capacity_removing(self.from, self.to)
    }
}

/// What the master must do after storing an outcome. Effects are only produced together with a transition or
/// an escalation; executing them twice must be harmless (tickets carry an idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "kebab-case")]
pub enum Effect {
    /// Tell subscribers about the transition (every transition has exactly one).
    Publish { object: ObjectId, from: State, to: State },
    /// Wait for `role` to acknowledge `ack` by `deadline_ms`; after it an operator is alerted.
    RequestAck { object: ObjectId, role: String, ack: AckKind, deadline_ms: u64 },
    /// File a repair ticket. `idempotency_key` is the same for every retry of this filing.
    FileTicket { object: ObjectId, reason: String, idempotency_key: String },
    /// Run `action` on the agent of `host` for `object`.
    RunAction { object: ObjectId, host: String, action: Action },
    /// Page an operator (ack or action timeout, unexpected event).
    AlertOperator { object: ObjectId, message: String },
}

impl Effect {
    /// One-line canonical summary, used by transcripts: `publish`, `request-ack ROLE ACK`, `file-ticket`,
    /// `run ACTION`, `alert`.
    pub fn summary(&self) -> String {
        match self {
            Effect::Publish { .. } => "publish".into(),
            Effect::RequestAck { role, ack, .. } => format!("request-ack {role} {ack}"),
            Effect::FileTicket { .. } => "file-ticket".into(),
            Effect::RunAction { action, .. } => format!("run {action}"),
            Effect::AlertOperator { .. } => "alert".into(),
        }
    }
}

/// An acknowledgement the object waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAck {
    pub role: String,
    pub ack: AckKind,
    pub requested_ms: u64,
    pub deadline_ms: u64,
    /// The operator was alerted about the missed deadline (once).
    pub escalated: bool,
}

/// An agent action whose result the object waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAction {
    pub action: Action,
    pub requested_ms: u64,
    pub deadline_ms: u64,
    pub escalated: bool,
}

/// A run of consecutive readings pointing at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streak {
    pub target: State,
    pub count: u32,
    pub since_ms: u64,
    pub last_ms: u64,
}

/// Hysteresis counters of an in-service object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hysteresis {
    /// Fault readings toward a worse state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worse: Option<Streak>,
    /// Healthier readings toward a better state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub better: Option<Streak>,
    /// Time of the last reading at or above the current state's level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fault_ms: Option<u64>,
}

impl Hysteresis {
    /// Nothing recorded: what a new object has (left out of its stored JSON). Compared with the default as
    /// a whole, so a field added later can never be dropped from a record by a stale check.
    pub fn is_empty(&self) -> bool {
        *self == Hysteresis::default()
    }
}

/// The replicated record of one object. A field at its default is left out of the JSON (every reader since
/// the first release defaults it): a quiet object's stored record is about half as long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState {
    pub id: ObjectId,
    pub state: State,
    /// When the object entered `state`.
    pub since_ms: u64,
    /// The latest grade a checker gave (not UNKNOWN/INFO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<Severity>,
    /// serial, model, firmware, capacity, ticket, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
    /// The finding behind the latest finding-caused transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evidence: Option<Evidence>,
    /// The cause of the latest transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cause: Option<Cause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_ack: Option<PendingAck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_action: Option<PendingAction>,
    #[serde(default, skip_serializing_if = "Hysteresis::is_empty")]
    pub hysteresis: Hysteresis,
    /// Times this machine entered FIX (newest last, at most [`MAX_FIX_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fix_history_ms: Vec<u64>,
}

impl ObjectState {
    /// A new object: GOOD since `now_ms`. Objects registered from an inventory but never reported on also
    /// start GOOD: absence of findings is not evidence of a fault (a silent agent is the master's liveness
    /// concern, not a state of the object), and starting them anywhere else would remove capacity without a
    /// cause. A new part reported as a *replacement* goes through NEWBIE and TEST instead.
    pub fn new(id: ObjectId, now_ms: u64) -> Self {
        ObjectState {
            id,
            state: State::Good,
            since_ms: now_ms,
            grade: None,
            attrs: BTreeMap::new(),
            last_evidence: None,
            last_cause: None,
            pending_ack: None,
            pending_action: None,
            hysteresis: Hysteresis::default(),
            fix_history_ms: Vec::new(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.id.kind()
    }

    /// The serial number known for this slot, if any.
    pub fn serial(&self) -> Option<&str> {
        self.attrs.get("serial").map(String::as_str)
    }

    /// The earliest time at which a `Tick` could change this object (a deadline or the quiet recovery), so
    /// the master knows when to tick it; `None` if ticking is pointless.
    pub fn next_deadline_ms(&self, policy: &Policy) -> Option<u64> {
        let mut d: Option<u64> = None;
        let mut add = |t: u64| d = Some(d.map_or(t, |x: u64| x.min(t)));
        if let Some(a) = self.pending_ack.as_ref().filter(|a| !a.escalated) {
            add(a.deadline_ms);
        }
        if let Some(a) = self.pending_action.as_ref().filter(|a| !a.escalated) {
            add(a.deadline_ms);
        }
        if matches!(self.state, State::Slow | State::Warning) {
            let last = self.hysteresis.last_fault_ms.unwrap_or(self.since_ms);
            add(last.saturating_add(policy.recover_quiet_ms));
        }
        d
    }
}

/// The result of one step. When `transition` is `None` the state is unchanged (counters, attributes or
/// escalation flags may still change: store `next`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub next: ObjectState,
    pub transition: Option<Transition>,
    pub effects: Vec<Effect>,
}

impl Outcome {
    /// Whether applying this outcome needs quota admission (a transition into ERROR, FIX or REPAIR).
    pub fn removes_capacity(&self) -> bool {
        self.transition.as_ref().is_some_and(Transition::removes_capacity)
    }

    /// Whether anything at all changed (if not, the master need not write anything).
    pub fn changed(&self, prev: &ObjectState) -> bool {
        self.transition.is_some() || !self.effects.is_empty() || &self.next != prev
    }
}

/// An input that does not apply. Nothing changes; the master returns the message to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("{0}: objects of kind checker have no state machine (their findings are recorded only)")]
    NoStateMachine(ObjectId),
    #[error("input is about {got}, not about {expected}")]
    WrongObject { expected: ObjectId, got: ObjectId },
    #[error("{object} is {state} and waits for no acknowledgement")]
    NoPendingAck { object: ObjectId, state: State },
    #[error("{object} waits for {expected_ack} from {expected_role}, got {got_ack} from {got_role}")]
    WrongAck {
        object: ObjectId,
        expected_role: String,
        expected_ack: AckKind,
        got_role: String,
        got_ack: AckKind,
    },
    #[error("{kind} has no edge {from} -> {to}")]
    IllegalEdge { kind: Kind, from: State, to: State },
    #[error("{object} is {state}; {input} does not apply in this state ({why})")]
    NotApplicable { object: ObjectId, state: State, input: &'static str, why: &'static str },
    #[error("{field} must be 1..={max} bytes")]
    BadField { field: &'static str, max: usize },
    #[error("{0}")]
    Policy(#[from] PolicyError),
}

impl StepError {
    /// Stable short code (used by transcripts and by the master's JSON errors).
    pub fn code(&self) -> &'static str {
        match self {
            StepError::NoStateMachine(_) => "no-state-machine",
            StepError::WrongObject { .. } => "wrong-object",
            StepError::NoPendingAck { .. } => "no-pending-ack",
            StepError::WrongAck { .. } => "wrong-ack",
            StepError::IllegalEdge { .. } => "illegal-edge",
            StepError::NotApplicable { .. } => "not-applicable",
            StepError::BadField { .. } => "bad-field",
            StepError::Policy(_) => "bad-policy",
        }
    }
}
