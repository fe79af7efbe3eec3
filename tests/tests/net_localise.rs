//! Network fault localisation on the master (issue 16): 3 real `huatuo master` processes (fsync, loopback)
//! with a topology file of 12 hosts under 4 ToRs, 2 aggregation switches and 1 spine, and simulated agents
//! (gRPC heartbeats carrying hand-built NetReports). A host whose flows to every other ToR lose 20% -> its
//! `nic/HOST/eth0` goes ERROR through the usual ingest and it tops NetSuspects; a retried heartbeat's
//! report is counted once; hostile reports are refused with INVALID_ARGUMENT; peers handed out are bounded
//! and cover every agent over successive beats; a follower answers NOT_LEADER.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::collections::BTreeSet;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use tests::{huatuo_bin, wait_until};

/// Windows are 1 s here; a verdict and its commit take a few windows on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);
const TORS: usize = 4;
const PER_TOR: usize = 3;

fn host(i: usize) -> String {
    format!("h{i:02}")
}

fn tor_of(i: usize) -> usize {
    i / PER_TOR
}

fn topology_csv() -> String {
    (0..TORS * PER_TOR)
        .map(|i| format!("{},tor-{},agg-{},spine-0\n", host(i), tor_of(i), tor_of(i) % 2))
        .collect()
}

/// One window's report of host `me`: every other host probed 100 times; flows touching `bad` lose 20%.
fn report(me: usize, seq: u64, bad: Option<usize>) -> api::NetReport {
    report_with(me, seq, |a, b| bad.is_some_and(|x| (x == a || x == b) && tor_of(a) != tor_of(b)))
}

/// One window's report of host `me`; `lossy(me, peer)` says which flows lose 20%.
fn report_with(me: usize, seq: u64, lossy: impl Fn(usize, usize) -> bool) -> api::NetReport {
    report_traced(me, seq, |a, b| (lossy(a, b), Vec::new()))
}

/// One window's report of host `me`; `flow(me, peer)` says whether the flow loses 20% and the hops its
/// trace found (addresses; empty: not traced).
fn report_traced(me: usize, seq: u64, flow: impl Fn(usize, usize) -> (bool, Vec<String>)) -> api::NetReport {
    let mut peers = Vec::new();
    let mut votes = Vec::new();
    for p in (0..TORS * PER_TOR).filter(|p| *p != me) {
        let (lossy, hops) = flow(me, p);
        let lost = if lossy { 20 } else { 0 };
        peers.push(api::PeerResult {
            host: host(p),
            sent: 100,
            lost,
            connect_failures: 0,
            rtt_p50_us: 200,
            rtt_p99_us: 400,
            hops,
        });
        if lossy {
            votes.push(host(p));
        }
    }
    if !votes.is_empty() {
        votes.push(host(me));
    }
    api::NetReport {
        window_seq: seq,
        window_end_ms: 0,
        window_ms: 1000,
        checker_version: "1".into(),
        iface: "eth0".into(),
        peers,
        votes,
        tcp_retrans_segs: 0,
        tcp_out_segs: 1000,
        probe_bytes: 0,
    }
}

fn beat(me: usize, net: Vec<api::NetReport>) -> api::HeartbeatRequest {
    api::HeartbeatRequest {
        agent: format!("agent-{}", host(me)),
        host: host(me),
        version: "0.1.0".into(),
        started_ms: 7,
        probe_addr: format!("127.0.0.{}:7791", me + 1),
        net,
        ..Default::default()
    }
}

/// `huatuo ARGS` against the cluster: (success, stdout and stderr).
fn cli(args: &[&str], masters: &str) -> (bool, String) {
    let out = std::process::Command::new(huatuo_bin())
        .args(args)
        .env("HUATUO_MASTER", masters)
        .output()
        .expect("run huatuo");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A plain HTTP/1.1 GET on loopback (the cluster runs insecure): status line, headers and body.
fn http_get(addr: &str, path: &str) -> String {
    tests::http_get(addr, path).unwrap_or_else(|| panic!("GET {path} from {addr}: no answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_host_is_named_its_nic_goes_error_and_bad_reports_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("fabric.csv");
    std::fs::write(&topo, topology_csv()).expect("write topology");
    let extra = format!(
        "[net]\nwindow_s = 1\nclear_windows = 2\n[topology]\nfile = {:?}\n",
        topo.display().to_string()
    );
    let mut cluster = LocalCluster::start_with_config(&huatuo_bin(), 3, &extra).expect("start cluster");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader; node 1 log:\n{}", cluster.log_tail(1)));
    let mut client = cluster.client();
    let n = TORS * PER_TOR;

    // Peers: bounded replies that cover every other agent over successive beats.
    let mut seen = BTreeSet::new();
    for round in 0..3 {
        for me in 0..n {
            let r = client
                .call(beat(me, vec![]), |mut c, r| async move { c.heartbeat(r).await })
                .await
                .expect("heartbeat");
            assert!(r.peers.len() <= 64, "{} peers in one reply", r.peers.len());
            assert!(r.peers.iter().all(|p| p.host != host(me)), "never itself");
            if me == 0 && round > 0 {
                seen.extend(r.peers.iter().map(|p| (p.host.clone(), p.tor.clone())));
            }
        }
    }
    let want: BTreeSet<(String, String)> = (1..n).map(|p| (host(p), format!("tor-{}", tor_of(p)))).collect();
    assert_eq!(seen, want, "h00 is handed every other agent with its ToR from the topology");

    // Hostile reports: refused whole, nothing counted.
    let mut bad = report(1, 1, None);
    bad.peers[0].lost = 101;
    let e = client
        .call(beat(1, vec![bad]), |mut c, r| async move { c.heartbeat(r).await })
        .await
        .expect_err("lost > sent");
    assert_eq!(e.code, proto::error::Code::InvalidArgument, "{e}");
    let mut forged = report(1, 1, None);
    forged.votes = vec!["h99".into()];
    let e = client
        .call(beat(1, vec![forged]), |mut c, r| async move { c.heartbeat(r).await })
        .await
        .expect_err("vote for a host never probed");
    assert_eq!(e.code, proto::error::Code::InvalidArgument, "{e}");

    // h00's NIC loses 20% of its packets to other ToRs: every agent reports every window until the leader
    // names it. Each report is sent twice (a retried heartbeat): counted once.
    let mut seq = 1;
    let found = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let mut c = cluster.client();
        async move {
            for me in 0..n {
                for _ in 0..2 {
                    let req = beat(me, vec![report(me, s, Some(0))]);
                    if c.call(req, |mut c, r| async move { c.heartbeat(r).await }).await.is_err() {
                        return false;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let nic = c
                .call(
                    api::GetObjectRequest { id: "nic/h00/eth0".into(), ..Default::default() },
                    |mut c, r| async move { c.get_object(r).await },
                )
                .await;
            nic.is_ok_and(|o| o.object.is_some_and(|o| o.state == "ERROR"))
        }
    })
    .await;
    assert!(found, "nic/h00/eth0 never went ERROR; leader log:\n{}", cluster.log_tail(leader));
    let s = client
        .call(api::NetSuspectsRequest { limit: 0 }, |mut c, r| async move { c.net_suspects(r).await })
        .await
        .expect("suspects");
    assert!(s.topology, "the topology file is loaded");
    let top = s.suspects.first().expect("a suspect");
    assert_eq!((top.target.as_str(), top.rank), ("nic/h00/eth0", 1), "{:?}", s.suspects);
    assert!(!top.why.is_empty());
    assert!(s.reporters as usize <= n, "{} reporters of {n} agents", s.reporters);
    // Every report was sent twice: each counted once (the leader did not change: one memory saw them all).
    let rounds = seq - 1;
    let metrics = http_get(&cluster.nodes[&leader].http, "/metrics");
    let figure = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert_eq!(figure("huatuo_master_net_reports_received_total"), rounds * n as u64, "each report once");
    assert_eq!(
        figure("huatuo_master_net_reports_duplicate_total"),
        rounds * n as u64,
        "each retry a duplicate"
    );
    assert_eq!(figure("huatuo_master_net_reports_refused_total"), 0);
    // REST answers the same ranking, with the same limits.
    let rest = http_get(&cluster.nodes[&leader].http, "/api/v1/net/suspects?limit=3");
    let body = rest.split("\r\n\r\n").nth(1).unwrap_or("");
    let rest: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {rest}"));
    assert_eq!(rest["suspects"][0]["target"], "nic/h00/eth0", "{rest}");
    let bad = http_get(&cluster.nodes[&leader].http, "/api/v1/net/suspects?limit=5000");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    // The CLI prints the same ranking, the matrix and the paths.
    let masters = cluster.grpc_addrs();
    let (ok, out) = cli(&["net", "suspects"], &masters);
    assert!(ok && out.contains("1. nic/h00/eth0") && out.contains("ERROR"), "{out}");
    let (ok, out) = cli(&["net", "suspects", "--json", "--limit", "1"], &masters);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(ok && v["suspects"][0]["target"] == "nic/h00/eth0", "{out}");
    let (ok, out) = cli(&["net", "matrix", "--rack", "tor-0"], &masters);
    assert!(
        ok && out.contains("tor-0") && out.lines().skip(1).any(|l| l.contains('%') && !l.contains(" 0.00%")),
        "{out}"
    );
    let (ok, out) = cli(&["net", "path", "h00", "h11"], &masters);
    assert!(ok && out.contains("route 1: h00 -> tor-0"), "{out}");
    let (ok, out) = cli(&["net", "path", "h00", "nobody"], &masters);
    assert!(!ok && out.contains("nobody"), "{out}");
    // No switch or link suspect moved a host: only h00's objects left GOOD.
    let list = client
        .call(api::ListObjectsRequest::default(), |mut c, r| async move { c.list_objects(r).await })
        .await
        .expect("list");
    for o in list.objects.iter().filter(|o| o.state == "ERROR") {
        assert!(o.id.contains("h00") || o.kind == "switch" || o.kind == "link", "{} is {}", o.id, o.state);
    }
    // Matrix and path answer from the same window.
    let m = client
        .call(api::NetMatrixRequest { rack: "tor-0".into() }, |mut c, r| async move { c.net_matrix(r).await })
        .await
        .expect("matrix");
    assert!(m.cells.iter().all(|c| c.src == "tor-0" || c.dst == "tor-0") && !m.cells.is_empty(), "{m:?}");
    let p = client
        .call(api::NetPathRequest { a: host(0), b: host(11) }, |mut c, r| async move { c.net_path(r).await })
        .await
        .expect("path");
    assert!(!p.routes.is_empty() && p.routes.iter().all(|r| r.nodes.first() == Some(&host(0))), "{p:?}");
    let e = client
        .call(api::NetPathRequest { a: host(0), b: "no such/host".into() }, |mut c, r| async move {
            c.net_path(r).await
        })
        .await
        .expect_err("bad host");
    assert_eq!(e.code, proto::error::Code::InvalidArgument, "{e}");

    // A follower answers NOT_LEADER (FailedPrecondition with the leader's address) rather than stale data.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let addr = cluster.nodes[&follower].grpc.clone();
    let mut direct =
        proto::api::master_client::MasterClient::connect(format!("http://{addr}")).await.expect("connect");
    let e = direct.net_suspects(api::NetSuspectsRequest::default()).await.expect_err("follower");
    assert_ne!(e.code(), tonic::Code::Ok);
    assert!(e.message().to_lowercase().contains("leader"), "{e}");

    // The leader dies: its window and verdict die with it; the new leader starts empty (no reports since),
    // while the NIC's ERROR, which was committed, stays.
    cluster.kill9(leader);
    let fresh = wait_until(SETTLE, || {
        let mut c = cluster.client();
        async move {
            let r = c
                .call(api::NetSuspectsRequest { limit: 0 }, |mut c, r| async move { c.net_suspects(r).await })
                .await;
            r.is_ok_and(|r| r.reporters == 0 && r.suspects.is_empty())
        }
    })
    .await;
    assert!(fresh, "the new leader did not start with an empty window");
    let nic = client
        .call(
            api::GetObjectRequest { id: "nic/h00/eth0".into(), ..Default::default() },
            |mut c, r| async move { c.get_object(r).await },
        )
        .await
        .expect("nic");
    assert_eq!(nic.object.map(|o| o.state).as_deref(), Some("ERROR"));
}

/// Every agent reports one window (each report twice: a retried heartbeat); false if a beat failed.
async fn round(cluster: &LocalCluster, seq: u64, lossy: impl Fn(usize, usize) -> bool + Copy) -> bool {
    let mut c = cluster.client();
    for me in 0..TORS * PER_TOR {
        for _ in 0..2 {
            let req = beat(me, vec![report_with(me, seq, lossy)]);
            if c.call(req, |mut c, r| async move { c.heartbeat(r).await }).await.is_err() {
                return false;
            }
        }
    }
    true
}

async fn state_of(cluster: &LocalCluster, id: &str) -> Option<String> {
    let req = api::GetObjectRequest { id: id.into(), ..Default::default() };
    let r = cluster.client().call(req, |mut c, r| async move { c.get_object(r).await }).await.ok()?;
    r.object.map(|o| o.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tor_uplink_fault_names_the_link_or_switch_moves_no_host_and_clears_when_healthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("fabric.csv");
    std::fs::write(&topo, topology_csv()).expect("write topology");
    let extra = format!(
        "[net]\nwindow_s = 1\nclear_windows = 2\n[topology]\nfile = {:?}\n",
        topo.display().to_string()
    );
    let cluster = LocalCluster::start_with_config(&huatuo_bin(), 3, &extra).expect("start cluster");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader; node 1 log:\n{}", cluster.log_tail(1)));
    let mut client = cluster.client();

    // Healthy: three windows judged with reports, none with a suspect or a bad flow.
    let mut seq = 0;
    let healthy = |_: usize, _: usize| false;
    let windows = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let judged = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let cl = &cluster;
        let mut c = cl.client();
        let windows = windows.clone();
        async move {
            if !round(cl, s, healthy).await {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(r) = c
                .call(api::NetSuspectsRequest { limit: 0 }, |mut c, r| async move { c.net_suspects(r).await })
                .await
            else {
                return false;
            };
            assert!(r.suspects.is_empty() && r.bad_flows == 0, "healthy fabric, suspects: {:?}", r.suspects);
            if r.reporters > 0 {
                windows.lock().expect("lock").insert(r.window_end_ms);
            }
            windows.lock().expect("lock").len() >= 3
        }
    })
    .await;
    assert!(judged, "fewer than 3 windows judged; leader log:\n{}", cluster.log_tail(leader));

    // tor-1's uplink to agg-1 loses 20%: every flow between tor-1's hosts and other ToRs crosses it.
    let uplink = |a: usize, b: usize| (tor_of(a) == 1) != (tor_of(b) == 1);
    let named = std::sync::Arc::new(std::sync::Mutex::new(None));
    let found = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let cl = &cluster;
        let mut c = cl.client();
        let named = named.clone();
        async move {
            if !round(cl, s, uplink).await {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(r) = c
                .call(api::NetSuspectsRequest { limit: 0 }, |mut c, r| async move { c.net_suspects(r).await })
                .await
            else {
                return false;
            };
            let Some(top) = r.suspects.first() else { return false };
            if !["link", "switch"].contains(&top.kind.as_str()) || top.decision.is_empty() {
                return false;
            }
            let state = state_of(cl, &top.target).await;
            *named.lock().expect("lock") = Some((top.target.clone(), r.suspects.clone()));
            state.is_some_and(|st| st != "GOOD")
        }
    })
    .await;
    assert!(
        found,
        "no link/switch suspect left GOOD: {:?}; leader log:\n{}",
        named.lock().expect("lock"),
        cluster.log_tail(leader)
    );
    let (device, all) = named.lock().expect("lock").clone().expect("named");
    assert!(
        ["link/agg-1--tor-1", "switch/tor-1"].contains(&device.as_str()),
        "the fault is tor-1's uplink (or tor-1 itself), named {device}: {all:?}"
    );
    // No host moved: not one machine or NIC is out of GOOD.
    let list = client
        .call(api::ListObjectsRequest::default(), |mut c, r| async move { c.list_objects(r).await })
        .await
        .expect("list");
    for o in &list.objects {
        assert!(o.kind == "link" || o.kind == "switch" || o.state == "GOOD", "{} is {}", o.id, o.state);
    }
    assert!(list.objects.iter().any(|o| o.id == device), "the device object was created by its finding");

    // Healthy again: after clear_windows (2) quiet windows the device returns to GOOD.
    let cleared = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let cl = &cluster;
        let device = device.clone();
        async move {
            if !round(cl, s, healthy).await {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            state_of(cl, &device).await.as_deref() == Some("GOOD")
        }
    })
    .await;
    assert!(cleared, "{device} never returned to GOOD; leader log:\n{}", cluster.log_tail(leader));
}

/// The fabric of [`topology_csv`] with two equal-cost uplinks per ToR (agg-0 and agg-1, a two-tier Clos)
/// and every switch's address, so traced hops can be named: ToR t answers from 10.200.t.1, agg-x from
/// 10.200.10x.1.
fn topology_toml_with_addrs() -> String {
    let mut t = String::new();
    for tor in 0..TORS {
        let hosts: Vec<String> =
            (0..TORS * PER_TOR).filter(|&i| tor_of(i) == tor).map(|i| format!("{:?}", host(i))).collect();
        t += &format!(
            "[[tor]]\nname = \"tor-{tor}\"\nhosts = [{}]\nuplinks = [\"agg-0\", \"agg-1\"]\naddrs = [\"10.200.{tor}.1\"]\n",
            hosts.join(", ")
        );
    }
    for agg in 0..2 {
        t += &format!("[[agg]]\nname = \"agg-{agg}\"\naddrs = [\"10.200.10{agg}.1\"]\n");
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_lossy_flows_name_the_one_faulty_uplink_among_its_equal_cost_twins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("fabric.toml");
    std::fs::write(&topo, topology_toml_with_addrs()).expect("write topology");
    let extra = format!("[net]\nwindow_s = 1\n[topology]\nfile = {:?}\n", topo.display().to_string());
    let cluster = LocalCluster::start_with_config(&huatuo_bin(), 3, &extra).expect("start cluster");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader; node 1 log:\n{}", cluster.log_tail(1)));
    // ECMP per flow: a cross-ToR flow takes agg-0 or agg-1 by a hash of its ends and the window. tor-1's
    // uplink to agg-1 loses 20%; the agents trace their lossy flows (ToR, agg, ToR addresses). Without the
    // traces, tor-1's two uplinks carry exactly the same flows and could only be named as a pair.
    let flow = |seq: u64| {
        move |a: usize, b: usize| {
            if tor_of(a) == tor_of(b) {
                return (false, Vec::new());
            }
            let agg = (a * 7 + b * 13 + seq as usize) % 2;
            let lossy = agg == 1 && (tor_of(a) == 1 || tor_of(b) == 1);
            let hops = if lossy {
                vec![
                    format!("10.200.{}.1", tor_of(a)),
                    format!("10.200.10{agg}.1"),
                    format!("10.200.{}.1", tor_of(b)),
                ]
            } else {
                Vec::new()
            };
            (lossy, hops)
        }
    };
    let mut seq = 0;
    let named = std::sync::Arc::new(std::sync::Mutex::new(None));
    let found = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let cl = &cluster;
        let named = named.clone();
        async move {
            let mut c = cl.client();
            for me in 0..TORS * PER_TOR {
                let req = beat(me, vec![report_traced(me, s, flow(s))]);
                if c.call(req, |mut c, r| async move { c.heartbeat(r).await }).await.is_err() {
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(r) = c
                .call(api::NetSuspectsRequest { limit: 0 }, |mut c, r| async move { c.net_suspects(r).await })
                .await
            else {
                return false;
            };
            let Some(top) = r.suspects.first() else { return false };
            *named.lock().expect("lock") = Some(r.suspects.clone());
            top.target == "link/agg-1--tor-1"
                && !top.decision.is_empty()
                && state_of(cl, &top.target).await.is_some_and(|st| st != "GOOD")
        }
    })
    .await;
    let suspects = named.lock().expect("lock").clone();
    assert!(
        found,
        "link/agg-1--tor-1 not named first and out of GOOD: {suspects:?}; leader log:\n{}",
        cluster.log_tail(leader)
    );
    let suspects = suspects.expect("suspects");
    assert!(!suspects[0].why.contains("cannot be told apart"), "{:?}", suspects[0]);
    assert!(
        suspects.iter().all(|s| s.target != "link/agg-0--tor-1"),
        "the healthy twin uplink is no suspect: {suspects:?}"
    );
    assert_eq!(state_of(&cluster, "link/agg-0--tor-1").await, None, "no finding filed on the twin");
    // `net path` shows a measured flow's traced route, named.
    // In any window, one of h03's flows to h00 and h01 hashes onto agg-1 (their hashes differ by 13).
    let mut outs = String::new();
    for peer in ["h00", "h01"] {
        let (ok, out) = cli(&["net", "path", "h03", peer], &cluster.grpc_addrs());
        assert!(ok && out.contains(&format!("route 2: h03 -> tor-1 -> agg-1 -> tor-0 -> {peer}")), "{out}");
        outs += &out;
    }
    assert!(outs.contains("traced via tor-1 -> agg-1 -> tor-0"), "{outs}");
}

#[test]
fn check_config_loads_the_topology_file_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("fabric.csv");
    std::fs::write(&good, topology_csv()).expect("write");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "h00,tor-0\nh00,tor-1\n").expect("write");
    let run = |topo: &std::path::Path, net: &str| {
        let cfg = dir.path().join("master.toml");
        let text = format!(
            "insecure = true\nid = 1\ndata_dir = {:?}\n[peers]\n1 = \"127.0.0.1:7710\"\n[net]\n{net}\n[topology]\nfile = {:?}\n",
            dir.path().join("data").display().to_string(),
            topo.display().to_string()
        );
        std::fs::write(&cfg, text).expect("write config");
        let out = std::process::Command::new(huatuo_bin())
            .args(["master", "--check-config", "--config"])
            .arg(&cfg)
            .output()
            .expect("run huatuo");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, out) = run(&good, "window_s = 2");
    assert!(ok && out.contains("12 hosts") && out.contains("window 2 s"), "{out}");
    let (ok, out) = run(&bad, "");
    assert!(!ok && out.contains("[topology] file") && out.contains("h00"), "{out}");
    let (ok, out) = run(&dir.path().join("missing.csv"), "");
    assert!(!ok && out.contains("missing.csv"), "{out}");
    let (ok, out) = run(&good, "window_s = 0");
    assert!(!ok && out.contains("window_s"), "{out}");
    assert!(!dir.path().join("data").exists(), "checking a config starts nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_topology_file_the_tors_come_from_switch_labels() {
    let cluster = LocalCluster::start_with_config(&huatuo_bin(), 3, "[net]\nwindow_s = 1\n").expect("start");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader; node 1 log:\n{}", cluster.log_tail(1)));
    let mut client = cluster.client();
    let n = TORS * PER_TOR;
    for me in 0..n {
        let object = api::RegisteredObject {
            id: format!("machine/{}", host(me)),
            labels: [("switch".to_string(), format!("tor-{}", tor_of(me)))].into(),
            ..Default::default()
        };
        let req = api::RegisterRequest {
            agent: format!("agent-{}", host(me)),
            host: host(me),
            objects: vec![object],
        };
        client.call(req, |mut c, r| async move { c.register(r).await }).await.expect("register");
    }
    // Peers carry the ToR from the labels.
    for me in 0..n {
        client.call(beat(me, vec![]), |mut c, r| async move { c.heartbeat(r).await }).await.expect("beat");
    }
    let r = client.call(beat(0, vec![]), |mut c, r| async move { c.heartbeat(r).await }).await.expect("beat");
    assert!(!r.peers.is_empty());
    for p in &r.peers {
        let i: usize = p.host[1..].parse().expect("hNN");
        assert_eq!(p.tor, format!("tor-{}", tor_of(i)), "{p:?}");
    }
    // A judged window says a topology is loaded (built from the labels), and the matrix has its racks.
    let mut seq = 0;
    let judged = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let cl = &cluster;
        let mut c = cl.client();
        async move {
            if !round(cl, s, |_, _| false).await {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(m) = c
                .call(api::NetMatrixRequest { rack: String::new() }, |mut c, r| async move {
                    c.net_matrix(r).await
                })
                .await
            else {
                return false;
            };
            m.racks.len() == TORS
        }
    })
    .await;
    assert!(judged, "no matrix over the labelled racks; leader log:\n{}", cluster.log_tail(leader));
    let s = client
        .call(api::NetSuspectsRequest { limit: 0 }, |mut c, r| async move { c.net_suspects(r).await })
        .await
        .expect("suspects");
    assert!(s.topology && s.suspects.is_empty(), "{s:?}");
}
