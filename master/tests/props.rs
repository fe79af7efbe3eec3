//! Property tests for what the master takes from outside: REST bodies (findings and commands) parsed and
//! validated as the HTTP front end does, and Raft entries decoded by `Envelope::decode` (arbitrary bytes and
//! byte-mutated real entries). Nothing panics, garbage is a clear error, and what passes stays within the
//! named limits. Case counts are explicit (independent of `PROPTEST_CASES`).

use std::collections::BTreeMap;

use master::api::requests::{self, ObjectCommand};
use master::api::validate::{self, MAX_FINDINGS_PER_BATCH, MAX_LABEL_LEN, MAX_READINGS};
use master::http::{CommandBody, IngestBody};
use master::model::{Command, DecodeError, Envelope, Registration, validate_request_key};
use proptest::prelude::*;
use prost::Message;
use proto::api;
use state_machines::{Finding, Severity};

fn finding(object: &str, rule: &str) -> Finding {
    Finding {
        object: object.parse().expect("id"),
        severity: Severity::Warning,
        checker: "smart".into(),
        version: "1.0.0".into(),
        rule: rule.into(),
        evidence: "seq=001234 reallocated".into(),
        readings: BTreeMap::from([("reallocated".to_string(), "12".to_string())]),
        time_ms: 1_700_000_000_000,
        shadow: false,
    }
}

/// Real REST bodies (as clients send them) to mutate.
fn body_seeds() -> Vec<Vec<u8>> {
    let ingest = IngestBody {
        agent: "agent-1".into(),
        seq: 7,
        epoch: 3,
        findings: vec![finding("disk/h1/sda", "smart.reallocated"), finding("machine/h1", "mce")],
        idempotency_key: Some("client-1:7".into()),
    };
    let command = CommandBody {
        object: "disk/h1/sda".into(),
        kind: "force".into(),
        value: "GOOD".into(),
        by: "alice".into(),
        reason: "replaced".into(),
        ..CommandBody::default()
    };
    let ack = CommandBody {
        object: "machine/h1".into(),
        kind: "ack".into(),
        name: "drained".into(),
        by: "scheduler".into(),
        ..CommandBody::default()
    };
    vec![
        serde_json::to_vec(&ingest).expect("json"),
        serde_json::to_vec(&command).expect("json"),
        serde_json::to_vec(&ack).expect("json"),
    ]
}

/// Real Raft entries of the common commands (ingest, register, an operator command, keyed, tick, alert).
fn entry_seeds() -> Vec<Vec<u8>> {
    let force = requests::object_input(&ObjectCommand {
        kind: "force".into(),
        name: String::new(),
        value: "GOOD".into(),
        by: "alice".into(),
        reason: "replaced".into(),
        success: false,
    })
    .expect("force is valid");
    let ingest = Command::Ingest {
        agent: "agent-1".into(),
        seq: 9,
        findings: vec![finding("disk/h1/sda", "smart.reallocated")],
        epoch: 2,
    };
    vec![
        Envelope::new(1, vec![ingest.clone()]).encode(),
        Envelope::new(
            2,
            vec![Command::Register {
                agent: "agent-1".into(),
                host: "h1".into(),
                objects: vec![Registration {
                    id: "disk/h1/sda".parse().expect("id"),
                    attributes: BTreeMap::from([("model".into(), "HGST".into())]),
                    labels: BTreeMap::new(),
                }],
            }],
        )
        .encode(),
        Envelope::new(3, vec![Command::Object { object: "disk/h1/sda".parse().expect("id"), input: force }])
            .encode(),
        Envelope::new(4, vec![Command::Keyed { key: "client-1:9".into(), cmd: Box::new(ingest) }]).encode(),
        Envelope::new(
            5,
            vec![
                Command::Tick { objects: vec!["machine/h1".parse().expect("id")] },
                Command::Alert { object: "machine/h1".parse().expect("id"), message: "ticket failed".into() },
            ],
        )
        .encode(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // JSON's structural bytes are inserted more often than chance would, so edits reach the typed layers.
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\":,0123456789-.etn\\ ".to_vec())];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len();
        match *e {
            Edit::Set(i, b) if n > 0 => v[i % n] = b,
            Edit::Insert(i, b) => v.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                v.remove(i % n);
            }
            Edit::Truncate(i) => v.truncate(i % (n + 1)),
            _ => {}
        }
    }
    v
}

fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (0..seeds.len(), proptest::collection::vec(edit(), 0..6))
        .prop_map(move |(i, e)| apply(seeds[i].clone(), &e))
}

fn bytes_or_mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..160), mutated(seeds)]
}

/// What the findings endpoint does with a body before anything is proposed: parse, check the key, validate.
fn ingest_body(bytes: &[u8]) -> Result<IngestBody, String> {
    let b: IngestBody = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if let Some(k) = &b.idempotency_key {
        validate_request_key(k).map_err(|e| e.to_string())?;
    }
    validate::ingest(&b.agent, b.seq, &b.findings).map_err(|e| e.message)?;
    Ok(b)
}

/// What the commands endpoint does with a body: parse, the object id, the state machine input.
fn command_body(bytes: &[u8]) -> Result<(), String> {
    let b: CommandBody = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    proto::convert::object_id(&b.object).map_err(|e| e.message)?;
    requests::object_input(&ObjectCommand {
        kind: b.kind,
        name: b.name,
        value: b.value,
        by: b.by,
        reason: b.reason,
        success: b.success,
    })
    .map_err(|e| e.message)?;
    Ok(())
}

/// Real gRPC requests (protobuf bytes) to mutate.
fn grpc_seeds() -> Vec<Vec<u8>> {
    let ingest = api::IngestRequest {
        agent: "agent-1".into(),
        seq: 7,
        findings: vec![proto::convert::finding_to_wire(&finding("disk/h1/sda", "smart.reallocated"))],
        epoch: 3,
    };
    let command = api::CommandRequest {
        object: "disk/h1/sda".into(),
        kind: "force".into(),
        value: "GOOD".into(),
        by: "alice".into(),
        reason: "replaced".into(),
        ..api::CommandRequest::default()
    };
    vec![ingest.encode_to_vec(), command.encode_to_vec()]
}

/// What the gRPC Ingest handler does with a request before anything is proposed.
fn grpc_ingest(bytes: &[u8]) -> Result<Vec<Finding>, String> {
    let req = api::IngestRequest::decode(bytes).map_err(|e| e.to_string())?;
    let findings = req
        .findings
        .into_iter()
        .map(proto::convert::finding_from_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.message)?;
    validate::ingest(&req.agent, req.seq, &findings).map_err(|e| e.message)?;
    Ok(findings)
}

/// What the gRPC Command handler does with a request before anything is proposed.
fn grpc_command(bytes: &[u8]) -> Result<(), String> {
    let req = api::CommandRequest::decode(bytes).map_err(|e| e.to_string())?;
    proto::convert::object_id(&req.object).map_err(|e| e.message)?;
    requests::object_input(&ObjectCommand {
        kind: req.kind,
        name: req.name,
        value: req.value,
        by: req.by,
        reason: req.reason,
        success: req.success,
    })
    .map_err(|e| e.message)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, failure_persistence: None, ..ProptestConfig::default() })]

    /// A findings body that passes holds 1..=MAX_FINDINGS_PER_BATCH findings, each valid by the state
    /// machines' own rules; anything else is an error with a message.
    #[test]
    fn findings_body_is_valid_or_refused(bytes in bytes_or_mutated(body_seeds())) {
        match ingest_body(&bytes) {
            Ok(b) => {
                prop_assert!(!b.findings.is_empty() && b.findings.len() <= MAX_FINDINGS_PER_BATCH);
                for f in &b.findings {
                    prop_assert!(f.validate().is_ok());
                    prop_assert!(f.readings.len() <= MAX_READINGS);
                    prop_assert!(f.rule.len() <= MAX_LABEL_LEN && f.checker.len() <= MAX_LABEL_LEN);
                }
            }
            Err(msg) => prop_assert!(!msg.is_empty()),
        }
    }

    /// A commands body is a valid object command or an error with a message.
    #[test]
    fn commands_body_is_valid_or_refused(bytes in bytes_or_mutated(body_seeds())) {
        if let Err(msg) = command_body(&bytes) {
            prop_assert!(!msg.is_empty());
        }
    }

    /// Any bytes as a protobuf IngestRequest: valid findings within the batch limit, or an error.
    #[test]
    fn grpc_ingest_is_valid_or_refused(bytes in bytes_or_mutated(grpc_seeds())) {
        match grpc_ingest(&bytes) {
            Ok(findings) => {
                prop_assert!(!findings.is_empty() && findings.len() <= MAX_FINDINGS_PER_BATCH);
                prop_assert!(findings.iter().all(|f| f.validate().is_ok()));
            }
            Err(msg) => prop_assert!(!msg.is_empty()),
        }
    }

    /// Any bytes as a protobuf CommandRequest: a valid object command, or an error.
    #[test]
    fn grpc_command_is_valid_or_refused(bytes in bytes_or_mutated(grpc_seeds())) {
        if let Err(msg) = grpc_command(&bytes) {
            prop_assert!(!msg.is_empty());
        }
    }

    /// Any bytes as a Raft entry: an envelope that encodes back to itself, or a decode error; never a panic.
    #[test]
    fn envelope_decode_takes_any_bytes(bytes in bytes_or_mutated(entry_seeds()), knows in 1u32..5) {
        match Envelope::decode_knowing(&bytes, knows) {
            Ok(env) => {
                prop_assert!(env.v >= 1 && env.v <= knows);
                prop_assert!(env.cmds.iter().all(|c| c.version() <= env.v));
                let again = Envelope::decode_knowing(&env.encode(), knows);
                prop_assert_eq!(again.as_ref().ok(), Some(&env));
            }
            Err(DecodeError::TooNew { needs, knows: k }) => prop_assert!(needs > k && k == knows),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// The real seeds themselves pass (so the mutations start from inputs the master accepts).
#[test]
fn seeds_are_accepted() {
    let bodies = body_seeds();
    assert!(ingest_body(&bodies[0]).is_ok());
    assert_eq!(command_body(&bodies[1]), Ok(()));
    assert_eq!(command_body(&bodies[2]), Ok(()));
    let grpc = grpc_seeds();
    assert_eq!(grpc_ingest(&grpc[0]).map(|f| f.len()), Ok(1));
    assert_eq!(grpc_command(&grpc[1]), Ok(()));
    for e in entry_seeds() {
        let env = Envelope::decode(&e).expect("a real entry decodes");
        assert_eq!(env.encode(), e);
    }
}

/// Deeply nested JSON is refused by the parser's recursion limit, not by a stack overflow.
#[test]
fn deeply_nested_bodies_are_refused() {
    let deep = [b"[".repeat(100_000), b"]".repeat(100_000)].concat();
    assert!(ingest_body(&deep).is_err());
    assert!(command_body(&deep).is_err());
    assert!(Envelope::decode(&deep).is_err());
    let mut obj = b"{\"v\":1,\"now_ms\":1,\"cmds\":".to_vec();
    obj.extend(b"[".repeat(100_000));
    assert!(Envelope::decode(&obj).is_err());
}
