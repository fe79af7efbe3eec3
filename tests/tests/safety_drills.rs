//! The safety-net drills against 3 real `huatuo master` processes (issue 6):
//! - avalanche: 1,000 simulated hosts; a faulty checker release marks 30% of one pool's disks bad at once.
//!   Exactly the pool's quota of disks leaves service, the pool latches into manual drive, the rest are
//!   proposals; the latch, quotas and proposals survive a leader kill -9; after the operator rejects them
//!   (with the CLI) nothing else moves, even when the bad checker keeps reporting; a real disk failure in
//!   the other pool is still handled automatically.
//! - power: 20% of one rack's agents go silent at once; the rack latches, machines there are not sent to
//!   ERROR/FIX/REPAIR (their transitions are proposals) while another rack works normally; when the agents
//!   come back the proposals are still there.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use master::client::{Client, parse_addrs};
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use tests::{huatuo_bin, wait_until};

/// Bound for waits on replicated effects (latches, liveness, failover).
const SETTLE: Duration = Duration::from_secs(30);
/// Concurrent client tasks used to load the cluster.
const WORKERS: usize = 16;

fn client(c: &LocalCluster) -> Client {
    Client::new(parse_addrs(&c.grpc_addrs()))
}

fn labels(pairs: &[(&str, String)]) -> std::collections::HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Register hosts `h{i}` (a machine and disks sda, sdb) with the labels `label(i)`, WORKERS at a time.
async fn register(c: &LocalCluster, hosts: Vec<u32>, label: fn(u32) -> Vec<(&'static str, String)>) {
    let chunks: Vec<Vec<u32>> =
        hosts.chunks(hosts.len().div_ceil(WORKERS).max(1)).map(|c| c.to_vec()).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut cl = client(c);
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let host = format!("h{i}");
                let l = labels(&label(i));
                let obj = |id: String, serial: Option<String>| api::RegisteredObject {
                    id,
                    attributes: serial.map(|s| [("serial".to_string(), s)].into()).unwrap_or_default(),
                    labels: l.clone(),
                };
                let req = api::RegisterRequest {
                    agent: format!("agent-{host}"),
                    host: host.clone(),
                    objects: vec![
                        obj(format!("machine/{host}"), None),
                        obj(format!("disk/{host}/sda"), Some(format!("SA-{i}"))),
                        obj(format!("disk/{host}/sdb"), Some(format!("SB-{i}"))),
                    ],
                };
                cl.call(req, |mut c, r| async move { c.register(r).await }).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn finding(object: String, severity: &str, checker: &str, version: &str) -> api::Finding {
    api::Finding {
        object,
        severity: severity.into(),
        checker: checker.into(),
        version: version.into(),
        rule: format!("{checker}.test"),
        evidence: "drill".into(),
        readings: Default::default(),
        time_ms: tests::now_ms(),
        shadow: false,
    }
}

/// One ingest per object, from the object's host agent with sequence `seq`, WORKERS at a time.
async fn report(c: &LocalCluster, objects: Vec<(String, String)>, seq: u64, checker: &str, version: &str) {
    let chunks: Vec<Vec<(String, String)>> =
        objects.chunks(objects.len().div_ceil(WORKERS).max(1)).map(|c| c.to_vec()).collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut cl = client(c);
        let (checker, version) = (checker.to_string(), version.to_string());
        tasks.push(tokio::spawn(async move {
            for (host, object) in chunk {
                let req = api::IngestRequest {
                    agent: format!("agent-{host}"),
                    seq,
                    findings: vec![finding(object, "ERROR", &checker, &version)],
                    epoch: 0,
                };
                cl.call(req, |mut c, r| async move { c.ingest(r).await }).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn count(cl: &mut Client, kind: &str, state: &str) -> usize {
    let req = api::ListObjectsRequest { kind: kind.into(), state: state.into(), ..Default::default() };
    tests::list_all(cl, req).await.unwrap().objects.len()
}

async fn safety(cl: &mut Client) -> api::GetSafetyResponse {
    cl.call(api::GetSafetyRequest {}, |mut c, r| async move { c.get_safety(r).await }).await.unwrap()
}

fn scope<'a>(s: &'a api::GetSafetyResponse, name: &str) -> Option<&'a api::Scope> {
    s.scopes.iter().find(|x| x.scope == name)
}

async fn pending(cl: &mut Client, scope: &str) -> Vec<api::Proposal> {
    let req =
        api::ListProposalsRequest { status: "pending".into(), scope: scope.into(), ..Default::default() };
    cl.call(req, |mut c, r| async move { c.list_proposals(r).await }).await.unwrap().proposals
}

/// GET over plain HTTP/1.1 (the test cluster runs insecure); returns the body.
fn http_get(addr: &str, path: &str) -> String {
    tests::http_answer(addr, path).unwrap_or_else(|| panic!("GET {path} from {addr}: no answer")).1
}

fn cli(c: &LocalCluster, args: &[&str]) -> (bool, String) {
    let out = Command::new(huatuo_bin()).args(args).args(["--master", &c.grpc_addrs()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn avalanche_drill() {
    let mut c = LocalCluster::start(&huatuo_bin(), 3).unwrap();
    c.wait_leader(READY_TIMEOUT).await.expect("leader");
    let mut cl = client(&c);
    // The operator's quotas: per pool 1%/h and 2% at once; cluster-wide twice that. The spike detector is
    // set above the pool quota so this drill exercises the quota (the spike is covered by unit tests).
    let config = serde_json::json!({
        "quotas": [
            {"kind": "disk", "scope": "pool", "window_ms": 3_600_000, "max_entries": "1%", "max_concurrent": "2%"},
            {"kind": "disk", "scope": "cluster", "window_ms": 3_600_000, "max_entries": "2%", "max_concurrent": "5%"},
        ],
        "scope_labels": ["pool", "rack"],
        "spike": {"window_ms": 600_000, "min": 10, "share": "5%"},
    });
    let req = api::SetQuotasRequest {
        by: "drill".into(),
        reason: "avalanche drill".into(),
        config_json: config.to_string(),
        ..Default::default()
    };
    cl.call(req, |mut c, r| async move { c.set_quotas(r).await }).await.unwrap();
    let started = std::time::Instant::now();
    register(&c, (0..1000).collect(), |i| {
        vec![("pool", if i < 500 { "a" } else { "b" }.to_string()), ("rack", format!("r{}", i / 40))]
    })
    .await;
    println!("registered 1,000 hosts (3,000 objects) in {:?}", started.elapsed());
    assert_eq!(count(&mut cl, "disk", "").await, 2000);

    // The faulty release marks 30% of pool a's disks (300 of 1,000) bad at once.
    let bad: Vec<(String, String)> = (0..150)
        .flat_map(|i| {
            [(format!("h{i}"), format!("disk/h{i}/sda")), (format!("h{i}"), format!("disk/h{i}/sdb"))]
        })
        .collect();
    // Two findings per host go in one batch each so every agent batch keeps its sequence number.
    let started = std::time::Instant::now();
    report(&c, bad.iter().filter(|(_, o)| o.ends_with("sda")).cloned().collect(), 1, "disk", "9.9.0-bad")
        .await;
    report(&c, bad.iter().filter(|(_, o)| o.ends_with("sdb")).cloned().collect(), 2, "disk", "9.9.0-bad")
        .await;
    println!("300 bad findings reported in {:?}", started.elapsed());
    assert_eq!(
        count(&mut cl, "disk", "ERROR").await,
        10,
        "exactly the pool's quota (1% of 1,000) left service"
    );
    let s = safety(&mut cl).await;
    let a = scope(&s, "pool=a").expect("pool=a");
    assert!(a.level == "manual" && a.latched, "{a:?}");
    assert!(a.reason.contains("quota"), "{}", a.reason);
    assert_eq!(a.pending_proposals, 290);
    assert!(!a.last_blocked.is_empty());
    assert!(s.alerts.iter().any(|al| al.scope == "pool=a"), "an alert names the scope: {:?}", s.alerts);
    assert_eq!(scope(&s, "pool=b").map(|b| b.level.as_str()), Some("auto"));
    assert_eq!(pending(&mut cl, "pool=a").await.len(), 290);
    let info =
        cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await.unwrap();
    assert_eq!(info.pending_proposals, 290);
    assert!(info.scopes.iter().any(|x| x.scope == "pool=a" && x.latched));

    // Quotas, the latch and the proposals are replicated state: they survive the leader's death.
    let leader = c.wait_leader(READY_TIMEOUT).await.expect("leader");
    // The leader's /metrics shows the latch, the proposals, the quota use and the transitions.
    let metrics = http_get(&c.nodes[&leader].http, "/metrics");
    for want in [
        "huatuo_master_scope_latched{scope=\"pool=a\"} 1",
        "huatuo_master_proposals_pending 290",
        "huatuo_master_quota{scope=\"pool=a\",kind=\"disk\",what=\"max_entries\"} 10",
        // The window's use (rows in fsm_counts from command version 11, which the cluster enables by itself).
        "huatuo_master_quota{scope=\"pool=a\",kind=\"disk\",what=\"entries\"} 10",
        "huatuo_master_transitions_total{kind=\"disk\",to=\"ERROR\"} 10",
        // The release's spike window: the 10 admitted and the one the quota held (the pool's manual drive
        // holds the rest before they are counted); it latches at 5% of the 2,000 disks.
        "huatuo_master_scope_window{scope=\"checker=disk@9.9.0-bad\",window=\"spike\",what=\"held\"} 11",
        "huatuo_master_scope_window{scope=\"checker=disk@9.9.0-bad\",window=\"spike\",what=\"latch_at\"} 100",
        "huatuo_master_fsync_seconds_count",
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
    // Every master metric the shipped alert rules and dashboard use exists.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in ["deploy/prometheus/huatuo-alerts.yml", "deploy/grafana/huatuo-dashboard.json"] {
        let text = std::fs::read_to_string(repo.join(f)).unwrap();
        let mut names: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("huatuo_master_"))
            .collect();
        names.dedup();
        assert!(!names.is_empty(), "{f} names no metric");
        for n in names {
            assert!(metrics.contains(n), "{f} uses {n}, which /metrics does not export");
        }
    }
    c.kill9(leader);
    let mut cl = client(&c);
    assert!(c.wait_leader(SETTLE).await.is_some_and(|l| l != leader), "a new leader");
    let after = safety(&mut cl).await;
    assert_eq!(after.quotas, s.quotas);
    let a2 = scope(&after, "pool=a").expect("pool=a");
    assert!(a2.latched && a2.pending_proposals == 290 && a2.reason == a.reason, "{a2:?}");

    // The operator rejects the bad release's proposals in bulk, with the CLI.
    let (ok, out) = cli(
        &c,
        &[
            "reject",
            "--scope",
            "pool=a",
            "--checker",
            "disk@9.9.0-bad",
            "--reason",
            "bad checker release",
            "--by",
            "oncall",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("rejected 290"), "{out}");
    assert!(pending(&mut cl, "pool=a").await.is_empty());
    // The bad checker keeps reporting: nothing moves, nothing is re-proposed.
    report(&c, bad.iter().filter(|(_, o)| o.ends_with("sda")).cloned().collect(), 3, "disk", "9.9.0-bad")
        .await;
    assert_eq!(count(&mut cl, "disk", "ERROR").await, 10);
    assert!(pending(&mut cl, "").await.is_empty());
    // A real single-disk failure in the other pool is handled automatically.
    report(&c, vec![("h700".into(), "disk/h700/sdb".into())], 1, "disk", "1.0.0").await;
    assert_eq!(count(&mut cl, "disk", "ERROR").await, 11);
    let req = api::GetObjectRequest { id: "disk/h700/sdb".into(), stale: false };
    let o = cl.call(req, |mut c, r| async move { c.get_object(r).await }).await.unwrap().object.unwrap();
    assert_eq!(
        (o.state.as_str(), o.waiting_ack.as_str(), o.waiting_role.as_str()),
        ("ERROR", "data-evacuated", "storage")
    );
    // The CLI shows the scope and its quota use; `huatuo proposals --status rejected` lists the decision.
    let (ok, out) = cli(&c, &["level", "pool=a"]);
    assert!(ok && out.contains("LATCHED") && out.contains("out of service"), "{out}");
    let (ok, out) = cli(&c, &["proposals", "--status", "rejected", "--scope", "pool=a", "--limit", "1"]);
    assert!(ok && out.contains("decided by oncall"), "{out}");
    let (ok, out) = cli(&c, &["release", "pool=a", "--reason", "checker rolled back"]);
    assert!(ok && out.contains("auto"), "{out}");
    // Operator overrides: a consent in place of the storage master, and a false alarm forced back to GOOD.
    let (ok, out) =
        cli(&c, &["consent", "disk/h700/sdb", "--reason", "storage master is down; data is safe"]);
    assert!(ok && out.contains("REPAIR"), "{out}");
    let (ok, out) = cli(&c, &["consent", "disk/h701/sdb", "--reason", "nothing waits"]);
    assert!(!ok && out.contains("waits for no acknowledgement"), "{out}");
    let erred = {
        let req =
            api::ListObjectsRequest { kind: "disk".into(), state: "ERROR".into(), ..Default::default() };
        cl.call(req, |mut c, r| async move { c.list_objects(r).await }).await.unwrap().objects[0].id.clone()
    };
    let (ok, out) = cli(&c, &["force", &erred, "GOOD", "--reason", "false alarm: bad checker release"]);
    assert!(ok && out.contains("GOOD"), "{out}");
    let (ok, out) = cli(&c, &["force", &erred, "FIX", "--reason", "disks have no FIX"]);
    assert!(!ok && out.contains("no edge"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_drill() {
    let c = LocalCluster::start_with_config(&huatuo_bin(), 3, "agent_silent_after_ms = 3000\n").unwrap();
    c.wait_leader(READY_TIMEOUT).await.expect("leader");
    let mut cl = client(&c);
    // Rack r1: hosts 0..20; rack r2: hosts 20..60.
    register(&c, (0..60).collect(), |i| vec![("rack", if i < 20 { "r1" } else { "r2" }.to_string())]).await;
    let alive: Arc<Mutex<BTreeSet<u32>>> = Arc::new(Mutex::new((0..60).collect()));
    // Heartbeats from 6 tasks of 10 agents each, every 300 ms (the master marks an agent silent after 3 s).
    let mut beats = Vec::new();
    for group in 0..6u32 {
        let beating = alive.clone();
        let mut hb = client(&c);
        beats.push(tokio::spawn(async move {
            loop {
                let hosts: Vec<u32> =
                    beating.lock().unwrap().iter().copied().filter(|i| i % 6 == group).collect();
                for i in hosts {
                    let req = api::HeartbeatRequest {
                        agent: format!("agent-h{i}"),
                        host: format!("h{i}"),
                        version: "drill".into(),
                        started_ms: 1,
                        ..Default::default()
                    };
                    let _ = hb.call(req, |mut c, r| async move { c.heartbeat(r).await }).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    assert!(alive_count_is(&c, 60).await, "the cluster never counted 60 agents alive");

    // Power fails for 4 of rack r1's 20 hosts (20%) at once.
    alive.lock().unwrap().retain(|i| *i >= 4);
    let latched = wait_until(SETTLE, || {
        let mut cl = client(&c);
        async move { scope(&safety(&mut cl).await, "rack=r1").is_some_and(|s| s.latched) }
    })
    .await;
    assert!(latched, "rack r1 latches into manual drive");
    let s = safety(&mut cl).await;
    let r1 = scope(&s, "rack=r1").unwrap();
    assert!(r1.reason.contains("went silent"), "{}", r1.reason);
    assert_eq!((r1.agents, r1.agents_alive), (20, 16));
    assert_eq!(scope(&s, "rack=r2").unwrap().level, "auto");
    assert_eq!(scope(&s, "cluster").unwrap().level, "auto", "4 of 60 is below the cluster's threshold");

    // Other hosts' probes report r1's dead machines (and one live one) unreachable: nothing leaves service
    // there; a machine fault in r2 is still handled automatically.
    let mut objs: Vec<(String, String)> =
        (0..5).map(|i| (format!("h{i}"), format!("machine/h{i}"))).collect();
    objs.push(("h30".into(), "machine/h30".into()));
    report(&c, objs, 1, "net-mesh", "1.0.0").await;
    for state in ["ERROR", "FIX", "REPAIR"] {
        let req = api::ListObjectsRequest {
            kind: "machine".into(),
            state: state.into(),
            labels: vec!["rack=r1".into()],
            ..Default::default()
        };
        let n = cl.call(req, |mut c, r| async move { c.list_objects(r).await }).await.unwrap().objects.len();
        assert_eq!(n, 0, "no r1 machine in {state}");
    }
    assert_eq!(count(&mut cl, "machine", "ERROR").await, 1, "machine/h30 in r2 went ERROR");
    assert_eq!(pending(&mut cl, "rack=r1").await.len(), 5);

    // Power returns: the agents are alive again, the rack stays latched until an operator releases it, and
    // the proposals are all still there.
    alive.lock().unwrap().extend(0..4);
    assert!(alive_count_is(&c, 60).await, "the cluster never counted 60 agents alive");
    let s = safety(&mut cl).await;
    let r1 = scope(&s, "rack=r1").unwrap();
    assert!(r1.latched && r1.agents_alive == 20, "{r1:?}");
    let props = pending(&mut cl, "rack=r1").await;
    assert_eq!(props.len(), 5);
    assert!(props.iter().all(|p| p.to_state == "ERROR" && p.cause.contains("net-mesh")), "{props:?}");
    for b in beats {
        b.abort();
    }
}

/// Whether the cluster counts `n` agents alive within [`SETTLE`].
async fn alive_count_is(c: &LocalCluster, n: u64) -> bool {
    wait_until(SETTLE, || {
        let mut cl = client(c);
        async move {
            let i =
                cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
            i.is_ok_and(|i| i.agents_alive == n)
        }
    })
    .await
}

/// `huatuo inspect` on a healthy cluster exits 0; with a silent agent, a latched scope and an overdue ack it
/// exits 2 and names each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_names_what_needs_a_human() {
    let c = LocalCluster::start_with_config(
        &huatuo_bin(),
        3,
        "agent_silent_after_ms = 3000\n[policy]\nack_timeout_ms = 1000\n",
    )
    .unwrap();
    c.wait_leader(READY_TIMEOUT).await.expect("leader");
    let mut cl = client(&c);
    register(&c, (0..5).collect(), |_| vec![("rack", "r1".to_string())]).await;
    let alive: Arc<Mutex<BTreeSet<u32>>> = Arc::new(Mutex::new((0..5).collect()));
    let beating = alive.clone();
    let mut hb = client(&c);
    let beats = tokio::spawn(async move {
        loop {
            let hosts: Vec<u32> = beating.lock().unwrap().iter().copied().collect();
            for i in hosts {
                let req = api::HeartbeatRequest {
                    agent: format!("agent-h{i}"),
                    host: format!("h{i}"),
                    version: "1.0".into(),
                    started_ms: 1,
                    checkers: [("disk".to_string(), "1.0.0".to_string())].into(),
                    ..Default::default()
                };
                let _ = hb.call(req, |mut c, r| async move { c.heartbeat(r).await }).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    assert!(alive_count_is(&c, 5).await, "the cluster never counted 5 agents alive");
    let (ok, out) = cli(&c, &["inspect", "--insecure"]);
    assert!(ok, "a healthy cluster inspects clean:\n{out}");
    assert!(out.contains("nothing needs a human") && out.contains("5 alive of 5 expected"), "{out}");

    // One disk may leave per hour: the first goes ERROR (and its ack is soon overdue), the second latches
    // the cluster scope. Agent h4 goes silent.
    let req = api::SetQuotasRequest {
        quotas: vec![api::QuotaRule {
            kind: "disk".into(),
            scope: "cluster".into(),
            window_ms: 3_600_000,
            max_entries: "1".into(),
            max_concurrent: "100%".into(),
        }],
        by: "test".into(),
        reason: "inspect test".into(),
        ..Default::default()
    };
    cl.call(req, |mut c, r| async move { c.set_quotas(r).await }).await.unwrap();
    report(
        &c,
        vec![("h0".into(), "disk/h0/sda".into()), ("h1".into(), "disk/h1/sda".into())],
        1,
        "disk",
        "1.0.0",
    )
    .await;
    alive.lock().unwrap().remove(&4);
    assert!(alive_count_is(&c, 4).await, "the cluster never counted 4 agents alive");
    let (ok, out) = cli(&c, &["inspect", "--insecure"]);
    assert!(!ok, "inspect must fail:\n{out}");
    for want in ["agent-h4", "scope cluster is manual", "/sda waits for data-evacuated from storage"] {
        assert!(out.contains(want), "inspect does not name {want:?}:\n{out}");
    }
    let json = Command::new(huatuo_bin())
        .args(["inspect", "--insecure", "--json", "--master", &c.grpc_addrs()])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["needs_a_human"].as_array().map(Vec::len), Some(3), "{v:#}");
    assert_eq!(v["checker_versions"]["disk"]["1.0.0"], 5, "the leader remembers what each agent last said");
    // How close the rack is to the liveness latch: h4 went silent, and 3 at once latch it (its minimum is
    // above 10% of 5 agents).
    let rack = v["scopes"].as_array().and_then(|a| a.iter().find(|x| x["scope"] == "rack=r1")).expect("rack");
    assert_eq!(
        (&rack["liveness"]["held"], &rack["liveness"]["latch_at"]),
        (&serde_json::json!(1), &serde_json::json!(3)),
        "{rack:#}"
    );
    // A second silent agent takes the rack half way to that latch (2 of 3): named while it is still in
    // automatic drive.
    alive.lock().unwrap().remove(&3);
    assert!(alive_count_is(&c, 3).await, "the cluster never counted 3 agents alive");
    let (ok, out) = cli(&c, &["inspect", "--insecure"]);
    assert!(!ok, "inspect must fail:\n{out}");
    assert!(
        out.contains("scope rack=r1: 2 agents went silent within 5m, 3 latch it into manual drive"),
        "inspect does not name the rack near its latch:\n{out}"
    );
    beats.abort();
}
