//! The repair lifecycle end to end on real block devices (issue 7), with real processes: 3 masters, an
//! agent whose probes read a recorded host tree and whose worker acts on loop devices, the SDK's
//! storage-master example, and a webhook receiver on loopback.
//!
//! Two slots fail SMART (a recorded failing smartctl document). Each goes ERROR, the storage master
//! acknowledges evacuation, REPAIR files a ticket through the webhook exactly once although the receiver
//! fails the first two attempts, the "replacement" appears (a new loop device in the slot with a new serial,
//! found by the agent's own inventory), NEWBIE partitions, formats and pre-mounts it, TEST benchmarks it:
//! slot sdb passes and ends GOOD and mounted at its real mount point; slot sdc's model has an impossible
//! threshold, so its TEST fails, it goes back to REPAIR with an alert, and it is not mounted.
//!
//! Needs root (losetup, mkfs, mount), sfdisk/partx (util-linux, fdisk), e2fsprogs, and the `huatuo`
//! binary and SDK examples built (a workspace `cargo test` builds them).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT, free_port};
use proto::api;
use proto::client::{Client, parse_addrs};
use tests::{huatuo_bin, wait_until};

/// Bound on each stage of the story (checkers run every second; the benchmark takes about a second).
const STAGE: Duration = Duration::from_secs(90);

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loop device over a sparse file, detached (and anything mounted from it unmounted) on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(file: &Path, mib: u64) -> Loop {
        let f = std::fs::File::create(file).unwrap();
        f.set_len(mib << 20).unwrap();
        let out = Command::new("losetup").args(["-fP", "--show"]).arg(file).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        Loop { dev: String::from_utf8(out.stdout).unwrap().trim().to_string() }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Unmount every mount of the device or its partitions, then detach.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            for line in m.lines() {
                let mut f = line.split_whitespace();
                if let (Some(src), Some(dst)) = (f.next(), f.next())
                    && src.starts_with(&self.dev)
                {
                    let _ = Command::new("umount").arg("-l").arg(dst).status();
                }
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Where `dev` (or one of its partitions) is mounted, if anywhere.
fn mounted_at(dev: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (src, dst) = (f.next()?, f.next()?);
            src.starts_with(dev).then(|| dst.to_string())
        })
        .collect()
}

/// A webhook receiver: fails the first `fail_first` POSTs with 500, then files tickets T-1, T-2, ... (one
/// per idempotency key; a repeated key gets its ticket again with 409).
#[derive(Default)]
struct Receiver {
    attempts: Vec<(String, u16)>,
    tickets: BTreeMap<String, String>,
}

fn webhook(fail_first: usize) -> (String, Arc<Mutex<Receiver>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let state = Arc::new(Mutex::new(Receiver::default()));
    let st = state.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(s.try_clone().unwrap());
            let (mut len, mut key) = (0usize, String::new());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("idempotency-key:") {
                    key = line.split_once(':').unwrap().1.trim().to_string();
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let mut g = st.lock().unwrap();
            let (status, reply) = if g.attempts.len() < fail_first {
                (500, "{\"error\":\"try again\"}".to_string())
            } else if let Some(t) = g.tickets.get(&key) {
                (409, format!("{{\"id\":\"{t}\"}}"))
            } else {
                let t = format!("T-{}", g.tickets.len() + 1);
                g.tickets.insert(key.clone(), t.clone());
                (200, format!("{{\"id\":\"{t}\"}}"))
            };
            g.attempts.push((key, status));
            drop(g);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (addr, state)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn write_slot(root: &Path, slot: &str, serial: &str, model: &str) {
    let d = root.join("sys/block").join(slot).join("device");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("serial"), format!("{serial}\n")).unwrap();
    std::fs::write(d.join("model"), format!("{model}\n")).unwrap();
}

fn point_slot(devdir: &Path, slot: &str, dev: &str) {
    let link = devdir.join(slot);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dev, &link).unwrap();
}

/// A host root: the recorded procfs/sysfs tree, a boot id and an empty kmsg.
fn host_tree(repo: &Path, root: &Path) {
    copy_tree(&repo.join("checkers/testdata/host/procfs"), root);
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
        .unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("dev/kmsg"), "").unwrap();
}

/// Quotas for a one-host test cluster (the defaults are percentages of a fleet): everything may go.
async fn allow_all(cl: &mut Client) {
    let req = api::SetQuotasRequest {
        quotas: vec![api::QuotaRule {
            kind: "*".into(),
            scope: "cluster".into(),
            window_ms: 3_600_000,
            max_entries: "1000".into(),
            max_concurrent: "100%".into(),
        }],
        by: "test".into(),
        reason: "single test host".into(),
        ..Default::default()
    };
    cl.call(req, |mut c, r| async move { c.set_quotas(r).await }).await.unwrap();
}

/// Start `huatuo agent` with `d/agent.toml`, logging to `d/agent.log`; killed on drop.
fn spawn_agent(d: &Path) -> KillOnDrop {
    let log = std::fs::File::create(d.join("agent.log")).unwrap();
    KillOnDrop(
        Command::new(huatuo_bin())
            .args(["agent", "--config"])
            .arg(d.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn object(cl: &mut Client, id: &str) -> api::GetObjectResponse {
    let req = api::GetObjectRequest { id: id.into(), stale: false };
    cl.call(req, |mut c, r| async move { c.get_object(r).await }).await.unwrap()
}

/// The object's state, or "" while it does not exist yet.
async fn state_of(c: &LocalCluster, id: &str) -> String {
    let mut cl = Client::new(parse_addrs(&c.grpc_addrs()));
    let req = api::GetObjectRequest { id: id.into(), stale: false };
    match cl.call(req, |mut c, r| async move { c.get_object(r).await }).await {
        Ok(r) => r.object.map(|o| o.state).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_story_on_loop_devices() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The devices: the old disks (never touched) and their replacements.
    let old_b = Loop::new(&d.join("old-b.img"), 64);
    let old_c = Loop::new(&d.join("old-c.img"), 64);
    let new_b = Loop::new(&d.join("new-b.img"), 96);
    let new_c = Loop::new(&d.join("new-c.img"), 96);
    // Slot sdd fails too, but its ticket is closed without a real swap: the worker must refuse it.
    let old_d = Loop::new(&d.join("old-d.img"), 64);

    // The host as the agent's probes see it: a recorded procfs/sysfs tree with two disk slots.
    let root = d.join("root");
    host_tree(&repo, &root);
    let _ = std::fs::remove_dir_all(root.join("sys/block"));
    write_slot(&root, "sdb", "OLD-B-0001", "WDC WD40EFRX-68N");
    write_slot(&root, "sdc", "OLD-C-0001", "WDC WD40EFRX-68N");
    write_slot(&root, "sdd", "OLD-D-0001", "WDC WD40EFRX-68N");
    let devdir = d.join("dev");
    std::fs::create_dir_all(&devdir).unwrap();
    point_slot(&devdir, "sdb", &old_b.dev);
    point_slot(&devdir, "sdc", &old_c.dev);
    point_slot(&devdir, "sdd", &old_d.dev);

    // smartctl as the disk checker runs it: a recorded failing drive for a slot until it is replaced.
    let smart = repo.join("checkers/testdata/smart");
    let fake = d.join("smartctl");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n*--scan*) cat {scan};;\n*sdb*) if [ -e {d}/replaced-sdb ]; then cat {ok}; else cat {bad}; exit 216; fi;;\n\
             *sdc*) if [ -e {d}/replaced-sdc ]; then cat {ok}; else cat {bad}; exit 216; fi;;\n*sdd*) cat {ok};;\n\
             *) echo '{{}}'; exit 2;;\nesac\n",
            scan = smart.join("scan/smartctl_scan_simple.json").display(),
            ok = smart.join("smart-prom-next/sat_xall.json").display(),
            bad = smart.join("smart-prom-next/usbjmicron_a_when_failed_now.json").display(),
            d = d.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Masters with the webhook ticket sink; the receiver fails the first two attempts.
    let (hook, received) = webhook(2);
    let masters = LocalCluster::start_with_config(
        &huatuo_bin(),
        3,
        &format!(
            "[tickets]\nsink = \"webhook\"\nurl = \"http://{hook}/tickets\"\nbackoff_base_ms = 100\n\
             backoff_max_ms = 500\npoll_ms = 200\n"
        ),
    )
    .unwrap();
    masters.wait_leader(READY_TIMEOUT).await.expect("leader");
    let addrs = masters.grpc_addrs();
    let mut cl = Client::new(parse_addrs(&addrs));
    // Quotas for a 2-disk test host (the defaults are percentages of a fleet; here everything may go).
    allow_all(&mut cl).await;

    // The agent: disk checker every second on the recorded tree, worker allowed to act on the slots.
    let agent_port = free_port().unwrap();
    let masters_toml = addrs.split(',').map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let cfg = format!(
        r#"version = 1
host = "story"
data_dir = "{d}/agent"
masters = [{masters_toml}]
http_listen = "127.0.0.1:{agent_port}"
root = "{root}"
insecure = true
[net_probe]
listen = "127.0.0.1:0"
[report]
heartbeat_s = 1
inventory_s = 1
[checkers.disk]
interval_s = 1
settings = {{ smartctl = "{fake}" }}
[worker]
sys_root = "{root}/sys"
dev_root = "{devdir}"
[worker.disk]
allow_destructive = true
staging_root = "{d}/staging"
mount_root = "{d}/data"
bench_seconds = 1.0
bench_file_mib = 8
self_test = false
[worker.disk.tools]
smartctl = "{fake}"
[worker.disk.profiles.online]
min_seq_read_mbps = 1.0
min_seq_write_mbps = 1.0
[worker.disk.models."SLOWDISK"]
min_seq_read_mbps = 1000000000.0
"#,
        d = d.display(),
        root = root.display(),
        fake = fake.display(),
        devdir = devdir.display(),
    );
    std::fs::write(d.join("agent.toml"), cfg).unwrap();
    let _agent = spawn_agent(d);
    let log = || std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();

    // 1. sdb and sdc fail SMART; an external detector reports sdd (its SMART is fine). All three go
    // ERROR, waiting for the storage master's evacuation.
    let report = api::IngestRequest {
        agent: String::new(),
        seq: 0,
        findings: vec![api::Finding {
            object: "disk/story/sdd".into(),
            severity: "FATAL".into(),
            checker: "ops".into(),
            version: "1".into(),
            rule: "ops.bad-disk".into(),
            evidence: "reported by the storage system".into(),
            readings: Default::default(),
            time_ms: tests::now_ms(),
            shadow: false,
        }],
        epoch: 0,
    };
    cl.call(report, |mut c, r| async move { c.ingest(r).await }).await.unwrap();
    for slot in ["sdb", "sdc", "sdd"] {
        let id = format!("disk/story/{slot}");
        let ok = wait_until(STAGE, || {
            let (m, id) = (&masters, id.clone());
            async move { state_of(m, &id).await == "ERROR" }
        })
        .await;
        assert!(ok, "{id} did not go ERROR; agent log:\n{}", log());
    }
    // 2. The SDK example evacuates and acknowledges both; they go to REPAIR and tickets are filed.
    let example = huatuo_bin().parent().unwrap().join("examples/storage_master");
    let out = Command::new(&example)
        .args([
            "--master",
            &addrs,
            "--role",
            "storage",
            "--evacuate-ms",
            "100",
            "--max-acks",
            "3",
            "--host",
            "story",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "storage master: {}", String::from_utf8_lossy(&out.stderr));
    for slot in ["sdb", "sdc", "sdd"] {
        let id = format!("disk/story/{slot}");
        let filed = wait_until(STAGE, || {
            let (addrs, id) = (addrs.clone(), id.clone());
            async move {
                let mut cl = Client::new(parse_addrs(&addrs));
                let o = object(&mut cl, &id).await.object.unwrap();
                o.state == "REPAIR" && o.attributes.get("ticket").is_some_and(|t| t.starts_with("T-"))
            }
        })
        .await;
        assert!(filed, "{id}: no ticket filed; receiver saw {:?}", received.lock().unwrap().attempts);
    }
    {
        let r = received.lock().unwrap();
        assert_eq!(r.tickets.len(), 3, "exactly one ticket per repair: {:?}", r.attempts);
        assert_eq!(r.attempts.iter().filter(|(_, s)| *s == 500).count(), 2);
        // Every attempt carried the key of one of the two filings; no other key was ever sent.
        assert!(r.attempts.iter().all(|(k, _)| r.tickets.contains_key(k)), "{:?}", r.attempts);
    }

    // 3. The technician swaps the disks: new serials in the slots, new devices behind them.
    std::fs::write(d.join("replaced-sdb"), "").unwrap();
    std::fs::write(d.join("replaced-sdc"), "").unwrap();
    point_slot(&devdir, "sdb", &new_b.dev);
    point_slot(&devdir, "sdc", &new_c.dev);
    write_slot(&root, "sdb", "NEW-B-0002", "WDC WD40EFRX-68N");
    write_slot(&root, "sdc", "NEW-C-0002", "SLOWDISK 9000");

    // 4. sdb: NEWBIE (partition, mkfs, staging mount), TEST (benchmark) -> GOOD and mounted for real.
    let good = wait_until(STAGE, || async { state_of(&masters, "disk/story/sdb").await == "GOOD" }).await;
    let story = object(&mut cl, "disk/story/sdb").await;
    let hist: Vec<String> = story
        .history
        .iter()
        .map(|h| format!("{} {}->{} {} {}", h.what, h.from_state, h.to_state, h.cause, h.detail))
        .collect();
    let interesting: Vec<&String> = hist.iter().filter(|h| !h.starts_with("finding -> ")).collect();
    assert!(good, "sdb did not end GOOD:\n{interesting:#?}\nagent log:\n{}", log());
    let mounts = mounted_at(&new_b.dev);
    let real = d.join("data/sdb").display().to_string();
    assert!(mounts.contains(&real), "sdb's new disk is mounted at {mounts:?}, not {real}");
    assert!(mounted_at(&old_b.dev).is_empty(), "the old disk was never touched");
    for step in ["ERROR->REPAIR", "REPAIR->NEWBIE", "NEWBIE->TEST", "TEST->GOOD"] {
        assert!(hist.iter().any(|h| h.contains(step)), "history lacks {step}:\n{}", hist.join("\n"));
    }
    assert!(
        hist.iter().any(|h| h.contains("replacement") && h.contains("NEW-B-0002")),
        "{}",
        hist.join("\n")
    );

    // 5. sdc: TEST fails its model's threshold -> back to REPAIR with an alert, not mounted for real.
    let failed = wait_until(STAGE, || {
        let addrs = addrs.clone();
        async move {
            let mut cl = Client::new(parse_addrs(&addrs));
            let h = object(&mut cl, "disk/story/sdc").await;
            h.object.unwrap().state == "REPAIR"
                && h.history.iter().any(|e| e.from_state == "TEST" && e.to_state == "REPAIR")
        }
    })
    .await;
    let story = object(&mut cl, "disk/story/sdc").await;
    let hist: Vec<String> = story
        .history
        .iter()
        .map(|h| format!("{} {}->{} {} {}", h.what, h.from_state, h.to_state, h.cause, h.detail))
        .collect();
    assert!(failed, "sdc did not fail TEST back to REPAIR:\n{}\nagent log:\n{}", hist.join("\n"), log());
    assert!(!mounted_at(&new_c.dev).contains(&d.join("data/sdc").display().to_string()));
    let req = api::GetSafetyRequest {};
    let s = cl.call(req, |mut c, r| async move { c.get_safety(r).await }).await.unwrap();
    assert!(
        s.alerts.iter().any(|a| a.object == "disk/story/sdc" && a.message.contains("test failed")),
        "an operator alert names the failed test: {:?}",
        s.alerts
    );

    // 6. sdd: the repair system says "part replaced" but the slot still holds the failed disk. NEWBIE's
    // provisioning is refused (the serial is the one that went to REPAIR), the disk goes back to REPAIR
    // with an alert, and the old disk was not touched (no partition table, nothing mounted).
    let o = object(&mut cl, "disk/story/sdd").await.object.unwrap();
    let ticket = o.attributes.get("ticket").cloned().unwrap();
    let out = Command::new(huatuo_bin())
        .args(["ticket", "update", "disk/story/sdd", &ticket, "part-replaced", "--master", &addrs])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = wait_until(STAGE, || {
        let addrs = addrs.clone();
        async move {
            let mut cl = Client::new(parse_addrs(&addrs));
            let h = object(&mut cl, "disk/story/sdd").await;
            h.history.iter().any(|e| e.from_state == "NEWBIE" && e.to_state == "REPAIR")
        }
    })
    .await;
    let story = object(&mut cl, "disk/story/sdd").await;
    let hist: Vec<String> = story
        .history
        .iter()
        .filter(|h| h.what != "finding")
        .map(|h| format!("{} {}->{} {} {}", h.what, h.from_state, h.to_state, h.cause, h.detail))
        .collect();
    assert!(refused, "sdd's provisioning was not refused:\n{hist:#?}\nagent log:\n{}", log());
    assert!(hist.iter().any(|h| h.contains("still holds the old disk")), "{hist:#?}");
    let blkid = Command::new("blkid").arg("-p").arg(&old_d.dev).output().unwrap();
    assert!(
        !blkid.status.success() || blkid.stdout.is_empty(),
        "old disk was written: {}",
        String::from_utf8_lossy(&blkid.stdout)
    );
    assert!(mounted_at(&old_d.dev).is_empty());
    let s = cl.call(api::GetSafetyRequest {}, |mut c, r| async move { c.get_safety(r).await }).await.unwrap();
    assert!(
        s.alerts.iter().any(|a| a.object == "disk/story/sdd" && a.message.contains("provision failed")),
        "{:?}",
        s.alerts
    );
    drop(masters);
}

/// The machine story: a read-only root filesystem sends the machine to ERROR; the scheduler drains it; FIX
/// restarts the configured service (the condition clears) and the machine is GOOD again. When the same
/// fault comes back within the window, the FIX ladder goes to a reboot — a dry run in this config, which
/// reports failure — so the machine goes to REPAIR with an alert instead of restarting the service forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machine_story_fix_ladder() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    host_tree(&repo, &root);
    // The "service restart": records that it ran (the condition is cleared by it).
    let restarts = d.join("restarts");
    let script = d.join("restart.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" >> {}\n", restarts.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let masters = LocalCluster::start_with_config(
        &huatuo_bin(),
        3,
        "[policy.fix_by_rule]\n\"root-fs-readonly\" = \"restart-service\"\n",
    )
    .unwrap();
    masters.wait_leader(READY_TIMEOUT).await.expect("leader");
    let addrs = masters.grpc_addrs();
    let mut cl = Client::new(parse_addrs(&addrs));
    allow_all(&mut cl).await;
    let agent_port = free_port().unwrap();
    let masters_toml = addrs.split(',').map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let cfg = format!(
        r#"version = 1
host = "m1"
data_dir = "{d}/agent"
masters = [{masters_toml}]
http_listen = "127.0.0.1:{agent_port}"
root = "{root}"
insecure = true
[net_probe]
listen = "127.0.0.1:0"
[report]
heartbeat_s = 1
[worker.machine]
restart_command = ["{script}", "{{service}}"]
services = ["app.service"]
default_service = "app.service"
reboot_dry_run = true
"#,
        d = d.display(),
        root = root.display(),
        script = script.display(),
    );
    std::fs::write(d.join("agent.toml"), cfg).unwrap();
    let _agent = spawn_agent(d);
    let log = || std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
    assert!(
        wait_until(STAGE, || async { state_of(&masters, "machine/m1").await == "GOOD" }).await,
        "{}",
        log()
    );

    let fault = |t: u64| api::IngestRequest {
        agent: String::new(),
        seq: 0,
        findings: vec![api::Finding {
            object: "machine/m1".into(),
            severity: "ERROR".into(),
            checker: "machine".into(),
            version: "1.0.0".into(),
            rule: "root-fs-readonly".into(),
            evidence: "/ is mounted read-only".into(),
            readings: Default::default(),
            time_ms: tests::now_ms() + t,
            shadow: false,
        }],
        epoch: 0,
    };
    let drained = || api::CommandRequest {
        object: "machine/m1".into(),
        kind: "ack".into(),
        name: "drained".into(),
        by: "scheduler".into(),
        ..Default::default()
    };
    // First time: ERROR, drained, FIX restarts the service, GOOD.
    cl.call(fault(1), |mut c, r| async move { c.ingest(r).await }).await.unwrap();
    assert!(wait_until(STAGE, || async { state_of(&masters, "machine/m1").await == "ERROR" }).await);
    let o = object(&mut cl, "machine/m1").await.object.unwrap();
    assert_eq!(
        (o.waiting_ack.as_str(), o.waiting_role.as_str()),
        ("drained", "scheduler"),
        "ERROR waits for the drain"
    );
    cl.call(drained(), |mut c, r| async move { c.command(r).await }).await.unwrap();
    let back = wait_until(STAGE, || async { state_of(&masters, "machine/m1").await == "GOOD" }).await;
    assert!(back, "the service restart did not bring the machine back:\n{}", log());
    assert_eq!(std::fs::read_to_string(&restarts).unwrap(), "app.service\n");

    // Again within the window: the ladder reboots (dry run -> not fixed) and the machine goes to REPAIR.
    cl.call(fault(2), |mut c, r| async move { c.ingest(r).await }).await.unwrap();
    assert!(wait_until(STAGE, || async { state_of(&masters, "machine/m1").await == "ERROR" }).await);
    cl.call(drained(), |mut c, r| async move { c.command(r).await }).await.unwrap();
    let repair = wait_until(STAGE, || async { state_of(&masters, "machine/m1").await == "REPAIR" }).await;
    let h = object(&mut cl, "machine/m1").await;
    let hist: Vec<String> = h
        .history
        .iter()
        .filter(|e| e.what != "finding")
        .map(|e| format!("{} {}->{} {} {}", e.what, e.from_state, e.to_state, e.cause, e.detail))
        .collect();
    assert!(repair, "no REPAIR after the ladder:\n{hist:#?}\n{}", log());
    assert!(hist.iter().any(|e| e.contains("run fix:restart-service")), "{hist:#?}");
    assert!(hist.iter().any(|e| e.contains("run fix:reboot")), "{hist:#?}");
    assert_eq!(
        std::fs::read_to_string(&restarts).unwrap().lines().count(),
        1,
        "the service was restarted once, not looped"
    );
    let s = cl.call(api::GetSafetyRequest {}, |mut c, r| async move { c.get_safety(r).await }).await.unwrap();
    assert!(
        s.alerts.iter().any(|a| a.object == "machine/m1" && a.message.contains("fix:reboot failed")),
        "{:?}",
        s.alerts
    );
}
