//! The leader's book of probe peers (issue 16): every alive agent that answers probes (its heartbeat's
//! `probe_addr`), in one list in a shuffled order, and per asking agent a cursor into it. A heartbeat reply
//! carries the next [`MAX_PEERS_PER_REPLY`] entries after the agent's cursor and moves the cursor past them,
//! so over `ceil(n / 64)` successive beats an agent is handed every other peer (the coverage property,
//! tested below), whatever the fleet size. O(1) per known agent's beat (a hash lookup, at most
//! [`MAX_SCAN_PER_REPLY`] list entries read): no per-beat scan or sort. A new peer goes to a pseudo-random
//! position (swapped with the entry there), a forgotten one is swap-removed: membership changes cost O(1)
//! too. In memory only (the heartbeat memory, not Raft): a new leader starts empty and fills from beats.
//! Of each reply, [`TORMATES_PER_REPLY`] places go to the asker's ToR-mates (its own rotation through its
//! ToR's list), as Pingmesh does: clean ToR-mate flows are what tell a NIC from its ToR, and a whole ToR
//! from its uplinks, at low loss.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// Most peers in one heartbeat reply: a reply stays small at 100,000 hosts (64 x ~60 bytes), and an agent
/// probing 32 peers per window still gets a fresh sample every other beat.
pub const MAX_PEERS_PER_REPLY: usize = 64;
/// Places of a reply given to ToR-mates of the asker (the rest come from the fleet-wide rotation).
pub const TORMATES_PER_REPLY: usize = 4;
/// Most list entries one reply reads (stale entries are skipped, not handed out): bounds the work of a beat
/// when many peers went silent at once and the sweep has not forgotten them yet.
pub const MAX_SCAN_PER_REPLY: usize = 4 * MAX_PEERS_PER_REPLY;
/// Most agents in the book (peers and cursors): the heartbeat memory's own bound.
pub const MAX_BOOK_AGENTS: usize = crate::api::heartbeats::MAX_TRACKED_AGENTS;

/// One peer as handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub addr: String,
    pub tor: String,
}

#[derive(Debug)]
struct Entry {
    agent: String,
    peer: Peer,
    last: Instant,
}

/// See the module comment.
#[derive(Debug)]
pub struct PeerBook {
    list: Vec<Entry>,
    /// agent -> position in `list`.
    index: HashMap<String, usize>,
    /// agent -> where its next sample starts (agents that do not answer probes have one too).
    cursors: HashMap<String, usize>,
    hasher: RandomState,
    inserts: u64,
    /// ToR -> its agents in the book (for the ToR-mate places of a reply).
    tors: HashMap<String, TorList>,
    /// agent -> where its next ToR-mate sample starts.
    tor_cursors: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct TorList {
    agents: Vec<String>,
    pos: HashMap<String, usize>,
}

impl TorList {
    fn add(&mut self, agent: &str) {
        if !self.pos.contains_key(agent) {
            self.pos.insert(agent.to_string(), self.agents.len());
            self.agents.push(agent.to_string());
        }
    }

    fn remove(&mut self, agent: &str) {
        let Some(i) = self.pos.remove(agent) else { return };
        self.agents.swap_remove(i);
        if let Some(moved) = self.agents.get(i) {
            self.pos.insert(moved.clone(), i);
        }
    }
}

impl Default for PeerBook {
    fn default() -> Self {
        PeerBook {
            list: Vec::new(),
            index: HashMap::new(),
            cursors: HashMap::new(),
            hasher: RandomState::new(),
            inserts: 0,
            tors: HashMap::new(),
            tor_cursors: HashMap::new(),
        }
    }
}

impl PeerBook {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `agent` is in the book with this address (a beat that changes nothing touches only `last`).
    pub fn touch(&mut self, agent: &str, host: &str, addr: &str, now: Instant) -> bool {
        match self.index.get(agent) {
            Some(&i) if self.list[i].peer.host == host && self.list[i].peer.addr == addr => {
                self.list[i].last = now;
                true
            }
            _ => false,
        }
    }

    /// Put or refresh `agent` answering probes at `addr` (empty: it does not answer; it is removed).
    /// Refused (false) when the book is full.
    pub fn upsert(&mut self, agent: &str, peer: Peer, now: Instant) -> bool {
        if peer.addr.is_empty() {
            self.forget(agent);
            return true;
        }
        if let Some(&i) = self.index.get(agent) {
            if self.list[i].peer.tor != peer.tor {
                self.leave_tor(agent, &self.list[i].peer.tor.clone());
                self.join_tor(agent, &peer.tor);
            }
            self.list[i].peer = peer;
            self.list[i].last = now;
            return true;
        }
        if self.list.len() >= MAX_BOOK_AGENTS {
            return false;
        }
        self.join_tor(agent, &peer.tor);
        self.list.push(Entry { agent: agent.to_string(), peer, last: now });
        let last = self.list.len() - 1;
        // A pseudo-random position, so the order does not follow arrival (racks come up together).
        self.inserts = self.inserts.wrapping_add(1);
        let at = (self.hasher.hash_one((agent, self.inserts)) as usize) % self.list.len();
        self.list.swap(at, last);
        self.index.insert(self.list[last].agent.clone(), last);
        self.index.insert(self.list[at].agent.clone(), at);
        true
    }

    fn join_tor(&mut self, agent: &str, tor: &str) {
        if !tor.is_empty() {
            self.tors.entry(tor.to_string()).or_default().add(agent);
        }
    }

    fn leave_tor(&mut self, agent: &str, tor: &str) {
        if let Some(t) = self.tors.get_mut(tor) {
            t.remove(agent);
            if t.agents.is_empty() {
                self.tors.remove(tor);
            }
        }
    }

    /// Remove `agent` (went silent, stopped answering probes).
    pub fn forget(&mut self, agent: &str) {
        self.cursors.remove(agent);
        self.tor_cursors.remove(agent);
        let Some(i) = self.index.remove(agent) else { return };
        let tor = self.list[i].peer.tor.clone();
        self.leave_tor(agent, &tor);
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.agent.clone(), i);
        }
    }

    /// Forget everything (leadership lost).
    pub fn clear(&mut self) {
        self.list.clear();
        self.index.clear();
        self.cursors.clear();
        self.tors.clear();
        self.tor_cursors.clear();
    }

    /// The next peers for `agent` (never itself, never an entry not refreshed within `stale_after`), at
    /// most [`MAX_PEERS_PER_REPLY`], reading at most [`MAX_SCAN_PER_REPLY`] entries.
    pub fn sample(&mut self, agent: &str, now: Instant, stale_after: Duration) -> Vec<Peer> {
        let n = self.list.len();
        if n == 0 {
            return Vec::new();
        }
        let start = match self.cursors.get(agent) {
            Some(&c) => c % n,
            None if self.cursors.len() >= MAX_BOOK_AGENTS => 0,
            None => (self.hasher.hash_one(agent) as usize) % n,
        };
        // Allocated once there is a peer to hand out: a beat with none allocates nothing here.
        let mut out = Vec::new();
        let mates = self.tormates(agent, now, stale_after);
        let fleet = MAX_PEERS_PER_REPLY - mates.len();
        let mut read = 0;
        while read < n.min(MAX_SCAN_PER_REPLY) && out.len() < fleet {
            let e = &self.list[(start + read) % n];
            read += 1;
            if e.agent != agent && now.saturating_duration_since(e.last) < stale_after {
                if out.is_empty() {
                    out.reserve_exact(MAX_PEERS_PER_REPLY.min(n));
                }
                out.push(e.peer.clone());
            }
        }
        if self.cursors.len() < MAX_BOOK_AGENTS || self.cursors.contains_key(agent) {
            set_cursor(&mut self.cursors, agent, (start + read) % n);
        }
        for m in mates {
            if !out.iter().any(|p| p.host == m.host) {
                out.push(m);
            }
        }
        out
    }

    /// Up to [`TORMATES_PER_REPLY`] live ToR-mates of `agent` (none when it is not in the book or its ToR
    /// is unknown), rotating through its ToR's list.
    fn tormates(&mut self, agent: &str, now: Instant, stale_after: Duration) -> Vec<Peer> {
        let Some(&me) = self.index.get(agent) else { return Vec::new() };
        let Some(tor) = self.tors.get(&self.list[me].peer.tor) else { return Vec::new() };
        let n = tor.agents.len();
        let start = self.tor_cursors.get(agent).copied().unwrap_or(0) % n.max(1);
        let mut out = Vec::new();
        let mut read = 0;
        while read < n.min(MAX_SCAN_PER_REPLY) && out.len() < TORMATES_PER_REPLY {
            let mate = &tor.agents[(start + read) % n];
            read += 1;
            if mate == agent {
                continue;
            }
            if let Some(e) = self.index.get(mate).map(|&i| &self.list[i])
                && now.saturating_duration_since(e.last) < stale_after
            {
                out.push(e.peer.clone());
            }
        }
        if n > 0 {
            set_cursor(&mut self.tor_cursors, agent, (start + read) % n);
        }
        out
    }
}

/// Move `agent`'s cursor to `at`; only an agent's first cursor allocates its key.
fn set_cursor(cursors: &mut HashMap<String, usize>, agent: &str, at: usize) {
    match cursors.get_mut(agent) {
        Some(c) => *c = at,
        None => {
            cursors.insert(agent.to_string(), at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn peer(i: usize) -> Peer {
        Peer {
            host: format!("h{i}"),
            addr: format!("127.0.0.{}:7791", i % 250 + 1),
            tor: format!("t{}", i / 10),
        }
    }

    fn book(n: usize, now: Instant) -> PeerBook {
        let mut b = PeerBook::default();
        for i in 0..n {
            assert!(b.upsert(&format!("a{i}"), peer(i), now));
        }
        b
    }

    #[test]
    fn successive_beats_cover_every_peer_and_replies_stay_bounded() {
        let now = Instant::now();
        let stale = Duration::from_secs(60);
        for n in [1usize, 2, 63, 64, 65, 200, 1000] {
            let mut b = book(n, now);
            for asker in [0usize, n / 2, n - 1] {
                let me = format!("a{asker}");
                let mut seen = BTreeSet::new();
                let beats = n.div_ceil(MAX_PEERS_PER_REPLY - TORMATES_PER_REPLY) + 1;
                for _ in 0..beats {
                    let s = b.sample(&me, now, stale);
                    assert!(s.len() <= MAX_PEERS_PER_REPLY, "n={n}: {} peers in one reply", s.len());
                    assert!(s.iter().all(|p| p.host != format!("h{asker}")), "never itself");
                    seen.extend(s.into_iter().map(|p| p.host));
                }
                assert_eq!(seen.len(), n - 1, "n={n} asker {asker}: every other peer within {beats} beats");
            }
        }
    }

    #[test]
    fn every_reply_carries_tor_mates() {
        let now = Instant::now();
        let stale = Duration::from_secs(60);
        // 1,000 agents under 100 ToRs of 10: the fleet rotation alone would rarely hand out a ToR-mate.
        let mut b = book(1000, now);
        for _ in 0..3 {
            let s = b.sample("a15", now, stale);
            assert!(s.len() <= MAX_PEERS_PER_REPLY);
            let mates = s.iter().filter(|p| p.tor == "t1" && p.host != "h15").count();
            assert!(mates >= TORMATES_PER_REPLY, "{mates} ToR-mates in {s:?}");
            let hosts: BTreeSet<&str> = s.iter().map(|p| p.host.as_str()).collect();
            assert_eq!(hosts.len(), s.len(), "no peer twice in a reply");
        }
        // The ToR lists follow membership: a forgotten mate is gone, a moved agent changes lists.
        b.forget("a11");
        b.upsert("a12", Peer { tor: "t9".into(), ..peer(12) }, now);
        for _ in 0..5 {
            let s = b.sample("a15", now, stale);
            assert!(s.iter().all(|p| p.host != "h11"), "forgotten");
            assert!(s.iter().all(|p| !(p.host == "h12" && p.tor == "t1")), "moved");
        }
        assert!(!b.tors["t1"].pos.contains_key("a11") && b.tors["t9"].pos.contains_key("a12"));
        for t in b.tors.values() {
            for (a, &i) in &t.pos {
                assert_eq!(&t.agents[i], a);
            }
        }
    }

    #[test]
    fn membership_changes_keep_the_index_true_and_stale_peers_are_skipped() {
        let now = Instant::now();
        let mut b = book(100, now);
        for i in (0..100).step_by(3) {
            b.forget(&format!("a{i}"));
        }
        assert_eq!(b.len(), 66);
        for (agent, &i) in &b.index {
            assert_eq!(&b.list[i].agent, agent);
        }
        // Moved address: refreshed in place, no duplicate.
        assert!(b.upsert("a1", Peer { addr: "127.0.0.9:1".into(), ..peer(1) }, now));
        assert_eq!(b.len(), 66);
        assert!(!b.touch("a1", "h1", "127.0.0.2:7791", now) && b.touch("a1", "h1", "127.0.0.9:1", now));
        // An empty address removes the agent.
        assert!(b.upsert("a1", Peer { addr: String::new(), ..peer(1) }, now));
        assert_eq!(b.len(), 65);
        // Stale entries are not handed out.
        let later = now + Duration::from_secs(120);
        b.upsert("a2", peer(2), later);
        let s = b.sample("a4", later, Duration::from_secs(60));
        assert_eq!(s, vec![peer(2)], "only the fresh peer");
        b.clear();
        assert!(b.is_empty() && b.sample("a4", later, Duration::from_secs(60)).is_empty());
    }

    /// Prints what a beat's sample costs with 100,000 agents in the book (a figure, never asserted).
    #[test]
    fn peer_book_cost_at_100k_agents() {
        let now = Instant::now();
        let t = Instant::now();
        let mut b = book(100_000, now);
        let built = t.elapsed();
        let t = Instant::now();
        let mut handed = 0usize;
        for i in 0..100_000 {
            handed += b.sample(&format!("a{i}"), now, Duration::from_secs(60)).len();
        }
        let sampled = t.elapsed();
        // Full replies, less a ToR-mate the fleet rotation had already handed out in the same reply.
        assert!(
            handed > 100_000 * (MAX_PEERS_PER_REPLY - TORMATES_PER_REPLY)
                && handed <= 100_000 * MAX_PEERS_PER_REPLY
        );
        println!(
            "100,000 agents: book built in {built:?}; 100,000 samples of {MAX_PEERS_PER_REPLY} in {sampled:?} ({:?} per beat)",
            sampled / 100_000
        );
    }

    #[test]
    fn a_full_book_refuses_new_agents_at_the_limit() {
        let now = Instant::now();
        let mut b = PeerBook::default();
        for i in 0..MAX_BOOK_AGENTS {
            b.list.push(Entry { agent: format!("a{i}"), peer: peer(i), last: now });
        }
        for (i, e) in b.list.iter().enumerate() {
            b.index.insert(e.agent.clone(), i);
        }
        assert!(!b.upsert("new", peer(1), now), "one more than the limit is refused");
        assert!(b.upsert("a5", peer(5), now), "a known agent is still refreshed");
        assert_eq!(b.len(), MAX_BOOK_AGENTS);
    }
}
