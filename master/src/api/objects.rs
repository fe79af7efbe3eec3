//! Objects: the writes that change them (findings, registrations, object commands), each validated before
//! it is proposed, and the reads (list, get) with the one object view every front end answers with.

use std::sync::atomic::Ordering;

use proto::error::ApiError;
use proto::view::ObjectView;
use serde::{Deserialize, Serialize};
use state_machines::{Finding, Input, ObjectId};

use super::pages::{self, Listing, ObjectPage, PageToken};
use super::{Service, store_err, validate};
use crate::by_state::{self, Served};
use crate::model::{CmdResult, Command, HistoryEntry, MAX_TEXT_LEN, ObjectRecord, Registration};
use crate::store::Filter;

/// Longest alert text recorded (characters): a sentence and the remote error it quotes.
pub const MAX_ALERT_LEN: usize = 1024;

/// A write from an API, before it becomes a [`Command`].
pub struct IngestBatch {
    pub agent: String,
    pub seq: u64,
    /// The agent's epoch (0: none). Proposed only once the cluster enabled `AGENT_EPOCH_VERSION`.
    pub epoch: u64,
    pub findings: Vec<Finding>,
}

/// The outcome of a write as REST answers it (gRPC has a response message per call).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResult {
    pub revision: u64,
    pub applied: u32,
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default)]
    pub created: u32,
    #[serde(default)]
    pub updated: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default)]
    pub transitioned: bool,
    /// The safety net held the transition: why (and the proposal that records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub proposal: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl From<CmdResult> for WriteResult {
    fn from(r: CmdResult) -> Self {
        WriteResult {
            revision: r.revision,
            applied: r.applied,
            duplicate: r.duplicate,
            created: r.created,
            updated: r.updated,
            state: r.state,
            transitioned: r.transitioned,
            held: r.held,
            proposal: r.proposal,
        }
    }
}

/// An alert's text as recorded: at most [`MAX_ALERT_LEN`] characters, NUL replaced by a space.
pub fn alert_text(message: &str) -> String {
    message.chars().take(MAX_ALERT_LEN).map(|c| if c == '\0' { ' ' } else { c }).collect()
}

/// The view of a stored object: attributes merged with the state machine's own, the consent and action
/// it waits for.
pub fn object_view(r: &ObjectRecord) -> Result<ObjectView, crate::store::StoreError> {
    let mut attributes = r.attributes.clone();
    attributes.extend(r.sm.attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    let ack = r.sm.pending_ack.as_ref();
    let action = r.sm.pending_action.as_ref();
    Ok(ObjectView {
        id: r.id.to_string(),
        kind: r.id.kind().to_string(),
        host: r.id.host().to_string(),
        state: r.sm.state.as_str().into(),
        grade: r.sm.grade.map(|g| g.as_str()).unwrap_or("").into(),
        state_since_ms: r.sm.since_ms,
        labels: r.labels.clone(),
        attributes,
        revision: r.revision,
        evidence: r.evidence.findings()?,
        history_len: r.history_len(),
        history_compacted: r.history_compacted,
        created_ms: r.created_ms,
        waiting_ack: ack.map(|a| a.ack.as_str().to_string()).unwrap_or_default(),
        waiting_role: ack.map(|a| a.role.clone()).unwrap_or_default(),
        ack_deadline_ms: ack.map_or(0, |a| a.deadline_ms),
        ack_escalated: ack.is_some_and(|a| a.escalated),
        pending_action: action.map(|a| a.action.to_string()).unwrap_or_default(),
        action_deadline_ms: action.map_or(0, |a| a.deadline_ms),
    })
}

impl Service {
    /// Findings from an agent batch (`agent` + `seq`, applied once) or from an operator/detector (`agent`
    /// empty). Every finding is validated before anything is proposed.
    pub async fn ingest(&self, batch: IngestBatch) -> Result<CmdResult, ApiError> {
        self.ingest_keyed(batch, None).await
    }

    /// [`Service::ingest`] with the client's idempotency key (`huatuo report`, REST `Idempotency-Key`):
    /// applied once even when the client retries across a failover.
    pub async fn ingest_keyed(&self, batch: IngestBatch, key: Option<String>) -> Result<CmdResult, ApiError> {
        validate::ingest(&batch.agent, batch.seq, &batch.findings)?;
        let findings = batch.findings.into_iter().map(Finding::bounded).collect();
        // Until every master knows epochs (min_command_version >= AGENT_EPOCH_VERSION) an agent batch goes
        // without its epoch: deduplicated by sequence alone, as older binaries apply it.
        let epoch = if batch.agent.is_empty()
            || self.stats.min_command_version() < crate::model::AGENT_EPOCH_VERSION
        {
            0
        } else {
            batch.epoch
        };
        self.submit_keyed(Command::Ingest { agent: batch.agent, seq: batch.seq, findings, epoch }, key).await
    }

    pub async fn register(
        &self,
        agent: String,
        host: String,
        objects: Vec<Registration>,
    ) -> Result<CmdResult, ApiError> {
        self.register_keyed(agent, host, objects, None).await
    }

    /// [`Service::register`] with the client's idempotency key: applied once across retries (a retry gets
    /// the first result's created/updated counts, `duplicate: true`).
    pub async fn register_keyed(
        &self,
        agent: String,
        host: String,
        objects: Vec<Registration>,
        key: Option<String>,
    ) -> Result<CmdResult, ApiError> {
        validate::name("agent", &agent, MAX_TEXT_LEN)?;
        if !host.is_empty() {
            validate::host(&host)?;
        }
        if objects.is_empty() {
            return Err(ApiError::invalid("no objects to register"));
        }
        if objects.len() > validate::MAX_OBJECTS_PER_REGISTER {
            return Err(ApiError::invalid(format!(
                "{} objects in one registration (limit {})",
                objects.len(),
                validate::MAX_OBJECTS_PER_REGISTER
            )));
        }
        for o in &objects {
            validate::map("attributes", &o.attributes)?;
            validate::map("labels", &o.labels)?;
            if !host.is_empty() && o.id.host() != host {
                return Err(ApiError::invalid(format!("{} is not on host {host}", o.id)));
            }
        }
        self.submit_keyed(Command::Register { agent, host, objects }, key).await
    }

    /// An acknowledgement, operator command, ticket update or action result about one object.
    pub async fn object_command(&self, object: ObjectId, input: Input) -> Result<CmdResult, ApiError> {
        self.object_command_keyed(object, input, None).await
    }

    /// [`Service::object_command`] with the client's idempotency key: applied once across retries.
    pub async fn object_command_keyed(
        &self,
        object: ObjectId,
        input: Input,
        key: Option<String>,
    ) -> Result<CmdResult, ApiError> {
        if matches!(input, Input::Finding(_) | Input::Tick | Input::Replacement { .. }) {
            return Err(ApiError::invalid("findings, ticks and replacements have their own calls"));
        }
        self.submit_keyed(Command::Object { object, input }, key).await
    }

    /// Record an alert about an object (a repair ticket that cannot be filed, ...). The message is the
    /// master's own text (it may quote a remote error): cut to [`MAX_ALERT_LEN`] rather than refused.
    pub async fn alert(&self, object: ObjectId, message: &str) -> Result<CmdResult, ApiError> {
        self.submit(Command::Alert { object, message: alert_text(message) }).await
    }

    /// One page of the objects matching `filter`, in id order: `limit` objects at most (0: the default
    /// page, capped at the maximum page, see [`pages::page_size`]), continuing the listing of
    /// `page_token` (empty: a first page). Every page answers the first page's revision; a truncated page
    /// always carries the next page's token. A bad token is INVALID_ARGUMENT (see [`pages::PageToken`]).
    pub async fn list(
        &self,
        filter: &Filter,
        limit: usize,
        page_token: &str,
        stale: bool,
    ) -> Result<ObjectPage, ApiError> {
        let digest = pages::filter_digest(filter);
        let token = pages::request_token(page_token, Listing::Objects, digest)?;
        let mut r = self.read_view(stale).await?;
        if let Some(t) = &token {
            r = self.reader_at_least(r, t.revision).await?;
        }
        let revision = match &token {
            Some(t) => t.revision,
            None => r.revision().map_err(store_err)?,
        };
        let after = token.as_ref().map(|t| t.after.as_str());
        let size = pages::page_size(limit);
        // A listing by state (other than GOOD) reads the objects in that state, not every object.
        let mut served = by_state::list_page(&self.deadlines, &r, filter, after, size).map_err(store_err)?;
        if let Served::Behind(needed) = served {
            // A storm of changes since the index's last warm: catch it up (bounded), then read again.
            if self.deadlines.reach(&self.db, needed, by_state::LISTING_INDEX_WAIT).await {
                r = self.read_view(stale).await?;
                r = self.reader_at_least(r, revision).await?;
                served = by_state::list_page(&self.deadlines, &r, filter, after, size).map_err(store_err)?;
            }
        }
        let (objects, next) = match served {
            Served::Page(page) => {
                self.state_pages_indexed.fetch_add(1, Ordering::Relaxed);
                page
            }
            Served::Behind(_) | Served::No => {
                if by_state::indexed_state(filter).is_some() {
                    self.state_pages_scanned.fetch_add(1, Ordering::Relaxed);
                }
                r.list_page(filter, after, size, validate::MAX_PAGE_SCAN).map_err(store_err)?
            }
        };
        let next_page_token = next
            .map(|after| PageToken { listing: Listing::Objects, revision, digest, after }.encode())
            .unwrap_or_default();
        let objects = objects.iter().map(object_view).collect::<Result<_, _>>().map_err(store_err)?;
        Ok(ObjectPage { objects, revision, next_page_token })
    }

    /// One object with its history, and the revision.
    pub async fn get(
        &self,
        id: &ObjectId,
        stale: bool,
    ) -> Result<(ObjectView, Vec<HistoryEntry>, u64), ApiError> {
        let r = self.read_view(stale).await?;
        let rec = r
            .object(&id.to_string())
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found(format!("no object {id}")))?;
        let history = r.history(&rec).map_err(store_err)?;
        Ok((object_view(&rec).map_err(store_err)?, history, r.revision().map_err(store_err)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_text_is_cut_at_the_limit() {
        assert_eq!(alert_text("ticket\0failed"), "ticket failed");
        let at = "é".repeat(MAX_ALERT_LEN);
        assert_eq!(alert_text(&at), at, "the limit itself is kept whole");
        let over = format!("{at}x");
        assert_eq!(alert_text(&over).chars().count(), MAX_ALERT_LEN);
    }
}
