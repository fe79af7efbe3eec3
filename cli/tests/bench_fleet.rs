//! `huatuo bench fleet` at a tiny scale against its own real 3-node cluster (free ports, temp dirs): every
//! phase prints its figure line and no acknowledged finding is lost. No timing assertion: the figures are
//! the benchmark's output, not a test's.

use std::process::Command;

#[test]
fn bench_fleet_prints_every_phase_and_loses_no_acknowledged_finding() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "fleet", "--agents", "60", "--steady-seconds", "3", "--heartbeat-secs", "1"])
        .args(["--throughput-seconds", "1", "--connections", "8", "--seed", "17", "--cache-mb", "32"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .expect("run huatuo bench fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    for line in [
        "seed 17 (replay with --seed 17)",
        "every master with cache_mb = 32",
        "phase 1 registration: 60 hosts (900 objects) registered + first heartbeat",
        "phase 2 heartbeats: ",
        "phase 2 findings: ",
        "phase 2 watcher: listed 900 objects",
        "resources (steady state): node 1 ",
        "phase 3 data dirs: node 1 ",
        "phase 3 snapshot",
        "phase 4 snapshot",
        "phase 7 snapshot (member 1's /metrics): huatuo_master_snapshot_builds_total",
        "phase 3 slow Raft commits since each member started: node 1: ",
        "phase 4 slow Raft commits since each member started: ",
        "phase 5 slow Raft commits since each member started: ",
        "phase 4 follower catch-up: node ",
        "phase 4 rebuilt member's indexes: built ",
        "phase 4 heartbeats during the catch-up: p50 ",
        "phase 5 failover: leader ",
        "phase 5 heartbeats sent after the first acknowledged write (the fleet's first beats to the new leader): p50 ",
        "phase 5 heartbeats by when they were sent after the kill",
        "phase 5 timeline (ms after the kill): node ",
        "phase 5 new leader's indexes: order index answers unbuilt ",
        "phase 6 elections outside the leader kill: ",
        "phase 7 throughput: ",
        "phase 2 CPU per heartbeat (findings included): ",
        "phase 7 heartbeats meanwhile: ",
        "phase 7 single-finding half: CPU per committed finding (heartbeats included): ",
        "phase 7 batched half: CPU per committed finding (heartbeats included): ",
        "phase 7 single-finding, heartbeats paused: CPU per committed finding: ",
        "; this bench (the simulated fleet) ",
        "phase 7 data dirs: node 1 ",
        "raft.redb ",
        "phase 8 lost acknowledged findings: 0 of ",
    ] {
        assert!(stdout.contains(line), "no line starting {line:?} in:\n{stdout}\nstderr:\n{stderr}");
    }
    // Every member stopped and its database broken down: in use, free, the largest tables ...
    for id in 1..=3 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("phase 9 storage, node {id}: raft.redb ")))
            .unwrap_or_else(|| panic!("no storage line for node {id}:\n{stdout}"));
        assert!(line.contains(" MiB in use (") && line.contains("free pages kept)"), "{line}");
        assert!(line.contains(" entries, ") && line.contains(" MiB stored)"), "{line}");
        // ... then compacted as `huatuo master --compact` does, checked before and after.
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("phase 9 compaction, node {id}: raft.redb ")))
            .unwrap_or_else(|| panic!("no compaction line for node {id}:\n{stdout}"));
        assert!(line.ends_with("sound before and after"), "{line}");
    }
    // Agents echo the assignment hash they hold, so an answer carries the assignment only when it changed
    // (the first beats, and once after the catalog is seeded): far fewer than the beats.
    let over_run = stdout.lines().find(|l| l.starts_with("heartbeats over the run: ")).expect("run line");
    let nums: Vec<u64> = over_run
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (acked, carrying) = (nums[0], nums[2]);
    assert!(acked > 0 && carrying * 2 < acked, "{over_run}");
    // No agent went long enough without a beat to be marked silent, the paused measurement included.
    let gap: f64 = over_run
        .split("between two beats sent ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|g| g.parse().ok())
        .expect("the longest gap");
    assert!(gap > 0.0 && gap < 30.0, "{over_run}");
    // The simulated agents beat with datagrams (the default `--beat-transport`), as real agents do: the
    // members answer them on their gRPC port numbers.
    let transport = stdout.lines().find(|l| l.starts_with("phase 2 heartbeat transport: ")).expect("line");
    assert!(transport.contains("a datagram per beat"), "{transport}");
    let answered: u64 = transport
        .split("; ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("beats answered by datagrams");
    assert!(answered > 0, "{transport}");
    // Phase 7's writers send over their own ingest streams, as agents do: at least one batch each
    // (532 writers) answered on one.
    let writes = stdout.lines().find(|l| l.starts_with("phase 7 findings transport: ")).expect("line");
    assert!(writes.contains("a stream per writer"), "{writes}");
    let n: Vec<u64> = writes.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert!(n.len() >= 2 && n[n.len() - 2] >= 532 && n[n.len() - 1] >= 532, "{writes}");
    // A scrape of the leader's /metrics right after the burst shows the burst's release with every disk it
    // failed in its spike window.
    let scrape =
        stdout.lines().find(|l| l.starts_with("phase 3 leader's /metrics (5 scrapes): p50 ")).expect("line");
    assert!(scrape.ends_with("1 spike windows, the fullest spike window holding 720"), "{scrape}");
    // The last single-finding measurement ran with the fleet's heartbeats paused: beats fell due (60 agents
    // beating every second) and were skipped, and none was marked silent (phase 8 found nothing lost).
    let paused = stdout
        .lines()
        .find(|l| l.starts_with("phase 7 single-finding clients with the heartbeats paused (1 s; "))
        .expect("paused line");
    let n: Vec<u64> = paused.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert!(n.len() >= 4 && n[2] > 0, "{paused}");
    // The burst covered every disk (60 hosts x 12) and the watcher saw each one's transition.
    assert!(stdout.contains("720 of a 720-disk ERROR burst"), "{stdout}");
    // The leader lists the disks in ERROR from its index of the objects out of GOOD.
    let listings =
        stdout.lines().find(|l| l.starts_with("phase 3 listings from the leader: ")).expect("line");
    assert!(listings.contains("state=ERROR 720 objects in 1 pages"), "{listings}");
    assert!(listings.contains("(label matching none) 0 objects in 1 pages"), "{listings}");
    // The last host's objects (1 machine, 12 disks, 2 NICs) in one page: its rows only are read.
    assert!(listings.contains("host=fleet-000059 15 objects in 1 pages"), "{listings}");
    assert!(listings.ends_with("leader's pages by state: 1 indexed / 0 scanned"), "{listings}");
    let storm = stdout
        .lines()
        .find(|l| l.starts_with("phase 7 listing from the leader halfway through the batched phase: "))
        .expect("phase 7 listing line");
    assert!(
        storm.contains("state=ERROR 720 objects in 1 pages") && storm.ends_with(" indexed / 0 scanned"),
        "{storm}"
    );
    assert!(stdout.contains(" 0 burst transitions not seen"), "{stdout}");
    assert!(
        stdout.contains("before the phase (watching)"),
        "the burst starts once the watcher follows: {stdout}"
    );
    // The cluster lived under --data-dir and was removed with the run; only the masters' logs stay.
    let left: Vec<String> = std::fs::read_dir(data.path())
        .expect("read data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["huatuo-bench-fleet-17-logs".to_string()], "data left behind");
    let logs = data.path().join("huatuo-bench-fleet-17-logs");
    for id in 1..=3 {
        let log = std::fs::read_to_string(logs.join(format!("node-{id}.log"))).expect("a member's log");
        assert!(!log.is_empty(), "node {id}'s log is empty");
    }
    assert!(stdout.contains(&format!("the masters' logs of this run: {}", logs.display())), "{stdout}");
}

#[test]
fn bench_fleet_refuses_bad_arguments_before_starting_anything() {
    for args in [
        &["--agents", "0"][..],
        &["--agents", "100001"],
        &["--objects-per-host", "3"],
        &["--connections", "0"],
        &["--writer-connections", "257"],
        &["--steady-seconds", "0"],
        &["--data-dir", "/nonexistent/huatuo-fleet"],
        &["--cache-mb", "4"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
            .args(["bench", "fleet"])
            .args(args)
            .output()
            .expect("run huatuo bench fleet");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains("must be") || stderr.contains("not a directory"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} started the benchmark");
    }
}
