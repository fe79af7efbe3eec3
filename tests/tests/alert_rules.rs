//! The shipped Prometheus alert rules (`deploy/prometheus/huatuo-alerts.yml`) parse, and fire when and as
//! their unit tests (`deploy/prometheus/huatuo-alerts.test.yml`) say: `promtool check rules` and `promtool
//! test rules`, from Debian's `prometheus` package, which `.ci/run` installs. That every metric they name is
//! exported by a real master is checked by `safety_drills.rs` (`avalanche_drill`'s scrape of a real leader).

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out =
        Command::new("promtool").args(args).current_dir(deploy()).output().unwrap_or_else(|e| {
            panic!("promtool: {e} (install Debian's `prometheus` package, as .ci/run does)")
        });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_parse_and_fire_as_their_unit_tests_say() {
    let checked = promtool(&["check", "rules", "huatuo-alerts.yml"]);
    let rules = std::fs::read_to_string(deploy().join("huatuo-alerts.yml")).expect("rules");
    let n = rules.matches("- alert: ").count();
    assert!(n > 0 && checked.contains(&format!("SUCCESS: {n} rules found")), "{checked}");
    let tested = promtool(&["test", "rules", "huatuo-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}
