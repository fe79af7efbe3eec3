//! `huatuo check smart` and `huatuo check host`: run the hardware checkers once from the command line.
//!
//! * `check smart FILE.json... | --scan`: grade disks from recorded smartctl JSON or a live scan; one JSON
//!   object per device (`device`, `serial`, `model`, `grade`, `score`, `reasons`). A file or probe that
//!   gives no data grades `UNKNOWN` with the reason.
//! * `check host`: every host checker (disk, edac, nic, machine, rasdaemon's database when present;
//!   kernel-log is wired in separately)
//!   against this host or a recorded /proc + /sys tree, findings as JSON lines. Delta-based checkers need
//!   two samples: live, two runs `--interval` apart and only the second run's findings are printed; on a
//!   recorded tree (one sample) the current absolute state is reported (counters as INFO, no verdicts).
//!
//! Exit codes of `check smart` (so scripts can act on them): 0 every device graded GOOD, SLOW or WARNING;
//! 2 some device graded ERROR or FATAL; 3 some device UNKNOWN (no data, or values that cannot be true)
//! and none ERROR/FATAL; 4 every input failed (no device gave data); 1 usage or configuration error.
//! `check host`: 0 when the checks ran (whatever they found), 1 on a usage or configuration error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use checkers::edac::EdacChecker;
use checkers::kernel_log::{Cursor, CursorError, CursorStore, KernelLogChecker, RuleSet};
use checkers::machine::MachineChecker;
use checkers::nic::NicChecker;
use checkers::registry::HostConfig;
use checkers::scoring::disk::DiskChecker;
use checkers::scoring::{DiskEvidence, Profile, score};
use checkers::smart::{self, ProbeProblem, ScanDevice, SmartProbe, SmartReport};
use checkers::{CheckContext, Checker};
use serde_json::json;

/// Largest smartctl JSON file read from the command line.
const MAX_SMART_FILE: u64 = 16 * 1024 * 1024;
/// Longest `--interval` accepted (a typo such as 3000 should not hang the command for an hour).
const MAX_INTERVAL_SECS: u64 = 600;

/// `check smart` exit code: some device ERROR or FATAL.
pub const EXIT_SMART_FAILING: u8 = 2;
/// `check smart` exit code: some device UNKNOWN, none ERROR/FATAL.
pub const EXIT_SMART_UNKNOWN: u8 = 3;
/// `check smart` exit code: no input gave data.
pub const EXIT_SMART_ALL_FAILED: u8 = 4;

#[derive(clap::Args)]
#[command(after_help = "Exit codes: 0 every device GOOD/SLOW/WARNING; 2 some device ERROR or FATAL; \
3 some device UNKNOWN (no data or implausible values), none ERROR/FATAL; 4 every input failed; \
1 usage or configuration error.")]
pub struct SmartArgs {
    /// smartctl JSON files (`smartctl --json -a DEV > FILE`).
    #[arg(required_unless_present = "scan", conflicts_with = "scan")]
    files: Vec<PathBuf>,
    /// Probe this host's disks live (`smartctl --scan-open`, then `-a -n standby` per device).
    #[arg(long)]
    scan: bool,
    /// smartctl binary for --scan.
    #[arg(long, default_value = "smartctl")]
    smartctl: PathBuf,
    /// Per-device smartctl timeout, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Scoring profile: online, offline, archive, or a name found in --profile-dir.
    #[arg(long, default_value = "online")]
    profile: String,
    /// Directory of profile TOML files overriding the embedded ones.
    #[arg(long)]
    profile_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct HostArgs {
    /// Root of the host's filesystem view: / for this host, or a recorded tree with proc/ and sys/.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Scoring profile for disks.
    #[arg(long, default_value = "online")]
    profile: String,
    /// Directory of profile TOML files overriding the embedded ones.
    #[arg(long)]
    profile_dir: Option<PathBuf>,
    /// Host name used in object ids (default: this machine's host name).
    #[arg(long)]
    host: Option<String>,
    /// Seconds between the two samples of a live run (delta-based checkers need two).
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// smartctl binary (live runs only; SMART is skipped when it is not installed).
    #[arg(long, default_value = "smartctl")]
    smartctl: PathBuf,
    /// Do not run smartctl.
    #[arg(long)]
    no_smart: bool,
    /// Expected NIC speed in Mb/s for every physical interface (slower links are WARNING).
    #[arg(long)]
    expected_speed: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn device_json(r: &SmartReport, profile: &Profile) -> serde_json::Value {
    let base = |grade: &str, score: serde_json::Value, reasons: serde_json::Value| {
        let mut v = json!({
            "device": r.device,
            "object_name": r.object_name(),
            "serial": r.serial,
            "model": r.model,
            "protocol": r.protocol,
            "smartctl_exit_status": r.exit_status,
            "grade": grade,
            "score": score,
            "profile": profile.name,
            "reasons": reasons,
        });
        if let Some(p) = &r.problem {
            v["problem"] = json!(p.to_string());
        }
        if let Some(n) = r.probe_note() {
            v["note"] = json!(n);
        }
        v
    };
    if !r.has_data() {
        let why = r.problem.as_ref().map(|p| p.to_string()).unwrap_or_default();
        return base("UNKNOWN", serde_json::Value::Null, json!([{ "item": "probe.failed", "reason": why }]));
    }
    let mut ev = DiskEvidence::default();
    ev.extend(r.readings());
    let g = score(profile, &ev);
    let mut v = base(g.grade.as_str(), json!(g.score), json!(g.items));
    if let Some(c) = checkers::scoring::cause_of(&g) {
        v["cause"] = json!(c);
    }
    v
}

fn read_smart_file(path: &PathBuf) -> SmartReport {
    let shown = path.display().to_string();
    let bytes = match std::fs::File::open(path) {
        Err(e) => return SmartReport::failed(&shown, ProbeProblem::Failed(format!("{shown}: {e}"))),
        Ok(f) => {
            use std::io::Read;
            let mut buf = Vec::new();
            if let Err(e) = f.take(MAX_SMART_FILE + 1).read_to_end(&mut buf) {
                return SmartReport::failed(&shown, ProbeProblem::Failed(format!("{shown}: {e}")));
            }
            if buf.len() as u64 > MAX_SMART_FILE {
                return SmartReport::failed(
                    &shown,
                    ProbeProblem::Failed(format!("{shown}: larger than {MAX_SMART_FILE} bytes")),
                );
            }
            buf
        }
    };
    match smart::parse_report(&bytes, &shown) {
        Ok(r) => r,
        Err(e) => SmartReport::failed(&shown, ProbeProblem::Failed(format!("{shown}: {e}"))),
    }
}

pub fn run_smart(a: SmartArgs) -> anyhow::Result<ExitCode> {
    let profile = Profile::load(&a.profile, a.profile_dir.as_deref())?;
    let reports: Vec<SmartReport> = if a.scan {
        let probe = SmartProbe::new(a.smartctl.clone(), Duration::from_secs(a.timeout.max(1)));
        let devices: Vec<ScanDevice> =
            probe.scan().map_err(|e| anyhow::anyhow!("{}: --scan-open failed: {e}", a.smartctl.display()))?;
        checkers::scoring::disk::probe_all(&probe, &devices)
    } else {
        a.files.iter().map(read_smart_file).collect()
    };
    let mut out = std::io::stdout().lock();
    let mut grades = Vec::new();
    for r in &reports {
        let v = device_json(r, &profile);
        grades.push(v["grade"].as_str().unwrap_or("UNKNOWN").to_string());
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    Ok(ExitCode::from(smart_exit_code(&grades, reports.iter().any(SmartReport::has_data))))
}

/// See the module docs: ERROR/FATAL beats UNKNOWN beats the rest; no data at all is its own code.
fn smart_exit_code(grades: &[String], any_data: bool) -> u8 {
    if !any_data {
        EXIT_SMART_ALL_FAILED
    } else if grades.iter().any(|g| g == "ERROR" || g == "FATAL") {
        EXIT_SMART_FAILING
    } else if grades.iter().any(|g| g == "UNKNOWN") {
        EXIT_SMART_UNKNOWN
    } else {
        0
    }
}

fn default_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_string())
        .filter(|h| state_machines::id::validate_host(h).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

fn smartctl_available(p: &std::path::Path) -> bool {
    if p.components().count() > 1 {
        return p.is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
        .unwrap_or(false)
}

pub fn run_host(a: HostArgs) -> anyhow::Result<ExitCode> {
    let host = a.host.unwrap_or_else(default_host);
    state_machines::id::validate_host(&host).context("--host")?;
    anyhow::ensure!(a.interval <= MAX_INTERVAL_SECS, "--interval is at most {MAX_INTERVAL_SECS} seconds");
    // Fail early on a bad profile instead of once per disk run.
    Profile::load(&a.profile, a.profile_dir.as_deref())?;
    let live = a.root == std::path::Path::new("/");
    anyhow::ensure!(a.root.is_dir(), "--root {}: not a directory", a.root.display());
    let mut cfg = HostConfig::default();
    cfg.disk.profile_dir = a.profile_dir.clone();
    if live && !a.no_smart {
        if smartctl_available(&a.smartctl) {
            cfg.disk.smartctl = Some(a.smartctl.clone());
        } else {
            eprintln!("huatuo: {} not found: SMART skipped", a.smartctl.display());
        }
    }
    if let Some(s) = a.expected_speed {
        cfg.nic.expected_speed_mbps.insert("*".into(), s);
    }
    // Kernel log first: its findings are an input to the disk and machine grades. It reads ROOT/dev/kmsg
    // from the start of the ring buffer (no cursor is kept by a one-shot check).
    let mut kernel = KernelLogChecker::kmsg(Arc::new(RuleSet::default_rules()?), Box::new(NoCursor));
    let has_kmsg = a.root.join("dev/kmsg").exists();
    if !has_kmsg {
        eprintln!("huatuo: {}/dev/kmsg not found: kernel log skipped", a.root.display());
    }
    let mut disk = DiskChecker::new(cfg.disk.clone());
    let mut machine = MachineChecker::new(cfg.machine.clone());
    let mut others: Vec<Box<dyn Checker>> = vec![
        Box::new(EdacChecker::new(cfg.edac)),
        Box::new(NicChecker::new(cfg.nic.clone())),
        Box::new(checkers::rasdaemon::RasdaemonChecker::new()),
    ];
    let ctx = |now_ms| CheckContext {
        root: a.root.clone(),
        host: host.clone(),
        now_ms,
        profile: a.profile.clone(),
    };
    let mut findings = Vec::new();
    let mut kernel_all = Vec::new();
    let mut run_all = |findings: &mut Vec<_>| {
        findings.clear();
        let c = ctx(now_ms());
        if has_kmsg {
            // Accumulated over both samples: only the last sample's output is printed.
            match kernel.run(&c) {
                Ok(f) => kernel_all.extend(f),
                Err(e) => eprintln!("huatuo: checker {} {}: {e}", kernel.name(), kernel.version()),
            }
        }
        disk.set_kernel_findings(kernel_all.clone());
        machine.set_kernel_findings(kernel_all.clone());
        findings.extend(kernel_all.iter().cloned());
        let mut graded: Vec<&mut dyn Checker> = vec![&mut disk, &mut machine];
        graded.extend(others.iter_mut().map(|c| c.as_mut() as &mut dyn Checker));
        for ch in graded {
            match ch.run(&c) {
                Ok(f) => findings.extend(f),
                Err(e) => eprintln!("huatuo: checker {} {}: {e}", ch.name(), ch.version()),
            }
        }
    };
    run_all(&mut findings);
    if live && a.interval > 0 {
        std::thread::sleep(Duration::from_secs(a.interval));
        run_all(&mut findings);
    }
    let mut out = std::io::stdout().lock();
    for f in &findings {
        writeln!(out, "{}", serde_json::to_string(f)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A kmsg cursor that is never kept: `check host` is a one-shot look at the whole ring buffer.
struct NoCursor;

impl CursorStore for NoCursor {
    fn load(&mut self) -> Result<Option<Cursor>, CursorError> {
        Ok(None)
    }
    fn save(&mut self, _cursor: &Cursor) -> Result<(), CursorError> {
        Ok(())
    }
}
