//! The master process: binds the three ports (Raft peers, gRPC API, HTTP), starts the raft node with the
//! state machine, serves until shutdown or until the raft node stops (a fatal storage error or a refused
//! rejoin), and shuts everything down in order. Refusals from the raft layer (e.g. an empty data dir for an
//! id the cluster already knows, without `--join`) come back as clear errors before any API is served.
//!
//! Shutdown is ordered and bounded ([`serve`]): stop accepting on the API ports, drain the watch streams,
//! stop the duties (proposer, leader duties, ticket dispatcher), stop Raft, then close the peer port and
//! release the database. Each step has its limit (named constants below and in `api`); what is still
//! running at a limit is aborted and counted in the [`Stopped`] report.
//!
//! Security (see `config::Security`): mutual TLS on the peer and gRPC ports (client certificates from the
//! cluster CA required), HTTPS on the HTTP port (client certificates optional), and bearer tokens checked on
//! every gRPC and REST call by `auth`. `--insecure` turns all of it off, loudly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::accept::{self, Port};
use crate::api::{Service, ServiceConfig, ShutdownReport};
use crate::auth::{Authenticator, GrpcAuthLayer};
use crate::config::{Resolved, Security};
use crate::fsm::MasterFsm;
use crate::grpc::GrpcApi;
use crate::raft::{RaftConfig, RaftError, RaftNode, Role};

/// HTTP/2 keepalive on the API port: dead client connections (and half-open ones after a partition) are
/// noticed within seconds instead of hanging watch streams forever.
pub const API_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const API_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the process checks that its raft node is still running.
pub const HEALTH_POLL: Duration = Duration::from_millis(500);
/// How long the API servers get to finish their open requests once they stopped accepting (watch streams
/// are ended for them first; a unary call waits at most for its commit).
pub const SERVER_DRAIN: Duration = Duration::from_secs(5);
/// How long the raft node gets to finish its turn, persist and stop its thread.
pub const RAFT_STOP: Duration = Duration::from_secs(10);
/// How long the peer port gets to close once Raft stopped (its streams end with the raft node).
pub const PEER_DRAIN: Duration = Duration::from_secs(2);
/// The member's archive file in its data dir (`archive.rs`).
pub const ARCHIVE_FILE: &str = "archive.redb";
/// How long the archive writer gets to write its queue and fsync at shutdown.
pub const ARCHIVE_STOP: Duration = Duration::from_secs(5);

/// Connections a port may hold before they are accepted (the kernel caps it at `net.core.somaxconn`).
/// `TcpListener::bind` listens with 128: when a new leader's port is reached by more agents at once, the
/// kernel drops their SYNs and each retries after a second (measured: `bench heartbeats` with 256 clients
/// connecting at once counted 103 listen overflows and a beat of 1.1 s in most phases).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket =
            if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted member binds its port while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// TLS handshakes on the HTTPS port that take longer than this are dropped (slowloris).
pub const HTTPS_HANDSHAKE_TIMEOUT: Duration = proto::tls::HANDSHAKE_TIMEOUT;
/// How long open HTTPS connections get to finish once the port stopped accepting (keep-alive connections
/// idle in between requests would otherwise hold the shutdown for their whole idle timeout).
pub const HTTPS_CONN_DRAIN: Duration = Duration::from_secs(1);
/// Open HTTPS connections at once: portal users, scripts and scrapers are a few dozen; beyond this, new
/// connections are closed at once so a flood cannot exhaust memory or file descriptors.
pub const MAX_HTTPS_CONNECTIONS: usize = 1024;

/// The loaded security settings of one master process.
struct Guard {
    tls: Option<proto::tls::TlsMaterial>,
    auth: Option<Arc<Authenticator>>,
}

fn load_security(security: &Security) -> anyhow::Result<Guard> {
    match security {
        Security::Insecure => {
            let banner = "INSECURE MODE (--insecure): no TLS and no token checks on any port. Anyone who can \
reach this master can read and change everything. For tests and experiments only.";
            eprintln!("\n!!!!!!!!!!\n!!! {banner}\n!!!!!!!!!!\n");
            tracing::warn!("{banner}");
            Ok(Guard { tls: None, auth: None })
        }
        Security::Secure { tls, auth } => {
            let material = tls.load().context("cannot load the [tls] files")?;
            let auth = Authenticator::new(auth).map_err(|e| anyhow!("[auth]: {e}"))?;
            Ok(Guard { tls: Some(material), auth: Some(Arc::new(auth)) })
        }
    }
}

/// How a master node stopped: what the ordered shutdown had to abort at each limit (all zero is clean).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopped {
    /// API servers (gRPC, HTTP) still running at [`SERVER_DRAIN`].
    pub servers: usize,
    /// Watch streams and duties still running at their limits.
    pub tasks: ShutdownReport,
    /// The raft node had not stopped within [`RAFT_STOP`].
    pub raft: bool,
    /// The peer server still running at [`PEER_DRAIN`].
    pub peer: usize,
}

impl Stopped {
    pub fn clean(&self) -> bool {
        *self == Stopped::default()
    }
}

/// Run one master node until `shutdown` resolves (Ok) or the raft node stops on its own (Err).
pub async fn run(cfg: Resolved, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (stopped, result) = serve(cfg, shutdown).await?;
    if !stopped.clean() {
        tracing::warn!(?stopped, "shutdown aborted tasks at their limits");
    }
    result
}

/// [`run`], returning how the shutdown went beside the node's own outcome (an error before serving is the
/// outer error).
pub async fn serve(
    cfg: Resolved,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<(Stopped, anyhow::Result<()>)> {
    let guard = load_security(&cfg.security)?;
    match accept::raise_open_files_limit() {
        // Every agent holds a connection to the member it believes leads.
        Ok((soft, _)) if soft < cfg.max_heartbeat_streams as u64 => tracing::warn!(
            "open files limit {soft} is below max_heartbeat_streams {}: every agent holds a connection to the \
             member it believes leads, so a fleet that large would exhaust it (raise LimitNOFILE; the shipped \
             unit sets 1048576)",
            cfg.max_heartbeat_streams
        ),
        Ok((soft, _)) => tracing::info!(limit = soft, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
    }
    if let Some(m) = &guard.tls {
        crate::raft::set_peer_tls(m.client_config());
    }
    let https = guard.tls.as_ref().map(|m| m.https_config()).transpose().context("HTTPS setup")?;
    let mut peer_builder = tonic::transport::Server::builder();
    let mut grpc_builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(API_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(API_KEEPALIVE_TIMEOUT));
    if let Some(m) = &guard.tls {
        peer_builder = peer_builder.tls_config(m.server_config(false)).context("peer port TLS")?;
        grpc_builder = grpc_builder.tls_config(m.server_config(false)).context("gRPC port TLS")?;
    }
    let peer_l = bind("Raft peers", cfg.peer_listen).await?;
    let grpc_l = bind("the gRPC API", cfg.grpc_listen).await?;
    let grpc_bound = grpc_l.local_addr().ok();
    let http_l = bind("HTTP", cfg.http_listen).await?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;

    // The member's archive (derived data beside the replicated store; see `archive.rs`).
    let existing_state = cfg.data_dir.join("raft.redb").exists();
    let archive_path = cfg.data_dir.join(ARCHIVE_FILE);
    let (archive, feed) = crate::archive::Archive::open(&archive_path, cfg.archive.clone(), existing_state)
        .with_context(|| format!("cannot open the archive {}", archive_path.display()))?;
    let (fsm, revision) = MasterFsm::new(cfg.policy.clone());
    let fsm = fsm.knowing_command_version(cfg.knows_command_version).with_archive(feed);
    let stats = fsm.stats();
    let raft_cfg = RaftConfig {
        id: cfg.id,
        peers: cfg.peers.clone(),
        data_dir: cfg.data_dir.clone(),
        tick: cfg.tick,
        election_ticks: cfg.election_ticks,
        max_election_ticks: cfg.max_election_ticks,
        heartbeat_ticks: cfg.heartbeat_ticks,
        snapshot_every: cfg.snapshot_every,
        join: cfg.join,
    };
    let (raft, db) = match RaftNode::start_with(raft_cfg, cfg.storage, fsm).await {
        Ok(x) => x,
        Err(e @ RaftError::RejoinRefused { .. }) => return Err(anyhow!("{e}")),
        Err(e) => return Err(anyhow!("cannot start raft node {}: {e}", cfg.id)),
    };
    tracing::info!(id = cfg.id, peer = %cfg.peer_listen, grpc = %cfg.grpc_listen, http = %cfg.http_listen,
        data_dir = %cfg.data_dir.display(), "master node started");
    raft.set_app_version(cfg.knows_command_version);
    raft.set_api_addrs(&cfg.advertise_grpc, &cfg.advertise_http);
    // The proposal gate follows the replicated min_command_version from the start, not from the first entry.
    stats.load_replicated(&db).map_err(|e| anyhow!("cannot read the state machine: {e}"))?;

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
            max_watches: cfg.max_watches,
            max_heartbeat_streams: cfg.max_heartbeat_streams,
            max_ingest_streams: cfg.max_ingest_streams,
            ingest_stream_idle: crate::api::heartbeats::INGEST_STREAM_IDLE,
            heartbeat_stream_max_age: cfg.heartbeat_stream_max_age,
            knows_command_version: cfg.knows_command_version,
            auto_upgrade: cfg.auto_upgrade,
        },
    );
    svc.set_canary_config(cfg.canary.clone());
    svc.set_archive(archive.clone());
    svc.start_net(cfg.net.clone());
    // Repair tickets: the leader files what REPAIR asks for through the configured sink.
    if let Err(e) = crate::ticket_source::spawn(&svc, &cfg.tickets, cfg.id) {
        svc.shutdown().await;
        raft.shutdown().await;
        return Err(anyhow!("{e}"));
    }

    let (api_stop_tx, api_stop_rx) = tokio::sync::watch::channel(false);
    let (peer_stop_tx, peer_stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // A dropped sender means the node is going away: stop as well.
        rx.wait_for(|s| *s).await.ok();
    };
    // The API servers (stopped first) and the peer server (stopped after Raft), each owned here.
    let mut api_servers: JoinSet<(&'static str, std::io::Result<()>)> = JoinSet::new();
    let mut peer_server: JoinSet<(&'static str, std::io::Result<()>)> = JoinSet::new();
    {
        // On the node's peer runtime, apart from the API's (see `raft::PeerRuntime`): the listener moves
        // there so its connections are driven by that runtime's threads.
        let svc = raft.peer_service();
        let stop = stopped(peer_stop_rx);
        // Peers' `Send` answers carry a never-indexed `date` as the API's do (`grpc_date`).
        let mut builder = peer_builder.layer(crate::grpc_date::DateLayer);
        let peer_l = peer_l.into_std().context("the peer listener")?;
        peer_server.spawn_on(
            async move {
                let r = match TcpListener::from_std(peer_l) {
                    Ok(l) => builder
                        .add_service(svc)
                        .serve_with_incoming_shutdown(accept::incoming(l, Port::Peer), stop)
                        .await
                        .map_err(std::io::Error::other),
                    Err(e) => Err(e),
                };
                ("peer", r)
            },
            &raft.peer_runtime(),
        );
    }
    {
        let api = GrpcApi::new(svc.clone());
        let stop = stopped(api_stop_rx.clone());
        // Outermost, so refusals by the auth layer carry the never-indexed `date` too (`grpc_date`).
        let mut builder =
            grpc_builder.layer(crate::grpc_date::DateLayer).layer(GrpcAuthLayer(guard.auth.clone()));
        api_servers.spawn(async move {
            let r = builder
                .add_service(api)
                .serve_with_incoming_shutdown(accept::incoming(grpc_l, Port::Grpc), stop)
                .await;
            ("grpc", r.map_err(std::io::Error::other))
        });
    }
    {
        let mut router = crate::http::router(svc.clone());
        if let Some(auth) = &guard.auth {
            router =
                router.layer(axum::middleware::from_fn_with_state(Arc::clone(auth), crate::http::rest_auth));
        }
        let stop = stopped(api_stop_rx.clone());
        match https {
            None => api_servers.spawn(async move {
                (
                    "http",
                    axum::serve(accept::Listener::new(http_l, Port::Http), router)
                        .with_graceful_shutdown(stop)
                        .await,
                )
            }),
            Some(tls) => api_servers.spawn(async move {
                ("https", serve_https(http_l, router, tls, MAX_HTTPS_CONNECTIONS, stop).await)
            }),
        };
    }

    // Heartbeat datagrams on the gRPC port's number (its address as bound: a test binds port 0).
    let datagrams = match (cfg.heartbeat_datagrams, grpc_bound) {
        (true, Some(addr)) => {
            let keys = match &cfg.security {
                crate::config::Security::Insecure => crate::datagrams::Keys::open(),
                crate::config::Security::Secure { auth, .. } => crate::datagrams::Keys::of_agent_tokens(auth)
                    .taking_tokens_with_a_secret(cfg.heartbeat_datagram_token_keys),
            };
            match crate::datagrams::Server::start(svc.clone(), addr, keys, tokio::runtime::Handle::current())
            {
                Ok(s) => {
                    tracing::info!(addr = %s.addr, "heartbeat datagrams");
                    Some(s)
                }
                Err(e) => {
                    // Agents beat over their streams then (their datagrams get no answer).
                    tracing::warn!(%addr, error = %e, "cannot serve heartbeat datagrams; agents will beat with calls");
                    None
                }
            }
        }
        _ => None,
    };

    let monitor = {
        let raft = raft.clone();
        async move {
            loop {
                tokio::time::sleep(HEALTH_POLL).await;
                let st = raft.status();
                if st.role == Role::Stopped {
                    return st.last_error.unwrap_or_else(|| "raft node stopped".into());
                }
            }
        }
    };
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        why = monitor => Err(anyhow!("raft node {} stopped: {why}", cfg.id)),
    };

    let mut report = Stopped::default();
    // 1. Stop accepting on the API ports, and stop reading heartbeat datagrams.
    api_stop_tx.send_replace(true);
    if let Some(d) = datagrams {
        tokio::task::spawn_blocking(move || d.stop()).await.ok();
    }
    // 2. Drain the watch streams (the servers wait for their open streams before they finish).
    report.tasks.watchers = svc.watchers.shutdown(crate::api::WATCHER_DRAIN).await;
    report.servers = join_within(&mut api_servers, SERVER_DRAIN).await;
    // 3. Stop the duties: proposer and its entries in flight, leader duties, ticket dispatcher.
    report.tasks.duties = svc.duties.shutdown(crate::api::DUTY_STOP).await;
    // 4. Stop Raft (its loop persists what it has and its thread ends).
    report.raft = tokio::time::timeout(RAFT_STOP, raft.shutdown()).await.is_err();
    peer_stop_tx.send_replace(true);
    report.peer = join_within(&mut peer_server, PEER_DRAIN).await;
    // 5. Release the database: the service held the last handle besides the raft thread.
    drop(svc);
    // 6. The archive writer writes what is queued, makes it durable and ends (the fsm's feed went with Raft).
    let closing = tokio::task::spawn_blocking(move || archive.close());
    if tokio::time::timeout(ARCHIVE_STOP, closing).await.is_err() {
        tracing::warn!("the archive writer did not stop in time (its last seconds may be lost)");
    }
    tracing::info!(id = cfg.id, clean = report.clean(), "master node stopped");
    Ok((report, result))
}

/// Wait for every server in `set` up to `limit`, logging the ones that ended with an error; abort the rest
/// and return how many that was.
async fn join_within(set: &mut JoinSet<(&'static str, std::io::Result<()>)>, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok((name, Err(e))))) => {
                tracing::warn!(server = name, error = %e, "server ended with an error")
            }
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "server task failed"),
            Ok(Some(Ok(_))) => {}
            Ok(None) => return 0,
            Err(_) => {
                let left = set.len();
                tracing::warn!(left, ?limit, "servers still running at the limit; aborted");
                set.shutdown().await;
                return left;
            }
        }
    }
}

/// HTTPS on the HTTP port: a TLS handshake (bounded) per connection, then hyper (HTTP/1.1 or h2 by ALPN)
/// serving the axum router, at most `max_conns` connections at once. Stops accepting on `stop`; the open
/// connections (owned in a `JoinSet`) get [`HTTPS_CONN_DRAIN`] to finish, then they are closed.
async fn serve_https(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    max_conns: usize,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_conns));
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => {
                let drained = tokio::time::timeout(HTTPS_CONN_DRAIN, async {
                    while conns.join_next().await.is_some() {}
                });
                if drained.await.is_err() {
                    tracing::debug!(open = conns.len(), "closing HTTPS connections still open");
                    conns.shutdown().await;
                }
                return Ok(());
            }
            x = accept::accept(&listener, Port::Https) => x,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max_conns, "too many HTTPS connections; closing a new one");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        conns.spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HTTPS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc).await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    /// A port queues far more connections than `TcpListener::bind`'s 128 before they are accepted: none of
    /// 300 connects is dropped while nothing accepts (with 128 the 130th hangs, its SYN dropped).
    #[tokio::test]
    async fn a_port_queues_hundreds_of_connections_before_accepting() {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if somaxconn < 300 {
            eprintln!(
                "skipped: net.core.somaxconn is {somaxconn}, which caps every listen backlog below 300"
            );
            return;
        }
        let l = bind("test", "127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let connects = async {
            let mut open = Vec::new();
            for _ in 0..300 {
                open.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
            }
            open
        };
        // A bound, not a measurement: the connects take milliseconds; a dropped SYN hangs until the kernel
        // gives up (minutes).
        let open =
            tokio::time::timeout(Duration::from_secs(20), connects).await.expect("every connect queued");
        assert_eq!(open.len(), 300);
        drop(l);
    }

    async fn get_healthz(addr: std::net::SocketAddr, ca_pem: &str) -> std::io::Result<String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.map_err(std::io::Error::other)?).map_err(std::io::Error::other)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn https_serves_and_closes_connections_beyond_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = crate::tls::DevCa::new("server test CA").expect("ca");
        let files =
            ca.write_issued(dir.path(), "m", &["127.0.0.1"], crate::tls::Usage::Server).expect("cert");
        let tls = files.load().expect("load").https_config().expect("https");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let srv = tokio::spawn(serve_https(listener, router, tls, 1, async move {
            let _ = stop_rx.await;
        }));
        let reply = get_healthz(addr, ca.ca_pem()).await.expect("first connection");
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok"), "{reply}");
        // Hold the only slot with a connection that never finishes its handshake...
        let held = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // ...then a second connection is closed at once (until the held one goes away).
        let refused = get_healthz(addr, ca.ca_pem()).await;
        assert!(refused.map_or(true, |r| r.is_empty()), "a connection beyond the limit was served");
        drop(held);
        let ok =
            tests_wait(|| async { get_healthz(addr, ca.ca_pem()).await.is_ok_and(|r| r.ends_with("ok")) });
        assert!(ok.await, "the slot came back");
        let _ = stop_tx.send(());
        srv.await.expect("join").expect("served");
    }

    /// Poll `cond` for up to 10 s (the held connection's slot is freed when its handshake task sees EOF).
    async fn tests_wait<F, Fut>(mut cond: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        for _ in 0..200 {
            if cond().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}
