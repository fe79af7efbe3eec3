//! REST for network localisation (issue 16): `GET /api/v1/net/suspects[?limit=N]`,
//! `GET /api/v1/net/matrix[?rack=R]`, `GET /api/v1/net/path?a=HOST&b=HOST`, `GET /api/v1/net/topology`
//! (the NetTopologyResponse JSON) and `POST /api/v1/net/topology` (the SetNetTopologyRequest fields with
//! `content_base64` instead of `content`; operator). The same checks and answers as the gRPC calls
//! (`net::wire` and `api::topology` serve both), as JSON with the proto's field names; leader only (a
//! follower answers NOT_LEADER with the leader's address, like every leader-only call).

use axum::routing::get;
use base64::Engine;
use proto::api;

use super::*;

pub(super) fn routes() -> Router<Svc> {
    Router::new()
        .route("/api/v1/net/suspects", get(suspects))
        .route("/api/v1/net/matrix", get(matrix))
        .route("/api/v1/net/path", get(path))
        .route("/api/v1/net/topology", get(topology).post(set_topology))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyBody {
    #[serde(default)]
    content_base64: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    clear: bool,
    #[serde(default)]
    by: String,
    #[serde(default)]
    reason: String,
}

async fn topology(State(svc): State<Svc>) -> Result<Response, HttpError> {
    let v = svc.topology_view().await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(v).into_response())
}

async fn set_topology(
    State(svc): State<Svc>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let b: TopologyBody = parse_json(&body)?;
    let key = idempotency_key(&headers, None)?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(b.content_base64.as_bytes())
        .map_err(|e| HttpError::from(ApiError::invalid(format!("content_base64: {e}"))))?;
    let req = crate::api::topology::SetRequest {
        content,
        name: b.name,
        version: b.version,
        clear: b.clear,
        by: b.by,
        reason: b.reason,
    };
    let v = svc.set_topology(req, key).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(v).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspectsQuery {
    #[serde(default)]
    limit: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixQuery {
    #[serde(default)]
    rack: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathQuery {
    #[serde(default)]
    a: String,
    #[serde(default)]
    b: String,
}

fn peer_json(p: &api::PeerResult) -> serde_json::Value {
    serde_json::json!({
        "host": p.host, "sent": p.sent, "lost": p.lost, "connect_failures": p.connect_failures,
        "rtt_p50_us": p.rtt_p50_us, "rtt_p99_us": p.rtt_p99_us, "traced_path": p.hops,
    })
}

async fn suspects(State(svc): State<Svc>, Query(q): Query<SuspectsQuery>) -> Result<Response, HttpError> {
    let last = svc.net_last().map_err(|e| rest_error(&svc, e))?;
    let r = crate::net::wire::suspects(last.as_deref(), q.limit)?;
    let suspects: Vec<_> = r
        .suspects
        .iter()
        .map(|s| {
            serde_json::json!({
                "target": s.target, "kind": s.kind, "score": s.score, "rank": s.rank, "why": s.why,
                "voters": s.voters, "bad_flows": s.bad_flows, "flows": s.flows, "loss": s.loss,
                "evidence": s.evidence, "decision": s.decision,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "window_end_ms": r.window_end_ms, "window_ms": r.window_ms, "reporters": r.reporters,
        "flows": r.flows, "bad_flows": r.bad_flows, "topology": r.topology, "suspects": suspects,
    }))
    .into_response())
}

async fn matrix(State(svc): State<Svc>, Query(q): Query<MatrixQuery>) -> Result<Response, HttpError> {
    let last = svc.net_last().map_err(|e| rest_error(&svc, e))?;
    let r = crate::net::wire::matrix(last.as_deref(), &q.rack)?;
    let cells: Vec<_> = r
        .cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "src": c.src, "dst": c.dst, "sent": c.sent, "lost": c.lost, "rtt_p50_us": c.rtt_p50_us,
                "rtt_p99_us": c.rtt_p99_us, "flows": c.flows,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "window_end_ms": r.window_end_ms, "racks": r.racks, "cells": cells }))
        .into_response())
}

async fn path(State(svc): State<Svc>, Query(q): Query<PathQuery>) -> Result<Response, HttpError> {
    let (routes, last) = svc.net_routes(&q.a, &q.b).await.map_err(|e| rest_error(&svc, e))?;
    let r = crate::net::wire::path(routes, last.as_deref(), &q.a, &q.b);
    let routes: Vec<_> = r
        .routes
        .iter()
        .map(|x| {
            let hops: Vec<_> = x
                .hops
                .iter()
                .map(|h| serde_json::json!({"link": h.link, "blame": h.blame, "bad_flows": h.bad_flows, "flows": h.flows}))
                .collect();
            serde_json::json!({ "nodes": x.nodes, "hops": hops })
        })
        .collect();
    let measured: Vec<_> = r.measured.iter().map(peer_json).collect();
    Ok(Json(serde_json::json!({ "routes": routes, "measured": measured })).into_response())
}
