//! The state machine's own tables on a real node (issue 13 item 1): a damaged fsm record found by a read
//! stops the node as a corrupt replica (status, error text, metric) and the request gets an error instead
//! of the altered bytes; the damaged store is refused at the next start and by `verify_data_dir`; an entry
//! too new for the binary stops the node with its own error, not a "storage" one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use master::fsm::MasterFsm;
use master::model::{Command, Envelope};
use master::raft::{
    RaftConfig, RaftError, RaftNode, Role, compact_data_dir, compact_data_dir_at_most, verify_data_dir,
};
use master::sm_seam::Policy;
use master::store::{OBJECTS, Reader, StoreError};
use redb::{ReadableDatabase, ReadableTable};
use state_machines::{Finding, Severity};

/// Upper bound for a single node to elect itself or to stop after damage (it takes well under a second).
const LIVENESS_BOUND: Duration = Duration::from_secs(60);

fn single_config(dir: PathBuf) -> RaftConfig {
    RaftConfig { snapshot_every: 1000, ..RaftConfig::single_member(dir, "127.0.0.1:1") }
}

async fn wait_until(node: &RaftNode, what: &str, done: impl Fn(&master::raft::RaftStatus) -> bool) {
    let deadline = Instant::now() + LIVENESS_BOUND;
    loop {
        let st = node.status();
        if done(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ingest(seq: u64, object: &str, evidence: &str) -> Vec<u8> {
    let f = Finding {
        object: object.parse().expect("id"),
        severity: Severity::Warning,
        checker: "smart".into(),
        version: "1.0.0".into(),
        rule: "smart.reallocated".into(),
        evidence: evidence.into(),
        readings: BTreeMap::new(),
        time_ms: 1,
        shadow: false,
    };
    Envelope::new(1, vec![Command::Ingest { agent: "a1".into(), seq, findings: vec![f], epoch: 0 }]).encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_object_row_stops_the_node_and_is_refused_at_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().into();
    let (node, db) = RaftNode::start(single_config(dir.clone()), MasterFsm::new(Policy::default()).0)
        .await
        .expect("start");
    wait_until(&node, "never became leader", |s| s.role == Role::Leader).await;
    node.propose(ingest(1, "disk/h1/sda", "seq=001234 reallocated")).await.expect("commit");
    node.propose(ingest(2, "disk/h1/sdb", "healthy")).await.expect("commit");
    let rec = Reader::new(&db).expect("reader").object("disk/h1/sda").expect("get").expect("sda");
    assert_eq!(
        rec.evidence.get("smart").expect("decodes").expect("smart").evidence,
        "seq=001234 reallocated"
    );
    // Alter the row through redb (its page checksums stay valid: only the record's own checksum can tell).
    {
        let txn = db.begin_write().expect("w");
        {
            let mut t = txn.open_table(OBJECTS).expect("objects");
            let mut v = t.get("disk/h1/sda").expect("get").expect("row").value().to_vec();
            let at = v.windows(10).position(|w| w == b"seq=001234").expect("marker");
            v[at..at + 10].copy_from_slice(b"seq=009999");
            t.insert("disk/h1/sda", v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    assert_eq!(node.status().role, Role::Leader, "nothing read the row yet");
    let before = master::raft::alarms::CORRUPTION_DETECTED.load(Ordering::Relaxed);
    // A get answers an error, never the altered text...
    match Reader::new(&db).expect("reader").object("disk/h1/sda") {
        Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("fsm_objects"), "{e}"),
        other => panic!("the damaged row was served: {other:?}"),
    }
    // ...and the node stops as a corrupt replica.
    wait_until(&node, "the node kept running on a damaged fsm record", |s| s.role == Role::Stopped).await;
    let st = node.status();
    let e = st.last_error.clone().unwrap_or_default();
    assert!(st.corrupt, "{st:?}");
    assert!(e.contains("corrupt replica") && e.contains("fsm_objects") && e.contains("--join"), "{e}");
    assert!(master::raft::alarms::CORRUPTION_DETECTED.load(Ordering::Relaxed) > before);
    node.shutdown().await;
    drop(db);
    // At the next start, the fsm's verification refuses the store; so does --verify.
    match RaftNode::start(single_config(dir.clone()), MasterFsm::new(Policy::default()).0).await {
        Err(e @ RaftError::Corrupt(_)) => {
            let m = e.to_string();
            assert!(m.contains("corrupt replica") && m.contains("fsm_objects"), "{m}");
        }
        Err(e) => panic!("expected a corrupt replica, got {e}"),
        Ok(_) => panic!("the damaged store was accepted"),
    }
    match verify_data_dir(&dir) {
        Err(e @ RaftError::Corrupt(_)) => assert!(e.to_string().contains("fsm_objects"), "{e}"),
        other => panic!("verify accepted the damaged store: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_fsm_records_it_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().into();
    let (node, db) = RaftNode::start(single_config(dir.clone()), MasterFsm::new(Policy::default()).0)
        .await
        .expect("start");
    wait_until(&node, "never became leader", |s| s.role == Role::Leader).await;
    node.propose(ingest(1, "disk/h1/sda", "x")).await.expect("commit");
    node.shutdown().await;
    drop(db);
    let report = verify_data_dir(&dir).expect("verify");
    assert!(report.fsm_records >= 3 && report.fsm_bytes > 0 && !report.fsm_upgraded, "{report:?}");
    // Where the file's bytes go: the objects and log tables are there with their entries, every table's pages
    // are in use, and what is in use fits the file.
    let u = &report.usage;
    let table =
        |n: &str| u.tables.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("no table {n}: {u:?}"));
    assert!(table("fsm_objects").entries >= 1 && table("fsm_objects").stored_bytes > 0, "{u:?}");
    assert_eq!(table("raft_log").entries, report.log_entries, "{u:?}");
    let pages: u64 = u.tables.iter().map(|t| t.page_bytes).sum();
    assert!(pages <= u.allocated_bytes && u.allocated_bytes <= report.file_bytes, "{u:?}");
    assert!(u.tables.windows(2).all(|w| w[0].page_bytes >= w[1].page_bytes), "largest first: {u:?}");
}

/// `huatuo master --compact`'s work (`compact_data_dir`): a store whose file keeps free pages (a read
/// transaction held while entries were applied kept the pages freed meanwhile from reuse, as a snapshot
/// build's does) shrinks; the checks pass before and after with the same Raft state and records; a node
/// starts on it and serves what it held. A damaged store is refused and left byte for byte as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_back_free_pages_and_changes_no_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().into();
    let start = || RaftNode::start(single_config(dir.clone()), MasterFsm::new(Policy::default()).0);
    let (node, db) = start().await.expect("start");
    wait_until(&node, "never became leader", |s| s.role == Role::Leader).await;
    let text = |seq: u64| format!("seq={seq:06} {}", "x".repeat(400));
    let pin = db.begin_read().expect("read");
    for seq in 1..=400 {
        node.propose(ingest(seq, &format!("disk/h{}/sda", seq % 100), &text(seq))).await.expect("commit");
    }
    drop(pin);
    for seq in 401..=420 {
        node.propose(ingest(seq, &format!("disk/h{}/sda", seq % 100), &text(seq))).await.expect("commit");
    }
    node.shutdown().await;
    drop(db);
    // At most one pass: the run stops at its limit after a pass that moved pages, and says so.
    let r = compact_data_dir_at_most(&dir, 1).expect("compact");
    let (b, a) = (&r.before, &r.after);
    assert!(b.file_bytes > b.usage.allocated_bytes, "no free pages kept to give back: {b:?}");
    assert!(a.file_bytes < b.file_bytes && r.passes == 1 && r.more_possible, "{r:?}");
    let state = |v: &master::raft::VerifyReport| {
        (
            v.node_id,
            v.term,
            v.commit_index,
            v.applied_index,
            v.log_entries,
            v.log_bytes,
            v.fsm_records,
            v.fsm_bytes,
        )
    };
    assert_eq!(state(a), state(b));
    assert_eq!(a.usage.stored_bytes, b.usage.stored_bytes);
    // Compacting again, with the default limit, moves what is left and ends within its limit; the file
    // never grows and the state stays.
    let again = compact_data_dir(&dir).expect("compact again");
    assert!(!again.more_possible && again.after.file_bytes <= a.file_bytes, "{again:?}");
    assert_eq!(state(&again.after), state(b));
    // The node starts on the compacted store and serves its records.
    let (node, db) = start().await.expect("restart");
    wait_until(&node, "never became leader again", |s| s.role == Role::Leader).await;
    let rec = Reader::new(&db).expect("reader").object("disk/h20/sda").expect("get").expect("row");
    assert_eq!(rec.evidence.get("smart").expect("decodes").expect("smart").evidence, text(420));
    node.shutdown().await;
    drop(db);
    // A damaged store is refused before anything is moved.
    let path = dir.join("raft.redb");
    let mut bytes = std::fs::read(&path).expect("read the file");
    let copies: Vec<usize> =
        (0..bytes.len().saturating_sub(10)).filter(|&i| &bytes[i..i + 10] == b"seq=000420").collect();
    assert!(!copies.is_empty(), "the marker is not in the file");
    for at in copies {
        bytes[at..at + 10].copy_from_slice(b"seq=999999");
    }
    std::fs::write(&path, &bytes).expect("damage");
    match compact_data_dir(&dir) {
        Err(e @ RaftError::Corrupt(_)) => assert!(e.to_string().contains("corrupt"), "{e}"),
        other => panic!("a damaged store was compacted: {other:?}"),
    }
    assert!(std::fs::read(&path).expect("read again") == bytes, "the damaged file was changed");
}

/// An entry this binary is too old to apply stops the node with the "incompatible" error (it used to say
/// "storage:"), and the node does not advance past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_too_new_stops_the_node_as_incompatible() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fsm = MasterFsm::new(Policy::default()).0.knowing_command_version(1);
    let (node, _db) = RaftNode::start(single_config(tmp.path().into()), fsm).await.expect("start");
    wait_until(&node, "never became leader", |s| s.role == Role::Leader).await;
    let raise = Command::SetMinCommandVersion { version: 2, by: "alice".into(), reason: "test".into() };
    let entry = Envelope::new(1, vec![raise]).encode();
    assert!(node.propose(entry).await.is_err(), "the node cannot apply it");
    wait_until(&node, "the node kept running past an entry it cannot apply", |s| s.role == Role::Stopped)
        .await;
    let st = node.status();
    let e = st.last_error.clone().unwrap_or_default();
    assert!(e.contains("incompatible committed entry") && e.contains("upgrade this node"), "{e}");
    assert!(!e.contains("storage"), "{e}");
    assert!(!st.corrupt, "{st:?}");
    node.shutdown().await;
}
