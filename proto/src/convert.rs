//! Wire <-> domain conversions for the types shared by every master API: findings, severities, the
//! object view and the other API views (scopes, proposals, quota rules, alerts, cluster info, agents). Converting from the wire parses typed fields (ids, severities) and bounds evidence; the
//! limits on names and readings are the master's API layer's (`master::api::validate`), applied the same
//! way whichever front end a request came through.

use state_machines::{Finding, ObjectId, Severity};

use crate::api;
use crate::error::ApiError;
use crate::view::{
    ActionOrder, AgentListing, ArtifactSpecView, ArtifactView, AssignmentView, AuditEntry, CatalogListing,
    ChangeEvent, CheckerDistributionView, CheckerRunView, ClusterInfo, DeviationView, HistoryEntry,
    ObjectView, ProposalView, QuotaRuleView, RolloutStatusView, RolloutView, ScopeSummaryView, ScopeView,
    StateCountView, SummaryView, VersionCountView, WindowUse,
};

/// Parse and validate an object id from the wire.
pub fn object_id(s: &str) -> Result<ObjectId, ApiError> {
    s.parse::<ObjectId>().map_err(|e| ApiError::invalid(e.to_string()))
}

/// Parse a severity from the wire.
pub fn severity(s: &str) -> Result<Severity, ApiError> {
    s.parse::<Severity>().map_err(|e| ApiError::invalid(e.to_string()))
}

/// A wire finding to a typed domain finding (the object id and severity parsed), everything else as it
/// came: the receiver validates it (the master's `api::validate`) and only then cuts the evidence to its
/// limit (`Finding::bounded`), so a hostile finding is refused the same way whichever front end it used.
pub fn finding_from_wire(f: api::Finding) -> Result<Finding, ApiError> {
    let object = object_id(&f.object)?;
    let severity = severity(&f.severity)?;
    Ok(Finding {
        object,
        severity,
        checker: f.checker,
        version: f.version,
        rule: f.rule,
        evidence: f.evidence,
        readings: f.readings.into_iter().collect(),
        time_ms: f.time_ms,
        shadow: f.shadow,
    })
}

/// A domain finding to the wire.
pub fn finding_to_wire(f: &Finding) -> api::Finding {
    api::Finding {
        object: f.object.as_str().to_owned(),
        severity: f.severity.as_str().to_string(),
        checker: f.checker.clone(),
        version: f.version.clone(),
        rule: f.rule.clone(),
        evidence: f.evidence.clone(),
        readings: f.readings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        time_ms: f.time_ms,
        shadow: f.shadow,
    }
}

/// The object view to the wire.
pub fn object_to_wire(o: &ObjectView) -> api::Object {
    api::Object {
        id: o.id.clone(),
        kind: o.kind.clone(),
        host: o.host.clone(),
        state: o.state.clone(),
        grade: o.grade.clone(),
        state_since_ms: o.state_since_ms,
        labels: o.labels.clone().into_iter().collect(),
        attributes: o.attributes.clone().into_iter().collect(),
        revision: o.revision,
        evidence: o.evidence.iter().map(finding_to_wire).collect(),
        history_len: o.history_len,
        history_compacted: o.history_compacted,
        created_ms: o.created_ms,
        waiting_ack: o.waiting_ack.clone(),
        waiting_role: o.waiting_role.clone(),
        ack_deadline_ms: o.ack_deadline_ms,
        ack_escalated: o.ack_escalated,
        pending_action: o.pending_action.clone(),
        action_deadline_ms: o.action_deadline_ms,
    }
}

/// A wire object to the view (evidence findings parsed; a malformed one is an error naming it).
pub fn object_from_wire(o: api::Object) -> Result<ObjectView, ApiError> {
    let evidence = o
        .evidence
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            finding_from_wire(f).map_err(|e| ApiError::new(e.code, format!("evidence {i}: {}", e.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ObjectView {
        id: o.id,
        kind: o.kind,
        host: o.host,
        state: o.state,
        grade: o.grade,
        state_since_ms: o.state_since_ms,
        labels: o.labels.into_iter().collect(),
        attributes: o.attributes.into_iter().collect(),
        revision: o.revision,
        evidence,
        history_len: o.history_len,
        history_compacted: o.history_compacted,
        created_ms: o.created_ms,
        waiting_ack: o.waiting_ack,
        waiting_role: o.waiting_role,
        ack_deadline_ms: o.ack_deadline_ms,
        ack_escalated: o.ack_escalated,
        pending_action: o.pending_action,
        action_deadline_ms: o.action_deadline_ms,
    })
}

/// An action order to the wire.
pub fn order_to_wire(o: ActionOrder) -> api::ActionOrder {
    api::ActionOrder {
        object: o.object,
        action: o.action,
        requested_ms: o.requested_ms,
        deadline_ms: o.deadline_ms,
        old_serial: o.old_serial,
        new_serial: o.new_serial,
        params: o.params.into_iter().collect(),
    }
}

/// A scope view to the wire.
pub fn scope_to_wire(s: &ScopeView) -> api::Scope {
    api::Scope {
        scope: s.scope.clone(),
        level: s.level.clone(),
        latched: s.latched,
        reason: s.reason.clone(),
        set_by: s.set_by.clone(),
        since_ms: s.since_ms,
        quotas: s
            .quotas
            .iter()
            .map(|q| api::QuotaUse {
                kind: q.kind.clone(),
                population: q.population,
                concurrent: q.concurrent,
                max_concurrent: q.max_concurrent,
                entries: q.entries,
                max_entries: q.max_entries,
                window_ms: q.window_ms,
            })
            .collect(),
        pending_proposals: s.pending_proposals,
        last_blocked: s.last_blocked.clone(),
        last_blocked_ms: s.last_blocked_ms,
        agents: s.agents,
        agents_alive: s.agents_alive,
        liveness: s.liveness.map(window_to_wire),
        spike: s.spike.map(window_to_wire),
    }
}

fn window_to_wire(w: WindowUse) -> api::WindowUse {
    api::WindowUse { held: w.held, latch_at: w.latch_at, window_ms: w.window_ms }
}

/// Cluster info to the wire.
pub fn cluster_to_wire(i: ClusterInfo) -> api::ClusterInfoResponse {
    api::ClusterInfoResponse {
        id: i.id,
        leader_id: i.leader_id,
        term: i.term,
        role: i.role,
        commit_index: i.commit_index,
        applied_index: i.applied_index,
        revision: i.revision,
        level: i.level,
        members: i
            .members
            .into_iter()
            .map(|m| api::Member {
                id: m.id,
                peer_addr: m.peer_addr,
                grpc_addr: m.grpc_addr,
                http_addr: m.http_addr,
                knows_command_version: m.knows_command_version,
                nospace: m.nospace,
                free_bytes: m.free_bytes,
                min_free_bytes: m.min_free_bytes,
                announced: m.announced,
            })
            .collect(),
        leader_grpc: i.leader_grpc,
        agents_alive: i.agents_alive,
        objects: i.objects,
        scopes: i.scopes.iter().map(scope_to_wire).collect(),
        pending_proposals: i.pending_proposals,
        agents: i.agents,
        min_command_version: i.min_command_version,
        knows_command_version: i.knows_command_version,
        open_fds: i.open_fds,
        max_fds: i.max_fds,
    }
}

/// An agent listing to the wire.
pub fn agent_to_wire(a: AgentListing) -> api::AgentInfo {
    api::AgentInfo {
        agent: a.agent,
        host: a.host,
        alive: a.alive,
        since_ms: a.since_ms,
        heard: a.heard,
        last_heartbeat_ms_ago: a.last_heartbeat_ms_ago,
        restarts: a.restarts,
        version: a.info.version,
        started_ms: a.info.started_ms,
        checkers: a.info.checkers.into_iter().collect(),
        outbox_entries: a.info.outbox_entries,
        outbox_dropped: a.info.outbox_dropped,
    }
}

/// A history entry to the wire.
pub fn history_to_wire(h: &HistoryEntry) -> api::HistoryEntry {
    api::HistoryEntry {
        revision: h.revision,
        time_ms: h.time_ms,
        what: h.what.clone(),
        from_state: h.from_state.clone(),
        to_state: h.to_state.clone(),
        cause: h.cause.clone(),
        detail: h.detail.clone(),
    }
}

/// A change event to the wire.
pub fn event_to_wire(e: ChangeEvent) -> api::Event {
    api::Event {
        revision: e.revision,
        time_ms: e.time_ms,
        object: e.object,
        what: e.what,
        state: e.state,
        grade: e.grade,
        from_state: e.from_state,
        detail: e.detail,
    }
}

/// The protobuf bytes of a change-log row (`entry.ChangeRow` of these events) appended to `buf`, written
/// straight from the events: byte for byte what prost writes for `ChangeRow { events: [event_to_wire(e)..] }`,
/// without first copying every event into its wire form (each finding's row is written on every member).
pub fn encode_change_row(events: &[ChangeEvent], buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint, string, uint64};
    for e in events {
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(event_len(e) as u64, buf);
        for (tag, v) in [(1, e.revision), (2, e.time_ms)] {
            if v != 0 {
                uint64::encode(tag, &v, buf);
            }
        }
        for (tag, v) in event_texts(e) {
            if !v.is_empty() {
                string::encode(tag, v, buf);
            }
        }
    }
}

/// The text fields of an event with their tags in `api.Event`.
fn event_texts(e: &ChangeEvent) -> [(u32, &String); 6] {
    [(3, &e.object), (4, &e.what), (5, &e.state), (6, &e.grade), (7, &e.from_state), (8, &e.detail)]
}

/// The encoded length of one event's fields (proto3: zeros and empty texts are not written).
fn event_len(e: &ChangeEvent) -> usize {
    use prost::encoding::{string, uint64};
    let numbers: usize = [(1, e.revision), (2, e.time_ms)]
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(t, v)| uint64::encoded_len(*t, v))
        .sum();
    let texts: usize =
        event_texts(e).iter().filter(|(_, v)| !v.is_empty()).map(|(t, v)| string::encoded_len(*t, v)).sum();
    numbers + texts
}

/// A change event from the wire (`huatuo watch` prints the REST shape).
pub fn event_from_wire(e: api::Event) -> ChangeEvent {
    ChangeEvent {
        revision: e.revision,
        time_ms: e.time_ms,
        object: e.object,
        what: e.what,
        state: e.state,
        grade: e.grade,
        from_state: e.from_state,
        detail: e.detail,
    }
}

/// An alert/audit row to the wire (the wire's `Alert` carries no kind or author).
pub fn alert_to_wire(a: &AuditEntry) -> api::Alert {
    api::Alert {
        id: a.id,
        time_ms: a.time_ms,
        scope: a.scope.clone(),
        object: a.object.clone(),
        message: a.message.clone(),
    }
}

pub fn proposal_to_wire(p: &ProposalView) -> api::Proposal {
    api::Proposal {
        id: p.id,
        object: p.object.clone(),
        from_state: p.from_state.clone(),
        to_state: p.to_state.clone(),
        cause: p.cause.clone(),
        evidence: p.evidence.clone(),
        scopes: p.scopes.clone(),
        reason: p.reason.clone(),
        created_ms: p.created_ms,
        updated_ms: p.updated_ms,
        repeats: p.repeats,
        status: p.status.clone(),
        decided_by: p.decided_by.clone(),
        decided_reason: p.decided_reason.clone(),
        decided_ms: p.decided_ms,
    }
}

pub fn quota_to_wire(q: &QuotaRuleView) -> api::QuotaRule {
    api::QuotaRule {
        kind: q.kind.clone(),
        scope: q.scope.clone(),
        window_ms: q.window_ms,
        max_entries: q.max_entries.clone(),
        max_concurrent: q.max_concurrent.clone(),
    }
}

/// A wire quota rule as the view the master's API layer parses (limits stay text until then).
pub fn quota_from_wire(q: api::QuotaRule) -> QuotaRuleView {
    QuotaRuleView {
        kind: q.kind,
        scope: q.scope,
        window_ms: q.window_ms,
        max_entries: q.max_entries,
        max_concurrent: q.max_concurrent,
    }
}

/// The safety view on the wire: quota rules, scopes, recent alerts, the revision and the whole config as
/// JSON (`config_json`).
pub fn safety_to_wire(
    quotas: &[QuotaRuleView],
    scopes: &[ScopeView],
    alerts: &[AuditEntry],
    revision: u64,
    config_json: String,
) -> api::GetSafetyResponse {
    api::GetSafetyResponse {
        quotas: quotas.iter().map(quota_to_wire).collect(),
        scopes: scopes.iter().map(scope_to_wire).collect(),
        alerts: alerts.iter().map(alert_to_wire).collect(),
        revision,
        config_json,
    }
}

// ---- checker catalog ----

pub fn spec_to_wire(s: &ArtifactSpecView) -> api::ArtifactSpec {
    api::ArtifactSpec {
        interval_ms: s.interval_ms,
        timeout_ms: s.timeout_ms,
        max_output_bytes: s.max_output_bytes,
        kinds: s.kinds.clone(),
        max_memory_bytes: s.max_memory_bytes,
        max_cpu_ms: s.max_cpu_ms,
    }
}

pub fn spec_from_wire(s: Option<api::ArtifactSpec>) -> ArtifactSpecView {
    let s = s.unwrap_or_default();
    ArtifactSpecView {
        interval_ms: s.interval_ms,
        timeout_ms: s.timeout_ms,
        max_output_bytes: s.max_output_bytes,
        kinds: s.kinds,
        max_memory_bytes: s.max_memory_bytes,
        max_cpu_ms: s.max_cpu_ms,
    }
}

pub fn artifact_to_wire(a: &ArtifactView) -> api::Artifact {
    api::Artifact {
        name: a.name.clone(),
        version: a.version.clone(),
        r#type: a.kind.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
        pushed_by: a.pushed_by.clone(),
        pushed_ms: a.pushed_ms,
        description: a.description.clone(),
        spec: Some(spec_to_wire(&a.spec)),
    }
}

pub fn artifact_from_wire(a: api::Artifact) -> ArtifactView {
    ArtifactView {
        name: a.name,
        version: a.version,
        kind: a.r#type,
        sha256: a.sha256,
        size: a.size,
        pushed_by: a.pushed_by,
        pushed_ms: a.pushed_ms,
        description: a.description,
        spec: spec_from_wire(a.spec),
    }
}

pub fn deviation_to_wire(d: &DeviationView) -> api::Deviation {
    api::Deviation {
        window_start_ms: d.window_start_ms,
        window_ms: d.window_ms,
        canary_hosts: d.canary_hosts,
        canary_objects: d.canary_objects,
        new_flagged: d.new_flagged,
        current_flagged: d.current_flagged,
        limit: d.limit,
        hosts_failing: d.hosts_failing,
        verdict: d.verdict.clone(),
    }
}

pub fn deviation_from_wire(d: api::Deviation) -> DeviationView {
    DeviationView {
        window_start_ms: d.window_start_ms,
        window_ms: d.window_ms,
        canary_hosts: d.canary_hosts,
        canary_objects: d.canary_objects,
        new_flagged: d.new_flagged,
        current_flagged: d.current_flagged,
        limit: d.limit,
        hosts_failing: d.hosts_failing,
        verdict: d.verdict,
    }
}

pub fn rollout_to_wire(r: &RolloutView) -> api::Rollout {
    api::Rollout {
        name: r.name.clone(),
        version: r.version.clone(),
        status: r.status.clone(),
        shadow: r.shadow,
        hosts: r.hosts.clone(),
        percent: r.percent,
        labels: r.labels.clone(),
        by: r.by.clone(),
        reason: r.reason.clone(),
        started_ms: r.started_ms,
        updated_ms: r.updated_ms,
        auto_paused: r.auto_paused,
        paused_reason: r.paused_reason.clone(),
        deviation: r.deviation.as_ref().map(deviation_to_wire),
        previous_version: r.previous_version.clone(),
    }
}

pub fn rollout_from_wire(r: api::Rollout) -> RolloutView {
    RolloutView {
        name: r.name,
        version: r.version,
        status: r.status,
        shadow: r.shadow,
        hosts: r.hosts,
        percent: r.percent,
        labels: r.labels,
        by: r.by,
        reason: r.reason,
        started_ms: r.started_ms,
        updated_ms: r.updated_ms,
        auto_paused: r.auto_paused,
        paused_reason: r.paused_reason,
        deviation: r.deviation.map(deviation_from_wire),
        previous_version: r.previous_version,
    }
}

pub fn catalog_to_wire(c: &CatalogListing) -> api::ListCatalogResponse {
    api::ListCatalogResponse {
        artifacts: c.artifacts.iter().map(artifact_to_wire).collect(),
        rollouts: c.rollouts.iter().map(rollout_to_wire).collect(),
        revision: c.revision,
    }
}

pub fn catalog_from_wire(c: api::ListCatalogResponse) -> CatalogListing {
    CatalogListing {
        artifacts: c.artifacts.into_iter().map(artifact_from_wire).collect(),
        rollouts: c.rollouts.into_iter().map(rollout_from_wire).collect(),
        revision: c.revision,
    }
}

pub fn rollout_status_to_wire(s: &RolloutStatusView) -> api::RolloutStatusResponse {
    api::RolloutStatusResponse {
        checkers: s
            .checkers
            .iter()
            .map(|c| api::CheckerDistribution {
                name: c.name.clone(),
                r#type: c.kind.clone(),
                stable_version: c.stable_version.clone(),
                versions: c
                    .versions
                    .iter()
                    .map(|v| api::VersionCount {
                        version: v.version.clone(),
                        shadow: v.shadow,
                        assigned: v.assigned,
                        running: v.running,
                        failed_verify: v.failed_verify,
                        failed: v.failed,
                        not_reporting: v.not_reporting,
                    })
                    .collect(),
                rollouts: c.rollouts.iter().map(rollout_to_wire).collect(),
            })
            .collect(),
        revision: s.revision,
    }
}

pub fn rollout_status_from_wire(s: api::RolloutStatusResponse) -> RolloutStatusView {
    RolloutStatusView {
        checkers: s
            .checkers
            .into_iter()
            .map(|c| CheckerDistributionView {
                name: c.name,
                kind: c.r#type,
                stable_version: c.stable_version,
                versions: c
                    .versions
                    .into_iter()
                    .map(|v| VersionCountView {
                        version: v.version,
                        shadow: v.shadow,
                        assigned: v.assigned,
                        running: v.running,
                        failed_verify: v.failed_verify,
                        failed: v.failed,
                        not_reporting: v.not_reporting,
                    })
                    .collect(),
                rollouts: c.rollouts.into_iter().map(rollout_from_wire).collect(),
            })
            .collect(),
        revision: s.revision,
    }
}

pub fn assignment_to_wire(a: &AssignmentView) -> api::Assignment {
    api::Assignment {
        name: a.name.clone(),
        version: a.version.clone(),
        r#type: a.kind.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
        shadow: a.shadow,
        spec: Some(spec_to_wire(&a.spec)),
    }
}

pub fn run_from_wire(r: api::CheckerRun) -> CheckerRunView {
    CheckerRunView {
        name: r.name,
        version: r.version,
        sha256: r.sha256,
        shadow: r.shadow,
        status: r.status,
        runs: r.runs,
        failures: r.failures,
        timeouts: r.timeouts,
        last_error: r.last_error,
        last_run_ms: r.last_run_ms,
    }
}

pub fn run_to_wire(r: &CheckerRunView) -> api::CheckerRun {
    api::CheckerRun {
        name: r.name.clone(),
        version: r.version.clone(),
        sha256: r.sha256.clone(),
        shadow: r.shadow,
        status: r.status.clone(),
        runs: r.runs,
        failures: r.failures,
        timeouts: r.timeouts,
        last_error: r.last_error.clone(),
        last_run_ms: r.last_run_ms,
    }
}

fn state_count_to_wire(c: &StateCountView) -> api::StateCount {
    api::StateCount { kind: c.kind.clone(), state: c.state.clone(), count: c.count }
}

fn state_count_from_wire(c: api::StateCount) -> StateCountView {
    StateCountView { kind: c.kind, state: c.state, count: c.count }
}

/// The summary to the wire.
pub fn summary_to_wire(s: &SummaryView) -> api::SummaryResponse {
    api::SummaryResponse {
        revision: s.revision,
        objects: s.objects,
        states: s.states.iter().map(state_count_to_wire).collect(),
        scopes: s
            .scopes
            .iter()
            .map(|sc| api::ScopeSummary {
                scope: sc.scope.clone(),
                states: sc.states.iter().map(state_count_to_wire).collect(),
                agents: sc.agents,
                agents_alive: sc.agents_alive,
            })
            .collect(),
        repair_without_ticket: s.repair_without_ticket,
        agents: s.agents,
        agents_alive: s.agents_alive,
    }
}

/// The summary from the wire.
pub fn summary_from_wire(s: api::SummaryResponse) -> SummaryView {
    SummaryView {
        revision: s.revision,
        objects: s.objects,
        states: s.states.into_iter().map(state_count_from_wire).collect(),
        scopes: s
            .scopes
            .into_iter()
            .map(|sc| ScopeSummaryView {
                scope: sc.scope,
                states: sc.states.into_iter().map(state_count_from_wire).collect(),
                agents: sc.agents,
                agents_alive: sc.agents_alive,
            })
            .collect(),
        repair_without_ticket: s.repair_without_ticket,
        agents: s.agents,
        agents_alive: s.agents_alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn a_change_row_is_written_as_prost_writes_it() {
        use prost::Message as _;
        let ev = |revision: u64, time_ms: u64, texts: [&str; 6]| ChangeEvent {
            revision,
            time_ms,
            object: texts[0].into(),
            what: texts[1].into(),
            state: texts[2].into(),
            grade: texts[3].into(),
            from_state: texts[4].into(),
            detail: texts[5].into(),
        };
        let long = "x".repeat(300);
        let rows: Vec<Vec<ChangeEvent>> = vec![
            vec![],
            vec![ev(0, 0, [""; 6])],
            vec![
                ev(1, 1_700_000_000_000, ["disk/h1/sda", "finding", "GOOD", "GOOD", "", "smart.overall"]),
                ev(u64::MAX, 127, ["", "level", "", "", "", &long]),
                ev(128, 0, ["machine/h\u{e9}", "transition", "ERROR", "ERROR", "GOOD", "\u{0}"]),
            ],
        ];
        for events in rows {
            let want =
                crate::entry::ChangeRow { events: events.iter().cloned().map(event_to_wire).collect() }
                    .encode_to_vec();
            let mut got = Vec::new();
            encode_change_row(&events, &mut got);
            assert_eq!(got, want, "{events:?}");
        }
    }

    #[test]
    fn quota_rules_and_proposals_keep_every_field_on_the_wire() {
        let q = QuotaRuleView {
            kind: "disk".into(),
            scope: "rack".into(),
            window_ms: 3_600_000,
            max_entries: "2.5%".into(),
            max_concurrent: "3".into(),
        };
        assert_eq!(quota_from_wire(quota_to_wire(&q)), q);
        let p = ProposalView {
            id: 7,
            object: "disk/h1/sda".into(),
            from_state: "GOOD".into(),
            to_state: "ERROR".into(),
            cause: "finding".into(),
            evidence: "12".into(),
            scopes: vec!["cluster".into(), "rack=r1".into()],
            reason: "manual drive".into(),
            created_ms: 1,
            updated_ms: 2,
            repeats: 3,
            status: "pending".into(),
            decided_by: "alice".into(),
            decided_reason: "ok".into(),
            decided_ms: 4,
        };
        let w = proposal_to_wire(&p);
        assert_eq!(
            (w.id, w.object.as_str(), w.from_state.as_str(), w.to_state.as_str(), w.status.as_str()),
            (7, "disk/h1/sda", "GOOD", "ERROR", "pending")
        );
        assert_eq!((w.scopes, w.repeats, w.decided_by.as_str(), w.decided_ms), (p.scopes, 3, "alice", 4));
        let s = safety_to_wire(std::slice::from_ref(&q), &[], &[], 9, "{}".into());
        assert_eq!((s.quotas, s.revision, s.config_json.as_str()), (vec![quota_to_wire(&q)], 9, "{}"));
    }

    fn wire(object: &str, severity: &str) -> api::Finding {
        api::Finding {
            object: object.into(),
            severity: severity.into(),
            checker: "smart".into(),
            version: "1.0.0".into(),
            rule: "smart.reallocated".into(),
            evidence: "Reallocated_Sector_Ct 12".into(),
            readings: [("reallocated".to_string(), "12".to_string())].into_iter().collect(),
            time_ms: 1_700_000_000_000,
            shadow: false,
        }
    }

    fn check(input: api::Finding, expected: Result<(), &str>) {
        match (finding_from_wire(input.clone()), expected) {
            (Ok(f), Ok(())) => assert_eq!(finding_to_wire(&f), input),
            (Err(e), Err(want)) => {
                assert_eq!(e.code, Code::InvalidArgument);
                assert!(e.message.contains(want), "{e}");
            }
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_findings() {
        // Name limits and control characters moved to master::api::validate (tested there and, through
        // both front ends, in tests/tests/api_validation.rs).
        check(wire("disk/h1/sda", "ERROR"), Ok(()));
        check(wire("disk/h1", "ERROR"), Err("needs a name"));
        check(wire("disk/h1/sda", "BROKEN"), Err("unknown severity"));
    }

    #[test]
    fn objects_round_trip() {
        let view = ObjectView {
            id: "disk/h1/sda".into(),
            kind: "disk".into(),
            host: "h1".into(),
            state: "ERROR".into(),
            grade: "ERROR".into(),
            labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
            evidence: vec![finding_from_wire(wire("disk/h1/sda", "ERROR")).expect("valid")],
            waiting_ack: "data-evacuated".into(),
            waiting_role: "storage".into(),
            ack_deadline_ms: 9,
            ..Default::default()
        };
        assert_eq!(object_from_wire(object_to_wire(&view)).expect("round trip"), view);
        let mut bad = object_to_wire(&view);
        bad.evidence[0].severity = "MELTED".into();
        assert!(object_from_wire(bad).expect_err("bad evidence").message.starts_with("evidence 0:"));
    }

    #[test]
    fn conversion_keeps_everything_for_the_receivers_checks() {
        // Cutting (Finding::bounded, tested in state-machines) happens after the master's validation, so
        // one reading too many is refused there rather than silently dropped here.
        let mut f = wire("disk/h1/sda", "ERROR");
        f.evidence = "x".repeat(state_machines::finding::MAX_EVIDENCE_LEN * 2);
        f.readings =
            (0..=state_machines::finding::MAX_READINGS).map(|i| (format!("r{i}"), "1".into())).collect();
        let got = finding_from_wire(f.clone()).expect("parsed");
        assert_eq!(finding_to_wire(&got), f);
    }

    #[test]
    fn catalog_views_round_trip() {
        use crate::view::*;
        let spec = ArtifactSpecView {
            interval_ms: 1,
            timeout_ms: 2,
            max_output_bytes: 3,
            kinds: vec!["disk".into()],
            max_memory_bytes: 4,
            max_cpu_ms: 5,
        };
        let a = ArtifactView {
            name: "p".into(),
            version: "1".into(),
            kind: "external".into(),
            sha256: "ab".into(),
            size: 9,
            pushed_by: "o".into(),
            pushed_ms: 7,
            description: "d".into(),
            spec,
        };
        let d = DeviationView {
            window_start_ms: 1,
            window_ms: 2,
            canary_hosts: 3,
            canary_objects: 4,
            new_flagged: 5,
            current_flagged: 6,
            limit: 7,
            hosts_failing: 8,
            verdict: "ok".into(),
        };
        let r = RolloutView {
            name: "p".into(),
            version: "2".into(),
            status: "paused".into(),
            shadow: true,
            hosts: vec!["h".into()],
            percent: 2.5,
            labels: vec!["a=b".into()],
            by: "o".into(),
            reason: "r".into(),
            started_ms: 1,
            updated_ms: 2,
            auto_paused: true,
            paused_reason: "x".into(),
            deviation: Some(d),
            previous_version: "1".into(),
        };
        let l = CatalogListing { artifacts: vec![a], rollouts: vec![r.clone()], revision: 3 };
        assert_eq!(catalog_from_wire(catalog_to_wire(&l)), l);
        let v = VersionCountView {
            version: "2".into(),
            shadow: true,
            assigned: 1,
            running: 2,
            failed_verify: 3,
            failed: 4,
            not_reporting: 5,
        };
        let s = RolloutStatusView {
            checkers: vec![CheckerDistributionView {
                name: "p".into(),
                kind: "external".into(),
                stable_version: "1".into(),
                versions: vec![v],
                rollouts: vec![r],
            }],
            revision: 9,
        };
        assert_eq!(rollout_status_from_wire(rollout_status_to_wire(&s)), s);
        let run = CheckerRunView {
            name: "p".into(),
            version: "2".into(),
            sha256: "ab".into(),
            shadow: true,
            status: "failed".into(),
            runs: 1,
            failures: 2,
            timeouts: 3,
            last_error: "e".into(),
            last_run_ms: 4,
        };
        assert_eq!(run_from_wire(run_to_wire(&run)), run);
    }
}
