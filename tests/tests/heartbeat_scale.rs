//! The heartbeat path at fleet scale (issue 17, item 2), on a real single-node raft group in process:
//! liveness changes of many agents land in few Raft entries and none is lost; a new leader (restarted node,
//! new term, empty heartbeat memory) learns the agents recorded alive once and their first heartbeats
//! propose nothing; agents that stop beating are marked silent in few entries, every one of them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use master::api::{HeartbeatInfo, MAX_CMDS_PER_ENTRY, Service, ServiceConfig};
use master::fsm::MasterFsm;
use master::model::Registration;
use master::raft::{RaftConfig, RaftNode, Role};
use master::sm_seam::{Input, Policy};
use master::store::{ChangesRead, Reader};
use state_machines::Action;
use tests::wait_until;

/// Agents in each test: enough that one entry per change would be obvious, small enough for a debug build.
const AGENTS: usize = 1500;
/// Bound on every wait below (conditions are polled; they hold well before it).
const WAIT: Duration = Duration::from_secs(60);

struct Node {
    raft: RaftNode,
    svc: Arc<Service>,
}

async fn start_node(dir: &Path, agent_silent_after: Duration) -> Node {
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let cfg = RaftConfig::single_member(dir, peer.to_string());
    let (fsm, revision) = MasterFsm::new(Policy::default());
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
        wait_until(WAIT, || async { raft.status().role == Role::Leader }).await,
        "single node never became leader: {:?}",
        raft.status()
    );
    // The leader's own announcement first, so the counts below are only the heartbeats'.
    assert!(wait_until(WAIT, || async { svc.cluster_info().is_ok_and(|i| i.leader_announced()) }).await);
    Node { raft, svc }
}

async fn stop_node(n: Node) {
    n.svc.shutdown().await;
    drop(n.svc);
    n.raft.shutdown().await;
}

fn hb() -> HeartbeatInfo {
    HeartbeatInfo { version: "1.0.0".into(), started_ms: 1, ..HeartbeatInfo::default() }
}

/// Every agent beats once, all at once (as a fleet does after a restart), each from its own task.
async fn beat_all(svc: &Arc<Service>, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let svc = svc.clone();
        set.spawn(async move { (i, svc.heartbeat(&format!("agent-{i}"), &format!("host-{i}"), hb()).await) });
    }
    while let Some(r) = set.join_next().await {
        let (i, r) = r.expect("heartbeat task");
        r.unwrap_or_else(|e| panic!("heartbeat of agent-{i}: {e}"));
    }
}

/// The "went silent" changes from revision `from` on (their details name the agent).
fn silent_marks(svc: &Service, from: u64) -> Vec<String> {
    let r = Reader::new(svc.db()).expect("reader");
    match r.changes(from, &master::store::Filter::default(), usize::MAX).expect("changes") {
        ChangesRead::Events { events, .. } => events
            .into_iter()
            .filter(|e| e.what == "agent" && e.detail.ends_with(" silent"))
            .map(|e| e.detail)
            .collect(),
        ChangesRead::Compacted { first_available } => panic!("change log compacted to {first_available}"),
    }
}

fn alive_in_store(svc: &Service) -> usize {
    Reader::new(svc.db()).and_then(|r| r.alive_agents()).expect("read agents").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_answers_first_beats_of_alive_agents_without_proposing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = start_node(dir.path(), Duration::from_secs(3600)).await;
    // First beats of a whole fleet: each agent becomes alive (one revision each), in few entries.
    let (commit0, rev0) = (n.raft.status().commit_index, n.svc.current_revision());
    beat_all(&n.svc, AGENTS).await;
    let entries = n.raft.status().commit_index - commit0;
    assert_eq!(n.svc.current_revision() - rev0, AGENTS as u64, "one liveness change per agent");
    assert_eq!(alive_in_store(&n.svc), AGENTS, "none lost");
    eprintln!("{AGENTS} agents became alive in {entries} Raft entries");
    // An entry holds at most MAX_CMDS_PER_ENTRY commands: the rest went in the next entries.
    assert!(entries >= AGENTS.div_ceil(MAX_CMDS_PER_ENTRY) as u64, "{entries} entries");
    assert!(
        entries <= (AGENTS / 10) as u64,
        "{AGENTS} liveness changes took {entries} Raft entries (the proposer packs concurrent ones)"
    );
    stop_node(n).await;

    // A new leader (new term, empty heartbeat memory) learns the agents recorded alive.
    let n = start_node(dir.path(), Duration::from_secs(3600)).await;
    assert!(
        wait_until(WAIT, || async { n.svc.heartbeat_memory_len() == AGENTS }).await,
        "the new leader learned {} of {AGENTS} alive agents",
        n.svc.heartbeat_memory_len()
    );
    let (commit1, rev1) = (n.raft.status().commit_index, n.svc.current_revision());
    beat_all(&n.svc, AGENTS).await;
    assert_eq!(n.raft.status().commit_index, commit1, "first beats of alive agents propose no entry");
    assert_eq!(n.svc.current_revision(), rev1);
    assert_eq!(n.svc.agents().expect("agents").len(), AGENTS, "every agent heard");
    // An agent that moved host is a real change: replicated.
    n.svc.heartbeat("agent-0", "host-moved", hb()).await.expect("beat");
    assert_eq!(n.svc.current_revision(), rev1 + 1);
    let moved = Reader::new(n.svc.db()).and_then(|r| r.agent("agent-0")).expect("read").expect("agent-0");
    assert_eq!((moved.host.as_str(), moved.alive), ("host-moved", true));
    stop_node(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_gone_silent_are_marked_in_few_entries_and_none_is_missed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = start_node(dir.path(), Duration::from_secs(2)).await;
    beat_all(&n.svc, AGENTS).await;
    assert_eq!(alive_in_store(&n.svc), AGENTS);
    let (commit0, rev0) = (n.raft.status().commit_index, n.svc.current_revision());
    // No more beats: every agent is marked silent once the period passes.
    assert!(
        wait_until(WAIT, || async { alive_in_store(&n.svc) == 0 }).await,
        "{} agents still alive",
        alive_in_store(&n.svc)
    );
    let entries = n.raft.status().commit_index - commit0;
    // One change per agent, none twice (the scope's avalanche rule may add its own latch events).
    let marks = silent_marks(&n.svc, rev0 + 1);
    assert_eq!(marks.len(), AGENTS, "one silent change per agent");
    assert_eq!(marks.iter().collect::<std::collections::BTreeSet<_>>().len(), AGENTS, "none twice");
    eprintln!("{AGENTS} agents marked silent in {} Raft entries", n.raft.status().commit_index - commit0);
    assert!(entries <= (AGENTS / 10) as u64, "{AGENTS} silent marks took {entries} Raft entries");
    assert!(entries >= AGENTS.div_ceil(MAX_CMDS_PER_ENTRY) as u64, "{entries} entries");
    // Back: one beat makes an agent alive again (the memory knows it is silent now).
    n.svc.heartbeat("agent-7", "host-7", hb()).await.expect("beat");
    assert_eq!(alive_in_store(&n.svc), 1);
    stop_node(n).await;

    // A new leader learns nobody alive; the agent that came back is alive and learned.
    let n = start_node(dir.path(), Duration::from_secs(3600)).await;
    assert!(wait_until(WAIT, || async { n.svc.heartbeat_memory_len() == 1 }).await);
    stop_node(n).await;
}

/// The orders a heartbeat hands out (the index) against a scan of every host's objects.
async fn assert_orders_match(svc: &Service, hosts: &[String], when: &str) -> usize {
    let r = Reader::new(svc.db()).expect("reader");
    let mut total = 0;
    for h in hosts {
        let scan = master::actions::orders_for(&r, h).expect("scan");
        let beat = svc.actions_for(h).await.expect("orders");
        assert_eq!(beat, scan, "{when}: orders of {h}");
        total += scan.len();
    }
    total
}

/// The disk of each of `hosts` is swapped (its slot reports a second serial): NEWBIE, with a provisioning
/// order.
async fn swapped_disks(svc: &Service, hosts: &[String]) {
    for h in hosts {
        for serial in ["OLD", "NEW"] {
            let reg = Registration {
                id: format!("disk/{h}/sda").parse().expect("id"),
                attributes: BTreeMap::from([("serial".to_string(), format!("{serial}-{h}"))]),
                labels: BTreeMap::new(),
            };
            svc.register(format!("agent-{h}"), h.clone(), vec![reg]).await.expect("register");
        }
    }
}

/// The agent of `host` reports how `action` on its disk went.
async fn action_done(svc: &Service, host: &str, action: Action) {
    let done = Input::ActionResult { action, success: true, detail: "done".into() };
    svc.object_command(format!("disk/{host}/sda").parse().expect("id"), done).await.expect("result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_orders_equal_a_scan_through_changes_and_a_leader_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts: Vec<String> = (0..6).map(|i| format!("oh-{i}")).collect();
    let n = start_node(dir.path(), Duration::from_secs(3600)).await;
    // Before the index is built the host is scanned; the first use starts the build.
    assert_eq!(assert_orders_match(&n.svc, &hosts, "empty").await, 0);
    assert!(
        wait_until(WAIT, || async { n.svc.order_index().revision().is_some() }).await,
        "index never built"
    );
    swapped_disks(&n.svc, &hosts[..3]).await;
    assert_eq!(assert_orders_match(&n.svc, &hosts, "three disks swapped").await, 3);
    // Provisioned: the order becomes a test; tested: no order left.
    action_done(&n.svc, &hosts[0], Action::Provision).await;
    assert_eq!(assert_orders_match(&n.svc, &hosts, "one provisioned").await, 3);
    action_done(&n.svc, &hosts[0], Action::Test).await;
    assert_eq!(assert_orders_match(&n.svc, &hosts, "one tested").await, 2);
    stop_node(n).await;

    // A new process: its indexes are built by the warm duty, without a heartbeat or tick asking for them
    // (every member keeps them warm, so a new leader has them at once), then kept by the change log again.
    let n = start_node(dir.path(), Duration::from_secs(3600)).await;
    let rev = n.svc.current_revision();
    assert!(
        wait_until(WAIT, || async {
            n.svc.order_index().revision().is_some_and(|r| r >= rev)
                && n.svc.deadline_index().revision().is_some_and(|r| r >= rev)
        })
        .await,
        "indexes never warmed"
    );
    assert_eq!(assert_orders_match(&n.svc, &hosts, "new leader, indexed").await, 2);
    swapped_disks(&n.svc, &hosts[3..]).await;
    assert_eq!(assert_orders_match(&n.svc, &hosts, "three more swapped").await, 5);
    // Rebuilt from scratch at the same revision: the same orders.
    n.svc.order_index().reset();
    n.svc.order_index().build_now(n.svc.db()).expect("rebuild");
    assert_eq!(assert_orders_match(&n.svc, &hosts, "rebuilt").await, 5);
    // An index not built yet (a new process, a snapshot installed) answers no orders and counts it, never a
    // scan of the host's objects per beat; its first use starts the build, and then the orders are there.
    // (A standalone index: the node's own is kept warm by its duty loop.)
    let ix: std::sync::Arc<master::actions::OrderIndex> = std::sync::Arc::default();
    let db = n.svc.db_arc();
    let cur = n.svc.current_revision();
    let r = Reader::new(n.svc.db()).expect("reader");
    let with_orders = hosts.iter().find(|h| !master::actions::orders_for(&r, h).expect("scan").is_empty());
    let h = with_orders.expect("a host with orders");
    assert!(ix.orders(&db, h, cur).await.expect("orders").is_empty(), "no orders from an unbuilt index");
    assert_eq!(ix.unbuilt_answers(), 1);
    assert!(wait_until(WAIT, || async { ix.revision().is_some() }).await, "never built");
    assert_eq!(
        ix.orders(&db, h, cur).await.expect("orders"),
        master::actions::orders_for(&r, h).expect("scan")
    );
    assert_eq!(ix.unbuilt_answers(), 1);
    stop_node(n).await;
}

/// The leader's deadline index (what its ticks step) equals a scan of every object, for every moment
/// that matters (before, at and after each deadline), through changes and a rebuild.
async fn assert_due_match(svc: &Service, when: &str) -> usize {
    let r = Reader::new(svc.db()).expect("reader");
    let policy = Policy::default();
    let mut moments: Vec<u64> = vec![0, u64::MAX];
    for rec in r.list(&master::store::Filter::default(), usize::MAX).expect("list") {
        if let Some(d) = rec.sm.next_deadline_ms(&policy) {
            moments.extend([d.saturating_sub(1), d, d + 1]);
        }
    }
    for now in &moments {
        let scan = master::deadlines::due_by_scan(&r, &policy, *now, usize::MAX).expect("scan");
        let ix = svc.due_objects(*now, usize::MAX).await.expect("due");
        assert_eq!(ix, scan, "{when}: due at {now}");
        // Bounded: the scan keeps only the earliest `max`, the same ones the index hands out.
        for max in [0, 1, 2, 3] {
            let scan = master::deadlines::due_by_scan(&r, &policy, *now, max).expect("scan");
            assert_eq!(scan, ix[..max.min(ix.len())].to_vec(), "{when}: at most {max} due at {now}");
        }
    }
    svc.due_objects(u64::MAX, usize::MAX).await.expect("due").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_index_equals_a_scan_through_changes_and_a_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts: Vec<String> = (0..6).map(|i| format!("dh-{i}")).collect();
    let n = start_node(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(assert_due_match(&n.svc, "empty, scanned").await, 0);
    assert!(
        wait_until(WAIT, || async { n.svc.deadline_index().revision().is_some() }).await,
        "index never built"
    );
    swapped_disks(&n.svc, &hosts[..4]).await;
    let with_deadlines = assert_due_match(&n.svc, "four disks swapped").await;
    assert!(with_deadlines >= 4, "provisioning orders carry deadlines: {with_deadlines}");
    action_done(&n.svc, &hosts[0], Action::Provision).await;
    assert_due_match(&n.svc, "one provisioned").await;
    action_done(&n.svc, &hosts[0], Action::Test).await;
    assert_due_match(&n.svc, "one tested").await;
    // A bound on how many are handed out at once: the earliest first.
    let all = n.svc.due_objects(u64::MAX, usize::MAX).await.expect("due");
    assert_eq!(n.svc.due_objects(u64::MAX, 2).await.expect("due"), all[..2.min(all.len())].to_vec());
    // An index not built yet steps nothing (counted) instead of scanning every object per tick; its first
    // use starts the build, and then it answers as the node's own (a standalone index, as for orders).
    let ix = std::sync::Arc::new(master::deadlines::index(Policy::default()));
    let (db, cur) = (n.svc.db_arc(), n.svc.current_revision());
    assert!(!all.is_empty(), "objects are due");
    assert!(master::deadlines::due(&ix, &db, cur, u64::MAX, usize::MAX).await.expect("due").is_empty());
    assert_eq!(ix.unbuilt_answers(), 1);
    assert!(wait_until(WAIT, || async { ix.revision().is_some() }).await, "never built");
    assert_eq!(master::deadlines::due(&ix, &db, cur, u64::MAX, usize::MAX).await.expect("due"), all);
    // Rebuilt from scratch at the same revision: the same answers.
    n.svc.deadline_index().reset();
    n.svc.deadline_index().build_now(n.svc.db()).expect("rebuild");
    assert_due_match(&n.svc, "rebuilt").await;
    stop_node(n).await;
}
