#![allow(clippy::unwrap_used)]

use super::*;

const T0: u64 = 1_780_000_000_000; // a fixed UTC time (2026-05-28)

fn finding(
    object: &str,
    severity: Severity,
    checker: &str,
    time_ms: u64,
    readings: &[(&str, &str)],
) -> Finding {
    Finding {
        object: object.parse().unwrap(),
        severity,
        checker: checker.into(),
        version: "1.0.0".into(),
        rule: format!("{checker}.rule"),
        evidence: "test".into(),
        readings: readings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        time_ms,
        shadow: false,
    }
}

fn open(cfg: ArchiveConfig) -> (tempfile::TempDir, Arc<Archive>, Feed) {
    let dir = tempfile::tempdir().unwrap();
    let (a, feed) = Archive::open(&dir.path().join("archive.redb"), cfg, false).unwrap();
    (dir, a, feed)
}

fn all(a: &Archive, table: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let p = a.page(table, 0, u64::MAX, MAX_PAGE, &token).unwrap();
        out.extend(p.rows);
        if p.next_page_token.is_empty() {
            return out;
        }
        token = p.next_page_token;
    }
}

#[test]
fn faults_are_kept_up_to_the_daily_limit_and_healthy_findings_once_per_day() {
    let (_d, a, feed) = open(ArchiveConfig::default());
    let mut index = 0;
    // One more fault than the daily limit on one object, and the same again the next day.
    for day in 0..2 {
        for i in 0..=MAX_FAULTS_PER_OBJECT_DAY {
            index += 1;
            let t = T0 + day * DAY_MS + i * 1000;
            feed.push(
                index,
                t,
                vec![ArchiveEvent::Finding(finding("disk/h1/sda", Severity::Warning, "disk", t, &[]))],
            );
        }
    }
    // Ten healthy findings of one checker in a day: the last one stays.
    for i in 0..10 {
        index += 1;
        let t = T0 + i * 60_000;
        let f = finding("disk/h1/sdb", Severity::Good, "disk", t, &[("n", &i.to_string())]);
        feed.push(index, t, vec![ArchiveEvent::Finding(f)]);
    }
    a.flush();
    let rows = all(&a, "findings");
    let faults = rows.iter().filter(|r| r["object"] == "disk/h1/sda").count() as u64;
    assert_eq!(faults, 2 * MAX_FAULTS_PER_OBJECT_DAY, "the limit per object and day, each day");
    let healthy: Vec<_> = rows.iter().filter(|r| r["object"] == "disk/h1/sdb").collect();
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0]["readings"]["n"], "9", "the last healthy finding of the day is kept");
    let info = a.info().unwrap();
    assert_eq!(info.downsampled, 2 + 9);
    assert_eq!(info.rows["findings"], 2 * MAX_FAULTS_PER_OBJECT_DAY + 1);
}

#[test]
fn rows_older_than_the_days_bound_are_pruned_a_step_at_a_time() {
    let (_d, a, feed) = open(ArchiveConfig { days: 2, max_mb: 1024 });
    // More old transitions than one pruning step drops.
    let n = PRUNE_STEP as u64 + 100;
    for i in 0..n {
        let row = TransitionRow {
            time_ms: T0 + i,
            object: "disk/h1/sda".into(),
            from_state: "GOOD".into(),
            to_state: "ERROR".into(),
            cause: "r".into(),
            cause_detail: "r".into(),
            checker: String::new(),
            checker_version: String::new(),
            finding_time_ms: None,
            revision: i + 1,
        };
        feed.push(i + 1, T0 + i, vec![ArchiveEvent::Transition(row)]);
    }
    a.flush();
    assert_eq!(a.info().unwrap().rows["transitions"], n);
    // An entry one day later keeps everything (2 days); two days later drops the first day, a step at a time.
    let later = T0 + 2 * DAY_MS;
    let t = |i: u64| TicketRow {
        time_ms: later,
        object: "disk/h1/sda".into(),
        ticket: format!("T{i}"),
        status: "filed".into(),
    };
    feed.push(n + 1, later, vec![ArchiveEvent::Ticket(t(1))]);
    a.flush();
    assert_eq!(a.info().unwrap().rows["transitions"], 100, "one write drops at most PRUNE_STEP rows");
    feed.push(n + 2, later, vec![ArchiveEvent::Ticket(t(2))]);
    a.flush();
    let info = a.info().unwrap();
    assert_eq!(info.rows["transitions"], 0);
    assert_eq!(info.rows["tickets"], 2);
    assert_eq!(info.pruned, n);
    // A finding older than the window is not archived at all.
    feed.push(
        n + 3,
        later,
        vec![ArchiveEvent::Finding(finding("disk/h1/sda", Severity::Error, "disk", T0, &[]))],
    );
    a.flush();
    assert_eq!(a.info().unwrap().rows["findings"], 0);
}

#[test]
fn max_mb_drops_the_oldest_rows_first() {
    let (_d, a, feed) = open(ArchiveConfig { days: 30, max_mb: 1 });
    let evidence = "x".repeat(400);
    let mut index = 0;
    // About 2 MiB of fault findings over 10 days (distinct objects, so the daily limit does not apply).
    for i in 0..4000u64 {
        index += 1;
        let t = T0 + (i / 400) * DAY_MS + i;
        let mut f = finding(&format!("disk/h{i}/sda"), Severity::Error, "disk", t, &[]);
        f.evidence = evidence.clone();
        feed.push(index, t, vec![ArchiveEvent::Finding(f)]);
    }
    a.flush();
    // Pruning is bounded per write: a few quiet writes finish it.
    for _ in 0..4 {
        index += 1;
        feed.push(index, T0 + 10 * DAY_MS, vec![]);
        feed.push(
            index,
            T0 + 10 * DAY_MS,
            vec![ArchiveEvent::Ticket(TicketRow {
                time_ms: 0,
                object: "disk/h0/sda".into(),
                ticket: "T".into(),
                status: "filed".into(),
            })],
        );
        a.flush();
    }
    let info = a.info().unwrap();
    assert!(info.bytes <= 1 << 20, "bytes {} over max_mb", info.bytes);
    assert!(info.bytes > (1 << 20) - 4096, "only what is needed is dropped: {}", info.bytes);
    let rows = all(&a, "findings");
    let oldest = rows.first().unwrap()["time_ms"].as_u64().unwrap();
    let kept_from = (4000 - rows.len() as u64) / 400;
    assert!(oldest >= T0 + kept_from * DAY_MS, "the oldest rows went first");
    assert_eq!(rows.last().unwrap()["object"], "disk/h3999/sda", "the newest row stays");
}

#[test]
fn a_full_queue_drops_entries_and_counts_them() {
    // A feed whose writer is not running: the queue fills at its limit, the next push is dropped at once.
    let (tx, _rx) = sync_channel(QUEUE_ENTRIES);
    let stats = Arc::new(ArchiveStats::default());
    let feed = Feed { tx, stats: stats.clone() };
    for i in 0..QUEUE_ENTRIES as u64 {
        feed.push(i + 1, T0, vec![]);
    }
    assert_eq!(stats.dropped_entries.load(Ordering::Relaxed), 0);
    feed.push(QUEUE_ENTRIES as u64 + 1, T0, vec![]);
    assert_eq!(stats.dropped_entries.load(Ordering::Relaxed), 1);
}

#[test]
fn pages_follow_tokens_and_replays_are_not_archived_twice() {
    let (_d, a, feed) = open(ArchiveConfig::default());
    let n = 2 * DEFAULT_PAGE as u64 + 7;
    for i in 0..n {
        let f = finding(&format!("disk/h{i}/sda"), Severity::Error, "disk", T0 + i, &[]);
        feed.push(i + 1, T0 + i, vec![ArchiveEvent::Finding(f)]);
    }
    // Entries applied again after a restart (same indexes) change nothing.
    for i in 0..10 {
        let f = finding(&format!("disk/h{i}/sda"), Severity::Error, "disk", T0 + i, &[]);
        feed.push(i + 1, T0 + i, vec![ArchiveEvent::Finding(f)]);
    }
    a.flush();
    let mut token = String::new();
    let mut pages = 0;
    let mut rows = Vec::new();
    loop {
        let p = a.page("findings", 0, u64::MAX, 0, &token).unwrap();
        assert!(p.rows.len() <= DEFAULT_PAGE);
        rows.extend(p.rows);
        pages += 1;
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(rows.len() as u64, n);
    // A range: [T0+10, T0+20).
    let p = a.page("findings", T0 + 10, T0 + 20, 0, "").unwrap();
    assert_eq!(p.rows.len(), 10);
    assert!(a.page("nope", 0, 1, 0, "").is_err());
    assert!(a.page("findings", 0, 1, 0, "1.2").is_err());
    assert!(a.page("findings", 5, 1, 0, "").is_err());
}

#[test]
fn series_keeps_numeric_readings_and_thins_beyond_the_limit() {
    let (_d, a, feed) = open(ArchiveConfig { days: 60, max_mb: 1024 });
    // 50 checkers reporting healthy once a day for 50 days: 2,500 points, more than a series holds.
    let mut index = 0;
    for day in 0..50u64 {
        for c in 0..50 {
            index += 1;
            let t = T0 + day * DAY_MS + c * 1000;
            let readings = [("smart_5_raw", "12"), ("model", "X")];
            let f = finding("disk/h1/sda", Severity::Good, &format!("c{c}"), t, &readings);
            feed.push(index, t, vec![ArchiveEvent::Finding(f)]);
        }
    }
    a.flush();
    let now = T0 + 50 * DAY_MS;
    let s = a.series("disk/h1/sda", 60, now).unwrap();
    assert!(s.truncated);
    assert_eq!(s.points.len(), MAX_SERIES_POINTS, "the newest points stay");
    assert_eq!(s.points.last().unwrap().time_ms, T0 + 49 * DAY_MS + 49_000);
    assert!(s.points.windows(2).all(|w| w[0].time_ms <= w[1].time_ms), "oldest first");
    assert_eq!(s.points[0].values.get("smart_5_raw"), Some(&12.0));
    assert!(!s.points[0].values.contains_key("model"), "text readings are not values");
    let small = a.series("disk/h1/sda", 1, now).unwrap();
    assert!(!small.truncated);
    assert_eq!(small.points.len(), 50, "one day of 50 checkers");
    assert!(a.series("disk/h1/sda", 0, now).is_err());
    assert!(a.series("disk/h9/sda", 30, now).unwrap().points.is_empty());
}

#[test]
fn a_restore_and_a_late_start_are_reported_as_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let (a, feed) = Archive::open(&dir.path().join("archive.redb"), ArchiveConfig::default(), true).unwrap();
    feed.push(5, T0, vec![ArchiveEvent::Finding(finding("disk/h1/sda", Severity::Error, "disk", T0, &[]))]);
    feed.restored();
    feed.push(
        90,
        T0 + 5000,
        vec![ArchiveEvent::Finding(finding("disk/h1/sda", Severity::Error, "disk", T0 + 1, &[]))],
    );
    a.flush();
    let gaps = a.info().unwrap().gaps;
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert_eq!(gaps[0].before_ms, T0);
    assert_eq!(gaps[1].before_ms, T0 + 5000);
    assert!(gaps[1].why.contains("snapshot"));
}

#[test]
fn bad_bounds_are_refused() {
    assert!(ArchiveConfig { days: 0, max_mb: 1 }.validate().is_err());
    assert!(ArchiveConfig { days: MAX_DAYS + 1, max_mb: 1 }.validate().is_err());
    assert!(ArchiveConfig { days: 30, max_mb: 0 }.validate().is_err());
    assert!(ArchiveConfig::default().validate().is_ok());
}

/// The cost of `Feed::push` on the apply path, printed (not asserted): `cargo test -p master --release
/// archive::tests::push_cost -- --nocapture --ignored`.
#[test]
#[ignore]
fn push_cost() {
    let (_d, a, feed) = open(ArchiveConfig::default());
    let n = 100_000u64;
    let start = Instant::now();
    for i in 0..n {
        let f = finding(
            &format!("disk/h{}/sda", i % 1000),
            Severity::Good,
            "disk",
            T0 + i,
            &[("smart_5_raw", "1")],
        );
        feed.push(i + 1, T0 + i, vec![ArchiveEvent::Finding(f)]);
        if i % 2000 == 0 {
            a.flush(); // keep the queue from filling (the writer's speed is measured separately)
        }
    }
    let total = start.elapsed();
    let pushes = a.stats.pushes.load(Ordering::Relaxed);
    let ns = a.stats.push_ns.load(Ordering::Relaxed);
    a.flush();
    println!(
        "archive: {pushes} pushes, {:.0} ns per push on the apply path; writer kept up at {:.0} entries/s \
         (dropped {})",
        ns as f64 / pushes as f64,
        n as f64 / total.as_secs_f64(),
        a.stats.dropped_entries.load(Ordering::Relaxed)
    );
}

/// Every row and counter of the archive's finding tables, as text (for comparing two archives).
fn finding_tables(db: &Database) -> Vec<String> {
    use redb::ReadableTable;
    let txn = db.begin_read().unwrap();
    let mut out = Vec::new();
    for (k, v) in txn.open_table(FINDINGS).unwrap().iter().unwrap().map(Result::unwrap) {
        out.push(format!("finding {:?} {}", k.value(), String::from_utf8_lossy(v.value())));
    }
    for (k, _) in txn.open_table(BY_OBJECT).unwrap().iter().unwrap().map(Result::unwrap) {
        out.push(format!("by_object {:?}", k.value()));
    }
    for (k, v) in txn.open_table(HEALTHY_LAST).unwrap().iter().unwrap().map(Result::unwrap) {
        out.push(format!("healthy {:?} {:?}", k.value(), v.value()));
    }
    for (k, v) in txn.open_table(FAULTS_DAY).unwrap().iter().unwrap().map(Result::unwrap) {
        out.push(format!("faults {:?} {}", k.value(), v.value()));
    }
    for (k, v) in txn.open_table(META).unwrap().iter().unwrap().map(Result::unwrap) {
        out.push(format!("meta {} {}", k.value(), v.value()));
    }
    out
}

#[test]
fn a_batch_written_at_once_leaves_what_writing_its_entries_one_by_one_leaves() {
    use rand::{Rng, SeedableRng};
    let seed = 20261203u64;
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let severities = [Severity::Good, Severity::Info, Severity::Unknown, Severity::Warning, Severity::Error];
    // 300 entries of 1-6 findings on 3 disks x 2 checkers over 3 days, times out of order and often equal,
    // some before the 2-day window of the newest entry (downsampled at once).
    let mut entries = Vec::new();
    for index in 1..=300u64 {
        let now = T0 + 2 * DAY_MS + index * 1000;
        let events = (0..rng.random_range(1..=6))
            .map(|_| {
                let object = format!("disk/h1/sd{}", ['a', 'b', 'c'][rng.random_range(0..3)]);
                let checker = ["disk", "smart"][rng.random_range(0..2)];
                let t = T0 + rng.random_range(0..3) * DAY_MS + rng.random_range(0..8) * 60_000;
                let sev = severities[rng.random_range(0..severities.len())];
                ArchiveEvent::Finding(finding(&object, sev, checker, t, &[("i", &index.to_string())]))
            })
            .collect::<Vec<_>>();
        entries.push((index, now, events));
    }
    let cfg = ArchiveConfig { days: 2, ..ArchiveConfig::default() };
    let writer = |dir: &tempfile::TempDir| {
        let (a, _feed) = Archive::open(&dir.path().join("archive.redb"), cfg.clone(), false).unwrap();
        let w = Writer { db: a.db.clone(), cfg: cfg.clone(), stats: a.stats.clone(), gap: None, fresh: true };
        (a, w)
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a1, mut at_once) = writer(&d1);
    let (a2, mut one_by_one) = writer(&d2);
    at_once.write(entries.clone(), false).unwrap();
    for e in entries {
        one_by_one.write(vec![e], false).unwrap();
    }
    let (t1, t2) = (finding_tables(&a1.db), finding_tables(&a2.db));
    assert!(t1.iter().any(|r| r.starts_with("meta downsampled")), "the run downsampled something");
    assert!(t1.iter().filter(|r| r.starts_with("healthy")).count() > 3, "healthy findings were kept");
    assert_eq!(t1, t2, "the same rows and counters");
}

#[test]
fn within_a_batch_only_the_newest_healthy_finding_of_a_day_is_written() {
    let add =
        |index, f: Finding| Add { index, pos: 0, now: f.time_ms, ev: ArchiveEvent::Finding(f), cutoff: T0 };
    let adds = vec![
        add(1, finding("disk/h1/sda", Severity::Good, "disk", T0 + 10, &[])),
        add(2, finding("disk/h1/sda", Severity::Good, "disk", T0 + 30, &[])), // the newest
        add(3, finding("disk/h1/sda", Severity::Good, "disk", T0 + 20, &[])), // older than the newest so far
        add(4, finding("disk/h1/sda", Severity::Warning, "disk", T0 + 40, &[])), // a fault: always written
        add(5, finding("disk/h1/sda", Severity::Good, "smart", T0 + 5, &[])), // another checker
        add(6, finding("disk/h1/sdb", Severity::Good, "disk", T0 + 5, &[])),  // another object
        add(7, finding("disk/h1/sda", Severity::Info, "disk", T0 + DAY_MS, &[])), // another day
        add(8, finding("disk/h1/sda", Severity::Good, "disk", T0 - 1, &[])), // before the cutoff: not grouped
        add(9, finding("disk/h1/sdb", Severity::Good, "disk", T0 + 5, &[])), // a tie: the later one stays
    ];
    assert_eq!(superseded_in_batch(&adds), vec![true, false, true, false, false, true, false, false, false]);
}

#[test]
fn the_writer_gathers_entries_unless_behind_or_flushing() {
    let ms = Duration::from_millis;
    // Entries arriving soon after a write wait for the rest of WRITE_EVERY, then go in one transaction.
    assert_eq!(gather_for(ms(0), false, false), WRITE_EVERY);
    assert_eq!(gather_for(ms(100), false, false), WRITE_EVERY - ms(100));
    // Long after the last write: at once.
    assert_eq!(gather_for(WRITE_EVERY, false, false), Duration::ZERO);
    assert_eq!(gather_for(WRITE_EVERY * 10, false, false), Duration::ZERO);
    // A full last batch (the queue is ahead of the writer) or a flush: no wait, whatever the time.
    assert_eq!(gather_for(ms(0), true, false), Duration::ZERO);
    assert_eq!(gather_for(ms(0), false, true), Duration::ZERO);
}

#[test]
fn a_backlog_larger_than_a_batch_is_written_whole_without_drops() {
    let (_d, a, feed) = open(ArchiveConfig::default());
    let n = (WRITE_BATCH * 3 + 7) as u64;
    for i in 1..=n {
        let f = finding("disk/h1/sda", Severity::Good, "disk", T0 + i, &[]);
        feed.push(i, T0 + i, vec![ArchiveEvent::Finding(f)]);
    }
    a.flush();
    assert_eq!(a.stats.entries.load(Ordering::Relaxed), n);
    assert_eq!(a.stats.dropped_entries.load(Ordering::Relaxed), 0);
}
