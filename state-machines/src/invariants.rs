//! The invariants of the state machines, written once as predicates and reused: `step` debug-asserts them,
//! the property tests and transcript runner check them after every step, and the master and the simulation
//! can call them on what they store (e.g. `check_admitted` before applying an outcome).
//!
//! - only legal edges: every transition is an edge of its kind's table;
//! - every transition has a complete cause (who or what, and why);
//! - a step either makes exactly one transition (state, `since_ms`, one `Publish`) or leaves the state alone;
//! - waits are consistent with the state (acks only in ERROR, actions only in FIX/NEWBIE/TEST);
//! - no capacity-removing transition is applied without quota admission.

use crate::id::Kind;
use crate::model::{Cause, Effect, MAX_FIX_HISTORY, ObjectState, Outcome, Transition};
use crate::table::{State, is_legal_edge, state_machine_for};

/// A broken invariant, with enough detail to find the bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("{kind} has no edge {from} -> {to}")]
    IllegalEdge { kind: Kind, from: State, to: State },
    #[error("{kind} has no state {state}")]
    ForeignState { kind: Kind, state: State },
    #[error("transition has an incomplete cause: {0}")]
    IncompleteCause(String),
    #[error("outcome is inconsistent: {0}")]
    Inconsistent(String),
    #[error("capacity-removing transition {from} -> {to} applied without quota admission")]
    Unadmitted { from: State, to: State },
}

/// Only legal edges (re-exported predicate, same table as `step`).
pub fn legal_edge(kind: Kind, from: State, to: State) -> bool {
    is_legal_edge(kind, from, to)
}

/// Whether a cause names who or what caused the transition and why (no empty names or reasons).
pub fn cause_is_complete(cause: &Cause) -> bool {
    match cause {
        Cause::Finding { checker, version, rule, .. } => {
            !checker.is_empty() && !version.is_empty() && !rule.is_empty()
        }
        Cause::Ack { role, .. } => !role.is_empty(),
        Cause::Operator { operator, command, reason } => {
            !operator.is_empty() && !command.is_empty() && !reason.is_empty()
        }
        Cause::Ticket { ticket, .. } => !ticket.is_empty(),
        Cause::Action { .. } => true,
        Cause::Replacement { new_serial, .. } => !new_serial.is_empty(),
        Cause::Timeout { what } => !what.is_empty(),
        Cause::FixEscalation { attempts, by, .. } => *attempts > 0 && cause_is_complete(by),
    }
}

/// One transition on its own: a legal edge of its object's kind with a complete cause.
pub fn check_transition(t: &Transition) -> Result<(), Violation> {
    let kind = t.object.kind();
    if !legal_edge(kind, t.from, t.to) {
        return Err(Violation::IllegalEdge { kind, from: t.from, to: t.to });
    }
    if !cause_is_complete(&t.cause) {
        return Err(Violation::IncompleteCause(format!("{:?}", t.cause)));
    }
    Ok(())
}

/// A sequence of transitions of one object chains (each starts where the previous ended) and each is valid.
/// Times are not required to grow: `now_ms` comes from whichever master node leads, and clocks may lag.
pub fn check_history(history: &[Transition]) -> Result<(), Violation> {
    for (i, t) in history.iter().enumerate() {
        check_transition(t)?;
        if let Some(prev) = i.checked_sub(1).map(|j| &history[j])
            && (prev.to != t.from || prev.object != t.object)
        {
            return Err(Violation::Inconsistent(format!("history breaks at entry {i}")));
        }
    }
    Ok(())
}

/// A step's outcome against the record it was computed from.
pub fn check_outcome(prev: &ObjectState, out: &Outcome) -> Result<(), Violation> {
    let bad = |m: String| Err(Violation::Inconsistent(m));
    let next = &out.next;
    let kind = prev.id.kind();
    if next.id != prev.id {
        return bad(format!("object changed from {} to {}", prev.id, next.id));
    }
    if let Some(m) = state_machine_for(kind) {
        if !m.has_state(next.state) {
            return Err(Violation::ForeignState { kind, state: next.state });
        }
    } else if out.transition.is_some() || next.state != prev.state {
        return bad(format!("{kind} objects have no state machine"));
    }
    let publishes = out.effects.iter().filter(|e| matches!(e, Effect::Publish { .. })).count();
    match &out.transition {
        Some(t) => {
            check_transition(t)?;
            if t.object != prev.id || t.from != prev.state || t.to != next.state || next.since_ms != t.time_ms
            {
                return bad(format!("transition {} -> {} does not match the records", t.from, t.to));
            }
            if next.last_cause.as_ref() != Some(&t.cause) {
                return bad("last_cause is not the transition's cause".into());
            }
            let published = out.effects.iter().any(
                |e| matches!(e, Effect::Publish { object, from, to } if *object == t.object && *from == t.from && *to == t.to),
            );
            if publishes != 1 || !published {
                return bad("a transition must be published exactly once".into());
            }
        }
        None => {
            if next.state != prev.state || next.since_ms != prev.since_ms || publishes != 0 {
                return bad("state changed (or was published) without a transition".into());
            }
        }
    }
    if next.pending_ack.is_some() && next.state != State::Error {
        return bad(format!("waiting for an ack in {}", next.state));
    }
    if next.pending_action.is_some() && !matches!(next.state, State::Fix | State::Newbie | State::Test) {
        return bad(format!("waiting for an action in {}", next.state));
    }
    if next.fix_history_ms.len() > MAX_FIX_HISTORY {
        return bad("fix history over its limit".into());
    }
    for e in &out.effects {
        let object = match e {
            Effect::Publish { object, .. }
            | Effect::RequestAck { object, .. }
            | Effect::FileTicket { object, .. }
            | Effect::RunAction { object, .. }
            | Effect::AlertOperator { object, .. } => object,
        };
        if *object != prev.id {
            return bad(format!("effect about another object: {}", e.summary()));
        }
    }
    Ok(())
}

/// No capacity-removing transition without quota admission: the master calls this with its quota decision
/// before applying an outcome (an unadmitted outcome may only be kept as a pending proposal).
pub fn check_admitted(out: &Outcome, admitted: bool) -> Result<(), Violation> {
    match &out.transition {
        Some(t) if t.removes_capacity() && !admitted => Err(Violation::Unadmitted { from: t.from, to: t.to }),
        _ => Ok(()),
    }
}
