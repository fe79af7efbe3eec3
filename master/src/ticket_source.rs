//! The master's side of repair tickets: the [`TicketSource`] the dispatcher (`tickets::dispatch`) reads on
//! the leader. The queue is the replicated state itself: every object in REPAIR without a `ticket`
//! attribute has a filing outstanding, under the idempotency key `OBJECT@ENTERED_MS` that every leader
//! derives alike. Filed tickets come back as `Input::Ticket{Filed}` through Raft; a filing that keeps
//! failing raises an operator alert (replicated, in the object's history and the alert log).

use std::sync::{Arc, Mutex, Weak};

use state_machines::{Evidence, Input, TicketUpdate};

use crate::api::Service;
use crate::raft::Role;
use crate::store::{Filter, Reader};
use crate::tickets::dispatch::{SourceError, TicketSource};
use crate::tickets::{ConfigError, Filed, TicketRequest, TicketsConfig};

pub struct StateSource {
    svc: Weak<Service>,
    /// (revision, nothing pending) of the last scan: an unchanged store is not scanned again.
    last: Mutex<Option<u64>>,
}

impl StateSource {
    pub fn new(svc: &Arc<Service>) -> Arc<StateSource> {
        Arc::new(StateSource { svc: Arc::downgrade(svc), last: Mutex::new(None) })
    }
}

impl TicketSource for StateSource {
    async fn pending(&self, after: Option<&str>, limit: usize) -> Result<Vec<TicketRequest>, SourceError> {
        let Some(svc) = self.svc.upgrade() else { return Ok(Vec::new()) };
        if svc.raft().status().role != Role::Leader {
            return Ok(Vec::new());
        }
        let store = |e: crate::store::StoreError| SourceError::Store(e.to_string());
        let r = Reader::new(svc.db()).map_err(store)?;
        let revision = r.revision().map_err(store)?;
        if after.is_none() && *self.last.lock().unwrap_or_else(|p| p.into_inner()) == Some(revision) {
            return Ok(Vec::new());
        }
        let filter = Filter { state: Some("REPAIR".into()), ..Filter::default() };
        let mut out: Vec<TicketRequest> = r
            .list(&filter, usize::MAX)
            .map_err(store)?
            .into_iter()
            .filter_map(|rec| {
                let evidence: Vec<Evidence> = rec.evidence.values().map(Evidence::from_finding).collect();
                TicketRequest::for_object(&rec.sm, None, rec.labels.clone(), evidence)
            })
            .filter(|t| after.is_none_or(|a| t.idempotency_key.as_str() > a))
            .collect();
        out.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        out.truncate(limit);
        if after.is_none() && out.is_empty() {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(revision);
        } else {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(out)
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
