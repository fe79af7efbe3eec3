//! The master process: binds the three ports (Raft peers, gRPC API, HTTP), starts the raft node with the
//! state machine, serves until shutdown or until the raft node stops (a fatal storage error or a refused
//! rejoin), and shuts everything down in order. Refusals from the raft layer (e.g. an empty data dir for an
//! id the cluster already knows, without `--join`) come back as clear errors before any API is served.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::Resolved;
use crate::fsm::MasterFsm;
use crate::grpc::GrpcApi;
use crate::raft::{RaftConfig, RaftError, RaftNode, Role};
use crate::service::{Service, ServiceConfig};

/// HTTP/2 keepalive on the API port: dead client connections (and half-open ones after a partition) are
/// noticed within seconds instead of hanging watch streams forever.
pub const API_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const API_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the process checks that its raft node is still running.
pub const HEALTH_POLL: Duration = Duration::from_millis(500);

async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Run one master node until `shutdown` resolves (Ok) or the raft node stops on its own (Err).
pub async fn run(cfg: Resolved, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let peer_l = bind("Raft peers", cfg.peer_listen).await?;
    let grpc_l = bind("the gRPC API", cfg.grpc_listen).await?;
    let http_l = bind("HTTP", cfg.http_listen).await?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;

    let (fsm, revision) = MasterFsm::new(cfg.policy.clone());
    let stats = fsm.stats();
    let raft_cfg = RaftConfig {
        id: cfg.id,
        peers: cfg.peers.clone(),
        data_dir: cfg.data_dir.clone(),
        tick: cfg.tick,
        election_ticks: cfg.election_ticks,
        heartbeat_ticks: cfg.heartbeat_ticks,
        snapshot_every: cfg.snapshot_every,
        join: cfg.join,
    };
    let (raft, db) = match RaftNode::start(raft_cfg, fsm).await {
        Ok(x) => x,
        Err(e @ RaftError::RejoinRefused { .. }) => return Err(anyhow!("{e}")),
        Err(e) => return Err(anyhow!("cannot start raft node {}: {e}", cfg.id)),
    };
    tracing::info!(id = cfg.id, peer = %cfg.peer_listen, grpc = %cfg.grpc_listen, http = %cfg.http_listen,
        data_dir = %cfg.data_dir.display(), "master node started");

    let svc = Service::start(
        raft.clone(),
        db,
        revision,
        stats,
        ServiceConfig {
            grpc_addr: cfg.advertise_grpc.clone(),
            http_addr: cfg.advertise_http.clone(),
            agent_silent_after: cfg.agent_silent_after,
            policy: cfg.policy.clone(),
        },
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let peer_srv = {
        let svc = raft.peer_service();
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(peer_l),
                    stopped(rx),
                )
                .await
        })
    };
    let grpc_srv = {
        let api = GrpcApi::new(svc.clone());
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(API_KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(API_KEEPALIVE_TIMEOUT))
                .add_service(api)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_l),
                    stopped(rx),
                )
                .await
        })
    };
    let http_srv = {
        let router = crate::http::router(svc.clone());
        let rx = stop_rx.clone();
        tokio::spawn(async move { axum::serve(http_l, router).with_graceful_shutdown(stopped(rx)).await })
    };

    let (died_tx, died_rx) = oneshot::channel::<String>();
    let monitor = {
        let raft = raft.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_POLL).await;
                let st = raft.status();
                if st.role == Role::Stopped {
                    let _ = died_tx.send(st.last_error.unwrap_or_else(|| "raft node stopped".into()));
                    return;
                }
            }
        })
    };

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        why = died_rx => Err(anyhow!("raft node {} stopped: {}", cfg.id, why.unwrap_or_default())),
    };
    monitor.abort();
    let _ = stop_tx.send(true);
    drop(svc);
    for (name, h) in [("peer", peer_srv), ("grpc", grpc_srv)] {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), h).await {
            tracing::warn!(server = name, error = %e, "server ended with an error");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http_srv).await;
    raft.shutdown().await;
    tracing::info!(id = cfg.id, "master node stopped");
    result
}

/// Keep `Arc` in the public signature stable for embedders (tests, `huatuo dev`).
pub type SharedService = Arc<Service>;
