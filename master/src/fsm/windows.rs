//! The safety net's sliding windows as rows (command version 11, [`WINDOW_ROWS_VERSION`]).
//!
//! Three windows count recent events per scope: the admitted entries into ERROR/FIX/REPAIR of each kind
//! (the quotas' `max_entries`), a checker version's would-be removals of distinct objects (the spike
//! detector) and the agents that went silent (the liveness rule). Up to command version 10 each is a list
//! inside the scope's record (`KindCount::entries`, `ScopeRecord::spike`, `ScopeRecord::silent`, up to
//! [`safety::MAX_WINDOW_ENTRIES`] each), so every entry that touched a scope decoded and re-encoded them
//! whole: 0.75 ms per removal with 1,000 listed, 2.9-3.2 ms with 8,000-10,000 (a throwaway test, session
//! 39). From version 11 they are rows of `fsm_counts`, and the record keeps only how many each window holds
//! (`KindCount::windowed`, `ScopeRecord::spike_rows`, `ScopeRecord::silent_rows`):
//!
//! - `w/e/SCOPE KIND TIME ` -> admitted entries of KIND at TIME (an entry's findings share its time);
//! - `w/s/SCOPE TIME OBJECT` -> 1, a checker version's would-be removal of OBJECT;
//! - `w/m/SCOPE OBJECT` -> TIME + 1, the same removal by object (the detector counts distinct objects);
//! - `w/l/SCOPE TIME ` -> agents of SCOPE that went silent at TIME.
//!
//! TIME is zero-padded to 20 digits so that key order is time order; scopes, kinds and object ids never
//! hold a space. Adding is a point write; rows older than the window (and the oldest past
//! [`safety::MAX_WINDOW_ENTRIES`]) are dropped whenever the window is read or added to, each once, so an
//! entry costs O(log rows) plus the rows it drops, whatever the window holds. Counting within a shorter
//! window than the longest (a quota with a shorter window than another of its kind) walks the rows between
//! the two. The entry that raises `min_command_version` to 11 or beyond moves every list into rows, and one
//! that lowers it below 11 moves the rows back, so a binary of version 10 reads lists again after the
//! lowering (the rollback procedure lowers first, then downgrades).

use std::ops::Bound;

use super::decide::Decider;
use super::view::ID_PAGE;
use crate::model::WINDOW_ROWS_VERSION;
use crate::safety::{self, ScopeRecord};
use crate::store::StoreError;

/// Prefix of every window row in `fsm_counts`.
pub const WINDOWS: &str = "w/";
const ENTRIES: &str = "w/e/";
const SPIKE: &str = "w/s/";
const MEMBERS: &str = "w/m/";
const SILENT: &str = "w/l/";

/// One window of one scope.
#[derive(Debug, Clone, Copy)]
pub(super) enum Window<'a> {
    /// Admitted entries of a kind.
    Entries { scope: &'a str, kind: &'a str },
    /// A checker version's would-be removals (distinct objects).
    Spike(&'a str),
    /// Agents gone silent.
    Silent(&'a str),
}

impl Window<'_> {
    fn scope(&self) -> &str {
        match self {
            Window::Entries { scope, .. } | Window::Spike(scope) | Window::Silent(scope) => scope,
        }
    }

    /// The prefix of its rows (ends with a space).
    fn prefix(&self) -> String {
        match self {
            Window::Entries { scope, kind } => format!("{ENTRIES}{scope} {kind} "),
            Window::Spike(s) => format!("{SPIKE}{s} "),
            Window::Silent(s) => format!("{SILENT}{s} "),
        }
    }

    /// How many the record says the rows hold.
    fn total(&self, r: &ScopeRecord) -> u64 {
        match self {
            Window::Entries { kind, .. } => r.kinds.get(*kind).map_or(0, |k| k.windowed),
            Window::Spike(_) => r.spike_rows,
            Window::Silent(_) => r.silent_rows,
        }
    }

    fn set_total(&self, r: &mut ScopeRecord, n: u64) {
        match self {
            Window::Entries { kind, .. } => r.kinds.entry((*kind).to_string()).or_default().windowed = n,
            Window::Spike(_) => r.spike_rows = n,
            Window::Silent(_) => r.silent_rows = n,
        }
    }
}

/// The key of a row of the window with `prefix` (`object` is empty but for the spike detector's rows).
pub fn row_key(prefix: &str, time: u64, object: &str) -> String {
    format!("{prefix}{time:020} {object}")
}

/// (time, object) of a row key of the window with `prefix`; None for a key of another shape.
pub fn parse_row<'k>(key: &'k str, prefix: &str) -> Option<(u64, &'k str)> {
    let rest = key.strip_prefix(prefix)?;
    let (time, object) = rest.split_at_checked(20)?;
    Some((time.parse().ok()?, object.strip_prefix(' ')?))
}

fn member_key(scope: &str, object: &str) -> String {
    format!("{MEMBERS}{scope} {object}")
}

/// The first key after every key that starts with `prefix` (which ends with a space, the lowest character
/// a key continues with).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_string();
    end.pop();
    end.push('!');
    end
}

/// Lists the `fsm_counts` rows with `from <= key < to`, in key order.
pub type RowsBetween<'a> = dyn Fn(&str, &str) -> Result<Vec<(String, u64)>, StoreError> + 'a;

/// The admitted entries within `window_ms` of a scope's kind as read by the API (a list up to version 10,
/// rows from 11; the other form is empty): `rows(from, to)` lists the `fsm_counts` rows in `[from, to)`.
pub fn entries_in_window(
    scope: &str,
    kind: &str,
    c: &safety::KindCount,
    now: u64,
    window_ms: u64,
    rows: &RowsBetween<'_>,
) -> Result<u64, StoreError> {
    let from = now.saturating_sub(window_ms);
    let listed = safety::in_window(&c.entries, now, window_ms);
    Ok(listed + held_since(&Window::Entries { scope, kind }.prefix(), c.windowed, from, rows)?)
}

/// The agents of a scope gone silent within `window_ms` as read by the API (list or rows, as
/// [`entries_in_window`]).
pub fn silent_in_window(
    scope: &str,
    r: &ScopeRecord,
    now: u64,
    window_ms: u64,
    rows: &RowsBetween<'_>,
) -> Result<u64, StoreError> {
    let from = now.saturating_sub(window_ms);
    let listed = safety::in_window(&r.silent, now, window_ms);
    Ok(listed + held_since(&Window::Silent(scope).prefix(), r.silent_rows, from, rows)?)
}

/// The objects in a checker version's spike window (`window_ms`) as read by the API, each once (list or
/// rows, as [`entries_in_window`]; at most [`safety::MAX_WINDOW_ENTRIES`]).
pub fn spike_in_window(
    scope: &str,
    r: &ScopeRecord,
    now: u64,
    window_ms: u64,
    rows: &RowsBetween<'_>,
) -> Result<Vec<String>, StoreError> {
    let from = now.saturating_sub(window_ms);
    let mut out: Vec<String> = r.spike.iter().filter(|(t, _)| *t >= from).map(|(_, o)| o.clone()).collect();
    if r.spike_rows > 0 {
        let prefix = Window::Spike(scope).prefix();
        for (k, n) in rows(&row_key(&prefix, from, ""), &prefix_end(&prefix))? {
            if let (true, Some((_, object))) = (n > 0, parse_row(&k, &prefix)) {
                out.push(object.to_string());
            }
        }
    }
    Ok(out)
}

/// How many of a window's `total` rows (`prefix`) are at or after `from`: the total less the older rows
/// not yet dropped.
fn held_since(prefix: &str, total: u64, from: u64, rows: &RowsBetween<'_>) -> Result<u64, StoreError> {
    if total == 0 {
        return Ok(0);
    }
    let older: u64 = rows(prefix, &row_key(prefix, from, ""))?.iter().map(|(_, v)| v).sum();
    Ok(total.saturating_sub(older))
}

impl Decider<'_> {
    /// Whether this point of the entry keeps windows as rows.
    pub(super) fn window_rows(&self) -> bool {
        self.min_version >= u64::from(WINDOW_ROWS_VERSION)
    }

    /// Visit the rows with `from <= key < to` as this entry sees them (its writes over the view), in key
    /// order, until `visit` returns false. Reads the view a page at a time (4 rows, then up to
    /// [`ID_PAGE`]).
    fn walk_rows(
        &self,
        from: &str,
        to: &str,
        visit: &mut dyn FnMut(&str, u64) -> bool,
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let mut writes =
            self.w.counts.range::<str, _>((Bound::Included(from), Bound::Excluded(to))).peekable();
        let mut start = from.to_string();
        // Most walks stop at their first live row: pages start small and grow.
        let mut limit = 4;
        loop {
            let page = self.view.counts_range(&start, to, limit)?;
            let full = page.len() == limit;
            limit = (limit * 4).min(ID_PAGE);
            for (k, v) in page {
                while let Some((wk, wv)) = writes.next_if(|(wk, _)| wk.as_str() < k.as_str()) {
                    if *wv > 0 && !visit(wk, *wv) {
                        return Ok(());
                    }
                }
                let v = writes.next_if(|(wk, _)| wk.as_str() == k.as_str()).map_or(v, |(_, wv)| *wv);
                if v > 0 && !visit(&k, v) {
                    return Ok(());
                }
                start = k;
                start.push('\0');
            }
            if !full {
                break;
            }
        }
        for (wk, wv) in writes {
            if *wv > 0 && !visit(wk, *wv) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Drop the window's rows older than `now - window_ms` and, past [`safety::MAX_WINDOW_ENTRIES`], its
    /// oldest; returns what it holds then. The walk starts where the entry's last trim of the window stopped
    /// (`window_from`: no row below it is left), so each row is walked over once per entry.
    fn trim(&mut self, w: Window<'_>, window_ms: u64) -> Result<u64, StoreError> {
        let prefix = w.prefix();
        let before = self.now.saturating_sub(window_ms);
        let mut total = w.total(self.scope_mut(w.scope())?);
        let cap = safety::MAX_WINDOW_ENTRIES as u64;
        let start = self.window_from.get(&prefix).cloned().unwrap_or_else(|| prefix.clone());
        let end = prefix_end(&prefix);
        let mut cut: Vec<(String, u64)> = Vec::new();
        let mut stop = end.clone();
        self.walk_rows(&start, &end, &mut |k, n| {
            let old = parse_row(k, &prefix).is_none_or(|(t, _)| t < before);
            let drop = if old { n } else { n.min(total.saturating_sub(cap)) };
            if drop > 0 {
                cut.push((k.to_string(), n - drop));
                total = total.saturating_sub(drop);
            }
            if drop < n {
                stop = k.to_string();
                return false;
            }
            true
        })?;
        for (k, left) in cut {
            if left == 0
                && let Window::Spike(scope) = w
                && let Some((_, object)) = parse_row(&k, &prefix)
            {
                self.w.counts.insert(member_key(scope, object), 0);
            }
            self.w.counts.insert(k, left);
        }
        // Rows this entry adds later sort at or after its own time's first key.
        let resume = stop.min(row_key(&prefix, self.now, ""));
        self.window_from.insert(prefix, resume);
        w.set_total(self.scope_mut(w.scope())?, total);
        Ok(total)
    }

    /// Add `object`'s event at this entry's time to a window (rows) that [`Decider::trim`] left holding
    /// `trimmed`; returns what it holds then.
    fn add_row(
        &mut self,
        w: Window<'_>,
        window_ms: u64,
        trimmed: u64,
        object: &str,
    ) -> Result<u64, StoreError> {
        let total = trimmed + 1;
        let key = row_key(&w.prefix(), self.now, object);
        let n = self.count_of(&key)?;
        self.w.counts.insert(key, n + 1);
        w.set_total(self.scope_mut(w.scope())?, total);
        // Past the cap again: the oldest goes (the list's `prune` did the same after its push).
        if total > safety::MAX_WINDOW_ENTRIES as u64 {
            return self.trim(w, window_ms);
        }
        Ok(total)
    }

    /// Remember an admitted entry of `kind` into ERROR/FIX/REPAIR in `scope`'s window (`window_ms`: the
    /// longest of the kind's quotas).
    pub(super) fn add_entry(&mut self, scope: &str, kind: &str, window_ms: u64) -> Result<(), StoreError> {
        if self.window_rows() {
            let w = Window::Entries { scope, kind };
            let trimmed = self.trim(w, window_ms)?;
            self.add_row(w, window_ms, trimmed, "")?;
        } else {
            let now = self.now;
            let k = self.scope_mut(scope)?.kinds.entry(kind.to_string()).or_default();
            k.entries.push(now);
            safety::prune(&mut k.entries, now, window_ms);
        }
        Ok(())
    }

    /// How many entries of `kind` `scope` admitted within each window the quotas of `kind` use there
    /// (`longest`: the longest of them, to which the rows are trimmed first): (window, count) pairs.
    pub(super) fn entries_used(
        &mut self,
        scope: &str,
        kind: &str,
        windows: &[u64],
        longest: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let now = self.now;
        if !self.window_rows() {
            let r = self.scope_mut(scope)?;
            let entries = r.kinds.get(kind).map(|c| c.entries.as_slice()).unwrap_or_default();
            return Ok(windows.iter().map(|w| (*w, safety::in_window(entries, now, *w))).collect());
        }
        let w = Window::Entries { scope, kind };
        let total = if longest == 0 { w.total(self.scope_mut(scope)?) } else { self.trim(w, longest)? };
        let prefix = w.prefix();
        let start = self.window_from.get(&prefix).cloned().unwrap_or_else(|| prefix.clone());
        let mut out = Vec::with_capacity(windows.len());
        for window in windows {
            let cut = row_key(&prefix, now.saturating_sub(*window), "");
            let mut older = 0u64;
            self.walk_rows(&start, &cut, &mut |_, n| {
                older += n;
                true
            })?;
            out.push((*window, total.saturating_sub(older)));
        }
        Ok(out)
    }

    /// Count a would-be removal of `object` in a checker version's spike window; returns how many distinct
    /// objects the window holds then.
    pub(super) fn add_spike(&mut self, scope: &str, object: &str, window_ms: u64) -> Result<u64, StoreError> {
        if !self.window_rows() {
            let now = self.now;
            let from = now.saturating_sub(window_ms);
            let r = self.scope_mut(scope)?;
            r.spike.retain(|(t, _)| *t >= from);
            if !r.spike.iter().any(|(_, o)| o == object) {
                r.spike.push((now, object.to_string()));
                let excess = r.spike.len().saturating_sub(safety::MAX_WINDOW_ENTRIES);
                r.spike.drain(..excess);
            }
            return Ok(r.spike.len() as u64);
        }
        let w = Window::Spike(scope);
        let total = self.trim(w, window_ms)?;
        let member = member_key(scope, object);
        if self.count_of(&member)? > 0 {
            return Ok(total);
        }
        self.w.counts.insert(member, self.now + 1);
        self.add_row(w, window_ms, total, object)
    }

    /// Count an agent of `scope` gone silent; returns how many the liveness window holds then.
    pub(super) fn add_silent(&mut self, scope: &str, window_ms: u64) -> Result<u64, StoreError> {
        if self.window_rows() {
            let w = Window::Silent(scope);
            let trimmed = self.trim(w, window_ms)?;
            return self.add_row(w, window_ms, trimmed, "");
        }
        let now = self.now;
        let r = self.scope_mut(scope)?;
        r.silent.push(now);
        safety::prune(&mut r.silent, now, window_ms);
        Ok(r.silent.len() as u64)
    }

    /// Drop every row of a window (its scope's record is going away, or its rows move into a list);
    /// returns them as (time, object, count), oldest first.
    fn take_rows(&mut self, w: Window<'_>) -> Result<Vec<(u64, String, u64)>, StoreError> {
        let prefix = w.prefix();
        let mut rows = Vec::new();
        self.walk_rows(&prefix, &prefix_end(&prefix), &mut |k, n| {
            rows.push((k.to_string(), n));
            true
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, n) in rows {
            if let Some((t, object)) = parse_row(&k, &prefix) {
                if let Window::Spike(scope) = w {
                    self.w.counts.insert(member_key(scope, object), 0);
                }
                out.push((t, object.to_string(), n));
            }
            self.w.counts.insert(k, 0);
        }
        w.set_total(self.scope_mut(w.scope())?, 0);
        Ok(out)
    }

    /// A scope record about to be dropped as empty may still hold silent rows (the liveness window does
    /// not keep a record, as its list did not): they go with it.
    pub(super) fn drop_silent_rows_of_empty(&mut self) -> Result<(), StoreError> {
        let names: Vec<String> = self
            .w
            .scopes
            .iter()
            .filter(|(_, r)| r.is_empty() && r.silent_rows > 0)
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.take_rows(Window::Silent(&n))?;
        }
        Ok(())
    }

    /// The entry raised `min_command_version` across [`WINDOW_ROWS_VERSION`] (`up`) or lowered it below:
    /// move every scope's windows from lists into rows, or back. Once per crossing, O(what the windows hold).
    pub(super) fn move_windows(&mut self, up: bool) -> Result<(), StoreError> {
        let cap = safety::MAX_WINDOW_ENTRIES;
        for name in self.scope_names()? {
            let kinds: Vec<String> = self.scope_mut(&name)?.kinds.keys().cloned().collect();
            if up {
                for kind in &kinds {
                    let times = std::mem::take(
                        &mut self.scope_mut(&name)?.kinds.entry(kind.clone()).or_default().entries,
                    );
                    let w = Window::Entries { scope: &name, kind };
                    for t in &times {
                        let key = row_key(&w.prefix(), *t, "");
                        let n = self.count_of(&key)?;
                        self.w.counts.insert(key, n + 1);
                    }
                    let rec = self.scope_mut(&name)?;
                    let total = w.total(rec) + times.len() as u64;
                    w.set_total(rec, total);
                }
                let spike = std::mem::take(&mut self.scope_mut(&name)?.spike);
                for (t, object) in &spike {
                    self.w.counts.insert(row_key(&Window::Spike(&name).prefix(), *t, object), 1);
                    self.w.counts.insert(member_key(&name, object), t + 1);
                }
                let silent = std::mem::take(&mut self.scope_mut(&name)?.silent);
                for t in &silent {
                    let key = row_key(&Window::Silent(&name).prefix(), *t, "");
                    let n = self.count_of(&key)?;
                    self.w.counts.insert(key, n + 1);
                }
                let rec = self.scope_mut(&name)?;
                rec.spike_rows += spike.len() as u64;
                rec.silent_rows += silent.len() as u64;
            } else {
                let expand = |rows: Vec<(u64, String, u64)>| -> Vec<u64> {
                    let mut v: Vec<u64> =
                        rows.into_iter().flat_map(|(t, _, n)| std::iter::repeat_n(t, n as usize)).collect();
                    let excess = v.len().saturating_sub(cap);
                    v.drain(..excess);
                    v
                };
                for kind in &kinds {
                    let rows = self.take_rows(Window::Entries { scope: &name, kind })?;
                    let mut times = expand(rows);
                    let k = self.scope_mut(&name)?.kinds.entry(kind.clone()).or_default();
                    k.entries.append(&mut times);
                    k.entries.sort_unstable();
                }
                let rows = self.take_rows(Window::Spike(&name))?;
                let mut spike: Vec<(u64, String)> = rows.into_iter().map(|(t, o, _)| (t, o)).collect();
                let excess = spike.len().saturating_sub(cap);
                spike.drain(..excess);
                let mut silent = expand(self.take_rows(Window::Silent(&name))?);
                let rec = self.scope_mut(&name)?;
                rec.spike.append(&mut spike);
                rec.silent.append(&mut silent);
                rec.silent.sort_unstable();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::mem::MemState;
    use crate::sm_seam::Policy;

    enum Op {
        Entry,
        Used(Vec<u64>),
        Spike(String),
        Silent,
    }

    const V10: u64 = WINDOW_ROWS_VERSION as u64 - 1;
    const V11: u64 = WINDOW_ROWS_VERSION as u64;

    /// Play entries of window operations at `version`, each entry a decision at its time written to the
    /// state as `decide_entry` does; returns what every operation returned, and the state.
    fn play(version: u64, entries: &[(u64, Vec<Op>)]) -> (Vec<Vec<u64>>, MemState) {
        let policy = Policy::default();
        let mut state = MemState::default();
        let mut out = Vec::new();
        for (now, ops) in entries {
            let d = {
                let mut d = Decider::new(&state, &policy, *now).expect("decider");
                d.min_version = version;
                d.scope_mut("rack=r1").expect("scope").agents = 40;
                for op in ops {
                    out.push(match op {
                        Op::Entry => {
                            d.add_entry("cluster", "disk", 60_000).expect("add");
                            Vec::new()
                        }
                        Op::Used(ws) => {
                            let used = d.entries_used("cluster", "disk", ws, 60_000).expect("used");
                            used.into_iter().map(|(_, n)| n).collect()
                        }
                        Op::Spike(o) => vec![d.add_spike("checker=smart@1", o, 60_000).expect("spike")],
                        Op::Silent => vec![d.add_silent("rack=r1", 60_000).expect("silent")],
                    });
                }
                d.drop_silent_rows_of_empty().expect("drop");
                d.finish(Vec::new())
            };
            state.write(&d, crate::model::ChangelogLimits::default()).expect("write");
        }
        (out, state)
    }

    fn rows(s: &MemState, prefix: &str) -> usize {
        s.counts.keys().filter(|k| k.starts_with(prefix)).count()
    }

    #[test]
    fn a_window_counts_from_its_first_millisecond_in_rows_as_in_lists() {
        let entries = vec![
            (1_000, vec![Op::Entry, Op::Silent, Op::Spike("disk/h1/sda".into())]),
            (31_000, vec![Op::Entry, Op::Entry, Op::Silent, Op::Spike("disk/h1/sda".into())]),
            (61_000, vec![Op::Used(vec![60_000, 30_000]), Op::Silent, Op::Spike("disk/h2/sda".into())]),
            (61_001, vec![Op::Used(vec![30_000, 60_000]), Op::Silent, Op::Spike("disk/h1/sda".into())]),
            (200_000, vec![Op::Used(vec![60_000]), Op::Silent, Op::Spike("disk/h3/sda".into())]),
        ];
        let (lists, at10) = play(V10, &entries);
        let (rows_out, at11) = play(V11, &entries);
        assert_eq!(lists, rows_out);
        let want: Vec<Vec<u64>> = vec![
            // 1,000: an entry, an agent silent, a removal.
            vec![],
            vec![1],
            vec![1],
            // 31,000: two entries, a second agent, the same object again (counted once).
            vec![],
            vec![],
            vec![2],
            vec![1],
            // 61,000: the window's first millisecond (1,000) still counts, in the 60 s windows only.
            vec![3, 2],
            vec![3],
            vec![2],
            // 61,001: it has left; disk/h1/sda's removal at 1,000 with it, so that object counts anew.
            vec![0, 2],
            vec![3],
            vec![2],
            // 200,000: everything before has left.
            vec![0],
            vec![1],
            vec![1],
        ];
        assert_eq!(rows_out, want);
        // What is left: at 10 in the records, at 11 in rows (only those within the windows).
        assert_eq!(rows(&at10, WINDOWS), 0);
        assert!(at11.scopes.values().all(|r| r.spike.is_empty() && r.silent.is_empty()));
        assert_eq!((rows(&at11, SPIKE), rows(&at11, MEMBERS), rows(&at11, SILENT)), (1, 1, 1));
        assert_eq!(rows(&at11, ENTRIES), 0, "the entries window was trimmed when read at 200,000");
        // A list was pruned only when added to, so at 10 the stale times kept the record.
        assert!(!at11.scopes.contains_key("cluster"), "a scope left with nothing goes");
        assert_eq!(at10.scopes["cluster"].kinds["disk"].entries, [1_000, 31_000, 31_000]);
        assert_eq!(at11.scopes["checker=smart@1"].spike_rows, 1);
    }

    #[test]
    fn a_full_window_drops_its_oldest_in_rows_as_in_lists() {
        let cap = safety::MAX_WINDOW_ENTRIES;
        let objects = |from: usize, n: usize| -> Vec<Op> {
            (from..from + n).map(|i| Op::Spike(format!("disk/h{i}/sda"))).collect()
        };
        let mut first: Vec<Op> = (0..cap + 3).map(|_| Op::Entry).collect();
        first.extend(objects(0, cap + 3));
        let entries = vec![
            (1_000, first),
            (2_000, vec![Op::Used(vec![60_000]), Op::Entry, Op::Used(vec![60_000])]),
            // disk/h0/sda was dropped past the cap: counted again; disk/h5/sda is still in the window.
            (3_000, vec![Op::Spike("disk/h0/sda".into()), Op::Spike("disk/h5/sda".into())]),
        ];
        let (lists, _) = play(V10, &entries);
        let (rows_out, at11) = play(V11, &entries);
        assert_eq!(lists, rows_out);
        let n = cap as u64;
        assert_eq!(rows_out[2 * cap + 5], vec![n], "the last of the burst");
        assert_eq!(rows_out[2 * cap + 6..], [vec![n], vec![], vec![n], vec![n], vec![n]]);
        assert_eq!((rows(&at11, SPIKE), rows(&at11, MEMBERS)), (cap, cap));
        assert_eq!(at11.scopes["cluster"].kinds["disk"].windowed, n);
        assert_eq!(rows(&at11, ENTRIES), 2, "one row per entry time, the first one cut");
    }

    #[test]
    fn raising_to_11_moves_the_lists_into_rows_and_lowering_moves_them_back() {
        let mut entries: Vec<(u64, Vec<Op>)> = Vec::new();
        for i in 0..5u64 {
            let spikes = (0..3).map(|k| Op::Spike(format!("disk/h{i}/sd{k}")));
            let mut ops: Vec<Op> = vec![Op::Entry, Op::Entry, Op::Silent];
            ops.extend(spikes);
            entries.push((1_000 + i * 10_000, ops));
        }
        let (_, lists) = play(V10, &entries);
        let policy = Policy::default();
        let step = |state: &mut MemState, version: u32| {
            let cmd =
                crate::model::Command::SetMinCommandVersion { version, by: "t".into(), reason: "t".into() };
            let d = super::super::decide::decide(state, &policy, cmd, 50_000).expect("decide");
            state.write(&d, crate::model::ChangelogLimits::default()).expect("write");
        };
        let mut state = lists.clone();
        step(&mut state, WINDOW_ROWS_VERSION);
        assert!(state.scopes.values().all(|r| r.spike.is_empty()
            && r.silent.is_empty()
            && r.kinds.values().all(|k| k.entries.is_empty())));
        assert_eq!(state.scopes["cluster"].kinds["disk"].windowed, 10);
        assert_eq!(rows(&state, ENTRIES), 5, "one row per time, holding 2 each");
        assert_eq!(
            state.counts[&row_key(&Window::Entries { scope: "cluster", kind: "disk" }.prefix(), 11_000, "")],
            2
        );
        assert_eq!(
            (state.scopes["checker=smart@1"].spike_rows, rows(&state, SPIKE), rows(&state, MEMBERS)),
            (15, 15, 15)
        );
        assert_eq!((state.scopes["rack=r1"].silent_rows, rows(&state, SILENT)), (5, 5));
        // Within one version a repeated raise moves nothing.
        let before = state.counts.clone();
        step(&mut state, WINDOW_ROWS_VERSION + 1);
        assert_eq!(
            state.counts.iter().filter(|(k, _)| k.starts_with(WINDOWS)).collect::<Vec<_>>(),
            before.iter().filter(|(k, _)| k.starts_with(WINDOWS)).collect::<Vec<_>>()
        );
        step(&mut state, WINDOW_ROWS_VERSION - 1);
        assert_eq!(rows(&state, WINDOWS), 0, "every row moved back");
        for (name, r) in &lists.scopes {
            let back = &state.scopes[name];
            assert_eq!(
                (&back.spike, &back.silent, back.spike_rows, back.silent_rows),
                (&r.spike, &r.silent, 0, 0),
                "{name}"
            );
            for (kind, k) in &r.kinds {
                assert_eq!(
                    (&back.kinds[kind].entries, back.kinds[kind].windowed),
                    (&k.entries, 0),
                    "{name} {kind}"
                );
            }
        }
    }

    #[test]
    fn row_keys_sort_by_time_and_parse_back() {
        let p = Window::Entries { scope: "rack=r1", kind: "disk" }.prefix();
        let (a, b) = (row_key(&p, 999, ""), row_key(&p, 1_000, ""));
        assert!(a < b, "time order is key order");
        assert!(b < prefix_end(&p) && a > p, "rows sit between the prefix and its end");
        assert_eq!(parse_row(&b, &p), Some((1_000, "")));
        let s = Window::Spike("checker=disk@1.2").prefix();
        let k = row_key(&s, 7, "host-1/disk/sda");
        assert_eq!(parse_row(&k, &s), Some((7, "host-1/disk/sda")));
        assert_eq!(parse_row("w/e/other", &p), None);
        // Another scope whose name extends this one's sorts outside its rows.
        let longer = Window::Entries { scope: "rack=r10", kind: "disk" }.prefix();
        assert!(row_key(&longer, 0, "") > prefix_end(&p) || row_key(&longer, 0, "") < p);
    }
}
