//! Several windows judged as one without copying them: the leader localises the closing window together
//! with the ones before it (`[net] accumulate_windows`). Host names and traced paths are interned once
//! across the windows, in order, so every host and path gets the id [`Window::absorb`] would give it, and
//! flows are read in place. [`fitting`] says how many of the windows may be judged together under the first
//! one's limits, the same rule `absorb` enforces when it copies.

use crate::fxhash::{FxMap, FxSet};
use crate::window::{Flow, Window};

/// What the localiser needs about one host over the judged windows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Host<'a> {
    /// The interface of the first window that knows one ("" when none reported).
    pub iface: &'a str,
    pub reports: u32,
    pub votes_from_others: u32,
    pub probed: u32,
}

/// A flow's place: (window, index in its flows).
pub(crate) type FlowRef = (u32, u32);

pub(crate) struct Judged<'a> {
    windows: &'a [&'a Window],
    names: Vec<&'a str>,
    index: FxMap<&'a str, u32>,
    hosts: Vec<Host<'a>>,
    /// Per window: its host id -> the judged id.
    host_ids: Vec<Vec<u32>>,
    /// Per window: its path id -> the judged path id (0: not traced).
    path_ids: Vec<Vec<u32>>,
    /// Judged paths; id 0 is the empty path.
    paths: Vec<&'a [String]>,
}

impl<'a> Judged<'a> {
    pub fn new(windows: &'a [&'a Window]) -> Judged<'a> {
        let mut j = Judged {
            windows,
            names: Vec::new(),
            index: FxMap::default(),
            hosts: Vec::new(),
            host_ids: Vec::with_capacity(windows.len()),
            path_ids: Vec::with_capacity(windows.len()),
            paths: vec![&[]],
        };
        let mut path_index: FxMap<&'a [String], u32> = FxMap::default();
        for w in windows {
            let ids: Vec<u32> = w
                .host_names()
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let id = *j.index.entry(n.as_str()).or_insert_with(|| {
                        j.names.push(n.as_str());
                        j.hosts.push(Host::default());
                        j.names.len() as u32 - 1
                    });
                    let info = w.host_info(i as u32);
                    let h = &mut j.hosts[id as usize];
                    if h.iface.is_empty() {
                        h.iface = &info.iface;
                    }
                    h.reports += info.reports;
                    h.votes_from_others += info.votes_from_others;
                    h.probed += info.probed;
                    id
                })
                .collect();
            j.host_ids.push(ids);
            let mut pids = vec![0u32];
            for p in 1..=w.path_count() as u32 {
                let path = w.path(p);
                let id = *path_index.entry(path).or_insert_with(|| {
                    j.paths.push(path);
                    j.paths.len() as u32 - 1
                });
                pids.push(id);
            }
            j.path_ids.push(pids);
        }
        j
    }

    /// Every flow of every window, in order, with its ends and path in judged ids.
    pub fn flows(&self) -> impl Iterator<Item = (FlowRef, Flow)> + '_ {
        self.windows.iter().enumerate().flat_map(move |(wi, w)| {
            let (hid, pid) = (&self.host_ids[wi], &self.path_ids[wi]);
            w.flows().iter().enumerate().map(move |(i, f)| {
                let g = Flow {
                    src: hid[f.src as usize],
                    dst: hid[f.dst as usize],
                    path: pid[f.path as usize],
                    ..*f
                };
                ((wi as u32, i as u32), g)
            })
        })
    }

    /// Every flow of every window in place, with its ends in judged ids (no copy of the flow).
    pub fn flows_in_place(&self) -> impl Iterator<Item = (u32, u32, &'a Flow)> + '_ {
        self.windows.iter().enumerate().flat_map(move |(wi, w)| {
            let hid = &self.host_ids[wi];
            w.flows().iter().map(move |f| (hid[f.src as usize], hid[f.dst as usize], f))
        })
    }

    /// One flow, in judged ids.
    pub fn flow(&self, (wi, i): FlowRef) -> Flow {
        let f = &self.windows[wi as usize].flows()[i as usize];
        let (hid, pid) = (&self.host_ids[wi as usize], &self.path_ids[wi as usize]);
        Flow { src: hid[f.src as usize], dst: hid[f.dst as usize], path: pid[f.path as usize], ..*f }
    }

    pub fn flow_count(&self) -> usize {
        self.windows.iter().map(|w| w.flows().len()).sum()
    }

    pub fn names(&self) -> &[&'a str] {
        &self.names
    }

    pub fn name(&self, id: u32) -> &'a str {
        self.names[id as usize]
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn host(&self, id: u32) -> &Host<'a> {
        &self.hosts[id as usize]
    }

    pub fn path(&self, id: u32) -> &'a [String] {
        self.paths[id as usize]
    }

    /// Hosts that sent at least one report.
    pub fn reporters(&self) -> usize {
        self.hosts.iter().filter(|h| h.reports > 0).count()
    }
}

/// How many of `windows` (the closing one first, then the earlier ones, newest first) may be judged
/// together: the longest prefix whose hosts, reports, flows and traced paths stay within the first
/// window's limits and in which no report is counted twice (the leader never gives one report to two
/// windows, but a window that would double-count one is left out with the older ones). At least 1 when
/// `windows` is not empty.
pub fn fitting(windows: &[&Window]) -> usize {
    let Some(first) = windows.first() else { return 0 };
    let l = first.limits();
    let mut names: FxSet<&str> = FxSet::default();
    let mut seen: FxSet<(&str, u64, u64)> = FxSet::default();
    let mut paths: FxSet<&[String]> = FxSet::default();
    let (mut reports, mut flows) = (0usize, 0usize);
    for (n, w) in windows.iter().enumerate() {
        let keys: Vec<(&str, u64, u64)> = w.seen().map(|(id, s, q)| (w.host_name(id), s, q)).collect();
        let new_names = w.host_names().iter().filter(|x| !names.contains(x.as_str())).count();
        let new_paths = (1..=w.path_count() as u32).filter(|&p| !paths.contains(w.path(p))).count();
        let fits = n == 0
            || (names.len() + new_names <= l.max_hosts
                && reports + keys.len() <= l.max_reports
                && flows + w.flows().len() <= l.max_flows
                && paths.len() + new_paths <= l.max_paths
                && !keys.iter().any(|k| seen.contains(k)));
        if !fits {
            return n;
        }
        names.extend(w.host_names().iter().map(String::as_str));
        paths.extend((1..=w.path_count() as u32).map(|p| w.path(p)));
        reports += keys.len();
        flows += w.flows().len();
        seen.extend(keys);
    }
    windows.len()
}
