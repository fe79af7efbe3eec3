//! The cluster's heartbeat secret through the state machine (`Command::SetBeatSecret`, command version
//! 12): refused below 12; set once, a second one refused (Conflict) and a malformed one refused
//! (InvalidArgument), each changing nothing; audited without its value; carried in snapshots (the
//! in-memory model alike, and the same bytes as the store's, whether or not a mix with other settings).

use proto::error::Code;

use super::*;
use crate::model::BEAT_SECRET_VERSION;

fn set(secret: &str) -> Command {
    Command::SetBeatSecret { secret: crate::model::SecretHex::new(secret.into()) }
}

const FIRST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SECOND: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

#[test]
fn the_beat_secret_waits_for_command_version_12_and_is_set_once() {
    assert_eq!(set(FIRST).version(), BEAT_SECRET_VERSION);
    let mut h = harness(BEAT_SECRET_VERSION - 1);
    refused(&mut h, 2, set(FIRST), Code::Conflict, "needs command version 12");
    let mut h = harness(BEAT_SECRET_VERSION);
    assert!(h.reader().beat_secret().expect("read").is_none());
    for bad in ["", "00", &FIRST[1..], &format!("{}zz", &FIRST[2..])] {
        refused(&mut h, 2, set(bad), Code::InvalidArgument, "64 hex digits");
    }
    let r = one(&mut h, 3, set(FIRST));
    assert!(r.error.is_none() && r.updated == 1, "{r:?}");
    let stored = h.reader().beat_secret().expect("read").expect("set");
    assert_eq!(hex::encode(stored), FIRST);
    // A second leader's secret (two leaders in a row both found none): refused, the first stays.
    refused(&mut h, 4, set(SECOND), Code::Conflict, "already set");
    // Two in one entry: the first applied wins there too.
    let mut h2 = harness(BEAT_SECRET_VERSION);
    let r = h2.apply(5, vec![set(SECOND), set(FIRST)]);
    assert!(r.results[0].error.is_none() && r.results[1].error.is_some(), "{r:?}");
    assert_eq!(h2.reader().beat_secret().expect("read").map(hex::encode).as_deref(), Some(SECOND));
    // Audited, without the value.
    let audit = h.reader().audit(false, 10).expect("audit");
    assert!(audit.iter().any(|e| e.message.contains("heartbeat datagram secret set")), "{audit:?}");
    assert!(!format!("{audit:?}").contains(FIRST), "the secret in the audit log");
    // Nor in a command printed (logs, test failures); it still travels whole in the entry.
    assert!(!format!("{:?}", set(FIRST)).contains(FIRST), "{:?}", set(FIRST));
    let entry = crate::model::Envelope::new(6, vec![set(FIRST)]).encode();
    assert!(String::from_utf8_lossy(&entry).contains(FIRST));
}

#[test]
fn the_beat_secret_travels_in_snapshots() {
    let mut a = harness(BEAT_SECRET_VERSION);
    one(&mut a, 2, set(FIRST));
    let safety = Command::SetSafety {
        config: crate::safety::SafetyConfig::default(),
        by: "ops".into(),
        reason: "defaults, so the settings hold two rows".into(),
    };
    one(&mut a, 3, safety);
    let snap = a.snapshot();
    let mut b = Harness::new();
    {
        let txn = b.db.begin_write().expect("txn");
        b.fsm.restore_data(&txn, &snap).expect("restore");
        txn.commit().expect("commit");
    }
    assert_eq!(b.snapshot(), snap);
    assert_eq!(b.reader().beat_secret().expect("b"), a.reader().beat_secret().expect("a"));
    let mem = MemState::from_snapshot(&snap).expect("mem");
    assert_eq!(mem.beat_secret.map(hex::encode).as_deref(), Some(FIRST));
    assert_eq!(mem.snapshot(), snap, "the memory model writes the settings in the store's order");
}
