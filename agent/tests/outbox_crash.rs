//! Crash safety of the outbox: a child process enqueues (and sometimes acknowledges) findings as fast as it
//! can, printing each one only after the store said it was durable; the parent `kill -9`s it at a random
//! moment, reopens the store, and checks that every printed enqueue is still there with its payload, that
//! every printed ack took effect, and that sequence numbers never go backwards. At least 200 kills.
//!
//! The child is this same test binary re-executed with `HUATUO_OUTBOX_CHILD` set. Seeded: the seed is
//! printed, and `HUATUO_CRASH_SEED=N` replays one run; `HUATUO_CRASH_KILLS` raises the kill count.
//! `HUATUO_OUTBOX_ENGINE=sled` (with `--features sled`) runs the same harness against sled 0.34.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::outbox::{Limits, OutboxStore, RedbOutbox};
use state_machines::Severity;

/// Kills per run in CI (the floor).
const DEFAULT_KILLS: u32 = 200;
/// Longest a child may live before it is killed: long enough for a few hundred fsync'd enqueues.
const MAX_CHILD_LIFE_MS: u64 = 60;
/// Guard against a child that never starts writing.
const CHILD_START_DEADLINE: Duration = Duration::from_secs(20);

fn open_store(path: &Path) -> Box<dyn OutboxStore> {
    let limits = Limits { max_entries: 10_000_000, max_bytes: 1 << 34 };
    match std::env::var("HUATUO_OUTBOX_ENGINE").as_deref() {
        #[cfg(feature = "sled")]
        Ok("sled") => Box::new(agent::outbox_sled::SledOutbox::open(path, limits).expect("open sled")),
        _ => Box::new(RedbOutbox::open(path, limits).expect("open redb")),
    }
}

fn child(path: &str) {
    let store = open_store(Path::new(path));
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut n: u64 = 0;
    loop {
        n += 1;
        let payload = format!("finding-{}-{n}", std::process::id());
        let seq = store.enqueue(&[(Severity::Error, payload.clone().into_bytes())]).expect("enqueue");
        writeln!(out, "ENQ {} {payload}", seq[0]).expect("stdout");
        out.flush().expect("flush");
        if n.is_multiple_of(7) {
            // Acknowledge everything but the last two, like a master that lags a little.
            let upto = seq[0].saturating_sub(2);
            store.ack(upto).expect("ack");
            writeln!(out, "ACK {upto}").expect("stdout");
            out.flush().expect("flush");
        }
    }
}

/// A tiny deterministic generator (splitmix64) so the harness needs no RNG crate.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn outbox_survives_kill9_loop() {
    if let Ok(path) = std::env::var("HUATUO_OUTBOX_CHILD") {
        child(&path);
        return;
    }
    let seed: u64 =
        std::env::var("HUATUO_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let kills: u32 =
        std::env::var("HUATUO_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_KILLS);
    let engine = std::env::var("HUATUO_OUTBOX_ENGINE").unwrap_or_else(|_| "redb".into());
    println!("outbox crash harness: engine={engine} seed={seed} kills={kills}");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let exe = std::env::current_exe().unwrap();
    let mut rng = seed;

    // What the children said was durable: seq -> payload, and the highest acknowledged seq.
    let mut expected: BTreeMap<u64, String> = BTreeMap::new();
    let mut acked_upto = 0u64;
    let mut max_seq = 0u64;
    let mut total_enqueues = 0u64;
    let started = Instant::now();
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args(["--exact", "outbox_survives_kill9_loop", "--nocapture", "--test-threads=1"])
            .env("HUATUO_OUTBOX_CHILD", &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        // Wait for the first durable write, then let the child run a random while and kill it mid-flight.
        let life = Duration::from_millis(1 + next(&mut rng) % MAX_CHILD_LIFE_MS);
        let mut lines = Vec::new();
        let deadline = Instant::now() + CHILD_START_DEADLINE;
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            assert!(n > 0, "seed {seed} round {round}: child exited before writing");
            let started_writing = line.starts_with("ENQ ");
            lines.push(line);
            if started_writing {
                break;
            }
            assert!(Instant::now() < deadline, "seed {seed}: child never started");
        }
        std::thread::sleep(life);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in reader.lines() {
            lines.push(line.unwrap());
        }
        // An ack the child made durable but was killed before confirming may or may not have happened.
        let mut maybe_acked: Option<u64> = None;
        for line in &lines {
            let mut parts = line.trim_end().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("ENQ"), Some(seq), Some(payload)) => {
                    let seq: u64 = seq.parse().unwrap();
                    assert!(
                        seq > max_seq,
                        "seed {seed} round {round}: seq {seq} went backwards (max {max_seq})"
                    );
                    max_seq = seq;
                    expected.insert(seq, payload.to_string());
                    total_enqueues += 1;
                    let n: u64 = payload.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    maybe_acked = n.is_multiple_of(7).then(|| seq.saturating_sub(2));
                }
                (Some("ACK"), Some(upto), None) => {
                    let upto: u64 = upto.parse().unwrap();
                    acked_upto = acked_upto.max(upto);
                    expected.retain(|s, _| *s > upto);
                    maybe_acked = None;
                }
                _ => {} // the test harness's own chatter; a torn last line is fine (never confirmed)
            }
        }
        // Reopen (the store must always reopen) and compare with what was confirmed.
        let store = open_store(&db);
        let got: BTreeMap<u64, String> = store
            .peek(usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, String::from_utf8(e.payload).unwrap()))
            .collect();
        if let Some(upto) = maybe_acked {
            // All or nothing: either the in-flight ack committed (everything <= upto gone) or it did not.
            let gone = expected.range(..=upto).filter(|(s, _)| !got.contains_key(s)).count();
            let total = expected.range(..=upto).count();
            assert!(
                gone == 0 || gone == total,
                "seed {seed} round {round}: a torn ack ({gone} of {total} gone)"
            );
            if gone > 0 {
                acked_upto = acked_upto.max(upto);
                expected.retain(|s, _| *s > upto);
            }
        }
        for (seq, payload) in &expected {
            assert_eq!(
                got.get(seq),
                Some(payload),
                "seed {seed} round {round}: confirmed enqueue {seq} lost"
            );
        }
        assert!(
            got.keys().all(|s| *s > acked_upto),
            "seed {seed} round {round}: an acknowledged entry (<= {acked_upto}) came back"
        );
        // Entries the child wrote but was killed before confirming may exist; adopt them so that a later
        // ack covers them consistently.
        for (seq, payload) in got {
            max_seq = max_seq.max(seq);
            expected.entry(seq).or_insert(payload);
        }
        assert!(store.depth().unwrap().next_seq > max_seq, "seed {seed}: next_seq behind the stored entries");
    }
    println!(
        "outbox crash harness: engine={engine} seed={seed}: {kills} kills, {total_enqueues} confirmed enqueues, \
         0 lost, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
