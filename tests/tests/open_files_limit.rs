//! A master that runs out of file descriptors (issue 17: every agent holds one connection to the leader, so
//! a fleet larger than the process's open-files limit exhausts it) must not spin on its listening sockets.
//! tonic retries a failed `accept` at once, and with `EMFILE` the queued connection stays queued, so the
//! accept loop spun: measured by hand on one real master, 6.0 CPU-seconds in 5 s on this 2-core machine,
//! enough to starve a leader's Raft thread into elections. Here a real master (a separate process) gets a
//! few descriptors of headroom (util-linux's `prlimit` on its pid), more connections than that wait on its gRPC port,
//! and then:
//! - over a measured window its CPU stays far below a core;
//! - its failed accepts are counted (`huatuo_master_accept_errors_total{port="grpc"}`), at most one per
//!   `ACCEPT_PAUSE` while the descriptors stay exhausted, and logged as a warning naming the limit;
//! - once the connections go away it accepts again and answers a call;
//! - `/metrics` shows its descriptors in use and its limit, and `huatuo inspect` names a member over four
//!   fifths of it.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use master::accept::ACCEPT_PAUSE;
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::client::Client;
use tests::{http_get, huatuo_bin, metric, wait_until};

/// Descriptors the master may open beyond those it holds when the limit is lowered.
const HEADROOM: u64 = 6;
/// Connections queued on its gRPC port: well past the headroom.
const CONNECTIONS: usize = 40;
/// The window over which the master's CPU is measured while its descriptors are exhausted.
const WINDOW: Duration = Duration::from_secs(3);
/// A master that is not spinning uses a few percent of a core (a single-node Raft ticking); one spinning
/// on its accept loop uses one to two cores.
const MAX_CORE_SHARE: f64 = 0.3;
/// How long the master may take to use up its headroom, and to answer once the connections went away.
const SETTLE: Duration = Duration::from_secs(20);

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// User plus system CPU time of `pid`, in seconds.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the master's /proc stat");
    // Fields after the command (which may hold spaces) start after the last ')'; utime and stime are the
    // 14th and 15th fields of the whole line, the 12th and 13th after it.
    let rest = &stat[stat.rfind(')').expect("stat has a command") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / ticks_per_sec
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Set `pid`'s open-files limit (soft and hard) to `n` (util-linux's `prlimit`).
fn limit_open_files(pid: u32, n: u64) {
    run("prlimit", &["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")]);
}

async fn answers(grpc: &str) -> bool {
    let mut c = Client::new(vec![grpc.to_string()]);
    c.max_attempts = 1;
    c.call_timeout = Duration::from_secs(2);
    c.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_out_of_file_descriptors_pauses_its_accepts_and_recovers() {
    let c = LocalCluster::start(&huatuo_bin(), 1).expect("start master");
    assert_eq!(c.wait_leader(READY_TIMEOUT).await, Some(1), "the master leads");
    let (grpc, http) = (c.nodes[&1].grpc.clone(), c.nodes[&1].http.clone());
    assert!(answers(&grpc).await, "the master answers before the limit is lowered");
    let pid = c.pid(1).expect("the master runs");
    let hz: f64 = run("getconf", &["CLK_TCK"]).trim().parse().expect("clock ticks per second");
    let before = http_get(&http, "/metrics").expect("/metrics");
    // The master raised its soft limit to the hard one when it started, and says so.
    assert!(metric(&before, "huatuo_master_max_fds").is_some_and(|m| m > 0), "max_fds:\n{before}");
    assert!(metric(&before, "huatuo_master_open_fds").is_some_and(|n| n > 0), "open_fds:\n{before}");

    let limit = open_fds(pid) + HEADROOM;
    limit_open_files(pid, limit);
    let held: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(&grpc).expect("connect (the listen queue takes it)"))
        .collect();
    let exhausted = wait_until(SETTLE, || async { open_fds(pid) >= limit }).await;
    assert!(exhausted, "the master took {} descriptors of its limit {limit}", open_fds(pid));
    let since = Instant::now();
    let cpu0 = cpu_secs(pid, hz);
    tokio::time::sleep(WINDOW).await;
    let share = (cpu_secs(pid, hz) - cpu0) / WINDOW.as_secs_f64();
    assert!(
        share < MAX_CORE_SHARE,
        "the master used {:.0}% of a core over {WINDOW:?} with its descriptors exhausted (spinning on accept?)",
        share * 100.0
    );
    drop(held);
    let exhausted_for = since.elapsed();
    assert!(
        wait_until(SETTLE, || answers(&grpc)).await,
        "the master accepts again once descriptors are free"
    );

    let page = http_get(&http, "/metrics").expect("/metrics after");
    let errors =
        metric(&page, "huatuo_master_accept_errors_total{port=\"grpc\"}").expect("accept errors counted");
    // From exhaustion (at most SETTLE before `since`) to a little after the release, one error per pause.
    let most = ((SETTLE + exhausted_for).as_secs_f64() / ACCEPT_PAUSE.as_secs_f64()).ceil() as u64 + 2;
    println!(
        "descriptors exhausted for {exhausted_for:?}: {:.1}% of a core over {WINDOW:?}, {errors} failed accepts \
         counted",
        share * 100.0
    );
    assert!((1..=most).contains(&errors), "{errors} failed accepts counted (1..={most})");
    assert_eq!(metric(&page, "huatuo_master_max_fds"), Some(limit), "the lowered limit:\n{page}");
    // `huatuo inspect` (the daily report) names a member over four fifths of its limit: 3 descriptors of
    // headroom leave room for its own connection and put the master at about nine tenths.
    let tight = open_fds(pid) + 3;
    limit_open_files(pid, tight);
    let out = std::process::Command::new(huatuo_bin())
        .args(["inspect", "--insecure", "--master", &grpc])
        .output()
        .expect("run huatuo inspect");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "inspect needs a human:\n{text}");
    assert!(text.contains(&format!(" of its {tight} open files")), "inspect names the limit:\n{text}");
    let log = std::fs::read_to_string(c.log_path(1)).expect("the master's log");
    assert!(
        log.lines().any(|l| l.contains("cannot accept") && l.contains(&format!("open files limit {limit}"))),
        "the master warns with its limit:\n{}",
        c.log_tail(1)
    );
}
