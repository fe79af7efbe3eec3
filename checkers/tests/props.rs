//! Property tests for every parser the checkers run on outside data (kmsg records, dmesg/syslog/journal
//! lines, the kernel-log scanner, smartctl JSON, external checker output): arbitrary bytes and byte-mutated
//! real inputs never panic, what comes out stays within the parser's own limits, and garbage gets an error.
//! Case counts are explicit (independent of `PROPTEST_CASES`) so the set stays a few seconds in debug.

use std::io::Cursor as IoCursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use checkers::external::{self, ExternalSpec};
use checkers::kernel_log::kmsg::{KMSG_RECORD_MAX, LineFileSource, record_seq};
use checkers::kernel_log::parse::format_log_time;
use checkers::kernel_log::{
    Cursor, Event, Format, KmsgReader, LogTime, MAX_LINE_LEN, RuleSet, Scanner, parse_line,
};
use checkers::smart::{self, MAX_SCAN_DEVICES, SmartError};
use checkers::{CheckContext, smart::SmartReport};
use proptest::prelude::*;
use serde_json::Value;
use state_machines::finding::MAX_EVIDENCE_LEN;

const HOST: &str = "host-1";

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)
}

/// Real kernel log lines of every format the parser knows (dmesg from the real-lines corpus, raw kmsg
/// records from gpud's recording, plus syslog/journal/ctime/iso/marker shapes), the seeds for mutation.
fn real_lines() -> &'static [Vec<u8>] {
    static LINES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let tsv = std::fs::read_to_string(testdata("kernel-log/real-lines/lines.tsv")).expect("lines.tsv");
        let mut lines: Vec<Vec<u8>> = tsv
            .lines()
            .skip(1)
            .filter_map(|l| l.rsplit('\t').next())
            .map(|l| l.as_bytes().to_vec())
            .collect();
        let kmsg = std::fs::read(testdata("kernel-log/gpud/kmsg.1.log")).expect("kmsg.1.log");
        lines.extend(kmsg.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
        for l in [
            "Nov  9 10:19:35 host-1 kernel: [ 12.345678] ata1.00: failed command: READ FPDMA QUEUED",
            "2026-11-22T02:05:26+0000 host-1 kernel: EXT4-fs error (device sda1): bad block",
            "[Sun Jan  5 18:28:55 2025] EDAC MC0: 1 CE memory read error on CPU_SrcID#0_Ha#0",
            "2025-01-21T04:41:44,283302+00:00 nvme nvme0: I/O 12 QID 3 timeout, aborting",
            "kern  :err   : [  131.4] blk_update_request: I/O error, dev sdb, sector 12345",
            "<3>[    2.608284] mce: [Hardware Error]: Machine check events logged",
            "-- Boot 4c7e5a0d8f2b4d0e9a8b7c6d5e4f3a2b --",
            " SUBSYSTEM=pci",
        ] {
            lines.push(l.as_bytes().to_vec());
        }
        lines
    })
}

/// One byte-level edit of a seed: overwrite, insert, delete, or cut the rest.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (
            any::<usize>(),
            prop_oneof![any::<u8>(), Just(b' '), Just(b';'), Just(b','), Just(b'['), Just(b']')]
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len();
        match *e {
            Edit::Set(i, b) if n > 0 => v[i % n] = b,
            Edit::Insert(i, b) => v.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                v.remove(i % n);
            }
            Edit::Truncate(i) => v.truncate(i % (n + 1)),
            _ => {}
        }
    }
    v
}

/// A seed picked from `seeds` with up to 8 byte edits.
fn mutated(seeds: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    (0..seeds.len(), proptest::collection::vec(edit(), 0..8))
        .prop_map(move |(i, e)| apply(seeds[i].clone(), &e))
}

/// A kernel log line: arbitrary bytes, or a mutated real one.
fn log_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), mutated(real_lines())]
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![
        Just(Format::Kmsg),
        Just(Format::KmsgDict),
        Just(Format::Dmesg),
        Just(Format::DmesgCtime),
        Just(Format::DmesgIso),
        Just(Format::Syslog),
        Just(Format::Journal),
        any::<bool>().prop_map(|boot| Format::Marker { boot }),
        Just(Format::Plain),
    ]
}

fn rules() -> Arc<RuleSet> {
    static RULES: OnceLock<Arc<RuleSet>> = OnceLock::new();
    Arc::clone(RULES.get_or_init(|| Arc::new(RuleSet::default_rules().expect("default rules compile"))))
}

/// A finding a checker hands on: valid by the master's own rules, evidence within its limit.
fn assert_finding_ok(f: &state_machines::Finding) {
    assert!(f.evidence.len() <= MAX_EVIDENCE_LEN, "evidence of {} bytes", f.evidence.len());
    if let Err(e) = f.validate() {
        panic!("invalid finding {} {} ({} readings): {e}", f.object, f.rule, f.readings.len());
    }
    assert_eq!(f.object.host(), HOST);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any line parses to a record whose message is part of the line, and its time formats without panic.
    #[test]
    fn parse_line_takes_any_bytes(line in log_line(), prev in format(), year in 1970i32..2200) {
        let r = parse_line(&line, prev, year);
        prop_assert!(r.msg.len() <= line.len());
        let start = r.msg.as_ptr() as usize;
        let base = line.as_ptr() as usize;
        prop_assert!(r.msg.is_empty() || (start >= base && start + r.msg.len() <= base + line.len()));
        if r.seq.is_some() {
            prop_assert_eq!(r.format, Format::Kmsg);
        }
        if let Some(t) = format_log_time(r.time) {
            prop_assert!(!t.is_empty() && t.len() < 64);
        }
        if let LogTime::Wall(ms) = r.time {
            // dates are parsed as given; they stay representable as u64 ms (no wrap-around on overflow)
            prop_assert!(ms < u64::MAX);
        }
    }

    /// The kmsg header's sequence number: only digits, and whatever `record_seq` finds is the second field.
    #[test]
    fn kmsg_record_seq_takes_any_bytes(rec in log_line()) {
        if let Some(seq) = record_seq(&rec) {
            let semi = rec.iter().position(|&b| b == b';').expect("a header ends at ';'");
            let field = rec[..semi].split(|&b| b == b',').nth(1).expect("a second field");
            prop_assert!(field.iter().all(u8::is_ascii_digit));
            prop_assert_eq!(std::str::from_utf8(field).ok().and_then(|s| s.parse::<u64>().ok()), Some(seq));
        }
    }

    /// A cursor read back from any text is one `encode` writes again unchanged.
    #[test]
    fn kmsg_cursor_decode_takes_any_text(text in prop_oneof![
        any::<String>(),
        "[0-9a-f-]{0,40} [0-9]{0,22}",
        "[ -~]{0,80}",
    ]) {
        if let Some(c) = Cursor::decode(&text) {
            prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
    }

    /// The scanner takes any run of lines: no panic, every finding valid and bounded, and at most two
    /// events per line it was fed, flush included (one about the logged object, one about its machine;
    /// without a probe root no dm device fans out).
    #[test]
    fn scanner_takes_any_lines(lines in proptest::collection::vec(log_line(), 0..24), group in any::<bool>()) {
        let mut s = Scanner::new(rules(), HOST, 2025).expect("valid host");
        s.set_group_records(group);
        let mut out: Vec<Event> = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            s.feed(l, Some(i as u64 + 1), &mut out);
        }
        s.flush(&mut out);
        prop_assert!(out.len() <= 2 * lines.len(), "{} events from {} lines", out.len(), lines.len());
        for e in &out {
            assert_finding_ok(&e.finding);
            prop_assert!(e.record_lines.len() <= lines.len());
        }
    }

    /// Byte-mutated raw kmsg recordings read through the file source: every record fits the kernel's
    /// record size, and a read ends (Ok or an error) instead of looping.
    #[test]
    fn kmsg_reader_takes_mutated_recordings(
        lines in proptest::collection::vec(prop_oneof![mutated(real_lines()), Just(vec![b' '; 3])], 0..32),
        joiner in prop_oneof![Just(b"\n".to_vec()), Just(b"\r\n".to_vec()), Just(Vec::new())],
        long in proptest::option::of(1usize..3 * KMSG_RECORD_MAX),
    ) {
        let mut file = lines.join(&joiner[..]);
        if let Some(n) = long {
            file.extend(std::iter::repeat_n(b'x', n));
            file.push(b'\n');
        }
        let newlines = file.iter().filter(|&&b| b == b'\n').count();
        let mut r = KmsgReader::new(LineFileSource::new(IoCursor::new(file)), "boot", None);
        let mut n = 0usize;
        let handed = r.poll(usize::MAX, |rec| {
            assert!(rec.len() <= KMSG_RECORD_MAX);
            n += 1;
        });
        if let Ok(h) = handed {
            prop_assert_eq!(h, n);
        }
        prop_assert!(n <= newlines + 1);
    }

    /// Arbitrary JSON values given to the smartctl parser: a report or a clear error, never a panic, and
    /// everything derived from a report (readings, object name, probe note) computes.
    #[test]
    fn smart_report_takes_any_json(v in json_value()) {
        let bytes = serde_json::to_vec(&v).expect("serialize");
        check_smart(&bytes);
        if let Ok(devs) = smart::parse_scan(&bytes) {
            prop_assert!(devs.len() <= MAX_SCAN_DEVICES);
        }
        let _ = smart::implausible_values(&v);
    }

    /// Garbage bytes are BadJson, never a panic.
    #[test]
    fn smart_report_refuses_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if serde_json::from_slice::<Value>(&bytes).is_err() {
            prop_assert!(matches!(smart::parse_report(&bytes, "/dev/sda"), Err(SmartError::BadJson(_))));
            prop_assert!(smart::parse_scan(&bytes).is_err());
        } else {
            check_smart(&bytes);
        }
    }

    /// External checker output: arbitrary and mutated valid lines. Output is bounded by `max_lines`,
    /// every finding is valid and about this host, every rejected line is reported as a problem.
    #[test]
    fn external_output_takes_any_lines(
        lines in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..120),
            mutated(external_seeds()),
        ], 0..40),
        max_lines in 1usize..30,
    ) {
        let mut spec = ExternalSpec::new("ext", "1.0.0", PathBuf::from("/bin/true"));
        spec.max_lines = max_lines;
        let ctx = CheckContext { root: PathBuf::from("/"), host: HOST.into(), now_ms: 1_700_000_000_000, profile: "online".into() };
        let stdout = lines.join(&b'\n');
        let (findings, problems, rejected) = external::parse_output(&spec, &ctx, &stdout);
        prop_assert!(findings.len() + rejected <= max_lines);
        prop_assert!(problems.len() <= rejected + 1);
        prop_assert!(problems.len() >= rejected);
        for f in &findings {
            assert_finding_ok(f);
            prop_assert_eq!(&f.checker, "ext");
        }
    }
}

proptest! {
    // Each case parses a whole smartctl document (up to ~100 KiB): fewer cases.
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Byte-mutated real smartctl documents (every fixture in testdata/smart): a report or a clear error.
    #[test]
    fn smart_report_takes_mutated_fixtures(doc in mutated(smart_fixtures())) {
        check_smart(&doc);
        let _ = smart::parse_scan(&doc);
    }
}

fn check_smart(bytes: &[u8]) {
    match smart::parse_report(bytes, "/dev/sda") {
        Ok(r) => check_report(&r),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn check_report(r: &SmartReport) {
    for (reading, value) in r.readings() {
        assert!(!value.is_nan(), "reading {reading:?} is NaN");
    }
    let name = r.object_name();
    assert!(!name.is_empty());
    let _ = r.probe_note();
    let _ = r.has_data();
}

/// Every smartctl JSON fixture (device reports and scans).
fn smart_fixtures() -> &'static [Vec<u8>] {
    static DOCS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut docs = Vec::new();
        for dir in ["smart/scan", "smart/smart-prom-next", "smart/smartctl-exporter"] {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(testdata(dir))
                .expect("smart fixtures")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            paths.sort();
            docs.extend(paths.iter().map(|p| std::fs::read(p).expect("fixture")));
        }
        assert!(docs.len() > 10, "smart fixtures found: {}", docs.len());
        docs
    })
}

/// Valid external checker lines to mutate.
fn external_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [
            r#"{"object":"disk/host-1/sda","severity":"critical","rule":"ext.bad","evidence":"x","readings":{"a":1}}"#,
            r#"{"object":"nic/host-1/eth0","severity":"warning","rule":"ext.link","readings":{"crc":"12","up":false}}"#,
            r#"{"object":"machine/host-1","severity":"ok","rule":"ext.ok","evidence":"fine"}"#,
            r#"{"object":"dimm/host-1/DIMM_A1","severity":"info","rule":"r","readings":{"n":[1,2],"o":{"k":null}}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    })
}

/// Arbitrary JSON, biased towards smartctl's shape (its top-level keys) so the parser goes deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("smartctl".to_string()),
        Just("device".to_string()),
        Just("name".to_string()),
        Just("type".to_string()),
        Just("protocol".to_string()),
        Just("devices".to_string()),
        Just("smart_status".to_string()),
        Just("passed".to_string()),
        Just("exit_status".to_string()),
        Just("messages".to_string()),
        Just("string".to_string()),
        Just("ata_smart_attributes".to_string()),
        Just("table".to_string()),
        Just("id".to_string()),
        Just("value".to_string()),
        Just("raw".to_string()),
        Just("nvme_smart_health_information_log".to_string()),
        Just("temperature".to_string()),
        Just("current".to_string()),
        Just("power_on_time".to_string()),
        Just("hours".to_string()),
        Just("ata_smart_self_test_log".to_string()),
        Just("standard".to_string()),
        Just("status".to_string()),
        Just("user_capacity".to_string()),
        Just("bytes".to_string()),
        Just("scsi_grown_defect_list".to_string()),
        "[a-z_]{1,10}",
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Lines longer than the scanner's limit are cut or skipped, never matched beyond it: no panic, findings
/// stay bounded (evidence is at most MAX_EVIDENCE_LEN even when the line is 4x MAX_LINE_LEN).
#[test]
fn scanner_takes_overlong_lines() {
    let mut s = Scanner::new(rules(), HOST, 2025).expect("valid host");
    let mut out = Vec::new();
    for seed in real_lines() {
        let mut line = seed.clone();
        while line.len() < 4 * MAX_LINE_LEN {
            line.extend_from_slice(seed);
            line.push(b' ');
        }
        s.feed(&line, None, &mut out);
    }
    s.flush(&mut out);
    assert!(!out.is_empty(), "the real lines hold faults");
    assert!(out.len() <= 2 * real_lines().len());
    for e in &out {
        assert_finding_ok(&e.finding);
    }
}

/// A tab inside a captured reading (is_binary lets tabs through) is not a control character in the finding.
#[test]
fn scanner_readings_have_no_control_characters() {
    let mut s = Scanner::new(rules(), HOST, 2025).expect("valid host");
    let mut out = Vec::new();
    s.feed(
        b"[50019.000000] mce: [Hardware Error]: Machine check: Processor\tcontext corrupt",
        Some(1),
        &mut out,
    );
    s.flush(&mut out);
    assert!(!out.is_empty(), "the MCE line is a finding");
    for e in &out {
        assert_finding_ok(&e.finding);
    }
}
