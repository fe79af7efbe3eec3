//! The checker graph, declared in one place: config -> validate -> build -> run, as in vector's topology.
//!
//! Every checker the agent knows is a node; a derived node names its inputs (other checkers whose findings
//! it grades with: disk and machine grading take the kernel-log findings). The defaults are
//! [`DEFAULT_INPUTS`]; `[checkers.NAME] inputs = [...]` in the agent config replaces them for one node.
//! [`validate`] refuses an input that names no checker, inputs on a checker that cannot consume them, and
//! cycles, each with a clear error, and returns the nodes in an order where every input comes before its
//! consumers. At run time the sink hands every report's findings to the [`Inbox`] of each consumer of its
//! checker ([`Routes`]), and a [`Derived`] node takes its inbox before each run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkers::{CheckContext, CheckError, Checker, Checkpoint};
use state_machines::{Finding, Kind};

/// The graph this agent runs unless its config says otherwise: the disk and machine grades consume the
/// kernel-log findings, and so does the DIMM (edac) grade, which counts the kernel's CE lines only where
/// sysfs has no EDAC counters.
pub const DEFAULT_INPUTS: &[(&str, &[&str])] = &[
    ("disk", &[checkers::kernel_log::CHECKER_NAME]),
    ("edac", &[checkers::kernel_log::CHECKER_NAME]),
    ("machine", &[checkers::kernel_log::CHECKER_NAME]),
];

/// Most inputs one node may name: a derived grade reads a few sources; dozens is a config mistake.
pub const MAX_INPUTS_PER_NODE: usize = 16;

/// Most findings buffered for one consumer between its runs (a log storm must not grow memory; the
/// findings themselves still go to the master in full). The oldest are dropped first.
pub const INBOX_MAX: usize = 10_000;

/// One node as declared: its name, whether it can consume inputs, and the inputs it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub consumes_inputs: bool,
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("checker {0:?} is declared twice")]
    Duplicate(String),
    #[error("checkers.{node}.inputs: {input:?} is not a checker this agent knows (known: {known})")]
    UnknownInput { node: String, input: String, known: String },
    #[error(
        "checkers.{node}.inputs: {node} does not grade with other checkers' findings, so it takes no inputs"
    )]
    NotDerived { node: String },
    #[error("checkers.{node}.inputs: more than {MAX_INPUTS_PER_NODE} inputs")]
    TooManyInputs { node: String },
    #[error("checkers.{node}.inputs: {input:?} is named twice")]
    RepeatedInput { node: String, input: String },
    #[error("checker inputs form a cycle through {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// A validated graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Every node, inputs before consumers (ties in name order).
    pub order: Vec<String>,
    /// Node -> the nodes it consumes.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Node -> the nodes that consume it.
    pub consumers: BTreeMap<String, Vec<String>>,
}

/// Check a declared graph; see the module docs for what is refused.
pub fn validate(nodes: &[NodeSpec]) -> Result<Topology, TopologyError> {
    let mut by_name: BTreeMap<&str, &NodeSpec> = BTreeMap::new();
    for n in nodes {
        if by_name.insert(&n.name, n).is_some() {
            return Err(TopologyError::Duplicate(n.name.clone()));
        }
    }
    let known = || by_name.keys().copied().collect::<Vec<_>>().join(", ");
    let mut inputs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut consumers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in nodes {
        if n.inputs.is_empty() {
            continue;
        }
        if !n.consumes_inputs {
            return Err(TopologyError::NotDerived { node: n.name.clone() });
        }
        if n.inputs.len() > MAX_INPUTS_PER_NODE {
            return Err(TopologyError::TooManyInputs { node: n.name.clone() });
        }
        let mut seen = BTreeSet::new();
        for i in &n.inputs {
            if !by_name.contains_key(i.as_str()) {
                return Err(TopologyError::UnknownInput {
                    node: n.name.clone(),
                    input: i.clone(),
                    known: known(),
                });
            }
            if !seen.insert(i) {
                return Err(TopologyError::RepeatedInput { node: n.name.clone(), input: i.clone() });
            }
            consumers.entry(i.clone()).or_default().push(n.name.clone());
        }
        inputs.insert(n.name.clone(), n.inputs.clone());
    }
    // Kahn's algorithm in name order: deterministic, and whatever is left over lies on a cycle.
    let mut missing: BTreeMap<&str, usize> =
        by_name.keys().map(|k| (*k, inputs.get(*k).map_or(0, Vec::len))).collect();
    let mut ready: BTreeSet<&str> = missing.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(next) = ready.pop_first() {
        order.push(next.to_string());
        for c in consumers.get(next).into_iter().flatten() {
            if let Some(m) = missing.get_mut(c.as_str()) {
                *m -= 1;
                if *m == 0 {
                    ready.insert(c.as_str());
                }
            }
        }
    }
    if order.len() < nodes.len() {
        let placed: BTreeSet<&str> = order.iter().map(String::as_str).collect();
        let cycle = by_name.keys().filter(|k| !placed.contains(**k)).map(|k| k.to_string()).collect();
        return Err(TopologyError::Cycle(cycle));
    }
    Ok(Topology { order, inputs, consumers })
}

/// The inputs a node gets when the config does not name them.
pub fn default_inputs(name: &str) -> Vec<String> {
    DEFAULT_INPUTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, i)| i.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default()
}

/// Findings on their way to one derived checker, bounded by [`INBOX_MAX`].
#[derive(Clone, Default)]
pub struct Inbox(Arc<Mutex<VecDeque<Finding>>>);

impl Inbox {
    pub fn push(&self, findings: &[Finding]) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for f in findings {
            if q.len() >= INBOX_MAX {
                q.pop_front();
            }
            q.push_back(f.clone());
        }
    }

    pub fn drain(&self) -> Vec<Finding> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }
}

/// Source checker -> the inboxes of its consumers.
#[derive(Clone, Default)]
pub struct Routes(BTreeMap<String, Vec<Inbox>>);

impl Routes {
    pub fn add(&mut self, source: &str, inbox: Inbox) {
        self.0.entry(source.to_string()).or_default().push(inbox);
    }

    /// Hand a report's findings to every consumer of `source`.
    pub fn deliver(&self, source: &str, findings: &[Finding]) {
        for inbox in self.0.get(source).into_iter().flatten() {
            inbox.push(findings);
        }
    }
}

/// A derived checker: takes its inbox before each run.
pub struct Derived {
    pub inner: Box<dyn Checker>,
    pub inbox: Inbox,
}

impl Checker for Derived {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn kinds(&self) -> &[Kind] {
        self.inner.kinds()
    }
    fn default_interval(&self) -> Duration {
        self.inner.default_interval()
    }
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        self.inner.set_inputs(self.inbox.drain());
        self.inner.run(ctx)
    }
    fn take_checkpoint(&mut self) -> Option<Checkpoint> {
        self.inner.take_checkpoint()
    }
    fn consumes_inputs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, consumes: bool, inputs: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            consumes_inputs: consumes,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn default_graph() -> Vec<NodeSpec> {
        vec![
            node("disk", true, &["kernel-log"]),
            node("edac", false, &[]),
            node("kernel-log", false, &[]),
            node("machine", true, &["kernel-log"]),
        ]
    }

    #[test]
    fn default_graph_orders_inputs_before_consumers() {
        let t = validate(&default_graph()).unwrap();
        assert_eq!(t.order, vec!["edac", "kernel-log", "disk", "machine"]);
        assert_eq!(t.consumers["kernel-log"], vec!["disk", "machine"]);
        assert_eq!(default_inputs("disk"), vec!["kernel-log"]);
        assert_eq!(default_inputs("edac"), vec!["kernel-log"]);
        assert!(default_inputs("nic").is_empty());
    }

    #[test]
    fn unknown_inputs_are_refused_with_the_known_names() {
        let mut g = default_graph();
        g[0].inputs = vec!["kernel-logg".into()];
        let e = validate(&g).unwrap_err();
        assert!(
            matches!(&e, TopologyError::UnknownInput { node, input, .. } if node == "disk" && input == "kernel-logg")
        );
        let msg = e.to_string();
        assert!(
            msg.contains("checkers.disk.inputs") && msg.contains("known: disk, edac, kernel-log, machine"),
            "{msg}"
        );
    }

    #[test]
    fn cycles_are_refused_and_named() {
        let mut g = default_graph();
        g[0].inputs = vec!["machine".into()];
        g[3].inputs = vec!["disk".into(), "kernel-log".into()];
        let e = validate(&g).unwrap_err();
        assert_eq!(e, TopologyError::Cycle(vec!["disk".into(), "machine".into()]));
        assert_eq!(e.to_string(), "checker inputs form a cycle through disk -> machine");
        // A node that consumes itself is the smallest cycle.
        let mut g = default_graph();
        g[0].inputs = vec!["disk".into()];
        assert_eq!(validate(&g).unwrap_err(), TopologyError::Cycle(vec!["disk".into()]));
    }

    #[test]
    fn inputs_on_plain_checkers_and_bad_lists_are_refused() {
        let mut g = default_graph();
        g[1].inputs = vec!["kernel-log".into()];
        assert_eq!(validate(&g).unwrap_err(), TopologyError::NotDerived { node: "edac".into() });
        let mut g = default_graph();
        g[0].inputs = vec!["kernel-log".into(), "kernel-log".into()];
        assert!(matches!(validate(&g).unwrap_err(), TopologyError::RepeatedInput { .. }));
        let mut g = default_graph();
        g.push(node("disk", false, &[]));
        assert_eq!(validate(&g).unwrap_err(), TopologyError::Duplicate("disk".into()));
    }

    #[test]
    fn input_count_is_bounded() {
        let mut g: Vec<NodeSpec> =
            (0..=MAX_INPUTS_PER_NODE).map(|i| node(&format!("s{i}"), false, &[])).collect();
        let names: Vec<String> = g.iter().map(|n| n.name.clone()).collect();
        g.push(NodeSpec {
            name: "d".into(),
            consumes_inputs: true,
            inputs: names[..MAX_INPUTS_PER_NODE].to_vec(),
        });
        assert!(validate(&g).is_ok(), "exactly the limit is fine");
        g.last_mut().unwrap().inputs = names;
        assert_eq!(validate(&g).unwrap_err(), TopologyError::TooManyInputs { node: "d".into() });
    }

    #[test]
    fn inbox_keeps_the_newest_at_its_limit() {
        let f = |i: usize| Finding {
            object: "disk/h1/sda".parse().unwrap(),
            severity: state_machines::Severity::Warning,
            checker: "kernel-log".into(),
            version: "1".into(),
            rule: format!("r{i}"),
            evidence: String::new(),
            readings: Default::default(),
            time_ms: 0,
            shadow: false,
        };
        let inbox = Inbox::default();
        let all: Vec<Finding> = (0..INBOX_MAX + 3).map(f).collect();
        let mut routes = Routes::default();
        routes.add("kernel-log", inbox.clone());
        routes.deliver("kernel-log", &all);
        routes.deliver("edac", &all); // no consumers: goes nowhere
        let got = inbox.drain();
        assert_eq!(got.len(), INBOX_MAX);
        assert_eq!(got[0].rule, "r3");
        assert!(inbox.drain().is_empty(), "drained");
    }
}
