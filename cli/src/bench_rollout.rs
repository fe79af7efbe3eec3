//! `huatuo bench rollout`: how fast a checker release reaches a fleet, measured from outside (issue 15).
//! Starts a real 3-node master cluster (child processes of this binary, temp dirs, free loopback ports,
//! fsync), then simulates N agents in this process, multiplexed over a bounded number of HTTP/2 connections
//! to the leader. Each simulated agent registers its machine object with labels, heartbeats every interval
//! with seeded jitter, follows the assignment in the heartbeat reply, fetches an assigned artifact in chunks
//! (`FetchArtifact`, resuming from the last offset after an error), verifies its sha256 and from then on
//! reports `runs` = running for it.
//!
//! Phases: a baseline of heartbeats alone; push a 1 MiB external-checker artifact; `rollout start
//! --percent 100`; wait until the master's `RolloutStatus` counts every agent as running the version. Prints
//! that time (and the client-side time of the last agent's report), heartbeat p50/p99 in the baseline and
//! during the rollout, the leader's CPU (from /proc/PID/stat) and bytes (artifact bytes fetched, counted
//! client-side, plus the leader's `wchar` from /proc/PID/io, which counts every write including its sockets
//! and disk). No assertion on time anywhere; the floor in issue 15 (1,000 agents under 60 s, heartbeat p99
//! under 200 ms) is for the reader to compare.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore};

use crate::bench_common::{Fleet, Rng, clock_ticks, cpu_pct, latency_summary, now_ms, sample};

/// Most simulated agents one run may start (each is a task plus its share of a connection).
const MAX_AGENTS: u32 = 100_000;
/// Most HTTP/2 connections to the leader (a real fleet has one per agent; one process multiplexes its
/// simulated agents over a few, so the figures measure the master rather than this process's sockets).
const MAX_CONNECTIONS: u32 = 256;
/// The per-artifact size limit of the catalog (issue 15: 8 MiB); a larger answer from the master is refused.
const MAX_ARTIFACT_BYTES: u64 = 8 << 20;
/// Most chunks one fetch may take (8 MiB in 1 KiB chunks): a server that answers with ever smaller
/// chunks cannot keep an agent fetching forever.
const MAX_CHUNKS: u64 = 8192;
/// Retries of one chunk (from the same offset: resumable) before the fetch is abandoned until the next
/// heartbeat.
const MAX_CHUNK_RETRIES: u32 = 3;
/// Fetches in flight at once in this process: bounds the simulator's memory (each holds up to one
/// artifact); a real fleet spreads its fetches by heartbeat jitter instead.
const MAX_FETCHES_IN_FLIGHT: usize = 128;
/// Timeout of one heartbeat, register or status call (as the agent's own client: proto CALL_TIMEOUT).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one chunk of an artifact (up to 1 MiB over loopback under load).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the whole fleet may take to run the new version before the benchmark gives up.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(600);
/// How often the benchmark asks the master for the version distribution.
const STATUS_POLL: Duration = Duration::from_millis(200);
/// Registrations in flight at once (each is a Raft write).
const REGISTER_CONCURRENCY: usize = 32;
/// Heartbeat latency samples kept (one per heartbeat: 1,000 agents at 1/s for 10 minutes is 600,000).
const MAX_SAMPLES: usize = 2_000_000;
/// Error messages kept for the summary (the rest are counted).
const MAX_ERRORS_KEPT: usize = 10;
/// Successful heartbeats every agent has made before the baseline starts: the first one of an agent is
/// its liveness change (a Raft write), and connections warm up; the baseline measures the steady state.
const WARMUP_HEARTBEATS: u64 = 2;
/// How long the warm-up may take before the benchmark gives up.
const WARMUP_DEADLINE: Duration = Duration::from_secs(120);
/// The name of the artifact the benchmark pushes.
const ARTIFACT: &str = "bench-rollout";

#[derive(Args, Debug)]
pub struct BenchRolloutArgs {
    /// Simulated agents (one host each).
    #[arg(long, default_value_t = 1000)]
    agents: u32,
    /// Size of the pushed external-checker artifact in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    artifact_bytes: u64,
    /// Heartbeat interval of every simulated agent, in ms (the agent's default is 5 s).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Jitter of each heartbeat, +- this percentage of the interval.
    #[arg(long, default_value_t = 20)]
    jitter_pct: u64,
    /// Seconds of heartbeats alone before the push (the baseline).
    #[arg(long, default_value_t = 10)]
    baseline_seconds: u64,
    /// HTTP/2 connections to the leader the agents share.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Chunk size asked for per FetchArtifact call (0: the server's chunk size).
    #[arg(long, default_value_t = 0)]
    chunk_bytes: u32,
    /// Seed of the jitter (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A shell script of exactly `size` bytes (at least its header): an external checker that prints nothing,
/// padded with comment lines of seeded pseudo-random hex so the bytes are not trivially compressible.
fn artifact(size: u64, seed: u64) -> Vec<u8> {
    let mut out = b"#!/bin/sh\n# huatuo bench rollout artifact: prints no finding\nexit 0\n".to_vec();
    let mut rng = Rng(seed);
    while (out.len() as u64) < size {
        let left = size - out.len() as u64;
        let mut line = String::from("#");
        while (line.len() as u64) < left.min(100) - 1 {
            line.push_str(&format!("{:016x}", rng.next_u64()));
        }
        line.truncate((left.min(100) - 1) as usize);
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// Why a fetch failed (the simulated agent tries again at its next heartbeat).
#[derive(Debug, thiserror::Error, PartialEq)]
enum FetchError {
    #[error("chunk at offset {offset} failed {tries} times: {last}")]
    Chunk { offset: u64, tries: u32, last: String },
    #[error("the master answered offset {got} for a request at {want}")]
    Offset { want: u64, got: u64 },
    #[error("the master says the artifact has {got} bytes, the assignment {want}")]
    Size { want: u64, got: u64 },
    #[error("artifact of {0} bytes is over the {MAX_ARTIFACT_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("an empty chunk at offset {0} before the end")]
    Empty(u64),
    #[error("more than {MAX_CHUNKS} chunks")]
    TooManyChunks,
    #[error("sha256 mismatch: assigned {want}, fetched {got}")]
    Unverified { want: String, got: String },
}

/// Fetch `a`'s bytes through `chunk(offset)` (one FetchArtifact call), resuming from the last good offset
/// after an error, and verify the sha256 the assignment names. Returns the bytes.
async fn fetch_verified<F, Fut>(a: &api::Assignment, mut chunk: F) -> Result<Vec<u8>, FetchError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<api::FetchArtifactResponse, String>>,
{
    if a.size > MAX_ARTIFACT_BYTES {
        return Err(FetchError::TooLarge(a.size));
    }
    let mut data = Vec::with_capacity(a.size as usize);
    let mut chunks = 0u64;
    while (data.len() as u64) < a.size {
        let offset = data.len() as u64;
        chunks += 1;
        if chunks > MAX_CHUNKS {
            return Err(FetchError::TooManyChunks);
        }
        let mut tries = 0;
        let r = loop {
            tries += 1;
            match chunk(offset).await {
                Ok(r) => break r,
                Err(e) if tries >= MAX_CHUNK_RETRIES => {
                    return Err(FetchError::Chunk { offset, tries, last: e });
                }
                Err(_) => {}
            }
        };
        if r.offset != offset {
            return Err(FetchError::Offset { want: offset, got: r.offset });
        }
        if r.size != a.size {
            return Err(FetchError::Size { want: a.size, got: r.size });
        }
        if r.data.is_empty() {
            return Err(FetchError::Empty(offset));
        }
        let take = r.data.len().min((a.size - offset) as usize);
        data.extend_from_slice(&r.data[..take]);
    }
    let got = sha256_hex(&data);
    if got != a.sha256 {
        return Err(FetchError::Unverified { want: a.sha256.clone(), got });
    }
    Ok(data)
}

/// What the simulated fleet shares with the benchmark.
struct Shared {
    /// (ms since the benchmark's origin when sent, latency ms) of every successful heartbeat.
    heartbeats: Mutex<Vec<(f64, f64)>>,
    /// Per agent: ms since the origin of the first acknowledged heartbeat reporting the benchmark's version
    /// as running (0: not yet).
    reported: Vec<AtomicU64>,
    /// Bytes and fetches of the benchmark's artifact.
    fetched_bytes: AtomicU64,
    fetches: AtomicU64,
    /// Bytes and fetches of every other assigned artifact (the seeded rule set and profiles).
    other_bytes: AtomicU64,
    other_fetches: AtomicU64,
    /// Per agent: successful heartbeats so far.
    beats: Vec<AtomicU64>,
    errors: AtomicU64,
    kept_errors: Mutex<Vec<String>>,
    fetch_slots: Semaphore,
    stop: AtomicBool,
    origin: Instant,
    /// The version the benchmark rolls out, once pushed.
    target: Mutex<Option<String>>,
}

impl Shared {
    fn since_origin_ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1000.0
    }

    async fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.kept_errors.lock().await;
        if kept.len() < MAX_ERRORS_KEPT {
            kept.push(what);
        }
    }
}

/// One simulated agent: what it holds between heartbeats.
struct Sim {
    agent: String,
    host: String,
    started_ms: u64,
    assignment_hash: String,
    assignment: Vec<api::Assignment>,
    /// (name, shadow) -> what it runs.
    runs: BTreeMap<(String, bool), api::CheckerRun>,
}

impl Sim {
    fn heartbeat(&self) -> api::HeartbeatRequest {
        api::HeartbeatRequest {
            agent: self.agent.clone(),
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_ms: self.started_ms,
            checkers: self.runs.values().map(|r| (r.name.clone(), r.version.clone())).collect(),
            outbox_entries: 0,
            outbox_dropped: 0,
            runs: self.runs.values().cloned().collect(),
            assignment_hash: self.assignment_hash.clone(),
            ..Default::default()
        }
    }

    /// Drop runs no longer assigned; the assigned ones not yet running are what to fetch.
    fn missing(&mut self) -> Vec<api::Assignment> {
        let assigned: BTreeMap<(String, bool), &api::Assignment> =
            self.assignment.iter().map(|a| ((a.name.clone(), a.shadow), a)).collect();
        self.runs
            .retain(|k, r| assigned.get(k).is_some_and(|a| a.version == r.version && a.sha256 == r.sha256));
        self.assignment
            .iter()
            .filter(|a| !self.runs.contains_key(&(a.name.clone(), a.shadow)))
            .cloned()
            .collect()
    }

    fn record(&mut self, a: &api::Assignment, status: &str, error: String) {
        self.runs.insert(
            (a.name.clone(), a.shadow),
            api::CheckerRun {
                name: a.name.clone(),
                version: a.version.clone(),
                sha256: a.sha256.clone(),
                shadow: a.shadow,
                status: status.into(),
                runs: u64::from(status == "running"),
                failures: 0,
                timeouts: 0,
                last_error: error,
                last_run_ms: now_ms(),
            },
        );
    }

    fn runs_version(&self, name: &str, version: &str) -> bool {
        self.runs
            .values()
            .any(|r| r.name == name && r.version == version && r.status == "running" && !r.shadow)
    }
}

/// How a simulated agent paces itself (the same for every agent of a run).
#[derive(Debug, Clone, Copy)]
struct Pace {
    interval_ms: u64,
    jitter_pct: u64,
    chunk_bytes: u32,
}

async fn agent_loop(
    idx: usize,
    mut sim: Sim,
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    mut rng: Rng,
    pace: Pace,
) {
    let Pace { interval_ms, jitter_pct, chunk_bytes } = pace;
    // Spread the first heartbeats over one interval, as a fleet's agents start at different times.
    tokio::time::sleep(Duration::from_millis(rng.below(interval_ms))).await;
    while !shared.stop.load(Ordering::Relaxed) {
        let req = sim.heartbeat();
        let reports_target = match shared.target.lock().await.as_deref() {
            Some(v) => sim.runs_version(ARTIFACT, v),
            None => false,
        };
        let sent = shared.since_origin_ms();
        let t = Instant::now();
        let (node, mut client) = fleet.client(idx);
        match tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(req)).await {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let lat = t.elapsed().as_secs_f64() * 1000.0;
                shared.beats[idx].fetch_add(1, Ordering::Relaxed);
                {
                    let mut hb = shared.heartbeats.lock().await;
                    if hb.len() < MAX_SAMPLES {
                        hb.push((sent, lat));
                    }
                }
                if reports_target {
                    // Only this agent's task writes its slot: keep the first acknowledged report.
                    if shared.reported[idx].load(Ordering::Relaxed) == 0 {
                        let at = shared.since_origin_ms().max(1.0) as u64;
                        shared.reported[idx].store(at, Ordering::Relaxed);
                    }
                }
                if resp.assignment_included {
                    sim.assignment = resp.assignment;
                    sim.assignment_hash = resp.assignment_hash;
                }
                for a in sim.missing() {
                    let Ok(_slot) = shared.fetch_slots.acquire().await else { break };
                    let (c, agent, host) = (client.clone(), sim.agent.clone(), sim.host.clone());
                    let fetched = fetch_verified(&a, |offset| {
                        let mut c = c.clone();
                        let req = api::FetchArtifactRequest {
                            agent: agent.clone(),
                            host: host.clone(),
                            name: a.name.clone(),
                            version: a.version.clone(),
                            sha256: a.sha256.clone(),
                            offset,
                            max_bytes: chunk_bytes,
                        };
                        async move {
                            match tokio::time::timeout(CHUNK_TIMEOUT, c.fetch_artifact(req)).await {
                                Ok(Ok(r)) => Ok(r.into_inner()),
                                Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                                Err(_) => Err(format!("timed out after {CHUNK_TIMEOUT:?}")),
                            }
                        }
                    })
                    .await;
                    match fetched {
                        Ok(bytes) => {
                            let (b, n) = if a.name == ARTIFACT {
                                (&shared.fetched_bytes, &shared.fetches)
                            } else {
                                (&shared.other_bytes, &shared.other_fetches)
                            };
                            b.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                            n.fetch_add(1, Ordering::Relaxed);
                            sim.record(&a, "running", String::new());
                        }
                        Err(e @ FetchError::Unverified { .. }) => {
                            shared.error(format!("{}: {e}", sim.agent)).await;
                            sim.record(&a, "unverified", e.to_string());
                        }
                        Err(e) => {
                            shared.error(format!("{}: fetch {}@{}: {e}", sim.agent, a.name, a.version)).await
                        }
                    }
                }
            }
            Ok(Err(s)) => {
                fleet.not_leader(node, &s);
                shared.error(format!("{}: heartbeat: {:?}: {}", sim.agent, s.code(), s.message())).await
            }
            Err(_) => {
                shared.error(format!("{}: heartbeat timed out after {CALL_TIMEOUT:?}", sim.agent)).await
            }
        }
        tokio::time::sleep(rng.jittered(interval_ms, jitter_pct)).await;
    }
}

fn latency_line(name: &str, samples: &[f64]) -> String {
    format!("heartbeat latency {name}: {}", latency_summary(samples.to_vec()))
}

pub fn run(a: BenchRolloutArgs) -> anyhow::Result<ExitCode> {
    if a.agents == 0 || a.agents > MAX_AGENTS {
        bail!("--agents must be 1..={MAX_AGENTS}");
    }
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        bail!("--connections must be 1..={MAX_CONNECTIONS}");
    }
    if a.artifact_bytes == 0 || a.artifact_bytes > MAX_ARTIFACT_BYTES {
        bail!("--artifact-bytes must be 1..={MAX_ARTIFACT_BYTES}");
    }
    if a.heartbeat_ms == 0 {
        bail!("--heartbeat-ms must be > 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // A signal drops the benchmark, and with it the cluster (whose Drop kills the master processes).
    rt.block_on(crate::bench_common::until_stopped(bench(a)))
}

async fn bench(a: BenchRolloutArgs) -> anyhow::Result<ExitCode> {
    let seed = a.seed.unwrap_or_else(now_ms);
    println!(
        "seed {seed} (replay the jitter with --seed {seed}); {} agents over {} connections, heartbeat {} ms +- {}%",
        a.agents, a.connections, a.heartbeat_ms, a.jitter_pct
    );
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let cluster = LocalCluster::start(&exe, 3).context("start cluster")?;
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .ok_or_else(|| anyhow!("no leader within {READY_TIMEOUT:?}"))?;
    let pid = cluster.pid(leader).ok_or_else(|| anyhow!("leader {leader} has no process"))?;
    let addr = cluster.nodes[&leader].grpc.clone();
    println!("cluster: 3 nodes (fsync), leader {leader} (pid {pid}) at {addr}");

    let nodes: Vec<(u64, String)> = cluster.nodes.iter().map(|(id, n)| (*id, n.grpc.clone())).collect();
    let fleet = Arc::new(
        Fleet::connect(
            nodes.iter().map(|(_, a)| a.clone()).collect(),
            a.connections,
            nodes.iter().position(|(id, _)| *id == leader).unwrap_or(0),
        )
        .await?,
    );

    // Inventory: every simulated host registers its machine object with labels.
    let t = Instant::now();
    let hosts: Vec<(String, String)> =
        (0..a.agents).map(|i| (format!("bench-agent-{i:05}"), format!("bench-{i:05}"))).collect();
    let slots = Arc::new(Semaphore::new(REGISTER_CONCURRENCY));
    let mut regs = Vec::new();
    for (i, (agent, host)) in hosts.iter().enumerate() {
        let (_, mut c) = fleet.client(i);
        let slots = slots.clone();
        let req = api::RegisterRequest {
            agent: agent.clone(),
            host: host.clone(),
            objects: vec![api::RegisteredObject {
                id: format!("machine/{host}"),
                attributes: Default::default(),
                labels: [("rack".to_string(), format!("r{:02}", i % 20)), ("pool".into(), "bench".into())]
                    .into_iter()
                    .collect(),
            }],
        };
        regs.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.map_err(|e| anyhow!("{e}"))?;
            tokio::time::timeout(CALL_TIMEOUT * 4, c.register(req))
                .await
                .map_err(|_| anyhow!("register timed out"))?
                .map_err(|s| anyhow!("register: {:?}: {}", s.code(), s.message()))?;
            anyhow::Ok(())
        }));
    }
    for r in regs {
        r.await??;
    }
    println!("registered {} machines in {:.1} s", a.agents, t.elapsed().as_secs_f64());

    let shared = Arc::new(Shared {
        heartbeats: Mutex::new(Vec::new()),
        reported: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        fetched_bytes: AtomicU64::new(0),
        fetches: AtomicU64::new(0),
        other_bytes: AtomicU64::new(0),
        other_fetches: AtomicU64::new(0),
        beats: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        errors: AtomicU64::new(0),
        kept_errors: Mutex::new(Vec::new()),
        fetch_slots: Semaphore::new(MAX_FETCHES_IN_FLIGHT),
        stop: AtomicBool::new(false),
        origin: Instant::now(),
        target: Mutex::new(None),
    });
    let pace = Pace { interval_ms: a.heartbeat_ms, jitter_pct: a.jitter_pct, chunk_bytes: a.chunk_bytes };
    let mut seeder = Rng(seed);
    let started_ms = now_ms();
    let mut tasks = Vec::new();
    for (i, (agent, host)) in hosts.iter().enumerate() {
        let sim = Sim {
            agent: agent.clone(),
            host: host.clone(),
            started_ms,
            assignment_hash: String::new(),
            assignment: Vec::new(),
            runs: BTreeMap::new(),
        };
        tasks.push(tokio::spawn(agent_loop(
            i,
            sim,
            fleet.clone(),
            shared.clone(),
            Rng(seeder.next_u64()),
            pace,
        )));
    }

    // Warm-up: every agent heartbeats a few times (and fetches the seeded artifacts it is assigned).
    let t = Instant::now();
    while shared.beats.iter().any(|b| b.load(Ordering::Relaxed) < WARMUP_HEARTBEATS) {
        if t.elapsed() > WARMUP_DEADLINE {
            shared.stop.store(true, Ordering::Relaxed);
            bail!(
                "agents did not make {WARMUP_HEARTBEATS} heartbeats each within {WARMUP_DEADLINE:?} ({} errors: {:?})",
                shared.errors.load(Ordering::Relaxed),
                shared.kept_errors.lock().await
            );
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    println!(
        "warm-up: every agent made {WARMUP_HEARTBEATS} heartbeats in {:.1} s ({} seeded artifacts fetched, {} bytes)",
        t.elapsed().as_secs_f64(),
        shared.other_fetches.load(Ordering::Relaxed),
        shared.other_bytes.load(Ordering::Relaxed)
    );
    // Baseline: heartbeats alone.
    let base_start = sample(pid)?;
    let base_from = shared.since_origin_ms();
    tokio::time::sleep(Duration::from_secs(a.baseline_seconds)).await;
    let base_end = sample(pid)?;
    let base_to = shared.since_origin_ms();
    let base: Vec<f64> = {
        let hb = shared.heartbeats.lock().await;
        hb.iter().filter(|(s, _)| *s >= base_from && *s < base_to).map(|x| x.1).collect()
    };
    println!("{}", latency_line("before (baseline)", &base));
    println!("leader CPU in the baseline: {:.1}% of a core", cpu_pct(&base_start, &base_end));

    // Push the artifact and start the rollout to every host.
    let content = artifact(a.artifact_bytes, seed);
    let sha = sha256_hex(&content);
    let version = format!("1.0.{}", seed % 1000);
    // Operator calls follow the leader (proto::client), with room for a 1 MiB push under load.
    let mut op = cluster.client();
    op.call_timeout = CALL_TIMEOUT * 6;
    let push = api::PushArtifactRequest {
        name: ARTIFACT.into(),
        version: version.clone(),
        r#type: "external".into(),
        content,
        description: "huatuo bench rollout".into(),
        spec: Some(api::ArtifactSpec {
            interval_ms: 60_000,
            timeout_ms: 10_000,
            max_output_bytes: 1 << 20,
            kinds: vec!["machine".into()],
            max_memory_bytes: 256 << 20,
            max_cpu_ms: 10_000,
        }),
        by: "bench".into(),
        sha256: sha.clone(),
    };
    let t = Instant::now();
    let pushed = op
        .call(push, |mut c, r| async move { c.push_artifact(r).await })
        .await
        .map_err(|e| anyhow!("push {ARTIFACT}@{version}: {e:?}"))?;
    println!(
        "pushed {ARTIFACT}@{version}: {} bytes, sha256 {sha} in {:.0} ms (revision {})",
        a.artifact_bytes,
        t.elapsed().as_secs_f64() * 1000.0,
        pushed.revision
    );
    *shared.target.lock().await = Some(version.clone());
    let roll_start = sample(pid)?;
    let roll_from = shared.since_origin_ms();
    let start = api::RolloutRequest {
        action: "start".into(),
        name: ARTIFACT.into(),
        version: version.clone(),
        hosts: Vec::new(),
        percent: 100.0,
        labels: Vec::new(),
        shadow: false,
        by: "bench".into(),
        reason: "huatuo bench rollout".into(),
    };
    op.call(start, |mut c, r| async move { c.rollout(r).await })
        .await
        .map_err(|e| anyhow!("rollout start: {e:?}"))?;
    op.call_timeout = CALL_TIMEOUT;
    op.max_attempts = 1;

    // Wait until the master counts every agent as running the version.
    let deadline = Instant::now() + ROLLOUT_DEADLINE;
    let mut last = (0u64, 0u64);
    let done_at = loop {
        let req = api::RolloutStatusRequest { name: ARTIFACT.into() };
        if let Ok(r) = op.call(req, |mut c, r| async move { c.rollout_status(r).await }).await {
            let v = r
                .checkers
                .into_iter()
                .filter(|c| c.name == ARTIFACT)
                .flat_map(|c| c.versions)
                .find(|v| v.version == version && !v.shadow);
            if let Some(v) = v {
                if (v.assigned, v.running) != last {
                    last = (v.assigned, v.running);
                }
                if v.running >= u64::from(a.agents) {
                    break Instant::now();
                }
            }
        }
        if Instant::now() >= deadline {
            shared.stop.store(true, Ordering::Relaxed);
            bail!(
                "not every agent runs {ARTIFACT}@{version} within {ROLLOUT_DEADLINE:?}: the master counts {} \
                 assigned, {} running of {} ({} errors: {:?})",
                last.0,
                last.1,
                a.agents,
                shared.errors.load(Ordering::Relaxed),
                shared.kept_errors.lock().await
            );
        }
        tokio::time::sleep(STATUS_POLL).await;
    };
    let roll_end = sample(pid)?;
    let roll_to = shared.since_origin_ms();
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    if let Some(now) = cluster.wait_leader(READY_TIMEOUT).await
        && now != leader
    {
        println!(
            "note: the leader changed from {leader} to {now} during the run; CPU and wchar are node {leader}'s"
        );
    }
    let took = done_at.duration_since(roll_start.at).as_secs_f64();
    let reported: Vec<u64> = shared.reported.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let last_report = reported.iter().copied().max().unwrap_or(0) as f64;
    println!(
        "rollout: {} agents run {ARTIFACT}@{version} {took:.2} s after `rollout start --percent 100` (master's \
         RolloutStatus); last agent's report acknowledged at {:.2} s (client side); {} of {} agents reported",
        a.agents,
        (last_report - roll_from).max(0.0) / 1000.0,
        reported.iter().filter(|r| **r > 0).count(),
        a.agents
    );
    let hb = shared.heartbeats.lock().await;
    let during: Vec<f64> = hb.iter().filter(|(s, _)| *s >= roll_from && *s <= roll_to).map(|x| x.1).collect();
    println!("{}", latency_line("before (baseline)", &base));
    println!("{}", latency_line("during the rollout", &during));
    let fetched = shared.fetched_bytes.load(Ordering::Relaxed);
    let written = roll_start.wchar.zip(roll_end.wchar).map(|(a, b)| b.saturating_sub(a));
    println!(
        "leader CPU: baseline {:.1}% of a core, during the rollout {:.1}% of a core ({:.1} CPU-seconds)",
        cpu_pct(&base_start, &base_end),
        cpu_pct(&roll_start, &roll_end),
        roll_end.ticks.saturating_sub(roll_start.ticks) as f64 / clock_ticks()
    );
    println!(
        "bytes: {} bytes of {ARTIFACT} fetched by agents ({} fetches, counted client-side, {:.1} MiB; plus {} \
         bytes of seeded artifacts in {} fetches over the whole run); leader wchar during the rollout {}",
        fetched,
        shared.fetches.load(Ordering::Relaxed),
        fetched as f64 / (1 << 20) as f64,
        shared.other_bytes.load(Ordering::Relaxed),
        shared.other_fetches.load(Ordering::Relaxed),
        written.map_or("unreadable".to_string(), |w| format!(
            "{w} bytes ({:.1} MiB)",
            w as f64 / (1 << 20) as f64
        ))
    );
    let errors = shared.errors.load(Ordering::Relaxed);
    println!(
        "errors: {errors}{}",
        if errors > 0 { format!(", first: {:?}", shared.kept_errors.lock().await) } else { String::new() }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(bytes: &[u8]) -> api::Assignment {
        api::Assignment {
            name: "c".into(),
            version: "1".into(),
            r#type: "external".into(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            shadow: false,
            spec: None,
        }
    }

    /// A fake master that serves `bytes` in chunks of `chunk`, failing the calls whose numbers are in `fail`.
    fn serve(
        bytes: Vec<u8>,
        chunk: usize,
        fail: Vec<u32>,
    ) -> impl FnMut(u64) -> std::future::Ready<Result<api::FetchArtifactResponse, String>> {
        let mut call = 0u32;
        move |offset| {
            call += 1;
            if fail.contains(&call) {
                return std::future::ready(Err(format!("call {call} failed")));
            }
            let o = offset as usize;
            let end = (o + chunk).min(bytes.len());
            std::future::ready(Ok(api::FetchArtifactResponse {
                data: bytes[o.min(end)..end].to_vec(),
                offset,
                size: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            }))
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn a_chunked_fetch_resumes_after_errors_and_verifies_the_hash() {
        let bytes = artifact(10_000, 7);
        let a = assignment(&bytes);
        // Calls 2 and 3 fail: the fetch retries the same offset and completes.
        let got = block_on(fetch_verified(&a, serve(bytes.clone(), 4096, vec![2, 3])));
        assert_eq!(got.as_deref(), Ok(bytes.as_slice()));
    }

    #[test]
    fn a_chunk_failing_at_the_retry_limit_abandons_the_fetch() {
        let bytes = artifact(10_000, 7);
        let a = assignment(&bytes);
        let fails: Vec<u32> = (2..2 + MAX_CHUNK_RETRIES).collect();
        let got = block_on(fetch_verified(&a, serve(bytes.clone(), 4096, fails)));
        assert!(
            matches!(got, Err(FetchError::Chunk { offset: 4096, tries, .. }) if tries == MAX_CHUNK_RETRIES),
            "{got:?}"
        );
        // One failure fewer than the limit still completes.
        let fails: Vec<u32> = (2..1 + MAX_CHUNK_RETRIES).collect();
        assert!(block_on(fetch_verified(&a, serve(bytes, 4096, fails))).is_ok());
    }

    #[test]
    fn altered_bytes_are_refused_as_unverified() {
        let bytes = artifact(5000, 1);
        let a = assignment(&bytes);
        let mut tampered = bytes.clone();
        tampered[100] ^= 1;
        let got = block_on(fetch_verified(&a, serve(tampered, 1 << 20, vec![])));
        assert!(matches!(got, Err(FetchError::Unverified { .. })), "{got:?}");
    }

    #[test]
    fn bad_answers_and_limits_are_errors_not_loops() {
        let bytes = artifact(5000, 1);
        let a = assignment(&bytes);
        // Empty chunks would loop forever without the check.
        let got = block_on(fetch_verified(&a, serve(bytes.clone(), 0, vec![])));
        assert_eq!(got, Err(FetchError::Empty(0)));
        // A size other than the assignment's.
        let mut short = bytes.clone();
        short.pop();
        let got = block_on(fetch_verified(&a, serve(short, 1 << 20, vec![])));
        assert_eq!(got, Err(FetchError::Size { want: 5000, got: 4999 }));
        // More chunks than the limit: 1-byte chunks of a MAX_CHUNKS + 1 byte artifact.
        let big = artifact(MAX_CHUNKS + 1, 2);
        let got = block_on(fetch_verified(&assignment(&big), serve(big.clone(), 1, vec![])));
        assert_eq!(got, Err(FetchError::TooManyChunks));
        // Exactly MAX_CHUNKS chunks is fine.
        let at = artifact(MAX_CHUNKS, 2);
        assert!(block_on(fetch_verified(&assignment(&at), serve(at.clone(), 1, vec![]))).is_ok());
        // Over the artifact size limit: refused before any call.
        let mut huge = assignment(&bytes);
        huge.size = MAX_ARTIFACT_BYTES + 1;
        let got =
            block_on(fetch_verified(&huge, |_| std::future::ready(Err("no call expected".to_string()))));
        assert_eq!(got, Err(FetchError::TooLarge(MAX_ARTIFACT_BYTES + 1)));
        // A wrong offset in the answer.
        let got = block_on(fetch_verified(&a, |o| {
            std::future::ready(Ok(api::FetchArtifactResponse {
                data: vec![0; 10],
                offset: o + 1,
                size: 5000,
                sha256: String::new(),
            }))
        }));
        assert_eq!(got, Err(FetchError::Offset { want: 0, got: 1 }));
    }

    #[test]
    fn the_artifact_has_the_asked_size_and_depends_on_the_seed() {
        for size in [1u64, 64, 65, 100, 1000, 1 << 20] {
            assert_eq!(artifact(size, 3).len() as u64, size.max(artifact(1, 3).len() as u64));
        }
        assert!(artifact(4096, 3).starts_with(b"#!/bin/sh\n"));
        assert_eq!(artifact(4096, 3), artifact(4096, 3));
        assert_ne!(artifact(4096, 3), artifact(4096, 4));
    }

    #[test]
    fn a_simulated_agent_reports_what_it_runs_and_drops_what_is_unassigned() {
        let mut sim = Sim {
            agent: "a".into(),
            host: "h".into(),
            started_ms: 1,
            assignment_hash: String::new(),
            assignment: vec![assignment(b"v1")],
            runs: BTreeMap::new(),
        };
        let missing = sim.missing();
        assert_eq!(missing.len(), 1);
        sim.record(&missing[0], "running", String::new());
        assert!(sim.missing().is_empty());
        assert!(sim.runs_version("c", "1"));
        let hb = sim.heartbeat();
        assert_eq!((hb.runs.len(), hb.runs[0].status.as_str()), (1, "running"));
        // A new version of the same checker replaces the old run once fetched.
        let mut v2 = assignment(b"v2");
        v2.version = "2".into();
        sim.assignment = vec![v2];
        assert_eq!(sim.missing().len(), 1);
        assert!(!sim.runs_version("c", "1"), "the unassigned version is no longer reported");
    }
}
