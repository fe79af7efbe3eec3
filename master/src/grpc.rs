//! The gRPC front end (`huatuo.api.v1.Master`, proto/proto/api.proto): converts wire messages to domain
//! requests, calls the [`Service`], and converts results and [`ApiError`]s back. No logic lives here.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::api::{self, master_server::Master};
use proto::convert;
use proto::error::ApiError;
use state_machines::{AckKind, OperatorCommand, TicketUpdate};
use tonic::{Request, Response, Status};

use crate::machine::{self, Input};
use crate::model::{Event, HistoryEntry, ObjectRecord, Registration};
use crate::service::{IngestBatch, Service};
use crate::store::Filter;

/// Largest gRPC message accepted or sent: an ingest batch of MAX_FINDINGS_PER_BATCH bounded findings
/// fits; the raft layer's command limit still applies after decoding.
pub const MAX_GRPC_MESSAGE: usize = 16 << 20;

pub struct GrpcApi {
    svc: Arc<Service>,
}

impl GrpcApi {
    pub fn new(svc: Arc<Service>) -> api::master_server::MasterServer<GrpcApi> {
        api::master_server::MasterServer::new(GrpcApi { svc })
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE)
    }
}

pub fn object_to_wire(r: &ObjectRecord) -> api::Object {
    let mut attributes: BTreeMap<String, String> = r.attributes.clone();
    attributes.extend(r.sm.attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    api::Object {
        id: r.id.to_string(),
        kind: r.id.kind().to_string(),
        host: r.id.host().to_string(),
        state: machine::state_name(&r.sm).to_string(),
        grade: machine::grade_name(&r.sm).to_string(),
        state_since_ms: r.sm.since_ms,
        labels: r.labels.clone().into_iter().collect(),
        attributes: attributes.into_iter().collect(),
        revision: r.revision,
        evidence: r.evidence.values().map(convert::finding_to_wire).collect(),
        history_len: r.history_len(),
        history_compacted: r.history_compacted,
        created_ms: r.created_ms,
    }
}

pub fn history_to_wire(h: &HistoryEntry) -> api::HistoryEntry {
    api::HistoryEntry {
        revision: h.revision,
        time_ms: h.time_ms,
        what: h.what.clone(),
        from_state: h.from_state.clone(),
        to_state: h.to_state.clone(),
        cause: h.cause.clone(),
        detail: h.detail.clone(),
    }
}

pub fn event_to_wire(e: Event) -> api::Event {
    api::Event {
        revision: e.revision,
        time_ms: e.time_ms,
        object: e.object,
        what: e.what,
        state: e.state,
        grade: e.grade,
        from_state: e.from_state,
        detail: e.detail,
    }
}

pub fn event_from_wire(e: api::Event) -> Event {
    Event {
        revision: e.revision,
        time_ms: e.time_ms,
        object: e.object,
        what: e.what,
        state: e.state,
        grade: e.grade,
        from_state: e.from_state,
        detail: e.detail,
    }
}

/// Build a listing/watch filter from wire strings (empty = any).
pub fn filter_from_wire(kind: &str, state: &str, host: &str, labels: &[String]) -> Result<Filter, ApiError> {
    let kind = if kind.is_empty() {
        None
    } else {
        Some(kind.parse::<state_machines::Kind>().map_err(|e| ApiError::invalid(e.to_string()))?)
    };
    let state = if state.is_empty() {
        None
    } else {
        Some(
            state
                .parse::<state_machines::State>()
                .map_err(|e| ApiError::invalid(e.to_string()))?
                .as_str()
                .to_string(),
        )
    };
    let host = if host.is_empty() {
        None
    } else {
        state_machines::id::validate_host(host).map_err(|e| ApiError::invalid(e.to_string()))?;
        Some(host.to_string())
    };
    let labels = labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ApiError::invalid(format!("label selector {l:?} is not key=value")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Filter { kind, state, host, labels })
}

/// The state machine input for an object command from the wire (`kind`: ack, force, approve, ticket, result).
pub fn command_input(c: &api::CommandRequest) -> Result<Input, ApiError> {
    let need = |what: &str, v: &str| {
        if v.is_empty() { Err(ApiError::invalid(format!("{} needs {what}", c.kind))) } else { Ok(()) }
    };
    let by = || if c.by.is_empty() { "operator".to_string() } else { c.by.clone() };
    Ok(match c.kind.as_str() {
        "ack" => {
            let ack = match c.name.as_str() {
                "drained" => AckKind::Drained,
                "data-evacuated" | "evacuated" => AckKind::DataEvacuated,
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown ack {other:?} (expected drained or data-evacuated)"
                    )));
                }
            };
            need("a subscriber role in `by`", &c.by)?;
            Input::Ack { role: c.by.clone(), ack }
        }
        "force" => {
            let to =
                c.value.parse::<state_machines::State>().map_err(|e| ApiError::invalid(e.to_string()))?;
            need("a reason", &c.reason)?;
            Input::Operator {
                operator: by(),
                command: OperatorCommand::Force { to, reason: c.reason.clone() },
            }
        }
        "approve" => {
            need("a reason", &c.reason)?;
            Input::Operator { operator: by(), command: OperatorCommand::Approve { reason: c.reason.clone() } }
        }
        "ticket" => {
            need("a ticket id in `name`", &c.name)?;
            let update = match c.value.as_str() {
                "filed" => TicketUpdate::Filed,
                "accepted" => TicketUpdate::Accepted,
                "part-replaced" => TicketUpdate::PartReplaced,
                "closed" => TicketUpdate::Closed,
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown ticket update {other:?} (expected filed, accepted, part-replaced or closed)"
                    )));
                }
            };
            Input::Ticket { ticket: c.name.clone(), update }
        }
        "result" | "action_result" => {
            let action = match c.name.as_str() {
                "provision" => state_machines::Action::Provision,
                "test" => state_machines::Action::Test,
                fix => {
                    let fix = match fix.strip_prefix("fix:").unwrap_or(fix) {
                        "restart-service" => state_machines::FixAction::RestartService,
                        "clean-fs" => state_machines::FixAction::CleanFs,
                        "reboot" => state_machines::FixAction::Reboot,
                        other => {
                            return Err(ApiError::invalid(format!(
                                "unknown action {other:?} (expected provision, test, fix:restart-service, \
                                 fix:clean-fs or fix:reboot)"
                            )));
                        }
                    };
                    state_machines::Action::Fix { fix }
                }
            };
            Input::ActionResult { action, success: c.success, detail: c.reason.clone() }
        }
        other => {
            return Err(ApiError::invalid(format!(
                "unknown command kind {other:?} (expected ack, force, approve, ticket or result)"
            )));
        }
    })
}

fn err(e: ApiError) -> Status {
    e.into()
}

type WatchStreamBox = Pin<Box<dyn Stream<Item = Result<api::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Master for GrpcApi {
    async fn ingest(
        &self,
        req: Request<api::IngestRequest>,
    ) -> Result<Response<api::IngestResponse>, Status> {
        let req = req.into_inner();
        if req.findings.len() > crate::model::MAX_FINDINGS_PER_BATCH {
            return Err(err(ApiError::invalid(format!(
                "{} findings in one batch (limit {})",
                req.findings.len(),
                crate::model::MAX_FINDINGS_PER_BATCH
            ))));
        }
        let findings = req
            .findings
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                convert::finding_from_wire(f)
                    .map_err(|e| ApiError::new(e.code, format!("finding {i}: {}", e.message)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let res =
            self.svc.ingest(IngestBatch { agent: req.agent, seq: req.seq, findings }).await.map_err(err)?;
        Ok(Response::new(api::IngestResponse {
            revision: res.revision,
            applied: res.applied,
            duplicate: res.duplicate,
            commit_index: 0,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let info = crate::service::HeartbeatInfo {
            version: req.version,
            started_ms: req.started_ms,
            checkers: req.checkers.into_iter().collect(),
            outbox_entries: req.outbox_entries,
            outbox_dropped: req.outbox_dropped,
        };
        let revision = self.svc.heartbeat(req.agent, req.host, info).await.map_err(err)?;
        Ok(Response::new(api::HeartbeatResponse { revision }))
    }

    async fn register(
        &self,
        req: Request<api::RegisterRequest>,
    ) -> Result<Response<api::RegisterResponse>, Status> {
        let req = req.into_inner();
        let objects = req
            .objects
            .into_iter()
            .map(|o| {
                Ok(Registration {
                    id: convert::object_id(&o.id)?,
                    attributes: o.attributes.into_iter().collect(),
                    labels: o.labels.into_iter().collect(),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
            .map_err(err)?;
        let res = self.svc.register(req.agent, req.host, objects).await.map_err(err)?;
        Ok(Response::new(api::RegisterResponse {
            revision: res.revision,
            created: res.created,
            updated: res.updated,
        }))
    }

    async fn command(
        &self,
        req: Request<api::CommandRequest>,
    ) -> Result<Response<api::CommandResponse>, Status> {
        let req = req.into_inner();
        let object = convert::object_id(&req.object).map_err(err)?;
        let input = command_input(&req).map_err(err)?;
        let res = self.svc.object_command(object, input).await.map_err(err)?;
        Ok(Response::new(api::CommandResponse {
            revision: res.revision,
            state: res.state,
            transitioned: res.transitioned,
        }))
    }

    async fn list_objects(
        &self,
        req: Request<api::ListObjectsRequest>,
    ) -> Result<Response<api::ListObjectsResponse>, Status> {
        let req = req.into_inner();
        let filter = filter_from_wire(&req.kind, &req.state, &req.host, &req.labels).map_err(err)?;
        let (objects, revision) = self.svc.list(&filter, req.limit as usize, req.stale).await.map_err(err)?;
        Ok(Response::new(api::ListObjectsResponse {
            objects: objects.iter().map(object_to_wire).collect(),
            revision,
        }))
    }

    async fn get_object(
        &self,
        req: Request<api::GetObjectRequest>,
    ) -> Result<Response<api::GetObjectResponse>, Status> {
        let req = req.into_inner();
        let id = convert::object_id(&req.id).map_err(err)?;
        let (rec, history, revision) = self.svc.get(&id, req.stale).await.map_err(err)?;
        Ok(Response::new(api::GetObjectResponse {
            object: Some(object_to_wire(&rec)),
            history: history.iter().map(history_to_wire).collect(),
            revision,
        }))
    }

    type WatchStream = WatchStreamBox;

    async fn watch(&self, req: Request<api::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let filter = filter_from_wire(&req.kind, "", &req.host, &[]).map_err(err)?;
        let rx = self.svc.watch(req.from_revision, filter);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = futures::StreamExt::map(stream, |item| match item {
            Ok((events, revision)) => {
                Ok(api::WatchResponse { events: events.into_iter().map(event_to_wire).collect(), revision })
            }
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cluster_info(
        &self,
        _req: Request<api::ClusterInfoRequest>,
    ) -> Result<Response<api::ClusterInfoResponse>, Status> {
        let i = self.svc.cluster_info().map_err(err)?;
        Ok(Response::new(api::ClusterInfoResponse {
            id: i.id,
            leader_id: i.leader_id,
            term: i.term,
            role: i.role,
            commit_index: i.commit_index,
            applied_index: i.applied_index,
            revision: i.revision,
            level: i.level,
            members: i
                .members
                .into_iter()
                .map(|m| api::Member {
                    id: m.id,
                    peer_addr: m.peer_addr,
                    grpc_addr: m.grpc_addr,
                    http_addr: m.http_addr,
                })
                .collect(),
            leader_grpc: i.leader_grpc,
            agents_alive: i.agents_alive,
            objects: i.objects,
        }))
    }
}
