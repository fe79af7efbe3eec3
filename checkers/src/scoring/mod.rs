//! Disk scoring: a rule base of weighted scoring items, read from named profiles (TOML data), turns a
//! disk's readings from about ten sources (SMART, NVMe health, SCSI counters, self-tests, a hung probe,
//! kernel-log findings, diskstats latency and peers, D-state time) into a grade GOOD / SLOW / WARNING /
//! ERROR / FATAL with the items that produced it.
//!
//! * A [`Reading`] is a named number about one disk (`smart.pending`, `stats.await_ms`, ...). The set is
//!   closed (an enum), so a profile naming an unknown reading is rejected when it is loaded.
//! * A profile item fires when its reading compares (`ge` / `le`) to its threshold; it adds `points`
//!   (plus `per_unit` points per unit beyond the threshold, capped at `max_points`) and may set a `floor`
//!   grade. The grade is the worse of the points grade (`[grades]` thresholds for WARNING/ERROR/FATAL)
//!   and the highest floor among fired items. SLOW is reached only through floors: points measure how
//!   broken a disk is, SLOW says it is slow, which is a different axis.
//! * Profiles `online`, `offline`, `archive` are embedded (`checkers/profiles/*.toml`); a directory of
//!   TOML files can override or add profiles. Files are validated (`deny_unknown_fields`, unique ids,
//!   ordered grade thresholds) with errors that name the file and the item.
//!
//! Everything here is pure: readings in, grade out.

pub mod disk;
pub mod history;
pub mod trend;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use state_machines::{Finding, ObjectId, Severity};

/// The embedded default profiles: (name, TOML text).
pub const BUILTIN_PROFILES: [(&str, &str); 3] = [
    ("online", include_str!("../../profiles/online.toml")),
    ("offline", include_str!("../../profiles/offline.toml")),
    ("archive", include_str!("../../profiles/archive.toml")),
];
/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "online";
/// Most items in one profile (a profile is hand-written data; thousands means a generator bug).
pub const MAX_ITEMS: usize = 512;
/// Largest profile file accepted from an override directory.
pub const MAX_PROFILE_BYTES: u64 = 256 * 1024;
/// Fewest disks of one model needed before a latency is compared with its peers' median: with two, the
/// "median" is just the other disk, and one slow disk makes both look odd.
pub const MIN_PEERS: usize = 3;
/// Peer medians below this many milliseconds are raised to it, so an idle fleet with 0.1 ms medians does
/// not make a 1 ms disk look "10x slower".
pub const PEER_MEDIAN_FLOOR_MS: f64 = 1.0;

macro_rules! readings {
    ($($variant:ident = $name:literal: $doc:literal,)*) => {
        /// A named number about one disk. See `checkers/README.md` for each reading's source.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Reading {
            $(#[doc = $doc] #[serde(rename = $name)] $variant,)*
        }
        impl Reading {
            pub const ALL: &'static [Reading] = &[$(Reading::$variant,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(Reading::$variant => $name,)* }
            }
            pub fn doc(self) -> &'static str {
                match self { $(Reading::$variant => $doc,)* }
            }
        }
    };
}

readings! {
    SmartFailing = "smart.failing": "1 when smartctl says the disk is failing (exit bit 3 or smart_status.passed=false)",
    AttrFailingNow = "smart.attr_failing_now": "ATA attributes at/below threshold now (WHEN_FAILED=now, exit bit 4)",
    AttrFailedPast = "smart.attr_failed_past": "ATA attributes that were at/below threshold in the past (exit bit 5)",
    Reallocated = "smart.reallocated": "ATA 5 Reallocated_Sector_Ct raw",
    Pending = "smart.pending": "ATA 197 Current_Pending_Sector raw",
    OfflineUncorrectable = "smart.offline_uncorrectable": "ATA 198 Offline_Uncorrectable raw",
    ReportedUncorrect = "smart.reported_uncorrect": "ATA 187 Reported_Uncorrect raw",
    UdmaCrc = "smart.udma_crc": "ATA 199 UDMA_CRC_Error_Count raw (interface CRC errors: cable, connector, backplane)",
    UdmaCrcRise = "smart.udma_crc_rise": "ATA 199 increase since the disk (this serial) was first seen by this checker",
    AtaErrorLog = "smart.error_log": "ATA error log entry count (exit bit 6)",
    SelfTestFailed = "smart.self_test_failed": "1 when the latest self-test failed or exit bit 7 is set",
    NvmeCriticalWarning = "nvme.critical_warning": "NVMe critical warning byte",
    NvmeSpareLow = "nvme.cw_spare_low": "NVMe critical warning bit 0: available spare below threshold",
    NvmeTemperature = "nvme.cw_temperature": "NVMe critical warning bit 1: temperature out of range",
    NvmeReliabilityDegraded = "nvme.cw_reliability": "NVMe critical warning bit 2: reliability degraded by media errors",
    NvmeReadOnly = "nvme.cw_read_only": "NVMe critical warning bit 3: media placed in read-only mode",
    NvmeBackupFailed = "nvme.cw_backup_failed": "NVMe critical warning bit 4: volatile memory backup failed",
    NvmeMediaErrors = "nvme.media_errors": "NVMe media and data integrity errors",
    NvmeErrorLogEntries = "nvme.error_log_entries": "NVMe error information log entries (lifetime)",
    NvmeErrorLogRise = "nvme.error_log_rise": "NVMe error-log entries added since the disk (this serial) was first seen by this checker",
    NvmeSpareMargin = "nvme.spare_margin": "NVMe available spare minus its threshold (percent points)",
    NvmePercentageUsed = "nvme.percentage_used": "NVMe percentage of rated endurance used",
    ScsiGrownDefects = "scsi.grown_defects": "SCSI grown defect list length",
    ScsiUncorrected = "scsi.uncorrected": "SCSI total uncorrected read/write/verify errors",
    ProbeHung = "probe.hung": "1 when smartctl hung on this disk and was killed (or is still stuck)",
    KernelIoErrors = "kernel.io_errors": "kernel-log findings of I/O errors on this disk in the window",
    KernelMediumErrors = "kernel.medium_errors": "kernel-log findings of medium errors on this disk",
    KernelLinkErrors = "kernel.link_errors": "kernel-log findings whose decoded cause is the link (CRC, PHY, cable, NVMe path) on this disk",
    KernelTimeouts = "kernel.timeouts": "kernel-log findings of command timeouts/resets on this disk",
    KernelFsErrors = "kernel.fs_errors": "kernel-log findings of filesystem errors on this disk",
    KernelReadOnly = "kernel.read_only": "kernel-log findings of a read-only remount (or shutdown) of a filesystem on this disk",
    KernelOffline = "kernel.offline": "kernel-log findings of the disk taken offline or failed out of an md array",
    KernelHungTasks = "kernel.hung_tasks": "kernel-log hung-task findings blamed on this disk",
    AwaitMs = "stats.await_ms": "mean ms per completed I/O over the diskstats window",
    UtilPct = "stats.util_pct": "percent of the window the disk had I/O in flight",
    PeerLatencyRatio = "stats.peer_latency_ratio": "await divided by the median await of same-model disks on the host",
    DStateSecs = "stats.dstate_secs_per_min": "task-seconds spent in D state attributed to this disk, per minute",
}

/// How an item compares its reading with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Fires when reading >= threshold.
    Ge,
    /// Fires when reading <= threshold.
    Le,
}

/// One scoring item of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Stable id shown with every grade (`smart.pending`, `stats.await-slow`).
    pub id: String,
    pub reading: Reading,
    #[serde(default = "default_op")]
    pub op: Op,
    pub threshold: f64,
    /// Points when the item fires.
    pub points: f64,
    /// Extra points per unit beyond the threshold.
    #[serde(default)]
    pub per_unit: f64,
    /// Cap on the item's points (defaults to `points`).
    #[serde(default)]
    pub max_points: Option<f64>,
    /// Lowest grade the disk gets when this item fires.
    #[serde(default)]
    pub floor: Option<Severity>,
    #[serde(default)]
    pub note: Option<String>,
}

fn default_op() -> Op {
    Op::Ge
}

/// Score thresholds for the point-based grades.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grades {
    pub warning: f64,
    pub error: f64,
    pub fatal: f64,
}

/// A scoring profile, as written in a TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Format version of the profile file; only 1 exists.
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub grades: Grades,
    /// Kernel-log rule id -> the reading its findings count towards.
    #[serde(default)]
    pub kernel_rules: BTreeMap<String, Reading>,
    #[serde(rename = "item")]
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {source_name}: {msg}")]
    Invalid { source_name: String, msg: String },
    #[error("unknown profile {0:?} (known: {1})")]
    Unknown(String, String),
    #[error("profile directory {0}: {1}")]
    Io(String, String),
}

impl Profile {
    /// Parse and validate one profile. `source_name` names the file in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Profile, ProfileError> {
        let bad = |msg: String| ProfileError::Invalid { source_name: source_name.to_string(), msg };
        let p: Profile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if p.version != 1 {
            return Err(bad(format!("version {} is not supported (expected 1)", p.version)));
        }
        if p.name.is_empty() || !p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad(format!("name {:?} must be 1+ characters of A-Z a-z 0-9 - _", p.name)));
        }
        let g = &p.grades;
        if !(g.warning > 0.0 && g.warning < g.error && g.error < g.fatal && g.fatal.is_finite()) {
            return Err(bad(format!(
                "grades must satisfy 0 < warning < error < fatal (got {} / {} / {})",
                g.warning, g.error, g.fatal
            )));
        }
        if p.items.is_empty() || p.items.len() > MAX_ITEMS {
            return Err(bad(format!("needs 1..={MAX_ITEMS} items, has {}", p.items.len())));
        }
        let mut seen = std::collections::BTreeSet::new();
        for it in &p.items {
            let ibad = |m: &str| bad(format!("item {:?}: {m}", it.id));
            if it.id.is_empty() || it.id.len() > 64 {
                return Err(ibad("id must be 1-64 characters"));
            }
            if !seen.insert(it.id.as_str()) {
                return Err(ibad("duplicate id"));
            }
            if !(it.threshold.is_finite() && it.points.is_finite() && it.per_unit.is_finite()) {
                return Err(ibad("threshold, points and per_unit must be finite numbers"));
            }
            if it.points < 0.0 || it.per_unit < 0.0 {
                return Err(ibad("points and per_unit must not be negative"));
            }
            if let Some(m) = it.max_points
                && !(m.is_finite() && m >= it.points)
            {
                return Err(ibad("max_points must be a finite number >= points"));
            }
            if let Some(f) = it.floor
                && f < Severity::Slow
            {
                return Err(ibad("floor must be SLOW, WARNING, ERROR or FATAL"));
            }
        }
        Ok(p)
    }

    /// The embedded profile `name`.
    pub fn builtin(name: &str) -> Result<Profile, ProfileError> {
        let (n, text) = BUILTIN_PROFILES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            ProfileError::Unknown(name.to_string(), BUILTIN_PROFILES.map(|(n, _)| n).join(", "))
        })?;
        Profile::parse(text, &format!("builtin:{n}"))
    }

    /// Profile `name` from `dir/NAME.toml` when that file exists, else the embedded one.
    pub fn load(name: &str, dir: Option<&Path>) -> Result<Profile, ProfileError> {
        if let Some(dir) = dir {
            let file = dir.join(format!("{name}.toml"));
            if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') && file.is_file() {
                let shown = file.display().to_string();
                let text = crate::probe::read_file_capped(dir, &format!("{name}.toml"), MAX_PROFILE_BYTES)
                    .map_err(|e| ProfileError::Io(dir.display().to_string(), e.to_string()))?;
                let p = Profile::parse(&text, &shown)?;
                if p.name != name {
                    return Err(ProfileError::Invalid {
                        source_name: shown,
                        msg: format!("file is named {name}.toml but declares name {:?}", p.name),
                    });
                }
                return Ok(p);
            }
        }
        Profile::builtin(name)
    }
}

/// Profiles from the checker catalog, by name, with their artifact version: they replace the embedded (or
/// directory) profile of the same name at the next scoring pass. The agent fills it from verified artifacts.
#[derive(Debug, Default)]
pub struct ProfileOverrides {
    map: std::sync::Mutex<BTreeMap<String, (std::sync::Arc<Profile>, String)>>,
}

impl ProfileOverrides {
    /// Parse and validate `text` as profile `name` (the file must declare that name), at `version`.
    pub fn parse(name: &str, text: &str, version: &str) -> Result<Profile, ProfileError> {
        let shown = format!("catalog:{name}@{version}");
        let p = Profile::parse(text, &shown)?;
        if p.name != name {
            return Err(ProfileError::Invalid {
                source_name: shown,
                msg: format!("artifact {name} declares profile name {:?}", p.name),
            });
        }
        Ok(p)
    }

    /// Replace the whole set (an empty map: every profile is the embedded one again).
    pub fn set(&self, profiles: BTreeMap<String, (Profile, String)>) {
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *m = profiles.into_iter().map(|(n, (p, v))| (n, (std::sync::Arc::new(p), v))).collect();
    }

    /// The catalog profile `name` and its version, if one is set.
    pub fn get(&self, name: &str) -> Option<(std::sync::Arc<Profile>, String)> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }
}

/// The readings gathered for one disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskEvidence {
    pub readings: BTreeMap<Reading, f64>,
}

impl DiskEvidence {
    /// Set a reading (the last value wins).
    pub fn set(&mut self, r: Reading, v: f64) {
        if v.is_finite() {
            self.readings.insert(r, v);
        }
    }

    /// Add to a reading (counts from several findings).
    pub fn add(&mut self, r: Reading, v: f64) {
        if v.is_finite() {
            *self.readings.entry(r).or_insert(0.0) += v;
        }
    }

    pub fn extend(&mut self, rs: impl IntoIterator<Item = (Reading, f64)>) {
        for (r, v) in rs {
            self.set(r, v);
        }
    }

    /// Count the kernel-log findings about `disk` whose rule the profile maps to a reading. Returns how
    /// many findings were used.
    pub fn add_kernel_findings(&mut self, profile: &Profile, disk: &ObjectId, findings: &[Finding]) -> usize {
        let mut used = 0;
        // INFO findings (context lines, counts below a threshold) are recorded, not evidence. A decoded
        // cause overrides the rule's reading: a link fault (reseat or replace the cable) and a media fault
        // (replace the disk) weigh differently whatever rule reported them.
        for f in findings.iter().filter(|f| &f.object == disk && f.severity > Severity::Info) {
            let Some(r) = profile.kernel_rules.get(&f.rule) else { continue };
            let r = match f.readings.get("cause").map(String::as_str) {
                Some("link") => Reading::KernelLinkErrors,
                Some("media") => Reading::KernelMediumErrors,
                _ => *r,
            };
            self.add(r, 1.0);
            used += 1;
        }
        used
    }
}

/// One item that fired, with the reading behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredItem {
    pub item: String,
    pub reading: &'static str,
    pub value: f64,
    pub points: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Severity>,
}

/// A disk's grade and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskGrade {
    pub grade: Severity,
    pub score: f64,
    pub profile: String,
    pub items: Vec<ScoredItem>,
}

impl DiskGrade {
    /// A one-line explanation: `WARNING (score 35): smart.pending=8 (+30), ...`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} (score {}, profile {})", self.grade, fmt_num(self.score), self.profile);
        for (i, it) in self.items.iter().enumerate() {
            s.push_str(if i == 0 { ": " } else { ", " });
            s.push_str(&format!(
                "{} {}={} (+{})",
                it.item,
                it.reading,
                fmt_num(it.value),
                fmt_num(it.points)
            ));
        }
        s
    }
}

/// Readings that point at the medium, and at the link, for [`cause_of`].
const MEDIA_READINGS: [Reading; 7] = [
    Reading::Reallocated,
    Reading::Pending,
    Reading::OfflineUncorrectable,
    Reading::ReportedUncorrect,
    Reading::NvmeMediaErrors,
    Reading::ScsiGrownDefects,
    Reading::KernelMediumErrors,
];
const LINK_READINGS: [Reading; 3] = [Reading::UdmaCrc, Reading::UdmaCrcRise, Reading::KernelLinkErrors];

/// What a grade's fired items blame: `media` (replace the disk) before `link` (reseat or replace the cable,
/// connector or backplane); `None` when neither fired.
pub fn cause_of(g: &DiskGrade) -> Option<&'static str> {
    let fired = |set: &[Reading]| g.items.iter().any(|i| set.iter().any(|r| r.as_str() == i.reading));
    if fired(&MEDIA_READINGS) {
        Some("media")
    } else if fired(&LINK_READINGS) {
        Some("link")
    } else {
        None
    }
}

/// Format a number without a pointless `.0`.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v:.2}") }
}

/// Score `ev` under `profile`. Items are evaluated in profile order; the output lists fired items in that
/// order. A reading that is absent never fires an item (absence is not evidence).
pub fn score(profile: &Profile, ev: &DiskEvidence) -> DiskGrade {
    let mut items = Vec::new();
    let mut total = 0.0;
    let mut floor = Severity::Good;
    for it in &profile.items {
        let Some(&v) = ev.readings.get(&it.reading) else { continue };
        let beyond = match it.op {
            Op::Ge => v - it.threshold,
            Op::Le => it.threshold - v,
        };
        if beyond < 0.0 {
            continue;
        }
        let cap = it.max_points.unwrap_or(it.points);
        let pts = (it.points + it.per_unit * beyond).min(cap).max(0.0);
        total += pts;
        if let Some(f) = it.floor {
            floor = floor.max(f);
        }
        items.push(ScoredItem {
            item: it.id.clone(),
            reading: it.reading.as_str(),
            value: v,
            points: pts,
            floor: it.floor,
        });
    }
    let g = &profile.grades;
    let by_points = if total >= g.fatal {
        Severity::Fatal
    } else if total >= g.error {
        Severity::Error
    } else if total >= g.warning {
        Severity::Warning
    } else {
        Severity::Good
    };
    DiskGrade { grade: by_points.max(floor), score: total, profile: profile.name.clone(), items }
}

/// Ratio of each disk's await to the median await of the other disks of the same model on the host.
/// Input: (disk name, model, await ms). Models with fewer than [`MIN_PEERS`] disks get no ratio.
pub fn peer_latency_ratios(disks: &[(String, String, f64)]) -> BTreeMap<String, f64> {
    let mut by_model: BTreeMap<&str, Vec<(&str, f64)>> = BTreeMap::new();
    for (name, model, a) in disks {
        if a.is_finite() && *a >= 0.0 && !model.is_empty() {
            by_model.entry(model.as_str()).or_default().push((name.as_str(), *a));
        }
    }
    let mut out = BTreeMap::new();
    for group in by_model.values().filter(|g| g.len() >= MIN_PEERS) {
        for (i, (name, a)) in group.iter().enumerate() {
            let mut others: Vec<f64> =
                group.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, x)| x.1).collect();
            others.sort_by(f64::total_cmp);
            let mid = others.len() / 2;
            let median = if others.len().is_multiple_of(2) {
                (others[mid - 1] + others[mid]) / 2.0
            } else {
                others[mid]
            };
            out.insert(name.to_string(), a / median.max(PEER_MEDIAN_FLOOR_MS));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smart::parse_report;
    use std::path::PathBuf;

    fn smart_dir(sub: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/smart").join(sub)
    }

    fn grade_file(profile: &Profile, path: &Path) -> DiskGrade {
        let r = parse_report(&std::fs::read(path).unwrap(), "x").unwrap();
        let mut ev = DiskEvidence::default();
        ev.extend(r.readings());
        score(profile, &ev)
    }

    fn ids(g: &DiskGrade) -> Vec<&str> {
        g.items.iter().map(|i| i.item.as_str()).collect()
    }

    fn mutated_grade(profile: &Profile, rel: &str, changes: &[(&str, serde_json::Value)]) -> DiskGrade {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(smart_dir("").join(rel)).unwrap()).unwrap();
        for (ptr, v) in changes {
            *doc.pointer_mut(ptr).unwrap_or_else(|| panic!("{rel}: no {ptr}")) = v.clone();
        }
        let r = parse_report(&serde_json::to_vec(&doc).unwrap(), "x").unwrap();
        assert!(r.problem.is_none(), "{:?}", r.problem);
        let mut ev = DiskEvidence::default();
        ev.extend(r.readings());
        score(profile, &ev)
    }

    /// Issue 14 item 8: UDMA CRC errors are a link WARNING (not media); several NVMe media errors are ERROR;
    /// the NVMe error-log count is listed.
    #[test]
    fn crc_errors_warn_as_link_and_nvme_media_errors_are_errors() {
        let p = Profile::builtin("online").unwrap();
        // a real SATA drive (199 present) with the CRC count of the issue's example
        let sat = "smartctl-exporter/HGST_HUS724020ALE640_28.json";
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(smart_dir("").join(sat)).unwrap()).unwrap();
        let idx = doc["ata_smart_attributes"]["table"]
            .as_array()
            .unwrap()
            .iter()
            .position(|a| a["id"] == 199)
            .unwrap();
        let ptr = format!("/ata_smart_attributes/table/{idx}/raw/value");
        let g = mutated_grade(&p, sat, &[(&ptr, 108.into())]);
        assert_eq!(g.grade, Severity::Warning, "{}", g.summary());
        assert_eq!(cause_of(&g), Some("link"));
        // the recorded value (12 lifetime CRC errors) is background: GOOD
        let g = grade_file(&p, &smart_dir("").join(sat));
        assert_eq!(g.grade, Severity::Good, "{}", g.summary());
        let nvme = "smart-prom-next/nvme_xall.json";
        let g = mutated_grade(
            &p,
            nvme,
            &[
                ("/nvme_smart_health_information_log/media_errors", 7.into()),
                ("/nvme_smart_health_information_log/num_err_log_entries", 62.into()),
            ],
        );
        assert_eq!(g.grade, Severity::Error, "{}", g.summary());
        assert!(ids(&g).contains(&"nvme.error-log-entries"));
        assert_eq!(cause_of(&g), Some("media"));
        let g = mutated_grade(&p, nvme, &[("/nvme_smart_health_information_log/media_errors", 1.into())]);
        assert_eq!(g.grade, Severity::Warning, "{}", g.summary());
    }

    /// Kernel findings with a decoded cause count as link or media whatever their rule; INFO findings
    /// (context lines, counts below a threshold) count as nothing.
    #[test]
    fn kernel_causes_weigh_differently() {
        let p = Profile::builtin("online").unwrap();
        let sda = ObjectId::new(state_machines::Kind::Disk, "h", Some("sda")).unwrap();
        let f = |rule: &str, sev: Severity, cause: Option<&str>| Finding {
            object: sda.clone(),
            severity: sev,
            checker: "kernel-log".into(),
            version: "1".into(),
            rule: rule.into(),
            evidence: String::new(),
            readings: cause
                .map(|c| BTreeMap::from([("cause".to_string(), c.to_string())]))
                .unwrap_or_default(),
            time_ms: 0,
            shadow: false,
        };
        let mut e = DiskEvidence::default();
        let link = [
            f("disk.reset", Severity::Warning, Some("link")),
            f("disk.ata-link-error", Severity::Warning, Some("link")),
        ];
        assert_eq!(e.add_kernel_findings(&p, &sda, &link), 2);
        assert_eq!(e.readings.get(&Reading::KernelLinkErrors), Some(&2.0));
        let g = score(&p, &e);
        assert_eq!((g.grade, cause_of(&g)), (Severity::Warning, Some("link")));
        let mut e = DiskEvidence::default();
        let media =
            [f("disk.reset", Severity::Error, Some("media")), f("disk.io-error", Severity::Info, None)];
        assert_eq!(e.add_kernel_findings(&p, &sda, &media), 1, "the INFO finding is not evidence");
        assert_eq!(e.readings.get(&Reading::KernelMediumErrors), Some(&1.0));
    }

    #[test]
    fn builtin_profiles_are_valid() {
        for (name, _) in BUILTIN_PROFILES {
            let p = Profile::builtin(name).unwrap();
            assert_eq!(p.name, name);
        }
        assert!(matches!(Profile::builtin("nope"), Err(ProfileError::Unknown(..))));
    }

    /// Every recorded smartctl output whose drive smartctl itself does not call failing (no exit bit 3/4,
    /// passed != false) must not grade ERROR or FATAL under any profile: false positives take healthy
    /// disks offline. Prints the distribution so a change in noise is visible.
    #[test]
    fn healthy_recorded_drives_never_grade_error() {
        let mut seen = 0;
        for (pname, _) in BUILTIN_PROFILES {
            let p = Profile::builtin(pname).unwrap();
            let mut dist: BTreeMap<Severity, usize> = BTreeMap::new();
            for dir in ["smartctl-exporter", "smart-prom-next"] {
                for e in std::fs::read_dir(smart_dir(dir)).unwrap() {
                    let path = e.unwrap().path();
                    if path.extension().is_none_or(|x| x != "json") || path.to_string_lossy().contains("scan")
                    {
                        continue;
                    }
                    let r = parse_report(&std::fs::read(&path).unwrap(), "x").unwrap();
                    let failing = r.exit_status
                        & (crate::smart::bits::DISK_FAILING | crate::smart::bits::PREFAIL_NOW)
                        != 0
                        || r.passed == Some(false);
                    if failing || !r.has_data() {
                        continue;
                    }
                    let g = grade_file(&p, &path);
                    *dist.entry(g.grade).or_default() += 1;
                    assert!(g.grade < Severity::Error, "{pname} {}: {}", path.display(), g.summary());
                    seen += 1;
                }
            }
            println!("profile {pname}: healthy drives graded {dist:?}");
        }
        assert!(seen >= 3 * 160, "{seen}");
    }

    #[test]
    fn failing_recorded_drives_grade_error_or_fatal_with_reasons() {
        for (pname, _) in BUILTIN_PROFILES {
            let p = Profile::builtin(pname).unwrap();
            let wd = grade_file(&p, &smart_dir("smart-prom-next/usbjmicron_a_when_failed_now.json"));
            assert_eq!(wd.grade, Severity::Fatal, "{}", wd.summary());
            for want in
                ["smart.failing", "smart.attr-failing-now", "smart.reallocated", "smart.self-test-failed"]
            {
                assert!(ids(&wd).contains(&want), "{pname}: {want} missing in {}", wd.summary());
            }
            let nv = grade_file(
                &p,
                &smart_dir("smartctl-exporter/nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json"),
            );
            assert_eq!(nv.grade, Severity::Fatal, "{}", nv.summary());
            assert!(ids(&nv).contains(&"nvme.backup-failed"), "{}", nv.summary());
        }
    }

    #[test]
    fn noisy_but_passing_drives_are_warned_not_failed() {
        let p = Profile::builtin("online").unwrap();
        // 304 reallocated sectors, smartctl says PASSED: worth a WARNING, not an outage.
        let g = grade_file(&p, &smart_dir("smartctl-exporter/ST3500418AS_12.json"));
        assert_eq!(g.grade, Severity::Warning, "{}", g.summary());
        // Exit 96: attribute failed in the past + error log entries.
        let g = grade_file(&p, &smart_dir("smart-prom-next/usbsunplus_xall.json"));
        assert!(
            g.grade <= Severity::Warning && ids(&g).contains(&"smart.attr-failed-past"),
            "{}",
            g.summary()
        );
    }

    fn ev(pairs: &[(Reading, f64)]) -> DiskEvidence {
        let mut e = DiskEvidence::default();
        e.extend(pairs.iter().copied());
        e
    }

    #[test]
    fn latency_makes_slow_and_profiles_differ() {
        let online = Profile::builtin("online").unwrap();
        let archive = Profile::builtin("archive").unwrap();
        let slow = ev(&[(Reading::AwaitMs, 250.0), (Reading::PeerLatencyRatio, 8.0)]);
        assert_eq!(score(&online, &slow).grade, Severity::Slow);
        assert_eq!(score(&archive, &slow).grade, Severity::Good);
        let worn = ev(&[(Reading::NvmePercentageUsed, 101.0)]);
        assert!(score(&archive, &worn).grade >= Severity::Error);
        assert!(score(&online, &worn).grade <= Severity::Warning);
        assert_eq!(score(&online, &DiskEvidence::default()).grade, Severity::Good);
    }

    #[test]
    fn kernel_findings_count_for_their_disk_only() {
        let p = Profile::builtin("online").unwrap();
        let sda: ObjectId = "disk/h1/sda".parse().unwrap();
        let mk = |obj: &str, rule: &str| Finding {
            object: obj.parse().unwrap(),
            severity: Severity::Error,
            checker: "kernel-log".into(),
            version: "1".into(),
            rule: rule.into(),
            evidence: String::new(),
            readings: BTreeMap::new(),
            time_ms: 1,
            shadow: false,
        };
        let fs = vec![
            mk("disk/h1/sda", "fs.read-only"),
            mk("disk/h1/sda", "disk.io-error"),
            mk("disk/h1/sdb", "disk.io-error"),
            mk("disk/h1/sda", "no.such-rule"),
        ];
        let mut e = DiskEvidence::default();
        assert_eq!(e.add_kernel_findings(&p, &sda, &fs), 2);
        let g = score(&p, &e);
        assert_eq!(g.grade, Severity::Error, "{}", g.summary());
        assert!(ids(&g).contains(&"kernel.read-only"));
    }

    #[test]
    fn per_unit_and_cap() {
        let p = Profile::parse(
            r#"version = 1
name = "t"
[grades]
warning = 30
error = 60
fatal = 100
[[item]]
id = "a"
reading = "smart.pending"
threshold = 1
points = 10
per_unit = 5
max_points = 40
"#,
            "t",
        )
        .unwrap();
        let g = |v| score(&p, &ev(&[(Reading::Pending, v)]));
        assert_eq!(g(0.0).score, 0.0);
        assert_eq!(g(1.0).score, 10.0);
        assert_eq!(g(5.0).score, 30.0);
        assert_eq!(g(5.0).grade, Severity::Warning);
        assert_eq!(g(1000.0).score, 40.0);
    }

    #[test]
    fn bad_profiles_are_rejected_clearly() {
        let base = "version = 1\nname = \"t\"\n[grades]\nwarning = 30\nerror = 60\nfatal = 100\n";
        let item = "[[item]]\nid = \"a\"\nreading = \"smart.pending\"\nthreshold = 1\npoints = 10\n";
        let check = |text: String, want: &str| {
            let e = Profile::parse(&text, "x.toml").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("x.toml"), "want {want:?} in {e}");
        };
        check(format!("{base}{item}colour = 1\n"), "unknown field");
        check(format!("{base}{item}").replace("smart.pending", "smart.nope"), "unknown variant");
        check(format!("{base}{item}{item}"), "duplicate id");
        check(format!("{base}{item}").replace("warning = 30", "warning = 70"), "warning < error");
        check(format!("{base}{item}floor = \"INFO\"\n"), "floor must be");
        check(format!("{base}{item}").replace("version = 1", "version = 2"), "version 2");
        check(format!("{base}{item}max_points = 5\n"), "max_points");
        check(base.to_string(), "item");
        check("garbage = [".to_string(), "x.toml");
    }

    /// Every kernel-log rule id a profile maps must exist in the kernel-log rule set, so a renamed rule
    /// cannot silently stop counting towards disk grades.
    #[test]
    fn kernel_rule_ids_exist_in_the_kernel_log_rules() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/kernel-log");
        let mut known = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                for line in std::fs::read_to_string(&p).unwrap().lines() {
                    if let Some(rest) = line.trim().strip_prefix("id = \"")
                        && let Some(id) = rest.split('"').next()
                    {
                        known.insert(id.to_string());
                    }
                }
            }
        }
        for (name, _) in BUILTIN_PROFILES {
            for rule in Profile::builtin(name).unwrap().kernel_rules.keys() {
                assert!(known.contains(rule), "profile {name} maps unknown kernel-log rule {rule:?}");
            }
        }
    }

    #[test]
    fn item_count_limit() {
        let head = "version = 1\nname = \"t\"\n[grades]\nwarning = 30\nerror = 60\nfatal = 100\n";
        let items = |n: usize| {
            (0..n)
                .map(|i| {
                    format!(
                        "[[item]]\nid = \"i{i}\"\nreading = \"smart.pending\"\nthreshold = 1\npoints = 1\n"
                    )
                })
                .collect::<String>()
        };
        assert!(Profile::parse(&format!("{head}{}", items(MAX_ITEMS)), "t").is_ok());
        let e = Profile::parse(&format!("{head}{}", items(MAX_ITEMS + 1)), "t").unwrap_err();
        assert!(e.to_string().contains("1..=512 items"), "{e}");
    }

    #[test]
    fn override_dir_wins_and_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let text = BUILTIN_PROFILES[0].1.replace("warning = 30", "warning = 31");
        std::fs::write(d.path().join("online.toml"), &text).unwrap();
        assert_eq!(Profile::load("online", Some(d.path())).unwrap().grades.warning, 31.0);
        assert_eq!(Profile::load("offline", Some(d.path())).unwrap().name, "offline");
        std::fs::write(d.path().join("custom.toml"), &text).unwrap();
        assert!(Profile::load("custom", Some(d.path())).unwrap_err().to_string().contains("declares name"));
    }

    #[test]
    fn peers() {
        let d = |n: &str, m: &str, a: f64| (n.to_string(), m.to_string(), a);
        let r = peer_latency_ratios(&[
            d("sda", "M1", 5.0),
            d("sdb", "M1", 5.0),
            d("sdc", "M1", 50.0),
            d("sdd", "M2", 50.0),
            d("sde", "M2", 0.1),
        ]);
        assert_eq!(r.get("sdc"), Some(&10.0));
        assert_eq!(r.get("sda"), Some(&(5.0 / 27.5)));
        assert!(!r.contains_key("sdd"), "two disks are not enough peers");
    }
}
