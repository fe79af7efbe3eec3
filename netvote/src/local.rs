//! The agent's local vote rule (issue 16 "Votes"): from one window of its own probe results, which peers does
//! an agent call bad? A peer is bad when enough probes were sent to judge and the share lost (or failed to
//! connect) reaches a threshold, or when its median RTT is a robust outlier against this agent's own median
//! over all its peers (median + k * MAD, with an absolute floor so a quiet, tight fabric does not vote on
//! microseconds). Whenever the agent votes for anyone it also votes for itself: the problem may be its own NIC
//! or uplink, and the master sorts that out across many voters.

use crate::PeerResult;

/// At most this many names in one agent's votes (its own host included): a report stays small and the
/// leader's per-window memory bounded even when an agent's whole view of the fabric is broken.
pub const MAX_VOTES: usize = 256;

/// The thresholds of the local rule. `Default` is what the agent ships with.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRules {
    /// Fewer probes than this to a peer in the window: no loss verdict on that peer (too little data).
    pub min_sent: u32,
    /// Share of probes lost (or whose connect failed) at or above which a peer is bad.
    pub loss_ratio: f64,
    /// The RTT rule needs at least this many peers with answered probes (a median of 3 is not a baseline).
    pub rtt_min_peers: usize,
    /// A peer's p50 RTT above median + `rtt_mad_k` * MAD (over this agent's peers) is an outlier...
    pub rtt_mad_k: f64,
    /// ...and only if it also exceeds the median by at least this many microseconds.
    pub rtt_floor_us: u32,
}

impl Default for LocalRules {
    fn default() -> Self {
        LocalRules { min_sent: 5, loss_ratio: 0.01, rtt_min_peers: 8, rtt_mad_k: 6.0, rtt_floor_us: 2_000 }
    }
}

fn loss_of(p: &PeerResult) -> f64 {
    if p.sent == 0 {
        return 0.0;
    }
    f64::from(p.lost.max(p.connect_failures).min(p.sent)) / f64::from(p.sent)
}

fn median(sorted: &[u32]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        f64::from(sorted[n / 2])
    } else {
        (f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0
    }
}

/// The hosts this agent votes bad for one window: the bad peers (worst first), then `own_host` whenever that
/// list is not empty. Empty when nothing looks bad. At most [`MAX_VOTES`] names; a peer listed twice is voted
/// once; a peer named like `own_host` is not voted as a peer.
pub fn votes(peers: &[PeerResult], own_host: &str, rules: &LocalRules) -> Vec<String> {
    // RTT baseline over the peers that answered enough probes.
    let mut rtts: Vec<u32> = peers
        .iter()
        .filter(|p| p.sent >= rules.min_sent.max(1) && p.rtt_p50_us > 0 && p.lost < p.sent)
        .map(|p| p.rtt_p50_us)
        .collect();
    rtts.sort_unstable();
    let rtt_limit = if rtts.len() >= rules.rtt_min_peers.max(1) {
        let med = median(&rtts);
        let mut dev: Vec<u32> = rtts.iter().map(|&r| (f64::from(r) - med).abs().round() as u32).collect();
        dev.sort_unstable();
        let mad = median(&dev);
        Some(med + (rules.rtt_mad_k * mad).max(f64::from(rules.rtt_floor_us)))
    } else {
        None
    };
    // (badness, name): loss first (a loss is stronger evidence than a slow answer), then RTT excess.
    let mut bad: Vec<(f64, &str)> = Vec::new();
    for p in peers {
        if p.host.is_empty() || p.host == own_host || p.sent < rules.min_sent.max(1) {
            continue;
        }
        let loss = loss_of(p);
        if loss >= rules.loss_ratio && loss > 0.0 {
            bad.push((1.0 + loss, &p.host));
        } else if let Some(limit) = rtt_limit.filter(|&l| f64::from(p.rtt_p50_us) > l && p.lost < p.sent) {
            bad.push((f64::from(p.rtt_p50_us) / limit.max(1.0) - 1.0, &p.host));
        }
    }
    if bad.is_empty() {
        return Vec::new();
    }
    bad.sort_by(|x, y| y.0.total_cmp(&x.0).then_with(|| x.1.cmp(y.1)));
    let mut out: Vec<String> = Vec::new();
    for (_, h) in bad {
        if out.len() + 1 >= MAX_VOTES {
            break;
        }
        if !out.iter().any(|o| o == h) {
            out.push(h.to_string());
        }
    }
    out.push(own_host.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(host: &str, sent: u32, lost: u32, p50: u32) -> PeerResult {
        PeerResult {
            host: host.into(),
            sent,
            lost,
            rtt_p50_us: p50,
            rtt_p99_us: p50 * 2,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_peers_give_no_votes() {
        let peers: Vec<_> = (0..32).map(|i| peer(&format!("h{i}"), 20, 0, 100 + i)).collect();
        assert!(votes(&peers, "me", &LocalRules::default()).is_empty());
    }

    #[test]
    fn a_lossy_peer_is_voted_with_self() {
        let mut peers: Vec<_> = (0..32).map(|i| peer(&format!("h{i}"), 20, 0, 100)).collect();
        peers[7].lost = 2;
        assert_eq!(votes(&peers, "me", &LocalRules::default()), vec!["h7".to_string(), "me".to_string()]);
    }

    #[test]
    fn too_few_probes_are_not_judged() {
        let peers = vec![peer("a", 2, 2, 100)];
        assert!(votes(&peers, "me", &LocalRules::default()).is_empty());
    }

    #[test]
    fn connect_failures_count_as_loss() {
        let mut p = peer("a", 10, 0, 0);
        p.connect_failures = 10;
        assert_eq!(votes(&[p], "me", &LocalRules::default()), vec!["a".to_string(), "me".to_string()]);
    }

    #[test]
    fn rtt_outlier_needs_mad_and_floor() {
        let mut peers: Vec<_> = (0..16).map(|i| peer(&format!("h{i}"), 20, 0, 200 + (i % 3) * 10)).collect();
        peers[3].rtt_p50_us = 1_500; // beyond k*MAD but under the 2 ms floor: not voted
        assert!(votes(&peers, "me", &LocalRules::default()).is_empty());
        peers[3].rtt_p50_us = 5_000;
        assert_eq!(votes(&peers, "me", &LocalRules::default()), vec!["h3".to_string(), "me".to_string()]);
        // Below rtt_min_peers there is no RTT baseline at all.
        assert!(votes(&peers[..4], "me", &LocalRules::default()).is_empty());
    }

    #[test]
    fn votes_are_bounded_and_unique() {
        let mut peers: Vec<_> = (0..1000).map(|i| peer(&format!("h{i}"), 10, 5, 100)).collect();
        peers.push(peer("h1", 10, 5, 100));
        peers.push(peer("me", 10, 10, 100));
        let v = votes(&peers, "me", &LocalRules::default());
        assert_eq!(v.len(), MAX_VOTES);
        assert_eq!(v.last().map(String::as_str), Some("me"));
        assert_eq!(v.iter().filter(|h| h.as_str() == "me").count(), 1);
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len());
    }
}
