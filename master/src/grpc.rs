//! The gRPC adapter (`huatuo.api.v1.Master`, proto/proto/api.proto): converts wire messages to the API
//! layer's calls (`crate::api`) and results and [`ApiError`]s back. No validation or logic lives here, and
//! nothing here is shared with the REST adapter (`http.rs`): both sit on `crate::api` alone (CI checks that
//! neither imports the other).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::api::{self, master_server::Master};
use proto::convert;
use proto::error::ApiError;
use tonic::{Request, Response, Status};

use crate::api::catalog::{PushRequest, RolloutRequest};
use crate::api::requests::{self, ObjectCommand};
use crate::api::safety;
use crate::api::{HeartbeatInfo, IngestBatch, Service};
use crate::model::Registration;

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

    /// The handlers without the server around them: an in-process caller (a test) calls the `Master`
    /// trait's methods directly, with no transport or codec.
    pub fn handlers(svc: Arc<Service>) -> GrpcApi {
        GrpcApi { svc }
    }
}

// Every view converts in `proto::convert`; proposals and quota rules through their API views
// (`api::safety::proposal_view`, `quota_view`, `quota_rule`), which know the stored shapes.

/// The client's idempotency key of a write, from the `idempotency-key` request metadata (the API layer
/// validates its length and charset). A key that is not ASCII is refused here.
pub const IDEMPOTENCY_KEY_METADATA: &str = "idempotency-key";

fn idempotency_key(md: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    match md.get(IDEMPOTENCY_KEY_METADATA) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| Status::from(ApiError::invalid("idempotency key must be ASCII"))),
    }
}

type WatchStreamBox = Pin<Box<dyn Stream<Item = Result<api::WatchResponse, Status>> + Send + 'static>>;

/// One heartbeat, answered as the unary call and every beat of a stream answer it. `hand_key`: the answer
/// carries the agent's own datagram key (calls and streams, where TLS hides it and the agent's credentials
/// were checked; never a datagram's answer).
pub(crate) async fn beat(
    svc: &Service,
    req: api::HeartbeatRequest,
    hand_key: bool,
) -> Result<api::HeartbeatResponse, Status> {
    // The request's strings are moved where they go, never copied: a known agent's steady beat
    // allocates nothing between the decoded request and the reply (`tests/catalog_api.rs`,
    // `a_known_agents_steady_beat_allocates_nothing`).
    let api::HeartbeatRequest {
        agent,
        host,
        version,
        started_ms,
        checkers,
        outbox_entries,
        outbox_dropped,
        runs,
        assignment_hash,
        probe_addr,
        net,
        beat_key_id: held_key,
    } = req;
    // Network reports are checked before anything is touched: a bad one refuses the whole beat.
    let reports = crate::net::reports::check_reports(&host, started_ms, &net).map_err(Status::from)?;
    crate::api::validate::probe_addr(&probe_addr).map_err(Status::from)?;
    let info = HeartbeatInfo {
        version,
        started_ms,
        checkers,
        outbox_entries,
        outbox_dropped,
        // The wire and view runs have the same fields: collected in place, in the request's own buffer.
        runs: runs.into_iter().map(convert::run_from_wire).collect(),
        assignment_hash,
    };
    let (revision, held) = svc.heartbeat(&agent, &host, info).await.map_err(Status::from)?;
    let actions =
        svc.actions_for(&host).await.map_err(Status::from)?.into_iter().map(convert::order_to_wire).collect();
    let (hash, assignment) = svc.assignment_for_beat(&host, held).map_err(Status::from)?;
    let included = assignment.is_some();
    let peers = svc.net_beat(&agent, &host, &probe_addr, &reports).map_err(Status::from)?;
    // The agent's own key, unless it holds it already (a steady beat hands out nothing).
    let (beat_key, beat_key_id) = match svc.beat_secret().filter(|s| hand_key && held_key != s.id()) {
        Some(s) => (s.agent_key_bytes(&agent).to_vec(), s.id()),
        None => (Vec::new(), 0),
    };
    Ok(api::HeartbeatResponse {
        beat_key,
        beat_key_id,
        revision,
        actions,
        assignment: assignment.iter().flatten().map(convert::assignment_to_wire).collect(),
        assignment_hash: hash,
        assignment_included: included,
        peers: crate::net::wire::peers_to_wire(peers),
        // Read last, right before the answer leaves: the agent sets it against the middle of its call.
        master_time_ms: crate::api::now_ms(),
    })
}

/// One ingest batch, answered as the unary call and every batch of a stream answer it.
async fn ingest_batch(
    svc: &Service,
    req: api::IngestRequest,
    key: Option<String>,
) -> Result<api::IngestResponse, Status> {
    // Bound the decoding work before the API layer's checks (which repeat this one on the result).
    if req.findings.len() > crate::api::validate::MAX_FINDINGS_PER_BATCH {
        return Err(Status::from(ApiError::invalid(format!(
            "{} findings in one batch (limit {})",
            req.findings.len(),
            crate::api::validate::MAX_FINDINGS_PER_BATCH
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
        .map_err(Status::from)?;
    let res = svc
        .ingest_keyed(IngestBatch { agent: req.agent, seq: req.seq, epoch: req.epoch, findings }, key)
        .await
        .map_err(Status::from)?;
    Ok(api::IngestResponse {
        revision: res.revision,
        applied: res.applied,
        duplicate: res.duplicate,
        commit_index: 0,
    })
}

/// What an agent's long-lived stream carries: requests of one sender, each answered as its unary call
/// answers it.
trait Carried: Send + 'static {
    type Resp: Send + 'static;
    /// The stream's name in messages.
    const WHAT: &'static str;
    /// Who sent it (agent, host): one stream carries one sender.
    fn sender(&self) -> (&str, &str);
    /// What a stream refuses that the unary call takes (nothing, unless said).
    fn refused_on_a_stream(&self) -> Option<Status> {
        None
    }
    /// The answer, as the unary call's.
    fn answer(self, svc: &Service) -> impl std::future::Future<Output = Result<Self::Resp, Status>> + Send;
    /// How long the stream may wait for its next request.
    fn idle(svc: &Service) -> std::time::Duration;
    /// What ends a stream idle that long: an error (a silent agent), or nothing (a clean end: an agent
    /// with no findings to send).
    fn idle_error(idle: std::time::Duration) -> Option<Status>;
}

impl Carried for api::HeartbeatRequest {
    type Resp = api::HeartbeatResponse;
    const WHAT: &'static str = "heartbeat";
    fn sender(&self) -> (&str, &str) {
        (&self.agent, &self.host)
    }
    async fn answer(self, svc: &Service) -> Result<Self::Resp, Status> {
        beat(svc, self, true).await
    }
    fn idle(svc: &Service) -> std::time::Duration {
        svc.heartbeat_stream_idle()
    }
    fn idle_error(idle: std::time::Duration) -> Option<Status> {
        Some(Status::from(ApiError::unavailable(format!("no heartbeat on this stream for {idle:?}: closed"))))
    }
}

impl Carried for api::IngestRequest {
    type Resp = api::IngestResponse;
    const WHAT: &'static str = "ingest";
    fn sender(&self) -> (&str, &str) {
        (&self.agent, "")
    }
    /// A batch without an agent is not deduplicated, so one resent as a call after the stream lost its
    /// answer could be applied twice: such a writer sends `Ingest` calls with an idempotency key.
    fn refused_on_a_stream(&self) -> Option<Status> {
        self.agent.is_empty().then(|| {
            Status::from(ApiError::invalid(
                "an ingest stream carries an agent's batches, deduplicated by (agent, seq): this batch names no \
                 agent; send it as an Ingest call with an idempotency key",
            ))
        })
    }
    async fn answer(self, svc: &Service) -> Result<Self::Resp, Status> {
        // No idempotency key on a stream: an agent's batches are deduplicated by (agent, seq).
        ingest_batch(svc, self, None).await
    }
    fn idle(svc: &Service) -> std::time::Duration {
        svc.ingest_stream_idle()
    }
    fn idle_error(_: std::time::Duration) -> Option<Status> {
        None
    }
}

type StreamBox<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// One agent's stream of heartbeats or ingest batches: each request read is answered by its call's
/// function, one at a time, in order.
struct AgentStream<R: Carried> {
    svc: Arc<Service>,
    inbound: tonic::Streaming<R>,
    /// The (agent, host) of the first request: the only sender this stream carries.
    sender: Option<(String, String)>,
    opened: std::time::Instant,
    /// The last item was an error, or the stream reached its age: end.
    done: bool,
    _slot: crate::api::heartbeats::StreamSlot,
}

impl<R: Carried> AgentStream<R> {
    fn start(
        svc: &Arc<Service>,
        req: Request<tonic::Streaming<R>>,
        slot: crate::api::heartbeats::StreamSlot,
    ) -> StreamBox<R::Resp> {
        let state = AgentStream {
            svc: Arc::clone(svc),
            inbound: req.into_inner(),
            sender: None,
            opened: std::time::Instant::now(),
            done: false,
            _slot: slot,
        };
        Box::pin(futures::stream::unfold(state, AgentStream::next))
    }

    /// The answer to the next request, or the end: the agent closed its side (nothing to answer), its
    /// message did not decode or was over the size limit (tonic's error), it sent nothing for its idle
    /// limit (heartbeats: `agent_silent_after`, UNAVAILABLE; ingest: `ingest_stream_idle`, a clean end), a
    /// request was refused (its error, then the end: NOT_LEADER when this node no longer leads; a request
    /// the stream itself refuses, `Carried::refused_on_a_stream`, the same way), or the request before
    /// reached `heartbeat_stream_max_age` (a clean end after its answer).
    async fn next(mut self) -> Option<(Result<R::Resp, Status>, Self)> {
        if self.done {
            return None;
        }
        let idle = R::idle(&self.svc);
        let req = match tokio::time::timeout(idle, self.inbound.message()).await {
            Err(_) => {
                self.done = true;
                return R::idle_error(idle).map(|e| (Err(e), self));
            }
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None)) => return None,
            // A message that does not decode (or is over the size limit) is answered with tonic's
            // error, then the end; a client that went away gets nothing either way.
            Ok(Err(status)) => {
                self.done = true;
                return Some((Err(status), self));
            }
        };
        let refused = req.refused_on_a_stream();
        let res = match &self.sender {
            _ if let Some(e) = refused => Err(e),
            Some((agent, host)) if (agent.as_str(), host.as_str()) != req.sender() => {
                let (a, h) = req.sender();
                Err(Status::from(ApiError::invalid(format!(
                    "a {} stream carries one agent: opened by {agent} on {host:?}, got {a} on {h:?}",
                    R::WHAT
                ))))
            }
            _ => {
                let first = self.sender.is_none().then(|| {
                    let (a, h) = req.sender();
                    (a.to_string(), h.to_string())
                });
                // Boxed: the stream waits for its next request far longer than it answers one, and an
                // unboxed answer would size that wait (held per agent) by the answer's own state.
                let res = Box::pin(req.answer(&self.svc)).await;
                if res.is_ok()
                    && let Some(a) = first
                {
                    self.sender = Some(a);
                }
                res
            }
        };
        self.done = res.is_err() || self.opened.elapsed() >= self.svc.heartbeat_stream_max_age();
        Some((res, self))
    }
}

#[tonic::async_trait]
impl Master for GrpcApi {
    async fn ingest(
        &self,
        req: Request<api::IngestRequest>,
    ) -> Result<Response<api::IngestResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        ingest_batch(&self.svc, req.into_inner(), key).await.map(Response::new)
    }

    type IngestStreamStream = StreamBox<api::IngestResponse>;

    async fn ingest_stream(
        &self,
        req: Request<tonic::Streaming<api::IngestRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let slot = self.svc.open_ingest_stream().map_err(Status::from)?;
        Ok(Response::new(AgentStream::start(&self.svc, req, slot)))
    }

    async fn heartbeat(
        &self,
        req: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        beat(&self.svc, req.into_inner(), true).await.map(Response::new)
    }

    type HeartbeatStreamStream = StreamBox<api::HeartbeatResponse>;

    async fn heartbeat_stream(
        &self,
        req: Request<tonic::Streaming<api::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStreamStream>, Status> {
        let slot = self.svc.open_heartbeat_stream().map_err(Status::from)?;
        Ok(Response::new(AgentStream::start(&self.svc, req, slot)))
    }

    async fn push_artifact(
        &self,
        req: Request<api::PushArtifactRequest>,
    ) -> Result<Response<api::PushArtifactResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let push = PushRequest {
            name: req.name,
            version: req.version,
            kind: req.r#type,
            content: req.content,
            description: req.description,
            spec: convert::spec_from_wire(req.spec),
            by: req.by,
            sha256: req.sha256,
        };
        let res = self.svc.push_artifact(push, key).await.map_err(Status::from)?;
        Ok(Response::new(api::PushArtifactResponse {
            artifact: Some(convert::artifact_to_wire(&res.artifact)),
            revision: res.revision,
            duplicate: res.duplicate,
        }))
    }

    async fn list_catalog(
        &self,
        req: Request<api::ListCatalogRequest>,
    ) -> Result<Response<api::ListCatalogResponse>, Status> {
        let l = self.svc.list_catalog(&req.into_inner().name).await.map_err(Status::from)?;
        Ok(Response::new(convert::catalog_to_wire(&l)))
    }

    async fn fetch_artifact(
        &self,
        req: Request<api::FetchArtifactRequest>,
    ) -> Result<Response<api::FetchArtifactResponse>, Status> {
        let req = req.into_inner();
        let c = self
            .svc
            .fetch_artifact(&req.host, &req.name, &req.version, &req.sha256, req.offset, req.max_bytes)
            .map_err(Status::from)?;
        Ok(Response::new(api::FetchArtifactResponse {
            data: c.data,
            offset: c.offset,
            size: c.size,
            sha256: c.sha256,
        }))
    }

    async fn rollout(
        &self,
        req: Request<api::RolloutRequest>,
    ) -> Result<Response<api::RolloutResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let r = RolloutRequest {
            action: req.action,
            name: req.name,
            version: req.version,
            hosts: req.hosts,
            percent: req.percent,
            labels: req.labels,
            shadow: req.shadow,
            by: req.by,
            reason: req.reason,
        };
        let (rollout, revision) = self.svc.rollout(r, key).await.map_err(Status::from)?;
        Ok(Response::new(api::RolloutResponse {
            rollout: Some(convert::rollout_to_wire(&rollout)),
            revision,
        }))
    }

    async fn summary(
        &self,
        req: Request<api::SummaryRequest>,
    ) -> Result<Response<api::SummaryResponse>, Status> {
        let s = self.svc.summary(req.into_inner().stale).await.map_err(Status::from)?;
        Ok(Response::new(convert::summary_to_wire(&s)))
    }

    async fn rollout_status(
        &self,
        req: Request<api::RolloutStatusRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        let s = self.svc.rollout_status(&req.into_inner().name).await.map_err(Status::from)?;
        Ok(Response::new(convert::rollout_status_to_wire(&s)))
    }

    async fn net_suspects(
        &self,
        req: Request<api::NetSuspectsRequest>,
    ) -> Result<Response<api::NetSuspectsResponse>, Status> {
        let last = self.svc.net_last().map_err(Status::from)?;
        let out =
            crate::net::wire::suspects(last.as_deref(), req.into_inner().limit).map_err(Status::from)?;
        Ok(Response::new(out))
    }

    async fn net_matrix(
        &self,
        req: Request<api::NetMatrixRequest>,
    ) -> Result<Response<api::NetMatrixResponse>, Status> {
        let last = self.svc.net_last().map_err(Status::from)?;
        let out = crate::net::wire::matrix(last.as_deref(), &req.into_inner().rack).map_err(Status::from)?;
        Ok(Response::new(out))
    }

    async fn net_path(
        &self,
        req: Request<api::NetPathRequest>,
    ) -> Result<Response<api::NetPathResponse>, Status> {
        let req = req.into_inner();
        let (routes, last) = self.svc.net_routes(&req.a, &req.b).await.map_err(Status::from)?;
        Ok(Response::new(crate::net::wire::path(routes, last.as_deref(), &req.a, &req.b)))
    }

    async fn net_topology(
        &self,
        _req: Request<api::NetTopologyRequest>,
    ) -> Result<Response<api::NetTopologyResponse>, Status> {
        let v = self.svc.topology_view().await.map_err(Status::from)?;
        Ok(Response::new(topology_to_wire(v)))
    }

    async fn set_net_topology(
        &self,
        req: Request<api::SetNetTopologyRequest>,
    ) -> Result<Response<api::NetTopologyResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let r = req.into_inner();
        let req = crate::api::topology::SetRequest {
            content: r.content,
            name: r.name,
            version: r.version,
            clear: r.clear,
            by: r.by,
            reason: r.reason,
        };
        let v = self.svc.set_topology(req, key).await.map_err(Status::from)?;
        Ok(Response::new(topology_to_wire(v)))
    }

    async fn register(
        &self,
        req: Request<api::RegisterRequest>,
    ) -> Result<Response<api::RegisterResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
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
            .map_err(Status::from)?;
        let res = self.svc.register_keyed(req.agent, req.host, objects, key).await.map_err(Status::from)?;
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
        // auth: what a command needs depends on its kind (the auth layer put the caller here).
        crate::auth::check_command(req.extensions().get::<crate::auth::Caller>(), &req.get_ref().kind)
            .map_err(Status::from)?;
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let object = convert::object_id(&req.object).map_err(Status::from)?;
        let input = requests::object_input(&ObjectCommand {
            kind: req.kind,
            name: req.name,
            value: req.value,
            by: req.by,
            reason: req.reason,
            success: req.success,
        })
        .map_err(Status::from)?;
        let res = self.svc.object_command_keyed(object, input, key).await.map_err(Status::from)?;
        Ok(Response::new(api::CommandResponse {
            revision: res.revision,
            state: res.state,
            transitioned: res.transitioned,
            held: res.held.unwrap_or_default(),
            proposal: res.proposal,
        }))
    }

    async fn list_objects(
        &self,
        req: Request<api::ListObjectsRequest>,
    ) -> Result<Response<api::ListObjectsResponse>, Status> {
        let req = req.into_inner();
        let filter = requests::filter(&req.kind, &req.state, &req.host, &req.labels).map_err(Status::from)?;
        let page = self
            .svc
            .list(&filter, req.limit as usize, &req.page_token, req.stale)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(api::ListObjectsResponse {
            objects: page.objects.iter().map(convert::object_to_wire).collect(),
            revision: page.revision,
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_object(
        &self,
        req: Request<api::GetObjectRequest>,
    ) -> Result<Response<api::GetObjectResponse>, Status> {
        let req = req.into_inner();
        let id = convert::object_id(&req.id).map_err(Status::from)?;
        let (rec, history, revision) = self.svc.get(&id, req.stale).await.map_err(Status::from)?;
        Ok(Response::new(api::GetObjectResponse {
            object: Some(convert::object_to_wire(&rec)),
            history: history.iter().map(convert::history_to_wire).collect(),
            revision,
        }))
    }

    type WatchStream = WatchStreamBox;

    async fn watch(&self, req: Request<api::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let filter = requests::filter(&req.kind, "", &req.host, &[]).map_err(Status::from)?;
        let rx = self.svc.watch(req.from_revision, filter).map_err(Status::from)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = futures::StreamExt::map(stream, |item| match item {
            Ok((events, revision)) => Ok(api::WatchResponse {
                events: events.into_iter().map(convert::event_to_wire).collect(),
                revision,
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cluster_info(
        &self,
        _req: Request<api::ClusterInfoRequest>,
    ) -> Result<Response<api::ClusterInfoResponse>, Status> {
        let info = self.svc.cluster_status().map_err(Status::from)?;
        Ok(Response::new(convert::cluster_to_wire(info)))
    }

    async fn get_safety(
        &self,
        _req: Request<api::GetSafetyRequest>,
    ) -> Result<Response<api::GetSafetyResponse>, Status> {
        Ok(Response::new(self.svc.safety(false).await.map_err(Status::from)?.to_wire()))
    }

    async fn set_level(
        &self,
        req: Request<api::SetLevelRequest>,
    ) -> Result<Response<api::ScopeResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let level = requests::level(&req.level).map_err(Status::from)?;
        let (scope, revision) = self
            .svc
            .set_level_keyed(&req.scope, level, &req.by, &req.reason, key)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(api::ScopeResponse { scope: Some(convert::scope_to_wire(&scope)), revision }))
    }

    async fn release(
        &self,
        req: Request<api::ReleaseRequest>,
    ) -> Result<Response<api::ScopeResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let (scope, revision) =
            self.svc.release_keyed(&req.scope, &req.by, &req.reason, key).await.map_err(Status::from)?;
        Ok(Response::new(api::ScopeResponse { scope: Some(convert::scope_to_wire(&scope)), revision }))
    }

    async fn list_proposals(
        &self,
        req: Request<api::ListProposalsRequest>,
    ) -> Result<Response<api::ListProposalsResponse>, Status> {
        let req = req.into_inner();
        let status = requests::proposal_status(&req.status).map_err(Status::from)?;
        let filter = requests::proposal_filter(&req.scope, &req.kind, &req.host, "").map_err(Status::from)?;
        let (list, revision) =
            self.svc.proposals(status, &filter, req.limit as usize, false).await.map_err(Status::from)?;
        Ok(Response::new(api::ListProposalsResponse {
            proposals: list.iter().map(|p| convert::proposal_to_wire(&safety::proposal_view(p))).collect(),
            revision,
        }))
    }

    async fn decide_proposals(
        &self,
        req: Request<api::DecideProposalsRequest>,
    ) -> Result<Response<api::DecideProposalsResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let approve = requests::decision(&req.decision).map_err(Status::from)?;
        let filter = requests::proposal_filter(&req.scope, &req.kind, &req.host, &req.checker)
            .map_err(Status::from)?;
        let res = self
            .svc
            .decide_keyed(req.ids, filter, approve, &req.by, &req.reason, key)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(api::DecideProposalsResponse {
            decided: res.decided,
            failed: res.failed.into_iter().map(|(id, error)| api::ProposalFailure { id, error }).collect(),
            revision: res.revision,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<api::ListAgentsRequest>,
    ) -> Result<Response<api::ListAgentsResponse>, Status> {
        let req = req.into_inner();
        let page = self.svc.agent_list(req.limit as usize, &req.page_token).await.map_err(Status::from)?;
        Ok(Response::new(api::ListAgentsResponse {
            agents: page.agents.into_iter().map(convert::agent_to_wire).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn set_min_command_version(
        &self,
        req: Request<api::SetMinCommandVersionRequest>,
    ) -> Result<Response<api::SetMinCommandVersionResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let (revision, info) = self
            .svc
            .set_min_command_version_keyed(req.version, &req.by, &req.reason, key)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(api::SetMinCommandVersionResponse {
            revision,
            cluster: Some(convert::cluster_to_wire(info)),
        }))
    }

    async fn set_quotas(
        &self,
        req: Request<api::SetQuotasRequest>,
    ) -> Result<Response<api::GetSafetyResponse>, Status> {
        let key = idempotency_key(req.metadata())?;
        let req = req.into_inner();
        let view = if req.config_json.is_empty() {
            let quotas = req
                .quotas
                .into_iter()
                .map(|q| safety::quota_rule(convert::quota_from_wire(q)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Status::from)?;
            self.svc
                .set_safety_keyed(Some(quotas), None, &req.by, &req.reason, key)
                .await
                .map_err(Status::from)?
        } else {
            let cfg: crate::safety::SafetyConfig = serde_json::from_str(&req.config_json)
                .map_err(|e| Status::from(ApiError::invalid(format!("config_json: {e}"))))?;
            self.svc
                .set_safety_keyed(None, Some(cfg), &req.by, &req.reason, key)
                .await
                .map_err(Status::from)?
        };
        Ok(Response::new(view.to_wire()))
    }
}

fn topology_to_wire(v: crate::api::topology::TopologyView) -> api::NetTopologyResponse {
    api::NetTopologyResponse {
        source: v.source,
        name: v.name,
        version: v.version,
        sha256: v.sha256,
        size: v.size,
        set_by: v.set_by,
        set_ms: v.set_ms,
        path: v.path,
        hosts: v.hosts,
        switches: v.switches,
        links: v.links,
        error: v.error,
        file_path: v.file_path,
        file_sha256: v.file_sha256,
        revision: v.revision,
        duplicate: v.duplicate,
    }
}
