//! Leader-side indexes kept in memory and followed from the change log: built once from a pass over the
//! objects (in the background), then kept current by reading again every object a change names (a point
//! lookup). Every write that can change what an index holds is a change event naming the object, so an
//! index equals a scan at the revision it reached; when the change log no longer holds the index's position
//! (compacted, or a snapshot installed) it is built again, outside the lock. Nothing here is replicated:
//! every member builds its own and keeps it warm ([`Followed::warm`], followers included), so a new leader
//! has its indexes from its first heartbeat. Users: [`crate::actions::OrderIndex`] (orders handed out with
//! heartbeats) and [`crate::deadlines::DeadlineIndex`] (objects whose deadline passed, for the leader's
//! ticks).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::ObjectRecord;
use crate::store::{ChangesRead, Filter, Reader, StoreError};

/// Most change-log events one catch-up read takes before it reads again (bounds the memory of one read; a
/// catch-up loops until it reached the store's revision).
pub const INDEX_READ_EVENTS: usize = 4096;

/// How often every member warms its followed indexes ([`Followed::warm`]).
pub const WARM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What one followed index keeps per object.
pub trait ObjectIndex: Default + Send + 'static {
    /// Put `rec`'s entry in (or, with `None`, take object `id`'s entry out of) the index.
    fn put(&mut self, id: &str, rec: Option<&ObjectRecord>);
}

struct State<S> {
    /// The next revision to take from the change log (0: not built).
    next: u64,
    index: S,
}

impl<S: Default> Default for State<S> {
    fn default() -> Self {
        State { next: 0, index: S::default() }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: ObjectIndex> State<S> {
    fn built(r: &Reader, make: &dyn Fn() -> S) -> Result<State<S>, StoreError> {
        let revision = r.revision()?;
        let mut index = make();
        r.for_each_object(|rec| index.put(&rec.id.to_string(), Some(&rec)))?;
        Ok(State { next: revision + 1, index })
    }

    /// Take in every change up to `r`'s revision. When the change log no longer holds the index's position
    /// the index is left unbuilt (`next` 0) for a build outside the lock: a pass over 1.5 M objects must not
    /// run under it (on an async worker, every heartbeat would wait).
    fn catch_up(&mut self, r: &Reader, make: &dyn Fn() -> S) -> Result<(), StoreError> {
        let end = r.revision()?;
        while self.next <= end {
            match r.changes(self.next, &Filter::default(), INDEX_READ_EVENTS)? {
                ChangesRead::Compacted { .. } => {
                    *self = State { next: 0, index: make() };
                    return Ok(());
                }
                ChangesRead::Events { events, next } => {
                    let ids: BTreeSet<&str> =
                        events.iter().filter(|e| !e.object.is_empty()).map(|e| e.object.as_str()).collect();
                    for id in ids {
                        let rec = r.object(id)?;
                        self.index.put(id, rec.as_ref());
                    }
                    if next <= self.next {
                        // The change log holds nothing more (the store's revision is ahead of its rows).
                        break;
                    }
                    self.next = next;
                }
            }
        }
        Ok(())
    }
}

/// An [`ObjectIndex`] followed from the change log (see the module comment).
pub struct Followed<S> {
    state: Mutex<State<S>>,
    building: AtomicBool,
    /// Answers given while the index was not built (the caller answered without it).
    unbuilt: AtomicU64,
    make: Box<dyn Fn() -> S + Send + Sync>,
}

impl<S: ObjectIndex> Default for Followed<S> {
    fn default() -> Self {
        Followed::new(S::default)
    }
}

impl<S: ObjectIndex> Followed<S> {
    /// An index whose empty state `make` builds (e.g. one that carries the policy it needs).
    pub fn new(make: impl Fn() -> S + Send + Sync + 'static) -> Self {
        Followed {
            state: Mutex::default(),
            building: AtomicBool::new(false),
            unbuilt: AtomicU64::new(0),
            make: Box::new(make),
        }
    }

    /// Answer from the index caught up to the store's revision (when `current`, the node's applied
    /// revision, is past it). `None` until the index is built (counted): a background build is started (one
    /// at a time) and the caller answers without the index meanwhile.
    pub fn with<T>(
        self: &Arc<Self>,
        db: &Arc<redb::Database>,
        current: u64,
        f: impl FnOnce(&S) -> T,
    ) -> Result<Option<T>, StoreError> {
        let mut st = lock(&self.state);
        if st.next != 0 && st.next <= current {
            st.catch_up(&Reader::new(db)?, &*self.make)?;
        }
        if st.next == 0 {
            drop(st);
            self.unbuilt.fetch_add(1, Ordering::Relaxed);
            self.start_build(db);
            return Ok(None);
        }
        Ok(Some(f(&st.index)))
    }

    /// Answers given while the index was not built, since this process started.
    pub fn unbuilt_answers(&self) -> u64 {
        self.unbuilt.load(Ordering::Relaxed)
    }

    /// Keep the index built and caught up to the store (blocking: run it off the async workers). Every
    /// member does this every [`WARM_EVERY`], followers included, so a member that becomes leader answers
    /// heartbeats and ticks from an index that is already there: at 100,000 agents a new leader that had to
    /// build its indexes first answered each heartbeat by scanning the host's objects for about 8 s, and
    /// heartbeats waited up to 1.8 s. Skipped while a background build runs.
    /// A build happens outside the lock (users answer another way meanwhile); a catch-up that finds its
    /// position compacted leaves the index unbuilt for the next warm to build.
    pub fn warm(&self, db: &redb::Database) -> Result<(), StoreError> {
        if self.building.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let unbuilt = lock(&self.state).next == 0;
        let warmed = if unbuilt {
            self.build_unlocked(db)
        } else {
            Reader::new(db).and_then(|r| lock(&self.state).catch_up(&r, &*self.make))
        };
        self.building.store(false, Ordering::Release);
        warmed
    }

    /// Build the index from a pass over the objects without holding the lock, and install it unless it was
    /// built meanwhile. The caller holds `building`.
    fn build_unlocked(&self, db: &redb::Database) -> Result<(), StoreError> {
        let built = State::built(&Reader::new(db)?, &*self.make)?;
        let mut st = lock(&self.state);
        if st.next == 0 {
            *st = built;
        }
        Ok(())
    }

    /// Build the index off the async workers, once at a time.
    fn start_build(self: &Arc<Self>, db: &Arc<redb::Database>) {
        if self.building.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, db) = (Arc::clone(self), Arc::clone(db));
        tokio::task::spawn_blocking(move || {
            // Answered without the index meanwhile; the next use or warm tries again.
            if let Err(e) = me.build_unlocked(&db) {
                tracing::warn!(error = %e, "building an index of the objects failed");
            }
            me.building.store(false, Ordering::Release);
        });
    }

    /// Build the index now, on this thread (tests, and callers that want it ready).
    pub fn build_now(&self, db: &redb::Database) -> Result<(), StoreError> {
        let built = State::built(&Reader::new(db)?, &*self.make)?;
        *lock(&self.state) = built;
        Ok(())
    }

    /// Forget the index (it is built again on the next use).
    pub fn reset(&self) {
        *lock(&self.state) = State { next: 0, index: (self.make)() };
    }

    /// The revision the index reached, once built.
    pub fn revision(&self) -> Option<u64> {
        let next = lock(&self.state).next;
        (next > 0).then(|| next - 1)
    }
}
