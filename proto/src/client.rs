//! A leader-following gRPC client for the master API, used by the CLI, the benchmark and the tests (and the
//! seed of the SDK): it takes a list of master addresses, follows NOT_LEADER redirects, moves to the next
//! address when one is unreachable, and retries retryable errors a bounded number of times with capped
//! backoff. Every call has a timeout; channels use HTTP/2 keepalive so they never wedge silently.
//! With [`ClientSecurity`] it speaks TLS (trusting only the cluster CA, presenting a client certificate)
//! and sends a bearer token in the `authorization` metadata of every call (marked sensitive, never printed).

use std::future::Future;
use std::time::Duration;

use crate::api::master_client::MasterClient as GrpcClient;
use crate::error::{ApiError, Code};
use crate::tls::Token;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Connecting to one address gives up after this long and the client tries the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on one call (a commit normally takes milliseconds; a leader change up to a few seconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per call across redirects and addresses; with the capped backoff this waits out an election.
pub const MAX_ATTEMPTS: u32 = 30;
/// Backoff between attempts: starts small (a redirect is usually instant), doubles, capped.
pub const BACKOFF_START: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A pause between half of `backoff` and all of it, drawn at random ("equal jitter"): clients that failed
/// together (a fleet's agents when their leader died, or when a new leader is busy with their reconnections)
/// do not retry together, in waves, as they would after the same fixed pause.
pub fn jittered(backoff: Duration) -> Duration {
    use std::hash::BuildHasher;
    // A fresh `RandomState` is seeded from the OS once per thread and moved on at each use: enough spread
    // for a pause, without a random-number crate in every client.
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let half = backoff / 2;
    half + Duration::from_nanos(r % (half.as_nanos() as u64 + 1))
}

/// Longest retry budget a client accepts (`huatuo --wait` is bounded by it): a day of waiting for a master is
/// already far past any script's patience; beyond it a typo (`--wait 5000h`) would hang a job silently.
pub const MAX_RETRY_BUDGET: Duration = Duration::from_secs(24 * 3600);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message the client sends or accepts (matches the server's limit).
pub const MAX_MESSAGE: usize = 16 << 20;

/// How a client authenticates to the masters. The default (nothing) is for `--insecure` clusters.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// TLS trusting the cluster CA and presenting a client certificate (`https://` to every address).
    pub tls: Option<ClientTlsConfig>,
    /// Bearer token sent with every call.
    pub token: Option<Token>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Adds `authorization: Bearer TOKEN` to every call; the value is marked sensitive so tonic/http never
/// print it.
#[derive(Clone, Default)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl BearerAuth {
    pub fn new(token: Option<&Token>) -> Result<BearerAuth, ApiError> {
        let Some(t) = token else { return Ok(BearerAuth(None)) };
        let mut v: MetadataValue<Ascii> = format!("Bearer {}", t.expose())
            .parse()
            .map_err(|_| ApiError::invalid("the token has characters a header cannot carry"))?;
        v.set_sensitive(true);
        Ok(BearerAuth(Some(v)))
    }
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerAuth(<redacted>)" } else { "BearerAuth(none)" })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The channel type every call closure gets: a channel with the bearer token added.
pub type Conn = InterceptedService<Channel, BearerAuth>;

/// The client. Not `Clone`: each user keeps its own current leader guess.
pub struct Client {
    addrs: Vec<String>,
    current: usize,
    conn: Option<(String, GrpcClient<Conn>)>,
    security: ClientSecurity,
    pub call_timeout: Duration,
    pub max_attempts: u32,
    /// While no node has answered a call (connections refused or timing out), retry for this long in all
    /// instead of counting attempts (`None`: count, as agents and the SDK do). Once any node answers (even
    /// NOT_LEADER or UNAVAILABLE during an election) the call is back to `max_attempts`, so a live cluster in
    /// an election is still waited out. At most [`MAX_RETRY_BUDGET`]. The CLI sets 2 s (`--wait` more).
    pub retry_budget: Option<Duration>,
    /// Where the addresses came from (a context file, a flag), named in the give-up message.
    pub addrs_from: Option<String>,
    /// When the connection last carried a call or a stream's request ([`Client::close_if_idle`]).
    last_used: std::time::Instant,
}

/// Parse `ADDR[,ADDR...]`.
pub fn parse_addrs(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

impl Client {
    pub fn new(addrs: Vec<String>) -> Client {
        Client::with_security(addrs, ClientSecurity::default())
    }

    /// A client that uses TLS and/or a bearer token.
    pub fn with_security(addrs: Vec<String>, security: ClientSecurity) -> Client {
        Client {
            addrs,
            current: 0,
            conn: None,
            security,
            call_timeout: CALL_TIMEOUT,
            max_attempts: MAX_ATTEMPTS,
            retry_budget: None,
            addrs_from: None,
            last_used: std::time::Instant::now(),
        }
    }

    /// Whether the client holds a connection now.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Drop the connection when nothing used it for `idle` (an agent whose heartbeats go as datagrams
    /// needs none between its findings; the next call connects again). True when one was dropped. A
    /// stream opened on it keeps it open until that stream is closed too ([`CallStream::close`]).
    pub fn close_if_idle(&mut self, idle: Duration) -> bool {
        if self.conn.is_none() || self.last_used.elapsed() < idle {
            return false;
        }
        self.conn = None;
        true
    }

    /// The address of the node the client talks to now.
    pub fn current_addr(&self) -> Option<&str> {
        self.conn
            .as_ref()
            .map(|(a, _)| a.as_str())
            .or_else(|| self.addrs.get(self.current).map(String::as_str))
    }

    /// Connect to the current address, giving up after `limit` (at most [`CONNECT_TIMEOUT`]).
    async fn connect(&mut self, limit: Duration) -> Result<GrpcClient<Conn>, ApiError> {
        self.last_used = std::time::Instant::now();
        if let Some((_, c)) = &self.conn {
            return Ok(c.clone());
        }
        let addr =
            self.addrs.get(self.current).cloned().ok_or_else(|| ApiError::invalid("no master address"))?;
        let bare = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(&addr);
        let url = match &self.security.tls {
            Some(_) => format!("https://{bare}"),
            None => format!("http://{bare}"),
        };
        let mut ep = Endpoint::from_shared(url)
            .map_err(|e| ApiError::invalid(format!("bad master address {addr:?}: {e}")))?
            .connect_timeout(limit.min(CONNECT_TIMEOUT))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.security.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| ApiError::invalid(format!("TLS settings for {addr}: {e}")))?;
        }
        let ch = tokio::time::timeout(limit.min(CONNECT_TIMEOUT * 2), ep.connect())
            .await
            .map_err(|_| ApiError::unavailable(format!("connecting to {addr} timed out")))?
            .map_err(|e| ApiError::unavailable(format!("cannot connect to {addr}: {}", error_chain(&e))))?;
        let auth = BearerAuth::new(self.security.token.as_ref())?;
        let c = GrpcClient::with_interceptor(ch, auth)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        self.conn = Some((addr, c.clone()));
        Ok(c)
    }

    /// A connection to the current address (connecting if there is none), for a caller that drives a
    /// stream itself (an agent's [`BeatStream`]); it follows no redirect: [`Client::call`] does that.
    pub async fn channel(&mut self) -> Result<GrpcClient<Conn>, ApiError> {
        self.connect(CONNECT_TIMEOUT).await
    }

    fn next_addr(&mut self) {
        self.conn = None;
        if !self.addrs.is_empty() {
            self.current = (self.current + 1) % self.addrs.len();
        }
    }

    fn go_to(&mut self, leader: &str) {
        self.conn = None;
        match self.addrs.iter().position(|a| a == leader) {
            Some(i) => self.current = i,
            None => {
                self.addrs.push(leader.to_string());
                self.current = self.addrs.len() - 1;
            }
        }
    }

    /// Run `f` against the leader (or any node for reads), following redirects and retrying retryable
    /// errors. `f` gets a client handle and a clone of `req`.
    pub async fn call<Req, Resp, F, Fut>(&mut self, req: Req, f: F) -> Result<Resp, ApiError>
    where
        Req: Clone,
        F: Fn(GrpcClient<Conn>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut backoff = BACKOFF_START;
        let mut last = ApiError::unavailable("no attempt made");
        let started = std::time::Instant::now();
        let budget = self.retry_budget.map(|b| b.min(MAX_RETRY_BUDGET));
        // Attempts counted against `max_attempts`; with a budget, only those after some node answered.
        let mut counted = 0u32;
        let mut answered = false;
        let mut tried: Vec<String> = Vec::new();
        loop {
            let timed = budget.filter(|_| !answered);
            if timed.is_none() && counted >= self.max_attempts.max(1) {
                break;
            }
            if counted > 0 || !tried.is_empty() {
                let pause = jittered(backoff);
                if let Some(b) = timed
                    && started.elapsed() + pause >= b
                {
                    break;
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            if timed.is_none() {
                counted += 1;
            }
            let limit = match timed {
                Some(b) => b.saturating_sub(started.elapsed()).max(Duration::from_millis(1)),
                None => CONNECT_TIMEOUT * 2,
            };
            if let Some(a) = self.addrs.get(self.current)
                && !tried.contains(a)
            {
                tried.push(a.clone());
            }
            let client = match self.connect(limit).await {
                Ok(c) => c,
                Err(e) if e.code == Code::Unavailable => {
                    last = e;
                    self.next_addr();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let res = match tokio::time::timeout(self.call_timeout, f(client, req.clone())).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => {
                    answered |= from_server(&s);
                    Err(from_status(s))
                }
                Err(_) => Err(ApiError::unavailable(format!("call timed out after {:?}", self.call_timeout))),
            };
            match res {
                Ok(v) => return Ok(v),
                Err(e) if e.code == Code::NotLeader => {
                    match e.leader.clone() {
                        Some(l) if Some(l.as_str()) != self.current_addr() => {
                            self.go_to(&l);
                            backoff = BACKOFF_START;
                        }
                        _ => self.next_addr(),
                    }
                    last = e;
                }
                Err(e) if e.code == Code::Unavailable => {
                    last = e;
                    self.next_addr();
                }
                Err(e) => return Err(e),
            }
        }
        // A plain-text client talking to a TLS port sees only an HTTP/2 framing error: say what it means.
        let hint = if self.security.tls.is_none() && last.message.contains("h2 protocol error") {
            " (the master probably requires TLS: use a client context, see `huatuo dev`)"
        } else {
            ""
        };
        let from = self.addrs_from.as_deref().map(|f| format!("; addresses from {f}")).unwrap_or_default();
        let msg = match budget {
            Some(b) if !answered => format!(
                "no master answered within {:.1} s (tried {}{from}): {}{hint}; \
                 use --wait DURATION to block until one does",
                b.as_secs_f64(),
                tried.join(", "),
                last.message
            ),
            _ => format!("gave up after {} attempts: {}{hint}{from}", self.max_attempts, last.message),
        };
        Err(ApiError::new(last.code, msg))
    }
}

/// After the master refused an agent stream (UNIMPLEMENTED: a master from before it; RESOURCE_EXHAUSTED:
/// at its `max_heartbeat_streams` / `max_ingest_streams`), send calls this long before trying again.
pub const BEAT_STREAM_RETRY: Duration = Duration::from_secs(300);

/// A call an agent also makes over one long-lived stream of its own (`HeartbeatStream`, `IngestStream`):
/// the master answers each request on it exactly as the call answers it.
pub trait Streamed: Clone + Send + 'static {
    type Resp: Send + 'static;
    /// Open the stream, whose requests come from `rx`.
    fn open(
        c: GrpcClient<Conn>,
        rx: tokio_stream::wrappers::ReceiverStream<Self>,
    ) -> impl Future<Output = Result<tonic::Response<tonic::Streaming<Self::Resp>>, tonic::Status>> + Send;
    /// The unary call.
    fn call(
        c: GrpcClient<Conn>,
        req: Self,
    ) -> impl Future<Output = Result<tonic::Response<Self::Resp>, tonic::Status>> + Send;
}

impl Streamed for crate::api::HeartbeatRequest {
    type Resp = crate::api::HeartbeatResponse;
    async fn open(
        mut c: GrpcClient<Conn>,
        rx: tokio_stream::wrappers::ReceiverStream<Self>,
    ) -> Result<tonic::Response<tonic::Streaming<Self::Resp>>, tonic::Status> {
        c.heartbeat_stream(rx).await
    }
    async fn call(mut c: GrpcClient<Conn>, req: Self) -> Result<tonic::Response<Self::Resp>, tonic::Status> {
        c.heartbeat(req).await
    }
}

impl Streamed for crate::api::IngestRequest {
    type Resp = crate::api::IngestResponse;
    async fn open(
        mut c: GrpcClient<Conn>,
        rx: tokio_stream::wrappers::ReceiverStream<Self>,
    ) -> Result<tonic::Response<tonic::Streaming<Self::Resp>>, tonic::Status> {
        c.ingest_stream(rx).await
    }
    async fn call(mut c: GrpcClient<Conn>, req: Self) -> Result<tonic::Response<Self::Resp>, tonic::Status> {
        c.ingest(req).await
    }
}

/// An agent's requests of one kind over one long-lived stream (no new HTTP/2 stream per request:
/// measured for heartbeats, a quarter less of the leader's CPU per beat and 40% less of the agent side's),
/// falling back to one call through [`Client::call`] (redirects, retries) for any request the stream
/// cannot carry: when none can be opened, when the master ended it (NOT_LEADER, a refusal, its age, idle)
/// or it broke, or when an answer takes longer than the client's `call_timeout`. The next request opens a
/// new one, at the client's current address (where the call's redirect left it). A request the stream
/// carried but did not answer is sent again as the call: heartbeats are idempotent and ingest batches
/// are deduplicated by (agent, seq).
pub struct CallStream<R: Streamed> {
    open: Option<OpenStream<R>>,
    /// Send calls only until then (the master refused a stream).
    calls_until: Option<std::time::Instant>,
    stats: StreamStats,
}

/// An agent's heartbeats over `HeartbeatStream`.
pub type BeatStream = CallStream<crate::api::HeartbeatRequest>;
/// An agent's ingest batches over `IngestStream`.
pub type IngestStream = CallStream<crate::api::IngestRequest>;

impl<R: Streamed> Default for CallStream<R> {
    fn default() -> Self {
        CallStream { open: None, calls_until: None, stats: StreamStats::default() }
    }
}

/// What a [`CallStream`] did since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Streams opened.
    pub opened: u64,
    /// Requests answered on a stream.
    pub streamed: u64,
    /// Requests sent as a call (no stream, or the stream could not carry them).
    pub called: u64,
    /// Streams the master refused (UNIMPLEMENTED, RESOURCE_EXHAUSTED): calls for [`BEAT_STREAM_RETRY`].
    pub refused: u64,
}

struct OpenStream<R: Streamed> {
    tx: tokio::sync::mpsc::Sender<R>,
    rx: tonic::Streaming<R::Resp>,
    /// It answered a request: a clean end later is its age (or idleness), worth one new stream for the
    /// same request.
    answered: bool,
}

/// Why a request did not go over the stream.
enum StreamMiss {
    /// Ended without an error after answering requests (the master's age or idle limit): open another at
    /// once.
    Ended,
    /// Anything else: this request goes as a call.
    Failed,
}

impl CallStream<crate::api::HeartbeatRequest> {
    /// One heartbeat: over the stream when it can, else one call.
    pub async fn beat(
        &mut self,
        client: &mut Client,
        req: crate::api::HeartbeatRequest,
    ) -> Result<crate::api::HeartbeatResponse, ApiError> {
        self.send(client, req).await
    }
}

impl<R: Streamed> CallStream<R> {
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// End the open stream, if any (the next request opens another).
    pub fn close(&mut self) {
        self.open = None;
    }

    /// One request: over the stream when it can, else one call.
    pub async fn send(&mut self, client: &mut Client, req: R) -> Result<R::Resp, ApiError> {
        for _ in 0..2 {
            match self.over_stream(client, &req).await {
                Ok(resp) => {
                    self.stats.streamed += 1;
                    return Ok(resp);
                }
                Err(StreamMiss::Ended) => continue,
                Err(StreamMiss::Failed) => break,
            }
        }
        self.stats.called += 1;
        client.call(req, R::call).await
    }

    async fn over_stream(&mut self, client: &mut Client, req: &R) -> Result<R::Resp, StreamMiss> {
        if self.calls_until.is_some_and(|t| std::time::Instant::now() < t) {
            return Err(StreamMiss::Failed);
        }
        client.last_used = std::time::Instant::now();
        if self.open.is_none() {
            self.open = Some(self.open_stream(client).await?);
        }
        let open = self.open.as_mut().ok_or(StreamMiss::Failed)?;
        let answered = open.answered;
        let exchange = async {
            if open.tx.send(req.clone()).await.is_err() {
                return Err(StreamMiss::Ended);
            }
            match open.rx.message().await {
                Ok(Some(resp)) => Ok(resp),
                Ok(None) => Err(StreamMiss::Ended),
                Err(_) => Err(StreamMiss::Failed),
            }
        };
        let res = match tokio::time::timeout(client.call_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(StreamMiss::Failed),
        };
        match res {
            Ok(resp) => {
                open.answered = true;
                Ok(resp)
            }
            Err(miss) => {
                self.open = None;
                // A stream that never answered and ends at once is not worth a second try.
                Err(if answered { miss } else { StreamMiss::Failed })
            }
        }
    }

    async fn open_stream(&mut self, client: &mut Client) -> Result<OpenStream<R>, StreamMiss> {
        let c = client.channel().await.map_err(|_| StreamMiss::Failed)?;
        // One request in flight at a time: the channel holds the one being sent.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let opened = tokio::time::timeout(
            client.call_timeout,
            R::open(c, tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        match opened {
            Ok(Ok(resp)) => {
                self.stats.opened += 1;
                Ok(OpenStream { tx, rx: resp.into_inner(), answered: false })
            }
            Ok(Err(s)) => {
                if matches!(s.code(), tonic::Code::Unimplemented | tonic::Code::ResourceExhausted) {
                    self.stats.refused += 1;
                    self.calls_until = Some(std::time::Instant::now() + BEAT_STREAM_RETRY);
                }
                Err(StreamMiss::Failed)
            }
            Err(_) => Err(StreamMiss::Failed),
        }
    }
}

/// Whether a status came from a node that answered (a gRPC status it sent), not from the transport failing
/// to reach one (those carry the transport error as their source).
fn from_server(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    s.metadata().get(crate::error::CODE_METADATA).is_some() || s.source().is_none()
}

/// A status from the server keeps its code; one made by the transport (a refused TLS handshake, a
/// connection cut mid-call) is UNAVAILABLE with its causes spelled out, e.g. the TLS alert.
fn from_status(s: tonic::Status) -> ApiError {
    use std::error::Error as _;
    if s.metadata().get(crate::error::CODE_METADATA).is_some() {
        return ApiError::from(s);
    }
    match s.source() {
        Some(src) => ApiError::unavailable(format!("{}: {}", s.message(), error_chain(src))),
        None => ApiError::from(s),
    }
}

/// An error with its sources (a TLS refusal is several layers down a transport error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The gRPC request metadata carrying a write's idempotency key: the master applies a key once and answers a
/// retry (after a timeout or a failover, which [`Client::call`] retries through) with the first result and
/// `duplicate: true`.
pub const IDEMPOTENCY_KEY_METADATA: &str = "idempotency-key";

/// A fresh random idempotency key for one write: `prefix`, `-`, 128 bits from the kernel's random source in
/// hex (unique across a fleet's clients without coordination). `prefix` must be ASCII letters, digits or `-`.
pub fn request_key(prefix: &str) -> Result<MetadataValue<Ascii>, ApiError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ApiError::internal(format!("cannot read /dev/urandom for an idempotency key: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
        .parse()
        .map_err(|_| ApiError::invalid(format!("bad idempotency key prefix {prefix:?}")))
}

/// `msg` as a request carrying the idempotency key `key` (send the same key on every try of one write).
pub fn keyed<T>(msg: T, key: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(IDEMPOTENCY_KEY_METADATA, key.clone());
    r
}

#[cfg(test)]
mod tests {
    /// Every pause is between half the backoff and all of it, and the pauses differ (a fixed pause would
    /// let clients that failed together retry together).
    #[test]
    fn retry_pauses_are_jittered_within_half_and_the_whole_backoff() {
        for b in [super::BACKOFF_START, super::BACKOFF_MAX, Duration::from_millis(1)] {
            let pauses: Vec<Duration> = (0..200).map(|_| super::jittered(b)).collect();
            assert!(pauses.iter().all(|p| *p >= b / 2 && *p <= b), "{b:?}: {pauses:?}");
            let distinct: std::collections::BTreeSet<_> = pauses.iter().collect();
            assert!(distinct.len() > 100, "{b:?}: only {} distinct pauses of 200", distinct.len());
        }
        assert_eq!(super::jittered(Duration::ZERO), Duration::ZERO);
    }

    use super::*;
    use crate::api;

    #[test]
    fn parses_address_lists() {
        assert_eq!(parse_addrs(" a:1, b:2 ,,c:3"), vec!["a:1", "b:2", "c:3"]);
        assert!(parse_addrs("").is_empty());
    }

    #[tokio::test]
    async fn gives_up_after_bounded_attempts_on_dead_addresses() {
        // A port nobody listens on: bind, read, release.
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut c = Client::new(vec![format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")]);
        c.max_attempts = 3;
        let e = c
            .call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
            .await
            .expect_err("nobody listens");
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.message.contains("gave up after 3 attempts"), "{e}");
        let mut none = Client::new(Vec::new());
        let e = none
            .call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
            .await
            .expect_err("no address");
        assert_eq!(e.code, Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_retry_budget_bounds_time_not_attempts_while_nobody_answers() {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        let mut c = Client::new(vec![addr.clone()]);
        // One attempt would be allowed by count; the budget alone decides while nothing answers.
        c.max_attempts = 1;
        c.retry_budget = Some(Duration::from_millis(600));
        c.addrs_from = Some("the test".into());
        let t = std::time::Instant::now();
        let e = c
            .call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
            .await
            .expect_err("nobody listens");
        let took = t.elapsed();
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.message.contains("no master answered within 0.6 s"), "{e}");
        assert!(e.message.contains(&addr) && e.message.contains("addresses from the test"), "{e}");
        // Pauses of 50, 100 and 200 ms, each jittered to at least half, fit before 600 ms: more than one
        // try was made, and the budget was kept.
        assert!(took >= Duration::from_millis(175), "retried within the budget: {took:?}");
        assert!(took < Duration::from_millis(600) + CONNECT_TIMEOUT, "stopped at the budget: {took:?}");
    }

    #[test]
    fn request_keys_are_fresh_valid_and_carried() {
        let a = request_key("cli").expect("key");
        let b = request_key("cli").expect("key");
        assert_ne!(a, b, "128 random bits");
        let s = a.to_str().expect("ascii");
        assert!(s.starts_with("cli-") && s.len() == 4 + 32, "{s}");
        assert!(request_key("bad prefix\n").is_err());
        let r = keyed((), &a);
        assert_eq!(r.metadata().get(IDEMPOTENCY_KEY_METADATA), Some(&a));
    }
}
