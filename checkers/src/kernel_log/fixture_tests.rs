//! Tests of the kernel-log checker on real recorded logs (`checkers/testdata/kernel-log/`, origins and
//! licenses in its README.md): labelled fault lines must fire the expected rule family, benign logs must
//! not fire at all, and the file/kmsg/checker plumbing must survive garbage, huge lines and restarts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use state_machines::{Kind, Severity};

use super::*;

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kernel-log").join(rel)
}

fn rules() -> Arc<RuleSet> {
    Arc::new(RuleSet::default_rules().expect("default rules compile"))
}

fn scan_bytes(rules: &Arc<RuleSet>, text: &[u8]) -> (Vec<Event>, ScanStats) {
    let mut s = Scanner::new(Arc::clone(rules), "host-1", 2025).unwrap();
    let mut out = Vec::new();
    s.scan_reader(text, &mut out).unwrap();
    (out, s.stats())
}

fn scan_file(rules: &Arc<RuleSet>, rel: &str) -> Vec<Event> {
    let text = std::fs::read(testdata(rel)).unwrap();
    scan_bytes(rules, &text).0
}

fn rule_ids(events: &[Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.finding.rule.clone()).collect()
}

fn show(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| format!("{:?} {} {} {}", e.line, e.finding.rule, e.finding.object, e.finding.evidence))
        .collect::<Vec<_>>()
        .join("\n")
}

/// gpud's labelled example lines: each fault line fires the rule family we map its event to. Lines that
/// are context of an event already reported by its headline (the hung-task "echo 0 >" hint and the task
/// state line), events we do not cover (GPU/InfiniBand vendor messages, NFS lock reclaim, "beyond end of
/// device" without a device) and templated rows (`<number>`) must fire nothing.
#[test]
fn gpud_labelled_lines_fire_the_expected_rule() {
    let rules = rules();
    let text = std::fs::read_to_string(testdata("gpud/kmsg_examples_from_matcher_comments.tsv")).unwrap();
    let mut checked = 0;
    for row in text.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (event, line) = (cols[1], cols[2]);
        let headline = !line.contains("hung_task_timeout_secs") && !line.contains("state:D");
        let want: Option<&str> = match event {
            "cpu_blocked_too_long" if headline => Some("kernel.hung-task"),
            "cpu_soft_lockup" => Some("kernel.soft-lockup"),
            "raid_array_failure" => Some("disk.md-member-failed"),
            "filesystem_read_only" => Some("fs.read-only"),
            "nvme_path_failure" | "nvme_device_disabled" => Some("disk.offline"),
            "nvme_controller_timeout" => Some("disk.timeout"),
            "buffer_io_error" => Some("disk.buffer-io-error"),
            "superblock_write_error" => Some("fs.io-error"),
            "nfs_server_not_responding" => Some("fs.nfs-not-responding"),
            "vfs_file_max_limit_reached" if !line.contains("<number>") => Some("kernel.file-max"),
            _ => None,
        };
        let (events, _) = scan_bytes(&rules, line.as_bytes());
        let ids = rule_ids(&events);
        match want {
            Some(id) => assert!(ids.contains(id), "{event}: {line:?} fired {ids:?}, want {id}"),
            None => assert!(ids.is_empty(), "{event}: {line:?} fired {ids:?}, want nothing"),
        }
        checked += 1;
    }
    assert_eq!(checked, 33);
}

/// Strip syzkaller's header (up to the first blank line) and its trailing `REPORT:` section.
fn syzkaller_log(name: &str) -> String {
    let text =
        String::from_utf8_lossy(&std::fs::read(testdata(&format!("syzkaller/report/{name}"))).unwrap())
            .into_owned();
    let body = match text.find("\n\n") {
        Some(i) if text.lines().next().is_some_and(|l| l.contains(':') || l.starts_with('#')) => {
            &text[i + 2..]
        }
        _ => &text[..],
    };
    match body.find("\nREPORT:\n") {
        Some(i) => body[..i].to_string(),
        None => body.to_string(),
    }
}

/// syzkaller's labelled console logs: every hang and panic log fires the matching rule; the logs
/// syzkaller expects no report for fire nothing.
#[test]
fn syzkaller_hangs_panics_and_negatives() {
    let rules = rules();
    let labels = std::fs::read_to_string(testdata("syzkaller/labels.tsv")).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for row in labels.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (file, group, title) = (cols[0], cols[1], cols[2]);
        let (events, _) = scan_bytes(&rules, syzkaller_log(file).as_bytes());
        let ids = rule_ids(&events);
        let want: &[&str] = match group {
            "negative_no_report" => &[],
            "panic" => &["kernel.panic"],
            "hw_like_lines" if file == "23" => &["nic.tx-timeout"],
            "hw_like_lines" => &[],
            _ if title.starts_with("INFO: task hung") || title.starts_with("INFO: task can't die") => {
                &["kernel.hung-task"]
            }
            _ if title.starts_with("INFO: rcu detected stall") => &["kernel.rcu-stall"],
            _ if title.starts_with("BUG: soft lockup") => &["kernel.soft-lockup"],
            _ => panic!("unexpected label {row}"),
        };
        if want.is_empty() && group == "negative_no_report" {
            assert!(ids.is_empty(), "syzkaller #{file} (negative) fired:\n{}", show(&events));
        }
        for id in want {
            assert!(ids.contains(*id), "syzkaller #{file} ({title}) fired {ids:?}, want {id}");
        }
        if file == "5" {
            // the only I/O error there is on a loop device: not hardware
            assert!(!ids.iter().any(|i| i.starts_with("disk.")), "#5 fired {ids:?}");
        }
        *counts.entry(group.to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("hang"), Some(&96));
    assert_eq!(counts.get("negative_no_report"), Some(&23));
}

#[test]
fn abrt_oops_panic_mce_and_negatives() {
    let rules = rules();
    let cases: &[(&str, &[&str])] = &[
        ("mce1.test", &["hw.mce-exception", "hw.mce-bank-old", "kernel.panic"]),
        ("kernel_panic_oom.test", &["kernel.panic"]),
        ("oops-kernel-panic-hung-tasks-arm.test", &["kernel.panic"]),
        ("debug_messages.test", &["kernel.oops"]),
    ];
    for (file, want) in cases {
        let ids = rule_ids(&scan_file(&rules, &format!("abrt/{file}")));
        for id in *want {
            assert!(ids.contains(*id), "{file}: fired {ids:?}, want {id}");
        }
    }
    // A single "Machine check events logged" is usually a corrected error: below the 3-in-1h threshold it
    // is an INFO finding (recorded, moves nothing). Kernel WARNING splats (what abrt calls oopses in 1_oops, 10_oopses, cut_here) are software bugs, not
    // faults of the host.
    for file in [
        "not_oops1.test",
        "no_oops.test",
        "not_oops_foreign_hostname.test",
        "mce2.test",
        "1_oops.test",
        "10_oopses.test",
        "cut_here.test",
    ] {
        let events = scan_file(&rules, &format!("abrt/{file}"));
        let alarms: Vec<Event> = events
            .into_iter()
            .filter(|e| !(e.finding.rule == "hw.mce-logged" && e.finding.severity == Severity::Info))
            .collect();
        assert!(alarms.is_empty(), "{file} fired:\n{}", show(&alarms));
    }
}

#[test]
fn mce_logged_threshold_on_real_lines() {
    let rules = rules();
    // mce2's line at 209.024295 s, repeated 20 and 60 minutes later: the third fires (3 within an hour).
    let text = "[  209.024295] mce: [Hardware Error]: Machine check events logged\n\
                [ 1409.024295] mce: [Hardware Error]: Machine check events logged\n\
                [ 3809.024295] mce: [Hardware Error]: Machine check events logged\n";
    let (events, _) = scan_bytes(&rules, text.as_bytes());
    let sev: Vec<(Option<u64>, Severity)> = events.iter().map(|e| (e.line, e.finding.severity)).collect();
    assert_eq!(
        sev,
        vec![(Some(1), Severity::Info), (Some(2), Severity::Info), (Some(3), Severity::Warning)],
        "below the threshold INFO, at it WARNING: {}",
        show(&events)
    );
    assert_eq!(events[2].finding.readings.get("threshold").map(String::as_str), Some("3 in 3600s"));
    assert_eq!(events[1].finding.readings.get("in_window").map(String::as_str), Some("2 of 3"));
    // one millisecond more (the window's resolution) and the first falls out of the hour
    let text = text.replace("3809.024295", "3809.025295");
    let (events, _) = scan_bytes(&rules, text.as_bytes());
    assert!(events.iter().all(|e| e.finding.severity == Severity::Info), "{}", show(&events));
}

/// Benign logs: loghub's Linux server syslog, gpud's kmsg captures and boot logs, the Xid dmesg.
#[test]
fn benign_logs_fire_nothing() {
    let rules = rules();
    for file in [
        "loghub/Linux_2k.log",
        "gpud/kmsg.1.log",
        "gpud/kmsg.2.peermem.log",
        "gpud/dmesg-with-xid-119.log",
        "bench/benign.log",
    ] {
        let events = scan_file(&rules, file);
        assert!(events.is_empty(), "{file} fired:\n{}", show(&events));
    }
    // The pstore dump is a clean boot ending in a deliberate panic: only the panic fires.
    let events = scan_file(&rules, "gpud/pstore-panic-dmesg.txt");
    assert_eq!(rule_ids(&events), BTreeSet::from(["kernel.panic".to_string()]), "{}", show(&events));
}

#[test]
fn recorded_crash_and_oom_logs() {
    let rules = rules();
    let events = scan_file(&rules, "gpud/dmesg-erst.txt");
    assert_eq!(rule_ids(&events), BTreeSet::from(["kernel.oops".to_string()]), "{}", show(&events));
    assert_eq!(events[0].line, Some(2));
    assert_eq!(events[0].log_time, LogTime::Mono(201_654_822));
    let events = scan_file(&rules, "gpud/memory-dmesg.decode.iso.log");
    let ooms: Vec<&Event> = events.iter().filter(|e| e.finding.rule == "kernel.oom-kill").collect();
    assert_eq!(ooms.len(), 3, "{}", show(&events));
    assert_eq!(ooms[0].log_time, LogTime::Wall(1_737_449_010_287));
    assert!(events.iter().all(|e| e.finding.rule == "kernel.oom-kill"), "{}", show(&events));
}

/// Every NPD kernel-monitor reason maps onto our vocabulary (or is a documented non-goal).
#[test]
fn npd_vocabulary_is_covered() {
    let rules = rules();
    let table: &[(&str, &str, Option<&str>)] = &[
        (
            "OOMKilling",
            "Out of memory: Killed process 1234 (java) total-vm:100kB, anon-rss:10kB, file-rss:0kB, shmem-rss:0kB",
            Some("kernel.oom-kill"),
        ),
        (
            "TaskHung",
            "INFO: task kworker/u8:2:345 blocked for more than 120 seconds.",
            Some("kernel.hung-task"),
        ),
        (
            "DockerHung",
            "INFO: task docker:20744 blocked for more than 120 seconds.",
            Some("kernel.hung-task"),
        ),
        (
            "UnregisterNetDevice",
            "unregister_netdevice: waiting for eth0 to become free. Usage count = 1",
            Some("kernel.netdev-unregister-stuck"),
        ),
        (
            "KernelOops",
            "BUG: unable to handle kernel NULL pointer dereference at 0000000000000008",
            Some("kernel.oops"),
        ),
        (
            "Ext4Error",
            "EXT4-fs error (device sdb1): ext4_lookup:1602: inode #2: comm ls: deleted inode referenced: 12",
            Some("fs.error"),
        ),
        // ext4 warnings include benign ones (directory index full); not a hardware verdict.
        ("Ext4Warning", "EXT4-fs warning (device sdb1): ext4_dx_add_entry:2018: Directory index full!", None),
        (
            "IOError",
            "Buffer I/O error on dev sdc1, logical block 0, async page read",
            Some("disk.buffer-io-error"),
        ),
        (
            "XfsHasShutdown",
            "XFS (sdd1): Corruption of in-memory data detected.  Shutting down filesystem",
            Some("fs.shutdown"),
        ),
        // EDAC CE errors count toward a 10-in-24h threshold; one line alone is an INFO finding.
        (
            "MemoryReadError",
            "EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#1_DIMM#0 (channel:1 slot:0 page:0x1 offset:0x0 grain:32 syndrome:0x0)",
            Some("mem.edac-ce"),
        ),
        (
            "CperHardwareErrorCorrected",
            "{1}[Hardware Error]: event severity: corrected",
            Some("hw.error-corrected"),
        ),
        (
            "CperHardwareErrorRecoverable",
            "{1}[Hardware Error]: event severity: recoverable",
            Some("hw.error-uncorrected"),
        ),
        ("CperHardwareErrorFatal", "{1}[Hardware Error]: event severity: fatal", Some("hw.error-fatal")),
        ("FilesystemIsReadOnly", "EXT4-fs (sda1): Remounting filesystem read-only", Some("fs.read-only")),
    ];
    for (reason, line, want) in table {
        let events = scan_bytes(&rules, line.as_bytes()).0;
        if matches!(*reason, "MemoryReadError" | "CperHardwareErrorCorrected") {
            assert!(
                events.iter().all(|e| e.finding.severity == Severity::Info),
                "{reason}: {}",
                show(&events)
            );
        }
        let ids = rule_ids(&events);
        match want {
            Some(id) => assert!(ids.contains(*id), "{reason}: {line:?} fired {ids:?}"),
            None => assert!(ids.is_empty(), "{reason}: {line:?} fired {ids:?}"),
        }
    }
    for f in ["npd/kernel-monitor.json", "npd/readonly-monitor.json"] {
        let text = std::fs::read_to_string(testdata(f)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for r in v["rules"].as_array().unwrap() {
            let reason = r["reason"].as_str().unwrap();
            assert!(table.iter().any(|(n, _, _)| *n == reason), "NPD reason {reason} ({f}) not in the table");
        }
    }
}

fn one(rules: &Arc<RuleSet>, line: &str) -> Vec<(String, String, Severity)> {
    scan_bytes(rules, line.as_bytes())
        .0
        .into_iter()
        .map(|e| (e.finding.rule, e.finding.object.to_string(), e.finding.severity))
        .collect()
}

#[test]
fn objects_are_extracted_and_normalised() {
    let rules = rules();
    let cases: &[(&str, &str, &str)] = &[
        (
            "[  9.1] INFO: task jbd2/sdb1-8:412 blocked for more than 122 seconds.",
            "kernel.hung-task",
            "disk/host-1/sdb",
        ),
        (
            "[  9.1] INFO: task jbd2/dm-3-8:412 blocked for more than 122 seconds.",
            "kernel.hung-task",
            "disk/host-1/dm-3",
        ),
        (
            "[  9.1] INFO: task xfsaild/nvme0n1p2:99 blocked for more than 120 seconds.",
            "kernel.hung-task",
            "disk/host-1/nvme0n1",
        ),
        (
            "[  9.1] INFO: task kcompactd1:1177 blocked for more than 120 seconds.",
            "kernel.hung-task",
            "machine/host-1",
        ),
        (
            "nvme nvme4: I/O tag 22 (2016) opcode 0x2 (Admin Cmd) QID 0 timeout, reset controller",
            "disk.timeout",
            "disk/host-1/nvme4n1",
        ),
        (
            "md/raid0md0: Disk failure on nvme0n1p1 detected, failing array.",
            "disk.md-member-failed",
            "disk/host-1/nvme0n1",
        ),
        (
            "Buffer I/O error on dev dm-0, logical block 1308098575, lost async page write",
            "disk.buffer-io-error",
            "disk/host-1/dm-0",
        ),
        (
            "sd 2:0:0:0: [sdb] tag#29 Sense Key : Medium Error [current]",
            "disk.medium-error",
            "disk/host-1/sdb",
        ),
        (
            "EDAC MC1: 1 UE memory read error on CPU_SrcID#1_Ha#0_Chan#2_DIMM#1 (channel:2 slot:1 page:0x1 offset:0x0 grain:32 syndrome:0x0)",
            "mem.edac-ue",
            "dimm/host-1/mc1-cpu_srcid1_ha0_chan2_dimm1",
        ),
        (
            "EDAC MC0: 1 UE Unknown error on unknown memory ( page:0x0 offset:0x0 grain:1 syndrome:0x0)",
            "mem.edac-ue",
            "machine/host-1",
        ),
        ("igb 0000:01:00.0 eth0: igb: eth0 NIC Link is Down", "nic.link-down", "nic/host-1/eth0"),
        ("NETDEV WATCHDOG: eth0 (e1000): transmit queue 0 timed out", "nic.tx-timeout", "nic/host-1/eth0"),
        ("igb 0000:07:00.0: Detected Tx Unit Hang", "nic.hw-hang", "machine/host-1"),
        (
            "bond0: (slave eno2): link status definitely down, disabling slave",
            "nic.bond-slave-down",
            "nic/host-1/eno2",
        ),
        ("ata3.00: error: { UNC }", "disk.medium-error", "disk/host-1/ata3"),
    ];
    for (line, rule, object) in cases {
        let got = one(&rules, line);
        assert!(
            got.iter().any(|(r, o, _)| r == rule && o == object),
            "{line:?}: got {got:?}, want {rule} on {object}"
        );
    }
    // read-only remount: the disk and the machine; BTRFS without a device: the machine only
    let got = one(&rules, "EXT4-fs (sda2): Remounting filesystem read-only");
    assert_eq!(
        got,
        vec![
            ("fs.read-only".into(), "machine/host-1".into(), Severity::Error),
            ("fs.read-only".into(), "disk/host-1/sda".into(), Severity::Error),
        ]
    );
    let got = one(&rules, "BTRFS: Remounting filesystem read-only");
    assert_eq!(got, vec![("fs.read-only".into(), "machine/host-1".into(), Severity::Error)]);
    // a loop device is not hardware: no finding at all
    assert!(one(&rules, "blk_update_request: I/O error, dev loop0, sector 0").is_empty());
}

#[test]
fn io_error_burst_threshold_in_log_time() {
    let rules = rules();
    // 10 I/O errors on sdb 60 s apart: the 10th is 540 s after the first (inside 10 min) -> one burst.
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!(
            "[{:>5}.000000] blk_update_request: I/O error, dev sdb1, sector {i}\n",
            100 + i * 60
        ));
    }
    let (events, _) = scan_bytes(&rules, text.as_bytes());
    let bursts: Vec<&Event> = events.iter().filter(|e| e.finding.rule == "disk.io-error-burst").collect();
    assert_eq!(bursts.len(), 1);
    assert_eq!(bursts[0].line, Some(10));
    assert_eq!(bursts[0].finding.object.to_string(), "disk/host-1/sdb");
    assert_eq!(events.iter().filter(|e| e.finding.rule == "disk.io-error").count(), 10);
    // 67 s apart: the 10th is 603 s after the first -> no burst
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!(
            "[{:>5}.000000] blk_update_request: I/O error, dev sdb1, sector {i}\n",
            100 + i * 67
        ));
    }
    let (events, _) = scan_bytes(&rules, text.as_bytes());
    assert!(!events.iter().any(|e| e.finding.rule == "disk.io-error-burst"));
}

#[test]
fn time_jumping_back_resets_windows() {
    let rules = rules();
    // two boots in one file: 9 errors late in boot 1, then 1 early in boot 2 -> no burst across boots
    let mut text = String::new();
    for i in 0..9 {
        text.push_str(&format!("[ 5000.{i:06}] blk_update_request: I/O error, dev sdb, sector {i}\n"));
    }
    text.push_str("[    3.000000] blk_update_request: I/O error, dev sdb, sector 9\n");
    let mut s = Scanner::new(Arc::clone(&rules), "h", 2025).unwrap();
    let mut out = Vec::new();
    s.scan_reader(text.as_bytes(), &mut out).unwrap();
    assert!(!out.iter().any(|e| e.finding.rule == "disk.io-error-burst"));
    assert_eq!(s.stats().clock_resets, 1);
}

#[test]
fn garbage_huge_truncated_and_continuation_lines() {
    let rules = rules();
    let mut text: Vec<u8> = Vec::new();
    text.extend_from_slice(b"\x00\x01\x02binary\xff\xfe I/O error, dev sda, sector 1\n"); // 1: binary
    text.extend_from_slice(b"6,10,100,-;sd 0:0:0:0: [sda] attached\n"); // 2
    text.extend_from_slice(b" SUBSYSTEM=block I/O error, dev sda, sector 1\n"); // 3: kmsg dictionary
    text.extend_from_slice(b"[  12.5"); // 4: truncated prefix, plain text
    text.extend_from_slice(b"\n");
    text.extend_from_slice(b"Jun 14 15:16:01 combo sshd[1]: Kernel panic - not syncing: fake\n"); // 5: userspace
    let mut huge = b"[  13.000000] ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', MAX_LINE_LEN * 3));
    huge.extend_from_slice(b" Kernel panic - not syncing: beyond the cap\n"); // 6: cut before the panic text
    text.extend_from_slice(&huge);
    text.extend_from_slice(b"[  14.000000] Kernel panic - not syncing: Fatal exception\r\n"); // 7: CRLF
    text.extend_from_slice(b"6,11,15000000,-;blk_update_request: I/O error, dev sdc, sector 7"); // 8: no final newline
    let (events, stats) = scan_bytes(&rules, &text);
    assert_eq!(stats.lines, 8);
    assert_eq!(stats.binary, 1);
    assert_eq!(stats.truncated, 1);
    assert_eq!(stats.meta, 1);
    assert_eq!(stats.non_kernel, 1);
    let got: Vec<(Option<u64>, &str)> = events.iter().map(|e| (e.line, e.finding.rule.as_str())).collect();
    assert_eq!(got, vec![(Some(7), "kernel.panic"), (Some(8), "disk.io-error")]);
    assert_eq!(events[0].finding.evidence, "Kernel panic - not syncing: Fatal exception");
    assert_eq!(events[1].finding.object.to_string(), "disk/host-1/sdc");
}

#[test]
fn findings_carry_checker_version_and_bounded_evidence() {
    let rules = rules();
    let (events, _) = scan_bytes(&rules, b"[ 1.0] Kernel panic - not syncing: x\n");
    let f = &events[0].finding;
    assert_eq!(f.checker, "kernel-log");
    assert_eq!(f.version, format!("{CHECKER_VERSION}+rules.{}", rules.version()));
    assert_eq!(f.object.kind(), Kind::Machine);
    assert_eq!(f.severity, Severity::Fatal);
}

fn rule_err(toml: &str) -> String {
    RuleSet::from_sources(&[("t.toml".into(), toml.into())]).unwrap_err().to_string()
}

const GOOD: &str = r#"
id = "disk.x"
keywords = ["I/O error"]
pattern = 'I/O error, dev (?P<dev>\w+)'
kind = "disk"
object = "{dev}"
severity = "ERROR"
"#;

#[test]
fn rule_file_validation_errors_are_clear() {
    let ok = format!("version = \"1\"\n[[rule]]{GOOD}");
    let set = RuleSet::from_sources(&[("t.toml".into(), ok.clone())]).unwrap();
    assert_eq!((set.len(), set.version()), (1, "1"));

    let e = rule_err(&ok.replace("(?P<dev>\\w+)", "(?P<dev>\\w+"));
    assert!(e.contains("t.toml") && e.contains("disk.x") && e.contains("bad regex"), "{e}");
    let e = rule_err(&ok.replace("kind = \"disk\"", "kind = \"gpu\""));
    assert!(e.contains("unknown object kind \"gpu\""), "{e}");
    let e = rule_err(&ok.replace("kind = \"disk\"", "kind = \"checker\""));
    assert!(e.contains("reserved"), "{e}");
    let e = rule_err(&ok.replace("severity = \"ERROR\"\n", ""));
    assert!(e.contains("missing field `severity`"), "{e}");
    let e = rule_err(&ok.replace("severity = \"ERROR\"", "severity = \"ERROR\"\nseverty = \"x\""));
    assert!(e.contains("unknown field `severty`"), "{e}");
    let e = rule_err(&ok.replace("version = \"1\"", "version = \"1\"\nextra = 1"));
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = rule_err(&format!("{ok}[[rule]]{GOOD}"));
    assert!(e.contains("duplicate rule id \"disk.x\""), "{e}");
    let e = rule_err(&ok.replace("severity = \"ERROR\"", "severity = \"BAD\""));
    assert!(e.contains("unknown severity"), "{e}");
    let e = rule_err(&ok.replace("object = \"{dev}\"", "object = \"{device}\""));
    assert!(e.contains("no group (?P<device>"), "{e}");
    let e = rule_err(&ok.replace("object = \"{dev}\"\n", ""));
    assert!(e.contains("needs an object template"), "{e}");
    let e = rule_err(&ok.replace("keywords = [\"I/O error\"]", "keywords = []"));
    assert!(e.contains("keywords"), "{e}");
    let e = rule_err(&ok.replace(
        "severity = \"ERROR\"",
        "severity = \"ERROR\"\nthreshold = { count = 3, window = \"10 minutes\" }",
    ));
    assert!(e.contains("threshold window"), "{e}");
    let e = rule_err(&ok.replace(
        "severity = \"ERROR\"",
        "severity = \"ERROR\"\nthreshold = { count = 0, window = \"10m\" }",
    ));
    assert!(e.contains("threshold count"), "{e}");
    // an example the rule does not fire on (keyword not in the line) is a load error
    let e = rule_err(
        &ok.replace("severity = \"ERROR\"", "severity = \"ERROR\"\nexamples = [\"IO error, dev sda\"]"),
    );
    assert!(e.contains("does not fire"), "{e}");
    let e = rule_err(&ok.replace(
        "severity = \"ERROR\"",
        "severity = \"ERROR\"\ncounter_examples = [\"I/O error, dev sda\"]",
    ));
    assert!(e.contains("counter-example"), "{e}");
    let e = rule_err(&ok.replace("version = \"1\"", "version = \"1 2\""));
    assert!(e.contains("version"), "{e}");
    let e = rule_err("version = \"1\"\n");
    assert!(e.contains("no rules"), "{e}");
    let e = rule_err("not toml [");
    assert!(e.contains("invalid rule file"), "{e}");
}

#[test]
fn rules_dir_loads_sorted_and_rejects_cross_file_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.toml"), format!("version = \"b1\"\n[[rule]]{GOOD}")).unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        format!("version = \"a1\"\n[[rule]]{}", GOOD.replace("disk.x", "disk.y")),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let set = RuleSet::from_dir(dir.path()).unwrap();
    assert_eq!(set.version(), "a1+b1");
    assert_eq!(set.rules()[0].id, "disk.y");
    std::fs::write(dir.path().join("c.toml"), format!("version = \"c1\"\n[[rule]]{GOOD}")).unwrap();
    let e = RuleSet::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("duplicate rule id \"disk.x\"") && e.contains("b.toml)") && e.contains("c.toml"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(RuleSet::from_dir(empty.path()).unwrap_err().to_string().contains("no *.toml"));
    assert!(RuleSet::from_dir(&empty.path().join("missing")).is_err());
}

#[test]
fn regexes_are_byte_oriented_with_unicode_off() {
    // `\w` must be ASCII-only and invalid UTF-8 must not stop a match.
    let rules = rules();
    let (events, _) = scan_bytes(&rules, b"[ 1.0] \xc3\xa9 Kernel panic - not syncing: \xff\xfe\n");
    assert!(events.is_empty(), "anchored rule must not match mid-line");
    let (events, _) = scan_bytes(&rules, b"[ 1.0] Kernel panic - not syncing: \xff\xfe\n");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].finding.evidence, "Kernel panic - not syncing: \u{fffd}\u{fffd}");
}

fn fixture_root(boot_id: &str, kmsg: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("proc/sys/kernel/random")).unwrap();
    std::fs::create_dir_all(root.path().join("dev")).unwrap();
    std::fs::write(root.path().join("proc/sys/kernel/random/boot_id"), format!("{boot_id}\n")).unwrap();
    std::fs::write(root.path().join("proc/stat"), "cpu 1 2 3\nbtime 1700000000\n").unwrap();
    std::fs::write(root.path().join("dev/kmsg"), kmsg).unwrap();
    root
}

fn ctx(root: &Path) -> CheckContext {
    CheckContext {
        root: root.to_path_buf(),
        host: "node-7".into(),
        now_ms: 1_700_000_100_000,
        profile: "online".into(),
    }
}

#[test]
fn checker_reads_kmsg_under_root_and_resumes_without_repeats() {
    let rules = rules();
    let boot = "4c7e0c2d-1111-2222-3333-444455556666";
    let gpud = std::fs::read_to_string(testdata("gpud/kmsg.1.log")).unwrap();
    let first = format!(
        "{}\n3,4100,206800000,-;nvme nvme0: I/O 123 QID 4 timeout, aborting\n SUBSYSTEM=nvme\n",
        gpud.trim_end()
    );
    let root = fixture_root(boot, &first);
    let state = tempfile::tempdir().unwrap();
    let cursor_path = state.path().join("kmsg.cursor");

    let mut c = KernelLogChecker::kmsg(Arc::clone(&rules), Box::new(FileCursorStore::new(&cursor_path)));
    assert_eq!(c.name(), "kernel-log");
    let f = c.run(&ctx(root.path())).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].object.to_string(), "disk/node-7/nvme0n1");
    assert_eq!(f[0].time_ms, 1_700_000_000_000 + 206_800);
    assert_eq!(c.kmsg_stats().records, 48);
    assert!(c.run(&ctx(root.path())).unwrap().is_empty(), "nothing new, nothing repeated");

    // Restart (new checker, same boot): the device replays the whole buffer plus two new records.
    let second = format!(
        "{first}3,4101,206900000,-;nvme nvme0: I/O 124 QID 4 timeout, aborting\n3,4103,207000000,-;EXT4-fs (nvme0n1p1): Remounting filesystem read-only\n"
    );
    std::fs::write(root.path().join("dev/kmsg"), &second).unwrap();
    let mut c = KernelLogChecker::kmsg(Arc::clone(&rules), Box::new(FileCursorStore::new(&cursor_path)));
    let f = c.run(&ctx(root.path())).unwrap();
    // The agent groups multi-line records, and a record is emitted when it closes (here at the end of the
    // run), so the order within one run is not the log's: compare as a set.
    let mut got: Vec<String> = f.iter().map(|f| format!("{} {}", f.rule, f.object)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            "disk.timeout disk/node-7/nvme0n1",
            "fs.read-only disk/node-7/nvme0n1",
            "fs.read-only machine/node-7",
        ]
    );
    let st = c.kmsg_stats();
    assert_eq!((st.records, st.replayed_skipped, st.lost), (2, 48, 1));

    // A disk the log names by ATA port is reported under its block device when sysfs knows the mapping.
    let third = format!("{second}3,4104,207100000,-;ata3.00: error: {{ UNC }}\n");
    std::fs::write(root.path().join("dev/kmsg"), &third).unwrap();
    std::fs::create_dir_all(
        root.path().join("sys/class/ata_port/ata3/device/host2/target2:0:0/2:0:0:0/block/sdb"),
    )
    .unwrap();
    let f = c.run(&ctx(root.path())).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].rule.as_str(), f[0].object.to_string()),
        ("disk.medium-error", "disk/node-7/sdb".to_string())
    );
    assert_eq!(f[0].readings.get("logged_name").map(String::as_str), Some("ata3"));

    // New boot: same file contents are new records of the new boot, read from the start.
    let root2 = fixture_root("99999999-1111-2222-3333-444455556666", &third);
    let mut c = KernelLogChecker::kmsg(Arc::clone(&rules), Box::new(FileCursorStore::new(&cursor_path)));
    let f = c.run(&ctx(root2.path())).unwrap();
    assert_eq!(f.len(), 5);
    assert!(f.iter().any(|f| f.object.to_string() == "disk/node-7/ata3"), "no sysfs mapping under this root");
    assert_eq!(c.kmsg_stats().replayed_skipped, 0);
}

#[test]
fn checker_errors_are_probe_errors_not_panics() {
    let rules = rules();
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut c = KernelLogChecker::kmsg(rules, Box::new(FileCursorStore::new(state.path().join("c"))));
    assert!(matches!(c.run(&ctx(root.path())), Err(CheckError::Probe(_))));
}

#[test]
fn fed_checker_and_queue_limit() {
    let rules = rules();
    let mut c = KernelLogChecker::fed(rules);
    for _ in 0..MAX_QUEUED_LINES + 5 {
        c.push_line(b"[ 5.0] e1000e: eth0 NIC Link is Down");
    }
    assert_eq!(c.dropped_lines(), 5);
    let root = tempfile::tempdir().unwrap();
    let f = c.run(&ctx(root.path())).unwrap();
    // every line fires link-down; link-flap fires on every third (window emptied after each firing)
    let downs = f.iter().filter(|f| f.rule == "nic.link-down").count();
    let flaps = f.iter().filter(|f| f.rule == "nic.link-flap").count();
    assert_eq!(downs, MAX_QUEUED_LINES);
    assert_eq!(flaps, MAX_QUEUED_LINES / 3);
    assert!(c.run(&ctx(root.path())).unwrap().is_empty());
}

/// Counts heap allocations made by the current thread while enabled (delegates to the system allocator).
/// The only unsafe code in this crate, test-only: a GlobalAlloc impl cannot be written without it.
#[allow(unsafe_code)]
mod counting_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ON.try_with(|on| {
                if on.get() {
                    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                }
            });
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations made by this thread while running `f`.
    pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
        COUNT.with(|c| c.set(0));
        ON.with(|on| on.set(true));
        let r = f();
        ON.with(|on| on.set(false));
        (r, COUNT.with(Cell::get))
    }
}

/// The common path (a benign line) allocates nothing: parsing borrows, the prefilter scans, and the
/// scratch buffers were sized when the scanner was built. Fault lines may allocate (findings are built).
#[test]
fn benign_lines_do_not_allocate() {
    let rules = rules();
    let benign = std::fs::read(testdata("bench/benign.log")).unwrap();
    let mut s = Scanner::new(Arc::clone(&rules), "h", 2025).unwrap();
    let mut out = Vec::with_capacity(16);
    let lines: Vec<&[u8]> = benign.split(|&b| b == b'\n').collect();
    let ((), allocs) = counting_alloc::count(|| {
        for l in &lines {
            s.feed(l, None, &mut out);
        }
    });
    assert!(out.is_empty());
    assert_eq!(s.stats().lines, lines.len() as u64);
    assert_eq!(allocs, 0, "allocations on {} benign lines", lines.len());
    // and the counter does count: a fault line allocates its finding
    let ((), allocs) =
        counting_alloc::count(|| s.feed(b"[ 1.0] Kernel panic - not syncing: x", None, &mut out));
    assert!(allocs > 0);
}

/// Figures of a run over `real-lines/lines.tsv`.
#[derive(Debug, Default, Clone, Copy)]
struct RealFigures {
    fault_lines: usize,
    found_lines: usize,
    incidents: usize,
    found_incidents: usize,
    benign_lines: usize,
    false_alarms: usize,
    attributed: usize,
}

/// Whether `obj` is the object a line labelled (`kind`, `label`) is about.
fn right_object(kind: &str, label: &str, obj: &state_machines::ObjectId) -> bool {
    let name = obj.name().unwrap_or_default();
    match kind {
        "disk" | "fs" => obj.kind() == Kind::Disk && object::block(label).is_some_and(|want| want == name),
        "memory" => match label.split_once('/') {
            Some((mc, dimm)) => {
                obj.kind() == Kind::Dimm
                    && object::normalize(object::Normalize::Dimm, &format!("{mc}-{dimm}")).as_deref()
                        == Some(name)
            }
            // a controller, a page or the GHES source: the machine or any DIMM is right
            None => matches!(obj.kind(), Kind::Machine | Kind::Dimm),
        },
        "machine" => obj.kind() == Kind::Machine,
        "nic" => {
            let want = label.rsplit_once('(').map_or(label, |(_, r)| r.trim_end_matches(')'));
            obj.kind() == Kind::Nic && name == want
        }
        _ => false,
    }
}

/// Feed each source's lines, in order, to one scanner (as the post showed them); a line is found when a
/// finding's line or record covers it.
fn real_lines_figures(rules: &Arc<RuleSet>, group: bool, root: Option<&Path>, verbose: bool) -> RealFigures {
    let text = std::fs::read_to_string(testdata("real-lines/lines.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    let mut sources: Vec<&str> = Vec::new();
    for r in &rows {
        if !sources.contains(&r[3]) {
            sources.push(r[3]);
        }
    }
    let mut fig = RealFigures::default();
    let mut incidents: std::collections::BTreeMap<(String, String), bool> = Default::default();
    for src in sources {
        let lines: Vec<&Vec<&str>> = rows.iter().filter(|r| r[3] == src).collect();
        let body: String = lines.iter().map(|r| format!("{}\n", r[4])).collect();
        let mut s = Scanner::new(Arc::clone(rules), "host-1", 2025).unwrap();
        s.set_group_records(group);
        s.set_root(root.map(Path::to_path_buf));
        let mut out = Vec::new();
        s.scan_reader(body.as_bytes(), &mut out).unwrap();
        for (i, r) in lines.iter().enumerate() {
            let n = i as u64 + 1;
            let covering: Vec<&Event> =
                out.iter().filter(|e| e.line == Some(n) || e.record_lines.contains(&n)).collect();
            let found = !covering.is_empty();
            let (kind, label, class) = (r[0], r[1], r[2]);
            if class == "fault" {
                fig.fault_lines += 1;
                let inc = incidents.entry((src.to_string(), kind.to_string())).or_default();
                *inc |= found;
                if found {
                    fig.found_lines += 1;
                    if covering.iter().any(|e| right_object(kind, label, &e.finding.object)) {
                        fig.attributed += 1;
                    } else if verbose {
                        let got: Vec<String> =
                            covering.iter().map(|e| e.finding.object.to_string()).collect();
                        println!("MISATTRIBUTED {label} -> {got:?}: {}", r[4]);
                    }
                } else if verbose {
                    println!("MISSED {kind} {label}: {}", r[4]);
                }
            } else {
                fig.benign_lines += 1;
                if found {
                    fig.false_alarms += 1;
                    if verbose {
                        println!("FALSE ALARM {}: {}", covering[0].finding.rule, r[4]);
                    }
                }
            }
        }
    }
    fig.incidents = incidents.len();
    fig.found_incidents = incidents.values().filter(|v| **v).count();
    fig
}

fn print_figures(what: &str, f: RealFigures) {
    println!(
        "{what}: line recall {}/{} = {:.2}, incident recall {}/{} = {:.2}, false alarms {}/{} look-alikes, \
         attribution {}/{} = {:.2}",
        f.found_lines,
        f.fault_lines,
        f.found_lines as f64 / f.fault_lines as f64,
        f.found_incidents,
        f.incidents,
        f.found_incidents as f64 / f.incidents as f64,
        f.false_alarms,
        f.benign_lines,
        f.attributed,
        f.found_lines,
        f.attributed as f64 / f.found_lines.max(1) as f64
    );
}

/// Real lines from public posts (`testdata/kernel-log/real-lines/`): prints line recall, incident recall,
/// false alarms on the look-alikes and attribution (run with `--nocapture` to see them and every miss).
#[test]
fn real_lines_recall_attribution_and_false_alarms() {
    let rules = rules();
    let f = real_lines_figures(&rules, true, None, true);
    print_figures("real lines (records grouped, no sysfs)", f);
    assert_eq!((f.fault_lines, f.benign_lines), (79, 33));
    assert_eq!(f.false_alarms, 0, "a benign look-alike fired");
}

fn scan_grouped(rules: &Arc<RuleSet>, text: &str, root: Option<&Path>) -> Vec<Event> {
    let mut s = Scanner::new(Arc::clone(rules), "host-1", 2025).unwrap();
    s.set_group_records(true);
    s.set_root(root.map(Path::to_path_buf));
    let mut out = Vec::new();
    s.scan_reader(text.as_bytes(), &mut out).unwrap();
    out
}

/// An ATA record with a media error (real lines from the shared set): one finding, ERROR, cause media,
/// every line in the evidence; ungrouped, the context lines alone produce nothing.
#[test]
fn ata_media_record_is_one_finding_with_cause() {
    let rules = rules();
    let text = "[  131.441276] ata3.00: exception Emask 0x0 SAct 0x3 SErr 0x0 action 0x0\n\
                [  131.452679]          res 41/40:00:b1:4b:1c/00:00:14:00:00/40 Emask 0x409 (media error) <F>\n\
                [  131.460341] ata3.00: status: { DRDY ERR }\n\
                [  131.464147] ata3.00: error: { UNC }\n\
                [  131.470000] ata3.00: configured for UDMA/133\n";
    let ev = scan_grouped(&rules, text, None);
    assert_eq!(ev.len(), 1, "{}", show(&ev));
    let f = &ev[0].finding;
    assert_eq!(
        (f.rule.as_str(), f.object.to_string(), f.severity),
        ("disk.medium-error", "disk/host-1/ata3".into(), Severity::Error)
    );
    assert_eq!(f.readings.get("cause").map(String::as_str), Some("media"));
    assert_eq!(ev[0].record_lines, vec![1, 2, 3, 4]);
    assert_eq!(f.evidence.lines().count(), 4);
    // ungrouped (the agent until it flushes records): exception + UNC only, no context-line findings
    let (ev, _) = scan_bytes(&rules, text.as_bytes());
    assert_eq!(rule_ids(&ev), BTreeSet::from(["disk.ata-exception".into(), "disk.medium-error".into()]));
    // a link-error record says link, not media; the benign EH lines around it fire nothing
    let text = "[  117.000000] ata1.00: exception Emask 0x10 SAct 0x0 SErr 0x400000 action 0x6 frozen\n\
                [  117.000100] ata1: SError: { Handshk }\n\
                [  117.370000] ata1: SATA link up 3.0 Gbps (SStatus 123 SControl 300)\n\
                [  117.380000] ata1.00: configured for UDMA/133\n\
                [  117.390000] ata1: EH complete\n";
    let ev = scan_grouped(&rules, text, None);
    assert_eq!(ev.len(), 1, "{}", show(&ev));
    assert_eq!(ev[0].finding.readings.get("cause").map(String::as_str), Some("link"));
    assert_eq!(ev[0].record_lines, vec![1, 2]);
}

/// Benign look-alikes around SCSI/ATA records: an empty USB card reader's sense block, a lone status line,
/// a recovered error and a unit attention after a reset fire nothing, grouped or not.
#[test]
fn benign_sense_and_status_blocks_fire_nothing() {
    let rules = rules();
    let text = "[    5.100000] sd 6:0:0:0: [sdc] tag#0 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE cmd_age=0s\n\
                [    5.100001] sd 6:0:0:0: [sdc] tag#0 Sense Key : Not Ready [current]\n\
                [    5.100002] sd 6:0:0:0: [sdc] tag#0 Add. Sense: Medium not present\n\
                [    9.000000] sd 0:0:0:0: [sda] tag#3 Sense Key : Unit Attention [current]\n\
                [    9.000001] sd 0:0:0:0: [sda] tag#3 ASC=0x29 ASCQ=0x0\n\
                [   12.000000] sd 0:0:0:0: [sda] tag#4 Sense Key : Recovered Error [current]\n\
                [   20.000000] ata2.00: status: { DRDY }\n";
    let ev = scan_grouped(&rules, text, None);
    assert!(ev.is_empty(), "{}", show(&ev));
    let (ev, _) = scan_bytes(&rules, text.as_bytes());
    assert!(ev.is_empty(), "{}", show(&ev));
}

/// A GHES block is one finding on the DIMM it names; its severity comes from the event severity line.
#[test]
fn ghes_record_goes_to_the_named_dimm() {
    let rules = rules();
    let text = "[ 100.000000] {1}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 0\n\
                [ 100.000001] {1}[Hardware Error]: event severity: recoverable\n\
                [ 100.000002] {1}[Hardware Error]:  Error 0, type: recoverable\n\
                [ 100.000003] {1}[Hardware Error]:   section_type: memory error\n\
                [ 100.000004] {1}[Hardware Error]:   DIMM location: NODE 3 CPU0_DIMM_G1\n\
                [ 100.000005] {2}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 1\n\
                [ 100.000006] {2}[Hardware Error]: event severity: corrected\n";
    let ev = scan_grouped(&rules, text, None);
    assert_eq!(ev.len(), 2, "{}", show(&ev));
    let f = &ev[0].finding;
    assert_eq!((f.rule.as_str(), f.severity), ("hw.error-uncorrected", Severity::Error));
    assert_eq!(f.object.to_string(), "dimm/host-1/node_3_cpu0_dimm_g1");
    assert_eq!(ev[0].record_lines, vec![1, 2, 3, 4, 5]);
    // the corrected record (below its 10-in-1h threshold) is INFO on the machine
    assert_eq!(
        (ev[1].finding.severity, ev[1].finding.object.to_string()),
        (Severity::Info, "machine/host-1".into())
    );
}

/// EDAC CEs are summed by the count in the line per DIMM: 4 + 5 is below ten (INFO), one more is WARNING;
/// another DIMM counts separately; a single 128-CE line is WARNING at once.
#[test]
fn edac_ce_counts_errors_not_lines() {
    let rules = rules();
    let ce = |t: u32, n: u32, dimm: u32| {
        format!(
            "[{t:>6}.000000] EDAC MC0: {n} CE error on CPU#0Channel#2_DIMM#{dimm} (channel:2 slot:0 page:0x0 offset:0x0 grain:8 syndrome:0x0)\n"
        )
    };
    let text = [ce(10, 4, 0), ce(20, 5, 0), ce(25, 9, 1), ce(30, 1, 0), ce(40, 128, 1)].concat();
    let ev = scan_grouped(&rules, &text, None);
    let got: Vec<(String, Severity)> =
        ev.iter().map(|e| (e.finding.object.to_string(), e.finding.severity)).collect();
    let d0 = "dimm/host-1/mc0-cpu0channel2_dimm0".to_string();
    let d1 = "dimm/host-1/mc0-cpu0channel2_dimm1".to_string();
    assert_eq!(
        got,
        vec![
            (d0.clone(), Severity::Info),
            (d0.clone(), Severity::Info),
            (d1.clone(), Severity::Info),
            (d0, Severity::Warning),
            (d1, Severity::Warning)
        ]
    );
    assert_eq!(ev[1].finding.readings.get("in_window").map(String::as_str), Some("9 of 10"));
}

/// With a probe root: a PCI-only NIC line goes to its interface, an I/O error on dm-N to the disks below
/// it, a filesystem error on dm-N to the machine, an ATA port to its block device.
#[test]
fn sysfs_root_resolves_pci_dm_and_ata_names() {
    let rules = rules();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("sys/bus/pci/devices/0000:09:00.0/net/eth0")).unwrap();
    std::fs::create_dir_all(r.join("sys/block/dm-1/slaves/sdb2")).unwrap();
    std::fs::create_dir_all(r.join("sys/block/dm-1/slaves/sdc2")).unwrap();
    std::fs::create_dir_all(r.join("sys/class/ata_port/ata3/device/host2/target2:0:0/2:0:0:0/block/sdd"))
        .unwrap();
    let text = "[   95.178723] igb 0000:09:00.0: Detected Tx Unit Hang\n\
                [   96.000000] igb 0000:0a:00.0: Detected Tx Unit Hang\n\
                [50006.000000] EXT4-fs warning (device dm-1): ext4_end_bio:316: I/O error -5 writing to inode 10223621 (offset 33554432 size 8388608 starting block 14403824)\n\
                [50010.000000] XFS (dm-1): Corruption detected. Unmount and run xfs_repair\n\
                [50020.000000] ata3.00: error: { UNC }\n";
    let ev = scan_grouped(&rules, text, Some(r));
    let got: Vec<(String, String)> =
        ev.iter().map(|e| (e.finding.rule.clone(), e.finding.object.to_string())).collect();
    assert_eq!(
        got,
        vec![
            ("nic.hw-hang".into(), "nic/host-1/eth0".into()),
            ("nic.hw-hang".into(), "machine/host-1".into()),
            ("fs.io-error".into(), "disk/host-1/sdb".into()),
            ("fs.io-error".into(), "disk/host-1/sdc".into()),
            ("fs.error".into(), "machine/host-1".into()),
            ("disk.medium-error".into(), "disk/host-1/sdd".into()),
        ],
        "{}",
        show(&ev)
    );
    assert_eq!(ev[2].finding.readings.get("logged_name").map(String::as_str), Some("dm-1"));
    assert_eq!(ev[4].finding.readings.get("disks").map(String::as_str), Some("sdb sdc"));
    assert_eq!(ev[5].finding.readings.get("logged_name").map(String::as_str), Some("ata3"));
    // an EDAC line gets the driver's counters of the DIMM it labels
    let d = r.join("sys/devices/system/edac/mc/mc0/dimm2");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("dimm_label"), "CPU_SrcID#0_Ha#0_Chan#2_DIMM#0").unwrap();
    std::fs::write(d.join("dimm_ce_count"), "17").unwrap();
    let ev = scan_grouped(
        &rules,
        "[50014.000000] EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0_Chan#2_DIMM#0 (channel:2 slot:0 page:0x849923 offset:0x380 grain:32 syndrome:0x0)\n",
        Some(r),
    );
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].finding.readings.get("sysfs_ce_count").map(String::as_str), Some("17"));
    assert_eq!(ev[0].finding.readings.get("sysfs_dimm").map(String::as_str), Some("mc0/dimm2"));
    // the shared real set with a root that knows the PCI function of its igb line: attributed too
    let pci_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pci_root.path().join("sys/bus/pci/devices/0000:09:00.0/net/eth0")).unwrap();
    let f = real_lines_figures(&rules, true, Some(pci_root.path()), true);
    print_figures("real lines (records grouped, sysfs root with 0000:09:00.0 -> eth0)", f);
    assert_eq!(f.false_alarms, 0);
}

/// Record limits: a record never grows past MAX_RECORD_LINES, and no more than MAX_OPEN_RECORDS are open.
#[test]
fn record_limits() {
    let rules = rules();
    let mut text = String::from("[ 10.000000] ata1.00: exception Emask 0x0 SAct 0x3 SErr 0x0 action 0x0\n");
    for _ in 0..scan::MAX_RECORD_LINES + 10 {
        text.push_str("[ 10.000000] ata1: SError: { BadCRC }\n");
    }
    let ev = scan_grouped(&rules, &text, None);
    assert_eq!(ev.len(), 2, "{}", show(&ev));
    assert_eq!(ev[0].record_lines.len(), scan::MAX_RECORD_LINES);
    assert_eq!(ev[1].record_lines.len(), 11, "the rest is the next record");
    let mut s = Scanner::new(Arc::clone(&rules), "h", 2025).unwrap();
    s.set_group_records(true);
    let mut out = Vec::new();
    for port in 0..scan::MAX_OPEN_RECORDS + 3 {
        s.feed(format!("[ 10.0] ata{port}: SError: {{ BadCRC }}").as_bytes(), None, &mut out);
    }
    assert_eq!(out.len(), 3, "the three oldest were closed to stay at the limit");
    s.flush(&mut out);
    assert_eq!(out.len(), scan::MAX_OPEN_RECORDS + 3);
}

/// The merger: repeats of one condition inside the window become one summary; keys are bounded.
#[test]
fn merger_merges_repeats_and_is_bounded() {
    let rules = rules();
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&format!("[{:>5}.000000] e1000e: eth0 NIC Link is Down\n", 100 + i));
    }
    let (events, _) = scan_bytes(&rules, text.as_bytes());
    let mut m = scan::Merger::new();
    let mut out = Vec::new();
    for e in events {
        m.push(e, &mut out);
    }
    m.finish(&mut out);
    let got: Vec<(String, Option<String>)> =
        out.iter().map(|e| (e.finding.rule.clone(), e.finding.readings.get("repeats").cloned())).collect();
    assert_eq!(
        got,
        vec![
            ("nic.link-down".into(), None),
            ("nic.link-flap".into(), None),
            ("nic.link-down".into(), Some("100".into())),
            ("nic.link-flap".into(), Some("33".into())),
        ]
    );
    assert_eq!(out[2].finding.readings.get("first_seen").map(String::as_str), Some("+100.000000"));
    assert_eq!(out[2].finding.readings.get("last_seen").map(String::as_str), Some("+199.000000"));
    // more distinct conditions than the limit: the oldest is closed, memory stays bounded
    let mut m = scan::Merger::new();
    let mut out = Vec::new();
    for i in 0..scan::MAX_MERGE_KEYS + 5 {
        let (mut ev, _) = scan_bytes(&rules, format!("[ 1.0] e1000e: eth{i} NIC Link is Down\n").as_bytes());
        m.push(ev.remove(0), &mut out);
    }
    assert_eq!(m.len(), scan::MAX_MERGE_KEYS);
    assert_eq!(out.len(), scan::MAX_MERGE_KEYS + 5);
}
