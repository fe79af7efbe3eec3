//! One real master node in this process for the API tests (`catalog_api`, `idempotency`,
//! `net_topology_api`, `heartbeat_stream`): a single-member Raft group with fsync in a temp dir, elected,
//! its API service, and both front ends served on free loopback ports (gRPC and REST).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use master::api::{Service, ServiceConfig};
use master::fsm::{FsmStats, MasterFsm};
use master::grpc::GrpcApi;
use master::raft::{RaftConfig, RaftNode, Role};
use master::sm_seam::Policy;

/// Upper bound for a single node to elect itself and for its leader duties' first rounds.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(60);

pub struct Master {
    pub _dir: tempfile::TempDir,
    /// Kept so the node's background tasks outlive every request of the test.
    pub svc: Arc<Service>,
    pub db: Arc<redb::Database>,
    pub stats: Arc<FsmStats>,
    /// The REST front end's address (HOST:PORT).
    pub rest: String,
    /// The gRPC front end's address (HOST:PORT).
    pub grpc: String,
}

/// The service settings of a test node (`tweak` changes them before it starts): the defaults a master
/// config resolves to, silent agents after 60 s, `auto_upgrade` on.
pub async fn start(tweak: impl FnOnce(&mut ServiceConfig)) -> Master {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let cfg = RaftConfig::single_member(dir.path(), peer.to_string());
    let (fsm, revision) = MasterFsm::new(Policy::default());
    let stats = fsm.stats();
    let (raft, db) = RaftNode::start(cfg, fsm).await.expect("start raft");
    let deadline = Instant::now() + LIVENESS_BOUND;
    while raft.status().role != Role::Leader {
        assert!(Instant::now() < deadline, "never leader: {:?}", raft.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grpc_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let (grpc, rest) =
        (grpc_l.local_addr().expect("addr").to_string(), http_l.local_addr().expect("addr").to_string());
    let mut scfg = ServiceConfig {
        agent_silent_after: Duration::from_secs(60),
        auto_upgrade: true,
        ..ServiceConfig::new(grpc.clone(), rest.clone())
    };
    tweak(&mut scfg);
    let svc = Service::start(raft, db.clone(), revision, stats.clone(), scfg);
    let g = GrpcApi::new(svc.clone());
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_l);
        tonic::transport::Server::builder().add_service(g).serve_with_incoming(incoming).await
    });
    let router = master::http::router(svc.clone());
    tokio::spawn(async move { axum::serve(http_l, router).await });
    Master { _dir: dir, svc, db, stats, rest, grpc }
}

/// Bound on anything a stream test waits for (an answer, the end of a stream, a slot given back).
pub const STREAM_BOUND: Duration = Duration::from_secs(20);

/// An open agent stream (`HeartbeatStream`, `IngestStream`): what to send on, what comes back.
pub struct Open<Q, A> {
    pub tx: tokio::sync::mpsc::Sender<Q>,
    pub rx: tonic::Streaming<A>,
}

impl<Q, A> Open<Q, A> {
    /// Open one with `open` (the client's stream method).
    pub async fn with<F, Fut>(open: F) -> Result<Self, tonic::Status>
    where
        F: FnOnce(tokio_stream::wrappers::ReceiverStream<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<A>>, tonic::Status>>,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let r = open(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
        Ok(Open { tx, rx: r.into_inner() })
    }

    /// Send one request and wait for what the stream says next (bounded).
    pub async fn exchange(&mut self, req: Q) -> Result<Option<A>, tonic::Status> {
        assert!(self.tx.send(req).await.is_ok(), "the stream takes a request");
        self.next().await
    }

    pub async fn next(&mut self) -> Result<Option<A>, tonic::Status> {
        tokio::time::timeout(STREAM_BOUND, self.rx.message()).await.expect("the stream answers or ends")
    }
}

/// Wait (bounded) until `counts()` satisfies `want`; returns the counts then.
pub async fn wait_streams(
    counts: impl Fn() -> master::api::heartbeats::StreamStats,
    want: impl Fn(master::api::heartbeats::StreamStats) -> bool,
) -> master::api::heartbeats::StreamStats {
    let deadline = Instant::now() + STREAM_BOUND;
    loop {
        let s = counts();
        if want(s) {
            return s;
        }
        assert!(Instant::now() < deadline, "stream counts never reached the expected values: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
