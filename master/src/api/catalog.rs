//! The checker catalog's API (issue 15), shared by gRPC and REST: push an artifact (validated once here:
//! names, type, size, sha256, spec, and a rule set compiled with the agent's own compiler from the
//! `rulesets` crate), list the catalog (built-in checkers included, read-only), rollout changes, the
//! version distribution (`rollout status`), an agent's assignment (per heartbeat, O(checkers), from a cache
//! keyed by the replicated catalog counter) and chunked fetches of assigned artifacts. The leader's catalog
//! duties (seeding a new cluster, canary windows) are [`Service::catalog_duties`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use proto::error::{ApiError, Code};
use proto::view::{
    ArtifactSpecView, ArtifactView, AssignmentView, CatalogListing, CheckerDistributionView,
    RolloutStatusView, RolloutView, VersionCountView,
};
use serde::Deserialize;

use super::{Service, lock, now_ms, store_err, validate};
use crate::catalog::{self, *};
use crate::model::{Command, RolloutAction, SeedItem};
use crate::store::{META_CATALOG_BYTES, META_CATALOG_REV, META_CATALOG_SEEDED, Reader};

/// Rollouts the leader's canary duty evaluates per pass (each costs one pass over the objects).
pub const MAX_CANARY_CHECKS_PER_PASS: usize = 2;
/// Longest `last_error` of a heartbeat's checker run (the agent's own text; a longer one makes the heartbeat
/// INVALID_ARGUMENT, so agents cut theirs below it): a few lines of stderr say what broke.
pub const MAX_RUN_ERROR_LEN: usize = 4096;

/// A push, as every front end delivers it (REST: `content_base64` instead of `content`).
#[derive(Debug, Clone, Default)]
pub struct PushRequest {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub content: Vec<u8>,
    pub description: String,
    pub spec: ArtifactSpecView,
    pub by: String,
    pub sha256: String,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PushResult {
    pub artifact: ArtifactView,
    pub revision: u64,
    pub duplicate: bool,
}

/// A rollout change (the proto's `RolloutRequest`; REST posts this JSON).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub action: String,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub percent: f64,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

/// One chunk of an artifact for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchChunk {
    pub data: Vec<u8>,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// The leader's cache of the catalog for assignments: (the replicated catalog counter, the records).
pub(super) type CatalogCache = std::sync::Mutex<Option<(u64, Arc<Vec<CheckerRecord>>)>>;

/// Most hosts whose assignment the heartbeat path caches (one per agent the leader tracks); at the limit
/// the cache starts over (the assignments are computed again, one per host's next beat).
pub const MAX_CACHED_ASSIGNMENTS: usize = super::heartbeats::MAX_TRACKED_AGENTS;

/// Per host: the hash of its assignment and the entries, valid while the catalog counter (the key) stays.
/// A heartbeat trusts it while the node's catalog generation ([`crate::fsm::FsmStats::catalog_generation`],
/// moved after every commit that changed the counter) is the one seen when the counter was read, so an
/// unchanged assignment costs no store read.
#[derive(Default)]
pub(super) struct AssignmentCache {
    catalog_rev: u64,
    generation: u64,
    /// Beats that read the store for their assignment (a cache miss), since the process started.
    reads: u64,
    hosts: std::collections::HashMap<String, CachedAssignment>,
    /// One copy of each distinct assignment (by hash) that `hosts` point to: most of a fleet holds the
    /// same few assignments, so 100,000 hosts share a handful instead of each keeping its own copy.
    distinct: std::collections::HashMap<String, CachedAssignment>,
}

/// A cached assignment: its hash and its entries, shared by every host that has it.
type CachedAssignment = (Arc<str>, Arc<Vec<AssignmentView>>);

impl AssignmentCache {
    /// Cache `host`'s assignment `a` (hash `hash`), sharing the copy of an equal assignment already cached.
    fn put(&mut self, host: &str, hash: &str, a: &[AssignmentView]) {
        let shared = match self.distinct.get(hash) {
            Some(e) => e.clone(),
            None => {
                let e: CachedAssignment = (Arc::from(hash), Arc::new(a.to_vec()));
                self.distinct.insert(hash.to_string(), e.clone());
                e
            }
        };
        self.hosts.insert(host.to_string(), shared);
    }

    /// Forget every host's assignment (the catalog moved, or the cache is full).
    fn clear(&mut self) {
        self.hosts.clear();
        self.distinct.clear();
    }
}

fn invalid(e: String) -> ApiError {
    ApiError::invalid(e)
}

/// Check an external checker's spec (rules and profiles ignore theirs but may not carry nonsense).
fn check_spec(kind: ArtifactType, s: &ArtifactSpecView) -> Result<(), ApiError> {
    if s.kinds.len() > MAX_SPEC_KINDS {
        return Err(invalid(format!("spec lists {} kinds (limit {MAX_SPEC_KINDS})", s.kinds.len())));
    }
    for k in &s.kinds {
        k.parse::<state_machines::Kind>().map_err(|e| invalid(format!("spec kind {k:?}: {e}")))?;
    }
    if kind != ArtifactType::External {
        return Ok(());
    }
    if s.interval_ms == 0 || s.interval_ms > MAX_SPEC_INTERVAL_MS {
        return Err(invalid(format!("an external checker needs interval_ms in 1..={MAX_SPEC_INTERVAL_MS}")));
    }
    if s.timeout_ms == 0 || s.timeout_ms > MAX_SPEC_TIMEOUT_MS {
        return Err(invalid(format!("an external checker needs timeout_ms in 1..={MAX_SPEC_TIMEOUT_MS}")));
    }
    if s.max_output_bytes > MAX_SPEC_OUTPUT_BYTES {
        return Err(invalid(format!("max_output_bytes above {MAX_SPEC_OUTPUT_BYTES}")));
    }
    if s.kinds.is_empty() {
        return Err(invalid("an external checker must name the object kinds it reports on (kinds)".into()));
    }
    Ok(())
}

/// Every check of a push that needs no state: the record to propose.
pub fn validate_push(req: &PushRequest) -> Result<ArtifactRecord, ApiError> {
    check_name(&req.name).map_err(invalid)?;
    check_version(&req.version).map_err(invalid)?;
    // No type: an external checker (the CLI's default too), the same on every front end.
    let kind = if req.kind.is_empty() {
        ArtifactType::External
    } else {
        ArtifactType::parse(&req.kind).map_err(invalid)?
    };
    if req.by.trim().is_empty() {
        return Err(invalid("say who you are (by)".into()));
    }
    validate::name("by", &req.by, crate::model::MAX_TEXT_LEN)?;
    validate::text("description", &req.description, MAX_DESCRIPTION_LEN)?;
    if req.content.is_empty() {
        return Err(invalid("the artifact is empty".into()));
    }
    if req.content.len() as u64 > MAX_ARTIFACT_BYTES {
        return Err(invalid(format!(
            "the artifact is {} bytes, over the limit of {MAX_ARTIFACT_BYTES} bytes",
            req.content.len()
        )));
    }
    let sha256 = sha256_hex(&req.content);
    if !req.sha256.is_empty() && req.sha256.to_ascii_lowercase() != sha256 {
        return Err(invalid(format!("sha256 {} given, the content hashes to {sha256}", req.sha256)));
    }
    check_spec(kind, &req.spec)?;
    let at = format!("{}@{}", req.name, req.version);
    match kind {
        ArtifactType::Rules => {
            let text = std::str::from_utf8(&req.content)
                .map_err(|_| invalid(format!("{at}: a rule set must be UTF-8 TOML")))?;
            rulesets::rules::RuleSet::from_sources(&[(at.clone(), text.to_string())])
                .map_err(|e| invalid(format!("rule set does not compile: {e}")))?;
        }
        ArtifactType::Profile => {
            let text = std::str::from_utf8(&req.content)
                .map_err(|_| invalid(format!("{at}: a profile must be UTF-8 TOML")))?;
            let name = rulesets::profile::check(text, &at).map_err(|e| invalid(e.to_string()))?;
            if name != req.name {
                return Err(invalid(format!(
                    "profile {at} names itself {name:?}: a profile's catalog name is its `name`"
                )));
            }
        }
        ArtifactType::Model => {
            // The agent's own parser: a model that does not parse, has the wrong format or inconsistent
            // numbers is refused here, before it reaches Raft, on every front end alike.
            predict::Model::from_json(&req.content).map_err(|e| invalid(format!("model {at}: {e}")))?;
        }
        ArtifactType::Topology => {
            // The leader's own parser (format told by the content), so a file the leader could not use is
            // refused here and changes nothing.
            crate::net::fabric::parse(&req.content, None)
                .map_err(|e| invalid(format!("topology {at} refused: {e}")))?;
        }
        ArtifactType::External => {}
    }
    Ok(ArtifactRecord {
        name: req.name.clone(),
        version: req.version.clone(),
        kind,
        sha256,
        size: req.content.len() as u64,
        pushed_by: req.by.clone(),
        pushed_ms: 0,
        description: req.description.clone(),
        spec: req.spec.clone(),
    })
}

/// Every check of a rollout change that needs no state: the command to propose.
pub fn validate_rollout(req: &RolloutRequest) -> Result<Command, ApiError> {
    let action = RolloutAction::parse(&req.action).map_err(invalid)?;
    check_name(&req.name).map_err(invalid)?;
    check_version(&req.version).map_err(invalid)?;
    validate::operator(&req.by, &req.reason)?;
    let bp = catalog::percent_bp(req.percent).map_err(invalid)?;
    if req.hosts.len() > MAX_ROLLOUT_HOSTS {
        return Err(invalid(format!("{} hosts (limit {MAX_ROLLOUT_HOSTS})", req.hosts.len())));
    }
    let mut hosts: Vec<String> = Vec::with_capacity(req.hosts.len());
    for h in &req.hosts {
        validate::host(h)?;
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    if req.labels.len() > MAX_ROLLOUT_LABELS {
        return Err(invalid(format!("{} labels (limit {MAX_ROLLOUT_LABELS})", req.labels.len())));
    }
    let mut labels = BTreeMap::new();
    for l in &req.labels {
        let (k, v) =
            l.split_once('=').ok_or_else(|| invalid(format!("label selector {l:?}: expected KEY=VALUE")))?;
        if k.is_empty() || v.is_empty() {
            return Err(invalid(format!("label selector {l:?}: expected KEY=VALUE")));
        }
        validate::name("label key", k, crate::model::MAX_MAP_KEY_LEN)?;
        validate::name("label value", v, crate::model::MAX_MAP_VALUE_LEN)?;
        labels.insert(k.to_string(), v.to_string());
    }
    let chosen = [!hosts.is_empty(), bp > 0, !labels.is_empty()].iter().filter(|x| **x).count();
    match action {
        RolloutAction::Start if chosen != 1 => {
            return Err(invalid(
                "rollout start needs exactly one of hosts, a percentage above 0, or labels".into(),
            ));
        }
        RolloutAction::Widen if chosen != 1 || !labels.is_empty() => {
            return Err(invalid("rollout widen takes hosts or a percentage".into()));
        }
        RolloutAction::Pause
        | RolloutAction::Resume
        | RolloutAction::Promote
        | RolloutAction::Rollback
        | RolloutAction::Retire
            if chosen != 0 =>
        {
            return Err(invalid(format!("rollout {} takes no hosts, percentage or labels", action.as_str())));
        }
        _ => {}
    }
    if req.shadow && action != RolloutAction::Start {
        return Err(invalid("--shadow applies to rollout start only".into()));
    }
    Ok(Command::Rollout {
        action,
        name: req.name.clone(),
        version: req.version.clone(),
        target: Target { hosts, from_bp: 0, bp, labels },
        shadow: req.shadow,
        by: req.by.clone(),
        reason: req.reason.clone(),
    })
}

/// The built-in checkers as read-only catalog entries.
fn builtins(name: &str) -> Vec<ArtifactView> {
    rulesets::BUILTIN_CHECKERS
        .iter()
        .filter(|b| name.is_empty() || b.name == name)
        .map(|b| ArtifactView {
            name: b.name.into(),
            version: b.version.into(),
            kind: "builtin".into(),
            description: "compiled into the agent (read-only)".into(),
            spec: ArtifactSpecView {
                kinds: b.kinds.iter().map(|k| (*k).to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

fn rollouts_of(c: &CheckerRecord) -> impl Iterator<Item = RolloutView> + '_ {
    c.rollouts.iter().chain(c.done.iter()).map(|r| r.view(&c.name))
}

impl Service {
    /// The catalog for assignments: cached until the replicated catalog counter moves.
    fn catalog_snapshot(&self, r: &Reader) -> Result<Arc<Vec<CheckerRecord>>, ApiError> {
        let rev = r.meta(META_CATALOG_REV).map_err(store_err)?;
        if let Some((at, c)) = lock(&self.catalog_cache).as_ref()
            && *at == rev
        {
            return Ok(c.clone());
        }
        let c = Arc::new(r.catalog_all().map_err(store_err)?);
        *lock(&self.catalog_cache) = Some((rev, c.clone()));
        Ok(c)
    }

    /// The assignment of `host` and its hash, from this node's replicated state: O(checkers) plus one
    /// machine-object read when a rollout selects by labels.
    pub fn assignment(&self, host: &str) -> Result<(String, Vec<AssignmentView>), ApiError> {
        let r = Reader::new(&self.db).map_err(store_err)?;
        let cat = self.catalog_snapshot(&r)?;
        let labels = if cat.iter().any(|c| c.rollouts.iter().any(|x| !x.target.labels.is_empty())) {
            r.object(&format!("machine/{host}")).map_err(store_err)?.map(|o| o.labels)
        } else {
            None
        };
        let a = assignment_of(cat.iter(), host, labels.as_ref());
        Ok((assignment_hash(&a), a))
    }

    /// The assignment of `host` for a heartbeat: its hash, and the entries only when the agent holds another
    /// one (`held`). Cached per host until the catalog counter moves, so an unchanged assignment costs a
    /// hash-map lookup and no store read (the node's catalog generation says whether the counter moved);
    /// computed each time while a rollout selects hosts by labels (labels change without the catalog
    /// moving). Opening a read transaction and reading the counter on every beat was 8% of a leader's
    /// async workers at 10,000 beats/s (`perf`, 100,000 agents, 2026-12-04).
    ///
    /// Returns the hash the agent should hold and, when it differs from `held`, the assignment. An unchanged
    /// cached assignment hands `held` back as the hash: no allocation.
    pub fn assignment_for_beat(
        &self,
        host: &str,
        held: String,
    ) -> Result<(String, Option<Vec<AssignmentView>>), ApiError> {
        // Read before the store: a generation moves only after its commit, so a counter read after it is at
        // least that new.
        let generation = self.stats.catalog_generation.load(std::sync::atomic::Ordering::Acquire);
        {
            let c = lock(&self.assignments);
            if c.generation == generation
                && let Some((hash, a)) = c.hosts.get(host)
            {
                if **hash == *held {
                    return Ok((held, None));
                }
                return Ok((hash.to_string(), Some(a.as_ref().clone())));
            }
        }
        let r = Reader::new(&self.db).map_err(store_err)?;
        let rev = r.meta(META_CATALOG_REV).map_err(store_err)?;
        {
            let mut c = lock(&self.assignments);
            c.reads += 1;
            if c.catalog_rev == rev
                && let Some((hash, a)) = c.hosts.get(host).cloned()
            {
                // Cached under the same counter: the generation moved for another reason (a restore, a
                // start), so the entries still hold.
                c.generation = c.generation.max(generation);
                let included = *hash != *held;
                return Ok((hash.to_string(), included.then(|| a.as_ref().clone())));
            }
        }
        let cat = self.catalog_snapshot(&r)?;
        let by_labels = cat.iter().any(|c| c.rollouts.iter().any(|x| !x.target.labels.is_empty()));
        let labels = if by_labels {
            r.object(&format!("machine/{host}")).map_err(store_err)?.map(|o| o.labels)
        } else {
            None
        };
        let a = assignment_of(cat.iter(), host, labels.as_ref());
        let hash = assignment_hash(&a);
        if !by_labels {
            let mut c = lock(&self.assignments);
            if c.catalog_rev != rev || c.hosts.len() >= MAX_CACHED_ASSIGNMENTS {
                c.clear();
                c.catalog_rev = rev;
                c.generation = generation;
            } else {
                c.generation = c.generation.max(generation);
            }
            c.put(host, &hash, &a);
        }
        let included = hash != held;
        Ok((hash, included.then_some(a)))
    }

    /// Hosts whose assignment is cached now (at most [`MAX_CACHED_ASSIGNMENTS`]).
    pub fn cached_assignments(&self) -> usize {
        lock(&self.assignments).hosts.len()
    }

    /// Heartbeats that read the store for their assignment (not cached, or the catalog moved).
    pub fn assignment_store_reads(&self) -> u64 {
        lock(&self.assignments).reads
    }

    /// Validate and store an artifact: chunks first (when larger than one chunk), then the push itself.
    pub async fn push_artifact(&self, req: PushRequest, key: Option<String>) -> Result<PushResult, ApiError> {
        let rec = validate_push(&req)?;
        self.store_artifact(rec, &req.content, key).await
    }

    /// Store a validated artifact record with its bytes (`content`, which `rec` describes).
    pub(super) async fn store_artifact(
        &self,
        mut rec: ArtifactRecord,
        content: &[u8],
        key: Option<String>,
    ) -> Result<PushResult, ApiError> {
        self.leader_gate()?;
        // A kind this cluster has not enabled yet is refused before any chunk is stored.
        let probe = Command::CatalogPush { artifact: rec.clone(), data: String::new() };
        crate::model::check_proposable(&probe, self.stats.min_command_version())
            .map_err(|e| ApiError::new(Code::Conflict, e.to_string()))?;
        let r = self.read_view(false).await?;
        if let Some(c) = r.catalog(&rec.name).map_err(store_err)?
            && let Some(v) = c.versions.get(&rec.version)
        {
            if v.sha256 == rec.sha256 {
                return Ok(PushResult {
                    artifact: v.view(),
                    revision: self.current_revision(),
                    duplicate: true,
                });
            }
            return Err(ApiError::new(
                Code::Conflict,
                format!(
                    "{}@{} is already stored with sha256 {}; push a new version",
                    rec.name, rec.version, v.sha256
                ),
            ));
        }
        let stored = r.blob_chunk(&rec.sha256, 0).map_err(store_err)?.is_some();
        let total = r.meta(META_CATALOG_BYTES).map_err(store_err)?;
        if !stored && total + rec.size > MAX_CATALOG_BYTES {
            return Err(ApiError::new(
                Code::Conflict,
                format!(
                    "the catalog holds {total} bytes; this artifact's {} would pass its limit of {MAX_CATALOG_BYTES}",
                    rec.size
                ),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let data = if content.len() <= CHUNK_BYTES {
            b64.encode(content)
        } else {
            for (i, chunk) in content.chunks(CHUNK_BYTES).enumerate() {
                let idx = i as u64;
                if r.blob_chunk(&rec.sha256, idx).map_err(store_err)?.is_some() {
                    continue;
                }
                let cmd =
                    Command::CatalogChunk { sha256: rec.sha256.clone(), index: idx, data: b64.encode(chunk) };
                self.submit(cmd).await?;
            }
            String::new()
        };
        drop(r);
        rec.pushed_ms = now_ms();
        let res = self.submit_keyed(Command::CatalogPush { artifact: rec.clone(), data }, key).await?;
        let r = Reader::new(&self.db).map_err(store_err)?;
        let artifact = r
            .catalog(&rec.name)
            .map_err(store_err)?
            .and_then(|c| c.versions.get(&rec.version).map(ArtifactRecord::view))
            .unwrap_or_else(|| rec.view());
        Ok(PushResult { artifact, revision: res.revision, duplicate: res.duplicate })
    }

    /// The catalog (built-ins first, read-only) and its rollouts; `name` empty: everything.
    pub async fn list_catalog(&self, name: &str) -> Result<CatalogListing, ApiError> {
        if !name.is_empty() {
            check_name(name).map_err(invalid)?;
        }
        let r = self.read_view(false).await?;
        let mut out = CatalogListing { artifacts: builtins(name), ..Default::default() };
        let all = if name.is_empty() {
            r.catalog_all().map_err(store_err)?
        } else {
            r.catalog(name).map_err(store_err)?.into_iter().collect()
        };
        for c in &all {
            out.artifacts.extend(c.versions.values().map(ArtifactRecord::view));
            out.rollouts.extend(rollouts_of(c));
        }
        out.revision = r.revision().map_err(store_err)?;
        Ok(out)
    }

    /// One checker (`GET /api/v1/catalog/{name}`): NOT_FOUND when neither built in nor in the catalog.
    pub async fn catalog_checker(&self, name: &str) -> Result<CatalogListing, ApiError> {
        let l = self.list_catalog(name).await?;
        if l.artifacts.is_empty() {
            return Err(ApiError::not_found(format!("no checker {name:?} in the catalog")));
        }
        Ok(l)
    }

    /// A validated rollout change; answers the rollout as it is after the change.
    pub async fn rollout(
        &self,
        req: RolloutRequest,
        key: Option<String>,
    ) -> Result<(RolloutView, u64), ApiError> {
        let cmd = validate_rollout(&req)?;
        self.leader_gate()?;
        if let Some(c) = Reader::new(&self.db).map_err(store_err)?.catalog(&req.name).map_err(store_err)? {
            if !c.kind.assignable() {
                return Err(invalid(crate::fsm::topology_not_rolled_out(&req.name)));
            }
            self.check_assignable_now(&c, &cmd)?;
        }
        let retire = matches!(cmd, Command::Rollout { action: RolloutAction::Retire, .. });
        let res = self.submit_keyed(cmd, key).await?;
        if retire {
            // No rollout is involved: the answer is the revision alone.
            return Ok((RolloutView::default(), res.revision));
        }
        let r = Reader::new(&self.db).map_err(store_err)?;
        let c = r.catalog(&req.name).map_err(store_err)?;
        let view = c
            .as_ref()
            .and_then(|c| {
                c.rollouts
                    .iter()
                    .find(|x| x.version == req.version)
                    .or_else(|| c.done.iter().rev().find(|x| x.version == req.version))
                    .map(|x| x.view(&c.name))
            })
            .unwrap_or_default();
        Ok((view, res.revision))
    }

    /// Refuse a rollout action that puts a version of `c` on hosts (start, widen, resume, promote) while the
    /// cluster's `min_command_version` is below what that kind's findings need: a model assigned at 5 would
    /// have its agents' batches refused. The mirror of lowering `min_command_version` under an assigned model
    /// (`api/safety.rs`); pausing, rolling back and retiring assign nothing and stay allowed.
    fn check_assignable_now(&self, c: &CheckerRecord, cmd: &Command) -> Result<(), ApiError> {
        let Command::Rollout { action, version, .. } = cmd else { return Ok(()) };
        if matches!(action, RolloutAction::Pause | RolloutAction::Rollback | RolloutAction::Retire) {
            return Ok(());
        }
        let min = self.stats.min_command_version();
        match crate::catalog::assigned_command_version(c.kind) {
            Some(needs) if min < needs => Err(ApiError::new(
                Code::Conflict,
                format!(
                    "rollout {} of {} {}@{version} refused: what it makes agents send needs command version \
                     {needs}, but the cluster's min_command_version is {min}: raise it first \
                     (set-min-command-version {needs})",
                    action.as_str(),
                    c.kind.as_str(),
                    c.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The version distribution per checker: from the replicated agents (their hosts' assignments) and the
    /// leader's heartbeat memory (what each host reports running). Leader only.
    pub async fn rollout_status(&self, name: &str) -> Result<RolloutStatusView, ApiError> {
        if !name.is_empty() {
            check_name(name).map_err(invalid)?;
        }
        self.leader_gate()?;
        let r = self.read_view(false).await?;
        let cat: Vec<CheckerRecord> = if name.is_empty() {
            // Topologies are the master's input, never assigned: no distribution to show.
            r.catalog_all().map_err(store_err)?.into_iter().filter(|c| c.kind.assignable()).collect()
        } else {
            let c = r.catalog(name).map_err(store_err)?;
            if c.is_none() {
                return Err(ApiError::not_found(format!("no checker {name:?} in the catalog")));
            }
            c.into_iter().collect()
        };
        let agents = r.agents().map_err(store_err)?;
        let heard: BTreeMap<String, super::AgentView> =
            self.heartbeats.views().into_iter().map(|v| (v.agent.clone(), v)).collect();
        let label_rollouts = cat.iter().any(|c| c.rollouts.iter().any(|x| !x.target.labels.is_empty()));
        let mut out = RolloutStatusView { revision: r.revision().map_err(store_err)?, ..Default::default() };
        let mut counts: Vec<BTreeMap<(String, bool), VersionCountView>> = vec![BTreeMap::new(); cat.len()];
        for (agent, rec) in &agents {
            let labels = if label_rollouts {
                r.object(&format!("machine/{}", rec.host)).map_err(store_err)?.map(|o| o.labels)
            } else {
                None
            };
            let runs = heard.get(agent).filter(|h| rec.alive && h.alive).map(|h| &h.info.runs);
            for (i, c) in cat.iter().enumerate() {
                for a in assignment_for(c, &rec.host, labels.as_ref()) {
                    let e =
                        counts[i].entry((a.version.clone(), a.shadow)).or_insert_with(|| VersionCountView {
                            version: a.version.clone(),
                            shadow: a.shadow,
                            ..Default::default()
                        });
                    e.assigned += 1;
                    let run = runs.and_then(|runs| {
                        runs.iter()
                            .find(|x| x.name == a.name && x.version == a.version && x.shadow == a.shadow)
                    });
                    match run.map(|x| x.status.as_str()) {
                        Some("running") => e.running += 1,
                        Some("unverified") => e.failed_verify += 1,
                        Some("failed") => e.failed += 1,
                        _ => e.not_reporting += 1,
                    }
                }
            }
        }
        for (c, counts) in cat.iter().zip(counts) {
            out.checkers.push(CheckerDistributionView {
                name: c.name.clone(),
                kind: c.kind.as_str().into(),
                stable_version: c.stable.clone(),
                versions: counts.into_values().collect(),
                rollouts: rollouts_of(c).collect(),
            });
        }
        Ok(out)
    }

    /// One chunk of an artifact assigned to `host`: PERMISSION_DENIED for anything else (agents read only
    /// what they run). Served from this node's store (artifacts are immutable).
    pub fn fetch_artifact(
        &self,
        host: &str,
        name: &str,
        version: &str,
        sha256: &str,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FetchChunk, ApiError> {
        validate::host(host)?;
        check_name(name).map_err(invalid)?;
        check_version(version).map_err(invalid)?;
        let (_, assigned) = self.assignment(host)?;
        let Some(a) = assigned
            .iter()
            .find(|a| a.name == name && a.version == version && (sha256.is_empty() || a.sha256 == sha256))
        else {
            return Err(ApiError::permission_denied(format!(
                "{name}@{version} is not assigned to host {host}: agents fetch only what they run"
            )));
        };
        if offset > a.size {
            return Err(invalid(format!("offset {offset} is past the artifact's {} bytes", a.size)));
        }
        let want = match max_bytes {
            0 => MAX_FETCH_BYTES,
            n => (n as usize).min(MAX_FETCH_BYTES),
        };
        let mut data = Vec::new();
        if offset < a.size {
            let idx = offset / CHUNK_BYTES as u64;
            let r = Reader::new(&self.db).map_err(store_err)?;
            let chunk = r
                .blob_chunk(&a.sha256, idx)
                .map_err(store_err)?
                .ok_or_else(|| ApiError::internal(format!("chunk {idx} of {} is missing", a.sha256)))?;
            let from = (offset % CHUNK_BYTES as u64) as usize;
            let to = chunk.len().min(from + want);
            data = chunk.get(from..to).map(<[u8]>::to_vec).unwrap_or_default();
        }
        Ok(FetchChunk { data, offset, size: a.size, sha256: a.sha256.clone() })
    }

    /// The leader's catalog duties: seed a new cluster's catalog once the catalog's command version is
    /// enabled, then close the canary windows that are due (at most [`MAX_CANARY_CHECKS_PER_PASS`]).
    pub(super) async fn catalog_duties(&self, r: &Reader) -> Result<(), ApiError> {
        if self.stats.min_command_version() < crate::model::CATALOG_COMMAND_VERSION {
            return Ok(());
        }
        if r.meta(META_CATALOG_SEEDED).map_err(store_err)? == 0 {
            self.submit(seed_command()).await?;
            return Ok(());
        }
        let cfg = lock(&self.canary).clone();
        let now = now_ms();
        // Which windows are due, from the cached catalog (a window starts only with a catalog change, which
        // moves the cache key); only the due checkers are read fresh, for their window counts.
        let cached = self.catalog_snapshot(r)?;
        let due_names: Vec<String> = cached
            .iter()
            .filter(|c| {
                c.rollouts.iter().any(|x| {
                    x.state == RolloutState::Gray && now.saturating_sub(x.window.start_ms) >= cfg.window_ms
                })
            })
            .map(|c| c.name.clone())
            .take(MAX_CANARY_CHECKS_PER_PASS)
            .collect();
        if due_names.is_empty() {
            return Ok(());
        }
        let mut cat = Vec::with_capacity(due_names.len());
        for n in &due_names {
            cat.extend(r.catalog(n).map_err(store_err)?);
        }
        let due: Vec<(&CheckerRecord, &RolloutRecord)> = cat
            .iter()
            .flat_map(|c| c.rollouts.iter().map(move |x| (c, x)))
            .filter(|(_, x)| {
                x.state == RolloutState::Gray && now.saturating_sub(x.window.start_ms) >= cfg.window_ms
            })
            .take(MAX_CANARY_CHECKS_PER_PASS)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let agents = r.agents().map_err(store_err)?;
        let heard: BTreeMap<String, super::AgentView> =
            self.heartbeats.views().into_iter().map(|v| (v.agent.clone(), v)).collect();
        for (c, x) in due {
            let mut hosts = BTreeSet::new();
            let mut failing = 0u64;
            for (agent, rec) in agents.iter().filter(|(_, a)| a.alive) {
                let labels = if x.target.labels.is_empty() {
                    None
                } else {
                    r.object(&format!("machine/{}", rec.host)).map_err(store_err)?.map(|o| o.labels)
                };
                if !in_target(&x.target, &c.name, &rec.host, labels.as_ref())
                    || !hosts.insert(rec.host.clone())
                {
                    continue;
                }
                let failed = heard.get(agent).is_some_and(|h| {
                    h.info
                        .runs
                        .iter()
                        .any(|run| run.name == c.name && run.version == x.version && run.status == "failed")
                });
                failing += u64::from(failed);
            }
            let kinds: Vec<state_machines::Kind> = c
                .versions
                .get(&x.version)
                .map(|a| a.spec.kinds.iter().filter_map(|k| k.parse().ok()).collect())
                .unwrap_or_default();
            let mut objects = 0u64;
            if x.shadow && !hosts.is_empty() {
                // Streamed (a listing would hold every record in memory at once).
                r.for_each_object(|o| {
                    if o.id.host_name().is_some_and(|h| hosts.contains(h))
                        && (kinds.is_empty() || kinds.contains(&o.id.kind()))
                    {
                        objects += 1;
                    }
                })
                .map_err(store_err)?;
            }
            let (new_flagged, current_flagged) =
                if x.shadow { (x.window.new_count(), x.window.current_count()) } else { (0, 0) };
            let numbers = WindowNumbers {
                window_start_ms: x.window.start_ms,
                window_ms: now.saturating_sub(x.window.start_ms),
                canary_hosts: hosts.len() as u64,
                canary_objects: objects,
                new_flagged,
                current_flagged,
                hosts_failing: failing,
            };
            let deviation = verdict(&numbers, &cfg);
            let pause = deviation.verdict != "ok";
            tracing::info!(checker = %c.name, version = %x.version, verdict = %deviation.verdict,
                new = new_flagged, current = current_flagged, limit = deviation.limit, hosts = numbers.canary_hosts,
                failing, "canary window closed");
            self.submit(Command::CanaryCheck {
                name: c.name.clone(),
                version: x.version.clone(),
                deviation,
                pause,
            })
            .await?;
        }
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "canary pass");
        Ok(())
    }

    /// Replace the canary-stop thresholds (from the master's config).
    pub fn set_canary_config(&self, cfg: CanaryConfig) {
        *lock(&self.canary) = cfg;
    }
}

/// The seed: the agent's embedded rule set and profiles as version 1 of their checkers.
pub fn seed_command() -> Command {
    let b64 = base64::engine::general_purpose::STANDARD;
    let items = rulesets::seeds::SEEDS
        .iter()
        .filter_map(|s| {
            let kind = ArtifactType::parse(s.kind).ok()?;
            Some(SeedItem {
                artifact: ArtifactRecord {
                    name: s.name.into(),
                    version: rulesets::seeds::SEED_VERSION.into(),
                    kind,
                    sha256: sha256_hex(s.content.as_bytes()),
                    size: s.content.len() as u64,
                    pushed_by: "master".into(),
                    pushed_ms: 0,
                    description: s.description.into(),
                    spec: ArtifactSpecView::default(),
                },
                data: b64.encode(s.content.as_bytes()),
            })
        })
        .collect();
    Command::CatalogSeed { items }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_the_same_assignment_share_one_copy() {
        let a = |v: &str| {
            vec![AssignmentView { name: "kernel-log".into(), version: v.into(), ..Default::default() }]
        };
        let mut c = AssignmentCache::default();
        c.put("h1", "hash-1", &a("1"));
        c.put("h2", "hash-1", &a("1"));
        c.put("h3", "hash-2", &a("2"));
        let (h1, h2, h3) = (&c.hosts["h1"], &c.hosts["h2"], &c.hosts["h3"]);
        assert!(Arc::ptr_eq(&h1.1, &h2.1) && Arc::ptr_eq(&h1.0, &h2.0), "one copy for equal assignments");
        assert!(!Arc::ptr_eq(&h1.1, &h3.1));
        assert_eq!((&*h3.0, h3.1.as_slice()), ("hash-2", a("2").as_slice()));
        assert_eq!(c.distinct.len(), 2);
        c.clear();
        assert!(c.hosts.is_empty() && c.distinct.is_empty());
    }

    fn push(kind: &str, content: &[u8]) -> PushRequest {
        PushRequest {
            name: "probe".into(),
            version: "1".into(),
            kind: kind.into(),
            content: content.to_vec(),
            description: String::new(),
            spec: ArtifactSpecView {
                interval_ms: 1000,
                timeout_ms: 100,
                kinds: vec!["disk".into()],
                ..Default::default()
            },
            by: "ops".into(),
            sha256: String::new(),
        }
    }

    fn roll(action: &str) -> RolloutRequest {
        RolloutRequest {
            action: action.into(),
            name: "probe".into(),
            version: "2".into(),
            by: "ops".into(),
            reason: "r".into(),
            ..Default::default()
        }
    }

    #[test]
    fn pushes_at_and_over_the_limits() {
        let at = vec![b'x'; MAX_ARTIFACT_BYTES as usize];
        assert_eq!(validate_push(&push("external", &at)).map(|r| r.size), Ok(MAX_ARTIFACT_BYTES));
        let over = vec![b'x'; MAX_ARTIFACT_BYTES as usize + 1];
        assert!(validate_push(&push("external", &over)).is_err_and(|e| e.message.contains("over the limit")));
        assert!(
            validate_push(&push("", b"x")).is_ok_and(|r| r.kind == ArtifactType::External),
            "no type: external"
        );
        assert!(validate_push(&push("external", b"")).is_err());
        let mut wrong = push("external", b"x");
        wrong.sha256 = sha256_hex(b"y");
        assert!(validate_push(&wrong).is_err_and(|e| e.message.contains("hashes to")));
        wrong.sha256 = sha256_hex(b"x").to_uppercase();
        assert!(validate_push(&wrong).is_ok(), "the sha256 may be given in upper case");
        let mut kinds = push("external", b"x");
        kinds.spec.kinds = (0..=MAX_SPEC_KINDS).map(|_| "disk".to_string()).collect();
        assert!(validate_push(&kinds).is_err());
        kinds.spec.kinds = vec!["teapot".into()];
        assert!(validate_push(&kinds).is_err());
        let mut slow = push("external", b"x");
        slow.spec.timeout_ms = MAX_SPEC_TIMEOUT_MS + 1;
        assert!(validate_push(&slow).is_err());
        // Rule sets compile with the agent's compiler; the default one passes.
        assert!(validate_push(&push("rules", rulesets::rules::DEFAULT_RULES.as_bytes())).is_ok());
        assert!(validate_push(&push("rules", b"\xff\xfe")).is_err_and(|e| e.message.contains("UTF-8")));
        // A profile's catalog name is its `name`.
        let online = rulesets::seeds::SEEDS.iter().find(|s| s.name == "online").expect("online");
        let mut p = push("profile", online.content.as_bytes());
        assert!(validate_push(&p).is_err_and(|e| e.message.contains("names itself")));
        p.name = "online".into();
        assert!(validate_push(&p).is_ok());
    }

    /// A model artifact is checked with the agent's own parser (issue 20): a file that does not parse, has
    /// another format or bad numbers, or is over predict's 1 MiB limit is refused with the parser's words.
    #[test]
    fn model_pushes_are_checked_with_the_predictors_parser() {
        let good = include_bytes!("../../../checkers/testdata/predict/command-timeouts.json");
        let r = validate_push(&push("model", good)).expect("a valid model");
        assert_eq!((r.kind, r.kind.as_str()), (ArtifactType::Model, "model"));
        let text = std::str::from_utf8(good).expect("utf-8");
        for (bad, says) in [
            ("{not json".to_string(), "does not parse"),
            (text.replace("\"format\": 1", "\"format\": 2"), "format 2 is not supported"),
            (text.replace("\"threshold\": 0.5", "\"threshold\": 1.5"), "threshold 1.5"),
            (text.replace("\"scale\": [1.0]", "\"scale\": [0.0]"), "not positive"),
            (text.replace("\"weights\": [1.0]", "\"weights\": [1.0, 2.0]"), "weights has 2 values"),
        ] {
            let e = validate_push(&push("model", bad.as_bytes())).expect_err(says);
            assert!(e.message.contains(says) && e.message.contains("probe@1"), "{says}: {}", e.message);
        }
        let big = vec![b' '; predict::MAX_MODEL_BYTES + 1];
        assert!(validate_push(&push("model", &big)).is_err_and(|e| e.message.contains("over the")));
        assert!(ArtifactType::parse("modle").is_err_and(|e| e.contains("profile, model or topology")));
    }

    #[test]
    fn rollouts_at_and_over_the_limits() {
        let mut r = roll("start");
        r.hosts = (0..MAX_ROLLOUT_HOSTS).map(|i| format!("h{i}")).collect();
        assert!(validate_rollout(&r).is_ok());
        r.hosts.push("one-more".into());
        assert!(validate_rollout(&r).is_err_and(|e| e.message.contains("limit")));
        let mut r = roll("start");
        r.labels = (0..MAX_ROLLOUT_LABELS).map(|i| format!("k{i}=v")).collect();
        assert!(validate_rollout(&r).is_ok());
        r.labels.push("k=v".into());
        assert!(validate_rollout(&r).is_err());
        for bad in ["rack", "=v", "k="] {
            let mut r = roll("start");
            r.labels = vec![bad.into()];
            assert!(validate_rollout(&r).is_err(), "{bad}");
        }
        let mut r = roll("start");
        r.percent = 5.0;
        r.hosts = vec!["h1".into()];
        assert!(validate_rollout(&r).is_err_and(|e| e.message.contains("exactly one")));
        let mut r = roll("pause");
        r.percent = 5.0;
        assert!(validate_rollout(&r).is_err_and(|e| e.message.contains("takes no hosts")));
        let mut r = roll("widen");
        r.shadow = true;
        r.percent = 50.0;
        assert!(validate_rollout(&r).is_err_and(|e| e.message.contains("--shadow")));
        let mut r = roll("start");
        r.hosts = vec!["bad host".into()];
        assert!(validate_rollout(&r).is_err());
        let mut r = roll("start");
        r.percent = 100.0;
        assert!(matches!(validate_rollout(&r), Ok(Command::Rollout { target, .. }) if target.bp == FULL_BP));
    }
}
