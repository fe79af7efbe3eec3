//! `huatuo bench master` end to end, small: a real 3-node cluster, simulated agents on shared connections.

use std::process::Command;

#[test]
fn bench_master_prints_throughput_over_shared_connections() {
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "master", "--agents", "8", "--batch", "1", "--seconds", "1"])
        .args(["--watch-seconds", "1", "--watch-rate", "200", "--kills", "0", "--connections", "2"])
        .output()
        .expect("run huatuo bench master");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    let line = stdout.lines().find(|l| l.starts_with("throughput:")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("8 agents x 1 findings/batch (2 shared connections)"), "{line}");
    let rate: f64 = line
        .split(": ")
        .nth(2)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {line}"));
    assert!(rate > 0.0, "nothing committed: {line}");
    assert!(!stderr.lines().any(|l| l.starts_with("agent ")), "an agent's call failed: {stderr}");
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
