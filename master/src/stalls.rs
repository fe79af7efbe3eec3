//! How late an async runtime runs its tasks. A probe task sleeps [`PROBE_EVERY`] again and again and records
//! how much later than asked it woke: a runtime whose workers are all busy (a blocking call on an async
//! worker, a lock held over a long pass, a starved machine) wakes it late, and every request on that runtime
//! (heartbeats, ingests) waits as long. The master exports its runtime's figures on `/metrics`
//! (`huatuo_master_runtime_stall*`), and `huatuo bench fleet` prints them beside its own runtime's, so a
//! latency spike in a benchmark says whether the master's runtime or the load generator stalled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the probe wakes (50 wakeups a second: negligible work, 20 ms resolution of the figures).
pub const PROBE_EVERY: Duration = Duration::from_millis(20);

/// Wake-up delays of one runtime since its probe started.
#[derive(Default)]
pub struct StallStats {
    pub over_100ms: AtomicU64,
    pub over_500ms: AtomicU64,
    pub max_ms: AtomicU64,
}

/// The master's API runtime (the one that serves gRPC, REST and the leader's duties).
pub static RUNTIME: StallStats = StallStats::new();

impl StallStats {
    pub const fn new() -> StallStats {
        StallStats { over_100ms: AtomicU64::new(0), over_500ms: AtomicU64::new(0), max_ms: AtomicU64::new(0) }
    }

    /// Record one wake-up that came `late` after the time asked for.
    pub fn observe(&self, late: Duration) {
        let ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX);
        if ms > 100 {
            self.over_100ms.fetch_add(1, Ordering::Relaxed);
        }
        if ms > 500 {
            self.over_500ms.fetch_add(1, Ordering::Relaxed);
        }
        self.max_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// `over 100 ms N, over 500 ms M, longest L ms`.
    pub fn summary(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "over 100 ms {}, over 500 ms {}, longest {} ms",
            l(&self.over_100ms),
            l(&self.over_500ms),
            l(&self.max_ms)
        )
    }

    /// (name, help, value, is_counter) of every series.
    pub fn series(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            (
                "runtime_stalls_over_100ms",
                "Times the API runtime woke a sleeping task over 100 ms late (every request waited as long)",
                l(&self.over_100ms),
                true,
            ),
            (
                "runtime_stalls_over_500ms",
                "Times the API runtime woke a task over 500 ms late",
                l(&self.over_500ms),
                true,
            ),
            (
                "runtime_stall_max_ms",
                "Longest wake-up delay of the API runtime since start, in ms",
                l(&self.max_ms),
                false,
            ),
        ]
    }
}

/// Probe the runtime this runs on until `stop` resolves, recording into `stats`.
pub async fn probe(stats: &'static StallStats, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let asked = Instant::now() + PROBE_EVERY;
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(asked.into()) => {}
        }
        stats.observe(Instant::now().saturating_duration_since(asked));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_counted_by_threshold_and_the_longest_kept() {
        let s = StallStats::new();
        for ms in [0, 3, 100, 101, 499, 501, 40] {
            s.observe(Duration::from_millis(ms));
        }
        assert_eq!(s.over_100ms.load(Ordering::Relaxed), 3);
        assert_eq!(s.over_500ms.load(Ordering::Relaxed), 1);
        assert_eq!(s.max_ms.load(Ordering::Relaxed), 501);
        assert_eq!(s.summary(), "over 100 ms 3, over 500 ms 1, longest 501 ms");
    }

    #[test]
    fn a_blocked_runtime_is_seen_late() {
        static S: StallStats = StallStats::new();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let probe = tokio::spawn(probe(&S, async {
                let _ = rx.await;
            }));
            // Let the probe arm its first sleep, then hold the only worker for 300 ms (a blocking call on an
            // async worker): the probe cannot wake before it is released.
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(300));
            tokio::time::sleep(PROBE_EVERY * 2).await;
            tx.send(()).expect("stop");
            probe.await.expect("probe");
        });
        assert!(S.max_ms.load(Ordering::Relaxed) >= 250, "{}", S.summary());
        assert!(S.over_100ms.load(Ordering::Relaxed) >= 1, "{}", S.summary());
    }
}
