//! Partitions in network namespaces: 3 `huatuo master` processes, each in its own namespace with a veth to
//! a bridge in a fourth namespace (which also holds the test's clients). Addresses 10.77.0.x exist only
//! inside those namespaces. Partitions are nftables rules in a master's namespace: two-way (drop in and out
//! to both peers) or one-way (drop only what the node sends to one peer). Every namespace and table is
//! removed by [`Net`]'s Drop, whatever happens. Skips with a message where `ip netns add` is not permitted.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::check::{self, Ledger, Load, SETTLE};
use super::netns_util::{self, enter, sh};

/// Partitions per run: two-way ones of the leader and of a follower, one-way ones each direction.
const PARTITIONS: usize = 4;
/// How long a partition holds: longer than an election timeout (~1 s) so the cut side notices.
const CUT_MS: (u64, u64) = (2_500, 4_000);
/// Master ports inside each namespace (the namespaces are ours alone, so fixed ports cannot collide).
const PEER_PORT: u16 = 7001;
const GRPC_PORT: u16 = 7002;
const HTTP_PORT: u16 = 7003;

/// The namespaces and the master processes; Drop kills the processes and deletes the namespaces (which
/// takes their veths and nftables tables with them).
struct Net {
    prefix: String,
    children: BTreeMap<u64, Child>,
    dir: tempfile::TempDir,
}

impl Net {
    fn ns(&self, id: u64) -> String {
        format!("{}{id}", self.prefix)
    }
    fn br(&self) -> String {
        format!("{}br", self.prefix)
    }
    fn ip(id: u64) -> String {
        format!("10.77.0.{id}")
    }
    fn grpc(id: u64) -> String {
        format!("{}:{GRPC_PORT}", Self::ip(id))
    }
    fn http(id: u64) -> String {
        format!("{}:{HTTP_PORT}", Self::ip(id))
    }

    fn setup(prefix: &str) -> Result<Net, String> {
        let net = Net {
            prefix: prefix.into(),
            children: BTreeMap::new(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        let br = net.br();
        sh(&["ip", "netns", "add", &br])?;
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &br, "addr", "add", "10.77.0.254/24", "dev", "br0"])?;
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        sh(&["ip", "-n", &br, "link", "set", "lo", "up"])?;
        for id in 1..=3u64 {
            let ns = net.ns(id);
            sh(&["ip", "netns", "add", &ns])?;
            let (a, b) = (format!("v{id}"), format!("p{id}"));
            sh(&["ip", "-n", &ns, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &br])?;
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", Self::ip(id)), "dev", &a])?;
            sh(&["ip", "-n", &ns, "link", "set", &a, "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", &br, "link", "set", &b, "master", "br0"])?;
            sh(&["ip", "-n", &br, "link", "set", &b, "up"])?;
        }
        Ok(net)
    }

    fn spawn(&mut self, id: u64) -> std::io::Result<()> {
        let peers: Vec<String> = (1..=3).map(|i| format!("{i}={}:{PEER_PORT}", Self::ip(i))).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(id)])
            .arg(tests::huatuo_bin())
            .args(["master", "--insecure", "--id", &id.to_string(), "--peers", &peers.join(",")])
            .args(["--grpc", &Self::grpc(id), "--http", &Self::http(id)])
            .args(["--peer-listen", &format!("{}:{PEER_PORT}", Self::ip(id))])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{id}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    fn log_tail(&self, id: u64) -> String {
        let t = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Drop traffic in node `id`'s namespace: to/from every peer in `both`, and only outgoing to `out_to`.
    fn cut(&self, id: u64, both: &[u64], out_to: &[u64]) -> Result<(), String> {
        let mut rules = String::from(
            "table inet faults {\n chain in { type filter hook input priority 0; }\n chain out { type filter hook output priority 0; }\n}\n",
        );
        for p in both {
            rules += &format!("add rule inet faults in ip saddr {} drop\n", Self::ip(*p));
            rules += &format!("add rule inet faults out ip daddr {} drop\n", Self::ip(*p));
        }
        for p in out_to {
            rules += &format!("add rule inet faults out ip daddr {} drop\n", Self::ip(*p));
        }
        let path = self.dir.path().join("rules.nft");
        std::fs::write(&path, rules).map_err(|e| e.to_string())?;
        sh(&["ip", "netns", "exec", &self.ns(id), "nft", "-f", &path.display().to_string()])
    }

    fn heal(&self, id: u64) -> Result<(), String> {
        sh(&["ip", "netns", "exec", &self.ns(id), "nft", "delete", "table", "inet", "faults"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for id in 1..=3 {
            let _ = sh(&["ip", "netns", "del", &self.ns(id)]);
        }
        let _ = sh(&["ip", "netns", "del", &self.br()]);
    }
}

pub fn run() {
    let started = Instant::now();
    let seed = check::seed();
    println!("[netns] seed {seed} (replay with HUATUO_FAULTS_SEED={seed})");
    let prefix = format!("hf{}-", std::process::id() % 100_000);
    if let Err(e) = netns_util::permitted(&prefix) {
        println!("[netns] SKIPPED: network namespaces are not permitted here ({e})");
        return;
    }
    netns_util::require_nft("netns");
    let mut net = Net::setup(&prefix).unwrap_or_else(|e| panic!("[netns] setup: {e}"));
    for id in 1..=3 {
        net.spawn(id).unwrap();
    }
    let br = net.br();
    // The clients live in the bridge namespace: a thread of our own with its own runtime.
    let net = std::thread::spawn(move || {
        enter(&br).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(scenario(&mut net, seed));
        net
    })
    .join();
    match net {
        Ok(_) => println!("[netns] wall time {:?}", started.elapsed()),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The leader of the highest term any member reports (a leader cut off may still call itself leader of an
/// older term for a moment).
async fn leader() -> Option<u64> {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        let mut best: Option<(u64, u64)> = None;
        for id in 1..=3 {
            if let Some(i) = check::info(&Net::grpc(id)).await
                && i.role == "leader"
                && best.is_none_or(|(term, _)| i.term > term)
            {
                best = Some((i.term, id));
            }
        }
        if let Some((_, id)) = best {
            return Some(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn scenario(net: &mut Net, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let Some(_) = leader().await else { panic!("[netns] no leader:\n{}", net.log_tail(1)) };
    let ledger = Arc::new(Ledger::default());
    let grpc: Vec<String> = (1..=3).map(Net::grpc).collect();
    let http: Vec<String> = (1..=3).map(Net::http).collect();
    let mut l = Load::new();
    for i in 0..2 {
        l.agent(&ledger, &format!("ns-agent{i}"), grpc.clone());
    }
    l.rest(&ledger, "ns-rest", http.clone());
    let mut kinds = Vec::new();
    for k in 0..PARTITIONS {
        let lead = leader().await.expect("leader before a partition");
        let other = (1..=3).find(|&i| i != lead).unwrap();
        let (id, both, out_to, what) = match k % 4 {
            0 => (
                lead,
                vec![1, 2, 3].into_iter().filter(|&i| i != lead).collect(),
                vec![],
                "two-way, leader isolated",
            ),
            1 => (
                other,
                vec![1, 2, 3].into_iter().filter(|&i| i != other).collect(),
                vec![],
                "two-way, follower isolated",
            ),
            2 => (lead, vec![], vec![other], "one-way, leader cannot send to a follower"),
            _ => (other, vec![], vec![lead], "one-way, follower cannot send to the leader"),
        };
        net.cut(id, &both, &out_to).unwrap();
        let t = Instant::now();
        let before = ledger.acked();
        tokio::time::sleep(Duration::from_millis(rng.random_range(CUT_MS.0..CUT_MS.1))).await;
        // A write sent straight to a node cut off both ways cannot commit: it must not be acknowledged
        // (the checker holds it to "at most once" either way, and to "exactly once" if it was).
        let isolated = if both.is_empty() {
            String::new()
        } else {
            let marker = format!("ns-isolated{k}");
            let addr = Net::http(id);
            let m = marker.clone();
            let r = tokio::task::spawn_blocking(move || {
                check::rest_ingest(&addr, "", 0, "disk/ns-isolated/x", &m)
            })
            .await
            .unwrap();
            ledger.record(marker, check::Path::Rest, r.is_ok());
            assert!(r.is_err(), "[netns] node {id}, cut off both ways, acknowledged a write: {r:?}");
            format!("; a write to it refused: {:.80}", r.unwrap_err())
        };
        let during = ledger.acked() - before;
        net.heal(id).unwrap();
        let healed = Instant::now();
        // Catch-up: the healed node reaches the revision the leader had at the heal.
        let lead = leader().await.expect("leader after heal");
        let goal = check::info(&Net::grpc(lead)).await.map(|i| i.revision).unwrap_or(0);
        let caught_up = tests::wait_until(SETTLE, || async {
            check::info(&Net::grpc(id)).await.is_some_and(|i| i.revision >= goal)
        })
        .await;
        assert!(
            caught_up,
            "[netns] node {id} did not reach revision {goal} within {SETTLE:?} of the heal:\n{}",
            net.log_tail(id)
        );
        println!(
            "[netns] partition {k}: {what} (node {id}) for {:?}; {during} writes acked meanwhile{isolated}; node {id} \
             at the leader's revision {:?} after the heal",
            healed - t,
            healed.elapsed()
        );
        kinds.push(what);
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
    }
    l.stop().await;
    let members: Vec<(u64, String)> = (1..=3).map(|id| (id, Net::grpc(id))).collect();
    check::check("netns", &members, &ledger).await;
    println!(
        "[netns] {PARTITIONS} partitions ({} two-way, {} one-way)",
        kinds.iter().filter(|k| k.starts_with("two")).count(),
        kinds.iter().filter(|k| k.starts_with("one")).count()
    );
}
