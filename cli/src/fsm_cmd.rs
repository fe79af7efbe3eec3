//! `huatuo fsm ...`: state diagrams printed from the tables the code runs, and transcript checks (the runner
//! lives in `state_machines::transcript`, shared with the crate's tests).

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use state_machines::transcript::{self, CheckError, MAX_TRANSCRIPT_BYTES};
use state_machines::{Kind, diagram, state_machine_for};

#[derive(clap::Subcommand)]
pub enum FsmCmd {
    /// Print a state diagram generated from the tables the code runs (Mermaid stateDiagram-v2 by default).
    Show {
        /// disk, machine, dimm or nic
        kind: String,
        /// Print Graphviz dot instead of Mermaid.
        #[arg(long)]
        dot: bool,
    },
    /// Replay transcript files; report the first divergence with its line number.
    /// Exit 0: all match; 1: a divergence; 2: a malformed or unreadable file.
    Check {
        /// Transcript files (see state-machines/README.md for the format).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

pub fn run(cmd: FsmCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        FsmCmd::Show { kind, dot } => {
            let k: Kind = kind.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let Some(m) = state_machine_for(k) else {
                bail!("{k} objects have no state machine (their findings are recorded only)");
            };
            print!("{}", if dot { diagram::dot(m) } else { diagram::mermaid(m) });
            Ok(ExitCode::SUCCESS)
        }
        FsmCmd::Check { files } => {
            let mut worst = 0u8;
            for path in &files {
                let code = check_file(path);
                worst = worst.max(code);
            }
            Ok(ExitCode::from(worst))
        }
    }
}

/// Check one file; print the verdict; return its exit code (0 ok, 1 divergence, 2 malformed/unreadable).
fn check_file(path: &std::path::Path) -> u8 {
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e:#}", path.display());
            return 2;
        }
    };
    match transcript::check(&text) {
        Ok(r) => {
            println!(
                "{}: ok ({} inputs, {} expectations, {} edges)",
                path.display(),
                r.steps,
                r.expectations,
                r.edges.len()
            );
            0
        }
        Err(CheckError::Diverged(d)) => {
            println!("{}:{}: divergence: {}", path.display(), d.line, d.message);
            1
        }
        Err(CheckError::Malformed(e)) => {
            eprintln!("{}:{}: malformed transcript: {}", path.display(), e.line, e.message);
            2
        }
    }
}

fn read_bounded(path: &std::path::Path) -> anyhow::Result<String> {
    let f = std::fs::File::open(path).context("cannot open")?;
    let mut buf = Vec::new();
    f.take(MAX_TRANSCRIPT_BYTES as u64 + 1).read_to_end(&mut buf).context("cannot read")?;
    if buf.len() > MAX_TRANSCRIPT_BYTES {
        bail!("larger than {MAX_TRANSCRIPT_BYTES} bytes");
    }
    String::from_utf8(buf).context("not UTF-8 text")
}
