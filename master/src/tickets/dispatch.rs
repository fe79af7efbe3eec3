//! The ticket dispatcher: the leader's loop that files outstanding tickets. The queue is the replicated state
//! (a [`TicketSource`]: objects in REPAIR without a recorded ticket), read in bounded pages; this loop only
//! remembers attempt counts and backoff deadlines, so a new leader simply starts over (a repeated filing is
//! harmless: same idempotency key).
//!
//! Per filing: attempts with capped exponential backoff and deterministic jitter; a success is reported to
//! the source (`filed`, which records `Input::Ticket { update: Filed }`) and re-reported if the state has not
//! caught up after [`FILED_RECHECK_MS`]. After `max_attempts` transient failures, or one permanent failure,
//! the filing is reported **failed once** (operator alert) and **parked**: this dispatcher makes no attempt
//! for it for `retry_failed_after_ms`, then starts a fresh round (and alerts again if that fails too). An
//! operator can file by hand meanwhile (`huatuo ticket ID filed`), which ends the filing: the object no
//! longer shows up as pending.
//!
//! The decisions live in [`Tracker`] (sans-IO: time is an argument, tested with explicit times); the async
//! [`Dispatcher::run`] around it does the IO: polling the source, running attempts on a bounded `JoinSet`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Filed, SinkError, TicketRequest, TicketSink, cut};

/// Requests asked of the source per poll: bounds the work (and the memory of one page) per poll of a large
/// state; the cursor walks the rest on the following polls.
pub const PAGE_SIZE: usize = 256;
/// Filings remembered at once (attempt counts, deadlines). Beyond it new filings wait for a free slot (they
/// stay pending in the replicated state, so nothing is lost); 4,096 open REPAIR filings without a ticket
/// means the integration is down, and the alerts say so.
pub const MAX_TRACKED: usize = 4096;
/// After a success has been reported, re-report it if the source still lists the filing this much later (the
/// report was lost, e.g. a leader change between filing and proposing).
pub const FILED_RECHECK_MS: u64 = 5_000;
/// Retry a failed `filed` report this soon (the sink already has the ticket; only the record is missing).
pub const REPORT_RETRY_MS: u64 = 1_000;
/// A call into the source (`pending`, `filed`, `failed`) that takes longer is abandoned: the loop must not
/// hang on a stuck proposal.
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error text kept and reported per filing.
pub const MAX_ERROR_LEN: usize = 512;

/// Why the source could not answer or record something (the dispatcher logs it and retries later).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Reading the replicated state failed on this node.
    #[error("reading the replicated state failed: {0}")]
    Store(String),
    /// The master refused or could not commit the write (not the leader, no quorum, ...).
    #[error("{0}")]
    Api(#[from] proto::error::ApiError),
    /// The master is shutting down.
    #[error("the master is stopping")]
    Stopping,
    /// The record needs a command version the cluster has not enabled (the source says so once; the
    /// dispatcher retries quietly).
    #[error("{0}")]
    NotEnabled(String),
}

/// The replicated state, as the dispatcher sees it. Implemented by the master over its fsm.
pub trait TicketSource: Send + Sync + 'static {
    /// Outstanding filings (objects in REPAIR with no ticket recorded) whose idempotency key is strictly
    /// greater than `after`, sorted by key, at most `limit`. `Ok(vec![])` when this node is not the leader.
    /// An `Err` skips this poll and forgets nothing.
    fn pending(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TicketRequest>, SourceError>> + Send;
    /// The sink filed `req`: record `Input::Ticket { ticket: filed.ticket_id, update: Filed }` for
    /// `req.object` (replicated). An `Err` is retried after [`REPORT_RETRY_MS`].
    fn filed(
        &self,
        req: &TicketRequest,
        filed: &Filed,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
    /// Filing `req` failed (after `attempts` attempts; `error` is the last error): alert an operator. Called
    /// once per round of attempts.
    fn failed(&self, req: &TicketRequest, error: &str, attempts: u32) -> impl Future<Output = ()> + Send;
}

/// The dispatcher's settings (`[tickets]` gives the first six; see `TicketsConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchConfig {
    pub poll_ms: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_failed_after_ms: u64,
    pub max_in_flight: usize,
    /// An attempt that has not returned by then is abandoned as a transient failure (a guard above the
    /// sink's own timeout, e.g. a file sink stuck on a dead NFS mount).
    pub attempt_timeout_ms: u64,
    /// Filings remembered at once (default [`MAX_TRACKED`]).
    pub max_tracked: usize,
    /// Requests per `pending` call (default [`PAGE_SIZE`]).
    pub page_size: usize,
    /// Jitter seed (e.g. the node id), so tests replay exactly.
    pub seed: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            // The leader's source scans the objects for REPAIR without a ticket when anything changed since
            // the last scan (O(objects)); every 5 s keeps that cheap under a busy ingest, and 5 s of delay
            // is nothing next to the hours a repair takes.
            poll_ms: 5_000,
            // 1+2+4+...+300 s: ~20 minutes of retrying before the operator hears of it.
            max_attempts: 10,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            retry_failed_after_ms: 3_600_000,
            max_in_flight: 4,
            attempt_timeout_ms: super::MAX_TIMEOUT_MS + 10_000,
            max_tracked: MAX_TRACKED,
            page_size: PAGE_SIZE,
            seed: 0,
        }
    }
}

/// Where one filing stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `next_at_ms` to attempt.
    Ready,
    /// An attempt is running.
    InFlight,
    /// Filed; report it to the source at `report_at_ms` (again, if the source still lists it then).
    Filed { filed: Filed, report_at_ms: u64 },
    /// Failed and alerted; a new round starts at `until_ms`.
    Parked { until_ms: u64 },
}

/// What the tracker remembers of one filing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub req: TicketRequest,
    /// Attempts in the current round.
    pub attempts: u32,
    pub next_at_ms: u64,
    pub phase: Phase,
    pub last_error: Option<String>,
}

/// IO the loop must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run `sink.file(req)` and hand the result to [`Tracker::on_result`].
    Attempt(TicketRequest),
    /// Call `source.filed(req, filed)` and hand the outcome to [`Tracker::on_reported`].
    ReportFiled(TicketRequest, Filed),
    /// Call `source.failed(req, error, attempts)` (operator alert).
    ReportFailed { req: TicketRequest, error: String, attempts: u32 },
}

/// Counters for logs, metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub attempts: u64,
    pub filed: u64,
    pub failed: u64,
    /// New filings not tracked because [`DispatchConfig::max_tracked`] entries were already tracked.
    pub over_capacity: u64,
}

/// The dispatcher's decisions, without IO.
#[derive(Debug)]
pub struct Tracker {
    cfg: DispatchConfig,
    entries: BTreeMap<String, Entry>,
    /// The last key of the previous full page; `None`: start from the beginning.
    cursor: Option<String>,
    pub stats: Stats,
}

impl Tracker {
    pub fn new(cfg: DispatchConfig) -> Tracker {
        Tracker { cfg, entries: BTreeMap::new(), cursor: None, stats: Stats::default() }
    }

    /// Where the next `pending` call starts.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take in one page of `pending(after, limit)`. Filings in the page's key range that are no longer listed
    /// are forgotten (filed or left REPAIR), except those in flight (their result is still coming). Returns
    /// whether more pages follow (the page was full).
    pub fn observe(&mut self, after: Option<&str>, mut page: Vec<TicketRequest>, now_ms: u64) -> bool {
        let limit = self.cfg.page_size;
        page.retain(|r| after.is_none_or(|a| r.idempotency_key.as_str() > a));
        page.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        page.dedup_by(|a, b| a.idempotency_key == b.idempotency_key);
        page.truncate(limit);
        let full = page.len() >= limit;
        let end = if full { page.last().map(|r| r.idempotency_key.clone()) } else { None };
        let in_range = |k: &str| after.is_none_or(|a| k > a) && end.as_deref().is_none_or(|e| k <= e);
        let listed: std::collections::BTreeSet<&str> =
            page.iter().map(|r| r.idempotency_key.as_str()).collect();
        self.entries.retain(|k, e| !in_range(k) || listed.contains(k.as_str()) || e.phase == Phase::InFlight);
        for req in page {
            let req = req.bounded();
            if let Some(e) = self.entries.get_mut(&req.idempotency_key) {
                e.req = req;
            } else if self.entries.len() < self.cfg.max_tracked {
                let key = req.idempotency_key.clone();
                self.entries.insert(
                    key,
                    Entry { req, attempts: 0, next_at_ms: now_ms, phase: Phase::Ready, last_error: None },
                );
            } else {
                self.stats.over_capacity += 1;
            }
        }
        self.cursor = end;
        full
    }

    /// The IO due at `now_ms`, with at most `free_slots` new attempts. Attempts and reports are marked as
    /// started, so calling again does not repeat them.
    pub fn due(&mut self, now_ms: u64, free_slots: usize) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut slots = free_slots;
        for e in self.entries.values_mut() {
            match &e.phase {
                Phase::Parked { until_ms } if *until_ms <= now_ms => {
                    // A fresh round: the alert was sent; maybe the integration is back.
                    e.phase = Phase::Ready;
                    e.attempts = 0;
                    e.next_at_ms = now_ms;
                }
                Phase::Filed { filed, report_at_ms } if *report_at_ms <= now_ms => {
                    steps.push(Step::ReportFiled(e.req.clone(), filed.clone()));
                    e.phase = Phase::Filed { filed: filed.clone(), report_at_ms: now_ms + FILED_RECHECK_MS };
                    continue;
                }
                _ => {}
            }
            if e.phase == Phase::Ready && e.next_at_ms <= now_ms && slots > 0 {
                slots -= 1;
                e.phase = Phase::InFlight;
                e.attempts += 1;
                self.stats.attempts += 1;
                steps.push(Step::Attempt(e.req.clone()));
            }
        }
        steps
    }

    /// The result of an attempt for `key`. Returns the failure report when this result ends the round.
    pub fn on_result(&mut self, key: &str, result: Result<Filed, SinkError>, now_ms: u64) -> Option<Step> {
        let cfg = &self.cfg;
        let e = self.entries.get_mut(key)?;
        if e.phase != Phase::InFlight {
            return None;
        }
        match result {
            Ok(filed) => {
                self.stats.filed += 1;
                e.last_error = None;
                e.phase = Phase::Filed { filed, report_at_ms: now_ms };
                None
            }
            Err(err) => {
                let permanent = err.is_permanent();
                let msg = cut(&err.to_string(), MAX_ERROR_LEN);
                e.last_error = Some(msg.clone());
                if permanent || e.attempts >= cfg.max_attempts {
                    self.stats.failed += 1;
                    e.phase = Phase::Parked { until_ms: now_ms.saturating_add(cfg.retry_failed_after_ms) };
                    let error = if permanent {
                        format!("ticket filing failed permanently (not retried): {msg}")
                    } else {
                        format!("ticket filing failed after {} attempts; last error: {msg}", e.attempts)
                    };
                    Some(Step::ReportFailed { req: e.req.clone(), error, attempts: e.attempts })
                } else {
                    e.phase = Phase::Ready;
                    e.next_at_ms = now_ms.saturating_add(backoff_ms(cfg, key, e.attempts));
                    None
                }
            }
        }
    }

    /// The outcome of a `filed` report.
    pub fn on_reported(&mut self, key: &str, ok: bool, now_ms: u64) {
        if let Some(Entry { phase: Phase::Filed { report_at_ms, .. }, .. }) = self.entries.get_mut(key)
            && !ok
        {
            *report_at_ms = now_ms + REPORT_RETRY_MS;
        }
    }

    /// The earliest time something becomes due (for the loop's sleep), if anything is waiting on time.
    /// `slots_free`: whether an attempt could start; when all slots are busy, ready filings wait for a result
    /// instead (counting them would wake the loop at once, over and over: a busy loop).
    pub fn next_wake(&self, slots_free: bool) -> Option<u64> {
        self.entries
            .values()
            .filter_map(|e| match &e.phase {
                Phase::Ready => slots_free.then_some(e.next_at_ms),
                Phase::InFlight => None,
                Phase::Filed { report_at_ms, .. } => Some(*report_at_ms),
                Phase::Parked { until_ms } => Some(*until_ms),
            })
            .min()
    }
}

/// Delay before attempt `attempts + 1`: `base * 2^(attempts-1)` capped at `backoff_max_ms`, then "equal
/// jitter" (half fixed, half spread by a hash of seed, key and attempt) so filings that failed together do
/// not retry together, yet a seed replays exactly.
pub fn backoff_ms(cfg: &DispatchConfig, key: &str, attempts: u32) -> u64 {
    let exp = attempts.saturating_sub(1).min(63);
    let raw = cfg.backoff_base_ms.saturating_mul(1u64 << exp.min(40)).min(cfg.backoff_max_ms);
    let half = raw / 2;
    half + jitter_hash(cfg.seed, key, attempts) % (raw - half + 1)
}

/// splitmix64 over FNV-1a of the key: a stable, well-spread hash without a global RNG.
fn jitter_hash(seed: u64, key: &str, attempts: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ (u64::from(attempts).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs the tracker against a sink and a source until shutdown.
pub struct Dispatcher<S, Src> {
    sink: Arc<S>,
    source: Arc<Src>,
    cfg: DispatchConfig,
    wake: Arc<Notify>,
}

impl<S: TicketSink, Src: TicketSource> Dispatcher<S, Src> {
    pub fn new(sink: Arc<S>, source: Arc<Src>, cfg: DispatchConfig) -> Self {
        Dispatcher { sink, source, cfg, wake: Arc::new(Notify::new()) }
    }

    /// `notify_one()` on this polls the source now (e.g. after applying a transition into REPAIR) instead
    /// of at the next `poll_ms`.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The loop: poll, attempt, report, sleep until something is due, a result arrives, the waker fires or
    /// `shutdown` resolves. Attempts in flight at shutdown are aborted (their filings stay pending in the
    /// replicated state). Returns the counters.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Stats {
        let Dispatcher { sink, source, cfg, wake } = self;
        let start = Instant::now();
        let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let attempt_timeout = Duration::from_millis(cfg.attempt_timeout_ms);
        let max_in_flight = cfg.max_in_flight;
        let poll_ms = cfg.poll_ms;
        let page_size = cfg.page_size;
        let mut tracker = Tracker::new(cfg);
        let mut inflight: JoinSet<Result<Filed, SinkError>> = JoinSet::new();
        let mut inflight_keys: BTreeMap<tokio::task::Id, String> = BTreeMap::new();
        let mut next_poll = 0u64;
        tokio::pin!(shutdown);
        tracing::info!(sink = sink.name(), "ticket dispatcher started");
        loop {
            if now_ms() >= next_poll {
                let after = tracker.cursor().map(str::to_string);
                match tokio::time::timeout(SOURCE_TIMEOUT, source.pending(after.as_deref(), page_size)).await
                {
                    Ok(Ok(page)) => {
                        let more = tracker.observe(after.as_deref(), page, now_ms());
                        // Walk the remaining pages right away; wait a poll interval after the last one.
                        next_poll = if more { now_ms() } else { now_ms() + poll_ms };
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "ticket dispatcher: reading pending tickets failed");
                        next_poll = now_ms() + poll_ms;
                    }
                    Err(_) => {
                        tracing::warn!("ticket dispatcher: reading pending tickets timed out");
                        next_poll = now_ms() + poll_ms;
                    }
                }
            }
            let free = max_in_flight.saturating_sub(inflight.len());
            for step in tracker.due(now_ms(), free) {
                match step {
                    Step::Attempt(req) => {
                        let sink = Arc::clone(&sink);
                        let key = req.idempotency_key.clone();
                        tracing::debug!(key = %key, object = %req.object, "filing ticket");
                        let h = inflight.spawn(async move {
                            match tokio::time::timeout(attempt_timeout, sink.file(&req)).await {
                                Ok(r) => r,
                                Err(_) => Err(SinkError::Transient(format!(
                                    "attempt abandoned after {} ms",
                                    attempt_timeout.as_millis()
                                ))),
                            }
                        });
                        inflight_keys.insert(h.id(), key);
                    }
                    Step::ReportFiled(req, filed) => {
                        let ok = match tokio::time::timeout(SOURCE_TIMEOUT, source.filed(&req, &filed)).await
                        {
                            Ok(Ok(())) => true,
                            Ok(Err(SourceError::NotEnabled(e))) => {
                                let key = &req.idempotency_key;
                                tracing::debug!(key = %key, error = %e, "filed ticket not recorded yet");
                                false
                            }
                            Ok(Err(e)) => {
                                let key = &req.idempotency_key;
                                tracing::warn!(key = %key, error = %e, "recording filed ticket failed");
                                false
                            }
                            Err(_) => false,
                        };
                        if ok {
                            tracing::info!(key = %req.idempotency_key, object = %req.object,
                                ticket = %filed.ticket_id, already = filed.already, "ticket filed");
                        }
                        tracker.on_reported(&req.idempotency_key, ok, now_ms());
                    }
                    Step::ReportFailed { .. } => {}
                }
            }
            let slots_free = inflight.len() < max_in_flight;
            let wake_at = tracker.next_wake(slots_free).map_or(next_poll, |w| w.min(next_poll));
            let sleep = tokio::time::sleep_until(start + Duration::from_millis(wake_at));
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                    let (id, result) = match joined {
                        Ok((id, r)) => (id, r),
                        Err(e) => (e.id(), Err(SinkError::Transient(format!("sink task failed: {e}")))),
                    };
                    let Some(key) = inflight_keys.remove(&id) else { continue };
                    let report = tracker.on_result(&key, result, now_ms());
                    if let Some(Step::ReportFailed { req, error, attempts }) = report {
                        tracing::error!(key = %key, object = %req.object, attempts, error = %error,
                            "repair ticket could not be filed; operator alerted");
                        let alert = source.failed(&req, &error, attempts);
                        if tokio::time::timeout(SOURCE_TIMEOUT, alert).await.is_err() {
                            tracing::warn!(key = %key, "alerting about a failed ticket timed out");
                        }
                    }
                }
                () = sleep => {}
                () = wake.notified() => next_poll = 0,
            }
        }
        inflight.shutdown().await;
        tracing::info!(stats = ?tracker.stats, "ticket dispatcher stopped");
        tracker.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_machines::{Kind, ObjectId, State};

    fn req(key: &str) -> TicketRequest {
        let object: ObjectId = "disk/h1/sda".parse().unwrap();
        TicketRequest {
            idempotency_key: key.to_string(),
            object,
            kind: Kind::Disk,
            host: "h1".into(),
            state: State::Repair,
            state_since_ms: 1,
            reason: "r".into(),
            labels: Default::default(),
            attrs: Default::default(),
            evidence: vec![],
            ends: vec![],
        }
    }

    fn cfg() -> DispatchConfig {
        DispatchConfig {
            max_attempts: 3,
            backoff_base_ms: 100,
            backoff_max_ms: 400,
            retry_failed_after_ms: 10_000,
            ..DispatchConfig::default()
        }
    }

    fn attempts(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Attempt(r) => Some(r.idempotency_key.clone()),
                _ => None,
            })
            .collect()
    }

    fn transient() -> Result<Filed, SinkError> {
        Err(SinkError::Transient("HTTP 500".into()))
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_deterministically() {
        let c = cfg();
        for a in 1..=10u32 {
            let raw = (100u64 << (a - 1).min(40)).min(400);
            let d = backoff_ms(&c, "k", a);
            assert!(d >= raw / 2 && d <= raw, "attempt {a}: {d} not in [{}, {raw}]", raw / 2);
            assert_eq!(d, backoff_ms(&c, "k", a), "same seed, same delay");
        }
        let spread: std::collections::BTreeSet<u64> =
            (0..50).map(|i| backoff_ms(&c, &format!("k{i}"), 3)).collect();
        assert!(spread.len() > 10, "keys that fail together retry apart: {spread:?}");
        assert!(
            backoff_ms(&DispatchConfig { backoff_max_ms: u64::MAX, ..c }, "k", u32::MAX) > 0,
            "no overflow"
        );
    }

    #[test]
    fn a_round_ends_in_one_failure_report_then_parks_then_retries() {
        let mut t = Tracker::new(cfg());
        t.observe(None, vec![req("a")], 0);
        let mut now = 0;
        let mut failed = Vec::new();
        let mut failed_at = 0;
        for round_attempt in 1..=3 {
            let steps = t.due(now, 4);
            assert_eq!(attempts(&steps), vec!["a"], "attempt {round_attempt} at {now}");
            assert!(t.due(now, 4).is_empty(), "an attempt in flight is not started twice");
            failed_at = now + 7;
            failed.extend(t.on_result("a", transient(), failed_at));
            now = t.next_wake(true).unwrap();
        }
        assert_eq!(failed.len(), 1, "{failed:?}");
        match &failed[0] {
            Step::ReportFailed { error, attempts, .. } => {
                assert_eq!(*attempts, 3);
                assert!(error.contains("after 3 attempts") && error.contains("HTTP 500"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // Parked: nothing happens until retry_failed_after_ms, however often we look.
        assert_eq!(now, failed_at + 10_000, "the next wake-up is the end of the park");
        for at in [failed_at, failed_at + 100, failed_at + 5_000, failed_at + 9_999] {
            assert!(t.due(at, 4).is_empty(), "parked filing attempted at {at}");
        }
        assert_eq!(t.stats, Stats { attempts: 3, filed: 0, failed: 1, over_capacity: 0 });
        // A fresh round after the park time; success is reported, then re-checked, then forgotten.
        let t0 = failed_at + 10_000;
        assert_eq!(attempts(&t.due(t0, 4)), vec!["a"]);
        assert_eq!(t.entry("a").unwrap().attempts, 1);
        let filed = Filed { ticket_id: "T-1".into(), already: false };
        assert!(t.on_result("a", Ok(filed.clone()), t0 + 50).is_none());
        assert_eq!(t.due(t0 + 50, 4), vec![Step::ReportFiled(req("a"), filed.clone())]);
        assert!(t.due(t0 + 51, 4).is_empty());
        t.on_reported("a", false, t0 + 60);
        assert_eq!(t.due(t0 + 60 + REPORT_RETRY_MS, 4), vec![Step::ReportFiled(req("a"), filed.clone())]);
        t.on_reported("a", true, t0 + 1_100);
        assert!(t.due(t0 + 1_100 + REPORT_RETRY_MS, 4).is_empty(), "a reported success is not re-sent soon");
        assert_eq!(
            t.due(t0 + 60 + REPORT_RETRY_MS + FILED_RECHECK_MS, 4),
            vec![Step::ReportFiled(req("a"), filed)],
            "still listed as pending long after the report: report again"
        );
        t.observe(None, vec![], t0 + 20_000);
        assert!(t.is_empty(), "a recorded ticket is no longer pending and is forgotten");
    }

    #[test]
    fn permanent_failure_alerts_at_once() {
        let mut t = Tracker::new(cfg());
        t.observe(None, vec![req("a")], 0);
        t.due(0, 1);
        let s = t.on_result("a", Err(SinkError::Permanent("HTTP 401".into())), 5);
        assert!(matches!(s, Some(Step::ReportFailed { attempts: 1, ref error, .. })
                if error.contains("permanently")));
        assert!(matches!(t.entry("a").unwrap().phase, Phase::Parked { until_ms: 10_005 }));
    }

    #[test]
    fn in_flight_is_bounded_and_results_for_unknown_keys_are_ignored() {
        let mut t = Tracker::new(cfg());
        t.observe(None, vec![req("c"), req("a"), req("b"), req("a")], 0);
        assert_eq!(t.len(), 3, "duplicates collapse");
        assert_eq!(attempts(&t.due(0, 2)), vec!["a", "b"]);
        assert_eq!(attempts(&t.due(0, 0)), Vec::<String>::new());
        assert_eq!(t.next_wake(false), None, "all busy: nothing to wake for but a result");
        assert_eq!(t.next_wake(true), Some(0));
        assert_eq!(attempts(&t.due(0, 1)), vec!["c"]);
        assert!(t.on_result("zzz", transient(), 0).is_none());
        // "a" in flight survives a page that no longer lists it; "b" (in flight) too; "c" filed is forgotten.
        t.on_result("c", Ok(Filed { ticket_id: "x".into(), already: true }), 1);
        t.observe(None, vec![], 2);
        assert_eq!(t.len(), 2);
        assert!(t.on_result("a", transient(), 3).is_none(), "stale entry still accepts its result");
        t.observe(None, vec![], 4);
        assert_eq!(t.len(), 1, "now only b (in flight) is left");
    }

    #[test]
    fn memory_is_bounded_and_pages_walk_the_whole_queue() {
        let mut t = Tracker::new(DispatchConfig { max_tracked: 3, page_size: 2, ..cfg() });
        let all: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let page = |after: Option<&str>| -> Vec<TicketRequest> {
            all.iter().filter(|k| after.is_none_or(|a| k.as_str() > a)).take(2).map(|k| req(k)).collect()
        };
        let c = t.cursor().map(str::to_string);
        assert!(t.observe(c.as_deref(), page(c.as_deref()), 0));
        assert_eq!(t.cursor(), Some("k1"));
        let c = t.cursor().map(str::to_string);
        assert!(t.observe(c.as_deref(), page(c.as_deref()), 0));
        assert_eq!((t.len(), t.stats.over_capacity), (3, 1), "k3 is not tracked: capacity 3");
        let c = t.cursor().map(str::to_string);
        assert!(!t.observe(c.as_deref(), page(c.as_deref()), 0), "last page");
        assert_eq!(t.cursor(), None, "wraps around");
        assert_eq!((t.len(), t.stats.over_capacity), (3, 2));
        // k0 gets filed and leaves the queue; the next walk has room for k3.
        t.due(0, 10);
        t.on_result("k0", Ok(Filed { ticket_id: "1".into(), already: false }), 1);
        let rest: Vec<TicketRequest> = all[1..].iter().take(2).map(|k| req(k)).collect();
        t.observe(None, rest, 2);
        assert!(t.entry("k0").is_none());
        t.observe(Some("k2"), vec![req("k3"), req("k4")], 2);
        assert!(t.entry("k3").is_some(), "freed memory goes to the next waiting filing");
        // A page that lists keys outside its range (a buggy source) cannot plant them.
        t.observe(Some("k4"), vec![req("k0")], 3);
        assert!(t.entry("k0").is_none());
    }
}
