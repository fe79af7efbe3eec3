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
    let cfg = RaftConfig::single_member(dir.path(), peer.to_string());
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
            agent_silent_after,
            auto_upgrade: false,
            ..ServiceConfig::new("127.0.0.1:1", "127.0.0.1:2")
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
    let lin = svc.list(&filter, 0, "", false).await.expect("list");
    let stale = svc.list(&filter, 0, "", true).await.expect("stale list");
    assert_eq!(lin.objects.len(), 2);
    assert_eq!(lin.objects, stale.objects);
    assert_eq!(lin.next_page_token, "", "everything fits in the default page");
    assert_eq!(lin.revision, svc.current_revision());
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
    assert!(svc.heartbeat("", "h1", hb(1)).await.is_err_and(|e| e.code == Code::InvalidArgument));
    assert!(svc.heartbeat("a1", "bad host!", hb(1)).await.is_err_and(|e| e.code == Code::InvalidArgument));
    // Wait for the leader's own announcement so revisions below are only ours.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            svc.cluster_info().is_ok_and(|i| i.leader_announced())
        })
        .await
    );
    let before = svc.current_revision();
    svc.heartbeat("a1", "h1", hb(1)).await.expect("heartbeat");
    let alive_rev = svc.current_revision();
    assert_eq!(alive_rev, before + 1, "coming alive is one replicated change");
    for _ in 0..5 {
        svc.heartbeat("a1", "h1", hb(1)).await.expect("heartbeat");
    }
    // A restarted agent (new start time) is counted, still without a replicated change.
    svc.heartbeat("a1", "h1", hb(2)).await.expect("heartbeat");
    assert_eq!(svc.current_revision(), alive_rev, "repeated heartbeats are not replicated");
    let agents = svc.agents().expect("agents");
    assert_eq!(agents.len(), 1);
    assert_eq!((agents[0].restarts, agents[0].info.started_ms, agents[0].info.outbox_entries), (1, 2, 7));
    assert_eq!(agents[0].info.checkers.get("disk").map(String::as_str), Some("1.0.0"));
    // Hostile heartbeats are refused and change nothing.
    let mut flood = hb(2);
    flood.checkers = (0..=MAX_HEARTBEAT_CHECKERS).map(|i| (format!("c{i}"), "1".into())).collect();
    assert!(svc.heartbeat("a1", "h1", flood).await.is_err_and(|e| e.code == Code::InvalidArgument));
    let mut long = hb(3);
    long.version = "v".repeat(1000);
    assert!(svc.heartbeat("a1", "h1", long).await.is_err_and(|e| e.code == Code::InvalidArgument));
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

/// Every page of a listing through the API layer: (ids, revisions answered, pages).
async fn follow_pages(
    svc: &Service,
    filter: &Filter,
    limit: usize,
    stale: bool,
) -> (Vec<String>, Vec<u64>, usize) {
    let (mut ids, mut revs, mut token, mut pages) = (Vec::new(), Vec::new(), String::new(), 0);
    loop {
        let page = svc.list(filter, limit, &token, stale).await.expect("page");
        pages += 1;
        revs.push(page.revision);
        ids.extend(page.objects.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            return (ids, revs, pages);
        }
        token = page.next_page_token;
        assert!(pages <= 100_000, "the listing never ended");
    }
}

/// Paginated listings (issue 17): 0 is the default page, more than the maximum is the maximum, a listing
/// of exactly one full page ends, every page answers the first page's revision while writes go on
/// between pages, and bad tokens are INVALID_ARGUMENT and change nothing. A token from the future (a
/// revision this node never reaches) waits at most PAGE_CATCH_UP, then UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_with_limits_and_tokens() {
    use master::api::pages::{Listing, PAGE_CATCH_UP, PageToken, filter_digest};
    use master::api::validate::{DEFAULT_PAGE, MAX_PAGE};
    let n = start_node(Duration::from_secs(3600)).await;
    let svc = &n.svc;
    // MAX_PAGE + 1 disks on 11 hosts, registered in calls of at most MAX_OBJECTS_PER_REGISTER.
    let total = MAX_PAGE + 1;
    let mut all: Vec<String> = (0..total).map(|i| format!("disk/h{:02}/d{i:05}", i % 11)).collect();
    all.sort();
    for host in 0..11 {
        let mine: Vec<&String> =
            all.iter().filter(|id| id.starts_with(&format!("disk/h{host:02}/"))).collect();
        for chunk in mine.chunks(master::model::MAX_OBJECTS_PER_REGISTER) {
            let regs = chunk
                .iter()
                .map(|id| Registration {
                    id: id.parse().expect("id"),
                    attributes: BTreeMap::new(),
                    labels: BTreeMap::new(),
                })
                .collect();
            svc.register(format!("agent-{host}"), format!("h{host:02}"), regs).await.expect("register");
        }
    }
    let every = Filter::default();
    let first = svc.list(&every, 0, "", false).await.expect("default page");
    assert_eq!(first.objects.len(), DEFAULT_PAGE, "0 is the default page");
    assert!(!first.next_page_token.is_empty(), "a truncated page always carries a token");
    let capped = svc.list(&every, MAX_PAGE * 10, "", false).await.expect("capped page");
    assert_eq!(capped.objects.len(), MAX_PAGE, "more than the maximum is served as the maximum");
    assert!(!capped.next_page_token.is_empty());
    let rest = svc.list(&every, MAX_PAGE, &capped.next_page_token, false).await.expect("last page");
    assert_eq!(rest.objects.len(), 1);
    assert_eq!(rest.next_page_token, "", "the listing ends");
    // Exactly one full page: no token, no empty page after it.
    let h0 = Filter { kind: Some(state_machines::Kind::Disk), host: Some("h00".into()), ..Filter::default() };
    let h0_count = all.iter().filter(|i| i.starts_with("disk/h00/")).count();
    let exact = svc.list(&h0, h0_count, "", false).await.expect("exact page");
    assert_eq!((exact.objects.len(), exact.next_page_token.as_str()), (h0_count, ""));

    // Pages of 997 while objects are written between pages: every page answers the first revision,
    // linearizable and stale alike, and every object listed once.
    for stale in [false, true] {
        let (mut ids, mut revs, mut token) = (Vec::new(), Vec::new(), String::new());
        loop {
            let page = svc.list(&every, 997, &token, stale).await.expect("page");
            revs.push(page.revision);
            ids.extend(page.objects.into_iter().map(|o| o.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
            svc.ingest(IngestBatch {
                agent: String::new(),
                seq: 0,
                epoch: 0,
                findings: vec![finding("disk/h00/d00000", Severity::Warning)],
            })
            .await
            .expect("write between pages");
        }
        assert!(revs.iter().all(|r| *r == revs[0]), "stale={stale}: {revs:?}");
        assert!(svc.current_revision() > revs[0]);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "no object twice");
        assert_eq!(ids, all, "every object once, in id order");
    }
    let (ids, _, pages) = follow_pages(svc, &every, 0, false).await;
    assert_eq!((ids.len(), pages), (total, total.div_ceil(DEFAULT_PAGE)));

    // Bad tokens: garbage, cut, another filter, another listing. INVALID_ARGUMENT, revision unmoved.
    let token = first.next_page_token.clone();
    let agents_token = PageToken {
        listing: Listing::Agents,
        revision: first.revision,
        digest: filter_digest(&every),
        after: "disk/h00".into(),
    }
    .encode();
    let unmoved = svc.current_revision();
    for (what, f, t) in [
        ("garbage", &every, "%%%not-a-token".to_string()),
        ("cut", &every, token[..token.len() / 2].to_string()),
        ("another filter", &h0, token.clone()),
        ("another listing", &every, agents_token),
    ] {
        let e = svc.list(f, 0, &t, false).await.expect_err(what);
        assert_eq!(e.code, Code::InvalidArgument, "{what}: {e}");
    }
    assert_eq!(svc.current_revision(), unmoved, "bad tokens change nothing");
    // Agents page the same way, in id order (23 agents heard, pages of 5).
    let names: Vec<String> = (0..23).map(|i| format!("hb-{i:02}")).collect();
    for a in &names {
        svc.heartbeat(a, &format!("host-{a}"), hb(1)).await.expect("heartbeat");
    }
    let (mut listed, mut token_a, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = svc.agent_list(5, &token_a).await.expect("agents page");
        pages += 1;
        assert!(page.agents.len() <= 5);
        listed.extend(page.agents.into_iter().map(|a| (a.agent, a.alive, a.heard)));
        if page.next_page_token.is_empty() {
            break;
        }
        token_a = page.next_page_token;
    }
    let agent_ids: Vec<&String> = listed.iter().map(|(a, _, _)| a).filter(|a| a.starts_with("hb-")).collect();
    assert_eq!(agent_ids, names.iter().collect::<Vec<_>>(), "every agent once, in id order");
    assert!(listed.iter().filter(|(a, _, _)| a.starts_with("hb-")).all(|(_, alive, heard)| *alive && *heard));
    assert_eq!(pages, listed.len().div_ceil(5));
    let before = svc.current_revision();
    let e = svc.agent_list(0, &token).await.expect_err("an objects token for agents");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(svc.current_revision(), before, "bad tokens change nothing");

    // A token from a revision this node has not applied: a stale page waits PAGE_CATCH_UP, then says so.
    let future = PageToken {
        listing: Listing::Objects,
        revision: before + 1_000_000,
        digest: filter_digest(&every),
        after: String::new(),
    }
    .encode();
    let t0 = std::time::Instant::now();
    let e = svc.list(&every, 0, &future, true).await.expect_err("behind the listing");
    assert_eq!(e.code, Code::Unavailable, "{e}");
    assert!(t0.elapsed() >= PAGE_CATCH_UP, "waited for the node to catch up first");
    n.raft.shutdown().await;
}
