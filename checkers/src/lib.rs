//! Huatuo checkers: the fault finders that run on every host.
//!
//! A checker is versioned (name + semantic version), declares the object kinds it judges and its default
//! interval, and turns raw samples into [`Finding`]s. Probes are the only IO and read below a configurable
//! root (`/` in production, a recorded `/proc` + `/sys` tree of a real machine in tests), so the same code
//! runs in both places. Parsers and scoring are pure functions of their input.

use std::path::PathBuf;
use std::time::Duration;

use state_machines::{Finding, Kind};

pub mod kernel_log;

pub mod diskstats;
pub mod edac;
pub mod external;
pub mod machine;
pub mod netstat;
pub mod nic;
pub mod probe;
pub mod rasdaemon;
pub mod registry;
pub mod scoring;
pub mod smart;

/// What a checker run gets from its caller. Time is an argument: checkers never read the clock for
/// decisions, so recorded inputs replay identically.
#[derive(Debug, Clone)]
pub struct CheckContext {
    /// Root of the host's filesystem view: `/` in production, a fixture tree in tests.
    pub root: PathBuf,
    /// Host name used in object ids.
    pub host: String,
    /// Milliseconds since the Unix epoch at the start of this run.
    pub now_ms: u64,
    /// Scoring profile (`online`, `offline`, `archive`, ...).
    pub profile: String,
}

/// Why a checker run produced no verdict. The agent turns these into findings about the checker
/// (`checker/HOST/NAME`), never into faults on the host.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("probe failed: {0}")]
    Probe(String),
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("bad configuration: {0}")]
    Config(String),
}

/// Where a stateful checker's last run stopped reading (the kmsg cursor for the kernel log), as a key and
/// an opaque value for the agent's KV. The agent takes it right after the run and commits it in the SAME
/// outbox transaction as that run's findings, so a checkpoint can never pass a finding that is not durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub key: String,
    pub value: Vec<u8>,
}

/// A host checker. `run` may keep state between calls (previous counter samples for deltas).
///
/// Names are owned by the checker (`&str`, not `&'static str`): built-in checkers return constants,
/// external and rule-set checkers return names read from configuration, and the agent treats all of them
/// the same way.
pub trait Checker: Send {
    fn name(&self) -> &str;
    fn version(&self) -> &str;
    fn kinds(&self) -> &[Kind];
    fn default_interval(&self) -> Duration;
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError>;

    /// The checkpoint of the run that just returned, if it moved since the last one taken (stateless
    /// checkers have none). Called once after every run, on the same thread.
    fn take_checkpoint(&mut self) -> Option<Checkpoint> {
        None
    }

    /// Whether this checker grades with other checkers' findings (a derived checker, e.g. disk and machine
    /// grading with kernel-log findings). Only such checkers may name inputs in the agent's topology.
    fn consumes_inputs(&self) -> bool {
        false
    }

    /// The findings of this checker's declared inputs since its last run, handed over before each run.
    fn set_inputs(&mut self, _findings: Vec<Finding>) {}
}
