//! Inventory: the objects that exist on this host (disks with serial/model/firmware, DIMMs, NICs), read
//! from sysfs below the configured root, so the master knows what exists and not only what is broken. A
//! disk is a *slot* (its kernel name); the serial is an attribute, and a new serial in a known slot is how a
//! replacement is recognised.

use std::collections::BTreeMap;
use std::path::Path;

use state_machines::{Kind, ObjectId};

/// Most objects of one kind reported from one host: a guard against a corrupt or hostile sysfs tree.
pub const MAX_OBJECTS_PER_KIND: usize = 4096;
/// Largest sysfs attribute read (they are a few bytes).
const MAX_ATTR_BYTES: u64 = 4096;

/// One object found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: ObjectId,
    pub attributes: BTreeMap<String, String>,
}

fn attr(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_ATTR_BYTES {
        return None;
    }
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.chars().filter(|c| !c.is_control()).take(256).collect())
}

fn sorted_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names.truncate(MAX_OBJECTS_PER_KIND);
    names
}

/// Whether a block device is a physical disk worth a state machine (not a partition, loop, ram, zram,
/// device-mapper, md or optical device).
pub fn is_physical_disk(name: &str) -> bool {
    const VIRTUAL: [&str; 7] = ["loop", "ram", "zram", "dm-", "md", "sr", "nbd"];
    !VIRTUAL.iter().any(|p| name.starts_with(p))
}

/// Disks: /sys/block/X with serial/model/firmware from the device directory (SCSI/ATA: device/{model,
/// vendor,rev,serial,wwid}; NVMe: device/{serial,model,firmware_rev}; virtio: serial).
pub fn disks(root: &Path, host: &str) -> Vec<Item> {
    let block = root.join("sys/block");
    let mut out = Vec::new();
    for name in sorted_dir(&block) {
        if !is_physical_disk(&name) {
            continue;
        }
        let Ok(id) = ObjectId::new(Kind::Disk, host, Some(&name)) else { continue };
        let dev = block.join(&name).join("device");
        let mut a = BTreeMap::new();
        for (key, file) in [
            ("serial", "serial"),
            ("model", "model"),
            ("vendor", "vendor"),
            ("firmware", "firmware_rev"),
            ("firmware", "rev"),
            ("wwid", "wwid"),
        ] {
            if !a.contains_key(key)
                && let Some(v) = attr(&dev.join(file))
            {
                a.insert(key.to_string(), v);
            }
        }
        if let Some(sectors) = attr(&block.join(&name).join("size")).and_then(|s| s.parse::<u64>().ok()) {
            a.insert("capacity_bytes".into(), (sectors * 512).to_string());
        }
        if let Some(rot) = attr(&block.join(&name).join("queue/rotational")) {
            a.insert("rotational".into(), rot);
        }
        out.push(Item { id, attributes: a });
    }
    out
}

/// NICs: /sys/class/net entries backed by a device (physical ports), with MAC, driver speed and state.
pub fn nics(root: &Path, host: &str) -> Vec<Item> {
    let net = root.join("sys/class/net");
    let mut out = Vec::new();
    for name in sorted_dir(&net) {
        let dir = net.join(&name);
        // Virtual interfaces (lo, bridges, veth, ifb, bonds) have no `device` link.
        if !dir.join("device").exists() {
            continue;
        }
        let Ok(id) = ObjectId::new(Kind::Nic, host, Some(&name)) else { continue };
        let mut a = BTreeMap::new();
        for key in ["address", "speed", "operstate", "mtu"] {
            if let Some(v) = attr(&dir.join(key)) {
                a.insert(key.to_string(), v);
            }
        }
        out.push(Item { id, attributes: a });
    }
    out
}

/// DIMMs: EDAC `mc*/dimm*` (or `mc*/csrow*` on older kernels) named `mcN-dimmM` / `mcN-csrowM`.
pub fn dimms(root: &Path, host: &str) -> Vec<Item> {
    let edac = root.join("sys/devices/system/edac/mc");
    let mut out = Vec::new();
    for mc in sorted_dir(&edac).into_iter().filter(|n| n.starts_with("mc")) {
        let mc_dir = edac.join(&mc);
        let entries = sorted_dir(&mc_dir);
        let has_dimm = entries.iter().any(|e| e.starts_with("dimm") || e.starts_with("rank"));
        for entry in entries {
            let is_unit = if has_dimm {
                entry.starts_with("dimm") || entry.starts_with("rank")
            } else {
                entry.starts_with("csrow")
            };
            if !is_unit || out.len() >= MAX_OBJECTS_PER_KIND {
                continue;
            }
            let Ok(id) = ObjectId::new(Kind::Dimm, host, Some(&format!("{mc}-{entry}"))) else { continue };
            let mut a = BTreeMap::new();
            let dir = mc_dir.join(&entry);
            for (key, file) in [
                ("label", "dimm_label"),
                ("size_mb", "size"),
                ("size_mb", "size_mb"),
                ("type", "dimm_mem_type"),
            ] {
                if !a.contains_key(key)
                    && let Some(v) = attr(&dir.join(file))
                {
                    a.insert(key.to_string(), v);
                }
            }
            out.push(Item { id, attributes: a });
        }
    }
    out
}

/// Everything on the host, machine first.
pub fn collect(root: &Path, host: &str) -> Vec<Item> {
    let mut out = Vec::new();
    if let Ok(id) = ObjectId::machine(host) {
        let mut a = BTreeMap::new();
        if let Some(v) = attr(&root.join("proc/sys/kernel/osrelease")) {
            a.insert("kernel".into(), v);
        }
        if let Some(v) = attr(&root.join("sys/class/dmi/id/product_name")) {
            a.insert("product".into(), v);
        }
        out.push(Item { id, attributes: a });
    }
    out.extend(disks(root, host));
    out.extend(dimms(root, host));
    out.extend(nics(root, host));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn reads_disks_nics_and_dimms_from_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "sys/block/sda/device/serial", "WD-WCC4E1234567\n");
        write(r, "sys/block/sda/device/model", "WDC WD40EFRX-68N\n");
        write(r, "sys/block/sda/device/rev", "0A82\n");
        write(r, "sys/block/sda/size", "7814037168\n");
        write(r, "sys/block/nvme0n1/device/serial", "S4EWNX0N123456\n");
        write(r, "sys/block/nvme0n1/device/firmware_rev", "2B2QEXM7\n");
        write(r, "sys/block/loop0/size", "0\n");
        write(r, "sys/block/dm-0/size", "0\n");
        write(r, "sys/class/net/eth0/device/vendor", "0x8086\n");
        write(r, "sys/class/net/eth0/address", "02:fc:00:00:00:01\n");
        write(r, "sys/class/net/eth0/speed", "25000\n");
        write(r, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write(r, "sys/devices/system/edac/mc/mc0/dimm3/dimm_label", "CPU_SrcID#0_Ha#0_Chan#1_DIMM#0\n");
        write(r, "sys/devices/system/edac/mc/mc0/dimm3/size", "16384\n");
        let items = collect(r, "h1");
        let ids: Vec<String> = items.iter().map(|i| i.id.to_string()).collect();
        assert_eq!(ids, ["machine/h1", "disk/h1/nvme0n1", "disk/h1/sda", "dimm/h1/mc0-dimm3", "nic/h1/eth0"]);
        let sda = &items[2].attributes;
        assert_eq!(sda["serial"], "WD-WCC4E1234567");
        assert_eq!(sda["firmware"], "0A82");
        assert_eq!(sda["capacity_bytes"], (7814037168u64 * 512).to_string());
        assert_eq!(items[1].attributes["firmware"], "2B2QEXM7");
        assert_eq!(items[3].attributes["label"], "CPU_SrcID#0_Ha#0_Chan#1_DIMM#0");
        assert_eq!(items[4].attributes["speed"], "25000");
    }

    #[test]
    fn csrow_layout_and_missing_tree() {
        let dir = tempfile::tempdir().unwrap();
        // The recorded node_exporter tree has the older csrow layout.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sys-edac");
        let items = dimms(&fixture, "h1");
        let ids: Vec<String> = items.iter().map(|i| i.id.to_string()).collect();
        assert_eq!(ids, ["dimm/h1/mc0-csrow0", "dimm/h1/mc0-csrow1", "dimm/h1/mc0-csrow2"]);
        // A host without sysfs still yields the machine object and nothing else, no error.
        let items = collect(dir.path(), "h1");
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn hostile_attribute_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sys/block/sda/device/serial", &"X".repeat(10_000));
        write(dir.path(), "sys/block/sda/device/model", "a\u{7}b\n");
        let items = disks(dir.path(), "h1");
        assert!(!items[0].attributes.contains_key("serial"), "oversized attribute ignored");
        assert_eq!(items[0].attributes["model"], "ab");
    }
}
