//! The master's seam to the pure per-object state machines (`state-machines` crate): the step function and
//! types the fsm uses, naming helpers for the APIs, error codes and texts. The admission every transition
//! passes before it is stored (levels, quotas, spikes) is `fsm/safety.rs`'s `admit`, over the records of
//! `safety.rs`.

pub use state_machines::{Input, ObjectState, Outcome, Policy, Rules, StepError};

use proto::error::Code;
use state_machines::{Cause, Effect};

/// The state-machine rules the replicated `min_command_version` enables. Apply reads it from the replicated
/// state, so every member steps an entry under the same rules whatever binary it runs (the upgrade
/// procedure raises the version only once every member knows it): `Rules::net_tickets` from
/// [`crate::model::NET_TICKET_COMMAND_VERSION`], `Rules::net_incident_until_closed` from
/// [`crate::model::NET_INCIDENT_COMMAND_VERSION`].
pub fn rules_at(min_command_version: u64) -> Rules {
    let at = |v: u32| min_command_version >= u64::from(v);
    Rules {
        net_tickets: at(crate::model::NET_TICKET_COMMAND_VERSION),
        net_incident_until_closed: at(crate::model::NET_INCIDENT_COMMAND_VERSION),
    }
}

/// One step of an object's state machine under `rules` (see [`rules_at`]).
pub fn step(
    obj: &ObjectState,
    input: &Input,
    now_ms: u64,
    policy: &Policy,
    rules: Rules,
) -> Result<Outcome, StepError> {
    state_machines::step_with(obj, input, now_ms, policy, rules)
}

/// The state's name as the APIs show it (`GOOD`, `ERROR`, ...).
pub fn state_name(s: &ObjectState) -> &'static str {
    s.state.as_str()
}

/// The grade as the APIs show it; empty when no checker graded the object yet.
pub fn grade_name(s: &ObjectState) -> &'static str {
    s.grade.map(|g| g.as_str()).unwrap_or("")
}

/// The API error code for a state machine refusal.
pub fn step_error_code(e: &StepError) -> Code {
    match e {
        StepError::BadField { .. } | StepError::WrongObject { .. } | StepError::Policy(_) => {
            Code::InvalidArgument
        }
        StepError::NoStateMachine(_)
        | StepError::NoPendingAck { .. }
        | StepError::WrongAck { .. }
        | StepError::IllegalEdge { .. }
        | StepError::NotApplicable { .. } => Code::Conflict,
    }
}

/// One line for history and events: who or what caused a transition.
pub fn cause_text(c: &Cause) -> String {
    match c {
        Cause::Finding { checker, version, rule, severity } => {
            format!("finding {checker}@{version} {rule} {severity}")
        }
        Cause::Ack { role, ack } => format!("ack {ack} by {role}"),
        Cause::Operator { operator, command, reason } => format!("operator {operator} {command}: {reason}"),
        Cause::Ticket { ticket, update } => format!("ticket {ticket} {}", update.as_str()),
        Cause::Action { action, success, detail } => {
            format!("action {action} {}{}", if *success { "ok" } else { "failed" }, opt_detail(detail))
        }
        Cause::Replacement { old_serial, new_serial } => {
            format!("replacement {} -> {new_serial}", old_serial.as_deref().unwrap_or("(none)"))
        }
        Cause::Timeout { what } => format!("timeout: {what}"),
        Cause::FixEscalation { attempts, window_ms, by } => {
            format!(
                "fix escalation after {attempts} fixes in {window_ms} ms (released by {})",
                cause_text(by)
            )
        }
    }
}

fn opt_detail(d: &str) -> String {
    if d.is_empty() { String::new() } else { format!(": {d}") }
}

/// Effects as one line (`publish; file-ticket; run provision`), recorded in history until the effect
/// executors (tickets, agent actions) consume them.
pub fn effects_text(effects: &[Effect]) -> String {
    effects.iter().map(Effect::summary).collect::<Vec<_>>().join("; ")
}
