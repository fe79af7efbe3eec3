//! Resume bookkeeping for the watch stream (sans-IO, unit-tested): which revision to ask for next, which
//! delivered events are duplicates after a reconnect, and the capped, jittered backoff between reconnects.
//!
//! The master's revisions are dense (every change gets the next one) and a watch response says how far the
//! node has looked (`revision`), even when its filter dropped every event. So after any response the next
//! request starts at `max(last event, response revision) + 1`; an event below that was already delivered
//! and is dropped. Asking a lagging node for a revision it has not applied yet is safe: it waits.
//!
//! After a paginated listing ([`Floors`]): every page answers the first page's revision R, but a later page
//! is read from the state of its own moment, so an object on it may already carry changes after R. The
//! watch starts at R + 1 and drops a change whose revision is at or below the listed object's own
//! revision: each change is seen once, either in the listing or in the watch.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::api;

/// Where a watch resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    next: u64,
}

impl Cursor {
    /// Start at `from` (the first revision wanted; at least 1).
    pub fn new(from: u64) -> Cursor {
        Cursor { next: from.max(1) }
    }

    /// The first revision not delivered yet: the next watch request's `from_revision`.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The last revision fully covered (0 before any).
    pub fn covered(&self) -> u64 {
        self.next - 1
    }

    /// Take one watch response: returns its events that were not delivered before, in order, and moves the
    /// cursor past them and past the response's progress revision. Call only once the returned events are
    /// handed on (until then, a reconnect must ask for them again).
    pub fn accept(&mut self, events: Vec<api::Event>, progress: u64) -> Vec<api::Event> {
        let mut fresh = Vec::with_capacity(events.len());
        for e in events {
            if e.revision < self.next {
                continue; // a duplicate after a reconnect (or a reordering bug): never deliver twice
            }
            self.next = e.revision + 1;
            fresh.push(e);
        }
        self.next = self.next.max(progress.saturating_add(1));
        fresh
    }

    /// What `accept` would deliver, without moving the cursor (for work that may fail and be retried).
    pub fn peek(&self, events: &[api::Event]) -> Vec<api::Event> {
        self.clone().accept(events.to_vec(), 0)
    }

    /// After a resync from a listing at `revision`: continue right after it.
    pub fn reset(&mut self, revision: u64) {
        self.next = revision.saturating_add(1).max(1);
    }
}

/// The dedupe after a paginated listing: object -> its listed revision, kept only for objects listed with a
/// revision after the listing's own (the only ones a watch from the listing's revision + 1 can repeat), and
/// dropped as a whole once the watch has covered the highest of them. Bounded by the listing's size; in
/// practice by the objects that changed while the listing was being paged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floors {
    floors: BTreeMap<String, u64>,
    until: u64,
}

impl Floors {
    /// From a listing at `revision` whose objects carry their own revisions.
    pub fn new<'a>(revision: u64, objects: impl IntoIterator<Item = (String, u64)> + 'a) -> Floors {
        let floors: BTreeMap<String, u64> = objects.into_iter().filter(|(_, r)| *r > revision).collect();
        let until = floors.values().copied().max().unwrap_or(0);
        Floors { floors, until }
    }

    /// Whether a watched event is new (not already reflected in the listing).
    pub fn keep(&self, e: &api::Event) -> bool {
        self.floors.get(&e.object).is_none_or(|listed| e.revision > *listed)
    }

    /// The watch has covered every revision up to `covered`: forget the floors once nothing at or below
    /// them can arrive any more.
    pub fn advance(&mut self, covered: u64) {
        if covered >= self.until && !self.floors.is_empty() {
            self.floors.clear();
        }
    }

    /// Objects still deduplicated.
    pub fn len(&self) -> usize {
        self.floors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.floors.is_empty()
    }
}

/// Capped exponential backoff with "equal jitter" (half fixed, half random), so many subscribers that lost
/// the same master do not reconnect in lockstep. The jitter comes from a seeded splitmix64 generator: no
/// global RNG, and tests are reproducible.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration, seed: u64) -> Backoff {
        let start = start.max(Duration::from_millis(1));
        Backoff { start, max: max.max(start), current: start, rng: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next delay: in [current/2, current], then the base doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        let half = base / 2;
        let span = (base - half).as_micros() as u64;
        let jitter = if span == 0 { 0 } else { self.next_u64() % (span + 1) };
        self.current = (self.current * 2).min(self.max);
        half + Duration::from_micros(jitter)
    }

    /// After a success: start small again.
    pub fn reset(&mut self) {
        self.current = self.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evs(revs: &[u64]) -> Vec<api::Event> {
        revs.iter().map(|&r| api::Event { revision: r, ..Default::default() }).collect()
    }

    fn revs(e: &[api::Event]) -> Vec<u64> {
        e.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn resumes_after_the_last_event_or_progress_whichever_is_later() {
        let mut c = Cursor::new(5);
        assert_eq!(revs(&c.accept(evs(&[5, 6, 9]), 9)), vec![5, 6, 9]);
        assert_eq!(c.next(), 10);
        // Filtered-out revisions: progress moves the cursor without events.
        assert!(c.accept(Vec::new(), 14).is_empty());
        assert_eq!((c.next(), c.covered()), (15, 14));
        // A progress value behind the cursor (a lagging node) never moves it back.
        assert!(c.accept(Vec::new(), 3).is_empty());
        assert_eq!(c.next(), 15);
    }

    #[test]
    fn a_reconnect_that_replays_delivers_each_revision_once() {
        // Stream 1 delivers 1..=4, the node dies; the new node (asked from 5) replays 3..=7 because of a
        // bug or an overlapping batch: only 5..=7 come out, and nothing is skipped.
        let mut c = Cursor::new(1);
        let mut out = revs(&c.accept(evs(&[1, 2, 3, 4]), 4));
        assert_eq!(c.next(), 5);
        out.extend(revs(&c.accept(evs(&[3, 4, 5, 6, 7]), 7)));
        out.extend(revs(&c.accept(evs(&[7, 6, 8]), 8))); // out-of-order tail: 6 and the second 7 dropped
        assert_eq!(out, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn peek_does_not_move_and_reset_follows_a_listing() {
        let mut c = Cursor::new(0);
        assert_eq!(c.next(), 1, "revision 0 means nothing; start at 1");
        assert_eq!(revs(&c.peek(&evs(&[1, 2]))), vec![1, 2]);
        assert_eq!(c.next(), 1);
        c.reset(41);
        assert_eq!(c.next(), 42);
        c.reset(u64::MAX);
        assert_eq!(c.next(), u64::MAX, "saturates instead of wrapping to 0");
        assert!(c.accept(evs(&[u64::MAX - 1]), u64::MAX).is_empty());
    }

    fn ev(object: &str, revision: u64) -> api::Event {
        api::Event { revision, object: object.into(), ..Default::default() }
    }

    #[test]
    fn floors_drop_what_a_later_page_already_showed() {
        // Listing at revision 10; `b` was listed at 14 (changed at 12 and 14 while pages were read), `a` at 3.
        let objects = [("a".to_string(), 3), ("b".to_string(), 14), ("c".to_string(), 10)];
        let mut f = Floors::new(10, objects);
        assert_eq!(f.len(), 1, "only objects listed after the listing's revision are kept");
        assert!(f.keep(&ev("a", 11)), "a change after the listing");
        assert!(!f.keep(&ev("b", 12)) && !f.keep(&ev("b", 14)), "already in the listing");
        assert!(f.keep(&ev("b", 15)));
        assert!(f.keep(&ev("", 13)), "events about no object pass");
        f.advance(13);
        assert_eq!(f.len(), 1, "kept until the watch covers 14");
        f.advance(14);
        assert!(f.is_empty(), "nothing at or below 14 can come any more");
        assert!(f.keep(&ev("b", 14)), "and the dedupe is gone");
        assert!(Floors::new(5, Vec::new()).is_empty());
    }

    #[test]
    fn backoff_is_jittered_doubling_and_capped() {
        let (start, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut b = Backoff::new(start, max, 42);
        let mut base = start;
        for i in 0..20 {
            let d = b.next_delay();
            assert!(d >= base / 2 && d <= base, "attempt {i}: {d:?} outside [{:?}, {base:?}]", base / 2);
            base = (base * 2).min(max);
        }
        assert!(b.next_delay() <= max, "never above the cap");
        b.reset();
        assert!(b.next_delay() <= start);
        // Same seed, same delays; different seeds spread out.
        let seq = |seed| {
            let mut b = Backoff::new(start, max, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(seq(7), seq(7));
        assert_ne!(seq(7), seq(8));
        // Degenerate settings stay sane.
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO, 1);
        assert!(z.next_delay() <= Duration::from_millis(1));
    }
}
