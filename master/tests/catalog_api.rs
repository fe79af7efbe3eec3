//! The checker catalog through both front ends of a real (single-node, in-process) master (issue 15): the
//! leader enables command version 4 and seeds the catalog on its own; every bad input of the issue (over the
//! size limit, a duplicate NAME@VERSION with other bytes, a rule set that does not parse or compile, a
//! rollout of an unknown version, a percentage outside 0-100, overlapping gray host sets, an agent asking for
//! an artifact it is not assigned) is refused with the same code over gRPC and REST and changes nothing;
//! heartbeats carry the assignment only when its hash changed; fetches are chunked and resumable.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{LIVENESS_BOUND, Master};
use master::catalog::{CHUNK_BYTES, MAX_ARTIFACT_BYTES, sha256_hex};
use master::grpc::GrpcApi;
use master::store::Reader;
use proto::api;
use proto::error::{ApiError, Code};
use serde_json::{Value, json};

/// Counts the allocations of a thread while it is counting ([`allocations_of`]): the heartbeat hot path's
/// test. Everything else passes straight to the system allocator.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn note_allocation() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to `System` unchanged; counting touches no allocator state.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `f`'s result and the allocations this thread made while running it.
fn allocations_of<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.load(Ordering::Relaxed) - before, out)
}

/// Longest wait for one HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

async fn start() -> Master {
    start_with(true).await
}

/// The highest command version a cluster can be lowered from: from version 9 on the change log's rows are
/// binary, and lowering below 9 is refused while they are kept. The tests that lower start here.
const LAST_JSON_VERSION: u32 = master::model::BINARY_ENTRY_VERSION - 1;

/// A single-node master; with `auto_upgrade` off the test raises `min_command_version` itself (once, to
/// [`LAST_JSON_VERSION`]) so the leader never raises it behind the test's back afterwards.
async fn start_with(auto_upgrade: bool) -> Master {
    let m = common::start(|c| c.auto_upgrade = auto_upgrade).await;
    if !auto_upgrade {
        m.svc
            .set_min_command_version(LAST_JSON_VERSION, "ops", "test: every member knows it")
            .await
            .expect("raise");
    }
    // The leader raises min_command_version to 4 and seeds the catalog by itself.
    let deadline = Instant::now() + LIVENESS_BOUND;
    while reader(&m).catalog("kernel-log").expect("read").is_none() {
        assert!(Instant::now() < deadline, "the catalog was never seeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m
}

fn reader(m: &Master) -> Reader {
    Reader::new(&m.db).expect("reader")
}

fn revision(m: &Master) -> u64 {
    reader(m).revision().expect("revision")
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
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
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn rest(m: &Master, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (addr, method, path, body) = (m.rest.clone(), method.to_string(), path.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || http(&addr, &method, &path, &body)).await.expect("join")
}

async fn client(m: &Master) -> api::master_client::MasterClient<tonic::transport::Channel> {
    api::master_client::MasterClient::connect(format!("http://{}", m.grpc))
        .await
        .expect("connect")
        .max_decoding_message_size(32 << 20)
        .max_encoding_message_size(32 << 20)
}

fn push_req(name: &str, version: &str, kind: &str, content: &[u8]) -> api::PushArtifactRequest {
    api::PushArtifactRequest {
        name: name.into(),
        version: version.into(),
        r#type: kind.into(),
        content: content.to_vec(),
        description: "test".into(),
        spec: Some(api::ArtifactSpec {
            interval_ms: 1000,
            timeout_ms: 500,
            kinds: vec!["disk".into()],
            ..Default::default()
        }),
        by: "ops".into(),
        sha256: String::new(),
    }
}

fn push_json(r: &api::PushArtifactRequest) -> Value {
    let spec = r.spec.clone().unwrap_or_default();
    json!({
        "name": r.name, "version": r.version, "type": r.r#type,
        "content_base64": base64::engine::general_purpose::STANDARD.encode(&r.content),
        "description": r.description, "by": r.by,
        "spec": {"interval_ms": spec.interval_ms, "timeout_ms": spec.timeout_ms, "kinds": spec.kinds},
    })
}

fn rollout_req(action: &str, name: &str, version: &str) -> api::RolloutRequest {
    api::RolloutRequest {
        action: action.into(),
        name: name.into(),
        version: version.into(),
        by: "ops".into(),
        reason: "test".into(),
        ..Default::default()
    }
}

fn rollout_json(r: &api::RolloutRequest) -> Value {
    json!({
        "action": r.action, "name": r.name, "version": r.version, "hosts": r.hosts, "percent": r.percent,
        "labels": r.labels, "shadow": r.shadow, "by": r.by, "reason": r.reason,
    })
}

/// A bad request refused with `code` (message containing `want`) by gRPC and by REST, changing nothing.
enum Bad {
    Push(api::PushArtifactRequest),
    Rollout(api::RolloutRequest),
    /// REST only (JSON that gRPC cannot even carry, such as a negative percentage as text).
    RestRollout(Value),
    /// Set the cluster's `min_command_version` to this.
    MinVersion(u32),
}

async fn refused_everywhere(m: &Master, bad: Bad, code: Code, want: &str) {
    let before = revision(m);
    let mut c = client(m).await;
    let (grpc, rest_body) = match bad {
        Bad::Push(r) => {
            let j = push_json(&r);
            (Some(c.push_artifact(r).await.map(|_| ())), ("/api/v1/catalog", j))
        }
        Bad::Rollout(r) => {
            let j = rollout_json(&r);
            (Some(c.rollout(r).await.map(|_| ())), ("/api/v1/rollouts", j))
        }
        Bad::RestRollout(j) => (None, ("/api/v1/rollouts", j)),
        Bad::MinVersion(v) => {
            let r = api::SetMinCommandVersionRequest { version: v, by: "ops".into(), reason: "test".into() };
            let j = json!({"version": v, "by": "ops", "reason": "test"});
            (Some(c.set_min_command_version(r).await.map(|_| ())), ("/api/v1/min-command-version", j))
        }
    };
    if let Some(g) = grpc {
        let e = ApiError::from(g.expect_err(want));
        assert_eq!(e.code, code, "gRPC {want}: {e:?}");
        assert!(e.message.contains(want), "gRPC: want {want:?} in {:?}", e.message);
    }
    let (status, body) = rest(m, "POST", rest_body.0, rest_body.1).await;
    assert_eq!(status, code.http_status(), "REST {want}: {body}");
    assert_eq!(body["code"], code.as_str(), "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains(want), "REST: want {want:?} in {body}");
    assert_eq!(revision(m), before, "{want}: the revision moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_alike_on_grpc_and_rest_and_changes_nothing() {
    let m = start().await;
    let mut c = client(&m).await;
    c.push_artifact(push_req("probe", "1", "external", b"#!/bin/sh\necho ok\n")).await.expect("push v1");
    let mut r = rollout_req("start", "probe", "1");
    r.hosts = vec!["h1".into(), "h2".into()];
    c.rollout(r).await.expect("start v1 on h1,h2");
    c.push_artifact(push_req("probe", "2", "external", b"#!/bin/sh\necho two\n")).await.expect("push v2");
    let big = vec![b'x'; MAX_ARTIFACT_BYTES as usize + 1];
    refused_everywhere(
        &m,
        Bad::Push(push_req("probe", "9", "external", &big)),
        Code::InvalidArgument,
        "over the limit",
    )
    .await;
    refused_everywhere(
        &m,
        Bad::Push(push_req("probe", "1", "external", b"other bytes")),
        Code::Conflict,
        "already stored with sha256",
    )
    .await;
    refused_everywhere(
        &m,
        Bad::Push(push_req("rules-x", "1", "rules", b"version = \"1\"\n[[rule]\n")),
        Code::InvalidArgument,
        "rule set does not compile",
    )
    .await;
    let bad_regex = b"version = \"1\"\n[[rule]]\nid = \"x.y\"\nkeywords = [\"boom\"]\npattern = \"boom(\"\n\
                      kind = \"machine\"\nseverity = \"ERROR\"\n";
    refused_everywhere(
        &m,
        Bad::Push(push_req("rules-x", "1", "rules", bad_regex)),
        Code::InvalidArgument,
        "bad regex",
    )
    .await;
    refused_everywhere(
        &m,
        Bad::Push(push_req("online", "2", "profile", b"version = 1\nname = \"online\"\n")),
        Code::InvalidArgument,
        "grades",
    )
    .await;
    // A model (issue 20) is parsed with the agent's own parser: a file that does not parse or whose numbers
    // are out of range is refused alike on gRPC and REST.
    refused_everywhere(
        &m,
        Bad::Push(push_req("disk-failure", "1", "model", b"{\"format\": 1, \"name\": ")),
        Code::InvalidArgument,
        "model file does not parse",
    )
    .await;
    let model = include_str!("../../checkers/testdata/predict/command-timeouts.json");
    let bad_threshold = model.replace("\"threshold\": 0.5", "\"threshold\": 0");
    refused_everywhere(
        &m,
        Bad::Push(push_req("disk-failure", "1", "model", bad_threshold.as_bytes())),
        Code::InvalidArgument,
        "threshold 0 is not strictly between 0 and 1",
    )
    .await;
    refused_everywhere(
        &m,
        Bad::Push(push_req("pro/be", "1", "external", b"x")),
        Code::InvalidArgument,
        "not allowed",
    )
    .await;
    refused_everywhere(
        &m,
        Bad::Push(push_req("probe", "3", "builtin", b"x")),
        Code::InvalidArgument,
        "read-only",
    )
    .await;
    let mut no_kinds = push_req("probe", "3", "external", b"x");
    no_kinds.spec = Some(api::ArtifactSpec { interval_ms: 1000, timeout_ms: 500, ..Default::default() });
    refused_everywhere(&m, Bad::Push(no_kinds), Code::InvalidArgument, "object kinds").await;
    let mut unknown = rollout_req("start", "probe", "7");
    unknown.hosts = vec!["h3".into()];
    refused_everywhere(&m, Bad::Rollout(unknown), Code::NotFound, "no version \"7\"").await;
    for p in [101.0, -1.0] {
        let mut r = rollout_req("start", "probe", "2");
        r.percent = p;
        refused_everywhere(&m, Bad::Rollout(r), Code::InvalidArgument, "must be a finite number in 0-100")
            .await;
    }
    let mut nan = rollout_req("start", "probe", "2");
    nan.percent = f64::NAN;
    let mut c2 = client(&m).await;
    let e = ApiError::from(c2.rollout(nan).await.expect_err("NaN"));
    assert_eq!(e.code, Code::InvalidArgument, "{e:?}");
    refused_everywhere(
        &m,
        Bad::RestRollout(json!({"action": "start", "name": "probe", "version": "2", "percent": "lots",
            "by": "ops", "reason": "r"})),
        Code::InvalidArgument,
        "",
    )
    .await;
    let mut overlap = rollout_req("start", "probe", "2");
    overlap.hosts = vec!["h2".into(), "h3".into()];
    refused_everywhere(&m, Bad::Rollout(overlap), Code::Conflict, "must be disjoint").await;
    let mut no_reason = rollout_req("pause", "probe", "1");
    no_reason.reason = String::new();
    refused_everywhere(&m, Bad::Rollout(no_reason), Code::InvalidArgument, "reason").await;
    refused_everywhere(
        &m,
        Bad::Rollout(rollout_req("explode", "probe", "1")),
        Code::InvalidArgument,
        "unknown rollout action",
    )
    .await;
    // An agent asking for an artifact its host is not assigned: refused (agents read only what they run).
    let before = revision(&m);
    let e = ApiError::from(
        c.fetch_artifact(api::FetchArtifactRequest {
            agent: "agent-h9".into(),
            host: "h9".into(),
            name: "probe".into(),
            version: "1".into(),
            ..Default::default()
        })
        .await
        .expect_err("h9 is not assigned probe@1"),
    );
    assert_eq!(e.code, Code::PermissionDenied, "{e:?}");
    assert_eq!(revision(&m), before);
}

async fn heartbeat(
    c: &mut api::master_client::MasterClient<tonic::transport::Channel>,
    host: &str,
    hash: &str,
) -> api::HeartbeatResponse {
    c.heartbeat(api::HeartbeatRequest {
        agent: format!("agent-{host}"),
        host: host.into(),
        version: "0.1.0".into(),
        started_ms: 1,
        assignment_hash: hash.into(),
        ..Default::default()
    })
    .await
    .expect("heartbeat")
    .into_inner()
}

/// A beat as a running agent sends it every interval: its checkers, their runs, its probe address, the
/// assignment hash it holds and the id of the datagram key it holds (0: none).
fn steady_beat(host: &str, hash: &str, runs: u64, key_id: u64) -> api::HeartbeatRequest {
    let checkers = ["archive", "kernel-log", "offline", "online", "smart", "net-probe"];
    api::HeartbeatRequest {
        agent: format!("agent-{host}"),
        host: host.into(),
        version: "0.1.0".into(),
        started_ms: 1_700_000_000_000,
        checkers: checkers.iter().map(|c| (c.to_string(), "1".to_string())).collect(),
        outbox_entries: 3,
        outbox_dropped: 0,
        runs: checkers
            .iter()
            .map(|c| api::CheckerRun {
                name: c.to_string(),
                version: "1".into(),
                sha256: "ab".repeat(32),
                status: "running".into(),
                runs,
                last_run_ms: 1_700_000_000_000 + runs,
                ..Default::default()
            })
            .collect(),
        assignment_hash: hash.into(),
        probe_addr: "127.0.0.1:7070".into(),
        net: Vec::new(),
        beat_key_id: key_id,
    }
}

/// Issue 17: a known agent's beat with nothing new to hand out is answered from memory in one poll (no
/// read, no wait) and allocates nothing between the decoded request and the reply (the request's own
/// strings are moved, not copied; the reply's hash is the one the agent sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_agents_steady_beat_allocates_nothing() {
    use futures::FutureExt;
    use proto::api::master_server::Master as _;
    let m = start().await;
    // The leader sets the heartbeat secret on its own (command version 12): a steady agent holds its key.
    let deadline = Instant::now() + LIVENESS_BOUND;
    while m.svc.beat_secret().is_none() {
        assert!(Instant::now() < deadline, "no heartbeat secret was set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let g = GrpcApi::handlers(m.svc.clone());
    let first = g.heartbeat(tonic::Request::new(steady_beat("h1", "", 1, 0))).await.expect("first beat");
    let first = first.into_inner();
    let (hash, key_id) = (first.assignment_hash, first.beat_key_id);
    assert!(!hash.is_empty() && key_id != 0 && first.beat_key.len() == 32, "the first answer hands the key");
    // The agent now holds that assignment and its key: from its next beat on, the beat says so (steady).
    g.heartbeat(tonic::Request::new(steady_beat("h1", &hash, 1, key_id)))
        .await
        .expect("holding the assignment");
    // A beat may find the order index behind the revision (the leader's duties write too) and take a
    // catch-up step, which waits; a steady fleet's beats find it current. Try until one finds it so.
    let mut measured = None;
    for n in 2..200u64 {
        let beat = g.heartbeat(tonic::Request::new(steady_beat("h1", &hash, n, key_id)));
        let (allocs, out) = allocations_of(|| beat.now_or_never());
        if let Some(out) = out {
            let r = out.expect("steady beat").into_inner();
            assert_eq!((r.assignment_hash.as_str(), r.assignment_included), (hash.as_str(), false));
            measured = Some(allocs);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let allocs = measured.expect("no beat was answered in one poll");
    assert_eq!(allocs, 0, "allocations of one steady beat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_the_assignment_and_fetches_resume_by_offset() {
    let m = start().await;
    let mut c = client(&m).await;
    // Seeded: every host runs the default rule set and the three profiles as version 1.
    let hb = heartbeat(&mut c, "h1", "").await;
    assert!(hb.assignment_included);
    let names: Vec<(String, String)> =
        hb.assignment.iter().map(|a| (a.name.clone(), a.version.clone())).collect();
    assert_eq!(
        names,
        ["archive", "kernel-log", "offline", "online"]
            .iter()
            .map(|n| (n.to_string(), "1".to_string()))
            .collect::<Vec<_>>()
    );
    let hash = hb.assignment_hash.clone();
    let reads = m.svc.assignment_store_reads();
    let again = heartbeat(&mut c, "h1", &hash).await;
    assert!(!again.assignment_included && again.assignment.is_empty(), "unchanged: not sent again");
    assert_eq!(again.assignment_hash, hash);
    // Cached, and the catalog did not move: the beat read nothing from the store for it.
    assert_eq!(m.svc.assignment_store_reads(), reads, "an unchanged assignment costs no store read");
    // The runs a heartbeat reports are bounded: at the limit fine, over it refused.
    let runs = |n: usize, err: usize| -> Vec<api::CheckerRun> {
        (0..n)
            .map(|i| api::CheckerRun {
                name: format!("c{i}"),
                version: "1".into(),
                status: "running".into(),
                last_error: "e".repeat(err),
                ..Default::default()
            })
            .collect()
    };
    let limit = master::api::MAX_HEARTBEAT_CHECKERS;
    let max_err = master::api::catalog::MAX_RUN_ERROR_LEN;
    for (n, err, ok) in [(limit, max_err, true), (limit + 1, 1, false), (1, max_err + 1, false)] {
        let mut req = api::HeartbeatRequest {
            agent: "agent-h1".into(),
            host: "h1".into(),
            version: "0.1.0".into(),
            started_ms: 1,
            ..Default::default()
        };
        req.runs = runs(n, err);
        let r = c.heartbeat(req).await;
        assert_eq!(r.is_ok(), ok, "{n} runs, error of {err} bytes: {r:?}");
        if let Err(e) = r {
            assert_eq!(ApiError::from(e).code, Code::InvalidArgument);
        }
    }
    // A 1.5-chunk external checker, pushed over REST, rolled out to h1 over gRPC.
    let bytes: Vec<u8> = (0..(CHUNK_BYTES + CHUNK_BYTES / 2)).map(|i| (i * 31 % 256) as u8).collect();
    let (status, body) =
        rest(&m, "POST", "/api/v1/catalog", push_json(&push_req("probe", "1", "external", &bytes))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["artifact"]["sha256"], sha256_hex(&bytes));
    let (status, again) =
        rest(&m, "POST", "/api/v1/catalog", push_json(&push_req("probe", "1", "external", &bytes))).await;
    assert_eq!((status, &again["duplicate"]), (200, &json!(true)), "{again}");
    let mut r = rollout_req("start", "probe", "1");
    r.hosts = vec!["h1".into()];
    c.rollout(r).await.expect("start");
    let reads = m.svc.assignment_store_reads();
    let hb = heartbeat(&mut c, "h1", &hash).await;
    assert!(hb.assignment_included && hb.assignment_hash != hash);
    assert_eq!(m.svc.assignment_store_reads(), reads + 1, "the catalog moved: read again");
    let a = hb.assignment.iter().find(|a| a.name == "probe").expect("probe assigned to h1");
    assert_eq!((a.version.as_str(), a.size, a.shadow), ("1", bytes.len() as u64, false));
    assert!(!heartbeat(&mut c, "h2", &hash).await.assignment_included, "h2's assignment did not change");
    // Fetch in pieces of 100,000 bytes, resuming from the last offset.
    let mut got = Vec::new();
    while (got.len() as u64) < a.size {
        let chunk = c
            .fetch_artifact(api::FetchArtifactRequest {
                agent: "agent-h1".into(),
                host: "h1".into(),
                name: "probe".into(),
                version: "1".into(),
                sha256: a.sha256.clone(),
                offset: got.len() as u64,
                max_bytes: 100_000,
            })
            .await
            .expect("fetch")
            .into_inner();
        assert_eq!((chunk.offset, chunk.size), (got.len() as u64, a.size));
        assert!(!chunk.data.is_empty() && chunk.data.len() <= 100_000);
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(sha256_hex(&got), a.sha256);
    // Past the end is refused; h2 may not read probe@1.
    let past = c
        .fetch_artifact(api::FetchArtifactRequest {
            host: "h1".into(),
            name: "probe".into(),
            version: "1".into(),
            offset: a.size + 1,
            ..Default::default()
        })
        .await
        .expect_err("past the end");
    assert_eq!(ApiError::from(past).code, Code::InvalidArgument);
    // The catalog and the distribution over REST and gRPC.
    let (status, cat) = rest(&m, "GET", "/api/v1/catalog/probe", json!({})).await;
    assert_eq!(status, 200, "{cat}");
    assert_eq!(cat["rollouts"][0]["status"], "gray");
    let (_, all) = rest(&m, "GET", "/api/v1/catalog", json!({})).await;
    let builtin =
        all["artifacts"].as_array().expect("artifacts").iter().filter(|a| a["type"] == "builtin").count();
    assert_eq!(builtin, rulesets::BUILTIN_CHECKERS.len(), "{all}");
    let (status, st) = rest(&m, "GET", "/api/v1/rollouts?name=probe", json!({})).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["checkers"][0]["name"], "probe");
    let (status, _) = rest(&m, "GET", "/api/v1/catalog/none-such", json!({})).await;
    assert_eq!(status, 404);
    // A retried pause with the same idempotency key is applied once (the retry gets the first revision).
    let keyed = || {
        let mut req = tonic::Request::new(rollout_req("pause", "probe", "1"));
        req.metadata_mut().insert("idempotency-key", "pause-probe-1".parse().expect("ascii"));
        req
    };
    let first = c.rollout(keyed()).await.expect("pause").into_inner();
    let at = revision(&m);
    let retry = c.rollout(keyed()).await.expect("retried pause").into_inner();
    assert_eq!((retry.revision, revision(&m)), (first.revision, at), "applied once");
    let e = ApiError::from(c.rollout(rollout_req("pause", "probe", "1")).await.expect_err("already paused"));
    assert_eq!(e.code, Code::Conflict, "without the key a second pause is refused: {e:?}");
    // Rollback: h1 returns to nothing for probe (no stable version yet).
    c.rollout(rollout_req("rollback", "probe", "1")).await.expect("rollback");
    let hb = heartbeat(&mut c, "h1", &a.sha256).await;
    assert!(hb.assignment.iter().all(|x| x.name != "probe"), "{:?}", hb.assignment);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A shadow canary that flags every disk of its hosts is paused by the leader's canary duty on its own,
/// with the numbers; no object changes state; the alert, `rollout status` (REST) and the catalog say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_pauses_an_avalanching_shadow_canary_with_the_numbers() {
    let m = start().await;
    m.svc.set_canary_config(master::catalog::CanaryConfig { window_ms: 300, ..Default::default() });
    let mut c = client(&m).await;
    let hosts = ["h1", "h2", "h3"];
    for h in hosts {
        let objects = ["machine/".to_string() + h, format!("disk/{h}/sda"), format!("disk/{h}/sdb")]
            .into_iter()
            .map(|id| api::RegisteredObject { id, ..Default::default() })
            .collect();
        c.register(api::RegisterRequest { agent: format!("agent-{h}"), host: h.into(), objects })
            .await
            .expect("register");
        heartbeat(&mut c, h, "").await;
    }
    c.push_artifact(push_req("probe", "1", "external", b"#!/bin/sh\necho v1\n")).await.expect("v1");
    c.push_artifact(push_req("probe", "2", "external", b"#!/bin/sh\necho v2\n")).await.expect("v2");
    c.rollout(rollout_req("promote", "probe", "1")).await.expect("promote v1");
    let mut r = rollout_req("start", "probe", "2");
    r.hosts = vec!["h1".into(), "h2".into()];
    r.shadow = true;
    c.rollout(r).await.expect("shadow start");
    let hb = heartbeat(&mut c, "h1", "").await;
    let shadow: Vec<(String, bool)> =
        hb.assignment.iter().filter(|a| a.name == "probe").map(|a| (a.version.clone(), a.shadow)).collect();
    assert_eq!(shadow, vec![("1".to_string(), false), ("2".to_string(), true)]);
    let states = |m: &Master| -> Vec<String> {
        let r = reader(m);
        hosts
            .iter()
            .flat_map(|h| [format!("disk/{h}/sda"), format!("disk/{h}/sdb")])
            .map(|id| {
                r.object(&id).expect("read").map(|o| format!("{id} {:?}", o.sm.state)).unwrap_or_default()
            })
            .collect()
    };
    let before = states(&m);
    // v2 flags every disk of the canary hosts FATAL, as shadow findings.
    let findings = ["h1", "h2"]
        .iter()
        .flat_map(|h| [format!("disk/{h}/sda"), format!("disk/{h}/sdb")])
        .map(|object| api::Finding {
            object,
            severity: "FATAL".into(),
            checker: "probe".into(),
            version: "2".into(),
            rule: "probe.everything-is-broken".into(),
            evidence: "v2 thinks so".into(),
            time_ms: now_ms(),
            shadow: true,
            ..Default::default()
        })
        .collect();
    c.ingest(api::IngestRequest { agent: "agent-h1".into(), seq: 1, findings, epoch: 0 })
        .await
        .expect("ingest");
    let deadline = Instant::now() + LIVENESS_BOUND;
    let paused = loop {
        let cat = reader(&m).catalog("probe").expect("read").expect("probe");
        if let Some(x) = cat.rollouts.iter().find(|x| x.auto_paused) {
            break x.clone();
        }
        assert!(Instant::now() < deadline, "the canary was never paused: {:?}", cat.rollouts);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = paused.deviation.clone().expect("deviation");
    assert_eq!(
        (d.verdict.as_str(), d.canary_hosts, d.canary_objects, d.new_flagged, d.current_flagged, d.limit),
        ("too-many-flags", 2, 4, 4, 0, 0),
        "{d:?}"
    );
    assert!(paused.paused_reason.contains("flagged 4 objects"), "{}", paused.paused_reason);
    assert_eq!(states(&m), before, "not one object changed state");
    let alerts = reader(&m).audit(true, 20).expect("alerts");
    assert!(alerts.iter().any(|a| a.message.contains("rollout of probe@2 paused")), "{alerts:?}");
    let (status, st) = rest(&m, "GET", "/api/v1/rollouts?name=probe", json!({})).await;
    assert_eq!(status, 200, "{st}");
    let r = &st["checkers"][0]["rollouts"][0];
    assert_eq!((r["status"].as_str(), r["auto_paused"].as_bool()), (Some("paused"), Some(true)), "{st}");
    assert_eq!(r["deviation"]["new_flagged"], 4, "{st}");
    // Paused canaries keep their hosts until an operator decides; rollback returns them to v1 alone.
    c.rollout(rollout_req("rollback", "probe", "2")).await.expect("rollback");
    let hb = heartbeat(&mut c, "h1", &hb.assignment_hash).await;
    let probe: Vec<(String, bool)> =
        hb.assignment.iter().filter(|a| a.name == "probe").map(|a| (a.version.clone(), a.shadow)).collect();
    assert_eq!(probe, vec![("1".to_string(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_command_version_stays_at_what_an_assigned_model_needs() {
    // A model's predictions are ingests of command version 6: below it the leader refuses the agents' batches
    // that carry one. So while a model is assigned, lowering below 6 is refused before proposing (gRPC and
    // REST alike, nothing changes), and a model is not assigned while the cluster is below 6.
    let m = start_with(false).await;
    let min = |m: &Master| reader(m).min_command_version().expect("read");
    assert_eq!(min(&m), LAST_JSON_VERSION);
    let model = include_str!("../../checkers/testdata/predict/command-timeouts.json");
    let mut c = client(&m).await;
    c.push_artifact(push_req("disk-failure", "1", "model", model.as_bytes())).await.expect("push");
    let svc = m.svc.clone();
    let set = |v: u32| {
        let svc = svc.clone();
        async move { svc.set_min_command_version(v, "ops", "test").await.map(|_| ()).map_err(|e| e.to_string()) }
    };
    // Pushed but assigned nowhere: lowering is a rollback like any other.
    set(5).await.expect("nothing assigned needs 6");
    assert_eq!(min(&m), 5);
    // ... and at 5 the model is not put on hosts.
    let promote = rollout_req("promote", "disk-failure", "1");
    refused_everywhere(&m, Bad::Rollout(promote.clone()), Code::Conflict, "needs command version 6").await;
    let mut start = rollout_req("start", "disk-failure", "1");
    start.hosts = vec!["h1".into()];
    refused_everywhere(&m, Bad::Rollout(start.clone()), Code::Conflict, "min_command_version is 5").await;
    // At 6, a gray rollout of the model: lowering below 6 is refused, naming the model and the rollout.
    set(6).await.expect("raise to 6");
    c.rollout(start).await.expect("start at 6");
    let e = set(5).await.expect_err("a model is in a gray rollout");
    assert!(e.contains("model \"disk-failure\" is assigned (gray rollout of 1)"), "{e}");
    assert!(e.contains("roll back its rollout first"), "{e}");
    refused_everywhere(&m, Bad::MinVersion(5), Code::Conflict, "needs command version 6").await;
    refused_everywhere(&m, Bad::MinVersion(1), Code::Conflict, "is assigned").await;
    assert_eq!(min(&m), 6);
    // Rolled back, it runs nowhere again; promoted, it is the stable version and stays assigned.
    c.rollout(rollout_req("rollback", "disk-failure", "1")).await.expect("rollback");
    set(5).await.expect("rolled back: assigned nowhere");
    set(7).await.expect("raise");
    c.rollout(promote).await.expect("promote at 7");
    let e = set(5).await.expect_err("a stable model");
    assert!(e.contains("(stable version 1)") && e.contains("retire it first"), "{e}");
    assert!(e.contains("huatuo rollout retire disk-failure@1, command version 8"), "{e}");
    refused_everywhere(&m, Bad::MinVersion(5), Code::Conflict, "stable version 1").await;
    // Not below what the model needs: allowed.
    set(6).await.expect("6 is what the model needs");
    assert_eq!(min(&m), 6);
    // Retiring the stable model needs command version 8 (refused below it, on gRPC and REST alike) ...
    let retire = rollout_req("retire", "disk-failure", "1");
    refused_everywhere(&m, Bad::Rollout(retire.clone()), Code::Conflict, "needs command version 8").await;
    set(8).await.expect("raise to 8");
    // ... names the stable version, and is refused while a rollout of the checker is in progress.
    c.push_artifact(push_req("disk-failure", "2", "model", model.as_bytes())).await.expect("push v2");
    let other = rollout_req("retire", "disk-failure", "2");
    refused_everywhere(&m, Bad::Rollout(other), Code::Conflict, "is not the stable version").await;
    let mut gray = rollout_req("start", "disk-failure", "2");
    gray.hosts = vec!["h1".into()];
    c.rollout(gray).await.expect("start v2");
    refused_everywhere(&m, Bad::Rollout(retire.clone()), Code::Conflict, "roll it back before retiring")
        .await;
    c.rollout(rollout_req("rollback", "disk-failure", "2")).await.expect("rollback v2");
    // Retired, the model runs on no host and the cluster can go back below 6.
    c.rollout(retire.clone()).await.expect("retire");
    let cat = reader(&m).catalog("disk-failure").expect("read").expect("checker");
    assert_eq!(cat.stable, "");
    assert!(master::catalog::assignment_of([&cat], "h1", None).is_empty());
    refused_everywhere(&m, Bad::Rollout(retire), Code::Conflict, "no stable version to retire").await;
    set(5).await.expect("retired: assigned nowhere");
    assert_eq!(min(&m), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_command_version_stays_at_4_during_a_shadow_rollout() {
    // Shadow findings are ingests of command version 4: lowering below it during a shadow rollout would make
    // the leader refuse the canary hosts' batches whole. Refused alike on gRPC and REST; rolled back, allowed.
    let m = start_with(false).await;
    let min = |m: &Master| reader(m).min_command_version().expect("read");
    let mut c = client(&m).await;
    c.push_artifact(push_req("probe", "1", "external", b"#!/bin/sh\necho v1\n")).await.expect("v1");
    c.push_artifact(push_req("probe", "2", "external", b"#!/bin/sh\necho v2\n")).await.expect("v2");
    c.rollout(rollout_req("promote", "probe", "1")).await.expect("promote v1");
    let svc = m.svc.clone();
    let set = |v: u32| {
        let svc = svc.clone();
        async move { svc.set_min_command_version(v, "ops", "test").await.map(|_| ()).map_err(|e| e.to_string()) }
    };
    // A stable external checker makes agents send plain findings: any version is allowed.
    set(3).await.expect("a stable external checker needs nothing");
    set(LAST_JSON_VERSION).await.expect("raise");
    let mut r = rollout_req("start", "probe", "2");
    r.hosts = vec!["h1".into()];
    r.shadow = true;
    c.rollout(r).await.expect("shadow start");
    let e = set(3).await.expect_err("a shadow rollout runs");
    assert!(e.contains("external \"probe\" is assigned") && e.contains("needs command version 4"), "{e}");
    assert!(e.contains("roll back its rollout first"), "{e}");
    refused_everywhere(&m, Bad::MinVersion(3), Code::Conflict, "needs command version 4").await;
    assert_eq!(min(&m), LAST_JSON_VERSION);
    set(4).await.expect("4 is what shadow findings need");
    c.rollout(rollout_req("rollback", "probe", "2")).await.expect("rollback");
    set(3).await.expect("rolled back: no shadow run");
    assert_eq!(min(&m), 3);
}
