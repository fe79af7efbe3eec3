//! A real agent (`agent::run::run_with`: scheduler, sink, outbox, reporter) against a real master (a
//! single-node raft group with the API layer, served over gRPC on a loopback port), both in process:
//!
//! - Poison: a finding the master refuses (NUL in its evidence, a reading over the limit) never blocks the
//!   host's outbox. An external checker printing such findings gets one `checker.broken` finding at the
//!   master instead, and a poison batch already queued (from an older agent) is set aside in the
//!   dead-letter area alone; the good findings queued with it and behind it arrive.
//! - Wipe: an agent whose data dir is wiped starts again at sequence 1 under a new epoch; once the cluster
//!   enabled command version 3 its new findings arrive instead of being answered `duplicate`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent::outbox::{Limits, OutboxStore, RedbOutbox};
use master::api::{Service, ServiceConfig};
use master::fsm::MasterFsm;
use master::raft::{RaftConfig, RaftNode, Role};
use master::sm_seam::Policy;
use proto::api;
use proto::client::Client;
use state_machines::{Finding, Severity};
use tests::wait_until;

/// Bound on every wait for a finding to travel agent -> master (checkers run every second here).
const DELIVERY: Duration = Duration::from_secs(60);
/// Bound on an agent's clean stop.
const STOP: Duration = Duration::from_secs(30);

struct Master {
    _dir: tempfile::TempDir,
    raft: RaftNode,
    svc: Arc<Service>,
    grpc: String,
}

async fn start_master() -> Master {
    let dir = tempfile::tempdir().unwrap();
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = RaftConfig::single_member(dir.path(), peer.to_string());
    let (fsm, revision) = MasterFsm::new(Policy::default());
    let stats = fsm.stats();
    let (raft, db) = RaftNode::start(cfg, fsm).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap().to_string();
    let svc = Service::start(
        raft.clone(),
        db,
        revision,
        stats,
        ServiceConfig {
            agent_silent_after: Duration::from_secs(60),
            auto_upgrade: false,
            ..ServiceConfig::new(grpc.clone(), "127.0.0.1:1")
        },
    );
    let server =
        tonic::transport::Server::builder().add_service(master::grpc::GrpcApi::new(Arc::clone(&svc)));
    tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    assert!(
        wait_until(Duration::from_secs(10), || async { raft.status().role == Role::Leader }).await,
        "single node never became leader: {:?}",
        raft.status()
    );
    Master { _dir: dir, raft, svc, grpc }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.sh"));
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// An agent config with every built-in checker off and one external checker `path` run every second.
fn agent_config(dir: &Path, host: &str, master: &str, checker: &Path) -> agent::config::AgentConfig {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = format!(
        r#"version = 1
host = "{host}"
data_dir = {data:?}
masters = ["{master}"]
http_listen = "127.0.0.1:{port}"
root = {root:?}
insecure = true
[net_probe]
listen = "127.0.0.1:0"
[report]
heartbeat_s = 1
backoff_max_s = 1
[checkers.disk]
enabled = false
[checkers.edac]
enabled = false
[checkers.nic]
enabled = false
[checkers.machine]
enabled = false
[checkers.kernel-log]
enabled = false

[[external]]
name = "vendor"
version = "1.0.0"
path = {path:?}
interval_s = 1
kinds = ["disk"]
"#,
        data = dir.join("data").display().to_string(),
        root = root.display().to_string(),
        path = checker.display().to_string(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    agent::config::AgentConfig::load(&path).unwrap()
}

struct RunningAgent {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_agent(cfg: agent::config::AgentConfig) -> RunningAgent {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent::run::run_with(cfg, agent::run::RunHooks::default(), rx));
    RunningAgent { stop, task }
}

impl RunningAgent {
    async fn stop(self) {
        self.stop.send_replace(true);
        let done = tokio::time::timeout(STOP, self.task).await.expect("the agent stops in time");
        done.unwrap().expect("the agent stopped cleanly");
    }
}

/// The evidence (checker -> finding) the master holds for `id`.
async fn evidence(client: &mut Client, id: &str) -> Vec<api::Finding> {
    let req = api::GetObjectRequest { id: id.into(), stale: false };
    client
        .call(req, |mut c, r| async move { c.get_object(r).await })
        .await
        .ok()
        .and_then(|r| r.object)
        .map(|o| o.evidence)
        .unwrap_or_default()
}

async fn has_evidence(master: &str, id: &str, pred: impl Fn(&api::Finding) -> bool) -> bool {
    evidence(&mut Client::new(vec![master.to_string()]), id).await.iter().any(pred)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_finding_does_not_stop_later_good_findings() {
    let m = start_master().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    const HOST: &str = "poison-h1";
    // A poison batch already queued by an agent that did not screen its findings.
    std::fs::create_dir_all(dir.join("data")).unwrap();
    {
        let ob = RedbOutbox::open(&dir.join("data/outbox.redb"), Limits::default()).unwrap();
        let poison = Finding {
            object: format!("disk/{HOST}/sdz").parse().unwrap(),
            severity: Severity::Error,
            checker: "old".into(),
            version: "1".into(),
            rule: "old.rule".into(),
            evidence: "a\0b".into(),
            readings: Default::default(),
            time_ms: agent::scheduler::now_ms(),
            shadow: false,
        };
        ob.enqueue(&[(Severity::Error, serde_json::to_vec(&poison).unwrap())]).unwrap();
    }
    // The external checker prints a NUL in one finding's evidence, an oversized reading in another, and a
    // good finding, every run.
    let long = "9".repeat(200);
    let vendor = script(
        dir,
        "vendor",
        &format!(
            r#"echo '{{"object":"disk/{HOST}/sdb","severity":"WARNING","rule":"vendor.nul","evidence":"bad\u0000byte"}}'
echo '{{"object":"disk/{HOST}/sdc","severity":"WARNING","rule":"vendor.big","evidence":"x","readings":{{"v":"{long}"}}}}'
echo '{{"object":"disk/{HOST}/sda","severity":"WARNING","rule":"raid.degraded","evidence":"md0 [U_]"}}'"#
        ),
    );
    let agent = start_agent(agent_config(dir, HOST, &m.grpc, &vendor));
    let mut client = Client::new(vec![m.grpc.clone()]);
    let good = format!("disk/{HOST}/sda");
    let arrived = wait_until(DELIVERY, || has_evidence(&m.grpc, &good, |f| f.rule == "raid.degraded")).await;
    let broken = format!("checker/{HOST}/vendor");
    let reported =
        wait_until(DELIVERY, || has_evidence(&m.grpc, &broken, |f| f.rule == "checker.broken")).await;
    agent.stop().await;
    assert!(arrived, "the good finding never arrived behind the poison batch");
    if !reported {
        let req = api::ListObjectsRequest { host: HOST.into(), ..Default::default() };
        let objs = client.call(req, |mut c, r| async move { c.list_objects(r).await }).await;
        panic!(
            "no checker.broken finding about the checker (it is queued with the poison); objects: {objs:#?}"
        );
    }
    let ev = evidence(&mut client, &broken).await;
    let text = &ev.iter().find(|f| f.rule == "checker.broken").unwrap().evidence;
    assert!(text.contains("NUL"), "{text}");
    assert!(text.contains("reading value is 200 bytes long (limit 128)"), "{text}");
    for bad in ["sdb", "sdc", "sdz"] {
        assert!(evidence(&mut client, &format!("disk/{HOST}/{bad}")).await.is_empty(), "{bad} stored");
    }
    // The poison batch is in the dead-letter area, with the master's answer.
    let ob = RedbOutbox::open(&dir.join("data/outbox.redb"), Limits::default()).unwrap();
    let (dead, count) = agent::reporter::dead_batches(&ob).unwrap();
    assert_eq!(count, 1, "{dead:?}");
    assert!(dead[0].error.contains("NUL"), "{:?}", dead[0]);
    assert_eq!(dead[0].entries.len(), 1, "only the poison, not the good findings queued with it: {dead:?}");
    assert!(dead[0].entries[0].contains("old.rule"), "{:?}", dead[0]);
    drop(m.raft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_agent_starts_a_new_epoch_and_its_findings_arrive() {
    let m = start_master().await;
    m.svc.set_min_command_version(3, "test", "every master knows agent epochs").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    const HOST: &str = "wipe-h1";
    // Every run reports 20 faults (always sent), the last one named after the current marker, so the first
    // life queues a sequence well above what the second life reaches with its first runs.
    let counter = dir.join("runs");
    let marker = dir.join("marker");
    std::fs::write(&marker, "before").unwrap();
    let vendor = script(
        dir,
        "vendor",
        &format!(
            r#"n=$(($(cat {c} 2>/dev/null || echo 0) + 1)); echo $n > {c}
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19; do
  echo "{{\"object\":\"disk/{HOST}/sdb\",\"severity\":\"WARNING\",\"rule\":\"vendor.fill$i\",\"evidence\":\"run $n\"}}"
done
echo "{{\"object\":\"disk/{HOST}/sda\",\"severity\":\"WARNING\",\"rule\":\"vendor.$(cat {m})\",\"evidence\":\"run $n\"}}""#,
            c = counter.display(),
            m = marker.display(),
        ),
    );
    let id = format!("disk/{HOST}/sda");
    let seen = |rule: &'static str| {
        let (master, id) = (m.grpc.clone(), id.clone());
        move || {
            let (master, id) = (master.clone(), id.clone());
            async move { has_evidence(&master, &id, |f| f.rule == rule).await }
        }
    };
    // First life: run until the agent's sequence is well past what the wiped agent will reach.
    let agent = start_agent(agent_config(dir, HOST, &m.grpc, &vendor));
    assert!(wait_until(DELIVERY, seen("vendor.before")).await, "first life's findings never arrived");
    let epoch_of = |dir: &Path| {
        let ob = RedbOutbox::open(&dir.join("data/outbox.redb"), Limits::default()).unwrap();
        let e = agent::reporter::epoch(&ob).unwrap();
        let next = ob.depth().unwrap().next_seq;
        (e, next)
    };
    let runs = |n: u64| {
        let counter = counter.clone();
        move || {
            let counter = counter.clone();
            async move {
                std::fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0)
                    >= n
            }
        }
    };
    assert!(wait_until(DELIVERY, runs(8)).await, "the checker did not run 8 times");
    agent.stop().await;
    let (first_epoch, first_next) = epoch_of(dir);
    assert!(first_next > 100, "the first life queued several batches (next seq {first_next})");
    // Wipe the data dir: a new outbox, a new epoch, sequences from 1 again.
    std::fs::remove_dir_all(dir.join("data")).unwrap();
    std::fs::write(&marker, "after").unwrap();
    let agent = start_agent(agent_config(dir, HOST, &m.grpc, &vendor));
    let arrived = wait_until(DELIVERY, seen("vendor.after")).await;
    agent.stop().await;
    let (second_epoch, second_next) = epoch_of(dir);
    assert_ne!(first_epoch, second_epoch, "a wiped data dir is a new epoch");
    assert!(arrived, "the wiped agent's findings were dropped (next seq {second_next}, before {first_next})");
    assert!(
        second_next < first_next,
        "the new life's findings arrived only once its sequence ({second_next}) passed the old one \
         ({first_next}): answered `duplicate` and dropped until then"
    );
    drop(m.raft);
}
