//! Request fields as both front ends receive them (strings from protobuf messages, JSON bodies and query
//! strings) parsed into domain values: listing filters, object commands, proposal filters and decisions,
//! quota limits. The gRPC and REST adapters call these, so a field means the same on both and a bad one is
//! refused with the same message.

use proto::error::ApiError;
use state_machines::{AckKind, Input, OperatorCommand, TicketUpdate};

use super::validate;
use crate::model::MAX_TEXT_LEN;
use crate::safety::{Level, ProposalFilter, ProposalStatus, QuotaRule};
use crate::store::Filter;

/// A listing/watch filter from request strings (empty = any); labels are `key=value` selectors.
pub fn filter(kind: &str, state: &str, host: &str, labels: &[String]) -> Result<Filter, ApiError> {
    let kind = if kind.is_empty() {
        None
    } else {
        Some(kind.parse::<state_machines::Kind>().map_err(|e| ApiError::invalid(e.to_string()))?)
    };
    let state = if state.is_empty() {
        None
    } else {
        Some(
            state
                .parse::<state_machines::State>()
                .map_err(|e| ApiError::invalid(e.to_string()))?
                .as_str()
                .to_string(),
        )
    };
    let host = if host.is_empty() {
        None
    } else {
        validate::host(host)?;
        Some(host.to_string())
    };
    let labels = labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ApiError::invalid(format!("label selector {l:?} is not key=value")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Filter { kind, state, host, labels })
}

/// An object command as both front ends carry it (`POST /api/v1/commands`, the gRPC `Command` call).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectCommand {
    /// ack | force | approve | ticket | result
    pub kind: String,
    pub name: String,
    pub value: String,
    pub by: String,
    pub reason: String,
    pub success: bool,
}

/// The state machine input for an object command (`kind`: ack, force, approve, ticket, result).
pub fn object_input(c: &ObjectCommand) -> Result<Input, ApiError> {
    validate::name("name", &c.name, MAX_TEXT_LEN)?;
    validate::name("value", &c.value, MAX_TEXT_LEN)?;
    validate::name("by", &c.by, MAX_TEXT_LEN)?;
    validate::text("reason", &c.reason, validate::MAX_DETAIL_LEN)?;
    let need = |what: &str, v: &str| {
        if v.is_empty() { Err(ApiError::invalid(format!("{} needs {what}", c.kind))) } else { Ok(()) }
    };
    let by = || if c.by.is_empty() { "operator".to_string() } else { c.by.clone() };
    Ok(match c.kind.as_str() {
        "ack" => {
            let ack = match c.name.as_str() {
                "drained" => AckKind::Drained,
                "data-evacuated" | "evacuated" => AckKind::DataEvacuated,
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown ack {other:?} (expected drained or data-evacuated)"
                    )));
                }
            };
            need("a subscriber role in `by`", &c.by)?;
            Input::Ack { role: c.by.clone(), ack }
        }
        "force" => {
            let to =
                c.value.parse::<state_machines::State>().map_err(|e| ApiError::invalid(e.to_string()))?;
            need("a reason", &c.reason)?;
            Input::Operator {
                operator: by(),
                command: OperatorCommand::Force { to, reason: c.reason.clone() },
            }
        }
        "approve" => {
            need("a reason", &c.reason)?;
            Input::Operator { operator: by(), command: OperatorCommand::Approve { reason: c.reason.clone() } }
        }
        "ticket" => {
            need("a ticket id in `name`", &c.name)?;
            let update = match c.value.as_str() {
                "filed" => TicketUpdate::Filed,
                "accepted" => TicketUpdate::Accepted,
                "part-replaced" => TicketUpdate::PartReplaced,
                "closed" => TicketUpdate::Closed,
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown ticket update {other:?} (expected filed, accepted, part-replaced or closed)"
                    )));
                }
            };
            Input::Ticket { ticket: c.name.clone(), update }
        }
        "result" | "action_result" => {
            let action = match c.name.as_str() {
                "provision" => state_machines::Action::Provision,
                "test" => state_machines::Action::Test,
                fix => {
                    let fix = match fix.strip_prefix("fix:").unwrap_or(fix) {
                        "restart-service" => state_machines::FixAction::RestartService,
                        "clean-fs" => state_machines::FixAction::CleanFs,
                        "reboot" => state_machines::FixAction::Reboot,
                        other => {
                            return Err(ApiError::invalid(format!(
                                "unknown action {other:?} (expected provision, test, fix:restart-service, \
                                 fix:clean-fs or fix:reboot)"
                            )));
                        }
                    };
                    state_machines::Action::Fix { fix }
                }
            };
            Input::ActionResult { action, success: c.success, detail: c.reason.clone() }
        }
        other => {
            return Err(ApiError::invalid(format!(
                "unknown command kind {other:?} (expected ack, force, approve, ticket or result)"
            )));
        }
    })
}

/// A proposal filter from request fields (empty = any).
pub fn proposal_filter(
    scope: &str,
    kind: &str,
    host: &str,
    checker: &str,
) -> Result<ProposalFilter, ApiError> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let kind = match kind {
        "" => None,
        k => Some(k.parse().map_err(|_| ApiError::invalid(format!("unknown kind {k:?}")))?),
    };
    Ok(ProposalFilter { scope: opt(scope), kind, host: opt(host), checker: opt(checker) })
}

/// A proposal status from a request (`""` means pending; `all` means any).
pub fn proposal_status(s: &str) -> Result<Option<ProposalStatus>, ApiError> {
    Ok(Some(match s {
        "" | "pending" => ProposalStatus::Pending,
        "all" => return Ok(None),
        "approved" => ProposalStatus::Approved,
        "rejected" => ProposalStatus::Rejected,
        "stale" => ProposalStatus::Stale,
        "applied" => ProposalStatus::Applied,
        other => {
            return Err(ApiError::invalid(format!(
                "unknown proposal status {other:?} (pending, approved, rejected, stale, applied, all)"
            )));
        }
    }))
}

/// `approve` -> true, `reject` -> false.
pub fn decision(s: &str) -> Result<bool, ApiError> {
    match s {
        "approve" => Ok(true),
        "reject" => Ok(false),
        other => Err(ApiError::invalid(format!("decision {other:?}: approve or reject"))),
    }
}

/// An operating level by name.
pub fn level(s: &str) -> Result<Level, ApiError> {
    s.parse().map_err(|e: crate::safety::SafetyError| ApiError::invalid(e))
}

/// A quota rule whose limits arrive as text (`"3"` or `"1%"`, as the gRPC message carries them).
pub fn quota_rule(
    kind: String,
    scope: String,
    window_ms: u64,
    max_entries: &str,
    max_concurrent: &str,
) -> Result<QuotaRule, ApiError> {
    Ok(QuotaRule {
        kind,
        scope,
        window_ms,
        max_entries: max_entries.parse().map_err(ApiError::invalid)?,
        max_concurrent: max_concurrent.parse().map_err(ApiError::invalid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_refuse_control_characters() {
        let c = |kind: &str, name: &str, by: &str| ObjectCommand {
            kind: kind.into(),
            name: name.into(),
            by: by.into(),
            reason: "r".into(),
            ..Default::default()
        };
        assert!(matches!(object_input(&c("ack", "drained", "sched")), Ok(Input::Ack { .. })));
        assert!(object_input(&c("ack", "drained", "")).is_err(), "an ack names its role");
        assert!(object_input(&c("ack", "bribed", "sched")).is_err());
        assert!(object_input(&c("ticket", "T\n1", "x")).expect_err("newline").message.contains("control"));
        assert!(object_input(&c("nope", "", "x")).expect_err("kind").message.contains("unknown command"));
        let detail = |n: usize| ObjectCommand { reason: "r".repeat(n), ..c("result", "test", "agent") };
        assert!(object_input(&detail(validate::MAX_DETAIL_LEN)).is_ok(), "an action report at the limit");
        assert!(
            object_input(&detail(validate::MAX_DETAIL_LEN + 1)).expect_err("over").message.contains("limit")
        );
        let long_by = ObjectCommand { by: "o".repeat(MAX_TEXT_LEN + 1), ..c("approve", "", "ops") };
        assert!(object_input(&long_by).is_err());
    }

    #[test]
    fn filters() {
        assert!(filter("disk", "ERROR", "h1", &["rack=r1".into()]).is_ok());
        assert!(filter("gpu", "", "", &[]).is_err());
        assert!(filter("", "MELTED", "", &[]).is_err());
        assert!(filter("", "", "", &["rack".into()]).is_err());
        assert_eq!(proposal_status("all").expect("all"), None);
        assert!(proposal_status("maybe").is_err());
        assert!(decision("approve").expect("approve"));
        assert!(decision("yes").is_err());
    }
}
