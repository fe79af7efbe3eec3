//! The replicated topology through the state machine (issue 16): pushing a topology artifact and
//! activating it wait for command version 7; activation is refused (changing nothing) unless the artifact is
//! stored, of type topology and complete; setting the active one again and clearing nothing are duplicates;
//! a topology is never assigned or rolled out; the pointer travels in snapshots (the in-memory model too).

use base64::Engine;
use proto::error::Code;

use super::*;
use crate::catalog::*;
use crate::model::{RolloutAction, TOPOLOGY_COMMAND_VERSION};
use crate::store::META_TOPOLOGY_REV;

const TOML: &[u8] = b"[[tor]]\nname = \"t1\"\nhosts = [\"h1\", \"h2\"]\nuplinks = [\"a1\"]\n";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn record(name: &str, version: &str, kind: ArtifactType, bytes: &[u8]) -> ArtifactRecord {
    ArtifactRecord {
        name: name.into(),
        version: version.into(),
        kind,
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        pushed_by: "ops".into(),
        pushed_ms: 0,
        description: String::new(),
        spec: Default::default(),
    }
}

fn push(name: &str, version: &str, bytes: &[u8]) -> Command {
    Command::CatalogPush { artifact: record(name, version, ArtifactType::Topology, bytes), data: b64(bytes) }
}

fn set(name: &str, version: &str) -> Command {
    Command::SetTopology {
        name: name.into(),
        version: version.into(),
        by: "ops".into(),
        reason: "fabric".into(),
    }
}

#[test]
fn topology_commands_wait_for_command_version_7() {
    assert_eq!(set("fabric", "1").version(), TOPOLOGY_COMMAND_VERSION);
    assert_eq!(push("fabric", "1", TOML).version(), TOPOLOGY_COMMAND_VERSION);
    let mut h = harness(crate::model::PREDICT_COMMAND_VERSION);
    refused(&mut h, 2, push("fabric", "1", TOML), Code::Conflict, "needs command version 7");
    refused(&mut h, 2, set("fabric", "1"), Code::Conflict, "needs command version 7");
    // The proposer's gate says the same before Raft.
    let e = crate::model::check_proposable(&set("", ""), crate::model::PREDICT_COMMAND_VERSION)
        .expect_err("gated");
    assert!(e.to_string().contains("set_topology needs command version 7"), "{e}");
    assert!(crate::model::check_proposable(&set("", ""), TOPOLOGY_COMMAND_VERSION).is_ok());
    // An entry carrying it is stamped 7: an older binary stops rather than skipping it.
    let env = crate::model::Envelope::new(5, vec![set("fabric", "1")]);
    assert_eq!(env.v, TOPOLOGY_COMMAND_VERSION);
    assert!(matches!(
        crate::model::Envelope::decode_knowing(&env.encode(), 6),
        Err(crate::model::DecodeError::TooNew { needs: 7, knows: 6 })
    ));
}

#[test]
fn activation_needs_a_complete_topology_artifact_and_changes_nothing_otherwise() {
    let mut h = harness(TOPOLOGY_COMMAND_VERSION);
    refused(&mut h, 2, set("fabric", "1"), Code::NotFound, "no topology \"fabric\"");
    let ext = record("probe", "1", ArtifactType::External, b"#!/bin/sh\n");
    one(&mut h, 2, Command::CatalogPush { artifact: ext, data: b64(b"#!/bin/sh\n") });
    refused(&mut h, 3, set("probe", "1"), Code::InvalidArgument, "of type external, not topology");
    assert!(one(&mut h, 3, push("fabric", "1", TOML)).error.is_none());
    refused(&mut h, 4, set("fabric", "2"), Code::NotFound, "no version \"2\"");
    let r = one(&mut h, 5, set("fabric", "1"));
    assert!(r.error.is_none() && r.updated == 1, "{r:?}");
    let a = h.reader().active_topology().expect("read").expect("active");
    assert_eq!((a.name.as_str(), a.version.as_str(), a.sha256.clone()), ("fabric", "1", sha256_hex(TOML)));
    assert_eq!((a.set_by.as_str(), a.set_ms), ("ops", 5));
    assert_eq!(h.reader().meta(META_TOPOLOGY_REV).expect("rev"), 1);
    let audit = h.reader().audit(false, 10).expect("audit");
    assert!(
        audit.iter().any(|e| e.scope == "topology" && e.message.contains("fabric@1 active")),
        "{audit:?}"
    );
    // Again: a no-op.
    let r = one(&mut h, 6, set("fabric", "1"));
    assert!(r.duplicate && r.error.is_none(), "{r:?}");
    assert_eq!(h.reader().meta(META_TOPOLOGY_REV).expect("rev"), 1);
    // Clear, then clearing again is a no-op.
    let r = one(&mut h, 7, set("", ""));
    assert!(r.error.is_none() && !r.duplicate, "{r:?}");
    assert!(h.reader().active_topology().expect("read").is_none());
    assert_eq!(h.reader().meta(META_TOPOLOGY_REV).expect("rev"), 2, "a clear counts: no bootstrap after it");
    assert!(one(&mut h, 8, set("", "")).duplicate);
    refused(&mut h, 9, set("fabric", "bad version!"), Code::InvalidArgument, "not allowed");
}

#[test]
fn a_chunked_topology_is_activated_only_when_every_chunk_is_stored() {
    let mut h = harness(TOPOLOGY_COMMAND_VERSION);
    let mut text = String::from("[[tor]]\nname = \"t1\"\nhosts = [\n");
    let mut i = 0;
    while text.len() < CHUNK_BYTES + 100 {
        text.push_str(&format!("\"h{i:07}\",\n"));
        i += 1;
    }
    text.push_str("]\n");
    let bytes = text.into_bytes();
    let rec = record("big", "1", ArtifactType::Topology, &bytes);
    for (i, c) in bytes.chunks(CHUNK_BYTES).enumerate() {
        one(&mut h, 2, Command::CatalogChunk { sha256: rec.sha256.clone(), index: i as u64, data: b64(c) });
    }
    let r = one(&mut h, 3, Command::CatalogPush { artifact: rec.clone(), data: String::new() });
    assert!(r.error.is_none(), "{r:?}");
    assert!(one(&mut h, 4, set("big", "1")).error.is_none());
    // What the leader does with it: every chunk, verified, parsed.
    let reader = h.reader();
    let t = crate::net::fabric::load_verified(&rec.sha256, rec.size, &mut |i| {
        reader.blob_chunk(&rec.sha256, i).map_err(|e| e.to_string())
    })
    .expect("loads");
    assert_eq!(t.host_count(), i);
}

#[test]
fn a_topology_is_never_assigned_nor_rolled_out() {
    let mut h = harness(TOPOLOGY_COMMAND_VERSION);
    one(&mut h, 2, push("fabric", "1", TOML));
    one(&mut h, 2, push("fabric", "2", b"h1,t1\n"));
    let cat = h.reader().catalog_all().expect("catalog");
    assert!(assignment_of(cat.iter(), "h1", None).is_empty());
    for action in [RolloutAction::Start, RolloutAction::Promote] {
        let cmd = Command::Rollout {
            action,
            name: "fabric".into(),
            version: "2".into(),
            target: Target { hosts: vec!["h1".into()], ..Target::default() },
            shadow: false,
            by: "ops".into(),
            reason: "no".into(),
        };
        refused(&mut h, 3, cmd, Code::InvalidArgument, "never assigned to agents or rolled out");
    }
}

#[test]
fn the_active_topology_travels_in_snapshots() {
    let mut a = harness(TOPOLOGY_COMMAND_VERSION);
    one(&mut a, 2, push("fabric", "1", TOML));
    one(&mut a, 3, set("fabric", "1"));
    let snap = a.snapshot();
    let mut b = Harness::new();
    {
        let txn = b.db.begin_write().expect("txn");
        b.fsm.restore_data(&txn, &snap).expect("restore");
        txn.commit().expect("commit");
    }
    assert_eq!(b.snapshot(), snap);
    assert_eq!(a.reader().active_topology().expect("a"), b.reader().active_topology().expect("b"));
    assert_eq!(b.reader().safety_config().expect("safety"), a.reader().safety_config().expect("safety"));
    let mem = MemState::from_snapshot(&snap).expect("mem");
    assert_eq!(mem.topology.as_ref().map(|t| t.name.as_str()), Some("fabric"));
    assert_eq!(mem.snapshot(), snap);
}
