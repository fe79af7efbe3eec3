//! Unit tests of the replicated state machine, applied directly to a redb Database in a tempdir (the raft
//! layer's job of calling apply/commit is played by the `Harness`).

use super::*;
use crate::safety::ProposalFilter;
use crate::sm_seam::Input;
use crate::store::{ChangesRead, Filter, META, Reader};
use redb::ReadableDatabase;
use state_machines::{AckKind, Finding, ObjectId, OperatorCommand, Severity, State};

struct Harness {
    _dir: tempfile::TempDir,
    db: redb::Database,
    fsm: MasterFsm,
    rx: watch::Receiver<u64>,
    index: u64,
}

impl Harness {
    fn new() -> Harness {
        Self::with(MasterFsm::new(Policy::default()))
    }

    fn with((fsm, rx): (MasterFsm, watch::Receiver<u64>)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("db.redb")).expect("db");
        Harness { _dir: dir, db, fsm, rx, index: 0 }
    }

    /// Apply raw entry bytes in their own transaction, as the raft layer does.
    fn apply_raw(&mut self, bytes: &[u8]) -> ApplyResult {
        self.try_apply_raw(bytes).expect("apply")
    }

    /// Like [`Harness::apply_raw`], but an apply error aborts the transaction and leaves the applied index
    /// where it was (as the raft layer's fatal stop does).
    fn try_apply_raw(&mut self, bytes: &[u8]) -> Result<ApplyResult, StoreError> {
        let txn = self.db.begin_write().expect("txn");
        match self.fsm.apply_entry(&txn, self.index + 1, bytes) {
            Ok(out) => {
                txn.commit().expect("commit");
                self.index += 1;
                self.fsm.committed();
                Ok(serde_json::from_slice(&out).expect("result"))
            }
            Err(e) => {
                txn.abort().expect("abort");
                Err(e)
            }
        }
    }

    fn apply(&mut self, now: u64, cmds: Vec<Command>) -> ApplyResult {
        self.apply_raw(&Envelope::new(now, cmds).encode())
    }

    fn reader(&self) -> Reader {
        Reader::new(&self.db).expect("reader")
    }

    fn snapshot(&self) -> Vec<u8> {
        let txn = self.db.begin_read().expect("read");
        self.fsm.snapshot_data(&txn).expect("snapshot")
    }

    fn events(&self, from: u64) -> Vec<ChangeEvent> {
        match self.reader().changes(from, &Filter::default(), usize::MAX).expect("changes") {
            ChangesRead::Events { events, .. } => events,
            ChangesRead::Compacted { first_available } => panic!("compacted at {first_available}"),
        }
    }
}

/// A harness whose cluster enabled command `version` (at time 1).
fn harness(version: u32) -> Harness {
    let mut h = Harness::new();
    let r =
        h.apply(1, vec![Command::SetMinCommandVersion { version, by: "ops".into(), reason: "up".into() }]);
    assert!(r.results[0].error.is_none(), "{r:?}");
    h
}

/// Apply one command in an entry of its own; its result.
fn one(h: &mut Harness, now: u64, cmd: Command) -> CmdResult {
    h.apply(now, vec![cmd]).results.remove(0)
}

/// Apply `cmd` expecting a refusal with `code` whose message contains `want`, and nothing changed.
fn refused(h: &mut Harness, now: u64, cmd: Command, code: proto::error::Code, want: &str) {
    let before = h.snapshot();
    let r = one(h, now, cmd);
    let (c, m) = r.error.clone().unwrap_or_else(|| panic!("expected a refusal ({want}), got {r:?}"));
    assert_eq!(c, code, "{m}");
    assert!(m.contains(want), "want {want:?} in {m:?}");
    assert_eq!(h.snapshot(), before, "a refusal changes nothing");
}

fn finding(object: &str, severity: Severity, time_ms: u64) -> Finding {
    Finding {
        object: object.parse().expect("id"),
        severity,
        checker: "smart".into(),
        version: "1.0.0".into(),
        rule: "smart.reallocated".into(),
        evidence: format!("{severity} reading"),
        readings: BTreeMap::new(),
        time_ms,
        shadow: false,
    }
}

fn ingest(agent: &str, seq: u64, findings: Vec<Finding>) -> Command {
    Command::Ingest { agent: agent.into(), seq, findings, epoch: 0 }
}

fn force(object: &str, to: State) -> Command {
    Command::Object {
        object: object.parse().expect("id"),
        input: Input::Operator {
            operator: "alice".into(),
            command: OperatorCommand::Force { to, reason: "test".into() },
        },
    }
}

#[test]
fn applies_a_batch_of_findings_with_dense_revisions() {
    let mut h = Harness::new();
    let r = h.apply(
        1000,
        vec![ingest(
            "agent-1",
            1,
            vec![
                finding("disk/h1/sda", Severity::Good, 1),
                finding("disk/h1/sdb", Severity::Good, 1),
                finding("disk/h1/sda", Severity::Fatal, 2),
            ],
        )],
    );
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].applied, 3);
    assert_eq!(r.results[0].revision, 3);
    assert!(r.results[0].transitioned, "FATAL goes straight to ERROR");
    let reader = h.reader();
    assert_eq!(reader.revision().expect("rev"), 3);
    let sda = reader.object("disk/h1/sda").expect("read").expect("exists");
    assert_eq!(sda.sm.state, State::Error);
    assert_eq!(sda.revision, 3);
    assert_eq!(sda.findings_seen, 2);
    assert_eq!(sda.evidence.get("smart").expect("decodes").expect("smart").severity, Severity::Fatal);
    let hist = reader.history(&sda).expect("history");
    assert_eq!(hist.len(), 1);
    assert_eq!((hist[0].from_state.as_str(), hist[0].to_state.as_str()), ("GOOD", "ERROR"));
    let events = h.events(1);
    assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(events[2].what, "transition");
    assert_eq!(events[2].from_state, "GOOD");
    assert_eq!(*h.rx.borrow(), 3, "watchers are told after commit");
}

#[test]
fn resent_agent_batch_is_applied_once() {
    let mut h = Harness::new();
    let batch = ingest("agent-1", 7, vec![finding("disk/h1/sda", Severity::Warning, 1)]);
    let first = h.apply(1000, vec![batch.clone()]);
    assert!(!first.results[0].duplicate);
    let snap = h.snapshot();
    let again = h.apply(2000, vec![batch]);
    assert!(again.results[0].duplicate);
    assert_eq!(again.results[0].applied, 0);
    assert_eq!(again.results[0].revision, first.results[0].revision);
    assert_eq!(h.snapshot(), snap, "a duplicate changes nothing");
    // An older sequence number is a duplicate too; the next one applies.
    assert!(
        h.apply(3000, vec![ingest("agent-1", 3, vec![finding("disk/h1/sda", Severity::Good, 2)])]).results[0]
            .duplicate
    );
    let next = h.apply(4000, vec![ingest("agent-1", 8, vec![finding("disk/h1/sda", Severity::Good, 3)])]);
    assert_eq!(next.results[0].applied, 1);
    // No agent id: no dedupe.
    let anon = ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 4)]);
    h.apply(5000, vec![anon.clone()]);
    assert_eq!(h.apply(6000, vec![anon]).results[0].applied, 1);
}

#[test]
fn history_is_bounded_and_counts_what_it_dropped() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    let extra = 10;
    for i in 0..HISTORY_LIMIT + extra {
        let to = if i % 2 == 0 { State::Warning } else { State::Good };
        let r = h.apply(10 + i, vec![force("disk/h1/sda", to)]);
        assert_eq!(r.results[0].error, None, "force #{i}");
        assert!(r.results[0].transitioned);
    }
    let reader = h.reader();
    let rec = reader.object("disk/h1/sda").expect("read").expect("exists");
    assert_eq!(rec.history_len(), HISTORY_LIMIT);
    assert_eq!(rec.history_compacted, extra);
    let hist = reader.history(&rec).expect("history");
    assert_eq!(hist.len() as u64, HISTORY_LIMIT);
    assert!(hist.windows(2).all(|w| w[0].revision < w[1].revision), "oldest first, increasing");
    assert_eq!(hist.last().map(|e| e.revision), Some(rec.revision));
}

#[test]
fn revision_is_monotonic_and_dense_across_entries() {
    let mut h = Harness::new();
    let mut last = 0;
    for i in 0..20u64 {
        let sev = if i % 3 == 0 { Severity::Warning } else { Severity::Good };
        let r = h.apply(i * 1000, vec![ingest("a", i + 1, vec![finding("disk/h1/sda", sev, i)])]);
        assert_eq!(r.results[0].revision, last + 1);
        last = r.results[0].revision;
    }
    let revs: Vec<u64> = h.events(1).iter().map(|e| e.revision).collect();
    assert_eq!(revs, (1..=20).collect::<Vec<_>>());
    // Reading from the middle starts exactly there.
    assert_eq!(h.events(15).first().map(|e| e.revision), Some(15));
    // A command that changes nothing does not move the revision.
    let r = h.apply(99_000, vec![Command::Announce { id: 1, grpc: "g".into(), http: "h".into() }]);
    assert_eq!(r.results[0].revision, 20);
}

#[test]
fn snapshot_restore_round_trip_is_equal() {
    let mut a = Harness::new();
    a.apply(
        1,
        vec![
            Command::Register {
                agent: "agent-1".into(),
                host: "h1".into(),
                objects: vec![Registration {
                    id: "disk/h1/sda".parse().expect("id"),
                    attributes: [("serial", "S1"), ("model", "M")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
                }],
            },
            ingest("agent-1", 1, vec![finding("disk/h1/sda", Severity::Fatal, 1)]),
            Command::AgentLiveness { agent: "agent-1".into(), host: "h1".into(), alive: true },
            Command::Announce { id: 2, grpc: "127.0.0.1:1".into(), http: "127.0.0.1:2".into() },
        ],
    );
    let snap = a.snapshot();
    let mut b = Harness::new();
    b.apply(1, vec![ingest("", 0, vec![finding("machine/other", Severity::Error, 1)])]);
    {
        let txn = b.db.begin_write().expect("txn");
        b.fsm.restore_data(&txn, &snap).expect("restore");
        txn.commit().expect("commit");
        b.fsm.committed();
    }
    assert_eq!(b.snapshot(), snap);
    let (ra, rb) = (a.reader(), b.reader());
    let all = |r: &Reader| r.list(&Filter::default(), usize::MAX).expect("list");
    assert_eq!(all(&ra), all(&rb));
    assert!(rb.object("machine/other").expect("read").is_none(), "restore replaces, not merges");
    assert_eq!(ra.agents().expect("a"), rb.agents().expect("b"));
    assert_eq!(ra.members().expect("a"), rb.members().expect("b"));
    let sda = ra.object("disk/h1/sda").expect("read").expect("exists");
    assert_eq!(ra.history(&sda).expect("h"), rb.history(&sda).expect("h"));
    assert_eq!(*b.rx.borrow(), ra.revision().expect("rev"));
    // The restored node serves the same watch history (issue 13 item 4: the change log travels).
    let rev = rb.revision().expect("rev");
    drop((ra, rb));
    assert_eq!(b.events(1), a.events(1));
    assert_eq!(b.events(1).len() as u64, rev);
    b.apply(2, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 2)])]);
    assert_eq!(b.events(rev + 1).len(), 1);
}

#[test]
fn corrupt_snapshot_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    let before = h.snapshot();
    let mut bad = vec![before[..before.len() - 3].to_vec(), b"garbage".to_vec(), Vec::new()];
    let mut wrong_tag = before.clone();
    wrong_tag.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0, 0]);
    bad.push(wrong_tag);
    for data in bad {
        let txn = h.db.begin_write().expect("txn");
        assert!(h.fsm.restore_data(&txn, &data).is_err());
        txn.abort().expect("abort");
        assert_eq!(h.snapshot(), before);
    }
}

#[test]
fn malformed_entries_are_no_ops() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    let before = h.snapshot();
    let unknown_cmd = serde_json::json!({"v": 1, "now_ms": 1, "cmds": [{"type": "explode"}]}).to_string();
    let bad_id = serde_json::json!({"v": 1, "now_ms": 1, "cmds": [{"type": "ingest", "agent": "", "seq": 0,
        "findings": [{"object": "disk/h1", "severity": "ERROR", "checker": "c", "version": "1", "rule": "r",
        "evidence": "", "time_ms": 1}]}]})
    .to_string();
    // A command newer than its entry claims: every binary refuses it alike.
    let understated = serde_json::json!({"v": 1, "now_ms": 1, "cmds": [{"type": "set_min_command_version",
        "version": 2, "by": "a", "reason": "r"}]})
    .to_string();
    for garbage in
        [&b""[..], b"\x00\xff garbage", unknown_cmd.as_bytes(), bad_id.as_bytes(), understated.as_bytes()]
    {
        let r = h.apply_raw(garbage);
        assert!(r.results.is_empty());
    }
    assert_eq!(h.snapshot(), before);
    assert_eq!(h.fsm.stats().undecodable.load(Ordering::Relaxed), 5);
    // (An entry from a newer binary is not garbage: see `mixed_versions_*`.)
}

#[test]
fn refused_commands_change_nothing() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    let before = h.snapshot();
    let unknown = h.apply(2, vec![force("disk/h1/sdz", State::Warning)]);
    assert_eq!(unknown.results[0].error.as_ref().map(|e| e.0), Some(proto::error::Code::NotFound));
    let no_ack = Command::Object {
        object: "disk/h1/sda".parse().expect("id"),
        input: Input::Ack { role: "storage".into(), ack: AckKind::DataEvacuated },
    };
    let r = h.apply(3, vec![no_ack]);
    assert_eq!(r.results[0].error.as_ref().map(|e| e.0), Some(proto::error::Code::Conflict));
    let illegal = h.apply(4, vec![force("disk/h1/sda", State::Test)]);
    assert_eq!(illegal.results[0].error.as_ref().map(|e| e.0), Some(proto::error::Code::Conflict));
    assert_eq!(h.snapshot(), before);
}

#[test]
fn ack_moves_a_disk_to_repair_and_records_effects() {
    let mut h = Harness::new();
    h.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Fatal, 1)])]);
    let ack = Command::Object {
        object: "disk/h1/sda".parse().expect("id"),
        input: Input::Ack { role: "storage".into(), ack: AckKind::DataEvacuated },
    };
    let r = h.apply(2, vec![ack]);
    assert_eq!(r.results[0].error, None);
    assert_eq!(r.results[0].state, "REPAIR");
    let reader = h.reader();
    let rec = reader.object("disk/h1/sda").expect("read").expect("exists");
    let hist = reader.history(&rec).expect("history");
    let last = hist.last().expect("entry");
    assert_eq!(last.to_state, "REPAIR");
    assert!(last.detail.contains("file-ticket"), "{last:?}");
}

#[test]
fn registration_creates_updates_and_detects_replacement() {
    let mut h = Harness::new();
    let reg = |serial: &str| Command::Register {
        agent: "agent-1".into(),
        host: "h1".into(),
        objects: vec![Registration {
            id: "disk/h1/sda".parse().expect("id"),
            attributes: [("serial".to_string(), serial.to_string())].into_iter().collect(),
            labels: BTreeMap::new(),
        }],
    };
    let r = h.apply(1, vec![reg("S1")]);
    assert_eq!((r.results[0].created, r.results[0].revision), (1, 1));
    // Same inventory again: nothing changes, no revision.
    let r = h.apply(2, vec![reg("S1")]);
    assert_eq!((r.results[0].created, r.results[0].updated, r.results[0].revision), (0, 0, 1));
    // A new serial in the slot is a replacement: GOOD -> NEWBIE.
    let r = h.apply(3, vec![reg("S2")]);
    assert!(r.results[0].transitioned);
    let rec = h.reader().object("disk/h1/sda").expect("read").expect("exists");
    assert_eq!(rec.sm.state, State::Newbie);
    assert_eq!(rec.sm.serial(), Some("S2"));
}

#[test]
fn change_log_is_compacted_and_old_revisions_answer_compacted() {
    let mut h = Harness::with(MasterFsm::new(Policy::default()));
    h.fsm = std::mem::replace(&mut h.fsm, MasterFsm::new(Policy::default()).0).with_changelog_retain(10);
    for i in 0..30u64 {
        h.apply(i, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, i)])]);
    }
    let reader = h.reader();
    assert_eq!(reader.revision().expect("rev"), 30);
    match reader.changes(5, &Filter::default(), 100).expect("changes") {
        ChangesRead::Compacted { first_available } => assert_eq!(first_available, 21),
        ChangesRead::Events { .. } => panic!("revision 5 should be compacted"),
    }
    assert_eq!(h.events(21).len(), 10);
    assert_eq!(h.events(31).len(), 0, "future revisions: nothing yet, not an error");
}

/// At the byte bound the oldest change-log rows go (never the newest), whatever the revision window says,
/// identically on redb and in memory; the byte counter equals the rows' bytes; a watcher behind is COMPACTED.
#[test]
fn change_log_is_bounded_by_bytes_identically_on_every_replica() {
    const MAX: u64 = 2_000;
    let (fsm, rx) = MasterFsm::new(Policy::default());
    let mut h = Harness::with((fsm.with_changelog_max_bytes(MAX), rx));
    let mut mem = MemFsm::new(Policy::default()).with_changelog_max_bytes(MAX);
    let mut kept_bytes = 0;
    for i in 1..=40u64 {
        let mut f = finding("disk/h1/sda", if i % 2 == 0 { Severity::Good } else { Severity::Warning }, i);
        f.evidence = format!("reading {i} {}", "x".repeat(40));
        let e = Envelope::new(i, vec![ingest("", 0, vec![f])]).encode();
        let a = h.apply_raw(&e);
        assert_eq!(a, mem.apply(i, &e).expect("mem"));
        assert_eq!(h.snapshot(), mem.state.snapshot(), "replicas agree after entry {i}");
        let rows: u64 = mem.state.changes.values().map(|r| r.len() as u64).sum();
        assert_eq!(mem.state.meta.get(crate::store::META_CHANGELOG_BYTES), Some(&rows), "counter after {i}");
        assert!(
            rows <= MAX || mem.state.changes.len() == 1,
            "entry {i}: {rows} bytes in {} rows",
            mem.state.changes.len()
        );
        kept_bytes = rows;
    }
    assert!(kept_bytes > MAX / 2, "the bound keeps what fits: {kept_bytes}");
    let reader = h.reader();
    let first = match reader.changes(1, &Filter::default(), 100).expect("changes") {
        ChangesRead::Compacted { first_available } => first_available,
        ChangesRead::Events { .. } => panic!("revision 1 should be compacted by the byte bound"),
    };
    assert!(first > 1 && first <= reader.revision().expect("rev"), "{first}");
    assert!(!h.events(first).is_empty(), "the kept window reads from its first revision");
    // One row larger than the bound alone (an entry of many events): the newest row is never dropped.
    let many = (0..20).map(|d| finding(&format!("disk/h2/d{d:02}"), Severity::Warning, 100)).collect();
    let e = Envelope::new(100, vec![ingest("", 0, many)]).encode();
    h.apply_raw(&e);
    mem.apply(41, &e).expect("mem");
    assert_eq!(h.snapshot(), mem.state.snapshot());
    let lens: Vec<usize> = mem.state.changes.values().map(Vec::len).collect();
    assert_eq!(mem.state.changes.len(), 1, "only the newest row is left: {lens:?}");
}

#[test]
fn liveness_changes_are_revisions_but_repeats_are_not() {
    let mut h = Harness::new();
    let alive = |a: bool| Command::AgentLiveness { agent: "agent-1".into(), host: "h1".into(), alive: a };
    assert_eq!(h.apply(1, vec![alive(true)]).results[0].revision, 1);
    assert_eq!(h.apply(2, vec![alive(true)]).results[0].revision, 1);
    assert_eq!(h.apply(3, vec![alive(false)]).results[0].revision, 2);
    let agents = h.reader().agents().expect("agents");
    assert_eq!(agents.len(), 1);
    assert!(!agents[0].1.alive);
    assert_eq!(h.events(1)[0].object, "machine/h1");
}

#[test]
fn evidence_keeps_the_latest_finding_of_at_most_the_limit_of_checkers() {
    let mut h = Harness::new();
    let n = MAX_EVIDENCE_CHECKERS as u64 + 5;
    let findings = (0..n)
        .map(|i| Finding {
            checker: format!("checker-{i:03}"),
            ..finding("disk/h1/sda", Severity::Good, 100 + i)
        })
        .collect();
    h.apply(1, vec![ingest("", 0, findings)]);
    let rec = h.reader().object("disk/h1/sda").expect("read").expect("exists");
    assert_eq!(rec.evidence.len(), MAX_EVIDENCE_CHECKERS);
    assert_eq!(rec.findings_seen, n);
    // The stalest checkers were evicted, the newest kept.
    assert!(!rec.evidence.contains_key("checker-000"));
    assert!(rec.evidence.contains_key(&format!("checker-{:03}", n - 1)));
}

#[test]
fn fault_findings_are_history_but_healthy_repeats_are_not() {
    let mut h = Harness::new();
    for i in 0..5 {
        h.apply(i, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, i)])]);
    }
    let mut warn = finding("disk/h1/sda", Severity::Warning, 10);
    warn.evidence = "sector 500000 I/O error\nsecond line".into();
    h.apply(10, vec![ingest("", 0, vec![warn])]);
    let reader = h.reader();
    let rec = reader.object("disk/h1/sda").expect("read").expect("exists");
    assert_eq!(rec.sm.state, State::Good, "one warning reading does not transition (hysteresis)");
    let hist = reader.history(&rec).expect("history");
    assert_eq!(hist.len(), 1, "{hist:?}");
    assert_eq!(hist[0].what, "finding");
    assert!(hist[0].detail.contains("sector 500000 I/O error"), "{:?}", hist[0]);
    assert_eq!(rec.findings_seen, 6);
}

mod safety;

mod beat_secret;
mod catalog;
mod counts;
mod hourly;
mod integrity;
mod pages;
pub(crate) mod props;
mod requests;
mod topology;
mod versions;

/// Entries applied as one batch in one transaction (the raft layer's `apply_batch`, which opens the tables
/// once) leave the same state, results and change log as the same entries applied one by one.
#[test]
fn a_batch_of_entries_applies_as_the_entries_one_by_one() {
    let register = Command::Register {
        agent: "agent-1".into(),
        host: "h1".into(),
        objects: ["sda", "sdb"]
            .iter()
            .map(|d| Registration {
                id: format!("disk/h1/{d}").parse().expect("id"),
                attributes: [("serial".to_string(), format!("S-{d}"))].into_iter().collect(),
                labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
            })
            .collect(),
    };
    let entries: Vec<Vec<u8>> = vec![
        Envelope::new(1, vec![register]).encode(),
        Envelope::new(2, vec![ingest("agent-1", 1, vec![finding("disk/h1/sda", Severity::Good, 2)])])
            .encode(),
        Envelope::new(3, vec![ingest("agent-1", 2, vec![finding("disk/h1/sda", Severity::Fatal, 3)])])
            .encode(),
        // A resent batch (the same sequence): acknowledged, not applied again.
        Envelope::new(4, vec![ingest("agent-1", 2, vec![finding("disk/h1/sdb", Severity::Fatal, 4)])])
            .encode(),
        b"not an entry".to_vec(),
        Envelope::new(
            5,
            vec![
                ingest("", 0, vec![finding("disk/h1/sdb", Severity::Error, 5)]),
                force("disk/h1/sda", State::Good),
            ],
        )
        .encode(),
    ];
    let mut one = Harness::new();
    let want: Vec<ApplyResult> = entries.iter().map(|e| one.apply_raw(e)).collect();
    let mut batch = Harness::new();
    let refs: Vec<(u64, &[u8])> =
        entries.iter().enumerate().map(|(i, e)| (i as u64 + 1, e.as_slice())).collect();
    let mut out = Vec::new();
    let txn = batch.db.begin_write().expect("txn");
    crate::raft::Fsm::apply_batch(&mut batch.fsm, &txn, &refs, &mut out);
    txn.commit().expect("commit");
    batch.fsm.committed();
    let got: Vec<ApplyResult> =
        out.into_iter().map(|r| serde_json::from_slice(&r.expect("applied")).expect("result")).collect();
    assert_eq!(got, want);
    assert!(want[2].results[0].transitioned && want[3].results[0].duplicate, "the entries did something");
    assert_eq!(batch.snapshot(), one.snapshot());
    assert_eq!(batch.events(1), one.events(1));
}

/// A batch stops at an entry that stops the node (here one too new for this binary): nothing after it is
/// applied, and its error is the batch's last result.
#[test]
fn a_batch_stops_at_an_entry_that_stops_the_node() {
    let ok = |t: u64| Envelope::new(t, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, t)])]);
    let too_new = Envelope { v: crate::model::COMMAND_VERSION + 1, ..ok(2) };
    let entries = [ok(1).encode(), too_new.encode(), ok(3).encode()];
    let refs: Vec<(u64, &[u8])> =
        entries.iter().enumerate().map(|(i, e)| (i as u64 + 1, e.as_slice())).collect();
    let mut h = Harness::new();
    let mut out = Vec::new();
    let txn = h.db.begin_write().expect("txn");
    crate::raft::Fsm::apply_batch(&mut h.fsm, &txn, &refs, &mut out);
    txn.abort().expect("abort");
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(crate::raft::FsmError::TooNew(_))), "{:?}", out[1]);
}

/// A finding the state machine refuses, between findings about the same object in one entry, leaves the
/// object as the findings before it wrote it: each finding moves the record out of the entry's writes
/// (`Decider::take`, no copy) and a refused one hands it back. The record and the counters come out as
/// when the refused finding is not sent at all.
#[test]
fn a_refused_finding_between_findings_about_one_object_keeps_what_the_earlier_ones_wrote() {
    let register = Command::Register {
        agent: "agent-1".into(),
        host: "h1".into(),
        objects: vec![Registration {
            id: "disk/h1/sda".parse().expect("id"),
            attributes: [("serial".to_string(), "S-1".to_string())].into_iter().collect(),
            labels: [("rack".to_string(), "r1".to_string())].into_iter().collect(),
        }],
    };
    let mut refused = finding("disk/h1/sda", Severity::Warning, 3);
    refused.checker = String::new();
    let mut kernel = finding("disk/h1/sda", Severity::Fatal, 4);
    kernel.checker = "kernel-log".into();
    let good = finding("disk/h1/sda", Severity::Good, 2);
    let run = |findings: Vec<Finding>| {
        let mut h = Harness::new();
        h.apply(1000, vec![register.clone()]);
        // Twice: first the object comes from the store, then (same entry) from the entry's own writes.
        let mut all = findings.clone();
        all.extend(findings.into_iter().map(|mut f| {
            f.time_ms += 10;
            f
        }));
        let r = h.apply(1000, vec![ingest("", 0, all)]);
        let rec = h.reader().object("disk/h1/sda").expect("read").expect("exists");
        let counts = counts::stored(&h);
        (r, rec, counts, h.events(1).len())
    };
    let (with, rec, counts, events) = run(vec![good.clone(), refused, kernel.clone()]);
    let (without, want_rec, want_counts, want_events) = run(vec![good, kernel]);
    // The two empty-checker findings are refused (named in the result); the other four apply.
    let refusal = with.results[0].error.as_ref().map(|(_, m)| m.as_str()).unwrap_or_default();
    assert!(refusal.contains("checker"), "{with:?}");
    assert_eq!((with.results[0].applied, without.results[0].applied), (4, 4), "{with:?}");
    assert_eq!(rec.findings_seen, 4);
    assert!(
        rec.evidence.get("smart").expect("decodes").is_some()
            && rec.evidence.get("kernel-log").expect("decodes").is_some()
    );
    assert_eq!(rec, want_rec, "with the refused finding: {with:?}; without: {without:?}");
    assert_eq!(counts, want_counts);
    assert_eq!(events, want_events);
}
