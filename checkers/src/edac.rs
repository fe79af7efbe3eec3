//! EDAC memory errors: corrected (CE) and uncorrected (UE) error counters per memory controller and per
//! DIMM from `/sys/devices/system/edac/mc/mc*/`, judged on DELTAS over a window, never on absolute counts
//! (counters live since boot or driver load; a DIMM with 3 CEs a year ago is not failing now).
//!
//! Layouts (kernel `Documentation/admin-guide/ras.rst`): newer drivers expose `dimm*/dimm_{ce,ue}_count`
//! and `dimm_label`; older ones `csrow*/ch*_ce_count` (+ `ch*_ue_count`, `ch*_dimm_label`). Both become
//! [`DimmCounters`] named `mcN-dimmM` or `mcN-csrowR-chC`. Controller totals include `*_noinfo_count`
//! (errors the driver could not attribute to a DIMM): those go to the pseudo DIMM `mcN-noinfo`. A
//! controller that exposes only its totals (`ce_count`, `ue_count`) becomes the pseudo DIMM `mcN-all`.
//!
//! The CE rate: WARNING when a DIMM gained [`EdacConfig::ce_warning`] corrected errors within
//! [`EdacConfig::ce_window_ms`] (10 in 24 h, the kernel-log rule `mem.edac-ce`'s threshold). The driver's
//! counters are the ground truth where they exist: the deltas between runs are counted, and the kernel's
//! `EDAC MCn: N CE ...` lines (this checker's input from the kernel-log checker) are ignored, because they
//! report the same errors the counters already count. Only on a host without EDAC counters in sysfs are
//! the lines counted (the `N` in each line), per DIMM as the kernel-log checker named it. The kernel-log
//! checker in turn names a line's DIMM by its sysfs directory (`mc0-dimm2`) and leaves its CE rate to this
//! checker when the counters exist, so one DIMM is one object with one rate.
//!

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use state_machines::{Finding, Kind, ObjectId, Severity};

use crate::probe::{self, ProbeError};
use crate::{CheckContext, CheckError, Checker};

pub const NAME: &str = "edac";
pub const VERSION: &str = "1.1.0";
const EDAC_DIR: &str = "sys/devices/system/edac/mc";
/// Most memory controllers and DIMMs read per run (a 2-socket server has ~4 MCs and 32 DIMMs).
pub const MAX_DIMMS: usize = 1024;

/// Counters of one DIMM (or csrow channel) at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimmCounters {
    pub ce: u64,
    pub ue: u64,
    pub label: String,
}

/// A full EDAC sample: object name -> counters.
pub type EdacSample = BTreeMap<String, DimmCounters>;

/// Thresholds for one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdacConfig {
    /// New CEs in one window that make a DIMM WARNING (a DIMM that starts correcting many errors tends to
    /// fail uncorrectably later; a handful per day is background noise on large fleets).
    pub ce_warning: u64,
    /// The CE rate window: `ce_warning` new CEs within this many ms make a DIMM WARNING.
    pub ce_window_ms: u64,
    /// Any new UE is an ERROR (data was lost or the machine would have crashed without recovery).
    pub ue_error: u64,
}

impl Default for EdacConfig {
    fn default() -> Self {
        EdacConfig { ce_warning: 10, ce_window_ms: CE_WINDOW_MS, ue_error: 1 }
    }
}

/// Default CE rate window: a day, as the kernel-log rule `mem.edac-ce` (10 CEs within 24 h).
pub const CE_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Most CE events remembered per DIMM within the window (a run every minute for a day is 1440). Beyond
/// it the two oldest are merged (counts kept, the later time kept), so the limit never loses an error,
/// it can only keep one a little longer in the window.
pub const MAX_CE_EVENTS: usize = 1440;
/// The kernel-log rule whose lines this checker counts when there are no EDAC counters.
pub const CE_LINE_RULE: &str = "mem.edac-ce";
/// Most kernel-log findings kept between two runs (the agent's inbox is bounded too; a storm of CE lines
/// beyond this within one interval is a WARNING anyway).
pub const MAX_PENDING_LINES: usize = 10_000;

/// Corrected errors of one DIMM within the CE rate window, as (time ms, count) of each run or line that
/// added some.
#[derive(Debug, Clone, Default)]
struct CeWindow {
    events: VecDeque<(u64, u64)>,
}

impl CeWindow {
    fn add(&mut self, t: u64, n: u64) {
        if n == 0 {
            return;
        }
        if self.events.len() >= MAX_CE_EVENTS
            && let Some((_, oldest)) = self.events.pop_front()
            && let Some(next) = self.events.front_mut()
        {
            next.1 = next.1.saturating_add(oldest);
        }
        self.events.push_back((t, n));
    }

    /// Errors within `window` ms before `now` (older events are dropped).
    fn sum(&mut self, now: u64, window: u64) -> u64 {
        while self.events.front().is_some_and(|(t, _)| t.saturating_add(window) <= now) {
            self.events.pop_front();
        }
        self.events.iter().fold(0u64, |a, (_, n)| a.saturating_add(*n))
    }
}

fn read_or_zero(root: &Path, rel: &str) -> Result<Option<u64>, ProbeError> {
    match probe::read_u64(root, rel) {
        Ok(v) => Ok(Some(v)),
        Err(ProbeError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read every controller's counters below `root`. A host without EDAC (no driver loaded, a VM) gives an
/// empty sample, not an error: "no EDAC" is reported once by the checker as INFO.
pub fn read_sample(root: &Path) -> Result<Option<EdacSample>, ProbeError> {
    let mcs = match probe::list_dir(root, EDAC_DIR) {
        Ok(v) => v,
        Err(ProbeError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = EdacSample::new();
    for mc in mcs.iter().filter(|n| n.starts_with("mc") && n[2..].bytes().all(|b| b.is_ascii_digit())) {
        let base = format!("{EDAC_DIR}/{mc}");
        let entries = probe::list_dir(root, &base)?;
        let mut found_dimm = false;
        for d in entries.iter().filter(|n| n.starts_with("dimm") || n.starts_with("rank")) {
            let p = format!("{base}/{d}");
            // `rank*` directories (some drivers) use the same `dimm_*` attribute names.
            let prefix = "dimm";
            let (Some(ce), ue) = (
                read_or_zero(root, &format!("{p}/{prefix}_ce_count"))?,
                read_or_zero(root, &format!("{p}/{prefix}_ue_count"))?,
            ) else {
                continue;
            };
            let label = probe::read_line(root, &format!("{p}/{prefix}_label")).unwrap_or_default();
            out.insert(format!("{mc}-{d}"), DimmCounters { ce, ue: ue.unwrap_or(0), label });
            found_dimm = true;
        }
        if !found_dimm {
            for row in entries.iter().filter(|n| n.starts_with("csrow")) {
                let p = format!("{base}/{row}");
                let files = probe::list_dir(root, &p)?;
                let row_ue = read_or_zero(root, &format!("{p}/ue_count"))?.unwrap_or(0);
                let channels: Vec<&String> =
                    files.iter().filter(|f| f.starts_with("ch") && f.ends_with("_ce_count")).collect();
                let n_ch = channels.len();
                for (i, f) in channels.into_iter().enumerate() {
                    let ch = &f[..f.len() - "_ce_count".len()];
                    let ce = probe::read_u64(root, &format!("{p}/{f}"))?;
                    // Per-channel UE counts exist only on some drivers; otherwise the row's UE count is
                    // kept on its first channel so the total is not multiplied.
                    let ue = match read_or_zero(root, &format!("{p}/{ch}_ue_count"))? {
                        Some(v) => v,
                        None if i == 0 || n_ch == 0 => row_ue,
                        None => 0,
                    };
                    let label = probe::read_line(root, &format!("{p}/{ch}_dimm_label")).unwrap_or_default();
                    out.insert(format!("{mc}-{row}-{ch}"), DimmCounters { ce, ue, label });
                }
            }
        }
        let units = out.keys().filter(|k| k.starts_with(&format!("{mc}-"))).count();
        let ce_noinfo = read_or_zero(root, &format!("{base}/ce_noinfo_count"))?.unwrap_or(0);
        let ue_noinfo = read_or_zero(root, &format!("{base}/ue_noinfo_count"))?.unwrap_or(0);
        if units == 0
            && let Some(ce) = read_or_zero(root, &format!("{base}/ce_count"))?
        {
            // Only the controller's totals (they include the noinfo counts): one pseudo DIMM.
            let ue = read_or_zero(root, &format!("{base}/ue_count"))?.unwrap_or(0);
            out.insert(format!("{mc}-all"), DimmCounters { ce, ue, label: String::new() });
        } else if ce_noinfo > 0 || ue_noinfo > 0 {
            out.insert(
                format!("{mc}-noinfo"),
                DimmCounters { ce: ce_noinfo, ue: ue_noinfo, label: String::new() },
            );
        }
        if out.len() >= MAX_DIMMS {
            break;
        }
    }
    Ok(Some(out))
}

/// The verdict on one DIMM for one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimmVerdict {
    pub name: String,
    pub severity: Severity,
    pub rule: &'static str,
    pub evidence: String,
    pub readings: BTreeMap<String, String>,
}

/// Judge one window: new errors per DIMM between `prev` and `cur`. A counter that went down (driver
/// reload, reboot) is a reset: the window is skipped for that DIMM. DIMMs with no new errors get GOOD,
/// so the state machine can see a DIMM recover.
pub fn judge_delta(prev: &EdacSample, cur: &EdacSample, cfg: &EdacConfig) -> Vec<DimmVerdict> {
    let mut out = Vec::new();
    for (name, c) in cur {
        let Some(p) = prev.get(name) else { continue };
        let (Some(dce), Some(due)) = (c.ce.checked_sub(p.ce), c.ue.checked_sub(p.ue)) else { continue };
        let (sev, rule) = if due >= cfg.ue_error {
            (Severity::Error, "edac.ue")
        } else if dce >= cfg.ce_warning {
            (Severity::Warning, "edac.ce-storm")
        } else {
            (Severity::Good, "edac.ok")
        };
        let readings = BTreeMap::from([
            ("ce_delta".to_string(), dce.to_string()),
            ("ue_delta".to_string(), due.to_string()),
            ("ce_total".to_string(), c.ce.to_string()),
            ("ue_total".to_string(), c.ue.to_string()),
            ("label".to_string(), c.label.clone()),
        ]);
        let ev =
            format!("{name} ({}): {dce} new corrected, {due} new uncorrected errors in the window", c.label);
        out.push(DimmVerdict { name: name.clone(), severity: sev, rule, evidence: ev, readings });
    }
    out
}

/// The EDAC checker. Keeps the previous sample, the CE rate windows, and the kernel-log CE findings handed
/// over since the last run.
#[derive(Default)]
pub struct EdacChecker {
    pub cfg: EdacConfig,
    prev: Option<EdacSample>,
    /// Per DIMM object name; at most [`MAX_DIMMS`] (a new DIMM beyond it gets no rate).
    windows: BTreeMap<String, CeWindow>,
    /// `mem.edac-ce` findings of the kernel-log checker since the last run.
    lines: Vec<Finding>,
}

impl EdacChecker {
    pub fn new(cfg: EdacConfig) -> Self {
        EdacChecker { cfg, ..EdacChecker::default() }
    }

    /// CEs of `name` within the window after adding `n` at `t` (None: no room for another DIMM).
    fn rate(&mut self, name: &str, t: u64, n: u64, now: u64) -> Option<u64> {
        if !self.windows.contains_key(name) && self.windows.len() >= MAX_DIMMS {
            return None;
        }
        let w = self.windows.entry(name.to_string()).or_default();
        w.add(t, n);
        Some(w.sum(now, self.cfg.ce_window_ms))
    }

    /// No EDAC counters on this host: count the CEs the kernel logged (`N` of `EDAC MCn: N CE ...`) per
    /// DIMM as the kernel-log checker named it; one finding per DIMM that logged some since the last run.
    fn judge_lines(
        &mut self,
        ctx: &CheckContext,
        lines: Vec<Finding>,
    ) -> Vec<(String, Severity, String, Readings)> {
        let mut touched: BTreeMap<String, u64> = BTreeMap::new();
        for f in lines {
            if f.object.kind() != Kind::Dimm {
                continue;
            }
            let Some(name) = f.object.name().map(str::to_string) else { continue };
            let n = f.readings.get("count").and_then(|c| c.parse::<u64>().ok()).unwrap_or(1).max(1);
            if self.rate(&name, f.time_ms, n, ctx.now_ms).is_some() {
                *touched.entry(name).or_default() += n;
            }
        }
        let window_h = self.cfg.ce_window_ms / 3_600_000;
        let mut out = Vec::new();
        for (name, new) in touched {
            let Some(sum) = self.rate(&name, ctx.now_ms, 0, ctx.now_ms) else { continue };
            let sev = if sum >= self.cfg.ce_warning { Severity::Warning } else { Severity::Info };
            let readings = Readings::from([
                ("ce_new".to_string(), new.to_string()),
                ("ce_window".to_string(), sum.to_string()),
                ("window_h".to_string(), window_h.to_string()),
                ("source".to_string(), "kernel-log".to_string()),
            ]);
            let ev = format!(
                "{name}: {sum} corrected errors in the kernel log within {window_h} h ({new} new; no EDAC counters in sysfs)"
            );
            out.push((name, sev, ev, readings));
        }
        out
    }
}

type Readings = BTreeMap<String, String>;

impl Checker for EdacChecker {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> &'static str {
        VERSION
    }
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Dimm]
    }
    fn default_interval(&self) -> Duration {
        Duration::from_secs(60)
    }
    /// The kernel-log checker's CE lines are an input (counted only where sysfs has no EDAC counters).
    fn consumes_inputs(&self) -> bool {
        true
    }
    fn set_inputs(&mut self, findings: Vec<Finding>) {
        let room = MAX_PENDING_LINES.saturating_sub(self.lines.len());
        self.lines.extend(findings.into_iter().filter(|f| f.rule == CE_LINE_RULE).take(room));
    }
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        let lines = std::mem::take(&mut self.lines);
        let sample = read_sample(&ctx.root)?;
        let mk = |name: &str, sev, rule: &str, ev: String, readings| -> Result<Finding, CheckError> {
            Ok(Finding {
                object: ObjectId::new(Kind::Dimm, &ctx.host, Some(name))
                    .map_err(|e| CheckError::Malformed(e.to_string()))?,
                severity: sev,
                checker: NAME.into(),
                version: VERSION.into(),
                rule: rule.into(),
                evidence: ev,
                readings,
                time_ms: ctx.now_ms,
                shadow: false,
            }
            .bounded())
        };
        let mut out = Vec::new();
        let Some(cur) = sample else {
            self.prev = None;
            for (name, sev, ev, r) in self.judge_lines(ctx, lines) {
                let rule = if sev == Severity::Warning { "edac.ce-storm" } else { "edac.ce-lines" };
                out.push(mk(&name, sev, rule, ev, r)?);
            }
            return Ok(out);
        };
        // The counters exist: they are the count; the lines (the same errors) are not counted again.
        drop(lines);
        match self.prev.take() {
            Some(prev) => {
                let window_h = self.cfg.ce_window_ms / 3_600_000;
                for mut v in judge_delta(&prev, &cur, &self.cfg) {
                    let dce = v.readings.get("ce_delta").and_then(|d| d.parse().ok()).unwrap_or(0);
                    if let Some(sum) = self.rate(&v.name, ctx.now_ms, dce, ctx.now_ms) {
                        if v.severity < Severity::Warning && sum >= self.cfg.ce_warning {
                            v.severity = Severity::Warning;
                            v.rule = "edac.ce-storm";
                        }
                        v.readings.insert("ce_window".into(), sum.to_string());
                        v.readings.insert("window_h".into(), window_h.to_string());
                        v.evidence.push_str(&format!("; {sum} corrected within {window_h} h"));
                    }
                    v.readings.insert("source".into(), "sysfs".into());
                    out.push(mk(&v.name, v.severity, v.rule, v.evidence, v.readings)?);
                }
            }
            None => {
                // First sample (or a recorded tree): absolute counts are reported for the record only.
                for (name, c) in &cur {
                    let readings = BTreeMap::from([
                        ("ce_total".to_string(), c.ce.to_string()),
                        ("ue_total".to_string(), c.ue.to_string()),
                        ("label".to_string(), c.label.clone()),
                    ]);
                    let ev = format!(
                        "{name} ({}): {} corrected, {} uncorrected since boot (absolute counts: no verdict without a window)",
                        c.label, c.ce, c.ue
                    );
                    out.push(mk(name, Severity::Info, "edac.counts", ev, readings)?);
                }
            }
        }
        self.prev = Some(cur);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tree() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/host/node-exporter")
    }

    fn ctx(root: &Path) -> CheckContext {
        CheckContext { root: root.to_path_buf(), host: "h1".into(), now_ms: 1, profile: "online".into() }
    }

    #[test]
    fn reads_recorded_csrow_layout() {
        let s = read_sample(&tree()).unwrap().unwrap();
        // Cross-checked with node_exporter's e2e-output.txt for the same fixture.
        let r0c1 = &s["mc0-csrow0-ch1"];
        assert_eq!(r0c1.label, "mc0csrow0channel1");
        let r0c0 = &s["mc0-csrow0-ch0"];
        assert_eq!((r0c0.ce, r0c0.ue), (0, 2));
        assert_eq!(s["mc0-noinfo"], DimmCounters { ce: 2, ue: 6, label: String::new() });
    }

    #[test]
    fn recorded_tree_gives_info_only_then_deltas() {
        let mut c = EdacChecker::default();
        let f = c.run(&ctx(&tree())).unwrap();
        assert!(!f.is_empty());
        assert!(f.iter().all(|x| x.severity == Severity::Info), "absolute counts never alert");
        // Same tree again: no new errors -> GOOD everywhere.
        let f = c.run(&ctx(&tree())).unwrap();
        assert!(f.iter().all(|x| x.severity == Severity::Good && x.rule == "edac.ok"));
    }

    #[test]
    fn deltas_alert_and_resets_are_ignored() {
        let base = read_sample(&tree()).unwrap().unwrap();
        let mut later = base.clone();
        later.get_mut("mc0-csrow0-ch0").unwrap().ue += 1;
        later.get_mut("mc0-csrow1-ch0").unwrap().ce += 10;
        later.get_mut("mc0-csrow1-ch1").unwrap().ce += 9;
        later.get_mut("mc0-noinfo").unwrap().ce = 0; // reset
        let j = judge_delta(&base, &later, &EdacConfig::default());
        let sev = |n: &str| j.iter().find(|x| x.name == n).map(|x| x.severity);
        assert_eq!(sev("mc0-csrow0-ch0"), Some(Severity::Error));
        assert_eq!(sev("mc0-csrow1-ch0"), Some(Severity::Warning), "at the CE limit");
        assert_eq!(sev("mc0-csrow1-ch1"), Some(Severity::Good), "one below the CE limit");
        assert_eq!(sev("mc0-noinfo"), None);
    }

    #[test]
    fn dimm_layout_missing_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_sample(d.path()).unwrap(), None, "no EDAC is not an error");
        let dimm = d.path().join("sys/devices/system/edac/mc/mc1/dimm3");
        std::fs::create_dir_all(&dimm).unwrap();
        std::fs::write(dimm.join("dimm_ce_count"), "7\n").unwrap();
        std::fs::write(dimm.join("dimm_ue_count"), "0\n").unwrap();
        std::fs::write(dimm.join("dimm_label"), "CPU_SrcID#0_Ha#0_Chan#1_DIMM#0\n").unwrap();
        let s = read_sample(d.path()).unwrap().unwrap();
        assert_eq!(s["mc1-dimm3"].ce, 7);
        std::fs::write(dimm.join("dimm_ce_count"), "garbage\n").unwrap();
        assert!(matches!(read_sample(d.path()), Err(ProbeError::Parse { .. })));
        let mut c = EdacChecker::default();
        assert!(matches!(c.run(&ctx(d.path())), Err(CheckError::Probe(_))));
    }

    fn documented_tree() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/host/edac-dimm")
    }

    fn copy_tree(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&dst).unwrap();
                copy_tree(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), &dst).unwrap();
            }
        }
    }

    fn at(root: &Path, now_ms: u64) -> CheckContext {
        CheckContext { root: root.to_path_buf(), host: "h1".into(), now_ms, profile: "online".into() }
    }

    fn bump(root: &Path, rel: &str, by: u64) {
        let p = root.join("sys/devices/system/edac/mc").join(rel);
        let v: u64 = std::fs::read_to_string(&p).unwrap().trim().parse().unwrap();
        std::fs::write(&p, format!("{}\n", v + by)).unwrap();
    }

    fn verdict(f: &[Finding], name: &str) -> (Severity, String, BTreeMap<String, String>) {
        let x = f.iter().find(|x| x.object.to_string() == format!("dimm/h1/{name}")).unwrap();
        (x.severity, x.rule.clone(), x.readings.clone())
    }

    /// Real kernel lines through the real kernel-log scanner: the findings this checker gets as input.
    fn kernel_findings(text: &str, root: Option<&Path>) -> Vec<Finding> {
        let rules = std::sync::Arc::new(crate::kernel_log::RuleSet::default_rules().unwrap());
        let mut s = crate::kernel_log::Scanner::new(rules, "h1", 2019).unwrap();
        s.set_root(root.map(Path::to_path_buf));
        let mut out = Vec::new();
        s.scan_reader(text.as_bytes(), &mut out).unwrap();
        out.into_iter().map(|e| e.finding).collect()
    }

    #[test]
    fn reads_the_documented_dimm_layout() {
        let s = read_sample(&documented_tree()).unwrap().unwrap();
        let names: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(names, ["mc0-dimm0", "mc0-dimm2", "mc1-dimm0"], "no noinfo or total pseudo DIMMs");
        assert_eq!(
            s["mc0-dimm2"],
            DimmCounters { ce: 17, ue: 0, label: "CPU_SrcID#0_Ha#0_Chan#2_DIMM#0".into() }
        );
        assert_eq!(s["mc1-dimm0"].ue, 1);
        // a controller with only its totals is one pseudo DIMM (its noinfo counts are part of the totals)
        let d = tempfile::tempdir().unwrap();
        let mc = d.path().join("sys/devices/system/edac/mc/mc0");
        std::fs::create_dir_all(&mc).unwrap();
        for (f, v) in
            [("ce_count", "5"), ("ue_count", "1"), ("ce_noinfo_count", "5"), ("ue_noinfo_count", "0")]
        {
            std::fs::write(mc.join(f), format!("{v}\n")).unwrap();
        }
        let s = read_sample(d.path()).unwrap().unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["mc0-all"]);
        assert_eq!((s["mc0-all"].ce, s["mc0-all"].ue), (5, 1));
    }

    /// Counter deltas summed over the CE window: 4 + 5 = 9 within a day is GOOD, one more is WARNING, and a
    /// day after the first delta it has left the window. Kernel lines handed in meanwhile are not counted.
    #[test]
    fn ce_rate_from_counter_deltas_within_a_day() {
        let d = tempfile::tempdir().unwrap();
        copy_tree(&documented_tree(), d.path());
        let r = d.path();
        let mut c = EdacChecker::default();
        let min = 60_000;
        let t0 = 1_700_000_000_000;
        assert!(c.run(&at(r, t0)).unwrap().iter().all(|f| f.severity == Severity::Info));
        bump(r, "mc0/dimm2/dimm_ce_count", 4);
        let (sev, _, rd) = verdict(&c.run(&at(r, t0 + min)).unwrap(), "mc0-dimm2");
        assert_eq!((sev, rd["ce_window"].as_str(), rd["source"].as_str()), (Severity::Good, "4", "sysfs"));
        bump(r, "mc0/dimm2/dimm_ce_count", 5);
        // 50 CEs in kernel lines for the same DIMM: the counters already count them
        let line = "May  7 06:45:12 h kernel: [21584690.529877] EDAC MC0: 50 CE memory read error on CPU_SrcID#0_Ha#0_Chan#2_DIMM#0 (channel:2 slot:0 page:0x0 offset:0x0 grain:8 syndrome:0x0)\n";
        c.set_inputs(kernel_findings(line, Some(r)));
        let (sev, _, rd) = verdict(&c.run(&at(r, t0 + 2 * min)).unwrap(), "mc0-dimm2");
        assert_eq!((sev, rd["ce_window"].as_str()), (Severity::Good, "9"), "one below the limit");
        bump(r, "mc0/dimm2/dimm_ce_count", 1);
        let (sev, rule, rd) = verdict(&c.run(&at(r, t0 + 3 * min)).unwrap(), "mc0-dimm2");
        assert_eq!(
            (sev, rule.as_str(), rd["ce_window"].as_str()),
            (Severity::Warning, "edac.ce-storm", "10")
        );
        assert_eq!(verdict(&c.run(&at(r, t0 + 3 * min)).unwrap(), "mc0-dimm0").0, Severity::Good);
        // 24 h after the first delta it leaves the window: 6 remain
        let (sev, _, rd) = verdict(&c.run(&at(r, t0 + min + CE_WINDOW_MS)).unwrap(), "mc0-dimm2");
        assert_eq!((sev, rd["ce_window"].as_str()), (Severity::Good, "6"));
        // a new UE is an ERROR at once
        bump(r, "mc1/dimm0/dimm_ue_count", 1);
        let (sev, rule, _) = verdict(&c.run(&at(r, t0 + CE_WINDOW_MS + 2 * min)).unwrap(), "mc1-dimm0");
        assert_eq!((sev, rule.as_str()), (Severity::Error, "edac.ue"));
    }

    /// Without EDAC counters the kernel's CE lines are the count: the real lines of one post (4, 2 and 6
    /// CEs on one DIMM) give INFO, then WARNING at 12 within a day, on the DIMM the kernel-log checker
    /// names. The same lines on a host with counters are not counted.
    #[test]
    fn kernel_lines_count_only_without_counters() {
        // https://github.com/openstreetmap/operations/issues/300 (syslog lines as posted)
        let post = "May  7 06:45:12 errol kernel: [21584690.529877] EDAC MC0: 4 CE error on CPU#0Channel#2_DIMM#0 (channel:2 slot:0 page:0x0 offset:0x0 grain:8 syndrome:0x0)\n\
                    May  7 06:45:13 errol kernel: [21584691.723198] EDAC MC0: 2 CE error on CPU#0Channel#2_DIMM#0 (channel:2 slot:0 page:0x0 offset:0x0 grain:8 syndrome:0x0)\n\
                    May  7 06:45:17 errol kernel: [21584695.897483] EDAC MC0: 6 CE error on CPU#0Channel#2_DIMM#0 (channel:2 slot:0 page:0x0 offset:0x0 grain:8 syndrome:0x0)\n";
        let lines: Vec<&str> = post.lines().map(|l| l.trim_start()).collect();
        let none = tempfile::tempdir().unwrap();
        let mut c = EdacChecker::default();
        let f = kernel_findings(&format!("{}\n{}\n", lines[0], lines[1]), None);
        let now = f.iter().map(|x| x.time_ms).max().unwrap() + 1000;
        c.set_inputs(f);
        let name = "mc0-cpu0channel2_dimm0";
        let (sev, rule, rd) = verdict(&c.run(&at(none.path(), now)).unwrap(), name);
        assert_eq!((sev, rule.as_str(), rd["ce_window"].as_str()), (Severity::Info, "edac.ce-lines", "6"));
        assert_eq!(rd["source"], "kernel-log");
        c.set_inputs(kernel_findings(&format!("{}\n", lines[2]), None));
        let (sev, rule, rd) = verdict(&c.run(&at(none.path(), now + 5000)).unwrap(), name);
        assert_eq!(
            (sev, rule.as_str(), rd["ce_window"].as_str()),
            (Severity::Warning, "edac.ce-storm", "12")
        );
        assert!(c.run(&at(none.path(), now + 6000)).unwrap().is_empty(), "no new lines, nothing to say");

        // the same lines where the driver's counters exist: not counted (no finding about that DIMM)
        let d = tempfile::tempdir().unwrap();
        copy_tree(&documented_tree(), d.path());
        let mut c = EdacChecker::default();
        c.run(&at(d.path(), now)).unwrap();
        c.set_inputs(kernel_findings(&lines.join("\n"), Some(d.path())));
        let f = c.run(&at(d.path(), now + 60_000)).unwrap();
        assert!(f.iter().all(|x| x.readings.get("source").map(String::as_str) == Some("sysfs")), "{f:?}");
        assert!(f.iter().all(|x| x.severity == Severity::Good));
    }

    /// The kernel-log side: where sysfs has the DIMM a CE line names, the finding is on the sysfs DIMM
    /// (`mc0-dimm2`, as this checker and the inventory name it) and stays INFO however many CEs the lines
    /// add up to (this checker grades that rate from the counters); without sysfs the rule's own threshold
    /// still applies (the tenth CE is WARNING).
    #[test]
    fn kernel_log_leaves_the_ce_rate_to_the_counters() {
        let tsv = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kernel-log/real-lines/lines.tsv"),
        )
        .unwrap();
        // https://github.com/grondo/edac-utils/issues/10, from the shared real-line set
        let line = tsv
            .lines()
            .find(|l| l.contains("1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#2_DIMM#0"))
            .and_then(|l| l.split('\t').nth(4))
            .unwrap();
        let ten = format!("{line}\n").repeat(10);
        let with = kernel_findings(&ten, Some(&documented_tree()));
        assert_eq!(with.len(), 10);
        for f in &with {
            assert_eq!(f.object.to_string(), "dimm/h1/mc0-dimm2");
            assert_eq!(f.severity, Severity::Info);
            assert_eq!(f.readings.get("graded_by").map(String::as_str), Some("edac"));
            assert_eq!(
                f.readings.get("logged_name").map(String::as_str),
                Some("mc0-cpu_srcid0_ha0_chan2_dimm0")
            );
        }
        let without = kernel_findings(&ten, None);
        assert_eq!(without.last().map(|f| f.severity), Some(Severity::Warning));
        assert_eq!(without[0].object.to_string(), "dimm/h1/mc0-cpu_srcid0_ha0_chan2_dimm0");
    }

    #[test]
    fn ce_window_is_bounded_without_losing_errors() {
        let mut w = CeWindow::default();
        for i in 0..(MAX_CE_EVENTS as u64 + 10) {
            w.add(i, 1);
        }
        assert_eq!(w.events.len(), MAX_CE_EVENTS);
        assert_eq!(w.sum(MAX_CE_EVENTS as u64 + 10, u64::MAX / 2), MAX_CE_EVENTS as u64 + 10);
        let mut c = EdacChecker::default();
        for i in 0..MAX_DIMMS {
            assert!(c.rate(&format!("d{i}"), 0, 1, 0).is_some());
        }
        assert_eq!(c.rate("one-more", 0, 1, 0), None, "no room for another DIMM");
        c.set_inputs(vec![]);
        assert!(c.lines.is_empty());
    }
}
