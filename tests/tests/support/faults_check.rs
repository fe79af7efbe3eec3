//! The fault suite's bookkeeping and its checker, written against the public surface only (gRPC through
//! `master::client`, REST over plain HTTP, the `huatuo` CLI): a ledger of every write with a unique marker
//! in its evidence, writers for each front end, and [`verify`], which reads each member's change log from
//! revision 1 and checks that acknowledged writes are there exactly once, unknown ones at most once, and
//! that every member holds the same change log.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write as _};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use master::client::Client;
use proto::api;

/// Bound on waits for replicated effects (a leader, convergence of all members, one member's change log).
pub const SETTLE: Duration = Duration::from_secs(30);
/// Socket timeout of one REST request: longer than a failover (~1-2 s) plus a commit.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most writes one writer makes in one scenario: keeps the ledger and the check bounded whatever the timing.
pub const MAX_WRITES_PER_WRITER: u64 = 5_000;
/// Pause after a failed write before the next one (a failover takes ~1-2 s; no hot loop meanwhile).
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Runs of one `huatuo report` (same idempotency key) before its write is left "unknown": each run retries
/// for several seconds itself, so 5 runs outlast any failover the suite causes.
pub const MAX_CLI_RUNS: u32 = 5;

/// The scenario seed: `HUATUO_FAULTS_SEED` to replay a run, else the clock. Printed by every scenario.
pub fn seed() -> u64 {
    match std::env::var("HUATUO_FAULTS_SEED") {
        Ok(s) => s.trim().parse().expect("HUATUO_FAULTS_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a write went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Rest,
    Agent,
    Cli,
}

#[derive(Debug, Clone)]
pub struct Write {
    pub marker: String,
    pub path: Path,
    /// The front end answered success: the write must be stored exactly once. Otherwise its outcome is
    /// unknown (error, timeout, killed node): stored at most once.
    pub acked: bool,
}

#[derive(Default)]
pub struct Ledger {
    writes: Mutex<Vec<Write>>,
    /// `huatuo report` runs repeated with the key of a failed run.
    cli_reruns: std::sync::atomic::AtomicU64,
}

impl Ledger {
    pub fn count_cli_rerun(&self) {
        self.cli_reruns.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cli_reruns(&self) -> u64 {
        self.cli_reruns.load(Ordering::Relaxed)
    }

    pub fn record(&self, marker: String, path: Path, acked: bool) {
        self.writes.lock().unwrap_or_else(|p| p.into_inner()).push(Write { marker, path, acked });
    }
    pub fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// (acked, unknown) per path.
    pub fn counts(&self) -> BTreeMap<Path, (u64, u64)> {
        let mut m: BTreeMap<Path, (u64, u64)> = BTreeMap::new();
        for w in self.writes() {
            let e = m.entry(w.path).or_default();
            if w.acked {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        m
    }
    pub fn acked(&self) -> u64 {
        self.writes().iter().filter(|w| w.acked).count() as u64
    }
}

/// The evidence text carrying `marker` (the change log's `detail` keeps the evidence's first line).
pub fn evidence(marker: &str) -> String {
    format!("<{marker}>")
}

/// The marker inside an event's detail, if any.
pub fn marker_of(detail: &str) -> Option<&str> {
    let start = detail.rfind('<')?;
    let end = detail[start..].find('>')?;
    Some(&detail[start + 1..start + end])
}

pub fn finding(object: &str, marker: &str) -> api::Finding {
    api::Finding {
        object: object.into(),
        severity: "INFO".into(),
        checker: "faults".into(),
        version: "1.0.0".into(),
        rule: "faults.write".into(),
        evidence: evidence(marker),
        readings: Default::default(),
        time_ms: now_ms(),
        shadow: false,
    }
}

/// A plain HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {text:.200}")))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// POST one finding through REST (`agent`/`seq` empty/0 for an anonymous write). Ok(body) on 200.
pub fn rest_ingest(addr: &str, agent: &str, seq: u64, object: &str, marker: &str) -> Result<String, String> {
    let f = finding(object, marker);
    let body = serde_json::json!({
        "agent": agent, "seq": seq,
        "findings": [{"object": f.object, "severity": f.severity, "checker": f.checker, "version": f.version,
                      "rule": f.rule, "evidence": f.evidence, "time_ms": f.time_ms}],
    });
    match http(addr, "POST", "/api/v1/findings", &body.to_string()) {
        Ok((200, b)) => Ok(b),
        Ok((code, b)) => Err(format!("HTTP {code}: {b}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Background writers of one scenario; [`Load::stop`] ends them and waits.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn new() -> Load {
        Load { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new(), tasks: Vec::new() }
    }

    /// Anonymous REST writes (no idempotency key: never resent; a failed one is "unknown"), rotating over
    /// the members' HTTP addresses after each failure.
    pub fn rest(&mut self, ledger: &Arc<Ledger>, tag: &str, http_addrs: Vec<String>) {
        let (stop, ledger, tag) = (self.stop.clone(), ledger.clone(), tag.to_string());
        self.threads.push(std::thread::spawn(move || {
            let mut at = 0usize;
            for n in 0..MAX_WRITES_PER_WRITER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let marker = format!("{tag}.r{n}");
                let ok =
                    rest_ingest(&http_addrs[at % http_addrs.len()], "", 0, &format!("disk/{tag}/r"), &marker);
                ledger.record(marker, Path::Rest, ok.is_ok());
                if ok.is_err() {
                    at += 1;
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }));
    }

    /// An agent's gRPC Ingest batches (one finding each) with increasing sequence numbers; the client
    /// retries a batch through failovers (the sequence makes the retry idempotent).
    pub fn agent(&mut self, ledger: &Arc<Ledger>, tag: &str, grpc_addrs: Vec<String>) {
        let (stop, ledger, tag) = (self.stop.clone(), ledger.clone(), tag.to_string());
        self.tasks.push(tokio::spawn(async move {
            let mut cl = Client::new(grpc_addrs);
            for seq in 1..=MAX_WRITES_PER_WRITER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let marker = format!("{tag}.a{seq}");
                let req = api::IngestRequest {
                    epoch: 0,
                    agent: format!("agent-{tag}"),
                    seq,
                    findings: vec![finding(&format!("disk/{tag}/a"), &marker)],
                };
                let ok = cl.call(req, |mut c, r| async move { c.ingest(r).await }).await.is_ok();
                ledger.record(marker, Path::Agent, ok);
                if !ok {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }));
    }

    /// `huatuo report` processes, one after another. A report whose process failed (its own retries gave up
    /// during a failover, or it was refused) is run again with the same `--idempotency-key` and `--time-ms`,
    /// up to [`MAX_CLI_RUNS`] times: the master applies it at most once, so it ends acknowledged and must then
    /// be stored exactly once (an "unknown" CLI write is one whose every run failed).
    pub fn cli(&mut self, ledger: &Arc<Ledger>, tag: &str, bin: std::path::PathBuf, grpc_addrs: String) {
        let (stop, ledger, tag) = (self.stop.clone(), ledger.clone(), tag.to_string());
        self.threads.push(std::thread::spawn(move || {
            for n in 0..MAX_WRITES_PER_WRITER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let marker = format!("{tag}.c{n}");
                let key = format!("faults-{tag}-c{n}");
                let time_ms = now_ms().to_string();
                let mut ok = false;
                for run in 0..MAX_CLI_RUNS {
                    if run > 0 {
                        ledger.count_cli_rerun();
                        std::thread::sleep(RETRY_PAUSE);
                    }
                    let out = Command::new(&bin)
                        .args([
                            "report",
                            &format!("disk/{tag}/c"),
                            "--severity",
                            "INFO",
                            "--checker",
                            "faults",
                        ])
                        .args(["--evidence", &evidence(&marker), "--master", &grpc_addrs])
                        .args(["--idempotency-key", &key, "--time-ms", &time_ms])
                        .output();
                    ok = out.as_ref().is_ok_and(|o| o.status.success());
                    if ok || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                ledger.record(marker, Path::Cli, ok);
            }
        }));
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("agent writer");
        }
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            for t in threads {
                t.join().expect("writer thread");
            }
        })
        .await
        .expect("join writers");
    }
}

/// A client bound to one member only (no leader following), one attempt.
pub fn member_client(grpc: &str) -> Client {
    let mut c = Client::new(vec![grpc.to_string()]);
    c.max_attempts = 1;
    c.call_timeout = Duration::from_secs(2);
    c
}

pub async fn info(grpc: &str) -> Option<api::ClusterInfoResponse> {
    member_client(grpc)
        .call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
        .await
        .ok()
}

/// One member's change log from revision 1 up to `target`, as comparable tuples.
type Log = Vec<(u64, String, String, String, String, String)>;

async fn change_log(grpc: &str, target: u64) -> Result<Log, String> {
    let mut cl = member_client(grpc);
    cl.call_timeout = SETTLE;
    let req = api::WatchRequest { from_revision: 1, kind: String::new(), host: String::new() };
    let mut s = cl
        .call(req, |mut c, r| async move { c.watch(r).await })
        .await
        .map_err(|e| format!("watch from 1: {e}"))?;
    let deadline = Instant::now() + SETTLE;
    let mut log = Log::new();
    let mut seen = 0;
    while seen < target {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.message()).await {
            Ok(Ok(Some(m))) => {
                for e in m.events {
                    log.push((e.revision, e.object, e.what, e.detail, e.state, e.from_state));
                }
                seen = seen.max(m.revision);
            }
            Ok(Ok(None)) => return Err(format!("watch ended at revision {seen} of {target}")),
            Ok(Err(e)) => return Err(format!("watch failed at revision {seen} of {target}: {e}")),
            Err(_) => return Err(format!("watch stalled at revision {seen} of {target} for {SETTLE:?}")),
        }
    }
    log.retain(|e| e.0 <= target);
    Ok(log)
}

/// What the checker measured (printed by the scenarios).
#[derive(Debug, Default)]
pub struct Verified {
    pub revision: u64,
    pub members: usize,
    pub acked: u64,
    pub unknown: u64,
}

/// The checker run after every scenario, on the members `(id, grpc address)` that must be serving:
/// 1. they converge on one revision (bounded by [`SETTLE`]);
/// 2. each serves its change log from revision 1 (watch resumable from 1 within retention);
/// 3. the logs are identical;
/// 4. every acknowledged write's marker is in every log exactly once; an unknown write's at most once.
///
/// Returns the problems found (empty: all good).
pub async fn verify(members: &[(u64, String)], ledger: &Ledger) -> Result<Verified, Vec<String>> {
    let mut problems = Vec::new();
    // 1. Convergence.
    let deadline = Instant::now() + SETTLE;
    let target = loop {
        let mut revs = BTreeMap::new();
        for (id, g) in members {
            revs.insert(*id, info(g).await.map(|i| (i.revision, i.applied_index)));
        }
        let vals: Vec<_> = revs.values().collect();
        if vals.iter().all(|v| v.is_some() && *v == vals[0]) {
            break vals[0].map(|v| v.0).unwrap_or(0);
        }
        if Instant::now() >= deadline {
            return Err(vec![format!(
                "members did not converge within {SETTLE:?}: (revision, applied) {revs:?}"
            )]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // 2. + 3. Change logs from 1, identical.
    let mut logs: BTreeMap<u64, Log> = BTreeMap::new();
    for (id, g) in members {
        match change_log(g, target).await {
            Ok(l) => {
                logs.insert(*id, l);
            }
            Err(e) if e.contains("compacted") => problems.push(format!(
                "node {id}: {e} (watch from revision 1 must work on every member within retention; issue 13 \
                 item 4: the change log travels in snapshots)"
            )),
            Err(e) => problems.push(format!("node {id}: {e}")),
        }
    }
    if let Some((first_id, first)) = logs.iter().next() {
        for (id, l) in &logs {
            if l != first {
                let at =
                    first.iter().zip(l.iter()).position(|(a, b)| a != b).unwrap_or(first.len().min(l.len()));
                problems.push(format!(
                    "node {id}'s change log differs from node {first_id}'s at entry {at} ({} vs {} entries): {:?} vs {:?}",
                    l.len(),
                    first.len(),
                    l.get(at),
                    first.get(at)
                ));
            }
        }
    }
    // 4. Markers.
    let writes = ledger.writes();
    for (id, l) in &logs {
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for e in l {
            if let Some(m) = marker_of(&e.3) {
                *counts.entry(m).or_default() += 1;
            }
        }
        let mut lost = Vec::new();
        let mut twice = Vec::new();
        for w in &writes {
            let n = counts.get(w.marker.as_str()).copied().unwrap_or(0);
            if w.acked && n == 0 {
                lost.push(format!("{} ({:?})", w.marker, w.path));
            }
            if n > 1 {
                twice.push(format!("{} ({:?}, acked {}) x{n}", w.marker, w.path, w.acked));
            }
        }
        if !lost.is_empty() {
            problems.push(format!(
                "node {id}: {} acknowledged writes missing: {:?}",
                lost.len(),
                &lost[..lost.len().min(10)]
            ));
        }
        if !twice.is_empty() {
            problems.push(format!(
                "node {id}: {} writes stored more than once (every write path carries an idempotency key: issue 13 item 3): {:?}",
                twice.len(),
                &twice[..twice.len().min(10)]
            ));
        }
    }
    if problems.is_empty() {
        let acked = writes.iter().filter(|w| w.acked).count() as u64;
        Ok(Verified { revision: target, members: members.len(), acked, unknown: writes.len() as u64 - acked })
    } else {
        Err(problems)
    }
}

/// Run [`verify`] and fail the test with every problem listed.
pub async fn check(scenario: &str, members: &[(u64, String)], ledger: &Ledger) -> Verified {
    match verify(members, ledger).await {
        Ok(v) => {
            println!(
                "[{scenario}] checker: {} members identical up to revision {}; {} acked writes each exactly once, \
                 {} unknown at most once; per path (acked, unknown): {:?}; CLI reruns with the same key: {}",
                v.members,
                v.revision,
                v.acked,
                v.unknown,
                ledger.counts(),
                ledger.cli_reruns()
            );
            v
        }
        Err(p) => panic!(
            "[{scenario}] checker found {} problems (writes per path (acked, unknown): {:?}):\n  {}",
            p.len(),
            ledger.counts(),
            p.join("\n  ")
        ),
    }
}
