//! Ticket filing reads the replicated REPAIR-without-ticket index (issue 17), so a new leader files what is
//! outstanding and nothing already filed: 3 real `huatuo master` processes share one file ticket sink; a
//! disk forced into REPAIR is filed by the first leader, which is then `kill -9`ed; a second disk forced
//! into REPAIR is filed by the new leader. Every filing key appears exactly once in the file, and the
//! summary's `repair_without_ticket` drops back to 0 each time.
//!
//! Needs the `huatuo` binary built first (see `tests::huatuo_bin`).

use std::collections::BTreeMap;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use proto::client::{Client, parse_addrs};
use tests::{huatuo_bin, wait_until};

/// Bound on each filing (the dispatcher polls every 200 ms here) and on the failover.
const STAGE: Duration = Duration::from_secs(30);

/// Create `object` (a finding), then force it ERROR and on to `to`.
async fn force(cl: &mut Client, object: &str, to: &str) {
    let fatal = api::IngestRequest {
        agent: String::new(),
        seq: 0,
        findings: vec![api::Finding {
            object: object.into(),
            severity: "FATAL".into(),
            checker: "ops".into(),
            version: "1".into(),
            rule: "ops.dead".into(),
            evidence: "dead disk".into(),
            readings: Default::default(),
            time_ms: tests::now_ms(),
            shadow: false,
        }],
        epoch: 0,
    };
    cl.call(fatal, |mut c, r| async move { c.ingest(r).await }).await.expect("ingest");
    for state in ["ERROR", to] {
        let cmd = api::CommandRequest {
            object: object.into(),
            kind: "force".into(),
            value: state.into(),
            by: "test".into(),
            reason: "ticket failover test".into(),
            ..Default::default()
        };
        let r = cl.call(cmd, |mut c, r| async move { c.command(r).await }).await;
        // Already ERROR (the finding did it) is fine; the move on must apply.
        if state == to || !matches!(&r, Err(e) if e.code == proto::error::Code::Conflict) {
            r.expect("force");
        }
    }
}

async fn ticket_of(cl: &mut Client, object: &str) -> Option<String> {
    let req = api::GetObjectRequest { id: object.into(), stale: false };
    let o = cl.call(req, |mut c, r| async move { c.get_object(r).await }).await.ok()?.object?;
    o.attributes.get("ticket").cloned()
}

async fn unfiled(cl: &mut Client) -> Option<u64> {
    let s = cl.call(api::SummaryRequest { stale: false }, |mut c, r| async move { c.summary(r).await }).await;
    s.ok().map(|s| s.repair_without_ticket)
}

/// Idempotency key -> lines with it in the ticket file.
fn filed_keys(path: &std::path::Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a ticket line");
        *out.entry(v["idempotency_key"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_files_what_is_outstanding_from_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tickets.jsonl");
    let extra = format!("[tickets]\nsink = \"file\"\npath = \"{}\"\npoll_ms = 200\n", path.display());
    let mut masters = LocalCluster::start_with_config(&huatuo_bin(), 3, &extra).expect("start");
    let first = masters.wait_leader(READY_TIMEOUT).await.expect("leader");
    let addrs = parse_addrs(&masters.grpc_addrs());
    let mut cl = Client::new(addrs.clone());
    let quotas = api::SetQuotasRequest {
        quotas: vec![api::QuotaRule {
            kind: "*".into(),
            scope: "cluster".into(),
            window_ms: 3_600_000,
            max_entries: "1000".into(),
            max_concurrent: "100%".into(),
        }],
        by: "test".into(),
        reason: "a test fleet of two disks".into(),
        ..Default::default()
    };
    cl.call(quotas, |mut c, r| async move { c.set_quotas(r).await }).await.expect("quotas");

    force(&mut cl, "disk/tf1/sda", "REPAIR").await;
    let filed = wait_until(STAGE, || {
        let mut cl = Client::new(addrs.clone());
        async move { ticket_of(&mut cl, "disk/tf1/sda").await.is_some() }
    })
    .await;
    assert!(filed, "the first leader did not file disk/tf1/sda");
    assert_eq!(unfiled(&mut cl).await, Some(0));

    masters.kill9(first);
    let second = masters.wait_leader(READY_TIMEOUT).await.expect("a new leader");
    assert_ne!(second, first);
    force(&mut cl, "disk/tf2/sda", "REPAIR").await;
    let filed = wait_until(STAGE, || {
        let mut cl = Client::new(addrs.clone());
        async move { ticket_of(&mut cl, "disk/tf2/sda").await.is_some() }
    })
    .await;
    assert!(filed, "the new leader did not file disk/tf2/sda");
    assert_eq!(unfiled(&mut cl).await, Some(0));
    // One line per filing: the new leader did not file disk/tf1/sda again.
    let keys = filed_keys(&path);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
    assert!(
        keys.keys().any(|k| k.starts_with("disk/tf1/sda@"))
            && keys.keys().any(|k| k.starts_with("disk/tf2/sda@"))
    );
}
