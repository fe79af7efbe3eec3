//! Ingest streams (`IngestStream`) on a real single-node master served over gRPC on a loopback port: each
//! batch on a stream is applied as the unary call applies it, and a resent batch (same agent and seq) is
//! answered `duplicate` without being applied twice; a stream carries one agent (and no batch without
//! one, which is not deduplicated); a bad batch is refused
//! and changes nothing; the limit of open streams refuses one more (RESOURCE_EXHAUSTED) and the agent's
//! client then sends calls; an idle stream ends cleanly and the client opens another for its next batch,
//! never falling back to a call; a stream past its age ends cleanly after answering.

mod common;

use std::time::{Duration, Instant};

use common::Master;
use master::api::heartbeats::{MAX_INGEST_STREAMS, StreamStats};
use master::store::Reader;
use proto::api;
use proto::client::{Client, IngestStream, StreamStats as ClientStats};
use tonic::Code;

struct Limits {
    max_streams: usize,
    idle: Duration,
    max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: MAX_INGEST_STREAMS,
            idle: Duration::from_secs(60),
            max_age: master::api::heartbeats::HEARTBEAT_STREAM_MAX_AGE,
        }
    }
}

async fn start(l: Limits) -> Master {
    common::start(|c| {
        c.ingest_stream_idle = l.idle;
        c.max_ingest_streams = l.max_streams;
        c.heartbeat_stream_max_age = l.max_age;
    })
    .await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn finding(object: &str, severity: &str) -> api::Finding {
    api::Finding {
        object: object.into(),
        severity: severity.into(),
        checker: "smart".into(),
        version: "1.0.0".into(),
        rule: "smart.overall".into(),
        evidence: "PASSED".into(),
        readings: Default::default(),
        time_ms: now_ms(),
        shadow: false,
    }
}

/// Agent `agent`'s batch `seq`: one GOOD finding about each of `objects`.
fn batch(agent: &str, seq: u64, objects: &[&str]) -> api::IngestRequest {
    api::IngestRequest {
        agent: agent.into(),
        seq,
        findings: objects.iter().map(|o| finding(o, "GOOD")).collect(),
        epoch: 0,
    }
}

/// Findings applied to `object` so far (0: unknown object).
fn seen(m: &Master, object: &str) -> u64 {
    Reader::new(&m.db).expect("reader").object(object).expect("get").map_or(0, |o| o.findings_seen)
}

type Open = common::Open<api::IngestRequest, api::IngestResponse>;

async fn open(m: &Master) -> Result<Open, tonic::Status> {
    let mut c =
        api::master_client::MasterClient::connect(format!("http://{}", m.grpc)).await.expect("connect");
    Open::with(|rx| async move { c.ingest_stream(rx).await }).await
}

async fn wait_streams(m: &Master, want: impl Fn(StreamStats) -> bool) -> StreamStats {
    common::wait_streams(|| m.svc.ingest_streams(), want).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_on_a_stream_is_applied_once_as_the_call_applies_it() {
    let m = start(Limits::default()).await;
    // The call, for the reference.
    let mut c =
        api::master_client::MasterClient::connect(format!("http://{}", m.grpc)).await.expect("connect");
    let called = c.ingest(batch("agent-c", 1, &["disk/host-c/sda", "disk/host-c/sdb"])).await.expect("call");
    let called = called.into_inner();
    assert_eq!((called.applied, called.duplicate), (2, false));

    let mut s = open(&m).await.expect("open");
    let objects = ["disk/host-s/sda", "disk/host-s/sdb", "disk/host-s/sdc"];
    let first = s.exchange(batch("agent-s", 1, &objects)).await.expect("answered").expect("a response");
    assert_eq!((first.applied, first.duplicate), (3, false), "{first:?}");
    assert!(first.revision > called.revision, "the batch moved the revision: {first:?} after {called:?}");
    for o in objects {
        assert_eq!(seen(&m, o), 1, "{o} got its finding");
    }
    // The same batch again (an agent resending after a lost answer): acknowledged, not applied twice.
    let again = s.exchange(batch("agent-s", 1, &objects)).await.expect("answered").expect("a response");
    assert_eq!((again.applied, again.duplicate), (0, true), "{again:?}");
    for o in objects {
        assert_eq!(seen(&m, o), 1, "{o} was not applied twice");
    }
    // The next batches, one by one, in order.
    for seq in 2..=5 {
        let r = s.exchange(batch("agent-s", seq, &objects[..1])).await.expect("ok").expect("resp");
        assert_eq!((r.applied, r.duplicate), (1, false), "batch {seq}: {r:?}");
    }
    assert_eq!(seen(&m, objects[0]), 5);
    let st = m.svc.ingest_streams();
    assert_eq!((st.open, st.opened, st.refused), (1, 1, 0), "{st:?}");
    assert_eq!(m.svc.heartbeat_streams().opened, 0, "counted apart from heartbeat streams");
    // The agent closes its side: the master ends the stream and gives its slot back.
    let common::Open { tx, mut rx } = s;
    drop(tx);
    let end = tokio::time::timeout(common::STREAM_BOUND, rx.message()).await.expect("ends");
    assert!(matches!(end, Ok(None)), "a closed request side ends the stream cleanly: {end:?}");
    wait_streams(&m, |s| s.open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_one_agent_and_a_bad_batch_changes_nothing() {
    let m = start(Limits::default()).await;
    // A bad first batch (a severity that does not exist, after a good finding): refused whole, the stream
    // ends, nothing applied.
    let mut s = open(&m).await.expect("open");
    let mut bad = batch("agent-x", 1, &["disk/host-x/sda"]);
    bad.findings.push(finding("disk/host-x/sdb", "SOMEWHAT-BAD"));
    let e = s.exchange(bad).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("finding 1"), "names the finding: {e:?}");
    assert_eq!(s.next().await.expect("ended"), None, "nothing after the error");
    assert_eq!(seen(&m, "disk/host-x/sda"), 0, "the refused batch changed nothing");

    // A message over the gRPC size limit: tonic's error, the end, and nothing changed.
    let mut s = open(&m).await.expect("open");
    let mut huge = batch("agent-h", 1, &["disk/host-h/sda"]);
    huge.findings[0].evidence = "e".repeat(master::grpc::MAX_GRPC_MESSAGE + 1);
    let e = s.exchange(huge).await.expect_err("too big");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert_eq!(s.next().await.expect("ended"), None, "nothing after the error");
    assert_eq!(seen(&m, "disk/host-h/sda"), 0);

    // A batch naming no agent (not deduplicated, so not safe to resend as a call after a lost answer):
    // refused on a stream, nothing applied; the same batch as a call is applied.
    let mut s = open(&m).await.expect("open");
    let e = s.exchange(batch("", 1, &["disk/host-e/sda"])).await.expect_err("no agent");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("names no agent"), "{e:?}");
    assert_eq!(s.next().await.expect("ended"), None);
    assert_eq!(seen(&m, "disk/host-e/sda"), 0);
    let mut c =
        api::master_client::MasterClient::connect(format!("http://{}", m.grpc)).await.expect("connect");
    c.ingest(batch("", 1, &["disk/host-e/sda"])).await.expect("a call takes it");
    assert_eq!(seen(&m, "disk/host-e/sda"), 1);

    // Another agent on an agent's stream: refused, and that stream ends; the first agent's batch stays.
    let mut s = open(&m).await.expect("open");
    s.exchange(batch("agent-1", 1, &["disk/host-1/sda"])).await.expect("ok").expect("resp");
    let e = s.exchange(batch("agent-2", 1, &["disk/host-2/sda"])).await.expect_err("another agent");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("one agent"), "{e:?}");
    assert_eq!(s.next().await.expect("ended"), None);
    assert_eq!((seen(&m, "disk/host-1/sda"), seen(&m, "disk/host-2/sda")), (1, 0));
    wait_streams(&m, |s| s.open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_the_agent_sends_calls() {
    let m = start(Limits { max_streams: 1, ..Limits::default() }).await;
    let mut a = open(&m).await.expect("first");
    a.exchange(batch("agent-a", 1, &["disk/host-a/sda"])).await.expect("ok").expect("resp");
    let e = open(&m).await.err().expect("a second stream is refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_ingest_streams"), "{e:?}");
    let st = m.svc.ingest_streams();
    assert_eq!((st.open, st.opened, st.refused), (1, 1, 1), "{st:?}");

    // The agent's client takes the refusal: each batch goes as a call (applied once), and it does not ask
    // again for a while.
    let mut client = Client::new(vec![m.grpc.clone()]);
    let mut ingests = IngestStream::default();
    for seq in 1..=3 {
        let r = ingests.send(&mut client, batch("agent-b", seq, &["disk/host-b/sda"])).await.expect("a call");
        assert_eq!((r.applied, r.duplicate), (1, false));
    }
    assert_eq!(ingests.stats(), ClientStats { opened: 0, streamed: 0, called: 3, refused: 1 });
    assert_eq!(seen(&m, "disk/host-b/sda"), 3);
    assert_eq!(m.svc.ingest_streams().refused, 2, "asked once, not at every batch");
    drop(a);
    wait_streams(&m, |s| s.open == 0).await;

    // Limit 0: no ingest streams at all; heartbeat streams are not affected by it.
    let m = start(Limits { max_streams: 0, ..Limits::default() }).await;
    let e = open(&m).await.err().expect("refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut client = Client::new(vec![m.grpc.clone()]);
    let mut ingests = IngestStream::default();
    ingests.send(&mut client, batch("agent-z", 1, &["disk/host-z/sda"])).await.expect("a call");
    assert_eq!(ingests.stats().called, 1);
    assert_eq!(seen(&m, "disk/host-z/sda"), 1);
    assert!(m.svc.open_heartbeat_stream().is_ok(), "heartbeat streams have their own limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_ends_cleanly_and_the_agent_opens_another() {
    let idle = Duration::from_millis(300);
    let m = start(Limits { idle, ..Limits::default() }).await;
    let mut s = open(&m).await.expect("open");
    s.exchange(batch("agent-i", 1, &["disk/host-i/sda"])).await.expect("ok").expect("resp");
    let t = Instant::now();
    // No batch follows: the master ends the stream once `idle` passed without one, with OK (an agent with
    // nothing to report is not a fault).
    assert_eq!(s.next().await.expect("a clean end"), None);
    // (Measured from the answer's arrival, a little after the master's wait began: 100 ms of slack.)
    assert!(t.elapsed() + Duration::from_millis(100) >= idle, "ended after {:?}", t.elapsed());
    wait_streams(&m, |s| s.open == 0).await;

    // The agent's client: its stream ended while idle, so the next batch opens a new one, never a call.
    let mut client = Client::new(vec![m.grpc.clone()]);
    let mut ingests = IngestStream::default();
    ingests.send(&mut client, batch("agent-j", 1, &["disk/host-j/sda"])).await.expect("batch");
    wait_streams(&m, |s| s.open == 1).await;
    wait_streams(&m, |s| s.open == 0).await;
    for seq in 2..=3 {
        let r = ingests.send(&mut client, batch("agent-j", seq, &["disk/host-j/sda"])).await.expect("batch");
        assert_eq!((r.applied, r.duplicate), (1, false));
    }
    let st = ingests.stats();
    assert_eq!((st.streamed, st.called, st.opened), (3, 0, 2), "{st:?}");
    assert_eq!(seen(&m, "disk/host-j/sda"), 3, "each batch applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_age_ends_after_an_answer() {
    let age = Duration::from_millis(300);
    let m = start(Limits { max_age: age, ..Limits::default() }).await;
    let mut s = open(&m).await.expect("open");
    let opened = Instant::now();
    s.exchange(batch("agent-g", 1, &["disk/host-g/sda"])).await.expect("ok").expect("resp");
    // Past its age (measured from after the open returned, so surely past it on the master), the next batch
    // is still applied and answered, then the stream ends cleanly.
    tokio::time::sleep(age.saturating_sub(opened.elapsed()) + Duration::from_millis(50)).await;
    let r = s.exchange(batch("agent-g", 2, &["disk/host-g/sda"])).await.expect("ok").expect("answered");
    assert_eq!(r.applied, 1);
    assert_eq!(s.next().await.expect("clean end"), None, "the stream ends with OK after that answer");
    assert_eq!(seen(&m, "disk/host-g/sda"), 2);
    wait_streams(&m, |s| s.open == 0).await;
}
