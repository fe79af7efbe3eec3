//! Disk NEWBIE (provision) and TEST on a replaced disk in a slot.
//!
//! Provision: identify the replacement, then one GPT partition (sfdisk; `partx -u` when the kernel does
//! not re-read the table itself), mkfs with our label `{label_prefix}{slot}`, pre-mount at
//! `{staging_root}/{slot}`. A disk whose single partition already carries our label is not touched
//! again: the re-run only makes sure it is pre-mounted.
//!
//! Test: identify, require our filesystem, SMART verdict and short self-test where supported, the
//! O_DIRECT benchmark in the staging mount against the model's or profile's thresholds; pass -> move the
//! mount from staging to `{mount_root}/{slot}`; fail -> unmount (the disk goes back to REPAIR unmounted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::blockdev::{self, Expect, Identity, Partition, Roots};
use super::config::{MAX_LABEL_LEN, Thresholds, WorkerConfig};
use super::exec::{Exec, expand};
use super::{ActionRequest, Finish, Outcome, bench, smart};
use crate::worker::StepError;

/// How long we wait for the kernel to show a new partition (sysfs + devtmpfs node) after the table was
/// written or re-read: it is synchronous on a healthy kernel; this covers a slow udev.
pub const PARTITION_WAIT: Duration = Duration::from_secs(3);
/// How long we give the kernel's own re-read (sfdisk's BLKRRPART) before adding the partition from user
/// space with `partx`: a kernel with a GPT parser shows it at once; one without never will.
pub const KERNEL_REREAD_WAIT: Duration = Duration::from_millis(200);
/// Poll interval of that wait.
const PARTITION_POLL: Duration = Duration::from_millis(20);
/// Timeout of the quick read-only tools (blkid) and of mount/umount.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// The Linux filesystem partition type GUID: one partition spanning the disk, 1 MiB aligned.
const SFDISK_SCRIPT: &str = "label: gpt\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n";
/// Tries of an unmount refused with "target is busy": a file system just written and read is often held
/// for a moment by someone else (blkid or udev probing it, a directory walk, an indexer). A CI run saw
/// one TEST fail so (2026-12-05) while the same action on the disk beside it unmounted at once.
const UMOUNT_TRIES: u32 = 5;
/// The wait before the second try; the n-th waits n times this (2 s in all before the last).
const UMOUNT_RETRY_AFTER: Duration = Duration::from_millis(200);
/// Name of the benchmark file in the staging mount (removed after the run).
const BENCH_FILE: &str = ".huatuo-bench";

fn roots(cfg: &WorkerConfig) -> Roots<'_> {
    Roots {
        sys_root: &cfg.sys_root,
        dev_root: &cfg.dev_root,
        block_sys: &cfg.block_sys,
        proc_root: &cfg.proc_root,
    }
}

/// Our filesystem label for a slot.
pub fn label_for(cfg: &WorkerConfig, slot: &str) -> String {
    let max = if cfg.disk.fs_type == "xfs" { 12 } else { MAX_LABEL_LEN };
    format!("{}{slot}", cfg.disk.label_prefix).chars().take(max).collect()
}

pub fn staging_dir(cfg: &WorkerConfig, slot: &str) -> PathBuf {
    cfg.disk.staging_root.join(slot)
}

pub fn real_dir(cfg: &WorkerConfig, slot: &str) -> PathBuf {
    cfg.disk.mount_root.join(slot)
}

/// What the disk carries now.
#[derive(Debug, Clone)]
struct DiskState {
    /// The single partition carries our filesystem and label.
    ours: Option<Partition>,
    /// What blkid said, for the report.
    seen: String,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn tool(name: &str) -> String {
    name.to_string()
}

/// Parse `blkid -o export` (`KEY=value` lines).
pub fn parse_blkid(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn inspect(cfg: &WorkerConfig, ex: &mut Exec, id: &Identity, label: &str) -> DiskState {
    let parts: Vec<&Partition> = id.partitions.iter().collect();
    if parts.len() != 1 {
        return DiskState { ours: None, seen: format!("{} partitions", parts.len()) };
    }
    let p = parts[0];
    let Some(node) = &p.node else {
        return DiskState { ours: None, seen: format!("partition {} has no device node", p.name) };
    };
    let ran = ex.inspect(
        &[tool(&cfg.disk.tools.blkid), "-p".into(), "-o".into(), "export".into(), s(node)],
        Some(TOOL_TIMEOUT),
    );
    let kv = parse_blkid(&ran.stdout);
    let (t, l) = (kv.get("TYPE").cloned().unwrap_or_default(), kv.get("LABEL").cloned().unwrap_or_default());
    let seen = format!("partition {} TYPE={t:?} LABEL={l:?}", p.name);
    if ran.ok && t == cfg.disk.fs_type && l == label {
        DiskState { ours: Some(p.clone()), seen }
    } else {
        DiskState { ours: None, seen }
    }
}

fn mounted_at(id: &Identity, dir: &Path) -> bool {
    id.our_mounts.iter().any(|m| m.mount_point == dir)
}

fn mount(cfg: &WorkerConfig, ex: &mut Exec, node: &str, dir: &Path) -> Result<(), StepError> {
    if ex.dry_run {
        ex.note(format!("mkdir -p {}", dir.display()), true, Duration::ZERO, String::new());
    } else {
        std::fs::create_dir_all(dir)
            .map_err(|e| StepError::Failed(format!("creating {}: {e}", dir.display())))?;
    }
    let argv = vec![
        tool(&cfg.disk.tools.mount),
        "-t".into(),
        cfg.disk.fs_type.clone(),
        "-o".into(),
        cfg.disk.mount_options.clone(),
        node.to_string(),
        s(dir),
    ];
    let r = ex.change(&argv, Some(TOOL_TIMEOUT));
    if r.ok {
        Ok(())
    } else {
        Err(StepError::Failed(format!("mount {node} at {} failed: {}", dir.display(), r.stderr.trim())))
    }
}

/// Unmount `dir`, trying again while it is busy (at most [`UMOUNT_TRIES`], each try recorded as a step).
fn umount(cfg: &WorkerConfig, ex: &mut Exec, dir: &Path) -> Result<(), StepError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let r = ex.cleanup(&[tool(&cfg.disk.tools.umount), s(dir)]);
        if r.ok {
            return Ok(());
        }
        if !r.stderr.contains("busy") || tries >= UMOUNT_TRIES {
            let after = if tries > 1 { format!(" ({tries} tries)") } else { String::new() };
            return Err(StepError::Failed(format!(
                "umount {} failed{after}: {}",
                dir.display(),
                r.stderr.trim()
            )));
        }
        std::thread::sleep(UMOUNT_RETRY_AFTER * tries);
    }
}

/// Identify the replacement; `Err` is the refusal.
fn identify(cfg: &WorkerConfig, req: &ActionRequest) -> Result<(String, Identity), Finish> {
    if !cfg.disk.allow_destructive {
        return Err(Finish::refused(
            "disk actions are disabled in config (worker.disk.allow_destructive = false); nothing was touched",
        ));
    }
    let Some(slot) = req.object.name() else {
        return Err(Finish::refused("a disk object needs a slot name"));
    };
    let ours = [staging_dir(cfg, slot), real_dir(cfg, slot)];
    let expect = Expect { old_serial: req.old_serial.as_deref(), new_serial: req.new_serial.as_deref() };
    match blockdev::identify(&roots(cfg), slot, &expect, &ours) {
        Ok(id) => Ok((slot.to_string(), id)),
        Err(why) => {
            Err(Finish::refused(format!("not the identified replacement: {why}; nothing was touched")))
        }
    }
}

/// The partition device path a dry run names before the partition exists.
fn planned_partition(node: &Path) -> String {
    let n = s(node);
    if n.ends_with(|c: char| c.is_ascii_digit()) { format!("{n}p1") } else { format!("{n}1") }
}

fn wait_partition(cfg: &WorkerConfig, id: &Identity, max: Duration) -> Option<Partition> {
    let devfs = id.node.parent().unwrap_or(Path::new("/dev")).to_path_buf();
    let until = Instant::now() + max;
    loop {
        let parts = blockdev::partitions(&cfg.block_sys, id.dev, &devfs);
        if parts.len() == 1 && parts[0].node.is_some() {
            return parts.into_iter().next();
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(PARTITION_POLL);
    }
}

fn mkfs_argv(cfg: &WorkerConfig, device: &str, label: &str) -> Vec<String> {
    let template: Vec<String> = match (&cfg.disk.mkfs, cfg.disk.fs_type.as_str()) {
        (Some(t), _) => t.clone(),
        (None, "xfs") => ["mkfs.xfs", "-f", "-L", "{label}", "{device}"].map(String::from).to_vec(),
        (None, fs) => vec![
            format!("mkfs.{fs}"),
            "-q".into(),
            "-F".into(),
            "-L".into(),
            "{label}".into(),
            "{device}".into(),
        ],
    };
    expand(&template, &[("device", device), ("label", label)])
}

/// Disk NEWBIE.
pub(crate) fn provision(cfg: &WorkerConfig, ex: &mut Exec, req: &ActionRequest) -> Finish {
    let (slot, id) = match identify(cfg, req) {
        Ok(v) => v,
        Err(f) => return f,
    };
    let label = label_for(cfg, &slot);
    let staging = staging_dir(cfg, &slot);
    let real = real_dir(cfg, &slot);
    let state = inspect(cfg, ex, &id, &label);
    let who = format!("{} ({}, serial {})", id.node.display(), slot, id.serial);

    if let Some(part) = &state.ours {
        if mounted_at(&id, &real) {
            return Finish::new(
                Outcome::AlreadyDone,
                format!("{who} is already provisioned and in service at {}", real.display()),
            );
        }
        if mounted_at(&id, &staging) {
            return Finish::new(
                Outcome::AlreadyDone,
                format!("{who} is already provisioned and pre-mounted at {}", staging.display()),
            );
        }
        let Some(node) = &part.node else { return Finish::failed(format!("{who}: partition node vanished")) };
        return match mount(cfg, ex, &s(node), &staging) {
            Ok(()) => Finish::new(
                Outcome::Done,
                format!("{who} already carries {label}; pre-mounted again at {}", staging.display()),
            ),
            Err(e) => Finish::failed(e.to_string()),
        };
    }
    if let Some(m) = id.our_mounts.first() {
        return Finish::refused(format!(
            "{who} is mounted at {} but does not carry our filesystem ({}); nothing was touched",
            m.mount_point.display(),
            state.seen
        ));
    }

    // Partition table: sfdisk reads its script from stdin; the script file is given to it through a
    // shell redirection with positional arguments (no string is interpolated into the shell code).
    let script = cfg.disk.staging_root.join(format!(".sfdisk-{slot}"));
    if !ex.dry_run
        && let Err(e) = std::fs::create_dir_all(&cfg.disk.staging_root)
            .and_then(|_| std::fs::write(&script, SFDISK_SCRIPT))
    {
        return Finish::failed(format!("writing {}: {e}", script.display()));
    }
    let argv = vec![
        "sh".into(),
        "-c".into(),
        "exec \"$@\" < \"$0\"".into(),
        s(&script),
        tool(&cfg.disk.tools.sfdisk),
        "--wipe".into(),
        "always".into(),
        "--wipe-partitions".into(),
        "always".into(),
        "-q".into(),
        s(&id.node),
    ];
    let r = ex.change(&argv, None);
    if !ex.dry_run {
        let _ = std::fs::remove_file(&script);
    }
    if !r.ok {
        return Finish::failed(format!("{who}: partitioning failed: {}", r.stderr.trim()));
    }
    let part_node = if ex.dry_run {
        ex.note(
            format!(
                "{} -u {} (only if the kernel does not show the new partition)",
                cfg.disk.tools.partx,
                id.node.display()
            ),
            true,
            Duration::ZERO,
            String::new(),
        );
        planned_partition(&id.node)
    } else {
        let mut part = wait_partition(cfg, &id, KERNEL_REREAD_WAIT.min(ex.remaining()));
        if part.is_none() {
            // Kernels without a GPT parser (or a busy re-read) need the table added from user space.
            let r = ex.change(&[tool(&cfg.disk.tools.partx), "-u".into(), s(&id.node)], Some(TOOL_TIMEOUT));
            if r.ok {
                part = wait_partition(cfg, &id, PARTITION_WAIT.min(ex.remaining()));
            }
        }
        match part.and_then(|p| p.node) {
            Some(n) => s(&n),
            None => {
                return Finish::failed(format!(
                    "{who}: the new partition did not appear within {PARTITION_WAIT:?}"
                ));
            }
        }
    };
    let r = ex.change(&mkfs_argv(cfg, &part_node, &label), None);
    if !r.ok {
        return Finish::failed(format!(
            "{who}: mkfs.{} on {part_node} failed: {}",
            cfg.disk.fs_type,
            r.stderr.trim()
        ));
    }
    match mount(cfg, ex, &part_node, &staging) {
        Ok(()) => Finish::new(
            Outcome::Done,
            format!(
                "{who}: one GPT partition, {} labelled {label}, pre-mounted at {}",
                cfg.disk.fs_type,
                staging.display()
            ),
        ),
        Err(e) => Finish::failed(format!("{who}: {e}")),
    }
}

/// Thresholds for a model (longest configured prefix) or else the profile.
pub fn thresholds_for<'a>(
    cfg: &'a WorkerConfig,
    model: Option<&str>,
    profile: &str,
) -> Option<(String, &'a Thresholds)> {
    if let Some(model) = model
        && let Some((k, t)) =
            cfg.disk.models.iter().filter(|(k, _)| model.starts_with(k.as_str())).max_by_key(|(k, _)| k.len())
    {
        return Some((format!("model {k:?}"), t));
    }
    cfg.disk.profiles.get(profile).map(|t| (format!("profile {profile}"), t))
}

/// Disk TEST.
pub(crate) fn test(cfg: &WorkerConfig, ex: &mut Exec, req: &ActionRequest) -> Finish {
    let (slot, id) = match identify(cfg, req) {
        Ok(v) => v,
        Err(f) => return f,
    };
    let label = label_for(cfg, &slot);
    let staging = staging_dir(cfg, &slot);
    let real = real_dir(cfg, &slot);
    let who = format!("{} ({}, serial {})", id.node.display(), slot, id.serial);
    let state = inspect(cfg, ex, &id, &label);
    let Some(part) = state.ours else {
        return Finish::failed(format!(
            "{who} is not provisioned ({}; no {label} filesystem): run NEWBIE first",
            state.seen
        ));
    };
    let Some(pnode) = part.node.as_ref().map(|p| s(p)) else {
        return Finish::failed(format!("{who}: partition node missing"));
    };
    if mounted_at(&id, &real) && !mounted_at(&id, &staging) {
        return Finish::new(
            Outcome::AlreadyDone,
            format!("{who} passed TEST earlier and is in service at {}", real.display()),
        );
    }
    let profile = req.params.get("profile").cloned().unwrap_or_else(|| cfg.disk.profile.clone());
    let Some((source, limits)) = thresholds_for(cfg, id.model.as_deref(), &profile) else {
        return Finish::failed(format!(
            "no thresholds for model {:?} or profile {profile:?} in worker.disk",
            id.model
        ));
    };
    if !mounted_at(&id, &staging)
        && let Err(e) = mount(cfg, ex, &pnode, &staging)
    {
        return Finish::failed(format!("{who}: {e}"));
    }

    let st = smart::SelfTest {
        enabled: cfg.disk.self_test,
        timeout: Duration::from_secs(cfg.disk.self_test_timeout_s),
        poll: Duration::from_millis(cfg.disk.self_test_poll_ms),
    };
    let sm = smart::check(ex, &cfg.disk.tools.smartctl, &id.node, &st);
    let smart_line = match (&sm.unsupported, sm.passed) {
        (Some(why), _) => format!("SMART not supported ({why})"),
        (None, Some(true)) => format!("SMART PASSED, self-test {}", sm.self_test),
        (None, Some(false)) => "SMART FAILED".to_string(),
        (None, None) => format!("SMART gave no verdict, self-test {}", sm.self_test),
    };
    let mut figures = BTreeMap::new();
    figures.insert("smart_supported".into(), if sm.unsupported.is_some() { 0.0 } else { 1.0 });

    let bench_path = staging.join(BENCH_FILE);
    let total = Duration::from_secs_f64(cfg.disk.bench_seconds);
    let bench_res = if ex.dry_run {
        ex.note(
            format!(
                "benchmark {} MiB O_DIRECT file {} for {:?} against {source}",
                cfg.disk.bench_file_mib,
                bench_path.display(),
                total
            ),
            true,
            Duration::ZERO,
            String::new(),
        );
        Ok(None)
    } else if sm.failure.is_some() {
        Ok(None)
    } else {
        let t = Instant::now();
        let r = bench::run(&bench_path, cfg.disk.bench_file_mib * 1024 * 1024, total, ex.deadline());
        let what =
            format!("benchmark {} MiB O_DIRECT file {}", cfg.disk.bench_file_mib, bench_path.display());
        match &r {
            Ok(f) => ex.note(what, true, t.elapsed(), format!("{:?}", f.to_map())),
            Err(e) => ex.note(what, false, t.elapsed(), e.to_string()),
        }
        r.map(Some)
    };
    let mut problems: Vec<String> = sm.failure.iter().cloned().collect();
    match &bench_res {
        Ok(Some(f)) => {
            figures.extend(f.to_map());
            problems.extend(bench::judge(f, limits));
        }
        Ok(None) => {}
        Err(e) => problems.push(format!("benchmark failed: {e}")),
    }
    if ex.timed_out || (!ex.dry_run && ex.remaining().is_zero()) {
        ex.timed_out = true;
        problems.push("the deadline passed during the test".into());
    }
    let summary = |f: &BTreeMap<String, f64>| {
        let line = [
            "seq_read_mbps",
            "seq_write_mbps",
            "rand_read_iops",
            "rand_write_iops",
            "rand_read_p99_ms",
            "rand_write_p99_ms",
        ]
        .iter()
        .filter_map(|k| f.get(*k).map(|v| format!("{k}={v:.1}")))
        .collect::<Vec<_>>()
        .join(" ");
        if line.is_empty() { line } else { format!("; {line}") }
    };

    if !problems.is_empty() {
        // Back to REPAIR unmounted: the disk may be pulled.
        let um = umount(cfg, ex, &staging).err().map(|e| format!("; {e}")).unwrap_or_default();
        let mut f = Finish::failed(format!(
            "{who} failed TEST against {source}: {}; {smart_line}{}{um}",
            problems.join(", "),
            summary(&figures)
        ));
        f.figures = figures;
        return f;
    }
    if let Err(e) = umount(cfg, ex, &staging) {
        let mut f = Finish::failed(format!("{who} passed the checks but {e}"));
        f.figures = figures;
        return f;
    }
    if let Err(e) = mount(cfg, ex, &pnode, &real) {
        let mut f = Finish::failed(format!("{who} passed the checks but {e}"));
        f.figures = figures;
        return f;
    }
    let mut f = Finish::new(
        Outcome::Done,
        format!(
            "{who} passed TEST against {source}: {smart_line}{}; mounted at {}",
            summary(&figures),
            real.display()
        ),
    );
    f.figures = figures;
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::config::Thresholds;

    /// A stand-in `umount` that says "target is busy" until it has been run `busy` times.
    fn fake_umount(dir: &Path, busy: u32, message: &str) -> WorkerConfig {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("umount");
        let count = dir.join("count");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nn=$(cat {c} 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > {c}\n\
                 if [ $n -le {busy} ]; then echo \"umount: $1: {message}.\" >&2; exit 32; fi\nexit 0\n",
                c = count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = WorkerConfig::default();
        cfg.disk.tools.umount = script.display().to_string();
        cfg
    }

    #[test]
    fn a_busy_mount_is_tried_again_and_other_failures_are_not() {
        let d = tempfile::tempdir().unwrap();
        let staging = d.path().join("staging");
        // Busy twice, then free: unmounted on the third try, every try a step.
        let cfg = fake_umount(d.path(), 2, "target is busy");
        let mut ex = Exec::new(false, Duration::from_secs(30));
        assert!(umount(&cfg, &mut ex, &staging).is_ok());
        assert_eq!(ex.steps.len(), 3);
        // Busy for good: UMOUNT_TRIES tries, and the error says so.
        let d = tempfile::tempdir().unwrap();
        let cfg = fake_umount(d.path(), 100, "target is busy");
        let mut ex = Exec::new(false, Duration::from_secs(30));
        let e = umount(&cfg, &mut ex, &staging).unwrap_err().to_string();
        assert!(e.contains("(5 tries)") && e.contains("target is busy"), "{e}");
        assert_eq!(ex.steps.len(), UMOUNT_TRIES as usize);
        // Any other failure is final at once.
        let d = tempfile::tempdir().unwrap();
        let cfg = fake_umount(d.path(), 100, "not mounted");
        let mut ex = Exec::new(false, Duration::from_secs(30));
        let e = umount(&cfg, &mut ex, &staging).unwrap_err().to_string();
        assert!(e.contains("not mounted") && !e.contains("tries"), "{e}");
        assert_eq!(ex.steps.len(), 1);
    }

    #[test]
    fn labels_and_partition_names() {
        let mut cfg = WorkerConfig::default();
        assert_eq!(label_for(&cfg, "sdb"), "huatuo-sdb");
        assert_eq!(label_for(&cfg, "nvme12n1-extra-long").len(), MAX_LABEL_LEN);
        cfg.disk.fs_type = "xfs".into();
        assert_eq!(label_for(&cfg, "nvme12n1"), "huatuo-nvme1");
        assert_eq!(planned_partition(Path::new("/dev/loop3")), "/dev/loop3p1");
        assert_eq!(planned_partition(Path::new("/dev/sdb")), "/dev/sdb1");
    }

    #[test]
    fn blkid_export_and_mkfs_templates() {
        let kv = parse_blkid("DEVNAME=/dev/loop0p1\nLABEL=huatuo-a\nUUID=1\nTYPE=ext4\ngarbage\n");
        assert_eq!(kv["TYPE"], "ext4");
        assert_eq!(kv["LABEL"], "huatuo-a");
        let cfg = WorkerConfig::default();
        assert_eq!(mkfs_argv(&cfg, "/dev/x1", "L"), ["mkfs.ext4", "-q", "-F", "-L", "L", "/dev/x1"]);
    }

    #[test]
    fn model_prefix_beats_profile() {
        let mut cfg = WorkerConfig::default();
        let t = |v| Thresholds { min_seq_read_mbps: Some(v), ..Default::default() };
        cfg.disk.models.insert("WDC".into(), t(1.0));
        cfg.disk.models.insert("WDC WD40".into(), t(2.0));
        let (src, th) = thresholds_for(&cfg, Some("WDC WD40EFRX"), "online").unwrap();
        assert_eq!((src.as_str(), th.min_seq_read_mbps), ("model \"WDC WD40\"", Some(2.0)));
        let (src, _) = thresholds_for(&cfg, Some("ST4000"), "offline").unwrap();
        assert_eq!(src, "profile offline");
        assert!(thresholds_for(&cfg, None, "nope").is_none());
    }
}
