//! `huatuo agent`: run the per-host agent from its TOML config until SIGINT/SIGTERM, or only validate the
//! config (`--check-config`, run by the systemd unit before starting).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent's TOML config (see deploy/agent.example.toml).
    #[arg(long, default_value = "/etc/huatuo/agent.toml")]
    config: PathBuf,
    /// Validate the config and exit: 0 when it is valid, 1 with the reason when not.
    #[arg(long)]
    check_config: bool,
    /// Talk to the masters without TLS and token (tests and experiments only; logs a loud warning).
    #[arg(long)]
    insecure: bool,
}

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = agent::config::AgentConfig::load(&a.config)?;
    cfg.insecure |= a.insecure;
    if a.check_config {
        cfg.client_security()?;
        println!("{}: ok", a.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        // The agent is a guest on every host: two workers are plenty (checkers run on blocking threads).
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let stop = proto::shutdown::stop_flag().context("cannot watch for SIGINT/SIGTERM")?;
        agent::run::run(cfg, stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}
