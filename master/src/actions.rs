//! Action orders for agents: the actions the state machines want run on a host (FIX by cause, NEWBIE
//! provisioning, TEST), read from the replicated records and handed out with every heartbeat until the
//! result arrives. Nothing here is replicated: an order is just a view of `pending_action`, so a new leader
//! hands out the same orders and an agent that restarts gets them again (actions are idempotent).

use state_machines::{Cause, Kind};

use crate::model::ObjectRecord;
use crate::store::{Filter, Reader, StoreError};

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

/// Every pending action of `host`'s objects.
pub fn orders_for(r: &Reader, host: &str) -> Result<Vec<ActionOrder>, StoreError> {
    let mut out = Vec::new();
    for kind in [Kind::Machine, Kind::Disk, Kind::Dimm, Kind::Nic] {
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
