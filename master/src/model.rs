//! The replicated data model: the commands that go through Raft (versioned, serde-encoded), and the records
//! the state machine keeps per object, per agent and per change. Everything here is plain data with serde;
//! deciding what a command does is `fsm.rs`, storing it is `store.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use state_machines::{Finding, ObjectId};

use crate::machine::{Input, ObjectState};
use crate::safety::{Level, ProposalFilter, SafetyConfig};

/// The command format version this build writes. Entries with another version are logged and skipped
/// (deterministically, on every node alike), never applied half-understood.
pub const COMMAND_VERSION: u32 = 1;

/// Most findings one ingest call may carry: bounds one Raft entry (findings are at most ~5 KiB each after
/// `Finding::bounded`, so a full batch stays well below the raft layer's ~1 MiB message size in practice).
pub const MAX_FINDINGS_PER_BATCH: usize = 2000;
/// Most objects one register call may carry: a host has a few dozen disks, DIMMs and NICs.
pub const MAX_OBJECTS_PER_REGISTER: usize = 1000;
/// Most labels or attributes per object, and their key/value lengths: inventory data, not payloads.
pub const MAX_MAP_ENTRIES: usize = 64;
pub const MAX_MAP_KEY_LEN: usize = 64;
pub const MAX_MAP_VALUE_LEN: usize = 256;
/// Longest agent id, member address, operator name or reason text.
pub const MAX_TEXT_LEN: usize = 512;
/// History entries kept per object; older ones are dropped and counted in `history_compacted`. Transitions
/// are rare (a disk sees a handful a year), so 256 covers years while bounding a flapping object.
pub const HISTORY_LIMIT: u64 = 256;
/// Most objects one tick command steps (the leader sends more ticks if more deadlines passed).
pub const MAX_TICK_OBJECTS: usize = 1000;
/// Checkers whose latest finding is kept as evidence on one object (a host runs about ten checkers).
pub const MAX_EVIDENCE_CHECKERS: usize = 32;
/// Revisions kept in the change log for watchers to resume from. At the benchmark's 20,000 findings/s this is
/// ~10 s of history; at a real fleet's rate it is hours. Older watchers get COMPACTED and resync.
pub const CHANGELOG_RETAIN: u64 = 200_000;

/// One Raft entry: a batch of commands stamped by the leader with the proposal time. Apply never reads a
/// clock; every node computes the same result from the same entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub now_ms: u64,
    pub cmds: Vec<Command>,
}

impl Envelope {
    pub fn new(now_ms: u64, cmds: Vec<Command>) -> Self {
        Envelope { v: COMMAND_VERSION, now_ms, cmds }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode a committed or proposed entry. Errors are reported, never panicked on.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| format!("undecodable command: {e}"))?;
        if version.v != COMMAND_VERSION {
            return Err(format!("command version {} (this build understands {COMMAND_VERSION})", version.v));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("undecodable command: {e}"))
    }
}

/// Inventory of one object, from an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: ObjectId,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Findings from one agent batch; `agent` empty means "no dedupe" (operators, external detectors).
    Ingest {
        agent: String,
        seq: u64,
        findings: Vec<Finding>,
    },
    Register {
        agent: String,
        host: String,
        objects: Vec<Registration>,
    },
    /// An acknowledgement, operator command, ticket update or action result about one object (a state
    /// machine `Input` other than `Finding`, `Replacement` and `Tick`, which have their own commands).
    Object {
        object: ObjectId,
        input: Input,
    },
    /// The leader's periodic tick for objects whose deadline passed (ack/action timeouts, quiet recovery).
    Tick {
        objects: Vec<ObjectId>,
    },
    /// The leader saw an agent come alive or go silent (heartbeats themselves are not replicated).
    AgentLiveness {
        agent: String,
        host: String,
        alive: bool,
    },
    /// A node became leader and announces where its client APIs listen, so followers can redirect clients.
    Announce {
        id: u64,
        grpc: String,
        http: String,
    },
    /// An operator sets a scope's operating level (clears a latch).
    SetLevel {
        scope: String,
        level: Level,
        by: String,
        reason: String,
    },
    /// An operator returns a scope to automatic drive.
    Release {
        scope: String,
        by: String,
        reason: String,
    },
    /// An operator approves or rejects proposals: the listed ids, or (ids empty) every pending one matching
    /// the filter (at most `safety::MAX_DECIDE`).
    Decide {
        ids: Vec<u64>,
        #[serde(default)]
        filter: ProposalFilter,
        approve: bool,
        by: String,
        reason: String,
    },
    /// Something about an object needs a human (a repair ticket that cannot be filed, ...): recorded in the
    /// object's history and the alert log.
    Alert {
        object: ObjectId,
        message: String,
    },
    /// An operator replaces the safety configuration (quotas, liveness and spike thresholds).
    SetSafety {
        config: SafetyConfig,
        by: String,
        reason: String,
    },
}

/// What applying one command did; returned to the proposer, in command order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdResult {
    /// The cluster revision after the command.
    pub revision: u64,
    pub applied: u32,
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default)]
    pub created: u32,
    #[serde(default)]
    pub updated: u32,
    #[serde(default)]
    pub transitioned: bool,
    #[serde(default)]
    pub state: String,
    /// A deterministic rejection (unknown object, refused by the state machine): `(code, message)`.
    #[serde(default)]
    pub error: Option<(proto::error::Code, String)>,
    /// The transition was held by the safety net (why), and the proposal that records it (0: none, blind).
    #[serde(default)]
    pub held: Option<String>,
    #[serde(default)]
    pub proposal: u64,
    /// Decide: the proposals decided, and those that could not be (id, why).
    #[serde(default)]
    pub decided: Vec<u64>,
    #[serde(default)]
    pub failed: Vec<(u64, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub results: Vec<CmdResult>,
}

/// Everything the master keeps about one object (history lives in its own table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub id: ObjectId,
    pub sm: ObjectState,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The latest finding of each checker about this object.
    #[serde(default)]
    pub evidence: BTreeMap<String, Finding>,
    /// Revision of the last change to this object.
    pub revision: u64,
    pub created_ms: u64,
    /// Sequence number the next history entry gets; entries below `history_next - HISTORY_LIMIT` are gone.
    pub history_next: u64,
    /// How many history entries were compacted away (the summary of older history).
    pub history_compacted: u64,
    pub findings_seen: u64,
}

impl ObjectRecord {
    pub fn history_len(&self) -> u64 {
        self.history_next - self.history_compacted
    }
}

/// One entry of an object's history: a transition or a command about it, with who/what caused it and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub revision: u64,
    pub time_ms: u64,
    pub what: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_state: String,
    pub cause: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One change, as watchers see it. Revisions are dense: every change gets the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub time_ms: u64,
    pub object: String,
    pub what: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grade: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub host: String,
    /// Highest ingest batch sequence applied (dedupe of resent batches).
    pub last_seq: u64,
    pub alive: bool,
    pub since_ms: u64,
    /// The scopes this agent is counted in (from its machine's labels when last written).
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub grpc: String,
    pub http: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_version_check() {
        let e = Envelope::new(
            5,
            vec![Command::AgentLiveness { agent: "a".into(), host: "h".into(), alive: true }],
        );
        assert_eq!(Envelope::decode(&e.encode()), Ok(e.clone()));
        let mut future = e;
        future.v = COMMAND_VERSION + 1;
        let err = Envelope::decode(&future.encode()).expect_err("future version");
        assert!(err.contains("version"), "{err}");
        for garbage in
            [&b""[..], b"{", b"\xff\xfe", b"{\"v\":1}", b"[1,2]", b"{\"v\":1,\"now_ms\":1,\"cmds\":[{}]}"]
        {
            assert!(Envelope::decode(garbage).is_err(), "{garbage:?}");
        }
    }
}
