//! An agent's heartbeat stream (`proto::client::BeatStream`) across a leader's kill -9, against three real
//! `huatuo master` processes: the first beat, sent to a follower, is redirected as a call; later beats go
//! over one stream on the leader; when the leader dies the beat in flight falls back to a call that finds
//! the new leader, and the next beats open a stream there. No beat is lost in the switch (each is answered),
//! and the new leader counts its streams on /metrics.
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::client::{BeatStream, Client};
use tests::huatuo_bin;

fn beat() -> api::HeartbeatRequest {
    api::HeartbeatRequest {
        agent: "stream-agent".into(),
        host: "stream-host".into(),
        version: "1.0.0".into(),
        started_ms: tests::now_ms(),
        ..Default::default()
    }
}

/// The value of `name` on a member's /metrics.
fn metric(http: &str, name: &str) -> Option<u64> {
    tests::metric(&tests::http_get(http, "/metrics")?, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_move_from_a_dead_leaders_stream_to_the_new_leaders() {
    let mut c = LocalCluster::start_with_config(&huatuo_bin(), 3, "tick_ms = 50\n").expect("start");
    let leader = c.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("no leader: {}", c.log_tail(1)));
    // Addresses with a follower first: the first beat is redirected.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut addrs = vec![c.nodes[&follower].grpc.clone()];
    addrs.extend((1..=3).filter(|id| *id != follower).map(|id| c.nodes[&id].grpc.clone()));
    let mut client = Client::new(addrs);
    let mut beats = BeatStream::default();

    beats.beat(&mut client, beat()).await.expect("first beat");
    let s = beats.stats();
    assert_eq!(
        (s.called, s.streamed),
        (1, 0),
        "a follower refuses the stream; the call is redirected: {s:?}"
    );
    for _ in 0..5 {
        beats.beat(&mut client, beat()).await.expect("beat");
    }
    let s = beats.stats();
    assert_eq!((s.opened, s.streamed, s.called), (1, 5, 1), "then one stream on the leader: {s:?}");
    let http = c.nodes[&leader].http.clone();
    assert_eq!(metric(&http, "huatuo_master_heartbeat_streams"), Some(1), "the leader counts it");

    c.kill9(leader);
    // Every beat is answered: the first by a call once a new leader is elected (the client's retries wait
    // out the election), the rest over a new stream there.
    let mut answered = 0;
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while let Err(e) = beats.beat(&mut client, beat()).await {
        assert!(std::time::Instant::now() < deadline, "no beat answered after the kill: {e}");
    }
    answered += 1;
    for _ in 0..5 {
        beats.beat(&mut client, beat()).await.expect("beat after the failover");
        answered += 1;
    }
    let s = beats.stats();
    assert!(s.called >= 2, "the beat in flight when the leader died went as a call: {s:?}");
    assert_eq!(s.opened, 2, "one new stream on the new leader: {s:?}");
    assert!(s.streamed >= 5 + 4, "beats after the switch went over it ({answered} answered): {s:?}");
    let new_leader = c.wait_leader(READY_TIMEOUT).await.expect("new leader");
    assert_ne!(new_leader, leader);
    let http = c.nodes[&new_leader].http.clone();
    assert_eq!(metric(&http, "huatuo_master_heartbeat_streams"), Some(1), "{}", c.log_tail(new_leader));
    assert_eq!(metric(&http, "huatuo_master_heartbeat_streams_opened_total"), Some(1));
}
