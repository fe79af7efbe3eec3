//! Repair tickets (PRODUCT.md section 10, issue 7): when an object enters REPAIR, or a network device
//! (`switch`, `link`, issue 16) enters ERROR with no open ticket, the state machine emits
//! `Effect::FileTicket`; the leader's [`dispatch::Dispatcher`] files it through a [`TicketSink`] (an HTTP
//! webhook or a JSON-lines file) and reports the ticket id back so the replicated state records it
//! (`Input::Ticket { update: Filed }`). The "durable queue" is the replicated state itself: an object with a
//! filing outstanding ([`pending_key`]) is pending, so a new leader simply continues. Every filing carries the
//! same idempotency key on every retry, so a retry never makes a second ticket.
//!
//! This module holds the shared vocabulary: the request body ([`TicketRequest`]), the sink trait and its
//! result/error types, the `[tickets]` config and the sink built from it ([`AnySink`]).

pub mod dispatch;
pub mod file;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use state_machines::step::{TICKET_KEY_ATTR, net_ticket_reason};
use state_machines::{Evidence, Kind, ObjectId, ObjectState, State};

pub use dispatch::{DispatchConfig, Dispatcher, SourceError, TicketSource};
pub use file::FileSink;
pub use webhook::WebhookSink;

/// Version of the JSON body sent to sinks; receivers can switch on it.
pub const TICKET_SCHEMA: u32 = 1;
/// Most evidence entries (findings) sent with one ticket: the newest ones are what a technician needs, and a
/// bounded list keeps the body small for any receiver.
pub const MAX_EVIDENCE: usize = 16;
/// Most location labels (rack, switch, row, ...) and attributes (serial, model, ...) sent with one ticket.
pub const MAX_LABELS: usize = 32;
/// Longest label/attribute key or value sent; longer ones are cut (they come from inventory and agents).
pub const MAX_LABEL_LEN: usize = 256;
/// Longest ticket id accepted from a receiver. It becomes `Input::Ticket { ticket }`, which the state machine
/// bounds to the same length (`state_machines::model::MAX_FIELD_LEN`).
pub const MAX_TICKET_ID_LEN: usize = state_machines::model::MAX_FIELD_LEN;

/// One ticket to file: the JSON body a sink receives (with `schema` = [`TICKET_SCHEMA`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRequest {
    /// The same for every retry of this filing (`Effect::FileTicket::idempotency_key`, `OBJECT@ENTERED_MS`).
    pub idempotency_key: String,
    pub object: ObjectId,
    pub kind: Kind,
    /// The host of a host's part; for a `switch` its name, for a `link` its id's `A--B` (no host: see `ends`).
    pub host: String,
    /// The object's state when the ticket was built (REPAIR; ERROR or WARNING for a network device).
    pub state: State,
    /// When the object entered `state` (ms since the epoch, the master's clock).
    pub state_since_ms: u64,
    /// Why: the `Effect::FileTicket::reason` line.
    pub reason: String,
    /// Host location labels from the inventory: rack, switch, row, room, ...
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Object attributes: serial, model, firmware, capacity, slot, ...
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    /// The findings behind it, oldest first (at most [`MAX_EVIDENCE`], the newest kept).
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// For a `link`: its two ends, in id order, each with the location labels of its `switch/NAME` (or, for
    /// a host's link, `machine/HOST`) object when the master has one. Absent for every other kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ends: Vec<LinkEnd>,
}

/// One end of a link in a ticket: the device (or host) name and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEnd {
    pub name: String,
    /// The object the labels come from (`switch/NAME` or `machine/HOST`); absent when neither exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectId>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl LinkEnd {
    /// The ends of `id` (a link) without labels; empty for every other kind.
    pub fn of(id: &ObjectId) -> Vec<LinkEnd> {
        let Some((a, b)) = id.link_ends() else { return Vec::new() };
        [a, b]
            .into_iter()
            .map(|n| LinkEnd { name: n.to_string(), object: None, labels: BTreeMap::new() })
            .collect()
    }
}

/// The idempotency key of the filing `obj` has outstanding, the one `Effect::FileTicket` carried, so every
/// leader derives the same key from the replicated record:
/// - an object in REPAIR with no `ticket` attribute yet: `OBJECT@ENTERED_MS`, the REPAIR entry time;
/// - a network device (`switch`, `link`) whose incident has a filing key (the `ticket-key` attribute,
///   `OBJECT@ERROR_ENTERED_MS`, set when it entered ERROR, kept through WARNING, removed by GOOD) and no
///   `ticket` attribute yet. A value of another shape is not a filing (the attribute is the step's alone).
pub fn pending_key(obj: &ObjectState) -> Option<String> {
    if obj.attrs.contains_key("ticket") {
        return None;
    }
    if obj.id.kind().is_network() {
        return obj.attrs.get(TICKET_KEY_ATTR).filter(|k| entered_ms(obj, k).is_some()).cloned();
    }
    (obj.state == State::Repair).then(|| format!("{}@{}", obj.id, obj.since_ms))
}

/// The time in a network device's filing key `OBJECT@ENTERED_MS` (None: not a key of this object).
fn entered_ms(obj: &ObjectState, key: &str) -> Option<u64> {
    let ms = key.strip_prefix(obj.id.to_string().as_str())?.strip_prefix('@')?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok()
}

impl TicketRequest {
    /// The request for `obj`'s outstanding filing ([`pending_key`]), or `None` when it has none. `reason` is
    /// the `Effect::FileTicket::reason` if the caller kept it; otherwise one is built from the last cause and
    /// evidence. `labels` are the host's location labels; `evidence` the findings (oldest first), defaulting
    /// to the object's last evidence. The `ticket*` attributes are internal and left out.
    pub fn for_object(
        obj: &ObjectState,
        reason: Option<&str>,
        labels: BTreeMap<String, String>,
        evidence: Vec<Evidence>,
    ) -> Option<TicketRequest> {
        let idempotency_key = pending_key(obj)?;
        let reason = match reason {
            Some(r) => r.to_string(),
            None if obj.id.kind().is_network() => {
                net_ticket_reason(obj, entered_ms(obj, &idempotency_key).unwrap_or(obj.since_ms))
            }
            None => {
                let by = obj.last_cause.as_ref().map_or("unknown cause", |c| c.name());
                let why = obj.last_evidence.as_ref().map_or("no finding recorded".to_string(), |e| {
                    format!("{} ({} {}): {}", e.rule, e.checker, e.version, e.evidence)
                });
                format!("{}: REPAIR by {by}; {why}", obj.id)
            }
        };
        let evidence =
            if evidence.is_empty() { obj.last_evidence.iter().cloned().collect() } else { evidence };
        let attrs =
            obj.attrs.iter().filter(|(k, _)| !k.starts_with("ticket")).map(|(k, v)| (k.clone(), v.clone()));
        Some(
            TicketRequest {
                idempotency_key,
                object: obj.id.clone(),
                kind: obj.id.kind(),
                host: obj.id.host().to_string(),
                state: obj.state,
                state_since_ms: obj.since_ms,
                reason: cut(&reason, state_machines::model::MAX_REASON_LEN),
                labels,
                attrs: attrs.collect(),
                evidence,
                ends: LinkEnd::of(&obj.id),
            }
            .bounded(),
        )
    }

    /// Cut every list and label to its limit (evidence keeps the newest [`MAX_EVIDENCE`]; each finding is
    /// already bounded by `Finding::bounded` when it enters the state).
    pub fn bounded(mut self) -> Self {
        let excess = self.evidence.len().saturating_sub(MAX_EVIDENCE);
        self.evidence.drain(..excess);
        self.labels = bound_map(std::mem::take(&mut self.labels));
        self.attrs = bound_map(std::mem::take(&mut self.attrs));
        for e in &mut self.ends {
            e.labels = bound_map(std::mem::take(&mut e.labels));
        }
        self
    }

    /// The JSON body: the request plus `"schema": TICKET_SCHEMA`.
    pub fn to_json(&self) -> Result<Vec<u8>, SinkError> {
        #[derive(Serialize)]
        struct Body<'a> {
            schema: u32,
            #[serde(flatten)]
            req: &'a TicketRequest,
        }
        serde_json::to_vec(&Body { schema: TICKET_SCHEMA, req: self })
            .map_err(|e| SinkError::Permanent(format!("cannot encode ticket as JSON: {e}")))
    }
}

fn bound_map(m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().take(MAX_LABELS).map(|(k, v)| (cut(&k, MAX_LABEL_LEN), cut(&v, MAX_LABEL_LEN))).collect()
}

/// `s` cut to at most `max` bytes at a char boundary.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A ticket id usable in `Input::Ticket`: non-empty, at most [`MAX_TICKET_ID_LEN`] bytes, no control chars.
pub fn valid_ticket_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_TICKET_ID_LEN && !id.chars().any(char::is_control)
}

/// The ticket id recorded when the receiver filed the ticket but gave no usable id: the idempotency key
/// (receivers index tickets by it), shortened with a hash when it is longer than a ticket id may be.
pub fn fallback_ticket_id(key: &str) -> String {
    if valid_ticket_id(key) {
        return key.to_string();
    }
    // FNV-1a 64: stable across builds and platforms; the id is a label, the key stays the dedupe identity.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let clean: String = key.chars().filter(|c| !c.is_control()).collect();
    format!("{}~{h:016x}", cut(&clean, MAX_TICKET_ID_LEN - 17))
}

/// A filing that succeeded: the receiver's ticket id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filed {
    /// What `Input::Ticket { ticket }` records (always [`valid_ticket_id`]).
    pub ticket_id: String,
    /// The receiver already had a ticket for this idempotency key (HTTP 409, or a line in the file).
    pub already: bool,
}

/// Why a filing did not succeed. `Transient` is retried with backoff; `Permanent` is not (the request or the
/// configuration is wrong: retrying the same bytes cannot help) and alerts an operator at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    #[error("transient: {0}")]
    Transient(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

impl SinkError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Permanent(_))
    }
}

/// Something that files tickets. Implementations must be idempotent per `idempotency_key`: filing the same
/// key twice yields the same ticket (or `already`), never a second one.
pub trait TicketSink: Send + Sync + 'static {
    /// File one ticket. Must finish within the sink's own timeout.
    fn file(&self, req: &TicketRequest) -> impl Future<Output = Result<Filed, SinkError>> + Send;
    /// Short name for logs and metrics: `webhook`, `file`.
    fn name(&self) -> &'static str;
}

/// The sink the `[tickets]` config selects.
#[derive(Debug)]
pub enum AnySink {
    Webhook(WebhookSink),
    File(FileSink),
}

impl TicketSink for AnySink {
    async fn file(&self, req: &TicketRequest) -> Result<Filed, SinkError> {
        match self {
            AnySink::Webhook(s) => s.file(req).await,
            AnySink::File(s) => s.file(req).await,
        }
    }
    fn name(&self) -> &'static str {
        match self {
            AnySink::Webhook(s) => s.name(),
            AnySink::File(s) => s.name(),
        }
    }
}

/// Which integration files tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// No integration: FileTicket effects stay recorded in history only (operators file by hand and report
    /// the ticket with `huatuo ticket`).
    #[default]
    None,
    Webhook,
    File,
}

/// `[tickets]` in the master's TOML config. Only the fields of the chosen sink may be set. Deserialize only:
/// the token must not leak through a serialized copy (and `Debug` redacts it).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketsConfig {
    pub sink: SinkKind,
    /// webhook: `http://host:port/path` (https is not supported yet: terminate TLS in a local proxy).
    pub url: Option<String>,
    /// webhook: sent as `Authorization: Bearer TOKEN`. Never logged (Debug prints `<redacted>`).
    pub token: Option<String>,
    /// file: the JSON-lines file tickets are appended to.
    pub path: Option<PathBuf>,
    /// One filing attempt (connect, send, response) must finish within this.
    pub timeout_ms: u64,
    /// How often the leader looks for filings outstanding (REPAIR, network incidents) without a ticket.
    pub poll_ms: u64,
    /// Attempts per round before the filing is reported failed (operator alert) and parked.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `backoff_max_ms`, with jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A failed (parked) filing starts a new round of attempts after this long.
    pub retry_failed_after_ms: u64,
    /// Filings in flight at once.
    pub max_in_flight: usize,
}

impl fmt::Debug for TicketsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketsConfig")
            .field("sink", &self.sink)
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("path", &self.path)
            .field("timeout_ms", &self.timeout_ms)
            .field("poll_ms", &self.poll_ms)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base_ms", &self.backoff_base_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("retry_failed_after_ms", &self.retry_failed_after_ms)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// Upper bound for `timeout_ms`: a receiver slower than this is down; longer would stall the in-flight slots.
pub const MAX_TIMEOUT_MS: u64 = 120_000;
/// Upper bound for `max_attempts` per round (with the backoff cap this is already hours of retrying).
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Upper bound for `max_in_flight`: tickets are rare; more parallel requests would only hammer a receiver.
pub const MAX_IN_FLIGHT_LIMIT: usize = 64;

impl Default for TicketsConfig {
    fn default() -> Self {
        let d = DispatchConfig::default();
        TicketsConfig {
            sink: SinkKind::None,
            url: None,
            token: None,
            path: None,
            timeout_ms: webhook::DEFAULT_TIMEOUT_MS,
            poll_ms: d.poll_ms,
            max_attempts: d.max_attempts,
            backoff_base_ms: d.backoff_base_ms,
            backoff_max_ms: d.backoff_max_ms,
            retry_failed_after_ms: d.retry_failed_after_ms,
            max_in_flight: d.max_in_flight,
        }
    }
}

/// A `[tickets]` config that cannot work; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Fields that do not go together (or one the sink needs is missing).
    #[error("[tickets] {0}")]
    Fields(&'static str),
    #[error("[tickets] {0}")]
    Url(#[from] webhook::UrlError),
    #[error("[tickets] token must be non-empty without spaces or control characters")]
    Token,
    /// A number outside what the dispatcher accepts.
    #[error("[tickets] {field} must be {range}")]
    OutOfRange { field: &'static str, range: String },
    #[error("[tickets] ticket file: {0}")]
    File(String),
}

impl TicketsConfig {
    /// Check every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &'static str| Err(ConfigError::Fields(m));
        let range = |field: &'static str, range: String| Err(ConfigError::OutOfRange { field, range });
        match self.sink {
            SinkKind::None => {
                if self.url.is_some() || self.token.is_some() || self.path.is_some() {
                    return bad("sink = \"none\" takes no url, token or path");
                }
            }
            SinkKind::Webhook => {
                let Some(url) = &self.url else {
                    return bad("sink = \"webhook\" needs url = \"http://...\"");
                };
                webhook::Target::parse(url)?;
                if self.path.is_some() {
                    return bad("path is for sink = \"file\", not \"webhook\"");
                }
                if let Some(t) = &self.token
                    && (t.is_empty() || t.chars().any(|c| c.is_control() || c == ' '))
                {
                    return Err(ConfigError::Token);
                }
            }
            SinkKind::File => {
                if self.path.is_none() {
                    return bad("sink = \"file\" needs path = \"/var/lib/huatuo/tickets.jsonl\"");
                }
                if self.url.is_some() || self.token.is_some() {
                    return bad("url and token are for sink = \"webhook\", not \"file\"");
                }
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return range("timeout_ms", format!("1..={MAX_TIMEOUT_MS}"));
        }
        if self.poll_ms == 0 {
            return range("poll_ms", "> 0".into());
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return range("max_attempts", format!("1..={MAX_ATTEMPTS_LIMIT}"));
        }
        if self.backoff_base_ms == 0 || self.backoff_max_ms < self.backoff_base_ms {
            return range("backoff_base_ms", "> 0 and <= backoff_max_ms".into());
        }
        if self.retry_failed_after_ms == 0 {
            return range("retry_failed_after_ms", "> 0".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT_LIMIT {
            return range("max_in_flight", format!("1..={MAX_IN_FLIGHT_LIMIT}"));
        }
        Ok(())
    }

    /// The dispatcher's settings from this config.
    pub fn dispatch(&self) -> DispatchConfig {
        DispatchConfig {
            poll_ms: self.poll_ms,
            max_attempts: self.max_attempts,
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms,
            retry_failed_after_ms: self.retry_failed_after_ms,
            max_in_flight: self.max_in_flight,
            ..DispatchConfig::default()
        }
    }

    /// Validate and build the sink; `None` when `sink = "none"`. Opening a file sink scans it for filed keys.
    pub fn build(&self) -> Result<Option<AnySink>, ConfigError> {
        self.validate()?;
        let timeout = Duration::from_millis(self.timeout_ms);
        match (self.sink, &self.url, &self.path) {
            (SinkKind::Webhook, Some(url), _) => {
                let s = WebhookSink::new(url, self.token.clone(), timeout)?;
                Ok(Some(AnySink::Webhook(s)))
            }
            (SinkKind::File, _, Some(path)) => {
                let s = FileSink::open(path).map_err(|e| ConfigError::File(e.to_string()))?;
                Ok(Some(AnySink::File(s)))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TicketsConfig, String> {
        let c: TicketsConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn config_examples_parse_and_bad_ones_are_named() {
        assert_eq!(parse("").unwrap().sink, SinkKind::None);
        let c = parse("sink = \"webhook\"\nurl = \"http://127.0.0.1:9/t\"\ntoken = \"s3cret\"").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"), "token must never be printed");
        parse("sink = \"file\"\npath = \"/tmp/t.jsonl\"\nmax_attempts = 3").unwrap();
        for (bad, needle) in [
            ("sink = \"webhook\"", "needs url"),
            ("sink = \"webhook\"\nurl = \"https://x/\"", "https"),
            ("sink = \"webhook\"\nurl = \"ftp://x/\"", "http://"),
            ("sink = \"file\"", "needs path"),
            ("sink = \"none\"\nurl = \"http://x/\"", "takes no url"),
            ("sink = \"file\"\npath = \"/t\"\nmax_attempts = 0", "max_attempts"),
            ("sink = \"file\"\npath = \"/t\"\nmax_in_flight = 1000", "max_in_flight"),
            ("sink = \"file\"\npath = \"/t\"\nbackoff_base_ms = 10\nbackoff_max_ms = 1", "backoff"),
            ("sink = \"mail\"", "unknown variant"),
            ("sink = \"file\"\npath = \"/t\"\nretries = 3", "unknown field"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    /// The key a source derives from the replicated record is the key of the effect `step` emitted.
    #[test]
    fn pending_key_matches_the_file_ticket_effect() {
        use state_machines::{AckKind, Effect, Finding, Input, Policy, Severity, TicketUpdate, step};
        let policy = Policy::default();
        let id: ObjectId = "disk/h1/sda".parse().unwrap();
        let mut obj = ObjectState::new(id.clone(), 1_000);
        let finding = Finding {
            object: id.clone(),
            severity: Severity::Fatal,
            checker: "disk".into(),
            version: "1".into(),
            rule: "smart-failing".into(),
            evidence: "SMART overall-health FAILED".into(),
            readings: BTreeMap::new(),
            time_ms: 2_000,
            shadow: false,
        };
        obj = step(&obj, &Input::Finding(finding), 2_000, &policy).unwrap().next;
        assert_eq!(obj.state, State::Error);
        assert_eq!(pending_key(&obj), None);
        obj.attrs.insert("serial".into(), "WD-1".into());
        let ack = Input::Ack { role: policy.disk_evacuate_role.clone(), ack: AckKind::DataEvacuated };
        let out = step(&obj, &ack, 3_000, &policy).unwrap();
        let Some(Effect::FileTicket { idempotency_key, reason, .. }) =
            out.effects.iter().find(|e| matches!(e, Effect::FileTicket { .. })).cloned()
        else {
            panic!("no FileTicket effect: {:?}", out.effects)
        };
        obj = out.next;
        assert_eq!(pending_key(&obj).as_deref(), Some(idempotency_key.as_str()));
        let labels = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        let r = TicketRequest::for_object(&obj, Some(&reason), labels.clone(), vec![]).unwrap();
        assert_eq!(
            (r.idempotency_key.as_str(), r.reason.as_str()),
            (idempotency_key.as_str(), reason.as_str())
        );
        assert_eq!((r.kind, r.host.as_str(), r.state_since_ms), (Kind::Disk, "h1", 3_000));
        assert_eq!(r.evidence.len(), 1, "the last evidence by default");
        assert_eq!(r.attrs.get("serial").map(String::as_str), Some("WD-1"));
        let built = TicketRequest::for_object(&obj, None, labels, vec![]).unwrap();
        assert!(built.reason.contains("smart-failing") && built.reason.contains("ack"), "{}", built.reason);
        // Once the ticket is recorded the filing is no longer outstanding.
        let filed = Input::Ticket { ticket: "T-1".into(), update: TicketUpdate::Filed };
        obj = step(&obj, &filed, 4_000, &policy).unwrap().next;
        assert_eq!(pending_key(&obj), None);
        assert!(TicketRequest::for_object(&obj, None, BTreeMap::new(), vec![]).is_none());
    }

    /// A network device's filing: pending from its ERROR entry until a ticket is recorded, through WARNING,
    /// under the key and with the reason the step's effect carried; the body names both ends of a link.
    #[test]
    fn a_network_devices_filing_is_pending_until_recorded_and_names_both_ends() {
        use state_machines::{Effect, Finding, Input, Policy, Severity, TicketUpdate, step};
        let policy = Policy::default();
        let id: ObjectId = "link/agg-1--tor-1".parse().unwrap();
        let finding = |severity, evidence: &str| {
            Input::Finding(Finding {
                object: id.clone(),
                severity,
                checker: "netvote".into(),
                version: "1".into(),
                rule: "link-suspect".into(),
                evidence: evidence.into(),
                readings: BTreeMap::new(),
                time_ms: 0,
                shadow: false,
            })
        };
        let obj = ObjectState::new(id.clone(), 1_000);
        assert_eq!(pending_key(&obj), None);
        let out = step(&obj, &finding(Severity::Error, "20 of 22 flows lost >= 1%"), 2_000, &policy).unwrap();
        let Some(Effect::FileTicket { idempotency_key, reason, .. }) =
            out.effects.iter().find(|e| matches!(e, Effect::FileTicket { .. })).cloned()
        else {
            panic!("no FileTicket effect: {:?}", out.effects)
        };
        let mut obj = out.next;
        assert_eq!(pending_key(&obj).as_deref(), Some(idempotency_key.as_str()));
        assert_eq!(idempotency_key, "link/agg-1--tor-1@2000");
        let r = TicketRequest::for_object(&obj, None, BTreeMap::new(), vec![]).unwrap();
        assert_eq!(r.reason, reason, "the leader builds the step's reason from the record");
        assert!(r.reason.contains("20 of 22 flows lost") && r.reason.contains("between agg-1 and tor-1"));
        assert_eq!((r.kind, r.state, r.state_since_ms), (Kind::Link, State::Error, 2_000));
        assert_eq!(r.ends.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["agg-1", "tor-1"]);
        assert!(r.attrs.is_empty(), "the ticket-key attribute is internal: {:?}", r.attrs);
        let body: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
        assert_eq!(body["ends"][1]["name"], "tor-1");
        // Down to WARNING: still this incident's filing, same key.
        obj = step(&obj, &finding(Severity::Warning, "3 of 22"), 3_000, &policy).unwrap().next;
        assert_eq!(pending_key(&obj).as_deref(), Some("link/agg-1--tor-1@2000"));
        let r = TicketRequest::for_object(&obj, None, BTreeMap::new(), vec![]).unwrap();
        assert!(
            r.reason.contains("entered ERROR at 2000") && r.reason.contains("WARNING since 3000"),
            "{}",
            r.reason
        );
        // Recorded: no longer outstanding (and switches carry no ends).
        let filed = Input::Ticket { ticket: "NET-1".into(), update: TicketUpdate::Filed };
        obj = step(&obj, &filed, 4_000, &policy).unwrap().next;
        assert_eq!(pending_key(&obj), None);
        // A key of another shape is not a filing; a switch has no ends.
        let mut sw = ObjectState::new("switch/tor-1".parse().unwrap(), 0);
        sw.attrs.insert(TICKET_KEY_ATTR.into(), "switch/tor-10@5".into());
        assert_eq!(pending_key(&sw), None);
        sw.attrs.insert(TICKET_KEY_ATTR.into(), "switch/tor-1@5".into());
        assert_eq!(pending_key(&sw).as_deref(), Some("switch/tor-1@5"));
        assert!(TicketRequest::for_object(&sw, None, BTreeMap::new(), vec![]).unwrap().ends.is_empty());
    }

    #[test]
    fn fallback_ticket_ids_are_valid_and_distinct() {
        assert_eq!(fallback_ticket_id("disk/h1/sda@5"), "disk/h1/sda@5");
        let long_a = format!("disk/{}/sda@1", "a".repeat(300));
        let long_b = format!("disk/{}/sda@2", "a".repeat(300));
        let (a, b) = (fallback_ticket_id(&long_a), fallback_ticket_id(&long_b));
        assert!(valid_ticket_id(&a) && valid_ticket_id(&b), "{a}");
        assert_ne!(a, b);
        assert!(valid_ticket_id(&fallback_ticket_id("\u{0}\n")));
    }

    #[test]
    fn bounded_cuts_lists_and_labels() {
        let id: ObjectId = "disk/h1/sda".parse().unwrap();
        let ev = Evidence {
            checker: "disk".into(),
            version: "1".into(),
            rule: "r".into(),
            severity: state_machines::Severity::Error,
            evidence: "e".into(),
            readings: BTreeMap::new(),
            time_ms: 0,
        };
        let mut evidence = Vec::new();
        for t in 0..40u64 {
            evidence.push(Evidence { time_ms: t, ..ev.clone() });
        }
        let labels = (0..100).map(|i| (format!("k{i:03}"), "é".repeat(200))).collect();
        let r = TicketRequest {
            idempotency_key: "k".into(),
            object: id,
            kind: Kind::Disk,
            host: "h1".into(),
            state: State::Repair,
            state_since_ms: 1,
            reason: "r".into(),
            labels,
            attrs: BTreeMap::new(),
            evidence,
            ends: Vec::new(),
        }
        .bounded();
        assert_eq!(r.evidence.len(), MAX_EVIDENCE);
        assert_eq!(r.evidence[0].time_ms, 40 - MAX_EVIDENCE as u64, "the newest evidence is kept");
        assert_eq!(r.labels.len(), MAX_LABELS);
        assert!(r.labels.values().all(|v| v.len() <= MAX_LABEL_LEN));
        let body: serde_json::Value = serde_json::from_slice(&r.to_json().unwrap()).unwrap();
        assert_eq!(body["schema"], TICKET_SCHEMA);
        assert_eq!(body["object"], "disk/h1/sda");
        assert_eq!(body["kind"], "disk");
    }
}
