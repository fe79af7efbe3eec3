//! `huatuo bench heartbeats` at a tiny scale against its own real 3-node cluster: every phase answers every
//! agent, beats go over the agents' heartbeat streams as a real agent sends them (calls only where a stream
//! cannot carry a beat), and `--beat-calls` sends every beat as a call; `--ingest-streams` holds one idle
//! ingest stream per agent on the leader and sees the leader end them all; `--tls` runs the same with TLS
//! and tokens on every port and prints the leader's memory and descriptors holding the connections. No timing assertion: the figures are
//! the benchmark's output, not a test's.

use std::process::Command;

const AGENTS: u64 = 120;
const CLIENTS: u64 = 8;

/// (over streams, as calls) of the phase line starting with `phase`, after checking every agent was answered.
fn phase_split(stdout: &str, phase: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(phase))
        .unwrap_or_else(|| panic!("no line starting {phase:?} in:\n{stdout}"));
    assert!(line.contains(&format!(": {AGENTS}/{AGENTS} beats in ")), "{line}");
    assert!(line.contains("; 0 failed;"), "{line}");
    let tail = line.rsplit("revisions; ").next().expect("split");
    let num = |s: &str| s.trim().split(' ').next().and_then(|n| n.parse::<u64>().ok());
    let (streamed, called) = tail.split_once(" over streams, ").expect("over streams");
    let called = called.strip_suffix(" as calls").expect("as calls");
    let (s, c) = (num(streamed).expect("streamed"), num(called).expect("called"));
    assert_eq!(s + c, AGENTS, "every beat went one way or the other: {line}");
    (s, c)
}

fn run(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "heartbeats", "--agents", &AGENTS.to_string(), "--clients", &CLIENTS.to_string()])
        .args(["--objects-per-host", "1", "--steady-rounds", "2", "--phase-limit-secs", "60"])
        .args(extra)
        .output()
        .expect("run huatuo bench heartbeats");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains(&format!("register: {AGENTS}/{AGENTS} hosts")), "{stdout}");
    assert!(
        stdout.contains("leader ") && stdout.contains(" killed (-9) and restarted as a follower"),
        "{stdout}"
    );
    stdout
}

#[test]
fn agents_beat_over_their_streams_and_with_calls_when_told() {
    let out = run(&["--ingest-streams"]);
    assert!(out.contains("beats over each agent's heartbeat stream"), "{out}");
    // Every agent's second batch went over its own stream, and the leader held them all open at once ...
    let ingest = out.lines().find(|l| l.starts_with("ingest streams: ")).unwrap_or_else(|| panic!("{out}"));
    assert!(ingest.contains(&format!("{AGENTS}/{AGENTS} first batches as calls (0 failed)")), "{ingest}");
    assert!(ingest.contains(&format!("then {AGENTS}/{AGENTS} in ")), "{ingest}");
    assert!(ingest.contains(&format!("({AGENTS} answered on them), 0 failed;")), "{ingest}");
    assert!(ingest.contains(&format!(" holds {AGENTS} open (0 before)")), "{ingest}");
    // ... until each had been idle for the leader's limit.
    assert!(out.contains("  idle end (10s): 0 open "), "{out}");
    // A client whose first address is a follower carries an agent's first beat as a call (the redirect);
    // every other beat of the first phase opens the agent's stream.
    let (s, c) = phase_split(&out, "first beats (agents new to the cluster): ");
    assert!(c <= CLIENTS && s >= AGENTS - CLIENTS, "{out}");
    // The steady rounds meet the agents' streams open on the same leader, through clients that stay
    // there (kept from phase to phase, as an agent keeps its client): every beat over a stream.
    for round in ["steady beats, round 1: ", "steady beats, round 2: "] {
        let (s, c) = phase_split(&out, round);
        assert!(c == 0 && s == AGENTS, "{round}\n{out}");
    }
    // After the kill the broken streams are replaced on the new leader (a call where a client starts at a
    // follower), and the beats after that go over them.
    let (_, c) = phase_split(&out, "first beats to the new leader: ");
    assert!(c <= 2 * CLIENTS, "{out}");
    let (s, c) = phase_split(&out, "steady beats, new leader: ");
    assert!(c == 0 && s == AGENTS, "{out}");

    let out = run(&["--beat-calls"]);
    assert!(out.contains("beats as one call each (--beat-calls)"), "{out}");
    for phase in [
        "first beats (agents new to the cluster): ",
        "steady beats, round 1: ",
        "steady beats, round 2: ",
        "first beats to the new leader: ",
        "steady beats, new leader: ",
    ] {
        assert_eq!(phase_split(&out, phase), (0, AGENTS), "{phase}\n{out}");
    }
}

#[test]
fn agents_beat_over_tls_with_a_token_and_the_leaders_connections_are_counted() {
    let out = run(&["--tls"]);
    assert!(out.contains("TLS and tokens (--tls)"), "{out}");
    for round in ["steady beats, round 1: ", "steady beats, round 2: "] {
        let (s, c) = phase_split(&out, round);
        assert!(c == 0 && s == AGENTS, "{round}\n{out}");
    }
    // Each phase says what the leader spent on it (when one member led it through).
    let cpu =
        out.lines().filter(|l| l.starts_with("  leader ") && l.contains(" CPU over the phase: ")).count();
    assert!(cpu >= 2, "{out}");
    let line =
        out.lines().find(|l| l.starts_with("leader after the steady rounds: RSS ")).expect("memory line");
    let fds: u64 = line
        .split(" MiB, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("descriptors in {line}"));
    // Each client's connection is a descriptor on the leader (the clients start at the first address and
    // follow the leader; a connection to a follower is dropped when a client moves).
    assert!(fds >= CLIENTS && line.ends_with(&format!("({CLIENTS} clients' connections)")), "{line}");
}

#[test]
fn tls_and_ingest_streams_are_refused_together() {
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "heartbeats", "--agents", "1", "--tls", "--ingest-streams"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not go together"), "{out:?}");
}
