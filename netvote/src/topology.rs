//! The fabric as the leader sees it: host -> ToR -> aggregation -> spine, a Clos tree where every ToR has one
//! or more aggregation uplinks and every aggregation switch one or more spine uplinks, and traffic between two
//! hosts takes any of the equal-cost (shortest up-down) routes. ECMP picks one per 5-tuple; we cannot see
//! which, so [`Topology::routes`] returns all of them and the blame is spread over them.
//!
//! Sources:
//! * TOML (the master's `[topology] file = "x.toml"`):
//!   ```toml
//!   [[tor]]
//!   name = "tor1"
//!   hosts = ["h1", "h2"]
//!   uplinks = ["agg1", "agg2"]    # aggregation switches (or spines in a two-tier fabric)
//!
//!   [[agg]]
//!   name = "agg1"
//!   uplinks = ["spine1", "spine2"]
//!   addrs = ["10.1.0.1", "10.1.1.1"]  # optional: the addresses it answers traces from
//!   ```
//!   Every switch named only as an uplink exists implicitly (spines usually are). `addrs` (any switch, also a
//!   `[[spine]]` entry) lets the leader turn an agent's traced hops (router addresses) into switch names:
//!   path evidence needs a routed fabric whose switches are listed with their addresses.
//! * CSV (`[topology] file = "x.csv"`): rows `host,tor,agg,spine` (a header row with exactly those names and
//!   `#` comment lines are skipped). A row says host -> tor, tor -> agg and agg -> spine; rows are unioned, so
//!   a ToR with 4 uplinks takes 4 rows (the host column may be empty on rows that only add links, and agg/spine
//!   may be empty for fewer tiers).
//! * [`Topology::from_tors`]: a one-tier fabric from the agents' `switch=` labels when there is no file (routes
//!   across ToRs are host-ToR ... ToR-host, the middle unknown).
//! * [`Topology::clos`]: the generator the bench uses.
//!
//! Either every ToR has uplinks or none does (a one-tier fabric); the same for aggregation switches. Errors
//! name the problem (unknown host, duplicate host, a ToR with no uplinks, a bad CSV row with its line number).

use std::collections::{BTreeMap, BTreeSet};

use crate::fxhash::FxMap;

use serde::Deserialize;

/// At most this many hosts: 2x the 100,000-host fleet the product targets; the leader keeps this in memory.
pub const MAX_HOSTS: usize = 200_000;
/// At most this many switches (ToR + aggregation + spine), for the same reason.
pub const MAX_SWITCHES: usize = 20_000;
/// At most this many equal-cost routes between two hosts: localisation expands the routes of every ToR pair
/// with bad flows, so this bounds a window's work (a 3-tier Clos with 16 aggs per pod and 4 spines has 1,024).
pub const MAX_ROUTES_PER_PAIR: usize = 1_024;
/// Longest host or switch name accepted (bytes); names become object ids.
pub const MAX_NAME_LEN: usize = 253;

/// A switch's tier in the Clos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Tor,
    Agg,
    Spine,
}

/// Why a topology was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("topology TOML: {0}")]
    Toml(String),
    #[error("topology CSV line {line}: {msg}")]
    CsvRow { line: usize, msg: String },
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    #[error("host {host:?} is listed twice (under {first:?} and {second:?})")]
    DuplicateHost { host: String, first: String, second: String },
    #[error("ToR {0:?} has no uplinks while other ToRs have some")]
    TorWithoutUplinks(String),
    #[error("aggregation switch {0:?} has no uplinks while other aggregation switches have some")]
    AggWithoutUplinks(String),
    #[error("{name:?} is used both as a {first:?} and as a {second:?}")]
    TierConflict { name: String, first: String, second: String },
    #[error("invalid name {0:?} (empty, too long, or with whitespace, ',' or '/')")]
    BadName(String),
    #[error("too many {what}: {got} > {limit}")]
    TooMany { what: &'static str, got: usize, limit: usize },
    #[error("invalid Clos spec: {0}")]
    BadSpec(String),
    #[error("switch {switch:?}: address {addr:?} is not an IP address")]
    BadAddr { switch: String, addr: String },
    #[error("address {addr} is given to both {first:?} and {second:?}")]
    DuplicateAddr { addr: std::net::IpAddr, first: String, second: String },
}

/// At most this many switch addresses (`addrs`) over the whole topology.
pub const MAX_ADDRS: usize = 200_000;

/// One equal-cost route between two hosts: the node names from source host to destination host, and its
/// links (each as `(a, b)` with a < b, i.e. the form of [`link_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub nodes: Vec<String>,
    pub links: Vec<(String, String)>,
}

/// The generator's shape: `hosts` spread evenly over `tors`; ToRs and aggregation switches split evenly into
/// `pods`; each ToR uplinks to every aggregation switch of its pod, each aggregation switch to every spine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosSpec {
    pub hosts: usize,
    pub tors: usize,
    pub aggs: usize,
    pub spines: usize,
    pub pods: usize,
}

impl Default for ClosSpec {
    /// The bench's default fabric: 10,000 hosts, 250 ToRs, 16 aggregation switches in 4 pods, 4 spines.
    fn default() -> Self {
        ClosSpec { hosts: 10_000, tors: 250, aggs: 16, spines: 4, pods: 4 }
    }
}

/// `"A--B"` with the two names ordered so A < B: the id of the link between them either way round.
pub fn link_id(a: &str, b: &str) -> String {
    if a <= b { format!("{a}--{b}") } else { format!("{b}--{a}") }
}

/// The fabric. Hosts and switches are numbered densely (host id, switch id) for the localiser.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    host_names: Vec<String>,
    host_index: FxMap<String, u32>,
    host_tor: Vec<u32>,
    sw_names: Vec<String>,
    sw_index: FxMap<String, u32>,
    sw_tier: Vec<Tier>,
    /// Per switch: its uplink switches, sorted and unique.
    sw_up: Vec<Vec<u32>>,
    /// Switch-to-switch links, (lower, upper) switch ids, numbered in `link_index`.
    links: Vec<(u32, u32)>,
    link_index: FxMap<(u32, u32), u32>,
    /// Switch addresses (traced hops) -> switch id.
    addr_index: FxMap<std::net::IpAddr, u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    tor: Vec<TomlSwitch>,
    #[serde(default)]
    agg: Vec<TomlSwitch>,
    #[serde(default)]
    spine: Vec<TomlSwitch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlSwitch {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    uplinks: Vec<String>,
    #[serde(default)]
    addrs: Vec<String>,
}

fn check_name(n: &str) -> Result<(), TopologyError> {
    if n.is_empty()
        || n.len() > MAX_NAME_LEN
        || n.chars().any(|c| c.is_whitespace() || c == ',' || c == '/' || c.is_control())
        || n.contains("--")
    {
        return Err(TopologyError::BadName(n.to_string()));
    }
    Ok(())
}

fn tier_name(t: Tier) -> String {
    match t {
        Tier::Tor => "ToR".into(),
        Tier::Agg => "aggregation switch".into(),
        Tier::Spine => "spine".into(),
    }
}

/// Collects a topology before validation (names, tiers, host -> ToR, uplink sets).
#[derive(Default)]
struct Builder {
    host_tor: BTreeMap<String, String>,
    tiers: BTreeMap<String, Tier>,
    up: BTreeMap<String, BTreeSet<String>>,
    addrs: BTreeMap<std::net::IpAddr, String>,
    /// CSV rows may repeat a host under the same ToR; TOML may not list it twice.
    allow_repeat_host: bool,
}

impl Builder {
    fn switch(&mut self, name: &str, tier: Tier) -> Result<(), TopologyError> {
        check_name(name)?;
        match self.tiers.get(name) {
            Some(&t) if t != tier => {
                return Err(TopologyError::TierConflict {
                    name: name.into(),
                    first: tier_name(t),
                    second: tier_name(tier),
                });
            }
            Some(_) => {}
            None => {
                if self.tiers.len() >= MAX_SWITCHES {
                    return Err(TopologyError::TooMany {
                        what: "switches",
                        got: self.tiers.len() + 1,
                        limit: MAX_SWITCHES,
                    });
                }
                self.tiers.insert(name.to_string(), tier);
                self.up.entry(name.to_string()).or_default();
            }
        }
        Ok(())
    }

    fn host(&mut self, host: &str, tor: &str) -> Result<(), TopologyError> {
        check_name(host)?;
        self.switch(tor, Tier::Tor)?;
        if let Some(first) = self.host_tor.get(host) {
            if !(self.allow_repeat_host && first == tor) {
                return Err(TopologyError::DuplicateHost {
                    host: host.into(),
                    first: first.clone(),
                    second: tor.into(),
                });
            }
            return Ok(());
        }
        if self.host_tor.len() >= MAX_HOSTS {
            return Err(TopologyError::TooMany {
                what: "hosts",
                got: self.host_tor.len() + 1,
                limit: MAX_HOSTS,
            });
        }
        self.host_tor.insert(host.to_string(), tor.to_string());
        Ok(())
    }

    fn uplink(
        &mut self,
        lower: &str,
        lower_tier: Tier,
        upper: &str,
        upper_tier: Tier,
    ) -> Result<(), TopologyError> {
        self.switch(lower, lower_tier)?;
        self.switch(upper, upper_tier)?;
        self.up.entry(lower.to_string()).or_default().insert(upper.to_string());
        Ok(())
    }

    fn addrs(&mut self, switch: &str, addrs: &[String]) -> Result<(), TopologyError> {
        for a in addrs {
            let ip: std::net::IpAddr = a.trim().parse().map_err(|_| TopologyError::BadAddr {
                switch: switch.into(),
                addr: a.chars().take(64).collect(),
            })?;
            if let Some(first) = self.addrs.get(&ip) {
                return Err(TopologyError::DuplicateAddr {
                    addr: ip,
                    first: first.clone(),
                    second: switch.into(),
                });
            }
            if self.addrs.len() >= MAX_ADDRS {
                return Err(TopologyError::TooMany {
                    what: "switch addresses",
                    got: self.addrs.len() + 1,
                    limit: MAX_ADDRS,
                });
            }
            self.addrs.insert(ip, switch.to_string());
        }
        Ok(())
    }

    fn build(self) -> Result<Topology, TopologyError> {
        if self.host_tor.iter().any(|(h, _)| self.tiers.contains_key(h)) {
            let h = self.host_tor.keys().find(|h| self.tiers.contains_key(*h)).cloned().unwrap_or_default();
            return Err(TopologyError::TierConflict {
                name: h,
                first: "host".into(),
                second: "switch".into(),
            });
        }
        for tier in [Tier::Tor, Tier::Agg] {
            let of_tier: Vec<&String> =
                self.tiers.iter().filter(|(_, t)| **t == tier).map(|(n, _)| n).collect();
            let with = of_tier.iter().filter(|n| self.up.get(**n).is_some_and(|u| !u.is_empty())).count();
            if with > 0 && with < of_tier.len() {
                let bare = of_tier
                    .iter()
                    .find(|n| self.up.get(**n).is_none_or(|u| u.is_empty()))
                    .map(|n| (*n).clone())
                    .unwrap_or_default();
                return Err(match tier {
                    Tier::Tor => TopologyError::TorWithoutUplinks(bare),
                    _ => TopologyError::AggWithoutUplinks(bare),
                });
            }
        }
        let mut t = Topology::default();
        for (name, &tier) in &self.tiers {
            let id = t.sw_names.len() as u32;
            t.sw_names.push(name.clone());
            t.sw_index.insert(name.clone(), id);
            t.sw_tier.push(tier);
        }
        t.sw_up = vec![Vec::new(); t.sw_names.len()];
        for (name, ups) in &self.up {
            let lo = t.sw_index[name];
            for u in ups {
                let hi = t.sw_index[u];
                t.sw_up[lo as usize].push(hi);
                let key = (lo.min(hi), lo.max(hi));
                if !t.link_index.contains_key(&key) {
                    t.link_index.insert(key, t.links.len() as u32);
                    t.links.push(key);
                }
            }
            t.sw_up[lo as usize].sort_unstable();
        }
        for (ip, sw) in &self.addrs {
            t.addr_index.insert(*ip, t.sw_index[sw]);
        }
        for (host, tor) in &self.host_tor {
            let id = t.host_names.len() as u32;
            t.host_names.push(host.clone());
            t.host_index.insert(host.clone(), id);
            t.host_tor.push(t.sw_index[tor]);
        }
        // Bound the equal-cost fan-out: routes <= (ToR uplinks)^2 * (agg uplinks).
        let max_up = |tier: Tier| {
            (0..t.sw_names.len())
                .filter(|&s| t.sw_tier[s] == tier)
                .map(|s| t.sw_up[s].len())
                .max()
                .unwrap_or(0)
        };
        let fan = max_up(Tier::Tor).max(1).pow(2) * max_up(Tier::Agg).max(1);
        if fan > MAX_ROUTES_PER_PAIR {
            return Err(TopologyError::TooMany {
                what: "equal-cost routes per pair",
                got: fan,
                limit: MAX_ROUTES_PER_PAIR,
            });
        }
        Ok(t)
    }
}

impl Topology {
    /// Parses the TOML form (module doc).
    pub fn parse_toml(text: &str) -> Result<Topology, TopologyError> {
        let f: TomlFile = toml::from_str(text).map_err(|e| TopologyError::Toml(e.to_string()))?;
        let mut b = Builder::default();
        for s in &f.spine {
            b.switch(&s.name, Tier::Spine)?;
            if !s.hosts.is_empty() || !s.uplinks.is_empty() {
                return Err(TopologyError::Toml(format!("spine {:?} takes no hosts or uplinks", s.name)));
            }
            b.addrs(&s.name, &s.addrs)?;
        }
        for a in &f.agg {
            b.switch(&a.name, Tier::Agg)?;
            if !a.hosts.is_empty() {
                return Err(TopologyError::Toml(format!("aggregation switch {:?} takes no hosts", a.name)));
            }
            for u in &a.uplinks {
                b.uplink(&a.name, Tier::Agg, u, Tier::Spine)?;
            }
            b.addrs(&a.name, &a.addrs)?;
        }
        // A ToR's uplinks are aggregation switches, or spines in a two-tier fabric without [[agg]].
        let up_tier = if f.agg.is_empty() && !f.spine.is_empty() { Tier::Spine } else { Tier::Agg };
        for t in &f.tor {
            b.switch(&t.name, Tier::Tor)?;
            for h in &t.hosts {
                b.host(h, &t.name)?;
            }
            for u in &t.uplinks {
                b.uplink(&t.name, Tier::Tor, u, up_tier)?;
            }
            b.addrs(&t.name, &t.addrs)?;
        }
        b.build()
    }

    /// Parses the CSV form (module doc): `host,tor,agg,spine` rows.
    pub fn parse_csv(text: &str) -> Result<Topology, TopologyError> {
        let mut b = Builder { allow_repeat_host: true, ..Default::default() };
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let row = raw.trim();
            if row.is_empty() || row.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = row.split(',').map(str::trim).collect();
            if cols.len() < 2 || cols.len() > 4 {
                return Err(TopologyError::CsvRow {
                    line,
                    msg: format!("want host,tor,agg,spine, got {} columns", cols.len()),
                });
            }
            if cols
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .eq(["host", "tor", "agg", "spine"].iter().take(cols.len()).map(|s| s.to_string()))
            {
                continue;
            }
            let get = |k: usize| cols.get(k).copied().filter(|c| !c.is_empty());
            let wrap = |e: TopologyError| TopologyError::CsvRow { line, msg: e.to_string() };
            let Some(tor) = get(1) else {
                return Err(TopologyError::CsvRow { line, msg: "the tor column is empty".into() });
            };
            b.switch(tor, Tier::Tor).map_err(wrap)?;
            if let Some(h) = get(0) {
                b.host(h, tor).map_err(wrap)?;
            }
            match (get(2), get(3)) {
                (Some(agg), spine) => {
                    b.uplink(tor, Tier::Tor, agg, Tier::Agg).map_err(wrap)?;
                    if let Some(s) = spine {
                        b.uplink(agg, Tier::Agg, s, Tier::Spine).map_err(wrap)?;
                    }
                }
                (None, Some(_)) => {
                    return Err(TopologyError::CsvRow {
                        line,
                        msg: "a spine without an aggregation switch".into(),
                    });
                }
                (None, None) => {}
            }
        }
        b.build()
    }

    /// A one-tier fabric: each host under its ToR (from the agents' `switch=` labels), nothing above.
    pub fn from_tors<I, H, T>(pairs: I) -> Result<Topology, TopologyError>
    where
        I: IntoIterator<Item = (H, T)>,
        H: AsRef<str>,
        T: AsRef<str>,
    {
        let mut b = Builder::default();
        for (h, t) in pairs {
            b.host(h.as_ref(), t.as_ref())?;
        }
        b.build()
    }

    /// The generator (see [`ClosSpec`]). Names: `h<i>`, `tor<i>`, `agg<i>`, `spine<i>` (zero-padded).
    pub fn clos(spec: &ClosSpec) -> Result<Topology, TopologyError> {
        let bad = |m: &str| Err(TopologyError::BadSpec(m.to_string()));
        if spec.hosts == 0 || spec.tors == 0 || spec.pods == 0 {
            return bad("hosts, tors and pods must be at least 1");
        }
        if spec.tors < spec.pods || spec.hosts < spec.tors {
            return bad("need hosts >= tors >= pods");
        }
        if spec.aggs > 0 && !spec.aggs.is_multiple_of(spec.pods) {
            return bad("aggs must be a multiple of pods");
        }
        if spec.aggs == 0 && spec.spines > 0 {
            return bad("spines need aggregation switches");
        }
        if spec.hosts > MAX_HOSTS {
            return Err(TopologyError::TooMany { what: "hosts", got: spec.hosts, limit: MAX_HOSTS });
        }
        let w = |n: usize| n.saturating_sub(1).to_string().len();
        let (wh, wt, wa, ws) = (w(spec.hosts), w(spec.tors), w(spec.aggs), w(spec.spines));
        let tor = |i: usize| format!("tor{i:0wt$}");
        let agg = |i: usize| format!("agg{i:0wa$}");
        let mut b = Builder::default();
        let aggs_per_pod = spec.aggs / spec.pods;
        for t in 0..spec.tors {
            b.switch(&tor(t), Tier::Tor)?;
            let pod = t * spec.pods / spec.tors;
            for a in pod * aggs_per_pod..(pod + 1) * aggs_per_pod {
                b.uplink(&tor(t), Tier::Tor, &agg(a), Tier::Agg)?;
            }
        }
        for a in 0..spec.aggs {
            for s in 0..spec.spines {
                b.uplink(&agg(a), Tier::Agg, &format!("spine{s:0ws$}"), Tier::Spine)?;
            }
        }
        for h in 0..spec.hosts {
            b.host(&format!("h{h:0wh$}"), &tor(h * spec.tors / spec.hosts))?;
        }
        b.build()
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.host_names.len()
    }

    /// Host names, sorted (their index is the host id).
    pub fn hosts(&self) -> &[String] {
        &self.host_names
    }

    /// Switch names, sorted (their index is the switch id).
    pub fn switches(&self) -> &[String] {
        &self.sw_names
    }

    /// Number of switch-to-switch links (ToR-aggregation, aggregation-spine); host-ToR links are one per host.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// A host's id.
    pub fn host_id(&self, host: &str) -> Option<u32> {
        self.host_index.get(host).copied()
    }

    /// A switch's id.
    /// The switch a traced hop's address belongs to (`addrs` in the TOML form).
    pub fn switch_at(&self, addr: std::net::IpAddr) -> Option<&str> {
        self.addr_index.get(&addr).map(|&s| self.sw_names[s as usize].as_str())
    }

    /// Whether any switch has addresses (path evidence can be mapped).
    pub fn has_addrs(&self) -> bool {
        !self.addr_index.is_empty()
    }

    pub fn switch_id(&self, name: &str) -> Option<u32> {
        self.sw_index.get(name).copied()
    }

    /// The ToR a host hangs from.
    pub fn tor_of(&self, host: &str) -> Option<&str> {
        self.host_id(host).map(|h| self.sw_names[self.host_tor[h as usize] as usize].as_str())
    }

    /// The tier of a switch.
    pub fn tier_of(&self, switch: &str) -> Option<Tier> {
        self.switch_id(switch).map(|s| self.sw_tier[s as usize])
    }

    /// The uplinks of a switch (sorted names).
    pub fn uplinks(&self, switch: &str) -> Vec<&str> {
        self.switch_id(switch)
            .map(|s| self.sw_up[s as usize].iter().map(|&u| self.sw_names[u as usize].as_str()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn host_tor_id(&self, host: u32) -> u32 {
        self.host_tor[host as usize]
    }

    pub(crate) fn uplinks_of(&self, s: u32) -> &[u32] {
        &self.sw_up[s as usize]
    }

    pub(crate) fn switch_name(&self, s: u32) -> &str {
        &self.sw_names[s as usize]
    }

    pub(crate) fn link_ends(&self, l: u32) -> (u32, u32) {
        self.links[l as usize]
    }

    pub(crate) fn link_of(&self, a: u32, b: u32) -> Option<u32> {
        self.link_index.get(&(a.min(b), a.max(b))).copied()
    }

    /// The equal-cost switch paths from ToR `a` to ToR `b` (switch ids, both ends included). Same ToR: one
    /// path `[a]`. ToRs sharing aggregation switches: `[a, x, b]` for each shared x. Otherwise `[a, x, s, y, b]`
    /// through every spine s common to an uplink x of a and an uplink y of b. A one-tier fabric (no uplinks):
    /// `[a, b]`, the middle unknown. Empty when no route exists.
    pub(crate) fn switch_paths(&self, a: u32, b: u32) -> Vec<Vec<u32>> {
        if a == b {
            return vec![vec![a]];
        }
        let (ua, ub) = (&self.sw_up[a as usize], &self.sw_up[b as usize]);
        if ua.is_empty() && ub.is_empty() {
            return vec![vec![a, b]];
        }
        let shared: Vec<u32> = ua.iter().copied().filter(|x| ub.binary_search(x).is_ok()).collect();
        if !shared.is_empty() {
            return shared.into_iter().map(|x| vec![a, x, b]).collect();
        }
        let mut out = Vec::new();
        for &x in ua {
            for &y in ub {
                let (sx, sy) = (&self.sw_up[x as usize], &self.sw_up[y as usize]);
                for &s in sx {
                    if sy.binary_search(&s).is_ok() {
                        out.push(vec![a, x, s, y, b]);
                    }
                }
            }
        }
        out
    }

    /// Every equal-cost route between two hosts (empty for a host to itself or when no route exists).
    pub fn routes(&self, a: &str, b: &str) -> Result<Vec<Route>, TopologyError> {
        let ha = self.host_id(a).ok_or_else(|| TopologyError::UnknownHost(a.to_string()))?;
        let hb = self.host_id(b).ok_or_else(|| TopologyError::UnknownHost(b.to_string()))?;
        if ha == hb {
            return Ok(Vec::new());
        }
        let paths = self.switch_paths(self.host_tor_id(ha), self.host_tor_id(hb));
        let one_tier = |p: &[u32]| p.len() == 2 && self.link_of(p[0], p[1]).is_none();
        Ok(paths
            .into_iter()
            .map(|p| {
                let mut nodes = vec![a.to_string()];
                nodes.extend(p.iter().map(|&s| self.sw_names[s as usize].clone()));
                nodes.push(b.to_string());
                let order = |x: &str, y: &str| {
                    if x <= y { (x.to_string(), y.to_string()) } else { (y.to_string(), x.to_string()) }
                };
                let mut links = Vec::new();
                let skip_middle = one_tier(&p);
                for (i, w) in nodes.windows(2).enumerate() {
                    if skip_middle && i == 1 {
                        continue;
                    }
                    links.push(order(&w[0], &w[1]));
                }
                Route { nodes, links }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[[tor]]
name = "t1"
hosts = ["a", "b"]
uplinks = ["x1", "x2"]
[[tor]]
name = "t2"
hosts = ["c"]
uplinks = ["x1", "x2"]
[[tor]]
name = "t3"
hosts = ["d"]
uplinks = ["x3"]
[[agg]]
name = "x1"
uplinks = ["s1", "s2"]
[[agg]]
name = "x2"
uplinks = ["s1", "s2"]
[[agg]]
name = "x3"
uplinks = ["s1", "s2"]
"#;

    #[test]
    fn toml_routes_cover_every_equal_cost_path() {
        let t = Topology::parse_toml(TOML).unwrap();
        assert_eq!(t.tor_of("c"), Some("t2"));
        assert_eq!(t.tier_of("s1"), Some(Tier::Spine));
        let same = t.routes("a", "b").unwrap();
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].nodes, ["a", "t1", "b"]);
        assert_eq!(same[0].links, [("a".into(), "t1".into()), ("b".into(), "t1".into())]);
        assert_eq!(t.routes("a", "c").unwrap().len(), 2); // via x1 or x2
        let far = t.routes("a", "d").unwrap();
        assert_eq!(far.len(), 4); // x1|x2 x s1|s2 -> x3
        assert!(far.iter().all(|r| r.nodes.len() == 7 && r.links.len() == 6));
        assert!(t.routes("a", "a").unwrap().is_empty());
        assert_eq!(t.routes("a", "zz"), Err(TopologyError::UnknownHost("zz".into())));
    }

    #[test]
    fn switch_addresses_map_traced_hops_to_names() {
        let text = format!("{TOML}\n[[spine]]\nname = \"s1\"\naddrs = [\"10.9.0.1\", \"fd00::1\"]\n");
        let text = text.replacen("uplinks = [\"x3\"]", "uplinks = [\"x3\"]\naddrs = [\"10.3.0.1\"]", 1);
        let t = Topology::parse_toml(&text).unwrap();
        assert!(t.has_addrs());
        assert_eq!(t.switch_at("10.9.0.1".parse().unwrap()), Some("s1"));
        assert_eq!(t.switch_at("fd00::1".parse().unwrap()), Some("s1"));
        assert_eq!(t.switch_at("10.3.0.1".parse().unwrap()), Some("t3"));
        assert_eq!(t.switch_at("10.3.0.2".parse().unwrap()), None);
        assert!(!Topology::parse_toml(TOML).unwrap().has_addrs());
        let bad = text.replacen("10.3.0.1", "not-an-ip", 1);
        assert!(matches!(Topology::parse_toml(&bad), Err(TopologyError::BadAddr { .. })));
        let dup = text.replacen("10.3.0.1", "10.9.0.1", 1);
        let e = Topology::parse_toml(&dup).unwrap_err();
        assert!(matches!(e, TopologyError::DuplicateAddr { .. }), "{e}");
        assert!(e.to_string().contains("10.9.0.1"), "{e}");
    }

    #[test]
    fn csv_matches_toml() {
        let csv = "host,tor,agg,spine\n# comment\na,t1,x1,s1\nb,t1,x2,s2\n,t1,x1,s2\n,t1,x2,s1\nc,t2,x1,\n,t2,x2\nd,t3,x3,s1\n,t3,x3,s2\n";
        let c = Topology::parse_csv(csv).unwrap();
        let t = Topology::parse_toml(TOML).unwrap();
        assert_eq!(c.hosts(), t.hosts());
        assert_eq!(c.switches(), t.switches());
        for (x, y) in [("a", "b"), ("a", "c"), ("a", "d"), ("c", "d")] {
            assert_eq!(c.routes(x, y).unwrap(), t.routes(x, y).unwrap());
        }
    }

    #[test]
    fn errors_are_clear() {
        let e = Topology::parse_csv("a,t1,x1,s1\nb,t1,x1,s1\nc,,x1\n").unwrap_err();
        assert_eq!(e, TopologyError::CsvRow { line: 3, msg: "the tor column is empty".into() });
        let e = Topology::parse_csv("a,t1,x1\na,t2,x1\n").unwrap_err();
        assert!(matches!(e, TopologyError::CsvRow { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = Topology::parse_csv("a,t1,x1\nb,t2\n").unwrap_err();
        assert_eq!(e, TopologyError::TorWithoutUplinks("t2".into()));
        let e = Topology::parse_csv("a,t1,x1,s1,zz\n").unwrap_err();
        assert!(matches!(e, TopologyError::CsvRow { line: 1, .. }));
        let e = Topology::parse_toml("[[tor]]\nname='t'\nhosts=['a','a']\n").unwrap_err();
        assert!(matches!(e, TopologyError::DuplicateHost { .. }));
        let e = Topology::parse_toml("[[tor]]\nname='t'\nhosts=['a']\nuplinks=['t']\n").unwrap_err();
        assert!(matches!(e, TopologyError::TierConflict { .. }), "{e}");
        assert!(matches!(Topology::parse_toml("[[tor]]\nnome='t'\n"), Err(TopologyError::Toml(_))));
        assert!(matches!(Topology::from_tors([("a b", "t")]), Err(TopologyError::BadName(_))));
    }

    #[test]
    fn one_tier_from_labels() {
        let t = Topology::from_tors([("a", "r1"), ("b", "r1"), ("c", "r2")]).unwrap();
        let r = t.routes("a", "c").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].nodes, ["a", "r1", "r2", "c"]);
        assert_eq!(r[0].links, [("a".into(), "r1".into()), ("c".into(), "r2".into())]);
        assert!(matches!(
            Topology::from_tors([("a", "r1"), ("a", "r2")]),
            Err(TopologyError::DuplicateHost { .. })
        ));
    }

    #[test]
    fn clos_generator_and_limits() {
        let t = Topology::clos(&ClosSpec::default()).unwrap();
        assert_eq!(t.host_count(), 10_000);
        assert_eq!(t.uplinks("tor000").len(), 4);
        assert_eq!(t.uplinks("agg00").len(), 4);
        assert_eq!(t.routes("h0000", "h9999").unwrap().len(), 64);
        assert_eq!(t.routes("h0000", "h0100").unwrap().len(), 4); // same pod, other ToR
        assert_eq!(t.routes("h0000", "h0001").unwrap().len(), 1); // same ToR
        let big = ClosSpec { hosts: MAX_HOSTS + 1, tors: 1000, aggs: 4, spines: 1, pods: 1 };
        assert!(matches!(Topology::clos(&big), Err(TopologyError::TooMany { .. })));
        let fan = ClosSpec { hosts: 100, tors: 10, aggs: 64, spines: 1, pods: 1 };
        assert!(matches!(
            Topology::clos(&fan),
            Err(TopologyError::TooMany { what: "equal-cost routes per pair", .. })
        ));
        assert!(matches!(
            Topology::clos(&ClosSpec { aggs: 15, ..ClosSpec::default() }),
            Err(TopologyError::BadSpec(_))
        ));
    }

    #[test]
    fn link_ids_are_ordered() {
        assert_eq!(link_id("tor1", "agg1"), "agg1--tor1");
        assert_eq!(link_id("agg1", "tor1"), "agg1--tor1");
        assert_eq!(crate::Target::link("tor1", "agg1").object_id(), "link/agg1--tor1");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Outside text never panics the parsers; what parses has routes between every pair of its hosts.
        #[test]
        fn parsers_never_panic(text in "([a-d]{0,2}(,[a-f0-9]{0,2}){0,4}\n){0,12}") {
            if let Ok(t) = Topology::parse_csv(&text) {
                for a in t.hosts() {
                    for b in t.hosts() {
                        let r = t.routes(a, b);
                        prop_assert!(r.is_ok());
                        prop_assert!(r.unwrap().len() <= MAX_ROUTES_PER_PAIR);
                    }
                }
            }
            let _parsed = Topology::parse_toml(&text);
        }
    }
}
