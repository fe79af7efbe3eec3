//! `huatuo bench netvote`: the accuracy of network fault localisation (issue 16), measured on a seeded
//! simulation of a 3-tier Clos (10,000 hosts, 250 ToRs, 16 aggregation switches in 4 pods, 4 spines by
//! default). Per window every host probes `--peers` random peers (a fresh sample every window, so the sample
//! rotates) with `--probes` probes each; each probe takes a uniformly random equal-cost route and is lost with
//! the loss of the links and switches on it (0.01% background on every link, plus the injected faults). A few
//! busy hosts answer slowly (RTT outliers, no loss). Each host's votes come from the real rule
//! (`netvote::votes`), its report goes through `Window::add` and the windows through `localise_windows`,
//! exactly as the leader runs them. Evidence accumulates while a fault lasts: fault window k is judged with
//! fault windows 1..k (the leader keeps the last windows and judges them together in place).
//!
//! Per seed: `--windows` healthy windows judged together (false suspects), then 1-3 simultaneous faults
//! (host NIC, ToR uplink, whole ToR, spine link; 0.5-10% loss) for `--windows` windows. Prints top-1 / top-3 accuracy per fault type,
//! false suspects, hosts wrongly moved to ERROR, windows to localise and the leader's CPU per window.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use netvote::{
    ClosSpec, Decision, LocalRules, Params, PeerResult, Report, Target, Topology, Window, WindowLimits,
    localise_windows, votes,
};

use crate::bench_common::{Rng, now_ms, pct, sorted};

#[derive(Args, Debug)]
pub struct BenchNetvoteArgs {
    /// First seed (default: from the clock; printed so a run replays).
    #[arg(long)]
    seed: Option<u64>,
    /// Seeds (scenarios) to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// Hosts of the simulated fabric.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Top-of-rack switches (one rack each).
    #[arg(long, default_value_t = 250)]
    tors: usize,
    /// Aggregation switches.
    #[arg(long, default_value_t = 16)]
    aggs: usize,
    /// Spine switches.
    #[arg(long, default_value_t = 4)]
    spines: usize,
    /// Pods the racks and aggregation switches are split into.
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Peers each host probes per window.
    #[arg(long, default_value_t = 32)]
    peers: usize,
    /// Of the peers, this many are ToR-mates (Pingmesh-style; 0: all peers uniformly random). Only flows
    /// between ToR-mates tell a whole-ToR fault from its uplinks, and a NIC from its ToR, at low loss.
    #[arg(long, default_value_t = 0)]
    tor_mates: usize,
    /// Probes per peer per window (the agent's `probes_per_peer`).
    #[arg(long, default_value_t = 5)]
    probes: u32,
    /// Fault windows per seed (evidence accumulates over them).
    #[arg(long, default_value_t = 3)]
    windows: usize,
    /// Lossy flows each host traces per window (the agent's tracer: path evidence, 007-style). With
    /// tracing, ECMP is per flow as for the agent's TCP probes: a connection's probes take one route, a lost
    /// probe makes the agent reconnect (a new source port, a new route) and the route of the first lossy
    /// connection is traced; each traced hop answers only if its TTL-limited SYN and the ICMP reply both
    /// survive. 0: no tracing, and each probe takes its own random route (the model without path evidence).
    #[arg(long, default_value_t = DEFAULT_TRACES)]
    trace: usize,
    /// Threads running seeds side by side (default: the machine's cores). Each seed is independent and
    /// seeded on its own, so the figures do not depend on it; the leader CPU figures are per thread.
    #[arg(long)]
    threads: Option<usize>,
    /// Print every miss (fault not in the top 3) and every false suspect.
    #[arg(long)]
    verbose: bool,
}

/// The agent's traces per window (`agent::netprobe::trace`'s `MAX_TRACES_PER_WINDOW`).
const DEFAULT_TRACES: usize = 8;
/// Most threads (a typo would otherwise start thousands).
const MAX_THREADS: usize = 64;

/// Background loss of every link (issue 16: 0.01%).
const BACKGROUND: f64 = 1e-4;
/// Share of hosts busy in a window (slow answers, no loss).
const BUSY_SHARE: f64 = 0.005;
/// Fault loss range.
const LOSS_MIN: f64 = 0.005;
const LOSS_MAX: f64 = 0.10;
/// Most seeds one run takes (a typo such as --seeds 10000000 would otherwise run for days).
const MAX_SEEDS: u64 = 100_000;
/// Most fault windows per seed.
const MAX_WINDOWS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Nic,
    TorUplink,
    Tor,
    SpineLink,
}

const KINDS: [Kind; 4] = [Kind::Nic, Kind::TorUplink, Kind::Tor, Kind::SpineLink];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Nic => "host NIC",
            Kind::TorUplink => "ToR uplink",
            Kind::Tor => "whole ToR",
            Kind::SpineLink => "spine link",
        }
    }
}

/// The simulated fabric, by index (independent of netvote's route code: this is the "real" network).
struct Net {
    topo: Topology,
    host_names: Vec<String>,
    host_tor: Vec<usize>,
    tor_hosts: Vec<Vec<usize>>,
    tor_names: Vec<String>,
    tor_up: Vec<Vec<usize>>,
    agg_names: Vec<String>,
    agg_pod: Vec<usize>,
    agg_up: Vec<Vec<usize>>,
    spine_names: Vec<String>,
}

impl Net {
    fn new(spec: &ClosSpec) -> anyhow::Result<Net> {
        let topo = Topology::clos(spec).context("topology")?;
        let mut tor_names = Vec::new();
        let mut agg_names = Vec::new();
        let mut spine_names = Vec::new();
        for s in topo.switches() {
            match topo.tier_of(s) {
                Some(netvote::Tier::Tor) => tor_names.push(s.clone()),
                Some(netvote::Tier::Agg) => agg_names.push(s.clone()),
                _ => spine_names.push(s.clone()),
            }
        }
        let idx = |v: &[String]| v.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect::<HashMap<_, _>>();
        let (ti, ai, si) = (idx(&tor_names), idx(&agg_names), idx(&spine_names));
        let host_names = topo.hosts().to_vec();
        let host_tor: Vec<usize> = host_names.iter().map(|h| topo.tor_of(h).map_or(0, |t| ti[t])).collect();
        let mut tor_hosts = vec![Vec::new(); tor_names.len()];
        for (h, &t) in host_tor.iter().enumerate() {
            tor_hosts[t].push(h);
        }
        let tor_up: Vec<Vec<usize>> =
            tor_names.iter().map(|t| topo.uplinks(t).iter().map(|a| ai[*a]).collect()).collect();
        let agg_up = agg_names.iter().map(|a| topo.uplinks(a).iter().map(|s| si[*s]).collect()).collect();
        let mut agg_pod = vec![0; agg_names.len()];
        for (t, ups) in tor_up.iter().enumerate() {
            for &a in ups {
                agg_pod[a] = t * spec.pods / spec.tors;
            }
        }
        Ok(Net {
            topo,
            host_names,
            host_tor,
            tor_hosts,
            tor_names,
            tor_up,
            agg_names,
            agg_pod,
            agg_up,
            spine_names,
        })
    }
}

#[derive(Debug, Clone)]
struct Fault {
    kind: Kind,
    /// Host, ToR, (ToR, agg) or (agg, spine) indexes.
    a: usize,
    b: usize,
    loss: f64,
}

impl Fault {
    fn target(&self, n: &Net) -> Target {
        match self.kind {
            Kind::Nic => Target::Host { host: n.host_names[self.a].clone(), iface: "eth0".into() },
            Kind::Tor => Target::Switch(n.tor_names[self.a].clone()),
            Kind::TorUplink => Target::link(&n.tor_names[self.a], &n.agg_names[self.b]),
            Kind::SpineLink => Target::link(&n.agg_names[self.a], &n.spine_names[self.b]),
        }
    }

    /// Whether `t` names this fault.
    fn is(&self, n: &Net, t: &Target) -> bool {
        match (self.kind, t) {
            (Kind::Nic, Target::Host { host, .. }) => *host == n.host_names[self.a],
            _ => *t == self.target(n),
        }
    }

    /// Whether `t` names an element ECMP makes indistinguishable from this fault: another uplink of the same
    /// ToR, or another spine link of the same pod.
    fn in_group(&self, n: &Net, t: &Target) -> bool {
        let Target::Link { a, b } = t else { return self.is(n, t) };
        match self.kind {
            Kind::TorUplink => {
                let tor = &n.tor_names[self.a];
                (a == tor || b == tor)
                    && n.tor_up[self.a].iter().any(|&g| n.agg_names[g] == *a || n.agg_names[g] == *b)
            }
            Kind::SpineLink => {
                let pod = n.agg_pod[self.a];
                let in_pod =
                    |x: &str| n.agg_names.iter().position(|g| g == x).is_some_and(|g| n.agg_pod[g] == pod);
                let spine = |x: &str| n.spine_names.iter().any(|s| s == x);
                (in_pod(a) && spine(b)) || (in_pod(b) && spine(a))
            }
            _ => self.is(n, t),
        }
    }
}

/// Loss of each element in one state of the fabric.
#[derive(Default)]
struct Loss {
    nic: HashMap<usize, f64>,
    tor: HashMap<usize, f64>,
    tor_agg: HashMap<(usize, usize), f64>,
    agg_spine: HashMap<(usize, usize), f64>,
    /// Mean survival of the switch part of a probe's route, per ToR pair (tors x tors; NaN: not computed).
    cache: Vec<f64>,
    tors: usize,
}

impl Loss {
    fn new(n: &Net, faults: &[Fault]) -> Loss {
        let tors = n.tor_names.len();
        let mut l = Loss { cache: vec![f64::NAN; tors * tors], tors, ..Loss::default() };
        for f in faults {
            match f.kind {
                Kind::Nic => l.nic.insert(f.a, f.loss),
                Kind::Tor => l.tor.insert(f.a, f.loss),
                Kind::TorUplink => l.tor_agg.insert((f.a, f.b), f.loss),
                Kind::SpineLink => l.agg_spine.insert((f.a, f.b), f.loss),
            };
        }
        l
    }

    /// Survival of the ToR-to-ToR part, averaged over the equal-cost routes (each probe picks one uniformly).
    fn interior(&mut self, n: &Net, ta: usize, tb: usize) -> f64 {
        let slot = ta * self.tors + tb;
        if !self.cache[slot].is_nan() {
            return self.cache[slot];
        }
        let ok = 1.0 - BACKGROUND;
        let sw = |t: usize| 1.0 - self.tor.get(&t).copied().unwrap_or(0.0);
        let ta_ok = |a: usize| ok * (1.0 - self.tor_agg.get(&(ta, a)).copied().unwrap_or(0.0));
        let tb_ok = |a: usize| ok * (1.0 - self.tor_agg.get(&(tb, a)).copied().unwrap_or(0.0));
        let up_ok = |a: usize, s: usize| ok * (1.0 - self.agg_spine.get(&(a, s)).copied().unwrap_or(0.0));
        let s = if ta == tb {
            sw(ta)
        } else {
            let shared: Vec<usize> =
                n.tor_up[ta].iter().copied().filter(|a| n.tor_up[tb].contains(a)).collect();
            let (mut sum, mut count) = (0.0, 0usize);
            if !shared.is_empty() {
                for &a in &shared {
                    sum += ta_ok(a) * tb_ok(a);
                    count += 1;
                }
            } else {
                for &x in &n.tor_up[ta] {
                    for &y in &n.tor_up[tb] {
                        for &s in &n.agg_up[x] {
                            if n.agg_up[y].contains(&s) {
                                sum += ta_ok(x) * up_ok(x, s) * up_ok(y, s) * tb_ok(y);
                                count += 1;
                            }
                        }
                    }
                }
            }
            if count == 0 { 0.0 } else { sw(ta) * sw(tb) * sum / count as f64 }
        };
        self.cache[slot] = s;
        s
    }

    fn probe_loss(&mut self, n: &Net, a: usize, b: usize) -> f64 {
        let nic = |h: usize| (1.0 - BACKGROUND) * (1.0 - self.nic.get(&h).copied().unwrap_or(0.0));
        let ends = nic(a) * nic(b);
        1.0 - ends * self.interior(n, n.host_tor[a], n.host_tor[b])
    }
}

/// One switch route between two ToRs, by index: `[ta]`, `[ta, x, tb]` or `[ta, x, s, y, tb]` (x, y
/// aggregation switches, s a spine).
#[derive(Debug, Clone, Copy, PartialEq)]
enum SimRoute {
    Same,
    Agg(usize),
    Spine(usize, usize, usize),
}

impl Loss {
    /// A uniformly random equal-cost route from ToR `ta` to ToR `tb` (what an ECMP hash of a new 5-tuple
    /// picks), or None when there is none.
    fn pick_route(n: &Net, rng: &mut Rng, ta: usize, tb: usize) -> Option<SimRoute> {
        if ta == tb {
            return Some(SimRoute::Same);
        }
        let shared: Vec<usize> = n.tor_up[ta].iter().copied().filter(|a| n.tor_up[tb].contains(a)).collect();
        if !shared.is_empty() {
            return Some(SimRoute::Agg(shared[rng.below(shared.len() as u64) as usize]));
        }
        let (ua, ub) = (&n.tor_up[ta], &n.tor_up[tb]);
        if ua.is_empty() || ub.is_empty() {
            return None;
        }
        // Bounded: in the generated Clos every aggregation switch reaches every spine, so the first try works.
        for _ in 0..64 {
            let x = ua[rng.below(ua.len() as u64) as usize];
            let y = ub[rng.below(ub.len() as u64) as usize];
            let common: Vec<usize> =
                n.agg_up[x].iter().copied().filter(|s| n.agg_up[y].contains(s)).collect();
            if !common.is_empty() {
                return Some(SimRoute::Spine(x, common[rng.below(common.len() as u64) as usize], y));
            }
        }
        None
    }

    /// Survival of each step of a route from host `a` to host `b`, in order: `a`'s NIC, then per switch the
    /// link into it and the switch itself, then the last link and `b`'s NIC. A probe survives the product.
    fn steps(&self, n: &Net, a: usize, b: usize, r: SimRoute) -> Vec<f64> {
        let ok = 1.0 - BACKGROUND;
        let nic = |h: usize| ok * (1.0 - self.nic.get(&h).copied().unwrap_or(0.0));
        let sw = |t: usize| 1.0 - self.tor.get(&t).copied().unwrap_or(0.0);
        let up = |t: usize, g: usize| ok * (1.0 - self.tor_agg.get(&(t, g)).copied().unwrap_or(0.0));
        let sp = |g: usize, s: usize| ok * (1.0 - self.agg_spine.get(&(g, s)).copied().unwrap_or(0.0));
        let (ta, tb) = (n.host_tor[a], n.host_tor[b]);
        let mut v = vec![nic(a), sw(ta)];
        match r {
            SimRoute::Same => {}
            SimRoute::Agg(x) => v.extend([up(ta, x), up(tb, x), sw(tb)]),
            SimRoute::Spine(x, s, y) => v.extend([up(ta, x), sp(x, s), sp(y, s), up(tb, y), sw(tb)]),
        }
        v.push(nic(b));
        v
    }
}

impl SimRoute {
    /// The switch names of the route from ToR `ta` to ToR `tb`, as a tracer reports them.
    fn names(self, n: &Net, ta: usize, tb: usize) -> Vec<String> {
        match self {
            SimRoute::Same => vec![n.tor_names[ta].clone()],
            SimRoute::Agg(x) => {
                vec![n.tor_names[ta].clone(), n.agg_names[x].clone(), n.tor_names[tb].clone()]
            }
            SimRoute::Spine(x, s, y) => vec![
                n.tor_names[ta].clone(),
                n.agg_names[x].clone(),
                n.spine_names[s].clone(),
                n.agg_names[y].clone(),
                n.tor_names[tb].clone(),
            ],
        }
    }
}

/// Index in [`Loss::steps`] of the step that reaches switch `i` of the route (the ToR is step 1; then each
/// further switch is two steps on: its link and itself, except that aggregation and spine switches carry
/// no loss of their own in this simulation and share a step with their link).
fn step_of_switch(r: SimRoute, i: usize) -> usize {
    match (r, i) {
        (_, 0) => 1,
        (SimRoute::Agg(_), 1) => 2,
        (SimRoute::Agg(_), _) => 4,
        (SimRoute::Spine(..), k) if k < 4 => 1 + k,
        (SimRoute::Spine(..), _) => 6,
        (SimRoute::Same, _) => 1,
    }
}

/// One flow with per-flow ECMP: (lost probes, traced path or empty). The probes run on one connection;
/// a lost probe ends it and the next probe connects again (a fresh route). `trace`: whether this host still
/// has a trace left this window; the traced connection is the first lossy one.
fn flow_traced(
    n: &Net,
    loss: &Loss,
    rng: &mut Rng,
    me: usize,
    p: usize,
    probes: u32,
    trace: bool,
) -> (u32, Vec<String>) {
    let (ta, tb) = (n.host_tor[me], n.host_tor[p]);
    let Some(mut route) = Loss::pick_route(n, rng, ta, tb) else { return (probes, Vec::new()) };
    let mut steps = loss.steps(n, me, p, route);
    let mut lost = 0;
    let mut first_lossy: Option<(SimRoute, Vec<f64>)> = None;
    for _ in 0..probes {
        let ok: f64 = steps.iter().product();
        // A probe crosses the route once, as in the model without tracing (comparable figures).
        if unit(rng) > ok {
            lost += 1;
            if first_lossy.is_none() {
                first_lossy = Some((route, steps.clone()));
            }
            if let Some(r) = Loss::pick_route(n, rng, ta, tb) {
                route = r;
                steps = loss.steps(n, me, p, route);
            }
        }
    }
    let path = match first_lossy {
        Some((r, st)) if trace => {
            let mut names = r.names(n, ta, tb);
            for (i, name) in names.iter_mut().enumerate() {
                // The TTL-limited SYN must reach the switch and its ICMP answer come back.
                let prefix: f64 = st[..=step_of_switch(r, i)].iter().product();
                if unit(rng) > prefix {
                    *name = netvote::UNKNOWN_HOP.to_string();
                }
            }
            names
        }
        _ => Vec::new(),
    };
    (lost, path)
}

/// Binomial(n, p) by inversion (p is small: a handful of steps).
fn binomial(rng: &mut Rng, n: u32, p: f64) -> u32 {
    let mut lost = 0;
    for _ in 0..n {
        if unit(rng) < p {
            lost += 1;
        }
    }
    lost
}

fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// One window's reports.
fn reports(n: &Net, loss: &mut Loss, rng: &mut Rng, a: &BenchNetvoteArgs, window_seq: u64) -> Vec<Report> {
    let hosts = n.host_names.len();
    let busy: Vec<bool> = (0..hosts).map(|_| unit(rng) < BUSY_SHARE).collect();
    let rules = LocalRules::default();
    let mut out = Vec::with_capacity(hosts);
    let peers = a.peers.min(hosts - 1);
    for me in 0..hosts {
        let mut chosen: Vec<usize> = Vec::with_capacity(peers);
        let mates = &n.tor_hosts[n.host_tor[me]];
        let want_mates = a.tor_mates.min(mates.len() - 1).min(peers);
        while chosen.len() < want_mates {
            let p = mates[rng.below(mates.len() as u64) as usize];
            if p != me && !chosen.contains(&p) {
                chosen.push(p);
            }
        }
        while chosen.len() < peers {
            let p = rng.below(hosts as u64) as usize;
            if p != me && !chosen.contains(&p) {
                chosen.push(p);
            }
        }
        let mut traces_left = a.trace;
        let results: Vec<PeerResult> = chosen
            .iter()
            .map(|&p| {
                let (lost, path) = if a.trace == 0 {
                    (binomial(rng, a.probes, loss.probe_loss(n, me, p)), Vec::new())
                } else {
                    flow_traced(n, loss, rng, me, p, a.probes, traces_left > 0)
                };
                if !path.is_empty() {
                    traces_left -= 1;
                }
                let mut p50 = 80 + (rng.below(40) as u32);
                if busy[p] || busy[me] {
                    p50 = 5_000 + rng.below(15_000) as u32;
                }
                PeerResult {
                    host: n.host_names[p].clone(),
                    sent: a.probes,
                    lost,
                    connect_failures: 0,
                    rtt_p50_us: if lost == a.probes { 0 } else { p50 },
                    rtt_p99_us: if lost == a.probes { 0 } else { p50 * 3 },
                    path,
                }
            })
            .collect();
        let v = votes(&results, &n.host_names[me], &rules);
        out.push(Report {
            reporter: n.host_names[me].clone(),
            started_ms: 1,
            window_seq,
            iface: "eth0".into(),
            peers: results,
            votes: v,
            tcp_retrans_segs: 0,
            tcp_out_segs: 0,
        });
    }
    out
}

fn pick_faults(n: &Net, rng: &mut Rng) -> Vec<Fault> {
    // Half the seeds get a single fault (the floors are about single faults), the rest 2 or 3.
    let count = match rng.below(4) {
        0 | 1 => 1,
        2 => 2,
        _ => 3,
    };
    let mut out: Vec<Fault> = Vec::new();
    while out.len() < count {
        let kind = KINDS[rng.below(4) as usize];
        let loss = LOSS_MIN + unit(rng) * (LOSS_MAX - LOSS_MIN);
        let (a, b) = match kind {
            Kind::Nic => (rng.below(n.host_names.len() as u64) as usize, 0),
            Kind::Tor => (rng.below(n.tor_names.len() as u64) as usize, 0),
            Kind::TorUplink => {
                let t = rng.below(n.tor_names.len() as u64) as usize;
                let ups = &n.tor_up[t];
                if ups.is_empty() {
                    continue;
                }
                (t, ups[rng.below(ups.len() as u64) as usize])
            }
            Kind::SpineLink => {
                if n.agg_names.is_empty() {
                    continue;
                }
                let g = rng.below(n.agg_names.len() as u64) as usize;
                let ups = &n.agg_up[g];
                if ups.is_empty() {
                    continue;
                }
                (g, ups[rng.below(ups.len() as u64) as usize])
            }
        };
        let f = Fault { kind, a, b, loss };
        // Distinct, and never two faults on one ToR (a NIC under a faulty ToR is not separately observable).
        let tor_of = |f: &Fault| match f.kind {
            Kind::Nic => Some(n.host_tor[f.a]),
            Kind::Tor | Kind::TorUplink => Some(f.a),
            Kind::SpineLink => None,
        };
        if out.iter().any(|o| o.target(n) == f.target(n) || (tor_of(o).is_some() && tor_of(o) == tor_of(&f)))
        {
            continue;
        }
        out.push(f);
    }
    out
}

#[derive(Default)]
struct Tally {
    n: u64,
    top1: u64,
    top3: u64,
    group1: u64,
    windows_to_top1: Vec<f64>,
}

impl Tally {
    fn line(&self, label: &str) -> String {
        let p = |x: u64| if self.n == 0 { f64::NAN } else { 100.0 * x as f64 / self.n as f64 };
        let w = sorted(self.windows_to_top1.clone());
        format!(
            "{label:<34} n={:<5} top-1 {:>5.1}%  top-3 {:>5.1}%  top-1 ECMP group {:>5.1}%  windows to top-1 p50 {} max {}",
            self.n,
            p(self.top1),
            p(self.top3),
            p(self.group1),
            pct(&w, 0.5),
            pct(&w, 1.0)
        )
    }
}

fn thread_cpu_secs() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// CPU seconds of one leader pass: adding the reports, localising.
#[derive(Debug, Clone, Copy, Default)]
struct LeaderCpu {
    add: f64,
    localise: f64,
}

/// One window as the leader fills it (Window::add of every report), and that CPU time.
fn fill(reports: &[Report]) -> anyhow::Result<(Window, f64)> {
    let t0 = thread_cpu_secs();
    let mut w = Window::new(WindowLimits::default());
    for r in reports {
        w.add(r).with_context(|| format!("report from {}", r.reporter))?;
    }
    Ok((w, thread_cpu_secs() - t0))
}

/// What the leader spends on one window: filling it, then judging it with the earlier windows (oldest
/// first in `windows`, the last one the closing window) as `[net] accumulate_windows` does, in place.
/// Timed on this thread's CPU clock.
fn leader(n: &Net, windows: &[Window], add: f64, p: &Params) -> (netvote::Verdict, LeaderCpu) {
    let t1 = thread_cpu_secs();
    let judged: Vec<&Window> = windows.iter().rev().collect();
    let k = netvote::fitting(&judged);
    let v = localise_windows(Some(&n.topo), &judged[..k], p);
    (v, LeaderCpu { add, localise: thread_cpu_secs() - t1 })
}

/// One fault of a seed and how the localiser did on it.
struct FaultOut {
    kind: Kind,
    loss: f64,
    /// Among the first len(faults) picks of the final window (single fault: the top suspect).
    top: bool,
    /// Within the first 3 x len(faults) suspects of the final window.
    top3: bool,
    /// The final window's first len(faults) picks include its ECMP group.
    group_top: bool,
    /// The first fault window it was a top pick.
    first_top: Option<usize>,
}

/// What one seed measured.
struct SeedOut {
    lines: Vec<String>,
    cpu_one: LeaderCpu,
    cpu_acc: Vec<f64>,
    flows_per_window: u32,
    healthy_suspects: u64,
    /// The healthy judgement's strongest element under the thresholds: (log-likelihood, whether a NIC).
    healthy_nearest: Option<(f64, bool)>,
    fault_windows: u64,
    false_picks: u64,
    wrong_host_errors: u64,
    host_errors_right: u64,
    /// Over the fault windows' verdicts: flows placed on their traced path, paths ignored, bad flows.
    traced_flows: u64,
    untrusted_paths: u64,
    bad_flows: u64,
    faults: Vec<FaultOut>,
}

/// One seed: `--windows` healthy windows judged together, then its faults for `--windows` windows with the
/// reports accumulating.
fn run_seed(net: &Net, a: &BenchNetvoteArgs, params: &Params, seed: u64) -> anyhow::Result<SeedOut> {
    let mut rng = Rng(seed);
    let mut lines = Vec::new();
    // Healthy windows, judged together as the leader does (`[net] accumulate_windows`); the CPU of one
    // window alone is measured on the first.
    let mut healthy = Loss::new(net, &[]);
    let mut calm: Vec<Window> = Vec::new();
    let mut first_add = 0.0;
    for k in 0..a.windows {
        let (w, add) = fill(&reports(net, &mut healthy, &mut rng, a, 100 + k as u64))?;
        if k == 0 {
            first_add = add;
        }
        calm.push(w);
    }
    let (one, cpu_one) = leader(net, &calm[..1], first_add, params);
    let (v, _) = leader(net, &calm, first_add, params);
    let healthy_suspects = v.suspects.iter().filter(|x| x.decision != Decision::Rank).count() as u64;
    if a.verbose && healthy_suspects > 0 {
        lines.push(format!(
            "seed {seed}: healthy window suspects {:?}",
            v.suspects.iter().map(|x| x.target.object_id()).collect::<Vec<_>>()
        ));
    }
    let mut out = SeedOut {
        lines: Vec::new(),
        cpu_one,
        cpu_acc: Vec::new(),
        flows_per_window: one.flows,
        healthy_suspects,
        healthy_nearest: v.nearest.as_ref().map(|x| (x.llr, matches!(x.target, Target::Host { .. }))),
        fault_windows: 0,
        false_picks: 0,
        wrong_host_errors: 0,
        host_errors_right: 0,
        traced_flows: 0,
        untrusted_paths: 0,
        bad_flows: 0,
        faults: Vec::new(),
    };
    // Fault windows.
    let faults = pick_faults(net, &mut rng);
    let mut loss = Loss::new(net, &faults);
    let mut history: Vec<Window> = Vec::new();
    let nf = faults.len();
    let mut final_rank: Vec<Option<usize>> = vec![None; nf];
    let mut final_top: Vec<bool> = vec![false; nf];
    let mut first_top: Vec<Option<usize>> = vec![None; nf];
    let mut group_top: Vec<bool> = vec![false; nf];
    for k in 1..=a.windows {
        let (w, add) = fill(&reports(net, &mut loss, &mut rng, a, k as u64))?;
        history.push(w);
        let (v, cpu) = leader(net, &history, add, params);
        out.cpu_acc.push((cpu.add + cpu.localise) * 1e3);
        out.fault_windows += 1;
        out.traced_flows += u64::from(v.traced_flows);
        out.untrusted_paths += u64::from(v.untrusted_paths);
        out.bad_flows += u64::from(v.bad_flows);
        let picks: Vec<&netvote::Suspect> =
            v.suspects.iter().filter(|x| x.decision != Decision::Rank).collect();
        for x in &picks {
            if !faults.iter().any(|f| f.in_group(net, &x.target)) {
                out.false_picks += 1;
                if a.verbose {
                    lines.push(format!(
                        "seed {seed} window {k}: false suspect {} ({})",
                        x.target.object_id(),
                        x.why
                    ));
                }
            }
            if let (Target::Host { host, .. }, Decision::Error) = (&x.target, x.decision) {
                if faults.iter().any(|f| f.kind == Kind::Nic && net.host_names[f.a] == *host) {
                    out.host_errors_right += 1;
                } else {
                    out.wrong_host_errors += 1;
                    lines.push(format!(
                        "seed {seed} window {k}: host {host} to ERROR without a NIC fault ({})",
                        x.why
                    ));
                }
            }
        }
        for (i, f) in faults.iter().enumerate() {
            let top = picks.iter().take(nf).any(|x| f.is(net, &x.target));
            if top && first_top[i].is_none() {
                first_top[i] = Some(k);
            }
            if k == a.windows {
                final_rank[i] = v.suspects.iter().position(|x| f.is(net, &x.target));
                final_top[i] = top;
                group_top[i] = picks.iter().take(nf).any(|x| f.in_group(net, &x.target));
            }
        }
    }
    for (i, f) in faults.iter().enumerate() {
        let top3 = final_rank[i].is_some_and(|r| r < 3 * nf);
        if a.verbose && !top3 {
            lines.push(format!(
                "seed {seed}: missed {} {} at {:.2}% loss ({} faults), final rank {:?}",
                f.kind.name(),
                f.target(net).object_id(),
                f.loss * 100.0,
                nf,
                final_rank[i]
            ));
        }
        out.faults.push(FaultOut {
            kind: f.kind,
            loss: f.loss,
            top: final_top[i],
            top3,
            group_top: group_top[i],
            first_top: first_top[i],
        });
    }
    out.lines = lines;
    Ok(out)
}

pub fn run(a: BenchNetvoteArgs) -> anyhow::Result<ExitCode> {
    if a.seeds == 0 || a.seeds > MAX_SEEDS {
        bail!("--seeds must be within 1..={MAX_SEEDS}");
    }
    if a.windows == 0 || a.windows > MAX_WINDOWS {
        bail!("--windows must be within 1..={MAX_WINDOWS}");
    }
    if a.probes == 0 || a.peers == 0 || a.hosts < 2 {
        bail!("--probes and --peers must be at least 1, --hosts at least 2");
    }
    let spec = ClosSpec { hosts: a.hosts, tors: a.tors, aggs: a.aggs, spines: a.spines, pods: a.pods };
    let net = Net::new(&spec)?;
    let first = a.seed.unwrap_or_else(now_ms);
    println!(
        "seed {first} (replay with --seed {first}); {} seeds; Clos of {} hosts, {} ToRs, {} aggregation switches in {} pods, \
         {} spines; {} peers ({} of them ToR-mates) x {} probes per host per window; background {}% per link, {}% busy hosts; {} healthy windows judged together + {} fault windows per seed; {}; {} threads",
        a.seeds,
        a.hosts,
        a.tors,
        a.aggs,
        a.pods,
        a.spines,
        a.peers,
        a.tor_mates,
        a.probes,
        BACKGROUND * 100.0,
        BUSY_SHARE * 100.0,
        a.windows,
        a.windows,
        if a.trace == 0 {
            "no path tracing (ECMP per probe)".to_string()
        } else {
            format!("ECMP per flow, up to {} lossy flows traced per host per window", a.trace)
        },
        a.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .min(a.seeds as usize)
    );
    let params = Params::default();
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 || threads > MAX_THREADS {
        bail!("--threads must be within 1..={MAX_THREADS}");
    }
    let threads = threads.min(a.seeds as usize);
    // Seeds are dealt to the threads round-robin; results are put back in seed order so the output (and
    // the verbose lines) are the same whatever the thread count.
    let done = std::sync::atomic::AtomicU64::new(0);
    let outs: Vec<anyhow::Result<Vec<(u64, SeedOut)>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|tid| {
                let (net, a, params, done) = (&net, &a, &params, &done);
                sc.spawn(move || -> anyhow::Result<Vec<(u64, SeedOut)>> {
                    let mut mine = Vec::new();
                    for s in (tid as u64..a.seeds).step_by(threads) {
                        mine.push((s, run_seed(net, a, params, first.wrapping_add(s))?));
                        let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if d % (a.seeds / 10).max(1) == 0 && d < a.seeds {
                            eprintln!("{d}/{} seeds done", a.seeds);
                        }
                    }
                    Ok(mine)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked"))))
            .collect()
    });
    let mut per_seed: Vec<(u64, SeedOut)> = Vec::with_capacity(a.seeds as usize);
    for o in outs {
        per_seed.extend(o?);
    }
    per_seed.sort_by_key(|x| x.0);

    let mut single_ge1: HashMap<Kind, Tally> = HashMap::new();
    let mut single_all: HashMap<Kind, Tally> = HashMap::new();
    let mut multi: HashMap<Kind, Tally> = HashMap::new();
    let (mut healthy_windows, mut healthy_suspects) = (0u64, 0u64);
    let (mut fault_windows, mut false_picks) = (0u64, 0u64);
    let (mut wrong_host_errors, mut host_errors_right) = (0u64, 0u64);
    let (mut traced_flows, mut untrusted_paths, mut bad_flows) = (0u64, 0u64, 0u64);
    // Leader CPU (ms): one window's reports (the healthy window), and the accumulated fault windows.
    let mut cpu_one: Vec<LeaderCpu> = Vec::new();
    let mut cpu_acc: Vec<f64> = Vec::new();
    let mut flows_per_window = 0u32;
    let mut nearest: Vec<f64> = Vec::new();
    let mut nearest_nics = 0usize;
    for (_, o) in per_seed {
        if let Some((llr, nic)) = o.healthy_nearest {
            nearest.push(llr);
            nearest_nics += usize::from(nic);
        }
        for line in &o.lines {
            println!("{line}");
        }
        cpu_one.push(o.cpu_one);
        cpu_acc.extend(o.cpu_acc);
        flows_per_window = o.flows_per_window;
        healthy_windows += 1;
        healthy_suspects += o.healthy_suspects;
        fault_windows += o.fault_windows;
        false_picks += o.false_picks;
        wrong_host_errors += o.wrong_host_errors;
        host_errors_right += o.host_errors_right;
        traced_flows += o.traced_flows;
        untrusted_paths += o.untrusted_paths;
        bad_flows += o.bad_flows;
        let nf = o.faults.len();
        for f in &o.faults {
            let mut tallies: Vec<&mut Tally> = Vec::new();
            let (s_ge1, s_all, m) = (&mut single_ge1, &mut single_all, &mut multi);
            if nf == 1 {
                tallies.push(s_all.entry(f.kind).or_default());
                if f.loss >= 0.01 {
                    tallies.push(s_ge1.entry(f.kind).or_default());
                }
            } else {
                tallies.push(m.entry(f.kind).or_default());
            }
            for t in tallies {
                t.n += 1;
                t.top1 += u64::from(f.top);
                t.top3 += u64::from(f.top3);
                t.group1 += u64::from(f.group_top);
                if let Some(k) = f.first_top {
                    t.windows_to_top1.push(k as f64);
                }
            }
        }
    }
    println!("accuracy after {} fault windows (evidence accumulated), per fault type:", a.windows);
    let sum = |m: &HashMap<Kind, Tally>| {
        let mut t = Tally::default();
        for x in m.values() {
            t.n += x.n;
            t.top1 += x.top1;
            t.top3 += x.top3;
            t.group1 += x.group1;
            t.windows_to_top1.extend(x.windows_to_top1.iter().copied());
        }
        t
    };
    for k in KINDS {
        if let Some(t) = single_ge1.get(&k) {
            println!("  {}", t.line(&format!("single {} >= 1% loss", k.name())));
        }
    }
    println!("  {}", sum(&single_ge1).line("single, all types, >= 1% loss"));
    for k in KINDS {
        if let Some(t) = single_all.get(&k) {
            println!("  {}", t.line(&format!("single {} 0.5-10% loss", k.name())));
        }
    }
    for k in KINDS {
        if let Some(t) = multi.get(&k) {
            println!("  {}", t.line(&format!("2-3 faults: {}", k.name())));
        }
    }
    let one = sorted(cpu_one.iter().map(|c| (c.add + c.localise) * 1e3).collect());
    let one_add = sorted(cpu_one.iter().map(|c| c.add * 1e3).collect());
    let one_loc = sorted(cpu_one.iter().map(|c| c.localise * 1e3).collect());
    let acc = sorted(cpu_acc);
    println!(
        "false suspects: {healthy_suspects} in {healthy_windows} healthy judgements ({:.3} per judgement, each over {} windows); {false_picks} picks outside any fault's ECMP group in {fault_windows} fault windows",
        healthy_suspects as f64 / healthy_windows.max(1) as f64,
        a.windows
    );
    let nearest_n = nearest.len();
    let nearest = sorted(nearest);
    println!(
        "strongest element under the thresholds per healthy judgement: log-likelihood p50 {:.1}, p99 {:.1}, max {:.1} \
         ({nearest_n} judgements, a NIC in {nearest_nics}); a suspect needs {:.0} (NIC) or {:.0} (switch, link)",
        pct(&nearest, 0.5),
        pct(&nearest, 0.99),
        pct(&nearest, 1.0),
        params.min_llr_nic,
        params.min_llr
    );
    println!(
        "hosts moved to ERROR without a NIC fault: {wrong_host_errors} (right NIC ERRORs: {host_errors_right})"
    );
    println!(
        "path evidence over the fault windows: {traced_flows} flows placed on their traced path, {untrusted_paths} traced paths ignored (no route), {bad_flows} bad flows (--trace {})",
        a.trace
    );
    println!(
        "leader CPU per window of {flows_per_window} flows (Window::add of every report + localise): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (add p50 {:.1} ms, localise p50 {:.1} ms)",
        pct(&one, 0.5),
        pct(&one, 0.99),
        pct(&one, 1.0),
        pct(&one_add, 0.5),
        pct(&one_loc, 0.5)
    );
    println!(
        "leader CPU per fault window judged with the earlier ones (Window::add of its reports + localise over 1..={} windows in place): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        a.windows,
        pct(&acc, 0.5),
        pct(&acc, 0.99),
        pct(&acc, 1.0)
    );
    let s1 = sum(&single_ge1);
    let frac = |x: u64| if s1.n == 0 { 0.0 } else { x as f64 / s1.n as f64 };
    println!(
        "RESULT single_ge1_n={} single_ge1_top1={:.4} single_ge1_top3={:.4} healthy_suspects={} wrong_host_errors={} cpu_p99_ms={:.1}",
        s1.n,
        frac(s1.top1),
        frac(s1.top3),
        healthy_suspects,
        wrong_host_errors,
        pct(&one, 0.99)
    );
    Ok(ExitCode::SUCCESS)
}
