//! `huatuo bench agent`: the agent's resource use, measured from outside. Starts a 3-node master, then a
//! real `huatuo agent` process whose probes read this host (`/proc` and `/sys` through a probe root of
//! symlinks) and whose `/dev/kmsg` is a file this benchmark appends to. Phase 1 measures the idle agent
//! (default checkers, no kernel lines); phase 2 replays a kernel-log storm of real-format lines at a fixed
//! rate (default 5,000 lines/s) with unique marker faults mixed in, and checks that every marker became a
//! finding (no line lost). CPU comes from /proc/PID/stat (utime + stime), RSS from /proc/PID/status.
//! Outbox commits (each one fsync) per phase and per acknowledged batch come from the agent's metrics.
//! Prints medians of per-second samples; no assertion on time anywhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use master::cluster::{LocalCluster, READY_TIMEOUT, free_port};

use crate::bench_common::cpu_ticks;

/// Linux reports utime/stime in USER_HZ ticks, fixed at 100 on every architecture we run on.
const USER_HZ: f64 = 100.0;
/// One marker fault line every this many storm lines (unique sector numbers, each one finding).
const MARKER_EVERY: u64 = 100;
/// Bound on waiting for the agent to report the last markers after the storm.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct BenchAgentArgs {
    /// Seconds of each phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Kernel log lines per second during the storm.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// The agent binary to measure: this `huatuo` (run as `huatuo agent`, the default) or a `huatuo-agent`
    /// slim binary (run without the subcommand), e.g. `target/release/huatuo-agent`, or an older build to
    /// compare against.
    #[arg(long)]
    agent: Option<PathBuf>,
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// One `KEY: N kB` line of /proc/PID/status (VmRSS, RssAnon, RssFile, Threads has no unit but parses too).
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key}"))?;
    Ok(line.split_whitespace().nth(1).with_context(|| format!("{key} value"))?.parse()?)
}

/// Where the resident memory is: heap and stacks (RssAnon) vs pages of the executable and libraries
/// (RssFile), and the thread count. Tells a bigger binary from a bigger heap when RSS moves.
fn rss_split(pid: u32) -> String {
    match (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"), status_kib(pid, "Threads:")) {
        (Ok(anon), Ok(file), Ok(threads)) => format!(
            "anon {:.1} MiB + file {:.1} MiB, {threads} threads",
            anon as f64 / 1024.0,
            file as f64 / 1024.0
        ),
        _ => "split unavailable".to_string(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// CPU use over a phase: the mean over the whole window (resolution 1 tick / window, so meaningful for
/// an almost idle process) and the median of per-second samples (resolution 1 tick = 1% per sample).
struct Cpu {
    mean: f64,
    median: f64,
}

/// Sample CPU% and RSS once a second for `secs`; returns (CPU % of a core, median RSS MiB, max RSS MiB).
fn sample(pid: u32, secs: u64, mut each_tick: impl FnMut()) -> anyhow::Result<(Cpu, f64, f64)> {
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    let mut last = (Instant::now(), cpu_ticks(pid)?);
    let first = last;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        each_tick();
        if last.0.elapsed() >= Duration::from_secs(1) {
            let now = (Instant::now(), cpu_ticks(pid)?);
            let dt = now.0.duration_since(last.0).as_secs_f64();
            cpu.push((now.1 - last.1) as f64 / USER_HZ / dt * 100.0);
            rss.push(rss_kib(pid)? as f64 / 1024.0);
            last = now;
        }
    }
    let max_rss = rss.iter().cloned().fold(0.0, f64::max);
    let window = last.0.duration_since(first.0).as_secs_f64().max(1e-9);
    let mean = (last.1 - first.1) as f64 / USER_HZ / window * 100.0;
    Ok((Cpu { mean, median: median(&mut cpu) }, median(&mut rss), max_rss))
}

/// Real-format kernel messages (the benchmark corpus of recorded benign lines), as bare messages.
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

/// SIGKILL the processes this bench started (its children), reap each (so none still writes into the
/// directories), then remove `dirs`: a signal ends the bench without running the destructors that would.
fn stop_started(pids: &[u32], dirs: &[std::path::PathBuf]) {
    use nix::sys::signal::{Signal, kill};
    for &p in pids {
        let Ok(raw) = i32::try_from(p) else { continue };
        let pid = nix::unistd::Pid::from_raw(raw);
        match kill(pid, Signal::SIGKILL) {
            // Killed: wait for it to end (a SIGKILLed child ends when next scheduled).
            Ok(()) => {
                if let Err(e) = nix::sys::wait::waitpid(pid, None) {
                    eprintln!("huatuo: could not wait for process {p} this bench started: {e}");
                }
            }
            // Already gone: nothing left to stop.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => eprintln!("huatuo: could not stop process {p} this bench started: {e}"),
        }
    }
    for d in dirs {
        if let Err(e) = std::fs::remove_dir_all(d) {
            eprintln!("huatuo: could not remove {}: {e}", d.display());
        }
    }
}

fn probe_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dev"))?;
    std::os::unix::fs::symlink("/proc", root.join("proc"))?;
    std::os::unix::fs::symlink("/sys", root.join("sys"))?;
    std::fs::write(root.join("dev/kmsg"), b"")?;
    Ok(root)
}

pub fn run(a: BenchAgentArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let bin = std::env::current_exe()?;
    let agent_bin = a.agent.clone().unwrap_or_else(|| bin.clone());
    // A slim `huatuo-agent` takes the agent's options directly; `huatuo` needs the `agent` subcommand.
    let slim = agent_bin.file_name().is_some_and(|n| n.to_string_lossy().starts_with("huatuo-agent"));
    let cluster = LocalCluster::start(&bin, 3)?;
    if rt.block_on(cluster.wait_leader(READY_TIMEOUT)).is_none() {
        bail!("masters elected no leader; log:\n{}", cluster.log_tail(1));
    }
    let dir = tempfile::tempdir()?;
    let root = probe_root(dir.path())?;
    let port = free_port()?;
    let masters: Vec<String> = cluster.grpc_addrs().split(',').map(|m| format!("{m:?}")).collect();
    let cfg = format!(
        "version = 1\nhost = \"bench-1\"\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{port}\"\nroot = {:?}\n\n[net_probe]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("agent").display().to_string(),
        masters.join(", "),
        root.display().to_string()
    );
    std::fs::write(dir.path().join("agent.toml"), cfg)?;
    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let agent = Guard(
        Command::new(&agent_bin)
            .args(if slim { &["--config"][..] } else { &["agent", "--config"][..] })
            .arg(dir.path().join("agent.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let pid = agent.0.id();
    // This bench's phases are synchronous, so a signal cannot drop the cluster and the agent as the other
    // benches' `until_stopped` does: a task kills them, reaps them and removes their temporary directories
    // instead, then ends the process.
    let mut started_here: Vec<u32> = cluster.running().into_iter().filter_map(|id| cluster.pid(id)).collect();
    started_here.push(pid);
    let dirs = [cluster.root().to_path_buf(), dir.path().to_path_buf()];
    rt.spawn(async move {
        if let Err(e) = crate::bench_common::until_stopped(std::future::pending::<anyhow::Result<()>>()).await
        {
            stop_started(&started_here, &dirs);
            eprintln!("huatuo: error: {e:#}");
            std::process::exit(1);
        }
    });
    // Let it start, register and run every checker once before measuring.
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "huatuo bench agent: {} (pid {pid}), {}s per phase, storm {} lines/s",
        agent_bin.display(),
        a.seconds,
        a.rate
    );
    let commits = |port| {
        (
            metric(port, "huatuo_agent_outbox_commits").unwrap_or(0.0),
            metric(port, "huatuo_agent_sent_batches_total").unwrap_or(0.0),
        )
    };
    let idle_start = commits(port);
    let (idle_cpu, idle_rss, idle_max) =
        sample(pid, a.seconds, || std::thread::sleep(Duration::from_millis(100)))?;
    let idle_end = commits(port);
    println!(
        "idle:  CPU {:.3}% of a core (mean over the window; per-second median {:.1}%)   RSS {idle_rss:.1} MiB \
         median, {idle_max:.1} MiB max ({})",
        idle_cpu.mean,
        idle_cpu.median,
        rss_split(pid)
    );

    let msgs = storm_messages();
    if msgs.is_empty() {
        bail!("no storm messages");
    }
    let before = metric(port, "huatuo_agent_findings_total{checker=\"kernel-log\",severity=\"WARNING\"}")
        .unwrap_or(0.0);
    let mut kmsg = std::fs::OpenOptions::new().append(true).open(root.join("dev/kmsg"))?;
    let mut seq: u64 = 0;
    let mut markers: u64 = 0;
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut write_due = |kmsg: &mut std::fs::File| -> anyhow::Result<()> {
        let due = (started.elapsed().as_secs_f64() * a.rate as f64) as u64;
        buf.clear();
        while seq < due {
            seq += 1;
            let usec = 1_000_000 + seq * 200;
            if seq.is_multiple_of(MARKER_EVERY) {
                markers += 1;
                writeln!(
                    buf,
                    "3,{seq},{usec},-;blk_update_request: I/O error, dev sdz, sector {seq} op 0x0:(READ)"
                )?;
            } else {
                let m = &msgs[(seq as usize) % msgs.len()];
                write!(buf, "6,{seq},{usec},-;")?;
                buf.extend_from_slice(m);
                buf.push(b'\n');
            }
        }
        kmsg.write_all(&buf)?;
        Ok(())
    };
    let mut err = None;
    let (storm_cpu, storm_rss, storm_max) = sample(pid, a.seconds, || {
        if let Err(e) = write_due(&mut kmsg) {
            err.get_or_insert(e);
        }
        std::thread::sleep(Duration::from_millis(10));
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    let written = seq;
    let rate = written as f64 / started.elapsed().as_secs_f64();
    println!(
        "storm: CPU {:.3}% of a core (mean; per-second median {:.1}%)   RSS {storm_rss:.1} MiB median, \
         {storm_max:.1} MiB max   ({written} lines at {rate:.0} lines/s)",
        storm_cpu.mean, storm_cpu.median
    );
    // Every marker must come out as one disk.io-error WARNING finding.
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut got = 0.0;
    while Instant::now() < deadline {
        got = metric(port, "huatuo_agent_findings_total{checker=\"kernel-log\",severity=\"WARNING\"}")
            .unwrap_or(0.0)
            - before;
        if got as u64 >= markers {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let lost = markers.saturating_sub(got as u64);
    println!("markers: {markers} written, {} reported, {lost} lost", got as u64);
    let storm_end = commits(port);
    let per_batch = |from: (f64, f64), to: (f64, f64)| {
        let b = to.1 - from.1;
        if b > 0.0 { format!("{:.2}", (to.0 - from.0) / b) } else { "-".into() }
    };
    println!(
        "outbox commits (fsyncs): idle {:.0} in {}s ({} per acknowledged batch); storm {:.0} for {:.0} batches \
         ({} per batch)",
        idle_end.0 - idle_start.0,
        a.seconds,
        per_batch(idle_start, idle_end),
        storm_end.0 - idle_end.0,
        storm_end.1 - idle_end.1,
        per_batch(idle_end, storm_end)
    );
    // The floors of issue 18 (the slim agent as packaged: `cargo build --profile agent -p huatuo-agent`).
    println!(
        "floors: idle RSS <= 12 MiB: {}; storm RSS <= 16 MiB: {}; idle CPU < 0.5%: {}; storm CPU <= 2%: {}; \
         no line lost: {}",
        idle_rss <= 12.0,
        storm_max <= 16.0,
        idle_cpu.mean < 0.5,
        storm_cpu.mean <= 2.0,
        lost == 0
    );
    drop(agent);
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}
