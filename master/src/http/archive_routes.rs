//! REST for the member's archive (issue 19, `archive.rs`): `GET /api/v1/archive` (what it holds: rows,
//! range, bounds, gaps), `GET /api/v1/archive/{table}?since_ms&until_ms&limit&page_token` (one page of
//! findings, transitions or tickets, oldest first; `huatuo export` reads these), and the series of one object
//! for charts, `GET /api/v1/objects/{id}/series?days=30` (dispatched from `get_object`). Every member serves
//! its own archive (they hold the same rows), so these are answered by whichever member is asked.

use super::*;

pub(super) fn routes() -> Router<Svc> {
    Router::new().route("/api/v1/archive", get(info)).route("/api/v1/archive/{table}", get(page))
}

fn archive_of(svc: &Service) -> Result<Arc<crate::archive::Archive>, HttpError> {
    svc.archive().cloned().ok_or_else(|| HttpError(ApiError::unavailable("this master node has no archive")))
}

fn archive_err(e: crate::archive::ArchiveError) -> HttpError {
    match e {
        crate::archive::ArchiveError::Invalid(m) => HttpError(ApiError::invalid(m)),
        e @ crate::archive::ArchiveError::Storage(_) => HttpError(ApiError::internal(e.to_string())),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::archive::ArchiveError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HttpError(ApiError::internal(format!("archive read: {e}"))))?
        .map_err(archive_err)
}

async fn info(State(svc): State<Svc>) -> Result<Response, HttpError> {
    let a = archive_of(&svc)?;
    Ok(Json(blocking(move || a.info()).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    since_ms: u64,
    #[serde(default)]
    until_ms: Option<u64>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    page_token: String,
}

async fn page(
    State(svc): State<Svc>,
    Path(table): Path<String>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let q = parse_query(q)?;
    let a = archive_of(&svc)?;
    let until = q.until_ms.unwrap_or(u64::MAX);
    let p = blocking(move || a.page(&table, q.since_ms, until, q.limit, &q.page_token)).await?;
    Ok(Json(p).into_response())
}

/// `GET /api/v1/objects/{id}/series?days=N` (default 30): 404 for an object the state does not know.
pub(super) async fn series(svc: Svc, id: ObjectId, days: Option<u64>) -> Result<Response, HttpError> {
    // The object must exist (read from this member's state, like the archive itself).
    svc.get(&id, true).await.map_err(|e| rest_error(&svc, e))?;
    let a = archive_of(&svc)?;
    let days = days.unwrap_or(30);
    let now = crate::api::now_ms();
    let s = blocking(move || a.series(&id.to_string(), days, now)).await?;
    Ok(Json(s).into_response())
}
