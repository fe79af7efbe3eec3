//! The latest finding of each checker about an object ([`crate::model::ObjectRecord::evidence`]).
//!
//! A record read from the store keeps each checker's finding as the JSON it was stored as, and decodes it
//! only when something looks inside ([`Evidence::get`], [`Evidence::findings`]). Written back untouched,
//! that JSON is copied as it is. A finding replaces one checker's evidence and leaves the others alone,
//! so on the apply path most evidence is read and written without being decoded or encoded; decoding it
//! was most of a record's decode (issue 17). The stored bytes are the same either way: a record encodes
//! compactly, and a stored finding is copied byte for byte.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use state_machines::Finding;

use crate::store::StoreError;

/// The table a finding that does not decode is reported in.
const TABLE: &str = "fsm_objects";

/// One checker's finding: as stored, or as given.
#[derive(Clone)]
enum Held {
    /// The finding's JSON as read from the store, not decoded yet.
    Stored(Box<RawValue>),
    Finding(Finding),
}

impl Held {
    fn finding(&self) -> Result<Cow<'_, Finding>, StoreError> {
        match self {
            Held::Finding(f) => Ok(Cow::Borrowed(f)),
            Held::Stored(raw) => serde_json::from_str(raw.get())
                .map(Cow::Owned)
                .map_err(|e| StoreError::Corrupt { table: TABLE, message: format!("evidence: {e}") }),
        }
    }

    fn time_ms(&self) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct Time {
            time_ms: u64,
        }
        match self {
            Held::Finding(f) => Ok(f.time_ms),
            Held::Stored(raw) => serde_json::from_str::<Time>(raw.get())
                .map(|t| t.time_ms)
                .map_err(|e| StoreError::Corrupt { table: TABLE, message: format!("evidence: {e}") }),
        }
    }
}

/// The latest finding of each checker about one object, by checker name.
#[derive(Clone, Default)]
pub struct Evidence(BTreeMap<String, Held>);

impl Evidence {
    pub fn new() -> Self {
        Evidence::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains_key(&self, checker: &str) -> bool {
        self.0.contains_key(checker)
    }

    /// Set `checker`'s finding (replacing the one it had).
    pub fn insert(&mut self, checker: String, finding: Finding) {
        self.0.insert(checker, Held::Finding(finding));
    }

    /// Forget `checker`'s finding; whether it had one.
    pub fn remove(&mut self, checker: &str) -> bool {
        self.0.remove(checker).is_some()
    }

    /// `checker`'s finding, decoded. A stored finding that does not decode is a corrupt record.
    pub fn get(&self, checker: &str) -> Result<Option<Finding>, StoreError> {
        self.0.get(checker).map(|h| h.finding().map(Cow::into_owned)).transpose()
    }

    /// Every finding, decoded, in checker name order.
    pub fn findings(&self) -> Result<Vec<Finding>, StoreError> {
        self.0.values().map(|h| h.finding().map(Cow::into_owned)).collect()
    }

    /// The checker whose finding is the oldest (ties by name: the same on every member), reading only the
    /// findings' times.
    pub fn stalest(&self) -> Result<Option<String>, StoreError> {
        let mut best: Option<(u64, &str)> = None;
        for (k, h) in &self.0 {
            let t = h.time_ms()?;
            if best.is_none_or(|(bt, bk)| (t, k.as_str()) < (bt, bk)) {
                best = Some((t, k));
            }
        }
        Ok(best.map(|(_, k)| k.to_string()))
    }
}

impl FromIterator<(String, Finding)> for Evidence {
    fn from_iter<I: IntoIterator<Item = (String, Finding)>>(iter: I) -> Self {
        Evidence(iter.into_iter().map(|(k, f)| (k, Held::Finding(f))).collect())
    }
}

/// Equal when they hold the same findings, however each is held (a stored finding that does not decode
/// equals nothing but the same bytes).
impl PartialEq for Evidence {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|((ka, a), (kb, b))| {
                ka == kb
                    && match (a, b) {
                        (Held::Stored(x), Held::Stored(y)) if x.get() == y.get() => true,
                        (Held::Finding(x), Held::Finding(y)) => x == y,
                        _ => matches!((a.finding(), b.finding()), (Ok(x), Ok(y)) if x == y),
                    }
            })
    }
}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, h) in &self.0 {
            match h {
                Held::Stored(raw) => m.entry(k, &format_args!("(stored) {}", raw.get())),
                Held::Finding(x) => m.entry(k, x),
            };
        }
        m.finish()
    }
}

impl Serialize for Evidence {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, h) in &self.0 {
            match h {
                Held::Stored(raw) => m.serialize_entry(k, raw)?,
                Held::Finding(f) => m.serialize_entry(k, f)?,
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Evidence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Evidence;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of checker names to findings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Evidence, A::Error> {
                let mut m = BTreeMap::new();
                while let Some((k, v)) = a.next_entry::<String, Box<RawValue>>()? {
                    m.insert(k, Held::Stored(v));
                }
                Ok(Evidence(m))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use state_machines::Severity;

    use super::*;

    fn finding(checker: &str, time_ms: u64) -> Finding {
        Finding {
            object: "disk/h1/sda".parse().expect("id"),
            severity: Severity::Warning,
            checker: checker.into(),
            version: "1.0.0".into(),
            rule: "r".into(),
            evidence: "a \"quoted\" line\twith é".into(),
            readings: [("smart_5_raw".to_string(), "8".to_string())].into(),
            time_ms,
            shadow: false,
        }
    }

    fn stored(e: &Evidence) -> Evidence {
        serde_json::from_slice(&serde_json::to_vec(e).expect("encode")).expect("decode")
    }

    #[test]
    fn stored_findings_are_copied_as_they_are_and_decode_to_what_was_given() {
        let given: Evidence =
            [("io".to_string(), finding("io", 7)), ("smart".to_string(), finding("smart", 5))]
                .into_iter()
                .collect();
        let bytes = serde_json::to_vec(&given).expect("encode");
        // The same JSON as the map of findings it replaces.
        let plain: BTreeMap<String, Finding> =
            given.findings().expect("decoded").into_iter().map(|f| (f.checker.clone(), f)).collect();
        assert_eq!(bytes, serde_json::to_vec(&plain).expect("encode"));
        let back = stored(&given);
        assert_eq!(serde_json::to_vec(&back).expect("encode"), bytes, "written back byte for byte");
        assert_eq!(back, given);
        assert_eq!(back.get("smart").expect("decodes"), Some(finding("smart", 5)));
        assert_eq!(back.get("kernel-log").expect("decodes"), None);
        assert_eq!(back.findings().expect("decode"), vec![finding("io", 7), finding("smart", 5)]);
        assert_eq!(back.stalest().expect("times"), Some("smart".to_string()));
    }

    #[test]
    fn a_replaced_finding_is_the_new_one_and_the_others_stay_stored() {
        let mut e = stored(
            &[("io".to_string(), finding("io", 7)), ("smart".to_string(), finding("smart", 5))]
                .into_iter()
                .collect(),
        );
        e.insert("smart".into(), finding("smart", 9));
        assert!(e.contains_key("smart") && e.len() == 2);
        let again = stored(&e);
        assert_eq!(again.get("smart").expect("decodes"), Some(finding("smart", 9)));
        assert_eq!(again.get("io").expect("decodes"), Some(finding("io", 7)));
        assert_eq!(again.stalest().expect("times"), Some("io".to_string()));
        assert!(e.remove("io") && !e.remove("io"));
        assert_eq!(e.findings().expect("decode"), vec![finding("smart", 9)]);
    }

    #[test]
    fn ties_in_time_go_by_name_and_an_empty_map_has_no_stalest() {
        let e = stored(
            &[("b".to_string(), finding("b", 5)), ("a".to_string(), finding("a", 5))].into_iter().collect(),
        );
        assert_eq!(e.stalest().expect("times"), Some("a".to_string()));
        assert_eq!(Evidence::new().stalest().expect("nothing"), None);
    }

    #[test]
    fn a_stored_finding_that_does_not_decode_is_a_corrupt_record_when_read() {
        let e: Evidence = serde_json::from_str(r#"{"smart":{"object":"not an id","time_ms":"soon"}}"#)
            .expect("any JSON value is taken as stored");
        assert!(
            matches!(e.get("smart"), Err(StoreError::Corrupt { table: "fsm_objects", .. })),
            "{:?}",
            e.get("smart")
        );
        assert!(e.findings().is_err());
        assert!(matches!(e.stalest(), Err(StoreError::Corrupt { .. })));
        assert_ne!(e, [("smart".to_string(), finding("smart", 1))].into_iter().collect::<Evidence>());
        assert_eq!(e, e.clone(), "the same bytes");
        // Not a map at all: the record does not decode.
        assert!(serde_json::from_str::<Evidence>("[1]").is_err());
    }
}
