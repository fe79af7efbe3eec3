//! Agent heartbeats: the leader keeps what each agent last said in memory ([`Memory`]); only a change of
//! liveness goes through Raft (ENGINEERING.md section 3: heartbeats from 100k agents must not).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::error::ApiError;
pub use proto::view::{AgentListing, HeartbeatInfo};

use super::validate::{self, MAX_HEARTBEAT_CHECKERS, MAX_VERSION_LEN};
use super::{Service, lock, store_err};
use crate::model::{Command, MAX_TEXT_LEN};
use crate::store::Reader;

/// Most agents tracked in the leader's heartbeat memory (a datacenter has ~10-100k hosts), counting those
/// learned from the replicated state and not heard from yet.
pub const MAX_TRACKED_AGENTS: usize = 200_000;
/// Shards of the heartbeat memory: beats from hundreds of connections on different agents rarely wait on
/// the same lock (a power of two comfortably above the worker threads of a master).
pub const MEMORY_SHARDS: usize = 64;
/// Most "went silent" changes one sweep proposes; the rest go in the next round (`DUTY_INTERVAL` later).
/// They are submitted at once, so the proposer packs up to `MAX_CMDS_PER_ENTRY` of them per Raft entry;
/// the bound keeps one round from filling the proposal queue (`PROPOSAL_QUEUE`) that API writes share.
pub const MAX_SILENT_PER_ROUND: usize = 4096;

/// Agents coming alive that wait for the liveness batcher; heartbeats beyond it wait for room (backpressure).
/// A fleet re-announcing itself is at most one beat per agent in flight per connection, far below this.
pub const LIVENESS_QUEUE: usize = 16_384;
/// Most "came alive" changes the batcher submits at once (then it waits for their commit and takes the
/// next batch, which grew meanwhile): the proposer packs them into entries of `MAX_CMDS_PER_ENTRY`.
pub const MAX_LIVENESS_BATCH: usize = 1024;

/// Most heartbeat streams one node serves at once unless configured (`max_heartbeat_streams`): one for
/// each agent the leader can track.
pub const MAX_HEARTBEAT_STREAMS: usize = MAX_TRACKED_AGENTS;
/// Most ingest streams one node serves at once unless configured (`max_ingest_streams`): one for each
/// agent the leader can track (an idle one ends after [`INGEST_STREAM_IDLE`], so only agents sending
/// findings hold one).
pub const MAX_INGEST_STREAMS: usize = MAX_TRACKED_AGENTS;
/// An ingest stream with no batch for this long ends cleanly (the agent's next batch opens another): an
/// agent sending batches at most a heartbeat interval apart keeps its stream, one reporting a reading now
/// and then holds one for this long after each batch (so 100,000 agents sending a batch a minute hold
/// about 17,000 at once, about 6.5 KB each on the leader: "Fleet scale: heartbeat streams").
pub const INGEST_STREAM_IDLE: Duration = Duration::from_secs(10);
/// The largest `max_heartbeat_streams` or `max_ingest_streams` a config may ask for.
pub const MAX_HEARTBEAT_STREAMS_CEILING: usize = 1_000_000;
/// A heartbeat stream ends cleanly (OK) after its first beat past this age unless configured
/// (`heartbeat_stream_max_age_ms`), and the agent opens a new one: its credentials are checked again.
pub const HEARTBEAT_STREAM_MAX_AGE: Duration = Duration::from_secs(600);

/// The node's heartbeat streams: open now, opened and refused since start (`/metrics`).
#[derive(Default)]
pub struct StreamCount {
    open: AtomicUsize,
    opened: AtomicU64,
    refused: AtomicU64,
}

impl StreamCount {
    fn stats(&self) -> StreamStats {
        StreamStats {
            open: self.open.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// One more open stream in `c` unless `max` are open (RESOURCE_EXHAUSTED naming the `what_streams`
/// limit and what the agent does instead).
fn take_slot(
    c: &std::sync::Arc<StreamCount>,
    max: usize,
    what: &str,
    instead: &str,
) -> Result<StreamSlot, ApiError> {
    // Taken first and given back when over: concurrent opens cannot pass the limit together.
    if c.open.fetch_add(1, Ordering::Relaxed) >= max {
        c.open.fetch_sub(1, Ordering::Relaxed);
        c.refused.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            proto::error::Code::ResourceExhausted,
            format!(
                "this node already serves {max} {what} streams (its limit, max_{what}_streams): {instead}"
            ),
        ));
    }
    c.opened.fetch_add(1, Ordering::Relaxed);
    Ok(StreamSlot(std::sync::Arc::clone(c)))
}

/// One open agent stream's place in its [`StreamCount`], given back when the stream ends (dropped).
pub struct StreamSlot(std::sync::Arc<StreamCount>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Heartbeat streams of a node: (open now, opened since start, refused at the limit since start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    pub open: usize,
    pub opened: u64,
    pub refused: u64,
}

/// One agent waiting to be proposed alive, and where its heartbeat waits for the result.
pub(super) struct ComingAlive {
    agent: String,
    host: String,
    tx: tokio::sync::oneshot::Sender<Result<(), ApiError>>,
}

/// Take what waits in `rx` after `first`, up to `max` in all (the rest stays for the next batch).
pub(super) fn take_batch<T>(first: T, rx: &mut tokio::sync::mpsc::Receiver<T>, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(x) => batch.push(x),
            Err(_) => break,
        }
    }
    batch
}

/// The liveness batcher: agents whose first beat needs a replicated "alive" are proposed together, one
/// batch at a time (group commit: while a batch commits the next one gathers), so a fleet re-announcing
/// itself costs few Raft entries. Ends when told to stop, when the queue closes, or when the service is gone.
pub(super) async fn run_liveness(
    svc: std::sync::Weak<Service>,
    mut rx: tokio::sync::mpsc::Receiver<ComingAlive>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    loop {
        let first = tokio::select! {
            _ = &mut stop => return,
            x = rx.recv() => match x {
                Some(x) => x,
                None => return,
            },
        };
        let batch = take_batch(first, &mut rx, MAX_LIVENESS_BATCH);
        let Some(s) = svc.upgrade() else { return };
        let marks = batch.into_iter().map(|c| {
            let s = &s;
            async move {
                let cmd = Command::AgentLiveness { agent: c.agent.clone(), host: c.host, alive: true };
                let r = s.submit(cmd).await.map(|_| s.heartbeats.set_alive(&c.agent, true));
                // The heartbeat may have given up waiting (its request was cancelled).
                c.tx.send(r).ok();
            }
        });
        tokio::select! {
            _ = &mut stop => return,
            _ = futures::future::join_all(marks) => {}
        }
    }
}

/// One agent as the leader's heartbeat memory sees it (`GET /api/v1/agents`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentView {
    pub agent: String,
    pub host: String,
    pub alive: bool,
    pub last_heartbeat_ms_ago: u64,
    /// Times this agent's start time changed while this leader watched it.
    pub restarts: u64,
    #[serde(flatten)]
    pub info: HeartbeatInfo,
}

struct Seen {
    host: String,
    info: HeartbeatInfo,
    restarts: u64,
    /// The last heartbeat, or when this leader learned the agent from the replicated state.
    last: Instant,
    /// Whether this leader heard the agent itself (false: only learned alive from the replicated state).
    heard: bool,
    /// Whether the replicated state says alive (as far as this leader knows).
    alive: bool,
    /// The last heartbeat datagram's seq taken from this agent (0: none): a datagram at or below it is a
    /// replay (`datagrams.rs`).
    datagram_seq: u64,
}

/// What one learning pass of a new term did and how long each step took (logged by the leader): the read
/// barrier, the scan of the agent records (blocking pool), the insertion into the memory (an async worker),
/// and the beats that read their agent's record meanwhile (each a point read on an async worker).
#[derive(Debug, Clone, Copy)]
pub(super) struct Learned {
    pub added: usize,
    pub barrier_ms: u64,
    pub scan_ms: u64,
    pub insert_ms: u64,
    pub checks: u64,
}

/// The leader's heartbeat memory: agent id -> what it said last and when, in [`MEMORY_SHARDS`] shards, plus
/// the agents the replicated state records alive (learned once per term by [`Service::learn_agents`], then
/// kept current by this leader's own liveness changes: only the leader proposes them).
pub(super) struct Memory {
    shards: Box<[Mutex<HashMap<String, Seen>>]>,
    hasher: RandomState,
    /// Entries over all shards (bounded by [`MAX_TRACKED_AGENTS`]).
    tracked: AtomicUsize,
    /// The Raft term whose replicated alive agents this memory holds (0: not learned).
    learned_term: AtomicU64,
    /// Beats that had to read the agent's replicated record ([`Beat::Check`]), since this process started: on
    /// a new leader, every first beat until the agents are learned.
    checks: AtomicU64,
}

impl Default for Memory {
    fn default() -> Memory {
        Memory {
            shards: (0..MEMORY_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            tracked: AtomicUsize::new(0),
            learned_term: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }
    }
}

/// What a heartbeat means for the replicated state, as far as the memory knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// Known alive at this host: nothing to replicate, nothing to read.
    Known,
    /// Not known alive here (new to this leader, silent, or moved host): check the replicated record.
    Check,
}

impl Memory {
    fn shard(&self, agent: &str) -> &Mutex<HashMap<String, Seen>> {
        let i = (self.hasher.hash_one(agent) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// Count one more entry, unless the memory is full.
    fn reserve(&self) -> bool {
        self.tracked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_TRACKED_AGENTS).then_some(n + 1))
            .is_ok()
    }

    /// Record a heartbeat; also hands back the assignment hash the agent holds (`info.assignment_hash`,
    /// which the memory keeps a copy of). A known agent holding the hash it held before costs one shard
    /// lock and no allocation: the info is moved in, and the memory keeps its own copy of an unchanged
    /// hash, so the beat's own string goes back to the caller for the reply.
    pub(super) fn record(
        &self,
        agent: &str,
        host: &str,
        mut info: HeartbeatInfo,
    ) -> Result<(Beat, String), ApiError> {
        let held = std::mem::take(&mut info.assignment_hash);
        let mut shard = lock(self.shard(agent));
        let now = Instant::now();
        if let Some(seen) = shard.get_mut(agent) {
            if seen.heard && seen.info.started_ms != info.started_ms {
                seen.restarts += 1;
            }
            info.assignment_hash = if seen.info.assignment_hash == held {
                std::mem::take(&mut seen.info.assignment_hash)
            } else {
                held.clone()
            };
            seen.info = info;
            seen.last = now;
            seen.heard = true;
            let moved = seen.host != host;
            if moved {
                seen.host.clear();
                seen.host.push_str(host);
            }
            if seen.alive && !moved {
                return Ok((Beat::Known, held));
            }
            self.checks.fetch_add(1, Ordering::Relaxed);
            return Ok((Beat::Check, held));
        }
        if !self.reserve() {
            return Err(ApiError::unavailable("too many agents tracked by this leader"));
        }
        info.assignment_hash = held.clone();
        let seen = Seen {
            host: host.to_string(),
            info,
            restarts: 0,
            last: now,
            heard: true,
            alive: false,
            datagram_seq: 0,
        };
        shard.insert(agent.to_string(), seen);
        self.checks.fetch_add(1, Ordering::Relaxed);
        Ok((Beat::Check, held))
    }

    /// Take a heartbeat datagram's `seq` from `agent`: false when it is at or below the last one taken (a
    /// replay). An agent this memory does not hold yet is taken without being recorded (its beat creates
    /// the entry; the caller takes the seq again after it).
    pub(super) fn take_datagram_seq(&self, agent: &str, seq: u64) -> bool {
        match lock(self.shard(agent)).get_mut(agent) {
            Some(s) if seq <= s.datagram_seq => false,
            Some(s) => {
                s.datagram_seq = seq;
                true
            }
            None => true,
        }
    }

    /// Whether `agent` is known alive at `host` (a beat from it would be [`Beat::Known`]: nothing to
    /// replicate).
    pub(super) fn known_alive_at(&self, agent: &str, host: &str) -> bool {
        lock(self.shard(agent)).get(agent).is_some_and(|s| s.alive && s.host == host)
    }

    pub(super) fn set_alive(&self, agent: &str, alive: bool) {
        if let Some(s) = lock(self.shard(agent)).get_mut(agent) {
            s.alive = alive;
        }
    }

    /// Forget everything (this node is not the leader, or a new term starts).
    pub(super) fn clear(&self) {
        self.learned_term.store(0, Ordering::Release);
        for shard in self.shards.iter() {
            let mut m = lock(shard);
            let n = m.len();
            m.clear();
            self.tracked.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Beats that read the agent's replicated record, since this process started.
    pub(super) fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// The term this memory learned the replicated alive agents in (0: not yet).
    pub(super) fn learned_term(&self) -> u64 {
        self.learned_term.load(Ordering::Acquire)
    }

    /// Take in the agents the replicated state records alive (`(agent, host)`), as of `term`. An agent
    /// already heard keeps what its beat set; one beyond [`MAX_TRACKED_AGENTS`] is left out (its first beat
    /// is refused as well, the same limit). Returns how many were added.
    pub(super) fn learn(&self, alive: Vec<(String, String)>, term: u64) -> usize {
        let now = Instant::now();
        let mut added = 0;
        for (agent, host) in alive {
            let mut shard = lock(self.shard(&agent));
            if shard.contains_key(&agent) || !self.reserve() {
                continue;
            }
            let seen = Seen {
                host,
                info: HeartbeatInfo::default(),
                restarts: 0,
                last: now,
                heard: false,
                alive: true,
                datagram_seq: 0,
            };
            shard.insert(agent, seen);
            added += 1;
        }
        self.learned_term.store(term, Ordering::Release);
        added
    }

    /// Agents the replicated state says are alive (as far as this memory knows) but not heard from for
    /// `after` (since this leader learned them, for those never heard): at most `max`, with their hosts.
    pub(super) fn silent(&self, after: Duration, max: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let m = lock(shard);
            for (id, s) in m.iter() {
                if out.len() >= max {
                    return out;
                }
                if s.alive && s.last.elapsed() >= after {
                    out.push((id.clone(), s.host.clone()));
                }
            }
        }
        out
    }

    /// Entries in the memory (heard or learned).
    pub(super) fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    /// The agents this leader heard from, in agent order.
    pub(super) fn views(&self) -> Vec<AgentView> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(lock(shard).iter().filter(|(_, s)| s.heard).map(|(agent, s)| view_of(agent, s)));
        }
        out.sort_by(|a, b| a.agent.cmp(&b.agent));
        out
    }

    /// What this leader heard from one agent (a point lookup: one shard lock).
    pub(super) fn view(&self, agent: &str) -> Option<AgentView> {
        lock(self.shard(agent)).get(agent).filter(|s| s.heard).map(|s| view_of(agent, s))
    }
}

fn view_of(agent: &str, s: &Seen) -> AgentView {
    AgentView {
        agent: agent.to_string(),
        host: s.host.clone(),
        alive: s.alive,
        last_heartbeat_ms_ago: u64::try_from(s.last.elapsed().as_millis()).unwrap_or(u64::MAX),
        restarts: s.restarts,
        info: s.info.clone(),
    }
}

/// A heartbeat's fields, checked before the memory is touched.
fn check_heartbeat(agent: &str, host: &str, info: &HeartbeatInfo) -> Result<(), ApiError> {
    if agent.is_empty() {
        return Err(ApiError::invalid("heartbeat without an agent id"));
    }
    validate::name("agent", agent, MAX_TEXT_LEN)?;
    if info.checkers.len() > MAX_HEARTBEAT_CHECKERS {
        return Err(ApiError::invalid(format!(
            "heartbeat lists more than {MAX_HEARTBEAT_CHECKERS} checkers"
        )));
    }
    if info.version.len() > MAX_VERSION_LEN
        || info.checkers.iter().any(|(k, v)| k.len() > MAX_VERSION_LEN || v.len() > MAX_VERSION_LEN)
    {
        return Err(ApiError::invalid(format!(
            "heartbeat names and versions are limited to {MAX_VERSION_LEN} bytes"
        )));
    }
    validate::name("version", &info.version, MAX_VERSION_LEN)?;
    if info.runs.len() > MAX_HEARTBEAT_CHECKERS {
        return Err(ApiError::invalid(format!(
            "heartbeat lists more than {MAX_HEARTBEAT_CHECKERS} checker runs"
        )));
    }
    for r in &info.runs {
        validate::name("checker run name", &r.name, MAX_VERSION_LEN)?;
        validate::name("checker run version", &r.version, MAX_VERSION_LEN)?;
        validate::name("checker run sha256", &r.sha256, MAX_VERSION_LEN)?;
        validate::name("checker run status", &r.status, MAX_VERSION_LEN)?;
        validate::text("checker run error", &r.last_error, super::catalog::MAX_RUN_ERROR_LEN)?;
    }
    validate::name("assignment hash", &info.assignment_hash, MAX_VERSION_LEN)?;
    for (k, v) in &info.checkers {
        validate::name("checker", k, MAX_VERSION_LEN)?;
        validate::name("checker version", v, MAX_VERSION_LEN)?;
    }
    validate::host(host)
}

impl Service {
    /// Record a heartbeat in the leader's memory; only a change of liveness is replicated. An agent this
    /// leader knows alive at this host (heard, or learned from the replicated state) costs no read and no
    /// proposal; any other is checked with one point lookup, and proposed alive only when the replicated
    /// record does not say so already: through the liveness batcher ([`run_liveness`]), so the first beats
    /// of a fleet land in few entries. The answer comes once the change committed.
    ///
    /// Returns the revision and the assignment hash the agent holds (`info.assignment_hash`, handed back
    /// for [`Service::assignment_for_beat`]). A known agent's beat allocates nothing here.
    pub async fn heartbeat(
        &self,
        agent: &str,
        host: &str,
        info: HeartbeatInfo,
    ) -> Result<(u64, String), ApiError> {
        self.leader_gate()?;
        check_heartbeat(agent, host, &info)?;
        let (beat, held) = self.heartbeats.record(agent, host, info)?;
        if beat == Beat::Check {
            let replicated_alive = Reader::new(&self.db)
                .and_then(|r| r.agent(agent))
                .map(|a| a.is_some_and(|r| r.alive && r.host == host))
                .map_err(store_err)?;
            if replicated_alive {
                self.heartbeats.set_alive(agent, true);
            } else {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (agent, host) = (agent.to_string(), host.to_string());
                self.coming_alive
                    .send(ComingAlive { agent, host, tx })
                    .await
                    .map_err(|_| ApiError::unavailable("master is shutting down"))?;
                rx.await.map_err(|_| ApiError::unavailable("master is shutting down"))??;
            }
        }
        Ok((self.current_revision(), held))
    }

    /// A new term of this leader: forget the last term's memory and learn the agents the replicated state
    /// records alive, after a read barrier (so every entry of earlier terms is applied). One pass over the
    /// agent table per term, off the async workers. Returns how many agents were learned.
    pub(super) async fn learn_agents(&self, term: u64) -> Result<Learned, ApiError> {
        let (started, checks) = (Instant::now(), self.heartbeats.checks());
        if self.heartbeats.learned_term() != 0 {
            self.heartbeats.clear();
        }
        self.raft.read_index().await.map_err(|e| self.map_propose_error(e))?;
        let barrier = started.elapsed();
        let db = self.db.clone();
        let alive = tokio::task::spawn_blocking(move || Reader::new(&db).and_then(|r| r.alive_agents()))
            .await
            .map_err(|e| ApiError::internal(format!("learning agents: {e}")))?
            .map_err(store_err)?;
        let scanned = started.elapsed();
        let added = self.heartbeats.learn(alive, term);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(Learned {
            added,
            barrier_ms: ms(barrier),
            scan_ms: ms(scanned - barrier),
            insert_ms: ms(started.elapsed() - scanned),
            checks: self.heartbeats.checks() - checks,
        })
    }

    /// A place for one more heartbeat stream on this node: only the leader serves them (a follower's would
    /// answer nothing but NOT_LEADER), at most `max_heartbeat_streams` at once (one more is
    /// RESOURCE_EXHAUSTED; the agent beats one call at a time meanwhile). The slot is given back when the
    /// stream ends.
    pub fn open_heartbeat_stream(&self) -> Result<StreamSlot, ApiError> {
        self.leader_gate()?;
        take_slot(
            &self.beat_streams,
            self.cfg.max_heartbeat_streams,
            "heartbeat",
            "beat with Heartbeat calls",
        )
    }

    /// A place for one more ingest stream on this node: as [`Service::open_heartbeat_stream`], with its own
    /// limit (`max_ingest_streams`; the agent sends Ingest calls meanwhile).
    pub fn open_ingest_stream(&self) -> Result<StreamSlot, ApiError> {
        self.leader_gate()?;
        take_slot(&self.ingest_streams, self.cfg.max_ingest_streams, "ingest", "send Ingest calls")
    }

    /// This node's heartbeat streams (`/metrics`).
    pub fn heartbeat_streams(&self) -> StreamStats {
        self.beat_streams.stats()
    }

    /// This node's ingest streams (`/metrics`).
    pub fn ingest_streams(&self) -> StreamStats {
        self.ingest_streams.stats()
    }

    /// How long a heartbeat stream may stay without a beat before this node ends it: as long as an agent
    /// may be silent before it is marked so.
    pub fn heartbeat_stream_idle(&self) -> Duration {
        self.cfg.agent_silent_after
    }

    /// How long an ingest stream may stay without a batch before this node ends it (cleanly).
    pub fn ingest_stream_idle(&self) -> Duration {
        self.cfg.ingest_stream_idle
    }

    /// A heartbeat stream ends after its first beat past this age (`heartbeat_stream_max_age_ms`).
    pub fn heartbeat_stream_max_age(&self) -> Duration {
        self.cfg.heartbeat_stream_max_age
    }

    /// Most heartbeat streams this node serves at once (`max_heartbeat_streams`).
    pub fn max_heartbeat_streams(&self) -> usize {
        self.cfg.max_heartbeat_streams
    }

    /// Most ingest streams this node serves at once (`max_ingest_streams`).
    pub fn max_ingest_streams(&self) -> usize {
        self.cfg.max_ingest_streams
    }

    /// Beats that read their agent's replicated record since this process started (`/metrics`).
    pub fn heartbeat_checks(&self) -> u64 {
        self.heartbeats.checks()
    }

    /// Mark silent the agents not heard from for `agent_silent_after` (at most [`MAX_SILENT_PER_ROUND`] per
    /// call, the rest next round): submitted at once so the proposer packs them into few entries. Returns
    /// how many were marked; the first error, if any, after every submission ended.
    pub(super) async fn sweep_silent(&self) -> Result<usize, ApiError> {
        let silent = self.heartbeats.silent(self.cfg.agent_silent_after, MAX_SILENT_PER_ROUND);
        let marks = silent.into_iter().map(|(agent, host)| async move {
            let cmd = Command::AgentLiveness { agent: agent.clone(), host, alive: false };
            self.submit(cmd).await.map(|_| {
                self.heartbeats.set_alive(&agent, false);
                self.net().forget(&agent);
            })
        });
        let results = futures::future::join_all(marks).await;
        let marked = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None => Ok(marked),
        }
    }

    /// Whether a heartbeat datagram from `agent` at `host` may be served: only when its beat replicates
    /// nothing (the agent is known alive at that host). A datagram proves the agent token, not the client
    /// certificate, so everything that changes the replicated state (a new agent, a silent one coming
    /// back, a moved host) goes through a call (`datagrams.rs`).
    pub fn datagram_may_beat(&self, agent: &str, host: &str) -> bool {
        self.heartbeats.known_alive_at(agent, host)
    }

    /// Take a heartbeat datagram's seq from `agent` (false: a replay; see `datagrams.rs`).
    pub fn take_datagram_seq(&self, agent: &str, seq: u64) -> bool {
        self.heartbeats.take_datagram_seq(agent, seq)
    }

    /// Entries in the leader's heartbeat memory (agents heard, and agents learned alive not heard yet).
    pub fn heartbeat_memory_len(&self) -> usize {
        self.heartbeats.tracked()
    }

    /// The leader's heartbeat memory: every agent it has heard from, with what it said last.
    pub fn agents(&self) -> Result<Vec<AgentView>, ApiError> {
        self.leader_gate()?;
        Ok(self.heartbeats.views())
    }

    /// One page of the agents in the replicated state (in id order, `limit` at most: 0 is the default
    /// page, capped at the maximum page), with the leader's heartbeat memory where it has any, continuing
    /// the listing of `page_token` (empty: a first page). A bad token is INVALID_ARGUMENT.
    pub async fn agent_list(&self, limit: usize, page_token: &str) -> Result<super::AgentPage, ApiError> {
        use super::pages::{self, Listing, PageToken};
        let digest = pages::agents_digest();
        let token = pages::request_token(page_token, Listing::Agents, digest)?;
        self.leader_gate()?;
        let r = self.read_view(false).await?;
        let revision = match &token {
            Some(t) => t.revision,
            None => r.revision().map_err(store_err)?,
        };
        let (page, next) = r
            .agents_page(token.as_ref().map(|t| t.after.as_str()), pages::page_size(limit))
            .map_err(store_err)?;
        // Only this page's agents are looked up in the heartbeat memory (one shard lock each).
        let agents = page
            .into_iter()
            .map(|(id, rec)| {
                let h = self.heartbeats.view(&id);
                let h = h.as_ref();
                AgentListing {
                    agent: id.clone(),
                    host: rec.host,
                    alive: rec.alive,
                    since_ms: rec.since_ms,
                    heard: h.is_some(),
                    last_heartbeat_ms_ago: h.map_or(0, |h| h.last_heartbeat_ms_ago),
                    restarts: h.map_or(0, |h| h.restarts),
                    info: h.map(|h| h.info.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let next_page_token = next
            .map(|after| PageToken { listing: Listing::Agents, revision, digest, after }.encode())
            .unwrap_or_default();
        Ok(super::AgentPage { agents, next_page_token })
    }

    /// The actions waiting to run on `host` (handed out with heartbeats; this node's copy, which on the
    /// leader includes everything it acknowledged).
    /// From the in-memory order index: a hash-map lookup when nothing changed since the last call.
    pub async fn actions_for(&self, host: &str) -> Result<Vec<crate::actions::ActionOrder>, ApiError> {
        self.orders.orders(&self.db, host, self.current_revision()).await.map_err(store_err)
    }

    /// The order index itself (tests compare it with a scan).
    /// The leader's index of the objects' deadlines (for its ticks).
    pub fn deadline_index(&self) -> &std::sync::Arc<crate::deadlines::DeadlineIndex> {
        &self.deadlines
    }

    /// Objects due at `now_ms` (at most `max`), as the leader's tick duty finds them.
    pub async fn due_objects(
        &self,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<state_machines::ObjectId>, ApiError> {
        crate::deadlines::due(&self.deadlines, &self.db, self.current_revision(), now_ms, max)
            .await
            .map_err(store_err)
    }

    pub fn order_index(&self) -> &crate::actions::OrderIndex {
        &self.orders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(started_ms: u64) -> HeartbeatInfo {
        HeartbeatInfo { started_ms, ..HeartbeatInfo::default() }
    }

    fn learned(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("a{i}"), format!("h{i}"))).collect()
    }

    #[test]
    fn learned_agents_beat_without_a_check_and_others_are_checked() {
        let m = Memory::default();
        assert_eq!(m.learn(learned(3), 7), 3);
        assert_eq!(m.learned_term(), 7);
        // Learned alive at this host: nothing to read or replicate; the first beat is not a restart.
        assert_eq!(m.record("a0", "h0", info(5)).expect("beat").0, Beat::Known);
        // Moved host, or unknown: checked against the replicated record.
        assert_eq!(m.record("a1", "elsewhere", info(5)).expect("beat").0, Beat::Check);
        assert_eq!(m.record("new", "hn", info(5)).expect("beat").0, Beat::Check);
        assert_eq!(m.record("new", "hn", info(5)).expect("beat").0, Beat::Check, "not alive until set");
        m.set_alive("new", true);
        assert_eq!(m.record("new", "hn", info(6)).expect("beat").0, Beat::Known);
        // Only agents heard are listed; a changed start time is a restart.
        let v = m.views();
        assert_eq!(v.iter().map(|a| a.agent.as_str()).collect::<Vec<_>>(), ["a0", "a1", "new"]);
        assert_eq!(v.iter().map(|a| a.restarts).collect::<Vec<_>>(), [0, 0, 1]);
        // Learning again keeps what beats set.
        m.set_alive("a1", false);
        assert_eq!(m.learn(learned(3), 8), 0);
        assert_eq!(m.record("a1", "elsewhere", info(5)).expect("beat").0, Beat::Check);
        // Every checked beat is counted (a1 twice, new twice), known ones not; a new term keeps the count.
        assert_eq!(m.checks(), 4);
        m.clear();
        assert_eq!((m.tracked(), m.learned_term()), (0, 0));
        assert_eq!(m.checks(), 4);
    }

    #[test]
    fn silent_sweep_takes_at_most_its_limit_and_the_rest_next_round() {
        let m = Memory::default();
        let n = MAX_SILENT_PER_ROUND + 10;
        assert_eq!(m.learn(learned(n), 1), n);
        let first = m.silent(Duration::ZERO, MAX_SILENT_PER_ROUND);
        assert_eq!(first.len(), MAX_SILENT_PER_ROUND);
        for (a, _) in &first {
            m.set_alive(a, false);
        }
        let rest = m.silent(Duration::ZERO, MAX_SILENT_PER_ROUND);
        assert_eq!(rest.len(), 10);
        let mut all: Vec<_> = first.into_iter().chain(rest).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every agent once, with its host");
        assert!(all.iter().all(|(a, h)| a[1..] == h[1..]));
        // Not silent yet: nothing.
        assert!(m.silent(Duration::from_secs(3600), MAX_SILENT_PER_ROUND).is_empty());
    }

    #[test]
    fn a_liveness_batch_stops_at_its_limit_and_the_rest_waits_for_the_next() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(MAX_LIVENESS_BATCH + 10);
        for i in 0..MAX_LIVENESS_BATCH + 5 {
            tx.try_send(i).expect("room");
        }
        let first = rx.try_recv().expect("first");
        let batch = take_batch(first, &mut rx, MAX_LIVENESS_BATCH);
        assert_eq!(batch, (0..MAX_LIVENESS_BATCH).collect::<Vec<_>>());
        let first = rx.try_recv().expect("the rest");
        let rest = take_batch(first, &mut rx, MAX_LIVENESS_BATCH);
        assert_eq!(rest, (MAX_LIVENESS_BATCH..MAX_LIVENESS_BATCH + 5).collect::<Vec<_>>());
    }

    #[test]
    fn tracked_agents_are_bounded_at_the_limit() {
        let m = Memory::default();
        assert_eq!(m.learn(learned(MAX_TRACKED_AGENTS - 1), 1), MAX_TRACKED_AGENTS - 1);
        assert_eq!(m.record("last", "hl", info(1)).expect("the last one fits").0, Beat::Check);
        assert_eq!(m.tracked(), MAX_TRACKED_AGENTS);
        let e = m.record("one-too-many", "hx", info(1)).expect_err("full");
        assert_eq!(e.code, proto::error::Code::Unavailable);
        assert_eq!(m.learn(vec![("more".into(), "hm".into())], 2), 0, "learning stops at the limit too");
        // Known agents still beat; nothing was added.
        assert_eq!(m.record("a5", "h5", info(1)).expect("known").0, Beat::Known);
        assert_eq!(m.tracked(), MAX_TRACKED_AGENTS);
        m.clear();
        assert_eq!(m.tracked(), 0);
        assert_eq!(m.record("one-too-many", "hx", info(1)).expect("room again").0, Beat::Check);
    }
}
