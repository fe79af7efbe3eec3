//! Every task has an owner (issue 12 item 3): a master served in-process (`master::server::serve`) with a
//! ticket dispatcher, an agent-style write, an open gRPC watch stream and an open REST watch long-poll is
//! told to stop. The ordered shutdown must end within the sum of its named limits with nothing aborted
//! (every watch stream, duty, server and the raft node ended by itself), both watch streams must end, all
//! three ports must be closed, and the data dir must reopen with the data in it.

use std::io::{Read, Write};
use std::time::Duration;

use master::cluster::free_port;
use master::config::{MasterConfig, Resolved};
use proto::api;
use proto::client::Client;
use tests::wait_until;

/// The whole shutdown's bound: the sum of every step's limit (a step that needs its whole limit would also
/// show as an aborted task in the report, which the test refuses on its own).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(
    master::api::WATCHER_DRAIN.as_secs()
        + master::server::SERVER_DRAIN.as_secs()
        + master::api::DUTY_STOP.as_secs()
        + master::server::RAFT_STOP.as_secs()
        + master::server::PEER_DRAIN.as_secs(),
);
/// How long a single-node master may take to elect itself and announce its addresses.
const READY: Duration = Duration::from_secs(30);
/// How long a watch stream may take to notice the end once the shutdown returned.
const STREAM_END: Duration = Duration::from_secs(10);

struct Ports {
    peer: u16,
    grpc: u16,
    http: u16,
}

fn config(dir: &std::path::Path, p: &Ports) -> Resolved {
    let toml = format!(
        "id = 1\ndata_dir = {:?}\ngrpc = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\ninsecure = true\ntick_ms = 20\n\
         [peers]\n1 = \"127.0.0.1:{}\"\n[tickets]\nsink = \"file\"\npath = {:?}\n",
        dir.join("data"),
        p.grpc,
        p.http,
        p.peer,
        dir.join("tickets.jsonl"),
    );
    MasterConfig::from_toml(&toml).and_then(|c| c.resolve()).expect("valid config")
}

async fn cluster_info(client: &mut Client) -> Option<api::ClusterInfoResponse> {
    client.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await.ok()
}

/// Wait until node 1 leads and has announced its addresses (writes are redirected correctly from then on).
async fn wait_ready(grpc: &str) {
    let ready = wait_until(READY, || async {
        let mut c = Client::new(vec![grpc.to_string()]);
        cluster_info(&mut c).await.is_some_and(|i| i.leader_id == 1 && i.leader_announced())
    })
    .await;
    assert!(
        ready,
        "the node never became a ready leader: {:?}",
        cluster_info(&mut Client::new(vec![grpc.into()])).await
    );
}

fn finding(object: &str) -> api::Finding {
    api::Finding {
        object: object.into(),
        severity: "ERROR".into(),
        checker: "smart".into(),
        version: "1".into(),
        rule: "smart.test".into(),
        evidence: "e".into(),
        readings: Default::default(),
        time_ms: tests::now_ms(),
        shadow: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_shutdown_ends_every_task_closes_the_ports_and_the_data_dir_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports {
        peer: free_port().expect("port"),
        grpc: free_port().expect("port"),
        http: free_port().expect("port"),
    };
    let grpc = format!("127.0.0.1:{}", ports.grpc);
    let http = format!("127.0.0.1:{}", ports.http);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(master::server::serve(config(dir.path(), &ports), async move {
        stop_rx.await.ok();
    }));
    wait_ready(&grpc).await;
    let mut client = Client::new(vec![grpc.clone()]);

    let req = api::IngestRequest {
        agent: "agent-1".into(),
        seq: 1,
        findings: vec![finding("disk/sd1/sda")],
        epoch: 0,
    };
    let written =
        client.call(req, |mut c, r| async move { c.ingest(r).await }).await.expect("ingest").revision;

    // An open gRPC watch that has delivered the write...
    let mut raw = api::master_client::MasterClient::connect(format!("http://{grpc}")).await.expect("connect");
    let mut stream = raw
        .watch(api::WatchRequest { from_revision: 1, ..Default::default() })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("first watch message").expect("a message");
    assert!(first.revision >= 1, "{first:?}");
    // ...and an open REST long-poll (5 minutes: only the shutdown can end it early).
    let mut rest = std::net::TcpStream::connect(&http).expect("connect http");
    rest.set_read_timeout(Some(STREAM_END)).expect("read timeout");
    write!(rest, "GET /api/v1/watch?from=1&timeout_ms=300000 HTTP/1.1\r\nHost: {http}\r\n\r\n")
        .expect("send");
    let mut head = [0u8; 12];
    rest.read_exact(&mut head).expect("REST watch answered");
    assert_eq!(&head, b"HTTP/1.1 200", "REST watch status");

    stop_tx.send(()).expect("node still running");
    let (stopped, outcome) = tokio::time::timeout(SHUTDOWN_BOUND, node)
        .await
        .expect("the ordered shutdown finished within the sum of its limits")
        .expect("join")
        .expect("served");
    outcome.expect("a requested stop is a clean exit");
    assert!(stopped.clean(), "every task ended by itself, nothing aborted at a limit: {stopped:?}");

    // Both watch streams ended.
    let end = tokio::time::timeout(STREAM_END, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the gRPC watch stream did not end");
    let mut tail = Vec::new();
    let read = rest.read_to_end(&mut tail);
    assert!(read.is_ok(), "the REST watch connection was not closed: {read:?}");

    // Every port is closed.
    for (what, port) in [("peer", ports.peer), ("gRPC", ports.grpc), ("HTTP", ports.http)] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the {what} port still accepts connections"
        );
    }

    // The data dir reopens, with the write in it.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(master::server::serve(config(dir.path(), &ports), async move {
        stop_rx.await.ok();
    }));
    wait_ready(&grpc).await;
    let mut client = Client::new(vec![grpc.clone()]);
    let info = cluster_info(&mut client).await.expect("cluster info after reopening");
    assert!(info.revision >= written, "revision {} after reopening, {written} was written", info.revision);
    let got = client
        .call(api::GetObjectRequest { id: "disk/sd1/sda".into(), stale: false }, |mut c, r| async move {
            c.get_object(r).await
        })
        .await
        .expect("the object survived the restart");
    assert_eq!(got.object.map(|o| o.id), Some("disk/sd1/sda".to_string()));
    stop_tx.send(()).expect("node still running");
    let (stopped, outcome) = tokio::time::timeout(SHUTDOWN_BOUND, node)
        .await
        .expect("second shutdown")
        .expect("join")
        .expect("served");
    outcome.expect("clean exit");
    assert!(stopped.clean(), "{stopped:?}");
}
