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
