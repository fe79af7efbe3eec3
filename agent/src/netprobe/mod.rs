//! The agent's side of network fault localisation (PRODUCT.md section 8, issue 16): the probe responder
//! and the `net-probe` built-in checker (the prober), and the state they share with the reporter.
//!
//! Data flow: the master's heartbeat reply hands out a sample of peers (`HeartbeatResponse.peers`) ->
//! [`NetProbe::set_peers`] keeps the latest sample -> every window the prober picks the peers probed
//! longest ago, probes them over TCP (connect + small request/response probes to their responders), reads
//! the host's TCP counters, votes by `netvote::local::votes` and queues one `NetReport` ->
//! the reporter sends the queued reports (at most [`MAX_NET_REPORTS_PER_HEARTBEAT`]) and this agent's
//! `probe_addr` with every heartbeat, and removes the reports only once a heartbeat carrying them was
//! answered (the master counts each (agent, started_ms, window_seq) once, so a resend is harmless).
//!
//! Both the responder and the prober are tasks on the agent's tokio runtime (no thread of their own, no
//! task per peer: the prober runs its peers' probes as futures of its one task, at most
//! `prober::PROBE_CONCURRENCY` at a time). The responder spawns one small task per open connection,
//! bounded by `responder::MAX_CONNECTIONS`.

pub mod prober;
pub mod responder;
pub mod stats;
pub mod trace;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use proto::api;
use tokio::sync::watch;

use crate::config::NetProbeConfig;
use crate::local::LocalState;

/// The checker's name (the `checkers` map and `runs` of the heartbeat).
pub const CHECKER_NAME: &str = "net-probe";
/// The checker's version: bump it when what a window measures or how it votes changes.
pub const CHECKER_VERSION: &str = "1.0.0";
/// Reports queued for the next heartbeat (api.proto): a master out of reach for longer loses the oldest
/// windows, which are stale for localisation anyway; the drops are counted.
pub const MAX_NET_REPORTS_PER_HEARTBEAT: usize = 4;
/// Peers kept from one heartbeat reply (the master sends at most 64): a reply with more is cut here.
pub const MAX_PEERS_KEPT: usize = 256;
/// Longest host name or topology label taken from a reply (a host name is at most 253 characters).
pub const MAX_PEER_FIELD: usize = 253;

/// A peer to probe, from a heartbeat reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub addr: SocketAddr,
    pub tor: String,
}

#[derive(Default)]
struct Inner {
    peers: Vec<Peer>,
    pending: VecDeque<api::NetReport>,
    probe_addr: String,
    run: api::CheckerRun,
}

/// What the prober, the responder and the reporter share.
pub struct NetProbe {
    inner: Mutex<Inner>,
}

impl NetProbe {
    pub fn new() -> Arc<NetProbe> {
        let run = api::CheckerRun {
            name: CHECKER_NAME.into(),
            version: CHECKER_VERSION.into(),
            status: "running".into(),
            ..Default::default()
        };
        Arc::new(NetProbe { inner: Mutex::new(Inner { run, ..Default::default() }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take the peers of a heartbeat reply (replacing the previous sample). Entries with an address that is
    /// not IP:PORT, an empty or over-long host, or beyond [`MAX_PEERS_KEPT`] are left out; returns how many
    /// were kept.
    pub fn set_peers(&self, wire: &[api::ProbePeer]) -> usize {
        let peers: Vec<Peer> = wire
            .iter()
            .filter(|p| !p.host.is_empty() && p.host.len() <= MAX_PEER_FIELD && p.tor.len() <= MAX_PEER_FIELD)
            .filter_map(|p| {
                let addr: SocketAddr = p.addr.parse().ok()?;
                (addr.port() != 0 && !addr.ip().is_unspecified()).then(|| Peer {
                    host: p.host.clone(),
                    addr,
                    tor: p.tor.clone(),
                })
            })
            .take(MAX_PEERS_KEPT)
            .collect();
        let n = peers.len();
        self.lock().peers = peers;
        n
    }

    /// The latest sample.
    pub fn peers(&self) -> Vec<Peer> {
        self.lock().peers.clone()
    }

    /// Queue a closed window's report; returns whether the oldest queued one was dropped to make room.
    pub fn push(&self, report: api::NetReport) -> bool {
        let mut inner = self.lock();
        let dropped = inner.pending.len() >= MAX_NET_REPORTS_PER_HEARTBEAT;
        if dropped {
            inner.pending.pop_front();
        }
        inner.pending.push_back(report);
        dropped
    }

    /// The reports the next heartbeat carries, oldest first.
    pub fn pending(&self) -> Vec<api::NetReport> {
        self.lock().pending.iter().cloned().collect()
    }

    /// A heartbeat carrying these reports was answered: they are delivered.
    pub fn delivered(&self, sent: &[api::NetReport]) {
        self.lock().pending.retain(|r| !sent.iter().any(|s| s.window_seq == r.window_seq));
    }

    /// Where this agent answers probes (empty: it does not).
    pub fn probe_addr(&self) -> String {
        self.lock().probe_addr.clone()
    }

    pub fn set_probe_addr(&self, addr: String) {
        self.lock().probe_addr = addr;
    }

    /// The checker's row of the heartbeat's `runs`.
    pub fn run_wire(&self) -> api::CheckerRun {
        self.lock().run.clone()
    }

    /// Update the checker's row.
    pub fn record(&self, f: impl FnOnce(&mut api::CheckerRun)) {
        f(&mut self.lock().run);
    }
}

/// Resolves when `stop` turns true or its sender is gone (which is a stop too); holds no guard.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    if let Ok(r) = stop.wait_for(|s| *s).await {
        drop(r);
    }
}

/// Where the agent tells the master it answers probes when `advertise` is not set: the listen address
/// when it names an IP, else the local IP the kernel routes the first resolvable master address from
/// (a UDP socket is connected to it, which sends nothing, and its local address read) with the bound
/// port. On one-interface hosts that is the interface peers reach this host by; multi-homed hosts whose
/// probe network differs from the management network set `advertise`.
pub async fn default_advertise(bound: SocketAddr, masters: &[String]) -> Option<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    for m in masters {
        let Ok(mut addrs) = tokio::net::lookup_host(m.clone()).await else { continue };
        let Some(target) = addrs.next() else { continue };
        let any: SocketAddr = if target.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(any).await else { continue };
        if sock.connect(target).await.is_err() {
            continue;
        }
        if let Ok(local) = sock.local_addr()
            && !local.ip().is_unspecified()
        {
            return Some(SocketAddr::new(local.ip(), bound.port()));
        }
    }
    None
}

/// Bind the responder and start the responder and prober tasks in `tasks` (they stop with `stop`).
/// A probe port that cannot be bound is not fatal: the agent keeps its other duties and still probes,
/// the checker's row says `failed` with the reason, and no `probe_addr` is sent (the master hands out
/// only peers that answer).
pub async fn start(
    cfg: &NetProbeConfig,
    host: &str,
    masters: &[String],
    root: PathBuf,
    local: Arc<LocalState>,
    stop: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Arc<NetProbe> {
    let shared = NetProbe::new();
    let mut advertise = None;
    match responder::Responder::bind(cfg.listen).await {
        Ok(r) => {
            let bound = r.local_addr().unwrap_or(cfg.listen);
            tracing::info!(listen = %bound, "probe responder listening");
            advertise = Some(match cfg.advertise {
                Some(a) => Advertise::Fixed(a),
                None => Advertise::Derive(bound),
            });
            tasks.spawn(r.run(stop.clone()));
        }
        Err(e) => {
            let msg = format!("probe responder: binding {}: {e}", cfg.listen);
            tracing::error!("{msg}; this host answers no probes");
            shared.record(|r| {
                r.status = "failed".into();
                r.last_error = msg;
            });
        }
    }
    let settings = prober::Settings::from_config(cfg);
    let prober = prober::Prober::new(
        settings,
        host.to_string(),
        root,
        Arc::clone(&shared),
        local,
        advertise,
        masters.to_vec(),
    );
    tasks.spawn(prober.run(stop));
    shared
}

/// How the prober learns the `probe_addr` to send.
#[derive(Debug, Clone, Copy)]
pub enum Advertise {
    /// `[net_probe] advertise`.
    Fixed(SocketAddr),
    /// From the bound listen address ([`default_advertise`]), retried each window until it resolves.
    Derive(SocketAddr),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(host: &str, addr: &str) -> api::ProbePeer {
        api::ProbePeer { host: host.into(), addr: addr.into(), tor: "tor1".into() }
    }

    #[test]
    fn peers_from_a_reply_are_checked_and_bounded() {
        let np = NetProbe::new();
        let n = np.set_peers(&[
            wire("h1", "10.0.0.1:7791"),
            wire("", "10.0.0.2:7791"),
            wire("h3", "not an address"),
            wire("h4", "10.0.0.4:0"),
            wire("h5", "0.0.0.0:7791"),
            wire(&"x".repeat(MAX_PEER_FIELD + 1), "10.0.0.6:7791"),
            wire("h7", "[fd00::7]:7791"),
        ]);
        assert_eq!(n, 2);
        let hosts: Vec<String> = np.peers().into_iter().map(|p| p.host).collect();
        assert_eq!(hosts, ["h1", "h7"]);
        let many: Vec<api::ProbePeer> =
            (0..MAX_PEERS_KEPT + 5).map(|i| wire(&format!("h{i}"), "10.0.0.1:7791")).collect();
        assert_eq!(np.set_peers(&many), MAX_PEERS_KEPT);
        assert_eq!(np.set_peers(&[]), 0, "an empty reply empties the sample");
    }

    #[test]
    fn pending_reports_are_bounded_and_removed_only_when_delivered() {
        let np = NetProbe::new();
        let report = |seq| api::NetReport { window_seq: seq, ..Default::default() };
        for seq in 1..=MAX_NET_REPORTS_PER_HEARTBEAT as u64 {
            assert!(!np.push(report(seq)));
        }
        assert!(np.push(report(5)), "at the limit the oldest is dropped");
        let sent = np.pending();
        assert_eq!(sent.iter().map(|r| r.window_seq).collect::<Vec<_>>(), [2, 3, 4, 5]);
        np.push(report(6)); // closed while the heartbeat was in flight: drops 2, stays queued
        np.delivered(&sent);
        assert_eq!(np.pending().iter().map(|r| r.window_seq).collect::<Vec<_>>(), [6]);
    }

    #[tokio::test]
    async fn the_default_advertise_address_is_the_route_to_the_master() {
        let any = SocketAddr::from(([0, 0, 0, 0], 7791));
        // Nothing is bound or sent: a connected UDP socket only asks the kernel for the route.
        let got = default_advertise(any, &["bad".into(), "127.0.0.1:9".into()]).await;
        assert_eq!(got, Some(SocketAddr::from(([127, 0, 0, 1], 7791))));
        let fixed = SocketAddr::from(([127, 0, 0, 3], 4000));
        assert_eq!(default_advertise(fixed, &[]).await, Some(fixed), "a listen IP is advertised as is");
        assert_eq!(default_advertise(any, &[]).await, None, "no master to route to: unknown");
    }
}
