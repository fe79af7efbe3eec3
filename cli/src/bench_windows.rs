//! `huatuo bench windows`: what a safety-net removal costs the state machine as its sliding windows fill
//! (issue 17). One member's state machine in a temp dir (redb, each entry applied in its own transaction and
//! committed with fsync, as the Raft loop does for an entry alone), `--removals` disks (and as many more for
//! the findings after) registered 12 to a host, 40 hosts to a rack, quotas open and the spike detector out
//! of reach, then one removal per entry: an error finding of one checker version about a disk not yet
//! removed, 10 ms apart, all within the windows. Each removal adds to the cluster's, its rack's and the
//! checker version's windows. Run at command version 10 (windows as lists inside the scope records) and 11
//! (rows, `master/src/fsm/windows.rs`), one after the other; prints the median ms per entry for each block
//! of removals, then the median of findings that remove nothing after the burst (they still read and
//! write the scope records).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use master::model::{Command, Envelope, Registration, WINDOW_ROWS_VERSION};
use master::safety::{Limit, QuotaRule, SafetyConfig, SpikeRule};
use master::sm_seam::Policy;
use state_machines::{Finding, ObjectId, Severity};

#[derive(Args, Debug)]
pub struct BenchWindowsArgs {
    /// Removals, one per entry (the windows hold at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    removals: u32,
    /// Removals per reported block.
    #[arg(long, default_value_t = 1_000)]
    block: u32,
    /// Findings that remove nothing, one per entry, after the removals.
    #[arg(long, default_value_t = 500)]
    after: u32,
    /// Only this command version (10: lists, 11: rows); both by default.
    #[arg(long)]
    version: Option<u32>,
    /// Where the temporary state goes (default: the system's temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Most removals one run makes (the windows' cap is 10,000; more only repeats the last block).
const MAX_REMOVALS: u32 = 100_000;
const DISKS_PER_HOST: u32 = 12;
const HOSTS_PER_RACK: u32 = 40;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One state machine on a fresh redb file; applies entries one per committed transaction.
struct Member {
    _dir: tempfile::TempDir,
    db: redb::Database,
    fsm: master::fsm::MasterFsm,
    index: u64,
}

impl Member {
    fn new(dir: Option<&std::path::Path>) -> anyhow::Result<Member> {
        let dir = match dir {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .context("temp dir")?;
        let db = redb::Database::create(dir.path().join("fsm.redb")).context("create redb")?;
        let (fsm, _) = master::fsm::MasterFsm::new(Policy::default());
        Ok(Member { _dir: dir, db, fsm, index: 0 })
    }

    /// Apply one entry in its own transaction and commit it; returns the seconds it took.
    fn apply(&mut self, now_ms: u64, cmds: Vec<Command>) -> anyhow::Result<f64> {
        let bytes = Envelope::new(now_ms, cmds).encode_binary();
        let t = Instant::now();
        let txn = self.db.begin_write().context("begin")?;
        self.index += 1;
        self.fsm.apply_entry(&txn, self.index, &bytes).context("apply")?;
        txn.commit().context("commit")?;
        Ok(t.elapsed().as_secs_f64())
    }
}

fn disk(i: u32) -> (String, ObjectId) {
    let host = format!("h{:06}", i / DISKS_PER_HOST);
    let id = format!("disk/{host}/sd{}", i % DISKS_PER_HOST).parse().expect("disk id");
    (host, id)
}

fn finding(object: ObjectId, severity: Severity, time_ms: u64) -> Finding {
    Finding {
        object,
        severity,
        checker: "bench-windows".into(),
        version: "1.0".into(),
        rule: "bench.removal".into(),
        evidence: "a bench finding".into(),
        readings: BTreeMap::new(),
        time_ms,
        shadow: false,
    }
}

/// Run one version; returns (median ms per removal entry per block, median ms per finding after).
fn run_version(args: &BenchWindowsArgs, version: u32) -> anyhow::Result<(Vec<f64>, f64, u64)> {
    let mut m = Member::new(args.dir.as_deref())?;
    let mut now = 1_800_000_000_000u64;
    let set = Command::SetMinCommandVersion { version, by: "bench".into(), reason: "bench windows".into() };
    m.apply(now, vec![set])?;
    let open = |kind: &str, scope: &str| QuotaRule {
        kind: kind.into(),
        scope: scope.into(),
        window_ms: 3_600_000,
        max_entries: Limit::Percent(10_000),
        max_concurrent: Limit::Percent(10_000),
    };
    let config = SafetyConfig {
        quotas: vec![open("disk", "cluster"), open("disk", "rack")],
        spike: SpikeRule { window_ms: 3_600_000, min: u64::MAX, share: Limit::Percent(10_000) },
        ..SafetyConfig::default()
    };
    m.apply(now, vec![Command::SetSafety { config, by: "bench".into(), reason: "quotas open".into() }])?;
    let disks = args.removals + args.after;
    let hosts = disks.div_ceil(DISKS_PER_HOST);
    for first in (0..hosts).step_by(100) {
        let cmds = (first..(first + 100).min(hosts))
            .map(|h| {
                let host = format!("h{h:06}");
                let labels: BTreeMap<String, String> =
                    [("rack".to_string(), format!("r{}", h / HOSTS_PER_RACK))].into();
                let objects = (0..DISKS_PER_HOST)
                    .map(|d| Registration {
                        id: disk(h * DISKS_PER_HOST + d).1,
                        attributes: BTreeMap::new(),
                        labels: labels.clone(),
                    })
                    .collect();
                Command::Register { agent: format!("agent-{host}"), host, objects }
            })
            .collect();
        m.apply(now, cmds)?;
    }
    let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
    let mut ingest = |i: u32, severity: Severity, now: u64| {
        let (host, id) = disk(i);
        let agent = format!("agent-{host}");
        let seq = seqs.entry(agent.clone()).or_default();
        *seq += 1;
        Command::Ingest { agent, seq: *seq, findings: vec![finding(id, severity, now)], epoch: 0 }
    };
    let mut blocks = Vec::new();
    let mut times = Vec::with_capacity(args.block as usize);
    for i in 0..args.removals {
        now += 10;
        times.push(m.apply(now, vec![ingest(i, Severity::Error, now)])? * 1e3);
        if times.len() == args.block as usize || i + 1 == args.removals {
            blocks.push(median(&mut times));
            times.clear();
        }
    }
    let mut after = Vec::with_capacity(args.after as usize);
    for i in args.removals..disks {
        now += 10;
        after.push(m.apply(now, vec![ingest(i, Severity::Warning, now)])? * 1e3);
    }
    let removed = master::store::Reader::new(&m.db)?
        .counts(&master::fsm::counts::fleet_key("disk", "ERROR"))?
        .first()
        .map_or(0, |(_, n)| *n);
    Ok((blocks, median(&mut after), removed))
}

pub fn run(args: BenchWindowsArgs) -> anyhow::Result<ExitCode> {
    if args.removals == 0 || args.removals > MAX_REMOVALS || args.block == 0 {
        bail!("--removals must be 1..={MAX_REMOVALS} and --block at least 1");
    }
    let rows = WINDOW_ROWS_VERSION;
    let versions: Vec<u32> = match args.version {
        None => vec![rows - 1, rows],
        Some(v) if v == rows - 1 || v == rows => vec![v],
        Some(v) => bail!("--version must be {} (lists) or {rows} (rows), not {v}", rows - 1),
    };
    println!("{}", crate::bench_common::machine_line());
    println!(
        "bench windows: {} removals (one per entry, each its own fsync'd commit), {} findings after; blocks of {}",
        args.removals, args.after, args.block
    );
    let mut results = Vec::new();
    for v in versions {
        let (blocks, after, removed) = run_version(&args, v)?;
        if removed != u64::from(args.removals) {
            bail!("command version {v}: {removed} disks removed, {} expected", args.removals);
        }
        let how = if v >= rows { "rows" } else { "lists" };
        let line: Vec<String> = blocks.iter().map(|b| format!("{b:.3}")).collect();
        println!("version {v} ({how}): ms per removal entry, median per block: {}", line.join(" "));
        println!(
            "version {v} ({how}): ms per finding that removes nothing after the burst, median: {after:.3}"
        );
        results.push((v, blocks, after));
    }
    if let [(_, lists, la), (_, rows_b, ra)] = results.as_slice() {
        let last = |b: &Vec<f64>| b.last().copied().unwrap_or(0.0);
        println!(
            "last block: lists {:.3} ms, rows {:.3} ms ({:.1}x); after: lists {la:.3} ms, rows {ra:.3} ms",
            last(lists),
            last(rows_b),
            last(lists) / last(rows_b).max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}
