//! The `net-probe` built-in checker: every window it probes a rotating choice of the peers the master
//! handed out, measures loss, failed connects and RTT per peer, reads the host's TCP retransmissions, votes
//! by the local rule (`netvote::local::votes`) and queues one `NetReport` for the next heartbeat.
//!
//! A probe is one 16-byte request answered by the peer's responder (`responder.rs`) on a TCP connection
//! opened for the peer's probes; a probe whose connect fails or times out, or whose answer does not come
//! within `timeout_ms`, is lost (and the connection is dropped: the next probe connects again, so a lossy
//! path shows as lost SYNs as well as lost data). The round trip is timed from the request's write to
//! the answer's last byte.
//!
//! Traffic is bounded by `max_bytes_per_s`: each window may spend `max_bytes_per_s * window_s` bytes,
//! counted on the wire as the prober sends them ([`CONNECT_WIRE_BYTES`] per connect, [`PROBE_WIRE_BYTES`]
//! per probe). Before a peer is started its worst case (a connect per probe) is reserved, so a window never
//! exceeds the budget; when the budget does not cover `peers_per_window`, fewer peers are probed and the
//! report's `probe_bytes` shows what was spent (`huatuo_agent_net_peers_skipped` counts the rest).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use proto::api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::responder::{self, PROBE_LEN};
use super::stats::{self, PeerWindow};
use super::{Advertise, CHECKER_VERSION, NetProbe, Peer};
use crate::config::NetProbeConfig;
use crate::local::LocalState;

/// Peers probed at once within a window, as futures of the prober's one task. The default
/// `peers_per_window` (32) fits in one round, so a window of the defaults takes about one peer's probes
/// even when peers time out.
pub const PROBE_CONCURRENCY: usize = 32;
/// Bytes one TCP segment without payload costs on the wire (Ethernet 14 + IPv4 20 + TCP with timestamps 32).
pub const SEGMENT_WIRE_BYTES: u64 = 66;
/// What a connect and its close cost the prober in sent bytes: SYN, ACK, FIN, last ACK.
pub const CONNECT_WIRE_BYTES: u64 = 4 * SEGMENT_WIRE_BYTES;
/// What one probe costs the prober in sent bytes: the request's segment and the ACK of the answer.
pub const PROBE_WIRE_BYTES: u64 = 2 * SEGMENT_WIRE_BYTES + PROBE_LEN as u64;
/// Most peers in one report (api.proto: at most 256 per `NetReport`).
pub const MAX_PEERS_PER_WINDOW: usize = 256;

/// The worst-case cost of probing one peer: every probe on a new connection.
pub fn peer_budget(probes_per_peer: u32) -> u64 {
    u64::from(probes_per_peer) * (CONNECT_WIRE_BYTES + PROBE_WIRE_BYTES)
}

/// The prober's parameters, from `[net_probe]` (validated by the config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub window: Duration,
    pub peers_per_window: usize,
    pub probes_per_peer: u32,
    pub timeout: Duration,
    /// Bytes one window may spend (`max_bytes_per_s * window_s`).
    pub budget: u64,
}

impl Settings {
    pub fn from_config(c: &NetProbeConfig) -> Settings {
        Settings {
            window: Duration::from_secs(c.window_s),
            peers_per_window: c.peers_per_window,
            probes_per_peer: c.probes_per_peer,
            timeout: Duration::from_millis(c.timeout_ms),
            budget: c.max_bytes_per_s.saturating_mul(c.window_s),
        }
    }

    /// How many peers one window probes: `peers_per_window`, the sample and the budget permitting.
    pub fn peers_this_window(&self, available: usize) -> usize {
        let affordable = (self.budget / peer_budget(self.probes_per_peer).max(1)) as usize;
        self.peers_per_window.min(available).min(affordable).min(MAX_PEERS_PER_WINDOW)
    }
}

/// The prober: one task, one window after another.
pub struct Prober {
    s: Settings,
    host: String,
    root: PathBuf,
    shared: Arc<NetProbe>,
    local: Arc<LocalState>,
    advertise: Option<Advertise>,
    masters: Vec<String>,
    /// Host -> the window it was last probed in (the rotation's memory).
    last_probed: BTreeMap<String, u64>,
    window_seq: u64,
    /// Per-peer counters, reused window after window.
    windows: Vec<PeerWindow>,
    /// The next probe's sequence number.
    seq: AtomicU64,
}

/// One closed window, before it becomes a `NetReport`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Closed {
    pub peers: Vec<(Peer, netvote::PeerResult)>,
    pub probe_bytes: u64,
    pub skipped: usize,
}

impl Prober {
    pub fn new(
        s: Settings,
        host: String,
        root: PathBuf,
        shared: Arc<NetProbe>,
        local: Arc<LocalState>,
        advertise: Option<Advertise>,
        masters: Vec<String>,
    ) -> Prober {
        Prober {
            s,
            host,
            root,
            shared,
            local,
            advertise,
            masters,
            last_probed: BTreeMap::new(),
            window_seq: 0,
            windows: Vec::new(),
            seq: AtomicU64::new(1),
        }
    }

    /// Probe window after window until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut before = self.counters();
        loop {
            self.resolve_advertise().await;
            let deadline = Instant::now() + self.s.window;
            let closed = tokio::select! {
                c = self.probe_window(deadline) => c,
                _ = super::stopped(&mut stop) => return,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = super::stopped(&mut stop) => return,
            }
            let after = self.counters();
            self.close(closed, before.as_ref(), after.as_ref());
            before = after;
        }
    }

    async fn resolve_advertise(&mut self) {
        let addr = match self.advertise {
            None => return,
            Some(Advertise::Fixed(a)) => Some(a),
            Some(Advertise::Derive(bound)) => super::default_advertise(bound, &self.masters).await,
        };
        if let Some(a) = addr {
            self.shared.set_probe_addr(a.to_string());
            self.advertise = Some(Advertise::Fixed(a));
        }
    }

    /// The host's TCP counters now (None, logged and counted, when /proc cannot be read).
    fn counters(&self) -> Option<checkers::netstat::TcpCounters> {
        match checkers::netstat::read_tcp_counters(&self.root) {
            Ok(c) => Some(c),
            Err(e) => {
                let msg = format!("TCP counters: {e}");
                tracing::warn!("{msg}");
                self.shared.record(|r| {
                    r.failures += 1;
                    r.last_error = msg;
                });
                None
            }
        }
    }

    /// Probe this window's peers until they are done or `deadline`; peers cut off at the deadline report
    /// what they measured so far.
    pub async fn probe_window(&mut self, deadline: Instant) -> Closed {
        self.window_seq += 1;
        let sample = self.shared.peers();
        let eligible = sample.iter().filter(|p| p.host != self.host).count();
        let n = self.s.peers_this_window(eligible);
        let chosen: Vec<Peer> = stats::pick(&sample, |p| p.host.as_str(), &self.last_probed, &self.host, n)
            .into_iter()
            .cloned()
            .collect();
        let skipped = eligible.min(self.s.peers_per_window).saturating_sub(chosen.len());
        stats::remember(&mut self.last_probed, chosen.iter().map(|p| p.host.as_str()), self.window_seq);
        self.windows.resize_with(chosen.len(), PeerWindow::default);
        for w in &mut self.windows {
            w.clear();
        }
        let bytes = AtomicU64::new(0);
        let (probes, timeout, seq) = (self.s.probes_per_peer, self.s.timeout, &self.seq);
        let mut work = Vec::with_capacity(chosen.len());
        for (p, w) in chosen.iter().zip(self.windows.iter_mut()) {
            work.push(probe_peer(p.addr, w, probes, timeout, &bytes, seq));
        }
        let all = futures::stream::iter(work).buffer_unordered(PROBE_CONCURRENCY).collect::<Vec<()>>();
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            tracing::debug!(peers = chosen.len(), "probe window ended before every peer was done");
        }
        let peers = chosen
            .into_iter()
            .zip(self.windows.iter_mut())
            .filter(|(_, w)| w.sent > 0)
            .map(|(p, w)| {
                let r = w.result(&p.host);
                (p, r)
            })
            .collect();
        Closed { peers, probe_bytes: bytes.load(Ordering::Relaxed), skipped }
    }

    /// Turn a probed window into a report: votes, counters, interface; queue it, count it.
    fn close(
        &mut self,
        closed: Closed,
        before: Option<&checkers::netstat::TcpCounters>,
        after: Option<&checkers::netstat::TcpCounters>,
    ) {
        let m = &self.local.metrics;
        m.net_peers_skipped.inc_by(closed.skipped as u64);
        m.net_probe_bytes.inc_by(closed.probe_bytes);
        for (_, r) in &closed.peers {
            m.net_probes_sent.inc_by(u64::from(r.sent));
            m.net_probes_lost.inc_by(u64::from(r.lost));
        }
        let now = crate::scheduler::now_ms();
        self.shared.record(|r| {
            r.runs += 1;
            r.last_run_ms = now;
        });
        if closed.peers.is_empty() {
            // Nothing measured (no peers known yet): no report; the sequence still moved on.
            return;
        }
        let delta = match (before, after) {
            (Some(b), Some(a)) => a.delta(b),
            _ => checkers::netstat::TcpDelta::default(),
        };
        let routes = checkers::netstat::read_routes(&self.root).unwrap_or_default();
        let iface = iface_for(&routes, closed.peers.iter().map(|(p, _)| p.addr));
        let results: Vec<netvote::PeerResult> = closed.peers.into_iter().map(|(_, r)| r).collect();
        let votes = vote(&results, &self.host);
        m.net_votes.inc_by(votes.len() as u64);
        let report = api::NetReport {
            window_seq: self.window_seq,
            window_end_ms: now,
            window_ms: self.s.window.as_millis() as u64,
            checker_version: CHECKER_VERSION.into(),
            iface,
            peers: results.iter().map(peer_to_wire).collect(),
            votes,
            tcp_retrans_segs: delta.retrans_segs,
            tcp_out_segs: delta.out_segs,
            probe_bytes: closed.probe_bytes,
        };
        if self.shared.push(report) {
            m.net_reports_dropped.inc();
        }
    }
}

/// TEMPORARY until `netvote API v1` is merged: the real rule is `netvote::local::votes`.
fn vote(results: &[netvote::PeerResult], host: &str) -> Vec<String> {
    let mut v: Vec<String> = results
        .iter()
        .filter(|r| r.sent >= 5 && r.lost > 0 && r.host != host)
        .map(|r| r.host.clone())
        .collect();
    if !v.is_empty() {
        v.push(host.to_string());
    }
    v
}

pub fn peer_to_wire(r: &netvote::PeerResult) -> api::PeerResult {
    api::PeerResult {
        host: r.host.clone(),
        sent: r.sent,
        lost: r.lost,
        connect_failures: r.connect_failures,
        rtt_p50_us: r.rtt_p50_us,
        rtt_p99_us: r.rtt_p99_us,
    }
}

/// The interface most of the window's peers are routed through (ties: the name first in order); empty
/// when no route is known (IPv6 peers: `/proc/net/route` is IPv4 only).
pub fn iface_for(routes: &[checkers::netstat::Route], peers: impl Iterator<Item = SocketAddr>) -> String {
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for a in peers {
        if let SocketAddr::V4(v4) = a
            && let Some(i) = checkers::netstat::route_iface(routes, *v4.ip())
        {
            *votes.entry(i).or_default() += 1;
        }
    }
    let mut best: Option<(&str, usize)> = None;
    for (i, n) in votes {
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((i, n));
        }
    }
    best.map(|(i, _)| i.to_string()).unwrap_or_default()
}

/// Send `probes` probes to one peer, counting into `w` and `bytes`.
async fn probe_peer(
    addr: SocketAddr,
    w: &mut PeerWindow,
    probes: u32,
    timeout: Duration,
    bytes: &AtomicU64,
    seq: &AtomicU64,
) {
    let mut conn: Option<TcpStream> = None;
    let mut answer = [0u8; PROBE_LEN];
    for _ in 0..probes {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => {
                bytes.fetch_add(CONNECT_WIRE_BYTES, Ordering::Relaxed);
                match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) if s.set_nodelay(true).is_ok() => conn.insert(s),
                    _ => {
                        w.connect_failed();
                        continue;
                    }
                }
            }
        };
        let n = seq.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(PROBE_WIRE_BYTES, Ordering::Relaxed);
        let started = Instant::now();
        let exchange = async {
            stream.write_all(&responder::request(n)).await?;
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) if responder::parse(responder::RESPONSE_MAGIC, &answer) == Some(n) => {
                let us = started.elapsed().as_micros();
                w.answered(u32::try_from(us).unwrap_or(u32::MAX).max(1));
            }
            // No answer in time, a reset or a wrong answer: lost; this connection is not trusted again.
            _ => {
                w.lost();
                conn = None;
            }
        }
    }
}
