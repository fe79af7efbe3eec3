//! CLI manners (issue 19), offline: failing fast with a clear message when no master answers, `--wait`
//! bounds, exit statuses (usage errors are 1, never 2), `--help` documenting them, `huatuo version`,
//! completions and man pages. The listings' `-o json|yaml|wide` against a real master are in
//! `tests/tests/cli_manners.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_huatuo")
}

/// Run huatuo with no client context from the environment (a private HOME) and no HUATUO_* variables.
fn run_in(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("HUATUO_MASTER")
        .env_remove("HUATUO_CONTEXT")
        .env_remove("HUATUO_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A loopback port nobody listens on: bound, read, released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn no_master_fails_fast_naming_what_it_tried() {
    let home = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", closed_port());
    let t = Instant::now();
    let (code, out, err) = run_in(home.path(), &["objects", "--master", &addr, "--insecure"]);
    let took = t.elapsed();
    println!("huatuo objects against a closed port: exit {code} after {} ms", took.as_millis());
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no master answered within 1.9 s"), "{err}");
    assert!(
        err.contains(&addr) && err.contains("--master"),
        "names the address and where it came from: {err}"
    );
    assert!(err.contains("--wait"), "says how to block instead: {err}");
    assert!(!err.contains("gave up after 30 attempts"), "the old count-based retry is gone: {err}");

    // From a context file: the message names the file.
    let ctx = home.path().join("ctx.toml");
    std::fs::write(&ctx, format!("version = 1\nmasters = [\"{addr}\"]\n")).unwrap();
    let (code, _, err) =
        run_in(home.path(), &["status", "--context", ctx.to_str().unwrap(), "--insecure", "-o", "json"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("the context file {}", ctx.display())), "{err}");

    // The default address, with no context file: says so.
    let (code, _, err) =
        run_in(home.path(), &["proposals", "--insecure", "--master", &addr, "--wait", "300ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no master answered within 0.3 s"), "--wait sets the budget: {err}");
}

#[test]
fn wait_durations_are_checked() {
    let home = tempfile::tempdir().unwrap();
    for (bad, why) in [
        ("0s", "longer than 0"),
        ("25h", "limit of 24h"),
        ("1441m", "limit of 24h"),
        ("5 min", "unit"),
        ("soon", "not a duration"),
    ] {
        let (code, _, err) = run_in(home.path(), &["objects", "--insecure", "--wait", bad]);
        assert_eq!(code, 1, "--wait {bad}: {err}");
        assert!(err.contains(why), "--wait {bad}: {err}");
    }
}

#[test]
fn exit_statuses_are_documented_and_usage_errors_are_1() {
    let home = tempfile::tempdir().unwrap();
    let (code, out, _) = run_in(home.path(), &["--help"]);
    assert_eq!(code, 0);
    for want in ["Exit status:", "0  ok", "1  error", "2  needs a human", "-o table|wide|json|yaml", "--wait"]
    {
        assert!(out.contains(want), "--help lacks {want:?}:\n{out}");
    }
    let (code, _, err) = run_in(home.path(), &["objects", "--no-such-flag"]);
    assert_eq!(code, 1, "a usage error is an error, not 'needs a human': {err}");
    let (code, _, err) = run_in(home.path(), &["objects", "-o", "xml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("yaml"), "lists the formats: {err}");
    let (code, _, err) = run_in(home.path(), &["objects", "-o", "json", "--json"]);
    assert_eq!(code, 1, "-o and --json conflict: {err}");
}

#[test]
fn version_names_the_build_and_every_builtin_checker_and_rule_set() {
    let home = tempfile::tempdir().unwrap();
    let (code, out, err) = run_in(home.path(), &["version"]);
    assert_eq!(code, 0, "{err}");
    let git = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let want_rev = git.unwrap_or_else(|| "unknown".into());
    assert!(out.starts_with(&format!("huatuo {} (git {want_rev})", env!("CARGO_PKG_VERSION"))), "{out}");
    for c in ["disk", "edac", "kernel-log", "machine", "nic", "rasdaemon", "online", "offline", "archive"] {
        assert!(out.contains(c), "{c} missing:\n{out}");
    }
    let (code, out, _) = run_in(home.path(), &["version", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["git"], want_rev.as_str());
    assert_eq!(v["checkers"].as_array().map(Vec::len), Some(6), "{v}");
    let rules = &v["rule_sets"][0];
    assert_eq!((rules["name"].as_str(), rules["type"].as_str()), (Some("kernel-log"), Some("rules")), "{v}");
    assert!(rules["rules"].as_u64().unwrap() > 10, "{v}");
    let (code, out, _) = run_in(home.path(), &["version", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(out.contains("checkers:\n- kinds:\n  - disk\n  name: disk\n  version: \"1.0.0\"\n"), "{out}");
    let (code, out, _) = run_in(home.path(), &["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("(git {want_rev})")), "{out}");
}

#[test]
fn completions_and_man_pages() {
    let home = tempfile::tempdir().unwrap();
    for (shell, marker) in
        [("bash", "complete -F _huatuo"), ("zsh", "#compdef huatuo"), ("fish", "complete -c huatuo")]
    {
        let (code, out, err) = run_in(home.path(), &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {}", &out[..out.len().min(300)]);
        assert!(out.contains("objects") && out.contains("output"), "{shell} completes commands and flags");
    }
    let (code, _, err) = run_in(home.path(), &["completions", "tcsh"]);
    assert_eq!(code, 1, "{err}");
    let dir = home.path().join("man");
    let (code, out, err) = run_in(home.path(), &["generate-man", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("man pages in"), "{out}");
    for page in
        ["huatuo.1", "huatuo-objects.1", "huatuo-ticket-list.1", "huatuo-net-suspects.1", "huatuo-version.1"]
    {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    assert!(!dir.join("huatuo-generate-man.1").exists(), "hidden commands get no page");
    let objects = std::fs::read_to_string(dir.join("huatuo-objects.1")).unwrap();
    assert!(objects.contains("output") && objects.contains("wait"), "the page documents the flags");
}
