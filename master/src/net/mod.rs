//! Network fault localisation, the master's side (issue 16, PRODUCT.md section 8). Nothing here goes
//! through Raft except the findings a window's verdict turns into and the fabric topology (a catalog
//! artifact activated by `Command::SetTopology`, set through `api/topology.rs`):
//! - `peers.rs`: the leader's book of probe peers, sampled into heartbeat replies (bounded, full coverage).
//! - `reports.rs`: validation of heartbeat `net` reports, once, before anything is touched.
//! - this file: the leader's in-memory window (`netvote::Window`, each (agent, started_ms, window_seq)
//!   counted once, bounded), the window task (close, `netvote::localise` off the async runtime, keep the
//!   verdict for the RPCs, propose findings through the normal ingest path) and the reads behind
//!   NetSuspects / NetMatrix / NetPath.
//! - `decide.rs`: verdict -> findings (switch/link/nic only) and clearing after `clear_windows`.
//! - `fabric.rs`: the one topology parser and which topology is in use (replicated, else the member's
//!   `[topology] file`, else labels); this file refreshes it (`Service::refresh_fabric`), bootstraps the
//!   file into the replicated state once, and warns when a member's file differs.
//!
//! Leadership: every piece is the leader's memory; on losing leadership it is all dropped (the task sees
//! the role each round), and a new leader starts with an empty window and book (the topology in use and
//! its parse stay: they follow the replicated pointer, refreshed at the new term).

pub mod decide;
pub mod fabric;
pub mod peers;
pub mod reports;
pub mod wire;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use netvote::{Topology, Window, WindowLimits};
use proto::error::ApiError;
use serde::Deserialize;

use crate::api::{Service, now_ms};
use crate::raft::Role;

pub use peers::{MAX_PEERS_PER_REPLY, Peer};

/// Default window length (seconds); the agent's `[net_probe] window_s` default is the same.
pub const DEFAULT_WINDOW_S: u64 = 10;
/// Longest window: an hour of reports in memory is already more than a leader should hold.
pub const MAX_WINDOW_S: u64 = 3_600;
/// Default windows without suspicion before a switch, link or NIC the leader filed about returns to GOOD.
pub const DEFAULT_CLEAR_WINDOWS: u32 = 3;
/// Most clear windows configurable (a day of 10 s windows).
pub const MAX_CLEAR_WINDOWS: u32 = 8_640;
/// Windows of reports one localisation judges by default (the closing one and the ones before it): a fault
/// at 1-2% loss shows in a few probes per window, and three windows of them are what localise it in the
/// bench (`huatuo bench netvote`).
pub const DEFAULT_ACCUMULATE_WINDOWS: u32 = 3;
/// Most windows accumulated: each is kept in the leader's memory.
pub const MAX_ACCUMULATE_WINDOWS: u32 = 10;
/// Default reports per window: 100,000 agents, twice (a window's edges may catch two of one agent).
pub const DEFAULT_MAX_REPORTS: usize = 200_000;
/// Most suspects NetSuspects answers (`limit` 0 means [`DEFAULT_SUSPECTS`]).
pub const MAX_SUSPECTS: u32 = 1_000;
pub const DEFAULT_SUSPECTS: u32 = 20;
/// Longest a window's localisation may run before the leader gives up on that window (it stays unjudged
/// and is counted): the next window must not queue behind a stuck one.
pub const MAX_LOCALISE_TIME: Duration = Duration::from_secs(30);
/// Most topology file bytes read (a 100,000-host CSV is about 4 MB).
pub const MAX_TOPOLOGY_BYTES: u64 = 64 << 20;

/// `[net]` of the master config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSection {
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    #[serde(default = "default_clear_windows")]
    pub clear_windows: u32,
    /// Reports one window holds; one more is refused (counted). Default [`DEFAULT_MAX_REPORTS`].
    #[serde(default = "default_max_reports")]
    pub max_reports_per_window: usize,
    /// Windows of reports each localisation judges together (the closing one and those before it).
    #[serde(default = "default_accumulate")]
    pub accumulate_windows: u32,
}

impl Default for NetSection {
    fn default() -> Self {
        NetSection {
            window_s: DEFAULT_WINDOW_S,
            clear_windows: DEFAULT_CLEAR_WINDOWS,
            max_reports_per_window: DEFAULT_MAX_REPORTS,
            accumulate_windows: DEFAULT_ACCUMULATE_WINDOWS,
        }
    }
}

fn default_accumulate() -> u32 {
    DEFAULT_ACCUMULATE_WINDOWS
}

fn default_window_s() -> u64 {
    DEFAULT_WINDOW_S
}
fn default_clear_windows() -> u32 {
    DEFAULT_CLEAR_WINDOWS
}
fn default_max_reports() -> usize {
    DEFAULT_MAX_REPORTS
}

/// `[topology]` of the master config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySection {
    /// A TOML or CSV (`host,tor[,agg[,spine]]` rows) file `netvote::Topology` parses; none: a one-tier
    /// topology from the machines' `switch=` (or `rack=`) labels.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// The resolved network settings of a node.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub window: Duration,
    pub clear_windows: u32,
    pub max_reports: usize,
    /// Windows one localisation judges together.
    pub accumulate: usize,
    /// From `[topology] file`; `None`: none configured. The replicated topology wins over it.
    pub topology: Option<Arc<Topology>>,
    /// The file it came from, and the sha256 of its bytes (compared with the replicated topology's).
    pub topology_file: Option<PathBuf>,
    pub topology_sha256: String,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            window: Duration::from_secs(DEFAULT_WINDOW_S),
            clear_windows: DEFAULT_CLEAR_WINDOWS,
            max_reports: DEFAULT_MAX_REPORTS,
            accumulate: DEFAULT_ACCUMULATE_WINDOWS as usize,
            topology: None,
            topology_file: None,
            topology_sha256: String::new(),
        }
    }
}

/// Why the network settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    #[error("[net] {what} = {value} is out of range ({min}..={max})")]
    OutOfRange { what: &'static str, value: u64, min: u64, max: u64 },
    #[error("[topology] file {path}: {msg}")]
    File { path: String, msg: String },
}

/// Read a topology file: its bytes (at most [`MAX_TOPOLOGY_BYTES`]).
pub fn read_topology_file(path: &std::path::Path) -> Result<Vec<u8>, NetConfigError> {
    let p = path.display().to_string();
    let meta =
        std::fs::metadata(path).map_err(|e| NetConfigError::File { path: p.clone(), msg: e.to_string() })?;
    if meta.len() > MAX_TOPOLOGY_BYTES {
        return Err(NetConfigError::File {
            path: p,
            msg: format!("{} bytes (limit {MAX_TOPOLOGY_BYTES})", meta.len()),
        });
    }
    std::fs::read(path).map_err(|e| NetConfigError::File { path: p, msg: e.to_string() })
}

/// Parse a topology file: CSV when the name ends in `.csv`, TOML otherwise (the replicated topology's
/// bytes are told apart by their content, `fabric::Format::detect`). Returns it with its bytes' sha256.
pub fn load_topology(path: &std::path::Path) -> Result<(Topology, String), NetConfigError> {
    let bytes = read_topology_file(path)?;
    let csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let format = if csv { fabric::Format::Csv } else { fabric::Format::Toml };
    let (t, _) = fabric::parse(&bytes, Some(format))
        .map_err(|msg| NetConfigError::File { path: path.display().to_string(), msg })?;
    Ok((t, crate::catalog::sha256_hex(&bytes)))
}

impl NetConfig {
    pub fn resolve(net: &NetSection, topo: &TopologySection) -> Result<NetConfig, NetConfigError> {
        let range = |what, value: u64, min, max| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(NetConfigError::OutOfRange { what, value, min, max })
            }
        };
        range("window_s", net.window_s, 1, MAX_WINDOW_S)?;
        range("clear_windows", u64::from(net.clear_windows), 1, u64::from(MAX_CLEAR_WINDOWS))?;
        range(
            "max_reports_per_window",
            net.max_reports_per_window as u64,
            1,
            DEFAULT_MAX_REPORTS as u64 * 5,
        )?;
        range("accumulate_windows", u64::from(net.accumulate_windows), 1, u64::from(MAX_ACCUMULATE_WINDOWS))?;
        let (topology, topology_sha256) = match &topo.file {
            Some(path) => {
                let (t, sha) = load_topology(path)?;
                (Some(Arc::new(t)), sha)
            }
            None => (None, String::new()),
        };
        Ok(NetConfig {
            window: Duration::from_secs(net.window_s),
            clear_windows: net.clear_windows,
            max_reports: net.max_reports_per_window,
            accumulate: net.accumulate_windows as usize,
            topology,
            topology_file: topo.file.clone(),
            topology_sha256,
        })
    }
}

/// Counters for `/metrics` (this node, while leader).
#[derive(Debug, Default)]
pub struct NetStats {
    pub reports_received: AtomicU64,
    pub reports_duplicate: AtomicU64,
    pub reports_refused: AtomicU64,
    /// Traced flows whose hops mapped to at least one known switch (path evidence into the window).
    pub paths_mapped: AtomicU64,
    pub votes: AtomicU64,
    pub windows: AtomicU64,
    pub windows_failed: AtomicU64,
    pub last_flows: AtomicU64,
    pub last_bad_flows: AtomicU64,
    /// Flows the last window placed on their traced route.
    pub last_traced_flows: AtomicU64,
    pub last_suspects: AtomicU64,
    pub last_cpu_ms: AtomicU64,
    pub findings_proposed: AtomicU64,
    pub peers_handed_out: AtomicU64,
    /// Replicated topologies loaded, verified and parsed; and those not used (see `fabric`).
    pub topology_loads: AtomicU64,
    pub topology_load_failures: AtomicU64,
}

/// The window being filled.
struct Current {
    window: Window,
    /// Reports counted in this window and the one before, so a heartbeat retried across a window's end
    /// does not count its report again in the next window.
    seen: HashSet<(String, u64, u64)>,
    prev_seen: HashSet<(String, u64, u64)>,
    opened_ms: u64,
}

impl Current {
    fn new(max_reports: usize, now_ms: u64) -> Current {
        Current {
            window: Window::new(WindowLimits { max_reports, ..WindowLimits::default() }),
            seen: HashSet::new(),
            prev_seen: HashSet::new(),
            opened_ms: now_ms,
        }
    }
}

/// The verdict of the last closed window, as the RPCs serve it.
pub struct Closed {
    pub window_end_ms: u64,
    pub window_ms: u64,
    pub reporters: u32,
    pub flows: u64,
    pub bad_flows: u64,
    pub topology: Option<Arc<Topology>>,
    pub verdict: netvote::Verdict,
    /// The windows the verdict judged together, newest (the closing one) first: 1..=`accumulate` of them,
    /// fewer after a new term or when together they would pass the window's limits. Shared with the
    /// history, not copied.
    pub windows: Vec<Arc<Window>>,
}

/// The leader's network memory (see the module comment).
pub struct Net {
    pub cfg: NetConfig,
    peers: Mutex<peers::PeerBook>,
    current: Mutex<Current>,
    last: RwLock<Option<Arc<Closed>>>,
    /// The closed windows judged again with the next ones (at most `accumulate` - 1, newest last).
    history: Mutex<std::collections::VecDeque<Arc<Window>>>,
    /// host -> the interface its last report named (kept across windows, at most
    /// `peers::MAX_BOOK_AGENTS`), to name a host suspect that did not report in the judged window.
    ifaces: Mutex<std::collections::HashMap<String, String>>,
    /// host -> ToR from `switch=`/`rack=` labels (when there is no topology file), learned per new peer.
    label_tors: Mutex<std::collections::HashMap<String, String>>,
    /// The topology in use (replicated, else the file); None: labels. Read per report batch and window.
    fabric: RwLock<Option<fabric::Fabric>>,
    /// The replicated topology last loaded, by sha256.
    cache: Mutex<fabric::Cache>,
    /// One load of the replicated topology at a time.
    loading: tokio::sync::Mutex<()>,
    /// The replicated sha256 this member last warned differs from its file.
    warned: Mutex<String>,
    pub stats: NetStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Net {
    pub fn new(cfg: NetConfig) -> Net {
        let max = cfg.max_reports;
        let file = cfg.topology.clone().map(|t| fabric::Fabric {
            source: fabric::Source::File {
                path: cfg.topology_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            },
            sha256: cfg.topology_sha256.clone(),
            topology: t,
        });
        Net {
            fabric: RwLock::new(file),
            cache: Mutex::default(),
            loading: tokio::sync::Mutex::new(()),
            warned: Mutex::default(),
            cfg,
            peers: Mutex::default(),
            current: Mutex::new(Current::new(max, now_ms())),
            last: RwLock::new(None),
            history: Mutex::default(),
            label_tors: Mutex::default(),
            ifaces: Mutex::default(),
            stats: NetStats::default(),
        }
    }

    /// Drop everything (leadership lost, or a new term).
    pub fn clear(&self) {
        lock(&self.peers).clear();
        *lock(&self.current) = Current::new(self.cfg.max_reports, now_ms());
        *self.last.write().unwrap_or_else(|p| p.into_inner()) = None;
        lock(&self.history).clear();
        lock(&self.label_tors).clear();
        lock(&self.ifaces).clear();
    }

    /// An agent went silent: no longer handed out as a peer.
    pub fn forget(&self, agent: &str) {
        lock(&self.peers).forget(agent);
    }

    pub fn last(&self) -> Option<Arc<Closed>> {
        self.last.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn peer_count(&self) -> usize {
        lock(&self.peers).len()
    }

    /// The topology in use and where it came from (None: labels).
    pub fn fabric(&self) -> Option<fabric::Fabric> {
        self.fabric.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The topology in use, replicated or from the file (None: labels): an `Arc` under a read lock.
    pub fn fabric_topology(&self) -> Option<Arc<Topology>> {
        self.fabric.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|f| f.topology.clone())
    }

    /// Put `next` in use. A change of topology drops the leader's network memory (peers carry their ToR,
    /// windows hold hops named by the old topology's addresses); the same bytes from another source (a
    /// file that became the replicated topology) only change the source. Returns whether the fabric changed.
    fn set_fabric(&self, next: Option<fabric::Fabric>) -> bool {
        let mut cur = self.fabric.write().unwrap_or_else(|p| p.into_inner());
        let (same_source, same_bytes) = match (cur.as_ref(), next.as_ref()) {
            (None, None) => (true, true),
            (Some(a), Some(b)) => (a.source == b.source, a.sha256 == b.sha256),
            _ => (false, false),
        };
        if same_source && same_bytes {
            return false;
        }
        if same_bytes {
            *cur = next;
            return false;
        }
        let what = match next.as_ref().map(|f| &f.source) {
            Some(fabric::Source::Replicated { name, version, sha256 }) => {
                format!("the replicated topology {name}@{version} (sha256 {sha256})")
            }
            Some(fabric::Source::File { path }) => format!("the [topology] file {path}"),
            None => "the machines' switch/rack labels".to_string(),
        };
        tracing::info!("network localisation now uses {what}");
        *cur = next;
        drop(cur);
        self.clear();
        true
    }

    fn tor_of(&self, host: &str) -> Option<String> {
        match self.fabric_topology() {
            Some(t) => t.tor_of(host).map(str::to_string),
            None => lock(&self.label_tors).get(host).cloned(),
        }
    }

    /// A report's traced hops (addresses, checked by `reports::check_reports`) as switch names from the
    /// topology's `addrs` (replicated or file); a hop the topology does not know becomes "*" (any switch at
    /// that position). Without such a topology, or when no hop is known, the path is dropped (the flow counts as not traced).
    fn map_paths(&self, r: &netvote::Report) -> Option<netvote::Report> {
        if r.peers.iter().all(|p| p.path.is_empty()) {
            return None;
        }
        let topo = self.fabric_topology().filter(|t| t.has_addrs());
        let mut out = r.clone();
        for p in &mut out.peers {
            let names: Vec<String> = match &topo {
                Some(t) => p
                    .path
                    .iter()
                    .map(|h| {
                        h.parse::<std::net::IpAddr>()
                            .ok()
                            .and_then(|ip| t.switch_at(ip))
                            .unwrap_or(netvote::UNKNOWN_HOP)
                            .to_string()
                    })
                    .collect(),
                None => Vec::new(),
            };
            p.path = if names.iter().all(|n| n == netvote::UNKNOWN_HOP) { Vec::new() } else { names };
            if !p.path.is_empty() {
                self.stats.paths_mapped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(out)
    }

    /// Add validated reports to the current window. Returns (new, duplicate, refused).
    pub fn add_reports(&self, reports: &[netvote::Report]) -> (u32, u32, u32) {
        let (mut new, mut dup, mut refused) = (0, 0, 0);
        let mapped: Vec<Option<netvote::Report>> = reports.iter().map(|r| self.map_paths(r)).collect();
        let mut cur = lock(&self.current);
        for (r, m) in reports.iter().zip(&mapped) {
            let r = m.as_ref().unwrap_or(r);
            let key = (r.reporter.clone(), r.started_ms, r.window_seq);
            if cur.seen.contains(&key) || cur.prev_seen.contains(&key) {
                dup += 1;
                continue;
            }
            match cur.window.add(r) {
                Ok(true) => {
                    new += 1;
                    self.stats.votes.fetch_add(r.votes.len() as u64, Ordering::Relaxed);
                    cur.seen.insert(key);
                }
                Ok(false) => dup += 1,
                Err(e) => {
                    tracing::debug!(error = %e, reporter = %r.reporter, "net report refused");
                    refused += 1;
                }
            }
        }
        drop(cur);
        let mut ifaces = lock(&self.ifaces);
        for r in reports {
            if ifaces.get(&r.reporter) != Some(&r.iface)
                && (ifaces.len() < peers::MAX_BOOK_AGENTS || ifaces.contains_key(&r.reporter))
            {
                ifaces.insert(r.reporter.clone(), r.iface.clone());
            }
        }
        drop(ifaces);
        self.stats.reports_received.fetch_add(u64::from(new), Ordering::Relaxed);
        self.stats.reports_duplicate.fetch_add(u64::from(dup), Ordering::Relaxed);
        self.stats.reports_refused.fetch_add(u64::from(refused), Ordering::Relaxed);
        (new, dup, refused)
    }

    /// Take the current window and open the next one.
    fn take_window(&self, now: u64) -> (Window, u64) {
        let mut cur = lock(&self.current);
        let mut next = Current::new(self.cfg.max_reports, now);
        next.prev_seen = std::mem::take(&mut cur.seen);
        let old = std::mem::replace(&mut *cur, next);
        (old.window, old.opened_ms)
    }
}

impl Service {
    /// The network part of a heartbeat (after the heartbeat itself was accepted): the agent's probe address
    /// into the peer book, its validated reports into the current window, and its sample of peers. A full
    /// window refuses the reports (counted in `huatuo_master_net_reports_refused_total`) but not the beat.
    pub fn net_beat(
        &self,
        agent: &str,
        host: &str,
        probe_addr: &str,
        reports: &[netvote::Report],
    ) -> Result<Vec<Peer>, ApiError> {
        let net = self.net();
        let now = Instant::now();
        let known = lock(&net.peers).touch(agent, host, probe_addr, now);
        if !known {
            if net.fabric_topology().is_none()
                && !probe_addr.is_empty()
                && let Some(tor) = self.label_tor(host)?
            {
                lock(&net.label_tors).insert(host.to_string(), tor);
            }
            let tor = net.tor_of(host).unwrap_or_default();
            let peer = Peer { host: host.to_string(), addr: probe_addr.to_string(), tor };
            if !lock(&net.peers).upsert(agent, peer, now) {
                tracing::debug!(agent, "peer book full; agent not handed out as a peer");
            }
        }
        if !reports.is_empty() {
            net.add_reports(reports);
        }
        let sample = lock(&net.peers).sample(agent, now, self.silent_after());
        net.stats.peers_handed_out.fetch_add(sample.len() as u64, Ordering::Relaxed);
        Ok(sample)
    }

    /// The ToR of `host` from its machine's `switch=` (else `rack=`) label: one point lookup.
    fn label_tor(&self, host: &str) -> Result<Option<String>, ApiError> {
        let reader = crate::store::Reader::new(self.db()).map_err(|e| ApiError::internal(e.to_string()))?;
        let rec = reader.object(&format!("machine/{host}")).map_err(|e| ApiError::internal(e.to_string()))?;
        let tor = rec.and_then(|r| r.labels.get("switch").or_else(|| r.labels.get("rack")).cloned());
        // A label value that cannot name a switch object is not a ToR the localisation could blame.
        Ok(tor.filter(|t| {
            state_machines::id::validate_host(t).is_ok() && !t.contains(state_machines::id::LINK_SEP)
        }))
    }

    /// The last closed window (leader only, like every network read: the memory is the leader's).
    pub fn net_last(&self) -> Result<Option<Arc<Closed>>, ApiError> {
        self.leader_check()?;
        Ok(self.net().last())
    }

    /// The topology the leader localises with: the replicated one, else the configured file, else the
    /// labels learned so far.
    fn net_topology(&self) -> Option<Arc<Topology>> {
        let net = self.net();
        if let Some(t) = net.fabric_topology() {
            return Some(t);
        }
        self.net_topology_from_labels()
    }

    /// A one-tier topology from the machines' `switch=`/`rack=` labels learned so far.
    pub(crate) fn net_topology_from_labels(&self) -> Option<Arc<Topology>> {
        let net = self.net();
        let pairs: Vec<(String, String)> =
            lock(&net.label_tors).iter().map(|(h, t)| (h.clone(), t.clone())).collect();
        if pairs.is_empty() {
            return None;
        }
        match Topology::from_tors(pairs) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!(error = %e, "no topology from the switch/rack labels; only hosts can be suspects");
                None
            }
        }
    }

    /// Equal-cost routes between two hosts over the topology (leader only; the replicated topology as
    /// committed now, not as of the last window).
    pub async fn net_routes(
        &self,
        a: &str,
        b: &str,
    ) -> Result<(Vec<netvote::Route>, Option<Arc<Closed>>), ApiError> {
        self.leader_check()?;
        self.refresh_fabric().await;
        state_machines::id::validate_host(a).map_err(|e| ApiError::invalid(format!("a: {e}")))?;
        state_machines::id::validate_host(b).map_err(|e| ApiError::invalid(format!("b: {e}")))?;
        if a == b {
            return Err(ApiError::invalid("a path needs two different hosts"));
        }
        let last = self.net().last();
        let Some(topo) = self.net_topology() else {
            return Err(ApiError::new(
                proto::error::Code::NotFound,
                "no topology: set one (huatuo net topology set FILE), configure [topology] file, or label \
                 machines switch=TOR",
            ));
        };
        let routes =
            topo.routes(a, b).map_err(|e| ApiError::new(proto::error::Code::NotFound, e.to_string()))?;
        Ok((routes, last))
    }
}

/// Localise the closing window with the earlier ones (newest first), judged together in place (no copy of
/// their flows): as many as fit the closing window's limits (an earlier window that would pass one is left
/// out, with the older ones). Returns the verdict and how many windows it judged.
fn judge(topo: Option<&Topology>, window: &Window, earlier: &[Arc<Window>]) -> (netvote::Verdict, usize) {
    let all: Vec<&Window> = std::iter::once(window).chain(earlier.iter().map(|w| &**w)).collect();
    let n = netvote::fitting(&all);
    if n < all.len() {
        tracing::debug!(
            judged = n,
            offered = all.len(),
            "earlier windows left out of the judgement (limits)"
        );
    }
    (netvote::localise_windows(topo, &all[..n], &netvote::Params::default()), n)
}

/// Close one window: localise off the async runtime, keep the verdict, propose findings.
async fn close_window(s: &Service, clearing: &mut decide::Clearing) -> Result<(), ApiError> {
    let net = s.net();
    let now = now_ms();
    let (window, opened) = net.take_window(now);
    let topo = s.net_topology();
    let window_ms = now.saturating_sub(opened);
    let t2 = topo.clone();
    let earlier: Vec<Arc<Window>> = lock(&net.history).iter().rev().cloned().collect();
    let job = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let (verdict, n) = judge(t2.as_deref(), &window, &earlier);
        let earlier_kept: Vec<Arc<Window>> = earlier.into_iter().take(n - 1).collect();
        (verdict, Arc::new(window), earlier_kept, started.elapsed())
    });
    let (mut verdict, window, earlier_kept, took) = match tokio::time::timeout(MAX_LOCALISE_TIME, job).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            net.stats.windows_failed.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::internal(format!("localisation failed: {e}")));
        }
        Err(_) => {
            net.stats.windows_failed.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::unavailable(format!(
                "localisation took over {MAX_LOCALISE_TIME:?}; window dropped"
            )));
        }
    };
    decide::name_ifaces(&mut verdict.suspects, |h| lock(&net.ifaces).get(h).cloned());
    let flows = window.flows().len() as u64;
    let bad_flows = u64::from(verdict.bad_flows);
    net.stats.windows.fetch_add(1, Ordering::Relaxed);
    net.stats.last_flows.store(flows, Ordering::Relaxed);
    net.stats.last_bad_flows.store(bad_flows, Ordering::Relaxed);
    net.stats.last_traced_flows.store(u64::from(verdict.traced_flows), Ordering::Relaxed);
    net.stats.last_suspects.store(verdict.suspects.len() as u64, Ordering::Relaxed);
    net.stats.last_cpu_ms.store(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    let findings = clearing.window(&verdict.suspects, now, net.cfg.clear_windows);
    let closed = Closed {
        window_end_ms: now,
        window_ms,
        reporters: u32::try_from(window.reporters()).unwrap_or(u32::MAX),
        flows,
        bad_flows,
        topology: topo,
        verdict,
        windows: std::iter::once(Arc::clone(&window)).chain(earlier_kept).collect(),
    };
    {
        let mut h = lock(&net.history);
        h.push_back(window);
        while h.len() >= net.cfg.accumulate {
            h.pop_front();
        }
    }
    *net.last.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(closed));
    if findings.is_empty() {
        return Ok(());
    }
    let (switches, hosts): (Vec<_>, Vec<_>) =
        findings.into_iter().partition(|f| f.object.kind().is_network());
    for batch in [hosts, switches] {
        if batch.is_empty() {
            continue;
        }
        if batch[0].object.kind().is_network()
            && s.stats.min_command_version() < crate::model::NET_COMMAND_VERSION
        {
            tracing::warn!(
                findings = batch.len(),
                "switch/link findings not proposed: the cluster has not enabled command version {} yet",
                crate::model::NET_COMMAND_VERSION
            );
            continue;
        }
        let n = batch.len() as u64;
        let batch = crate::api::IngestBatch { agent: String::new(), seq: 0, epoch: 0, findings: batch };
        s.ingest(batch).await?;
        net.stats.findings_proposed.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

/// The leader's window task: every `window`, close the window and judge it. Followers keep everything
/// empty. One window at a time: a slow localisation delays the next close (the window then spans longer),
/// never queues a second one.
pub(crate) async fn run(svc: Weak<Service>, stop: impl std::future::Future<Output = ()> + Send) {
    tokio::pin!(stop);
    let Some(window) = svc.upgrade().map(|s| s.net().cfg.window) else { return };
    let mut interval = tokio::time::interval(window);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = 0u64;
    let mut clearing = decide::Clearing::default();
    // Whether this term's leader already pushed its [topology] file (or found the cluster had a topology).
    let mut bootstrapped = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = interval.tick() => {}
        }
        let Some(s) = svc.upgrade() else { return };
        let st = s.raft().status();
        if st.role == Role::Stopped {
            return;
        }
        s.warn_if_file_differs();
        if st.role != Role::Leader {
            if term != 0 {
                s.net().clear();
                clearing = decide::Clearing::default();
                term = 0;
            }
            continue;
        }
        if term != st.term {
            // A new term: start empty, and remember the devices found suspect before (to clear them).
            s.net().clear();
            clearing = decide::Clearing::default();
            match s.suspected_devices() {
                Ok(ids) => clearing.adopt(ids),
                Err(e) => {
                    tracing::debug!(error = %e, "reading suspected devices failed; retrying next window");
                    continue;
                }
            }
            term = st.term;
            bootstrapped = false;
            // A failed load is tried again by a new leader.
            if lock(&s.net().cache).parsed.is_none() {
                *lock(&s.net().cache) = fabric::Cache::default();
            }
            s.refresh_fabric().await;
            continue;
        }
        if !bootstrapped {
            bootstrapped = match s.bootstrap_topology().await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(error = %e, "the [topology] file was not made the replicated topology");
                    true
                }
            };
        }
        s.refresh_fabric().await;
        tokio::select! {
            _ = &mut stop => return,
            r = close_window(&s, &mut clearing) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "network window not judged");
                }
            }
        }
    }
}

impl Service {
    /// Bring the topology in use up to date with the replicated pointer (one point read; a load, verify and
    /// parse only when its sha256 changed, off the async runtime). Errors reading the pointer leave the
    /// topology in use as it is (logged).
    pub async fn refresh_fabric(&self) {
        let net = self.net();
        // One refresh at a time: a slow one (a load) must not be overtaken by one that read an older
        // pointer and would put the older topology back.
        let _one = net.loading.lock().await;
        let active = match crate::store::Reader::new(self.db()).and_then(|r| r.active_topology()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "reading the replicated topology failed; topology in use unchanged");
                return;
            }
        };
        let Some(a) = active else {
            let file = net.cfg.topology.clone().map(|t| fabric::Fabric {
                source: fabric::Source::File {
                    path: net.cfg.topology_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                },
                sha256: net.cfg.topology_sha256.clone(),
                topology: t,
            });
            net.set_fabric(file);
            return;
        };
        let cached = {
            let c = lock(&net.cache);
            (c.sha256 == a.sha256).then(|| c.parsed.clone())
        };
        let parsed = match cached {
            Some(p) => p,
            None => {
                let db = self.db_arc();
                let (sha, size) = (a.sha256.clone(), a.size);
                let job = tokio::task::spawn_blocking(move || {
                    let r = crate::store::Reader::new(&db).map_err(|e| e.to_string())?;
                    fabric::load_verified(&sha, size, &mut |i| {
                        r.blob_chunk(&sha, i).map_err(|e| e.to_string())
                    })
                });
                let loaded = match job.await {
                    Ok(r) => r,
                    Err(e) => Err(format!("the load failed: {e}")),
                };
                let at = format!("{}@{}", a.name, a.version);
                let parsed = match loaded {
                    Ok(t) => {
                        net.stats.topology_loads.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(topology = %at, sha256 = %a.sha256, hosts = t.host_count(),
                            switches = t.switches().len(), "replicated topology loaded");
                        Some(Arc::new(t))
                    }
                    Err(e) => {
                        net.stats.topology_load_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(topology = %at, sha256 = %a.sha256, error = %e,
                            "replicated topology not used: localising as with no topology");
                        None
                    }
                };
                *lock(&net.cache) = fabric::Cache { sha256: a.sha256.clone(), parsed: parsed.clone() };
                parsed
            }
        };
        net.set_fabric(parsed.map(|t| fabric::Fabric {
            source: fabric::Source::Replicated { name: a.name, version: a.version, sha256: a.sha256.clone() },
            sha256: a.sha256,
            topology: t,
        }));
    }

    /// Any member: warn (once per replicated sha256) when this member's `[topology] file` differs from the
    /// active replicated topology, saying which wins.
    fn warn_if_file_differs(&self) {
        let net = self.net();
        let Some(path) = &net.cfg.topology_file else { return };
        let Ok(Some(a)) = crate::store::Reader::new(self.db()).and_then(|r| r.active_topology()) else {
            return;
        };
        if a.sha256 == net.cfg.topology_sha256 || *lock(&net.warned) == a.sha256 {
            return;
        }
        tracing::warn!(
            "[topology] file {} (sha256 {}) differs from the replicated topology {}@{} (sha256 {}): the \
             replicated topology wins; the file is used only while none is set",
            path.display(),
            net.cfg.topology_sha256,
            a.name,
            a.version,
            a.sha256
        );
        *lock(&net.warned) = a.sha256;
    }

    /// Leader: when the cluster never had a replicated topology (`topology_rev` 0) and this member has a
    /// `[topology] file`, push and activate the file once, so an existing deployment's file becomes the
    /// replicated one. Needs command version [`crate::model::TOPOLOGY_COMMAND_VERSION`] enabled.
    async fn bootstrap_topology(&self) -> Result<bool, ApiError> {
        let net = self.net();
        let Some(path) = net.cfg.topology_file.clone() else { return Ok(false) };
        if self.stats.min_command_version() < crate::model::TOPOLOGY_COMMAND_VERSION {
            return Ok(false);
        }
        let r = crate::store::Reader::new(self.db()).map_err(|e| ApiError::internal(e.to_string()))?;
        if r.meta(crate::store::META_TOPOLOGY_REV).map_err(|e| ApiError::internal(e.to_string()))? != 0 {
            return Ok(true);
        }
        drop(r);
        let content = read_topology_file(&path).map_err(|e| ApiError::invalid(e.to_string()))?;
        let req = crate::api::topology::SetRequest {
            content,
            name: String::new(),
            version: String::new(),
            clear: false,
            by: "master".into(),
            reason: format!("bootstrap from the [topology] file {} of the leader", path.display()),
        };
        let v = self.set_topology(req, None).await?;
        tracing::info!(topology = %format!("{}@{}", v.name, v.version), sha256 = %v.sha256,
            file = %path.display(), "the [topology] file became the replicated topology");
        Ok(true)
    }

    /// Switch and link objects not GOOD (a new leader clears them when their suspicion is gone), at most
    /// `decide::MAX_TRACKED_SUSPECTS`.
    fn suspected_devices(&self) -> Result<Vec<state_machines::ObjectId>, ApiError> {
        let reader = crate::store::Reader::new(self.db()).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut out = Vec::new();
        for kind in [state_machines::Kind::Switch, state_machines::Kind::Link] {
            let filter = crate::store::Filter { kind: Some(kind), ..Default::default() };
            let recs = reader
                .list(&filter, decide::MAX_TRACKED_SUSPECTS)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            out.extend(recs.into_iter().filter(|r| r.sm.state != state_machines::State::Good).map(|r| r.id));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(host: &str, seq: u64) -> netvote::Report {
        netvote::Report {
            reporter: host.into(),
            started_ms: 1,
            window_seq: seq,
            iface: "eth0".into(),
            peers: vec![netvote::PeerResult { host: "peer".into(), sent: 10, ..Default::default() }],
            votes: vec![],
            tcp_retrans_segs: 0,
            tcp_out_segs: 0,
        }
    }

    #[test]
    fn a_full_window_refuses_reports_and_counts_them_and_retries_count_once() {
        let net = Net::new(NetConfig { max_reports: 2, ..NetConfig::default() });
        assert_eq!(net.add_reports(&[report("a", 1), report("b", 1)]), (2, 0, 0));
        assert_eq!(net.add_reports(&[report("a", 1)]), (0, 1, 0), "a retried heartbeat's report");
        assert_eq!(net.add_reports(&[report("c", 1)]), (0, 0, 1), "one more than the limit is refused");
        assert_eq!(net.stats.reports_refused.load(Ordering::Relaxed), 1);
        // The next window has room again, and still knows the reports of the one before.
        let (w, _) = net.take_window(now_ms());
        assert_eq!(w.reporters(), 2);
        assert_eq!(net.add_reports(&[report("a", 1), report("c", 1)]), (1, 1, 0));
        // Leadership lost: everything goes.
        net.clear();
        assert_eq!(net.add_reports(&[report("a", 1)]), (1, 0, 0), "a new leader starts empty");
    }

    #[test]
    fn a_new_fabric_drops_the_leaders_memory_and_the_same_bytes_from_elsewhere_do_not() {
        let file = Arc::new(Topology::parse_csv("a,t1\npeer,t2\n").expect("csv"));
        let net = Net::new(NetConfig {
            topology: Some(file.clone()),
            topology_sha256: "s1".into(),
            ..NetConfig::default()
        });
        let replicated = |sha: &str, t: Arc<Topology>| fabric::Fabric {
            source: fabric::Source::Replicated { name: "f".into(), version: "1".into(), sha256: sha.into() },
            sha256: sha.into(),
            topology: t,
        };
        assert_eq!(net.add_reports(&[report("a", 1)]), (1, 0, 0));
        assert!(!net.set_fabric(Some(replicated("s1", file))), "the file's bytes, now replicated");
        assert!(net.fabric().is_some_and(|f| matches!(f.source, fabric::Source::Replicated { .. })));
        assert_eq!(net.add_reports(&[report("a", 1)]), (0, 1, 0), "the window was kept");
        let other = Arc::new(Topology::parse_csv("a,t9\n").expect("csv"));
        assert!(net.set_fabric(Some(replicated("s2", other))));
        assert_eq!(net.tor_of("a").as_deref(), Some("t9"));
        assert_eq!(net.add_reports(&[report("a", 1)]), (1, 0, 0), "a new fabric starts a new window");
        assert!(net.set_fabric(None));
        assert!(net.fabric_topology().is_none());
    }

    #[test]
    fn a_window_is_judged_with_the_ones_before_it_as_far_as_its_limits_allow() {
        let window = |seq: u64, hosts: &[&str]| {
            let mut w = Window::new(WindowLimits { max_flows: 5, ..WindowLimits::default() });
            for h in hosts {
                w.add(&report(h, seq)).expect("add");
            }
            w
        };
        let now = window(3, &["a", "b"]);
        let (v, n) = judge(None, &now, &[]);
        assert_eq!((n, v.flows), (1, 2), "nothing earlier: the window alone");
        let earlier = [Arc::new(window(2, &["a", "c"])), Arc::new(window(1, &["a", "b"]))];
        // 2 + 2 flows fit the limit of 5, the third window's 2 more would not: it is left out.
        let (v, n) = judge(None, &now, &earlier);
        assert_eq!((n, v.flows, v.reporters), (2, 4, 3));
        let big = [Arc::new(window(2, &["a", "b", "c", "d"]))];
        assert_eq!(judge(None, &now, &big).1, 1, "an earlier window over the limit is left out");
        // A window offered twice would count its reports twice: left out.
        let again = [Arc::new(window(3, &["a", "b"]))];
        assert_eq!(judge(None, &now, &again).1, 1, "the same reports are not counted twice");
    }

    #[test]
    fn traced_hops_become_switch_names_from_the_topologys_addresses() {
        let topo = netvote::Topology::parse_toml(
            r#"
[[tor]]
name = "t1"
hosts = ["a"]
uplinks = ["x1", "x2"]
addrs = ["10.0.1.1"]
[[tor]]
name = "t2"
hosts = ["peer"]
uplinks = ["x1", "x2"]
addrs = ["10.0.2.1"]
[[agg]]
name = "x1"
addrs = ["10.0.0.11"]
[[agg]]
name = "x2"
addrs = ["10.0.0.12"]
"#,
        )
        .expect("topology");
        let net = Net::new(NetConfig { topology: Some(Arc::new(topo)), ..NetConfig::default() });
        let mut r = report("a", 1);
        r.peers[0].lost = 2;
        r.peers[0].path = vec!["10.0.1.1".into(), "10.0.0.12".into(), "10.0.2.1".into()];
        let mut unknown = report("a", 2);
        unknown.peers[0].path = vec!["10.0.1.1".into(), "192.0.2.7".into(), "*".into()];
        let mut nothing = report("a", 3);
        nothing.peers[0].path = vec!["192.0.2.7".into(), "*".into()];
        assert_eq!(net.add_reports(&[r, unknown, nothing]), (3, 0, 0));
        let (w, _) = net.take_window(now_ms());
        let paths: Vec<Vec<String>> = w.flows().iter().map(|f| w.path(f.path).to_vec()).collect();
        assert_eq!(paths[0], ["t1", "x2", "t2"]);
        assert_eq!(paths[1], ["t1", "*", "*"], "an address no switch has matches any switch");
        assert!(paths[2].is_empty(), "no known hop: not traced");
        assert_eq!(net.stats.paths_mapped.load(Ordering::Relaxed), 2);
        let v = netvote::localise(net.cfg.topology.as_deref(), &w, &netvote::Params::default());
        assert_eq!(v.traced_flows, 2);
        // Without a topology file the hops cannot be named: the flow is not traced.
        let bare = Net::new(NetConfig::default());
        let mut r = report("a", 1);
        r.peers[0].path = vec!["10.0.1.1".into()];
        bare.add_reports(&[r]);
        let (w, _) = bare.take_window(now_ms());
        assert_eq!(w.flows()[0].path, 0);
    }

    #[test]
    fn the_config_is_checked_with_clear_errors() {
        let ok = NetConfig::resolve(&NetSection::default(), &TopologySection::default()).expect("defaults");
        assert_eq!((ok.window, ok.clear_windows), (Duration::from_secs(10), 3));
        for (net, want) in [
            (NetSection { window_s: 0, ..NetSection::default() }, "window_s = 0"),
            (NetSection { window_s: MAX_WINDOW_S + 1, ..NetSection::default() }, "window_s"),
            (NetSection { clear_windows: 0, ..NetSection::default() }, "clear_windows = 0"),
            (NetSection { max_reports_per_window: 0, ..NetSection::default() }, "max_reports_per_window"),
            (NetSection { accumulate_windows: 0, ..NetSection::default() }, "accumulate_windows = 0"),
            (
                NetSection { accumulate_windows: MAX_ACCUMULATE_WINDOWS + 1, ..NetSection::default() },
                "accumulate_windows",
            ),
        ] {
            let e = NetConfig::resolve(&net, &TopologySection::default()).expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let dir = std::env::temp_dir().join(format!("huatuo-net-topo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let csv = dir.join("t.csv");
        std::fs::write(&csv, "h1,tor-1,agg-1,spine-1\nh2,tor-2,agg-1,spine-1\n").expect("write");
        let t = NetConfig::resolve(&NetSection::default(), &TopologySection { file: Some(csv.clone()) })
            .expect("csv topology");
        assert_eq!(t.topology.as_ref().map(|t| t.host_count()), Some(2));
        std::fs::write(&csv, "h1,tor:1\n").expect("write");
        let e = NetConfig::resolve(&NetSection::default(), &TopologySection { file: Some(csv.clone()) })
            .expect_err("not an object name");
        assert!(e.to_string().contains("tor:1"), "{e}");
        std::fs::write(&csv, "h1,tor--1\n").expect("write");
        let e = NetConfig::resolve(&NetSection::default(), &TopologySection { file: Some(csv.clone()) })
            .expect_err("link separator in a name");
        assert!(e.to_string().contains("tor--1"), "{e}");
        std::fs::write(&csv, "h1\n").expect("write");
        let e = NetConfig::resolve(&NetSection::default(), &TopologySection { file: Some(csv.clone()) })
            .expect_err("one column");
        assert!(e.to_string().contains("t.csv") && e.to_string().contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
