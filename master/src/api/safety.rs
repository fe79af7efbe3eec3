//! The safety net's part of the API layer (shared by gRPC and REST): validated operator commands (levels, release,
//! decisions on proposals, quota config) and the read views operators and the portal show: per scope the
//! level, quota use against its limit, pending proposals, and why the last automatic action was blocked.

use proto::error::{ApiError, Code};
use proto::view::ClusterInfo;
use serde::{Deserialize, Serialize};

use super::{Service, now_ms, validate};
use crate::model::{CmdResult, Command};
use crate::safety::{
    self, AuditEntry, Level, Proposal, ProposalFilter, ProposalStatus, QuotaRule, SafetyConfig, ScopeRecord,
};
use crate::store::{Reader, StoreError};

/// Alerts returned with the safety view (newest first).
pub const SAFETY_ALERTS: usize = 100;
/// Most proposals one listing returns.
pub const MAX_PROPOSAL_LIST: usize = 10_000;

/// The scope, proposal and quota views are API views shared by every front end.
pub use proto::view::{ProposalView, QuotaRuleView, QuotaUse, ScopeView, WindowUse};

/// The view of a stored proposal (the held input stays in the store: approving re-applies it).
pub fn proposal_view(p: &Proposal) -> ProposalView {
    ProposalView {
        id: p.id,
        object: p.object.to_string(),
        from_state: p.from_state.as_str().into(),
        to_state: p.to_state.as_str().into(),
        cause: p.cause.clone(),
        evidence: p.evidence.clone(),
        scopes: p.scopes.clone(),
        reason: p.reason.clone(),
        created_ms: p.created_ms,
        updated_ms: p.updated_ms,
        repeats: p.repeats,
        status: p.status.as_str().into(),
        decided_by: p.decided_by.clone(),
        decided_reason: p.decided_reason.clone(),
        decided_ms: p.decided_ms,
    }
}

/// The view of a quota rule: its limits as text (`N` or `P%`).
pub fn quota_view(q: &QuotaRule) -> QuotaRuleView {
    QuotaRuleView {
        kind: q.kind.clone(),
        scope: q.scope.clone(),
        window_ms: q.window_ms,
        max_entries: q.max_entries.to_string(),
        max_concurrent: q.max_concurrent.to_string(),
    }
}

/// A quota rule from its view, the limits parsed (a bad limit is InvalidArgument).
pub fn quota_rule(v: QuotaRuleView) -> Result<QuotaRule, ApiError> {
    super::requests::quota_rule(v.kind, v.scope, v.window_ms, &v.max_entries, &v.max_concurrent)
}

impl SafetyView {
    /// The safety view on the wire (`proto::convert::safety_to_wire`).
    pub fn to_wire(&self) -> proto::api::GetSafetyResponse {
        let quotas: Vec<QuotaRuleView> = self.quotas.iter().map(quota_view).collect();
        // Serializing plain data with string keys cannot fail.
        let config_json = serde_json::to_string(&self.config).unwrap_or_default();
        proto::convert::safety_to_wire(&quotas, &self.scopes, &self.alerts, self.revision, config_json)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyView {
    pub quotas: Vec<QuotaRule>,
    pub scopes: Vec<ScopeView>,
    pub alerts: Vec<AuditEntry>,
    pub revision: u64,
    pub config: SafetyConfig,
}

/// The views of every scope, at `now` (windows slide with the clock of the reader).
pub fn scope_views(r: &Reader, now: u64) -> Result<(SafetyConfig, Vec<ScopeView>), StoreError> {
    let cfg = r.safety_config()?;
    let mut views = Vec::new();
    for (name, rec) in r.scopes()? {
        views.push(scope_view(r, &cfg, &name, &rec, now)?);
    }
    Ok((cfg, views))
}

pub fn scope_view(
    reader: &Reader,
    cfg: &SafetyConfig,
    name: &str,
    r: &ScopeRecord,
    now: u64,
) -> Result<ScopeView, StoreError> {
    let rows = |from: &str, to: &str| reader.counts_between(from, to);
    let mut quotas = Vec::new();
    for q in cfg.quotas.iter().filter(|q| safety::scope_key(name) == Some(q.scope.as_str())) {
        let kinds: Vec<&String> = if q.kind == "*" {
            r.kinds.keys().collect()
        } else {
            r.kinds.keys().filter(|k| **k == q.kind).collect()
        };
        for k in kinds {
            let c = &r.kinds[k];
            quotas.push(QuotaUse {
                kind: k.clone(),
                population: c.population,
                concurrent: c.removed,
                max_concurrent: q.max_concurrent.of(c.population),
                entries: crate::fsm::windows::entries_in_window(name, k, c, now, q.window_ms, &rows)?,
                max_entries: q.max_entries.of(c.population),
                window_ms: q.window_ms,
            });
        }
    }
    let liveness = (r.agents > 0 || r.silent_rows > 0 || !r.silent.is_empty())
        .then(|| -> Result<WindowUse, StoreError> {
            let rule = &cfg.liveness;
            Ok(WindowUse {
                held: crate::fsm::windows::silent_in_window(name, r, now, rule.window_ms, &rows)?,
                latch_at: rule.min_silent.max(rule.silent_share.of(r.agents)),
                window_ms: rule.window_ms,
            })
        })
        .transpose()?;
    let spike = if name.starts_with(safety::CHECKER_SCOPE) {
        let rule = &cfg.spike;
        let objects = crate::fsm::windows::spike_in_window(name, r, now, rule.window_ms, &rows)?;
        // The decider compares the window with the threshold of the kind of the object it adds: the
        // smallest over the kinds already in the window is where the next one of them latches.
        let kinds: std::collections::BTreeSet<&str> =
            objects.iter().map(|o| o.split_once('/').map_or(o.as_str(), |(k, _)| k)).collect();
        let cluster = if kinds.is_empty() { None } else { reader.scope(safety::CLUSTER)? };
        let population = |k: &str| cluster.as_ref().and_then(|c| c.kinds.get(k)).map_or(0, |c| c.population);
        let latch_at = kinds.iter().map(|k| rule.min.max(rule.share.of(population(k)))).min().unwrap_or(0);
        Some(WindowUse { held: objects.len() as u64, latch_at, window_ms: rule.window_ms })
    } else {
        None
    };
    Ok(ScopeView {
        scope: name.to_string(),
        level: r.level.as_str().to_string(),
        latched: r.latched,
        reason: r.reason.clone(),
        set_by: r.set_by.clone(),
        since_ms: r.since_ms,
        quotas,
        pending_proposals: r.pending,
        last_blocked: r.last_blocked.clone(),
        last_blocked_ms: r.last_blocked_ms,
        agents: r.agents,
        agents_alive: r.agents_alive,
        liveness,
        spike,
    })
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

fn check_scope(scope: &str) -> Result<(), ApiError> {
    safety::validate_scope(scope).map_err(ApiError::invalid)
}

impl Service {
    pub async fn safety(&self, stale: bool) -> Result<SafetyView, ApiError> {
        let r = self.read_view(stale).await?;
        let (config, scopes) = scope_views(&r, now_ms()).map_err(store_err)?;
        Ok(SafetyView {
            quotas: config.quotas.clone(),
            scopes,
            alerts: r.audit(true, SAFETY_ALERTS).map_err(store_err)?,
            revision: r.revision().map_err(store_err)?,
            config,
        })
    }

    /// The alert/audit log, newest first.
    pub async fn audit_log(&self, alerts_only: bool, limit: usize) -> Result<Vec<AuditEntry>, ApiError> {
        let r = self.read_view(false).await?;
        r.audit(alerts_only, limit.clamp(1, safety::MAX_AUDIT_ROWS as usize)).map_err(store_err)
    }

    async fn scope_after(&self, scope: &str) -> Result<(ScopeView, u64), ApiError> {
        let r = self.read_view(false).await?;
        let cfg = r.safety_config().map_err(store_err)?;
        let rec = r
            .scopes()
            .map_err(store_err)?
            .into_iter()
            .find(|(n, _)| n == scope)
            .map(|(_, r)| r)
            .unwrap_or_default();
        let view = scope_view(&r, &cfg, scope, &rec, now_ms()).map_err(store_err)?;
        Ok((view, r.revision().map_err(store_err)?))
    }

    pub async fn set_level(
        &self,
        scope: &str,
        level: Level,
        by: &str,
        reason: &str,
    ) -> Result<(ScopeView, u64), ApiError> {
        self.set_level_keyed(scope, level, by, reason, None).await
    }

    /// [`Service::set_level`] with the client's idempotency key: applied once across retries (a retry
    /// answers the scope as it is now).
    pub async fn set_level_keyed(
        &self,
        scope: &str,
        level: Level,
        by: &str,
        reason: &str,
        key: Option<String>,
    ) -> Result<(ScopeView, u64), ApiError> {
        check_scope(scope)?;
        validate::operator(by, reason)?;
        let cmd = Command::SetLevel { scope: scope.into(), level, by: by.into(), reason: reason.into() };
        self.submit_keyed(cmd, key).await?;
        self.scope_after(scope).await
    }

    pub async fn release(&self, scope: &str, by: &str, reason: &str) -> Result<(ScopeView, u64), ApiError> {
        self.release_keyed(scope, by, reason, None).await
    }

    /// [`Service::release`] with the client's idempotency key: applied once across retries.
    pub async fn release_keyed(
        &self,
        scope: &str,
        by: &str,
        reason: &str,
        key: Option<String>,
    ) -> Result<(ScopeView, u64), ApiError> {
        check_scope(scope)?;
        validate::operator(by, reason)?;
        let cmd = Command::Release { scope: scope.into(), by: by.into(), reason: reason.into() };
        self.submit_keyed(cmd, key).await?;
        self.scope_after(scope).await
    }

    pub async fn proposals(
        &self,
        status: Option<ProposalStatus>,
        filter: &ProposalFilter,
        limit: usize,
        stale: bool,
    ) -> Result<(Vec<Proposal>, u64), ApiError> {
        if let Some(s) = &filter.scope {
            check_scope(s)?;
        }
        let r = self.read_view(stale).await?;
        let limit = if limit == 0 { MAX_PROPOSAL_LIST } else { limit.min(MAX_PROPOSAL_LIST) };
        let list = r.proposals(status, filter, limit).map_err(store_err)?;
        Ok((list, r.revision().map_err(store_err)?))
    }

    pub async fn decide(
        &self,
        ids: Vec<u64>,
        filter: ProposalFilter,
        approve: bool,
        by: &str,
        reason: &str,
    ) -> Result<CmdResult, ApiError> {
        self.decide_keyed(ids, filter, approve, by, reason, None).await
    }

    /// [`Service::decide`] with the client's idempotency key: applied once across retries (a retry gets
    /// the first decision's result, `duplicate: true`).
    pub async fn decide_keyed(
        &self,
        ids: Vec<u64>,
        filter: ProposalFilter,
        approve: bool,
        by: &str,
        reason: &str,
        key: Option<String>,
    ) -> Result<CmdResult, ApiError> {
        validate::operator(by, reason)?;
        if let Some(s) = &filter.scope {
            check_scope(s)?;
        }
        if ids.len() > safety::MAX_DECIDE {
            return Err(ApiError::invalid(format!("{} ids (limit {})", ids.len(), safety::MAX_DECIDE)));
        }
        if ids.is_empty() && filter == ProposalFilter::default() {
            return Err(ApiError::invalid(
                "name proposals by id, or give a filter (scope, kind, host, checker) for a bulk decision",
            ));
        }
        let cmd = Command::Decide { ids, filter, approve, by: by.into(), reason: reason.into() };
        self.submit_keyed(cmd, key).await
    }

    /// Replace the quota rules (the rest of the safety config stays), or the whole config.
    pub async fn set_safety(
        &self,
        quotas: Option<Vec<QuotaRule>>,
        config: Option<SafetyConfig>,
        by: &str,
        reason: &str,
    ) -> Result<SafetyView, ApiError> {
        self.set_safety_keyed(quotas, config, by, reason, None).await
    }

    /// [`Service::set_safety`] with the client's idempotency key: applied once across retries. The key
    /// covers the config as proposed (quota rules merged into the config read now), so a retry of a
    /// quotas-only change matches the first try as long as nobody changed the rest of the config between.
    pub async fn set_safety_keyed(
        &self,
        quotas: Option<Vec<QuotaRule>>,
        config: Option<SafetyConfig>,
        by: &str,
        reason: &str,
        key: Option<String>,
    ) -> Result<SafetyView, ApiError> {
        validate::operator(by, reason)?;
        let mut cfg = match config {
            Some(c) => c,
            None => self.read_view(false).await?.safety_config().map_err(store_err)?,
        };
        if let Some(q) = quotas {
            cfg.quotas = q;
        }
        cfg.validate().map_err(ApiError::invalid)?;
        self.submit_keyed(Command::SetSafety { config: cfg, by: by.into(), reason: reason.into() }, key)
            .await?;
        self.safety(false).await
    }

    /// Enable command versions up to `version` cluster-wide (after every master runs a binary that knows
    /// them; see ARCHITECTURE.md "Upgrading masters"). Needs `by` and a reason (audited). Refused (Conflict)
    /// above what this node's binary knows, or what any member reports over the peer port, naming the
    /// member; a member that does not answer refuses a raise too (Unavailable: its binary is unknown).
    /// Lowering is allowed (rollback) down to what the catalog's assignments need: not below 6 while a model
    /// is assigned (its predictions are version-6 ingests), not below 4 during a shadow rollout (shadow
    /// findings are version-4 ingests), and never below 9 while the change log keeps rows in version 9's
    /// binary format. Answers the entry's revision and the cluster info.
    pub async fn set_min_command_version(
        &self,
        version: u32,
        by: &str,
        reason: &str,
    ) -> Result<(u64, ClusterInfo), ApiError> {
        self.set_min_command_version_keyed(version, by, reason, None).await
    }

    /// Refuse a `min_command_version` below what an assigned catalog artifact needs (a model's predictions
    /// are command version 6): checked before proposing, so REST, gRPC and the CLI refuse alike and nothing
    /// changes. Lowering stays possible to any version the assignments allow, and below once a model that is
    /// only in a gray or paused rollout is rolled back.
    async fn check_lowering_keeps_assignments(&self, version: u32) -> Result<(), ApiError> {
        let r = self.read_view(false).await?;
        let catalog = r.catalog_all().map_err(store_err)?;
        let Some((needs, c)) = crate::catalog::min_command_version_in_use(&catalog) else { return Ok(()) };
        if version >= needs {
            return Ok(());
        }
        // A rollout (a model's, or any checker's shadow run) can be rolled back; a promoted model is retired
        // (its stable version unassigned, command version 8), once no rollout of it is in progress.
        let from_kind = crate::catalog::assigned_command_version(c.kind).is_some_and(|v| v >= needs);
        let way_out = if c.stable.is_empty() || !from_kind {
            format!("roll back its rollout first, or keep min_command_version at {needs} or above")
        } else {
            format!(
                "retire it first (huatuo rollout retire {}@{}, command version {}), or keep \
                 min_command_version at {needs} or above",
                c.name,
                c.stable,
                crate::model::RETIRE_COMMAND_VERSION
            )
        };
        Err(ApiError::new(
            Code::Conflict,
            format!(
                "min_command_version {version} refused: {} {:?} is assigned ({}) and what it makes agents send \
                 needs command version {needs}, so the leader would refuse those agents' batches: {way_out}",
                c.kind.as_str(),
                c.name,
                assigned_where(c)
            ),
        ))
    }

    /// Refuse a `min_command_version` below 9 while the change log holds rows in the binary format that
    /// version 9 turned on: lowering is the first step of a rollback, and a binary of version 8 or older
    /// cannot read those rows, in its own tables or in a snapshot a member sends it, so it would stop as a
    /// corrupt replica. Checked before proposing, like the assignments.
    async fn check_lowering_keeps_stored_formats(&self, version: u32) -> Result<(), ApiError> {
        let binary = crate::model::BINARY_ENTRY_VERSION;
        if version >= binary {
            return Ok(());
        }
        let r = self.read_view(false).await?;
        let Some(revision) = r.oldest_binary_change_row().map_err(store_err)? else { return Ok(()) };
        Err(ApiError::new(
            Code::Conflict,
            format!(
                "min_command_version {version} refused: the change log holds rows in the binary format of \
                 command version {binary} (the oldest from revision {revision}), and snapshots carry them; a \
                 binary that knows only versions below {binary} cannot read them and would stop as a corrupt \
                 replica, so command version {binary} is not rolled back: keep min_command_version at \
                 {binary} or above and roll forward"
            ),
        ))
    }

    /// [`Service::set_min_command_version`] with the client's idempotency key: applied once across retries
    /// (while the cluster is below command version 3 the key is ignored, as for every write).
    pub async fn set_min_command_version_keyed(
        &self,
        version: u32,
        by: &str,
        reason: &str,
        key: Option<String>,
    ) -> Result<(u64, ClusterInfo), ApiError> {
        validate::operator(by, reason)?;
        if version == 0 {
            return Err(ApiError::invalid("min_command_version must be at least 1"));
        }
        self.check_lowering_keeps_assignments(version).await?;
        self.check_lowering_keeps_stored_formats(version).await?;
        let me = self.raft.id();
        if version > self.cfg.knows_command_version {
            return Err(ApiError::new(
                Code::Conflict,
                format!(
                    "min_command_version {version} refused: member {me} (this node) knows command versions \
                     1..={}: upgrade it first",
                    self.cfg.knows_command_version
                ),
            ));
        }
        if version > self.stats.min_command_version() {
            let versions = self.ask_member_versions().await;
            for (id, v) in versions {
                match v {
                    Ok(knows) if knows >= version => {}
                    Ok(0) => {
                        return Err(ApiError::new(
                            Code::Conflict,
                            format!(
                                "min_command_version {version} refused: member {id} does not say which \
                                 command versions it knows (a binary older than this check): upgrade it first"
                            ),
                        ));
                    }
                    Ok(knows) => {
                        return Err(ApiError::new(
                            Code::Conflict,
                            format!(
                                "min_command_version {version} refused: member {id} knows command versions \
                                 1..={knows}: upgrade it first"
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(ApiError::unavailable(format!(
                            "min_command_version {version} refused: member {id} did not say which command \
                             versions it knows ({e}); retry when every member answers"
                        )));
                    }
                }
            }
        }
        let cmd = Command::SetMinCommandVersion { version, by: by.into(), reason: reason.into() };
        let revision = self.submit_keyed(cmd, key).await?.revision;
        Ok((revision, self.cluster_status()?))
    }
}

/// Where a checker is assigned, for an error message: its stable version and its active rollouts.
fn assigned_where(c: &crate::catalog::CheckerRecord) -> String {
    let mut parts = Vec::new();
    if !c.stable.is_empty() {
        parts.push(format!("stable version {}", c.stable));
    }
    for r in c.rollouts.iter().filter(|r| r.state.active()) {
        parts.push(format!("{} rollout of {}", r.state.as_str(), r.version));
    }
    parts.join(", ")
}
