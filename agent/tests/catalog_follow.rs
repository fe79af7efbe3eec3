//! The agent follows its checker assignment (issue 15), against a test double of the master: a real tonic
//! server on a loopback port (port 0) that implements only what an agent calls (Register, Heartbeat with
//! an assignment, Ingest, FetchArtifact serving real bytes in chunks); every other method answers
//! UNIMPLEMENTED. It is not the product's master (that is helper M's; the multi-process tests are P's): it
//! lets these tests cut a transfer, go offline or change the assignment exactly when they need to.
//!
//! Covered: a fetch resumes after a cut mid-transfer and after a "crash" (a new fetcher on the same data
//! dir); an external checker v1 -> v2 swap without restarting the agent, then a shadow v3 beside v2 whose
//! findings are marked; a CPU spinner stopped at its RLIMIT_CPU and reported `failed`; a tampered artifact
//! refused (never run), reported as `checker.unverified`, deleted and fetched again; an agent restarted
//! while the master is unreachable runs its last verified version; a catalog rule set hot-swapped into the
//! running agent's kernel-log checker judges only the lines after the swap. And the network prober
//! (issue 16): peers handed out in heartbeat replies are probed, and the windows come back as NetReports
//! with this agent's probe_addr, kept across a failed heartbeat.

#![allow(clippy::unwrap_used)]
// test code: a failed unwrap is a failed test
// Wire structs are built with `..Default::default()`: api.proto grows (additively).
#![allow(clippy::needless_update)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use proto::api::{self, master_server::Master};
use state_machines::Finding;
use tonic::{Request, Response, Status};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    /// sha256 -> bytes
    artifacts: BTreeMap<String, Vec<u8>>,
    hash: String,
    assignment: Vec<api::Assignment>,
    /// Every RPC answers UNAVAILABLE (a master out of reach).
    down: bool,
    /// FetchArtifact answers UNAVAILABLE once this many bytes were served in total (None: never).
    cut_after: Option<u64>,
    served: u64,
    /// Offsets of the FetchArtifact calls, in order.
    offsets: Vec<u64>,
    heartbeats: Vec<api::HeartbeatRequest>,
    findings: Vec<api::Finding>,
    /// Probe peers handed out with every heartbeat reply (issue 16).
    peers: Vec<api::ProbePeer>,
    /// Most net reports one heartbeat refused while `down` carried.
    refused_net_reports: usize,
    /// The clock heartbeat replies report: this host's plus this many ms (None: the field left 0, as a
    /// master before it).
    clock_ahead_ms: Option<i64>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// Store `bytes` and return their (sha256, size).
    fn put(&self, bytes: &[u8]) -> (String, u64) {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), bytes).unwrap();
        let sha = checkers::external::sha256_file(t.path()).unwrap();
        self.with(|s| s.artifacts.insert(sha.clone(), bytes.to_vec()));
        (sha, bytes.len() as u64)
    }

    fn assign(&self, hash: &str, entries: Vec<api::Assignment>) {
        self.with(|s| {
            s.hash = hash.to_string();
            s.assignment = entries;
        });
    }

    fn up(&self) -> Result<(), Status> {
        if self.with(|s| s.down) { Err(Status::unavailable("scripted outage")) } else { Ok(()) }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<api::WatchResponse, Status>> + Send + 'static>>;
type BeatStream = Pin<Box<dyn Stream<Item = Result<api::HeartbeatResponse, Status>> + Send + 'static>>;
type IngestStream = Pin<Box<dyn Stream<Item = Result<api::IngestResponse, Status>> + Send + 'static>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of this test double"))
}

#[tonic::async_trait]
impl Master for Fake {
    type WatchStream = WatchStream;
    type HeartbeatStreamStream = BeatStream;
    type IngestStreamStream = IngestStream;

    async fn register(
        &self,
        _: Request<api::RegisterRequest>,
    ) -> Result<Response<api::RegisterResponse>, Status> {
        self.up()?;
        Ok(Response::new(Default::default()))
    }
    /// A master from before heartbeat streams: the agent beats with calls (`BeatStream` falls back).
    /// A master from before ingest streams: the agent sends Ingest calls (`IngestStream` falls back).
    async fn ingest_stream(
        &self,
        _: Request<tonic::Streaming<api::IngestRequest>>,
    ) -> Result<Response<IngestStream>, Status> {
        Err(Status::unimplemented("no ingest streams here"))
    }
    async fn heartbeat_stream(
        &self,
        _: Request<tonic::Streaming<api::HeartbeatRequest>>,
    ) -> Result<Response<BeatStream>, Status> {
        Err(Status::unimplemented("no heartbeat streams here"))
    }
    async fn heartbeat(
        &self,
        req: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        if let Err(e) = self.up() {
            self.with(|s| s.refused_net_reports = s.refused_net_reports.max(req.net.len()));
            return Err(e);
        }
        Ok(Response::new(self.with(|s| {
            let include = req.assignment_hash != s.hash && !s.hash.is_empty();
            s.heartbeats.push(req);
            api::HeartbeatResponse {
                assignment_hash: s.hash.clone(),
                assignment: if include { s.assignment.clone() } else { Vec::new() },
                assignment_included: include,
                peers: s.peers.clone(),
                master_time_ms: s
                    .clock_ahead_ms
                    .map_or(0, |d| (agent::scheduler::now_ms() as i64 + d) as u64),
                ..Default::default()
            }
        })))
    }
    async fn ingest(
        &self,
        req: Request<api::IngestRequest>,
    ) -> Result<Response<api::IngestResponse>, Status> {
        self.up()?;
        self.with(|s| s.findings.extend(req.into_inner().findings));
        Ok(Response::new(Default::default()))
    }
    async fn fetch_artifact(
        &self,
        req: Request<api::FetchArtifactRequest>,
    ) -> Result<Response<api::FetchArtifactResponse>, Status> {
        self.up()?;
        let req = req.into_inner();
        self.with(|s| {
            s.offsets.push(req.offset);
            let assigned = s.assignment.iter().any(|a| a.sha256 == req.sha256 && a.name == req.name);
            let Some(bytes) = s.artifacts.get(&req.sha256).filter(|_| assigned) else {
                return Err(Status::permission_denied("not assigned to this host"));
            };
            let start = (req.offset as usize).min(bytes.len());
            let want = if req.max_bytes == 0 { 1 << 20 } else { req.max_bytes as usize };
            let mut end = (start + want).min(bytes.len());
            if let Some(cut) = s.cut_after {
                if s.served >= cut {
                    return Err(Status::unavailable("scripted cut"));
                }
                end = end.min(start + (cut - s.served) as usize);
            }
            s.served += (end - start) as u64;
            Ok(Response::new(api::FetchArtifactResponse {
                data: bytes[start..end].to_vec(),
                offset: req.offset,
                size: bytes.len() as u64,
                sha256: req.sha256.clone(),
                ..Default::default()
            }))
        })
    }

    async fn watch(&self, _: Request<api::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        unimplemented()
    }
    async fn list_objects(
        &self,
        _: Request<api::ListObjectsRequest>,
    ) -> Result<Response<api::ListObjectsResponse>, Status> {
        unimplemented()
    }
    async fn get_object(
        &self,
        _: Request<api::GetObjectRequest>,
    ) -> Result<Response<api::GetObjectResponse>, Status> {
        unimplemented()
    }
    async fn command(
        &self,
        _: Request<api::CommandRequest>,
    ) -> Result<Response<api::CommandResponse>, Status> {
        unimplemented()
    }
    async fn cluster_info(
        &self,
        _: Request<api::ClusterInfoRequest>,
    ) -> Result<Response<api::ClusterInfoResponse>, Status> {
        unimplemented()
    }
    async fn get_safety(
        &self,
        _: Request<api::GetSafetyRequest>,
    ) -> Result<Response<api::GetSafetyResponse>, Status> {
        unimplemented()
    }
    async fn set_level(
        &self,
        _: Request<api::SetLevelRequest>,
    ) -> Result<Response<api::ScopeResponse>, Status> {
        unimplemented()
    }
    async fn release(&self, _: Request<api::ReleaseRequest>) -> Result<Response<api::ScopeResponse>, Status> {
        unimplemented()
    }
    async fn list_proposals(
        &self,
        _: Request<api::ListProposalsRequest>,
    ) -> Result<Response<api::ListProposalsResponse>, Status> {
        unimplemented()
    }
    async fn decide_proposals(
        &self,
        _: Request<api::DecideProposalsRequest>,
    ) -> Result<Response<api::DecideProposalsResponse>, Status> {
        unimplemented()
    }
    async fn set_quotas(
        &self,
        _: Request<api::SetQuotasRequest>,
    ) -> Result<Response<api::GetSafetyResponse>, Status> {
        unimplemented()
    }
    async fn list_agents(
        &self,
        _: Request<api::ListAgentsRequest>,
    ) -> Result<Response<api::ListAgentsResponse>, Status> {
        unimplemented()
    }
    async fn set_min_command_version(
        &self,
        _: Request<api::SetMinCommandVersionRequest>,
    ) -> Result<Response<api::SetMinCommandVersionResponse>, Status> {
        unimplemented()
    }
    async fn push_artifact(
        &self,
        _: Request<api::PushArtifactRequest>,
    ) -> Result<Response<api::PushArtifactResponse>, Status> {
        unimplemented()
    }
    async fn list_catalog(
        &self,
        _: Request<api::ListCatalogRequest>,
    ) -> Result<Response<api::ListCatalogResponse>, Status> {
        unimplemented()
    }
    async fn rollout(
        &self,
        _: Request<api::RolloutRequest>,
    ) -> Result<Response<api::RolloutResponse>, Status> {
        unimplemented()
    }
    async fn summary(
        &self,
        _: Request<api::SummaryRequest>,
    ) -> Result<Response<api::SummaryResponse>, Status> {
        unimplemented()
    }

    async fn rollout_status(
        &self,
        _: Request<api::RolloutStatusRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        unimplemented()
    }
    async fn net_suspects(
        &self,
        _: Request<api::NetSuspectsRequest>,
    ) -> Result<Response<api::NetSuspectsResponse>, Status> {
        unimplemented()
    }
    async fn net_matrix(
        &self,
        _: Request<api::NetMatrixRequest>,
    ) -> Result<Response<api::NetMatrixResponse>, Status> {
        unimplemented()
    }
    async fn net_path(
        &self,
        _: Request<api::NetPathRequest>,
    ) -> Result<Response<api::NetPathResponse>, Status> {
        unimplemented()
    }
    async fn net_topology(
        &self,
        _: Request<api::NetTopologyRequest>,
    ) -> Result<Response<api::NetTopologyResponse>, Status> {
        unimplemented()
    }
    async fn set_net_topology(
        &self,
        _: Request<api::SetNetTopologyRequest>,
    ) -> Result<Response<api::NetTopologyResponse>, Status> {
        unimplemented()
    }
}

/// Serve `fake` on a free loopback port; returns its address.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api::master_server::MasterServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// Wait until `cond` holds, polling; panics with `what` after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn external(name: &str, version: &str, sha: &str, size: u64, shadow: bool) -> api::Assignment {
    api::Assignment {
        name: name.into(),
        version: version.into(),
        r#type: "external".into(),
        sha256: sha.into(),
        size,
        shadow,
        spec: Some(api::ArtifactSpec {
            interval_ms: 1000,
            timeout_ms: 10_000,
            kinds: vec!["disk".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A checker script printing one WARNING finding about disk sda with `evidence`.
fn checker_script(host: &str, evidence: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\necho '{{\"object\":\"disk/{host}/sda\",\"severity\":\"WARNING\",\"rule\":\"raid.degraded\",\"evidence\":\"{evidence}\"}}'\n"
    )
    .into_bytes()
}

/// A temp dir the agent (root) and its checker user (nobody) can both traverse.
fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// An agent config with every built-in checker but kernel-log off (kernel-log reads `root/dev/kmsg`).
fn agent_config(dir: &Path, host: &str, master: &str, http_port: u16) -> agent::config::AgentConfig {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
    let kmsg = root.join("dev/kmsg");
    if !kmsg.exists() {
        std::fs::write(&kmsg, "").unwrap();
    }
    let cfg = format!(
        r#"version = 1
host = "{host}"
data_dir = {data:?}
masters = ["{master}"]
http_listen = "127.0.0.1:{http_port}"
root = {root:?}
insecure = true
[report]
heartbeat_s = 1
backoff_max_s = 1
[checkers.disk]
enabled = false
[checkers.edac]
enabled = false
[checkers.nic]
enabled = false
[checkers.machine]
enabled = false
[net_probe]
listen = "127.0.0.1:0"
"#,
        data = dir.join("data").display().to_string(),
        root = root.display().to_string(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    agent::config::AgentConfig::load(&path).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The agent's `/api/v1/local` document (Null when it cannot be read).
fn local_json(port: u16) -> serde_json::Value {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return serde_json::Value::Null };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(s, "GET /api/v1/local HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return serde_json::Value::Null;
    }
    let mut body = String::new();
    if s.read_to_string(&mut body).is_err() {
        return serde_json::Value::Null;
    }
    let Some((_, json)) = body.split_once("\r\n\r\n") else { return serde_json::Value::Null };
    serde_json::from_str(json).unwrap_or_default()
}

/// The agent's recent durable findings, from its local HTTP surface.
fn local_findings(port: u16) -> Vec<Finding> {
    serde_json::from_value(local_json(port)["findings"].clone()).unwrap_or_default()
}

struct RunningAgent {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(cfg: agent::config::AgentConfig) -> RunningAgent {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent::run::run(cfg, rx));
    RunningAgent { stop, task }
}

impl RunningAgent {
    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

fn has_finding(fake: &Fake, f: impl Fn(&api::Finding) -> bool) -> bool {
    fake.with(|s| s.findings.iter().any(f))
}

fn last_run(fake: &Fake, name: &str, shadow: bool) -> Option<api::CheckerRun> {
    fake.with(|s| {
        s.heartbeats
            .last()
            .and_then(|h| h.runs.iter().find(|r| r.name == name && r.shadow == shadow).cloned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_resumes_after_a_cut_and_after_a_crash() {
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    // 1 MiB of incompressible bytes (an LCG: deterministic), fetched in FETCH_CHUNK pieces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let (sha, size) = fake.put(&bytes);
    let entry = external("big", "1", &sha, size, false);
    fake.assign("h1", vec![entry.clone()]);
    let e = agent::catalog::from_wire("h1", &[entry]).unwrap().entries.remove(0);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(&sha);

    // Cut at 600 KiB: the same fetch call retries and resumes where the bytes on disk end.
    fake.with(|s| s.cut_after = Some(600 * 1024));
    let mut f = agent::catalog::Fetcher::new(vec![addr.clone()], Default::default(), "h1", "h1");
    let cut_then_resume = async {
        // Lift the cut once the failure was seen, as a reconnecting master would.
        let lifter = {
            let fake = fake.clone();
            tokio::spawn(async move {
                until("the cut hit", || fake.with(|s| s.served >= 600 * 1024)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                fake.with(|s| s.cut_after = None);
            })
        };
        let r = f.fetch(&e, &dest).await;
        lifter.await.unwrap();
        r
    };
    cut_then_resume.await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    let (served, offsets) = fake.with(|s| (s.served, s.offsets.clone()));
    assert_eq!(served, size, "not one byte fetched twice: {offsets:?}");
    assert!(offsets.contains(&(600 * 1024)), "resumed at the cut: {offsets:?}");
    assert!(!dest.with_extension("part").exists());

    // A crash mid-transfer: the master goes away after 300 KiB, the fetch gives up (bounded attempts);
    // a new fetcher (a restarted agent) resumes from the bytes on disk.
    let dest2 = dir.path().join("again").join(&sha);
    std::fs::create_dir_all(dest2.parent().unwrap()).unwrap();
    fake.with(|s| {
        s.served = 0;
        s.offsets.clear();
        s.cut_after = Some(300 * 1024);
    });
    let mut f = agent::catalog::Fetcher::new(vec![addr.clone()], Default::default(), "h1", "h1");
    assert!(f.fetch(&e, &dest2).await.is_err(), "gives up after FETCH_ATTEMPTS");
    let calls = fake.with(|s| s.offsets.len());
    let bound = 2 + (agent::catalog::FETCH_ATTEMPTS * agent::catalog::FETCH_CALL_ATTEMPTS) as usize;
    assert!(calls <= bound, "bounded: {calls} calls, at most {bound}");
    let part = dest2.with_extension("part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 300 * 1024);
    fake.with(|s| {
        s.cut_after = None;
        s.offsets.clear();
    });
    let mut f = agent::catalog::Fetcher::new(vec![addr], Default::default(), "h1", "h1");
    f.fetch(&e, &dest2).await.unwrap();
    assert_eq!(fake.with(|s| s.offsets[0]), 300 * 1024, "resumed from the part file");
    assert_eq!(f.received, size - 300 * 1024);
    assert_eq!(std::fs::read(&dest2).unwrap(), bytes);

    // Bad bytes from the master are never kept: a mismatch is not renamed into place.
    let mut wrong = e.clone();
    wrong.sha256 = "0".repeat(64);
    let mut lying = external("big", "1", &sha, size, false);
    lying.sha256 = wrong.sha256.clone();
    fake.with(|s| {
        let b = s.artifacts[&sha].clone();
        s.artifacts.insert(wrong.sha256.clone(), b);
        s.assignment.push(lying);
    });
    let dest3 = dir.path().join(&wrong.sha256);
    let mut f = agent::catalog::Fetcher::new(vec![fake_addr(&f)], Default::default(), "h1", "h1");
    assert!(f.fetch(&wrong, &dest3).await.is_err());
    assert!(!dest3.exists() && !dest3.with_extension("part").exists());
}

fn fake_addr(f: &agent::catalog::Fetcher) -> String {
    f.client.current_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_versions_swap_without_restart_and_a_shadow_runs_beside() {
    const HOST: &str = "cat-h1";
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let (v1, n1) = fake.put(&checker_script(HOST, "v1"));
    let (v2, n2) = fake.put(&checker_script(HOST, "v2"));
    let (v3, n3) = fake.put(&checker_script(HOST, "v3"));
    let (spin, ns) = fake.put(b"#!/bin/sh\nwhile :; do :; done\n");
    let mut spinner = external("spin", "1", &spin, ns, false);
    spinner.spec.as_mut().unwrap().max_cpu_ms = 1000;
    // Wall-clock limit far above the CPU limit: on a busy machine 1 s of CPU may take several seconds.
    spinner.spec.as_mut().unwrap().timeout_ms = 60_000;
    // A hostile one: endless output, cut at the artifact's output limit.
    let (spew, nw) = fake.put(
        b"#!/bin/sh
yes garbage-garbage-garbage
",
    );
    let mut spewer = external("spew", "1", &spew, nw, false);
    spewer.spec.as_mut().unwrap().max_output_bytes = 4096;
    // A memory hog: a 256 MiB shell string under a 64 MiB address space.
    let (hog, nh) = fake.put(b"#!/bin/sh\nx=$(head -c 268435456 /dev/zero | tr '\\0' a); echo ${#x}\n");
    let mut hogger = external("hog", "1", &hog, nh, false);
    hogger.spec.as_mut().unwrap().max_memory_bytes = 64 << 20;
    fake.assign("a1", vec![external("raid", "1", &v1, n1, false), spinner, spewer, hogger]);
    let tmp = open_tempdir();
    let cfg = agent_config(tmp.path(), HOST, &addr, free_port());
    let agent = start(cfg);

    until("v1 runs", || {
        has_finding(&fake, |f| f.checker == "raid" && f.version == "1" && f.evidence == "v1")
    })
    .await;
    until("v1 reported running", || {
        last_run(&fake, "raid", false)
            .is_some_and(|r| r.version == "1" && r.status == "running" && r.runs > 0)
    })
    .await;
    let started = fake.with(|s| s.heartbeats[0].started_ms);
    assert!(fake.with(|s| s.heartbeats.iter().any(|h| h.assignment_hash == "a1")));
    until("the CPU spinner is stopped at its limit and reported failed", || {
        last_run(&fake, "spin", false)
            .is_some_and(|r| r.status == "failed" && r.failures > 0 && r.last_error.contains("CPU limit"))
    })
    .await;
    assert!(has_finding(&fake, |f| f.object == format!("checker/{HOST}/spin") && f.rule == "checker.broken"));
    until("the spewer is cut at its output limit", || {
        last_run(&fake, "spew", false)
            .is_some_and(|r| r.status == "failed" && r.last_error.contains("more than 4096 bytes"))
    })
    .await;
    until("the hog is stopped by its memory limit", || {
        last_run(&fake, "hog", false)
            .is_some_and(|r| r.status == "failed" && r.last_error.contains("memory limit 67108864"))
    })
    .await;

    fake.assign("a2", vec![external("raid", "2", &v2, n2, false)]);
    until("v2 runs", || {
        has_finding(&fake, |f| f.checker == "raid" && f.version == "2" && f.evidence == "v2")
    })
    .await;
    until("v2 reported", || {
        last_run(&fake, "raid", false).is_some_and(|r| r.version == "2" && r.status == "running")
    })
    .await;
    until("spin is gone from the runs", || last_run(&fake, "spin", false).is_none()).await;
    let store = tmp.path().join("data/artifacts");
    until("the unused artifacts were deleted", || !store.join(&v1).exists() && !store.join(&spin).exists())
        .await;
    assert!(store.join(&v2).exists());
    let n_before = fake.with(|s| s.findings.len());
    // Two more runs of v2 (its finding is a fault: sent every run); v1 ran no more in between.
    until("two more v2 runs", || {
        fake.with(|s| s.findings[n_before..].iter().filter(|f| f.evidence == "v2").count() >= 2)
    })
    .await;
    assert!(fake.with(|s| s.findings[n_before..].iter().all(|f| f.version != "1")), "v1 stopped at the swap");

    fake.assign("a3", vec![external("raid", "2", &v2, n2, false), external("raid", "3", &v3, n3, true)]);
    until("the shadow v3 runs", || has_finding(&fake, |f| f.version == "3" && f.evidence == "v3")).await;
    until("v3 reported as a shadow", || {
        last_run(&fake, "raid", true).is_some_and(|r| r.version == "3" && r.status == "running")
    })
    .await;
    let n = fake.with(|s| s.findings.len());
    until("v2 still runs beside it", || fake.with(|s| s.findings[n..].iter().any(|f| f.version == "2")))
        .await;
    fake.with(|s| {
        for f in &s.findings {
            assert_eq!(f.shadow, f.version == "3", "only v3's findings are shadow: {f:?}");
        }
    });
    assert!(fake.with(|s| s.heartbeats.iter().all(|h| h.started_ms == started)), "never restarted");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_artifact_is_refused_reported_and_fetched_again() {
    const HOST: &str = "cat-h2";
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let (v1, n1) = fake.put(&checker_script(HOST, "v1"));
    fake.assign("a1", vec![external("raid", "1", &v1, n1, false)]);
    let tmp = open_tempdir();
    let marker_dir = tmp.path().join("markers");
    std::fs::create_dir_all(&marker_dir).unwrap();
    std::fs::set_permissions(&marker_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = agent_config(tmp.path(), HOST, &addr, free_port());
    let artifact = cfg.data_dir.join("artifacts").join(&v1);
    let agent = start(cfg);
    until("v1 runs", || has_finding(&fake, |f| f.version == "1" && f.evidence == "v1")).await;

    // Someone replaces the file on this host.
    let marker = marker_dir.join("tampered-ran");
    std::fs::write(&artifact, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o755)).unwrap();
    until("checker.unverified reported", || {
        has_finding(&fake, |f| {
            f.object == format!("checker/{HOST}/raid")
                && f.rule == "checker.unverified"
                && f.severity == "WARNING"
                && f.evidence.contains(&v1)
                && f.evidence.contains(&artifact.display().to_string())
        })
    })
    .await;
    until("refetched: the verified file is back", || {
        std::fs::read(&artifact).is_ok_and(|b| b == checker_script(HOST, "v1"))
    })
    .await;
    let n = fake.with(|s| s.findings.len());
    until("v1 runs again", || fake.with(|s| s.findings[n..].iter().any(|f| f.evidence == "v1"))).await;
    assert!(!marker.exists(), "the tampered file never ran");
    let f = fake.with(|s| s.findings.iter().find(|f| f.rule == "checker.unverified").cloned().unwrap());
    assert_eq!(f.readings["expected_sha256"], v1);
    assert_ne!(f.readings["found_sha256"], v1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_without_its_master_runs_its_last_verified_versions() {
    const HOST: &str = "cat-h3";
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let (v1, n1) = fake.put(&checker_script(HOST, "v1"));
    fake.assign("a1", vec![external("raid", "1", &v1, n1, false)]);
    let tmp = open_tempdir();
    let port = free_port();
    let agent = start(agent_config(tmp.path(), HOST, &addr, port));
    until("v1 runs", || has_finding(&fake, |f| f.version == "1" && f.evidence == "v1")).await;
    agent.stop().await;

    fake.with(|s| s.down = true);
    let port = free_port();
    let agent = start(agent_config(tmp.path(), HOST, &addr, port));
    let deadline = Instant::now() + WAIT;
    loop {
        let local = tokio::task::spawn_blocking(move || local_findings(port)).await.unwrap();
        if local.iter().any(|f| f.checker == "raid" && f.version == "1" && f.evidence == "v1") {
            break;
        }
        assert!(Instant::now() < deadline, "the persisted assignment did not run offline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.with(|s| s.offsets.len()), 1, "nothing fetched again: one chunk, before the restart");
    let runs = tokio::task::spawn_blocking(move || local_json(port)).await.unwrap();
    assert_eq!(runs["assignment_hash"], "a1", "{runs}");
    let raid = runs["runs"].as_array().unwrap().iter().find(|r| r["name"] == "raid").cloned().unwrap();
    assert_eq!((raid["version"].as_str(), raid["status"].as_str()), (Some("1"), Some("running")), "{raid}");
    agent.stop().await;
}

const RULES_V2: &str = r#"
version = "2"
[[rule]]
id = "v2.io-error"
keywords = ["I/O error"]
pattern = 'I/O error,? (?:on )?dev(?:ice)? (?P<dev>[A-Za-z0-9_]+)'
kind = "disk"
object = "{dev}"
severity = "ERROR"
"#;

fn append(path: &Path, seq: u64, msg: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "3,{seq},{},-;{msg}", seq * 1000).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_set_from_the_catalog_hot_swaps_into_the_running_kernel_log_checker() {
    const HOST: &str = "cat-h4";
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let tmp = open_tempdir();
    let cfg = agent_config(tmp.path(), HOST, &addr, free_port());
    let kmsg: PathBuf = cfg.root.join("dev/kmsg");
    let agent = start(cfg);
    // Before any assignment: the built-in copy, reported as fallback.
    until("fallback reported", || {
        last_run(&fake, "kernel-log", false)
            .is_some_and(|r| r.status == "fallback" && r.version.starts_with("0.1.0+rules."))
    })
    .await;
    // A real line from the recorded fixtures; the built-in rules flag it as disk.io-error.
    append(
        &kmsg,
        1,
        "blk_update_request: I/O error, dev sdc, sector 3150499624 op 0x0:(READ) flags 0x80700 phys_seg 17 prio class 0",
    );
    until("built-in rules judged line 1", || {
        has_finding(&fake, |f| f.object == format!("disk/{HOST}/sdc") && f.rule == "disk.io-error")
    })
    .await;

    let (sha, size) = fake.put(RULES_V2.as_bytes());
    let sha_entry = sha.clone();
    let entry = api::Assignment {
        name: "kernel-log".into(),
        version: "2".into(),
        r#type: "rules".into(),
        sha256: sha_entry,
        size,
        ..Default::default()
    };
    // With it, a disk profile `online` version 7, and a profile artifact that declares another name.
    let online = include_str!("../../checkers/profiles/online.toml");
    let (p7, n7) = fake.put(online.as_bytes());
    let (bad, nb) = fake.put(online.replace("name = \"online\"", "name = \"elsewhere\"").as_bytes());
    let profile = |name: &str, sha: &str, size: u64| api::Assignment {
        name: name.into(),
        version: "7".into(),
        r#type: "profile".into(),
        sha256: sha.into(),
        size,
        ..Default::default()
    };
    fake.assign("r2", vec![entry, profile("online", &p7, n7), profile("offline", &bad, nb)]);
    until("v2 reported running", || {
        last_run(&fake, "kernel-log", false).is_some_and(|r| r.version == "2" && r.status == "running")
    })
    .await;
    until("profile online@7 reported running", || {
        last_run(&fake, "online", false).is_some_and(|r| r.version == "7" && r.status == "running")
    })
    .await;
    until("the misnamed profile reported failed", || {
        last_run(&fake, "offline", false)
            .is_some_and(|r| r.status == "failed" && r.last_error.contains("elsewhere"))
    })
    .await;
    // The swap happens at the start of the next run: wake the checker with a benign line, then a fault.
    append(&kmsg, 2, "e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex");
    append(&kmsg, 3, "Buffer I/O error on dev sdd, logical block 640, lost async page write");
    until("v2 judged line 3", || {
        has_finding(&fake, |f| {
            f.object == format!("disk/{HOST}/sdd") && f.rule == "v2.io-error" && f.version == "2"
        })
    })
    .await;
    fake.with(|s| {
        assert!(
            !s.findings.iter().any(|f| f.rule == "v2.io-error" && f.object.ends_with("/sdc")),
            "line 1 was not judged again by v2"
        );
        assert!(
            !s.findings.iter().any(|f| f.object.ends_with("/sdd") && f.rule.starts_with("disk.")),
            "line 3 was judged by v2 only"
        );
    });

    // The rule-set file is altered on disk: found at the next verification pass (VERIFY_EVERY), reported,
    // deleted and fetched again; the verified copy in memory kept judging meanwhile.
    let stored = tmp.path().join("data/artifacts").join(&sha);
    std::fs::write(&stored, "version = \"evil\"\n").unwrap();
    until("the altered rule set is reported", || {
        has_finding(&fake, |f| {
            f.object == format!("checker/{HOST}/kernel-log") && f.rule == "checker.unverified"
        })
    })
    .await;
    until("fetched again", || std::fs::read(&stored).is_ok_and(|b| b == RULES_V2.as_bytes())).await;
    until("reported running again", || {
        last_run(&fake, "kernel-log", false).is_some_and(|r| r.version == "2" && r.status == "running")
    })
    .await;
    append(&kmsg, 4, "Buffer I/O error on dev sde, logical block 7, lost async page write");
    until("v2 still judges", || {
        has_finding(&fake, |f| f.object == format!("disk/{HOST}/sde") && f.version == "2")
    })
    .await;
    agent.stop().await;
}

/// A stand-in host that accepts probe connections and never answers (a black hole past the handshake).
async fn mute_host(ip: [u8; 4]) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_from_heartbeats_are_probed_and_reports_come_back_kept_across_a_failed_heartbeat() {
    const HOST: &str = "net-h1";
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    // Peers on their own loopback addresses: three real responders (agent code) and one mute host.
    let mut peers = Vec::new();
    for i in 0..3u8 {
        let r = agent::netprobe::responder::Responder::bind(([127, 0, 1, 10 + i], 0).into()).await.unwrap();
        peers.push(api::ProbePeer {
            host: format!("peer{i}"),
            addr: r.local_addr().unwrap().to_string(),
            tor: "tor1".into(),
        });
        tokio::spawn(r.run(stop.clone()));
    }
    let (mute, mute_task) = mute_host([127, 0, 1, 20]).await;
    peers.push(api::ProbePeer { host: "mute".into(), addr: mute.to_string(), tor: "tor2".into() });
    fake.with(|s| s.peers = peers);

    let dir = open_tempdir();
    let mut cfg = agent_config(dir.path(), HOST, &addr, free_port());
    let net = dir.path().join("root/proc/net");
    std::fs::create_dir_all(&net).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../checkers/testdata/netstat/this-machine");
    for f in ["snmp", "netstat", "route"] {
        std::fs::copy(data.join(f), net.join(f)).unwrap();
    }
    cfg.net_probe.listen = "127.0.1.2:0".parse().unwrap();
    cfg.net_probe.window_s = 2;
    cfg.net_probe.timeout_ms = Some(100);
    cfg.validate().unwrap();
    let agent = start(cfg);

    let reports = |fake: &Fake| -> Vec<api::NetReport> {
        fake.with(|s| s.heartbeats.iter().flat_map(|h| h.net.clone()).collect())
    };
    until("a net report reached the master", || !reports(&fake).is_empty()).await;
    let first = reports(&fake).remove(0);
    // The measured window, for the record (ARCHITECTURE.md quotes it).
    for p in &first.peers {
        eprintln!(
            "net window {}: {} sent {} lost {} connect_failures {} rtt p50 {} us p99 {} us",
            first.window_seq, p.host, p.sent, p.lost, p.connect_failures, p.rtt_p50_us, p.rtt_p99_us
        );
    }
    eprintln!("net window {}: probe_bytes {} votes {:?}", first.window_seq, first.probe_bytes, first.votes);
    assert_eq!(first.checker_version, agent::netprobe::CHECKER_VERSION);
    assert_eq!((first.window_ms, first.iface.as_str()), (2000, "lo"));
    assert_eq!(first.peers.len(), 4, "{first:?}");
    let mute_result = first.peers.iter().find(|p| p.host == "mute").unwrap();
    assert_eq!((mute_result.sent, mute_result.lost), (5, 5));
    for p in first.peers.iter().filter(|p| p.host != "mute") {
        assert_eq!((p.sent, p.lost), (5, 0), "{p:?}");
    }
    let mut votes = first.votes.clone();
    votes.sort();
    assert_eq!(votes, ["mute", HOST], "the mute peer and this host itself");
    assert!(first.probe_bytes > 0);
    let hb = fake.with(|s| s.heartbeats.last().cloned().unwrap());
    let probe_addr: std::net::SocketAddr = hb.probe_addr.parse().unwrap();
    assert_eq!(probe_addr.ip(), std::net::Ipv4Addr::new(127, 0, 1, 2), "the listen IP is advertised");
    assert_eq!(hb.checkers.get("net-probe").map(String::as_str), Some(agent::netprobe::CHECKER_VERSION));
    let run = last_run(&fake, "net-probe", false).unwrap();
    assert_eq!((run.status.as_str(), run.version.as_str()), ("running", agent::netprobe::CHECKER_VERSION));
    assert!(run.runs >= 1);
    // The advertised responder answers probes (this agent's own, from outside).
    let mut s = tokio::net::TcpStream::connect(probe_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &agent::netprobe::responder::request(42)).await.unwrap();
    let mut b = [0u8; agent::netprobe::responder::PROBE_LEN];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut b).await.unwrap();
    assert_eq!(agent::netprobe::responder::parse(agent::netprobe::responder::RESPONSE_MAGIC, &b), Some(42));

    // The master is out of reach for a while: the windows closed meanwhile come with the next answered
    // heartbeat (at most MAX_NET_REPORTS_PER_HEARTBEAT per heartbeat, oldest first), none lost, none twice.
    let before = reports(&fake).iter().map(|r| r.window_seq).max().unwrap();
    fake.with(|s| s.down = true);
    until("two windows closed while heartbeats failed", || fake.with(|s| s.refused_net_reports >= 2)).await;
    fake.with(|s| s.down = false);
    until("windows of the outage delivered", || reports(&fake).iter().any(|r| r.window_seq >= before + 3))
        .await;
    let all = fake.with(|s| s.heartbeats.clone());
    assert!(all.iter().all(|h| h.net.len() <= agent::netprobe::MAX_NET_REPORTS_PER_HEARTBEAT));
    let after_outage = all.iter().find(|h| h.net.iter().any(|r| r.window_seq > before)).unwrap();
    let seqs: Vec<u64> = after_outage.net.iter().map(|r| r.window_seq).collect();
    assert!(seqs.len() >= 2 && seqs.windows(2).all(|w| w[0] < w[1]), "oldest first, several: {seqs:?}");
    let mut delivered: Vec<u64> = reports(&fake).iter().map(|r| r.window_seq).collect();
    let n = delivered.len();
    delivered.dedup();
    assert_eq!(delivered.len(), n, "an answered window is never sent again");
    let (lo, hi) = (delivered[0], *delivered.last().unwrap());
    assert_eq!(delivered, (lo..=hi).collect::<Vec<_>>(), "no window lost over the outage");

    agent.stop().await;
    stop_tx.send_replace(true);
    mute_task.abort();
}

/// A disk-failure model from the catalog (issue 20): verified like every artifact, handed to the disk
/// checker (its findings name the model), a tampered file is refused, reported and fetched again, and a
/// model whose bytes do not parse is never used (its row says why, the checker scores without a model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_model_reaches_the_disk_checker_verified_and_a_bad_one_is_refused() {
    const HOST: &str = "cat-h9";
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let good = std::fs::read(repo.join("checkers/testdata/predict/command-timeouts.json")).unwrap();
    let fake = Fake::default();
    let addr = serve(fake.clone()).await;
    let (m1, n1) = fake.put(&good);
    let model = |version: &str, sha: &str, size: u64| api::Assignment {
        name: "disk-failure".into(),
        version: version.into(),
        r#type: "model".into(),
        sha256: sha.into(),
        size,
        ..Default::default()
    };
    fake.assign("m1", vec![model("1", &m1, n1)]);
    let tmp = open_tempdir();
    let port = free_port();
    let mut cfg = agent_config(tmp.path(), HOST, &addr, port);
    // The recorded host tree's disks, graded every second.
    let procfs = repo.join("checkers/testdata/host/procfs");
    std::fs::create_dir_all(cfg.root.join("proc")).unwrap();
    std::fs::copy(procfs.join("proc/diskstats"), cfg.root.join("proc/diskstats")).unwrap();
    std::fs::create_dir_all(cfg.root.join("sys/block/sda")).unwrap();
    let disk = cfg.checkers.get_mut("disk").unwrap();
    disk.enabled = true;
    disk.interval_s = Some(1);
    let artifact = cfg.data_dir.join("artifacts").join(&m1);
    let agent = start(cfg);
    let names_model = |fake: &Fake, from: usize| {
        fake.with(|s| {
            s.findings[from.min(s.findings.len())..].iter().any(|f| {
                f.object == format!("disk/{HOST}/sda")
                    && f.readings.get("model_version").map(String::as_str) == Some("disk-failure@1")
            })
        })
    };
    until("the disk checker scores with disk-failure@1", || names_model(&fake, 0)).await;
    until("disk-failure@1 reported running", || {
        last_run(&fake, "disk-failure", false).is_some_and(|r| r.version == "1" && r.status == "running")
    })
    .await;

    // Someone replaces the file on this host: refused, reported, fetched again, and used again.
    std::fs::write(&artifact, b"{\"format\": 1}").unwrap();
    until("checker.unverified reported", || {
        has_finding(&fake, |f| {
            f.object == format!("checker/{HOST}/disk-failure") && f.rule == "checker.unverified"
        })
    })
    .await;
    until("refetched: the verified file is back", || std::fs::read(&artifact).is_ok_and(|b| b == good)).await;
    // The verified copy in memory kept scoring; the row says it runs again.
    until("disk-failure@1 reported running again", || {
        last_run(&fake, "disk-failure", false).is_some_and(|r| r.version == "1" && r.status == "running")
    })
    .await;

    // A model whose bytes do not parse (the master would refuse it; an agent must not trust that).
    let (m2, n2) = fake.put(b"{\"format\": 1, \"name\": \"broken\"}");
    fake.assign("m2", vec![model("2", &m2, n2)]);
    until("the broken model reported failed", || {
        last_run(&fake, "disk-failure", false).is_some_and(|r| {
            r.version == "2" && r.status == "failed" && r.last_error.contains("model refused")
        })
    })
    .await;
    // The agent's local view of its latest findings: the disk is graded without a model again.
    let deadline = Instant::now() + WAIT;
    loop {
        let local = tokio::task::spawn_blocking(move || local_findings(port)).await.unwrap();
        let sda = local.iter().find(|f| f.object.to_string() == format!("disk/{HOST}/sda"));
        if sda.is_some_and(|f| !f.readings.contains_key("model_version")) {
            break;
        }
        assert!(Instant::now() < deadline, "the broken model is still named: {sda:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
}

/// The agent measures its clock against the master's on every heartbeat, and its machine checker reports
/// WARNING `machine.clock-offset` while they differ by 30 s or more: here the test double's clock runs two
/// minutes ahead of this host's (the finding, and the agent's `/metrics` gauge), then two minutes behind.
/// Clocks that agree give no finding and a master that does not send its clock no sample (unit tests of
/// `MachineChecker` and `ClockSample::measure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_clock_is_off_the_masters_reports_it() {
    const HOST: &str = "clock-h1";
    let fake = Fake::default();
    fake.with(|s| s.clock_ahead_ms = Some(120_000));
    let addr = serve(fake.clone()).await;
    let dir = open_tempdir();
    let port = free_port();
    let mut cfg = agent_config(dir.path(), HOST, &addr, port);
    let machine = cfg.checkers.get_mut("machine").unwrap();
    machine.enabled = true;
    machine.interval_s = Some(1);
    let agent = start(cfg);
    // The first clock-offset finding from index `from` on whose evidence contains `says`. Not merely the
    // first one: findings queued before the master's clock moved may still arrive after it moved.
    let offset_finding = |fake: &Fake, from: usize, says: &str| {
        fake.with(|s| {
            s.findings[from.min(s.findings.len())..]
                .iter()
                .find(|f| {
                    f.object == format!("machine/{HOST}")
                        && f.rule == "machine.clock-offset"
                        && f.evidence.contains(says)
                })
                .cloned()
        })
    };
    until("a machine.clock-offset finding", || offset_finding(&fake, 0, "").is_some()).await;
    let f = offset_finding(&fake, 0, "").unwrap();
    assert_eq!(f.severity, "WARNING", "{f:?}");
    assert!(f.evidence.contains("behind the master's"), "{}", f.evidence);
    let offset: i64 = f.readings["offset_ms"].parse().unwrap();
    let rtt: i64 = f.readings["rtt_ms"].parse().unwrap();
    assert!((offset - 120_000).abs() <= rtt / 2 + 1, "offset {offset} ms, round trip {rtt} ms");
    let metrics = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(metrics.contains("huatuo_agent_master_clock_offset_ms 1"), "the gauge shows ~120000: {metrics}");

    // The master's clock now two minutes behind this host's: the next samples say so.
    fake.with(|s| s.clock_ahead_ms = Some(-120_000));
    let from = fake.with(|s| s.findings.len());
    until("a finding saying this host is ahead", || {
        offset_finding(&fake, from, "ahead of the master's").is_some()
    })
    .await;
    agent.stop().await;
}
