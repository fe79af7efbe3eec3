//! REST for the portal's charts (issue 19): `GET /api/v1/charts/transitions[?hours=168&to=ERROR,REPAIR]`
//! (transitions per hour and kind from the replicated hourly counters, with the quotas that limit them) and
//! `GET /api/v1/charts/racks[?label=rack&kind=disk]` (objects per rack and state from the per-scope counts).
//! Both answer from counter rows only (`api/charts.rs`); role read.

use super::*;

pub(super) fn routes() -> Router<Svc> {
    Router::new()
        .route("/api/v1/charts/transitions", get(transitions))
        .route("/api/v1/charts/racks", get(racks))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionsQuery {
    /// Hours charted, ending with the current one (0: 168).
    #[serde(default)]
    hours: u64,
    /// Comma-separated target states (empty: ERROR,REPAIR).
    #[serde(default)]
    to: String,
    #[serde(default)]
    stale: bool,
}

async fn transitions(
    State(svc): State<Svc>,
    q: Result<Query<TransitionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let (hours, to) = crate::api::charts::parse_transitions_query(q.hours, &q.to)?;
    let chart = svc.chart_transitions(q.stale, hours, &to).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(chart).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RacksQuery {
    #[serde(default)]
    label: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    stale: bool,
}

async fn racks(
    State(svc): State<Svc>,
    q: Result<Query<RacksQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let (label, kind) = crate::api::charts::parse_racks_query(&q.label, &q.kind)?;
    let chart = svc.chart_racks(q.stale, &label, &kind).await.map_err(|e| rest_error(&svc, e))?;
    Ok(Json(chart).into_response())
}
