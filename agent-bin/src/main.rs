//! `huatuo-agent`: the slim agent binary (the packaged agent). It runs exactly what `huatuo agent` runs
//! (`agent::run::run`) and links only the agent's crates (agent, checkers, proto, state-machines), so the
//! pages of its executable that a host keeps resident carry no master, portal, Raft or certificate code.
//! It runs on a current-thread tokio runtime: the agent's async work is a handful of mostly idle tasks
//! (scheduler loops, sink, reporter, local HTTP), while checkers and outbox commits run on blocking
//! threads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Blocking threads the runtime may start (checker runs, outbox commits, the worker's actions). Each
/// checker holds at most one (a hung run is never overlapped), so this bounds threads, not throughput;
/// idle ones exit after tokio's keep-alive (10 s).
const MAX_BLOCKING_THREADS: usize = 16;
/// Longest argument accepted (a config path): bad input gets an error, not a huge allocation echo.
const MAX_ARG_LEN: usize = 4096;

const USAGE: &str = "usage: huatuo-agent [--config PATH] [--check-config] [--insecure]

  --config PATH     the agent's TOML config (default /etc/huatuo/agent.toml)
  --check-config    validate the config and exit: 0 when valid, 1 with the reason when not
  --insecure        talk to the masters without TLS and token (tests and experiments only)
  -h, --help        this text
  -V, --version     print the version

exit status: 0 ok; 1 an error (a bad argument or config, the agent failed), as `huatuo` does";

#[derive(Debug, PartialEq, Eq)]
struct Args {
    config: PathBuf,
    check_config: bool,
    insecure: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Args),
    Help,
    Version,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut a =
        Args { config: PathBuf::from("/etc/huatuo/agent.toml"), check_config: false, insecure: false };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg.len() > MAX_ARG_LEN {
            return Err(format!("argument longer than {MAX_ARG_LEN} bytes"));
        }
        match arg.as_str() {
            "--config" => match it.next() {
                Some(p) if !p.is_empty() && p.len() <= MAX_ARG_LEN => a.config = PathBuf::from(p),
                _ => return Err("--config needs a path".into()),
            },
            s if s.starts_with("--config=") && s.len() > "--config=".len() => {
                a.config = PathBuf::from(&s["--config=".len()..]);
            }
            "--check-config" => a.check_config = true,
            "--insecure" => a.insecure = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Parsed::Run(a))
}

fn run(a: Args) -> anyhow::Result<()> {
    let mut cfg = agent::config::AgentConfig::load(&a.config)?;
    cfg.insecure |= a.insecure;
    if a.check_config {
        cfg.client_security()?;
        println!("{}: ok", a.config.display());
        return Ok(());
    }
    // A second subscriber can only exist if something set one up before; nothing here does.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tx.send_replace(true);
        });
        agent::run::run(cfg, rx).await
    })
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Version) => {
            println!("huatuo-agent {} (git {})", agent::run::AGENT_VERSION, env!("HUATUO_GIT_REV"));
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(a)) => match run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("huatuo-agent: error: {e:#}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            // 1, like every other error: the huatuo binaries keep 2 for "needs a human".
            eprintln!("huatuo-agent: {e}\n{USAGE}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_are_parsed() {
        let want = Args { config: PathBuf::from("/x.toml"), check_config: true, insecure: true };
        assert_eq!(p(&["--config", "/x.toml", "--check-config", "--insecure"]), Ok(Parsed::Run(want)));
        let Ok(Parsed::Run(a)) = p(&["--config=/y.toml"]) else { panic!() };
        assert_eq!(a.config, PathBuf::from("/y.toml"));
        let Ok(Parsed::Run(a)) = p(&[]) else { panic!() };
        assert_eq!(a.config, PathBuf::from("/etc/huatuo/agent.toml"));
        assert_eq!(p(&["-h"]), Ok(Parsed::Help));
        assert_eq!(p(&["--version"]), Ok(Parsed::Version));
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        assert_eq!(p(&["--config"]), Err("--config needs a path".into()));
        assert_eq!(p(&["--config", ""]), Err("--config needs a path".into()));
        assert_eq!(p(&["--bogus"]), Err("unexpected argument \"--bogus\"".into()));
        assert!(p(&[&"x".repeat(MAX_ARG_LEN + 1)]).unwrap_err().contains("longer than"));
    }
}
