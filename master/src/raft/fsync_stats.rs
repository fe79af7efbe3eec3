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
};

impl SnapStats {
    pub fn built(&self, index: u64, bytes: u64, took: Duration) {
        self.last_build_bytes.store(bytes, Ordering::Relaxed);
        self.last_build_ms.store(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.last_build_index.store(index, Ordering::Relaxed);
        self.builds.fetch_add(1, Ordering::Relaxed);
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

/// Turns of the Raft loop (the events taken, then the Ready): a turn longer than the election timeout
/// leaves the peers unanswered that long, which is how one member's stall makes a leader step down.
/// Exported on `/metrics` (`huatuo_master_raft_turns_*`), printed by `huatuo bench fleet`.
pub struct TurnStats {
    pub over_250ms: AtomicU64,
    pub over_1s: AtomicU64,
    pub max_ms: AtomicU64,
}

pub static TURNS: TurnStats =
    TurnStats { over_250ms: AtomicU64::new(0), over_1s: AtomicU64::new(0), max_ms: AtomicU64::new(0) };

impl TurnStats {
    pub fn observe(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if ms > 250 {
            self.over_250ms.fetch_add(1, Ordering::Relaxed);
        }
        if ms > 1000 {
            self.over_1s.fetch_add(1, Ordering::Relaxed);
        }
        self.max_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// (name, help, value, is_counter) of every series.
    pub fn series(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("raft_turns_over_250ms", "Raft loop turns that took over 250 ms", l(&self.over_250ms), true),
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
}
