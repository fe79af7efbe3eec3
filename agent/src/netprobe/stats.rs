//! Per-peer results of one probe window, and the choice of peers (pure: no sockets, no clock).

use std::collections::BTreeMap;

use netvote::PeerResult;

/// One peer's counts in the window being measured. `rtts_us` holds the answered probes' round trips
/// (at most `probes_per_peer`, the buffer reused window after window).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerWindow {
    pub sent: u32,
    pub lost: u32,
    pub connect_failures: u32,
    pub rtts_us: Vec<u32>,
    /// Path evidence for a lossy flow: its traced hops (`trace::Trace::path`), empty when not traced.
    pub path: Vec<String>,
    /// Whether this flow was traced this window: `Some(reached)`.
    pub traced: Option<bool>,
}

impl PeerWindow {
    pub fn clear(&mut self) {
        self.sent = 0;
        self.lost = 0;
        self.connect_failures = 0;
        self.rtts_us.clear();
        self.path.clear();
        self.traced = None;
    }

    pub fn answered(&mut self, rtt_us: u32) {
        self.sent += 1;
        self.rtts_us.push(rtt_us);
    }

    pub fn lost(&mut self) {
        self.sent += 1;
        self.lost += 1;
    }

    /// A probe whose connect failed or timed out: lost, and counted apart.
    pub fn connect_failed(&mut self) {
        self.lost();
        self.connect_failures += 1;
    }

    /// The wire figures (sorts the RTT buffer in place).
    pub fn result(&mut self, host: &str) -> PeerResult {
        self.rtts_us.sort_unstable();
        PeerResult {
            host: host.to_string(),
            sent: self.sent,
            lost: self.lost,
            connect_failures: self.connect_failures,
            rtt_p50_us: percentile(&self.rtts_us, 50),
            rtt_p99_us: percentile(&self.rtts_us, 99),
            path: self.path.clone(),
        }
    }
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
pub fn percentile(sorted: &[u32], p: u32) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Hosts remembered with the window they were last probed in: the rotation's memory, bounded so a fleet
/// that hands out ever new peers cannot grow it (at the bound the longest-unprobed are forgotten, and
/// count as never probed if they come back: probed first, which is what rotation wants anyway).
pub const MAX_REMEMBERED: usize = 4096;

/// Which peers of the sample to probe this window: the `n` probed longest ago (never probed first), ties
/// in the sample's order; this host itself is never picked. Over successive windows every peer of a
/// stable sample is probed before any is probed twice.
pub fn pick<'a, P>(
    sample: &'a [P],
    host_of: impl Fn(&P) -> &str,
    last_probed: &BTreeMap<String, u64>,
    own_host: &str,
    n: usize,
) -> Vec<&'a P> {
    let mut order: Vec<(Option<u64>, usize)> = sample
        .iter()
        .enumerate()
        .filter(|(_, p)| host_of(p) != own_host)
        .map(|(i, p)| (last_probed.get(host_of(p)).copied(), i))
        .collect();
    // None (never probed) sorts before Some.
    order.sort();
    let mut seen = std::collections::BTreeSet::new();
    order
        .into_iter()
        .filter(|(_, i)| seen.insert(host_of(&sample[*i])))
        .take(n)
        .map(|(_, i)| &sample[i])
        .collect()
}

/// Note that `hosts` were probed in window `seq`, forgetting the longest-unprobed beyond [`MAX_REMEMBERED`].
pub fn remember<'a>(last_probed: &mut BTreeMap<String, u64>, hosts: impl Iterator<Item = &'a str>, seq: u64) {
    for h in hosts {
        last_probed.insert(h.to_string(), seq);
    }
    let excess = last_probed.len().saturating_sub(MAX_REMEMBERED);
    if excess > 0 {
        let mut by_age: Vec<(u64, String)> = last_probed.iter().map(|(h, s)| (*s, h.clone())).collect();
        by_age.sort_unstable();
        for (_, h) in by_age.into_iter().take(excess) {
            last_probed.remove(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!((percentile(&v, 50), percentile(&v, 99)), (50, 99));
        let mut w = PeerWindow::default();
        for rtt in [300, 100, 200] {
            w.answered(rtt);
        }
        w.lost();
        w.connect_failed();
        let r = w.result("h2");
        assert_eq!(
            r,
            PeerResult {
                host: "h2".into(),
                sent: 5,
                lost: 2,
                connect_failures: 1,
                rtt_p50_us: 200,
                rtt_p99_us: 300,
                path: Vec::new(),
            }
        );
        w.clear();
        assert_eq!(w.result("h2").sent, 0);
    }

    #[test]
    fn rotation_covers_every_peer_before_repeating_and_skips_itself() {
        let sample: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        let mut last = BTreeMap::new();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for seq in 1..=3u64 {
            let picked: Vec<&String> = pick(&sample, |s| s.as_str(), &last, "h4", 3);
            assert_eq!(picked.len(), 3);
            remember(&mut last, picked.iter().map(|s| s.as_str()), seq);
            for p in picked {
                *counts.entry(p.clone()).or_default() += 1;
            }
        }
        // 9 peers (h4 is this host), 3 windows of 3: each exactly once.
        assert_eq!(counts.len(), 9, "{counts:?}");
        assert!(counts.values().all(|c| *c == 1) && !counts.contains_key("h4"));
        // Duplicates in a sample are probed once.
        let dup = vec!["a".to_string(), "a".to_string(), "b".to_string()];
        assert_eq!(pick(&dup, |s| s.as_str(), &BTreeMap::new(), "x", 5).len(), 2);
    }

    #[test]
    fn the_rotation_memory_is_bounded_and_forgets_the_oldest() {
        let mut last = BTreeMap::new();
        let hosts: Vec<String> = (0..MAX_REMEMBERED + 10).map(|i| format!("h{i:05}")).collect();
        for (i, h) in hosts.iter().enumerate() {
            remember(&mut last, std::iter::once(h.as_str()), i as u64);
        }
        assert_eq!(last.len(), MAX_REMEMBERED);
        assert!(!last.contains_key("h00000") && last.contains_key(hosts.last().unwrap().as_str()));
    }
}
