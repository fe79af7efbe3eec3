//! Object ids: `KIND/HOST[/NAME]` (`machine/host-017`, `disk/host-017/sdb`, `dimm/host-017/mc0-dimm3`,
//! `nic/host-017/eth0`, `checker/host-017/smart`). Parsing never panics; a bad id is an [`IdError`].

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
}

impl Kind {
    /// Every kind, in a fixed order (used by listings and tests).
    pub const ALL: [Kind; 5] = [Kind::Machine, Kind::Disk, Kind::Dimm, Kind::Nic, Kind::Checker];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Machine => "machine",
            Kind::Disk => "disk",
            Kind::Dimm => "dimm",
            Kind::Nic => "nic",
            Kind::Checker => "checker",
        }
    }

    /// Whether ids of this kind carry a `/NAME` part.
    pub fn has_name(self) -> bool {
        !matches!(self, Kind::Machine)
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
            other => return Err(IdError::UnknownKind(truncate(other))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty object id")]
    Empty,
    #[error("unknown object kind {0:?} (expected machine, disk, dimm, nic or checker)")]
    UnknownKind(String),
    #[error("object id {0:?} has no host part (expected KIND/HOST[/NAME])")]
    MissingHost(String),
    #[error("object id {0:?} needs a name: KIND/HOST/NAME")]
    MissingName(String),
    #[error("object id {0:?}: a machine id has no name part (expected machine/HOST)")]
    UnexpectedName(String),
    #[error("object id {0:?} has too many parts (expected KIND/HOST[/NAME])")]
    TooManyParts(String),
    #[error("invalid host {0:?}: 1-253 characters of A-Z a-z 0-9 . - _")]
    BadHost(String),
    #[error("invalid name {0:?}: 1-128 characters of A-Z a-z 0-9 . - _ : @ +")]
    BadName(String),
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    kind: Kind,
    host: String,
    name: Option<String>,
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
        Ok(ObjectId { kind, host: host.to_string(), name: name.map(str::to_string) })
    }

    pub fn machine(host: &str) -> Result<Self, IdError> {
        Self::new(Kind::Machine, host, None)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The machine this object lives in.
    pub fn machine_id(&self) -> ObjectId {
        ObjectId { kind: Kind::Machine, host: self.host.clone(), name: None }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}/{}", self.kind, self.host, n),
            None => write!(f, "{}/{}", self.kind, self.host),
        }
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
        ObjectId::new(kind, host, name)
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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
