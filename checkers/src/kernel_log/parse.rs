//! Kernel log line parsing: one line in, a borrowed [`Record`] out (its format, its time, whether it came
//! from the kernel, the message bytes). The format is detected per line, so a file that mixes formats (a
//! syslog file with `[ secs]` prefixes, a pasted dmesg in a journal export) still parses.
//!
//! Formats understood:
//! - raw `/dev/kmsg`: `pri,seq,usec,flags[,..];msg`; lines that start with a space after such a record are
//!   its dictionary (`SUBSYSTEM=`, `DEVICE=`) and are not matched;
//! - dmesg: `[ secs.usecs] msg`, with an optional `<pri>` prefix (pstore dumps) and caller id (`[    C1]`,
//!   `[ T123]`); `dmesg -T`: `[Sun Jan  5 18:28:55 2025] msg`; `dmesg --time-format iso`:
//!   `2025-01-21T04:41:44,283302+00:00 msg`; `dmesg --decode` adds `kern  :warn  : ` in front;
//! - syslog / `journalctl -k` (`short`, `short-precise`): `Nov  9 10:19:35 host kernel: msg`; `short-iso`
//!   and RFC 3339 syslog: `2026-11-22T02:05:26+0000 host kernel: msg`; `short-monotonic`:
//!   `[   12.345678] host kernel: msg`; journal markers (`-- Boot ... --`);
//! - anything else is a plain message without time.
//!
//! Parsing never allocates and never panics; times without a zone (dmesg -T, syslog) are taken as UTC.

/// Which format a line was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `pri,seq,usec,flags;msg`
    Kmsg,
    /// A kmsg dictionary line (leading space after a kmsg record). Not matched.
    KmsgDict,
    /// `[ secs.usecs] msg` (also with `<pri>` prefix or caller id).
    Dmesg,
    /// `[Sun Jan  5 18:28:55 2025] msg`
    DmesgCtime,
    /// `2025-01-21T04:41:44,283302+00:00 msg` (optionally `--decode`d).
    DmesgIso,
    /// `Nov  9 10:19:35 host tag: msg`
    Syslog,
    /// `2026-11-22T02:05:26+0000 host tag: msg` or `[ 12.3] host kernel: msg`
    Journal,
    /// `-- Boot 4c7e... --` and friends. `boot` says whether a new boot starts here.
    Marker { boot: bool },
    /// No recognised prefix.
    Plain,
}

/// When a record was logged, in the clock its format carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTime {
    None,
    /// Microseconds since boot (kmsg, dmesg).
    Mono(u64),
    /// Milliseconds since the Unix epoch (dmesg -T/iso, syslog, journal).
    Wall(u64),
}

/// One parsed line, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub format: Format,
    pub time: LogTime,
    /// Whether the line came from the kernel (false for userspace syslog tags or non-kernel kmsg
    /// facilities such as systemd writing to /dev/kmsg). Only kernel records are matched.
    pub kernel: bool,
    /// The kmsg sequence number, for raw kmsg records.
    pub seq: Option<u64>,
    pub msg: &'a [u8],
}

impl<'a> Record<'a> {
    fn new(format: Format, time: LogTime, kernel: bool, msg: &'a [u8]) -> Self {
        Record { format, time, kernel, seq: None, msg }
    }
}

/// Parse one line (without its newline; a trailing `\r` is dropped). `prev` is the format of the previous
/// line (continuation lines of kmsg depend on it); `year` is used for syslog lines, which carry none.
pub fn parse_line(line: &[u8], prev: Format, year: i32) -> Record<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.first() == Some(&b' ') && matches!(prev, Format::Kmsg | Format::KmsgDict) {
        return Record::new(Format::KmsgDict, LogTime::None, true, line);
    }
    if let Some(r) = kmsg(line) {
        return r;
    }
    if let Some(r) = marker(line) {
        return r;
    }
    // `<6>[    2.608284] msg` (pstore, console with loglevel prefix)
    if let Some((pri, rest)) = angle_pri(line) {
        let mut r = parse_body(rest, year);
        r.kernel = pri >> 3 == 0;
        return r;
    }
    // `kern  :warn  : <rest>` (dmesg --decode)
    if let Some((fac, rest)) = decode_prefix(line) {
        let mut r = parse_body(rest, year);
        r.kernel = fac == b"kern";
        return r;
    }
    parse_body(line, year)
}

fn parse_body(line: &[u8], year: i32) -> Record<'_> {
    if line.first() == Some(&b'[')
        && let Some(r) = bracketed(line)
    {
        return r;
    }
    if let Some(r) = iso_line(line) {
        return r;
    }
    if let Some(r) = syslog_line(line, year) {
        return r;
    }
    Record::new(Format::Plain, LogTime::None, true, line)
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |a, &b| a * 10 + u64::from(b - b'0')))
}

fn kmsg(line: &[u8]) -> Option<Record<'_>> {
    if !line.first()?.is_ascii_digit() {
        return None;
    }
    let semi = line.iter().take(64).position(|&b| b == b';')?;
    let head = &line[..semi];
    let mut parts = head.split(|&b| b == b',');
    let pri = digits(parts.next()?)?;
    let seq = digits(parts.next()?)?;
    let usec = digits(parts.next()?)?;
    parts.next()?; // flags: `-`, `c`, `+`
    Some(Record {
        format: Format::Kmsg,
        time: LogTime::Mono(usec),
        kernel: pri >> 3 == 0,
        seq: Some(seq),
        msg: &line[semi + 1..],
    })
}

fn marker(line: &[u8]) -> Option<Record<'_>> {
    let rest = line.strip_prefix(b"-- ")?;
    let boot = rest.starts_with(b"Boot ") || rest.starts_with(b"Reboot");
    let known = boot
        || rest.starts_with(b"Logs begin")
        || rest.starts_with(b"No entries")
        || rest.starts_with(b"Journal begins");
    known.then(|| Record::new(Format::Marker { boot }, LogTime::None, false, line))
}

fn angle_pri(line: &[u8]) -> Option<(u64, &[u8])> {
    let rest = line.strip_prefix(b"<")?;
    let end = rest.iter().take(4).position(|&b| b == b'>')?;
    let pri = digits(&rest[..end])?;
    Some((pri, &rest[end + 1..]))
}

fn decode_prefix(line: &[u8]) -> Option<(&[u8], &[u8])> {
    // `kern  :warn  : ` — facility, padding, colon, level, padding, colon, space.
    let c1 = line.iter().take(10).position(|&b| b == b':')?;
    let fac = trim_end(&line[..c1]);
    if fac.is_empty() || !fac.iter().all(u8::is_ascii_lowercase) {
        return None;
    }
    let rest = &line[c1 + 1..];
    let c2 = rest.iter().take(10).position(|&b| b == b':')?;
    let lvl = trim_end(&rest[..c2]);
    if lvl.is_empty() || !lvl.iter().all(u8::is_ascii_lowercase) {
        return None;
    }
    Some((fac, rest[c2 + 1..].strip_prefix(b" ")?))
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
    &s[..n]
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[n..]
}

/// `[ secs.usecs]`, `[ secs.usecs][    C1]`, `[Sun Jan  5 18:28:55 2025]`, optionally followed by
/// `host kernel: ` (journalctl -o short-monotonic).
fn bracketed(line: &[u8]) -> Option<Record<'_>> {
    let end = line.iter().take(40).position(|&b| b == b']')?;
    let inner = &line[1..end];
    let mut rest = &line[end + 1..];
    // caller id `[ T123]` / `[    C1]`
    if rest.first() == Some(&b'[')
        && let Some(e) = rest.iter().take(12).position(|&b| b == b']')
    {
        let id = trim_start(&rest[1..e]);
        if id.len() >= 2 && matches!(id[0], b'C' | b'T') && digits(&id[1..]).is_some() {
            rest = &rest[e + 1..];
        }
    }
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    // `[2023-06-22 21:55:31.352446][5975153.878190] msg` (some distributions' dmesg): wall time first,
    // then the monotonic stamp, which is dropped (the wall time is the more useful clock).
    if let Some((ms, used)) = iso_time(inner)
        && used == inner.len()
    {
        let rest = match rest.strip_prefix(b"[") {
            Some(r) => match r.iter().take(24).position(|&b| b == b']') {
                Some(e) if mono_secs(trim_start(&r[..e])).is_some() => &r[e + 1..],
                _ => rest,
            },
            None => rest,
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        return Some(Record::new(Format::DmesgIso, LogTime::Wall(ms), true, rest));
    }
    if let Some(us) = mono_secs(trim_start(inner)) {
        if let Some(msg) = journal_kernel_tag(rest) {
            return Some(Record::new(Format::Journal, LogTime::Mono(us), true, msg));
        }
        return Some(Record::new(Format::Dmesg, LogTime::Mono(us), true, rest));
    }
    let ms = ctime(inner)?;
    Some(Record::new(Format::DmesgCtime, LogTime::Wall(ms), true, rest))
}

/// `secs.usecs` to microseconds.
fn mono_secs(s: &[u8]) -> Option<u64> {
    let dot = s.iter().position(|&b| b == b'.')?;
    let secs = digits(&s[..dot])?;
    let frac = &s[dot + 1..];
    if frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let mut f = digits(frac)?;
    for _ in frac.len()..6 {
        f *= 10;
    }
    for _ in 6..frac.len() {
        f /= 10;
    }
    secs.checked_mul(1_000_000)?.checked_add(f)
}

/// `host kernel: msg` -> `msg`.
fn journal_kernel_tag(rest: &[u8]) -> Option<&[u8]> {
    let sp = rest.iter().take(256).position(|&b| b == b' ')?;
    let host = &rest[..sp];
    if host.is_empty() || host.ends_with(b":") {
        return None;
    }
    rest[sp + 1..].strip_prefix(b"kernel: ")
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

fn month(s: &[u8]) -> Option<u32> {
    MONTHS.iter().position(|m| m.as_slice() == s).map(|i| i as u32 + 1)
}

fn epoch_ms(y: i64, mo: u32, d: u32, h: u64, mi: u64, s: u64, ms: u64) -> Option<u64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = u64::try_from(predict::data::days_from_civil(y, mo, d)).ok()?;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms)
}

/// `HH:MM:SS` at the start of `s`.
fn hms(s: &[u8]) -> Option<(u64, u64, u64)> {
    if s.len() < 8 || s[2] != b':' || s[5] != b':' {
        return None;
    }
    Some((digits(&s[0..2])?, digits(&s[3..5])?, digits(&s[6..8])?))
}

/// `Sun Jan  5 18:28:55 2025`
fn ctime(s: &[u8]) -> Option<u64> {
    if s.len() != 24 || s[3] != b' ' || s[7] != b' ' || s[10] != b' ' || s[19] != b' ' {
        return None;
    }
    let mo = month(&s[4..7])?;
    let d = digits(trim_start(&s[8..10]))?;
    let (h, mi, sec) = hms(&s[11..19])?;
    let y = digits(&s[20..24])?;
    epoch_ms(y as i64, mo, d as u32, h, mi, sec, 0)
}

/// `YYYY-MM-DDTHH:MM:SS[.,frac][Z|+HH:MM|+HHMM]`; returns (epoch ms, bytes used).
fn iso_time(s: &[u8]) -> Option<(u64, usize)> {
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b' ') {
        return None;
    }
    let y = digits(&s[0..4])?;
    let mo = digits(&s[5..7])?;
    let d = digits(&s[8..10])?;
    let (h, mi, sec) = hms(&s[11..19])?;
    let mut i = 19;
    let mut ms = 0;
    if i < s.len() && matches!(s[i], b'.' | b',') {
        let start = i + 1;
        let n = s[start..].iter().take(9).take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let frac = &s[start..start + n];
        ms = digits(&frac[..n.min(3)])?;
        for _ in n.min(3)..3 {
            ms *= 10;
        }
        i = start + n;
    }
    let mut offset_s: i64 = 0;
    if i < s.len() && s[i] == b'Z' {
        i += 1;
    } else if i < s.len() && matches!(s[i], b'+' | b'-') {
        let sign = if s[i] == b'-' { -1 } else { 1 };
        let z = &s[i + 1..];
        let (oh, om, used) = if z.len() >= 5 && z[2] == b':' {
            (digits(&z[0..2])?, digits(&z[3..5])?, 5)
        } else if z.len() >= 4 {
            (digits(&z[0..2])?, digits(&z[2..4])?, 4)
        } else {
            return None;
        };
        offset_s = sign * (oh as i64 * 3600 + om as i64 * 60);
        i += 1 + used;
    }
    let local = epoch_ms(y as i64, mo as u32, d as u32, h, mi, sec, ms)?;
    let utc = (local as i64).checked_sub(offset_s * 1000)?;
    Some((u64::try_from(utc).ok()?, i))
}

/// `host tag[pid]: msg` after a syslog/journal time. Returns (is kernel, msg).
fn host_tag(rest: &[u8]) -> Option<(bool, &[u8])> {
    let sp = rest.iter().take(256).position(|&b| b == b' ')?;
    let host = &rest[..sp];
    if host.is_empty() || host.ends_with(b":") {
        return None;
    }
    let after = &rest[sp + 1..];
    let colon = after.iter().take(128).position(|&b| b == b':')?;
    let tag = &after[..colon];
    if tag.is_empty() || tag.contains(&b' ') && !tag.starts_with(b"sshd(") {
        return None;
    }
    let msg = after[colon + 1..].strip_prefix(b" ").unwrap_or(&after[colon + 1..]);
    let kernel = tag == b"kernel";
    // Kernel lines forwarded by klogd/rsyslog often keep the dmesg `[ secs]` prefix.
    let msg = if kernel && msg.first() == Some(&b'[') {
        match bracketed(msg) {
            Some(r) if r.format == Format::Dmesg => r.msg,
            _ => msg,
        }
    } else {
        msg
    };
    Some((kernel, msg))
}

fn iso_line(line: &[u8]) -> Option<Record<'_>> {
    let (ms, used) = iso_time(line)?;
    let rest = line[used..].strip_prefix(b" ")?;
    // journal short-iso / RFC 3339 syslog carry a host and tag; dmesg iso does not (its first token is
    // usually the subsystem with a colon: `NVRM: Xid ...`).
    if let Some((kernel, msg)) = host_tag(rest) {
        let first = rest.split(|&b| b == b' ').next().unwrap_or_default();
        if !first.ends_with(b":") {
            return Some(Record::new(Format::Journal, LogTime::Wall(ms), kernel, msg));
        }
    }
    Some(Record::new(Format::DmesgIso, LogTime::Wall(ms), true, rest))
}

/// `Nov  9 10:19:35 host tag: msg` (also `Nov 22 02:05:26.123456 ...`).
fn syslog_line(line: &[u8], year: i32) -> Option<Record<'_>> {
    if line.len() < 16 || line[3] != b' ' {
        return None;
    }
    let mo = month(&line[0..3])?;
    let d = digits(trim_start(&line[4..6]))?;
    if line[6] != b' ' {
        return None;
    }
    let (h, mi, s) = hms(&line[7..15])?;
    let mut i = 15;
    let mut ms = 0;
    if line[i] == b'.' {
        let n = line[i + 1..].iter().take(9).take_while(|b| b.is_ascii_digit()).count();
        let frac = &line[i + 1..i + 1 + n];
        if n > 0 {
            ms = digits(&frac[..n.min(3)])?;
            for _ in n.min(3)..3 {
                ms *= 10;
            }
        }
        i += 1 + n;
    }
    let rest = line[i..].strip_prefix(b" ")?;
    let t = epoch_ms(i64::from(year), mo, d as u32, h, mi, s, ms)?;
    let (kernel, msg) = host_tag(rest)?;
    Some(Record::new(Format::Syslog, LogTime::Wall(t), kernel, msg))
}

/// Civil date (y, m, d) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A record time for output: RFC 3339 UTC for wall times, `+SECS.USECS` (since boot) for monotonic ones.
pub fn format_log_time(t: LogTime) -> Option<String> {
    match t {
        LogTime::None => None,
        LogTime::Mono(us) => Some(format!("+{}.{:06}", us / 1_000_000, us % 1_000_000)),
        LogTime::Wall(ms) => {
            let (y, mo, d) = civil_from_days((ms / 86_400_000) as i64);
            let s = (ms / 1000) % 86_400;
            Some(format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                s / 3600,
                (s / 60) % 60,
                s % 60,
                ms % 1000
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Record<'_> {
        parse_line(line.as_bytes(), Format::Plain, 2025)
    }

    fn msg<'a>(r: &Record<'a>) -> &'a str {
        std::str::from_utf8(r.msg).unwrap()
    }

    #[test]
    fn raw_kmsg_records_and_dictionary_lines() {
        let r = p("6,3964,206764307,-;nvidia-nvswitch2: open (major=510)");
        assert_eq!(r.format, Format::Kmsg);
        assert_eq!(r.seq, Some(3964));
        assert_eq!(r.time, LogTime::Mono(206_764_307));
        assert!(r.kernel);
        assert_eq!(msg(&r), "nvidia-nvswitch2: open (major=510)");
        // extra comma-separated fields after flags are allowed
        let r = p("3,1,2,c,extra;msg");
        assert_eq!((r.format, msg(&r)), (Format::Kmsg, "msg"));
        // userspace facility (30 = daemon.info) is not kernel
        assert!(!p("30,5,6,-;systemd[1]: Started foo").kernel);
        let d = parse_line(b" SUBSYSTEM=pci", Format::Kmsg, 2025);
        assert_eq!(d.format, Format::KmsgDict);
        // a leading space after a non-kmsg line is just a message
        assert_eq!(p(" SUBSYSTEM=pci").format, Format::Plain);
        // truncated kmsg header falls back to plain
        assert_eq!(p("6,3964,2067").format, Format::Plain);
        assert_eq!(p("6,39x4,1,-;m").format, Format::Plain);
    }

    #[test]
    fn dmesg_forms() {
        let r =
            p("[  536.429346] NMI watchdog: BUG: soft lockup - CPU#1 stuck for 11s! [syz-executor7:16813]");
        assert_eq!(r.format, Format::Dmesg);
        assert_eq!(r.time, LogTime::Mono(536_429_346));
        assert!(msg(&r).starts_with("NMI watchdog"));
        let r = p("[  417.725670][    C1] rcu: INFO: rcu_sched self-detected stall on CPU");
        assert_eq!(
            (r.time, msg(&r)),
            (LogTime::Mono(417_725_670), "rcu: INFO: rcu_sched self-detected stall on CPU")
        );
        let r = p("[ T1057] x");
        assert_eq!(r.format, Format::Plain);
        let r = p("<6>[    2.608284] mlx5_core 0000:41:00.1: 63.008 Gb/s");
        assert_eq!((r.format, r.time, r.kernel), (Format::Dmesg, LogTime::Mono(2_608_284), true));
        let r = p(
            "[Sun Jan  5 18:28:55 2025] watchdog: BUG: soft lockup - CPU#18 stuck for 27s! [python3:2254956]",
        );
        assert_eq!(r.format, Format::DmesgCtime);
        assert_eq!(r.time, LogTime::Wall(1_736_101_735_000));
        assert!(msg(&r).starts_with("watchdog:"));
        let r = p("kern  :warn  : 2025-01-21T04:41:44,283302+00:00 NVRM: Xid (PCI:0000:38:00): 13, pid=1");
        assert_eq!(r.format, Format::DmesgIso);
        assert_eq!(r.time, LogTime::Wall(1_737_434_504_283));
        assert!(msg(&r).starts_with("NVRM: Xid"));
        let r = p("daemon:info  : 2025-01-21T04:41:44,283302+00:00 systemd[1]: x");
        assert!(!r.kernel);
        let r = p("2025-01-21T05:41:44,283302+01:00 NVRM: Xid");
        assert_eq!((r.format, r.time), (Format::DmesgIso, LogTime::Wall(1_737_434_504_283)));
        // `[wall][mono]` (some distributions' dmesg): the wall time is kept
        let r = p("[2023-06-22 21:55:31.352446][5975153.878190] EDAC MC0: 1 UE memory read error on X");
        assert_eq!((r.format, r.time), (Format::DmesgIso, LogTime::Wall(1_687_470_931_352)));
        assert_eq!(msg(&r), "EDAC MC0: 1 UE memory read error on X");
        let r = p("[2023-06-22 21:55:31.352446] msg");
        assert_eq!((r.time, msg(&r)), (LogTime::Wall(1_687_470_931_352), "msg"));
        // truncated timestamps
        assert_eq!(p("[2023-06-22 21:55").format, Format::Plain);
        assert_eq!(p("[  536.42").format, Format::Plain);
        assert_eq!(p("[Sun Jan  5 18:28:55").format, Format::Plain);
        assert_eq!(p("2025-01-21T04:41").format, Format::Plain);
    }

    #[test]
    fn syslog_and_journal_forms() {
        let r = p("Jun 14 15:16:01 combo kernel: Linux version 2.6.5-1.358");
        assert_eq!(r.format, Format::Syslog);
        assert!(r.kernel);
        assert_eq!(msg(&r), "Linux version 2.6.5-1.358");
        let r = p("Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname=");
        assert_eq!(r.format, Format::Syslog);
        assert!(!r.kernel);
        let r = p("Nov  9 10:19:35 ohm kernel: [  12.500000] EXT4-fs (sda1): mounted");
        assert_eq!(msg(&r), "EXT4-fs (sda1): mounted");
        let r = p("Nov 22 02:05:26.123456 host kernel: x");
        assert_eq!(r.time, LogTime::Wall(1_763_777_126_123));
        let r = p("2026-11-22T02:05:26+0000 node1 kernel: sd 0:0:0:0: [sda] tag#1 x");
        assert_eq!((r.format, r.kernel), (Format::Journal, true));
        assert_eq!(r.time, LogTime::Wall(1_795_313_126_000));
        assert_eq!(msg(&r), "sd 0:0:0:0: [sda] tag#1 x");
        let r = p("2026-11-22T02:05:26.5+00:00 node1 systemd[1]: Started");
        assert!(!r.kernel);
        let r = p("[   12.345678] node1 kernel: e1000e: eth0 NIC Link is Down");
        assert_eq!((r.format, r.time), (Format::Journal, LogTime::Mono(12_345_678)));
        assert_eq!(msg(&r), "e1000e: eth0 NIC Link is Down");
        assert_eq!(p("-- Boot 4c7e0c2d --").format, Format::Marker { boot: true });
        assert_eq!(p("-- No entries --").format, Format::Marker { boot: false });
        assert_eq!(p("-- hello").format, Format::Plain);
    }

    #[test]
    fn log_times_format_round_trip() {
        assert_eq!(format_log_time(LogTime::None), None);
        assert_eq!(format_log_time(LogTime::Mono(536_429_346)).as_deref(), Some("+536.429346"));
        assert_eq!(
            format_log_time(LogTime::Wall(1_737_434_504_283)).as_deref(),
            Some("2025-01-21T04:41:44.283Z")
        );
        let r = p("2025-01-21T04:41:44.283Z x");
        assert_eq!(r.time, LogTime::Wall(1_737_434_504_283));
        assert_eq!(
            format_log_time(LogTime::Wall(951_782_400_000)).as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
    }

    #[test]
    fn garbage_never_panics() {
        let cases: [&[u8]; 8] =
            [b"", b"[", b"<", b"<9999999999>", b"\xff\xfe[\x00]", b"2025-", b"Jan", b"1,2,3,"];
        for c in cases {
            let r = parse_line(c, Format::Kmsg, 2025);
            assert!(r.msg.len() <= c.len());
        }
        // every prefix of real lines parses without panicking
        for l in [
            "kern  :warn  : 2025-01-21T04:41:44,283302+00:00 NVRM: Xid",
            "[Sun Jan  5 18:28:55 2025] watchdog",
            "Nov 22 02:05:26.123456 host kernel: x",
            "<6>[    2.608284][ T1] m",
        ] {
            for n in 0..=l.len() {
                let _ = parse_line(&l.as_bytes()[..n], Format::Plain, 2025);
            }
        }
    }
}
