//! An agent's heartbeat stream (`proto::client::BeatStream`) across a leader's kill -9, against three real
//! `huatuo master` processes: the first beat, sent to a follower, is redirected as a call; later beats go
//! over one stream on the leader; when the leader dies the beat in flight falls back to a call that finds
//! the new leader, and the next beats open a stream there. No beat is lost in the switch (each is answered),
//! and the new leader counts its streams on /metrics. The same for an agent's ingest stream
//! (`proto::client::IngestStream`): every batch is answered across the kill, and each is applied once
//! (the batch in flight, resent as a call, is applied or answered `duplicate`, never both).
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::client::{BeatStream, Client, IngestStream};
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

/// Three real masters (50 ms ticks), the leader's id, and a client whose addresses list a follower first:
/// its first request is redirected.
async fn cluster_and_client() -> (LocalCluster, u64, Client) {
    let c = LocalCluster::start_with_config(&huatuo_bin(), 3, "tick_ms = 50\n").expect("start");
    let leader = c.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("no leader: {}", c.log_tail(1)));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut addrs = vec![c.nodes[&follower].grpc.clone()];
    addrs.extend((1..=3).filter(|id| *id != follower).map(|id| c.nodes[&id].grpc.clone()));
    (c, leader, Client::new(addrs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_move_from_a_dead_leaders_stream_to_the_new_leaders() {
    let (mut c, leader, mut client) = cluster_and_client().await;
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

/// Batch `seq` of the stream agent: one WARNING finding about its disk, at `time_ms` (faults are all
/// archived, so the archive shows how many times each batch was applied).
fn batch(seq: u64, time_ms: u64) -> api::IngestRequest {
    api::IngestRequest {
        agent: "stream-agent".into(),
        seq,
        findings: vec![api::Finding {
            object: "disk/stream-host/sda".into(),
            severity: "WARNING".into(),
            checker: "smart".into(),
            version: "1.0.0".into(),
            rule: "smart.reallocated".into(),
            evidence: format!("batch {seq}"),
            readings: Default::default(),
            time_ms,
            shadow: false,
        }],
        epoch: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_move_from_a_dead_leaders_stream_to_the_new_leaders_applied_once() {
    let (mut c, leader, mut client) = cluster_and_client().await;
    let mut ingests = IngestStream::default();
    // (applied, answered duplicate) over every batch.
    let (mut applied, mut duplicates) = (0u64, 0u64);
    let mut count = |r: api::IngestResponse| {
        applied += u64::from(r.applied);
        duplicates += u64::from(r.duplicate);
    };
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        batch(seq, tests::now_ms())
    };
    count(ingests.send(&mut client, next()).await.expect("first batch"));
    for _ in 0..5 {
        count(ingests.send(&mut client, next()).await.expect("batch"));
    }
    let s = ingests.stats();
    assert_eq!((s.opened, s.streamed, s.called), (1, 5, 1), "a redirected call, then one stream: {s:?}");
    let http = c.nodes[&leader].http.clone();
    assert_eq!(metric(&http, "huatuo_master_ingest_streams"), Some(1), "the leader counts it");

    c.kill9(leader);
    // The batch in flight is resent (the client's retries wait out the election) until answered; an
    // error leaves it pinned, as an agent's outbox does, so the same seq goes again.
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let pinned = next();
    loop {
        match ingests.send(&mut client, pinned.clone()).await {
            Ok(r) => {
                count(r);
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "no batch answered after the kill: {e}"),
        }
    }
    let mut last = pinned;
    for _ in 0..5 {
        last = next();
        count(ingests.send(&mut client, last.clone()).await.expect("batch after the failover"));
    }
    let s = ingests.stats();
    assert!(s.called >= 2, "the batch in flight when the leader died went as a call: {s:?}");
    assert_eq!(s.opened, 2, "one new stream on the new leader: {s:?}");
    assert_eq!(applied + duplicates, 12, "every batch answered once it was sent ({applied} applied)");
    let new_leader = c.wait_leader(READY_TIMEOUT).await.expect("new leader");
    let http = c.nodes[&new_leader].http.clone();
    assert_eq!(metric(&http, "huatuo_master_ingest_streams"), Some(1), "{}", c.log_tail(new_leader));
    // Applied once each: the disk's record counts one finding per batch, whatever was resent.
    let got = client
        .call(
            api::GetObjectRequest { id: "disk/stream-host/sda".into(), stale: false },
            |mut g, r| async move { g.get_object(r).await },
        )
        .await
        .expect("get");
    let o = got.object.expect("the disk exists");
    let ev = o.evidence.iter().find(|f| f.checker == "smart").expect("smart evidence");
    assert_eq!(ev.time_ms, last.findings[0].time_ms, "the last batch is the latest evidence");
    // Applied once each: the new leader's archive (every fault finding it applied, as a follower before
    // the kill) holds each batch's finding exactly once.
    let body = |http: &str| tests::http_get(http, "/api/v1/archive/findings?since_ms=0").unwrap_or_default();
    let times = |page: &str, n: u64| page.matches(&format!("\"batch {n}\"")).count();
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let mut page = body(&http);
    while (1..=12).any(|n| times(&page, n) == 0) {
        assert!(std::time::Instant::now() < deadline, "not every batch reached the archive: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        page = body(&http);
    }
    for n in 1..=12 {
        assert_eq!(times(&page, n), 1, "batch {n} applied once: {page}");
    }
}
