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
use super::snapfile::{Descriptor, SnapError};
use crate::checksum::crc32c;
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages queued per peer before new ones are dropped (and the peer reported unreachable): a few
/// heartbeat rounds of appends; raft retransmits whatever is dropped.
pub const PEER_QUEUE: usize = 1024;
/// Messages per `Send` call: batching amortises the RPC overhead when many appends are queued.
pub const MAX_BATCH_MSGS: usize = 256;
/// Bytes per `Send` call (each message is at most ~MAX_SIZE_PER_MSG + one command).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Decode limit of the server (tonic's default of 4 MiB would refuse a full batch).
pub const MAX_RPC_BYTES: usize = 16 << 20;
/// Largest snapshot a node accepts. It goes to a file chunk by chunk (memory holds one chunk), so this
/// bounds disk, not memory: 64 GiB is far above the issue-17 target (1.5 M objects, a few GiB); the free
/// space under the data dir is checked too.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;
/// Dialing a peer: short, so a dead peer is reported quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Per-call limit for `Send` and `Probe`.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-call limit for a whole snapshot stream (a few GiB over a datacenter link at >= 50 MiB/s).
pub const SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(600);
/// Chunks read ahead of the network by a snapshot send (memory: this many chunks).
const SEND_AHEAD: usize = 2;
/// HTTP/2 PING interval and the time to wait for its answer: detects half-dead connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed call before the next one: avoids a hot loop of failing dials to a dead peer.
pub const FAILURE_BACKOFF: Duration = Duration::from_millis(100);
/// After a peer answered UNIMPLEMENTED to `SendStream` (a member from before streams, during a rolling
/// upgrade), the sender keeps to `Send` calls for this long before it tries a stream again.
pub const STREAM_RETRY: Duration = Duration::from_secs(60);
/// Batches handed to a peer stream and not yet taken by its HTTP/2 body (flow control bounds what is
/// written and not yet read); a batch that does not fit within [`RPC_TIMEOUT`] ends the stream as a
/// failed call would.
const STREAM_AHEAD: usize = 4;
/// How often a received peer stream checks that this node still runs (see `send_stream`).
const STREAM_RUNNING_CHECK: Duration = Duration::from_millis(500);
/// `HUATUO_PEER_STREAMS=0` turns the peer streams off in this process: its senders use `Send` calls and
/// its peer port answers `SendStream` with UNIMPLEMENTED (a switch for operators, and how the tests make a
/// member from before streams).
pub const STREAMS_ENV: &str = "HUATUO_PEER_STREAMS";

/// Batches of raft messages this process sent over a peer stream, and as `Send` calls.
pub static BATCHES_STREAMED: AtomicU64 = AtomicU64::new(0);
pub static BATCHES_CALLED: AtomicU64 = AtomicU64::new(0);
/// Peer streams this process opened (a new one after each failure or end).
pub static STREAMS_OPENED: AtomicU64 = AtomicU64::new(0);

/// Whether this process uses and serves peer streams ([`STREAMS_ENV`]).
pub fn streams_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(STREAMS_ENV).map_or(true, |v| v.trim() != "0"))
}
/// Pause after a failed snapshot send before raft-rs hears of it (and sends again, from the same file): a
/// follower that refuses snapshots for a while (short of disk) costs a stream's start and a log line a
/// second, not one per heartbeat.
pub const SNAPSHOT_RETRY_PAUSE: Duration = Duration::from_secs(1);

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

/// A channel to `addr` with keepalive and timeouts set (`call_timeout`: every call's limit; None: none, for
/// the long-lived message streams, whose sender bounds each batch itself and whose dead peer the keepalive
/// finds). Lazy: never blocks, dials on first use.
pub fn channel(addr: &str, call_timeout: Option<Duration>) -> Result<Channel, tonic::transport::Error> {
    let tls = peer_tls();
    let bare = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr);
    let uri = if tls.is_some() { format!("https://{bare}") } else { format!("http://{bare}") };
    let mut ep = Endpoint::from_shared(uri)?;
    if let Some(tls) = tls {
        ep = ep.tls_config(tls)?;
    }
    if let Some(t) = call_timeout {
        ep = ep.timeout(t);
    }
    Ok(ep
        .connect_timeout(CONNECT_TIMEOUT)
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
    let ch = channel(addr, Some(RPC_TIMEOUT)).map_err(|e| TransportError::BadAddress {
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
        // The channels' connection workers are spawned where they are made: on `rt` too.
        let _on_rt = rt.enter();
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
            // No per-call limit on the messages' channel: its stream lives as long as the peer does, and
            // `send_task` bounds each call and each batch by `RPC_TIMEOUT` itself.
            let ch = channel(addr, None).map_err(bad)?;
            let snap_ch = channel(addr, Some(SNAPSHOT_RPC_TIMEOUT)).map_err(bad)?;
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

    /// Closes the queues and stops the tasks (they run on the peer runtime; aborting is synchronous).
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

/// Drains one peer's queue: batches over a long-lived `SendStream` when the peer has it, else `Send`
/// calls, one in flight at a time. A failure (an error, no answer or no room within [`RPC_TIMEOUT`]) is
/// reported to raft as the peer unreachable, and what queued meanwhile is dropped after a short pause: raft
/// resends what matters.
async fn send_task(
    peer: NodeId,
    my_addr: String,
    mut c: PeerClient<Channel>,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<NodeShared>,
) {
    // Calls until this instant (the peer answered UNIMPLEMENTED to a stream); None: try streams.
    let mut calls_until: Option<std::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let ok = if streams_on() && calls_until.is_none_or(|t| std::time::Instant::now() >= t) {
            calls_until = None;
            match stream_to(&c, first, &mut rx, shared.id, &my_addr).await {
                StreamEnd::Closed => return,
                StreamEnd::Unimplemented => {
                    tracing::info!(peer, "peer has no SendStream (an older member): Send calls for a while");
                    calls_until = Some(std::time::Instant::now() + STREAM_RETRY);
                    // What went into the refused stream is lost: raft hears of it as for a failed call.
                    false
                }
                StreamEnd::Failed(why) => {
                    tracing::debug!(peer, why, "raft stream failed");
                    false
                }
            }
        } else {
            let Some(batch) = next_batch(first, &mut rx, shared.id, &my_addr) else { continue };
            BATCHES_CALLED.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(RPC_TIMEOUT, c.send(batch)).await {
                Ok(Ok(_)) => true,
                Ok(Err(s)) => {
                    tracing::debug!(peer, status = %s, "raft send failed");
                    false
                }
                Err(_) => false,
            }
        };
        if !ok {
            let _ = shared.mailbox.try_send(LoopInput::Unreachable(peer));
            tokio::time::sleep(FAILURE_BACKOFF).await;
            // Whatever queued meanwhile is stale by now; raft re-sends what matters.
            while rx.try_recv().is_ok() {}
        }
    }
}

/// `first` and whatever else is queued (up to [`MAX_BATCH_MSGS`] / [`MAX_BATCH_BYTES`]) as one batch; None
/// when no message could be encoded.
fn next_batch(
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
    from: NodeId,
    my_addr: &str,
) -> Option<RaftBatch> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let mut next = Some(first);
    while let Some(m) = next.take() {
        match m.write_to_bytes() {
            Ok(b) => {
                bytes += b.len();
                batch.push(b);
            }
            Err(e) => tracing::error!(to = m.to, error = %e, "cannot encode raft message; dropped"),
        }
        if batch.len() >= MAX_BATCH_MSGS || bytes >= MAX_BATCH_BYTES {
            break;
        }
        next = rx.try_recv().ok();
    }
    (!batch.is_empty()).then(|| RaftBatch { from, from_addr: my_addr.to_string(), messages: batch })
}

/// How a peer stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The queue closed: the node is stopping.
    Closed,
    /// The peer does not serve `SendStream`.
    Unimplemented,
    /// An error, a batch that found no room within [`RPC_TIMEOUT`], or an end the sender did not ask for.
    Failed(String),
}

/// Send `first` and every message queued after it over one `SendStream` until the queue closes or the
/// stream fails.
async fn stream_to(
    c: &PeerClient<Channel>,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
    from: NodeId,
    my_addr: &str,
) -> StreamEnd {
    let (tx, body) = mpsc::channel::<RaftBatch>(STREAM_AHEAD);
    let body = futures::stream::unfold(body, |mut b| async move { b.recv().await.map(|x| (x, b)) });
    let mut client = c.clone();
    STREAMS_OPENED.fetch_add(1, Ordering::Relaxed);
    // The call runs as a task of its own: its request body is written as batches arrive, while this loop
    // waits for the next messages; it ends when the peer ends the stream (or the channel fails).
    let call = tokio::spawn(async move { client.send_stream(body).await });
    let mut call = AbortOnDrop(call);
    let ended = |r: Result<Result<Response<SendReply>, Status>, tokio::task::JoinError>| match r {
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => StreamEnd::Unimplemented,
        Ok(Err(s)) => StreamEnd::Failed(format!("{}: {}", s.code(), s.message())),
        Ok(Ok(_)) => StreamEnd::Failed("the peer ended the stream".into()),
        Err(e) => StreamEnd::Failed(format!("stream task: {e}")),
    };
    let mut next = Some(first);
    loop {
        let m = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                biased;
                r = &mut call.0 => return ended(r),
                m = rx.recv() => match m {
                    Some(m) => m,
                    // Closing our side ends the call cleanly; the task is aborted with the guard.
                    None => return StreamEnd::Closed,
                },
            },
        };
        let Some(batch) = next_batch(m, rx, from, my_addr) else { continue };
        tokio::select! {
            biased;
            r = &mut call.0 => return ended(r),
            sent = tokio::time::timeout(RPC_TIMEOUT, tx.send(batch)) => match sent {
                Ok(Ok(())) => {
                    BATCHES_STREAMED.fetch_add(1, Ordering::Relaxed);
                }
                // The body was dropped: the call is ending; say how (within the same bound).
                Ok(Err(_)) => {
                    return match tokio::time::timeout(RPC_TIMEOUT, &mut call.0).await {
                        Ok(r) => ended(r),
                        Err(_) => StreamEnd::Failed("the stream's body closed without an answer".into()),
                    };
                }
                Err(_) => return StreamEnd::Failed(format!("no room for a batch within {RPC_TIMEOUT:?}")),
            },
        }
    }
}

/// Aborts the task when dropped (a stream's call must not outlive the loop that feeds it).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn snapshot_task(
    peer: NodeId,
    my_addr: String,
    mut c: PeerClient<Channel>,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<NodeShared>,
) {
    while let Some(m) = rx.recv().await {
        let ok = match send_snapshot_file(&my_addr, &mut c, m, &shared).await {
            Ok(bytes) => {
                tracing::info!(peer, bytes, "snapshot sent");
                true
            }
            Err(e) => {
                tracing::warn!(peer, error = %e, "snapshot send failed");
                tokio::time::sleep(SNAPSHOT_RETRY_PAUSE).await;
                false
            }
        };
        if shared.mailbox.send(LoopInput::SnapshotStatus(peer, ok)).await.is_err() {
            // The Raft loop has stopped: nobody is left to report to, and no more snapshots will come.
            return;
        }
    }
}

/// Streams the file a MsgSnapshot's descriptor names: a reader thread verifies each frame and hands it over
/// a small queue (`SEND_AHEAD`), so memory holds a few chunks whatever the snapshot's size. The file is
/// held (not deleted) until the stream ends. The wire format is the one older binaries speak: they
/// assemble the chunks into the snapshot bytes.
async fn send_snapshot_file(
    my_addr: &str,
    c: &mut PeerClient<Channel>,
    mut m: Message,
    shared: &Arc<NodeShared>,
) -> Result<u64, String> {
    let desc = Descriptor::decode(&m.mut_snapshot().take_data()).map_err(|e| e.to_string())?;
    let hold = shared.snaps.hold(&desc.name).ok_or_else(|| format!("snapshot file {} is gone", desc.name))?;
    let mut reader = shared.snaps.reader(&desc).map_err(|e| e.to_string())?;
    let header = m.write_to_bytes().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(SEND_AHEAD);
    let (size, crc) = (desc.size, desc.crc);
    let from = shared.id;
    let from_addr = my_addr.to_string();
    let sh = shared.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let _hold = hold;
        let mut first = true;
        loop {
            let chunk = match reader.next_chunk() {
                Ok(Some((data, crc32c))) => {
                    SnapshotChunk { data: data.to_vec(), crc32c, ..Default::default() }
                }
                // An empty snapshot (an empty state machine) still sends its header.
                Ok(None) if first => SnapshotChunk { crc32c: crc32c(&[]), ..Default::default() },
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Our own file is damaged: a corrupt replica (the loop stops the node).
                    if let SnapError::Damaged(msg) = &e {
                        sh.snaps.note_damage(msg);
                    }
                    return Err(e.to_string());
                }
            };
            let mut chunk = chunk;
            if first {
                chunk.from = from;
                chunk.from_addr = from_addr.clone();
                chunk.header = header.clone();
                chunk.total_len = size;
                chunk.data_crc32c = crc;
                chunk.checksummed = true;
                damage_in_transit(&sh, &mut chunk);
                first = false;
            }
            if tx.blocking_send(chunk).is_err() {
                return Err("the stream ended early".into());
            }
        }
    });
    let res = tokio::time::timeout(
        SNAPSHOT_RPC_TIMEOUT,
        c.send_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let read = read.await.map_err(|e| format!("snapshot reader: {e}"))?;
    match res {
        Ok(Ok(_)) => {
            read?;
            Ok(size)
        }
        Ok(Err(s)) => Err(format!("{size} bytes: peer answered {s}")),
        Err(_) => Err(format!("{size} bytes: no answer within {SNAPSHOT_RPC_TIMEOUT:?}")),
    }
}

/// The fault-injection hook ([`super::RaftNode::damage_snapshot_sends`]): flip one byte of the stream's
/// first chunk, after its checksum was computed.
fn damage_in_transit(shared: &NodeShared, chunk: &mut SnapshotChunk) {
    let hook = &shared.corrupt_snapshot_sends;
    if chunk.data.is_empty() {
        return;
    }
    if hook.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
        let mid = chunk.data.len() / 2;
        chunk.data[mid] ^= 0x5a;
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

    async fn send_stream(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<SendReply>, Status> {
        if !streams_on() {
            return Err(Status::unimplemented(format!("peer streams are off here ({STREAMS_ENV}=0)")));
        }
        let certs = req.peer_certs();
        let mut s = req.into_inner();
        // The sender is checked once, on its first batch: a stream carries one sender.
        let mut sender = None;
        // A stopped node ends its peers' streams (its peer server waits for them at shutdown), whether or not
        // they send anything more: checked twice a second, one timer per stream.
        let mut check = tokio::time::interval(STREAM_RUNNING_CHECK);
        loop {
            let b = tokio::select! {
                m = s.message() => match m? {
                    Some(b) => b,
                    None => break,
                },
                _ = check.tick() => {
                    if !self.shared.is_running() {
                        return Err(Status::unavailable("raft node not running (stopped)"));
                    }
                    continue;
                }
            };
            match sender {
                None => {
                    self.check_sender(b.from, &b.from_addr)?;
                    self.check_cert(b.from, certs.clone())?;
                    sender = Some(b.from);
                }
                Some(f) if f != b.from => {
                    return Err(Status::invalid_argument(format!(
                        "a raft stream carries one sender: opened by {f}, got a batch from {}",
                        b.from
                    )));
                }
                Some(_) => {}
            }
            let msgs = b.messages.iter().map(|m| self.decode(b.from, m)).collect::<Result<Vec<_>, _>>()?;
            if msgs.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot) {
                return Err(Status::invalid_argument("snapshots go through SendSnapshot"));
            }
            self.deliver(msgs)?;
        }
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
        let total = first.total_len;
        // Short of disk, a member takes no snapshot either (it drops appends too, `Core::set_short_of_disk`):
        // the leader's transport reports the failure and raft-rs sends again later, from the same file.
        if let Some((free, floor)) = self.shared.nospace_alarm() {
            return Err(Status::resource_exhausted(format!(
                "this member is short of disk ({free} bytes free, floor {floor}): no snapshot until space returns"
            )));
        }
        if let Ok(free) = super::alarms::free_bytes(self.shared.snaps.path())
            && free < total
        {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {total} bytes does not fit in the {free} bytes free under the data dir"
            )));
        }
        let checksummed = first.checksummed;
        if !checksummed {
            tracing::debug!(from = first.from, "snapshot stream without checksums (an older sender)");
        }
        check_chunk(&first, 0, checksummed)?;
        let meta = m.get_snapshot().get_metadata();
        let w = self
            .shared
            .snaps
            .create(meta.index, meta.term)
            .map_err(|e| Status::unavailable(format!("cannot receive a snapshot now: {e}")))?;
        // Blocking file writes run off the async workers, one chunk at a time.
        let write = |mut w: super::snapfile::Writer, data: Vec<u8>| async move {
            tokio::task::spawn_blocking(move || std::io::Write::write_all(&mut w, &data).map(|()| w))
                .await
                .map_err(|e| Status::internal(format!("snapshot writer: {e}")))?
                .map_err(|e| Status::internal(format!("writing the snapshot file: {e}")))
        };
        let stall = self.shared.stall_snapshot_receive_after.swap(0, Ordering::Relaxed);
        let mut w = write(w, first.data).await?;
        let mut n = 0u32;
        loop {
            if stall != 0 && n + 1 >= stall {
                // Test hook: as a follower killed mid-transfer, the `.part` stays until the next start.
                tracing::warn!(chunks = n + 1, "test hook: snapshot receive stalled until the node stops");
                while self.shared.is_running() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                w.abandon();
                return Err(Status::unavailable("node stopped while receiving a snapshot"));
            }
            let Some(c) = s.message().await? else { break };
            n += 1;
            if w.progress().0 + c.data.len() as u64 > total {
                return Err(Status::invalid_argument("snapshot stream longer than announced"));
            }
            check_chunk(&c, n as usize, checksummed)?;
            w = write(w, c.data).await?;
        }
        let (got, crc) = w.progress();
        if got != total {
            return Err(Status::invalid_argument(format!("snapshot stream ended at {got} of {total} bytes")));
        }
        if checksummed && crc != first.data_crc32c {
            SNAPSHOT_CHUNKS_REFUSED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bytes = total, "received snapshot failed its whole checksum: refused");
            return Err(Status::data_loss(format!(
                "snapshot of {total} bytes fails its CRC-32C once received: send it again"
            )));
        }
        let (desc, hold) = tokio::task::spawn_blocking(move || w.finish())
            .await
            .map_err(|e| Status::internal(format!("snapshot writer: {e}")))?
            .map_err(|e| Status::internal(format!("finishing the snapshot file: {e}")))?;
        m.mut_snapshot().set_data(desc.encode().into());
        if !self.shared.is_running() {
            return Err(Status::unavailable("raft node not running (probing, stopped)"));
        }
        self.shared
            .mailbox
            .try_send(LoopInput::StepSnapshot(m, hold))
            .map_err(|_| Status::resource_exhausted("raft mailbox full"))?;
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
