//! The one signal helper (`proto::shutdown`) in the real binary: `huatuo master` stops in order on
//! SIGTERM, exits 0 within the sum of its shutdown limits, and logs a clean stop (nothing aborted at a
//! limit); the other members keep serving. And what the binary sets for itself before anything else:
//! transparent huge pages off (unless `MIMALLOC_ALLOW_THP` is set), read back from the kernel.
//!
//! Needs the `huatuo` binary (see `tests::huatuo_bin`).

use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT, strip_ansi};
use tests::{huatuo_bin, wait_until};

/// The master's whole ordered shutdown is bounded by the sum of its steps' limits.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(
    master::api::WATCHER_DRAIN.as_secs()
        + master::server::SERVER_DRAIN.as_secs()
        + master::api::DUTY_STOP.as_secs()
        + master::server::RAFT_STOP.as_secs()
        + master::server::PEER_DRAIN.as_secs(),
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_master_cleanly_and_the_others_keep_serving() {
    // Info level whatever the caller's RUST_LOG: the clean stop is an info line.
    let mut cluster = LocalCluster::start_with_env(&huatuo_bin(), 3, &[("RUST_LOG", "info,raft=warn")])
        .expect("start cluster");
    let leader =
        cluster.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("{}", cluster.log_tail(1)));
    cluster.terminate(leader).expect("SIGTERM");
    let mut status = None;
    let ended = wait_until(SHUTDOWN_BOUND, || {
        status = status.or_else(|| cluster.exited(leader));
        std::future::ready(status.is_some())
    })
    .await;
    assert!(
        ended,
        "node {leader} still running {SHUTDOWN_BOUND:?} after SIGTERM:\n{}",
        cluster.log_tail(leader)
    );
    let status = status.expect("exited");
    let log = std::fs::read_to_string(cluster.log_path(leader)).expect("node log");
    assert!(status.success(), "exit status {status} after SIGTERM:\n{log}");
    let stop_line =
        log.lines().map(strip_ansi).find(|l| l.contains("master node stopped")).unwrap_or_default();
    assert!(stop_line.contains("clean=true"), "no clean stop logged:\n{}", cluster.log_tail(leader));
    // The survivors elect a new leader and serve.
    cluster.kill9(leader);
    let next = cluster.wait_leader(READY_TIMEOUT).await;
    assert!(next.is_some_and(|l| l != leader), "no new leader after the orderly stop: {next:?}");
}

/// The process's own "THP disable" state as the kernel shows it (`THP_enabled` in /proc/PID/status).
fn thp_enabled(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"));
    line.unwrap_or_else(|| panic!("no THP_enabled line for {pid}:\n{status}"))
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .into()
}

/// `huatuo` turns transparent huge pages off for itself (`no_huge_pages` in cli/src/main.rs: mimalloc asks
/// for them, and their faults cost milliseconds each on the machines measured), unless the operator set
/// `MIMALLOC_ALLOW_THP`; then the process keeps what it inherited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_runs_without_huge_pages_unless_told_otherwise() {
    let inherited = thp_enabled("self");
    for (env, want) in [(vec![], "0"), (vec![("MIMALLOC_ALLOW_THP", "1")], inherited.as_str())] {
        let cluster = LocalCluster::start_with_env(&huatuo_bin(), 1, &env).expect("start master");
        let leader =
            cluster.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("{}", cluster.log_tail(1)));
        let pid = cluster.pid(leader).expect("running").to_string();
        assert_eq!(thp_enabled(&pid), want, "THP_enabled of a master started with {env:?}");
    }
}
