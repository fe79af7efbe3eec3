//! Leader-side indexes kept in memory and followed from the change log: built once from a pass over the
//! objects (in the background), then kept current by reading again every object a change names (a point
//! lookup). Every write that can change what an index holds is a change event naming the object, so an
//! index equals a scan at the revision it reached; when the change log no longer holds the index's position
//! (compacted, or a snapshot installed) it is built again, outside the lock. Nothing here is replicated:
//! every member builds its own and keeps it warm ([`Followed::warm`], followers included), so a new leader
//! has its indexes from its first heartbeat. Users: [`crate::actions::OrderIndex`] (orders handed out with
//! heartbeats) and [`crate::deadlines::DeadlineIndex`] (objects whose deadline passed, for the leader's
//! ticks).
//!
//! Catching up reads the change log and the named objects *outside* the index's lock, one caller at a time
//! and [`CATCH_UP_CHUNK`] events at a time; only putting the records in happens under the lock. A caller on
//! the heartbeat path catches up at most one chunk itself and waits at most [`CATCH_UP_WAIT`] for someone
//! else's; further behind, it answers from the index as it is (counted: [`Followed::behind_answers`]) and
//! the rest is caught up off the async workers. Before, the first heartbeat after a gap took the whole
//! catch-up (one point read per changed object) under the lock every heartbeat needs: at 100,000 agents a
//! member restored from a snapshot that became leader seconds after installing its rebuilt index held its
//! heartbeats at p50 292 ms, p99 822 ms for a second (2026-12-04, `huatuo bench fleet` seed 100006).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::model::ObjectCore;
use crate::store::{Reader, StoreError};

/// Most change-log events a build's own catch-up takes in one read (bounds the memory of one read).
pub const INDEX_READ_EVENTS: usize = 4096;

/// Most change-log events one catch-up step reads (whole change rows, so it can be a row more) while it
/// keeps others from catching up: a caller waits for at most one such step.
pub const CATCH_UP_CHUNK: usize = 512;

/// Longest a caller waits for another caller's catch-up before it answers from the index as it is.
pub const CATCH_UP_WAIT: Duration = Duration::from_millis(20);

/// Most catch-up steps one warm takes (the next warm goes on): 4 M events at [`CATCH_UP_CHUNK`].
pub const MAX_WARM_STEPS: usize = 8192;

/// Most reads a finished build takes in of what changed during its pass before it is installed (the rest
/// is caught up like any gap): 64 x [`INDEX_READ_EVENTS`].
pub const MAX_BUILD_CATCH_UP_READS: usize = 64;

/// How much lower the CPU priority of index builds and catch-ups is than the rest of the member (a nice
/// value added on Linux; capped at 19).
pub const BACKGROUND_NICE: i32 = 10;

/// Run `f` on a thread of its own named `name`, at [`BACKGROUND_NICE`] lower CPU priority: index builds
/// and catch-ups are background work, and must not take the cores from the heartbeats the member answers.
/// A member rebuilt from a snapshot that became leader while rebuilding (a pass over 1.5 M objects, then
/// catching up 160,000 revisions) had its API runtime woken up to 385 ms late and heartbeats at p99 523 ms
/// (`bench fleet` run D, 2026-12-04). The heartbeat path's own bounded step keeps the normal priority.
pub fn spawn_background(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    /// Counts a running background thread until it ends, however it ends.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            BACKGROUND_RUNNING.fetch_sub(1, Ordering::AcqRel);
        }
    }
    BACKGROUND_RUNNING.fetch_add(1, Ordering::AcqRel);
    let running = Running;
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let _running = running;
        lower_this_threads_priority(BACKGROUND_NICE);
        f()
    })
}

/// Run `f` to its end on a scoped thread of its own named `name`, at [`BACKGROUND_NICE`] lower CPU
/// priority, and return what it returns (its panic goes on in the caller): work the caller must wait for
/// but that must not take the cores from other members on the same machine, e.g. a restarting member's
/// pass over its tables. A thread that cannot be started leaves the work to the caller's own thread.
pub fn run_niced<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let work = std::sync::Mutex::new(Some(f));
    let take = || work.lock().unwrap_or_else(|p| p.into_inner()).take();
    let done = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new().name(name.to_string()).spawn_scoped(s, || {
            lower_this_threads_priority(BACKGROUND_NICE);
            take().map(|f| f())
        });
        spawned.map(|h| h.join())
    });
    match done {
        Ok(Ok(Some(v))) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // Not started: the work is still here, for this thread.
        _ => (take().expect("the work runs once"))(),
    }
}

/// Background threads ([`spawn_background`]) still running in this process.
static BACKGROUND_RUNNING: AtomicU64 = AtomicU64::new(0);

/// Wait until no background thread runs, at most `limit` (a stopping master: what runs there is a read,
/// e.g. an index build, tens of seconds at 1.5 M objects, not worth waiting for longer). True when none
/// was left.
pub fn wait_background(limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if BACKGROUND_RUNNING.load(Ordering::Acquire) == 0 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Add `by` to the calling thread's nice value (Linux keeps one per thread; glibc's `nice` adds to the
/// calling thread's); nothing elsewhere. A failure leaves the priority as it was: the work runs all the
/// same.
#[allow(unsafe_code)]
fn lower_this_threads_priority(by: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on the calling thread; no memory is passed.
    unsafe {
        libc::nice(by);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = by;
}

/// How often every member warms its followed indexes ([`Followed::warm`]).
pub const WARM_EVERY: Duration = Duration::from_secs(1);

/// What one followed index keeps per object.
pub trait ObjectIndex: Default + Send + 'static {
    /// The index's name in logs.
    const NAME: &'static str;
    /// Put `rec`'s entry in (or, with `None`, take object `id`'s entry out of) the index. An index sees an
    /// object's id, state machine and labels ([`ObjectCore`]): reading whole records to keep the indexes
    /// current was a tenth of a member's CPU under single-finding load (issue 17's profile).
    fn put(&mut self, id: &str, rec: Option<&ObjectCore>);
}

/// Most object ids [`CoreChanges`] keeps: past it the oldest go and the hint covers less (a registration
/// of a whole fleet, every object new, overflows it: the indexes then read the change log as before).
pub const CORE_CHANGES_MAX: usize = 65_536;

/// A member-local hint for the followed indexes, not replicated: the objects whose [`ObjectCore`] (state
/// machine or labels) each applied entry changed, by the entry's last revision. Most findings change
/// neither (a healthy disk reporting GOOD), yet each names its object in the change log; reading every
/// named object to keep the indexes current was 6.9% of the machine's samples under 500 single-finding
/// clients (`perf`, 2026-12-05). With the hint a step reads only the objects whose core changed. It is
/// complete from the first entry recorded after the member started or restored a snapshot (`from`), up
/// to the newest; a step from before that, or with more ids than it may take, reads the change log.
#[derive(Debug, Default)]
pub struct CoreChanges(Mutex<CoreChangesInner>);

#[derive(Debug, Default)]
struct CoreChangesInner {
    /// Every core change of revisions from this one on is in `items` (0: nothing recorded yet).
    from: u64,
    /// (the last revision of the entry that changed it, object id), in revision order.
    items: VecDeque<(u64, String)>,
}

impl CoreChanges {
    /// Record an applied entry whose change events took revisions `first..=last`, and the objects whose
    /// core it changed. Called on the Raft thread before the entry's transaction commits, so a reader that
    /// sees revision `last` finds them here. Entries without events change no revision and are not
    /// recorded.
    pub fn record(&self, first: u64, last: u64, changed: impl IntoIterator<Item = String>) {
        let mut c = lock(&self.0);
        if c.from == 0 {
            c.from = first.max(1);
        }
        c.items.extend(changed.into_iter().map(|id| (last, id)));
        while c.items.len() > CORE_CHANGES_MAX {
            let Some((rev, _)) = c.items.pop_front() else { break };
            c.from = c.from.max(rev + 1);
        }
    }

    /// Forget everything (a snapshot replaced the state): complete again from the next entry recorded.
    pub fn reset(&self) {
        let mut c = lock(&self.0);
        c.from = 0;
        c.items.clear();
    }

    /// The objects whose core changed in revisions `from..=to`, when every change from `from` on is known
    /// and they are at most `max`; None otherwise (the caller reads the change log).
    fn between(&self, from: u64, to: u64, max: usize) -> Option<BTreeSet<String>> {
        let c = lock(&self.0);
        if c.from == 0 || from < c.from {
            return None;
        }
        let start = c.items.partition_point(|(rev, _)| *rev < from);
        let mut ids = BTreeSet::new();
        for (rev, id) in c.items.range(start..) {
            if *rev > to {
                break;
            }
            ids.insert(id.clone());
            if ids.len() > max {
                return None;
            }
        }
        Some(ids)
    }
}

/// What one read of the change log found, read outside the lock (shared by the two indexes a pair warm
/// steps together: [`warm_pair`]).
#[derive(Clone)]
enum Delta {
    /// The change log no longer holds the position: the index must be built again.
    Compacted,
    /// The objects the changes from the position up to `next` name, as they are now.
    Records { next: u64, records: Arc<Vec<(String, Option<ObjectCore>)>> },
}

/// Read the changes from `from` (at least `max` events, in whole rows, when there are that many) and the
/// records of the objects they name. With a `hint` that covers `from`, up to the reader's revision at once,
/// reading only the objects whose core changed ([`CoreChanges`]).
fn read_delta(r: &Reader, from: u64, max: usize, hint: Option<&CoreChanges>) -> Result<Delta, StoreError> {
    #[cfg(test)]
    tests::DELTA_READS.with(|n| n.set(n.get() + 1));
    if let Some(h) = hint {
        // A position past the store's revision finds nothing and stays where it is (at its end).
        let to = r.revision()?;
        if let Some(ids) = h.between(from, to, max) {
            #[cfg(test)]
            tests::HINTED_READS.with(|n| n.set(n.get() + 1));
            let mut records = Vec::with_capacity(ids.len());
            for id in ids {
                let rec = r.object_core(&id)?;
                records.push((id, rec));
            }
            return Ok(Delta::Records { next: to + 1, records: Arc::new(records) });
        }
    }
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let next = r.changed_objects(from, max, |id| {
        if !id.is_empty() && !ids.contains(id) {
            ids.insert(id.to_owned());
        }
    })?;
    let Some(next) = next else { return Ok(Delta::Compacted) };
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        let rec = r.object_core(&id)?;
        records.push((id, rec));
    }
    Ok(Delta::Records { next, records: Arc::new(records) })
}

/// Whether an index at `next` (the next revision it takes) can reach `current` in one step: revisions are
/// dense (one per change event), so the gap in revisions bounds the events to read.
fn within_one_step(next: u64, current: u64) -> bool {
    (current + 1).saturating_sub(next) <= CATCH_UP_CHUNK as u64
}

/// What applying a [`Delta`] did.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    /// The position moved on.
    Moved,
    /// The change log holds nothing past the position (the store's revision can be ahead of its rows).
    AtEnd,
    /// The position was compacted away: the index is unbuilt now.
    Compacted,
}

struct State<S> {
    /// The next revision to take from the change log (0: not built).
    next: u64,
    index: S,
    /// Someone is reading a catch-up step outside the lock (one at a time).
    catching: bool,
    /// Bumped whenever the index is replaced (built, reset, found compacted): a step read for an older
    /// index is dropped.
    epoch: u64,
}

impl<S: Default> Default for State<S> {
    fn default() -> Self {
        State { next: 0, index: S::default(), catching: false, epoch: 0 }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: ObjectIndex> State<S> {
    /// Put in the records of a step read from this index's position.
    fn apply(&mut self, delta: Delta, make: &dyn Fn() -> S) -> Applied {
        match delta {
            Delta::Compacted => {
                self.replace(0, make());
                Applied::Compacted
            }
            Delta::Records { next, records } => {
                for (id, rec) in records.iter() {
                    self.index.put(id, rec.as_ref());
                }
                if next > self.next {
                    self.next = next;
                    Applied::Moved
                } else {
                    Applied::AtEnd
                }
            }
        }
    }

    fn replace(&mut self, next: u64, index: S) {
        self.next = next;
        self.index = index;
        self.epoch += 1;
    }
}

/// The index of one pass over the objects: (next revision, index, objects seen).
fn built<S: ObjectIndex>(r: &Reader, make: &dyn Fn() -> S) -> Result<(u64, S, u64), StoreError> {
    let revision = r.revision()?;
    let mut index = make();
    let mut objects = 0u64;
    r.for_each_object_core(|rec| {
        index.put(rec.id.as_str(), Some(&rec));
        objects += 1;
    })?;
    Ok((revision + 1, index, objects))
}

/// Where an index stands for a step of [`warm_pair`].
enum PairStep<'a, S: ObjectIndex> {
    /// Not built: its own warm builds it.
    Unbuilt,
    /// Caught up to the revision the warm aims at.
    Done,
    /// Another caller's step runs: its own warm waits for it.
    Busy,
    /// A step begun (its `catching` flag held) from its position.
    Step(Step<'a, S>),
}

/// Warm two indexes ([`Followed::warm`]) with one read of the change log per step for both while they
/// stand at the same position, which they do once built (both take every change): the second index's
/// read was the same rows and the same objects again, half of what keeping them warm cost (about 7% of
/// the machine under batched ingest, `perf`, 2026-12-05). Anything else (an index to build, positions
/// apart, a compacted position, another warm running) is left to each index's own warm, as before.
pub fn warm_pair<A: ObjectIndex, B: ObjectIndex>(
    a: &Followed<A>,
    b: &Followed<B>,
    db: &redb::Database,
) -> Result<(), StoreError> {
    if a.building.swap(true, Ordering::AcqRel) {
        return b.warm(db);
    }
    if b.building.swap(true, Ordering::AcqRel) {
        let warmed = a.warm_held(db);
        a.building.store(false, Ordering::Release);
        return warmed;
    }
    let warmed = warm_pair_held(a, b, db);
    a.building.store(false, Ordering::Release);
    b.building.store(false, Ordering::Release);
    warmed
}

/// [`warm_pair`] for a caller that holds both `building` flags.
fn warm_pair_held<A: ObjectIndex, B: ObjectIndex>(
    a: &Followed<A>,
    b: &Followed<B>,
    db: &redb::Database,
) -> Result<(), StoreError> {
    let end = Reader::new(db)?.revision()?;
    for _ in 0..MAX_WARM_STEPS {
        let pair = (a.begin_step(end), b.begin_step(end));
        let (sa, sb) = match pair {
            (PairStep::Done, PairStep::Done) => return Ok(()),
            (PairStep::Step(sa), PairStep::Step(sb)) if sa.from == sb.from => (sa, sb),
            other => {
                // Dropped first: a begun step gives its flag back (each warm below waits for it).
                drop(other);
                return each(a, b, db);
            }
        };
        let delta = Reader::new(db).and_then(|r| read_delta(&r, sa.from, CATCH_UP_CHUNK, a.hint()))?;
        match (sa.finish(delta.clone()), sb.finish(delta)) {
            (Some(Applied::Moved), Some(Applied::Moved)) => {}
            (Some(Applied::AtEnd), Some(Applied::AtEnd)) => return Ok(()),
            _ => return each(a, b, db),
        }
    }
    // At most MAX_WARM_STEPS steps per warm, as each index's own: the next warm goes on.
    Ok(())
}

/// Each index's own warm (both, even when the first fails), for a caller that holds both flags.
fn each<A: ObjectIndex, B: ObjectIndex>(
    a: &Followed<A>,
    b: &Followed<B>,
    db: &redb::Database,
) -> Result<(), StoreError> {
    let first = a.warm_held(db);
    let second = b.warm_held(db);
    first.and(second)
}

/// An [`ObjectIndex`] followed from the change log (see the module comment).
pub struct Followed<S> {
    state: Mutex<State<S>>,
    /// Signalled whenever a catch-up step ends (for the warm, on a blocking thread).
    stepped: Condvar,
    /// The same, for callers on the async workers (they wait without holding a thread).
    stepped_async: tokio::sync::Notify,
    /// A warm (a build or a catch-up to the store's revision) is running, in the warm duty or started by
    /// a caller.
    building: AtomicBool,
    /// Answers given while the index was not built (the caller answered without it).
    unbuilt: AtomicU64,
    /// Answers given from an index behind the caller's revision (more to catch up than one step, or
    /// another caller's step took longer than [`CATCH_UP_WAIT`]).
    behind: AtomicU64,
    make: Box<dyn Fn() -> S + Send + Sync>,
    /// The member's record of core changes, once the service hands it over ([`Followed::follow_hint`]).
    hint: std::sync::OnceLock<Arc<CoreChanges>>,
}

impl<S: ObjectIndex> Default for Followed<S> {
    fn default() -> Self {
        Followed::new(S::default)
    }
}

/// A catch-up step being read outside the lock (it holds the `catching` flag). Dropped without
/// [`Step::finish`] (the read failed), it clears the flag, so nobody waits for a step that will not come.
struct Step<'a, S: ObjectIndex> {
    ix: &'a Followed<S>,
    from: u64,
    epoch: u64,
    done: bool,
}

impl<S: ObjectIndex> Step<'_, S> {
    /// Put the step's read in, unless the index was replaced or moved meanwhile (None then).
    fn finish(mut self, delta: Delta) -> Option<Applied> {
        let mut st = lock(&self.ix.state);
        self.done = true;
        st.catching = false;
        let out = (st.epoch == self.epoch && st.next == self.from).then(|| st.apply(delta, &*self.ix.make));
        drop(st);
        self.ix.notify_stepped();
        out
    }
}

impl<S: ObjectIndex> Drop for Step<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.ix.state).catching = false;
            self.ix.notify_stepped();
        }
    }
}

impl<S: ObjectIndex> Followed<S> {
    /// An index whose empty state `make` builds (e.g. one that carries the policy it needs).
    pub fn new(make: impl Fn() -> S + Send + Sync + 'static) -> Self {
        Followed {
            state: Mutex::default(),
            stepped: Condvar::new(),
            stepped_async: tokio::sync::Notify::new(),
            building: AtomicBool::new(false),
            unbuilt: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            make: Box::new(make),
            hint: std::sync::OnceLock::new(),
        }
    }

    /// Catch up with the help of `hint`, the record the member's state machine keeps of core changes
    /// (set once; later calls are ignored).
    pub fn follow_hint(&self, hint: Arc<CoreChanges>) {
        let _ = self.hint.set(hint);
    }

    fn hint(&self) -> Option<&CoreChanges> {
        self.hint.get().map(|h| &**h)
    }

    fn notify_stepped(&self) {
        self.stepped.notify_all();
        self.stepped_async.notify_waiters();
    }

    /// Answer from the index caught up to `current` (the node's applied revision). Within one step
    /// ([`CATCH_UP_CHUNK`] revisions) of it, the caller takes that step itself, read on the blocking pool,
    /// or waits at most [`CATCH_UP_WAIT`] for another caller's step, without holding an async worker either
    /// way; farther behind (or still behind after that), it answers at once from the index as it is
    /// (counted in [`Followed::behind_answers`]) and the rest is caught up in the background. `None` until
    /// the index is built (counted): a background build is started (one at a time) and the caller answers
    /// without the index meanwhile.
    pub async fn with<T>(
        self: &Arc<Self>,
        db: &Arc<redb::Database>,
        current: u64,
        f: impl FnOnce(&S) -> T,
    ) -> Result<Option<T>, StoreError> {
        let mut until: Option<tokio::time::Instant> = None;
        let (mut stepped, mut at_end) = (false, false);
        loop {
            let notified = self.stepped_async.notified();
            tokio::pin!(notified);
            let wait = {
                let st = lock(&self.state);
                if st.next == 0 {
                    drop(st);
                    self.unbuilt.fetch_add(1, Ordering::Relaxed);
                    self.start_warm(db);
                    return Ok(None);
                }
                if st.next > current || at_end {
                    return Ok(Some(f(&st.index)));
                }
                if !within_one_step(st.next, current) {
                    // Neither a step of its own nor waiting for another's would make the answer current.
                    break;
                }
                if st.catching {
                    // Registered under the lock: the step's end (which clears the flag under it) wakes us.
                    notified.as_mut().enable();
                    true
                } else if stepped {
                    break;
                } else {
                    false
                }
            };
            if !wait {
                stepped = true;
                let (me, db) = (Arc::clone(self), Arc::clone(db));
                let step = tokio::task::spawn_blocking(move || me.step_if_free(&db));
                match step.await {
                    Ok(r) => at_end = r? == Some(Applied::AtEnd),
                    Err(e) => tracing::warn!(index = S::NAME, error = %e, "a catch-up step did not finish"),
                }
                continue;
            }
            let until = *until.get_or_insert_with(|| tokio::time::Instant::now() + CATCH_UP_WAIT);
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break;
            }
        }
        self.behind.fetch_add(1, Ordering::Relaxed);
        let out = f(&lock(&self.state).index);
        self.start_warm(db);
        Ok(Some(out))
    }

    /// Take one catch-up step unless another caller is taking one (None then, as when the index was
    /// replaced meanwhile). Blocking: the read runs outside the lock.
    fn step_if_free(&self, db: &redb::Database) -> Result<Option<Applied>, StoreError> {
        let st = lock(&self.state);
        if st.catching || st.next == 0 {
            return Ok(None);
        }
        self.step(st, db)
    }

    /// Take one catch-up step from the position in `st` (whose `catching` is clear): read outside the lock,
    /// then put in under it.
    fn step(
        &self,
        mut st: MutexGuard<'_, State<S>>,
        db: &redb::Database,
    ) -> Result<Option<Applied>, StoreError> {
        st.catching = true;
        let step = Step { ix: self, from: st.next, epoch: st.epoch, done: false };
        drop(st);
        let delta = Reader::new(db).and_then(|r| read_delta(&r, step.from, CATCH_UP_CHUNK, self.hint()))?;
        Ok(step.finish(delta))
    }

    /// Answers given while the index was not built, since this process started.
    pub fn unbuilt_answers(&self) -> u64 {
        self.unbuilt.load(Ordering::Relaxed)
    }

    /// Answers given from an index behind the caller's revision, since this process started.
    pub fn behind_answers(&self) -> u64 {
        self.behind.load(Ordering::Relaxed)
    }

    /// Keep the index built and caught up to the store (blocking: run it off the async workers). Every
    /// member does this every [`WARM_EVERY`], followers included, so a member that becomes leader answers
    /// heartbeats and ticks from an index that is already there: at 100,000 agents a new leader that had to
    /// build its indexes first answered each heartbeat by scanning the host's objects for about 8 s, and
    /// heartbeats waited up to 1.8 s. Skipped while another warm runs.
    /// A build happens outside the lock (users answer another way meanwhile), and so does every catch-up
    /// step's read; at most [`MAX_WARM_STEPS`] steps per warm.
    pub fn warm(&self, db: &redb::Database) -> Result<(), StoreError> {
        if self.building.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let warmed = self.warm_held(db);
        self.building.store(false, Ordering::Release);
        warmed
    }

    /// [`Followed::warm`] for a caller that holds `building`.
    fn warm_held(&self, db: &redb::Database) -> Result<(), StoreError> {
        if lock(&self.state).next == 0 {
            return self.build(Reader::new(db)?, db);
        }
        let end = Reader::new(db)?.revision()?;
        for _ in 0..MAX_WARM_STEPS {
            let mut st = lock(&self.state);
            while st.catching {
                // Off the async workers; a step is one bounded read.
                st = self.stepped.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.next == 0 || st.next > end {
                return Ok(());
            }
            match self.step(st, db)? {
                Some(Applied::Compacted) => return self.build(Reader::new(db)?, db),
                Some(Applied::AtEnd) => return Ok(()),
                Some(Applied::Moved) | None => {}
            }
        }
        Ok(())
    }

    /// Begin a catch-up step from the index's position (reading up to the store's revision `end`) unless
    /// another caller's step runs ([`PairStep::Busy`]: never waited for, so a pair warm never holds one
    /// index's step while it waits for the other's).
    fn begin_step(&self, end: u64) -> PairStep<'_, S> {
        let mut st = lock(&self.state);
        if st.catching {
            return PairStep::Busy;
        }
        if st.next == 0 {
            return PairStep::Unbuilt;
        }
        if st.next > end {
            return PairStep::Done;
        }
        st.catching = true;
        PairStep::Step(Step { ix: self, from: st.next, epoch: st.epoch, done: false })
    }

    /// Build the index from one pass over the objects `pass` reads, take in what changed during the pass
    /// (at most [`MAX_BUILD_CATCH_UP_READS`] reads), and install it unless it was built meanwhile: all
    /// outside the lock, so the installed index is close to the store and no caller inherits the pass's
    /// whole gap. The caller holds `building`.
    fn build(&self, pass: Reader, db: &redb::Database) -> Result<(), StoreError> {
        let started = Instant::now();
        let (next, index, objects) = built(&pass, &*self.make)?;
        drop(pass);
        let pass_ms = started.elapsed().as_millis() as u64;
        let mut fresh = State { next, index, catching: false, epoch: 0 };
        let mut taken = 0usize;
        for _ in 0..MAX_BUILD_CATCH_UP_READS {
            let r = Reader::new(db)?;
            if fresh.next > r.revision()? {
                break;
            }
            let delta = read_delta(&r, fresh.next, INDEX_READ_EVENTS, self.hint())?;
            if let Delta::Records { records, .. } = &delta {
                taken += records.len();
            }
            match fresh.apply(delta, &*self.make) {
                Applied::Moved => {}
                Applied::AtEnd => break,
                Applied::Compacted => {
                    tracing::warn!(
                        index = S::NAME,
                        objects,
                        pass_ms,
                        "the change log moved past an index build; building again"
                    );
                    return Ok(());
                }
            }
        }
        let mut st = lock(&self.state);
        let installed = st.next == 0;
        if installed {
            st.replace(fresh.next, fresh.index);
        }
        drop(st);
        tracing::info!(
            index = S::NAME,
            objects,
            built_at = next - 1,
            reached = fresh.next - 1,
            changed_objects_taken = taken,
            pass_ms,
            ms = started.elapsed().as_millis() as u64,
            installed,
            "index built"
        );
        Ok(())
    }

    /// Warm the index off the async workers (a build when it is not built), once at a time; nothing
    /// outside a Tokio runtime (the warm duty does it then).
    fn start_warm(self: &Arc<Self>, db: &Arc<redb::Database>) {
        if self.building.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, db) = (Arc::clone(self), Arc::clone(db));
        let started = spawn_background("index-warm", move || {
            // Answered from what the index had meanwhile; the next use or warm tries again.
            if let Err(e) = me.warm_held(&db) {
                tracing::warn!(index = S::NAME, error = %e, "warming an index of the objects failed");
            }
            me.building.store(false, Ordering::Release);
        });
        if let Err(e) = started {
            self.building.store(false, Ordering::Release);
            tracing::warn!(index = S::NAME, error = %e, "could not start a thread to warm an index");
        }
    }

    /// Build the index now, on this thread (tests, and callers that want it ready).
    pub fn build_now(&self, db: &redb::Database) -> Result<(), StoreError> {
        let (next, index, _) = built(&Reader::new(db)?, &*self.make)?;
        lock(&self.state).replace(next, index);
        Ok(())
    }

    /// Forget the index (it is built again on the next use).
    pub fn reset(&self) {
        lock(&self.state).replace(0, (self.make)());
    }

    /// Wait until the built index reaches `revision`, at most `limit`: a warm is started unless one runs
    /// (in the warm duty or started by another caller), and every catch-up step's end wakes the wait. An
    /// index not built is not waited for (a build is a pass over every object). True when reached.
    pub async fn reach(self: &Arc<Self>, db: &Arc<redb::Database>, revision: u64, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.stepped_async.notified();
            tokio::pin!(notified);
            // Registered before the check: a step ending in between still wakes us.
            notified.as_mut().enable();
            match self.revision() {
                None => return false,
                Some(r) if r >= revision => return true,
                Some(_) => {}
            }
            self.start_warm(db);
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.revision().is_some_and(|r| r >= revision);
            }
        }
    }

    /// Read the index as it stands, without catching up: `f` gets the index and the revision it reached
    /// (every change up to it is in, none after). None while it is not built. Holds the index's lock
    /// while `f` runs: keep `f` short.
    pub fn peek<T>(&self, f: impl FnOnce(&S, u64) -> T) -> Option<T> {
        let st = lock(&self.state);
        (st.next > 0).then(|| f(&st.index, st.next - 1))
    }

    /// The revision the index reached, once built.
    pub fn revision(&self) -> Option<u64> {
        let next = lock(&self.state).next;
        (next > 0).then(|| next - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::fsm::MasterFsm;
    use crate::model::{Command, Envelope, Registration};

    thread_local! {
        /// Change-log reads of the followed indexes on this thread ([`read_delta`]).
        pub(super) static DELTA_READS: Cell<u64> = const { Cell::new(0) };
        /// Those of them answered from the [`CoreChanges`] hint.
        pub(super) static HINTED_READS: Cell<u64> = const { Cell::new(0) };
    }

    /// Object id -> the serial it was registered with (its state machine keeps it).
    #[derive(Default, Debug, PartialEq)]
    struct Serials(BTreeMap<String, String>);

    impl ObjectIndex for Serials {
        const NAME: &'static str = "test";
        fn put(&mut self, id: &str, rec: Option<&ObjectCore>) {
            match rec {
                Some(r) => {
                    self.0.insert(id.to_string(), r.sm.serial().unwrap_or_default().to_string());
                }
                None => {
                    self.0.remove(id);
                }
            }
        }
    }

    struct Store {
        _dir: tempfile::TempDir,
        db: Arc<redb::Database>,
        fsm: MasterFsm,
        index: u64,
    }

    impl Store {
        fn new() -> Store {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = Arc::new(redb::Database::create(dir.path().join("db.redb")).expect("db"));
            let (fsm, _) = MasterFsm::new(state_machines::Policy::default());
            Store { _dir: dir, db, fsm, index: 0 }
        }

        /// Register (again) `n` disks of host `h`, serials tagged `tag`, `per_entry` per Raft entry: every
        /// registration is a change event naming its object.
        fn register(&mut self, h: &str, n: usize, per_entry: usize, tag: &str) {
            let regs: Vec<Registration> = (0..n)
                .map(|i| Registration {
                    id: format!("disk/{h}/d{i}").parse().expect("id"),
                    attributes: BTreeMap::from([("serial".to_string(), format!("{tag}-{i}"))]),
                    labels: BTreeMap::new(),
                })
                .collect();
            for part in regs.chunks(per_entry) {
                let cmd =
                    Command::Register { agent: format!("agent-{h}"), host: h.into(), objects: part.to_vec() };
                let txn = self.db.begin_write().expect("txn");
                self.fsm
                    .apply_entry(&txn, self.index + 1, &Envelope::new(1, vec![cmd]).encode())
                    .expect("apply");
                txn.commit().expect("commit");
                self.index += 1;
                self.fsm.committed();
            }
        }

        fn revision(&self) -> u64 {
            Reader::new(&self.db).expect("reader").revision().expect("revision")
        }

        /// One entry of GOOD findings, one about each of disks 0..n of host `h` (agent batch `seq`).
        fn good_findings(&mut self, h: &str, n: usize, seq: u64) {
            let findings = (0..n)
                .map(|i| state_machines::Finding {
                    object: format!("disk/{h}/d{i}").parse().expect("id"),
                    severity: state_machines::Severity::Good,
                    checker: "smart".into(),
                    version: "1.0.0".into(),
                    rule: "smart.ok".into(),
                    evidence: "PASSED".into(),
                    readings: BTreeMap::new(),
                    time_ms: 1_000 + seq,
                    shadow: false,
                })
                .collect();
            let cmd = Command::Ingest { agent: format!("agent-{h}"), seq, findings, epoch: 0 };
            let txn = self.db.begin_write().expect("txn");
            self.fsm.apply_entry(&txn, self.index + 1, &Envelope::new(1, vec![cmd]).encode()).expect("apply");
            txn.commit().expect("commit");
            self.index += 1;
            self.fsm.committed();
        }

        fn scan(&self) -> Serials {
            let mut s = Serials::default();
            Reader::new(&self.db)
                .expect("reader")
                .for_each_object_core(|rec| s.put(rec.id.as_str(), Some(&rec)))
                .expect("scan");
            s
        }
    }

    /// A store with `n` objects registered (serials "a-"), an index built on it, then every object
    /// registered again (serials "b-"), `per_entry` per Raft entry: the index is behind by those changes.
    /// Returns the store, the index and the store's revision now.
    fn built_then_changed(n: usize, per_entry: usize) -> (Store, Arc<Followed<Serials>>, u64) {
        let mut s = Store::new();
        s.register("h", n, per_entry, "a");
        let ix: Arc<Followed<Serials>> = Arc::default();
        ix.build_now(&s.db).expect("build");
        s.register("h", n, per_entry, "b");
        let current = s.revision();
        (s, ix, current)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < until, "{what}: not within 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn core_changes_answer_only_what_they_cover_and_within_their_bounds() {
        let h = CoreChanges::default();
        assert_eq!(h.between(1, 10, 100), None, "nothing recorded: not covered");
        // An entry of revisions 5..=7 changed a and b; one of 8..=8 changed nothing; 9..=12 changed c.
        h.record(5, 7, ["a".to_string(), "b".to_string()]);
        h.record(8, 8, []);
        h.record(9, 12, ["c".to_string()]);
        let ids = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        assert_eq!(h.between(4, 12, 100), None, "before the first recorded entry");
        assert_eq!(h.between(5, 12, 100), ids(&["a", "b", "c"]));
        assert_eq!(h.between(6, 7, 100), ids(&["a", "b"]), "a position inside an entry takes the entry");
        assert_eq!(h.between(8, 11, 100), ids(&[]), "entry 9..=12 is past what the reader sees");
        assert_eq!(h.between(8, 12, 100), ids(&["c"]));
        assert_eq!(h.between(13, 20, 100), ids(&[]));
        assert_eq!(h.between(5, 12, 3), ids(&["a", "b", "c"]), "exactly max");
        assert_eq!(h.between(5, 12, 2), None, "more than max: the change log instead");
        // Past CORE_CHANGES_MAX ids the oldest go and coverage starts after them.
        h.record(13, 13, (0..CORE_CHANGES_MAX).map(|i| format!("x{i}")));
        assert_eq!(h.between(12, 13, usize::MAX), None, "entry 9..=12 fell out");
        assert_eq!(h.between(13, 13, usize::MAX).map(|s| s.len()), Some(CORE_CHANGES_MAX));
        h.reset();
        assert_eq!(h.between(13, 13, 100), None, "reset: not covered");
        h.record(20, 20, []);
        assert_eq!(h.between(20, 20, 100), ids(&[]));
    }

    /// With the member's hint, an index reads only the objects whose core changed: GOOD findings that
    /// change nothing an index sees cost no object read, and the index still equals a full scan after
    /// registrations, first findings, repeated findings and new serials.
    #[test]
    fn a_hinted_index_reads_only_changed_cores_and_equals_a_scan() {
        let mut s = Store::new();
        s.register("h", 20, 7, "a");
        let ix: Arc<Followed<Serials>> = Arc::default();
        ix.follow_hint(Arc::clone(&s.fsm.stats().core_changes));
        ix.build_now(&s.db).expect("build");
        s.good_findings("h", 20, 1); // first grades: every core changes
        s.good_findings("h", 20, 2); // the same again: no core changes
        let hint = Arc::clone(&s.fsm.stats().core_changes);
        let at = ix.revision().expect("built") + 1;
        let r = Reader::new(&s.db).expect("reader");
        let Delta::Records { records: unhinted, .. } =
            read_delta(&r, at, CATCH_UP_CHUNK, None).expect("read")
        else {
            panic!("compacted")
        };
        let Delta::Records { records: hinted, next } =
            read_delta(&r, at, CATCH_UP_CHUNK, Some(&hint)).expect("read")
        else {
            panic!("compacted")
        };
        assert_eq!(unhinted.len(), 20, "the change log names every object");
        assert_eq!(hinted.len(), 20, "the first grades changed every core");
        assert_eq!(next, s.revision() + 1);
        ix.warm(&s.db).expect("warm");
        let at = ix.revision().expect("built") + 1;
        s.good_findings("h", 20, 3);
        let r = Reader::new(&s.db).expect("reader");
        let Delta::Records { records, next } = read_delta(&r, at, CATCH_UP_CHUNK, Some(&hint)).expect("read")
        else {
            panic!("compacted")
        };
        assert!(records.is_empty(), "repeated GOOD findings change no core: {records:?}");
        assert_eq!(next, s.revision() + 1, "and the position still moves to the store's revision");
        // New serials for half the disks, more findings: the warmed index equals a scan.
        s.register("h", 10, 3, "b");
        s.good_findings("h", 20, 4);
        let (before, hinted_before) =
            (tests::DELTA_READS.with(Cell::get), tests::HINTED_READS.with(Cell::get));
        ix.warm(&s.db).expect("warm");
        assert_eq!(ix.revision(), Some(s.revision()));
        assert_eq!(lock(&ix.state).index, s.scan());
        let (reads, hinted) = (
            tests::DELTA_READS.with(Cell::get) - before,
            tests::HINTED_READS.with(Cell::get) - hinted_before,
        );
        assert!(reads > 0 && hinted == reads, "every step from the hint: {hinted} of {reads}");
        // At the store's end: nothing read, the position stays.
        let end = s.revision() + 1;
        let r = Reader::new(&s.db).expect("reader");
        let Delta::Records { records, next } =
            read_delta(&r, end, CATCH_UP_CHUNK, Some(&hint)).expect("read")
        else {
            panic!("compacted")
        };
        assert!(records.is_empty() && next == end, "{records:?} {next}");
        assert_eq!(
            lock(&ix.state).apply(Delta::Records { next, records }, &Serials::default),
            Applied::AtEnd
        );
    }

    #[test]
    fn a_caller_catches_up_itself_only_within_one_step() {
        let chunk = CATCH_UP_CHUNK as u64;
        // Index at `next` 1,001 (it holds revision 1,000).
        assert!(within_one_step(1001, 1000), "current");
        assert!(within_one_step(1001, 1000 + chunk), "exactly one step behind");
        assert!(!within_one_step(1001, 1001 + chunk), "one revision more");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_gap_is_caught_up_by_the_caller_and_answers_exactly() {
        let (s, ix, current) = built_then_changed(10, 5);
        let got = ix.with(&s.db, current, |x| x.0.clone()).await.expect("with").expect("built");
        assert_eq!(got, s.scan().0);
        assert_eq!(ix.revision(), Some(current));
        assert_eq!((ix.behind_answers(), ix.unbuilt_answers()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_more_than_a_step_behind_answers_at_once_and_leaves_the_catch_up_to_the_background() {
        // Every object changes again, in entries of 64: four steps' worth of events behind.
        let (s, ix, current) = built_then_changed(4 * CATCH_UP_CHUNK, 64);
        let fresh = |x: &Serials| x.0.values().filter(|v| v.starts_with("b-")).count();
        let answered = ix.with(&s.db, current, fresh).await.expect("with").expect("built");
        // More than a step behind: answered at once from the index as it was, nothing taken in inline.
        assert_eq!(answered, 0, "answered from the index as it was");
        assert_eq!(ix.behind_answers(), 1);
        // The rest is caught up off the caller, without another use.
        wait_for("background catch-up", || ix.revision() == Some(current));
        let all = ix.with(&s.db, current, |x| x.0.clone()).await.expect("with").expect("built");
        assert_eq!(all, s.scan().0);
        assert_eq!(ix.behind_answers(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_to_reach_a_revision_warms_the_index_and_is_bounded() {
        let (s, ix, current) = built_then_changed(4 * CATCH_UP_CHUNK, 64);
        assert!(ix.revision() < Some(current));
        assert!(ix.reach(&s.db, current, Duration::from_secs(30)).await, "warmed to the store's revision");
        assert_eq!(ix.revision(), Some(current));
        assert_eq!(ix.with(&s.db, current, |x| x.0.clone()).await.expect("with"), Some(s.scan().0));
        // A revision the store will not reach within the limit: false once the limit passed.
        let t = Instant::now();
        assert!(!ix.reach(&s.db, current + 1, Duration::from_millis(50)).await);
        assert!(t.elapsed() >= Duration::from_millis(50));
        // An index not built is not waited for.
        let unbuilt: Arc<Followed<Serials>> = Arc::default();
        assert!(!unbuilt.reach(&s.db, 1, Duration::from_secs(30)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_waits_for_another_step_only_so_long_and_answers_what_is_there() {
        let (s, ix, current) = built_then_changed(8, 8);
        // Someone else's step is being read (and never finishes while we ask): the caller waits at most
        // CATCH_UP_WAIT, then answers from the index as it is, without taking a step of its own.
        let other = {
            let mut st = lock(&ix.state);
            st.catching = true;
            Step { ix: &ix, from: st.next, epoch: st.epoch, done: false }
        };
        let stale = ix.with(&s.db, current, |x| x.0.clone()).await.expect("with").expect("built");
        assert!(stale.values().all(|v| v.starts_with("a-")), "answered from the index as it was");
        assert_eq!(ix.behind_answers(), 1);
        assert!(ix.revision() < Some(current));
        // The other step is dropped unfinished (its read failed): the flag is cleared, the next caller
        // catches up itself.
        drop(other);
        let now = ix.with(&s.db, current, |x| x.0.clone()).await.expect("with").expect("built");
        assert_eq!(now, s.scan().0);
        assert_eq!(ix.behind_answers(), 1);
    }

    #[test]
    fn a_step_read_for_a_replaced_index_is_dropped() {
        let mut s = Store::new();
        s.register("h", 4, 4, "a");
        let ix: Arc<Followed<Serials>> = Arc::default();
        ix.build_now(&s.db).expect("build");
        let (from, epoch) = {
            let st = lock(&ix.state);
            (st.next, st.epoch)
        };
        s.register("h", 4, 4, "b");
        let delta =
            read_delta(&Reader::new(&s.db).expect("reader"), from, CATCH_UP_CHUNK, None).expect("read");
        lock(&ix.state).catching = true;
        ix.reset();
        let step = Step { ix: &ix, from, epoch, done: false };
        assert_eq!(step.finish(delta), None, "the index was replaced meanwhile");
        assert_eq!(ix.revision(), None);
        assert!(!lock(&ix.state).catching);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_takes_in_what_changed_during_its_pass_before_it_is_installed() {
        let mut s = Store::new();
        s.register("h", 100, 10, "a");
        let ix: Arc<Followed<Serials>> = Arc::default();
        // The pass reads the store as it was; 100 objects change after it (as writes do during a long pass).
        let pass = Reader::new(&s.db).expect("reader");
        s.register("h", 100, 10, "b");
        assert!(!ix.building.swap(true, Ordering::AcqRel));
        ix.build(pass, &s.db).expect("build");
        ix.building.store(false, Ordering::Release);
        assert_eq!(ix.revision(), Some(s.revision()), "installed at the store's revision, not the pass's");
        let got = ix.with(&s.db, s.revision(), |x| x.0.clone()).await.expect("with").expect("built");
        assert_eq!(got, s.scan().0);
        assert_eq!(ix.behind_answers(), 0);
    }

    #[test]
    fn a_pair_warm_reads_each_step_once_for_both_indexes() {
        let reads = || DELTA_READS.with(|n| n.get());
        // Both built at the same position, then four steps' worth of changes.
        let n = 4 * CATCH_UP_CHUNK;
        let mut s = Store::new();
        s.register("h", n, 64, "a");
        let (a, b): (Arc<Followed<Serials>>, Arc<Followed<Serials>>) = (Arc::default(), Arc::default());
        a.build_now(&s.db).expect("build");
        b.build_now(&s.db).expect("build");
        s.register("h", n, 64, "b");
        let current = s.revision();
        let before = reads();
        warm_pair(&a, &b, &s.db).expect("warm");
        let steps = reads() - before;
        assert_eq!((a.revision(), b.revision()), (Some(current), Some(current)));
        assert_eq!(lock(&a.state).index, s.scan());
        assert_eq!(lock(&b.state).index, s.scan());
        // Each index alone takes the same steps: the pair took them once.
        let (s2, c, _) = built_then_changed(n, 64);
        let before = reads();
        c.warm(&s2.db).expect("warm");
        assert_eq!(steps, reads() - before, "one read per step for both");
        assert!(steps >= 4, "{steps} steps");
        assert!(!a.building.load(Ordering::Acquire) && !b.building.load(Ordering::Acquire));
        assert!(!lock(&a.state).catching && !lock(&b.state).catching);
    }

    #[test]
    fn a_pair_warm_never_holds_one_index_while_the_other_is_busy() {
        let mut s = Store::new();
        s.register("h", 100, 10, "a");
        let (a, b): (Arc<Followed<Serials>>, Arc<Followed<Serials>>) = (Arc::default(), Arc::default());
        a.build_now(&s.db).expect("build");
        b.build_now(&s.db).expect("build");
        s.register("h", 100, 10, "b");
        let current = s.revision();
        // Another caller's step on b is being read (heartbeats wait for a held step): a is caught up
        // meanwhile, without its step held while b's runs.
        let other = {
            let mut st = lock(&b.state);
            st.catching = true;
            Step { ix: &b, from: st.next, epoch: st.epoch, done: false }
        };
        let (a2, b2, db) = (Arc::clone(&a), Arc::clone(&b), Arc::clone(&s.db));
        let warm = std::thread::spawn(move || warm_pair(&a2, &b2, &db));
        wait_for("a caught up while b is busy", || a.revision() == Some(current));
        assert!(!lock(&a.state).catching);
        drop(other);
        warm.join().expect("join").expect("warm");
        assert_eq!(b.revision(), Some(current));
        assert_eq!(lock(&b.state).index, s.scan());
    }

    #[test]
    fn a_pair_warm_leaves_what_it_cannot_share_to_each_index() {
        // One index unbuilt, the other behind: the first is built, the second caught up.
        let (mut s, a, _) = built_then_changed(100, 10);
        let b: Arc<Followed<Serials>> = Arc::default();
        warm_pair(&a, &b, &s.db).expect("warm");
        assert_eq!((a.revision(), b.revision()), (Some(s.revision()), Some(s.revision())));
        assert_eq!(lock(&b.state).index, s.scan());
        // Positions apart: each caught up on its own.
        s.register("h", 100, 10, "c");
        let step = b.begin_step(s.revision());
        let PairStep::Step(step) = step else { panic!("a step") };
        let delta = read_delta(&Reader::new(&s.db).expect("reader"), step.from, 10, None).expect("read");
        assert_eq!(step.finish(delta), Some(Applied::Moved));
        assert_ne!(a.revision(), b.revision());
        warm_pair(&a, &b, &s.db).expect("warm");
        assert_eq!((a.revision(), b.revision()), (Some(s.revision()), Some(s.revision())));
        assert_eq!(lock(&a.state).index, s.scan());
        assert_eq!(lock(&b.state).index, s.scan());
        // Another warm holds one index: only the other is warmed.
        s.register("h", 100, 10, "d");
        assert!(!a.building.swap(true, Ordering::AcqRel));
        warm_pair(&a, &b, &s.db).expect("warm");
        assert!(a.revision() < Some(s.revision()), "held by the other warm: untouched");
        assert_eq!(b.revision(), Some(s.revision()));
        assert!(a.building.load(Ordering::Acquire), "the other warm's flag stays");
        a.building.store(false, Ordering::Release);
        warm_pair(&a, &b, &s.db).expect("warm");
        assert_eq!(lock(&a.state).index, s.scan());
    }

    #[test]
    #[allow(unsafe_code)]
    fn background_work_runs_at_a_lower_cpu_priority_and_a_stop_waits_for_it_only_so_long() {
        // SAFETY: reads the calling thread's nice value; no memory is passed.
        let prio = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let mine = prio();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let t = spawn_background("test-background", move || {
            tx.send(prio()).expect("send");
            hold.recv().ok();
        })
        .expect("spawn");
        let theirs = rx.recv().expect("priority");
        if cfg!(target_os = "linux") {
            assert_eq!(theirs, (mine + BACKGROUND_NICE).min(19), "background work runs niced");
        }
        assert_eq!(prio(), mine, "the caller's priority is unchanged");
        // Still running: a stop waits at most its limit and says so.
        assert!(!wait_background(Duration::from_millis(50)));
        release.send(()).expect("release");
        t.join().expect("join");
        assert!(wait_background(Duration::from_secs(30)), "nothing left once it ended");
        // Work the caller waits for runs niced too, borrows what the caller holds, and hands back its value.
        let held = [1, 2, 3];
        let (theirs, sum) = run_niced("test-niced", || (prio(), held.iter().sum::<i32>()));
        if cfg!(target_os = "linux") {
            assert_eq!(theirs, (mine + BACKGROUND_NICE).min(19), "waited-for work runs niced");
        }
        assert_eq!((sum, prio()), (6, mine));
        let caught = std::panic::catch_unwind(|| run_niced("test-niced", || panic!("boom")));
        assert!(caught.is_err(), "its panic reaches the caller");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warm_catches_up_to_the_store_in_steps() {
        let mut s = Store::new();
        s.register("h", 10, 10, "a");
        let ix: Arc<Followed<Serials>> = Arc::default();
        ix.warm(&s.db).expect("build");
        assert_eq!(ix.revision(), Some(s.revision()));
        s.register("h", 3 * CATCH_UP_CHUNK, 32, "b");
        ix.warm(&s.db).expect("catch up");
        assert_eq!(ix.revision(), Some(s.revision()));
        assert_eq!(
            ix.with(&s.db, s.revision(), |x| x.0.clone()).await.expect("with").expect("built"),
            s.scan().0
        );
    }
}
