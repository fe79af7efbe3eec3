//! The replicated topology through both front ends of a real (single-node, in-process) master (issue 16):
//! a set over gRPC is shown alike over REST; bad input (malformed, over 8 MiB, no reason, a clear with
//! content) gets the same code and message on gRPC and REST and changes nothing; and a replicated topology
//! whose stored bytes no longer hash to its sha256 is never used: the leader counts it in
//! `huatuo_master_net_topology_load_failures_total`, shows why, and localises as with no topology.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{LIVENESS_BOUND, Master};
use master::catalog::sha256_hex;
use master::store::Reader;
use proto::api;
use serde_json::{Value, json};

/// Upper bound for a single node to elect itself and enable command version 7 (a few duty rounds).
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

async fn start() -> Master {
    let m = common::start(|_| {}).await;
    let deadline = Instant::now() + LIVENESS_BOUND;
    while m.stats.min_command_version() < master::model::TOPOLOGY_COMMAND_VERSION {
        assert!(Instant::now() < deadline, "command version 7 was never enabled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m
}

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
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let resp = String::from_utf8_lossy(&resp).to_string();
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string())
}

async fn rest(m: &Master, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (addr, method, path, body) = (m.rest.clone(), method.to_string(), path.to_string(), body.to_string());
    let (status, text) =
        tokio::task::spawn_blocking(move || http(&addr, &method, &path, &body)).await.expect("join");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn metrics(m: &Master) -> String {
    let addr = m.rest.clone();
    tokio::task::spawn_blocking(move || http(&addr, "GET", "/metrics", "")).await.expect("join").1
}

async fn client(m: &Master) -> api::master_client::MasterClient<tonic::transport::Channel> {
    api::master_client::MasterClient::connect(format!("http://{}", m.grpc))
        .await
        .expect("connect")
        .max_decoding_message_size(32 << 20)
        .max_encoding_message_size(32 << 20)
}

fn set_req(content: &[u8]) -> api::SetNetTopologyRequest {
    api::SetNetTopologyRequest {
        content: content.to_vec(),
        by: "ops".into(),
        reason: "test".into(),
        ..Default::default()
    }
}

fn set_json(r: &api::SetNetTopologyRequest) -> Value {
    json!({
        "content_base64": base64::engine::general_purpose::STANDARD.encode(&r.content),
        "name": r.name, "version": r.version, "clear": r.clear, "by": r.by, "reason": r.reason,
    })
}

const TOML: &str = "[[tor]]\nname = \"rack-a\"\nhosts = [\"h1\", \"h2\"]\nuplinks = [\"core-1\"]\n\n\
                    [[tor]]\nname = \"rack-b\"\nhosts = [\"h3\"]\nuplinks = [\"core-1\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_alike_and_bytes_that_do_not_verify_are_never_used() {
    let m = start().await;
    let mut c = client(&m).await;

    // A set over gRPC, shown alike over REST.
    let r = c.set_net_topology(set_req(TOML.as_bytes())).await.expect("set").into_inner();
    let sha = sha256_hex(TOML.as_bytes());
    assert_eq!((r.source.as_str(), r.sha256.as_str()), ("replicated", sha.as_str()), "{r:?}");
    assert_eq!((r.hosts, r.switches, r.links), (3, 3, 2), "{r:?}");
    let (status, v) = rest(&m, "GET", "/api/v1/net/topology", Value::Null).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["source"], &v["sha256"], &v["name"]),
        (&json!("replicated"), &json!(sha), &json!("fabric"))
    );

    // Bad input: the same code and message on both front ends, nothing changed.
    let revision = Reader::new(&m.db).expect("reader").revision().expect("revision");
    let mut big = vec![b'#'; (8 << 20) + 1];
    big[(8 << 20) - 1] = b'\n';
    let bad: Vec<(api::SetNetTopologyRequest, &str)> = vec![
        (set_req(b"[[tor]]\nname = \"rack-a\"\nhosts = [\"h1\"\n"), "refused: toml topology"),
        (set_req(b"h1,rack-a\nh2\n"), "line 2"),
        (set_req(&big), "over the limit of 8388608 bytes"),
        (api::SetNetTopologyRequest { reason: String::new(), ..set_req(TOML.as_bytes()) }, "reason"),
        (api::SetNetTopologyRequest { clear: true, ..set_req(TOML.as_bytes()) }, "clear takes no content"),
        (api::SetNetTopologyRequest { name: "no/slash".into(), ..set_req(TOML.as_bytes()) }, "not allowed"),
    ];
    for (req, says) in bad {
        let g = c.set_net_topology(req.clone()).await.expect_err(says);
        assert_eq!(g.code(), tonic::Code::InvalidArgument, "{says}: {g}");
        assert!(g.message().contains(says), "{says}: {}", g.message());
        let (status, v) = rest(&m, "POST", "/api/v1/net/topology", set_json(&req)).await;
        assert_eq!(status, 400, "{says}: {v}");
        assert_eq!(v["code"], "INVALID_ARGUMENT", "{says}: {v}");
        assert_eq!(v["message"].as_str(), Some(g.message()), "{says}: the same words on both front ends");
    }
    assert_eq!(
        Reader::new(&m.db).expect("reader").revision().expect("revision"),
        revision,
        "nothing changed"
    );

    // A second topology whose stored chunk is then replaced by other (properly sealed) bytes: activating it
    // succeeds (every chunk is present), but the leader never uses bytes that do not hash to the sha256.
    let other = "h1,rack-z,core-9\nh2,rack-z,core-9\n";
    let push = api::PushArtifactRequest {
        name: "fabric".into(),
        version: "tampered".into(),
        r#type: "topology".into(),
        content: other.as_bytes().to_vec(),
        by: "ops".into(),
        ..Default::default()
    };
    c.push_artifact(push).await.expect("push a topology artifact");
    let other_sha = sha256_hex(other.as_bytes());
    {
        let txn = m.db.begin_write().expect("write txn");
        {
            let mut t = txn.open_table(master::store::BLOBS).expect("blobs");
            let forged = other.replace("rack-z", "rack-y");
            let sealed = master::store::seal_bytes(&(other_sha.as_str(), 0u64), forged.as_bytes());
            t.insert((other_sha.as_str(), 0u64), sealed.as_slice()).expect("replace chunk");
        }
        txn.commit().expect("commit");
    }
    let failures_before = metric(&metrics(&m).await, "huatuo_master_net_topology_load_failures_total");
    let req = api::SetNetTopologyRequest {
        name: "fabric".into(),
        version: "tampered".into(),
        ..set_req(other.as_bytes())
    };
    let r = c.set_net_topology(req).await.expect("activated").into_inner();
    assert_eq!(r.sha256, other_sha, "{r:?}");
    assert_ne!(r.source, "replicated", "bytes that do not verify are not used: {r:?}");
    assert!(r.error.contains("did not verify"), "{r:?}");
    assert_eq!((r.hosts, r.switches), (0, 0), "as with no topology (no labels either): {r:?}");
    let failures = metric(&metrics(&m).await, "huatuo_master_net_topology_load_failures_total");
    assert_eq!(failures, failures_before + 1, "counted once, not once per read");
    let (_, v) = rest(&m, "GET", "/api/v1/net/topology", Value::Null).await;
    assert_eq!(v["error"], json!(r.error), "{v}");
    assert_eq!(metric(&metrics(&m).await, "huatuo_master_net_topology_load_failures_total"), failures);
    let e = c
        .net_path(api::NetPathRequest { a: "h1".into(), b: "h2".into() })
        .await
        .expect_err("no topology in use");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // Back to the good one: in use again (loaded again: the cache holds the last sha256 only).
    let loads = metric(&metrics(&m).await, "huatuo_master_net_topology_loads_total");
    let r = c.set_net_topology(set_req(TOML.as_bytes())).await.expect("set").into_inner();
    assert_eq!((r.source.as_str(), r.sha256.as_str()), ("replicated", sha.as_str()), "{r:?}");
    assert_eq!(metric(&metrics(&m).await, "huatuo_master_net_topology_loads_total"), loads + 1);
    let p =
        c.net_path(api::NetPathRequest { a: "h1".into(), b: "h3".into() }).await.expect("path").into_inner();
    assert_eq!(p.routes.len(), 1, "{p:?}");
    assert_eq!(p.routes[0].nodes, ["h1", "rack-a", "core-1", "rack-b", "h3"]);
}

/// The value of a counter in a Prometheus text page (0 when absent).
fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}
