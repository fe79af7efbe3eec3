//! CLI manners (issue 19) against a real `huatuo master` process: `-o json|yaml|wide` on every listing
//! command (the JSON is one document that parses; YAML and wide print and exit as the table does), and
//! `--wait` blocking until a master answers: the command outlives the 2 s no-answer budget while the master
//! is down and succeeds once it is back.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use master::cluster::{LocalCluster, READY_TIMEOUT};
use tests::huatuo_bin;

/// How long the `--wait` test lets the CLI wait at most (its own bound is given on the command line).
const WAIT_BOUND: Duration = Duration::from_secs(60);

fn cli(args: &[&str], master: &str) -> (Option<i32>, String, String) {
    let home = std::env::temp_dir();
    let out = Command::new(huatuo_bin())
        .args(args)
        .env("HUATUO_MASTER", master)
        .env("HOME", &home) // no operator context from this machine
        .env_remove("HUATUO_CONTEXT")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("run huatuo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_speaks_json_yaml_and_wide() {
    let cluster = LocalCluster::start(&huatuo_bin(), 1).expect("start master");
    cluster.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("no leader:\n{}", cluster.log_tail(1)));
    let m = cluster.grpc_addrs();
    let (code, _, err) =
        cli(&["report", "disk/h1/sdb", "--severity", "WARNING", "--evidence", "yes: no"], &m);
    assert_eq!(code, Some(0), "{err}");

    // (command, a key its JSON document has at the top, exit status a healthy one-node cluster gives)
    let listings: &[(&[&str], &str)] = &[
        (&["objects"], "objects"),
        (&["object", "disk/h1/sdb"], "history"),
        (&["status"], "members"),
        (&["level"], ""),
        (&["proposals", "--status", "all"], "proposals"),
        (&["quotas"], "config"),
        (&["ticket", "list"], "tickets"),
        (&["catalog", "list"], "artifacts"),
        (&["catalog", "show", "kernel-log"], "artifacts"),
        (&["rollout", "status"], "checkers"),
        (&["net", "suspects"], "suspects"),
        (&["net", "matrix"], "cells"),
        (&["net", "topology", "show"], "source"),
        (&["inspect"], "members"),
    ];
    for (args, key) in listings {
        let name = args.join(" ");
        let with = |fmt: &str| {
            let mut a: Vec<&str> = args.to_vec();
            a.extend(["-o", fmt]);
            cli(&a, &m)
        };
        let (code, table, err) = cli(args, &m);
        // inspect may say a fresh cluster needs a human (2); the format must not change the status.
        assert!(matches!(code, Some(0) | Some(2)), "{name}: {code:?} {err}");
        let (jcode, json, err) = with("json");
        assert_eq!(jcode, code, "{name} -o json: {err}");
        let v: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{name} -o json is not one document: {e}\n{json}"));
        if key.is_empty() {
            assert!(v.is_array(), "{name}: {v}");
        } else {
            assert!(v.get(key).is_some(), "{name} -o json lacks {key:?}: {v}");
        }
        let (ycode, yaml, err) = with("yaml");
        assert_eq!(ycode, code, "{name} -o yaml: {err}");
        if !key.is_empty() {
            assert!(yaml.lines().any(|l| l.starts_with(&format!("{key}:"))), "{name} -o yaml:\n{yaml}");
        }
        let (wcode, wide, err) = with("wide");
        assert_eq!(wcode, code, "{name} -o wide: {err}");
        assert!(!wide.is_empty() || table.is_empty(), "{name} -o wide printed nothing");
        println!(
            "{name}: table {} B, json {} B, yaml {} B, wide {} B",
            table.len(),
            json.len(),
            yaml.len(),
            wide.len()
        );
    }
    // The shapes agree: the YAML of `objects` carries the object, its evidence text quoted (": " inside).
    let (_, yaml, _) = cli(&["objects", "-o", "yaml"], &m);
    assert!(yaml.contains("\n  id: disk/h1/sdb\n"), "{yaml}");
    assert!(yaml.contains("    evidence: \"yes: no\"\n"), "{yaml}");
    let (_, wide, _) = cli(&["objects", "-o", "wide"], &m);
    assert!(wide.lines().next().is_some_and(|h| h.contains("SINCE") && h.contains("EVIDENCE")), "{wide}");
    // The older flags keep their shapes: proposals --json is JSON lines (none here), objects --json a document.
    let (code, out, _) = cli(&["objects", "--json"], &m);
    assert_eq!(code, Some(0));
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| v["objects"].is_array()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_blocks_until_a_master_answers() {
    let mut cluster = LocalCluster::start(&huatuo_bin(), 1).expect("start master");
    cluster.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("no leader:\n{}", cluster.log_tail(1)));
    let m = cluster.grpc_addrs();
    cluster.kill9(1);

    // Without --wait: the fast failure.
    let t = Instant::now();
    let (code, _, err) = cli(&["objects"], &m);
    println!("no master, no --wait: exit {code:?} after {} ms", t.elapsed().as_millis());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no master answered"), "{err}");

    // With --wait: still waiting after the 2 s budget, and done once the master is back.
    let started = Instant::now();
    let mut child = Command::new(huatuo_bin())
        .args(["objects", "-o", "json", "--wait", "60s"])
        .env("HUATUO_MASTER", &m)
        .env("HOME", std::env::temp_dir())
        .env_remove("HUATUO_CONTEXT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn huatuo");
    while started.elapsed() < Duration::from_secs(3) {
        assert!(child.try_wait().expect("try_wait").is_none(), "--wait gave up while the master was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.spawn(1, false).expect("restart the master");
    let deadline = Instant::now() + WAIT_BOUND;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("huatuo objects --wait did not finish within {WAIT_BOUND:?}:\n{}", cluster.log_tail(1));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().expect("output");
    println!(
        "--wait: answered {} ms after starting (master restarted at ~3 s)",
        started.elapsed().as_millis()
    );
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert!(v["objects"].is_array(), "{v}");
}

/// Output that cannot be written: a reader that went away (`huatuo inspect | head`) ends the command
/// quietly with success, and a full file system (`> /dev/full`) is a one-line error with exit 1. Neither is
/// a panic with a backtrace, which is what every command printing with `println!` gave before session 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_cannot_be_written_ends_the_command_cleanly() {
    let cluster = LocalCluster::start(&huatuo_bin(), 1).expect("start master");
    cluster.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("no leader:\n{}", cluster.log_tail(1)));
    let m = cluster.grpc_addrs();
    for args in [&["status"][..], &["inspect"], &["objects"], &["level"], &["proposals"], &["version"]] {
        // The read end is closed before the command prints anything: its first write fails.
        let mut child = Command::new(huatuo_bin())
            .args(args)
            .env("HUATUO_MASTER", &m)
            .env("HOME", std::env::temp_dir())
            .env_remove("HUATUO_CONTEXT")
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn huatuo");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{args:?} into a closed pipe: {:?}, stderr {err:?}", out.status.code());
        assert!(out.status.success() && !err.contains("panicked"), "{args:?}: {:?}\n{err}", out.status);
        if std::path::Path::new("/dev/full").exists() {
            let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
            let out = Command::new(huatuo_bin())
                .args(args)
                .env("HUATUO_MASTER", &m)
                .env("HOME", std::env::temp_dir())
                .env_remove("HUATUO_CONTEXT")
                .env("RUST_BACKTRACE", "1")
                .stdout(full)
                .output()
                .expect("run huatuo");
            let err = String::from_utf8_lossy(&out.stderr);
            println!("{args:?} into /dev/full: {:?}, stderr {err:?}", out.status.code());
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.starts_with("huatuo: error: ") && err.lines().count() == 1, "{args:?}: {err}");
        }
    }
}
