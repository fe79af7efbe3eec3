//! The objects out of GOOD, by state (issue 17): what a listing by state (`state=ERROR`, `huatuo objects
//! --state REPAIR`, the portal's "needs attention" table) reads instead of scanning every object. At 1.5 M
//! objects a scan examined at most `MAX_PAGE_SCAN` (100,000) records per page, so a listing of the few
//! dozen objects in ERROR took 15 pages (most of them empty) and 1.5 M record decodes; the portal, which
//! lists the first 10,000 objects only, showed no fault beyond them.
//!
//! [`States`] keeps (state, id) of every object whose state is not GOOD, in id order per state. It is kept
//! in memory by the same followed index as the deadlines (`deadlines::Deadlines` holds it: one pass, one
//! read of each change for both; see `follow.rs`), so it is never replicated and costs nothing on the
//! apply path. A listing is exact at its reader's state although the index may be behind it: the
//! candidates are the index's ids plus every object a change after the index's revision names (read from
//! the reader's own change log), and each candidate is read and checked by the reader
//! ([`crate::store::Reader::list_candidates`]). An index more than [`MAX_LISTING_GAP`] changes behind (a
//! storm of findings between two warms) is caught up first, waiting at most [`LISTING_INDEX_WAIT`]. When
//! none of that can be done (the index not built, ahead of the reader, still behind, or its position
//! compacted away) the listing scans as before: the index only ever makes a listing cheaper, never
//! different.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use state_machines::State;

use crate::deadlines::DeadlineIndex;
use crate::model::{ObjectCore, ObjectRecord};
use crate::store::{Filter, Reader, StoreError};

/// Most changes after the index's revision a listing reads itself to complete the index's candidates;
/// further behind, it scans (the warm duty catches the index up within seconds).
pub const MAX_LISTING_GAP: u64 = 65_536;

/// Most candidates one page reads (each a point lookup and a decode) when many objects changed after the
/// index's revision; a page's own limit and slack are always read.
pub const MAX_CANDIDATE_READS: usize = 4096;

/// Longest a listing waits for an index more than [`MAX_LISTING_GAP`] changes behind to catch up before
/// it scans.
pub const LISTING_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Candidates a listing takes from the index beyond its page: room for objects that left the state since
/// the index's revision without cutting the page short.
pub const CANDIDATE_SLACK: usize = 64;

/// (state, id) of every object out of GOOD.
#[derive(Debug, Default, PartialEq)]
pub struct States {
    ids: BTreeSet<(State, Box<str>)>,
    of: HashMap<Box<str>, State>,
}

impl States {
    /// Put object `id` in as `rec` has it (`None`: gone).
    pub fn put(&mut self, id: &str, rec: Option<&ObjectCore>) {
        let now = rec.map(|r| r.sm.state).filter(|s| *s != State::Good);
        let old = self.of.get(id).copied();
        if old == now {
            return;
        }
        if let Some(old) = old {
            self.ids.remove(&(old, Box::from(id)));
            self.of.remove(id);
        }
        if let Some(now) = now {
            self.ids.insert((now, Box::from(id)));
            self.of.insert(Box::from(id), now);
        }
    }

    /// Objects out of GOOD.
    pub fn len(&self) -> usize {
        self.of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }

    /// Ids in `state` starting with `prefix` and sorting strictly after `after`, in id order, at most
    /// `max`; and whether more follow.
    pub fn ids(&self, state: State, prefix: &str, after: Option<&str>, max: usize) -> (Vec<String>, bool) {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded((state, Box::from(a))),
            _ => Bound::Included((state, Box::from(prefix))),
        };
        let mut out = Vec::new();
        for (s, id) in self.ids.range((start, Bound::Unbounded)) {
            if *s != state || !id.starts_with(prefix) {
                break;
            }
            if out.len() >= max {
                return (out, true);
            }
            out.push(id.to_string());
        }
        (out, false)
    }
}

/// A page of objects and the id to continue after (`None`: the listing is complete).
pub type Page = (Vec<ObjectRecord>, Option<String>);

/// What the index can do for one page of a listing.
#[derive(Debug)]
pub enum Served {
    /// The page, exact at the reader's state.
    Page(Page),
    /// The index is more than [`MAX_LISTING_GAP`] changes behind the reader, whose revision this is: once
    /// the index reached it, a newer reader is at most a few changes ahead of the index.
    Behind(u64),
    /// Not a listing by state it holds, the index not built, ahead of the reader, or its position
    /// compacted away: scan.
    No,
}

/// The state a listing with `filter` can take from the index: a state filter other than GOOD.
pub fn indexed_state(filter: &Filter) -> Option<State> {
    filter.state.as_deref().and_then(|s| s.parse::<State>().ok()).filter(|s| *s != State::Good)
}

/// One page of a listing by state served from the index (see the module comment): what
/// [`Reader::list_page`] would answer at this reader's state, without scanning.
pub fn list_page(
    ix: &DeadlineIndex,
    r: &Reader,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<Served, StoreError> {
    list_page_within(ix, r, filter, after, limit, MAX_LISTING_GAP)
}

/// [`list_page`] reading at most `max_gap` changes after the index's revision itself.
fn list_page_within(
    ix: &DeadlineIndex,
    r: &Reader,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
    max_gap: u64,
) -> Result<Served, StoreError> {
    let Some(state) = indexed_state(filter) else { return Ok(Served::No) };
    let revision = r.revision()?;
    let prefix = filter.key_prefix();
    let limit = limit.max(1);
    let taken = ix.peek(|d, at| {
        if at > revision {
            return Err(Served::No);
        }
        if revision - at > max_gap {
            return Err(Served::Behind(revision));
        }
        Ok((at, d.states().ids(state, &prefix, after, limit + 1 + CANDIDATE_SLACK)))
    });
    let (at, (ids, more)) = match taken {
        None => return Ok(Served::No),
        Some(Err(why)) => return Ok(why),
        Some(Ok(t)) => t,
    };
    // Where the candidates end when the index had more: the page stops there (continued after it).
    let cut = more.then(|| ids.last().cloned()).flatten();
    let mut candidates: BTreeSet<String> = ids.into_iter().collect();
    if revision > at {
        // Objects changed after the index's revision: the index may not know they entered the state.
        // Revisions are dense (one per change), so this many events cover every change up to the reader's.
        let in_range = |id: &str| {
            id.starts_with(prefix.as_str())
                && after.is_none_or(|a| id > a)
                && cut.as_deref().is_none_or(|c| id <= c)
        };
        let read = r.changed_objects(at + 1, (revision - at) as usize, |id| {
            if in_range(id) && !candidates.contains(id) {
                candidates.insert(id.to_string());
            }
        })?;
        if read.is_none() {
            // The index's position was compacted away: it is being built again.
            return Ok(Served::No);
        }
    }
    // At most this many candidates are read per page: the first ones in id order, and the page stops
    // after the last of them (what is dropped sorts after it and comes on the next page).
    let most = (limit + 1 + CANDIDATE_SLACK).max(MAX_CANDIDATE_READS);
    let (candidates, cut) = if candidates.len() > most {
        let kept: Vec<String> = candidates.into_iter().take(most).collect();
        let last = kept.last().cloned();
        (kept, last)
    } else {
        (candidates.into_iter().collect(), cut)
    };
    r.list_candidates(filter, candidates, limit, cut).map(Served::Page)
}

#[cfg(test)]
mod tests;
