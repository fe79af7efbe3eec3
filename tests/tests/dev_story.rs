//! `huatuo dev` shows the whole story (issue 19): the dev cluster files repair tickets to a file sink under
//! its data dir (printed at start), so a disk forced into REPAIR shows up in `huatuo ticket list` as filed;
//! and `huatuo export` reads the dev cluster's archive over HTTPS with the context `huatuo dev` wrote (CA,
//! client certificate, operator token).
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use master::cluster::free_port;
use tests::huatuo_bin;

/// Bound on the dev cluster's start and on the filing.
const STAGE: Duration = Duration::from_secs(60);
/// Attempts at finding three consecutive free ports for a port family.
const PORT_ATTEMPTS: usize = 200;

struct Dev(Child);
impl Drop for Dev {
    fn drop(&mut self) {
        // SIGTERM first: huatuo dev stops its masters in order.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A base port with base, base+1 and base+2 free.
fn three_ports() -> u16 {
    for _ in 0..PORT_ATTEMPTS {
        let base = free_port().unwrap();
        let free = (1..3).all(|i| {
            base.checked_add(i).is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no three consecutive free ports in {PORT_ATTEMPTS} attempts");
}

fn huatuo(ctx: &Path, args: &[&str]) -> std::process::Output {
    Command::new(huatuo_bin()).args(args).arg("--context").arg(ctx).output().unwrap()
}

#[test]
fn dev_files_tickets_and_exports_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev");
    let ctx = tmp.path().join("context.toml");
    let (grpc, peer, http) = (three_ports(), three_ports(), three_ports());
    let mut child = Command::new(huatuo_bin())
        .args(["dev", "--no-agent", "--data-dir"])
        .arg(&data)
        .args([
            "--grpc-port",
            &grpc.to_string(),
            "--peer-port",
            &peer.to_string(),
            "--http-port",
            &http.to_string(),
        ])
        .arg("--context")
        .arg(&ctx)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _dev = Dev(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The start banner names the ticket file.
    let deadline = Instant::now() + STAGE;
    let mut banner = Vec::new();
    while !banner.iter().any(|l: &String| l.starts_with("Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        banner.push(rx.recv_timeout(left).unwrap_or_else(|_| panic!("huatuo dev did not start: {banner:?}")));
    }
    let tickets_file = std::fs::canonicalize(&data).unwrap().join("tickets.jsonl");
    assert!(
        banner
            .iter()
            .any(|l| l.contains("repair tickets") && l.contains(&tickets_file.display().to_string())),
        "the banner names the ticket file: {banner:?}"
    );

    let obj = "disk/devhost/sdb";
    let out =
        huatuo(&ctx, &["report", obj, "--severity", "FATAL", "--checker", "manual", "--evidence", "dead"]);
    assert!(out.status.success(), "report: {}", String::from_utf8_lossy(&out.stderr));
    let out = huatuo(&ctx, &["force", obj, "REPAIR", "--reason", "dev story test"]);
    assert!(out.status.success(), "force: {}", String::from_utf8_lossy(&out.stderr));
    // Filed by the leader through the file sink: `ticket list` shows it filed.
    let deadline = Instant::now() + STAGE;
    let listed = loop {
        let out = huatuo(&ctx, &["ticket", "list", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text.lines().find(|l| l.contains(obj)).map(str::to_string);
        if let Some(l) = &line {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["status"] == "filed" && !v["ticket"].as_str().unwrap_or("").is_empty() {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "no filed ticket in `huatuo ticket list`: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let file = std::fs::read_to_string(&tickets_file).unwrap();
    assert_eq!(
        file.lines().filter(|l| l.contains(obj)).count(),
        1,
        "one filing in {}: {file}",
        tickets_file.display()
    );

    // The export reads the dev cluster's archive over HTTPS with the context alone.
    let export = tmp.path().join("export");
    let deadline = Instant::now() + STAGE;
    let manifest = loop {
        let _ = std::fs::remove_dir_all(&export);
        let out = huatuo(&ctx, &["export", "--since", "1d", "--to", export.to_str().unwrap()]);
        assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(export.join("manifest.json")).unwrap()).unwrap();
        // The member asked may apply the filing a moment after the leader.
        if m["tables"]["tickets"]["rows"] == 1 {
            break m;
        }
        assert!(Instant::now() < deadline, "the export never held the ticket: {m}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(manifest["tables"]["findings"]["rows"], 1, "{manifest}");
    assert!(manifest["tables"]["transitions"]["rows"].as_u64().unwrap() >= 2, "{manifest}");
    assert_eq!(manifest["format"], "parquet");
    let _ = listed;
}
