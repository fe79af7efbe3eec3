//! The kmsg checkpoint travels with its findings: a child process runs the real agent pipeline
//! (`agent::run::run_with`: kmsg checker -> scheduler -> sink -> redb outbox) over a kmsg-format file this
//! test appends to, with a slow sink (every outbox commit waits [`SINK_DELAY`]) and a kmsg poll much faster
//! than that, so several kmsg runs queue up behind the sink. The parent `kill -9`s the child at random
//! moments while it writes, restarts it, and finally lets it drain; then every line's finding must be in
//! the outbox exactly once: no loss (a cursor committed past an undurable finding) and no duplicate (a
//! finding committed without its cursor).
//!
//! The child is this test binary re-executed with `HUATUO_KMSG_CHILD` set. Seeded: the seed is printed and
//! `HUATUO_CRASH_SEED=N` replays a run.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::outbox::{Limits, OutboxStore, RedbOutbox};
use state_machines::Finding;

/// Kills per run: each one lands at a random moment of a child that is reading, queueing and committing.
const KILLS: u32 = 12;
/// Every outbox commit of the child's sink waits this long (a slow disk), so kmsg reports queue up.
const SINK_DELAY: Duration = Duration::from_millis(120);
/// The child's kmsg poll interval: far below the sink's delay.
const KMSG_INTERVAL: Duration = Duration::from_millis(15);
/// Longest a child lives before it is killed.
const MAX_CHILD_LIFE_MS: u64 = 1_500;
/// Marker lines written per burst while a child lives (one burst every 10 ms).
const LINES_PER_BURST: u64 = 3;
/// Bound on draining at the end (each round: start, let it read, stop it gracefully, look).
const DRAIN_DEADLINE: Duration = Duration::from_secs(90);
/// How long a drain round lets the child run before asking it to stop.
const DRAIN_ROUND: Duration = Duration::from_secs(2);
/// Bound on a child's graceful stop.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
const HOST: &str = "kmsg-crash";
const BOOT_ID: &str = "0f0e0d0c-1111-2222-3333-444455556666";

fn config(dir: &Path) -> String {
    format!(
        "version = 1\nhost = \"{HOST}\"\ndata_dir = {:?}\nmasters = [\"127.0.0.1:1\"]\nhttp_listen = \"127.0.0.1:0\"\n\
         root = {:?}\ninsecure = true\n[report]\nbackoff_max_s = 1\n\
         [checkers.disk]\nenabled = false\n[checkers.edac]\nenabled = false\n[checkers.nic]\nenabled = false\n\
         [checkers.machine]\nenabled = false\n[net_probe]\nlisten = \"127.0.0.1:0\"\n",
        dir.join("data").display().to_string(),
        dir.join("root").display().to_string(),
    )
}

/// The child: run the agent until the stop file appears (or it is killed).
fn child(dir: &Path) {
    let cfg: agent::config::AgentConfig = toml::from_str(&config(dir)).expect("config");
    cfg.validate().expect("valid config");
    let hooks = agent::run::RunHooks { sink_delay: SINK_DELAY, kmsg_interval: Some(KMSG_INTERVAL) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let stop_file = dir.join("stop");
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(async move {
            while !stop_file.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx.send_replace(true);
        });
        agent::run::run_with(cfg, hooks, rx).await.expect("agent run");
        watcher.abort();
    });
}

fn spawn_child(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kmsg_cursor_never_passes_an_undurable_finding", "--nocapture", "--test-threads=1"])
        .env("HUATUO_KMSG_CHILD", dir)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// splitmix64: the harness needs no RNG crate.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn append_lines(kmsg: &Path, seq: &mut u64, n: u64) {
    let mut f = std::fs::OpenOptions::new().append(true).open(kmsg).unwrap();
    for _ in 0..n {
        *seq += 1;
        let s = *seq;
        let line = format!(
            "3,{s},{},-;blk_update_request: I/O error, dev sdz, sector {s} op 0x0:(READ)\n",
            1_000 + s
        );
        f.write_all(line.as_bytes()).unwrap();
    }
}

fn wait_stopped(child: &mut Child) {
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "child did not stop within {STOP_DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sector -> how many `disk.io-error` findings name it, and the committed kmsg cursor's seq.
fn look(data: &Path) -> (BTreeMap<u64, u32>, u64) {
    let ob =
        RedbOutbox::open(&data.join("outbox.redb"), Limits { max_entries: u64::MAX, max_bytes: u64::MAX })
            .expect("open outbox");
    let mut seen = BTreeMap::new();
    for e in ob.peek(1 << 30, 1 << 40).unwrap() {
        let f: Finding = serde_json::from_slice(&e.payload).unwrap();
        if f.rule != "disk.io-error" {
            continue;
        }
        let sector: u64 = f
            .evidence
            .split("sector ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no sector in {:?}", f.evidence));
        *seen.entry(sector).or_insert(0) += 1;
    }
    let cursor = ob
        .kv_get("kmsg.cursor")
        .unwrap()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    (seen, cursor)
}

#[test]
fn kmsg_cursor_never_passes_an_undurable_finding() {
    if let Ok(dir) = std::env::var("HUATUO_KMSG_CHILD") {
        child(Path::new(&dir));
        return;
    }
    let seed: u64 =
        std::env::var("HUATUO_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("kmsg checkpoint crash test: seed={seed} kills={KILLS}");
    let mut rng = seed;
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().to_path_buf();
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), format!("{BOOT_ID}\n")).unwrap();
    std::fs::write(root.join("proc/stat"), "cpu 1 2 3\nbtime 1700000000\n").unwrap();
    let kmsg = root.join("dev/kmsg");
    std::fs::write(&kmsg, "").unwrap();
    let mut seq = 0u64;
    let started = Instant::now();
    for _ in 0..KILLS {
        let mut c = spawn_child(&dir);
        let life = Duration::from_millis(100 + next(&mut rng) % MAX_CHILD_LIFE_MS);
        let t = Instant::now();
        while t.elapsed() < life {
            append_lines(&kmsg, &mut seq, LINES_PER_BURST);
            std::thread::sleep(Duration::from_millis(10));
        }
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    // Drain: run the agent in rounds and stop it gracefully until it has read every line.
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let (seen, cursor) = loop {
        let mut c = spawn_child(&dir);
        std::thread::sleep(DRAIN_ROUND);
        std::fs::write(dir.join("stop"), b"").unwrap();
        wait_stopped(&mut c);
        std::fs::remove_file(dir.join("stop")).unwrap();
        let (seen, cursor) = look(&dir.join("data"));
        if cursor >= seq || Instant::now() >= deadline {
            break (seen, cursor);
        }
    };
    println!(
        "{seq} lines written over {KILLS} kill -9s in {:.1}s; cursor at {cursor}; {} distinct findings",
        started.elapsed().as_secs_f64(),
        seen.len()
    );
    assert_eq!(cursor, seq, "seed {seed}: the agent did not read every line before the drain deadline");
    let missing: Vec<u64> = (1..=seq).filter(|s| !seen.contains_key(s)).collect();
    let doubled: Vec<(u64, u32)> = seen.iter().filter(|(_, n)| **n != 1).map(|(s, n)| (*s, *n)).collect();
    assert!(missing.is_empty(), "seed {seed}: lines whose finding was lost: {missing:?}");
    assert!(doubled.is_empty(), "seed {seed}: lines whose finding is there more than once: {doubled:?}");
    assert_eq!(seen.len() as u64, seq);
}
