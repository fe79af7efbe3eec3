//! The probe responder: answers the `net-probe` checkers of other hosts on the probe port (`[net_probe]
//! listen`, 7791 by default) and nothing else.
//!
//! The protocol is one fixed 16-byte request answered by one fixed 16-byte response on a TCP connection
//! (several probes may follow one another on it):
//! request `HTQ1` + sequence (u64, big-endian) + 4 zero bytes; response `HTR1` + the same sequence + 4 zero
//! bytes. Anything else (a wrong magic, non-zero padding, a short read before the timeout) closes the
//! connection without a word, so the port is useless for anything but probes. Each connection is served
//! by one task with one 16-byte buffer (no allocation per probe); connections are bounded
//! ([`MAX_CONNECTIONS`]), as are the probes per connection and the wait for each request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Size of a probe request and of its response.
pub const PROBE_LEN: usize = 16;
/// First four bytes of a request.
pub const REQUEST_MAGIC: [u8; 4] = *b"HTQ1";
/// First four bytes of a response.
pub const RESPONSE_MAGIC: [u8; 4] = *b"HTR1";
/// Connections served at once. A fleet probes each host about `peers_per_window` times per window
/// (32 per 10 s by default, each connection living a few milliseconds), so a few dozen are open at the
/// busiest; the bound keeps a flood from costing more than this many tasks. Over it, a new connection is
/// closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection may wait for its next request: a prober sends its probes back to back, so an
/// idle connection is a dead or hostile peer holding a slot.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most probes answered on one connection (a prober sends at most `MAX_PROBES_PER_PEER` per window on
/// one): then the connection is closed, so a peer cannot hold a slot forever by probing without pause.
pub const MAX_PROBES_PER_CONNECTION: u32 = 64;

/// The request for probe `seq`.
pub fn request(seq: u64) -> [u8; PROBE_LEN] {
    frame(REQUEST_MAGIC, seq)
}

/// The response to probe `seq`.
pub fn response(seq: u64) -> [u8; PROBE_LEN] {
    frame(RESPONSE_MAGIC, seq)
}

fn frame(magic: [u8; 4], seq: u64) -> [u8; PROBE_LEN] {
    let mut b = [0u8; PROBE_LEN];
    b[..4].copy_from_slice(&magic);
    b[4..12].copy_from_slice(&seq.to_be_bytes());
    b
}

/// The sequence number of a well-formed frame with this magic.
pub fn parse(magic: [u8; 4], b: &[u8; PROBE_LEN]) -> Option<u64> {
    if b[..4] != magic || b[12..] != [0u8; 4] {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&b[4..12]);
    Some(u64::from_be_bytes(seq))
}

/// What the responder counted since it started.
#[derive(Debug, Default)]
pub struct ResponderStats {
    /// Probes answered.
    pub answered: AtomicU64,
    /// Connections closed for a malformed request.
    pub garbage: AtomicU64,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub refused: AtomicU64,
}

/// A bound probe port.
pub struct Responder {
    listener: TcpListener,
    pub stats: Arc<ResponderStats>,
}

impl Responder {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Responder> {
        Ok(Responder { listener: TcpListener::bind(addr).await?, stats: Arc::default() })
    }

    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `stop` turns true; every connection task is owned and ended with it.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = super::stopped(&mut stop) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                        Ok(permit) => {
                            let stats = Arc::clone(&self.stats);
                            conns.spawn(async move {
                                serve(stream, &stats).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            self.stats.refused.fetch_add(1, Ordering::Relaxed);
                            drop(stream);
                        }
                    },
                    // Out of file descriptors and the like: wait a little instead of spinning on accept.
                    Err(e) => {
                        tracing::warn!(error = %e, "probe responder: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Pause after a failed accept (EMFILE): long enough not to spin, short enough not to look dead.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Answer the probes of one connection until it closes, misbehaves, idles or reaches its probe limit.
async fn serve(mut stream: TcpStream, stats: &ResponderStats) {
    // Probes are tiny and latency is what is measured: no Nagle delay on the answers.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = [0u8; PROBE_LEN];
    for _ in 0..MAX_PROBES_PER_CONNECTION {
        match tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            // EOF, reset or idle: the prober is done (or gone).
            _ => return,
        }
        let Some(seq) = parse(REQUEST_MAGIC, &buf) else {
            stats.garbage.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if stream.write_all(&response(seq)).await.is_err() {
            return;
        }
        stats.answered.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let r = request(0x0102_0304_0506_0708);
        assert_eq!(&r[..4], b"HTQ1");
        assert_eq!(parse(REQUEST_MAGIC, &r), Some(0x0102_0304_0506_0708));
        assert_eq!(parse(RESPONSE_MAGIC, &r), None, "a request is not a response");
        assert_eq!(parse(RESPONSE_MAGIC, &response(9)), Some(9));
        let mut padded = request(1);
        padded[15] = 1;
        assert_eq!(parse(REQUEST_MAGIC, &padded), None, "non-zero padding");
        assert_eq!(parse(REQUEST_MAGIC, b"GET / HTTP/1.1\r\n"), None);
    }

    async fn start() -> (SocketAddr, Arc<ResponderStats>, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let r = Responder::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = r.local_addr().unwrap();
        let stats = Arc::clone(&r.stats);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(r.run(rx));
        (addr, stats, tx, task)
    }

    /// Reads until EOF or error; true when the peer closed (EOF or reset) within the bound.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 64];
        let bound = READ_TIMEOUT + Duration::from_secs(10);
        matches!(tokio::time::timeout(bound, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    #[tokio::test]
    async fn answers_probes_and_drops_garbage() {
        let (addr, stats, stop, task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        for seq in [7u64, 8, u64::MAX] {
            s.write_all(&request(seq)).await.unwrap();
            let mut b = [0u8; PROBE_LEN];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(parse(RESPONSE_MAGIC, &b), Some(seq));
        }
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(closed(&mut s).await, "garbage closes the connection without an answer");
        assert_eq!(stats.answered.load(Ordering::Relaxed), 3);
        assert_eq!(stats.garbage.load(Ordering::Relaxed), 1);
        // A short request is not answered either: the connection just ends when the client goes.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request(1)[..10]).await.unwrap();
        s.shutdown().await.unwrap();
        assert!(closed(&mut s).await);
        assert_eq!(stats.answered.load(Ordering::Relaxed), 3);
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_connection_is_closed_after_its_probe_limit() {
        let (addr, stats, stop, task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        for seq in 0..u64::from(MAX_PROBES_PER_CONNECTION) {
            s.write_all(&request(seq)).await.unwrap();
            let mut b = [0u8; PROBE_LEN];
            s.read_exact(&mut b).await.unwrap();
        }
        // One past the limit is written into a closing connection and never answered.
        s.write_all(&request(999)).await.ok();
        assert!(closed(&mut s).await);
        assert_eq!(stats.answered.load(Ordering::Relaxed), u64::from(MAX_PROBES_PER_CONNECTION));
        stop.send_replace(true);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_read_timeout() {
        let (addr, _, stop, task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let opened = tokio::time::Instant::now();
        assert!(closed(&mut s).await, "closed without a request");
        let waited = opened.elapsed();
        assert!(waited >= READ_TIMEOUT - Duration::from_millis(100), "closed after {waited:?}");
        stop.send_replace(true);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_at_once() {
        let (addr, stats, stop, task) = start().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // A probe answered proves the connection holds a slot (accepted and served).
            s.write_all(&request(1)).await.unwrap();
            let mut b = [0u8; PROBE_LEN];
            s.read_exact(&mut b).await.unwrap();
            held.push(s);
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        over.write_all(&request(2)).await.ok();
        assert!(closed(&mut over).await, "the connection past the limit gets no answer");
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        // A slot freed is a slot usable again.
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&request(3)).await.ok();
            let mut b = [0u8; PROBE_LEN];
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await {
                assert_eq!(parse(RESPONSE_MAGIC, &b), Some(3));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the freed slot was never reused");
        }
        stop.send_replace(true);
        task.await.unwrap();
    }
}
