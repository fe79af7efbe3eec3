//! Idempotent writes (issue 13 item 3) in the replicated state: a keyed command is applied once and its retry
//! answered `duplicate: true` with the first result; keys are remembered for a bounded window (count and
//! time), evicted identically on every replica, and travel in snapshots; a retry after eviction is applied
//! again.

use super::*;
use crate::fsm::MemFsm;

fn enable_v3(h: &mut Harness) {
    let r = h
        .apply(1, vec![Command::SetMinCommandVersion { version: 3, by: "alice".into(), reason: "t".into() }]);
    assert_eq!(r.results[0].error, None);
}

fn keyed(key: &str, cmd: Command) -> Command {
    Command::Keyed { key: key.into(), cmd: Box::new(cmd) }
}

fn report(object: &str, t: u64) -> Command {
    ingest("", 0, vec![finding(object, Severity::Warning, t)])
}

#[test]
fn a_keyed_command_is_applied_once_and_its_retry_gets_the_first_result() {
    let mut h = Harness::new();
    enable_v3(&mut h);
    let first = h.apply(10, vec![keyed("cli-7f3a:1", report("disk/h1/sda", 10))]).results.remove(0);
    assert_eq!((first.applied, first.duplicate, first.error.clone()), (1, false, None));
    let events = h.events(1).len();
    // The retry (e.g. after a leader change the client did not see the answer of) in a later entry.
    let retry = h.apply(20, vec![keyed("cli-7f3a:1", report("disk/h1/sda", 10))]).results.remove(0);
    assert!(retry.duplicate);
    assert_eq!(CmdResult { duplicate: false, ..retry }, first, "the first result, marked duplicate");
    assert_eq!(h.events(1).len(), events, "nothing changed");
    assert_eq!(h.reader().object("disk/h1/sda").expect("get").expect("sda").findings_seen, 1);
    // Same key twice in one entry: the second is the duplicate.
    let both =
        h.apply(30, vec![keyed("k2", report("disk/h1/sdb", 30)), keyed("k2", report("disk/h1/sdb", 30))]);
    assert!(!both.results[0].duplicate && both.results[1].duplicate);
    assert_eq!(h.reader().object("disk/h1/sdb").expect("get").expect("sdb").findings_seen, 1);
    // Another key is another write.
    let other = h.apply(40, vec![keyed("cli-7f3a:2", report("disk/h1/sda", 40))]).results.remove(0);
    assert!(!other.duplicate && other.applied == 1);
}

/// A key reused for a different request is refused with CONFLICT and changes nothing; the first request's
/// retry is still answered as a duplicate. Records written before digests answer any retry (old format).
#[test]
fn a_key_reused_for_another_request_is_refused_with_conflict() {
    let mut h = Harness::new();
    enable_v3(&mut h);
    let first = h.apply(10, vec![keyed("cli-1", report("disk/h1/sda", 10))]).results.remove(0);
    assert_eq!(first.error, None);
    let revision = h.reader().revision().expect("revision");
    let level = Command::SetLevel {
        scope: "cluster".into(),
        level: crate::safety::Level::Manual,
        by: "alice".into(),
        reason: "t".into(),
    };
    for other in [report("disk/h1/sdb", 10), report("disk/h1/sda", 11), level] {
        let r = h.apply(20, vec![keyed("cli-1", other.clone())]).results.remove(0);
        let (code, msg) = r.error.clone().expect("refused");
        assert_eq!(code, proto::error::Code::Conflict, "{other:?}");
        assert!(msg.contains("different request"), "{msg}");
        assert!(!r.duplicate && r.applied == 0, "{r:?}");
    }
    assert_eq!(h.reader().revision().expect("revision"), revision, "refusals change nothing");
    assert!(h.reader().object("disk/h1/sdb").expect("get").is_none());
    assert!(h.apply(30, vec![keyed("cli-1", report("disk/h1/sda", 10))]).results[0].duplicate);
    // A record from before digests (no `digest`) answers a retry whatever its body (it cannot tell).
    let mut mem = MemState::from_snapshot(&h.snapshot()).expect("parse");
    let rec = mem.requests.get_mut("cli-1").expect("remembered");
    assert!(rec.digest.is_some());
    rec.digest = None;
    let mut old = Harness::new();
    {
        let txn = old.db.begin_write().expect("w");
        old.fsm.restore_data(&txn, &mem.snapshot()).expect("restore");
        txn.commit().expect("commit");
    }
    assert!(old.apply(40, vec![keyed("cli-1", report("disk/h1/sdb", 10))]).results[0].duplicate);
}

#[test]
fn keyed_commands_need_version_3_and_a_valid_key() {
    let mut h = Harness::new();
    let r = h.apply(1, vec![keyed("k1", report("disk/h1/sda", 1))]).results.remove(0);
    let (code, msg) = r.error.expect("refused before the cluster enabled version 3");
    assert_eq!(code, proto::error::Code::Conflict);
    assert!(msg.contains("keyed needs command version 3"), "{msg}");
    enable_v3(&mut h);
    let long = "k".repeat(MAX_REQUEST_KEY_LEN + 1);
    for bad in ["", "with space", "new\nline", long.as_str(), "ключ"] {
        let r = h.apply(2, vec![keyed(bad, report("disk/h1/sda", 2))]).results.remove(0);
        assert_eq!(r.error.map(|e| e.0), Some(proto::error::Code::InvalidArgument), "{bad:?}");
    }
    let nested = h.apply(2, vec![keyed("k1", keyed("k2", report("disk/h1/sda", 2)))]).results.remove(0);
    assert_eq!(nested.error.map(|e| e.0), Some(proto::error::Code::InvalidArgument));
    assert!(h.reader().object("disk/h1/sda").expect("get").is_none(), "refusals change nothing");
    let at_limit = "k".repeat(MAX_REQUEST_KEY_LEN);
    assert_eq!(h.apply(3, vec![keyed(&at_limit, report("disk/h1/sda", 3))]).results[0].error, None);
}

/// At the count limit the oldest keys go, in sequence order, identically on redb and in memory (every
/// replica); a retry of an evicted key is applied again (documented behaviour).
#[test]
fn the_window_evicts_the_oldest_keys_deterministically_at_its_count_limit() {
    const LIMIT: u64 = 3;
    let (fsm, rx) = MasterFsm::new(Policy::default());
    let mut h = Harness::with((fsm.with_request_keys(LIMIT), rx));
    let mut mem = MemFsm::new(Policy::default()).with_request_keys(LIMIT);
    let mut entries = vec![Envelope::new(
        1,
        vec![Command::SetMinCommandVersion { version: 3, by: "alice".into(), reason: "t".into() }],
    )];
    for i in 1..=5u64 {
        entries.push(Envelope::new(10 + i, vec![keyed(&format!("k{i}"), report("disk/h1/sda", 10 + i))]));
    }
    for (i, e) in entries.iter().enumerate() {
        let a = h.apply_raw(&e.encode());
        let b = mem.apply(i as u64 + 1, &e.encode()).expect("mem");
        assert_eq!(a, b);
        assert_eq!(h.snapshot(), mem.state.snapshot(), "replicas agree after entry {i}");
    }
    let kept: Vec<&String> = mem.state.requests.keys().collect();
    assert_eq!(kept, ["k3", "k4", "k5"], "the oldest two were evicted");
    assert_eq!(mem.state.request_order.len() as u64, LIMIT);
    // k5 is still remembered; k1 was evicted: its retry is applied again.
    assert!(h.apply(20, vec![keyed("k5", report("disk/h1/sda", 15))]).results[0].duplicate);
    let again = h.apply(21, vec![keyed("k1", report("disk/h1/sda", 11))]).results.remove(0);
    assert!(!again.duplicate && again.applied == 1, "{again:?}");
    assert_eq!(h.reader().object("disk/h1/sda").expect("get").expect("sda").findings_seen, 6);
}

/// A key older than the time window is forgotten: its retry is applied again.
#[test]
fn keys_expire_after_the_time_window() {
    let mut h = Harness::new();
    enable_v3(&mut h);
    h.apply(10, vec![keyed("k1", report("disk/h1/sda", 10))]);
    let just_inside = 10 + REQUEST_KEY_WINDOW_MS - 1;
    assert!(h.apply(just_inside, vec![keyed("k1", report("disk/h1/sda", 10))]).results[0].duplicate);
    let expired =
        h.apply(10 + REQUEST_KEY_WINDOW_MS, vec![keyed("k1", report("disk/h1/sda", 10))]).results.remove(0);
    assert!(!expired.duplicate, "{expired:?}");
    // Re-remembered from now on, once.
    assert!(
        h.apply(10 + REQUEST_KEY_WINDOW_MS + 1, vec![keyed("k1", report("disk/h1/sda", 10))]).results[0]
            .duplicate
    );
    let mem = MemState::from_snapshot(&h.snapshot()).expect("parse");
    assert_eq!(mem.requests.len(), 1);
    assert_eq!(mem.request_order.len(), 1, "the expired key's old place in the order is gone");
}

/// The keys travel in snapshots: a member restored from one answers the retry as a duplicate.
#[test]
fn keys_travel_in_snapshots() {
    let mut h = Harness::new();
    enable_v3(&mut h);
    let first = h.apply(10, vec![keyed("k1", report("disk/h1/sda", 10))]).results.remove(0);
    let snap = h.snapshot();
    let mut other = Harness::new();
    {
        let txn = other.db.begin_write().expect("w");
        other.fsm.restore_data(&txn, &snap).expect("restore");
        txn.commit().expect("commit");
    }
    assert_eq!(other.snapshot(), snap);
    let retry = other.apply(20, vec![keyed("k1", report("disk/h1/sda", 10))]).results.remove(0);
    assert!(retry.duplicate);
    assert_eq!(retry.revision, first.revision);
}

/// A snapshot of a binary before idempotency keys (format v2: no tags 13 and 14) still restores.
#[test]
fn a_version_2_snapshot_still_restores() {
    let mut a = Harness::new();
    a.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    let v3 = a.snapshot();
    let v4 = crate::fsm::snapshot::as_v4_for_test(&v3);
    let body = v4.strip_prefix(b"huatuo-fsm-snapshot-v4\n".as_slice()).expect("v4 magic");
    let mut v2 = b"huatuo-fsm-snapshot-v2\n".to_vec();
    v2.extend_from_slice(body);
    let mut b = Harness::new();
    {
        let txn = b.db.begin_write().expect("w");
        b.fsm.restore_data(&txn, &v2).expect("restore v2");
        txn.commit().expect("commit");
    }
    assert_eq!(b.snapshot(), v3);
    // A v2 snapshot holding a tag of v3 is refused (unknown tag), not misread.
    let mut bad = v2.clone();
    crate::fsm::snapshot::push_record_for_test(&mut bad, 13, b"k", b"{}");
    let txn = b.db.begin_write().expect("w");
    assert!(b.fsm.restore_data(&txn, &bad).is_err());
}
