//! The states and, per object kind, the edge table: the single source of truth for which transitions exist.
//! `step` refuses to produce a transition that is not in these tables, operator `force` may only take an edge
//! from them, the invariant predicates check against them, and the Mermaid/Graphviz diagrams are printed from
//! them, so code, checks and documentation cannot drift apart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::Kind;

/// Every state any object kind can be in. Which of them a kind uses is given by its [`StateMachine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// In service, healthy.
    Good,
    /// Disk only: in service but slow (latency-sensitive users avoid it).
    Slow,
    /// In service but showing signs of damage (latency-sensitive users avoid it).
    Warning,
    /// Must go out of service now; waits for a subscriber to drain / evacuate it.
    Error,
    /// Machine only: drained, an automatic fix (restart service, clean fs, reboot) is running.
    Fix,
    /// Out of service, a repair ticket is filed, waiting for the part to be replaced or repaired.
    Repair,
    /// A new or repaired part is being provisioned (partition/format/pre-mount, re-clone).
    Newbie,
    /// Acceptance checks and a small benchmark before going back into service.
    Test,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Good,
        State::Slow,
        State::Warning,
        State::Error,
        State::Fix,
        State::Repair,
        State::Newbie,
        State::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Good => "GOOD",
            State::Slow => "SLOW",
            State::Warning => "WARNING",
            State::Error => "ERROR",
            State::Fix => "FIX",
            State::Repair => "REPAIR",
            State::Newbie => "NEWBIE",
            State::Test => "TEST",
        }
    }

    /// States that take the object out of service (PRODUCT.md section 4: ERROR, FIX, REPAIR).
    pub fn removes_capacity(self) -> bool {
        matches!(self, State::Error | State::Fix | State::Repair)
    }

    /// States in which the object serves and hysteresis applies (GOOD, SLOW, WARNING).
    pub fn in_service(self) -> bool {
        matches!(self, State::Good | State::Slow | State::Warning)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?} (expected GOOD, SLOW, WARNING, ERROR, FIX, REPAIR, NEWBIE or TEST)")]
pub struct StateParseError(pub String);

impl FromStr for State {
    type Err = StateParseError;
    fn from_str(s: &str) -> Result<Self, StateParseError> {
        let up = s.to_ascii_uppercase();
        State::ALL
            .into_iter()
            .find(|v| v.as_str() == up)
            .ok_or_else(|| StateParseError(s.chars().take(40).collect()))
    }
}

/// Whether a transition `from -> to` counts against quotas: every transition INTO ERROR, FIX or REPAIR
/// (PRODUCT.md section 6). ERROR -> FIX and ERROR -> REPAIR count too although the object is already out of
/// service: they start automatic actions (reboots, tickets) that a fleet-wide checker bug must not trigger
/// en masse. Self-loops do not exist in the tables and never count.
pub fn is_capacity_removing(from: State, to: State) -> bool {
    from != to && to.removes_capacity()
}

/// One legal edge. `label` is what makes the object take it (printed on the diagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub from: State,
    pub to: State,
    pub label: &'static str,
}

/// The state machine of one object kind: its states (first is the start state) and its edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMachine {
    pub kind: Kind,
    pub states: &'static [State],
    pub edges: &'static [Edge],
}

impl StateMachine {
    pub fn has_state(&self, s: State) -> bool {
        self.states.contains(&s)
    }

    pub fn edge(&self, from: State, to: State) -> Option<&'static Edge> {
        self.edges.iter().find(|e| e.from == from && e.to == to)
    }

    pub fn is_legal(&self, from: State, to: State) -> bool {
        self.edge(from, to).is_some()
    }
}

const fn e(from: State, to: State, label: &'static str) -> Edge {
    Edge { from, to, label }
}

use State::{
    Error as ER, Fix as FX, Good as GD, Newbie as NB, Repair as RP, Slow as SL, Test as TS, Warning as WN,
};

const FATAL: &str = "ERROR/FATAL finding (at once)";
const REPLACED: &str = "new serial in slot";
const FALSE_ALARM: &str = "operator force (false alarm)";
const TICKET_DONE: &str = "part replaced / ticket closed / new serial";
const PROVISIONED: &str = "provisioning done";
const PROVISION_FAILED: &str = "provisioning failed / ERROR finding";
const TEST_PASSED: &str = "test passed";
const TEST_FAILED: &str = "test failed / ERROR finding";

static DISK_STATES: [State; 7] = [GD, SL, WN, ER, RP, NB, TS];
static DISK_EDGES: [Edge; 21] = [
    e(GD, SL, "SLOW held"),
    e(GD, WN, "WARNING held"),
    e(SL, WN, "WARNING held"),
    e(SL, GD, "healthy held / quiet"),
    e(WN, SL, "only SLOW held"),
    e(WN, GD, "healthy held / quiet"),
    e(GD, ER, FATAL),
    e(SL, ER, FATAL),
    e(WN, ER, FATAL),
    e(ER, RP, "data-evacuated ack / approve"),
    e(ER, GD, FALSE_ALARM),
    e(RP, NB, TICKET_DONE),
    e(NB, TS, PROVISIONED),
    e(NB, RP, PROVISION_FAILED),
    e(TS, GD, TEST_PASSED),
    e(TS, RP, TEST_FAILED),
    e(GD, NB, REPLACED),
    e(SL, NB, REPLACED),
    e(WN, NB, REPLACED),
    e(ER, NB, REPLACED),
    e(TS, NB, REPLACED),
];

static MACHINE_STATES: [State; 6] = [GD, ER, FX, RP, NB, TS];
static MACHINE_EDGES: [Edge; 15] = [
    e(GD, ER, FATAL),
    e(ER, FX, "drained ack / approve"),
    e(ER, RP, "drained ack, too many fixes in window"),
    e(ER, GD, FALSE_ALARM),
    e(FX, GD, "fix succeeded"),
    e(FX, RP, "fix failed"),
    e(RP, NB, TICKET_DONE),
    e(NB, TS, PROVISIONED),
    e(NB, RP, PROVISION_FAILED),
    e(TS, GD, TEST_PASSED),
    e(TS, RP, TEST_FAILED),
    e(GD, NB, REPLACED),
    e(ER, NB, REPLACED),
    e(FX, NB, REPLACED),
    e(TS, NB, REPLACED),
];

static PART_STATES: [State; 6] = [GD, WN, ER, RP, NB, TS];
static PART_EDGES: [Edge; 15] = [
    e(GD, WN, "WARNING/SLOW held"),
    e(WN, GD, "healthy held / quiet"),
    e(GD, ER, FATAL),
    e(WN, ER, FATAL),
    e(ER, RP, "drained ack / approve"),
    e(ER, GD, FALSE_ALARM),
    e(RP, NB, TICKET_DONE),
    e(NB, TS, PROVISIONED),
    e(NB, RP, PROVISION_FAILED),
    e(TS, GD, TEST_PASSED),
    e(TS, RP, TEST_FAILED),
    e(GD, NB, REPLACED),
    e(WN, NB, REPLACED),
    e(ER, NB, REPLACED),
    e(TS, NB, REPLACED),
];

/// Network devices (issue 16): the master's per-window localisation is the only writer of their findings and
/// already holds suspicion over windows, so they move at once; no acks, no actions, no repair states (the
/// product does not repair switches: it tells subscribers and an operator, and ERROR files a repair ticket
/// once per incident, see `step.rs` `Rules::net_tickets`).
static NET_STATES: [State; 3] = [GD, WN, ER];
static NET_EDGES: [Edge; 6] = [
    e(GD, WN, "WARNING suspect"),
    e(WN, GD, "suspicion cleared / quiet"),
    e(GD, ER, "ERROR suspect"),
    e(WN, ER, "ERROR suspect"),
    e(ER, GD, "suspicion cleared for clear_windows / operator force"),
    e(ER, WN, "suspicion down to WARNING"),
];

pub static DISK: StateMachine = StateMachine { kind: Kind::Disk, states: &DISK_STATES, edges: &DISK_EDGES };
pub static MACHINE: StateMachine =
    StateMachine { kind: Kind::Machine, states: &MACHINE_STATES, edges: &MACHINE_EDGES };
pub static DIMM: StateMachine = StateMachine { kind: Kind::Dimm, states: &PART_STATES, edges: &PART_EDGES };
pub static NIC: StateMachine = StateMachine { kind: Kind::Nic, states: &PART_STATES, edges: &PART_EDGES };
pub static SWITCH: StateMachine = StateMachine { kind: Kind::Switch, states: &NET_STATES, edges: &NET_EDGES };
pub static LINK: StateMachine = StateMachine { kind: Kind::Link, states: &NET_STATES, edges: &NET_EDGES };

/// The state machine of a kind; `None` for `checker`, whose findings are recorded only.
pub fn state_machine_for(kind: Kind) -> Option<&'static StateMachine> {
    match kind {
        Kind::Disk => Some(&DISK),
        Kind::Machine => Some(&MACHINE),
        Kind::Dimm => Some(&DIMM),
        Kind::Nic => Some(&NIC),
        Kind::Switch => Some(&SWITCH),
        Kind::Link => Some(&LINK),
        Kind::Checker => None,
    }
}

/// Whether `from -> to` is an edge of `kind`'s machine (always false for `checker`).
pub fn is_legal_edge(kind: Kind, from: State, to: State) -> bool {
    state_machine_for(kind).is_some_and(|m| m.is_legal(from, to))
}

/// The kinds that have a state machine, in a fixed order.
pub const MACHINE_KINDS: [Kind; 6] =
    [Kind::Disk, Kind::Machine, Kind::Dimm, Kind::Nic, Kind::Switch, Kind::Link];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_well_formed() {
        for kind in MACHINE_KINDS {
            let m = state_machine_for(kind).expect("has a machine");
            assert_eq!(m.kind, kind);
            assert_eq!(m.states[0], State::Good, "{kind}: start state is GOOD");
            for (i, e) in m.edges.iter().enumerate() {
                assert!(m.has_state(e.from) && m.has_state(e.to), "{kind}: edge {e:?} uses a foreign state");
                assert_ne!(e.from, e.to, "{kind}: self-loop {e:?}");
                assert!(!e.label.is_empty());
                assert!(m.edges[..i].iter().all(|o| (o.from, o.to) != (e.from, e.to)), "{kind}: dup {e:?}");
            }
            // Every state is reachable from GOOD and can get back to GOOD.
            for s in m.states {
                assert!(reaches(m, State::Good, *s), "{kind}: {s} unreachable");
                assert!(reaches(m, *s, State::Good), "{kind}: {s} is a dead end");
            }
        }
        assert!(state_machine_for(Kind::Checker).is_none());
    }

    fn reaches(m: &StateMachine, from: State, to: State) -> bool {
        let mut seen = vec![from];
        let mut i = 0;
        while i < seen.len() {
            let at = seen[i];
            for e in m.edges.iter().filter(|e| e.from == at) {
                if !seen.contains(&e.to) {
                    seen.push(e.to);
                }
            }
            i += 1;
        }
        seen.contains(&to)
    }

    #[test]
    fn capacity_and_parse() {
        assert!(is_capacity_removing(State::Good, State::Error));
        assert!(is_capacity_removing(State::Error, State::Fix));
        assert!(!is_capacity_removing(State::Repair, State::Newbie));
        assert!(!is_capacity_removing(State::Good, State::Slow));
        assert_eq!("newbie".parse::<State>(), Ok(State::Newbie));
        assert!("sick".parse::<State>().is_err());
        assert_eq!(serde_json::to_string(&State::Fix).expect("ser"), "\"FIX\"");
    }
}
