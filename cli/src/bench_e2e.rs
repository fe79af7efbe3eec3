//! `huatuo bench e2e`: the whole path of a kernel fault, measured from outside. Starts a real 3-node master
//! (separate processes, fsync), a real agent process (the slim `huatuo-agent` next to this executable when
//! it is there, else `huatuo agent`) whose `/dev/kmsg` is a file in kmsg format this benchmark appends to,
//! and an SDK subscriber (`huatuo-sdk`) watching the agent's disks. Each fault line names a disk of its own
//! (`critical medium error`, an ERROR: no hysteresis), so each one must become exactly one transition; the
//! latency of a fault is from the moment its line was written to the moment the subscriber saw its
//! object's transition (one clock: both ends are in this process).
//!
//! Phases: faults at a steady rate and in a burst on an idle host; the same during a storm of benign
//! kernel lines (default 5,000 lines/s); then faults at a steady rate while the master leader is killed
//! (`kill -9`) once in the middle, the worst case printed separately. The cluster's quotas are opened for
//! the run (a quota would hold most of these transitions as proposals, which is the safety net working,
//! not the path being measured). Prints p50/p99/max; no assertion on time anywhere.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use master::cluster::{LocalCluster, READY_TIMEOUT, free_port};

use crate::bench_common::{open_quotas, pct};

/// Bound on waiting for the last faults of a phase to reach the subscriber.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on the agent's start (registered, every checker run once) before the first phase.
const AGENT_START: Duration = Duration::from_secs(10);
/// The writer's tick: lines due by the rates are written every this often.
const TICK: Duration = Duration::from_millis(2);
/// Host name of the benchmark's agent (its disks are what the subscriber watches).
const HOST: &str = "e2e-1";
/// Most faults one run may write (each is a new disk object in the cluster).
const MAX_FAULTS: u64 = 100_000;

#[derive(Args, Debug)]
pub struct BenchE2eArgs {
    /// Seconds of each steady phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Fault lines per second in the steady phases.
    #[arg(long, default_value_t = 10)]
    fault_rate: u64,
    /// Fault lines written at once in each burst.
    #[arg(long, default_value_t = 100)]
    burst: u64,
    /// Benign kernel lines per second during the storm.
    #[arg(long, default_value_t = 5000)]
    storm_rate: u64,
    /// The agent binary (default: `huatuo-agent` next to this executable, else `huatuo agent`).
    #[arg(long)]
    agent: Option<PathBuf>,
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // Best effort on the way out: the child may already be gone.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Appends kmsg-format lines to the agent's kmsg file and remembers when each fault was written.
struct Writer {
    file: std::fs::File,
    seq: u64,
    faults: u64,
    written: HashMap<String, Instant>,
    storm: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl Writer {
    fn line(&mut self, pri: u8, msg: &[u8]) {
        self.seq += 1;
        let usec = 1_000_000 + self.seq * 200;
        // Writing to a Vec cannot fail.
        write!(self.buf, "{pri},{},{usec},-;", self.seq).ok();
        self.buf.extend_from_slice(msg);
        self.buf.push(b'\n');
    }

    /// Queue one fault line; returns its disk name.
    fn fault(&mut self) -> anyhow::Result<String> {
        if self.faults >= MAX_FAULTS {
            bail!("more than {MAX_FAULTS} faults in one run");
        }
        self.faults += 1;
        let dev = format!("e2e{:06}", self.faults);
        let msg = format!("blk_update_request: critical medium error, dev {dev}, sector 2048");
        self.line(3, msg.as_bytes());
        Ok(dev)
    }

    fn benign(&mut self) {
        let m = self.storm[(self.seq as usize) % self.storm.len()].clone();
        self.line(6, &m);
    }

    /// Write what is queued; the faults in it are stamped with the time the write returned.
    fn flush(&mut self, faults: Vec<String>) -> anyhow::Result<()> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        let at = Instant::now();
        for f in faults {
            self.written.insert(f, at);
        }
        Ok(())
    }
}

/// First transition of each watched disk, by name, as the subscriber saw it.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn seen_len(seen: &Seen) -> usize {
    seen.lock().map(|m| m.len()).unwrap_or(0)
}

async fn subscribe(masters: Vec<String>, seen: Seen) -> anyhow::Result<tokio::task::JoinHandle<String>> {
    use huatuo_sdk::{Filter, Subscriber, WatchItem};
    let sub = Subscriber::connect(masters, "bench").await.map_err(|e| anyhow!("subscriber: {e}"))?;
    let filter = Filter::kind(state_machines::Kind::Disk).with_host(HOST);
    let mut watch = sub.watch(&filter, 0).map_err(|e| anyhow!("watch: {e}"))?;
    Ok(tokio::spawn(async move {
        let _keep = sub;
        let mut reconnects = 0u32;
        while let Some(item) = watch.next().await {
            match item {
                Ok(WatchItem::Events { events, .. }) => {
                    let at = Instant::now();
                    let Ok(mut m) = seen.lock() else { return "lock poisoned".into() };
                    for e in events.iter().filter(|e| e.is_transition()) {
                        if let Some(name) = e.object.as_ref().and_then(|o| o.name()) {
                            m.entry(name.to_string()).or_insert(at);
                        }
                    }
                }
                Ok(WatchItem::Reconnecting { .. }) => reconnects += 1,
                Ok(_) => {}
                Err(e) => return format!("watch ended: {e} (after {reconnects} reconnects)"),
            }
        }
        format!("watch ended (after {reconnects} reconnects)")
    }))
}

/// Latencies (ms) of `faults`, and how many never arrived within the drain deadline.
async fn collect(w: &Writer, seen: &Seen, faults: &[String]) -> (Vec<f64>, usize) {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let arrived = {
            let Ok(m) = seen.lock() else { return (Vec::new(), faults.len()) };
            faults.iter().filter(|f| m.contains_key(*f)).count()
        };
        if arrived == faults.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Ok(m) = seen.lock() else { return (Vec::new(), faults.len()) };
    let mut lat: Vec<f64> = faults
        .iter()
        .filter_map(|f| Some(m.get(f)?.saturating_duration_since(*w.written.get(f)?).as_secs_f64() * 1e3))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let missing = faults.len() - lat.len();
    (lat, missing)
}

fn print(label: &str, lat: &[f64], missing: usize) {
    println!(
        "{label:<28} n={:<5} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  missing {missing}",
        lat.len(),
        pct(lat, 0.5),
        pct(lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

/// Faults at `rate`/s for `secs` (plus benign lines at `storm`/s), calling `mid` once half-way.
async fn steady(
    w: &mut Writer,
    rate: u64,
    storm: u64,
    secs: u64,
    mut mid: impl FnMut(),
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let (mut faults_done, mut benign_done) = (0u64, 0u64);
    let mut out = Vec::new();
    let mut mid_done = false;
    while started.elapsed() < Duration::from_secs(secs) {
        let t = started.elapsed().as_secs_f64();
        let mut now = Vec::new();
        while benign_done < (t * storm as f64) as u64 {
            benign_done += 1;
            w.benign();
        }
        while faults_done < (t * rate as f64) as u64 {
            faults_done += 1;
            now.push(w.fault()?);
        }
        out.extend(now.iter().cloned());
        w.flush(now)?;
        if !mid_done && t >= secs as f64 / 2.0 {
            mid_done = true;
            mid();
        }
        tokio::time::sleep(TICK).await;
    }
    Ok(out)
}

fn burst(w: &mut Writer, n: u64) -> anyhow::Result<Vec<String>> {
    let faults: Vec<String> = (0..n).map(|_| w.fault()).collect::<anyhow::Result<_>>()?;
    w.flush(faults.clone())?;
    Ok(faults)
}

fn agent_command(bin: &Path, explicit: Option<&Path>) -> (Command, String) {
    let slim = bin.with_file_name("huatuo-agent");
    match explicit.map(Path::to_path_buf).or_else(|| slim.is_file().then_some(slim)) {
        Some(p) => {
            let size = std::fs::metadata(&p).map(|m| m.len() as f64 / 1048576.0).unwrap_or(f64::NAN);
            let label = format!("{} ({size:.1} MiB)", p.display());
            (Command::new(p), label)
        }
        None => {
            let mut c = Command::new(bin);
            c.arg("agent");
            (c, format!("{} agent (no huatuo-agent next to it)", bin.display()))
        }
    }
}

fn storm_messages() -> Vec<Vec<u8>> {
    use checkers::kernel_log::{Format, parse_line};
    let corpus = checkers::kernel_log::bench::corpus(20_000, 0, 7);
    let mut prev = Format::Plain;
    let mut out = Vec::new();
    for line in corpus.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let r = parse_line(line, prev, 2026);
        prev = r.format;
        if r.kernel && !r.msg.is_empty() && !matches!(r.format, Format::KmsgDict | Format::Marker { .. }) {
            out.push(r.msg.to_vec());
        }
    }
    out
}

pub fn run(a: BenchE2eArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(crate::bench_common::until_stopped(bench(a)))
}

async fn bench(a: BenchE2eArgs) -> anyhow::Result<ExitCode> {
    let bin = std::env::current_exe().context("cannot find this executable")?;
    let mut cluster = LocalCluster::start(&bin, 3).context("start cluster")?;
    if cluster.wait_leader(READY_TIMEOUT).await.is_none() {
        bail!("masters elected no leader; log:\n{}", cluster.log_tail(1));
    }
    // Open the quotas for the run: every fault must be a transition, not a proposal.
    open_quotas(&cluster, "bench-e2e").await?;

    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("dev"))?;
    std::os::unix::fs::symlink("/proc", root.join("proc"))?;
    std::os::unix::fs::symlink("/sys", root.join("sys"))?;
    let kmsg = root.join("dev/kmsg");
    std::fs::write(&kmsg, b"")?;
    let port = free_port()?;
    let masters: Vec<String> = cluster.grpc_addrs().split(',').map(str::to_string).collect();
    let quoted: Vec<String> = masters.iter().map(|m| format!("{m:?}")).collect();
    let cfg = format!(
        "version = 1\nhost = {HOST:?}\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{port}\"\n\
         root = {:?}\ninsecure = true\n\n[net_probe]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("agent").display().to_string(),
        quoted.join(", "),
        root.display().to_string()
    );
    std::fs::write(dir.path().join("agent.toml"), cfg)?;
    let (mut cmd, label) = agent_command(&bin, a.agent.as_deref());
    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let _agent = Guard(
        cmd.arg("--config")
            .arg(dir.path().join("agent.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {label}"))?,
    );
    println!("huatuo bench e2e: 3 masters (fsync), agent {label}, subscriber huatuo-sdk");
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let watcher = subscribe(masters, Arc::clone(&seen)).await?;
    let file = std::fs::OpenOptions::new().append(true).open(&kmsg)?;
    let storm = storm_messages();
    if storm.is_empty() {
        bail!("no storm messages");
    }
    let mut w = Writer { file, seq: 0, faults: 0, written: HashMap::new(), storm, buf: Vec::new() };

    // Warm-up: one fault, waited for, so the agent is registered and every connection is up.
    let warm = burst(&mut w, 1)?;
    let started = Instant::now();
    while seen_len(&seen) < 1 && started.elapsed() < AGENT_START + DRAIN_DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (l, missing) = collect(&w, &seen, &warm).await;
    if missing > 0 {
        bail!("the warm-up fault never reached the subscriber; agent log in {}", dir.path().display());
    }
    println!("{:<28} {:.1} ms (first fault, connections cold)", "warm-up", l[0]);

    let f = steady(&mut w, a.fault_rate, 0, a.seconds, || {}).await?;
    let (l, m) = collect(&w, &seen, &f).await;
    print(&format!("idle, steady {}/s", a.fault_rate), &l, m);
    let f = burst(&mut w, a.burst)?;
    let (l, m) = collect(&w, &seen, &f).await;
    print(&format!("idle, burst of {}", a.burst), &l, m);

    let storm_label = format!("storm {}/s", a.storm_rate);
    let f = steady(&mut w, a.fault_rate, a.storm_rate, a.seconds, || {}).await?;
    let (l, m) = collect(&w, &seen, &f).await;
    print(&format!("{storm_label}, steady {}/s", a.fault_rate), &l, m);
    // A burst in the middle of a storm: half a second of storm on each side.
    let mut f = steady(&mut w, 0, a.storm_rate, 1, || {}).await?;
    f.extend(burst(&mut w, a.burst)?);
    f.extend(steady(&mut w, 0, a.storm_rate, 1, || {}).await?);
    let (l, m) = collect(&w, &seen, &f).await;
    print(&format!("{storm_label}, burst of {}", a.burst), &l, m);

    // Failover: kill -9 the leader half-way through a steady phase.
    let leader = cluster.wait_leader(READY_TIMEOUT).await.ok_or_else(|| anyhow!("no leader"))?;
    let mut killed_at = None;
    let f = steady(&mut w, a.fault_rate, 0, a.seconds, || {
        cluster.kill9(leader);
        killed_at = Some(Instant::now());
    })
    .await?;
    let (l, m) = collect(&w, &seen, &f).await;
    print(&format!("leader {leader} killed, steady {}/s", a.fault_rate), &l, m);
    if let Some(k) = killed_at {
        // The faults written within a second after the kill are the ones that wait for the election.
        let after: Vec<String> = f
            .iter()
            .filter(|x| {
                w.written.get(*x).is_some_and(|t| *t >= k && t.duration_since(k) < Duration::from_secs(1))
            })
            .cloned()
            .collect();
        let (l, m) = collect(&w, &seen, &after).await;
        println!(
            "{:<28} worst {:.1} ms (faults written in the second after the kill: n={}, p50 {:.1} ms, missing {m})",
            "failover worst case",
            l.last().copied().unwrap_or(f64::NAN),
            l.len(),
            pct(&l, 0.5)
        );
    }
    drop(w);
    watcher.abort();
    println!(
        "(latency: fault line written -> the subscriber sees the disk's transition; medians of one run)"
    );
    Ok(ExitCode::SUCCESS)
}
