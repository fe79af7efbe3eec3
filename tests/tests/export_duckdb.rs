//! Issue 19, export for analytics, end to end: 3 real `huatuo master` processes (with a file ticket sink),
//! a known story put in through the public API as agents and operators would (disks of two models reporting
//! SMART readings daily over four weeks, four of them failing on known days; three REPAIR stays of known
//! order; machine findings of three rules with known counts), then `huatuo export` (the real binary) to
//! Parquet and to CSV, and the three queries of deploy/analytics/queries.sql run by DuckDB's Python package:
//! failure rate per disk model and week, mean time in REPAIR, top rules by findings, each checked against
//! what the test put in (the REPAIR times against the master's own object history).
//!
//! Needs the `huatuo` binary built (see `tests::huatuo_bin`) and DuckDB: run `.ci/analytics-deps` (a venv
//! at `$HUATUO_CI_VENV`, default /opt/huatuo-ci/venv). Without it this test FAILS, saying so.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::client::{Client, parse_addrs};
use serde_json::Value;
use tests::{huatuo_bin, wait_until};

/// Bound on each stage (filings, the archive catching up on the member the export reads).
const STAGE: Duration = Duration::from_secs(60);
const DAY_MS: u64 = 86_400_000;
/// Days of SMART history before today (within the master's 30-day finding age limit).
const HISTORY_DAYS: u64 = 27;
/// Disks per model.
const DISKS: usize = 6;

fn python() -> PathBuf {
    let venv = std::env::var_os("HUATUO_CI_VENV")
        .map_or_else(|| PathBuf::from("/opt/huatuo-ci/venv"), PathBuf::from);
    let py = venv.join("bin/python");
    let ok = Command::new(&py).args(["-c", "import duckdb"]).output().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "DuckDB's Python package is missing ({} cannot import duckdb): run .ci/analytics-deps first \
         (it creates the venv; HUATUO_CI_VENV overrides its path)",
        py.display()
    );
    py
}

/// `GET path` on a master's HTTP port (plain HTTP: the cluster is --insecure), the JSON body.
fn get(http: &str, path: &str) -> Option<Value> {
    let mut s = std::net::TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

fn finding(
    object: &str,
    severity: &str,
    checker: &str,
    rule: &str,
    time_ms: u64,
    readings: &[(&str, String)],
) -> api::Finding {
    api::Finding {
        object: object.into(),
        severity: severity.into(),
        checker: checker.into(),
        version: "1.0.0".into(),
        rule: rule.into(),
        evidence: format!("{rule} seen"),
        readings: readings.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        time_ms,
        shadow: false,
    }
}

async fn ingest(cl: &mut Client, findings: Vec<api::Finding>) {
    let n = findings.len();
    let req = api::IngestRequest { agent: String::new(), seq: 0, findings, epoch: 0 };
    let r = cl.call(req, |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    assert_eq!(r.applied as usize, n, "every finding applied: {r:?}");
}

async fn force(cl: &mut Client, object: &str, to: &str) {
    let cmd = api::CommandRequest {
        object: object.into(),
        kind: "force".into(),
        value: to.into(),
        by: "test".into(),
        reason: "export test".into(),
        ..Default::default()
    };
    cl.call(cmd, |mut c, r| async move { c.command(r).await }).await.expect("force");
}

async fn object(cl: &mut Client, id: &str) -> api::GetObjectResponse {
    let req = api::GetObjectRequest { id: id.into(), stale: false };
    cl.call(req, |mut c, r| async move { c.get_object(r).await }).await.expect("get object")
}

/// Monday of the week of day `d` (days since 1970-01-01, a Thursday), as YYYY-MM-DD.
fn week_of(d: u64) -> String {
    civil(d - (d + 3) % 7)
}

fn civil(days: u64) -> String {
    predict::data::civil_date(days as i64)
}

const RUNNER: &str = r#"
import duckdb, json, sys
fmt, export_dir, sql_file = sys.argv[1:4]
text = open(sql_file).read().replace("EXPORT_DIR", export_dir)
blocks, name, cur = {}, None, []
for line in text.splitlines():
    if line.startswith("-- setup:") or line.startswith("-- query:"):
        if name: blocks[name] = "\n".join(cur)
        name, cur = line[3:].replace(" ", ""), []
    elif name:
        cur.append(line)
if name: blocks[name] = "\n".join(cur)
con = duckdb.connect()
for stmt in blocks["setup:" + fmt].split(";"):
    if stmt.strip(): con.execute(stmt)
out = {}
for k, q in blocks.items():
    if k.startswith("query:"):
        cur = con.execute(q)
        cols = [d[0] for d in cur.description]
        out[k[6:]] = [dict(zip(cols, [float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, int) else v for v in row])) for row in cur.fetchall()]
print(json.dumps(out, default=str))
"#;

fn run_queries(py: &Path, fmt: &str, dir: &Path) -> Value {
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/analytics/queries.sql");
    let out = Command::new(py).args(["-c", RUNNER, fmt]).arg(dir).arg(&sql).output().expect("run python");
    assert!(out.status.success(), "duckdb ({fmt}): {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("query output")
}

fn export(masters: &LocalCluster, dir: &Path, format: &str, extra: &[&str]) -> std::process::Output {
    let http = format!("http://{}", masters.nodes[&1].http);
    Command::new(huatuo_bin())
        .args(["export", "--since", "30d", "--format", format, "--http", &http, "--insecure", "--master"])
        .arg(masters.grpc_addrs())
        .arg("--to")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run huatuo export")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_answers_the_three_questions_in_duckdb() {
    let py = python();
    let tmp = tempfile::tempdir().unwrap();
    let tickets = tmp.path().join("tickets.jsonl");
    let extra = format!("[tickets]\nsink = \"file\"\npath = \"{}\"\npoll_ms = 200\n", tickets.display());
    let masters = LocalCluster::start_with_config(&huatuo_bin(), 3, &extra).expect("start");
    masters.wait_leader(READY_TIMEOUT).await.expect("leader");
    let mut cl = Client::new(parse_addrs(&masters.grpc_addrs()));
    let quotas = api::SetQuotasRequest {
        quotas: vec![api::QuotaRule {
            kind: "*".into(),
            scope: "cluster".into(),
            window_ms: 3_600_000,
            max_entries: "1000".into(),
            max_concurrent: "100%".into(),
        }],
        by: "test".into(),
        reason: "a test fleet".into(),
        ..Default::default()
    };
    cl.call(quotas, |mut c, r| async move { c.set_quotas(r).await }).await.expect("quotas");

    // The disks: model A fails 3 of 6 (on days -20, -10, -3), model B 1 of 6 (day -5).
    let today = tests::now_ms() / DAY_MS;
    let fails: BTreeMap<String, u64> = [("A", 0, 20), ("A", 1, 10), ("A", 2, 3), ("B", 0, 5)]
        .iter()
        .map(|(m, i, ago)| (format!("disk/h{m}{i}/sda"), today - ago))
        .collect();
    let disks: Vec<(String, &str)> =
        ["A", "B"].iter().flat_map(|m| (0..DISKS).map(move |i| (format!("disk/h{m}{i}/sda"), *m))).collect();
    // expected: (model, week) -> (disk days, failures)
    let mut expected: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for day in today - HISTORY_DAYS..today {
        let t = day * DAY_MS + 12 * 3_600_000;
        let mut batch = Vec::new();
        for (obj, model) in &disks {
            let fail_day = fails.get(obj).copied();
            if fail_day.is_some_and(|f| day > f) {
                continue; // failed: no more reports
            }
            let failing = fail_day == Some(day);
            let readings = [
                ("model", format!("MODEL-{model}")),
                ("serial", format!("SN-{}", obj.replace('/', "-"))),
                ("smart_5_raw", if failing { "812".to_string() } else { "0".to_string() }),
                ("smart_9_raw", format!("{}", 10_000 + day % 100)),
            ];
            let (sev, rule) =
                if failing { ("ERROR", "disk.smart-failing") } else { ("GOOD", "disk.smart-ok") };
            batch.push(finding(obj, sev, "disk", rule, t, &readings));
            let e = expected.entry((format!("MODEL-{model}"), week_of(day))).or_default();
            e.0 += 1;
            e.1 += u64::from(failing);
        }
        ingest(&mut cl, batch).await;
    }
    // Machine findings of three rules (recorded, no transitions): 7, 5 and 3.
    let now = tests::now_ms();
    let mut batch = Vec::new();
    for (rule, n) in [("kernel.oops", 7u64), ("kernel.hung-task", 5), ("kernel.mce", 3)] {
        for i in 0..n {
            batch.push(finding(&format!("machine/m{i}"), "WARNING", "kernel-log", rule, now - 1000 + i, &[]));
        }
    }
    ingest(&mut cl, batch).await;
    for obj in fails.keys() {
        assert_eq!(object(&mut cl, obj).await.object.unwrap().state, "ERROR", "{obj} failed");
    }

    // Three REPAIR stays, each waiting for its ticket before it ends, held 300, 600 and 900 ms.
    let stays = ["disk/hA1/sda", "disk/hA2/sda", "disk/hB0/sda"];
    for (i, obj) in stays.iter().enumerate() {
        force(&mut cl, obj, "REPAIR").await;
        let filed = wait_until(STAGE, || {
            let addrs = parse_addrs(&masters.grpc_addrs());
            async move {
                let mut cl = Client::new(addrs);
                let req = api::GetObjectRequest { id: obj.to_string(), stale: false };
                let o = cl.call(req, |mut c, r| async move { c.get_object(r).await }).await;
                o.ok().and_then(|o| o.object).is_some_and(|o| o.attributes.contains_key("ticket"))
            }
        })
        .await;
        assert!(filed, "{obj}: no ticket filed");
        tokio::time::sleep(Duration::from_millis(300 * (i as u64 + 1))).await;
        force(&mut cl, obj, "NEWBIE").await;
    }
    // The expected mean time in REPAIR, from the master's own history of each object.
    let mut repair_ms = Vec::new();
    for obj in stays {
        let h = object(&mut cl, obj).await.history;
        let tr: Vec<_> = h.iter().filter(|e| e.what == "transition").collect();
        let i = tr.iter().position(|e| e.to_state == "REPAIR").expect("a REPAIR transition");
        repair_ms.push((tr[i + 1].time_ms - tr[i].time_ms) as f64);
    }
    let mean_repair = repair_ms.iter().sum::<f64>() / repair_ms.len() as f64;
    assert!(mean_repair >= 600.0, "the stays were held at least 300/600/900 ms: {repair_ms:?}");

    // The member the export reads has archived everything.
    let http = masters.nodes[&1].http.clone();
    let want_findings =
        (disks.len() as u64) * HISTORY_DAYS - fails.values().map(|f| today - 1 - f).sum::<u64>() + 15;
    let caught_up = wait_until(STAGE, || {
        let http = http.clone();
        async move {
            get(&http, "/api/v1/archive").is_some_and(|i| {
                i["rows"]["findings"] == want_findings
                    && i["rows"]["tickets"].as_u64() >= Some(3)
                    && i["rows"]["transitions"].as_u64() >= Some(4 + 6)
            })
        }
    })
    .await;
    assert!(
        caught_up,
        "archive of member 1: {:?} (want {want_findings} findings)",
        get(&http, "/api/v1/archive")
    );

    // Printed for ARCHITECTURE.md (the cost of queueing an entry on the apply path), never asserted.
    let info = get(&http, "/api/v1/archive").unwrap();
    eprintln!(
        "archive of member 1: pushes {} push_ns_mean {} bytes {}",
        info["pushes"], info["push_ns_mean"], info["bytes"]
    );
    // Bad archive requests are refused (the helper answers None for anything but 200).
    assert!(get(&http, "/api/v1/archive/nope").is_none());
    assert!(get(&http, "/api/v1/archive/findings?since_ms=5&until_ms=1").is_none());
    assert!(get(&http, "/api/v1/archive/findings?page_token=x.y").is_none());
    assert!(get(&http, "/api/v1/archive/findings?bogus=1").is_none());
    assert!(get(&http, "/api/v1/objects/disk/hA0/sda/series?days=0").is_none());
    assert!(get(&http, "/api/v1/objects/disk/hA0/sda?days=3").is_none(), "days belongs to /series");
    // The member's archive counters are on /metrics.
    let metrics = {
        let mut s = std::net::TcpStream::connect(&http).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        t
    };
    assert!(metrics.contains("huatuo_master_archive_dropped_entries_total 0"), "{metrics}");
    // The series of a failed disk: its daily readings, oldest first, numbers only.
    let s = get(&http, "/api/v1/objects/disk/hA0/sda/series?days=30").expect("series");
    let points = s["points"].as_array().unwrap();
    assert_eq!(points.len() as u64, HISTORY_DAYS - 20 + 1);
    assert_eq!(points.last().unwrap()["values"]["smart_5_raw"], 812.0);
    assert!(points.last().unwrap()["values"].get("model").is_none());
    assert!(get(&http, "/api/v1/objects/disk/nope/sdz/series").is_none(), "unknown object: 404");

    for fmt in ["parquet", "csv"] {
        let dir = tmp.path().join(format!("export-{fmt}"));
        let out = export(&masters, &dir, fmt, &[]);
        assert!(out.status.success(), "export {fmt}: {}", String::from_utf8_lossy(&out.stderr));
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["tables"]["findings"]["rows"], want_findings, "{manifest}");
        assert_eq!(manifest["tables"]["tickets"]["rows"], 3, "{manifest}");
        assert_eq!(manifest["tables"]["objects"]["rows"], 12 + 7, "{manifest}");
        assert!(dir.join(format!("disk_days/day={}/part-0.{fmt}", civil(today - 3))).exists());

        let r = run_queries(&py, fmt, &dir);
        // 1. Failure rate per model and week.
        let got: BTreeMap<(String, String), (u64, u64)> = r["failure_rate"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let key =
                    (row["model"].as_str().unwrap().to_string(), row["week"].as_str().unwrap().to_string());
                (key, (row["disk_days"].as_u64().unwrap(), row["failures"].as_f64().unwrap() as u64))
            })
            .collect();
        assert_eq!(got, expected, "{fmt}: failure rate per model and week");
        for row in r["failure_rate"].as_array().unwrap() {
            let rate = row["failures"].as_f64().unwrap() / row["disk_days"].as_f64().unwrap();
            assert!((row["failure_rate"].as_f64().unwrap() - rate).abs() < 1e-12);
        }
        // 2. Mean time in REPAIR.
        let m = &r["mean_repair"][0];
        assert_eq!(m["stays"], 3, "{fmt}: {m}");
        assert!((m["mean_ms"].as_f64().unwrap() - mean_repair).abs() < 1e-6, "{fmt}: {m} vs {mean_repair}");
        // 3. Top rules by findings.
        let top: Vec<(String, u64)> = r["top_rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (row["rule"].as_str().unwrap().to_string(), row["findings"].as_u64().unwrap()))
            .collect();
        let want: Vec<(String, u64)> =
            [("kernel.oops", 7), ("kernel.hung-task", 5), ("disk.smart-failing", 4), ("kernel.mce", 3)]
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect();
        assert_eq!(top, want, "{fmt}: top rules");
    }

    // A non-empty target is refused (and left as it was) unless --force.
    let dir = tmp.path().join("export-parquet");
    let before = std::fs::read(dir.join("manifest.json")).unwrap();
    let out = export(&masters, &dir, "parquet", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), before);
    let out = export(&masters, &dir, "csv", &["--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        dir.join("manifest.json").exists()
            && !dir.join("findings").read_dir().unwrap().any(|d| {
                d.unwrap()
                    .path()
                    .read_dir()
                    .unwrap()
                    .any(|f| f.unwrap().path().extension().is_some_and(|e| e == "parquet"))
            })
    );
    // Nothing is left beside it (the temporary directory was renamed into place).
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".huatuo-export-"))
        .collect();
    assert!(leftovers.is_empty());
}

/// The archive's cost on the apply path in a real 3-master cluster, printed (never asserted): 200 ingest
/// calls of 100 fault findings each, then every member's archive counters. Run with
/// `cargo test -p tests --test export_duckdb archive_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn archive_cost_in_a_cluster() {
    let masters = LocalCluster::start(&huatuo_bin(), 3).expect("start");
    masters.wait_leader(READY_TIMEOUT).await.expect("leader");
    let mut cl = Client::new(parse_addrs(&masters.grpc_addrs()));
    let start = std::time::Instant::now();
    let now = tests::now_ms();
    for b in 0..200u64 {
        let batch = (0..100u64)
            .map(|i| {
                let obj = format!("machine/c{}", b * 100 + i);
                finding(&obj, "WARNING", "kernel-log", "kernel.oops", now - 1000, &[("n", i.to_string())])
            })
            .collect();
        ingest(&mut cl, batch).await;
    }
    let took = start.elapsed();
    for (id, n) in &masters.nodes {
        let http = n.http.clone();
        let done = wait_until(STAGE, || {
            let http = http.clone();
            async move { get(&http, "/api/v1/archive").is_some_and(|i| i["rows"]["findings"] == 20_000) }
        })
        .await;
        let i = get(&n.http, "/api/v1/archive").unwrap();
        eprintln!(
            "member {id}: archived all {done}; pushes {} push_ns_mean {} slow_pushes(>100us) {} dropped {} bytes {}",
            i["pushes"], i["push_ns_mean"], i["slow_pushes"], i["dropped_entries"], i["bytes"]
        );
        let size =
            std::fs::metadata(masters.data_dir(*id).join("archive.redb")).map(|m| m.len()).unwrap_or(0);
        eprintln!("member {id}: archive.redb {size} bytes");
    }
    eprintln!("20,000 findings in 200 ingest calls took {took:?}");
    let tmp = tempfile::tempdir().unwrap();
    for fmt in ["parquet", "csv"] {
        let dir = tmp.path().join(fmt);
        let t = std::time::Instant::now();
        let out = export(&masters, &dir, fmt, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = du(&dir);
        eprintln!(
            "export {fmt}: {:?}, {bytes} bytes: {}",
            t.elapsed(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

fn du(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| if e.path().is_dir() { du(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
                .sum()
        })
        .unwrap_or(0)
}
