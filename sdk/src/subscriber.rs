//! The subscriber: list, get, watch (with resume, resync and client-side filters) and acknowledge, against
//! a Raft-replicated master whose leader may change at any time. Unary calls go through
//! `proto::client::Client` (leader following, bounded retries). A watch runs as one owned task per
//! [`Watch`] feeding a bounded channel; it reconnects to the next master with capped, jittered backoff and
//! resumes from the revision after the last one it delivered (see [`crate::resume`]), so a consumer sees
//! every matching revision exactly once, in order, across failovers, or a [`WatchItem::Resync`] when the
//! change log no longer reaches back that far.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use proto::api;
use proto::client::Client;
use proto::error::{ApiError, Code};
use state_machines::{AckKind, ObjectId, State};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::Error;
use crate::filter::{Filter, LABEL_CACHE_MAX, LabelCache};
use crate::resume::{Backoff, Cursor, Floors};
use crate::types::{Acked, Change, Held, Listing, Object, ObjectDetail};

/// Items buffered between a watch task and its consumer; when full the task stops reading the master's
/// stream (and the master's own per-stream buffer then holds it back): backpressure, never loss.
pub const WATCH_BUFFER: usize = 64;
/// A watch stream with no message for this long is presumed dead and reconnected (the master sends a
/// progress message at least every 10 s).
pub const WATCH_IDLE: Duration = Duration::from_secs(30);
/// A stream whose covered revision has not moved for this long is checked against the leader (one
/// linearizable read); if the leader is ahead, the node streaming to us is cut off (a partitioned follower
/// still sends progress messages) and the watch reconnects elsewhere.
pub const STALL_CHECK: Duration = Duration::from_secs(30);
/// Reconnects in a row without receiving anything before a watch gives up with `Unavailable`; with the
/// backoff cap this is several minutes, long enough to ride out any election or rolling restart.
pub const MAX_RECONNECTS: u32 = 60;
/// Reconnect backoff: first delay and cap (jittered down to half of each).
pub const BACKOFF_START: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Without matching events, a watch still reports how far it got at most this often, so a consumer can
/// persist its resume revision.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Objects per page a listing asks for (the master's default page; its maximum is 10,000, and a page must
/// also fit the 16 MiB gRPC message limit with every object's evidence).
pub const LIST_LIMIT: u32 = 1_000;
/// Pages one listing follows at most: 1.5 M objects (100,000 hosts) take 1,500 pages of the default size;
/// this only stops a master that never ends a listing ([`Error::Protocol`]).
pub const MAX_LIST_PAGES: u32 = 1_000_000;
/// Longest subscriber role (the state machines' field limit).
pub const MAX_ROLE_LEN: usize = state_machines::model::MAX_FIELD_LEN;

/// Settings of a subscriber; [`Config::new`] gives the defaults above.
#[derive(Debug, Clone)]
pub struct Config {
    /// Master gRPC addresses (`host:port`); the leader is found automatically.
    pub masters: Vec<String>,
    /// This subscriber's role: acknowledgements are made as this role (e.g. `storage`, `scheduler`).
    pub role: String,
    pub label_cache: usize,
    pub watch_buffer: usize,
    pub watch_idle: Duration,
    pub stall_check: Duration,
    pub max_reconnects: u32,
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// Page size of listings, and most pages one listing follows.
    pub list_limit: u32,
    pub max_list_pages: u32,
    /// Bound on one unary call, and attempts per call across redirects (see `proto::client`).
    pub call_timeout: Duration,
    pub max_attempts: u32,
    /// Seed of the reconnect jitter (default: derived from the role and process id).
    pub seed: u64,
    /// Mutual TLS and the bearer token (role `subscriber`) for a secured cluster; the default (none) is for
    /// clusters started `--insecure`.
    pub security: Security,
}

/// How the subscriber authenticates (see [`proto::client::ClientSecurity`]); Debug never shows the token.
#[derive(Clone, Default)]
pub struct Security(pub proto::client::ClientSecurity);

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.0.tls.is_some())
            .field("token", &self.0.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Config {
    pub fn new(masters: Vec<String>, role: &str) -> Config {
        let seed = role.bytes().fold(u64::from(std::process::id()), |h, b| h.rotate_left(5) ^ u64::from(b));
        Config {
            masters,
            role: role.to_string(),
            label_cache: LABEL_CACHE_MAX,
            watch_buffer: WATCH_BUFFER,
            watch_idle: WATCH_IDLE,
            stall_check: STALL_CHECK,
            max_reconnects: MAX_RECONNECTS,
            backoff_start: BACKOFF_START,
            backoff_max: BACKOFF_MAX,
            list_limit: LIST_LIMIT,
            max_list_pages: MAX_LIST_PAGES,
            call_timeout: proto::client::CALL_TIMEOUT,
            max_attempts: proto::client::MAX_ATTEMPTS,
            seed,
            security: Security::default(),
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.masters.is_empty() {
            return Err(Error::Invalid("no master address".into()));
        }
        if self.role.is_empty() || self.role.len() > MAX_ROLE_LEN || self.role.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "subscriber role must be 1..={MAX_ROLE_LEN} bytes without control characters"
            )));
        }
        if self.watch_buffer == 0
            || self.list_limit == 0
            || self.max_list_pages == 0
            || self.max_attempts == 0
        {
            return Err(Error::Invalid(
                "watch_buffer, list_limit, max_list_pages and max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn client(&self, rotate: usize) -> Client {
        let mut addrs = self.masters.clone();
        let n = addrs.len().max(1);
        addrs.rotate_left(rotate % n);
        let mut c = Client::with_security(addrs, self.security.0.clone());
        c.call_timeout = self.call_timeout;
        c.max_attempts = self.max_attempts;
        c
    }
}

fn lock(m: &Mutex<LabelCache>) -> MutexGuard<'_, LabelCache> {
    // A panic while holding the lock cannot leave the cache inconsistent in a way that matters (it is a
    // cache): keep using it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection to the master cluster as one subscriber role.
pub struct Subscriber {
    cfg: Config,
    client: Client,
    cache: Arc<Mutex<LabelCache>>,
}

impl Subscriber {
    /// Connect to `masters` (any of them; the leader is found) as `role`. Fails when no master answers
    /// within the bounded retries.
    pub async fn connect<S: Into<String>>(
        masters: impl IntoIterator<Item = S>,
        role: &str,
    ) -> Result<Subscriber, Error> {
        Subscriber::connect_with(Config::new(masters.into_iter().map(Into::into).collect(), role)).await
    }

    pub async fn connect_with(cfg: Config) -> Result<Subscriber, Error> {
        cfg.validate()?;
        let mut s = Subscriber {
            client: cfg.client(0),
            cache: Arc::new(Mutex::new(LabelCache::new(cfg.label_cache))),
            cfg,
        };
        s.client.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await?;
        Ok(s)
    }

    pub fn role(&self) -> &str {
        &self.cfg.role
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Every object matching `filter` (every field filtered by the master), read linearizably from the
    /// leader a page at a time ([`Config::list_limit`] objects each), and the revision the listing started
    /// at. To continue without a gap or a duplicate, watch with [`Subscriber::watch_listing`] (or use
    /// [`Subscriber::list_and_watch`]).
    pub async fn list(&mut self, filter: &Filter) -> Result<Listing, Error> {
        list(&mut self.client, &self.cfg, &self.cache, filter).await
    }

    /// [`Subscriber::list`], then [`Subscriber::watch_listing`]: the state now and every change after it,
    /// each change exactly once.
    pub async fn list_and_watch(&mut self, filter: &Filter) -> Result<(Listing, Watch), Error> {
        let listing = self.list(filter).await?;
        let watch = self.watch_listing(filter, &listing)?;
        Ok((listing, watch))
    }

    /// One object with its history.
    pub async fn get(&mut self, id: &ObjectId) -> Result<ObjectDetail, Error> {
        get(&mut self.client, &self.cache, id).await
    }

    /// Changes matching `filter` from `from_revision` on (0: from now). Spawns the watch task on the
    /// current tokio runtime (outside one: `Error::Invalid`); dropping the [`Watch`] stops it.
    pub fn watch(&self, filter: &Filter, from_revision: u64) -> Result<Watch, Error> {
        self.spawn_watch(filter, from_revision, Floors::default())
    }

    /// Changes matching `filter` after `listing` (made with the same filter): from `listing.revision + 1`,
    /// dropping a change the listing already shows (at or below the listed object's own revision, which an
    /// object listed on a later page can carry). Nothing is missed and nothing is seen twice.
    pub fn watch_listing(&self, filter: &Filter, listing: &Listing) -> Result<Watch, Error> {
        self.spawn_watch(filter, listing.revision.saturating_add(1), listing.floors())
    }

    fn spawn_watch(&self, filter: &Filter, from_revision: u64, floors: Floors) -> Result<Watch, Error> {
        filter.validate()?;
        let (tx, rx) = mpsc::channel(self.cfg.watch_buffer);
        let task = WatchTask {
            client: self.cfg.client(0),
            backoff: Backoff::new(self.cfg.backoff_start, self.cfg.backoff_max, self.cfg.seed),
            cfg: self.cfg.clone(),
            filter: filter.clone(),
            cache: self.cache.clone(),
            tx,
            failures: 0,
            rotation: 0,
            last_sent: Instant::now(),
            floors,
        };
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Invalid("watch needs a tokio runtime to run its task on".into()))?;
        Ok(Watch { rx, task: rt.spawn(task.run(from_revision)) })
    }

    /// Acknowledge, as this subscriber's role, what `object` waits for. A refusal (the object waits for
    /// nothing, or for another acknowledgement or role) changes nothing and comes back as
    /// [`Error::Refused`] with the object's current view, so "already acknowledged" can be told apart.
    pub async fn ack(&mut self, object: &ObjectId, ack: AckKind) -> Result<Acked, Error> {
        let req = api::CommandRequest {
            object: object.to_string(),
            kind: "ack".into(),
            name: ack.as_str().into(),
            by: self.cfg.role.clone(),
            ..Default::default()
        };
        // One idempotency key for every try of this acknowledgement (the client retries through failovers:
        // a retry of an ack the master already applied is answered `duplicate`, not refused).
        let key = proto::client::request_key("sdk").map_err(Error::from)?;
        match self
            .client
            .call(req, |mut c, r| {
                let r = proto::client::keyed(r, &key);
                async move { c.command(r).await }
            })
            .await
        {
            Ok(r) => Ok(Acked {
                revision: r.revision,
                state: r
                    .state
                    .parse::<State>()
                    .map_err(|e| Error::Protocol(format!("state after ack {:?}: {e}", r.state)))?,
                transitioned: r.transitioned,
                held: (!r.held.is_empty()).then(|| Held { reason: r.held.clone(), proposal: r.proposal }),
            }),
            Err(e) if e.code == Code::Conflict => {
                let current = self.get(object).await.ok().map(|d| Box::new(d.object));
                Err(Error::Refused { message: e.message, current })
            }
            Err(e) => Err(e.into()),
        }
    }
}

async fn list(
    client: &mut Client,
    cfg: &Config,
    cache: &Mutex<LabelCache>,
    filter: &Filter,
) -> Result<Listing, Error> {
    filter.validate()?;
    let mut req = filter.list_request(cfg.list_limit);
    let mut objects = Vec::new();
    let mut revision = None;
    for page in 1..=cfg.max_list_pages {
        let resp = client.call(req.clone(), |mut c, r| async move { c.list_objects(r).await }).await?;
        match revision {
            None => revision = Some(resp.revision),
            Some(r) if r != resp.revision => {
                return Err(Error::Protocol(format!(
                    "page {page} of a listing answered revision {} (the listing started at {r})",
                    resp.revision
                )));
            }
            Some(_) => {}
        }
        let batch = resp.objects.into_iter().map(Object::try_from).collect::<Result<Vec<_>, _>>()?;
        {
            let mut c = lock(cache);
            for o in &batch {
                c.insert(o.id.clone(), o.labels.clone());
            }
        }
        objects.extend(batch);
        if resp.next_page_token.is_empty() {
            return Ok(Listing { objects, revision: revision.unwrap_or(resp.revision), pages: page });
        }
        if resp.next_page_token == req.page_token {
            return Err(Error::Protocol(format!(
                "page {page} of a listing answered the same page token again"
            )));
        }
        req.page_token = resp.next_page_token;
    }
    Err(Error::Protocol(format!("a listing did not end after {} pages (max_list_pages)", cfg.max_list_pages)))
}

async fn get(client: &mut Client, cache: &Mutex<LabelCache>, id: &ObjectId) -> Result<ObjectDetail, Error> {
    let req = api::GetObjectRequest { id: id.to_string(), stale: false };
    let resp = client.call(req, |mut c, r| async move { c.get_object(r).await }).await?;
    let object =
        Object::try_from(resp.object.ok_or_else(|| Error::Protocol("GetObject without object".into()))?)?;
    lock(cache).insert(object.id.clone(), object.labels.clone());
    Ok(ObjectDetail { object, history: resp.history, revision: resp.revision })
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// Matching events in revision order; `revision` is how far the watch has covered (resume from
    /// `revision + 1` to continue after them).
    Events { events: Vec<Change>, revision: u64 },
    /// Nothing matched up to `revision` (sent at most every [`PROGRESS_EVERY`]).
    Progress { revision: u64 },
    /// The change log no longer reached back to the next revision: this is a fresh listing (same filter,
    /// every page) and the watch continues after it, without the changes it already shows (as
    /// [`Subscriber::watch_listing`]). Replace local state with it.
    Resync { listing: Listing },
    /// The stream broke (leader died, network); the watch reconnects and resumes from `resume_from`.
    /// Informational: nothing is lost.
    Reconnecting { attempt: u32, error: Error, resume_from: u64 },
}

/// A running watch: a `futures::Stream` of `Result<WatchItem, Error>`, also readable with
/// [`Watch::next`]. After an `Err` (a refused filter, a malformed answer, or [`MAX_RECONNECTS`] failed
/// reconnects in a row) the stream ends. Dropping it stops the task.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchItem, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub async fn next(&mut self) -> Option<Result<WatchItem, Error>> {
        self.rx.recv().await
    }
}

impl futures::Stream for Watch {
    type Item = Result<WatchItem, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why one watch stream ended.
enum StreamEnd {
    /// Reconnect (possibly elsewhere) and resume.
    Broken(Error),
    /// The next revision is gone from the change log: relist.
    Compacted,
    /// Give up: tell the consumer.
    Fatal(Error),
    /// The consumer dropped the watch.
    Gone,
}

struct WatchTask {
    cfg: Config,
    filter: Filter,
    cache: Arc<Mutex<LabelCache>>,
    tx: mpsc::Sender<Result<WatchItem, Error>>,
    client: Client,
    backoff: Backoff,
    failures: u32,
    rotation: usize,
    last_sent: Instant,
    /// The dedupe after the listing this watch continues (empty for a plain `watch`).
    floors: Floors,
}

impl WatchTask {
    async fn run(mut self, from: u64) {
        let mut cursor = (from > 0).then(|| Cursor::new(from));
        loop {
            let end = match &mut cursor {
                // "From now": pin "now" to a linearizable revision first, so a reconnect before the first
                // message cannot skip what happened in between.
                None => match self
                    .client
                    .call(self.filter.list_request(1), |mut c, r| async move { c.list_objects(r).await })
                    .await
                {
                    Ok(r) => {
                        cursor = Some(Cursor::new(r.revision + 1));
                        continue;
                    }
                    Err(e) => self.classify(e),
                },
                Some(cursor) => self.stream(cursor).await,
            };
            let error = match end {
                StreamEnd::Gone => return,
                StreamEnd::Fatal(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
                StreamEnd::Compacted => {
                    // A resync counts against the reconnect bound until a message arrives, so a master that
                    // keeps answering COMPACTED right after a listing cannot spin this loop forever.
                    self.failures += 1;
                    if self.failures > self.cfg.max_reconnects {
                        let msg = format!("watch gave up after {} resyncs in a row", self.cfg.max_reconnects);
                        let _ = self.tx.send(Err(Error::Unavailable(msg))).await;
                        return;
                    }
                    if self.failures > 1 {
                        tokio::time::sleep(self.backoff.next_delay()).await;
                    }
                    match list(&mut self.client, &self.cfg, &self.cache, &self.filter).await {
                        Ok(listing) => {
                            if let Some(c) = &mut cursor {
                                c.reset(listing.revision);
                            }
                            self.floors = listing.floors();
                            tracing::info!(revision = listing.revision, "watch resynced after compaction");
                            if !self.send(WatchItem::Resync { listing }).await {
                                return;
                            }
                            continue;
                        }
                        Err(e) if e.is_retryable() => e,
                        Err(e) => {
                            let _ = self.tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                StreamEnd::Broken(e) => e,
            };
            self.failures += 1;
            if self.failures > self.cfg.max_reconnects {
                let msg =
                    format!("watch gave up after {} reconnects in a row: {error}", self.cfg.max_reconnects);
                let _ = self.tx.send(Err(Error::Unavailable(msg))).await;
                return;
            }
            let resume_from = cursor.as_ref().map(Cursor::next).unwrap_or(0);
            tracing::debug!(attempt = self.failures, resume_from, %error, "watch reconnecting");
            let item = WatchItem::Reconnecting { attempt: self.failures, error, resume_from };
            if !self.send(item).await {
                return;
            }
            tokio::time::sleep(self.backoff.next_delay()).await;
            self.rotation += 1;
            self.client = self.cfg.client(self.rotation);
        }
    }

    fn classify(&self, e: ApiError) -> StreamEnd {
        match e.code {
            Code::Compacted => StreamEnd::Compacted,
            // Internal on a stream is one node's storage trouble: another node may serve.
            // A node at its watch limit: the next node in the rotation (after the backoff) may serve.
            Code::NotLeader | Code::Unavailable | Code::Internal | Code::ResourceExhausted => {
                StreamEnd::Broken(e.into())
            }
            Code::InvalidArgument
            | Code::NotFound
            | Code::Conflict
            | Code::Unauthenticated
            | Code::PermissionDenied => StreamEnd::Fatal(e.into()),
        }
    }

    async fn send(&mut self, item: WatchItem) -> bool {
        self.last_sent = Instant::now();
        self.tx.send(Ok(item)).await.is_ok()
    }

    /// Follow one server stream until it ends. The cursor moves only after a response's events are handed
    /// to the consumer, so a break at any point resumes exactly after the last delivered revision.
    async fn stream(&mut self, cursor: &mut Cursor) -> StreamEnd {
        let req = self.filter.watch_request(cursor.next());
        let mut stream = match self.client.call(req, |mut c, r| async move { c.watch(r).await }).await {
            Ok(s) => s,
            Err(e) => return self.classify(e),
        };
        let mut last_advance = Instant::now();
        loop {
            let msg = match tokio::time::timeout(self.cfg.watch_idle, stream.message()).await {
                Err(_) => {
                    let m = format!("no message for {:?}", self.cfg.watch_idle);
                    return StreamEnd::Broken(Error::Unavailable(m));
                }
                Ok(Ok(None)) => {
                    return StreamEnd::Broken(Error::Unavailable("the master ended the stream".into()));
                }
                Ok(Err(status)) => return self.classify(ApiError::from(&status)),
                Ok(Ok(Some(m))) => m,
            };
            self.failures = 0;
            self.backoff.reset();
            if msg.revision <= cursor.covered() && msg.events.is_empty() {
                if last_advance.elapsed() >= self.cfg.stall_check {
                    if let Some(leader) = self.leader_revision().await
                        && leader > cursor.covered()
                    {
                        let m = format!(
                            "the stream is stuck at revision {} for {:?} while the leader is at {leader}",
                            cursor.covered(),
                            last_advance.elapsed()
                        );
                        return StreamEnd::Broken(Error::Unavailable(m));
                    }
                    last_advance = Instant::now();
                }
            } else {
                last_advance = Instant::now();
            }
            let mut matching = Vec::new();
            let fresh: Vec<api::Event> =
                cursor.peek(&msg.events).into_iter().filter(|e| self.floors.keep(e)).collect();
            for e in fresh {
                let e = match Change::try_from(e) {
                    Ok(e) => e,
                    Err(err) => return StreamEnd::Fatal(err),
                };
                match self.wanted(&e).await {
                    Ok(true) => matching.push(e),
                    Ok(false) => {}
                    // Cannot decide (labels unreadable): reconnect and get this batch again.
                    Err(err) => return StreamEnd::Broken(err),
                }
            }
            cursor.accept(msg.events, msg.revision);
            let revision = cursor.covered();
            self.floors.advance(revision);
            let item = if !matching.is_empty() {
                WatchItem::Events { events: matching, revision }
            } else if self.last_sent.elapsed() >= PROGRESS_EVERY {
                WatchItem::Progress { revision }
            } else {
                continue;
            };
            if !self.send(item).await {
                return StreamEnd::Gone;
            }
        }
    }

    /// The cluster's current revision, read linearizably through the leader (`None` if it cannot be read).
    async fn leader_revision(&mut self) -> Option<u64> {
        let req = self.filter.list_request(1);
        self.client
            .call(req, |mut c, r| async move { c.list_objects(r).await })
            .await
            .ok()
            .map(|r| r.revision)
    }

    /// The client-side part of the filter: state, and labels from the cache (fetched on a miss; an
    /// inventory change refreshes them).
    async fn wanted(&mut self, e: &Change) -> Result<bool, Error> {
        if !self.filter.matches_event(e) {
            return Ok(false);
        }
        if !self.filter.needs_labels() {
            return Ok(true);
        }
        let Some(id) = &e.object else { return Ok(false) };
        if e.what == "register" {
            lock(&self.cache).remove(id);
        }
        let cached = lock(&self.cache).get(id);
        let labels = match cached {
            Some(l) => l,
            None => match get(&mut self.client, &self.cache, id).await {
                Ok(d) => d.object.labels,
                // Gone by now (or never had labels): nothing to match.
                Err(Error::NotFound(_)) => Default::default(),
                Err(e) => return Err(e),
            },
        };
        Ok(self.filter.matches_labels(&labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_validated() {
        let ok = Config::new(vec!["127.0.0.1:1".into()], "storage");
        assert!(ok.validate().is_ok());
        for bad in [
            Config::new(Vec::new(), "storage"),
            Config::new(vec!["a:1".into()], ""),
            Config::new(vec!["a:1".into()], "x\ny"),
            Config::new(vec!["a:1".into()], &"r".repeat(MAX_ROLE_LEN + 1)),
            Config { watch_buffer: 0, ..ok.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Invalid(_))), "{bad:?}");
        }
        assert!(Config::new(vec!["a:1".into()], &"r".repeat(MAX_ROLE_LEN)).validate().is_ok());
    }

    #[test]
    fn clients_rotate_through_every_master() {
        let cfg = Config::new(vec!["a:1".into(), "b:2".into(), "c:3".into()], "storage");
        let firsts: Vec<String> =
            (0..4).map(|i| cfg.client(i).current_addr().unwrap_or_default().to_string()).collect();
        assert_eq!(firsts, vec!["a:1", "b:2", "c:3", "a:1"]);
    }

    fn dead_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = l.local_addr().expect("addr").to_string();
        drop(l);
        a
    }

    #[tokio::test]
    async fn connect_fails_clearly_when_nothing_answers() {
        let mut cfg = Config::new(vec![dead_addr()], "storage");
        cfg.max_attempts = 2;
        match Subscriber::connect_with(cfg).await {
            Err(Error::Unavailable(m)) => assert!(m.contains("gave up after 2 attempts"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(matches!(Subscriber::connect(Vec::<String>::new(), "storage").await, Err(Error::Invalid(_))));
    }

    #[tokio::test]
    async fn a_watch_gives_up_after_its_reconnect_bound_and_reports_each_attempt() {
        // No master at all: every attempt fails fast. The stream reports each reconnect, then ends with
        // Unavailable after exactly max_reconnects of them.
        let mut cfg = Config::new(vec![dead_addr(), dead_addr()], "storage");
        cfg.max_attempts = 1;
        cfg.max_reconnects = 3;
        cfg.backoff_start = Duration::from_millis(1);
        cfg.backoff_max = Duration::from_millis(2);
        let sub = Subscriber { client: cfg.client(0), cache: Arc::new(Mutex::new(LabelCache::new(8))), cfg };
        // A listing bound of 0 pages is refused like the other zero settings.
        let zero = Config { max_list_pages: 0, ..sub.cfg.clone() };
        assert!(matches!(zero.validate(), Err(Error::Invalid(_))));
        let mut w = sub.watch(&Filter::default(), 5).expect("valid filter");
        let mut attempts = Vec::new();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), w.next()).await.expect("bounded") {
                Some(Ok(WatchItem::Reconnecting { attempt, resume_from, .. })) => {
                    assert_eq!(resume_from, 5, "resumes where it started: nothing was delivered");
                    attempts.push(attempt);
                }
                Some(Ok(other)) => panic!("{other:?}"),
                Some(Err(e)) => break e,
                None => panic!("ended without an error"),
            }
        };
        assert_eq!(attempts, vec![1, 2, 3]);
        assert!(matches!(&end, Error::Unavailable(m) if m.contains("gave up after 3 reconnects")), "{end}");
        assert!(w.next().await.is_none(), "the stream ends after its error");
        // A bad filter is refused before any task starts.
        let bad = Filter::default().with_host("no/such host");
        assert!(matches!(sub.watch(&bad, 1), Err(Error::Invalid(_))));
    }
}
