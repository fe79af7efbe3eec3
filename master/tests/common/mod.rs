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
