//! `huatuo inspect`: the daily inspection an on-call engineer runs (from the Pegasus operations notes), as one
//! report: master members with leader, term and lag; level per scope and quota use (and how close its
//! liveness and spike windows are to latching it: half way needs a human); agents alive vs
//! expected, stale ones, recent restarts; checker version spread; objects by kind and state and what
//! changed in the last 24 hours; stuck objects (an ack, an action or a ticket overdue) and proposals waiting.
//! Exit status: 0 when nothing needs a human, 2 when something does (each named under "needs a human"),
//! 1 when the cluster cannot be asked. Made for cron: `huatuo inspect --json` for machines.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use proto::api;
use serde::Serialize;

use crate::ops_cmd::{MasterAddr, api_err, runtime, utc};

/// Exit status when the report names something that needs a human.
pub const EXIT_ATTENTION: u8 = 2;
/// A member whose applied index trails the leader's commit index by more than this is lagging.
pub const MAX_LAG: u64 = 1_000;
/// An object in REPAIR without a filed ticket for longer than this is stuck.
pub const TICKET_OVERDUE_MS: u64 = 3_600_000;
/// A proposal waiting longer than this needs a decision.
pub const PROPOSAL_OVERDUE_MS: u64 = 3_600_000;
/// "Recently": the report's look-back window.
pub const RECENT_MS: u64 = 24 * 3_600_000;
/// Names listed per problem before "and N more".
const SHOWN: usize = 20;
/// Per-member status call timeout.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    out: crate::output::OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    time_ms: u64,
    members: Vec<MemberReport>,
    leader: u64,
    term: u64,
    scopes: Vec<serde_json::Value>,
    agents_expected: usize,
    agents_alive: usize,
    agents_stale: Vec<String>,
    agents_restarted: Vec<String>,
    checker_versions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Objects by kind and state: from the master's counters (`Summary`), exact at `revision`.
    objects: BTreeMap<String, BTreeMap<String, u64>>,
    /// Objects in REPAIR whose ticket is not filed yet (any age).
    repair_without_ticket: u64,
    /// The revision the counts are exact at (0: counted from a listing, a master without `Summary`).
    revision: u64,
    changed_24h: Vec<String>,
    stuck: Vec<String>,
    proposals_pending: u64,
    alerts_24h: Vec<String>,
    /// Checker rollouts that are paused (by an operator or by the master's canary stop), with why.
    rollouts_paused: Vec<String>,
    needs_a_human: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct MemberReport {
    id: u64,
    grpc: String,
    reachable: bool,
    role: String,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    /// Its NOSPACE alarm as (free bytes, floor) while raised, as the member that answered heard it.
    #[serde(skip_serializing_if = "Option::is_none")]
    nospace: Option<(u64, u64)>,
    /// Its open file descriptors and open-files limit, as it answered (0: unknown).
    open_fds: u64,
    max_fds: u64,
}

/// Whether a member holding `open` of its `max` file descriptors is near its limit (over 80%, where
/// `HuatuoMasterOpenFilesNearLimit` fires): every agent holds a connection to the member it believes leads,
/// and at the limit new ones cannot connect. A limit of 0 is unknown (a member from before the fields).
fn near_fd_limit(open: u64, max: u64) -> bool {
    max > 0 && u128::from(open) * 10 > u128::from(max) * 8
}

/// Whether a safety-net window holding `held` is at least half way to the count that latches its scope
/// (`latch_at`; 0: nothing can latch, an empty spike window). The Prometheus alerts on both windows
/// (`HuatuoCheckerVersionNearSpike`, `HuatuoScopeNearLivenessLatch`) fire at the same point.
fn near_latch(held: u64, latch_at: u64) -> bool {
    latch_at > 0 && held.saturating_mul(2) >= latch_at
}

fn listed(names: &[String]) -> String {
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let mut client = a.master.client();
    let now = now_ms();
    let mut r = Report { time_ms: now, ..Report::default() };
    let info = rt
        .block_on(client.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }))
        .map_err(api_err)?;
    r.leader = info.leader_id;
    r.term = info.term;
    if info.leader_id == 0 {
        r.needs_a_human.push("no master is leader".into());
    }
    // Members, each asked directly: at the addresses given to this command and those the members announced
    // (a follower that never led has announced none); each answer says which node it is.
    let (given, security) = a.master.resolve()?;
    let mut addrs: Vec<String> = given;
    addrs.extend(info.members.iter().map(|m| m.grpc_addr.clone()).filter(|a| !a.is_empty()));
    addrs.sort();
    addrs.dedup();
    let mut seen: BTreeMap<u64, (String, api::ClusterInfoResponse)> = BTreeMap::new();
    for addr in addrs {
        let mut one = proto::client::Client::with_security(vec![addr.clone()], security.clone());
        one.max_attempts = 1;
        one.call_timeout = MEMBER_TIMEOUT;
        if let Ok(i) = rt
            .block_on(one.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }))
        {
            seen.entry(i.id).or_insert((addr, i));
        }
    }
    let mut leader_commit = 0;
    for m in &info.members {
        let mut mr = MemberReport { id: m.id, grpc: m.grpc_addr.clone(), ..MemberReport::default() };
        if m.nospace {
            mr.nospace = Some((m.free_bytes, m.min_free_bytes));
            r.needs_a_human.push(format!(
                "master {} is short of disk: {} MiB free, below its floor of {} MiB (it takes no new entries; \
                 free space under its data dir)",
                m.id,
                m.free_bytes >> 20,
                m.min_free_bytes >> 20
            ));
        }
        match seen.remove(&m.id) {
            Some((addr, i)) => {
                mr.grpc = addr;
                mr.reachable = true;
                mr.role = i.role;
                mr.term = i.term;
                mr.commit_index = i.commit_index;
                mr.applied_index = i.applied_index;
                (mr.open_fds, mr.max_fds) = (i.open_fds, i.max_fds);
                if near_fd_limit(i.open_fds, i.max_fds) {
                    r.needs_a_human.push(format!(
                        "master {} holds {} of its {} open files: every agent keeps a connection to the member \
                         it believes leads, and at the limit new ones cannot connect (raise LimitNOFILE)",
                        m.id, i.open_fds, i.max_fds
                    ));
                }
                if m.id == info.leader_id {
                    leader_commit = i.commit_index;
                }
            }
            None => r.needs_a_human.push(format!(
                "master {} does not answer (peer {}; give its API address with --master to check it)",
                m.id, m.peer_addr
            )),
        }
        r.members.push(mr);
    }
    for m in r.members.iter().filter(|m| m.reachable) {
        if leader_commit.saturating_sub(m.applied_index) > MAX_LAG {
            r.needs_a_human
                .push(format!("master {} lags: applied {} of {leader_commit}", m.id, m.applied_index));
        }
    }
    // Levels, quotas, alerts.
    let safety = rt
        .block_on(client.call(api::GetSafetyRequest {}, |mut c, r| async move { c.get_safety(r).await }))
        .map_err(api_err)?;
    for s in &safety.scopes {
        let quotas: Vec<serde_json::Value> = s
            .quotas
            .iter()
            .map(|q| {
                serde_json::json!({"kind": q.kind, "out_of_service": q.concurrent, "max": q.max_concurrent,
                "entered": q.entries, "max_entries": q.max_entries, "population": q.population})
            })
            .collect();
        r.scopes.push(serde_json::json!({"scope": s.scope, "level": s.level, "latched": s.latched,
            "reason": s.reason, "pending_proposals": s.pending_proposals, "quotas": quotas,
            "agents": s.agents, "agents_alive": s.agents_alive, "last_blocked": s.last_blocked,
            "liveness": s.liveness.map(crate::safety_cmd::window_json),
            "spike": s.spike.map(crate::safety_cmd::window_json)}));
        if s.level != "auto" {
            let how = if s.latched { "latched into manual drive" } else { "not in automatic drive" };
            r.needs_a_human.push(format!("scope {} is {} ({how}): {}", s.scope, s.level, s.reason));
        }
        for q in &s.quotas {
            if q.max_concurrent > 0 && q.concurrent >= q.max_concurrent {
                r.needs_a_human.push(format!(
                    "scope {}: {} of {} {}s out of service, the quota's limit",
                    s.scope, q.concurrent, q.population, q.kind
                ));
            }
        }
        // Half way to an automatic latch (a scope already out of automatic drive is named above).
        if s.level == "auto" {
            for (w, what) in
                [(&s.liveness, "agents went silent"), (&s.spike, "objects this version would remove")]
            {
                if let Some(w) = w.as_ref().filter(|w| near_latch(w.held, w.latch_at)) {
                    r.needs_a_human.push(format!(
                        "scope {}: {} {what} within {}, {} latch it into manual drive",
                        s.scope,
                        w.held,
                        crate::safety_cmd::human_ms(w.window_ms),
                        w.latch_at
                    ));
                }
            }
        }
    }
    r.alerts_24h = safety
        .alerts
        .iter()
        .filter(|al| now.saturating_sub(al.time_ms) <= RECENT_MS)
        .map(|al| format!("{} {}", utc(al.time_ms), al.message))
        .collect();
    // Proposals.
    let props = rt
        .block_on(client.call(
            api::ListProposalsRequest { status: "pending".into(), ..Default::default() },
            |mut c, r| async move { c.list_proposals(r).await },
        ))
        .map_err(api_err)?;
    r.proposals_pending = props.proposals.len() as u64;
    let old: Vec<String> = props
        .proposals
        .iter()
        .filter(|p| now.saturating_sub(p.created_ms) > PROPOSAL_OVERDUE_MS)
        .map(|p| format!("#{} {}", p.id, p.object))
        .collect();
    if !old.is_empty() {
        r.needs_a_human.push(format!(
            "{} proposals wait for a decision for over an hour: {}",
            old.len(),
            listed(&old)
        ));
    }
    // Agents.
    let agents = rt.block_on(crate::pages::agents(&mut client)).map_err(api_err)?;
    r.agents_expected = agents.len();
    r.agents_alive = agents.iter().filter(|x| x.alive).count();
    r.agents_stale = agents
        .iter()
        .filter(|x| !x.alive)
        .map(|x| format!("{} (silent since {})", x.agent, utc(x.since_ms)))
        .collect();
    r.agents_restarted = agents
        .iter()
        .filter(|x| x.restarts > 0 || (x.heard && now.saturating_sub(x.started_ms) <= RECENT_MS))
        .map(|x| format!("{} (started {}, {} restarts seen)", x.agent, utc(x.started_ms), x.restarts))
        .collect();
    for x in &agents {
        for (name, version) in &x.checkers {
            *r.checker_versions.entry(name.clone()).or_default().entry(version.clone()).or_default() += 1;
        }
    }
    if !r.agents_stale.is_empty() {
        r.needs_a_human.push(format!(
            "{} agents are silent: {}",
            r.agents_stale.len(),
            listed(&r.agents_stale)
        ));
    }
    // Objects: counts from the master's replicated counters (no listing needed for them).
    let summary = rt.block_on(
        client.call(api::SummaryRequest { stale: false }, |mut c, r| async move { c.summary(r).await }),
    );
    match summary {
        Ok(s) => {
            for c in &s.states {
                r.objects.entry(c.kind.clone()).or_default().insert(c.state.clone(), c.count);
            }
            r.repair_without_ticket = s.repair_without_ticket;
            r.revision = s.revision;
        }
        Err(e) => tracing::debug!(error = %e, "no summary on this master: counting from the listing"),
    }
    let counted = r.revision > 0;
    // One pass over the listing, a page at a time: only what the report keeps is held (at 1.5 M objects
    // the objects themselves would be gigabytes in this process).
    let walked = rt.block_on(crate::pages::walk(&mut client, api::ListObjectsRequest::default(), 0, |o| {
        if !counted {
            *r.objects.entry(o.kind.clone()).or_default().entry(o.state.clone()).or_default() += 1;
            if o.state == "REPAIR" && !o.attributes.contains_key("ticket") {
                r.repair_without_ticket += 1;
            }
        }
        if now.saturating_sub(o.state_since_ms) <= RECENT_MS && o.state_since_ms > o.created_ms {
            r.changed_24h.push(format!("{} {} since {}", o.id, o.state, utc(o.state_since_ms)));
        }
        if !o.waiting_ack.is_empty() && o.ack_deadline_ms > 0 && o.ack_deadline_ms < now {
            r.stuck.push(format!(
                "{} waits for {} from {} since {}",
                o.id,
                o.waiting_ack,
                o.waiting_role,
                utc(o.state_since_ms)
            ));
        }
        if !o.pending_action.is_empty() && o.action_deadline_ms > 0 && o.action_deadline_ms < now {
            r.stuck.push(format!(
                "{} waits for its {} action since {}",
                o.id,
                o.pending_action,
                utc(o.state_since_ms)
            ));
        }
        if o.state == "REPAIR"
            && !o.attributes.contains_key("ticket")
            && now.saturating_sub(o.state_since_ms) > TICKET_OVERDUE_MS
        {
            r.stuck.push(format!(
                "{} in REPAIR since {} without a filed ticket",
                o.id,
                utc(o.state_since_ms)
            ));
        }
        std::ops::ControlFlow::Continue(())
    }));
    walked.map_err(api_err)?;
    if !r.stuck.is_empty() {
        r.needs_a_human.push(format!("{} stuck objects: {}", r.stuck.len(), listed(&r.stuck)));
    }

    // Checker rollouts: a paused one waits for a decision (resume, rollback or promote).
    match rt.block_on(client.call(api::ListCatalogRequest { name: String::new() }, |mut c, r| async move {
        c.list_catalog(r).await
    })) {
        Ok(cat) => {
            for x in cat.rollouts.iter().filter(|x| x.status == "paused") {
                let who = if x.auto_paused { "by the master" } else { "by an operator" };
                r.rollouts_paused.push(format!("{}@{} paused {who}: {}", x.name, x.version, x.paused_reason));
            }
        }
        Err(e) => tracing::debug!(error = %e, "no checker catalog on this master"),
    }
    if !r.rollouts_paused.is_empty() {
        r.needs_a_human.push(format!(
            "{} checker rollouts are paused: {}",
            r.rollouts_paused.len(),
            listed(&r.rollouts_paused)
        ));
    }

    let f = a.out.format();
    if f.is_document() {
        crate::output::print_document(&serde_json::to_value(&r)?, f)?;
    } else {
        // The report is already everything it knows: wide is the same report.
        print_report(&r);
    }
    Ok(if r.needs_a_human.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_ATTENTION) })
}

fn print_report(r: &Report) {
    println!("Huatuo inspection at {}", utc(r.time_ms));
    println!("\n== masters (leader {}, term {})", r.leader, r.term);
    for m in &r.members {
        if m.reachable {
            let lag =
                r.members.iter().map(|x| x.commit_index).max().unwrap_or(0).saturating_sub(m.applied_index);
            let nospace =
                m.nospace.map(|(free, _)| format!("  NOSPACE ({} MiB free)", free >> 20)).unwrap_or_default();
            let fds =
                if m.max_fds > 0 { format!("  files {}/{}", m.open_fds, m.max_fds) } else { String::new() };
            println!(
                "  {} {:<9} {}  term {}  commit {}  applied {}  lag {lag}{fds}{nospace}",
                m.id, m.role, m.grpc, m.term, m.commit_index, m.applied_index
            );
        } else {
            println!("  {} UNREACHABLE {}", m.id, m.grpc);
        }
    }
    println!("\n== scopes (level, quota use)");
    for s in &r.scopes {
        let latched = if s["latched"].as_bool() == Some(true) { " LATCHED" } else { "" };
        println!(
            "  {:<28} {}{latched}  pending proposals {}",
            s["scope"].as_str().unwrap_or(""),
            s["level"].as_str().unwrap_or(""),
            s["pending_proposals"]
        );
        for q in s["quotas"].as_array().into_iter().flatten() {
            println!(
                "      {:<8} out of service {}/{}  entered {}/{}  of {}",
                q["kind"].as_str().unwrap_or(""),
                q["out_of_service"],
                q["max"],
                q["entered"],
                q["max_entries"],
                q["population"]
            );
        }
        // The liveness and spike windows, when they hold something: how close the scope is to latching.
        for (what, key) in [("agents went silent", "liveness"), ("would-be removals", "spike")] {
            let w = &s[key];
            if w["held"].as_u64().unwrap_or(0) > 0 {
                let within = crate::safety_cmd::human_ms(w["window_ms"].as_u64().unwrap_or(0));
                println!("      {what} within {within}: {} (latches at {})", w["held"], w["latch_at"]);
            }
        }
    }
    println!("\n== agents: {} alive of {} expected", r.agents_alive, r.agents_expected);
    if !r.agents_stale.is_empty() {
        println!("  stale: {}", listed(&r.agents_stale));
    }
    if !r.agents_restarted.is_empty() {
        println!("  started or restarted in the last 24 h: {}", listed(&r.agents_restarted));
    }
    println!("\n== checker versions (agents running each)");
    for (name, versions) in &r.checker_versions {
        let v: Vec<String> = versions.iter().map(|(v, n)| format!("{v} x{n}")).collect();
        let spread = if versions.len() > 1 { "  (more than one version: gray release?)" } else { "" };
        println!("  {name}: {}{spread}", v.join(", "));
    }
    println!("\n== objects by kind and state");
    for (kind, states) in &r.objects {
        let s: Vec<String> = states.iter().map(|(st, n)| format!("{st} {n}")).collect();
        println!("  {kind:<8} {}", s.join("  "));
    }
    println!("  awaiting a repair ticket (REPAIR, network incidents): {}", r.repair_without_ticket);
    println!("  changed state in the last 24 h: {}", r.changed_24h.len());
    for c in r.changed_24h.iter().take(SHOWN) {
        println!("    {c}");
    }
    if !r.rollouts_paused.is_empty() {
        println!("\n== checker rollouts paused: {}", r.rollouts_paused.len());
        for p in &r.rollouts_paused {
            println!("    {p}");
        }
    }
    println!("\n== proposals pending: {}", r.proposals_pending);
    println!("== alerts in the last 24 h: {}", r.alerts_24h.len());
    for al in r.alerts_24h.iter().take(SHOWN) {
        println!("    {al}");
    }
    if r.needs_a_human.is_empty() {
        println!("\nOK: nothing needs a human.");
    } else {
        println!("\n== needs a human ({}):", r.needs_a_human.len());
        for p in &r.needs_a_human {
            println!("  - {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_over_four_fifths_of_its_open_files_needs_a_human() {
        assert!(!near_fd_limit(800, 1000), "80% exactly is not over");
        assert!(near_fd_limit(801, 1000));
        assert!(!near_fd_limit(5, 0), "an unknown limit");
        assert!(near_fd_limit(u64::MAX, u64::MAX - 1), "no overflow");
        assert!(!near_fd_limit(0, 1_048_576));
    }

    #[test]
    fn a_window_half_way_to_its_latch_needs_a_human() {
        // A rack whose liveness rule latches at 3: two silent agents are half way, one is not.
        assert!(!near_latch(1, 3));
        assert!(near_latch(2, 3));
        // A release whose spike latches at 100: 50 would-be removals, not 49.
        assert!(!near_latch(49, 100));
        assert!(near_latch(50, 100));
        assert!(near_latch(150, 100), "past the latch (a scope an operator holds in auto): still named");
        // An empty spike window has no latch count: nothing to be near.
        assert!(!near_latch(0, 0));
        assert!(!near_latch(5, 0));
        assert!(near_latch(u64::MAX, 1), "no overflow");
    }
}
