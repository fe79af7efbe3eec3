//! The gRPC peer transport: the `Peer` service (receives raft messages, chunked snapshots and rejoin
//! probes) and, per peer, a bounded send queue drained by its own task. Raft messages cross the wire as
//! opaque protobuf-2 bytes (raft-proto). Every channel has HTTP/2 keepalive and per-call timeouts:
//! without them a channel can wedge silently after a partition heals. With [`set_peer_tls`] every channel
//! speaks mutual TLS (https, the cluster CA, this master's certificate as client certificate); the server
//! side of the peer port gets its TLS config in `server.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::peer::peer_client::PeerClient;
use proto::peer::peer_server::{Peer, PeerServer};
use proto::peer::{ProbeReply, ProbeRequest, RaftBatch, SendReply, SnapshotChunk};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::client::verify_server_name;
use tokio_rustls::rustls::pki_types::{CertificateDer as CertDer, ServerName};
use tokio_rustls::rustls::server::ParsedCertificate;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::NodeId;
use super::alarms::SNAPSHOT_CHUNKS_REFUSED;
use super::node::{LoopInput, NodeShared};
use crate::checksum::crc32c;
use std::sync::atomic::Ordering;

/// Messages queued per peer before new ones are dropped (and the peer reported unreachable): a few
/// heartbeat rounds of appends; raft retransmits whatever is dropped.
pub const PEER_QUEUE: usize = 1024;
/// Messages per `Send` call: batching amortises the RPC overhead when many appends are queued.
pub const MAX_BATCH_MSGS: usize = 256;
/// Bytes per `Send` call (each message is at most ~MAX_SIZE_PER_MSG + one command).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Decode limit of the server (tonic's default of 4 MiB would refuse a full batch).
pub const MAX_RPC_BYTES: usize = 16 << 20;
/// Snapshot data per streamed chunk: well under the decode limit.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest snapshot a node accepts (it is assembled in memory before being stepped).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Dialing a peer: short, so a dead peer is reported quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Per-call limit for `Send` and `Probe`.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-call limit for a whole snapshot stream (1 GiB at ~10 MiB/s).
pub const SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// HTTP/2 PING interval and the time to wait for its answer: detects half-dead connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed call before the next one: avoids a hot loop of failing dials to a dead peer.
pub const FAILURE_BACKOFF: Duration = Duration::from_millis(100);

/// Why talking to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// A configured peer address that no channel can be built for.
    #[error("peer {peer} address {addr:?}: {reason}")]
    BadAddress { peer: NodeId, addr: String, reason: String },
    /// The peer answered with an error status.
    #[error("peer answered {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    /// No answer within the call's limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl From<Status> for TransportError {
    fn from(s: Status) -> Self {
        TransportError::Status { code: s.code(), message: s.message().to_string() }
    }
}

/// TLS for the channels to the peers. Process-wide: a master process runs one raft node; in-process
/// multi-node tests run without TLS and never set it.
static PEER_TLS: std::sync::RwLock<Option<ClientTlsConfig>> = std::sync::RwLock::new(None);

/// Dial peers with mutual TLS from now on (called once by the master process before its node starts).
pub fn set_peer_tls(tls: ClientTlsConfig) {
    if let Ok(mut g) = PEER_TLS.write() {
        *g = Some(tls);
    }
}

fn peer_tls() -> Option<ClientTlsConfig> {
    PEER_TLS.read().ok().and_then(|g| g.clone())
}

/// A channel to `addr` with keepalive and timeouts set. Lazy: never blocks, dials on first use.
pub fn channel(addr: &str, call_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    let tls = peer_tls();
    let bare = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr);
    let uri = if tls.is_some() { format!("https://{bare}") } else { format!("http://{bare}") };
    let mut ep = Endpoint::from_shared(uri)?;
    if let Some(tls) = tls {
        ep = ep.tls_config(tls)?;
    }
    Ok(ep
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_lazy())
}

fn client(ch: Channel) -> PeerClient<Channel> {
    PeerClient::new(ch).max_decoding_message_size(MAX_RPC_BYTES).max_encoding_message_size(MAX_RPC_BYTES)
}

/// Asks `addr` whether it has heard from `from` (rejoin detection).
pub async fn probe(
    addr: &str,
    peer: NodeId,
    from: NodeId,
    voters: &[NodeId],
) -> Result<ProbeReply, TransportError> {
    let ch = channel(addr, RPC_TIMEOUT).map_err(|e| TransportError::BadAddress {
        peer,
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let mut c = client(ch);
    let req = ProbeRequest { from, voters: voters.to_vec() };
    match tokio::time::timeout(RPC_TIMEOUT, c.probe(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.into()),
        Err(_) => Err(TransportError::Timeout(RPC_TIMEOUT)),
    }
}

struct Link {
    msgs: mpsc::Sender<Message>,
    snaps: mpsc::Sender<Message>,
}

/// The sending side, owned by the raft loop.
pub struct Transport {
    links: BTreeMap<NodeId, Link>,
    tasks: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Spawns two tasks per peer (messages, snapshots) on `rt`.
    pub fn start(rt: &tokio::runtime::Handle, shared: &Arc<NodeShared>) -> Result<Self, TransportError> {
        let mut links = BTreeMap::new();
        let mut tasks = Vec::new();
        let my_addr = shared.peers.get(&shared.id).cloned().unwrap_or_default();
        for (&id, addr) in &shared.peers {
            if id == shared.id {
                continue;
            }
            let bad = |e: tonic::transport::Error| TransportError::BadAddress {
                peer: id,
                addr: addr.clone(),
                reason: e.to_string(),
            };
            let ch = channel(addr, RPC_TIMEOUT).map_err(bad)?;
            let snap_ch = channel(addr, SNAPSHOT_RPC_TIMEOUT).map_err(bad)?;
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            // One snapshot at a time per peer; raft re-sends after report_snapshot(Failure).
            let (stx, srx) = mpsc::channel(1);
            let s = shared.clone();
            tasks.push(rt.spawn(send_task(id, my_addr.clone(), client(ch), rx, s)));
            let s = shared.clone();
            tasks.push(rt.spawn(snapshot_task(id, my_addr.clone(), client(snap_ch), srx, s)));
            links.insert(id, Link { msgs: tx, snaps: stx });
        }
        Ok(Transport { links, tasks })
    }

    /// Queues a message; false when it was dropped (unknown peer or full queue): the caller reports the
    /// peer unreachable (or the snapshot failed) to raft once it may step again.
    pub fn send(&self, m: Message) -> bool {
        let Some(link) = self.links.get(&m.to) else { return false };
        let q = if m.get_msg_type() == MessageType::MsgSnapshot { &link.snaps } else { &link.msgs };
        q.try_send(m).is_ok()
    }

    /// Closes the queues and stops the tasks (they run on the main runtime; aborting is synchronous).
    pub fn shutdown_now(&mut self) {
        self.links.clear();
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

async fn send_task(
    peer: NodeId,
    my_addr: String,
    mut c: PeerClient<Channel>,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<NodeShared>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m.write_to_bytes() {
                Ok(b) => {
                    bytes += b.len();
                    batch.push(b);
                }
                Err(e) => tracing::error!(peer, error = %e, "cannot encode raft message; dropped"),
            }
            if batch.len() >= MAX_BATCH_MSGS || bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        let req = RaftBatch { from: shared.id, from_addr: my_addr.clone(), messages: batch };
        let ok = match tokio::time::timeout(RPC_TIMEOUT, c.send(req)).await {
            Ok(Ok(_)) => true,
            Ok(Err(s)) => {
                tracing::debug!(peer, status = %s, "raft send failed");
                false
            }
            Err(_) => false,
        };
        if !ok {
            let _ = shared.mailbox.try_send(LoopInput::Unreachable(peer));
            tokio::time::sleep(FAILURE_BACKOFF).await;
            // Whatever queued meanwhile is stale by now; raft re-sends what matters.
            while rx.try_recv().is_ok() {}
        }
    }
}

async fn snapshot_task(
    peer: NodeId,
    my_addr: String,
    mut c: PeerClient<Channel>,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<NodeShared>,
) {
    while let Some(mut m) = rx.recv().await {
        let data = m.mut_snapshot().take_data();
        let header = match m.write_to_bytes() {
            Ok(h) => h,
            Err(_) => {
                let _ = shared.mailbox.try_send(LoopInput::SnapshotStatus(peer, false));
                continue;
            }
        };
        let total = data.len();
        let mut chunks = Vec::with_capacity(total / SNAPSHOT_CHUNK + 1);
        let first = &data[..total.min(SNAPSHOT_CHUNK)];
        chunks.push(SnapshotChunk {
            from: shared.id,
            from_addr: my_addr.clone(),
            header,
            total_len: total as u64,
            data: first.to_vec(),
            crc32c: crc32c(first),
            data_crc32c: crc32c(&data),
            checksummed: true,
        });
        let mut off = total.min(SNAPSHOT_CHUNK);
        while off < total {
            let end = (off + SNAPSHOT_CHUNK).min(total);
            let part = &data[off..end];
            chunks.push(SnapshotChunk { data: part.to_vec(), crc32c: crc32c(part), ..Default::default() });
            off = end;
        }
        damage_in_transit(&shared, &mut chunks);
        let res =
            tokio::time::timeout(SNAPSHOT_RPC_TIMEOUT, c.send_snapshot(tokio_stream::iter(chunks))).await;
        let ok = matches!(res, Ok(Ok(_)));
        if !ok {
            tracing::warn!(peer, bytes = total, "snapshot send failed");
        } else {
            tracing::info!(peer, bytes = total, "snapshot sent");
        }
        let _ = shared.mailbox.send(LoopInput::SnapshotStatus(peer, ok)).await;
    }
}

/// The fault-injection hook ([`super::RaftNode::damage_snapshot_sends`]): flip one byte of the last chunk,
/// after its checksum was computed.
fn damage_in_transit(shared: &NodeShared, chunks: &mut [SnapshotChunk]) {
    let hook = &shared.corrupt_snapshot_sends;
    let Some(last) = chunks.last_mut().filter(|c| !c.data.is_empty()) else { return };
    if hook.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
        let mid = last.data.len() / 2;
        last.data[mid] ^= 0x5a;
        tracing::warn!("fault injection: one byte of this snapshot stream damaged in transit");
    }
}

/// A chunk's checksum, when the stream carries them: a mismatch refuses the whole stream (counted).
fn check_chunk(c: &SnapshotChunk, n: usize, checksummed: bool) -> Result<(), Status> {
    if checksummed && crc32c(&c.data) != c.crc32c {
        SNAPSHOT_CHUNKS_REFUSED.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(chunk = n, bytes = c.data.len(), "snapshot chunk failed its checksum: refused");
        return Err(Status::data_loss(format!(
            "snapshot chunk {n} ({} bytes) fails its CRC-32C: damaged in transit, send the snapshot again",
            c.data.len()
        )));
    }
    Ok(())
}

/// The `Peer` gRPC service: mount it on the master's peer port.
#[derive(Clone)]
pub struct PeerService {
    pub(crate) shared: Arc<NodeShared>,
}

impl PeerService {
    /// The tonic server wrapper with our message-size limits.
    pub fn into_server(self) -> PeerServer<PeerService> {
        PeerServer::new(self)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES)
    }

    fn check_sender(&self, from: NodeId, from_addr: &str) -> Result<(), Status> {
        if from == self.shared.id || !self.shared.peers.contains_key(&from) {
            return Err(Status::permission_denied(format!(
                "node {from} is not a peer of {}",
                self.shared.id
            )));
        }
        if !from_addr.is_empty() {
            self.shared.note_peer_addr(from, from_addr);
        }
        Ok(())
    }

    /// With TLS on, the certificate a peer presents must be valid for the host of that peer's own address
    /// (as its server certificate is): an agent's or operator's certificate from the same CA cannot pose
    /// as a master.
    fn check_cert(&self, from: NodeId, certs: Option<Arc<Vec<CertDer<'static>>>>) -> Result<(), Status> {
        if peer_tls().is_none() {
            return Ok(());
        }
        let refuse = |why: String| Err(Status::permission_denied(format!("peer {from}: {why}")));
        let Some(leaf) = certs.as_ref().and_then(|c| c.first().cloned()) else {
            return refuse("no client certificate".into());
        };
        let Some(addr) = self.shared.peers.get(&from) else { return refuse("not a peer".into()) };
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let Ok(name) = ServerName::try_from(host.clone()) else {
            return refuse(format!("peer address host {host:?} is not a name"));
        };
        let parsed = match ParsedCertificate::try_from(&leaf) {
            Ok(p) => p,
            Err(e) => return refuse(format!("unreadable certificate: {e}")),
        };
        if let Err(e) = verify_server_name(&parsed, &name) {
            return refuse(format!("its certificate is not valid for {host} ({e})"));
        }
        Ok(())
    }

    fn decode(&self, from: NodeId, bytes: &[u8]) -> Result<Message, Status> {
        let m = Message::parse_from_bytes(bytes)
            .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
        if m.from != from || m.to != self.shared.id {
            return Err(Status::invalid_argument(format!(
                "raft message {}->{} in a batch from {from} to {}",
                m.from, m.to, self.shared.id
            )));
        }
        Ok(m)
    }

    fn deliver(&self, msgs: Vec<Message>) -> Result<(), Status> {
        if !self.shared.is_running() {
            return Err(Status::unavailable("raft node not running (probing, stopped)"));
        }
        self.shared
            .mailbox
            .try_send(LoopInput::Step(msgs))
            .map_err(|_| Status::resource_exhausted("raft mailbox full"))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<SendReply>, Status> {
        let certs = req.peer_certs();
        let b = req.into_inner();
        self.check_sender(b.from, &b.from_addr)?;
        self.check_cert(b.from, certs)?;
        let msgs = b.messages.iter().map(|m| self.decode(b.from, m)).collect::<Result<Vec<_>, _>>()?;
        if msgs.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot) {
            return Err(Status::invalid_argument("snapshots go through SendSnapshot"));
        }
        self.deliver(msgs)?;
        Ok(Response::new(SendReply {}))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendReply>, Status> {
        let certs = req.peer_certs();
        let mut s = req.into_inner();
        let first = s.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_sender(first.from, &first.from_addr)?;
        self.check_cert(first.from, certs)?;
        let mut m = self.decode(first.from, &first.header)?;
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument("snapshot stream header is not a MsgSnapshot"));
        }
        if first.total_len > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {} bytes exceeds the limit {MAX_SNAPSHOT_BYTES}",
                first.total_len
            )));
        }
        let total = first.total_len as usize;
        let checksummed = first.checksummed;
        if !checksummed {
            tracing::debug!(from = first.from, "snapshot stream without checksums (an older sender)");
        }
        check_chunk(&first, 0, checksummed)?;
        let mut data = Vec::with_capacity(total.min(64 << 20));
        data.extend_from_slice(&first.data);
        let mut n = 0;
        while let Some(c) = s.message().await? {
            n += 1;
            if data.len() + c.data.len() > total {
                return Err(Status::invalid_argument("snapshot stream longer than announced"));
            }
            check_chunk(&c, n, checksummed)?;
            data.extend_from_slice(&c.data);
        }
        if data.len() != total {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended at {} of {total} bytes",
                data.len()
            )));
        }
        if checksummed && crc32c(&data) != first.data_crc32c {
            SNAPSHOT_CHUNKS_REFUSED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bytes = total, "assembled snapshot failed its checksum: refused");
            return Err(Status::data_loss(format!(
                "snapshot of {total} bytes fails its CRC-32C once assembled: send it again"
            )));
        }
        m.mut_snapshot().set_data(data.into());
        self.deliver(vec![m])?;
        Ok(Response::new(SendReply {}))
    }

    async fn probe(&self, req: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        let certs = req.peer_certs();
        let r = req.into_inner();
        if !self.shared.peers.contains_key(&r.from) {
            return Err(Status::permission_denied(format!(
                "node {} is not a peer of {}",
                r.from, self.shared.id
            )));
        }
        self.check_cert(r.from, certs)?;
        Ok(Response::new(self.shared.probe_reply(r.from)))
    }
}
