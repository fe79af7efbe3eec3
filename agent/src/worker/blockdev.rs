//! Positive identification of a disk slot before anything destructive: the slot's serial (from the
//! configured sysfs root), its device node (a whole block device), its partitions, holders, swap use and
//! mounts (from `/proc/self/mountinfo`, matched by `major:minor`, never by path), and whether it holds the
//! root filesystem. Read-only: nothing here changes the system.

use crate::worker::StepError;
use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// Largest sysfs attribute or small proc file read (serials, uevent, dev are a few bytes).
const MAX_ATTR_BYTES: u64 = 4096;
/// Largest mountinfo read: a container host has thousands of mounts, about 200 bytes each.
const MAX_MOUNTINFO_BYTES: u64 = 8 * 1024 * 1024;
/// Most partitions or holders considered on one disk (GPT allows 128 by default).
pub const MAX_PARTITIONS: usize = 256;
/// Deepest device-mapper / md stacking followed from the root filesystem down to its disks.
const MAX_STACK_DEPTH: usize = 8;

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNum {
    /// Split a Linux `dev_t` (glibc's encoding: 12-bit major and 20-bit minor, split across the word).
    pub fn from_rdev(dev: u64) -> Self {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        DevNum { major: major as u32, minor: minor as u32 }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.trim().split_once(':')?;
        Some(DevNum { major: a.parse().ok()?, minor: b.parse().ok()? })
    }
}

/// One mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub dev: DevNum,
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// A partition of the slot's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub dev: DevNum,
    /// The device node, when it exists and carries the partition's number.
    pub node: Option<PathBuf>,
}

/// What identification established about a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub slot: String,
    pub serial: String,
    pub model: Option<String>,
    /// The real device node (symlinks resolved).
    pub node: PathBuf,
    pub dev: DevNum,
    pub partitions: Vec<Partition>,
    /// Mounts of the disk or its partitions that are ours (staging or real mount point of this slot).
    pub our_mounts: Vec<MountEntry>,
}

fn read_small(path: &Path, cap: u64) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > cap {
        return None;
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn attr(path: &Path) -> Option<String> {
    let s = read_small(path, MAX_ATTR_BYTES)?;
    let s: String = s.trim().chars().filter(|c| !c.is_control()).take(256).collect();
    (!s.is_empty()).then_some(s)
}

/// SCSI VPD page 0x80 (unit serial number): a 4-byte header, then the ASCII serial.
fn vpd_pg80(path: &Path) -> Option<String> {
    let raw = std::fs::read(path).ok()?;
    let body = raw.get(4..)?;
    let s: String = String::from_utf8_lossy(body).trim().chars().filter(|c| c.is_ascii_graphic()).collect();
    (!s.is_empty()).then_some(s)
}

/// A slot name usable as one path component (ObjectId names allow `.` and `..` as strings).
pub fn valid_slot(slot: &str) -> bool {
    let p = Path::new(slot);
    !slot.is_empty()
        && p.components().count() == 1
        && matches!(p.components().next(), Some(Component::Normal(_)))
}

/// The serial in the slot: `device/serial` (SCSI/ATA/NVMe), `serial` (virtio), `device/wwid`, then VPD
/// page 0x80, as inventory does.
pub fn read_serial(sys_root: &Path, slot: &str) -> Option<String> {
    let base = sys_root.join("block").join(slot);
    attr(&base.join("device/serial"))
        .or_else(|| attr(&base.join("serial")))
        .or_else(|| attr(&base.join("device/wwid")))
        .or_else(|| vpd_pg80(&base.join("device/vpd_pg80")))
}

pub fn read_model(sys_root: &Path, slot: &str) -> Option<String> {
    attr(&sys_root.join("block").join(slot).join("device/model"))
}

use checkers::machine::unescape;

/// Parse `/proc/self/mountinfo` (with the checkers' parser) keeping `major:minor`, mount point and type.
/// Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    checkers::machine::parse_mountinfo(text)
        .into_iter()
        .filter_map(|m| {
            Some(MountEntry {
                dev: DevNum::parse(&m.dev)?,
                mount_point: PathBuf::from(m.mount_point),
                fstype: m.fstype,
            })
        })
        .collect()
}

/// Current mounts of the agent's namespace.
pub fn mounts(proc_root: &Path) -> Result<Vec<MountEntry>, StepError> {
    let p = proc_root.join("self/mountinfo");
    let text = read_small(&p, MAX_MOUNTINFO_BYTES)
        .ok_or_else(|| StepError::Failed(format!("cannot read {}", p.display())))?;
    Ok(parse_mountinfo(&text))
}

/// Device numbers of active swap areas (`/proc/swaps` names paths; stat them).
pub fn swap_devices(proc_root: &Path) -> Vec<DevNum> {
    let Some(text) = read_small(&proc_root.join("swaps"), MAX_ATTR_BYTES * 64) else { return Vec::new() };
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| std::fs::metadata(unescape(p)).ok())
        .filter(|m| m.file_type().is_block_device())
        .map(|m| DevNum::from_rdev(m.rdev()))
        .collect()
}

fn sys_dir(block_sys: &Path, dev: DevNum) -> PathBuf {
    block_sys.join(dev.to_string())
}

/// The whole disk holding `dev` (itself when it is not a partition).
fn whole_disk_of(block_sys: &Path, dev: DevNum) -> Option<DevNum> {
    let dir = std::fs::canonicalize(sys_dir(block_sys, dev)).ok()?;
    if dir.join("partition").exists() {
        attr(&dir.parent()?.join("dev")).and_then(|s| DevNum::parse(&s))
    } else {
        Some(dev)
    }
}

/// The disks under `dev`, following device-mapper / md `slaves` down to real disks.
fn base_disks(block_sys: &Path, dev: DevNum, depth: usize, out: &mut BTreeSet<DevNum>) {
    let Some(disk) = whole_disk_of(block_sys, dev) else { return };
    out.insert(disk);
    if depth >= MAX_STACK_DEPTH {
        return;
    }
    let slaves = sys_dir(block_sys, dev).join("slaves");
    for name in list(&slaves) {
        if let Some(d) = attr(&slaves.join(&name).join("dev")).and_then(|s| DevNum::parse(&s)) {
            base_disks(block_sys, d, depth + 1, out);
        }
    }
}

/// The disk(s) holding `/` (empty when `/` is on a virtual filesystem such as overlay or tmpfs, whose
/// device has major 0).
pub fn root_disks(block_sys: &Path, mounts: &[MountEntry]) -> BTreeSet<DevNum> {
    let mut out = BTreeSet::new();
    // The last mount on "/" is the visible one.
    if let Some(root) = mounts.iter().rev().find(|m| m.mount_point == Path::new("/"))
        && root.dev.major != 0
    {
        base_disks(block_sys, root.dev, 0, &mut out);
    }
    out
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v.truncate(MAX_PARTITIONS);
    v
}

/// The partitions of the disk `dev` as the kernel knows them, with their nodes in `devfs`.
pub fn partitions(block_sys: &Path, dev: DevNum, devfs: &Path) -> Vec<Partition> {
    let dir = sys_dir(block_sys, dev);
    let mut out = Vec::new();
    for name in list(&dir) {
        let pdir = dir.join(&name);
        if !pdir.join("partition").exists() {
            continue;
        }
        let Some(pdev) = attr(&pdir.join("dev")).and_then(|s| DevNum::parse(&s)) else { continue };
        let devname = read_small(&pdir.join("uevent"), MAX_ATTR_BYTES)
            .and_then(|u| u.lines().find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string)))
            .unwrap_or_else(|| name.clone());
        let node = Path::new(&devname)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
            .then(|| devfs.join(&devname))
            .filter(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.file_type().is_block_device() && DevNum::from_rdev(m.rdev()) == pdev)
            });
        out.push(Partition { name, dev: pdev, node });
    }
    out
}

/// Holders (device-mapper, md, bcache) stacked on `dev`.
pub fn holders(block_sys: &Path, dev: DevNum) -> Vec<String> {
    list(&sys_dir(block_sys, dev).join("holders"))
}

/// What the caller knows about the slot, to be checked against what is in it now.
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    /// The serial the master knew before the replacement.
    pub old_serial: Option<&'a str>,
    /// The serial the master saw appear (when it already saw one).
    pub new_serial: Option<&'a str>,
}

/// Roots of the identification: from the worker config.
#[derive(Debug, Clone)]
pub struct Roots<'a> {
    pub sys_root: &'a Path,
    pub dev_root: &'a Path,
    pub block_sys: &'a Path,
    pub proc_root: &'a Path,
}

/// Establish that the slot holds the replacement and that nothing uses it. `ours` are the mount points
/// this slot may already be mounted at by an earlier run of ours (staging, real); any other mount, a
/// holder, a swap area or the root filesystem on the disk is a refusal. Errors are refusal reasons.
pub fn identify(
    roots: &Roots<'_>,
    slot: &str,
    expect: &Expect<'_>,
    ours: &[PathBuf],
) -> Result<Identity, StepError> {
    if !valid_slot(slot) {
        return Err(StepError::Refused(format!("slot {slot:?} is not a device name")));
    }
    let link = roots.dev_root.join(slot);
    let meta =
        std::fs::metadata(&link).map_err(|e| StepError::Refused(format!("{}: {e}", link.display())))?;
    if !meta.file_type().is_block_device() {
        return Err(StepError::Refused(format!("{} is not a block device", link.display())));
    }
    let node =
        std::fs::canonicalize(&link).map_err(|e| StepError::Refused(format!("{}: {e}", link.display())))?;
    let dev = DevNum::from_rdev(meta.rdev());
    let sys = sys_dir(roots.block_sys, dev);
    if !sys.exists() {
        return Err(StepError::Refused(format!(
            "{} ({dev}) is not known to the kernel's block layer",
            node.display()
        )));
    }
    if sys.join("partition").exists() {
        return Err(StepError::Refused(format!(
            "{} ({dev}) is a partition, not a whole disk",
            node.display()
        )));
    }

    let serial = read_serial(roots.sys_root, slot).ok_or_else(|| {
        StepError::Refused(format!("slot {slot}: no serial readable under {}", roots.sys_root.display()))
    })?;
    match (expect.old_serial, expect.new_serial) {
        (None, None) => {
            return Err(StepError::Refused(format!(
                "slot {slot}: neither the old nor the new serial was given; cannot tell a replacement"
            )));
        }
        (Some(old), _) if old == serial => {
            return Err(StepError::Refused(format!(
                "slot {slot} still holds the old disk (serial {serial}): not a replacement"
            )));
        }
        (_, Some(new)) if new != serial => {
            return Err(StepError::Refused(format!(
                "slot {slot} holds serial {serial}, not the expected replacement {new}"
            )));
        }
        _ => {}
    }

    let all_mounts = mounts(roots.proc_root)?;
    if root_disks(roots.block_sys, &all_mounts).contains(&dev) {
        return Err(StepError::Refused(format!("{} ({dev}) holds the root filesystem", node.display())));
    }
    let devfs = node.parent().unwrap_or(Path::new("/dev")).to_path_buf();
    let parts = partitions(roots.block_sys, dev, &devfs);
    let mut devs: BTreeSet<DevNum> = parts.iter().map(|p| p.dev).collect();
    devs.insert(dev);
    for d in &devs {
        let h = holders(roots.block_sys, *d);
        if !h.is_empty() {
            return Err(StepError::Refused(format!(
                "{} ({d}) is in use by {}",
                node.display(),
                h.join(", ")
            )));
        }
    }
    if let Some(s) = swap_devices(roots.proc_root).into_iter().find(|s| devs.contains(s)) {
        return Err(StepError::Refused(format!("{} has an active swap area ({s})", node.display())));
    }
    let mut our_mounts = Vec::new();
    for m in all_mounts.iter().filter(|m| devs.contains(&m.dev)) {
        let is_partition = m.dev != dev;
        if is_partition && ours.iter().any(|o| o == &m.mount_point) {
            our_mounts.push(m.clone());
        } else {
            return Err(StepError::Refused(format!(
                "{} ({}) is mounted at {}",
                node.display(),
                m.dev,
                m.mount_point.display()
            )));
        }
    }
    Ok(Identity {
        slot: slot.to_string(),
        serial,
        model: read_model(roots.sys_root, slot),
        node,
        dev,
        partitions: parts,
        our_mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers() {
        assert_eq!(DevNum::from_rdev(0x0700), DevNum { major: 7, minor: 0 });
        // 259:65536 (large minors of NVMe partitions use the high bits).
        let rdev: u64 = (259 << 8) | ((65536u64 & !0xff) << 12);
        assert_eq!(DevNum::from_rdev(rdev), DevNum { major: 259, minor: 65536 });
        assert_eq!(DevNum::parse("8:16"), Some(DevNum { major: 8, minor: 16 }));
        assert_eq!(DevNum::parse("8"), None);
        assert_eq!(DevNum::parse("a:b"), None);
    }

    #[test]
    fn mountinfo_keeps_device_numbers_and_escapes() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    90 27 259:3 / /data/my\\040disk rw - xfs /dev/sdb1 rw\n\
                    garbage line\n\
                    91 27 x:y / /bad rw - ext4 /dev/x rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, DevNum { major: 254, minor: 0 });
        assert_eq!(m[1].mount_point, Path::new("/data/my disk"));
        assert_eq!(m[1].fstype, "xfs");
    }

    #[test]
    fn slot_names_are_single_components() {
        assert!(valid_slot("sdb") && valid_slot("nvme0n1") && valid_slot("loop-a"));
        for bad in ["", ".", "..", "a/b", "/sdb"] {
            assert!(!valid_slot(bad), "{bad:?}");
        }
    }

    #[test]
    fn serial_sources_in_order() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("block/sdx/device");
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(read_serial(d.path(), "sdx"), None);
        let mut pg80 = vec![0u8, 0x80, 0, 8];
        pg80.extend_from_slice(b"  ZA1B2C ");
        std::fs::write(b.join("vpd_pg80"), &pg80).unwrap();
        assert_eq!(read_serial(d.path(), "sdx").as_deref(), Some("ZA1B2C"));
        std::fs::write(b.join("wwid"), "naa.5000c500a1b2c3d4\n").unwrap();
        assert_eq!(read_serial(d.path(), "sdx").as_deref(), Some("naa.5000c500a1b2c3d4"));
        std::fs::write(b.join("serial"), "WD-123\n").unwrap();
        assert_eq!(read_serial(d.path(), "sdx").as_deref(), Some("WD-123"));
        std::fs::write(b.join("serial"), "x".repeat(10_000)).unwrap();
        assert_eq!(
            read_serial(d.path(), "sdx").as_deref(),
            Some("naa.5000c500a1b2c3d4"),
            "oversized skipped"
        );
    }

    #[test]
    fn this_hosts_root_disk_is_found() {
        // On the live system "/" must map to some disk unless it is a virtual filesystem.
        let m = mounts(Path::new("/proc")).unwrap();
        let root = m.iter().rev().find(|e| e.mount_point == Path::new("/")).unwrap();
        let disks = root_disks(Path::new("/sys/dev/block"), &m);
        assert_eq!(disks.is_empty(), root.dev.major == 0, "root {root:?} -> {disks:?}");
    }
}
