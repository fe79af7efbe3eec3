//! Command versions across members of different binaries (a rolling upgrade), the cluster-wide
//! `min_command_version`, bounded agent batch sequences and finding times (issue 13 item 6), and the change
//! log travelling in snapshots (issue 13 item 4).

use super::*;

fn set_min(version: u32) -> Command {
    Command::SetMinCommandVersion { version, by: "alice".into(), reason: "all masters upgraded".into() }
}

/// Two members fed the same committed entries: one binary knows command version 1 only, the other 2.
#[test]
fn mixed_versions_the_old_member_stops_at_a_newer_entry_and_never_diverges() {
    let (fsm, rx) = MasterFsm::new(Policy::default());
    let mut old = Harness::with((fsm.knowing_command_version(1), rx));
    let mut new = Harness::new();
    // Ordinary entries from the newer leader are stamped version 1: both apply them identically.
    let v1 = vec![
        Envelope::new(1, vec![ingest("agent-1", 1, vec![finding("disk/h1/sda", Severity::Fatal, 1)])]),
        Envelope::new(
            2,
            vec![Command::AgentLiveness { agent: "agent-1".into(), host: "h1".into(), alive: true }],
        ),
    ];
    for e in &v1 {
        assert_eq!(e.v, 1, "entries carry the version their commands need, not the binary's");
        assert_eq!(old.apply_raw(&e.encode()), new.apply_raw(&e.encode()));
    }
    assert_eq!(old.snapshot(), new.snapshot());
    // An operator raises min_command_version: the entry needs version 2.
    let raise = Envelope::new(3, vec![set_min(2)]).encode();
    let before = old.snapshot();
    let (old_index, old_rev) = (old.index, *old.rx.borrow());
    let err = old.try_apply_raw(&raise).expect_err("a version-1 binary cannot apply a version-2 entry");
    assert_eq!(
        err.to_string(),
        format!(
            "entry {} needs command version 2, this binary knows up to 1: upgrade this node",
            old_index + 1
        )
    );
    assert!(matches!(err, StoreError::TooNew { needs: 2, knows: 1, .. }), "{err:?}");
    assert_eq!(old.index, old_index, "the applied index does not move past the entry");
    assert_eq!(old.snapshot(), before, "nothing of the entry was applied");
    assert_eq!(*old.rx.borrow(), old_rev);
    assert_eq!(old.fsm.stats().incompatible.load(Ordering::Relaxed), 1);
    assert_eq!(old.fsm.stats().undecodable.load(Ordering::Relaxed), 0, "not skipped as garbage");
    // Retrying (a restart of the same binary) stops again: never skipped.
    assert!(old.try_apply_raw(&raise).is_err());
    assert_eq!(old.snapshot(), before);
    let r = new.apply_raw(&raise);
    assert_eq!((r.results[0].applied, &r.results[0].error), (1, &None));
    assert_eq!(new.reader().min_command_version().expect("min"), 2);
    assert_eq!(new.fsm.stats().min_command_version(), 2);
    // The stopped member is upgraded (a new binary over the same data) and resumes at the same entry.
    let upgraded = MasterFsm::new(Policy::default());
    old.fsm = upgraded.0;
    old.rx = upgraded.1;
    old.apply_raw(&raise);
    assert_eq!(old.index, new.index);
    assert_eq!(old.snapshot(), new.snapshot(), "no divergence");
}

#[test]
fn min_command_version_gates_proposals_and_apply() {
    // Before it is raised, version-2 kinds may not be proposed; the switch itself may (up to what we know).
    let future_kind = set_min(2);
    assert_eq!(check_proposable(&future_kind, 1), Ok(()));
    assert_eq!(check_proposable(&ingest("a", 1, vec![]), 1), Ok(()));
    let too_high = set_min(COMMAND_VERSION + 1);
    let e = check_proposable(&too_high, 1).expect_err("unknown version");
    assert_eq!(e, VersionError::Unknown { asked: COMMAND_VERSION + 1, knows: COMMAND_VERSION });
    assert!(
        e.to_string().contains(&format!("this leader knows command versions 1..={COMMAND_VERSION}")),
        "{e}"
    );
    assert!(check_proposable(&set_min(0), 1).is_err());
    // At apply the stored value decides, alike on every node: 0 is refused, anything else stored.
    let mut h = Harness::new();
    assert_eq!(h.reader().min_command_version().expect("min"), DEFAULT_MIN_COMMAND_VERSION);
    let r = h.apply(1, vec![set_min(0)]);
    assert_eq!(r.results[0].error.as_ref().map(|e| e.0), Some(proto::error::Code::InvalidArgument));
    assert_eq!(h.reader().revision().expect("rev"), 0, "refused: nothing changed");
    let r = h.apply(2, vec![set_min(2)]);
    assert_eq!(r.results[0].applied, 1);
    let audit = h.reader().audit(false, 1).expect("audit");
    assert!(audit[0].message.contains("min_command_version 1 -> 2 by alice"), "{audit:?}");
    // Lowering (a downgrade) is allowed, and an entry sees the value its earlier commands set.
    let both = Envelope::new(3, vec![set_min(2), set_min(1), Command::Tick { objects: vec![] }]);
    let r = h.apply_raw(&both.encode());
    assert_eq!(r.results.len(), 3);
    assert!(r.results.iter().all(|r| r.error.is_none()), "{r:?}");
    assert_eq!(h.fsm.stats().min_command_version(), 1);
    assert_eq!(h.reader().min_command_version().expect("min"), 1);
}

#[test]
fn a_gated_command_kind_is_refused_at_apply_until_enabled() {
    // No version-2 command other than the switch exists yet: play the gate with a min of 0, which no
    // operator can set (refused), by writing it as an older state would hold it.
    let mut h = Harness::new();
    {
        let txn = h.db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(META_MIN_COMMAND_VERSION, crate::store::seal_u64(META_MIN_COMMAND_VERSION, 0).as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    // A stored 0 reads as the default for the API; the fsm compares the raw value, so version 1 > 0 refuses.
    let r = h.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    let (code, msg) = r.results[0].error.clone().expect("refused");
    assert_eq!(code, proto::error::Code::Conflict);
    assert!(
        msg.contains("ingest needs command version 1, but the cluster's min_command_version is 0"),
        "{msg}"
    );
    assert!(h.reader().object("disk/h1/sda").expect("read").is_none());
    h.apply(2, vec![set_min(1)]);
    let r = h.apply(3, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    assert_eq!(r.results[0].applied, 1);
}

#[test]
fn agent_sequences_move_forward_by_a_bounded_step() {
    let mut h = Harness::new();
    let batch = |seq: u64, t: u64| ingest("agent-1", seq, vec![finding("disk/h1/sda", Severity::Good, t)]);
    // The first batch of a new agent: at most MAX_SEQ_STEP past 0.
    let r = h.apply(1, vec![batch(MAX_SEQ_STEP + 1, 1)]);
    let (code, msg) = r.results[0].error.clone().expect("refused");
    assert_eq!(code, proto::error::Code::InvalidArgument);
    assert!(msg.contains("jumps more than 100000000 past the last applied 0"), "{msg}");
    assert!(h.reader().agents().expect("agents").is_empty(), "a refused batch changes nothing");
    assert_eq!(h.apply(2, vec![batch(MAX_SEQ_STEP, 2)]).results[0].applied, 1, "exactly the limit applies");
    // The reported attack: 2^64-1 is refused, and the agent's normal next batch still applies.
    let before = h.snapshot();
    let r = h.apply(3, vec![batch(u64::MAX, 3)]);
    assert!(!r.results[0].duplicate);
    assert!(r.results[0].error.is_some());
    assert_eq!(h.snapshot(), before);
    let next = h.apply(4, vec![batch(MAX_SEQ_STEP + 1, 4)]);
    assert_eq!((next.results[0].applied, next.results[0].duplicate), (1, false));
    assert_eq!(h.apply(5, vec![batch(2 * MAX_SEQ_STEP + 1, 5)]).results[0].applied, 1, "limit from the last");
    assert!(h.apply(6, vec![batch(3 * MAX_SEQ_STEP + 2, 6)]).results[0].error.is_some(), "one past it");
    assert!(h.apply(7, vec![batch(5, 7)]).results[0].duplicate, "older sequences stay duplicates");
}

#[test]
fn findings_from_too_far_in_the_future_are_refused() {
    let mut h = Harness::new();
    let now = 1_000_000;
    let at = |t: u64| finding("disk/h1/sda", Severity::Good, t);
    let r = h.apply(now, vec![ingest("", 0, vec![at(now + MAX_FINDING_FUTURE_MS + 1)])]);
    let (code, msg) = r.results[0].error.clone().expect("refused");
    assert_eq!((code, r.results[0].applied), (proto::error::Code::InvalidArgument, 0));
    assert!(msg.contains("more than 10m ahead of the master's clock"), "{msg}");
    assert!(h.reader().object("disk/h1/sda").expect("read").is_none());
    // At the limit it applies; a refused finding does not stop the rest of its batch.
    let r = h.apply(
        now,
        vec![ingest("", 0, vec![at(now + MAX_FINDING_FUTURE_MS + 1), at(now + MAX_FINDING_FUTURE_MS)])],
    );
    assert_eq!(r.results[0].applied, 1);
    assert!(r.results[0].error.is_some());
    assert_eq!(h.fsm.stats().rejected.load(Ordering::Relaxed), 2);
}

#[test]
fn the_change_log_travels_in_the_snapshot_within_retention() {
    let retain = 10;
    let mk = || {
        let (fsm, rx) = MasterFsm::new(Policy::default());
        Harness::with((fsm.with_changelog_retain(retain), rx))
    };
    let mut a = mk();
    for i in 0..25u64 {
        a.apply(i, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, i)])]);
    }
    let snap = a.snapshot();
    let mut b = mk();
    {
        let txn = b.db.begin_write().expect("txn");
        b.fsm.restore_data(&txn, &snap).expect("restore");
        txn.commit().expect("commit");
        b.fsm.committed();
    }
    // Same window on both: everything within retention, COMPACTED for the same older revisions.
    assert_eq!(b.events(16), a.events(16));
    assert_eq!(b.events(16).len(), 10);
    for h in [&a, &b] {
        assert!(matches!(
            h.reader().changes(1, &Filter::default(), 10),
            Ok(ChangesRead::Compacted { first_available: 16 })
        ));
    }
    // And both go on identically.
    for h in [&mut a, &mut b] {
        h.apply(99, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Warning, 99)])]);
    }
    assert_eq!(a.snapshot(), b.snapshot());
}

#[test]
fn a_version_1_snapshot_without_change_log_still_restores() {
    let mut a = Harness::new();
    a.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Good, 1)])]);
    let v3 = a.snapshot();
    let v4 = crate::fsm::snapshot::as_v4_for_test(&v3);
    let body = v4.strip_prefix(b"huatuo-fsm-snapshot-v4\n".as_slice()).expect("v4 magic");
    // Rebuild it as an older binary wrote it: v1 magic, no change-log rows (tag 12).
    let mut v1 = b"huatuo-fsm-snapshot-v1\n".to_vec();
    let mut rest = body;
    while !rest.is_empty() {
        let klen = u32::from_be_bytes(rest[1..5].try_into().expect("len")) as usize;
        let vlen = u32::from_be_bytes(rest[5 + klen..9 + klen].try_into().expect("len")) as usize;
        let (rec, tail) = rest.split_at(9 + klen + vlen);
        if rec[0] != 12 {
            v1.extend_from_slice(rec);
        }
        rest = tail;
    }
    let mut b = Harness::new();
    let txn = b.db.begin_write().expect("txn");
    b.fsm.restore_data(&txn, &v1).expect("restore v1");
    txn.commit().expect("commit");
    assert!(matches!(
        b.reader().changes(1, &Filter::default(), 10),
        Ok(ChangesRead::Compacted { first_available: 2 })
    ));
    assert_eq!(
        b.reader().object("disk/h1/sda").expect("read"),
        a.reader().object("disk/h1/sda").expect("read")
    );
    // Tag 12 is not part of the v1 format.
    let mut bad = v1.clone();
    bad.extend_from_slice(&[12, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
    let txn = b.db.begin_write().expect("txn");
    assert!(b.fsm.restore_data(&txn, &bad).is_err());
}

#[test]
fn the_proposal_gate_follows_the_stored_version_after_a_restart() {
    let mut h = Harness::new();
    h.apply(1, vec![set_min(2)]);
    // A restarted node: fresh counters, the same store.
    let (fsm, _) = MasterFsm::new(Policy::default());
    let stats = fsm.stats();
    assert_eq!(stats.min_command_version(), DEFAULT_MIN_COMMAND_VERSION, "before reading the store");
    stats.load_replicated(&h.db).expect("load");
    assert_eq!(stats.min_command_version(), 2);
    // And every applied entry refreshes it, whatever the entry did.
    drop((fsm, stats));
    let (fsm, _) = MasterFsm::new(Policy::default());
    let stats = fsm.stats();
    h.fsm = fsm;
    h.apply(2, vec![Command::Tick { objects: vec![] }]);
    assert_eq!(stats.min_command_version(), 2);
}

#[test]
fn findings_from_too_far_in_the_past_are_refused_once_version_2_is_enabled() {
    let mut h = Harness::new();
    let now = MAX_FINDING_AGE_MS + 5_000_000;
    let at = |t: u64| finding("disk/h1/sda", Severity::Good, t);
    let old = at(now - MAX_FINDING_AGE_MS - 1);
    // Version-1 rules (mixed-version clusters): any past time is accepted, as older binaries do.
    assert_eq!(h.apply(now, vec![ingest("", 0, vec![old.clone()])]).results[0].applied, 1);
    h.apply(now, vec![set_min(2)]);
    let r = h.apply(now, vec![ingest("", 0, vec![old, at(now - MAX_FINDING_AGE_MS)])]);
    assert_eq!(r.results[0].applied, 1, "exactly the limit applies");
    let (code, msg) = r.results[0].error.clone().expect("one past the limit is refused");
    assert_eq!(code, proto::error::Code::InvalidArgument);
    assert!(msg.contains("more than 720h behind the master's clock"), "{msg}");
}

fn epoch_batch(agent: &str, seq: u64, epoch: u64, t: u64) -> Command {
    Command::Ingest {
        agent: agent.into(),
        seq,
        findings: vec![finding("disk/h1/sda", Severity::Good, t)],
        epoch,
    }
}

fn agent_record(h: &Harness, agent: &str) -> AgentRecord {
    h.reader().agents().expect("agents").into_iter().find(|(a, _)| a == agent).expect("agent").1
}

/// Issue 13 follow-up: an agent whose data dir was wiped starts again at sequence 1 under a new epoch;
/// its batches apply instead of being answered `duplicate` until it passes the old sequence.
#[test]
fn a_new_agent_epoch_starts_its_sequences_again_and_a_retired_one_is_refused() {
    let mut h = Harness::new();
    let (a, b) = (0xA, 0xB);
    // An ingest with an epoch is a version-3 command: refused alike on apply until the cluster enabled it
    // (the API layer sends agent batches without their epoch until then).
    assert_eq!(epoch_batch("agent-1", 1, a, 1).version(), AGENT_EPOCH_VERSION);
    assert_eq!(ingest("agent-1", 1, vec![]).version(), 1, "no epoch: the version-1 command");
    let r = h.apply(1, vec![epoch_batch("agent-1", 1, a, 1)]);
    let (code, msg) = r.results[0].error.clone().expect("refused");
    assert_eq!(code, proto::error::Code::Conflict);
    assert!(msg.contains("ingest needs command version 3"), "{msg}");
    h.apply(2, vec![set_min(AGENT_EPOCH_VERSION)]);

    assert_eq!(h.apply(3, vec![epoch_batch("agent-1", 5, a, 3)]).results[0].applied, 1);
    assert!(h.apply(4, vec![epoch_batch("agent-1", 5, a, 4)]).results[0].duplicate, "a resend");
    // Wiped: a new epoch from sequence 1. Before epochs this batch was a duplicate and lost.
    let r = h.apply(5, vec![epoch_batch("agent-1", 1, b, 5)]);
    assert_eq!((r.results[0].applied, r.results[0].duplicate), (1, false));
    let rec = agent_record(&h, "agent-1");
    assert_eq!((rec.epoch, rec.last_seq, rec.retired_epochs.clone()), (b, 1, vec![a]));
    assert!(h.apply(6, vec![epoch_batch("agent-1", 1, b, 6)]).results[0].duplicate, "resends still dedupe");
    // A batch of the retired epoch is refused clearly and changes nothing.
    let before = h.snapshot();
    let r = h.apply(7, vec![epoch_batch("agent-1", 6, a, 7)]);
    let (code, msg) = r.results[0].error.clone().expect("refused");
    assert_eq!((code, r.results[0].applied), (proto::error::Code::Conflict, 0));
    assert!(msg.contains("of epoch 0xa, which the newer epoch 0xb replaced"), "{msg}");
    assert_eq!(h.snapshot(), before);
    // An agent that sends no epoch keeps today's rule against the current sequence.
    assert!(
        h.apply(8, vec![ingest("agent-1", 1, vec![finding("disk/h1/sda", Severity::Good, 8)])]).results[0]
            .duplicate
    );
    assert_eq!(h.apply(9, vec![epoch_batch("agent-1", 2, 0, 9)]).results[0].applied, 1);
    // The sequence bound holds within a new epoch too (counted from 0), and a refused first batch of a
    // new epoch changes nothing.
    let before = h.snapshot();
    assert!(h.apply(10, vec![epoch_batch("agent-1", MAX_SEQ_STEP + 1, 0xC, 10)]).results[0].error.is_some());
    assert_eq!(h.snapshot(), before);
    // Retired epochs are bounded: after MAX_RETIRED_EPOCHS more wipes the oldest is forgotten (and would
    // count as a new epoch again).
    for i in 0..MAX_RETIRED_EPOCHS as u64 {
        assert_eq!(h.apply(11 + i, vec![epoch_batch("agent-1", 1, 0x100 + i, 11 + i)]).results[0].applied, 1);
    }
    let rec = agent_record(&h, "agent-1");
    assert_eq!(rec.retired_epochs.len(), MAX_RETIRED_EPOCHS);
    assert_eq!(rec.retired_epochs[0], 0x100 + MAX_RETIRED_EPOCHS as u64 - 2, "most recent first");
    assert!(!rec.retired_epochs.contains(&a));
    assert_eq!(h.apply(30, vec![epoch_batch("agent-1", 1, a, 30)]).results[0].applied, 1);
    // An agent upgraded in place (no epoch before, same outbox) adopts its epoch and keeps its sequence.
    assert_eq!(
        h.apply(31, vec![ingest("agent-2", 7, vec![finding("disk/h2/sda", Severity::Good, 31)])]).results[0]
            .applied,
        1
    );
    assert!(h.apply(32, vec![epoch_batch("agent-2", 7, 0xD, 32)]).results[0].duplicate);
    assert_eq!(h.apply(33, vec![epoch_batch("agent-2", 8, 0xD, 33)]).results[0].applied, 1);
    let rec = agent_record(&h, "agent-2");
    assert_eq!((rec.epoch, rec.last_seq, rec.retired_epochs.is_empty()), (0xD, 8, true));
}

/// The link the network-ticket tests use.
const LINK: &str = "link/agg-1--tor-1";

/// A member knowing command versions below `v` and one knowing them all, to apply the same entries.
fn old_and_new(v: u32) -> (Harness, Harness) {
    let (fsm, rx) = MasterFsm::new(Policy::default());
    (Harness::with((fsm.knowing_command_version(v - 1), rx)), Harness::new())
}

/// The localisation's finding about [`LINK`] at `sev`, as an operator-path ingest.
fn link_finding(sev: Severity, t: u64) -> Command {
    let f = Finding { checker: "netvote".into(), rule: "link-suspect".into(), ..finding(LINK, sev, t) };
    ingest("", 0, vec![f])
}

/// Network devices in the repair flow are command version 7 (`NET_TICKET_COMMAND_VERSION`): below it a link
/// entering ERROR files nothing, exactly as a binary of version 6 decides (so members of both binaries apply
/// the same entries alike); a ticket update about a link is a version-7 command, refused by the proposal gate
/// and at apply, and an entry carrying one stops a version-6 member instead of being misapplied. Once the
/// version is raised, the next entry into ERROR files.
#[test]
fn network_device_tickets_wait_for_command_version_7() {
    let v = crate::model::NET_TICKET_COMMAND_VERSION;
    let (mut old, mut new) = old_and_new(v);
    let link = LINK;
    let net = link_finding;
    let no_quotas = crate::safety::SafetyConfig { quotas: Vec::new(), ..Default::default() };
    let entries = [
        Envelope::new(1, vec![set_min(v - 1)]),
        Envelope::new(2, vec![Command::SetSafety { config: no_quotas, by: "t".into(), reason: "t".into() }]),
        Envelope::new(10, vec![net(Severity::Error, 10)]),
    ];
    for e in &entries {
        assert!(e.v < v, "stamped {}: every member applies it", e.v);
        assert_eq!(old.apply_raw(&e.encode()), new.apply_raw(&e.encode()));
    }
    assert_eq!(old.snapshot(), new.snapshot(), "the same rules below version 7: no divergence");
    let rec = new.reader().object(link).expect("read").expect("exists");
    assert_eq!(rec.sm.state, State::Error);
    assert!(rec.sm.attrs.is_empty(), "no filing below version 7: {:?}", rec.sm.attrs);
    assert_eq!(new.reader().repair_queue_len().expect("len"), 0);
    let alerted = new.reader().audit(false, 10).expect("audit");
    assert!(alerted.iter().any(|a| a.kind == "alert" && a.object == link), "it still alerts: {alerted:?}");
    // A ticket update about a network device is a version-7 command: not proposable below it ...
    let ticket = Command::Object {
        object: link.parse().expect("id"),
        input: Input::Ticket { ticket: "NET-1".into(), update: state_machines::TicketUpdate::Filed },
    };
    assert_eq!(ticket.version(), v);
    let disk_ticket = Command::Object {
        object: "disk/h1/sda".parse().expect("id"),
        input: Input::Ticket { ticket: "T".into(), update: state_machines::TicketUpdate::Filed },
    };
    assert_eq!(disk_ticket.version(), 1, "a disk's ticket updates are unchanged");
    let e = check_proposable(&ticket, v - 1).expect_err("gated");
    assert!(e.to_string().contains("object needs command version 7"), "{e}");
    // ... refused at apply should one slip through (a gate that raced a lowering) ...
    let before = new.snapshot();
    let r = new.apply(20, vec![ticket.clone()]);
    let (code, msg) = r.results[0].error.clone().expect("refused");
    assert_eq!(code, proto::error::Code::Conflict);
    assert!(msg.contains("needs command version 7"), "{msg}");
    assert_eq!(new.snapshot(), before, "refused: nothing changed");
    // ... and an entry carrying one stops a member that knows only version 6, which never misapplies it.
    let entry = Envelope::new(21, vec![ticket.clone()]).encode();
    let err = old.try_apply_raw(&entry).expect_err("too new");
    assert!(matches!(err, StoreError::TooNew { needs: 7, knows: 6, .. }), "{err:?}");
    // Raised (every member knows 7): the next entry into ERROR files, and the ticket is recorded.
    new.apply(30, vec![set_min(v)]);
    new.apply(40, vec![net(Severity::Good, 40)]);
    new.apply(50, vec![net(Severity::Error, 50)]);
    let queue = new.reader().repair_queue(None, 10).expect("queue");
    assert_eq!(queue, vec![(format!("{link}@50"), link.to_string())]);
    let r = new.apply(60, vec![ticket]);
    assert_eq!((r.results[0].applied, r.results[0].transitioned), (1, false), "{r:?}");
    assert_eq!(new.reader().repair_queue_len().expect("len"), 0);
    let rec = new.reader().object(link).expect("read").expect("exists");
    assert_eq!((rec.sm.state, rec.sm.attrs.get("ticket").map(String::as_str)), (State::Error, Some("NET-1")));
}

/// A network incident lasts while its ticket is open from command version 10
/// (`NET_INCIDENT_COMMAND_VERSION`). Below it a link that flaps through GOOD files a ticket per flap, exactly
/// as a binary of version 9 decides (members of both binaries apply the same entries alike); from it, the
/// flap back to ERROR files nothing while the recorded ticket is open, and closing the ticket while the link
/// is GOOD ends the incident, so the next ERROR files again.
#[test]
fn a_flapping_network_device_files_one_ticket_from_command_version_10() {
    let v = crate::model::NET_INCIDENT_COMMAND_VERSION;
    let (mut old, mut new) = old_and_new(v);
    let link = LINK;
    let net = link_finding;
    let ticket = |update| Command::Object {
        object: link.parse().expect("id"),
        input: Input::Ticket { ticket: "NET-1".into(), update },
    };
    let queue = |h: &Harness| h.reader().repair_queue(None, 10).expect("queue");
    let no_quotas = crate::safety::SafetyConfig { quotas: Vec::new(), ..Default::default() };
    // Below version 10: ERROR files, the ticket is recorded, GOOD ends the incident, ERROR files again.
    let entries = [
        Envelope::new(1, vec![set_min(v - 1)]),
        Envelope::new(2, vec![Command::SetSafety { config: no_quotas, by: "t".into(), reason: "t".into() }]),
        Envelope::new(10, vec![net(Severity::Error, 10)]),
        Envelope::new(20, vec![ticket(state_machines::TicketUpdate::Filed)]),
        Envelope::new(30, vec![net(Severity::Good, 30)]),
        Envelope::new(40, vec![net(Severity::Error, 40)]),
    ];
    for e in &entries {
        assert!(e.v < v, "stamped {}: every member applies it", e.v);
        assert_eq!(old.apply_raw(&e.encode()), new.apply_raw(&e.encode()));
    }
    assert_eq!(old.snapshot(), new.snapshot(), "the same rules below version 10: no divergence");
    assert_eq!(queue(&new), vec![(format!("{link}@40"), link.to_string())], "a second ticket for the flap");
    // From version 10: the second incident's ticket is recorded; GOOD keeps the incident open ...
    new.apply(50, vec![set_min(v)]);
    new.apply(60, vec![ticket(state_machines::TicketUpdate::Filed)]);
    new.apply(70, vec![net(Severity::Good, 70)]);
    let rec = new.reader().object(link).expect("read").expect("exists");
    assert_eq!(rec.sm.state, State::Good);
    assert_eq!(rec.sm.attrs.get("ticket-key").map(String::as_str), Some(&*format!("{link}@40")));
    // ... so the flap back to ERROR files nothing, and its alert names the open ticket ...
    new.apply(80, vec![net(Severity::Error, 80)]);
    assert!(queue(&new).is_empty(), "no filing while NET-1 is open: {:?}", queue(&new));
    let alerts = new.reader().audit(false, 20).expect("audit");
    assert!(
        alerts.iter().any(|a| a.kind == "alert" && a.message.contains("ticket NET-1 is still open")),
        "{alerts:?}"
    );
    // ... until the ticket is closed while the link is GOOD: the incident is over, the next ERROR files.
    new.apply(90, vec![net(Severity::Good, 90)]);
    let r = new.apply(100, vec![ticket(state_machines::TicketUpdate::Closed)]);
    assert_eq!(r.results[0].applied, 1, "{r:?}");
    let rec = new.reader().object(link).expect("read").expect("exists");
    assert!(!rec.sm.attrs.contains_key("ticket-key"), "{:?}", rec.sm.attrs);
    new.apply(110, vec![net(Severity::Error, 110)]);
    assert_eq!(queue(&new), vec![(format!("{link}@110"), link.to_string())]);
}
