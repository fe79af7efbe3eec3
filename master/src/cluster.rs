//! A local cluster of real `huatuo master` processes on loopback (free ports, temp data dirs), used by the
//! multi-process tests and `huatuo bench master`: start, find the leader, `kill -9` a node, restart it with
//! its data. Children are killed when the [`LocalCluster`] is dropped, whatever happens.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::api;

use crate::client::Client;

/// How long a cluster may take to elect its first leader and have it announce its addresses.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval while waiting for a condition.
pub const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct NodeAddrs {
    pub peer: String,
    pub grpc: String,
    pub http: String,
}

pub struct LocalCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeAddrs>,
    children: BTreeMap<u64, Child>,
    /// Extra arguments for every node (e.g. a faster tick for tests).
    extra: Vec<String>,
}

/// A free loopback port: bind port 0, read it, release it. Racy in theory; the nodes bind immediately.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalCluster {
    /// Start `n` nodes of `bin` (the `huatuo` executable), logs to `<dir>/node-<id>.log`.
    pub fn start(bin: &Path, n: u64) -> std::io::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("huatuo-cluster-").tempdir()?;
        let mut nodes = BTreeMap::new();
        let mut taken = std::collections::BTreeSet::new();
        for id in 1..=n {
            let mut port = || -> std::io::Result<u16> {
                loop {
                    let p = free_port()?;
                    if taken.insert(p) {
                        return Ok(p);
                    }
                }
            };
            nodes.insert(
                id,
                NodeAddrs {
                    peer: format!("127.0.0.1:{}", port()?),
                    grpc: format!("127.0.0.1:{}", port()?),
                    http: format!("127.0.0.1:{}", port()?),
                },
            );
        }
        let mut c =
            LocalCluster { bin: bin.to_path_buf(), dir, nodes, children: BTreeMap::new(), extra: Vec::new() };
        for id in 1..=n {
            c.spawn(id, false)?;
        }
        Ok(c)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn peers_arg(&self) -> String {
        self.nodes.iter().map(|(id, a)| format!("{id}={}", a.peer)).collect::<Vec<_>>().join(",")
    }

    /// All gRPC addresses, comma-separated (the `--master` argument).
    pub fn grpc_addrs(&self) -> String {
        self.nodes.values().map(|a| a.grpc.clone()).collect::<Vec<_>>().join(",")
    }

    /// (Re)start node `id` with its data dir.
    pub fn spawn(&mut self, id: u64, join: bool) -> std::io::Result<()> {
        let a = self.nodes.get(&id).cloned().ok_or_else(|| std::io::Error::other(format!("no node {id}")))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("master")
            .args(["--id", &id.to_string(), "--peers", &self.peers_arg()])
            .args(["--grpc", &a.grpc, "--http", &a.http, "--peer-listen", &a.peer])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if join {
            cmd.arg("--join");
        }
        let child = cmd.spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    /// SIGKILL node `id` (no shutdown, no flush) and reap it.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether node `id`'s process has exited (with its status).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.children.get_mut(&id).and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn running(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    /// Cluster info from node `id` (one attempt, short timeout).
    pub async fn info(&self, id: u64) -> Option<api::ClusterInfoResponse> {
        let a = self.nodes.get(&id)?;
        let mut c = Client::new(vec![a.grpc.clone()]);
        c.max_attempts = 1;
        c.call_timeout = Duration::from_millis(500);
        c.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await.ok()
    }

    /// Wait until a running node reports itself leader with its addresses announced; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in self.running() {
                if let Some(i) = self.info(id).await
                    && i.role == "leader"
                    && i.leader_grpc == self.nodes[&id].grpc
                {
                    return Some(id);
                }
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// Wait until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.info(id).await.is_some_and(|i| i.applied_index >= index) {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// The tail of node `id`'s log (for failure messages).
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
