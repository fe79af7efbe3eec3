//! Which objects and events a subscriber wants, and the bounded label cache that lets label selectors apply
//! to the watch stream. The master filters listings by everything and watches by kind and host only (events
//! carry no labels), so state and label selectors on events are applied here: state against the event's
//! new *or* previous state (a subscriber of ERROR objects also sees them leave ERROR), labels against the
//! object's labels as last listed or fetched.

use std::collections::BTreeMap;

use proto::api;
use state_machines::{Kind, ObjectId, State};

use crate::error::Error;
use crate::types::{Change, Object};

/// Default bound on the label cache: a datacenter has ~10k machines with a few dozen objects each; a
/// subscriber usually watches one kind, so 200k entries (~50 MiB at worst) cover it. Least recently used
/// entries are evicted; an evicted object costs one GetObject when it next appears.
pub const LABEL_CACHE_MAX: usize = 200_000;
/// Most label selectors in one filter, and their key/value lengths (the master's label limits).
pub const MAX_SELECTORS: usize = 64;
pub const MAX_SELECTOR_KEY: usize = 64;
pub const MAX_SELECTOR_VALUE: usize = 256;

/// What to list and watch. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub kind: Option<Kind>,
    pub host: Option<String>,
    pub state: Option<State>,
    /// key=value selectors, all of which must match.
    pub labels: BTreeMap<String, String>,
}

impl Filter {
    pub fn kind(kind: Kind) -> Filter {
        Filter { kind: Some(kind), ..Filter::default() }
    }
    pub fn with_host(mut self, host: &str) -> Filter {
        self.host = Some(host.to_string());
        self
    }
    pub fn with_state(mut self, state: State) -> Filter {
        self.state = Some(state);
        self
    }
    pub fn with_label(mut self, key: &str, value: &str) -> Filter {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Parse `key=value` selectors (the CLI form).
    pub fn with_selectors<'a>(mut self, sel: impl IntoIterator<Item = &'a str>) -> Result<Filter, Error> {
        for s in sel {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("label selector {s:?} is not key=value")))?;
            self.labels.insert(k.to_string(), v.to_string());
        }
        self.validate()?;
        Ok(self)
    }

    /// Refuse what the master would refuse, before any call.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(h) = &self.host {
            state_machines::id::validate_host(h).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        if self.labels.len() > MAX_SELECTORS {
            return Err(Error::Invalid(format!(
                "{} label selectors (limit {MAX_SELECTORS})",
                self.labels.len()
            )));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > MAX_SELECTOR_KEY || v.len() > MAX_SELECTOR_VALUE {
                return Err(Error::Invalid(format!(
                    "label selector {:?} must have a 1..={MAX_SELECTOR_KEY} byte key and a value of at most \
                     {MAX_SELECTOR_VALUE} bytes",
                    k.chars().take(40).collect::<String>()
                )));
            }
            if k.contains('=') || k.chars().chain(v.chars()).any(char::is_control) {
                return Err(Error::Invalid(format!(
                    "label selector key {k:?} has '=' or control characters"
                )));
            }
        }
        Ok(())
    }

    pub fn matches_object(&self, o: &Object) -> bool {
        self.matches_id(&o.id)
            && self.state.is_none_or(|s| o.state == s)
            && self.labels.iter().all(|(k, v)| o.labels.get(k) == Some(v))
    }

    fn matches_id(&self, id: &ObjectId) -> bool {
        self.kind.is_none_or(|k| id.kind() == k) && self.host.as_deref().is_none_or(|h| id.host() == h)
    }

    /// Whether the event matches everything but labels (which need [`Filter::matches_labels`]).
    pub fn matches_event(&self, e: &Change) -> bool {
        let id_ok = match &e.object {
            Some(id) => self.matches_id(id),
            None => self.kind.is_none() && self.host.is_none(),
        };
        let state_ok = self.state.is_none_or(|s| e.state == Some(s) || e.from_state == Some(s));
        id_ok && state_ok
    }

    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub fn needs_labels(&self) -> bool {
        !self.labels.is_empty()
    }

    pub fn list_request(&self, limit: u32) -> api::ListObjectsRequest {
        api::ListObjectsRequest {
            kind: self.kind.map(|k| k.to_string()).unwrap_or_default(),
            state: self.state.map(|s| s.to_string()).unwrap_or_default(),
            host: self.host.clone().unwrap_or_default(),
            labels: self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            stale: false,
            limit,
            page_token: String::new(),
        }
    }

    pub fn watch_request(&self, from_revision: u64) -> api::WatchRequest {
        api::WatchRequest {
            from_revision,
            kind: self.kind.map(|k| k.to_string()).unwrap_or_default(),
            host: self.host.clone().unwrap_or_default(),
        }
    }
}

/// Object id -> labels, bounded, least recently used evicted first. Deterministic (ordered maps and a
/// use counter, no clock).
#[derive(Debug)]
pub struct LabelCache {
    cap: usize,
    clock: u64,
    entries: BTreeMap<ObjectId, (BTreeMap<String, String>, u64)>,
    by_use: BTreeMap<u64, ObjectId>,
}

impl LabelCache {
    pub fn new(cap: usize) -> LabelCache {
        LabelCache { cap: cap.max(1), clock: 0, entries: BTreeMap::new(), by_use: BTreeMap::new() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The cached labels of `id` (marking it used).
    pub fn get(&mut self, id: &ObjectId) -> Option<BTreeMap<String, String>> {
        let now = self.tick();
        let (labels, used) = self.entries.get_mut(id)?;
        self.by_use.remove(used);
        *used = now;
        self.by_use.insert(now, id.clone());
        Some(labels.clone())
    }

    pub fn insert(&mut self, id: ObjectId, labels: BTreeMap<String, String>) {
        let now = self.tick();
        if let Some((_, used)) = self.entries.insert(id.clone(), (labels, now)) {
            self.by_use.remove(&used);
        }
        self.by_use.insert(now, id);
        while self.entries.len() > self.cap {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            self.entries.remove(&oldest);
        }
    }

    pub fn remove(&mut self, id: &ObjectId) {
        if let Some((_, used)) = self.entries.remove(id) {
            self.by_use.remove(&used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Change;

    fn id(s: &str) -> ObjectId {
        s.parse().expect("id")
    }

    fn ev(object: &str, state: &str, from: &str) -> Change {
        Change {
            revision: 1,
            time_ms: 0,
            object: (!object.is_empty()).then(|| id(object)),
            what: if from.is_empty() { "finding" } else { "transition" }.into(),
            state: (!state.is_empty()).then(|| state.parse().expect("state")),
            from_state: (!from.is_empty()).then(|| from.parse().expect("state")),
            grade: None,
            detail: String::new(),
        }
    }

    fn check(f: &Filter, e: &Change, want: bool) {
        assert_eq!(f.matches_event(e), want, "{f:?} vs {e:?}");
    }

    #[test]
    fn events_match_by_kind_host_and_new_or_old_state() {
        let f = Filter::kind(Kind::Disk).with_state(State::Error);
        check(&f, &ev("disk/h1/sda", "ERROR", "GOOD"), true);
        check(&f, &ev("disk/h1/sda", "REPAIR", "ERROR"), true); // leaving ERROR is news for ERROR watchers
        check(&f, &ev("disk/h1/sda", "GOOD", ""), false);
        check(&f, &ev("machine/h1", "ERROR", "GOOD"), false);
        check(&f, &ev("", "", ""), false);
        let f = Filter::default().with_host("h2");
        check(&f, &ev("disk/h2/sda", "GOOD", ""), true);
        check(&f, &ev("disk/h1/sda", "GOOD", ""), false);
        check(&Filter::default(), &ev("", "", ""), true);
    }

    #[test]
    fn label_selectors_need_every_pair() {
        let f = Filter::default().with_selectors(["rack=r1", "pool=hot"]).expect("valid");
        assert!(f.needs_labels());
        let mut l: BTreeMap<String, String> = [("rack".to_string(), "r1".to_string())].into_iter().collect();
        assert!(!f.matches_labels(&l));
        l.insert("pool".into(), "hot".into());
        assert!(f.matches_labels(&l));
        l.insert("rack".into(), "r2".into());
        assert!(!f.matches_labels(&l));
        assert_eq!(f.list_request(5).labels, vec!["pool=hot", "rack=r1"]);
    }

    #[test]
    fn bad_filters_are_refused_before_any_call() {
        assert!(matches!(Filter::default().with_selectors(["norack"]), Err(Error::Invalid(_))));
        assert!(matches!(Filter::default().with_selectors(["=x"]), Err(Error::Invalid(_))));
        assert!(Filter::default().with_host("bad host/").validate().is_err());
        let long = format!("{}=v", "k".repeat(MAX_SELECTOR_KEY + 1));
        assert!(Filter::default().with_selectors([long.as_str()]).is_err());
        let many: Vec<String> = (0..=MAX_SELECTORS).map(|i| format!("k{i}=v")).collect();
        assert!(Filter::default().with_selectors(many.iter().map(String::as_str)).is_err());
        let at_limit: Vec<String> = (0..MAX_SELECTORS).map(|i| format!("k{i}=v")).collect();
        assert!(Filter::default().with_selectors(at_limit.iter().map(String::as_str)).is_ok());
    }

    #[test]
    fn label_cache_evicts_the_least_recently_used_at_its_bound() {
        let labels = |v: &str| -> BTreeMap<String, String> { [("rack".to_string(), v.to_string())].into() };
        let mut c = LabelCache::new(2);
        c.insert(id("disk/h/a"), labels("1"));
        c.insert(id("disk/h/b"), labels("2"));
        assert_eq!(c.get(&id("disk/h/a")), Some(labels("1"))); // a is now the most recent
        c.insert(id("disk/h/c"), labels("3"));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&id("disk/h/b")), None, "b was least recently used");
        assert!(c.get(&id("disk/h/a")).is_some() && c.get(&id("disk/h/c")).is_some());
        // Re-inserting updates in place without growing; remove forgets.
        c.insert(id("disk/h/c"), labels("9"));
        assert_eq!((c.len(), c.get(&id("disk/h/c"))), (2, Some(labels("9"))));
        c.remove(&id("disk/h/c"));
        assert_eq!((c.len(), c.get(&id("disk/h/c"))), (1, None));
        // Internal index stays consistent with entries through many operations at the bound.
        for i in 0..1000 {
            c.insert(id(&format!("disk/h/x{}", i % 7)), labels("x"));
            let _ = c.get(&id(&format!("disk/h/x{}", (i * 3) % 7)));
            assert!(c.len() <= 2);
            assert_eq!(c.by_use.len(), c.entries.len());
        }
        assert_eq!(LabelCache::new(0).cap, 1, "a zero bound still caches one entry");
    }
}
