//! The operator surface of a rolling upgrade and the watch limit, against real `huatuo master` processes:
//! - `min_command_version` through gRPC, REST and the CLI: members report the command versions their binary
//!   knows (`knows_command_version` in cluster info); raising it above what any member knows is refused with
//!   the member named, above what this node knows too; a missing reason is refused; nothing changes on a
//!   refusal; once every member knows it the raise is accepted, replicated, audited and visible.
//! - The per-node watch limit (`max_watches`): one stream more is refused with RESOURCE_EXHAUSTED on gRPC and
//!   HTTP 429 on REST, counted in /metrics; a client that leaves frees its slot.
//! - The safety net's windows move into rows at command version 11 and back to lists when it is lowered.
//!
//! The operator-role refusals of both front ends are in `auth.rs` (the secured cluster).
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::client::Client;
use proto::error::Code;
use tests::{huatuo_bin, wait_until};

/// Bound for waits on replicated effects and restarts.
const SETTLE: Duration = Duration::from_secs(30);

/// A plain HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Node `id` stopped at an entry it cannot apply, saying `why`: its `/healthz` answers 503 with it, or,
/// once its process ended (a member exits within `HEALTH_POLL` of its raft node stopping, so a busy
/// machine's poll can miss the 503), its log says it.
async fn stopped_saying(c: &LocalCluster, id: u64, why: &str) -> bool {
    let addr = c.nodes[&id].http.clone();
    wait_until(SETTLE, || async {
        if std::net::TcpStream::connect(&addr).is_ok() {
            let (st, body) = http(&addr, "GET", "/healthz", "");
            st == 503 && body.contains(why)
        } else {
            c.log_tail(id).contains(why)
        }
    })
    .await
}

/// Whether a running node `id` serves `path` with 200 (false once it has exited).
fn serves(c: &LocalCluster, id: u64, path: &str) -> (bool, String) {
    let addr = c.nodes[&id].http.clone();
    if std::net::TcpStream::connect(&addr).is_err() {
        return (false, String::new());
    }
    let (st, body) = http(&addr, "GET", path, "");
    (st == 200, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn cli(args: &[&str], master: &str) -> (bool, String, String) {
    let out =
        Command::new(huatuo_bin()).args(args).env("HUATUO_MASTER", master).output().expect("run huatuo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status(c: &LocalCluster) -> Option<api::ClusterInfoResponse> {
    let mut cl = c.client();
    cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await.ok()
}

/// Every member's `knows_command_version` as cluster info reports it.
async fn member_versions(c: &LocalCluster) -> Vec<(u64, u32)> {
    status(c)
        .await
        .map(|i| i.members.iter().map(|m| (m.id, m.knows_command_version)).collect())
        .unwrap_or_default()
}

/// Restart node `id` with its own settings (`""`: the cluster's) after a kill -9, waiting until the cluster
/// reports `versions` for its members. An entry that changed `min_command_version` was applied with an
/// fsync (`Fsm::wants_durable`), so a member restarted as an older binary after a lowering never applies
/// the newer entries before it again (the windows test below fails without it).
async fn restart_as(c: &mut LocalCluster, id: u64, settings: &str, versions: &[(u64, u32)]) {
    c.set_node_config(id, settings).unwrap();
    c.kill9(id);
    c.spawn(id, false).unwrap();
    let ok = wait_until(SETTLE, || async { member_versions(c).await == versions }).await;
    assert!(ok, "members never reported {versions:?}: {:?}\n{}", member_versions(c).await, c.log_tail(id));
}

async fn set_min(
    c: &LocalCluster,
    version: u32,
    reason: &str,
) -> Result<api::SetMinCommandVersionResponse, proto::error::ApiError> {
    let mut cl = c.client();
    let req = api::SetMinCommandVersionRequest { version, by: "alice".into(), reason: reason.into() };
    cl.call(req, |mut c, r| async move { c.set_min_command_version(r).await }).await
}

/// With `auto_upgrade` (the default) the leader raises `min_command_version` by itself once every member
/// reports knowing the newer versions, and not before: a member playing an older binary holds it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_raises_min_command_version_once_every_member_knows_it() {
    let knows = master::model::COMMAND_VERSION;
    let mut c = LocalCluster::start_with_config(&huatuo_bin(), 3, "tick_ms = 50\n").unwrap();
    c.set_node_config(3, "knows_command_version = 1\n").unwrap();
    c.kill9(3);
    c.spawn(3, false).unwrap();
    assert!(c.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", c.log_tail(1));
    let held = wait_until(SETTLE, || async { member_versions(&c).await.contains(&(3, 1)) }).await;
    assert!(held, "node 3 never reported version 1: {:?}", member_versions(&c).await);
    // Node 3 knows 1 only: however long the leader asks, the version stays.
    let v = status(&c).await.map(|i| i.min_command_version);
    assert_eq!(v, Some(1), "raised past a member that does not know it");
    // The member is upgraded: the leader raises the version on its own, and says who and why in the audit.
    c.set_node_config(3, "").unwrap();
    c.kill9(3);
    c.spawn(3, false).unwrap();
    let raised =
        wait_until(SETTLE, || async { status(&c).await.is_some_and(|i| i.min_command_version == knows) })
            .await;
    assert!(raised, "never raised to {knows}: {:?}\n{}", status(&c).await, c.log_tail(1));
    let leader = c.wait_leader(READY_TIMEOUT).await.expect("leader");
    let (st, body) = http(&c.nodes[&leader].http.clone(), "GET", "/api/v1/alerts?all=true&limit=100", "");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&format!("-> {knows} by leader")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_command_version_is_raised_only_when_every_member_knows_it() {
    let knows = master::model::COMMAND_VERSION;
    assert!(knows >= 2, "the test raises to version 2");
    let mut c =
        LocalCluster::start_with_config(&huatuo_bin(), 3, "tick_ms = 50\nauto_upgrade = false\n").unwrap();
    assert!(c.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", c.log_tail(1));
    let all: Vec<(u64, u32)> = (1..=3).map(|id| (id, knows)).collect();
    let ok = wait_until(SETTLE, || async { member_versions(&c).await == all }).await;
    assert!(ok, "members' versions: {:?}", member_versions(&c).await);
    let i = status(&c).await.unwrap();
    assert_eq!((i.min_command_version, i.knows_command_version), (1, knows));

    // Node 3 plays the old binary of a rolling upgrade in progress.
    restart_as(&mut c, 3, "knows_command_version = 1\n", &[(1, knows), (2, knows), (3, 1)]).await;

    // gRPC: no reason, then a version member 3 does not know.
    let e = set_min(&c, 2, " ").await.expect_err("no reason");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    let e = set_min(&c, 2, "all upgraded").await.expect_err("member 3 is old");
    assert_eq!(e.code, Code::Conflict, "{e}");
    assert!(e.message.contains("member 3 knows command versions 1..=1"), "{e}");
    // REST on the leader: a version no binary here knows; a body without a reason.
    let leader = c.wait_leader(READY_TIMEOUT).await.unwrap();
    let http_addr = c.nodes[&leader].http.clone();
    let body = |v: u32, reason: &str| format!(r#"{{"version":{v},"by":"alice","reason":"{reason}"}}"#);
    let (st, b) = http(&http_addr, "POST", "/api/v1/min-command-version", &body(knows + 1, "newer"));
    assert_eq!(st, 409, "{b}");
    assert_eq!(json(&b)["code"], "CONFLICT", "{b}");
    // The refusal names the leader itself: it knows `knows`, or 1 when the leader is node 3 (the old binary).
    let mine = |v: u32| b.contains(&format!("knows command versions 1..={v}"));
    assert!((mine(knows) || mine(1)) && b.contains("this node"), "{b}");
    let (st, b) = http(&http_addr, "POST", "/api/v1/min-command-version", r#"{"version":2,"by":"alice"}"#);
    assert_eq!(st, 400, "{b}");
    let (st, b) = http(&http_addr, "POST", "/api/v1/min-command-version", &body(2, "all upgraded"));
    assert_eq!(st, 409, "{b}");
    assert!(b.contains("member 3"), "{b}");
    // Nothing changed.
    assert_eq!(status(&c).await.unwrap().min_command_version, 1);
    let (st, b) = http(&http_addr, "GET", "/api/v1/alerts?all=true&limit=1000", "");
    assert_eq!(st, 200, "{b}");
    assert!(!b.contains("min_command_version 1 -> 2"), "{b}");

    // A member that does not answer (down) refuses a raise too: its binary is unknown.
    c.kill9(3);
    // Asked of the live nodes only (a client rotating onto the dead one would report that instead).
    let mut live = Client::new(vec![c.nodes[&1].grpc.clone(), c.nodes[&2].grpc.clone()]);
    live.max_attempts = 4;
    let req =
        api::SetMinCommandVersionRequest { version: 2, by: "alice".into(), reason: "all upgraded".into() };
    let e = live
        .call(req, |mut c, r| async move { c.set_min_command_version(r).await })
        .await
        .expect_err("member 3 is down");
    assert_eq!(e.code, Code::Unavailable, "{e}");
    assert!(e.message.contains("member 3 did not say"), "{e}");
    assert_eq!(status(&c).await.unwrap().min_command_version, 1);

    // Node 3 upgraded: the raise goes through REST, replicates, is audited and visible everywhere.
    restart_as(&mut c, 3, "", &all).await;
    let leader = c.wait_leader(READY_TIMEOUT).await.unwrap();
    let http_addr = c.nodes[&leader].http.clone();
    let (st, b) = http(&http_addr, "POST", "/api/v1/min-command-version", &body(2, "all upgraded"));
    assert_eq!(st, 200, "{b}");
    let v = json(&b);
    assert!(v["revision"].as_u64().is_some_and(|r| r > 0), "{b}");
    assert_eq!(v["cluster"]["min_command_version"], 2, "{b}");
    for id in 1..=3u64 {
        let ok =
            wait_until(SETTLE, || async { c.info(id).await.is_some_and(|i| i.min_command_version == 2) })
                .await;
        assert!(ok, "node {id} never applied min_command_version 2: {:?}", c.info(id).await);
    }
    let (_, b) = http(&http_addr, "GET", "/api/v1/alerts?all=true&limit=1000", "");
    assert!(b.contains("min_command_version 1 -> 2 by alice: all upgraded"), "{b}");

    // The CLI: show, refuse without a reason, roll back, and raise again through gRPC.
    let addrs = c.grpc_addrs();
    let (ok, out, err) = cli(&["upgrade"], &addrs);
    assert!(ok, "{err}");
    assert!(out.contains("min_command_version 2"), "{out}");
    assert!(out.contains(&format!("member 3  knows 1..={knows}")), "{out}");
    let (ok, out, err) = cli(&["status"], &addrs);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("min_command_version 2, this node knows 1..={knows}")), "{out}");
    let (ok, _, err) = cli(&["upgrade", "--min-command-version", "1"], &addrs);
    assert!(!ok && err.contains("--reason"), "{err}");
    let (ok, out, err) =
        cli(&["upgrade", "--min-command-version", "1", "--reason", "rollback drill"], &addrs);
    assert!(ok, "{err}");
    assert!(out.contains("min_command_version set to 1"), "{out}");
    let r = set_min(&c, 2, "drill over").await.expect("raise again");
    assert_eq!(r.cluster.map(|i| i.min_command_version), Some(2));
    let e = set_min(&c, 0, "zero").await.expect_err("0");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
}

/// One gRPC watch from now, held open.
async fn open_watch(
    c: &LocalCluster,
) -> Result<tonic::Streaming<api::WatchResponse>, proto::error::ApiError> {
    let mut cl = Client::new(vec![c.nodes[&1].grpc.clone()]);
    cl.max_attempts = 1;
    let req = api::WatchRequest { from_revision: 0, ..Default::default() };
    cl.call(req, |mut c, r| async move { c.watch(r).await }).await
}

fn metric(http_addr: &str, name: &str) -> Option<u64> {
    let (_, body) = http(http_addr, "GET", "/metrics", "");
    body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_refused_at_the_node_limit_on_both_front_ends() {
    const LIMIT: usize = 2;
    let c = LocalCluster::start_with_config(&huatuo_bin(), 1, &format!("max_watches = {LIMIT}\n")).unwrap();
    assert!(c.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", c.log_tail(1));
    let http_addr = c.nodes[&1].http.clone();
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(open_watch(&c).await.expect("a watch under the limit"));
    }
    let e = open_watch(&c).await.expect_err("one more than the limit");
    assert_eq!(e.code, Code::ResourceExhausted, "{e}");
    assert!(e.message.contains("max_watches"), "{e}");
    let (st, b) = http(&http_addr, "GET", "/api/v1/watch?timeout_ms=100", "");
    assert_eq!(st, 429, "{b}");
    assert_eq!(json(&b)["code"], "RESOURCE_EXHAUSTED", "{b}");
    assert_eq!(metric(&http_addr, "huatuo_master_watchers"), Some(LIMIT as u64));
    assert_eq!(metric(&http_addr, "huatuo_master_watchers_max"), Some(LIMIT as u64));
    assert_eq!(metric(&http_addr, "huatuo_master_watches_refused_total"), Some(2));
    // A client that leaves frees its slot: the next watch (REST here) is served.
    drop(held.pop());
    let freed =
        wait_until(SETTLE, || async { metric(&http_addr, "huatuo_master_watchers") == Some(1) }).await;
    assert!(freed, "the slot was not freed: {:?}", metric(&http_addr, "huatuo_master_watchers"));
    let (st, b) = http(&http_addr, "GET", "/api/v1/watch?timeout_ms=100", "");
    assert_eq!(st, 200, "{b}");
    assert!(b.contains("progress"), "{b}");
    drop(held);
}

#[test]
fn a_bad_watch_limit_is_refused_at_start() {
    let cfg = |extra: &str| {
        format!("id = 1\ndata_dir = \"/tmp/x\"\ninsecure = true\n{extra}\n[peers]\n1 = \"127.0.0.1:7710\"\n")
    };
    for bad in [
        "max_watches = 0",
        "max_watches = 10000000",
        "knows_command_version = 0",
        "knows_command_version = 99",
    ] {
        let e = master::config::MasterConfig::from_toml(&cfg(bad)).unwrap().resolve().expect_err(bad);
        assert!(e.to_string().contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
    }
    let r = master::config::MasterConfig::from_toml(&cfg("")).unwrap().resolve().unwrap();
    assert_eq!(r.max_watches, master::api::watch::MAX_WATCHES);
    assert_eq!(r.knows_command_version, master::model::COMMAND_VERSION);
}

/// Once the cluster enabled binary entries (command version 9, raised by the leader on its own), findings
/// travel in them and every member applies them; a member downgraded to a binary that predates them
/// (`knows_command_version = 8`) stops at the first one, saying which version it needs, instead of skipping
/// it as garbage (which would leave its state silently behind the others').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_entries_are_applied_everywhere_and_stop_a_downgraded_member() {
    let v = master::model::BINARY_ENTRY_VERSION;
    // The leader raises the cluster to the newest version every member knows; entries are stamped with it.
    let newest = master::model::COMMAND_VERSION;
    let mut c = LocalCluster::start_with_config(&huatuo_bin(), 3, "tick_ms = 50\n").unwrap();
    assert!(c.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", c.log_tail(1));
    let raised =
        wait_until(SETTLE, || async { status(&c).await.is_some_and(|i| i.min_command_version == newest) });
    assert!(raised.await, "never raised to {newest}: {:?}", status(&c).await);
    let report = |seq: u64, disk: &str| {
        let f = api::Finding {
            object: format!("disk/bin-host/{disk}"),
            severity: "WARNING".into(),
            checker: "smart".into(),
            version: "1.0.0".into(),
            rule: "smart.pending".into(),
            evidence: "pending sectors 8 \u{e9}".into(),
            readings: [("smart_197_raw".to_string(), "8".to_string())].into(),
            time_ms: tests::now_ms(),
            shadow: false,
        };
        api::IngestRequest { agent: "bin-agent".into(), seq, findings: vec![f], epoch: 5 }
    };
    let mut cl = c.client();
    let r = cl.call(report(1, "sda"), |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r.applied, 1);
    for id in 1..=3u64 {
        let ok = wait_until(SETTLE, || async { c.info(id).await.is_some_and(|i| i.revision >= r.revision) });
        assert!(ok.await, "node {id} never applied revision {}: {:?}", r.revision, c.info(id).await);
        let (st, body) =
            http(&c.nodes[&id].http.clone(), "GET", "/api/v1/objects/disk/bin-host/sda?stale=true", "");
        assert_eq!(st, 200, "node {id}: {body}");
        assert!(
            body.contains("pending sectors 8 \u{e9}") && body.contains("smart_197_raw"),
            "node {id}: {body}"
        );
    }

    // Node 3 is rolled back to a binary that knows version 8 (stopped in order, as a rollback does: after a
    // kill -9 its last applies, committed without an fsync, would be applied again at start, and the
    // re-applied binary entry would stop it before the next one): the next binary entry stops it.
    c.set_node_config(3, "knows_command_version = 8\n").unwrap();
    let stopped = c.stop(3, SETTLE);
    assert!(stopped.is_some_and(|s| s.success()), "node 3 did not stop in order: {stopped:?}");
    c.spawn(3, false).unwrap();
    let back = wait_until(SETTLE, || async { c.info(3).await.is_some_and(|i| i.knows_command_version == 8) });
    assert!(back.await, "node 3 never came back knowing 8: {}", c.log_tail(3));
    let mut live = Client::new(vec![c.nodes[&1].grpc.clone(), c.nodes[&2].grpc.clone()]);
    let r2 = live.call(report(2, "sdb"), |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r2.applied, 1);
    let why = format!("needs command version {newest}, this binary knows up to 8: upgrade this node");
    assert!(stopped_saying(&c, 3, &why).await, "node 3 kept running past a binary entry: {}", c.log_tail(3));
    // It stopped before the entry: the finding it could not read is not in its state.
    let (applied, body) = serves(&c, 3, "/api/v1/objects/disk/bin-host/sdb?stale=true");
    assert!(!applied, "node 3 applied what it cannot decode: {body}");
    // A binary one version short stops there too, though it decodes the entry: the version in force may
    // change only how existing commands are decided or stored (10: network incidents, 11: the safety net's
    // windows), so it is in every stamp.
    c.set_node_config(3, &format!("knows_command_version = {}\n", newest - 1)).unwrap();
    c.kill9(3);
    c.spawn(3, false).unwrap();
    let back = wait_until(SETTLE, || async {
        c.info(3).await.is_some_and(|i| i.knows_command_version == newest - 1)
    });
    assert!(back.await, "node 3 never came back knowing {}: {}", newest - 1, c.log_tail(3));
    let why = format!("needs command version {newest}, this binary knows up to {}", newest - 1);
    assert!(
        stopped_saying(&c, 3, &why).await,
        "node 3 one version short applied past the raise: {}",
        c.log_tail(3)
    );
    let (applied, body) = serves(&c, 3, "/api/v1/objects/disk/bin-host/sdb?stale=true");
    assert!(!applied, "node 3 applied an entry of a version it does not know: {body}");

    // Lowering below 9, a rollback's first step, is refused while the change log keeps binary rows (node 3's
    // binary could not read them in a snapshot either): gRPC, REST and the CLI alike, and nothing changes.
    let lower =
        api::SetMinCommandVersionRequest { version: v - 1, by: "alice".into(), reason: "rollback".into() };
    let e = live
        .call(lower, |mut c, r| async move { c.set_min_command_version(r).await })
        .await
        .expect_err("binary rows are kept");
    assert_eq!(e.code, Code::Conflict, "{e}");
    assert!(e.message.contains(&format!("binary format of command version {v}")), "{e}");
    let refusal = format!("min_command_version {} refused", v - 1);
    for id in [1u64, 2] {
        let body = format!(r#"{{"version":{},"by":"alice","reason":"rollback"}}"#, v - 1);
        let (st, b) = http(&c.nodes[&id].http.clone(), "POST", "/api/v1/min-command-version", &body);
        assert_eq!((st, json(&b)["code"].as_str()), (409, Some("CONFLICT")), "node {id}: {b}");
        assert!(b.contains(&refusal) && b.contains("roll forward"), "node {id}: {b}");
    }
    let addrs = format!("{},{}", c.nodes[&1].grpc, c.nodes[&2].grpc);
    let (ok, _, err) = cli(&["upgrade", "--min-command-version", "1", "--reason", "rollback"], &addrs);
    assert!(!ok && err.contains("min_command_version 1 refused") && err.contains("binary format"), "{err}");
    let i = live.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
    assert_eq!(i.expect("cluster info").min_command_version, newest);
}

/// The cluster scope's disk entries within the quota's window, as node `id` reads its own state.
fn entries_on(c: &LocalCluster, id: u64) -> Option<u64> {
    let (st, body) = http(&c.nodes[&id].http.clone(), "GET", "/api/v1/safety?stale=true", "");
    if st != 200 {
        return None;
    }
    let v = json(&body);
    let cluster = v["scopes"].as_array()?.iter().find(|s| s["scope"] == "cluster")?.clone();
    cluster["quotas"].as_array()?.iter().find(|q| q["kind"] == "disk")?["entries"].as_u64()
}

/// Wait until every member reads `want` entries in the cluster's disk window.
async fn every_member(c: &LocalCluster, want: u64) {
    let ok = wait_until(SETTLE, || async { (1..=3).all(|id| entries_on(c, id) == Some(want)) });
    assert!(ok.await, "want {want} entries: {:?}", (1..=3).map(|id| entries_on(c, id)).collect::<Vec<_>>());
}

/// The safety net's windows follow the replicated version (command version 11, `fsm/windows.rs`): a cluster
/// at 10 keeps them as lists in the scope records, the raise to 11 moves them into rows and a lowering moves
/// them back; the quota's use reads the same on every member throughout. After the lowering, a member
/// restarted as a binary that knows only 10 (the rollback's second step) applies the entries that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_nets_windows_move_with_the_version_and_back() {
    let rows = master::model::WINDOW_ROWS_VERSION;
    let mut c =
        LocalCluster::start_with_config(&huatuo_bin(), 3, "tick_ms = 50\nauto_upgrade = false\n").unwrap();
    assert!(c.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", c.log_tail(1));
    set_min(&c, rows - 1, "windows as lists").await.expect("to 10");
    // Quotas open, so every error below is admitted and counted in the cluster's window.
    let config = serde_json::json!({
        "quotas": [{"kind": "disk", "scope": "cluster", "window_ms": 3_600_000,
                    "max_entries": "100%", "max_concurrent": "100%"}],
        "spike": {"window_ms": 600_000, "min": 1000, "share": "100%"},
    });
    let req = api::SetQuotasRequest {
        by: "alice".into(),
        reason: "open".into(),
        config_json: config.to_string(),
        ..Default::default()
    };
    let mut cl = c.client();
    cl.call(req, |mut c, r| async move { c.set_quotas(r).await }).await.expect("quotas");
    let mut seq = 0u64;
    let mut report = |disks: std::ops::Range<u32>, severity: &str| {
        seq += 1;
        let findings = disks
            .map(|d| api::Finding {
                object: format!("disk/win-host/sd{d}"),
                severity: severity.into(),
                checker: "smart".into(),
                version: "1.0.0".into(),
                rule: "smart.reallocated".into(),
                evidence: "reallocated sectors".into(),
                readings: Default::default(),
                time_ms: tests::now_ms(),
                shadow: false,
            })
            .collect();
        api::IngestRequest { agent: "win-agent".into(), seq, findings, epoch: 1 }
    };
    // Ten disks appear first (findings create objects), so the population is there before any error.
    let r =
        cl.call(report(0..10, "GOOD"), |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r.applied, 10);
    let r =
        cl.call(report(0..3, "ERROR"), |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r.applied, 3);
    every_member(&c, 3).await;
    // Into rows, and one more error counted there.
    set_min(&c, rows, "windows as rows").await.expect("to 11");
    every_member(&c, 3).await;
    let r =
        cl.call(report(3..4, "ERROR"), |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r.applied, 1);
    every_member(&c, 4).await;
    // Back into lists, then node 3 plays the older binary: it applies what follows like the others.
    set_min(&c, rows - 1, "rollback").await.expect("back to 10");
    every_member(&c, 4).await;
    restart_as(
        &mut c,
        3,
        &format!("knows_command_version = {}\n", rows - 1),
        &[(1, master::model::COMMAND_VERSION), (2, master::model::COMMAND_VERSION), (3, rows - 1)],
    )
    .await;
    let mut cl = c.client();
    let r =
        cl.call(report(4..6, "ERROR"), |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r.applied, 2);
    every_member(&c, 6).await;
    let (st, body) = http(&c.nodes[&3].http.clone(), "GET", "/healthz", "");
    assert_eq!(st, 200, "node 3 stopped: {body}");
}
