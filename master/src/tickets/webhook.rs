//! The generic HTTP webhook ticket sink: POST the ticket as JSON to a configured `http://` URL with an
//! `Idempotency-Key` header (the same on every retry, so the receiver can dedupe) and an optional bearer
//! token.
//! The answer decides what the dispatcher does: 2xx filed (ticket id from the JSON `id` or `ticket` field,
//! else the idempotency key), 409 already filed (success), 408/429/5xx and connection errors and timeouts are
//! retried, other statuses are permanent failures. Response bodies are read up to a limit and never trusted.
//!
//! One HTTP/1.1 connection per filing (tickets are rare; no pool to go stale), on hyper's own client, which
//! is already in the build through tonic and axum.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Filed, SinkError, TicketRequest, TicketSink, cut, fallback_ticket_id, valid_ticket_id};

/// Default for `[tickets] timeout_ms`: a ticket system that needs longer than this is treated as down.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Most response-body bytes read: enough for any ticket id answer; a huge or endless body is cut off here.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Most bytes of an error response quoted in the error message (and so in the operator alert).
pub const MAX_ERROR_SNIPPET: usize = 200;
/// Longest accepted URL: a config value, bounded so a pasted blob is refused clearly.
pub const MAX_URL_LEN: usize = 2048;

/// Where the webhook posts: parsed once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP (IPv6 without brackets), for connecting.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Why a webhook URL is refused (names the URL and what is wrong with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("url {url:?} is not a URL: {reason}")]
    NotAUrl { url: String, reason: String },
    #[error("url {0:?}: https is not supported yet; use http:// (e.g. to a local TLS proxy)")]
    Https(String),
    #[error("url {0:?} must start with http://")]
    NotHttp(String),
    #[error("url {0:?} has no host")]
    NoHost(String),
    #[error("url {0:?}: no credentials in the URL; use token = \"...\"")]
    Credentials(String),
}

impl Target {
    /// Parse `http://host[:port][/path][?query]`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        if url.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| UrlError::NotAUrl {
            url: url.into(),
            reason: e.to_string(),
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(UrlError::Https(url.into())),
            _ => return Err(UrlError::NotHttp(url.into())),
        }
        let auth = uri.authority().ok_or_else(|| UrlError::NoHost(url.into()))?;
        if auth.as_str().contains('@') {
            return Err(UrlError::Credentials(url.into()));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(UrlError::NoHost(url.into()));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Target {
            host,
            port: auth.port_u16().unwrap_or(80),
            authority: auth.as_str().to_string(),
            path: if path.is_empty() { "/".to_string() } else { path.to_string() },
        })
    }
}

/// POSTs tickets to one URL.
pub struct WebhookSink {
    target: Target,
    /// Never logged: `Debug` prints `<redacted>`.
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("target", &self.target)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Aborts the connection task when the filing ends (or its timeout drops it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WebhookSink {
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<WebhookSink, UrlError> {
        Ok(WebhookSink { target: Target::parse(url)?, token, timeout })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// One attempt without the overall timeout: connect, send, read the status and a bounded body.
    async fn attempt(&self, req: &TicketRequest, body: Vec<u8>) -> Result<Filed, SinkError> {
        let t = &self.target;
        let stream = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| SinkError::Transient(format!("connect to {}: {e}", t.authority)))?;
        // Small JSON requests: send at once instead of waiting for Nagle.
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SinkError::Transient(format!("HTTP handshake with {}: {e}", t.authority)))?;
        let _conn = AbortOnDrop(tokio::spawn(async move {
            // Errors here surface through send_request / the body read below.
            let _ = conn.await;
        }));
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(t.path.as_str())
            .header(header::HOST, t.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("huatuo-master/", env!("CARGO_PKG_VERSION")))
            .header("Idempotency-Key", req.idempotency_key.as_str());
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|e| {
            SinkError::Permanent(format!("cannot build the request (bad key or token?): {e}"))
        })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| SinkError::Transient(format!("POST to {}: {e}", t.authority)))?;
        let status = response.status();
        // A 2xx means the ticket exists even if its body is garbage or cut off: never retry a success.
        let body = match Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) => Err(e.to_string()),
        };
        classify(status, body, &req.idempotency_key)
    }
}

/// What a response means for the filing of `key`. `body` is the (bounded) body or why it could not be read.
pub fn classify(status: StatusCode, body: Result<Bytes, String>, key: &str) -> Result<Filed, SinkError> {
    let code = status.as_u16();
    if status.is_success() || status == StatusCode::CONFLICT {
        let already = status == StatusCode::CONFLICT;
        let ticket_id = match &body {
            Ok(b) => ticket_id_from_body(b),
            Err(e) => {
                tracing::warn!(key, status = code, error = %e, "ticket filed; response body unreadable");
                None
            }
        };
        return Ok(Filed { ticket_id: ticket_id.unwrap_or_else(|| fallback_ticket_id(key)), already });
    }
    let snippet = match &body {
        Ok(b) => snippet(b),
        Err(e) => format!("(body unreadable: {e})"),
    };
    let what = format!("HTTP {code} {snippet}");
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(SinkError::Transient(what))
    } else if status.is_redirection() {
        Err(SinkError::Permanent(format!("{what}: redirects are not followed; configure the final URL")))
    } else {
        Err(SinkError::Permanent(what))
    }
}

/// The ticket id in a JSON answer: `{"id": ...}` or `{"ticket": ...}`, a string or an integer, and only if it
/// is a valid ticket id.
pub fn ticket_id_from_body(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["id", "ticket"].iter().find_map(|k| {
        let s = match v.get(k)? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => return None,
        };
        valid_ticket_id(&s).then_some(s)
    })
}

/// A printable, bounded quote of an error body for messages.
fn snippet(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = clean.trim();
    if clean.is_empty() { String::new() } else { format!(": {:?}", cut(clean, MAX_ERROR_SNIPPET)) }
}

impl TicketSink for WebhookSink {
    async fn file(&self, req: &TicketRequest) -> Result<Filed, SinkError> {
        let body = req.to_json()?;
        match tokio::time::timeout(self.timeout, self.attempt(req, body)).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::Transient(format!(
                "no answer from {} within {} ms",
                self.target.authority,
                self.timeout.as_millis()
            ))),
        }
    }

    fn name(&self) -> &'static str {
        "webhook"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:8080/api/tickets?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 8080, "/api/tickets?x=1"));
        let t = Target::parse("http://tickets.example").unwrap();
        assert_eq!((t.port, t.path.as_str(), t.authority.as_str()), (80, "/", "tickets.example"));
        let t = Target::parse("http://[::1]:81/t").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        for bad in
            ["https://x/", "x/y", "http://u:p@x/", "", "http://", &format!("http://x/{}", "a".repeat(3000))]
        {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_are_classified() {
        let ok = |s: &str| Ok(Bytes::from(s.to_string()));
        let k = "disk/h/sda@7";
        let f = classify(StatusCode::CREATED, ok(r#"{"id":"T-9"}"#), k).unwrap();
        assert_eq!(f, Filed { ticket_id: "T-9".into(), already: false });
        let f = classify(StatusCode::OK, ok(r#"{"ticket":12}"#), k).unwrap();
        assert_eq!(f.ticket_id, "12");
        for junk in ["", "not json", "[1]", r#"{"id":""}"#, r#"{"id":{"a":1}}"#, r#"{"id":1.5}"#] {
            assert_eq!(classify(StatusCode::OK, ok(junk), k).unwrap().ticket_id, k, "{junk:?}");
        }
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(300));
        assert_eq!(classify(StatusCode::OK, ok(&long), k).unwrap().ticket_id, k);
        assert_eq!(classify(StatusCode::OK, Err("length limit exceeded".into()), k).unwrap().ticket_id, k);
        let f = classify(StatusCode::CONFLICT, ok(r#"{"id":"T-1"}"#), k).unwrap();
        assert_eq!(f, Filed { ticket_id: "T-1".into(), already: true });
        for s in [500, 502, 503, 408, 429] {
            let e = classify(StatusCode::from_u16(s).unwrap(), ok("busy"), k).unwrap_err();
            assert!(!e.is_permanent(), "{s}: {e}");
        }
        for s in [400, 401, 403, 404, 422, 301] {
            let e = classify(StatusCode::from_u16(s).unwrap(), ok("no\u{0}pe"), k).unwrap_err();
            assert!(e.is_permanent(), "{s}: {e}");
            assert!(e.to_string().contains(&s.to_string()), "{e}");
        }
        let e = classify(StatusCode::BAD_REQUEST, ok(&"z".repeat(10_000)), k).unwrap_err();
        assert!(e.to_string().len() < MAX_ERROR_SNIPPET + 100, "error quotes are bounded");
    }
}
