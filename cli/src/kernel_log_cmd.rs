//! `huatuo check kernel-log` (kernel log rules over a log file or /dev/kmsg, findings as JSON lines,
//! streamed as lines are read, multi-line records grouped, repeats merged) and `huatuo bench rules`
//! (rule-matching throughput of the default and a 200-rule set, printed).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use checkers::kernel_log::scan::Merger;
use checkers::kernel_log::{
    self, CursorStore, Event, FileCursorStore, KmsgReader, RuleSet, Scanner, bench as kbench, parse,
};
use serde::Serialize;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "kmsg"])))]
pub struct KernelLogArgs {
    /// Log file to scan: dmesg (`[ secs]`, `-T`, iso), raw kmsg, syslog or `journalctl -k` output,
    /// detected per line. `-` reads stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Scan what /dev/kmsg holds now (non-blocking; exits when the ring buffer is drained).
    #[arg(long)]
    kmsg: bool,
    /// With --kmsg: keep the read position (seq + boot_id) in this file, so the next run resumes after it.
    #[arg(long, requires = "kmsg")]
    cursor: Option<PathBuf>,
    /// Host name used in object ids (default: this machine's hostname).
    #[arg(long)]
    host: Option<String>,
    /// Directory of rule files (*.toml) replacing the embedded default rules.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Year for syslog lines, which carry none (default: the current year).
    #[arg(long)]
    year: Option<i32>,
    /// Resolve names through sysfs below this root (ATA port / SCSI address -> block device, PCI address ->
    /// interface, dm-N -> its disks). Default: `/` with --kmsg; none with --file (a log from another
    /// machine must not be resolved against this one's sysfs).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Print every finding instead of merging repeats of the same condition (rule, object, severity)
    /// within 10 minutes of log time into the first one plus a summary with `repeats`.
    #[arg(long)]
    no_merge: bool,
}

#[derive(clap::Args)]
pub struct BenchRulesArgs {
    /// Lines in the generated corpus.
    #[arg(long, default_value_t = 1_000_000)]
    lines: usize,
    /// Timed runs per rule set (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Fault lines per thousand in the corpus.
    #[arg(long, default_value_t = 15)]
    fault_permille: u32,
    /// Size of the generated comparison rule set.
    #[arg(long, default_value_t = 200)]
    synthetic_rules: usize,
    /// Corpus seed (printed; the same seed gives the same corpus).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// One output line.
#[derive(Serialize)]
struct Out<'a> {
    object: String,
    kind: &'static str,
    severity: &'static str,
    rule: &'a str,
    checker: &'a str,
    version: &'a str,
    evidence: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    time: Option<String>,
    time_ms: u64,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    readings: &'a std::collections::BTreeMap<String, String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn load_rules(dir: Option<&Path>) -> anyhow::Result<Arc<RuleSet>> {
    let set = match dir {
        Some(d) => RuleSet::from_dir(d)?,
        None => RuleSet::default_rules()?,
    };
    Ok(Arc::new(set))
}

fn host_name(host: Option<String>) -> anyhow::Result<String> {
    match host {
        Some(h) => Ok(h),
        None => {
            let h = nix::unistd::gethostname().context("reading this machine's hostname")?;
            Ok(h.to_string_lossy().into_owned())
        }
    }
}

fn print_events(out: &mut impl Write, events: &[Event]) -> anyhow::Result<()> {
    for e in events {
        let f = &e.finding;
        let o = Out {
            object: f.object.to_string(),
            kind: f.object.kind().as_str(),
            severity: f.severity.as_str(),
            rule: &f.rule,
            checker: &f.checker,
            version: &f.version,
            evidence: &f.evidence,
            line: e.line,
            time: parse::format_log_time(e.log_time),
            time_ms: f.time_ms,
            readings: &f.readings,
        };
        serde_json::to_writer(&mut *out, &o)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Where findings go: merged (unless --no-merge), printed as JSON lines and flushed at once, so a pipe
/// reader sees them while the input is still open.
struct Sink<W: Write> {
    out: W,
    merger: Option<Merger>,
    buf: Vec<Event>,
    printed: u64,
}

impl<W: Write> Sink<W> {
    fn take(&mut self, events: &mut Vec<Event>) -> std::io::Result<()> {
        match &mut self.merger {
            Some(m) => {
                for e in events.drain(..) {
                    m.push(e, &mut self.buf);
                }
            }
            None => self.buf.append(events),
        }
        self.emit()
    }

    fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.printed += self.buf.len() as u64;
        print_events(&mut self.out, &self.buf).map_err(std::io::Error::other)?;
        self.buf.clear();
        self.out.flush()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if let Some(m) = &mut self.merger {
            m.finish(&mut self.buf);
        }
        self.emit()
    }
}

/// Peak resident set size of this process in KiB (`VmHWM` in /proc/self/status), if readable.
pub fn peak_rss_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn run(a: KernelLogArgs) -> anyhow::Result<ExitCode> {
    let rules = load_rules(a.rules.as_deref())?;
    let host = host_name(a.host)?;
    let now = now_ms();
    let year = a.year.unwrap_or_else(|| kernel_log::year_of(now));
    let mut scanner =
        Scanner::new(Arc::clone(&rules), &host, year).with_context(|| format!("host {host:?}"))?;
    scanner.set_fallback_ms(now);
    scanner.set_group_records(true);
    let root = match (&a.root, a.kmsg) {
        (Some(r), _) => Some(r.clone()),
        (None, true) => Some(PathBuf::from("/")),
        (None, false) => None,
    };
    if let Some(r) = &root
        && !r.is_dir()
    {
        anyhow::bail!("--root {}: not a directory", r.display());
    }
    scanner.set_root(root);
    let stdout = std::io::stdout();
    let mut sink = Sink {
        out: std::io::BufWriter::new(stdout.lock()),
        merger: (!a.no_merge).then(Merger::new),
        buf: Vec::new(),
        printed: 0,
    };
    if let Some(path) = a.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            let f = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                anyhow::bail!("cannot read {}: is a directory", path.display());
            }
            Box::new(BufReader::with_capacity(1 << 16, f))
        };
        scanner
            .scan_reader_each(reader, |events| sink.take(events))
            .with_context(|| format!("reading {}", path.display()))?;
    } else {
        scanner.set_boot_ms(boot_ms_now());
        let dev = Path::new("/dev/kmsg");
        let src = kernel_log::DevKmsg::open(dev).with_context(|| format!("cannot open {}", dev.display()))?;
        let boot_id = kernel_log::kmsg::read_boot_id(Path::new("/")).context("reading boot_id")?;
        let mut store = a.cursor.map(FileCursorStore::new);
        let cursor = match &mut store {
            Some(s) => s.load()?,
            None => None,
        };
        let mut reader = KmsgReader::new(src, &boot_id, cursor);
        let mut events = Vec::new();
        loop {
            let n = reader
                .poll(kernel_log::kmsg::MAX_RECORDS_PER_POLL, |rec| {
                    let first = rec.split(|&b| b == b'\n').next().unwrap_or_default();
                    scanner.feed(first, None, &mut events);
                })
                .context("reading /dev/kmsg")?;
            sink.take(&mut events)?;
            if n < kernel_log::kmsg::MAX_RECORDS_PER_POLL {
                break;
            }
        }
        scanner.flush(&mut events);
        sink.take(&mut events)?;
        if let (Some(s), Some(c)) = (&mut store, reader.cursor()) {
            s.save(&c)?;
        }
        let k = reader.stats();
        eprintln!(
            "kmsg: {} records, {} lost (EPIPE {}), {} already seen before",
            k.records, k.lost, k.epipe, k.replayed_skipped
        );
    }
    sink.finish()?;
    let s = scanner.stats();
    let merged = sink.merger.as_ref().map_or(0, |m| m.merged);
    eprintln!(
        "kernel-log: {} lines, {} findings ({} printed, {} repeats merged, {} multi-line records), {} non-kernel, \
         {} binary skipped, {} truncated, {} decoded as not a fault, peak RSS {} KiB, rules {}",
        s.lines,
        s.findings,
        sink.printed,
        merged,
        s.records,
        s.non_kernel,
        s.binary,
        s.truncated,
        s.decoded_away,
        peak_rss_kib().map_or_else(|| "?".to_string(), |k| k.to_string()),
        scanner.version()
    );
    Ok(ExitCode::SUCCESS)
}

/// Boot time in ms from /proc/stat (for giving kmsg findings a wall time).
fn boot_ms_now() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse::<u64>().ok()?.checked_mul(1000)
}

struct Figures {
    /// Lines per second of this thread's CPU time (user + system): what one core does, independent of how
    /// busy the machine is.
    lines_per_cpu_s: f64,
    mb_per_cpu_s: f64,
    /// Lines per second of wall time (lower on a shared machine).
    lines_per_wall_s: f64,
    findings: u64,
}

/// CPU time (user + system) used by the calling thread so far.
fn thread_cpu_secs() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

fn measure(rules: &Arc<RuleSet>, corpus: &[u8], runs: usize) -> anyhow::Result<Figures> {
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    let mut findings = 0;
    let n_lines = corpus.iter().filter(|&&b| b == b'\n').count();
    for _ in 0..runs.max(1) {
        let mut scanner = Scanner::new(Arc::clone(rules), "bench-host", 2025)?;
        let mut events = Vec::with_capacity(1024);
        let (start, cpu0) = (Instant::now(), thread_cpu_secs());
        for (i, line) in corpus.split(|&b| b == b'\n').enumerate() {
            scanner.feed(line, Some(i as u64 + 1), &mut events);
            if events.len() >= 1024 {
                events.clear();
            }
        }
        wall.push(start.elapsed().as_secs_f64().max(1e-9));
        cpu.push((thread_cpu_secs() - cpu0).max(1e-9));
        findings = scanner.stats().findings;
    }
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    let (cpu, wall) = (cpu[cpu.len() / 2], wall[wall.len() / 2]);
    Ok(Figures {
        lines_per_cpu_s: n_lines as f64 / cpu,
        mb_per_cpu_s: corpus.len() as f64 / cpu / 1e6,
        lines_per_wall_s: n_lines as f64 / wall,
        findings,
    })
}

pub fn bench(a: BenchRulesArgs) -> anyhow::Result<ExitCode> {
    let corpus = kbench::corpus(a.lines, a.fault_permille, a.seed);
    println!(
        "corpus: {} lines, {:.1} MB, {} fault lines per 1000, seed {} (real-format lines from checkers/testdata/kernel-log/bench)",
        a.lines,
        corpus.len() as f64 / 1e6,
        a.fault_permille,
        a.seed
    );
    println!(
        "one thread, full per-line pipeline (garbage check, format parse, prefilter, regex set, objects, \
         thresholds); per-core figures from the thread's CPU time; median of {} runs",
        a.runs
    );
    let default = Arc::new(RuleSet::default_rules()?);
    let synthetic = Arc::new(RuleSet::from_sources(&[(
        "synthetic.toml".to_string(),
        kbench::synthetic_rules(a.synthetic_rules),
    )])?);
    for (name, rules) in [("default", &default), ("synthetic", &synthetic)] {
        let f = measure(rules, &corpus, a.runs)?;
        println!(
            "{name:>9} rules={:<4} lines/s per core={:>10.0}  MB/s per core={:>6.1}  (wall: {:>10.0} lines/s)  \
             findings={:<6}  CPU% of a core at 5000 lines/s={:.3}%",
            rules.len(),
            f.lines_per_cpu_s,
            f.mb_per_cpu_s,
            f.lines_per_wall_s,
            f.findings,
            5000.0 / f.lines_per_cpu_s * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
