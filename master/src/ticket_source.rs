//! The master's side of repair tickets: the [`TicketSource`] the dispatcher (`tickets::dispatch`) reads on
//! the leader. The queue is the replicated state itself: every object in REPAIR without a `ticket`
//! attribute, and every network device whose incident has no ticket recorded yet, has a filing outstanding,
//! under the idempotency key `OBJECT@ENTERED_MS` that every leader derives alike (`tickets::pending_key`). `decide` keeps those keys in the replicated index `fsm_repair_queue` (see
//! `fsm/counts.rs`), so a page of the queue is a range read of the index plus one point lookup per
//! object, never a scan of the objects (a new leader, or a member restored from a snapshot, reads the same
//! index). Filed tickets come back as `Input::Ticket{Filed}` through Raft; a filing that keeps
//! failing raises an operator alert (replicated, in the object's history and the alert log).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use state_machines::{Evidence, Input, ObjectId, TicketUpdate};

use crate::api::Service;
use crate::raft::Role;
use crate::store::Reader;
use crate::tickets::dispatch::{SourceError, TicketSource};
use crate::tickets::{ConfigError, Filed, TicketRequest, TicketsConfig};

pub struct StateSource {
    svc: Weak<Service>,
    /// Whether "network tickets cannot be recorded below command version 7" was logged (once, until the
    /// version is enabled again).
    net_gate_logged: AtomicBool,
}

impl StateSource {
    pub fn new(svc: &Arc<Service>) -> Arc<StateSource> {
        Arc::new(StateSource { svc: Arc::downgrade(svc), net_gate_logged: AtomicBool::new(false) })
    }
}

/// Where the ends of a link are: for each end, the labels of its `switch/NAME` object, else of its
/// `machine/HOST` (a host's link to its ToR); two point lookups per end at most.
fn locate_ends(r: &Reader, t: &mut TicketRequest) -> Result<(), crate::store::StoreError> {
    for end in &mut t.ends {
        for id in [ObjectId::switch(&end.name), ObjectId::machine(&end.name)].into_iter().flatten() {
            if let Some(rec) = r.object(&id.to_string())? {
                end.labels = rec.labels;
                end.object = Some(id);
                break;
            }
        }
    }
    Ok(())
}

/// Why the ticket `filed` for `req` cannot be recorded in a cluster whose `min_command_version` is `min`,
/// or None. Only after `min_command_version` was lowered below 7 with a network device's filing outstanding:
/// the ticket is filed (same key, so no duplicate when it is filed again) but the update recording it is a
/// version-7 command, so the device stays pending until the version is raised again.
pub fn unrecordable(req: &TicketRequest, filed: &Filed, min: u32) -> Option<String> {
    let needs = crate::model::NET_TICKET_COMMAND_VERSION;
    (req.kind.is_network() && min < needs).then(|| {
        format!(
            "ticket {} for {} is filed but cannot be recorded: ticket updates about network devices need \
             command version {needs}, the cluster's min_command_version is {min}; it stays pending until the \
             version is raised",
            filed.ticket_id, req.object
        )
    })
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
        let evidence: Vec<Evidence> = rec.evidence.findings()?.iter().map(Evidence::from_finding).collect();
        match TicketRequest::for_object(&rec.sm, None, rec.labels.clone(), evidence) {
            Some(mut t) if t.idempotency_key == key => {
                locate_ends(r, &mut t)?;
                out.push(t.bounded());
            }
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
        if let Some(why) = unrecordable(req, filed, svc.stats.min_command_version()) {
            // Said once (until recording works again), not on every retry of the report.
            if !self.net_gate_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!("{why} (said once)");
            }
            return Err(SourceError::NotEnabled(why));
        }
        if req.kind.is_network() {
            self.net_gate_logged.store(false, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_ticket_is_unrecordable_below_version_7_only() {
        let link: ObjectId = "link/agg-1--tor-1".parse().expect("id");
        let mut obj = state_machines::ObjectState::new(link, 0);
        obj.attrs.insert(state_machines::step::TICKET_KEY_ATTR.into(), "link/agg-1--tor-1@5".into());
        let req = TicketRequest::for_object(&obj, None, Default::default(), vec![]).expect("pending");
        let filed = Filed { ticket_id: "NET-1".into(), already: false };
        let why = unrecordable(&req, &filed, 6).expect("gated");
        assert!(why.contains("NET-1") && why.contains("min_command_version is 6"), "{why}");
        assert_eq!(unrecordable(&req, &filed, 7), None);
        let disk = TicketRequest { kind: state_machines::Kind::Disk, ..req };
        assert_eq!(unrecordable(&disk, &filed, 1), None, "other kinds are recorded at any version");
    }
}
