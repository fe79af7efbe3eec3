//! The kernel-log scanner: lines in, findings out. Owns the per-line state (previous format for kmsg
//! continuation lines, the log clock, count-in-window thresholds) and the counters of what it skipped.
//!
//! Per-line cost in the common case (a benign line): a binary-garbage check, format parsing (borrowing, no
//! allocation) and the keyword prefilter. Only lines that contain a rule keyword go further.
//!
//! A hit goes through the rule's decoder (readings such as `cause`, a severity the status implies, or a
//! drop), its threshold (weighted by the count inside the line where the rule names one), and, when
//! record grouping is on ([`Scanner::set_group_records`]), into a pending multi-line record: an ATA error
//! record, a GHES block or a SCSI sense block becomes one finding with the whole record as evidence. A
//! record closes when log time moves [`RECORD_GAP_MS`] past its last line, when it reaches
//! [`MAX_RECORD_LINES`], or at [`Scanner::flush`]. With a probe root ([`Scanner::set_root`]) objects are
//! resolved through sysfs: an ATA port or SCSI address to its block device, a PCI address to its network
//! interface, and a device-mapper device to the disks below it (an I/O error goes to those disks, a
//! filesystem problem on it to the machine).

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use state_machines::finding::MAX_LABEL_LEN;
use state_machines::{Finding, Kind, ObjectId, Severity};

use super::decode::{self, cause_rank};
use super::parse::{Format, LogTime, Record, format_log_time, parse_line};
use super::rules::{Hit, RuleSet, Scratch};
use super::window::Windows;
use super::{CHECKER_NAME, CHECKER_VERSION, sysfs};

/// Longest line kept: a kmsg record is at most 8 KiB (CONSOLE_EXT_LOG_MAX) plus its prefix; anything longer
/// is cut here (and counted) so a runaway line cannot grow memory.
pub const MAX_LINE_LEN: usize = 16 * 1024;
/// How far log time may step backwards (ms) before the scanner treats it as a new log (a reboot inside a
/// dmesg file, two files concatenated) and forgets its windows. Small steps are normal: CPUs print
/// concurrently and console lines interleave.
pub const BACKWARD_TOLERANCE_MS: u64 = 5_000;
/// Log time after a record's last line at which the record is complete. libata and GHES print a record
/// from one context within milliseconds; two seconds tolerates a slow console without merging the next
/// error-handler round (which follows after a reset, seconds later).
pub const RECORD_GAP_MS: u64 = 2_000;
/// Most lines in one record: an ATA record with NCQ lists up to 32 failed commands of 3 lines each;
/// beyond this the record is closed and the next line starts another, so a storm cannot grow one.
pub const MAX_RECORD_LINES: usize = 128;
/// Most records open at once (one per failing port / controller / GHES source); the oldest is closed
/// when a new one would exceed this.
pub const MAX_OPEN_RECORDS: usize = 64;

/// What the scanner saw and skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub lines: u64,
    /// Lines from userspace (syslog tags other than `kernel`, non-kernel kmsg facilities); not matched.
    pub non_kernel: u64,
    /// kmsg dictionary lines and journal markers.
    pub meta: u64,
    /// Lines with control bytes (binary garbage); skipped.
    pub binary: u64,
    /// Lines cut at [`MAX_LINE_LEN`].
    pub truncated: u64,
    /// Rule hits (before thresholds).
    pub hits: u64,
    /// Hits whose object could not be named (e.g. invalid name), dropped.
    pub dropped: u64,
    pub findings: u64,
    /// Times the windows were reset because log time jumped back or a new boot started.
    pub clock_resets: u64,
    /// Hits a decoder dropped (the decoded status is not a fault).
    pub decoded_away: u64,
    /// Multi-line records emitted (each is one finding, whatever its number of lines).
    pub records: u64,
}

/// A finding plus where it came from in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub finding: Finding,
    /// 1-based line number, for file input.
    pub line: Option<u64>,
    /// The record's own time.
    pub log_time: LogTime,
    /// When the finding stands for a multi-line record: the line numbers of all its lines (file input).
    pub record_lines: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    None,
    Mono,
    Wall,
}

/// Lines in, [`Event`]s out. See the module docs.
#[derive(Debug)]
pub struct Scanner {
    rules: Arc<RuleSet>,
    host: String,
    version: String,
    year: i32,
    boot_ms: Option<u64>,
    fallback_ms: u64,
    prev: Format,
    clock: Clock,
    now_log_ms: u64,
    windows: Windows,
    scratch: Scratch,
    stats: ScanStats,
    root: Option<PathBuf>,
    group: bool,
    pending: Vec<Pending>,
}

/// One matched line on its way to a finding.
#[derive(Debug, Clone)]
struct Member {
    rule: usize,
    kind: Kind,
    name: Option<String>,
    severity: Severity,
    readings: BTreeMap<String, String>,
    weight: u32,
    evidence: String,
    line: Option<u64>,
    log_time: LogTime,
    time_ms: u64,
}

/// A multi-line record being collected.
#[derive(Debug)]
struct Pending {
    rtype: String,
    key: String,
    last_ms: u64,
    members: Vec<Member>,
}

/// Whether a line looks like binary garbage: NUL or other control bytes (kmsg escapes these as `\xNN`,
/// syslog as `#NNN`, so real log text has none besides tab).
fn is_binary(line: &[u8]) -> bool {
    // A branch-free fold (no early exit) vectorises; lines are short, so scanning all of it is cheaper.
    line.iter().fold(false, |bad, &b| bad | ((b < 0x20) & (b != b'\t') & (b != b'\r')) | (b == 0x7f))
}

impl Scanner {
    /// `host` must be a valid host name. `year` is used for syslog lines (they carry none).
    pub fn new(rules: Arc<RuleSet>, host: &str, year: i32) -> Result<Scanner, state_machines::IdError> {
        state_machines::id::validate_host(host)?;
        let version = format!("{CHECKER_VERSION}+rules.{}", rules.version());
        let scratch = rules.scratch();
        Ok(Scanner {
            rules,
            host: host.to_string(),
            version,
            year,
            boot_ms: None,
            fallback_ms: 0,
            prev: Format::Plain,
            clock: Clock::None,
            now_log_ms: 0,
            windows: Windows::default(),
            scratch,
            stats: ScanStats::default(),
            root: None,
            group: false,
            pending: Vec::new(),
        })
    }

    /// Resolve objects through sysfs below `root` (ATA port / SCSI address -> block device, PCI address ->
    /// interface, dm-N -> its disks). Without a root, names are kept as logged.
    pub fn set_root(&mut self, root: Option<PathBuf>) {
        self.root = root;
    }

    /// Group multi-line records into one finding. Callers that turn this on must call [`flush`](Self::flush)
    /// when their input pauses or ends, or the last record waits for the next line.
    pub fn set_group_records(&mut self, on: bool) {
        self.group = on;
    }

    /// Emit every pending record (end of input, or the end of a checker run).
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        for p in std::mem::take(&mut self.pending) {
            self.emit_members(p.members, out);
        }
    }

    /// Close records whose last line is more than [`RECORD_GAP_MS`] of log time ago.
    fn close_quiet(&mut self, out: &mut Vec<Event>) {
        if self.pending.is_empty() {
            return;
        }
        let now = self.now_log_ms;
        let mut i = 0;
        while i < self.pending.len() {
            if now.saturating_sub(self.pending[i].last_ms) > RECORD_GAP_MS {
                let p = self.pending.remove(i);
                self.emit_members(p.members, out);
            } else {
                i += 1;
            }
        }
    }

    /// Boot time (ms since the epoch), to give findings from monotonic records a wall time.
    pub fn set_boot_ms(&mut self, boot_ms: Option<u64>) {
        self.boot_ms = boot_ms;
    }

    /// Time given to findings whose record has no wall time and no known boot time (the caller's `now`).
    pub fn set_fallback_ms(&mut self, ms: u64) {
        self.fallback_ms = ms;
    }

    /// Make findings carry `version` instead of checker version + rule-set version: a rule set from the
    /// catalog is known by its artifact version (`NAME@VERSION`), and that is what its findings must say.
    pub fn set_version(&mut self, version: &str) {
        self.version = version.to_string();
    }

    /// The version findings carry: checker version + rule-set version.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Advance the log clock for a record; resets windows (after closing open records) when the clock
    /// cannot be compared.
    fn tick(&mut self, time: LogTime, out: &mut Vec<Event>) {
        let (clock, ms) = match time {
            LogTime::None => return,
            LogTime::Mono(us) => (Clock::Mono, us / 1000),
            LogTime::Wall(ms) => (Clock::Wall, ms),
        };
        let back = self.now_log_ms.saturating_sub(ms) > BACKWARD_TOLERANCE_MS;
        if self.clock != Clock::None && (clock != self.clock || back) {
            self.flush(out);
            self.windows.reset();
            self.stats.clock_resets += 1;
            self.now_log_ms = ms;
        } else {
            self.now_log_ms = self.now_log_ms.max(ms);
        }
        self.clock = clock;
    }

    /// Feed one line (without its newline). `line_no` is the 1-based line for file input.
    pub fn feed(&mut self, line: &[u8], line_no: Option<u64>, out: &mut Vec<Event>) {
        self.stats.lines += 1;
        if is_binary(line) {
            self.stats.binary += 1;
            return;
        }
        let rec = parse_line(line, self.prev, self.year);
        self.feed_record(&rec, line_no, out);
    }

    /// Feed an already parsed record.
    pub fn feed_record(&mut self, rec: &Record<'_>, line_no: Option<u64>, out: &mut Vec<Event>) {
        self.prev = rec.format;
        match rec.format {
            Format::KmsgDict => {
                self.stats.meta += 1;
                return;
            }
            Format::Marker { boot } => {
                self.stats.meta += 1;
                if boot {
                    self.flush(out);
                    self.windows.reset();
                    self.clock = Clock::None;
                    self.now_log_ms = 0;
                    self.stats.clock_resets += 1;
                }
                return;
            }
            _ => {}
        }
        self.tick(rec.time, out);
        self.close_quiet(out);
        if !rec.kernel {
            self.stats.non_kernel += 1;
            return;
        }
        // Vec::new does not allocate; only a hit pushes.
        let mut hits: Vec<Hit> = Vec::new();
        self.rules.scan(&mut self.scratch, rec.msg, |h| hits.push(h));
        for hit in hits {
            self.stats.hits += 1;
            self.on_hit(rec, hit, line_no, out);
        }
    }

    fn time_ms(&self, t: LogTime) -> u64 {
        match t {
            LogTime::Wall(ms) => ms,
            LogTime::Mono(us) => self.boot_ms.map_or(self.fallback_ms, |b| b + us / 1000),
            LogTime::None => match (self.clock, self.boot_ms) {
                (Clock::Wall, _) => self.now_log_ms,
                (Clock::Mono, Some(b)) => b + self.now_log_ms,
                _ => self.fallback_ms,
            },
        }
    }

    /// Decode, resolve and either emit the hit or add it to its record.
    fn on_hit(&mut self, rec: &Record<'_>, mut hit: Hit, line_no: Option<u64>, out: &mut Vec<Event>) {
        let rule = &self.rules.rules()[hit.rule];
        let mut severity = rule.severity;
        if let Some(d) = rule.decode {
            let dec = decode::decode(d, &hit.readings);
            if dec.drop {
                self.stats.decoded_away += 1;
                return;
            }
            if let Some(s) = dec.severity {
                severity = s;
            }
            for (k, v) in dec.readings {
                hit.readings.insert(k.to_string(), v);
            }
        }
        if let Some(c) = &rule.cause {
            hit.readings.entry("cause".into()).or_insert_with(|| c.clone());
        }
        if rule.context && !self.group {
            return;
        }
        let weight = rule
            .weight
            .as_ref()
            .and_then(|g| hit.readings.get(g))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(1, |n| n.clamp(1, u64::from(u32::MAX)) as u32);
        let record = rule.record.clone();
        if let Some(root) = &self.root {
            resolve_member(root, rule.kind, &mut hit);
        }
        let log_time = if rec.time == LogTime::None {
            match self.clock {
                Clock::Wall => LogTime::Wall(self.now_log_ms),
                Clock::Mono => LogTime::Mono(self.now_log_ms * 1000),
                Clock::None => LogTime::None,
            }
        } else {
            rec.time
        };
        let m = Member {
            rule: hit.rule,
            kind: hit.kind,
            name: hit.name,
            severity,
            readings: hit.readings,
            weight,
            evidence: String::from_utf8_lossy(rec.msg).into_owned(),
            line: line_no,
            log_time,
            time_ms: self.time_ms(rec.time),
        };
        match record {
            Some(rtype) if self.group => self.join(rtype, m, out),
            _ => self.emit_members(vec![m], out),
        }
    }

    /// Add a member to its open record (or open one).
    fn join(&mut self, rtype: String, m: Member, out: &mut Vec<Event>) {
        let now = self.now_log_ms;
        let key = match (m.readings.get("rec"), &m.name) {
            (Some(r), _) => r.clone(),
            (None, Some(n)) => format!("{}/{n}", m.kind),
            (None, None) => String::new(),
        };
        // A line without an object of its own (a `res` line of an ATA record) joins the latest open record
        // of its type.
        let idx = if key.is_empty() {
            self.pending.iter().rposition(|p| p.rtype == rtype)
        } else {
            self.pending.iter().position(|p| p.rtype == rtype && p.key == key)
        };
        let context = self.rules.rules()[m.rule].context;
        if let Some(i) = idx {
            let p = &mut self.pending[i];
            // The headline of a record seen again starts the next record (the next error-handler round,
            // the next failed request); context lines never do.
            let restart = !context && p.members.first().is_some_and(|f| f.rule == m.rule);
            if !restart
                && now.saturating_sub(p.last_ms) <= RECORD_GAP_MS
                && p.members.len() < MAX_RECORD_LINES
            {
                p.last_ms = now;
                p.members.push(m);
                // most recently used last, so `rposition` finds it
                let p = self.pending.remove(i);
                self.pending.push(p);
                return;
            }
            let p = self.pending.remove(i);
            self.emit_members(p.members, out);
        }
        if self.pending.len() >= MAX_OPEN_RECORDS {
            let p = self.pending.remove(0);
            self.emit_members(p.members, out);
        }
        self.pending.push(Pending { rtype, key, last_ms: now, members: vec![m] });
    }

    /// Turn one line's hit, or a whole record, into findings: the most severe line is the record's rule
    /// and severity, the first named object its object, every line its evidence; then the rule's
    /// threshold, machine severity and device-mapper resolution apply.
    fn emit_members(&mut self, members: Vec<Member>, out: &mut Vec<Event>) {
        let Some(first) = members.first() else {
            return;
        };
        // The most severe line leads; between equals, a headline beats a context line, then the first.
        let lead = |m: &Member| (m.severity, !self.rules.rules()[m.rule].context);
        let mut primary = 0;
        for (i, m) in members.iter().enumerate() {
            if lead(m) > lead(&members[primary]) {
                primary = i;
            }
        }
        let p = &members[primary];
        // Context lines alone that say nothing worse than INFO (`status: { DRDY ERR }`, `FAILED Result:
        // hostbyte=DID_OK driverbyte=DRIVER_SENSE` whose sense turned out benign) are not a finding.
        if p.severity <= Severity::Info && members.iter().all(|m| self.rules.rules()[m.rule].context) {
            self.stats.decoded_away += 1;
            return;
        }
        let rule_idx = p.rule;
        let rules = Arc::clone(&self.rules);
        let rule = &rules.rules()[rule_idx];
        let (kind, name) = if p.kind == Kind::Machine {
            members
                .iter()
                .find(|m| m.kind != Kind::Machine)
                .map_or((Kind::Machine, None), |m| (m.kind, m.name.clone()))
        } else {
            (p.kind, p.name.clone())
        };
        let Ok(object) = ObjectId::new(kind, &self.host, name.as_deref()) else {
            self.stats.dropped += 1;
            return;
        };
        let mut readings = p.readings.clone();
        let mut cause: Option<&str> = None;
        for m in &members {
            for (k, v) in &m.readings {
                readings.entry(k.clone()).or_insert_with(|| v.clone());
            }
            if let Some(c) = m.readings.get("cause")
                && cause.is_none_or(|old| cause_rank(c) < cause_rank(old))
            {
                cause = Some(c);
            }
        }
        if let Some(c) = cause {
            readings.insert("cause".into(), c.to_string());
        }
        readings.remove("rec");
        // A weighted count (EDAC CEs) of a DIMM whose driver counters exist: the edac checker grades that
        // rate from the counters, which count these same errors; counting the lines too would double them.
        let counted_by_edac = rule.weight.is_some() && readings.contains_key("sysfs_ce_count");
        let mut severity = p.severity;
        if counted_by_edac {
            severity = rule.below_threshold.unwrap_or(Severity::Info);
            readings.insert("graded_by".into(), "edac".into());
        }
        if let Some(th) = rule.threshold.filter(|_| !counted_by_edac) {
            let key = object.to_string();
            if !self.windows.hit_n(rule_idx, &key, th, self.now_log_ms, p.weight) {
                match rule.below_threshold {
                    Some(b) => {
                        severity = b;
                        readings.insert(
                            "in_window".into(),
                            format!("{} of {}", self.windows.current(rule_idx, &key), th.count),
                        );
                    }
                    None => return,
                }
            }
            if th.count > 1 {
                readings.insert("threshold".into(), format!("{} in {}s", th.count, th.window_ms / 1000));
            }
        }
        // Several rules may match one line: each line counts (and is quoted) once.
        let mut distinct: Vec<&Member> = Vec::with_capacity(members.len());
        for m in &members {
            let same = distinct.last().is_some_and(|d| d.line == m.line && d.evidence == m.evidence);
            if !same {
                distinct.push(m);
            }
        }
        let n = distinct.len();
        let record_lines: Vec<u64> =
            if n > 1 { distinct.iter().filter_map(|m| m.line).collect() } else { Vec::new() };
        if n > 1 {
            readings.insert("record_lines".into(), n.to_string());
            self.stats.records += 1;
        }
        let evidence = if n == 1 {
            first.evidence.clone()
        } else {
            distinct.iter().map(|m| m.evidence.as_str()).collect::<Vec<_>>().join("\n")
        };
        let base = Finding {
            object,
            severity,
            checker: CHECKER_NAME.to_string(),
            version: self.version.clone(),
            rule: rule.id.clone(),
            evidence,
            readings,
            time_ms: first.time_ms,
            shadow: false,
        };
        let (line, log_time) = (first.line, first.log_time);
        let mut findings = Vec::new();
        if let Some(sev) = rule.machine_severity
            && base.object.kind() != Kind::Machine
            && let Ok(m) = ObjectId::machine(&self.host)
        {
            let mut f = base.clone();
            f.object = m;
            // below its threshold the machine gets the same lowered severity as the object
            f.severity = if severity < rule.severity { severity } else { sev };
            findings.push(f);
        }
        findings.extend(self.resolve_dm(base, &rule.id));
        for f in findings {
            self.stats.findings += 1;
            out.push(Event {
                finding: fit_readings(f).bounded(),
                line,
                log_time,
                record_lines: record_lines.clone(),
            });
        }
    }

    /// A finding on `dm-N` with a probe root: an I/O error goes to every disk below it, anything else
    /// (a filesystem problem) to the machine. Unresolvable devices keep their name.
    fn resolve_dm(&self, f: Finding, rule_id: &str) -> Vec<Finding> {
        let (Some(root), Some(name)) = (&self.root, f.object.name()) else {
            return vec![f];
        };
        if f.object.kind() != Kind::Disk || !name.starts_with("dm-") {
            return vec![f];
        }
        let slaves = sysfs::dm_disks(root, name);
        if slaves.is_empty() {
            return vec![f];
        }
        let logged = name.to_string();
        let io = rule_id.contains("io-error");
        let mut out = Vec::new();
        if io {
            for s in slaves {
                if let Ok(id) = ObjectId::new(Kind::Disk, f.object.host(), Some(&s)) {
                    let mut g = f.clone();
                    g.object = id;
                    g.readings.insert("logged_name".into(), logged.clone());
                    out.push(g);
                }
            }
        } else if let Ok(m) = ObjectId::machine(f.object.host()) {
            let mut g = f;
            g.object = m;
            g.readings.insert("logged_name".into(), logged);
            g.readings.insert("disks".into(), slaves.join(" "));
            out.push(g);
        }
        out
    }

    /// Scan a whole reader line by line, capping lines at [`MAX_LINE_LEN`]. Line numbers are 1-based.
    /// Open records are flushed at the end.
    pub fn scan_reader<R: BufRead>(&mut self, r: R, out: &mut Vec<Event>) -> std::io::Result<()> {
        let mut all = Vec::new();
        self.scan_reader_each(r, |events| {
            all.append(events);
            Ok(())
        })?;
        out.append(&mut all);
        Ok(())
    }

    /// Scan a reader, handing the findings of each line to `each` as soon as they exist (streaming: memory
    /// stays bounded whatever the input, and a pipe gets its findings while it is still open). `each`
    /// must drain the vector it is given. Open records are flushed at the end.
    pub fn scan_reader_each<R: BufRead>(
        &mut self,
        mut r: R,
        mut each: impl FnMut(&mut Vec<Event>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(MAX_LINE_LEN);
        let mut out = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let mut any = false;
            let mut cut = false;
            loop {
                let avail = match r.fill_buf() {
                    Ok(a) => a,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if avail.is_empty() {
                    break;
                }
                any = true;
                let nl = avail.iter().position(|&b| b == b'\n');
                let take = nl.unwrap_or(avail.len());
                let room = MAX_LINE_LEN - buf.len();
                if take > room {
                    cut = true;
                }
                buf.extend_from_slice(&avail[..take.min(room)]);
                let used = nl.map_or(avail.len(), |i| i + 1);
                r.consume(used);
                if nl.is_some() {
                    break;
                }
            }
            if !any {
                self.flush(&mut out);
                each(&mut out)?;
                out.clear();
                return Ok(());
            }
            line_no += 1;
            if cut {
                self.stats.truncated += 1;
            }
            self.feed(&buf, Some(line_no), &mut out);
            if !out.is_empty() {
                each(&mut out)?;
                out.clear();
            }
        }
    }
}

/// Give a member the object sysfs knows it by: an ATA port or SCSI address its block device, a NIC hit
/// that named only a PCI address (fallen back to the machine) its interface.
fn resolve_member(root: &std::path::Path, rule_kind: Kind, hit: &mut Hit) {
    match (hit.kind, &hit.name) {
        (Kind::Disk, Some(n)) => {
            if let Some(block) = sysfs::resolve_disk(root, n) {
                hit.readings.insert("logged_name".into(), n.clone());
                hit.name = Some(block);
            }
        }
        // EDAC lines: the driver's own counters for the DIMM (ground truth of what the lines sample)
        (Kind::Dimm, Some(_)) => {
            let (Some(mc), Some(label)) = (hit.readings.get("mc"), hit.readings.get("label")) else {
                return;
            };
            if let Some((dir, ce, ue)) = sysfs::edac_dimm_counters(root, mc, label) {
                // the DIMM as the edac checker and the inventory name it (`mc0-dimm2`, `mc0-csrow1-ch0`)
                let (object, sysfs_dimm) =
                    (format!("mc{mc}-{}", dir.replace('/', "-")), format!("mc{mc}/{dir}"));
                if let Some(logged) = hit.name.replace(object) {
                    hit.readings.insert("logged_name".into(), logged);
                }
                hit.readings.insert("sysfs_dimm".into(), sysfs_dimm);
                hit.readings.insert("sysfs_ce_count".into(), ce.to_string());
                if let Some(ue) = ue {
                    hit.readings.insert("sysfs_ue_count".into(), ue.to_string());
                }
            }
        }
        (Kind::Machine, None) if rule_kind == Kind::Nic => {
            if let Some(pci) = hit.readings.get("pci")
                && let Some(ifname) = sysfs::pci_net(root, pci)
            {
                hit.kind = Kind::Nic;
                hit.name = Some(ifname);
            }
        }
        _ => {}
    }
}

/// Log time of an event in ms (None when the input carries no time).
fn event_ms(t: LogTime) -> Option<u64> {
    match t {
        LogTime::None => None,
        LogTime::Mono(us) => Some(us / 1000),
        LogTime::Wall(ms) => Some(ms),
    }
}

/// Reading values are pieces of a log line (a captured reason, a logged name): cut to the finding's label
/// limit at a character boundary, control characters (a tab) turned into spaces, so a long or odd line
/// still gives a finding the master accepts (`Finding::validate`) instead of one it refuses.
fn fit_readings(mut f: Finding) -> Finding {
    for v in f.readings.values_mut() {
        if v.len() > MAX_LABEL_LEN || v.chars().any(char::is_control) {
            let mut s: String = v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            let mut end = s.len().min(MAX_LABEL_LEN);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            *v = s;
        }
    }
    f
}

/// How long repeats of one condition are merged into one line of output (log time): ten minutes, the
/// same order as the rules' windows, so a storm prints one line per condition per ten minutes.
pub const MERGE_WINDOW_MS: u64 = 600_000;
/// Most conditions tracked at once; the one seen first is closed (its summary emitted) to make room.
pub const MAX_MERGE_KEYS: usize = 4096;

#[derive(Debug)]
struct MergeEntry {
    first: Event,
    count: u64,
    first_ms: u64,
    last: LogTime,
    last_line: Option<u64>,
}

/// Merges repeats of the same condition (rule, object, severity) within [`MERGE_WINDOW_MS`] of log time:
/// the first occurrence is emitted at once, later ones are counted, and when the window closes (or at
/// [`finish`](Self::finish)) a summary with `repeats`, `first_seen` and `last_seen` is emitted if there
/// were repeats. Memory is bounded by [`MAX_MERGE_KEYS`].
#[derive(Debug, Default)]
pub struct Merger {
    keys: HashMap<(String, String, Severity), MergeEntry>,
    now_ms: u64,
    last_sweep_ms: u64,
    /// Events absorbed into a summary (not emitted on their own).
    pub merged: u64,
}

impl Merger {
    pub fn new() -> Self {
        Merger::default()
    }

    /// Number of conditions tracked now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn summary(e: MergeEntry) -> Option<Event> {
        if e.count < 2 {
            return None;
        }
        let mut ev = e.first;
        ev.finding.readings.insert("repeats".into(), e.count.to_string());
        if let Some(t) = format_log_time(ev.log_time) {
            ev.finding.readings.insert("first_seen".into(), t);
        }
        if let Some(t) = format_log_time(e.last) {
            ev.finding.readings.insert("last_seen".into(), t);
        }
        ev.line = e.last_line;
        ev.log_time = e.last;
        ev.record_lines = Vec::new();
        ev.finding = ev.finding.bounded();
        Some(ev)
    }

    /// Take one event; what should be output now is appended to `out`.
    pub fn push(&mut self, e: Event, out: &mut Vec<Event>) {
        if let Some(ms) = event_ms(e.log_time) {
            if self.now_ms.saturating_sub(ms) > BACKWARD_TOLERANCE_MS {
                // a new boot or another file: everything before is closed
                self.finish(out);
            }
            self.now_ms = ms;
        }
        let now = self.now_ms;
        if now.saturating_sub(self.last_sweep_ms) >= MERGE_WINDOW_MS / 4 {
            self.last_sweep_ms = now;
            let expired: Vec<_> = self
                .keys
                .iter()
                .filter(|(_, v)| now.saturating_sub(v.first_ms) > MERGE_WINDOW_MS)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                if let Some(s) = self.keys.remove(&k).and_then(Self::summary) {
                    out.push(s);
                }
            }
        }
        let f = &e.finding;
        let key = (f.rule.clone(), f.object.to_string(), f.severity);
        if let Some(entry) = self.keys.get_mut(&key) {
            if now.saturating_sub(entry.first_ms) <= MERGE_WINDOW_MS {
                entry.count += 1;
                entry.last = e.log_time;
                entry.last_line = e.line;
                self.merged += 1;
                return;
            }
            if let Some(s) = self.keys.remove(&key).and_then(Self::summary) {
                out.push(s);
            }
        }
        if self.keys.len() >= MAX_MERGE_KEYS {
            let oldest = self.keys.iter().min_by_key(|(_, v)| v.first_ms).map(|(k, _)| k.clone());
            if let Some(s) = oldest.and_then(|k| self.keys.remove(&k)).and_then(Self::summary) {
                out.push(s);
            }
        }
        out.push(e.clone());
        let (last, last_line) = (e.log_time, e.line);
        self.keys.insert(key, MergeEntry { first: e, count: 1, first_ms: now, last, last_line });
    }

    /// Emit the summaries of every condition still open (end of input).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let mut all: Vec<MergeEntry> = self.keys.drain().map(|(_, v)| v).collect();
        all.sort_by_key(|e| (e.first_ms, e.first.line));
        out.extend(all.into_iter().filter_map(Self::summary));
    }
}

/// Severity of the worst event (for exit codes and summaries).
pub fn worst(events: &[Event]) -> Option<Severity> {
    events.iter().map(|e| e.finding.severity).max()
}
