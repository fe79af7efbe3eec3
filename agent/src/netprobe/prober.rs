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
//!
//! Path evidence (issue 16): after a peer's probes, a peer that lost any traces the path of its flow
//! (`trace.rs`: TTL-limited connects from the flow's own local address and port, so ECMP hashes them onto
//! the flow's path) into `PeerResult::path`, at most [`MAX_TRACES_PER_WINDOW`] per window. A trace's worst
//! case ([`trace_budget`]) is reserved from the window's budget before it starts (what a peer's probes did
//! not spend of their reservation is given back first), and it is cut at the window's deadline. The
//! connections of a lossy peer are closed abortively (`SO_LINGER` 0: a RST, no TIME_WAIT), so the trace can
//! bind the flow's 4-tuple again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use proto::api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::responder::{self, PROBE_LEN};
use super::stats::{self, PeerWindow};
use super::trace::{self, TraceOpts};
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
/// Bound on finding the default `probe_addr` (resolving a master's name) before a window: a hung resolver
/// delays that window by at most this, and the next window tries again.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most peers in one report (api.proto: at most 256 per `NetReport`).
pub const MAX_PEERS_PER_WINDOW: usize = 256;

/// Lossy flows whose path one window traces at most: each trace is up to `trace::MAX_HOPS` SYNs and makes
/// the routers on the path answer ICMP, which switches rate-limit (Linux: 1 per second per destination,
/// burst 6); 8 bounds both, and a fault shows in more than 8 flows over a few windows anyway.
pub const MAX_TRACES_PER_WINDOW: usize = 8;

/// A trace ends this long before the window's deadline, so its path is recorded before the window is cut
/// (tokio's timers have millisecond granularity; a busy machine needs more).
pub const TRACE_END_MARGIN: Duration = Duration::from_millis(50);

/// The worst-case cost of one trace with `opts`: a SYN per hop, and an ACK and a RST at the destination.
pub fn trace_budget(opts: &TraceOpts) -> u64 {
    opts.worst_case_segments() * SEGMENT_WIRE_BYTES
}

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
            timeout: Duration::from_millis(c.timeout_ms()),
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
    /// The local vote rule's thresholds (netvote's defaults: what the agent ships with).
    rules: netvote::local::LocalRules,
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
    /// Lossy peers whose flow was traced: host -> whether the trace reached the peer.
    pub traced: BTreeMap<String, bool>,
    /// Lossy peers not traced (the window's trace limit, budget or time was spent).
    pub traces_skipped: usize,
}

/// What the peers of one window share: the byte budget, the trace limit, the deadline.
struct WindowShare<'a> {
    /// Bytes sent.
    bytes: AtomicU64,
    /// Bytes sent plus bytes reserved and not yet spent; never over `limit`.
    committed: AtomicU64,
    limit: u64,
    traces: AtomicUsize,
    traces_skipped: AtomicUsize,
    deadline: Instant,
    seq: &'a AtomicU64,
}

impl WindowShare<'_> {
    fn spend(&self, spent: &mut u64, n: u64) {
        *spent += n;
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Give back what a reservation did not use.
    fn release(&self, unused: u64) {
        self.committed.fetch_sub(unused, Ordering::Relaxed);
    }

    /// Reserve `n` bytes if the budget has them.
    fn reserve(&self, n: u64) -> bool {
        self.committed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_add(n).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    /// A trace slot and its worst case, or `None` (counted as skipped) when the window's traces, budget or
    /// time are spent: the options for the time left.
    fn start_trace(&self) -> Option<TraceOpts> {
        let mut opts = TraceOpts::default();
        let left = self.deadline.saturating_duration_since(Instant::now()).saturating_sub(TRACE_END_MARGIN);
        opts.deadline = opts.deadline.min(left);
        let slot = self.traces.load(Ordering::Relaxed) < MAX_TRACES_PER_WINDOW;
        if !slot || left.is_zero() || !self.reserve(trace_budget(&opts)) {
            self.traces_skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.traces.fetch_add(1, Ordering::Relaxed);
        Some(opts)
    }
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
            rules: netvote::local::LocalRules::default(),
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
            Some(Advertise::Derive(bound)) => {
                // A resolver that hangs must not hold up the window: try again at the next one.
                tokio::time::timeout(RESOLVE_TIMEOUT, super::default_advertise(bound, &self.masters))
                    .await
                    .ok()
                    .flatten()
            }
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
                self.shared.record(|r| {
                    // Logged when it changes, not every window (a recorded tree without /proc/net).
                    if r.last_error != msg {
                        tracing::warn!("{msg}; windows report no TCP deltas");
                    }
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
        let (probes, timeout) = (self.s.probes_per_peer, self.s.timeout);
        let share = WindowShare {
            bytes: AtomicU64::new(0),
            // Every chosen peer's worst case is reserved up front (`peers_this_window` made them fit).
            committed: AtomicU64::new(chosen.len() as u64 * peer_budget(probes)),
            limit: self.s.budget,
            traces: AtomicUsize::new(0),
            traces_skipped: AtomicUsize::new(0),
            deadline,
            seq: &self.seq,
        };
        let mut work = Vec::with_capacity(chosen.len());
        for (p, w) in chosen.iter().zip(self.windows.iter_mut()) {
            work.push(probe_peer(p.addr, w, probes, timeout, &share));
        }
        let all = futures::stream::iter(work).buffer_unordered(PROBE_CONCURRENCY).collect::<Vec<()>>();
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            tracing::debug!(peers = chosen.len(), "probe window ended before every peer was done");
        }
        let mut traced = BTreeMap::new();
        let peers = chosen
            .into_iter()
            .zip(self.windows.iter_mut())
            .filter(|(_, w)| w.sent > 0)
            .map(|(p, w)| {
                if let Some(reached) = w.traced {
                    traced.insert(p.host.clone(), reached);
                }
                let r = w.result(&p.host);
                (p, r)
            })
            .collect();
        Closed {
            peers,
            probe_bytes: share.bytes.load(Ordering::Relaxed),
            skipped,
            traced,
            traces_skipped: share.traces_skipped.load(Ordering::Relaxed),
        }
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
        m.net_traces.inc_by(closed.traced.len() as u64);
        m.net_traces_skipped.inc_by(closed.traces_skipped as u64);
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
        let votes = netvote::local::votes(&results, &self.host, &self.rules);
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

pub fn peer_to_wire(r: &netvote::PeerResult) -> api::PeerResult {
    api::PeerResult {
        host: r.host.clone(),
        sent: r.sent,
        lost: r.lost,
        connect_failures: r.connect_failures,
        rtt_p50_us: r.rtt_p50_us,
        rtt_p99_us: r.rtt_p99_us,
        hops: r.path.clone(),
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

/// Send `probes` probes to one peer, counting into `w` and the window's bytes; then, if any was lost,
/// trace the path of the first flow (4-tuple) that lost one: a lost probe ends its connection and the next
/// connects again on a new port, which ECMP may hash onto another route, so the last flow may be a clean
/// one and only the lossy one's route is evidence (what `huatuo bench netvote` simulates).
async fn probe_peer(
    addr: SocketAddr,
    w: &mut PeerWindow,
    probes: u32,
    timeout: Duration,
    share: &WindowShare<'_>,
) {
    let mut spent = 0;
    let mut conn: Option<TcpStream> = None;
    // The local address of the current connection (or connect attempt), and of the first that lost a probe.
    let mut flow: Option<SocketAddr> = None;
    let mut lossy: Option<SocketAddr> = None;
    let mut answer = [0u8; PROBE_LEN];
    for _ in 0..probes {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => {
                share.spend(&mut spent, CONNECT_WIRE_BYTES);
                let Some((socket, local)) = bound_socket(addr) else {
                    w.connect_failed();
                    continue;
                };
                flow = Some(local);
                match tokio::time::timeout(timeout, socket.connect(addr)).await {
                    Ok(Ok(s)) if s.set_nodelay(true).is_ok() => {
                        flow = s.local_addr().ok().or(flow);
                        conn.insert(s)
                    }
                    _ => {
                        w.connect_failed();
                        lossy = lossy.or(flow);
                        continue;
                    }
                }
            }
        };
        let n = share.seq.fetch_add(1, Ordering::Relaxed);
        share.spend(&mut spent, PROBE_WIRE_BYTES);
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
            // No answer in time, a reset or a wrong answer: lost; this connection is not trusted again,
            // and is aborted so that no TIME_WAIT keeps its 4-tuple from the trace.
            _ => {
                w.lost();
                lossy = lossy.or(flow);
                abort(conn.take());
            }
        }
    }
    share.release(peer_budget(probes).saturating_sub(spent));
    if w.lost == 0 {
        return;
    }
    abort(conn.take());
    let Some(local) = lossy else { return };
    let Some(opts) = share.start_trace() else { return };
    let worst = trace_budget(&opts);
    match trace::trace(local, addr, &opts).await {
        Ok(t) => {
            let cost = t.segments() * SEGMENT_WIRE_BYTES;
            share.bytes.fetch_add(cost, Ordering::Relaxed);
            share.release(worst.saturating_sub(cost));
            w.path = t.path();
            w.traced = Some(t.reached);
        }
        Err(e) => {
            // Some SYNs may have gone out: the whole worst case stays spent. No path: not traced.
            share.bytes.fetch_add(worst, Ordering::Relaxed);
            w.traced = Some(false);
            tracing::debug!(peer = %addr, %local, "tracing a lossy flow: {e}");
        }
    }
}

/// A socket for a probe connection, bound to an ephemeral port first so the flow's local address is known
/// even when its connect fails (a flow that loses SYNs is traced too).
fn bound_socket(addr: SocketAddr) -> Option<(TcpSocket, SocketAddr)> {
    let (socket, any) = if addr.is_ipv4() {
        (TcpSocket::new_v4().ok()?, SocketAddr::from(([0, 0, 0, 0], 0)))
    } else {
        (TcpSocket::new_v6().ok()?, SocketAddr::from(([0u16; 8], 0)))
    };
    socket.bind(any).ok()?;
    let local = socket.local_addr().ok()?;
    Some((socket, local))
}

/// Close a probe connection with a RST (`SO_LINGER` 0): no TIME_WAIT holds the flow's 4-tuple, so its
/// trace can bind it. Zero linger never blocks the thread on drop.
fn abort(conn: Option<TcpStream>) {
    if let Some(s) = conn {
        let _ = s.set_zero_linger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netprobe::responder::Responder;
    use tokio::net::TcpListener;

    fn settings(budget: u64) -> Settings {
        Settings {
            window: Duration::from_secs(10),
            peers_per_window: 32,
            probes_per_peer: 5,
            timeout: Duration::from_millis(200),
            budget,
        }
    }

    /// A recorded /proc tree: this machine's snmp/netstat and a route table.
    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("proc/net");
        std::fs::create_dir_all(&net).unwrap();
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../checkers/testdata/netstat/this-machine");
        for f in ["snmp", "netstat", "route"] {
            std::fs::copy(data.join(f), net.join(f)).unwrap();
        }
        dir
    }

    fn prober(s: Settings, root: &std::path::Path) -> (Prober, Arc<NetProbe>, Arc<LocalState>) {
        let shared = NetProbe::new();
        let local = LocalState::new("self".into(), 1);
        let p = Prober::new(
            s,
            "self".into(),
            root.to_path_buf(),
            Arc::clone(&shared),
            Arc::clone(&local),
            None,
            vec![],
        );
        (p, shared, local)
    }

    /// A responder on 127.0.0.`last`, port 0 (loopback has the whole 127/8: one address per "host").
    async fn responder(last: u8, stop: &watch::Receiver<bool>) -> SocketAddr {
        let r = Responder::bind(SocketAddr::from(([127, 0, 0, last], 0))).await.unwrap();
        let addr = r.local_addr().unwrap();
        tokio::spawn(r.run(stop.clone()));
        addr
    }

    fn peer(host: &str, addr: SocketAddr) -> api::ProbePeer {
        api::ProbePeer { host: host.into(), addr: addr.to_string(), tor: String::new() }
    }

    #[tokio::test]
    async fn lossy_peers_are_measured_and_voted_with_this_host() {
        let (stop_tx, stop) = watch::channel(false);
        let mut wire = Vec::new();
        for i in 0..4u8 {
            wire.push(peer(&format!("good{i}"), responder(10 + i, &stop).await));
        }
        // A host whose responder is gone: connects are refused.
        let gone = TcpListener::bind("127.0.0.20:0").await.unwrap();
        wire.push(peer("gone", gone.local_addr().unwrap()));
        drop(gone);
        // A host that accepts but never answers (a wedged stack, a black hole past the handshake).
        let mute = TcpListener::bind("127.0.0.21:0").await.unwrap();
        wire.push(peer("mute", mute.local_addr().unwrap()));
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = mute.accept().await {
                conns.push(s);
            }
        });
        wire.push(peer("self", "127.0.0.99:1".parse().unwrap())); // this host: never probed
        let dir = root();
        let (mut p, shared, local) = prober(settings(1 << 20), dir.path());
        assert_eq!(shared.set_peers(&wire), 7);
        let before = checkers::netstat::read_tcp_counters(dir.path()).unwrap();
        let closed = p.probe_window(Instant::now() + Duration::from_secs(30)).await;
        let by: BTreeMap<&str, &netvote::PeerResult> =
            closed.peers.iter().map(|(p, r)| (p.host.as_str(), r)).collect();
        assert_eq!(by.len(), 6, "{by:?}");
        for i in 0..4 {
            let r = by[format!("good{i}").as_str()];
            assert_eq!((r.sent, r.lost, r.connect_failures), (5, 0, 0), "{r:?}");
            assert!(r.rtt_p50_us > 0 && r.rtt_p99_us >= r.rtt_p50_us, "{r:?}");
        }
        assert_eq!((by["gone"].sent, by["gone"].lost, by["gone"].connect_failures), (5, 5, 5));
        assert_eq!(
            (by["mute"].sent, by["mute"].lost, by["mute"].connect_failures),
            (5, 5, 0),
            "connects work, answers never come"
        );
        assert_eq!((by["mute"].rtt_p50_us, by["mute"].rtt_p99_us), (0, 0));
        // Both lossy flows were traced from their own 4-tuple (the mute one's connections were aborted, so
        // the trace could bind it again) and reached their peer at the first hop: loopback has no routers.
        let traced: Vec<(&str, bool)> = closed.traced.iter().map(|(h, r)| (h.as_str(), *r)).collect();
        assert_eq!(traced, [("gone", true), ("mute", true)]);
        assert!(by["gone"].path.is_empty() && by["mute"].path.is_empty());
        assert_eq!(closed.traces_skipped, 0);
        let mut after = before;
        after.retrans_segs += 3;
        after.out_segs += 400;
        p.close(closed, Some(&before), Some(&after));
        let reports = shared.pending();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        let mut votes = r.votes.clone();
        votes.sort();
        assert_eq!(votes, ["gone", "mute", "self"], "the bad peers and this host itself");
        assert_eq!((r.window_seq, r.tcp_retrans_segs, r.tcp_out_segs), (1, 3, 400));
        assert_eq!(
            (r.iface.as_str(), r.checker_version.as_str(), r.window_ms),
            ("lo", CHECKER_VERSION, 10_000)
        );
        assert!(r.probe_bytes > 0 && r.probe_bytes <= 6 * peer_budget(5), "{}", r.probe_bytes);
        assert_eq!(local.metrics.net_probes_sent.get(), 30);
        assert_eq!(local.metrics.net_probes_lost.get(), 10);
        assert_eq!(local.metrics.net_votes.get(), 3);
        assert_eq!(local.metrics.net_probe_bytes.get(), r.probe_bytes);
        assert_eq!(local.metrics.net_traces.get(), 2);
        assert_eq!(shared.run_wire().runs, 1);
        stop_tx.send_replace(true);
        held.abort();
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_peers_probed_per_window() {
        let (stop_tx, stop) = watch::channel(false);
        let mut wire = Vec::new();
        for i in 0..6u8 {
            wire.push(peer(&format!("h{i}"), responder(30 + i, &stop).await));
        }
        let dir = root();
        // Exactly three peers' worst case fits (one byte short of a fourth).
        let budget = 4 * peer_budget(5) - 1;
        let (mut p, shared, local) = prober(settings(budget), dir.path());
        shared.set_peers(&wire);
        let mut seen = std::collections::BTreeSet::new();
        for window in 1..=2u64 {
            let closed = p.probe_window(Instant::now() + Duration::from_secs(30)).await;
            assert_eq!(closed.peers.len(), 3, "window {window}");
            assert_eq!(closed.skipped, 3);
            assert!(closed.probe_bytes <= budget, "{} > {budget}", closed.probe_bytes);
            // Healthy peers on one connection each: one connect and five probes.
            assert_eq!(closed.probe_bytes, 3 * (CONNECT_WIRE_BYTES + 5 * PROBE_WIRE_BYTES));
            seen.extend(closed.peers.iter().map(|(p, _)| p.host.clone()));
            p.close(closed, None, None);
        }
        assert_eq!(seen.len(), 6, "the rotation reached the other three in the second window: {seen:?}");
        assert_eq!(local.metrics.net_peers_skipped.get(), 6);
        let reports = shared.pending();
        assert_eq!(reports.len(), 2);
        assert!(reports.iter().all(|r| r.votes.is_empty() && r.probe_bytes <= budget));
        assert_eq!(reports[1].window_seq, 2);
        stop_tx.send_replace(true);
    }

    #[tokio::test]
    async fn a_window_cut_at_its_deadline_reports_what_it_measured() {
        let mute = TcpListener::bind("127.0.0.40:0").await.unwrap();
        let addr = mute.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = mute.accept().await {
                conns.push(s);
            }
        });
        let dir = root();
        let mut s = settings(1 << 20);
        s.timeout = Duration::from_millis(200);
        let (mut p, shared, _) = prober(s, dir.path());
        shared.set_peers(&[peer("mute", addr)]);
        // Five unanswered probes of 200 ms cannot finish in 900 ms: those done are counted, the cut one is not.
        let started = Instant::now();
        let closed = p.probe_window(started + Duration::from_millis(900)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(closed.peers.len(), 1);
        let r = &closed.peers[0].1;
        assert!((1..5).contains(&r.sent) && r.lost == r.sent, "{r:?}");
        held.abort();
    }

    /// A peer address whose connects are refused (a listener bound and dropped).
    fn refusing(last: u8) -> SocketAddr {
        let l = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn lossy_peers_are_traced_at_most_max_traces_per_window() {
        let n = MAX_TRACES_PER_WINDOW + 2;
        let wire: Vec<api::ProbePeer> =
            (0..n).map(|i| peer(&format!("gone{i}"), refusing(60 + i as u8))).collect();
        let dir = root();
        let (mut p, shared, local) = prober(settings(1 << 20), dir.path());
        shared.set_peers(&wire);
        for window in 1..=2u64 {
            let started = Instant::now();
            let closed = p.probe_window(started + Duration::from_secs(30)).await;
            println!("window {window}: {n} refused peers probed and 8 traced in {:?}", started.elapsed());
            assert_eq!(closed.peers.len(), n);
            assert_eq!(closed.traced.len(), MAX_TRACES_PER_WINDOW, "window {window}: {:?}", closed.traced);
            assert!(closed.traced.values().all(|&reached| reached), "{:?}", closed.traced);
            assert_eq!(closed.traces_skipped, 2);
            // Five refused connects per peer, and one SYN per trace (the RST answers it at the first hop).
            let expected =
                n as u64 * 5 * CONNECT_WIRE_BYTES + MAX_TRACES_PER_WINDOW as u64 * SEGMENT_WIRE_BYTES;
            assert_eq!(closed.probe_bytes, expected);
            p.close(closed, None, None);
        }
        assert_eq!(
            local.metrics.net_traces.get(),
            2 * MAX_TRACES_PER_WINDOW as u64,
            "the limit is per window"
        );
        assert_eq!(local.metrics.net_traces_skipped.get(), 4);
    }

    #[tokio::test]
    async fn a_trace_that_does_not_fit_the_byte_budget_is_skipped() {
        let dir = root();
        // A refused peer spends 5 connects of its reservation and gives the rest back; its trace then
        // needs its worst case on top of what was spent. At that budget it is traced, one byte less not.
        let at = 5 * CONNECT_WIRE_BYTES + trace_budget(&TraceOpts::default());
        assert!(at > peer_budget(5), "the peer itself fits below the limit tested");
        for (budget, traced, skipped) in [(at, 1, 0), (at - 1, 0, 1)] {
            let (mut p, shared, _) = prober(settings(budget), dir.path());
            shared.set_peers(&[peer("gone", refusing(75))]);
            let closed = p.probe_window(Instant::now() + Duration::from_secs(30)).await;
            assert_eq!(closed.peers.len(), 1);
            assert_eq!((closed.traced.len(), closed.traces_skipped), (traced, skipped), "budget {budget}");
            assert!(closed.probe_bytes <= budget);
        }
    }

    #[tokio::test]
    async fn a_trace_ends_before_the_window_does() {
        // A peer that drops every SYN: five connects time out (1 s), then its trace meets only silent hops
        // and would take TRACE_DEADLINE; the window's deadline cuts it, and its hops so far are kept.
        let (_l, _held, addr) = crate::netprobe::trace::tests::silent_listener([127, 0, 0, 77]);
        let dir = root();
        let (mut p, shared, _) = prober(settings(1 << 20), dir.path());
        shared.set_peers(&[peer("silent", addr)]);
        let window = Duration::from_millis(1600);
        let started = Instant::now();
        let closed = p.probe_window(started + window).await;
        let took = started.elapsed();
        assert!(took <= window + Duration::from_millis(100), "{took:?}");
        let r = &closed.peers[0].1;
        assert_eq!((r.sent, r.connect_failures), (5, 5), "{r:?}");
        assert_eq!(closed.traced.get("silent"), Some(&false), "{closed:?}");
        assert!(!r.path.is_empty() && r.path.iter().all(|h| h == "*"), "{r:?}");
    }

    #[test]
    fn the_interface_is_the_one_most_peers_route_through() {
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth0\t00000000\t0101010A\t0003\t0\t0\t0\t00000000\n\
            eth1\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\n";
        let routes = checkers::netstat::parse_routes(text).unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let peers = [a("10.1.0.2:7791"), a("10.1.3.4:7791"), a("192.0.2.1:7791")];
        assert_eq!(iface_for(&routes, peers.into_iter()), "eth1");
        assert_eq!(iface_for(&routes, [a("[fd00::1]:7791")].into_iter()), "", "IPv6: unknown");
        assert_eq!(iface_for(&[], [a("127.0.0.5:1")].into_iter()), "lo");
    }

    #[test]
    fn peers_per_window_follow_the_sample_and_the_budget() {
        let s = settings(10 * peer_budget(5));
        assert_eq!(s.peers_this_window(100), 10);
        assert_eq!(s.peers_this_window(4), 4);
        let s = Settings { peers_per_window: 2, ..s };
        assert_eq!(s.peers_this_window(100), 2);
        let s = Settings { peers_per_window: 10_000, budget: u64::MAX, ..s };
        assert_eq!(s.peers_this_window(100_000), MAX_PEERS_PER_WINDOW);
    }
}
