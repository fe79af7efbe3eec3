//! The raft layer's storage alarms: damage found in the data dir (a process-wide counter for `/metrics`)
//! and the free-space probe behind the NOSPACE alarm (statvfs on the data dir).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::NodeId;

/// Times this process found damaged raft storage (checksum, decoding, redb integrity, storage panic).
pub static CORRUPTION_DETECTED: AtomicU64 = AtomicU64::new(0);

/// Snapshot streams this process refused because a chunk or the assembled data failed its CRC-32C (damaged
/// in transit: the sender sends the snapshot again; nothing was applied).
pub static SNAPSHOT_CHUNKS_REFUSED: AtomicU64 = AtomicU64::new(0);

/// How often the loop measures free space: a statvfs costs microseconds, and a second is far shorter than
/// the time a busy master needs to fill the margin of `min_free_bytes`.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes an unprivileged process can still write on the file system holding `path`.
#[allow(clippy::useless_conversion)] // the statvfs field types are narrower on 32-bit targets
pub fn free_bytes(path: &Path) -> Result<u64, nix::Error> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The NOSPACE alarm for `free` bytes against `floor` (0 = off): `Some((free, floor))` while raised. At
/// exactly the floor the alarm is clear.
pub fn nospace(free: u64, floor: u64) -> Option<(u64, u64)> {
    (free < floor).then_some((free, floor))
}

/// How often every member asks the others for their NOSPACE alarm over the peer port (a probe each).
pub const PEER_ALARM_EVERY: Duration = Duration::from_secs(1);
/// The wait for those answers, all of them together.
pub const PEER_ALARM_TIMEOUT: Duration = Duration::from_secs(1);
/// An answer older than this says nothing: the member counts as not known to be short (Raft itself deals
/// with a member that does not answer at all).
pub const PEER_ALARM_TTL: Duration = Duration::from_secs(5);
/// A leader short of disk hands over to another member at most this often (raft-rs gives a transfer one
/// election timeout, 1.1-1.4 s, before it aborts it).
pub const HANDOVER_EVERY: Duration = Duration::from_secs(3);

/// What a member said over the peer port about its disk, binary and API addresses, and when it was heard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAnswer {
    pub heard: Option<Instant>,
    /// Its NOSPACE alarm as (free bytes, floor) while raised.
    pub alarm: Option<(u64, u64)>,
    /// The newest command version its binary knows (0: too old to say).
    pub app_version: u32,
    /// Its advertised gRPC and HTTP API addresses (empty: a binary too old to say).
    pub grpc: String,
    pub http: String,
}

impl PeerAnswer {
    /// Whether it was heard at most [`PEER_ALARM_TTL`] before `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        self.heard.is_some_and(|h| now.saturating_duration_since(h) <= PEER_ALARM_TTL)
    }
}

/// The voters known to be short of disk at `now`, as (member, free bytes, floor), in id order: this member
/// by its own alarm, the others by an answer at most [`PEER_ALARM_TTL`] old.
pub fn short_members(
    me: NodeId,
    own: Option<(u64, u64)>,
    voters: &[NodeId],
    peers: &BTreeMap<NodeId, PeerAnswer>,
    now: Instant,
) -> Vec<(NodeId, u64, u64)> {
    let mut out: Vec<(NodeId, u64, u64)> = voters
        .iter()
        .filter_map(|&id| {
            let alarm = if id == me { own } else { peers.get(&id).filter(|p| p.fresh(now))?.alarm };
            alarm.map(|(free, floor)| (id, free, floor))
        })
        .collect();
    out.sort_unstable();
    out.dedup_by_key(|m| m.0);
    out
}

/// The other voters, not short of disk, that this leader has not heard from lately: not active in Raft
/// (`active`: heard within the last election timeout) and without an answer to the alarm poll within
/// [`PEER_ALARM_TTL`]. Both must be silent, so a member whose probes are late under load but whose Raft
/// messages arrive still counts as able to store entries. In id order.
pub fn silent_members(
    me: NodeId,
    voters: &[NodeId],
    short: &[(NodeId, u64, u64)],
    active: &[NodeId],
    peers: &BTreeMap<NodeId, PeerAnswer>,
    now: Instant,
) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|&id| {
            id != me
                && !short.iter().any(|m| m.0 == id)
                && !active.contains(&id)
                && !peers.get(&id).is_some_and(|p| p.fresh(now))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the voters not short of disk are fewer than a quorum of `voters`: then an entry could only
/// commit on members below their floor, and the leader refuses writes. One short member of three (two of
/// five) is not: the others commit, and the short one stops appending at its floor
/// (`core::Core::set_short_of_disk`) and catches up once space returns.
pub fn quorum_short(voters: usize, short: usize) -> bool {
    voters > 0 && voters.saturating_sub(short) < voters / 2 + 1
}

/// The member a leader short of disk hands leadership to: another voter heard within [`PEER_ALARM_TTL`]
/// without an alarm, the one whose log this leader knows to match furthest (`matched`), the lowest id among
/// equals. None when no member qualifies (the leader then refuses writes itself).
pub fn handover_target(
    me: NodeId,
    voters: &[NodeId],
    peers: &BTreeMap<NodeId, PeerAnswer>,
    now: Instant,
    matched: impl Fn(NodeId) -> Option<u64>,
) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .filter(|&id| id != me)
        .filter(|id| peers.get(id).is_some_and(|p| p.alarm.is_none() && p.fresh(now)))
        .filter_map(|id| matched(id).map(|m| (m, id)))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(now: Instant, ago: Duration, alarm: Option<(u64, u64)>) -> PeerAnswer {
        PeerAnswer { heard: Some(now - ago), alarm, app_version: 1, ..Default::default() }
    }

    #[test]
    fn a_quorum_of_members_with_space_keeps_writing() {
        assert!(!quorum_short(3, 0));
        assert!(!quorum_short(3, 1), "two of three still make a quorum");
        assert!(quorum_short(3, 2));
        assert!(quorum_short(3, 3));
        assert!(!quorum_short(5, 2));
        assert!(quorum_short(5, 3));
        assert!(!quorum_short(1, 0));
        assert!(quorum_short(1, 1));
        assert!(!quorum_short(0, 0), "no voters known: nothing to say");
    }

    #[test]
    fn short_members_count_answers_up_to_the_ttl_and_the_own_alarm() {
        let now = Instant::now() + Duration::from_secs(60);
        let a = Some((1, 10));
        let mut peers = BTreeMap::new();
        peers.insert(2, heard(now, PEER_ALARM_TTL, a));
        peers.insert(3, heard(now, PEER_ALARM_TTL + Duration::from_millis(1), a));
        peers.insert(4, heard(now, Duration::ZERO, None));
        assert_eq!(
            short_members(1, None, &[1, 2, 3, 4], &peers, now),
            vec![(2, 1, 10)],
            "3's answer is stale"
        );
        assert_eq!(short_members(1, Some((5, 10)), &[1, 2, 3, 4], &peers, now), vec![(1, 5, 10), (2, 1, 10)]);
        // A member that is not a voter does not count; an unknown voter is not short.
        assert_eq!(short_members(1, None, &[1, 4, 9], &peers, now), vec![]);
    }

    #[test]
    fn silent_members_are_neither_active_in_raft_nor_heard_by_the_poll() {
        let now = Instant::now() + Duration::from_secs(60);
        let mut peers = BTreeMap::new();
        peers.insert(2, heard(now, Duration::ZERO, Some((1, 10))));
        peers.insert(3, heard(now, PEER_ALARM_TTL + Duration::from_millis(1), None));
        peers.insert(4, heard(now, Duration::ZERO, None));
        let voters = [1, 2, 3, 4, 5];
        let short = short_members(1, None, &voters, &peers, now);
        assert_eq!(short, vec![(2, 1, 10)]);
        // 3's answer is stale and Raft has not heard it; 5 never answered; 4 answers the poll. Never itself,
        // never a member already counted short.
        assert_eq!(silent_members(1, &voters, &short, &[1], &peers, now), vec![3, 5]);
        // Raft activity alone is enough: probes late under load do not make a member silent.
        assert_eq!(silent_members(1, &voters, &short, &[1, 3, 5], &peers, now), Vec::<NodeId>::new());
        // Three of five short or silent: no quorum can store entries.
        let silent = silent_members(1, &voters, &short, &[1], &peers, now);
        assert!(quorum_short(voters.len(), short.len() + silent.len()));
        assert!(!quorum_short(voters.len(), short.len() + 1));
    }

    #[test]
    fn handover_goes_to_the_furthest_member_heard_without_an_alarm() {
        let now = Instant::now() + Duration::from_secs(60);
        let mut peers = BTreeMap::new();
        peers.insert(2, heard(now, Duration::ZERO, None));
        peers.insert(3, heard(now, Duration::ZERO, None));
        peers.insert(4, heard(now, Duration::ZERO, Some((1, 10))));
        peers.insert(5, heard(now, PEER_ALARM_TTL + Duration::from_millis(1), None));
        let matched = |id: NodeId| {
            Some(match id {
                2 => 90,
                3 => 100,
                _ => 1000,
            })
        };
        assert_eq!(handover_target(1, &[1, 2, 3, 4, 5], &peers, now, matched), Some(3));
        assert_eq!(
            handover_target(1, &[1, 2, 3, 4, 5], &peers, now, |_| Some(7)),
            Some(2),
            "lowest id of equals"
        );
        assert_eq!(handover_target(1, &[1, 4, 5], &peers, now, matched), None, "short or stale only");
        assert_eq!(handover_target(2, &[2], &peers, now, matched), None, "never itself");
        assert_eq!(handover_target(1, &[1, 2, 3], &peers, now, |_| None), None, "no progress known");
    }

    #[test]
    fn nospace_at_the_floor() {
        let floor = 512 << 20;
        assert_eq!(nospace(floor, floor), None, "exactly the floor is enough");
        assert_eq!(nospace(floor - 1, floor), Some((floor - 1, floor)));
        assert_eq!(nospace(0, floor), Some((0, floor)));
        assert_eq!(nospace(0, 0), None, "floor 0 turns the alarm off");
    }

    #[test]
    fn free_bytes_of_a_real_dir_and_an_error_for_a_missing_one() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
        assert!(free_bytes(&dir.path().join("missing/x")).is_err());
    }
}
