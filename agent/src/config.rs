//! The agent's TOML configuration: versioned, `deny_unknown_fields`, validated before anything starts
//! (`huatuo agent --check-config` runs exactly this validation; the systemd unit runs it before starting).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The only config version this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// Largest config file read: a config is a few KiB; anything bigger is the wrong file.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Longest checker timeout a config may ask for: a probe that needs longer is broken.
pub const MAX_CHECKER_TIMEOUT: Duration = Duration::from_secs(600);
/// Most external checkers one agent runs: each is a process per interval on every host of the fleet.
pub const MAX_EXTERNAL_CHECKERS: usize = 32;
/// Largest stdout cap an external checker may be given (findings are a few KiB; the agent buffers it).
pub const MAX_EXTERNAL_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
/// Default timeout of one external checker run.
pub const DEFAULT_EXTERNAL_TIMEOUT_S: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: file is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {err}")]
    Parse { path: PathBuf, err: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Config format version; must be 1.
    pub version: u32,
    /// Host name used in object ids; default: this machine's hostname.
    #[serde(default)]
    pub host: Option<String>,
    /// Where the outbox and checker state live.
    pub data_dir: PathBuf,
    /// Master gRPC addresses (any member; the agent finds the leader).
    pub masters: Vec<String>,
    /// Local HTTP surface (/healthz, /metrics, /api/v1/local).
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// Root of the filesystem the probes read: `/` in production, a recorded tree in tests.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Disk scoring profile (`online`, `offline`, `archive`).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Labels the master uses for scopes (cluster, rack, switch, application profile).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub report: ReportConfig,
    /// Per-checker settings, by checker name. Checkers not listed run with their defaults.
    #[serde(default)]
    pub checkers: BTreeMap<String, CheckerConfig>,
    /// External checkers (`[[external]]`): scripts or binaries run in a sandbox (process group, timeout,
    /// output caps) whose JSON-line findings go through the same outbox as the built-in checkers'.
    #[serde(default)]
    pub external: Vec<ExternalConfig>,
    /// Actions on this host (disk NEWBIE/TEST, machine FIX/NEWBIE/TEST); see `worker::config`.
    #[serde(default)]
    pub worker: crate::worker::WorkerConfig,
    /// Mutual TLS towards the masters: the cluster CA, this agent's client certificate and key.
    #[serde(default)]
    pub tls: Option<proto::tls::TlsFiles>,
    /// File holding this agent's bearer token (role `agent`); keep it readable by the agent only.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Talk to the masters without TLS and token (tests and experiments only; logged loudly).
    #[serde(default)]
    pub insecure: bool,
    /// The unprivileged user external checkers from the catalog run as when the agent runs as root
    /// (looked up in /etc/passwd; root is refused). The artifact files under `DATA/artifacts` are made
    /// readable and executable for it, but every directory above them must let it through (o+x).
    #[serde(default = "default_checker_user")]
    pub checker_user: String,
    /// The probe responder and the `net-probe` checker (issue 16).
    #[serde(default)]
    pub net_probe: NetProbeConfig,
    /// The disk-failure predictor (issue 20).
    #[serde(default)]
    pub predict: PredictConfig,
}

/// `[predict]`: the disk-failure predictor (the model itself comes from the checker catalog).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PredictConfig {
    /// Failure probability at or above which a disk goes to WARNING `predicted-failure`, strictly between
    /// 0 and 1. Default: the model's own threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
}

impl PredictConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.threshold {
            Some(t) if !(t > 0.0 && t < 1.0) => {
                Err(ConfigError::Invalid(format!("predict.threshold {t} must be strictly between 0 and 1")))
            }
            _ => Ok(()),
        }
    }
}

/// `[net_probe]`: the probe responder and the `net-probe` checker (see `netprobe`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetProbeConfig {
    /// Answer probes and probe peers (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where the responder listens (default `0.0.0.0:7791`; port 0 picks a free port, for tests).
    #[serde(default = "default_probe_listen")]
    pub listen: SocketAddr,
    /// The `probe_addr` sent in heartbeats (IP:PORT peers reach the responder at). Default: the listen
    /// address when it names an IP, else the local IP of the route to the master with the listen port.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Length of one probe window in seconds (one report per window).
    #[serde(default = "default_probe_window")]
    pub window_s: u64,
    /// Peers probed per window.
    #[serde(default = "default_peers_per_window")]
    pub peers_per_window: usize,
    /// Probes sent to each peer per window (the vote rule judges a peer's loss from
    /// `netvote::local::LocalRules::default().min_sent` probes on).
    #[serde(default = "default_probes_per_peer")]
    pub probes_per_peer: u32,
    /// How long a connect or a probe's answer may take before it counts as lost. Default: 500 ms, or less
    /// when the window is too short for that (see [`NetProbeConfig::timeout_ms`]).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bound on the prober's traffic (bytes sent on the wire, headers included, averaged over a window).
    #[serde(default = "default_probe_bytes")]
    pub max_bytes_per_s: u64,
}

impl Default for NetProbeConfig {
    fn default() -> Self {
        NetProbeConfig {
            enabled: true,
            listen: default_probe_listen(),
            advertise: None,
            window_s: default_probe_window(),
            peers_per_window: default_peers_per_window(),
            probes_per_peer: default_probes_per_peer(),
            timeout_ms: None,
            max_bytes_per_s: default_probe_bytes(),
        }
    }
}

/// Longest probe window: localisation needs fresh windows; an hour is already useless for it.
pub const MAX_PROBE_WINDOW_S: u64 = 3600;
/// Longest probe timeout: a datacenter round trip is well under a millisecond; a probe unanswered after
/// 10 s is lost by any measure, and longer would stretch a window past its end.
pub const MAX_PROBE_TIMEOUT_MS: u64 = 10_000;
/// Highest `max_bytes_per_s`: probing is a background measurement; 100 MiB/s would be load, not a probe.
pub const MAX_PROBE_BYTES_PER_S: u64 = 100 << 20;

fn default_probe_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7791))
}
fn default_probe_window() -> u64 {
    10
}
fn default_peers_per_window() -> usize {
    32
}
/// 5: the vote rule's default `min_sent`, so every probed peer can be judged on loss.
fn default_probes_per_peer() -> u32 {
    5
}
/// Half a second: far above a healthy datacenter RTT, below the kernel's 1 s SYN retransmit, so a
/// dropped SYN counts as a lost probe.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 500;
/// 64 KiB/s: the defaults (32 peers x 5 probes per 10 s) spend about 4 KiB/s; the bound leaves room for
/// a larger `peers_per_window` and stops a misconfiguration from flooding the fabric.
fn default_probe_bytes() -> u64 {
    64 * 1024
}

impl NetProbeConfig {
    /// Rounds of `PROBE_CONCURRENCY` peers one window needs.
    fn rounds(&self) -> u64 {
        self.peers_per_window.div_ceil(crate::netprobe::prober::PROBE_CONCURRENCY) as u64
    }

    /// The probe timeout in use: the configured one, else [`DEFAULT_PROBE_TIMEOUT_MS`] cut down so that
    /// every peer's probes fit in the window even when each connect and each answer time out (2 s
    /// windows with 5 probes: 200 ms), never below 1 ms.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or_else(|| {
            let per_probe =
                (self.window_s * 1000) / (self.rounds() * u64::from(self.probes_per_peer) * 2).max(1);
            DEFAULT_PROBE_TIMEOUT_MS.min(per_probe).max(1)
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("net_probe.{m}")));
        if self.window_s == 0 || self.window_s > MAX_PROBE_WINDOW_S {
            return bad(format!("window_s must be within 1..={MAX_PROBE_WINDOW_S}"));
        }
        let max_peers = crate::netprobe::prober::MAX_PEERS_PER_WINDOW;
        if self.peers_per_window == 0 || self.peers_per_window > max_peers {
            return bad(format!("peers_per_window must be within 1..={max_peers}"));
        }
        let max_probes = crate::netprobe::responder::MAX_PROBES_PER_CONNECTION;
        if self.probes_per_peer == 0 || self.probes_per_peer > max_probes {
            return bad(format!("probes_per_peer must be within 1..={max_probes}"));
        }
        let min_sent = netvote::local::LocalRules::default().min_sent;
        if self.probes_per_peer < min_sent {
            return bad(format!(
                "probes_per_peer ({}) must be at least {min_sent}: the vote rule judges a peer's loss only \
                 from that many probes in a window",
                self.probes_per_peer
            ));
        }
        let timeout_ms = self.timeout_ms();
        if timeout_ms == 0 || timeout_ms > MAX_PROBE_TIMEOUT_MS {
            return bad(format!("timeout_ms must be within 1..={MAX_PROBE_TIMEOUT_MS}"));
        }
        if timeout_ms >= self.window_s * 1000 {
            return bad(format!(
                "timeout_ms ({timeout_ms}) must be shorter than the window ({} s)",
                self.window_s
            ));
        }
        // Every peer's probes must fit in the window even when each connect and each answer times out
        // (a peer cut off at the window's end sends fewer probes than the vote rule needs to judge it).
        let rounds = self.rounds();
        let worst_ms = rounds * u64::from(self.probes_per_peer) * 2 * timeout_ms;
        if worst_ms > self.window_s * 1000 {
            return bad(format!(
                "timeout_ms: {rounds} round(s) of {} probes, each up to a connect and an answer of {} ms, take \
                 up to {worst_ms} ms: more than the window ({} s); lower timeout_ms or probes_per_peer",
                self.probes_per_peer, timeout_ms, self.window_s
            ));
        }
        let one_peer = crate::netprobe::prober::peer_budget(self.probes_per_peer);
        if self.max_bytes_per_s > MAX_PROBE_BYTES_PER_S {
            return bad(format!("max_bytes_per_s must be at most {MAX_PROBE_BYTES_PER_S}"));
        }
        if self.max_bytes_per_s.saturating_mul(self.window_s) < one_peer {
            return bad(format!(
                "max_bytes_per_s ({}) x window_s ({}) does not cover one peer's {} probes ({one_peer} bytes \
                 at worst)",
                self.max_bytes_per_s, self.window_s, self.probes_per_peer
            ));
        }
        if let Some(a) = self.advertise
            && (a.ip().is_unspecified() || a.port() == 0)
        {
            return bad(format!("advertise {a}: must be the IP:PORT peers reach this host at"));
        }
        Ok(())
    }
}

/// `nobody`: every Linux host has it and it owns nothing.
fn default_checker_user() -> String {
    "nobody".to_string()
}

/// Largest token file read: a token is 64 characters; anything bigger is the wrong file.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { max_entries: default_max_entries(), max_bytes: default_max_bytes() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Most findings in one batch sent to the master.
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Heartbeat period.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u64,
    /// Cap of the exponential reconnect backoff.
    #[serde(default = "default_backoff")]
    pub backoff_max_s: u64,
    /// How often the inventory is re-read (a replaced part shows up as a new serial in its slot).
    #[serde(default = "default_inventory")]
    pub inventory_s: u64,
    /// Send each heartbeat as one UDP datagram to the leader's gRPC port number first (sealed with the
    /// token's key), and as a call over the heartbeat stream when it cannot go that way (too large, no
    /// answer in 0.5 s: then calls for 5 minutes). Default true; false: the stream only.
    #[serde(default = "default_heartbeat_datagrams")]
    pub heartbeat_datagrams: bool,
    /// Close the connection to the masters after this long without a call or stream on it (heartbeats
    /// going as datagrams): a leader then holds connections only for the agents that are sending something.
    /// The next call connects again. 0: keep it open. Default 60.
    #[serde(default = "default_idle_connection")]
    pub idle_connection_s: u64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            batch_max: default_batch(),
            heartbeat_s: default_heartbeat(),
            backoff_max_s: default_backoff(),
            inventory_s: default_inventory(),
            heartbeat_datagrams: default_heartbeat_datagrams(),
            idle_connection_s: default_idle_connection(),
        }
    }
}

fn default_heartbeat_datagrams() -> bool {
    true
}

fn default_idle_connection() -> u64 {
    60
}

/// A minute: replacements take hours of human work; noticing one a minute later costs nothing.
fn default_inventory() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CheckerConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds between runs; default: the checker's own interval.
    #[serde(default)]
    pub interval_s: Option<u64>,
    /// Seconds a run may take before it counts as hung.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Checker-specific settings (e.g. `smartctl = "/usr/sbin/smartctl"`, `kmsg = "/dev/kmsg"`).
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
    /// Checkers whose findings this one grades with (replaces the default from `topology::DEFAULT_INPUTS`;
    /// `[]` cuts them off). Only derived checkers (disk, machine) take inputs.
    #[serde(default)]
    pub inputs: Option<Vec<String>>,
}

/// One external checker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// Checker name: the NAME of its `checker/HOST/NAME` object; must not be a built-in checker's.
    pub name: String,
    /// Its version, carried by every finding.
    pub version: String,
    /// Absolute path of the executable.
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// Seconds between runs.
    pub interval_s: u64,
    /// Seconds one run may take; the process group is killed after it.
    #[serde(default = "default_external_timeout")]
    pub timeout_s: u64,
    /// Object kinds it reports on (`disk`, `dimm`, `nic`, `machine`).
    pub kinds: Vec<String>,
    /// Expected sha256 of the executable (hex), verified before every run when set.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Cap on stdout bytes per run (default `checkers::external::DEFAULT_MAX_BYTES`).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// Cap on stdout lines (findings) per run (default `checkers::external::DEFAULT_MAX_LINES`).
    #[serde(default)]
    pub max_lines: Option<usize>,
}

impl ExternalConfig {
    /// Everything checkable about one entry without running it; `builtin` are the names it may not take.
    pub fn validate(&self, builtin: &[String]) -> Result<(), ConfigError> {
        let n = &self.name;
        checkers::registry::validate_name(n)
            .map_err(|e| ConfigError::Invalid(format!("external {n:?}: {e}")))?;
        if builtin.iter().any(|b| b == n) {
            return Err(ConfigError::Invalid(format!(
                "external {n:?}: that is the name of a built-in checker"
            )));
        }
        if self.version.is_empty()
            || self.version.len() > 64
            || self.version.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::Invalid(format!(
                "external {n:?}: version must be 1-64 characters without spaces"
            )));
        }
        if !self.path.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "external {n:?}: path {} must be absolute",
                self.path.display()
            )));
        }
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => {
                return Err(ConfigError::Invalid(format!(
                    "external {n:?}: {} is not an executable file",
                    self.path.display()
                )));
            }
            Err(e) => {
                return Err(ConfigError::Invalid(format!("external {n:?}: {}: {e}", self.path.display())));
            }
        }
        if Duration::from_secs(self.interval_s) < crate::scheduler::MIN_INTERVAL {
            return Err(ConfigError::Invalid(format!("external {n:?}: interval_s must be >= 1")));
        }
        if self.timeout_s == 0 || Duration::from_secs(self.timeout_s) > MAX_CHECKER_TIMEOUT {
            return Err(ConfigError::Invalid(format!(
                "external {n:?}: timeout_s must be within 1..={}",
                MAX_CHECKER_TIMEOUT.as_secs()
            )));
        }
        if self.kinds.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "external {n:?}: kinds must name at least one object kind"
            )));
        }
        self.kinds()?;
        if let Some(h) = &self.sha256
            && (h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(ConfigError::Invalid(format!("external {n:?}: sha256 must be 64 hex digits")));
        }
        if self.max_bytes.is_some_and(|b| b == 0 || b > MAX_EXTERNAL_OUTPUT_BYTES) {
            return Err(ConfigError::Invalid(format!(
                "external {n:?}: max_bytes must be within 1..={MAX_EXTERNAL_OUTPUT_BYTES}"
            )));
        }
        let max_lines = crate::scheduler::MAX_FINDINGS_PER_RUN;
        if self.max_lines.is_some_and(|l| l == 0 || l > max_lines) {
            return Err(ConfigError::Invalid(format!(
                "external {n:?}: max_lines must be within 1..={max_lines}"
            )));
        }
        Ok(())
    }

    /// The kinds, parsed; `checker` is refused (an external checker may not speak for checkers).
    pub fn kinds(&self) -> Result<Vec<state_machines::Kind>, ConfigError> {
        self.kinds
            .iter()
            .map(|k| match k.parse::<state_machines::Kind>() {
                Ok(state_machines::Kind::Checker) | Err(_) => Err(ConfigError::Invalid(format!(
                    "external {:?}: kind {k:?} is not one of disk, dimm, nic, machine",
                    self.name
                ))),
                Ok(kind) => Ok(kind),
            })
            .collect()
    }

    /// The runner's spec for this entry.
    pub fn spec(&self) -> checkers::external::ExternalSpec {
        let mut s = checkers::external::ExternalSpec::new(&self.name, &self.version, self.path.clone());
        s.args = self.args.clone();
        s.timeout = Duration::from_secs(self.timeout_s);
        s.sha256 = self.sha256.clone();
        if let Some(b) = self.max_bytes {
            s.max_bytes = b;
        }
        if let Some(l) = self.max_lines {
            s.max_lines = l;
        }
        s
    }
}

fn default_external_timeout() -> u64 {
    DEFAULT_EXTERNAL_TIMEOUT_S
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7790))
}
fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_profile() -> String {
    "online".into()
}
fn default_max_entries() -> u64 {
    crate::outbox::DEFAULT_MAX_ENTRIES
}
fn default_max_bytes() -> u64 {
    crate::outbox::DEFAULT_MAX_BYTES
}
fn default_batch() -> usize {
    500
}
fn default_heartbeat() -> u64 {
    5
}
fn default_backoff() -> u64 {
    30
}
fn default_true() -> bool {
    true
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|err| ConfigError::Io { path: path.into(), err })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.into() });
        }
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io { path: path.into(), err })?;
        let cfg: AgentConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), err: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The TLS material and token the reporter uses (files are read and checked here; errors name them).
    /// Insecure configs get none.
    pub fn client_security(&self) -> Result<proto::client::ClientSecurity, ConfigError> {
        if self.insecure {
            return Ok(proto::client::ClientSecurity::default());
        }
        let tls = match &self.tls {
            Some(files) => {
                Some(files.load().map_err(|e| ConfigError::Invalid(e.to_string()))?.client_config())
            }
            None => None,
        };
        let token = match &self.token_file {
            Some(path) => {
                let meta =
                    std::fs::metadata(path).map_err(|err| ConfigError::Io { path: path.clone(), err })?;
                if meta.len() > MAX_TOKEN_FILE_BYTES {
                    return Err(ConfigError::Invalid(format!(
                        "token_file {}: larger than {MAX_TOKEN_FILE_BYTES} bytes",
                        path.display()
                    )));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|err| ConfigError::Io { path: path.clone(), err })?;
                let t = text.trim();
                if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(ConfigError::Invalid(format!(
                        "token_file {}: expected one token on one line",
                        path.display()
                    )));
                }
                Some(proto::tls::Token::new(t))
            }
            None => None,
        };
        Ok(proto::client::ClientSecurity { tls, token })
    }

    /// Everything that can be checked without starting anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.version != CONFIG_VERSION {
            return bad(format!(
                "version {} is not supported (this build reads version {CONFIG_VERSION})",
                self.version
            ));
        }
        if let Some(h) = &self.host {
            state_machines::id::validate_host(h).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.masters.is_empty() {
            return bad("masters: at least one master address is needed".into());
        }
        for m in &self.masters {
            if m.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return bad(format!("masters: {m:?} is not HOST:PORT"));
            }
        }
        if !["online", "offline", "archive"].contains(&self.profile.as_str()) {
            return bad(format!("profile {:?}: expected online, offline or archive", self.profile));
        }
        if self.outbox.max_entries == 0 || self.outbox.max_bytes < 64 * 1024 {
            return bad("outbox: max_entries must be > 0 and max_bytes >= 65536".into());
        }
        if self.report.batch_max == 0 || self.report.batch_max > crate::reporter::MAX_BATCH_ENTRIES {
            return bad(format!(
                "report.batch_max must be within 1..={}",
                crate::reporter::MAX_BATCH_ENTRIES
            ));
        }
        if self.checker_user.is_empty()
            || self.checker_user.len() > 32
            || self.checker_user.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            return bad(format!(
                "checker_user {:?} must be a user name (1-32 characters, no ':' or spaces)",
                self.checker_user
            ));
        }
        if self.report.heartbeat_s == 0 || self.report.backoff_max_s == 0 {
            return bad("report.heartbeat_s and report.backoff_max_s must be > 0".into());
        }
        self.worker.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.net_probe.validate()?;
        self.predict.validate()?;
        let known = crate::run::known_checkers();
        if self.external.len() > MAX_EXTERNAL_CHECKERS {
            return bad(format!("external: more than {MAX_EXTERNAL_CHECKERS} external checkers"));
        }
        let mut names = std::collections::BTreeSet::new();
        // The net-probe checker is configured in `[net_probe]`, not `[checkers.*]`, but its name is taken.
        let mut taken = known.clone();
        taken.push(crate::netprobe::CHECKER_NAME.to_string());
        for e in &self.external {
            e.validate(&taken)?;
            if !names.insert(e.name.as_str()) {
                return bad(format!("external {:?}: listed twice", e.name));
            }
        }
        for (name, c) in &self.checkers {
            if !known.contains(name) {
                return bad(format!("checkers.{name}: unknown checker (known: {})", known.join(", ")));
            }
            if c.interval_s == Some(0) {
                return bad(format!("checkers.{name}.interval_s must be > 0"));
            }
            if let Some(t) = c.timeout_s
                && (t == 0 || Duration::from_secs(t) > MAX_CHECKER_TIMEOUT)
            {
                return bad(format!(
                    "checkers.{name}.timeout_s must be within 1..={}",
                    MAX_CHECKER_TIMEOUT.as_secs()
                ));
            }
        }
        crate::topology::validate(&crate::run::node_specs(self))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AgentConfig, String> {
        let cfg: AgentConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    const MIN: &str = "version = 1\ndata_dir = \"/tmp/x\"\nmasters = [\"127.0.0.1:7700\"]\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.http_listen.port(), 7790);
        assert_eq!(c.profile, "online");
        assert_eq!(c.report.batch_max, 500);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let cases = [
            ("version = 2\ndata_dir = \"/x\"\nmasters = [\"a:1\"]", "version 2"),
            ("version = 1\ndata_dir = \"/x\"\nmasters = []", "at least one master"),
            ("version = 1\ndata_dir = \"/x\"\nmasters = [\"nohost\"]", "HOST:PORT"),
            ("version = 1\ndata_dir = \"/x\"\nmasters = [\"a:1\"]\nbogus = 1", "unknown field"),
            ("version = 1\ndata_dir = \"/x\"\nmasters = [\"a:1\"]\nprofile = \"fast\"", "profile"),
            (
                "version = 1\ndata_dir = \"/x\"\nmasters = [\"a:1\"]\n[checkers.disk]\ntimeout_s = 0",
                "timeout_s",
            ),
            (
                "version = 1\ndata_dir = \"/x\"\nmasters = [\"a:1\"]\n[checkers.smrat]\nenabled = false",
                "unknown checker",
            ),
            ("version = 1\ndata_dir = \"/x\"\nmasters = [\"a:1\"]\nhost = \"bad host\"", "invalid host"),
            ("version = 1\ndata_dir = \"/x\"\nmasters = [\"a:1\"]\n[worker]\nbogus = 1", "unknown field"),
            (
                "version = 1\ndata_dir = \"/x\"\nmasters = [\"a:1\"]\n[worker.disk]\nbench_seconds = 0",
                "bench_seconds",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn checker_inputs_are_validated_as_a_graph() {
        let ok = format!("{MIN}[checkers.disk]\ninputs = []\n");
        assert_eq!(parse(&ok).unwrap().checkers["disk"].inputs, Some(vec![]));
        let cases = [
            ("[checkers.disk]\ninputs = [\"kernel-logg\"]", "\"kernel-logg\" is not a checker"),
            ("[checkers.nic]\ninputs = [\"kernel-log\"]", "takes no inputs"),
            ("[checkers.disk]\ninputs = [\"machine\"]\n[checkers.machine]\ninputs = [\"disk\"]", "cycle"),
        ];
        for (extra, want) in cases {
            let err = parse(&format!("{MIN}{extra}")).unwrap_err();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
    }

    #[test]
    fn predict_threshold_is_optional_and_checked() {
        assert_eq!(parse(MIN).unwrap().predict.threshold, None);
        let ok = parse(&format!("{MIN}[predict]\nthreshold = 0.25\n")).unwrap();
        assert_eq!(ok.predict.threshold, Some(0.25));
        for bad in ["0", "1", "-0.5", "1.5", "nan"] {
            let e = parse(&format!("{MIN}[predict]\nthreshold = {bad}\n")).unwrap_err().to_string();
            assert!(e.contains("threshold") || e.contains("predict"), "{bad}: {e}");
        }
        assert!(parse(&format!("{MIN}[predict]\nthreshhold = 0.5\n")).is_err(), "unknown keys refused");
    }

    #[test]
    fn net_probe_defaults_and_bad_values() {
        let c = parse(MIN).unwrap().net_probe;
        assert_eq!(c, NetProbeConfig::default());
        assert!(c.enabled);
        assert_eq!(c.listen, "0.0.0.0:7791".parse().unwrap());
        assert_eq!((c.window_s, c.peers_per_window, c.probes_per_peer), (10, 32, 5));
        assert_eq!((c.timeout_ms(), c.max_bytes_per_s, c.advertise), (500, 65536, None));
        let ok = parse(&format!(
            "{MIN}[net_probe]\nlisten = \"127.0.0.2:0\"\nadvertise = \"10.0.0.1:7791\"\nwindow_s = 2\n\
             timeout_ms = 200\n"
        ))
        .unwrap();
        assert_eq!(ok.net_probe.window_s, 2, "2 s windows (the fabric test's) fit 5 probes of 200 ms");
        // Without timeout_ms, a short window gets a timeout that fits it.
        let short =
            |extra: &str| parse(&format!("{MIN}[net_probe]\nwindow_s = 2\n{extra}")).map(|c| c.net_probe);
        assert_eq!(short("").unwrap().timeout_ms(), 200);
        assert_eq!(short("probes_per_peer = 10\n").unwrap().timeout_ms(), 100);
        assert_eq!(short("peers_per_window = 64\n").unwrap().timeout_ms(), 100, "two rounds");
        assert_eq!(parse(&format!("{MIN}[net_probe]\nwindow_s = 60\n")).unwrap().net_probe.timeout_ms(), 500);
        let one_peer = crate::netprobe::prober::peer_budget(5);
        let cases = [
            ("window_s = 0", "window_s must be within"),
            ("window_s = 3601", "window_s must be within"),
            ("peers_per_window = 0", "peers_per_window"),
            ("peers_per_window = 257", "peers_per_window"),
            ("probes_per_peer = 0", "probes_per_peer"),
            ("probes_per_peer = 4", "must be at least 5"),
            ("probes_per_peer = 65", "probes_per_peer"),
            ("timeout_ms = 0", "timeout_ms must be within"),
            ("timeout_ms = 10001", "timeout_ms must be within"),
            ("window_s = 1\ntimeout_ms = 1000", "shorter than the window"),
            ("window_s = 2\ntimeout_ms = 500", "more than the window (2 s)"),
            ("peers_per_window = 65\ntimeout_ms = 500", "3 round(s)"),
            ("max_bytes_per_s = 104857601", "at most"),
            (
                &*format!("window_s = 1\ntimeout_ms = 100\nmax_bytes_per_s = {}", one_peer - 1),
                "does not cover one peer",
            ),
            ("advertise = \"0.0.0.0:7791\"", "advertise"),
            ("advertise = \"10.0.0.1:0\"", "advertise"),
            ("listen = \"nonsense\"", "invalid socket address"),
            ("bogus = 1", "unknown field"),
        ];
        for (extra, want) in cases {
            let err = parse(&format!("{MIN}[net_probe]\n{extra}\n")).unwrap_err();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
        // At the budget's limit: exactly one peer per window is accepted.
        let at = format!("{MIN}[net_probe]\nwindow_s = 1\ntimeout_ms = 100\nmax_bytes_per_s = {one_peer}\n");
        assert_eq!(parse(&at).unwrap().net_probe.max_bytes_per_s, one_peer);
    }

    fn external(dir: &Path, name: &str, extra: &str) -> String {
        let exe = dir.join("x.sh");
        if !exe.exists() {
            std::fs::write(&exe, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        format!(
            "[[external]]\nname = \"{name}\"\nversion = \"1.0.0\"\npath = {:?}\ninterval_s = 60\nkinds = [\"disk\"]\n{extra}\n",
            exe.display().to_string()
        )
    }

    #[test]
    fn external_checkers_are_validated_at_start() {
        let d = tempfile::tempdir().unwrap();
        let good = parse(&format!(
            "{MIN}{}",
            external(d.path(), "raid", "sha256 = \"{}\"".replace("{}", &"ab".repeat(32)).as_str())
        ))
        .unwrap();
        assert_eq!(good.external[0].spec().timeout, Duration::from_secs(DEFAULT_EXTERNAL_TIMEOUT_S));
        let noexec = d.path().join("plain");
        std::fs::write(&noexec, "x").unwrap();
        let cases = [
            (external(d.path(), "disk", ""), "name of a built-in checker"),
            (external(d.path(), "net-probe", ""), "name of a built-in checker"),
            (external(d.path(), "bad name", ""), "unusable"),
            (external(d.path(), "r", "timeout_s = 0"), "timeout_s"),
            (external(d.path(), "r", "max_bytes = 0"), "max_bytes"),
            (external(d.path(), "r", "max_lines = 100000"), "max_lines"),
            (external(d.path(), "r", "sha256 = \"xyz\""), "sha256"),
            (external(d.path(), "r", "").replace("[\"disk\"]", "[\"checker\"]"), "kind \"checker\""),
            (external(d.path(), "r", "").replace("[\"disk\"]", "[]"), "at least one object kind"),
            (external(d.path(), "r", "").replace("interval_s = 60", "interval_s = 0"), "interval_s"),
            (external(d.path(), "r", "").replace("version = \"1.0.0\"", "version = \"\""), "version"),
            (external(d.path(), "r", "bogus = 1"), "unknown field"),
            (format!("{}{}", external(d.path(), "r", ""), external(d.path(), "r", "")), "listed twice"),
            (
                external(d.path(), "r", "").replace(&d.path().join("x.sh").display().to_string(), "rel/x.sh"),
                "must be absolute",
            ),
            (
                external(d.path(), "r", "")
                    .replace(&d.path().join("x.sh").display().to_string(), "/nonexistent/x"),
                "/nonexistent/x",
            ),
            (
                external(d.path(), "r", "")
                    .replace(&d.path().join("x.sh").display().to_string(), &noexec.display().to_string()),
                "not an executable file",
            ),
        ];
        for (extra, want) in cases {
            let err = parse(&format!("{MIN}{extra}")).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
        // At the limit, and one past it.
        let many = |n: usize| (0..n).map(|i| external(d.path(), &format!("c{i}"), "")).collect::<String>();
        assert_eq!(
            parse(&format!("{MIN}{}", many(MAX_EXTERNAL_CHECKERS))).unwrap().external.len(),
            MAX_EXTERNAL_CHECKERS
        );
        let err = parse(&format!("{MIN}{}", many(MAX_EXTERNAL_CHECKERS + 1))).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn token_file_and_tls_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "abc123\n").unwrap();
        let text = format!("{MIN}token_file = {:?}\n", tok.display().to_string());
        let sec = parse(&text).unwrap().client_security().unwrap();
        assert_eq!(sec.token.as_ref().map(|t| t.expose()), Some("abc123"));
        assert!(!format!("{sec:?}").contains("abc123"), "the token is never printed");
        std::fs::write(&tok, "a".repeat(MAX_TOKEN_FILE_BYTES as usize + 1)).unwrap();
        let e = parse(&text).unwrap().client_security().unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::write(&tok, "two words\n").unwrap();
        let e = parse(&text).unwrap().client_security().unwrap_err().to_string();
        assert!(e.contains("one token"), "{e}");
        let missing =
            format!("{MIN}[tls]\nca = \"/nope/ca.pem\"\ncert = \"/nope/a.pem\"\nkey = \"/nope/a.key\"\n");
        let e = parse(&missing).unwrap().client_security().unwrap_err().to_string();
        assert!(e.contains("/nope/ca.pem"), "{e}");
        let insecure = format!("insecure = true\n{missing}");
        assert!(parse(&insecure).unwrap().client_security().unwrap().tls.is_none());
    }

    #[test]
    fn shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let cfg = AgentConfig::load(&path).unwrap();
        assert!(!cfg.checkers.is_empty());
        assert!(!cfg.worker.disk.allow_destructive && cfg.worker.machine.reboot_dry_run, "shipped safe");
    }
}
