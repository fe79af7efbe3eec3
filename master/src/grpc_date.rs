//! The `date` header of the gRPC ports' responses (and the HTTP port's), sent as an HPACK literal that is
//! never indexed.
//!
//! hyper adds `date` to every HTTP/2 response it serves unless the response has one (tonic's server gives
//! no way to turn that off). HPACK's encoder (h2) indexes each new value of a header, and keeps the
//! values of one name in a chain that it walks from the oldest on every response carrying that name. The
//! date changes once a second, so on a connection older than about a minute the 4 KiB table holds some
//! 60 dates, and every response compared its own with each of them: with the hash lookups and copies
//! around it, 8.8% of a leader's gRPC threads' samples under 10,000 heartbeats/s, 4.3% with this layer
//! (`perf`, ARCHITECTURE.md "Fleet scale: the date header"). Agents, subscribers and peers keep their
//! connections for days.
//!
//! [`DateLayer`] sets `date` itself (the current second, RFC 9110's HTTP-date, as hyper's) and marks it
//! sensitive, which h2 encodes as "literal, never indexed": no table entry and no chain, about 25 bytes a
//! response instead of one. hyper leaves a `date` that is already set alone; so does this layer.

use std::cell::RefCell;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{self, HeaderValue, header::DATE};
use futures::TryFutureExt as _;
use futures::future::MapOk;

/// Wraps a gRPC server's service so that its responses carry a never-indexed `date` (see the module).
#[derive(Debug, Clone, Copy, Default)]
pub struct DateLayer;

impl<S> tower::Layer<S> for DateLayer {
    type Service = Dated<S>;
    fn layer(&self, inner: S) -> Dated<S> {
        Dated(inner)
    }
}

/// The service [`DateLayer`] wraps.
#[derive(Debug, Clone)]
pub struct Dated<S>(S);

/// What [`Dated`] does to a response: a `date` unless it has one.
type Stamp<B> = fn(http::Response<B>) -> http::Response<B>;

impl<S, Req, B> tower::Service<Req> for Dated<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = MapOk<S::Future, Stamp<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.0.call(req).map_ok(stamp::<B> as Stamp<B>)
    }
}

fn stamp<B>(mut res: http::Response<B>) -> http::Response<B> {
    if !res.headers().contains_key(DATE)
        && let Some(v) = date_now()
    {
        res.headers_mut().insert(DATE, v);
    }
    res
}

thread_local! {
    /// The last second formatted on this thread and its header value (formatting is the costly part;
    /// a clone shares the bytes).
    static LAST: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
}

/// The current second as a sensitive (never indexed) `date` value. `None` only if the clock is before
/// 1970 (hyper then adds its own).
fn date_now() -> Option<HeaderValue> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((s, v)) = last.as_ref()
            && *s == secs
        {
            return Some(v.clone());
        }
        let v = date_value(secs)?;
        *last = Some((secs, v.clone()));
        Some(v)
    })
}

/// `secs` since the epoch as a sensitive HTTP-date header value.
fn date_value(secs: u64) -> Option<HeaderValue> {
    let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    let mut v = HeaderValue::from_str(&text).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _};

    fn secs_of(v: &HeaderValue) -> u64 {
        let t = httpdate::parse_http_date(v.to_str().expect("ASCII")).expect("an HTTP-date");
        t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    fn now_secs() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    #[tokio::test]
    async fn responses_get_a_never_indexed_date_of_now_and_keep_their_own() {
        let mut svc = DateLayer.layer(tower::service_fn(|own: Option<&'static str>| async move {
            let mut r = http::Response::new(());
            if let Some(d) = own {
                r.headers_mut().insert(DATE, HeaderValue::from_static(d));
            }
            Ok::<_, std::convert::Infallible>(r)
        }));
        let before = now_secs();
        let r = svc.call(None).await.expect("infallible");
        let after = now_secs();
        let dates: Vec<_> = r.headers().get_all(DATE).iter().collect();
        assert_eq!(dates.len(), 1, "one date");
        assert!(dates[0].is_sensitive(), "sent as a literal HPACK never indexes");
        let s = secs_of(dates[0]);
        assert!((before..=after).contains(&s), "{s} within [{before}, {after}]");

        let own = "Sun, 06 Nov 1994 08:49:37 GMT";
        let r = svc.call(Some(own)).await.expect("infallible");
        let dates: Vec<_> = r.headers().get_all(DATE).iter().collect();
        assert_eq!(dates, [HeaderValue::from_static(own)], "a date already set is left alone");
        assert!(!dates[0].is_sensitive());
    }

    /// Through hyper's own HTTP/2 server (the one tonic runs), read on the wire: every response's header
    /// block carries `date` as a literal never indexed (HPACK: `0001` + name index 33 of the static
    /// table, `0x1f 0x12`). Without the layer hyper's date goes with incremental indexing (`0x61` + the
    /// value, growing the table) and the second response refers to that entry (one byte): the test fails.
    #[tokio::test]
    async fn hyper_sends_the_layers_date_never_indexed() {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.expect("accept");
            let svc = DateLayer.layer(tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }));
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
                .ok();
        });
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([kind, flags]);
            f.extend(stream.to_be_bytes());
            f.extend(payload);
            f
        };
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        // GET / (static :method GET, :scheme http, :path /) and :authority as a literal; END_STREAM and
        // END_HEADERS; two requests, streams 1 and 3.
        let block = [&[0x82u8, 0x86, 0x84, 0x01, 0x09][..], b"localhost"].concat();
        out.extend(frame(0x1, 0x5, 1, &block));
        out.extend(frame(0x1, 0x5, 3, &block));
        tcp.write_all(&out).await.expect("send");
        let mut blocks = Vec::new();
        let read = async {
            while blocks.len() < 2 {
                let mut head = [0u8; 9];
                tcp.read_exact(&mut head).await.expect("a frame header");
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                tcp.read_exact(&mut payload).await.expect("a frame payload");
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                // A response's HEADERS (hyper sends neither padding nor priority).
                if head[3] == 0x1 && stream != 0 {
                    blocks.push(payload);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("two responses within 20 s");
        for b in &blocks {
            assert!(b.windows(2).any(|w| w == [0x1f, 0x12]), "date never indexed: {b:02x?}");
        }
        server.abort();
    }

    #[test]
    fn the_value_is_the_http_date_of_its_second_and_cached_per_second() {
        let v = date_value(784_111_777).expect("formats");
        assert_eq!(v.to_str().expect("ASCII"), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(v.is_sensitive());
        // Two calls in one second share the cached value; a call after the second changed formats anew.
        let a = date_now().expect("a date");
        let b = date_now().expect("a date");
        assert!(secs_of(&b) >= secs_of(&a) && secs_of(&b) <= secs_of(&a) + 1);
        LAST.with(|l| *l.borrow_mut() = Some((7, HeaderValue::from_static("stale"))));
        let c = date_now().expect("a date");
        assert_ne!(c, HeaderValue::from_static("stale"), "another second's value is not reused");
        assert!(secs_of(&c) >= secs_of(&a));
    }
}
