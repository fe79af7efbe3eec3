//! The API views: the one domain shape of each thing the master's APIs answer with. REST serializes them as
//! JSON (an [`ObjectView`] is the `GET /api/v1/objects` shape), gRPC converts them to and from the wire in
//! [`crate::convert`], and the SDK's typed `Object` is built from an [`ObjectView`]. The master builds them
//! from its stored records; nothing else does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use state_machines::Finding;

/// One object as the APIs show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectView {
    pub id: String,
    pub kind: String,
    pub host: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grade: String,
    pub state_since_ms: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Inventory attributes merged with the state machine's own (serials, ticket ids, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub revision: u64,
    /// The latest finding of each checker about this object.
    #[serde(default)]
    pub evidence: Vec<Finding>,
    pub history_len: u64,
    pub history_compacted: u64,
    pub created_ms: u64,
    /// Consent: what the object waits for, from whom, until when (empty when it waits for nothing).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_ack: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_role: String,
    #[serde(default)]
    pub ack_deadline_ms: u64,
    #[serde(default)]
    pub ack_escalated: bool,
    /// The action an agent should run on this object (empty when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pending_action: String,
    #[serde(default)]
    pub action_deadline_ms: u64,
}

/// An action the master wants an agent to run on one of its objects (handed out with every heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOrder {
    pub object: String,
    pub action: String,
    pub requested_ms: u64,
    pub deadline_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub old_serial: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub new_serial: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// Quota use of one kind in one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUse {
    pub kind: String,
    pub population: u64,
    pub concurrent: u64,
    pub max_concurrent: u64,
    pub entries: u64,
    pub max_entries: u64,
    pub window_ms: u64,
}

/// One safety scope: its operating level (`auto`, `manual`, `blind`), quota use against its limits, pending
/// proposals, and why the last automatic action was blocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeView {
    pub scope: String,
    pub level: String,
    pub latched: bool,
    pub reason: String,
    pub set_by: String,
    pub since_ms: u64,
    pub quotas: Vec<QuotaUse>,
    pub pending_proposals: u64,
    pub last_blocked: String,
    pub last_blocked_ms: u64,
    pub agents: u64,
    pub agents_alive: u64,
    /// The liveness rule's window: agents of the scope that went silent within it (None: no agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<WindowUse>,
    /// The spike detector's window (`checker=NAME@VERSION` scopes only): distinct objects the version would
    /// have taken out of service within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike: Option<WindowUse>,
}

/// What one of a scope's sliding windows holds now, and how many latch the scope into manual drive (the
/// larger of the rule's minimum and its share; for a spike, the smallest such threshold over the kinds of the
/// objects in the window, 0 while it is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WindowUse {
    pub held: u64,
    pub latch_at: u64,
    pub window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub peer_addr: String,
    pub grpc_addr: String,
    pub http_addr: String,
    /// The newest command version this member's binary knows (0: it did not answer, or cannot say).
    #[serde(default)]
    pub knows_command_version: u32,
    /// The member's NOSPACE alarm is raised (its data dir's file system is below its floor): false also
    /// when it did not answer.
    #[serde(default)]
    pub nospace: bool,
    /// While `nospace`: the free bytes the member measured and its floor (`min_free_mb`); 0 otherwise.
    #[serde(default)]
    pub free_bytes: u64,
    #[serde(default)]
    pub min_free_bytes: u64,
    /// Its addresses are in the replicated member table (a leader announces itself there once elected);
    /// until then they come from the peer port, or for the node answering, from its own configuration.
    #[serde(default)]
    pub announced: bool,
}

/// `huatuo status` / `GET /api/v1/cluster`: one node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub role: String,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub level: String,
    pub leader_grpc: String,
    pub members: Vec<MemberInfo>,
    pub agents_alive: u64,
    #[serde(default)]
    pub agents: u64,
    pub objects: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Per scope: level, quota use vs limit, pending proposals, why the last automatic action was blocked.
    #[serde(default)]
    pub scopes: Vec<ScopeView>,
    #[serde(default)]
    pub pending_proposals: u64,
    /// The replicated `min_command_version` as this node applied it (newer command kinds are still off).
    #[serde(default)]
    pub min_command_version: u32,
    /// The newest command version this node's binary knows.
    #[serde(default)]
    pub knows_command_version: u32,
    /// This node's open file descriptors and its open-files limit (0: unknown).
    #[serde(default)]
    pub open_fds: u64,
    #[serde(default)]
    pub max_fds: u64,
}

impl ClusterInfo {
    /// A leader is known and its addresses are in the replicated member table (its first entries as leader
    /// committed).
    pub fn leader_announced(&self) -> bool {
        self.leader_id != 0 && self.members.iter().any(|m| m.id == self.leader_id && m.announced)
    }
}

/// What an agent says about itself in each heartbeat (the leader's memory only; never replicated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatInfo {
    pub version: String,
    pub started_ms: u64,
    pub checkers: BTreeMap<String, String>,
    pub outbox_entries: u64,
    pub outbox_dropped: u64,
    /// What each checker actually ran (catalog artifacts and built-ins), one entry per (name, shadow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<CheckerRunView>,
    /// The hash of the assignment the agent holds (empty: none yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub assignment_hash: String,
}

/// One agent for `huatuo inspect` and the portal: replicated liveness plus the leader's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentListing {
    pub agent: String,
    pub host: String,
    pub alive: bool,
    pub since_ms: u64,
    pub heard: bool,
    pub last_heartbeat_ms_ago: u64,
    pub restarts: u64,
    pub info: HeartbeatInfo,
}

/// One entry of an object's history: a transition or a command about it, with who/what caused it and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub revision: u64,
    pub time_ms: u64,
    pub what: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_state: String,
    pub cause: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One change, as watchers see it. Revisions are dense: every change gets the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub revision: u64,
    pub time_ms: u64,
    pub object: String,
    pub what: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grade: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One row of the alert/audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub time_ms: u64,
    /// `alert` (needs a human) or `audit` (a recorded operator change).
    pub kind: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub by: String,
    pub message: String,
}

/// A proposal (an automatic transition the safety net held for an operator), as every front end shows it:
/// built by the master's API layer from its stored proposal (which also carries the held state-machine
/// input), converted to the wire in `convert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalView {
    pub id: u64,
    pub object: String,
    pub from_state: String,
    pub to_state: String,
    pub cause: String,
    pub evidence: String,
    /// The object's scopes when proposed.
    pub scopes: Vec<String>,
    pub reason: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub repeats: u64,
    /// `pending`, `approved`, `rejected` or `stale`.
    pub status: String,
    pub decided_by: String,
    pub decided_reason: String,
    pub decided_ms: u64,
}

/// A quota rule with its limits as text (`N` or `P%`), the shape operators write and every front end
/// carries; the master's API layer parses the limits (`api::requests::quota_rule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRuleView {
    /// `machine`, `disk`, `dimm`, `nic`, or `*` for every kind.
    pub kind: String,
    /// `cluster`, or a label key (`rack`): one limit per value of the label.
    pub scope: String,
    pub window_ms: u64,
    pub max_entries: String,
    pub max_concurrent: String,
}

// ---- checker catalog and gray release (issue 15); field names are the proto's (api.proto) ----

/// What one checker ran on an agent, as its heartbeat says (`CheckerRun`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerRunView {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub shadow: bool,
    /// running | fetching | unverified | failed | fallback
    pub status: String,
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub timeouts: u64,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub last_run_ms: u64,
}

/// How an external checker is scheduled (`ArtifactSpec`; ignored for rules and profiles).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactSpecView {
    #[serde(default)]
    pub interval_ms: u64,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub max_output_bytes: u64,
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub max_memory_bytes: u64,
    #[serde(default)]
    pub max_cpu_ms: u64,
}

/// One catalog entry `NAME@VERSION` (`Artifact`); type `builtin` entries are the agent's compiled checkers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactView {
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub pushed_by: String,
    #[serde(default)]
    pub pushed_ms: u64,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub spec: ArtifactSpecView,
}

/// The master's comparison of a canary version with the current one on the same hosts (`Deviation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviationView {
    pub window_start_ms: u64,
    pub window_ms: u64,
    pub canary_hosts: u64,
    pub canary_objects: u64,
    pub new_flagged: u64,
    pub current_flagged: u64,
    pub limit: u64,
    pub hosts_failing: u64,
    /// ok | too-many-flags | too-many-failures
    pub verdict: String,
}

/// One rollout of `NAME@VERSION` (`Rollout`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub name: String,
    pub version: String,
    /// gray | paused | promoted | rolled-back
    pub status: String,
    pub shadow: bool,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub percent: f64,
    /// KEY=VALUE
    #[serde(default)]
    pub labels: Vec<String>,
    pub by: String,
    pub reason: String,
    pub started_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub auto_paused: bool,
    #[serde(default)]
    pub paused_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation: Option<DeviationView>,
    #[serde(default)]
    pub previous_version: String,
}

/// `GET /api/v1/catalog` (`ListCatalogResponse`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogListing {
    pub artifacts: Vec<ArtifactView>,
    pub rollouts: Vec<RolloutView>,
    pub revision: u64,
}

/// Hosts per version of one checker (`VersionCount`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCountView {
    pub version: String,
    pub shadow: bool,
    pub assigned: u64,
    pub running: u64,
    pub failed_verify: u64,
    pub failed: u64,
    pub not_reporting: u64,
}

/// One checker's version distribution and rollouts (`CheckerDistribution`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckerDistributionView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub stable_version: String,
    pub versions: Vec<VersionCountView>,
    pub rollouts: Vec<RolloutView>,
}

/// `GET /api/v1/rollouts` (`RolloutStatusResponse`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatusView {
    pub checkers: Vec<CheckerDistributionView>,
    pub revision: u64,
}

/// One artifact an agent runs (`Assignment`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentView {
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub sha256: String,
    pub size: u64,
    pub shadow: bool,
    pub spec: ArtifactSpecView,
}

/// Objects of one kind in one state (`StateCount`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCountView {
    pub kind: String,
    pub state: String,
    pub count: u64,
}

/// One safety scope's counts (`ScopeSummary`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeSummaryView {
    pub scope: String,
    pub states: Vec<StateCountView>,
    pub agents: u64,
    pub agents_alive: u64,
}

/// `GET /api/v1/summary` (`SummaryResponse`): the fleet's counts, exact at `revision`, answered from the
/// replicated counters (never a scan of the objects).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryView {
    pub revision: u64,
    pub objects: u64,
    pub states: Vec<StateCountView>,
    pub scopes: Vec<ScopeSummaryView>,
    pub repair_without_ticket: u64,
    pub agents: u64,
    pub agents_alive: u64,
}
