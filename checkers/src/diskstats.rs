//! Disk statistics: `/proc/diskstats` samples and their deltas (await, utilisation, in-flight), and the
//! time tasks spend in D state (uninterruptible sleep, which is how a task waits for a disk).
//!
//! Parsing and delta maths are pure ([`parse_diskstats`], [`delta`], [`dstate_per_disk`]); the readers
//! ([`read_diskstats`], [`read_dstate`]) are thin probes below the check root.
//!
//! D-state attribution (be practical): Linux does not say which disk a D-state task waits for
//! (`/proc/PID/stat` has no device; `delayacct_blkio_ticks` needs `delayacct`, off by default since 5.14).
//! We count tasks in state `D` at each sample, drop those whose `/proc/PID/wchan` names a network or FUSE
//! filesystem wait (`nfs`, `rpc`, `fuse`, `cifs`: not a local disk), average the two samples' counts, and
//! split that average over the disks that had I/O in flight at the second sample, in proportion to their
//! in-flight count. The result is "task-seconds in D state per minute" per disk: crude, but a disk that
//! keeps dozens of tasks stuck stands out, and it needs no kernel options.

use std::collections::BTreeMap;
use std::path::Path;

use crate::probe::{self, ProbeError};

/// Fewest completed I/Os in a window before its await is trusted (one slow I/O on an idle disk says
/// little; the peer comparison would otherwise flag idle disks).
pub const MIN_IOS_FOR_AWAIT: u64 = 10;
/// Most /proc/PID entries scanned for D-state tasks per sample (bounded work on a host with a PID storm).
pub const MAX_TASKS_SCANNED: usize = 65_536;
/// Most D-state tasks remembered per sample (for evidence); counting goes on past it.
pub const MAX_DSTATE_KEPT: usize = 32;

/// One line of /proc/diskstats (counters since boot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub reads: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub write_ms: u64,
    pub in_flight: u64,
    pub io_ms: u64,
    pub weighted_ms: u64,
    pub discards: u64,
    pub discard_ms: u64,
    pub flushes: u64,
    pub flush_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/proc/diskstats line {line}: {msg}")]
pub struct DiskstatsError {
    pub line: usize,
    pub msg: String,
}

/// Parse /proc/diskstats (4.18+ adds discard fields, 5.5+ flush fields; older kernels have 14 fields).
pub fn parse_diskstats(text: &str) -> Result<Vec<DiskCounters>, DiskstatsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 14 {
            return Err(DiskstatsError {
                line: i + 1,
                msg: format!("{} fields, expected at least 14", f.len()),
            });
        }
        let n = |k: usize| -> Result<u64, DiskstatsError> {
            match f.get(k) {
                None => Ok(0),
                Some(s) => s.parse::<u64>().map_err(|_| DiskstatsError {
                    line: i + 1,
                    msg: format!(
                        "field {} is not a number: {:?}",
                        k + 1,
                        s.chars().take(30).collect::<String>()
                    ),
                }),
            }
        };
        out.push(DiskCounters {
            major: n(0)? as u32,
            minor: n(1)? as u32,
            name: f[2].chars().take(64).collect(),
            reads: n(3)?,
            read_ms: n(6)?,
            writes: n(7)?,
            write_ms: n(10)?,
            in_flight: n(11)?,
            io_ms: n(12)?,
            weighted_ms: n(13)?,
            discards: n(14)?,
            discard_ms: n(17)?,
            flushes: n(18)?,
            flush_ms: n(19)?,
        });
    }
    Ok(out)
}

/// Whether a diskstats name is a physical disk worth scoring. With `/sys/block` present (live, or a
/// recorded tree that has it) a name must be listed there (partitions are not); virtual block devices
/// (loop, ram, zram, dm, md, nbd, optical, floppy) are skipped either way.
pub fn is_physical_disk(name: &str, sys_block: Option<&[String]>) -> bool {
    const VIRTUAL: [&str; 9] = ["loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd", "rbd"];
    if VIRTUAL.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    match sys_block {
        Some(list) => list.iter().any(|n| n == name),
        None => !looks_like_partition(name),
    }
}

fn looks_like_partition(name: &str) -> bool {
    // nvme0n1p1, mmcblk0p1: a 'p' followed by digits after a digit; sda1, vdb2, xvda1: trailing digits
    // after letters (whole-disk names of those families end in a letter).
    if let Some(pos) = name.rfind('p')
        && pos > 0
        && name[..pos].ends_with(|c: char| c.is_ascii_digit())
        && name[pos + 1..].bytes().all(|b| b.is_ascii_digit())
        && pos + 1 < name.len()
    {
        return true;
    }
    let is_sd_family = ["sd", "vd", "xvd", "hd"].iter().any(|p| name.starts_with(p));
    is_sd_family && name.ends_with(|c: char| c.is_ascii_digit())
}

/// Rates over one window for one disk.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskRates {
    pub name: String,
    pub ios: u64,
    /// Mean milliseconds per completed I/O (None below [`MIN_IOS_FOR_AWAIT`] I/Os).
    pub await_ms: Option<f64>,
    /// Percent of the window with I/O in flight (capped at 100).
    pub util_pct: f64,
    /// I/Os in flight at the end of the window.
    pub in_flight: u64,
}

/// Deltas between two samples taken `interval_ms` apart. Disks missing from either sample, or whose
/// counters went backwards (device replaced, counter reset), are left out.
pub fn delta(prev: &[DiskCounters], cur: &[DiskCounters], interval_ms: u64) -> Vec<DiskRates> {
    let prev: BTreeMap<&str, &DiskCounters> = prev.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut out = Vec::new();
    for c in cur {
        let Some(p) = prev.get(c.name.as_str()) else { continue };
        let d = |a: u64, b: u64| b.checked_sub(a);
        let (Some(r), Some(w), Some(rms), Some(wms), Some(io), Some(dc), Some(dms)) = (
            d(p.reads, c.reads),
            d(p.writes, c.writes),
            d(p.read_ms, c.read_ms),
            d(p.write_ms, c.write_ms),
            d(p.io_ms, c.io_ms),
            d(p.discards, c.discards),
            d(p.discard_ms, c.discard_ms),
        ) else {
            continue;
        };
        let ios = r + w + dc;
        let await_ms = (ios >= MIN_IOS_FOR_AWAIT).then(|| (rms + wms + dms) as f64 / ios as f64);
        let util_pct =
            if interval_ms == 0 { 0.0 } else { (io as f64 * 100.0 / interval_ms as f64).min(100.0) };
        out.push(DiskRates { name: c.name.clone(), ios, await_ms, util_pct, in_flight: c.in_flight });
    }
    out
}

/// Read and parse `/proc/diskstats` below `root`.
pub fn read_diskstats(root: &Path) -> Result<Vec<DiskCounters>, ProbeError> {
    let text = probe::read_file(root, "proc/diskstats")?;
    parse_diskstats(&text).map_err(|e| ProbeError::Parse {
        path: root.join("proc/diskstats").display().to_string(),
        what: "diskstats",
        got: e.to_string(),
    })
}

/// The names listed in `/sys/block` below `root`, if that directory exists.
pub fn read_sys_block(root: &Path) -> Option<Vec<String>> {
    probe::list_dir(root, "sys/block").ok()
}

/// A task found in D state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DTask {
    pub pid: u32,
    pub comm: String,
    pub wchan: String,
}

/// One scan of /proc for D-state tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DStateSample {
    /// D-state tasks counted as waiting for a local disk.
    pub count: usize,
    /// The first [`MAX_DSTATE_KEPT`] of them.
    pub tasks: Vec<DTask>,
}

/// Parse the state and comm out of a `/proc/PID/stat` line. comm may contain spaces and parentheses, so
/// the state is the first field after the *last* `)`.
pub fn parse_stat_state(stat: &str) -> Option<(String, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = stat[open + 1..close].to_string();
    let state = stat[close + 1..].trim_start().chars().next()?;
    Some((comm, state))
}

/// Whether a wchan names a wait that is not on a local disk.
fn remote_wait(wchan: &str) -> bool {
    ["nfs", "rpc", "fuse", "cifs", "smb", "ceph", "9p"].iter().any(|w| wchan.contains(w))
}

/// Scan `/proc/[0-9]*/stat` below `root` for D-state tasks. Unreadable or vanished tasks are skipped
/// (tasks exit between listing and reading all the time).
pub fn read_dstate(root: &Path) -> Result<DStateSample, ProbeError> {
    let mut s = DStateSample::default();
    for name in probe::list_dir(root, "proc")?.into_iter().take(MAX_TASKS_SCANNED) {
        let Ok(pid) = name.parse::<u32>() else { continue };
        let Ok(stat) = probe::read_file_capped(root, &format!("proc/{pid}/stat"), 4096) else { continue };
        let Some((comm, 'D')) = parse_stat_state(&stat) else { continue };
        let wchan = probe::read_line(root, &format!("proc/{pid}/wchan")).unwrap_or_default();
        if remote_wait(&wchan) {
            continue;
        }
        s.count += 1;
        if s.tasks.len() < MAX_DSTATE_KEPT {
            s.tasks.push(DTask { pid, comm: comm.chars().take(32).collect(), wchan });
        }
    }
    Ok(s)
}

/// Split D-state time over disks (see the module doc): `avg_d_tasks` averaged over the window, split by
/// each disk's in-flight share. Returns task-seconds in D state per minute, per disk.
pub fn dstate_per_disk(avg_d_tasks: f64, in_flight: &BTreeMap<String, u64>) -> BTreeMap<String, f64> {
    let total: u64 = in_flight.values().sum();
    if total == 0 || avg_d_tasks <= 0.0 {
        return BTreeMap::new();
    }
    in_flight
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| (name.clone(), avg_d_tasks * 60.0 * (*n as f64) / total as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn host(tree: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/host").join(tree)
    }

    #[test]
    fn parses_recorded_diskstats() {
        let d = read_diskstats(&host("procfs")).unwrap();
        let sda = d.iter().find(|x| x.name == "sda").unwrap();
        // Values from prometheus/procfs fixtures (their own test asserts the same line).
        assert_eq!((sda.reads, sda.read_ms, sda.writes, sda.in_flight), (25354637, 18492372, 28444756, 0));
        let n = read_diskstats(&host("node-exporter")).unwrap();
        assert!(n.iter().any(|x| x.name == "nvme0n1"));
        assert!(n.iter().any(|x| x.discards > 0 || x.flushes > 0), "new-kernel fields parsed");
    }

    #[test]
    fn physical_disk_filter() {
        let sys = read_sys_block(&host("procfs")).unwrap();
        assert!(is_physical_disk("sda", Some(&sys)));
        assert!(!is_physical_disk("sda1", Some(&sys)));
        assert!(!is_physical_disk("dm-0", Some(&sys)));
        assert!(!is_physical_disk("md0", Some(&sys)));
        for (n, want) in [
            ("sda", true),
            ("sda1", false),
            ("nvme0n1", true),
            ("nvme0n1p2", false),
            ("mmcblk0p1", false),
            ("vdb", true),
            ("loop3", false),
            ("xvda1", false),
        ] {
            assert_eq!(is_physical_disk(n, None), want, "{n}");
        }
    }

    #[test]
    fn deltas_from_a_recorded_base() {
        let base = read_diskstats(&host("procfs")).unwrap();
        let mut later = base.clone();
        for d in &mut later {
            if d.name == "sda" {
                d.reads += 100;
                d.read_ms += 5_000;
                d.writes += 100;
                d.write_ms += 15_000;
                d.io_ms += 9_000;
                d.in_flight = 7;
            }
            if d.name == "sdb" {
                d.reads += 3;
                d.read_ms += 3;
            }
            if d.name == "sdc" {
                d.reads = 0; // counter reset: skipped
            }
        }
        let r = delta(&base, &later, 10_000);
        let sda = r.iter().find(|x| x.name == "sda").unwrap();
        assert_eq!(sda.await_ms, Some(100.0));
        assert_eq!(sda.util_pct, 90.0);
        assert_eq!(sda.in_flight, 7);
        let sdb = r.iter().find(|x| x.name == "sdb").unwrap();
        assert_eq!(sdb.await_ms, None, "3 I/Os are below MIN_IOS_FOR_AWAIT");
        assert!(r.iter().all(|x| x.name != "sdc"));
    }

    #[test]
    fn bad_diskstats_is_an_error_not_a_panic() {
        assert!(parse_diskstats("8 0 sda 1 2 3").is_err());
        assert!(parse_diskstats("8 0 sda 1 2 3 x 5 6 7 8 9 10 11").is_err());
        assert!(parse_diskstats("\u{0}\u{1}\u{2} garbage").is_err());
        assert_eq!(parse_diskstats("").unwrap(), vec![]);
    }

    #[test]
    fn stat_state_and_attribution() {
        assert_eq!(parse_stat_state("123 (kworker/u:1 (x)) D 2 0"), Some(("kworker/u:1 (x)".into(), 'D')));
        assert_eq!(parse_stat_state("garbage"), None);
        let d = tempfile::tempdir().unwrap();
        for (pid, stat, wchan) in [
            (10, "10 (dd) D 1 1", "io_schedule"),
            (11, "11 (cp) D 1 1", "rpc_wait_bit_killable"),
            (12, "12 (bash) S 1 1", "do_wait"),
            (13, "13 (tar) D 1 1", "0"),
        ] {
            let p = d.path().join(format!("proc/{pid}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("stat"), stat).unwrap();
            std::fs::write(p.join("wchan"), wchan).unwrap();
        }
        std::fs::create_dir_all(d.path().join("proc/self")).unwrap();
        let s = read_dstate(d.path()).unwrap();
        assert_eq!(s.count, 2, "{s:?}");
        let inflight: BTreeMap<String, u64> =
            [("sda".into(), 3), ("sdb".into(), 1), ("sdc".into(), 0)].into();
        let per = dstate_per_disk(2.0, &inflight);
        assert_eq!(per.get("sda"), Some(&90.0));
        assert_eq!(per.get("sdb"), Some(&30.0));
        assert!(!per.contains_key("sdc"));
        assert!(dstate_per_disk(2.0, &BTreeMap::new()).is_empty());
    }
}
