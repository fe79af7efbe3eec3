//! The safety net's data and pure decisions: quotas, operating levels, manual drive, proposals. A buggy
//! checker release or a power failure can make thousands of objects look faulty at once; the master must
//! never take automatic action beyond a quota. Everything here is replicated state (config, per-scope
//! counters and levels, proposals, the alert/audit log) changed only by committed commands in `fsm.rs`, so
//! quotas and latched scopes survive leader changes. Decisions are deterministic: time is the entry's
//! `now_ms`, maps are ordered, percentages are integer basis points.
//!
//! Scopes: `cluster` (every object), `KEY=VALUE` for each label key that forms scopes (the quota rules'
//! label keys plus `scope_labels`), and `checker=NAME@VERSION` for transitions caused by one checker
//! version's findings. An object's effective level is the most restrictive level among its scopes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use state_machines::{Input, Kind, ObjectId, State};

/// Alert/audit rows are stored and answered in one shape, defined with the other API views.
pub use proto::view::AuditEntry;

/// Timestamps kept per (scope, kind) sliding window; admission stops at the quota, so this only bounds
/// operator-approved entries beyond it and the spike detector.
pub const MAX_WINDOW_ENTRIES: usize = 10_000;
/// Rows kept in the alert/audit log; older ones are dropped (they are also in the Raft log's history).
pub const MAX_AUDIT_ROWS: u64 = 10_000;
/// Decided proposals kept; pending ones are never dropped (at most one per object).
pub const MAX_DECIDED_PROPOSALS: u64 = 100_000;
/// Most proposals one decide command touches (bulk by filter); operators repeat for more.
pub const MAX_DECIDE: usize = 10_000;
/// Most quota rules and scope label keys in the config: a fleet has a handful of kinds and topology levels.
pub const MAX_QUOTA_RULES: usize = 64;
pub const MAX_SCOPE_LABELS: usize = 16;
/// Longest window a quota, liveness or spike rule may use (a week): beyond it "sliding window" means forever.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

/// Why a level, limit, scope or safety config from a client is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetyError {
    #[error("unknown level {0:?} (auto, manual, blind)")]
    UnknownLevel(String),
    #[error("bad limit {0:?}: a count (\"5\") or a percentage (\"2.5%\", at most 100%)")]
    BadLimit(String),
    #[error("scope {0:?}: \"cluster\", KEY=VALUE or checker=NAME@VERSION")]
    BadScope(String),
    #[error("at most {MAX_QUOTA_RULES} quota rules")]
    TooManyQuotaRules,
    #[error("at most {MAX_SCOPE_LABELS} scope labels")]
    TooManyScopeLabels,
    #[error("quota kind {0:?}: machine, disk, dimm, nic or *")]
    QuotaKind(String),
    #[error("quota scope {0:?}: \"cluster\" or a label key")]
    QuotaScope(String),
    #[error("quota window_ms must be 1..={MAX_WINDOW_MS}")]
    QuotaWindow,
    #[error("scope label {0:?} is not a label key")]
    ScopeLabel(String),
    #[error("liveness/spike window_ms must be 1..={MAX_WINDOW_MS}")]
    RuleWindow,
}

/// For the API layer, which reports refusals as text (`ApiError::invalid`).
impl From<SafetyError> for String {
    fn from(e: SafetyError) -> String {
        e.to_string()
    }
}

/// Operating level of a scope, least to most restrictive (modelled on Pegasus meta levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Normal: transitions apply within quotas.
    #[default]
    Auto,
    /// Detect and propose only: transitions that take action wait for an operator (change freezes, sales).
    Manual,
    /// Reject every state change (migrations): findings are recorded, nothing moves.
    Blind,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Auto => "auto",
            Level::Manual => "manual",
            Level::Blind => "blind",
        }
    }
}

impl FromStr for Level {
    type Err = SafetyError;
    fn from_str(s: &str) -> Result<Self, SafetyError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Level::Auto),
            "manual" => Ok(Level::Manual),
            "blind" => Ok(Level::Blind),
            _ => Err(SafetyError::UnknownLevel(s.to_string())),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A limit as an absolute count or a share of the scope's population (basis points, at least 1 object so a
/// small scope can still lose one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(u64),
    /// Hundredths of a percent: `2.5%` is 250.
    Percent(u32),
}

impl Limit {
    /// The limit for a scope of `population` objects.
    pub fn of(self, population: u64) -> u64 {
        match self {
            Limit::Count(n) => n,
            Limit::Percent(bp) => (population.saturating_mul(u64::from(bp)) / 10_000).max(1),
        }
    }
}

impl FromStr for Limit {
    type Err = SafetyError;
    fn from_str(s: &str) -> Result<Self, SafetyError> {
        let s = s.trim();
        let bad = || SafetyError::BadLimit(s.to_string());
        if let Some(p) = s.strip_suffix('%') {
            let (int, frac) = p.trim().split_once('.').unwrap_or((p.trim(), ""));
            if int.is_empty()
                || frac.len() > 2
                || !(int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()))
            {
                return Err(bad());
            }
            let int: u32 = int.parse().map_err(|_| bad())?;
            let frac: u32 =
                if frac.is_empty() { 0 } else { format!("{frac:0<2}").parse().map_err(|_| bad())? };
            let bp = int.checked_mul(100).and_then(|v| v.checked_add(frac)).ok_or_else(bad)?;
            if bp > 10_000 {
                return Err(bad());
            }
            Ok(Limit::Percent(bp))
        } else {
            s.parse::<u64>().map(Limit::Count).map_err(|_| bad())
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(bp) if bp % 100 == 0 => write!(f, "{}%", bp / 100),
            Limit::Percent(bp) if bp % 10 == 0 => write!(f, "{}.{}%", bp / 100, (bp % 100) / 10),
            Limit::Percent(bp) => write!(f, "{}.{:02}%", bp / 100, bp % 100),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Limit::Count(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// One quota: in each scope it applies to, at most `max_entries` objects of `kind` may enter ERROR/FIX/REPAIR
/// per sliding `window_ms`, and at most `max_concurrent` may be in those states at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    /// `machine`, `disk`, `dimm`, `nic`, or `*` for every kind.
    pub kind: String,
    /// `cluster`, or a label key (`rack`): one limit per value of the label.
    pub scope: String,
    pub window_ms: u64,
    pub max_entries: Limit,
    pub max_concurrent: Limit,
}

impl QuotaRule {
    fn new(kind: &str, scope: &str, window_ms: u64, entries: Limit, concurrent: Limit) -> Self {
        QuotaRule {
            kind: kind.into(),
            scope: scope.into(),
            window_ms,
            max_entries: entries,
            max_concurrent: concurrent,
        }
    }

    pub fn applies_to(&self, kind: Kind, scope: &str) -> bool {
        (self.kind == "*" || self.kind == kind.as_str()) && scope_key(scope) == Some(self.scope.as_str())
    }
}

/// When too many agents of a scope go silent at once (switch, PDU, power), the scope latches into manual
/// drive: a network or power event must not turn into hundreds of repairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessRule {
    /// Agents that went silent within this window count as "at once".
    pub window_ms: u64,
    /// Latch when at least this many went silent ...
    pub min_silent: u64,
    /// ... and at least this share of the scope's agents.
    pub silent_share: Limit,
}

impl Default for LivenessRule {
    fn default() -> Self {
        // 5 minutes: a rack losing power drops its agents within seconds; unrelated single failures over a
        // day do not add up. 3 and 10%: one or two dead hosts in a rack of 40 are ordinary repairs.
        LivenessRule { window_ms: 5 * 60_000, min_silent: 3, silent_share: Limit::Percent(1_000) }
    }
}

/// A checker version whose findings would remove an unusual number of objects in a short time is suspect (a
/// buggy release): its scope `checker=NAME@VERSION` latches, which holds only that version's transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpikeRule {
    pub window_ms: u64,
    /// Latch when at least this many distinct objects ...
    pub min: u64,
    /// ... and at least this share of the kind's population (cluster-wide) would leave service.
    pub share: Limit,
}

impl Default for SpikeRule {
    fn default() -> Self {
        // A 10,000-machine fleet (~120,000 disks at ~2% AFR) loses ~7 disks a day; 10 in 10 minutes from one
        // version is already far outside that, and 0.5% of a kind is an avalanche.
        SpikeRule { window_ms: 10 * 60_000, min: 10, share: Limit::Percent(50) }
    }
}

/// The replicated safety configuration. Changed at run time with `SetQuotas` (an audit entry records who,
/// when and why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetyConfig {
    pub quotas: Vec<QuotaRule>,
    /// Label keys that form scopes even without a quota rule (levels, liveness, visibility).
    pub scope_labels: Vec<String>,
    pub liveness: LivenessRule,
    pub spike: SpikeRule,
    /// A rejected proposal suppresses the same proposal (same object, target and cause) for this long.
    pub reject_suppress_ms: u64,
}

impl Default for SafetyConfig {
    /// Defaults for a 10,000-machine fleet (see ARCHITECTURE.md "Safety net defaults"). Percentages keep
    /// them meaningful for smaller fleets; each limit allows at least one object.
    fn default() -> Self {
        const H: u64 = 3_600_000;
        let p = Limit::Percent;
        let n = Limit::Count;
        SafetyConfig {
            quotas: vec![
                // Machines: 0.5%/h (50 of 10,000) may leave, at most 2% (200) out at once: a bad day's
                // repairs, not a fleet-wide reboot wave.
                QuotaRule::new("machine", "cluster", H, p(50), p(200)),
                // A rack of ~40: 3 an hour, 10% at once; more is a rack event (power, ToR), not 4 bad hosts.
                QuotaRule::new("machine", "rack", H, n(3), p(1_000)),
                // Disks (~12 per machine): 0.2%/h, 1% at once cluster-wide; 5 an hour per rack, 5% at once.
                QuotaRule::new("disk", "cluster", H, p(20), p(100)),
                QuotaRule::new("disk", "rack", H, n(5), p(500)),
                // DIMMs and NICs take their host out of service: as strict as machines.
                QuotaRule::new("dimm", "cluster", H, p(50), p(200)),
                QuotaRule::new("nic", "cluster", H, p(50), p(200)),
            ],
            scope_labels: vec!["rack".into(), "switch".into(), "pool".into()],
            liveness: LivenessRule::default(),
            spike: SpikeRule::default(),
            reject_suppress_ms: 24 * H,
        }
    }
}

impl SafetyConfig {
    pub fn validate(&self) -> Result<(), SafetyError> {
        if self.quotas.len() > MAX_QUOTA_RULES {
            return Err(SafetyError::TooManyQuotaRules);
        }
        if self.scope_labels.len() > MAX_SCOPE_LABELS {
            return Err(SafetyError::TooManyScopeLabels);
        }
        for q in &self.quotas {
            if q.kind != "*" && q.kind.parse::<Kind>().ok().is_none_or(|k| k == Kind::Checker) {
                return Err(SafetyError::QuotaKind(q.kind.clone()));
            }
            if q.scope != "cluster" && !valid_label_key(&q.scope) {
                return Err(SafetyError::QuotaScope(q.scope.clone()));
            }
            if q.window_ms == 0 || q.window_ms > MAX_WINDOW_MS {
                return Err(SafetyError::QuotaWindow);
            }
        }
        for k in &self.scope_labels {
            if !valid_label_key(k) {
                return Err(SafetyError::ScopeLabel(k.clone()));
            }
        }
        for w in [self.liveness.window_ms, self.spike.window_ms] {
            if w == 0 || w > MAX_WINDOW_MS {
                return Err(SafetyError::RuleWindow);
            }
        }
        Ok(())
    }

    /// Label keys that form scopes, sorted (deterministic scope order).
    pub fn scope_keys(&self) -> BTreeSet<&str> {
        let mut keys: BTreeSet<&str> = self.scope_labels.iter().map(String::as_str).collect();
        keys.extend(self.quotas.iter().map(|q| q.scope.as_str()).filter(|s| *s != "cluster"));
        keys
    }

    /// The scopes of an object with these labels: `cluster` first, then `KEY=VALUE` in key order.
    pub fn scopes_of(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut out = vec![CLUSTER.to_string()];
        for k in self.scope_keys() {
            if let Some(v) = labels.get(k) {
                out.push(format!("{k}={v}"));
            }
        }
        out
    }
}

pub const CLUSTER: &str = "cluster";
/// Prefix of checker-version scopes.
pub const CHECKER_SCOPE: &str = "checker=";

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k != "checker"
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// The label key a scope is about (`cluster` for the cluster scope).
pub fn scope_key(scope: &str) -> Option<&str> {
    if scope == CLUSTER {
        return Some(CLUSTER);
    }
    scope.split_once('=').map(|(k, _)| k)
}

/// Check a scope name from a client: `cluster`, `KEY=VALUE` or `checker=NAME@VERSION`.
pub fn validate_scope(scope: &str) -> Result<(), SafetyError> {
    if scope == CLUSTER {
        return Ok(());
    }
    let Some((k, v)) = scope.split_once('=') else {
        return Err(SafetyError::BadScope(scope.to_string()));
    };
    let key_ok = k == "checker" || valid_label_key(k);
    let value_ok = !v.is_empty()
        && v.len() <= 256
        && v.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
        && (k != "checker" || v.split_once('@').is_some_and(|(n, ver)| !n.is_empty() && !ver.is_empty()));
    if key_ok && value_ok { Ok(()) } else { Err(SafetyError::BadScope(scope.to_string())) }
}

/// The rule of a disk finding the failure model graded WARNING (issue 20; the agent's disk checker).
pub const PREDICTED_FAILURE_RULE: &str = "predicted-failure";
/// The reading of a predicted failure naming the model that made it: its catalog artifact `NAME@VERSION`.
pub const MODEL_VERSION_READING: &str = "model_version";

/// The scope a predicted failure is counted and held in: `checker=MODEL@VERSION`, the model artifact that
/// made it (the finding's `model_version` reading). A bad model flagging many disks at once trips its own
/// spike detector and latches its own scope (which pauses its gray rollout), without holding the disk
/// checker's other transitions. None when the finding is not a prediction or names no valid model.
pub fn prediction_scope(f: &state_machines::Finding) -> Option<String> {
    if f.rule != PREDICTED_FAILURE_RULE {
        return None;
    }
    let at = f.readings.get(MODEL_VERSION_READING)?;
    let scope = format!("{CHECKER_SCOPE}{at}");
    validate_scope(&scope).is_ok().then_some(scope)
}

pub fn checker_scope(checker: &str, version: &str) -> String {
    format!("{CHECKER_SCOPE}{checker}@{version}")
}

/// Whether an object in `s` is out of service (counts against concurrency).
pub fn is_removed(s: State) -> bool {
    matches!(s, State::Error | State::Fix | State::Repair)
}

/// Transitions into these states run actions (acks requested, fixes, tickets, provisioning, tests): in
/// manual drive they wait for an operator. Moves among GOOD/SLOW/WARNING only change what is published.
pub fn takes_action(to: State) -> bool {
    !matches!(to, State::Good | State::Slow | State::Warning)
}

/// Per-kind counters of a scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCount {
    /// Objects of the kind in the scope.
    pub population: u64,
    /// Of them, in ERROR/FIX/REPAIR.
    pub removed: u64,
    /// Times of admitted entries into ERROR/FIX/REPAIR (oldest first, pruned to the longest window), while
    /// the cluster is below command version 11; from it on they are rows (`fsm/windows.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<u64>,
    /// Command version 11 on: how many admitted entries the scope's window rows of this kind hold.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub windowed: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Everything the master keeps about one scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRecord {
    pub level: Level,
    /// Manual drive entered by the master itself (quota, liveness, spike); stays until an operator releases.
    #[serde(default)]
    pub latched: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub set_by: String,
    #[serde(default)]
    pub since_ms: u64,
    #[serde(default)]
    pub kinds: BTreeMap<String, KindCount>,
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub last_blocked: String,
    #[serde(default)]
    pub last_blocked_ms: u64,
    #[serde(default)]
    pub agents: u64,
    #[serde(default)]
    pub agents_alive: u64,
    /// Times agents of this scope went silent (pruned to the liveness window).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silent: Vec<u64>,
    /// Checker-version scopes: (time, object) of would-be removals by the version (distinct objects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spike: Vec<(u64, String)>,
    /// Command version 11 on, `silent` and `spike` are rows (`fsm/windows.rs`): how many each holds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub silent_rows: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spike_rows: u64,
}

impl ScopeRecord {
    /// Whether the record carries nothing worth keeping (no objects, agents, proposals or level).
    pub fn is_empty(&self) -> bool {
        self.level == Level::Auto
            && self.pending == 0
            && self.agents == 0
            && self.kinds.values().all(|k| k.population == 0 && k.entries.is_empty() && k.windowed == 0)
            && self.spike.is_empty()
            && self.spike_rows == 0
            && self.last_blocked.is_empty()
    }
}

/// Drop times older than `now - window` from an ordered list, and keep at most [`MAX_WINDOW_ENTRIES`].
pub fn prune(times: &mut Vec<u64>, now: u64, window_ms: u64) {
    let from = now.saturating_sub(window_ms);
    let old = times.iter().take_while(|t| **t < from).count();
    times.drain(..old);
    let excess = times.len().saturating_sub(MAX_WINDOW_ENTRIES);
    times.drain(..excess);
}

/// Count of times within `window_ms` before `now` (inclusive).
pub fn in_window(times: &[u64], now: u64, window_ms: u64) -> u64 {
    let from = now.saturating_sub(window_ms);
    times.iter().filter(|t| **t >= from).count() as u64
}

/// A quota a transition would break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub scope: String,
    pub message: String,
}

/// Check the quotas of `scope` (record `r`) for one more entry of `kind`; `concurrency`: the
/// object would also be one more out of service (false for a reboot of a machine already out).
/// `used(window_ms)`: the kind's admitted entries within that window (from the record's list, or from its
/// window rows since command version 11, `fsm/windows.rs`).
pub fn check_quotas_with(
    cfg: &SafetyConfig,
    scope: &str,
    r: &ScopeRecord,
    kind: Kind,
    concurrency: bool,
    used: &dyn Fn(u64) -> u64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let empty = KindCount::default();
    let c = r.kinds.get(kind.as_str()).unwrap_or(&empty);
    for q in cfg.quotas.iter().filter(|q| q.applies_to(kind, scope)) {
        let max_c = q.max_concurrent.of(c.population);
        if concurrency && c.removed + 1 > max_c {
            out.push(Violation {
                scope: scope.to_string(),
                message: format!(
                    "quota: {} of {} {kind}s in {scope} already out of service (limit {} = {max_c})",
                    c.removed, c.population, q.max_concurrent
                ),
            });
        }
        let max_e = q.max_entries.of(c.population);
        let used = used(q.window_ms);
        if used + 1 > max_e {
            out.push(Violation {
                scope: scope.to_string(),
                message: format!(
                    "quota: {used} {kind}s in {scope} left service within {} (limit {} = {max_e})",
                    human_ms(q.window_ms),
                    q.max_entries
                ),
            });
        }
    }
    out
}

/// The longest window any quota of `kind` uses (entries older than it are pruned).
pub fn longest_window(cfg: &SafetyConfig, kind: Kind) -> u64 {
    cfg.quotas
        .iter()
        .filter(|q| q.kind == "*" || q.kind == kind.as_str())
        .map(|q| q.window_ms)
        .max()
        .unwrap_or(0)
}

pub fn human_ms(ms: u64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalStatus {
    Pending,
    Approved,
    Rejected,
    /// The object changed since; approving no longer made the same transition.
    Stale,
    /// Applied automatically after the scope returned to auto (within quota).
    Applied,
}

impl ProposalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalStatus::Pending => "pending",
            ProposalStatus::Approved => "approved",
            ProposalStatus::Rejected => "rejected",
            ProposalStatus::Stale => "stale",
            ProposalStatus::Applied => "applied",
        }
    }
}

/// A transition the master would have made but held for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: u64,
    pub object: ObjectId,
    pub from_state: State,
    pub to_state: State,
    /// The input that produced it; approving re-applies it.
    pub input: Input,
    pub cause: String,
    /// `checker@version rule` for finding causes, the cause name otherwise: what a rejection suppresses.
    pub signature: String,
    pub evidence: String,
    /// The object's scopes when proposed (filters and per-scope counts).
    pub scopes: Vec<String>,
    /// The scopes whose level or quota held it.
    pub held_by: Vec<String>,
    pub reason: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub repeats: u64,
    pub status: ProposalStatus,
    #[serde(default)]
    pub decided_by: String,
    #[serde(default)]
    pub decided_reason: String,
    #[serde(default)]
    pub decided_ms: u64,
}

/// Which proposals a bulk decision or a listing selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalFilter {
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub kind: Option<Kind>,
    #[serde(default)]
    pub host: Option<String>,
    /// NAME or NAME@VERSION of the checker behind the proposal.
    #[serde(default)]
    pub checker: Option<String>,
}

impl ProposalFilter {
    pub fn matches(&self, p: &Proposal) -> bool {
        self.scope.as_ref().is_none_or(|s| p.scopes.contains(s) || p.held_by.contains(s))
            && self.kind.is_none_or(|k| p.object.kind() == k)
            && self.host.as_deref().is_none_or(|h| p.object.host_name() == Some(h))
            && self.checker.as_deref().is_none_or(|c| {
                let sig = p.signature.split(' ').next().unwrap_or("");
                sig == c || sig.split('@').next() == Some(c)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_print_and_scale() {
        for (s, l) in [("5", Limit::Count(5)), ("2.5%", Limit::Percent(250)), ("10%", Limit::Percent(1000))] {
            assert_eq!(s.parse::<Limit>(), Ok(l));
            assert_eq!(l.to_string(), s);
        }
        assert_eq!("0.05%".parse::<Limit>(), Ok(Limit::Percent(5)));
        for bad in ["", "%", "-1", "1.234%", "101%", "abc", "1e3", " 5 %x"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad}");
        }
        assert_eq!(Limit::Percent(100).of(10_000), 100);
        assert_eq!(Limit::Percent(100).of(10), 1, "a percentage allows at least one object");
        assert_eq!(Limit::Count(0).of(10), 0, "a count of 0 allows none");
        let json: Limit = serde_json::from_str("7").expect("number");
        assert_eq!(json, Limit::Count(7));
    }

    #[test]
    fn scopes_are_cluster_then_labels_in_key_order() {
        let cfg = SafetyConfig::default();
        let labels: BTreeMap<String, String> =
            [("switch", "s1"), ("rack", "r7"), ("owner", "x")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(cfg.scopes_of(&labels), vec!["cluster", "rack=r7", "switch=s1"]);
        assert!(validate_scope("rack=r7").is_ok());
        assert!(validate_scope("checker=disk@1.2").is_ok());
        for bad in ["", "rack", "=x", "rack=", "checker=disk", "ra ck=1", "rack=a=b"] {
            assert!(validate_scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quotas_count_concurrency_and_the_window() {
        let cfg = SafetyConfig {
            quotas: vec![QuotaRule::new("disk", "rack", 60_000, Limit::Count(2), Limit::Percent(5_000))],
            ..SafetyConfig::default()
        };
        let mut r = ScopeRecord::default();
        r.kinds.insert(
            "disk".into(),
            KindCount { population: 4, removed: 0, entries: vec![1_000, 2_000], windowed: 0 },
        );
        let check_quotas =
            |cfg: &SafetyConfig, scope: &str, r: &ScopeRecord, kind: Kind, now: u64, c: bool| {
                let entries = r.kinds.get(kind.as_str()).map(|k| k.entries.clone()).unwrap_or_default();
                check_quotas_with(cfg, scope, r, kind, c, &|w| in_window(&entries, now, w))
            };
        let v = check_quotas(&cfg, "rack=r1", &r, Kind::Disk, 3_000, true);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("within 1m"), "{}", v[0].message);
        assert!(
            check_quotas(&cfg, "rack=r1", &r, Kind::Disk, 62_500, true).is_empty(),
            "window slid past one"
        );
        r.kinds.get_mut("disk").expect("disk").removed = 2;
        assert_eq!(
            check_quotas(&cfg, "rack=r1", &r, Kind::Disk, 100_000, true).len(),
            1,
            "50% of 4 = 2 at once"
        );
        assert!(check_quotas(&cfg, "cluster", &r, Kind::Disk, 100_000, true).is_empty(), "rule is per rack");
        assert!(
            check_quotas(&cfg, "rack=r1", &r, Kind::Machine, 100_000, true).is_empty(),
            "rule is for disks"
        );
    }

    #[test]
    fn prune_is_bounded() {
        let mut t: Vec<u64> = (0..(MAX_WINDOW_ENTRIES as u64 + 10)).collect();
        prune(&mut t, 100, 1_000_000);
        assert_eq!(t.len(), MAX_WINDOW_ENTRIES);
        prune(&mut t, 20_000, 100);
        assert!(t.iter().all(|x| *x >= 19_900));
    }

    #[test]
    fn default_config_is_valid_and_bad_configs_are_refused() {
        SafetyConfig::default().validate().expect("defaults");
        let mut c = SafetyConfig::default();
        c.quotas[0].kind = "checker".into();
        assert!(c.validate().is_err());
        let mut c = SafetyConfig::default();
        c.quotas[0].window_ms = 0;
        assert!(c.validate().is_err());
        let mut c = SafetyConfig::default();
        c.scope_labels.push("bad key".into());
        assert!(c.validate().is_err());
    }
}
