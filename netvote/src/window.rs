//! The leader's in-memory aggregate of one window's reports. Reports come with heartbeats (not through Raft),
//! may be retried, and come from every agent, so the window counts each (reporter, started_ms, window_seq)
//! once, validates a report whole before taking any of it (a bad report changes nothing), and refuses at its
//! limits with an error that says which limit.

use crate::fxhash::{FxMap, FxSet};

use crate::Report;
use crate::topology::MAX_NAME_LEN;

/// The window's bounds. `Default` sizes it for the product's 100,000 hosts with 2x headroom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLimits {
    /// Distinct reports (reporter, started_ms, window_seq) per window: a restarted agent may report twice.
    pub max_reports: usize,
    /// Distinct host names seen (reporters, peers, voted hosts).
    pub max_hosts: usize,
    /// Peer results in one report: the agent probes `peers_per_window` (32 by default) peers.
    pub max_peers_per_report: usize,
    /// Votes in one report (the agent's rule caps them at `local::MAX_VOTES`).
    pub max_votes_per_report: usize,
    /// Flows (one peer result = one flow) over the whole window.
    pub max_flows: usize,
    /// Distinct traced paths over the whole window (agents trace at most a few lossy flows per window; a
    /// Clos fabric has routes per ToR pair, so this is far above what a real window holds).
    pub max_paths: usize,
}

/// Most hops in one traced path (the agent's tracer stops at 16; a Clos route has at most 5 switches).
pub const MAX_PATH_HOPS: usize = 16;
/// A hop of a traced path that did not answer (matches any switch at that position).
pub const UNKNOWN_HOP: &str = "*";

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits {
            max_reports: 200_000,
            max_hosts: 400_000,
            max_peers_per_report: 1_024,
            max_votes_per_report: crate::local::MAX_VOTES,
            max_flows: 8_000_000,
            max_paths: 1_000_000,
        }
    }
}

/// Why a report was refused (the window is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("report without a reporter name")]
    NoReporter,
    #[error("invalid host name {0:?} (empty, too long or with control characters)")]
    BadName(String),
    #[error("report from {reporter} has {got} peer results (limit {limit})")]
    TooManyPeers { reporter: String, got: usize, limit: usize },
    #[error("report from {reporter} has {got} votes (limit {limit})")]
    TooManyVotes { reporter: String, got: usize, limit: usize },
    #[error("report from {reporter}: peer {peer} lost {lost} of {sent} probes (lost > sent)")]
    LostAboveSent { reporter: String, peer: String, lost: u32, sent: u32 },
    #[error("report from {reporter} names itself as a peer")]
    SelfPeer { reporter: String },
    #[error("report from {reporter}: peer {peer} has a path of {hops} hops (limit {limit})")]
    PathTooLong { reporter: String, peer: String, hops: usize, limit: usize },
    #[error("report from {reporter} (agent started {started_ms}, window {window_seq}) is in both windows")]
    Overlap { reporter: String, started_ms: u64, window_seq: u64 },
    #[error("window full: {what} limit {limit} reached; report from {reporter} refused")]
    Full { what: &'static str, limit: usize, reporter: String },
}

/// One flow: what `src` measured towards `dst` in this window (host ids index [`Window::host_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub sent: u32,
    pub lost: u32,
    pub connect_failures: u32,
    pub rtt_p50_us: u32,
    pub rtt_p99_us: u32,
    /// The traced path of the flow ([`Window::path`]; 0: not traced).
    pub path: u32,
}

impl Flow {
    /// Probes counted lost: lost, or failed to connect, never more than sent.
    pub fn lost_probes(&self) -> u32 {
        self.lost.max(self.connect_failures).min(self.sent)
    }
}

/// Per host: what the window knows about it besides flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// The interface its (last) report named; empty when it did not report.
    pub iface: String,
    /// Reports it sent in this window.
    pub reports: u32,
    /// Reports that voted for it (its own self-votes excluded).
    pub votes_from_others: u32,
    /// Its own reports that voted (each vote includes a self-vote).
    pub self_votes: u32,
    /// Times a report listed it as a peer (how often it was probed).
    pub probed: u32,
    pub tcp_retrans_segs: u64,
    pub tcp_out_segs: u64,
}

/// One window's aggregate.
#[derive(Debug, Clone)]
pub struct Window {
    limits: WindowLimits,
    seen: FxSet<(u32, u64, u64)>,
    names: Vec<String>,
    index: FxMap<String, u32>,
    info: Vec<HostInfo>,
    flows: Vec<Flow>,
    /// Distinct traced paths; id 0 is the empty path (not traced).
    paths: Vec<Vec<String>>,
    path_index: FxMap<Vec<String>, u32>,
}

fn check_name(n: &str) -> Result<(), WindowError> {
    if n.is_empty() || n.len() > MAX_NAME_LEN || n.chars().any(char::is_control) {
        return Err(WindowError::BadName(n.chars().take(64).collect()));
    }
    Ok(())
}

impl Window {
    pub fn new(limits: WindowLimits) -> Window {
        Window {
            limits,
            seen: FxSet::default(),
            names: Vec::new(),
            index: FxMap::default(),
            info: Vec::new(),
            flows: Vec::new(),
            paths: vec![Vec::new()],
            path_index: FxMap::default(),
        }
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        self.info.push(HostInfo::default());
        i
    }

    fn intern_path(&mut self, path: &[String]) -> u32 {
        if path.is_empty() {
            return 0;
        }
        if let Some(&i) = self.path_index.get(path) {
            return i;
        }
        let i = self.paths.len() as u32;
        self.paths.push(path.to_vec());
        self.path_index.insert(path.to_vec(), i);
        i
    }

    /// A traced path by id (the hops as reported, switch names or [`UNKNOWN_HOP`]); id 0 is empty.
    pub fn path(&self, id: u32) -> &[String] {
        &self.paths[id as usize]
    }

    /// Distinct traced paths in the window.
    pub fn path_count(&self) -> usize {
        self.paths.len() - 1
    }

    /// Adds one report. `Ok(false)`: this (reporter, started_ms, window_seq) was already counted (a retried
    /// heartbeat) and nothing changed. An error leaves the window unchanged.
    pub fn add(&mut self, r: &Report) -> Result<bool, WindowError> {
        if r.reporter.is_empty() {
            return Err(WindowError::NoReporter);
        }
        check_name(&r.reporter)?;
        if self
            .index
            .get(&r.reporter)
            .is_some_and(|&id| self.seen.contains(&(id, r.started_ms, r.window_seq)))
        {
            return Ok(false);
        }
        let l = &self.limits;
        if r.peers.len() > l.max_peers_per_report {
            return Err(WindowError::TooManyPeers {
                reporter: r.reporter.clone(),
                got: r.peers.len(),
                limit: l.max_peers_per_report,
            });
        }
        if r.votes.len() > l.max_votes_per_report {
            return Err(WindowError::TooManyVotes {
                reporter: r.reporter.clone(),
                got: r.votes.len(),
                limit: l.max_votes_per_report,
            });
        }
        let mut new_names: FxSet<&str> = FxSet::default();
        if !self.index.contains_key(&r.reporter) {
            new_names.insert(&r.reporter);
        }
        for p in &r.peers {
            check_name(&p.host)?;
            if p.host == r.reporter {
                return Err(WindowError::SelfPeer { reporter: r.reporter.clone() });
            }
            if p.lost > p.sent {
                return Err(WindowError::LostAboveSent {
                    reporter: r.reporter.clone(),
                    peer: p.host.clone(),
                    lost: p.lost,
                    sent: p.sent,
                });
            }
            if !self.index.contains_key(&p.host) {
                new_names.insert(&p.host);
            }
            if p.path.len() > MAX_PATH_HOPS {
                return Err(WindowError::PathTooLong {
                    reporter: r.reporter.clone(),
                    peer: p.host.clone(),
                    hops: p.path.len(),
                    limit: MAX_PATH_HOPS,
                });
            }
            for hop in &p.path {
                if hop != UNKNOWN_HOP {
                    check_name(hop)?;
                }
            }
        }
        for v in &r.votes {
            check_name(v)?;
            if !self.index.contains_key(v) {
                new_names.insert(v);
            }
        }
        let full = |what, limit| WindowError::Full { what, limit, reporter: r.reporter.clone() };
        if self.seen.len() >= l.max_reports {
            return Err(full("reports", l.max_reports));
        }
        if self.names.len() + new_names.len() > l.max_hosts {
            return Err(full("hosts", l.max_hosts));
        }
        if self.flows.len() + r.peers.len() > l.max_flows {
            return Err(full("flows", l.max_flows));
        }
        let new_paths: FxSet<&[String]> = r
            .peers
            .iter()
            .map(|p| p.path.as_slice())
            .filter(|p| !p.is_empty() && !self.path_index.contains_key(*p))
            .collect();
        if self.paths.len() - 1 + new_paths.len() > l.max_paths {
            return Err(full("paths", l.max_paths));
        }
        // Validated: apply.
        let me = self.intern(&r.reporter);
        self.seen.insert((me, r.started_ms, r.window_seq));
        {
            let i = &mut self.info[me as usize];
            i.iface.clone_from(&r.iface);
            i.reports += 1;
            i.tcp_retrans_segs = i.tcp_retrans_segs.saturating_add(r.tcp_retrans_segs);
            i.tcp_out_segs = i.tcp_out_segs.saturating_add(r.tcp_out_segs);
            if !r.votes.is_empty() {
                i.self_votes += 1;
            }
        }
        for p in &r.peers {
            let d = self.intern(&p.host);
            self.info[d as usize].probed += 1;
            let path = self.intern_path(&p.path);
            self.flows.push(Flow {
                src: me,
                dst: d,
                sent: p.sent,
                lost: p.lost,
                connect_failures: p.connect_failures,
                rtt_p50_us: p.rtt_p50_us,
                rtt_p99_us: p.rtt_p99_us,
                path,
            });
        }
        let mut voted: Vec<&str> = r.votes.iter().map(String::as_str).filter(|v| *v != r.reporter).collect();
        voted.sort_unstable();
        voted.dedup();
        for v in voted {
            let id = self.intern(v);
            self.info[id as usize].votes_from_others += 1;
        }
        Ok(true)
    }

    /// Adds everything of an earlier window `other` (its reports, flows, paths and per-host figures), so
    /// one `localise` judges the evidence of several windows: a fault that lasts accumulates evidence a
    /// single window's few probes per pair cannot give. Refuses whole, changing nothing, when the result
    /// would pass a limit of this window or a report is in both.
    pub fn absorb(&mut self, other: &Window) -> Result<(), WindowError> {
        let full =
            |what, limit| WindowError::Full { what, limit, reporter: String::from("(earlier window)") };
        // A report in both windows would be counted twice (the leader never gives one report to two
        // windows: `Net::add_reports` drops a retry that crosses a window's end).
        if let Some(&(id, started_ms, window_seq)) = other.seen.iter().find(|(id, s, q)| {
            self.index.get(&other.names[*id as usize]).is_some_and(|&me| self.seen.contains(&(me, *s, *q)))
        }) {
            return Err(WindowError::Overlap {
                reporter: other.names[id as usize].clone(),
                started_ms,
                window_seq,
            });
        }
        let new_names = other.names.iter().filter(|n| !self.index.contains_key(*n)).count();
        if self.names.len() + new_names > self.limits.max_hosts {
            return Err(full("hosts", self.limits.max_hosts));
        }
        if self.seen.len() + other.seen.len() > self.limits.max_reports {
            return Err(full("reports", self.limits.max_reports));
        }
        if self.flows.len() + other.flows.len() > self.limits.max_flows {
            return Err(full("flows", self.limits.max_flows));
        }
        let new_paths = other.paths[1..].iter().filter(|p| !self.path_index.contains_key(*p)).count();
        if self.paths.len() - 1 + new_paths > self.limits.max_paths {
            return Err(full("paths", self.limits.max_paths));
        }
        let ids: Vec<u32> = other.names.iter().map(|n| self.intern(n)).collect();
        let path_ids: Vec<u32> = other.paths.iter().map(|p| self.intern_path(p)).collect();
        for &(id, s, q) in &other.seen {
            self.seen.insert((ids[id as usize], s, q));
        }
        for (i, o) in other.info.iter().enumerate() {
            let h = &mut self.info[ids[i] as usize];
            if h.iface.is_empty() {
                h.iface.clone_from(&o.iface);
            }
            h.reports += o.reports;
            h.votes_from_others += o.votes_from_others;
            h.self_votes += o.self_votes;
            h.probed += o.probed;
            h.tcp_retrans_segs = h.tcp_retrans_segs.saturating_add(o.tcp_retrans_segs);
            h.tcp_out_segs = h.tcp_out_segs.saturating_add(o.tcp_out_segs);
        }
        self.flows.extend(other.flows.iter().map(|f| Flow {
            src: ids[f.src as usize],
            dst: ids[f.dst as usize],
            path: path_ids[f.path as usize],
            ..*f
        }));
        Ok(())
    }

    /// The reports counted: (reporter id, started_ms, window_seq).
    pub(crate) fn seen(&self) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        self.seen.iter().copied()
    }

    /// Distinct reports counted.
    pub fn reports(&self) -> usize {
        self.seen.len()
    }

    /// Distinct reporters (hosts that sent at least one report).
    pub fn reporters(&self) -> usize {
        self.info.iter().filter(|i| i.reports > 0).count()
    }

    /// Every flow, in arrival order.
    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    /// Hosts seen, by id.
    pub fn host_names(&self) -> &[String] {
        &self.names
    }

    pub fn host_name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn host_id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn host_info(&self, id: u32) -> &HostInfo {
        &self.info[id as usize]
    }

    pub fn limits(&self) -> &WindowLimits {
        &self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerResult;

    fn report(who: &str, seq: u64, peers: &[(&str, u32, u32)]) -> Report {
        Report {
            reporter: who.into(),
            started_ms: 7,
            window_seq: seq,
            iface: "eth0".into(),
            peers: peers
                .iter()
                .map(|&(h, s, l)| PeerResult { host: h.into(), sent: s, lost: l, ..Default::default() })
                .collect(),
            votes: vec![],
            tcp_retrans_segs: 0,
            tcp_out_segs: 0,
        }
    }

    #[test]
    fn retried_report_counts_once() {
        let mut w = Window::new(WindowLimits::default());
        let r = report("a", 1, &[("b", 10, 1)]);
        assert_eq!(w.add(&r), Ok(true));
        assert_eq!(w.add(&r), Ok(false));
        assert_eq!(w.flows().len(), 1);
        // Same agent after a restart (new started_ms) is a different report.
        let mut r2 = r.clone();
        r2.started_ms = 8;
        assert_eq!(w.add(&r2), Ok(true));
        assert_eq!(w.flows().len(), 2);
        assert_eq!(w.reports(), 2);
        assert_eq!(w.reporters(), 1);
        assert_eq!(w.host_info(w.host_id("b").unwrap()).probed, 2);
    }

    #[test]
    fn bad_reports_change_nothing() {
        let mut w = Window::new(WindowLimits::default());
        assert_eq!(w.add(&report("", 1, &[])), Err(WindowError::NoReporter));
        assert!(matches!(w.add(&report("a", 1, &[("b", 1, 2)])), Err(WindowError::LostAboveSent { .. })));
        assert!(matches!(
            w.add(&report("a", 1, &[("b", 1, 0), ("a", 1, 0)])),
            Err(WindowError::SelfPeer { .. })
        ));
        assert!(matches!(w.add(&report("a", 1, &[("", 1, 0)])), Err(WindowError::BadName(_))));
        assert!(w.host_names().is_empty());
        assert!(w.flows().is_empty());
        // The same report, fixed, is then accepted (the refusal did not mark it seen).
        assert_eq!(w.add(&report("a", 1, &[("b", 1, 0)])), Ok(true));
    }

    #[test]
    fn limits_refuse_with_a_clear_error() {
        let limits = WindowLimits {
            max_reports: 2,
            max_hosts: 4,
            max_peers_per_report: 2,
            max_votes_per_report: 2,
            max_flows: 3,
            max_paths: 1,
        };
        let mut w = Window::new(limits);
        assert!(matches!(
            w.add(&report("a", 1, &[("b", 1, 0), ("c", 1, 0), ("d", 1, 0)])),
            Err(WindowError::TooManyPeers { got: 3, limit: 2, .. })
        ));
        let mut v = report("a", 1, &[]);
        v.votes = vec!["x".into(), "y".into(), "a".into()];
        assert!(matches!(w.add(&v), Err(WindowError::TooManyVotes { .. })));
        assert_eq!(w.add(&report("a", 1, &[("b", 1, 0), ("c", 1, 0)])), Ok(true));
        // Flow limit: 2 + 2 > 3.
        let e = w.add(&report("b", 1, &[("a", 1, 0), ("c", 1, 0)])).unwrap_err();
        assert_eq!(e, WindowError::Full { what: "flows", limit: 3, reporter: "b".into() });
        assert!(e.to_string().contains("flows limit 3"));
        // Host limit: a, b, c known; d and e would be 5 > 4.
        assert!(matches!(
            w.add(&report("d", 1, &[("e", 1, 0)])),
            Err(WindowError::Full { what: "hosts", .. })
        ));
        assert_eq!(w.add(&report("b", 1, &[("a", 1, 0)])), Ok(true));
        // Report limit: 2 counted.
        assert!(matches!(w.add(&report("c", 1, &[])), Err(WindowError::Full { what: "reports", .. })));
        assert_eq!(w.flows().len(), 3);
        assert_eq!(w.reports(), 2);
    }

    fn traced(who: &str, seq: u64, peer: &str, path: &[&str]) -> Report {
        let mut r = report(who, seq, &[(peer, 5, 1)]);
        r.peers[0].path = path.iter().map(|h| h.to_string()).collect();
        r
    }

    #[test]
    fn traced_paths_are_kept_once_each_and_bounded() {
        let limits = WindowLimits { max_paths: 2, ..WindowLimits::default() };
        let mut w = Window::new(limits);
        assert_eq!(w.add(&traced("a", 1, "b", &["t1", "x1", "t2"])), Ok(true));
        assert_eq!(w.add(&traced("c", 1, "b", &["t1", "x1", "t2"])), Ok(true));
        assert_eq!(w.add(&traced("d", 1, "b", &["t1", "*", "t2"])), Ok(true));
        assert_eq!(w.path_count(), 2);
        let ids: Vec<u32> = w.flows().iter().map(|f| f.path).collect();
        assert_eq!(ids, [1, 1, 2]);
        assert_eq!(w.path(1), ["t1", "x1", "t2"]);
        assert_eq!(w.path(0), [] as [String; 0]);
        // A third distinct path is refused whole; an untraced flow still fits.
        let e = w.add(&traced("e", 1, "b", &["t1", "x2", "t2"])).unwrap_err();
        assert_eq!(e, WindowError::Full { what: "paths", limit: 2, reporter: "e".into() });
        assert_eq!(w.add(&report("e", 1, &[("b", 5, 0)])), Ok(true));
        assert_eq!(w.flows().len(), 4);
        // Hostile paths: too long, or a hop that is not a name.
        let long: Vec<&str> = vec!["s"; MAX_PATH_HOPS + 1];
        assert!(matches!(
            w.add(&traced("f", 1, "b", &long)),
            Err(WindowError::PathTooLong { hops: 17, limit: MAX_PATH_HOPS, .. })
        ));
        assert!(matches!(w.add(&traced("f", 1, "b", &["t1", ""])), Err(WindowError::BadName(_))));
        assert!(matches!(w.add(&traced("f", 1, "b", &["t1\n"])), Err(WindowError::BadName(_))));
        assert_eq!(w.flows().len(), 4);
    }

    #[test]
    fn an_earlier_window_absorbed_is_the_same_as_its_reports_added() {
        let r1 = traced("a", 1, "b", &["t1", "x1", "t2"]);
        let mut r2 = report("c", 1, &[("a", 5, 2), ("d", 5, 0)]);
        r2.votes = vec!["a".into(), "c".into()];
        let r3 = traced("b", 2, "a", &["t2", "x2", "t1"]);
        let mut earlier = Window::new(WindowLimits::default());
        earlier.add(&r1).unwrap();
        earlier.add(&r2).unwrap();
        let mut now = Window::new(WindowLimits::default());
        now.add(&r3).unwrap();
        now.absorb(&earlier).unwrap();
        let mut all = Window::new(WindowLimits::default());
        for r in [&r3, &r1, &r2] {
            all.add(r).unwrap();
        }
        let flows = |w: &Window| {
            let mut v: Vec<(String, String, u32, Vec<String>)> = w
                .flows()
                .iter()
                .map(|f| {
                    (w.host_name(f.src).into(), w.host_name(f.dst).into(), f.lost, w.path(f.path).to_vec())
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(flows(&now), flows(&all));
        assert_eq!((now.reports(), now.reporters(), now.path_count()), (3, 3, 2));
        for h in ["a", "b", "c", "d"] {
            assert_eq!(now.host_info(now.host_id(h).unwrap()), all.host_info(all.host_id(h).unwrap()), "{h}");
        }
        // A report in both windows is refused, and so is passing a limit; either changes nothing.
        let e = now.absorb(&earlier).unwrap_err();
        assert!(matches!(e, WindowError::Overlap { .. }), "{e}");
        let mut small = Window::new(WindowLimits { max_flows: 3, ..WindowLimits::default() });
        small.add(&r3).unwrap();
        let e = small.absorb(&earlier).unwrap_err();
        assert_eq!(e, WindowError::Full { what: "flows", limit: 3, reporter: "(earlier window)".into() });
        assert_eq!((small.flows().len(), small.reports(), small.host_names().len()), (1, 1, 2));
    }

    #[test]
    fn votes_are_counted_per_host() {
        let mut w = Window::new(WindowLimits::default());
        let mut r = report("a", 1, &[("b", 10, 5)]);
        r.votes = vec!["b".into(), "a".into()];
        w.add(&r).unwrap();
        let b = w.host_id("b").unwrap();
        let a = w.host_id("a").unwrap();
        assert_eq!(w.host_info(b).votes_from_others, 1);
        assert_eq!(w.host_info(a).self_votes, 1);
        assert_eq!(w.host_info(a).votes_from_others, 0);
        assert_eq!(w.host_info(a).iface, "eth0");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::PeerResult;

    fn arb_report() -> impl Strategy<Value = Report> {
        (0u8..6, 0u64..3, 0u64..3, proptest::collection::vec((0u8..8, 0u32..20, 0u32..20), 0..6)).prop_map(
            |(who, started, seq, peers)| Report {
                reporter: format!("h{who}"),
                started_ms: started,
                window_seq: seq,
                iface: "eth0".into(),
                peers: peers
                    .into_iter()
                    .map(|(p, sent, lost)| PeerResult {
                        host: format!("p{p}"),
                        sent,
                        lost,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    proptest! {
        /// Any sequence of reports, each retried any number of times in any order, counts each identity once;
        /// a refused report changes nothing.
        #[test]
        fn retries_count_once(mut reports in proptest::collection::vec(arb_report(), 0..30), order in proptest::collection::vec(0usize..1000, 0..90)) {
            // One content per identity (a retry is the same report).
            let mut ids = std::collections::HashSet::new();
            reports.retain(|r| ids.insert((r.reporter.clone(), r.started_ms, r.window_seq)));
            let mut once = Window::new(WindowLimits::default());
            let mut accepted = std::collections::HashSet::new();
            for r in &reports {
                if once.add(r) == Ok(true) {
                    accepted.insert((r.reporter.clone(), r.started_ms, r.window_seq));
                }
            }
            let mut retried = Window::new(WindowLimits::default());
            for r in &reports {
                let before = retried.flows().len();
                match retried.add(r) {
                    Ok(true) => {}
                    Ok(false) | Err(_) => prop_assert_eq!(retried.flows().len(), before),
                }
                for &i in &order {
                    if !reports.is_empty() {
                        let again = &reports[i % reports.len()];
                        let before = retried.flows().len();
                        if retried.add(again) != Ok(true) {
                            prop_assert_eq!(retried.flows().len(), before);
                        }
                    }
                }
            }
            prop_assert_eq!(once.reports(), accepted.len());
            // Retries in any order end in the same window as adding each report once.
            prop_assert_eq!(retried.reports(), once.reports());
            prop_assert_eq!(retried.flows().len(), once.flows().len());
            let lost = |w: &Window| w.flows().iter().map(|f| u64::from(f.lost)).sum::<u64>();
            prop_assert_eq!(lost(&retried), lost(&once));
        }
    }
}
