//! The kernel-log checker: turns kernel log records (from `/dev/kmsg`, a recorded kmsg file, dmesg,
//! syslog or `journalctl -k` output, or lines the agent feeds it) into findings about disks, DIMMs, NICs
//! and the machine, using a versioned rule set from TOML files (the default one is embedded).
//!
//! Layout: [`parse`] recognises the line formats, [`rules`] compiles and matches rule files, [`object`]
//! normalises object names, [`window`] implements count-in-window thresholds in log time, [`scan`] ties
//! them together per line, [`kmsg`] reads /dev/kmsg with EPIPE resync and a persisted cursor, and
//! [`bench`] builds the benchmark corpus. Rule ids are a stable interface documented in
//! `checkers/rules/kernel-log/README.md`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use state_machines::{Finding, Kind};

use crate::{CheckContext, CheckError, Checker, Checkpoint};

pub mod bench;
/// The rule-set compiler, decoders and object naming live in the `rulesets` crate (the master validates
/// pushed rule sets with the same compiler); re-exported so `checkers::kernel_log::rules::...` paths hold.
pub use rulesets::{decode, object, rules};
pub mod kmsg;
pub mod parse;
pub mod scan;
pub mod sysfs;
pub mod window;

pub use kmsg::{
    Chunk, Cursor, CursorError, CursorStore, DevKmsg, FileCursorStore, FollowLimits, Followed, KmsgFollower,
    KmsgReader, KmsgSource, KmsgStats,
};
pub use parse::{Format, LogTime, Record, parse_line};
pub use rules::{RuleError, RuleSet};
pub use scan::{Event, MAX_LINE_LEN, ScanStats, Scanner};

/// Checker name carried by every finding.
pub const CHECKER_NAME: &str = "kernel-log";
/// Checker version (the rule-set version is appended as semver build metadata: `0.1.0+rules.2026.11.1`).
pub const CHECKER_VERSION: &str = "0.1.0";
/// Key of the kmsg cursor in a [`Checkpoint`] (and in the agent's KV, where earlier agents kept it too).
pub const KMSG_CHECKPOINT_KEY: &str = "kmsg.cursor";
/// Lines the agent may queue between runs; beyond this the oldest are dropped and counted (a log storm
/// must not grow the agent's memory).
pub const MAX_QUEUED_LINES: usize = 100_000;
/// Most chunks of followed records one run takes, so a run returns even while the follower keeps filling
/// chunks (the rest is taken by the next run): as many records as one poll of the device reads at most.
const MAX_CHUNKS_PER_RUN: usize = kmsg::MAX_RECORDS_PER_POLL / kmsg::CHUNK_RECORDS;

/// A rule set and the version its findings carry (None: the compiled `CHECKER_VERSION+rules.V`).
#[derive(Clone)]
pub struct VersionedRules {
    pub rules: Arc<RuleSet>,
    pub version: Option<String>,
}

/// Rule sets handed to a running kernel-log checker (hot reload). The checker looks at it at the start of
/// each run: a new main set replaces its rules (the kmsg cursor is kept: no line is read twice or
/// skipped, lines from then on are judged by the new rules); a shadow set is judged beside it, on the same
/// lines, and its findings carry `shadow = true`. Count-in-window state starts over with a new set.
#[derive(Default)]
pub struct RulesSwap {
    state: Mutex<SwapState>,
}

#[derive(Default, Clone)]
struct SwapState {
    generation: u64,
    /// None: the rules the checker was built with (its built-in copy).
    main: Option<VersionedRules>,
    shadow: Option<VersionedRules>,
}

impl RulesSwap {
    /// Run `main` (None: back to the built-in rules) and `shadow` from the next run on.
    pub fn set(&self, main: Option<VersionedRules>, shadow: Option<VersionedRules>) {
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        st.generation += 1;
        st.main = main;
        st.shadow = shadow;
    }

    fn since(&self, generation: u64) -> Option<SwapState> {
        let st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (st.generation != generation).then(|| st.clone())
    }
}

/// The shadow rule set and its scanner (made on the first run after it was set).
struct Shadow {
    rules: VersionedRules,
    scanner: Option<Scanner>,
}

/// Where the checker gets its records.
enum Input {
    /// Lines pushed by the agent with [`KernelLogChecker::push_line`].
    Fed(VecDeque<Vec<u8>>),
    /// `ROOT/dev/kmsg` (the device in production, a recorded raw-kmsg file in tests), opened on the first
    /// run; the cursor is kept as `keep` says.
    Kmsg { keep: CursorKeeping, reader: Option<KmsgReader<Box<dyn KmsgSource>>> },
    /// `ROOT/dev/kmsg` followed by a [`KmsgFollower`] thread (started on the first run) that calls `wake`
    /// for every chunk of records it hands on; each run takes what the thread read. The cursor is handed out as a checkpoint
    /// (as in `CursorKeeping::Checkpoint`), at the last record a run took.
    Follow(Box<Following>),
}

struct Following {
    wake: Arc<dyn Fn() + Send + Sync>,
    follower: Option<KmsgFollower>,
    boot_id: String,
    /// Cursor of the last record taken (where a restarted follower resumes).
    taken_upto: Option<Cursor>,
    pending: Option<Cursor>,
    handed: Option<Cursor>,
    /// A read error the thread reported, returned by the next run (the one after reopens the source).
    error: Option<String>,
}

/// Who persists the kmsg cursor.
enum CursorKeeping {
    /// The checker saves it to a store after every run (the CLI, tests).
    Store(Box<dyn CursorStore>),
    /// The caller commits it: each run's end position is handed out by `take_checkpoint` and the caller
    /// stores it together with that run's findings (the agent's outbox, one transaction).
    Checkpoint { resume: Option<Cursor>, pending: Option<Cursor>, taken: Option<Cursor> },
}

/// The kernel-log [`Checker`].
pub struct KernelLogChecker {
    rules: Arc<RuleSet>,
    scanner: Option<Scanner>,
    input: Input,
    dropped_lines: u64,
    /// The rules it was built with, restored when a swap sets no main set.
    builtin: Arc<RuleSet>,
    /// What `Checker::version` says: `CHECKER_VERSION`, or the catalog version of the running set.
    version: String,
    /// The catalog version findings carry (None: the scanner's compiled version).
    rules_version: Option<String>,
    swap: Option<(Arc<RulesSwap>, u64)>,
    shadow: Option<Shadow>,
}

impl KernelLogChecker {
    /// A checker fed by the agent through [`push_line`](Self::push_line).
    pub fn fed(rules: Arc<RuleSet>) -> Self {
        KernelLogChecker::with_input(rules, Input::Fed(VecDeque::new()))
    }

    /// A checker reading `ROOT/dev/kmsg`, resuming from the cursor in `store`.
    pub fn kmsg(rules: Arc<RuleSet>, store: Box<dyn CursorStore>) -> Self {
        KernelLogChecker::with_input(rules, Input::Kmsg { keep: CursorKeeping::Store(store), reader: None })
    }

    /// A checker reading `ROOT/dev/kmsg`, resuming after `resume`, that never writes its cursor itself:
    /// after each run that moved it, [`Checker::take_checkpoint`] returns it (key
    /// [`KMSG_CHECKPOINT_KEY`], value [`Cursor::encode`]) for the caller to commit with the findings.
    pub fn kmsg_checkpointed(rules: Arc<RuleSet>, resume: Option<Cursor>) -> Self {
        let keep = CursorKeeping::Checkpoint { resume: resume.clone(), pending: None, taken: resume };
        KernelLogChecker::with_input(rules, Input::Kmsg { keep, reader: None })
    }

    /// Like [`kmsg_checkpointed`](Self::kmsg_checkpointed), but the log is followed on a thread of its own
    /// (`poll(2)` on the device; a short bounded poll at the end of a regular file) that calls `wake` after
    /// every chunk of records it hands on, so the caller can run the checker when a line arrives instead
    /// of on a timer.
    pub fn kmsg_following(
        rules: Arc<RuleSet>,
        resume: Option<Cursor>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let f = Following {
            wake,
            follower: None,
            boot_id: String::new(),
            taken_upto: resume.clone(),
            pending: None,
            handed: resume,
            error: None,
        };
        KernelLogChecker::with_input(rules, Input::Follow(Box::new(f)))
    }

    fn with_input(rules: Arc<RuleSet>, input: Input) -> Self {
        KernelLogChecker {
            builtin: Arc::clone(&rules),
            rules,
            scanner: None,
            input,
            dropped_lines: 0,
            version: CHECKER_VERSION.to_string(),
            rules_version: None,
            swap: None,
            shadow: None,
        }
    }

    /// Take rule sets from `swap` between runs (hot reload; see [`RulesSwap`]).
    pub fn set_swap(&mut self, swap: Arc<RulesSwap>) {
        self.swap = Some((swap, 0));
    }

    /// Apply what the swap holds, if it changed since the last run. The scanners are rebuilt at the start
    /// of this run; the previous run flushed everything it had, so nothing read is lost.
    fn apply_swap(&mut self) {
        let Some((swap, seen)) = &mut self.swap else { return };
        let Some(st) = swap.since(*seen) else { return };
        *seen = st.generation;
        match st.main {
            Some(v) => {
                self.rules = v.rules;
                self.version = v.version.clone().unwrap_or_else(|| CHECKER_VERSION.to_string());
                self.rules_version = v.version;
            }
            None => {
                self.rules = Arc::clone(&self.builtin);
                self.version = CHECKER_VERSION.to_string();
                self.rules_version = None;
            }
        }
        self.scanner = None;
        self.shadow = st.shadow.map(|rules| Shadow { rules, scanner: None });
    }

    /// Queue one kernel log line (any supported format) for the next run.
    pub fn push_line(&mut self, line: &[u8]) {
        if let Input::Fed(q) = &mut self.input {
            if q.len() >= MAX_QUEUED_LINES {
                q.pop_front();
                self.dropped_lines += 1;
            }
            q.push_back(line[..line.len().min(MAX_LINE_LEN)].to_vec());
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// What the scanner saw so far.
    pub fn scan_stats(&self) -> ScanStats {
        self.scanner.as_ref().map(Scanner::stats).unwrap_or_default()
    }

    /// What the kmsg reader saw so far (zero for fed input).
    pub fn kmsg_stats(&self) -> KmsgStats {
        match &self.input {
            Input::Kmsg { reader: Some(r), .. } => r.stats(),
            Input::Follow(f) => f.follower.as_ref().map(KmsgFollower::stats).unwrap_or_default(),
            _ => KmsgStats::default(),
        }
    }

    fn scanner(&mut self, ctx: &CheckContext) -> Result<(), CheckError> {
        if self.scanner.is_none() {
            self.scanner = Some(new_scanner(&self.rules, self.rules_version.as_deref(), ctx)?);
        }
        if let Some(sh) = &mut self.shadow
            && sh.scanner.is_none()
        {
            sh.scanner = Some(new_scanner(&sh.rules.rules, sh.rules.version.as_deref(), ctx)?);
        }
        for s in self.scanner.iter_mut().chain(self.shadow.iter_mut().filter_map(|s| s.scanner.as_mut())) {
            s.set_fallback_ms(ctx.now_ms);
        }
        Ok(())
    }
}

fn new_scanner(
    rules: &Arc<RuleSet>,
    version: Option<&str>,
    ctx: &CheckContext,
) -> Result<Scanner, CheckError> {
    let year = year_of(ctx.now_ms);
    let mut s =
        Scanner::new(Arc::clone(rules), &ctx.host, year).map_err(|e| CheckError::Config(e.to_string()))?;
    if let Some(v) = version {
        s.set_version(v);
    }
    s.set_boot_ms(boot_ms(&ctx.root));
    // Multi-line records (ATA, GHES, SCSI, MCE) become one finding; PCI and dm-N names resolve under
    // the probe root. Every run ends with a flush, so the lines a checkpoint covers have all produced
    // their findings (a record cut by the end of a run is two findings, never a lost one).
    s.set_group_records(true);
    s.set_root(Some(ctx.root.clone()));
    Ok(s)
}

/// Boot time from `ROOT/proc/stat` (`btime`, seconds since the epoch), in ms.
fn boot_ms(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("proc/stat")).ok()?;
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse::<u64>().ok()?.checked_mul(1000)
}

/// The UTC year of an epoch-ms time (for syslog lines, which carry no year).
pub fn year_of(ms: u64) -> i32 {
    // civil_from_days (H. Hinnant), year only.
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let y = yoe + era * 400 + i64::from(mp >= 10);
    y as i32
}

impl Checker for KernelLogChecker {
    fn name(&self) -> &str {
        CHECKER_NAME
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Machine, Kind::Disk, Kind::Dimm, Kind::Nic]
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        self.apply_swap();
        let mut events = Vec::new();
        let mut shadow_events = Vec::new();
        self.scanner(ctx)?;
        let Some(scanner) = self.scanner.as_mut() else {
            return Err(CheckError::Config("scanner missing".into()));
        };
        let mut shadow = self.shadow.as_mut().and_then(|s| s.scanner.as_mut());
        // Every line goes to the main rules and, when a shadow set runs, to it as well.
        let mut feed = |line: &[u8]| {
            scanner.feed(line, None, &mut events);
            if let Some(sh) = shadow.as_deref_mut() {
                sh.feed(line, None, &mut shadow_events);
            }
        };
        match &mut self.input {
            Input::Fed(q) => {
                while let Some(line) = q.pop_front() {
                    feed(&line);
                }
            }
            Input::Kmsg { keep, reader } => {
                if reader.is_none() {
                    let boot_id = kmsg::read_boot_id(&ctx.root)
                        .map_err(|e| CheckError::Probe(format!("boot_id: {e}")))?;
                    let cursor = match keep {
                        CursorKeeping::Store(store) => {
                            store.load().map_err(|e| CheckError::Probe(e.to_string()))?
                        }
                        CursorKeeping::Checkpoint { resume, .. } => resume.clone(),
                    };
                    let path = ctx.root.join("dev/kmsg");
                    let src = open_kmsg(&path)
                        .map_err(|e| CheckError::Probe(format!("{}: {e}", path.display())))?;
                    *reader = Some(KmsgReader::new(src, &boot_id, cursor));
                }
                let Some(r) = reader.as_mut() else {
                    return Err(CheckError::Probe("kmsg reader missing".into()));
                };
                r.poll(kmsg::MAX_RECORDS_PER_POLL, |rec| {
                    // The record's first line is the message; dictionary lines follow after '\n'.
                    let first = rec.split(|&b| b == b'\n').next().unwrap_or_default();
                    feed(first);
                })
                .map_err(|e| CheckError::Probe(format!("kmsg: {e}")))?;
                if let Some(c) = r.cursor() {
                    match keep {
                        CursorKeeping::Store(store) => {
                            store.save(&c).map_err(|e| CheckError::Probe(e.to_string()))?
                        }
                        CursorKeeping::Checkpoint { pending, .. } => *pending = Some(c),
                    }
                }
            }
            Input::Follow(f) => {
                if let Some(e) = f.error.take() {
                    return Err(CheckError::Probe(format!("kmsg: {e}")));
                }
                if f.follower.is_none() {
                    f.boot_id = kmsg::read_boot_id(&ctx.root)
                        .map_err(|e| CheckError::Probe(format!("boot_id: {e}")))?;
                    let path = ctx.root.join("dev/kmsg");
                    let shown = |e: std::io::Error| CheckError::Probe(format!("{}: {e}", path.display()));
                    let src = open_kmsg(&path).map_err(shown)?;
                    let reader = KmsgReader::new(src, &f.boot_id, f.taken_upto.clone());
                    let spawned = KmsgFollower::spawn(reader, kmsg::FollowLimits::default(), f.wake.clone());
                    f.follower = Some(spawned.map_err(shown)?);
                }
                let Some(follower) = f.follower.as_mut() else {
                    return Err(CheckError::Probe("kmsg follower missing".into()));
                };
                for _ in 0..MAX_CHUNKS_PER_RUN {
                    match follower.take() {
                        None => break,
                        Some(Followed::Records(chunk)) => {
                            for (line, _) in chunk.records() {
                                feed(line);
                            }
                            if let Some(seq) = chunk.last_seq() {
                                f.taken_upto = Some(Cursor { boot_id: f.boot_id.clone(), seq });
                            }
                            follower.give_back(chunk);
                        }
                        Some(Followed::Failed(e)) => {
                            // What was taken so far is reported with its cursor now; the error on the
                            // next run; the run after that reopens the source after the last record taken.
                            f.error = Some(e);
                            f.follower = None;
                            break;
                        }
                    }
                }
                f.pending = f.taken_upto.clone();
            }
        }
        scanner.flush(&mut events);
        let mut out: Vec<Finding> =
            events.into_iter().map(|e| resolve_object(&ctx.root, e.finding)).collect();
        if let Some(sh) = shadow {
            sh.flush(&mut shadow_events);
            out.extend(shadow_events.into_iter().map(|e| {
                let mut f = resolve_object(&ctx.root, e.finding);
                f.shadow = true;
                f
            }));
        }
        Ok(out)
    }

    fn take_checkpoint(&mut self) -> Option<Checkpoint> {
        if let Input::Follow(f) = &mut self.input {
            let c = f.pending.take()?;
            if f.handed.as_ref() == Some(&c) {
                return None; // nothing new taken: no write at all
            }
            f.handed = Some(c.clone());
            return Some(Checkpoint { key: KMSG_CHECKPOINT_KEY.to_string(), value: c.encode().into_bytes() });
        }
        let Input::Kmsg { keep: CursorKeeping::Checkpoint { pending, taken, .. }, .. } = &mut self.input
        else {
            return None;
        };
        let c = pending.take()?;
        if taken.as_ref() == Some(&c) {
            return None; // nothing new read: no write at all
        }
        *taken = Some(c.clone());
        Some(Checkpoint { key: KMSG_CHECKPOINT_KEY.to_string(), value: c.encode().into_bytes() })
    }
}

/// Give a disk finding named by ATA port or SCSI address the block device name sysfs maps it to (the
/// logged name is kept as the `logged_name` reading).
fn resolve_object(root: &Path, mut f: Finding) -> Finding {
    if f.object.kind() != Kind::Disk {
        return f;
    }
    let Some(name) = f.object.name().map(str::to_string) else {
        return f;
    };
    if let Some(block) = sysfs::resolve_disk(root, &name)
        && let Ok(id) = state_machines::ObjectId::new(Kind::Disk, f.object.host(), Some(&block))
    {
        f.object = id;
        f.readings.insert("logged_name".into(), name);
    }
    f
}

/// The character device is read record by record (non-blocking: the follower waits with `poll(2)`); a
/// regular file (a recording) line by line.
fn open_kmsg(path: &Path) -> std::io::Result<Box<dyn KmsgSource>> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path)?.file_type().is_char_device() {
        Ok(Box::new(DevKmsg::open(path)?))
    } else {
        Ok(Box::new(kmsg::LineFileSource::open(path)?))
    }
}

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod rule_cases;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpointed_kmsg_hands_out_each_new_cursor_once() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/kernel/random")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
        let kmsg = root.path().join("dev/kmsg");
        std::fs::write(&kmsg, "3,5,100,-;blk_update_request: I/O error, dev sdz, sector 5 op 0x0:(READ)\n")
            .unwrap();
        let ctx =
            CheckContext { root: root.path().into(), host: "h1".into(), now_ms: 0, profile: "online".into() };
        let rules = Arc::new(RuleSet::default_rules().unwrap());
        let resume = Some(Cursor { boot_id: "boot-1".into(), seq: 4 });
        let mut c = KernelLogChecker::kmsg_checkpointed(rules, resume);
        assert_eq!(c.run(&ctx).unwrap().len(), 1);
        let cp = c.take_checkpoint().unwrap();
        assert_eq!((cp.key.as_str(), cp.value.as_slice()), (KMSG_CHECKPOINT_KEY, &b"boot-1 5"[..]));
        assert!(c.run(&ctx).unwrap().is_empty());
        assert_eq!(c.take_checkpoint(), None, "an unmoved cursor is not written again");
    }

    #[test]
    fn following_kmsg_wakes_and_hands_out_the_cursor_of_what_was_taken() {
        use std::io::Write;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/kernel/random")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
        let kmsg = root.path().join("dev/kmsg");
        std::fs::write(&kmsg, "6,4,90,-;old line\n").unwrap();
        let ctx =
            CheckContext { root: root.path().into(), host: "h1".into(), now_ms: 0, profile: "online".into() };
        let woken = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        let wake = Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        let rules = Arc::new(RuleSet::default_rules().unwrap());
        let resume = Some(Cursor { boot_id: "boot-1".into(), seq: 4 });
        let mut c = KernelLogChecker::kmsg_following(rules, resume, wake);
        assert!(c.run(&ctx).unwrap().is_empty(), "the first run starts the follower");
        assert_eq!(c.take_checkpoint(), None, "nothing taken yet");
        let mut f = std::fs::OpenOptions::new().append(true).open(&kmsg).unwrap();
        f.write_all(b"3,5,100,-;blk_update_request: I/O error, dev sdz, sector 5 op 0x0:(READ)\n").unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while woken.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(woken.load(Ordering::SeqCst), 1, "woken by the appended line, not by the replayed one");
        assert_eq!(c.run(&ctx).unwrap().len(), 1);
        let cp = c.take_checkpoint().unwrap();
        assert_eq!(cp.value, b"boot-1 5".to_vec());
        assert!(c.run(&ctx).unwrap().is_empty());
        assert_eq!(c.take_checkpoint(), None, "an unmoved cursor is not written again");
    }

    #[test]
    fn year_of_epoch_ms() {
        assert_eq!(year_of(0), 1970);
        assert_eq!(year_of(1_736_101_735_000), 2025);
        assert_eq!(year_of(1_795_313_126_000), 2026);
        assert_eq!(year_of(1_767_225_599_000), 2025); // 2025-12-31T23:59:59Z
        assert_eq!(year_of(1_767_225_600_000), 2026);
    }

    /// The recorded real kernel lines (checkers/testdata/kernel-log/real-lines), without their dmesg
    /// timestamps: the messages as /dev/kmsg hands them out.
    fn recorded_messages() -> Vec<String> {
        let tsv = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/kernel-log/real-lines/lines.tsv"
        ))
        .unwrap();
        tsv.lines()
            .skip(1)
            .filter_map(|l| l.splitn(5, '\t').nth(4))
            .map(|line| match line.trim_start().strip_prefix('[') {
                Some(rest) => rest.split_once("] ").map_or(line, |(_, m)| m).to_string(),
                None => line.to_string(),
            })
            .collect()
    }

    const V2_RULES: &str = r#"
version = "2"
[[rule]]
id = "v2.io-error"
keywords = ["I/O error"]
pattern = 'I/O error,? (?:on )?dev(?:ice)? (?P<dev>[A-Za-z0-9_]+)'
kind = "disk"
object = "{dev}"
severity = "ERROR"
"#;

    fn v2() -> VersionedRules {
        let set = RuleSet::from_sources(&[("v2.toml".into(), V2_RULES.into())]).unwrap();
        VersionedRules { rules: Arc::new(set), version: Some("2".into()) }
    }

    fn kmsg_root(messages: &[String]) -> (tempfile::TempDir, std::path::PathBuf) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/kernel/random")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
        let kmsg = root.path().join("dev/kmsg");
        append_kmsg(&kmsg, 1, messages);
        (root, kmsg)
    }

    fn append_kmsg(path: &Path, first_seq: usize, messages: &[String]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for (i, m) in messages.iter().enumerate() {
            let seq = first_seq + i;
            writeln!(f, "3,{seq},{},-;{m}", seq * 1000).unwrap();
        }
    }

    type Key = (String, String, String, bool);

    fn keys(f: &[Finding]) -> Vec<Key> {
        let mut k: Vec<Key> =
            f.iter().map(|f| (f.object.to_string(), f.rule.clone(), f.version.clone(), f.shadow)).collect();
        k.sort();
        k
    }

    /// What a fresh fed checker with `rules` finds in `messages` (the reference judgement).
    fn judged(rules: VersionedRules, messages: &[String], ctx: &CheckContext) -> Vec<Finding> {
        let mut c = KernelLogChecker::fed(Arc::new(RuleSet::default_rules().unwrap()));
        let swap = Arc::new(RulesSwap::default());
        swap.set(Some(rules), None);
        c.set_swap(swap);
        for m in messages {
            c.push_line(m.as_bytes());
        }
        c.run(ctx).unwrap()
    }

    #[test]
    fn a_hot_swapped_rule_set_judges_only_the_lines_after_the_swap() {
        let messages = recorded_messages();
        assert!(messages.len() > 100, "the recording is there");
        // Split in the middle of the lines v2 flags, so both sides have some.
        let io: Vec<usize> = (0..messages.len()).filter(|&i| messages[i].contains("I/O error")).collect();
        let (before, after) = messages.split_at(io[io.len() / 2]);
        let (root, kmsg) = kmsg_root(before);
        let ctx =
            CheckContext { root: root.path().into(), host: "h1".into(), now_ms: 0, profile: "online".into() };
        let builtin = Arc::new(RuleSet::default_rules().unwrap());
        let default = VersionedRules { rules: Arc::clone(&builtin), version: None };
        let swap = Arc::new(RulesSwap::default());
        let mut c = KernelLogChecker::kmsg_checkpointed(Arc::clone(&builtin), None);
        c.set_swap(Arc::clone(&swap));
        let first = c.run(&ctx).unwrap();
        assert_eq!(
            keys(&first),
            keys(&judged(default.clone(), before, &ctx)),
            "built-in rules before the swap"
        );
        assert!(!judged(v2(), before, &ctx).is_empty(), "v2 would flag earlier lines too, were they re-read");
        assert_eq!(c.version(), CHECKER_VERSION);
        let cp = c.take_checkpoint().unwrap();
        assert_eq!(cp.value, format!("boot-1 {}", before.len()).into_bytes());

        swap.set(Some(v2()), None);
        append_kmsg(&kmsg, before.len() + 1, after);
        let second = c.run(&ctx).unwrap();
        let want = judged(v2(), after, &ctx);
        assert!(!want.is_empty(), "v2 flags some of the later lines");
        assert_eq!(keys(&second), keys(&want), "only the later lines, judged by v2 alone");
        assert!(second.iter().all(|f| f.version == "2" && f.rule.starts_with("v2.")), "{second:?}");
        assert_eq!(c.version(), "2");
        let cp = c.take_checkpoint().unwrap();
        assert_eq!(
            cp.value,
            format!("boot-1 {}", messages.len()).into_bytes(),
            "the cursor moved on, no gap"
        );
        assert!(c.run(&ctx).unwrap().is_empty(), "no line is judged twice");

        // Back to the built-in copy: the version says so again.
        swap.set(None, None);
        append_kmsg(&kmsg, messages.len() + 1, before);
        let third = c.run(&ctx).unwrap();
        assert_eq!(keys(&third), keys(&judged(default, before, &ctx)));
        assert_eq!(c.version(), CHECKER_VERSION);
    }

    #[test]
    fn a_shadow_rule_set_judges_the_same_lines_beside_the_main_one() {
        let messages = recorded_messages();
        let (root, _) = kmsg_root(&messages);
        let ctx =
            CheckContext { root: root.path().into(), host: "h1".into(), now_ms: 0, profile: "online".into() };
        let builtin = Arc::new(RuleSet::default_rules().unwrap());
        let swap = Arc::new(RulesSwap::default());
        swap.set(None, Some(v2()));
        let mut c = KernelLogChecker::kmsg_checkpointed(Arc::clone(&builtin), None);
        c.set_swap(swap);
        let all = c.run(&ctx).unwrap();
        let (shadow, main): (Vec<Finding>, Vec<Finding>) = all.into_iter().partition(|f| f.shadow);
        let default = VersionedRules { rules: builtin, version: None };
        assert_eq!(keys(&main), keys(&judged(default, &messages, &ctx)), "the main set is unchanged");
        let mut want = judged(v2(), &messages, &ctx);
        for f in &mut want {
            f.shadow = true;
        }
        assert!(!want.is_empty());
        assert_eq!(keys(&shadow), keys(&want), "the shadow set saw every line, marked shadow");
        assert_eq!(c.version(), CHECKER_VERSION, "the checker still runs its main version");
    }
}
