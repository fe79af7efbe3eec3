//! Mapping the names kernel log lines give disks (`ata3`, SCSI address `2:0:0:0`) to the block device the
//! disk checkers track (`sdb`), through sysfs below the check root. Used by the checker, which has a root;
//! the file-scanning CLI keeps the names as logged.
//!
//! Paths (as on a live system; entries are symlinks that `read_dir` follows):
//! - `sys/class/scsi_device/H:C:T:L/device/block/<name>`
//! - `sys/class/ata_port/ataN/device/hostM/targetM:C:T/M:C:T:L/block/<name>`
//! - `sys/bus/pci/devices/DDDD:BB:DD.F/net/<ifname>` (a NIC line that names only its PCI address)
//! - `sys/block/dm-N/slaves/<dev>` (the devices below a device-mapper device; followed down through
//!   stacked dm devices, partitions mapped to their disks)

use std::path::Path;

/// Most directory entries looked at per level (sysfs directories here hold a handful; this bounds a hostile
/// or broken tree).
const MAX_ENTRIES: usize = 256;

fn entries(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .take(MAX_ENTRIES)
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn is_scsi_addr(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn block_of_scsi_dir(dev: &Path) -> Option<String> {
    entries(&dev.join("block")).into_iter().next()
}

/// The block device behind a disk name from the log, if sysfs under `root` knows it.
pub fn resolve_disk(root: &Path, name: &str) -> Option<String> {
    if is_scsi_addr(name) {
        return block_of_scsi_dir(&root.join("sys/class/scsi_device").join(name).join("device"));
    }
    let port = name.strip_prefix("ata").filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?;
    let dev = root.join("sys/class/ata_port").join(format!("ata{port}")).join("device");
    for host in entries(&dev).into_iter().filter(|e| e.starts_with("host")) {
        let host_dir = dev.join(&host);
        for target in entries(&host_dir).into_iter().filter(|e| e.starts_with("target")) {
            let target_dir = host_dir.join(&target);
            for lun in entries(&target_dir).into_iter().filter(|e| is_scsi_addr(e)) {
                if let Some(b) = block_of_scsi_dir(&target_dir.join(lun)) {
                    return Some(b);
                }
            }
        }
    }
    None
}

/// The EDAC counters of the DIMM a log line labels (`label` as the driver prints it, e.g.
/// `CPU_SrcID#0_Ha#0_Chan#1_DIMM#0`) on controller `mc`: (sysfs path below the mc, CE count, UE count).
/// Looks at `dimm*/dimm_label` (newer drivers) and `csrow*/chN_dimm_label` (older ones). The counters are
/// the kernel's own totals since the driver loaded: the ground truth the log lines sample.
pub fn edac_dimm_counters(root: &Path, mc: &str, label: &str) -> Option<(String, u64, Option<u64>)> {
    if !mc.bytes().all(|b| b.is_ascii_digit()) || mc.is_empty() {
        return None;
    }
    let base = root.join("sys/devices/system/edac/mc").join(format!("mc{mc}"));
    let read = |p: &Path| -> Option<String> {
        let mut v = std::fs::read(p).ok()?;
        v.truncate(256);
        Some(String::from_utf8_lossy(&v).trim().to_string())
    };
    let num = |p: &Path| read(p).and_then(|t| t.parse::<u64>().ok());
    let want = label.trim();
    for d in entries(&base) {
        let dir = base.join(&d);
        if d.starts_with("dimm") || d.starts_with("rank") {
            if read(&dir.join("dimm_label")).is_some_and(|l| l == want) {
                let ce = num(&dir.join("dimm_ce_count"))?;
                return Some((d, ce, num(&dir.join("dimm_ue_count"))));
            }
        } else if d.starts_with("csrow") {
            for ch in 0..16 {
                if read(&dir.join(format!("ch{ch}_dimm_label"))).is_some_and(|l| l == want) {
                    let ce = num(&dir.join(format!("ch{ch}_ce_count")))?;
                    return Some((format!("{d}/ch{ch}"), ce, num(&dir.join(format!("ch{ch}_ue_count")))));
                }
            }
        }
    }
    None
}

/// Deepest dm-on-dm stack followed (LVM on dm-crypt on multipath is 3).
const MAX_DM_DEPTH: usize = 4;

fn valid_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/')
}

/// The network interface of a PCI function (`0000:09:00.0`), if sysfs under `root` has one.
pub fn pci_net(root: &Path, pci: &str) -> Option<String> {
    let pci = super::object::normalize(super::object::Normalize::Pci, pci)?;
    if !valid_component(&pci) {
        return None;
    }
    entries(&root.join("sys/bus/pci/devices").join(&pci).join("net")).into_iter().find(|n| valid_component(n))
}

/// The whole disks below `dm` (`dm-3`), following stacked device-mapper devices; empty when sysfs does not
/// know it. Partitions are mapped to their disks; the result is sorted and without duplicates.
pub fn dm_disks(root: &Path, dm: &str) -> Vec<String> {
    let mut out = Vec::new();
    dm_walk(root, dm, 0, &mut out);
    out.sort();
    out.dedup();
    out
}

fn dm_walk(root: &Path, dev: &str, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DM_DEPTH || !valid_component(dev) {
        return;
    }
    for s in entries(&root.join("sys/block").join(dev).join("slaves")) {
        if s.starts_with("dm-") {
            dm_walk(root, &s, depth + 1, out);
        } else if let Some(d) = super::object::block(&s) {
            out.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_address_and_ata_port_resolve_to_block_devices() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("sys/class/scsi_device/2:0:0:0/device/block/sdb")).unwrap();
        std::fs::create_dir_all(r.join("sys/class/ata_port/ata3/device/host2/target2:0:0/2:0:0:0/block/sdb"))
            .unwrap();
        std::fs::create_dir_all(r.join("sys/class/ata_port/ata4/device/host3/scsi_host")).unwrap();
        assert_eq!(resolve_disk(r, "2:0:0:0").as_deref(), Some("sdb"));
        assert_eq!(resolve_disk(r, "ata3").as_deref(), Some("sdb"));
        assert_eq!(resolve_disk(r, "ata4"), None, "empty port");
        assert_eq!(resolve_disk(r, "ata9"), None);
        assert_eq!(resolve_disk(r, "1:0:0:0"), None);
        assert_eq!(resolve_disk(r, "sda"), None);
        assert_eq!(resolve_disk(r, "ata"), None);
        assert_eq!(resolve_disk(r, "1:0:0"), None);
    }

    #[test]
    fn pci_functions_resolve_to_interfaces_and_dm_to_disks() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("sys/bus/pci/devices/0000:09:00.0/net/eth0")).unwrap();
        assert_eq!(pci_net(r, "0000:09:00.0").as_deref(), Some("eth0"));
        assert_eq!(pci_net(r, "09:00.0").as_deref(), Some("eth0"), "domain added");
        assert_eq!(pci_net(r, "0000:0a:00.0"), None);
        assert_eq!(pci_net(r, "../../x"), None);
        // dm-1 on sdb2 and dm-0, which is on sdc1 and sdb1 (LVM on RAID-less multi-PV)
        std::fs::create_dir_all(r.join("sys/block/dm-1/slaves/sdb2")).unwrap();
        std::fs::create_dir_all(r.join("sys/block/dm-1/slaves/dm-0")).unwrap();
        std::fs::create_dir_all(r.join("sys/block/dm-0/slaves/sdc1")).unwrap();
        std::fs::create_dir_all(r.join("sys/block/dm-0/slaves/sdb1")).unwrap();
        assert_eq!(dm_disks(r, "dm-1"), vec!["sdb".to_string(), "sdc".to_string()]);
        assert!(dm_disks(r, "dm-9").is_empty());
        // a loop in a broken tree ends at the depth limit
        std::fs::create_dir_all(r.join("sys/block/dm-5/slaves/dm-6")).unwrap();
        std::fs::create_dir_all(r.join("sys/block/dm-6/slaves/dm-5")).unwrap();
        assert!(dm_disks(r, "dm-5").is_empty());
    }

    #[test]
    fn edac_counters_by_label() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let d = r.join("sys/devices/system/edac/mc/mc0/dimm3");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dimm_label"), "CPU_SrcID#0_Ha#0_Chan#1_DIMM#0\n").unwrap();
        std::fs::write(d.join("dimm_ce_count"), "42\n").unwrap();
        std::fs::write(d.join("dimm_ue_count"), "0\n").unwrap();
        let c = r.join("sys/devices/system/edac/mc/mc1/csrow2");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("ch1_dimm_label"), "DIMM_B2").unwrap();
        std::fs::write(c.join("ch1_ce_count"), "7").unwrap();
        assert_eq!(
            edac_dimm_counters(r, "0", "CPU_SrcID#0_Ha#0_Chan#1_DIMM#0"),
            Some(("dimm3".to_string(), 42, Some(0)))
        );
        assert_eq!(edac_dimm_counters(r, "1", "DIMM_B2"), Some(("csrow2/ch1".to_string(), 7, None)));
        assert_eq!(edac_dimm_counters(r, "0", "DIMM_B2"), None);
        assert_eq!(edac_dimm_counters(r, "../x", "DIMM_B2"), None);
    }
}
