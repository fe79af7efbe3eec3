//! Action orders for agents: the actions the state machines want run on a host (FIX by cause, NEWBIE
//! provisioning, TEST), read from the replicated records and handed out with every heartbeat until the
//! result arrives. Nothing here is replicated: an order is just a view of `pending_action`, so a new leader
//! hands out the same orders and an agent that restarts gets them again (actions are idempotent).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use state_machines::{Cause, Kind};

use crate::model::ObjectRecord;
use crate::store::{ChangesRead, Filter, Reader, StoreError};

/// Most orders one heartbeat carries (a host has a few dozen objects; one action each at most).
pub const MAX_ORDERS: usize = 64;

/// The order type is the API view shared by every front end.
pub use proto::view::ActionOrder;

/// The order for one record, if it waits for an action.
pub fn order_of(r: &ObjectRecord) -> Option<ActionOrder> {
    let p = r.sm.pending_action.as_ref()?;
    // The part that failed (recorded on entering REPAIR): the worker refuses a slot that still holds it, so
    // a ticket closed without a real swap never provisions the old disk.
    let old_serial = match (r.sm.attrs.get(state_machines::step::REPAIR_SERIAL_ATTR), &r.sm.last_cause) {
        (Some(s), _) => s.clone(),
        (None, Some(Cause::Replacement { old_serial, .. })) => old_serial.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let mut params = std::collections::BTreeMap::new();
    if let Some(ev) = &r.sm.last_evidence {
        for key in ["service", "mount"] {
            if let Some(v) = ev.readings.get(key) {
                params.insert(key.to_string(), v.clone());
            }
        }
    }
    if let Some(profile) = r.labels.get("profile") {
        params.insert("profile".into(), profile.clone());
    }
    Some(ActionOrder {
        object: r.id.to_string(),
        action: p.action.to_string(),
        requested_ms: p.requested_ms,
        deadline_ms: p.deadline_ms,
        old_serial,
        new_serial: r.sm.serial().unwrap_or_default().to_string(),
        params,
    })
}

/// The kinds whose objects get orders, in the order a heartbeat lists them.
pub const ORDER_KINDS: [Kind; 4] = [Kind::Machine, Kind::Disk, Kind::Dimm, Kind::Nic];

/// Where an object's order goes in a host's list (kind order, then id), or None for kinds without orders.
fn order_key(id: &state_machines::ObjectId) -> Option<(usize, String)> {
    ORDER_KINDS.iter().position(|k| *k == id.kind()).map(|rank| (rank, id.to_string()))
}

/// Every pending action of `host`'s objects.
pub fn orders_for(r: &Reader, host: &str) -> Result<Vec<ActionOrder>, StoreError> {
    let mut out = Vec::new();
    for kind in ORDER_KINDS {
        let filter = Filter { kind: Some(kind), host: Some(host.to_string()), ..Filter::default() };
        for rec in r.list(&filter, usize::MAX)? {
            if let Some(o) = order_of(&rec) {
                out.push(o);
                if out.len() >= MAX_ORDERS {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Most change-log events one catch-up read of the [`OrderIndex`] takes before it reads again (bounds the
/// memory of one read; a catch-up loops until it reached the store's revision).
pub const INDEX_READ_EVENTS: usize = 4096;

/// The pending orders of every host, kept in memory so a heartbeat answers with one hash-map lookup instead
/// of scanning the host's objects. Built once from a full pass over the objects (in the background; until
/// then [`orders_for`] answers), then kept current from the change log: every object a change names is read
/// again (a point lookup). Every write that can change an order (a transition, an effect, a registration,
/// an operator command) is a change event, so the index equals a scan at the revision it reached; when the
/// change log no longer holds the index's position (compacted, or a snapshot installed) it is rebuilt.
#[derive(Default)]
pub struct OrderIndex {
    state: Mutex<IndexState>,
    building: AtomicBool,
}

#[derive(Default)]
struct IndexState {
    /// The next revision to take from the change log (0: not built).
    next: u64,
    by_host: HashMap<String, BTreeMap<(usize, String), ActionOrder>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IndexState {
    fn built(r: &Reader) -> Result<IndexState, StoreError> {
        let revision = r.revision()?;
        let mut by_host: HashMap<String, BTreeMap<(usize, String), ActionOrder>> = HashMap::new();
        r.for_each_object(|rec| {
            if let (Some(key), Some(o)) = (order_key(&rec.id), order_of(&rec)) {
                by_host.entry(rec.id.host().to_string()).or_default().insert(key, o);
            }
        })?;
        Ok(IndexState { next: revision + 1, by_host })
    }

    /// Read object `id` again and put its order (or its absence) in the index.
    fn refresh(&mut self, r: &Reader, id: &str) -> Result<(), StoreError> {
        let Ok(oid) = id.parse::<state_machines::ObjectId>() else { return Ok(()) };
        let Some(key) = order_key(&oid) else { return Ok(()) };
        let order = r.object(id)?.as_ref().and_then(order_of);
        match order {
            Some(o) => {
                self.by_host.entry(oid.host().to_string()).or_default().insert(key, o);
            }
            None => {
                if let Some(m) = self.by_host.get_mut(oid.host()) {
                    m.remove(&key);
                    if m.is_empty() {
                        self.by_host.remove(oid.host());
                    }
                }
            }
        }
        Ok(())
    }

    /// Take in every change up to `r`'s revision.
    fn catch_up(&mut self, r: &Reader) -> Result<(), StoreError> {
        let end = r.revision()?;
        while self.next <= end {
            match r.changes(self.next, &Filter::default(), INDEX_READ_EVENTS)? {
                ChangesRead::Compacted { .. } => {
                    *self = IndexState::built(r)?;
                    return Ok(());
                }
                ChangesRead::Events { events, next } => {
                    let ids: BTreeSet<&str> =
                        events.iter().filter(|e| !e.object.is_empty()).map(|e| e.object.as_str()).collect();
                    for id in ids {
                        self.refresh(r, id)?;
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

impl OrderIndex {
    /// The pending orders of `host` (at most [`MAX_ORDERS`]), equal to [`orders_for`] at the store's
    /// revision: caught up from the change log first when `current` (the node's applied revision) is past
    /// the index. Until the index is built (a background pass, started by the first call) the host's objects
    /// are scanned instead.
    pub fn orders(
        self: &Arc<Self>,
        db: &Arc<redb::Database>,
        host: &str,
        current: u64,
    ) -> Result<Vec<ActionOrder>, StoreError> {
        let mut st = lock(&self.state);
        if st.next == 0 {
            drop(st);
            self.start_build(db);
            return orders_for(&Reader::new(db)?, host);
        }
        if st.next <= current {
            st.catch_up(&Reader::new(db)?)?;
        }
        Ok(st.by_host.get(host).map(|m| m.values().take(MAX_ORDERS).cloned().collect()).unwrap_or_default())
    }

    /// Build the index off the async workers, once at a time.
    fn start_build(self: &Arc<Self>, db: &Arc<redb::Database>) {
        if self.building.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, db) = (Arc::clone(self), Arc::clone(db));
        tokio::task::spawn_blocking(move || {
            match Reader::new(&db).and_then(|r| IndexState::built(&r)) {
                Ok(built) => {
                    let mut st = lock(&me.state);
                    if st.next == 0 {
                        *st = built;
                    }
                }
                // Answered by scans meanwhile; the next heartbeat tries again.
                Err(e) => tracing::warn!(error = %e, "building the order index failed"),
            }
            me.building.store(false, Ordering::Release);
        });
    }

    /// Build the index now, on this thread (tests, and callers that want it ready).
    pub fn build_now(&self, db: &redb::Database) -> Result<(), StoreError> {
        let built = IndexState::built(&Reader::new(db)?)?;
        *lock(&self.state) = built;
        Ok(())
    }

    /// Forget the index (it is built again on the next use).
    pub fn reset(&self) {
        *lock(&self.state) = IndexState::default();
    }

    /// The revision the index reached, once built.
    pub fn revision(&self) -> Option<u64> {
        let next = lock(&self.state).next;
        (next > 0).then(|| next - 1)
    }
}
