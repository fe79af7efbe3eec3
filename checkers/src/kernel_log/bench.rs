//! Benchmark inputs for `huatuo bench rules`: a large deterministic mix of real-format benign and fault
//! lines (taken from the recorded fixtures in `checkers/testdata/kernel-log/bench/`), and a generated
//! rule set of realistic size (the default rules plus driver-specific variants) to compare against.

use std::fmt::Write as _;

use super::rules::DEFAULT_RULES;

/// Benign kernel log lines in their recorded formats (raw kmsg, dmesg, syslog, journal).
pub const BENIGN: &str = include_str!("../../testdata/kernel-log/bench/benign.log");
/// Fault lines in their recorded formats.
pub const FAULTS: &str = include_str!("../../testdata/kernel-log/bench/faults.log");

/// A small deterministic generator (xorshift64*), seeded by the caller; never the global RNG.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("##")).collect()
}

/// `n` lines, about `fault_permille`/1000 of them fault lines, as one newline-separated buffer.
pub fn corpus(n: usize, fault_permille: u32, seed: u64) -> Vec<u8> {
    let benign = lines(BENIGN);
    let faults = lines(FAULTS);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * 100);
    for _ in 0..n {
        let l = if (rng.below(1000) as u32) < fault_permille {
            faults[rng.below(faults.len())]
        } else {
            benign[rng.below(benign.len())]
        };
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

const NIC_DRIVERS: &[&str] = &[
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "mlx5_core",
    "mlx4_en",
    "tg3",
    "r8169",
    "be2net",
    "qede",
    "nfp",
    "hinic",
    "ena",
    "gve",
    "vmxnet3",
    "sfc",
    "cxgb4",
    "enic",
    "liquidio",
    "atlantic",
    "txgbe",
];
const NIC_EVENTS: &[(&str, &str, &str)] = &[
    ("fw-fault", "firmware fault detected", "ERROR"),
    ("pcie-link-lost", "PCIe link lost", "FATAL"),
    ("adapter-hang", "adapter hang detected, resetting", "ERROR"),
    ("rx-stall", "RX queue stalled", "WARNING"),
    ("tx-hang", "TX hang detected on queue", "ERROR"),
    ("eeprom-bad", "EEPROM checksum is not valid", "ERROR"),
];
const HBA_DRIVERS: &[&str] = &[
    "mpt3sas",
    "megaraid_sas",
    "aacraid",
    "hpsa",
    "smartpqi",
    "qla2xxx",
    "lpfc",
    "mpi3mr",
    "pm80xx",
    "isci",
    "arcmsr",
    "3w-9xxx",
    "mvsas",
    "hisi_sas",
    "ahci",
    "nvme",
];
const HBA_EVENTS: &[(&str, &str, &str)] = &[
    ("fw-fault", "FW fault occurred", "ERROR"),
    ("adapter-reset", "adapter reset initiated", "WARNING"),
    ("task-abort", "task abort issued for", "WARNING"),
    ("ioc-fault", "IOC in fault state", "ERROR"),
    ("cmd-timeout", "command timed out after", "WARNING"),
];

/// The default rules plus generated driver-specific rules, `total` rules in all (at least the default
/// count). Each generated rule has its own keyword and a capture-extracting pattern, like real rules.
pub fn synthetic_rules(total: usize) -> String {
    let mut out = String::from(DEFAULT_RULES);
    let defaults = out.matches("[[rule]]").count();
    let mut made = defaults;
    'outer: for (ev, text, sev) in NIC_EVENTS {
        for d in NIC_DRIVERS {
            if made >= total {
                break 'outer;
            }
            let slug = d.replace('_', "-");
            let _ = write!(
                out,
                "\n[[rule]]\nid = \"nic.{slug}.{ev}\"\nkeywords = [\"{text}\"]\n\
                 pattern = '^{d} [0-9a-f]{{4}}:[0-9a-f]{{2}}:[0-9a-f]{{2}}\\.[0-7] (?P<nic>[A-Za-z][A-Za-z0-9_.-]*): {text}'\n\
                 kind = \"nic\"\nobject = \"{{nic}}\"\nseverity = \"{sev}\"\n"
            );
            made += 1;
        }
    }
    'outer2: for (ev, text, sev) in HBA_EVENTS {
        for d in HBA_DRIVERS {
            if made >= total {
                break 'outer2;
            }
            let slug = d.replace('_', "-");
            let _ = write!(
                out,
                "\n[[rule]]\nid = \"disk.{slug}.{ev}\"\nkeywords = [\"{text}\"]\n\
                 pattern = '^{d} (?P<pci>[0-9a-f]{{4}}:[0-9a-f]{{2}}:[0-9a-f]{{2}}\\.[0-7]): (?:\\S+: )?{text}'\n\
                 kind = \"machine\"\nseverity = \"{sev}\"\n"
            );
            made += 1;
        }
    }
    let mut i = 0;
    while made < total {
        let _ = write!(
            out,
            "\n[[rule]]\nid = \"vendor.event-{i}\"\nkeywords = [\"VNDR{i:04} event\"]\n\
             pattern = 'VNDR{i:04} event (?P<code>0x[0-9a-f]+)'\nkind = \"machine\"\nseverity = \"WARNING\"\n"
        );
        made += 1;
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_log::RuleSet;

    #[test]
    fn synthetic_rules_compile_to_the_asked_size() {
        let text = synthetic_rules(200);
        let set = RuleSet::from_sources(&[("synthetic.toml".into(), text)]).unwrap();
        assert_eq!(set.len(), 200);
    }

    #[test]
    fn corpus_is_deterministic_and_mixes_faults() {
        let a = corpus(2000, 15, 7);
        assert_eq!(a, corpus(2000, 15, 7));
        assert_eq!(a.iter().filter(|&&b| b == b'\n').count(), 2000);
        let fault_lines = lines(FAULTS);
        let n = a.split(|&b| b == b'\n').filter(|l| fault_lines.iter().any(|f| f.as_bytes() == *l)).count();
        assert!((10..=60).contains(&n), "{n} fault lines in 2000 at 1.5%");
    }
}
