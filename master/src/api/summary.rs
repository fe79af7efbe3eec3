//! The fleet summary (issue 17): objects per (kind, state) for the fleet and per safety scope, objects in
//! REPAIR without a ticket, agents and agents alive, all exact at one revision. Answered from the
//! replicated counters (`fsm_counts`, the ticket queue's length, the scope records' agent counts; see
//! `fsm/counts.rs`): the cost does not grow with the objects, and no object row is read.

use std::collections::BTreeMap;

use proto::error::ApiError;
use proto::view::{ScopeSummaryView, StateCountView, SummaryView};

use super::Service;
use crate::fsm::counts;
use crate::store::{Reader, StoreError};

fn store_err(e: StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

/// The summary as `r` holds it.
pub fn summary_of(r: &Reader) -> Result<SummaryView, StoreError> {
    let mut fleet = Vec::new();
    let mut scopes: BTreeMap<String, ScopeSummaryView> = BTreeMap::new();
    // The fleet's and the scopes' rows only (not the hourly transition counters).
    let mut rows = r.counts(counts::FLEET)?;
    rows.extend(r.counts(counts::SCOPE)?);
    for (key, count) in rows {
        let Some((scope, kind, state)) = counts::parse_key(&key) else { continue };
        let c = StateCountView { kind: kind.to_string(), state: state.to_string(), count };
        match scope {
            None => fleet.push(c),
            Some(s) => scopes
                .entry(s.to_string())
                .or_insert_with(|| ScopeSummaryView { scope: s.to_string(), ..Default::default() })
                .states
                .push(c),
        }
    }
    // Agent counts live in the scope records (bounded by the configured scopes, not by the fleet).
    let (mut agents, mut agents_alive) = (0, 0);
    for (name, rec) in r.scopes()? {
        if name == crate::safety::CLUSTER {
            (agents, agents_alive) = (rec.agents, rec.agents_alive);
        }
        if rec.agents == 0 && !scopes.contains_key(&name) {
            continue;
        }
        let s = scopes
            .entry(name.clone())
            .or_insert_with(|| ScopeSummaryView { scope: name.clone(), ..Default::default() });
        s.agents = rec.agents;
        s.agents_alive = rec.agents_alive;
    }
    Ok(SummaryView {
        revision: r.revision()?,
        objects: fleet.iter().map(|c| c.count).sum(),
        states: fleet,
        scopes: scopes.into_values().collect(),
        repair_without_ticket: r.repair_queue_len()?,
        agents,
        agents_alive,
    })
}

impl Service {
    /// The fleet summary: after a read-index barrier, or this node's copy as is (`stale`).
    pub async fn summary(&self, stale: bool) -> Result<SummaryView, ApiError> {
        let r = self.read_view(stale).await?;
        summary_of(&r).map_err(store_err)
    }
}
