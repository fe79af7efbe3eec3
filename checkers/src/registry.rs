//! The explicit registry of checkers, keyed by `String` name: built-in host checkers, the kernel-log
//! rule-set checker and external checkers from configuration are the same kind of thing here (a boxed
//! [`Checker`] plus what is known about it). Nothing registers itself: the built-in set is listed in
//! [`host_checkers`] so it is reviewable in one place, and everything else is added by whoever builds the
//! registry (the agent from its config), with a clear error on a duplicate or unusable name.

use std::collections::BTreeMap;
use std::time::Duration;

use state_machines::{Kind, ObjectId};

use crate::Checker;
use crate::edac::{EdacChecker, EdacConfig};
use crate::machine::{MachineChecker, MachineConfig};
use crate::nic::{NicChecker, NicConfig};
use crate::scoring::disk::{DiskChecker, DiskConfig};

/// Most checkers one registry holds: a host runs a handful of built-ins and some external checkers; a
/// config listing hundreds is a mistake that would fork hundreds of processes per interval.
pub const MAX_CHECKERS: usize = 128;

/// Where a checker comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Compiled into this binary.
    BuiltIn,
    /// Compiled in, driven by a rule set (the kernel-log checker).
    RuleSet,
    /// A script or binary run by [`crate::external`].
    External,
}

/// What the registry says about one checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckerInfo {
    pub name: String,
    pub version: String,
    pub kinds: Vec<Kind>,
    pub interval: Duration,
    pub source: Source,
    /// It grades with other checkers' findings (see [`Checker::consumes_inputs`]).
    pub consumes_inputs: bool,
}

impl CheckerInfo {
    pub fn of(c: &dyn Checker, source: Source) -> Self {
        CheckerInfo {
            name: c.name().to_string(),
            version: c.version().to_string(),
            kinds: c.kinds().to_vec(),
            interval: c.default_interval(),
            source,
            consumes_inputs: c.consumes_inputs(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("checker {0:?} is registered twice")]
    Duplicate(String),
    #[error("checker name {name:?} is unusable: {reason}")]
    BadName { name: String, reason: String },
    #[error("more than {MAX_CHECKERS} checkers")]
    TooMany,
}

/// Checks that `name` can name a `checker/HOST/NAME` object (the object a broken checker is reported on).
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    ObjectId::new(Kind::Checker, "h", Some(name))
        .map(|_| ())
        .map_err(|e| RegistryError::BadName { name: name.to_string(), reason: e.to_string() })
}

/// Checkers by name, in name order.
#[derive(Default)]
pub struct Registry {
    entries: BTreeMap<String, (CheckerInfo, Box<dyn Checker>)>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Add one checker; refuses a second checker of the same name and names that cannot be object names.
    pub fn insert(&mut self, checker: Box<dyn Checker>, source: Source) -> Result<(), RegistryError> {
        let name = checker.name().to_string();
        validate_name(&name)?;
        if self.entries.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        if self.entries.len() >= MAX_CHECKERS {
            return Err(RegistryError::TooMany);
        }
        let info = CheckerInfo::of(checker.as_ref(), source);
        self.entries.insert(name, (info, checker));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&CheckerInfo> {
        self.entries.get(name).map(|(i, _)| i)
    }

    /// What is registered, in name order.
    pub fn infos(&self) -> impl Iterator<Item = &CheckerInfo> {
        self.entries.values().map(|(i, _)| i)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take one checker out (to schedule it).
    pub fn remove(&mut self, name: &str) -> Option<(CheckerInfo, Box<dyn Checker>)> {
        self.entries.remove(name)
    }
}

/// Configuration of every host checker.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    pub disk: DiskConfig,
    pub edac: EdacConfig,
    pub nic: NicConfig,
    pub machine: MachineConfig,
    /// Where the rasdaemon checker goes on (the agent's committed checkpoint; None: from the newest rows).
    pub rasdaemon_resume: Option<crate::rasdaemon::RasCursor>,
    /// The SMART trend baselines the disk checker last checkpointed (None: every disk starts a baseline).
    pub smart_trend_resume: Option<crate::scoring::trend::SmartTrend>,
    /// The per-disk SMART histories the disk checker last checkpointed (None: every history starts empty).
    pub smart_history_resume: Option<crate::scoring::history::Histories>,
    /// The master's clock as the agent's heartbeats measure it, judged by the machine checker (None: not
    /// judged).
    pub master_clock: Option<std::sync::Arc<crate::machine::MasterClock>>,
}

/// The host checkers, in a fixed order.
pub fn host_checkers(cfg: &HostConfig) -> Vec<Box<dyn Checker>> {
    let machine = MachineChecker::new(cfg.machine.clone());
    vec![
        Box::new(DiskChecker::resuming_with(
            cfg.disk.clone(),
            cfg.smart_trend_resume.clone().unwrap_or_default(),
            cfg.smart_history_resume.clone().unwrap_or_default(),
        )),
        Box::new(EdacChecker::new(cfg.edac)),
        Box::new(NicChecker::new(cfg.nic.clone())),
        Box::new(match &cfg.master_clock {
            Some(c) => machine.with_master_clock(std::sync::Arc::clone(c)),
            None => machine,
        }),
        Box::new(crate::rasdaemon::RasdaemonChecker::resuming(
            cfg.rasdaemon_resume.clone().unwrap_or_default(),
        )),
    ]
}

/// Name, version, kinds and interval of every host checker.
pub fn catalog() -> Vec<CheckerInfo> {
    host_checkers(&HostConfig::default())
        .iter()
        .map(|c| CheckerInfo::of(c.as_ref(), Source::BuiltIn))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckContext, CheckError};
    use state_machines::Finding;

    #[test]
    fn catalog_is_explicit_and_unique() {
        let c = catalog();
        let names: Vec<&str> = c.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["disk", "edac", "nic", "machine", "rasdaemon"]);
        for i in &c {
            assert!(!i.kinds.is_empty() && !i.kinds.contains(&Kind::Checker), "{i:?}");
            assert!(i.interval >= Duration::from_secs(10), "{i:?}");
            assert_eq!(i.version.split('.').count(), 3, "semantic version: {i:?}");
        }
    }

    /// A checker whose name is only known at run time (as an external checker's is).
    struct Named(String);

    impl Checker for Named {
        fn name(&self) -> &str {
            &self.0
        }
        fn version(&self) -> &str {
            "1.0.0"
        }
        fn kinds(&self) -> &[Kind] {
            &[Kind::Disk]
        }
        fn default_interval(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn run(&mut self, _: &CheckContext) -> Result<Vec<Finding>, CheckError> {
            Ok(vec![])
        }
    }

    #[test]
    fn registry_holds_built_in_and_runtime_named_checkers_alike() {
        let mut r = Registry::new();
        for c in host_checkers(&HostConfig::default()) {
            r.insert(c, Source::BuiltIn).unwrap();
        }
        r.insert(Box::new(Named(format!("raid{}", 1))), Source::External).unwrap();
        assert_eq!(r.len(), 6);
        assert_eq!(r.info("raid1").map(|i| i.source), Some(Source::External));
        assert!(r.info("disk").is_some_and(|i| i.consumes_inputs));
        assert!(
            r.info("edac").is_some_and(|i| i.consumes_inputs),
            "edac counts kernel CE lines without sysfs"
        );
        assert!(r.info("nic").is_some_and(|i| !i.consumes_inputs));
        assert_eq!(
            r.insert(Box::new(Named("disk".into())), Source::External),
            Err(RegistryError::Duplicate("disk".into()))
        );
        assert!(matches!(
            r.insert(Box::new(Named("bad name".into())), Source::External),
            Err(RegistryError::BadName { .. })
        ));
        assert_eq!(r.len(), 6, "refused inserts change nothing");
    }

    #[test]
    fn registry_is_bounded() {
        let mut r = Registry::new();
        for i in 0..MAX_CHECKERS {
            r.insert(Box::new(Named(format!("c{i}"))), Source::External).unwrap();
        }
        assert_eq!(
            r.insert(Box::new(Named("one-more".into())), Source::External),
            Err(RegistryError::TooMany)
        );
        assert_eq!(r.len(), MAX_CHECKERS);
    }
}
