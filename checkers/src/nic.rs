//! NICs: error/drop/CRC/missed counter deltas, link flaps (`carrier_changes` deltas), operstate and
//! negotiated speed vs the expected speed, for physical interfaces.
//!
//! Counters come from `/sys/class/net/IF/statistics/*` and fall back to `/proc/net/dev` (recorded trees
//! often lack the statistics directory). Counters are judged on deltas between two samples; the first
//! sample (or a recorded tree) gives only state checks (operstate, speed) and INFO with absolute counts.
//!
//! Virtual interfaces are skipped: `lo`, anything under `/sys/devices/virtual/net/`, interfaces without a
//! `device` link, and well-known virtual name prefixes (veth, docker, bridges, tunnels, CNI) as a fallback
//! for trees without `/sys/devices`. `NicConfig::include` forces an interface in (e.g. `bond0`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use state_machines::{Finding, Kind, ObjectId, Severity};

use crate::probe::{self, ProbeError};
use crate::{CheckContext, CheckError, Checker};

pub const NAME: &str = "nic";
pub const VERSION: &str = "1.0.0";
/// Most interfaces examined per run (container hosts have thousands of veths; they are skipped by name
/// before this limit bites, physical ports are a handful).
pub const MAX_INTERFACES: usize = 4096;
const VIRTUAL_PREFIXES: [&str; 16] = [
    "veth",
    "docker",
    "br-",
    "virbr",
    "cali",
    "flannel",
    "cni",
    "tun",
    "tap",
    "vxlan",
    "kube",
    "lxc",
    "wg",
    "dummy",
    "tailscale",
    "gre",
];
const COUNTERS: [&str; 11] = [
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "rx_crc_errors",
    "rx_missed_errors",
    "rx_fifo_errors",
    "rx_frame_errors",
    "tx_carrier_errors",
];

/// NIC thresholds (per window).
#[derive(Debug, Clone, PartialEq)]
pub struct NicConfig {
    /// Fewest errors in a window before the error ratio is judged (a single CRC error is noise).
    pub min_errors: u64,
    /// Errors per packet for WARNING / ERROR.
    pub error_ratio_warning: f64,
    pub error_ratio_error: f64,
    /// Drops per packet for WARNING (drops are often policy or a busy host, so only WARNING).
    pub drop_ratio_warning: f64,
    pub min_drops: u64,
    /// carrier_changes in a window for WARNING / ERROR (one flap = 2 changes: down and up).
    pub flaps_warning: u64,
    pub flaps_error: u64,
    /// Expected speed in Mb/s per interface; `*` applies to every physical interface.
    pub expected_speed_mbps: BTreeMap<String, u64>,
    /// Interfaces that must be up (a down link is an ERROR, not INFO).
    pub expected_up: Vec<String>,
    /// Interfaces checked even though they look virtual.
    pub include: Vec<String>,
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            min_errors: 10,
            error_ratio_warning: 0.001,
            error_ratio_error: 0.01,
            drop_ratio_warning: 0.02,
            min_drops: 100,
            flaps_warning: 2,
            flaps_error: 10,
            expected_speed_mbps: BTreeMap::new(),
            expected_up: Vec::new(),
            include: Vec::new(),
        }
    }
}

/// One interface at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSample {
    pub operstate: String,
    /// Negotiated speed in Mb/s; None when unknown (down links report -1 or EINVAL).
    pub speed_mbps: Option<u64>,
    pub carrier_changes: Option<u64>,
    pub counters: BTreeMap<&'static str, u64>,
}

/// Parse /proc/net/dev into interface -> counters (the subset in [`COUNTERS`] that it carries).
pub fn parse_proc_net_dev(text: &str) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else { continue };
        let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if v.len() < 16 {
            continue;
        }
        let mut m = BTreeMap::new();
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop fifo
        // colls carrier compressed.
        for (k, i) in [
            ("rx_packets", 1),
            ("rx_errors", 2),
            ("rx_dropped", 3),
            ("rx_fifo_errors", 4),
            ("rx_frame_errors", 5),
            ("tx_packets", 9),
            ("tx_errors", 10),
            ("tx_dropped", 11),
            ("tx_carrier_errors", 14),
        ] {
            m.insert(k, v[i]);
        }
        out.insert(name.trim().to_string(), m);
    }
    out
}

/// Whether an interface is physical (see the module doc).
pub fn is_physical(root: &Path, name: &str, cfg: &NicConfig) -> bool {
    if cfg.include.iter().any(|i| i == name) {
        return true;
    }
    if name == "lo" || VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    if probe::exists(root, &format!("sys/devices/virtual/net/{name}")) {
        return false;
    }
    probe::exists(root, &format!("sys/class/net/{name}/device"))
}

/// Read every physical interface below `root`.
pub fn read_sample(root: &Path, cfg: &NicConfig) -> Result<BTreeMap<String, NicSample>, ProbeError> {
    let names = probe::list_dir(root, "sys/class/net")?;
    let proc_dev = probe::read_file(root, "proc/net/dev").map(|t| parse_proc_net_dev(&t)).unwrap_or_default();
    let mut out = BTreeMap::new();
    for name in names.into_iter().take(MAX_INTERFACES) {
        if !is_physical(root, &name, cfg) {
            continue;
        }
        let base = format!("sys/class/net/{name}");
        let operstate =
            probe::read_line(root, &format!("{base}/operstate")).unwrap_or_else(|_| "unknown".into());
        let speed_mbps = probe::read_line(root, &format!("{base}/speed"))
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| u64::try_from(s).ok());
        let carrier_changes = probe::read_u64(root, &format!("{base}/carrier_changes")).ok();
        let mut counters = BTreeMap::new();
        if probe::exists(root, &format!("{base}/statistics")) {
            for c in COUNTERS {
                if let Ok(v) = probe::read_u64(root, &format!("{base}/statistics/{c}")) {
                    counters.insert(c, v);
                }
            }
        } else if let Some(m) = proc_dev.get(&name) {
            counters = m.clone();
        }
        out.insert(name, NicSample { operstate, speed_mbps, carrier_changes, counters });
    }
    Ok(out)
}

/// One verdict about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicVerdict {
    pub severity: Severity,
    pub rule: &'static str,
    pub evidence: String,
}

/// State checks that need no window: link down, speed below expectation.
pub fn judge_state(
    name: &str,
    cur: &NicSample,
    prev: Option<&NicSample>,
    cfg: &NicConfig,
) -> Vec<NicVerdict> {
    let mut out = Vec::new();
    let up = cur.operstate == "up";
    if !up {
        let was_up = prev.is_some_and(|p| p.operstate == "up");
        let must = cfg.expected_up.iter().any(|n| n == name);
        let (severity, why) = if was_up {
            (Severity::Error, "went down during the window")
        } else if must {
            (Severity::Error, "is down but is expected up")
        } else {
            (Severity::Info, "is down (unused port?)")
        };
        out.push(NicVerdict {
            severity,
            rule: "nic.link-down",
            evidence: format!("{name} operstate {} {why}", cur.operstate),
        });
    }
    let expected = cfg.expected_speed_mbps.get(name).or_else(|| cfg.expected_speed_mbps.get("*"));
    if let (true, Some(&want), Some(got)) = (up, expected, cur.speed_mbps)
        && got < want
    {
        out.push(NicVerdict {
            severity: Severity::Warning,
            rule: "nic.speed-low",
            evidence: format!(
                "{name} negotiated {got} Mb/s, expected {want} Mb/s (cable, optics or switch port)"
            ),
        });
    }
    out
}

/// Counter checks over one window.
pub fn judge_delta(name: &str, prev: &NicSample, cur: &NicSample, cfg: &NicConfig) -> Vec<NicVerdict> {
    let d = |k: &str| -> u64 {
        match (prev.counters.get(k), cur.counters.get(k)) {
            (Some(a), Some(b)) => b.saturating_sub(*a),
            _ => 0,
        }
    };
    let mut out = Vec::new();
    let packets = (d("rx_packets") + d("tx_packets")).max(1);
    let errors = d("rx_errors") + d("tx_errors");
    let ratio = errors as f64 / packets as f64;
    if errors >= cfg.min_errors && ratio >= cfg.error_ratio_warning {
        let severity = if ratio >= cfg.error_ratio_error { Severity::Error } else { Severity::Warning };
        out.push(NicVerdict {
            severity,
            rule: "nic.errors",
            evidence: format!(
                "{name}: {errors} errors in {packets} packets ({:.3}%); crc {}, missed {}, frame {}, carrier {}",
                ratio * 100.0,
                d("rx_crc_errors"),
                d("rx_missed_errors"),
                d("rx_frame_errors"),
                d("tx_carrier_errors")
            ),
        });
    }
    let drops = d("rx_dropped") + d("tx_dropped") + d("rx_missed_errors");
    let dratio = drops as f64 / packets as f64;
    if drops >= cfg.min_drops && dratio >= cfg.drop_ratio_warning {
        out.push(NicVerdict {
            severity: Severity::Warning,
            rule: "nic.drops",
            evidence: format!("{name}: {drops} drops in {packets} packets ({:.2}%)", dratio * 100.0),
        });
    }
    if let (Some(a), Some(b)) = (prev.carrier_changes, cur.carrier_changes) {
        let flaps = b.saturating_sub(a);
        if flaps >= cfg.flaps_warning {
            let severity = if flaps >= cfg.flaps_error { Severity::Error } else { Severity::Warning };
            out.push(NicVerdict {
                severity,
                rule: "nic.flapping",
                evidence: format!("{name}: carrier changed {flaps} times in the window (link flapping)"),
            });
        }
    }
    out
}

/// The NIC checker; keeps the previous sample for deltas.
#[derive(Default)]
pub struct NicChecker {
    pub cfg: NicConfig,
    prev: Option<BTreeMap<String, NicSample>>,
}

impl NicChecker {
    pub fn new(cfg: NicConfig) -> Self {
        NicChecker { cfg, prev: None }
    }
}

impl Checker for NicChecker {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> &'static str {
        VERSION
    }
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Nic]
    }
    fn default_interval(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        let cur = read_sample(&ctx.root, &self.cfg)?;
        let mut out = Vec::new();
        for (name, s) in &cur {
            let object = ObjectId::new(Kind::Nic, &ctx.host, Some(name.as_str()))
                .map_err(|e| CheckError::Malformed(e.to_string()))?;
            let prev = self.prev.as_ref().and_then(|p| p.get(name));
            let mut verdicts = judge_state(name, s, prev, &self.cfg);
            let mut readings: BTreeMap<String, String> = BTreeMap::from([
                ("operstate".into(), s.operstate.clone()),
                ("speed_mbps".into(), s.speed_mbps.map(|v| v.to_string()).unwrap_or_default()),
            ]);
            if let Some(c) = s.carrier_changes {
                readings.insert("carrier_changes".into(), c.to_string());
            }
            match prev {
                Some(p) => {
                    verdicts.extend(judge_delta(name, p, s, &self.cfg));
                    if verdicts.is_empty() {
                        verdicts.push(NicVerdict {
                            severity: Severity::Good,
                            rule: "nic.ok",
                            evidence: format!("{name}: no errors, drops or flaps in the window"),
                        });
                    }
                }
                None => {
                    for (k, v) in &s.counters {
                        readings.insert((*k).to_string(), v.to_string());
                    }
                    if verdicts.is_empty() {
                        verdicts.push(NicVerdict {
                            severity: Severity::Info,
                            rule: "nic.counters",
                            evidence: format!(
                                "{name}: absolute counters since boot (no verdict without a window)"
                            ),
                        });
                    }
                }
            }
            for v in verdicts {
                out.push(
                    Finding {
                        object: object.clone(),
                        severity: v.severity,
                        checker: NAME.into(),
                        version: VERSION.into(),
                        rule: v.rule.into(),
                        evidence: v.evidence,
                        readings: readings.clone(),
                        time_ms: ctx.now_ms,
                        shadow: false,
                    }
                    .bounded(),
                );
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
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/host/procfs")
    }

    fn ctx(root: &Path) -> CheckContext {
        CheckContext { root: root.to_path_buf(), host: "h1".into(), now_ms: 1, profile: "online".into() }
    }

    #[test]
    fn recorded_tree_state_and_proc_net_dev_fallback() {
        let s = read_sample(&tree(), &NicConfig::default()).unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), vec!["eth0"]);
        let e = &s["eth0"];
        assert_eq!((e.operstate.as_str(), e.speed_mbps, e.carrier_changes), ("up", Some(1000), Some(2)));
        assert_eq!(e.counters["rx_packets"], 1036395, "from /proc/net/dev");
        let mut c = NicChecker::default();
        let f = c.run(&ctx(&tree())).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].severity, f[0].rule.as_str()), (Severity::Info, "nic.counters"));
        let mut cfg = NicConfig::default();
        cfg.expected_speed_mbps.insert("*".into(), 25_000);
        let f = NicChecker::new(cfg).run(&ctx(&tree())).unwrap();
        assert_eq!((f[0].severity, f[0].rule.as_str()), (Severity::Warning, "nic.speed-low"));
    }

    fn sample(rx: u64, err: u64, drops: u64, flaps: u64, state: &str) -> NicSample {
        NicSample {
            operstate: state.into(),
            speed_mbps: Some(10_000),
            carrier_changes: Some(flaps),
            counters: BTreeMap::from([("rx_packets", rx), ("rx_errors", err), ("rx_dropped", drops)]),
        }
    }

    #[test]
    fn deltas_at_the_limits() {
        let cfg = NicConfig::default();
        let p = sample(1_000_000, 5, 0, 2, "up");
        let rules = |c: &NicSample| {
            let mut v: Vec<(Severity, &str)> =
                judge_delta("eth0", &p, c, &cfg).iter().map(|v| (v.severity, v.rule)).collect();
            v.extend(judge_state("eth0", c, Some(&p), &cfg).iter().map(|v| (v.severity, v.rule)));
            v
        };
        assert!(rules(&sample(1_010_000, 14, 0, 2, "up")).is_empty(), "9 errors: below min_errors");
        assert_eq!(rules(&sample(1_010_000, 15, 0, 2, "up")), vec![(Severity::Warning, "nic.errors")]);
        assert_eq!(rules(&sample(1_010_000, 205, 0, 2, "up")), vec![(Severity::Error, "nic.errors")]);
        assert_eq!(rules(&sample(1_010_000, 5, 300, 2, "up")), vec![(Severity::Warning, "nic.drops")]);
        assert_eq!(rules(&sample(1_010_000, 5, 0, 3, "up")), vec![]);
        assert_eq!(rules(&sample(1_010_000, 5, 0, 4, "up")), vec![(Severity::Warning, "nic.flapping")]);
        assert_eq!(rules(&sample(1_010_000, 5, 0, 12, "up")), vec![(Severity::Error, "nic.flapping")]);
        assert_eq!(rules(&sample(1_010_000, 5, 0, 2, "down")), vec![(Severity::Error, "nic.link-down")]);
        // Counter reset (driver reload): saturates to 0, no alert.
        assert!(rules(&sample(10, 0, 0, 0, "up")).is_empty());
    }

    #[test]
    fn virtual_interfaces_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        for n in ["lo", "eth1", "veth12", "bond0", "ens3"] {
            std::fs::create_dir_all(d.path().join(format!("sys/class/net/{n}"))).unwrap();
            std::fs::write(d.path().join(format!("sys/class/net/{n}/operstate")), "up\n").unwrap();
        }
        std::fs::write(d.path().join("sys/class/net/eth1/device"), "").unwrap();
        std::fs::write(d.path().join("sys/class/net/ens3/device"), "").unwrap();
        std::fs::create_dir_all(d.path().join("sys/devices/virtual/net/ens3")).unwrap();
        let cfg = NicConfig { include: vec!["bond0".into()], ..NicConfig::default() };
        let s = read_sample(d.path(), &cfg).unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), vec!["bond0", "eth1"]);
        // A missing /sys/class/net is a clear probe error.
        let e = read_sample(&d.path().join("nothing"), &cfg).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
