//! Runs every transcript under `testdata/transcripts/` and checks that together they take every edge of every
//! state machine (computed from the same tables `step` runs), plus tests of the runner itself: it must catch
//! divergences at the right line and refuse malformed files.

use std::collections::BTreeSet;
use std::path::PathBuf;

use state_machines::transcript::{self, CheckError};
use state_machines::{Kind, MACHINE_KINDS, State, state_machine_for};

fn transcript_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("transcripts dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no transcripts in {}", dir.display());
    files
}

#[test]
fn all_transcripts_match_and_cover_every_edge() {
    let mut taken: BTreeSet<(Kind, State, State)> = BTreeSet::new();
    for f in transcript_files() {
        let text = std::fs::read_to_string(&f).expect("read transcript");
        match transcript::check(&text) {
            Ok(r) => {
                assert!(r.steps > 0 && r.expectations > 0, "{}: empty transcript", f.display());
                taken.extend(r.edges);
            }
            Err(e) => panic!("{}: {e}", f.display()),
        }
    }
    let mut missing = Vec::new();
    for kind in MACHINE_KINDS {
        let m = state_machine_for(kind).expect("machine");
        for e in m.edges {
            if !taken.contains(&(kind, e.from, e.to)) {
                missing.push(format!("{kind}: {} -> {} ({})", e.from, e.to, e.label));
            }
        }
    }
    assert!(missing.is_empty(), "edges never exercised by a transcript:\n{}", missing.join("\n"));
}

fn diverges_at(text: &str) -> usize {
    match transcript::check(text) {
        Err(CheckError::Diverged(d)) => d.line,
        other => panic!("expected a divergence, got {other:?}"),
    }
}

fn malformed_at(text: &str) -> usize {
    match transcript::check(text) {
        Err(CheckError::Malformed(e)) => e.line,
        other => panic!("expected a parse error, got {other:?}"),
    }
}

const BASE: &str = "object disk/h/sda\nat 0 finding FATAL smart 1 smart.failed FAILED\n";

#[test]
fn runner_reports_first_divergence_line() {
    assert!(transcript::check(&format!("{BASE}expect state ERROR\n")).is_ok());
    assert_eq!(diverges_at(&format!("{BASE}expect state GOOD\n")), 3);
    assert_eq!(diverges_at(&format!("{BASE}expect state ERROR\nexpect transition GOOD -> SLOW\n")), 4);
    assert_eq!(diverges_at(&format!("{BASE}expect transition GOOD -> ERROR by ack\n")), 3);
    assert_eq!(diverges_at(&format!("{BASE}expect no-transition\n")), 3);
    assert_eq!(diverges_at(&format!("{BASE}expect no-effects\n")), 3);
    assert_eq!(diverges_at(&format!("{BASE}expect error wrong-ack\n")), 3);
    // Effects must match exactly, in order.
    assert_eq!(diverges_at(&format!("{BASE}expect effect publish\n")), 2, "missing request-ack");
    assert_eq!(diverges_at(&format!("{BASE}expect effect request-ack storage data-evacuated\n")), 3);
    assert_eq!(
        diverges_at(&format!(
            "{BASE}expect effect publish\nexpect effect request-ack storage data-evacuated\nexpect effect alert\n"
        )),
        5
    );
    // An error nobody expected is a divergence at the input's line.
    assert_eq!(diverges_at(&format!("{BASE}at 5 ack scheduler drained\nexpect state ERROR\n")), 3);
    assert_eq!(diverges_at(&format!("{BASE}at 5 ack storage drained\nexpect error no-pending-ack\n")), 4);
}

#[test]
fn runner_refuses_malformed_files() {
    assert_eq!(malformed_at("at 0 tick\n"), 1, "input before object");
    assert_eq!(malformed_at("object disk/h\n"), 1, "bad id");
    assert_eq!(malformed_at("object disk/h/a\nexpect state GOOD\n"), 2, "expect before input");
    assert_eq!(malformed_at("object disk/h/a\nat x tick\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 tick\nat 4 tick\n"), 3, "time backwards");
    assert_eq!(malformed_at("object disk/h/a\nat 5 sneeze\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 finding BAD c 1 r\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 finding ERROR c 1\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 result reboot ok\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 result test maybe\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 ack storage evacuated\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 ticket T-1 lost\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 replacement S1 model\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\nat 5 tick\nexpect transition GOOD to SLOW\n"), 3);
    assert_eq!(malformed_at("object disk/h/a\nstart FIX\n"), 2, "disks have no FIX");
    assert_eq!(malformed_at("object disk/h/a\npolicy no_such_field 3\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\npolicy enter_readings zero\n"), 2);
    assert_eq!(malformed_at("object disk/h/a\npolicy enter_readings 0\n"), 2, "policy validation");
    assert_eq!(malformed_at("fly me to the moon\n"), 1);
    assert_eq!(malformed_at(&format!("object disk/h/a\n# {}\n", "x".repeat(transcript::MAX_LINE_LEN))), 2);
    assert_eq!(malformed_at(&"\n".repeat(transcript::MAX_TRANSCRIPT_BYTES + 1)), 0);
    // Binary garbage is refused, never a panic.
    let garbage: String = (0u32..2000).map(|i| char::from_u32((i * 7919) % 0x2FF).unwrap_or('?')).collect();
    assert!(matches!(transcript::check(&garbage), Err(CheckError::Malformed(_))));
}

#[test]
fn policy_overrides_apply() {
    let t = "object disk/h/a\npolicy enter_readings 1\nat 0 finding SLOW d 1 lat x\nexpect state SLOW\n\
             policy fix_by_rule io-error=clean-fs\npolicy default_fix restart-service\npolicy drain_role yarn\n";
    assert!(transcript::check(t).is_ok(), "{:?}", transcript::check(t));
    assert_eq!(malformed_at("object disk/h/a\npolicy fix_by_rule io-error=explode\n"), 2);
}
