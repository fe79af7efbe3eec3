//! A small HTTP/1.1 GET client for the master's REST port (plain or HTTPS with the cluster CA), enough for
//! `huatuo export`'s JSON pages: one request per connection (`Connection: close`), bounded response size
//! and time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Largest response read: a page of 5,000 findings with their readings stays far below it.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// One request, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Rest {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<proto::tls::Token>,
}

impl Rest {
    /// `url`: `http://HOST:PORT` or `https://HOST:PORT` (https needs `tls`).
    pub fn new(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        token: Option<proto::tls::Token>,
    ) -> anyhow::Result<Rest> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            bail!("--http {url:?}: expected http://HOST:PORT or https://HOST:PORT");
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.trim_matches(['[', ']']).to_string(), p)))
            .ok_or_else(|| anyhow!("--http {url:?}: expected HOST:PORT after the scheme"))?;
        if https && tls.is_none() {
            bail!("--http {url}: HTTPS needs the cluster CA (a context with [tls])");
        }
        Ok(Rest { host, port, tls: if https { tls } else { None }, token })
    }

    /// GET `path` (with its query) and decode the JSON body; a non-2xx answer is an error with its message.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.get_raw(path))
            .await
            .map_err(|_| anyhow!("GET {path}: no answer within {REQUEST_TIMEOUT:?}"))??;
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: bad JSON answer"))
    }

    async fn get_raw(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot connect to {}:{}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.host, self.port
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {}\r\n", t.expose()));
        }
        req.push_str("\r\n");
        match &self.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| anyhow!("bad host name {:?}: {e}", self.host))?;
                let conn = tokio_rustls::TlsConnector::from(cfg.clone());
                let tls = conn.connect(name, tcp).await.context("TLS handshake with the master")?;
                exchange(tls, &req, path).await
            }
            None => exchange(tcp, &req, path).await,
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
    path: &str,
) -> anyhow::Result<Vec<u8>> {
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer closing without close_notify after a complete answer is fine (we check lengths).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            bail!("GET {path}: answer larger than {MAX_RESPONSE_BYTES} bytes");
        }
    }
    let split =
        buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("GET {path}: no HTTP header"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: bad status line"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    if chunked {
        body = dechunk(&body).ok_or_else(|| anyhow!("GET {path}: bad chunked body"))?;
    } else if let Some(n) = length {
        if body.len() < n {
            bail!("GET {path}: answer cut short ({} of {n} bytes)", body.len());
        }
        body.truncate(n);
    }
    if !(200..300).contains(&status) {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        bail!("GET {path}: HTTP {status}: {msg}");
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_txt = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined_and_bad_urls_refused() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(), Some(&b"abcde"[..]));
        assert_eq!(dechunk(b"5\r\nab"), None);
        assert!(Rest::new("ftp://x:1", None, None).is_err());
        assert!(Rest::new("http://x", None, None).is_err());
        assert!(Rest::new("https://x:1", None, None).is_err(), "https needs the CA");
        assert!(Rest::new("http://127.0.0.1:7780/", None, None).is_ok());
    }
}
