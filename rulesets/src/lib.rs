//! Rule sets, pure: the kernel-log rule-file compiler ([`rules`]), the structured-record decoders its rules
//! name ([`decode`]) and object-name normalisation ([`object`]), moved out of the `checkers` crate so the
//! master validates a pushed rule set with the very compiler the agent runs (the master never depends on
//! `checkers`; `checkers::kernel_log` re-exports these modules). Also what the master seeds into a new
//! cluster's catalog ([`seeds`]: the default rule set and disk scoring profiles the agent embeds) and the
//! list of checkers compiled into the agent ([`BUILTIN_CHECKERS`]), shown read-only in the catalog.
//! No tokio, no IO beyond reading a rule file the caller names.

pub mod decode;
pub mod object;
pub mod profile;
pub mod rules;

/// A checker compiled into the agent: its name, version and the object kinds it reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinChecker {
    pub name: &'static str,
    pub version: &'static str,
    pub kinds: &'static [&'static str],
}

/// The agent's compiled checkers (the names and versions in `checkers/src/{machine,scoring/disk,nic,edac,
/// rasdaemon}.rs` and `checkers::kernel_log`; `checkers`' tests check this list against them).
pub const BUILTIN_CHECKERS: &[BuiltinChecker] = &[
    BuiltinChecker { name: "disk", version: "1.0.0", kinds: &["disk"] },
    BuiltinChecker { name: "edac", version: "1.1.0", kinds: &["dimm"] },
    BuiltinChecker { name: "kernel-log", version: "0.1.0", kinds: &["disk", "dimm", "nic", "machine"] },
    BuiltinChecker { name: "machine", version: "1.1.0", kinds: &["machine"] },
    BuiltinChecker { name: "nic", version: "1.0.0", kinds: &["nic"] },
    BuiltinChecker { name: "rasdaemon", version: "1.0.0", kinds: &["dimm", "disk"] },
];

/// Catalog artifacts a new cluster starts with, as version [`seeds::SEED_VERSION`]: the bytes the agent embeds.
pub mod seeds {
    /// The version every seeded artifact gets.
    pub const SEED_VERSION: &str = "1";
    /// One seeded artifact: catalog name, type (`rules` or `profile`), description, bytes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Seed {
        pub name: &'static str,
        pub kind: &'static str,
        pub description: &'static str,
        pub content: &'static str,
    }
    /// The default kernel-log rule set and the three disk scoring profiles (a profile's catalog name is its
    /// `name`, so the agent replaces the built-in profile of the same name).
    pub const SEEDS: &[Seed] = &[
        Seed {
            name: "kernel-log",
            kind: "rules",
            description: "default kernel-log rule set (seeded from the agent's embedded copy)",
            content: crate::rules::DEFAULT_RULES,
        },
        Seed {
            name: "online",
            kind: "profile",
            description: "disk scoring profile online (seeded)",
            content: include_str!("../../checkers/profiles/online.toml"),
        },
        Seed {
            name: "offline",
            kind: "profile",
            description: "disk scoring profile offline (seeded)",
            content: include_str!("../../checkers/profiles/offline.toml"),
        },
        Seed {
            name: "archive",
            kind: "profile",
            description: "disk scoring profile archive (seeded)",
            content: include_str!("../../checkers/profiles/archive.toml"),
        },
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_validate_with_the_same_checks_the_master_runs() {
        for s in seeds::SEEDS {
            match s.kind {
                "rules" => {
                    rules::RuleSet::from_sources(&[(s.name.to_string(), s.content.to_string())])
                        .expect("default rule set compiles");
                }
                _ => {
                    profile::check(s.content, s.name).expect("seeded profile passes");
                }
            }
        }
    }
}
