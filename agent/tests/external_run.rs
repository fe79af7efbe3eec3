//! External checkers in a real agent run: four real scripts listed under `[[external]]` in the agent's
//! config — one well-behaved, one printing garbage, one printing without end, one hanging with a child
//! process — run by `agent::run::run_with` through the same scheduler, sink and outbox as the built-in
//! checkers. The good one's finding and one `checker.broken` finding about `checker/HOST/NAME` for each
//! hostile one reach the outbox; the agent keeps running and stops cleanly.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::outbox::{Limits, OutboxStore, RedbOutbox};
use state_machines::Finding;

/// Bound on waiting for every external checker's first report.
const DEADLINE: Duration = Duration::from_secs(60);
const HOST: &str = "ext-h1";

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.sh"));
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The agent's recent durable findings, from its local HTTP surface.
fn local_findings(port: u16) -> Vec<Finding> {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return Vec::new() };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(s, "GET /api/v1/local HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return Vec::new();
    }
    let mut body = String::new();
    if s.read_to_string(&mut body).is_err() {
        return Vec::new();
    }
    let Some((_, json)) = body.split_once("\r\n\r\n") else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    serde_json::from_value(v["findings"].clone()).unwrap_or_default()
}

#[test]
fn external_checkers_run_in_the_agent_and_hostile_ones_become_checker_findings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let good = script(
        dir,
        "good",
        &format!(
            r#"echo '{{"object":"disk/{HOST}/sda","severity":"WARNING","rule":"raid.degraded","evidence":"md0 [U_]"}}'"#
        ),
    );
    let garbage = script(dir, "garbage", r"printf 'garbage\n\001\002\377\n{not json\n'");
    let huge = script(dir, "huge", "yes garbage-garbage-garbage");
    let pidfile = dir.join("hang.child");
    let hang = script(dir, "hang", &format!("sleep 600 & echo $! > {}; sleep 600", pidfile.display()));
    let port = free_port();
    let cfg = format!(
        r#"version = 1
host = "{HOST}"
data_dir = {data:?}
masters = ["127.0.0.1:1"]
http_listen = "127.0.0.1:{port}"
root = {root:?}
insecure = true
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
[net_probe]
listen = "127.0.0.1:0"

[[external]]
name = "raidcheck"
version = "1.2.0"
path = {good:?}
interval_s = 1
kinds = ["disk"]

[[external]]
name = "garbage"
version = "0.1.0"
path = {garbage:?}
interval_s = 1
kinds = ["disk"]

[[external]]
name = "huge"
version = "0.1.0"
path = {huge:?}
interval_s = 1
kinds = ["disk"]
max_bytes = 65536

[[external]]
name = "hang"
version = "0.1.0"
path = {hang:?}
interval_s = 1
timeout_s = 1
kinds = ["machine"]
"#,
        data = dir.join("data").display().to_string(),
        root = root.display().to_string(),
        good = good.display().to_string(),
        garbage = garbage.display().to_string(),
        huge = huge.display().to_string(),
        hang = hang.display().to_string(),
    );
    let cfg_path = dir.join("agent.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let cfg = agent::config::AgentConfig::load(&cfg_path).expect("config with external checkers is valid");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let agent = rt.spawn(agent::run::run_with(cfg, agent::run::RunHooks::default(), rx));

    let want = |f: &[Finding]| {
        let good = f.iter().any(|x| {
            x.checker == "raidcheck"
                && x.object.to_string() == format!("disk/{HOST}/sda")
                && x.version == "1.2.0"
        });
        let broken = |name: &str| {
            f.iter().any(|x| {
                x.rule == "checker.broken" && x.object.to_string() == format!("checker/{HOST}/{name}")
            })
        };
        good && broken("garbage") && broken("huge") && broken("hang")
    };
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while Instant::now() < deadline && !want(&seen) {
        std::thread::sleep(Duration::from_millis(200));
        seen = local_findings(port);
    }
    assert!(!agent.is_finished(), "the agent is still running");
    stop.send_replace(true);
    rt.block_on(agent).unwrap().expect("the agent stopped cleanly");
    assert!(want(&seen), "not every external checker reported: {seen:#?}");
    let ev = |name: &str| {
        seen.iter()
            .find(|x| x.object.to_string() == format!("checker/{HOST}/{name}"))
            .map(|x| x.evidence.clone())
    };
    assert!(ev("garbage").unwrap().contains("not a finding"), "{:?}", ev("garbage"));
    assert!(ev("huge").unwrap().contains("more than 65536 bytes"), "{:?}", ev("huge"));
    assert!(ev("hang").unwrap().contains("timed out"), "{:?}", ev("hang"));
    assert!(!seen.iter().any(|x| x.object.host() != HOST), "nothing about another host");

    // The same findings are durable in the outbox (the master was unreachable the whole time).
    let ob = RedbOutbox::open(&dir.join("data/outbox.redb"), Limits::default()).unwrap();
    let queued: Vec<Finding> = ob
        .peek(100_000, 1 << 30)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect();
    assert!(want(&queued), "outbox: {queued:#?}");

    // The hung script's forked child was killed with its process group.
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let gone_by = Instant::now() + Duration::from_secs(10);
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
            .unwrap_or(true)
    };
    while !gone() && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(), "the hung checker's child {pid} survived");
}
