//! rasdaemon's event database (`ROOT/var/lib/rasdaemon/ras-mc_event.db`): when the kernel log only says
//! "Machine check events logged", the detail went here. Three tables are read (schema as rasdaemon's
//! `ras-record.c` creates them): `mc_event` (EDAC memory errors: count, type, DIMM label, controller),
//! `mce_record` (x86 machine checks: bank, IA32_MCi_STATUS, CPU) and `aer_event` (PCIe AER: device, type).
//!
//! Read-only, incremental: each table's highest `id` seen is remembered, so a run reports only new rows;
//! at most [`MAX_ROWS_PER_TABLE`] rows per table per run (the newest first run, oldest-first after that).
//! A host without rasdaemon (no file) yields nothing; a missing table (rasdaemon built without MCE or AER
//! support) is skipped. Findings use the same objects and decoding as the kernel-log checker:
//! `dimm/HOST/mc<N>-<label>` for labelled memory errors, the machine otherwise; MCi_STATUS decoded into
//! corrected / uncorrected / processor context corrupt.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use state_machines::{Finding, Kind, ObjectId, Severity};

use crate::kernel_log::decode::{Decoder, decode};
use crate::kernel_log::object::{Normalize, normalize};
use crate::{CheckContext, CheckError, Checker};

pub const NAME: &str = "rasdaemon";
pub const VERSION: &str = "1.0.0";
/// Where rasdaemon keeps its database (below the check root).
pub const DB_PATH: &str = "var/lib/rasdaemon/ras-mc_event.db";
/// Most rows read per table per run: a CE storm can add thousands of rows an hour; the rest is read on
/// the next runs (the cursor only moves past what was read).
pub const MAX_ROWS_PER_TABLE: usize = 1000;
/// How long a query may wait for rasdaemon's write lock before the run gives up (it retries next run).
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// Corrected memory errors (summed `err_count`) on one DIMM within one run that make it WARNING; below,
/// each row is an INFO finding. Same rate as the kernel-log `mem.edac-ce` rule.
pub const CE_WARNING: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum RasError {
    #[error("{path}: {err}")]
    Db { path: String, err: rusqlite::Error },
}

/// Highest row id already reported, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RasCursor {
    pub mc_event: i64,
    pub mce_record: i64,
    pub aer_event: i64,
}

/// Key of the rasdaemon cursor among the agent's checkpoints: committed with the findings of the rows it
/// covers, so a restarted agent neither reports old rows again as new nor skips rows it never made durable.
pub const CHECKPOINT_KEY: &str = "rasdaemon.cursor";

impl RasCursor {
    /// `MC MCE AER` as decimal row ids.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {} {}", self.mc_event, self.mce_record, self.aer_event).into_bytes()
    }

    /// The inverse of [`encode`](Self::encode); None for anything else (the agent then starts afresh).
    pub fn decode(raw: &[u8]) -> Option<RasCursor> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut it = text.split(' ').map(|p| p.parse::<i64>().ok().filter(|v| *v >= 0));
        let c = RasCursor { mc_event: it.next()??, mce_record: it.next()??, aer_event: it.next()?? };
        it.next().is_none().then_some(c)
    }
}

fn table_exists(db: &Connection, name: &str) -> rusqlite::Result<bool> {
    db.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n > 0)
}

fn finding(
    object: ObjectId,
    severity: Severity,
    rule: &str,
    evidence: String,
    readings: BTreeMap<String, String>,
    now_ms: u64,
) -> Finding {
    Finding {
        object,
        severity,
        checker: NAME.to_string(),
        version: VERSION.to_string(),
        rule: rule.to_string(),
        evidence,
        readings,
        time_ms: now_ms,
        shadow: false,
    }
    .bounded()
}

/// Rows of `table` after `after` (oldest first), at most [`MAX_ROWS_PER_TABLE`]; on the first read
/// (`after` = 0) the newest rows.
fn rows<T>(
    db: &Connection,
    table: &str,
    cols: &str,
    after: i64,
    map: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<(i64, T)>> {
    let sql = if after == 0 {
        format!(
            "SELECT * FROM (SELECT id, {cols} FROM {table} ORDER BY id DESC LIMIT {MAX_ROWS_PER_TABLE}) ORDER BY id"
        )
    } else {
        format!("SELECT id, {cols} FROM {table} WHERE id > ?1 ORDER BY id LIMIT {MAX_ROWS_PER_TABLE}")
    };
    let mut stmt = db.prepare(&sql)?;
    let f = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)?, map(r)?));
    let it = if after == 0 { stmt.query_map([], f)? } else { stmt.query_map([after], f)? };
    it.collect()
}

/// Read the rows after `cursor` from the database below `root`, advance the cursor, and turn them into
/// findings about `host`. No database: no findings.
pub fn read_new(
    root: &Path,
    host: &str,
    now_ms: u64,
    cursor: &mut RasCursor,
) -> Result<Vec<Finding>, RasError> {
    let path = root.join(DB_PATH);
    let shown = path.display().to_string();
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let err = |err| RasError::Db { path: shown.clone(), err };
    let db = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    db.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    let mut out = Vec::new();
    let machine = || ObjectId::machine(host).ok();
    if table_exists(&db, "mc_event").map_err(err)? {
        type Mc = (Option<String>, Option<i64>, Option<String>, Option<String>, Option<String>, Option<i64>);
        let got = rows::<Mc>(
            &db,
            "mc_event",
            "timestamp, err_count, err_type, err_msg, label, mc",
            cursor.mc_event,
            |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .map_err(err)?;
        let mut ce: BTreeMap<String, u64> = BTreeMap::new();
        for (id, (ts, count, typ, msg, label, mc)) in got {
            cursor.mc_event = cursor.mc_event.max(id);
            let count = count.unwrap_or(1).max(1) as u64;
            let typ = typ.unwrap_or_default();
            let label = label.unwrap_or_default();
            let dimm = match (mc, label.trim()) {
                (Some(mc), l)
                    if !l.is_empty()
                        && !l.eq_ignore_ascii_case("unknown memory")
                        && !l.contains("any memory") =>
                {
                    normalize(Normalize::Dimm, &format!("mc{mc}-{l}"))
                        .and_then(|n| ObjectId::new(Kind::Dimm, host, Some(&n)).ok())
                }
                _ => None,
            };
            let Some(object) = dimm.or_else(machine) else { continue };
            let (rule, severity) = match typ.as_str() {
                "Corrected" => {
                    let n = ce.entry(object.to_string()).or_default();
                    *n += count;
                    ("mem.ras-ce", if *n >= CE_WARNING { Severity::Warning } else { Severity::Info })
                }
                "Uncorrected" => ("mem.ras-ue", Severity::Error),
                "Fatal" => ("mem.ras-ue", Severity::Fatal),
                _ => ("mem.ras-info", Severity::Info),
            };
            let readings = BTreeMap::from([
                ("count".to_string(), count.to_string()),
                ("err_type".to_string(), typ.clone()),
                ("ras_id".to_string(), id.to_string()),
            ]);
            let evidence = format!(
                "rasdaemon mc_event {}: {count} {typ} {} on {label}",
                ts.unwrap_or_default(),
                msg.unwrap_or_default()
            );
            out.push(finding(object, severity, rule, evidence, readings, now_ms));
        }
    }
    if table_exists(&db, "mce_record").map_err(err)? {
        type Mce = (Option<String>, Option<i64>, Option<i64>, Option<i64>, Option<String>, Option<String>);
        let got = rows::<Mce>(
            &db,
            "mce_record",
            "timestamp, status, bank, cpu, error_msg, mcistatus_msg",
            cursor.mce_record,
            |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .map_err(err)?;
        for (id, (ts, status, bank, cpu, msg, mcistatus)) in got {
            cursor.mce_record = cursor.mce_record.max(id);
            // stored as a signed 64-bit integer: bit 63 (VAL) makes it negative
            let status = status.unwrap_or(0) as u64;
            let groups = BTreeMap::from([("status".to_string(), format!("{status:016x}"))]);
            let d = decode(Decoder::McaStatus, &groups);
            if d.drop {
                continue;
            }
            let Some(object) = machine() else { continue };
            let mut readings: BTreeMap<String, String> =
                d.readings.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            readings.insert("bank".into(), bank.unwrap_or(-1).to_string());
            readings.insert("cpu".into(), cpu.unwrap_or(-1).to_string());
            readings.insert("ras_id".into(), id.to_string());
            let evidence = format!(
                "rasdaemon mce_record {}: CPU {} bank {} status 0x{status:016x} {} {}",
                ts.unwrap_or_default(),
                cpu.unwrap_or(-1),
                bank.unwrap_or(-1),
                msg.unwrap_or_default(),
                mcistatus.unwrap_or_default()
            );
            out.push(finding(
                object,
                d.severity.unwrap_or(Severity::Warning),
                "hw.ras-mce",
                evidence,
                readings,
                now_ms,
            ));
        }
    }
    if table_exists(&db, "aer_event").map_err(err)? {
        type Aer = (Option<String>, Option<String>, Option<String>, Option<String>);
        let got =
            rows::<Aer>(&db, "aer_event", "timestamp, dev_name, err_type, err_msg", cursor.aer_event, |r| {
                Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(err)?;
        for (id, (ts, dev, typ, msg)) in got {
            cursor.aer_event = cursor.aer_event.max(id);
            let typ = typ.unwrap_or_default();
            let severity = if typ.contains("Fatal") && !typ.contains("Non-Fatal") {
                Severity::Fatal
            } else if typ.starts_with("Uncorrect") {
                Severity::Error
            } else {
                Severity::Info
            };
            let Some(object) = machine() else { continue };
            let dev = dev.unwrap_or_default();
            let readings = BTreeMap::from([
                ("pci".to_string(), dev.clone()),
                ("err_type".to_string(), typ.clone()),
                ("ras_id".to_string(), id.to_string()),
            ]);
            let evidence = format!(
                "rasdaemon aer_event {}: {dev} {typ}: {}",
                ts.unwrap_or_default(),
                msg.unwrap_or_default()
            );
            out.push(finding(object, severity, "pcie.ras-aer", evidence, readings, now_ms));
        }
    }
    Ok(out)
}

/// The rasdaemon [`Checker`]: new rows of rasdaemon's database since the previous run.
#[derive(Debug, Default)]
pub struct RasdaemonChecker {
    cursor: RasCursor,
    /// The cursor last handed out as a checkpoint.
    taken: RasCursor,
}

impl RasdaemonChecker {
    pub fn new() -> Self {
        RasdaemonChecker::default()
    }

    /// A checker that goes on after `cursor` (the agent's committed checkpoint).
    pub fn resuming(cursor: RasCursor) -> Self {
        RasdaemonChecker { taken: cursor.clone(), cursor }
    }

    pub fn cursor(&self) -> &RasCursor {
        &self.cursor
    }
}

impl Checker for RasdaemonChecker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> &'static str {
        VERSION
    }

    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Machine, Kind::Dimm]
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        read_new(&ctx.root, &ctx.host, ctx.now_ms, &mut self.cursor)
            .map_err(|e| CheckError::Probe(e.to_string()))
    }

    fn take_checkpoint(&mut self) -> Option<crate::Checkpoint> {
        if self.cursor == self.taken {
            return None;
        }
        self.taken = self.cursor.clone();
        Some(crate::Checkpoint { key: CHECKPOINT_KEY.to_string(), value: self.cursor.encode() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three tables as rasdaemon's `ras-record.c` creates them (column names and types).
    const SCHEMA: &str = "
        CREATE TABLE mc_event (id INTEGER PRIMARY KEY, timestamp TEXT, err_count INTEGER, err_type TEXT,
            err_msg TEXT, label TEXT, mc INTEGER, top_layer INTEGER, middle_layer INTEGER, lower_layer INTEGER,
            address INTEGER, grain INTEGER, syndrome INTEGER, driver_detail TEXT);
        CREATE TABLE mce_record (id INTEGER PRIMARY KEY, timestamp TEXT, mcgcap INTEGER, mcgstatus INTEGER,
            status INTEGER, addr INTEGER, misc INTEGER, ip INTEGER, tsc INTEGER, walltime INTEGER, cpu INTEGER,
            cpuid INTEGER, apicid INTEGER, socketid INTEGER, cs INTEGER, bank INTEGER, cpuvendor INTEGER,
            bank_name TEXT, error_msg TEXT, mcgstatus_msg TEXT, mcistatus_msg TEXT, mcastatus_msg TEXT,
            user_action TEXT, mc_location TEXT);
        CREATE TABLE aer_event (id INTEGER PRIMARY KEY, timestamp TEXT, dev_name TEXT, err_type TEXT, err_msg TEXT);
    ";

    fn db(root: &Path) -> Connection {
        let p = root.join(DB_PATH);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let c = Connection::open(&p).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    fn ctx(root: &Path) -> CheckContext {
        CheckContext { root: root.to_path_buf(), host: "h1".into(), now_ms: 1000, profile: "online".into() }
    }

    #[test]
    fn the_cursor_is_a_checkpoint_and_a_resumed_checker_skips_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let c = db(dir.path());
        mc(&c, 1, "Corrected", "DIMM_A1");
        mc(&c, 2, "Corrected", "DIMM_A1");
        let mut first = RasdaemonChecker::new();
        assert_eq!(first.run(&ctx(dir.path())).unwrap().len(), 2);
        let cp = first.take_checkpoint().expect("the cursor moved");
        assert_eq!(cp.key, CHECKPOINT_KEY);
        assert!(first.take_checkpoint().is_none(), "handed out once");
        let resumed = RasCursor::decode(&cp.value).expect("round trip");
        assert_eq!(&resumed, first.cursor());
        mc(&c, 3, "Corrected", "DIMM_A1");
        let mut again = RasdaemonChecker::resuming(resumed);
        let found = again.run(&ctx(dir.path())).unwrap();
        assert_eq!(found.len(), 1, "only the row after the checkpoint: {found:?}");
        for bad in [&b"1 2"[..], b"1 2 3 4", b"-1 0 0", b"x 0 0", b"\xff"] {
            assert_eq!(RasCursor::decode(bad), None, "{bad:?}");
        }
    }

    fn mc(c: &Connection, count: i64, typ: &str, label: &str) {
        c.execute(
            "INSERT INTO mc_event (timestamp, err_count, err_type, err_msg, label, mc, top_layer, middle_layer,
             lower_layer, address, grain, syndrome, driver_detail)
             VALUES ('2026-12-02 10:00:00 +0000', ?1, ?2, 'memory read error', ?3, 0, 0, 2, 0, 0, 32, 0, '')",
            rusqlite::params![count, typ, label],
        )
        .unwrap();
    }

    #[test]
    fn reads_memory_mce_and_aer_rows_incrementally() {
        let root = tempfile::tempdir().unwrap();
        let c = db(root.path());
        mc(&c, 4, "Corrected", "CPU_SrcID#0_Ha#0_Chan#2_DIMM#0");
        mc(&c, 1, "Uncorrected", "CPU_SrcID#0_MC#3_Chan#0_DIMM#0");
        mc(&c, 1, "Corrected", "");
        // the status of the real line "CPU 0: Machine Check: 0 Bank 4: a600000000020408", as rasdaemon
        // stores it (a signed 64-bit integer)
        c.execute(
            "INSERT INTO mce_record (timestamp, status, bank, cpu, error_msg, mcistatus_msg)
             VALUES ('2026-12-02 10:00:01 +0000', ?1, 4, 0, 'Internal unclassified error', 'Uncorrected_error')",
            [0xa600_0000_0002_0408u64 as i64],
        )
        .unwrap();
        c.execute(
            "INSERT INTO aer_event (timestamp, dev_name, err_type, err_msg)
             VALUES ('2026-12-02 10:00:02 +0000', '0000:3b:00.0', 'Corrected', 'Receiver Error')",
            [],
        )
        .unwrap();
        let mut k = RasdaemonChecker::new();
        let f = k.run(&ctx(root.path())).unwrap();
        let got: Vec<(String, String, Severity)> =
            f.iter().map(|f| (f.rule.clone(), f.object.to_string(), f.severity)).collect();
        assert_eq!(
            got,
            vec![
                ("mem.ras-ce".into(), "dimm/h1/mc0-cpu_srcid0_ha0_chan2_dimm0".into(), Severity::Info),
                ("mem.ras-ue".into(), "dimm/h1/mc0-cpu_srcid0_mc3_chan0_dimm0".into(), Severity::Error),
                ("mem.ras-ce".into(), "machine/h1".into(), Severity::Info),
                ("hw.ras-mce".into(), "machine/h1".into(), Severity::Fatal),
                ("pcie.ras-aer".into(), "machine/h1".into(), Severity::Info),
            ]
        );
        assert_eq!(f[3].readings.get("mci_pcc").map(String::as_str), Some("1"));
        // nothing new: nothing reported again
        assert!(k.run(&ctx(root.path())).unwrap().is_empty());
        // 4 + 6 corrected errors in one run on one DIMM: WARNING at the tenth
        mc(&c, 4, "Corrected", "DIMM_A1");
        mc(&c, 6, "Corrected", "DIMM_A1");
        let f = k.run(&ctx(root.path())).unwrap();
        assert_eq!(f.iter().map(|f| f.severity).collect::<Vec<_>>(), vec![Severity::Info, Severity::Warning]);
        assert_eq!(k.cursor().mc_event, 5);
    }

    #[test]
    fn row_limit_and_missing_pieces() {
        let root = tempfile::tempdir().unwrap();
        // no database: no findings, no error
        assert!(RasdaemonChecker::new().run(&ctx(root.path())).unwrap().is_empty());
        let p = root.path().join(DB_PATH);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // only mc_event (rasdaemon built without MCE/AER): the other tables are skipped
        let c = Connection::open(&p).unwrap();
        c.execute_batch(SCHEMA.split(';').next().unwrap()).unwrap();
        c.execute_batch("BEGIN").unwrap();
        for _ in 0..MAX_ROWS_PER_TABLE + 5 {
            mc(&c, 1, "Uncorrected", "DIMM_B2");
        }
        c.execute_batch("COMMIT").unwrap();
        let mut k = RasdaemonChecker::new();
        let f = k.run(&ctx(root.path())).unwrap();
        assert_eq!(f.len(), MAX_ROWS_PER_TABLE, "the newest rows on a first read");
        assert_eq!(k.cursor().mc_event, (MAX_ROWS_PER_TABLE + 5) as i64);
        c.execute_batch("BEGIN").unwrap();
        for _ in 0..MAX_ROWS_PER_TABLE + 2 {
            mc(&c, 1, "Uncorrected", "DIMM_B2");
        }
        c.execute_batch("COMMIT").unwrap();
        assert_eq!(k.run(&ctx(root.path())).unwrap().len(), MAX_ROWS_PER_TABLE);
        assert_eq!(k.run(&ctx(root.path())).unwrap().len(), 2, "the rest on the next run");
        // not a database: a probe error naming the file
        std::fs::write(&p, b"garbage, not sqlite").unwrap();
        let e = RasdaemonChecker::new().run(&ctx(root.path())).unwrap_err().to_string();
        assert!(e.contains("ras-mc_event.db"), "{e}");
    }
}
