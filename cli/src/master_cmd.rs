//! `huatuo master`: run one master node from flags or a TOML config file until SIGINT/SIGTERM. TLS and
//! tokens come from the config file (`[tls]`, `[[auth.tokens]]`); without them the master refuses to start
//! unless `--insecure` says to run open (tests and experiments).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use master::config::{MasterConfig, parse_peers};

#[derive(Args, Debug)]
pub struct MasterArgs {
    /// TOML config file with the same settings (see master/testdata/master.toml); excludes the flags below
    /// except --join.
    #[arg(long, conflicts_with_all = ["id", "peers", "grpc", "http", "peer_listen", "data_dir"])]
    config: Option<PathBuf>,
    /// This node's id (a key of --peers).
    #[arg(long, required_unless_present_any = ["config", "verify", "compact"])]
    id: Option<u64>,
    /// Raft peers, this node included: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT (peer port, default 7710).
    #[arg(long, required_unless_present_any = ["config", "verify", "compact"])]
    peers: Option<String>,
    /// gRPC API listen address (agents, SDK, CLI).
    #[arg(long)]
    grpc: Option<String>,
    /// HTTP listen address (REST under /api/v1, /metrics, /healthz).
    #[arg(long)]
    http: Option<String>,
    /// Raft peer listen address (default: 0.0.0.0 and the port of this node's --peers entry).
    #[arg(long)]
    peer_listen: Option<String>,
    /// Data directory (Raft log and state, one redb file).
    #[arg(long, required_unless_present = "config")]
    data_dir: Option<PathBuf>,
    /// Start with an empty data dir as a new member of an existing cluster (only when this node's old data is
    /// definitely gone).
    #[arg(long)]
    join: bool,
    /// Run without TLS and token checks (tests and experiments only; logs a loud warning).
    #[arg(long)]
    insecure: bool,
    /// Check the data dir (from --data-dir or --config) and exit instead of starting: redb's integrity check
    /// plus every Raft record's checksum, the same checks every start runs. Exit 0 if sound, 1 if damaged
    /// (then rebuild the node with --join). The node must be stopped.
    #[arg(long)]
    verify: bool,
    /// Give back the free pages the data dir's database file keeps (it grows to up to twice what it holds,
    /// see ARCHITECTURE.md) and exit: the --verify checks, redb's compaction, the checks again. Exit 0 and
    /// the sizes before and after, 1 if the store is damaged (nothing is compacted). The node must be stopped.
    #[arg(long, conflicts_with = "verify")]
    compact: bool,
    /// Check the configuration (flags or --config, with the `[topology]` file it names) and exit instead of
    /// starting: 0 and a summary if valid, an error saying what is wrong otherwise.
    #[arg(long, conflicts_with_all = ["verify", "compact"])]
    check_config: bool,
}

fn config(a: MasterArgs) -> anyhow::Result<MasterConfig> {
    if let Some(path) = &a.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut cfg = MasterConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
        cfg.join |= a.join;
        cfg.insecure |= a.insecure;
        return Ok(cfg);
    }
    let (Some(id), Some(peers), Some(data_dir)) = (a.id, a.peers, a.data_dir) else {
        bail!("--id, --peers and --data-dir are required without --config");
    };
    let mut toml = toml::Table::new();
    toml.insert("id".into(), toml::Value::Integer(i64::try_from(id).context("--id is too large")?));
    toml.insert("data_dir".into(), toml::Value::String(data_dir.display().to_string()));
    toml.insert("join".into(), toml::Value::Boolean(a.join));
    toml.insert("insecure".into(), toml::Value::Boolean(a.insecure));
    let peers: toml::Table =
        parse_peers(&peers)?.into_iter().map(|(k, v)| (k, toml::Value::String(v))).collect();
    toml.insert("peers".into(), toml::Value::Table(peers));
    for (k, v) in [("grpc", a.grpc), ("http", a.http), ("peer_listen", a.peer_listen)] {
        if let Some(v) = v {
            toml.insert(k.into(), toml::Value::String(v));
        }
    }
    Ok(MasterConfig::from_toml(&toml.to_string())?)
}

/// The data dir of `--verify` and `--compact`: from --config, else --data-dir.
fn data_dir_of(a: &MasterArgs, flag: &str) -> anyhow::Result<PathBuf> {
    Ok(match (&a.config, &a.data_dir) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            MasterConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?.data_dir
        }
        (None, Some(d)) => d.clone(),
        (None, None) => bail!("{flag} needs --data-dir or --config"),
    })
}

/// `--compact`: the free pages of the data dir's database file given back, between two runs of the checks.
fn compact(a: &MasterArgs) -> anyhow::Result<ExitCode> {
    const MIB: f64 = 1024.0 * 1024.0;
    let dir = data_dir_of(a, "--compact")?;
    match master::raft::compact_data_dir(&dir) {
        Ok(r) => {
            let (b, f) = (r.before.file_bytes, r.after.file_bytes);
            println!(
                "{}: compacted in {} passes, {:.1} s: {:.1} MiB -> {:.1} MiB ({:.1} MiB given back); sound \
                 before and after",
                r.after.path.display(),
                r.passes,
                r.took_ms as f64 / 1000.0,
                b as f64 / MIB,
                f as f64 / MIB,
                b.saturating_sub(f) as f64 / MIB
            );
            if r.more_possible {
                println!(
                    "  stopped after {} passes while pages were still moving: run --compact again",
                    master::raft::MAX_COMPACT_PASSES
                );
            }
            print_usage(&r.after);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `--verify`: the start-up checks on the data dir, without starting.
fn verify(a: &MasterArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir_of(a, "--verify")?;
    match master::raft::verify_data_dir(&dir) {
        Ok(r) => {
            println!("{}: sound", r.path.display());
            println!(
                "  node {} term {} commit {} applied {}; the log starts after {}",
                r.node_id.map_or_else(|| "(none: empty store)".to_string(), |id| id.to_string()),
                r.term,
                r.commit_index,
                r.applied_index,
                r.snapshot_index,
            );
            println!("  log: {} entries, {} bytes; file: {} bytes", r.log_entries, r.log_bytes, r.file_bytes);
            match &r.snapshot_file {
                Some(f) => println!(
                    "  snapshot file: snapshots/{f}, {} bytes (every chunk verified)",
                    r.snapshot_bytes
                ),
                None => println!("  no snapshot file kept (one is built when a follower needs it)"),
            }
            if r.snapshot_migrated {
                println!("  snapshot kept in the database by an older binary: moved into a file");
            }
            if r.upgraded {
                println!("  written before checksums: every record was sealed in place");
            }
            println!("  state machine: {} records, {} bytes verified", r.fsm_records, r.fsm_bytes);
            if r.fsm_upgraded {
                println!("  state machine written before checksums: every record was sealed in place");
            }
            if r.fsm_resealed > 0 {
                println!(
                    "  state machine: {} records sealed before keys were covered, resealed with their keys",
                    r.fsm_resealed
                );
            }
            if r.fsm_recounted > 0 {
                println!(
                    "  state machine written before the replicated counters: {} objects counted once",
                    r.fsm_recounted
                );
            }
            print_usage(&r);
            if let Some(hint) = compact_hint(r.file_bytes, r.usage.allocated_bytes) {
                println!("  {hint}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `--verify` suggests `--compact` when at least this much of the file, and a quarter of it, is free pages.
const COMPACT_HINT_BYTES: u64 = 64 << 20;

/// What `--verify` says of a file of `file_bytes` with `allocated_bytes` in use, if it is worth compacting.
fn compact_hint(file_bytes: u64, allocated_bytes: u64) -> Option<String> {
    let free = file_bytes.saturating_sub(allocated_bytes);
    (free >= COMPACT_HINT_BYTES && free.saturating_mul(4) >= file_bytes).then(|| {
        format!(
            "{:.1} MiB of the file is free pages: `huatuo master --compact` gives them back (node stopped)",
            free as f64 / (1024.0 * 1024.0)
        )
    })
}

/// Where the file's bytes go: pages in use against the file, then each table (largest first).
fn print_usage(r: &master::raft::VerifyReport) {
    const MIB: f64 = 1024.0 * 1024.0;
    let u = &r.usage;
    println!(
        "  storage: {:.1} MiB in use of a {:.1} MiB file ({:.1} MiB free pages kept), {:.1} MiB of keys and values",
        u.allocated_bytes as f64 / MIB,
        r.file_bytes as f64 / MIB,
        r.file_bytes.saturating_sub(u.allocated_bytes) as f64 / MIB,
        u.stored_bytes as f64 / MIB
    );
    for t in &u.tables {
        println!(
            "    {:<24} {:>12} entries {:>10.1} MiB stored {:>10.1} MiB in pages ({:.1} MiB unused)",
            t.name,
            t.entries,
            t.stored_bytes as f64 / MIB,
            t.page_bytes as f64 / MIB,
            t.fragmented_bytes as f64 / MIB
        );
    }
}

/// How long a stopping master waits for blocking reads still running (index builds) once it stopped serving.
const LEFTOVER_READS_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn run(a: MasterArgs) -> anyhow::Result<ExitCode> {
    if a.verify {
        return verify(&a);
    }
    if a.compact {
        return compact(&a);
    }
    let check = a.check_config;
    let resolved = config(a)?.resolve()?;
    if check {
        let topo = match &resolved.net.topology {
            Some(t) => format!(
                "{} hosts, {} switches, {} switch links (file {}, sha256 {}; used only while the cluster has \
                 no replicated topology: see huatuo net topology show)",
                t.host_count(),
                t.switches().len(),
                t.link_count(),
                resolved.net.topology_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                resolved.net.topology_sha256
            ),
            None => {
                "the replicated one if set (huatuo net topology show), else the machines' switch/rack labels"
                    .to_string()
            }
        };
        println!(
            "config ok: node {} of {} peers; net window {} s, clear after {} windows; topology: {topo}",
            resolved.id,
            resolved.peers.len(),
            resolved.net.window.as_secs(),
            resolved.net.clear_windows
        );
        return Ok(ExitCode::SUCCESS);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let served = rt.block_on(async move {
        let signalled = proto::shutdown::on_signal().context("cannot watch for SIGINT/SIGTERM")?;
        master::server::run(resolved, signalled).await
    });
    // The server stopped in order (Raft, archive). What may still run on the blocking pool is a read: an
    // index build is a pass over every object (tens of seconds at 1.5 M), not worth waiting for at exit.
    rt.shutdown_timeout(LEFTOVER_READS_AT_EXIT);
    // Index builds and catch-ups run on threads of their own, at a lower priority: the same bound.
    master::follow::wait_background(LEFTOVER_READS_AT_EXIT);
    served?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_suggests_compacting_only_a_file_with_many_free_pages() {
        const MIB: u64 = 1 << 20;
        // Run P's member 3 (session 21): 2,880 MiB with 1,781 in use.
        let hint = compact_hint(2_880 * MIB, 1_781 * MIB).expect("a hint");
        assert!(
            hint.starts_with("1099.0 MiB of the file is free pages") && hint.contains("--compact"),
            "{hint}"
        );
        // Free pages under a quarter of the file, or under 64 MiB: nothing worth a stop.
        assert_eq!(compact_hint(2_016 * MIB, 1_692 * MIB), None);
        assert_eq!(compact_hint(100 * MIB, 40 * MIB), None);
        assert!(compact_hint(256 * MIB, 192 * MIB).is_some(), "64 MiB and a quarter");
        assert_eq!(compact_hint(MIB, 2 * MIB), None, "more in use than the file says: no hint, no underflow");
    }
}
