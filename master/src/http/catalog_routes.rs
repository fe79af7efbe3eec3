//! REST for the checker catalog (issue 15): `POST /api/v1/catalog` (the PushArtifactRequest fields with
//! `content_base64` instead of `content`), `GET /api/v1/catalog[?name=N]`, `GET /api/v1/catalog/{name}`,
//! `POST /api/v1/rollouts` (the RolloutRequest JSON), `GET /api/v1/rollouts[?name=N]` (the
//! RolloutStatusResponse JSON). Field names are the proto's; the API layer validates.

use axum::extract::Path;
use axum::routing::{get, post};
use base64::Engine;

use super::*;
use crate::api::catalog::{PushRequest, RolloutRequest};

pub(super) fn routes() -> Router<Svc> {
    Router::new()
        .route("/api/v1/catalog", post(push).get(list))
        .route("/api/v1/catalog/{name}", get(show))
        .route("/api/v1/rollouts", post(rollout).get(status))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    name: String,
    version: String,
    #[serde(rename = "type", default)]
    kind: String,
    content_base64: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    spec: proto::view::ArtifactSpecView,
    #[serde(default)]
    by: String,
    #[serde(default)]
    sha256: String,
}

async fn push(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: PushBody = parse_json(&body)?;
    let key = idempotency_key(&headers, None)?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(b.content_base64.as_bytes())
        .map_err(|e| HttpError::from(ApiError::invalid(format!("content_base64: {e}"))))?;
    let req = PushRequest {
        name: b.name,
        version: b.version,
        kind: b.kind,
        content,
        description: b.description,
        spec: b.spec,
        by: b.by,
        sha256: b.sha256,
    };
    let r = svc.push_artifact(req, key).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(r).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameQuery {
    #[serde(default)]
    name: String,
}

async fn list(State(svc): State<Svc>, Query(q): Query<NameQuery>) -> Result<Response, HttpError> {
    let l = svc.list_catalog(&q.name).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(l).into_response())
}

async fn show(State(svc): State<Svc>, Path(name): Path<String>) -> Result<Response, HttpError> {
    let l = svc.catalog_checker(&name).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(l).into_response())
}

async fn rollout(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: RolloutRequest = parse_json(&body)?;
    let key = idempotency_key(&headers, None)?;
    let (rollout, revision) = svc.rollout(b, key).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(serde_json::json!({ "rollout": rollout, "revision": revision })).into_response())
}

async fn status(State(svc): State<Svc>, Query(q): Query<NameQuery>) -> Result<Response, HttpError> {
    let s = svc.rollout_status(&q.name).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(s).into_response())
}
