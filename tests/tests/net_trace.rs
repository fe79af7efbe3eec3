//! The agent's path tracer (`agent::netprobe::trace`, issue 16) on real packets: routers made of network
//! namespaces, so the SYNs really run out of TTL in a forwarding kernel and the ICMP time-exceeded comes
//! back to a TCP socket with `IP_RECVERR` on.
//!
//! - `a_chain_of_two_routers_is_traced_and_a_black_hole_is_seen`: A -- R1 -- R2 -- B, a listener in B. The
//!   trace from A finds [R1's address on A's side, R2's address on R1's side] and reaches B; with an
//!   nftables rule in R2 dropping everything to B it finds [R1, R2, then silent hops] and stops at the
//!   overall deadline without reaching B.
//! - `an_ipv6_chain_of_two_routers_is_traced`: the same chain over IPv6 (`IPV6_RECVERR`, ICMPv6
//!   time-exceeded).
//! - `the_prober_traces_a_lossy_peer_through_the_routers`: the agent's prober in A probes a responder in
//!   B through the chain while R2 drops every data segment to it (handshakes pass): the peer loses 5 of 5
//!   probes and its `PeerResult.path` (the report's `hops`) is [R1, R2], traced from the flow's own port.
//! - `ecmp_paths_follow_the_source_port`: R1 has two equal-cost next hops to B (R2a, R2b) and hashes on
//!   the 5-tuple (`fib_multipath_hash_policy = 1`): traces from different source ports take both routers,
//!   and the same source port takes the same path every time; and a real connection on each 5-tuple is
//!   forwarded by the router its trace named (nftables counters per source port in R2a and R2b), which is
//!   what makes a lossy flow's trace evidence about the flow's own path.
//!
//! Routers answer every TTL expiry here (`icmp_ratelimit = 0`): Linux's default of one ICMP error per
//! second per destination (burst 6) would make hops of the later traces silent. Real switches rate-limit
//! their ICMP too, which is one reason the prober traces at most `MAX_TRACES_PER_WINDOW` flows a window.
//!
//! Needs root: where `ip netns add` is not permitted each test prints `SKIPPED` and returns; where it is,
//! any other failure (a missing `nft`, a route that cannot be added) fails the test.
#![allow(clippy::unwrap_used)]

#[path = "support/netns_util.rs"]
mod netns_util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent::netprobe::prober::{Prober, Settings};
use agent::netprobe::trace::{self, TRACE_DEADLINE, Trace, TraceOpts};
use netns_util::{enter, sh};

/// Port of the destination's listener in B.
const DST_PORT: u16 = 7795;
/// Port of the probe responder in B (the prober test; the rule that makes it lossy names it).
const PROBE_PORT: u16 = 7791;
/// Source ports the ECMP test traces from: with two equal-cost next hops, all of 16 flows hashing onto
/// one of them has probability 2^-15.
const ECMP_FLOWS: u16 = 16;
/// How far past its deadline a trace may return (scheduling on a busy 2-core machine).
const DEADLINE_SLACK: Duration = Duration::from_millis(500);

static RUNS: AtomicU32 = AtomicU32::new(0);

/// Namespaces made by one test; Drop deletes them (with their veths and nftables tables).
struct Namespaces {
    prefix: String,
    made: Vec<String>,
}

impl Namespaces {
    /// `None` (after printing why) where network namespaces are not permitted.
    fn new(what: &str) -> Option<Namespaces> {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("nt{}x{n}-", std::process::id());
        if let Err(e) = netns_util::permitted(&prefix) {
            println!("[{what}] SKIPPED: network namespaces are not permitted here ({e})");
            return None;
        }
        sweep_orphans();
        Some(Namespaces { prefix, made: Vec::new() })
    }

    fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// A namespace with `lo` up, reverse-path filtering off (the ECMP test's replies come back on the
    /// other path), no IPv6 DAD and, for a router, forwarding on and ICMP errors not rate-limited.
    fn add(&mut self, short: &str, router: bool) -> String {
        let ns = self.name(short);
        sh(&["ip", "netns", "add", &ns]).unwrap();
        self.made.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]).unwrap();
        // No IPv6 duplicate address detection either: the link-local addresses of new links would be
        // tentative for seconds, and neighbour discovery and ICMPv6 wait for them.
        let mut sysctls = vec![
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        if router {
            sysctls.extend(["net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"]);
        }
        for s in sysctls {
            sh(&["ip", "netns", "exec", &ns, "sysctl", "-qw", s]).unwrap();
        }
        ns
    }

    /// A veth between two namespaces, each end up with its address (a /24).
    fn link(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        sh(&["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b]).unwrap();
        for (ns, dev, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
            sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev]).unwrap();
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]).unwrap();
        }
    }

    /// An IPv6 veth between two namespaces (/64 each, no duplicate address detection so the addresses
    /// are usable at once).
    fn link6(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        sh(&["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b]).unwrap();
        for (ns, dev, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
            sh(&["ip", "-n", ns, "-6", "addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"]).unwrap();
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]).unwrap();
        }
    }

    fn route(&self, ns: &str, args: &[&str]) {
        let mut v = vec!["ip", "-n", ns, "route", "add"];
        v.extend(args);
        sh(&v).unwrap();
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.made {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// Delete the namespaces of earlier runs whose process is gone (killed before its Drop ran).
fn sweep_orphans() {
    for ns in netns_util::list().unwrap_or_default() {
        let Some(rest) = ns.strip_prefix("nt") else { continue };
        let Some((pid, _)) = rest.split_once('x') else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
    }
}

/// A listener in namespace `ns` (made on a thread that entered it; the socket stays in `ns`). The kernel
/// completes handshakes into its backlog without `accept`, which is all a trace needs.
fn listen_in(ns: &str, addr: SocketAddr) -> TcpListener {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns).unwrap();
        TcpListener::bind(addr).unwrap()
    })
    .join()
    .unwrap()
}

/// Run traces from a thread that entered namespace `ns`, on its own current-thread runtime; each with
/// how long it took.
fn traces_in(ns: &str, flows: Vec<(SocketAddr, SocketAddr)>, opts: TraceOpts) -> Vec<(Trace, Duration)> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            for (local, dst) in flows {
                let started = Instant::now();
                let t =
                    trace::trace(local, dst, &opts).await.unwrap_or_else(|e| panic!("{local} -> {dst}: {e}"));
                out.push((t, started.elapsed()));
            }
            out
        })
    })
    .join()
    .unwrap()
}

/// Connect from each of `locals` to `dst` and close with a RST, from a thread in namespace `ns`: the
/// packets of a real flow on each 5-tuple (for the routers' counters).
fn flows_in(ns: &str, locals: Vec<SocketAddr>, dst: SocketAddr) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for local in locals {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind(local).unwrap();
                let c = tokio::time::timeout(Duration::from_secs(5), s.connect(dst)).await.unwrap().unwrap();
                c.set_zero_linger().unwrap();
            }
        })
    })
    .join()
    .unwrap();
}

/// Per source port, the packets router `ns` forwarded to the destination (its `seen` table's counters).
fn forwarded_by_port(ns: &str) -> std::collections::BTreeMap<u16, u64> {
    let out =
        netns_util::sh_out(&["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "seen"]).unwrap();
    let mut by = std::collections::BTreeMap::new();
    for line in out.lines() {
        // `tcp sport 41000 counter packets 3 bytes 180`
        let w: Vec<&str> = line.split_whitespace().collect();
        if let [.., "sport", port, "counter", "packets", n, "bytes", _] = w[..] {
            by.insert(port.parse().unwrap(), n.parse().unwrap());
        }
    }
    by
}

/// Wait until a TCP connection from namespace `ns` to `dst` succeeds, for at most `limit`.
fn connectable_from(ns: &str, dst: SocketAddr, limit: Duration) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns).unwrap();
        let deadline = Instant::now() + limit;
        loop {
            match std::net::TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                Ok(_) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("{dst} not reachable from {ns} in {limit:?}: {e}")
                }
                Err(_) => {}
            }
        }
    })
    .join()
    .unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A -- R1 -- R2 -- B on 10.79.1.0/24, 10.79.2.0/24, 10.79.3.0/24 (A .1.2, R1 .1.1/.2.1, R2 .2.2/.3.1,
/// B .3.2); the namespaces (a, r1, r2, b).
fn chain(n: &mut Namespaces) -> (String, String, String, String) {
    let a = n.add("a", false);
    let r1 = n.add("r1", true);
    let r2 = n.add("r2", true);
    let b = n.add("b", false);
    n.link(&a, "a0", "10.79.1.2", &r1, "r1a", "10.79.1.1");
    n.link(&r1, "r1b", "10.79.2.1", &r2, "r2a", "10.79.2.2");
    n.link(&r2, "r2b", "10.79.3.1", &b, "b0", "10.79.3.2");
    n.route(&a, &["default", "via", "10.79.1.1"]);
    n.route(&r1, &["10.79.3.0/24", "via", "10.79.2.2"]);
    n.route(&r2, &["10.79.1.0/24", "via", "10.79.2.1"]);
    n.route(&b, &["default", "via", "10.79.3.1"]);
    (a, r1, r2, b)
}

/// Load nftables `rules` in namespace `ns`.
fn nft(ns: &str, rules: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    sh(&["ip", "netns", "exec", ns, "nft", "-f", &file.path().display().to_string()]).unwrap();
}

#[test]
fn a_chain_of_two_routers_is_traced_and_a_black_hole_is_seen() {
    let what = "net_trace chain";
    let Some(mut n) = Namespaces::new(what) else { return };
    netns_util::require_nft(what);
    let (a, _r1, r2, b) = chain(&mut n);
    let dst = SocketAddr::from((Ipv4Addr::new(10, 79, 3, 2), DST_PORT));
    let _listener = listen_in(&b, dst);

    // The flow's own source address and port, and any port.
    let flows = vec![(SocketAddr::from(([10, 79, 1, 2], 40_001)), dst), ("0.0.0.0:0".parse().unwrap(), dst)];
    for (t, took) in traces_in(&a, flows, TraceOpts::default()) {
        println!("[{what}] clean path: {:?} reached {} in {took:?}", t.path(), t.reached);
        assert_eq!(t.hops, vec![Some(ip("10.79.1.1")), Some(ip("10.79.2.2"))], "{t:?}");
        assert!(t.reached && t.connected, "{t:?}");
        assert_eq!(t.syns, 3);
    }

    // R2 forwards nothing to B any more: it still answers the TTL it sees run out (the TTL check comes
    // before the forward hook), the hops after it are silent until the overall deadline.
    let rules = "table inet blackhole {\n chain forward_drop {\n  type filter hook forward priority 0; policy accept;\n  \
                 ip daddr 10.79.3.2 drop\n }\n}\n";
    nft(&r2, rules);
    let flows = vec![(SocketAddr::from(([10, 79, 1, 2], 40_002)), dst)];
    let (t, took) = traces_in(&a, flows, TraceOpts::default()).remove(0);
    println!("[{what}] black hole after R2: {:?} reached {} in {took:?}", t.path(), t.reached);
    assert!(!t.reached && !t.connected, "{t:?}");
    assert_eq!(t.hops[..2], [Some(ip("10.79.1.1")), Some(ip("10.79.2.2"))], "{t:?}");
    assert!(t.hops.len() > 2 && t.hops[2..].iter().all(Option::is_none), "{t:?}");
    assert!(t.hops.len() <= usize::from(trace::MAX_HOPS));
    assert!(took >= TRACE_DEADLINE && took < TRACE_DEADLINE + DEADLINE_SLACK, "{took:?}");
}

#[test]
fn an_ipv6_chain_of_two_routers_is_traced() {
    let what = "net_trace ipv6";
    let Some(mut n) = Namespaces::new(what) else { return };
    let a = n.add("a", false);
    let r1 = n.add("r1", false);
    let r2 = n.add("r2", false);
    let b = n.add("b", false);
    for r in [&r1, &r2] {
        for s in ["net.ipv6.conf.all.forwarding=1", "net.ipv6.icmp.ratelimit=0"] {
            sh(&["ip", "netns", "exec", r, "sysctl", "-qw", s]).unwrap();
        }
    }
    n.link6(&a, "a0", "fd79:1::2", &r1, "r1a", "fd79:1::1");
    n.link6(&r1, "r1b", "fd79:2::1", &r2, "r2a", "fd79:2::2");
    n.link6(&r2, "r2b", "fd79:3::1", &b, "b0", "fd79:3::2");
    let route6 = |ns: &str, args: &[&str]| {
        let mut v = vec!["ip", "-n", ns, "-6", "route", "add"];
        v.extend(args);
        sh(&v).unwrap();
    };
    route6(&a, &["default", "via", "fd79:1::1"]);
    route6(&r1, &["fd79:3::/64", "via", "fd79:2::2"]);
    route6(&r2, &["fd79:1::/64", "via", "fd79:2::1"]);
    route6(&b, &["default", "via", "fd79:3::1"]);
    let dst: SocketAddr = format!("[fd79:3::2]:{DST_PORT}").parse().unwrap();
    let _listener = listen_in(&b, dst);
    // IPv6 neighbour discovery on fresh links takes about a second (measured: a trace right after setup
    // saw silent hops for 1 s): wait until a plain connection goes through, which resolves every neighbour
    // on the path and on the way back.
    connectable_from(&a, dst, Duration::from_secs(10));
    let flows = vec![(format!("[fd79:1::2]:{}", 40_003).parse().unwrap(), dst)];
    let (t, took) = traces_in(&a, flows, TraceOpts::default()).remove(0);
    println!("[{what}] clean path: {:?} reached {} in {took:?}", t.path(), t.reached);
    assert_eq!(t.hops, vec![Some(ip("fd79:1::1")), Some(ip("fd79:2::2"))], "{t:?}");
    assert!(t.reached && t.connected, "{t:?}");
}

#[test]
fn the_prober_traces_a_lossy_peer_through_the_routers() {
    let what = "net_trace prober";
    let Some(mut n) = Namespaces::new(what) else { return };
    netns_util::require_nft(what);
    let (a, _r1, r2, b) = chain(&mut n);
    // The peer's responder in B, on its own thread and runtime until `stop`.
    let peer_addr = SocketAddr::from((Ipv4Addr::new(10, 79, 3, 2), PROBE_PORT));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let ns = b.clone();
    let responder = std::thread::spawn(move || {
        enter(&ns).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let r = agent::netprobe::responder::Responder::bind(peer_addr).await.unwrap();
            bound_tx.send(()).unwrap();
            r.run(stop).await;
        });
    });
    bound.recv_timeout(Duration::from_secs(10)).unwrap();
    // R2 forwards the handshakes to the responder but no data: every probe connects and is never answered
    // (lost), while the trace's SYNs still get through to B.
    nft(
        &r2,
        "table inet lossy {\n chain forward_drop {\n  type filter hook forward priority 0; policy accept;\n  \
         ip daddr 10.79.3.2 tcp dport 7791 tcp flags & (syn | rst) == 0 drop\n }\n}\n",
    );
    let ns = a.clone();
    let (closed, took) = std::thread::spawn(move || {
        enter(&ns).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let root = tempfile::tempdir().unwrap();
            let settings = Settings {
                window: Duration::from_secs(10),
                peers_per_window: 4,
                probes_per_peer: 5,
                timeout: Duration::from_millis(200),
                budget: 1 << 20,
            };
            let shared = agent::netprobe::NetProbe::new();
            let local = agent::local::LocalState::new("a".into(), 1);
            let mut p = Prober::new(
                settings,
                "a".into(),
                root.path().to_path_buf(),
                shared.clone(),
                local,
                None,
                vec![],
            );
            let wire =
                proto::api::ProbePeer { host: "b".into(), addr: peer_addr.to_string(), tor: String::new() };
            assert_eq!(shared.set_peers(&[wire]), 1);
            let started = Instant::now();
            let closed = p.probe_window(tokio::time::Instant::now() + Duration::from_secs(10)).await;
            (closed, started.elapsed())
        })
    })
    .join()
    .unwrap();
    stop_tx.send_replace(true);
    responder.join().unwrap();
    let r = &closed.peers[0].1;
    println!("[{what}] lossy peer: sent {} lost {} path {:?}; window took {took:?}", r.sent, r.lost, r.path);
    assert_eq!((r.sent, r.lost, r.connect_failures), (5, 5, 0), "{r:?}");
    assert_eq!(r.path, ["10.79.1.1", "10.79.2.2"], "{closed:?}");
    assert_eq!(closed.traced.get("b"), Some(&true), "{closed:?}");
    let wire = agent::netprobe::prober::peer_to_wire(r);
    assert_eq!(wire.hops, ["10.79.1.1", "10.79.2.2"], "the report carries the hops");
}

#[test]
fn ecmp_paths_follow_the_source_port() {
    let what = "net_trace ecmp";
    let Some(mut n) = Namespaces::new(what) else { return };
    let a = n.add("a", false);
    let r1 = n.add("r1", true);
    let r2a = n.add("r2a", true);
    let r2b = n.add("r2b", true);
    let b = n.add("b", false);
    n.link(&a, "a0", "10.79.1.2", &r1, "r1a", "10.79.1.1");
    n.link(&r1, "r1b", "10.79.2.1", &r2a, "in0", "10.79.2.2");
    n.link(&r1, "r1c", "10.79.3.1", &r2b, "in0", "10.79.3.2");
    n.link(&r2a, "out0", "10.79.4.1", &b, "b1", "10.79.4.2");
    n.link(&r2b, "out0", "10.79.5.1", &b, "b2", "10.79.5.2");
    // B's service address is behind both of its links; R1 spreads flows to it over R2a and R2b by the
    // hash of the 5-tuple, as a switch does. Not policy 1 ("L4"): for a packet that carries a hash already
    // it uses that hash, and over veths a packet keeps the sender socket's random `sk_txhash` (new for
    // every socket), so flows would be spread per socket, not per 5-tuple. Policy 3 hashes exactly the
    // fields named: source and destination address, protocol, source and destination port (0x37).
    sh(&["ip", "-n", &b, "addr", "add", "10.79.9.9/32", "dev", "lo"]).unwrap();
    for s in ["net.ipv4.fib_multipath_hash_policy=3", "net.ipv4.fib_multipath_hash_fields=0x0037"] {
        sh(&["ip", "netns", "exec", &r1, "sysctl", "-qw", s]).unwrap();
    }
    n.route(&a, &["default", "via", "10.79.1.1"]);
    n.route(&r1, &["10.79.9.9/32", "nexthop", "via", "10.79.2.2", "nexthop", "via", "10.79.3.2"]);
    n.route(&r2a, &["10.79.9.9/32", "via", "10.79.4.2"]);
    n.route(&r2a, &["10.79.1.0/24", "via", "10.79.2.1"]);
    n.route(&r2b, &["10.79.9.9/32", "via", "10.79.5.2"]);
    n.route(&r2b, &["10.79.1.0/24", "via", "10.79.3.1"]);
    n.route(&b, &["default", "via", "10.79.4.1"]);
    let dst = SocketAddr::from((Ipv4Addr::new(10, 79, 9, 9), DST_PORT));
    let _listener = listen_in(&b, dst);

    // Every flow twice, the second round after all the first: the same 5-tuple must take the same path.
    let ports: Vec<u16> = (0..ECMP_FLOWS).map(|i| 41_000 + i).collect();
    let flows: Vec<(SocketAddr, SocketAddr)> = [&ports, &ports]
        .into_iter()
        .flatten()
        .map(|&p| (SocketAddr::from(([10, 79, 1, 2], p)), dst))
        .collect();
    let got = traces_in(&a, flows, TraceOpts::default());
    let (first, second) = got.split_at(ports.len());
    let mut middle = std::collections::BTreeMap::<IpAddr, usize>::new();
    for ((port, (t1, took)), (t2, _)) in ports.iter().zip(first).zip(second) {
        println!("[{what}] source port {port}: {:?} reached {} in {took:?}", t1.path(), t1.reached);
        assert!(t1.reached && t2.reached, "{port}: {t1:?} {t2:?}");
        assert_eq!(t1.hops.len(), 2, "{port}: {t1:?}");
        assert_eq!(t1.hops[0], Some(ip("10.79.1.1")), "{port}: {t1:?}");
        assert_eq!(t1.hops, t2.hops, "source port {port} took two paths: {t1:?} {t2:?}");
        *middle.entry(t1.hops[1].unwrap()).or_default() += 1;
    }
    println!("[{what}] flows per middle router: {middle:?}");

    // A real flow on each 5-tuple goes where its trace went: count per source port what R2a and R2b
    // forward to B while every port makes one connection.
    let mut rules =
        "table inet seen {\n chain forward_count {\n  type filter hook forward priority 0; policy \
                     accept;\n"
            .to_string();
    for p in &ports {
        rules += &format!("  ip daddr 10.79.9.9 tcp sport {p} counter\n");
    }
    rules += " }\n}\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    for r in [&r2a, &r2b] {
        sh(&["ip", "netns", "exec", r, "nft", "-f", &file.path().display().to_string()]).unwrap();
    }
    flows_in(&a, ports.iter().map(|&p| SocketAddr::from(([10, 79, 1, 2], p))).collect(), dst);
    let (via_a, via_b) = (forwarded_by_port(&r2a), forwarded_by_port(&r2b));
    for (port, (t, _)) in ports.iter().zip(first) {
        let (na, nb) = (via_a[port], via_b[port]);
        let went = match (na > 0, nb > 0) {
            (true, false) => ip("10.79.2.2"),
            (false, true) => ip("10.79.3.2"),
            _ => panic!("source port {port}: R2a forwarded {na} packets, R2b {nb}"),
        };
        assert_eq!(t.hops[1], Some(went), "source port {port}: the flow went via {went}, its trace {t:?}");
    }
    println!("[{what}] every flow's packets took the router its trace named");
    assert_eq!(
        middle.keys().copied().collect::<Vec<_>>(),
        [ip("10.79.2.2"), ip("10.79.3.2")],
        "{ECMP_FLOWS} source ports should spread over both equal-cost routers: {middle:?}"
    );
}
