//! The catalog lists the agent's compiled checkers from `rulesets::BUILTIN_CHECKERS` (the master never
//! depends on `checkers`); this keeps that list equal to what is compiled here.

use checkers::{edac, kernel_log, machine, nic, rasdaemon, scoring};

#[test]
fn builtin_checker_list_matches_the_compiled_checkers() {
    let compiled = [
        (scoring::disk::NAME, scoring::disk::VERSION),
        (edac::NAME, edac::VERSION),
        (kernel_log::CHECKER_NAME, kernel_log::CHECKER_VERSION),
        (machine::NAME, machine::VERSION),
        (nic::NAME, nic::VERSION),
        (rasdaemon::NAME, rasdaemon::VERSION),
    ];
    let listed: Vec<(&str, &str)> = rulesets::BUILTIN_CHECKERS.iter().map(|b| (b.name, b.version)).collect();
    assert_eq!(listed, compiled.to_vec());
}
