//! End to end with real processes: a 3-node master and agents whose probes read recorded real fixture trees
//! (checkers/testdata/host/procfs, from prometheus/procfs) with a kernel log fed through `ROOT/dev/kmsg`.
//!
//! - One healthy host and one whose disk `sdb` logs block I/O errors: a `huatuo watch` subscriber sees the
//!   disk go to ERROR with its evidence, and the healthy host's objects stay GOOD.
//! - Master outage: every master stopped, the agent keeps producing findings, the masters come back and
//!   every finding arrives exactly once in the object's history.
//!
//! Needs the `huatuo` binary (built by `cargo test --workspace` through cli/tests; see `tests::huatuo_bin`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT, free_port};
use proto::api;
use proto::client::{Client, parse_addrs};
use tests::{huatuo_bin, wait_until};

/// Bound on every wait for the agent -> master -> watcher path (checkers run every second here).
const DELIVERY: Duration = Duration::from_secs(60);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&e.path(), &target);
        } else if ty.is_file() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A host root: the recorded procfs/sysfs tree, a boot id, and a raw kmsg file with real benign records.
fn host_root(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = dir.join("root");
    copy_tree(&repo.join("checkers/testdata/host/procfs"), &root);
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
        .unwrap();
    // Disk slots with identities, as sysfs shows them (git keeps no empty directories, so the recorded
    // tree's empty sys/block/sdX folders are not enough for the inventory).
    for (i, dev) in ["sda", "sdb", "sdc", "sdd", "sde"].iter().enumerate() {
        let d = root.join("sys/block").join(dev).join("device");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("serial"), format!("WD-WCC4E000000{i}\n")).unwrap();
        std::fs::write(d.join("model"), "WDC WD40EFRX-68N\n").unwrap();
    }
    std::fs::create_dir_all(root.join("dev")).unwrap();
    // Benign records recorded by gpud from a real /dev/kmsg.
    let benign = std::fs::read_to_string(repo.join("checkers/testdata/kernel-log/gpud/kmsg.1.log")).unwrap();
    let first: Vec<&str> = benign.lines().filter(|l| !l.starts_with(' ')).take(40).collect();
    std::fs::write(root.join("dev/kmsg"), first.join("\n") + "\n").unwrap();
    root
}

/// The last kmsg sequence number in a raw kmsg file.
fn last_seq(kmsg: &Path) -> u64 {
    std::fs::read_to_string(kmsg)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(',').nth(1)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// Append block-layer I/O errors for `dev` at the given sectors, as the kernel prints them.
fn append_io_errors(kmsg: &Path, dev: &str, sectors: &[u64]) {
    let mut seq = last_seq(kmsg);
    let mut f = std::fs::OpenOptions::new().append(true).open(kmsg).unwrap();
    for s in sectors {
        seq += 1;
        writeln!(
            f,
            "3,{seq},{},-;blk_update_request: I/O error, dev {dev}, sector {s} op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0",
            300_000_000 + seq * 1000
        )
        .unwrap();
    }
    f.sync_all().unwrap();
}

fn start_agent(bin: &Path, dir: &Path, host: &str, root: &Path, masters: &str, http_port: u16) -> KillOnDrop {
    let masters: Vec<String> = parse_addrs(masters).iter().map(|m| format!("{m:?}")).collect();
    let cfg = format!(
        "version = 1\nhost = {host:?}\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
         root = {:?}\n[labels]\nrack = \"r1\"\n[report]\nheartbeat_s = 1\nbackoff_max_s = 1\nidle_connection_s = 2\n\
         [net_probe]\nlisten = \"127.0.0.1:0\"\n\
         [checkers.disk]\ninterval_s = 1\n[checkers.machine]\ninterval_s = 2\n[checkers.nic]\ninterval_s = 2\n\
         [checkers.edac]\ninterval_s = 2\n",
        dir.join("agent-data").display().to_string(),
        masters.join(", "),
        root.display().to_string(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    KillOnDrop(
        Command::new(bin)
            .args(["agent", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn object(client: &mut Client, id: &str) -> Option<api::GetObjectResponse> {
    let req = api::GetObjectRequest { id: id.into(), stale: false };
    client.call(req, |mut c, r| async move { c.get_object(r).await }).await.ok()
}

async fn objects_of(client: &mut Client, host: &str) -> Vec<api::Object> {
    let req = api::ListObjectsRequest { host: host.into(), ..Default::default() };
    client
        .call(req, |mut c, r| async move { c.list_objects(r).await })
        .await
        .map(|r| r.objects)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_disk_reaches_error_at_the_subscriber_and_healthy_host_stays_good() {
    let bin = huatuo_bin();
    let cluster = LocalCluster::start(&bin, 3).expect("start masters");
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", cluster.log_tail(1));
    let masters = cluster.grpc_addrs();

    // The subscriber watches disks from the beginning.
    let mut watch = KillOnDrop(
        Command::new(&bin)
            .args(["watch", "--kind", "disk", "--from", "1", "--master", &masters])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let out = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });

    let healthy_dir = tempfile::tempdir().unwrap();
    let failing_dir = tempfile::tempdir().unwrap();
    let healthy_root = host_root(healthy_dir.path());
    let failing_root = host_root(failing_dir.path());
    // Twelve I/O errors on sdb: each is a WARNING, ten within ten minutes are an ERROR burst.
    append_io_errors(
        &failing_root.join("dev/kmsg"),
        "sdb",
        &(1..=12).map(|i| 1_000_000 + i * 8).collect::<Vec<_>>(),
    );
    let _h =
        start_agent(&bin, healthy_dir.path(), "healthy-1", &healthy_root, &masters, free_port().unwrap());
    let _f =
        start_agent(&bin, failing_dir.path(), "failing-1", &failing_root, &masters, free_port().unwrap());

    // The subscriber sees disk/failing-1/sdb enter ERROR, with the kernel evidence.
    let deadline = std::time::Instant::now() + DELIVERY;
    let mut seen = Vec::new();
    let error_event = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(ev) = rx.recv_timeout(left) else {
            panic!(
                "no ERROR event for disk/failing-1/sdb within {DELIVERY:?}; saw {seen:?}\nagent log:\n{}",
                std::fs::read_to_string(failing_dir.path().join("agent.log")).unwrap_or_default()
            );
        };
        if ev["object"] == "disk/failing-1/sdb" && ev["state"] == "ERROR" {
            break ev;
        }
        seen.push(ev);
    };
    let detail = error_event["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("I/O error") || detail.contains("disk."), "evidence missing: {error_event}");

    let mut client = Client::new(parse_addrs(&masters));
    let sdb = object(&mut client, "disk/failing-1/sdb").await.expect("sdb exists");
    let o = sdb.object.unwrap();
    assert_eq!(o.state, "ERROR");
    assert!(o.evidence.iter().any(|f| f.checker == "kernel-log"), "{o:?}");

    // The healthy host: registered, graded by its checkers, and every object GOOD.
    let ok = wait_until(DELIVERY, || {
        let mut c = Client::new(parse_addrs(&masters));
        async move {
            let objs = objects_of(&mut c, "healthy-1").await;
            objs.iter()
                .any(|o| o.id == "disk/healthy-1/sda" && o.evidence.iter().any(|f| f.checker == "disk"))
        }
    })
    .await;
    assert!(ok, "healthy host's disks were never graded");
    let objs = objects_of(&mut client, "healthy-1").await;
    assert!(objs.len() >= 5, "machine, disks, nics expected: {objs:?}");
    for o in &objs {
        assert_eq!(o.state, "GOOD", "healthy host object moved: {o:?}");
    }
    // Heartbeats carry the agent's version, start time, checker versions and outbox depth (leader memory).
    let agents = cluster
        .nodes
        .values()
        .filter_map(|n| n.http.rsplit(':').next()?.parse::<u16>().ok())
        .map(|port| http_get(port, "/api/v1/agents"))
        .find(|body| body.starts_with("HTTP/1.1 200"))
        .expect("the leader serves /api/v1/agents");
    for want in ["\"failing-1\"", "\"healthy-1\"", "\"started_ms\"", "\"kernel-log\"", "\"outbox_entries\""] {
        assert!(agents.contains(want), "{want} missing from {agents}");
    }
    // The failing host's other disks did not move either.
    let sda = object(&mut client, "disk/failing-1/sda").await.expect("sda registered").object.unwrap();
    assert_eq!(sda.state, "GOOD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_made_while_every_master_is_down_arrive_exactly_once() {
    let bin = huatuo_bin();
    let mut cluster = LocalCluster::start(&bin, 3).expect("start masters");
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", cluster.log_tail(1));
    let masters = cluster.grpc_addrs();
    let dir = tempfile::tempdir().unwrap();
    let root = host_root(dir.path());
    let agent_port = free_port().unwrap();
    let _agent = start_agent(&bin, dir.path(), "outage-1", &root, &masters, agent_port);
    let kmsg = root.join("dev/kmsg");
    // Before the outage: one error, delivered.
    append_io_errors(&kmsg, "sdc", &[500_000]);
    let ok = sector_arrived(&masters, 500_000).await;
    assert!(ok, "first finding never arrived");
    // Its heartbeats go as datagrams (`proto::datagram`), not a call each; its batches over a stream
    // (`IngestStream`: the finding above came in a batch answered on it).
    wait_for_metric(agent_port, "huatuo_agent_heartbeats_datagram", 1).await;
    // With nothing to send, the agent closes its connection after 2 s (`idle_connection_s`) while its
    // beats go on by datagram; the findings below connect again.
    let dropped = wait_until(DELIVERY, || async move {
        tests::metric(&http_get(agent_port, "/metrics"), "huatuo_agent_master_connected") == Some(0)
    });
    assert!(dropped.await, "the idle connection was kept: {}", http_get(agent_port, "/metrics"));
    let beats_idle = metric(agent_port, "huatuo_agent_heartbeats_datagram").unwrap_or_default();
    wait_for_metric(agent_port, "huatuo_agent_heartbeats_datagram", beats_idle + 2).await;
    let beats_before = answered_beats(agent_port);
    let batches_before = wait_for_metric(agent_port, "huatuo_agent_batches_streamed", 1).await;

    // Every master down (kill -9: no goodbye), findings keep coming.
    for id in cluster.running() {
        cluster.kill9(id);
    }
    let sectors: Vec<u64> = (1..=5).map(|i| 600_000 + i).collect();
    append_io_errors(&kmsg, "sdc", &sectors);
    // Wait until the agent has them in its outbox (its metrics say so), so they were made during the outage.
    let queued = wait_until(DELIVERY, || {
        let sectors = sectors.clone();
        async move {
            let body = http_get(agent_port, "/api/v1/local");
            sectors.iter().all(|s| body.contains(&format!("sector {s} ")))
        }
    })
    .await;
    assert!(queued, "the agent did not pick up the new kernel lines");
    for id in [1, 2, 3] {
        cluster.spawn(id, false).unwrap();
    }
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader after restart");

    let want: Vec<String> = (1..=5).map(|i| format!("sector {} ", 600_000 + i)).collect();
    let mut client = Client::new(parse_addrs(&masters));
    let delivered = wait_until(DELIVERY, || {
        let m = masters.clone();
        let want = want.clone();
        async move {
            let mut c = Client::new(parse_addrs(&m));
            object(&mut c, "disk/outage-1/sdc")
                .await
                .is_some_and(|o| want.iter().all(|w| o.history.iter().any(|h| h.detail.contains(w.as_str()))))
        }
    })
    .await;
    assert!(delivered, "findings from the outage never arrived");
    // Let any duplicate that might be in flight land, then count: exactly once each.
    let flushed = wait_until(DELIVERY, || async move {
        http_get(agent_port, "/metrics").lines().any(|l| l.trim() == "huatuo_agent_outbox_entries 0")
    })
    .await;
    assert!(flushed, "outbox never drained");
    // Beats are answered again after the outage: by datagrams, or over a new stream to the new leader
    // when three beats in a row found no member answering datagrams (then calls for a while). Which one
    // depends on what the reporter tried during the outage, so only the sum is checked here;
    // `heartbeat_datagrams.rs` and `heartbeat_stream_failover.rs` check each.
    let again = wait_until(DELIVERY, || async move { answered_beats(agent_port) >= beats_before + 2 }).await;
    assert!(
        again,
        "beats not answered after the outage: {} then {}",
        beats_before,
        answered_beats(agent_port)
    );
    let o = object(&mut client, "disk/outage-1/sdc").await.unwrap();
    for w in &want {
        let n = o
            .history
            .iter()
            .filter(|h| h.detail.contains("disk.io-error") && h.detail.contains(w.as_str()))
            .count();
        assert_eq!(n, 1, "{w}: {n} history entries, expected exactly one:\n{:#?}", o.history);
    }
    // The outage's batch may have gone as a call (the dead stream could not carry it); the client now
    // sits at the new leader, so the next finding's batch goes over a new ingest stream there.
    let streamed = metric(agent_port, "huatuo_agent_batches_streamed").unwrap_or_default();
    append_io_errors(&kmsg, "sdc", &[700_000]);
    let after = sector_arrived(&masters, 700_000).await;
    assert!(after, "the finding after the outage never arrived");
    wait_for_metric(agent_port, "huatuo_agent_batches_streamed", streamed.max(batches_before) + 1).await;
}

/// Whether the masters record an I/O error at `sector` on disk/outage-1/sdc within [`DELIVERY`].
async fn sector_arrived(masters: &str, sector: u64) -> bool {
    let detail = format!("sector {sector} ");
    wait_until(DELIVERY, || {
        let (m, detail) = (masters.to_string(), detail.clone());
        async move {
            let mut c = Client::new(parse_addrs(&m));
            object(&mut c, "disk/outage-1/sdc")
                .await
                .is_some_and(|o| o.history.iter().any(|h| h.detail.contains(detail.as_str())))
        }
    })
    .await
}

/// A counter of the agent's /metrics (`NAME_total` as the exporter names counters), if it answers.
fn metric(port: u16, name: &str) -> Option<u64> {
    tests::metric(&http_get(port, "/metrics"), &format!("{name}_total"))
}

/// Heartbeats the agent had answered, by datagram or over its stream.
fn answered_beats(port: u16) -> u64 {
    ["huatuo_agent_heartbeats_datagram", "huatuo_agent_heartbeats_streamed"]
        .iter()
        .map(|m| metric(port, m).unwrap_or_default())
        .sum()
}

/// Wait until the agent's counter `name` reaches `at_least`; returns its value then.
async fn wait_for_metric(port: u16, name: &str, at_least: u64) -> u64 {
    let reached = wait_until(DELIVERY, || async move { metric(port, name).is_some_and(|n| n >= at_least) });
    assert!(reached.await, "{name} never reached {at_least}: {:?}", metric(port, name));
    metric(port, name).unwrap_or_default()
}

/// A plain HTTP GET on loopback; empty on any failure (the caller polls).
fn http_get(port: u16, path: &str) -> String {
    tests::http_get(&format!("127.0.0.1:{port}"), path).unwrap_or_default()
}
