//! The checker catalog applied through the state machine (issue 15): pushes (inline and chunked,
//! duplicates, conflicts, limits), rollouts (unknown versions, disjointness, widening, promote, rollback),
//! canary windows and automatic pauses, the latch -> pause link, shadow findings that drive nothing, the
//! version gate, and the catalog with its bytes in snapshots (older snapshots still load).

use base64::Engine;
use proto::error::Code;

use super::*;
use crate::api::catalog::seed_command;
use crate::catalog::*;
use crate::model::{RolloutAction, SeedItem};
use crate::safety::{Level, Limit, SafetyConfig};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A harness whose cluster enabled the catalog's command version.
fn enabled() -> Harness {
    let mut h = Harness::new();
    raise(&mut h, 1, crate::model::CATALOG_COMMAND_VERSION);
    h
}

/// The cluster enables command version `version` at `now`.
fn raise(h: &mut Harness, now: u64, version: u32) {
    let cmd = Command::SetMinCommandVersion { version, by: "ops".into(), reason: "upgraded".into() };
    let r = h.apply(now, vec![cmd]);
    assert!(r.results[0].error.is_none(), "{r:?}");
}

fn record(name: &str, version: &str, bytes: &[u8]) -> ArtifactRecord {
    ArtifactRecord {
        name: name.into(),
        version: version.into(),
        kind: ArtifactType::External,
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        pushed_by: "ops".into(),
        pushed_ms: 0,
        description: "d".into(),
        spec: proto::view::ArtifactSpecView {
            interval_ms: 1000,
            timeout_ms: 500,
            kinds: vec!["disk".into()],
            ..Default::default()
        },
    }
}

fn push(name: &str, version: &str, bytes: &[u8]) -> Command {
    Command::CatalogPush { artifact: record(name, version, bytes), data: b64(bytes) }
}

fn roll(action: RolloutAction, version: &str, target: Target) -> Command {
    Command::Rollout {
        action,
        name: "probe".into(),
        version: version.into(),
        target,
        shadow: false,
        by: "ops".into(),
        reason: "test".into(),
    }
}

fn shadow_start(version: &str, hosts: &[&str]) -> Command {
    Command::Rollout {
        action: RolloutAction::Start,
        name: "probe".into(),
        version: version.into(),
        target: on(hosts),
        shadow: true,
        by: "ops".into(),
        reason: "shadow canary".into(),
    }
}

fn on(hosts: &[&str]) -> Target {
    Target { hosts: hosts.iter().map(|s| s.to_string()).collect(), ..Target::default() }
}

fn pct(p: f64) -> Target {
    Target { bp: percent_bp(p).expect("percent"), ..Target::default() }
}

fn checker_of(h: &Harness, name: &str) -> CheckerRecord {
    h.reader().catalog(name).expect("read").expect("checker")
}

fn probe_v1_v2_v3(h: &mut Harness) {
    for (v, bytes) in
        [("1", &b"#!/bin/sh\necho v1\n"[..]), ("2", b"#!/bin/sh\necho v2\n"), ("3", b"#!/bin/sh\necho v3\n")]
    {
        let r = one(h, 2, push("probe", v, bytes));
        assert!(r.error.is_none() && r.created == 1, "{r:?}");
    }
}

#[test]
fn catalog_commands_wait_for_the_command_version() {
    let mut h = Harness::new();
    refused(&mut h, 1, push("probe", "1", b"x"), Code::Conflict, "needs command version 4");
}

#[test]
fn push_stores_once_duplicates_are_no_ops_and_other_bytes_conflict() {
    let mut h = enabled();
    let r = one(&mut h, 2, push("probe", "1", b"v1 bytes"));
    assert_eq!((r.created, r.duplicate), (1, false), "{r:?}");
    let c = checker_of(&h, "probe");
    let a = &c.versions["1"];
    assert_eq!((a.size, a.sha256.as_str(), a.pushed_ms), (8, sha256_hex(b"v1 bytes").as_str(), 2));
    assert_eq!(h.reader().blob_chunk(&a.sha256, 0).expect("read"), Some(b"v1 bytes".to_vec()));
    assert_eq!(h.reader().meta(crate::store::META_CATALOG_BYTES).expect("meta"), 8);
    let before = h.snapshot();
    let r = one(&mut h, 3, push("probe", "1", b"v1 bytes"));
    assert!(r.duplicate && r.error.is_none(), "{r:?}");
    assert_eq!(h.snapshot(), before, "a duplicate changes nothing");
    refused(&mut h, 4, push("probe", "1", b"other bytes"), Code::Conflict, "already stored with sha256");
    // The bytes must match the record.
    let mut lie = record("probe", "2", b"real");
    lie.sha256 = sha256_hex(b"fake");
    refused(
        &mut h,
        5,
        Command::CatalogPush { artifact: lie, data: b64(b"real") },
        Code::InvalidArgument,
        "do not match",
    );
    // One checker has one type.
    let mut rules = record("probe", "2", b"x");
    rules.kind = ArtifactType::Rules;
    refused(
        &mut h,
        6,
        Command::CatalogPush { artifact: rules, data: b64(b"x") },
        Code::Conflict,
        "is of type external",
    );
    // Over the size limit, and a bad name.
    let mut big = record("probe", "9", b"x");
    big.size = MAX_ARTIFACT_BYTES + 1;
    refused(
        &mut h,
        7,
        Command::CatalogPush { artifact: big, data: String::new() },
        Code::InvalidArgument,
        "bytes",
    );
    refused(&mut h, 8, push("pro be", "1", b"x"), Code::InvalidArgument, "not allowed");
}

#[test]
fn chunked_push_needs_every_chunk_and_the_whole_hash() {
    let mut h = enabled();
    let bytes: Vec<u8> = (0..(CHUNK_BYTES + 1000)).map(|i| (i * 7 % 251) as u8).collect();
    let rec = record("probe", "1", &bytes);
    let sha = rec.sha256.clone();
    let chunk = |i: u64, b: &[u8]| Command::CatalogChunk { sha256: sha.clone(), index: i, data: b64(b) };
    assert!(one(&mut h, 2, chunk(0, &bytes[..CHUNK_BYTES])).error.is_none());
    // Chunk 1 is missing: the push is refused and the catalog has no probe.
    refused(
        &mut h,
        3,
        Command::CatalogPush { artifact: rec.clone(), data: String::new() },
        Code::InvalidArgument,
        "chunk 1 of 2 is missing",
    );
    let r = one(&mut h, 4, chunk(1, &bytes[CHUNK_BYTES..]));
    assert!(r.error.is_none());
    assert!(one(&mut h, 5, chunk(1, &bytes[CHUNK_BYTES..])).duplicate, "a staged chunk is stored once");
    let r = one(&mut h, 6, Command::CatalogPush { artifact: rec, data: String::new() });
    assert_eq!(r.created, 1, "{r:?}");
    assert_eq!(h.reader().meta(crate::store::META_CATALOG_BYTES).expect("meta"), bytes.len() as u64);
    // Bad chunks are refused.
    refused(
        &mut h,
        7,
        Command::CatalogChunk { sha256: "x".into(), index: 0, data: b64(b"a") },
        Code::InvalidArgument,
        "sha256",
    );
    refused(
        &mut h,
        8,
        Command::CatalogChunk { sha256: sha256_hex(b"q"), index: 0, data: "!!".into() },
        Code::InvalidArgument,
        "base64",
    );
    refused(
        &mut h,
        9,
        Command::CatalogChunk {
            sha256: sha256_hex(b"q"),
            index: chunk_count(MAX_ARTIFACT_BYTES),
            data: b64(b"a"),
        },
        Code::InvalidArgument,
        "past the artifact size limit",
    );
}

#[test]
fn versions_per_checker_are_bounded() {
    let mut h = enabled();
    let cmds: Vec<Command> = (0..MAX_VERSIONS_PER_CHECKER)
        .map(|i| push("probe", &format!("{i}"), format!("v{i}").as_bytes()))
        .collect();
    let r = h.apply(2, cmds);
    assert!(r.results.iter().all(|r| r.created == 1), "{r:?}");
    refused(&mut h, 3, push("probe", "one-more", b"more"), Code::Conflict, "versions (the limit)");
}

#[test]
fn rollouts_refuse_bad_changes_and_change_nothing() {
    let mut h = enabled();
    probe_v1_v2_v3(&mut h);
    refused(&mut h, 3, roll(RolloutAction::Start, "7", on(&["h1"])), Code::NotFound, "no version \"7\"");
    let mut other = roll(RolloutAction::Start, "1", on(&["h1"]));
    if let Command::Rollout { name, .. } = &mut other {
        *name = "nope".into();
    }
    refused(&mut h, 3, other, Code::NotFound, "no checker \"nope\"");
    refused(
        &mut h,
        3,
        roll(RolloutAction::Start, "1", Target::default()),
        Code::InvalidArgument,
        "needs hosts",
    );
    assert!(one(&mut h, 4, roll(RolloutAction::Start, "2", on(&["h1", "h2"]))).error.is_none());
    // Overlapping gray host sets of one checker are refused.
    refused(
        &mut h,
        5,
        roll(RolloutAction::Start, "3", on(&["h2", "h3"])),
        Code::Conflict,
        "must be disjoint",
    );
    refused(&mut h, 5, roll(RolloutAction::Start, "2", on(&["h9"])), Code::Conflict, "already in a rollout");
    // Disjoint is fine: two versions in gray at once.
    assert!(one(&mut h, 6, roll(RolloutAction::Start, "3", on(&["h3"]))).error.is_none());
    refused(&mut h, 7, roll(RolloutAction::Widen, "3", on(&["h1"])), Code::Conflict, "must be disjoint");
    refused(&mut h, 7, roll(RolloutAction::Resume, "3", Target::default()), Code::Conflict, "is gray");
    assert!(one(&mut h, 8, roll(RolloutAction::Pause, "3", Target::default())).error.is_none());
    refused(
        &mut h,
        9,
        roll(RolloutAction::Widen, "3", on(&["h4"])),
        Code::Conflict,
        "resume it before widening",
    );
    refused(
        &mut h,
        9,
        roll(RolloutAction::Rollback, "1", Target::default()),
        Code::NotFound,
        "no rollout in progress",
    );
    let c = checker_of(&h, "probe");
    assert_eq!(c.rollouts.len(), 2);
    assert_eq!(c.rollouts[1].state, RolloutState::Paused);
    assert!(c.rollouts[1].paused_reason.contains("paused by ops"), "{:?}", c.rollouts[1]);
}

#[test]
fn percentages_are_disjoint_ranges_and_widening_keeps_the_first_hosts() {
    let mut h = enabled();
    probe_v1_v2_v3(&mut h);
    assert!(
        one(
            &mut h,
            3,
            Command::Rollout {
                action: RolloutAction::Promote,
                name: "probe".into(),
                version: "1".into(),
                target: Target::default(),
                shadow: false,
                by: "ops".into(),
                reason: "v1 is good".into(),
            }
        )
        .error
        .is_none()
    );
    assert_eq!(checker_of(&h, "probe").stable, "1");
    assert!(one(&mut h, 4, roll(RolloutAction::Start, "2", pct(5.0))).error.is_none());
    let hosts: Vec<String> = (0..2000).map(|i| format!("host-{i}")).collect();
    let runs = |h: &Harness, v: &str| -> Vec<String> {
        let c = checker_of(h, "probe");
        hosts.iter().filter(|x| assignment_for(&c, x, None).iter().any(|a| a.version == v)).cloned().collect()
    };
    let five = runs(&h, "2");
    assert!(!five.is_empty() && five.len() < 200, "{} hosts at 5%", five.len());
    // v3 gets the next 10% of buckets: disjoint from v2's.
    assert!(one(&mut h, 5, roll(RolloutAction::Start, "3", pct(10.0))).error.is_none());
    assert_eq!(checker_of(&h, "probe").rollouts[1].target.from_bp, 500);
    // Widening v2 into v3's range is refused; shrinking too.
    refused(&mut h, 6, roll(RolloutAction::Widen, "2", pct(25.0)), Code::Conflict, "must be disjoint");
    refused(&mut h, 6, roll(RolloutAction::Widen, "2", pct(1.0)), Code::Conflict, "only grows");
    assert!(one(&mut h, 7, roll(RolloutAction::Rollback, "3", Target::default())).error.is_none());
    assert!(one(&mut h, 8, roll(RolloutAction::Widen, "2", pct(25.0))).error.is_none());
    let wide = runs(&h, "2");
    assert!(five.iter().all(|x| wide.contains(x)), "widening 5% -> 25% keeps the first 5%");
    assert!(wide.len() > 3 * five.len(), "{} vs {}", wide.len(), five.len());
    // More than what is left is refused.
    refused(
        &mut h,
        9,
        roll(RolloutAction::Start, "3", pct(80.0)),
        Code::Conflict,
        "outside its other percentage",
    );
    // Promote: every host runs v2; rollback of v3 earlier returned its hosts to v1.
    assert!(one(&mut h, 10, roll(RolloutAction::Promote, "2", Target::default())).error.is_none());
    let c = checker_of(&h, "probe");
    assert_eq!((c.stable.as_str(), c.rollouts.len()), ("2", 0));
    assert_eq!(runs(&h, "2").len(), hosts.len());
    let states: Vec<&str> = c.done.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, vec!["promoted", "rolled-back", "promoted"]);
}

#[test]
fn rollback_returns_the_canary_hosts_to_the_stable_version() {
    let mut h = enabled();
    probe_v1_v2_v3(&mut h);
    one(&mut h, 3, roll(RolloutAction::Promote, "1", Target::default()));
    one(&mut h, 4, roll(RolloutAction::Start, "2", pct(100.0)));
    let c = checker_of(&h, "probe");
    assert!(assignment_for(&c, "h1", None).iter().all(|a| a.version == "2"));
    one(&mut h, 5, roll(RolloutAction::Rollback, "2", Target::default()));
    let c = checker_of(&h, "probe");
    let a = assignment_for(&c, "h1", None);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].version, "1");
    // Every change is audited with who and why.
    let audit = h.reader().audit(false, 100).expect("audit");
    assert!(
        audit.iter().any(|a| a.by == "ops" && a.message.contains("rollout rollback probe@2")),
        "{audit:?}"
    );
}

#[test]
fn retiring_the_stable_version_unassigns_the_checker() {
    let mut h = enabled();
    probe_v1_v2_v3(&mut h);
    one(&mut h, 3, roll(RolloutAction::Promote, "1", Target::default()));
    let retire = |v: &str| roll(RolloutAction::Retire, v, Target::default());
    assert_eq!(retire("1").version(), crate::model::RETIRE_COMMAND_VERSION);
    // Below its command version a retire is refused like any newer command.
    refused(&mut h, 4, retire("1"), Code::Conflict, "needs command version 8");
    raise(&mut h, 4, crate::model::RETIRE_COMMAND_VERSION);
    // Only the stable version, by name, and never under a rollout in progress; each refusal changes nothing.
    refused(&mut h, 5, retire("2"), Code::Conflict, "probe@2 is not the stable version (probe@1 is)");
    refused(&mut h, 5, retire("9"), Code::NotFound, "no version \"9\"");
    one(&mut h, 5, roll(RolloutAction::Start, "2", on(&["h1"])));
    refused(&mut h, 6, retire("1"), Code::Conflict, "probe@2 is in a gray rollout: promote or roll it back");
    one(&mut h, 6, roll(RolloutAction::Pause, "2", Target::default()));
    refused(&mut h, 6, retire("1"), Code::Conflict, "probe@2 is in a paused rollout");
    one(&mut h, 7, roll(RolloutAction::Rollback, "2", Target::default()));
    assert!(is_assigned(&checker_of(&h, "probe")));
    let r = one(&mut h, 8, retire("1"));
    assert!(r.error.is_none() && r.updated == 1, "{r:?}");
    let c = checker_of(&h, "probe");
    assert_eq!(c.stable, "");
    assert!(!is_assigned(&c), "a retired checker runs nowhere");
    assert!(assignment_for(&c, "h1", None).is_empty());
    assert_eq!(c.versions.len(), 3, "its versions stay stored");
    refused(&mut h, 9, retire("1"), Code::Conflict, "probe has no stable version to retire");
    let audit = h.reader().audit(false, 100).expect("audit");
    assert!(
        audit.iter().any(|a| a.by == "ops" && a.message.contains("rollout retire probe@1: retired")),
        "{audit:?}"
    );
    // A rollout or a promotion assigns it again.
    one(&mut h, 10, roll(RolloutAction::Promote, "3", Target::default()));
    assert_eq!(assignment_for(&checker_of(&h, "probe"), "h1", None)[0].version, "3");
}

fn register(h: &mut Harness, now: u64, hosts: &[&str]) {
    let cmds = hosts
        .iter()
        .map(|host| Command::Register {
            agent: format!("agent-{host}"),
            host: host.to_string(),
            objects: vec![
                Registration {
                    id: state_machines::ObjectId::machine(host).expect("id"),
                    attributes: BTreeMap::new(),
                    labels: [("rack".to_string(), "r1".to_string())].into(),
                },
                Registration {
                    id: format!("disk/{host}/sda").parse().expect("id"),
                    attributes: [("serial".to_string(), format!("S-{host}"))].into(),
                    labels: [("rack".to_string(), "r1".to_string())].into(),
                },
            ],
        })
        .collect();
    h.apply(now, cmds);
}

fn probe_finding(host: &str, version: &str, shadow: bool, sev: Severity, t: u64) -> Finding {
    Finding {
        checker: "probe".into(),
        version: version.into(),
        rule: "probe.bad".into(),
        shadow,
        ..finding(&format!("disk/{host}/sda"), sev, t)
    }
}

#[test]
fn shadow_findings_are_recorded_drive_nothing_and_fill_the_canary_window() {
    let mut h = enabled();
    register(&mut h, 2, &["h1", "h2", "h3"]);
    probe_v1_v2_v3(&mut h);
    one(&mut h, 3, roll(RolloutAction::Promote, "1", Target::default()));
    assert!(one(&mut h, 4, shadow_start("2", &["h1", "h2"])).error.is_none());
    let sda =
        |h: &Harness, host: &str| h.reader().object(&format!("disk/{host}/sda")).expect("read").expect("obj");
    let before = sda(&h, "h1");
    let r = h.apply(
        5,
        vec![ingest(
            "agent-h1",
            1,
            vec![
                probe_finding("h1", "2", true, Severity::Fatal, 5),
                probe_finding("h2", "2", true, Severity::Error, 5),
                probe_finding("unknown-host", "2", true, Severity::Fatal, 5),
            ],
        )],
    );
    assert!(r.results[0].error.is_none(), "{r:?}");
    let after = sda(&h, "h1");
    assert_eq!(after.sm.state, before.sm.state, "a shadow finding moves no state machine");
    assert!(!after.evidence.contains_key("probe"), "nor replaces evidence");
    assert!(h.reader().object("disk/unknown-host/sda").expect("read").is_none(), "nor creates objects");
    let hist = h.reader().history(&after).expect("history");
    assert!(hist.iter().any(|e| e.what == "shadow" && e.detail.contains("shadow probe@2")), "{hist:?}");
    assert!(
        h.reader()
            .scopes()
            .expect("scopes")
            .iter()
            .all(|(n, r)| !n.contains("probe") || r.kinds.values().all(|k| k.entries.is_empty()))
    );
    // The current version's findings on the canary hosts count on the other side; h3 is not a canary host.
    h.apply(
        6,
        vec![ingest(
            "agent-h2",
            1,
            vec![
                probe_finding("h2", "1", false, Severity::Warning, 6),
                probe_finding("h3", "1", false, Severity::Fatal, 6),
            ],
        )],
    );
    let w = &checker_of(&h, "probe").rollouts[0].window;
    assert_eq!((w.new_count(), w.current_count()), (2, 1), "{w:?}");
    assert!(w.new_flagged.contains("disk/h1/sda") && w.current_flagged.contains("disk/h2/sda"));
    // The shadow ingest is a command of version 4 (older binaries would feed it to state machines).
    assert_eq!(ingest("a", 1, vec![probe_finding("h1", "2", true, Severity::Fatal, 5)]).version(), 4);
}

#[test]
fn a_canary_check_records_the_numbers_and_pauses_with_an_alert() {
    let mut h = enabled();
    probe_v1_v2_v3(&mut h);
    one(&mut h, 3, shadow_start("2", &["h1"]));
    let numbers = WindowNumbers {
        window_start_ms: 3,
        window_ms: 600_000,
        canary_hosts: 1,
        canary_objects: 4,
        new_flagged: 4,
        current_flagged: 0,
        hosts_failing: 0,
    };
    let ok = verdict(&WindowNumbers { new_flagged: 0, ..numbers }, &CanaryConfig::default());
    one(
        &mut h,
        4,
        Command::CanaryCheck { name: "probe".into(), version: "2".into(), deviation: ok, pause: false },
    );
    let r = &checker_of(&h, "probe").rollouts[0];
    assert_eq!((r.state, r.window.start_ms), (RolloutState::Gray, 4));
    let bad = verdict(&numbers, &CanaryConfig::default());
    assert_eq!(bad.verdict, "too-many-flags");
    one(
        &mut h,
        5,
        Command::CanaryCheck {
            name: "probe".into(),
            version: "2".into(),
            deviation: bad.clone(),
            pause: true,
        },
    );
    let r = &checker_of(&h, "probe").rollouts[0];
    assert_eq!((r.state, r.auto_paused), (RolloutState::Paused, true));
    assert_eq!(r.deviation.as_ref(), Some(&bad));
    assert!(r.paused_reason.contains("flagged 4 objects"), "{}", r.paused_reason);
    let alerts = h.reader().audit(true, 10).expect("alerts");
    assert!(alerts.iter().any(|a| a.message.contains("rollout of probe@2 paused")), "{alerts:?}");
    // A check that raced a pause records nothing.
    let before = h.snapshot();
    one(
        &mut h,
        6,
        Command::CanaryCheck { name: "probe".into(), version: "2".into(), deviation: bad, pause: true },
    );
    assert_eq!(h.snapshot(), before);
    // Resume clears the automatic pause and starts a new window.
    one(&mut h, 7, roll(RolloutAction::Resume, "2", Target::default()));
    let r = &checker_of(&h, "probe").rollouts[0];
    assert_eq!((r.state, r.auto_paused, r.window.start_ms), (RolloutState::Gray, false, 7));
}

#[test]
fn a_latched_checker_version_scope_pauses_its_rollout() {
    let mut h = enabled();
    // Quotas wide open: only the checker version's spike detector can latch.
    let open = crate::safety::QuotaRule {
        kind: "disk".into(),
        scope: "cluster".into(),
        window_ms: 3_600_000,
        max_entries: Limit::Percent(10_000),
        max_concurrent: Limit::Percent(10_000),
    };
    let cfg = SafetyConfig {
        quotas: vec![open],
        spike: crate::safety::SpikeRule { window_ms: 600_000, min: 3, share: Limit::Count(1) },
        ..SafetyConfig::default()
    };
    h.apply(2, vec![Command::SetSafety { config: cfg, by: "a".into(), reason: "t".into() }]);
    let hosts: Vec<String> = (0..6).map(|i| format!("h{i}")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    register(&mut h, 3, &refs);
    probe_v1_v2_v3(&mut h);
    one(&mut h, 4, roll(RolloutAction::Promote, "1", Target::default()));
    one(&mut h, 5, roll(RolloutAction::Start, "2", on(&refs)));
    // v2 (not shadow) flags every disk FATAL: the spike latches checker=probe@2 and pauses the rollout.
    h.apply(
        6,
        vec![ingest("x", 1, refs.iter().map(|x| probe_finding(x, "2", false, Severity::Fatal, 6)).collect())],
    );
    let scopes = h.reader().scopes().expect("scopes");
    let vs = scopes.iter().find(|(n, _)| n == "checker=probe@2").map(|(_, r)| r.clone()).expect("scope");
    assert_eq!((vs.level, vs.latched), (Level::Manual, true));
    let r = &checker_of(&h, "probe").rollouts[0];
    assert_eq!((r.state, r.auto_paused), (RolloutState::Paused, true), "{r:?}");
    assert!(r.paused_reason.contains("checker=probe@2 latched"), "{}", r.paused_reason);
}

/// With the default quotas a bad non-shadow canary trips the cluster quota before its own spike detector:
/// the quota latch pauses the rollout of the version whose finding tripped it (and only that one).
#[test]
fn a_quota_latched_by_a_canary_versions_finding_pauses_its_rollout() {
    let mut h = enabled();
    let tight = crate::safety::QuotaRule {
        kind: "disk".into(),
        scope: "cluster".into(),
        window_ms: 3_600_000,
        max_entries: Limit::Count(2),
        max_concurrent: Limit::Percent(10_000),
    };
    // The spike detector would need far more than the quota allows: the quota latches first.
    let cfg = SafetyConfig {
        quotas: vec![tight],
        spike: crate::safety::SpikeRule { window_ms: 600_000, min: 1_000, share: Limit::Count(1_000) },
        ..SafetyConfig::default()
    };
    h.apply(2, vec![Command::SetSafety { config: cfg, by: "a".into(), reason: "t".into() }]);
    let hosts: Vec<String> = (0..6).map(|i| format!("h{i}")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    register(&mut h, 3, &refs);
    probe_v1_v2_v3(&mut h);
    one(&mut h, 4, roll(RolloutAction::Promote, "1", Target::default()));
    one(&mut h, 5, roll(RolloutAction::Start, "2", on(&refs)));
    // v1 (the stable version) makes two disks fail: within quota, no latch, the rollout stays gray.
    h.apply(
        6,
        vec![ingest(
            "x",
            1,
            refs[..2].iter().map(|x| probe_finding(x, "1", false, Severity::Fatal, 6)).collect(),
        )],
    );
    assert_eq!(checker_of(&h, "probe").rollouts[0].state, RolloutState::Gray);
    // v2 flags the rest: the cluster quota latches on its first transition and its rollout pauses.
    h.apply(
        7,
        vec![ingest(
            "x",
            2,
            refs[2..].iter().map(|x| probe_finding(x, "2", false, Severity::Fatal, 7)).collect(),
        )],
    );
    let scopes = h.reader().scopes().expect("scopes");
    let cluster = scopes.iter().find(|(n, _)| n == "cluster").map(|(_, r)| r.clone()).expect("cluster scope");
    assert_eq!((cluster.level, cluster.latched), (Level::Manual, true));
    let r = &checker_of(&h, "probe").rollouts[0];
    assert_eq!((r.state, r.auto_paused), (RolloutState::Paused, true), "{r:?}");
    assert!(
        r.paused_reason.contains("cluster latched on a transition from this version"),
        "{}",
        r.paused_reason
    );
}

#[test]
fn seeding_is_idempotent_and_makes_version_one_stable() {
    let mut h = enabled();
    let r = one(&mut h, 2, seed_command());
    assert_eq!(r.created as usize, rulesets::seeds::SEEDS.len(), "{r:?}");
    let c = checker_of(&h, "kernel-log");
    assert_eq!((c.kind, c.stable.as_str()), (ArtifactType::Rules, "1"));
    assert_eq!(c.versions["1"].sha256, sha256_hex(rulesets::rules::DEFAULT_RULES.as_bytes()));
    assert_eq!(checker_of(&h, "online").stable, "1");
    let before = h.snapshot();
    assert!(one(&mut h, 3, seed_command()).duplicate);
    assert_eq!(h.snapshot(), before, "seeding twice changes nothing");
    let a = assignment_of(h.reader().catalog_all().expect("all").iter(), "h1", None);
    let names: Vec<&str> = a.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, vec!["archive", "kernel-log", "offline", "online"]);
}

#[test]
fn a_seed_does_not_overwrite_what_an_operator_pushed() {
    let mut h = enabled();
    let mut mine = record("kernel-log", "1", b"[not the seed]");
    mine.kind = ArtifactType::Rules;
    one(&mut h, 2, Command::CatalogPush { artifact: mine.clone(), data: b64(b"[not the seed]") });
    let items = vec![SeedItem { artifact: record("kernel-log", "1", b"seed"), data: b64(b"seed") }];
    let r = one(&mut h, 3, Command::CatalogSeed { items });
    assert_eq!(r.created, 0);
    assert_eq!(checker_of(&h, "kernel-log").versions["1"].sha256, mine.sha256);
}

#[test]
fn the_catalog_and_its_bytes_travel_in_snapshots() {
    let mut a = enabled();
    register(&mut a, 2, &["h1", "h2"]);
    one(&mut a, 3, seed_command());
    let bytes: Vec<u8> = (0..(CHUNK_BYTES + 17)).map(|i| (i % 253) as u8).collect();
    let rec = record("big", "1", &bytes);
    for (i, c) in bytes.chunks(CHUNK_BYTES).enumerate() {
        one(&mut a, 4, Command::CatalogChunk { sha256: rec.sha256.clone(), index: i as u64, data: b64(c) });
    }
    one(&mut a, 5, Command::CatalogPush { artifact: rec.clone(), data: String::new() });
    probe_v1_v2_v3(&mut a);
    one(&mut a, 6, shadow_start("2", &["h1"]));
    a.apply(7, vec![ingest("x", 1, vec![probe_finding("h1", "2", true, Severity::Fatal, 7)])]);
    let snap = a.snapshot();
    assert!(snap.starts_with(b"huatuo-fsm-snapshot-v5\n"));
    let mut b = Harness::new();
    {
        let txn = b.db.begin_write().expect("txn");
        b.fsm.restore_data(&txn, &snap).expect("restore");
        txn.commit().expect("commit");
    }
    assert_eq!(b.snapshot(), snap);
    let (ra, rb) = (a.reader(), b.reader());
    assert_eq!(ra.catalog_all().expect("a"), rb.catalog_all().expect("b"));
    assert_eq!(rb.blob_chunk(&rec.sha256, 1).expect("read"), Some(bytes[CHUNK_BYTES..].to_vec()));
    // The restored member assigns exactly what the other one does (a failover changes no assignment).
    for host in ["h1", "h2", "h3"] {
        let ca = ra.catalog_all().expect("a");
        let cb = rb.catalog_all().expect("b");
        assert_eq!(assignment_of(ca.iter(), host, None), assignment_of(cb.iter(), host, None));
    }
    // The in-memory model reads and writes the same bytes.
    let mem = MemState::from_snapshot(&snap).expect("mem");
    assert_eq!(mem.snapshot(), snap);
}

#[test]
fn a_version_3_snapshot_still_loads() {
    let mut a = Harness::new();
    a.apply(1, vec![ingest("", 0, vec![finding("disk/h1/sda", Severity::Fatal, 1)])]);
    let snap = a.snapshot();
    let v4 = crate::fsm::snapshot::as_v4_for_test(&snap);
    let old = [b"huatuo-fsm-snapshot-v3\n".as_slice(), &v4[b"huatuo-fsm-snapshot-v4\n".len()..]].concat();
    let mut b = Harness::new();
    {
        let txn = b.db.begin_write().expect("txn");
        b.fsm.restore_data(&txn, &old).expect("restore a v3 snapshot");
        txn.commit().expect("commit");
    }
    // The same state but for the hourly transition counters (that format had none; not recounted).
    assert_eq!(b.snapshot(), crate::fsm::snapshot::without_hourly_for_test(&snap));
    // A v3 snapshot with a catalog tag is corrupt (that format had none).
    let mut bad = old.clone();
    crate::fsm::snapshot::push_record_for_test(&mut bad, 15, b"probe", b"{}");
    let txn = b.db.begin_write().expect("txn");
    assert!(b.fsm.restore_data(&txn, &bad).is_err());
    txn.abort().expect("abort");
}

/// The catalog's total and checker-count limits, at and over the limit (the in-memory model starts just
/// below them instead of storing 256 MiB).
#[test]
fn the_total_bytes_and_checker_count_are_bounded() {
    let mut m = MemFsm::new(Policy::default());
    let apply = |m: &mut MemFsm, i: u64, cmd: Command| {
        m.apply(i, &Envelope::new(i, vec![cmd]).encode()).expect("apply")
    };
    let up = Command::SetMinCommandVersion { version: 4, by: "ops".into(), reason: "r".into() };
    apply(&mut m, 1, up);
    m.state.meta.insert(crate::store::META_CATALOG_BYTES.into(), MAX_CATALOG_BYTES - 10);
    let r = apply(&mut m, 2, push("probe", "1", b"eleven byte"));
    let e = r.results[0].error.clone().expect("over the total");
    assert_eq!(e.0, Code::Conflict);
    assert!(e.1.contains("limit of 268435456 bytes"), "{}", e.1);
    assert!(m.state.catalog.is_empty() && m.state.blobs.is_empty(), "nothing stored");
    let r = apply(&mut m, 3, push("probe", "1", b"ten bytes!"));
    assert_eq!(r.results[0].created, 1, "{r:?}");
    assert_eq!(m.state.meta[crate::store::META_CATALOG_BYTES], MAX_CATALOG_BYTES);
    // Checkers: one below the limit may be added, then no more.
    m.state.meta.insert(crate::store::META_CATALOG_CHECKERS.into(), MAX_CATALOG_CHECKERS as u64 - 1);
    m.state.meta.insert(crate::store::META_CATALOG_BYTES.into(), 0);
    assert_eq!(apply(&mut m, 4, push("second", "1", b"x")).results[0].created, 1);
    let r = apply(&mut m, 5, push("third", "1", b"y"));
    assert!(r.results[0].error.as_ref().is_some_and(|e| e.1.contains("checkers (the limit)")), "{r:?}");
    // A new version of a known checker is still fine at the checker limit.
    assert_eq!(apply(&mut m, 6, push("second", "2", b"z")).results[0].created, 1);
}
