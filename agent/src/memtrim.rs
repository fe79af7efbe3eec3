//! Giving freed heap back to the kernel.
//!
//! glibc's malloc returns freed memory to the kernel only from the top of a heap; what start-up frees below
//! a live allocation (rule-set compilation and checks, inventory, TLS set-up) and what a storm's buffers
//! free stays resident for the life of the process. `malloc_trim(0)` releases every free page of every
//! arena. Measured on the idle slim agent (release, `huatuo bench agent`, one call through gdb, 2026-12-02):
//! anonymous memory 8.5 -> 3.3 MiB, RSS 19.8 -> 14.5 MiB. The agent trims once shortly after start and then
//! periodically; one call on a heap this size takes well under a millisecond.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// First trim after start: start-up (rules compiled and checked, inventory, first connections) is done.
pub const TRIM_FIRST: Duration = Duration::from_secs(2);
/// Then one trim per period: a storm's buffers are returned within this long after it ends. A trim is cheap
/// (it walks the free lists of a few MiB of heap), so the period bounds only how long freed memory lingers.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Trims made by [`run`] in this process.
pub static TRIMS: AtomicU64 = AtomicU64::new(0);

/// Release free heap pages to the kernel. True when memory was released. A no-op (false) where the C
/// library has no `malloc_trim` (not glibc).
pub fn trim() -> bool {
    trim_impl()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_impl() -> bool {
    // SAFETY: malloc_trim(3) takes a plain integer (0: keep no extra padding), only walks and releases the
    // allocator's free lists under the allocator's own locks, and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_impl() -> bool {
    false
}

/// Trim after `first`, then every `every`, until `stop` turns true (or its sender is gone).
pub async fn run(first: Duration, every: Duration, mut stop: watch::Receiver<bool>) -> u64 {
    let mut trims = 0u64;
    let mut next = tokio::time::Instant::now() + first;
    loop {
        tokio::select! {
            biased;
            r = stop.wait_for(|s| *s) => {
                // Err: the sender is gone, which is a stop too.
                drop(r);
                return trims;
            }
            _ = tokio::time::sleep_until(next) => {
                let released = trim();
                trims += 1;
                TRIMS.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(released, "heap trimmed");
                next = tokio::time::Instant::now() + every;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon")
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_below_a_live_allocation_is_returned() {
        // 32 MiB in 8 KiB blocks (below the mmap threshold: from the heap), touched, then all but the last
        // freed: the last keeps the heap's top, so only a trim gives the pages back.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![(i % 251) as u8 + 1; 8192]).collect();
        let keep = blocks.pop().expect("one block");
        drop(blocks);
        let before = anon_kib();
        assert!(trim(), "free pages below the live block are released");
        let after = anon_kib();
        assert!(before >= after + 16 * 1024, "RssAnon {before} KiB -> {after} KiB: at least 16 MiB returned");
        assert_eq!(keep[0], (4095 % 251) as u8 + 1, "the live block is untouched");
    }

    #[tokio::test]
    async fn the_loop_trims_until_told_to_stop() {
        let start = TRIMS.load(Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(Duration::ZERO, Duration::from_millis(1), rx));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TRIMS.load(Ordering::Relaxed) < start + 3 {
            assert!(std::time::Instant::now() < deadline, "three trims within 20 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send_replace(true);
        assert!(task.await.expect("joins") >= 3);
        // A stop already set wins over a due trim; a dropped sender stops it too.
        let (tx, rx) = watch::channel(true);
        assert_eq!(tokio::spawn(run(Duration::ZERO, Duration::ZERO, rx)).await.expect("joins"), 0);
        drop(tx);
        let (tx, rx) = watch::channel(false);
        drop(tx);
        assert_eq!(tokio::spawn(run(Duration::from_secs(3600), Duration::ZERO, rx)).await.expect("joins"), 0);
    }
}
