//! Operator commands for the safety net: `huatuo level`, `proposals`, `approve`, `reject`, `release`,
//! `quotas`. Writes need a reason (recorded with the operator's name in the master's audit log); the name
//! defaults to `$USER`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use proto::api;

use crate::ops_cmd::{MasterAddr, api_err, runtime, utc};
use crate::output::{self, Format, OutputArgs};

#[derive(Args, Debug, Clone)]
pub struct Operator {
    /// Why (recorded in the audit log; required for changes).
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    /// Who is acting (default: $USER).
    #[arg(long, env = "USER", default_value = "operator")]
    pub(crate) by: String,
}

impl Operator {
    pub(crate) fn require_reason(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.reason.trim().is_empty(), "say why with --reason (it goes into the audit log)");
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct LevelArgs {
    /// Scope: cluster, KEY=VALUE (rack=r7) or checker=NAME@VERSION. Without it: every scope.
    scope: Option<String>,
    /// New level: auto, manual (detect and propose only) or blind (no state changes at all).
    level: Option<String>,
    #[command(flatten)]
    op: Operator,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

fn print_scope(s: &api::Scope) {
    let latch = if s.latched { " LATCHED" } else { "" };
    println!("{:<28} {:<7}{latch}", s.scope, s.level);
    if s.level != "auto" || !s.reason.is_empty() {
        println!("    set by {} at {}: {}", s.set_by, utc(s.since_ms), s.reason);
    }
    for q in &s.quotas {
        println!(
            "    {:<8} population {:>6}  out of service {:>5}/{:<5}  entered {:>4}/{:<4} per {}",
            q.kind,
            q.population,
            q.concurrent,
            q.max_concurrent,
            q.entries,
            q.max_entries,
            human_ms(q.window_ms)
        );
    }
    if s.agents > 0 {
        let silent = s.liveness.map_or(String::new(), |w| {
            format!("; gone silent within {}: {} (latches at {})", human_ms(w.window_ms), w.held, w.latch_at)
        });
        println!("    agents alive {}/{}{silent}", s.agents_alive, s.agents);
    }
    if let Some(w) = s.spike {
        let at = if w.latch_at > 0 { format!(" (latches at {})", w.latch_at) } else { String::new() };
        println!("    would-be removals by this version within {}: {}{at}", human_ms(w.window_ms), w.held);
    }
    if s.pending_proposals > 0 {
        println!("    pending proposals {}", s.pending_proposals);
    }
    if !s.last_blocked.is_empty() {
        println!("    last blocked at {}: {}", utc(s.last_blocked_ms), s.last_blocked);
    }
}

pub(crate) fn human_ms(ms: u64) -> String {
    match ms {
        m if m > 0 && m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m > 0 && m % 60_000 == 0 => format!("{}m", m / 60_000),
        m => format!("{}s", m / 1000),
    }
}

fn scope_json(s: &api::Scope) -> serde_json::Value {
    serde_json::json!({
        "scope": s.scope, "level": s.level, "latched": s.latched, "reason": s.reason, "set_by": s.set_by,
        "since_ms": s.since_ms, "pending_proposals": s.pending_proposals, "last_blocked": s.last_blocked,
        "last_blocked_ms": s.last_blocked_ms, "agents": s.agents, "agents_alive": s.agents_alive,
        "quotas": s.quotas.iter().map(|q| serde_json::json!({"kind": q.kind, "population": q.population,
            "concurrent": q.concurrent, "max_concurrent": q.max_concurrent, "entries": q.entries,
            "max_entries": q.max_entries, "window_ms": q.window_ms})).collect::<Vec<_>>(),
        "liveness": s.liveness.map(window_json), "spike": s.spike.map(window_json),
    })
}

/// A scope window's use as JSON (`level -o json`, `inspect --json`).
pub(crate) fn window_json(w: api::WindowUse) -> serde_json::Value {
    serde_json::json!({"held": w.held, "latch_at": w.latch_at, "window_ms": w.window_ms})
}

pub fn level(a: LevelArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let mut client = a.master.client();
    if let (Some(scope), Some(level)) = (&a.scope, &a.level) {
        a.op.require_reason()?;
        let req = api::SetLevelRequest {
            scope: scope.clone(),
            level: level.clone(),
            by: a.op.by.clone(),
            reason: a.op.reason.clone(),
        };
        // One idempotency key for every try of this write (the client retries through failovers).
        let key = proto::client::request_key("cli").map_err(api_err)?;
        let r = rt
            .block_on(client.call(req, |mut c, r| {
                let r = proto::client::keyed(r, &key);
                async move { c.set_level(r).await }
            }))
            .map_err(api_err)?;
        if let Some(s) = &r.scope {
            let f = a.out.format();
            if f.is_document() {
                output::print_document(&scope_json(s), f)?;
            } else {
                print_scope(s);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = rt
        .block_on(client.call(api::GetSafetyRequest {}, |mut c, r| async move { c.get_safety(r).await }))
        .map_err(api_err)?;
    let scopes: Vec<&api::Scope> =
        r.scopes.iter().filter(|s| a.scope.as_ref().is_none_or(|want| &s.scope == want)).collect();
    let f = a.out.format();
    if f.is_document() {
        let v: Vec<serde_json::Value> = scopes.iter().map(|s| scope_json(s)).collect();
        output::print_document(&serde_json::Value::Array(v), f)?;
        return Ok(ExitCode::SUCCESS);
    }
    if scopes.is_empty() {
        println!("no such scope yet (scopes appear when objects or agents with that label register)");
    }
    for s in scopes {
        print_scope(s);
        if f == Format::Wide && s.level == "auto" && s.reason.is_empty() && !s.set_by.is_empty() {
            println!("    set by {} at {}", s.set_by, utc(s.since_ms));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The scope to return to automatic drive.
    scope: String,
    #[command(flatten)]
    op: Operator,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn release(a: ReleaseArgs) -> anyhow::Result<ExitCode> {
    a.op.require_reason()?;
    let req = api::ReleaseRequest { scope: a.scope, by: a.op.by, reason: a.op.reason };
    // One idempotency key for every try of this write (the client retries through failovers).
    let key = proto::client::request_key("cli").map_err(api_err)?;
    let mut client = a.master.client();
    let r = runtime()?
        .block_on(client.call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.release(r).await }
        }))
        .map_err(api_err)?;
    if let Some(s) = &r.scope {
        print_scope(s);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug, Clone)]
pub struct ProposalFilterArgs {
    /// Only proposals in this scope (cluster, rack=r7, checker=NAME@VERSION).
    #[arg(long, default_value = "")]
    scope: String,
    /// Only this object kind.
    #[arg(long, default_value = "")]
    kind: String,
    /// Only proposals about this host's objects.
    #[arg(long, default_value = "")]
    host: String,
}

#[derive(Args, Debug)]
pub struct ProposalsArgs {
    /// pending (default), approved, rejected, stale, applied or all.
    #[arg(long, default_value = "pending")]
    status: String,
    #[command(flatten)]
    filter: ProposalFilterArgs,
    /// Show at most this many proposals.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// -o json|yaml: one document; --json (older scripts): one JSON object per line.
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn proposals(a: ProposalsArgs) -> anyhow::Result<ExitCode> {
    let req = api::ListProposalsRequest {
        status: a.status,
        scope: a.filter.scope,
        kind: a.filter.kind,
        host: a.filter.host,
        limit: a.limit,
    };
    let mut client = a.master.client();
    let r = runtime()?
        .block_on(client.call(req, |mut c, r| async move { c.list_proposals(r).await }))
        .map_err(api_err)?;
    let proposal_json = |p: &api::Proposal| {
        serde_json::json!({"id": p.id, "object": p.object, "from_state": p.from_state,
            "to_state": p.to_state, "cause": p.cause, "evidence": p.evidence, "scopes": p.scopes,
            "reason": p.reason, "created_ms": p.created_ms, "updated_ms": p.updated_ms, "repeats": p.repeats,
            "status": p.status, "decided_by": p.decided_by, "decided_reason": p.decided_reason})
    };
    if a.out.json {
        for p in &r.proposals {
            println!("{}", proposal_json(p));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let f = a.out.format();
    if f.is_document() {
        let v = serde_json::json!({"proposals": r.proposals.iter().map(proposal_json).collect::<Vec<_>>()});
        output::print_document(&v, f)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.proposals.is_empty() {
        println!("no proposals");
    }
    for p in &r.proposals {
        println!(
            "#{:<6} {:<32} {} -> {:<7} {} {}{}",
            p.id,
            p.object,
            p.from_state,
            p.to_state,
            p.status,
            utc(p.created_ms),
            if p.repeats > 0 { format!(" (seen {} more times)", p.repeats) } else { String::new() }
        );
        println!("        cause: {}", p.cause);
        if !p.evidence.is_empty() {
            println!("        evidence: {}", p.evidence);
        }
        println!("        held: {}", p.reason);
        if f == Format::Wide {
            println!("        scopes: {}  updated {}", p.scopes.join(", "), utc(p.updated_ms));
        }
        if !p.decided_by.is_empty() {
            println!("        decided by {}: {}", p.decided_by, p.decided_reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    /// Proposal numbers; without them, every pending proposal matching the filter (which must be given).
    ids: Vec<u64>,
    #[command(flatten)]
    filter: ProposalFilterArgs,
    /// Only proposals caused by this checker (NAME or NAME@VERSION).
    #[arg(long, default_value = "")]
    checker: String,
    #[command(flatten)]
    op: Operator,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn decide(a: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    a.op.require_reason()?;
    let req = api::DecideProposalsRequest {
        decision: if approve { "approve" } else { "reject" }.into(),
        ids: a.ids,
        scope: a.filter.scope,
        kind: a.filter.kind,
        host: a.filter.host,
        checker: a.checker,
        by: a.op.by,
        reason: a.op.reason,
    };
    // One idempotency key for every try of this write (the client retries through failovers).
    let key = proto::client::request_key("cli").map_err(api_err)?;
    let mut client = a.master.client();
    let r = runtime()?
        .block_on(client.call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.decide_proposals(r).await }
        }))
        .map_err(api_err)?;
    let verb = if approve { "approved" } else { "rejected" };
    let ids: Vec<String> = r.decided.iter().map(|i| format!("#{i}")).collect();
    println!("{verb} {}: {}", r.decided.len(), ids.join(" "));
    for f in &r.failed {
        eprintln!("#{}: {}", f.id, f.error);
    }
    Ok(if r.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[derive(Args, Debug)]
pub struct QuotasArgs {
    /// Replace the safety config from this file (TOML or JSON: quotas, scope_labels, liveness, spike).
    #[arg(long)]
    set: Option<std::path::PathBuf>,
    #[command(flatten)]
    op: Operator,
    /// -o json|yaml: the whole safety config, the rules and the recent alerts; --json (older scripts): the
    /// safety config alone.
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn quotas(a: QuotasArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let mut client = a.master.client();
    let r = if let Some(path) = &a.set {
        a.op.require_reason()?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: master::safety::SafetyConfig = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text).with_context(|| format!("{}: not a safety config", path.display()))?
        } else {
            toml::from_str(&text).with_context(|| format!("{}: not a safety config", path.display()))?
        };
        cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let req = api::SetQuotasRequest {
            quotas: Vec::new(),
            by: a.op.by.clone(),
            reason: a.op.reason.clone(),
            config_json: serde_json::to_string(&cfg)?,
        };
        // One idempotency key for every try of this write (the client retries through failovers).
        let key = proto::client::request_key("cli").map_err(api_err)?;
        rt.block_on(client.call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.set_quotas(r).await }
        }))
        .map_err(api_err)?
    } else {
        rt.block_on(client.call(api::GetSafetyRequest {}, |mut c, r| async move { c.get_safety(r).await }))
            .map_err(api_err)?
    };
    if a.out.json {
        println!("{}", r.config_json);
        return Ok(ExitCode::SUCCESS);
    }
    let f = a.out.format();
    if f.is_document() {
        let config: serde_json::Value = serde_json::from_str(&r.config_json)
            .context("the master sent a safety config that is not JSON")?;
        let v = serde_json::json!({
            "revision": r.revision,
            "config": config,
            "quotas": r.quotas.iter().map(|q| serde_json::json!({"kind": q.kind, "scope": q.scope,
                "window_ms": q.window_ms, "max_entries": q.max_entries, "max_concurrent": q.max_concurrent}))
                .collect::<Vec<_>>(),
            "alerts": r.alerts.iter().map(|al| serde_json::json!({"id": al.id, "time_ms": al.time_ms,
                "scope": al.scope, "object": al.object, "message": al.message})).collect::<Vec<_>>(),
        });
        output::print_document(&v, f)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<8} {:<10} {:>8} {:>14} {:>16}", "kind", "scope", "window", "max entries", "max at once");
    for q in &r.quotas {
        println!(
            "{:<8} {:<10} {:>8} {:>14} {:>16}",
            q.kind,
            q.scope,
            human_ms(q.window_ms),
            q.max_entries,
            q.max_concurrent
        );
    }
    if !r.alerts.is_empty() {
        println!("\nrecent alerts:");
        // Wide: every alert the master keeps (it bounds them), not only the last 10.
        let shown = if f == Format::Wide { r.alerts.len() } else { 10 };
        for al in r.alerts.iter().take(shown) {
            println!("  {} {}", utc(al.time_ms), al.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ForceArgs {
    /// The object, e.g. machine/host-017.
    object: String,
    /// The target state (along a legal edge of its state machine: GOOD, ERROR, REPAIR, ...).
    state: String,
    #[command(flatten)]
    op: Operator,
    #[command(flatten)]
    master: MasterAddr,
}

/// `huatuo force OBJECT STATE --reason`: move an object along one legal edge by hand (false alarms, manual
/// repairs); entry effects run as for an automatic transition.
pub fn force(a: ForceArgs) -> anyhow::Result<ExitCode> {
    a.op.require_reason()?;
    object_command(&a.master, &a.object, "force", &a.state, &a.op)
}

#[derive(Args, Debug)]
pub struct ConsentArgs {
    /// The object waiting for a subscriber's acknowledgement (drained, data-evacuated).
    object: String,
    #[command(flatten)]
    op: Operator,
    #[command(flatten)]
    master: MasterAddr,
}

/// `huatuo consent OBJECT --reason`: an operator stands in for the subscriber's acknowledgement (the
/// subscriber is down or its timeout escalated).
pub fn consent(a: ConsentArgs) -> anyhow::Result<ExitCode> {
    a.op.require_reason()?;
    object_command(&a.master, &a.object, "approve", "", &a.op)
}

fn object_command(
    master: &MasterAddr,
    object: &str,
    kind: &str,
    value: &str,
    op: &Operator,
) -> anyhow::Result<ExitCode> {
    proto::convert::object_id(object).map_err(api_err)?;
    let req = api::CommandRequest {
        object: object.into(),
        kind: kind.into(),
        value: value.into(),
        by: op.by.clone(),
        reason: op.reason.clone(),
        ..Default::default()
    };
    // One idempotency key for every try of this write (the client retries through failovers).
    let key = proto::client::request_key("cli").map_err(api_err)?;
    let mut client = master.client();
    let r = runtime()?
        .block_on(client.call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.command(r).await }
        }))
        .map_err(api_err)?;
    if !r.held.is_empty() {
        println!("{object} stays {}: held by the safety net: {}", r.state, r.held);
        return Ok(ExitCode::from(crate::inspect_cmd::EXIT_ATTENTION));
    }
    println!("{object} is {} (revision {})", r.state, r.revision);
    Ok(ExitCode::SUCCESS)
}
