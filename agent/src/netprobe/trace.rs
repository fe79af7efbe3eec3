//! Path evidence for a lossy flow (issue 16): a TCP traceroute that reuses the flow's own 5-tuple, so an
//! ECMP fabric hashes the trace's SYNs onto the same path as the flow's probes (Microsoft's 007, NSDI 2018).
//!
//! No raw or ICMP sockets: for TTL 1, 2, ... a fresh non-blocking TCP socket, bound to the flow's local
//! address and port (`SO_REUSEADDR`), with `IP_TTL` (`IPV6_UNICAST_HOPS`) and `IP_RECVERR`
//! (`IPV6_RECVERR`) set, connects to the flow's destination. A SYN whose TTL runs out makes the router
//! send ICMP time-exceeded; with `IP_RECVERR` on, the kernel (`tcp_v4_err` -> `ip_icmp_error` for a
//! SYN_SENT socket) fails the connect with EHOSTUNREACH and queues a `sock_extended_err` naming the
//! router (`SO_EE_OFFENDER`) on the socket's error queue, read with `recvmsg(MSG_ERRQUEUE)`. A connect that
//! succeeds or is refused (RST) reached the destination; a hop that stays silent for the hop timeout is
//! `None` ("*"). Every socket is closed with `SO_LINGER` 0 (set when it is made, so dropping it at any
//! point, a cancelled trace included, aborts it): no TIME_WAIT holds the 4-tuple for the next hop, nor for
//! the prober's next window.
//!
//! One SYN per hop: the hop timeout is kept under TCP's initial retransmission timeout (1 s), so the kernel
//! never retransmits a trace's SYN; a trace sends at most `max_hops` SYNs, plus an ACK and a RST when it
//! reaches a listening destination ([`TraceOpts::worst_case_segments`]).
//!
//! The parsing of the error queue's control message is the pure [`parse_errqueue`], tested on byte
//! buffers; the real-packet test is `tests/tests/net_trace.rs` (routers in network namespaces).

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, MsgHdrMut, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::time::Instant;

/// Most hops a trace tries: a Clos fabric is at most 5 switches from host to host (ToR, aggregation,
/// spine, aggregation, ToR); 16 leaves room for a routed path out of the fabric and bounds a trace's SYNs.
pub const MAX_HOPS: u8 = 16;
// The master refuses a report with a longer path (netvote's window and the report checks).
const _: () = assert!(MAX_HOPS as usize <= netvote::MAX_PATH_HOPS);
/// How long one hop waits for its ICMP answer or the destination's handshake by default: fabric RTTs are
/// under a millisecond, a switch's CPU answers ICMP within tens of milliseconds.
pub const HOP_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest hop timeout accepted: under TCP's initial retransmission timeout (1 s, `TCP_TIMEOUT_INIT`),
/// so the kernel never sends a second SYN for a hop and a trace's cost is one SYN per hop.
pub const MAX_HOP_TIMEOUT: Duration = Duration::from_millis(900);
/// The default, and the longest, time one trace may take overall: a path that goes silent part way (a
/// black hole) would otherwise cost `MAX_HOPS` hop timeouts (4 s by default).
pub const TRACE_DEADLINE: Duration = Duration::from_secs(3);
/// Control buffer for one error-queue message: a `cmsghdr` (16 bytes), a `sock_extended_err` (16) and a
/// `sockaddr_in6` (28), aligned, with room.
const CONTROL_LEN: usize = 128;
/// Pause before a hop's bind or connect is tried again after EADDRINUSE / EADDRNOTAVAIL: the flow's port or
/// 4-tuple can stay taken for a moment after the socket that had it was closed (seen in the namespace tests:
/// after a silent hop, or the prober's aborted probe connection, in most runs once, one retry enough; `ss`
/// shows no socket by then; the cause was not pinned down, a likely one is another thread's fork holding
/// the closed socket's file until its exec). Retried until the hop's time is up, then the error stands.
const ADDR_BUSY_RETRY: Duration = Duration::from_millis(2);

// Kernel ABI constants libc does not name on every target (include/uapi/linux/errqueue.h, in.h, in6.h).
/// `ee_origin` of an error queued from an ICMP message.
pub const SO_EE_ORIGIN_ICMP: u8 = 2;
/// `ee_origin` of an error queued from an ICMPv6 message.
pub const SO_EE_ORIGIN_ICMP6: u8 = 3;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_TIME_EXCEED: u8 = 3;
/// `struct sock_extended_err`: errno u32, origin u8, type u8, code u8, pad u8, info u32, data u32.
const EXTENDED_ERR_LEN: usize = 16;

/// What a trace may do; [`TraceOpts::default`] is what the prober uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceOpts {
    /// 1..=[`MAX_HOPS`].
    pub max_hops: u8,
    /// Per hop, 1 ms..=[`MAX_HOP_TIMEOUT`].
    pub hop_timeout: Duration,
    /// The whole trace, at most [`TRACE_DEADLINE`]: when it passes, the hops so far are returned.
    pub deadline: Duration,
}

impl Default for TraceOpts {
    fn default() -> Self {
        TraceOpts { max_hops: MAX_HOPS, hop_timeout: HOP_TIMEOUT, deadline: TRACE_DEADLINE }
    }
}

impl TraceOpts {
    pub fn validate(&self) -> Result<(), TraceError> {
        if !(1..=MAX_HOPS).contains(&self.max_hops) {
            return Err(TraceError::Opts(format!("max_hops {} is not in 1..={MAX_HOPS}", self.max_hops)));
        }
        if self.hop_timeout < Duration::from_millis(1) || self.hop_timeout > MAX_HOP_TIMEOUT {
            return Err(TraceError::Opts(format!(
                "hop_timeout {:?} is not in 1ms..={MAX_HOP_TIMEOUT:?}",
                self.hop_timeout
            )));
        }
        if self.deadline > TRACE_DEADLINE {
            return Err(TraceError::Opts(format!("deadline {:?} is over {TRACE_DEADLINE:?}", self.deadline)));
        }
        Ok(())
    }

    /// The most segments a trace with these options sends: a SYN per hop, and the ACK and the RST that
    /// complete and abort the handshake with a listening destination.
    pub fn worst_case_segments(&self) -> u64 {
        u64::from(self.max_hops) + 2
    }
}

/// A traced path: the routers between this host and the destination, in order (`None`: the hop did not
/// answer in time), never the destination itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub hops: Vec<Option<IpAddr>>,
    /// The destination answered (handshake or RST) at hop `hops.len() + 1`.
    pub reached: bool,
    /// Connects made, one SYN each (for the byte budget).
    pub syns: u32,
    /// The destination completed the handshake: an ACK and a RST were sent as well.
    pub connected: bool,
}

impl Trace {
    /// Segments the trace sent on the wire.
    pub fn segments(&self) -> u64 {
        u64::from(self.syns) + if self.connected { 2 } else { 0 }
    }

    /// The hops as path evidence (`netvote::PeerResult::path`): an address per hop that answered, `*` for
    /// one that did not.
    pub fn path(&self) -> Vec<String> {
        self.hops
            .iter()
            .map(|h| h.map_or_else(|| netvote::UNKNOWN_HOP.to_string(), |a| a.to_string()))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace options: {0}")]
    Opts(String),
    #[error("local address {local} and destination {dst} are not of one family")]
    Family { local: SocketAddr, dst: SocketAddr },
    #[error("destination {0} is not a unicast address and port")]
    Destination(SocketAddr),
    #[error("trace socket: {0}")]
    Socket(#[source] io::Error),
    #[error("binding the trace socket to {local}: {source}")]
    Bind { local: SocketAddr, source: io::Error },
    #[error("connecting to {dst} with TTL {ttl}: {source}")]
    Connect { dst: SocketAddr, ttl: u8, source: io::Error },
    #[error("reading the trace socket's error queue: {0}")]
    ErrQueue(#[source] io::Error),
}

/// What one ICMP(v6) error on the error queue says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReport {
    /// `ee_origin`: [`SO_EE_ORIGIN_ICMP`] or [`SO_EE_ORIGIN_ICMP6`].
    pub origin: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `ee_errno`: what the connect failed with (EHOSTUNREACH for time-exceeded).
    pub errno: u32,
    /// Who sent it (`SO_EE_OFFENDER`); `None` when the kernel did not say.
    pub offender: Option<IpAddr>,
}

impl IcmpReport {
    pub fn is_time_exceeded(&self) -> bool {
        matches!(
            (self.origin, self.icmp_type),
            (SO_EE_ORIGIN_ICMP, ICMP_TIME_EXCEEDED) | (SO_EE_ORIGIN_ICMP6, ICMPV6_TIME_EXCEED)
        )
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(
            (self.origin, self.icmp_type),
            (SO_EE_ORIGIN_ICMP, ICMP_DEST_UNREACH) | (SO_EE_ORIGIN_ICMP6, ICMPV6_DEST_UNREACH)
        )
    }
}

/// Parse the control buffer of one `recvmsg(MSG_ERRQUEUE)` (Linux's `cmsghdr` layout on this target):
/// the first `IP_RECVERR` (level `SOL_IP`) or `IPV6_RECVERR` (level `SOL_IPV6`) message whose origin is
/// ICMP or ICMPv6. Other messages, and truncated ones, are skipped. Pure: tested on byte buffers.
pub fn parse_errqueue(control: &[u8]) -> Option<IcmpReport> {
    let word = std::mem::size_of::<usize>();
    let align = |n: usize| n.div_ceil(word) * word;
    let header = align(std::mem::size_of::<libc::cmsghdr>());
    let mut at = 0;
    while at + header <= control.len() {
        let len = usize_at(control, at, word)?;
        let level = i32_at(control, at + word)?;
        let ty = i32_at(control, at + word + 4)?;
        if len < header || at + len > control.len() {
            return None;
        }
        let data = &control[at + header..at + len];
        let ours = (level == libc::SOL_IP && ty == libc::IP_RECVERR)
            || (level == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR);
        if ours && let Some(r) = parse_extended_err(data) {
            return Some(r);
        }
        at += align(len);
    }
    None
}

/// A `sock_extended_err` followed by the offender's `sockaddr_in` / `sockaddr_in6`.
fn parse_extended_err(data: &[u8]) -> Option<IcmpReport> {
    if data.len() < EXTENDED_ERR_LEN {
        return None;
    }
    let origin = data[4];
    if origin != SO_EE_ORIGIN_ICMP && origin != SO_EE_ORIGIN_ICMP6 {
        return None;
    }
    let addr = &data[EXTENDED_ERR_LEN..];
    let family = addr.get(..2).map(|f| i32::from(u16::from_ne_bytes([f[0], f[1]])));
    let offender = match family {
        Some(libc::AF_INET) if addr.len() >= 8 => {
            Some(IpAddr::V4(Ipv4Addr::new(addr[4], addr[5], addr[6], addr[7])))
        }
        Some(libc::AF_INET6) if addr.len() >= 24 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&addr[8..24]);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    };
    Some(IcmpReport {
        origin,
        icmp_type: data[5],
        icmp_code: data[6],
        errno: u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
        offender,
    })
}

fn usize_at(b: &[u8], at: usize, word: usize) -> Option<usize> {
    let s = b.get(at..at + word)?;
    match word {
        8 => Some(u64::from_ne_bytes(s.try_into().ok()?) as usize),
        4 => Some(u32::from_ne_bytes(s.try_into().ok()?) as usize),
        _ => None,
    }
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What one hop's connect came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HopOutcome {
    /// The destination completed the handshake.
    Connected,
    /// The destination answered: RST, or an ICMP unreachable it sent itself.
    Refused,
    /// A router said the TTL ran out.
    Router(IpAddr),
    /// A router said the destination is unreachable: the path ends there.
    Unreachable(IpAddr),
    /// Nothing came in time.
    Silent,
}

/// Trace the path from `local` (the flow's source address and port; port 0 lets the kernel choose a
/// port per hop, IP unspecified lets it choose the source address) to `dst`, one TTL after another until
/// the destination answers, `max_hops`, or the deadline.
pub async fn trace(local: SocketAddr, dst: SocketAddr, opts: &TraceOpts) -> Result<Trace, TraceError> {
    opts.validate()?;
    if local.is_ipv4() != dst.is_ipv4() {
        return Err(TraceError::Family { local, dst });
    }
    if dst.port() == 0 || dst.ip().is_unspecified() || dst.ip().is_multicast() {
        return Err(TraceError::Destination(dst));
    }
    let deadline = Instant::now() + opts.deadline;
    let mut t = Trace::default();
    for ttl in 1..=opts.max_hops {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let until = deadline.min(now + opts.hop_timeout);
        t.syns += 1;
        match hop(local, dst, ttl, until).await? {
            HopOutcome::Connected => {
                t.connected = true;
                t.reached = true;
            }
            HopOutcome::Refused => t.reached = true,
            HopOutcome::Router(a) if a == dst.ip() => t.reached = true,
            HopOutcome::Router(a) => t.hops.push(Some(a)),
            HopOutcome::Unreachable(a) => {
                if a == dst.ip() {
                    t.reached = true;
                } else {
                    t.hops.push(Some(a));
                }
                return Ok(t);
            }
            HopOutcome::Silent => t.hops.push(None),
        }
        if t.reached {
            break;
        }
    }
    Ok(t)
}

/// One hop: a fresh socket with TTL `ttl` connects to `dst` and waits until `until`.
async fn hop(local: SocketAddr, dst: SocketAddr, ttl: u8, until: Instant) -> Result<HopOutcome, TraceError> {
    let sock = loop {
        let sock = match hop_socket(local, ttl) {
            Ok(s) => s,
            Err(TraceError::Bind { source, .. })
                if source.raw_os_error() == Some(libc::EADDRINUSE)
                    && Instant::now() + ADDR_BUSY_RETRY < until =>
            {
                tokio::time::sleep(ADDR_BUSY_RETRY).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        match sock.connect(&SockAddr::from(dst)) {
            Ok(()) => return Ok(HopOutcome::Connected),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => break sock,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Ok(HopOutcome::Refused),
            // The 4-tuple is still hashed (see ADDR_BUSY_RETRY). Nothing was sent: try again shortly.
            Err(e)
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    && Instant::now() + ADDR_BUSY_RETRY < until =>
            {
                drop(sock);
                tokio::time::sleep(ADDR_BUSY_RETRY).await;
            }
            Err(e) => {
                // An ICMP answer can be reported before connect() returns (it never is on Linux, but the
                // queue is the truth); otherwise the connect itself is impossible (no route, the 4-tuple
                // in use).
                return match read_errqueue(&sock)? {
                    Some(r) => Ok(classify(&r, dst)),
                    None => Err(TraceError::Connect { dst, ttl, source: e }),
                };
            }
        }
    };
    // Registered with tokio's reactor to wait for the connect's end (a failed connect is writable too).
    let stream =
        tokio::net::TcpStream::from_std(std::net::TcpStream::from(sock)).map_err(TraceError::Socket)?;
    loop {
        let woken = tokio::time::timeout_at(until, stream.writable()).await;
        let sock = SockRef::from(&stream);
        match woken {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(TraceError::Socket(e)),
            // Timed out: an ICMP that came while the socket was busy is queued without failing the
            // connect, so the queue still has the last word.
            Err(_elapsed) => {
                return Ok(read_errqueue(&sock)?.map_or(HopOutcome::Silent, |r| classify(&r, dst)));
            }
        }
        // The error queue first: the kernel queues the ICMP (and wakes this task) before it fails the
        // connect, so the socket's own error may not be set yet.
        if let Some(r) = read_errqueue(&sock)? {
            return Ok(classify(&r, dst));
        }
        match sock.take_error().map_err(TraceError::Socket)? {
            Some(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Ok(HopOutcome::Refused),
            Some(_) => return Ok(HopOutcome::Silent),
            None if stream.peer_addr().is_ok() => return Ok(HopOutcome::Connected),
            // Woken before the connect ended: clear the readiness and wait again.
            None => {
                let _ = stream.try_io(Interest::WRITABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
            }
        }
    }
}

fn classify(r: &IcmpReport, dst: SocketAddr) -> HopOutcome {
    match r.offender {
        Some(a) if r.is_time_exceeded() => HopOutcome::Router(a),
        Some(a) if a == dst.ip() => HopOutcome::Refused,
        Some(a) if r.is_unreachable() => HopOutcome::Unreachable(a),
        _ => HopOutcome::Silent,
    }
}

fn hop_socket(local: SocketAddr, ttl: u8) -> Result<Socket, TraceError> {
    let domain = if local.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let sock = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))
        .map_err(TraceError::Socket)?;
    // Abortive close from the start: however this socket ends, no TIME_WAIT keeps the 4-tuple.
    sock.set_linger(Some(Duration::ZERO)).map_err(TraceError::Socket)?;
    sock.set_reuse_address(true).map_err(TraceError::Socket)?;
    if local.is_ipv4() {
        sock.set_ttl_v4(u32::from(ttl)).map_err(TraceError::Socket)?;
        set_int_opt(&sock, libc::SOL_IP, libc::IP_RECVERR, 1).map_err(TraceError::Socket)?;
    } else {
        sock.set_only_v6(true).map_err(TraceError::Socket)?;
        sock.set_unicast_hops_v6(u32::from(ttl)).map_err(TraceError::Socket)?;
        set_int_opt(&sock, libc::SOL_IPV6, libc::IPV6_RECVERR, 1).map_err(TraceError::Socket)?;
    }
    if local.port() != 0 || !local.ip().is_unspecified() {
        sock.bind(&SockAddr::from(local)).map_err(|source| TraceError::Bind { local, source })?;
    }
    Ok(sock)
}

/// `setsockopt` of an int option socket2 does not wrap (`IP_RECVERR`, `IPV6_RECVERR`).
#[allow(unsafe_code)]
fn set_int_opt(sock: &Socket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is open for the call (borrowed from `sock`), the value pointer and length describe one
    // live c_int, and the kernel only reads from it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One message from the socket's error queue, if any (never blocks: `MSG_ERRQUEUE` does not wait).
fn read_errqueue(sock: &Socket) -> Result<Option<IcmpReport>, TraceError> {
    // Zeroed, so every byte is initialised whatever recvmsg writes.
    let mut control = [MaybeUninit::new(0u8); CONTROL_LEN];
    let mut data = [MaybeUninit::new(0u8); 64];
    let mut bufs = [socket2::MaybeUninitSlice::new(&mut data)];
    let mut msg = MsgHdrMut::new().with_buffers(&mut bufs).with_control(&mut control);
    let n = match sock.recvmsg(&mut msg, libc::MSG_ERRQUEUE) {
        Ok(_) => msg.control_len().min(CONTROL_LEN),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(TraceError::ErrQueue(e)),
    };
    let control = initialised(control);
    Ok(parse_errqueue(&control[..n]))
}

#[allow(unsafe_code)]
fn initialised(buf: [MaybeUninit<u8>; CONTROL_LEN]) -> [u8; CONTROL_LEN] {
    // SAFETY: the buffer was created with every byte initialised (zeros) and recvmsg(2) only overwrites
    // bytes, so every element is initialised.
    buf.map(|b| unsafe { b.assume_init() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A control buffer as the kernel lays it out: `cmsghdr` (len, level, type), data, padding.
    fn cmsg(level: i32, ty: i32, data: &[u8]) -> Vec<u8> {
        let word = std::mem::size_of::<usize>();
        let header = std::mem::size_of::<libc::cmsghdr>().div_ceil(word) * word;
        let len = header + data.len();
        let mut b = vec![0u8; len.div_ceil(word) * word];
        b[..word].copy_from_slice(&len.to_ne_bytes());
        b[word..word + 4].copy_from_slice(&level.to_ne_bytes());
        b[word + 4..word + 8].copy_from_slice(&ty.to_ne_bytes());
        b[header..len].copy_from_slice(data);
        b
    }

    fn ext_err(errno: u32, origin: u8, ty: u8, code: u8, offender: &[u8]) -> Vec<u8> {
        let mut d = errno.to_ne_bytes().to_vec();
        d.extend([origin, ty, code, 0]);
        d.extend([0u8; 8]); // ee_info, ee_data
        d.extend(offender);
        d
    }

    fn sockaddr_in(ip: [u8; 4]) -> Vec<u8> {
        let mut s = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        s.extend([0, 0]);
        s.extend(ip);
        s.extend([0u8; 8]);
        s
    }

    fn sockaddr_in6(ip: Ipv6Addr) -> Vec<u8> {
        let mut s = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        s.extend([0u8; 6]); // port, flowinfo
        s.extend(ip.octets());
        s.extend([0u8; 4]); // scope id
        s
    }

    #[test]
    fn an_icmp_time_exceeded_names_the_router() {
        // The 32 data bytes this machine's kernel queued for a SYN whose TTL ran out at 10.79.1.1
        // (recorded with a Python probe through two namespace routers, 2026-12-03).
        let recorded = [
            0x71, 0, 0, 0, 2, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 10, 79, 1, 1, 0, 0, 0, 0, 0, 0,
            0, 0,
        ];
        let r = parse_errqueue(&cmsg(libc::SOL_IP, libc::IP_RECVERR, &recorded)).unwrap();
        assert_eq!(r.errno, libc::EHOSTUNREACH as u32);
        assert_eq!((r.origin, r.icmp_type, r.icmp_code), (SO_EE_ORIGIN_ICMP, 11, 0));
        assert_eq!(r.offender, Some(IpAddr::from([10, 79, 1, 1])));
        assert!(r.is_time_exceeded() && !r.is_unreachable());
        let built = ext_err(113, 2, 11, 0, &sockaddr_in([10, 79, 1, 1]));
        assert_eq!(built, recorded, "the test's builder lays out what the kernel does");
    }

    #[test]
    fn icmpv6_and_unreachable_and_unknown_offenders() {
        let v6: Ipv6Addr = "fd00:79::1".parse().unwrap();
        let b = cmsg(libc::SOL_IPV6, libc::IPV6_RECVERR, &ext_err(113, 3, 3, 0, &sockaddr_in6(v6)));
        let r = parse_errqueue(&b).unwrap();
        assert!(r.is_time_exceeded());
        assert_eq!(r.offender, Some(IpAddr::V6(v6)));
        let b = cmsg(libc::SOL_IP, libc::IP_RECVERR, &ext_err(113, 2, 3, 1, &sockaddr_in([10, 0, 0, 9])));
        let r = parse_errqueue(&b).unwrap();
        assert!(r.is_unreachable() && !r.is_time_exceeded());
        assert_eq!(r.icmp_code, 1);
        // AF_UNSPEC offender: reported, but nobody named.
        let b = cmsg(libc::SOL_IP, libc::IP_RECVERR, &ext_err(113, 2, 11, 0, &[0u8; 16]));
        assert_eq!(parse_errqueue(&b).unwrap().offender, None);
    }

    #[test]
    fn other_messages_and_truncated_buffers_are_not_reports() {
        let icmp = ext_err(113, 2, 11, 0, &sockaddr_in([10, 79, 2, 2]));
        // A local error (origin 1) first, then the ICMP one: the ICMP one is found.
        let mut b = cmsg(libc::SOL_IP, libc::IP_RECVERR, &ext_err(90, 1, 0, 0, &[0u8; 16]));
        b.extend(cmsg(libc::SOL_IP, libc::IP_RECVERR, &icmp));
        assert_eq!(parse_errqueue(&b).unwrap().offender, Some(IpAddr::from([10, 79, 2, 2])));
        // Another option's message (IP_TTL) is skipped.
        let mut b = cmsg(libc::SOL_IP, libc::IP_TTL, &[64, 0, 0, 0]);
        b.extend(cmsg(libc::SOL_IP, libc::IP_RECVERR, &icmp));
        assert!(parse_errqueue(&b).is_some());
        assert_eq!(parse_errqueue(&cmsg(libc::SOL_IP, libc::IP_TTL, &[64, 0, 0, 0])), None);
        let whole = cmsg(libc::SOL_IP, libc::IP_RECVERR, &icmp);
        for cut in 0..whole.len() - 7 {
            // Every truncation short of the offender's address bytes: no report, no panic.
            let r = parse_errqueue(&whole[..cut]);
            assert!(r.is_none() || r.unwrap().offender.is_some(), "cut {cut}");
        }
        assert_eq!(parse_errqueue(&[]), None);
        // A length field pointing past the buffer.
        let mut bad = whole.clone();
        bad[..8].copy_from_slice(&1000usize.to_ne_bytes()[..8]);
        assert_eq!(parse_errqueue(&bad), None);
    }

    #[test]
    fn options_are_checked_at_their_limits() {
        let ok = TraceOpts::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.worst_case_segments(), u64::from(MAX_HOPS) + 2);
        let bad = |o: TraceOpts| o.validate().unwrap_err().to_string();
        assert!(bad(TraceOpts { max_hops: MAX_HOPS + 1, ..ok }).contains("max_hops 17"));
        assert!(bad(TraceOpts { max_hops: 0, ..ok }).contains("max_hops 0"));
        assert!(TraceOpts { hop_timeout: MAX_HOP_TIMEOUT, ..ok }.validate().is_ok());
        let over = MAX_HOP_TIMEOUT + Duration::from_millis(1);
        assert!(bad(TraceOpts { hop_timeout: over, ..ok }).contains("hop_timeout"));
        assert!(bad(TraceOpts { hop_timeout: Duration::ZERO, ..ok }).contains("hop_timeout"));
        let over = TRACE_DEADLINE + Duration::from_millis(1);
        assert!(bad(TraceOpts { deadline: over, ..ok }).contains("deadline"));
        assert!(MAX_HOP_TIMEOUT < Duration::from_secs(1), "one SYN per hop (TCP's initial RTO is 1 s)");
    }

    #[tokio::test]
    async fn a_listening_destination_on_loopback_is_reached_at_the_first_hop() {
        let l = tokio::net::TcpListener::bind("127.0.0.51:0").await.unwrap();
        let dst = l.local_addr().unwrap();
        let started = Instant::now();
        let t = trace("127.0.0.1:0".parse().unwrap(), dst, &TraceOpts::default()).await.unwrap();
        println!("loopback trace to a listener: {:?}", started.elapsed());
        assert_eq!(t, Trace { hops: vec![], reached: true, syns: 1, connected: true });
        assert!(t.path().is_empty());
        assert_eq!(t.segments(), 3);
    }

    #[tokio::test]
    async fn a_refusing_destination_is_reached_and_the_flows_port_is_reused() {
        let gone = std::net::TcpListener::bind("127.0.0.52:0").unwrap();
        let dst = gone.local_addr().unwrap();
        drop(gone);
        // The source port of a flow that just ended: the trace binds it again, once per hop.
        let flow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = flow.local_addr().unwrap();
        drop(flow);
        for _ in 0..3 {
            let t = trace(local, dst, &TraceOpts::default()).await.unwrap();
            assert_eq!(t, Trace { hops: vec![], reached: true, syns: 1, connected: false });
        }
    }

    /// A loopback listener that never answers a SYN: its accept queue is full, so the kernel drops them.
    pub(crate) fn silent_listener(ip: [u8; 4]) -> (Socket, Vec<std::net::TcpStream>, SocketAddr) {
        let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        l.bind(&SockAddr::from(SocketAddr::from((ip, 0)))).unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue (backlog 0 holds one); connects past it time out instead of completing.
        let mut held = Vec::new();
        for _ in 0..2 {
            if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                held.push(s);
            }
        }
        (l, held, addr)
    }

    #[tokio::test]
    async fn a_silent_destination_costs_max_hops_hop_timeouts_and_no_more() {
        let (_l, _held, dst) = silent_listener([127, 0, 0, 53]);
        let opts =
            TraceOpts { max_hops: MAX_HOPS, hop_timeout: Duration::from_millis(20), ..Default::default() };
        let started = Instant::now();
        let t = trace("127.0.0.1:0".parse().unwrap(), dst, &opts).await.unwrap();
        let took = started.elapsed();
        assert_eq!(t.hops, vec![None; usize::from(MAX_HOPS)], "every hop silent, exactly max_hops of them");
        assert!(!t.reached);
        assert_eq!(t.syns, u32::from(MAX_HOPS));
        assert_eq!(t.path(), vec!["*"; usize::from(MAX_HOPS)]);
        assert!(took >= Duration::from_millis(20) * u32::from(MAX_HOPS), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn the_overall_deadline_cuts_a_trace_short() {
        let (_l, _held, dst) = silent_listener([127, 0, 0, 54]);
        let opts = TraceOpts {
            hop_timeout: Duration::from_millis(100),
            deadline: Duration::from_millis(350),
            ..Default::default()
        };
        let started = Instant::now();
        let t = trace("127.0.0.1:0".parse().unwrap(), dst, &opts).await.unwrap();
        let took = started.elapsed();
        assert!(!t.reached);
        assert_eq!(t.hops.len(), 4, "three whole hops and one cut at the deadline: {t:?}");
        assert!(took >= Duration::from_millis(350) && took < Duration::from_millis(350 + 250), "{took:?}");
    }

    #[tokio::test]
    async fn bad_arguments_are_clear_errors() {
        let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let e = trace(v4, v6, &TraceOpts::default()).await.unwrap_err();
        assert!(matches!(e, TraceError::Family { .. }), "{e}");
        let e = trace(v4, "127.0.0.1:0".parse().unwrap(), &TraceOpts::default()).await.unwrap_err();
        assert!(matches!(e, TraceError::Destination(_)), "{e}");
        // A port held by a listener cannot be bound for the trace.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = trace(held.local_addr().unwrap(), "127.0.0.55:9".parse().unwrap(), &TraceOpts::default())
            .await
            .unwrap_err();
        assert!(matches!(e, TraceError::Bind { .. }), "{e}");
        assert!(e.to_string().contains("binding the trace socket"), "{e}");
    }

    #[tokio::test]
    async fn ipv6_loopback_is_reached_too() {
        let Ok(l) = tokio::net::TcpListener::bind("[::1]:0").await else {
            println!("SKIPPED: no IPv6 loopback here");
            return;
        };
        let t =
            trace("[::]:0".parse().unwrap(), l.local_addr().unwrap(), &TraceOpts::default()).await.unwrap();
        assert!(t.reached && t.hops.is_empty(), "{t:?}");
    }
}
