//! Huatuo's domain core: object ids, findings, and one pure, deterministic, table-driven state machine per
//! object kind. No IO, no async, no clock: time is always an argument. Shared by the master (which applies
//! the machines to replicated state), the checkers (which produce findings) and the tests.
//!
//! Entry point: [`step`]`(&ObjectState, &Input, now_ms, &Policy) -> Result<Outcome, StepError>`. The edge
//! tables ([`table`]) are the single source of truth for legal transitions, diagrams and invariants.

pub mod diagram;
pub mod finding;
pub mod id;
pub mod invariants;
pub mod model;
pub mod step;
pub mod table;
pub mod transcript;

pub use finding::{Finding, Severity};
pub use id::{IdError, Kind, ObjectId};
pub use invariants::{Violation, check_admitted, check_history, check_outcome, check_transition};
pub use model::{
    AckKind, Action, Cause, Effect, Evidence, FixAction, Hysteresis, Input, ObjectState, OperatorCommand,
    Outcome, PendingAck, PendingAction, Policy, PolicyError, StepError, Streak, TicketUpdate, Transition,
};
pub use step::{Rules, step, step_with};
pub use table::{
    DIMM, DISK, Edge, LINK, MACHINE, MACHINE_KINDS, NIC, SWITCH, State, StateMachine, is_capacity_removing,
    is_legal_edge, state_machine_for,
};
