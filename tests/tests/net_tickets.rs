//! Network devices in the repair flow (issue 16, command version 7): 3 real `huatuo master` processes
//! (fsync, loopback) with a file ticket sink, 1 s localisation windows and a topology file of 12 hosts under
//! 4 ToRs, and simulated agents (gRPC heartbeats carrying hand-built NetReports, as in `net_localise.rs`).
//! tor-1's uplink loses 20%: the device the leader names goes ERROR, exactly one ticket line for it appears
//! in the sink (key `OBJECT@ERROR_ENTERED_MS`, the localisation's evidence in its reason, both ends of a
//! link), its `ticket` attribute is recorded while it stays ERROR, more faulty windows file nothing again,
//! and no machine or NIC leaves GOOD. Then the uplink heals and fails again while the ticket is open
//! (command version 10): the device goes GOOD and back to ERROR as the same incident, with no second ticket.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use tests::{huatuo_bin, wait_until};

/// Windows are 1 s; a verdict, its commit and the filing take a few windows on a loaded machine.
const SETTLE: Duration = Duration::from_secs(90);
const TORS: usize = 4;
const PER_TOR: usize = 3;
/// The command version from which a network incident lasts while its ticket is open (`master::model`);
/// network devices are in the repair flow since 7.
const NET_TICKETS: u32 = master::model::NET_INCIDENT_COMMAND_VERSION;

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

/// tor-1's uplink: every flow between tor-1's hosts and another ToR crosses it.
fn uplink(a: usize, b: usize) -> bool {
    (tor_of(a) == 1) != (tor_of(b) == 1)
}

/// One window's report of host `me`: every other host probed 100 times; while `faulty`, flows over the
/// uplink lose 20%.
fn report(me: usize, seq: u64, faulty: bool) -> api::NetReport {
    let mut peers = Vec::new();
    let mut votes = Vec::new();
    for p in (0..TORS * PER_TOR).filter(|p| *p != me) {
        let lossy = faulty && uplink(me, p);
        peers.push(api::PeerResult {
            host: host(p),
            sent: 100,
            lost: if lossy { 20 } else { 0 },
            connect_failures: 0,
            rtt_p50_us: 200,
            rtt_p99_us: 400,
            hops: Vec::new(),
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

/// Every agent reports one window (of the uplink fault while `faulty`), then the leader gets a moment to
/// judge it; false if a beat failed (e.g. during an election).
async fn round(cluster: &LocalCluster, seq: u64, faulty: bool) -> bool {
    let mut c = cluster.client();
    for me in 0..TORS * PER_TOR {
        let req = api::HeartbeatRequest {
            agent: format!("agent-{}", host(me)),
            host: host(me),
            version: "0.1.0".into(),
            started_ms: 7,
            probe_addr: format!("127.0.0.{}:7791", me + 1),
            net: vec![report(me, seq, faulty)],
            ..Default::default()
        };
        if c.call(req, |mut c, r| async move { c.heartbeat(r).await }).await.is_err() {
            return false;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    true
}

async fn object(cluster: &LocalCluster, id: &str) -> Option<api::Object> {
    let req = api::GetObjectRequest { id: id.into(), ..Default::default() };
    cluster.client().call(req, |mut c, r| async move { c.get_object(r).await }).await.ok()?.object
}

/// The device a window named as its top suspect, with the window's ranked suspects.
type Named = (String, Vec<api::NetSuspect>);

/// The sink file's ticket lines (JSON).
fn ticket_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a ticket line"))
        .collect()
}

/// The lines filed about `device`.
fn lines_about(path: &std::path::Path, device: &str) -> Vec<serde_json::Value> {
    ticket_lines(path).into_iter().filter(|v| v["object"] == device).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_uplink_files_one_ticket_for_its_incident_and_moves_no_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("fabric.csv");
    std::fs::write(&topo, topology_csv()).expect("write topology");
    let sink = dir.path().join("tickets.jsonl");
    let extra = format!(
        "[net]\nwindow_s = 1\nclear_windows = 2\n[topology]\nfile = {:?}\n[tickets]\nsink = \"file\"\npath = {:?}\n\
         poll_ms = 200\n",
        topo.display().to_string(),
        sink.display().to_string()
    );
    let cluster = LocalCluster::start_with_config(&huatuo_bin(), 3, &extra).expect("start cluster");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader; node 1 log:\n{}", cluster.log_tail(1)));
    let mut client = cluster.client();

    // The leader enables command version 7 by itself once every member reports knowing it (auto_upgrade):
    // before that a link entering ERROR files nothing (tested in the fsm), so wait for it.
    let enabled = wait_until(SETTLE, || {
        let mut c = cluster.client();
        async move {
            let r =
                c.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
            r.is_ok_and(|r| r.min_command_version >= NET_TICKETS)
        }
    })
    .await;
    assert!(
        enabled,
        "min_command_version never reached {NET_TICKETS}; leader log:\n{}",
        cluster.log_tail(leader)
    );
    // Quotas that let a test fabric's device go ERROR (admission applies to network devices too).
    let quotas = api::SetQuotasRequest {
        quotas: vec![api::QuotaRule {
            kind: "*".into(),
            scope: "cluster".into(),
            window_ms: 3_600_000,
            max_entries: "1000".into(),
            max_concurrent: "100%".into(),
        }],
        by: "test".into(),
        reason: "a test fabric".into(),
        ..Default::default()
    };
    client.call(quotas, |mut c, r| async move { c.set_quotas(r).await }).await.expect("quotas");

    // The uplink fault until the top suspect (the uplink, or tor-1 itself) is ERROR.
    let mut seq = 0;
    let named: Arc<Mutex<Option<Named>>> = Arc::new(Mutex::new(None));
    let error = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let cl = &cluster;
        let named = named.clone();
        async move {
            if !round(cl, s, true).await {
                return false;
            }
            let mut c = cl.client();
            let req = api::NetSuspectsRequest { limit: 0 };
            let Ok(r) = c.call(req, |mut c, r| async move { c.net_suspects(r).await }).await else {
                return false;
            };
            let Some(top) = r.suspects.first() else { return false };
            if !["link", "switch"].contains(&top.kind.as_str()) {
                return false;
            }
            *named.lock().expect("lock") = Some((top.target.clone(), r.suspects.clone()));
            object(cl, &top.target).await.is_some_and(|o| o.state == "ERROR")
        }
    })
    .await;
    let (device, suspects) = named.lock().expect("lock").clone().unwrap_or_default();
    assert!(
        error,
        "no link/switch went ERROR: {device} {suspects:?}; leader log:\n{}",
        cluster.log_tail(leader)
    );
    assert!(
        ["link/agg-1--tor-1", "switch/tor-1"].contains(&device.as_str()),
        "the fault is tor-1's uplink (or tor-1 itself), named {device}: {suspects:?}"
    );

    // Its ticket: filed once, recorded on the object, which stays ERROR.
    let recorded = wait_until(SETTLE, || {
        let cl = &cluster;
        let device = device.clone();
        async move { object(cl, &device).await.is_some_and(|o| o.attributes.contains_key("ticket")) }
    })
    .await;
    assert!(recorded, "{device}: no ticket recorded; leader log:\n{}", cluster.log_tail(leader));
    let o = object(&cluster, &device).await.expect("device");
    assert_eq!(o.state, "ERROR", "recording a ticket never moves a network device");
    assert_eq!(o.attributes.get("ticket-status").map(String::as_str), Some("filed"));
    let lines = lines_about(&sink, &device);
    assert_eq!(lines.len(), 1, "one ticket line for {device}: {lines:?}");
    let line = &lines[0];
    let key = line["idempotency_key"].as_str().expect("key").to_string();
    assert_eq!(o.attributes.get("ticket-key"), Some(&key), "the line is this incident's filing");
    assert!(key.starts_with(&format!("{device}@")), "{key}");
    assert_eq!(
        o.attributes.get("ticket").map(String::as_str),
        line["ticket"].as_str(),
        "the sink's ticket id"
    );
    assert_eq!(line["kind"], device.split('/').next().expect("kind"));
    assert_eq!(line["state"], "ERROR");
    let reason = line["reason"].as_str().expect("reason");
    assert!(reason.contains(&device) && reason.contains("entered ERROR at"), "{reason}");
    assert!(reason.contains("suspect (netvote 1, ERROR)"), "the localisation's evidence: {reason}");
    assert!(!line["evidence"].as_array().expect("evidence").is_empty(), "{line}");
    if device.starts_with("link/") {
        let ends: Vec<&str> =
            line["ends"].as_array().expect("ends").iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(ends, ["agg-1", "tor-1"], "{line}");
    }

    // More windows of the same fault: the incident's ticket is open, nothing is filed again.
    let windows = Arc::new(Mutex::new(BTreeSet::new()));
    let more = wait_until(SETTLE, || {
        seq += 1;
        let s = seq;
        let cl = &cluster;
        let windows = windows.clone();
        async move {
            if !round(cl, s, true).await {
                return false;
            }
            let mut c = cl.client();
            let req = api::NetSuspectsRequest { limit: 0 };
            if let Ok(r) = c.call(req, |mut c, r| async move { c.net_suspects(r).await }).await
                && r.reporters > 0
            {
                windows.lock().expect("lock").insert(r.window_end_ms);
            }
            windows.lock().expect("lock").len() >= 4
        }
    })
    .await;
    assert!(more, "fewer than 4 more windows judged; leader log:\n{}", cluster.log_tail(leader));
    // Give the dispatcher several polls (200 ms) to file anything it would file, then look again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = lines_about(&sink, &device);
    assert_eq!(lines.len(), 1, "no second ticket for one incident: {lines:?}");
    let o = object(&cluster, &device).await.expect("device");
    assert_eq!(o.state, "ERROR");
    assert_eq!(o.attributes.get("ticket").map(String::as_str), line["ticket"].as_str());
    assert_eq!(o.attributes.get("ticket-key"), Some(&key), "the same incident");
    // Every filing gets recorded (another device of the fault, if one went ERROR too, as well).
    let none_outstanding = wait_until(SETTLE, || {
        let mut c = cluster.client();
        async move {
            let s = c
                .call(api::SummaryRequest { stale: false }, |mut c, r| async move { c.summary(r).await })
                .await;
            s.is_ok_and(|s| s.repair_without_ticket == 0)
        }
    })
    .await;
    assert!(none_outstanding, "filings still outstanding; leader log:\n{}", cluster.log_tail(leader));

    // `huatuo ticket list` shows the device's open incident with its ticket (network devices are never in
    // REPAIR: the CLI lists them beside the objects that are).
    let out = std::process::Command::new(huatuo_bin())
        .args(["ticket", "list", "-o", "json"])
        .env("HUATUO_MASTER", cluster.grpc_addrs())
        .output()
        .expect("run huatuo ticket list");
    assert!(out.status.success(), "ticket list: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ticket list -o json");
    let row = doc["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .find(|t| t["object"] == device.as_str())
        .unwrap_or_else(|| panic!("{device} not in ticket list: {doc}"))
        .clone();
    assert_eq!(row["ticket"], line["ticket"], "{row}");
    assert_eq!(row["status"], "filed", "{row}");

    // The uplink heals: the device returns to GOOD, its incident kept open by its open ticket ...
    let state_after = |faulty: bool, want: &'static str, seq: &mut u64| {
        *seq += 1;
        let s = *seq;
        let cl = &cluster;
        let device = device.clone();
        async move {
            if !round(cl, s, faulty).await {
                return false;
            }
            object(cl, &device).await.is_some_and(|o| o.state == want)
        }
    };
    let good = wait_until(SETTLE, || state_after(false, "GOOD", &mut seq)).await;
    assert!(good, "{device} never returned to GOOD; leader log:\n{}", cluster.log_tail(leader));
    let o = object(&cluster, &device).await.expect("device");
    assert_eq!(o.attributes.get("ticket-key"), Some(&key), "an open ticket keeps the incident through GOOD");
    // ... so when it fails again, it is the same incident: ERROR, and no second ticket.
    let again = wait_until(SETTLE, || state_after(true, "ERROR", &mut seq)).await;
    assert!(again, "{device} never went ERROR again; leader log:\n{}", cluster.log_tail(leader));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = lines_about(&sink, &device);
    assert_eq!(lines.len(), 1, "a flap files no second ticket while the first is open: {lines:?}");
    let o = object(&cluster, &device).await.expect("device");
    assert_eq!(o.attributes.get("ticket-key"), Some(&key), "the same incident");

    // No host moved, and nothing but the fabric's devices was filed.
    let list = client
        .call(api::ListObjectsRequest::default(), |mut c, r| async move { c.list_objects(r).await })
        .await
        .expect("list");
    for o in &list.objects {
        assert!(o.kind == "link" || o.kind == "switch" || o.state == "GOOD", "{} is {}", o.id, o.state);
    }
    for l in ticket_lines(&sink) {
        assert!(["link", "switch"].contains(&l["kind"].as_str().unwrap_or("")), "a host part was filed: {l}");
    }
}
