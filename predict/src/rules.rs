//! Rule impact (issue 20, part 4): for each rule and each reading, how often its findings preceded an object
//! entering REPAIR within N days (precision), how many REPAIRs it preceded (recall), and how long before
//! (median lead time). Rules that fire often and precede almost nothing are candidates to retire or retune.
//!
//! Input is the export's `findings` and `transitions` tables, row by row through [`crate::data::Row`].
//! Definitions (the DuckDB queries in `deploy/analytics/rules.sql` compute the same):
//! - a *rule event* is a finding with severity SLOW, WARNING or ERROR, keyed by `checker/rule` (GOOD, INFO
//!   and UNKNOWN findings say nothing is wrong and are not counted; shadow findings are skipped: they come
//!   from a gray-release comparison run, not from the checker in force);
//! - a *reading event* is a finding (any severity, not shadow) whose reading — a `smart_N_raw` column or a
//!   numeric entry of its `readings` JSON — is above 0, keyed by the reading's name;
//! - an event *precedes* a REPAIR when the same object enters REPAIR at or after the event and at most the
//!   window later; precision = preceding events / events; a REPAIR is *preceded* by a key when an event of
//!   that key on the object falls in the window before it; recall = preceded REPAIRs / all REPAIRs; lead
//!   time = the REPAIR's time minus the earliest such event's.

use std::collections::{BTreeMap, HashMap};

use crate::data::Row;

/// Most events (finding x key) one analysis holds (~16 bytes each: 1.6 GB at the limit).
pub const MAX_EVENTS: usize = 100_000_000;
/// Longest `readings` JSON parsed per finding; a longer one is an error (the agent's readings are a few
/// hundred bytes).
pub const MAX_READINGS_BYTES: usize = 64 * 1024;
/// Severities that make a finding a rule event.
pub const FIRING_SEVERITIES: [&str; 3] = ["SLOW", "WARNING", "ERROR"];
/// Columns the findings table must have.
pub const FINDINGS_COLUMNS: [&str; 5] = ["time_ms", "object", "checker", "rule", "severity"];
/// Columns the transitions table must have.
pub const TRANSITIONS_COLUMNS: [&str; 3] = ["time_ms", "object", "to_state"];

/// Is this a rule or a reading?
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Rule,
    Reading,
}

/// One rule's or reading's impact.
#[derive(Debug, Clone, PartialEq)]
pub struct Impact {
    pub kind: Kind,
    /// `checker/rule` or the reading's name.
    pub name: String,
    pub findings: u64,
    pub objects: u64,
    /// Events followed by a REPAIR of the object within the window.
    pub preceding: u64,
    /// REPAIRs preceded by an event within the window.
    pub preceded: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// Median over preceded REPAIRs of the time from the earliest event in the window to the REPAIR.
    pub median_lead_ms: Option<i64>,
}

/// The analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub window_ms: i64,
    pub repairs: u64,
    pub repaired_objects: u64,
    pub shadow_skipped: u64,
    /// Rules first, then readings; each by name.
    pub impacts: Vec<Impact>,
}

impl Report {
    /// Rules with at least `min_findings` events whose precision is below `max_precision`.
    pub fn candidates(&self, min_findings: u64, max_precision: f64) -> Vec<&Impact> {
        self.impacts
            .iter()
            .filter(|i| i.kind == Kind::Rule && i.findings >= min_findings)
            .filter(|i| i.precision.is_some_and(|p| p < max_precision))
            .collect()
    }
}

/// Collects events and REPAIRs, then computes the report.
#[derive(Debug, Default)]
pub struct Analysis {
    state: String,
    keys: Vec<(Kind, String)>,
    key_index: HashMap<(Kind, String), u32>,
    objects: HashMap<String, u32>,
    /// (key, object, time_ms)
    events: Vec<(u32, u32, i64)>,
    /// (object, time_ms)
    repairs: Vec<(u32, i64)>,
    shadow_skipped: u64,
    /// [`MAX_EVENTS`] unless a test sets a smaller one.
    pub max_events: usize,
}

fn require(row: &impl Row, c: &str) -> Result<String, String> {
    row.get(c).map(|s| s.trim().to_string()).ok_or_else(|| format!("missing column {c}"))
}

fn time_ms(row: &impl Row) -> Result<i64, String> {
    let t = require(row, "time_ms")?;
    t.parse::<i64>().map_err(|_| format!("time_ms = {t:?} is not an integer"))
}

/// Check a table's header for its required columns.
pub fn check_columns<'a>(table: &str, columns: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let have: std::collections::BTreeSet<&str> = columns.into_iter().collect();
    let want: &[&str] = if table == "transitions" { &TRANSITIONS_COLUMNS } else { &FINDINGS_COLUMNS };
    let missing: Vec<&str> = want.iter().copied().filter(|c| !have.contains(c)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{table}: missing column(s) {}", missing.join(", ")))
    }
}

impl Analysis {
    /// `state`: the state whose entry counts as the outcome (REPAIR).
    pub fn new(state: &str) -> Analysis {
        Analysis { state: state.to_string(), max_events: MAX_EVENTS, ..Default::default() }
    }

    fn object(&mut self, name: &str) -> Result<u32, String> {
        if name.is_empty() {
            return Err("empty object".into());
        }
        let n = self.objects.len() as u32;
        Ok(*self.objects.entry(name.to_string()).or_insert(n))
    }

    fn event(&mut self, kind: Kind, name: &str, object: u32, t: i64) -> Result<(), String> {
        if self.events.len() >= self.max_events {
            return Err(format!("more than {} events; analyse a shorter range", self.max_events));
        }
        let k = (kind, name.to_string());
        let id = match self.key_index.get(&k) {
            Some(&id) => id,
            None => {
                let id = self.keys.len() as u32;
                self.keys.push(k.clone());
                self.key_index.insert(k, id);
                id
            }
        };
        self.events.push((id, object, t));
        Ok(())
    }

    /// One row of the `findings` table.
    pub fn add_finding(&mut self, row: &impl Row) -> Result<(), String> {
        let t = time_ms(row)?;
        let object = require(row, "object")?;
        let checker = require(row, "checker")?;
        let rule = require(row, "rule")?;
        let severity = require(row, "severity")?.to_ascii_uppercase();
        if matches!(row.get("shadow").map(str::trim), Some("true" | "1" | "TRUE" | "True")) {
            self.shadow_skipped += 1;
            return Ok(());
        }
        // Readings first, so a bad one refuses the whole row.
        let mut readings: BTreeMap<String, f64> = BTreeMap::new();
        if let Some(json) = row.get("readings").map(str::trim).filter(|s| !s.is_empty()) {
            if json.len() > MAX_READINGS_BYTES {
                return Err(format!("readings of {} bytes, over {MAX_READINGS_BYTES}", json.len()));
            }
            let v: serde_json::Value =
                serde_json::from_str(json).map_err(|e| format!("readings is not a JSON object: {e}"))?;
            let obj = v.as_object().ok_or("readings is not a JSON object")?;
            for (k, v) in obj {
                if let Some(x) = v.as_f64() {
                    readings.insert(k.clone(), x);
                }
            }
        }
        for attr in crate::ATTRIBUTES {
            let name = crate::raw_column(attr);
            if let Some(text) = row.get(&name)
                && let Some(v) = crate::data::parse_raw(&name, text)?
            {
                readings.insert(name, v);
            }
        }
        let obj = self.object(&object)?;
        if FIRING_SEVERITIES.contains(&severity.as_str()) {
            self.event(Kind::Rule, &format!("{checker}/{rule}"), obj, t)?;
        }
        for (name, v) in readings {
            if v.is_finite() && v > 0.0 {
                self.event(Kind::Reading, &name, obj, t)?;
            }
        }
        Ok(())
    }

    /// One row of the `transitions` table.
    pub fn add_transition(&mut self, row: &impl Row) -> Result<(), String> {
        let t = time_ms(row)?;
        let object = require(row, "object")?;
        if require(row, "to_state")?.eq_ignore_ascii_case(&self.state) {
            let obj = self.object(&object)?;
            self.repairs.push((obj, t));
        }
        Ok(())
    }

    /// The report for a window of `window_ms`.
    pub fn report(&self, window_ms: i64) -> Report {
        let mut repairs_by_object: HashMap<u32, Vec<i64>> = HashMap::new();
        for &(o, t) in &self.repairs {
            repairs_by_object.entry(o).or_default().push(t);
        }
        for v in repairs_by_object.values_mut() {
            v.sort_unstable();
        }
        // Per key: events, preceding events, objects; per (key, object): sorted event times.
        let n = self.keys.len();
        let mut findings = vec![0u64; n];
        let mut preceding = vec![0u64; n];
        let mut times: HashMap<(u32, u32), Vec<i64>> = HashMap::new();
        for &(k, o, t) in &self.events {
            findings[k as usize] += 1;
            if let Some(rs) = repairs_by_object.get(&o) {
                let i = rs.partition_point(|&r| r < t);
                if i < rs.len() && rs[i] - t <= window_ms {
                    preceding[k as usize] += 1;
                }
            }
            times.entry((k, o)).or_default().push(t);
        }
        let mut objects = vec![0u64; n];
        let mut leads: Vec<Vec<i64>> = vec![Vec::new(); n];
        for ((k, o), ts) in &mut times {
            objects[*k as usize] += 1;
            ts.sort_unstable();
            if let Some(rs) = repairs_by_object.get(o) {
                for &r in rs {
                    let i = ts.partition_point(|&t| t < r - window_ms);
                    if i < ts.len() && ts[i] <= r {
                        leads[*k as usize].push(r - ts[i]);
                    }
                }
            }
        }
        let total = self.repairs.len() as u64;
        let mut impacts: Vec<Impact> = (0..n)
            .map(|k| {
                let l = &mut leads[k];
                l.sort_unstable();
                Impact {
                    kind: self.keys[k].0,
                    name: self.keys[k].1.clone(),
                    findings: findings[k],
                    objects: objects[k],
                    preceding: preceding[k],
                    preceded: l.len() as u64,
                    precision: (findings[k] > 0).then(|| preceding[k] as f64 / findings[k] as f64),
                    recall: (total > 0).then(|| l.len() as f64 / total as f64),
                    median_lead_ms: (!l.is_empty()).then(|| l[(l.len() - 1) / 2]),
                }
            })
            .collect();
        impacts.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.name.cmp(&b.name)));
        Report {
            window_ms,
            repairs: total,
            repaired_objects: repairs_by_object.len() as u64,
            shadow_skipped: self.shadow_skipped,
            impacts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn row(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn finding(a: &mut Analysis, t: i64, object: &str, rule: &str, severity: &str, readings: &str) {
        let ts = t.to_string();
        a.add_finding(&row(&[
            ("time_ms", &ts),
            ("object", object),
            ("checker", "c"),
            ("rule", rule),
            ("severity", severity),
            ("readings", readings),
        ]))
        .expect("finding");
    }

    fn repair(a: &mut Analysis, t: i64, object: &str) {
        let ts = t.to_string();
        a.add_transition(&row(&[("time_ms", &ts), ("object", object), ("to_state", "REPAIR")])).expect("t");
    }

    #[test]
    fn precision_recall_and_lead_on_a_known_story() {
        let mut a = Analysis::new("REPAIR");
        // d1: "good" fires 3 and 1 days before its REPAIR; d2: "good" fires 10 days before (outside a 7-day
        // window); "noisy" fires on 5 objects that never enter REPAIR; one INFO finding is not an event.
        finding(&mut a, 7 * DAY, "d1", "good", "WARNING", r#"{"smart_5_raw": 8, "temp": 0}"#);
        finding(&mut a, 9 * DAY, "d1", "good", "ERROR", "");
        repair(&mut a, 10 * DAY, "d1");
        finding(&mut a, 0, "d2", "good", "WARNING", "");
        repair(&mut a, 10 * DAY, "d2");
        for i in 0..5 {
            finding(&mut a, DAY, &format!("n{i}"), "noisy", "WARNING", "");
        }
        finding(&mut a, DAY, "d1", "quiet", "INFO", "");
        a.add_transition(&row(&[("time_ms", "5"), ("object", "d1"), ("to_state", "ERROR")])).expect("t");
        let r = a.report(7 * DAY);
        assert_eq!((r.repairs, r.repaired_objects), (2, 2));
        let get = |n: &str| r.impacts.iter().find(|i| i.name == n).expect(n).clone();
        let good = get("c/good");
        assert_eq!((good.findings, good.objects, good.preceding, good.preceded), (3, 2, 2, 1));
        assert_eq!(good.precision, Some(2.0 / 3.0));
        assert_eq!(good.recall, Some(0.5));
        assert_eq!(good.median_lead_ms, Some(3 * DAY), "earliest event in the window");
        let noisy = get("c/noisy");
        assert_eq!((noisy.findings, noisy.precision, noisy.recall), (5, Some(0.0), Some(0.0)));
        assert!(r.impacts.iter().all(|i| i.name != "c/quiet"), "INFO is not an event");
        let s5 = get("smart_5_raw");
        assert_eq!((s5.kind, s5.findings, s5.preceded), (Kind::Reading, 1, 1));
        assert!(r.impacts.iter().all(|i| i.name != "temp"), "a zero reading is not an event");
        let c = r.candidates(5, 0.05);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "c/noisy");
        assert!(r.candidates(6, 0.05).is_empty(), "at the limit: 5 findings < 6");
        // A wider window catches d2's early warning.
        assert_eq!(a.report(10 * DAY).impacts.iter().find(|i| i.name == "c/good").expect("good").preceded, 2);
    }

    #[test]
    fn bad_rows_are_clear_errors_and_change_nothing() {
        let mut a = Analysis::new("REPAIR");
        let base = [("object", "d"), ("checker", "c"), ("rule", "r"), ("severity", "ERROR")];
        let e = a.add_finding(&row(&[&base[..], &[("time_ms", "soon")]].concat())).expect_err("time");
        assert!(e.contains("time_ms"), "{e}");
        let e = a
            .add_finding(&row(&[&base[..], &[("time_ms", "1"), ("readings", "[1]")]].concat()))
            .expect_err("j");
        assert!(e.contains("readings"), "{e}");
        let e = a
            .add_finding(&row(&[&base[..], &[("time_ms", "1"), ("smart_5_raw", "-3")]].concat()))
            .expect_err("r");
        assert!(e.contains("smart_5_raw"), "{e}");
        assert!(a.add_finding(&row(&[("time_ms", "1")])).is_err());
        assert!(a.report(DAY).impacts.is_empty(), "nothing recorded");
        assert!(check_columns("findings", ["time_ms", "object"]).expect_err("cols").contains("checker"));
        assert!(check_columns("transitions", TRANSITIONS_COLUMNS).is_ok());
        a.add_finding(&row(&[&base[..], &[("time_ms", "1"), ("shadow", "true")]].concat())).expect("shadow");
        assert_eq!(a.report(DAY).shadow_skipped, 1);
        a.max_events = 1;
        a.add_finding(&row(&[&base[..], &[("time_ms", "1")]].concat())).expect("the one event allowed");
        let e = a.add_finding(&row(&[&base[..], &[("time_ms", "2")]].concat())).expect_err("over");
        assert!(e.contains("more than 1 events"), "{e}");
    }
}
