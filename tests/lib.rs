//! Helpers shared by the cross-crate tests in this folder.

use std::path::PathBuf;

/// The `huatuo` binary the multi-process tests run: `$HUATUO_BIN` if set, else `huatuo` in the target
/// directory this test executable was built into (`target/<profile>/deps/<test>` -> `target/<profile>/huatuo`).
/// Cargo does not build another package's binary for a test, so CI runs `cargo build -p huatuo` before
/// `cargo test` (see .ci/run); a missing binary fails the test with that instruction.
pub fn huatuo_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HUATUO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir =
        exe.parent().and_then(|deps| deps.parent()).expect("test exe lives in target/<profile>/deps");
    let bin = profile_dir.join("huatuo");
    assert!(
        bin.exists(),
        "{} does not exist: build the binary first (`cargo build -p huatuo` with the same CARGO_TARGET_DIR and \
         profile), or set HUATUO_BIN",
        bin.display()
    );
    bin
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Milliseconds since the epoch: findings sent to real masters carry the time they were made (a cluster that
/// enabled command version 2 refuses findings more than 30 days in the past).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Every object a listing matches, following its pages (the master serves 1,000 objects per page unless
/// asked for more, at most 10,000): one response holding all of them, the listing's revision (its first
/// page's) and no token. Bounded by `MAX_TEST_PAGES`.
pub async fn list_all(
    client: &mut master::client::Client,
    mut req: proto::api::ListObjectsRequest,
) -> Result<proto::api::ListObjectsResponse, proto::error::ApiError> {
    /// Far more pages than any test listing needs; a master that never ends a listing fails the test.
    const MAX_TEST_PAGES: usize = 100_000;
    let mut all = proto::api::ListObjectsResponse::default();
    for page in 0..MAX_TEST_PAGES {
        let resp = client.call(req.clone(), |mut c, r| async move { c.list_objects(r).await }).await?;
        if page == 0 {
            all.revision = resp.revision;
        }
        assert_eq!(resp.revision, all.revision, "every page answers the listing's revision");
        all.objects.extend(resp.objects);
        if resp.next_page_token.is_empty() {
            return Ok(all);
        }
        req.page_token = resp.next_page_token;
    }
    panic!("a listing did not end after {MAX_TEST_PAGES} pages");
}

/// `GET path` over plain HTTP/1.1 on loopback (an insecure master's HTTP port, an agent's local port): the
/// whole answer (status line, headers, body), or `None` when nothing could be read (the caller polls).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// `GET path` as [`http_get`] does, taken apart: the status code and the body (de-chunked when the answer
/// came in chunks), or `None` when nothing could be read.
pub fn http_answer(addr: &str, path: &str) -> Option<(u16, String)> {
    http_get(addr, path).map(|raw| split_answer(&raw))
}

/// An HTTP/1.1 answer (status line, headers, body) taken apart: the status code (0 when there is none) and
/// the body, de-chunked when the answer came in chunks.
pub fn split_answer(raw: &str) -> (u16, String) {
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.into()
    };
    (status, body)
}

/// The payload of a chunked HTTP/1.1 body (what is there up to the last chunk or the first malformed one).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample `name` (a line `name value`, no labels) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name} ");
    page.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}
