//! The replicated data model: the commands that go through Raft (versioned, serde-encoded), and the records
//! the state machine keeps per object, per agent and per change. Everything here is plain data with serde;
//! deciding what a command does is `fsm.rs`, storing it is `store.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use state_machines::{Finding, ObjectId};

use crate::catalog::{ArtifactRecord, Target};
pub use crate::evidence::Evidence;
use crate::safety::{Level, ProposalFilter, SafetyConfig};
use crate::sm_seam::{Input, ObjectState};

/// History entries and change events are stored and answered in one shape, defined with the other API
/// views (the wire conversions live in `proto::convert`).
pub use proto::view::{ChangeEvent, HistoryEntry};

/// The newest command version this binary knows (decodes and applies). An entry is stamped with the version
/// its commands need ([`Command::version`], the highest among them), not with this number, so a leader running
/// a newer binary writes entries older members still apply. A member that meets an entry newer than what it
/// knows stops applying (never skips it: replicas of different versions would diverge) until it is upgraded.
/// Version history: 1 = the first command set; 2 = `SetMinCommandVersion`, and findings older than
/// [`MAX_FINDING_AGE_MS`] are refused once the cluster enabled version 2; 3 = [`Command::Keyed`] (idempotent
/// writes: a retried command is applied once) and `Ingest` with an agent `epoch` ([`AGENT_EPOCH_VERSION`]);
/// 4 = the checker catalog ([`CATALOG_COMMAND_VERSION`]: artifacts, rollouts, canary stops, seeding) and
/// `Ingest` carrying shadow findings (older binaries would feed them to state machines).
/// 5 = network localisation (issue 16): `Ingest` carrying findings about `switch`/`link` objects, which
/// older binaries cannot parse ([`NET_COMMAND_VERSION`]).
/// 6 = disk-failure prediction (issue 20): `CatalogPush` of a `model` artifact (older binaries cannot parse
/// the type) and `Ingest` carrying a `predicted-failure` finding (admitted through the model's own spike
/// detector scope, a rule older binaries do not apply) ([`PREDICT_COMMAND_VERSION`]).
/// 7 = network devices in the repair flow (issue 16): a `switch`/`link` entering ERROR files a ticket and
/// `Input::Ticket` applies to it ([`NET_TICKET_COMMAND_VERSION`]); the fabric topology kept in the
/// replicated state ([`TOPOLOGY_COMMAND_VERSION`]).
/// 8 = `Rollout` with the `retire` action: a checker's stable version is unassigned, so it runs nowhere
/// outside a rollout (older binaries cannot parse the action) ([`RETIRE_COMMAND_VERSION`]).
/// 9 = binary entries (issue 17): the leader encodes entries in protobuf (`proto/entry.proto`) once the
/// cluster enabled this version ([`BINARY_ENTRY_VERSION`], see [`binary_entry_bytes`]).
/// 10 = a network device's incident lasts while its recorded ticket is open: a return to GOOD with an open
/// ticket no longer ends it, so a flapping device files one ticket, not one per flap
/// ([`NET_INCIDENT_COMMAND_VERSION`], `state_machines::Rules::net_incident_until_closed`). No new command
/// kind: older binaries would step the same entries differently, so the rule waits for the version.
/// 11 = the safety net's sliding windows (a scope's admitted entries per kind, a checker version's would-be
/// removals, its agents gone silent) are kept as rows of `fsm_counts` with their totals in the scope record,
/// instead of lists inside the record rewritten whole by every entry that adds to them
/// ([`WINDOW_ROWS_VERSION`], `fsm/windows.rs`). No new command kind: the entry that raises the version moves
/// the lists into rows, and one that lowers it below moves them back, so older binaries read lists again.
/// 12 = the cluster's heartbeat secret (`Command::SetBeatSecret`, set once by a leader): each agent seals its
/// heartbeat datagrams with its own key derived from it, handed out over its authenticated calls
/// ([`BEAT_SECRET_VERSION`], `proto::datagram::BeatSecret`).
pub const COMMAND_VERSION: u32 = 12;
/// The command version of the heartbeat secret (`Command::SetBeatSecret`).
pub const BEAT_SECRET_VERSION: u32 = 12;
/// The command version from which the safety net's windows are rows (`fsm/windows.rs`).
pub const WINDOW_ROWS_VERSION: u32 = 11;
/// The command version from which a network incident lasts while its ticket is open.
pub const NET_INCIDENT_COMMAND_VERSION: u32 = 10;
/// The command version of the binary entry format: entries in it are stamped with at least this version.
pub const BINARY_ENTRY_VERSION: u32 = 9;
/// The command version of retiring a checker's stable version (`RolloutAction::Retire`).
pub const RETIRE_COMMAND_VERSION: u32 = 8;
/// The command version of ticket updates about network devices (older binaries refuse them on ERROR).
pub const NET_TICKET_COMMAND_VERSION: u32 = 7;
/// The command version of the replicated fabric topology's commands.
pub const TOPOLOGY_COMMAND_VERSION: u32 = 7;
/// The command version of model pushes and of ingests carrying a `predicted-failure` finding.
pub const PREDICT_COMMAND_VERSION: u32 = 6;
/// The command version of ingests about network devices (`switch/NAME`, `link/A--B`).
pub const NET_COMMAND_VERSION: u32 = 5;
/// The command version of the checker catalog's commands and of ingests that carry shadow findings.
pub const CATALOG_COMMAND_VERSION: u32 = 4;
/// The cluster-wide `min_command_version` of a state that never had one set (clusters created before command
/// versions were enforced, and new ones): only version-1 commands may be proposed until an operator raises it.
pub const DEFAULT_MIN_COMMAND_VERSION: u32 = 1;

/// Why a committed or proposed entry cannot be decoded by this binary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Garbage, or commands that do not match the version the entry claims: every member of every version
    /// refuses it alike, so it is skipped deterministically.
    #[error("undecodable command: {0}")]
    Undecodable(String),
    /// The entry needs a newer binary: this member must stop applying (and be upgraded), never skip it.
    #[error("entry needs command version {needs}, this binary knows up to {knows}: upgrade this node")]
    TooNew { needs: u32, knows: u32 },
}

/// Why a command may not be proposed now (checked before it reaches Raft).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "{kind} needs command version {needs}, but the cluster's min_command_version is {min}: upgrade every \
         master, then raise it (set-min-command-version {needs})"
    )]
    NotEnabled { kind: &'static str, needs: u32, min: u32 },
    #[error("min_command_version {asked} refused: this leader knows command versions 1..={knows}")]
    Unknown { asked: u32, knows: u32 },
}

/// Whether `cmd` may be proposed in a cluster whose replicated `min_command_version` is `min`: its kind must be
/// enabled cluster-wide, and a new `min_command_version` must be one this (leader's) binary knows.
/// `SetMinCommandVersion` itself is always proposable: it is the switch (its entry stops members that are
/// still too old, which is what the operator asked for).
pub fn check_proposable(cmd: &Command, min: u32) -> Result<(), VersionError> {
    if let Command::SetMinCommandVersion { version, .. } = cmd {
        if *version == 0 || *version > COMMAND_VERSION {
            return Err(VersionError::Unknown { asked: *version, knows: COMMAND_VERSION });
        }
        return Ok(());
    }
    if cmd.version() > min {
        return Err(VersionError::NotEnabled { kind: cmd.kind(), needs: cmd.version(), min });
    }
    Ok(())
}

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
/// Largest forward step of an agent's batch sequence over the last one applied. The agent numbers batches
/// with its outbox sequence, which grows by one per finding queued (also while the master is unreachable and
/// the outbox evicts), so a real agent moves by thousands at most between two delivered batches; 10^8 is
/// years of a busy host's findings. A larger jump (a forged or corrupt 2^64-1) is refused: accepted, it would
/// make every later batch of that agent look like a duplicate and be dropped.
pub const MAX_SEQ_STEP: u64 = 100_000_000;
/// How far a finding's `time_ms` may lie ahead of the entry's `now_ms` (the leader's clock): agents' clocks
/// are NTP-synced to within seconds; ten minutes leaves room for a badly drifting one. A finding from the
/// future would stay "fresh" forever (evidence eviction and stale-finding checks use its time).
pub const MAX_FINDING_FUTURE_MS: u64 = 10 * 60_000;
/// How far a finding's `time_ms` may lie behind the entry's `now_ms`, once `min_command_version` >= 2 (a rule
/// of command version 2: older binaries accept any past time, so it waits until every member knows it). An
/// agent's outbox keeps its most severe findings while the master is unreachable, possibly for days; thirty
/// days is beyond any outage worth replaying, while a time from 1970 or a year back is a broken clock.
pub const MAX_FINDING_AGE_MS: u64 = 30 * 24 * 3_600_000;
/// The command version of an `Ingest` carrying an agent epoch: a new epoch resets the agent's batch
/// sequence (a wiped agent starts again at 1), which older binaries would answer `duplicate`. Until the
/// cluster's `min_command_version` reaches it the API layer proposes agent batches without their epoch.
pub const AGENT_EPOCH_VERSION: u32 = 3;
/// Epochs an agent record remembers as retired (the most recent first): a batch of one of them, arriving
/// after a newer epoch was seen, is refused rather than applied out of order. A data dir is wiped a few
/// times in a host's life; eight covers restored backups and re-images without growing the record.
pub const MAX_RETIRED_EPOCHS: usize = 8;
/// The command version whose rules include [`MAX_FINDING_AGE_MS`].
pub const FINDING_AGE_RULE_VERSION: u64 = 2;
/// Idempotency keys ([`Command::Keyed`]) the replicated state remembers at most: a client's retry comes within
/// seconds to minutes of its first try, and 100,000 keys (~40 MB of results in the worst case, usually a few
/// MB) covers minutes of the benchmark's write rate and days of a real fleet's operator writes. Beyond it the
/// oldest keys are evicted (in key-sequence order, identically on every member).
pub const MAX_REQUEST_KEYS: u64 = 100_000;
/// How long a key is remembered (by the entries' `now_ms`): longer than any client retries (the CLI gives up
/// after minutes), short enough that keys do not pile up. A retry after eviction is applied again.
pub const REQUEST_KEY_WINDOW_MS: u64 = 24 * 3_600_000;
/// Most keys evicted per keyed command: each command adds one key, so evicting up to 16 keeps the count at
/// [`MAX_REQUEST_KEYS`] and catches up on expired keys without making one entry's apply unbounded.
pub const MAX_REQUEST_EVICT_PER_COMMAND: usize = 16;
/// The command version that introduced [`Command::Keyed`].
pub const KEYED_COMMAND_VERSION: u32 = 3;
/// Longest idempotency key: a client id plus a sequence, or a random request id (a UUID is 36 bytes).
pub const MAX_REQUEST_KEY_LEN: usize = 128;

/// Why an idempotency key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestKeyError {
    #[error("idempotency key must be 1..={MAX_REQUEST_KEY_LEN} bytes, got {0}")]
    Length(usize),
    #[error("idempotency key may hold only A-Z a-z 0-9 . _ : - (found {0:?})")]
    Char(char),
}

/// Whether `key` is a valid idempotency key: 1..=[`MAX_REQUEST_KEY_LEN`] bytes of `A-Z a-z 0-9 . _ : -`.
pub fn validate_request_key(key: &str) -> Result<(), RequestKeyError> {
    if key.is_empty() || key.len() > MAX_REQUEST_KEY_LEN {
        return Err(RequestKeyError::Length(key.len()));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(RequestKeyError::Char(c));
    }
    Ok(())
}

/// What the replicated state remembers about one idempotency key: when it was first applied (entry time and
/// its place in the eviction order) and the result its proposer got, handed again to a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub result: CmdResult,
    /// [`command_digest`] of the command first applied under this key: a later command with the same key
    /// and another digest is refused (CONFLICT: the key was reused for a different request) instead of being
    /// answered with this result. Absent in records written before digests (those answer any retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<u32>,
}

/// The digest of a keyed command's body that [`RequestRecord::digest`] keeps: CRC-32C of its JSON encoding
/// (deterministic: plain data, ordered maps). It tells a retry (same bytes) from a client that reused a key
/// for another request; 32 bits make an accidental match of two different bodies a 1-in-4-billion event,
/// enough for a check against misuse (not against an adversary, who could send any key anyway).
pub fn command_digest(cmd: &Command) -> u32 {
    // Serializing plain data with string keys cannot fail.
    crate::checksum::crc32c(&serde_json::to_vec(cmd).unwrap_or_default())
}

/// Revisions kept in the change log for watchers to resume from. At the benchmark's 20,000 findings/s this is
/// ~10 s of history; at a real fleet's rate it is hours. Older watchers get COMPACTED and resync.
pub const CHANGELOG_RETAIN: u64 = 200_000;
/// Bytes the change log may hold (its rows' encoded events), whatever the revision count: 200,000 revisions
/// of ordinary findings are ~100 MB, but entries of big events (registrations with many attributes, bulk
/// operator writes) are larger, and issue 17 bounds the data dir. Beyond it the oldest rows go first (never
/// the newest row); watchers behind get COMPACTED and resync, as with the revision window.
pub const CHANGELOG_MAX_BYTES: u64 = 256 << 20;

/// The change log's bounds, equal on every member (compaction happens during apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangelogLimits {
    /// Revisions kept: [`CHANGELOG_RETAIN`].
    pub retain: u64,
    /// Row bytes kept: [`CHANGELOG_MAX_BYTES`].
    pub max_bytes: u64,
}

impl Default for ChangelogLimits {
    fn default() -> Self {
        ChangelogLimits { retain: CHANGELOG_RETAIN, max_bytes: CHANGELOG_MAX_BYTES }
    }
}

/// One Raft entry: a batch of commands stamped by the leader with the proposal time. Apply never reads a
/// clock; every node computes the same result from the same entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub now_ms: u64,
    #[serde(deserialize_with = "wire::commands")]
    pub cmds: Vec<Command>,
}

/// Decoding an entry's commands without serde's buffering of internally tagged enums for the hot command.
///
/// `Command` is tagged by a `"type"` key inside each command's object, so its derived `Deserialize` first
/// reads the whole object into serde's private `Content` tree (every string copied once more) and then
/// deserializes the variant from that tree: about a fifth of a follower's Raft thread under batched ingest
/// (`perf`, 2026-12-04). Our encoders write the tag first, so the tag is read first here: an `ingest`
/// decodes straight into its fields; anything else (another command, or a tag that is not first, which no
/// encoder of ours writes) is replayed into the derived `Deserialize`, which stays the definition of what is
/// accepted. `model::tests::the_wire_decoder_accepts_exactly_what_the_derived_one_does` compares both.
mod wire {
    use serde::de::value::{MapAccessDeserializer, StringDeserializer};
    use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer};
    use state_machines::Finding;

    use super::Command;

    /// The `cmds` list of an entry.
    pub fn commands<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Command>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<Command>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of commands")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Command>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(One(c)) = seq.next_element()? {
                    out.push(c);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(List)
    }

    /// One command.
    pub struct One(pub Command);

    impl<'de> Deserialize<'de> for One {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<One, D::Error> {
            d.deserialize_map(OneVisitor)
        }
    }

    /// The fields of `Command::Ingest`, with the same serde attributes; `type` again is a duplicate tag.
    #[derive(Deserialize)]
    struct IngestFields {
        agent: String,
        seq: u64,
        findings: Vec<Finding>,
        #[serde(default)]
        epoch: u64,
        #[serde(rename = "type", default)]
        again: Option<IgnoredAny>,
    }

    struct OneVisitor;

    impl<'de> Visitor<'de> for OneVisitor {
        type Value = One;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a command")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<One, A::Error> {
            let Some(first) = map.next_key::<String>()? else {
                return Command::deserialize(MapAccessDeserializer::new(map)).map(One);
            };
            if first != "type" {
                let replay = Replay { key: Some(first), value: None, inner: map };
                return Command::deserialize(MapAccessDeserializer::new(replay)).map(One);
            }
            let tag: String = map.next_value()?;
            if tag == "ingest" {
                let f = IngestFields::deserialize(MapAccessDeserializer::new(map))?;
                if f.again.is_some() {
                    return Err(A::Error::duplicate_field("type"));
                }
                return Ok(One(Command::Ingest {
                    agent: f.agent,
                    seq: f.seq,
                    findings: f.findings,
                    epoch: f.epoch,
                }));
            }
            let replay = Replay { key: Some(first), value: Some(tag), inner: map };
            Command::deserialize(MapAccessDeserializer::new(replay)).map(One)
        }
    }

    /// A map whose first key (and, when already read, its string value) is handed out again before the rest.
    struct Replay<A> {
        key: Option<String>,
        value: Option<String>,
        inner: A,
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
        type Error = A::Error;
        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
            match self.key.take() {
                Some(k) => seed.deserialize(StringDeserializer::<A::Error>::new(k)).map(Some),
                None => self.inner.next_key_seed(seed),
            }
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
            match self.value.take() {
                Some(v) => seed.deserialize(StringDeserializer::<A::Error>::new(v)),
                None => self.inner.next_value_seed(seed),
            }
        }
    }
}

impl Envelope {
    /// An entry stamped with the version its commands need.
    pub fn new(now_ms: u64, cmds: Vec<Command>) -> Self {
        let v = cmds.iter().map(Command::version).max().unwrap_or(DEFAULT_MIN_COMMAND_VERSION);
        Envelope { v, now_ms, cmds }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The entry in the binary format ([`binary_entry_bytes`]), stamped with at least
    /// [`BINARY_ENTRY_VERSION`].
    pub fn encode_binary(&self) -> Vec<u8> {
        let cmds: Vec<Vec<u8>> = self.cmds.iter().map(encode_command_binary).collect();
        binary_entry_bytes(self.now_ms, self.v.max(BINARY_ENTRY_VERSION), cmds.iter().map(Vec::as_slice))
    }

    /// Decode a committed or proposed entry with this binary's [`COMMAND_VERSION`].
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        Self::decode_knowing(bytes, COMMAND_VERSION)
    }

    /// Decode as a binary that knows command versions up to `knows` would (tests play older binaries).
    /// Errors are reported, never panicked on.
    pub fn decode_knowing(bytes: &[u8], knows: u32) -> Result<Envelope, DecodeError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let undecodable = |e: serde_json::Error| DecodeError::Undecodable(e.to_string());
        // Entries start `{"v":N,` (`entry_bytes` and `encode` both write `v` first): read N from there
        // instead of parsing the whole entry twice (a `Version` parse scans every command's strings to skip
        // them: about a fifth of a follower's Raft thread under batched ingest). Only a known version takes
        // this path, and the full parse below still checks every byte; anything else is classified exactly
        // as before, by the whole-entry `Version` parse.
        let version = match peek_version(bytes) {
            Some(v) if v != 0 && v <= knows => Version { v },
            _ => serde_json::from_slice(bytes).map_err(undecodable)?,
        };
        if version.v == 0 {
            return Err(DecodeError::Undecodable("command version 0".into()));
        }
        if version.v > knows {
            return Err(DecodeError::TooNew { needs: version.v, knows });
        }
        let env = match binary::payload(bytes) {
            Some(_) if version.v < BINARY_ENTRY_VERSION => {
                return Err(DecodeError::Undecodable(format!(
                    "a binary entry of command version {} (binary entries are version {BINARY_ENTRY_VERSION} \
                     or later)",
                    version.v
                )));
            }
            Some(b64) => binary::decode(version.v, b64)?,
            None => serde_json::from_slice(bytes).map_err(undecodable)?,
        };
        // A command newer than the entry claims would be read by newer members and refused by older ones.
        if let Some(c) = env.cmds.iter().find(|c| c.version() > env.v) {
            return Err(DecodeError::Undecodable(format!(
                "{} needs command version {} in an entry of version {}",
                c.kind(),
                c.version(),
                env.v
            )));
        }
        Ok(env)
    }
}

/// The `N` of an entry that starts exactly `{"v":N,` (N a plain decimal u32); `None` for anything else.
fn peek_version(bytes: &[u8]) -> Option<u32> {
    let rest = bytes.strip_prefix(b"{\"v\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 10 || rest.get(digits) != Some(&b',') || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The bytes of an entry from commands already encoded one by one (the leader's batcher joins them without
/// decoding); `v` is the highest [`Command::version`] among them.
pub fn entry_bytes<'a>(now_ms: u64, v: u32, cmds: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut entry = format!("{{\"v\":{v},\"now_ms\":{now_ms},\"cmds\":[").into_bytes();
    for (i, c) in cmds.into_iter().enumerate() {
        if i > 0 {
            entry.push(b',');
        }
        entry.extend_from_slice(c);
    }
    entry.extend_from_slice(b"]}");
    entry
}

/// The bytes of a binary entry (command version >= [`BINARY_ENTRY_VERSION`]) from commands already encoded
/// one by one with [`encode_command_binary`]: a protobuf `Entry` (`proto/entry.proto`) made by joining them
/// (a repeated field is its elements one after another), carried base64 in `{"v":N,"pb":"..."}`.
///
/// Why the JSON wrapper: binaries before command version 9 read every entry as JSON and skip what does not
/// parse as garbage, on every member alike. Raw protobuf would be skipped by such a binary (a member
/// downgraded after the cluster enabled version 9), so its state would silently diverge; wrapped, the entry
/// parses as JSON, its `v` is too new, and that member stops until it is upgraded (as for any newer entry).
/// Base64 adds a third to the entry's bytes; an entry is still smaller than its JSON
/// (`tests::binary_entries_decode_to_the_same_commands_as_json`). Its CPU cost was not measured apart.
pub fn binary_entry_bytes<'a>(now_ms: u64, v: u32, cmds: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    use base64::Engine as _;
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut pb = Vec::with_capacity(256);
    if now_ms != 0 {
        encode_key(1, WireType::Varint, &mut pb);
        encode_varint(now_ms, &mut pb);
    }
    for c in cmds {
        encode_key(2, WireType::LengthDelimited, &mut pb);
        encode_varint(c.len() as u64, &mut pb);
        pb.extend_from_slice(c);
    }
    let head = format!("{{\"v\":{v},\"pb\":\"");
    let mut entry = Vec::with_capacity(head.len() + pb.len().div_ceil(3) * 4 + 2);
    entry.extend_from_slice(head.as_bytes());
    let start = entry.len();
    entry.resize(start + pb.len().div_ceil(3) * 4, 0);
    let n = base64::engine::general_purpose::STANDARD.encode_slice(&pb, &mut entry[start..]).unwrap_or(0);
    entry.truncate(start + n);
    entry.extend_from_slice(b"\"}");
    entry
}

/// One command in the binary entry format (a protobuf `Command` of `proto/entry.proto`), to be joined by
/// [`binary_entry_bytes`].
pub fn encode_command_binary(cmd: &Command) -> Vec<u8> {
    use prost::Message as _;
    binary::to_wire(cmd).encode_to_vec()
}

/// The bytes one command of `len` encoded bytes adds to an entry: a comma in JSON; in a binary entry its
/// protobuf field key and length (at most 6 bytes), base64 (4 bytes per 3, rounded up).
pub fn entry_cost(len: usize, binary: bool) -> usize {
    if binary { (len + 6).div_ceil(3) * 4 } else { len + 1 }
}

/// The binary entry format: commands to and from `proto/entry.proto` messages. The hot command (an agent's
/// findings) is the agent's own wire message; the rest (operator and leader commands, rare) are their JSON
/// encoding inside the message, so their meaning stays defined in one place (`Command`'s serde).
mod binary {
    use base64::Engine as _;
    use prost::Message as _;
    use proto::entry;

    use super::{Command, DecodeError, Envelope};

    /// The base64 text of a binary entry: exactly `{"v":N,"pb":"B64"}` as [`super::binary_entry_bytes`]
    /// writes it; `None` for anything else (a JSON entry).
    pub fn payload(bytes: &[u8]) -> Option<&[u8]> {
        let rest = bytes.strip_prefix(b"{\"v\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        rest[digits..].strip_prefix(b",\"pb\":\"")?.strip_suffix(b"\"}")
    }

    pub fn decode(v: u32, b64: &[u8]) -> Result<Envelope, DecodeError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            DecodeError::Undecodable(format!("binary entry: {what}: {e}"))
        };
        let pb = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| bad("base64", &e))?;
        let e = entry::Entry::decode(pb.as_slice()).map_err(|e| bad("protobuf", &e))?;
        let cmds = e.cmds.into_iter().map(from_wire).collect::<Result<Vec<_>, _>>()?;
        Ok(Envelope { v, now_ms: e.now_ms, cmds })
    }

    pub fn to_wire(cmd: &Command) -> entry::Command {
        use entry::command::Cmd;
        let c = match cmd {
            Command::Ingest { agent, seq, findings, epoch } => Cmd::Ingest(proto::api::IngestRequest {
                agent: agent.clone(),
                seq: *seq,
                findings: findings.iter().map(proto::convert::finding_to_wire).collect(),
                epoch: *epoch,
            }),
            Command::Keyed { key, cmd } => {
                Cmd::Keyed(Box::new(entry::Keyed { key: key.clone(), cmd: Some(Box::new(to_wire(cmd))) }))
            }
            // Serializing plain data with string keys cannot fail.
            other => Cmd::Json(serde_json::to_vec(other).unwrap_or_default()),
        };
        entry::Command { cmd: Some(c) }
    }

    pub fn from_wire(c: entry::Command) -> Result<Command, DecodeError> {
        use entry::command::Cmd;
        let bad = |m: String| DecodeError::Undecodable(format!("binary entry: {m}"));
        match c.cmd {
            None => Err(bad("a command of no kind".into())),
            Some(Cmd::Ingest(r)) => {
                let findings = r
                    .findings
                    .into_iter()
                    .map(|f| proto::convert::finding_from_wire(f).map_err(|e| bad(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Command::Ingest { agent: r.agent, seq: r.seq, findings, epoch: r.epoch })
            }
            Some(Cmd::Keyed(k)) => {
                let inner = k.cmd.ok_or_else(|| bad("a keyed command without its command".into()))?;
                Ok(Command::Keyed { key: k.key, cmd: Box::new(from_wire(*inner)?) })
            }
            Some(Cmd::Json(j)) => serde_json::from_slice(&j).map_err(|e| bad(e.to_string())),
        }
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
        /// The agent's epoch (0: none, dedupe by `seq` alone). Non-zero makes this a command of version
        /// [`AGENT_EPOCH_VERSION`].
        #[serde(default, skip_serializing_if = "is_zero")]
        epoch: u64,
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
    /// An operator enables command versions up to `version` cluster-wide, once every master runs a binary
    /// that knows them (see ARCHITECTURE.md "Upgrading masters"). Command version 2.
    SetMinCommandVersion {
        version: u32,
        by: String,
        reason: String,
    },
    /// `cmd` with the client's idempotency key: applied once; a retry with the same key within the window
    /// ([`MAX_REQUEST_KEYS`], [`REQUEST_KEY_WINDOW_MS`]) is answered with the first result and
    /// `duplicate: true`. Command version 3.
    Keyed {
        key: String,
        cmd: Box<Command>,
    },
    /// One chunk (index `index`, at most `catalog::CHUNK_BYTES`, base64) of an artifact's bytes, staged by
    /// the API layer before the [`Command::CatalogPush`] of an artifact larger than one chunk. Version 4.
    CatalogChunk {
        sha256: String,
        index: u64,
        data: String,
    },
    /// Store `NAME@VERSION` (its bytes inline as base64 when they fit one chunk, else staged by chunks).
    /// The same bytes again: a duplicate, no-op; other bytes: CONFLICT. Version 4.
    CatalogPush {
        artifact: ArtifactRecord,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        data: String,
    },
    /// The leader seeds a new cluster's catalog with the agent's embedded rule set and profiles as their
    /// stable version 1 (once: later seeds are no-ops). Version 4.
    CatalogSeed {
        items: Vec<SeedItem>,
    },
    /// An operator's rollout change (start, widen, pause, resume, promote, rollback). Version 4; `retire`
    /// (unassign the stable version) [`RETIRE_COMMAND_VERSION`].
    Rollout {
        action: RolloutAction,
        name: String,
        version: String,
        #[serde(default)]
        target: Target,
        #[serde(default)]
        shadow: bool,
        by: String,
        reason: String,
    },
    /// The leader closed a canary window of `name@version`: records the deviation figures, starts the next
    /// window and, when `pause`, pauses the rollout with an alert. Version 4.
    CanaryCheck {
        name: String,
        version: String,
        deviation: proto::view::DeviationView,
        pause: bool,
    },
    /// An operator (or a leader bootstrapping from its `[topology] file`) makes the catalog's topology
    /// artifact `name@version` the fabric every leader localises with; `name` empty clears it (leaders fall
    /// back to their file, then to labels). Refused unless the artifact is stored, of type topology and its
    /// chunks are all present. Version [`TOPOLOGY_COMMAND_VERSION`].
    SetTopology {
        #[serde(default)]
        name: String,
        #[serde(default)]
        version: String,
        by: String,
        reason: String,
    },
    /// The leader sets the cluster's heartbeat secret once (32 random bytes as 64 hex digits), from which
    /// each agent's own datagram key is derived (`proto::datagram::BeatSecret`). Refused once one is set.
    /// Version [`BEAT_SECRET_VERSION`].
    SetBeatSecret {
        secret: SecretHex,
    },
}

/// A secret as hex in a command: serialized as the string, never shown by `Debug` (commands are printed
/// in logs and test failures).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHex(String);

impl SecretHex {
    pub fn new(hex: String) -> SecretHex {
        SecretHex(hex)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretHex({} hex digits)", self.0.len())
    }
}

/// The replicated pointer to the active fabric topology (`fsm_settings` row [`crate::store::SETTING_TOPOLOGY`]):
/// a topology artifact of the catalog, with its sha256 so a leader verifies the bytes it loads and caches
/// the parse by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveTopology {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub set_by: String,
    pub set_ms: u64,
    #[serde(default)]
    pub reason: String,
}

/// One seeded artifact: its record and bytes (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedItem {
    pub artifact: ArtifactRecord,
    pub data: String,
}

/// What a rollout command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Start,
    Widen,
    Pause,
    Resume,
    Promote,
    Rollback,
    /// Unassign the checker's stable version (named, so a stale command retires nothing else): hosts outside
    /// a rollout run no version of it. Refused while a rollout of it is in progress.
    Retire,
}

impl RolloutAction {
    pub fn parse(s: &str) -> Result<RolloutAction, String> {
        Ok(match s {
            "start" => RolloutAction::Start,
            "widen" => RolloutAction::Widen,
            "pause" => RolloutAction::Pause,
            "resume" => RolloutAction::Resume,
            "promote" => RolloutAction::Promote,
            "rollback" => RolloutAction::Rollback,
            "retire" => RolloutAction::Retire,
            o => {
                return Err(format!(
                    "unknown rollout action {o:?} (start, widen, pause, resume, promote, rollback, retire)"
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Start => "start",
            RolloutAction::Widen => "widen",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
            RolloutAction::Rollback => "rollback",
            RolloutAction::Retire => "retire",
        }
    }
}

impl Command {
    /// The command version that introduced this command's encoding and meaning: an entry holding it needs a
    /// binary that knows at least this version. Changing what an existing command means or how it is encoded
    /// is a new version too.
    pub fn version(&self) -> u32 {
        match self {
            Command::SetMinCommandVersion { .. } => 2,
            Command::Keyed { cmd, .. } => cmd.version().max(KEYED_COMMAND_VERSION),
            Command::Ingest { findings, .. }
                if findings.iter().any(|f| f.rule == crate::safety::PREDICTED_FAILURE_RULE) =>
            {
                PREDICT_COMMAND_VERSION
            }
            Command::Ingest { findings, .. } if findings.iter().any(|f| f.object.kind().is_network()) => {
                NET_COMMAND_VERSION
            }
            Command::Ingest { findings, .. } if findings.iter().any(|f| f.shadow) => CATALOG_COMMAND_VERSION,
            Command::CatalogPush { artifact, .. } if artifact.kind == crate::catalog::ArtifactType::Model => {
                PREDICT_COMMAND_VERSION
            }
            Command::CatalogPush { artifact, .. }
                if artifact.kind == crate::catalog::ArtifactType::Topology =>
            {
                TOPOLOGY_COMMAND_VERSION
            }
            Command::SetTopology { .. } => TOPOLOGY_COMMAND_VERSION,
            Command::SetBeatSecret { .. } => BEAT_SECRET_VERSION,
            Command::Rollout { action: RolloutAction::Retire, .. } => RETIRE_COMMAND_VERSION,
            Command::Ingest { epoch, .. } if *epoch != 0 => AGENT_EPOCH_VERSION,
            // Older binaries refuse ticket updates outside REPAIR; a network device's are recorded from 7 on.
            Command::Object { object, input: Input::Ticket { .. } } if object.kind().is_network() => {
                NET_TICKET_COMMAND_VERSION
            }
            Command::CatalogChunk { .. }
            | Command::CatalogPush { .. }
            | Command::CatalogSeed { .. }
            | Command::Rollout { .. }
            | Command::CanaryCheck { .. } => CATALOG_COMMAND_VERSION,
            _ => 1,
        }
    }

    /// The command's name in errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Ingest { .. } => "ingest",
            Command::Register { .. } => "register",
            Command::Object { .. } => "object",
            Command::Tick { .. } => "tick",
            Command::AgentLiveness { .. } => "agent_liveness",
            Command::Announce { .. } => "announce",
            Command::SetLevel { .. } => "set_level",
            Command::Release { .. } => "release",
            Command::Decide { .. } => "decide",
            Command::Alert { .. } => "alert",
            Command::SetSafety { .. } => "set_safety",
            Command::SetMinCommandVersion { .. } => "set_min_command_version",
            Command::Keyed { .. } => "keyed",
            Command::CatalogChunk { .. } => "catalog_chunk",
            Command::CatalogPush { .. } => "catalog_push",
            Command::CatalogSeed { .. } => "catalog_seed",
            Command::Rollout { .. } => "rollout",
            Command::CanaryCheck { .. } => "canary_check",
            Command::SetTopology { .. } => "set_topology",
            Command::SetBeatSecret { .. } => "set_beat_secret",
        }
    }
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

/// The part of a stored [`ObjectRecord`] the followed indexes read (orders, deadlines): its id, state
/// machine and labels. Decoded without building the record's attributes and evidence (most of its bytes),
/// so keeping the indexes warm costs a fraction of reading whole records.
#[derive(Debug, Deserialize)]
pub struct ObjectCore {
    pub id: ObjectId,
    pub sm: ObjectState,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Everything the master keeps about one object (history lives in its own table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub id: ObjectId,
    /// Its fields at their defaults are left out of the stored JSON, as are empty maps here; every reader
    /// since the first release defaults them. A registered, never-reported disk of `bench fleet` (two
    /// labels) is 246 bytes of JSON instead of 416 (`records_leave_defaults_out_and_read_both_forms_alike`).
    pub sm: ObjectState,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The latest finding of each checker about this object (read from the store, each finding stays the
    /// JSON it was stored as until something looks inside: see [`Evidence`]).
    #[serde(default, skip_serializing_if = "Evidence::is_empty")]
    pub evidence: Evidence,
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
    /// The agent's current epoch (0: never sent one); `last_seq` counts within it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// Epochs replaced by a newer one, most recent first, at most [`MAX_RETIRED_EPOCHS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_epochs: Vec<u64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub grpc: String,
    pub http: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `bench fleet`'s registered disk (two labels, never reported on) as the master wrote it
    /// before defaults were left out.
    const VERBOSE_QUIET_DISK: &str = r#"{"id":"disk/fleet-000007/d3","sm":{"id":"disk/fleet-000007/d3","state":"GOOD","since_ms":1764930000000,"grade":null,"attrs":{},"last_evidence":null,"last_cause":null,"pending_ack":null,"pending_action":null,"hysteresis":{},"fix_history_ms":[]},"labels":{"pool":"fleet","rack":"r007"},"attributes":{},"evidence":{},"revision":123456,"created_ms":1764930000000,"history_next":1,"history_compacted":0,"findings_seen":0}"#;

    #[test]
    fn records_leave_defaults_out_and_read_both_forms_alike() {
        let old: ObjectRecord = serde_json::from_str(VERBOSE_QUIET_DISK).expect("the verbose form reads");
        let compact = crate::store::encode(&old);
        let back: ObjectRecord = serde_json::from_slice(&compact).expect("the compact form reads");
        assert_eq!(back, old);
        let text = String::from_utf8(compact.clone()).expect("utf-8");
        for absent in
            ["grade", "attrs", "last_evidence", "last_cause", "pending", "hysteresis", "fix_history"]
        {
            assert!(!text.contains(absent), "{absent} at its default is left out: {text}");
        }
        assert!(text.contains(r#""history_compacted":0"#), "fields without a reader default stay: {text}");
        eprintln!("quiet disk record: {} bytes, was {}", compact.len(), VERBOSE_QUIET_DISK.len());
        assert!(compact.len() * 10 < VERBOSE_QUIET_DISK.len() * 6, "{} bytes", compact.len());
        // A busy object keeps every field that is set, and reads back equal.
        let mut busy = old.clone();
        busy.sm.grade = Some(state_machines::Severity::Warning);
        busy.sm.attrs.insert("serial".into(), "S1".into());
        busy.sm.hysteresis.last_fault_ms = Some(7);
        busy.sm.fix_history_ms = vec![1, 2];
        busy.sm.last_cause = Some(state_machines::Cause::Timeout { what: "ack".into() });
        busy.attributes.insert("model".into(), "M".into());
        let f: Finding = serde_json::from_str(
            r#"{"object":"disk/fleet-000007/d3","severity":"WARNING","checker":"smart","version":"1","rule":"r","evidence":"e","time_ms":5}"#,
        )
        .expect("finding");
        busy.evidence.insert("smart".into(), f);
        let back: ObjectRecord = serde_json::from_slice(&crate::store::encode(&busy)).expect("busy reads");
        assert_eq!(back, busy);
    }

    /// A disk record with three checkers' evidence, SMART readings among them, as a fleet's disks carry.
    fn busy_disk() -> ObjectRecord {
        let mut rec: ObjectRecord = serde_json::from_str(VERBOSE_QUIET_DISK).expect("reads");
        rec.sm.grade = Some(state_machines::Severity::Good);
        for (k, v) in [
            ("serial", "ZA1B2C3D"),
            ("model", "ST8000NM0055"),
            ("firmware", "SN04"),
            ("capacity", "8001563222016"),
        ] {
            rec.attributes.insert(k.into(), v.into());
        }
        let finding = |checker: &str, evidence: &str, readings: &[(&str, &str)]| Finding {
            object: rec.id.clone(),
            severity: state_machines::Severity::Good,
            checker: checker.into(),
            version: "1.2.0".into(),
            rule: format!("{checker}.ok"),
            evidence: evidence.into(),
            readings: readings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            time_ms: 1_764_930_123_456,
            shadow: false,
        };
        let smart: Vec<(String, String)> =
            [1, 5, 7, 9, 10, 12, 187, 188, 190, 193, 194, 197, 198, 199, 240, 241, 242]
                .iter()
                .map(|n| (format!("smart_{n}_raw"), format!("{}", n * 7919 % 100_003)))
                .collect();
        let smart: Vec<(&str, &str)> = smart.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        rec.evidence.insert(
            "disk".into(),
            finding("disk", "SMART overall-health self-assessment test result: PASSED", &smart),
        );
        rec.evidence.insert(
            "disk-stats".into(),
            finding(
                "disk-stats",
                "await 3.1 ms, util 12%",
                &[("await_ms", "3.1"), ("util_pct", "12"), ("iops", "412")],
            ),
        );
        rec.evidence
            .insert("kernel-log".into(), finding("kernel-log", "no matching kernel lines in 60 s", &[]));
        rec
    }

    /// The record as it was decoded and encoded before its evidence was kept as stored (every finding built).
    #[derive(Serialize, Deserialize)]
    struct DecodedRecord {
        id: ObjectId,
        sm: ObjectState,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        attributes: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        evidence: BTreeMap<String, Finding>,
        revision: u64,
        created_ms: u64,
        history_next: u64,
        history_compacted: u64,
        findings_seen: u64,
    }

    /// What a finding costs a record on the apply path: decode it, replace one checker's finding, encode
    /// it. Prints medians over rounds; `cargo test -p master --release --lib -- --ignored --nocapture
    /// record_cost`.
    #[test]
    #[ignore = "a measurement: run it in release"]
    fn record_cost() {
        let bytes = crate::store::encode(&busy_disk());
        let f = busy_disk().evidence.get("disk").expect("decodes").expect("disk");
        const N: u32 = 20_000;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let time = |work: &mut dyn FnMut()| {
            let rounds: Vec<f64> = (0..15)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..N {
                        work();
                    }
                    t.elapsed().as_secs_f64() * 1e9 / f64::from(N)
                })
                .collect();
            median(rounds)
        };
        let decode_all = time(&mut || {
            std::hint::black_box(serde_json::from_slice::<DecodedRecord>(&bytes).expect("decodes"));
        });
        let decode_stored = time(&mut || {
            std::hint::black_box(serde_json::from_slice::<ObjectRecord>(&bytes).expect("decodes"));
        });
        let round_all = time(&mut || {
            let mut r = serde_json::from_slice::<DecodedRecord>(&bytes).expect("decodes");
            r.evidence.insert("disk".into(), f.clone());
            std::hint::black_box(crate::store::encode(&r));
        });
        let round_stored = time(&mut || {
            let mut r = serde_json::from_slice::<ObjectRecord>(&bytes).expect("decodes");
            r.evidence.insert("disk".into(), f.clone());
            std::hint::black_box(crate::store::encode(&r));
        });
        eprintln!(
            "record of {} bytes (3 checkers' evidence): decode {decode_all:.0} ns with every finding built, \
             {decode_stored:.0} ns kept as stored ({:.2}x); decode + replace one finding + encode {round_all:.0} \
             ns vs {round_stored:.0} ns ({:.2}x)",
            bytes.len(),
            decode_all / decode_stored,
            round_all / round_stored
        );
        // Both shapes read and write the same record.
        let r: ObjectRecord = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(r, busy_disk());
        let old: DecodedRecord = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(crate::store::encode(&old), bytes);
    }

    #[test]
    fn the_wire_decoder_accepts_exactly_what_the_derived_one_does() {
        let finding = r#"{"object":"disk/h1/sda","severity":"ERROR","checker":"disk","version":"1","rule":"smart.pending","evidence":"pending \"5\" \u00e9","readings":{"smart_5_raw":"8"},"time_ms":7}"#;
        let ingest = |rest: &str| format!(r#"{{"type":"ingest",{rest}}}"#);
        let mut cases: Vec<String> = vec![
            ingest(&format!(r#""agent":"a1","seq":3,"findings":[{finding}]"#)),
            ingest(&format!(r#""agent":"a1","seq":3,"findings":[{finding},{finding}],"epoch":9"#)),
            ingest(r#""agent":"","seq":0,"findings":[]"#),
            ingest(r#""agent":"a","seq":1,"findings":[],"extra":{"x":[1,2]}"#),
            ingest(r#""agent":"a","seq":1,"findings":[],"type":"ingest""#),
            ingest(r#""agent":"a","seq":1,"findings":[],"type":"tick""#),
            ingest(r#""agent":"a","agent":"b","seq":1,"findings":[]"#),
            ingest(r#""agent":"a","findings":[]"#),
            ingest(r#""agent":"a","seq":-1,"findings":[]"#),
            ingest(r#""agent":"a","seq":1.5,"findings":[]"#),
            ingest(r#""agent":"a","seq":1,"findings":[{"object":"nope"}]"#),
            ingest(r#""agent":"a","seq":1,"findings":{}"#),
            ingest(r#""agent":"a","seq":1,"findings":[],"epoch":null"#),
            format!(r#"{{"agent":"a1","type":"ingest","seq":3,"findings":[{finding}]}}"#),
            format!(r#"{{"seq":3,"findings":[{finding}],"agent":"a1","type":"ingest"}}"#),
            r#"{"type":"tick","objects":[]}"#.into(),
            r#"{"objects":[],"type":"tick"}"#.into(),
            r#"{"type":"tick","objects":[],"type":"tick"}"#.into(),
            r#"{"type":"nope"}"#.into(),
            r#"{"type":7,"agent":"a"}"#.into(),
            r#"{}"#.into(),
            r#"[]"#.into(),
            r#""ingest""#.into(),
            r#"{"type":"keyed","key":"k1","cmd":{"type":"ingest","agent":"a","seq":1,"findings":[]}}"#.into(),
        ];
        // Every command kind as the encoder writes it.
        for c in [
            Command::AgentLiveness { agent: "a".into(), host: "h".into(), alive: true },
            Command::Tick { objects: vec![] },
            Command::SetMinCommandVersion { version: 2, by: "a".into(), reason: "r".into() },
            Command::Ingest { agent: "x".into(), seq: 1, findings: vec![], epoch: 4 },
            Command::Keyed {
                key: "k".into(),
                cmd: Box::new(Command::Ingest { agent: "x".into(), seq: 1, findings: vec![], epoch: 0 }),
            },
        ] {
            cases.push(serde_json::to_string(&c).expect("encode"));
        }
        let mut accepted = 0;
        for c in &cases {
            let derived = serde_json::from_str::<Command>(c);
            let wire = serde_json::from_str::<wire::One>(c).map(|w| w.0);
            match (&derived, &wire) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{c}");
                    accepted += 1;
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{c}: derived {derived:?}, wire {wire:?}"),
            }
        }
        assert!(accepted >= 12, "the cases include accepted commands: {accepted}");
        // Inside an entry too.
        let e =
            Envelope::new(5, vec![Command::Ingest { agent: "x".into(), seq: 2, findings: vec![], epoch: 0 }]);
        assert_eq!(Envelope::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn the_version_peek_classifies_every_entry_as_the_whole_parse_does() {
        // The peek reads only a well-formed prefix, and only a known version takes it; everything else (and
        // every error) goes through the whole-entry parse, so decode answers what it answered without it.
        assert_eq!(peek_version(b"{\"v\":7,\"now_ms\":1}"), Some(7));
        assert_eq!(peek_version(b"{\"v\":4294967295,"), Some(u32::MAX));
        for bad in [
            &b"{\"v\":,"[..],
            b"{\"v\":07,",
            b"{\"v\":4294967296,",
            b"{\"v\":7}",
            b"{ \"v\":7,",
            b"{\"v\":-1,",
            b"{\"v\":12345678901,",
            b"{\"now_ms\":1,\"v\":7,",
        ] {
            assert_eq!(peek_version(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let whole = |bytes: &[u8], knows: u32| -> Result<Envelope, DecodeError> {
            #[derive(Deserialize)]
            struct Version {
                v: u32,
            }
            let undecodable = |e: serde_json::Error| DecodeError::Undecodable(e.to_string());
            let version: Version = serde_json::from_slice(bytes).map_err(undecodable)?;
            if version.v == 0 {
                return Err(DecodeError::Undecodable("command version 0".into()));
            }
            if version.v > knows {
                return Err(DecodeError::TooNew { needs: version.v, knows });
            }
            serde_json::from_slice(bytes).map_err(undecodable)
        };
        let ok = Envelope::new(3, vec![Command::Tick { objects: vec![] }]).encode();
        let cases: Vec<Vec<u8>> = vec![
            ok.clone(),
            b"{\"v\":0,\"now_ms\":1,\"cmds\":[]}".to_vec(),
            b"{\"v\":99,\"now_ms\":1,\"cmds\":[]}".to_vec(),
            b"{\"v\":99,garbage".to_vec(),
            b"{\"v\":1,garbage".to_vec(),
            b"{\"v\":1,\"v\":9,\"now_ms\":1,\"cmds\":[]}".to_vec(),
            b"{\"v\":1,\"now_ms\":1,\"cmds\":[]} trailing".to_vec(),
            b"{\"v\":1,\"now_ms\":1,\"cmds\":[{\"type\":\"nope\"}]}".to_vec(),
        ];
        for c in &cases {
            for knows in [1, 2, COMMAND_VERSION] {
                let (got, want) = (Envelope::decode_knowing(c, knows), whole(c, knows));
                match (&got, &want) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(DecodeError::TooNew { .. }), Err(DecodeError::TooNew { .. }))
                    | (Err(DecodeError::Undecodable(_)), Err(DecodeError::Undecodable(_))) => {}
                    // The whole parse does not check commands against the entry's version; decode does.
                    (Err(DecodeError::Undecodable(_)), Ok(_)) => {}
                    _ => panic!("{:?} knowing {knows}: {got:?} vs {want:?}", String::from_utf8_lossy(c)),
                }
            }
        }
    }

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
        assert!(err.to_string().contains("version"), "{err}");
        // The leader's batcher joins pre-encoded commands; the result decodes like an encoded envelope.
        let cmds = [
            Command::Tick { objects: vec![] },
            Command::SetMinCommandVersion { version: 2, by: "a".into(), reason: "r".into() },
        ];
        let encoded: Vec<Vec<u8>> = cmds.iter().map(|c| serde_json::to_vec(c).expect("encode")).collect();
        let bytes = entry_bytes(7, 2, encoded.iter().map(Vec::as_slice));
        assert_eq!(Envelope::decode(&bytes), Ok(Envelope::new(7, cmds.to_vec())));
        assert!(matches!(
            Envelope::decode_knowing(&bytes, 1),
            Err(DecodeError::TooNew { needs: 2, knows: 1 })
        ));
        for garbage in
            [&b""[..], b"{", b"\xff\xfe", b"{\"v\":1}", b"[1,2]", b"{\"v\":1,\"now_ms\":1,\"cmds\":[{}]}"]
        {
            assert!(Envelope::decode(garbage).is_err(), "{garbage:?}");
        }
    }

    fn real_finding() -> Finding {
        // A kernel line from the fixtures (non-ASCII evidence, readings, a shadow run).
        Finding {
            object: "disk/node-7/sdb".parse().expect("id"),
            severity: state_machines::Severity::Error,
            checker: "kernel-log".into(),
            version: "1.2.0".into(),
            rule: "io-error".into(),
            evidence: "blk_update_request: I/O error, dev sdb, sector 2048 \u{e9}\"q\"".into(),
            readings: [("sector".to_string(), "2048".to_string()), ("count".into(), "3".into())].into(),
            time_ms: 1_700_000_000_123,
            shadow: true,
        }
    }

    #[test]
    fn binary_entries_decode_to_the_same_commands_as_json() {
        let f = real_finding();
        let cmds = vec![
            Command::Ingest {
                agent: "agent-1".into(),
                seq: 9,
                findings: vec![f.clone(), f.clone()],
                epoch: 77,
            },
            Command::Keyed {
                key: "cli:1".into(),
                cmd: Box::new(Command::Ingest { agent: String::new(), seq: 0, findings: vec![f], epoch: 0 }),
            },
            Command::Keyed {
                key: "k2".into(),
                cmd: Box::new(Command::Release {
                    scope: "cluster".into(),
                    by: "op".into(),
                    reason: "r".into(),
                }),
            },
            Command::AgentLiveness { agent: "a".into(), host: "h".into(), alive: false },
            Command::Tick { objects: vec!["disk/h/sda".parse().expect("id")] },
            Command::SetMinCommandVersion { version: 9, by: "a".into(), reason: "r".into() },
        ];
        let env = Envelope::new(1_234, cmds);
        let bytes = env.encode_binary();
        assert!(bytes.starts_with(b"{\"v\":9,\"pb\":\""), "{}", String::from_utf8_lossy(&bytes));
        let got = Envelope::decode(&bytes).expect("decode");
        assert_eq!(got, Envelope { v: BINARY_ENTRY_VERSION, ..env.clone() });
        // Smaller than the JSON entry even in base64 (findings are most of it).
        assert!(bytes.len() < env.encode().len(), "{} vs {}", bytes.len(), env.encode().len());
        // The leader's batcher joins pre-encoded commands into an entry that decodes the same (not always
        // the same bytes: protobuf maps are encoded in hash order).
        let each: Vec<Vec<u8>> = env.cmds.iter().map(encode_command_binary).collect();
        let joined = binary_entry_bytes(1_234, 9, each.iter().map(Vec::as_slice));
        assert_eq!(Envelope::decode(&joined), Ok(got));
        // An empty entry at time 0 too.
        let empty = Envelope { v: 9, now_ms: 0, cmds: vec![] };
        assert_eq!(Envelope::decode(&empty.encode_binary()), Ok(empty));
    }

    #[test]
    fn an_older_binary_stops_at_a_binary_entry_instead_of_skipping_it() {
        let bytes = Envelope::new(5, vec![Command::Tick { objects: vec![] }]).encode_binary();
        // The wrapper is JSON whose `v` an older binary reads (its whole-entry parse; see `whole` above).
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(v["v"], 9);
        for knows in [1, 2, 8] {
            assert_eq!(
                Envelope::decode_knowing(&bytes, knows),
                Err(DecodeError::TooNew { needs: 9, knows }),
                "knowing {knows}"
            );
        }
    }

    #[test]
    fn damaged_binary_entries_are_undecodable_on_every_member_alike() {
        use base64::Engine as _;
        use prost::Message as _;
        let wrap = |v: u32, pb: &[u8]| {
            format!("{{\"v\":{v},\"pb\":\"{}\"}}", base64::engine::general_purpose::STANDARD.encode(pb))
                .into_bytes()
        };
        let cmd = |c: proto::entry::command::Cmd| {
            proto::entry::Entry { now_ms: 1, cmds: vec![proto::entry::Command { cmd: Some(c) }] }
                .encode_to_vec()
        };
        let good = Envelope::new(5, vec![Command::Tick { objects: vec![] }]).encode_binary();
        let mut bad_finding = binary::to_wire(&Command::Ingest {
            agent: "a".into(),
            seq: 1,
            findings: vec![real_finding()],
            epoch: 0,
        });
        if let Some(proto::entry::command::Cmd::Ingest(r)) = &mut bad_finding.cmd {
            r.findings[0].object = "not an id".into();
        }
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // A binary entry claiming an older version than the format's: older members parse it as JSON
            // and refuse it as garbage, so this one must too.
            (wrap(8, &proto::entry::Entry::default().encode_to_vec()), "version 8"),
            (b"{\"v\":9,\"pb\":\"not base64!\"}".to_vec(), "base64"),
            (wrap(9, b"\xff\xff\xff"), "protobuf"),
            (wrap(9, &cmd(proto::entry::command::Cmd::Json(b"{\"type\":\"nope\"}".to_vec()))), "nope"),
            (
                wrap(
                    9,
                    &proto::entry::Entry { now_ms: 1, cmds: vec![proto::entry::Command { cmd: None }] }
                        .encode_to_vec(),
                ),
                "no kind",
            ),
            (
                wrap(
                    9,
                    &cmd(proto::entry::command::Cmd::Keyed(Box::new(proto::entry::Keyed {
                        key: "k".into(),
                        cmd: None,
                    }))),
                ),
                "without its command",
            ),
            (
                wrap(9, &proto::entry::Entry { now_ms: 1, cmds: vec![bad_finding] }.encode_to_vec()),
                "not an id",
            ),
            (good[..good.len() - 1].to_vec(), ""),
            ([&good[..], b" "].concat(), ""),
        ];
        for (bytes, says) in cases {
            match Envelope::decode(&bytes) {
                Err(DecodeError::Undecodable(m)) => {
                    assert!(m.contains(says), "{:?}: {m}", String::from_utf8_lossy(&bytes))
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(&bytes)),
            }
        }
    }
}
