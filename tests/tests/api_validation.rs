//! One validation for every front end (issue 13 item 5): the SAME table of bad findings goes to a real
//! master through REST (`POST /api/v1/findings`) and through gRPC (`Ingest`); each must be refused with
//! INVALID_ARGUMENT (HTTP 400 with that code) naming what is wrong, and the cluster's revision must not
//! move. A good finding through each front end is accepted (the control that shows the test can fail).
//!
//! Needs the `huatuo` binary (see `tests::huatuo_bin`).

use std::io::{Read, Write};
use std::time::Duration;

use master::api::validate::{MAX_LABEL_LEN, MAX_READINGS};
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::error::Code;
use serde_json::{Value, json};
use tests::huatuo_bin;

/// Longest wait for one HTTP answer (the master answers a refusal without touching Raft).
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// A finding as JSON, the REST body's shape; the gRPC message is built from the same value.
fn good() -> Value {
    json!({
        "object": "disk/val1/sda",
        "severity": "ERROR",
        "checker": "smart",
        "version": "1.0.0",
        "rule": "smart.reallocated",
        "evidence": "Reallocated_Sector_Ct 12",
        "readings": { "reallocated": "12" },
        "time_ms": tests::now_ms(),
    })
}

fn with(field: &str, v: Value) -> Value {
    let mut f = good();
    f[field] = v;
    f
}

/// The bad inputs: (what, finding, a piece of the expected message).
fn table() -> Vec<(&'static str, Value, &'static str)> {
    let hundred_kb = "v".repeat(100 * 1024);
    let eight_big: serde_json::Map<String, Value> =
        (0..8).map(|i| (format!("r{i}"), Value::String(hundred_kb.clone()))).collect();
    let too_many: serde_json::Map<String, Value> =
        (0..=MAX_READINGS).map(|i| (format!("r{i}"), Value::String("1".into()))).collect();
    vec![
        ("checker with a newline", with("checker", json!("sm\nart")), "control characters"),
        ("rule with BEL", with("rule", json!("smart.\u{7}bell")), "control characters"),
        ("200-byte checker", with("checker", json!("c".repeat(200))), "limit 128"),
        ("8 readings of 100 KB", with("readings", Value::Object(eight_big)), "reading value"),
        ("10 KB reading name", with("readings", json!({ "k".repeat(10 * 1024): "1" })), "reading name"),
        ("NUL in the checker", with("checker", json!("sm\u{0}art")), "control characters"),
        ("NUL in the evidence", with("evidence", json!("bad\u{0}line")), "NUL"),
        ("empty checker", with("checker", json!("")), "no checker"),
        ("one reading too many", with("readings", Value::Object(too_many)), "readings (limit"),
        ("129-byte version", with("version", json!("v".repeat(MAX_LABEL_LEN + 1))), "limit 128"),
    ]
}

fn to_wire(f: &Value) -> api::Finding {
    let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
    api::Finding {
        object: s("object"),
        severity: s("severity"),
        checker: s("checker"),
        version: s("version"),
        rule: s("rule"),
        evidence: s("evidence"),
        readings: f["readings"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default(),
        time_ms: f["time_ms"].as_u64().unwrap_or_default(),
        shadow: false,
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
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
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

async fn revision(cluster: &LocalCluster, id: u64) -> u64 {
    cluster.info(id).await.expect("cluster info").revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_refuse_the_same_bad_findings_before_proposing() {
    let cluster = LocalCluster::start(&huatuo_bin(), 1).expect("start master");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader:\n{}", cluster.log_tail(1)));
    let rest = cluster.nodes[&leader].http.clone();
    let mut client = cluster.client();

    // The controls: a good finding is accepted through each front end (and moves the revision).
    let before = revision(&cluster, leader).await;
    let body = json!({ "findings": [good()] }).to_string();
    let (st, b) = http(&rest, "POST", "/api/v1/findings", &body);
    assert_eq!(st, 200, "REST control: {b}");
    let wire = to_wire(&good());
    let req = api::IngestRequest { agent: String::new(), seq: 0, findings: vec![wire], epoch: 0 };
    client.call(req, |mut c, r| async move { c.ingest(r).await }).await.expect("gRPC control");
    let base = revision(&cluster, leader).await;
    assert!(base > before, "the controls were stored: {before} -> {base}");

    for (what, finding, want) in table() {
        // REST
        let body = json!({ "findings": [finding.clone()] }).to_string();
        let (st, b) = http(&rest, "POST", "/api/v1/findings", &body);
        let v: Value = serde_json::from_str(&b)
            .unwrap_or_else(|e| panic!("{what}: REST answer not JSON ({e}): {b:.300}"));
        assert_eq!(st, 400, "{what}: REST status; body {b:.300}");
        assert_eq!(v["code"], "INVALID_ARGUMENT", "{what}: REST code");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{what}: REST message {msg:?} should say {want:?}");
        // gRPC, same input
        let req =
            api::IngestRequest { agent: String::new(), seq: 0, findings: vec![to_wire(&finding)], epoch: 0 };
        let e = client
            .call(req, |mut c, r| async move { c.ingest(r).await })
            .await
            .expect_err(&format!("{what}: gRPC accepted it"));
        assert_eq!(e.code, Code::InvalidArgument, "{what}: gRPC code ({e})");
        assert!(e.message.contains(want), "{what}: gRPC message {:?} should say {want:?}", e.message);
        assert_eq!(revision(&cluster, leader).await, base, "{what}: a refused finding moved the revision");
    }
}
