//! Localisation: from one window's flows and the topology, which NIC, link or switch is losing packets.
//!
//! The algorithm (007-style blame made statistical; see ARCHITECTURE.md "netvote: the algorithm"):
//! 1. Every flow (src, dst, sent, lost) is placed on the topology. Its possible routes are all equal-cost
//!    routes between the two hosts (ECMP picks one per probe and we cannot see which), each weighted
//!    1/#routes; an element's share `w` of the flow is the weight of the routes through it. Elements are the
//!    hosts' NICs (the host--ToR link, share 1 for both ends), the switches and the switch--switch links.
//!    Flows are grouped by ToR pair (all flows of a pair share the same routes).
//! 2. Background: the per-link loss rate is the median over ToRs of lost / (sent x links on the route), so a
//!    few faulty ToRs do not raise it; a flow's expected loss is that times its route length.
//! 3. Blame: each element's evidence is a Poisson likelihood ratio: "the element loses a fraction q of the
//!    probes through it" (a flow then loses background + w*q) against "background only", with q fitted.
//!    Unlike counting bad flows, this charges an element for the clean flows through it too (the share of
//!    bad versus good flows), so a switch whose host-facing flows are clean loses to its lossy uplinks and an
//!    aggregation switch whose intra-pod flows are clean loses to its spine links. Cheap first-order scores
//!    (lost attributed by w against expected) pick the candidates that get the exact fit.
//! 4. Greedy explanation: the best element above the thresholds becomes a suspect; its fitted loss is added
//!    to the flows through it, and the search repeats (several simultaneous faults), at most
//!    `Params::max_suspects` times. A healthy window has no element above the thresholds: no suspects.
//!    Elements explaining the same loss almost as well (equal-cost links ECMP hides from us) are listed right
//!    after it as ranked alternatives.
//! 5. Decision: a NIC suspect goes to ERROR only when the evidence is clear (loss and likelihood above the
//!    error thresholds), its lossy flows reach peers under several ToRs, and its ToR-mates' flows are clean;
//!    a link or switch suspect proposes WARNING/ERROR for the link/switch object only, never for hosts.
//!
//! Also produced: the ToR-to-ToR matrix (sent, lost, RTT) and how many flows were bad.

use crate::fxhash::FxMap;
use crate::judged::{FlowRef, Judged};
use crate::topology::Topology;
use crate::window::{Flow, UNKNOWN_HOP, Window};
use crate::{Decision, Suspect, Target};

/// At most this many example flows in a suspect's evidence.
pub const MAX_EVIDENCE: usize = 10;
/// Newton iterations when fitting an element's loss: the likelihood is concave in q, 30 steps from the
/// moment estimate converge to well under 1e-9 in every case the tests and the bench produce.
const FIT_ITERATIONS: usize = 30;

/// Relative likelihood difference under which two elements count as carrying exactly the same evidence
/// (floating-point noise of summing the same numbers; real near-ties differ by far more).
const EXACT_TIE: f64 = 1e-9;

/// Thresholds of the localiser. `Default` is what the leader runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// A flow is bad when it lost at least one probe and at least this share of its probes.
    pub bad_flow_loss: f64,
    /// Floor of the background per-link loss rate (a perfectly clean window would otherwise make any single
    /// lost probe infinitely surprising).
    pub min_background: f64,
    /// Log-likelihood ratio a switch or link needs to become a suspect (~e^-min_llr chance under background
    /// only, per element).
    pub min_llr: f64,
    /// The same for a NIC. Higher because a fabric has several times more NICs than switches and links (10,000
    /// against 1,334 in the bench's Clos), and what an operator sees is the chance that any element of a
    /// healthy fabric is named: per class, about the class's size times e^-threshold.
    pub min_llr_nic: f64,
    /// ...and the fitted extra loss (per probe through it) it needs.
    pub min_excess_loss: f64,
    /// At most this many suspects (greedy rounds) per window.
    pub max_suspects: usize,
    /// Elements whose likelihood is at least this share of the chosen one's are listed as alternatives.
    pub tie_ratio: f64,
    /// At most this many alternatives per suspect.
    pub max_alternatives: usize,
    /// Candidates per round that get the exact fit (the first-order score picks them).
    pub candidates: usize,
    /// A NIC suspect proposes ERROR only with fitted loss >= this...
    pub host_error_loss: f64,
    /// ...likelihood ratio >= this...
    pub host_error_llr: f64,
    /// ...and bad flows to peers under at least this many distinct ToRs.
    pub host_error_min_tors: usize,
    /// A link or switch suspect proposes ERROR (else WARNING) with fitted loss >= this...
    pub device_error_loss: f64,
    /// ...and likelihood ratio >= this.
    pub device_error_llr: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            bad_flow_loss: 0.01,
            min_background: 1e-6,
            min_llr: 14.0,
            min_llr_nic: 17.0,
            min_excess_loss: 0.002,
            max_suspects: 8,
            tie_ratio: 0.97,
            max_alternatives: 3,
            candidates: 48,
            host_error_loss: 0.01,
            host_error_llr: 20.0,
            host_error_min_tors: 3,
            device_error_loss: 0.05,
            device_error_llr: 50.0,
        }
    }
}

/// Loss and RTT between two ToRs (directed: reporter's ToR -> peer's ToR).
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixCell {
    pub src_tor: String,
    pub dst_tor: String,
    pub sent: u64,
    pub lost: u64,
    /// Median over the flows of their p50 RTT.
    pub rtt_p50_us: u32,
    /// The 99th percentile over the flows of their p99 RTT.
    pub rtt_p99_us: u32,
    pub flows: u32,
}

/// What one window says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// Ranked: each greedy pick, then its alternatives (decision `Rank`).
    pub suspects: Vec<Suspect>,
    pub reporters: u32,
    pub flows: u32,
    pub bad_flows: u32,
    /// Flows with an end the topology does not know (left out of the blame).
    pub unplaced_flows: u32,
    /// Flows placed on their traced path (path evidence) instead of every equal-cost route.
    pub traced_flows: u32,
    /// Flows whose traced path is not a route between their hosts (an unknown switch, a wrong shape): placed
    /// on every equal-cost route as if not traced.
    pub untrusted_paths: u32,
    /// The per-link background loss rate used.
    pub background_loss: f64,
    /// The strongest element that stayed under the thresholds (how close a healthy window came to a suspect).
    pub nearest: Option<Nearest>,
    pub matrix: Vec<MatrixCell>,
    /// The hosts most voted for, by votes from others per time probed (Pingmesh-style ranking; shown as
    /// context, not a decision: a slow but lossless host collects RTT votes and stays out of `suspects`).
    pub most_voted: Vec<VotedHost>,
}

/// [`Verdict::nearest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    pub target: Target,
    /// Its log-likelihood ratio (a suspect needs [`Params::min_llr`], or [`Params::min_llr_nic`] for a NIC).
    pub llr: f64,
    /// Its fitted extra loss per probe through it.
    pub excess_loss: f64,
}

/// One host of [`Verdict::most_voted`].
#[derive(Debug, Clone, PartialEq)]
pub struct VotedHost {
    pub host: String,
    /// Reports that voted for it.
    pub votes: u32,
    /// Reports that probed it.
    pub probed: u32,
}

/// At most this many hosts in [`Verdict::most_voted`].
pub const MAX_MOST_VOTED: usize = 10;

/// An element of the fabric that can be blamed. Ids: NICs 0..H, switches H..H+S, links after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Nic(u32),
    Switch(u32),
    Link(u32),
}

struct Placed {
    src: u32,
    dst: u32,
    bucket: u32,
    sent: f64,
    lost: f64,
    nlinks: f64,
    flow: FlowRef,
}

struct Bucket {
    /// Interior elements (switches and links, encoded ids) with their share of the bucket's flows.
    elems: Vec<(u32, f64)>,
    nlinks: f64,
}

struct Ctx<'a> {
    topo: Option<&'a Topology>,
    hosts: usize,
    switches: usize,
}

impl Ctx<'_> {
    fn decode(&self, id: u32) -> Elem {
        let (h, s) = (self.hosts as u32, self.switches as u32);
        if id < h {
            Elem::Nic(id)
        } else if id < h + s {
            Elem::Switch(id - h)
        } else {
            Elem::Link(id - h - s)
        }
    }
}

fn ln_ratio_llr(lost: f64, sent: f64, base: f64, q: f64) -> f64 {
    if q <= 0.0 || base <= 0.0 {
        return 0.0;
    }
    lost * ((base + q) / base).ln() - sent * q
}

/// Fits q for groups (sent, lost, base rate per probe, share w) and returns (q, llr).
fn fit(groups: &[(f64, f64, f64, f64)]) -> (f64, f64) {
    let d = |q: f64| -> (f64, f64) {
        let (mut g, mut h) = (0.0, 0.0);
        for &(s, l, b, w) in groups {
            let r = b + w * q;
            g += l * w / r - s * w;
            h -= l * w * w / (r * r);
        }
        (g, h)
    };
    if d(0.0).0 <= 0.0 {
        return (0.0, 0.0);
    }
    let (mut sl, mut sb, mut sw) = (0.0, 0.0, 0.0);
    for &(s, l, b, w) in groups {
        sl += l;
        sb += s * b;
        sw += s * w;
    }
    let mut q = ((sl - sb) / sw.max(1e-12)).clamp(1e-9, 1.0);
    for _ in 0..FIT_ITERATIONS {
        let (g, h) = d(q);
        if h >= 0.0 {
            break;
        }
        let mut next = q - g / h;
        if next <= 0.0 {
            next = q / 2.0;
        }
        let next = next.min(1.0);
        if (next - q).abs() < 1e-12 {
            q = next;
            break;
        }
        q = next;
    }
    let llr: f64 =
        groups.iter().map(|&(s, l, b, w)| if w > 0.0 { ln_ratio_llr(l, s, b, w * q) } else { 0.0 }).sum();
    (q, llr.max(0.0))
}

fn median_u32(v: &mut [u32]) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// One window's localisation (module doc). `topo` None: only NICs are blamed and there is no matrix.
pub fn localise(topo: Option<&Topology>, w: &Window, p: &Params) -> Verdict {
    localise_windows(topo, &[w], p)
}

/// Several windows judged as one (the closing window first, then the earlier ones, newest first; see
/// [`crate::fitting`] for how many may go together): the same verdict as [`localise`] on a window that
/// [`Window::absorb`]ed them in that order, without copying their flows.
pub fn localise_windows(topo: Option<&Topology>, windows: &[&Window], p: &Params) -> Verdict {
    let w = Judged::new(windows);
    let w = &w;
    let mut v =
        Verdict { reporters: w.reporters() as u32, flows: w.flow_count() as u32, ..Default::default() };

    // Host ids: the topology's, or the judged windows' when there is none.
    let hosts = topo.map_or(w.names().len(), Topology::host_count);
    let switches = topo.map_or(0, |t| t.switches().len());
    let links = topo.map_or(0, Topology::link_count);
    let ctx = Ctx { topo, hosts, switches };
    let map: Vec<Option<u32>> = match topo {
        Some(t) => w.names().iter().map(|n| t.host_id(n)).collect(),
        None => (0..w.names().len() as u32).map(Some).collect(),
    };

    // 1. Place flows, group by ToR pair.
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut bucket_of: FxMap<(u32, u32), u32> = FxMap::default();
    // Traced flows: (path, src ToR, dst ToR) -> the bucket of the routes the path matches (None: untrusted).
    let mut path_bucket_of: FxMap<(u32, u32, u32), Option<u32>> = FxMap::default();
    let mut scratch = Scratch { counts: vec![0; hosts + switches + links], touched: Vec::new() };
    let mut placed: Vec<Placed> = Vec::with_capacity(w.flow_count());
    for (i, f) in w.flows() {
        if is_bad(&f, p) {
            v.bad_flows += 1;
        }
        let (Some(s), Some(d)) = (map[f.src as usize], map[f.dst as usize]) else {
            v.unplaced_flows += 1;
            continue;
        };
        if s == d || f.sent == 0 {
            continue;
        }
        let bucket = match topo {
            None => {
                if buckets.is_empty() {
                    buckets.push(Bucket { elems: Vec::new(), nlinks: 2.0 });
                }
                0
            }
            Some(t) => {
                let (ta, tb) = (t.host_tor_id(s), t.host_tor_id(d));
                let traced = if f.path == 0 {
                    None
                } else {
                    let key = (f.path, ta, tb);
                    let b = match path_bucket_of.get(&key) {
                        Some(&b) => b,
                        None => {
                            let b = path_bucket(t, &ctx, &mut scratch, ta, tb, w.path(f.path)).map(|b| {
                                buckets.push(b);
                                buckets.len() as u32 - 1
                            });
                            path_bucket_of.insert(key, b);
                            b
                        }
                    };
                    if b.is_some() {
                        v.traced_flows += 1;
                    } else {
                        v.untrusted_paths += 1;
                    }
                    b
                };
                let key = (ta.min(tb), ta.max(tb));
                if let Some(b) = traced {
                    b
                } else {
                    match bucket_of.get(&key) {
                        Some(&b) => b,
                        None => {
                            let Some(b) = make_bucket(t, &ctx, &mut scratch, key.0, key.1) else {
                                v.unplaced_flows += 1;
                                continue;
                            };
                            let id = buckets.len() as u32;
                            buckets.push(b);
                            bucket_of.insert(key, id);
                            id
                        }
                    }
                }
            }
        };
        placed.push(Placed {
            src: s,
            dst: d,
            bucket,
            sent: f64::from(f.sent),
            lost: f64::from(f.lost_probes()),
            nlinks: buckets[bucket as usize].nlinks,
            flow: i,
        });
    }

    // 2. Background per-link loss: median over ToRs (over hosts without a topology).
    let groups = if topo.is_some() { switches } else { hosts };
    let group_of = |h: u32| -> usize { topo.map_or(h as usize, |t| t.host_tor_id(h) as usize) };
    let mut g_lost = vec![0.0f64; groups];
    let mut g_exp = vec![0.0f64; groups];
    for f in &placed {
        for g in [group_of(f.src), group_of(f.dst)] {
            g_lost[g] += f.lost;
            g_exp[g] += f.sent * f.nlinks;
        }
    }
    // The median alone is 0 when groups see few probes (no topology: one host per group), so also take the
    // pooled rate of all but the worst tenth of the groups, and use the larger.
    let mut rates: Vec<(f64, usize)> =
        (0..groups).filter(|&g| g_exp[g] > 0.0).map(|g| (g_lost[g] / g_exp[g], g)).collect();
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = rates.get(rates.len() / 2).map_or(0.0, |r| r.0);
    let keep = rates.len() - rates.len() / 10;
    let (tl, te) = rates[..keep].iter().fold((0.0, 0.0), |(l, e), &(_, g)| (l + g_lost[g], e + g_exp[g]));
    let trimmed = if te > 0.0 { tl / te } else { 0.0 };
    let background = median.max(trimmed).max(p.min_background);
    v.background_loss = background;

    // Inverted index: interior element -> (bucket, share).
    let n_elems = hosts + switches + links;
    let mut through: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n_elems];
    for (bi, b) in buckets.iter().enumerate() {
        for &(e, share) in &b.elems {
            through[e as usize].push((bi as u32, share));
        }
    }

    // 3-4. Greedy rounds. The per-element flow lists are built at the first suspect (a healthy window
    // needs none).
    let mut lists: Option<Lists> = None;
    let mut extra_host = vec![0.0f64; hosts];
    let mut extra_bucket = vec![0.0f64; buckets.len()];
    let mut chosen: Vec<u32> = Vec::new();
    let mut listed: Vec<u32> = Vec::new();
    for _round in 0..p.max_suspects {
        let rate = |f: &Placed, eb: &[f64], eh: &[f64]| {
            background * f.nlinks + eh[f.src as usize] + eh[f.dst as usize] + eb[f.bucket as usize]
        };
        let mut h_sent = vec![0.0f64; hosts];
        let mut h_lost = vec![0.0f64; hosts];
        let mut h_base = vec![0.0f64; hosts];
        let mut b_sent = vec![0.0f64; buckets.len()];
        let mut b_lost = vec![0.0f64; buckets.len()];
        let mut b_base = vec![0.0f64; buckets.len()];
        for f in &placed {
            let r = rate(f, &extra_bucket, &extra_host);
            for h in [f.src as usize, f.dst as usize] {
                h_sent[h] += f.sent;
                h_lost[h] += f.lost;
                h_base[h] += f.sent * r;
            }
            let b = f.bucket as usize;
            b_sent[b] += f.sent;
            b_lost[b] += f.lost;
            b_base[b] += f.sent * r;
        }
        // NICs: one group each, closed form.
        let mut scored: Vec<(f64, f64, u32)> = Vec::new(); // (llr, q, elem)
        for h in 0..hosts {
            if h_sent[h] <= 0.0 || h_lost[h] <= 0.0 || chosen.contains(&(h as u32)) {
                continue;
            }
            let base = h_base[h] / h_sent[h];
            let q = (h_lost[h] / h_sent[h] - base).max(0.0);
            let llr = ln_ratio_llr(h_lost[h], h_sent[h], base, q);
            if llr > 0.0 {
                scored.push((llr, q, h as u32));
            }
        }
        // Interior: first-order score, then the exact fit for the best candidates.
        let mut first: Vec<(f64, u32)> = Vec::new();
        for (e, list) in through.iter().enumerate().skip(hosts) {
            if list.is_empty() || chosen.contains(&(e as u32)) {
                continue;
            }
            let (mut l, mut x) = (0.0, 0.0);
            for &(b, share) in list {
                l += b_lost[b as usize] * share;
                x += b_base[b as usize] * share;
            }
            if l > x && x > 0.0 {
                first.push(((l - x) * (l - x) / x, e as u32));
            }
        }
        first.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        first.truncate(p.candidates);
        for &(_, e) in &first {
            let groups: Vec<(f64, f64, f64, f64)> = through[e as usize]
                .iter()
                .filter(|(b, _)| b_sent[*b as usize] > 0.0)
                .map(|&(b, share)| {
                    let b = b as usize;
                    (b_sent[b], b_lost[b], b_base[b] / b_sent[b], share)
                })
                .collect();
            let (q, llr) = fit(&groups);
            if llr > 0.0 {
                scored.push((llr, q, e));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
        let Some(&(llr, q, e)) = scored.first() else { break };
        let min_llr = if matches!(ctx.decode(e), Elem::Nic(_)) { p.min_llr_nic } else { p.min_llr };
        if llr < min_llr || q < p.min_excess_loss {
            v.nearest = Some(Nearest { target: target_of(&ctx, w, e), llr, excess_loss: q });
            break;
        }
        chosen.push(e);
        listed.push(e);
        // Elements with exactly the same evidence (the same share of the same flows: equal-cost uplinks of one
        // ToR, the spine links of one pod) cannot be told apart by any loss figure: name them, and never
        // propose ERROR for one of them (it may be the healthy one).
        let twins: Vec<u32> = scored
            .iter()
            .skip(1)
            .take_while(|x| (x.0 - llr).abs() <= EXACT_TIE * llr)
            .filter(|x| !matches!(ctx.decode(x.2), Elem::Nic(_)))
            .map(|x| x.2)
            .collect();
        let lists = &*lists.get_or_insert_with(|| Lists::new(&placed, buckets.len(), hosts));
        let mut decision = decide(&ctx, &placed, lists, e, q, llr, background, p);
        if !twins.is_empty() && decision == Decision::Error {
            decision = Decision::Warning;
        }
        let mut main = describe(&ctx, w, &placed, lists, &through, e, q, llr, decision, p);
        if !twins.is_empty() {
            main.why = format!(
                "{}; {} other element(s) carry exactly the same flows and cannot be told apart (equal-cost paths), e.g. {}",
                main.why,
                twins.len(),
                twins
                    .iter()
                    .take(3)
                    .map(|&t| target_of(&ctx, w, t).object_id())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let main_id = main.target.object_id();
        v.suspects.push(main);
        let mut alts = 0;
        for &(l2, q2, e2) in scored.iter().skip(1) {
            if alts >= p.max_alternatives || l2 < llr * p.tie_ratio {
                break;
            }
            if listed.contains(&e2) || q2 < p.min_excess_loss {
                continue;
            }
            listed.push(e2);
            alts += 1;
            let mut s = describe(&ctx, w, &placed, lists, &through, e2, q2, l2, Decision::Rank, p);
            s.why = format!("alternative to {main_id} (explains the same loss almost as well): {}", s.why);
            v.suspects.push(s);
        }
        // Explain the loss away.
        match ctx.decode(e) {
            Elem::Nic(h) => extra_host[h as usize] += q,
            _ => {
                for &(b, share) in &through[e as usize] {
                    extra_bucket[b as usize] += share * q;
                }
            }
        }
    }

    if let Some(t) = topo {
        v.matrix = matrix(t, w, &map);
    }
    v.most_voted = most_voted(w);
    v
}

fn most_voted(w: &Judged) -> Vec<VotedHost> {
    let mut hosts: Vec<(f64, u32)> = (0..w.names().len() as u32)
        .filter_map(|i| {
            let info = w.host(i);
            (info.votes_from_others > 0)
                .then(|| (f64::from(info.votes_from_others) / f64::from(info.probed.max(1)), i))
        })
        .collect();
    hosts.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| w.name(a.1).cmp(w.name(b.1))));
    hosts
        .into_iter()
        .take(MAX_MOST_VOTED)
        .map(|(_, i)| VotedHost {
            host: w.name(i).to_string(),
            votes: w.host(i).votes_from_others,
            probed: w.host(i).probed,
        })
        .collect()
}

fn is_bad(f: &Flow, p: &Params) -> bool {
    let l = f.lost_probes();
    l >= 1 && f64::from(l) >= p.bad_flow_loss * f64::from(f.sent)
}

/// Per-element path counts while one bucket is built (reused across buckets: no allocation per bucket).
struct Scratch {
    counts: Vec<u32>,
    touched: Vec<u32>,
}

impl Scratch {
    fn add(&mut self, e: u32, n: u32) {
        let c = &mut self.counts[e as usize];
        if *c == 0 {
            self.touched.push(e);
        }
        *c += n;
    }

    fn take(&mut self, paths: u32) -> Vec<(u32, f64)> {
        let out = self
            .touched
            .iter()
            .map(|&e| (e, f64::from(self.counts[e as usize]) / f64::from(paths)))
            .collect();
        for &e in &self.touched {
            self.counts[e as usize] = 0;
        }
        self.touched.clear();
        out
    }
}

/// The elements of the routes between ToRs `a` < `b` (or a == b) with their shares, counted without
/// materialising the routes (the same routes as `Topology::switch_paths`).
fn make_bucket(t: &Topology, ctx: &Ctx, sc: &mut Scratch, a: u32, b: u32) -> Option<Bucket> {
    let h = ctx.hosts as u32;
    let sw = |s: u32| h + s;
    let ln = |x: u32, y: u32| t.link_of(x, y).map(|l| h + ctx.switches as u32 + l);
    if a == b {
        sc.add(sw(a), 1);
        return Some(Bucket { elems: sc.take(1), nlinks: 2.0 });
    }
    let (ua, ub) = (t.uplinks_of(a), t.uplinks_of(b));
    if ua.is_empty() && ub.is_empty() {
        sc.add(sw(a), 1);
        sc.add(sw(b), 1);
        return Some(Bucket { elems: sc.take(1), nlinks: 3.0 });
    }
    let shared: Vec<u32> = ua.iter().copied().filter(|x| ub.binary_search(x).is_ok()).collect();
    if !shared.is_empty() {
        let n = shared.len() as u32;
        sc.add(sw(a), n);
        sc.add(sw(b), n);
        for &x in &shared {
            sc.add(sw(x), 1);
            for l in [ln(a, x), ln(x, b)].into_iter().flatten() {
                sc.add(l, 1);
            }
        }
        return Some(Bucket { elems: sc.take(n), nlinks: 4.0 });
    }
    let mut n = 0u32;
    for &x in ua {
        for &y in ub {
            let (sx, sy) = (t.uplinks_of(x), t.uplinks_of(y));
            for &s in sx {
                if sy.binary_search(&s).is_err() {
                    continue;
                }
                n += 1;
                for e in [Some(sw(x)), Some(sw(s)), Some(sw(y)), ln(a, x), ln(x, s), ln(s, y), ln(y, b)]
                    .into_iter()
                    .flatten()
                {
                    sc.add(e, 1);
                }
            }
        }
    }
    if n == 0 {
        sc.take(1);
        return None;
    }
    sc.add(sw(a), n);
    sc.add(sw(b), n);
    Some(Bucket { elems: sc.take(n), nlinks: 6.0 })
}

/// The bucket of a traced flow from ToR `a` to ToR `b`: the equal-cost routes its `path` matches (a hop
/// [`UNKNOWN_HOP`] matches any switch), each with weight 1/#matching, so a fully traced path puts the whole
/// flow on its own switches and links. None when the path names a switch the topology does not know or
/// matches no route (the flow then counts as not traced).
fn path_bucket(t: &Topology, ctx: &Ctx, sc: &mut Scratch, a: u32, b: u32, path: &[String]) -> Option<Bucket> {
    let mut want: Vec<Option<u32>> = Vec::with_capacity(path.len());
    for hop in path {
        if hop == UNKNOWN_HOP {
            want.push(None);
        } else {
            want.push(Some(t.switch_id(hop)?));
        }
    }
    let h = ctx.hosts as u32;
    let mut n = 0u32;
    for route in t.switch_paths(a, b) {
        if route.len() != want.len() || route.iter().zip(&want).any(|(r, w)| w.is_some_and(|w| w != *r)) {
            continue;
        }
        n += 1;
        for (i, &s) in route.iter().enumerate() {
            sc.add(h + s, 1);
            if let Some(&next) = route.get(i + 1)
                && let Some(l) = t.link_of(s, next)
            {
                sc.add(h + ctx.switches as u32 + l, 1);
            }
        }
    }
    if n == 0 {
        return None;
    }
    Some(Bucket { elems: sc.take(n), nlinks: want.len() as f64 + 1.0 })
}

fn target_of(ctx: &Ctx, w: &Judged, e: u32) -> Target {
    match (ctx.decode(e), ctx.topo) {
        (Elem::Nic(h), Some(t)) => {
            let name = t.hosts()[h as usize].clone();
            let iface = w.id(&name).map(|i| w.host(i).iface.to_string()).unwrap_or_default();
            Target::Host { host: name, iface: if iface.is_empty() { "unknown".into() } else { iface } }
        }
        (Elem::Nic(h), None) => {
            let iface = w.host(h).iface.to_string();
            Target::Host {
                host: w.name(h).to_string(),
                iface: if iface.is_empty() { "unknown".into() } else { iface },
            }
        }
        (Elem::Switch(s), Some(t)) => Target::Switch(t.switch_name(s).to_string()),
        (Elem::Link(l), Some(t)) => {
            let (a, b) = t.link_ends(l);
            Target::link(t.switch_name(a), t.switch_name(b))
        }
        (_, None) => Target::Switch(String::new()),
    }
}

/// The placed flows by bucket and by host (offsets + indices into `placed`, each list ascending), so a
/// suspect's description and a NIC's decision read the flows through that element instead of every flow
/// of the judged windows (up to 12 descriptions per window, each a pass over ~1 M flows before).
struct Lists {
    bucket_start: Vec<u32>,
    bucket_flows: Vec<u32>,
    host_start: Vec<u32>,
    host_flows: Vec<u32>,
}

impl Lists {
    fn new(placed: &[Placed], buckets: usize, hosts: usize) -> Lists {
        fn csr(n: usize, keys: impl Fn(&mut dyn FnMut(usize, u32))) -> (Vec<u32>, Vec<u32>) {
            let mut start = vec![0u32; n + 1];
            keys(&mut |k, _| start[k + 1] += 1);
            for i in 0..n {
                start[i + 1] += start[i];
            }
            let mut fill = start.clone();
            let mut out = vec![0u32; start[n] as usize];
            keys(&mut |k, i| {
                out[fill[k] as usize] = i;
                fill[k] += 1;
            });
            (start, out)
        }
        let (bucket_start, bucket_flows) = csr(buckets, |put| {
            for (i, f) in placed.iter().enumerate() {
                put(f.bucket as usize, i as u32);
            }
        });
        let (host_start, host_flows) = csr(hosts, |put| {
            for (i, f) in placed.iter().enumerate() {
                put(f.src as usize, i as u32);
                put(f.dst as usize, i as u32);
            }
        });
        Lists { bucket_start, bucket_flows, host_start, host_flows }
    }

    fn of_host(&self, h: u32) -> &[u32] {
        &self.host_flows[self.host_start[h as usize] as usize..self.host_start[h as usize + 1] as usize]
    }

    fn of_bucket(&self, b: u32) -> &[u32] {
        &self.bucket_flows[self.bucket_start[b as usize] as usize..self.bucket_start[b as usize + 1] as usize]
    }

    /// The flows that may pass element `e`, ascending (the order of `placed`).
    fn through(&self, ctx: &Ctx, through: &[Vec<(u32, f64)>], e: u32) -> Vec<u32> {
        match ctx.decode(e) {
            Elem::Nic(h) => self.of_host(h).to_vec(),
            _ => {
                let mut v: Vec<u32> = through[e as usize]
                    .iter()
                    .flat_map(|&(b, _)| self.of_bucket(b).iter().copied())
                    .collect();
                v.sort_unstable();
                v
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decide(
    ctx: &Ctx,
    placed: &[Placed],
    lists: &Lists,
    e: u32,
    q: f64,
    llr: f64,
    background: f64,
    p: &Params,
) -> Decision {
    match ctx.decode(e) {
        Elem::Nic(h) => {
            let Some(t) = ctx.topo else { return Decision::Warning };
            if q < p.host_error_loss || llr < p.host_error_llr {
                return Decision::Warning;
            }
            let my_tor = t.host_tor_id(h);
            // Distinct ToRs of the peers of its lossy flows.
            let mut tors: Vec<u32> = lists
                .of_host(h)
                .iter()
                .map(|&i| &placed[i as usize])
                .filter(|f| f.lost > 0.0)
                .map(|f| t.host_tor_id(if f.src == h { f.dst } else { f.src }))
                .collect();
            tors.sort_unstable();
            tors.dedup();
            if tors.len() < p.host_error_min_tors {
                return Decision::Warning;
            }
            // Its ToR-mates' flows (not its own) must be clean: background only.
            // The flows of its ToR-mates, each once, in the order of `placed`.
            let mut mates: Vec<u32> = (0..ctx.hosts as u32)
                .filter(|&m| m != h && t.host_tor_id(m) == my_tor)
                .flat_map(|m| lists.of_host(m).iter().copied())
                .filter(|&i| placed[i as usize].src != h && placed[i as usize].dst != h)
                .collect();
            mates.sort_unstable();
            mates.dedup();
            let (mut s, mut l, mut b) = (0.0, 0.0, 0.0);
            for f in mates.iter().map(|&i| &placed[i as usize]) {
                s += f.sent;
                l += f.lost;
                b += f.sent * background * f.nlinks;
            }
            let mates_llr = if s > 0.0 && b > 0.0 {
                let base = b / s;
                ln_ratio_llr(l, s, base, (l / s - base).max(0.0))
            } else {
                0.0
            };
            if mates_llr >= p.min_llr { Decision::Warning } else { Decision::Error }
        }
        _ => {
            if q >= p.device_error_loss && llr >= p.device_error_llr {
                Decision::Error
            } else {
                Decision::Warning
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn describe(
    ctx: &Ctx,
    w: &Judged,
    placed: &[Placed],
    lists: &Lists,
    through: &[Vec<(u32, f64)>],
    e: u32,
    q: f64,
    llr: f64,
    decision: Decision,
    p: &Params,
) -> Suspect {
    let target = target_of(ctx, w, e);
    let (mut n, mut bad, mut sent, mut lost) = (0u32, 0u32, 0.0, 0.0);
    let mut examples: Vec<(u32, FlowRef)> = Vec::new();
    let mut voters: Vec<u32> = Vec::new();
    for f in lists.through(ctx, through, e).into_iter().map(|i| &placed[i as usize]) {
        n += 1;
        sent += f.sent;
        lost += f.lost;
        let fl = w.flow(f.flow);
        if is_bad(&fl, p) {
            bad += 1;
            examples.push((fl.lost_probes(), f.flow));
            voters.push(fl.src);
        }
    }
    voters.sort_unstable();
    voters.dedup();
    let voters = match ctx.decode(e) {
        Elem::Nic(_) => {
            let name = match &target {
                Target::Host { host, .. } => host.as_str(),
                _ => "",
            };
            w.id(name).map_or(0, |i| w.host(i).votes_from_others)
        }
        _ => voters.len() as u32,
    };
    examples.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let evidence = examples
        .iter()
        .take(MAX_EVIDENCE)
        .map(|&(_, i)| {
            let f = w.flow(i);
            format!("{} -> {}: {}/{} lost", w.name(f.src), w.name(f.dst), f.lost_probes(), f.sent)
        })
        .collect();
    let loss = if sent > 0.0 { lost / sent } else { 0.0 };
    let what = match ctx.decode(e) {
        Elem::Nic(_) => "NIC or host link",
        Elem::Switch(_) => "switch",
        Elem::Link(_) => "link",
    };
    let why = format!(
        "{what} loses ~{:.2}% of probes through it: {bad} of {n} flows bad, {:.3}% lost overall (log-likelihood {:.1})",
        q * 100.0,
        loss * 100.0,
        llr
    );
    Suspect {
        target,
        score: llr / (llr + 2.0 * p.min_llr),
        voters,
        bad_flows: bad,
        flows: n,
        loss,
        why,
        evidence,
        decision,
    }
}

fn matrix(t: &Topology, w: &Judged, map: &[Option<u32>]) -> Vec<MatrixCell> {
    // Each flow's cell, numbered as first seen, then the flows' figures grouped by cell with a counting
    // sort: two passes over the flows and none of them compared (a comparison sort of ~1 million flows per
    // judgement was a quarter of the leader's localisation time).
    let tor: Vec<Option<u32>> = map.iter().map(|m| m.map(|h| t.host_tor_id(h))).collect();
    let mut cell_of: FxMap<(u32, u32), u32> = FxMap::default();
    let mut cells: Vec<(u32, u32)> = Vec::new();
    let mut start: Vec<u32> = Vec::new();
    let mut of_flow: Vec<u32> = Vec::with_capacity(w.flow_count());
    for (src, dst, _) in w.flows_in_place() {
        let c = match (tor[src as usize], tor[dst as usize]) {
            (Some(a), Some(b)) => {
                let next = cells.len() as u32;
                let c = *cell_of.entry((a, b)).or_insert_with(|| {
                    cells.push((a, b));
                    start.push(0);
                    next
                });
                start[c as usize] += 1;
                c
            }
            _ => u32::MAX,
        };
        of_flow.push(c);
    }
    // Counts -> where each cell's run begins.
    let mut at = 0u32;
    for s in &mut start {
        let n = *s;
        *s = at;
        at += n;
    }
    let mut fill = start.clone();
    // (sent, lost, rtt p50, rtt p99) of each placed flow, grouped by cell.
    let mut figs: Vec<[u32; 4]> = vec![[0; 4]; at as usize];
    for ((_, _, f), &c) in w.flows_in_place().zip(&of_flow) {
        if c == u32::MAX {
            continue;
        }
        let slot = &mut fill[c as usize];
        figs[*slot as usize] = [f.sent, f.lost_probes(), f.rtt_p50_us, f.rtt_p99_us];
        *slot += 1;
    }
    // Names order the output; rank the switches once rather than compare strings per pair of cells.
    let mut by_name: Vec<u32> = (0..t.switches().len() as u32).collect();
    by_name.sort_by(|&a, &b| t.switch_name(a).cmp(t.switch_name(b)));
    let mut rank = vec![0u32; by_name.len()];
    for (r, &s) in by_name.iter().enumerate() {
        rank[s as usize] = r as u32;
    }
    let mut order: Vec<u32> = (0..cells.len() as u32).collect();
    order.sort_unstable_by_key(|&c| {
        let (a, b) = cells[c as usize];
        (rank[a as usize], rank[b as usize])
    });
    let mut out = Vec::with_capacity(cells.len());
    let mut p50: Vec<u32> = Vec::new();
    let mut p99: Vec<u32> = Vec::new();
    for c in order {
        let (s, d) = cells[c as usize];
        let end = start.get(c as usize + 1).copied().unwrap_or(at);
        let run = &figs[start[c as usize] as usize..end as usize];
        p50.clear();
        p99.clear();
        let (mut sent, mut lost) = (0u64, 0u64);
        for &[fs, fl, r50, r99] in run {
            sent += u64::from(fs);
            lost += u64::from(fl);
            if r50 > 0 {
                p50.push(r50);
                p99.push(r99);
            }
        }
        p99.sort_unstable();
        let q99 = if p99.is_empty() { 0 } else { p99[((p99.len() - 1) * 99) / 100] };
        out.push(MatrixCell {
            src_tor: t.switch_name(s).to_string(),
            dst_tor: t.switch_name(d).to_string(),
            sent,
            lost,
            rtt_p50_us: median_u32(&mut p50),
            rtt_p99_us: q99,
            flows: run.len() as u32,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::topology::ClosSpec;
    use crate::window::WindowLimits;
    use crate::{PeerResult, Report};

    /// A tiny deterministic generator (tests must not depend on a global RNG).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[derive(Default)]
    struct Faults {
        nic: HashMap<String, f64>,
        switch: HashMap<String, f64>,
        link: HashMap<(String, String), f64>,
        /// Hosts that answer slowly (RTT outliers) but lose nothing.
        busy: Vec<String>,
    }

    /// Every host probes `peers` peers (`stride` apart, so ToR-mates and remote hosts are covered) with
    /// `probes` probes each; a probe takes a random equal-cost route and survives each element's loss.
    fn window(t: &Topology, f: &Faults, peers: usize, probes: u32, seed: u64) -> Window {
        window_traced(t, f, peers, probes, seed, false)
    }

    /// `traced`: ECMP per flow (all of a flow's probes take one route, as a TCP connection's do) and every
    /// lossy flow reports its route's switches, as the agent's tracer finds them.
    fn window_traced(t: &Topology, f: &Faults, peers: usize, probes: u32, seed: u64, traced: bool) -> Window {
        let mut rng = Rng(seed | 1);
        let mut w = Window::new(WindowLimits::default());
        let hosts = t.hosts().to_vec();
        let n = hosts.len();
        for (i, me) in hosts.iter().enumerate() {
            let mut results = Vec::new();
            for k in 0..peers {
                let j = (i + 1 + k * ((n - 1) / peers).max(1)) % n;
                let other = &hosts[j];
                let routes = t.routes(me, other).unwrap();
                let pinned = &routes[(rng.next() % routes.len() as u64) as usize];
                let mut lost = 0;
                for _ in 0..probes {
                    let r =
                        if traced { pinned } else { &routes[(rng.next() % routes.len() as u64) as usize] };
                    let mut ok = 1.0 - 1e-4 * r.links.len() as f64;
                    ok *= 1.0 - f.nic.get(me).copied().unwrap_or(0.0);
                    ok *= 1.0 - f.nic.get(other).copied().unwrap_or(0.0);
                    for node in &r.nodes {
                        ok *= 1.0 - f.switch.get(node).copied().unwrap_or(0.0);
                    }
                    for l in &r.links {
                        ok *= 1.0 - f.link.get(l).copied().unwrap_or(0.0);
                    }
                    if rng.unit() > ok {
                        lost += 1;
                    }
                }
                let rtt = if f.busy.contains(other) { 20_000 } else { 200 };
                let path = if traced && lost > 0 {
                    pinned.nodes[1..pinned.nodes.len() - 1].to_vec()
                } else {
                    Vec::new()
                };
                results.push(PeerResult {
                    host: other.clone(),
                    sent: probes,
                    lost,
                    rtt_p50_us: rtt,
                    rtt_p99_us: rtt * 2,
                    path,
                    ..Default::default()
                });
            }
            let votes = crate::local::votes(&results, me, &crate::LocalRules::default());
            let r = Report {
                reporter: me.clone(),
                started_ms: 1,
                // Windows of different seeds are different windows (they may be judged together).
                window_seq: seed,
                iface: "eth0".into(),
                peers: results,
                votes,
                ..Default::default()
            };
            assert_eq!(w.add(&r), Ok(true));
        }
        w
    }

    fn small() -> Topology {
        // 96 hosts, 8 ToRs (12 hosts each), 2 pods of 2 aggs, 2 spines.
        Topology::clos(&ClosSpec { hosts: 96, tors: 8, aggs: 4, spines: 2, pods: 2 }).unwrap()
    }

    fn no_host_error(v: &Verdict) -> bool {
        v.suspects.iter().all(|s| !(matches!(s.target, Target::Host { .. }) && s.decision == Decision::Error))
    }

    #[test]
    fn healthy_windows_have_no_suspects() {
        let t = small();
        for seed in 1..6 {
            let w = window(&t, &Faults::default(), 24, 20, seed);
            let v = localise(Some(&t), &w, &Params::default());
            assert!(v.suspects.is_empty(), "seed {seed}: {:?}", v.suspects);
            assert_eq!(v.flows, 96 * 24);
            assert!(v.background_loss > 0.0 && v.background_loss < 1e-3, "{}", v.background_loss);
        }
    }

    #[test]
    fn a_busy_host_collects_votes_but_is_no_suspect() {
        let t = small();
        let f = Faults { busy: vec!["h40".into()], ..Faults::default() };
        let w = window(&t, &f, 24, 20, 19);
        let v = localise(Some(&t), &w, &Params::default());
        assert!(v.suspects.is_empty(), "{:?}", v.suspects);
        assert_eq!(v.most_voted[0].host, "h40", "{:?}", v.most_voted);
        assert!(v.most_voted[0].votes > 0);
    }

    #[test]
    fn a_bad_nic_is_named_and_goes_error() {
        let t = small();
        let mut f = Faults::default();
        f.nic.insert("h17".into(), 0.05);
        let w = window(&t, &f, 24, 20, 7);
        let v = localise(Some(&t), &w, &Params::default());
        let top = &v.suspects[0];
        assert_eq!(top.target, Target::Host { host: "h17".into(), iface: "eth0".into() }, "{:?}", v.suspects);
        assert_eq!(top.decision, Decision::Error);
        assert!(top.evidence.len() <= MAX_EVIDENCE && !top.evidence.is_empty());
        assert!(top.voters > 0);
        assert_eq!(top.target.object_id(), "nic/h17/eth0");
        assert_eq!(v.most_voted[0].host, "h17", "{:?}", v.most_voted);
        assert!(v.most_voted.len() <= MAX_MOST_VOTED);
    }

    #[test]
    fn a_lossy_tor_is_the_switch_and_no_host_errors() {
        let t = small();
        let mut f = Faults::default();
        f.switch.insert("tor3".into(), 0.05);
        let w = window(&t, &f, 24, 20, 11);
        let v = localise(Some(&t), &w, &Params::default());
        assert_eq!(v.suspects[0].target, Target::Switch("tor3".into()), "{:?}", v.suspects);
        assert!(no_host_error(&v));
    }

    #[test]
    fn a_single_link_fault_ranks_first() {
        // One aggregation switch per pod: the ToR uplink is the only way out, so it is identifiable.
        let t = Topology::clos(&ClosSpec { hosts: 96, tors: 8, aggs: 2, spines: 2, pods: 2 }).unwrap();
        for (seed, link) in [(3, ("agg0", "tor1")), (5, ("agg1", "tor6"))] {
            let mut f = Faults::default();
            f.link.insert((link.0.into(), link.1.into()), 0.04);
            let w = window(&t, &f, 24, 20, seed);
            let v = localise(Some(&t), &w, &Params::default());
            assert_eq!(v.suspects[0].target, Target::link(link.0, link.1), "{:?}", v.suspects);
            assert_ne!(v.suspects[0].decision, Decision::Rank);
            assert!(no_host_error(&v));
        }
    }

    #[test]
    fn equal_cost_uplinks_are_listed_as_alternatives() {
        let t = small();
        let mut f = Faults::default();
        f.link.insert(("agg0".into(), "tor1".into()), 0.08);
        let w = window(&t, &f, 24, 20, 13);
        let v = localise(Some(&t), &w, &Params::default());
        let top2: Vec<Target> = v.suspects.iter().take(2).map(|s| s.target.clone()).collect();
        // tor1's two uplinks carry exactly the same flows: both are named, first the pick, then its twin.
        assert!(top2.contains(&Target::link("agg0", "tor1")), "{:?}", v.suspects);
        assert!(top2.contains(&Target::link("agg1", "tor1")), "{:?}", v.suspects);
        // The fitted loss (8%) is above the ERROR threshold, but the pick may be the healthy twin: WARNING.
        assert_eq!(v.suspects[0].decision, Decision::Warning, "{:?}", v.suspects[0]);
        assert!(v.suspects[0].why.contains("cannot be told apart"), "{}", v.suspects[0].why);
        assert_eq!(v.suspects[1].decision, Decision::Rank);
        assert!(no_host_error(&v));
    }

    #[test]
    fn traced_paths_name_the_one_lossy_uplink_among_its_equal_cost_twins() {
        let t = small();
        for (seed, link, loss) in [(13, ("agg0", "tor1"), 0.08), (21, ("agg3", "tor6"), 0.03)] {
            let mut f = Faults::default();
            f.link.insert((link.0.into(), link.1.into()), loss);
            let w = window_traced(&t, &f, 24, 20, seed, true);
            let v = localise(Some(&t), &w, &Params::default());
            assert!(!v.suspects.is_empty(), "seed {seed}: {v:?}");
            let top = &v.suspects[0];
            assert_eq!(top.target, Target::link(link.0, link.1), "seed {seed}: {:?}", v.suspects);
            assert!(!top.why.contains("cannot be told apart"), "{}", top.why);
            assert!(v.traced_flows > 0 && v.untrusted_paths == 0, "{v:?}");
            // No twin of the same evidence: the other uplink of the ToR is not listed as an alternative.
            let twin = Target::link(if link.0 == "agg0" { "agg1" } else { "agg2" }, link.1);
            assert!(v.suspects.iter().all(|s| s.target != twin), "{:?}", v.suspects);
            assert!(no_host_error(&v));
            if loss >= 0.05 {
                assert_eq!(top.decision, Decision::Error, "{top:?}");
            }
        }
        // Healthy and traced: still no suspects.
        for seed in 1..4 {
            let w = window_traced(&t, &Faults::default(), 24, 20, seed, true);
            let v = localise(Some(&t), &w, &Params::default());
            assert!(v.suspects.is_empty(), "seed {seed}: {:?}", v.suspects);
        }
    }

    #[test]
    fn windows_judged_in_place_give_the_verdict_of_their_absorbed_copy() {
        let t = small();
        let mut nic = Faults::default();
        nic.nic.insert("h13".into(), 0.05);
        let mut link = Faults::default();
        link.link.insert(("agg0".into(), "tor1".into()), 0.03);
        for (name, f) in [("healthy", Faults::default()), ("nic", nic), ("link", link)] {
            let ws: Vec<Window> = (0..3).map(|k| window_traced(&t, &f, 24, 20, 40 + k, k != 1)).collect();
            let refs: Vec<&Window> = ws.iter().collect();
            assert_eq!(crate::fitting(&refs), 3);
            let mut copy = Window::new(WindowLimits::default());
            for w in &ws {
                copy.absorb(w).unwrap();
            }
            for topo in [Some(&t), None] {
                let in_place = localise_windows(topo, &refs, &Params::default());
                assert_eq!(
                    in_place,
                    localise(topo, &copy, &Params::default()),
                    "{name}, topology {}",
                    topo.is_some()
                );
                if name != "healthy" && topo.is_some() {
                    assert!(!in_place.suspects.is_empty(), "{name}: {in_place:?}");
                }
            }
        }
    }

    #[test]
    fn only_the_windows_that_fit_the_first_ones_limits_are_judged_together() {
        let t = small();
        let ws: Vec<Window> = (0..3).map(|k| window(&t, &Faults::default(), 24, 20, 50 + k)).collect();
        // A window given twice would count its reports twice: the judgement stops before it.
        assert_eq!(crate::fitting(&[&ws[0], &ws[1], &ws[0], &ws[2]]), 2);
        // Flows over the first window's limit: the older windows are left out.
        let flows = ws[0].flows().len();
        let mut small_first = Window::new(WindowLimits { max_flows: flows * 2, ..WindowLimits::default() });
        small_first.absorb(&ws[0]).unwrap();
        assert_eq!(
            crate::fitting(&[&small_first, &ws[1], &ws[2]]),
            if ws[1].flows().len() <= flows { 2 } else { 1 }
        );
        assert_eq!(crate::fitting(&[]), 0);
        assert_eq!(crate::fitting(&[&ws[2]]), 1);
    }

    #[test]
    fn a_path_that_is_no_route_is_ignored_and_a_hop_that_did_not_answer_matches_any_switch() {
        let t = small();
        // h00 is under tor0 (pod 0), h95 under tor7 (pod 1): routes tor0-aggX-spineY-aggZ-tor7.
        let routes = t.routes("h00", "h95").unwrap();
        assert!(routes.len() > 1);
        let good: Vec<String> = routes[0].nodes[1..6].to_vec();
        let cases: Vec<(Vec<String>, bool)> = vec![
            (good.clone(), true),
            (vec!["tor0".into(), "*".into(), good[2].clone(), "*".into(), "tor7".into()], true),
            (vec!["tor0".into(), "nosuch".into(), good[2].clone(), good[3].clone(), "tor7".into()], false),
            (vec!["tor0".into(), "tor7".into()], false),
            (good.iter().rev().cloned().collect(), false),
        ];
        for (path, trusted) in cases {
            let mut w = Window::new(WindowLimits::default());
            let r = Report {
                reporter: "h00".into(),
                peers: vec![PeerResult {
                    host: "h95".into(),
                    sent: 10,
                    lost: 1,
                    path: path.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            w.add(&r).unwrap();
            let v = localise(Some(&t), &w, &Params::default());
            assert_eq!(
                (v.traced_flows, v.untrusted_paths),
                if trusted { (1, 0) } else { (0, 1) },
                "{path:?}"
            );
        }
    }

    #[test]
    fn matrix_and_no_topology() {
        let t = small();
        let mut f = Faults::default();
        f.nic.insert("h05".into(), 0.1);
        let w = window(&t, &f, 24, 20, 17);
        let v = localise(Some(&t), &w, &Params::default());
        let sent: u64 = v.matrix.iter().map(|c| c.sent).sum();
        assert_eq!(sent, 96 * 24 * 20);
        assert!(v.matrix.iter().all(|c| c.rtt_p50_us == 200 && c.rtt_p99_us == 400));
        // Without a topology only NICs are blamed, and at most WARNING (a switch cannot be ruled out).
        let v = localise(None, &w, &Params::default());
        assert_eq!(v.suspects[0].target, Target::Host { host: "h05".into(), iface: "eth0".into() });
        assert_eq!(v.suspects[0].decision, Decision::Warning);
        assert!(v.matrix.is_empty());
    }

    /// The matrix as a map of each cell's flows, summarised the obvious way.
    fn reference_matrix(t: &Topology, ws: &[&Window]) -> Vec<MatrixCell> {
        let mut cells: std::collections::BTreeMap<(String, String), Vec<Flow>> = Default::default();
        for w in ws {
            for f in w.flows() {
                let tor =
                    |h: u32| t.host_id(w.host_name(h)).map(|id| t.switch_name(t.host_tor_id(id)).to_string());
                if let (Some(a), Some(b)) = (tor(f.src), tor(f.dst)) {
                    cells.entry((a, b)).or_default().push(*f);
                }
            }
        }
        cells
            .into_iter()
            .map(|((a, b), fs)| {
                let mut p50: Vec<u32> =
                    fs.iter().filter(|f| f.rtt_p50_us > 0).map(|f| f.rtt_p50_us).collect();
                let mut p99: Vec<u32> =
                    fs.iter().filter(|f| f.rtt_p50_us > 0).map(|f| f.rtt_p99_us).collect();
                p99.sort_unstable();
                MatrixCell {
                    src_tor: a,
                    dst_tor: b,
                    sent: fs.iter().map(|f| u64::from(f.sent)).sum(),
                    lost: fs.iter().map(|f| u64::from(f.lost_probes())).sum(),
                    rtt_p50_us: median_u32(&mut p50),
                    rtt_p99_us: if p99.is_empty() { 0 } else { p99[((p99.len() - 1) * 99) / 100] },
                    flows: fs.len() as u32,
                }
            })
            .collect()
    }

    #[test]
    fn the_matrix_sums_each_rack_pair_over_the_judged_windows() {
        let t = small();
        let mut f = Faults::default();
        f.nic.insert("h05".into(), 0.1);
        f.busy.push("h11".into());
        let ws: Vec<Window> = (0..3).map(|k| window(&t, &f, 12, 7, 40 + k)).collect();
        let judged: Vec<&Window> = ws.iter().collect();
        let v = localise_windows(Some(&t), &judged, &Params::default());
        let want = reference_matrix(&t, &judged);
        assert!(want.len() > 10, "{} cells", want.len());
        assert_eq!(v.matrix, want);
    }

    #[test]
    fn unknown_hosts_are_left_out() {
        let t = small();
        let mut w = Window::new(WindowLimits::default());
        let r = Report {
            reporter: "stranger".into(),
            peers: vec![PeerResult { host: "h1".into(), sent: 10, lost: 10, ..Default::default() }],
            ..Default::default()
        };
        w.add(&r).unwrap();
        let v = localise(Some(&t), &w, &Params::default());
        assert_eq!(v.unplaced_flows, 1);
        assert!(v.suspects.is_empty());
        assert_eq!(v.bad_flows, 1);
    }
}
