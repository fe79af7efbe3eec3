//! Every rule of the default set against real lines: `checkers/testdata/kernel-log/rule-cases.toml` lists,
//! per rule, real kernel lines that must fire it (each with the public post or fixture file it was read
//! from) and real look-alikes that must not. A rule without a real line must say why in the table. The
//! checks live in [`problems`], so the tests below can also show that a broken table is caught.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::parse::{Format, parse_line};
use super::rules::RuleSet;

/// Shortest reason accepted for a rule without a real line (a word or two is not a reason).
const MIN_REASON_LEN: usize = 40;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    rule: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    id: String,
    #[serde(default)]
    real: Vec<Line>,
    #[serde(default)]
    no_real_line: Option<String>,
    #[serde(default)]
    look_alikes: Vec<Line>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    line: String,
    source: String,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for readers of the table
    note: Option<String>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kernel-log")
}

fn load_table() -> Table {
    let path = testdata().join("rule-cases.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// line -> source URL of the shared real-line set (`real-lines/lines.tsv`).
fn shared_set() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(testdata().join("real-lines/lines.tsv")).expect("real-lines/lines.tsv");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c.len() == 5).then(|| (c[4].to_string(), c[3].to_string()))
        })
        .collect()
}

/// The ids of the rules `line` fires, with the object name each hit built.
fn fired(rules: &RuleSet, line: &str) -> Vec<(String, Option<String>)> {
    let rec = parse_line(line.as_bytes(), Format::Plain, 2025);
    let mut scratch = rules.scratch();
    let mut out = Vec::new();
    if rec.kernel {
        rules.scan(&mut scratch, rec.msg, |h| out.push((rules.rules()[h.rule].id.clone(), h.name)));
    }
    out
}

/// Where a source is wrong, why (None: fine).
fn bad_source(src: &str, line: &str, shared: &BTreeMap<String, String>) -> Option<String> {
    if let Some(url) = shared.get(line)
        && url != src
    {
        return Some(format!("the shared set (real-lines/lines.tsv) has this line from {url}, not {src}"));
    }
    if src.starts_with("https://") && src.len() > "https://".len() + 4 {
        return None;
    }
    let Some(rel) = src.strip_prefix("fixture:") else {
        return Some(format!("source {src:?}: give an https:// URL or fixture:PATH"));
    };
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Some(format!("source {src:?}: a relative path below checkers/testdata/kernel-log"));
    }
    match std::fs::read(testdata().join(rel)) {
        Err(e) => Some(format!("source {src:?}: {e}")),
        Ok(bytes) if !String::from_utf8_lossy(&bytes).lines().any(|l| l.contains(line)) => {
            Some(format!("source {src:?} does not contain the line verbatim"))
        }
        Ok(_) => None,
    }
}

/// Everything wrong with `table` against `rules`, one message per problem.
fn problems(table: &Table, rules: &RuleSet) -> Vec<String> {
    let shared = shared_set();
    let mut out = Vec::new();
    let ids: BTreeSet<&str> = rules.rules().iter().map(|r| r.id.as_str()).collect();
    let mut seen = BTreeSet::new();
    for case in &table.rule {
        let id = case.id.as_str();
        if !ids.contains(id) {
            out.push(format!("{id}: not a rule of the default set"));
        }
        if !seen.insert(id) {
            out.push(format!("{id}: listed twice"));
        }
        match (&case.no_real_line, case.real.is_empty()) {
            (None, true) => {
                out.push(format!("{id}: no real line fires it (add one, or say why in no_real_line)"))
            }
            (Some(_), false) => out.push(format!("{id}: has real lines and a no_real_line reason")),
            (Some(why), true) if why.trim().len() < MIN_REASON_LEN => {
                out.push(format!("{id}: no_real_line needs a reason of {MIN_REASON_LEN}+ characters"))
            }
            _ => {}
        }
        if case.look_alikes.is_empty() {
            out.push(format!("{id}: no look-alike"));
        }
        for l in &case.real {
            if let Some(why) = bad_source(&l.source, &l.line, &shared) {
                out.push(format!("{id}: real line {:?}: {why}", l.line));
            }
            let hits: Vec<Option<String>> =
                fired(rules, &l.line).into_iter().filter(|(r, _)| r == id).map(|(_, n)| n).collect();
            if hits.is_empty() {
                out.push(format!("{id}: real line does not fire it: {:?}", l.line));
            } else if let Some(want) = &l.object
                && !hits.iter().any(|n| n.as_deref() == Some(want.as_str()))
            {
                out.push(format!("{id}: real line {:?} names {hits:?}, expected {want:?}", l.line));
            }
        }
        for l in &case.look_alikes {
            if let Some(why) = bad_source(&l.source, &l.line, &shared) {
                out.push(format!("{id}: look-alike {:?}: {why}", l.line));
            }
            if fired(rules, &l.line).iter().any(|(r, _)| r == id) {
                out.push(format!("{id}: look-alike fires it: {:?}", l.line));
            }
        }
    }
    for id in ids.difference(&seen) {
        out.push(format!("{id}: rule of the default set without a case in rule-cases.toml"));
    }
    out
}

#[test]
fn every_default_rule_has_real_lines_and_look_alikes() {
    let rules = RuleSet::default_rules().unwrap();
    let table = load_table();
    let found = problems(&table, &rules);
    let real: usize = table.rule.iter().map(|c| c.real.len()).sum();
    let alikes: usize = table.rule.iter().map(|c| c.look_alikes.len()).sum();
    let without: Vec<&str> =
        table.rule.iter().filter(|c| c.no_real_line.is_some()).map(|c| c.id.as_str()).collect();
    println!(
        "rule cases: {} rules, {real} real lines, {alikes} look-alikes; without a real line: {without:?}",
        table.rule.len()
    );
    assert!(found.is_empty(), "{} problems:\n{}", found.len(), found.join("\n"));
}

/// The check fails where it should: a rule without a case, a real line that does not fire, a look-alike that
/// fires, a source that does not hold the line, a wrong object.
#[test]
fn broken_tables_are_caught() {
    let rules = RuleSet::default_rules().unwrap();
    let table = load_table();
    let first = table.rule[0].id.clone();

    let mut t = table.clone();
    t.rule.remove(0);
    assert!(problems(&t, &rules).iter().any(|p| p.starts_with(&first) && p.contains("without a case")));

    let mut t = table.clone();
    t.rule[0].real[0].line = "EXT4-fs (sdd): recovery complete".into();
    assert!(problems(&t, &rules).iter().any(|p| p.contains("does not fire")));

    let mut t = table.clone();
    let fault = t.rule[0].real[0].clone();
    t.rule[0].look_alikes.push(fault);
    assert!(problems(&t, &rules).iter().any(|p| p.contains("look-alike fires it")));

    let mut t = table.clone();
    t.rule[0].real.clear();
    assert!(problems(&t, &rules).iter().any(|p| p.contains("no real line fires it")));
    t.rule[0].no_real_line = Some("short".into());
    assert!(problems(&t, &rules).iter().any(|p| p.contains("needs a reason")));

    let mut t = table.clone();
    let i = t.rule.iter().position(|c| c.real.iter().any(|l| l.source.starts_with("fixture:"))).unwrap();
    let j = t.rule[i].real.iter().position(|l| l.source.starts_with("fixture:")).unwrap();
    t.rule[i].real[j].source = "fixture:loghub/Linux_2k.log".into();
    assert!(problems(&t, &rules).iter().any(|p| p.contains("does not contain the line")));
    t.rule[i].real[j].source = "fixture:../../Cargo.toml".into();
    assert!(problems(&t, &rules).iter().any(|p| p.contains("relative path")));

    let mut t = table.clone();
    let i = t.rule.iter().position(|c| c.real.iter().any(|l| l.object.is_some())).unwrap();
    let j = t.rule[i].real.iter().position(|l| l.object.is_some()).unwrap();
    t.rule[i].real[j].object = Some("sdzz".into());
    assert!(problems(&t, &rules).iter().any(|p| p.contains("expected \"sdzz\"")));
}
