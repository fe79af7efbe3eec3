//! A leader-following gRPC client for the master API, used by the CLI, the benchmark and the tests (and the
//! seed of the SDK): it takes a list of master addresses, follows NOT_LEADER redirects, moves to the next
//! address when one is unreachable, and retries retryable errors a bounded number of times with capped
//! backoff. Every call has a timeout; channels use HTTP/2 keepalive so they never wedge silently.

use std::future::Future;
use std::time::Duration;

use crate::api::master_client::MasterClient as GrpcClient;
use crate::error::{ApiError, Code};
use tonic::transport::{Channel, Endpoint};

/// Connecting to one address gives up after this long and the client tries the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on one call (a commit normally takes milliseconds; a leader change up to a few seconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per call across redirects and addresses; with the capped backoff this waits out an election.
pub const MAX_ATTEMPTS: u32 = 30;
/// Backoff between attempts: starts small (a redirect is usually instant), doubles, capped.
pub const BACKOFF_START: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message the client sends or accepts (matches the server's limit).
pub const MAX_MESSAGE: usize = 16 << 20;

/// The client. Not `Clone`: each user keeps its own current leader guess.
pub struct Client {
    addrs: Vec<String>,
    current: usize,
    conn: Option<(String, GrpcClient<Channel>)>,
    pub call_timeout: Duration,
    pub max_attempts: u32,
}

/// Parse `ADDR[,ADDR...]`.
pub fn parse_addrs(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

impl Client {
    pub fn new(addrs: Vec<String>) -> Client {
        Client { addrs, current: 0, conn: None, call_timeout: CALL_TIMEOUT, max_attempts: MAX_ATTEMPTS }
    }

    /// The address of the node the client talks to now.
    pub fn current_addr(&self) -> Option<&str> {
        self.conn
            .as_ref()
            .map(|(a, _)| a.as_str())
            .or_else(|| self.addrs.get(self.current).map(String::as_str))
    }

    async fn connect(&mut self) -> Result<GrpcClient<Channel>, ApiError> {
        if let Some((_, c)) = &self.conn {
            return Ok(c.clone());
        }
        let addr =
            self.addrs.get(self.current).cloned().ok_or_else(|| ApiError::invalid("no master address"))?;
        let url = if addr.starts_with("http://") { addr.clone() } else { format!("http://{addr}") };
        let ep = Endpoint::from_shared(url)
            .map_err(|e| ApiError::invalid(format!("bad master address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let ch = tokio::time::timeout(CONNECT_TIMEOUT * 2, ep.connect())
            .await
            .map_err(|_| ApiError::unavailable(format!("connecting to {addr} timed out")))?
            .map_err(|e| ApiError::unavailable(format!("cannot connect to {addr}: {e}")))?;
        let c =
            GrpcClient::new(ch).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        self.conn = Some((addr, c.clone()));
        Ok(c)
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
        F: Fn(GrpcClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut backoff = BACKOFF_START;
        let mut last = ApiError::unavailable("no attempt made");
        for attempt in 0..self.max_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            let client = match self.connect().await {
                Ok(c) => c,
                Err(e) if e.code == Code::Unavailable => {
                    last = e;
                    self.next_addr();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let res = match tokio::time::timeout(self.call_timeout, f(client, req.clone())).await {
                Ok(r) => r.map(tonic::Response::into_inner).map_err(ApiError::from),
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
        Err(ApiError::new(
            last.code,
            format!("gave up after {} attempts: {}", self.max_attempts, last.message),
        ))
    }
}

#[cfg(test)]
mod tests {
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
}
