//! The replicated fabric topology (issue 16): 3 real `huatuo master` processes (fsync, loopback), each
//! started with the same old-style `[topology] file` (a CSV). The first leader pushes that file as the
//! replicated topology once the cluster enabled command version 7 (bootstrap). An operator then sets a TOML
//! topology through the CLI (`huatuo net topology set`); a malformed file and one over the 8 MiB limit are
//! refused with clear errors and change nothing; the topology is never rolled out to agents. The leader is
//! killed: the new leader shows the same topology (CLI and REST) and uses it over its own file (`net path`
//! lists routes through the switches the TOML names). A clear falls back to the member's file.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use tests::{huatuo_bin, wait_until};

/// Command-version upgrade, bootstrap and failover each take a few duty rounds on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);

fn host(i: usize) -> String {
    format!("h{i:02}")
}

/// The members' file: 12 hosts under tor-0..3, agg-0/1, spine-0.
fn topology_csv() -> String {
    (0..12).map(|i| format!("{},tor-{},agg-{},spine-0\n", host(i), i / 3, (i / 3) % 2)).collect()
}

/// The operator's topology: the same hosts under other switch names (rack-a..d, core-1/2), two tiers.
fn topology_toml() -> String {
    let mut s = String::from("# the fabric as the network team sees it\n");
    for (t, rack) in ["rack-a", "rack-b", "rack-c", "rack-d"].iter().enumerate() {
        let hosts: Vec<String> = (0..3).map(|i| format!("{:?}", host(t * 3 + i))).collect();
        s.push_str(&format!(
            "[[tor]]\nname = \"{rack}\"\nhosts = [{}]\nuplinks = [\"core-1\", \"core-2\"]\n\n",
            hosts.join(", ")
        ));
    }
    s
}

fn sha256_hex(b: &[u8]) -> String {
    master::catalog::sha256_hex(b)
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

/// `huatuo net topology show -o json`, parsed; None when the command failed (no leader yet, ...).
fn show(masters: &str) -> Option<serde_json::Value> {
    let (ok, out) = cli(&["net", "topology", "show", "-o", "json"], masters);
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// A plain HTTP/1.1 GET on loopback (the cluster runs insecure): the whole answer, headers and all.
fn http_get(addr: &str, path: &str) -> String {
    tests::http_get(addr, path).unwrap_or_else(|| panic!("GET {path} from {addr}: no answer"))
}

/// The JSON body of a plain HTTP response, if it parses.
fn json_body(resp: &str) -> Option<serde_json::Value> {
    let body = resp.split_once("\r\n\r\n")?.1;
    // Chunked or not: the JSON object is between the first '{' and the last '}'.
    let (from, to) = (body.find('{')?, body.rfind('}')?);
    serde_json::from_str(&body[from..=to]).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_topology_survives_failover_bad_files_change_nothing_and_the_file_is_bootstrapped_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("fabric.csv");
    std::fs::write(&csv, topology_csv()).expect("write csv");
    let extra = format!("[net]\nwindow_s = 1\n[topology]\nfile = {:?}\n", csv.display().to_string());
    let mut cluster = LocalCluster::start_with_config(&huatuo_bin(), 3, &extra).expect("start cluster");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader; node 1 log:\n{}", cluster.log_tail(1)));
    let masters = cluster.grpc_addrs();

    // Bootstrap: once command version 7 is enabled (the leader raises it when every member knows it), the
    // leader pushes its [topology] file as the replicated topology.
    let csv_sha = sha256_hex(topology_csv().as_bytes());
    let booted = wait_until(SETTLE, || {
        let m = masters.clone();
        let want = csv_sha.clone();
        async move { show(&m).is_some_and(|v| v["source"] == "replicated" && v["sha256"] == want.as_str()) }
    })
    .await;
    assert!(
        booted,
        "the file never became the replicated topology: {:?}\n{}",
        show(&masters),
        cluster.log_tail(leader)
    );
    let v = show(&masters).expect("show");
    assert_eq!(v["name"], "fabric", "{v}");
    assert_eq!(v["version"], format!("sha-{}", &csv_sha[..12]).as_str(), "{v}");
    assert_eq!((v["hosts"].as_u64(), v["switches"].as_u64()), (Some(12), Some(7)), "{v}");
    assert_eq!(v["set_by"], "master", "{v}");

    // The operator's TOML through the CLI.
    let toml = dir.path().join("fabric.toml");
    std::fs::write(&toml, topology_toml()).expect("write toml");
    let (ok, out) = cli(
        &["net", "topology", "set", toml.to_str().expect("utf-8"), "--reason", "network team's file"],
        &masters,
    );
    assert!(ok, "set failed: {out}");
    let toml_sha = sha256_hex(topology_toml().as_bytes());
    assert!(
        out.contains(&format!("replicated fabric@sha-{}", &toml_sha[..12])) && out.contains(&toml_sha),
        "{out}"
    );
    assert!(out.contains("12 hosts, 6 switches, 8 switch links"), "{out}");
    assert!(out.contains("differs") && out.contains("the replicated topology wins"), "{out}");
    // Setting it again changes nothing.
    let (ok, out) =
        cli(&["net", "topology", "set", toml.to_str().expect("utf-8"), "--reason", "again"], &masters);
    assert!(ok && out.contains("nothing changed"), "{out}");
    let before = show(&masters).expect("show");
    assert_eq!(before["sha256"], toml_sha.as_str(), "{before}");

    // A malformed file and one over the limit: clear errors, nothing changes.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[tor]]\nname = \"rack-a\"\nhosts = [\"h00\"\n").expect("write bad");
    let (ok, out) =
        cli(&["net", "topology", "set", bad.to_str().expect("utf-8"), "--reason", "oops"], &masters);
    assert!(!ok && out.contains("refused: toml topology"), "{out}");
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(&bad_csv, "h00,rack-a\nh01\n").expect("write bad csv");
    let (ok, out) =
        cli(&["net", "topology", "set", bad_csv.to_str().expect("utf-8"), "--reason", "oops"], &masters);
    assert!(!ok && out.contains("line 2"), "{out}");
    let big = dir.path().join("big.csv");
    let mut text = String::with_capacity((8 << 20) + 64);
    while text.len() <= 8 << 20 {
        text.push_str("# padding padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, text).expect("write big");
    let (ok, out) =
        cli(&["net", "topology", "set", big.to_str().expect("utf-8"), "--reason", "big"], &masters);
    assert!(!ok && out.contains("over the limit of 8388608 bytes"), "{out}");
    let (ok, out) = cli(&["net", "topology", "clear"], &masters);
    assert!(!ok && out.contains("--reason"), "a clear needs a reason: {out}");
    let after = show(&masters).expect("show");
    assert_eq!((&after["sha256"], &after["set_ms"]), (&before["sha256"], &before["set_ms"]), "{after}");
    let mut client = cluster.client();
    let listed = client
        .call(
            api::ListCatalogRequest { name: "fabric".into() },
            |mut c, r| async move { c.list_catalog(r).await },
        )
        .await
        .expect("catalog");
    let stored: Vec<&str> = listed.artifacts.iter().map(|a| a.sha256.as_str()).collect();
    assert_eq!(stored.len(), 2, "the file and the TOML, no refused bytes: {listed:?}");
    assert!(listed.artifacts.iter().all(|a| a.r#type == "topology"), "{listed:?}");

    // A topology is never rolled out to agents.
    let version = format!("sha-{}", &toml_sha[..12]);
    let e = client
        .call(
            api::RolloutRequest {
                action: "start".into(),
                name: "fabric".into(),
                version: version.clone(),
                percent: 50.0,
                by: "ops".into(),
                reason: "try".into(),
                ..Default::default()
            },
            |mut c, r| async move { c.rollout(r).await },
        )
        .await
        .expect_err("a topology is not rolled out");
    assert_eq!(e.code, proto::error::Code::InvalidArgument, "{e}");
    assert!(e.message.contains("never assigned to agents or rolled out"), "{e}");

    // The leader uses it: routes through the switches the TOML names.
    let (ok, out) = cli(&["net", "path", "h00", "h11"], &masters);
    assert!(ok && out.contains("h00 -> rack-a -> core-") && out.contains("-> rack-d -> h11"), "{out}");

    // Failover: the new leader shows and uses the same topology, not its own file.
    let leader = cluster.wait_leader(READY_TIMEOUT).await.expect("leader");
    cluster.kill9(leader);
    let new_leader = cluster.wait_leader(SETTLE).await;
    let new_leader =
        new_leader.filter(|l| *l != leader).unwrap_or_else(|| panic!("no new leader after killing {leader}"));
    let http = cluster.nodes[&new_leader].http.clone();
    let same = wait_until(SETTLE, || {
        let (http, want) = (http.clone(), toml_sha.clone());
        async move {
            json_body(&http_get(&http, "/api/v1/net/topology"))
                .is_some_and(|v| v["source"] == "replicated" && v["sha256"] == want.as_str())
        }
    })
    .await;
    assert!(same, "the new leader shows another topology: {}", http_get(&http, "/api/v1/net/topology"));
    let v = json_body(&http_get(&http, "/api/v1/net/topology")).expect("json");
    assert_eq!(
        (v["hosts"].as_u64(), v["switches"].as_u64(), v["links"].as_u64()),
        (Some(12), Some(6), Some(8))
    );
    assert_eq!(v["version"], version.as_str(), "{v}");
    // The first calls after the failover may meet the dead member: retried until the bound.
    let path = std::sync::Arc::new(std::sync::Mutex::new(None));
    let served = wait_until(SETTLE, || {
        let mut c = cluster.client();
        let got = path.clone();
        async move {
            let req = api::NetPathRequest { a: host(0), b: host(11) };
            match c.call(req, |mut c, r| async move { c.net_path(r).await }).await {
                Ok(p) => {
                    *got.lock().expect("lock") = Some(p);
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(served, "no net path answer from the new leader");
    let p = path.lock().expect("lock").take().expect("path on the new leader");
    assert_eq!(p.routes.len(), 2, "one route per core switch: {p:?}");
    for r in &p.routes {
        assert_eq!(r.nodes.first().map(String::as_str), Some("h00"));
        assert!(r.nodes.contains(&"rack-a".to_string()) && r.nodes.contains(&"rack-d".to_string()), "{r:?}");
        assert!(!r.nodes.iter().any(|n| n.starts_with("tor-")), "the member's file must not be used: {r:?}");
    }

    // A clear: leaders fall back to their file (not pushed again: the cluster had a topology).
    let (ok, out) = cli(&["net", "topology", "clear", "--reason", "back to files"], &masters);
    assert!(ok && out.contains("topology: file"), "{out}");
    let (ok, out) = cli(&["net", "path", "h00", "h11"], &masters);
    assert!(ok && out.contains("h00 -> tor-0 -> agg-0"), "{out}");
}
