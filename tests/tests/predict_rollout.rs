//! The disk-failure predictor in the product (issue 20, part 3), with real processes: a 3-node `huatuo
//! master` cluster on loopback and real `huatuo agent` processes whose disk checker runs a fake `smartctl`
//! (a shell script printing recorded SATA reports, one file per slot) below each agent's own host tree.
//!
//! `a_good_model_flags_the_failing_disk_and_a_bad_model_is_held_by_the_safety_net` (3 masters, 4 agents,
//! 20 disks; one disk, `disk/pred-0/sdc`, reports 100,000 command timeouts, SMART attribute 188):
//! - bad model files are refused at push on gRPC and the CLI (does not parse; threshold out of range; a
//!   sha256 that differs) and the catalog does not change;
//! - a good model (`disk-failure@1`, promoted) reaches every agent through the catalog, and the failing disk
//!   goes WARNING with cause `predicted-failure` and its top feature in the evidence, while the 19 others
//!   stay GOOD with a `failure_probability` reading;
//! - a bad model (`disk-failure@2`, "every disk fails") rolled out to 100% does not move the fleet: its
//!   predictions are counted in the scope `checker=disk-failure@2` by the spike detector (`min` 2 here, so
//!   one disk may move before it trips), the scope latches into manual drive, the gray rollout is paused by
//!   the master, and the held transitions are pending proposals.
//!
//! Every wait is a condition with a bounded deadline. Needs the `huatuo` binary (see `tests::huatuo_bin`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use master::cluster::{LocalCluster, READY_TIMEOUT, free_port};
use proto::api;
use proto::client::{Client, parse_addrs};
use sha2::{Digest, Sha256};
use tests::{huatuo_bin, wait_until};

/// Simulated hosts and the disk slots of each (20 disks).
const AGENTS: usize = 4;
const DISKS: [&str; 5] = ["sda", "sdb", "sdc", "sdd", "sde"];
/// The one failing disk (many command timeouts).
const FAILING: &str = "disk/pred-0/sdc";
/// Bound on a condition that must come true: far above what it takes, so only a real failure reaches it.
const WAIT: Duration = Duration::from_secs(120);
/// The model's catalog name.
const MODEL: &str = "disk-failure";
/// The spike rule's `min` in this scenario: a bad model may move at most `SPIKE_MIN - 1` disks.
const SPIKE_MIN: u64 = 2;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_file(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("checkers/testdata/predict").join(name)).unwrap()
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

/// A host: the recorded procfs/sysfs tree with five slots (serial, model), and a fake smartctl that scans
/// those slots as SATA disks and prints `smart-SLOT.json` for a probe of `/dev/SLOT`: a recorded healthy
/// SATA report, with attribute 188 (command timeouts) at 100,000 for the slots in `failing`.
fn host(dir: &Path, index: usize, failing: &[&str]) -> (PathBuf, PathBuf) {
    let root = dir.join("root");
    copy_tree(&repo().join("checkers/testdata/host/procfs"), &root);
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
        .unwrap();
    let base: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("checkers/testdata/smart/smart-prom-next/sat_xall.json")).unwrap(),
    )
    .unwrap();
    let mut devices = Vec::new();
    for (i, dev) in DISKS.iter().enumerate() {
        let serial = format!("PRED{index}-{i:04}");
        let d = root.join("sys/block").join(dev).join("device");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("serial"), format!("{serial}\n")).unwrap();
        std::fs::write(d.join("model"), "ST8000DM002\n").unwrap();
        let mut r = base.clone();
        r["device"] = serde_json::json!({"name": format!("/dev/{dev}"), "info_name": format!("/dev/{dev} [SAT]"),
            "type": "sat", "protocol": "ATA"});
        r["serial_number"] = serial.into();
        if failing.contains(dev) {
            let t = r["ata_smart_attributes"]["table"].as_array_mut().unwrap();
            t.push(serde_json::json!({"id": 188, "name": "Command_Timeout", "value": 100, "worst": 100,
                "thresh": 0, "when_failed": "", "flags": {"value": 50, "prefailure": false},
                "raw": {"value": 100_000, "string": "100000"}}));
        }
        std::fs::write(dir.join(format!("smart-{dev}.json")), serde_json::to_vec(&r).unwrap()).unwrap();
        devices.push(serde_json::json!({"name": format!("/dev/{dev}"), "info_name": format!("/dev/{dev}"),
            "type": "sat", "protocol": "ATA"}));
    }
    let scan = serde_json::json!({"json_format_version": [1, 0], "devices": devices});
    std::fs::write(dir.join("scan.json"), serde_json::to_vec(&scan).unwrap()).unwrap();
    let fake = dir.join("smartctl");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n*--scan*) cat {d}/scan.json;;\n*) for a; do last=$a; done; \
             cat \"{d}/smart-${{last##*/}}.json\";;\nesac\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    (root, fake)
}

/// A real `huatuo agent`: heartbeat every second, the disk checker every second with the fake smartctl,
/// the checkers this scenario does not need off.
fn start_agent(bin: &Path, dir: &Path, name: &str, masters: &str, failing: &[&str]) -> KillOnDrop {
    let index: usize = name.trim_start_matches("pred-").parse().unwrap();
    let (root, fake) = host(dir, index, failing);
    let masters: Vec<String> = parse_addrs(masters).iter().map(|m| format!("{m:?}")).collect();
    let cfg = format!(
        "version = 1\nhost = {name:?}\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{}\"\n\
         root = {:?}\ninsecure = true\n[labels]\nrack = \"r{}\"\n[net_probe]\nlisten = \"127.0.0.1:0\"\n\
         [report]\nheartbeat_s = 1\nbackoff_max_s = 1\n\
         [checkers.disk]\ninterval_s = 1\nsettings = {{ smartctl = {:?} }}\n[checkers.machine]\nenabled = false\n\
         [checkers.nic]\nenabled = false\n[checkers.edac]\nenabled = false\n[checkers.rasdaemon]\nenabled = false\n\
         [checkers.kernel-log]\nenabled = false\n",
        dir.join("agent-data").display().to_string(),
        masters.join(", "),
        free_port().unwrap(),
        root.display().to_string(),
        index % 2,
        fake.display().to_string(),
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

fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `huatuo ARGS --master M --insecure`: (success, stdout, stderr).
fn cli(bin: &Path, masters: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin)
        .args(args)
        .args(["--master", masters, "--insecure"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn push_request(version: &str, content: Vec<u8>) -> api::PushArtifactRequest {
    api::PushArtifactRequest {
        name: MODEL.into(),
        version: version.into(),
        r#type: "model".into(),
        sha256: sha256_hex(&content),
        content,
        description: format!("predict_rollout test {MODEL}@{version}"),
        spec: None,
        by: "predict-test".into(),
    }
}

async fn push(c: &mut Client, version: &str, content: Vec<u8>) -> Result<api::PushArtifactResponse, String> {
    let req = push_request(version, content);
    c.call(req, |mut c, r| async move { c.push_artifact(r).await }).await.map_err(|e| format!("{e:?}"))
}

async fn objects(c: &mut Client) -> Vec<api::Object> {
    let req = api::ListObjectsRequest { kind: "disk".into(), ..Default::default() };
    c.call(req, |mut c, r| async move { c.list_objects(r).await })
        .await
        .map(|r| r.objects)
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.host.starts_with("pred-"))
        .collect()
}

async fn object(c: &mut Client, id: &str) -> Option<api::Object> {
    let req = api::GetObjectRequest { id: id.into(), stale: false };
    c.call(req, |mut c, r| async move { c.get_object(r).await }).await.ok().and_then(|r| r.object)
}

/// The disk checker's latest finding about an object, if the master has one.
fn disk_finding(o: &api::Object) -> Option<&api::Finding> {
    o.evidence.iter().find(|f| f.checker == "disk")
}

async fn proposals(c: &mut Client) -> Vec<api::Proposal> {
    let req = api::ListProposalsRequest { status: "pending".into(), limit: 1000, ..Default::default() };
    c.call(req, |mut c, r| async move { c.list_proposals(r).await })
        .await
        .map(|r| r.proposals)
        .unwrap_or_default()
}

async fn rollout_status(c: &mut Client) -> api::RolloutStatusResponse {
    let req = api::RolloutStatusRequest { name: MODEL.into() };
    c.call(req, |mut c, r| async move { c.rollout_status(r).await }).await.unwrap_or_default()
}

/// A plain HTTP GET on loopback: (status, body); (0, "") on any failure (callers poll).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    tests::http_answer(addr, path).unwrap_or_default()
}

/// Whether the leader's REST safety view shows `scope` latched into manual drive.
async fn latched(cluster: &LocalCluster, scope: &str) -> bool {
    let Some(leader) = cluster.wait_leader(READY_TIMEOUT).await else { return false };
    let (status, body) = http_get(&cluster.nodes[&leader].http, "/api/v1/safety");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    status == 200
        && v["scopes"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["scope"].as_str() == Some(scope) && x["latched"] == true && x["level"] == "manual")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_model_flags_the_failing_disk_and_a_bad_model_is_held_by_the_safety_net() {
    let bin = huatuo_bin();
    let cluster = LocalCluster::start_with_config(&bin, 3, "").expect("start masters");
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", cluster.log_tail(1));
    let masters = cluster.grpc_addrs();
    let mut c = cluster.client();
    // The scenario's spike rule: a model version's predictions latch its scope at the second disk.
    let cfg = master::safety::SafetyConfig {
        spike: master::safety::SpikeRule {
            window_ms: 3_600_000,
            min: SPIKE_MIN,
            share: master::safety::Limit::Count(1),
        },
        ..Default::default()
    };
    let set = api::SetQuotasRequest {
        quotas: Vec::new(),
        by: "predict-test".into(),
        reason: "a spike rule for a 20-disk fleet".into(),
        config_json: serde_json::to_string(&cfg).unwrap(),
    };
    c.call(set, |mut c, r| async move { c.set_quotas(r).await }).await.expect("set the safety config");

    let work = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..AGENTS).map(|i| work.path().join(format!("pred-{i}"))).collect();
    let _agents: Vec<KillOnDrop> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            std::fs::create_dir_all(d).unwrap();
            let failing: &[&str] = if i == 0 { &["sdc"] } else { &[] };
            start_agent(&bin, d, &format!("pred-{i}"), &masters, failing)
        })
        .collect();
    // Every disk registered and graded GOOD by its agent's disk checker (in service, so it can move).
    let up = wait_until(WAIT, || {
        let mut c = cluster.client();
        async move {
            let disks = objects(&mut c).await;
            disks.len() == AGENTS * DISKS.len()
                && disks
                    .iter()
                    .all(|o| o.state == "GOOD" && disk_finding(o).is_some_and(|f| f.severity == "GOOD"))
        }
    })
    .await;
    assert!(up, "disks not all GOOD within {WAIT:?}: {:#?}\n{}", objects(&mut c).await, log_tail(&dirs[0]));
    let f = object(&mut c, FAILING).await.and_then(|o| disk_finding(&o).cloned()).unwrap();
    assert_eq!(f.readings.get("smart_188_raw").map(String::as_str), Some("100000"), "{:?}", f.readings);
    assert!(!f.readings.contains_key("failure_probability"), "no model yet: {:?}", f.readings);

    // Pushing a model needs command version 6, which the leader enables by itself once every member knows it.
    let good = model_file("command-timeouts.json");
    let deadline = Instant::now() + WAIT;
    loop {
        match push(&mut c, "1", good.clone()).await {
            Ok(_) => break,
            Err(e) if e.contains("min_command_version") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("push {MODEL}@1: {e}"),
        }
    }

    // Bad model files: refused with a clear error, on gRPC and the CLI alike, and nothing changes.
    let before = rollout_status(&mut c).await;
    let e = push(&mut c, "9", b"{not json".to_vec()).await.unwrap_err();
    assert!(e.contains("InvalidArgument") && e.contains("does not parse"), "{e}");
    let bad_threshold =
        String::from_utf8(good.clone()).unwrap().replace("\"threshold\": 0.5", "\"threshold\": 1.5");
    let e = push(&mut c, "9", bad_threshold.clone().into_bytes()).await.unwrap_err();
    assert!(e.contains("threshold 1.5 is not strictly between 0 and 1"), "{e}");
    let mut wrong_sha = push_request("9", good.clone());
    wrong_sha.sha256 = sha256_hex(b"other bytes");
    let e = c.call(wrong_sha, |mut c, r| async move { c.push_artifact(r).await }).await.unwrap_err();
    assert_eq!(e.code, proto::error::Code::InvalidArgument, "{e:?}");
    let file = work.path().join("bad-model.json");
    std::fs::write(&file, &bad_threshold).unwrap();
    let (ok, out, err) = cli(
        &bin,
        &masters,
        &["catalog", "push", file.to_str().unwrap(), "--name", MODEL, "--version", "9", "--type", "model"],
    );
    assert!(!ok && err.contains("threshold 1.5"), "the CLI refuses it too:\nstdout: {out}\nstderr: {err}");
    let after = rollout_status(&mut c).await;
    assert_eq!(before, after, "a refused push changes nothing");

    // The good model, promoted: every agent fetches and verifies it; the failing disk goes WARNING with cause
    // predicted-failure and its top feature in the evidence; the others stay GOOD, scored.
    let t = Instant::now();
    let (ok, out, err) =
        cli(&bin, &masters, &["rollout", "promote", &format!("{MODEL}@1"), "--reason", "good model"]);
    assert!(ok, "promote: {out} {err}");
    let flagged = wait_until(WAIT, || {
        let mut c = cluster.client();
        async move { object(&mut c, FAILING).await.is_some_and(|o| o.state == "WARNING") }
    })
    .await;
    let o = object(&mut c, FAILING).await.unwrap();
    assert!(flagged, "{FAILING} not WARNING within {WAIT:?}: {o:#?}\n{}", log_tail(&dirs[0]));
    println!(
        "good model promoted -> {FAILING} WARNING predicted-failure: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let f = disk_finding(&o).unwrap();
    assert_eq!((f.severity.as_str(), f.rule.as_str()), ("WARNING", "predicted-failure"), "{f:#?}");
    assert!(f.evidence.contains("top features: raw_188=11.513"), "{}", f.evidence);
    assert_eq!(f.readings.get("model_version").map(String::as_str), Some("disk-failure@1"));
    let p: f64 = f.readings["failure_probability"].parse().unwrap();
    assert!(p > 0.99, "{:?}", f.readings);
    for o in objects(&mut c).await.iter().filter(|o| o.id != FAILING) {
        let f = disk_finding(o).unwrap();
        assert_eq!(o.state, "GOOD", "{o:#?}");
        // Scored by the model (or, on a host that has not swapped yet, not yet): never flagged.
        if let Some(p) = f.readings.get("failure_probability") {
            assert!(p.parse::<f64>().unwrap() < 0.01, "{o:#?}");
        }
    }

    // The bad model, rolled out to every host: predictions on all 20 disks at once. Its scope's spike
    // detector trips at the second disk; the scope latches, the rollout pauses, the rest are proposals.
    push(&mut c, "2", model_file("everything-fails.json")).await.expect("push the bad model");
    let t = Instant::now();
    let (ok, out, err) = cli(
        &bin,
        &masters,
        &["rollout", "start", &format!("{MODEL}@2"), "--percent", "100", "--reason", "new model"],
    );
    assert!(ok, "rollout start: {out} {err}");
    let scope = format!("checker={MODEL}@2");
    let others = (AGENTS * DISKS.len() - 1) as u64;
    let held = wait_until(WAIT, || {
        let (mut c, scope, cluster) = (cluster.client(), scope.clone(), &cluster);
        async move {
            let pending = proposals(&mut c).await;
            let held =
                pending.iter().filter(|p| p.to_state == "WARNING" && p.scopes.contains(&scope)).count();
            held as u64 >= others - (SPIKE_MIN - 1) && latched(cluster, &scope).await
        }
    })
    .await;
    let pending = proposals(&mut c).await;
    assert!(held, "not held within {WAIT:?}: {pending:#?}\n{}", log_tail(&dirs[1]));
    println!(
        "bad model rolled out -> {} transitions held as proposals, {scope} latched: {:.1} s",
        pending.len(),
        t.elapsed().as_secs_f64()
    );
    let p = pending.iter().find(|p| p.scopes.contains(&scope)).unwrap();
    assert!(p.cause.contains("predicted-failure") || p.evidence.contains("predicted"), "{p:#?}");
    assert!(p.reason.contains("checker version spike") || p.reason.contains("manual drive"), "{p:#?}");
    // The fleet did not move: besides the disk the good model flagged, at most SPIKE_MIN - 1 disks.
    let warning: Vec<String> =
        objects(&mut c).await.into_iter().filter(|o| o.state != "GOOD").map(|o| o.id).collect();
    assert!(
        warning.len() as u64 <= SPIKE_MIN && warning.contains(&FAILING.to_string()),
        "the bad model moved {warning:?}"
    );
    // The master paused the model's gray rollout itself.
    let s = rollout_status(&mut c).await;
    let r = s.checkers.iter().flat_map(|c| &c.rollouts).find(|r| r.version == "2").unwrap();
    assert!(r.status == "paused" && r.auto_paused, "{r:#?}");
}
