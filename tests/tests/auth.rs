//! Authentication, roles and mutual TLS with real processes: a 3-node master started with TLS (one
//! throwaway CA, mutual TLS between the masters too) and four tokens (operator, read, subscriber, agent).
//!
//! - Every gRPC method and a sample of REST routes refuse a missing, wrong or under-privileged token with
//!   UNAUTHENTICATED / PERMISSION_DENIED (HTTP 401 / 403 with a JSON `{code, message}`), and the cluster's
//!   revision does not move; the right role works.
//! - A client without a certificate, or with one from another CA, cannot connect; a real agent process with
//!   the cluster's certificate and its token registers, one with a foreign certificate never does.
//! - No token (good or bad) appears in any master or agent log.
//! - `huatuo objects` works from a client context file alone (as `huatuo dev` writes it); bad context files
//!   are clear errors; a master with neither security nor `--insecure` refuses to start.
//!
//! Needs the `huatuo` binary (see `tests::huatuo_bin`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use master::cluster::{LocalCluster, READY_TIMEOUT, free_port};
use master::tls::{DevCa, Usage};
use proto::api;
use proto::client::{Client, ClientSecurity};
use proto::error::{ApiError, Code};
use proto::tls::{TlsFiles, Token};
use tests::{huatuo_bin, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Log level of every process: everything at debug (the transport libraries included), so the "no token in
/// any log" check covers what an operator debugging a problem would switch on.
const VERBOSE: &str = "debug";

/// Bound on waiting for an agent to register / fail.
const AGENT_WAIT: Duration = Duration::from_secs(60);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything a secured test cluster needs.
struct Pki {
    dir: PathBuf,
    master: TlsFiles,
    agent: TlsFiles,
    cli: TlsFiles,
    /// A client certificate from another CA (trusting the right CA, so only the certificate is wrong).
    rogue: TlsFiles,
    tokens: BTreeMap<&'static str, Token>,
}

fn pki(dir: &Path) -> Pki {
    let ca = DevCa::new("auth test CA").unwrap();
    let tls = dir.join("tls");
    let master = ca.write_issued(&tls, "master", &["127.0.0.1", "localhost"], Usage::Server).unwrap();
    let agent = ca.write_issued(&tls, "agent", &[], Usage::Client).unwrap();
    let cli = ca.write_issued(&tls, "cli", &[], Usage::Client).unwrap();
    let other = DevCa::new("someone else's CA").unwrap();
    let rogue_dir = dir.join("rogue");
    let mut rogue = other.write_issued(&rogue_dir, "agent", &[], Usage::Client).unwrap();
    rogue.ca = master.ca.clone();
    let tokens = ["operator", "read", "subscriber", "agent"]
        .into_iter()
        .map(|r| (r, master::tls::new_token()))
        .collect();
    Pki { dir: dir.to_path_buf(), master, agent, cli, rogue, tokens }
}

impl Pki {
    fn master_toml(&self) -> String {
        let mut s = format!(
            "tick_ms = 50\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.master.ca.display().to_string(),
            self.master.cert.display().to_string(),
            self.master.key.display().to_string()
        );
        for (role, t) in &self.tokens {
            s += &format!(
                "[[auth.tokens]]\nname = \"t-{role}\"\nsha256 = \"{}\"\nroles = [\"{role}\"]\n",
                t.sha256_hex()
            );
        }
        s
    }

    fn security(&self, files: &TlsFiles, token: Option<&Token>) -> ClientSecurity {
        ClientSecurity { tls: Some(files.load().unwrap().client_config()), token: token.cloned() }
    }

    fn token(&self, role: &str) -> &Token {
        &self.tokens[role]
    }
}

fn client(c: &LocalCluster, sec: ClientSecurity) -> Client {
    let mut cl = Client::with_security(proto::client::parse_addrs(&c.grpc_addrs()), sec);
    // Refusals are final (not retried); a few attempts cover a leader change during the test.
    cl.max_attempts = 5;
    cl
}

/// Call every gRPC method once with `sec`; returns (method, result code or None for success).
async fn call_all(c: &LocalCluster, sec: ClientSecurity) -> Vec<(&'static str, Option<Code>)> {
    let mut cl = client(c, sec);
    let code = |r: Result<(), ApiError>| r.err().map(|e| e.code);
    let finding = api::Finding {
        object: "disk/auth-host/sda".into(),
        severity: "ERROR".into(),
        checker: "test".into(),
        version: "1".into(),
        rule: "r".into(),
        evidence: "e".into(),
        readings: Default::default(),
        time_ms: tests::now_ms(),
        shadow: false,
    };
    let cmd = |kind: &str| api::CommandRequest {
        object: "disk/auth-host/sda".into(),
        kind: kind.into(),
        name: "drained".into(),
        value: "GOOD".into(),
        by: "t".into(),
        reason: "test".into(),
        success: true,
    };
    let mut out = Vec::new();
    let r = cl
        .call(
            api::IngestRequest {
                agent: "auth-host".into(),
                seq: 1,
                findings: vec![finding.clone()],
                epoch: 0,
            },
            |mut c, r| async move { c.ingest(r).await },
        )
        .await;
    out.push(("Ingest", code(r.map(|_| ()))));
    // The same batches over an ingest stream, as agents send them: the first may go as a call (the client
    // starts at a follower, which refuses streams), the second opens a stream on the leader, where only
    // the role check can refuse it (then it too goes as a call: counted as that refusal).
    let mut ingests = proto::client::IngestStream::default();
    let mut r = Ok(());
    for seq in [2, 3] {
        let req =
            api::IngestRequest { agent: "auth-host".into(), seq, findings: vec![finding.clone()], epoch: 0 };
        r = ingests.send(&mut cl, req).await.map(|_| ());
    }
    let streamed = ingests.stats().streamed > 0;
    out.push(("IngestStream", code(r).or((!streamed).then_some(Code::PermissionDenied))));
    let r = cl
        .call(
            api::HeartbeatRequest {
                agent: "auth-host".into(),
                host: "auth-host".into(),
                ..Default::default()
            },
            |mut c, r| async move { c.heartbeat(r).await },
        )
        .await;
    out.push(("Heartbeat", code(r.map(|_| ()))));
    let r = cl
        .call(
            api::RegisterRequest { agent: "auth-host".into(), host: "auth-host".into(), objects: vec![] },
            |mut c, r| async move { c.register(r).await },
        )
        .await;
    out.push(("Register", code(r.map(|_| ()))));
    for (name, kind) in [("Command/force", "force"), ("Command/ack", "ack"), ("Command/result", "result")] {
        let r = cl.call(cmd(kind), |mut c, r| async move { c.command(r).await }).await;
        out.push((name, code(r.map(|_| ()))));
    }
    let r =
        cl.call(api::ListObjectsRequest::default(), |mut c, r| async move { c.list_objects(r).await }).await;
    out.push(("ListObjects", code(r.map(|_| ()))));
    let r = cl
        .call(
            api::GetObjectRequest { id: "disk/auth-host/sda".into(), stale: false },
            |mut c, r| async move { c.get_object(r).await },
        )
        .await;
    // NOT_FOUND is fine here: the call got past authentication.
    out.push(("GetObject", code(r.map(|_| ())).filter(|c| *c != Code::NotFound)));
    let r = cl
        .call(api::WatchRequest { from_revision: 1, ..Default::default() }, |mut c, r| async move {
            c.watch(r).await
        })
        .await;
    out.push(("Watch", code(r.map(|_| ()))));
    let r = cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
    out.push(("ClusterInfo", code(r.map(|_| ()))));
    let r = cl.call(api::GetSafetyRequest {}, |mut c, r| async move { c.get_safety(r).await }).await;
    out.push(("GetSafety", code(r.map(|_| ()))));
    let r = cl
        .call(
            api::SetLevelRequest {
                scope: "global".into(),
                level: "manual".into(),
                by: "t".into(),
                reason: "t".into(),
            },
            |mut c, r| async move { c.set_level(r).await },
        )
        .await;
    out.push(("SetLevel", code(r.map(|_| ()))));
    let r = cl
        .call(
            api::ReleaseRequest { scope: "global".into(), by: "t".into(), reason: "t".into() },
            |mut c, r| async move { c.release(r).await },
        )
        .await;
    out.push((
        "Release",
        code(r.map(|_| ())).filter(|c| *c != Code::Conflict && *c != Code::InvalidArgument),
    ));
    let r = cl
        .call(api::ListProposalsRequest::default(), |mut c, r| async move { c.list_proposals(r).await })
        .await;
    out.push(("ListProposals", code(r.map(|_| ()))));
    let r = cl
        .call(
            api::DecideProposalsRequest {
                decision: "reject".into(),
                ids: vec![999],
                by: "t".into(),
                reason: "t".into(),
                ..Default::default()
            },
            |mut c, r| async move { c.decide_proposals(r).await },
        )
        .await;
    out.push((
        "DecideProposals",
        code(r.map(|_| ()))
            .filter(|c| *c != Code::NotFound && *c != Code::Conflict && *c != Code::InvalidArgument),
    ));
    let r = cl
        .call(
            api::SetQuotasRequest {
                config_json: "{not json".into(),
                by: "t".into(),
                reason: "t".into(),
                ..Default::default()
            },
            |mut c, r| async move { c.set_quotas(r).await },
        )
        .await;
    out.push(("SetQuotas", code(r.map(|_| ())).filter(|c| *c != Code::InvalidArgument)));
    // Version 0 is refused by the API layer after the role check: changes nothing even for an operator.
    let r = cl
        .call(
            api::SetMinCommandVersionRequest { version: 0, by: "t".into(), reason: "t".into() },
            |mut c, r| async move { c.set_min_command_version(r).await },
        )
        .await;
    out.push(("SetMinCommandVersion", code(r.map(|_| ())).filter(|c| *c != Code::InvalidArgument)));
    out
}

async fn revision(c: &LocalCluster) -> u64 {
    let mut cl = c.client();
    cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
        .await
        .unwrap()
        .revision
}

/// One HTTPS/1.1 request to `addr` (trusting `ca`); returns (status, body).
async fn https(
    addr: &str,
    ca: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = conn.connect(name, tcp).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn agent_config(dir: &Path, name: &str, masters: &str, tls: &TlsFiles, token: &Token) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("dev/kmsg"), "").unwrap();
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, format!("{}\n", token.expose())).unwrap();
    let masters: Vec<String> = proto::client::parse_addrs(masters).iter().map(|m| format!("{m:?}")).collect();
    let cfg = format!(
        "version = 1\nhost = {name:?}\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{}\"\n\
         root = {:?}\ntoken_file = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
         [report]\nheartbeat_s = 1\nbackoff_max_s = 1\n[net_probe]\nlisten = \"127.0.0.1:0\"\n",
        dir.join(format!("{name}-data")).display().to_string(),
        masters.join(", "),
        free_port().unwrap(),
        root.display().to_string(),
        token_file.display().to_string(),
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

fn start_agent(bin: &Path, cfg: &Path, log: &Path) -> KillOnDrop {
    let log = std::fs::File::create(log).unwrap();
    KillOnDrop(
        Command::new(bin)
            .args(["agent", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", VERBOSE)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn objects_of(c: &LocalCluster, host: &str) -> usize {
    let mut cl = c.client();
    let req = api::ListObjectsRequest { host: host.into(), ..Default::default() };
    cl.call(req, |mut c, r| async move { c.list_objects(r).await })
        .await
        .map(|r| r.objects.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_cluster_checks_tokens_roles_and_certificates() {
    let bin = huatuo_bin();
    let tmp = tempfile::tempdir().unwrap();
    let p = pki(tmp.path());
    let harness = p.security(&p.cli, Some(p.token("operator")));
    let cluster =
        LocalCluster::start_secure_with_env(&bin, 3, &p.master_toml(), harness, &[("RUST_LOG", VERBOSE)])
            .unwrap();
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", cluster.log_tail(1));
    // A new cluster's leader writes on its own at first: it raises min_command_version, then seeds the
    // catalog. Wait for both, so the revision checks below see only what the calls do (one CI run read the
    // revision between the two writes).
    let settled = wait_until(READY_TIMEOUT, || {
        let mut c = cluster.client();
        async move {
            let info =
                c.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
            let upgraded = info.is_ok_and(|i| i.min_command_version == master::model::COMMAND_VERSION);
            let seeded = c
                .call(api::ListCatalogRequest { name: "kernel-log".into() }, |mut c, r| async move {
                    c.list_catalog(r).await
                })
                .await
                .is_ok_and(|l| l.artifacts.iter().any(|a| a.r#type == "rules"));
            upgraded && seeded
        }
    })
    .await;
    assert!(settled, "the leader never upgraded and seeded: {}", cluster.log_tail(1));
    let wrong = Token::new("0123456789abcdef-not-a-real-token");

    // 1. gRPC: missing, wrong and under-privileged tokens; nothing changes.
    let before = revision(&cluster).await;
    let none = call_all(&cluster, p.security(&p.cli, None)).await;
    assert!(none.iter().all(|(_, c)| *c == Some(Code::Unauthenticated)), "no token: {none:?}");
    let bad = call_all(&cluster, p.security(&p.cli, Some(&wrong))).await;
    assert!(bad.iter().all(|(_, c)| *c == Some(Code::Unauthenticated)), "wrong token: {bad:?}");
    let expect_denied = |role: &str, results: &[(&str, Option<Code>)], allowed: &[&str]| {
        for (m, c) in results {
            let want = if allowed.contains(m) { None } else { Some(Code::PermissionDenied) };
            // Allowed calls may still fail for their own reasons (e.g. an ack nobody waits for); never on auth.
            if want.is_none() {
                assert!(
                    !matches!(c, Some(Code::PermissionDenied | Code::Unauthenticated)),
                    "{role} {m}: {c:?}"
                );
            } else {
                assert_eq!(*c, want, "{role} may not call {m}");
            }
        }
    };
    let reads = ["ListObjects", "GetObject", "Watch", "ClusterInfo", "GetSafety", "ListProposals"];
    let read = call_all(&cluster, p.security(&p.cli, Some(p.token("read")))).await;
    expect_denied("read", &read, &reads);
    assert_eq!(revision(&cluster).await, before, "refused calls changed nothing");
    let mut sub_ok = reads.to_vec();
    sub_ok.push("Command/ack");
    let sub = call_all(&cluster, p.security(&p.cli, Some(p.token("subscriber")))).await;
    expect_denied("subscriber", &sub, &sub_ok);
    assert_eq!(revision(&cluster).await, before, "refused calls changed nothing");
    // REST with the same tokens.
    let http = cluster.nodes.values().map(|n| n.http.clone()).collect::<Vec<_>>();
    let ca = &p.master.ca;
    let level = r#"{"scope":"global","level":"manual","by":"t","reason":"t"}"#;
    let finding = r#"{"agent":"x","findings":[{"object":"disk/auth-host/sdb","severity":"ERROR","checker":"t","version":"1","rule":"r","evidence":"e","readings":{},"time_ms":1}]}"#;
    let force = r#"{"object":"disk/auth-host/sdb","kind":"force","value":"GOOD","by":"t","reason":"t"}"#;
    let (tr, ts, ta) = (p.token("read").expose(), p.token("subscriber").expose(), p.token("agent").expose());
    for (method, path, token, body, want) in [
        ("GET", "/api/v1/objects", None, "", 401),
        ("GET", "/api/v1/cluster", Some(wrong.expose()), "", 401),
        ("GET", "/metrics", None, "", 401),
        ("GET", "/api/v1/objects", Some(ta), "", 403),
        ("POST", "/api/v1/findings", Some(tr), finding, 403),
        ("POST", "/api/v1/findings", None, finding, 401),
        ("POST", "/api/v1/commands", Some(ts), force, 403),
        ("POST", "/api/v1/levels", Some(tr), level, 403),
        ("POST", "/api/v1/heartbeat", Some(tr), "{}", 403),
        ("POST", "/api/v1/proposals/decide", Some(ts), "{}", 403),
        ("PUT", "/api/v1/quotas", Some(ta), "", 403),
        ("POST", "/api/v1/min-command-version", Some(tr), r#"{"version":2,"by":"t","reason":"t"}"#, 403),
        ("POST", "/api/v1/min-command-version", Some(ts), r#"{"version":2,"by":"t","reason":"t"}"#, 403),
        ("POST", "/api/v1/min-command-version", None, r#"{"version":2,"by":"t","reason":"t"}"#, 401),
    ] {
        let (status, body) = https(&http[0], ca, method, path, token, body).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
        let code = if want == 401 { "UNAUTHENTICATED" } else { "PERMISSION_DENIED" };
        assert_eq!(v["code"], code, "{method} {path}: {body}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    assert_eq!(revision(&cluster).await, before, "refused REST calls changed nothing");
    // Open and allowed routes.
    assert_eq!(https(&http[0], ca, "GET", "/healthz", None, "").await.0, 200);
    assert_eq!(https(&http[0], ca, "GET", "/metrics", Some(tr), "").await.0, 200);
    assert_eq!(https(&http[0], ca, "GET", "/api/v1/objects", Some(ts), "").await.0, 200);

    // 2. The right roles work: the agent token reports, the operator forces.
    let agent = call_all(&cluster, p.security(&p.cli, Some(p.token("agent")))).await;
    let agent_ok = ["Ingest", "IngestStream", "Heartbeat", "Register", "Command/result"];
    expect_denied("agent", &agent, &agent_ok);
    assert!(agent.iter().find(|(m, _)| *m == "Ingest").is_some_and(|(_, c)| c.is_none()), "{agent:?}");
    assert!(revision(&cluster).await > before, "the agent's finding was applied");
    let ops = call_all(&cluster, p.security(&p.cli, Some(p.token("operator")))).await;
    let denied: Vec<_> = ops
        .iter()
        .filter(|(_, c)| matches!(c, Some(Code::PermissionDenied | Code::Unauthenticated)))
        .collect();
    // Operators may do everything but an agent's heartbeat/registration.
    assert_eq!(denied.iter().map(|(m, _)| *m).collect::<Vec<_>>(), vec!["Heartbeat", "Register"], "{ops:?}");

    // 3. Certificates: none, or one from another CA, cannot connect at all.
    let plain = ClientSecurity { tls: None, token: Some(p.token("operator").clone()) };
    let mut cl = client(&cluster, plain);
    cl.max_attempts = 2;
    let e = cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
    assert_eq!(e.expect_err("plain text to a TLS port").code, Code::Unavailable);
    let ca_only = master_ca_only(&p);
    let mut cl = client(&cluster, ca_only);
    cl.max_attempts = 2;
    let e = cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
    assert_eq!(e.expect_err("no client certificate").code, Code::Unavailable);
    let mut cl = client(&cluster, p.security(&p.rogue, Some(p.token("operator"))));
    cl.max_attempts = 2;
    let e = cl.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
    let e = e.expect_err("certificate from another CA");
    // The server's alert (UnknownCA) reaches the client only when it reads before the connection closes.
    assert_eq!(e.code, Code::Unavailable, "{e}");

    // The peer port: a certificate from the cluster CA that is not a master's (not valid for the peer's
    // address) cannot pose as a peer; a master's certificate can.
    let peer_probe = |files: TlsFiles| {
        let addr = format!("https://{}", cluster.nodes[&1].peer);
        async move {
            let ch = tonic::transport::Endpoint::from_shared(addr)
                .unwrap()
                .tls_config(files.load().unwrap().client_config())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut pc = proto::peer::peer_client::PeerClient::new(ch);
            pc.probe(proto::peer::ProbeRequest { from: 2, voters: vec![1, 2, 3] }).await
        }
    };
    let e = peer_probe(p.agent.clone()).await.expect_err("an agent certificate on the peer port");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not valid for 127.0.0.1"), "{e}");
    peer_probe(p.master.clone()).await.expect("a master certificate on the peer port");

    // Real agents: the one with the cluster's certificate registers; the rogue one never does.
    let good_cfg = agent_config(&p.dir, "good-host", &cluster.grpc_addrs(), &p.agent, p.token("agent"));
    let rogue_cfg = agent_config(&p.dir, "rogue-host", &cluster.grpc_addrs(), &p.rogue, p.token("agent"));
    let good_log = p.dir.join("good-agent.log");
    let rogue_log = p.dir.join("rogue-agent.log");
    let _rogue = start_agent(&bin, &rogue_cfg, &rogue_log);
    let _good = start_agent(&bin, &good_cfg, &good_log);
    let registered = wait_until(AGENT_WAIT, || async { objects_of(&cluster, "good-host").await > 0 }).await;
    assert!(
        registered,
        "good agent never registered: {}",
        std::fs::read_to_string(&good_log).unwrap_or_default()
    );
    let failed = wait_until(AGENT_WAIT, || async {
        std::fs::read_to_string(&rogue_log)
            .is_ok_and(|l| l.contains("report to master failed") && l.contains("register"))
    })
    .await;
    assert!(failed, "rogue agent log: {}", std::fs::read_to_string(&rogue_log).unwrap_or_default());
    assert_eq!(objects_of(&cluster, "rogue-host").await, 0, "an agent with a foreign certificate got in");

    // 4. No token in any log.
    drop(_good);
    drop(_rogue);
    let mut logs: Vec<PathBuf> = (1..=3).map(|id| cluster.log_path(id)).collect();
    logs.extend([good_log, rogue_log]);
    let mut secrets: Vec<&str> = p.tokens.values().map(Token::expose).collect();
    secrets.push(wrong.expose());
    let refusals: usize = (1..=3)
        .map(|id| std::fs::read_to_string(cluster.log_path(id)).unwrap().matches("call refused").count())
        .sum();
    assert!(refusals > 0, "the refused calls were logged (so the logs saw the tokens go by)");
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.is_empty(), "{} is empty", log.display());
        for s in &secrets {
            assert!(!text.contains(s), "a token appears in {}", log.display());
        }
    }

    // 5. The CLI from a context file alone (as `huatuo dev` writes it).
    let ctx = |token: Option<&Token>| {
        let mut s = format!(
            "version = 1\nmasters = [{}]\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            cluster.nodes.values().map(|n| format!("{:?}", n.grpc)).collect::<Vec<_>>().join(", "),
            p.cli.ca.display().to_string(),
            p.cli.cert.display().to_string(),
            p.cli.key.display().to_string(),
        );
        if let Some(t) = token {
            s = s.replacen("[tls]", &format!("token = {:?}\n[tls]", t.expose()), 1);
        }
        s
    };
    let run = |ctx_text: &str, name: &str| {
        let path = p.dir.join(name);
        std::fs::write(&path, ctx_text).unwrap();
        let out = Command::new(&bin)
            .args(["objects", "--json"])
            .env("HUATUO_CONTEXT", &path)
            .env_remove("HUATUO_MASTER")
            .env_remove("HUATUO_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&ctx(Some(p.token("read"))), "read.toml");
    assert!(ok && stdout.contains("good-host"), "huatuo objects with a context: {stdout}\n{stderr}");
    let (ok, _, stderr) = run(&ctx(None), "no-token.toml");
    assert!(!ok && stderr.contains("UNAUTHENTICATED"), "{stderr}");
    let (ok, _, stderr) = run("version = 1\nmasters = [\"127.0.0.1:1\"]\nsurprise = true\n", "bad.toml");
    assert!(!ok && stderr.contains("bad.toml") && stderr.contains("unknown field"), "{stderr}");
}

/// TLS that trusts the cluster CA but presents no client certificate.
fn master_ca_only(p: &Pki) -> ClientSecurity {
    let ca = std::fs::read(&p.master.ca).unwrap();
    let tls =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
    ClientSecurity { tls: Some(tls), token: Some(p.token("operator").clone()) }
}

#[test]
fn master_without_security_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let out = Command::new(huatuo_bin())
        .args(["master", "--id", "1", "--peers", &format!("1=127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("refusing to start without security"), "{stderr}");
    assert!(!tmp.path().join("d").exists(), "nothing was created");
}

/// A connection that never finishes its TLS handshake (a client that connects and sends nothing: slowloris,
/// or a peer that vanished mid-handshake) is closed after `proto::tls::HANDSHAKE_TIMEOUT` on the gRPC and
/// peer ports, as on the HTTPS port: it would otherwise hold a descriptor and a task for ever, and enough of
/// them exhaust the descriptors every agent connection needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_finishes_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pki(tmp.path());
    let cluster = LocalCluster::start_secure(
        &huatuo_bin(),
        1,
        &p.master_toml(),
        p.security(&p.cli, Some(p.token("read"))),
    )
    .unwrap();
    assert!(cluster.wait_leader(READY_TIMEOUT).await.is_some(), "no leader: {}", cluster.log_tail(1));
    let limit = proto::tls::HANDSHAKE_TIMEOUT + Duration::from_secs(10);
    let node = &cluster.nodes[&1];
    let start = std::time::Instant::now();
    let mut silent = Vec::new();
    for (port, addr) in [("gRPC", &node.grpc), ("peer", &node.peer), ("HTTPS", &node.http)] {
        silent.push((port, tokio::net::TcpStream::connect(addr.as_str()).await.expect("connect")));
    }
    // The server sends nothing before the client's hello: a read ends only when it closes the connection.
    for (port, mut conn) in silent {
        let mut buf = [0u8; 64];
        let left = limit.saturating_sub(start.elapsed());
        let end = tokio::time::timeout(left, conn.read(&mut buf)).await;
        assert!(
            matches!(end, Ok(Ok(0)) | Ok(Err(_))),
            "the {port} port still holds a connection that sent nothing after {:?}: {end:?}",
            start.elapsed()
        );
        assert!(start.elapsed() >= proto::tls::HANDSHAKE_TIMEOUT / 2, "{port}: closed before its timeout");
    }
}

/// Heartbeat datagrams on a secured cluster seal each agent's beats with a key of its own (command version
/// 12): the leader sets the cluster's heartbeat secret by itself, an agent's call (certificate and token
/// checked) carries its key, and its datagrams under that key are answered, by the new leader too after a
/// kill -9 with no call. A datagram under the agent token's key (all a stolen token gives) is answered
/// CONFLICT and keeps no one alive; one agent's key on another agent's beat, or on a beat that names two
/// agents, gets no answer. The key is never in a datagram's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_datagrams_are_sealed_with_each_agents_own_key() {
    use prost::Message as _;
    use proto::datagram::{self, BeatKey, Datagrams, Kind};
    let tmp = tempfile::tempdir().unwrap();
    let p = pki(tmp.path());
    let mut cluster = LocalCluster::start_secure(
        &huatuo_bin(),
        3,
        &p.master_toml(),
        p.security(&p.cli, Some(p.token("operator"))),
    )
    .unwrap();
    let leader =
        cluster.wait_leader(READY_TIMEOUT).await.unwrap_or_else(|| panic!("{}", cluster.log_tail(1)));
    let agent_sec = p.security(&p.agent, Some(p.token("agent")));
    let beat = |agent: &str| api::HeartbeatRequest {
        agent: agent.into(),
        host: format!("{agent}-host"),
        version: "1.0.0".into(),
        started_ms: tests::now_ms(),
        ..Default::default()
    };
    // The leader raises the version to 12 and sets the secret on its own: a call's answer then has a key.
    let mut calls = client(&cluster, agent_sec.clone());
    let mut first = None;
    for _ in 0..200 {
        let r =
            calls.call(beat("own-a"), |mut c, r| async move { c.heartbeat(r).await }).await.expect("call");
        if !r.beat_key.is_empty() {
            first = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.unwrap_or_else(|| panic!("no beat key handed out: {}", cluster.log_tail(leader)));
    assert_eq!(first.beat_key.len(), 32);
    let b = calls.call(beat("own-b"), |mut c, r| async move { c.heartbeat(r).await }).await.expect("call");
    assert_eq!(b.beat_key_id, first.beat_key_id, "one secret");
    assert_ne!(b.beat_key, first.beat_key, "each agent its own key");
    // An agent that says it holds the current key is not handed it again.
    let holding = api::HeartbeatRequest { beat_key_id: first.beat_key_id, ..beat("own-a") };
    let r = calls.call(holding, |mut c, r| async move { c.heartbeat(r).await }).await.expect("call");
    assert!(r.beat_key.is_empty() && r.beat_key_id == 0, "a key handed to an agent holding it");
    let addrs = proto::client::parse_addrs(&cluster.grpc_addrs());
    let lead_grpc = cluster.nodes[&leader].grpc.clone();
    let lead_http = cluster.nodes[&leader].http.clone();
    let read = p.token("read").expose().to_string();
    let ca = p.master.ca.clone();
    let metrics = |http: String, result: &'static str| {
        let (read, ca) = (read.clone(), ca.clone());
        async move {
            let (_, page) = https(&http, &ca, "GET", "/metrics", Some(&read), "").await;
            let name = format!("huatuo_master_heartbeat_datagrams_total{{result=\"{result}\"}}");
            tests::metric(&page, &name).unwrap_or(0)
        }
    };

    // The agent token's key: authenticated, so answered, with CONFLICT: the beat goes as a call.
    let mut by_token = Datagrams::new(BeatKey::from_token(p.token("agent")), addrs.clone());
    assert!(by_token.beat(Some(&lead_grpc), &beat("own-a")).await.is_none(), "a token-keyed datagram beat");
    assert_eq!(by_token.stats().unanswered, 0, "a token-keyed datagram was not answered");
    assert_eq!(metrics(lead_http.clone(), "token_key").await, 1);

    // Its own key: answered, and the answer carries no key.
    let mut own = Datagrams::new(BeatKey::from_token(p.token("agent")), addrs.clone());
    assert!(own.take_key_from(&first));
    for _ in 0..3 {
        let r = own.beat(Some(&lead_grpc), &beat("own-a")).await.expect("a beat under its own key");
        assert!(r.beat_key.is_empty() && r.beat_key_id == 0, "a key in a datagram's answer");
    }
    assert_eq!(own.stats().answered, 3);

    // Agent a's key on agent b's beat, and on a beat naming a first and b last: no answer, nothing changed.
    let a_key = BeatKey::from_agent_key(first.beat_key_id, &first.beat_key).expect("key");
    let send = |bytes: &[u8]| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("test setup");
        s.set_read_timeout(Some(Duration::from_millis(300))).expect("test setup");
        s.send_to(bytes, &lead_grpc).expect("test setup");
        s.recv_from(&mut [0u8; 9000]).is_ok()
    };
    let mut out = Vec::new();
    let seq = datagram::SeqClock::default().next();
    datagram::seal(&a_key, Kind::Beat, seq, &beat("own-b"), &mut out).expect("test setup");
    assert!(!send(&out), "agent a's key beat for agent b");
    let mut two = beat("own-a").encode_to_vec();
    two.extend(api::HeartbeatRequest { agent: "own-b".into(), ..Default::default() }.encode_to_vec());
    datagram::seal_payload(&a_key, Kind::Beat, seq + 1, &two, &mut out).expect("test setup");
    assert!(!send(&out), "a beat naming two agents");
    let refused =
        (metrics(lead_http.clone(), "bad_seal").await, metrics(lead_http.clone(), "malformed").await);
    assert_eq!(refused, (1, 1), "bad_seal, malformed");

    // kill -9 the leader: the new one opens the agent's datagrams with the replicated secret, no call.
    cluster.kill9(leader);
    let new_leader = cluster.wait_leader(READY_TIMEOUT).await.expect("a new leader");
    let before = own.stats();
    let mut after = None;
    for _ in 0..30 {
        if let Some(r) = own.beat(None, &beat("own-a")).await {
            after = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        after.is_some(),
        "no datagram answered after the kill: {:?} {}",
        own.stats(),
        cluster.log_tail(new_leader)
    );
    assert!(own.stats().answered > before.answered);
}
