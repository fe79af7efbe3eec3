//! Commits (fsyncs) of the outbox per delivered kmsg batch, counted by `OutboxStore::commits`, for the
//! call sequence the agent used before checkpoints travelled with their reports (enqueue; cursor put;
//! pin put; ack; unpin put) and for today's (enqueue + cursor + pin of the next batch in one transaction;
//! ack + unpin in one transaction without its own fsync, made durable by the next commit: a crash in
//! between resends the batch, which the master dedupes). Run with `--nocapture` to see the figures.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use agent::outbox::{Limits, OutboxStore, RedbOutbox};
use agent::reporter::{finish_batch, pin_batch, pin_rule};
use state_machines::Severity;

/// Batches per measurement.
const BATCHES: u64 = 50;
/// Findings per batch (a kmsg run that found a few faults).
const PER_BATCH: usize = 5;

fn items(b: u64) -> Vec<(Severity, Vec<u8>)> {
    (0..PER_BATCH).map(|i| (Severity::Warning, format!("finding {b}.{i}").into_bytes())).collect()
}

#[test]
fn commits_per_batch_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let ob = RedbOutbox::open(&dir.path().join("before.redb"), Limits::default()).unwrap();
        for b in 0..BATCHES {
            let seqs = ob.enqueue(&items(b)).unwrap();
            ob.kv_put("kmsg.cursor", format!("boot {b}").as_bytes()).unwrap();
            let last = *seqs.last().unwrap();
            ob.kv_put("report.inflight", &last.to_be_bytes()).unwrap();
            ob.ack(last).unwrap();
            ob.kv_put("report.inflight", &0u64.to_be_bytes()).unwrap();
        }
        ob.commits() as f64 / BATCHES as f64
    };
    let after = {
        let ob = RedbOutbox::open(&dir.path().join("after.redb"), Limits::default()).unwrap();
        for b in 0..BATCHES {
            let cursor = format!("boot {b}");
            ob.enqueue_pinning(&items(b), &[("kmsg.cursor", cursor.as_bytes())], &pin_rule(500)).unwrap();
            let (pin, entries) = pin_batch(&ob, 500).unwrap();
            assert_eq!(entries.len(), PER_BATCH);
            assert_eq!(finish_batch(&ob, pin).unwrap(), PER_BATCH as u64);
        }
        // Idle: nothing queued, nothing pinned: no commit at all.
        let idle = ob.commits();
        assert_eq!(pin_batch(&ob, 500).unwrap().1.len(), 0);
        assert_eq!(ob.commits(), idle, "an idle reporter pass writes nothing");
        assert_eq!(ob.depth().unwrap().entries, 0);
        ob.commits() as f64 / BATCHES as f64
    };
    println!("outbox commits (fsyncs) per kmsg batch: before {before:.1}, after {after:.1}");
    assert_eq!((before, after), (5.0, 1.0));
}

#[test]
fn a_pinned_batch_is_resent_whole_after_a_restart_with_a_smaller_batch_max() {
    let dir = tempfile::tempdir().unwrap();
    let ob = RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap();
    ob.enqueue(&items(1)).unwrap();
    let (pin, entries) = pin_batch(&ob, 500).unwrap();
    assert_eq!((pin, entries.len()), (PER_BATCH as u64, PER_BATCH));
    // The send failed; the agent restarts with batch_max = 2 and more findings arrive.
    ob.enqueue(&items(2)).unwrap();
    let commits = ob.commits();
    let (again, entries) = pin_batch(&ob, 2).unwrap();
    assert_eq!(again, pin, "same batch number");
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=PER_BATCH as u64).collect::<Vec<_>>());
    assert_eq!(ob.commits(), commits, "re-reading a pinned batch writes nothing");
    finish_batch(&ob, pin).unwrap();
    let (next, entries) = pin_batch(&ob, 2).unwrap();
    assert_eq!((next, entries.len()), (PER_BATCH as u64 + 2, 2), "then batches follow the new batch_max");
}

#[test]
fn the_sink_pins_exactly_the_batch_the_reporter_would() {
    let dir = tempfile::tempdir().unwrap();
    let ob = RedbOutbox::open(&dir.path().join("o.redb"), Limits::default()).unwrap();
    // Nothing pinned: the enqueue pins the first batch, cut at the batch size like peek.
    ob.enqueue_pinning(&items(1), &[], &pin_rule(3)).unwrap();
    let pinned = ob.kv_get("report.inflight").unwrap().unwrap();
    assert_eq!(pinned, 3u64.to_be_bytes().to_vec());
    // Something pinned: a later enqueue leaves the pin alone.
    ob.enqueue_pinning(&items(2), &[], &pin_rule(3)).unwrap();
    assert_eq!(ob.kv_get("report.inflight").unwrap().unwrap(), pinned);
    let commits = ob.commits();
    let (pin, entries) = pin_batch(&ob, 3).unwrap();
    assert_eq!((pin, entries.iter().map(|e| e.seq).collect::<Vec<_>>()), (3, vec![1, 2, 3]));
    assert_eq!(ob.commits(), commits, "the reporter found the batch pinned: no commit");
    finish_batch(&ob, pin).unwrap();
    assert_eq!(ob.commits(), commits, "the ack costs no fsync of its own");
    // Entries that arrived while a batch was in flight are pinned by the reporter (one commit, which also
    // makes the ack durable).
    let (pin, entries) = pin_batch(&ob, 3).unwrap();
    assert_eq!((pin, entries.len()), (6, 3));
    assert_eq!(ob.commits(), commits + 1);
}
