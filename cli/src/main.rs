//! The `huatuo` binary: one executable for the agent, the master, the local dev cluster and every operator
//! command. Each subcommand lives in its own module; this file only parses arguments and dispatches.

mod agent_cmd;
mod analyze_cmd;
mod bench_agent;
mod bench_common;
mod bench_e2e;
mod bench_fleet;
mod bench_heartbeats;
mod bench_list;
mod bench_master;
mod bench_netvote;
mod bench_rollout;
mod bench_windows;
mod catalog_cmd;
mod context;
mod dev_cmd;
mod export_cmd;
mod fsm_cmd;
mod hw_cmd;
mod inspect_cmd;
mod kernel_log_cmd;
mod master_cmd;
mod meta_cmd;
mod net_cmd;
mod objects_out;
mod ops_cmd;
mod output;
mod pages;
mod predict_cmd;
mod safety_cmd;
mod ticket_cmd;
mod upgrade_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc for every role of this binary. Measured with `huatuo bench master
/// --seconds 15 --kills 0` (release, 32 agents x 500-finding batches, 3 members with fsync on this 2-core
/// machine): glibc 55,420 committed findings/s (malloc/free about a third of the leader's Raft thread in
/// `perf`: findings are allocated on API threads and freed on the Raft thread), mimalloc 67,636/s (jemalloc
/// 67,682/s; mimalloc builds faster). The slim `huatuo-agent` keeps glibc (its `malloc_trim` is measured).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process and what it starts (`PR_SET_THP_DISABLE`, kept across
/// fork and exec), unless `MIMALLOC_ALLOW_THP` is set (then mimalloc's own choice stands). mimalloc marks its
/// arenas `MADV_HUGEPAGE`, so even where the kernel gives huge pages only on request (`madvise`, the common
/// default; `always` on some distributions) every fresh 2 MiB of them is zeroed in the fault, and mimalloc
/// hands memory back and takes it again all the time. On this project's virtual machines such a fault costs
/// milliseconds: `huatuo bench master --agents 500 --batch 1` saw 146-179 of them per 8 s, `perf` put
/// `clear_page_erms` under them at 7-10% of the machine, and without them the same cluster committed 4-12%
/// more single and 27-62% more batched findings/s in alternating runs (ARCHITECTURE.md, "Huge pages off").
/// Databases that serve many small writes (Redis, MongoDB) ask for the same. Best effort: a kernel that does
/// not know the call changes nothing.
fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // The flag is the process's (its memory map's), whatever thread sets it. Its error is not reported: it
    // only comes from a kernel without the call (before 3.15), where there is nothing to turn off, and this
    // runs before logging is set up, for every command.
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// The exit statuses every command keeps (issue 19), shown by `huatuo --help`.
const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  ok
  1  error: bad arguments or config, no master answered (within 2 s, or --wait), the request failed
  2  needs a human: `inspect` found something, `force` was held by the safety net,
     `check smart` graded a disk ERROR or FATAL
  3  `watch`: the start revision was compacted (resync from a listing); `check smart`: a disk is UNKNOWN
  4  `check smart`: no input gave any data
  (`fsm check`: 1 a divergence, 2 a malformed or unreadable transcript)

Listings take -o table|wide|json|yaml. Commands that talk to the masters fail within 2 s when none
answers; --wait [DURATION] blocks until one does (default 5m).";

#[derive(Parser)]
#[command(
    name = "huatuo",
    version = meta_cmd::LONG_VERSION,
    about = "Huatuo, the cluster doctor: finds hardware and OS faults, \
describes each faulty object with a state machine, and drives repair",
    after_help = EXIT_STATUS_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the per-host agent daemon.
    Agent(agent_cmd::AgentArgs),
    /// Run one master node.
    Master(master_cmd::MasterArgs),
    /// Run everything on this machine: a 3-node master, an agent checking this host, the portal.
    Dev(dev_cmd::DevArgs),
    /// Run a checker once and print its findings as JSON lines.
    #[command(subcommand)]
    Check(CheckCmd),
    /// Report a finding to the master (operators and external detectors).
    Report(ops_cmd::ReportArgs),
    /// Watch object changes from a revision, as JSON lines.
    Watch(ops_cmd::WatchArgs),
    /// List objects.
    Objects(ops_cmd::ObjectsArgs),
    /// Show one object with its history.
    Object(ops_cmd::ObjectArgs),
    /// Cluster info: members, leader, term, indexes, revision, level.
    Status(ops_cmd::StatusArgs),
    /// Show scopes with their level and quota use, or set a scope's level (auto, manual, blind).
    Level(safety_cmd::LevelArgs),
    /// Transitions held by manual drive or a quota, waiting for an operator.
    Proposals(safety_cmd::ProposalsArgs),
    /// Approve proposals (by number, or every pending one matching a filter).
    Approve(safety_cmd::DecideArgs),
    /// Reject proposals (by number, or every pending one matching a filter).
    Reject(safety_cmd::DecideArgs),
    /// Return a latched or manual scope to automatic drive.
    Release(safety_cmd::ReleaseArgs),
    /// Show the quota rules, or replace the safety config from a file.
    Quotas(safety_cmd::QuotasArgs),
    /// Move an object along one legal edge by hand, with a reason (false alarms, manual repairs).
    Force(safety_cmd::ForceArgs),
    /// Stand in for a subscriber's acknowledgement (drained, data-evacuated), with a reason.
    Consent(safety_cmd::ConsentArgs),
    /// Rolling upgrades of the masters: show which command versions each member knows, or enable new
    /// command kinds cluster-wide (--min-command-version N) once every member runs a binary that knows them.
    Upgrade(upgrade_cmd::UpgradeArgs),
    /// The archive for analytics: transitions, findings, disk days, objects and tickets as Parquet or CSV
    /// files partitioned by day (deploy/analytics/SCHEMA.md).
    Export(export_cmd::ExportArgs),
    /// Repair tickets: list them, record updates from the repair system.
    #[command(subcommand)]
    Ticket(ticket_cmd::TicketCmd),
    /// The checker catalog: push artifacts (external checkers, rule sets, profiles), list and show them.
    #[command(subcommand)]
    Catalog(catalog_cmd::CatalogCmd),
    /// Gray release of catalog versions: start, status, widen, pause, resume, promote, rollback.
    #[command(subcommand)]
    Rollout(catalog_cmd::RolloutCmd),
    /// Network fault localisation (issue 16): suspects, the rack-to-rack matrix, paths between two hosts.
    #[command(subcommand)]
    Net(net_cmd::NetCmd),
    /// The daily inspection report (exit 2 when something needs a human; --json for machines).
    Inspect(inspect_cmd::InspectArgs),
    /// The disk-failure predictor, offline: train a model from drive-days, evaluate it on held-out ones.
    #[command(subcommand)]
    Predict(predict_cmd::PredictCmd),
    /// Offline analyses of a `huatuo export` directory.
    #[command(subcommand)]
    Analyze(analyze_cmd::AnalyzeCmd),
    /// State machines: diagrams and transcript checks.
    #[command(subcommand)]
    Fsm(fsm_cmd::FsmCmd),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The version, git revision, built-in checkers and embedded rule sets of this binary.
    Version(meta_cmd::VersionArgs),
    /// Print a shell completion script: `huatuo completions bash > /etc/bash_completion.d/huatuo`.
    Completions(meta_cmd::CompletionsArgs),
    /// Write the man pages (huatuo.1, huatuo-COMMAND.1, ...) into a directory (for packaging).
    #[command(hide = true)]
    GenerateMan(meta_cmd::GenerateManArgs),
}

#[derive(Subcommand)]
enum CheckCmd {
    /// Kernel log rules over /dev/kmsg or a log file.
    KernelLog(kernel_log_cmd::KernelLogArgs),
    /// Grade disks from smartctl JSON files or a live scan.
    Smart(hw_cmd::SmartArgs),
    /// Run every host checker against this host or a recorded /proc + /sys tree.
    Host(hw_cmd::HostArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Kernel-log rule matching throughput.
    Rules(kernel_log_cmd::BenchRulesArgs),
    /// A 3-node master cluster driven by simulated agents.
    Master(bench_master::BenchMasterArgs),
    /// Agent resource use, idle and under a kernel-log storm.
    Agent(bench_agent::BenchAgentArgs),
    /// Kernel fault line -> SDK subscriber latency through a real agent and 3-node master.
    E2e(bench_e2e::BenchE2eArgs),
    /// A checker release reaching N simulated agents through a real 3-node master (issue 15).
    Rollout(bench_rollout::BenchRolloutArgs),
    /// Paginated listings of a big fleet: time per page and the leader's RSS (issue 17).
    List(bench_list::BenchListArgs),
    /// The master's heartbeat path: first beats, steady beats, first beats to a new leader (issue 17).
    Heartbeats(bench_heartbeats::BenchHeartbeatsArgs),
    /// What a safety-net removal costs one member's state machine as the windows fill, command version
    /// 10 (lists) against 11 (rows) (issue 17).
    Windows(bench_windows::BenchWindowsArgs),
    /// A fleet of simulated agents (multiplexed) against a real 3-node master: registration, steady
    /// heartbeats and findings, a watcher, kills, throughput, lost acks (issue 17).
    Fleet(bench_fleet::BenchFleetArgs),
    /// Network fault localisation accuracy on a seeded 10,000-host Clos simulation (issue 16).
    Netvote(bench_netvote::BenchNetvoteArgs),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Agent(a) => agent_cmd::run(a),
        Cmd::Master(a) => master_cmd::run(a),
        Cmd::Dev(a) => dev_cmd::run(a),
        Cmd::Check(CheckCmd::KernelLog(a)) => kernel_log_cmd::run(a),
        Cmd::Check(CheckCmd::Smart(a)) => hw_cmd::run_smart(a),
        Cmd::Check(CheckCmd::Host(a)) => hw_cmd::run_host(a),
        Cmd::Report(a) => ops_cmd::report(a),
        Cmd::Watch(a) => ops_cmd::watch(a),
        Cmd::Objects(a) => ops_cmd::objects(a),
        Cmd::Object(a) => ops_cmd::object(a),
        Cmd::Status(a) => ops_cmd::status(a),
        Cmd::Level(a) => safety_cmd::level(a),
        Cmd::Proposals(a) => safety_cmd::proposals(a),
        Cmd::Approve(a) => safety_cmd::decide(a, true),
        Cmd::Reject(a) => safety_cmd::decide(a, false),
        Cmd::Release(a) => safety_cmd::release(a),
        Cmd::Quotas(a) => safety_cmd::quotas(a),
        Cmd::Force(a) => safety_cmd::force(a),
        Cmd::Consent(a) => safety_cmd::consent(a),
        Cmd::Ticket(c) => ticket_cmd::run(c),
        Cmd::Export(a) => export_cmd::run(a),
        Cmd::Catalog(c) => catalog_cmd::run_catalog(c),
        Cmd::Rollout(c) => catalog_cmd::run_rollout(c),
        Cmd::Upgrade(a) => upgrade_cmd::run(a),
        Cmd::Net(c) => net_cmd::run(c),
        Cmd::Inspect(a) => inspect_cmd::run(a),
        Cmd::Predict(c) => predict_cmd::run(c),
        Cmd::Analyze(c) => analyze_cmd::run(c),
        Cmd::Fsm(c) => fsm_cmd::run(c),
        Cmd::Bench(BenchCmd::Rules(a)) => kernel_log_cmd::bench(a),
        Cmd::Bench(BenchCmd::Master(a)) => bench_master::run(a),
        Cmd::Bench(BenchCmd::Agent(a)) => bench_agent::run(a),
        Cmd::Bench(BenchCmd::E2e(a)) => bench_e2e::run(a),
        Cmd::Bench(BenchCmd::Rollout(a)) => bench_rollout::run(a),
        Cmd::Bench(BenchCmd::List(a)) => bench_list::run(a),
        Cmd::Bench(BenchCmd::Heartbeats(a)) => bench_heartbeats::run(a),
        Cmd::Bench(BenchCmd::Windows(a)) => bench_windows::run(a),
        Cmd::Bench(BenchCmd::Fleet(a)) => bench_fleet::run(a),
        Cmd::Bench(BenchCmd::Netvote(a)) => bench_netvote::run(a),
        Cmd::Version(a) => meta_cmd::version(a),
        Cmd::Completions(a) => meta_cmd::completions(a),
        Cmd::GenerateMan(a) => meta_cmd::generate_man(a),
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    // Usage errors exit 1 (clap's own default is 2, which here means "needs a human").
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    // Most commands print with `println!`, which panics when a write to standard output fails: its reader
    // went away (`huatuo inspect | head`), or its file system is full. That panic is the same event as the
    // write errors below and ends the command the same way, without a panic's message and backtrace. Any
    // other panic, and any panic of another thread, is reported as before.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let main_thread = std::thread::current().name() == Some("main");
        if !main_thread || panic_message(info.payload()).is_none_or(|m| !m.starts_with(PRINT_FAILED)) {
            default_hook(info);
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(code)) => code,
        // The reader of the output went away (`huatuo objects | head`): it has what it wanted; like other
        // command-line tools, end quietly.
        Ok(Err(e)) if closed_output(&e) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("huatuo: error: {e:#}");
            ExitCode::from(1)
        }
        Err(p) => match panic_message(&*p).filter(|m| m.starts_with(PRINT_FAILED)) {
            Some(_) if stdout_closed() => ExitCode::SUCCESS,
            Some(m) => {
                eprintln!("huatuo: error: {m}");
                ExitCode::from(1)
            }
            None => std::panic::resume_unwind(p),
        },
    }
}

/// How `println!`'s panic on a failed write to standard output begins.
const PRINT_FAILED: &str = "failed printing to stdout";

/// A panic's message, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied())
}

/// Whether the error is a write to this process's standard output after its reader closed it: an EPIPE
/// in the error's chain, and standard output a pipe with no reader left (poll says POLLERR). An EPIPE
/// from anything else (a child's stdin, a socket) is still an error.
fn closed_output(e: &anyhow::Error) -> bool {
    let epipe = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    epipe && stdout_closed()
}

/// Whether standard output is a pipe with no reader left (poll says POLLERR).
fn stdout_closed() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&stdout), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLERR))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EPIPE while this process's standard output is still read (a child's stdin, a socket) stays an
    /// error; `paged_list_watch` covers the closed output itself.
    #[test]
    fn an_epipe_elsewhere_is_still_an_error() {
        let epipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!closed_output(&epipe.context("writing to smartctl's stdin")));
        assert!(!closed_output(&anyhow::anyhow!("no master answered")));
    }

    /// Every option and argument of every command says what it is for in `--help` (and the man pages made
    /// from it). Several had nothing to say until session 32.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() && arg.get_long_help().is_none()
                {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&<Cli as clap::CommandFactory>::command(), "huatuo", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }
}
