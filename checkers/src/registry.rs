//! The explicit registry of host checkers: name, version, object kinds and default interval of each, and
//! a constructor for the set an agent (or `huatuo check host`) runs. Nothing registers itself: adding a
//! checker means adding it here, so the list is reviewable in one place. The kernel-log checker is
//! added by the lead when it is wired in; external checkers are listed by the catalog, not here.

use std::time::Duration;

use state_machines::Kind;

use crate::Checker;
use crate::edac::{EdacChecker, EdacConfig};
use crate::machine::{MachineChecker, MachineConfig};
use crate::nic::{NicChecker, NicConfig};
use crate::scoring::disk::{DiskChecker, DiskConfig};

/// What the registry says about one checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckerInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub kinds: &'static [Kind],
    pub interval: Duration,
}

/// Configuration of every host checker.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    pub disk: DiskConfig,
    pub edac: EdacConfig,
    pub nic: NicConfig,
    pub machine: MachineConfig,
}

/// The host checkers, in a fixed order.
pub fn host_checkers(cfg: &HostConfig) -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(DiskChecker::new(cfg.disk.clone())),
        Box::new(EdacChecker::new(cfg.edac)),
        Box::new(NicChecker::new(cfg.nic.clone())),
        Box::new(MachineChecker::new(cfg.machine.clone())),
    ]
}

/// Name, version, kinds and interval of every host checker.
pub fn catalog() -> Vec<CheckerInfo> {
    host_checkers(&HostConfig::default())
        .iter()
        .map(|c| CheckerInfo {
            name: c.name(),
            version: c.version(),
            kinds: c.kinds(),
            interval: c.default_interval(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_explicit_and_unique() {
        let c = catalog();
        let names: Vec<&str> = c.iter().map(|i| i.name).collect();
        assert_eq!(names, vec!["disk", "edac", "nic", "machine"]);
        for i in &c {
            assert!(!i.kinds.is_empty() && !i.kinds.contains(&Kind::Checker), "{i:?}");
            assert!(i.interval >= Duration::from_secs(10), "{i:?}");
            assert_eq!(i.version.split('.').count(), 3, "semantic version: {i:?}");
        }
    }
}
