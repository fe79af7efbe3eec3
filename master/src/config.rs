//! The master process's configuration: from `huatuo master` flags or a TOML file (`--config F`), validated
//! before anything starts. Peers are the Raft peer addresses; the client API addresses each leader announces
//! through the replicated member table are `advertise_grpc` / `advertise_http`.
//!
//! Security is not optional: a master needs `[tls]` (mutual TLS on the gRPC and peer ports, HTTPS on the
//! HTTP port) and at least one `[[auth.tokens]]` entry, or an explicit `insecure = true` / `--insecure`
//! (tests and experiments). A config with neither is refused before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::sm_seam::Policy;
use proto::tls::TlsFiles;

pub const DEFAULT_GRPC_PORT: u16 = 7700;
pub const DEFAULT_PEER_PORT: u16 = 7710;
pub const DEFAULT_HTTP_PORT: u16 = 7780;
/// The config file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// `huatuo master --config F`: the same settings as the flags.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    #[serde(default = "one")]
    pub version: u32,
    pub id: u64,
    /// Raft peers: node id -> host:port of its peer port, this node included. TOML keys are strings.
    pub peers: BTreeMap<String, String>,
    #[serde(default = "default_grpc")]
    pub grpc: String,
    #[serde(default = "default_http")]
    pub http: String,
    /// Where the Raft peer service listens; default: the port of `peers[id]` on all interfaces.
    #[serde(default)]
    pub peer_listen: Option<String>,
    /// Addresses clients should use to reach this node's APIs (default: the listen addresses, with an
    /// unspecified host replaced by the host of `peers[id]`).
    #[serde(default)]
    pub advertise_grpc: Option<String>,
    #[serde(default)]
    pub advertise_http: Option<String>,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub join: bool,
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    #[serde(default = "default_election_ticks")]
    pub election_ticks: usize,
    /// The top (exclusive) of a range a follower's election timeout is drawn from at random, in ticks (the
    /// range starts a tick above `election_ticks`, the leader lease); 0 (default) = no range: each member's
    /// timeout is fixed by its rank among the members, a tick apart (`raft::ranked_election_ticks`: 1.1 s,
    /// 1.2 s, 1.3 s for 10 ticks of 100 ms and 3 members).
    #[serde(default)]
    pub max_election_ticks: usize,
    #[serde(default = "default_heartbeat_ticks")]
    pub heartbeat_ticks: usize,
    /// Compact the Raft log every this many applied entries (keeping those applied since the compaction
    /// before; no snapshot file is built for it: one is built when a follower needs it).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Also compact the Raft log once its applied part takes this many MiB (whichever of this and
    /// `snapshot_every` comes first); 0 = by entry count only.
    #[serde(default = "default_snapshot_log_mb")]
    pub snapshot_log_mb: u64,
    /// The NOSPACE alarm: refuse new writes while the data dir's file system has fewer MiB free than this
    /// (reads go on; cleared when space returns); 0 = off.
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// redb's page cache for this member's database, in MiB (default 256; redb's own default is 1024).
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    #[serde(default = "default_agent_silent_after_ms")]
    pub agent_silent_after_ms: u64,
    #[serde(default)]
    pub policy: Policy,
    /// Repair tickets: where REPAIR files them (`sink = "webhook" | "file" | "none"`), retries.
    #[serde(default)]
    pub tickets: crate::tickets::TicketsConfig,
    /// Run without TLS and without token checks (tests and experiments only; logs a loud warning).
    #[serde(default)]
    pub insecure: bool,
    /// Certificates: `ca` signs every master, agent and client certificate; `cert`/`key` are this master's
    /// server certificate (also its client certificate towards its peers).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Bearer tokens (hashed) and their roles.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Most watch streams this node serves at once (gRPC and REST together); one more is refused with
    /// RESOURCE_EXHAUSTED / HTTP 429. Default `api::watch::MAX_WATCHES`.
    #[serde(default = "default_max_watches")]
    pub max_watches: usize,
    /// Most heartbeat streams this node serves at once (one per agent); one more is refused with
    /// RESOURCE_EXHAUSTED and that agent beats one call at a time. 0: no streams. Default
    /// `api::heartbeats::MAX_HEARTBEAT_STREAMS`.
    #[serde(default = "default_max_heartbeat_streams")]
    pub max_heartbeat_streams: usize,
    /// Most ingest streams this node serves at once (one per agent sending findings; an idle one ends
    /// after 10 s, `api::heartbeats::INGEST_STREAM_IDLE`); one more is refused with RESOURCE_EXHAUSTED and that agent sends
    /// Ingest calls. 0: no streams. Default `api::heartbeats::MAX_INGEST_STREAMS`.
    #[serde(default = "default_max_ingest_streams")]
    pub max_ingest_streams: usize,
    /// A heartbeat or ingest stream ends cleanly after its first message past this age, and the agent
    /// opens another (its token is checked again then). Default 600,000 (10 minutes); at least 1,000.
    #[serde(default = "default_heartbeat_stream_max_age_ms")]
    pub heartbeat_stream_max_age_ms: u64,
    /// Serve heartbeat datagrams on the gRPC port number over UDP (`datagrams.rs`): a beat as one
    /// datagram each way, sealed with the agent token's key (default true). Off: agents beat over their
    /// streams, as before (a datagram gets no answer and its agent sends calls).
    #[serde(default = "default_heartbeat_datagrams")]
    pub heartbeat_datagrams: bool,
    /// Keep taking datagrams sealed with an agent token's key once the cluster holds a heartbeat secret
    /// (command version 12), for agents older than the per-agent keys (default false: such a datagram is
    /// answered CONFLICT and its agent sends a call, whose answer hands a current agent its own key). On,
    /// an agent token without its certificate can keep agents alive by datagram again.
    #[serde(default)]
    pub heartbeat_datagram_token_keys: bool,
    /// Play a binary that knows command versions up to this one only (1..=the binary's own): to rehearse a
    /// rolling upgrade, and in tests of the upgrade refusals. Default: what the binary knows.
    #[serde(default)]
    pub knows_command_version: Option<u32>,
    /// The leader raises `min_command_version` on its own once every member knows the newer command
    /// versions (default). Set false before a rolling upgrade you may want to roll back, then raise it
    /// with `huatuo upgrade` when satisfied.
    #[serde(default = "default_auto_upgrade")]
    pub auto_upgrade: bool,
    /// The checker catalog's automatic canary stop (`[canary]`: window_ms, ratio, fraction,
    /// max_failing_share; defaults 10 min, 3, 0.02, 0.10).
    #[serde(default)]
    pub canary: crate::catalog::CanaryConfig,
    /// Network localisation windows (`[net]`: window_s, clear_windows; issue 16).
    #[serde(default)]
    pub net: crate::net::NetSection,
    /// The fabric (`[topology] file = "PATH"`, TOML or CSV); none: from the machines' switch/rack labels.
    #[serde(default)]
    pub topology: crate::net::TopologySection,
    /// The member's archive for analytics (`[archive]`: days, max_mb; defaults 30, 1024; see `archive.rs`).
    #[serde(default)]
    pub archive: crate::archive::ArchiveConfig,
}

pub(crate) fn default_auto_upgrade() -> bool {
    true
}

fn default_max_watches() -> usize {
    crate::api::watch::MAX_WATCHES
}

fn default_max_heartbeat_streams() -> usize {
    crate::api::heartbeats::MAX_HEARTBEAT_STREAMS
}

fn default_max_ingest_streams() -> usize {
    crate::api::heartbeats::MAX_INGEST_STREAMS
}

fn default_heartbeat_datagrams() -> bool {
    true
}

fn default_heartbeat_stream_max_age_ms() -> u64 {
    crate::api::heartbeats::HEARTBEAT_STREAM_MAX_AGE.as_millis() as u64
}

/// How a master protects its ports.
#[derive(Debug, Clone, PartialEq)]
pub enum Security {
    /// `--insecure`: plain TCP, no token checks.
    Insecure,
    /// Mutual TLS on the gRPC and peer ports, HTTPS on the HTTP port, tokens on every API call.
    Secure { tls: TlsFiles, auth: AuthConfig },
}

/// The refusal when neither security nor `--insecure` is configured.
pub const NO_SECURITY: &str = "refusing to start without security: configure [tls] (ca, cert, key) and at \
least one [[auth.tokens]] entry (see deploy/master.example.toml; `huatuo dev` generates both), or pass \
--insecure for tests and experiments";

fn one() -> u32 {
    1
}
fn default_grpc() -> String {
    format!("0.0.0.0:{DEFAULT_GRPC_PORT}")
}
fn default_http() -> String {
    format!("0.0.0.0:{DEFAULT_HTTP_PORT}")
}
/// 100 ms ticks with 10-tick elections: a new leader within ~1-2 s of a crash (the failover target is 3 s).
fn default_tick_ms() -> u64 {
    100
}
fn default_election_ticks() -> usize {
    10
}
fn default_heartbeat_ticks() -> usize {
    2
}
/// Snapshot (and compact the Raft log) every 10,000 applied entries.
fn default_snapshot_every() -> u64 {
    10_000
}
fn default_snapshot_log_mb() -> u64 {
    crate::raft::DEFAULT_SNAPSHOT_LOG_BYTES >> 20
}
/// Largest redb cache accepted: 64 GiB, more memory than a master machine would give one process.
const MAX_CACHE_MB: u64 = 64 << 10;
fn default_cache_mb() -> u64 {
    (crate::raft::DEFAULT_CACHE_BYTES >> 20) as u64
}
fn default_min_free_mb() -> u64 {
    crate::raft::DEFAULT_MIN_FREE_BYTES >> 20
}
/// Agents heartbeat every few seconds; 30 s of silence marks one silent.
pub(crate) fn default_agent_silent_after_ms() -> u64 {
    30_000
}

/// `value` of setting `what` within `min..=max`, else the refusal naming it.
fn in_range(what: &'static str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::OutOfRange { what, value: value as u64, min: min as u64, max: max as u64, why: "" })
}

/// Why a master config is refused; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid master config: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid master config: version {found} (this build reads {reads})")]
    Version { found: u32, reads: u32 },
    /// A `--peers` / `[peers]` entry (the message says which and why).
    #[error("invalid master config: {0}")]
    Peer(String),
    #[error("invalid master config: {0}")]
    Canary(String),
    #[error("invalid master config: {0}")]
    Archive(String),
    #[error("invalid master config: {what} {value:?} is not an IP:PORT address")]
    Address { what: &'static str, value: String },
    #[error(
        "invalid master config: need tick_ms > 0, 0 < heartbeat_ticks < election_ticks, and max_election_ticks \
         0 (the default) or above election_ticks + 1"
    )]
    Ticks,
    #[error("invalid master config: {what} {mib} MiB is too large")]
    TooLarge { what: &'static str, mib: u64 },
    /// A number outside the range the node accepts.
    #[error("invalid master config: {what} {value} must be {min}..={max}{why}")]
    OutOfRange { what: &'static str, value: u64, min: u64, max: u64, why: &'static str },
    #[error("invalid master config: {0}")]
    Policy(#[from] state_machines::PolicyError),
    #[error("invalid master config: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error("invalid master config: {NO_SECURITY}")]
    NoSecurity,
    #[error("invalid master config: {0}")]
    Net(crate::net::NetConfigError),
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: u64,
    pub peers: BTreeMap<u64, String>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub advertise_grpc: String,
    pub advertise_http: String,
    pub data_dir: PathBuf,
    pub join: bool,
    pub tick: Duration,
    pub election_ticks: usize,
    pub max_election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_every: u64,
    pub storage: crate::raft::StorageLimits,
    pub agent_silent_after: Duration,
    pub policy: Policy,
    pub tickets: crate::tickets::TicketsConfig,
    pub security: Security,
    pub max_watches: usize,
    pub max_heartbeat_streams: usize,
    pub max_ingest_streams: usize,
    pub heartbeat_stream_max_age: Duration,
    pub heartbeat_datagrams: bool,
    pub heartbeat_datagram_token_keys: bool,
    /// The newest command version this node knows (decodes, applies, reports to its peers).
    pub knows_command_version: u32,
    pub auto_upgrade: bool,
    pub canary: crate::catalog::CanaryConfig,
    pub net: crate::net::NetConfig,
    pub archive: crate::archive::ArchiveConfig,
}

/// Parse `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| ConfigError::Peer(format!("peer {p:?} is not ID=HOST:PORT")))
        })
        .collect()
}

fn addr(what: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| ConfigError::Address { what, value: s.to_string() })
}

fn advertise(listen: SocketAddr, own_peer: &str) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = own_peer.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
    format!("{host}:{}", listen.port())
}

impl MasterConfig {
    pub fn from_toml(text: &str) -> Result<MasterConfig, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::Version { found: self.version, reads: CONFIG_VERSION });
        }
        self.canary.validate().map_err(ConfigError::Canary)?;
        self.archive.validate().map_err(ConfigError::Archive)?;
        let net = crate::net::NetConfig::resolve(&self.net, &self.topology).map_err(ConfigError::Net)?;
        let mut peers = BTreeMap::new();
        for (k, v) in &self.peers {
            let id: u64 =
                k.parse().map_err(|_| ConfigError::Peer(format!("peer id {k:?} is not a number")))?;
            if id == 0 {
                return Err(ConfigError::Peer("peer id 0 is reserved".into()));
            }
            if !v.contains(':') {
                return Err(ConfigError::Peer(format!("peer {id} address {v:?} is not HOST:PORT")));
            }
            peers.insert(id, v.clone());
        }
        let own = peers
            .get(&self.id)
            .ok_or_else(|| ConfigError::Peer(format!("--peers must include this node's id {}", self.id)))?
            .clone();
        let peer_listen = match &self.peer_listen {
            Some(a) => addr("peer listen address", a)?,
            None => {
                let port = own.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
                let port =
                    port.ok_or_else(|| ConfigError::Peer(format!("peer address {own:?} has no port")))?;
                SocketAddr::from(([0, 0, 0, 0], port))
            }
        };
        let grpc_listen = addr("gRPC address", &self.grpc)?;
        let http_listen = addr("HTTP address", &self.http)?;
        if self.election_ticks <= self.heartbeat_ticks
            || self.heartbeat_ticks == 0
            || self.tick_ms == 0
            || (self.max_election_ticks != 0
                && self.max_election_ticks <= crate::raft::min_election_ticks(self.election_ticks))
        {
            return Err(ConfigError::Ticks);
        }
        let mib =
            |what: &'static str, v: u64| v.checked_mul(1 << 20).ok_or(ConfigError::TooLarge { what, mib: v });
        let storage = crate::raft::StorageLimits {
            snapshot_log_bytes: mib("snapshot_log_mb", self.snapshot_log_mb)?,
            min_free_bytes: mib("min_free_mb", self.min_free_mb)?,
            cache_bytes: {
                let (min, max) = ((crate::raft::MIN_CACHE_BYTES >> 20) as u64, MAX_CACHE_MB);
                if !(min..=max).contains(&self.cache_mb) {
                    return Err(ConfigError::OutOfRange {
                        what: "cache_mb",
                        value: self.cache_mb,
                        min,
                        max,
                        why: " (redb's page cache of this member's database)",
                    });
                }
                (self.cache_mb << 20) as usize
            },
        };
        self.policy.validate()?;
        self.auth.validate()?;
        in_range("max_watches", self.max_watches, 1, crate::api::watch::MAX_WATCHES_CEILING)?;
        in_range(
            "max_heartbeat_streams",
            self.max_heartbeat_streams,
            0,
            crate::api::heartbeats::MAX_HEARTBEAT_STREAMS_CEILING,
        )?;
        in_range(
            "max_ingest_streams",
            self.max_ingest_streams,
            0,
            crate::api::heartbeats::MAX_HEARTBEAT_STREAMS_CEILING,
        )?;
        let knows = crate::model::COMMAND_VERSION;
        let knows_command_version = match self.knows_command_version {
            None => knows,
            Some(v) if (1..=knows).contains(&v) => v,
            Some(v) => {
                return Err(ConfigError::OutOfRange {
                    what: "knows_command_version",
                    value: u64::from(v),
                    min: 1,
                    max: u64::from(knows),
                    why: " (what this binary knows)",
                });
            }
        };
        let security = match (&self.tls, self.insecure) {
            (_, true) => Security::Insecure,
            (Some(tls), false) if !self.auth.tokens.is_empty() => {
                Security::Secure { tls: tls.clone(), auth: self.auth.clone() }
            }
            _ => return Err(ConfigError::NoSecurity),
        };
        Ok(Resolved {
            security,
            id: self.id,
            advertise_grpc: self.advertise_grpc.clone().unwrap_or_else(|| advertise(grpc_listen, &own)),
            advertise_http: self.advertise_http.clone().unwrap_or_else(|| advertise(http_listen, &own)),
            peers,
            grpc_listen,
            http_listen,
            peer_listen,
            data_dir: self.data_dir.clone(),
            join: self.join,
            tick: Duration::from_millis(self.tick_ms),
            election_ticks: self.election_ticks,
            max_election_ticks: self.max_election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            snapshot_every: self.snapshot_every,
            storage,
            agent_silent_after: Duration::from_millis(self.agent_silent_after_ms.max(1000)),
            policy: self.policy.clone(),
            tickets: self.tickets.clone(),
            max_watches: self.max_watches,
            max_heartbeat_streams: self.max_heartbeat_streams,
            max_ingest_streams: self.max_ingest_streams,
            heartbeat_stream_max_age: Duration::from_millis(self.heartbeat_stream_max_age_ms.max(1000)),
            heartbeat_datagrams: self.heartbeat_datagrams,
            heartbeat_datagram_token_keys: self.heartbeat_datagram_token_keys,
            knows_command_version,
            auto_upgrade: self.auto_upgrade,
            canary: self.canary.clone(),
            net,
            archive: self.archive.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../testdata/master.toml");
        let cfg = MasterConfig::from_toml(text).expect("parse");
        let r = cfg.resolve().expect("valid");
        assert_eq!(r.id, 1);
        assert_eq!(r.peers.len(), 3);
        assert_eq!(r.peer_listen.port(), DEFAULT_PEER_PORT);
        assert_eq!(r.advertise_grpc, "10.0.0.1:7700");
        assert!(matches!(r.security, Security::Secure { .. }), "the example is a secure config");
        let shipped = include_str!("../../deploy/master.example.toml");
        let r = MasterConfig::from_toml(shipped).and_then(|c| c.resolve()).expect("deploy example is valid");
        assert!(matches!(r.security, Security::Secure { ref auth, .. } if auth.tokens.len() == 2));
    }

    #[test]
    fn security_is_required_unless_insecure() {
        let base = "id = 1\ndata_dir = \"/tmp/x\"\n[peers]\n1 = \"127.0.0.1:7710\"\n";
        let e = MasterConfig::from_toml(base).expect("parse").resolve().expect_err("no security");
        assert!(e.to_string().contains("refusing to start without security"), "{e}");
        let tls = "[tls]\nca = \"/c/ca.pem\"\ncert = \"/c/m.pem\"\nkey = \"/c/m.key\"\n";
        let e = MasterConfig::from_toml(&format!("{base}{tls}"))
            .expect("parse")
            .resolve()
            .expect_err("no tokens");
        assert!(e.to_string().contains("[[auth.tokens]]"), "{e}");
        let token = format!(
            "[[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"operator\"]\n",
            proto::tls::sha256_hex(b"t")
        );
        let r =
            MasterConfig::from_toml(&format!("{base}{tls}{token}")).expect("parse").resolve().expect("ok");
        assert!(matches!(r.security, Security::Secure { .. }));
        assert!(!format!("{r:?}").contains(&proto::tls::sha256_hex(b"t")), "hashes are not printed");
        let r = MasterConfig::from_toml(&format!("insecure = true\n{base}")).expect("parse").resolve();
        assert_eq!(r.expect("insecure").security, Security::Insecure);
        let bad = format!("{base}{tls}[[auth.tokens]]\nname = \"x\"\nsha256 = \"zz\"\nroles = [\"read\"]\n");
        let e = MasterConfig::from_toml(&bad).expect("parse").resolve().expect_err("bad hash");
        assert!(e.to_string().contains("64 hex"), "{e}");
    }

    #[test]
    fn rejects_bad_configs() {
        let base = "insecure = true\nid = 1\ndata_dir = \"/tmp/x\"\n[peers]\n1 = \"127.0.0.1:7710\"\n";
        assert!(MasterConfig::from_toml(base).expect("parse").resolve().is_ok());
        for (bad, want) in [
            ("id = 2\ndata_dir = \"/x\"\n[peers]\n1 = \"127.0.0.1:7710\"\n", "include this node"),
            ("id = 1\ndata_dir = \"/x\"\n[peers]\nx = \"127.0.0.1:7710\"\n", "not a number"),
            (
                "id = 1\ndata_dir = \"/x\"\ngrpc = \"nope\"\n[peers]\n1 = \"127.0.0.1:7710\"\n",
                "not an IP:PORT",
            ),
            ("version = 2\nid = 1\ndata_dir = \"/x\"\n[peers]\n1 = \"h:1\"\n", "version"),
        ] {
            let err = MasterConfig::from_toml(bad).and_then(|c| c.resolve()).expect_err(bad);
            assert!(err.to_string().contains(want), "{bad}: {err}");
        }
        assert!(MasterConfig::from_toml("id = 1\nbogus = 1\n").is_err(), "unknown fields are refused");
        let r = MasterConfig::from_toml(base).expect("parse").resolve().expect("defaults");
        assert_eq!(r.storage, crate::raft::StorageLimits::default());
        assert_eq!((r.election_ticks, r.max_election_ticks), (10, 0), "0: timeouts fixed by rank");
        assert_eq!(crate::raft::ranked_election_ticks(10, 0), (11, 12), "the lowest member: 1.1 s");
        assert_eq!(crate::raft::ranked_election_ticks(10, 2), (13, 14), "the third: 1.3 s");
        let r =
            MasterConfig::from_toml(&format!("max_election_ticks = 20\n{base}")).expect("parse").resolve();
        assert_eq!(r.expect("raft-rs's old default").max_election_ticks, 20);
        for bad in
            ["max_election_ticks = 11", "max_election_ticks = 5", "election_ticks = 2\nheartbeat_ticks = 2"]
        {
            let e =
                MasterConfig::from_toml(&format!("{bad}\n{base}")).expect("parse").resolve().expect_err(bad);
            assert!(e.to_string().contains("max_election_ticks"), "{bad}: {e}");
        }
        let r = MasterConfig::from_toml(&format!("snapshot_log_mb = 8\nmin_free_mb = 0\n{base}"))
            .expect("parse")
            .resolve()
            .expect("storage limits");
        assert_eq!((r.storage.snapshot_log_bytes, r.storage.min_free_bytes), (8 << 20, 0));
        let e = MasterConfig::from_toml(&format!("min_free_mb = {}\n{base}", u64::MAX))
            .expect("parse")
            .resolve()
            .expect_err("overflow");
        assert!(e.to_string().contains("min_free_mb"), "{e}");
        // Heartbeat streams: 0 turns them off, past the ceiling is refused naming the setting; the age has
        // a floor of a second.
        let r = MasterConfig::from_toml(base).expect("parse").resolve().expect("defaults");
        assert_eq!(r.max_heartbeat_streams, crate::api::heartbeats::MAX_HEARTBEAT_STREAMS);
        assert_eq!(r.max_ingest_streams, crate::api::heartbeats::MAX_INGEST_STREAMS);
        assert_eq!(r.heartbeat_stream_max_age, crate::api::heartbeats::HEARTBEAT_STREAM_MAX_AGE);
        let r = MasterConfig::from_toml(&format!(
            "max_heartbeat_streams = 0
max_ingest_streams = 0
heartbeat_stream_max_age_ms = 5
{base}"
        ))
        .expect("parse")
        .resolve()
        .expect("no streams");
        assert_eq!(
            (r.max_heartbeat_streams, r.max_ingest_streams, r.heartbeat_stream_max_age),
            (0, 0, Duration::from_secs(1))
        );
        let too_many = crate::api::heartbeats::MAX_HEARTBEAT_STREAMS_CEILING + 1;
        for setting in ["max_heartbeat_streams", "max_ingest_streams"] {
            let e = MasterConfig::from_toml(&format!(
                "{setting} = {too_many}
{base}"
            ))
            .expect("parse")
            .resolve()
            .expect_err("over the ceiling");
            assert!(e.to_string().contains(setting), "{e}");
        }
        let r =
            MasterConfig::from_toml(&format!("cache_mb = 64\n{base}")).expect("parse").resolve().expect("ok");
        assert_eq!(r.storage.cache_bytes, 64 << 20);
        for bad in [0, 7, (64 << 10) + 1, u64::MAX] {
            let e = MasterConfig::from_toml(&format!("cache_mb = {bad}\n{base}"))
                .expect("parse")
                .resolve()
                .expect_err("out of range");
            assert!(e.to_string().contains("cache_mb") && e.to_string().contains("8..=65536"), "{e}");
        }
        assert_eq!(parse_peers("1=a:1, 2=b:2").expect("ok").len(), 2);
        assert!(parse_peers("1a:1").is_err());
    }
}
