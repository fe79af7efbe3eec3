//! Operator commands against a running master: `huatuo report`, `objects`, `object`, `watch`, `status`.
//! All take `--master ADDR[,ADDR...]` (env `HUATUO_MASTER`) and find the leader themselves (see
//! `master::client`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use master::client::{Client, parse_addrs};
use proto::api;
use proto::error::{ApiError, Code};

/// Exit status when a watch's start revision was compacted (the caller must resync from a listing).
pub const EXIT_COMPACTED: u8 = 3;
/// A watch reconnects at most this many times in a row without receiving anything before giving up.
pub const WATCH_MAX_RECONNECTS: u32 = 100;
/// A watch stream with no message (events or progress) for this long is presumed dead and reconnected
/// (the server sends progress every 10 s).
pub const WATCH_IDLE: Duration = Duration::from_secs(30);

/// The master address used when neither `--master`, `$HUATUO_MASTER` nor a context names one.
pub const DEFAULT_MASTER: &str = "127.0.0.1:7700";
/// How long a command keeps trying while no master answers at all (refused, unreachable): like kubectl and
/// etcdctl, an operator learns within a couple of seconds that nothing is there (issue 19). A cluster that
/// answers but is electing a leader is still waited out (see `proto::client::Client::retry_budget`).
pub const NO_ANSWER_BUDGET: Duration = Duration::from_millis(1900);
/// `--wait` without a value: long enough for a master to boot or a cluster to be restarted.
pub const DEFAULT_WAIT: &str = "5m";

/// Where and how to reach the masters: flags and environment first, then the client context
/// (`crate::context`), then the default address.
#[derive(Args, Debug, Clone)]
pub struct MasterAddr {
    /// Master gRPC addresses; the leader is found automatically (default: the context's, else
    /// 127.0.0.1:7700).
    #[arg(long = "master", env = "HUATUO_MASTER")]
    pub master: Option<String>,
    /// Client context file (masters, CA, client certificate, token), as `huatuo dev` writes it
    /// (default: ~/.config/huatuo/context.toml when it exists).
    #[arg(long = "context", env = "HUATUO_CONTEXT")]
    pub context: Option<std::path::PathBuf>,
    /// Bearer token (overrides the context's).
    #[arg(long = "token", env = "HUATUO_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub token: Option<proto::tls::Token>,
    /// No TLS, no token: for clusters started with --insecure (tests and experiments only).
    #[arg(long)]
    pub insecure: bool,
    /// Block until a master answers, for at most DURATION (e.g. 30s, 5m, 1h; default 5m; at most 24h)
    /// instead of failing within 2 s when none does.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = DEFAULT_WAIT,
          value_parser = parse_wait)]
    pub wait: Option<Duration>,
}

/// A duration as `N` + `ms`, `s`, `m` or `h` (`30s`, `5m`), between 1 ms and
/// [`proto::client::MAX_RETRY_BUDGET`].
pub(crate) fn parse_wait(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h (e.g. 30s, 5m)")),
    };
    let d = n.checked_mul(ms_per).map(Duration::from_millis);
    match d {
        Some(d) if d.is_zero() => Err("the wait must be longer than 0".into()),
        Some(d) if d <= proto::client::MAX_RETRY_BUDGET => Ok(d),
        _ => Err(format!(
            "{s:?} is longer than the limit of {}h",
            proto::client::MAX_RETRY_BUDGET.as_secs() / 3600
        )),
    }
}

/// Why `--token` is refused (clap prints it with the flag's name).
#[derive(Debug, thiserror::Error)]
#[error("a token is one word of printable characters")]
pub(crate) struct BadToken;

fn parse_token(s: &str) -> Result<proto::tls::Token, BadToken> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BadToken);
    }
    Ok(proto::tls::Token::new(s))
}

impl MasterAddr {
    /// The client for these settings; a bad context file or unreadable certificate ends the command with a
    /// clear error (exit status 1), as any other bad argument would.
    pub(crate) fn client(&self) -> Client {
        self.client_rotated(0)
    }

    /// Like [`MasterAddr::client`], with the address list rotated by `by` (watch reconnects).
    pub(crate) fn client_rotated(&self, by: usize) -> Client {
        match self.try_client(by) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("huatuo: error: {e:#}");
                std::process::exit(1);
            }
        }
    }

    /// The addresses and security this command uses.
    pub(crate) fn resolve(&self) -> anyhow::Result<(Vec<String>, proto::client::ClientSecurity)> {
        self.resolve_from().map(|(a, s, _)| (a, s))
    }

    /// [`MasterAddr::resolve`], plus where the addresses came from (for error messages).
    fn resolve_from(&self) -> anyhow::Result<(Vec<String>, proto::client::ClientSecurity, String)> {
        let explicit = self.context.clone();
        let path = explicit.clone().or_else(crate::context::default_path);
        let mut ctx = match &path {
            Some(p) if explicit.is_some() || p.exists() => Some(crate::context::Context::load(p)?),
            _ => None,
        };
        // A context's credentials belong to its cluster: an explicit --master naming none of its masters
        // talks to another cluster, so the default context stays out of it (an explicit one still applies).
        if let (Some(m), Some(c), None) = (&self.master, &ctx, &explicit)
            && !parse_addrs(m).iter().any(|a| c.masters.contains(a))
        {
            ctx = None;
        }
        let (addrs, from) = match (&self.master, &ctx, &path) {
            (Some(m), _, _) => (parse_addrs(m), "--master or $HUATUO_MASTER".to_string()),
            (None, Some(c), Some(p)) => (c.masters.clone(), format!("the context file {}", p.display())),
            _ => {
                let none = match &path {
                    Some(p) => format!("the default (no --master, no context file at {})", p.display()),
                    None => "the default (no --master, no context file)".to_string(),
                };
                (parse_addrs(DEFAULT_MASTER), none)
            }
        };
        if self.insecure {
            eprintln!(
                "huatuo: WARNING: --insecure: no TLS and no token; only for clusters started --insecure"
            );
            return Ok((addrs, proto::client::ClientSecurity::default(), from));
        }
        let mut security = match &ctx {
            Some(c) => c.security().context("the client context's TLS files")?,
            None => proto::client::ClientSecurity::default(),
        };
        if let Some(t) = &self.token {
            security.token = Some(t.clone());
        }
        Ok((addrs, security, from))
    }

    /// How long a call keeps trying while no master answers: `--wait`, else [`NO_ANSWER_BUDGET`].
    pub(crate) fn budget(&self) -> Duration {
        self.wait.unwrap_or(NO_ANSWER_BUDGET)
    }

    fn try_client(&self, by: usize) -> anyhow::Result<Client> {
        let (mut addrs, security, from) = self.resolve_from()?;
        let n = addrs.len().max(1);
        addrs.rotate_left(by % n);
        let mut c = Client::with_security(addrs, security);
        c.retry_budget = Some(self.budget());
        c.addrs_from = Some(from);
        Ok(c)
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

pub(crate) fn api_err(e: ApiError) -> anyhow::Error {
    anyhow!("{e}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Object id: KIND/HOST[/NAME], e.g. disk/host-017/sdb.
    object: String,
    /// UNKNOWN, INFO, GOOD, SLOW, WARNING, ERROR or FATAL.
    #[arg(long)]
    severity: String,
    /// Name of the checker or person reporting.
    #[arg(long, default_value = "operator")]
    checker: String,
    /// What was seen, for people (kept as the finding's evidence).
    #[arg(long, default_value = "")]
    evidence: String,
    /// The rule the finding comes from.
    #[arg(long, default_value = "manual")]
    rule: String,
    /// The reporting checker's version.
    #[arg(long, default_value = "0.0.0")]
    version: String,
    /// The write's idempotency key (1-128 of A-Z a-z 0-9 . _ : -). Default: a fresh random key, reused for
    /// every try of this invocation. Give your own to resend a report whose outcome you did not see (the
    /// command failed or was killed): with the same key and `--time-ms` it is applied at most once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The finding's time in ms since the epoch (default: now). A resend with the same key must carry the
    /// same time: a key reused for a different request is refused with CONFLICT.
    #[arg(long)]
    time_ms: Option<u64>,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    // Validate locally first so typos get a clear message without a round trip.
    proto::convert::object_id(&a.object).map_err(api_err)?;
    proto::convert::severity(&a.severity).map_err(api_err)?;
    let req = api::IngestRequest {
        agent: String::new(),
        seq: 0,
        findings: vec![api::Finding {
            object: a.object,
            severity: a.severity.to_ascii_uppercase(),
            checker: a.checker,
            version: a.version,
            rule: a.rule,
            evidence: a.evidence,
            readings: Default::default(),
            time_ms: a.time_ms.unwrap_or_else(now_ms),
            shadow: false,
        }],
        epoch: 0,
    };
    // One key for this write, sent with every try: the client retries on UNAVAILABLE and timeouts (possibly
    // after the first try was applied by a leader that died before answering), and the master applies a key
    // once (answering the retry `duplicate: true`).
    let key = match &a.idempotency_key {
        Some(k) => k
            .parse()
            .map_err(|_| anyhow::anyhow!("--idempotency-key must be ASCII letters, digits and . _ : -"))?,
        None => proto::client::request_key("cli").map_err(api_err)?,
    };
    let mut client = a.master.client();
    let res = runtime()?
        .block_on(client.call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.ingest(r).await }
        }))
        .map_err(api_err)?;
    println!(
        "{}",
        serde_json::json!({"revision": res.revision, "applied": res.applied, "duplicate": res.duplicate})
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ObjectsArgs {
    /// Only objects of this kind: machine, disk, dimm, nic, checker, switch or link.
    #[arg(long)]
    kind: Option<String>,
    /// Only objects in this state (GOOD, SLOW, WARNING, ERROR, FIX, REPAIR, NEWBIE, TEST; any case). A state
    /// other than GOOD is read from the master's index of the objects out of GOOD, not by reading every
    /// object.
    #[arg(long)]
    state: Option<String>,
    /// Only the objects of this host (its machine, disks, DIMMs, NICs and checkers): the master reads that
    /// host's rows only.
    #[arg(long)]
    host: Option<String>,
    /// Label selector key=value (repeatable; all must match).
    #[arg(long)]
    label: Vec<String>,
    /// Show the first N objects (0: every matching object, read a page at a time).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Read from the node answering without a linearizable read.
    #[arg(long)]
    stale: bool,
    #[command(flatten)]
    out: crate::output::OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn objects(a: ObjectsArgs) -> anyhow::Result<ExitCode> {
    let req = api::ListObjectsRequest {
        kind: a.kind.unwrap_or_default(),
        state: a.state.unwrap_or_default(),
        host: a.host.unwrap_or_default(),
        labels: a.label,
        stale: a.stale,
        limit: 0,
        page_token: String::new(),
    };
    let mut client = a.master.client();
    // Printed as the pages arrive (see `objects_out`): the CLI holds one page, whatever the fleet's size.
    let mut printer =
        crate::objects_out::Printer::new(std::io::BufWriter::new(std::io::stdout().lock()), a.out.format());
    let mut write_error = None;
    let walked = runtime()?
        .block_on(crate::pages::walk(&mut client, req, a.limit, |o| {
            // A closed output (`| head`) ends the listing: no further page is asked for.
            write_error = printer.object(o).err();
            if write_error.is_some() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        }))
        .map_err(api_err)?;
    if let Some(e) = write_error {
        return Err(e).context("writing the listing");
    }
    printer.finish(walked.revision, walked.more).context("writing the listing")?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ObjectArgs {
    /// Object id: KIND/HOST[/NAME].
    id: String,
    /// Read from the node answering without a linearizable read.
    #[arg(long)]
    stale: bool,
    #[command(flatten)]
    out: crate::output::OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn object(a: ObjectArgs) -> anyhow::Result<ExitCode> {
    proto::convert::object_id(&a.id).map_err(api_err)?;
    let req = api::GetObjectRequest { id: a.id, stale: a.stale };
    let mut client = a.master.client();
    let res = runtime()?
        .block_on(client.call(req, |mut c, r| async move { c.get_object(r).await }))
        .map_err(api_err)?;
    let o = res.object.ok_or_else(|| anyhow!("server sent no object"))?;
    let history: Vec<serde_json::Value> = res
        .history
        .iter()
        .map(|h| {
            serde_json::json!({"revision": h.revision, "time_ms": h.time_ms, "what": h.what,
                "from_state": h.from_state, "to_state": h.to_state, "cause": h.cause, "detail": h.detail})
        })
        .collect();
    let f = a.out.format();
    if f.is_document() {
        let v = serde_json::json!({"object": crate::objects_out::object_json(&o), "history": history, "revision": res.revision});
        crate::output::print_document(&v, f)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}  {}  grade {}  since {}  revision {}",
        o.id,
        o.state,
        o.grade,
        utc(o.state_since_ms),
        o.revision
    )?;
    let mut attrs: Vec<_> = o.attributes.iter().collect();
    attrs.sort();
    for (k, v) in attrs {
        writeln!(out, "  attribute {k} = {v}")?;
    }
    let mut labels: Vec<_> = o.labels.iter().collect();
    labels.sort();
    for (k, v) in labels {
        writeln!(out, "  label {k} = {v}")?;
    }
    for f in &o.evidence {
        writeln!(out, "  evidence {}@{} {} {}: {}", f.checker, f.version, f.rule, f.severity, f.evidence)?;
    }
    writeln!(out, "history ({} entries, {} older compacted):", o.history_len, o.history_compacted)?;
    for h in &res.history {
        let arrow = if h.to_state.is_empty() {
            String::new()
        } else {
            format!("{} -> {} ", h.from_state, h.to_state)
        };
        writeln!(out, "  r{} {} {} {}{} {}", h.revision, utc(h.time_ms), h.what, arrow, h.cause, h.detail)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Only changes of objects of this kind (machine, disk, dimm, nic, checker, switch or link).
    #[arg(long)]
    kind: Option<String>,
    /// Only changes of this host's objects.
    #[arg(long)]
    host: Option<String>,
    /// First revision to print (0: only changes from now on).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Exit after printing this many events (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[command(flatten)]
    master: MasterAddr,
}

/// Follow the change stream, printing one JSON object per event; reconnects (to any master) from the
/// revision after the last one seen, so output has no gaps and no duplicates across disconnects.
pub fn watch(a: WatchArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut client = a.master.client();
        let mut next = a.from;
        let mut printed = 0u64;
        let mut failures = 0u32;
        let stdout = std::io::stdout();
        loop {
            let req = api::WatchRequest {
                from_revision: next,
                kind: a.kind.clone().unwrap_or_default(),
                host: a.host.clone().unwrap_or_default(),
            };
            let mut stream = match client.call(req, |mut c, r| async move { c.watch(r).await }).await {
                Ok(s) => s,
                Err(e) if e.code == Code::Compacted => {
                    eprintln!("huatuo watch: {e}");
                    return Ok(ExitCode::from(EXIT_COMPACTED));
                }
                Err(e) => return Err(api_err(e)),
            };
            loop {
                let msg = match tokio::time::timeout(WATCH_IDLE, stream.message()).await {
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) | Err(_) => break,
                    Ok(Err(status)) => {
                        let e = ApiError::from(&status);
                        if e.code == Code::Compacted {
                            eprintln!("huatuo watch: {e}");
                            return Ok(ExitCode::from(EXIT_COMPACTED));
                        }
                        break;
                    }
                };
                failures = 0;
                let mut out = stdout.lock();
                for e in msg.events {
                    if e.revision < next {
                        continue; // never print a revision twice
                    }
                    next = e.revision + 1;
                    let ev = proto::convert::event_from_wire(e);
                    writeln!(out, "{}", serde_json::to_string(&ev)?)?;
                    printed += 1;
                    if a.count > 0 && printed >= a.count {
                        out.flush()?;
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                out.flush()?;
                if next == 0 || msg.revision >= next {
                    next = msg.revision + 1;
                }
            }
            failures += 1;
            if failures > WATCH_MAX_RECONNECTS {
                return Err(anyhow!(
                    "watch stream keeps failing; gave up after {WATCH_MAX_RECONNECTS} reconnects"
                ));
            }
            // The node we watched went away: try the next one from the same revision.
            client = a.master.client_rotated(failures as usize);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    out: crate::output::OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = a.master.client();
    let i = runtime()?
        .block_on(client.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }))
        .map_err(api_err)?;
    let members: Vec<serde_json::Value> = i
        .members
        .iter()
        .map(|m| {
            serde_json::json!({"id": m.id, "peer": m.peer_addr, "grpc": m.grpc_addr, "http": m.http_addr,
                "knows_command_version": m.knows_command_version, "nospace": m.nospace,
                "free_bytes": m.free_bytes, "min_free_bytes": m.min_free_bytes, "announced": m.announced})
        })
        .collect();
    let f = a.out.format();
    if f.is_document() {
        let v = serde_json::json!({"id": i.id, "leader_id": i.leader_id, "leader_grpc": i.leader_grpc,
            "term": i.term, "role": i.role, "commit_index": i.commit_index, "applied_index": i.applied_index,
            "revision": i.revision, "level": i.level, "members": members, "agents_alive": i.agents_alive,
            "agents": i.agents, "objects": i.objects, "pending_proposals": i.pending_proposals,
            "min_command_version": i.min_command_version, "knows_command_version": i.knows_command_version,
            "scopes": i.scopes.iter().map(|s| serde_json::json!({"scope": s.scope, "level": s.level,
                "latched": s.latched, "reason": s.reason, "pending_proposals": s.pending_proposals,
                "last_blocked": s.last_blocked})).collect::<Vec<_>>()});
        crate::output::print_document(&v, f)?;
        return Ok(ExitCode::SUCCESS);
    }
    let wide = f == crate::output::Format::Wide;
    println!("answered by  node {} ({})", i.id, i.role);
    println!("leader       {} {}", i.leader_id, i.leader_grpc);
    println!("term         {}", i.term);
    println!("commit/apply {} / {}", i.commit_index, i.applied_index);
    println!("revision     {}", i.revision);
    println!("level        {}", i.level);
    println!("objects      {}   agents alive {}/{}", i.objects, i.agents_alive, i.agents);
    println!("proposals    {} pending", i.pending_proposals);
    println!(
        "commands     min_command_version {}, this node knows 1..={}",
        i.min_command_version, i.knows_command_version
    );
    // Wide: every scope, not only those off automatic drive.
    for s in i.scopes.iter().filter(|s| wide || s.level != "auto" || !s.last_blocked.is_empty()) {
        let latch = if s.latched { " (latched)" } else { "" };
        println!("scope {} {}{latch}: {}", s.scope, s.level, s.reason);
        if !s.last_blocked.is_empty() {
            println!("    last blocked at {}: {}", utc(s.last_blocked_ms), s.last_blocked);
        }
    }
    for m in &i.members {
        // A leader not yet in the member table (it could not commit its announcement: a quorum short of
        // disk refuses writes) is shown from the peer port; say so.
        let mark = match (m.id == i.leader_id, m.announced) {
            (true, true) => " (leader)",
            (true, false) => " (leader, not announced)",
            _ => "",
        };
        println!(
            "member {}  peer {}  grpc {}  http {}  knows {}{mark}",
            m.id,
            m.peer_addr,
            m.grpc_addr,
            m.http_addr,
            crate::upgrade_cmd::knows_text(m.knows_command_version)
        );
        if wide {
            println!("    free {} MiB (floor {} MiB)", m.free_bytes >> 20, m.min_free_bytes >> 20);
        }
        if m.nospace {
            println!(
                "    NOSPACE: {} MiB free, below its floor of {} MiB (it takes no new entries; as leader it refuses \
                 writes and hands over)",
                m.free_bytes >> 20,
                m.min_free_bytes >> 20
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Milliseconds since the epoch as an ISO-8601 UTC time, for people.
pub(crate) fn utc(ms: u64) -> String {
    checkers::kernel_log::parse::format_log_time(checkers::kernel_log::LogTime::Wall(ms))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_durations_parse_within_their_limit() {
        assert_eq!(parse_wait("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait(DEFAULT_WAIT), Ok(Duration::from_secs(300)));
        // At the limit, and one step past it.
        assert_eq!(parse_wait("24h"), Ok(proto::client::MAX_RETRY_BUDGET));
        assert_eq!(parse_wait("1440m"), Ok(proto::client::MAX_RETRY_BUDGET));
        assert!(parse_wait("1441m").unwrap_err().contains("limit of 24h"));
        assert!(parse_wait("86400001ms").unwrap_err().contains("limit of 24h"));
        assert!(parse_wait("99999999999999999999h").is_err(), "overflow is an error, not a wrap");
        assert!(parse_wait("0s").unwrap_err().contains("longer than 0"));
        assert!(parse_wait("5").unwrap_err().contains("unit"));
        assert!(parse_wait("-5s").is_err());
        assert!(parse_wait("").is_err());
    }
}
