//! `huatuo bench master` end to end, small: a real 3-node cluster, simulated agents on shared connections.

use std::process::Command;

#[test]
fn bench_master_prints_throughput_over_shared_connections() {
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "master", "--agents", "8", "--batch", "1", "--seconds", "1"])
        .args([
            "--watch-seconds",
            "1",
            "--watch-rate",
            "200",
            "--kills",
            "0",
            "--connections",
            "2",
            "--checkers",
            "3",
        ])
        .output()
        .expect("run huatuo bench master");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    let line = stdout.lines().find(|l| l.starts_with("throughput:")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains(
            "8 agents x 1 findings/batch (2 shared connections, a stream each, 3 checkers in turn)"
        ),
        "{line}"
    );
    // Each agent's batches went over its ingest stream on its shared connection, as agents send them.
    let (batches, streamed) = batches_and_streamed(&stdout);
    assert!(batches > 0 && streamed + 8 >= batches, "at most one call per agent: {stdout}");
    let rate: f64 = line
        .split(": ")
        .nth(2)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {line}"));
    assert!(rate > 0.0, "nothing committed: {line}");
    // The phase's CPU per committed finding, split between the three members, the bench and the rest.
    let cpu = stdout
        .lines()
        .find(|l| l.starts_with("CPU per committed finding: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    for part in
        ["member 1 ", "member 2 ", "member 3 ", "this bench's clients ", "the rest ", "(leader: member "]
    {
        assert!(cpu.contains(part), "{part:?} missing: {cpu}");
    }
    let us: f64 = cpu
        .trim_start_matches("CPU per committed finding: ")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {cpu}"));
    assert!(us > 0.0, "{cpu}");
    assert!(!stderr.lines().any(|l| l.starts_with("agent ")), "an agent's call failed: {stderr}");
}

/// (batches, of them answered on streams) of the throughput phase's latency line.
fn batches_and_streamed(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("submit->commit latency"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let inner = line.rsplit_once('(').map(|(_, r)| r).unwrap_or_else(|| panic!("{line}"));
    let nums: Vec<u64> = inner.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    match nums.as_slice() {
        [batches, streamed] => (*batches, *streamed),
        _ => panic!("no batch counts in {line}"),
    }
}

#[test]
fn bench_master_sends_single_calls_when_told() {
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "master", "--agents", "4", "--batch", "1", "--seconds", "1", "--ingest-calls"])
        .args(["--watch-seconds", "1", "--watch-rate", "100", "--kills", "0"])
        .output()
        .expect("run huatuo bench master");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("throughput:")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("(one connection each, single calls)"), "{line}");
    let (batches, streamed) = batches_and_streamed(&stdout);
    assert!(batches > 0, "{stdout}");
    assert_eq!(streamed, 0, "no batch on a stream: {stdout}");
}

/// Processes whose command line mentions `needle` (the cluster's data dir).
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{}: {text}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// A `kill` (SIGTERM) of a benchmark stops the masters it started: they used to run on after it.
#[test]
fn a_terminated_bench_stops_its_masters() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "master", "--agents", "4", "--batch", "1", "--seconds", "600", "--kills", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run huatuo bench master");
    let stdout = child.stdout.take().expect("stdout");
    // "cluster: 3 nodes, leader N, data under DIR": the masters run from then on.
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("cluster:"))
        .expect("the bench printed its cluster");
    let dir = line.split("data under ").nth(1).expect("data dir").trim().to_string();
    assert_eq!(processes_naming(&dir).len(), 3, "three masters under {dir}: {:?}", processes_naming(&dir));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    // The bench waited for its masters before exiting (the cluster's Drop kills and reaps them).
    assert_eq!(processes_naming(&dir), Vec::<String>::new(), "masters left running");
}

/// Children of `parent` (from /proc/*/stat), with their state.
fn children_of(parent: u32) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": the comm may hold spaces, so split after its closing parenthesis.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.next().and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            found.push((pid, state));
        }
    }
    found
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

/// `bench agent` runs its phases synchronously; a `kill` of it still stops the three masters and the
/// agent it started, and removes their temporary directories.
#[test]
fn a_terminated_bench_agent_stops_what_it_started() {
    use std::io::BufRead;
    // The bench's temporary directories go here, to be found afterwards.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "agent", "--seconds", "600"])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run huatuo bench agent");
    let stdout = child.stdout.take().expect("stdout");
    // "huatuo bench agent: BINARY (pid N), ...": the masters and the agent run from then on.
    let mut lines = std::io::BufReader::new(stdout).lines().map_while(Result::ok);
    lines.find(|l| l.starts_with("huatuo bench agent:")).expect("the bench started its agent");
    let started: Vec<u32> =
        children_of(child.id()).into_iter().filter(|(_, s)| *s != 'Z').map(|(p, _)| p).collect();
    assert!(started.len() >= 4, "three masters and the agent: {started:?}");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(1));
    // SIGKILLed before the bench exited; a process dies when it next runs, so allow it a moment (on a busy
    // machine), bounded: without the kill they would run on for good.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut running: Vec<u32> = started;
    while !running.is_empty() && std::time::Instant::now() < deadline {
        running.retain(|p| !ended(*p));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(running.is_empty(), "still running 10 s after the bench ended: {running:?}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "temporary directories left behind: {left:?}");
}
