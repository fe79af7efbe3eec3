//! `huatuo bench fleet`: one master cluster serving a fleet, measured from outside (issue 17).
//!
//! Starts a real 3-node master cluster (child processes of this binary, fsync on, free loopback ports, data
//! under `--data-dir` or the temp dir) and simulates `--agents` agents in this process, MULTIPLEXED: each of
//! `--connections` HTTP/2 connections per node is driven by one task that runs the heartbeat schedule of its
//! share of the agents (a heap of due times, a bounded number of calls in flight), so 100,000 logical agents
//! cost a few hundred tasks and sockets, not 100,000. Every host has 1 machine, `objects-per-host - 3` disks
//! and 2 NICs.
//!
//! Phases, each printing its figures when it ends:
//! 1. registration of every host and its objects through the agents' path (Register + first Heartbeat);
//! 2. steady state: heartbeats every `--heartbeat-secs` with +-20% jitter, findings at a background rate
//!    (0.1% of objects per hour, scaled to the phase), a burst of up to 2,000 faulty disks (ERROR findings)
//!    in at most a minute, and a watcher doing list (every page) + watch of everything: its lag is from the
//!    moment a burst finding was acknowledged to the moment the watcher saw that disk's transition;
//! 3. each master's RSS and CPU (sampled from /proc every second through every phase), data-dir bytes per
//!    member, the snapshot figures the leader's `/metrics` exports, and two listings from the leader: the
//!    burst's disks by state (from its index of the objects out of GOOD) and one that reads every object;
//!    then five timed scrapes of the leader's `/metrics` (what Prometheus pays right after the burst);
//! 4. a follower killed, its data dir wiped, restarted with `--join`: time until its applied index reaches
//!    the leader's commit index of the moment of the restart, the leader's snapshot build it asked for,
//!    then the wait until its indexes reach the leader's revision (phase 5 starts after it);
//! 5. the leader killed with `kill -9` while heartbeats continue: time to the first acknowledged write, and
//!    a timeline from the masters' logs (the new leader's learning of the agents, the killed member's restart);
//! 6. elections outside the leader kill (the highest term of the members, polled every 200 ms): the follower
//!    kill of phase 4 is not exempt, as it must not change the leader;
//! 7. throughput: findings/s of 500 single-finding clients beside 32 agents sending 500-finding batches,
//!    with a listing by state from the leader halfway through the batches (then every member's snapshot
//!    builds and log compactions), then 500 new single-finding clients with the heartbeats paused (what
//!    the heartbeats take, beside what the state's size costs);
//! 8. every acknowledged finding checked once on its object at the end (its checker's latest evidence is at
//!    least as new; a burst ERROR also left a transition in the history): the lost count must be 0;
//! 9. every member stopped (SIGTERM) and its `raft.redb` broken down: pages in use against the file's size
//!    (the rest is free pages redb keeps) and its largest tables (`master::raft::storage_usage_of`), then
//!    compacted as `huatuo master --compact` does (`master::raft::compact_data_dir`): sizes and time.
//!
//! Exits non-zero when a phase fails (no leader, registration that does not complete, an unreachable
//! cluster) or when an acknowledged finding is missing. No assertion on time anywhere: the floors of issue
//! 17 are for the reader to compare.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use master::client::{Client, parse_addrs};
use master::cluster::{LocalCluster, READY_TIMEOUT, strip_ansi};
use prost::Message as _;
use proto::api;
use proto::api::master_client::MasterClient;
use proto::datagram::{self, BeatKey, Kind, SeqClock};
use tonic::transport::Channel;

use crate::bench_common::{
    AgentStream, FAILOVER_ATTEMPT, FAILOVER_PAUSE, Fleet, Rng, archive_line, cpu_ticks, dir_bytes,
    latency_summary, metric_value, now_ms, open_quotas, pct, rss_bytes, scrape_metrics, sorted,
};

/// Most simulated agents one run may start (the issue's target fleet).
const MAX_AGENTS: u32 = 100_000;
/// Most HTTP/2 connections per master node (a real fleet has one per agent; this process multiplexes its
/// agents over a few hundred so the figures measure the master rather than this process's sockets).
const MAX_CONNECTIONS: u32 = 256;
/// NICs of every simulated host.
const NICS_PER_HOST: u32 = 2;
/// Fewest objects per host: the machine, the NICs and at least one disk.
const MIN_OBJECTS_PER_HOST: u32 = 1 + NICS_PER_HOST + 1;
/// Most objects per host (one Register call carries them all).
const MAX_OBJECTS_PER_HOST: u32 = 1000;
/// Longest steady phase (a day): a typo should not start a run that never ends.
const MAX_STEADY_SECONDS: u64 = 86_400;
/// Longest throughput phase, each of the two.
const MAX_THROUGHPUT_SECONDS: u64 = 3600;
/// Heartbeat jitter, +- this percentage of the interval (agents do the same).
const JITTER_PCT: u64 = 20;
/// Timeout of one agent call (register, heartbeat, ingest, get): generous, so a slow master shows as
/// latency rather than as errors.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one register / ingest / get before it counts as failed (each follows the leader). With the
/// pauses below an agent keeps trying for about a minute, through a few elections, as a real agent would.
const MAX_CALL_ATTEMPTS: u32 = 12;
/// Pause after the first failed attempt of one call, doubled after each further one up to
/// [`MAX_RETRY_PAUSE`] (a fleet retrying in lockstep would keep an overloaded leader overloaded).
const RETRY_PAUSE: Duration = Duration::from_millis(200);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// Registrations (Register + first heartbeat) in flight at once, over all connections: a fleet announcing
/// itself at once, but bounded so this process does not queue unboundedly on a slow master.
const REGISTER_IN_FLIGHT: u32 = 256;
/// Heartbeats in flight at once on one connection (its agents whose beat is due wait for a slot: that
/// delay is not in the latency figure but shows as a lower achieved rate).
const BEATS_IN_FLIGHT_PER_CONNECTION: usize = 16;
/// How long a heartbeat datagram waits for its answer before the beat goes as a call: what a real agent
/// waits ([`datagram::ANSWER_TIMEOUT`]), so the master sees the fleet's calls after slow answers too.
const DATAGRAM_TIMEOUT: Duration = datagram::ANSWER_TIMEOUT;
/// How long a connection group's datagram receiver pauses after its socket reported an error (an ICMP
/// error queued on it), so a socket in a lasting error does not spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How often idle loops look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Heartbeat samples kept, the newest (100,000 agents at one beat per 10 s for 400 s is 4 million); older
/// ones are dropped as newer come, so a phase reads its own window however long the phases before it took
/// (a 100,000-agent run once recorded its 4 million samples during registration and the listing wait, and
/// printed 0 beats/s for the steady phase).
const MAX_SAMPLES: usize = 4_000_000;
/// Error messages kept for the summary (the rest are counted).
const MAX_ERRORS_KEPT: usize = 10;
/// Disks of the burst (issue 17: 2,000 faulty disks in one minute), at most the disks that exist.
const BURST_DISKS: u64 = 2000;
/// Longest burst; on a shorter steady phase, the burst takes its middle half.
const BURST_WINDOW_MS: u64 = 60_000;
/// Background findings: this fraction of the objects changes per hour (issue 17).
const BACKGROUND_PER_HOUR: f64 = 0.001;
/// Sequential finding reporters in the steady phase; agent i's findings go through reporter i % REPORTERS,
/// one at a time, so each agent's batch sequence numbers are applied in order (one batch in flight per agent,
/// as a real agent's outbox).
const REPORTERS: u32 = 64;
/// Page size the watcher asks for, and most pages one listing follows (100,000 x 1,000 objects is far more
/// than the 1.5 million of the target fleet).
const LIST_PAGE: u32 = 1000;
const MAX_LIST_PAGES: u32 = 100_000;
/// How long the steady phase waits for the watcher to finish its listing and open its watch: a subscriber
/// lists once when it starts and then follows; the burst's lag is measured on a follower, not on a listing
/// still paging through 1.5 M objects (issue 17's 100,000-agent run saw 0 events that way). 1,500 pages
/// take minutes, not tens of minutes.
const LIST_WAIT: Duration = Duration::from_secs(900);
/// Watch streams the watcher opens again after one ends (leader changes end them).
const MAX_WATCH_RECONNECTS: u32 = 100;
/// How long after the steady phase the watcher may take to see the last burst transitions.
const WATCH_DRAIN: Duration = Duration::from_secs(30);
/// How long the reporters may run past the end of the steady phase (a slow master makes them late).
const REPORT_DRAIN: Duration = Duration::from_secs(120);
/// How long a wiped follower may take to catch up before the phase fails.
const CATCHUP_DEADLINE: Duration = Duration::from_secs(600);
/// How long after a leader kill the first acknowledged write may take before the phase fails.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);
/// Term changes within this long after a kill's recovery are the kill's election (a new leader may need
/// one more round when the restarted node comes back).
const KILL_SETTLE: Duration = Duration::from_secs(10);
/// How often every member's term is polled.
const TERM_POLL: Duration = Duration::from_millis(200);
/// How often each master's RSS and CPU ticks are sampled.
const RESOURCE_POLL: Duration = Duration::from_secs(1);
/// Resource samples kept per node (a day at one per second).
const MAX_RESOURCE_SAMPLES: usize = 86_400;
/// Clients of the single-finding throughput phase, and the batched phase's agents and batch size (issue 17).
const SINGLE_CLIENTS: u32 = 500;
const BATCH_AGENTS: u32 = 32;
const BATCH_SIZE: u32 = 500;
/// Disks each throughput client writes to (its own host's, so no two clients race on one object).
const THROUGHPUT_DISKS: u32 = 12;
/// The masters' default `agent_silent_after_ms`: phase 7's measurement with the heartbeats paused must end
/// well before an agent would be marked silent.
const AGENT_SILENT_AFTER_MS: u64 = 30_000;
/// Room left between the longest silence the pause can make and [`AGENT_SILENT_AFTER_MS`] (see
/// [`pause_secs`]).
const PAUSE_MARGIN_MS: u64 = 5_000;
/// Objects checked at once at the end.
const VERIFY_IN_FLIGHT: usize = 64;
/// Checker names of the findings of each phase (the check at the end looks at each one's latest evidence).
const BACKGROUND_CHECKER: &str = "bench-fleet-background";
const BURST_CHECKER: &str = "bench-fleet-burst";
const FAILOVER_CHECKER: &str = "bench-fleet-failover";
const THROUGHPUT_CHECKER: &str = "bench-fleet-throughput";

#[derive(Args, Debug)]
pub struct BenchFleetArgs {
    /// Simulated agents (one host each).
    #[arg(long, default_value_t = 5000)]
    agents: u32,
    /// Objects per host: 1 machine, 2 NICs and the rest disks (15: 12 disks).
    #[arg(long, default_value_t = 15)]
    objects_per_host: u32,
    /// HTTP/2 connections per master node the agents are multiplexed over.
    #[arg(long, default_value_t = 200)]
    connections: u32,
    /// Seconds of the steady phase.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Heartbeat interval of every agent, in seconds (+-20% jitter).
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u64,
    /// Seconds of each throughput measurement (single-finding clients, then batches).
    #[arg(long, default_value_t = 10)]
    throughput_seconds: u64,
    /// Seed of every random choice (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Skip the follower wipe and the leader kill (phases 4 and 5).
    #[arg(long)]
    skip_kills: bool,
    /// Where the masters' data dirs go (default: the temp dir; a run at 100,000 agents needs GiBs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// redb's page cache of every master in MiB (`cache_mb` of the master config; default: the
    /// master's own default), to weigh memory against speed at fleet scale.
    #[arg(long)]
    cache_mb: Option<u64>,
    /// How the agents send their heartbeats: `datagram` (one UDP datagram per beat to the leader's gRPC
    /// port, a call when it is not answered, as agents with heartbeat datagrams do) or `stream` (each
    /// agent's long-lived heartbeat stream, a call when it cannot carry a beat).
    #[arg(long, value_enum, default_value_t = BeatTransport::Datagram)]
    beat_transport: BeatTransport,
    /// Heartbeats as single calls, one HTTP/2 stream each (agents before heartbeat streams and datagrams),
    /// instead of `--beat-transport`.
    #[arg(long, conflicts_with = "beat_transport")]
    beat_calls: bool,
    /// Phase 7's findings as single `Ingest` calls, one HTTP/2 stream each (agents before ingest streams),
    /// instead of over each writer's long-lived `IngestStream`.
    #[arg(long)]
    ingest_calls: bool,
    /// HTTP/2 connections per node for phase 7's writers of their own (0: they share the agents'
    /// connections, and with them each connection's open heartbeat streams).
    #[arg(long, default_value_t = 0)]
    writer_connections: u32,
}

/// How the simulated agents send their heartbeats (`--beat-transport`; `--beat-calls` overrides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BeatTransport {
    /// Each agent's long-lived heartbeat stream (a call when it cannot carry a beat).
    Stream,
    /// One UDP datagram per beat to the leader's gRPC port (a call when it is not answered).
    Datagram,
}

impl BenchFleetArgs {
    fn disks(&self) -> u32 {
        self.objects_per_host - 1 - NICS_PER_HOST
    }

    /// Heartbeats over each agent's stream: `--beat-transport stream` without `--beat-calls`.
    fn beat_streams(&self) -> bool {
        !self.beat_calls && self.beat_transport == BeatTransport::Stream
    }

    /// Heartbeats as datagrams: `--beat-transport datagram` (the default) without `--beat-calls`.
    fn beat_datagrams(&self) -> bool {
        !self.beat_calls && self.beat_transport == BeatTransport::Datagram
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.agents == 0 || self.agents > MAX_AGENTS {
            bail!("--agents must be 1..={MAX_AGENTS}");
        }
        if !(MIN_OBJECTS_PER_HOST..=MAX_OBJECTS_PER_HOST).contains(&self.objects_per_host) {
            bail!("--objects-per-host must be {MIN_OBJECTS_PER_HOST}..={MAX_OBJECTS_PER_HOST}");
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            bail!("--connections must be 1..={MAX_CONNECTIONS}");
        }
        if self.writer_connections > MAX_CONNECTIONS {
            bail!("--writer-connections must be 0..={MAX_CONNECTIONS}");
        }
        if self.steady_seconds == 0 || self.steady_seconds > MAX_STEADY_SECONDS {
            bail!("--steady-seconds must be 1..={MAX_STEADY_SECONDS}");
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 3600 {
            bail!("--heartbeat-secs must be 1..=3600");
        }
        if self.throughput_seconds == 0 || self.throughput_seconds > MAX_THROUGHPUT_SECONDS {
            bail!("--throughput-seconds must be 1..={MAX_THROUGHPUT_SECONDS}");
        }
        if let Some(mb) = self.cache_mb
            && !(8..=65_536).contains(&mb)
        {
            bail!("--cache-mb must be 8..=65536 (the master's cache_mb bounds)");
        }
        if let Some(d) = &self.data_dir
            && !d.is_dir()
        {
            bail!("--data-dir {} is not a directory", d.display());
        }
        Ok(())
    }
}

fn agent_id(i: u32) -> String {
    format!("fleet-agent-{i:06}")
}

fn host(i: u32) -> String {
    format!("fleet-{i:06}")
}

/// Object `k` of host `i`: 0 the machine, 1..=disks the disks, then the NICs.
fn object(i: u32, k: u32, disks: u32) -> String {
    let h = host(i);
    match k {
        0 => format!("machine/{h}"),
        k if k <= disks => format!("disk/{h}/d{}", k - 1),
        k => format!("nic/{h}/eth{}", k - 1 - disks),
    }
}

fn finding(object: String, severity: &str, checker: &str) -> api::Finding {
    api::Finding {
        object,
        severity: severity.into(),
        checker: checker.into(),
        version: "1.0.0".into(),
        rule: format!("{checker}.rule"),
        evidence: format!("huatuo bench fleet: {severity}"),
        readings: Default::default(),
        time_ms: now_ms(),
        shadow: false,
    }
}

/// The agents of connection `conn` out of `conns`: every `conns`-th agent.
fn agents_of(conn: u32, conns: u32, agents: u32) -> Vec<u32> {
    (conn..agents).step_by(conns.max(1) as usize).collect()
}

/// The heartbeat schedule of one connection's agents: a heap of (due ms, agent). Each agent's first beat is
/// spread uniformly over one interval (a fleet's agents start at different times); after a beat the next
/// is one jittered interval after the later of its due time and now, so a master that falls behind sees
/// late beats, never a catch-up storm.
struct Schedule {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    interval_ms: u64,
}

impl Schedule {
    fn new(agents: &[u32], interval_ms: u64, start_ms: u64, rng: &mut Rng) -> Schedule {
        let heap = agents.iter().map(|a| Reverse((start_ms + rng.below(interval_ms), *a))).collect();
        Schedule { heap, interval_ms }
    }

    /// The agent whose beat is due at `now_ms`, rescheduled; None when no beat is due.
    fn pop_due(&mut self, now_ms: u64, rng: &mut Rng) -> Option<u32> {
        let Reverse((due, agent)) = *self.heap.peek()?;
        if due > now_ms {
            return None;
        }
        self.heap.pop();
        let next = due.max(now_ms) + rng.jittered(self.interval_ms, JITTER_PCT).as_millis() as u64;
        self.heap.push(Reverse((next, agent)));
        Some(agent)
    }

    /// Schedule `agent`'s next beat at `due_ms` (an agent that just registered).
    fn add(&mut self, agent: u32, due_ms: u64) {
        self.heap.push(Reverse((due_ms, agent)));
    }

    fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }
}

/// `k` distinct values of `0..n` (all of them when `k >= n`), seeded: a partial Fisher-Yates shuffle over a
/// sparse map, O(k) whatever `n`.
fn sample_distinct(n: u64, k: u64, rng: &mut Rng) -> Vec<u64> {
    let k = k.min(n);
    let mut swapped: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::with_capacity(k as usize);
    for i in 0..k {
        let j = i + rng.below(n - i);
        let vj = *swapped.get(&j).unwrap_or(&j);
        let vi = *swapped.get(&i).unwrap_or(&i);
        swapped.insert(j, vi);
        out.push(vj);
    }
    out
}

/// A finding the steady phase sends, `due_ms` after the phase starts.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    due_ms: u64,
    agent: u32,
    object: String,
    severity: &'static str,
    checker: &'static str,
    /// An ERROR on a GOOD disk: the watcher must see its transition.
    burst: bool,
}

/// The steady phase's findings, sorted by due time: background WARNINGs on machines and NICs (disks are
/// left to the burst, so each burst disk's first transition is its ERROR's) at 0.1% of the objects per
/// hour, at least one; and the burst: ERRORs on up to [`BURST_DISKS`] distinct disks, evenly over the middle
/// of the phase (from a quarter in, for at most a minute or half the phase).
fn plan_findings(agents: u32, disks: u32, steady_ms: u64, rng: &mut Rng) -> Vec<Planned> {
    let objects = f64::from(agents) * f64::from(1 + disks + NICS_PER_HOST);
    let background = (objects * BACKGROUND_PER_HOUR * steady_ms as f64 / 3_600_000.0).ceil().max(1.0) as u64;
    let mut plan = Vec::new();
    for _ in 0..background {
        let agent = rng.below(u64::from(agents)) as u32;
        // The machine or one of the NICs.
        let pick = rng.below(u64::from(1 + NICS_PER_HOST)) as u32;
        let k = if pick == 0 { 0 } else { disks + pick };
        plan.push(Planned {
            due_ms: rng.below(steady_ms),
            agent,
            object: object(agent, k, disks),
            severity: "WARNING",
            checker: BACKGROUND_CHECKER,
            burst: false,
        });
    }
    let all_disks = u64::from(agents) * u64::from(disks);
    let burst = sample_distinct(all_disks, BURST_DISKS, rng);
    let start = steady_ms / 4;
    let window = BURST_WINDOW_MS.min(steady_ms / 2);
    let n = burst.len() as u64;
    for (j, d) in burst.into_iter().enumerate() {
        let agent = (d / u64::from(disks)) as u32;
        let disk = (d % u64::from(disks)) as u32;
        plan.push(Planned {
            due_ms: start + j as u64 * window / n.max(1),
            agent,
            object: object(agent, 1 + disk, disks),
            severity: "ERROR",
            checker: BURST_CHECKER,
            burst: true,
        });
    }
    plan.sort_by_key(|p| p.due_ms);
    plan
}

/// An acknowledged finding (checked on its object at the end).
#[derive(Debug, Clone)]
struct Acked {
    object: String,
    checker: &'static str,
    time_ms: u64,
    burst: bool,
    at: Instant,
}

/// What the simulated fleet shares.
struct Run {
    fleet: Fleet,
    origin: Instant,
    started_ms: u64,
    beats: Mutex<Samples>,
    errors: AtomicU64,
    /// (seconds since the origin when sent, 0) of the newest failed heartbeats (transport errors, timeouts,
    /// NOT_LEADER), for the failover's per-second breakdown.
    beat_errors: Mutex<Samples>,
    /// Heartbeat answers that carried an assignment (the hash an agent echoed was not the current one).
    assignments: AtomicU64,
    /// Heartbeats go over each agent's stream (`--beat-transport stream`, not `--beat-calls`); beats
    /// answered on one, streams opened.
    streams: bool,
    streamed: AtomicU64,
    streams_opened: AtomicU64,
    /// Heartbeats go as datagrams (`--beat-transport datagram`, not `--beat-calls`): where to and sealed how.
    datagrams: Option<BeatTargets>,
    /// Beats answered by a datagram; beats sent as a call after a datagram was tried (NOT_LEADER, another
    /// code, no answer, a datagram that could not be sent); of those, datagrams with no answer in
    /// [`DATAGRAM_TIMEOUT`].
    datagrams_answered: AtomicU64,
    /// Of them, sealed with the agent's own key (a master handed it one: clusters at command version 12),
    /// as a real agent's; the others with the open key.
    datagrams_own_key: AtomicU64,
    /// Each agent's own datagram key (id, bytes), from the first answer to one of its calls that carries one.
    agent_keys: Vec<std::sync::OnceLock<(u64, [u8; 32])>>,
    datagrams_fell_back: AtomicU64,
    datagrams_unanswered: AtomicU64,
    /// Phase 7's writers send over their own ingest stream (not `--ingest-calls`); batches answered on
    /// one, streams opened.
    ingest_streams: bool,
    writes_streamed: AtomicU64,
    write_streams_opened: AtomicU64,
    kept: Mutex<Vec<String>>,
    stop_beats: AtomicBool,
    /// Phase 7's last measurement: beats that fall due are rescheduled without being sent.
    pause_beats: AtomicBool,
    beats_skipped: AtomicU64,
    /// The longest any agent went between two beats sent (from its registration on), in ms: the masters
    /// mark an agent silent after [`AGENT_SILENT_AFTER_MS`].
    longest_gap_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Run {
    fn secs(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kept = lock(&self.kept);
        if kept.len() < MAX_ERRORS_KEPT {
            kept.push(what);
        }
    }

    /// Agent `i`'s heartbeat, echoing the assignment hash it holds (empty: none yet), as a real agent does:
    /// the master then sends the assignment only when it changed.
    fn heartbeat(&self, i: u32, held: String) -> api::HeartbeatRequest {
        api::HeartbeatRequest {
            agent: agent_id(i),
            host: host(i),
            version: env!("CARGO_PKG_VERSION").into(),
            started_ms: self.started_ms,
            assignment_hash: held,
            beat_key_id: self.agent_keys.get(i as usize).and_then(|k| k.get()).map_or(0, |(id, _)| *id),
            ..Default::default()
        }
    }

    /// One agent call through connection `k` to the node believed to lead, following NOT_LEADER, at most
    /// [`MAX_CALL_ATTEMPTS`] attempts. Returns the answer and the attempts it took.
    async fn call<T, F, Fut>(&self, k: usize, f: F) -> Result<(T, u32), String>
    where
        F: Fn(MasterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        call_via(&self.fleet, k, f).await
    }

    /// Keep agent `i`'s own datagram key from a call's or stream's answer that carries one.
    fn take_key(&self, i: u32, r: &api::HeartbeatResponse) {
        if let (Some(slot), Ok(key)) =
            (self.agent_keys.get(i as usize), <[u8; 32]>::try_from(&r.beat_key[..]))
        {
            slot.get_or_init(|| (r.beat_key_id, key));
        }
    }

    /// Agent `i`'s own datagram key, once a master handed it one.
    fn agent_key(&self, i: u32) -> Option<BeatKey> {
        let (id, key) = self.agent_keys.get(i as usize)?.get()?;
        BeatKey::from_agent_key(*id, key)
    }

    /// Heartbeat samples sent in `[from, to)` seconds since the origin.
    fn beats_between(&self, from: f64, to: f64) -> Vec<f64> {
        lock(&self.beats).between(from, to)
    }

    /// Beats answered other than by a call so far (on streams or by datagrams: one of the two is 0).
    fn beats_off_calls(&self) -> u64 {
        self.streamed.load(Ordering::Relaxed) + self.datagrams_answered.load(Ordering::Relaxed)
    }

    /// How [`Run::beats_off_calls`] were answered, for the phase lines.
    fn answered_how(&self) -> &'static str {
        if self.datagrams.is_some() { "by datagrams" } else { "on streams" }
    }

    /// The phase 2 line's account of the heartbeat transport.
    fn transport_line(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        if self.datagrams.is_some() {
            return format!(
                "a datagram per beat (a call when one is not answered); {} beats answered by datagrams ({} sealed \
                 with the agent's own key), {} sent as calls after a datagram ({} unanswered in {} ms) since the \
                 start",
                n(&self.datagrams_answered),
                n(&self.datagrams_own_key),
                n(&self.datagrams_fell_back),
                n(&self.datagrams_unanswered),
                DATAGRAM_TIMEOUT.as_millis()
            );
        }
        format!(
            "{}; {} beats answered on streams, {} streams opened since the start",
            if self.streams {
                "a stream per agent (calls when it cannot carry a beat)"
            } else {
                "single calls"
            },
            n(&self.streamed),
            n(&self.streams_opened)
        )
    }
}

/// Where heartbeat datagrams go: each master node's gRPC address as a UDP address (the same indexes as
/// [`Fleet::nodes`], resolved once), and the key that seals them ([`BeatKey::open`]: the benchmark's
/// cluster runs `--insecure`).
struct BeatTargets {
    addrs: Vec<SocketAddr>,
    key: BeatKey,
}

impl BeatTargets {
    async fn resolve(nodes: &[String], key: BeatKey) -> anyhow::Result<BeatTargets> {
        let mut addrs = Vec::with_capacity(nodes.len());
        for n in nodes {
            let addr = tokio::net::lookup_host(n.as_str())
                .await
                .with_context(|| format!("resolve {n} for heartbeat datagrams"))?
                .next()
                .with_context(|| format!("{n} resolves to no address"))?;
            addrs.push(addr);
        }
        Ok(BeatTargets { addrs, key })
    }
}

/// Why a heartbeat datagram did not answer its beat (the beat then goes as a call).
#[derive(Debug, PartialEq)]
enum Miss {
    /// No answer within the time allowed.
    Silent,
    /// NOT_LEADER, with the leader's gRPC address when the member named one.
    NotLeader(Option<String>),
    /// Any other code, an answer without a response, or a datagram that could not be sealed or sent.
    Other,
}

/// Beats of one group waiting for their answer, by seq, with the key that opens the answer.
type PendingBeats = Mutex<HashMap<u64, (tokio::sync::oneshot::Sender<api::BeatReply>, BeatKey)>>;

/// One connection group's heartbeat datagrams: one UDP socket all its agents share, one seq clock (strictly
/// increasing for the group, so for each of its agents) and the beats awaiting an answer, by seq. A receiver
/// task reads the socket, opens each datagram with the key and hands a reply to the beat waiting for its
/// seq; a reply no beat waits for (late: its beat timed out and went as a call; or a duplicate) is dropped.
/// The map holds at most the group's beats in flight ([`BEATS_IN_FLIGHT_PER_CONNECTION`]): a beat's entry
/// goes when it is answered, times out or is dropped.
struct BeatSocket {
    socket: Arc<tokio::net::UdpSocket>,
    key: BeatKey,
    seqs: Mutex<SeqClock>,
    pending: Arc<PendingBeats>,
    receiver: tokio::task::AbortHandle,
}

impl Drop for BeatSocket {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Removes a beat's entry from its group's pending map however its wait ends.
struct PendingEntry<'a> {
    pending: &'a PendingBeats,
    seq: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.seq);
    }
}

impl BeatSocket {
    /// A socket on any local address of `target`'s family (port 0), and its receiver task.
    async fn bind(target: SocketAddr, key: BeatKey) -> std::io::Result<BeatSocket> {
        let local: SocketAddr = if target.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = Arc::new(tokio::net::UdpSocket::bind(local).await?);
        let pending = Arc::new(PendingBeats::default());
        let receiver = tokio::spawn(receive_replies(socket.clone(), pending.clone()));
        Ok(BeatSocket {
            socket,
            key,
            seqs: Mutex::new(SeqClock::default()),
            pending,
            receiver: receiver.abort_handle(),
        })
    }

    /// Send `req` as one datagram to `to`, sealed with `own` (the agent's own key) or else the group's key,
    /// and wait at most `limit` for its answer: the response, or why it must go as a call.
    async fn exchange(
        &self,
        to: SocketAddr,
        req: &api::HeartbeatRequest,
        limit: Duration,
        own: Option<BeatKey>,
    ) -> Result<api::HeartbeatResponse, Miss> {
        let seq = lock(&self.seqs).next();
        let key = own.unwrap_or_else(|| self.key.clone());
        let mut out = Vec::new();
        datagram::seal(&key, Kind::Beat, seq, req, &mut out).map_err(|_| Miss::Other)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.pending).insert(seq, (tx, key));
        let _entry = PendingEntry { pending: &self.pending, seq };
        self.socket.send_to(&out, to).await.map_err(|_| Miss::Other)?;
        let reply = match tokio::time::timeout(limit, rx).await {
            Ok(Ok(reply)) => reply,
            // The receiver task is gone (the group is stopping).
            Ok(Err(_)) => return Err(Miss::Other),
            Err(_) => return Err(Miss::Silent),
        };
        match (reply.code.as_str(), reply.response) {
            ("", Some(r)) => Ok(r),
            ("NOT_LEADER", _) => Err(Miss::NotLeader(Some(reply.leader).filter(|l| !l.is_empty()))),
            _ => Err(Miss::Other),
        }
    }
}

/// The receiver of one group's [`BeatSocket`]: every reply to a beat still waiting, sealed with that beat's
/// key, goes to it; anything else (not ours, another key, a late reply) is dropped. Runs until the socket
/// is dropped (aborted).
async fn receive_replies(socket: Arc<tokio::net::UdpSocket>, pending: Arc<PendingBeats>) {
    let mut buf = vec![0u8; datagram::MAX_DATAGRAM + 1];
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(_) => {
                tokio::time::sleep(RECV_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(seq) = datagram::seq_of(&buf[..n]) else { continue };
        let Some(key) = lock(&pending).get(&seq).map(|(_, k)| k.clone()) else { continue };
        let Ok(o) = datagram::open(&buf[..n], &key) else { continue };
        if o.kind != Kind::Reply {
            continue;
        }
        let Some((tx, _)) = lock(&pending).remove(&o.seq) else { continue };
        // A reply that does not decode sends its beat as a call, as any code but "" does.
        let reply = api::BeatReply::decode(o.payload).unwrap_or_else(|e| api::BeatReply {
            code: "UNDECODABLE".into(),
            message: e.to_string(),
            ..Default::default()
        });
        // The beat stopped waiting in between: nothing to hand it to.
        tx.send(reply).ok();
    }
}

/// One call through connection `k` of `fleet` to the node it believes leads, following NOT_LEADER, at most
/// [`MAX_CALL_ATTEMPTS`] attempts. Returns the answer and the attempts it took.
async fn call_via<T, F, Fut>(fleet: &Fleet, k: usize, f: F) -> Result<(T, u32), String>
where
    F: Fn(MasterClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last = String::new();
    for attempt in 1..=MAX_CALL_ATTEMPTS {
        let (node, c) = fleet.client(k);
        match tokio::time::timeout(CALL_TIMEOUT, f(c)).await {
            Ok(Ok(r)) => return Ok((r.into_inner(), attempt)),
            Ok(Err(s)) => {
                fleet.not_leader(node, &s);
                last = format!("{:?}: {}", s.code(), s.message());
            }
            Err(_) => last = format!("timed out after {CALL_TIMEOUT:?}"),
        }
        if attempt < MAX_CALL_ATTEMPTS {
            tokio::time::sleep(retry_pause(attempt)).await;
        }
    }
    Err(format!("{MAX_CALL_ATTEMPTS} attempts: {last}"))
}

/// (seconds since the origin when sent, latency ms) of the newest `cap` acknowledged heartbeats, oldest
/// first, and how many were acknowledged and dropped (the oldest, to stay within the bound).
struct Samples {
    kept: VecDeque<(f64, f64)>,
    cap: usize,
    acked: u64,
    dropped: u64,
}

impl Samples {
    fn new(cap: usize) -> Self {
        Samples { kept: VecDeque::new(), cap, acked: 0, dropped: 0 }
    }

    fn push(&mut self, sent: f64, latency_ms: f64) {
        self.acked += 1;
        if self.kept.len() >= self.cap {
            self.kept.pop_front();
            self.dropped += 1;
        }
        self.kept.push_back((sent, latency_ms));
    }

    /// Latencies of the samples sent in `[from, to)`.
    fn between(&self, from: f64, to: f64) -> Vec<f64> {
        self.kept.iter().filter(|(s, _)| *s >= from && *s < to).map(|x| x.1).collect()
    }
}

/// The pause after failed attempt `attempt` (1-based): [`RETRY_PAUSE`] doubled per attempt, at most
/// [`MAX_RETRY_PAUSE`].
fn retry_pause(attempt: u32) -> Duration {
    RETRY_PAUSE.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_RETRY_PAUSE)
}

/// Register host `i` with its objects, then its first heartbeat; returns the latency of both in ms and the
/// assignment hash the agent now holds.
async fn register_host(run: &Run, conn: usize, i: u32, disks: u32) -> Result<(f64, String), String> {
    let t = Instant::now();
    let h = host(i);
    let objects = (0..1 + disks + NICS_PER_HOST)
        .map(|k| api::RegisteredObject {
            id: object(i, k, disks),
            attributes: Default::default(),
            labels: [("rack".to_string(), format!("r{:03}", i % 500)), ("pool".into(), "fleet".into())]
                .into_iter()
                .collect(),
        })
        .collect();
    let req = api::RegisterRequest { agent: agent_id(i), host: h, objects };
    run.call(conn, |mut c| {
        let r = req.clone();
        async move { c.register(r).await }
    })
    .await
    .map_err(|e| format!("register {}: {e}", host(i)))?;
    let hb = run.heartbeat(i, String::new());
    let (resp, _) = run
        .call(conn, |mut c| {
            let r = hb.clone();
            async move { c.heartbeat(r).await }
        })
        .await
        .map_err(|e| format!("first heartbeat of {}: {e}", agent_id(i)))?;
    run.take_key(i, &resp);
    Ok((t.elapsed().as_secs_f64() * 1000.0, resp.assignment_hash))
}

/// A simulated agent's open heartbeat stream (`HeartbeatStream`), as a real agent keeps one
/// (`proto::client::BeatStream`), to the node it was opened on.
type BeatStream = AgentStream<api::HeartbeatRequest, api::HeartbeatResponse>;
/// A phase 7 writer's open ingest stream (`IngestStream`, as `proto::client::IngestStream`).
type WriteStream = AgentStream<api::IngestRequest, api::IngestResponse>;

/// Open a stream with `open` on connection `conn` of `fleet` to the node it believes leads, counting it in
/// `opened`; a refusal moves the fleet as a call's does.
async fn open_stream<Q, A, F, Fut>(
    fleet: &Fleet,
    conn: usize,
    opened: &AtomicU64,
    open: F,
) -> Option<AgentStream<Q, A>>
where
    F: FnOnce(MasterClient<Channel>, tokio_stream::wrappers::ReceiverStream<Q>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<A>>, tonic::Status>>,
{
    let (node, c) = fleet.client(conn);
    match AgentStream::open(node, c, CALL_TIMEOUT, open).await? {
        Ok(st) => {
            opened.fetch_add(1, Ordering::Relaxed);
            Some(st)
        }
        Err(s) => {
            fleet.not_leader(node, &s);
            None
        }
    }
}

/// One request over `stream`, if open: its answer, or `None` when the stream could not carry it (then it is
/// dropped, and a refusal moves the fleet as a call's does): the caller sends the request as a call.
async fn over_stream<Q, A>(fleet: &Fleet, stream: &mut Option<AgentStream<Q, A>>, req: Q) -> Option<A> {
    let st = stream.as_mut()?;
    let node = st.node;
    match st.exchange(req, CALL_TIMEOUT).await {
        Ok(Some(r)) => return Some(r),
        Ok(None) => {}
        Err(s) => fleet.not_leader(node, &s),
    }
    *stream = None;
    None
}

/// One heartbeat of agent `i` over connection `conn` holding assignment hash `held` (no retry: the next one
/// is due an interval later): as a datagram on its group's socket `udp` (`--beat-transport datagram`), or
/// over the agent's stream (`stream`: opened if it has none), and as one call when neither answers it, as a
/// real agent does. Returns the agent, the hash it holds after it when it was answered, and its stream if
/// still open.
async fn beat(
    run: Arc<Run>,
    conn: usize,
    i: u32,
    held: String,
    stream: Option<BeatStream>,
    udp: Option<Arc<BeatSocket>>,
) -> (u32, Option<String>, Option<BeatStream>) {
    let sent = run.secs();
    let t = Instant::now();
    let req = run.heartbeat(i, held);
    if let (Some(udp), Some(targets)) = (&udp, &run.datagrams) {
        // To the node the fleet believes leads; anything but an answer sends this beat as a call, and
        // NOT_LEADER moves the fleet first, as a call's does.
        let node = run.fleet.leader_node();
        let own = run.agent_key(i);
        let own_key = own.is_some();
        let got = match targets.addrs.get(node) {
            Some(to) => udp.exchange(*to, &req, DATAGRAM_TIMEOUT, own).await,
            None => Err(Miss::Other),
        };
        match got {
            Ok(r) => {
                lock(&run.beats).push(sent, t.elapsed().as_secs_f64() * 1000.0);
                run.datagrams_answered.fetch_add(1, Ordering::Relaxed);
                if own_key {
                    run.datagrams_own_key.fetch_add(1, Ordering::Relaxed);
                }
                if r.assignment_included {
                    run.assignments.fetch_add(1, Ordering::Relaxed);
                }
                return (i, Some(r.assignment_hash), stream);
            }
            Err(miss) => {
                run.datagrams_fell_back.fetch_add(1, Ordering::Relaxed);
                match miss {
                    Miss::Silent => {
                        run.datagrams_unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                    Miss::NotLeader(leader) => {
                        run.fleet.not_leader(node, &proto::error::ApiError::not_leader(leader).into());
                    }
                    Miss::Other => {}
                }
            }
        }
    }
    // A stream to a node the fleet no longer believes leads is dropped (its master ends it too).
    let mut stream = stream.filter(|s| s.node == run.fleet.leader_node());
    if stream.is_none() && run.streams {
        stream = open_stream(&run.fleet, conn, &run.streams_opened, |mut c, rx| async move {
            c.heartbeat_stream(rx).await
        })
        .await;
    }
    // Ended, refused or timed out: this beat goes as a call; the next one opens a new stream.
    if let Some(r) = over_stream(&run.fleet, &mut stream, req.clone()).await {
        lock(&run.beats).push(sent, t.elapsed().as_secs_f64() * 1000.0);
        run.streamed.fetch_add(1, Ordering::Relaxed);
        run.take_key(i, &r);
        if r.assignment_included {
            run.assignments.fetch_add(1, Ordering::Relaxed);
        }
        return (i, Some(r.assignment_hash), stream);
    }
    let (node, mut c) = run.fleet.client(conn);
    match tokio::time::timeout(CALL_TIMEOUT, c.heartbeat(req)).await {
        Ok(Ok(r)) => {
            let lat = t.elapsed().as_secs_f64() * 1000.0;
            lock(&run.beats).push(sent, lat);
            let r = r.into_inner();
            run.take_key(i, &r);
            if r.assignment_included {
                run.assignments.fetch_add(1, Ordering::Relaxed);
            }
            return (i, Some(r.assignment_hash), stream);
        }
        Ok(Err(s)) => {
            run.fleet.not_leader(node, &s);
            lock(&run.beat_errors).push(sent, 0.0);
            run.error(format!("heartbeat {}: {:?}: {}", agent_id(i), s.code(), s.message()));
        }
        Err(_) => {
            lock(&run.beat_errors).push(sent, 0.0);
            run.error(format!("heartbeat {}: timed out after {CALL_TIMEOUT:?}", agent_id(i)))
        }
    }
    (i, None, stream)
}

/// Each member's data dir: its size and its three largest top-level entries (the Raft/state database, the
/// snapshots, the archive), so a large one says what it holds.
fn data_dirs(cluster: &LocalCluster) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let mut out = Vec::new();
    for id in cluster.nodes.keys() {
        let dir = cluster.data_dir(*id);
        let mut parts: Vec<(u64, String)> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .take(1000)
                    .map(|e| {
                        (dir_bytes(&e.path()).unwrap_or(0), e.file_name().to_string_lossy().into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        parts.sort_by(|a, b| b.cmp(a));
        let top: Vec<String> = parts.iter().take(3).map(|(b, n)| format!("{n} {}", mib(*b))).collect();
        out.push(format!("node {id} {} [{}]", mib(parts.iter().map(|p| p.0).sum()), top.join(", ")));
    }
    out.join("; ")
}

/// Milliseconds from `from_ms` (Unix time) to the time of day a master's log line starts with
/// (`2026-12-04T05:43:11.218049Z ...`, UTC, colour codes removed); the date is ignored and the difference
/// taken within half a day either way, so lines of the same run compare across midnight. `None` for a line
/// without such a time.
fn log_ms_after(line: &str, from_ms: u64) -> Option<i64> {
    let t = line.get(11..26)?;
    if line.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<u64>().ok();
    let (h, m, sec, micros) = (num(0..2)?, num(3..5)?, num(6..8)?, num(9..15)?);
    if t.as_bytes()[2] != b':' || t.as_bytes()[5] != b':' || t.as_bytes()[8] != b'.' {
        return None;
    }
    const DAY: i64 = 86_400_000;
    let of_day = ((h * 3600 + m * 60 + sec) * 1000 + micros / 1000) as i64;
    let diff = (of_day - (from_ms % DAY as u64) as i64).rem_euclid(DAY);
    Some(if diff >= DAY / 2 { diff - DAY } else { diff })
}

/// The last line of `log` containing `what`, as milliseconds after `from_ms` (see [`log_ms_after`]).
fn last_log_ms(log: &str, what: &str, from_ms: u64) -> Option<i64> {
    log.lines().rev().map(strip_ansi).find(|l| l.contains(what)).and_then(|l| log_ms_after(&l, from_ms))
}

/// When, after the leader kill, the new leader finished learning the agents and the restarted member
/// started, passed its start-up checks and served: read from their logs, so slow beats after a failover
/// can be set against what the machine was doing (the members share its cores).
fn print_failover_timeline(
    cluster: &LocalCluster,
    killed_ms: u64,
    respawned_ms: u64,
    new_leader: u64,
    restarted: u64,
) {
    let read = |id| std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
    let (lead, back) = (read(new_leader), read(restarted));
    let show = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |ms| format!("{ms}"));
    // A member restored from a snapshot builds its indexes again (a pass over every object): when it leads
    // soon after, when they were installed matters.
    let built = |name: &str| {
        let line = lead.lines().rev().map(strip_ansi).find(|l| l.contains("index built") && l.contains(name));
        show(line.and_then(|l| log_ms_after(&l, killed_ms)))
    };
    println!(
        "phase 5 timeline (ms after the kill): node {new_leader} learned the agents at {}, last built its order \
         index at {} and its deadline index at {}; node {restarted} restarted at {}, checked its tables at {}, \
         served at {}",
        show(last_log_ms(&lead, "leader learned the agents", killed_ms)),
        built("\"orders\""),
        built("\"deadlines\""),
        respawned_ms.saturating_sub(killed_ms),
        show(last_log_ms(&back, "state machine tables verified", killed_ms)),
        show(last_log_ms(&back, "master node started", killed_ms)),
    );
}

/// Waits until member `id`'s heartbeat order and deadline indexes (its `/metrics` gauges
/// `huatuo_master_{order,deadline}_index_revision`; 0: not built) reached the revision the leader's order
/// index stands at now: a member restored from a snapshot builds them again, a pass over every object.
/// Polled every 200 ms until `deadline`.
async fn wait_indexes_built(cluster: &LocalCluster, id: u64, leader: u64, deadline: Duration) -> bool {
    let gauge = |m: &str, name: &str| metric_value(m, &format!("huatuo_master_{name}_index_revision"));
    let target = match cluster.nodes.get(&leader) {
        Some(n) => scrape_metrics(&n.http).await.map(|m| gauge(&m, "order")).unwrap_or(0),
        None => 0,
    };
    let Some(node) = cluster.nodes.get(&id) else { return false };
    let start = Instant::now();
    loop {
        if let Ok(m) = scrape_metrics(&node.http).await {
            let (order, deadlines) = (gauge(&m, "order"), gauge(&m, "deadline"));
            if order > 0 && deadlines > 0 && order >= target && deadlines >= target {
                return true;
            }
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often member `id` answered from an index that was not built or still catching up (its `/metrics`).
async fn index_answers_line(cluster: &LocalCluster, id: u64) -> String {
    let Some(n) = cluster.nodes.get(&id) else { return "-".into() };
    match scrape_metrics(&n.http).await {
        Ok(m) => {
            let v = |name: &str| metric_value(&m, &format!("huatuo_master_{name}_total"));
            format!(
                "order index answers unbuilt {}, behind {}; deadline index answers unbuilt {}, behind {}",
                v("order_index_unbuilt_answers"),
                v("order_index_behind_answers"),
                v("deadline_index_unbuilt_answers"),
                v("deadline_index_behind_answers")
            )
        }
        Err(e) => format!("/metrics unreadable ({e:#})"),
    }
}

/// Seconds after a kill broken down one by one (then the rest of the window as one row).
const FAILOVER_ROWS: usize = 20;

/// One row of the failover breakdown: heartbeats sent in `[from, to)` seconds after the kill.
#[derive(Debug, PartialEq)]
struct FailoverRow {
    from: f64,
    to: f64,
    acked: usize,
    p50: f64,
    p99: f64,
    max: f64,
    errors: usize,
}

/// The heartbeats of a failover window `[start, end)` (seconds since the origin) by the second they were sent
/// after the kill: [`FAILOVER_ROWS`] rows of one second, then one row for the rest (when any).
fn failover_rows(beats: &[(f64, f64)], errors: &[f64], start: f64, end: f64) -> Vec<FailoverRow> {
    let mut bounds: Vec<(f64, f64)> =
        (0..FAILOVER_ROWS).map(|k| (k as f64, k as f64 + 1.0)).filter(|(a, _)| start + a < end).collect();
    if start + FAILOVER_ROWS as f64 <= end {
        bounds.push((FAILOVER_ROWS as f64, end - start));
    }
    bounds
        .into_iter()
        .map(|(a, b)| {
            let (from, to) = (start + a, (start + b).min(end));
            let lat = crate::bench_common::sorted(
                beats.iter().filter(|(t, _)| *t >= from && *t < to).map(|x| x.1).collect(),
            );
            FailoverRow {
                from: a,
                to: b.min(end - start),
                acked: lat.len(),
                p50: crate::bench_common::pct(&lat, 0.5),
                p99: crate::bench_common::pct(&lat, 0.99),
                max: lat.last().copied().unwrap_or(f64::NAN),
                errors: errors.iter().filter(|t| **t >= from && **t < to).count(),
            }
        })
        .collect()
}

fn print_failover_rows(run: &Run, start: f64, end: f64) {
    let beats: Vec<(f64, f64)> = lock(&run.beats).kept.iter().copied().collect();
    let errors: Vec<f64> = lock(&run.beat_errors).kept.iter().map(|x| x.0).collect();
    println!(
        "phase 5 heartbeats by when they were sent after the kill (s: acked, p50 / p99 / max ms, errors):"
    );
    for r in failover_rows(&beats, &errors, start, end) {
        println!(
            "  {:>5.1}-{:<5.1} {:>7} {:>8.1} / {:>8.1} / {:>8.1} {:>7}",
            r.from, r.to, r.acked, r.p50, r.p99, r.max, r.errors
        );
    }
}

/// Registration results of one connection's agents: per-host latencies (ms) and failures.
type Registered = (Vec<f64>, Vec<String>);

/// The task of one connection: registers its agents (Register + first heartbeat, `reg_in_flight` at a
/// time) and from each agent's registration on runs its heartbeat schedule (as a real agent heartbeats from
/// the moment it registered, however long the rest of the fleet takes), at most
/// [`BEATS_IN_FLIGHT_PER_CONNECTION`] heartbeats in flight, until `stop_beats`. Sends the registration
/// results on `done` once every agent of the connection has registered or failed.
async fn drive(
    run: Arc<Run>,
    conn: u32,
    agents: Vec<u32>,
    (interval_ms, disks, reg_in_flight): (u64, u32, usize),
    mut rng: Rng,
    done: tokio::sync::oneshot::Sender<Registered>,
) {
    let ms = |run: &Run| run.origin.elapsed().as_millis() as u64;
    let mut sched = Schedule::new(&[], interval_ms, 0, &mut rng);
    let mut to_register = agents.into_iter();
    let mut regs = FuturesUnordered::new();
    let (mut lat, mut failed) = (Vec::new(), Vec::new());
    let mut done = Some(done);
    let mut inflight = FuturesUnordered::new();
    // The assignment hash each agent of this connection holds (the last one a master answered).
    let mut held: HashMap<u32, String> = HashMap::new();
    // The heartbeat stream each agent of this connection keeps open (none while one of its beats is out).
    let mut streams: HashMap<u32, BeatStream> = HashMap::new();
    // The socket this connection's agents send their heartbeat datagrams on (with datagrams); without one
    // (it could not be bound) they beat with calls.
    let udp = match run.datagrams.as_ref().and_then(|t| Some((*t.addrs.first()?, t.key.clone()))) {
        Some((to, key)) => match BeatSocket::bind(to, key).await {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                run.error(format!("heartbeat datagrams of connection {conn}: bind: {e}"));
                None
            }
        },
        None => None,
    };
    // When each agent of this connection last sent a beat (its registration's first one included).
    let mut last_sent: HashMap<u32, u64> = HashMap::new();
    while !run.stop_beats.load(Ordering::Relaxed) {
        while regs.len() < reg_in_flight {
            let Some(i) = to_register.next() else { break };
            let run = run.clone();
            regs.push(async move { (i, register_host(&run, conn as usize, i, disks).await) });
        }
        if regs.is_empty()
            && let Some(d) = done.take()
        {
            // The receiver gone means the benchmark is stopping: nothing to report to.
            d.send((std::mem::take(&mut lat), std::mem::take(&mut failed))).ok();
        }
        let now = ms(&run);
        let paused = run.pause_beats.load(Ordering::Relaxed);
        while inflight.len() < BEATS_IN_FLIGHT_PER_CONNECTION {
            match sched.pop_due(now, &mut rng) {
                // Skipped, not postponed: when the pause ends the fleet goes on at its rate, no catch-up.
                Some(_) if paused => {
                    run.beats_skipped.fetch_add(1, Ordering::Relaxed);
                }
                Some(i) => {
                    if let Some(prev) = last_sent.insert(i, now) {
                        run.longest_gap_ms.fetch_max(now.saturating_sub(prev), Ordering::Relaxed);
                    }
                    inflight.push(beat(
                        run.clone(),
                        conn as usize,
                        i,
                        held.get(&i).cloned().unwrap_or_default(),
                        streams.remove(&i),
                        udp.clone(),
                    ));
                }
                None => break,
            }
        }
        let wait = if inflight.len() >= BEATS_IN_FLIGHT_PER_CONNECTION {
            STOP_POLL
        } else {
            let due = sched.next_due().unwrap_or(now + STOP_POLL.as_millis() as u64);
            Duration::from_millis(due.saturating_sub(now)).min(STOP_POLL)
        };
        tokio::select! {
            Some((i, r)) = regs.next(), if !regs.is_empty() => match r {
                Ok((ms_taken, hash)) => {
                    lat.push(ms_taken);
                    held.insert(i, hash);
                    last_sent.insert(i, ms(&run));
                    // Its first heartbeat was part of the registration: the next is an interval later.
                    sched.add(i, ms(&run) + rng.jittered(interval_ms, JITTER_PCT).as_millis() as u64);
                }
                Err(e) => failed.push(e),
            },
            Some((i, hash, stream)) = inflight.next(), if !inflight.is_empty() => {
                if let Some(hash) = hash {
                    held.insert(i, hash);
                }
                if let Some(st) = stream {
                    streams.insert(i, st);
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Each call in flight ends within its own timeout.
    while inflight.next().await.is_some() {}
}

/// Send one reporter's planned findings in order, each at its due time, as its agent (per-agent sequence
/// numbers from 1). Returns the acknowledged ones and how many were not acknowledged.
async fn report(
    run: Arc<Run>,
    r: u32,
    plan: Vec<Planned>,
    start: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> (Vec<Acked>, u64) {
    let mut seqs: HashMap<u32, u64> = HashMap::new();
    let mut acked = Vec::new();
    let mut missed = 0u64;
    for p in plan {
        let due = start + Duration::from_millis(p.due_ms);
        if due > deadline {
            missed += 1;
            continue;
        }
        tokio::time::sleep_until(due).await;
        let seq = seqs.entry(p.agent).or_insert(0);
        *seq += 1;
        let f = finding(p.object.clone(), p.severity, p.checker);
        let time_ms = f.time_ms;
        let req = api::IngestRequest { agent: agent_id(p.agent), seq: *seq, findings: vec![f], epoch: 0 };
        let got = run
            .call(r as usize, |mut c| {
                let q = req.clone();
                async move { c.ingest(q).await }
            })
            .await;
        match got {
            // A duplicate on a retry: an earlier attempt of this very batch was applied.
            Ok((resp, attempts)) if resp.applied == 1 || (resp.duplicate && attempts > 1) => {
                acked.push(Acked {
                    object: p.object,
                    checker: p.checker,
                    time_ms,
                    burst: p.burst,
                    at: Instant::now(),
                })
            }
            Ok((resp, _)) => {
                missed += 1;
                run.error(format!(
                    "ingest {}: applied {} duplicate {}",
                    p.object, resp.applied, resp.duplicate
                ));
            }
            Err(e) => {
                missed += 1;
                run.error(format!("ingest {}: {e}", p.object));
            }
        }
    }
    (acked, missed)
}

/// Every page of one listing from `node`, linearizable: (objects, pages, seconds), or why it failed.
async fn timed_listing(node: &str, req: api::ListObjectsRequest) -> anyhow::Result<(u64, u64, f64)> {
    let mut client = Client::new(parse_addrs(node));
    client.call_timeout = CALL_TIMEOUT * 3;
    let (mut objects, mut pages, mut token) = (0u64, 0u64, String::new());
    let t = Instant::now();
    while pages < u64::from(MAX_LIST_PAGES) {
        let req = api::ListObjectsRequest { page_token: token.clone(), ..req.clone() };
        let r = client.call(req, |mut c, r| async move { c.list_objects(r).await }).await?;
        objects += r.objects.len() as u64;
        pages += 1;
        if r.next_page_token.is_empty() {
            return Ok((objects, pages, t.elapsed().as_secs_f64()));
        }
        token = r.next_page_token;
    }
    bail!("the listing did not end within {MAX_LIST_PAGES} pages")
}

fn listing_line(r: anyhow::Result<(u64, u64, f64)>) -> String {
    match r {
        Ok((n, p, secs)) => format!("{n} objects in {p} pages, {:.0} ms", secs * 1000.0),
        Err(e) => format!("failed: {e:#}"),
    }
}

/// A node's pages of listings by state served from its index and scanned (its `/metrics`).
async fn state_pages(http: &str) -> String {
    match scrape_metrics(http).await {
        Ok(m) => format!(
            "{} indexed / {} scanned",
            metric_value(&m, "huatuo_master_state_listing_pages_indexed_total"),
            metric_value(&m, "huatuo_master_state_listing_pages_scanned_total")
        ),
        Err(e) => format!("metrics unavailable: {e:#}"),
    }
}

/// Phase 3's listings from the leader: the burst's disks in ERROR, served from the index of the objects
/// out of GOOD, beside a listing the index cannot serve (a label no object has: every object is read, as
/// every listing by state was before the index), one host's objects (the last host: its rows sort last in
/// each kind; the listing reads that host's rows only), and the leader's count of each kind of page.
async fn print_state_listings(cluster: &LocalCluster, leader: u64, last_host: &str) {
    let Some(node) = cluster.nodes.get(&leader) else { return };
    let by_state = api::ListObjectsRequest { state: "ERROR".into(), limit: LIST_PAGE, ..Default::default() };
    let scan = api::ListObjectsRequest {
        labels: vec!["bench-no-such-label=x".into()],
        limit: LIST_PAGE,
        ..Default::default()
    };
    let indexed = listing_line(timed_listing(&node.grpc, by_state).await);
    let scanned = listing_line(timed_listing(&node.grpc, scan).await);
    let of_host = api::ListObjectsRequest { host: last_host.into(), limit: LIST_PAGE, ..Default::default() };
    let of_host = listing_line(timed_listing(&node.grpc, of_host).await);
    let pages = state_pages(&node.http).await;
    println!(
        "phase 3 listings from the leader: state=ERROR {indexed}; a listing that reads every object \
         (label matching none) {scanned}; host={last_host} {of_host}; leader's pages by state: {pages}"
    );
}

/// Scrapes of the leader's `/metrics` timed in phase 3.
const SCRAPES: usize = 5;

/// What a Prometheus scrape of the leader costs right after the burst: every scope's quota use and
/// windows (each rack's liveness window, the burst's release with its ERRORs in its spike window), the
/// counters; [`SCRAPES`] scrapes one after another: p50 and max time, the body's size, how many liveness
/// and spike windows it reported and the fullest spike window.
async fn print_metrics_scrapes(cluster: &LocalCluster, leader: u64) {
    let Some(node) = cluster.nodes.get(&leader) else { return };
    let (mut took, mut body) = (Vec::new(), String::new());
    for _ in 0..SCRAPES {
        let t = Instant::now();
        match scrape_metrics(&node.http).await {
            Ok(m) => {
                took.push(t.elapsed().as_secs_f64() * 1000.0);
                body = m;
            }
            Err(e) => {
                println!("phase 3 leader's /metrics: unreadable: {e:#}");
                return;
            }
        }
    }
    let took = sorted(took);
    let windows = |what: &str| {
        body.lines()
            .filter(|l| l.starts_with("huatuo_master_scope_window{") && l.contains(what))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .collect::<Vec<f64>>()
    };
    let spike_held = windows("window=\"spike\",what=\"held\"").into_iter().fold(0.0, f64::max);
    println!(
        "phase 3 leader's /metrics ({SCRAPES} scrapes): p50 {:.1} ms, max {:.1} ms, {:.0} KiB; {} liveness and \
         {} spike windows, the fullest spike window holding {spike_held:.0}",
        pct(&took, 0.5),
        took.last().copied().unwrap_or(f64::NAN),
        body.len() as f64 / 1024.0,
        windows("window=\"liveness\",what=\"held\"").len(),
        windows("window=\"spike\",what=\"held\"").len(),
    );
}

/// The watcher: lists every object (following `next_page_token`), then watches everything from the
/// listing's revision + 1, opening the stream again after it ends; records when each object's first
/// transition arrived.
#[derive(Default)]
struct Watcher {
    seen: Mutex<HashMap<String, Instant>>,
    listed: AtomicU64,
    pages: AtomicU64,
    events: AtomicU64,
    reconnects: AtomicU64,
    stop: AtomicBool,
    /// Set once the listing is done and the first watch call is made.
    watching: AtomicBool,
}

async fn watch_all(addrs: String, w: Arc<Watcher>) -> anyhow::Result<()> {
    let mut client = Client::new(parse_addrs(&addrs));
    client.call_timeout = CALL_TIMEOUT * 3;
    let mut token = String::new();
    let mut revision = None;
    for page in 1..=MAX_LIST_PAGES + 1 {
        if page > MAX_LIST_PAGES {
            bail!("the listing did not end within {MAX_LIST_PAGES} pages");
        }
        let req =
            api::ListObjectsRequest { limit: LIST_PAGE, page_token: token.clone(), ..Default::default() };
        let r = match client.call(req, |mut c, r| async move { c.list_objects(r).await }).await {
            Ok(r) => r,
            Err(e) => {
                // A listing too big for one answer (before pagination) is a finding of the run, not a reason
                // to stop measuring: watch the changes from now on.
                eprintln!("watcher: listing failed on page {page} ({e}); watching from the current revision");
                revision = None;
                break;
            }
        };
        revision.get_or_insert(r.revision);
        w.listed.fetch_add(r.objects.len() as u64, Ordering::Relaxed);
        w.pages.fetch_add(1, Ordering::Relaxed);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let mut from = revision.map_or(0, |r| r + 1);
    let mut reconnects = 0u32;
    while !w.stop.load(Ordering::Relaxed) {
        let req = api::WatchRequest { from_revision: from, kind: String::new(), host: String::new() };
        let stream = client.call(req, |mut c, r| async move { c.watch(r).await }).await;
        w.watching.store(true, Ordering::Relaxed);
        if let Ok(mut s) = stream {
            while !w.stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(STOP_POLL, s.message()).await {
                    Ok(Ok(Some(m))) => {
                        let at = Instant::now();
                        w.events.fetch_add(m.events.len() as u64, Ordering::Relaxed);
                        let mut seen = lock(&w.seen);
                        for e in m.events {
                            from = from.max(e.revision + 1);
                            if e.what == "transition" {
                                seen.entry(e.object).or_insert(at);
                            }
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
        }
        if w.stop.load(Ordering::Relaxed) {
            break;
        }
        reconnects += 1;
        w.reconnects.fetch_add(1, Ordering::Relaxed);
        if reconnects > MAX_WATCH_RECONNECTS {
            bail!("the watch stream ended more than {MAX_WATCH_RECONNECTS} times");
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Ok(())
}

/// One /proc sample of a master process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ResSample {
    at: f64,
    pid: u32,
    ticks: u64,
    rss: u64,
}

/// Max RSS and CPU (percent of one core) of one node's samples within `[from, to]` seconds: CPU from the
/// tick differences of consecutive samples of the same process (a restart starts a new count). None when
/// fewer than two samples fall in the window.
fn summarize(samples: &[ResSample], from: f64, to: f64) -> Option<(u64, f64)> {
    let w: Vec<&ResSample> = samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
    if w.len() < 2 {
        return None;
    }
    let max_rss = w.iter().map(|s| s.rss).max().unwrap_or(0);
    let (mut ticks, mut secs) = (0u64, 0f64);
    for p in w.windows(2) {
        if p[0].pid == p[1].pid {
            ticks += p[1].ticks.saturating_sub(p[0].ticks);
            secs += p[1].at - p[0].at;
        }
    }
    let cpu = if secs > 0.0 { ticks as f64 / crate::bench_common::clock_ticks() / secs * 100.0 } else { 0.0 };
    Some((max_rss, cpu))
}

/// Which process runs each node (updated on kills and restarts) and their samples.
#[derive(Default)]
struct Resources {
    pids: Mutex<BTreeMap<u64, u32>>,
    samples: Mutex<BTreeMap<u64, Vec<ResSample>>>,
    stop: AtomicBool,
}

async fn sample_resources(res: Arc<Resources>, origin: Instant) {
    while !res.stop.load(Ordering::Relaxed) {
        let pids = lock(&res.pids).clone();
        for (id, pid) in pids {
            // A node killed between the copy and the read has no /proc entry: skip that sample.
            if let (Ok(ticks), Ok(rss)) = (cpu_ticks(pid), rss_bytes(pid)) {
                let s = ResSample { at: origin.elapsed().as_secs_f64(), pid, ticks, rss };
                let mut all = lock(&res.samples);
                let v = all.entry(id).or_default();
                if v.len() < MAX_RESOURCE_SAMPLES {
                    v.push(s);
                }
            }
        }
        tokio::time::sleep(RESOURCE_POLL).await;
    }
}

/// The Raft loop's slow durable writes and slow turns on each running member since its start (its
/// `/metrics`): a member whose loop stalls past the election timeout (1 s) goes unheard and makes a
/// leader step down; the commits say whether the stall was the disk's.
/// The bench's own runtime (its simulated agents): a heartbeat latency spike with this quiet was the masters'.
static BENCH_RUNTIME: master::stalls::StallStats = master::stalls::StallStats::new();

/// The snapshot and log-compaction series of member `id`'s `/metrics` (builds, their size and time,
/// installs; compactions, the bytes they deleted and the longest).
async fn print_snapshot_metrics(cluster: &LocalCluster, id: u64, phase: &str) {
    let Some(node) = cluster.nodes.get(&id) else { return };
    match scrape_metrics(&node.http).await {
        Ok(m) => {
            let snap: Vec<&str> = m
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.contains("snapshot") || l.contains("log_compact"))
                        && !l.contains("snapshot_chunks_refused")
                })
                .collect();
            if snap.is_empty() {
                println!(
                    "{phase} snapshot: size and build time not exported (member {id}'s /metrics has no \
                     huatuo_master_snapshot_* size or time series)"
                );
            } else {
                println!("{phase} snapshot (member {id}'s /metrics): {}", snap.join("; "));
            }
        }
        Err(e) => println!("{phase} snapshot: /metrics of member {id} unreadable: {e:#}"),
    }
}

async fn print_slow_commits(cluster: &LocalCluster, label: &str) {
    let mut parts = Vec::new();
    for id in cluster.running() {
        let Some(n) = cluster.nodes.get(&id) else { continue };
        match scrape_metrics(&n.http).await {
            Ok(m) => {
                let get = |key: &str| metric_value(&m, key.trim_end());
                let count = get("huatuo_master_fsync_seconds_count ");
                let le_250ms = get("huatuo_master_fsync_seconds_bucket{le=\"0.25\"} ");
                let le_1s = get("huatuo_master_fsync_seconds_bucket{le=\"1\"} ");
                parts.push(format!(
                    "node {id}: {count} commits, {} over 250 ms, {} over 1 s; loop turns over 250 ms {}, over 1 s \
                     {}, longest {} ms (CPU {} ms, events {} ms, apply {} ms of {} entries, commit {} ms, install \
                     {} ms); loop woken late for a tick over 250 ms {}, longest {} ms; pre-votes held off {}; API \
                     runtime woken late over 100 ms {}, over 500 ms {}, longest {} ms",
                    count.saturating_sub(le_250ms),
                    count.saturating_sub(le_1s),
                    get("huatuo_master_raft_turns_over_250ms_total "),
                    get("huatuo_master_raft_turns_over_1s_total "),
                    get("huatuo_master_raft_turn_max_ms "),
                    get("huatuo_master_raft_turn_max_cpu_ms "),
                    get("huatuo_master_raft_turn_max_events_ms "),
                    get("huatuo_master_raft_turn_max_apply_ms "),
                    get("huatuo_master_raft_turn_max_entries "),
                    get("huatuo_master_raft_turn_max_commit_ms "),
                    get("huatuo_master_raft_turn_max_install_ms "),
                    get("huatuo_master_raft_woken_late_over_250ms_total "),
                    get("huatuo_master_raft_woken_late_max_ms "),
                    get("huatuo_master_raft_prevotes_held_off_total "),
                    get("huatuo_master_runtime_stalls_over_100ms_total "),
                    get("huatuo_master_runtime_stalls_over_500ms_total "),
                    get("huatuo_master_runtime_stall_max_ms ")
                ));
            }
            Err(e) => parts.push(format!("node {id}: /metrics unreadable ({e:#})")),
        }
    }
    println!("{label} slow Raft commits since each member started: {}", parts.join("; "));
    println!("{label} this bench's own runtime woken late: {}", BENCH_RUNTIME.summary());
}

/// The CPU counters now of the machine, this process and the running members (see
/// [`crate::bench_common::cpu_mark`]); an unreadable /proc is printed by the phase, which goes on.
fn cpu_mark(res: &Resources) -> anyhow::Result<crate::bench_common::CpuMark> {
    let pids: Vec<(u64, u32)> = lock(&res.pids).iter().map(|(id, pid)| (*id, *pid)).collect();
    crate::bench_common::cpu_mark(&pids)
}

/// "PHASE CPU per WHAT: ..." between two marks (this process is the simulated fleet and its clients).
fn print_cpu(
    phase: &str,
    a: &anyhow::Result<crate::bench_common::CpuMark>,
    b: &anyhow::Result<crate::bench_common::CpuMark>,
    ops: u64,
    what: &str,
) {
    match (a, b) {
        (Ok(a), Ok(b)) => println!(
            "{phase} {}",
            crate::bench_common::cpu_between(a, b).per_op_line(ops, what, "this bench (the simulated fleet)")
        ),
        (Err(e), _) | (_, Err(e)) => println!("{phase} CPU per {what}: unknown ({e:#})"),
    }
}

fn print_resources(res: &Resources, label: &str, from: f64, to: f64) {
    let all = lock(&res.samples);
    let parts: Vec<String> = all
        .iter()
        .map(|(id, v)| match summarize(v, from, to) {
            Some((rss, cpu)) => {
                format!("node {id} RSS max {:.0} MiB CPU {cpu:.0}%", rss as f64 / (1 << 20) as f64)
            }
            None => format!("node {id} not sampled"),
        })
        .collect();
    println!("resources ({label}): {}", parts.join("; "));
}

/// Polls every member's term; returns (seconds since the origin, highest term) at each change of the
/// highest term seen (the first observation included).
async fn poll_terms(addrs: Vec<String>, origin: Instant, stop: Arc<AtomicBool>) -> Vec<(f64, u64)> {
    let mut clients: Vec<Client> = addrs
        .into_iter()
        .map(|a| {
            let mut c = Client::new(vec![a]);
            c.max_attempts = 1;
            c.call_timeout = Duration::from_millis(500);
            c
        })
        .collect();
    let mut changes: Vec<(f64, u64)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for c in &mut clients {
            if let Ok(i) =
                c.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await
                && changes.last().is_none_or(|(_, t)| i.term > *t)
            {
                changes.push((origin.elapsed().as_secs_f64(), i.term));
            }
        }
        tokio::time::sleep(TERM_POLL).await;
    }
    changes
}

/// Term increases outside every `[from, to]` window (the first observation is the starting term, not an
/// election). Each increase counts once, however many terms it skipped.
fn elections_outside(changes: &[(f64, u64)], windows: &[(f64, f64)]) -> Vec<(f64, u64)> {
    changes
        .iter()
        .skip(1)
        .filter(|(at, _)| !windows.iter().any(|(a, b)| at >= a && at <= b))
        .copied()
        .collect()
}

/// Findings/s of `clients` sequential writers for `secs`, each sending batches of `batch` findings about
/// its own host's disks as agent `fleet-{tag}-K`. Returns (findings applied, seconds, acknowledged).
async fn throughput(
    run: &Arc<Run>,
    writers: &Option<Arc<Fleet>>,
    tag: &str,
    clients: u32,
    batch: u32,
    secs: u64,
) -> (u64, f64, Vec<Acked>) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let applied = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (run, applied, writers) = (run.clone(), applied.clone(), writers.clone());
        let (agent, h) = (format!("fleet-{tag}-agent-{k:03}"), format!("fleet-{tag}-{k:03}"));
        tasks.push(tokio::spawn(async move {
            let disks = batch.min(THROUGHPUT_DISKS);
            let mut last_acked_ms = None;
            let mut seq = 0u64;
            let mut stream: Option<WriteStream> = None;
            let fleet = writers.as_deref().unwrap_or(&run.fleet);
            while Instant::now() < deadline {
                seq += 1;
                // One time for the whole batch: the check at the end compares each disk's latest evidence
                // with the batch's time, which must then be the time of every finding in it.
                let time_ms = now_ms();
                let findings: Vec<api::Finding> = (0..batch)
                    .map(|j| api::Finding {
                        time_ms,
                        ..finding(format!("disk/{h}/d{}", j % disks), "GOOD", THROUGHPUT_CHECKER)
                    })
                    .collect();
                let req = api::IngestRequest { agent: agent.clone(), seq, findings, epoch: 0 };
                // Over the writer's stream when it has one to the node believed to lead (opened if not),
                // as an agent sends; a batch the stream did not answer goes as a call, a retry (a batch
                // applied before its answer was lost is then answered `duplicate`).
                stream = stream.filter(|s| s.node == fleet.leader_node());
                if stream.is_none() && run.ingest_streams {
                    stream =
                        open_stream(fleet, k as usize, &run.write_streams_opened, |mut c, rx| async move {
                            c.ingest_stream(rx).await
                        })
                        .await;
                }
                let tries = u32::from(stream.is_some());
                let streamed = over_stream(fleet, &mut stream, req.clone()).await;
                let send = |mut c: MasterClient<Channel>| {
                    let q = req.clone();
                    async move { c.ingest(q).await }
                };
                let sent = match streamed {
                    Some(r) => {
                        run.writes_streamed.fetch_add(1, Ordering::Relaxed);
                        Ok((r, 1))
                    }
                    None => call_via(fleet, k as usize, send).await.map(|(r, n)| (r, n + tries)),
                };
                match sent {
                    Ok((r, attempts)) if r.applied > 0 || (r.duplicate && attempts > 1) => {
                        applied.fetch_add(
                            u64::from(if r.duplicate { batch } else { r.applied }),
                            Ordering::Relaxed,
                        );
                        last_acked_ms = Some(time_ms);
                    }
                    Ok((r, _)) => {
                        run.error(format!("ingest {agent}: applied {} duplicate {}", r.applied, r.duplicate))
                    }
                    Err(e) => run.error(format!("ingest {agent}: {e}")),
                }
            }
            let at = Instant::now();
            last_acked_ms
                .map(|t| {
                    (0..disks)
                        .map(|d| Acked {
                            object: format!("disk/{h}/d{d}"),
                            checker: THROUGHPUT_CHECKER,
                            time_ms: t,
                            burst: false,
                            at,
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap_or_default());
    }
    (applied.load(Ordering::Relaxed), start.elapsed().as_secs_f64(), acked)
}

/// Phase 7's last measurement: the single-finding clients again (new agents and disks) with the fleet's
/// heartbeats paused, so the two single-finding figures side by side say what 10,000 beats a second take
/// from the findings and what the state's size costs by itself. As long as the throughput halves, but
/// short enough that no agent goes silent (the pause and one jittered interval within
/// [`AGENT_SILENT_AFTER_MS`] less [`PAUSE_MARGIN_MS`]); skipped, and said so, when that leaves nothing.
async fn single_without_heartbeats(
    run: &Arc<Run>,
    writers: &Option<Arc<Fleet>>,
    res: &Resources,
    a: &BenchFleetArgs,
) -> Vec<Acked> {
    let secs = pause_secs(a.heartbeat_secs, a.throughput_seconds);
    if secs == 0 {
        println!(
            "phase 7 single-finding clients with the heartbeats paused: skipped (a {}-s interval leaves no \
             pause short of marking agents silent)",
            a.heartbeat_secs
        );
        return Vec::new();
    }
    let skipped_before = run.beats_skipped.load(Ordering::Relaxed);
    let cpu_from = cpu_mark(res);
    run.pause_beats.store(true, Ordering::Relaxed);
    let (done, took, acked) = throughput(run, writers, "quiet", SINGLE_CLIENTS, 1, secs).await;
    run.pause_beats.store(false, Ordering::Relaxed);
    let cpu_to = cpu_mark(res);
    println!(
        "phase 7 single-finding clients with the heartbeats paused ({secs} s; {} beats skipped): {:.0} \
         findings/s",
        run.beats_skipped.load(Ordering::Relaxed) - skipped_before,
        done as f64 / took.max(1e-9)
    );
    print_cpu("phase 7 single-finding, heartbeats paused:", &cpu_from, &cpu_to, done, "committed finding");
    acked
}

/// How long phase 7 may pause the heartbeats of agents beating every `heartbeat_secs` (each interval
/// drawn within +-[`JITTER_PCT`]): `throughput_secs`, at most what keeps every agent's silence
/// [`PAUSE_MARGIN_MS`] short of [`AGENT_SILENT_AFTER_MS`]; 0 when nothing does.
///
/// An agent whose last beat before the pause was sent at `d0` skips every beat that falls due within the
/// pause: `k` of them when `k - 1` shortest intervals fit in the pause, and it is silent for `k + 1`
/// intervals at most. So at most `k_max = (silent_after - margin) / longest - 1` beats may be skipped in a
/// row, and a pause of `k_max` shortest intervals holds no more than that. At the default 10-s interval (8
/// to 12 s) that is one beat and 8 s (silences up to 24 s); a 10-s pause let two beats in a row be skipped
/// and about 1.2% of the agents go 30 s and more without one (a simulation of the schedule).
fn pause_secs(heartbeat_secs: u64, throughput_secs: u64) -> u64 {
    let interval_ms = heartbeat_secs.saturating_mul(1000);
    let spread_ms = interval_ms.saturating_mul(JITTER_PCT) / 100;
    let (shortest_ms, longest_ms) = (interval_ms - spread_ms, interval_ms.saturating_add(spread_ms));
    let budget_ms = AGENT_SILENT_AFTER_MS.saturating_sub(PAUSE_MARGIN_MS);
    let skippable = (budget_ms / longest_ms.max(1)).saturating_sub(1);
    throughput_secs.min(skippable.saturating_mul(shortest_ms) / 1000)
}

/// Whether the object shows the acknowledged finding: its checker's latest evidence is at least as new.
fn shows(resp: &api::GetObjectResponse, checker: &str, time_ms: u64) -> bool {
    resp.object
        .as_ref()
        .is_some_and(|o| o.evidence.iter().any(|f| f.checker == checker && f.time_ms >= time_ms))
}

/// Whether the object's history holds a transition (a burst ERROR on a GOOD disk makes one unless the
/// safety net held it as a proposal).
fn transitioned(resp: &api::GetObjectResponse) -> bool {
    resp.history.iter().any(|h| h.what == "transition")
}

/// What the check at the end found.
#[derive(Debug, Default)]
struct Verified {
    lost: u64,
    objects: usize,
    /// Burst disks whose ERROR is recorded but left no transition (held by the safety net).
    untransitioned: u64,
    examples: Vec<String>,
}

/// Check every acknowledged finding once on its object.
async fn verify(run: &Arc<Run>, acked: &[Acked]) -> anyhow::Result<Verified> {
    // Per object: per checker, the newest acknowledged time, whether a burst ERROR is among them, and how
    // many acknowledged findings that stands for.
    let mut want: BTreeMap<&str, BTreeMap<&str, (u64, bool, u64)>> = BTreeMap::new();
    for a in acked {
        let e = want.entry(&a.object).or_default().entry(a.checker).or_insert((0, false, 0));
        e.0 = e.0.max(a.time_ms);
        e.1 |= a.burst;
        e.2 += 1;
    }
    let objects = want.len();
    let mut lost = 0u64;
    let mut untransitioned = 0u64;
    let mut examples = Vec::new();
    let mut pending = want.into_iter().enumerate();
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < VERIFY_IN_FLIGHT {
            let Some((k, (obj, checks))) = pending.next() else { break };
            let run = run.clone();
            let id = obj.to_string();
            inflight.push(async move {
                let got = run
                    .call(k, |mut c| {
                        let r = api::GetObjectRequest { id: id.clone(), stale: false };
                        async move { c.get_object(r).await }
                    })
                    .await;
                (id, checks, got)
            });
        }
        let Some((id, checks, got)) = inflight.next().await else { break };
        let resp = match got {
            Ok((r, _)) => r,
            Err(e) if e.contains("NotFound") => api::GetObjectResponse::default(),
            Err(e) => bail!("checking {id}: {e}"),
        };
        for (checker, (time_ms, burst, n)) in checks {
            if burst && !transitioned(&resp) {
                untransitioned += 1;
            }
            if !shows(&resp, checker, time_ms) {
                lost += n;
                if examples.len() < MAX_ERRORS_KEPT {
                    let o = resp.object.as_ref();
                    examples.push(format!(
                        "{id} ({checker}, acknowledged finding of {time_ms}; object {}, state {:?}, evidence {:?})",
                        if o.is_some() { "found" } else { "not found" },
                        o.map(|o| o.state.as_str()).unwrap_or(""),
                        o.map(|o| o.evidence.iter().map(|f| (f.checker.as_str(), f.time_ms)).collect::<Vec<_>>())
                    ));
                }
            }
        }
    }
    Ok(Verified { lost, objects, untransitioned, examples })
}

pub fn run(a: BenchFleetArgs) -> anyhow::Result<ExitCode> {
    a.check()?;
    if let Some(d) = &a.data_dir {
        // The cluster's data dirs are made in the temp dir; point it at the asked one (before any is made).
        tempfile::env::override_temp_dir(d)
            .map_err(|was| anyhow!("the temp dir was already set to {}", was.display()))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // A signal drops the benchmark, and with it the cluster (whose Drop kills the master processes).
    rt.block_on(async {
        tokio::spawn(master::stalls::probe(&BENCH_RUNTIME, std::future::pending()));
        crate::bench_common::until_stopped(bench(a)).await
    })
}

async fn bench(a: BenchFleetArgs) -> anyhow::Result<ExitCode> {
    let seed = a.seed.unwrap_or_else(now_ms);
    let disks = a.disks();
    let objects = u64::from(a.agents) * u64::from(a.objects_per_host);
    println!(
        "seed {seed} (replay with --seed {seed}); {} agents x {} objects ({disks} disks) = {objects} objects, \
         multiplexed over {} connections per node; heartbeat every {} s +-{JITTER_PCT}%",
        a.agents, a.objects_per_host, a.connections, a.heartbeat_secs
    );
    println!("{}", crate::bench_common::machine_line());
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let overflows_at_start = crate::bench_common::listen_overflows();
    let mut cluster = match a.cache_mb {
        Some(mb) => {
            println!("every master with cache_mb = {mb}");
            LocalCluster::start_with_config(&exe, 3, &format!("cache_mb = {mb}\n"))
        }
        None => LocalCluster::start(&exe, 3),
    }
    .context("start cluster")?;
    let r = bench_on(&a, seed, &mut cluster).await;
    println!("{}", crate::bench_common::listen_overflows_line(overflows_at_start));
    // The masters' logs go with the cluster's data: kept for every run, so a figure can be traced in them.
    keep_logs(&cluster, seed);
    r
}

/// Every run keeps the masters' logs (the cluster's data, logs included, is removed with it): copied to
/// `huatuo-bench-fleet-<seed>-logs` in the temp dir (or `--data-dir`), and the path printed.
/// Most leader-change lines printed per member.
const MAX_LEADER_LINES: usize = 20;

/// The lines of `log` that say a leader changed here: a new leader learning the agents (once per term it
/// won), raft's warnings (a leader stepping down for lack of a quorum) and the Raft loop's slow turns (what
/// held a member up), without colour codes, the newest `MAX_LEADER_LINES`.
fn leader_lines(log: &str) -> Vec<String> {
    let lines: Vec<String> = log
        .lines()
        .map(strip_ansi)
        .filter(|l| {
            l.contains("leader learned the agents")
                || l.contains("slow raft turn")
                || (l.contains("WARN") && l.contains(" raft:"))
        })
        .collect();
    lines[lines.len().saturating_sub(MAX_LEADER_LINES)..].to_vec()
}

/// Every member's leader changes from its log (restarts append to the same file), so an election is
/// explained by who stepped down and who won, not only counted.
fn print_leader_changes(cluster: &LocalCluster) {
    for id in cluster.nodes.keys() {
        let log = std::fs::read_to_string(cluster.log_path(*id)).unwrap_or_default();
        for l in leader_lines(&log) {
            println!("leader change, node {id}'s log: {l}");
        }
    }
}

fn keep_logs(cluster: &LocalCluster, seed: u64) {
    // `--data-dir` overrides tempfile's temp dir (not std's): the logs go beside the cluster.
    let dir = tempfile::env::temp_dir().join(format!("huatuo-bench-fleet-{seed}-logs"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        println!("the masters' logs could not be kept in {}: {e}", dir.display());
        return;
    }
    for id in 1..=3 {
        if let Err(e) = std::fs::copy(cluster.log_path(id), dir.join(format!("node-{id}.log"))) {
            println!("node {id}'s log could not be kept: {e}");
        }
    }
    println!("the masters' logs of this run: {}", dir.display());
}

async fn bench_on(a: &BenchFleetArgs, seed: u64, cluster: &mut LocalCluster) -> anyhow::Result<ExitCode> {
    let disks = a.disks();
    let objects = u64::from(a.agents) * u64::from(a.objects_per_host);
    let Some(leader) = cluster.wait_leader(READY_TIMEOUT).await else {
        bail!("masters elected no leader within {READY_TIMEOUT:?}; log:\n{}", cluster.log_tail(1));
    };
    open_quotas(cluster, "bench-fleet").await?;
    let data_root = cluster.data_dir(1).parent().map(|p| p.display().to_string()).unwrap_or_default();
    let pids: Vec<String> =
        cluster.running().iter().map(|id| format!("{id}={}", cluster.pid(*id).unwrap_or(0))).collect();
    println!(
        "cluster: 3 nodes (separate processes, fsync on), leader {leader}, pids {}, data under {data_root}",
        pids.join(" ")
    );

    let res = Arc::new(Resources::default());
    for id in cluster.running() {
        if let Some(pid) = cluster.pid(id) {
            lock(&res.pids).insert(id, pid);
        }
    }
    let origin = Instant::now();
    let sampler = tokio::spawn(sample_resources(res.clone(), origin));
    let nodes: Vec<(u64, String)> = cluster.nodes.iter().map(|(id, n)| (*id, n.grpc.clone())).collect();
    let fleet = Fleet::connect(
        nodes.iter().map(|(_, g)| g.clone()).collect(),
        a.connections,
        nodes.iter().position(|(id, _)| *id == leader).unwrap_or(0),
    )
    .await?;
    let datagrams = if a.beat_datagrams() {
        Some(BeatTargets::resolve(&fleet.nodes, BeatKey::open()).await?)
    } else {
        None
    };
    let run = Arc::new(Run {
        fleet,
        origin,
        started_ms: now_ms(),
        beats: Mutex::new(Samples::new(MAX_SAMPLES)),
        errors: AtomicU64::new(0),
        beat_errors: Mutex::new(Samples::new(MAX_SAMPLES / 4)),
        assignments: AtomicU64::new(0),
        streams: a.beat_streams(),
        streamed: AtomicU64::new(0),
        streams_opened: AtomicU64::new(0),
        datagrams,
        datagrams_answered: AtomicU64::new(0),
        datagrams_own_key: AtomicU64::new(0),
        agent_keys: (0..a.agents).map(|_| std::sync::OnceLock::new()).collect(),
        datagrams_fell_back: AtomicU64::new(0),
        datagrams_unanswered: AtomicU64::new(0),
        ingest_streams: !a.ingest_calls,
        writes_streamed: AtomicU64::new(0),
        write_streams_opened: AtomicU64::new(0),
        kept: Mutex::new(Vec::new()),
        stop_beats: AtomicBool::new(false),
        pause_beats: AtomicBool::new(false),
        beats_skipped: AtomicU64::new(0),
        longest_gap_ms: AtomicU64::new(0),
    });
    let stop_terms = Arc::new(AtomicBool::new(false));
    let terms =
        tokio::spawn(poll_terms(nodes.iter().map(|(_, g)| g.clone()).collect(), origin, stop_terms.clone()));

    // Phase 1: registration through the agents' path.
    let t1 = run.secs();
    let t = Instant::now();
    let per_conn = (REGISTER_IN_FLIGHT / a.connections).max(1) as usize;
    let interval_ms = a.heartbeat_secs * 1000;
    let mut seeder = Rng(seed);
    let mut regs = Vec::new();
    let mut drivers = Vec::new();
    for c in 0..a.connections {
        let mine = agents_of(c, a.connections, a.agents);
        let (tx, rx) = tokio::sync::oneshot::channel();
        regs.push(rx);
        let pace = (interval_ms, disks, per_conn);
        drivers.push(tokio::spawn(drive(run.clone(), c, mine, pace, Rng(seeder.next_u64()), tx)));
    }
    let (mut lat, mut failed) = (Vec::new(), Vec::new());
    for r in regs {
        let (l, f) = r.await.context("a connection task ended before its agents registered")?;
        lat.extend(l);
        failed.extend(f);
    }
    let took = t.elapsed().as_secs_f64();
    println!(
        "phase 1 registration: {} hosts ({} objects) registered + first heartbeat in {took:.1} s: {:.0} hosts/s; \
         per host {}",
        lat.len(),
        lat.len() as u64 * u64::from(a.objects_per_host),
        lat.len() as f64 / took.max(1e-9),
        latency_summary(lat)
    );
    print_resources(&res, "registration", t1, run.secs());
    if !failed.is_empty() {
        bail!(
            "phase 1 failed: {} hosts did not register, first: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }

    // The watcher: list every page, then watch everything.
    let watcher = Arc::new(Watcher::default());
    let watch_task = tokio::spawn(watch_all(cluster.grpc_addrs(), watcher.clone()));
    let listing = Instant::now();
    let listed_by = listing + LIST_WAIT;
    while !watcher.watching.load(Ordering::Relaxed) && !watch_task.is_finished() && Instant::now() < listed_by
    {
        tokio::time::sleep(STOP_POLL).await;
    }
    println!(
        "phase 2 watcher: listed {} objects in {} pages in {:.1} s before the phase ({})",
        watcher.listed.load(Ordering::Relaxed),
        watcher.pages.load(Ordering::Relaxed),
        listing.elapsed().as_secs_f64(),
        if watcher.watching.load(Ordering::Relaxed) {
            "watching"
        } else {
            "NOT watching yet: the listing is still going or failed"
        }
    );

    // Phase 2: steady state.
    let steady_ms = a.steady_seconds * 1000;
    let plan = plan_findings(a.agents, disks, steady_ms, &mut seeder);
    let burst_n = plan.iter().filter(|p| p.burst).count();
    let mut per_reporter: Vec<Vec<Planned>> = (0..REPORTERS).map(|_| Vec::new()).collect();
    for p in plan {
        per_reporter[(p.agent % REPORTERS) as usize].push(p);
    }
    let t2 = run.secs();
    let cpu2 = cpu_mark(&res);
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_millis(steady_ms) + REPORT_DRAIN;
    let reporters: Vec<_> = per_reporter
        .into_iter()
        .enumerate()
        .map(|(r, p)| tokio::spawn(report(run.clone(), r as u32, p, start, deadline)))
        .collect();
    tokio::time::sleep(Duration::from_millis(steady_ms)).await;
    let t2_end = run.secs();
    let cpu2_end = cpu_mark(&res);
    let mut acked: Vec<Acked> = Vec::new();
    let mut missed = 0u64;
    for r in reporters {
        let (ac, m) = r.await.context("a reporter task failed")?;
        acked.extend(ac);
        missed += m;
    }
    let reported_in = start.elapsed().as_secs_f64();
    let steady = run.beats_between(t2, t2_end);
    let steady_beats = steady.len() as u64;
    println!(
        "phase 2 heartbeats: {:.0} beats/s achieved over {:.0} s (wanted {:.0}/s); latency {}; errors so far {}",
        steady.len() as f64 / (t2_end - t2).max(1e-9),
        t2_end - t2,
        f64::from(a.agents) / a.heartbeat_secs as f64,
        latency_summary(steady),
        run.errors.load(Ordering::Relaxed)
    );
    // Nearly all of the phase's work is heartbeats (the findings are a few thousand against 600,000 beats
    // at 100,000 agents): its CPU per beat is what 10,000 beats/s cost the machine, both ends on it.
    print_cpu("phase 2", &cpu2, &cpu2_end, steady_beats, "heartbeat (findings included)");
    println!("phase 2 heartbeat transport: {}", run.transport_line());
    println!(
        "phase 2 findings: {} acknowledged ({} background WARNING, {} of a {burst_n}-disk ERROR burst) in \
         {reported_in:.1} s, {missed} not acknowledged",
        acked.len(),
        acked.iter().filter(|x| !x.burst).count(),
        acked.iter().filter(|x| x.burst).count(),
    );
    // The watcher's lag on the burst: from each ERROR's acknowledgement to its disk's transition.
    let burst: Vec<&Acked> = acked.iter().filter(|x| x.burst).collect();
    let drain = Instant::now() + WATCH_DRAIN;
    loop {
        let seen = {
            let s = lock(&watcher.seen);
            burst.iter().filter(|b| s.contains_key(&b.object)).count()
        };
        if seen == burst.len() || Instant::now() >= drain || watch_task.is_finished() {
            break;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    let (lags, unseen) = {
        let s = lock(&watcher.seen);
        let lags: Vec<f64> = burst
            .iter()
            .filter_map(|b| {
                s.get(&b.object).map(|at| at.saturating_duration_since(b.at).as_secs_f64() * 1000.0)
            })
            .collect();
        let unseen = burst.len() - lags.len();
        (lags, unseen)
    };
    println!(
        "phase 2 watcher: listed {} objects in {} pages, {} events; lag (ack -> transition seen) {}; {unseen} \
         burst transitions not seen within {WATCH_DRAIN:?}; {} reconnects",
        watcher.listed.load(Ordering::Relaxed),
        watcher.pages.load(Ordering::Relaxed),
        watcher.events.load(Ordering::Relaxed),
        latency_summary(lags),
        watcher.reconnects.load(Ordering::Relaxed)
    );
    watcher.stop.store(true, Ordering::Relaxed);
    match watch_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("phase 2 watcher ended with an error: {e:#}"),
        Err(e) => println!("phase 2 watcher task failed: {e}"),
    }

    // Phase 3: resources, data dirs, snapshot.
    print_resources(&res, "steady state", t2, t2_end);
    print_resources(&res, "whole run so far", 0.0, run.secs());
    println!("phase 3 data dirs: {} ({} objects)", data_dirs(cluster), objects);
    let lead_now =
        cluster.wait_leader(READY_TIMEOUT).await.ok_or_else(|| anyhow!("no leader after phase 2"))?;
    // The safety net's view after the steady phase: silent agents latch scopes into manual drive, which
    // holds the burst's transitions as proposals (the watcher then sees none).
    if let Some(i) = cluster.info(lead_now).await {
        let latched: Vec<&str> = i.scopes.iter().filter(|s| s.latched).map(|s| s.scope.as_str()).collect();
        println!(
            "phase 2 safety net: level {}, {} proposals pending, {} of {} scopes latched{}, agents alive {} of {}",
            i.level,
            i.pending_proposals,
            latched.len(),
            i.scopes.len(),
            latched.first().map(|s| format!(" (e.g. {s})")).unwrap_or_default(),
            i.agents_alive,
            i.agents
        );
    }
    // Builds are on demand (a follower behind the log start): after registration the leader has
    // usually built none; phase 4 prints the one the wiped follower asks for.
    print_snapshot_metrics(cluster, lead_now, "phase 3").await;
    print_state_listings(cluster, lead_now, &host(a.agents.saturating_sub(1))).await;
    print_metrics_scrapes(cluster, lead_now).await;

    print_slow_commits(cluster, "phase 3").await;

    // Phases 4 and 5: the kills, with heartbeats continuing.
    let mut windows: Vec<(f64, f64)> = Vec::new();
    if a.skip_kills {
        println!("phase 4 follower catch-up: skipped (--skip-kills)");
        println!("phase 5 failover: skipped (--skip-kills)");
    } else {
        let t4 = run.secs();
        let leader =
            cluster.wait_leader(READY_TIMEOUT).await.ok_or_else(|| anyhow!("no leader before phase 4"))?;
        let follower =
            *cluster.nodes.keys().find(|id| **id != leader).ok_or_else(|| anyhow!("no follower"))?;
        cluster.kill9(follower);
        lock(&res.pids).remove(&follower);
        let dir = cluster.data_dir(follower);
        std::fs::remove_dir_all(&dir).with_context(|| format!("wipe {}", dir.display()))?;
        let target = cluster
            .info(leader)
            .await
            .map(|i| i.commit_index)
            .ok_or_else(|| anyhow!("phase 4 failed: leader {leader} unreachable"))?;
        let t = Instant::now();
        cluster.spawn(follower, true).context("restart the wiped follower with --join")?;
        if let Some(pid) = cluster.pid(follower) {
            lock(&res.pids).insert(follower, pid);
        }
        if !cluster.wait_applied(follower, target, CATCHUP_DEADLINE).await {
            bail!(
                "phase 4 failed: wiped follower {follower} did not reach index {target} within {CATCHUP_DEADLINE:?}; \
                 log:\n{}",
                cluster.log_tail(follower)
            );
        }
        let caught = t.elapsed().as_secs_f64();
        println!(
            "phase 4 follower catch-up: node {follower} killed, data wiped, restarted with --join: applied the \
             leader's commit index {target} after {caught:.2} s (cluster info); its data dir now {:.1} MiB",
            dir_bytes(&dir).unwrap_or(0) as f64 / (1 << 20) as f64
        );
        // The leader feeds the wiped member a snapshot meanwhile: how its heartbeats fared, and whether any
        // agent was recorded silent (late beats: each connection has a bounded number in flight).
        let alive = match cluster.wait_leader(READY_TIMEOUT).await {
            Some(l) => cluster.info(l).await.map(|i| format!("{} of {}", i.agents_alive, i.agents)),
            None => None,
        };
        println!(
            "phase 4 heartbeats during the catch-up: {}; agents alive after it {}",
            latency_summary(run.beats_between(t4, run.secs())),
            alive.unwrap_or_else(|| "unknown (no cluster info)".into())
        );
        // Not a window for phase 6: killing and rebuilding a follower must not change the leader (run C of
        // 2026-12-04 showed a leader change 2 s after the rebuilt follower installed its snapshot, which this
        // window used to hide).
        print_resources(&res, "follower catch-up", t4, run.secs());
        print_snapshot_metrics(cluster, leader, "phase 4").await;
        print_slow_commits(cluster, "phase 4").await;
        // A member restored from a snapshot builds its indexes again (a pass over every object, seconds of
        // both cores at 1.5 M objects). Since snapshots are built on demand (session 22) the file is fresh
        // and the catch-up above ends as that rebuild starts; phase 5's kill waits for it, so it measures a
        // failover, not a failover beside a rebuild (runs R/R2 of 2026-12-05 overlapped them).
        let rebuilt = Instant::now();
        let built = wait_indexes_built(cluster, follower, leader, CATCHUP_DEADLINE).await;
        println!(
            "phase 4 rebuilt member's indexes: {}",
            if built {
                format!(
                    "built {:.2} s after the catch-up (at the leader's revision)",
                    rebuilt.elapsed().as_secs_f64()
                )
            } else {
                format!(
                    "not at the leader's revision within {CATCHUP_DEADLINE:?} (its /metrics index gauges)"
                )
            }
        );

        // Phase 5: leader kill -9.
        let leader =
            cluster.wait_leader(READY_TIMEOUT).await.ok_or_else(|| anyhow!("no leader before phase 5"))?;
        let commit = cluster.info(leader).await.map(|i| i.commit_index).unwrap_or(0);
        for id in cluster.running() {
            if !cluster.wait_applied(id, commit, CATCHUP_DEADLINE).await {
                bail!("phase 5 failed: node {id} did not apply {commit} before the kill");
            }
        }
        let mut client = Client::new(parse_addrs(&cluster.grpc_addrs()));
        client.call_timeout = FAILOVER_ATTEMPT;
        client.max_attempts = 1;
        let t5 = run.secs();
        let errors_before = run.errors.load(Ordering::Relaxed);
        let killed = Instant::now();
        let killed_ms = now_ms();
        cluster.kill9(leader);
        lock(&res.pids).remove(&leader);
        let took = loop {
            let f = finding("machine/fleet-failover".into(), "GOOD", FAILOVER_CHECKER);
            let time_ms = f.time_ms;
            let req = api::IngestRequest { agent: String::new(), seq: 0, findings: vec![f], epoch: 0 };
            if let Ok(r) = client.call(req, |mut c, r| async move { c.ingest(r).await }).await
                && r.applied == 1
            {
                acked.push(Acked {
                    object: "machine/fleet-failover".into(),
                    checker: FAILOVER_CHECKER,
                    time_ms,
                    burst: false,
                    at: Instant::now(),
                });
                break killed.elapsed();
            }
            if killed.elapsed() > FAILOVER_DEADLINE {
                bail!(
                    "phase 5 failed: no acknowledged write within {FAILOVER_DEADLINE:?} after killing leader {leader}"
                );
            }
            tokio::time::sleep(FAILOVER_PAUSE).await;
        };
        let failover_ms = took.as_secs_f64() * 1000.0;
        let respawned_ms = now_ms();
        cluster.spawn(leader, false).context("restart the killed leader")?;
        if let Some(pid) = cluster.pid(leader) {
            lock(&res.pids).insert(leader, pid);
        }
        let Some(now_leader) = cluster.wait_leader(READY_TIMEOUT).await else {
            print_slow_commits(cluster, "phase 5 (no leader)").await;
            bail!("no leader after the failover");
        };
        let commit = cluster.info(now_leader).await.map(|i| i.commit_index).unwrap_or(0);
        if !cluster.wait_applied(leader, commit, CATCHUP_DEADLINE).await {
            bail!("phase 5 failed: the restarted node {leader} did not catch up");
        }
        // Let at least one heartbeat interval pass on the new leader, so the figure shows the beats after it.
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let during = run.beats_between(t5, run.secs());
        println!(
            "phase 5 failover: leader {leader} killed (-9); first acknowledged write after {failover_ms:.0} ms; \
             heartbeats from the kill until the old leader rejoined and one interval passed: {}, {} errors \
             (the whole fleet moved {} times so far)",
            latency_summary(during),
            run.errors.load(Ordering::Relaxed) - errors_before,
            run.fleet.moves.load(Ordering::Relaxed)
        );
        // The same window split at the first acknowledged write: a beat sent while no member led can only
        // be answered once one does (the failover time bounds it); the ones sent after are the new leader
        // serving the fleet's first beats to it.
        let t_led = t5 + took.as_secs_f64();
        let leaderless = sorted(run.beats_between(t5, t_led));
        let longest = leaderless.last().map_or(String::new(), |ms| format!(", the longest after {ms:.1} ms"));
        println!(
            "phase 5 heartbeats sent after the first acknowledged write (the fleet's first beats to the new \
             leader): {}; sent between the kill and it: {} acknowledged{longest}",
            latency_summary(run.beats_between(t_led, run.secs())),
            leaderless.len(),
        );
        print_failover_rows(&run, t5, run.secs());
        print_failover_timeline(cluster, killed_ms, respawned_ms, now_leader, leader);
        println!("phase 5 new leader's indexes: {}", index_answers_line(cluster, now_leader).await);
        windows.push((t5, run.secs() + KILL_SETTLE.as_secs_f64()));
        print_resources(&res, "failover", t5, run.secs());
        print_slow_commits(cluster, "phase 5").await;
    }

    // Phase 7 runs before phase 6 is printed: elections during the throughput phase count too.
    let t7 = run.secs();
    let cpu7 = cpu_mark(&res);
    let streamed7 = run.beats_off_calls();
    // The writers' own connections (`--writer-connections`), to the node the fleet believes leads now.
    let writers = match a.writer_connections {
        0 => None,
        n => Some(Arc::new(Fleet::connect(run.fleet.nodes.clone(), n, run.fleet.leader_node()).await?)),
    };
    let (single, single_s, ack1) =
        throughput(&run, &writers, "single", SINGLE_CLIENTS, 1, a.throughput_seconds).await;
    let cpu7_half = cpu_mark(&res);
    let t7_half = run.secs();
    let streamed7_half = run.beats_off_calls();
    // Halfway through the batched phase (the most changes per second), list the disks in ERROR from the
    // leader: its index of the objects out of GOOD is then furthest behind.
    let leader7 = cluster.wait_leader(READY_TIMEOUT).await;
    let listing_node = leader7.and_then(|l| cluster.nodes.get(&l)).map(|n| (n.grpc.clone(), n.http.clone()));
    let half = Duration::from_secs(a.throughput_seconds) / 2;
    let storm_listing = tokio::spawn(async move {
        let (grpc, http) = listing_node?;
        tokio::time::sleep(half).await;
        let by_state =
            api::ListObjectsRequest { state: "ERROR".into(), limit: LIST_PAGE, ..Default::default() };
        Some((timed_listing(&grpc, by_state).await, state_pages(&http).await))
    });
    let (batched, batched_s, ack2) =
        throughput(&run, &writers, "batch", BATCH_AGENTS, BATCH_SIZE, a.throughput_seconds).await;
    let cpu7_end = cpu_mark(&res);
    let t7_end = run.secs();
    let streamed7_end = run.beats_off_calls();
    match storm_listing.await {
        Ok(Some((listed, pages))) => println!(
            "phase 7 listing from the leader halfway through the batched phase: state=ERROR {}; leader's pages \
             by state: {pages}",
            listing_line(listed)
        ),
        Ok(None) => println!("phase 7 listing during the batched phase: no leader"),
        Err(e) => println!("phase 7 listing during the batched phase: task failed: {e}"),
    }
    acked.extend(ack1);
    acked.extend(ack2);
    let (s_rate, b_rate) = (single as f64 / single_s.max(1e-9), batched as f64 / batched_s.max(1e-9));
    println!(
        "phase 7 throughput: {s_rate:.0} findings/s with {SINGLE_CLIENTS} single-finding clients; {b_rate:.0} \
         findings/s with {BATCH_AGENTS} agents x {BATCH_SIZE}-finding batches; batched/single {:.1}x \
         (heartbeats continuing)",
        b_rate / s_rate.max(1e-9)
    );
    println!(
        "phase 7 findings transport: {}; {} batches answered on streams, {} streams opened",
        if run.ingest_streams {
            "a stream per writer (calls when it cannot carry a batch)"
        } else {
            "single calls"
        },
        run.writes_streamed.load(Ordering::Relaxed),
        run.write_streams_opened.load(Ordering::Relaxed)
    );
    // The machine's CPU per finding in each half, heartbeats included (they go on at the phase 2 rate).
    println!(
        "phase 7 heartbeats meanwhile: {} beats in the single half, {} in the batched half ({} and {} answered \
         {})",
        run.beats_between(t7, t7_half).len(),
        run.beats_between(t7_half, t7_end).len(),
        streamed7_half - streamed7,
        streamed7_end - streamed7_half,
        run.answered_how()
    );
    print_cpu(
        "phase 7 single-finding half:",
        &cpu7,
        &cpu7_half,
        single,
        "committed finding (heartbeats included)",
    );
    print_cpu(
        "phase 7 batched half:",
        &cpu7_half,
        &cpu7_end,
        batched,
        "committed finding (heartbeats included)",
    );
    print_resources(&res, "throughput", t7, run.secs());
    acked.extend(single_without_heartbeats(&run, &writers, &res, a).await);
    println!("phase 7 data dirs: {}", data_dirs(cluster));
    println!("phase 7 archive: {}", archive_line(cluster).await);
    // Every member's builds and log compactions (on its Raft thread) since it started.
    for id in cluster.running() {
        print_snapshot_metrics(cluster, id, "phase 7").await;
    }

    // Phase 6: elections outside the leader kill (over the whole run).
    stop_terms.store(true, Ordering::Relaxed);
    let changes = terms.await.context("the term poller failed")?;
    let outside = elections_outside(&changes, &windows);
    println!(
        "phase 6 elections outside the leader kill: {} (terms seen: {})",
        outside.len(),
        changes.iter().map(|(at, t)| format!("{t}@{at:.1}s")).collect::<Vec<_>>().join(" ")
    );

    run.stop_beats.store(true, Ordering::Relaxed);
    for d in drivers {
        d.await.context("a heartbeat driver failed")?;
    }
    res.stop.store(true, Ordering::Relaxed);
    sampler.await.context("the resource sampler failed")?;
    let (beats, dropped) = {
        let b = lock(&run.beats);
        (b.acked, b.dropped)
    };
    println!(
        "heartbeats over the run: {beats} acknowledged ({dropped} oldest samples dropped), {} carrying an \
         assignment (agents echo the hash they hold), the longest any agent went between two beats sent {:.1} \
         s (silent after {} s), {} errors{}",
        run.assignments.load(Ordering::Relaxed),
        run.longest_gap_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        AGENT_SILENT_AFTER_MS / 1000,
        run.errors.load(Ordering::Relaxed),
        if run.errors.load(Ordering::Relaxed) > 0 {
            format!(", first: {:?}", lock(&run.kept))
        } else {
            String::new()
        }
    );

    print_leader_changes(cluster);

    // Phase 8: nothing acknowledged lost.
    let v = verify(&run, &acked).await.context("phase 8 failed")?;
    println!(
        "phase 8 lost acknowledged findings: {} of {} (checked once on {} objects); {} burst ERRORs recorded \
         without a transition (held by the safety net)",
        v.lost,
        acked.len(),
        v.objects,
        v.untransitioned
    );
    if v.lost > 0 {
        bail!("{} acknowledged findings are missing, e.g. {:?}", v.lost, v.examples);
    }
    print_storage(cluster).await;
    Ok(ExitCode::SUCCESS)
}

/// How long a stopping member may take to exit before the storage breakdown gives up on it.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// Tables printed per member, largest first (the rest summed).
const STORAGE_TABLES: usize = 6;

/// Phase 9, after every measurement: each member stopped (SIGTERM, an orderly shutdown) and its database
/// file broken down: pages in use against the file's size (the rest is free pages redb keeps) and the
/// largest tables, then compacted as `huatuo master --compact` does (the file's size before and after, and
/// the time). A member that does not stop within [`STOP_DEADLINE`] is said so and skipped.
async fn print_storage(cluster: &mut LocalCluster) {
    let ids = cluster.running();
    for id in &ids {
        if let Err(e) = cluster.terminate(*id) {
            println!("phase 9 storage: node {id} could not be stopped: {e}");
        }
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for id in ids {
        let deadline = Instant::now() + STOP_DEADLINE;
        while cluster.exited(id).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if cluster.exited(id).is_none() {
            println!("phase 9 storage: node {id} did not stop within {STOP_DEADLINE:?}; skipped");
            continue;
        }
        let dir = cluster.data_dir(id);
        match tokio::task::spawn_blocking(move || master::raft::storage_usage_of(&dir)).await {
            Ok(Ok((file, u))) => {
                let rest: u64 = u.tables.iter().skip(STORAGE_TABLES).map(|t| t.page_bytes).sum();
                let tables: Vec<String> = u
                    .tables
                    .iter()
                    .take(STORAGE_TABLES)
                    .map(|t| {
                        format!(
                            "{} {:.1} MiB ({} entries, {:.1} MiB stored)",
                            t.name,
                            mib(t.page_bytes),
                            t.entries,
                            mib(t.stored_bytes)
                        )
                    })
                    .collect();
                println!(
                    "phase 9 storage, node {id}: raft.redb {:.1} MiB, {:.1} MiB in use ({:.1} MiB free pages \
                     kept): {}, others {:.1} MiB",
                    mib(file),
                    mib(u.allocated_bytes),
                    mib(file.saturating_sub(u.allocated_bytes)),
                    tables.join(", "),
                    mib(rest)
                );
            }
            Ok(Err(e)) => println!("phase 9 storage: node {id}: {e}"),
            Err(e) => println!("phase 9 storage: node {id}: {e}"),
        }
        // What `huatuo master --compact` gives back on this member, and how long it takes at this size.
        let dir = cluster.data_dir(id);
        match tokio::task::spawn_blocking(move || master::raft::compact_data_dir(&dir)).await {
            Ok(Ok(r)) => println!(
                "phase 9 compaction, node {id}: raft.redb {:.1} -> {:.1} MiB in {:.1} s ({} passes{}), sound \
                 before and after",
                mib(r.before.file_bytes),
                mib(r.after.file_bytes),
                r.took_ms as f64 / 1000.0,
                r.passes,
                if r.more_possible { ", more possible" } else { "" }
            ),
            Ok(Err(e)) => println!("phase 9 compaction: node {id}: {e}"),
            Err(e) => println!("phase 9 compaction: node {id}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_pause_ends_before_an_agent_would_go_silent() {
        // 30 s silent-after, 5 s margin: 25 s for the silence. At a 10-s interval (8-12 s) one beat in a row
        // may be skipped (two intervals, 24 s): a pause of one shortest interval, 8 s.
        assert_eq!(pause_secs(10, 10), 8);
        assert_eq!(pause_secs(10, 60), 8);
        assert_eq!(pause_secs(10, 3), 3, "the throughput phases' length when shorter");
        // 1 s (0.8-1.2 s): 19 beats in a row (20 intervals, 24 s), 15.2 s of pause.
        assert_eq!(pause_secs(1, 60), 15);
        assert_eq!(pause_secs(2, 60), 14);
        // 12 s (14.4 s at most): two intervals are over 25 s, so no beat may be skipped at all.
        assert_eq!(pause_secs(12, 10), 0);
        assert_eq!(pause_secs(3600, 10), 0);
        assert_eq!(pause_secs(u64::MAX / 1000, 10), 0);
    }

    /// The bound checked against the schedule itself (2,000 agents, seeded): at the default 10-s interval a
    /// pause of `pause_secs` leaves no agent 25 s without a beat sent, while the 10-s pause of the first
    /// version left some over the masters' 30 s (they would have been marked silent).
    #[test]
    fn no_agent_goes_silent_through_the_pause_on_the_real_schedule() {
        let longest_silence = |interval_ms: u64, pause_ms: u64| {
            let mut rng = Rng(42);
            let agents: Vec<u32> = (0..2000).collect();
            let mut sched = Schedule::new(&agents, interval_ms, 0, &mut rng);
            let (from, to) = (5 * interval_ms, 5 * interval_ms + pause_ms);
            let mut last: HashMap<u32, u64> = HashMap::new();
            let mut worst = 0;
            for now in (0..to + 4 * interval_ms).step_by(10) {
                while let Some(i) = sched.pop_due(now, &mut rng) {
                    if (from..to).contains(&now) {
                        continue;
                    }
                    if let Some(prev) = last.insert(i, now) {
                        worst = worst.max(now - prev);
                    }
                }
            }
            worst
        };
        let bound = AGENT_SILENT_AFTER_MS - PAUSE_MARGIN_MS;
        for secs in [10, 1] {
            let worst = longest_silence(secs * 1000, pause_secs(secs, 60) * 1000);
            assert!(worst < bound, "every {secs} s: an agent went {worst} ms without a beat");
        }
        assert!(longest_silence(10_000, 10_000) > AGENT_SILENT_AFTER_MS);
    }

    #[test]
    fn log_times_are_read_as_milliseconds_after_a_moment() {
        // 2026-12-04T05:43:11.000Z in Unix milliseconds.
        let kill = 1_796_362_991_000u64;
        assert_eq!(log_ms_after("2026-12-04T05:43:11.218049Z  INFO x", kill), Some(218));
        assert_eq!(log_ms_after("2026-12-04T05:43:10.500000Z  INFO x", kill), Some(-500));
        // Across midnight: a line just after it, from a moment just before.
        assert_eq!(log_ms_after("2026-12-05T00:00:00.100000Z x", 1_796_428_799_900), Some(200));
        for bad in ["", "2026-12-04 05:43:11.218049Z", "2026-12-04T05-43-11.218049Z", "not a time at all, no"]
        {
            assert_eq!(log_ms_after(bad, kill), None, "{bad:?}");
        }
        let log = "\u{1b}[2m2026-12-04T05:43:12.000000Z\u{1b}[0m INFO leader learned the agents term=2\n\
                   2026-12-04T05:43:13.250000Z INFO leader learned the agents term=3\n";
        assert_eq!(last_log_ms(log, "leader learned the agents", kill), Some(2_250));
        assert_eq!(last_log_ms(log, "master node started", kill), None);
    }

    #[test]
    fn leader_lines_are_the_changes_without_colour_and_bounded() {
        let log = "\u{1b}[2m2026-12-03T09:26:33Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[2mraft\u{1b}[0m\u{1b}[2m:\u{1b}[0m \
                   stepped down to follower since quorum is not active node=1\n\
                   2026-12-03T09:26:34Z  INFO master::api: a heartbeat\n\
                   2026-12-03T09:26:35Z  WARN master::raft::fsync_stats: slow raft turn node=1 turn_ms=1158\n\
                   2026-12-03T09:26:36Z  INFO master::api::duties: leader learned the agents recorded alive agents=3 term=3\n";
        assert_eq!(
            leader_lines(log),
            vec![
                "2026-12-03T09:26:33Z  WARN raft: stepped down to follower since quorum is not active node=1",
                "2026-12-03T09:26:35Z  WARN master::raft::fsync_stats: slow raft turn node=1 turn_ms=1158",
                "2026-12-03T09:26:36Z  INFO master::api::duties: leader learned the agents recorded alive agents=3 term=3",
            ]
        );
        let many: String = (0..50).map(|t| format!("x leader learned the agents term={t}\n")).collect();
        let kept = leader_lines(&many);
        assert_eq!(kept.len(), MAX_LEADER_LINES);
        assert!(kept[0].ends_with("term=30") && kept[19].ends_with("term=49"), "the newest kept: {kept:?}");
    }

    #[test]
    fn failover_rows_split_the_window_by_second_then_the_rest() {
        // Kill at 100 s, window until 125.5 s: beats at 100.2 (5 ms), 100.7 (900 ms), 103.1 (40 ms), 122 (7 ms),
        // one before the kill and one after the window; errors at 100.1 and 100.4.
        let beats = [(99.0, 1.0), (100.2, 5.0), (100.7, 900.0), (103.1, 40.0), (122.0, 7.0), (126.0, 1.0)];
        let rows = failover_rows(&beats, &[100.1, 100.4], 100.0, 125.5);
        assert_eq!(rows.len(), FAILOVER_ROWS + 1);
        assert_eq!((rows[0].acked, rows[0].errors, rows[0].max), (2, 2, 900.0));
        assert_eq!((rows[3].acked, rows[3].p99), (1, 40.0));
        assert!(rows[1].p50.is_nan() && rows[1].acked == 0);
        let last = &rows[FAILOVER_ROWS];
        assert_eq!((last.from, last.to, last.acked, last.errors), (20.0, 25.5, 1, 0));
        // A window shorter than the one-second rows has no rest row and its last row ends with it.
        let short = failover_rows(&beats, &[], 100.0, 102.5);
        assert_eq!(short.len(), 3);
        assert_eq!((short[2].from, short[2].to), (2.0, 2.5));
    }

    #[test]
    fn samples_keep_the_newest_at_their_bound() {
        let mut s = Samples::new(4);
        for t in 0..10 {
            s.push(f64::from(t), f64::from(t) * 10.0);
        }
        assert_eq!((s.acked, s.dropped, s.kept.len()), (10, 6, 4));
        // The window of the last phase is whole; what fell out of the bound is gone.
        assert_eq!(s.between(6.0, 10.0), vec![60.0, 70.0, 80.0, 90.0]);
        assert!(s.between(0.0, 6.0).is_empty());
        s.push(10.0, 1.0);
        assert_eq!((s.acked, s.dropped, s.between(0.0, 11.0).len()), (11, 7, 4));
    }

    #[test]
    fn each_connection_drives_a_disjoint_share_of_the_agents() {
        let (agents, conns) = (1003u32, 200u32);
        let mut all: Vec<u32> = (0..conns).flat_map(|c| agents_of(c, conns, agents)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..agents).collect::<Vec<_>>(), "every agent exactly once");
        let sizes: Vec<usize> = (0..conns).map(|c| agents_of(c, conns, agents).len()).collect();
        assert!(sizes.iter().all(|s| (5..=6).contains(s)), "balanced: {sizes:?}");
        // More connections than agents: the extra ones drive nobody.
        assert!(agents_of(7, 10, 5).is_empty());
    }

    #[test]
    fn the_schedule_spreads_first_beats_and_keeps_each_agent_within_its_jitter() {
        let agents: Vec<u32> = (0..500).collect();
        let mut rng = Rng(9);
        let interval = 10_000u64;
        let mut s = Schedule::new(&agents, interval, 0, &mut rng);
        let mut beats: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        // A clock that keeps up: step 1 ms over 10 intervals.
        for now in 0..10 * interval {
            while let Some(a) = s.pop_due(now, &mut rng) {
                beats.entry(a).or_default().push(now);
            }
        }
        assert_eq!(beats.len(), 500, "every agent beats");
        let firsts: Vec<u64> = beats.values().map(|v| v[0]).collect();
        assert!(firsts.iter().all(|f| *f < interval), "first beats within one interval");
        assert!(firsts.iter().any(|f| *f < interval / 4) && firsts.iter().any(|f| *f > 3 * interval / 4));
        for v in beats.values() {
            for g in v.windows(2) {
                let gap = g[1] - g[0];
                assert!((8_000..=12_001).contains(&gap), "gap {gap} outside +-20%");
            }
        }
    }

    #[test]
    fn a_schedule_that_falls_behind_does_not_catch_up_in_a_storm() {
        let mut rng = Rng(1);
        let mut s = Schedule::new(&[1, 2, 3], 1000, 0, &mut rng);
        // The clock jumps 100 intervals: each agent beats once, then not again before about an interval.
        let now = 100_000;
        let mut fired = Vec::new();
        while let Some(a) = s.pop_due(now, &mut rng) {
            fired.push(a);
        }
        fired.sort_unstable();
        assert_eq!(fired, vec![1, 2, 3]);
        assert!(s.next_due().is_some_and(|d| d >= now + 800));
        assert_eq!(s.pop_due(now + 799, &mut rng), None);
    }

    #[test]
    fn retry_pauses_double_up_to_their_limit() {
        let p: Vec<u64> = (1..=MAX_CALL_ATTEMPTS).map(|a| retry_pause(a).as_millis() as u64).collect();
        assert_eq!(&p[..6], &[200, 400, 800, 1600, 3200, 5000]);
        assert!(p[6..].iter().all(|x| *x == 5000), "capped: {p:?}");
        assert_eq!(retry_pause(u32::MAX), MAX_RETRY_PAUSE, "no overflow far past the limit");
        // The whole budget of one call: about a minute of pauses, plus the attempts' own timeouts.
        let total: u64 = p[..p.len() - 1].iter().sum();
        assert!((30_000..=60_000).contains(&total), "{total}");
    }

    #[test]
    fn agents_added_as_they_register_beat_from_their_due_time() {
        let mut rng = Rng(2);
        let mut s = Schedule::new(&[], 1000, 0, &mut rng);
        assert_eq!((s.next_due(), s.pop_due(u64::MAX, &mut rng)), (None, None), "nobody registered yet");
        s.add(4, 500);
        s.add(9, 200);
        assert_eq!(s.pop_due(199, &mut rng), None);
        assert_eq!(s.pop_due(600, &mut rng), Some(9));
        assert_eq!(s.pop_due(600, &mut rng), Some(4));
        assert_eq!(s.pop_due(600, &mut rng), None, "each rescheduled about an interval later");
    }

    #[test]
    fn distinct_samples_are_distinct_in_range_and_capped_at_n() {
        let mut rng = Rng(3);
        let v = sample_distinct(1_000_000_000, 2000, &mut rng);
        let set: std::collections::BTreeSet<u64> = v.iter().copied().collect();
        assert_eq!((v.len(), set.len()), (2000, 2000));
        assert!(v.iter().all(|x| *x < 1_000_000_000));
        let mut all = sample_distinct(720, 2000, &mut rng);
        all.sort_unstable();
        assert_eq!(all, (0..720).collect::<Vec<_>>(), "k >= n: every value once");
        assert!(sample_distinct(0, 5, &mut rng).is_empty());
    }

    #[test]
    fn the_plan_scales_background_and_burst_to_the_run() {
        let mut rng = Rng(5);
        // 5,000 hosts x 15 objects for 60 s: 75,000 x 0.001 / 60 = 1.25 -> 2 background findings; 2,000 disks.
        let p = plan_findings(5000, 12, 60_000, &mut rng);
        let bg: Vec<&Planned> = p.iter().filter(|x| !x.burst).collect();
        let burst: Vec<&Planned> = p.iter().filter(|x| x.burst).collect();
        assert_eq!((bg.len(), burst.len()), (2, 2000));
        assert!(bg.iter().all(|x| !x.object.starts_with("disk/") && x.severity == "WARNING"));
        assert!(burst.iter().all(|x| x.object.starts_with("disk/") && x.severity == "ERROR"));
        let objs: std::collections::BTreeSet<&str> = burst.iter().map(|x| x.object.as_str()).collect();
        assert_eq!(objs.len(), 2000, "distinct disks");
        // In the middle of the phase, for at most half of it, sorted by due time.
        assert!(burst.iter().all(|x| (15_000..45_000).contains(&x.due_ms)));
        assert!(p.windows(2).all(|w| w[0].due_ms <= w[1].due_ms));
        // Each burst finding is about a disk of its own agent's host.
        assert!(burst.iter().all(|x| x.object.starts_with(&format!("disk/{}/", host(x.agent)))));
        // A tiny run: at most the disks that exist, at least one background finding.
        let p = plan_findings(60, 12, 3000, &mut rng);
        assert_eq!(p.iter().filter(|x| x.burst).count(), 720);
        assert_eq!(p.iter().filter(|x| !x.burst).count(), 1);
    }

    #[test]
    fn objects_of_a_host_are_its_machine_disks_and_nics() {
        let names: Vec<String> = (0..15).map(|k| object(7, k, 12)).collect();
        assert_eq!(names[0], "machine/fleet-000007");
        assert_eq!(names[1], "disk/fleet-000007/d0");
        assert_eq!(names[12], "disk/fleet-000007/d11");
        assert_eq!(names[13], "nic/fleet-000007/eth0");
        assert_eq!(names[14], "nic/fleet-000007/eth1");
        for n in &names {
            assert!(n.parse::<state_machines::ObjectId>().is_ok(), "{n} parses as an object id");
        }
    }

    #[test]
    fn resources_summarize_over_restarts_and_elections_outside_windows_are_counted() {
        let s = |at: f64, pid: u32, ticks: u64, rss: u64| ResSample { at, pid, ticks, rss };
        // 100 ticks per second = one core at 100%; the restart (pid 2) starts a new count.
        let v = vec![s(0.0, 1, 0, 10), s(1.0, 1, 100, 30), s(2.0, 2, 5, 20), s(3.0, 2, 55, 20)];
        let (rss, cpu) = summarize(&v, 0.0, 3.0).expect("samples");
        assert_eq!(rss, 30);
        assert!((cpu - 75.0).abs() < 1e-9, "{cpu}");
        assert_eq!(summarize(&v, 0.5, 1.5), None, "one sample is not a rate");
        let changes = vec![(0.1, 2), (5.0, 3), (20.0, 4), (21.0, 5)];
        let out = elections_outside(&changes, &[(19.0, 20.5)]);
        assert_eq!(out, vec![(5.0, 3), (21.0, 5)]);
        assert!(elections_outside(&[(0.0, 7)], &[]).is_empty(), "the first observation is not an election");
    }

    #[test]
    fn an_acknowledged_finding_shows_only_with_new_enough_evidence_of_its_checker() {
        let mut f = finding("disk/h/d0".into(), "ERROR", BURST_CHECKER);
        f.time_ms = 100;
        let mut r = api::GetObjectResponse {
            object: Some(api::Object { evidence: vec![f], ..Default::default() }),
            ..Default::default()
        };
        assert!(shows(&r, BURST_CHECKER, 100));
        assert!(!shows(&r, BURST_CHECKER, 101), "older evidence does not show a newer ack");
        assert!(!shows(&r, BACKGROUND_CHECKER, 1), "another checker's evidence does not count");
        assert!(!shows(&api::GetObjectResponse::default(), BURST_CHECKER, 1), "no object");
        assert!(!transitioned(&r));
        r.history.push(api::HistoryEntry { what: "register".into(), ..Default::default() });
        assert!(!transitioned(&r), "a registration is not a transition");
        r.history.push(api::HistoryEntry { what: "transition".into(), ..Default::default() });
        assert!(transitioned(&r));
    }

    /// `--beat-transport` defaults to datagrams; `--beat-calls` means calls only and cannot be combined
    /// with a transport.
    #[test]
    fn the_heartbeat_transport_is_datagrams_streams_or_calls() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: BenchFleetArgs,
        }
        let parse = |args: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(std::iter::once("fleet").chain(args.iter().copied()))
                .map(|c| c.a)
        };
        let default = parse(&[]).unwrap();
        assert!(default.beat_datagrams() && !default.beat_streams());
        let streams = parse(&["--beat-transport", "stream"]).unwrap();
        assert!(streams.beat_streams() && !streams.beat_datagrams());
        let calls = parse(&["--beat-calls"]).unwrap();
        assert!(!calls.beat_streams() && !calls.beat_datagrams());
        assert!(parse(&["--beat-calls", "--beat-transport", "stream"]).is_err());
        assert!(parse(&["--beat-transport", "pigeon"]).is_err());
    }

    /// One group's socket: answers in another order than the beats were sent are each handed to their own
    /// beat; a stray packet, a reply sealed with another key and one to a seq no beat waits for are
    /// dropped; NOT_LEADER names the leader; a beat with no answer times out; no entry stays pending.
    #[tokio::test]
    async fn beat_datagrams_are_matched_to_their_beats_by_seq() {
        let key = BeatKey::open();
        let master = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = master.local_addr().unwrap();
        let udp = BeatSocket::bind(to, key.clone()).await.unwrap();
        let req = |i: u32| api::HeartbeatRequest { agent: agent_id(i), ..Default::default() };
        let serve = async {
            let mut buf = vec![0u8; datagram::MAX_DATAGRAM];
            let mut got = Vec::new();
            for _ in 0..3 {
                let (n, from) = master.recv_from(&mut buf).await.unwrap();
                let o = datagram::open(&buf[..n], &key).unwrap();
                assert_eq!(o.kind, Kind::Beat);
                got.push((o.seq, api::HeartbeatRequest::decode(o.payload).unwrap().agent, from));
            }
            let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
            assert!(seqs.iter().collect::<std::collections::HashSet<_>>().len() == 3, "{seqs:?}");
            let mut out = Vec::new();
            let from = got[0].2;
            master.send_to(b"junk", from).await.unwrap();
            let other = BeatKey::from_digest(&[7; 32]);
            let ok = |agent: &str| api::BeatReply {
                response: Some(api::HeartbeatResponse {
                    assignment_hash: agent.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            datagram::seal(&other, Kind::Reply, got[0].0, &ok("forged"), &mut out).unwrap();
            master.send_to(&out, from).await.unwrap();
            datagram::seal(&key, Kind::Reply, seqs.iter().max().unwrap() + 1, &ok("nobody"), &mut out)
                .unwrap();
            master.send_to(&out, from).await.unwrap();
            // Last sent, first answered.
            for (seq, agent, from) in got.iter().rev() {
                let reply = if agent == &agent_id(3) {
                    api::BeatReply {
                        code: "NOT_LEADER".into(),
                        leader: "127.0.0.1:1".into(),
                        ..Default::default()
                    }
                } else {
                    ok(agent)
                };
                datagram::seal(&key, Kind::Reply, *seq, &reply, &mut out).unwrap();
                master.send_to(&out, from).await.unwrap();
            }
        };
        let limit = Duration::from_secs(10);
        let (r1, r2, r3) = (req(1), req(2), req(3));
        let (a, b, c, ()) = tokio::join!(
            udp.exchange(to, &r1, limit, None),
            udp.exchange(to, &r2, limit, None),
            udp.exchange(to, &r3, limit, None),
            serve
        );
        assert_eq!(a.unwrap().assignment_hash, agent_id(1));
        assert_eq!(b.unwrap().assignment_hash, agent_id(2));
        assert_eq!(c, Err(Miss::NotLeader(Some("127.0.0.1:1".into()))));
        let silent = udp.exchange(to, &req(4), Duration::from_millis(50), None).await;
        assert_eq!(silent, Err(Miss::Silent));
        assert!(lock(&udp.pending).is_empty(), "a beat's entry stayed pending");
    }

    #[test]
    fn bad_arguments_are_refused() {
        let ok = BenchFleetArgs {
            agents: 10,
            objects_per_host: 15,
            connections: 4,
            steady_seconds: 3,
            heartbeat_secs: 1,
            throughput_seconds: 1,
            seed: None,
            skip_kills: false,
            data_dir: None,
            cache_mb: None,
            beat_transport: BeatTransport::Datagram,
            beat_calls: false,
            ingest_calls: false,
            writer_connections: 0,
        };
        assert!(ok.check().is_ok());
        assert_eq!(ok.disks(), 12);
        let bad = [
            BenchFleetArgs { agents: 0, ..clone(&ok) },
            BenchFleetArgs { agents: MAX_AGENTS + 1, ..clone(&ok) },
            BenchFleetArgs { objects_per_host: MIN_OBJECTS_PER_HOST - 1, ..clone(&ok) },
            BenchFleetArgs { objects_per_host: MAX_OBJECTS_PER_HOST + 1, ..clone(&ok) },
            BenchFleetArgs { connections: MAX_CONNECTIONS + 1, ..clone(&ok) },
            BenchFleetArgs { steady_seconds: 0, ..clone(&ok) },
            BenchFleetArgs { heartbeat_secs: 0, ..clone(&ok) },
            BenchFleetArgs { data_dir: Some("/nonexistent/fleet".into()), ..clone(&ok) },
            BenchFleetArgs { cache_mb: Some(7), ..clone(&ok) },
            BenchFleetArgs { cache_mb: Some(65_537), ..clone(&ok) },
        ];
        for b in bad {
            assert!(b.check().is_err(), "{b:?} accepted");
        }
        // The limits themselves are accepted.
        let edge = BenchFleetArgs {
            agents: MAX_AGENTS,
            objects_per_host: MIN_OBJECTS_PER_HOST,
            connections: MAX_CONNECTIONS,
            cache_mb: Some(8),
            ..clone(&ok)
        };
        assert!(edge.check().is_ok());
        assert_eq!(edge.disks(), 1);
    }

    fn clone(a: &BenchFleetArgs) -> BenchFleetArgs {
        BenchFleetArgs {
            agents: a.agents,
            objects_per_host: a.objects_per_host,
            connections: a.connections,
            steady_seconds: a.steady_seconds,
            heartbeat_secs: a.heartbeat_secs,
            throughput_seconds: a.throughput_seconds,
            seed: a.seed,
            skip_kills: a.skip_kills,
            data_dir: a.data_dir.clone(),
            cache_mb: a.cache_mb,
            beat_transport: a.beat_transport,
            beat_calls: a.beat_calls,
            ingest_calls: a.ingest_calls,
            writer_connections: a.writer_connections,
        }
    }
}
