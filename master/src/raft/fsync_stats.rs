//! Latency of the Raft loop's durable write (one redb write transaction per Ready, committed with fsync):
//! a fixed-bucket histogram of atomics, exported on `/metrics`. Process-wide: one raft node per process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets in microseconds (a disk's fsync takes 50 µs (NVMe) to 50 ms (busy HDD)).
pub const BUCKETS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

pub struct FsyncStats {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

pub static FSYNC: FsyncStats = FsyncStats {
    buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len()],
    count: AtomicU64::new(0),
    sum_us: AtomicU64::new(0),
};

impl FsyncStats {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (upper bound in seconds, cumulative count) per bucket, the total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut cum = 0;
        let buckets = BUCKETS_US
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                cum += c.load(Ordering::Relaxed);
                (*b as f64 / 1e6, cum)
            })
            .collect();
        (buckets, self.count.load(Ordering::Relaxed), self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// Snapshots of this process's node: builds (off the Raft thread) and installs of received ones (inside a
/// Ready). Exported on `/metrics` (`huatuo_master_snapshot_*`), read by `huatuo bench fleet`.
pub struct SnapStats {
    pub builds: AtomicU64,
    pub build_failures: AtomicU64,
    pub last_build_bytes: AtomicU64,
    pub last_build_ms: AtomicU64,
    pub last_build_index: AtomicU64,
    pub installs: AtomicU64,
    pub last_install_bytes: AtomicU64,
    pub last_install_ms: AtomicU64,
    pub install_flushes: AtomicU64,
    /// Log compactions (without a file, on the Raft thread), the bytes they deleted and the longest.
    pub compactions: AtomicU64,
    pub compacted_bytes: AtomicU64,
    pub compaction_max_ms: AtomicU64,
}

pub static SNAPSHOTS: SnapStats = SnapStats {
    builds: AtomicU64::new(0),
    build_failures: AtomicU64::new(0),
    last_build_bytes: AtomicU64::new(0),
    last_build_ms: AtomicU64::new(0),
    last_build_index: AtomicU64::new(0),
    installs: AtomicU64::new(0),
    last_install_bytes: AtomicU64::new(0),
    last_install_ms: AtomicU64::new(0),
    install_flushes: AtomicU64::new(0),
    compactions: AtomicU64::new(0),
    compacted_bytes: AtomicU64::new(0),
    compaction_max_ms: AtomicU64::new(0),
};

impl SnapStats {
    pub fn built(&self, index: u64, bytes: u64, took: Duration) {
        self.last_build_bytes.store(bytes, Ordering::Relaxed);
        self.last_build_ms.store(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.last_build_index.store(index, Ordering::Relaxed);
        self.builds.fetch_add(1, Ordering::Relaxed);
    }

    /// A log compaction deleted `bytes` of log records in `took` (its write transaction included).
    pub fn compacted(&self, bytes: u64, took: Duration) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
        self.compacted_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.compaction_max_ms
            .fetch_max(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn build_failed(&self) {
        self.build_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An install of `bytes` took `took` (restore and commit) with `flushes` intermediate flushes.
    pub fn installed(&self, bytes: u64, took: Duration, flushes: u64) {
        self.install_flushes.fetch_add(flushes, Ordering::Relaxed);
        self.last_install_bytes.store(bytes, Ordering::Relaxed);
        self.last_install_ms.store(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.installs.fetch_add(1, Ordering::Relaxed);
    }

    /// (name, help, value, is_counter) of every series.
    pub fn series(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("snapshot_builds", "Snapshots this node built (off the Raft thread)", l(&self.builds), true),
            (
                "log_compactions",
                "Raft log compactions (no file is built for them; on the Raft thread)",
                l(&self.compactions),
                true,
            ),
            (
                "log_compacted_bytes",
                "Bytes of log records compactions deleted",
                l(&self.compacted_bytes),
                true,
            ),
            (
                "log_compaction_max_ms",
                "Longest log compaction, its write transaction included",
                l(&self.compaction_max_ms),
                false,
            ),
            (
                "snapshot_build_failures",
                "Snapshot builds that failed and were retried later",
                l(&self.build_failures),
                true,
            ),
            (
                "snapshot_last_build_bytes",
                "Size of the last snapshot file this node built",
                l(&self.last_build_bytes),
                false,
            ),
            (
                "snapshot_last_build_ms",
                "Milliseconds the last snapshot build took",
                l(&self.last_build_ms),
                false,
            ),
            (
                "snapshot_last_build_index",
                "Raft index of the last snapshot this node built",
                l(&self.last_build_index),
                false,
            ),
            (
                "snapshot_installs",
                "Snapshots received from the leader and installed",
                l(&self.installs),
                true,
            ),
            (
                "snapshot_last_install_bytes",
                "Size of the last snapshot installed",
                l(&self.last_install_bytes),
                false,
            ),
            (
                "snapshot_last_install_ms",
                "Milliseconds the last install took (inside one Ready, on the Raft thread, commit included)",
                l(&self.last_install_ms),
                false,
            ),
            (
                "snapshot_install_flushes",
                "Flushes of the database file while installs were restored (one per 8 MiB of snapshot read)",
                l(&self.install_flushes),
                true,
            ),
        ]
    }
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): a turn whose wall time is far above its CPU time was
/// waiting, for the disk or for a core (zero where the clock is unavailable).
#[allow(unsafe_code)]
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

/// One turn of the Raft loop, measured by the loop: its wall and CPU time, the part before the Ready
/// (events and the tick), how late it woke for a due tick, and what its Readies did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Turn {
    pub wall: Duration,
    pub cpu: Duration,
    pub events: Duration,
    /// Wait past a due tick, after the previous turn ended (scheduling delay; 0 for a turn woken by an
    /// event).
    pub late: Duration,
    pub work: super::core::ReadyWork,
}

/// A turn this long is logged with its breakdown (WARN "slow raft turn"): half the election timeout.
pub const SLOW_TURN: Duration = Duration::from_millis(500);

/// Turns of the Raft loop (the events taken, then the Ready): a turn longer than the election timeout
/// leaves the peers unanswered that long, which is how one member's stall makes a leader step down.
/// The longest turn is kept with its breakdown, and the longest wait for a due tick (a loop that is not
/// scheduled sends no heartbeats either). Exported on `/metrics` (`huatuo_master_raft_turn*`), printed by
/// `huatuo bench fleet`.
pub struct TurnStats {
    pub over_250ms: AtomicU64,
    pub over_1s: AtomicU64,
    pub max_ms: AtomicU64,
    /// The longest turn's CPU, events, apply, commit and install milliseconds and entries applied.
    pub max_cpu_ms: AtomicU64,
    pub max_events_ms: AtomicU64,
    pub max_apply_ms: AtomicU64,
    pub max_commit_ms: AtomicU64,
    pub max_install_ms: AtomicU64,
    pub max_entries: AtomicU64,
    pub late_over_250ms: AtomicU64,
    pub late_max_ms: AtomicU64,
    /// Pre-vote requests of higher-ranked members this member ignored at the start of its own pre-vote
    /// campaign (`core::PREVOTE_PRIORITY_TICKS`): each is a split vote that did not happen, or a vote
    /// delayed by a few ticks.
    pub prevotes_held_off: AtomicU64,
    /// Appends with entries this member dropped while its NOSPACE alarm was up
    /// (`core::Core::set_short_of_disk`).
    pub appends_refused_nospace: AtomicU64,
    /// Write transactions of the loop committed without an fsync (a commit index and applied entries
    /// only: `core::lazy_durability`).
    pub lazy_commits: AtomicU64,
}

pub static TURNS: TurnStats = TurnStats::new();

impl Default for TurnStats {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TurnStats {
    pub const fn new() -> Self {
        TurnStats {
            over_250ms: AtomicU64::new(0),
            over_1s: AtomicU64::new(0),
            max_ms: AtomicU64::new(0),
            max_cpu_ms: AtomicU64::new(0),
            max_events_ms: AtomicU64::new(0),
            max_apply_ms: AtomicU64::new(0),
            max_commit_ms: AtomicU64::new(0),
            max_install_ms: AtomicU64::new(0),
            max_entries: AtomicU64::new(0),
            late_over_250ms: AtomicU64::new(0),
            late_max_ms: AtomicU64::new(0),
            prevotes_held_off: AtomicU64::new(0),
            appends_refused_nospace: AtomicU64::new(0),
            lazy_commits: AtomicU64::new(0),
        }
    }

    /// Counts one turn of member `node` (one Raft loop per process writes these; readers may see a new
    /// longest turn's fields a moment apart). A slow turn or a late wake-up is logged with its breakdown.
    pub fn observe(&self, t: &Turn, node: u64, leader: bool) {
        let wall = ms(t.wall);
        if wall > 250 {
            self.over_250ms.fetch_add(1, Ordering::Relaxed);
        }
        if wall > 1000 {
            self.over_1s.fetch_add(1, Ordering::Relaxed);
        }
        if wall > self.max_ms.load(Ordering::Relaxed) {
            self.max_ms.store(wall, Ordering::Relaxed);
            self.max_cpu_ms.store(ms(t.cpu), Ordering::Relaxed);
            self.max_events_ms.store(ms(t.events), Ordering::Relaxed);
            self.max_apply_ms.store(ms(t.work.apply), Ordering::Relaxed);
            self.max_commit_ms.store(ms(t.work.commit), Ordering::Relaxed);
            self.max_install_ms.store(ms(t.work.install), Ordering::Relaxed);
            self.max_entries.store(t.work.entries, Ordering::Relaxed);
        }
        let late = ms(t.late);
        if late > 250 {
            self.late_over_250ms.fetch_add(1, Ordering::Relaxed);
        }
        self.late_max_ms.fetch_max(late, Ordering::Relaxed);
        if t.wall >= SLOW_TURN || t.late >= SLOW_TURN {
            tracing::warn!(
                node,
                leader,
                turn_ms = wall,
                cpu_ms = ms(t.cpu),
                woken_late_ms = late,
                events_ms = ms(t.events),
                apply_ms = ms(t.work.apply),
                commit_ms = ms(t.work.commit),
                install_ms = ms(t.work.install),
                compact_ms = ms(t.work.compact),
                entries = t.work.entries,
                bytes = t.work.bytes,
                apply_limit_bytes = t.work.limit,
                "slow raft turn"
            );
        }
    }

    /// (name, help, value, is_counter) of every series.
    pub fn series(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("raft_turns_over_250ms", "Raft loop turns that took over 250 ms", l(&self.over_250ms), true),
            (
                "raft_lazy_commits",
                "Raft loop write transactions committed without an fsync (commit index and applied entries only)",
                l(&self.lazy_commits),
                true,
            ),
            (
                "raft_turns_over_1s",
                "Raft loop turns that took over 1 s (peers unanswered past the election timeout)",
                l(&self.over_1s),
                true,
            ),
            (
                "raft_turn_max_ms",
                "Longest Raft loop turn since start, in milliseconds",
                l(&self.max_ms),
                false,
            ),
            (
                "raft_turn_max_cpu_ms",
                "The longest turn's CPU time on the Raft thread",
                l(&self.max_cpu_ms),
                false,
            ),
            (
                "raft_turn_max_events_ms",
                "The longest turn's time taking events and the tick, before its Ready",
                l(&self.max_events_ms),
                false,
            ),
            (
                "raft_turn_max_apply_ms",
                "The longest turn's time applying committed entries",
                l(&self.max_apply_ms),
                false,
            ),
            (
                "raft_turn_max_commit_ms",
                "The longest turn's time committing its write transactions (flush and fsync)",
                l(&self.max_commit_ms),
                false,
            ),
            (
                "raft_turn_max_install_ms",
                "The longest turn's time restoring a received snapshot",
                l(&self.max_install_ms),
                false,
            ),
            (
                "raft_turn_max_entries",
                "Committed entries the longest turn applied",
                l(&self.max_entries),
                false,
            ),
            (
                "raft_woken_late_over_250ms",
                "Due ticks the Raft loop woke for over 250 ms late (after its previous turn ended)",
                l(&self.late_over_250ms),
                true,
            ),
            (
                "raft_woken_late_max_ms",
                "Longest wait past a due tick since start, in milliseconds",
                l(&self.late_max_ms),
                false,
            ),
            (
                "raft_prevotes_held_off",
                "Pre-votes of higher-ranked members ignored at the start of this member's own pre-vote campaign",
                l(&self.prevotes_held_off),
                true,
            ),
            (
                "raft_appends_refused_nospace",
                "Appends carrying entries this member dropped while short of disk (its NOSPACE alarm up)",
                l(&self.appends_refused_nospace),
                true,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let s = FsyncStats {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        };
        s.observe(Duration::from_micros(80));
        s.observe(Duration::from_millis(3));
        s.observe(Duration::from_secs(5));
        let (b, count, sum) = s.snapshot();
        assert_eq!((b[0].1, b[5].1, b[11].1, count), (1, 2, 2, 3), "the 5 s one is only in +Inf");
        assert!((sum - 5.00308).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn thread_cpu_counts_work_not_sleep() {
        let start = thread_cpu();
        std::thread::sleep(Duration::from_millis(200));
        let slept = thread_cpu().saturating_sub(start);
        let start = thread_cpu();
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spun = thread_cpu().saturating_sub(start);
        assert!(slept < Duration::from_millis(50), "sleeping costs no CPU: {slept:?}");
        // A spinning thread can still be descheduled on a busy machine; a tenth of the wall time is plenty.
        assert!(spun > Duration::from_millis(20), "spinning does: {spun:?}");
        assert!(spun > slept * 4);
    }

    #[test]
    fn the_longest_turn_keeps_its_breakdown() {
        let s = TurnStats::new();
        let turn = |wall: u64, apply: u64, entries: u64| Turn {
            wall: Duration::from_millis(wall),
            cpu: Duration::from_millis(wall / 2),
            events: Duration::from_millis(1),
            late: Duration::ZERO,
            work: crate::raft::core::ReadyWork {
                apply: Duration::from_millis(apply),
                commit: Duration::from_millis(7),
                install: Duration::ZERO,
                compact: Duration::ZERO,
                entries,
                bytes: entries * 100,
                limit: 1 << 20,
            },
        };
        s.observe(&turn(300, 200, 40), 1, true);
        s.observe(&turn(1_200, 900, 500), 1, true);
        s.observe(&turn(600, 100, 3), 1, false);
        let late = Turn { late: Duration::from_millis(700), ..Turn::default() };
        s.observe(&late, 1, false);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!((l(&s.over_250ms), l(&s.over_1s), l(&s.max_ms)), (3, 1, 1_200));
        assert_eq!(
            (l(&s.max_cpu_ms), l(&s.max_apply_ms), l(&s.max_entries), l(&s.max_commit_ms)),
            (600, 900, 500, 7),
            "the breakdown is the 1.2 s turn's, not the later shorter one's"
        );
        assert_eq!((l(&s.late_over_250ms), l(&s.late_max_ms)), (1, 700));
        let names: Vec<_> = s.series().iter().map(|x| x.0).collect();
        assert!(names.contains(&"raft_turn_max_apply_ms") && names.contains(&"raft_woken_late_max_ms"));
    }
}
