//! Which objects' deadlines passed (acknowledgement, FIX, TEST and other timeouts of the state machines),
//! for the leader's ticks, without scanning the objects: a [`crate::follow::Followed`] index of
//! (deadline, object id) built once in the background and followed from the change log. Before it, the
//! leader listed every object every `TICK_EVERY` (5 s) to find the few due ones: O(objects) on the leader
//! all the time (1.5 M objects at the fleet-scale target).

use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use state_machines::{ObjectId, Policy};

use crate::model::ObjectCore;
use crate::store::{Reader, StoreError};

/// (deadline, id) of every object that has a deadline under one policy, and the objects out of GOOD by
/// state ([`crate::by_state::States`], for listings by state): both follow the same changes, so one
/// followed index keeps them with one read of each change.
pub struct Deadlines {
    policy: Policy,
    by_time: BTreeSet<(u64, String)>,
    of: HashMap<String, u64>,
    states: crate::by_state::States,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines::with_policy(Policy::default())
    }
}

impl Deadlines {
    pub fn with_policy(policy: Policy) -> Self {
        Deadlines { policy, by_time: BTreeSet::new(), of: HashMap::new(), states: Default::default() }
    }

    /// The objects out of GOOD, by state.
    pub fn states(&self) -> &crate::by_state::States {
        &self.states
    }

    /// Objects whose deadline is at or before `now_ms`, earliest first, at most `max`.
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<ObjectId> {
        self.by_time
            .range(..=(now_ms, String::from(char::MAX)))
            .filter_map(|(_, id)| id.parse().ok())
            .take(max)
            .collect()
    }
}

impl crate::follow::ObjectIndex for Deadlines {
    const NAME: &'static str = "deadlines";
    fn put(&mut self, id: &str, rec: Option<&ObjectCore>) {
        self.states.put(id, rec);
        if let Some(old) = self.of.remove(id) {
            self.by_time.remove(&(old, id.to_string()));
        }
        if let Some(d) = rec.and_then(|r| r.sm.next_deadline_ms(&self.policy)) {
            self.of.insert(id.to_string(), d);
            self.by_time.insert((d, id.to_string()));
        }
    }
}

/// The leader's deadline index (see the module comment).
pub type DeadlineIndex = crate::follow::Followed<Deadlines>;

/// A deadline index for `policy`.
pub fn index(policy: Policy) -> DeadlineIndex {
    crate::follow::Followed::new(move || Deadlines::with_policy(policy.clone()))
}

/// The objects due at `now_ms` by a full scan (what the index answers), earliest first, at most `max`: the
/// reference the index is tested against. Streamed: only due (deadline, id) pairs are kept, at most `max`
/// of them, never the records (collecting a listing first held every record in memory at once).
pub fn due_by_scan(
    r: &Reader,
    policy: &Policy,
    now_ms: u64,
    max: usize,
) -> Result<Vec<ObjectId>, StoreError> {
    // A max-heap of the earliest `max` due so far, ordered as the index orders them: deadline, then id text.
    let mut due: BinaryHeap<(u64, String)> = BinaryHeap::new();
    if max == 0 {
        return Ok(Vec::new());
    }
    r.for_each_object_core(|rec| {
        let Some(d) = rec.sm.next_deadline_ms(policy).filter(|d| *d <= now_ms) else { return };
        if due.len() < max {
            due.push((d, rec.id.to_string()));
        } else if due.peek().is_some_and(|top| (d, rec.id.to_string()) < *top) {
            due.pop();
            due.push((d, rec.id.to_string()));
        }
    })?;
    Ok(due.into_sorted_vec().into_iter().filter_map(|(_, id)| id.parse().ok()).collect())
}

/// Objects due at `now_ms` (at most `max`), from the index once it is built; none until then (counted by
/// [`crate::follow::Followed::unbuilt_answers`]): the warm duty builds it within seconds, and a deadline
/// stepped one tick late is harmless, where a streamed pass over every object per tick on a new leader
/// restored from a snapshot is not.
pub async fn due(
    ix: &Arc<DeadlineIndex>,
    db: &Arc<redb::Database>,
    current: u64,
    now_ms: u64,
    max: usize,
) -> Result<Vec<ObjectId>, StoreError> {
    Ok(ix.with(db, current, |d| d.due(now_ms, max)).await?.unwrap_or_default())
}
