//! `huatuo bench heartbeats`: the heartbeat path of one real master cluster (child processes of this
//! binary, temp dirs, free loopback ports, real fsync), driven over gRPC by N simulated agents multiplexed on
//! a few hundred client connections. Phases: the first heartbeat of every agent (each becomes alive: a
//! replicated change), steady heartbeats (nothing to replicate), and the first heartbeat of every agent to
//! a new leader after a kill -9 of the old one (its heartbeat memory starts empty). Prints beats/s, p50/p99
//! and the Raft entries and revisions each phase cost. Each agent beats as the real one does: over its own
//! long-lived `HeartbeatStream` (`proto::client::BeatStream`, opened at its first beat, on the connection
//! of the client that first carried it), and with one `Heartbeat` call for a beat the stream cannot carry
//! (after the kill, a beat in flight goes as a call to the new leader and the next one opens a stream
//! there); `--beat-calls` sends every beat as a call (each its own HTTP/2 stream), as before streams.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use master::client::Client;
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::client::{BeatStream, ClientSecurity, IngestStream, parse_addrs};

#[derive(Args, Debug)]
pub struct BenchHeartbeatsArgs {
    /// Simulated agents (one host each).
    #[arg(long, default_value_t = 20_000)]
    agents: u32,
    /// Concurrent gRPC clients (connections) the agents are spread over.
    #[arg(long, default_value_t = 256)]
    clients: u32,
    /// Objects registered per host before the heartbeats (1 machine + the rest disks; 0: none).
    #[arg(long, default_value_t = 4)]
    objects_per_host: u32,
    /// Rounds of steady heartbeats (every agent beats once per round).
    #[arg(long, default_value_t = 2)]
    steady_rounds: u32,
    /// Master nodes (3 as in production; 1 to look at the leader alone).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Longest a phase may run; agents not done by then are counted as not done (the figure says so).
    #[arg(long, default_value_t = 300)]
    phase_limit_secs: u64,
    /// Skip the new-leader phase (no kill).
    #[arg(long)]
    no_failover: bool,
    /// Send every beat as one `Heartbeat` call instead of over the agent's heartbeat stream.
    #[arg(long)]
    beat_calls: bool,
    /// After the steady rounds, every agent sends a batch of one finding as an `Ingest` call (what the
    /// state keeps of it is then in the leader's RSS), then a second one over its own `IngestStream`, which
    /// it keeps: prints the leader's RSS with them all open and idle, then waits for the leader's idle end
    /// (`INGEST_STREAM_IDLE`) to close them.
    #[arg(long)]
    ingest_streams: bool,
    /// Masters with TLS and tokens on every port, as deployed (a throwaway CA, a client certificate and an
    /// agent token for the simulated agents): what a TLS connection costs the leader. Not with
    /// `--ingest-streams` (it reads the leader's plain-HTTP `/metrics`).
    #[arg(long)]
    tls: bool,
}

/// Master settings of the bench: a silent period longer than any phase may run.
const BENCH_CONFIG: &str = "agent_silent_after_ms = 3600000\n";

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn host(i: u32) -> String {
    format!("hb-{i:06}")
}

pub fn run(a: BenchHeartbeatsArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(crate::bench_common::until_stopped(bench(a)))
}

/// What one phase measured.
struct Phase {
    done: u64,
    failed: u64,
    took: Duration,
    lat_ms: Vec<f64>,
}

/// Every agent sends one request built by `make` (agent index -> request), from the concurrent clients of
/// `pool` (agent i through client i mod its size); stops at `limit`. `call` sends one request. The clients
/// come back to the pool, so each keeps its connection and its guess of the leader from phase to phase,
/// as an agent keeps its own: a new client would start at the first address again, and its first request
/// on a follower would go as a redirected call, not over a stream.
async fn phase<Req, F, Fut>(
    pool: &mut Vec<Client>,
    agents: u32,
    limit: Duration,
    make: fn(u32) -> Req,
    call: F,
) -> Phase
where
    Req: Clone + Send + 'static,
    F: Fn(Client, Req) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Client, bool)> + Send,
{
    let t0 = Instant::now();
    let deadline = t0 + limit;
    let failed = Arc::new(AtomicU64::new(0));
    let clients = pool.len().max(1) as u32;
    let mut tasks = Vec::new();
    for (c, mut client) in (0u32..).zip(pool.drain(..)) {
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while i < agents && Instant::now() < deadline {
                let t = Instant::now();
                let (back, ok) = call(client, make(i)).await;
                client = back;
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += clients;
            }
            (client, lat)
        }));
    }
    let mut lat_ms = Vec::new();
    for t in tasks {
        // A task that panicked loses its client: the pool shrinks, which the next phase's spread follows.
        if let Ok((client, lat)) = t.await {
            pool.push(client);
            lat_ms.extend(lat);
        }
    }
    let took = t0.elapsed();
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    Phase { done: lat_ms.len() as u64, failed: failed.load(Ordering::Relaxed), took, lat_ms }
}

/// The assignment hash each simulated agent holds (empty until a reply gave it one), echoed in its next
/// beat as a real agent does: a beat holding the current hash gets no assignment back, so the steady
/// rounds measure steady beats, not a full assignment in every reply.
static HELD: std::sync::OnceLock<Vec<std::sync::Mutex<String>>> = std::sync::OnceLock::new();

/// The index of a simulated agent (`hb-agent-NNNNNN`, see [`beat`]) in the per-agent tables.
fn agent_index(agent: &str) -> Option<usize> {
    agent.strip_prefix("hb-agent-")?.parse().ok()
}

fn held(agent: &str) -> Option<&'static std::sync::Mutex<String>> {
    HELD.get()?.get(agent_index(agent)?)
}

/// Each agent's heartbeat stream between its beats (taken out while one is in flight: an agent is beaten by
/// one client task at a time), when beats go over streams.
static STREAMS: std::sync::OnceLock<Vec<std::sync::Mutex<Option<BeatStream>>>> = std::sync::OnceLock::new();
/// Beats answered over a stream, and sent as calls, since the bench started.
static STREAMED: AtomicU64 = AtomicU64::new(0);
static CALLED: AtomicU64 = AtomicU64::new(0);

fn stream_slot(agent: &str) -> Option<&'static std::sync::Mutex<Option<BeatStream>>> {
    STREAMS.get()?.get(agent_index(agent)?)
}

fn beat(i: u32) -> api::HeartbeatRequest {
    let agent = format!("hb-agent-{i:06}");
    let assignment_hash =
        held(&agent).map(|h| h.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default();
    api::HeartbeatRequest {
        agent,
        host: host(i),
        version: "1.0.0".into(),
        started_ms: 1,
        checkers: [("disk".to_string(), "1.0.0".to_string())].into_iter().collect(),
        outbox_entries: 0,
        outbox_dropped: 0,
        runs: Vec::new(),
        assignment_hash,
        ..Default::default()
    }
}

async fn send_beat(mut c: Client, r: api::HeartbeatRequest) -> (Client, bool) {
    let slot = held(&r.agent);
    let ok = match stream_slot(&r.agent) {
        Some(s) => {
            let mut bs = s.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
            let before = bs.stats();
            let ok = bs.beat(&mut c, r).await;
            let after = bs.stats();
            STREAMED.fetch_add(after.streamed - before.streamed, Ordering::Relaxed);
            CALLED.fetch_add(after.called - before.called, Ordering::Relaxed);
            *s.lock().unwrap_or_else(|p| p.into_inner()) = Some(bs);
            ok
        }
        None => {
            CALLED.fetch_add(1, Ordering::Relaxed);
            c.call(r, |mut g, r| async move { g.heartbeat(r).await }).await
        }
    };
    match &ok {
        Ok(resp) => {
            if let Some(h) = slot {
                *h.lock().unwrap_or_else(|p| p.into_inner()) = resp.assignment_hash.clone();
            }
        }
        Err(e) => eprintln!("heartbeat: {e}"),
    }
    (c, ok.is_ok())
}

async fn send_register(mut c: Client, r: api::RegisterRequest) -> (Client, bool) {
    let ok = c.call(r, |mut g, r| async move { g.register(r).await }).await;
    if let Err(e) = &ok {
        eprintln!("register: {e}");
    }
    (c, ok.is_ok())
}

/// Entries and revision on the current leader (the commit index counts Raft entries).
async fn position(cluster: &LocalCluster) -> anyhow::Result<(u64, u64, u64)> {
    let leader = cluster.wait_leader(READY_TIMEOUT).await.ok_or_else(|| anyhow!("no leader"))?;
    let i = cluster.info(leader).await.ok_or_else(|| anyhow!("leader {leader} does not answer"))?;
    Ok((leader, i.commit_index, i.revision))
}

/// Beats answered over streams and sent as calls so far.
fn carried() -> (u64, u64) {
    (STREAMED.load(Ordering::Relaxed), CALLED.load(Ordering::Relaxed))
}

/// Each agent's ingest stream, kept open after its one batch (`--ingest-streams`).
static INGEST: std::sync::OnceLock<Vec<std::sync::Mutex<Option<IngestStream>>>> = std::sync::OnceLock::new();
/// Batches of that phase answered over a stream.
static INGEST_STREAMED: AtomicU64 = AtomicU64::new(0);

/// One healthy finding about the agent's machine in batch `seq`.
fn batch(i: u32, seq: u64) -> api::IngestRequest {
    api::IngestRequest {
        agent: format!("hb-agent-{i:06}"),
        seq,
        findings: vec![api::Finding {
            object: format!("machine/{}", host(i)),
            severity: "GOOD".into(),
            checker: "machine".into(),
            version: "1.0.0".into(),
            rule: "machine.ok".into(),
            evidence: "up".into(),
            time_ms: crate::bench_common::now_ms(),
            ..Default::default()
        }],
        epoch: 1,
    }
}

fn first_batch(i: u32) -> api::IngestRequest {
    batch(i, 1)
}

fn second_batch(i: u32) -> api::IngestRequest {
    batch(i, 2)
}

/// One batch as an `Ingest` call (no stream held).
async fn call_batch(mut c: Client, r: api::IngestRequest) -> (Client, bool) {
    let ok = c.call(r, |mut g, r| async move { g.ingest(r).await }).await;
    if let Err(e) = &ok {
        eprintln!("ingest: {e}");
    }
    (c, ok.is_ok())
}

async fn send_batch(mut c: Client, r: api::IngestRequest) -> (Client, bool) {
    let Some(slot) = agent_index(&r.agent).and_then(|i| INGEST.get()?.get(i)) else {
        return (c, false);
    };
    let mut stream = slot.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
    let ok = stream.send(&mut c, r).await;
    INGEST_STREAMED.fetch_add(stream.stats().streamed, Ordering::Relaxed);
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
    if let Err(e) = &ok {
        eprintln!("ingest: {e}");
    }
    (c, ok.is_ok())
}

/// The leader's resident memory in KiB and its count of open ingest streams (its `/metrics`).
async fn leader_memory(cluster: &LocalCluster, leader: u64) -> anyhow::Result<(u64, u64)> {
    let pid = cluster.pid(leader).ok_or_else(|| anyhow!("leader {leader} not running"))?;
    let rss = crate::bench_common::rss_bytes(pid)? >> 10;
    let http = &cluster.nodes.get(&leader).ok_or_else(|| anyhow!("no node {leader}"))?.http;
    let body = crate::bench_common::scrape_metrics(http).await?;
    Ok((rss, crate::bench_common::metric_value(&body, "huatuo_master_ingest_streams")))
}

/// `--ingest-streams`: every agent's one batch over a stream it keeps, the leader's memory with them all
/// open, and their idle end.
async fn idle_ingest_streams(
    cluster: &LocalCluster,
    pool: &mut Vec<Client>,
    agents: u32,
    limit: Duration,
) -> anyhow::Result<()> {
    INGEST.get_or_init(|| (0..agents).map(|_| std::sync::Mutex::new(None)).collect());
    let leader = position(cluster).await?.0;
    // The same findings first as calls, so what the state keeps of them is in the RSS before the streams.
    let calls = phase(pool, agents, limit, first_batch, call_batch).await;
    let (rss0, open0) = leader_memory(cluster, leader).await?;
    let p = phase(pool, agents, limit, second_batch, send_batch).await;
    let (rss1, open1) = leader_memory(cluster, leader).await?;
    let added = open1.saturating_sub(open0);
    println!(
        "ingest streams: {}/{agents} first batches as calls ({} failed), then {}/{agents} in {:.1} s over streams \
         kept open ({} answered on them), {} failed; leader {leader} holds {open1} open ({open0} before): RSS {} -> \
         {} MiB, {:.1} KiB per stream",
        calls.done,
        calls.failed,
        p.done,
        p.took.as_secs_f64(),
        INGEST_STREAMED.load(Ordering::Relaxed),
        p.failed,
        rss0 >> 10,
        rss1 >> 10,
        rss1.saturating_sub(rss0) as f64 / added.max(1) as f64,
    );
    // The leader ends each after INGEST_STREAM_IDLE without a batch; give it three times that.
    let t = Instant::now();
    let bound = master::api::heartbeats::INGEST_STREAM_IDLE * 3;
    let mut open = open1;
    while open > open0 && t.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open = leader_memory(cluster, leader).await?.1;
    }
    let (rss2, _) = leader_memory(cluster, leader).await?;
    println!(
        "  idle end ({:?}): {open} open {:.1} s after the last batch (bound {bound:?}); RSS then {} MiB",
        master::api::heartbeats::INGEST_STREAM_IDLE,
        t.elapsed().as_secs_f64(),
        rss2 >> 10,
    );
    // The client sides go with them (each learns its stream ended at its next batch).
    for slot in INGEST.get().into_iter().flatten() {
        slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
    if open > open0 {
        bail!("{open} ingest streams still open {bound:?} after their last batch");
    }
    Ok(())
}

fn report(
    name: &str,
    p: &Phase,
    agents: u32,
    before: (u64, u64, u64),
    after: (u64, u64, u64),
    ways: [(u64, u64); 2],
) {
    let rate = p.done as f64 / p.took.as_secs_f64().max(1e-9);
    println!(
        "{name}: {}/{agents} beats in {:.1} s: {rate:.0} beats/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {} failed; {} Raft entries, {} revisions; {} over streams, {} as calls",
        p.done,
        p.took.as_secs_f64(),
        pct(&p.lat_ms, 0.5),
        pct(&p.lat_ms, 0.99),
        p.lat_ms.last().copied().unwrap_or(f64::NAN),
        p.failed,
        after.1.saturating_sub(before.1),
        after.2.saturating_sub(before.2),
        ways[1].0 - ways[0].0,
        ways[1].1 - ways[0].1,
    );
}

/// One heartbeat of every agent through `pool`, reported as `name`, with the leader's CPU over it (when the
/// same member led from start to end): per beat it holds what the phase brought, e.g. the TLS handshakes of
/// clients reconnecting to a new leader.
async fn beat_phase(
    name: &str,
    cluster: &LocalCluster,
    pool: &mut Vec<Client>,
    agents: u32,
    limit: Duration,
) -> anyhow::Result<()> {
    let before = position(cluster).await?;
    let pid = cluster.pid(before.0);
    let ticks = pid.and_then(|p| crate::bench_common::cpu_ticks(p).ok());
    let ways = carried();
    let p = phase(pool, agents, limit, beat, send_beat).await;
    let ticks = ticks.zip(pid.and_then(|p| crate::bench_common::cpu_ticks(p).ok())).map(|(t0, t1)| t1 - t0);
    let after = position(cluster).await?;
    report(name, &p, agents, before, after, [ways, carried()]);
    if let Some(t) = ticks.filter(|_| after.0 == before.0 && p.done > 0) {
        let cpu_s = t as f64 / crate::bench_common::clock_ticks();
        println!(
            "  leader {} CPU over the phase: {:.2} s, {:.1} us per beat ({:.0}% of a core)",
            before.0,
            cpu_s,
            cpu_s * 1e6 / p.done as f64,
            cpu_s / p.took.as_secs_f64().max(1e-9) * 100.0
        );
    }
    Ok(())
}

/// A throwaway CA in `dir`: the masters' certificate and an agent's, and a token with the roles the bench
/// uses (agent for its beats and registrations, read for the harness's cluster info). Returns the masters'
/// `[tls]` and `[[auth.tokens]]` config and the simulated agents' credentials.
fn bench_pki(dir: &std::path::Path) -> anyhow::Result<(String, ClientSecurity)> {
    use master::tls::{DevCa, Usage};
    let ca = DevCa::new("huatuo bench CA")?;
    let server = ca.write_issued(dir, "master", &["127.0.0.1", "localhost"], Usage::Server)?;
    let agent = ca.write_issued(dir, "agent", &[], Usage::Client)?;
    let token = master::tls::new_token();
    let toml = format!(
        "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[[auth.tokens]]\nname = \"bench-agent\"\nsha256 = \"{}\"\n\
         roles = [\"agent\", \"read\"]\n",
        server.ca.display().to_string(),
        server.cert.display().to_string(),
        server.key.display().to_string(),
        token.sha256_hex()
    );
    let security = ClientSecurity { tls: Some(agent.load()?.client_config()), token: Some(token) };
    Ok((toml, security))
}

async fn bench(a: BenchHeartbeatsArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let overflows_at_start = crate::bench_common::listen_overflows();
    // Silence is not what this measures: an agent marked silent because the bench took longer than the
    // silent period to come round to it would turn its next beat into a replicated change.
    if a.tls && a.ingest_streams {
        bail!("--tls and --ingest-streams do not go together (the latter reads /metrics over plain HTTP)");
    }
    let pki = tempfile::Builder::new().prefix("huatuo-bench-pki-").tempdir().context("a temp dir")?;
    let (mut cluster, security) = if a.tls {
        let (toml, security) = bench_pki(pki.path())?;
        let cluster =
            LocalCluster::start_secure(&exe, a.nodes, &format!("{BENCH_CONFIG}{toml}"), security.clone())
                .context("start cluster")?;
        (cluster, security)
    } else {
        let cluster =
            LocalCluster::start_with_config(&exe, a.nodes, BENCH_CONFIG).context("start cluster")?;
        (cluster, ClientSecurity::default())
    };
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .ok_or_else(|| anyhow!("no leader within {READY_TIMEOUT:?}"))?;
    println!(
        "cluster: {} node(s), leader {leader}; {} agents over {} gRPC clients, {} objects per host; beats {}; {}",
        a.nodes,
        a.agents,
        a.clients,
        a.objects_per_host,
        if a.beat_calls { "as one call each (--beat-calls)" } else { "over each agent's heartbeat stream" },
        if a.tls { "TLS and tokens (--tls)" } else { "no TLS" }
    );
    let addrs = cluster.grpc_addrs();
    // The simulated agents' clients, kept from phase to phase.
    let mut pool: Vec<Client> =
        (0..a.clients.max(1)).map(|_| Client::with_security(parse_addrs(&addrs), security.clone())).collect();
    let limit = Duration::from_secs(a.phase_limit_secs);
    HELD.get_or_init(|| (0..a.agents).map(|_| std::sync::Mutex::new(String::new())).collect());
    if !a.beat_calls {
        STREAMS.get_or_init(|| (0..a.agents).map(|_| std::sync::Mutex::new(None)).collect());
    }

    if a.objects_per_host > 0 {
        static PER_HOST: AtomicU64 = AtomicU64::new(0);
        PER_HOST.store(u64::from(a.objects_per_host), Ordering::Relaxed);
        fn register(i: u32) -> api::RegisterRequest {
            let n = PER_HOST.load(Ordering::Relaxed);
            let h = host(i);
            let mut objects = vec![api::RegisteredObject {
                id: format!("machine/{h}"),
                attributes: Default::default(),
                labels: Default::default(),
            }];
            for d in 1..n {
                objects.push(api::RegisteredObject {
                    id: format!("disk/{h}/d{d}"),
                    // No serial: the objects stay GOOD (a serial makes a registered disk a replacement to
                    // provision), as most of a fleet is, so the beats measure the heartbeat path alone.
                    attributes: Default::default(),
                    labels: Default::default(),
                });
            }
            api::RegisterRequest { agent: format!("hb-agent-{i:06}"), host: h, objects }
        }
        let before = position(&cluster).await?;
        let p = phase(&mut pool, a.agents, limit, register, send_register).await;
        let after = position(&cluster).await?;
        println!(
            "register: {}/{} hosts in {:.1} s ({:.0} hosts/s), {} failed; {} Raft entries",
            p.done,
            a.agents,
            p.took.as_secs_f64(),
            p.done as f64 / p.took.as_secs_f64().max(1e-9),
            p.failed,
            after.1.saturating_sub(before.1)
        );
    }

    beat_phase("first beats (agents new to the cluster)", &cluster, &mut pool, a.agents, limit).await?;
    for round in 1..=a.steady_rounds {
        beat_phase(&format!("steady beats, round {round}"), &cluster, &mut pool, a.agents, limit).await?;
    }

    if let Some(pid) = cluster.pid(position(&cluster).await?.0) {
        // What holding the agents' connections and streams costs: compare runs with different --clients.
        let rss =
            crate::bench_common::rss_bytes(pid).map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count());
        println!(
            "leader after the steady rounds: RSS {}, {} open file descriptors ({} clients' connections)",
            rss.unwrap_or_else(|e| format!("unknown ({e})")),
            fds.map_or_else(|e| format!("unknown ({e})"), |n| n.to_string()),
            pool.len()
        );
    }

    if a.ingest_streams {
        idle_ingest_streams(&cluster, &mut pool, a.agents, limit).await?;
    }

    if !a.no_failover && a.nodes > 1 {
        let (old, commit, _) = position(&cluster).await?;
        for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
            if !cluster.wait_applied(id, commit, READY_TIMEOUT).await {
                bail!("node {id} did not catch up before the kill");
            }
        }
        cluster.kill9(old);
        let t = Instant::now();
        let new = loop {
            match cluster.wait_leader(READY_TIMEOUT).await {
                Some(l) if l != old => break l,
                _ if t.elapsed() > READY_TIMEOUT => bail!("no new leader within {READY_TIMEOUT:?}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        cluster.spawn(old, false).context("restart the killed node")?;
        println!("leader {old} killed (-9) and restarted as a follower; new leader {new}");
        beat_phase("first beats to the new leader", &cluster, &mut pool, a.agents, limit).await?;
        beat_phase("steady beats, new leader", &cluster, &mut pool, a.agents, limit).await?;
    }
    for id in cluster.running() {
        if let Some(pid) = cluster.pid(id) {
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.trim().to_string()));
            println!("node {id}: {}", rss.unwrap_or_else(|| "VmRSS unknown".into()));
        }
    }
    println!("{}", crate::bench_common::listen_overflows_line(overflows_at_start));
    Ok(ExitCode::SUCCESS)
}
