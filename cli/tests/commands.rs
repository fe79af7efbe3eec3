//! The `huatuo` binary's offline commands, run as a user would: exit codes and output of `fsm`, `check`
//! and the not-yet-built placeholders. Being an integration test of the `huatuo` package, it also makes
//! `cargo test --workspace` build the real binary that the multi-process tests in `tests/` start.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_huatuo")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).current_dir(repo()).output().expect("run huatuo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fsm_show_prints_every_diagram_and_rejects_unknown_kinds() {
    for kind in ["disk", "machine", "dimm", "nic"] {
        let (code, out, err) = run(&["fsm", "show", kind]);
        assert_eq!(code, 0, "{kind}: {err}");
        assert!(out.contains("stateDiagram-v2"), "{kind}: {out}");
        let (code, out, _) = run(&["fsm", "show", kind, "--dot"]);
        assert_eq!(code, 0);
        assert!(out.contains("digraph"), "{kind}: {out}");
    }
    let (code, _, err) = run(&["fsm", "show", "gpu"]);
    assert_ne!(code, 0);
    assert!(!err.is_empty());
}

#[test]
fn fsm_check_runs_every_shipped_transcript_and_reports_divergence() {
    let dir = repo().join("state-machines/testdata/transcripts");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("transcripts dir") {
        let p = e.expect("entry").path();
        let (code, _, err) = run(&["fsm", "check", p.to_str().expect("utf8 path")]);
        assert_eq!(code, 0, "{}: {err}", p.display());
        n += 1;
    }
    assert!(n >= 4, "expected the shipped transcripts, found {n}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let garbage = tmp.path().join("garbage.txt");
    std::fs::write(&garbage, b"\xff\xfe\x00binary garbage\n").expect("write");
    let (code, _, err) = run(&["fsm", "check", garbage.to_str().expect("utf8")]);
    assert_eq!(code, 2, "malformed transcript: {err}");
}

#[test]
fn inspect_without_a_master_is_a_clear_error() {
    // Port 1 on loopback: nothing listens. Exit 1 (cannot ask), not 0 (healthy) nor 2 (needs a human).
    let (code, _, err) = run(&["inspect", "--master", "127.0.0.1:1", "--insecure"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:1") || err.contains("UNAVAILABLE"), "{err}");
}
