//! Raft over real gRPC on loopback: 3-node clusters of `RaftNode`s in one process (ports from binding
//! 127.0.0.1:0). Leader election, commits, NotLeader with the leader's address, leader loss, catch-up by
//! log and by snapshot, restart from disk, and refusal of an empty data dir under a known id. Storage
//! reliability on real files: altered, overwritten, flipped and truncated `raft.redb` files refused at
//! start (and by `verify_data_dir`), damage found while running stops the node as a corrupt replica, a
//! storage panic is a clear stop, and the NOSPACE alarm on a small tmpfs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use master::raft::{
    Fsm, FsmError, NodeId, ProposeError, RaftConfig, RaftError, RaftNode, Role, SnapshotSource,
    StorageLimits, verify_data_dir,
};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("test_log");

/// Test state machine: every command stored under its index; the response is the index.
struct LogFsm;

impl Fsm for LogFsm {
    fn apply(&mut self, txn: &WriteTransaction, index: u64, cmd: &[u8]) -> Result<Vec<u8>, FsmError> {
        if cmd == b"bad" {
            return Err(FsmError::Rejected("bad command".into()));
        }
        txn.open_table(LOG)?.insert(index, cmd)?;
        Ok(index.to_le_bytes().to_vec())
    }
    fn write_snapshot(txn: &ReadTransaction, out: &mut dyn std::io::Write) -> Result<(), FsmError> {
        if let Ok(t) = txn.open_table(LOG) {
            for item in t.iter()? {
                let (k, v) = item?;
                out.write_all(&k.value().to_le_bytes())?;
                out.write_all(&(v.value().len() as u32).to_le_bytes())?;
                out.write_all(v.value())?;
            }
        }
        Ok(())
    }
    fn restore(&mut self, txn: &WriteTransaction, snap: &dyn SnapshotSource) -> Result<(), FsmError> {
        let data = snap.read_all()?;
        let mut t = txn.open_table(LOG)?;
        t.retain(|_, _| false)?;
        let mut at = 0;
        while at < data.len() {
            let bad = || FsmError::Storage("truncated snapshot".into());
            let k = u64::from_le_bytes(data.get(at..at + 8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            let n =
                u32::from_le_bytes(data.get(at + 8..at + 12).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            let v = data.get(at + 12..at + 12 + n as usize).ok_or_else(bad)?;
            t.insert(k, v)?;
            at += 12 + n as usize;
        }
        Ok(())
    }
}

fn fsm_contents(db: &redb::Database) -> BTreeMap<u64, Vec<u8>> {
    let r = db.begin_read().expect("read");
    match r.open_table(LOG) {
        Ok(t) => t
            .iter()
            .expect("iter")
            .map(|i| {
                let (k, v) = i.expect("item");
                (k.value(), v.value().to_vec())
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

struct Member {
    node: RaftNode,
    db: Arc<redb::Database>,
    stop_server: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

struct Cluster {
    dir: tempfile::TempDir,
    peers: BTreeMap<NodeId, String>,
    /// Where each node's server really listens (differs from `peers` behind a proxy).
    real: BTreeMap<NodeId, String>,
    members: BTreeMap<NodeId, Member>,
    snapshot_every: u64,
}

fn config(
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
    dir: PathBuf,
    snapshot_every: u64,
    join: bool,
) -> RaftConfig {
    RaftConfig {
        id,
        peers: peers.clone(),
        data_dir: dir,
        tick: Duration::from_millis(20),
        election_ticks: 10,
        max_election_ticks: 0,
        heartbeat_ticks: 2,
        snapshot_every,
        join,
    }
}

fn serve(node: &RaftNode, listener: TcpListener) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let svc = node.peer_service();
    let h = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    (tx, h)
}

async fn rebind(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("rebind {addr}: {e}"),
        }
    }
}

impl Cluster {
    async fn start(n: u64, snapshot_every: u64) -> Cluster {
        Self::start_with(n, snapshot_every, BTreeMap::new()).await
    }

    /// `advertised` overrides the address the others dial for some nodes (e.g. a proxy in front of it).
    async fn start_with(n: u64, snapshot_every: u64, advertised: BTreeMap<NodeId, String>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listeners = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            peers.insert(id, l.local_addr().expect("addr").to_string());
            listeners.insert(id, l);
        }
        let real = peers.clone();
        for (id, a) in advertised {
            peers.insert(id, a);
        }
        let mut c = Cluster { dir, peers, real, members: BTreeMap::new(), snapshot_every };
        // Start all at once: each probes the others before bootstrapping.
        let starts = (1..=n).map(|id| {
            let cfg = config(id, &c.peers, c.node_dir(id), snapshot_every, false);
            async move { (id, RaftNode::start(cfg, LogFsm).await) }
        });
        let started = futures::future::join_all(starts).await;
        for (id, r) in started {
            let (node, db) = r.expect("start");
            let (stop_server, server) = serve(&node, listeners.remove(&id).expect("listener"));
            c.members.insert(id, Member { node, db, stop_server, server });
        }
        c
    }

    fn real_addr(&self, id: NodeId) -> String {
        self.real[&id].clone()
    }

    fn node_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.members[&id].node
    }

    async fn stop(&mut self, id: NodeId) {
        let m = self.members.remove(&id).expect("member");
        m.node.shutdown().await;
        let _ = m.stop_server.send(());
        // Graceful shutdown waits for open connections; a wedged one never closes, so bound the wait.
        let abort = m.server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), m.server).await.is_err() {
            abort.abort();
        }
        drop(m.db);
    }

    /// Stops a follower and proposes `n` entries of `size` bytes while it is away, then waits until the
    /// leader compacted its log past `past`: the stopped follower holds the log until it is no longer
    /// recently active (an election timeout of silence), and no file is built for a compaction. Returns
    /// (leader, stopped follower).
    async fn outrun_a_follower(&mut self, n: usize, size: usize, past: u64) -> (NodeId, NodeId) {
        let l = self.wait_leader().await;
        let f = *self.members.keys().find(|id| **id != l).expect("follower");
        self.stop(f).await;
        for i in 0..n {
            self.propose(&vec![b'a' + (i % 26) as u8; size]).await;
        }
        let l = self.wait_leader().await;
        wait_for("the leader compacts past the stopped follower", || {
            self.node(l).status().snapshot_index > past
        })
        .await;
        assert!(snapshot_files(&self.node_dir(l)).is_empty(), "compacted without building a file");
        (l, f)
    }

    async fn restart(&mut self, id: NodeId, join: bool) -> Result<(), RaftError> {
        let listener = rebind(&self.real[&id]).await;
        let cfg = config(id, &self.peers, self.node_dir(id), self.snapshot_every, join);
        let (node, db) = RaftNode::start(cfg, LogFsm).await?;
        let (stop_server, server) = serve(&node, listener);
        self.members.insert(id, Member { node, db, stop_server, server });
        Ok(())
    }

    /// Restarts a member, calling `before_serve` on its node before its peer port answers (to set test
    /// hooks before any peer traffic arrives).
    async fn restart_hooked(&mut self, id: NodeId, before_serve: impl FnOnce(&RaftNode)) {
        let listener = rebind(&self.real[&id]).await;
        let cfg = config(id, &self.peers, self.node_dir(id), self.snapshot_every, false);
        let (node, db) = RaftNode::start(cfg, LogFsm).await.expect("restart");
        before_serve(&node);
        let (stop_server, server) = serve(&node, listener);
        self.members.insert(id, Member { node, db, stop_server, server });
    }

    async fn wait_leader(&self) -> NodeId {
        let deadline = Instant::now() + LIVENESS_BOUND;
        loop {
            let leaders: Vec<NodeId> = self
                .members
                .values()
                .filter(|m| m.node.status().role == Role::Leader)
                .map(|m| m.node.id())
                .collect();
            if leaders.len() == 1 {
                let l = leaders[0];
                // Everyone up agrees.
                if self.members.values().all(|m| m.node.status().leader_id == Some(l)) {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader elected: {:?}", self.statuses());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leader as seen by `ids` only (e.g. the majority side of a partition).
    async fn wait_leader_among(&self, ids: &[NodeId]) -> NodeId {
        let deadline = Instant::now() + LIVENESS_BOUND;
        loop {
            let sts: Vec<_> = ids.iter().map(|id| self.node(*id).status()).collect();
            let leaders: Vec<NodeId> = sts.iter().filter(|s| s.role == Role::Leader).map(|s| s.id).collect();
            if let [l] = leaders[..]
                && sts.iter().all(|s| s.leader_id == Some(l))
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader among {ids:?}: {sts:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes through the leader of `ids`, retrying across leader changes.
    async fn propose_among(&self, ids: &[NodeId], cmd: &[u8]) -> u64 {
        let deadline = Instant::now() + LIVENESS_BOUND;
        loop {
            let l = self.wait_leader_among(ids).await;
            match self.node(l).propose(cmd.to_vec()).await {
                Ok(r) => return u64::from_le_bytes(r.try_into().expect("index")),
                Err(e) => {
                    assert!(Instant::now() < deadline, "proposal never committed: {e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn statuses(&self) -> Vec<master::raft::RaftStatus> {
        self.members.values().map(|m| m.node.status()).collect()
    }

    /// Proposes on the current leader, retrying across leader changes.
    async fn propose(&self, cmd: &[u8]) -> u64 {
        let deadline = Instant::now() + LIVENESS_BOUND;
        loop {
            let l = self.wait_leader().await;
            match self.node(l).propose(cmd.to_vec()).await {
                Ok(r) => return u64::from_le_bytes(r.try_into().expect("index")),
                Err(e) => {
                    assert!(Instant::now() < deadline, "proposal never committed: {e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn wait_converged(&self) {
        let deadline = Instant::now() + LIVENESS_BOUND;
        loop {
            let sts = self.statuses();
            let max_commit = sts.iter().map(|s| s.commit_index).max().unwrap_or(0);
            if sts.iter().all(|s| s.applied_index == max_commit) {
                let contents: Vec<_> = self.members.values().map(|m| fsm_contents(&m.db)).collect();
                if contents.windows(2).all(|w| w[0] == w[1]) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "replicas did not converge: {sts:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Bound on elections, proposals and convergence in these tests: generous, because a loaded 2-core CI
/// machine can stall a node for seconds; a real failure still ends the test.
const LIVENESS_BOUND: Duration = Duration::from_secs(60);

/// The tests in this file each run a whole cluster; they take turns so that one test's nodes do not starve
/// another's elections and keepalives on a 2-core machine.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(())).lock().await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_commits_and_answers_not_leader() {
    let _serial = serial().await;
    let c = Cluster::start(3, 1000).await;
    let l = c.wait_leader().await;
    let idx = c.propose(b"hello").await;
    assert!(idx >= 2, "index {idx}");
    // A follower answers NotLeader with the leader's id and address.
    let f = *c.members.keys().find(|id| **id != l).expect("follower");
    match c.node(f).propose(b"x".to_vec()).await {
        Err(ProposeError::NotLeader { leader, leader_addr }) => {
            assert_eq!(leader, Some(l));
            assert_eq!(leader_addr.as_deref(), Some(c.peers[&l].as_str()));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // The state machine's rejection reaches the proposer; the node goes on.
    assert_eq!(c.node(l).propose(b"bad".to_vec()).await, Err(ProposeError::Fsm("bad command".into())));
    // Many concurrent proposals all commit, each with its own index.
    let futs = (0..200).map(|i| c.node(l).propose(format!("p{i}").into_bytes()));
    let res = futures::future::join_all(futs).await;
    let mut idxs: Vec<u64> =
        res.into_iter().map(|r| u64::from_le_bytes(r.expect("commit").try_into().expect("8"))).collect();
    idxs.sort_unstable();
    idxs.dedup();
    assert_eq!(idxs.len(), 200);
    // Linearizable read on a follower: afterwards it has applied everything committed before the call.
    let commit = c.node(l).status().commit_index;
    c.node(f).read_index().await.expect("read index");
    assert!(c.node(f).status().applied_index >= commit);
    assert_eq!(fsm_contents(&c.members[&f].db).get(&idx).map(Vec::as_slice), Some(&b"hello"[..]));
    assert_eq!(
        c.node(l).propose(vec![0; master::raft::MAX_COMMAND_BYTES + 1]).await,
        Err(ProposeError::TooLarge)
    );
    c.wait_converged().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_leader_loss_and_restarted_node_catches_up_by_log() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 100_000).await;
    for i in 0..10 {
        c.propose(format!("a{i}").as_bytes()).await;
    }
    let old = c.wait_leader().await;
    c.stop(old).await;
    let new = c.wait_leader().await;
    assert_ne!(new, old);
    for i in 0..10 {
        c.propose(format!("b{i}").as_bytes()).await;
    }
    c.restart(old, false).await.expect("restart");
    c.wait_converged().await;
    // Caught up by log: no snapshot was ever taken.
    assert_eq!(c.node(old).status().snapshot_index, 1);
    assert_eq!(fsm_contents(&c.members[&old].db).len(), 20);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_behind_follower_catches_up_by_snapshot() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 5).await;
    let (_, f) = c.outrun_a_follower(40, 8, 20).await;
    c.restart(f, false).await.expect("restart");
    c.wait_converged().await;
    let st = c.node(f).status();
    assert!(st.snapshot_index > 1, "follower installed a snapshot: {st:?}");
    assert_eq!(fsm_contents(&c.members[&f].db).len(), 40);
    c.shutdown().await;
}

/// Issue 13: snapshot chunks carry a CRC-32C on the wire. The leader damages one byte of its next two
/// snapshot streams in transit (the transport's fault hook, a bad link: Raft itself is real): the follower
/// refuses each stream (counted in `SNAPSHOT_CHUNKS_REFUSED`) without stepping it, the leader sends the
/// snapshot again, and the follower installs an intact one: its state equals the leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_damaged_in_transit_is_refused_and_sent_again() {
    let _serial = serial().await;
    use std::sync::atomic::Ordering;
    let refused = &master::raft::alarms::SNAPSHOT_CHUNKS_REFUSED;
    let mut c = Cluster::start(3, 5).await;
    // 40 entries of 64 KiB: a snapshot of about 2.5 MiB, three chunks.
    let (l, f) = c.outrun_a_follower(40, 64 << 10, 20).await;
    let before = refused.load(Ordering::Relaxed);
    c.node(l).damage_snapshot_sends(2);
    c.restart(f, false).await.expect("restart");
    c.wait_converged().await;
    let n = refused.load(Ordering::Relaxed) - before;
    assert!(n >= 2, "the follower refused {n} damaged streams");
    let st = c.node(f).status();
    assert!(st.snapshot_index > 1 && st.last_error.is_none(), "follower installed a snapshot: {st:?}");
    let leader = fsm_contents(&c.members[&l].db);
    assert_eq!(leader.len(), 40);
    assert_eq!(fsm_contents(&c.members[&f].db), leader, "the follower holds the leader's bytes");
    c.shutdown().await;
}

/// The names of the files in a node's snapshot directory.
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (bounded) until `f` holds.
async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIVENESS_BOUND;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue 17: a snapshot is built off the Raft thread, on demand. The log is compacted without a file;
/// a follower behind the log start asks for one, and the leader's builder is held at a barrier (after it
/// took its read transaction and created its file): proposals still commit, the leader keeps its term and
/// role, and the log is not compacted past the build. Released, the file is recorded and sent, the
/// follower catches up; only that file stays on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_keeps_serving_while_a_snapshot_is_built() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 10).await;
    // Two compaction triggers (every 10 entries): the second compacts up to the first's point.
    let (l, f) = c.outrun_a_follower(25, 8, 10).await;
    let term = c.node(l).status().term;
    let start = c.node(l).status().snapshot_index;
    let gate = c.node(l).hold_snapshot_builds();
    c.restart(f, false).await.expect("restart");
    let g = gate.clone();
    let reached = tokio::task::spawn_blocking(move || g.wait_reached(LIVENESS_BOUND)).await.expect("join");
    assert!(reached, "the follower's need started a build on the leader");
    let parts: Vec<_> = snapshot_files(&c.node_dir(l)).into_iter().filter(|n| n.ends_with(".part")).collect();
    assert_eq!(parts.len(), 1, "one build in progress: {parts:?}");
    for i in 0..40 {
        c.node(l).propose(format!("b{i}").into_bytes()).await.expect("commits while the build is held");
    }
    let st = c.node(l).status();
    assert_eq!((st.role, st.term), (Role::Leader, term), "the leader kept serving: {st:?}");
    assert_eq!(st.snapshot_index, start, "the log is not compacted while a build runs: {st:?}");
    gate.release();
    c.wait_converged().await;
    let fs = c.node(f).status();
    assert!(fs.snapshot_index >= start && fs.last_error.is_none(), "installed the built snapshot: {fs:?}");
    let files = snapshot_files(&c.node_dir(l));
    assert!(files.len() <= 1 && files.iter().all(|n| n.ends_with(".snap")), "{files:?}");
    assert_eq!(fsm_contents(&c.members[&l].db).len(), 65);
    assert_eq!(fsm_contents(&c.members[&f].db), fsm_contents(&c.members[&l].db), "replicas equal");
    c.shutdown().await;
}

/// Issue 17's test: a follower killed while a snapshot streams to it (a test hook stalls its receive after
/// two chunks, the node is stopped with the `.part` on disk) restarts, discards the `.part`, and catches
/// up from a new send: replicas equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_snapshot_transfer_discards_the_part_and_catches_up() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 5).await;
    // 40 entries of 64 KiB: a snapshot of about 2.5 MiB, three chunks.
    let (_, f) = c.outrun_a_follower(40, 64 << 10, 20).await;
    c.restart_hooked(f, |n| n.stall_snapshot_receive_after(2)).await;
    let dir = c.node_dir(f);
    wait_for("a snapshot transfer in progress", || snapshot_files(&dir).iter().any(|n| n.ends_with(".part")))
        .await;
    c.stop(f).await;
    assert!(snapshot_files(&dir).iter().any(|n| n.ends_with(".part")), "the kill left the .part");
    c.restart(f, false).await.expect("restart");
    assert!(
        !snapshot_files(&dir).iter().any(|n| n.ends_with(".part")),
        "the .part is discarded at start: {:?}",
        snapshot_files(&dir)
    );
    c.wait_converged().await;
    let st = c.node(f).status();
    assert!(st.snapshot_index > 20 && st.last_error.is_none(), "caught up by a new send: {st:?}");
    let l = c.wait_leader().await;
    let leader = fsm_contents(&c.members[&l].db);
    assert_eq!(leader.len(), 40);
    assert_eq!(fsm_contents(&c.members[&f].db), leader, "replicas equal");
    c.shutdown().await;
}

/// The snapshot file the metadata names is verified at start and by `verify_data_dir` like every other
/// record: damaged or missing, the replica is corrupt ("Rebuild with --join"). The file is the one a
/// follower received and installed (it keeps it until its log start passes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_missing_snapshot_file_is_a_corrupt_replica() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 20).await;
    // Entries of 1 KiB: the snapshot has a frame to damage.
    let (_, f) = c.outrun_a_follower(50, 1 << 10, 20).await;
    c.restart(f, false).await.expect("restart");
    c.wait_converged().await;
    assert!(c.node(f).status().snapshot_index > 20, "installed a snapshot");
    c.stop(f).await;
    let dir = c.node_dir(f);
    let report = verify_data_dir(&dir).expect("pristine store verifies");
    let name = report.snapshot_file.clone().expect("the received snapshot file");
    assert_eq!(snapshot_files(&dir), vec![name.clone()]);
    let path = dir.join("snapshots").join(&name);
    let pristine = std::fs::read(&path).expect("read");
    let mut bad = pristine.clone();
    // One byte in the middle of the one frame's body (the file may be compressed: no marker to look for).
    assert!(pristine.len() > 200, "a frame between the 16-byte header and the 16-byte trailer");
    bad[pristine.len() / 2] ^= 0x01;
    std::fs::write(&path, &bad).expect("damage");
    assert_corrupt("damaged snapshot file, verify", verify_data_dir(&dir));
    assert_corrupt("damaged snapshot file, start", c.restart(f, false).await);
    std::fs::remove_file(&path).expect("remove");
    assert_corrupt("missing snapshot file, verify", verify_data_dir(&dir));
    std::fs::write(&path, &pristine).expect("restore");
    c.restart(f, false).await.expect("the intact store starts");
    c.propose(b"after").await;
    c.wait_converged().await;
    assert_eq!(fsm_contents(&c.members[&f].db).len(), 51);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_keeps_everything() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 7).await;
    for i in 0..15 {
        c.propose(format!("k{i}").as_bytes()).await;
    }
    c.wait_converged().await;
    let before: BTreeMap<NodeId, _> =
        c.members.iter().map(|(id, m)| (*id, (m.node.status(), fsm_contents(&m.db)))).collect();
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.restart(id, false).await.expect("restart");
    }
    for (id, (st, contents)) in &before {
        let now = c.node(*id).status();
        assert!(now.applied_index >= st.applied_index && now.term >= st.term, "{st:?} -> {now:?}");
        assert_eq!(&fsm_contents(&c.members[id].db), contents);
    }
    c.propose(b"after").await;
    c.wait_converged().await;
    assert_eq!(fsm_contents(&c.members[&1].db).len(), 16);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_dir_with_known_id_refuses_without_join() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 5).await;
    for i in 0..12 {
        c.propose(format!("j{i}").as_bytes()).await;
    }
    c.wait_converged().await;
    let l = c.wait_leader().await;
    let f = *c.members.keys().find(|id| **id != l).expect("follower");
    c.stop(f).await;
    std::fs::remove_dir_all(c.node_dir(f)).expect("wipe");
    match c.restart(f, false).await {
        Err(RaftError::RejoinRefused { id, .. }) => assert_eq!(id, f),
        Err(e) => panic!("expected RejoinRefused, got {e}"),
        Ok(()) => panic!("an empty data dir under a known id must be refused"),
    }
    // With join it comes back empty and is filled by a snapshot from the leader.
    std::fs::remove_dir_all(c.node_dir(f)).ok();
    c.restart(f, true).await.expect("join");
    c.propose(b"after-join").await;
    c.wait_converged().await;
    assert_eq!(fsm_contents(&c.members[&f].db).len(), 13);
    c.shutdown().await;
}

fn single_config(dir: PathBuf) -> RaftConfig {
    let mut peers = BTreeMap::new();
    peers.insert(1, "127.0.0.1:1".to_string());
    config(1, &peers, dir, 1000, false)
}

async fn wait_role(node: &RaftNode, role: Role) {
    let deadline = Instant::now() + LIVENESS_BOUND;
    while node.status().role != role {
        assert!(Instant::now() < deadline, "never became {role:?}: {:?}", node.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_cluster_bootstraps_alone_and_restarts() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, db) = RaftNode::start(single_config(dir.path().into()), LogFsm).await.expect("start");
    wait_role(&node, Role::Leader).await;
    let r = node.propose(b"one".to_vec()).await.expect("commit");
    let idx = u64::from_le_bytes(r.try_into().expect("8"));
    node.read_index().await.expect("read index");
    assert_eq!(fsm_contents(&db).get(&idx).map(Vec::as_slice), Some(&b"one"[..]));
    node.clone().shutdown().await;
    assert_eq!(node.status().role, Role::Stopped);
    assert_eq!(node.propose(b"late".to_vec()).await, Err(ProposeError::Stopped));
    assert_eq!(node.read_index().await, Err(ProposeError::Stopped));
    drop(db);
    let (node, db) = RaftNode::start(single_config(dir.path().into()), LogFsm).await.expect("restart");
    assert_eq!(fsm_contents(&db).get(&idx).map(Vec::as_slice), Some(&b"one"[..]));
    wait_role(&node, Role::Leader).await;
    node.propose(b"two".to_vec()).await.expect("commit after restart");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_refused() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = single_config(dir.path().join("a"));
    let cases = [
        RaftConfig { id: 0, ..base.clone() },
        RaftConfig { id: 2, ..base.clone() },
        RaftConfig { heartbeat_ticks: 10, election_ticks: 10, ..base.clone() },
        RaftConfig { tick: Duration::ZERO, ..base.clone() },
        RaftConfig { max_election_ticks: base.election_ticks + 1, ..base.clone() },
    ];
    for cfg in cases {
        match RaftNode::start(cfg.clone(), LogFsm).await {
            Err(RaftError::Config(_)) => {}
            Err(e) => panic!("{cfg:?}: expected a config error, got {e}"),
            Ok(_) => panic!("{cfg:?}: expected a config error"),
        }
    }
    // A data dir written by node 1 is refused to node 2.
    let (node, db) = RaftNode::start(base.clone(), LogFsm).await.expect("start");
    node.shutdown().await;
    drop(db);
    let mut peers = base.peers.clone();
    peers.insert(2, "127.0.0.1:2".into());
    let other = RaftConfig { id: 2, peers, ..base.clone() };
    assert!(matches!(RaftNode::start(other, LogFsm).await, Err(RaftError::Config(_))));
    // So is a restart with a different member set (membership is fixed).
    let mut peers = base.peers.clone();
    peers.insert(3, "127.0.0.1:3".into());
    let grown = RaftConfig { peers, ..base };
    assert!(matches!(RaftNode::start(grown, LogFsm).await, Err(RaftError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_service_rejects_hostile_input_without_effect() {
    let _serial = serial().await;
    use proto::peer::peer_client::PeerClient;
    use proto::peer::{ProbeRequest, RaftBatch, SnapshotChunk};
    let c = Cluster::start(3, 1000).await;
    let l = c.wait_leader().await;
    c.propose(b"before").await;
    let f = *c.members.keys().find(|id| **id != l).expect("follower");
    let before = c.node(f).status();
    let mut client = PeerClient::connect(format!("http://{}", c.peers[&f])).await.expect("connect");
    // Garbage bytes.
    let garbage =
        RaftBatch { from: l, from_addr: String::new(), messages: vec![vec![0xff, 0x00, 0x13, 0x37]] };
    let e = client.send(garbage).await.expect_err("garbage accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A sender that is not a member.
    let stranger = RaftBatch { from: 99, from_addr: "x".into(), messages: vec![] };
    assert_eq!(client.send(stranger).await.expect_err("stranger").code(), tonic::Code::PermissionDenied);
    // A message claiming another sender than the batch.
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    m.from = 99;
    m.to = f;
    let bytes = protobuf::Message::write_to_bytes(&m).expect("encode");
    let spoof = RaftBatch { from: l, from_addr: String::new(), messages: vec![bytes] };
    assert_eq!(client.send(spoof).await.expect_err("spoof").code(), tonic::Code::InvalidArgument);
    // A snapshot stream shorter than announced, and one announcing more than the limit.
    let mut hdr = raft::eraftpb::Message::default();
    hdr.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    hdr.from = l;
    hdr.to = f;
    let header = protobuf::Message::write_to_bytes(&hdr).expect("encode");
    let short = SnapshotChunk {
        from: l,
        from_addr: String::new(),
        header: header.clone(),
        total_len: 100,
        data: vec![1; 10],
        ..Default::default()
    };
    let e = client.send_snapshot(tokio_stream::iter(vec![short])).await.expect_err("short snapshot");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let huge = SnapshotChunk {
        from: l,
        from_addr: String::new(),
        header: header.clone(),
        total_len: u64::MAX,
        data: vec![],
        ..Default::default()
    };
    let e = client.send_snapshot(tokio_stream::iter(vec![huge])).await.expect_err("huge snapshot");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    // Checksummed streams: a chunk whose bytes do not match its CRC-32C, and chunks that each match but
    // do not add up to the announced whole, are refused (DataLoss) before anything is stepped.
    let crc = master::checksum::crc32c;
    let (a, b) = (vec![7u8; 10], vec![9u8; 10]);
    let whole = [a.clone(), b.clone()].concat();
    let head = SnapshotChunk {
        from: l,
        from_addr: String::new(),
        header: header.clone(),
        total_len: 20,
        data: a.clone(),
        crc32c: crc(&a),
        data_crc32c: crc(&whole),
        checksummed: true,
    };
    let mut flipped = b.clone();
    flipped[3] ^= 1;
    let bad_chunk = SnapshotChunk { data: flipped, crc32c: crc(&b), ..Default::default() };
    let e = client
        .send_snapshot(tokio_stream::iter(vec![head.clone(), bad_chunk]))
        .await
        .expect_err("damaged chunk");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    let wrong_whole = SnapshotChunk { data_crc32c: crc(&whole) ^ 1, ..head };
    let good_chunk = SnapshotChunk { data: b.clone(), crc32c: crc(&b), ..Default::default() };
    let e = client
        .send_snapshot(tokio_stream::iter(vec![wrong_whole, good_chunk]))
        .await
        .expect_err("damaged whole");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    // Probe from a stranger.
    let e = client.probe(ProbeRequest { from: 42, voters: vec![] }).await.expect_err("probe");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Nothing changed; the cluster still works.
    let after = c.node(f).status();
    assert_eq!((after.term, after.role, after.last_error.clone()), (before.term, before.role, None));
    c.propose(b"after").await;
    c.wait_converged().await;
    c.shutdown().await;
}

/// Prints proposal throughput on a 3-node loopback cluster (not a timed assertion).
/// Run: cargo test -p master --test raft_grpc bench_proposals -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_proposals() {
    let _serial = serial().await;
    let c = Cluster::start(3, 10_000).await;
    let l = c.wait_leader().await;
    for (concurrency, total) in [(1usize, 200usize), (64, 5000), (512, 20000)] {
        let t0 = Instant::now();
        let node = c.node(l).clone();
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::new();
        for i in 0..total {
            let permit = sem.clone().acquire_owned().await.expect("sem");
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let r = node.propose(format!("bench-{i}-{}", "x".repeat(100)).into_bytes()).await;
                drop(permit);
                r.is_ok()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.expect("task"));
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "concurrency {concurrency}: {ok}/{total} committed in {secs:.2}s = {:.0} proposals/s",
            ok as f64 / secs
        );
    }
    c.shutdown().await;
}

/// A TCP proxy that can wedge: `wedge()` freezes every open connection for good (bytes are swallowed,
/// sockets stay open, like a peer behind a partition whose connection state is lost) and parks new ones;
/// `heal()` lets new connections through. Old connections never recover: only HTTP/2 keepalive notices.
struct WedgeProxy {
    addr: String,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    wedged: Arc<std::sync::atomic::AtomicBool>,
}

impl WedgeProxy {
    async fn start() -> (WedgeProxy, tokio::sync::oneshot::Sender<String>) {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = l.local_addr().expect("addr").to_string();
        let epoch = Arc::new(AtomicU64::new(0));
        let wedged = Arc::new(AtomicBool::new(false));
        let (target_tx, target_rx) = oneshot::channel::<String>();
        let (e2, w2) = (epoch.clone(), wedged.clone());
        tokio::spawn(async move {
            let target = target_rx.await.expect("target");
            let mut parked = Vec::new();
            loop {
                let Ok((inb, _)) = l.accept().await else { return };
                if w2.load(Ordering::SeqCst) {
                    parked.push(inb);
                    continue;
                }
                let Ok(out) = tokio::net::TcpStream::connect(&target).await else { continue };
                let my = e2.load(Ordering::SeqCst);
                let (ri, wi) = inb.into_split();
                let (ro, wo) = out.into_split();
                tokio::spawn(pipe(ri, wo, e2.clone(), my));
                tokio::spawn(pipe(ro, wi, e2.clone(), my));
            }
        });
        (WedgeProxy { addr, epoch, wedged }, target_tx)
    }

    fn wedge(&self) {
        self.wedged.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.wedged.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    my: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if epoch.load(Ordering::SeqCst) != my {
            // Wedged: swallow everything from now on, keep both sockets open.
            let _keep = w;
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            std::future::pending::<()>().await;
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Node 3 sits behind a wedging proxy (everybody dials it through the proxy; its own outgoing connections
/// are direct). While wedged, the majority {1, 2} keeps committing; after the heal node 3 catches up only
/// because HTTP/2 keepalive tears the frozen connections down (the test fails with keepalive removed).
///
/// This test used to be ignored as "node 3 stays PreCandidate for over 60 s after the heal on a fresh
/// machine". The defect was in the test: it proposed during the partition through `Cluster::propose`,
/// whose `wait_leader` insists that EVERY running member names the leader, the isolated node included.
/// Whenever the proposals took longer than node 3's election timeout (a slow or loaded machine), node 3
/// became PreCandidate, `wait_leader` spun until its 60 s deadline, and the heal was never reached: the
/// PreCandidate in the failure message was still behind a wedged proxy. Now the test waits until node 3
/// has noticed the partition (so the slow path is the one always exercised) and proposes through the
/// majority only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_connections_recover_after_partition_heals() {
    let _serial = serial().await;
    let (proxy, target) = WedgeProxy::start().await;
    let mut adv = BTreeMap::new();
    adv.insert(3, proxy.addr.clone());
    let c = Cluster::start_with(3, 1000, adv).await;
    // Node 3 really listens on its own port; everybody dials it through the proxy.
    assert_eq!(c.peers[&3], proxy.addr);
    target.send(c.real_addr(3)).expect("proxy target");
    for i in 0..5 {
        c.propose(format!("w{i}").as_bytes()).await;
    }
    c.wait_converged().await;
    proxy.wedge();
    // Node 3 hears nothing any more: it forgets the leader after an election timeout.
    let deadline = Instant::now() + LIVENESS_BOUND;
    while c.node(3).status().leader_id.is_some() {
        assert!(Instant::now() < deadline, "node 3 kept a leader behind a wedged proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 5..10 {
        c.propose_among(&[1, 2], format!("w{i}").as_bytes()).await;
    }
    proxy.heal();
    // The channels into node 3 are wedged; keepalive must tear them down so node 3 catches up.
    c.propose(b"after-heal").await;
    c.wait_converged().await;
    assert_eq!(fsm_contents(&c.members[&3].db).len(), 11);
    c.shutdown().await;
}

// ---- storage reliability (issue 13 items 1, 2, 9) ----

fn raft_file(dir: &std::path::Path) -> PathBuf {
    dir.join("raft.redb")
}

/// Replaces every occurrence of `from` by `to` (same length) in the file; returns how many.
fn replace_in_file(path: &std::path::Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).expect("read file");
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(path, bytes).expect("write file");
    n
}

fn find_in_file(path: &std::path::Path, what: &[u8]) -> usize {
    let bytes = std::fs::read(path).expect("read file");
    bytes.windows(what.len()).position(|w| w == what).expect("marker in file")
}

fn assert_corrupt<T>(what: &str, r: Result<T, RaftError>) {
    match r {
        Err(e @ RaftError::Corrupt(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("corrupt replica") && msg.contains("--join"), "{what}: {msg}");
        }
        Err(e) => panic!("{what}: expected a corrupt replica, got {e}"),
        Ok(_) => panic!("{what}: the damaged store was accepted"),
    }
}

/// The reproduction: stop a follower, replace `seq=001234` by `seq=009999` inside its raft.redb,
/// start it: it must refuse (it used to serve the altered text and keep applying). Then it is rebuilt with
/// `join` and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_follower_store_is_refused_then_rebuilt_with_join() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 1000).await;
    for i in 1230..1240 {
        c.propose(format!("seq={i:06}").as_bytes()).await;
    }
    c.wait_converged().await;
    let l = c.wait_leader().await;
    let f = *c.members.keys().find(|id| **id != l).expect("follower");
    c.stop(f).await;
    let n = replace_in_file(&raft_file(&c.node_dir(f)), b"seq=001234", b"seq=009999");
    assert!(n > 0, "the marker is in the file");
    assert_corrupt("altered follower", c.restart(f, false).await);
    assert_corrupt("verify", verify_data_dir(&c.node_dir(f)));
    // Rebuild: move the data dir away, join empty, get everything back from the leader.
    std::fs::rename(c.node_dir(f), c.dir.path().join("damaged")).expect("move away");
    c.restart(f, true).await.expect("join");
    c.propose(b"after-rebuild").await;
    c.wait_converged().await;
    let contents = fsm_contents(&c.members[&f].db);
    assert!(contents.values().any(|v| v == b"seq=001234") && !contents.values().any(|v| v == b"seq=009999"));
    c.shutdown().await;
}

/// Damage of every kind to a real file is refused at start and by `verify_data_dir` with the clear error
/// (never a panic): 64 KiB of random bytes over live pages, one flipped byte, truncation. The pristine
/// file passes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_are_refused_at_start_and_by_verify() {
    let _serial = serial().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    let (node, db) = RaftNode::start(single_config(dir.clone()), LogFsm).await.expect("start");
    wait_role(&node, Role::Leader).await;
    for i in 0..200 {
        node.propose(format!("seq={i:06}-{}", "x".repeat(500)).into_bytes()).await.expect("commit");
    }
    node.shutdown().await;
    drop(db);
    let pristine = std::fs::read(raft_file(&dir)).expect("read");
    let report = verify_data_dir(&dir).expect("pristine store verifies");
    assert_eq!(report.node_id, Some(1));
    assert!(report.log_entries >= 200 && report.applied_index >= 201, "{report:?}");
    let restore = || std::fs::write(raft_file(&dir), &pristine).expect("restore");

    type Damage = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "64 KiB of random bytes over live pages",
            Box::new(|p| {
                let mut bytes = std::fs::read(p).expect("read");
                let mid = find_in_file(p, b"seq=000100");
                let start = mid.saturating_sub(32 << 10);
                let end = (start + (64 << 10)).min(bytes.len());
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15; // seeded xorshift: the same bytes every run
                for b in &mut bytes[start..end] {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                std::fs::write(p, bytes).expect("write");
            }),
        ),
        (
            "one flipped byte",
            Box::new(|p| {
                let mut bytes = std::fs::read(p).expect("read");
                let at = find_in_file(p, b"seq=000150") + 7;
                bytes[at] ^= 0x01;
                std::fs::write(p, bytes).expect("write");
            }),
        ),
        (
            "truncated to half",
            Box::new(|p| {
                let f = std::fs::OpenOptions::new().write(true).open(p).expect("open");
                let len = f.metadata().expect("meta").len();
                f.set_len(len / 2).expect("truncate");
            }),
        ),
    ];
    for (what, damage) in cases {
        restore();
        damage(&raft_file(&dir));
        let verified = verify_data_dir(&dir);
        assert!(verified.is_err(), "{what}: verify accepted it: {verified:?}");
        restore();
        damage(&raft_file(&dir));
        match RaftNode::start(single_config(dir.clone()), LogFsm).await {
            Err(RaftError::Corrupt(m)) => eprintln!("{what}: refused: {m}"),
            Err(e) => panic!("{what}: expected a corrupt replica, got {e}"),
            Ok((n, _)) => {
                n.shutdown().await;
                panic!("{what}: the damaged store was accepted");
            }
        }
    }
    restore();
    let (node, db) = RaftNode::start(single_config(dir.clone()), LogFsm).await.expect("pristine restarts");
    assert_eq!(fsm_contents(&db).len(), 200);
    node.shutdown().await;
}

/// Damage that appears while a node runs is found when the node reads it, and stops that node as a
/// corrupt replica (status, error text) instead of being sent to a follower; the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_found_while_running_stops_the_leader_as_a_corrupt_replica() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, 100_000).await;
    let l = c.wait_leader().await;
    let f = *c.members.keys().find(|id| **id != l).expect("follower");
    c.stop(f).await;
    let mut idxs = Vec::new();
    for i in 0..20 {
        idxs.push(c.propose(format!("late-{i:03}").as_bytes()).await);
    }
    let l = c.wait_leader().await;
    // Alter the entries the returning follower needs, in the leader's store, through redb (its page
    // checksums stay valid: only the records' own checksums can tell).
    {
        let db = &c.members[&l].db;
        const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
        let txn = db.begin_write().expect("w");
        {
            let mut t = txn.open_table(RAFT_LOG).expect("raft_log");
            for i in &idxs {
                let mut v = t.get(*i).expect("get").expect("entry").value().to_vec();
                let at = v.windows(5).position(|w| w == b"late-").expect("marker");
                v[at] = b'L';
                t.insert(*i, v.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    c.restart(f, false).await.expect("restart follower");
    let deadline = Instant::now() + LIVENESS_BOUND;
    loop {
        let st = c.node(l).status();
        if st.role == Role::Stopped {
            assert!(st.corrupt, "{st:?}");
            let e = st.last_error.unwrap_or_default();
            assert!(e.contains("corrupt replica") && e.contains("raft_log") && e.contains("--join"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "the leader kept running on damaged entries: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(master::raft::alarms::CORRUPTION_DETECTED.load(Ordering::Relaxed) > 0);
    // The damaged bytes never reached the follower; the two healthy members go on.
    let stopped = c.members.remove(&l).expect("leader");
    stopped.node.shutdown().await;
    let _ = stopped.stop_server.send(());
    c.propose(b"after").await;
    c.wait_converged().await;
    let contents = fsm_contents(&c.members[&f].db);
    assert!(contents.values().all(|v| !v.starts_with(b"Late-")), "damaged bytes were served");
    assert_eq!(contents.values().filter(|v| v.starts_with(b"late-")).count(), 20);
    c.shutdown().await;
}

/// A state machine that panics on one command, standing in for redb's `unreachable!` on a damaged page.
struct PanicFsm;

impl Fsm for PanicFsm {
    fn apply(&mut self, txn: &WriteTransaction, index: u64, cmd: &[u8]) -> Result<Vec<u8>, FsmError> {
        if cmd == b"panic" {
            panic!("internal error: entered unreachable code");
        }
        LogFsm.apply(txn, index, cmd)
    }
    fn write_snapshot(txn: &ReadTransaction, out: &mut dyn std::io::Write) -> Result<(), FsmError> {
        LogFsm::write_snapshot(txn, out)
    }
    fn restore(&mut self, txn: &WriteTransaction, snap: &dyn SnapshotSource) -> Result<(), FsmError> {
        LogFsm.restore(txn, snap)
    }
}

/// A panic inside the storage transaction of the Raft loop is caught at the storage boundary: the node
/// stops with the clear corrupt-replica error (not "raft loop panicked"), every waiter gets `Stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_panic_in_the_loop_is_a_clear_stop() {
    let _serial = serial().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (node, _db) = RaftNode::start(single_config(tmp.path().into()), PanicFsm).await.expect("start");
    wait_role(&node, Role::Leader).await;
    node.propose(b"fine".to_vec()).await.expect("commit");
    assert_eq!(node.propose(b"panic".to_vec()).await, Err(ProposeError::Stopped));
    wait_role(&node, Role::Stopped).await;
    let st = node.status();
    let e = st.last_error.clone().unwrap_or_default();
    assert!(st.corrupt && e.contains("corrupt replica") && e.contains("storage panic"), "{st:?}");
    assert!(!e.contains("raft loop panicked"), "{e}");
    assert_eq!(node.propose(b"late".to_vec()).await, Err(ProposeError::Stopped));
    node.shutdown().await;
}

/// A tmpfs of `size` mounted on a fresh dir, unmounted on drop; None (with a message) where mounting is
/// not permitted.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        use nix::mount::{MsFlags, mount};
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = format!("size={size}");
        match mount(Some("tmpfs"), dir.path(), Some("tmpfs"), MsFlags::empty(), Some(opts.as_str())) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => {
                eprintln!("SKIPPED: cannot mount a tmpfs here ({e}); the NOSPACE test needs root");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", self.dir.path().display());
        }
    }
}

/// The NOSPACE alarm on a real small file system: below the floor the leader refuses proposals with a
/// typed error and keeps serving reads; when space is freed the alarm clears and writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_refuses_writes_keeps_reads_and_clears() {
    let _serial = serial().await;
    let Some(fs) = Tmpfs::mount("48m") else { return };
    let dir = fs.dir.path().join("node");
    let floor = 16 << 20;
    let limits = StorageLimits { min_free_bytes: floor, ..StorageLimits::default() };
    let (node, db) = RaftNode::start_with(single_config(dir.clone()), limits, LogFsm).await.expect("start");
    wait_role(&node, Role::Leader).await;
    node.propose(b"before".to_vec()).await.expect("commit with space");
    assert!(!node.status().nospace);
    // Leave 8 MiB free: below the floor.
    let free = master::raft::alarms::free_bytes(&dir).expect("statvfs");
    let filler = fs.dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; (free - (8 << 20)) as usize]).expect("fill");
    let deadline = Instant::now() + LIVENESS_BOUND;
    loop {
        match node.propose(b"during".to_vec()).await {
            Err(ProposeError::NoSpace { free_bytes, floor_bytes }) => {
                assert!(free_bytes < floor_bytes && floor_bytes == floor);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(Instant::now() < deadline, "the alarm never rose");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.status().nospace);
    let e = node.propose(b"refused".to_vec()).await.expect_err("refused");
    assert!(e.to_string().contains("no space"), "{e}");
    node.read_index().await.expect("reads go on during the alarm");
    assert!(fsm_contents(&db).values().any(|v| v == b"before"));
    assert!(!fsm_contents(&db).values().any(|v| v == b"refused"));
    std::fs::remove_file(&filler).expect("free space");
    let deadline = Instant::now() + LIVENESS_BOUND;
    loop {
        match node.propose(b"after".to_vec()).await {
            Ok(_) => break,
            Err(ProposeError::NoSpace { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(Instant::now() < deadline, "the alarm never cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!node.status().nospace);
    node.shutdown().await;
    drop(db);
}

// ---- leader hint (issue 13 item 10) ----

/// A follower must not name a leader it has not heard from within the election timeout. Driven through the
/// real peer service by a scripted "leader" (node 2, played by the test) in front of a member rebuilding
/// with `join` (it has no conf state yet, so it never campaigns: raft-rs would keep naming the leader
/// forever, as for a rebuilt node whose leader died before sending the snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_stops_naming_a_silent_leader() {
    let _serial = serial().await;
    use proto::peer::RaftBatch;
    use proto::peer::peer_client::PeerClient;
    let tmp = tempfile::tempdir().expect("tempdir");
    let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr1 = l1.local_addr().expect("addr").to_string();
    // Node 2's address refuses connections: whatever node 1 sends it is lost.
    let addr2 = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let peers = BTreeMap::from([(1, addr1.clone()), (2, addr2.clone())]);
    let (node, _db) =
        RaftNode::start(config(1, &peers, tmp.path().into(), 1000, true), LogFsm).await.expect("join");
    let (stop_server, server) = serve(&node, l1);
    let mut client = PeerClient::connect(format!("http://{addr1}")).await.expect("connect");
    let heartbeat = || {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        m.from = 2;
        m.to = 1;
        m.term = 5;
        let bytes = protobuf::Message::write_to_bytes(&m).expect("encode");
        RaftBatch { from: 2, from_addr: addr2.clone(), messages: vec![bytes] }
    };
    for round in 0..2 {
        client.send(heartbeat()).await.expect("heartbeat accepted");
        let deadline = Instant::now() + LIVENESS_BOUND;
        while node.status().leader_id != Some(2) {
            assert!(Instant::now() < deadline, "round {round}: never followed node 2: {:?}", node.status());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match node.propose(b"x".to_vec()).await {
            Err(ProposeError::NotLeader { leader: Some(2), leader_addr }) => {
                assert_eq!(leader_addr.as_deref(), Some(addr2.as_str()))
            }
            other => panic!("round {round}: expected NotLeader pointing at node 2, got {other:?}"),
        }
        // Node 2 falls silent: after the election timeout (10 ticks of 20 ms) it is no longer named.
        let deadline = Instant::now() + LIVENESS_BOUND;
        loop {
            let st = node.status();
            assert_eq!((st.role, st.term), (Role::Follower, 5), "round {round}: {st:?}");
            if st.leader_id.is_none() {
                assert_eq!(st.leader_addr, None);
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: still naming a silent leader: {st:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            node.propose(b"x".to_vec()).await,
            Err(ProposeError::NotLeader { leader: None, leader_addr: None }),
            "round {round}"
        );
        assert_eq!(node.read_index().await, Err(ProposeError::NotLeader { leader: None, leader_addr: None }));
    }
    node.shutdown().await;
    let _ = stop_server.send(());
    let _ = server.await;
}

/// Mixed versions: an older leader sends a snapshot the old way (the whole bytes as chunks, as binaries
/// before snapshot files did; once with the chunk checksums of the previous binary, once without them as
/// binaries before checksums): a member of this binary rebuilding with `join` writes it to a file and
/// installs it. Node 2 is played by the test through the real peer service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streamed_by_an_older_leader_is_installed() {
    let _serial = serial().await;
    use master::checksum::crc32c;
    use proto::peer::SnapshotChunk;
    use proto::peer::peer_client::PeerClient;
    for checksummed in [true, false] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr1 = l1.local_addr().expect("addr").to_string();
        let addr2 = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let peers = BTreeMap::from([(1, addr1.clone()), (2, addr2.clone())]);
        let (node, db) =
            RaftNode::start(config(1, &peers, tmp.path().into(), 1000, true), LogFsm).await.expect("join");
        let (stop_server, server) = serve(&node, l1);
        let mut client = PeerClient::connect(format!("http://{addr1}")).await.expect("connect");
        // LogFsm's snapshot bytes for entries 2..=7, as the old leader kept them in memory.
        let want: BTreeMap<u64, Vec<u8>> = (2..=7u64).map(|i| (i, format!("old-{i}").into_bytes())).collect();
        let mut data = Vec::new();
        for (k, v) in &want {
            data.extend_from_slice(&k.to_le_bytes());
            data.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(v);
        }
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        m.from = 2;
        m.to = 1;
        m.term = 5;
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = 7;
        meta.term = 5;
        meta.mut_conf_state().voters = vec![1, 2];
        let header = protobuf::Message::write_to_bytes(&m).expect("encode");
        let (a, b) = data.split_at(data.len() / 2);
        let crc = |d: &[u8]| if checksummed { crc32c(d) } else { 0 };
        let chunks = vec![
            SnapshotChunk {
                from: 2,
                from_addr: addr2.clone(),
                header,
                total_len: data.len() as u64,
                data: a.to_vec(),
                crc32c: crc(a),
                data_crc32c: crc(&data),
                checksummed,
            },
            SnapshotChunk { data: b.to_vec(), crc32c: crc(b), ..Default::default() },
        ];
        client.send_snapshot(tokio_stream::iter(chunks)).await.expect("accepted");
        wait_for("the old leader's snapshot is installed", || node.status().snapshot_index == 7).await;
        assert_eq!(fsm_contents(&db), want, "checksummed={checksummed}");
        let files = snapshot_files(tmp.path());
        assert!(files.len() == 1 && files[0].ends_with(".snap"), "{files:?}");
        node.shutdown().await;
        let _ = stop_server.send(());
        let _ = server.await;
        drop(db);
        // The installed file is the snapshot the restarted member verifies and would send on.
        let report = verify_data_dir(tmp.path()).expect("verifies");
        assert_eq!((report.snapshot_index, report.snapshot_bytes), (7, data.len() as u64));
    }
}
