//! `huatuo dev`: everything on this machine — a 3-node master (three `huatuo master` processes), an agent
//! checking this host (`huatuo agent`), and the HTTP API/portal on 127.0.0.1:7780 — with data under one
//! directory it prints. Ctrl-C (or SIGTERM) stops every child cleanly: SIGTERM first, SIGKILL after a
//! bounded grace period. Uses the documented default ports (master gRPC 7700, Raft 7710, HTTP 7780, agent
//! 7790); masters 2 and 3 take the next ports up.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How long the children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
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
    #[arg(long, default_value_t = 7710)]
    peer_port: u16,
    #[arg(long, default_value_t = 7780)]
    http_port: u16,
    #[arg(long, default_value_t = 7790)]
    agent_port: u16,
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

async fn wait_for_leader(grpc: &[String]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + LEADER_DEADLINE;
    let mut client = proto::client::Client::new(grpc.to_vec());
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

fn agent_config(a: &DevArgs, dir: &Path, grpc: &[String]) -> String {
    let masters: Vec<String> = grpc.iter().map(|g| format!("{g:?}")).collect();
    format!(
        "# Written by `huatuo dev`.\nversion = 1\ndata_dir = {:?}\nmasters = [{}]\nhttp_listen = \"127.0.0.1:{}\"\n\
         root = {:?}\nprofile = \"online\"\n\n[labels]\ncluster = \"dev\"\nrack = \"dev-rack\"\n",
        dir.join("agent").display().to_string(),
        masters.join(", "),
        a.agent_port,
        a.root.display().to_string(),
    )
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
    let peers = peer.iter().enumerate().map(|(i, p)| format!("{}={p}", i + 1)).collect::<Vec<_>>().join(",");
    let mut procs = Vec::new();
    for i in 0..3 {
        let id = i + 1;
        let args: Vec<String> = vec![
            "master".into(),
            "--id".into(),
            id.to_string(),
            "--peers".into(),
            peers.clone(),
            "--grpc".into(),
            grpc[i].clone(),
            "--http".into(),
            http[i].clone(),
            "--peer-listen".into(),
            peer[i].clone(),
            "--data-dir".into(),
            dir.join(format!("master-{id}")).display().to_string(),
        ];
        match spawn(&format!("master-{id}"), &args, &dir.join(format!("master-{id}.log"))) {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop_all(&mut procs).await;
                return Err(e);
            }
        }
    }
    if let Err(e) = wait_for_leader(&grpc).await {
        stop_all(&mut procs).await;
        return Err(e.context(format!("see the logs in {}", dir.display())));
    }
    if !a.no_agent {
        let cfg_path = dir.join("agent.toml");
        std::fs::write(&cfg_path, agent_config(&a, &dir, &grpc))?;
        let args = vec!["agent".into(), "--config".into(), cfg_path.display().to_string()];
        match spawn("agent", &args, &dir.join("agent.log")) {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop_all(&mut procs).await;
                return Err(e);
            }
        }
    }
    println!("huatuo dev is running. Data and logs: {}", dir.display());
    println!("  masters (gRPC): {}", grpc.join(", "));
    println!("  HTTP API / portal: http://{}/  (REST under /api/v1, /metrics, /healthz)", http[0]);
    if !a.no_agent {
        println!("  agent: http://127.0.0.1:{}/api/v1/local", a.agent_port);
    }
    println!("Try: huatuo objects   |   huatuo status   |   huatuo watch");
    println!("Ctrl-C stops everything.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let exited = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
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
