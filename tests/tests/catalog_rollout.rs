//! Versioned checkers end to end (issue 15, PRODUCT.md section 7), with real processes: a 3-node `huatuo
//! master` cluster on loopback and real `huatuo agent` processes (separate data dirs, one recorded host tree
//! from checkers/testdata/host/procfs with five disks sda..sde), driven through the operator CLI (`huatuo
//! rollout ...`), gRPC (`PushArtifact` with an explicit schedule, `RolloutStatus`, `ListAgents`) and REST.
//!
//! - `external_checker_release_canary_stop_rollback_tamper_and_failover` (3 masters, 20 agents): an external
//!   checker v1 (a shell script printing one GOOD finding per disk) rolled out to 10% then 100%: every agent
//!   runs it within 3 heartbeats; a leader `kill -9` during the 10% gray changes no host's assignment; v2
//!   (flags every disk ERROR) as a shadow canary on 20% is paused by the master itself with the deviation
//!   numbers in `huatuo rollout status`, `huatuo inspect` and REST, and not one object changes state; v3 (the
//!   same script) without shadow trips the checker-version spike detector, which latches its scope and pauses
//!   the rollout; rollback returns every canary host to v1 within 3 heartbeats; a tampered artifact file on
//!   one agent is refused before it runs and reported as `checker.unverified`.
//! - `rule_set_hot_reload_keeps_the_kmsg_cursor` (3 masters, 1 agent): a pushed kernel-log rule set v2 with a
//!   new rule changes detection without restarting the agent and without re-reading lines written before;
//!   a rule set that does not compile is refused at push and changes nothing.
//!
//! "Within 3 heartbeats" is measured from the moment the rollout command returned to the moment the master
//! counts every targeted host as running the version (`RolloutStatus`), and asserted against 3 agent
//! heartbeat intervals plus `OBSERVE` (the test's own polling of the master). Every wait is a condition with
//! a bounded deadline. Needs the `huatuo` binary (see `tests::huatuo_bin`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

// The portal check drives headless Chromium (as tests/tests/portal_browser.rs does); this test uses a part
// of the driver only.
#[path = "support/cdp.rs"]
#[allow(dead_code)]
mod cdp;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use master::cluster::{LocalCluster, READY_TIMEOUT, free_port};
use proto::api;
use proto::client::{Client, parse_addrs};
use sha2::{Digest, Sha256};
use tests::{huatuo_bin, wait_until};

/// The agents' heartbeat interval (`[report] heartbeat_s`, the smallest the agent accepts).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// What the test adds to "3 heartbeats" for observing the master (a status poll every 50 ms, each call up
/// to a few ms on a loaded machine, plus the master's own bookkeeping of the heartbeat).
const OBSERVE: Duration = Duration::from_secs(1);
/// The simulated fleet: enough hosts that 10% and 20% are whole, distinct host sets.
const AGENTS: usize = 20;
/// Disks of every host (the recorded tree's slots, see `host_root`).
const DISKS: [&str; 5] = ["sda", "sdb", "sdc", "sdd", "sde"];
/// Bound on a condition that must come true (agents up, a canary stop, a finding arriving): far above
/// what it takes, so only a real failure reaches it.
const WAIT: Duration = Duration::from_secs(90);
/// The external checker's run interval in the pushed spec: a run per heartbeat.
const RUN_INTERVAL_MS: u64 = 1000;
/// The external checker's name in the catalog.
const PROBE: &str = "probe";
/// Master settings for these tests: a short canary comparison window (`[canary] window_ms`), so a canary
/// stop is decided within seconds rather than the production window of 10 minutes.
const MASTER_CONFIG: &str = "[canary]\nwindow_ms = 5000\n";

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

/// Make `dir` and its parents up to `/tmp` readable by others: an agent running as root runs external
/// checkers as an unprivileged user, who must be able to read the host tree (tempdirs are 0700).
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == Path::new("/") || p == std::env::temp_dir() {
            break;
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        d = p.parent();
    }
}

/// A host root: the recorded procfs/sysfs tree, a boot id, five disk slots with identities, and a raw
/// kmsg file with real benign records.
fn host_root(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = dir.join("root");
    copy_tree(&repo.join("checkers/testdata/host/procfs"), &root);
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
        .unwrap();
    for (i, dev) in DISKS.iter().enumerate() {
        let d = root.join("sys/block").join(dev).join("device");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("serial"), format!("WD-WCC4E000000{i}\n")).unwrap();
        std::fs::write(d.join("model"), "WDC WD40EFRX-68N\n").unwrap();
    }
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let benign = std::fs::read_to_string(repo.join("checkers/testdata/kernel-log/gpud/kmsg.1.log")).unwrap();
    let first: Vec<&str> = benign.lines().filter(|l| !l.starts_with(' ')).take(40).collect();
    std::fs::write(root.join("dev/kmsg"), first.join("\n") + "\n").unwrap();
    open_up(dir);
    root
}

/// Append raw kmsg records (`3,SEQ,USEC,-;TEXT`) after the file's last sequence number.
fn append_kmsg(kmsg: &Path, lines: &[String]) {
    let text = std::fs::read_to_string(kmsg).unwrap();
    let mut seq = text.lines().filter_map(|l| l.split(',').nth(1)?.parse::<u64>().ok()).max().unwrap_or(0);
    let mut f = std::fs::OpenOptions::new().append(true).open(kmsg).unwrap();
    for l in lines {
        seq += 1;
        writeln!(f, "3,{seq},{},-;{l}", 400_000_000 + seq * 1000).unwrap();
    }
    f.sync_all().unwrap();
}

struct Agent {
    host: String,
    dir: PathBuf,
    proc: KillOnDrop,
}

/// Start a real `huatuo agent`: heartbeat every second, the built-in checkers the scenario does not need
/// switched off (20 agents share 2 cores with the masters), `kernel_log` on only when asked.
fn start_agent(
    bin: &Path,
    dir: &Path,
    host: &str,
    root: &Path,
    masters: &str,
    rack: &str,
    kernel_log: bool,
) -> Agent {
    std::fs::create_dir_all(dir).unwrap();
    open_up(dir);
    let masters: Vec<String> = parse_addrs(masters).iter().map(|m| format!("{m:?}")).collect();
    let kl = if kernel_log { "enabled = true\ninterval_s = 1" } else { "enabled = false" };
    let cfg = format!(
        "version = 1\nhost = {host:?}\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{}\"\n\
         root = {:?}\n[labels]\nrack = {rack:?}\n[net_probe]\nlisten = \"127.0.0.1:0\"\n[report]\nheartbeat_s = 1\nbackoff_max_s = 1\n\
         [checkers.disk]\ninterval_s = 5\n[checkers.machine]\nenabled = false\n[checkers.nic]\nenabled = false\n\
         [checkers.edac]\nenabled = false\n[checkers.rasdaemon]\nenabled = false\n[checkers.kernel-log]\n{kl}\n",
        dir.join("agent-data").display().to_string(),
        masters.join(", "),
        free_port().unwrap(),
        root.display().to_string(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let proc = KillOnDrop(
        Command::new(bin)
            .args(["agent", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    Agent { host: host.to_string(), dir: dir.to_path_buf(), proc }
}

fn agent_log(a: &Agent) -> String {
    let text = std::fs::read_to_string(a.dir.join("agent.log")).unwrap_or_default();
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

/// A CLI command that must succeed; its stdout.
fn cli_ok(bin: &Path, masters: &str, args: &[&str]) -> String {
    let (ok, out, err) = cli(bin, masters, args);
    assert!(ok, "huatuo {args:?} failed:\nstdout: {out}\nstderr: {err}");
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// An external checker script printing one finding per disk slot of its host with `severity`.
fn disk_script(severity: &str, rule: &str, tag: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\n# {tag}\nfor d in \"$HUATUO_ROOT\"/sys/block/sd*; do\n  n=${{d##*/}}\n  \
         printf '{{\"object\":\"disk/%s/%s\",\"severity\":\"{severity}\",\"rule\":\"{rule}\",\"evidence\":\"{tag} \
         on %s\"}}\\n' \"$HUATUO_HOST\" \"$n\" \"$n\"\ndone\n"
    )
    .into_bytes()
}

fn push_request(name: &str, version: &str, kind: &str, content: Vec<u8>) -> api::PushArtifactRequest {
    api::PushArtifactRequest {
        name: name.into(),
        version: version.into(),
        r#type: kind.into(),
        sha256: sha256_hex(&content),
        content,
        description: format!("catalog_rollout test {name}@{version}"),
        spec: (kind == "external").then(|| api::ArtifactSpec {
            interval_ms: RUN_INTERVAL_MS,
            timeout_ms: 10_000,
            max_output_bytes: 64 << 10,
            kinds: vec!["disk".into()],
            max_memory_bytes: 256 << 20,
            max_cpu_ms: 5_000,
        }),
        by: "catalog-test".into(),
    }
}

async fn push(
    c: &mut Client,
    name: &str,
    version: &str,
    kind: &str,
    content: Vec<u8>,
) -> api::PushArtifactResponse {
    let req = push_request(name, version, kind, content);
    c.call(req, |mut c, r| async move { c.push_artifact(r).await })
        .await
        .unwrap_or_else(|e| panic!("push {name}@{version}: {e:?}"))
}

async fn rollout_status(c: &mut Client, name: &str) -> api::RolloutStatusResponse {
    let req = api::RolloutStatusRequest { name: name.into() };
    c.call(req, |mut c, r| async move { c.rollout_status(r).await }).await.unwrap_or_default()
}

fn checker<'a>(s: &'a api::RolloutStatusResponse, name: &str) -> Option<&'a api::CheckerDistribution> {
    s.checkers.iter().find(|c| c.name == name)
}

fn count(s: &api::RolloutStatusResponse, name: &str, version: &str, shadow: bool) -> api::VersionCount {
    checker(s, name)
        .and_then(|c| c.versions.iter().find(|v| v.version == version && v.shadow == shadow))
        .cloned()
        .unwrap_or_default()
}

fn rollout<'a>(s: &'a api::RolloutStatusResponse, name: &str, version: &str) -> Option<&'a api::Rollout> {
    checker(s, name).and_then(|c| c.rollouts.iter().find(|r| r.version == version))
}

/// Wait until the master counts `want(count)` for NAME@VERSION; returns how long it took from `since`.
async fn wait_count(
    c: &mut Client,
    name: &str,
    version: &str,
    shadow: bool,
    since: Instant,
    what: &str,
    want: impl Fn(&api::VersionCount) -> bool,
) -> Duration {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = rollout_status(c, name).await;
        if want(&count(&s, name, version, shadow)) {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}; the master says {s:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_within_3_heartbeats(what: &str, took: Duration) {
    println!("{what}: {:.2} s", took.as_secs_f64());
    assert!(
        took <= HEARTBEAT * 3 + OBSERVE,
        "{what}: took {took:?}, more than 3 heartbeats ({:?}) + {OBSERVE:?} to observe",
        HEARTBEAT * 3
    );
}

async fn list_agents(c: &mut Client) -> Vec<api::AgentInfo> {
    c.call(api::ListAgentsRequest::default(), |mut c, r| async move { c.list_agents(r).await })
        .await
        .map(|r| r.agents)
        .unwrap_or_default()
}

async fn objects(c: &mut Client, kind: &str) -> Vec<api::Object> {
    let req = api::ListObjectsRequest { kind: kind.into(), ..Default::default() };
    c.call(req, |mut c, r| async move { c.list_objects(r).await })
        .await
        .map(|r| r.objects)
        .unwrap_or_default()
}

async fn object(c: &mut Client, id: &str) -> Option<api::GetObjectResponse> {
    let req = api::GetObjectRequest { id: id.into(), stale: false };
    c.call(req, |mut c, r| async move { c.get_object(r).await }).await.ok()
}

/// A plain HTTP GET on loopback: (status, body); (0, "") on any failure (callers poll).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    tests::http_answer(addr, path).unwrap_or_default()
}

/// The leader's REST answer for `path` as JSON.
async fn rest(cluster: &LocalCluster, path: &str) -> serde_json::Value {
    let leader = cluster.wait_leader(READY_TIMEOUT).await.expect("a leader");
    let (status, body) = http_get(&cluster.nodes[&leader].http, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// Per host: the assignment hash its agent holds and the version of `name` it runs (not shadow), from the
/// leader's memory of each agent's last heartbeat (REST /api/v1/agents: `assignment_hash`, `runs`).
async fn assignments(cluster: &LocalCluster, name: &str) -> BTreeMap<String, (String, String)> {
    let agents = rest(cluster, "/api/v1/agents").await;
    let mut out = BTreeMap::new();
    collect_agents(&agents, name, &mut out);
    out
}

/// Every JSON object with a `host` and an `assignment_hash` at any depth (the REST view may nest the
/// heartbeat part): host -> (hash, running version of `name`).
fn collect_agents(v: &serde_json::Value, name: &str, out: &mut BTreeMap<String, (String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(h), Some(a)) =
                (m.get("host").and_then(|x| x.as_str()), find_key(v, "assignment_hash"))
            {
                let runs = find_key(v, "runs").unwrap_or_default();
                let version = runs
                    .as_array()
                    .and_then(|rs| {
                        rs.iter()
                            .find(|r| r["name"] == name && r["status"] == "running" && r["shadow"] != true)
                    })
                    .and_then(|r| r["version"].as_str())
                    .unwrap_or_default()
                    .to_string();
                out.insert(h.to_string(), (a.as_str().unwrap_or_default().to_string(), version));
                return;
            }
            for x in m.values() {
                collect_agents(x, name, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_agents(x, name, out)),
        _ => {}
    }
}

fn find_key(v: &serde_json::Value, key: &str) -> Option<serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            m.get(key).cloned().or_else(|| m.values().find_map(|x| find_key(x, key)))
        }
        _ => None,
    }
}

/// Files under `dir` whose content has sha256 `sha` (the agent's stored copy of an artifact, wherever its
/// store keeps it).
fn files_with_sha(dir: &Path, sha: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files_with_sha(&p, sha, out),
            Ok(t) if t.is_file() && std::fs::read(&p).is_ok_and(|b| sha256_hex(&b) == sha) => out.push(p),
            _ => {}
        }
    }
}

/// Open the leader's portal (this cluster is `--insecure`: no sign-in) on the Checkers page in headless
/// Chromium and wait for the canary-stop box of probe@2 with the deviation figures `d`; a screenshot goes to
/// `$CARGO_TARGET_TMPDIR/catalog-screenshots/canary-stop.png`. Uncaught page errors fail the test.
async fn portal_shows_the_canary_stop(cluster: &LocalCluster, d: &api::Deviation) {
    let Some(chromium) = cdp::find_chromium() else {
        panic!(
            "Chromium is needed to check the portal and was not found on PATH: install the Debian package with \
             `apt-get install -y chromium` (CI does), or set HUATUO_CHROMIUM to its path"
        );
    };
    let leader = cluster.wait_leader(READY_TIMEOUT).await.expect("a leader");
    let url = format!("http://{}/#/checkers", cluster.nodes[&leader].http);
    let (new, limit) = (d.new_flagged.to_string(), d.limit.to_string());
    tokio::task::block_in_place(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("catalog-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("chromium.log");
        let mut b =
            cdp::Browser::launch(&chromium, &log, &[]).unwrap_or_else(|e| panic!("{e} ({})", log.display()));
        b.navigate(&url).unwrap();
        let box_text = b
            .wait_for(
                "(() => { const el = document.querySelector('#checkers-alerts .canary-stop[data-rollout=\"probe@2\"]'); \
                 return el ? el.textContent : null; })()",
                WAIT,
            )
            .unwrap_or_else(|e| panic!("no canary-stop box on the Checkers page: {e}\n{}", b.console_text()));
        let text = box_text.as_str().unwrap_or_default();
        for want in ["paused automatically", "too-many-flags", new.as_str(), limit.as_str()] {
            assert!(text.contains(want), "the canary-stop box lacks {want:?}: {text}");
        }
        let row = b
            .eval(
                "(() => { const r = document.querySelector('#rollouts tr[data-rollout=\"probe@2\"]'); return r ? \
                 [r.dataset.status, r.classList.contains('auto-paused'), \
                 r.querySelector('td[data-field=\"new_flagged\"]')?.textContent] : null; })()",
            )
            .unwrap();
        assert_eq!(
            row,
            serde_json::json!(["paused", true, new]),
            "the rollout row is highlighted with its numbers"
        );
        let shot = dir.join("canary-stop.png");
        b.screenshot(&shot).unwrap();
        println!("screenshot: {}", shot.display());
        let console = b.console_text();
        let bad: Vec<&str> = console
            .lines()
            .filter(|l| l.starts_with("EXCEPTION") || l.starts_with("console.error"))
            .collect();
        assert!(bad.is_empty(), "the page logged errors:\n{console}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_checker_release_canary_stop_rollback_tamper_and_failover() {
    let bin = huatuo_bin();
    let mut cluster = LocalCluster::start_with_config(&bin, 3, MASTER_CONFIG).expect("start masters");
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", cluster.log_tail(1));
    let masters = cluster.grpc_addrs();
    let mut c = cluster.client();

    let work = tempfile::tempdir().unwrap();
    let root = host_root(&work.path().join("host"));
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| {
            let host = format!("cat-{i:02}");
            start_agent(&bin, &work.path().join(&host), &host, &root, &masters, &format!("r{}", i % 4), false)
        })
        .collect();
    // Every agent registered its disks and is heard by the leader.
    let up = wait_until(WAIT, || {
        let mut c = cluster.client();
        async move {
            let disks = objects(&mut c, "disk").await;
            let heard = list_agents(&mut c).await.iter().filter(|a| a.alive && a.heard).count();
            heard == AGENTS
                && disks.iter().filter(|o| o.host.starts_with("cat-")).count() >= AGENTS * DISKS.len()
        }
    })
    .await;
    assert!(up, "agents did not all come up within {WAIT:?}; first agent's log:\n{}", agent_log(&agents[0]));

    // v1: one GOOD finding per disk.
    let v1 = disk_script("GOOD", "probe.ok", "probe v1");
    let v1_sha = sha256_hex(&v1);
    let pushed = push(&mut c, PROBE, "1", "external", v1.clone()).await;
    assert_eq!(pushed.artifact.as_ref().map(|a| a.sha256.as_str()), Some(v1_sha.as_str()));
    assert!(!pushed.duplicate);
    // The same bytes again: a no-op; other bytes under the same NAME@VERSION: CONFLICT, nothing changes.
    assert!(push(&mut c, PROBE, "1", "external", v1.clone()).await.duplicate, "re-push of the same bytes");
    let other = push_request(PROBE, "1", "external", disk_script("GOOD", "probe.ok", "other bytes"));
    let e = c.call(other, |mut c, r| async move { c.push_artifact(r).await }).await.unwrap_err();
    assert_eq!(e.code, proto::error::Code::Conflict, "{e:?}");

    // 10%: a deterministic subset of hosts runs v1 within 3 heartbeats.
    let t = Instant::now();
    cli_ok(
        &bin,
        &masters,
        &["rollout", "start", "probe@1", "--percent", "10", "--reason", "probe v1 canary"],
    );
    let took = wait_count(&mut c, PROBE, "1", false, t, "10% of hosts run probe@1", |v| {
        v.assigned > 0 && v.running == v.assigned
    })
    .await;
    let at_10 = count(&rollout_status(&mut c, PROBE).await, PROBE, "1", false);
    assert!(
        (1..AGENTS as u64 / 2).contains(&at_10.assigned),
        "10% of {AGENTS} hosts should be a small subset: {at_10:?}"
    );
    assert_within_3_heartbeats("10% of hosts running probe@1", took);

    // Master failover during the rollout changes no assignment: the same hosts, the same assignment hash.
    let before = assignments(&cluster, PROBE).await;
    assert_eq!(before.len(), AGENTS, "{before:?}");
    assert_eq!(
        before.values().filter(|(_, v)| v == "1").count() as u64,
        at_10.assigned,
        "exactly the assigned hosts run v1: {before:?}"
    );
    let old = cluster.wait_leader(READY_TIMEOUT).await.unwrap();
    cluster.kill9(old);
    let new = cluster.wait_leader(READY_TIMEOUT).await.expect("a new leader");
    assert_ne!(new, old);
    let heard = wait_until(WAIT, || {
        let mut c = cluster.client();
        async move { list_agents(&mut c).await.iter().filter(|a| a.heard).count() == AGENTS }
    })
    .await;
    assert!(heard, "the new leader did not hear every agent");
    // For 3 heartbeats after every agent reached the new leader, every host keeps its assignment.
    let watch_until = Instant::now() + HEARTBEAT * 3;
    while Instant::now() < watch_until {
        let now = assignments(&cluster, PROBE).await;
        assert_eq!(now, before, "an assignment changed after the failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count(&rollout_status(&mut c, PROBE).await, PROBE, "1", false).assigned, at_10.assigned);
    cluster.spawn(old, false).unwrap();
    // The restarted member catches up before the next step, so the steps after it measure the rollout.
    let commit = cluster.info(new).await.map(|i| i.commit_index).unwrap_or(0);
    assert!(cluster.wait_applied(old, commit, READY_TIMEOUT).await, "node {old} did not catch up");
    assert_eq!(cluster.wait_leader(READY_TIMEOUT).await, Some(new), "the leader stays {new}");

    // 100%: every host within 3 heartbeats; widening keeps the first 10%.
    let t = Instant::now();
    cli_ok(
        &bin,
        &masters,
        &["rollout", "widen", "probe@1", "--percent", "100", "--reason", "v1 clean at 10%"],
    );
    let took = wait_count(&mut c, PROBE, "1", false, t, "every host runs probe@1", |v| {
        v.running == AGENTS as u64 && v.assigned == AGENTS as u64
    })
    .await;
    assert_within_3_heartbeats("100% of hosts running probe@1", took);
    let after = assignments(&cluster, PROBE).await;
    for (host, (_, v)) in &before {
        if v == "1" {
            assert_eq!(after[host].1, "1", "{host} ran v1 at 10% and must keep it");
        }
    }
    cli_ok(&bin, &masters, &["rollout", "promote", "probe@1", "--reason", "v1 everywhere"]);
    let s = rollout_status(&mut c, PROBE).await;
    assert_eq!(checker(&s, PROBE).map(|x| x.stable_version.as_str()), Some("1"), "{s:#?}");

    // Every disk of the fleet is GOOD before the bad releases.
    let disks_before: BTreeMap<String, String> = objects(&mut c, "disk")
        .await
        .into_iter()
        .filter(|o| o.host.starts_with("cat-"))
        .map(|o| (o.id.clone(), o.state.clone()))
        .collect();
    assert_eq!(disks_before.len(), AGENTS * DISKS.len(), "{disks_before:?}");
    assert!(disks_before.values().all(|s| s == "GOOD"), "{disks_before:?}");

    // v2 flags every disk ERROR. As a shadow canary on 20% it runs beside v1, its findings drive nothing,
    // and the master pauses it by itself.
    let v2 = disk_script("ERROR", "probe.bad", "probe v2");
    push(&mut c, PROBE, "2", "external", v2.clone()).await;
    cli_ok(
        &bin,
        &masters,
        &["rollout", "start", "probe@2", "--percent", "20", "--shadow", "--reason", "probe v2 shadow canary"],
    );
    let deadline = Instant::now() + WAIT;
    let stopped = loop {
        let s = rollout_status(&mut c, PROBE).await;
        if let Some(r) = rollout(&s, PROBE, "2").filter(|r| r.status == "paused" && r.auto_paused) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "the shadow canary was not paused within {WAIT:?}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let d = stopped.deviation.clone().expect("deviation figures");
    println!("shadow canary stopped: {} ({d:?})", stopped.paused_reason);
    assert_eq!(d.verdict, "too-many-flags", "{stopped:?}");
    assert!(d.canary_hosts >= 1 && d.new_flagged > d.limit, "{d:?}");
    assert_eq!(d.current_flagged, 0, "v1 flags nothing: {d:?}");
    assert!(
        stopped.paused_reason.contains(&d.new_flagged.to_string())
            && stopped.paused_reason.contains(&d.limit.to_string()),
        "the reason gives the numbers: {stopped:?}"
    );
    // Not one object changed state (shadow findings are recorded, never stepped).
    for o in objects(&mut c, "disk").await.iter().filter(|o| o.host.starts_with("cat-")) {
        assert_eq!(o.state, "GOOD", "{} moved during a shadow canary: {o:?}", o.id);
    }
    // The numbers in `rollout status`, `inspect` and REST.
    let text = cli_ok(&bin, &masters, &["rollout", "status", "probe"]);
    for want in ["paused", &d.new_flagged.to_string(), &d.limit.to_string(), "too-many-flags"] {
        assert!(text.contains(want), "`rollout status probe` lacks {want:?}:\n{text}");
    }
    let (_, inspect, err) = cli(&bin, &masters, &["inspect"]);
    assert!(
        inspect.contains("probe@2") && inspect.contains(&d.new_flagged.to_string()),
        "`huatuo inspect` shows the canary stop with its numbers:\n{inspect}\n{err}"
    );
    let v = rest(&cluster, "/api/v1/rollouts?name=probe").await;
    let ro = v["checkers"][0]["rollouts"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["version"] == "2"))
        .cloned()
        .unwrap_or_else(|| panic!("REST rollouts lack probe@2: {v}"));
    assert_eq!((ro["status"].as_str(), ro["auto_paused"].as_bool()), (Some("paused"), Some(true)), "{ro}");
    assert_eq!(ro["deviation"]["new_flagged"].as_u64(), Some(d.new_flagged), "{ro}");
    assert_eq!(ro["deviation"]["limit"].as_u64(), Some(d.limit), "{ro}");
    // The shadow findings are in the history, marked shadow.
    let mut shadow_seen = false;
    for host in (0..AGENTS).map(|i| format!("cat-{i:02}")) {
        if let Some(o) = object(&mut c, &format!("disk/{host}/sda")).await
            && o.history.iter().any(|h| h.detail.contains("probe.bad"))
        {
            shadow_seen = true;
            assert_eq!(o.object.as_ref().map(|o| o.state.as_str()), Some("GOOD"));
        }
    }
    assert!(shadow_seen, "a shadow finding of v2 is recorded in some canary disk's history");
    // And in the portal: the Checkers page highlights the canary stop with its reason and its numbers.
    portal_shows_the_canary_stop(&cluster, &d).await;
    cli_ok(
        &bin,
        &masters,
        &["rollout", "rollback", "probe@2", "--reason", "shadow canary flagged every disk"],
    );

    // v3: the same bad script without shadow. The checker-version spike detector latches its scope and the
    // rollout pauses. The scenario isolates that quota: the cluster and rack quotas are removed (they would
    // hold the release's transitions first and put those scopes in manual drive, where nothing reaches the
    // spike detector; that net is tested with the safety drills), the spike rule keeps its defaults.
    let open = api::SetQuotasRequest {
        quotas: Vec::new(),
        by: "catalog-test".into(),
        reason: "isolate the checker-version spike detector".into(),
        config_json: serde_json::to_string(&master::safety::SafetyConfig {
            quotas: Vec::new(),
            ..Default::default()
        })
        .unwrap(),
    };
    c.call(open, |mut c, r| async move { c.set_quotas(r).await }).await.expect("set quotas");
    push(&mut c, PROBE, "3", "external", disk_script("ERROR", "probe.bad", "probe v3")).await;
    cli_ok(
        &bin,
        &masters,
        &["rollout", "start", "probe@3", "--percent", "20", "--reason", "probe v3 canary"],
    );
    let canary = count(&rollout_status(&mut c, PROBE).await, PROBE, "3", false).assigned;
    assert!(canary >= 2, "20% of {AGENTS} hosts: {canary}");
    let deadline = Instant::now() + WAIT;
    loop {
        let s = rollout_status(&mut c, PROBE).await;
        let paused = rollout(&s, PROBE, "3").is_some_and(|r| r.status == "paused" && r.auto_paused);
        let safety = rest(&cluster, "/api/v1/safety").await;
        let latched = safety["scopes"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["scope"].as_str().is_some_and(|s| s.ends_with("probe@3")) && x["latched"] == true)
        });
        if paused && latched {
            println!("non-shadow canary stopped: {:?}", rollout(&s, PROBE, "3").map(|r| &r.paused_reason));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probe@3 did not trip the checker-version quota and pause within {WAIT:?}: paused {paused}, \
             latched {latched}\n{s:#?}\n{safety}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The paused canary hosts still run v3 (a pause freezes a rollout where it runs).
    let on_v3 = wait_until(WAIT, || {
        let cluster = &cluster;
        async move {
            assignments(cluster, PROBE).await.values().filter(|(_, v)| v == "3").count() as u64 == canary
        }
    })
    .await;
    if !on_v3 {
        let held = assignments(&cluster, PROBE).await;
        let logs: Vec<String> = agents
            .iter()
            .filter(|a| held.get(&a.host).is_none_or(|(h, v)| v != "3" && *h != held["cat-00"].0))
            .take(2)
            .map(|a| format!("== {} holds {:?}\n{}", a.host, held.get(&a.host), agent_log(a)))
            .collect();
        panic!(
            "the {canary} canary hosts do not report running probe@3 within {WAIT:?}: {held:?}\n{:#?}\n{}",
            rollout_status(&mut c, PROBE).await,
            logs.join("\n")
        );
    }
    // Rollback: every canary host back to v1 within 3 heartbeats.
    let t = Instant::now();
    cli_ok(&bin, &masters, &["rollout", "rollback", "probe@3", "--reason", "avalanche by release"]);
    let took = wait_count(&mut c, PROBE, "1", false, t, "every host back on probe@1", |v| {
        v.running == AGENTS as u64
    })
    .await;
    assert_within_3_heartbeats("rollback of probe@3 to probe@1 (master's count)", took);
    assert_eq!(count(&rollout_status(&mut c, PROBE).await, PROBE, "3", false).running, 0);
    // And every host's own last heartbeat says it runs v1 (the canary hosts switched back).
    let deadline = Instant::now() + WAIT;
    loop {
        let a = assignments(&cluster, PROBE).await;
        if a.len() == AGENTS && a.values().all(|(_, v)| v == "1") {
            break;
        }
        assert!(Instant::now() < deadline, "not every host reports probe@1 after the rollback: {a:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_within_3_heartbeats("rollback of probe@3 to probe@1 (every host's heartbeat)", t.elapsed());

    // A tampered artifact file on one agent: refused at the next run and reported, never run.
    let victim = &agents[3];
    let mut stored = Vec::new();
    files_with_sha(&victim.dir.join("agent-data"), &v1_sha, &mut stored);
    assert!(!stored.is_empty(), "{} keeps probe@1 (sha256 {v1_sha}) under its data dir", victim.host);
    for p in &stored {
        let mut b = std::fs::read(p).unwrap();
        // Same length, one byte changed inside the comment line: still a valid script, wrong hash.
        let i = b.iter().position(|&x| x == b'#').unwrap() + 4;
        b[i] ^= 0x20;
        std::fs::write(p, b).unwrap();
    }
    let id = format!("checker/{}/{PROBE}", victim.host);
    let reported = wait_until(WAIT, || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            object(&mut c, &id)
                .await
                .is_some_and(|o| o.history.iter().any(|h| h.detail.contains("checker.unverified")))
        }
    })
    .await;
    assert!(reported, "no checker.unverified finding about {id}; agent log:\n{}", agent_log(victim));
    // The agent deletes the altered copy, fetches the artifact again and runs the verified bytes.
    let healed = wait_until(WAIT, || {
        let (dir, sha, host) = (victim.dir.join("agent-data"), v1_sha.clone(), victim.host.clone());
        let cluster = &cluster;
        async move {
            let mut again = Vec::new();
            files_with_sha(&dir, &sha, &mut again);
            !again.is_empty() && assignments(cluster, PROBE).await.get(&host).is_some_and(|(_, v)| v == "1")
        }
    })
    .await;
    assert!(
        healed,
        "{} did not fetch probe@1 again after the refusal; log:\n{}",
        victim.host,
        agent_log(victim)
    );
    // The agent process survived all of it.
    for a in &agents {
        let mut p = std::process::Command::new("kill");
        let alive = p.args(["-0", &a.proc.0.id().to_string()]).status().unwrap().success();
        assert!(alive, "agent {} exited; log:\n{}", a.host, agent_log(a));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_set_hot_reload_keeps_the_kmsg_cursor() {
    let bin = huatuo_bin();
    let cluster = LocalCluster::start_with_config(&bin, 3, MASTER_CONFIG).expect("start masters");
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", cluster.log_tail(1));
    let masters = cluster.grpc_addrs();
    let mut c = cluster.client();
    let work = tempfile::tempdir().unwrap();
    let root = host_root(&work.path().join("host"));
    let kmsg = root.join("dev/kmsg");
    let agent = start_agent(&bin, &work.path().join("rules-1"), "rules-1", &root, &masters, "r1", true);

    // The seeded default rule set (kernel-log@1) runs on the host.
    let t = Instant::now();
    wait_count(&mut c, "kernel-log", "1", false, t, "the seeded kernel-log@1 runs", |v| v.running >= 1).await;
    let started =
        list_agents(&mut c).await.into_iter().find(|a| a.host == "rules-1").expect("agent").started_ms;

    // A widget line the default rules do not know, then a known line: once the known one is detected, the
    // agent's cursor is past the widget line.
    append_kmsg(&kmsg, &["huatuo-test: widget failure on sdb".into()]);
    append_kmsg(&kmsg, &["blk_update_request: I/O error, dev sdc, sector 777000 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0".into()]);
    let read = wait_until(WAIT, || {
        let mut c = cluster.client();
        async move {
            object(&mut c, "disk/rules-1/sdc")
                .await
                .is_some_and(|o| o.history.iter().any(|h| h.detail.contains("777000")))
        }
    })
    .await;
    assert!(read, "the known line was never detected; agent log:\n{}", agent_log(&agent));

    // A rule set that does not compile is refused at push and changes nothing.
    let before = rollout_status(&mut c, "kernel-log").await;
    let broken = api::PushArtifactRequest {
        name: "kernel-log".into(),
        version: "9".into(),
        r#type: "rules".into(),
        content: b"version = \"x\"\n[[rule]]\nid = \"bad\"\npattern = '(unclosed'\n".to_vec(),
        by: "catalog-test".into(),
        ..Default::default()
    };
    let e = c.call(broken, |mut c, r| async move { c.push_artifact(r).await }).await.unwrap_err();
    assert_eq!(e.code, proto::error::Code::InvalidArgument, "{e:?}");
    let after = rollout_status(&mut c, "kernel-log").await;
    assert_eq!(
        checker(&after, "kernel-log").map(|c| c.versions.clone()),
        checker(&before, "kernel-log").map(|c| c.versions.clone())
    );

    // kernel-log@2: the default rules plus a widget rule, rolled out to this host.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut rules = std::fs::read_to_string(repo.join("checkers/rules/kernel-log/default.toml")).unwrap();
    rules = rules.replacen("version = \"", "version = \"2-test-", 1);
    rules.push_str(
        "\n[[rule]]\nid = \"test.widget\"\ndescription = \"catalog_rollout test rule\"\nkeywords = [\"widget failure on \"]\n\
         pattern = 'widget failure on (?P<dev>sd[a-z]+)'\nkind = \"disk\"\nobject = \"{dev}\"\nseverity = \"WARNING\"\n\
         examples = [\"huatuo-test: widget failure on sdb\"]\n",
    );
    push(&mut c, "kernel-log", "2", "rules", rules.into_bytes()).await;
    let t = Instant::now();
    cli_ok(
        &bin,
        &masters,
        &["rollout", "start", "kernel-log@2", "--hosts", "rules-1", "--reason", "widget rule"],
    );
    let took =
        wait_count(&mut c, "kernel-log", "2", false, t, "rules-1 runs kernel-log@2", |v| v.running == 1)
            .await;
    assert_within_3_heartbeats("kernel-log@2 on rules-1", took);

    // A new widget line is detected by the new rule; the old one (before the reload) is never re-read.
    append_kmsg(&kmsg, &["huatuo-test: widget failure on sdd".into()]);
    let detected = wait_until(WAIT, || {
        let mut c = cluster.client();
        async move {
            object(&mut c, "disk/rules-1/sdd")
                .await
                .is_some_and(|o| o.history.iter().any(|h| h.detail.contains("test.widget")))
        }
    })
    .await;
    assert!(
        detected,
        "the reloaded rule set did not detect the widget line; agent log:\n{}",
        agent_log(&agent)
    );
    let sdb = object(&mut c, "disk/rules-1/sdb").await.expect("sdb registered");
    assert!(
        !sdb.history.iter().any(|h| h.detail.contains("test.widget")),
        "the line written before the reload was read again: {:#?}",
        sdb.history
    );
    let sdc = object(&mut c, "disk/rules-1/sdc").await.unwrap();
    assert_eq!(sdc.history.iter().filter(|h| h.detail.contains("777000")).count(), 1, "{:#?}", sdc.history);
    // No restart: the same process and start time.
    let a = list_agents(&mut c).await.into_iter().find(|a| a.host == "rules-1").expect("agent");
    assert_eq!((a.started_ms, a.restarts), (started, 0), "the agent restarted: {a:?}");
    let alive = Command::new("kill").args(["-0", &agent.proc.0.id().to_string()]).status().unwrap().success();
    assert!(alive, "the agent process exited");
}
