//! Idempotent writes through every front end of a real (single-node, in-process) master (issue 13 item 3):
//! the same write sent twice with one idempotency key is applied once and the retry is answered
//! `duplicate: true` with the first revision, through REST (`Idempotency-Key` header or `idempotency_key`
//! body field) and gRPC (`idempotency-key` metadata, what `huatuo report` sends). Bad keys are refused before
//! anything is proposed. Until the cluster enabled command version 3 (`POST /api/v1/min-command-version`)
//! a key is ignored (documented).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::Master;
use master::store::Reader;
use proto::api;
use serde_json::{Value, json};

/// Upper bound for a single node to elect itself (it takes well under a second).
/// Longest wait for one HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

async fn start() -> Master {
    common::start(|c| c.auto_upgrade = false).await
}

/// Findings carry the time the test started (version 2 refuses findings older than 30 days), the same in
/// every send: a retry resends the same request, and a key reused with another body is refused (CONFLICT).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    })
}

fn finding(object: &str) -> Value {
    json!({
        "object": object, "severity": "WARNING", "checker": "smart", "version": "1.0.0",
        "rule": "smart.reallocated", "evidence": "12", "readings": {}, "time_ms": now_ms(),
    })
}

/// One HTTP/1.1 POST on a fresh connection (blocking: run on a blocking thread); returns (status, body).
fn post(addr: &str, path: &str, headers: &str, body: &str) -> (u16, Value) {
    post_to(addr, path, headers, body)
}

fn post_to(addr: &str, path: &str, headers: &str, body: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn post_async(addr: &str, headers: &str, body: Value) -> (u16, Value) {
    let (addr, headers, body) = (addr.to_string(), headers.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || post(&addr, "/api/v1/findings", &headers, &body)).await.expect("join")
}

fn seen(m: &Master, object: &str) -> u64 {
    Reader::new(&m.db).expect("reader").object(object).expect("get").map_or(0, |o| o.findings_seen)
}

async fn grpc_ingest(
    addr: &str,
    object: &str,
    key: Option<&str>,
) -> Result<api::IngestResponse, tonic::Status> {
    let mut c = api::master_client::MasterClient::connect(format!("http://{addr}")).await.expect("connect");
    let f = finding(object);
    let wire = api::Finding {
        object: object.into(),
        severity: "WARNING".into(),
        checker: "smart".into(),
        version: "1.0.0".into(),
        rule: f["rule"].as_str().unwrap_or_default().into(),
        evidence: "12".into(),
        readings: Default::default(),
        time_ms: now_ms(),
        shadow: false,
    };
    let mut req = tonic::Request::new(api::IngestRequest {
        agent: String::new(),
        seq: 0,
        epoch: 0,
        findings: vec![wire],
    });
    if let Some(k) = key {
        req.metadata_mut().insert("idempotency-key", k.parse().expect("ascii"));
    }
    c.ingest(req).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_applied_once_through_rest_and_grpc() {
    let m = start().await;
    // Before the cluster enabled command version 3, a key cannot be replicated: it is ignored (documented).
    let body = json!({ "findings": [finding("disk/i0/sda")] });
    for _ in 0..2 {
        let (st, v) = post_async(&m.rest, "Idempotency-Key: early-1\r\n", body.clone()).await;
        assert_eq!((st, v["duplicate"].as_bool()), (200, Some(false)), "{v}");
    }
    assert_eq!(seen(&m, "disk/i0/sda"), 2, "no dedupe before version 3");
    // The operator enables command version 3 (REST), once every master runs a binary that knows it.
    let (rest, enable) = (m.rest.clone(), json!({ "version": 3, "by": "alice", "reason": "all upgraded" }));
    let (st, v) = tokio::task::spawn_blocking(move || {
        post_to(&rest, "/api/v1/min-command-version", "", &enable.to_string())
    })
    .await
    .expect("join");
    assert_eq!((st, v["min_command_version"].as_u64()), (200, Some(3)), "{v}");

    // REST, header.
    let body = json!({ "findings": [finding("disk/i1/sda")] });
    let (st, first) = post_async(&m.rest, "Idempotency-Key: rest-7f3a-1\r\n", body.clone()).await;
    assert_eq!(
        (st, first["duplicate"].as_bool(), first["applied"].as_u64()),
        (200, Some(false), Some(1)),
        "{first}"
    );
    let (st, retry) = post_async(&m.rest, "Idempotency-Key: rest-7f3a-1\r\n", body.clone()).await;
    assert_eq!((st, retry["duplicate"].as_bool()), (200, Some(true)), "{retry}");
    assert_eq!(retry["revision"], first["revision"], "the first result");
    assert_eq!(seen(&m, "disk/i1/sda"), 1, "applied once");
    // REST, body field; the same key in header and body is fine, different ones are refused.
    let keyed = json!({ "findings": [finding("disk/i2/sda")], "idempotency_key": "rest-body-1" });
    assert_eq!(post_async(&m.rest, "", keyed.clone()).await.1["duplicate"], false);
    assert_eq!(
        post_async(&m.rest, "Idempotency-Key: rest-body-1\r\n", keyed.clone()).await.1["duplicate"],
        true
    );
    let (st, v) = post_async(&m.rest, "Idempotency-Key: other\r\n", keyed).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{v}");
    assert_eq!(seen(&m, "disk/i2/sda"), 1);
    // Bad keys are refused before anything is proposed.
    let long = "k".repeat(master::model::MAX_REQUEST_KEY_LEN + 1);
    for bad in ["with space", long.as_str(), "semi;colon"] {
        let b = json!({ "findings": [finding("disk/i3/sda")], "idempotency_key": bad });
        let (st, v) = post_async(&m.rest, "", b).await;
        assert_eq!((st, v["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{bad:?}: {v}");
    }
    assert_eq!(seen(&m, "disk/i3/sda"), 0);

    // gRPC, metadata (what `huatuo report` sends on every try).
    let a = grpc_ingest(&m.grpc, "disk/i4/sda", Some("cli-00ff-1")).await.expect("first");
    let b = grpc_ingest(&m.grpc, "disk/i4/sda", Some("cli-00ff-1")).await.expect("retry");
    assert!(!a.duplicate && b.duplicate && a.revision == b.revision, "{a:?} {b:?}");
    assert_eq!(seen(&m, "disk/i4/sda"), 1);
    let e = grpc_ingest(&m.grpc, "disk/i4/sda", Some("bad key")).await.expect_err("bad key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // Operator commands (REST /api/v1/commands) take the same header.
    let force = json!({ "object": "disk/i1/sda", "kind": "force", "value": "WARNING", "by": "alice", "reason": "replaced" });
    let send = |key: &'static str| {
        let (rest, body) = (m.rest.clone(), force.to_string());
        tokio::task::spawn_blocking(move || {
            post_to(&rest, "/api/v1/commands", &format!("Idempotency-Key: {key}\r\n"), &body)
        })
    };
    let (st, f1) = send("op-force-1").await.expect("join");
    assert_eq!((st, f1["duplicate"].as_bool()), (200, Some(false)), "{f1}");
    let (st, f2) = send("op-force-1").await.expect("join");
    assert_eq!((st, f2["duplicate"].as_bool()), (200, Some(true)), "{f2}");
    assert_eq!(f1["revision"], f2["revision"]);
    // The same force without the key is a new command, refused now (already WARNING): what a retry used to get.
    let (rest, body) = (m.rest.clone(), force.to_string());
    let (st, f3) = tokio::task::spawn_blocking(move || post_to(&rest, "/api/v1/commands", "", &body))
        .await
        .expect("join");
    assert_eq!(st, 409, "{f3}");
    // Without a key, every send is a new write (as before).
    grpc_ingest(&m.grpc, "disk/i4/sda", None).await.expect("unkeyed");
    assert_eq!(seen(&m, "disk/i4/sda"), 2);
}

/// Audit rows recorded by operator `by` (every operator write of the safety net records one).
fn audit_rows_by(m: &Master, by: &str) -> usize {
    let rows = Reader::new(&m.db).expect("reader").audit(false, 10_000).expect("audit");
    rows.iter().filter(|r| r.by == by).count()
}

fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("idempotency-key", key.parse().expect("ascii"));
    r
}

async fn rest_post(m: &Master, path: &str, key: &str, body: Value) -> (u16, Value) {
    let (rest, path, headers, body) =
        (m.rest.clone(), path.to_string(), format!("Idempotency-Key: {key}\r\n"), body.to_string());
    tokio::task::spawn_blocking(move || post_to(&rest, &path, &headers, &body)).await.expect("join")
}

/// Every operator write (register, set-level, release, decide, quotas, min command version) through REST
/// and gRPC: sent twice with one key, it is applied once (one audit row, one registration, the same answer);
/// the key reused with a different body is refused with CONFLICT and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_write_is_applied_once_per_key() {
    let m = start().await;
    let (st, v) = rest_post(
        &m,
        "/api/v1/min-command-version",
        "enable-v3",
        json!({"version": 3, "by": "alice", "reason": "t"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let mut g =
        api::master_client::MasterClient::connect(format!("http://{}", m.grpc)).await.expect("connect");

    // Register.
    let reg = json!({ "agent": "a1", "host": "r1", "objects": [{ "id": "disk/r1/sda" }] });
    let (_, first) = rest_post(&m, "/api/v1/register", "reg-rest-1", reg.clone()).await;
    let (_, retry) = rest_post(&m, "/api/v1/register", "reg-rest-1", reg).await;
    assert_eq!((first["duplicate"].as_bool(), first["created"].as_u64()), (Some(false), Some(1)), "{first}");
    assert_eq!(
        (retry["duplicate"].as_bool(), &retry["revision"]),
        (Some(true), &first["revision"]),
        "{retry}"
    );
    let greg = || api::RegisterRequest {
        agent: "a2".into(),
        host: "r2".into(),
        objects: vec![api::RegisteredObject { id: "disk/r2/sda".into(), ..Default::default() }],
    };
    let a = g.register(keyed(greg(), "reg-grpc-1")).await.expect("register").into_inner();
    let b = g.register(keyed(greg(), "reg-grpc-1")).await.expect("retry").into_inner();
    assert_eq!((a.created, a.revision), (1, b.revision), "{a:?} {b:?}");
    assert_eq!(b.created, 1, "the retry gets the first answer");
    let mut other = greg();
    other.objects[0].id = "disk/r2/sdb".into();
    let e = g.register(keyed(other, "reg-grpc-1")).await.expect_err("reused key");
    assert_eq!(e.code(), tonic::Code::Aborted, "{e}");
    assert!(Reader::new(&m.db).expect("r").object("disk/r2/sdb").expect("get").is_none(), "nothing applied");

    // Set level and release.
    for round in 0..2 {
        let body = json!({ "scope": "cluster", "level": "manual", "by": "rest-level", "reason": "drill" });
        let (st, v) = rest_post(&m, "/api/v1/levels", "level-rest-1", body).await;
        assert_eq!(st, 200, "round {round}: {v}");
        let req = api::SetLevelRequest {
            scope: "cluster".into(),
            level: "blind".into(),
            by: "grpc-level".into(),
            reason: "drill".into(),
        };
        g.set_level(keyed(req, "level-grpc-1")).await.expect("set level");
        let body = json!({ "scope": "cluster", "by": "rest-release", "reason": "drill" });
        let (st, v) = rest_post(&m, "/api/v1/release", "release-rest-1", body).await;
        assert_eq!(st, 200, "round {round}: {v}");
        let req = api::ReleaseRequest {
            scope: "cluster".into(),
            by: "grpc-release".into(),
            reason: "drill".into(),
        };
        g.release(keyed(req, "release-grpc-1")).await.expect("release");
    }
    for by in ["rest-level", "grpc-level", "rest-release", "grpc-release"] {
        assert_eq!(audit_rows_by(&m, by), 1, "{by}: applied once");
    }
    let body = json!({ "scope": "cluster", "level": "blind", "by": "rest-level", "reason": "drill" });
    let (st, v) = rest_post(&m, "/api/v1/levels", "level-rest-1", body).await;
    assert_eq!((st, v["code"].as_str()), (409, Some("CONFLICT")), "{v}");
    assert_eq!(audit_rows_by(&m, "rest-level"), 1, "the refused reuse changed nothing");

    // Quotas (REST, then the whole config through gRPC).
    let quotas = json!({ "quotas": [{ "kind": "disk", "scope": "cluster", "window_ms": 3600000, "max_entries": "5", "max_concurrent": "2" }], "by": "rest-quotas", "reason": "drill" });
    for _ in 0..2 {
        let (st, v) = rest_post(&m, "/api/v1/quotas", "quotas-rest-1", quotas.clone()).await;
        assert_eq!(st, 200, "{v}");
    }
    assert_eq!(audit_rows_by(&m, "rest-quotas"), 1);
    let cfg = master::safety::SafetyConfig::default();
    let req = || api::SetQuotasRequest {
        quotas: Vec::new(),
        by: "grpc-quotas".into(),
        reason: "drill".into(),
        config_json: serde_json::to_string(&cfg).expect("json"),
    };
    g.set_quotas(keyed(req(), "quotas-grpc-1")).await.expect("quotas");
    g.set_quotas(keyed(req(), "quotas-grpc-1")).await.expect("retry");
    assert_eq!(audit_rows_by(&m, "grpc-quotas"), 1);

    // Decide (a bulk decision that matches nothing still goes through Raft and is remembered).
    let decide = json!({ "decision": "reject", "host": "r9", "by": "rest-decide", "reason": "drill" });
    let (_, d1) = rest_post(&m, "/api/v1/proposals/decide", "decide-rest-1", decide.clone()).await;
    let (_, d2) = rest_post(&m, "/api/v1/proposals/decide", "decide-rest-1", decide).await;
    assert_eq!(
        (d1["duplicate"].as_bool(), d2["duplicate"].as_bool()),
        (Some(false), Some(true)),
        "{d1} {d2}"
    );
    assert_eq!(d1["revision"], d2["revision"]);
    let req = |host: &str| api::DecideProposalsRequest {
        decision: "approve".into(),
        host: host.into(),
        by: "grpc-decide".into(),
        reason: "drill".into(),
        ..Default::default()
    };
    let a = g.decide_proposals(keyed(req("r9"), "decide-grpc-1")).await.expect("decide").into_inner();
    let b = g.decide_proposals(keyed(req("r9"), "decide-grpc-1")).await.expect("retry").into_inner();
    assert_eq!(a.revision, b.revision);
    let e = g.decide_proposals(keyed(req("r8"), "decide-grpc-1")).await.expect_err("reused key");
    assert_eq!(e.code(), tonic::Code::Aborted, "{e}");

    // Min command version (already 3: each send is still an audited operator write).
    let body = json!({"version": 3, "by": "rest-version", "reason": "t"});
    for _ in 0..2 {
        let (st, v) = rest_post(&m, "/api/v1/min-command-version", "version-rest-1", body.clone()).await;
        assert_eq!(st, 200, "{v}");
    }
    assert_eq!(audit_rows_by(&m, "rest-version"), 1);
    let req =
        || api::SetMinCommandVersionRequest { version: 3, by: "grpc-version".into(), reason: "t".into() };
    let a = g.set_min_command_version(keyed(req(), "version-grpc-1")).await.expect("set").into_inner();
    let b = g.set_min_command_version(keyed(req(), "version-grpc-1")).await.expect("retry").into_inner();
    assert_eq!(a.revision, b.revision);
    assert_eq!(audit_rows_by(&m, "grpc-version"), 1);
}

/// The HTTP port's responses carry the date layer's `date`, marked sensitive (so h2 sends it never indexed)
/// as the gRPC ports' do: found and fallback routes alike. Without `.layer(DateLayer)` in the router the
/// response has no `date` at this point (hyper adds its own, indexed, when it writes the response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_responses_carry_a_never_indexed_date() {
    use tower::ServiceExt as _;
    let m = start().await;
    for path in ["/healthz", "/api/v1/no-such-route"] {
        let req = axum::http::Request::get(path).body(axum::body::Body::empty()).expect("request");
        let res = master::http::router(m.svc.clone()).oneshot(req).await.expect("infallible");
        let date = res.headers().get(axum::http::header::DATE).unwrap_or_else(|| panic!("{path}: no date"));
        assert!(date.is_sensitive(), "{path}: {date:?}");
    }
}
