-- The three questions of issue 19, in DuckDB SQL, over a `huatuo export` directory (SCHEMA.md).
-- tests/tests/export_duckdb.rs runs this file as it is (DuckDB 1.4.2 from .ci/analytics-deps) on the export
-- of a seeded cluster, in both formats, and checks the answers against what it put in.
--
-- Use: replace EXPORT_DIR with the export's path, run ONE setup block (the format you exported), then any
-- query. In the duckdb shell:   sed 's#EXPORT_DIR#/data/export-2026-12#g' queries.sql | duckdb
-- (the shell then runs both setups; the second replaces the first's views harmlessly if both formats exist,
-- so delete the block you do not need).

-- setup: parquet
CREATE OR REPLACE VIEW disk_days AS
  SELECT * FROM read_parquet('EXPORT_DIR/disk_days/*/*.parquet', hive_partitioning = true);
CREATE OR REPLACE VIEW transitions AS
  SELECT * FROM read_parquet('EXPORT_DIR/transitions/*/*.parquet', hive_partitioning = true);
CREATE OR REPLACE VIEW findings AS
  SELECT * FROM read_parquet('EXPORT_DIR/findings/*/*.parquet', hive_partitioning = true);

-- setup: csv
CREATE OR REPLACE VIEW disk_days AS
  SELECT * FROM read_csv('EXPORT_DIR/disk_days/*/*.csv', hive_partitioning = true, header = true,
                         union_by_name = true, types = {'date': 'VARCHAR', 'failure': 'INTEGER'});
CREATE OR REPLACE VIEW transitions AS
  SELECT * FROM read_csv('EXPORT_DIR/transitions/*/*.csv', hive_partitioning = true, header = true,
                         union_by_name = true, types = {'time_ms': 'BIGINT', 'revision': 'BIGINT'});
CREATE OR REPLACE VIEW findings AS
  SELECT * FROM read_csv('EXPORT_DIR/findings/*/*.csv', hive_partitioning = true, header = true,
                         union_by_name = true, types = {'time_ms': 'BIGINT', 'rule': 'VARCHAR', 'severity': 'VARCHAR'});

-- query: failure_rate
-- Failure rate per disk model and week (weeks start on Monday): disk days observed, failures (a disk's
-- first day in ERROR/REPAIR), and failures per disk day (x 365 for Backblaze's annualized rate).
SELECT model,
       strftime(date_trunc('week', CAST(date AS DATE)), '%Y-%m-%d') AS week,
       count(*) AS disk_days,
       sum(failure) AS failures,
       sum(failure) / count(*) AS failure_rate
FROM disk_days
GROUP BY model, week
ORDER BY model, week;

-- query: mean_repair
-- Mean time in REPAIR: every stay that ended (the object's next transition after entering REPAIR).
WITH t AS (
  SELECT object, to_state, time_ms,
         lead(time_ms) OVER (PARTITION BY object ORDER BY time_ms, revision) AS next_ms
  FROM transitions
)
SELECT count(*) AS stays,
       avg(next_ms - time_ms) AS mean_ms
FROM t
WHERE to_state = 'REPAIR' AND next_ms IS NOT NULL;

-- query: top_rules
-- Top rules by findings: fault findings (not GOOD/INFO/UNKNOWN) per rule, most first.
SELECT rule, count(*) AS findings
FROM findings
WHERE severity NOT IN ('GOOD', 'INFO', 'UNKNOWN')
GROUP BY rule
ORDER BY findings DESC, rule
LIMIT 10;
