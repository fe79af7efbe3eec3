//! What the SDK hands to subscribers: objects, changes and acknowledgement results as typed values
//! (`ObjectId`, `State`, `Severity`, `AckKind` from `state-machines`). An object arrives as the wire's
//! `api::Object`, becomes the one API view (`proto::view::ObjectView`, through `proto::convert`) and is
//! typed here; a change is typed from the wire event. A conversion never panics: anything the SDK cannot
//! read is an [`Error::Protocol`] naming the field.

use std::collections::BTreeMap;

use proto::api;
use proto::view::ObjectView;
use state_machines::{AckKind, ObjectId, Severity, State};

use crate::error::Error;

/// An acknowledgement the object waits for (a disk in ERROR waits for `data-evacuated` from the storage
/// role; a machine for `drained` from the scheduler role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingAck {
    pub ack: AckKind,
    /// The subscriber role that must acknowledge.
    pub role: String,
    /// After this time (ms since the epoch, master clock) an operator is alerted.
    pub deadline_ms: u64,
    /// The deadline passed and an operator was alerted; the ack is still accepted.
    pub escalated: bool,
}

/// One object as the master sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub id: ObjectId,
    pub state: State,
    /// The latest grade a checker gave; `None` before any.
    pub grade: Option<Severity>,
    pub state_since_ms: u64,
    pub labels: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, String>,
    /// Revision of the last change to this object.
    pub revision: u64,
    /// Set while the object waits for a subscriber's acknowledgement.
    pub waiting: Option<WaitingAck>,
    /// The whole view the master answered with (evidence, history counters, pending agent action, ...).
    pub view: ObjectView,
}

impl Object {
    /// Whether this object waits for `ack` from `role`.
    pub fn waits_for(&self, role: &str, ack: AckKind) -> bool {
        self.waiting.as_ref().is_some_and(|w| w.role == role && w.ack == ack)
    }
}

/// One change, as the watch stream delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub time_ms: u64,
    /// `None` only for cluster-level events without an object (e.g. an agent on an invalid host name).
    pub object: Option<ObjectId>,
    /// finding | transition | register | ack | operator | ticket | action_result | agent | tick | held | ...
    pub what: String,
    /// The object's state after the change (`None` for events about agents).
    pub state: Option<State>,
    /// The state left, on transitions.
    pub from_state: Option<State>,
    pub grade: Option<Severity>,
    pub detail: String,
}

impl Change {
    pub fn is_transition(&self) -> bool {
        self.from_state.is_some()
    }
}

/// A complete listing, read a page at a time: every object matching the filter and the revision the
/// listing started at (its first page's). Objects on later pages may carry their own `revision` past it:
/// watch with [`crate::Subscriber::watch_listing`] (from `revision + 1`, dropping the changes the listing
/// already shows) for no gap and no duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub objects: Vec<Object>,
    pub revision: u64,
    /// Pages the listing took.
    pub pages: u32,
}

impl Listing {
    /// The watch dedupe this listing needs (see [`crate::resume::Floors`]).
    pub fn floors(&self) -> crate::resume::Floors {
        crate::resume::Floors::new(self.revision, self.objects.iter().map(|o| (o.id.to_string(), o.revision)))
    }
}

/// One object with its history.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDetail {
    pub object: Object,
    pub history: Vec<api::HistoryEntry>,
    pub revision: u64,
}

/// An accepted acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The cluster revision after the acknowledgement.
    pub revision: u64,
    /// The object's state afterwards (REPAIR for a disk, FIX or REPAIR for a machine; unchanged if held).
    pub state: State,
    pub transitioned: bool,
    /// The safety net (manual drive or a quota) held the transition the acknowledgement released: it waits
    /// as a proposal for an operator.
    pub held: Option<Held>,
}

/// Why a transition was held, and the proposal an operator decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub reason: String,
    pub proposal: u64,
}

fn bad(field: &str, value: &str, e: impl std::fmt::Display) -> Error {
    let value: String = value.chars().take(80).collect();
    Error::Protocol(format!("{field} {value:?}: {e}"))
}

/// `drained` | `data-evacuated` (the names `AckKind::as_str` gives and the master's Command takes).
pub fn parse_ack(s: &str) -> Result<AckKind, Error> {
    match s {
        "drained" => Ok(AckKind::Drained),
        "data-evacuated" => Ok(AckKind::DataEvacuated),
        other => Err(Error::Invalid(format!(
            "unknown acknowledgement {:?} (expected drained or data-evacuated)",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

fn opt_state(field: &str, s: &str) -> Result<Option<State>, Error> {
    if s.is_empty() { Ok(None) } else { s.parse().map(Some).map_err(|e| bad(field, s, e)) }
}

fn opt_grade(s: &str) -> Result<Option<Severity>, Error> {
    if s.is_empty() { Ok(None) } else { s.parse().map(Some).map_err(|e| bad("grade", s, e)) }
}

impl TryFrom<api::Object> for Object {
    type Error = Error;
    fn try_from(o: api::Object) -> Result<Object, Error> {
        let view = proto::convert::object_from_wire(o).map_err(|e| Error::Protocol(e.message))?;
        Object::try_from(view)
    }
}

impl TryFrom<ObjectView> for Object {
    type Error = Error;
    fn try_from(o: ObjectView) -> Result<Object, Error> {
        let id: ObjectId = o.id.parse().map_err(|e| bad("object id", &o.id, e))?;
        let state = o.state.parse().map_err(|e| bad("state", &o.state, e))?;
        let grade = opt_grade(&o.grade)?;
        let waiting = if o.waiting_ack.is_empty() {
            None
        } else {
            let ack = parse_ack(&o.waiting_ack).map_err(|e| bad("waiting_ack", &o.waiting_ack, e))?;
            Some(WaitingAck {
                ack,
                role: o.waiting_role.clone(),
                deadline_ms: o.ack_deadline_ms,
                escalated: o.ack_escalated,
            })
        };
        Ok(Object {
            id,
            state,
            grade,
            state_since_ms: o.state_since_ms,
            labels: o.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            attributes: o.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            revision: o.revision,
            waiting,
            view: o,
        })
    }
}

impl TryFrom<api::Event> for Change {
    type Error = Error;
    fn try_from(e: api::Event) -> Result<Change, Error> {
        let object = if e.object.is_empty() {
            None
        } else {
            Some(e.object.parse().map_err(|x| bad("object", &e.object, x))?)
        };
        Ok(Change {
            revision: e.revision,
            time_ms: e.time_ms,
            object,
            state: opt_state("state", &e.state)?,
            from_state: opt_state("from_state", &e.from_state)?,
            grade: opt_grade(&e.grade)?,
            what: e.what,
            detail: e.detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn wire_object(id: &str, state: &str) -> api::Object {
        api::Object {
            id: id.into(),
            kind: id.split('/').next().unwrap_or("").into(),
            state: state.into(),
            grade: "ERROR".into(),
            revision: 7,
            waiting_ack: "data-evacuated".into(),
            waiting_role: "storage".into(),
            ack_deadline_ms: 99,
            labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn objects_convert_with_their_pending_ack() {
        let o = Object::try_from(wire_object("disk/h1/sda", "ERROR")).expect("valid");
        assert_eq!(o.state, State::Error);
        assert_eq!(o.grade, Some(Severity::Error));
        assert!(o.waits_for("storage", AckKind::DataEvacuated));
        assert!(!o.waits_for("scheduler", AckKind::DataEvacuated));
        assert!(!o.waits_for("storage", AckKind::Drained));
        assert_eq!(o.labels["rack"], "r1");
        let mut w = wire_object("disk/h1/sda", "GOOD");
        w.waiting_ack.clear();
        assert_eq!(Object::try_from(w).expect("valid").waiting, None);
    }

    #[test]
    fn malformed_answers_are_protocol_errors_naming_the_field() {
        for (field, obj) in [
            ("object id", wire_object("disk/h1", "ERROR")),
            ("state", wire_object("disk/h1/sda", "MELTED")),
            ("waiting_ack", api::Object { waiting_ack: "bribed".into(), ..wire_object("disk/h/a", "ERROR") }),
            ("grade", api::Object { grade: "\u{0}\u{1}".into(), ..wire_object("disk/h/a", "ERROR") }),
        ] {
            match Object::try_from(obj) {
                Err(Error::Protocol(m)) => assert!(m.starts_with(field), "{field}: {m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        let ev = api::Event {
            revision: 1,
            object: "nic/h1/eth0".into(),
            state: "WEIRD".into(),
            ..Default::default()
        };
        assert!(matches!(Change::try_from(ev), Err(Error::Protocol(_))));
        let agent = api::Event { revision: 2, what: "agent".into(), ..Default::default() };
        let e = Change::try_from(agent).expect("objectless events are valid");
        assert_eq!((&e.object, e.state, e.is_transition()), (&None, None, false));
    }

    #[test]
    fn ack_names_round_trip() {
        for a in [AckKind::Drained, AckKind::DataEvacuated] {
            assert_eq!(parse_ack(a.as_str()), Ok(a));
        }
        assert!(matches!(parse_ack("evacuated!"), Err(Error::Invalid(_))));
    }
}
