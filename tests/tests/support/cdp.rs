//! A minimal Chrome DevTools Protocol client for the browser tests: headless Chromium started with
//! `--remote-debugging-pipe` (CDP messages as NUL-terminated JSON on the child's fds 3 and 4). Safe Rust
//! cannot hand a child extra fds, so a `sh -c 'exec chromium ... 3<&0 4>&1 0</dev/null 1>&2'` wrapper makes
//! the child's stdin pipe its fd 3 (commands in) and its stdout pipe its fd 4 (answers out); Chromium's own
//! stdout goes to its log, so nothing else can corrupt the protocol stream.
//!
//! Synchronous on purpose (std threads and channels): the page, not the test, is what runs concurrently.
//! Every call and every wait has a bound; console messages and uncaught exceptions of the page are
//! collected so a test can assert there were none and print them when something fails.
//!
//! A master with TLS serves HTTPS with a certificate from a throwaway CA; [`trust_spki_arg`] makes Chromium
//! accept exactly that server key (nothing else), so the page runs over real HTTPS.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Longest a single CDP command may take (navigation and screenshots of a busy 2-core machine included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval of [`Browser::wait_for`].
pub const POLL: Duration = Duration::from_millis(100);
/// Largest CDP message accepted from Chromium (a full-page PNG screenshot is the biggest, a few MiB).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Console lines kept (a broken page could log without end).
pub const MAX_CONSOLE: usize = 500;
/// The window a laptop shows: what the portal is laid out for and what screenshots show.
pub const VIEWPORT: (u32, u32) = (1440, 900);
/// Tallest full-page screenshot (longer pages are cut: the artifacts stay a few MiB).
pub const MAX_SCREENSHOT_HEIGHT: f64 = 4000.0;

/// The Chromium executable: `$HUATUO_CHROMIUM`, else the first of the usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HUATUO_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Console messages, uncaught exceptions and failed loads of the page, in order.
    pub console: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start headless Chromium (log to `log`) with `extra_args` (e.g. [`trust_spki_arg`]), open one page
    /// and attach to it.
    pub fn launch(chromium: &Path, log: &Path, extra_args: &[String]) -> Result<Browser, String> {
        let profile =
            tempfile::Builder::new().prefix("huatuo-chromium-").tempdir().map_err(|e| e.to_string())?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>&2")
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                &format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra_args)
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", chromium.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let (tx, replies) = channel();
        let sink = console.clone();
        std::thread::spawn(move || read_messages(BufReader::new(stdout), tx, sink));
        let mut b =
            Browser { child, stdin, replies, next_id: 0, session: String::new(), console, _profile: profile };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().ok_or("no targetId")?.to_string();
        let attached = b.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))?;
        b.session = attached["sessionId"].as_str().ok_or("no sessionId")?.to_string();
        b.call("Runtime.enable", json!({}))?;
        b.call("Page.enable", json!({}))?;
        b.call("Log.enable", json!({}))?;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        Ok(b)
    }

    /// Send one command (to the attached page once there is one) and wait for its answer.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.stdin
            .write_all(&bytes)
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("{method}: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(v) if v["id"].as_u64() == Some(id) => {
                    if let Some(err) = v.get("error") {
                        return Err(format!("{method}: {err}"));
                    }
                    return Ok(v["result"].clone());
                }
                Ok(_) => continue, // an answer to an earlier call that timed out
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{method}: no answer in {CALL_TIMEOUT:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(format!("{method}: chromium exited")),
            }
        }
    }

    pub fn navigate(&mut self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({ "url": url }))?;
        match r.get("errorText").and_then(Value::as_str) {
            Some(e) if !e.is_empty() => Err(format!("navigate {url}: {e}")),
            _ => Ok(()),
        }
    }

    /// Evaluate a JavaScript expression in the page (promises awaited); returns its JSON value.
    pub fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"].as_str().or(ex["text"].as_str()).unwrap_or("exception");
            return Err(format!("{expr}: {text}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Poll `expr` until it is truthy or `timeout` passes; returns its last value on success.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(expr) {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => v,
                Err(e) => Value::String(e),
            };
            if Instant::now() >= deadline {
                return Err(format!("not true within {timeout:?}: {expr} (last: {last})"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// A PNG of the whole page (up to [`MAX_SCREENSHOT_HEIGHT`] CSS pixels), written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        let m = self.call("Page.getLayoutMetrics", json!({}))?;
        let w = m["cssContentSize"]["width"].as_f64().unwrap_or(f64::from(VIEWPORT.0));
        let h = m["cssContentSize"]["height"].as_f64().unwrap_or(f64::from(VIEWPORT.1));
        let clip = json!({ "x": 0, "y": 0, "width": w.max(f64::from(VIEWPORT.0)),
            "height": h.clamp(f64::from(VIEWPORT.1), MAX_SCREENSHOT_HEIGHT), "scale": 1 });
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true, "clip": clip }),
        )?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(data).ok_or("screenshot is not base64")?;
        if !png.starts_with(b"\x89PNG") {
            return Err("screenshot is not a PNG".into());
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The collected console lines, for failure messages.
    pub fn console_text(&self) -> String {
        self.console.lock().map(|c| c.join("\n")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The reader thread: split the stream at NULs, pass answers on, keep the page's console and errors.
fn read_messages(mut r: impl BufRead, tx: Sender<Value>, console: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match std::io::Read::take(&mut r, MAX_MESSAGE as u64).read_until(0, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&0) {
            return; // oversized or truncated message: the stream cannot be resynchronised
        }
        buf.pop();
        let Ok(v) = serde_json::from_slice::<Value>(&buf) else { continue };
        if v.get("id").is_some() {
            if tx.send(v).is_err() {
                return;
            }
            continue;
        }
        let line = match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                let text = d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("?");
                Some(format!("EXCEPTION: {text}"))
            }
            Some("Runtime.consoleAPICalled") => {
                let p = &v["params"];
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| x["value"].as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(format!("console.{}: {}", p["type"].as_str().unwrap_or("log"), args.join(" ")))
            }
            Some("Log.entryAdded") => {
                let e = &v["params"]["entry"];
                Some(format!(
                    "log.{} {}: {} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["source"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                ))
            }
            _ => None,
        };
        if let (Some(line), Ok(mut c)) = (line, console.lock())
            && c.len() < MAX_CONSOLE
        {
            c.push(line);
        }
    }
}

/// The Chromium flag that accepts a server whose certificate carries the public key of `cert_der` (DER) even
/// though no trusted CA signed it: how the test trusts a cluster's throwaway CA without
/// `--ignore-certificate-errors` (which would accept any certificate) and without a system trust store.
/// Chromium matches the keys of the certificates the server sends, so pass the server's own certificate.
/// (Honoured only with a `--user-data-dir`, which [`Browser::launch`] always sets.)
pub fn trust_spki_arg(cert_der: &[u8]) -> Result<String, String> {
    let spki = spki_of(cert_der).ok_or("not a DER X.509 certificate")?;
    let hex = proto::tls::sha256_hex(spki);
    let digest: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    let digest = digest.ok_or("bad SHA-256 hex")?;
    Ok(format!("--ignore-certificate-errors-spki-list={}", base64_encode(&digest)))
}

/// One DER element: its tag, the whole element (tag and length included), its contents, and what follows.
struct Der<'a> {
    tag: u8,
    whole: &'a [u8],
    contents: &'a [u8],
    rest: &'a [u8],
}

/// The DER element at the start of `der`. `None` if truncated or not a definite length of at most 4 bytes
/// (certificates never need more).
fn der_element(der: &[u8]) -> Option<Der<'_>> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)), &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = der.len() - rest.len();
    Some(Der { tag, whole: &der[..header + len], contents: &rest[..len], rest: &rest[len..] })
}

/// The SubjectPublicKeyInfo element (tag and length included) of an X.509 certificate:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
/// issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }`.
fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    fn sequence(d: Der<'_>) -> Option<Der<'_>> {
        (d.tag == 0x30).then_some(d)
    }
    let cert = sequence(der_element(cert)?)?;
    let mut tbs = sequence(der_element(cert.contents)?)?.contents;
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.rest; // explicit version
    }
    for _ in 0..5 {
        tbs = der_element(tbs)?.rest; // serial, signature algorithm, issuer, validity, subject
    }
    Some(sequence(der_element(tbs)?)?.whole)
}

/// Standard base64 with padding (what Chromium's SPKI flag and CDP expect).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |a, (i, &b)| a | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (with padding, no line breaks), as CDP sends binary data. `None` on anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[test]
fn base64_round_trips_known_values() {
    assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
    assert_eq!(base64_decode("TQ==").as_deref(), Some(&b"M"[..]));
    assert_eq!(base64_decode("TWE=").as_deref(), Some(&b"Ma"[..]));
    assert_eq!(base64_decode("TWFu").as_deref(), Some(&b"Man"[..]));
    assert_eq!(base64_decode("iVBORw0KGgo=").as_deref(), Some(&b"\x89PNG\r\n\x1a\n"[..]));
    for bad in ["T", "TQ=", "T===", "TQ==TWFu", "TW!u"] {
        assert!(base64_decode(bad).is_none(), "{bad}");
    }
    for plain in [&b""[..], b"M", b"Ma", b"Man", b"\x89PNG\r\n\x1a\n", &[0xff; 32]] {
        assert_eq!(base64_decode(&base64_encode(plain)).as_deref(), Some(plain));
    }
    assert_eq!(base64_encode(b"Ma"), "TWE=");
}

#[test]
fn spki_is_found_in_a_certificate_and_garbage_is_refused() {
    // A hand-made TBS with every field present: [0] version, serial, algorithm, issuer, validity, subject,
    // then the key (a SEQUENCE with a recognisable body).
    let spki = [0x30, 0x03, 0x04, 0x01, 0x42];
    let mut tbs = vec![0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x07];
    for _ in 0..4 {
        tbs.extend_from_slice(&[0x30, 0x00]);
    }
    tbs.extend_from_slice(&spki);
    tbs.extend_from_slice(&[0xa3, 0x00]); // extensions: ignored
    let mut cert = vec![0x30, 0x82, 0x00, (tbs.len() + 2) as u8, 0x30, tbs.len() as u8];
    cert.extend_from_slice(&tbs);
    assert_eq!(spki_of(&cert), Some(&spki[..]));
    let arg = trust_spki_arg(&cert).expect("pin");
    assert_eq!(arg.len(), "--ignore-certificate-errors-spki-list=".len() + 44, "{arg}");
    for cut in 0..cert.len() {
        assert!(spki_of(&cert[..cut]).is_none(), "truncated at {cut}");
    }
    assert!(trust_spki_arg(b"not a certificate").is_err());
    assert!(spki_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none(), "length beyond the data");
}
