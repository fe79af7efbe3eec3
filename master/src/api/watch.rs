//! Watch streams: changes from a revision on, read from the replicated change log, gap-free; a revision
//! older than the log is COMPACTED. Each stream is one task in [`Service::watchers`] and ends when its
//! client goes away, when the node stops, or when the watchers are told to stop (shutdown).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use proto::error::{ApiError, Code};
use tokio::sync::mpsc;

use super::{Service, lock, store_err};
use crate::model::ChangeEvent;
use crate::store::{ChangesRead, Filter, Reader};

/// Events per watch response (a response is one gRPC message / a few NDJSON lines).
pub const WATCH_BATCH: usize = 1000;
/// A watch with nothing to say still sends its progress this often, so clients detect dead streams.
pub const WATCH_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Responses buffered per watch stream before the stream waits for its client.
pub const WATCH_BUFFER: usize = 16;

/// Most watch streams one node serves at once (gRPC and REST together), unless configured (`max_watches`).
/// Each stream is a task, a buffer of up to [`WATCH_BUFFER`] responses and a store read per commit; the
/// connection limits alone let one client open thousands. 1024 covers a fleet's subscribers (a few per
/// consumer) with room for reconnect overlap; one more is refused with RESOURCE_EXHAUSTED (HTTP 429), which
/// clients retry elsewhere or later.
pub const MAX_WATCHES: usize = 1024;
/// The largest `max_watches` a config may ask for: past this, streams are bounded by memory, not a limit.
pub const MAX_WATCHES_CEILING: usize = 65_536;

/// What watchers receive: events and the revision the stream has covered so far.
pub type WatchItem = Result<(Vec<ChangeEvent>, u64), ApiError>;

/// Open watch streams: id -> the next revision each will read (for /metrics: count and lag), and how many
/// watches were refused at the limit.
#[derive(Default)]
pub(super) struct Registry {
    next: Mutex<BTreeMap<u64, u64>>,
    ids: AtomicU64,
    refused: AtomicU64,
}

/// Removes a watch stream from the registry when its task ends, however it ends.
struct Registered {
    svc: Weak<Service>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(s) = self.svc.upgrade() {
            lock(&s.watch_registry.next).remove(&self.id);
        }
    }
}

impl Service {
    /// Open watch streams and the largest lag among them (revisions not yet read).
    pub fn watcher_lag(&self) -> (u64, u64) {
        let current = self.current_revision();
        let w = lock(&self.watch_registry.next);
        let lag = w.values().map(|next| current.saturating_add(1).saturating_sub(*next)).max().unwrap_or(0);
        (w.len() as u64, lag)
    }

    /// The most watch streams this node serves at once.
    pub fn max_watches(&self) -> usize {
        self.cfg.max_watches
    }

    /// Watches refused because this node already served its limit of streams (for /metrics).
    pub fn watches_refused(&self) -> u64 {
        self.watch_registry.refused.load(Ordering::Relaxed)
    }

    /// Stream changes from `from` (0: from now) matching `filter`. The first item is an error if `from` was
    /// compacted. Ends when the receiver is dropped, this node stops, or the watchers are stopped; after
    /// shutdown began the stream ends at once. Refused with RESOURCE_EXHAUSTED when this node already serves
    /// its limit of streams (`max_watches`).
    pub fn watch(self: &Arc<Self>, from: u64, filter: Filter) -> Result<mpsc::Receiver<WatchItem>, ApiError> {
        if let Some(e) = self.short_of_disk_redirect() {
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let start = self.current_revision() + 1;
        let id = self.watch_registry.ids.fetch_add(1, Ordering::Relaxed) + 1;
        {
            // Counted and registered under one lock, so concurrent opens cannot pass the limit together.
            let mut open = lock(&self.watch_registry.next);
            if open.len() >= self.cfg.max_watches {
                self.watch_registry.refused.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    Code::ResourceExhausted,
                    format!(
                        "this node already serves {} watch streams (its limit, max_watches): close one, or \
                         retry later or on another node",
                        open.len()
                    ),
                ));
            }
            open.insert(id, if from == 0 { start } else { from });
        }
        let registered = Registered { svc: Arc::downgrade(self), id };
        let stream =
            stream(Arc::downgrade(self), if from == 0 { start } else { from }, filter, tx, registered);
        let stop = self.watchers.stopped();
        self.watchers.spawn(async move {
            tokio::select! {
                _ = stop => {}
                _ = stream => {}
            }
        });
        Ok(rx)
    }
}

/// The body of one watch stream, from revision `next` on.
async fn stream(
    svc: Weak<Service>,
    mut next: u64,
    filter: Filter,
    tx: mpsc::Sender<WatchItem>,
    registered: Registered,
) {
    let Some(mut rev_rx) = svc.upgrade().map(|s| s.revision.clone()) else { return };
    rev_rx.mark_unchanged();
    let mut last_sent = Instant::now();
    loop {
        let Some(s) = svc.upgrade() else { return };
        lock(&s.watch_registry.next).insert(registered.id, next);
        let read = Reader::new(&s.db).and_then(|r| r.changes(next, &filter, WATCH_BATCH));
        drop(s);
        // A send fails only when the client went away: the stream ends either way.
        match read {
            Err(e) => {
                tx.send(Err(store_err(e))).await.ok();
                return;
            }
            Ok(ChangesRead::Compacted { first_available }) => {
                let msg = format!(
                    "revision {next} was compacted (oldest available {first_available}): resync from a \
                     snapshot (list objects, then watch from the listed revision + 1)"
                );
                tx.send(Err(ApiError::new(Code::Compacted, msg))).await.ok();
                return;
            }
            Ok(ChangesRead::Events { events, next: n }) => {
                let progressed = n > next;
                next = n;
                if !events.is_empty() || (progressed && last_sent.elapsed() >= WATCH_PROGRESS_EVERY) {
                    if tx.send(Ok((events, next - 1))).await.is_err() {
                        return;
                    }
                    last_sent = Instant::now();
                    continue;
                }
            }
        }
        // Nothing new: wait for the next commit, or send progress so the client knows we're alive.
        let current = *rev_rx.borrow_and_update();
        if current >= next {
            continue;
        }
        // A client that went away frees its slot (of `max_watches`) now, not at the next send.
        let waited = tokio::select! {
            w = tokio::time::timeout(WATCH_PROGRESS_EVERY, rev_rx.changed()) => w,
            _ = tx.closed() => return,
        };
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                // A follower short of disk takes no new entries: its progress would say "nothing new" for
                // as long as the alarm lasts. The stream ends with a redirect instead; clients resume at the
                // leader from the revision they reached.
                if let Some(e) = svc.upgrade().and_then(|s| s.short_of_disk_redirect()) {
                    tx.send(Err(e)).await.ok();
                    return;
                }
                if tx.send(Ok((Vec::new(), next - 1))).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
        }
    }
}
