//! Count-in-window thresholds ("3 in 10 minutes") keyed by (rule, object), in log time.
//!
//! Semantics: a hit at log time `t` is counted together with the earlier hits of the same key no older than
//! `t - window` (a hit exactly `window` old still counts). When the count reaches the threshold the rule
//! fires once and the key's window is emptied, so the next firing needs another `count` hits. Times come from
//! the log records, never from the wall clock, so replaying a file gives the same answer.
//!
//! A hit may carry a weight (an EDAC line `4 CE memory read error` is four corrected errors): the window
//! sums weights, so "10 CEs per day" counts errors, not lines. Each kept entry has weight >= 1 and the
//! key is emptied when the sum reaches the threshold, so a key never holds more than `count` entries.

use std::collections::{BTreeMap, VecDeque};

use super::rules::Threshold;

/// Most (rule, object) keys tracked at once. A log naming more distinct objects than this is hostile or
/// broken; the key seen longest ago is evicted (its partial count is lost, which can only delay a firing).
pub const MAX_WINDOW_KEYS: usize = 4096;

#[derive(Debug, Default)]
pub struct Windows {
    /// (rule, object) -> (log time, weight) of the hits still inside the window.
    keys: BTreeMap<(usize, String), VecDeque<(u64, u32)>>,
    evicted: u64,
}

impl Windows {
    /// Record a hit of rule `rule` on `object` at `t_ms`; true when the threshold is reached.
    pub fn hit(&mut self, rule: usize, object: &str, th: Threshold, t_ms: u64) -> bool {
        self.hit_n(rule, object, th, t_ms, 1)
    }

    /// Record a hit of weight `n` (clamped to 1..=threshold count); true when the summed weight inside
    /// the window reaches the threshold.
    pub fn hit_n(&mut self, rule: usize, object: &str, th: Threshold, t_ms: u64, n: u32) -> bool {
        let n = n.clamp(1, th.count.max(1));
        if th.count <= 1 || n >= th.count {
            // A single hit that is the whole threshold fires on its own; older partial sums stay.
            return true;
        }
        let key = (rule, object.to_string());
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_WINDOW_KEYS {
            self.evict_oldest();
        }
        let q = self.keys.entry(key.clone()).or_default();
        while q.front().is_some_and(|&(f, _)| t_ms.saturating_sub(f) > th.window_ms) {
            q.pop_front();
        }
        q.push_back((t_ms, n));
        let sum: u64 = q.iter().map(|&(_, w)| u64::from(w)).sum();
        if sum >= u64::from(th.count) {
            self.keys.remove(&key);
            return true;
        }
        false
    }

    /// The summed weight currently inside the window of (rule, object), as of its last hit.
    pub fn current(&self, rule: usize, object: &str) -> u64 {
        self.keys.get(&(rule, object.to_string())).map_or(0, |q| q.iter().map(|&(_, w)| u64::from(w)).sum())
    }

    fn evict_oldest(&mut self) {
        let oldest =
            self.keys.iter().min_by_key(|(_, q)| q.back().map_or(0, |&(t, _)| t)).map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.keys.remove(&k);
            self.evicted += 1;
        }
    }

    /// Forget every window (a new boot or a clock the earlier times cannot be compared with).
    pub fn reset(&mut self) {
        self.keys.clear();
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_MIN: u64 = 600_000;
    const TH: Threshold = Threshold { count: 3, window_ms: TEN_MIN };

    #[test]
    fn fires_at_exact_window_boundary() {
        let mut w = Windows::default();
        assert!(!w.hit(0, "sda", TH, 0));
        assert!(!w.hit(0, "sda", TH, 300_000));
        assert!(w.hit(0, "sda", TH, TEN_MIN), "a hit exactly one window old still counts");
        // fired: window emptied, needs three more
        assert!(!w.hit(0, "sda", TH, TEN_MIN + 1));
        assert!(!w.hit(0, "sda", TH, TEN_MIN + 2));
        assert!(w.hit(0, "sda", TH, TEN_MIN + 3));
    }

    #[test]
    fn one_ms_past_the_window_does_not_fire() {
        let mut w = Windows::default();
        assert!(!w.hit(0, "sda", TH, 0));
        assert!(!w.hit(0, "sda", TH, 300_000));
        assert!(!w.hit(0, "sda", TH, TEN_MIN + 1), "the first hit fell out of the window");
        assert!(w.hit(0, "sda", TH, TEN_MIN + 2));
    }

    #[test]
    fn keys_are_separate_and_count_one_always_fires() {
        let mut w = Windows::default();
        assert!(!w.hit(0, "sda", TH, 0));
        assert!(!w.hit(0, "sdb", TH, 1));
        assert!(!w.hit(1, "sda", TH, 2));
        assert!(!w.hit(0, "sda", TH, 3));
        assert!(w.hit(0, "sda", TH, 4));
        assert!(w.hit(5, "x", Threshold { count: 1, window_ms: 1 }, 9));
        w.reset();
        assert!(w.is_empty());
    }

    #[test]
    fn weights_sum_inside_the_window() {
        let mut w = Windows::default();
        let th = Threshold { count: 10, window_ms: TEN_MIN };
        assert!(!w.hit_n(0, "dimm", th, 0, 4));
        assert_eq!(w.current(0, "dimm"), 4);
        assert!(!w.hit_n(0, "dimm", th, 1, 5));
        assert!(w.hit_n(0, "dimm", th, 2, 1), "4 + 5 + 1 = 10 errors");
        assert_eq!(w.current(0, "dimm"), 0, "emptied after firing");
        // the 4 fall out of the window before the rest arrive
        assert!(!w.hit_n(0, "dimm", th, 10, 4));
        assert!(!w.hit_n(0, "dimm", th, 10 + TEN_MIN + 1, 5));
        assert_eq!(w.current(0, "dimm"), 5);
        // one line carrying the whole threshold (128 CE) fires alone; the weight is clamped, never summed
        // past the count
        assert!(w.hit_n(0, "other", th, 5, 128));
        assert!(w.hit_n(0, "x", Threshold { count: 1, window_ms: 1 }, 0, 0));
        assert!(!w.hit_n(0, "zero", th, 0, 0), "a zero weight counts as one");
        assert_eq!(w.current(0, "zero"), 1);
    }

    #[test]
    fn key_limit_evicts_the_oldest() {
        let mut w = Windows::default();
        for i in 0..MAX_WINDOW_KEYS {
            assert!(!w.hit(0, &format!("d{i}"), TH, i as u64 + 10));
        }
        assert_eq!(w.len(), MAX_WINDOW_KEYS);
        assert!(!w.hit(0, "new", TH, 100_000));
        assert_eq!(w.len(), MAX_WINDOW_KEYS);
        assert_eq!(w.evicted(), 1);
        // d0 (oldest) was evicted: its count restarted
        assert!(!w.hit(0, "d0", TH, 100_001));
        assert!(!w.hit(0, "d0", TH, 100_002));
        // d2 kept its first hit: two more fire it
        assert!(!w.hit(0, "d2", TH, 100_003));
        assert!(w.hit(0, "d2", TH, 100_004));
    }
}
