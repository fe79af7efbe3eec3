//! Object ids: `KIND/HOST[/NAME]` (`machine/host-017`, `disk/host-017/sdb`, `dimm/host-017/mc0-dimm3`,
//! `nic/host-017/eth0`, `checker/host-017/smart`), and the network devices of issue 16, which belong to no
//! machine: `switch/NAME` and `link/A--B` (like a machine id: no name part; the "host" part is the device's
//! name, so code that means a host must ask [`Kind::is_host_object`] first). Parsing never panics; a bad id is
//! an [`IdError`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest host name we accept (DNS limit).
pub const MAX_HOST_LEN: usize = 253;
/// Longest object name within a host (device names, DIMM labels, checker names are short; this is generous).
pub const MAX_NAME_LEN: usize = 128;

/// The kinds of objects Huatuo describes. `Checker` is the pseudo-object a broken checker's findings are
/// about: it never has a state machine, so a broken checker can never move a host's hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Machine,
    Disk,
    Dimm,
    Nic,
    Checker,
    /// A network switch (`switch/NAME`, NAME as the topology names it). Not a host: no agent, no actions.
    Switch,
    /// A link between two devices or a host and its ToR (`link/A--B`, A < B). Not a host either.
    Link,
}

impl Kind {
    /// Every kind, in a fixed order (used by listings and tests).
    pub const ALL: [Kind; 7] =
        [Kind::Machine, Kind::Disk, Kind::Dimm, Kind::Nic, Kind::Checker, Kind::Switch, Kind::Link];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Machine => "machine",
            Kind::Disk => "disk",
            Kind::Dimm => "dimm",
            Kind::Nic => "nic",
            Kind::Checker => "checker",
            Kind::Switch => "switch",
            Kind::Link => "link",
        }
    }

    /// Whether ids of this kind carry a `/NAME` part.
    pub fn has_name(self) -> bool {
        !matches!(self, Kind::Machine | Kind::Switch | Kind::Link)
    }

    /// Whether an object of this kind lives in a host (its id's second part is a host name): false for the
    /// network devices `switch` and `link`, which no agent runs on and no machine contains.
    pub fn is_host_object(self) -> bool {
        !self.is_network()
    }

    /// The network device kinds of issue 16 (`switch`, `link`): read-only for actions, never a host.
    pub fn is_network(self) -> bool {
        matches!(self, Kind::Switch | Kind::Link)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Ok(match s {
            "machine" => Kind::Machine,
            "disk" => Kind::Disk,
            "dimm" => Kind::Dimm,
            "nic" => Kind::Nic,
            "checker" => Kind::Checker,
            "switch" => Kind::Switch,
            "link" => Kind::Link,
            other => return Err(IdError::UnknownKind(truncate(other))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty object id")]
    Empty,
    #[error("unknown object kind {0:?} (expected machine, disk, dimm, nic, checker, switch or link)")]
    UnknownKind(String),
    #[error("object id {0:?} has no host part (expected KIND/HOST[/NAME])")]
    MissingHost(String),
    #[error("object id {0:?} needs a name: KIND/HOST/NAME")]
    MissingName(String),
    #[error("object id {0:?}: a machine, switch or link id has no name part (expected KIND/NAME)")]
    UnexpectedName(String),
    #[error("object id {0:?} has too many parts (expected KIND/HOST[/NAME])")]
    TooManyParts(String),
    #[error("invalid host {0:?}: 1-253 characters of A-Z a-z 0-9 . - _")]
    BadHost(String),
    #[error("invalid name {0:?}: 1-128 characters of A-Z a-z 0-9 . - _ : @ +")]
    BadName(String),
    #[error("invalid link id {0:?}: expected link/A--B with two device names, A before B")]
    BadLink(String),
}

/// Keep error messages bounded even when the input is hostile.
fn truncate(s: &str) -> String {
    const LIMIT: usize = 80;
    if s.len() <= LIMIT {
        return s.to_string();
    }
    let mut end = LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// What separates the two ends of a link id (`link/tor-1--agg-2`).
pub const LINK_SEP: &str = "--";

/// A validated host name.
pub fn validate_host(host: &str) -> Result<(), IdError> {
    let ok = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok { Ok(()) } else { Err(IdError::BadHost(truncate(host))) }
}

fn validate_name(name: &str) -> Result<(), IdError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'@' | b'+'));
    if ok { Ok(()) } else { Err(IdError::BadName(truncate(name))) }
}

/// `KIND/HOST[/NAME]`. Constructed only through [`ObjectId::new`] or parsing, so it is always valid.
///
/// Kept as its canonical text with the host's end, so [`ObjectId::as_str`] and `Display` copy no parts
/// together: ids are written as keys, change events and archive rows for every finding, and formatting
/// them from parts was most of a tenth of a member's apply under load (issue 17's profile).
#[derive(Clone)]
pub struct ObjectId {
    kind: Kind,
    /// `KIND/HOST[/NAME]`.
    full: String,
    /// Where the host ends in `full` (the `/` before the name, or the end).
    host_end: usize,
}

impl ObjectId {
    pub fn new(kind: Kind, host: &str, name: Option<&str>) -> Result<Self, IdError> {
        validate_host(host)?;
        match (kind.has_name(), name) {
            (true, None) => return Err(IdError::MissingName(format!("{kind}/{}", truncate(host)))),
            (false, Some(_)) => {
                return Err(IdError::UnexpectedName(format!("{kind}/{}", truncate(host))));
            }
            (true, Some(n)) => validate_name(n)?,
            (false, None) => {}
        }
        Ok(Self::from_parts(kind, host, name))
    }

    /// The id of validated parts.
    fn from_parts(kind: Kind, host: &str, name: Option<&str>) -> Self {
        let k = kind.as_str();
        let mut full = String::with_capacity(k.len() + 2 + host.len() + name.map_or(0, str::len));
        full.push_str(k);
        full.push('/');
        full.push_str(host);
        let host_end = full.len();
        if let Some(n) = name {
            full.push('/');
            full.push_str(n);
        }
        ObjectId { kind, full, host_end }
    }

    pub fn machine(host: &str) -> Result<Self, IdError> {
        Self::new(Kind::Machine, host, None)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The canonical text, `KIND/HOST[/NAME]` (what `Display` writes).
    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn host(&self) -> &str {
        &self.full[self.kind.as_str().len() + 1..self.host_end]
    }

    pub fn name(&self) -> Option<&str> {
        self.full.get(self.host_end + 1..)
    }

    /// The machine this object lives in; `None` for a network device (`switch`, `link`), which lives in
    /// no machine.
    pub fn machine_id(&self) -> Option<ObjectId> {
        self.kind.is_host_object().then(|| Self::from_parts(Kind::Machine, self.host(), None))
    }

    /// The host this object lives in; `None` for a network device (its second part names the device).
    pub fn host_name(&self) -> Option<&str> {
        self.kind.is_host_object().then(|| self.host())
    }

    /// `switch/NAME`.
    pub fn switch(name: &str) -> Result<Self, IdError> {
        Self::new(Kind::Switch, name, None)
    }

    /// `link/A--B` with the ends in order (A < B), so both directions name one object.
    pub fn link(a: &str, b: &str) -> Result<Self, IdError> {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        validate_host(lo)?;
        validate_host(hi)?;
        if lo == hi || lo.contains(LINK_SEP) || hi.contains(LINK_SEP) {
            return Err(IdError::BadLink(truncate(&format!("link/{lo}{LINK_SEP}{hi}"))));
        }
        Self::new(Kind::Link, &format!("{lo}{LINK_SEP}{hi}"), None)
    }

    /// The two ends of a `link/A--B` id.
    pub fn link_ends(&self) -> Option<(&str, &str)> {
        if self.kind != Kind::Link {
            return None;
        }
        self.host().split_once(LINK_SEP)
    }
}

// Equality and hashing by the canonical text (one text per id); the order stays (kind, host, name), the
// order of the parts, which listings and the state machine's maps have always had.
impl PartialEq for ObjectId {
    fn eq(&self, other: &Self) -> bool {
        self.full == other.full
    }
}

impl Eq for ObjectId {}

impl std::hash::Hash for ObjectId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.full.hash(state);
    }
}

impl Ord for ObjectId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.kind
            .cmp(&other.kind)
            .then_with(|| self.host().cmp(other.host()))
            .then_with(|| self.name().cmp(&other.name()))
    }
}

impl PartialOrd for ObjectId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectId")
            .field("kind", &self.kind)
            .field("host", &self.host())
            .field("name", &self.name())
            .finish()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for ObjectId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let mut parts = s.splitn(4, '/');
        let kind: Kind = parts.next().unwrap_or_default().parse()?;
        let host = parts.next().ok_or_else(|| IdError::MissingHost(truncate(s)))?;
        let name = parts.next();
        if parts.next().is_some() {
            return Err(IdError::TooManyParts(truncate(s)));
        }
        let id = ObjectId::new(kind, host, name)?;
        if kind == Kind::Link {
            // Both ends named, in order: `link/B--A` would be a second object for the same link.
            match id.link_ends() {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && a < b && !b.contains(LINK_SEP) => {}
                _ => return Err(IdError::BadLink(truncate(s))),
            }
        }
        Ok(id)
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = ObjectId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object id KIND/HOST[/NAME]")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ObjectId, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        let got = input.parse::<ObjectId>();
        match (got, expected) {
            (Ok(id), Ok(want)) => assert_eq!(id.to_string(), want, "input {input:?}"),
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "input {input:?}: {e}"),
            (got, want) => panic!("input {input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_and_rejects() {
        check("machine/host-017", Ok("machine/host-017"));
        check("disk/host-017/sdb", Ok("disk/host-017/sdb"));
        check("dimm/host-017/mc0-dimm3", Ok("dimm/host-017/mc0-dimm3"));
        check("nic/host-017/eth0", Ok("nic/host-017/eth0"));
        check("checker/h1/smart", Ok("checker/h1/smart"));
        check("", Err("empty"));
        check("machine", Err("no host"));
        check("machine/", Err("invalid host"));
        check("machine/h1/x", Err("no name part"));
        check("disk/h1", Err("needs a name"));
        check("disk/h1/", Err("invalid name"));
        check("disk/h1/sda/1", Err("too many parts"));
        check("gpu/h1/0", Err("unknown object kind"));
        check("disk/h 1/sda", Err("invalid host"));
        check("disk/h1/s\u{0}a", Err("invalid name"));
        check(&format!("machine/{}", "a".repeat(254)), Err("invalid host"));
        check("switch/tor-7", Ok("switch/tor-7"));
        check("switch/tor-7/x", Err("no name part"));
        check("link/agg-1--tor-7", Ok("link/agg-1--tor-7"));
        check("link/tor-7--agg-1", Err("invalid link"));
        check("link/tor-7", Err("invalid link"));
        check("link/--tor-7", Err("invalid link"));
        check("link/a--b--c", Err("invalid link"));
        check("link/a--b/x", Err("no name part"));
    }

    #[test]
    fn network_devices_are_not_hosts() {
        let s = ObjectId::switch("tor-7").expect("valid");
        assert_eq!(s.machine_id(), None);
        assert_eq!(s.host_name(), None);
        let l = ObjectId::link("tor-7", "agg-1").expect("valid");
        assert_eq!(l.to_string(), "link/agg-1--tor-7");
        assert_eq!(l.link_ends(), Some(("agg-1", "tor-7")));
        assert_eq!(l.to_string().parse::<ObjectId>(), Ok(l.clone()));
        assert_eq!(l.machine_id(), None);
        let n: ObjectId = "nic/h1/eth0".parse().expect("valid");
        assert_eq!(n.machine_id(), Some(ObjectId::machine("h1").expect("valid")));
        assert_eq!(n.host_name(), Some("h1"));
    }

    #[test]
    fn ids_order_by_their_parts_and_keep_one_text() {
        let id = |s: &str| s.parse::<ObjectId>().expect("valid");
        let (a, b) = (id("disk/h1/sdb"), id("disk/h1-x/sda"));
        // Host "h1" sorts before "h1-x", though the text "disk/h1/" sorts after "disk/h1-".
        assert!(a < b);
        assert!(a.as_str() > b.as_str());
        assert!(id("machine/zz") < a, "kinds first, in their declared order");
        assert!(id("disk/h1/sda") < a);
        assert_eq!((a.kind(), a.host(), a.name()), (Kind::Disk, "h1", Some("sdb")));
        assert_eq!(a.as_str(), "disk/h1/sdb");
        assert_eq!(format!("{a}"), a.as_str());
        let built = ObjectId::new(Kind::Disk, "h1", Some("sdb")).expect("valid");
        assert_eq!(built, a);
        assert_eq!(built.cmp(&a), std::cmp::Ordering::Equal);
        let hash = |x: &ObjectId| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            x.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&built), hash(&a));
        let m = id("machine/h1");
        assert_eq!((m.host(), m.name()), ("h1", None));
        assert_eq!(a.machine_id(), Some(m));
        assert_eq!(id("link/a--b").host(), "a--b");
    }

    #[test]
    fn serde_round_trip() {
        let id: ObjectId = "disk/h1/nvme0n1".parse().expect("valid");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, "\"disk/h1/nvme0n1\"");
        let back: ObjectId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        assert!(serde_json::from_str::<ObjectId>("\"disk/h1\"").is_err());
    }
}
