//! A local cluster of real `huatuo master` processes on loopback (free ports, temp data dirs), used by the
//! multi-process tests and `huatuo bench master`: start, find the leader, `kill -9` a node, restart it with
//! its data. Children are killed when the [`LocalCluster`] is dropped, whatever happens.
//! Clusters run `--insecure` unless started with [`LocalCluster::start_secure`] (TLS and tokens from the
//! caller's config, and the client credentials the harness itself uses).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::api;

use crate::client::{Client, ClientSecurity};

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
    /// When set, every node runs from a TOML config file (`--config`) with these settings merged in: the
    /// way to set what has no flag, such as `[policy] ack_timeout_ms` (see [`LocalCluster::start_with_config`]).
    config: Option<toml::Table>,
    /// Pass `--insecure` to every node (all clusters but [`LocalCluster::start_secure`] ones).
    insecure: bool,
    /// TLS and token the harness's own calls (`info`, `client`) use.
    security: ClientSecurity,
    /// Extra environment for every node.
    env: Vec<(String, String)>,
    /// Settings for one node only, merged after `config` (see [`LocalCluster::set_node_config`]).
    node_config: BTreeMap<u64, toml::Table>,
    /// Environment for one node only, after `env` (see [`LocalCluster::set_node_env`]).
    node_env: BTreeMap<u64, Vec<(String, String)>>,
}

/// Attempts at finding a free port before giving up (each a bind of a random candidate).
const FREE_PORT_ATTEMPTS: usize = 1_000;
/// Lowest port handed out: above the well-known and registered ranges most daemons use.
const FREE_PORT_LOW: u16 = 10_000;

/// A line of a master's log without its terminal colour codes (`ESC [ ... m`), for reading the log files
/// this harness writes.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A free loopback port OUTSIDE the kernel's ephemeral range (`ip_local_port_range`), checked by binding
/// it. A port taken with `bind(0)` comes from the ephemeral range: once a node is killed and its port
/// released, any outgoing connection on the machine (clients, peers retrying) may get that port as its
/// local port, and the restarted node then fails to listen on its own address. Ports below the ephemeral
/// range are only ever bound on purpose. Ports already handed out by this process are not reused. Falls
/// back to `bind(0)` when no range is left below the ephemeral one.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low <= FREE_PORT_LOW + 1_000 {
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let span = u64::from(ephemeral_low - FREE_PORT_LOW);
    // A per-process random start (clock + pid) so parallel test processes spread over the range.
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..FREE_PORT_ATTEMPTS {
        // xorshift: cheap, good enough to spread candidates.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = FREE_PORT_LOW + (x % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port below the ephemeral range after {FREE_PORT_ATTEMPTS} attempts"),
    ))
}

impl LocalCluster {
    /// Start `n` nodes of `bin` (the `huatuo` executable), logs to `<dir>/node-<id>.log`.
    pub fn start(bin: &Path, n: u64) -> std::io::Result<LocalCluster> {
        Self::start_inner(bin, n, None)
    }

    /// Like [`LocalCluster::start`], but each node runs from a config file made of its addresses plus
    /// `extra_toml` (any `MasterConfig` settings, e.g. `"[policy]\nack_timeout_ms = 1500\n"`). Keys of
    /// `extra_toml` override the generated ones; tables are merged one level deep.
    pub fn start_with_config(bin: &Path, n: u64, extra_toml: &str) -> std::io::Result<LocalCluster> {
        let extra: toml::Table = extra_toml.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("extra config: {e}"))
        })?;
        Self::start_inner(bin, n, Some(extra))
    }

    /// [`LocalCluster::start`] with extra environment variables for every node (e.g. `RUST_LOG`).
    pub fn start_with_env(bin: &Path, n: u64, env: &[(&str, &str)]) -> std::io::Result<LocalCluster> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_full(bin, n, None, true, ClientSecurity::default(), env)
    }

    /// A cluster with security on: `extra_toml` must carry `[tls]` and `[[auth.tokens]]` (as for
    /// [`LocalCluster::start_with_config`]); `client` is what the harness uses for its own calls (a CA,
    /// a client certificate and a token with at least the read role).
    pub fn start_secure(
        bin: &Path,
        n: u64,
        extra_toml: &str,
        client: ClientSecurity,
    ) -> std::io::Result<LocalCluster> {
        Self::start_secure_with_env(bin, n, extra_toml, client, &[])
    }

    /// [`LocalCluster::start_secure`] with extra environment variables for every node (e.g. `RUST_LOG`).
    pub fn start_secure_with_env(
        bin: &Path,
        n: u64,
        extra_toml: &str,
        client: ClientSecurity,
        env: &[(&str, &str)],
    ) -> std::io::Result<LocalCluster> {
        let extra: toml::Table = extra_toml.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("extra config: {e}"))
        })?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_full(bin, n, Some(extra), false, client, env)
    }

    /// A client for this cluster with the harness's credentials.
    pub fn client(&self) -> Client {
        Client::with_security(crate::client::parse_addrs(&self.grpc_addrs()), self.security.clone())
    }

    fn start_inner(bin: &Path, n: u64, config: Option<toml::Table>) -> std::io::Result<LocalCluster> {
        Self::start_full(bin, n, config, true, ClientSecurity::default(), Vec::new())
    }

    fn start_full(
        bin: &Path,
        n: u64,
        config: Option<toml::Table>,
        insecure: bool,
        security: ClientSecurity,
        env: Vec<(String, String)>,
    ) -> std::io::Result<LocalCluster> {
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
        let mut c = LocalCluster {
            bin: bin.to_path_buf(),
            dir,
            nodes,
            children: BTreeMap::new(),
            extra: Vec::new(),
            config,
            insecure,
            security,
            env,
            node_config: BTreeMap::new(),
            node_env: BTreeMap::new(),
        };
        for id in 1..=n {
            c.spawn(id, false)?;
        }
        Ok(c)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// The temporary directory holding every member's data dir, config and log (removed on drop).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn peers_arg(&self) -> String {
        self.nodes.iter().map(|(id, a)| format!("{id}={}", a.peer)).collect::<Vec<_>>().join(",")
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.toml"))
    }

    /// Give node `id` settings of its own (TOML, merged over the cluster's), used from its next
    /// [`LocalCluster::spawn`] on: e.g. a member that plays an older binary. Only for clusters started with a
    /// config.
    pub fn set_node_config(&mut self, id: u64, toml_text: &str) -> std::io::Result<()> {
        if self.config.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "per-node settings need a cluster started with a config (start_with_config)",
            ));
        }
        let t: toml::Table = toml_text.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("node {id} config: {e}"))
        })?;
        self.node_config.insert(id, t);
        Ok(())
    }

    /// Extra environment for node `id` from its next start on (e.g. a member with a feature switched off).
    pub fn set_node_env(&mut self, id: u64, env: &[(&str, &str)]) {
        self.node_env.insert(id, env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }

    /// Write node `id`'s config file (only for clusters started with a config).
    fn write_config(&self, id: u64, a: &NodeAddrs, extra: &toml::Table) -> std::io::Result<PathBuf> {
        let mut merged = extra.clone();
        if let Some(mine) = self.node_config.get(&id) {
            for (k, v) in mine {
                merged.insert(k.clone(), v.clone());
            }
        }
        let text = node_config(id, &self.data_dir(id), a, &self.nodes, &merged)?;
        let path = self.config_path(id);
        std::fs::write(&path, text)?;
        Ok(path)
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
        cmd.arg("master");
        match &self.config {
            Some(extra) => {
                cmd.arg("--config").arg(self.write_config(id, &a, extra)?);
            }
            None => {
                cmd.args(["--id", &id.to_string(), "--peers", &self.peers_arg()])
                    .args(["--grpc", &a.grpc, "--http", &a.http, "--peer-listen", &a.peer])
                    .arg("--data-dir")
                    .arg(self.data_dir(id));
            }
        }
        if self.insecure {
            cmd.arg("--insecure");
        }
        cmd.envs(self.env.iter().chain(self.node_env.get(&id).into_iter().flatten()).map(|(k, v)| (k, v)));
        cmd.args(&self.extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
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

    /// Stop node `id` in order (SIGTERM) and reap it: its store closed cleanly, everything it applied on
    /// disk. SIGKILL after `within` if it has not exited by then. Returns how it ended; `None` when it was not
    /// running or could not be signalled.
    pub fn stop(&mut self, id: u64, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.terminate(id).ok()?;
        let deadline = std::time::Instant::now() + within;
        let mut c = self.children.remove(&id)?;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Send SIGTERM to node `id` (an orderly shutdown); see [`LocalCluster::exited`] for its end.
    pub fn terminate(&self, id: u64) -> std::io::Result<()> {
        let Some(c) = self.children.get(&id) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("node {id} is not running"),
            ));
        };
        let status = Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -TERM failed: {status}")))
        }
    }

    /// Whether node `id`'s process has exited (with its status).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.children.get_mut(&id).and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process id of node `id` while it runs (benchmarks read its CPU and IO from /proc/PID).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    pub fn running(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    /// Cluster info from node `id` (one attempt, short timeout).
    pub async fn info(&self, id: u64) -> Option<api::ClusterInfoResponse> {
        let a = self.nodes.get(&id)?;
        let mut c = Client::with_security(vec![a.grpc.clone()], self.security.clone());
        c.max_attempts = 1;
        c.call_timeout = Duration::from_millis(500);
        c.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await.ok()
    }

    /// Wait until a running node reports itself leader with its addresses announced (in the replicated
    /// member table: its first entries as leader committed); returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        self.wait_leader_where(timeout, true).await
    }

    /// Wait until a running node reports itself leader, announced or not (a leader cannot announce itself
    /// while a quorum short of disk refuses writes); returns its id.
    pub async fn wait_leader_elected(&self, timeout: Duration) -> Option<u64> {
        self.wait_leader_where(timeout, false).await
    }

    async fn wait_leader_where(&self, timeout: Duration, announced: bool) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in self.running() {
                if let Some(i) = self.info(id).await
                    && i.role == "leader"
                    && i.leader_grpc == self.nodes[&id].grpc
                    && (!announced || i.members.iter().any(|m| m.id == id && m.announced))
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

/// The config file of node `id`: its addresses and peers, with `extra` merged over them (tables one level
/// deep, so `[policy]` settings add to rather than replace the defaults).
fn node_config(
    id: u64,
    data_dir: &Path,
    a: &NodeAddrs,
    nodes: &BTreeMap<u64, NodeAddrs>,
    extra: &toml::Table,
) -> std::io::Result<String> {
    use toml::Value;
    let mut t = toml::Table::new();
    let id_value = i64::try_from(id).map_err(|_| std::io::Error::other("node id too large"))?;
    t.insert("id".into(), Value::Integer(id_value));
    t.insert("data_dir".into(), Value::String(data_dir.display().to_string()));
    t.insert("grpc".into(), Value::String(a.grpc.clone()));
    t.insert("http".into(), Value::String(a.http.clone()));
    t.insert("peer_listen".into(), Value::String(a.peer.clone()));
    let peers = nodes.iter().map(|(id, n)| (id.to_string(), Value::String(n.peer.clone())));
    t.insert("peers".into(), Value::Table(peers.collect()));
    for (k, v) in extra {
        match (t.get_mut(k), v) {
            (Some(Value::Table(mine)), Value::Table(theirs)) => {
                mine.extend(theirs.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(t.to_string())
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;

    #[test]
    fn node_configs_carry_addresses_and_merge_extra_settings() {
        let addrs = |p: u16| NodeAddrs {
            peer: format!("127.0.0.1:{p}"),
            grpc: format!("127.0.0.1:{}", p + 1),
            http: format!("127.0.0.1:{}", p + 2),
        };
        let nodes: BTreeMap<u64, NodeAddrs> = [(1, addrs(1000)), (2, addrs(2000))].into_iter().collect();
        let extra: toml::Table =
            "tick_ms = 50\ninsecure = true\n[policy]\nack_timeout_ms = 1500\n".parse().expect("extra parses");
        let text = node_config(2, Path::new("/tmp/n2"), &nodes[&2], &nodes, &extra).expect("config");
        let r = MasterConfig::from_toml(&text).and_then(|c| c.resolve()).expect(&text);
        assert_eq!((r.id, r.peers.len(), r.grpc_listen.port()), (2, 2, 2001));
        assert_eq!(r.tick, Duration::from_millis(50));
        assert_eq!(r.policy.ack_timeout_ms, 1500);
        assert_eq!(r.policy.disk_evacuate_role, "storage", "other policy settings keep their defaults");
        let bad: toml::Table = "bogus = 1".parse().expect("parses");
        let text = node_config(1, Path::new("/x"), &nodes[&1], &nodes, &bad).expect("config");
        assert!(MasterConfig::from_toml(&text).is_err(), "unknown settings are refused by the master");
    }
}
