//! The kernel-log scanner: lines in, findings out. Owns the per-line state (previous format for kmsg
//! continuation lines, the log clock, count-in-window thresholds) and the counters of what it skipped.
//!
//! Per-line cost in the common case (a benign line): a binary-garbage check, format parsing (borrowing, no
//! allocation) and the keyword prefilter. Only lines that contain a rule keyword go further.

use std::io::BufRead;
use std::sync::Arc;

use state_machines::{Finding, Kind, ObjectId, Severity};

use super::parse::{Format, LogTime, Record, parse_line};
use super::rules::{Hit, RuleSet, Scratch};
use super::window::Windows;
use super::{CHECKER_NAME, CHECKER_VERSION};

/// Longest line kept: a kmsg record is at most 8 KiB (CONSOLE_EXT_LOG_MAX) plus its prefix; anything longer
/// is cut here (and counted) so a runaway line cannot grow memory.
pub const MAX_LINE_LEN: usize = 16 * 1024;
/// How far log time may step backwards (ms) before the scanner treats it as a new log (a reboot inside a
/// dmesg file, two files concatenated) and forgets its windows. Small steps are normal: CPUs print
/// concurrently and console lines interleave.
pub const BACKWARD_TOLERANCE_MS: u64 = 5_000;

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
}

/// A finding plus where it came from in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub finding: Finding,
    /// 1-based line number, for file input.
    pub line: Option<u64>,
    /// The record's own time.
    pub log_time: LogTime,
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
        })
    }

    /// Boot time (ms since the epoch), to give findings from monotonic records a wall time.
    pub fn set_boot_ms(&mut self, boot_ms: Option<u64>) {
        self.boot_ms = boot_ms;
    }

    /// Time given to findings whose record has no wall time and no known boot time (the caller's `now`).
    pub fn set_fallback_ms(&mut self, ms: u64) {
        self.fallback_ms = ms;
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

    /// Advance the log clock for a record; resets windows when the clock cannot be compared.
    fn tick(&mut self, time: LogTime) {
        let (clock, ms) = match time {
            LogTime::None => return,
            LogTime::Mono(us) => (Clock::Mono, us / 1000),
            LogTime::Wall(ms) => (Clock::Wall, ms),
        };
        let back = self.now_log_ms.saturating_sub(ms) > BACKWARD_TOLERANCE_MS;
        if self.clock != Clock::None && (clock != self.clock || back) {
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
                    self.windows.reset();
                    self.clock = Clock::None;
                    self.now_log_ms = 0;
                    self.stats.clock_resets += 1;
                }
                return;
            }
            _ => {}
        }
        self.tick(rec.time);
        if !rec.kernel {
            self.stats.non_kernel += 1;
            return;
        }
        // Vec::new does not allocate; only a hit pushes.
        let mut hits: Vec<Hit> = Vec::new();
        self.rules.scan(&mut self.scratch, rec.msg, |h| hits.push(h));
        for hit in hits {
            self.stats.hits += 1;
            self.emit(rec, &hit, line_no, out);
        }
    }

    fn emit(&mut self, rec: &Record<'_>, hit: &Hit, line_no: Option<u64>, out: &mut Vec<Event>) {
        let rule = &self.rules.rules()[hit.rule];
        let Ok(object) = ObjectId::new(hit.kind, &self.host, hit.name.as_deref()) else {
            self.stats.dropped += 1;
            return;
        };
        if let Some(th) = rule.threshold {
            let key = object.to_string();
            if !self.windows.hit(hit.rule, &key, th, self.now_log_ms) {
                return;
            }
        }
        let time_ms = match rec.time {
            LogTime::Wall(ms) => ms,
            LogTime::Mono(us) => self.boot_ms.map_or(self.fallback_ms, |b| b + us / 1000),
            LogTime::None => match (self.clock, self.boot_ms) {
                (Clock::Wall, _) => self.now_log_ms,
                (Clock::Mono, Some(b)) => b + self.now_log_ms,
                _ => self.fallback_ms,
            },
        };
        let evidence = String::from_utf8_lossy(rec.msg).into_owned();
        let mut readings = hit.readings.clone();
        if let Some(th) = rule.threshold.filter(|t| t.count > 1) {
            readings.insert("threshold".into(), format!("{} in {}s", th.count, th.window_ms / 1000));
        }
        let base = Finding {
            object,
            severity: rule.severity,
            checker: CHECKER_NAME.to_string(),
            version: self.version.clone(),
            rule: rule.id.clone(),
            evidence,
            readings,
            time_ms,
        }
        .bounded();
        let log_time = if rec.time == LogTime::None {
            match self.clock {
                Clock::Wall => LogTime::Wall(self.now_log_ms),
                Clock::Mono => LogTime::Mono(self.now_log_ms * 1000),
                Clock::None => LogTime::None,
            }
        } else {
            rec.time
        };
        if let Some(sev) = rule.machine_severity
            && base.object.kind() != Kind::Machine
            && let Ok(m) = ObjectId::machine(&self.host)
        {
            let mut f = base.clone();
            f.object = m;
            f.severity = sev;
            self.stats.findings += 1;
            out.push(Event { finding: f, line: line_no, log_time });
        }
        self.stats.findings += 1;
        out.push(Event { finding: base, line: line_no, log_time });
    }

    /// Scan a whole reader line by line, capping lines at [`MAX_LINE_LEN`]. Line numbers are 1-based.
    pub fn scan_reader<R: BufRead>(&mut self, mut r: R, out: &mut Vec<Event>) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(MAX_LINE_LEN);
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
                return Ok(());
            }
            line_no += 1;
            if cut {
                self.stats.truncated += 1;
            }
            self.feed(&buf, Some(line_no), out);
        }
    }
}

/// Severity of the worst event (for exit codes and summaries).
pub fn worst(events: &[Event]) -> Option<Severity> {
    events.iter().map(|e| e.finding.severity).max()
}
