//! The master's side of repair tickets: the [`TicketSource`] the dispatcher (`tickets::dispatch`) reads on
//! the leader. The queue is the replicated state itself: every object in REPAIR without a `ticket`
//! attribute has a filing outstanding, under the idempotency key `OBJECT@ENTERED_MS` that every leader
//! derives alike. `decide` keeps those keys in the replicated index `fsm_repair_queue` (see
//! `fsm/counts.rs`), so a page of the queue is a range read of the index plus one point lookup per
//! object, never a scan of the objects (a new leader, or a member restored from a snapshot, reads the same
//! index). Filed tickets come back as `Input::Ticket{Filed}` through Raft; a filing that keeps
//! failing raises an operator alert (replicated, in the object's history and the alert log).

use std::sync::{Arc, Weak};

use state_machines::{Evidence, Input, TicketUpdate};

use crate::api::Service;
use crate::raft::Role;
use crate::store::Reader;
use crate::tickets::dispatch::{SourceError, TicketSource};
use crate::tickets::{ConfigError, Filed, TicketRequest, TicketsConfig};

pub struct StateSource {
    svc: Weak<Service>,
}

impl StateSource {
    pub fn new(svc: &Arc<Service>) -> Arc<StateSource> {
        Arc::new(StateSource { svc: Arc::downgrade(svc) })
    }
}

/// Up to `limit` filings outstanding after the queue key `after`, in key order, from the index.
pub fn pending_requests(
    r: &Reader,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<TicketRequest>, crate::store::StoreError> {
    let mut out = Vec::new();
    for (key, id) in r.repair_queue(after, limit)? {
        let Some(rec) = r.object(&id)? else {
            // The index and the objects are written in one transaction: a dangling key is damage.
            return Err(crate::store::StoreError::Corrupt {
                table: "fsm_repair_queue",
                message: format!("{key} names {id}, which does not exist"),
            });
        };
        let evidence: Vec<Evidence> = rec.evidence.values().map(Evidence::from_finding).collect();
        match TicketRequest::for_object(&rec.sm, None, rec.labels.clone(), evidence) {
            Some(t) if t.idempotency_key == key => out.push(t),
            _ => {
                return Err(crate::store::StoreError::Corrupt {
                    table: "fsm_repair_queue",
                    message: format!("{key}: {id} has no such filing outstanding"),
                });
            }
        }
    }
    Ok(out)
}

impl TicketSource for StateSource {
    async fn pending(&self, after: Option<&str>, limit: usize) -> Result<Vec<TicketRequest>, SourceError> {
        let Some(svc) = self.svc.upgrade() else { return Ok(Vec::new()) };
        if svc.raft().status().role != Role::Leader {
            return Ok(Vec::new());
        }
        let store = |e: crate::store::StoreError| SourceError::Store(e.to_string());
        let r = Reader::new(svc.db()).map_err(store)?;
        pending_requests(&r, after, limit).map_err(store)
    }

    async fn filed(&self, req: &TicketRequest, filed: &Filed) -> Result<(), SourceError> {
        let Some(svc) = self.svc.upgrade() else { return Err(SourceError::Stopping) };
        let input = Input::Ticket { ticket: filed.ticket_id.clone(), update: TicketUpdate::Filed };
        svc.object_command(req.object.clone(), input).await?;
        Ok(())
    }

    async fn failed(&self, req: &TicketRequest, error: &str, attempts: u32) {
        let Some(svc) = self.svc.upgrade() else { return };
        let message =
            format!("repair ticket for {} not filed after {attempts} attempts: {error}", req.object);
        tracing::error!(object = %req.object, attempts, error, "repair ticket filing failed");
        if let Err(e) = svc.alert(req.object.clone(), &message).await {
            tracing::warn!(error = %e, "could not record the ticket alert");
        }
    }
}

/// Start the dispatcher for `cfg` (nothing for `sink = "none"`) in the service's duties group; it files
/// only while this node leads and stops with the duties.
pub fn spawn(svc: &Arc<Service>, cfg: &TicketsConfig, node_id: u64) -> Result<(), ConfigError> {
    let Some(sink) = cfg.build()? else { return Ok(()) };
    let mut dcfg = cfg.dispatch();
    dcfg.seed = node_id;
    let d = crate::tickets::dispatch::Dispatcher::new(Arc::new(sink), StateSource::new(svc), dcfg);
    let stop = svc.duties.stopped();
    svc.duties.spawn(async move {
        let stats = d.run(stop).await;
        tracing::info!(?stats, "ticket dispatcher stopped");
    });
    Ok(())
}
