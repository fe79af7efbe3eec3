//! In-process tests of the master's API layer (`master::api::Service`) on a single-node raft group:
//! request validation and limits, heartbeats and agent liveness, object commands, and watch semantics
//! (gap-free delivery, resume, COMPACTED for revisions older than the change log).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use master::api::{HeartbeatInfo, IngestBatch, MAX_HEARTBEAT_CHECKERS, Service, ServiceConfig};
use master::fsm::MasterFsm;
use master::model::{MAX_FINDINGS_PER_BATCH, Registration};
use master::raft::{RaftConfig, RaftNode, Role};
use master::sm_seam::{Input, Policy};
use master::store::Filter;
use proto::error::Code;
use state_machines::{AckKind, Finding, OperatorCommand, Severity, State};
use tests::wait_until;

/// Change-log window of the node under test: small, so compaction is reachable in a test.
const RETAIN: u64 = 50;

struct Node {
    _dir: tempfile::TempDir,
    raft: RaftNode,
    svc: Arc<Service>,
}

async fn start_node(agent_silent_after: Duration) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let cfg = RaftConfig {
        id: 1,
        peers: BTreeMap::from([(1, peer.to_string())]),
        data_dir: dir.path().to_path_buf(),
        tick: Duration::from_millis(20),
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_every: 0,
        join: false,
    };
    let (fsm, revision) = MasterFsm::new(Policy::default());
    let fsm = fsm.with_changelog_retain(RETAIN);
    let stats = fsm.stats();
    let (raft, db) = RaftNode::start(cfg, fsm).await.expect("start raft");
    let svc = Service::start(
        raft.clone(),
        db,
        revision,
        stats,
        ServiceConfig {
            grpc_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            agent_silent_after,
            policy: Policy::default(),
            max_watches: master::api::watch::MAX_WATCHES,
            knows_command_version: master::model::COMMAND_VERSION,
            auto_upgrade: false,
        },
    );
    assert!(
        wait_until(Duration::from_secs(10), || async { raft.status().role == Role::Leader }).await,
        "single node never became leader: {:?}",
        raft.status()
    );
    Node { _dir: dir, raft, svc }
}

fn finding(object: &str, severity: Severity) -> Finding {
    Finding {
        object: object.parse().expect("id"),
        severity,
        checker: "smart".into(),
        version: "1.0.0".into(),
        rule: "r".into(),
        evidence: "e".into(),
        readings: BTreeMap::new(),
        time_ms: 1,
        shadow: false,
    }
}

async fn ingest(
    svc: &Service,
    agent: &str,
    seq: u64,
    findings: Vec<Finding>,
) -> Result<u64, proto::error::ApiError> {
    svc.ingest(IngestBatch { agent: agent.into(), seq, epoch: 0, findings }).await.map(|r| r.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_limits_and_commands() {
    let n = start_node(Duration::from_secs(60)).await;
    let svc = &n.svc;
    // Limits: empty and oversized batches, agent batches without a sequence number.
    let e = ingest(svc, "", 0, vec![]).await.expect_err("empty");
    assert_eq!(e.code, Code::InvalidArgument);
    let big =
        (0..=MAX_FINDINGS_PER_BATCH).map(|i| finding(&format!("disk/h1/d{i}"), Severity::Good)).collect();
    let e = ingest(svc, "", 0, big).await.expect_err("too many");
    assert!(e.message.contains("limit"), "{e}");
    let e = ingest(svc, "agent-1", 0, vec![finding("disk/h1/sda", Severity::Good)]).await.expect_err("seq 0");
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(svc.current_revision(), 0, "rejected requests change nothing");

    // Idempotent agent batches.
    let r1 = ingest(svc, "agent-1", 1, vec![finding("disk/h1/sda", Severity::Fatal)]).await.expect("ingest");
    let again = svc
        .ingest(IngestBatch {
            agent: "agent-1".into(),
            seq: 1,
            epoch: 0,
            findings: vec![finding("disk/h1/sda", Severity::Fatal)],
        })
        .await
        .expect("resend");
    assert!(again.duplicate);
    assert_eq!(again.revision, r1);

    // Object commands: unknown object, a refused ack, then the right ack moves the disk to REPAIR.
    let unknown = svc
        .object_command(
            "disk/h1/sdz".parse().expect("id"),
            Input::Ack { role: "storage".into(), ack: AckKind::DataEvacuated },
        )
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code, Code::NotFound);
    let wrong = svc
        .object_command(
            "disk/h1/sda".parse().expect("id"),
            Input::Ack { role: "scheduler".into(), ack: AckKind::Drained },
        )
        .await
        .expect_err("wrong ack");
    assert_eq!(wrong.code, Code::Conflict);
    let ok = svc
        .object_command(
            "disk/h1/sda".parse().expect("id"),
            Input::Ack { role: "storage".into(), ack: AckKind::DataEvacuated },
        )
        .await
        .expect("ack");
    assert_eq!(ok.state, "REPAIR");
    let illegal = svc
        .object_command(
            "disk/h1/sda".parse().expect("id"),
            Input::Operator {
                operator: "op".into(),
                command: OperatorCommand::Force { to: State::Good, reason: "x".into() },
            },
        )
        .await;
    assert!(illegal.is_err_and(|e| e.code == Code::Conflict));

    // Registration limits and host consistency.
    let reg = |id: &str| Registration {
        id: id.parse().expect("id"),
        attributes: BTreeMap::new(),
        labels: BTreeMap::new(),
    };
    let e =
        svc.register("agent-1".into(), "h1".into(), vec![reg("disk/h2/sda")]).await.expect_err("wrong host");
    assert_eq!(e.code, Code::InvalidArgument);
    let mut too_many_labels = reg("disk/h1/sdb");
    too_many_labels.labels = (0..100).map(|i| (format!("k{i}"), "v".to_string())).collect();
    assert!(svc.register("agent-1".into(), "h1".into(), vec![too_many_labels]).await.is_err());
    let r = svc
        .register("agent-1".into(), "h1".into(), vec![reg("disk/h1/sdb"), reg("nic/h1/eth0")])
        .await
        .expect("register");
    assert_eq!(r.created, 2);

    // Linearizable and stale reads agree on a single node; the filter works.
    let filter = Filter { kind: Some(state_machines::Kind::Disk), ..Filter::default() };
    let (lin, rev) = svc.list(&filter, 0, false).await.expect("list");
    let (stale, _) = svc.list(&filter, 0, true).await.expect("stale list");
    assert_eq!(lin.len(), 2);
    assert_eq!(lin, stale);
    assert_eq!(rev, svc.current_revision());
    let (rec, history, _) = svc.get(&"disk/h1/sda".parse().expect("id"), false).await.expect("get");
    assert_eq!(rec.state, State::Repair.as_str());
    assert_eq!(history.iter().filter(|h| h.what == "transition").count(), 2);
    n.raft.shutdown().await;
}

fn hb(started_ms: u64) -> HeartbeatInfo {
    HeartbeatInfo {
        version: "0.1.0".into(),
        started_ms,
        checkers: [("disk".to_string(), "1.0.0".to_string())].into_iter().collect(),
        outbox_entries: 7,
        outbox_dropped: 0,
        ..HeartbeatInfo::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_replicate_only_liveness_changes() {
    let n = start_node(Duration::from_secs(1)).await;
    let svc = &n.svc;
    assert!(
        svc.heartbeat(String::new(), "h1".into(), hb(1))
            .await
            .is_err_and(|e| e.code == Code::InvalidArgument)
    );
    assert!(
        svc.heartbeat("a1".into(), "bad host!".into(), hb(1))
            .await
            .is_err_and(|e| e.code == Code::InvalidArgument)
    );
    // Wait for the leader's own announcement so revisions below are only ours.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            svc.cluster_info().is_ok_and(|i| !i.leader_grpc.is_empty())
        })
        .await
    );
    let before = svc.current_revision();
    svc.heartbeat("a1".into(), "h1".into(), hb(1)).await.expect("heartbeat");
    let alive_rev = svc.current_revision();
    assert_eq!(alive_rev, before + 1, "coming alive is one replicated change");
    for _ in 0..5 {
        svc.heartbeat("a1".into(), "h1".into(), hb(1)).await.expect("heartbeat");
    }
    // A restarted agent (new start time) is counted, still without a replicated change.
    svc.heartbeat("a1".into(), "h1".into(), hb(2)).await.expect("heartbeat");
    assert_eq!(svc.current_revision(), alive_rev, "repeated heartbeats are not replicated");
    let agents = svc.agents().expect("agents");
    assert_eq!(agents.len(), 1);
    assert_eq!((agents[0].restarts, agents[0].info.started_ms, agents[0].info.outbox_entries), (1, 2, 7));
    assert_eq!(agents[0].info.checkers.get("disk").map(String::as_str), Some("1.0.0"));
    // Hostile heartbeats are refused and change nothing.
    let mut flood = hb(2);
    flood.checkers = (0..=MAX_HEARTBEAT_CHECKERS).map(|i| (format!("c{i}"), "1".into())).collect();
    assert!(
        svc.heartbeat("a1".into(), "h1".into(), flood).await.is_err_and(|e| e.code == Code::InvalidArgument)
    );
    let mut long = hb(3);
    long.version = "v".repeat(1000);
    assert!(
        svc.heartbeat("a1".into(), "h1".into(), long).await.is_err_and(|e| e.code == Code::InvalidArgument)
    );
    assert_eq!(svc.agents().expect("agents")[0].restarts, 1);
    assert_eq!(svc.cluster_info().expect("info").agents_alive, 1);
    // Silence past the limit: the leader marks the agent silent (one more change).
    assert!(
        wait_until(Duration::from_secs(10), || async {
            svc.cluster_info().is_ok_and(|i| i.agents_alive == 0)
        })
        .await,
        "silent agent never marked"
    );
    assert_eq!(svc.current_revision(), alive_rev + 1);
    n.raft.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_gap_free_resumes_and_reports_compaction() {
    let n = start_node(Duration::from_secs(60)).await;
    let svc = &n.svc;
    let mut rx = svc.watch(0, Filter::default()).expect("watch");
    let mut next_expected = None;
    for i in 0..20u64 {
        ingest(svc, "", 0, vec![finding(&format!("disk/h1/d{}", i % 3), Severity::Good)])
            .await
            .expect("ingest");
    }
    let end = svc.current_revision();
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < end {
        let (events, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        for e in events {
            if let Some(n) = next_expected {
                assert_eq!(e.revision, n, "gap or duplicate");
            }
            next_expected = Some(e.revision + 1);
            seen.push(e.revision);
        }
    }
    // Resume from the middle: exactly the tail.
    let mid = seen[seen.len() / 2];
    let mut rx2 = svc.watch(mid, Filter::default()).expect("watch");
    let (events, _) = rx2.recv().await.expect("open").expect("ok");
    assert_eq!(events.first().map(|e| e.revision), Some(mid));
    // Push the change log past its window: old revisions are COMPACTED, with the resync hint.
    for i in 0..RETAIN + 10 {
        ingest(svc, "", 0, vec![finding(&format!("disk/h2/d{}", i % 3), Severity::Good)])
            .await
            .expect("ingest");
    }
    let mut old = svc.watch(1, Filter::default()).expect("watch");
    let e = old.recv().await.expect("answer").expect_err("compacted");
    assert_eq!(e.code, Code::Compacted);
    assert!(e.message.contains("resync"), "{e}");
    // A filtered watch skips other hosts but reports progress past them.
    let from = svc.current_revision() + 1;
    let host = Filter { host: Some("h3".into()), ..Filter::default() };
    let mut only_h3 = svc.watch(from, host).expect("watch");
    ingest(svc, "", 0, vec![finding("disk/h2/d0", Severity::Good), finding("disk/h3/d0", Severity::Good)])
        .await
        .expect("ingest");
    let (events, progress) = only_h3.recv().await.expect("open").expect("ok");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].object, "disk/h3/d0");
    assert_eq!(progress, from + 1);
    n.raft.shutdown().await;
}
