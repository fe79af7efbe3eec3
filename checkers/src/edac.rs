//! EDAC memory errors: corrected (CE) and uncorrected (UE) error counters per memory controller and per
//! DIMM from `/sys/devices/system/edac/mc/mc*/`, judged on DELTAS over a window, never on absolute counts
//! (counters live since boot or driver load; a DIMM with 3 CEs a year ago is not failing now).
//!
//! Layouts (kernel `Documentation/admin-guide/ras.rst`): newer drivers expose `dimm*/dimm_{ce,ue}_count`
//! and `dimm_label`; older ones `csrow*/ch*_ce_count` (+ `ch*_ue_count`, `ch*_dimm_label`). Both become
//! [`DimmCounters`] named `mcN-dimmM` or `mcN-csrowR-chC`. Controller totals include `*_noinfo_count`
//! (errors the driver could not attribute to a DIMM): those go to the pseudo DIMM `mcN-noinfo`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use state_machines::{Finding, Kind, ObjectId, Severity};

use crate::probe::{self, ProbeError};
use crate::{CheckContext, CheckError, Checker};

pub const NAME: &str = "edac";
pub const VERSION: &str = "1.0.0";
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
    /// Any new UE is an ERROR (data was lost or the machine would have crashed without recovery).
    pub ue_error: u64,
}

impl Default for EdacConfig {
    fn default() -> Self {
        EdacConfig { ce_warning: 10, ue_error: 1 }
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
        let ce_noinfo = read_or_zero(root, &format!("{base}/ce_noinfo_count"))?.unwrap_or(0);
        let ue_noinfo = read_or_zero(root, &format!("{base}/ue_noinfo_count"))?.unwrap_or(0);
        if ce_noinfo > 0 || ue_noinfo > 0 {
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

/// The EDAC checker. Keeps the previous sample between runs.
#[derive(Default)]
pub struct EdacChecker {
    pub cfg: EdacConfig,
    prev: Option<EdacSample>,
}

impl EdacChecker {
    pub fn new(cfg: EdacConfig) -> Self {
        EdacChecker { cfg, prev: None }
    }
}

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
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        let Some(cur) = read_sample(&ctx.root)? else {
            self.prev = None;
            return Ok(vec![]);
        };
        let mut out = Vec::new();
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
        match &self.prev {
            Some(prev) => {
                for v in judge_delta(prev, &cur, &self.cfg) {
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
}
