//! Snapshot build/restore figures for a large state (issue 17), printed, never asserted:
//!
//! ```text
//! HUATUO_SNAPBENCH_MODE=old HUATUO_SNAPBENCH_OBJECTS=100000 cargo test -p master --lib raft::snapbench \
//!     -- --ignored --nocapture
//! HUATUO_SNAPBENCH_MODE=new ... (same)
//! ```
//!
//! `old` is what the loop did before snapshot files: the whole snapshot in one `Vec` (`snapshot::write`),
//! sealed into a second copy for the `raft_snapshot` table, restored from the in-memory bytes. `new` is the
//! builder's path: records streamed from one read transaction into a snapshot file, restored by streaming
//! the file. Peak RSS is measured around the build and the restore only (`/proc/self/clear_refs` resets
//! the high-water mark), so each mode runs in its own process.

use std::sync::Arc;
use std::time::Instant;

use redb::{Database, ReadableDatabase};

use super::core::build_snapshot;
use super::snapfile::{FileSource, SnapDir};
use crate::fsm::{MasterFsm, snapshot};
use crate::sm_seam::Policy;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS to the current RSS (Linux >= 4.0) and returns the current RSS in KiB.
fn reset_peak() -> u64 {
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        eprintln!("cannot reset the peak RSS (clear_refs): peaks include earlier phases");
    }
    status_kib("VmRSS:")
}

/// Restores the built snapshot into a write transaction (of another database).
type Restore = Box<dyn Fn(&redb::WriteTransaction)>;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
#[ignore = "benchmark: prints figures (see the module doc)"]
fn snapshot_build_and_restore_figures() {
    let mode = std::env::var("HUATUO_SNAPBENCH_MODE").unwrap_or_else(|_| "new".into());
    let n: usize =
        std::env::var("HUATUO_SNAPBENCH_OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let tmp = tempfile::tempdir().expect("tmp");
    let db = Arc::new(Database::create(tmp.path().join("raft.redb")).expect("db"));
    // The state: `n` objects of ~1.5 KiB (a disk object's JSON with its attributes is of that order), put
    // in place by a restore of a hand-built snapshot (the same tables and sealing as applied state).
    let value: Vec<u8> = (0..1536).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]).collect();
    {
        let mut data = snapshot::MAGIC_FOR_BENCH.to_vec();
        for i in 0..n {
            snapshot::push_record_for_test(
                &mut data,
                2,
                format!("disk/host{:06}/sd{i:08}", i / 12).as_bytes(),
                &value,
            );
        }
        let txn = db.begin_write().expect("w");
        snapshot::restore(&txn, &data).expect("fill");
        txn.commit().expect("commit");
    }
    let dir = SnapDir::open(tmp.path()).expect("dir");
    // A raft_meta with an applied index, as the builder reads it.
    {
        let txn = db.begin_write().expect("w");
        let mut st = super::storage::RedbStorage::open(db.clone(), dir.clone()).expect("storage").0;
        let (file, _h) = super::core::bootstrap_snapshot::<MasterFsm>(&db, &dir).expect("boot");
        st.bootstrap(&txn, 1, &[1], &file).expect("bootstrap");
        txn.commit().expect("commit");
        st.commit_staged();
    }
    let base = reset_peak();
    let t = Instant::now();
    let (bytes, restore_src): (u64, Restore) = if mode == "old" {
        let data = snapshot::write(&db.begin_read().expect("r")).expect("write");
        let sealed = crate::checksum::seal(&data);
        let len = data.len() as u64;
        drop(sealed);
        (
            len,
            Box::new(move |txn| {
                MasterFsm::new(Policy::default()).0.restore_data(txn, &data).expect("restore");
            }),
        )
    } else {
        let built = build_snapshot::<MasterFsm>(&db, &dir).expect("build");
        let desc = built.file.clone();
        let d = dir.clone();
        std::mem::forget(built.hold);
        (
            desc.size,
            Box::new(move |txn| {
                let src = FileSource { dir: &d, desc: desc.clone(), flush: None };
                MasterFsm::new(Policy::default()).0.restore_from(txn, &src).expect("restore");
            }),
        )
    };
    let build = t.elapsed();
    let build_peak = status_kib("VmHWM:").saturating_sub(base);
    let other = Database::create(tmp.path().join("other.redb")).expect("db");
    let base = reset_peak();
    let t = Instant::now();
    let txn = other.begin_write().expect("w");
    restore_src(&txn);
    txn.commit().expect("commit");
    let restore = t.elapsed();
    let restore_peak = status_kib("VmHWM:").saturating_sub(base);
    println!(
        "snapbench mode={mode} objects={n} snapshot={:.1} MiB build={:.2}s build_peak_rss_growth={:.1} MiB \
         restore={:.2}s restore_peak_rss_growth={:.1} MiB",
        bytes as f64 / (1 << 20) as f64,
        build.as_secs_f64(),
        mib(build_peak),
        restore.as_secs_f64(),
        mib(restore_peak)
    );
}
