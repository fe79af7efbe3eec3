//! A master failover during a rollout changes no assignment (issue 15): 3 real `huatuo master` processes
//! (fsync, loopback); the leader seeds the catalog; an external checker v1 is promoted and v2 rolled out to
//! 30% of 20 hosts; every host's assignment hash is recorded; the leader is killed with SIGKILL; the new
//! leader answers every host's heartbeat with the same hash and does not resend the assignment.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::collections::BTreeMap;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use tests::{huatuo_bin, wait_until};

/// Seeding follows the leader's first duty rounds; a new leader serves within a few election timeouts.
const SETTLE: Duration = Duration::from_secs(30);
const HOSTS: usize = 20;

fn push(version: &str, content: &[u8]) -> api::PushArtifactRequest {
    api::PushArtifactRequest {
        name: "probe".into(),
        version: version.into(),
        r#type: "external".into(),
        content: content.to_vec(),
        spec: Some(api::ArtifactSpec {
            interval_ms: 1000,
            timeout_ms: 500,
            kinds: vec!["disk".into()],
            ..Default::default()
        }),
        by: "ops".into(),
        ..Default::default()
    }
}

fn rollout(action: &str, version: &str, percent: f64) -> api::RolloutRequest {
    api::RolloutRequest {
        action: action.into(),
        name: "probe".into(),
        version: version.into(),
        percent,
        by: "ops".into(),
        reason: "failover test".into(),
        ..Default::default()
    }
}

fn heartbeat(host: &str, hash: &str) -> api::HeartbeatRequest {
    api::HeartbeatRequest {
        agent: format!("agent-{host}"),
        host: host.into(),
        version: "0.1.0".into(),
        started_ms: 1,
        assignment_hash: hash.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_during_a_rollout_changes_no_assignment() {
    let mut cluster = LocalCluster::start(&huatuo_bin(), 3).expect("start cluster");
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no leader; node 1 log:\n{}", cluster.log_tail(1)));
    let mut client = cluster.client();
    let seeded = wait_until(SETTLE, || {
        let mut c = cluster.client();
        async move {
            c.call(api::ListCatalogRequest { name: "kernel-log".into() }, |mut c, r| async move {
                c.list_catalog(r).await
            })
            .await
            .is_ok_and(|l| l.artifacts.iter().any(|a| a.r#type == "rules"))
        }
    })
    .await;
    assert!(seeded, "the leader never seeded the catalog:\n{}", cluster.log_tail(leader));
    for (v, bytes) in [("1", &b"#!/bin/sh\necho one\n"[..]), ("2", b"#!/bin/sh\necho two\n")] {
        client.call(push(v, bytes), |mut c, r| async move { c.push_artifact(r).await }).await.expect("push");
    }
    client
        .call(rollout("promote", "1", 0.0), |mut c, r| async move { c.rollout(r).await })
        .await
        .expect("v1");
    client.call(rollout("start", "2", 30.0), |mut c, r| async move { c.rollout(r).await }).await.expect("v2");
    let hosts: Vec<String> = (0..HOSTS).map(|i| format!("host-{i:02}")).collect();
    let mut before: BTreeMap<String, (String, Vec<(String, String)>)> = BTreeMap::new();
    for h in &hosts {
        let r = client
            .call(heartbeat(h, ""), |mut c, r| async move { c.heartbeat(r).await })
            .await
            .expect("heartbeat");
        assert!(r.assignment_included);
        let a = r.assignment.iter().map(|a| (a.name.clone(), a.version.clone())).collect();
        before.insert(h.clone(), (r.assignment_hash, a));
    }
    let on_v2 = before.values().filter(|(_, a)| a.contains(&("probe".to_string(), "2".to_string()))).count();
    assert!(on_v2 > 0 && on_v2 < HOSTS, "30% of {HOSTS} hosts: {on_v2}");

    cluster.kill9(leader);
    let new_leader = cluster.wait_leader(SETTLE).await;
    assert!(new_leader.is_some_and(|l| l != leader), "no new leader after killing {leader}: {new_leader:?}");
    for h in &hosts {
        let (hash, _) = &before[h];
        // The first heartbeats after the failover may meet "no leader yet": retried until the bound.
        let deadline = std::time::Instant::now() + SETTLE;
        let r = loop {
            let req = heartbeat(h, hash);
            match client.call(req, |mut c, r| async move { c.heartbeat(r).await }).await {
                Ok(r) => break r,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{h}: no heartbeat answer after the failover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(&r.assignment_hash, hash, "{h}: the assignment changed with the leader");
        assert!(!r.assignment_included && r.assignment.is_empty(), "{h}: resent an unchanged assignment");
    }
}
