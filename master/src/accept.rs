//! Accepting connections on the master's ports (gRPC, peer, HTTP, HTTPS) when the process runs out of file
//! descriptors or kernel memory.
//!
//! Every agent keeps one connection to the member it believes leads (its heartbeat and ingest streams), so a
//! fleet larger than the process's open-files limit exhausts it. `accept` then fails with `EMFILE` and the
//! connection stays queued, so the listening socket stays readable: tonic's accept loop retried at once and
//! spun (one real master measured 6.0 CPU-seconds in 5 s on a 2-core machine, enough to starve a leader's
//! Raft thread into elections). Here a failed accept that is not the peer's doing (a connection reset or
//! aborted before it was accepted) pauses the port for [`ACCEPT_PAUSE`], is counted per port
//! (`huatuo_master_accept_errors_total`), and is logged as a warning at most every [`WARN_EVERY`] per port
//! with the process's open-files limit. Queued connections wait in the listen backlog meanwhile (their
//! clients retry when it is full), and the port takes them as descriptors free up.
//!
//! The master also raises its soft open-files limit to the hard one when it starts
//! ([`raise_open_files_limit`]); the shipped systemd unit sets both to 1,048,576.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};

/// How long a port waits after an accept failed for lack of a resource before it accepts again.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning per port this often while its accepts keep failing.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// A listening port of the master, as named in `huatuo_master_accept_errors_total{port}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Grpc,
    Peer,
    Http,
    Https,
}

impl Port {
    pub const ALL: [Port; 4] = [Port::Grpc, Port::Peer, Port::Http, Port::Https];

    pub fn name(self) -> &'static str {
        match self {
            Port::Grpc => "grpc",
            Port::Peer => "peer",
            Port::Http => "http",
            Port::Https => "https",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static ERRORS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// When each port last warned, in ms since [`START`] + 1 (0: never).
static LAST_WARN: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Failed accepts (not counting the peer's own resets) on `port` since the process started.
pub fn accept_errors(port: Port) -> u64 {
    ERRORS[port.index()].load(Ordering::Relaxed)
}

/// A failed accept that concerns only the connection being accepted: take the next one at once.
fn connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// Count a failed accept on `port` and warn if this port has not warned within [`WARN_EVERY`].
fn note(port: Port, e: &io::Error) {
    let n = ERRORS[port.index()].fetch_add(1, Ordering::Relaxed) + 1;
    let now = START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1;
    let last = &LAST_WARN[port.index()];
    let prev = last.load(Ordering::Relaxed);
    if (prev == 0 || now.saturating_sub(prev) >= WARN_EVERY.as_millis() as u64)
        && last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        let limit = open_files_limit().map_or_else(|| "unknown".to_string(), |l| l.to_string());
        let open = open_files().map_or_else(|| "unknown".to_string(), |n| n.to_string());
        tracing::warn!(
            "{} port cannot accept connections: {e}; {n} failed accepts so far, each followed by a {} ms pause \
             (open files {open}, open files limit {limit}; every agent holds a connection to the member it \
             believes leads: raise LimitNOFILE)",
            port.name(),
            ACCEPT_PAUSE.as_millis()
        );
    }
}

/// The next connection on `l`, with Nagle's algorithm off (`TCP_NODELAY`: tonic sets it only on listeners
/// it binds itself, axum never; without it a reply written in two pieces, or a stream's next write while
/// earlier data is unacknowledged, waits for the client's delayed ACK; measured in session 23: heartbeats
/// p50 44 ms on an idle machine, watch events p99 43-48 ms late, a snapshot's transfer to a follower about
/// 28 s instead of 2). A failed accept that is not the peer's doing pauses for [`ACCEPT_PAUSE`] (see the
/// module).
pub async fn accept(l: &TcpListener, port: Port) -> (TcpStream, SocketAddr) {
    loop {
        match l.accept().await {
            Ok((tcp, peer)) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, port = port.name(), "cannot set TCP_NODELAY on a connection");
                }
                return (tcp, peer);
            }
            Err(e) if connection_error(&e) => {}
            Err(e) => {
                note(port, &e);
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// The connections of a tonic server on `l` ([`accept`]'s): it never yields an error, so tonic's own accept
/// loop never retries at once.
pub fn incoming(
    l: TcpListener,
    port: Port,
) -> Pin<Box<dyn Stream<Item = io::Result<TcpStream>> + Send + 'static>> {
    Box::pin(futures::stream::unfold(l, move |l| async move {
        let (tcp, _) = accept(&l, port).await;
        Some((Ok(tcp), l))
    }))
}

/// An axum listener on `l` ([`accept`]'s).
pub struct Listener {
    l: TcpListener,
    port: Port,
}

impl Listener {
    pub fn new(l: TcpListener, port: Port) -> Listener {
        Listener { l, port }
    }
}

impl axum::serve::Listener for Listener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        accept(&self.l, self.port).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.l.local_addr()
    }
}

/// The process's soft open-files limit.
pub fn open_files_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft)
}

/// How long a count of the process's descriptors is reused: a leader of 100,000 agents has as many entries
/// in `/proc/self/fd`, and `/metrics` and every `ClusterInfo` call ask for the count on an API thread.
pub const OPEN_FILES_FRESH: Duration = Duration::from_secs(1);

/// File descriptors the process holds (entries of `/proc/self/fd`, counted at most every
/// [`OPEN_FILES_FRESH`]; `None` where that cannot be read, e.g. with every descriptor taken).
pub fn open_files() -> Option<u64> {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, n)) = *last
        && at.elapsed() < OPEN_FILES_FRESH
    {
        return Some(n);
    }
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    *last = Some((std::time::Instant::now(), n));
    Some(n)
}

/// Raise the soft open-files limit to the hard one (a soft limit of 1,024 is still common, and the master
/// holds a connection per agent). Returns the (soft, hard) limits now in force.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only failures of the connection being accepted are retried at once; running out of descriptors or
    /// memory pauses the port.
    #[test]
    fn resource_errors_pause_and_connection_errors_do_not() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(!connection_error(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        for errno in [libc::ECONNABORTED, libc::ECONNRESET, libc::EINTR, libc::EAGAIN] {
            assert!(connection_error(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
    }

    /// The soft limit ends at the hard one (raising it twice changes nothing).
    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = raise_open_files_limit().expect("raise");
        assert_eq!(soft, hard);
        assert_eq!(open_files_limit(), Some(soft));
        assert_eq!(raise_open_files_limit().expect("again"), (soft, hard));
        assert!(open_files().is_some_and(|n| n > 0 && n <= soft));
    }

    /// The count is reused for [`OPEN_FILES_FRESH`], then read again: a file opened meanwhile shows after.
    #[test]
    fn the_open_files_count_is_reused_for_a_second_then_counted_again() {
        let t = std::time::Instant::now();
        let first = open_files().expect("count");
        let extra: Vec<std::fs::File> =
            (0..200).map(|_| std::fs::File::open("/proc/self/stat").expect("open")).collect();
        let reused = open_files().expect("count");
        // Unless this thread stalled past the freshness bound, the second call did not count again.
        if t.elapsed() < OPEN_FILES_FRESH / 2 {
            assert_eq!(reused, first, "counted again within {OPEN_FILES_FRESH:?}");
        }
        std::thread::sleep(OPEN_FILES_FRESH + Duration::from_millis(50));
        let after = open_files().expect("count");
        // Other tests of this process (`cargo test` runs them as threads) may close a few files meanwhile.
        assert!(after >= first + 100, "{first} then {after} with 200 more open");
        drop(extra);
    }

    /// Every accepted connection has Nagle's algorithm off, on the tonic stream and the axum listener alike
    /// (the kernel's default is on: checked, so the test can fail).
    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        use axum::serve::Listener as _;
        use futures::StreamExt as _;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut grpc = incoming(l, Port::Grpc);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let accepted = grpc.next().await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().expect("read the option"), "gRPC and peer ports");

        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut http = Listener::new(l, Port::Http);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = http.accept().await;
        assert!(accepted.nodelay().expect("read the option"), "HTTP port");

        let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let plain_addr = plain.local_addr().expect("addr");
        let _client = TcpStream::connect(plain_addr).await.expect("connect");
        let (accepted, _) = plain.accept().await.expect("accepted");
        assert!(!accepted.nodelay().expect("read the option"), "the default is Nagle on");
    }
}
