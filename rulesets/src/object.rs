//! Object-name normalisation for kernel-log findings: turns what a log line names (a partition, an NVMe
//! namespace, an EDAC DIMM label, an interface) into the name of the object the state machines track
//! (`sdb1` -> `sdb`, `nvme0n1p2` -> `nvme0n1`, `CPU_SrcID#0_Chan#1_DIMM#0` -> `cpu_srcid0_chan1_dimm0`).
//!
//! Normalisation is a pure function of the text. It returns `None` for names that are not hardware we track
//! (loop, ram, zram and nbd devices: an I/O error on a loop device says nothing about a disk), and for names
//! that would not form a valid object id.

use serde::Deserialize;

/// How a captured name is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Keep the text (only validated).
    None,
    /// Block devices: partitions to their whole disk, virtual devices dropped.
    Block,
    /// Network interfaces: kept, validated.
    Nic,
    /// DIMM/memory-controller labels: lowercased, `#` dropped, other odd characters to `_`.
    Dimm,
    /// PCI addresses: lowercased, `0000:` domain added when missing.
    Pci,
}

/// Longest object name produced (matches `state_machines::id::MAX_NAME_LEN`).
const MAX_NAME: usize = state_machines::id::MAX_NAME_LEN;

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'@' | b'+'))
}

/// Normalise `raw` per `how`. `None` means "no trackable object here".
pub fn normalize(how: Normalize, raw: &str) -> Option<String> {
    let raw = raw.trim_matches(|c: char| c == '[' || c == ']' || c == ',' || c == ':' || c.is_whitespace());
    let out = match how {
        Normalize::None | Normalize::Nic => raw.to_string(),
        Normalize::Block => block(raw)?,
        Normalize::Dimm => dimm(raw),
        Normalize::Pci => pci(raw)?,
    };
    valid_name(&out).then_some(out)
}

/// Block device names to the whole-disk name the disk checkers use.
pub fn block(raw: &str) -> Option<String> {
    let name = raw.strip_prefix("/dev/").unwrap_or(raw);
    // Virtual devices carry no hardware verdict.
    for virt in ["loop", "ram", "zram", "nbd"] {
        if name.strip_prefix(virt).is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit())) {
            return None;
        }
    }
    // NVMe: nvme0n1p2 -> nvme0n1; a bare controller nvme4 -> nvme4n1 (nearly every drive has one
    // namespace; the controller is what the log names on timeouts and resets); nvme0c1n1 (multipath
    // path device) -> nvme0n1.
    if let Some(rest) = name.strip_prefix("nvme") {
        let ctrl: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if ctrl.is_empty() {
            return None;
        }
        let after = &rest[ctrl.len()..];
        let after = match after.strip_prefix('c') {
            Some(a) => a.trim_start_matches(|c: char| c.is_ascii_digit()),
            None => after,
        };
        let ns = after
            .strip_prefix('n')
            .map(|a| a.chars().take_while(char::is_ascii_digit).collect::<String>())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "1".to_string());
        return Some(format!("nvme{ctrl}n{ns}"));
    }
    // mmcblk0p1 -> mmcblk0
    if let Some(rest) = name.strip_prefix("mmcblk") {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        return (!n.is_empty()).then(|| format!("mmcblk{n}"));
    }
    // dm-3, md0, md127 (and md0p1 -> md0) are kept: they are their own objects (the agent may map a dm
    // device to its slaves from sysfs).
    if name.starts_with("dm-") {
        return Some(name.to_string());
    }
    if let Some(rest) = name.strip_prefix("md") {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !n.is_empty() {
            return Some(format!("md{n}"));
        }
    }
    // sd/hd/vd/xvd + letters + optional partition digits.
    for prefix in ["sd", "hd", "vd", "xvd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let letters: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            if !letters.is_empty() && rest[letters.len()..].bytes().all(|b| b.is_ascii_digit()) {
                return Some(format!("{prefix}{letters}"));
            }
        }
    }
    Some(name.to_string())
}

fn dimm(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '#' => {}
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':') => {
                out.push(c.to_ascii_lowercase())
            }
            _ => {
                if !out.ends_with('_') {
                    out.push('_')
                }
            }
        }
    }
    out.trim_matches('_').to_string()
}

fn pci(raw: &str) -> Option<String> {
    let s = raw.strip_prefix("PCI:").unwrap_or(raw).to_ascii_lowercase();
    let ok = s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    if !ok || !s.contains(':') {
        return None;
    }
    // bus:dev.fn without a domain gets the usual domain 0000.
    if s.matches(':').count() == 1 { Some(format!("0000:{s}")) } else { Some(s) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_partitions_map_to_disks() {
        let cases = [
            ("sda1", Some("sda")),
            ("sda", Some("sda")),
            ("sdaa12", Some("sdaa")),
            ("/dev/sdb3", Some("sdb")),
            ("vda1", Some("vda")),
            ("xvdf2", Some("xvdf")),
            ("nvme0n1p2", Some("nvme0n1")),
            ("nvme0n1", Some("nvme0n1")),
            ("nvme4", Some("nvme4n1")),
            ("nvme0c1n1", Some("nvme0n1")),
            ("nvme12n3p1", Some("nvme12n3")),
            ("mmcblk0p1", Some("mmcblk0")),
            ("dm-0", Some("dm-0")),
            ("md127", Some("md127")),
            ("md0p1", Some("md0")),
            ("loop0", None),
            ("ram3", None),
            ("zram0", None),
            ("nbd1", None),
            ("nvme", None),
            ("sr0", Some("sr0")),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(Normalize::Block, raw).as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn dimm_pci_and_invalid_names() {
        assert_eq!(
            normalize(Normalize::Dimm, "mc0-CPU_SrcID#0_Ha#0_Chan#1_DIMM#0").as_deref(),
            Some("mc0-cpu_srcid0_ha0_chan1_dimm0")
        );
        assert_eq!(normalize(Normalize::Dimm, "mc1-DIMM A1").as_deref(), Some("mc1-dimm_a1"));
        assert_eq!(normalize(Normalize::Pci, "0000:5C:00.0").as_deref(), Some("0000:5c:00.0"));
        assert_eq!(normalize(Normalize::Pci, "PCI:0000:9b:00").as_deref(), Some("0000:9b:00"));
        assert_eq!(normalize(Normalize::Pci, "03:00.1").as_deref(), Some("0000:03:00.1"));
        assert_eq!(normalize(Normalize::Pci, "zz:00.1"), None);
        assert_eq!(normalize(Normalize::Nic, "eth0:").as_deref(), Some("eth0"));
        assert_eq!(normalize(Normalize::Nic, "bad/name"), None);
        assert_eq!(normalize(Normalize::None, ""), None);
        assert_eq!(normalize(Normalize::None, &"x".repeat(200)), None);
    }
}
