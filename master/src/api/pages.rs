//! Paginated listings (ListObjects, ListAgents; REST `GET /api/v1/objects`, `/api/v1/agents`): the page
//! size rule and the continuation token, decoded and checked here once for every front end.
//!
//! A token is opaque to clients: URL-safe base64 (no padding, so it goes into a query string as is) of
//! `version (1 byte) | listing (1 byte) | revision (8, BE) | filter digest (4, BE) | after (utf-8) | crc32c
//! of everything before (4, BE)`. `revision` is the revision the listing's first page answered (every page
//! answers it); `after` is the last key the previous page examined (the next page starts strictly after
//! it); the digest is CRC-32C of the filter in a canonical form. A token that does not decode, fails its
//! checksum, has another version or listing, or another filter digest is INVALID_ARGUMENT and changes
//! nothing.
//!
//! Why a listing stays gap-free: each page is read from the node's current state (no read transaction
//! held across requests), which is at least the first page's revision (linearizable reads are; a stale
//! page waits for its node to apply that revision, see `objects.rs`). An object served on a later page
//! carries its own `revision`; a client that watches from the first page's revision + 1 and drops a
//! watched change at or below the listed object's revision sees every change once.

use std::time::Duration;

use base64::Engine;
use proto::error::ApiError;
use proto::view::{AgentListing, ObjectView};

use super::validate::{DEFAULT_PAGE, MAX_PAGE, MAX_PAGE_TOKEN_LEN};
use super::{Service, store_err};
use crate::checksum::crc32c;
use crate::store::{Filter, Reader};

/// How long a page waits for this node to apply the listing's revision (a stale page served by a follower
/// behind the node that served the first page) before it answers UNAVAILABLE: a follower within a few
/// heartbeats of its leader catches up well inside it, one that cannot should send the client elsewhere.
pub const PAGE_CATCH_UP: Duration = Duration::from_secs(5);

/// One page of objects: the listing's revision (the first page's) and the token of the next page (empty
/// when the listing is complete).
#[derive(Debug, Clone)]
pub struct ObjectPage {
    pub objects: Vec<ObjectView>,
    pub revision: u64,
    pub next_page_token: String,
}

/// One page of agents (in id order) and the token of the next page (empty when complete).
#[derive(Debug, Clone)]
pub struct AgentPage {
    pub agents: Vec<AgentListing>,
    pub next_page_token: String,
}

/// The token format this binary writes and reads.
const TOKEN_VERSION: u8 = 1;
/// Fixed bytes of a token besides `after`: version, listing, revision, digest, checksum.
const TOKEN_FIXED: usize = 1 + 1 + 8 + 4 + 4;

/// Which listing a token continues (a ListAgents token is refused by ListObjects and the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Objects = 1,
    Agents = 2,
}

/// A decoded continuation token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub listing: Listing,
    /// The revision the listing's first page answered.
    pub revision: u64,
    /// Digest of the listing's filter ([`filter_digest`]).
    pub digest: u32,
    /// The last key the previous page examined: the next page starts strictly after it.
    pub after: String,
}

/// The page size a request gets: 0 is [`DEFAULT_PAGE`], more than [`MAX_PAGE`] is [`MAX_PAGE`].
pub fn page_size(limit: usize) -> usize {
    if limit == 0 { DEFAULT_PAGE } else { limit.min(MAX_PAGE) }
}

/// CRC-32C of a filter in canonical form (labels sorted, so the same selectors in another order are the
/// same filter). `stale` is not part of it: a listing may continue on another node.
pub fn filter_digest(f: &Filter) -> u32 {
    let mut labels: Vec<String> = f.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let canon = format!(
        "kind={}\0state={}\0host={}\0labels={}",
        f.kind.map(|k| k.to_string()).unwrap_or_default(),
        f.state.as_deref().unwrap_or(""),
        f.host.as_deref().unwrap_or(""),
        labels.join("\0")
    );
    crc32c(canon.as_bytes())
}

impl PageToken {
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(TOKEN_FIXED + self.after.len());
        b.push(TOKEN_VERSION);
        b.push(self.listing as u8);
        b.extend_from_slice(&self.revision.to_be_bytes());
        b.extend_from_slice(&self.digest.to_be_bytes());
        b.extend_from_slice(self.after.as_bytes());
        let sum = crc32c(&b);
        b.extend_from_slice(&sum.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// Decode and check a client's token for `listing` with filter digest `digest`.
    pub fn decode(token: &str, listing: Listing, digest: u32) -> Result<PageToken, ApiError> {
        let bad = |why: &str| ApiError::invalid(format!("page_token is not valid: {why}"));
        if token.len() > MAX_PAGE_TOKEN_LEN {
            return Err(bad(&format!("{} bytes long (limit {MAX_PAGE_TOKEN_LEN})", token.len())));
        }
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad("not a token this master issued"))?;
        if b.len() < TOKEN_FIXED {
            return Err(bad("too short"));
        }
        let (body, sum) = b.split_at(b.len() - 4);
        let sum = u32::from_be_bytes(sum.try_into().map_err(|_| bad("too short"))?);
        if crc32c(body) != sum {
            return Err(bad("damaged or cut (checksum mismatch)"));
        }
        if body[0] != TOKEN_VERSION {
            return Err(bad(&format!("format {} (this master reads {TOKEN_VERSION})", body[0])));
        }
        if body[1] != listing as u8 {
            return Err(bad("issued for another listing"));
        }
        let revision = u64::from_be_bytes(body[2..10].try_into().map_err(|_| bad("too short"))?);
        let got = u32::from_be_bytes(body[10..14].try_into().map_err(|_| bad("too short"))?);
        if got != digest {
            return Err(bad(
                "issued for another filter (continue a listing with the filter it started with)",
            ));
        }
        let after = std::str::from_utf8(&body[14..]).map_err(|_| bad("not a token this master issued"))?;
        Ok(PageToken { listing, revision, digest, after: after.to_string() })
    }
}

/// The digest agent listings carry (they have no filter).
pub fn agents_digest() -> u32 {
    crc32c(b"agents")
}

/// The token of a request (`None` for a first page), checked against its listing and filter.
pub fn request_token(token: &str, listing: Listing, digest: u32) -> Result<Option<PageToken>, ApiError> {
    if token.is_empty() { Ok(None) } else { PageToken::decode(token, listing, digest).map(Some) }
}

impl Service {
    /// `r` if it reflects at least `revision`; otherwise wait up to [`PAGE_CATCH_UP`] for this node to
    /// apply it and read again. A later page must never be read from a state older than the first page's
    /// revision: a change between the two would be neither on the page nor in the watch from revision + 1.
    pub(super) async fn reader_at_least(&self, r: Reader, revision: u64) -> Result<Reader, ApiError> {
        if r.revision().map_err(store_err)? >= revision {
            return Ok(r);
        }
        drop(r);
        let base = self.base_revision;
        let mut rx = self.revision.clone();
        let waited = tokio::time::timeout(PAGE_CATCH_UP, rx.wait_for(|v| (*v).max(base) >= revision)).await;
        let r = Reader::new(&self.db).map_err(store_err)?;
        let applied = r.revision().map_err(store_err)?;
        if matches!(waited, Ok(Ok(_))) && applied >= revision {
            return Ok(r);
        }
        Err(ApiError::unavailable(format!(
            "this node has applied revision {applied}, behind the listing's revision {revision}: retry \
             (a node that caught up serves the page)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::error::Code;

    fn filter(host: &str, labels: &[(&str, &str)]) -> Filter {
        Filter {
            kind: Some(state_machines::Kind::Disk),
            state: None,
            host: Some(host.into()),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn check(token: &str, listing: Listing, digest: u32, want: Result<&str, &str>) {
        match (PageToken::decode(token, listing, digest), want) {
            (Ok(t), Ok(after)) => assert_eq!(t.after, after),
            (Err(e), Err(msg)) => {
                assert_eq!(e.code, Code::InvalidArgument);
                assert!(e.message.contains(msg), "want {msg:?}: {}", e.message);
            }
            (got, want) => panic!("{token:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let d = filter_digest(&filter("h1", &[("rack", "r1")]));
        let t = PageToken { listing: Listing::Objects, revision: 42, digest: d, after: "disk/h1/sdb".into() };
        let enc = t.encode();
        assert_eq!(PageToken::decode(&enc, Listing::Objects, d), Ok(t.clone()));
        check(&enc, Listing::Objects, d, Ok("disk/h1/sdb"));
        check(&enc, Listing::Agents, d, Err("another listing"));
        check(&enc, Listing::Objects, d ^ 1, Err("another filter"));
        check("not base64 !!", Listing::Objects, d, Err("not a token"));
        check("", Listing::Objects, d, Err("too short"));
        check(&enc[..enc.len() - 3], Listing::Objects, d, Err("checksum"));
        check(&"A".repeat(MAX_PAGE_TOKEN_LEN + 1), Listing::Objects, d, Err("limit"));
        // One flipped character anywhere is caught by the checksum (or base64 itself).
        for i in 0..enc.len() {
            let mut b = enc.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).expect("ascii");
            assert!(PageToken::decode(&s, Listing::Objects, d).is_err(), "flip at {i} accepted");
        }
        // Another format version, even with a valid checksum.
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&enc).expect("b64");
        raw.truncate(raw.len() - 4);
        raw[0] = 9;
        let sum = crc32c(&raw);
        raw.extend_from_slice(&sum.to_be_bytes());
        let v9 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        check(&v9, Listing::Objects, d, Err("format 9"));
    }

    #[test]
    fn the_digest_is_the_filter_not_its_spelling() {
        let a = filter_digest(&filter("h1", &[("rack", "r1"), ("row", "2")]));
        let b = filter_digest(&filter("h1", &[("row", "2"), ("rack", "r1")]));
        assert_eq!(a, b, "label order does not matter");
        assert_ne!(a, filter_digest(&filter("h2", &[("rack", "r1"), ("row", "2")])));
        assert_ne!(a, filter_digest(&filter("h1", &[("rack", "r1")])));
        assert_ne!(filter_digest(&Filter::default()), a);
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(MAX_PAGE), MAX_PAGE);
        assert_eq!(page_size(MAX_PAGE + 1), MAX_PAGE);
        assert_eq!(page_size(usize::MAX), MAX_PAGE);
    }
}
