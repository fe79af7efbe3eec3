//! Repair-ticket integration tests on real sockets and files: the webhook sink and the dispatcher against a
//! loopback HTTP receiver (port 0) that can fail, drop, hang, or answer with garbage or endless bodies; the
//! file sink's dedupe across reopen and corrupt lines. Waits are on conditions with bounded deadlines.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use master::tickets::dispatch::Stats;
use master::tickets::{
    AnySink, DispatchConfig, Dispatcher, FileSink, Filed, SinkError, SourceError, TicketRequest, TicketSink,
    TicketSource, TicketsConfig, WebhookSink,
};
use state_machines::{Evidence, Kind, ObjectId, Severity, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every wait in these tests gives up after this (a hang is a failure, not a stuck CI job).
const DEADLINE: Duration = Duration::from_secs(20);

fn request(host: &str, since: u64) -> TicketRequest {
    let object: ObjectId = format!("disk/{host}/sda").parse().unwrap();
    TicketRequest {
        idempotency_key: format!("{object}@{since}"),
        object,
        kind: Kind::Disk,
        host: host.to_string(),
        state: State::Repair,
        state_since_ms: since,
        reason: "disk/h/sda: ERROR -> REPAIR by ack; smart-failing (disk 1): SMART overall-health FAILED"
            .into(),
        labels: BTreeMap::from([("rack".to_string(), "r12".to_string()), ("switch".into(), "sw-3".into())]),
        attrs: BTreeMap::from([("serial".to_string(), "WD-123".to_string())]),
        evidence: vec![Evidence {
            checker: "disk".into(),
            version: "1".into(),
            rule: "smart-failing".into(),
            severity: Severity::Fatal,
            evidence: "SMART overall-health self-assessment test result: FAILED!".into(),
            readings: BTreeMap::new(),
            time_ms: since - 10,
        }],
        ends: vec![],
    }
}

// ---------------------------------------------------------------------------------------------------------
// A loopback "ticket system": HTTP/1.1 by hand so it can misbehave in ways a framework would not allow.

#[derive(Debug, Clone)]
enum Behavior {
    /// A real ticket system: a new key gets 201 {"id":"T-n"}, a known key 409 with its id.
    Real,
    /// Answer this status and body, and record nothing.
    Status(u16, &'static str),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Read the request, never answer, keep the connection open.
    Hang,
    /// File the ticket, then answer 201 with an endless body.
    Endless,
    /// Answer bytes that are not HTTP.
    Garbage,
}

#[derive(Debug, Clone)]
struct Seen {
    idempotency_key: Option<String>,
    authorization: Option<String>,
    body: serde_json::Value,
}

#[derive(Default)]
struct ReceiverState {
    seen: Vec<Seen>,
    /// Tickets the "ticket system" holds: idempotency key -> id.
    tickets: BTreeMap<String, String>,
    /// Hanging connections open now, and the most at once.
    open: usize,
    max_open: usize,
}

struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    /// Serve `script[i]` to the i-th connection and `then` to the rest.
    async fn start(script: Vec<Behavior>, then: Behavior) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/tickets", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let b = script.get(n).cloned().unwrap_or_else(|| then.clone());
                n += 1;
                tokio::spawn(serve(conn, b, Arc::clone(&st)));
            }
        });
        Receiver { url, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn tickets(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().tickets.clone()
    }
}

async fn serve(mut conn: TcpStream, behavior: Behavior, state: Arc<Mutex<ReceiverState>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    let key = header("idempotency-key");
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(serde_json::Value::Null);
    let file = || {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            idempotency_key: key.clone(),
            authorization: header("authorization"),
            body: body.clone(),
        });
        let k = key.clone().unwrap_or_default();
        if let Some(id) = s.tickets.get(&k) {
            return (409, format!("{{\"id\":\"{id}\",\"error\":\"duplicate\"}}"));
        }
        let id = format!("T-{}", s.tickets.len() + 1);
        s.tickets.insert(k, id.clone());
        (201, format!("{{\"id\":\"{id}\"}}"))
    };
    let respond = |status: u16, body: &str| {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    match behavior {
        Behavior::Real => {
            let (status, body) = file();
            let _ = conn.write_all(respond(status, &body).as_bytes()).await;
        }
        Behavior::Status(status, reply) => {
            state.lock().unwrap().seen.push(Seen { idempotency_key: key, authorization: None, body });
            let _ = conn.write_all(respond(status, reply).as_bytes()).await;
        }
        Behavior::Drop => {
            state.lock().unwrap().seen.push(Seen { idempotency_key: key, authorization: None, body });
            drop(conn);
        }
        Behavior::Hang => {
            {
                let mut s = state.lock().unwrap();
                s.seen.push(Seen { idempotency_key: key, authorization: None, body });
                s.open += 1;
                s.max_open = s.max_open.max(s.open);
            }
            // Hold the connection open, answer nothing, until the client gives up.
            let _ = conn.read(&mut chunk).await;
            state.lock().unwrap().open -= 1;
        }
        Behavior::Endless => {
            file();
            let head = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let piece = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
            // Until the client hangs up (bounded so a broken client cannot keep this test alive).
            for _ in 0..100_000 {
                if conn.write_all(piece.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        Behavior::Garbage => {
            state.lock().unwrap().seen.push(Seen { idempotency_key: key, authorization: None, body });
            let _ = conn.write_all(b"\x00\xff\xfeNOT HTTP AT ALL\r\n\r\n").await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// An in-memory "replicated state": objects in REPAIR with or without a recorded ticket.

#[derive(Default)]
struct MemState {
    /// key -> (request, recorded ticket)
    queue: BTreeMap<String, (TicketRequest, Option<String>)>,
    filed: Vec<(String, Filed)>,
    failed: Vec<(String, String, u32)>,
    /// Drop `filed` reports instead of recording them (a leader change between filing and proposing).
    lose_reports: bool,
}

#[derive(Default)]
struct MemSource(Mutex<MemState>);

impl MemSource {
    fn with(reqs: Vec<TicketRequest>) -> Arc<MemSource> {
        let s = MemSource::default();
        for r in reqs {
            s.0.lock().unwrap().queue.insert(r.idempotency_key.clone(), (r, None));
        }
        Arc::new(s)
    }
    fn filed(&self) -> Vec<(String, Filed)> {
        self.0.lock().unwrap().filed.clone()
    }
    fn failed(&self) -> Vec<(String, String, u32)> {
        self.0.lock().unwrap().failed.clone()
    }
}

impl TicketSource for MemSource {
    async fn pending(&self, after: Option<&str>, limit: usize) -> Result<Vec<TicketRequest>, SourceError> {
        let s = self.0.lock().unwrap();
        Ok(s.queue
            .iter()
            .filter(|(k, (_, t))| t.is_none() && after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(_, (r, _))| r.clone())
            .collect())
    }
    async fn filed(&self, req: &TicketRequest, filed: &Filed) -> Result<(), SourceError> {
        let mut s = self.0.lock().unwrap();
        s.filed.push((req.idempotency_key.clone(), filed.clone()));
        if s.lose_reports {
            return Err(SourceError::Api(proto::error::ApiError::not_leader(None)));
        }
        if let Some((_, t)) = s.queue.get_mut(&req.idempotency_key) {
            *t = Some(filed.ticket_id.clone());
        }
        Ok(())
    }
    async fn failed(&self, req: &TicketRequest, error: &str, attempts: u32) {
        self.0.lock().unwrap().failed.push((req.idempotency_key.clone(), error.to_string(), attempts));
    }
}

/// Fast retries for tests: 10 ms base, 40 ms cap.
fn fast(max_attempts: u32) -> DispatchConfig {
    DispatchConfig {
        poll_ms: 20,
        max_attempts,
        backoff_base_ms: 10,
        backoff_max_ms: 40,
        retry_failed_after_ms: 3_600_000,
        max_in_flight: 2,
        ..DispatchConfig::default()
    }
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Stats>,
}

fn spawn<S: TicketSink>(sink: S, source: &Arc<MemSource>, cfg: DispatchConfig) -> Running {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let d = Dispatcher::new(Arc::new(sink), Arc::clone(source), cfg);
    let task = tokio::spawn(d.run(async move {
        let _ = rx.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) -> Stats {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task).await.expect("dispatcher stops").expect("no panic")
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn webhook(url: &str, timeout_ms: u64) -> WebhookSink {
    WebhookSink::new(url, Some("s3cret-token".into()), Duration::from_millis(timeout_ms)).unwrap()
}

// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn receiver_failing_twice_gets_exactly_one_ticket_with_one_key() {
    let rx = Receiver::start(vec![Behavior::Status(500, "oops"), Behavior::Drop], Behavior::Real).await;
    let req = request("h1", 1_000);
    let key = req.idempotency_key.clone();
    let source = MemSource::with(vec![req]);
    let d = spawn(webhook(&rx.url, 5_000), &source, fast(5));
    wait_for("the ticket to be recorded", || !source.filed().is_empty()).await;
    let stats = d.stop().await;

    assert_eq!(stats, Stats { attempts: 3, filed: 1, failed: 0, over_capacity: 0 });
    let seen = rx.seen();
    assert_eq!(seen.len(), 3, "500, dropped connection, success: {seen:?}");
    assert!(seen.iter().all(|s| s.idempotency_key.as_deref() == Some(key.as_str())), "same key every time");
    assert_eq!(rx.tickets(), BTreeMap::from([(key.clone(), "T-1".to_string())]), "exactly one ticket");
    let last = &seen[2];
    assert_eq!(last.authorization.as_deref(), Some("Bearer s3cret-token"));
    assert_eq!(last.body["schema"], 1);
    assert_eq!(last.body["idempotency_key"], key.as_str());
    assert_eq!(last.body["object"], "disk/h1/sda");
    assert_eq!(last.body["labels"]["rack"], "r12");
    assert_eq!(last.body["attrs"]["serial"], "WD-123");
    assert_eq!(last.body["evidence"][0]["rule"], "smart-failing");
    assert_eq!(source.filed(), vec![(key, Filed { ticket_id: "T-1".into(), already: false })], "filed once");
    assert!(source.failed().is_empty());
}

#[tokio::test]
async fn a_new_leader_refiling_gets_the_same_ticket_not_a_second() {
    let rx = Receiver::start(vec![], Behavior::Real).await;
    let req = request("h2", 2_000);
    let key = req.idempotency_key.clone();
    // The first leader files, but its report is lost (it stepped down before the proposal committed).
    let source = MemSource::with(vec![req]);
    source.0.lock().unwrap().lose_reports = true;
    let d = spawn(webhook(&rx.url, 5_000), &source, fast(5));
    wait_for("the first report", || !source.filed().is_empty()).await;
    d.stop().await;
    // The next leader sees the object still without a ticket and files again: the receiver answers 409.
    source.0.lock().unwrap().lose_reports = false;
    let filed_before = source.filed().len();
    let d = spawn(webhook(&rx.url, 5_000), &source, fast(5));
    wait_for("the second leader's report", || source.filed().len() > filed_before).await;
    let stats = d.stop().await;
    assert_eq!(stats.attempts, 1);
    assert_eq!(rx.tickets().len(), 1, "{:?}", rx.tickets());
    let last = source.filed().last().cloned().unwrap();
    assert_eq!(last, (key, Filed { ticket_id: "T-1".into(), already: true }));
}

#[tokio::test]
async fn receiver_that_never_answers_ends_in_one_failure_at_the_limit() {
    let rx = Receiver::start(vec![], Behavior::Hang).await;
    let source = MemSource::with(vec![request("h3", 3_000)]);
    let d = spawn(webhook(&rx.url, 150), &source, fast(3));
    wait_for("the failure report", || !source.failed().is_empty()).await;
    let stats = d.stop().await;
    assert_eq!(stats, Stats { attempts: 3, filed: 0, failed: 1, over_capacity: 0 });
    assert_eq!(rx.seen().len(), 3, "three attempts, then parked");
    let failed = source.failed();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (_, error, attempts) = &failed[0];
    assert_eq!(*attempts, 3);
    assert!(
        error.contains("after 3 attempts") && error.contains("no answer") && error.contains("150 ms"),
        "{error}"
    );
    assert!(source.filed().is_empty());
}

#[tokio::test]
async fn in_flight_attempts_are_bounded() {
    let rx = Receiver::start(vec![], Behavior::Hang).await;
    let source = MemSource::with((0..5).map(|i| request(&format!("b{i}"), 100 + i)).collect());
    let d = spawn(webhook(&rx.url, 200), &source, DispatchConfig { max_in_flight: 2, ..fast(1) });
    wait_for("five failure reports", || source.failed().len() == 5).await;
    let stats = d.stop().await;
    assert_eq!((stats.attempts, stats.failed), (5, 5));
    let max_open = rx.state.lock().unwrap().max_open;
    assert!((1..=2).contains(&max_open), "at most 2 requests at once, saw {max_open}");
}

#[tokio::test]
async fn a_4xx_is_a_permanent_failure_without_retries() {
    let rx = Receiver::start(vec![], Behavior::Status(422, "{\"error\":\"unknown rack label\"}")).await;
    let source = MemSource::with(vec![request("h4", 4_000)]);
    let d = spawn(webhook(&rx.url, 2_000), &source, fast(5));
    wait_for("the failure report", || !source.failed().is_empty()).await;
    let stats = d.stop().await;
    assert_eq!((stats.attempts, stats.failed), (1, 1));
    let (_, error, attempts) = source.failed()[0].clone();
    assert_eq!(attempts, 1);
    assert!(
        error.contains("permanently") && error.contains("422") && error.contains("unknown rack label"),
        "{error}"
    );
}

#[tokio::test]
async fn huge_and_malformed_responses_are_bounded_and_handled() {
    let req = request("h5", 5_000);
    let key = req.idempotency_key.clone();
    // An endless body on a 201: the ticket exists, so it is filed (id: the key) after a bounded read.
    let rx = Receiver::start(vec![], Behavior::Endless).await;
    let f = tokio::time::timeout(DEADLINE, webhook(&rx.url, 10_000).file(&req)).await.unwrap().unwrap();
    assert_eq!(f, Filed { ticket_id: key.clone(), already: false });
    // Not HTTP at all: a transient error (retry), with a message.
    let rx = Receiver::start(vec![], Behavior::Garbage).await;
    let e = webhook(&rx.url, 2_000).file(&req).await.unwrap_err();
    assert!(matches!(e, SinkError::Transient(_)), "{e}");
    // A 2xx with a body that is not JSON / has no usable id: filed under the key.
    for body in ["<html>ok</html>", "{\"id\":null}", "{\"id\":\"bad\\nid\"}"] {
        let rx = Receiver::start(vec![], Behavior::Status(200, body)).await;
        let f = webhook(&rx.url, 2_000).file(&req).await.unwrap();
        assert_eq!(f.ticket_id, key, "{body}");
    }
    // A 409 with an id: already filed.
    let rx = Receiver::start(vec![], Behavior::Status(409, "{\"ticket\": 4242}")).await;
    let f = webhook(&rx.url, 2_000).file(&req).await.unwrap();
    assert_eq!(f, Filed { ticket_id: "4242".into(), already: true });
    // Nobody listening: transient.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/t", l.local_addr().unwrap());
    drop(l);
    let e = webhook(&url, 2_000).file(&req).await.unwrap_err();
    assert!(matches!(&e, SinkError::Transient(m) if m.contains("connect")), "{e}");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

#[tokio::test]
async fn file_sink_writes_one_line_per_key_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickets.jsonl");
    let (a, b) = (request("h6", 6_000), request("h7", 7_000));
    let sink = FileSink::open(&path).unwrap();
    let first = sink.file(&a).await.unwrap();
    assert_eq!(first, Filed { ticket_id: "file-1".into(), already: false });
    assert_eq!(sink.file(&a).await.unwrap(), Filed { ticket_id: "file-1".into(), already: true });
    assert_eq!(lines(&path).len(), 1);
    drop(sink);
    // "Restart": the dedupe comes from the file.
    let sink = FileSink::open(&path).unwrap();
    assert_eq!(sink.report().tickets, 1);
    assert_eq!(sink.file(&a).await.unwrap(), Filed { ticket_id: "file-1".into(), already: true });
    assert_eq!(sink.file(&b).await.unwrap(), Filed { ticket_id: "file-2".into(), already: false });
    let l = lines(&path);
    assert_eq!(l.len(), 2);
    let v: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
    assert_eq!(
        (v["ticket"].as_str(), v["idempotency_key"].as_str()),
        (Some("file-2"), Some(b.idempotency_key.as_str()))
    );
    assert_eq!(v["labels"]["switch"], "sw-3");
}

#[tokio::test]
async fn file_sink_reports_corrupt_lines_and_keeps_deduping_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickets.jsonl");
    let (a, b, c) = (request("h8", 8_000), request("h9", 9_000), request("h10", 10_000));
    let good = |r: &TicketRequest, t: &str| {
        format!("{{\"ticket\":\"{t}\",\"idempotency_key\":\"{}\"}}", r.idempotency_key)
    };
    // A good line, a hand-edited broken one, another good one, and a write torn by a crash (no newline).
    let content = format!(
        "{}\nthis is not json\n{}\n{{\"ticket\":\"file-9\",\"idem",
        good(&a, "file-1"),
        good(&b, "file-2")
    );
    std::fs::write(&path, content).unwrap();
    let sink = FileSink::open(&path).unwrap();
    let r = sink.report().clone();
    assert_eq!((r.lines, r.tickets, r.corrupt_count, r.torn_tail), (4, 2, 2, true), "{r:?}");
    assert_eq!(r.corrupt.iter().map(|c| c.line).collect::<Vec<_>>(), vec![2, 4]);
    assert!(!r.corrupt[0].error.is_empty());
    assert!(sink.file(&a).await.unwrap().already);
    assert!(sink.file(&b).await.unwrap().already);
    let f = sink.file(&c).await.unwrap();
    assert_eq!(f, Filed { ticket_id: "file-3".into(), already: false });
    // The new line starts on its own line after the torn one and parses.
    let l = lines(&path);
    assert_eq!(l.len(), 5);
    let v: serde_json::Value = serde_json::from_str(&l[4]).unwrap();
    assert_eq!(v["idempotency_key"], c.idempotency_key.as_str());
    // And a reopen still sees all three keys.
    let sink = FileSink::open(&path).unwrap();
    assert_eq!((sink.report().tickets, sink.report().corrupt_count), (3, 2));
    assert!(sink.file(&c).await.unwrap().already);
}

#[tokio::test]
async fn file_sink_size_limit_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickets.jsonl");
    std::fs::write(&path, vec![b'\n'; 2_000]).unwrap();
    let e = FileSink::open_with_limit(&path, 1_000).unwrap_err();
    assert!(e.to_string().contains("rotate"), "{e}");
    let sink = FileSink::open_with_limit(&path, 2_500).unwrap();
    let e = sink.file(&request("h11", 11_000)).await.unwrap_err();
    assert!(matches!(&e, SinkError::Permanent(m) if m.contains("full")), "{e}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2_000, "nothing written");
}

#[tokio::test]
async fn dispatcher_with_a_file_sink_built_from_config_files_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let cfg: TicketsConfig =
        toml::from_str(&format!("sink = \"file\"\npath = {:?}\npoll_ms = 20\nmax_in_flight = 2", path))
            .unwrap();
    let Some(sink @ AnySink::File(_)) = cfg.build().unwrap() else { panic!("a file sink") };
    let reqs: Vec<TicketRequest> = (0..5).map(|i| request(&format!("n{i}"), 100 + i)).collect();
    let source = MemSource::with(reqs.clone());
    let d = spawn(sink, &source, DispatchConfig { page_size: 2, ..cfg.dispatch() });
    wait_for("all five recorded", || source.filed().len() == 5).await;
    let stats = d.stop().await;
    assert_eq!((stats.attempts, stats.filed, stats.failed), (5, 5, 0));
    assert_eq!(lines(&path).len(), 5);
    let mut ids: Vec<String> = source.filed().into_iter().map(|(_, f)| f.ticket_id).collect();
    ids.sort();
    assert_eq!(ids, (1..=5).map(|i| format!("file-{i}")).collect::<Vec<_>>());
    assert!(cfg.build().is_ok(), "reopening the same file works");
    assert!(
        TicketsConfig { sink: master::tickets::SinkKind::None, path: None, ..cfg }.build().unwrap().is_none(),
        "sink = none builds nothing"
    );
}
