//! Heartbeat streams (`HeartbeatStream`) on a real single-node master served over gRPC on a loopback port:
//! each beat on a stream is answered as the unary call answers it (liveness, assignment only when its hash
//! changed); a stream carries one agent; a bad beat is refused and changes nothing; the limit of open
//! streams refuses one more (RESOURCE_EXHAUSTED) until one closes, and the agent's client then beats with
//! calls; an idle stream is closed (UNAVAILABLE); a stream past its age ends cleanly after answering, and
//! the agent's client opens a new one for the same beat.

mod common;

use std::time::{Duration, Instant};

use common::Master;
use master::api::heartbeats::{HEARTBEAT_STREAM_MAX_AGE, MAX_HEARTBEAT_STREAMS, StreamStats};
use proto::api;
use proto::client::{BeatStream, Client, StreamStats as ClientStats};
use tonic::Code;

/// Bound on anything that should happen promptly (a leader elected, a stream's slot given back).
const BOUND: Duration = Duration::from_secs(20);

struct Limits {
    max_streams: usize,
    idle: Duration,
    max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: MAX_HEARTBEAT_STREAMS,
            idle: Duration::from_secs(60),
            max_age: HEARTBEAT_STREAM_MAX_AGE,
        }
    }
}

async fn start(l: Limits) -> Master {
    let m = common::start(|c| {
        c.agent_silent_after = l.idle;
        c.max_heartbeat_streams = l.max_streams;
        c.heartbeat_stream_max_age = l.max_age;
    })
    .await;
    // The leader seeds the checker catalog on its own: wait for it, so every beat sees one assignment.
    let deadline = Instant::now() + BOUND;
    while master::store::Reader::new(&m.db).expect("reader").catalog("kernel-log").expect("read").is_none() {
        assert!(Instant::now() < deadline, "the catalog was never seeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m
}

fn beat(agent: &str, host: &str, held: &str) -> api::HeartbeatRequest {
    api::HeartbeatRequest {
        agent: agent.into(),
        host: host.into(),
        version: "1.2.3".into(),
        started_ms: 1_700_000_000_000,
        assignment_hash: held.into(),
        ..Default::default()
    }
}

async fn grpc(m: &Master) -> api::master_client::MasterClient<tonic::transport::Channel> {
    api::master_client::MasterClient::connect(format!("http://{}", m.grpc)).await.expect("connect")
}

type Open = common::Open<api::HeartbeatRequest, api::HeartbeatResponse>;

async fn open(m: &Master) -> Result<Open, tonic::Status> {
    let mut c = grpc(m).await;
    Open::with(|rx| async move { c.heartbeat_stream(rx).await }).await
}

async fn wait_streams(m: &Master, want: impl Fn(StreamStats) -> bool) -> StreamStats {
    common::wait_streams(|| m.svc.heartbeat_streams(), want).await
}

fn alive(m: &Master, agent: &str) -> bool {
    m.svc.agents().expect("agents").iter().any(|a| a.agent == agent && a.alive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_beat_on_a_stream_is_answered_as_the_call_answers_it() {
    let m = start(Limits::default()).await;
    // The call, for the reference: a first beat (no assignment held) carries the assignment.
    let called = grpc(&m).await.heartbeat(beat("agent-c", "host-c", "")).await.expect("call").into_inner();
    assert!(called.assignment_included, "a first beat gets the assignment");

    let mut s = open(&m).await.expect("open");
    let first = s.exchange(beat("agent-s", "host-s", "")).await.expect("answered").expect("a response");
    assert!(alive(&m, "agent-s"), "a streamed beat makes its agent alive");
    assert!(first.assignment_included, "the stream's first beat gets the assignment too");
    assert_eq!(first.assignment_hash, called.assignment_hash, "the same assignment as the call's");
    assert!(first.revision >= called.revision);
    assert!(first.master_time_ms > 0);
    // Holding it, the next beats carry none: the stream answers them one by one, in order.
    for _ in 0..5 {
        let r =
            s.exchange(beat("agent-s", "host-s", &first.assignment_hash)).await.expect("ok").expect("resp");
        assert!(!r.assignment_included, "a held assignment is not sent again");
        assert_eq!(r.assignment_hash, first.assignment_hash);
    }
    let st = m.svc.heartbeat_streams();
    assert_eq!((st.open, st.opened, st.refused), (1, 1, 0), "{st:?}");
    // The agent closes its side: the master ends the stream and gives its slot back.
    let Open { tx, mut rx } = s;
    drop(tx);
    let end = tokio::time::timeout(BOUND, rx.message()).await.expect("ends");
    assert!(matches!(end, Ok(None)), "a closed request side ends the stream cleanly: {end:?}");
    wait_streams(&m, |s| s.open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_one_agent_and_a_bad_beat_changes_nothing() {
    let m = start(Limits::default()).await;
    // A bad first beat (a host name a host cannot have): refused, the stream ends, nobody is alive.
    let mut s = open(&m).await.expect("open");
    let e = s.exchange(beat("agent-x", "bad host!", "")).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(s.next().await.expect("ended"), None, "nothing after the error");
    assert!(m.svc.agents().expect("agents").is_empty(), "the refused beat changed nothing");

    // A message over the gRPC size limit: tonic's error, the end, and nothing changed.
    let mut s = open(&m).await.expect("open");
    let mut huge = beat("agent-h", "host-h", "");
    huge.version = "v".repeat(master::grpc::MAX_GRPC_MESSAGE + 1);
    let e = s.exchange(huge).await.expect_err("too big");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert_eq!(s.next().await.expect("ended"), None, "nothing after the error");
    assert!(m.svc.agents().expect("agents").is_empty(), "the refused message changed nothing");

    // Another agent on an agent's stream: refused, and that stream ends; the first agent stays alive.
    let mut s = open(&m).await.expect("open");
    s.exchange(beat("agent-1", "host-1", "")).await.expect("ok").expect("resp");
    let e = s.exchange(beat("agent-2", "host-2", "")).await.expect_err("another agent");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("one agent"), "{e:?}");
    assert_eq!(s.next().await.expect("ended"), None);
    assert!(alive(&m, "agent-1"));
    assert!(!alive(&m, "agent-2"), "the refused beat made nobody alive");
    // The same agent moved to another host is refused too (a stream is one agent on one host).
    let mut s = open(&m).await.expect("open");
    s.exchange(beat("agent-3", "host-3", "")).await.expect("ok").expect("resp");
    let e = s.exchange(beat("agent-3", "host-4", "")).await.expect_err("another host");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    wait_streams(&m, |s| s.open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_the_agent_beats_with_calls() {
    let m = start(Limits { max_streams: 2, ..Limits::default() }).await;
    let mut a = open(&m).await.expect("first");
    let mut b = open(&m).await.expect("second");
    a.exchange(beat("agent-a", "host-a", "")).await.expect("ok").expect("resp");
    b.exchange(beat("agent-b", "host-b", "")).await.expect("ok").expect("resp");
    let e = open(&m).await.err().expect("a third stream is refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_heartbeat_streams"), "{e:?}");
    let st = m.svc.heartbeat_streams();
    assert_eq!((st.open, st.opened, st.refused), (2, 2, 1), "{st:?}");

    // The agent's client takes the refusal: it beats with a call (answered), and does not ask again
    // for a while.
    let mut client = Client::new(vec![m.grpc.clone()]);
    let mut beats = BeatStream::default();
    for _ in 0..3 {
        beats.beat(&mut client, beat("agent-c", "host-c", "")).await.expect("answered by a call");
    }
    assert_eq!(beats.stats(), ClientStats { opened: 0, streamed: 0, called: 3, refused: 1 });
    assert!(alive(&m, "agent-c"));
    assert_eq!(m.svc.heartbeat_streams().refused, 2, "asked once, not at every beat");

    // One stream closes: its slot comes back and a new stream opens.
    drop(a);
    wait_streams(&m, |s| s.open == 1).await;
    let mut c = open(&m).await.expect("room again");
    c.exchange(beat("agent-c", "host-c", "")).await.expect("ok").expect("resp");
    let st = m.svc.heartbeat_streams();
    assert_eq!((st.open, st.opened, st.refused), (2, 3, 2), "{st:?}");
    drop((b, c));
    wait_streams(&m, |s| s.open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_streams_at_all_when_the_limit_is_zero() {
    let m = start(Limits { max_streams: 0, ..Limits::default() }).await;
    let e = open(&m).await.err().expect("refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut client = Client::new(vec![m.grpc.clone()]);
    let mut beats = BeatStream::default();
    beats.beat(&mut client, beat("agent-z", "host-z", "")).await.expect("a call");
    assert_eq!(beats.stats().called, 1);
    assert!(alive(&m, "agent-z"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_closed() {
    let idle = Duration::from_millis(300);
    let m = start(Limits { idle, ..Limits::default() }).await;
    let mut s = open(&m).await.expect("open");
    s.exchange(beat("agent-i", "host-i", "")).await.expect("ok").expect("resp");
    let t = Instant::now();
    // No beat follows: the master closes the stream once `idle` passed without one.
    let e = s.next().await.expect_err("closed");
    // (Measured from the answer's arrival, a little after the master's wait began: 100 ms of slack.)
    assert!(
        t.elapsed() + Duration::from_millis(100) >= idle,
        "closed after {:?}, before the idle limit",
        t.elapsed()
    );
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("no heartbeat on this stream"), "{e:?}");
    wait_streams(&m, |s| s.open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_age_ends_after_an_answer_and_the_agent_opens_another() {
    let age = Duration::from_millis(300);
    let m = start(Limits { max_age: age, ..Limits::default() }).await;
    let mut s = open(&m).await.expect("open");
    let opened = Instant::now();
    s.exchange(beat("agent-g", "host-g", "")).await.expect("ok").expect("resp");
    // Past its age (measured from after the open returned, so surely past it on the master), the next beat
    // is still answered, then the stream ends cleanly.
    tokio::time::sleep(age.saturating_sub(opened.elapsed()) + Duration::from_millis(50)).await;
    s.exchange(beat("agent-g", "host-g", "")).await.expect("ok").expect("answered past the age");
    assert_eq!(s.next().await.expect("clean end"), None, "the stream ends with OK after that answer");
    wait_streams(&m, |s| s.open == 0).await;

    // The agent's client: a stream ended by age is replaced for the same beat, never a call.
    let mut client = Client::new(vec![m.grpc.clone()]);
    let mut beats = BeatStream::default();
    beats.beat(&mut client, beat("agent-g", "host-g", "")).await.expect("beat");
    // Measured from after the answer, so the master's stream (opened before it) is surely past its age.
    let t = Instant::now();
    tokio::time::sleep(age.saturating_sub(t.elapsed()) + Duration::from_millis(50)).await;
    for _ in 0..3 {
        beats.beat(&mut client, beat("agent-g", "host-g", "")).await.expect("beat");
    }
    let st = beats.stats();
    assert_eq!((st.streamed, st.called), (4, 0), "{st:?}");
    assert_eq!(st.opened, 2, "one new stream after the age: {st:?}");
}
