//! `huatuo dev`: everything on this machine — a 3-node master (three `huatuo master` processes), an agent
//! checking this host (`huatuo agent`), and the HTTP API/portal on 127.0.0.1:7780 — with data under one
//! directory it prints. Ctrl-C (or SIGTERM) stops every child cleanly: SIGTERM first, SIGKILL after a
//! bounded grace period. Uses the documented default ports (master gRPC 7700, Raft 7710, HTTP 7780, agent
//! 7790); masters 2 and 3 take the next ports up.
//!
//! The secure setup is the default one: each start makes a throwaway CA under `DATA_DIR/tls` (master
//! certificates for 127.0.0.1/localhost, an agent and a CLI client certificate), a fresh operator token and
//! agent token (the masters' configs hold only their sha256), and writes the client context
//! (`$HUATUO_CONTEXT` or `~/.config/huatuo/context.toml`) so `huatuo objects` just works. The operator token
//! is printed once and stored in clear only in that context file.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use master::tls::{DevCa, Usage, new_token};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::client::ClientSecurity;
use proto::tls::{TlsFiles, Token};
use tokio::process::{Child, Command};

use crate::context::Context as ClientContext;

/// How long the children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The dev cluster's ticket file (the masters' file sink), in the data dir.
pub const TICKETS_FILE: &str = "tickets.jsonl";
/// How long the masters get to elect a leader before `huatuo dev` gives up.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the masters and the agent keep their data and logs.
    #[arg(long, default_value = ".huatuo-dev")]
    data_dir: PathBuf,
    /// Delete the data directory first (a brand-new cluster).
    #[arg(long)]
    fresh: bool,
    /// Start only the masters.
    #[arg(long)]
    no_agent: bool,
    /// Root of the filesystem the agent's probes read (a recorded /proc + /sys tree works too).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// First port of each family; masters use base, base+1, base+2.
    #[arg(long, default_value_t = 7700)]
    grpc_port: u16,
    /// First peer (Raft) port; masters use base, base+1, base+2.
    #[arg(long, default_value_t = 7710)]
    peer_port: u16,
    /// First HTTP port (REST and the portal); masters use base, base+1, base+2.
    #[arg(long, default_value_t = 7780)]
    http_port: u16,
    /// The agent's local HTTP port (`/api/v1/local`).
    #[arg(long, default_value_t = 7790)]
    agent_port: u16,
    /// Where to write the client context (default: $HUATUO_CONTEXT, else ~/.config/huatuo/context.toml).
    #[arg(long, env = "HUATUO_CONTEXT")]
    context: Option<PathBuf>,
}

/// What `huatuo dev` generated for one run.
struct Secrets {
    master_tls: Vec<TlsFiles>,
    agent_tls: TlsFiles,
    cli_tls: TlsFiles,
    operator: Token,
    agent: Token,
}

fn generate_secrets(dir: &Path) -> anyhow::Result<Secrets> {
    let tls_dir = dir.join("tls");
    if tls_dir.exists() {
        std::fs::remove_dir_all(&tls_dir).with_context(|| format!("cannot remove {}", tls_dir.display()))?;
    }
    let ca = DevCa::new("huatuo dev CA (throwaway)")?;
    let sans = ["127.0.0.1", "localhost"];
    let master_tls = (1..=3)
        .map(|id| ca.write_issued(&tls_dir, &format!("master-{id}"), &sans, Usage::Server))
        .collect::<Result<Vec<_>, _>>()?;
    let agent_tls = ca.write_issued(&tls_dir, "agent", &[], Usage::Client)?;
    let cli_tls = ca.write_issued(&tls_dir, "cli", &[], Usage::Client)?;
    Ok(Secrets { master_tls, agent_tls, cli_tls, operator: new_token(), agent: new_token() })
}

/// One master's config file: addresses, TLS files and the hashed tokens.
fn master_config(
    id: u64,
    peers: &[String],
    (grpc, http, peer_listen): (&str, &str, &str),
    data_dir: &Path,
    tls: &TlsFiles,
    s: &Secrets,
    tickets: &Path,
) -> anyhow::Result<String> {
    use toml::Value;
    let mut t = toml::Table::new();
    t.insert("id".into(), Value::Integer(i64::try_from(id)?));
    t.insert("data_dir".into(), Value::String(data_dir.display().to_string()));
    t.insert("grpc".into(), Value::String(grpc.into()));
    t.insert("http".into(), Value::String(http.into()));
    t.insert("peer_listen".into(), Value::String(peer_listen.into()));
    let peers = peers.iter().enumerate().map(|(i, p)| ((i + 1).to_string(), Value::String(p.clone())));
    t.insert("peers".into(), Value::Table(peers.collect()));
    t.insert("tls".into(), Value::try_from(tls)?);
    // Repair tickets go to a file sink under the data dir (the leader appends; shared by the three masters),
    // so `huatuo ticket list` shows filed tickets and the whole lifecycle runs without a repair system.
    let mut sink = toml::Table::new();
    sink.insert("sink".into(), Value::String("file".into()));
    sink.insert("path".into(), Value::String(tickets.display().to_string()));
    t.insert("tickets".into(), Value::Table(sink));
    let token = |name: &str, tok: &Token, role: &str| {
        let mut e = toml::Table::new();
        e.insert("name".into(), Value::String(name.into()));
        e.insert("sha256".into(), Value::String(tok.sha256_hex()));
        e.insert("roles".into(), Value::Array(vec![Value::String(role.into())]));
        Value::Table(e)
    };
    let tokens = vec![token("dev-operator", &s.operator, "operator"), token("dev-agent", &s.agent, "agent")];
    let mut auth = toml::Table::new();
    auth.insert("tokens".into(), Value::Array(tokens));
    t.insert("auth".into(), Value::Table(auth));
    Ok(format!("# Written by `huatuo dev` (throwaway certificates and tokens).\n{t}"))
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn spawn(name: &str, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("cannot find the huatuo executable")?;
    let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc { name: name.to_string(), child, log: log.to_path_buf() })
}

async fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter() {
        if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM); // already gone is fine
        }
    }
    for p in procs.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, p.child.wait()).await {
            Ok(Ok(status)) => eprintln!("huatuo dev: {} stopped ({status})", p.name),
            _ => {
                eprintln!("huatuo dev: {} did not stop within {STOP_GRACE:?}; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
}

async fn wait_for_leader(grpc: &[String], security: ClientSecurity) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + LEADER_DEADLINE;
    let mut client = proto::client::Client::with_security(grpc.to_vec(), security);
    client.max_attempts = 1;
    loop {
        let res = client
            .call(
                proto::api::ClusterInfoRequest::default(),
                |mut c, r| async move { c.cluster_info(r).await },
            )
            .await;
        if let Ok(info) = res
            && info.leader_id != 0
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the masters elected no leader within {LEADER_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn agent_config(a: &DevArgs, dir: &Path, grpc: &[String], tls: &TlsFiles, token_file: &Path) -> String {
    let masters: Vec<String> = grpc.iter().map(|g| format!("{g:?}")).collect();
    format!(
        "# Written by `huatuo dev`.\nversion = 1\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{}\"\n\
         root = {:?}\nprofile = \"online\"\ntoken_file = {:?}\n\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n\
         [labels]\ncluster = \"dev\"\nrack = \"dev-rack\"\n\n[net_probe]\nlisten = \"127.0.0.1:7791\"\n",
        dir.join("agent").display().to_string(),
        masters.join(", "),
        a.agent_port,
        a.root.display().to_string(),
        token_file.display().to_string(),
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    )
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(a: DevArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: DevArgs) -> anyhow::Result<ExitCode> {
    if a.fresh && a.data_dir.exists() {
        std::fs::remove_dir_all(&a.data_dir)
            .with_context(|| format!("cannot remove {}", a.data_dir.display()))?;
    }
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let dir = std::fs::canonicalize(&a.data_dir)?;
    let grpc: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", a.grpc_port + i)).collect();
    let peer: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", a.peer_port + i)).collect();
    let http: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", a.http_port + i)).collect();
    let mut ports: Vec<u16> =
        (0..3).flat_map(|i| [a.grpc_port + i, a.peer_port + i, a.http_port + i]).collect();
    if !a.no_agent {
        ports.push(a.agent_port);
    }
    let busy: Vec<String> = ports.iter().filter(|p| !port_free(**p)).map(u16::to_string).collect();
    if !busy.is_empty() {
        bail!(
            "port(s) {} already in use on 127.0.0.1 (another huatuo dev?); stop it or pick other ports",
            busy.join(", ")
        );
    }
    let secrets = generate_secrets(&dir)?;
    let mut procs = Vec::new();
    for i in 0..3 {
        let id = i + 1;
        let data = dir.join(format!("master-{id}"));
        let text = master_config(
            id as u64,
            &peer,
            (&grpc[i], &http[i], &peer[i]),
            &data,
            &secrets.master_tls[i],
            &secrets,
            &dir.join(TICKETS_FILE),
        )?;
        let cfg_path = dir.join(format!("master-{id}.toml"));
        write_private(&cfg_path, &text)?;
        let args: Vec<String> = vec!["master".into(), "--config".into(), cfg_path.display().to_string()];
        match spawn(&format!("master-{id}"), &args, &dir.join(format!("master-{id}.log"))) {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop_all(&mut procs).await;
                return Err(e);
            }
        }
    }
    let cli_security = ClientSecurity {
        tls: Some(secrets.cli_tls.load().context("the generated CLI certificate")?.client_config()),
        token: Some(secrets.operator.clone()),
    };
    if let Err(e) = wait_for_leader(&grpc, cli_security).await {
        stop_all(&mut procs).await;
        return Err(e.context(format!("see the logs in {}", dir.display())));
    }
    if !a.no_agent {
        let cfg_path = dir.join("agent.toml");
        let token_file = dir.join("agent.token");
        write_private(&token_file, &format!("{}\n", secrets.agent.expose()))?;
        write_private(&cfg_path, &agent_config(&a, &dir, &grpc, &secrets.agent_tls, &token_file))?;
        let args = vec!["agent".into(), "--config".into(), cfg_path.display().to_string()];
        match spawn("agent", &args, &dir.join("agent.log")) {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop_all(&mut procs).await;
                return Err(e);
            }
        }
    }
    let ctx_path = a
        .context
        .clone()
        .or_else(crate::context::default_path)
        .ok_or_else(|| anyhow::anyhow!("no HOME: pass --context FILE"))?;
    let ctx = ClientContext {
        version: crate::context::CONTEXT_VERSION,
        masters: grpc.clone(),
        http: Some(format!("https://{}/", http[0])),
        token: Some(secrets.operator.clone()),
        tls: Some(secrets.cli_tls.clone()),
    };
    if let Err(e) = ctx.write(&ctx_path) {
        stop_all(&mut procs).await;
        return Err(e.into());
    }
    println!("huatuo dev is running. Data and logs: {}", dir.display());
    println!("  masters (gRPC, mutual TLS): {}", grpc.join(", "));
    println!("  HTTP API / portal: https://{}/  (REST under /api/v1, /metrics, /healthz)", http[0]);
    println!("  CA certificate: {}", secrets.cli_tls.ca.display());
    println!("  repair tickets (file sink, one JSON line per filing): {}", dir.join(TICKETS_FILE).display());
    println!("  operator token (shown once; also in the client context): {}", secrets.operator.expose());
    println!("  client context: {}", ctx_path.display());
    if !a.no_agent {
        println!("  agent: http://127.0.0.1:{}/api/v1/local", a.agent_port);
    }
    println!("Try: huatuo objects   |   huatuo status   |   huatuo watch");
    println!("Ctrl-C stops everything.");

    let signalled = proto::shutdown::on_signal()?;
    tokio::pin!(signalled);
    let exited = loop {
        tokio::select! {
            _ = &mut signalled => break None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let mut gone = None;
                for p in procs.iter_mut() {
                    if matches!(p.child.try_wait(), Ok(Some(_))) {
                        gone = Some((p.name.clone(), p.log.clone()));
                        break;
                    }
                }
                if gone.is_some() {
                    break gone;
                }
            }
        }
    };
    eprintln!("huatuo dev: stopping");
    stop_all(&mut procs).await;
    match exited {
        None => Ok(ExitCode::SUCCESS),
        Some((name, log)) => {
            eprintln!("huatuo dev: {name} exited unexpectedly; its log is {}", log.display());
            Ok(ExitCode::from(1))
        }
    }
}
