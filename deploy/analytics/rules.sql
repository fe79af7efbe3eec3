-- Rule impact (issue 20, part 4): the DuckDB equivalent of `huatuo analyze rules --from EXPORT_DIR --days 7`.
-- Same definitions as predict/src/rules.rs:
--   rule event     a finding with severity SLOW, WARNING or ERROR, not shadow, keyed checker/rule;
--   reading event  a finding (any severity, not shadow) whose smart_N_raw reading is > 0, keyed by the reading
--                  (the CLI also counts every numeric entry of the `readings` JSON; this file keeps to the typed
--                  columns);
--   precedes       the same object enters REPAIR at or after the event and at most 7 days later;
--   precision      preceding events / events; recall: REPAIRs with an event of the key in the 7 days before it /
--                  all REPAIRs; lead time: REPAIR time minus the earliest such event.
--
-- Run (DuckDB CLI), after `huatuo export --since 90d --to DIR`:
--   duckdb -c "SET VARIABLE dir = 'DIR'; SET VARIABLE window_days = 7;" -c ".read deploy/analytics/rules.sql"
-- For a CSV export use read_csv('…/*/part-*.csv', hive_partitioning = true) in place of read_parquet below.
-- Checked (DuckDB 2.0.1, 2026-12-03) on cli/tests/testdata/export-rules converted to Parquet: the same findings,
-- objects, preceded, precision, recall and lead times as `huatuo analyze rules --from` that directory.

CREATE OR REPLACE TEMP MACRO window_ms() AS getvariable('window_days') * 86400000;

CREATE OR REPLACE TEMP VIEW findings AS
    SELECT * FROM read_parquet(getvariable('dir') || '/findings/*/*.parquet', hive_partitioning = true)
    WHERE NOT coalesce(shadow, false);

CREATE OR REPLACE TEMP VIEW repairs AS
    SELECT object, time_ms
    FROM read_parquet(getvariable('dir') || '/transitions/*/*.parquet', hive_partitioning = true)
    WHERE upper(to_state) = 'REPAIR';

CREATE OR REPLACE TEMP VIEW events AS
    SELECT 'rule' AS kind, checker || '/' || rule AS name, object, time_ms
    FROM findings WHERE upper(severity) IN ('SLOW', 'WARNING', 'ERROR')
    UNION ALL
    SELECT 'reading' AS kind, name, object, time_ms
    FROM (
        UNPIVOT (SELECT object, time_ms, smart_1_raw, smart_5_raw, smart_9_raw, smart_187_raw, smart_188_raw,
                        smart_194_raw, smart_197_raw, smart_198_raw, smart_199_raw FROM findings)
        ON COLUMNS(* EXCLUDE (object, time_ms)) INTO NAME name VALUE value
    )
    WHERE value > 0;

-- Per key: events, objects, events followed by a REPAIR within the window (precision).
CREATE OR REPLACE TEMP VIEW per_key AS
    SELECT kind, name,
           count(*) AS findings,
           count(DISTINCT object) AS objects,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM repairs r
               WHERE r.object = e.object AND r.time_ms >= e.time_ms AND r.time_ms - e.time_ms <= window_ms()
           )) AS preceding
    FROM events e
    GROUP BY kind, name;

-- Per key and REPAIR: the earliest event of the key in the window before it (recall, lead time).
CREATE OR REPLACE TEMP VIEW preceded AS
    SELECT e.kind, e.name, r.object, r.time_ms, r.time_ms - min(e.time_ms) AS lead_ms
    FROM repairs r JOIN events e
      ON e.object = r.object AND e.time_ms <= r.time_ms AND e.time_ms >= r.time_ms - window_ms()
    GROUP BY e.kind, e.name, r.object, r.time_ms;

SELECT k.kind, k.name, k.findings, k.objects,
       coalesce(p.preceded, 0) AS repairs_preceded,
       round(100.0 * k.preceding / k.findings, 1) AS precision_pct,
       round(100.0 * coalesce(p.preceded, 0) / nullif((SELECT count(*) FROM repairs), 0), 1) AS recall_pct,
       -- lower median, as the CLI reports it
       round(p.median_lead_ms / 86400000.0, 1) AS median_lead_days
FROM per_key k
LEFT JOIN (
    SELECT kind, name, count(*) AS preceded, quantile_disc(lead_ms, 0.5) AS median_lead_ms
    FROM preceded GROUP BY kind, name
) p USING (kind, name)
ORDER BY k.kind DESC, k.name;

-- Candidates to retire or retune: rules with >= 10 findings and precision < 5%.
SELECT name, findings, objects, round(100.0 * preceding / findings, 1) AS precision_pct
FROM per_key
WHERE kind = 'rule' AND findings >= 10 AND preceding < 0.05 * findings
ORDER BY findings DESC;

-- (Not run in any check; a sketch.) The training rows of `huatuo predict train --from DIR` as a query: disk_days with the label "enters
-- ERROR/REPAIR within 30 days" (the CLI computes features per drive over its rolling 60-day history; this shows
-- the labels and the baseline rule "any of smart 5/187/188/197/198 raw > 0").
-- SELECT d.*, EXISTS (SELECT 1 FROM read_parquet(getvariable('dir') || '/disk_days/*/*.parquet') f
--                     WHERE f.serial_number = d.serial_number AND f.failure = 1
--                       AND CAST(f.date AS DATE) BETWEEN CAST(d.date AS DATE) AND CAST(d.date AS DATE) + 29) AS label,
--        coalesce(smart_5_raw, 0) + coalesce(smart_187_raw, 0) + coalesce(smart_188_raw, 0)
--          + coalesce(smart_197_raw, 0) + coalesce(smart_198_raw, 0) > 0 AS baseline
-- FROM read_parquet(getvariable('dir') || '/disk_days/*/*.parquet') d;
