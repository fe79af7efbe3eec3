//! The worker: runs the actions the state machines ask for on this host and reports how they went.
//!
//! The action set is closed (`state_machines::Action` on a disk or machine object): disk NEWBIE
//! (provision: one GPT partition, mkfs, pre-mount at staging), disk TEST (SMART verdict and short
//! self-test, an O_DIRECT benchmark against thresholds, then the real mount or a failure), machine FIX by
//! cause (restart an allow-listed service, clean a full filesystem by rules, reboot) and machine
//! NEWBIE/TEST (configured environment checks). Anything else is refused.
//!
//! Safety: every action is idempotent (a re-run on a finished object reports success and changes
//! nothing), has a deadline (programs run in their own process group, killed as a group; output capped),
//! supports dry-run (the plan is reported, nothing changes), and never runs twice at once on one object.
//! Disk actions run only when `worker.disk.allow_destructive` is on and the slot positively holds the
//! replacement: a serial different from the old one, a whole block device, not the root disk, no holders,
//! swap or foreign mounts. A refusal changes nothing.
//!
//! Delivery (pending actions from the master, results back as `Input::ActionResult`) is wired elsewhere;
//! [`ActionReport::to_input`] builds that input.

pub mod bench;
pub mod blockdev;
pub mod config;
pub mod disk;
pub mod exec;
pub mod machine;
pub mod smart;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use state_machines::{Action, FixAction, Input, Kind, ObjectId};

pub use config::WorkerConfig;
use exec::{Exec, Step};

/// Extra time the async wrapper waits past an action's own deadline before it gives up on the blocking
/// thread: covers the kill grace of the last program (3 x `checkers::probe::KILL_GRACE`) and cleanup.
pub const RESULT_GRACE: Duration = Duration::from_secs(10);
/// Most request parameters accepted, and their longest key/value: parameters are a service name, a
/// profile, a mount point.
pub const MAX_PARAMS: usize = 16;
pub const MAX_PARAM_LEN: usize = 256;
/// Longest `detail` in a report (it travels to the master and into the object's history).
pub const MAX_DETAIL: usize = 2048;

/// One action for this host, as the master sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub object: ObjectId,
    pub action: Action,
    /// Disks: the serial the master knew in this slot before the replacement.
    #[serde(default)]
    pub old_serial: Option<String>,
    /// Disks: the new serial the master saw appear (checked when given).
    #[serde(default)]
    pub new_serial: Option<String>,
    /// `service` (restart-service), `profile` (disk TEST thresholds), `mount` (clean-fs: only rules
    /// under this mount point).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Report what would be done; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Milliseconds since the epoch: the "now" of age decisions (clean-fs). Time is an argument.
    pub now_ms: u64,
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done now.
    Done,
    /// Nothing to do: an earlier run already finished it (idempotent re-run).
    AlreadyDone,
    /// Dry run: the steps are the plan; nothing changed.
    DryRun,
    /// Ran and failed (a failed check, benchmark below threshold, a program error).
    Failed,
    /// Not started: not allowed, not identified, unknown action, busy. Nothing changed.
    Refused,
    /// The deadline came; the running program group was killed.
    TimedOut,
}

/// What the worker reports for one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionReport {
    pub object: ObjectId,
    pub action: Action,
    pub outcome: Outcome,
    /// Done or AlreadyDone; for a dry run: the plan passed every check that can be made without acting.
    pub success: bool,
    pub dry_run: bool,
    /// One line for the object's history (bounded).
    pub detail: String,
    /// Measured values (benchmark figures, files and bytes freed).
    pub figures: BTreeMap<String, f64>,
    pub steps: Vec<Step>,
    /// The steps' outputs, concatenated, capped at `worker.output_max_bytes`.
    pub output: String,
    pub elapsed_ms: u64,
}

impl ActionReport {
    /// The state-machine input this report becomes on the master.
    pub fn to_input(&self) -> Input {
        Input::ActionResult { action: self.action, success: self.success, detail: self.detail.clone() }
    }
}

/// How a handler finished (the worker adds the steps and timing).
#[derive(Debug, Clone)]
pub(crate) struct Finish {
    pub outcome: Outcome,
    pub detail: String,
    pub figures: BTreeMap<String, f64>,
}

impl Finish {
    pub fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Finish { outcome, detail: detail.into(), figures: BTreeMap::new() }
    }
    pub fn refused(detail: impl Into<String>) -> Self {
        Finish::new(Outcome::Refused, detail)
    }
    pub fn failed(detail: impl Into<String>) -> Self {
        Finish::new(Outcome::Failed, detail)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker config: {0}")]
    Config(String),
    #[error("invalid host {0:?}")]
    Host(String),
}

/// Why one step of an action refused or failed; the text goes into the action report's detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The target is not what the order says, or is in use: nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A tool or a system call failed.
    #[error("{0}")]
    Failed(String),
}

/// Runs actions for one host.
#[derive(Debug, Clone)]
pub struct Worker {
    host: String,
    cfg: Arc<WorkerConfig>,
    /// Objects with an action in progress (a stuck one stays here until its thread returns).
    busy: Arc<Mutex<BTreeSet<ObjectId>>>,
}

/// Releases an object's busy mark when its action ends.
struct BusyGuard {
    set: Arc<Mutex<BTreeSet<ObjectId>>>,
    id: ObjectId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.id);
        }
    }
}

fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Worker {
    /// Validate the config and build a worker for `host` (the host part of the objects it accepts).
    pub fn new(host: &str, cfg: WorkerConfig) -> Result<Self, WorkerError> {
        state_machines::id::validate_host(host).map_err(|_| WorkerError::Host(host.to_string()))?;
        cfg.validate().map_err(|e| WorkerError::Config(e.to_string()))?;
        Ok(Worker { host: host.to_string(), cfg: Arc::new(cfg), busy: Arc::new(Mutex::new(BTreeSet::new())) })
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// The deadline an action gets.
    pub fn timeout_for(&self, req: &ActionRequest) -> Duration {
        let d = &self.cfg.disk;
        let m = &self.cfg.machine;
        let s = match (req.object.kind(), req.action) {
            (Kind::Disk, Action::Provision) => d.provision_timeout_s,
            (Kind::Disk, _) => d.test_timeout_s,
            (Kind::Machine, Action::Fix { fix: FixAction::RestartService }) => m.restart_timeout_s,
            (Kind::Machine, Action::Fix { fix: FixAction::CleanFs }) => m.clean_timeout_s,
            (Kind::Machine, Action::Fix { fix: FixAction::Reboot }) => m.reboot_timeout_s,
            (Kind::Machine, _) => {
                let sum: u64 = m.checks.iter().map(|c| c.timeout_s).sum();
                sum.clamp(1, config::MAX_ACTION_TIMEOUT.as_secs())
            }
            _ => 1,
        };
        Duration::from_secs(s)
    }

    /// Run one action on a blocking thread; returns within its deadline plus [`RESULT_GRACE`] even if
    /// the thread is stuck (then the object stays busy until the thread returns).
    pub async fn run(&self, req: ActionRequest) -> ActionReport {
        let limit = self.timeout_for(&req) + RESULT_GRACE;
        let (object, action, dry) = (req.object.clone(), req.action, req.dry_run || self.cfg.dry_run);
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || me.run_blocking(&req));
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(report)) => report,
            Ok(Err(join)) => {
                self.report_only(object, action, dry, Outcome::Failed, format!("worker task failed: {join}"))
            }
            Err(_) => self.report_only(
                object,
                action,
                dry,
                Outcome::TimedOut,
                format!(
                    "no result within {} s; the action is stuck (D state?) and the object stays reserved",
                    limit.as_secs()
                ),
            ),
        }
    }

    fn report_only(
        &self,
        object: ObjectId,
        action: Action,
        dry_run: bool,
        outcome: Outcome,
        detail: String,
    ) -> ActionReport {
        ActionReport {
            object,
            action,
            outcome,
            success: false,
            dry_run,
            detail: bounded(&detail, MAX_DETAIL),
            figures: BTreeMap::new(),
            steps: Vec::new(),
            output: String::new(),
            elapsed_ms: 0,
        }
    }

    /// Run one action on the calling thread.
    pub fn run_blocking(&self, req: &ActionRequest) -> ActionReport {
        let start = Instant::now();
        let dry_run = req.dry_run || self.cfg.dry_run;
        let mut ex = Exec::new(dry_run, self.timeout_for(req));
        let fin = match self.check_request(req) {
            Err(why) => Finish::refused(why.to_string()),
            Ok(()) => {
                let guard = {
                    let mut busy = match self.busy.lock() {
                        Ok(b) => b,
                        Err(p) => p.into_inner(),
                    };
                    if busy.contains(&req.object) {
                        None
                    } else {
                        busy.insert(req.object.clone());
                        Some(BusyGuard { set: self.busy.clone(), id: req.object.clone() })
                    }
                };
                match guard {
                    None => Finish::refused(format!("another action on {} is still running", req.object)),
                    Some(_g) => self.dispatch(req, &mut ex),
                }
            }
        };
        let mut outcome = fin.outcome;
        if ex.timed_out && !matches!(outcome, Outcome::Refused) {
            outcome = Outcome::TimedOut;
        } else if dry_run && matches!(outcome, Outcome::Done) {
            outcome = Outcome::DryRun;
        }
        let mut detail = fin.detail;
        if outcome == Outcome::DryRun {
            detail = format!("dry run, nothing changed; the plan would end: {detail}");
        }
        if outcome == Outcome::TimedOut && !detail.contains("deadline") {
            detail = format!("deadline of {} s passed: {detail}", self.timeout_for(req).as_secs());
        }
        let success = match outcome {
            Outcome::Done | Outcome::AlreadyDone => true,
            Outcome::DryRun => true,
            Outcome::Failed | Outcome::Refused | Outcome::TimedOut => false,
        };
        let mut output = String::new();
        for s in &ex.steps {
            if !s.output.is_empty() {
                output.push_str(&format!("$ {}\n{}\n", s.what, s.output));
            }
        }
        let output = exec::tail(&output, self.cfg.output_max_bytes);
        tracing::info!(object = %req.object, action = %req.action, ?outcome, dry_run, detail = %detail, "worker action");
        ActionReport {
            object: req.object.clone(),
            action: req.action,
            outcome,
            success,
            dry_run,
            detail: bounded(&detail, MAX_DETAIL),
            figures: fin.figures,
            steps: ex.steps,
            output,
            elapsed_ms: start.elapsed().as_millis() as u64,
        }
    }

    fn check_request(&self, req: &ActionRequest) -> Result<(), StepError> {
        if req.object.host() != self.host {
            return Err(StepError::Refused(format!("{} is not on this host ({})", req.object, self.host)));
        }
        if req.params.len() > MAX_PARAMS
            || req.params.iter().any(|(k, v)| k.len() > MAX_PARAM_LEN || v.len() > MAX_PARAM_LEN)
        {
            return Err(StepError::Refused(format!(
                "at most {MAX_PARAMS} parameters of at most {MAX_PARAM_LEN} bytes"
            )));
        }
        for s in [&req.old_serial, &req.new_serial].into_iter().flatten() {
            if s.is_empty() || s.len() > MAX_PARAM_LEN {
                return Err(StepError::Refused("a serial must be 1..=256 bytes".into()));
            }
        }
        Ok(())
    }

    fn dispatch(&self, req: &ActionRequest, ex: &mut Exec) -> Finish {
        let cfg = &self.cfg;
        match (req.object.kind(), req.action) {
            (Kind::Disk, Action::Provision) => disk::provision(cfg, ex, req),
            (Kind::Disk, Action::Test) => disk::test(cfg, ex, req),
            (Kind::Machine, Action::Fix { fix: FixAction::RestartService }) => machine::restart(cfg, ex, req),
            (Kind::Machine, Action::Fix { fix: FixAction::CleanFs }) => machine::clean(cfg, ex, req),
            (Kind::Machine, Action::Fix { fix: FixAction::Reboot }) => machine::reboot(cfg, ex),
            (Kind::Machine, Action::Provision) => machine::env_checks(cfg, ex, "provision"),
            (Kind::Machine, Action::Test) => machine::env_checks(cfg, ex, "test"),
            (kind, action) => {
                Finish::refused(format!("{action} on a {kind} object is not an action this worker runs"))
            }
        }
    }
}
