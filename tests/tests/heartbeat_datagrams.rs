//! Heartbeat datagrams (`proto::datagram`, `master/src/datagrams.rs`) against three real `huatuo master`
//! processes: an agent's beats as UDP datagrams to the members' gRPC port numbers, redirected from a
//! follower to the leader, the first one waiting for its liveness change to commit; hostile datagrams
//! (changed bytes, another key, a replay, a stale seq, garbage) get no answer, change nothing and are
//! counted; after the leader's kill -9 the agent's next beat finds the new leader by datagrams alone.
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::net::UdpSocket;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::datagram::{self, BeatKey, Datagrams, Kind};
use tests::huatuo_bin;

fn beat(agent: &str) -> api::HeartbeatRequest {
    api::HeartbeatRequest {
        agent: agent.into(),
        host: format!("{agent}-host"),
        version: "1.0.0".into(),
        started_ms: tests::now_ms(),
        ..Default::default()
    }
}

/// The count of datagrams with `result` on a member's /metrics.
fn counted(http: &str, result: &str) -> u64 {
    let page = tests::http_get(http, "/metrics").unwrap_or_default();
    tests::metric(&page, &format!("huatuo_master_heartbeat_datagrams_total{{result=\"{result}\"}}"))
        .unwrap_or(0)
}

/// Whether the leader's heartbeat memory (`/api/v1/agents`) names `agent`.
fn known(http: &str, agent: &str) -> bool {
    tests::http_get(http, "/api/v1/agents").is_some_and(|b| b.contains(&format!("\"{agent}\"")))
}

/// Send `bytes` to `to` and wait `wait` for any answer.
fn answered(bytes: &[u8], to: &str, wait: Duration) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").expect("test setup");
    s.set_read_timeout(Some(wait)).expect("test setup");
    s.send_to(bytes, to).expect("test setup");
    s.recv_from(&mut [0u8; 9000]).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_go_by_datagram_hostile_ones_change_nothing_and_a_new_leader_is_found() {
    let mut c = LocalCluster::start_with_config(&huatuo_bin(), 3, "tick_ms = 50\n").expect("start");
    let leader = c.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("no leader: {}", c.log_tail(1)));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let addrs = proto::client::parse_addrs(&c.grpc_addrs());
    let lead_grpc = c.nodes[&leader].grpc.clone();
    let lead_http = c.nodes[&leader].http.clone();

    // 1. An agent new to the leader: its first datagram, sent to a follower, is redirected to the leader,
    // which refuses it (coming alive is replicated: a call's job, under the client certificate); the beat
    // goes as a call. Then its beats go by datagram.
    let mut d = Datagrams::new(BeatKey::open(), addrs.clone());
    let first = d.beat(Some(&c.nodes[&follower].grpc), &beat("dg-agent")).await;
    assert!(first.is_none(), "a new agent's beat by datagram");
    assert_eq!(counted(&c.nodes[&follower].http, "refused"), 1, "the follower answered NOT_LEADER");
    assert_eq!((counted(&lead_http, "refused"), counted(&lead_http, "call_first")), (1, 1));
    assert!(!known(&lead_http, "dg-agent"), "a refused datagram changed the memory");
    let mut client = proto::client::Client::new(addrs.clone());
    client.call(beat("dg-agent"), |mut c, r| async move { c.heartbeat(r).await }).await.expect("the call");
    for _ in 0..5 {
        let r = d.beat(None, &beat("dg-agent")).await.expect("a steady beat by datagram");
        assert!(r.revision > 0 && r.master_time_ms > 0, "{r:?}");
    }
    let s = d.stats();
    assert_eq!((s.answered, s.fell_back, s.unanswered), (5, 1, 0), "{s:?}");
    assert_eq!(counted(&lead_http, "answered"), 5);

    // 2. Hostile datagrams: no answer, nothing changed, each counted under its reason.
    let key = BeatKey::open();
    let seq = datagram::SeqClock::default().next();
    let mut sealed = Vec::new();
    datagram::seal(&key, Kind::Beat, seq, &beat("forged-agent"), &mut sealed).expect("test setup");
    let mut flipped = sealed.clone();
    flipped[30] ^= 0x20;
    let wait = Duration::from_millis(300);
    assert!(!answered(&flipped, &lead_grpc, wait), "a changed byte got an answer");
    let other = BeatKey::from_token(&proto::tls::Token::new("not-a-token-here"));
    let mut wrong_key = Vec::new();
    datagram::seal(&other, Kind::Beat, seq, &beat("forged-agent"), &mut wrong_key).expect("test setup");
    assert!(!answered(&wrong_key, &lead_grpc, wait), "another key got an answer");
    let mut stale = Vec::new();
    let old = seq - (datagram::MAX_SKEW_MS + 5_000) * 1000;
    datagram::seal(&key, Kind::Beat, old, &beat("forged-agent"), &mut stale).expect("test setup");
    assert!(!answered(&stale, &lead_grpc, wait), "a stale seq got an answer");
    assert!(!answered(b"GET / HTTP/1.1\r\n\r\n hello there, this is not a heartbeat", &lead_grpc, wait));
    assert!(!known(&lead_http, "forged-agent"), "a refused datagram changed the memory");
    // A replay of a datagram the leader took: the first copy is answered, the second is not.
    let mut first = Vec::new();
    let seq = datagram::SeqClock::default().next();
    datagram::seal(&key, Kind::Beat, seq, &beat("dg-agent"), &mut first).expect("test setup");
    assert!(answered(&first, &lead_grpc, Duration::from_secs(5)), "a fresh datagram was not answered");
    assert!(!answered(&first, &lead_grpc, wait), "a replayed datagram got an answer");
    // An authenticated beat the master refuses (a probe address that is not one) is answered with the
    // refusal: its agent sends that beat as a call and gets the same error.
    let mut junk = Vec::new();
    let seq = datagram::SeqClock::default().next();
    let bad = api::HeartbeatRequest { probe_addr: "not an address".into(), ..beat("dg-agent") };
    datagram::seal(&key, Kind::Beat, seq, &bad, &mut junk).expect("test setup");
    let to = UdpSocket::bind("127.0.0.1:0").expect("test setup");
    to.set_read_timeout(Some(Duration::from_secs(5))).expect("test setup");
    to.send_to(&junk, &lead_grpc).expect("test setup");
    let mut buf = [0u8; 9000];
    let (n, _) = to.recv_from(&mut buf).expect("a refusal");
    let (answered_seq, reply) = datagram::open_reply(&buf[..n], &key).expect("test setup");
    assert_eq!(
        (answered_seq, reply.code.as_str(), reply.response.is_none()),
        (seq, "INVALID_ARGUMENT", true)
    );
    let got = ["bad_seal", "unknown_key", "stale", "malformed", "replayed", "call_first"]
        .map(|r| counted(&lead_http, r));
    assert_eq!(got, [1, 1, 1, 1, 1, 1], "bad_seal, unknown_key, stale, malformed, replayed, call_first");
    let page = tests::http_get(&lead_http, "/metrics").unwrap_or_default();
    assert_eq!(
        tests::metric(&page, "huatuo_master_heartbeat_datagrams_waiting"),
        Some(0),
        "no beat left waiting"
    );

    // 3. The leader dies: the next beat's datagram to it goes unanswered, the other members are tried and
    // the new leader answers; no call.
    c.kill9(leader);
    let new_leader = c.wait_leader(READY_TIMEOUT).await.expect("a new leader");
    let mut after = None;
    for _ in 0..20 {
        if let Some(r) = d.beat(None, &beat("dg-agent")).await {
            after = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(after.is_some(), "no beat answered by datagram after the kill: {:?}", d.stats());
    assert!(d.stats().unanswered >= 1, "the dead leader's datagram went unanswered: {:?}", d.stats());
    assert!(known(&c.nodes[&new_leader].http, "dg-agent"));
    // Not turned off by one silent member: the next beat goes by datagram at once.
    d.beat(None, &beat("dg-agent")).await.expect("the next beat by datagram");
}
