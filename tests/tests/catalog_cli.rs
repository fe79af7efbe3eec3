//! The catalog's CLI against a real `huatuo master` process (issue 15): `huatuo catalog push|list|show`,
//! `huatuo rollout start|status|pause`, a refused rule set and a missing reason, and `huatuo inspect`
//! naming a paused rollout.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::process::Command;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use tests::{huatuo_bin, wait_until};

/// The leader enables command version 4 and seeds the catalog within its first duty rounds.
const SETTLE: Duration = Duration::from_secs(30);

fn cli(args: &[&str], master: &str) -> (Option<i32>, String, String) {
    let out =
        Command::new(huatuo_bin()).args(args).env("HUATUO_MASTER", master).output().expect("run huatuo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_rollout_commands() {
    let cluster = LocalCluster::start(&huatuo_bin(), 1).expect("start master");
    cluster.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("no leader:\n{}", cluster.log_tail(1)));
    let seeded = wait_until(SETTLE, || {
        let mut c = cluster.client();
        async move {
            c.call(api::ListCatalogRequest { name: "kernel-log".into() }, |mut c, r| async move {
                c.list_catalog(r).await
            })
            .await
            .is_ok_and(|l| l.artifacts.iter().any(|a| a.r#type == "rules"))
        }
    })
    .await;
    assert!(seeded, "never seeded:\n{}", cluster.log_tail(1));
    let m = cluster.grpc_addrs();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("probe.sh");
    std::fs::write(&script, "#!/bin/sh\necho '[]'\n").expect("write");
    let s = script.to_str().expect("utf-8 path");
    let push = [
        "catalog",
        "push",
        s,
        "--name",
        "probe",
        "--version",
        "1",
        "--kinds",
        "disk,machine",
        "--interval",
        "30s",
    ];
    let (code, out, err) = cli(&push, &m);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("stored probe@1"), "{out}");
    let (code, out, _) = cli(&push, &m);
    assert_eq!(code, Some(0));
    assert!(out.contains("already stored"), "{out}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = \"1\"\n[[rule]\n").expect("write");
    let b = bad.to_str().expect("utf-8 path");
    let (code, _, err) =
        cli(&["catalog", "push", b, "--name", "rules-x", "--version", "1", "--type", "rules"], &m);
    assert_ne!(code, Some(0));
    assert!(err.contains("rule set does not compile"), "{err}");
    let (code, _, err) = cli(&["rollout", "start", "probe@1", "--hosts", "h1,h2"], &m);
    assert_ne!(code, Some(0), "a rollout needs a reason");
    assert!(err.contains("--reason"), "{err}");
    let (code, out, err) =
        cli(&["rollout", "start", "probe@1", "--hosts", "h1,h2", "--reason", "try it"], &m);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("rollout probe@1 gray on hosts h1,h2"), "{out}");
    let (code, out, err) = cli(&["rollout", "status", "probe"], &m);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("probe (external): stable none") && out.contains("rollout probe@1 gray"), "{out}");
    let (code, out, _) = cli(&["catalog", "list"], &m);
    assert_eq!(code, Some(0));
    assert!(out.contains("kernel-log") && out.contains("builtin") && out.contains("probe"), "{out}");
    let (code, out, _) = cli(&["catalog", "show", "probe", "--json"], &m);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let kinds = &v["artifacts"][0]["spec"];
    assert_eq!(
        (v["artifacts"][0]["name"].as_str(), kinds["interval_ms"].as_u64()),
        (Some("probe"), Some(30_000))
    );
    let (code, _, err) = cli(&["rollout", "pause", "probe@1", "--reason", "looks odd"], &m);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli(&["inspect"], &m);
    assert_eq!(code, Some(2), "a paused rollout needs a human: {out}{err}");
    assert!(out.contains("probe@1 paused by an operator"), "{out}");
    // Promoted, then retired: the stable version is unassigned and a second retire is refused.
    let (code, _, err) = cli(&["rollout", "promote", "probe@1", "--reason", "fine after all"], &m);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli(&["rollout", "retire", "probe@1", "--reason", "probe no longer needed"], &m);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("probe@1 is unassigned: no host runs it"), "{out}");
    let (code, out, _) = cli(&["rollout", "status", "probe"], &m);
    assert_eq!(code, Some(0));
    assert!(out.contains("probe (external): stable none"), "{out}");
    let (code, _, err) = cli(&["rollout", "retire", "probe@1", "--reason", "again"], &m);
    assert_ne!(code, Some(0));
    assert!(err.contains("probe has no stable version to retire"), "{err}");
}
