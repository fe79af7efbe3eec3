//! `huatuo bench netvote` at a tiny scale, run as a user would: it prints its seed and figures, finds the
//! faults it injects (NICs and whole ToRs by name, link faults within their equal-cost group), names no suspect
//! in healthy windows and moves no host to ERROR for a switch or link fault. The real-scale figures are in
//! ARCHITECTURE.md; this test guards the plumbing and the floors that hold at any scale.

use std::process::Command;

fn field(out: &str, key: &str) -> f64 {
    let line =
        out.lines().find(|l| l.starts_with("RESULT ")).unwrap_or_else(|| panic!("no RESULT line in:\n{out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn tiny(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args([
            "bench",
            "netvote",
            "--seed",
            "42",
            "--seeds",
            "12",
            "--hosts",
            "480",
            "--tors",
            "24",
            "--aggs",
            "6",
            "--spines",
            "2",
            "--pods",
            "3",
            "--peers",
            "24",
            "--probes",
            "10",
            "--windows",
            "2",
        ])
        .args(extra)
        .output()
        .expect("run huatuo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The RESULT line without its CPU figure (which depends on the machine).
fn result_without_cpu(text: &str) -> String {
    let line = text.lines().find(|l| l.starts_with("RESULT ")).expect("RESULT line");
    line.split_whitespace().filter(|kv| !kv.starts_with("cpu_")).collect::<Vec<_>>().join(" ")
}

#[test]
fn tiny_bench_prints_its_figures_and_finds_the_faults() {
    let text = tiny(&["--threads", "2"]);
    assert!(text.contains("seed 42 (replay with --seed 42)"), "{text}");
    for want in [
        "top-1",
        "top-3",
        "ECMP group",
        "false suspects:",
        "hosts moved to ERROR without a NIC fault: 0",
        "leader CPU per window",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(field(&text, "healthy_suspects"), 0.0, "{text}");
    assert_eq!(field(&text, "wrong_host_errors"), 0.0, "{text}");
    assert!(field(&text, "single_ge1_n") >= 1.0, "{text}");
    // Every single fault at >= 1% loss is found in its ECMP group.
    let group_line =
        text.lines().find(|l| l.contains("single, all types, >= 1% loss")).expect("summary line");
    assert!(group_line.contains("top-1 ECMP group 100.0%"), "{text}");
    // Path evidence: lossy flows were traced and placed on their routes, and with it every single fault at
    // >= 1% loss is named exactly (not only its ECMP group).
    let paths =
        text.lines().find(|l| l.starts_with("path evidence over the fault windows:")).expect("paths line");
    let traced: u64 = paths.split_whitespace().nth(6).and_then(|v| v.parse().ok()).expect("traced count");
    assert!(traced > 0, "{paths}");
    assert_eq!(field(&text, "single_ge1_top1"), 1.0, "{text}");
    // Seeds are independent: one thread gives the same figures as two.
    assert_eq!(result_without_cpu(&tiny(&["--threads", "1"])), result_without_cpu(&text));
    // Without tracing (the per-probe ECMP model) nothing is traced.
    let untraced = tiny(&["--trace", "0"]);
    assert!(untraced.contains("path evidence over the fault windows: 0 flows"), "{untraced}");
    // Bad input is refused with a clear error.
    let bad = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "netvote", "--seeds", "0"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--seeds must be within"));
    let bad = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "netvote", "--seeds", "2", "--threads", "0"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--threads must be within"));
}
