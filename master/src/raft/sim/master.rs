//! The seeded simulation with the master's real state machine: 3 members of [`Core`] over redb with
//! [`MasterFsm`], a lossy reordering network, partitions, crashes and restarts, and snapshots every few
//! entries so lagging members are caught up by snapshot installs. Proposals are random master commands (the
//! property tests' generator). Every committed entry a member applies is recorded; after the heal every
//! member must hold byte-identical state, equal to the in-memory [`MemFsm`] fed the recorded entries in
//! order (so `decide` over the in-memory view and over redb agree), and serve the same watch history from
//! revision 1 (the change log travels in snapshots: issue 13 item 4).
//!
//! `HUATUO_SIM_MASTER_SEEDS=N` runs N seeds (default 12) from `HUATUO_SIM_FIRST_SEED` (default 0),
//! `HUATUO_SIM_SEED=S` reruns one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::fsm::tests::props::random_command;
use crate::fsm::{MasterFsm, MemFsm};
use crate::model::{COMMAND_VERSION, Envelope};
use crate::raft::RaftError;
use crate::sm_seam::Policy;
use crate::store::{ChangesRead, Filter, Reader};

type EntryLog = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

/// The master's fsm, recording every entry it applies (raft guarantees one entry per index on all members;
/// a mismatch here is a replication bug).
struct RecordingFsm {
    inner: MasterFsm,
    log: EntryLog,
}

impl Fsm for RecordingFsm {
    fn apply(&mut self, txn: &WriteTransaction, index: u64, cmd: &[u8]) -> Result<Vec<u8>, FsmError> {
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(prev) = log.get(&index) {
                assert_eq!(prev.as_slice(), cmd, "two different entries applied at index {index}");
            }
            log.insert(index, cmd.to_vec());
        }
        self.inner.apply(txn, index, cmd)
    }
    fn write_snapshot(txn: &ReadTransaction, out: &mut dyn std::io::Write) -> Result<(), FsmError> {
        MasterFsm::write_snapshot(txn, out)
    }
    fn restore(&mut self, txn: &WriteTransaction, snap: &dyn super::SnapshotSource) -> Result<(), FsmError> {
        self.inner.restore(txn, snap)
    }
    fn after_commit(&mut self) {
        self.inner.after_commit();
    }
}

type Disk = Arc<Mutex<Platter>>;

fn open_master(
    id: NodeId,
    (dir, disk): (&Path, &Disk),
    voters: &[NodeId],
    log: &EntryLog,
    knows: u32,
) -> Core<RecordingFsm> {
    let (_db, st) = super::open_store_on::<RecordingFsm>(disk, dir, id, voters);
    let inner = MasterFsm::new(Policy::default()).0.knowing_command_version(knows);
    let fsm = RecordingFsm { inner, log: log.clone() };
    // Snapshot every 3 entries: a member that missed a few is caught up by a snapshot install.
    let cfg = CoreConfig {
        id,
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_every: 3,
        min_election_ticks: 0,
        max_election_ticks: 11,
        campaign_jitter: false,
        incarnation: 7,
    };
    Core::new(cfg, st, fsm, &slog::Logger::root(slog::Discard, slog::o!())).expect("core")
}

struct MasterSim {
    seed: u64,
    rng: StdRng,
    dirs: Vec<PathBuf>,
    /// Each member's database file.
    disks: Vec<Disk>,
    nodes: Vec<Option<Core<RecordingFsm>>>,
    net: Vec<Message>,
    cut: BTreeSet<(NodeId, NodeId)>,
    log: EntryLog,
    seqs: BTreeMap<String, u64>,
    now: u64,
    token: u64,
    installs: usize,
    _tmp: tempfile::TempDir,
}

const IDS: [NodeId; 3] = [1, 2, 3];
/// Random steps before the heal.
const MASTER_STEPS: usize = 1500;
/// Entries proposed once the network healed.
const HEALED_PROPOSALS: usize = 20;
/// Rounds of a reliable network allowed for convergence after the heal.
const CONVERGE_ROUNDS: usize = 3000;

impl MasterSim {
    fn new(seed: u64) -> MasterSim {
        let tmp = tempfile::Builder::new().prefix("huatuo-msim").tempdir().expect("tempdir");
        let log = EntryLog::default();
        let dirs: Vec<PathBuf> = IDS.iter().map(|id| tmp.path().join(format!("n{id}"))).collect();
        let disks: Vec<Disk> = IDS.iter().map(|_| Disk::default()).collect();
        let nodes = IDS
            .iter()
            .zip(&dirs)
            .map(|(id, d)| {
                std::fs::create_dir_all(d).expect("mkdir");
                Some(open_master(*id, (d, &disks[(*id - 1) as usize]), &IDS, &log, COMMAND_VERSION))
            })
            .collect();
        MasterSim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            dirs,
            disks,
            nodes,
            net: Vec::new(),
            cut: BTreeSet::new(),
            log,
            seqs: BTreeMap::new(),
            now: 1_000_000,
            token: 0,
            installs: 0,
            _tmp: tmp,
        }
    }

    fn ready(&mut self, i: usize) {
        let Some(c) = self.nodes[i].as_mut() else { return };
        let mut out = Vec::new();
        if c.has_ready()
            && let Err(e) = c.on_ready(&mut |m| out.push(m))
        {
            panic!("master simulation seed {}: node {} stopped: {e}", self.seed, IDS[i]);
        }
        c.take_completions();
        self.net.extend(out);
    }

    fn deliver(&mut self, m: Message, lost: bool) {
        let (from, to) = (m.from, m.to);
        let snap = m.get_msg_type() == MessageType::MsgSnapshot;
        let idx = |id: NodeId| IDS.iter().position(|x| *x == id).expect("known id");
        let mut delivered = false;
        let dir_of = |n: &Option<Core<RecordingFsm>>| n.as_ref().map(|c| c.storage().snap_dir().clone());
        let (src, dst) = (dir_of(&self.nodes[idx(from)]), dir_of(&self.nodes[idx(to)]));
        if !lost
            && !self.cut.contains(&(from, to))
            && let Some(c) = self.nodes[idx(to)].as_mut()
        {
            if !snap {
                c.step(m);
                delivered = true;
            } else if let (Some(src), Some(dst)) = (src, dst)
                && let Some((m, hold)) = super::carry_snapshot(&src, &dst, m)
            {
                c.step_snapshot(m, hold);
                delivered = true;
                self.installs += 1;
            }
        }
        if snap && let Some(c) = self.nodes[idx(from)].as_mut() {
            c.report_snapshot(to, delivered);
        }
    }

    fn propose(&mut self) {
        let Some(i) =
            self.nodes.iter().position(|c| c.as_ref().is_some_and(|c| c.role() == StateRole::Leader))
        else {
            return;
        };
        self.now += self.rng.random_range(0..60_000u64);
        let n = self.rng.random_range(1..3usize);
        let cmds = (0..n).map(|_| random_command(&mut self.rng, self.now, &mut self.seqs)).collect();
        self.token += 1;
        let entry = Envelope::new(self.now, cmds).encode();
        if let Some(c) = self.nodes[i].as_mut() {
            match c.propose(self.token, entry) {
                // Overload or a lost leadership are fine outcomes here: nothing waits on them.
                Ok(()) | Err(ProposeError::Dropped) | Err(ProposeError::NotLeader { .. }) => {}
                Err(e) => panic!("master simulation seed {}: propose failed: {e:?}", self.seed),
            }
        }
    }

    fn step(&mut self) {
        let i = self.rng.random_range(0..IDS.len());
        match self.rng.random_range(0..100u32) {
            0..30 => {
                if !self.net.is_empty() {
                    let k = self.rng.random_range(0..self.net.len());
                    let m = self.net.swap_remove(k);
                    let lost = self.rng.random_bool(0.05);
                    self.deliver(m, lost);
                }
            }
            30..45 => {
                for c in self.nodes.iter_mut().flatten() {
                    if self.rng.random_bool(0.8) {
                        c.tick();
                    }
                }
            }
            45..55 => self.propose(),
            55..75 => self.ready(i),
            75..85 => {
                for j in 0..IDS.len() {
                    self.ready(j);
                }
            }
            85..87 => {
                // Half the crashes cut the power: what was not synced (commits without an fsync) is lost.
                let power_cut = self.rng.random_bool(0.5);
                let disk = self.disks[i].clone();
                if power_cut {
                    disk.lock().unwrap_or_else(|p| p.into_inner()).power_off();
                }
                // Not under the platter's lock: redb's close writes through it (landing nowhere after a cut).
                self.nodes[i] = None;
                if power_cut {
                    disk.lock().unwrap_or_else(|p| p.into_inner()).power_on();
                }
            }
            87..91 => {
                if self.nodes[i].is_none() {
                    self.nodes[i] = Some(open_master(
                        IDS[i],
                        (&self.dirs[i], &self.disks[i]),
                        &IDS,
                        &self.log,
                        COMMAND_VERSION,
                    ));
                }
            }
            91..93 => {
                let b = IDS[self.rng.random_range(0..IDS.len())];
                if IDS[i] != b {
                    self.cut.insert((IDS[i], b));
                    self.cut.insert((b, IDS[i]));
                }
            }
            93..95 => self.cut.clear(),
            _ => {
                for _ in 0..5 {
                    if self.net.is_empty() {
                        break;
                    }
                    let k = self.rng.random_range(0..self.net.len());
                    let m = self.net.swap_remove(k);
                    self.deliver(m, false);
                }
            }
        }
        if self.net.len() > 2000 {
            self.net.drain(..1000);
        }
    }

    fn converge(&mut self) {
        self.cut.clear();
        for (i, id) in IDS.iter().enumerate() {
            if self.nodes[i].is_none() {
                self.nodes[i] =
                    Some(open_master(*id, (&self.dirs[i], &self.disks[i]), &IDS, &self.log, COMMAND_VERSION));
            }
        }
        // Entries proposed after the heal (on top of the chaos phase's): enough state for the checks to bite.
        let mut proposed_after = 0;
        for _ in 0..CONVERGE_ROUNDS {
            for i in 0..IDS.len() {
                if self.rng.random_bool(0.7)
                    && let Some(c) = self.nodes[i].as_mut()
                {
                    c.tick();
                }
                self.ready(i);
            }
            for m in std::mem::take(&mut self.net) {
                self.deliver(m, false);
            }
            for i in 0..IDS.len() {
                self.ready(i);
            }
            if proposed_after < HEALED_PROPOSALS
                && self.nodes.iter().flatten().any(|c| c.role() == StateRole::Leader)
            {
                self.propose();
                proposed_after += 1;
            }
            let final_proposed = proposed_after == HEALED_PROPOSALS;
            let applied: BTreeSet<u64> = self.nodes.iter().flatten().map(|c| c.applied()).collect();
            let committed = self.nodes.iter().flatten().map(|c| c.commit_index()).max().unwrap_or(0);
            if final_proposed
                && applied.len() == 1
                && applied.first() == Some(&committed)
                && self.net.is_empty()
            {
                return;
            }
        }
        panic!("master simulation seed {}: no convergence after healing", self.seed);
    }

    fn check(&self) {
        let seed = self.seed;
        let states: Vec<Vec<u8>> = self
            .nodes
            .iter()
            .flatten()
            .map(|c| {
                crate::fsm::snapshot::write(&c.storage().db().begin_read().expect("read")).expect("snapshot")
            })
            .collect();
        assert!(states.windows(2).all(|w| w[0] == w[1]), "seed {seed}: replicas differ after converging");
        // The in-memory decider fed the same committed entries reaches the same bytes.
        let mut mem = MemFsm::new(Policy::default());
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let applied = self.nodes[0].as_ref().expect("up").applied();
        // (Indexes missing from the log are the leaders' empty entries, which never reach the fsm.)
        for (index, entry) in log.range(..=applied) {
            mem.apply(*index, entry).expect("memory apply");
        }
        assert_eq!(mem.state.snapshot(), states[0], "seed {seed}: memory and redb deciders differ");
        // Watch history from revision 1 is the same on every member.
        let histories: Vec<Vec<crate::model::ChangeEvent>> = self
            .nodes
            .iter()
            .flatten()
            .map(|c| {
                let r = Reader::new(c.storage().db()).expect("reader");
                match r.changes(1, &Filter::default(), usize::MAX).expect("changes") {
                    ChangesRead::Events { events, .. } => events,
                    ChangesRead::Compacted { first_available } => {
                        panic!("seed {seed}: watch from 1 compacted at {first_available} on a member")
                    }
                }
            })
            .collect();
        assert!(histories.windows(2).all(|w| w[0] == w[1]), "seed {seed}: watch histories differ");
        let revision = Reader::new(self.nodes[0].as_ref().expect("up").storage().db())
            .expect("reader")
            .revision()
            .expect("revision");
        assert_eq!(histories[0].len() as u64, revision, "seed {seed}: history is dense from 1");
    }
}

fn run_master_seed(seed: u64) -> (usize, u64) {
    let mut sim = MasterSim::new(seed);
    for _ in 0..MASTER_STEPS {
        sim.step();
    }
    sim.converge();
    sim.check();
    let applied = sim.nodes[0].as_ref().map_or(0, |c| c.applied());
    (sim.installs, applied)
}

#[test]
fn master_fsm_replicas_agree_with_the_memory_decider_and_keep_watch_history() {
    if let Some(seed) = env_u64("HUATUO_SIM_SEED") {
        run_master_seed(seed);
        return;
    }
    let seeds = env_u64("HUATUO_SIM_MASTER_SEEDS").unwrap_or(12);
    let first = env_u64("HUATUO_SIM_FIRST_SEED").unwrap_or(0);
    let (mut installs, mut total) = (0, 0);
    for seed in first..first.saturating_add(seeds) {
        let r = std::panic::catch_unwind(|| run_master_seed(seed));
        match r {
            Ok((n, applied)) => {
                eprintln!(
                    "master simulation seed {seed}: {applied} entries applied, {n} snapshots delivered"
                );
                installs += n;
                total += applied;
            }
            Err(e) => {
                eprintln!("master simulation failed: seed {seed}; rerun with HUATUO_SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    assert!(total > 20 * seeds, "only {total} entries applied in {seeds} seeds: the simulation did little");
    assert!(
        installs > 0,
        "no follower was caught up by a snapshot in {seeds} seeds: the test lost its point"
    );
}

/// A member whose binary knows command version 1 only stops at a version-2 entry without advancing its
/// applied index, and resumes once upgraded (same data dir, a binary that knows version 2).
#[test]
fn an_old_member_stops_at_a_newer_entry_and_resumes_after_upgrade() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = EntryLog::default();
    let disk = Disk::default();
    let open = |knows: u32| open_master(1, (tmp.path(), &disk), &[1], &log, knows);
    let mut c = open(1);
    c.raw.campaign().expect("campaign");
    let drive = |c: &mut Core<RecordingFsm>| -> Result<(), RaftError> {
        for _ in 0..10 {
            c.on_ready(&mut |_| {})?;
        }
        Ok(())
    };
    drive(&mut c).expect("elected");
    assert_eq!(c.role(), StateRole::Leader);
    let v1 = Envelope::new(1, vec![crate::model::Command::Tick { objects: vec![] }]).encode();
    c.propose(1, v1).expect("propose");
    drive(&mut c).expect("a version-1 entry applies");
    let applied = c.applied();
    let v2 = Envelope::new(
        2,
        vec![crate::model::Command::SetMinCommandVersion { version: 2, by: "a".into(), reason: "r".into() }],
    )
    .encode();
    c.propose(2, v2).expect("propose");
    let err = drive(&mut c).expect_err("the old binary stops");
    assert!(
        err.to_string().contains("needs command version 2, this binary knows up to 1: upgrade this node"),
        "{err}"
    );
    assert_eq!(c.applied(), applied, "applied index not advanced past the entry");
    drop(c);
    let reopened = open(1);
    assert_eq!(reopened.applied(), applied, "durably not applied");
    drop(reopened);
    let mut c = open(COMMAND_VERSION);
    c.raw.campaign().expect("campaign");
    drive(&mut c).expect("the upgraded binary applies it");
    assert!(c.applied() > applied);
    let r = Reader::new(c.storage().db()).expect("reader");
    assert_eq!(r.min_command_version().expect("min"), 2);
}
