//! The subscriber SDK against 3 real `huatuo master` processes (policy: a 1.5 s acknowledgement timeout):
//! (a) the consent path: disks in ERROR wait for the storage role's "data-evacuated"; the SDK's
//! `storage_master` example (a child process) evacuates and acknowledges them, both one that was already
//! waiting when it started and one that entered ERROR while it watched, and ignores a disk outside its
//! label selector; the disks move to REPAIR. (b) a missing acknowledgement escalates after its timeout
//! (history shows the operator alert, the object says `ack_escalated`), and is still accepted afterwards.
//! (c) acknowledgements for an unknown object, a GOOD object, from the wrong role or of the wrong kind are
//! refused with typed errors and change nothing (revision and state). (d) a library watch resumes across
//! a `kill -9` of the leader it was streaming from, with no gap and no duplicate revision; a label-filtered
//! watch sees only its objects.
//!
//! Needs the `huatuo` binary and the SDK's examples built first: `cargo build -p huatuo -p huatuo-sdk
//! --examples` (a workspace `cargo test` builds both).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huatuo_sdk::{Config, Error, Filter, Subscriber, WatchItem};
use master::client::{Client, parse_addrs};
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use state_machines::{AckKind, Kind, ObjectId, State};
use tests::{huatuo_bin, wait_until};

/// The acknowledgement timeout the cluster runs with (the leader checks deadlines every 5 s).
const ACK_TIMEOUT_MS: u64 = 1500;
/// Bound on every wait for a condition (escalation needs the timeout plus one tick round).
const WAIT: Duration = Duration::from_secs(30);
/// A new leader must serve writes within this long after the old one is killed.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example binary, next to `huatuo` in `target/<profile>/examples/` (or `$HUATUO_STORAGE_MASTER`).
fn storage_master_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HUATUO_STORAGE_MASTER") {
        return PathBuf::from(p);
    }
    let bin = huatuo_bin().parent().expect("profile dir").join("examples").join("storage_master");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build -p huatuo-sdk --examples` with the same \
         CARGO_TARGET_DIR), or set HUATUO_STORAGE_MASTER",
        bin.display()
    );
    bin
}

fn id(s: &str) -> ObjectId {
    s.parse().expect("valid id")
}

async fn report(client: &mut Client, object: &str, severity: &str) -> u64 {
    let req = api::IngestRequest {
        agent: String::new(),
        seq: 0,
        findings: vec![api::Finding {
            object: object.into(),
            severity: severity.into(),
            checker: "smart".into(),
            version: "1.0.0".into(),
            rule: "smart.test".into(),
            evidence: format!("test says {severity}"),
            readings: Default::default(),
            time_ms: tests::now_ms(),
            shadow: false,
        }],
        epoch: 0,
    };
    let r = client.call(req, |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r.applied, 1, "{object} {severity}");
    r.revision
}

async fn register(client: &mut Client, host: &str, disks: &[&str], rack: &str) {
    let req = api::RegisterRequest {
        agent: format!("agent-{host}"),
        host: host.into(),
        objects: disks
            .iter()
            .map(|d| api::RegisteredObject {
                id: format!("disk/{host}/{d}"),
                attributes: Default::default(),
                labels: [("rack".to_string(), rack.to_string())].into_iter().collect(),
            })
            .collect(),
    };
    client.call(req, |mut c, r| async move { c.register(r).await }).await.expect("register");
}

/// Everything one library watch delivered.
#[derive(Default)]
struct Seen {
    revisions: Vec<u64>,
    objects: BTreeSet<String>,
    events: Vec<(u64, String, String)>,
    covered: u64,
    reconnects: u32,
    error: Option<String>,
    /// When the stream broke, and how long until events flowed again (a measured figure, printed).
    broke_at: Option<Instant>,
    resumed_after: Option<Duration>,
}

fn collect(mut w: huatuo_sdk::Watch) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(item) = w.next().await {
            let mut s = s.lock().expect("lock");
            match item {
                Ok(WatchItem::Events { events, revision }) => {
                    if let (Some(t), None) = (s.broke_at, s.resumed_after) {
                        s.resumed_after = Some(t.elapsed());
                    }
                    for e in events {
                        s.revisions.push(e.revision);
                        let obj = e.object.map(|o| o.to_string()).unwrap_or_default();
                        s.objects.insert(obj.clone());
                        s.events.push((e.revision, obj, e.what));
                    }
                    s.covered = revision;
                }
                Ok(WatchItem::Progress { revision }) => s.covered = revision,
                Ok(WatchItem::Reconnecting { .. }) => {
                    s.reconnects += 1;
                    s.broke_at.get_or_insert_with(Instant::now);
                }
                Ok(WatchItem::Resync { listing }) => {
                    s.error = Some(format!("unexpected resync at {}", listing.revision));
                }
                Err(e) => {
                    s.error = Some(e.to_string());
                    return;
                }
            }
        }
    });
    (seen, task)
}

async fn object(sub: &mut Subscriber, o: &str) -> huatuo_sdk::ObjectDetail {
    sub.get(&id(o)).await.expect("get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_escalation_refusals_and_watch_failover() {
    let bin = huatuo_bin();
    let example = storage_master_bin();
    let mut cluster =
        LocalCluster::start_with_config(&bin, 3, &format!("[policy]\nack_timeout_ms = {ACK_TIMEOUT_MS}\n"))
            .expect("start cluster");
    let Some(leader) = cluster.wait_leader(READY_TIMEOUT).await else {
        panic!("no leader; node 1 log:\n{}", cluster.log_tail(1));
    };
    let all = parse_addrs(&cluster.grpc_addrs());
    let mut client = Client::new(all.clone());
    // The default quotas are sized for a fleet (1% of disks out at once, at least 1): in a 4-disk cluster
    // they would hold the second disk's ERROR as a proposal. This test is about consent, so allow everything.
    let permissive = api::SetQuotasRequest {
        quotas: vec![api::QuotaRule {
            kind: "*".into(),
            scope: "cluster".into(),
            window_ms: 3_600_000,
            max_entries: "100%".into(),
            max_concurrent: "100%".into(),
        }],
        by: "sdk-test".into(),
        reason: "a 4-disk test cluster".into(),
        ..Default::default()
    };
    client.call(permissive, |mut c, r| async move { c.set_quotas(r).await }).await.expect("set quotas");
    let leader_first: Vec<String> = {
        let lg = cluster.nodes[&leader].grpc.clone();
        let mut a = vec![lg.clone()];
        a.extend(all.iter().filter(|g| **g != lg).cloned());
        a
    };

    // Two library watches from revision 1, streaming from the leader: everything, and rack r1's disks.
    let watcher =
        Subscriber::connect_with(Config::new(leader_first.clone(), "observer")).await.expect("connect");
    let (all_seen, all_task) = collect(watcher.watch(&Filter::default(), 1).expect("watch"));
    let r1 = Filter::kind(Kind::Disk).with_label("rack", "r1");
    let (r1_seen, r1_task) = collect(watcher.watch(&r1, 1).expect("watch"));
    // And one "from now" (revision 0) for host h2 only.
    let (h2_seen, h2_task) = collect(watcher.watch(&Filter::default().with_host("h2"), 0).expect("watch"));

    register(&mut client, "h1", &["sda", "sdb", "sdc"], "r1").await;
    register(&mut client, "h2", &["sda"], "r2").await;
    let mut storage = Subscriber::connect(all.clone(), "storage").await.expect("connect storage");
    let mut scheduler = Subscriber::connect(all.clone(), "scheduler").await.expect("connect scheduler");

    // (c) Refusals change nothing.
    report(&mut client, "disk/h1/sdc", "GOOD").await;
    let before = storage.list(&Filter::default()).await.expect("list").revision;
    match storage.ack(&id("disk/h1/sdc"), AckKind::DataEvacuated).await {
        Err(Error::Refused { message, current }) => {
            assert!(message.contains("waits for no acknowledgement"), "{message}");
            let current = current.expect("the refusal carries the object");
            assert_eq!((current.state, current.waiting.is_none()), (State::Good, true));
        }
        other => panic!("ack of a GOOD disk: {other:?}"),
    }
    match storage.ack(&id("disk/h9/sdz"), AckKind::DataEvacuated).await {
        Err(e @ Error::NotFound(_)) => assert!(e.to_string().contains("disk/h9/sdz"), "{e}"),
        other => panic!("ack of an unknown disk: {other:?}"),
    }
    let after = storage.list(&Filter::default()).await.expect("list").revision;
    assert_eq!(after, before, "refused acks must not change the revision");

    report(&mut client, "disk/h1/sdc", "ERROR").await;
    let d = object(&mut storage, "disk/h1/sdc").await;
    assert_eq!(d.object.state, State::Error);
    let w = d.object.waiting.clone().unwrap_or_else(|| {
        panic!(
            "a disk in ERROR must carry its pending ack on the wire (waiting_ack etc.): {:?}",
            d.object.view
        )
    });
    assert_eq!((w.ack, w.role.as_str(), w.escalated), (AckKind::DataEvacuated, "storage", false));
    assert!(w.deadline_ms > 0);
    let rev = storage.list(&Filter::default()).await.expect("list").revision;
    for (who, sub, ack, want) in [
        ("wrong role", &mut scheduler, AckKind::DataEvacuated, "waits for data-evacuated from storage"),
        ("wrong kind", &mut storage, AckKind::Drained, "got drained from storage"),
    ] {
        match sub.ack(&id("disk/h1/sdc"), ack).await {
            Err(Error::Refused { message, current }) => {
                assert!(message.contains(want), "{who}: {message}");
                let c = current.expect("object");
                assert_eq!(c.state, State::Error, "{who}");
                assert!(c.waits_for("storage", AckKind::DataEvacuated), "{who}: still waiting");
            }
            other => panic!("{who}: {other:?}"),
        }
    }
    let d = object(&mut storage, "disk/h1/sdc").await;
    assert_eq!(
        storage.list(&Filter::default()).await.expect("list").revision,
        rev,
        "refusals changed nothing"
    );
    assert_eq!(d.object.state, State::Error);

    // (b) Nobody acknowledges sdc: after the timeout the operator is alerted, once, and the object says so.
    let deadline = Instant::now() + WAIT;
    let escalated = loop {
        let d = object(&mut storage, "disk/h1/sdc").await;
        if d.object.waiting.as_ref().is_some_and(|w| w.escalated) || Instant::now() >= deadline {
            break d.object.waiting.as_ref().is_some_and(|w| w.escalated);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(escalated, "the missed acknowledgement was not escalated within {WAIT:?}");
    let d = object(&mut storage, "disk/h1/sdc").await;
    let alerts: Vec<&api::HistoryEntry> =
        d.history.iter().filter(|h| h.detail.contains("alert") || h.what.contains("alert")).collect();
    assert_eq!(alerts.len(), 1, "one alert in history: {:#?}", d.history);
    assert_eq!(d.object.state, State::Error, "escalation alerts; it does not move the disk");
    // The acknowledgement is still accepted after escalation.
    let a = storage.ack(&id("disk/h1/sdc"), AckKind::DataEvacuated).await.expect("late ack");
    assert_eq!((a.state, a.transitioned), (State::Repair, true));

    // (a) The example storage master: sda waits before it starts; h2's disk (rack r2) and sdb enter ERROR
    // while it watches. With --label rack=r1 it must acknowledge exactly sda and sdb, then exit.
    report(&mut client, "disk/h1/sda", "ERROR").await;
    let mut sm = KillOnDrop(
        Command::new(&example)
            .args(["--master", &all.join(","), "--role", "storage", "--evacuate-ms", "200"])
            .args(["--max-acks", "2", "--label", "rack=r1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn storage_master"),
    );
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (stdout, lines) = (sm.0.stdout.take().expect("stdout"), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(line);
            }
        });
    }
    let has = |p: &'static str| {
        let lines = lines.clone();
        move || {
            let found = lines.lock().expect("lock").iter().any(|l| l.starts_with(p));
            async move { found }
        }
    };
    assert!(wait_until(WAIT, has("ready ")).await, "example never got ready: {:?}", lines.lock());
    report(&mut client, "disk/h2/sda", "ERROR").await;
    report(&mut client, "disk/h1/sdb", "ERROR").await;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = sm.0.try_wait().expect("try_wait") {
            break s;
        }
        if started.elapsed() >= WAIT {
            let mut diag = String::new();
            for o in ["disk/h1/sda", "disk/h1/sdb", "disk/h2/sda"] {
                let d = object(&mut storage, o).await;
                diag.push_str(&format!(
                    "\n{o}: {:?} waiting {:?}\n{:#?}",
                    d.object.state, d.object.waiting, d.history
                ));
            }
            panic!("example did not finish: {:?}{diag}", lines.lock());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = lines.lock().expect("lock").clone();
    assert!(status.success(), "example failed: {status}; output {out:#?}");
    let acked: BTreeSet<&str> =
        out.iter().filter_map(|l| l.strip_prefix("acked ")).filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(acked, BTreeSet::from(["disk/h1/sda", "disk/h1/sdb"]), "{out:#?}");
    assert!(out.iter().any(|l| l == "evacuating disk/h1/sdb 100%"), "{out:#?}");
    for (o, want) in
        [("disk/h1/sda", State::Repair), ("disk/h1/sdb", State::Repair), ("disk/h2/sda", State::Error)]
    {
        let d = object(&mut storage, o).await;
        assert_eq!(d.object.state, want, "{o}");
        let acks = d.history.iter().filter(|h| h.cause.contains("ack data-evacuated by storage")).count();
        assert_eq!(acks, usize::from(want == State::Repair), "{o}: {:#?}", d.history);
    }
    assert!(object(&mut storage, "disk/h2/sda").await.object.waits_for("storage", AckKind::DataEvacuated));

    // (d) Continuous writes; kill -9 the leader both watches stream from; they must resume elsewhere.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, written, all) = (stop.clone(), written.clone(), all.clone());
        tokio::spawn(async move {
            let mut c = Client::new(all);
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let req = api::IngestRequest {
                    agent: "writer".into(),
                    seq,
                    findings: (0..3)
                        .map(|i| api::Finding {
                            object: format!("disk/w{seq}/d{i}"),
                            severity: "GOOD".into(),
                            checker: "smart".into(),
                            version: "1.0.0".into(),
                            rule: "smart.ok".into(),
                            evidence: "ok".into(),
                            readings: Default::default(),
                            time_ms: tests::now_ms(),
                            shadow: false,
                        })
                        .collect(),
                    epoch: 0,
                };
                if c.call(req, |mut c, r| async move { c.ingest(r).await }).await.is_ok() {
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let n = || written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(wait_until(WAIT, || async { n() >= 20 }).await, "writer made no progress");
    cluster.kill9(leader);
    let at_kill = n();
    assert!(
        wait_until(FAILOVER_BOUND, || async { n() >= at_kill + 20 }).await,
        "no new leader served writes within {FAILOVER_BOUND:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");
    let final_rev = storage.list(&Filter::default()).await.expect("list").revision;
    let caught_up = wait_until(WAIT, || async {
        let s = all_seen.lock().expect("lock");
        s.covered >= final_rev || s.error.is_some()
    })
    .await;
    {
        let s = all_seen.lock().expect("lock");
        assert!(
            caught_up && s.error.is_none(),
            "watch stopped at {} (want {final_rev}): {:?}",
            s.covered,
            s.error
        );
        assert!(s.reconnects >= 1, "the watch streamed from the killed leader, so it must have reconnected");
        let dense: Vec<u64> = (1..=s.revisions.len() as u64).collect();
        assert_eq!(s.revisions, dense, "every revision exactly once, in order, across the failover");
        assert!(*s.revisions.last().expect("events") >= final_rev);
        eprintln!(
            "watch: {} revisions, {} reconnects, events flowed again {:?} after the stream broke",
            s.revisions.len(),
            s.reconnects,
            s.resumed_after
        );
    }
    let s = r1_seen.lock().expect("lock");
    assert!(s.error.is_none(), "{:?}", s.error);
    let want: BTreeSet<String> = ["disk/h1/sda", "disk/h1/sdb", "disk/h1/sdc"].map(String::from).into();
    assert_eq!(s.objects, want, "the label-filtered watch saw only rack r1's disks");
    assert!(s.revisions.windows(2).all(|w| w[0] < w[1]), "increasing, no duplicates: {:?}", s.revisions);
    for o in ["disk/h1/sda", "disk/h1/sdb", "disk/h1/sdc"] {
        let transitions = s.events.iter().filter(|(_, obj, what)| obj == o && what == "transition").count();
        assert_eq!(transitions, 2, "{o}: GOOD->ERROR and ERROR->REPAIR: {:?}", s.events);
    }
    drop(s);
    let s = h2_seen.lock().expect("lock");
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!(s.objects, BTreeSet::from(["disk/h2/sda".to_string()]), "{:?}", s.events);
    assert!(
        s.events.iter().any(|(_, _, what)| what == "transition"),
        "h2's disk entered ERROR: {:?}",
        s.events
    );
    drop(s);
    for t in [all_task, r1_task, h2_task] {
        t.abort();
    }
}
