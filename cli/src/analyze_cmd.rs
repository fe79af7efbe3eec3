//! `huatuo analyze rules --from EXPORT_DIR` (issue 20, part 4): which rules and readings preceded objects
//! entering REPAIR, and which fire often and precede nothing (candidates to retire or retune). Reads the
//! export's `findings` and `transitions` tables; the definitions are in `predict::rules`, the same queries for
//! DuckDB in `deploy/analytics/rules.sql`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use predict::rules::{Analysis, Impact, Kind, check_columns};

use crate::predict_cmd::{for_each_row, table_files};

#[derive(Subcommand, Debug)]
pub enum AnalyzeCmd {
    /// Per rule and per reading: findings, objects, REPAIRs preceded within N days, precision, recall, median
    /// lead time; then the rules to retire or retune.
    Rules(RulesArgs),
}

/// Longest window accepted: a year (an event a year before a repair says nothing about it).
const MAX_WINDOW_DAYS: u32 = 366;

#[derive(Args, Debug)]
pub struct RulesArgs {
    /// A `huatuo export --format csv` directory (its findings/ and transitions/ tables).
    #[arg(long)]
    from: PathBuf,
    /// An event precedes a REPAIR entered at most this many days later.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// The state whose entry is the outcome.
    #[arg(long, default_value = "REPAIR")]
    state: String,
    /// A rule is a candidate to retire or retune with at least this many findings ...
    #[arg(long, default_value_t = 10)]
    min_findings: u64,
    /// ... and a precision below this.
    #[arg(long, default_value_t = 0.05)]
    max_precision: f64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.1}%", x * 100.0))
}

fn lead(ms: Option<i64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.1}d", ms as f64 / 86_400_000.0))
}

fn json(i: &Impact, candidate: bool) -> serde_json::Value {
    serde_json::json!({
        "kind": if i.kind == Kind::Rule { "rule" } else { "reading" },
        "name": i.name,
        "findings": i.findings,
        "objects": i.objects,
        "preceding_findings": i.preceding,
        "repairs_preceded": i.preceded,
        "precision": i.precision,
        "recall": i.recall,
        "median_lead_ms": i.median_lead_ms,
        "retire_candidate": candidate,
    })
}

pub fn run(c: AnalyzeCmd) -> anyhow::Result<ExitCode> {
    let AnalyzeCmd::Rules(a) = c;
    if a.days == 0 || a.days > MAX_WINDOW_DAYS {
        bail!("--days {}: 1..={MAX_WINDOW_DAYS} wanted", a.days);
    }
    if !(0.0..=1.0).contains(&a.max_precision) {
        bail!("--max-precision {} is not a fraction", a.max_precision);
    }
    let mut an = Analysis::new(&a.state);
    let mut findings = 0;
    for f in table_files(&a.from, "findings")? {
        findings += for_each_row(&f, |h| check_columns("findings", h.columns()), |row| an.add_finding(row))?;
    }
    let mut transitions = 0;
    for f in table_files(&a.from, "transitions")? {
        transitions +=
            for_each_row(&f, |h| check_columns("transitions", h.columns()), |row| an.add_transition(row))?;
    }
    let r = an.report(i64::from(a.days) * 86_400_000);
    let cands = r.candidates(a.min_findings, a.max_precision);
    let is_cand = |i: &Impact| cands.iter().any(|c| c.kind == i.kind && c.name == i.name);
    if a.json {
        for i in &r.impacts {
            println!("{}", json(i, is_cand(i)));
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{findings} findings ({} shadow skipped), {transitions} transitions: {} entries into {} on {} objects; \
         window {} days",
        r.shadow_skipped, r.repairs, a.state, r.repaired_objects, a.days
    );
    println!(
        "{:<8} {:<40} {:>9} {:>8} {:>9} {:>10} {:>8} {:>6}",
        "kind", "name", "findings", "objects", "preceded", "precision", "recall", "lead"
    );
    for i in &r.impacts {
        println!(
            "{:<8} {:<40} {:>9} {:>8} {:>9} {:>10} {:>8} {:>6}",
            if i.kind == Kind::Rule { "rule" } else { "reading" },
            i.name,
            i.findings,
            i.objects,
            i.preceded,
            pct(i.precision),
            pct(i.recall),
            lead(i.median_lead_ms)
        );
    }
    println!(
        "candidates to retire or retune (rules with >= {} findings and precision < {}):",
        a.min_findings,
        pct(Some(a.max_precision))
    );
    if cands.is_empty() {
        println!("  none");
    }
    for c in &cands {
        println!(
            "  {}: {} findings on {} objects, precision {}, preceded {} of {} {}",
            c.name,
            c.findings,
            c.objects,
            pct(c.precision),
            c.preceded,
            r.repairs,
            a.state
        );
    }
    Ok(ExitCode::SUCCESS)
}
