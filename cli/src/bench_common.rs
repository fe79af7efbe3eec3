//! What the benchmarks that drive a real master cluster share (`huatuo bench rollout`, `bench master`,
//! `bench e2e`, `bench fleet`): a seeded generator for jitter, percentiles, the connections to every node
//! with leader following for simulated agents, and what they read about a master process from /proc
//! (CPU ticks, RSS, bytes written) and from its data dir and `/metrics`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::api::master_client::MasterClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

/// gRPC message limit of the benchmarks' connections (as proto::client::MAX_MESSAGE).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Connect timeout of each connection to a master node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Leader moves of a simulated fleet printed (during an election a fleet may bounce between the dead leader
/// and a follower that still names it; the rest are counted in [`Fleet::moves`]).
pub const MAX_MOVES_PRINTED: u64 = 5;
/// Most bytes read from one `/metrics` answer (a node's metrics are a few KiB; a bigger answer is a bug,
/// not something to buffer without end).
pub const MAX_METRICS_BYTES: usize = 4 << 20;
/// Timeout of one `/metrics` scrape.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most directory entries one data-dir walk visits (a master's data dir holds a handful of files; the bound
/// keeps a wrong path such as `/` from walking a whole disk).
pub const MAX_DIR_ENTRIES: usize = 100_000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// splitmix64: a tiny seeded generator, so a run's jitter replays from its printed seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// `interval` +- `pct` percent, uniformly (pct is capped at 100: never a negative wait).
    pub fn jittered(&mut self, interval_ms: u64, pct: u64) -> Duration {
        let spread = interval_ms.saturating_mul(pct.min(100)) / 100;
        let low = interval_ms - spread;
        Duration::from_millis(low + self.below(spread.saturating_mul(2).saturating_add(1)))
    }
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank; NaN for no samples.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// "p50 X ms, p99 Y ms, max Z ms (N samples)" of unsorted latencies in ms.
pub fn latency_summary(samples: Vec<f64>) -> String {
    let s = sorted(samples);
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        pct(&s, 0.5),
        pct(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN),
        s.len()
    )
}

/// The connections to every master node (`connections` each) and which node the simulated fleet believes
/// leads: agent calls must reach the leader, so a NOT_LEADER answer moves every agent to the leader it
/// names (or, when the node is unreachable, to the next node).
pub struct Fleet {
    pub nodes: Vec<String>,
    pub pools: Vec<Vec<MasterClient<Channel>>>,
    pub leader: AtomicUsize,
    /// Times the fleet moved to another node.
    pub moves: AtomicU64,
}

impl Fleet {
    /// Open `connections` HTTP/2 connections to each of `nodes`; `leader` is the index of the node
    /// believed to lead.
    pub async fn connect(nodes: Vec<String>, connections: u32, leader: usize) -> anyhow::Result<Fleet> {
        let mut pools = Vec::new();
        for node in &nodes {
            let mut pool = Vec::new();
            for _ in 0..connections {
                pool.push(connect(node).await?);
            }
            pools.push(pool);
        }
        Ok(Fleet { nodes, pools, leader: AtomicUsize::new(leader), moves: AtomicU64::new(0) })
    }

    /// The node believed to lead.
    pub fn leader_node(&self) -> usize {
        self.leader.load(Ordering::Relaxed) % self.pools.len()
    }

    /// The node believed to lead and connection `k` to it.
    pub fn client(&self, k: usize) -> (usize, MasterClient<Channel>) {
        let node = self.leader_node();
        let pool = &self.pools[node];
        (node, pool[k % pool.len()].clone())
    }

    /// A call to `node` failed with `status`: on NOT_LEADER naming the leader, follow it; when the node is
    /// unreachable, try the next one. A node that knows no leader yet is asked again (it learns the new
    /// leader within an election). Only the first agent to notice moves the fleet (compare-and-swap from
    /// the node it used), so a thousand agents do not ping-pong between nodes.
    pub fn not_leader(&self, node: usize, status: &tonic::Status) {
        let e = proto::error::ApiError::from(status.clone());
        let next = match e.code {
            proto::error::Code::NotLeader => {
                match e.leader.as_deref().and_then(|l| self.nodes.iter().position(|n| n == l)) {
                    Some(n) => n,
                    None => return,
                }
            }
            proto::error::Code::Unavailable
                if status.metadata().get(proto::error::CODE_METADATA).is_none() =>
            {
                (node + 1) % self.nodes.len()
            }
            _ => return,
        };
        if next != node
            && self.leader.compare_exchange(node, next, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            && self.moves.fetch_add(1, Ordering::Relaxed) < MAX_MOVES_PRINTED
        {
            eprintln!("fleet: agents move from {} to {} ({})", self.nodes[node], self.nodes[next], e.message);
        }
    }
}

/// A simulated agent's open stream (`HeartbeatStream`, `IngestStream`) on node `node`: one request in
/// flight, each answered by one response, as a real agent's `proto::client::CallStream` keeps one.
pub struct AgentStream<Q, A> {
    pub node: usize,
    tx: tokio::sync::mpsc::Sender<Q>,
    rx: tonic::Streaming<A>,
}

impl<Q, A> AgentStream<Q, A> {
    /// Open one on `node` (the node `c` is connected to) with `open` (the client's stream method), within
    /// `limit`: the master's refusal (NOT_LEADER, RESOURCE_EXHAUSTED) as its status, a timeout as `None`.
    pub async fn open<F, Fut>(
        node: usize,
        c: MasterClient<Channel>,
        limit: Duration,
        open: F,
    ) -> Option<Result<Self, tonic::Status>>
    where
        F: FnOnce(MasterClient<Channel>, tokio_stream::wrappers::ReceiverStream<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<A>>, tonic::Status>>,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let opened = tokio::time::timeout(limit, open(c, tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .ok()?;
        Some(opened.map(|r| AgentStream { node, tx, rx: r.into_inner() }))
    }

    /// One request and its answer: `Ok(None)` when the stream ended (the request was not read, or not
    /// answered) or no answer came within `limit`, the master's error when it refused the request (the stream
    /// ends with it). Either way the caller drops the stream and sends the request as a call.
    pub async fn exchange(&mut self, req: Q, limit: Duration) -> Result<Option<A>, tonic::Status> {
        let exchange = async {
            if self.tx.send(req).await.is_err() {
                return Ok(None);
            }
            self.rx.message().await
        };
        tokio::time::timeout(limit, exchange).await.unwrap_or(Ok(None))
    }
}

pub async fn connect(addr: &str) -> anyhow::Result<MasterClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connect to the master at {addr}"))?;
    Ok(MasterClient::new(ch).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE))
}

/// Open every quota of `cluster` (no quota rules, no spike latch): each fault a benchmark injects must be
/// a transition, not a proposal held for an operator (that is the safety net working, not the path
/// measured).
pub async fn open_quotas(cluster: &master::cluster::LocalCluster, by: &str) -> anyhow::Result<()> {
    let mut safety = master::safety::SafetyConfig { quotas: Vec::new(), ..Default::default() };
    safety.spike.min = u64::from(u32::MAX);
    let req = proto::api::SetQuotasRequest {
        quotas: Vec::new(),
        by: by.into(),
        reason: "benchmark: measure the fault path without quota holds".into(),
        config_json: serde_json::to_string(&safety)?,
    };
    cluster
        .client()
        .call(req, |mut c, r| async move { c.set_quotas(r).await })
        .await
        .map_err(|e| anyhow::anyhow!("opening the quotas: {e}"))?;
    Ok(())
}

/// CPU ticks (utime + stime) of a process.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// Resident set size of a process in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS in /proc/PID/status")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// `wchar` of /proc/PID/io (bytes written through write-like calls, sockets included), if readable.
pub fn wchar(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok())
}

/// The machine's count of connections its listeners dropped because their accept queue was full
/// (`TcpExt: ListenOverflows` of /proc/net/netstat), if readable. Machine-wide, so a bench prints the
/// difference over its run: each drop costs the connecting client a SYN retry after a second.
pub fn listen_overflows() -> Option<u64> {
    parse_netstat(&std::fs::read_to_string("/proc/net/netstat").ok()?, "TcpExt:", "ListenOverflows")
}

/// One counter of /proc/net/netstat: a header line of names and the next line of values share a prefix.
fn parse_netstat(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// "listen overflows on this machine during the run: N" (or why it is unknown), from a count taken at the start.
pub fn listen_overflows_line(at_start: Option<u64>) -> String {
    match (at_start, listen_overflows()) {
        (Some(a), Some(b)) => format!(
            "listen overflows on this machine during the run: {} (connections dropped at a full accept queue; \
             each retried after a second)",
            b.saturating_sub(a)
        ),
        _ => "listen overflows on this machine during the run: unknown (/proc/net/netstat unreadable)".into(),
    }
}

/// Linux reports utime/stime in USER_HZ ticks, fixed at 100 on every architecture we run on (as in
/// `huatuo bench agent`).
pub fn clock_ticks() -> f64 {
    100.0
}

pub struct Sample {
    pub at: Instant,
    pub ticks: u64,
    pub wchar: Option<u64>,
}

pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    Ok(Sample { at: Instant::now(), ticks: cpu_ticks(pid)?, wchar: wchar(pid) })
}

/// CPU use between two samples of one process, in percent of one core.
pub fn cpu_pct(a: &Sample, b: &Sample) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    (b.ticks.saturating_sub(a.ticks)) as f64 / clock_ticks() / secs * 100.0
}

/// The whole machine's CPU ticks from the `cpu` lines of /proc/stat: (busy, total, steal, cores). Busy is
/// user, nice, system, irq, softirq and steal; total adds idle and iowait (guest time is already inside
/// user). Steal is the time the hypervisor ran something else while this machine's CPUs wanted to run: on
/// a shared host it is how a slow day shows.
pub fn machine_ticks() -> anyhow::Result<(u64, u64, u64, u32)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat")?)
}

fn parse_proc_stat(text: &str) -> anyhow::Result<(u64, u64, u64, u32)> {
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().context("a /proc/stat cpu field is not a number"))
        .collect::<anyhow::Result<_>>()?;
    if f.len() < 8 {
        bail!("the /proc/stat cpu line has {} fields, want at least 8", f.len());
    }
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    let total = busy + f[3] + f[4];
    let cores = text
        .lines()
        .filter(|l| l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())))
        .count();
    Ok((busy, total, f[7], u32::try_from(cores).unwrap_or(u32::MAX).max(1)))
}

/// CPU counters at one moment: the machine's, this process's, and each master member's (node id, pid,
/// ticks). [`cpu_between`] turns two marks into CPU time per operation.
#[derive(Debug, Clone)]
pub struct CpuMark {
    pub at: Instant,
    pub busy: u64,
    pub total: u64,
    pub steal: u64,
    pub cores: u32,
    pub own: u64,
    pub members: Vec<(u64, u32, u64)>,
}

/// Mark the CPU counters now; `members` are (node id, pid). A member whose /proc entry is gone (killed
/// between the caller's copy of the pids and this read) is left out.
pub fn cpu_mark(members: &[(u64, u32)]) -> anyhow::Result<CpuMark> {
    let (busy, total, steal, cores) = machine_ticks()?;
    Ok(CpuMark {
        at: Instant::now(),
        busy,
        total,
        steal,
        cores,
        own: cpu_ticks(std::process::id())?,
        members: members.iter().filter_map(|&(id, pid)| Some((id, pid, cpu_ticks(pid).ok()?))).collect(),
    })
}

/// CPU used between two marks, in seconds of CPU (a member is counted only when it ran as the same
/// process at both marks; one restarted between them is named apart).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUse {
    pub secs: f64,
    pub cores: u32,
    /// Busy CPU seconds of the whole machine (every process, the kernel's interrupts included).
    pub busy: f64,
    /// Busy share of the machine (0..=1): busy ticks over total ticks.
    pub busy_share: f64,
    /// Share of the machine's time the hypervisor took (0..=1; inside `busy`).
    pub steal_share: f64,
    pub own: f64,
    pub members: Vec<(u64, f64)>,
    pub restarted: Vec<u64>,
}

pub fn cpu_between(a: &CpuMark, b: &CpuMark) -> CpuUse {
    let t = clock_ticks();
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let busy = b.busy.saturating_sub(a.busy) as f64 / t;
    let total = b.total.saturating_sub(a.total) as f64 / t;
    let steal = b.steal.saturating_sub(a.steal) as f64 / t;
    let mut members = Vec::new();
    let mut restarted = Vec::new();
    for &(id, pid, ticks) in &a.members {
        match b.members.iter().find(|m| m.0 == id) {
            Some(&(_, p2, t2)) if p2 == pid => members.push((id, t2.saturating_sub(ticks) as f64 / t)),
            _ => restarted.push(id),
        }
    }
    CpuUse {
        secs,
        cores: b.cores,
        busy,
        busy_share: if total > 0.0 { (busy / total).min(1.0) } else { 0.0 },
        steal_share: if total > 0.0 { (steal / total).min(1.0) } else { 0.0 },
        own: b.own.saturating_sub(a.own) as f64 / t,
        members,
        restarted,
    }
}

impl CpuUse {
    /// "CPU per <what>: N us of the machine's busy time (B of C cores busy over S s): members 1 N us, ...;
    /// this process N us; the rest N us; stolen by the hypervisor P%": CPU seconds divided by `ops`. The rest
    /// is every other process on the machine and the kernel's own work (loopback networking's softirqs land
    /// there in part); the stolen share of the machine's time is counted as busy (inside the rest).
    pub fn per_op_line(&self, ops: u64, what: &str, this_process: &str) -> String {
        if ops == 0 {
            return format!("CPU per {what}: none done over {:.1} s", self.secs);
        }
        let us = |cpu: f64| cpu / ops as f64 * 1e6;
        let members: f64 = self.members.iter().map(|m| m.1).sum();
        let parts: Vec<String> =
            self.members.iter().map(|(id, cpu)| format!("member {id} {:.1} us", us(*cpu))).collect();
        let mut line = format!(
            "CPU per {what}: {:.1} us of the machine's busy time ({:.2} of {} cores busy over {:.1} s, {ops} \
             done): {}; {this_process} {:.1} us; the rest {:.1} us; stolen by the hypervisor {:.1}% of the \
             machine's time",
            us(self.busy),
            self.busy_share * f64::from(self.cores),
            self.cores,
            self.secs,
            parts.join(", "),
            us(self.own),
            us((self.busy - members - self.own).max(0.0)),
            self.steal_share * 100.0,
        );
        if !self.restarted.is_empty() {
            let r: Vec<String> = self.restarted.iter().map(u64::to_string).collect();
            line.push_str(&format!(" (member {} restarted in between: not counted apart)", r.join(", ")));
        }
        line
    }
}

/// Bytes of the regular files under `dir` (apparent sizes), at most [`MAX_DIR_ENTRIES`] entries; a file's
/// own size when `dir` is a file.
pub fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            seen += 1;
            if seen > MAX_DIR_ENTRIES {
                bail!("more than {MAX_DIR_ENTRIES} entries under {}", dir.display());
            }
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                total += e.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// The body of `GET /metrics` from a node's HTTP address (plain HTTP/1.0 on loopback; the benchmarks'
/// clusters run `--insecure`).
pub async fn scrape_metrics(http_addr: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(http_addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {http_addr}\r\n\r\n").as_bytes()).await?;
        let mut body = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if body.len() + n > MAX_METRICS_BYTES {
                bail!("/metrics answer over {MAX_METRICS_BYTES} bytes");
            }
            body.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(body)
    };
    let raw = tokio::time::timeout(METRICS_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("/metrics of {http_addr} timed out after {METRICS_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        bail!("/metrics of {http_addr}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// The value of the unlabelled sample `name` (with its `huatuo_master_` prefix) in a `/metrics` body; 0 when
/// absent.
pub fn metric_value(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            if k == name { v.trim().parse::<f64>().ok() } else { None }
        })
        .map_or(0, |v| v as u64)
}

/// Each running member's archive figures from its `/metrics`: entries archived, and entries dropped because
/// the writer fell behind (its queue full). A bench that drives the masters harder than the archive keeps
/// up with says so here.
pub async fn archive_line(cluster: &master::cluster::LocalCluster) -> String {
    let mut parts = Vec::new();
    for id in cluster.running() {
        let Some(n) = cluster.nodes.get(&id) else { continue };
        parts.push(match scrape_metrics(&n.http).await {
            Ok(m) => format!(
                "node {id}: {} entries archived, {} dropped",
                metric_value(&m, "huatuo_master_archive_entries_total"),
                metric_value(&m, "huatuo_master_archive_dropped_entries_total")
            ),
            Err(e) => format!("node {id}: /metrics unreadable ({e:#})"),
        });
    }
    parts.join("; ")
}

/// Timeout of each write attempt while measuring a failover (short: the figure's resolution).
pub const FAILOVER_ATTEMPT: Duration = Duration::from_millis(500);
/// Pause between failover attempts that failed at once (connection refused, no leader known). The benches
/// retry on their own at this pace, one attempt per call: the client's capped backoff (up to
/// `proto::client::BACKOFF_MAX` between attempts) would add its own wait to the cluster's failover time.
pub const FAILOVER_PAUSE: Duration = Duration::from_millis(10);

/// Runs a benchmark until it ends or this process is asked to stop (SIGINT, SIGTERM or SIGHUP). On a
/// signal the benchmark's future is dropped, and with it every `LocalCluster` it holds, whose `Drop` kills
/// the master processes. A signal runs no destructor by itself: a `kill` of a bench used to leave its
/// three masters running (on their ports, with their data). The error names the signal.
pub async fn until_stopped<T>(bench: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let name = tokio::select! {
        r = bench => return r,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    };
    anyhow::bail!("stopped by {name}: the masters this benchmark started were stopped")
}

/// Bytes hashed, and bytes of fresh memory written, by [`machine_line`].
const CALIBRATE_BYTES: usize = 64 << 20;
/// Small synced writes timed by [`machine_line`].
const CALIBRATE_SYNCS: usize = 20;

/// One line describing how fast this machine is right now, measured before a benchmark starts its cluster,
/// so figures taken on different days can be set side by side (the same code has measured twice as slow
/// from one day to the next here): SHA-256 over 64 MiB (CPU), 64 MiB of fresh memory written (page faults,
/// which a virtual machine may back lazily), and the median of 20 synced 4 KiB appends in the temp dir
/// (where the clusters keep their data).
pub fn machine_line() -> String {
    use sha2::Digest;
    let data = vec![7u8; CALIBRATE_BYTES];
    let t = Instant::now();
    std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(&data)));
    let hash_s = t.elapsed().as_secs_f64();
    // Taken while `data` still holds its memory, so the allocator cannot hand the same pages back.
    let t = Instant::now();
    let fresh = std::hint::black_box(vec![1u8; CALIBRATE_BYTES]);
    let touch_s = t.elapsed().as_secs_f64();
    drop((data, fresh));
    let mib = (CALIBRATE_BYTES >> 20) as f64;
    let sync = sync_median_ms().map_or_else(|e| format!("unknown ({e})"), |ms| format!("{ms:.2} ms"));
    format!(
        "machine now: SHA-256 {:.0} MiB/s; fresh memory written {:.0} MiB/s; 4 KiB append + fdatasync median {sync} \
         (of {CALIBRATE_SYNCS})",
        mib / hash_s.max(1e-9),
        mib / touch_s.max(1e-9),
    )
}

fn sync_median_ms() -> anyhow::Result<f64> {
    use std::io::Write;
    // In the temp dir, removed when dropped.
    let mut f = tempfile::NamedTempFile::new()?;
    let block = [0u8; 4096];
    let mut ms = Vec::with_capacity(CALIBRATE_SYNCS);
    for _ in 0..CALIBRATE_SYNCS {
        let t = Instant::now();
        f.write_all(&block)?;
        f.as_file().sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms[ms.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bounds_and_replays_from_the_seed() {
        let mut r = Rng(42);
        let v: Vec<Duration> = (0..10_000).map(|_| r.jittered(1000, 20)).collect();
        assert!(v.iter().all(|d| (800..=1200).contains(&d.as_millis())), "outside +-20%");
        assert!(v.iter().any(|d| d.as_millis() < 850) && v.iter().any(|d| d.as_millis() > 1150));
        let mut again = Rng(42);
        assert_eq!(v[..10], (0..10).map(|_| again.jittered(1000, 20)).collect::<Vec<_>>()[..]);
        // A percentage above 100 is capped: never below zero, never above twice the interval.
        let mut r = Rng(1);
        assert!((0..1000).map(|_| r.jittered(1000, 500)).all(|d| d.as_millis() <= 2000));
        assert_eq!(Rng(1).jittered(1000, 0), Duration::from_millis(1000));
    }

    #[test]
    fn percentiles_are_nearest_rank_and_nan_when_empty() {
        let s = sorted((1..=100).rev().map(f64::from).collect());
        assert_eq!((pct(&s, 0.0), pct(&s, 0.5), pct(&s, 0.99), pct(&s, 1.0)), (1.0, 51.0, 99.0, 100.0));
        assert!(pct(&[], 0.5).is_nan());
        assert_eq!(pct(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn a_netstat_counter_is_read_by_its_name_and_missing_ones_are_none() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 103 104\n\
                    IpExt: InNoRoutes ListenOverflows\nIpExt: 5 6\n";
        assert_eq!(parse_netstat(text, "TcpExt:", "ListenOverflows"), Some(103));
        assert_eq!(parse_netstat(text, "TcpExt:", "ListenDrops"), Some(104));
        assert_eq!(parse_netstat(text, "IpExt:", "ListenOverflows"), Some(6));
        assert_eq!(parse_netstat(text, "TcpExt:", "Nope"), None);
        assert_eq!(parse_netstat("TcpExt: ListenOverflows\n", "TcpExt:", "ListenOverflows"), None);
        assert_eq!(parse_netstat("TcpExt: ListenOverflows\nTcpExt: x\n", "TcpExt:", "ListenOverflows"), None);
        // This machine's own counter reads (every Linux kernel we run on has it).
        assert!(listen_overflows().is_some());
    }

    #[test]
    fn proc_stat_gives_busy_total_and_cores_and_refuses_what_does_not_match() {
        let text = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 3 0\ncpu1 50 3 25 500 10 2 1 1 4 0\n\
                    intr 12345\nctxt 99\n";
        // busy = user + nice + system + irq + softirq + steal; total adds idle and iowait.
        assert_eq!(parse_proc_stat(text).expect("parses"), (161, 1181, 1, 2));
        assert!(parse_proc_stat("intr 1\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 3 x 5 6 7 8\n").is_err());
        // This machine's own counters read.
        let (busy, total, steal, cores) = machine_ticks().expect("/proc/stat");
        assert!(steal <= busy && busy <= total && cores >= 1);
    }

    #[test]
    fn cpu_per_operation_splits_members_this_process_and_the_rest() {
        let at = Instant::now();
        let a = CpuMark {
            at,
            busy: 0,
            total: 0,
            steal: 0,
            cores: 2,
            own: 10,
            members: vec![(1, 11, 0), (2, 12, 0), (3, 13, 5)],
        };
        // 2 s later: 300 of 400 ticks busy; member 1 used 100 ticks, member 2 50, member 3 was restarted.
        let b = CpuMark {
            at: at + Duration::from_secs(2),
            busy: 300,
            total: 400,
            steal: 20,
            cores: 2,
            own: 60,
            members: vec![(1, 11, 100), (2, 12, 50), (3, 99, 1)],
        };
        let u = cpu_between(&a, &b);
        assert_eq!(u.members, vec![(1, 1.0), (2, 0.5)]);
        assert_eq!(u.restarted, vec![3]);
        assert!(
            (u.busy - 3.0).abs() < 1e-9 && (u.busy_share - 0.75).abs() < 1e-9 && (u.own - 0.5).abs() < 1e-9
        );
        let line = u.per_op_line(10_000, "committed finding", "this bench");
        assert!(
            line.starts_with(
                "CPU per committed finding: 300.0 us of the machine's busy time (1.50 of 2 cores"
            ),
            "{line}"
        );
        assert!(
            line.contains(
                "member 1 100.0 us, member 2 50.0 us; this bench 50.0 us; the rest 100.0 us; stolen by the \
                 hypervisor 5.0% of the machine's time"
            ),
            "{line}"
        );
        assert!(line.contains("member 3 restarted"), "{line}");
        assert_eq!(u.per_op_line(0, "beat", "x"), "CPU per beat: none done over 2.0 s");
        // A real mark of this process reads.
        let m = cpu_mark(&[(1, std::process::id()), (2, u32::MAX)]).expect("mark");
        assert_eq!(m.members.len(), 1, "a pid without /proc is left out");
    }

    #[test]
    fn rss_parses_and_refuses_what_does_not_match() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        // This process's own RSS is readable and non-zero.
        assert!(rss_bytes(std::process::id()).is_ok_and(|b| b > 0));
    }

    #[test]
    fn dir_bytes_sums_files_below_a_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("a"), [0u8; 100]).expect("write");
        std::fs::write(d.path().join("sub/b"), [0u8; 23]).expect("write");
        assert_eq!(dir_bytes(d.path()).expect("walk"), 123);
        assert!(dir_bytes(&d.path().join("missing")).is_err());
    }

    #[test]
    fn machine_line_names_three_measured_rates() {
        let line = machine_line();
        let num = |after: &str| -> f64 {
            let rest = line.split(after).nth(1).unwrap_or_else(|| panic!("no {after:?} in {line}"));
            rest.trim_start()
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{line}"))
        };
        assert!(num("SHA-256 ") > 0.0, "{line}");
        assert!(num("fresh memory written ") > 0.0, "{line}");
        assert!(num("fdatasync median ") >= 0.0, "{line}");
        assert!(line.ends_with("(of 20)"), "{line}");
    }
}
