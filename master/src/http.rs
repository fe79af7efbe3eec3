//! The REST adapter on the master's HTTP port: REST/JSON under `/api/v1` (the same operations as gRPC, for
//! people and scripts), `/healthz`, `/metrics` in Prometheus text format, the portal (`http/portal.rs`),
//! and the token check for all of it ([`rest_auth`], over `auth.rs`'s table). Handlers only convert JSON
//! and query strings to the API layer's calls (`crate::api`) and back; nothing is shared with the gRPC
//! adapter (CI checks that neither imports the other). Errors are JSON `{"code", "message"[, "leader"]}`
//! with the HTTP status of the code; with NOT_LEADER, `leader` is the leader's HTTP address.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::error::{ApiError, Code};
use proto::view::ObjectView;
use serde::{Deserialize, Serialize};
use state_machines::{Finding, ObjectId};

use crate::api::requests::{self, ObjectCommand};
use crate::api::{HeartbeatInfo, IngestBatch, Service, WriteResult};
use crate::auth::{Authenticator, Caller};
use crate::model::{ChangeEvent, HistoryEntry, Registration};

/// Largest request body accepted (an ingest batch at its finding limit fits).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Default and longest duration of one watch long-poll; the client reconnects from its last revision.
pub const WATCH_DEFAULT: Duration = Duration::from_secs(30);
pub const WATCH_MAX: Duration = Duration::from_secs(300);

type Svc = Arc<Service>;

mod archive_routes;
mod catalog_routes;
mod chart_routes;
mod net_routes;
pub mod portal;
mod safety_routes;

pub fn router(svc: Svc) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/objects", get(list))
        .route("/api/v1/objects/{*id}", get(get_object))
        .route("/api/v1/findings", post(ingest))
        .route("/api/v1/register", post(register))
        .route("/api/v1/heartbeat", post(heartbeat))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/commands", post(command))
        .route("/api/v1/watch", get(watch))
        .route("/api/v1/whoami", get(whoami))
        .merge(safety_routes::routes())
        .merge(archive_routes::routes())
        .merge(catalog_routes::routes())
        .merge(chart_routes::routes())
        .merge(net_routes::routes())
        .merge(portal::router())
        .fallback(|| async { HttpError(ApiError::not_found("no such route")) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        // As on the gRPC ports: over HTTPS with h2 (agents' REST heartbeats, the portal) hyper's own `date`
        // would grow a chain of stale dates in each connection's HPACK table.
        .layer(crate::grpc_date::DateLayer)
        .with_state(svc)
}

/// An [`ApiError`] as an HTTP response.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

/// Swap the leader's gRPC address for its HTTP address (REST clients redirect over HTTP).
fn rest_error(svc: &Service, mut e: ApiError) -> HttpError {
    if e.code == Code::NotLeader {
        e.leader = e.leader.as_deref().and_then(|grpc| svc.http_addr_for(grpc));
    }
    HttpError(e)
}

/// The token check of the HTTP port (`axum::middleware::from_fn_with_state`): what a route needs comes
/// from `auth::rest_need`; the caller found goes into the request extensions for the handlers.
pub async fn rest_auth(State(auth): State<Arc<Authenticator>>, mut req: Request, next: Next) -> Response {
    let need = crate::auth::rest_need(req.method(), req.uri().path());
    let what = format!("{} {}", req.method(), req.uri().path());
    let header = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes());
    match auth.authorize(need, header, &what) {
        Ok(caller) => {
            if let Some(c) = caller {
                req.extensions_mut().insert(c);
            }
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(call = %what, code = %e.code, "REST call refused");
            HttpError(e).into_response()
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| HttpError(ApiError::invalid(format!("bad JSON body: {e}"))))
}

async fn healthz(State(svc): State<Svc>) -> Response {
    let st = svc.raft().status();
    if st.role == crate::raft::Role::Stopped {
        let msg = st.last_error.unwrap_or_else(|| "stopped".into());
        return HttpError(ApiError::unavailable(msg)).into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics(State(svc): State<Svc>) -> Response {
    // Every member's NOSPACE alarm as this node last heard it (nothing is asked on the scrape's time).
    let members = svc.member_nospace();
    match crate::metrics::render(&svc, &members) {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Err(e) => HttpError(e).into_response(),
    }
}

/// `GET /api/v1/whoami`: the caller's token name and roles (so the portal can say what a role may do before
/// the master refuses it). Without an auth layer (`--insecure`) every call is allowed: `secured` is false.
async fn whoami(caller: Option<axum::Extension<Caller>>) -> Response {
    match caller {
        Some(axum::Extension(c)) => {
            let roles: Vec<&str> = c.roles.iter().map(|r| r.as_str()).collect();
            Json(serde_json::json!({ "name": c.name, "roles": roles, "secured": true })).into_response()
        }
        None => Json(serde_json::json!({ "name": "", "roles": [], "secured": false })).into_response(),
    }
}

async fn cluster(State(svc): State<Svc>) -> Result<Response, HttpError> {
    Ok(Json(svc.cluster_status()?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    host: String,
    /// Comma-separated key=value label selectors.
    #[serde(default)]
    label: String,
    #[serde(default)]
    stale: bool,
    /// Page size (0: the server's default page; more than the maximum page is served as the maximum).
    #[serde(default)]
    limit: usize,
    /// The `next_page_token` of the previous page (same filter).
    #[serde(default)]
    page_token: String,
}

/// `GET /api/v1/objects`: one page; `revision` is the listing's (the first page's) revision and
/// `next_page_token` is non-empty when more objects may match (see the gRPC `ListObjectsResponse`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListView {
    pub objects: Vec<ObjectView>,
    pub revision: u64,
    #[serde(default)]
    pub next_page_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectDetail {
    pub object: ObjectView,
    pub history: Vec<HistoryEntry>,
    pub revision: u64,
}

fn parse_query<T: serde::de::DeserializeOwned + Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, HttpError> {
    q.map(|Query(q)| q).map_err(|e| HttpError(ApiError::invalid(format!("bad query: {e}"))))
}

async fn list(
    State(svc): State<Svc>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let labels: Vec<String> = q.label.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let filter = requests::filter(&q.kind, &q.state, &q.host, &labels)?;
    let page = svc.list(&filter, q.limit, &q.page_token, q.stale).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(ListView {
        objects: page.objects,
        revision: page.revision,
        next_page_token: page.next_page_token,
    })
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaleQuery {
    #[serde(default)]
    stale: bool,
}

/// `GET /api/v1/summary[?stale=true]`: the fleet's counts from the replicated counters.
async fn summary(
    State(svc): State<Svc>,
    q: Result<Query<StaleQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let s = svc.summary(q.stale).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(s).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectQuery {
    #[serde(default)]
    stale: bool,
    /// `.../series` only: days of archive (default 30).
    #[serde(default)]
    days: Option<u64>,
}

async fn get_object(
    State(svc): State<Svc>,
    Path(id): Path<String>,
    q: Result<Query<ObjectQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    if let Some(obj) = id.strip_suffix("/series") {
        let obj: ObjectId = proto::convert::object_id(obj)?;
        return archive_routes::series(svc, obj, q.days).await;
    }
    if q.days.is_some() {
        return Err(ApiError::invalid("days applies to /api/v1/objects/{id}/series only").into());
    }
    let id: ObjectId = proto::convert::object_id(&id)?;
    let (object, history, revision) = svc.get(&id, q.stale).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(ObjectDetail { object, history, revision }).into_response())
}

/// `POST /api/v1/findings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBody {
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub seq: u64,
    /// The agent's epoch (see the gRPC `IngestRequest.epoch`); 0 or absent: none.
    #[serde(default)]
    pub epoch: u64,
    pub findings: Vec<Finding>,
    /// The client's idempotency key (the `Idempotency-Key` header does the same; both must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The REST header carrying a write's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The idempotency key of a REST write: the header or the body field (refused when they differ).
fn idempotency_key(
    headers: &axum::http::HeaderMap,
    body: Option<String>,
) -> Result<Option<String>, HttpError> {
    let header = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| HttpError::from(ApiError::invalid("Idempotency-Key must be ASCII")))?
                .to_string(),
        ),
    };
    match (header, body) {
        (Some(h), Some(b)) if h != b => {
            Err(ApiError::invalid("Idempotency-Key header and idempotency_key field differ").into())
        }
        (h, b) => Ok(h.or(b)),
    }
}

async fn ingest(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: IngestBody = parse_json(&body)?;
    let key = idempotency_key(&headers, b.idempotency_key)?;
    let r = svc
        .ingest_keyed(IngestBatch { agent: b.agent, seq: b.seq, epoch: b.epoch, findings: b.findings }, key)
        .await
        .map_err(|e| rest_error(&svc, e))?;
    Ok(Json(WriteResult::from(r)).into_response())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub host: String,
    pub objects: Vec<Registration>,
}

async fn register(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: RegisterBody = parse_json(&body)?;
    let key = idempotency_key(&headers, None)?;
    let r = svc.register_keyed(b.agent, b.host, b.objects, key).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(WriteResult::from(r)).into_response())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub agent: String,
    pub host: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub started_ms: u64,
    #[serde(default)]
    pub checkers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub outbox_entries: u64,
    #[serde(default)]
    pub outbox_dropped: u64,
    #[serde(default)]
    pub runs: Vec<proto::view::CheckerRunView>,
    #[serde(default)]
    pub assignment_hash: String,
}

async fn heartbeat(State(svc): State<Svc>, body: Bytes) -> Result<Response, HttpError> {
    let b: HeartbeatBody = parse_json(&body)?;
    let info = HeartbeatInfo {
        version: b.version,
        started_ms: b.started_ms,
        checkers: b.checkers,
        outbox_entries: b.outbox_entries,
        outbox_dropped: b.outbox_dropped,
        runs: b.runs,
        assignment_hash: b.assignment_hash,
    };
    let (revision, held) = svc.heartbeat(&b.agent, &b.host, info).await.map_err(|e| rest_error(&svc, e))?;
    let actions = svc.actions_for(&b.host).await.map_err(|e| rest_error(&svc, e))?;
    let (hash, assignment) = svc.assignment_for_beat(&b.host, held).map_err(|e| rest_error(&svc, e))?;
    let included = assignment.is_some();
    let assignment = assignment.unwrap_or_default();
    Ok(Json(serde_json::json!({
        "revision": revision,
        "actions": actions,
        "assignment_hash": hash,
        "assignment": assignment,
        "assignment_included": included,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    page_token: String,
}

/// `GET /api/v1/agents?limit=&page_token=`: one page of the agents the cluster knows (replicated liveness,
/// in id order) with what the leader heard in heartbeats (`info`: version, start time, checkers, outbox
/// depth, assignment), and `next_page_token` (the gRPC `ListAgents`). Served by the leader.
async fn agents(
    State(svc): State<Svc>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let page = svc.agent_list(q.limit, &q.page_token).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(serde_json::json!({ "agents": page.agents, "next_page_token": page.next_page_token }))
        .into_response())
}

/// `POST /api/v1/commands`: same fields as the gRPC CommandRequest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    pub object: String,
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub success: bool,
}

async fn command(
    State(svc): State<Svc>,
    // auth: the caller the auth middleware found (absent in insecure mode).
    caller: Option<axum::Extension<Caller>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: CommandBody = parse_json(&body)?;
    let key = idempotency_key(&headers, None)?;
    crate::auth::check_command(caller.as_ref().map(|c| &c.0), &b.kind)?;
    let object = proto::convert::object_id(&b.object)?;
    let input = requests::object_input(&ObjectCommand {
        kind: b.kind,
        name: b.name,
        value: b.value,
        by: b.by,
        reason: b.reason,
        success: b.success,
    })?;
    let r = svc.object_command_keyed(object, input, key).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(WriteResult::from(r)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// One NDJSON line of a REST watch: an event, or progress (`{"progress": REV}`: everything up to REV was
/// sent, resume from REV + 1), or an error that ends the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchLine {
    Event(ChangeEvent),
    Progress { progress: u64 },
    Error(ApiError),
}

/// `GET /api/v1/watch?from=REV&kind=K&host=H&timeout_ms=MS`: a long-poll NDJSON stream of events from REV,
/// ending after the timeout (with a final progress line) or at an error line.
async fn watch(
    State(svc): State<Svc>,
    q: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let filter = requests::filter(&q.kind, "", &q.host, &[])?;
    let timeout = q.timeout_ms.map(Duration::from_millis).unwrap_or(WATCH_DEFAULT).min(WATCH_MAX);
    let mut rx = svc.watch(q.from, filter).map_err(|e| rest_error(&svc, e))?;
    // A compacted start is an HTTP error, not a 200 with an error line.
    let first = match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Some(Err(e))) => return Err(HttpError(e)),
        Ok(Some(Ok(item))) => Some(item),
        Ok(None) => return Err(HttpError(ApiError::unavailable("watch ended"))),
        Err(_) => None,
    };
    let start_rev = svc.current_revision();
    let deadline = tokio::time::Instant::now() + timeout;
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(crate::api::WATCH_BUFFER);
    // The body pump is owned like the watch stream it reads: it ends with the stream, at the timeout, or
    // when the watchers are stopped (shutdown).
    let stop = svc.watchers.stopped();
    let pump = async move {
        let mut progress = q.from.saturating_sub(1).max(if q.from == 0 { start_rev } else { 0 });
        let mut send_item = |events: Vec<ChangeEvent>, rev: u64, buf: &mut Vec<u8>| {
            for e in events {
                push_json_line(buf, &WatchLine::Event(e));
            }
            progress = progress.max(rev);
        };
        let mut buf = Vec::new();
        if let Some((events, rev)) = first {
            send_item(events, rev, &mut buf);
            if tx.send(Ok(Bytes::from(std::mem::take(&mut buf)))).await.is_err() {
                return;
            }
        }
        loop {
            // A client that went away ends the pump (and the watch stream, freeing its slot) at once.
            let next = tokio::select! {
                n = tokio::time::timeout_at(deadline, rx.recv()) => n,
                _ = tx.closed() => return,
            };
            match next {
                Ok(Some(Ok((events, rev)))) => send_item(events, rev, &mut buf),
                Ok(Some(Err(e))) => {
                    push_json_line(&mut buf, &WatchLine::Error(e));
                    // The last line: if the client already went away there is nobody to tell.
                    tx.send(Ok(Bytes::from(buf))).await.ok();
                    return;
                }
                Ok(None) | Err(_) => break,
            }
            if tx.send(Ok(Bytes::from(std::mem::take(&mut buf)))).await.is_err() {
                return;
            }
        }
        push_json_line(&mut buf, &WatchLine::Progress { progress });
        tx.send(Ok(Bytes::from(buf))).await.ok();
    };
    svc.watchers.spawn(async move {
        tokio::select! {
            _ = stop => {}
            _ = pump => {}
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body_rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Append `v` as one NDJSON line (a value that cannot be serialized is left out).
fn push_json_line<T: Serialize>(buf: &mut Vec<u8>, v: &T) {
    if serde_json::to_writer(&mut *buf, v).is_ok() {
        buf.push(b'\n');
    }
}
