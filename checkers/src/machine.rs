//! Machine-level checks: read-only or full filesystems, load runaway vs CPU count, memory pressure (PSI),
//! clock sanity, and a summary of the kernel-log findings about the machine itself.
//!
//! * Read-only: from `/proc/self/mountinfo` (falls back to `/proc/mounts`). A filesystem counts as
//!   read-only when its *superblock* options say `ro` (an ext4/xfs error remount does that); a read-only
//!   bind mount of a rw filesystem (containers mount `/proc/sys/...` that way) does not. Only writable
//!   filesystem types are judged (squashfs and iso9660 are read-only by design).
//! * Full: `statvfs` per mount, only when live (`root` is `/`). On a recorded tree there is nothing to
//!   call statvfs on: the check is skipped and one INFO finding says so.
//! * Load: `/proc/loadavg` load5 divided by the CPU count from `/proc/cpuinfo`.
//! * Memory pressure: `/proc/pressure/memory` `full avg60` (share of time all tasks stalled on memory).
//! * Clock: `now_ms` must be within a plausible range; live, the RTC (`/sys/class/rtc/rtc0/since_epoch`)
//!   must agree with the system clock within a few minutes; and the system clock must agree with the
//!   master's within `master_offset_warning_s`, as the agent measured it on its last heartbeat
//!   ([`MasterClock`]): the master compares finding times with its own clock (a part's NEWBIE/TEST entry),
//!   so an agent whose clock is off is a fault of its machine, found even where NTP reports nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use state_machines::{Finding, Kind, ObjectId, Severity};

use crate::probe;
use crate::{CheckContext, CheckError, Checker};

pub const NAME: &str = "machine";
pub const VERSION: &str = "1.1.0";
/// Most mounts judged per run (container hosts have thousands; only writable types are statvfs'ed).
pub const MAX_MOUNTS: usize = 4096;
/// Filesystem types that are normally writable; only these are judged read-only/full.
const WRITABLE_FS: [&str; 9] = ["ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "zfs"];
/// 2024-01-01T00:00:00Z: a clock before this is wrong (no Huatuo build is older).
pub const CLOCK_MIN_MS: u64 = 1_704_067_200_000;
/// 2100-01-01T00:00:00Z: a clock after this is wrong.
pub const CLOCK_MAX_MS: u64 = 4_102_444_800_000;

#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig {
    /// load5 per CPU for WARNING / ERROR (ERROR = runaway: the machine cannot keep up).
    pub load_per_cpu_warning: f64,
    pub load_per_cpu_error: f64,
    /// PSI memory `full avg60` percent for WARNING / ERROR.
    pub psi_full_warning: f64,
    pub psi_full_error: f64,
    /// Filesystem use percent (blocks or inodes) for WARNING / ERROR.
    pub fs_used_warning: f64,
    pub fs_used_error: f64,
    /// RTC vs system clock difference for WARNING, seconds.
    pub rtc_skew_warning_s: u64,
    /// System clock vs the master's, for WARNING, seconds (beyond the measurement's uncertainty).
    pub master_offset_warning_s: u64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            load_per_cpu_warning: 4.0,
            load_per_cpu_error: 10.0,
            psi_full_warning: 10.0,
            psi_full_error: 40.0,
            fs_used_warning: 95.0,
            fs_used_error: 99.0,
            rtc_skew_warning_s: 300,
            master_offset_warning_s: 30,
        }
    }
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted device (mountinfo only; empty from /proc/mounts).
    pub dev: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    /// Per-mount options (`ro` here alone = a read-only bind/mount of a rw filesystem).
    pub mount_opts: String,
    /// Superblock options (`ro` here = the filesystem itself is read-only, e.g. after an error).
    pub super_opts: String,
}

impl Mount {
    pub fn fs_read_only(&self) -> bool {
        self.super_opts.split(',').any(|o| o == "ro")
    }
    pub fn writable_type(&self) -> bool {
        WRITABLE_FS.contains(&self.fstype.as_str())
    }
}

/// Undo the octal escapes of mount paths (`\040` = space), as mountinfo, /proc/mounts and /proc/swaps write
/// them.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/self/mountinfo (proc(5)): `id parent major:minor root mountpoint opts [tags...] - fstype
/// source superopts`. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines().take(MAX_MOUNTS) {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        out.push(Mount {
            dev: l[2].to_string(),
            mount_point: unescape(l[4]),
            fstype: r[0].to_string(),
            source: unescape(r[1]),
            mount_opts: l[5].to_string(),
            super_opts: r[2].to_string(),
        });
    }
    out
}

/// Parse /proc/mounts (`source mountpoint fstype opts 0 0`); options are both per-mount and super.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .take(MAX_MOUNTS)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4).then(|| Mount {
                dev: String::new(),
                mount_point: unescape(f[1]),
                fstype: f[2].to_string(),
                source: unescape(f[0]),
                mount_opts: f[3].to_string(),
                super_opts: f[3].to_string(),
            })
        })
        .collect()
}

/// `(load1, load5, load15)` from /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Number of `processor` entries in /proc/cpuinfo.
pub fn count_cpus(cpuinfo: &str) -> usize {
    cpuinfo.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor")).count()
}

/// PSI line values: `("some"|"full", "avg10"|"avg60"|"avg300") -> value`.
pub fn parse_psi(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(kind) = f.next() else { continue };
        for kv in f {
            if let Some((k, v)) = kv.split_once('=')
                && k.starts_with("avg")
                && let Ok(v) = v.parse::<f64>()
            {
                out.insert((kind.to_string(), k.to_string()), v);
            }
        }
    }
    out
}

/// A machine verdict before it becomes a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub severity: Severity,
    pub rule: &'static str,
    pub evidence: String,
    pub readings: BTreeMap<String, String>,
}

fn v(severity: Severity, rule: &'static str, evidence: String) -> Verdict {
    Verdict { severity, rule, evidence, readings: BTreeMap::new() }
}

/// Read-only filesystems among `mounts`.
pub fn judge_read_only(mounts: &[Mount]) -> Vec<Verdict> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for m in mounts.iter().filter(|m| m.writable_type() && m.fs_read_only()) {
        if !seen.insert(m.mount_point.clone()) {
            continue;
        }
        let (severity, rule) = if m.mount_point == "/" {
            (Severity::Error, "machine.root-read-only")
        } else {
            (Severity::Warning, "machine.fs-read-only")
        };
        let mut x = v(
            severity,
            rule,
            format!("{} ({} on {}) is read-only: {}", m.mount_point, m.fstype, m.source, m.super_opts),
        );
        x.readings.insert("mount_point".into(), m.mount_point.clone());
        x.readings.insert("source".into(), m.source.clone());
        out.push(x);
    }
    out
}

/// Usage of one filesystem: (used percent of blocks, used percent of inodes).
pub fn judge_usage(
    mount_point: &str,
    blocks_pct: f64,
    inodes_pct: f64,
    cfg: &MachineConfig,
) -> Option<Verdict> {
    let worst = blocks_pct.max(inodes_pct);
    let severity = if worst >= cfg.fs_used_error {
        Severity::Error
    } else if worst >= cfg.fs_used_warning {
        Severity::Warning
    } else {
        return None;
    };
    let mut x = v(
        severity,
        "machine.fs-full",
        format!("{mount_point} is {blocks_pct:.1}% full (inodes {inodes_pct:.1}%)"),
    );
    x.readings.insert("mount_point".into(), mount_point.to_string());
    Some(x)
}

pub fn judge_load(load5: f64, cpus: usize, cfg: &MachineConfig) -> Option<Verdict> {
    let per = load5 / cpus.max(1) as f64;
    let severity = if per >= cfg.load_per_cpu_error {
        Severity::Error
    } else if per >= cfg.load_per_cpu_warning {
        Severity::Warning
    } else {
        return None;
    };
    Some(v(severity, "machine.load-runaway", format!("load5 {load5:.2} on {cpus} CPUs ({per:.1} per CPU)")))
}

pub fn judge_psi(full_avg60: f64, cfg: &MachineConfig) -> Option<Verdict> {
    let severity = if full_avg60 >= cfg.psi_full_error {
        Severity::Error
    } else if full_avg60 >= cfg.psi_full_warning {
        Severity::Warning
    } else {
        return None;
    };
    Some(v(
        severity,
        "machine.memory-pressure",
        format!("all tasks stalled on memory {full_avg60:.1}% of the last minute (PSI full avg60)"),
    ))
}

pub fn judge_clock(now_ms: u64, rtc_s: Option<u64>, cfg: &MachineConfig) -> Option<Verdict> {
    if !(CLOCK_MIN_MS..=CLOCK_MAX_MS).contains(&now_ms) {
        return Some(v(
            Severity::Error,
            "machine.clock-insane",
            format!("system clock reads {now_ms} ms since the epoch"),
        ));
    }
    let rtc = rtc_s?;
    let skew = (now_ms / 1000).abs_diff(rtc);
    (skew >= cfg.rtc_skew_warning_s).then(|| {
        v(Severity::Warning, "machine.clock-skew", format!("system clock and RTC differ by {skew} s"))
    })
}

/// A heartbeat round trip longer than this gives no clock sample: its uncertainty (half of it) would hide
/// any offset worth reporting.
pub const MAX_CLOCK_RTT_MS: u64 = 10_000;
/// A clock sample older than this (by the agent's clock) is not judged: the agent has not heard from a
/// master since, and its clock may have been corrected meanwhile.
pub const MAX_CLOCK_SAMPLE_AGE_MS: u64 = 10 * 60_000;

/// The master's clock as one heartbeat measured it, NTP-style: the master's time in its answer against the
/// middle of the call by this host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// Master minus this host, milliseconds: positive when this host's clock is behind.
    pub offset_ms: i64,
    /// The call's round trip: the true offset is within `offset_ms` +- `rtt_ms / 2`.
    pub rtt_ms: u64,
    /// When the answer arrived, by this host's clock.
    pub at_ms: u64,
}

impl ClockSample {
    /// The sample of a call sent at `sent_ms` and answered at `received_ms` (this host's clock) carrying
    /// the master's `master_ms`; None when the master did not say (0: a master before the field), the
    /// clock went backwards during the call, or the round trip was over [`MAX_CLOCK_RTT_MS`].
    pub fn measure(sent_ms: u64, received_ms: u64, master_ms: u64) -> Option<ClockSample> {
        if master_ms == 0 || received_ms < sent_ms || received_ms - sent_ms > MAX_CLOCK_RTT_MS {
            return None;
        }
        let rtt_ms = received_ms - sent_ms;
        let middle = sent_ms + rtt_ms / 2;
        let offset_ms = i64::try_from(i128::from(master_ms) - i128::from(middle)).ok()?;
        Some(ClockSample { offset_ms, rtt_ms, at_ms: received_ms })
    }
}

/// The last [`ClockSample`], shared between the reporter (which measures it on every heartbeat) and the
/// machine checker (which judges it).
#[derive(Debug, Default)]
pub struct MasterClock(Mutex<Option<ClockSample>>);

impl MasterClock {
    pub fn set(&self, s: ClockSample) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }
    pub fn get(&self) -> Option<ClockSample> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// WARNING `machine.clock-offset` when this host's clock is off the master's by at least
/// `master_offset_warning_s` beyond the sample's uncertainty (half its round trip); nothing without a
/// sample, or with one older than [`MAX_CLOCK_SAMPLE_AGE_MS`] at `now_ms`.
pub fn judge_master_offset(now_ms: u64, sample: Option<ClockSample>, cfg: &MachineConfig) -> Option<Verdict> {
    let s = sample.filter(|s| now_ms.saturating_sub(s.at_ms) <= MAX_CLOCK_SAMPLE_AGE_MS)?;
    let at_least = s.offset_ms.unsigned_abs().saturating_sub(s.rtt_ms / 2);
    if at_least < cfg.master_offset_warning_s.saturating_mul(1000) {
        return None;
    }
    let way = if s.offset_ms > 0 { "behind" } else { "ahead of" };
    let mut x = v(
        Severity::Warning,
        "machine.clock-offset",
        format!(
            "system clock is {:.1} s {way} the master's (heartbeat round trip {} ms); check NTP",
            s.offset_ms.unsigned_abs() as f64 / 1000.0,
            s.rtt_ms
        ),
    );
    x.readings.insert("offset_ms".into(), s.offset_ms.to_string());
    x.readings.insert("rtt_ms".into(), s.rtt_ms.to_string());
    Some(x)
}

/// The machine checker.
#[derive(Default)]
pub struct MachineChecker {
    pub cfg: MachineConfig,
    /// Kernel-log findings about this machine since the last run (set by the caller).
    kernel: Vec<Finding>,
    /// The master's clock as the reporter last measured it (None: not judged).
    master_clock: Option<Arc<MasterClock>>,
}

impl MachineChecker {
    pub fn new(cfg: MachineConfig) -> Self {
        MachineChecker { cfg, kernel: Vec::new(), master_clock: None }
    }

    /// Judge this host's clock against the master's as `clock` holds it.
    pub fn with_master_clock(mut self, clock: Arc<MasterClock>) -> Self {
        self.master_clock = Some(clock);
        self
    }

    /// Hand over the kernel-log checker's findings; those about the machine object are summarised.
    pub fn set_kernel_findings(&mut self, findings: Vec<Finding>) {
        self.kernel = findings;
    }

    fn collect(&mut self, ctx: &CheckContext, notes: &mut Vec<String>) -> Vec<Verdict> {
        let live = ctx.root == Path::new("/");
        let mut out = Vec::new();
        let mounts = match probe::read_file(&ctx.root, "proc/self/mountinfo") {
            Ok(t) => Some(parse_mountinfo(&t)),
            Err(_) => probe::read_file(&ctx.root, "proc/mounts").ok().map(|t| parse_mounts(&t)),
        };
        match &mounts {
            Some(m) => out.extend(judge_read_only(m)),
            None => notes.push("no /proc/self/mountinfo or /proc/mounts: read-only check skipped".into()),
        }
        if live {
            for m in mounts.iter().flatten().filter(|m| m.writable_type()) {
                if let Ok(s) = nix::sys::statvfs::statvfs(Path::new(&m.mount_point)) {
                    // fsblkcnt_t is u32 on some 32-bit targets: the casts are for them.
                    #[allow(clippy::unnecessary_cast)]
                    let (ba, bt, fa, ft) = (
                        s.blocks_available() as u64,
                        s.blocks() as u64,
                        s.files_available() as u64,
                        s.files() as u64,
                    );
                    let pct = |free: u64, total: u64| {
                        if total == 0 { 0.0 } else { 100.0 * (1.0 - free as f64 / total as f64) }
                    };
                    let blocks = pct(ba, bt);
                    let inodes = pct(fa, ft);
                    out.extend(judge_usage(&m.mount_point, blocks, inodes, &self.cfg));
                }
            }
        } else {
            notes.push("recorded tree: filesystem usage needs statvfs on a live host; skipped".into());
        }
        let cpus = probe::read_file(&ctx.root, "proc/cpuinfo").map(|t| count_cpus(&t)).unwrap_or(0);
        match (probe::read_file(&ctx.root, "proc/loadavg").ok().and_then(|t| parse_loadavg(&t)), cpus) {
            (Some((_, l5, _)), n) if n > 0 => out.extend(judge_load(l5, n, &self.cfg)),
            _ => notes.push("load check skipped: /proc/loadavg or /proc/cpuinfo unreadable".into()),
        }
        match probe::read_file(&ctx.root, "proc/pressure/memory") {
            Ok(t) => {
                if let Some(full) = parse_psi(&t).get(&("full".into(), "avg60".into())) {
                    out.extend(judge_psi(*full, &self.cfg));
                }
            }
            Err(_) => {
                notes.push("no /proc/pressure/memory (kernel without PSI): memory pressure skipped".into())
            }
        }
        let rtc = if live { probe::read_u64(&ctx.root, "sys/class/rtc/rtc0/since_epoch").ok() } else { None };
        out.extend(judge_clock(ctx.now_ms, rtc, &self.cfg));
        if let Some(clock) = &self.master_clock {
            out.extend(judge_master_offset(ctx.now_ms, clock.get(), &self.cfg));
        }
        let me = ObjectId::machine(&ctx.host).ok();
        let kernel: Vec<&Finding> =
            self.kernel.iter().filter(|f| Some(&f.object) == me.as_ref() && f.severity.is_fault()).collect();
        if let Some(worst) = kernel.iter().map(|f| f.severity).max() {
            let rules: std::collections::BTreeSet<&str> = kernel.iter().map(|f| f.rule.as_str()).collect();
            let mut x = v(
                worst,
                "machine.kernel-findings",
                format!(
                    "{} kernel-log findings about the machine: {}",
                    kernel.len(),
                    rules.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
            x.readings.insert("count".into(), kernel.len().to_string());
            out.push(x);
        }
        self.kernel.clear();
        out
    }
}

impl Checker for MachineChecker {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> &'static str {
        VERSION
    }
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Machine]
    }
    fn default_interval(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// Kernel-log findings are an input of this grade (wired by the agent's topology).
    fn consumes_inputs(&self) -> bool {
        true
    }
    fn set_inputs(&mut self, findings: Vec<Finding>) {
        self.set_kernel_findings(findings);
    }
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        let object = ObjectId::machine(&ctx.host).map_err(|e| CheckError::Malformed(e.to_string()))?;
        let mut notes = Vec::new();
        let mut verdicts = self.collect(ctx, &mut notes);
        if verdicts.iter().all(|v| !v.severity.is_fault()) {
            verdicts.push(v(
                Severity::Good,
                "machine.ok",
                "no read-only or full filesystem, load, memory pressure or clock problem".into(),
            ));
        }
        for n in notes {
            verdicts.push(v(Severity::Info, "machine.skipped", n));
        }
        Ok(verdicts
            .into_iter()
            .map(|x| {
                Finding {
                    object: object.clone(),
                    severity: x.severity,
                    checker: NAME.into(),
                    version: VERSION.into(),
                    rule: x.rule.into(),
                    evidence: x.evidence,
                    readings: x.readings,
                    time_ms: ctx.now_ms,
                    shadow: false,
                }
                .bounded()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn host(t: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/host").join(t)
    }

    const NOW: u64 = 1_795_000_000_000; // 2026-11

    fn ctx(root: &Path) -> CheckContext {
        CheckContext { root: root.to_path_buf(), host: "h1".into(), now_ms: NOW, profile: "online".into() }
    }

    fn rules(f: &[Finding]) -> Vec<(Severity, &str)> {
        f.iter().map(|x| (x.severity, x.rule.as_str())).collect()
    }

    #[test]
    fn recorded_gpud_mountinfo_is_healthy() {
        let t = std::fs::read_to_string(host("gpud/proc/self/mountinfo")).unwrap();
        let m = parse_mountinfo(&t);
        assert!(m.len() > 100);
        let root = m.iter().find(|x| x.mount_point == "/").unwrap();
        assert_eq!((root.fstype.as_str(), root.fs_read_only()), ("ext4", false));
        // The container's read-only bind of boot_id is not a read-only filesystem.
        assert!(m.iter().any(|x| x.mount_opts.starts_with("ro")));
        assert!(judge_read_only(&m).is_empty());
    }

    #[test]
    fn root_remounted_read_only_is_an_error() {
        let t = std::fs::read_to_string(host("gpud/proc/self/mountinfo")).unwrap();
        // The same recorded host after ext4 remounted its root read-only on an error.
        let broken = t.replacen(
            "- ext4 /dev/mapper/vgroot-lvroot rw",
            "- ext4 /dev/mapper/vgroot-lvroot ro,errors=remount-ro",
            1,
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc/self")).unwrap();
        std::fs::write(d.path().join("proc/self/mountinfo"), broken).unwrap();
        let f = MachineChecker::default().run(&ctx(d.path())).unwrap();
        assert!(rules(&f).contains(&(Severity::Error, "machine.root-read-only")), "{f:?}");
        assert!(f.iter().any(|x| x.rule == "machine.skipped" && x.evidence.contains("statvfs")));
        assert!(
            f.iter().any(|x| x.rule == "machine.skipped" && x.evidence.contains("load")),
            "missing files are notes"
        );
    }

    #[test]
    fn recorded_procfs_tree_is_good() {
        for t in ["procfs", "node-exporter"] {
            let f = MachineChecker::default().run(&ctx(&host(t))).unwrap();
            assert!(rules(&f).contains(&(Severity::Good, "machine.ok")), "{t}: {f:?}");
            assert!(f.iter().all(|x| !x.severity.is_fault()), "{t}: {f:?}");
        }
    }

    #[test]
    fn limits() {
        let cfg = MachineConfig::default();
        assert_eq!(judge_load(31.9, 8, &cfg), None);
        assert_eq!(judge_load(32.0, 8, &cfg).unwrap().severity, Severity::Warning);
        assert_eq!(judge_load(80.0, 8, &cfg).unwrap().severity, Severity::Error);
        assert_eq!(judge_psi(9.99, &cfg), None);
        assert_eq!(judge_psi(10.0, &cfg).unwrap().severity, Severity::Warning);
        assert_eq!(judge_psi(40.0, &cfg).unwrap().severity, Severity::Error);
        assert_eq!(judge_usage("/", 94.9, 10.0, &cfg), None);
        assert_eq!(judge_usage("/", 10.0, 99.0, &cfg).unwrap().severity, Severity::Error);
        assert_eq!(judge_clock(NOW, None, &cfg), None);
        assert_eq!(judge_clock(1000, None, &cfg).unwrap().rule, "machine.clock-insane");
        assert_eq!(judge_clock(NOW, Some(NOW / 1000 - 299), &cfg), None);
        assert_eq!(judge_clock(NOW, Some(NOW / 1000 - 300), &cfg).unwrap().rule, "machine.clock-skew");
        let psi = parse_psi(
            "some avg10=1.50 avg60=2.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=12.5 avg300=0.00 total=0",
        );
        assert_eq!(psi[&("full".to_string(), "avg60".to_string())], 12.5);
        assert_eq!(parse_loadavg("garbage"), None);
        assert_eq!(count_cpus("processor\t: 0\nmodel\t: x\nprocessor\t: 1\n"), 2);
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/x\\04"), "/x\\04");
    }

    #[test]
    fn a_clock_sample_is_the_middle_of_the_call_and_refused_when_it_cannot_be() {
        // Sent at 1,000, answered at 1,010: the master's 61,005 is read against 1,005.
        assert_eq!(
            ClockSample::measure(1_000, 1_010, 61_005),
            Some(ClockSample { offset_ms: 60_000, rtt_ms: 10, at_ms: 1_010 })
        );
        assert_eq!(ClockSample::measure(NOW, NOW, NOW - 5_000).map(|s| s.offset_ms), Some(-5_000));
        assert_eq!(ClockSample::measure(1_000, 1_010, 0), None, "a master that does not say");
        assert_eq!(ClockSample::measure(1_010, 1_000, 5_000), None, "the clock went back during the call");
        assert!(ClockSample::measure(0, MAX_CLOCK_RTT_MS, 5_000).is_some());
        assert_eq!(ClockSample::measure(0, MAX_CLOCK_RTT_MS + 1, 5_000), None, "too long a round trip");
        assert_eq!(ClockSample::measure(0, 0, u64::MAX), None, "an offset past i64: no sample, no overflow");
    }

    #[test]
    fn the_master_offset_is_judged_beyond_its_uncertainty_and_while_fresh() {
        let cfg = MachineConfig::default();
        let at = |offset_ms: i64, rtt_ms: u64| Some(ClockSample { offset_ms, rtt_ms, at_ms: NOW });
        assert_eq!(judge_master_offset(NOW, None, &cfg), None);
        assert_eq!(judge_master_offset(NOW, at(29_999, 0), &cfg), None);
        let w = judge_master_offset(NOW, at(30_000, 0), &cfg).expect("at the threshold");
        assert_eq!((w.severity, w.rule), (Severity::Warning, "machine.clock-offset"));
        assert!(w.evidence.contains("30.0 s behind the master's"), "{}", w.evidence);
        assert_eq!(w.readings["offset_ms"], "30000");
        let ahead = judge_master_offset(NOW, at(-95_200, 4), &cfg).expect("ahead");
        assert!(ahead.evidence.contains("95.2 s ahead of the master's (heartbeat round trip 4 ms)"));
        // Half the round trip is the uncertainty: 30.5 s +- 1 s may be 29.5 s.
        assert_eq!(judge_master_offset(NOW, at(30_500, 2_000), &cfg), None);
        assert!(judge_master_offset(NOW, at(31_000, 2_000), &cfg).is_some());
        // A sample older than MAX_CLOCK_SAMPLE_AGE_MS says nothing.
        let old = ClockSample { offset_ms: 600_000, rtt_ms: 1, at_ms: NOW - MAX_CLOCK_SAMPLE_AGE_MS };
        assert!(judge_master_offset(NOW, Some(old), &cfg).is_some());
        let older = ClockSample { at_ms: NOW - MAX_CLOCK_SAMPLE_AGE_MS - 1, ..old };
        assert_eq!(judge_master_offset(NOW, Some(older), &cfg), None);
    }

    #[test]
    fn the_machine_checker_reports_the_master_offset_it_is_handed() {
        let clock = Arc::new(MasterClock::default());
        let mut c = MachineChecker::new(MachineConfig::default()).with_master_clock(Arc::clone(&clock));
        let root = host("procfs");
        let offset = |f: &[Finding]| f.iter().any(|x| x.rule == "machine.clock-offset");
        assert!(!offset(&c.run(&ctx(&root)).expect("run")), "no sample yet");
        clock.set(ClockSample { offset_ms: 120_000, rtt_ms: 3, at_ms: NOW - 1_000 });
        let f = c.run(&ctx(&root)).expect("run");
        let x = f.iter().find(|x| x.rule == "machine.clock-offset").expect("offset reported");
        assert_eq!(x.severity, Severity::Warning);
        clock.set(ClockSample { offset_ms: 12, rtt_ms: 3, at_ms: NOW });
        assert!(!offset(&c.run(&ctx(&root)).expect("run")), "in sync again");
    }

    #[test]
    fn kernel_findings_about_the_machine_are_summarised() {
        let mut c = MachineChecker::default();
        let mk = |obj: &str, sev| Finding {
            object: obj.parse().unwrap(),
            severity: sev,
            checker: "kernel-log".into(),
            version: "1".into(),
            rule: "kernel.soft-lockup".into(),
            evidence: String::new(),
            readings: BTreeMap::new(),
            time_ms: 1,
            shadow: false,
        };
        c.set_kernel_findings(vec![
            mk("machine/h1", Severity::Error),
            mk("machine/h2", Severity::Fatal),
            mk("disk/h1/sda", Severity::Fatal),
        ]);
        let f = c.run(&ctx(&host("procfs"))).unwrap();
        assert!(rules(&f).contains(&(Severity::Error, "machine.kernel-findings")), "{f:?}");
        // Consumed: the next run does not repeat them.
        let f = c.run(&ctx(&host("procfs"))).unwrap();
        assert!(!f.iter().any(|x| x.rule == "machine.kernel-findings"));
    }

    #[test]
    fn live_host_runs() {
        // This machine: whatever its state, the checker returns findings and no error.
        let f = MachineChecker::default().run(&ctx(Path::new("/"))).unwrap();
        assert!(!f.is_empty());
        assert!(!f.iter().any(|x| x.evidence.contains("statvfs on a live host")));
    }
}
