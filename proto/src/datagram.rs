//! Heartbeat datagrams: a heartbeat as one UDP datagram to the leader's gRPC port number, answered by one
//! datagram, instead of a message on an HTTP/2 stream. Same request and answer as the `Heartbeat` call
//! (`HeartbeatRequest`, and `BeatReply` around `HeartbeatResponse`); whatever a datagram cannot carry
//! (a request or an answer over [`MAX_DATAGRAM`], an error, no answer) goes as a call, so a datagram is
//! only ever a cheaper way to the same beat (ARCHITECTURE.md, "Heartbeat datagrams").
//!
//! Layout: `HTB1` | kind (1 byte) | key id (8, little-endian) | seq (8, LE) | protobuf payload | tag (32).
//! The tag is HMAC-SHA256 over everything before it, keyed by the sha256 digest of the agent's token (what
//! a master config stores for it), or by [`BeatKey::open`] for a cluster without tokens (`--insecure`). The
//! seq is the sender's clock in microseconds since the epoch, strictly increasing per agent: a master takes
//! only seqs within [`MAX_SKEW_MS`] of its own clock and, per agent, above the last one it took; an answer
//! echoes the request's seq and is sealed with the same key, so an agent takes only the answer to its own
//! latest request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message as _;
use ring::hmac;
use sha2::{Digest as _, Sha256};

use crate::api;

/// First bytes of every datagram (version 1 of this layout).
pub const MAGIC: [u8; 4] = *b"HTB1";
/// Magic, kind, key id, seq.
pub const HEADER_LEN: usize = 4 + 1 + 8 + 8;
/// HMAC-SHA256.
pub const TAG_LEN: usize = 32;
/// The largest datagram either side sends or reads: a request or answer that does not fit goes as a call.
/// Over a real network anything above the path MTU (about 1,400 bytes) travels as IP fragments.
pub const MAX_DATAGRAM: usize = 8192;
/// How far a request's seq (the agent's clock) may be from the master's clock. Agents' clocks must be
/// NTP-synced anyway (the machine checker reports an offset of 30 s or more); one further off beats with calls.
pub const MAX_SKEW_MS: u64 = 60_000;
/// How long an agent waits for the answer to a datagram before it sends the beat as a call.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// After [`SILENT_ROUNDS_BEFORE_OFF`] beats in a row whose datagrams no member answered (UDP blocked,
/// masters without datagrams, a clock too far off), the agent beats with calls for this long before it
/// tries a datagram again.
pub const OFF_AFTER_SILENCE: Duration = Duration::from_secs(300);
/// Most member addresses an agent keeps resolved (the list, and leaders members named).
const MAX_RESOLVED: usize = 16;
/// See [`OFF_AFTER_SILENCE`].
pub const SILENT_ROUNDS_BEFORE_OFF: u32 = 3;

/// The key id of [`BeatKey::open`] (a cluster without tokens).
pub const OPEN_KEY_ID: u64 = 0;

/// What a datagram holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Agent -> master: a `HeartbeatRequest`.
    Beat = 1,
    /// Master -> agent: a `BeatReply`.
    Reply = 2,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Beat),
            2 => Some(Kind::Reply),
            _ => None,
        }
    }
}

/// Why a datagram was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram too short ({0} bytes)")]
    Short(usize),
    #[error("datagram too large ({0} bytes, limit {MAX_DATAGRAM})")]
    TooBig(usize),
    #[error("not a heartbeat datagram (magic or kind)")]
    NotOurs,
    #[error("the seal does not check")]
    BadTag,
    #[error("payload does not decode: {0}")]
    Payload(String),
}

/// A key that seals and opens datagrams, with its public id (the first 8 bytes of the sha256 of the key,
/// so the id says nothing of the key).
#[derive(Clone)]
pub struct BeatKey {
    id: u64,
    key: hmac::Key,
}

impl std::fmt::Debug for BeatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BeatKey({:016x})", self.id)
    }
}

impl BeatKey {
    /// The key of a token's sha256 digest (a master config holds the digest as hex).
    pub fn from_digest(digest: &[u8; 32]) -> BeatKey {
        let id_bytes = Sha256::digest(digest);
        let mut id = [0u8; 8];
        id.copy_from_slice(&id_bytes[..8]);
        BeatKey { id: u64::from_le_bytes(id), key: hmac::Key::new(hmac::HMAC_SHA256, digest) }
    }

    /// The key of an agent's token.
    pub fn from_token(token: &crate::tls::Token) -> BeatKey {
        let d: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        BeatKey::from_digest(&d)
    }

    /// The key of a token digest as a master config writes it (64 hex digits).
    pub fn from_digest_hex(hex_digest: &str) -> Option<BeatKey> {
        let bytes = hex::decode(hex_digest).ok()?;
        let d: [u8; 32] = bytes.try_into().ok()?;
        Some(BeatKey::from_digest(&d))
    }

    /// The key of a cluster without tokens (`--insecure`): id 0, a fixed key. It proves nothing about the
    /// sender (nor does a call to such a cluster); it catches damaged datagrams.
    pub fn open() -> BeatKey {
        BeatKey {
            id: OPEN_KEY_ID,
            key: hmac::Key::new(hmac::HMAC_SHA256, b"huatuo heartbeat datagrams, no token"),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// An agent's own key as a master hands it out (`HeartbeatResponse.beat_key` and `beat_key_id`):
    /// [`BeatSecret::agent_key_bytes`] under the secret's id.
    pub fn from_agent_key(id: u64, key: &[u8]) -> Option<BeatKey> {
        (key.len() == 32).then(|| BeatKey { id, key: hmac::Key::new(hmac::HMAC_SHA256, key) })
    }
}

/// The cluster's heartbeat secret (replicated through Raft, never sent to an agent), from which each
/// agent's own datagram key is derived: HMAC-SHA256(secret, `huatuo beat key v1` 0 agent). A master hands
/// an agent its key in the answer to a heartbeat call or stream message (where the agent's certificate and
/// token were checked), and opens that agent's datagrams by deriving the same key from the agent the
/// datagram names, so a datagram proves the sender got its key over an authenticated call for that agent:
/// an agent token alone, without the certificate, no longer keeps anyone alive. The key id of such a
/// datagram is the secret's id (the first 8 bytes of the sha256 of `huatuo beat secret id` and the
/// secret), so a datagram under a secret the master does not hold is an unknown key, not a bad seal.
#[derive(Clone)]
pub struct BeatSecret {
    id: u64,
    key: hmac::Key,
}

impl std::fmt::Debug for BeatSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BeatSecret({:016x})", self.id)
    }
}

impl BeatSecret {
    pub fn new(secret: &[u8; 32]) -> BeatSecret {
        let mut h = Sha256::new();
        h.update(b"huatuo beat secret id");
        h.update(secret);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        BeatSecret { id: u64::from_le_bytes(id), key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// The id datagrams sealed with an agent key of this secret carry.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `agent`'s own key (what the master hands it out).
    pub fn agent_key_bytes(&self, agent: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"huatuo beat key v1\0");
        ctx.update(agent.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// `agent`'s own key, to open its datagrams and seal the answers.
    pub fn agent_key(&self, agent: &str) -> BeatKey {
        BeatKey { id: self.id, key: hmac::Key::new(hmac::HMAC_SHA256, &self.agent_key_bytes(agent)) }
    }
}

/// The agent a beat datagram's request names (its `HeartbeatRequest.agent`, field 1), read before the seal is
/// checked: the master derives that agent's key from it, then checks the seal with it (and, once it
/// decoded the request, that the request names the same agent). `None`: not one of ours, or no agent in it.
pub fn agent_of(buf: &[u8]) -> Option<&str> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    header(buf).ok()?;
    let mut rest = &buf[HEADER_LEN..buf.len() - TAG_LEN];
    while !rest.is_empty() {
        let (field, wire) = decode_key(&mut rest).ok()?;
        if field == 1 && wire == WireType::LengthDelimited {
            let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
            let agent = rest.get(..len)?;
            return std::str::from_utf8(agent).ok();
        }
        skip_field(wire, field, &mut rest, DecodeContext::default()).ok()?;
    }
    None
}

/// The key id a datagram names (read before its key is looked up), or why it is not one of ours.
pub fn key_id(buf: &[u8]) -> Result<u64, DatagramError> {
    header(buf).map(|(_, id, _)| id)
}

/// The seq a datagram names (read before it is opened: an agent that seals each beat with a key of its
/// own finds the key of an answer by its seq), or why it is not one of ours.
pub fn seq_of(buf: &[u8]) -> Result<u64, DatagramError> {
    header(buf).map(|(_, _, seq)| seq)
}

fn header(buf: &[u8]) -> Result<(Kind, u64, u64), DatagramError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(DatagramError::TooBig(buf.len()));
    }
    if buf.len() < HEADER_LEN + TAG_LEN {
        return Err(DatagramError::Short(buf.len()));
    }
    if buf[..4] != MAGIC {
        return Err(DatagramError::NotOurs);
    }
    let kind = Kind::from_byte(buf[4]).ok_or(DatagramError::NotOurs)?;
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Ok((kind, u64_at(5), u64_at(13)))
}

/// A datagram whose seal checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    pub kind: Kind,
    pub seq: u64,
    pub payload: &'a [u8],
}

/// Check `buf`'s seal with `key` (the key its id names) and split it.
pub fn open<'a>(buf: &'a [u8], key: &BeatKey) -> Result<Opened<'a>, DatagramError> {
    let (kind, id, seq) = header(buf)?;
    let (body, tag) = buf.split_at(buf.len() - TAG_LEN);
    if id != key.id || hmac::verify(&key.key, body, tag).is_err() {
        return Err(DatagramError::BadTag);
    }
    Ok(Opened { kind, seq, payload: &body[HEADER_LEN..] })
}

/// Seal `msg` as a datagram of `kind` into `out` (cleared first). Over [`MAX_DATAGRAM`]: `TooBig`, and
/// `out` holds nothing to send.
pub fn seal(
    key: &BeatKey,
    kind: Kind,
    seq: u64,
    msg: &impl prost::Message,
    out: &mut Vec<u8>,
) -> Result<(), DatagramError> {
    out.clear();
    let len = HEADER_LEN + msg.encoded_len() + TAG_LEN;
    if len > MAX_DATAGRAM {
        return Err(DatagramError::TooBig(len));
    }
    out.reserve(len);
    frame(key, kind, seq, out, |out| msg.encode(out).map_err(|e| DatagramError::Payload(e.to_string())))
}

/// Header, the payload `write` appends, tag: appended to `out`.
fn frame(
    key: &BeatKey,
    kind: Kind,
    seq: u64,
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), DatagramError>,
) -> Result<(), DatagramError> {
    out.extend_from_slice(&MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&key.id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    write(out)?;
    let tag = hmac::sign(&key.key, out);
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// [`seal`] of payload bytes as they are (tests craft payloads no encoder writes).
pub fn seal_payload(
    key: &BeatKey,
    kind: Kind,
    seq: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DatagramError> {
    out.clear();
    let len = HEADER_LEN + payload.len() + TAG_LEN;
    if len > MAX_DATAGRAM {
        return Err(DatagramError::TooBig(len));
    }
    frame(key, kind, seq, out, |out| {
        out.extend_from_slice(payload);
        Ok(())
    })
}

/// A sealed answer (`Kind::Reply`) opened with `key`: its seq (the request's) and the reply.
pub fn open_reply(buf: &[u8], key: &BeatKey) -> Result<(u64, api::BeatReply), DatagramError> {
    let o = open(buf, key)?;
    if o.kind != Kind::Reply {
        return Err(DatagramError::NotOurs);
    }
    let reply = api::BeatReply::decode(o.payload).map_err(|e| DatagramError::Payload(e.to_string()))?;
    Ok((o.seq, reply))
}

/// Whether a request's seq (microseconds on the agent's clock) is within [`MAX_SKEW_MS`] of `now_ms`.
pub fn fresh(seq: u64, now_ms: u64) -> bool {
    (seq / 1000).abs_diff(now_ms) <= MAX_SKEW_MS
}

/// An agent's seqs: its clock in microseconds, strictly increasing even when the clock is not.
#[derive(Debug, Default)]
pub struct SeqClock {
    last: u64,
}

impl SeqClock {
    /// The next seq (not an iterator: it never ends).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last = now.max(self.last + 1);
        self.last
    }
}

/// What an agent's [`Datagrams`] did since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DatagramStats {
    /// Beats answered by a datagram.
    pub answered: u64,
    /// Beats that went as a call after a datagram was tried (no answer, an error, too big either way).
    pub fell_back: u64,
    /// Datagrams that got no answer in [`ANSWER_TIMEOUT`].
    pub unanswered: u64,
}

/// One agent's heartbeat datagrams: [`Datagrams::beat`] answers a beat by datagram or says to send it as a
/// call (`None`).
pub struct Datagrams {
    /// None: no key yet (an agent without a token until a master hands it its own key).
    key: Option<BeatKey>,
    /// The bytes of the agent's own key, when a master handed it one (to tell a new key from the same).
    own_key: Option<Vec<u8>>,
    /// Every member's address (tried in turn while the ones before are silent).
    addrs: Vec<String>,
    /// Beats in a row whose datagrams no member answered.
    silent_rounds: u32,
    socket: Option<(bool, tokio::net::UdpSocket)>,
    seq: SeqClock,
    /// The member that answered the last datagram (or the leader a member named): the next one goes there.
    leader: Option<String>,
    /// Calls only until then (a datagram went unanswered).
    off_until: Option<Instant>,
    buf: Vec<u8>,
    /// Addresses looked up (at most [`MAX_RESOLVED`]).
    resolved: std::collections::HashMap<String, SocketAddr>,
    pub timeout: Duration,
    pub off_after_silence: Duration,
    stats: DatagramStats,
}

impl Datagrams {
    pub fn new(key: BeatKey, addrs: Vec<String>) -> Datagrams {
        Datagrams::with_key(Some(key), addrs)
    }

    /// Datagrams that wait for the agent's own key ([`Datagrams::set_key`]): every beat goes as a call
    /// until then.
    pub fn keyless(addrs: Vec<String>) -> Datagrams {
        Datagrams::with_key(None, addrs)
    }

    fn with_key(key: Option<BeatKey>, addrs: Vec<String>) -> Datagrams {
        Datagrams {
            key,
            own_key: None,
            addrs,
            silent_rounds: 0,
            socket: None,
            seq: SeqClock::default(),
            leader: None,
            off_until: None,
            buf: Vec::new(),
            resolved: std::collections::HashMap::new(),
            timeout: ANSWER_TIMEOUT,
            off_after_silence: OFF_AFTER_SILENCE,
            stats: DatagramStats::default(),
        }
    }

    pub fn stats(&self) -> DatagramStats {
        self.stats
    }

    /// Seal the next datagrams with `key` (the agent's own key a master handed out; replaces the token's).
    pub fn set_key(&mut self, key: BeatKey) {
        self.key = Some(key);
    }

    /// The id of the agent's own key, once a master handed it one (what its heartbeats say it holds).
    pub fn own_key_id(&self) -> u64 {
        if self.own_key.is_some() { self.key_id().unwrap_or(0) } else { 0 }
    }

    /// The id of the key datagrams are sealed with (None: no key yet).
    pub fn key_id(&self) -> Option<u64> {
        self.key.as_ref().map(|k| k.id)
    }

    /// Take the agent's own key from the answer to a call or stream message, when it carries one
    /// (`beat_key`, `beat_key_id`); whether the key changed.
    pub fn take_key_from(&mut self, resp: &api::HeartbeatResponse) -> bool {
        let Some(key) = BeatKey::from_agent_key(resp.beat_key_id, &resp.beat_key) else { return false };
        if self.own_key.as_deref() == Some(resp.beat_key.as_slice()) && self.key_id() == Some(key.id) {
            return false;
        }
        self.own_key = Some(resp.beat_key.clone());
        self.key = Some(key);
        true
    }

    /// One beat: to the member that answered the last one (or a leader a member named), else to `current`
    /// (the client's address: `host:port` or a URL), then to the other members while they stay silent.
    /// The answer, or `None` when this beat must go as a call. Follows NOT_LEADER when it names a leader
    /// not tried yet. [`SILENT_ROUNDS_BEFORE_OFF`] beats in a row that no member answered at all turn
    /// datagrams off for `off_after_silence` (UDP blocked, masters without datagrams); one member silent
    /// (a leader just killed) does not.
    pub async fn beat(
        &mut self,
        current: Option<&str>,
        req: &api::HeartbeatRequest,
    ) -> Option<api::HeartbeatResponse> {
        if self.key.is_none() || self.off_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        self.off_until = None;
        let mut target = self
            .leader
            .take()
            .or_else(|| current.map(str::to_string))
            .or_else(|| self.addrs.first().cloned())?;
        let mut tried: Vec<String> = Vec::new();
        let mut heard = false;
        // Each member at most once, plus the leader one of them names.
        for _ in 0..self.addrs.len() + 2 {
            let r = self.exchange(&target, req).await;
            tried.push(std::mem::take(&mut target));
            match r {
                Ok(resp) => {
                    self.stats.answered += 1;
                    self.silent_rounds = 0;
                    self.leader = tried.pop();
                    return Some(resp);
                }
                Err(Miss::Redirect(leader)) if !tried.contains(&leader) => {
                    heard = true;
                    target = leader;
                }
                Err(Miss::Silent) => {
                    self.stats.unanswered += 1;
                    if let Some(silent) = tried.last() {
                        self.resolved.remove(silent);
                    }
                    match self.addrs.iter().find(|a| !tried.contains(a)) {
                        Some(next) => target = next.clone(),
                        None => break,
                    }
                }
                Err(_) => {
                    heard = true;
                    break;
                }
            }
        }
        if !heard {
            self.silent_rounds += 1;
            if self.silent_rounds >= SILENT_ROUNDS_BEFORE_OFF {
                self.silent_rounds = 0;
                self.off_until = Some(Instant::now() + self.off_after_silence);
            }
        }
        self.stats.fell_back += 1;
        None
    }

    /// `to`'s socket address: resolved once per name (a name is looked up again after its member went
    /// silent, in case it moved).
    async fn resolve(&mut self, to: &str) -> Result<SocketAddr, Miss> {
        if let Some(a) = self.resolved.get(to) {
            return Ok(*a);
        }
        let bare = to.strip_prefix("http://").or_else(|| to.strip_prefix("https://")).unwrap_or(to);
        let a = match tokio::net::lookup_host(bare).await {
            Ok(mut it) => it.next().ok_or(Miss::Other)?,
            Err(_) => return Err(Miss::Other),
        };
        // Members and the leaders they name: a handful of names; never more than that kept.
        if self.resolved.len() >= MAX_RESOLVED {
            self.resolved.clear();
        }
        self.resolved.insert(to.to_string(), a);
        Ok(a)
    }

    async fn exchange(
        &mut self,
        to: &str,
        req: &api::HeartbeatRequest,
    ) -> Result<api::HeartbeatResponse, Miss> {
        let target = self.resolve(to).await?;
        let seq = self.seq.next();
        let key = self.key.as_ref().ok_or(Miss::Other)?;
        seal(key, Kind::Beat, seq, req, &mut self.buf).map_err(|_| Miss::Other)?;
        let v6 = target.is_ipv6();
        if self.socket.as_ref().is_none_or(|(s6, _)| *s6 != v6) {
            let local: SocketAddr =
                if v6 { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.map_err(|_| Miss::Other)?;
            let s = tokio::net::UdpSocket::bind(local).await.map_err(|_| Miss::Other)?;
            self.socket = Some((v6, s));
        }
        let Some((_, socket)) = &self.socket else { return Err(Miss::Other) };
        socket.send_to(&self.buf, target).await.map_err(|_| Miss::Other)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        // The request is sent: its buffer takes the answer.
        let answer = &mut self.buf;
        answer.clear();
        answer.resize(MAX_DATAGRAM + 1, 0);
        loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv_from(answer)).await {
                Err(_) => return Err(Miss::Silent),
                Ok(Err(_)) => continue,
                Ok(Ok((n, _))) => n,
            };
            // Anything that is not the sealed answer to this very request is ignored (a late answer to an
            // earlier one, a stray packet).
            let Some(key) = self.key.as_ref() else { return Err(Miss::Other) };
            let Ok((answered, reply)) = open_reply(&answer[..n], key) else { continue };
            if answered != seq {
                continue;
            }
            return match (reply.code.as_str(), reply.response) {
                ("", Some(r)) => Ok(r),
                ("NOT_LEADER", _) if !reply.leader.is_empty() => Err(Miss::Redirect(reply.leader)),
                _ => Err(Miss::Other),
            };
        }
    }
}

enum Miss {
    /// No answer in time.
    Silent,
    /// NOT_LEADER naming the leader.
    Redirect(String),
    /// Anything else: this beat goes as a call.
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> api::HeartbeatRequest {
        api::HeartbeatRequest {
            agent: "agent-1".into(),
            host: "host-1".into(),
            version: "1.0".into(),
            started_ms: 42,
            ..Default::default()
        }
    }

    #[test]
    fn a_sealed_beat_opens_with_its_key_only() {
        let key = BeatKey::from_token(&crate::tls::Token::new("s3cret"));
        let mut out = Vec::new();
        seal(&key, Kind::Beat, 7, &req(), &mut out).unwrap();
        assert_eq!(key_id(&out).unwrap(), key.id());
        let o = open(&out, &key).unwrap();
        assert_eq!((o.kind, o.seq), (Kind::Beat, 7));
        assert_eq!(api::HeartbeatRequest::decode(o.payload).unwrap(), req());
        // The master's key from the config's digest is the agent's key.
        let from_config = BeatKey::from_digest_hex(&crate::tls::Token::new("s3cret").sha256_hex()).unwrap();
        assert_eq!(from_config.id(), key.id());
        assert!(open(&out, &from_config).is_ok());
        // Another token's key, and the open key, refuse it.
        let other = BeatKey::from_token(&crate::tls::Token::new("s3cret2"));
        assert_eq!(open(&out, &other), Err(DatagramError::BadTag));
        assert_eq!(open(&out, &BeatKey::open()), Err(DatagramError::BadTag));
    }

    #[test]
    fn any_changed_byte_breaks_the_seal() {
        let key = BeatKey::open();
        let mut out = Vec::new();
        seal(&key, Kind::Beat, 99, &req(), &mut out).unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x01;
            let r = open(&bad, &key);
            assert!(r.is_err(), "byte {i} changed and the datagram still opened");
        }
    }

    #[test]
    fn short_long_and_foreign_datagrams_are_refused_before_any_key() {
        assert_eq!(key_id(&[0u8; 10]), Err(DatagramError::Short(10)));
        assert_eq!(key_id(&vec![0u8; MAX_DATAGRAM + 1]), Err(DatagramError::TooBig(MAX_DATAGRAM + 1)));
        let mut foreign = vec![0u8; 100];
        foreign[..4].copy_from_slice(b"GET ");
        assert_eq!(key_id(&foreign), Err(DatagramError::NotOurs));
        let mut bad_kind = vec![0u8; 100];
        bad_kind[..4].copy_from_slice(&MAGIC);
        bad_kind[4] = 9;
        assert_eq!(key_id(&bad_kind), Err(DatagramError::NotOurs));
    }

    #[test]
    fn a_message_over_the_limit_is_not_sealed() {
        let mut r = req();
        r.version = "x".repeat(MAX_DATAGRAM);
        let mut out = vec![1, 2, 3];
        assert!(matches!(seal(&BeatKey::open(), Kind::Beat, 1, &r, &mut out), Err(DatagramError::TooBig(_))));
        assert!(out.is_empty());
        // Exactly at the limit is sealed.
        let base = HEADER_LEN + TAG_LEN + req().encoded_len();
        let mut r = req();
        r.version = "x".repeat(3 + MAX_DATAGRAM - base - 3);
        while HEADER_LEN + TAG_LEN + r.encoded_len() > MAX_DATAGRAM {
            r.version.pop();
        }
        seal(&BeatKey::open(), Kind::Beat, 1, &r, &mut out).unwrap();
        assert!(out.len() <= MAX_DATAGRAM && out.len() + 3 > MAX_DATAGRAM, "{}", out.len());
    }

    #[test]
    fn seqs_increase_and_freshness_is_bounded_both_ways() {
        let mut c = SeqClock::default();
        let (a, b) = (c.next(), c.next());
        assert!(b > a);
        let now_ms = a / 1000;
        assert!(fresh(a, now_ms));
        assert!(fresh(a, now_ms + MAX_SKEW_MS));
        assert!(!fresh(a, now_ms + MAX_SKEW_MS + 1));
        assert!(!fresh(a, now_ms - MAX_SKEW_MS - 1));
    }

    /// Members that never answer: each beat tries every member once, then goes as a call; after
    /// `SILENT_ROUNDS_BEFORE_OFF` such beats, beats go as calls at once until the pause ends.
    #[tokio::test]
    async fn unanswered_datagrams_turn_beats_to_calls_for_a_while() {
        let silent: Vec<std::net::UdpSocket> =
            (0..2).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let addrs: Vec<String> = silent.iter().map(|s| s.local_addr().unwrap().to_string()).collect();
        let mut d = Datagrams::new(BeatKey::open(), addrs.clone());
        d.timeout = Duration::from_millis(30);
        for round in 1..=SILENT_ROUNDS_BEFORE_OFF {
            assert!(d.beat(Some(&addrs[1]), &req()).await.is_none());
            // Both members were tried, the client's current one first.
            let mut buf = [0u8; 2048];
            for s in &silent {
                let (n, _) = s.recv_from(&mut buf).unwrap();
                assert_eq!(open(&buf[..n], &BeatKey::open()).unwrap().kind, Kind::Beat, "round {round}");
            }
            assert_eq!(d.off_until.is_some(), round == SILENT_ROUNDS_BEFORE_OFF, "round {round}");
        }
        let t = Instant::now();
        assert!(d.beat(Some(&addrs[0]), &req()).await.is_none());
        assert!(t.elapsed() < Duration::from_millis(30), "a beat waited for an answer while paused");
        // The paused beat was not tried: not counted as a datagram that fell back.
        let rounds = u64::from(SILENT_ROUNDS_BEFORE_OFF);
        assert_eq!(d.stats(), DatagramStats { answered: 0, fell_back: rounds, unanswered: 2 * rounds });
        for s in &silent {
            s.set_nonblocking(true).unwrap();
            assert!(s.recv_from(&mut [0u8; 64]).is_err(), "a datagram was sent while paused");
        }
    }

    /// A member answering by hand: a stray packet and an answer to another seq are ignored; the sealed
    /// answer to this request is taken; NOT_LEADER with a leader is followed once.
    #[tokio::test]
    async fn the_answer_to_this_request_is_taken_and_a_redirect_followed() {
        let key = BeatKey::from_token(&crate::tls::Token::new("t"));
        let follower = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let leader = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let leader_addr = leader.local_addr().unwrap().to_string();
        let named = leader_addr.clone();
        let follower_addr = follower.local_addr().unwrap().to_string();
        let k2 = key.clone();
        let serve = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut out = Vec::new();
            let (n, from) = follower.recv_from(&mut buf).await.unwrap();
            let seq = open(&buf[..n], &k2).unwrap().seq;
            let refuse = api::BeatReply {
                code: "NOT_LEADER".into(),
                leader: leader_addr.clone(),
                ..Default::default()
            };
            seal(&k2, Kind::Reply, seq, &refuse, &mut out).unwrap();
            follower.send_to(&out, from).await.unwrap();
            let (n, from) = leader.recv_from(&mut buf).await.unwrap();
            let seq = open(&buf[..n], &k2).unwrap().seq;
            leader.send_to(b"junk", from).await.unwrap();
            let ok = |s| api::BeatReply {
                response: Some(api::HeartbeatResponse { revision: s, ..Default::default() }),
                ..Default::default()
            };
            seal(&k2, Kind::Reply, seq - 1, &ok(1), &mut out).unwrap();
            leader.send_to(&out, from).await.unwrap();
            seal(&k2, Kind::Reply, seq, &ok(2), &mut out).unwrap();
            leader.send_to(&out, from).await.unwrap();
        });
        let mut d = Datagrams::new(key, vec![follower_addr.clone()]);
        let r = d.beat(Some(&follower_addr), &req()).await.expect("answered");
        assert_eq!(r.revision, 2);
        serve.await.unwrap();
        assert_eq!(d.stats(), DatagramStats { answered: 1, fell_back: 0, unanswered: 0 });
        // The next datagram goes to the leader named, not back to the follower.
        assert_eq!(d.leader.as_deref(), Some(named.as_str()));
    }

    #[test]
    fn each_agent_has_its_own_key_and_the_key_opens_that_agents_datagrams_only() {
        let secret = BeatSecret::new(&[9; 32]);
        // Derived alike by every holder of the secret (every member), different per agent and per secret.
        let again = BeatSecret::new(&[9; 32]);
        assert_eq!(secret.id(), again.id());
        assert_eq!(secret.agent_key_bytes("agent-1"), again.agent_key_bytes("agent-1"));
        assert_ne!(secret.agent_key_bytes("agent-1"), secret.agent_key_bytes("agent-2"));
        let other = BeatSecret::new(&[8; 32]);
        assert_ne!(other.id(), secret.id());
        assert_ne!(other.agent_key_bytes("agent-1"), secret.agent_key_bytes("agent-1"));
        // What the agent holds (the bytes a master handed out) seals what the master opens.
        let bytes = secret.agent_key_bytes("agent-1");
        let held = BeatKey::from_agent_key(secret.id(), &bytes).expect("32 bytes");
        assert!(BeatKey::from_agent_key(secret.id(), &bytes[..31]).is_none());
        let mut out = Vec::new();
        seal(&held, Kind::Beat, 7, &req(), &mut out).unwrap();
        assert_eq!(key_id(&out).unwrap(), secret.id());
        assert_eq!(agent_of(&out), Some("agent-1"));
        assert!(open(&out, &secret.agent_key("agent-1")).is_ok());
        assert_eq!(open(&out, &secret.agent_key("agent-2")), Err(DatagramError::BadTag));
        // The token key of old never opens it, nor the open key.
        assert!(open(&out, &BeatKey::open()).is_err());
        // Agent 1's key on a request naming agent 2: the master derives agent 2's key and the seal fails.
        let mut forged = Vec::new();
        let two = api::HeartbeatRequest { agent: "agent-2".into(), ..req() };
        seal(&held, Kind::Beat, 8, &two, &mut forged).unwrap();
        assert_eq!(agent_of(&forged), Some("agent-2"));
        assert_eq!(open(&forged, &secret.agent_key("agent-2")), Err(DatagramError::BadTag));
    }

    #[test]
    fn the_agent_named_is_the_first_agent_field_and_garbage_names_none() {
        let mut out = Vec::new();
        let key = BeatKey::open();
        // The first field 1; a decoder takes the last of repeated fields, so the master compares both.
        let mut payload = req().encode_to_vec();
        payload
            .extend(api::HeartbeatRequest { agent: "agent-2".into(), ..Default::default() }.encode_to_vec());
        seal_payload(&key, Kind::Beat, 9, &payload, &mut out).expect("test setup");
        assert_eq!(agent_of(&out), Some("agent-1"));
        let decoded = api::HeartbeatRequest::decode(open(&out, &key).unwrap().payload).unwrap();
        assert_eq!(decoded.agent, "agent-2");
        // No agent field; a truncated length; not UTF-8; not ours at all.
        let none = api::HeartbeatRequest { agent: String::new(), ..req() };
        seal(&key, Kind::Beat, 9, &none, &mut out).unwrap();
        assert_eq!(agent_of(&out), None);
        seal_payload(&key, Kind::Beat, 9, &[0x0A, 0x7F, b'a'], &mut out).expect("test setup");
        assert_eq!(agent_of(&out), None);
        seal_payload(&key, Kind::Beat, 9, &[0x0A, 0x02, 0xFF, 0xFE], &mut out).expect("test setup");
        assert_eq!(agent_of(&out), None);
        assert_eq!(agent_of(b"GET / HTTP/1.1\r\n\r\n and some more bytes to be long enough ......"), None);
    }

    #[tokio::test]
    async fn an_agent_without_a_key_sends_calls_until_a_master_hands_it_one() {
        let master = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = master.local_addr().unwrap().to_string();
        let mut d = Datagrams::keyless(vec![addr.clone()]);
        assert!(d.beat(Some(&addr), &req()).await.is_none(), "a keyless beat by datagram");
        let mut buf = [0u8; 64];
        let nothing = tokio::time::timeout(Duration::from_millis(100), master.recv_from(&mut buf)).await;
        assert!(nothing.is_err(), "a keyless agent sent a datagram");
        assert_eq!(d.key_id(), None);
        // An answer without a key changes nothing; one with a key is taken once.
        assert!(!d.take_key_from(&api::HeartbeatResponse::default()));
        let secret = BeatSecret::new(&[3; 32]);
        let resp = api::HeartbeatResponse {
            beat_key: secret.agent_key_bytes("agent-1").to_vec(),
            beat_key_id: secret.id(),
            ..Default::default()
        };
        assert_eq!(d.own_key_id(), 0);
        assert!(d.take_key_from(&resp));
        assert!(!d.take_key_from(&resp), "the same key taken again");
        assert_eq!((d.key_id(), d.own_key_id()), (Some(secret.id()), secret.id()));
        assert_eq!(Datagrams::new(BeatKey::open(), vec![]).own_key_id(), 0, "the open key is no own key");
        // Now it sends, sealed with its own key.
        let sent = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let (n, _) = master.recv_from(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        });
        d.timeout = Duration::from_millis(50);
        assert!(d.beat(Some(&addr), &req()).await.is_none(), "nobody answers");
        let got = sent.await.unwrap();
        assert!(open(&got, &secret.agent_key("agent-1")).is_ok());
    }
}
