//! Integrity of the state machine's own tables (issue 13 items 1 and 2) on real redb files: every record is
//! sealed and verified on every read (apply, the API readers, snapshots), a store written before checksums
//! is sealed in place once, and a panic inside storage code is the same corrupt error.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::store::{CHANGES, DamageFlag, OBJECTS, StoreError};

/// Releases the harness's database, replaces every occurrence of `from` by `to` (same length) in the file,
/// and opens it again the ordinary way (no integrity check: what a running node sees when bytes rot under
/// it). Returns how many occurrences were replaced.
fn alter_file(h: &mut Harness, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let path = h._dir.path().join("db.redb");
    let placeholder = redb::Database::create(h._dir.path().join("placeholder.redb")).expect("placeholder");
    drop(std::mem::replace(&mut h.db, placeholder));
    let mut bytes = std::fs::read(&path).expect("read");
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(&path, bytes).expect("write");
    h.db = redb::Database::create(&path).expect("reopen");
    n
}

fn with_evidence(object: &str, evidence: &str, time_ms: u64) -> Finding {
    Finding { evidence: evidence.into(), ..finding(object, Severity::Warning, time_ms) }
}

fn assert_corrupt<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>, table: &str) {
    match r {
        Err(StoreError::Corrupt { table: t, message }) => {
            assert_eq!(t, table, "{what}: {message}");
        }
        other => panic!("{what}: expected a corrupt {table} record, got {other:?}"),
    }
}

/// The issue's reproduction on an object row: `seq=001234` replaced by `seq=009999` in the file. get and
/// list refuse (never the altered text), the node's damage flag is raised and counted, a snapshot refuses
/// to copy it, the start-up verification refuses the store, and apply over it stops (FsmError::Corrupt).
#[test]
fn an_altered_object_row_is_refused_by_every_read_and_by_apply() {
    let mut h = Harness::new();
    h.apply(
        1,
        vec![ingest(
            "a1",
            1,
            vec![
                with_evidence("disk/h1/sda", "seq=001234 reallocated", 1),
                with_evidence("disk/h1/sdb", "healthy", 1),
            ],
        )],
    );
    assert_eq!(
        h.reader()
            .object("disk/h1/sda")
            .expect("get")
            .expect("sda")
            .evidence
            .get("smart")
            .expect("decodes")
            .expect("smart")
            .evidence,
        "seq=001234 reallocated"
    );
    let clean_snapshot = h.snapshot();
    assert!(alter_file(&mut h, b"seq=001234", b"seq=009999") > 0, "the marker is in the file");

    let flag = DamageFlag::default();
    crate::store::watch_damage(&h.db, &flag);
    let before = crate::raft::alarms::CORRUPTION_DETECTED.load(Ordering::Relaxed);
    let r = h.reader();
    assert_corrupt("get", r.object("disk/h1/sda"), "fsm_objects");
    assert_corrupt("list", r.list(&Filter::default(), 100), "fsm_objects");
    let damage = flag.get().expect("the read raised the node's damage flag");
    assert!(damage.contains("fsm_objects") && damage.contains("checksum mismatch"), "{damage}");
    assert!(
        crate::raft::alarms::CORRUPTION_DETECTED.load(Ordering::Relaxed) > before,
        "counted for /metrics"
    );
    // The other row still verifies (the damage is reported, not guessed at).
    assert!(r.object("disk/h1/sdb").expect("sdb").is_some());
    // The finding's evidence is in its change event too: the watch refuses as well.
    assert_corrupt("watch", r.changes(1, &Filter::default(), 100), "fsm_changes");

    let txn = h.db.begin_read().expect("read");
    assert_corrupt("snapshot", h.fsm.snapshot_data(&txn), "fsm_objects");
    drop(txn);
    assert_corrupt("start-up verification", crate::store::open_store(&h.db), "fsm_objects");

    // Apply reads the row to decide: it stops with a corrupt error, which the raft layer treats as a
    // corrupt replica (never "storage:").
    let e = h
        .try_apply_raw(
            &Envelope::new(2, vec![ingest("a1", 2, vec![finding("disk/h1/sda", Severity::Good, 2)])])
                .encode(),
        )
        .expect_err("apply over a damaged row");
    assert!(matches!(e, StoreError::Corrupt { table: "fsm_objects", .. }), "{e}");
    assert!(matches!(fsm_error(e), crate::raft::FsmError::Corrupt(_)));

    // Putting the bytes back makes the store whole again: nothing was changed by the refusals.
    assert!(alter_file(&mut h, b"seq=009999", b"seq=001234") > 0);
    crate::store::open_store(&h.db).expect("verifies again");
    assert_eq!(h.snapshot(), clean_snapshot);
}

/// The same on a change-log row (the issue's `watch?from=1234` served the altered text): the watch read
/// refuses, the objects are still served.
#[test]
fn an_altered_change_log_row_is_refused_by_watch() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("a1", 1, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    h.apply(2, vec![force("disk/h1/sda", State::Warning)]);
    let before = h.events(1);
    assert!(before.iter().any(|e| e.detail.contains("forced WARNING: test")), "{before:?}");
    // The operator's reason travels in the change event; alter it in the change-log row only, through
    // redb (its page checksums stay valid: only the record's own checksum can tell).
    {
        let txn = h.db.begin_write().expect("w");
        {
            let mut t = txn.open_table(CHANGES).expect("changes");
            let first =
                before.iter().find(|e| e.detail.contains("forced WARNING: test")).expect("event").revision;
            let key = t.range(..=first).expect("range").next_back().expect("row").expect("row").0.value();
            let mut v = t.get(key).expect("get").expect("row").value().to_vec();
            let at = v.windows(6).position(|w| w == b"forced").expect("marker");
            v[at] = b'F';
            t.insert(key, v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let flag = DamageFlag::default();
    crate::store::watch_damage(&h.db, &flag);
    assert_corrupt("watch", h.reader().changes(1, &Filter::default(), 100), "fsm_changes");
    assert!(flag.get().is_some_and(|m| m.contains("fsm_changes")));
    assert!(h.reader().object("disk/h1/sda").expect("get").is_some(), "objects still verify");
    // Compaction reads change-log rows too: with a window of 1 the next apply must read the damaged row.
    let (fsm, rx) = MasterFsm::new(Policy::default());
    h.fsm = fsm.with_changelog_retain(1);
    h.rx = rx;
    let e = h
        .try_apply_raw(
            &Envelope::new(3, vec![ingest("a1", 2, vec![finding("disk/h1/sdb", Severity::Good, 3)])])
                .encode(),
        )
        .expect_err("compaction over a damaged row");
    assert!(matches!(e, StoreError::Corrupt { table: "fsm_changes", .. }), "{e}");
}

/// Every table's rows carry the frame: flipping one byte of any stored value is refused by the start-up
/// verification, naming the table.
#[test]
fn every_table_is_sealed() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("a1", 1, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    h.apply(2, vec![force("disk/h1/sda", State::Warning)]);
    // The checker catalog's tables (issue 15): a record and its bytes.
    h.apply(3, vec![Command::SetMinCommandVersion { version: 4, by: "a".into(), reason: "r".into() }]);
    h.apply(4, vec![crate::api::catalog::seed_command()]);
    let txn = h.db.begin_read().expect("read");
    let mut tables: Vec<String> =
        txn.list_tables().expect("tables").map(|t| redb::TableHandle::name(&t).to_string()).collect();
    tables.sort();
    drop(txn);
    assert!(tables.len() >= 6, "{tables:?}");
    crate::store::open_store(&h.db).expect("pristine store verifies");
    for must in ["fsm_counters", "fsm_objects", "fsm_history", "fsm_changes", "fsm_agents"] {
        assert!(tables.iter().any(|t| t == must), "{must} in {tables:?}");
    }
    // Flip a payload byte of the first row of each table (raw access to the stored bytes).
    let mut flipped = 0;
    for name in &tables {
        let txn = h.db.begin_write().expect("w");
        let changed = flip_first_row(&txn, name);
        if !changed {
            txn.abort().expect("abort");
            continue;
        }
        flipped += 1;
        txn.commit().expect("commit");
        let e = crate::store::open_store(&h.db).expect_err(name);
        let text = e.to_string();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{name}: {text}");
        let shown = if name == "fsm_counters" { "fsm_counters" } else { name.as_str() };
        assert!(text.contains(shown), "{name}: {text}");
        let txn = h.db.begin_write().expect("w");
        assert!(flip_first_row(&txn, name), "flip back");
        txn.commit().expect("commit");
        crate::store::open_store(&h.db).expect("whole again");
    }
    assert!(flipped >= 7, "{flipped} of {tables:?}");
    assert!(
        tables.iter().any(|t| t == "fsm_catalog") && tables.iter().any(|t| t == "fsm_blobs"),
        "{tables:?}"
    );
}

/// Flips the last byte of the first value of table `name` (keys of any fsm type); false if it is empty.
fn flip_first_row(txn: &redb::WriteTransaction, name: &str) -> bool {
    match name {
        "fsm_counters" => flip_str(txn, crate::store::META),
        "fsm_objects" => flip_str(txn, OBJECTS),
        "fsm_agents" => flip_str(txn, crate::store::AGENTS),
        "fsm_scopes" => flip_str(txn, crate::store::SCOPES),
        "fsm_proposal_obj" => flip_str(txn, crate::store::PROPOSAL_OBJ),
        "fsm_settings" => flip_str(txn, crate::store::SETTINGS),
        "fsm_requests" => flip_str(txn, crate::store::REQUESTS),
        "fsm_catalog" => flip_str(txn, crate::store::CATALOG),
        "fsm_counts" => flip_str(txn, crate::store::COUNTS),
        "fsm_repair_queue" => flip_str(txn, crate::store::REPAIR_QUEUE),
        "fsm_blobs" => {
            let mut t = txn.open_table(crate::store::BLOBS).expect("table");
            let Some(((sha, idx), mut v)) = t
                .first()
                .expect("first")
                .map(|(k, v)| ((k.value().0.to_string(), k.value().1), v.value().to_vec()))
            else {
                return false;
            };
            let last = v.len() - 1;
            v[last] ^= 0x01;
            t.insert((sha.as_str(), idx), v.as_slice()).expect("insert");
            true
        }
        "fsm_history" => {
            let mut t = txn.open_table(crate::store::HISTORY).expect("table");
            let Some(((id, seq), mut v)) = t
                .first()
                .expect("first")
                .map(|(k, v)| ((k.value().0.to_string(), k.value().1), v.value().to_vec()))
            else {
                return false;
            };
            let last = v.len() - 1;
            v[last] ^= 0x01;
            t.insert((id.as_str(), seq), v.as_slice()).expect("insert");
            true
        }
        _ => {
            let def = match name {
                "fsm_changes" => CHANGES,
                "fsm_members" => crate::store::MEMBERS,
                "fsm_proposals" => crate::store::PROPOSALS,
                "fsm_pending" => crate::store::PENDING,
                "fsm_audit" => crate::store::AUDIT,
                "fsm_request_order" => crate::store::REQUEST_ORDER,
                other => panic!("unknown fsm table {other}"),
            };
            let mut t = txn.open_table(def).expect("table");
            let Some((k, mut v)) = t.first().expect("first").map(|(k, v)| (k.value(), v.value().to_vec()))
            else {
                return false;
            };
            let last = v.len() - 1;
            v[last] ^= 0x01;
            t.insert(k, v.as_slice()).expect("insert");
            true
        }
    }
}

fn flip_str(txn: &redb::WriteTransaction, def: redb::TableDefinition<&str, &[u8]>) -> bool {
    let mut t = txn.open_table(def).expect("table");
    let Some((k, mut v)) =
        t.first().expect("first").map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
    else {
        return false;
    };
    let last = v.len() - 1;
    v[last] ^= 0x01;
    t.insert(k.as_str(), v.as_slice()).expect("insert");
    true
}

/// Rewrites every fsm record as a binary before checksums stored it: unsealed values, counters as u64s in
/// the `fsm_meta` table.
fn make_format_1(db: &redb::Database) {
    const LEGACY_META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("fsm_meta");
    let txn = db.begin_write().expect("w");
    {
        let counters: Vec<(String, u64)> = txn
            .open_table(crate::store::META)
            .expect("counters")
            .iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                (k.value().to_string(), crate::store::unseal_u64("t", k.value(), v.value()).expect("sealed"))
            })
            .collect();
        assert!(!counters.is_empty());
        txn.delete_table(crate::store::META).expect("drop counters");
        // A binary that old had no replicated counts either (recounted at open).
        txn.delete_table(crate::store::COUNTS).expect("drop counts");
        txn.delete_table(crate::store::REPAIR_QUEUE).expect("drop queue");
        let mut legacy = txn.open_table(LEGACY_META).expect("legacy");
        for (k, v) in &counters {
            legacy.insert(k.as_str(), *v).expect("insert");
        }
        for def in [
            OBJECTS,
            crate::store::AGENTS,
            crate::store::SCOPES,
            crate::store::PROPOSAL_OBJ,
            crate::store::SETTINGS,
        ] {
            let mut t = txn.open_table(def).expect("t");
            let rows: Vec<(String, Vec<u8>)> = t
                .iter()
                .expect("iter")
                .map(|r| {
                    let (k, v) = r.expect("row");
                    (
                        k.value().to_string(),
                        crate::store::unseal("t", k.value(), v.value()).expect("sealed").to_vec(),
                    )
                })
                .collect();
            for (k, v) in &rows {
                t.insert(k.as_str(), v.as_slice()).expect("insert");
            }
        }
        for def in [
            CHANGES,
            crate::store::MEMBERS,
            crate::store::PROPOSALS,
            crate::store::PENDING,
            crate::store::AUDIT,
        ] {
            let mut t = txn.open_table(def).expect("t");
            let rows: Vec<(u64, Vec<u8>)> = t
                .iter()
                .expect("iter")
                .map(|r| {
                    let (k, v) = r.expect("row");
                    (k.value(), crate::store::unseal("t", &k.value(), v.value()).expect("sealed").to_vec())
                })
                .collect();
            for (k, v) in &rows {
                t.insert(*k, v.as_slice()).expect("insert");
            }
        }
        let mut t = txn.open_table(crate::store::HISTORY).expect("t");
        let rows: Vec<((String, u64), Vec<u8>)> = t
            .iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                (
                    (k.value().0.to_string(), k.value().1),
                    crate::store::unseal("t", &k.value(), v.value()).expect("sealed").to_vec(),
                )
            })
            .collect();
        for ((id, seq), v) in &rows {
            t.insert((id.as_str(), *seq), v.as_slice()).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

/// A store written before checksums is sealed in place once (all tables, counters moved), reads the same
/// afterwards, and the next open finds nothing to do.
#[test]
fn a_store_written_before_checksums_is_sealed_in_place_once() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("a1", 1, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    h.apply(2, vec![force("disk/h1/sda", State::Warning)]);
    let snapshot = h.snapshot();
    let events = h.events(1);
    make_format_1(&h.db);
    // Unsealed rows are not served as if they were verified.
    assert!(h.reader().object("disk/h1/sda").is_err());
    let report = crate::store::open_store(&h.db).expect("upgrade");
    assert!(report.upgraded && report.records > 5, "{report:?}");
    // Same state, byte for byte, but for the hourly transition counters (a binary that old had none, and
    // they cannot be recounted).
    let snapshot = crate::fsm::snapshot::without_hourly_for_test(&snapshot);
    assert_eq!(h.snapshot(), snapshot, "same state, byte for byte");
    assert_eq!(h.events(1), events);
    let again = crate::store::open_store(&h.db).expect("open again");
    assert!(!again.upgraded, "sealed once");
    assert_eq!(again.records, report.records);
    // And the state machine goes on applying on the upgraded store.
    h.apply(3, vec![ingest("a1", 2, vec![finding("disk/h1/sdb", Severity::Good, 3)])]);
    assert!(h.reader().object("disk/h1/sdb").expect("get").is_some());
}

/// A new, empty store needs no upgrade and verifies as empty.
#[test]
fn an_empty_store_opens_without_upgrade() {
    let h = Harness::new();
    let report = crate::store::open_store(&h.db).expect("open");
    assert_eq!(report, crate::store::OpenReport::default());
}

/// A panic inside storage code during a read (redb's btree cursor hits `unreachable!` on damaged pages) is
/// caught at the store boundary: the request gets the corrupt error and the node's flag is raised.
#[test]
fn a_storage_panic_during_a_read_is_a_corrupt_error_and_raises_the_flag() {
    let h = Harness::new();
    let flag = DamageFlag::default();
    crate::store::watch_damage(&h.db, &flag);
    let r = h.reader();
    let e = r
        .read_for_test(|| -> Result<(), StoreError> {
            unreachable!("injected: btree_cursor on a damaged page")
        })
        .expect_err("caught");
    assert!(
        matches!(&e, StoreError::Corrupt { table: "redb", message } if message.contains("storage panic") && message.contains("injected")),
        "{e}"
    );
    assert!(flag.get().is_some_and(|m| m.contains("storage panic")));
    // The first damage is the one the node reports; the reader keeps answering requests that verify.
    assert_eq!(r.revision().expect("revision"), 0);
    let _keep = Arc::clone(&flag);
}

/// Issue 13: keys are covered by the seal. An object row moved under another id (one key byte flipped: the
/// value left as it was, still a valid frame over its bytes) is refused by every read that meets it and by
/// the start-up verification; the key that was left empty reads as absent, never as the moved row.
#[test]
fn a_flipped_key_byte_is_detected() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("a1", 1, vec![finding("disk/h1/sda", Severity::Warning, 1)])]);
    h.apply(2, vec![ingest("a1", 2, vec![finding("disk/h1/sdb", Severity::Warning, 2)])]);
    {
        let txn = h.db.begin_write().expect("w");
        {
            let mut t = txn.open_table(OBJECTS).expect("objects");
            let v = t.remove("disk/h1/sda").expect("remove").expect("row").value().to_vec();
            // `a` -> `c`: the row now sits under disk/h1/sdc, its bytes untouched.
            t.insert("disk/h1/sdc", v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let flag = DamageFlag::default();
    crate::store::watch_damage(&h.db, &flag);
    assert_corrupt("get", h.reader().object("disk/h1/sdc"), "fsm_objects");
    assert!(flag.get().is_some_and(|m| m.contains("fsm_objects")), "the node stops as a corrupt replica");
    assert_corrupt("list", h.reader().list(&crate::store::Filter::default(), 100), "fsm_objects");
    assert_corrupt("verify", crate::store::verify_store(&h.db), "fsm_objects");
    assert_corrupt("snapshot", h.fsm.snapshot_data(&h.db.begin_read().expect("r")), "fsm_objects");
    assert!(h.reader().object("disk/h1/sda").expect("an absent key").is_none());
    // The same for a u64-keyed table (the change log) and the history's compound keys.
    let mut h = Harness::new();
    h.apply(1, vec![ingest("a1", 1, vec![finding("disk/h1/sda", Severity::Warning, 1)])]);
    {
        let txn = h.db.begin_write().expect("w");
        {
            let mut t = txn.open_table(CHANGES).expect("changes");
            let v = t.remove(1).expect("remove").expect("row").value().to_vec();
            t.insert(3, v.as_slice()).expect("insert");
            let mut t = txn.open_table(crate::store::HISTORY).expect("history");
            let (k, v) = {
                let (k, v) = t.first().expect("first").expect("a history row");
                ((k.value().0.to_string(), k.value().1), v.value().to_vec())
            };
            t.remove((k.0.as_str(), k.1)).expect("remove");
            t.insert((k.0.as_str(), k.1 + 1), v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    assert_corrupt("watch", h.reader().changes(1, &crate::store::Filter::default(), 100), "fsm_changes");
    let rec = h.reader().object("disk/h1/sda").expect("get").expect("sda");
    assert_corrupt("history", h.reader().history(&rec), "fsm_history");
}

/// Rewrites every fsm record in the frame written before keys were covered (format 2).
fn make_format_2(db: &redb::Database) -> u64 {
    let txn = db.begin_write().expect("w");
    let mut n = 0;
    {
        let mut strs = vec![crate::store::META];
        strs.extend([
            OBJECTS,
            crate::store::AGENTS,
            crate::store::SCOPES,
            crate::store::PROPOSAL_OBJ,
            crate::store::SETTINGS,
            crate::store::REQUESTS,
        ]);
        for def in strs {
            let mut t = txn.open_table(def).expect("t");
            let rows: Vec<(String, Vec<u8>)> = t
                .iter()
                .expect("iter")
                .map(|r| {
                    let (k, v) = r.expect("row");
                    let plain = crate::store::unseal("t", k.value(), v.value()).expect("sealed");
                    (k.value().to_string(), crate::checksum::seal(plain))
                })
                .collect();
            for (k, v) in &rows {
                t.insert(k.as_str(), v.as_slice()).expect("insert");
                n += 1;
            }
        }
        for def in [
            CHANGES,
            crate::store::MEMBERS,
            crate::store::PROPOSALS,
            crate::store::PENDING,
            crate::store::AUDIT,
            crate::store::REQUEST_ORDER,
        ] {
            let mut t = txn.open_table(def).expect("t");
            let rows: Vec<(u64, Vec<u8>)> = t
                .iter()
                .expect("iter")
                .map(|r| {
                    let (k, v) = r.expect("row");
                    let plain = crate::store::unseal("t", &k.value(), v.value()).expect("sealed");
                    (k.value(), crate::checksum::seal(plain))
                })
                .collect();
            for (k, v) in &rows {
                t.insert(*k, v.as_slice()).expect("insert");
                n += 1;
            }
        }
        let mut t = txn.open_table(crate::store::HISTORY).expect("t");
        let rows: Vec<((String, u64), Vec<u8>)> = t
            .iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                let plain = crate::store::unseal("t", &k.value(), v.value()).expect("sealed");
                ((k.value().0.to_string(), k.value().1), crate::checksum::seal(plain))
            })
            .collect();
        for ((id, seq), v) in &rows {
            t.insert((id.as_str(), *seq), v.as_slice()).expect("insert");
            n += 1;
        }
    }
    txn.commit().expect("commit");
    n
}

/// A store sealed before keys were covered (format 2) reads as it is, and the next open reseals every
/// record with its key once (same state byte for byte); after that a moved row is caught.
#[test]
fn a_store_sealed_before_keys_were_covered_reads_and_is_resealed_once() {
    let mut h = Harness::new();
    h.apply(1, vec![Command::SetMinCommandVersion { version: 3, by: "alice".into(), reason: "t".into() }]);
    h.apply(2, vec![ingest("a1", 1, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    h.apply(3, vec![force("disk/h1/sda", State::Warning)]);
    let keyed = Command::Keyed {
        key: "k1".into(),
        cmd: Box::new(ingest("", 0, vec![finding("disk/h1/sdb", Severity::Warning, 3)])),
    };
    h.apply(4, vec![keyed]);
    let snapshot = h.snapshot();
    let rewritten = make_format_2(&h.db);
    assert!(rewritten > 10, "{rewritten}");
    // The old frame still reads (apply, readers, snapshots).
    assert!(h.reader().object("disk/h1/sda").expect("get").is_some());
    assert_eq!(h.snapshot(), snapshot);
    let report = crate::store::open_store(&h.db).expect("open");
    assert_eq!((report.unkeyed, report.resealed), (rewritten, rewritten), "{report:?}");
    assert!(!report.upgraded);
    assert_eq!(h.snapshot(), snapshot, "same state, byte for byte");
    let again = crate::store::open_store(&h.db).expect("open again");
    assert_eq!((again.unkeyed, again.resealed, again.records), (0, 0, report.records), "resealed once");
    h.apply(5, vec![ingest("a1", 2, vec![finding("disk/h1/sdc", Severity::Good, 5)])]);
    assert!(h.reader().object("disk/h1/sdc").expect("get").is_some());
}
