//! The worker's disk actions on real block devices: sparse files attached as loop devices, a temp sysfs
//! tree giving each slot a made-up serial, and a temp dev dir of symlinks naming the slot. Covers the
//! NEWBIE -> TEST story (partition, mkfs, pre-mount, idempotent re-runs, benchmark, real mount), a TEST
//! that fails its thresholds, the refusals (old serial, mounted, root disk, disabled, wrong new serial),
//! a hung mkfs killed at the deadline, and dry runs. Every loop device and mount is released by Drop
//! guards, also when an assertion fails. Needs root, util-linux (losetup, sfdisk, partx, blkid, mount),
//! e2fsprogs and smartmontools.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent::worker::config::Thresholds;
use agent::worker::{ActionReport, ActionRequest, Outcome, Worker, WorkerConfig};
use state_machines::{Action, Kind, ObjectId};

const HOST: &str = "h1";
/// Size of each sparse backing file: big enough for ext4 and an 8 MiB benchmark file.
const DISK_MIB: u64 = 96;

fn sh(prog: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("{prog}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// A temp "host": sysfs tree, dev dir, staging and mount roots, loop devices; all released on drop.
struct Host {
    dir: tempfile::TempDir,
    loops: Vec<String>,
}

impl Host {
    fn new() -> Self {
        Host { dir: tempfile::tempdir().unwrap(), loops: Vec::new() }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Attach a new sparse file as a loop device and expose it as `slot` with `serial`.
    fn add_disk(&mut self, slot: &str, serial: &str) -> String {
        let img = self.path().join(format!("{slot}.img"));
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(DISK_MIB * 1024 * 1024).unwrap();
        let (ok, out) = sh("losetup", &["-fP", "--show", img.to_str().unwrap()]);
        assert!(ok, "losetup: {out}");
        let dev = out.trim().to_string();
        self.loops.push(dev.clone());
        self.link(slot, Path::new(&dev), serial);
        dev
    }
    /// Name an existing node as `slot` with `serial`.
    fn link(&self, slot: &str, node: &Path, serial: &str) {
        let sys = self.path().join("sys/block").join(slot).join("device");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("serial"), format!("{serial}\n")).unwrap();
        std::fs::write(sys.join("model"), "Huatuo Loop Disk\n").unwrap();
        let dev = self.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let _ = std::fs::remove_file(dev.join(slot));
        std::os::unix::fs::symlink(node, dev.join(slot)).unwrap();
    }
    fn config(&self) -> WorkerConfig {
        let mut c = WorkerConfig {
            sys_root: self.path().join("sys"),
            dev_root: self.path().join("dev"),
            ..WorkerConfig::default()
        };
        c.disk.allow_destructive = true;
        c.disk.staging_root = self.path().join("staging");
        c.disk.mount_root = self.path().join("data");
        c.disk.bench_seconds = 0.4;
        c.disk.bench_file_mib = 8;
        c.disk.provision_timeout_s = 60;
        c.disk.test_timeout_s = 60;
        // Generous floors: a loop device on any disk clears them; the point is the plumbing.
        c.disk.profiles.insert(
            "online".into(),
            Thresholds {
                min_seq_read_mbps: Some(1.0),
                min_seq_write_mbps: Some(1.0),
                min_rand_read_iops: Some(10.0),
                min_rand_write_iops: Some(10.0),
                max_rand_read_p99_ms: Some(2000.0),
                max_rand_write_p99_ms: Some(2000.0),
            },
        );
        c
    }
    fn script(&self, name: &str, body: &str) -> String {
        let p = self.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Unmount everything below our temp dir (deepest first), then detach the loop devices.
        let root = self.path().to_path_buf();
        let mut points: Vec<PathBuf> = mount_points().into_iter().filter(|p| p.starts_with(&root)).collect();
        points.sort();
        for p in points.iter().rev() {
            let _ = sh("umount", &["-l", p.to_str().unwrap_or_default()]);
        }
        for l in &self.loops {
            let _ = sh("losetup", &["-d", l]);
        }
    }
}

fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(|p| PathBuf::from(p.replace("\\040", " "))))
        .collect()
}

fn is_mounted(p: &Path) -> bool {
    mount_points().iter().any(|m| m == p)
}

/// `blkid -p -o export` of a node, as a map (empty when nothing is on it).
fn blkid(node: &str) -> BTreeMap<String, String> {
    let (_, out) = sh("blkid", &["-p", "-o", "export", node]);
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn req(slot: &str, action: Action, old: &str) -> ActionRequest {
    ActionRequest {
        object: ObjectId::new(Kind::Disk, HOST, Some(slot)).unwrap(),
        action,
        old_serial: Some(old.to_string()),
        new_serial: None,
        params: BTreeMap::new(),
        dry_run: false,
        now_ms: 1_800_000_000_000,
    }
}

fn run(w: &Worker, r: &ActionRequest) -> ActionReport {
    let rep = w.run_blocking(r);
    println!("{} {}: {:?} {}", r.object, r.action, rep.outcome, rep.detail);
    rep
}

fn assert_refused_untouched(rep: &ActionReport, want: &str, node: &str) {
    assert_eq!(rep.outcome, Outcome::Refused, "{rep:#?}");
    assert!(!rep.success);
    assert!(rep.detail.contains(want), "{want:?} not in {:?}", rep.detail);
    assert!(
        rep.steps.iter().all(|s| s.planned || !s.what.contains("sfdisk")),
        "nothing ran: {:?}",
        rep.steps
    );
    let b = blkid(node);
    assert!(!b.contains_key("PTTYPE"), "no partition table was written on {node}: {b:?}");
}

#[test]
fn newbie_then_test_passes_and_mounts_for_real_idempotently() {
    let mut h = Host::new();
    let node = h.add_disk("sdn", "NEW-SERIAL-1");
    let cfg = h.config();
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    let staging = cfg.disk.staging_root.join("sdn");
    let real = cfg.disk.mount_root.join("sdn");

    let rep = run(&w, &req("sdn", Action::Provision, "OLD-SERIAL-1"));
    assert_eq!(rep.outcome, Outcome::Done, "{rep:#?}");
    assert!(rep.success);
    assert_eq!(blkid(&node).get("PTTYPE").map(String::as_str), Some("gpt"));
    let part = format!("{node}p1");
    let fs = blkid(&part);
    assert_eq!(fs.get("TYPE").map(String::as_str), Some("ext4"));
    assert_eq!(fs.get("LABEL").map(String::as_str), Some("huatuo-sdn"));
    assert!(is_mounted(&staging), "pre-mounted at {}", staging.display());
    assert_eq!(rep.to_input().name(), "result");

    // Re-run: reported done, nothing reformatted (same filesystem UUID).
    let again = run(&w, &req("sdn", Action::Provision, "OLD-SERIAL-1"));
    assert_eq!(again.outcome, Outcome::AlreadyDone, "{again:#?}");
    assert!(again.success);
    assert_eq!(blkid(&part).get("UUID"), fs.get("UUID"), "not reformatted");
    assert!(again.steps.iter().all(|s| !s.what.contains("mkfs") && !s.what.contains("sfdisk")));

    let t = run(&w, &req("sdn", Action::Test, "OLD-SERIAL-1"));
    assert_eq!(t.outcome, Outcome::Done, "{t:#?}");
    for k in ["seq_read_mbps", "seq_write_mbps", "rand_read_iops", "rand_write_iops", "rand_read_p99_ms"] {
        assert!(t.figures.get(k).is_some_and(|v| *v > 0.0), "{k} in {:?}", t.figures);
    }
    assert_eq!(t.figures.get("smart_supported"), Some(&0.0), "a loop device has no SMART: recorded");
    assert!(t.detail.contains("SMART not supported"), "{}", t.detail);
    assert!(is_mounted(&real) && !is_mounted(&staging), "moved from staging to the real mount point");
    assert!(!real.join(".huatuo-bench").exists(), "benchmark file removed");

    // Re-runs after the disk is in service: both report done and change nothing.
    let t2 = run(&w, &req("sdn", Action::Test, "OLD-SERIAL-1"));
    assert_eq!(t2.outcome, Outcome::AlreadyDone, "{t2:#?}");
    let p2 = run(&w, &req("sdn", Action::Provision, "OLD-SERIAL-1"));
    assert_eq!(p2.outcome, Outcome::AlreadyDone, "{p2:#?}");
    assert!(is_mounted(&real));
    assert_eq!(blkid(&part).get("UUID"), fs.get("UUID"));
}

#[test]
fn test_below_threshold_fails_and_leaves_the_disk_unmounted() {
    let mut h = Host::new();
    let node = h.add_disk("sdf", "NEW-SERIAL-2");
    let mut cfg = h.config();
    cfg.disk
        .models
        .insert("Huatuo Loop".into(), Thresholds { min_seq_read_mbps: Some(1e12), ..Default::default() });
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    assert_eq!(run(&w, &req("sdf", Action::Provision, "OLD")).outcome, Outcome::Done);
    let t = run(&w, &req("sdf", Action::Test, "OLD"));
    assert_eq!(t.outcome, Outcome::Failed, "{t:#?}");
    assert!(!t.success);
    assert!(t.detail.contains("seq_read_mbps") && t.detail.contains("model \"Huatuo Loop\""), "{}", t.detail);
    assert!(t.figures.get("seq_read_mbps").is_some_and(|v| *v > 0.0), "figures reported: {:?}", t.figures);
    assert!(!is_mounted(&cfg.disk.mount_root.join("sdf")), "not mounted at the real point");
    assert!(!is_mounted(&cfg.disk.staging_root.join("sdf")), "unmounted from staging too");
    // The filesystem stays (it is ours); a later NEWBIE re-mounts without reformatting.
    assert_eq!(blkid(&format!("{node}p1")).get("LABEL").map(String::as_str), Some("huatuo-sdf"));
}

#[test]
fn refusals_touch_nothing() {
    let mut h = Host::new();
    let old = h.add_disk("sdo", "SAME-SERIAL");
    let mounted = h.add_disk("sdm", "NEW-SERIAL-M");
    let fresh = h.add_disk("sdd", "NEW-SERIAL-D");
    let w = Worker::new(HOST, h.config()).unwrap();

    // The old disk is still in the slot: not a replacement.
    let rep = run(&w, &req("sdo", Action::Provision, "SAME-SERIAL"));
    assert_refused_untouched(&rep, "still holds the old disk", &old);
    // The master expects a different new serial.
    let mut r = req("sdo", Action::Provision, "OTHER");
    r.new_serial = Some("EXPECTED-NEW".into());
    assert_refused_untouched(&run(&w, &r), "not the expected replacement", &old);
    // Neither serial given: cannot tell.
    let mut r = req("sdo", Action::Provision, "x");
    r.old_serial = None;
    assert_refused_untouched(&run(&w, &r), "cannot tell a replacement", &old);

    // A filesystem on the whole device, mounted somewhere else.
    let (ok, out) = sh("mkfs.ext4", &["-q", "-F", "-L", "foreign", &mounted]);
    assert!(ok, "{out}");
    let elsewhere = h.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (ok, out) = sh("mount", &[&mounted, elsewhere.to_str().unwrap()]);
    assert!(ok, "{out}");
    let rep = run(&w, &req("sdm", Action::Provision, "OLD"));
    assert_eq!(rep.outcome, Outcome::Refused, "{rep:#?}");
    assert!(rep.detail.contains("is mounted at") && rep.detail.contains("elsewhere"), "{}", rep.detail);
    assert_eq!(blkid(&mounted).get("LABEL").map(String::as_str), Some("foreign"), "untouched");
    assert!(is_mounted(&elsewhere));
    let rep = run(&w, &req("sdm", Action::Test, "OLD"));
    assert_eq!(rep.outcome, Outcome::Refused, "TEST refuses too: {}", rep.detail);

    // Disk actions disabled in config.
    let mut cfg = h.config();
    cfg.disk.allow_destructive = false;
    let off = Worker::new(HOST, cfg).unwrap();
    assert_refused_untouched(&run(&off, &req("sdd", Action::Provision, "OLD")), "disabled in config", &fresh);
    assert_refused_untouched(&run(&off, &req("sdd", Action::Test, "OLD")), "disabled in config", &fresh);

    // Not this host, not a disk action, a slot name that is not a device.
    let mut r = req("sdd", Action::Provision, "OLD");
    r.object = ObjectId::new(Kind::Disk, "other-host", Some("sdd")).unwrap();
    assert_refused_untouched(&run(&w, &r), "not on this host", &fresh);
    let r = req("sdd", Action::Fix { fix: state_machines::FixAction::Reboot }, "OLD");
    assert_refused_untouched(&run(&w, &r), "not an action this worker runs", &fresh);
    let r = req("nosuch", Action::Provision, "OLD");
    assert_eq!(run(&w, &r).outcome, Outcome::Refused);
    let r = req("..", Action::Provision, "OLD");
    assert!(run(&w, &r).detail.contains("not a device name"));
}

/// The disk holding "/" is refused even with a fresh serial and everything enabled. The tools are
/// replaced by `false` so that even a bug could not write to it.
#[test]
fn the_root_disk_is_refused() {
    let h = Host::new();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = info.lines().rev().find(|l| l.split_whitespace().nth(4) == Some("/")).unwrap();
    let mm = root.split_whitespace().nth(2).unwrap();
    if mm.starts_with("0:") {
        println!("/ is on a virtual filesystem ({root}); no root disk to point a slot at");
        return;
    }
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{mm}")).unwrap();
    // "/" may sit on a partition: the slot names its whole disk.
    let disk_sys = if sys.join("partition").exists() { sys.parent().unwrap().to_path_buf() } else { sys };
    let name = disk_sys.file_name().unwrap().to_str().unwrap().to_string();
    let node = PathBuf::from("/dev").join(&name);
    h.link("rootslot", &node, "MADE-UP-NEW-SERIAL");
    let mut cfg = h.config();
    for t in [&mut cfg.disk.tools.sfdisk, &mut cfg.disk.tools.partx, &mut cfg.disk.tools.mount] {
        *t = "false".into();
    }
    cfg.disk.mkfs = Some(vec!["false".into(), "{device}".into()]);
    let w = Worker::new(HOST, cfg).unwrap();
    for action in [Action::Provision, Action::Test] {
        let rep = run(&w, &req("rootslot", action, "OLD"));
        assert_eq!(rep.outcome, Outcome::Refused, "{rep:#?}");
        assert!(rep.detail.contains("holds the root filesystem"), "{}", rep.detail);
        assert!(rep.steps.is_empty(), "nothing ran: {:?}", rep.steps);
    }
}

#[test]
fn hung_mkfs_is_killed_at_the_deadline() {
    let mut h = Host::new();
    let node = h.add_disk("sdt", "NEW-SERIAL-T");
    let pidfile = h.path().join("child.pid");
    let hang = h.script("hang-mkfs.sh", &format!("sleep 300 &\necho $! > {}\nwait", pidfile.display()));
    let mut cfg = h.config();
    cfg.disk.provision_timeout_s = 2;
    cfg.disk.mkfs = Some(vec![hang, "{device}".into()]);
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    let start = Instant::now();
    let rep = run(&w, &req("sdt", Action::Provision, "OLD"));
    let took = start.elapsed();
    assert_eq!(rep.outcome, Outcome::TimedOut, "{rep:#?}");
    assert!(!rep.success);
    assert!(took < Duration::from_secs(8), "returned {took:?} after a 2 s deadline");
    let last = rep.steps.last().unwrap();
    assert!(last.timed_out && last.what.contains("hang-mkfs"), "{last:?}");
    // The script's child was in the killed process group.
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    let until = Instant::now() + Duration::from_secs(3);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "child {pid} still alive: {stat}");
    // Never a half-done disk passed off as done: no filesystem, nothing mounted.
    assert!(!blkid(&format!("{node}p1")).contains_key("TYPE"));
    assert!(!is_mounted(&cfg.disk.staging_root.join("sdt")));
}

#[test]
fn dry_run_reports_the_plan_and_changes_nothing() {
    let mut h = Host::new();
    let node = h.add_disk("sdy", "NEW-SERIAL-Y");
    let w = Worker::new(HOST, h.config()).unwrap();
    let mut r = req("sdy", Action::Provision, "OLD");
    r.dry_run = true;
    let rep = run(&w, &r);
    assert_eq!(rep.outcome, Outcome::DryRun, "{rep:#?}");
    assert!(rep.success && rep.dry_run);
    let planned: Vec<&str> = rep.steps.iter().filter(|s| s.planned).map(|s| s.what.as_str()).collect();
    for want in ["sfdisk", "mkfs.ext4", "huatuo-sdy", "mount"] {
        assert!(planned.iter().any(|p| p.contains(want)), "{want} in plan {planned:#?}");
    }
    assert!(blkid(&node).is_empty(), "still blank: {:?}", blkid(&node));
    assert!(!h.path().join("staging").exists(), "no directory created");

    // A dry run of a refused action is still a refusal.
    let mut r = req("sdy", Action::Provision, "NEW-SERIAL-Y");
    r.dry_run = true;
    assert_refused_untouched(&run(&w, &r), "still holds the old disk", &node);

    // A config-wide dry run; TEST plans the benchmark on a provisioned disk without running it.
    let real = Worker::new(HOST, h.config()).unwrap();
    assert_eq!(run(&real, &req("sdy", Action::Provision, "OLD")).outcome, Outcome::Done);
    let mut cfg = h.config();
    cfg.dry_run = true;
    let dry = Worker::new(HOST, cfg.clone()).unwrap();
    let t = run(&dry, &req("sdy", Action::Test, "OLD"));
    assert_eq!(t.outcome, Outcome::DryRun, "{t:#?}");
    assert!(t.steps.iter().any(|s| s.planned && s.what.contains("benchmark")));
    assert!(!t.figures.contains_key("seq_read_mbps"), "no benchmark ran");
    assert!(is_mounted(&cfg.disk.staging_root.join("sdy")) && !is_mounted(&cfg.disk.mount_root.join("sdy")));
}

fn testdata(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/worker").join(name).display().to_string()
}

/// SMART on a device that has it, played by a fake smartctl printing recorded outputs: a failing drive
/// fails TEST before any benchmark; a healthy one runs the short self-test (polled until done) and passes.
#[test]
fn smart_verdict_and_short_self_test_with_recorded_outputs() {
    let mut h = Host::new();
    let node = h.add_disk("sds", "NEW-SERIAL-S");
    let calls = h.path().join("smartctl.calls");
    let failing = h.script(
        "smartctl-failing",
        &format!(
            "echo \"$@\" >> {}\ncat {}\nexit 216",
            calls.display(),
            testdata("usbjmicron_a_when_failed_now.json")
        ),
    );
    let mut cfg = h.config();
    cfg.disk.tools.smartctl = failing;
    cfg.disk.self_test_poll_ms = 100;
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    assert_eq!(run(&w, &req("sds", Action::Provision, "OLD")).outcome, Outcome::Done);
    let t = run(&w, &req("sds", Action::Test, "OLD"));
    assert_eq!(t.outcome, Outcome::Failed, "{t:#?}");
    assert!(t.detail.contains("SMART overall health self-assessment: FAILED"), "{}", t.detail);
    assert!(!t.figures.contains_key("seq_read_mbps"), "no benchmark on a failing drive");
    assert!(!is_mounted(&cfg.disk.staging_root.join("sds")) && !is_mounted(&cfg.disk.mount_root.join("sds")));
    assert!(std::fs::read_to_string(&calls).unwrap().contains(&node), "asked about the slot's node");

    let polled = h.path().join("polled");
    let running = r#"{"smartctl":{"exit_status":0},"ata_smart_data":{"self_test":{"status":{"value":249}}}}"#;
    let healthy = h.script(
        "smartctl-healthy",
        &format!(
            "echo \"$@\" >> {calls}\ncase \"$*\" in\n*\"-t short\"*) echo '{{\"smartctl\":{{\"exit_status\":0}}}}' ;;\n\
             *\"-c\"*) if [ -e {polled} ]; then cat {sat}; else touch {polled}; echo '{running}'; fi ;;\n\
             *) cat {sat} ;;\nesac",
            calls = calls.display(),
            polled = polled.display(),
            sat = testdata("sat_xall.json"),
        ),
    );
    cfg.disk.tools.smartctl = healthy;
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    let t = run(&w, &req("sds", Action::Test, "OLD"));
    assert_eq!(t.outcome, Outcome::Done, "{t:#?}");
    assert!(t.detail.contains("SMART PASSED, self-test passed"), "{}", t.detail);
    assert_eq!(t.figures.get("smart_supported"), Some(&1.0));
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(log.contains(&format!("-j -t short {node}")), "{log}");
    assert_eq!(log.matches("-c -l selftest").count(), 2, "polled until done: {log}");
    assert!(is_mounted(&cfg.disk.mount_root.join("sds")));
}

/// A TEST whose deadline comes during the benchmark ends TimedOut with the disk unmounted from staging
/// (the unmount runs past the deadline) and never mounted at the real point.
#[test]
fn test_deadline_during_the_benchmark_leaves_no_mount() {
    let mut h = Host::new();
    h.add_disk("sdw", "NEW-SERIAL-W");
    let mut cfg = h.config();
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    assert_eq!(run(&w, &req("sdw", Action::Provision, "OLD")).outcome, Outcome::Done);
    cfg.disk.test_timeout_s = 1;
    cfg.disk.bench_seconds = 8.0;
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    let start = Instant::now();
    let t = run(&w, &req("sdw", Action::Test, "OLD"));
    assert_eq!(t.outcome, Outcome::TimedOut, "{t:#?}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(t.detail.contains("deadline"), "{}", t.detail);
    assert!(!is_mounted(&cfg.disk.staging_root.join("sdw")), "unmounted after the deadline");
    assert!(!is_mounted(&cfg.disk.mount_root.join("sdw")));
}
