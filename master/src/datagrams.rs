//! Heartbeat datagrams on the gRPC port number over UDP (`proto::datagram`; ARCHITECTURE.md "Heartbeat
//! datagrams"): one thread per member reads them, checks each (size, seal, key, freshness, replay) before
//! anything is decoded or touched, answers the beat with the same code as the `Heartbeat` call
//! (`grpc::beat`), and sends the answer back sealed with the request's key and seq. A datagram that does
//! not open gets no answer at all (nothing unauthenticated makes this port send); an authenticated one that
//! cannot be served gets a short refusal, and its agent sends that beat as a call.

use std::borrow::Cow;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use prost::Message as _;
use proto::api;
use proto::datagram::{self, BeatKey, DatagramError, Kind, MAX_DATAGRAM};
use proto::error::ApiError;

use crate::api::Service;

/// How often the reading thread looks at its stop flag while no datagram arrives.
const STOP_POLL: Duration = Duration::from_millis(200);
/// Beats that could not be answered at once (an order index catching up) run as tasks, at most this many at a time; one more is refused UNAVAILABLE
/// (its agent sends it as a call, which waits in line with the others).
pub const MAX_WAITING_BEATS: usize = 4096;
/// The socket's receive buffer asked of the kernel: about 0.4 s of 10,000 beats a second of 2 KiB each
/// queued while the thread is descheduled (the kernel caps it at `net.core.rmem_max`).
const RECV_BUFFER: usize = 8 << 20;

/// The keys datagrams may be sealed with besides each agent's own (derived from the cluster's heartbeat
/// secret, `Service::beat_secret`): the agent tokens' (by key id), or the open key of a cluster without
/// tokens. Once the cluster holds a secret, a datagram under a token's key is refused (answered CONFLICT:
/// its agent calls and gets its own key) unless `tokens_with_a_secret` (config
/// `heartbeat_datagram_token_keys`, for agents older than the per-agent keys). The open key proves nothing
/// either way and is always taken.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    keys: Vec<BeatKey>,
    tokens_with_a_secret: bool,
}

impl Keys {
    /// No tokens (`--insecure`): the open key only.
    pub fn open() -> Keys {
        Keys { keys: vec![BeatKey::open()], tokens_with_a_secret: true }
    }

    /// Keep taking token keys once the cluster holds a heartbeat secret.
    pub fn taking_tokens_with_a_secret(mut self, on: bool) -> Keys {
        self.tokens_with_a_secret = on;
        self
    }

    /// The tokens with role agent (their sha256 digests as the config holds them).
    pub fn of_agent_tokens(auth: &crate::auth::AuthConfig) -> Keys {
        let keys = auth
            .tokens
            .iter()
            .filter(|t| t.roles.contains(&crate::auth::Role::Agent))
            .filter_map(|t| BeatKey::from_digest_hex(&t.sha256))
            .collect();
        Keys { keys, tokens_with_a_secret: false }
    }

    fn get(&self, id: u64) -> Option<&BeatKey> {
        // A short list (at most `auth::MAX_TOKENS`); the id is public, the comparison need not be constant.
        self.keys.iter().find(|k| k.id() == id)
    }
}

/// What happened to the datagrams this member received (`/metrics`:
/// `huatuo_master_heartbeat_datagrams_total{result}`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Answered with the beat's answer.
    pub answered: AtomicU64,
    /// Answered with a refusal (NOT_LEADER, UNAVAILABLE, INVALID_ARGUMENT ...; the agent sends a call).
    pub refused: AtomicU64,
    /// The answer did not fit a datagram: TOO_BIG answered.
    pub too_big: AtomicU64,
    /// Not a heartbeat datagram, or over the size limit: dropped unanswered.
    pub malformed: AtomicU64,
    /// Sealed with a key this member does not know: dropped unanswered.
    pub unknown_key: AtomicU64,
    /// The seal did not check: dropped unanswered.
    pub bad_seal: AtomicU64,
    /// A seq too far from this member's clock: dropped unanswered.
    pub stale: AtomicU64,
    /// A seq at or below the last one taken from its agent (a replay, or a late duplicate): dropped.
    pub replayed: AtomicU64,
    /// Refused because the beat would change the replicated state (also counted in `refused`).
    pub call_first: AtomicU64,
    /// Sealed with an agent token's key while the cluster holds a heartbeat secret: refused, answered
    /// CONFLICT so its agent calls for its own key (also counted in `refused`).
    pub token_key: AtomicU64,
    /// Beats waiting now (at most [`MAX_WAITING_BEATS`]).
    pub waiting: Waiting,
}

impl Counters {
    /// `(result label, count)` for `/metrics`.
    pub fn results(&self) -> [(&'static str, u64); 10] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("answered", g(&self.answered)),
            ("refused", g(&self.refused)),
            ("call_first", g(&self.call_first)),
            ("token_key", g(&self.token_key)),
            ("too_big", g(&self.too_big)),
            ("malformed", g(&self.malformed)),
            ("unknown_key", g(&self.unknown_key)),
            ("bad_seal", g(&self.bad_seal)),
            ("stale", g(&self.stale)),
            ("replayed", g(&self.replayed)),
        ]
    }
}

/// Beats waiting as tasks: a count with a limit.
#[derive(Debug, Default, Clone)]
pub struct Waiting(Arc<AtomicUsize>);

/// One waiting beat's place, given back when dropped.
#[derive(Debug)]
pub struct WaitingSlot(Arc<AtomicUsize>);

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Waiting {
    /// A place, unless `max` are taken.
    pub fn take(&self, max: usize) -> Option<WaitingSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| WaitingSlot(Arc::clone(&self.0)))
    }

    pub fn now(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// The reading thread, stopped by [`Server::stop`].
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Server {
    /// Bind `addr` (the gRPC listener's address) over UDP and serve heartbeat datagrams there on a thread
    /// of their own, with `rt`'s context (timers, blocking reads) for the beats.
    pub fn start(
        svc: Arc<Service>,
        addr: SocketAddr,
        keys: Keys,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Server> {
        let socket = bind_udp(addr, RECV_BUFFER)?;
        let addr = socket.local_addr()?;
        socket.set_read_timeout(Some(STOP_POLL))?;
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("heartbeat-datagrams".into())
            .spawn(move || serve(&svc, &socket, &keys, &rt, &flag))?;
        Ok(Server { stop, thread: Some(thread), addr })
    }

    /// Stop reading (within [`STOP_POLL`]); beats still waiting as tasks end with the runtime.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// A UDP socket bound to `addr` asking the kernel for a `recv_buffer`-byte receive buffer (capped by
/// `net.core.rmem_max`; a refusal leaves the default).
fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = s.set_recv_buffer_size(recv_buffer) {
        tracing::debug!(error = %e, "cannot size the heartbeat datagram buffer");
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn serve(
    svc: &Arc<Service>,
    socket: &Arc<UdpSocket>,
    keys: &Keys,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) {
    // Beats use tokio's timers and blocking pool: this thread runs them in the API runtime's context.
    let _ctx = rt.enter();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    let mut last_error = None::<std::time::Instant>;
    while !stop.load(Ordering::Acquire) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => take(svc, socket, keys, &buf[..n], from, &mut out),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => {
                // ICMP errors of earlier sends surface here on some kernels; never spin on them.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "reading heartbeat datagrams");
                    last_error = Some(std::time::Instant::now());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One datagram: checked, then answered (or dropped, counted).
fn take(
    svc: &Arc<Service>,
    socket: &Arc<UdpSocket>,
    keys: &Keys,
    buf: &[u8],
    from: SocketAddr,
    out: &mut Vec<u8>,
) {
    let c = &svc.datagrams;
    let count = |a: &AtomicU64| {
        a.fetch_add(1, Ordering::Relaxed);
    };
    let Ok(id) = datagram::key_id(buf) else { return count(&c.malformed) };
    let secret = svc.beat_secret();
    // The agent's own key (derived from the agent the datagram names), else a token's or the open key.
    let (key, own_key_of) = match secret.filter(|s| s.id() == id) {
        Some(s) => {
            let Some(agent) = datagram::agent_of(buf) else { return count(&c.malformed) };
            (Cow::Owned(s.agent_key(agent)), Some(agent))
        }
        None => match keys.get(id) {
            Some(k) => (Cow::Borrowed(k), None),
            None => return count(&c.unknown_key),
        },
    };
    let key: &BeatKey = &key;
    let opened = match datagram::open(buf, key) {
        Ok(o) if o.kind == Kind::Beat => o,
        Ok(_) => return count(&c.malformed),
        Err(DatagramError::BadTag) => return count(&c.bad_seal),
        Err(_) => return count(&c.malformed),
    };
    if !datagram::fresh(opened.seq, crate::api::now_ms()) {
        return count(&c.stale);
    }
    let seq = opened.seq;
    let req = match api::HeartbeatRequest::decode(opened.payload) {
        Ok(r) => r,
        Err(e) => {
            let e = ApiError::invalid(format!("heartbeat datagram does not decode: {e}"));
            return answer(svc, socket, key, seq, from, Err(e), out);
        }
    };
    // Under an agent's own key the request must be that agent's (the decoder takes the last of repeated
    // fields, the key was derived from the first): anything else is forged by another key's holder.
    if own_key_of.is_some_and(|a| a != req.agent) {
        return count(&c.malformed);
    }
    if own_key_of.is_none() && secret.is_some() && !keys.tokens_with_a_secret && id != datagram::OPEN_KEY_ID {
        c.token_key.fetch_add(1, Ordering::Relaxed);
        let e = ApiError::new(
            proto::error::Code::Conflict,
            "heartbeat datagrams are sealed with each agent's own key: send this beat as a call, whose answer \
             carries the key",
        );
        return answer(svc, socket, key, seq, from, Err(e), out);
    }
    if !svc.take_datagram_seq(&req.agent, seq) {
        return count(&c.replayed);
    }
    // Leadership first (a follower's memory is empty): NOT_LEADER names the leader.
    if let Err(e) = svc.leader_gate() {
        return answer(svc, socket, key, seq, from, Err(e), out);
    }
    if !svc.datagram_may_beat(&req.agent, &req.host) {
        c.call_first.fetch_add(1, Ordering::Relaxed);
        let e = ApiError::new(
            proto::error::Code::Conflict,
            "this beat changes the replicated state (an agent new to this leader, silent, or on another host): \
             send it as a call",
        );
        return answer(svc, socket, key, seq, from, Err(e), out);
    }
    let beat_svc = Arc::clone(svc);
    // Never the agent's key in a datagram's answer: datagrams are sealed, not encrypted.
    let mut beat =
        Box::pin(async move { crate::grpc::beat(&beat_svc, req, false).await.map_err(ApiError::from) });
    // A known agent's steady beat completes in one poll (no read, no wait): answered on this thread.
    if let Some(r) = (&mut beat).now_or_never() {
        return answer(svc, socket, key, seq, from, r, out);
    }
    let Some(slot) = c.waiting.take(MAX_WAITING_BEATS) else {
        let e = ApiError::unavailable(format!("{MAX_WAITING_BEATS} heartbeat datagrams waiting: send calls"));
        return answer(svc, socket, key, seq, from, Err(e), out);
    };
    let (svc, socket, key) = (Arc::clone(svc), Arc::clone(socket), key.clone());
    tokio::spawn(async move {
        let r = beat.await;
        drop(slot);
        answer(&svc, &socket, &key, seq, from, r, &mut Vec::new());
    });
}

fn answer(
    svc: &Service,
    socket: &UdpSocket,
    key: &BeatKey,
    seq: u64,
    to: SocketAddr,
    r: Result<api::HeartbeatResponse, ApiError>,
    out: &mut Vec<u8>,
) {
    let c = &svc.datagrams;
    let reply = match r {
        Ok(resp) => api::BeatReply { response: Some(resp), ..Default::default() },
        Err(e) => api::BeatReply {
            code: e.code.as_str().to_string(),
            message: e.message,
            leader: e.leader.unwrap_or_default(),
            response: None,
        },
    };
    let ok = reply.code.is_empty();
    let sealed = match datagram::seal(key, Kind::Reply, seq, &reply, out) {
        Ok(()) => {
            let counter = if ok { &c.answered } else { &c.refused };
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(_) => {
            c.too_big.fetch_add(1, Ordering::Relaxed);
            let short = api::BeatReply {
                code: "TOO_BIG".into(),
                message: format!("the answer does not fit a datagram of {MAX_DATAGRAM} bytes: send a call"),
                ..Default::default()
            };
            datagram::seal(key, Kind::Reply, seq, &short, out)
        }
    };
    if sealed.is_ok()
        && let Err(e) = socket.send_to(out, to)
    {
        tracing::debug!(error = %e, %to, "sending a heartbeat datagram's answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_beats_are_bounded_and_a_place_comes_back_when_its_beat_ends() {
        let w = Waiting::default();
        let mut slots: Vec<WaitingSlot> = (0..3).map(|_| w.take(3).expect("a place")).collect();
        assert_eq!(w.now(), 3);
        assert!(w.take(3).is_none(), "a fourth beat waited past the limit");
        drop(slots.pop());
        assert_eq!(w.now(), 2);
        let again = w.take(3).expect("the place given back");
        assert!(w.take(3).is_none());
        drop(again);
        assert_eq!(w.now(), 2);
        drop(slots);
        assert_eq!(w.now(), 0);
    }

    #[test]
    fn only_agent_tokens_make_keys() {
        let digest = |t: &str| proto::tls::Token::new(t).sha256_hex();
        let entry =
            |name: &str, roles| crate::auth::TokenEntry { name: name.into(), sha256: digest(name), roles };
        let auth = crate::auth::AuthConfig {
            tokens: vec![
                entry("agents", vec![crate::auth::Role::Agent]),
                entry("ops", vec![crate::auth::Role::Operator]),
                entry("both", vec![crate::auth::Role::Read, crate::auth::Role::Agent]),
            ],
        };
        let keys = Keys::of_agent_tokens(&auth);
        let id = |t: &str| BeatKey::from_token(&proto::tls::Token::new(t)).id();
        assert!(keys.get(id("agents")).is_some() && keys.get(id("both")).is_some());
        assert!(keys.get(id("ops")).is_none(), "an operator token seals heartbeats");
        assert!(keys.get(BeatKey::open().id()).is_none(), "a secure member takes the open key");
        assert!(Keys::open().get(BeatKey::open().id()).is_some());
    }
}
