//! `huatuo catalog push|list|show` and `huatuo rollout start|status|widen|pause|resume|promote|rollback`:
//! the operator's side of the checker catalog and gray release (issue 15, ARCHITECTURE.md "Checker catalog
//! and gray release"). Every check runs on the master (the same for gRPC and REST); rollout changes need
//! `--reason` and are audited.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use proto::api;
use proto::convert;
use proto::view::{CatalogListing, RolloutStatusView, RolloutView};

use crate::ops_cmd::{MasterAddr, api_err, runtime, utc};
use crate::output::{self, Format, OutputArgs};
use crate::safety_cmd::Operator;

/// Largest file `catalog push` reads (the master refuses more than 8 MiB anyway; this bounds the read).
const MAX_PUSH_FILE: u64 = 16 << 20;

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Store FILE as NAME@VERSION (validated by the master: a rule set must compile).
    Push(Box<PushArgs>),
    /// Every checker: built-ins (read-only), artifacts and rollouts.
    List(ListArgs),
    /// One checker's versions and rollouts.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The artifact's file (a script or static binary, a rule set, a profile or a model).
    file: PathBuf,
    /// The checker (or rule set, profile, model) this is a version of, e.g. `raid-health`.
    #[arg(long)]
    name: String,
    /// Its version, e.g. 1.2.0. A version once pushed is never replaced: a change is a new version.
    #[arg(long)]
    version: String,
    /// external (a script or static binary), rules (kernel-log rule set), profile (disk scoring) or model
    /// (disk-failure model JSON, checked with the agent's parser before the master accepts it).
    #[arg(long = "type", default_value = "external")]
    kind: String,
    /// Object kinds an external checker reports on: machine, disk, dimm, nic (comma-separated).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// How often an external checker runs (e.g. 60s, 5m).
    #[arg(long, default_value = "60s")]
    interval: String,
    /// Kill an external checker's run after this long.
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// Most output bytes an external checker's run may print (0: the agent's default).
    #[arg(long, default_value_t = 0)]
    max_output_bytes: u64,
    /// RLIMIT_AS of an external checker's process in bytes (0: the agent's default).
    #[arg(long, default_value_t = 0)]
    max_memory_bytes: u64,
    /// RLIMIT_CPU of an external checker's process (e.g. 5s; 0: the agent's default).
    #[arg(long, default_value = "0s")]
    max_cpu: String,
    /// What the artifact checks, for people (shown by `catalog show` and the portal).
    #[arg(long, default_value = "")]
    description: String,
    #[command(flatten)]
    op: Operator,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The checker (or rule set, profile, model) name.
    name: String,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCmd {
    /// Start a gray release of NAME@VERSION on exact hosts, a stable percentage of hosts, or labels.
    Start(StartArgs),
    /// The version distribution per checker (hosts assigned, running, failed to verify, not reporting)
    /// and the rollouts with their deviation figures.
    Status(StatusArgs),
    /// Grow a rollout (a larger percentage keeps the hosts it had; or more hosts).
    Widen(WidenArgs),
    /// Freeze a rollout where it runs.
    Pause(ChangeArgs),
    /// Continue a paused rollout (also one the master paused on its own).
    Resume(ChangeArgs),
    /// Make NAME@VERSION the stable version everywhere.
    Promote(ChangeArgs),
    /// End a rollout: its hosts return to the stable version.
    Rollback(ChangeArgs),
    /// Unassign NAME@VERSION, the stable version: no host runs NAME any more (a model stops predicting; a
    /// rule set or profile gives way to the agent's built-in one). Refused while a rollout of NAME is in
    /// progress; a later rollout or promote assigns it again.
    Retire(ChangeArgs),
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// NAME@VERSION
    artifact: String,
    /// Exact hosts to run it on (comma-separated).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Share of the hosts to run it on, 0-100 (a stable hash of host and name picks them).
    #[arg(long)]
    percent: Option<f64>,
    /// KEY=VALUE (repeatable: all must match the host's machine labels).
    #[arg(long)]
    label: Vec<String>,
    /// Run beside the current version; findings are recorded but drive no state machine.
    #[arg(long)]
    shadow: bool,
    #[command(flatten)]
    op: Operator,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct WidenArgs {
    /// NAME@VERSION, the version being rolled out.
    artifact: String,
    /// More exact hosts (comma-separated).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// A larger share of the hosts, 0-100 (the hosts it had stay in).
    #[arg(long)]
    percent: Option<f64>,
    #[command(flatten)]
    op: Operator,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct ChangeArgs {
    /// NAME@VERSION.
    artifact: String,
    #[command(flatten)]
    op: Operator,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this checker (default: every one).
    name: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

/// `60s`, `5m`, `1h`, `500ms`, or plain milliseconds.
fn parse_ms(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1)
    };
    let n: u64 = num.trim().parse().with_context(|| format!("bad duration {s:?} (e.g. 60s, 5m, 500ms)"))?;
    n.checked_mul(mult).with_context(|| format!("duration {s:?} is too long"))
}

fn split_ref(s: &str) -> anyhow::Result<(String, String)> {
    let (n, v) = s.split_once('@').with_context(|| format!("{s:?}: expected NAME@VERSION"))?;
    anyhow::ensure!(!n.is_empty() && !v.is_empty(), "{s:?}: expected NAME@VERSION");
    Ok((n.to_string(), v.to_string()))
}

fn print_catalog(l: &CatalogListing, f: Format) -> anyhow::Result<()> {
    if f.is_document() {
        return output::print_document(&serde_json::to_value(l)?, f);
    }
    let wide = f == Format::Wide;
    let tail = if wide { "PUSHED BY            PUSHED AT             DESCRIPTION" } else { "PUSHED BY" };
    println!("{:<24} {:<16} {:<8} {:>9}  {:<16} {tail}", "NAME", "VERSION", "TYPE", "SIZE", "SHA256");
    for a in &l.artifacts {
        let sha = if a.sha256.is_empty() { "-".to_string() } else { a.sha256.chars().take(16).collect() };
        if wide {
            let at = if a.pushed_ms == 0 { "-".to_string() } else { utc(a.pushed_ms) };
            println!(
                "{:<24} {:<16} {:<8} {:>9}  {:<16} {:<20} {:<21} {}",
                a.name, a.version, a.kind, a.size, sha, a.pushed_by, at, a.description
            );
        } else {
            println!(
                "{:<24} {:<16} {:<8} {:>9}  {:<16} {}",
                a.name, a.version, a.kind, a.size, sha, a.pushed_by
            );
        }
    }
    if !l.rollouts.is_empty() {
        println!();
        for r in &l.rollouts {
            print_rollout(r);
        }
    }
    Ok(())
}

fn target_text(r: &RolloutView) -> String {
    let mut t = Vec::new();
    if !r.hosts.is_empty() {
        t.push(format!("hosts {}", r.hosts.join(",")));
    }
    if r.percent > 0.0 {
        t.push(format!("{}% of hosts", r.percent));
    }
    if !r.labels.is_empty() {
        t.push(format!("labels {}", r.labels.join(",")));
    }
    t.join(" ")
}

fn print_rollout(r: &RolloutView) {
    println!(
        "rollout {}@{} {}{} on {} (from {}; by {}: {})",
        r.name,
        r.version,
        r.status,
        if r.shadow { " shadow" } else { "" },
        target_text(r),
        if r.previous_version.is_empty() { "none" } else { &r.previous_version },
        r.by,
        r.reason
    );
    if !r.paused_reason.is_empty() {
        let who = if r.auto_paused { "paused by the master" } else { "paused" };
        println!("  {who}: {}", r.paused_reason);
    }
    if let Some(d) = &r.deviation {
        println!(
            "  last window: verdict {}; new version flagged {}, current {} (limit {}) of {} objects on {} hosts; \
             {} hosts failing",
            d.verdict,
            d.new_flagged,
            d.current_flagged,
            d.limit,
            d.canary_objects,
            d.canary_hosts,
            d.hosts_failing
        );
    }
}

fn print_status(s: &RolloutStatusView, f: Format) -> anyhow::Result<()> {
    if f.is_document() {
        return output::print_document(&serde_json::to_value(s)?, f);
    }
    for c in &s.checkers {
        let stable = if c.stable_version.is_empty() { "none" } else { &c.stable_version };
        println!("{} ({}): stable {stable}", c.name, c.kind);
        for v in &c.versions {
            println!(
                "  {:<16}{} assigned {:>6}  running {:>6}  failed-verify {:>4}  failed {:>4}  not-reporting {:>6}",
                v.version,
                if v.shadow { " (shadow)" } else { "" },
                v.assigned,
                v.running,
                v.failed_verify,
                v.failed,
                v.not_reporting
            );
        }
        for r in &c.rollouts {
            print!("  ");
            print_rollout(r);
        }
    }
    Ok(())
}

pub fn run_catalog(c: CatalogCmd) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match c {
        CatalogCmd::Push(a) => {
            let a = *a;
            let len = std::fs::metadata(&a.file).with_context(|| format!("{}", a.file.display()))?.len();
            anyhow::ensure!(
                len <= MAX_PUSH_FILE,
                "{} is {len} bytes (limit {MAX_PUSH_FILE})",
                a.file.display()
            );
            let content = std::fs::read(&a.file).with_context(|| format!("{}", a.file.display()))?;
            let spec = api::ArtifactSpec {
                interval_ms: parse_ms(&a.interval)?,
                timeout_ms: parse_ms(&a.timeout)?,
                max_output_bytes: a.max_output_bytes,
                kinds: a.kinds.clone(),
                max_memory_bytes: a.max_memory_bytes,
                max_cpu_ms: parse_ms(&a.max_cpu)?,
            };
            // Scheduling applies to external checkers only; rule sets and profiles carry their kinds alone.
            let spec = if a.kind == "external" {
                spec
            } else {
                api::ArtifactSpec { kinds: a.kinds, ..Default::default() }
            };
            let req = api::PushArtifactRequest {
                name: a.name,
                version: a.version,
                r#type: a.kind,
                content,
                description: a.description,
                spec: Some(spec),
                by: a.op.by,
                sha256: String::new(),
            };
            let mut client = a.master.client();
            let r = rt
                .block_on(client.call(req, |mut c, r| async move { c.push_artifact(r).await }))
                .map_err(api_err)?;
            let art = r.artifact.map(convert::artifact_from_wire).unwrap_or_default();
            if a.json {
                let v =
                    serde_json::json!({"artifact": art, "revision": r.revision, "duplicate": r.duplicate});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if r.duplicate {
                println!(
                    "{}@{} is already stored with these bytes (sha256 {})",
                    art.name, art.version, art.sha256
                );
            } else {
                println!(
                    "stored {}@{} ({} bytes, sha256 {}) at revision {}",
                    art.name, art.version, art.size, art.sha256, r.revision
                );
            }
        }
        CatalogCmd::List(a) => {
            let mut client = a.master.client();
            let r = rt
                .block_on(
                    client.call(api::ListCatalogRequest { name: String::new() }, |mut c, r| async move {
                        c.list_catalog(r).await
                    }),
                )
                .map_err(api_err)?;
            print_catalog(&convert::catalog_from_wire(r), a.out.format())?;
        }
        CatalogCmd::Show(a) => {
            let mut client = a.master.client();
            let r = rt
                .block_on(
                    client.call(api::ListCatalogRequest { name: a.name.clone() }, |mut c, r| async move {
                        c.list_catalog(r).await
                    }),
                )
                .map_err(api_err)?;
            anyhow::ensure!(!r.artifacts.is_empty(), "no checker {:?} in the catalog", a.name);
            print_catalog(&convert::catalog_from_wire(r), a.out.format())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which hosts a rollout change names (start and widen only).
#[derive(Default)]
struct Targets {
    hosts: Vec<String>,
    percent: Option<f64>,
    labels: Vec<String>,
    shadow: bool,
}

fn change(
    action: &str,
    artifact: &str,
    t: Targets,
    op: Operator,
    json: bool,
    master: MasterAddr,
) -> anyhow::Result<ExitCode> {
    let Targets { hosts, percent, labels, shadow } = t;
    op.require_reason()?;
    let (name, version) = split_ref(artifact)?;
    let req = api::RolloutRequest {
        action: action.into(),
        name,
        version,
        hosts,
        percent: percent.unwrap_or(0.0),
        labels,
        shadow,
        by: op.by,
        reason: op.reason,
    };
    let mut client = master.client();
    let r = runtime()?
        .block_on(client.call(req, |mut c, r| async move { c.rollout(r).await }))
        .map_err(api_err)?;
    let view = r.rollout.map(convert::rollout_from_wire).unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"rollout": view, "revision": r.revision}))?
        );
    } else {
        println!("{action}: done at revision {}", r.revision);
        if action == "retire" {
            println!("{artifact} is unassigned: no host runs it outside a new rollout");
        } else {
            print_rollout(&view);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_rollout(c: RolloutCmd) -> anyhow::Result<ExitCode> {
    match c {
        RolloutCmd::Start(a) => {
            let t = Targets { hosts: a.hosts, percent: a.percent, labels: a.label, shadow: a.shadow };
            change("start", &a.artifact, t, a.op, a.json, a.master)
        }
        RolloutCmd::Widen(a) => {
            let t = Targets { hosts: a.hosts, percent: a.percent, ..Targets::default() };
            change("widen", &a.artifact, t, a.op, a.json, a.master)
        }
        RolloutCmd::Pause(a) => change("pause", &a.artifact, Targets::default(), a.op, a.json, a.master),
        RolloutCmd::Resume(a) => change("resume", &a.artifact, Targets::default(), a.op, a.json, a.master),
        RolloutCmd::Promote(a) => change("promote", &a.artifact, Targets::default(), a.op, a.json, a.master),
        RolloutCmd::Rollback(a) => {
            change("rollback", &a.artifact, Targets::default(), a.op, a.json, a.master)
        }
        RolloutCmd::Retire(a) => change("retire", &a.artifact, Targets::default(), a.op, a.json, a.master),
        RolloutCmd::Status(a) => {
            let mut client = a.master.client();
            let req = api::RolloutStatusRequest { name: a.name.unwrap_or_default() };
            let r = runtime()?
                .block_on(client.call(req, |mut c, r| async move { c.rollout_status(r).await }))
                .map_err(api_err)?;
            print_status(&convert::rollout_status_from_wire(r), a.out.format())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_refs() {
        assert_eq!(parse_ms("60s").ok(), Some(60_000));
        assert_eq!(parse_ms("5m").ok(), Some(300_000));
        assert_eq!(parse_ms("500ms").ok(), Some(500));
        assert_eq!(parse_ms("1h").ok(), Some(3_600_000));
        assert_eq!(parse_ms("250").ok(), Some(250));
        assert!(parse_ms("soon").is_err());
        assert!(parse_ms("99999999999999999999h").is_err());
        assert_eq!(split_ref("disk-x@2").ok(), Some(("disk-x".to_string(), "2".to_string())));
        assert!(split_ref("disk-x").is_err());
        assert!(split_ref("@2").is_err());
    }
}
