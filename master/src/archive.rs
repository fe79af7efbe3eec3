//! The member's archive (issue 19): what the replicated state forgets (it keeps the latest finding per checker
//! and 256 history entries per object), kept for analytics and charts over weeks: every transition, every
//! ticket update, and the findings downsampled so a healthy fleet stays small (every fault finding, at most
//! [`MAX_FAULTS_PER_OBJECT_DAY`] per object and day; of GOOD/INFO/UNKNOWN findings only the last one per
//! object, checker and day).
//!
//! Fed where committed entries are applied: the state machine collects each entry's [`ArchiveEvent`]s in its
//! decision and hands them to [`Feed::push`], a non-blocking send into a queue of [`QUEUE_ENTRIES`] entries
//! (when it is full the entry is dropped from the archive and counted, so the Raft thread never waits for
//! it). A writer thread drains the queue into `archive.redb` in the member's data dir: derived data, so its
//! commits do not fsync ([`redb::Durability::None`]) except one every [`FSYNC_EVERY`]; a crash loses at most
//! the last seconds of archive. Every member applies the same entries, so every archive holds the same rows;
//! the archive is not part of the Raft snapshot, so a member restored from a snapshot (or that started
//! archiving on an existing state) has a gap before that point, which [`ArchiveInfo::gaps`] reports.
//!
//! Bounded by `[archive] days` (rows older than that, by the latest entry's time, are dropped) and
//! `[archive] max_mb` (the rows' bytes; oldest rows first): both by a pruning step of at most [`PRUNE_STEP`]
//! rows per write, so a large backlog is dropped over several writes, never in one long transaction.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use state_machines::{Finding, Input, Severity};

/// One day in milliseconds (days are UTC days since 1970).
pub const DAY_MS: u64 = 86_400_000;
/// Entries waiting for the writer: a few seconds of a busy cluster's entries (hundreds per second); beyond
/// this the archive falls behind and drops (counted in `dropped_entries`) rather than slowing Raft.
pub const QUEUE_ENTRIES: usize = 4096;
/// Entries written per archive transaction at most (one commit for a burst, bounded).
pub const WRITE_BATCH: usize = 512;
/// Rows dropped per write at most by the pruning step (days, max_mb): keeps every write short.
pub const PRUNE_STEP: usize = 2048;
/// A durable (fsync) commit at least this often while entries arrive; in between commits do not fsync.
pub const FSYNC_EVERY: Duration = Duration::from_secs(2);
/// How often the writer looks at its queue when it is empty (the archive lags the state by at most this plus
/// one write; a full queue of 4,096 entries takes several seconds of a busy cluster to fill).
pub const WRITER_POLL: Duration = Duration::from_millis(50);
/// The least time between two archive writes while entries keep arriving: the entries of that time go into
/// one transaction. Each write copies the B-tree pages it touches (the by-object index touches pages all
/// over the file), so many small writes cost much more than a few larger ones: with one write per poll a
/// 3-master bench spent about 7.6% of the machine in the archive writers, most of it copying pages.
/// A flush (tests, shutdown) is written at once.
pub const WRITE_EVERY: Duration = Duration::from_millis(500);
/// Fault findings kept per object and day: a flapping disk reporting every minute keeps 48 (the first).
pub const MAX_FAULTS_PER_OBJECT_DAY: u64 = 48;
/// Rows per page of the archive API: default and most.
pub const DEFAULT_PAGE: usize = 1000;
pub const MAX_PAGE: usize = 5000;
/// Points of one object's series at most (the portal's chart); beyond it the last point per checker and
/// hour is kept, then the newest points.
pub const MAX_SERIES_POINTS: usize = 2000;
/// Most days a series or the config may ask for.
pub const MAX_DAYS: u64 = 3650;

/// (time_ms, raft index, position in the entry) -> JSON row. Keys are equal on every member.
type Key = (u64, u64, u64);
const FINDINGS: TableDefinition<Key, &[u8]> = TableDefinition::new("findings");
const TRANSITIONS: TableDefinition<Key, &[u8]> = TableDefinition::new("transitions");
const TICKETS: TableDefinition<Key, &[u8]> = TableDefinition::new("tickets");
/// (object, time_ms, index, pos) -> () : one object's findings (the series).
const BY_OBJECT: TableDefinition<(&str, u64, u64, u64), ()> = TableDefinition::new("by_object");
/// (day, object, checker) -> key of the kept GOOD/INFO finding of that day.
const HEALTHY_LAST: TableDefinition<(u64, &str, &str), Key> = TableDefinition::new("healthy_last");
/// (day, object) -> fault findings kept that day.
const FAULTS_DAY: TableDefinition<(u64, &str), u64> = TableDefinition::new("faults_day");
/// Counters: last_index, bytes, created_ms, dropped, downsampled.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// time_ms of the first entry archived after a gap -> why (GAP_*).
const GAPS: TableDefinition<u64, u64> = TableDefinition::new("gaps");

const GAP_STARTED: u64 = 1;
const GAP_RESTORED: u64 = 2;
/// Bytes counted per key besides the value (three u64).
const KEY_BYTES: u64 = 24;

/// `[archive]` in the master config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Days kept (by the latest entry's time); 1..=3650.
    #[serde(default = "default_days")]
    pub days: u64,
    /// Most MiB of rows kept (oldest dropped first); 1..=1048576.
    #[serde(default = "default_max_mb")]
    pub max_mb: u64,
}

fn default_days() -> u64 {
    30
}
fn default_max_mb() -> u64 {
    1024
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig { days: default_days(), max_mb: default_max_mb() }
    }
}

impl ArchiveConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_DAYS).contains(&self.days) {
            return Err(format!("[archive] days {} must be 1..={MAX_DAYS}", self.days));
        }
        if !(1..=1 << 20).contains(&self.max_mb) {
            return Err(format!("[archive] max_mb {} must be 1..=1048576", self.max_mb));
        }
        Ok(())
    }
}

/// What one applied entry adds to the archive.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchiveEvent {
    Finding(Finding),
    Transition(TransitionRow),
    Ticket(TicketRow),
}

/// One transition as archived (and served by `GET /api/v1/archive/transitions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRow {
    pub time_ms: u64,
    pub object: String,
    pub from_state: String,
    pub to_state: String,
    /// The rule of a finding, else the cause's name (operator, ticket, ack, action, timeout, ...).
    pub cause: String,
    /// The whole cause as history shows it.
    pub cause_detail: String,
    #[serde(default)]
    pub checker: String,
    #[serde(default)]
    pub checker_version: String,
    /// The time of the finding that caused it (the agent's clock), where a finding did.
    #[serde(default)]
    pub finding_time_ms: Option<u64>,
    pub revision: u64,
}

impl TransitionRow {
    pub fn new(
        time_ms: u64,
        object: String,
        t: &state_machines::Transition,
        input: &Input,
        revision: u64,
    ) -> Self {
        let (cause, checker, checker_version) = match &t.cause {
            state_machines::Cause::Finding { checker, version, rule, .. } => {
                (rule.clone(), checker.clone(), version.clone())
            }
            c => (c.name().to_string(), String::new(), String::new()),
        };
        let finding_time_ms = match input {
            Input::Finding(f) => Some(f.time_ms),
            _ => t.evidence.as_ref().map(|e| e.time_ms),
        };
        TransitionRow {
            time_ms,
            object,
            from_state: t.from.as_str().into(),
            to_state: t.to.as_str().into(),
            cause,
            cause_detail: crate::sm_seam::cause_text(&t.cause),
            checker,
            checker_version,
            finding_time_ms,
            revision,
        }
    }
}

/// One ticket update as archived (filed, accepted, part-replaced, closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRow {
    pub time_ms: u64,
    pub object: String,
    pub ticket: String,
    pub status: String,
}

enum Msg {
    Entry { index: u64, now_ms: u64, events: Vec<ArchiveEvent> },
    Restored,
    Flush(SyncSender<()>),
}

/// Counters of this member's archive (not replicated).
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Entries dropped because the queue was full.
    pub dropped_entries: AtomicU64,
    /// Findings not kept by the downsampling.
    pub downsampled: AtomicU64,
    /// Rows dropped by the days / max_mb bounds.
    pub pruned: AtomicU64,
    pub entries: AtomicU64,
    /// Write errors (the archive goes on with the next batch).
    pub errors: AtomicU64,
    /// Time spent in `Feed::push` (ns, summed) and calls: the cost on the apply path.
    pub push_ns: AtomicU64,
    pub pushes: AtomicU64,
    /// Pushes that took longer than [`SLOW_PUSH`] (the thread was descheduled, or the channel contended).
    pub slow_pushes: AtomicU64,
}

/// A push slower than this is counted in `slow_pushes` (a `try_send` takes well under a microsecond).
pub const SLOW_PUSH: Duration = Duration::from_micros(100);

/// The sending side, held by the state machine (on the Raft thread).
#[derive(Clone)]
pub struct Feed {
    tx: SyncSender<Msg>,
    stats: Arc<ArchiveStats>,
}

impl Feed {
    /// Queue an applied entry's events; never blocks (a full queue drops the entry and counts it).
    pub fn push(&self, index: u64, now_ms: u64, events: Vec<ArchiveEvent>) {
        let t = Instant::now();
        match self.tx.try_send(Msg::Entry { index, now_ms, events }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped_entries.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
        let took = t.elapsed();
        self.stats.push_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.stats.pushes.fetch_add(1, Ordering::Relaxed);
        if took > SLOW_PUSH {
            self.stats.slow_pushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The state was replaced by a snapshot: the archive has a gap before the next entry.
    pub fn restored(&self) {
        if self.tx.try_send(Msg::Restored).is_err() {
            self.stats.dropped_entries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive: {0}")]
    Storage(String),
    #[error("{0}")]
    Invalid(String),
}

fn se(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Storage(e.to_string())
}

/// One member's archive: the reader side (the API) and the writer thread behind [`Feed`].
pub struct Archive {
    db: Arc<Database>,
    cfg: ArchiveConfig,
    pub stats: Arc<ArchiveStats>,
    tx: Mutex<Option<SyncSender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the archive holds (the export's manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    pub days: u64,
    pub max_mb: u64,
    /// Bytes of rows held (keys and values; the file adds redb's overhead).
    pub bytes: u64,
    pub rows: BTreeMap<String, u64>,
    /// Oldest and newest row time over the tables (0 when empty).
    pub first_ms: u64,
    pub last_ms: u64,
    pub created_ms: u64,
    /// Gaps: the archive has nothing of the entries applied before `before_ms` (snapshot restore or
    /// archive started on an existing state).
    pub gaps: Vec<Gap>,
    pub dropped_entries: u64,
    pub downsampled: u64,
    pub pruned: u64,
    /// Entries this member queued since it started, and the mean cost of queueing one on the apply path.
    pub pushes: u64,
    pub push_ns_mean: u64,
    /// Pushes slower than [`SLOW_PUSH`].
    pub slow_pushes: u64,
    /// Archive writes that failed since start (the archive misses their entries).
    pub write_errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub before_ms: u64,
    pub why: String,
}

/// One page of an archive table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub table: String,
    pub rows: Vec<serde_json::Value>,
    #[serde(default)]
    pub next_page_token: String,
}

/// One object's archived findings, for charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub object: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub truncated: bool,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub time_ms: u64,
    pub checker: String,
    pub severity: String,
    pub values: BTreeMap<String, f64>,
}

pub const TABLES: [&str; 3] = ["findings", "transitions", "tickets"];

fn table_def(name: &str) -> Option<TableDefinition<'static, Key, &'static [u8]>> {
    match name {
        "findings" => Some(FINDINGS),
        "transitions" => Some(TRANSITIONS),
        "tickets" => Some(TICKETS),
        _ => None,
    }
}

impl Archive {
    /// Open (or create) `path` and start its writer thread. `existing_state`: the member's replicated state
    /// already holds entries (a new archive then starts with a gap).
    pub fn open(
        path: &Path,
        cfg: ArchiveConfig,
        existing_state: bool,
    ) -> Result<(Arc<Archive>, Feed), ArchiveError> {
        cfg.validate().map_err(ArchiveError::Invalid)?;
        let db = Arc::new(Database::create(path).map_err(se)?);
        let fresh;
        {
            let txn = db.begin_write().map_err(se)?;
            {
                let meta = txn.open_table(META).map_err(se)?;
                fresh = meta.get("created_ms").map_err(se)?.is_none();
                for d in [FINDINGS, TRANSITIONS, TICKETS] {
                    txn.open_table(d).map_err(se)?;
                }
                txn.open_table(BY_OBJECT).map_err(se)?;
                txn.open_table(HEALTHY_LAST).map_err(se)?;
                txn.open_table(FAULTS_DAY).map_err(se)?;
                txn.open_table(GAPS).map_err(se)?;
            }
            txn.commit().map_err(se)?;
        }
        let stats = Arc::new(ArchiveStats::default());
        let (tx, rx) = sync_channel(QUEUE_ENTRIES);
        let mut w = Writer {
            db: db.clone(),
            cfg: cfg.clone(),
            stats: stats.clone(),
            gap: (fresh && existing_state).then_some(GAP_STARTED),
            fresh,
        };
        let writer = std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || w.run(rx))
            .map_err(|e| ArchiveError::Storage(format!("cannot start the archive writer: {e}")))?;
        let archive = Arc::new(Archive {
            db,
            cfg,
            stats: stats.clone(),
            tx: Mutex::new(Some(tx.clone())),
            writer: Mutex::new(Some(writer)),
        });
        Ok((archive, Feed { tx, stats }))
    }

    /// Wait until everything queued before this call is written (tests, export of a quiet cluster).
    pub fn flush(&self) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(tx) = tx {
            let (done_tx, done_rx) = sync_channel(1);
            if tx.send(Msg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    /// Stop taking entries from this handle and wait for the writer (it ends once every [`Feed`] is gone:
    /// the state machine drops its feed when the raft node stops).
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let h = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    pub fn config(&self) -> &ArchiveConfig {
        &self.cfg
    }

    pub fn info(&self) -> Result<ArchiveInfo, ArchiveError> {
        let txn = self.db.begin_read().map_err(se)?;
        let meta = txn.open_table(META).map_err(se)?;
        let m = |k: &str| -> Result<u64, ArchiveError> {
            Ok(meta.get(k).map_err(se)?.map(|g| g.value()).unwrap_or(0))
        };
        let mut rows = BTreeMap::new();
        let (mut first, mut last) = (u64::MAX, 0);
        for name in TABLES {
            let t = txn.open_table(table_def(name).expect("known table")).map_err(se)?;
            rows.insert(name.to_string(), t.len().map_err(se)?);
            if let Some((k, _)) = t.first().map_err(se)? {
                first = first.min(k.value().0);
            }
            if let Some((k, _)) = t.last().map_err(se)? {
                last = last.max(k.value().0);
            }
        }
        let gaps_t = txn.open_table(GAPS).map_err(se)?;
        let mut gaps = Vec::new();
        for g in gaps_t.iter().map_err(se)? {
            let (k, v) = g.map_err(se)?;
            let why = match v.value() {
                GAP_RESTORED => "restored from a Raft snapshot: entries before it are not archived here",
                _ => "archive started on an existing state: entries before it are not archived here",
            };
            gaps.push(Gap { before_ms: k.value(), why: why.into() });
        }
        Ok(ArchiveInfo {
            days: self.cfg.days,
            max_mb: self.cfg.max_mb,
            bytes: m("bytes")?,
            rows,
            first_ms: if first == u64::MAX { 0 } else { first },
            last_ms: last,
            created_ms: m("created_ms")?,
            gaps,
            dropped_entries: self.stats.dropped_entries.load(Ordering::Relaxed),
            downsampled: m("downsampled")?,
            pruned: m("pruned")?,
            pushes: self.stats.pushes.load(Ordering::Relaxed),
            push_ns_mean: self.stats.push_ns.load(Ordering::Relaxed)
                / self.stats.pushes.load(Ordering::Relaxed).max(1),
            slow_pushes: self.stats.slow_pushes.load(Ordering::Relaxed),
            write_errors: self.stats.errors.load(Ordering::Relaxed),
        })
    }

    /// One page of `table` with rows in [since_ms, until_ms), oldest first; `page_token` continues a
    /// previous page (same table and range).
    pub fn page(
        &self,
        table: &str,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
        page_token: &str,
    ) -> Result<Page, ArchiveError> {
        let def = table_def(table).ok_or_else(|| {
            ArchiveError::Invalid(format!("no archive table {table:?} (tables: {})", TABLES.join(", ")))
        })?;
        if since_ms > until_ms {
            return Err(ArchiveError::Invalid(format!("since_ms {since_ms} is after until_ms {until_ms}")));
        }
        let limit = if limit == 0 { DEFAULT_PAGE } else { limit.min(MAX_PAGE) };
        let start: Key = if page_token.is_empty() {
            (since_ms, 0, 0)
        } else {
            let k = parse_token(page_token)?;
            if k.0 < since_ms || k.0 > until_ms {
                return Err(ArchiveError::Invalid("page_token does not belong to this range".into()));
            }
            k
        };
        let txn = self.db.begin_read().map_err(se)?;
        let t = txn.open_table(def).map_err(se)?;
        let mut rows = Vec::new();
        let mut next = String::new();
        for r in t.range(start..(until_ms, 0, 0)).map_err(se)? {
            let (k, v) = r.map_err(se)?;
            if rows.len() == limit {
                let k = k.value();
                next = format!("{}.{}.{}", k.0, k.1, k.2);
                break;
            }
            rows.push(serde_json::from_slice(v.value()).map_err(se)?);
        }
        Ok(Page { table: table.into(), rows, next_page_token: next })
    }

    /// The archived findings of `object` over the last `days` before `now_ms`: numeric readings only,
    /// oldest first, at most [`MAX_SERIES_POINTS`].
    pub fn series(&self, object: &str, days: u64, now_ms: u64) -> Result<Series, ArchiveError> {
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(ArchiveError::Invalid(format!("days {days} must be 1..={MAX_DAYS}")));
        }
        let from_ms = now_ms.saturating_sub(days * DAY_MS);
        let txn = self.db.begin_read().map_err(se)?;
        let idx = txn.open_table(BY_OBJECT).map_err(se)?;
        let rows = txn.open_table(FINDINGS).map_err(se)?;
        let mut points = Vec::new();
        for r in idx.range((object, from_ms, 0, 0)..=(object, now_ms, u64::MAX, u64::MAX)).map_err(se)? {
            let (k, _) = r.map_err(se)?;
            let (_, t, i, p) = k.value();
            let Some(v) = rows.get((t, i, p)).map_err(se)? else { continue };
            let f: Finding = serde_json::from_slice(v.value()).map_err(se)?;
            let values = f
                .readings
                .iter()
                .filter_map(|(k, v)| {
                    v.trim().parse::<f64>().ok().filter(|x| x.is_finite()).map(|x| (k.clone(), x))
                })
                .collect();
            points.push(Point {
                time_ms: f.time_ms,
                checker: f.checker,
                severity: f.severity.to_string(),
                values,
            });
        }
        let (points, truncated) = thin(points, MAX_SERIES_POINTS);
        Ok(Series { object: object.into(), from_ms, to_ms: now_ms, truncated, points })
    }
}

/// At most `max` points: beyond it, the last point per (checker, hour), then the newest `max`.
fn thin(points: Vec<Point>, max: usize) -> (Vec<Point>, bool) {
    if points.len() <= max {
        return (points, false);
    }
    let mut last: BTreeMap<(u64, String), Point> = BTreeMap::new();
    for p in points {
        last.insert((p.time_ms / 3_600_000, p.checker.clone()), p);
    }
    let mut v: Vec<Point> = last.into_values().collect();
    v.sort_by(|a, b| a.time_ms.cmp(&b.time_ms).then_with(|| a.checker.cmp(&b.checker)));
    if v.len() > max {
        v.drain(..v.len() - max);
    }
    (v, true)
}

fn parse_token(s: &str) -> Result<Key, ArchiveError> {
    let bad = || ArchiveError::Invalid(format!("bad page_token {s:?}"));
    let mut it = s.split('.').map(|p| p.parse::<u64>().map_err(|_| bad()));
    let k = (it.next().ok_or_else(bad)??, it.next().ok_or_else(bad)??, it.next().ok_or_else(bad)??);
    if it.next().is_some() {
        return Err(bad());
    }
    Ok(k)
}

/// How long the writer lets entries gather before its next write: the rest of [`WRITE_EVERY`] since the last
/// one (the queue holds several seconds of entries), or nothing when the last batch was full (the writer is
/// behind: waiting would only let the queue fill) or a flush asks for the write.
fn gather_for(since_last_write: Duration, behind: bool, flush: bool) -> Duration {
    if behind || flush { Duration::ZERO } else { WRITE_EVERY.saturating_sub(since_last_write) }
}

struct Writer {
    db: Arc<Database>,
    cfg: ArchiveConfig,
    stats: Arc<ArchiveStats>,
    /// A gap to record before the next entry.
    gap: Option<u64>,
    fresh: bool,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) {
        let mut last_sync = Instant::now();
        let mut last_write = Instant::now() - WRITE_EVERY;
        let mut behind = false;
        let mut dirty = false;
        loop {
            // Poll instead of blocking in recv: a sender never has a sleeping receiver to wake, so the Raft
            // thread's push is a plain enqueue (waking the writer on every push let the scheduler switch to it
            // mid-push: 1.1-1.5 ms mean pushes in a 3-master run on this 2-core machine).
            let first = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    if dirty && last_sync.elapsed() >= FSYNC_EVERY {
                        self.sync();
                        dirty = false;
                        last_sync = Instant::now();
                    }
                    std::thread::sleep(WRITER_POLL);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            };
            let wait = gather_for(last_write.elapsed(), behind, matches!(first, Msg::Flush(_)));
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            last_write = Instant::now();
            let mut batch = vec![first];
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            behind = batch.len() == WRITE_BATCH;
            let durable = last_sync.elapsed() >= FSYNC_EVERY;
            let mut flushes = Vec::new();
            let mut entries = Vec::new();
            for m in batch {
                match m {
                    Msg::Entry { index, now_ms, events } => entries.push((index, now_ms, events)),
                    Msg::Restored => {
                        // Entries queued before the restore were applied before it: write them first.
                        if !entries.is_empty() {
                            self.write_logged(std::mem::take(&mut entries), false);
                        }
                        self.gap = Some(GAP_RESTORED);
                    }
                    Msg::Flush(done) => flushes.push(done),
                }
            }
            if !entries.is_empty() || durable {
                self.write_logged(entries, durable);
                dirty = !durable;
                if durable {
                    last_sync = Instant::now();
                }
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
        if dirty {
            self.sync();
        }
    }

    fn sync(&mut self) {
        self.write_logged(Vec::new(), true);
    }

    fn write_logged(&mut self, entries: Vec<(u64, u64, Vec<ArchiveEvent>)>, durable: bool) {
        if let Err(e) = self.write(entries, durable) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "archive write failed (the archive misses these entries)");
        }
    }

    fn write(
        &mut self,
        entries: Vec<(u64, u64, Vec<ArchiveEvent>)>,
        durable: bool,
    ) -> Result<(), ArchiveError> {
        let mut txn = self.db.begin_write().map_err(se)?;
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).map_err(se)?;
        let mut now_ms = 0;
        {
            let mut w = Tx::open(&txn)?;
            if self.fresh && !entries.is_empty() {
                self.fresh = false;
                w.meta_set("created_ms", entries[0].1)?;
            }
            let last_index = w.meta("last_index")?;
            // Sized once: grown a push at a time, this vector (up to WRITE_BATCH entries' events) was
            // copied into ever larger allocations, the writer's largest cost in a `perf` of `bench master`.
            let mut adds = Vec::with_capacity(entries.iter().map(|e| e.2.len()).sum());
            for (index, now, events) in entries {
                now_ms = now_ms.max(now);
                if index <= last_index && last_index > 0 {
                    continue; // replayed after a restart: already archived
                }
                if let Some(why) = self.gap.take() {
                    w.gaps.insert(now, why).map_err(se)?;
                }
                self.stats.entries.fetch_add(1, Ordering::Relaxed);
                w.meta_set("last_index", index)?;
                let cutoff = cutoff_ms(now, self.cfg.days);
                adds.extend(events.into_iter().enumerate().map(|(pos, ev)| Add {
                    index,
                    pos: pos as u64,
                    now,
                    ev,
                    cutoff,
                }));
            }
            let superseded = superseded_in_batch(&adds);
            for (a, gone) in adds.into_iter().zip(superseded) {
                if gone {
                    w.meta_add("downsampled", 1)?;
                } else {
                    w.add(a.index, a.pos, a.now, a.ev, a.cutoff)?;
                }
            }
            if now_ms > 0 || w.meta("bytes")? > self.cfg.max_mb << 20 {
                let last_time = w.meta("last_time")?;
                let pruned = w.prune(
                    cutoff_ms(now_ms.max(last_time), self.cfg.days),
                    self.cfg.max_mb << 20,
                    PRUNE_STEP,
                )?;
                if pruned > 0 {
                    self.stats.pruned.fetch_add(pruned, Ordering::Relaxed);
                }
            }
            if now_ms > w.meta("last_time")? {
                w.meta_set("last_time", now_ms)?;
            }
            self.stats.downsampled.store(w.meta("downsampled")?, Ordering::Relaxed);
            w.finish()?;
        }
        txn.commit().map_err(se)?;
        Ok(())
    }
}

/// One event of a write batch, in the order the entries applied it.
struct Add {
    index: u64,
    pos: u64,
    now: u64,
    ev: ArchiveEvent,
    cutoff: u64,
}

/// Which events of a write batch the archive would keep only to drop again later in the same batch: of the
/// healthy findings of one (day, object, checker) within their cutoff only the newest stays (the last of
/// the newest on a tie), as adding them one by one leaves it. The others count as downsampled without
/// touching the tables, so an agent reporting the same disk healthy several times between two writes
/// costs one row change, not one per report.
fn superseded_in_batch(adds: &[Add]) -> Vec<bool> {
    let mut gone = vec![false; adds.len()];
    let mut newest: HashMap<(u64, &str, &str), usize> = HashMap::new();
    for (i, a) in adds.iter().enumerate() {
        let ArchiveEvent::Finding(f) = &a.ev else { continue };
        if !healthy(f.severity) || f.time_ms < a.cutoff {
            continue;
        }
        let key = (f.time_ms / DAY_MS, f.object.as_str(), f.checker.as_str());
        match newest.get_mut(&key) {
            Some(j) => {
                let ArchiveEvent::Finding(kept) = &adds[*j].ev else { continue };
                if f.time_ms >= kept.time_ms {
                    gone[*j] = true;
                    *j = i;
                } else {
                    gone[i] = true;
                }
            }
            None => {
                newest.insert(key, i);
            }
        }
    }
    gone
}

/// The oldest time kept when the newest entry is at `now_ms`: the start of the day `days - 1` days back.
pub fn cutoff_ms(now_ms: u64, days: u64) -> u64 {
    (now_ms / DAY_MS).saturating_sub(days.saturating_sub(1)) * DAY_MS
}

/// The archive's tables open in one write transaction.
struct Tx<'t> {
    findings: redb::Table<'t, Key, &'static [u8]>,
    transitions: redb::Table<'t, Key, &'static [u8]>,
    tickets: redb::Table<'t, Key, &'static [u8]>,
    by_object: redb::Table<'t, (&'static str, u64, u64, u64), ()>,
    healthy: redb::Table<'t, (u64, &'static str, &'static str), Key>,
    faults: redb::Table<'t, (u64, &'static str), u64>,
    meta: redb::Table<'t, &'static str, u64>,
    gaps: redb::Table<'t, u64, u64>,
    /// The meta counters read or changed in this transaction (key, value, changed), written back once by
    /// [`Tx::finish`]: a finding changes `bytes` and often `downsampled`, and a read-modify-write of the
    /// meta table per finding was a fifth of the writer's B-tree work.
    metas: Vec<(&'static str, u64, bool)>,
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, ArchiveError> {
    serde_json::to_vec(v).map_err(se)
}

impl<'t> Tx<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, ArchiveError> {
        Ok(Tx {
            findings: txn.open_table(FINDINGS).map_err(se)?,
            transitions: txn.open_table(TRANSITIONS).map_err(se)?,
            tickets: txn.open_table(TICKETS).map_err(se)?,
            by_object: txn.open_table(BY_OBJECT).map_err(se)?,
            healthy: txn.open_table(HEALTHY_LAST).map_err(se)?,
            faults: txn.open_table(FAULTS_DAY).map_err(se)?,
            meta: txn.open_table(META).map_err(se)?,
            gaps: txn.open_table(GAPS).map_err(se)?,
            metas: Vec::new(),
        })
    }

    fn meta(&mut self, k: &'static str) -> Result<u64, ArchiveError> {
        if let Some(m) = self.metas.iter().find(|m| m.0 == k) {
            return Ok(m.1);
        }
        let v = self.meta.get(k).map_err(se)?.map(|g| g.value()).unwrap_or(0);
        self.metas.push((k, v, false));
        Ok(v)
    }

    fn meta_set(&mut self, k: &'static str, v: u64) -> Result<(), ArchiveError> {
        self.meta(k)?;
        if let Some(m) = self.metas.iter_mut().find(|m| m.0 == k) {
            *m = (k, v, true);
        }
        Ok(())
    }

    fn meta_add(&mut self, k: &'static str, d: i64) -> Result<(), ArchiveError> {
        let v = self.meta(k)?.saturating_add_signed(d);
        self.meta_set(k, v)
    }

    /// Write the changed meta counters back (before the transaction commits).
    fn finish(&mut self) -> Result<(), ArchiveError> {
        for (k, v, changed) in std::mem::take(&mut self.metas) {
            if changed {
                self.meta.insert(k, v).map_err(se)?;
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        index: u64,
        pos: u64,
        now: u64,
        ev: ArchiveEvent,
        cutoff: u64,
    ) -> Result<(), ArchiveError> {
        match ev {
            ArchiveEvent::Transition(t) => {
                let v = json(&t)?;
                self.meta_add("bytes", (v.len() as u64 + KEY_BYTES) as i64)?;
                self.transitions.insert((now, index, pos), v.as_slice()).map_err(se)?;
            }
            ArchiveEvent::Ticket(t) => {
                let v = json(&t)?;
                self.meta_add("bytes", (v.len() as u64 + KEY_BYTES) as i64)?;
                self.tickets.insert((now, index, pos), v.as_slice()).map_err(se)?;
            }
            ArchiveEvent::Finding(f) => self.add_finding(index, pos, f, cutoff)?,
        }
        Ok(())
    }

    fn add_finding(&mut self, index: u64, pos: u64, f: Finding, cutoff: u64) -> Result<(), ArchiveError> {
        if f.time_ms < cutoff {
            return self.meta_add("downsampled", 1);
        }
        let day = f.time_ms / DAY_MS;
        let object = f.object.as_str();
        let key = (f.time_ms, index, pos);
        if healthy(f.severity) {
            let prev = self.healthy.get((day, object, f.checker.as_str())).map_err(se)?.map(|g| g.value());
            if let Some(prev) = prev {
                if prev.0 > f.time_ms {
                    return self.meta_add("downsampled", 1); // an older one than the day's kept one
                }
                if self.remove_finding(prev, Some(object))? {
                    self.meta_add("downsampled", 1)?;
                }
            }
            self.healthy.insert((day, object, f.checker.as_str()), key).map_err(se)?;
        } else {
            let n = self.faults.get((day, object)).map_err(se)?.map(|g| g.value()).unwrap_or(0);
            if n >= MAX_FAULTS_PER_OBJECT_DAY {
                return self.meta_add("downsampled", 1);
            }
            self.faults.insert((day, object), n + 1).map_err(se)?;
        }
        let v = json(&f)?;
        self.findings.insert(key, v.as_slice()).map_err(se)?;
        self.by_object.insert((object, key.0, key.1, key.2), ()).map_err(se)?;
        self.meta_add("bytes", finding_bytes(v.len(), object) as i64)
    }

    /// Remove one finding row and its index entry; whether it was there. `object` is the row's object when
    /// the caller knows it (the day's previous healthy finding of the same object), else it is decoded.
    fn remove_finding(&mut self, key: Key, object: Option<&str>) -> Result<bool, ArchiveError> {
        let Some(v) = self.findings.remove(key).map_err(se)? else { return Ok(false) };
        let len = v.value().len();
        let object = match object {
            Some(o) => o.to_string(),
            None => serde_json::from_slice::<Finding>(v.value()).map_err(se)?.object.to_string(),
        };
        drop(v);
        self.by_object.remove((object.as_str(), key.0, key.1, key.2)).map_err(se)?;
        self.meta_add("bytes", -(finding_bytes(len, &object) as i64))?;
        Ok(true)
    }

    /// Drop rows older than `cutoff`, then the oldest rows while the bytes exceed `max_bytes`, then the
    /// downsampling index of days before the cutoff: at most `budget` rows in all. Returns the rows dropped.
    fn prune(&mut self, cutoff: u64, max_bytes: u64, budget: usize) -> Result<u64, ArchiveError> {
        let mut n = 0usize;
        while n < budget {
            // The oldest row over the three tables.
            let heads = [
                self.findings.first().map_err(se)?.map(|(k, _)| k.value()),
                self.transitions.first().map_err(se)?.map(|(k, _)| k.value()),
                self.tickets.first().map_err(se)?.map(|(k, _)| k.value()),
            ];
            let Some((which, key)) =
                heads.iter().enumerate().filter_map(|(i, k)| k.map(|k| (i, k))).min_by_key(|(_, k)| *k)
            else {
                break;
            };
            if key.0 >= cutoff && self.meta("bytes")? <= max_bytes {
                break;
            }
            match which {
                0 => {
                    self.remove_finding(key, None)?;
                }
                1 => {
                    let len = self.transitions.remove(key).map_err(se)?.map(|v| v.value().len() as u64);
                    if let Some(len) = len {
                        self.meta_add("bytes", -((len + KEY_BYTES) as i64))?;
                    }
                }
                _ => {
                    let len = self.tickets.remove(key).map_err(se)?.map(|v| v.value().len() as u64);
                    if let Some(len) = len {
                        self.meta_add("bytes", -((len + KEY_BYTES) as i64))?;
                    }
                }
            }
            n += 1;
        }
        let dropped = n as u64;
        let cutoff_day = cutoff / DAY_MS;
        while n < budget {
            let Some(k) = self.healthy.first().map_err(se)?.map(|(k, _)| {
                let (d, o, c) = k.value();
                (d, o.to_string(), c.to_string())
            }) else {
                break;
            };
            if k.0 >= cutoff_day {
                break;
            }
            self.healthy.remove((k.0, k.1.as_str(), k.2.as_str())).map_err(se)?;
            n += 1;
        }
        while n < budget {
            let Some(k) = self.faults.first().map_err(se)?.map(|(k, _)| {
                let (d, o) = k.value();
                (d, o.to_string())
            }) else {
                break;
            };
            if k.0 >= cutoff_day {
                break;
            }
            self.faults.remove((k.0, k.1.as_str())).map_err(se)?;
            n += 1;
        }
        if dropped > 0 {
            self.meta_add("pruned", dropped as i64)?;
        }
        Ok(dropped)
    }
}

/// GOOD, INFO and UNKNOWN findings are kept as the last one per object, checker and day.
fn healthy(s: Severity) -> bool {
    !s.is_fault()
}

fn finding_bytes(value_len: usize, object: &str) -> u64 {
    value_len as u64 + 2 * KEY_BYTES + object.len() as u64
}

#[cfg(test)]
mod tests;
