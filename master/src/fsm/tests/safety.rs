//! The safety net applied through the state machine: quotas latch the breached scope into manual drive and
//! hold the rest as proposals; levels; decisions; liveness and checker-version spikes; counters that stay
//! exact; everything in the snapshot.

use super::*;
use crate::safety::{Level, Limit, ProposalStatus, QuotaRule, SafetyConfig};

const H: u64 = 3_600_000;

fn quotas(rules: Vec<QuotaRule>) -> Command {
    Command::SetSafety {
        config: SafetyConfig { quotas: rules, ..SafetyConfig::default() },
        by: "alice".into(),
        reason: "test quotas".into(),
    }
}

fn rule(kind: &str, scope: &str, entries: Limit, concurrent: Limit) -> QuotaRule {
    QuotaRule {
        kind: kind.into(),
        scope: scope.into(),
        window_ms: H,
        max_entries: entries,
        max_concurrent: concurrent,
    }
}

/// Register `n` hosts with one disk each, host i in `rack`.
fn register_rack(h: &mut Harness, now: u64, rack: &str, hosts: std::ops::Range<u32>) {
    let mut cmds = Vec::new();
    for i in hosts {
        let host = format!("h{i}");
        let labels: BTreeMap<String, String> = [("rack".to_string(), rack.to_string())].into();
        cmds.push(Command::Register {
            agent: format!("agent-{host}"),
            host: host.clone(),
            objects: vec![
                Registration {
                    id: ObjectId::machine(&host).expect("id"),
                    attributes: BTreeMap::new(),
                    labels: labels.clone(),
                },
                Registration {
                    id: format!("disk/{host}/sda").parse().expect("id"),
                    attributes: [("serial".to_string(), format!("S-{host}"))].into(),
                    labels,
                },
            ],
        });
    }
    h.apply(now, cmds);
}

fn fatal(host: u32, checker: &str, version: &str, t: u64) -> Finding {
    Finding {
        checker: checker.into(),
        version: version.into(),
        ..finding(&format!("disk/h{host}/sda"), Severity::Fatal, t)
    }
}

fn state(h: &Harness, id: &str) -> State {
    h.reader().object(id).expect("read").expect("exists").sm.state
}

fn scope(h: &Harness, name: &str) -> crate::safety::ScopeRecord {
    h.reader()
        .scopes()
        .expect("scopes")
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r)
        .unwrap_or_default()
}

fn pending(h: &Harness) -> Vec<crate::safety::Proposal> {
    h.reader().proposals(Some(ProposalStatus::Pending), &Default::default(), usize::MAX).expect("proposals")
}

#[test]
fn quota_breach_latches_the_scope_and_the_rest_become_proposals() {
    let mut h = Harness::new();
    h.apply(1, vec![quotas(vec![rule("disk", "rack", Limit::Count(2), Limit::Percent(5_000))])]);
    register_rack(&mut h, 2, "r1", 0..10);
    register_rack(&mut h, 2, "r2", 10..20);
    let r1 = scope(&h, "rack=r1");
    assert_eq!((r1.kinds["disk"].population, r1.kinds["machine"].population), (10, 10));
    let findings: Vec<Finding> = (0..6).map(|i| fatal(i, "smart", "2.0", 10)).collect();
    h.apply(10, vec![ingest("x", 1, findings)]);
    let moved: Vec<u32> = (0..6).filter(|i| state(&h, &format!("disk/h{i}/sda")) == State::Error).collect();
    assert_eq!(moved, vec![0, 1], "exactly the quota's worth left service");
    let r1 = scope(&h, "rack=r1");
    assert_eq!((r1.level, r1.latched), (Level::Manual, true));
    assert!(r1.reason.contains("left service within 1h"), "{}", r1.reason);
    assert_eq!((r1.kinds["disk"].removed, r1.pending), (2, 4));
    assert_eq!(pending(&h).len(), 4);
    let alerts = h.reader().audit(true, 10).expect("audit");
    assert!(alerts.iter().any(|a| a.scope == "rack=r1" && a.message.contains("manual drive")), "{alerts:?}");
    // The same findings again: no new proposals, no movement (repeats are counted).
    h.apply(11, vec![ingest("x", 2, (0..6).map(|i| fatal(i, "smart", "2.0", 11)).collect())]);
    assert_eq!(pending(&h).len(), 4);
    assert!(pending(&h).iter().all(|p| p.repeats == 1));
    // Another rack is untouched: its disk failure is handled automatically.
    h.apply(12, vec![ingest("y", 1, vec![fatal(15, "smart", "1.0", 12)])]);
    assert_eq!(state(&h, "disk/h15/sda"), State::Error);
    assert_eq!(scope(&h, "rack=r2").level, Level::Auto);
    // Reject all of r1's by filter: nothing else moves, and the same proposal is suppressed afterwards.
    let r = h.apply(
        13,
        vec![Command::Decide {
            ids: vec![],
            filter: ProposalFilter { scope: Some("rack=r1".into()), ..Default::default() },
            approve: false,
            by: "alice".into(),
            reason: "bad smart release".into(),
        }],
    );
    assert_eq!(r.results[0].decided.len(), 4);
    assert!(pending(&h).is_empty());
    h.apply(14, vec![ingest("x", 3, (0..6).map(|i| fatal(i, "smart", "2.0", 14)).collect())]);
    assert!(pending(&h).is_empty(), "a rejected proposal is not re-proposed");
    assert_eq!((2..6).filter(|i| state(&h, &format!("disk/h{i}/sda")) == State::Error).count(), 0);
    assert_eq!(scope(&h, "rack=r1").pending, 0);
}

#[test]
fn approve_applies_the_held_transition_and_release_returns_to_auto() {
    let mut h = Harness::new();
    h.apply(1, vec![quotas(vec![rule("disk", "rack", Limit::Count(1), Limit::Count(10))])]);
    register_rack(&mut h, 2, "r1", 0..4);
    h.apply(10, vec![ingest("x", 1, (0..3).map(|i| fatal(i, "smart", "1.0", 10)).collect())]);
    let props = pending(&h);
    assert_eq!(props.len(), 2);
    let id = props[0].id;
    let r = h.apply(
        11,
        vec![Command::Decide {
            ids: vec![id, id + 100],
            filter: Default::default(),
            approve: true,
            by: "bob".into(),
            reason: "real failure".into(),
        }],
    );
    assert_eq!(r.results[0].decided, vec![id]);
    assert_eq!(r.results[0].failed.len(), 1, "{:?}", r.results[0].failed);
    assert_eq!(state(&h, &props[0].object.to_string()), State::Error);
    let rec = h.reader().object(&props[0].object.to_string()).expect("r").expect("e");
    let hist = h.reader().history(&rec).expect("h");
    assert!(hist.iter().any(|e| e.what == "held"), "{hist:?}");
    assert!(hist.iter().any(|e| e.detail.contains(&format!("approved proposal #{id}"))), "{hist:?}");
    // Deciding it again is a clear failure.
    let r = h.apply(
        12,
        vec![Command::Decide {
            ids: vec![id],
            filter: Default::default(),
            approve: false,
            by: "bob".into(),
            reason: "x".into(),
        }],
    );
    assert!(r.results[0].failed[0].1.contains("approved"), "{:?}", r.results[0].failed);
    // Release: auto again; the window still holds 2 entries (> 1), so the next one latches again.
    h.apply(13, vec![Command::Release { scope: "rack=r1".into(), by: "bob".into(), reason: "done".into() }]);
    assert_eq!(scope(&h, "rack=r1").level, Level::Auto);
    h.apply(14, vec![ingest("x", 2, vec![fatal(3, "smart", "1.0", 14)])]);
    assert_eq!(state(&h, "disk/h3/sda"), State::Good);
    assert!(scope(&h, "rack=r1").latched);
    // After the window slides, a released scope admits again (and the old pending proposal is applied).
    h.apply(
        20 + H,
        vec![Command::Release { scope: "rack=r1".into(), by: "bob".into(), reason: "quiet".into() }],
    );
    h.apply(21 + H, vec![ingest("x", 3, vec![fatal(3, "smart", "1.0", 21 + H)])]);
    assert_eq!(state(&h, "disk/h3/sda"), State::Error);
    let all = h.reader().proposals(None, &Default::default(), 100).expect("all");
    assert!(
        all.iter().any(|p| p.object.to_string() == "disk/h3/sda" && p.status == ProposalStatus::Applied),
        "{all:?}"
    );
}

#[test]
fn levels_manual_proposes_and_blind_refuses_everything() {
    let mut h = Harness::new();
    register_rack(&mut h, 1, "r1", 0..3);
    let level = |scope: &str, level: Level| Command::SetLevel {
        scope: scope.into(),
        level,
        by: "ops".into(),
        reason: "freeze".into(),
    };
    h.apply(2, vec![level("rack=r1", Level::Manual)]);
    h.apply(3, vec![ingest("x", 1, vec![fatal(0, "smart", "1.0", 3)])]);
    assert_eq!(state(&h, "disk/h0/sda"), State::Good);
    assert_eq!(pending(&h).len(), 1);
    // Moves that take no action still happen in manual drive (WARNING after hysteresis).
    let warn = |t| Finding { severity: Severity::Warning, ..fatal(1, "smart", "1.0", t) };
    h.apply(4, vec![ingest("x", 2, vec![warn(4), warn(5), warn(6)])]);
    assert_eq!(state(&h, "disk/h1/sda"), State::Warning);
    // An operator's own command is allowed in manual drive.
    let r = h.apply(7, vec![force("disk/h2/sda", State::Error)]);
    assert_eq!(r.results[0].error, None);
    assert_eq!(state(&h, "disk/h2/sda"), State::Error);
    // Blind: findings are recorded but nothing moves, operator commands and acks are refused.
    h.apply(8, vec![level("cluster", Level::Blind)]);
    let before = h.reader().revision().expect("rev");
    let r = h.apply(9, vec![force("disk/h1/sda", State::Good)]);
    let (code, msg) = r.results[0].error.clone().expect("refused");
    assert_eq!(code, proto::error::Code::Conflict);
    assert!(msg.contains("blind"), "{msg}");
    assert_eq!(h.reader().revision().expect("rev"), before, "a refused command changes nothing");
    let ack = Command::Object {
        object: "disk/h2/sda".parse().expect("id"),
        input: Input::Ack { role: "storage".into(), ack: AckKind::DataEvacuated },
    };
    assert!(h.apply(10, vec![ack.clone()]).results[0].error.is_some());
    assert_eq!(state(&h, "disk/h2/sda"), State::Error);
    h.apply(11, vec![ingest("x", 3, vec![fatal(1, "smart", "1.0", 11)])]);
    assert_eq!(state(&h, "disk/h1/sda"), State::Warning);
    assert!(scope(&h, "cluster").last_blocked.contains("blind"));
    // Back to manual: the ack becomes a proposal; approving it moves the disk on to REPAIR.
    h.apply(12, vec![level("cluster", Level::Auto)]);
    let r = h.apply(13, vec![ack]);
    assert!(r.results[0].held.as_deref().is_some_and(|w| w.contains("manual")), "{:?}", r.results[0]);
    let p = r.results[0].proposal;
    assert!(p > 0);
    let r = h.apply(
        14,
        vec![Command::Decide {
            ids: vec![p],
            filter: Default::default(),
            approve: true,
            by: "ops".into(),
            reason: "evacuated".into(),
        }],
    );
    assert_eq!(r.results[0].decided, vec![p]);
    assert_eq!(state(&h, "disk/h2/sda"), State::Repair);
}

#[test]
fn silent_agents_latch_their_rack() {
    let mut h = Harness::new();
    register_rack(&mut h, 1, "r1", 0..20);
    register_rack(&mut h, 1, "r2", 20..80);
    let live = |i: u32, alive: bool| Command::AgentLiveness {
        agent: format!("agent-h{i}"),
        host: format!("h{i}"),
        alive,
    };
    h.apply(2, (0..80).map(|i| live(i, true)).collect());
    assert_eq!((scope(&h, "rack=r1").agents, scope(&h, "rack=r1").agents_alive), (20, 20));
    // Two silent hosts in r2 is ordinary; four of twenty in r1 at once is a rack event.
    h.apply(3, vec![live(20, false), live(21, false)]);
    assert_eq!(scope(&h, "rack=r2").level, Level::Auto);
    h.apply(4, (0..4).map(|i| live(i, false)).collect());
    let r1 = scope(&h, "rack=r1");
    assert_eq!((r1.level, r1.latched, r1.agents_alive), (Level::Manual, true, 16));
    assert!(r1.reason.contains("went silent"), "{}", r1.reason);
    assert_eq!(scope(&h, "cluster").level, Level::Auto, "6 of 80 is below the cluster's share");
    // Findings about r1's machines are proposals; r2 still works automatically.
    let m = |host: u32| Finding {
        checker: "machine".into(),
        ..finding(&format!("machine/h{host}"), Severity::Error, 5)
    };
    h.apply(5, vec![ingest("x", 1, vec![m(0), m(1), m(25)])]);
    assert_eq!(state(&h, "machine/h0"), State::Good);
    assert_eq!(state(&h, "machine/h25"), State::Error);
    assert_eq!(pending(&h).len(), 2);
}

#[test]
fn a_checker_version_spike_latches_only_that_version() {
    let mut h = Harness::new();
    let cfg = SafetyConfig {
        quotas: vec![rule("disk", "cluster", Limit::Percent(10_000), Limit::Percent(10_000))],
        spike: crate::safety::SpikeRule { window_ms: 600_000, min: 3, share: Limit::Count(1) },
        ..SafetyConfig::default()
    };
    h.apply(1, vec![Command::SetSafety { config: cfg, by: "a".into(), reason: "t".into() }]);
    register_rack(&mut h, 2, "r1", 0..10);
    h.apply(3, vec![ingest("x", 1, (0..6).map(|i| fatal(i, "smart", "2.0-bad", 3)).collect())]);
    let errors = (0..6).filter(|i| state(&h, &format!("disk/h{i}/sda")) == State::Error).count();
    assert_eq!(errors, 2, "the version's third would-be removal trips the spike");
    let vs = scope(&h, "checker=smart@2.0-bad");
    assert!(vs.latched && vs.reason.contains("spike"), "{vs:?}");
    assert_eq!(scope(&h, "cluster").level, Level::Auto);
    h.apply(4, vec![ingest("y", 1, vec![fatal(8, "smart", "1.0", 4)])]);
    assert_eq!(state(&h, "disk/h8/sda"), State::Error, "another version is still automatic");
}

#[test]
fn counters_stay_exact_and_survive_rebuild_and_snapshot() {
    let mut h = Harness::new();
    register_rack(&mut h, 1, "r1", 0..5);
    h.apply(2, vec![ingest("x", 1, vec![fatal(0, "smart", "1.0", 2)])]);
    // Move h1 to rack r2 by re-registering with other labels.
    register_rack(&mut h, 3, "r2", 1..2);
    let (r1, r2) = (scope(&h, "rack=r1"), scope(&h, "rack=r2"));
    assert_eq!(
        (r1.kinds["disk"].population, r1.kinds["disk"].removed, r2.kinds["disk"].population),
        (4, 1, 1)
    );
    let before = h.reader().scopes().expect("s");
    h.apply(
        4,
        vec![Command::SetSafety { config: SafetyConfig::default(), by: "a".into(), reason: "same".into() }],
    );
    let after = h.reader().scopes().expect("s");
    let counts = |v: &Vec<(String, crate::safety::ScopeRecord)>| {
        v.iter().map(|(n, r)| (n.clone(), r.kinds.clone(), r.agents)).collect::<Vec<_>>()
    };
    assert_eq!(counts(&before), counts(&after), "a rebuild recounts the same");
    h.apply(
        5,
        vec![Command::SetLevel {
            scope: "rack=r2".into(),
            level: Level::Manual,
            by: "a".into(),
            reason: "x".into(),
        }],
    );
    h.apply(6, vec![ingest("x", 2, vec![fatal(1, "smart", "1.0", 6)])]);
    let snap = h.snapshot();
    let mut b = Harness::new();
    {
        let txn = b.db.begin_write().expect("txn");
        b.fsm.restore_data(&txn, &snap).expect("restore");
        txn.commit().expect("commit");
    }
    assert_eq!(b.reader().scopes().expect("s"), h.reader().scopes().expect("s"));
    assert_eq!(pending(&b), pending(&h));
    assert_eq!(b.reader().audit(false, 100).expect("a"), h.reader().audit(false, 100).expect("a"));
    assert_eq!(b.reader().safety_config().expect("c"), h.reader().safety_config().expect("c"));
}

#[test]
fn bad_safety_commands_are_refused_and_change_nothing() {
    let mut h = Harness::new();
    let before = h.reader().revision().expect("rev");
    let bad_cfg = SafetyConfig {
        quotas: vec![rule("checker", "cluster", Limit::Count(1), Limit::Count(1))],
        ..SafetyConfig::default()
    };
    for cmd in [
        Command::SetSafety { config: bad_cfg, by: "a".into(), reason: "x".into() },
        Command::SetLevel { scope: "rack".into(), level: Level::Manual, by: "a".into(), reason: "x".into() },
    ] {
        let r = h.apply(1, vec![cmd]);
        assert!(r.results[0].error.is_some(), "{:?}", r.results[0]);
    }
    assert_eq!(h.reader().revision().expect("rev"), before);
    assert_eq!(h.reader().safety_config().expect("c"), SafetyConfig::default());
}

#[test]
fn a_reboot_counts_against_the_quota_window() {
    let mut h = Harness::new();
    h.apply(1, vec![quotas(vec![rule("machine", "cluster", Limit::Count(1), Limit::Percent(10_000))])]);
    register_rack(&mut h, 2, "r1", 0..3);
    let ro = |host: u32| Finding {
        checker: "machine".into(),
        rule: "root-fs-readonly".into(),
        ..finding(&format!("machine/h{host}"), Severity::Error, 3)
    };
    h.apply(3, vec![ingest("x", 1, vec![ro(0)])]);
    assert_eq!(state(&h, "machine/h0"), State::Error);
    let drained = Command::Object {
        object: "machine/h0".parse().expect("id"),
        input: Input::Ack { role: "scheduler".into(), ack: AckKind::Drained },
    };
    let r = h.apply(4, vec![drained]);
    assert!(r.results[0].held.as_deref().is_some_and(|w| w.contains("quota")), "{:?}", r.results[0]);
    assert_eq!(state(&h, "machine/h0"), State::Error, "the reboot waits: the window's one entry is used");
    assert!(scope(&h, "cluster").latched);
    let p = pending(&h);
    assert_eq!((p.len(), p[0].to_state), (1, State::Fix));
}

#[test]
fn overdue_actions_and_unfiled_tickets_reach_the_alert_log() {
    let mut h = Harness::new();
    register_rack(&mut h, 1, "r1", 0..1);
    // A disk in REPAIR -> NEWBIE (ticket closed): its provisioning is ordered; nobody answers in time.
    h.apply(2, vec![force("disk/h0/sda", State::Error)]);
    h.apply(3, vec![force("disk/h0/sda", State::Repair)]);
    let closed = Command::Object {
        object: "disk/h0/sda".parse().expect("id"),
        input: Input::Ticket { ticket: "T-1".into(), update: state_machines::TicketUpdate::Closed },
    };
    h.apply(4, vec![closed]);
    assert_eq!(state(&h, "disk/h0/sda"), State::Newbie);
    let late = 5 + Policy::default().action_timeout_ms;
    h.apply(late, vec![Command::Tick { objects: vec!["disk/h0/sda".parse().expect("id")] }]);
    let alerts = h.reader().audit(true, 10).expect("alerts");
    assert!(
        alerts.iter().any(|a| a.object == "disk/h0/sda" && a.message.contains("provision")),
        "{alerts:?}"
    );
    // The ticket integration gave up on another object: the alert is in its history and the log.
    let r = h.apply(
        late + 1,
        vec![Command::Alert {
            object: "machine/h0".parse().expect("id"),
            message: "ticket webhook down".into(),
        }],
    );
    assert_eq!(r.results[0].error, None);
    let rec = h.reader().object("machine/h0").expect("r").expect("e");
    assert!(h.reader().history(&rec).expect("h").iter().any(|e| e.what == "alert"));
    assert!(h.reader().audit(true, 10).expect("a").iter().any(|a| a.message == "ticket webhook down"));
    let r = h.apply(
        late + 2,
        vec![Command::Alert { object: "machine/nope".parse().expect("id"), message: "x".into() }],
    );
    assert_eq!(r.results[0].error.as_ref().map(|e| e.0), Some(proto::error::Code::NotFound));
}

/// A disk finding the failure model graded WARNING (issue 20), by model `model` (`NAME@VERSION`).
fn predicted(host: u32, model: &str, t: u64) -> Finding {
    Finding {
        checker: "disk".into(),
        version: "1.0.0".into(),
        rule: crate::safety::PREDICTED_FAILURE_RULE.into(),
        readings: [(crate::safety::MODEL_VERSION_READING.to_string(), model.to_string())].into(),
        ..finding(&format!("disk/h{host}/sda"), Severity::Warning, t)
    }
}

/// A bad model that flags many disks at once does not move the fleet: its predictions count in the spike
/// detector of the model's own scope `checker=MODEL@VERSION`, which latches (manual drive) and holds the
/// rest as proposals, while the disk checker's other transitions and other models stay automatic. Ingests
/// carrying predictions are command version 6: refused until the cluster enabled it.
#[test]
fn predicted_failures_are_held_by_their_models_spike_detector() {
    let mut h = Harness::new();
    let cfg = SafetyConfig {
        spike: crate::safety::SpikeRule { window_ms: 600_000, min: 3, share: Limit::Count(1) },
        ..SafetyConfig::default()
    };
    h.apply(1, vec![Command::SetSafety { config: cfg, by: "a".into(), reason: "t".into() }]);
    register_rack(&mut h, 2, "r1", 0..10);
    let early =
        h.try_apply_raw(&Envelope::new(3, vec![ingest("x", 1, vec![predicted(0, "m@1", 3)])]).encode());
    assert!(early.is_err() || early.is_ok_and(|r| r.results[0].error.is_some()), "version 6 needed first");
    let v = crate::model::PREDICT_COMMAND_VERSION;
    h.apply(3, vec![Command::SetMinCommandVersion { version: v, by: "ops".into(), reason: "r".into() }]);
    // Three readings each (the hysteresis to enter WARNING), for six disks at once.
    for (seq, t) in [(1, 10), (2, 11), (3, 12)] {
        h.apply(t, vec![ingest("x", seq, (0..6).map(|i| predicted(i, "disk-failure@2", t)).collect())]);
    }
    let warned = (0..6).filter(|i| state(&h, &format!("disk/h{i}/sda")) == State::Warning).count();
    assert_eq!(warned, 2, "the model's third prediction trips its spike detector");
    let ms = scope(&h, "checker=disk-failure@2");
    assert!(ms.latched && ms.level == Level::Manual && ms.reason.contains("predicted to fail"), "{ms:?}");
    let held = pending(&h);
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(held.iter().all(|p| p.to_state == State::Warning), "{held:?}");
    assert_eq!(scope(&h, "checker=disk@1.0.0").level, Level::Auto, "the disk checker is not latched");
    // Latched: the model's next prediction is held at once, without counting.
    for (seq, t) in [(4, 20), (5, 21), (6, 22)] {
        h.apply(t, vec![ingest("x", seq, vec![predicted(7, "disk-failure@2", t)])]);
    }
    assert_eq!(state(&h, "disk/h7/sda"), State::Good);
    assert_eq!(pending(&h).len(), 5);
    // Another model version, and the disk checker's own WARNING, still move automatically.
    for (seq, t) in [(7, 30), (8, 31), (9, 32)] {
        let mut grade = finding("disk/h9/sda", Severity::Warning, t);
        grade.checker = "disk".into();
        h.apply(t, vec![ingest("x", seq, vec![predicted(8, "disk-failure@3", t), grade])]);
    }
    assert_eq!(state(&h, "disk/h8/sda"), State::Warning);
    assert_eq!(state(&h, "disk/h9/sda"), State::Warning);
}

#[test]
fn the_safety_view_counts_a_window_alike_from_lists_and_from_rows() {
    let rows = crate::model::WINDOW_ROWS_VERSION;
    for version in [rows - 1, rows] {
        let mut h = Harness::new();
        let set = Command::SetMinCommandVersion { version, by: "t".into(), reason: "t".into() };
        h.apply(1, vec![set, quotas(vec![rule("disk", "rack", Limit::Count(100), Limit::Percent(10_000))])]);
        register_rack(&mut h, 2, "r1", 0..10);
        h.apply(10, vec![ingest("x", 1, (0..3).map(|i| fatal(i, "smart", "1.0", 10)).collect())]);
        h.apply(20, vec![ingest("x", 2, (3..5).map(|i| fatal(i, "smart", "1.0", 20)).collect())]);
        let used = |now: u64| {
            let (_, views) = crate::api::safety::scope_views(&h.reader(), now).expect("views");
            let r1 = views.into_iter().find(|v| v.scope == "rack=r1").expect("rack=r1");
            r1.quotas.into_iter().find(|q| q.kind == "disk").expect("disk quota").entries
        };
        // The window slides with the reader's clock: from its first millisecond to its last.
        assert_eq!(
            [used(20), used(H + 10), used(H + 11), used(H + 20), used(H + 21)],
            [5, 5, 2, 2, 0],
            "{version}"
        );
        let disk = scope(&h, "rack=r1").kinds["disk"].clone();
        let kept = if version >= rows { (5, 0) } else { (0, 5) };
        assert_eq!((disk.windowed, disk.entries.len() as u64), kept, "{version}: where the window is kept");
    }
}

#[test]
fn the_safety_view_shows_how_close_liveness_and_spike_are_to_latching() {
    let rows = crate::model::WINDOW_ROWS_VERSION;
    for version in [rows - 1, rows] {
        let mut h = Harness::new();
        let cfg = SafetyConfig {
            quotas: vec![rule("disk", "cluster", Limit::Percent(10_000), Limit::Percent(10_000))],
            spike: crate::safety::SpikeRule { window_ms: 600_000, min: 5, share: Limit::Count(1) },
            ..SafetyConfig::default()
        };
        let set = Command::SetMinCommandVersion { version, by: "t".into(), reason: "t".into() };
        h.apply(1, vec![set, Command::SetSafety { config: cfg, by: "a".into(), reason: "t".into() }]);
        register_rack(&mut h, 2, "r1", 0..20);
        let live = |i: u32, alive: bool| Command::AgentLiveness {
            agent: format!("agent-h{i}"),
            host: format!("h{i}"),
            alive,
        };
        h.apply(3, (0..20).map(|i| live(i, true)).collect());
        h.apply(1_000, vec![live(0, false), live(1, false)]);
        h.apply(2_000, vec![ingest("x", 1, (2..5).map(|i| fatal(i, "smart", "2.0", 2_000)).collect())]);
        let view = |now: u64, name: &str| {
            let (_, views) = crate::api::safety::scope_views(&h.reader(), now).expect("views");
            views.into_iter().find(|v| v.scope == name).unwrap_or_else(|| panic!("{name}"))
        };
        let held = |w: Option<crate::api::safety::WindowUse>| w.map(|w| (w.held, w.latch_at, w.window_ms));
        // Two of twenty agents went silent: the default liveness rule latches at 3 (its minimum is larger
        // than 10% of 20), within 5 minutes.
        let rack = view(2_000, "rack=r1");
        assert_eq!(held(rack.liveness), Some((2, 3, 300_000)), "{version}");
        assert_eq!(rack.spike, None, "{version}: only a checker version's scope has a spike window");
        // Three disks this version would take out; it latches at 5 (the rule's minimum beats 1 disk).
        let version_scope = view(2_000, "checker=smart@2.0");
        assert_eq!(held(version_scope.spike), Some((3, 5, 600_000)), "{version}");
        assert_eq!(version_scope.liveness, None, "{version}: no agent is in a checker version's scope");
        // Both windows slide with the reader's clock, to their last millisecond and past it.
        let silent = |now| view(now, "rack=r1").liveness.map(|w| w.held);
        assert_eq!([silent(301_000), silent(301_001)], [Some(2), Some(0)], "{version}");
        let spike = |now| held(view(now, "checker=smart@2.0").spike);
        assert_eq!(spike(602_000), Some((3, 5, 600_000)), "{version}");
        assert_eq!(spike(602_001), Some((0, 0, 600_000)), "{version}: an empty window has no threshold yet");
        let kept = scope(&h, "checker=smart@2.0");
        let where_kept = if version >= rows { (3, 0) } else { (0, 3) };
        assert_eq!((kept.spike_rows, kept.spike.len() as u64), where_kept, "{version}");
    }
}
