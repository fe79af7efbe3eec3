//! From one window's verdict to findings (issue 16), pure: which suspects become findings on which objects,
//! and which objects the leader filed about return to GOOD after `clear_windows` windows without suspicion.
//! Switch and link suspects become findings on `switch/NAME` / `link/A--B` only; a host suspect becomes a
//! finding on its `nic/HOST/IF`, and when that is an ERROR one on `machine/HOST` too ([`machine_finding_of`]). No other object is ever
//! named, so a switch-wide problem can never move a host (tested below). Every finding's time is the
//! window's end: the same window decided again (a retry, a new leader) gives the same findings.

use std::collections::BTreeMap;

use netvote::{Decision, Suspect, Target};
use state_machines::{Finding, ObjectId, Severity};

/// The checker name on the localisation's findings.
pub const CHECKER: &str = "netvote";
/// Its version: the rule that turns verdicts into findings (bump when it changes meaning).
pub const VERSION: &str = "1";
/// Most findings one window proposes (the top suspects; the rest are ranked and shown only): one window
/// cannot flood Raft, and the quotas see a bounded burst.
pub const MAX_FINDINGS_PER_WINDOW: usize = 64;
/// Most objects the leader remembers having filed about (to clear them later).
pub const MAX_TRACKED_SUSPECTS: usize = 10_000;
/// Examples of flows quoted in a finding's evidence.
const EVIDENCE_EXAMPLES: usize = 5;

/// The object a suspect's finding is about.
pub fn object_of(t: &Target) -> Result<ObjectId, state_machines::IdError> {
    match t {
        Target::Host { host, iface } => ObjectId::new(state_machines::Kind::Nic, host, Some(iface)),
        Target::Link { a, b } => ObjectId::link(a, b),
        Target::Switch(name) => ObjectId::switch(name),
    }
}

fn rule_of(t: &Target) -> &'static str {
    match t {
        Target::Host { .. } => "nic-suspect",
        Target::Link { .. } => "link-suspect",
        Target::Switch(_) => "switch-suspect",
    }
}

/// The finding for one suspect with a decision (`None` for rank-only suspects or an unnameable target).
pub fn finding_of(s: &Suspect, window_end_ms: u64) -> Option<Finding> {
    let severity = match s.decision {
        Decision::Rank => return None,
        Decision::Warning => Severity::Warning,
        Decision::Error => Severity::Error,
    };
    let object = object_of(&s.target).ok()?;
    let mut evidence = s.why.clone();
    for e in s.evidence.iter().take(EVIDENCE_EXAMPLES) {
        evidence.push_str("\n  ");
        evidence.push_str(e);
    }
    let readings = BTreeMap::from([
        ("score".to_string(), format!("{:.3}", s.score)),
        ("voters".to_string(), s.voters.to_string()),
        ("bad_flows".to_string(), s.bad_flows.to_string()),
        ("flows".to_string(), s.flows.to_string()),
        ("loss".to_string(), format!("{:.4}", s.loss)),
    ]);
    Some(Finding {
        object,
        severity,
        checker: CHECKER.into(),
        version: VERSION.into(),
        rule: rule_of(&s.target).into(),
        evidence,
        readings,
        time_ms: window_end_ms,
        shadow: false,
    })
}

/// A NIC found bad with clear evidence (an ERROR finding on `nic/HOST/IF`, which only a host suspect gives)
/// moves its machine too: the same evidence, as an ERROR finding on `machine/HOST`, through the machine's
/// usual state machine, quotas and levels (PRODUCT.md section 8: "moves machines to ERROR when the evidence
/// is clear"). A WARNING on a NIC, and any switch or link finding, names no machine.
pub fn machine_finding_of(nic: &Finding) -> Option<Finding> {
    if nic.object.kind() != state_machines::Kind::Nic || nic.severity != Severity::Error {
        return None;
    }
    let mut f = nic.clone();
    f.object = ObjectId::machine(nic.object.host()).ok()?;
    f.rule = "nic-suspect-machine".into();
    f.evidence = format!("its NIC {} is the common factor of its bad flows: {}", nic.object, nic.evidence);
    Some(f)
}

/// The interface netvote names a host suspect by when the host sent no report in the window.
pub const UNKNOWN_IFACE: &str = "unknown";

/// Name host suspects by the interface their own last report named (`iface_of`, the leader's memory across
/// windows) when the window had no report from them; a host whose interface nobody knows is ranked and
/// shown but files nothing (a finding on `nic/HOST/unknown` would create an object that does not exist).
pub fn name_ifaces(suspects: &mut [Suspect], iface_of: impl Fn(&str) -> Option<String>) {
    for s in suspects {
        if let Target::Host { host, iface } = &mut s.target
            && (iface.is_empty() || iface == UNKNOWN_IFACE)
        {
            match iface_of(host) {
                Some(known) => *iface = known,
                None if s.decision != Decision::Rank => {
                    s.decision = Decision::Rank;
                    s.why.push_str(" (its interface is unknown: no report from it yet, so no finding)");
                }
                None => {}
            }
        }
    }
}

/// What the leader remembers about objects it filed suspicion on: windows since the last suspicion.
#[derive(Debug, Default)]
pub struct Clearing {
    quiet: BTreeMap<ObjectId, u32>,
}

impl Clearing {
    /// Remember objects found suspect elsewhere (a new leader reads the non-GOOD switches and links).
    pub fn adopt(&mut self, ids: impl IntoIterator<Item = ObjectId>) {
        for id in ids {
            if self.quiet.len() >= MAX_TRACKED_SUSPECTS {
                break;
            }
            self.quiet.entry(id).or_insert(0);
        }
    }

    pub fn len(&self) -> usize {
        self.quiet.len()
    }

    pub fn is_empty(&self) -> bool {
        self.quiet.is_empty()
    }

    /// One closed window: the findings to propose (top suspects first, at most
    /// [`MAX_FINDINGS_PER_WINDOW`]) and the GOOD findings of objects quiet for `clear_windows` windows.
    pub fn window(&mut self, suspects: &[Suspect], window_end_ms: u64, clear_windows: u32) -> Vec<Finding> {
        let mut out: Vec<Finding> = suspects
            .iter()
            .filter_map(|s| finding_of(s, window_end_ms))
            .flat_map(|f| {
                let machine = machine_finding_of(&f);
                std::iter::once(f).chain(machine)
            })
            .take(MAX_FINDINGS_PER_WINDOW)
            .collect();
        let suspected: std::collections::BTreeSet<&ObjectId> = out.iter().map(|f| &f.object).collect();
        let mut cleared = Vec::new();
        for (id, quiet) in self.quiet.iter_mut() {
            if suspected.contains(id) {
                *quiet = 0;
                continue;
            }
            *quiet = quiet.saturating_add(1);
            // At most MAX_FINDINGS_PER_WINDOW clearings a window (the rest stay due and clear next window).
            if *quiet >= clear_windows.max(1) && cleared.len() < MAX_FINDINGS_PER_WINDOW {
                cleared.push(id.clone());
            }
        }
        for id in cleared {
            self.quiet.remove(&id);
            out.push(Finding {
                object: id,
                severity: Severity::Good,
                checker: CHECKER.into(),
                version: VERSION.into(),
                rule: "suspicion-cleared".into(),
                evidence: format!("no suspicion for {} windows", clear_windows.max(1)),
                readings: BTreeMap::new(),
                time_ms: window_end_ms,
                shadow: false,
            });
        }
        for f in out.iter().filter(|f| f.severity.is_fault()) {
            if self.quiet.len() < MAX_TRACKED_SUSPECTS || self.quiet.contains_key(&f.object) {
                self.quiet.insert(f.object.clone(), 0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suspect(target: Target, decision: Decision) -> Suspect {
        Suspect {
            target,
            score: 0.9,
            voters: 3,
            bad_flows: 12,
            flows: 14,
            loss: 0.2,
            why: "12 of 14 flows lost >= 1%".into(),
            evidence: vec!["h1->h9 lost 4/10".into()],
            decision,
        }
    }

    #[test]
    fn switch_and_link_suspects_never_name_a_host() {
        let sw = suspect(Target::Switch("tor-1".into()), Decision::Error);
        let ln = suspect(Target::link("tor-1", "agg-1"), Decision::Error);
        let mut c = Clearing::default();
        let out = c.window(&[sw, ln], 50_000, 3);
        let ids: Vec<String> = out.iter().map(|f| f.object.to_string()).collect();
        assert_eq!(ids, ["switch/tor-1", "link/agg-1--tor-1"]);
        assert!(out.iter().all(|f| f.object.machine_id().is_none()), "no host object: {ids:?}");
        assert!(out.iter().all(|f| f.time_ms == 50_000 && f.severity == Severity::Error));
    }

    #[test]
    fn host_suspects_name_the_nic_and_rank_only_suspects_nothing() {
        let h = suspect(Target::Host { host: "h7".into(), iface: "eth0".into() }, Decision::Error);
        let r = suspect(Target::Switch("tor-2".into()), Decision::Rank);
        let out = Clearing::default().window(&[h, r], 1, 3);
        let ids: Vec<String> = out.iter().map(|f| f.object.to_string()).collect();
        assert_eq!(
            ids,
            ["nic/h7/eth0", "machine/h7"],
            "the NIC and its machine, nothing for the rank-only switch"
        );
        assert!(out[0].evidence.contains("12 of 14") && out[0].evidence.contains("h1->h9"));
        assert_eq!(out[0].readings["flows"], "14");
        assert!(out.iter().all(|f| f.severity == Severity::Error && f.time_ms == 1));
        assert!(out[1].evidence.contains("nic/h7/eth0"), "{}", out[1].evidence);
    }

    #[test]
    fn a_nic_warning_names_no_machine() {
        let h = suspect(Target::Host { host: "h7".into(), iface: "eth0".into() }, Decision::Warning);
        let out = Clearing::default().window(&[h], 1, 3);
        let ids: Vec<String> = out.iter().map(|f| f.object.to_string()).collect();
        assert_eq!(ids, ["nic/h7/eth0"]);
    }

    #[test]
    fn suspicion_clears_after_clear_windows_quiet_windows() {
        let mut c = Clearing::default();
        let sw = suspect(Target::Switch("tor-1".into()), Decision::Warning);
        assert_eq!(c.window(std::slice::from_ref(&sw), 1, 2).len(), 1);
        assert!(c.window(&[], 2, 2).is_empty(), "one quiet window: not yet");
        assert_eq!(c.window(std::slice::from_ref(&sw), 3, 2).len(), 1, "suspect again: quiet count restarts");
        assert!(c.window(&[], 4, 2).is_empty());
        let out = c.window(&[], 5, 2);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].severity, out[0].object.to_string()), (Severity::Good, "switch/tor-1".into()));
        assert_eq!(c.len(), 0);
        assert!(c.window(&[], 6, 2).is_empty(), "cleared once");
    }

    #[test]
    fn a_host_suspect_without_its_own_report_is_named_by_its_last_interface_or_not_filed() {
        let mut s = vec![
            suspect(Target::Host { host: "h1".into(), iface: UNKNOWN_IFACE.into() }, Decision::Error),
            suspect(Target::Host { host: "h2".into(), iface: UNKNOWN_IFACE.into() }, Decision::Error),
        ];
        name_ifaces(&mut s, |h| (h == "h1").then(|| "bond0".to_string()));
        assert_eq!(s[0].target, Target::Host { host: "h1".into(), iface: "bond0".into() });
        assert_eq!(s[1].decision, Decision::Rank);
        let out = Clearing::default().window(&s, 1, 3);
        assert_eq!(
            out.iter().map(|f| f.object.to_string()).collect::<Vec<_>>(),
            ["nic/h1/bond0", "machine/h1"]
        );
    }

    #[test]
    fn clearings_are_bounded_per_window_and_the_rest_clear_next() {
        let mut c = Clearing::default();
        c.adopt((0..MAX_FINDINGS_PER_WINDOW + 5).map(|i| ObjectId::switch(&format!("tor-{i}")).expect("id")));
        let first = c.window(&[], 1, 1);
        assert_eq!(first.len(), MAX_FINDINGS_PER_WINDOW);
        assert!(first.iter().all(|f| f.severity == Severity::Good));
        assert_eq!(c.window(&[], 2, 1).len(), 5, "the rest in the next window");
        assert!(c.is_empty());
    }

    #[test]
    fn one_window_proposes_at_most_the_limit() {
        let many: Vec<Suspect> = (0..MAX_FINDINGS_PER_WINDOW + 10)
            .map(|i| suspect(Target::Switch(format!("tor-{i}")), Decision::Warning))
            .collect();
        let out = Clearing::default().window(&many, 1, 3);
        assert_eq!(out.len(), MAX_FINDINGS_PER_WINDOW);
        assert_eq!(out[0].object.to_string(), "switch/tor-0", "the top suspects first");
    }
}
