//! REST for the safety net: `GET /api/v1/safety` (quotas, scopes with level and quota use, recent alerts),
//! `GET /api/v1/alerts`, `GET /api/v1/proposals`, `POST /api/v1/proposals/decide`, `POST /api/v1/levels`,
//! `POST /api/v1/release`, `PUT /api/v1/quotas`, `POST /api/v1/min-command-version` (rolling upgrades). Operator writes need `by` and a `reason` (audit log).
//! Every write takes the `Idempotency-Key` header (applied once across retries, see `http.rs`).

use axum::routing::{get, post};

use super::*;
use crate::safety::{ProposalFilter, QuotaRule, SafetyConfig};

pub(super) fn routes() -> Router<Svc> {
    Router::new()
        .route("/api/v1/safety", get(safety))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/proposals", get(proposals))
        .route("/api/v1/proposals/decide", post(decide))
        .route("/api/v1/levels", post(set_level))
        .route("/api/v1/release", post(release))
        .route("/api/v1/min-command-version", post(set_min_command_version))
        .route("/api/v1/quotas", axum::routing::put(set_quotas).post(set_quotas))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MinCommandVersionBody {
    version: u32,
    by: String,
    reason: String,
}

/// `POST /api/v1/min-command-version {"version", "by", "reason"}`: enable command versions up to `version`
/// (see ARCHITECTURE.md "Upgrading masters"); answers the revision and the cluster info after it.
async fn set_min_command_version(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: MinCommandVersionBody = parse_json(&body)?;
    let key = idempotency_key(&headers, None)?;
    let (revision, cluster) = svc
        .set_min_command_version_keyed(b.version, &b.by, &b.reason, key)
        .await
        .map_err(|e| rest_error(&svc, e))?;
    Ok(Json(
        serde_json::json!({ "min_command_version": b.version, "revision": revision, "cluster": cluster }),
    )
    .into_response())
}

async fn safety(
    State(svc): State<Svc>,
    q: Result<Query<StaleQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    Ok(Json(svc.safety(q.stale).await.map_err(|e| rest_error(&svc, e))?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    #[serde(default)]
    limit: usize,
    /// Include audit rows (operator changes), not only alerts.
    #[serde(default)]
    all: bool,
}

async fn alerts(
    State(svc): State<Svc>,
    q: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let limit = if q.limit == 0 { 100 } else { q.limit };
    let rows = svc.audit_log(!q.all, limit).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(serde_json::json!({ "alerts": rows })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalsQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    checker: String,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    stale: bool,
}

async fn proposals(
    State(svc): State<Svc>,
    q: Result<Query<ProposalsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let status = requests::proposal_status(&q.status)?;
    let filter = requests::proposal_filter(&q.scope, &q.kind, &q.host, &q.checker)?;
    let (list, revision) =
        svc.proposals(status, &filter, q.limit, q.stale).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(serde_json::json!({ "proposals": list, "revision": revision })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    decision: String,
    #[serde(default)]
    ids: Vec<u64>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    checker: String,
    by: String,
    reason: String,
}

async fn decide(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: DecideBody = parse_json(&body)?;
    let approve = requests::decision(&b.decision)?;
    let filter: ProposalFilter = requests::proposal_filter(&b.scope, &b.kind, &b.host, &b.checker)?;
    let key = idempotency_key(&headers, None)?;
    let r = svc
        .decide_keyed(b.ids, filter, approve, &b.by, &b.reason, key)
        .await
        .map_err(|e| rest_error(&svc, e))?;
    let failed: Vec<serde_json::Value> =
        r.failed.iter().map(|(id, error)| serde_json::json!({ "id": id, "error": error })).collect();
    Ok(Json(serde_json::json!({
        "decided": r.decided, "failed": failed, "revision": r.revision, "duplicate": r.duplicate,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    scope: String,
    level: String,
    by: String,
    reason: String,
}

async fn set_level(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: LevelBody = parse_json(&body)?;
    let level = requests::level(&b.level)?;
    let key = idempotency_key(&headers, None)?;
    let (scope, revision) =
        svc.set_level_keyed(&b.scope, level, &b.by, &b.reason, key).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(serde_json::json!({ "scope": scope, "revision": revision })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    scope: String,
    by: String,
    reason: String,
}

async fn release(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: ReleaseBody = parse_json(&body)?;
    let key = idempotency_key(&headers, None)?;
    let (scope, revision) =
        svc.release_keyed(&b.scope, &b.by, &b.reason, key).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(serde_json::json!({ "scope": scope, "revision": revision })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotasBody {
    #[serde(default)]
    quotas: Option<Vec<QuotaRule>>,
    /// The whole safety config (quotas, scope labels, liveness, spike); `quotas` then overrides its quotas.
    #[serde(default)]
    config: Option<SafetyConfig>,
    by: String,
    reason: String,
}

async fn set_quotas(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: QuotasBody = parse_json(&body)?;
    if b.quotas.is_none() && b.config.is_none() {
        return Err(HttpError(ApiError::invalid("give quotas or config")));
    }
    let key = idempotency_key(&headers, None)?;
    let view = svc
        .set_safety_keyed(b.quotas, b.config, &b.by, &b.reason, key)
        .await
        .map_err(|e| rest_error(&svc, e))?;
    Ok(Json(view).into_response())
}
