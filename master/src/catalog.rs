//! The checker catalog's domain, pure (issue 15, PRODUCT.md section 7): the replicated records (one
//! [`CheckerRecord`] per checker name with its versions and rollouts; artifact bytes are stored apart,
//! content-addressed by sha256, in chunks of [`CHUNK_BYTES`]), the limits, the names' charset, which hosts a
//! rollout targets ([`in_target`]: exact hosts, a stable percentage of a hash of (host, name), or machine
//! labels), the assignment of one host ([`assignment_of`], O(checkers), a pure function of the replicated
//! state and the host: a failover changes nothing) and its hash, and the canary-stop verdict
//! ([`verdict`]) on recorded numbers. The fsm rules that change these records are `fsm/catalog.rs`; the
//! API layer is `api/catalog.rs`.

use std::collections::{BTreeMap, BTreeSet};

use proto::view::{ArtifactSpecView, ArtifactView, AssignmentView, DeviationView, RolloutView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest artifact: a static checker binary or a rule set is far below; 8 MiB keeps a push to a handful of
/// Raft entries and an agent's fetch to a few chunks.
pub const MAX_ARTIFACT_BYTES: u64 = 8 << 20;
/// Bytes the catalog stores at most (every artifact's bytes, once per distinct sha256): travels in every
/// snapshot, so it is bounded well below the memory a snapshot may take.
pub const MAX_CATALOG_BYTES: u64 = 256 << 20;
/// Versions kept per checker: pushing more is refused (nothing is deleted implicitly).
pub const MAX_VERSIONS_PER_CHECKER: usize = 32;
/// Checkers in the catalog: the assignment of a host is computed per heartbeat in O(checkers).
pub const MAX_CATALOG_CHECKERS: usize = 256;
/// Bytes per stored chunk and per chunk command: base64 makes it 683 KiB, under the raft layer's 1 MiB
/// command limit with the envelope.
pub const CHUNK_BYTES: usize = 512 << 10;
/// Most bytes one FetchArtifact call returns (the contract's "at most 1 MiB"); a call returns at most the
/// rest of one stored chunk, so in practice [`CHUNK_BYTES`].
pub const MAX_FETCH_BYTES: usize = 1 << 20;
/// Longest checker name and version (they appear in finding scopes `checker=NAME@VERSION`).
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_VERSION_LEN: usize = 64;
/// Longest artifact description.
pub const MAX_DESCRIPTION_LEN: usize = 512;
/// Most exact hosts and label selectors of one rollout (bounded per heartbeat work and record size).
pub const MAX_ROLLOUT_HOSTS: usize = 1000;
pub const MAX_ROLLOUT_LABELS: usize = 8;
/// Rollouts of one checker in gray or paused at once (several versions on disjoint host sets).
pub const MAX_ACTIVE_ROLLOUTS: usize = 8;
/// Finished (promoted, rolled back) rollouts kept per checker for `rollout status`.
pub const MAX_DONE_ROLLOUTS: usize = 16;
/// Objects remembered per canary window and side (new, current): beyond it objects are counted, not kept
/// (an avalanche is already far over any limit).
pub const MAX_WINDOW_OBJECTS: usize = 10_000;
/// Percentages are kept in basis points (1/100 %), integers, so every member compares them alike.
pub const FULL_BP: u32 = 10_000;
/// Scheduling limits an external checker's spec may ask for: the agent's runner enforces them per run.
pub const MAX_SPEC_INTERVAL_MS: u64 = 24 * 3_600_000;
pub const MAX_SPEC_TIMEOUT_MS: u64 = 3_600_000;
pub const MAX_SPEC_OUTPUT_BYTES: u64 = 16 << 20;
pub const MAX_SPEC_KINDS: usize = 8;

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    /// A script or static binary run by the agent's sandboxed runner.
    External,
    /// A kernel-log rule set (TOML).
    Rules,
    /// A disk scoring profile (TOML).
    Profile,
    /// A disk-failure prediction model (JSON, `predict::Model`), scored by the agent's disk checker.
    Model,
    /// A fabric topology (issue 16; TOML or CSV, `netvote::Topology`), used by the master's leader when
    /// activated (`Command::SetTopology`); never assigned to agents, never rolled out.
    Topology,
}

impl ArtifactType {
    /// Whether agents run artifacts of this type: every type but a topology (the master's own input).
    pub fn assignable(self) -> bool {
        self != ArtifactType::Topology
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactType::External => "external",
            ArtifactType::Rules => "rules",
            ArtifactType::Profile => "profile",
            ArtifactType::Model => "model",
            ArtifactType::Topology => "topology",
        }
    }

    pub fn parse(s: &str) -> Result<ArtifactType, String> {
        match s {
            "external" => Ok(ArtifactType::External),
            "rules" => Ok(ArtifactType::Rules),
            "profile" => Ok(ArtifactType::Profile),
            "model" => Ok(ArtifactType::Model),
            "topology" => Ok(ArtifactType::Topology),
            "builtin" => Err("built-in checkers are compiled into the agent and read-only".into()),
            o => Err(format!("unknown artifact type {o:?} (external, rules, profile, model or topology)")),
        }
    }
}

/// One stored `NAME@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub name: String,
    pub version: String,
    pub kind: ArtifactType,
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
    pub size: u64,
    pub pushed_by: String,
    pub pushed_ms: u64,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub spec: ArtifactSpecView,
}

impl ArtifactRecord {
    pub fn view(&self) -> ArtifactView {
        ArtifactView {
            name: self.name.clone(),
            version: self.version.clone(),
            kind: self.kind.as_str().into(),
            sha256: self.sha256.clone(),
            size: self.size,
            pushed_by: self.pushed_by.clone(),
            pushed_ms: self.pushed_ms,
            description: self.description.clone(),
            spec: self.spec.clone(),
        }
    }

    /// How many chunks hold its bytes.
    pub fn chunks(&self) -> u64 {
        chunk_count(self.size)
    }
}

pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_BYTES as u64)
}

/// A rollout's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Gray,
    Paused,
    Promoted,
    RolledBack,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Gray => "gray",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled-back",
        }
    }

    /// Gray and paused rollouts hold their hosts (a paused canary keeps running where it runs; rollback
    /// returns the hosts).
    pub fn active(self) -> bool {
        matches!(self, RolloutState::Gray | RolloutState::Paused)
    }
}

/// Which hosts a rollout targets: exactly one of exact hosts, a percentage range, labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The percentage as a range of hash buckets `[from_bp, from_bp + bp)` out of [`FULL_BP`]: ranges of
    /// one checker's rollouts never overlap, and widening keeps `from_bp` (the first hosts stay).
    #[serde(default)]
    pub from_bp: u32,
    #[serde(default)]
    pub bp: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Target {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.bp == 0 && self.labels.is_empty()
    }
}

/// One canary window's observations, kept by the fsm as findings arrive (objects flagged WARNING or worse).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: u64,
    /// Objects the canary version flagged (shadow findings on canary hosts).
    #[serde(default)]
    pub new_flagged: BTreeSet<String>,
    /// Objects the current version flagged on the canary hosts.
    #[serde(default)]
    pub current_flagged: BTreeSet<String>,
    /// Flags beyond [`MAX_WINDOW_OBJECTS`] (counted, not kept), per side.
    #[serde(default)]
    pub new_overflow: u64,
    #[serde(default)]
    pub current_overflow: u64,
}

impl Window {
    pub fn new_count(&self) -> u64 {
        self.new_flagged.len() as u64 + self.new_overflow
    }
    pub fn current_count(&self) -> u64 {
        self.current_flagged.len() as u64 + self.current_overflow
    }
}

/// One rollout of `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub version: String,
    pub state: RolloutState,
    pub shadow: bool,
    pub target: Target,
    pub by: String,
    pub reason: String,
    pub started_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub auto_paused: bool,
    #[serde(default)]
    pub paused_reason: String,
    #[serde(default)]
    pub deviation: Option<DeviationView>,
    /// The stable version when the rollout started.
    #[serde(default)]
    pub previous_version: String,
    #[serde(default)]
    pub window: Window,
}

impl RolloutRecord {
    pub fn view(&self, name: &str) -> RolloutView {
        RolloutView {
            name: name.to_string(),
            version: self.version.clone(),
            status: self.state.as_str().into(),
            shadow: self.shadow,
            hosts: self.target.hosts.clone(),
            percent: f64::from(self.target.bp) / 100.0,
            labels: self.target.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            by: self.by.clone(),
            reason: self.reason.clone(),
            started_ms: self.started_ms,
            updated_ms: self.updated_ms,
            auto_paused: self.auto_paused,
            paused_reason: self.paused_reason.clone(),
            deviation: self.deviation.clone(),
            previous_version: self.previous_version.clone(),
        }
    }
}

/// Everything the catalog holds about one checker name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerRecord {
    pub name: String,
    pub kind: ArtifactType,
    /// What hosts outside every rollout run: the last promoted version, or the seeded one; empty: nothing
    /// yet (a new external checker runs only where a rollout puts it).
    #[serde(default)]
    pub stable: String,
    pub versions: BTreeMap<String, ArtifactRecord>,
    /// Gray and paused rollouts, in start order (their targets are disjoint).
    #[serde(default)]
    pub rollouts: Vec<RolloutRecord>,
    /// The latest finished rollouts, oldest first, at most [`MAX_DONE_ROLLOUTS`].
    #[serde(default)]
    pub done: Vec<RolloutRecord>,
}

impl CheckerRecord {
    pub fn active(&self, version: &str) -> Option<&RolloutRecord> {
        self.rollouts.iter().find(|r| r.version == version)
    }
}

// ---- names ---------------------------------------------------------------------------------------------

/// A checker name: 1..=[`MAX_NAME_LEN`] of `a-z A-Z 0-9 . _ -`, starting with a letter or digit (it
/// becomes a file name on agents and part of a scope name).
pub fn check_name(name: &str) -> Result<(), String> {
    check_token("checker name", name, MAX_NAME_LEN, false)
}

/// A version: 1..=[`MAX_VERSION_LEN`] of `a-z A-Z 0-9 . _ - +`, starting with a letter or digit.
pub fn check_version(version: &str) -> Result<(), String> {
    check_token("version", version, MAX_VERSION_LEN, true)
}

fn check_token(what: &str, s: &str, max: usize, plus: bool) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} must be 1..={max} bytes, got {}", s.len()));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("{what} {s:?} must start with a letter or digit"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (plus && *c == '+')))
    {
        let allowed = if plus { "a-z A-Z 0-9 . _ - +" } else { "a-z A-Z 0-9 . _ -" };
        return Err(format!("{what} {s:?}: character {c:?} is not allowed ({allowed})"));
    }
    Ok(())
}

/// `NAME@VERSION` split and checked.
pub fn split_ref(s: &str) -> Result<(String, String), String> {
    let (n, v) = s.split_once('@').ok_or_else(|| format!("{s:?}: expected NAME@VERSION"))?;
    check_name(n)?;
    check_version(v)?;
    Ok((n.to_string(), v.to_string()))
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A percentage (0-100, finite) in basis points.
pub fn percent_bp(p: f64) -> Result<u32, String> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err(format!("percent {p} must be a finite number in 0-100"));
    }
    // In range and finite: the cast cannot overflow.
    Ok((p * 100.0).round() as u32)
}

// ---- targets and assignments -----------------------------------------------------------------------------

/// The stable bucket of a host for a checker: the first 8 bytes of sha256(host, 0, name) modulo
/// [`FULL_BP`]. Independent of the version, so widening a percentage keeps the hosts it had, and of the
/// node computing it.
pub fn bucket(host: &str, name: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(host.as_bytes());
    h.update([0u8]);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % u64::from(FULL_BP)) as u32
}

/// Whether `host` (whose machine object carries `labels`) is in `t` for checker `name`.
pub fn in_target(t: &Target, name: &str, host: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
    if t.hosts.iter().any(|h| h == host) {
        return true;
    }
    if t.bp > 0 {
        let b = bucket(host, name);
        if b >= t.from_bp && b < t.from_bp.saturating_add(t.bp) {
            return true;
        }
    }
    !t.labels.is_empty()
        && labels.is_some_and(|l| t.labels.iter().all(|(k, v)| l.get(k).is_some_and(|x| x == v)))
}

/// Whether two targets of one checker may share a host. Exact hosts and percentage ranges are compared
/// exactly; label selectors are disjoint only from selectors that give one key different values, and from
/// exact hosts whose machine labels (`labels_of`) do not match: anything else might overlap and is refused.
pub fn overlap(
    a: &Target,
    b: &Target,
    name: &str,
    labels_of: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Option<String> {
    if let Some(h) = a.hosts.iter().find(|h| b.hosts.contains(h)) {
        return Some(format!("host {h} is in both"));
    }
    if a.bp > 0 && b.bp > 0 && a.from_bp < b.from_bp + b.bp && b.from_bp < a.from_bp + a.bp {
        return Some("their percentage ranges overlap".into());
    }
    for (x, y) in [(a, b), (b, a)] {
        if y.bp > 0
            && let Some(h) =
                x.hosts.iter().find(|h| in_target(&Target { hosts: vec![], ..y.clone() }, name, h, None))
        {
            return Some(format!("host {h} falls in the other rollout's percentage"));
        }
        if !y.labels.is_empty() {
            for h in &x.hosts {
                let l = labels_of(h);
                if in_target(&Target { hosts: vec![], bp: 0, ..y.clone() }, name, h, l.as_ref()) {
                    return Some(format!("host {h} carries the other rollout's labels"));
                }
            }
        }
    }
    let labelled = |t: &Target| !t.labels.is_empty();
    if labelled(a) && labelled(b) {
        let disjoint = a.labels.iter().any(|(k, v)| b.labels.get(k).is_some_and(|w| w != v));
        if !disjoint {
            return Some("their label selectors may match the same hosts".into());
        }
    }
    if (labelled(a) && b.bp > 0) || (labelled(b) && a.bp > 0) {
        return Some("a label selector and a percentage may pick the same hosts".into());
    }
    None
}

fn assigned(a: &ArtifactRecord, shadow: bool) -> AssignmentView {
    AssignmentView {
        name: a.name.clone(),
        version: a.version.clone(),
        kind: a.kind.as_str().into(),
        sha256: a.sha256.clone(),
        size: a.size,
        shadow,
        spec: a.spec.clone(),
    }
}

/// The rollout of `c` that holds `host`, if any (targets are disjoint, so at most one).
pub fn rollout_of<'a>(
    c: &'a CheckerRecord,
    host: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<&'a RolloutRecord> {
    c.rollouts.iter().find(|r| r.state.active() && in_target(&r.target, &c.name, host, labels))
}

/// What `host` runs of one checker: its stable version, replaced by a gray version on the rollout's hosts
/// or (shadow rollouts) accompanied by it, marked shadow. Nothing of a topology (the master's input).
pub fn assignment_for(
    c: &CheckerRecord,
    host: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<AssignmentView> {
    if !c.kind.assignable() {
        return Vec::new();
    }
    let stable = c.versions.get(&c.stable);
    let mut out = Vec::with_capacity(2);
    match rollout_of(c, host, labels).and_then(|r| c.versions.get(&r.version).map(|a| (r, a))) {
        Some((r, a)) if r.shadow => {
            out.extend(stable.map(|s| assigned(s, false)));
            out.push(assigned(a, true));
        }
        Some((_, a)) => out.push(assigned(a, false)),
        None => out.extend(stable.map(|s| assigned(s, false))),
    }
    out
}

/// The command version the findings of an assigned artifact of this kind need, when above what the catalog
/// itself needs: a model makes the agents' disk checkers send `predicted-failure` findings, ingests of
/// [`crate::model::PREDICT_COMMAND_VERSION`] — below it the leader refuses those agents' batches whole (and
/// an older member would admit predictions without their model's spike detector).
pub fn assigned_command_version(kind: ArtifactType) -> Option<u32> {
    (kind == ArtifactType::Model).then_some(crate::model::PREDICT_COMMAND_VERSION)
}

/// What an assigned `c` makes agents send needs above command version 1: its kind's version (a model's
/// predictions), and while one of its rollouts is an active shadow run, the shadow findings' version
/// ([`crate::model::CATALOG_COMMAND_VERSION`]: below it the leader refuses those agents' batches whole).
fn needed_command_version(c: &CheckerRecord) -> Option<u32> {
    let shadow = c
        .rollouts
        .iter()
        .any(|r| r.shadow && r.state.active())
        .then_some(crate::model::CATALOG_COMMAND_VERSION);
    assigned_command_version(c.kind).max(shadow)
}

/// Whether some host runs a version of `c`: it has a stable version, or a gray or paused rollout (shadow ones
/// included). A checker whose versions are only pushed, or whose rollouts are all finished without a stable
/// version, runs nowhere.
pub fn is_assigned(c: &CheckerRecord) -> bool {
    c.kind.assignable() && (!c.stable.is_empty() || c.rollouts.iter().any(|r| r.state.active()))
}

/// The lowest `min_command_version` the current assignments allow, and the checker that needs it (the first
/// by name among those needing the most): lowering below it would make the leader refuse what those
/// artifacts make agents send. `None` when nothing assigned needs more than the catalog's own version.
pub fn min_command_version_in_use<'a>(
    catalog: impl IntoIterator<Item = &'a CheckerRecord>,
) -> Option<(u32, &'a CheckerRecord)> {
    catalog
        .into_iter()
        .filter(|c| is_assigned(c))
        .filter_map(|c| needed_command_version(c).map(|v| (v, c)))
        .fold(None, |best: Option<(u32, &CheckerRecord)>, (v, c)| match best {
            Some((b, _)) if b >= v => best,
            _ => Some((v, c)),
        })
}

/// The assignment of `host` over the whole catalog, in checker-name order: O(checkers).
pub fn assignment_of<'a>(
    catalog: impl IntoIterator<Item = &'a CheckerRecord>,
    host: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<AssignmentView> {
    catalog.into_iter().flat_map(|c| assignment_for(c, host, labels)).collect()
}

/// The hash agents echo back: sha256 over each entry's identity (name, version, sha256, shadow and the
/// spec), truncated to 32 hex digits. Equal assignments hash equal on every member.
pub fn assignment_hash(a: &[AssignmentView]) -> String {
    let mut h = Sha256::new();
    for e in a {
        let s = &e.spec;
        let line = format!(
            "{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\n",
            e.name,
            e.version,
            e.kind,
            e.sha256,
            e.size,
            e.shadow,
            s.interval_ms,
            s.timeout_ms,
            s.max_output_bytes,
            s.kinds.join(","),
            s.max_memory_bytes,
            s.max_cpu_ms
        );
        h.update(line.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

// ---- canary stop ---------------------------------------------------------------------------------------

/// The canary-stop thresholds (master config `[canary]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// Length of one comparison window.
    pub window_ms: u64,
    /// The new version may flag up to `ratio` times the objects the current one flags...
    pub ratio: f64,
    /// ...plus this share of the canary hosts' objects.
    pub fraction: f64,
    /// Pause when the new version crashes or times out on more than this share of its hosts.
    pub max_failing_share: f64,
}

/// Default window: long enough for every checker interval to run several times.
pub const DEFAULT_CANARY_WINDOW_MS: u64 = 10 * 60_000;

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            window_ms: DEFAULT_CANARY_WINDOW_MS,
            ratio: 3.0,
            fraction: 0.02,
            max_failing_share: 0.10,
        }
    }
}

impl CanaryConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if self.window_ms == 0 {
            return Err("canary window_ms must be > 0".into());
        }
        if !ok(self.ratio)
            || !ok(self.fraction)
            || !ok(self.max_failing_share)
            || self.max_failing_share > 1.0
        {
            return Err(
                "canary ratio, fraction and max_failing_share must be finite and >= 0 (share <= 1)".into()
            );
        }
        Ok(())
    }
}

/// What a window measured (the fsm's window plus the leader's heartbeat memory and object counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowNumbers {
    pub window_start_ms: u64,
    pub window_ms: u64,
    pub canary_hosts: u64,
    pub canary_objects: u64,
    pub new_flagged: u64,
    pub current_flagged: u64,
    pub hosts_failing: u64,
}

/// The canary-stop decision: too many flags when `new > ratio * current + fraction * objects`, too many
/// failures when more than `max_failing_share` of the canary hosts report crashes or timeouts. Pure.
pub fn verdict(n: &WindowNumbers, cfg: &CanaryConfig) -> DeviationView {
    let limit_f = cfg.ratio * n.current_flagged as f64 + cfg.fraction * n.canary_objects as f64;
    // `new_flagged` is an integer: new > limit_f exactly when new > floor(limit_f).
    let limit = limit_f.floor().max(0.0) as u64;
    let failing =
        n.canary_hosts > 0 && n.hosts_failing as f64 > cfg.max_failing_share * n.canary_hosts as f64;
    let verdict = if failing {
        "too-many-failures"
    } else if n.new_flagged > limit {
        "too-many-flags"
    } else {
        "ok"
    };
    DeviationView {
        window_start_ms: n.window_start_ms,
        window_ms: n.window_ms,
        canary_hosts: n.canary_hosts,
        canary_objects: n.canary_objects,
        new_flagged: n.new_flagged,
        current_flagged: n.current_flagged,
        limit,
        hosts_failing: n.hosts_failing,
        verdict: verdict.into(),
    }
}

/// The reason text of an automatic pause.
pub fn pause_reason(d: &DeviationView) -> String {
    match d.verdict.as_str() {
        "too-many-failures" => format!(
            "canary stop: the new version crashed or timed out on {} of {} canary hosts",
            d.hosts_failing, d.canary_hosts
        ),
        _ => format!(
            "canary stop: the new version flagged {} objects, the current one {} on the same hosts (limit {} of \
             {} objects on {} hosts)",
            d.new_flagged, d.current_flagged, d.limit, d.canary_objects, d.canary_hosts
        ),
    }
}

#[cfg(test)]
mod tests;
