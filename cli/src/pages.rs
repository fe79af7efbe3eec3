//! Paginated listings for the CLI's commands (`huatuo objects`, `ticket list`, `inspect`): follow the
//! master's `next_page_token` until the listing ends or the caller has the first N it asked for. Every page
//! of one listing answers the first page's revision (checked).

use master::client::Client;
use proto::api;
use proto::error::ApiError;
use std::ops::ControlFlow;

/// Pages one listing follows at most: 1.5 M objects (100,000 hosts) take 1,500 pages of the master's
/// default page; this only stops a master that never ends a listing.
pub const MAX_PAGES: u32 = 1_000_000;
/// Largest page asked for when the caller wants the first N (the master's maximum page).
pub const MAX_PAGE: u32 = 10_000;

/// What a listing gathered.
pub struct Objects {
    pub objects: Vec<api::Object>,
    /// The listing's revision (its first page's).
    pub revision: u64,
    /// `want` was reached and more objects may match.
    pub more: bool,
}

/// Page size to ask for: the master's default page for a whole listing, at most what is still wanted.
fn page_limit(want: usize, have: usize) -> u32 {
    if want == 0 { 0 } else { u32::try_from(want.saturating_sub(have)).unwrap_or(MAX_PAGE).min(MAX_PAGE) }
}

/// Objects matching `req`'s filter, a page at a time: all of them (`want` 0) or the first `want`.
pub async fn objects(
    client: &mut Client,
    req: api::ListObjectsRequest,
    want: usize,
) -> Result<Objects, ApiError> {
    let mut objects = Vec::new();
    let w = walk(client, req, want, |o| {
        objects.push(o);
        ControlFlow::Continue(())
    })
    .await?;
    Ok(Objects { objects, revision: w.revision, more: w.more })
}

/// What [`walk`] went through: the listing's revision (its first page's), and whether `want` was reached
/// with more objects matching.
pub struct Walked {
    pub revision: u64,
    pub more: bool,
}

/// Follow a listing page by page, handing each object to `f` as its page arrives and keeping none of
/// them: all of them (`want` 0) or the first `want`, or until `f` breaks (no further page is asked for).
/// A caller that needs what the objects add up to, not the objects (`huatuo inspect` over 1.5 M objects),
/// or prints them as they come (`huatuo objects`), holds one page at a time.
pub async fn walk(
    client: &mut Client,
    mut req: api::ListObjectsRequest,
    want: usize,
    mut f: impl FnMut(api::Object) -> ControlFlow<()>,
) -> Result<Walked, ApiError> {
    let mut out = Walked { revision: 0, more: false };
    let (mut pages, mut seen) = (0u32, 0usize);
    req.page_token.clear();
    while pages < MAX_PAGES {
        req.limit = page_limit(want, seen);
        let resp = client.call(req.clone(), |mut c, r| async move { c.list_objects(r).await }).await?;
        pages += 1;
        if pages == 1 {
            out.revision = resp.revision;
        } else if resp.revision != out.revision {
            return Err(ApiError::internal(format!(
                "page {} of a listing answered revision {} (the listing started at {})",
                pages, resp.revision, out.revision
            )));
        }
        for o in resp.objects {
            if want > 0 && seen >= want {
                out.more = true;
                return Ok(out);
            }
            seen += 1;
            if f(o).is_break() {
                return Ok(out);
            }
        }
        if resp.next_page_token.is_empty() {
            return Ok(out);
        }
        if want > 0 && seen >= want {
            out.more = true;
            return Ok(out);
        }
        if resp.next_page_token == req.page_token {
            return Err(ApiError::internal("the master answered the same page token twice"));
        }
        req.page_token = resp.next_page_token;
    }
    Err(ApiError::internal(format!("a listing did not end after {MAX_PAGES} pages")))
}

/// Every agent the cluster knows, a page at a time (in id order).
pub async fn agents(client: &mut Client) -> Result<Vec<api::AgentInfo>, ApiError> {
    let mut req = api::ListAgentsRequest::default();
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let resp = client.call(req.clone(), |mut c, r| async move { c.list_agents(r).await }).await?;
        out.extend(resp.agents);
        if resp.next_page_token.is_empty() {
            return Ok(out);
        }
        if resp.next_page_token == req.page_token {
            return Err(ApiError::internal("the master answered the same page token twice"));
        }
        req.page_token = resp.next_page_token;
    }
    Err(ApiError::internal(format!("an agent listing did not end after {MAX_PAGES} pages")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_ask_for_what_is_still_wanted() {
        assert_eq!(page_limit(0, 0), 0, "a whole listing: the master's default page");
        assert_eq!(page_limit(0, 5_000), 0);
        assert_eq!(page_limit(25, 0), 25);
        assert_eq!(page_limit(25, 20), 5);
        assert_eq!(page_limit(1_000_000, 0), MAX_PAGE);
        assert_eq!(page_limit(usize::MAX, 0), MAX_PAGE);
    }
}
