//! The slim binary as a process: `--check-config` accepts a valid config and refuses a broken one with
//! the reason, exactly like `huatuo agent --check-config`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_huatuo-agent");

#[test]
fn check_config_accepts_valid_and_refuses_broken_configs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "version = 1\nhost = \"h1\"\ndata_dir = {:?}\nmasters = [\"127.0.0.1:1\"]\ninsecure = true\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).arg("--config").arg(&good).arg("--check-config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok\n"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 1\nmasters = []\nno_such_key = 3\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&bad).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("huatuo-agent: error:"));

    let out = Command::new(BIN).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && v.starts_with("huatuo-agent ") && v.contains(" (git "), "{v}");

    let out = Command::new(BIN).arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "usage errors are errors (1); 2 means needs a human");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument"));
}
