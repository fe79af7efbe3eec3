//! Chart data for the portal (issue 19): transitions into chosen states per hour and kind from the
//! replicated hourly counters (`fsm/counts.rs`, `h/HOUR/KIND/STATE`), with the quotas that limit them, and
//! the rack x state heatmap from the per-scope counts (`s/rack=R/KIND/STATE`). Both read counter rows only,
//! never an object or a history: the cost is bounded by hours x kinds x states and racks x kinds x states.

use std::collections::BTreeMap;

use proto::error::ApiError;
use serde::{Deserialize, Serialize};
use state_machines::{Kind, State};

use super::Service;
use crate::fsm::counts::{self, HOUR_MS, HOURLY_KEEP_HOURS};
use crate::safety::Limit;
use crate::store::{Reader, StoreError};

/// Longest transitions chart in hours: what the counters keep (8 days).
pub const MAX_CHART_HOURS: u64 = HOURLY_KEEP_HOURS;
/// Default transitions chart: the last 7 days.
pub const DEFAULT_CHART_HOURS: u64 = 168;
/// Racks drawn in the heatmap (the rest are summed into `other`): a 500-row SVG still draws in well under a
/// second on a laptop; more would be a wall of cells nobody reads.
pub const MAX_HEATMAP_RACKS: usize = 500;
/// The target states charted when the client names none.
pub const DEFAULT_TO: [&str; 2] = ["ERROR", "REPAIR"];
/// The states a quota limits entries into (`safety.rs`: entries into ERROR/FIX/REPAIR).
pub const QUOTA_STATES: [&str; 3] = ["ERROR", "FIX", "REPAIR"];

/// One series of the transitions chart: transitions of `kind` objects into `to` per hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionSeries {
    pub kind: String,
    pub to: String,
    /// One count per hour of `hours_ms`.
    pub counts: Vec<u64>,
    pub total: u64,
}

/// A quota as the chart draws it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChartQuota {
    pub kind: String,
    /// `cluster` or a label key (one limit per value).
    pub scope: String,
    pub window_ms: u64,
    /// As configured (`50`, `0.5%`).
    pub max_entries: String,
    /// The limit for the cluster scope now (a percentage of the kind's population); None for per-label
    /// quotas (one limit per rack, not comparable with the fleet's total).
    pub limit: Option<u64>,
    /// The population the limit was computed from (cluster scope).
    pub population: u64,
    /// `limit` per hour: `limit` itself for a one-hour window; otherwise `limit * 1h / window`, the average
    /// rate the quota allows (the quota caps any sliding window, not a clock hour).
    pub per_hour: Option<f64>,
    /// What the legend says.
    pub text: String,
}

/// `GET /api/v1/charts/transitions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionsChart {
    /// Start of each hour charted, oldest first; the last is the current hour (this node's clock).
    pub hours_ms: Vec<u64>,
    pub to: Vec<String>,
    pub series: Vec<TransitionSeries>,
    pub quotas: Vec<ChartQuota>,
    /// The states a quota counts entries into (the chart's `to` may be a subset).
    pub quota_states: Vec<String>,
    pub revision: u64,
}

/// Check the chart's query: `hours` in 1..=[`MAX_CHART_HOURS`] (0: the default), `to` a comma list of
/// state names (empty: [`DEFAULT_TO`]).
pub fn parse_transitions_query(hours: u64, to: &str) -> Result<(u64, Vec<String>), ApiError> {
    let hours = if hours == 0 { DEFAULT_CHART_HOURS } else { hours };
    if hours > MAX_CHART_HOURS {
        return Err(ApiError::invalid(format!(
            "hours={hours}: at most {MAX_CHART_HOURS} (the hourly counters keep {HOURLY_KEEP_HOURS} hours)"
        )));
    }
    let mut states = Vec::new();
    for s in to.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let st = State::ALL
            .iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ApiError::invalid(format!("to={s}: not a state (one of {:?})", State::ALL)))?;
        if !states.iter().any(|x| x == st.as_str()) {
            states.push(st.as_str().to_string());
        }
    }
    if states.is_empty() {
        states = DEFAULT_TO.iter().map(|s| s.to_string()).collect();
    }
    Ok((hours, states))
}

/// The transitions chart as `r` holds it: `hours` hours ending with the hour of `now_ms`.
pub fn transitions_of(
    r: &Reader,
    now_ms: u64,
    hours: u64,
    to: &[String],
) -> Result<TransitionsChart, StoreError> {
    let last = counts::hour_of(now_ms);
    let first = last.saturating_sub((hours - 1) * HOUR_MS);
    let hours_ms: Vec<u64> = (0..hours).map(|i| first + i * HOUR_MS).collect();
    let mut by: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (key, n) in r.counts(counts::HOURLY)? {
        let Some((hour, kind, state)) = counts::parse_hourly(&key) else { continue };
        if hour < first || hour > last || !to.iter().any(|t| t == state) {
            continue;
        }
        let row = by.entry((kind.to_string(), state.to_string())).or_insert_with(|| vec![0; hours as usize]);
        row[((hour - first) / HOUR_MS) as usize] += n;
    }
    // Every charted state of a kind that has any, so each kind's chart has the same bars.
    let kinds: Vec<String> = {
        let mut k: Vec<String> = by.keys().map(|(k, _)| k.clone()).collect();
        k.dedup();
        k
    };
    let mut series = Vec::new();
    for kind in &kinds {
        for state in to {
            let counts = by.remove(&(kind.clone(), state.clone())).unwrap_or_else(|| vec![0; hours as usize]);
            let total = counts.iter().sum();
            series.push(TransitionSeries { kind: kind.clone(), to: state.clone(), counts, total });
        }
    }
    let cfg = r.safety_config()?;
    let cluster = r.scope(crate::safety::CLUSTER)?.unwrap_or_default();
    let mut quotas = Vec::new();
    for rule in &cfg.quotas {
        let applies: Vec<&str> = if rule.kind == "*" {
            Kind::ALL.iter().filter(|k| **k != Kind::Checker).map(|k| k.as_str()).collect()
        } else {
            vec![rule.kind.as_str()]
        };
        for kind in applies {
            if rule.kind == "*" && !kinds.iter().any(|k| k == kind) {
                continue;
            }
            let population = cluster.kinds.get(kind).map_or(0, |k| k.population);
            let window = crate::safety::human_ms(rule.window_ms);
            let (limit, per_hour, text) = if rule.scope == crate::safety::CLUSTER {
                let limit = rule.max_entries.of(population);
                let per_hour = limit as f64 * HOUR_MS as f64 / rule.window_ms.max(1) as f64;
                let of = match rule.max_entries {
                    Limit::Percent(_) => format!(" of {population}"),
                    Limit::Count(_) => String::new(),
                };
                let text = if rule.window_ms == HOUR_MS {
                    format!(
                        "quota {kind}: {} ({limit}{of}) entries into ERROR/FIX/REPAIR per sliding {window}, cluster-wide",
                        rule.max_entries
                    )
                } else {
                    format!(
                        "quota {kind}: {} ({limit}{of}) entries into ERROR/FIX/REPAIR per sliding {window}, cluster-wide; drawn as its average {per_hour:.1} per hour",
                        rule.max_entries
                    )
                };
                (Some(limit), Some(per_hour), text)
            } else {
                let text = format!(
                    "quota {kind}: {} entries per sliding {window} per {} (not drawn: one limit per {} value)",
                    rule.max_entries, rule.scope, rule.scope
                );
                (None, None, text)
            };
            quotas.push(ChartQuota {
                kind: kind.to_string(),
                scope: rule.scope.clone(),
                window_ms: rule.window_ms,
                max_entries: rule.max_entries.to_string(),
                limit,
                population,
                per_hour,
                text,
            });
        }
    }
    Ok(TransitionsChart {
        hours_ms,
        to: to.to_vec(),
        series,
        quotas,
        quota_states: QUOTA_STATES.iter().map(|s| s.to_string()).collect(),
        revision: r.revision()?,
    })
}

/// One row of the heatmap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackRow {
    /// The label value (`r12`); `other` sums the racks beyond the limit.
    pub rack: String,
    /// Objects per state (every charted kind summed).
    pub counts: BTreeMap<String, u64>,
    pub total: u64,
    /// Objects in ERROR/FIX/REPAIR (the order rows are drawn in).
    pub out_of_service: u64,
}

/// `GET /api/v1/charts/racks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RacksChart {
    /// The label racks are named by (`rack`).
    pub label: String,
    /// The kind counted (empty: every kind but checkers).
    pub kind: String,
    /// Whether `label` is one of the safety config's scope labels (only those are counted per value).
    pub scoped: bool,
    pub states: Vec<String>,
    /// At most [`MAX_HEATMAP_RACKS`], most objects out of service first, then by name.
    pub racks: Vec<RackRow>,
    /// The racks beyond the limit, summed (None when every rack is shown).
    pub other: Option<RackRow>,
    /// Racks beyond the limit.
    pub other_racks: u64,
    pub racks_total: u64,
    pub revision: u64,
}

/// The heatmap as `r` holds it: per value of `label` (a scope label), objects per state of `kind` (empty:
/// every kind).
pub fn racks_of(r: &Reader, label: &str, kind: &str) -> Result<RacksChart, StoreError> {
    let cfg = r.safety_config()?;
    let mut rows: BTreeMap<String, RackRow> = BTreeMap::new();
    let prefix = format!("{}{label}=", counts::SCOPE);
    for (key, n) in r.counts(&prefix)? {
        let Some((Some(scope), k, state)) = counts::parse_key(&key) else { continue };
        if !kind.is_empty() && k != kind {
            continue;
        }
        let Some((_, value)) = scope.split_once('=') else { continue };
        let row = rows
            .entry(value.to_string())
            .or_insert_with(|| RackRow { rack: value.to_string(), ..Default::default() });
        *row.counts.entry(state.to_string()).or_default() += n;
        row.total += n;
        if QUOTA_STATES.contains(&state) {
            row.out_of_service += n;
        }
    }
    let racks_total = rows.len() as u64;
    let mut racks: Vec<RackRow> = rows.into_values().collect();
    racks.sort_by(|a, b| b.out_of_service.cmp(&a.out_of_service).then_with(|| a.rack.cmp(&b.rack)));
    let (other, other_racks) = if racks.len() > MAX_HEATMAP_RACKS {
        let rest = racks.split_off(MAX_HEATMAP_RACKS);
        let mut o = RackRow { rack: "other".into(), ..Default::default() };
        for r in &rest {
            for (s, n) in &r.counts {
                *o.counts.entry(s.clone()).or_default() += n;
            }
            o.total += r.total;
            o.out_of_service += r.out_of_service;
        }
        (Some(o), rest.len() as u64)
    } else {
        (None, 0)
    };
    Ok(RacksChart {
        label: label.to_string(),
        kind: kind.to_string(),
        scoped: cfg.scope_labels.iter().any(|l| l == label),
        states: State::ALL.iter().map(|s| s.as_str().to_string()).collect(),
        racks,
        other,
        other_racks,
        racks_total,
        revision: r.revision()?,
    })
}

/// Check the heatmap's query: `label` a label key (empty: `rack`), `kind` empty or a kind name.
pub fn parse_racks_query(label: &str, kind: &str) -> Result<(String, String), ApiError> {
    let label = if label.is_empty() { "rack" } else { label };
    if label.len() > 64
        || !label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    {
        return Err(ApiError::invalid(format!("label={label:?}: not a label key")));
    }
    if !kind.is_empty() && !Kind::ALL.iter().any(|k| k.as_str() == kind) {
        return Err(ApiError::invalid(format!("kind={kind}: not a kind")));
    }
    Ok((label.to_string(), kind.to_string()))
}

impl Service {
    /// The transitions chart: after a read-index barrier, or this node's copy as is (`stale`).
    pub async fn chart_transitions(
        &self,
        stale: bool,
        hours: u64,
        to: &[String],
    ) -> Result<TransitionsChart, ApiError> {
        let r = self.read_view(stale).await?;
        transitions_of(&r, super::now_ms(), hours, to).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The rack x state heatmap.
    pub async fn chart_racks(&self, stale: bool, label: &str, kind: &str) -> Result<RacksChart, ApiError> {
        let r = self.read_view(stale).await?;
        racks_of(&r, label, kind).map_err(|e| ApiError::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::counts::{hourly_key, scope_key};

    /// A store holding exactly `rows` in `fsm_counts` (nothing else: default safety config, no scopes).
    fn store(rows: &[(String, u64)]) -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("db.redb")).expect("db");
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(crate::store::COUNTS).expect("counts");
            for (k, v) in rows {
                t.insert(k.as_str(), crate::store::seal_u64(k, *v).as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        (dir, db)
    }

    #[test]
    fn the_heatmap_draws_at_most_the_limit_and_sums_the_rest_into_other() {
        for racks in [MAX_HEATMAP_RACKS, MAX_HEATMAP_RACKS + 1, MAX_HEATMAP_RACKS + 7] {
            let mut rows = Vec::new();
            for i in 0..racks {
                rows.push((scope_key(&format!("rack=r{i:04}"), "disk", "GOOD"), 10));
                // The last racks have the most out of service, so they are the ones drawn first.
                rows.push((scope_key(&format!("rack=r{i:04}"), "disk", "REPAIR"), i as u64 % 3 + 1));
            }
            rows.push((scope_key("rack=r0000", "machine", "ERROR"), 4));
            rows.push((scope_key("pool=p1", "disk", "ERROR"), 99)); // another label: not counted
            rows.push((hourly_key(0, "disk", "ERROR"), 5)); // not a scope row
            let (_d, db) = store(&rows);
            let r = Reader::new(&db).expect("reader");
            let all = racks_of(&r, "rack", "").expect("racks");
            assert!(all.scoped, "rack is a default scope label");
            assert_eq!(all.racks_total, racks as u64);
            assert_eq!(all.racks.len(), racks.min(MAX_HEATMAP_RACKS));
            let shown: u64 = all.racks.iter().map(|x| x.total).sum();
            let other = all.other.as_ref().map_or(0, |o| o.total);
            let want: u64 = (0..racks as u64).map(|i| 10 + i % 3 + 1).sum::<u64>() + 4;
            assert_eq!(shown + other, want, "{racks} racks: nothing lost");
            assert_eq!(all.other_racks, (racks - racks.min(MAX_HEATMAP_RACKS)) as u64);
            assert_eq!(all.other.is_some(), racks > MAX_HEATMAP_RACKS);
            let r0 = all.racks.iter().find(|x| x.rack == "r0000");
            if let Some(r0) = r0 {
                assert_eq!(r0.counts.get("ERROR"), Some(&4));
                assert_eq!(r0.out_of_service, 5);
            }
            assert!(
                all.racks.windows(2).all(|w| w[0].out_of_service >= w[1].out_of_service),
                "most out first"
            );
            let disks = racks_of(&r, "rack", "disk").expect("disk racks");
            assert!(disks.racks.iter().all(|x| !x.counts.contains_key("ERROR")), "kind filter");
        }
    }

    #[test]
    fn transitions_chart_bins_hours_and_converts_quotas() {
        let now = 1_800_000_000_000u64;
        let last = counts::hour_of(now);
        let rows = vec![
            (hourly_key(last, "disk", "ERROR"), 3),
            (hourly_key(last - HOUR_MS, "disk", "REPAIR"), 2),
            (hourly_key(last - 167 * HOUR_MS, "disk", "ERROR"), 1),
            (hourly_key(last - 168 * HOUR_MS, "disk", "ERROR"), 50), // outside 168 hours
            (hourly_key(last, "machine", "GOOD"), 7),                // not a charted state
        ];
        let (_d, db) = store(&rows);
        let r = Reader::new(&db).expect("reader");
        let to = vec!["ERROR".to_string(), "REPAIR".to_string()];
        let c = transitions_of(&r, now, 168, &to).expect("chart");
        assert_eq!(c.hours_ms.len(), 168);
        assert_eq!(c.hours_ms.last(), Some(&last));
        assert_eq!(c.series.len(), 2, "{:?}", c.series);
        let err = &c.series[0];
        assert_eq!((err.kind.as_str(), err.to.as_str(), err.total), ("disk", "ERROR", 4));
        assert_eq!((err.counts[0], err.counts[167]), (1, 3));
        assert_eq!(c.series[1].counts[166], 2);
        // The default quotas: disk 0.2%/h of an empty cluster is at least one, drawn as 1 per hour; the
        // rack quota is per rack and not drawn.
        let disk: Vec<_> = c.quotas.iter().filter(|q| q.kind == "disk").collect();
        assert_eq!(disk.len(), 2, "{disk:?}");
        assert_eq!((disk[0].limit, disk[0].per_hour), (Some(1), Some(1.0)));
        assert_eq!((disk[1].scope.as_str(), disk[1].per_hour), ("rack", None));
        assert!(disk[1].text.contains("not drawn"), "{}", disk[1].text);
        let c = transitions_of(&r, now, 1, &to).expect("one hour");
        assert_eq!(c.series[0].counts, vec![3]);
    }

    /// Prints (never asserts) what the two reads cost at their bounds: every hourly row the counters can
    /// hold (192 hours x 7 kinds x 8 states) and 2,500 racks (a 100,000-machine fleet) x 2 kinds x 3 states.
    /// `cargo test -p master --lib chart_reads_at_full_counters -- --nocapture`
    #[test]
    fn chart_reads_at_full_counters_print_their_cost() {
        let now = 1_800_000_000_000u64;
        let last = counts::hour_of(now);
        let mut rows = Vec::new();
        for hr in 0..HOURLY_KEEP_HOURS {
            for k in Kind::ALL {
                for st in State::ALL {
                    rows.push((hourly_key(last - hr * HOUR_MS, k.as_str(), st.as_str()), hr + 1));
                }
            }
        }
        let hourly = rows.len();
        for i in 0..2_500 {
            for k in ["machine", "disk"] {
                for st in ["GOOD", "ERROR", "REPAIR"] {
                    rows.push((scope_key(&format!("rack=r{i:05}"), k, st), 3));
                }
            }
        }
        let (_d, db) = store(&rows);
        let r = Reader::new(&db).expect("reader");
        let to = vec!["ERROR".to_string(), "REPAIR".to_string()];
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let c = transitions_of(&r, now, 168, &to).expect("chart");
            let te = t.elapsed();
            let t = std::time::Instant::now();
            let h = racks_of(&r, "rack", "").expect("racks");
            let he = t.elapsed();
            let json =
                serde_json::to_vec(&c).expect("json").len() + serde_json::to_vec(&h).expect("json").len();
            println!(
                "charts: transitions over {hourly} hourly rows {te:?}; heatmap over {} racks (500 drawn) {he:?}; \
                 answers {json} bytes",
                h.racks_total
            );
        }
    }

    #[test]
    fn bad_chart_queries_are_refused() {
        assert_eq!(parse_transitions_query(0, "").expect("defaults").0, DEFAULT_CHART_HOURS);
        assert_eq!(parse_transitions_query(MAX_CHART_HOURS, "error").expect("at the limit").1, vec!["ERROR"]);
        assert!(parse_transitions_query(MAX_CHART_HOURS + 1, "").is_err());
        assert!(parse_transitions_query(24, "ERROR,BROKEN").is_err());
        assert!(parse_racks_query("rack;drop", "").is_err());
        assert!(parse_racks_query("rack", "toaster").is_err());
        assert_eq!(parse_racks_query("", "").expect("default"), ("rack".to_string(), String::new()));
    }
}
