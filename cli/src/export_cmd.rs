//! `huatuo export --since 30d --to DIR [--format parquet|csv] [--until ..] [--force]` (issue 19): the
//! master's archive (transitions, findings, ticket updates; `master/src/archive.rs`) and its objects, as the
//! tables of deploy/analytics/SCHEMA.md, partitioned by day (Hive style `table/day=YYYY-MM-DD/part-0.EXT`),
//! with a `manifest.json`. Everything is written into a temporary directory beside DIR and renamed at the
//! end, so an interrupted export leaves no half table; a non-empty DIR is refused unless `--force`.
//!
//! The archive comes from one member's REST port (`--http`, else the context's `http`): pages of at most
//! [`PAGE`] rows; objects come from the gRPC listing. Findings are streamed a day at a time (their pages
//! are in time order), so memory holds one day of findings, the transitions and the ticket updates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ops_cmd::{MasterAddr, api_err, runtime};

pub mod rest;
pub mod table;

use table::{Format, Row, Table, Val, write_partition};

/// Rows asked per archive page (the master serves at most 5,000).
pub const PAGE: usize = 5000;
/// Pages read per table at most: 100,000 pages of 5,000 rows is far beyond any archive's bound.
pub const MAX_PAGES: usize = 100_000;
const DAY_MS: u64 = 86_400_000;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Start of the range: a duration back from now (30d, 12h, 90m) or a UTC date (2026-11-01).
    #[arg(long)]
    since: String,
    /// End of the range (exclusive; same forms as --since); default: now.
    #[arg(long)]
    until: Option<String>,
    /// The directory to create (refused when it exists and is not empty, unless --force).
    #[arg(long)]
    to: PathBuf,
    /// parquet (default) or csv.
    #[arg(long, default_value = "parquet")]
    format: String,
    /// Replace a non-empty target directory.
    #[arg(long)]
    force: bool,
    /// A master's HTTP base URL (http://HOST:PORT or https://HOST:PORT); default: the context's `http`.
    #[arg(long, env = "HUATUO_HTTP")]
    http: Option<String>,
    #[command(flatten)]
    master: MasterAddr,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub use predict::data::{civil_date as civil, days_from_civil};

pub fn day_of(ms: u64) -> String {
    civil((ms / DAY_MS) as i64)
}

/// `30d`, `12h`, `90m` back from `now`, or a UTC date `YYYY-MM-DD` (its midnight).
pub fn parse_time(s: &str, now: u64) -> anyhow::Result<u64> {
    let s = s.trim();
    let bad = || anyhow!("{s:?}: expected a duration back from now (30d, 12h, 90m) or a date (2026-11-01)");
    if let Some((n, unit)) = s.char_indices().last().map(|(i, c)| (&s[..i], c))
        && unit.is_ascii_alphabetic()
    {
        let n: u64 = n.parse().map_err(|_| bad())?;
        let ms = match unit {
            'd' => n.checked_mul(DAY_MS),
            'h' => n.checked_mul(3_600_000),
            'm' => n.checked_mul(60_000),
            _ => None,
        }
        .ok_or_else(bad)?;
        return Ok(now.saturating_sub(ms));
    }
    let p: Vec<&str> = s.split('-').collect();
    if p.len() != 3 || p[0].len() != 4 || p[1].len() != 2 || p[2].len() != 2 {
        return Err(bad());
    }
    let (y, m, d): (i64, u32, u32) = (
        p[0].parse().map_err(|_| bad())?,
        p[1].parse().map_err(|_| bad())?,
        p[2].parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    if civil(days) != s {
        return Err(bad()); // 2026-02-31
    }
    Ok(days as u64 * DAY_MS)
}

/// `kind/host/...` -> (kind, host); switches and links have no host.
fn kind_host(object: &str) -> (String, Option<String>) {
    let mut it = object.split('/');
    let kind = it.next().unwrap_or_default().to_string();
    let host = match kind.as_str() {
        "switch" | "link" => None,
        _ => it.next().map(str::to_string),
    };
    (kind, host)
}

fn opt(v: Option<String>) -> Val {
    v.map_or(Val::Null, Val::Str)
}

fn num(v: Option<&str>) -> Val {
    v.and_then(|s| s.trim().parse::<f64>().ok()).filter(|x| x.is_finite()).map_or(Val::Null, Val::F64)
}

fn int(v: Option<&str>) -> Val {
    v.and_then(|s| s.trim().parse::<i64>().ok()).map_or(Val::Null, Val::I64)
}

#[derive(Debug, Deserialize)]
struct Page {
    rows: Vec<Value>,
    #[serde(default)]
    next_page_token: String,
}

#[derive(Debug, Clone, Deserialize)]
struct TransitionIn {
    time_ms: u64,
    object: String,
    from_state: String,
    to_state: String,
    cause: String,
    #[serde(default)]
    cause_detail: String,
    #[serde(default)]
    checker: String,
    #[serde(default)]
    checker_version: String,
    #[serde(default)]
    finding_time_ms: Option<u64>,
    revision: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct TicketIn {
    time_ms: u64,
    object: String,
    ticket: String,
    status: String,
}

#[derive(Debug, Clone, Deserialize)]
struct FindingIn {
    time_ms: u64,
    object: String,
    severity: String,
    checker: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    evidence: String,
    #[serde(default)]
    readings: BTreeMap<String, String>,
    #[serde(default)]
    shadow: bool,
}

pub fn run(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let format = match a.format.as_str() {
        "parquet" => Format::Parquet,
        "csv" => Format::Csv,
        f => bail!("--format {f:?}: expected parquet or csv"),
    };
    let now = now_ms();
    let since = parse_time(&a.since, now).context("--since")?;
    let until = match &a.until {
        Some(u) => parse_time(u, now).context("--until")?,
        None => now + 1,
    };
    if since >= until {
        bail!("--since ({}) is not before --until ({})", day_of(since), day_of(until));
    }
    check_target(&a.to, a.force)?;
    let rest = rest_client(&a)?;
    let parent = a.to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".huatuo-export-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a temporary directory in {}", parent.display()))?;
    let rt = runtime()?;
    let summary = rt.block_on(export(&a, &rest, format, since, until, now, tmp.path()))?;
    // The whole export is in place: swap it in.
    if a.to.exists() {
        std::fs::remove_dir_all(&a.to).with_context(|| format!("cannot replace {}", a.to.display()))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &a.to)
        .with_context(|| format!("cannot move {} to {}", tmp_path.display(), a.to.display()))?;
    println!("exported {} to {} ({})", summary, a.to.display(), format.ext());
    Ok(ExitCode::SUCCESS)
}

fn check_target(to: &Path, force: bool) -> anyhow::Result<()> {
    match std::fs::read_dir(to) {
        Ok(mut it) => {
            if it.next().is_some() && !force {
                bail!(
                    "{} exists and is not empty: choose another --to, or pass --force to replace it",
                    to.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if to.is_file() => bail!("{} is a file, not a directory: {e}", to.display()),
        Err(e) => Err(anyhow!("cannot read {}: {e}", to.display())),
    }
}

fn rest_client(a: &ExportArgs) -> anyhow::Result<rest::Rest> {
    let path = a.master.context.clone().or_else(crate::context::default_path);
    let ctx = match path {
        Some(p) if a.master.context.is_some() || p.exists() => Some(crate::context::Context::load(&p)?),
        _ => None,
    };
    let url = a.http.clone().or_else(|| ctx.as_ref().and_then(|c| c.http.clone())).ok_or_else(|| {
        anyhow!("no master HTTP address: pass --http http(s)://HOST:PORT (or use a context with `http`)")
    })?;
    if a.master.insecure {
        return rest::Rest::new(&url, None, None);
    }
    let tls = match ctx.as_ref().and_then(|c| c.tls.as_ref()) {
        Some(files) => Some(files.load().context("the context's TLS files")?.https_client_config()?),
        None => None,
    };
    let token = a.master.token.clone().or_else(|| ctx.as_ref().and_then(|c| c.token.clone()));
    rest::Rest::new(&url, tls, token)
}

/// Every row of an archive table in [since, until), page by page, handed to `each` in time order.
async fn pages(
    rest: &rest::Rest,
    table: &str,
    since: u64,
    until: u64,
    mut each: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut token = String::new();
    let mut n = 0;
    for _ in 0..MAX_PAGES {
        let path = format!(
            "/api/v1/archive/{table}?since_ms={since}&until_ms={until}&limit={PAGE}&page_token={token}"
        );
        let p: Page = rest.get(&path).await?;
        for r in p.rows {
            n += 1;
            each(r)?;
        }
        if p.next_page_token.is_empty() {
            return Ok(n);
        }
        if p.next_page_token == token {
            bail!("the master answered the same page token twice");
        }
        token = p.next_page_token;
    }
    bail!("{table}: more than {MAX_PAGES} pages")
}

/// What was written, per table: rows and days.
#[derive(Default)]
struct Written(BTreeMap<&'static str, (u64, BTreeSet<String>)>);

impl Written {
    fn add(&mut self, t: &Table, day: &str, rows: usize) {
        let e = self.0.entry(t.name).or_default();
        e.0 += rows as u64;
        e.1.insert(day.to_string());
    }
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, (n, _))| format!("{n} {k}")).collect();
        f.write_str(&parts.join(", "))
    }
}

struct Ctx<'a> {
    dir: &'a Path,
    format: Format,
    written: Written,
}

impl Ctx<'_> {
    fn write(&mut self, t: &Table, day: &str, rows: &[Row]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        write_partition(self.dir, t, day, rows, self.format)?;
        self.written.add(t, day, rows.len());
        Ok(())
    }
}

/// A disk's identity as the export knows it: from its object attributes, then its latest readings.
#[derive(Default, Clone)]
struct DiskId {
    model: Option<String>,
    serial: Option<String>,
    capacity: Option<String>,
}

async fn export(
    a: &ExportArgs,
    rest: &rest::Rest,
    format: Format,
    since: u64,
    until: u64,
    now: u64,
    dir: &Path,
) -> anyhow::Result<String> {
    let info: Value = rest.get("/api/v1/archive").await.context("reading the archive's summary")?;
    let mut cx = Ctx { dir, format, written: Written::default() };

    // Objects, as they are now (one partition: today), written a row group at a time as the listing's
    // pages arrive: what is kept of them is each disk's identity and the tickets of objects in REPAIR.
    let mut client = a.master.client();
    let (ot, today) = (table::objects(), day_of(now));
    let mut disks: BTreeMap<String, DiskId> = BTreeMap::new();
    let mut current: Vec<CurrentTicket> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut out: Option<table::PartitionWriter<'_>> = None;
    let mut listed = 0usize;
    let mut failed = None;
    let mut each = |o: proto::api::Object| -> anyhow::Result<()> {
        rows.push(object_row(&o, &mut disks, &mut current)?);
        listed += 1;
        if rows.len() >= table::ROW_GROUP_ROWS {
            push_rows(&mut out, dir, &ot, &today, format, &rows)?;
            rows.clear();
        }
        Ok(())
    };
    crate::pages::walk(&mut client, proto::api::ListObjectsRequest::default(), 0, |o| match each(o) {
        Ok(()) => std::ops::ControlFlow::Continue(()),
        Err(e) => {
            failed = Some(e);
            std::ops::ControlFlow::Break(())
        }
    })
    .await
    .map_err(api_err)?;
    if let Some(e) = failed {
        return Err(e);
    }
    if !rows.is_empty() {
        push_rows(&mut out, dir, &ot, &today, format, &rows)?;
    }
    drop(rows);
    if let Some(w) = out {
        w.finish()?;
        cx.written.add(&ot, &today, listed);
    }

    // Transitions (all held in memory: they also decide disk failures and REPAIR stays).
    let mut transitions: Vec<TransitionIn> = Vec::new();
    pages(rest, "transitions", since, until, |v| {
        transitions.push(serde_json::from_value(v).context("a transition row")?);
        Ok(())
    })
    .await?;
    let tt = table::transitions();
    let mut by_day: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    // (object, day) a disk failed: it entered ERROR or REPAIR from a state that was neither, dated by the
    // finding that caused it where one did (the agent saw the failure then), else by the transition.
    let mut failures: BTreeSet<(String, String)> = BTreeSet::new();
    for t in &transitions {
        let (kind, host) = kind_host(&t.object);
        let failed = |s: &str| s == "ERROR" || s == "REPAIR";
        if kind == "disk" && failed(&t.to_state) && !failed(&t.from_state) {
            failures.insert((t.object.clone(), day_of(t.finding_time_ms.unwrap_or(t.time_ms))));
        }
        by_day.entry(day_of(t.time_ms)).or_default().push(vec![
            Val::ms(t.time_ms),
            Val::Str(t.object.clone()),
            Val::Str(kind),
            opt(host),
            Val::Str(t.from_state.clone()),
            Val::Str(t.to_state.clone()),
            Val::Str(t.cause.clone()),
            Val::opt_str(&t.checker),
            Val::opt_str(&t.checker_version),
            Val::ms(t.revision),
            Val::opt_str(&t.cause_detail),
            t.finding_time_ms.map_or(Val::Null, Val::ms),
        ]);
    }
    for (day, rows) in &by_day {
        cx.write(&tt, day, rows)?;
    }

    // Tickets: the archived updates grouped by (object, ticket), with the REPAIR stay around the filing.
    let mut updates: Vec<TicketIn> = Vec::new();
    pages(rest, "tickets", since, until, |v| {
        updates.push(serde_json::from_value(v).context("a ticket row")?);
        Ok(())
    })
    .await?;
    // `current`: objects in REPAIR with a ticket, from the listing (the archive may never have seen the
    // ticket filed: filed before this member's archive began).
    write_tickets(&mut cx, &updates, &transitions, &current)?;

    // Findings, a day at a time, with that day's disk_days.
    let ft = table::findings();
    let dt = table::disk_days();
    let mut day = String::new();
    let mut frows: Vec<Row> = Vec::new();
    // object -> the day's last finding with SMART readings.
    let mut smart: BTreeMap<String, FindingIn> = BTreeMap::new();
    let mut disk_days_written: BTreeSet<String> = BTreeSet::new();
    let mut flush = |cx: &mut Ctx<'_>,
                     day: &str,
                     frows: &mut Vec<Row>,
                     smart: &mut BTreeMap<String, FindingIn>,
                     disks: &mut BTreeMap<String, DiskId>|
     -> anyhow::Result<()> {
        cx.write(&ft, day, frows)?;
        frows.clear();
        let rows = disk_day_rows(day, std::mem::take(smart), &failures, disks);
        cx.write(&dt, day, &rows)?;
        disk_days_written.insert(day.to_string());
        Ok(())
    };
    let mut findings_in = Vec::new();
    let mut n_pages_rows = 0u64;
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let path = format!(
            "/api/v1/archive/findings?since_ms={since}&until_ms={until}&limit={PAGE}&page_token={token}"
        );
        let p: Page = rest.get(&path).await?;
        for v in p.rows {
            findings_in.push(serde_json::from_value::<FindingIn>(v).context("a finding row")?);
        }
        for f in findings_in.drain(..) {
            n_pages_rows += 1;
            let d = day_of(f.time_ms);
            if d != day {
                if !day.is_empty() {
                    flush(&mut cx, &day, &mut frows, &mut smart, &mut disks)?;
                }
                day = d;
            }
            frows.push(finding_row(&f));
            if f.object.starts_with("disk/") && has_smart(&f) {
                smart.insert(f.object.clone(), f);
            }
        }
        if p.next_page_token.is_empty() {
            break;
        }
        if p.next_page_token == token {
            bail!("the master answered the same page token twice");
        }
        token = p.next_page_token;
    }
    if !day.is_empty() {
        flush(&mut cx, &day, &mut frows, &mut smart, &mut disks)?;
    }
    // Failure days without any finding that day still get their disk_days row.
    let failure_days: BTreeSet<String> = failures.iter().map(|(_, d)| d.clone()).collect();
    for d in failure_days.difference(&disk_days_written) {
        let rows = disk_day_rows(d, BTreeMap::new(), &failures, &mut disks);
        cx.write(&dt, d, &rows)?;
    }
    let _ = n_pages_rows;

    let tables: BTreeMap<&str, Value> = ["objects", "transitions", "findings", "disk_days", "tickets"]
        .iter()
        .map(|name| {
            let (rows, days) = cx.written.0.get(name).cloned().unwrap_or_default();
            (*name, json!({ "rows": rows, "days": days }))
        })
        .collect();
    let manifest = json!({
        "schema_version": table::SCHEMA_VERSION,
        "format": format.ext(),
        "since_ms": since,
        "until_ms": until,
        "exported_ms": now,
        "master_http": a.http,
        "tables": tables,
        // What the member's archive holds and its gaps: rows before a gap's before_ms were not archived by
        // this member (restored from a snapshot, or archive started late), and rows older than `days` are gone.
        "archive": info,
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(cx.written.to_string())
}

fn has_smart(f: &FindingIn) -> bool {
    table::SMART_ATTRS.iter().any(|n| f.readings.contains_key(&format!("smart_{n}_raw")))
}

fn finding_row(f: &FindingIn) -> Row {
    let (kind, host) = kind_host(&f.object);
    let mut r = vec![
        Val::ms(f.time_ms),
        Val::Str(f.object.clone()),
        Val::Str(kind),
        opt(host),
        Val::Str(f.checker.clone()),
        Val::opt_str(&f.version),
        Val::opt_str(&f.rule),
        Val::Str(f.severity.clone()),
        Val::Bool(f.shadow),
        Val::Str(f.evidence.lines().next().unwrap_or_default().to_string()),
        Val::Str(serde_json::to_string(&f.readings).unwrap_or_default()),
    ];
    for n in table::SMART_ATTRS {
        r.push(num(f.readings.get(&format!("smart_{n}_raw")).map(String::as_str)));
    }
    r.push(num(f.readings.get("failure_probability").map(String::as_str)));
    r
}

fn disk_day_rows(
    day: &str,
    smart: BTreeMap<String, FindingIn>,
    failures: &BTreeSet<(String, String)>,
    disks: &mut BTreeMap<String, DiskId>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for (object, f) in &smart {
        let id = disks.entry(object.clone()).or_default();
        // Readings name the disk as the agent saw it that day; remember them for failure-only rows.
        if let Some(m) = f.readings.get("model") {
            id.model = Some(m.clone());
        }
        if let Some(s) = f.readings.get("serial") {
            id.serial = Some(s.clone());
        }
        if let Some(c) = f.readings.get("capacity_bytes") {
            id.capacity.get_or_insert(c.clone());
        }
        let id = id.clone();
        seen.insert(object.clone());
        let failed = failures.contains(&(object.clone(), day.to_string()));
        let mut r = vec![
            Val::Str(day.to_string()),
            Val::Str(id.serial.clone().unwrap_or_else(|| object.clone())),
            opt(id.model.clone()),
            int(id.capacity.as_deref()),
            Val::I32(i32::from(failed)),
            Val::Str(object.clone()),
        ];
        for n in table::SMART_ATTRS {
            r.push(num(f.readings.get(&format!("smart_{n}_raw")).map(String::as_str)));
        }
        rows.push(r);
    }
    for (object, d) in failures {
        if d != day || seen.contains(object) {
            continue;
        }
        let id = disks.get(object).cloned().unwrap_or_default();
        let mut r = vec![
            Val::Str(day.to_string()),
            Val::Str(id.serial.clone().unwrap_or_else(|| object.clone())),
            opt(id.model.clone()),
            int(id.capacity.as_deref()),
            Val::I32(1),
            Val::Str(object.clone()),
        ];
        r.extend(table::SMART_ATTRS.iter().map(|_| Val::Null));
        rows.push(r);
    }
    rows
}

/// One object's row of the objects table; notes a disk's identity and an object in REPAIR's ticket.
fn object_row(
    o: &proto::api::Object,
    disks: &mut BTreeMap<String, DiskId>,
    current: &mut Vec<CurrentTicket>,
) -> anyhow::Result<Row> {
    let (kind, host) = kind_host(&o.id);
    let attr = |k: &str| o.attributes.get(k).cloned();
    if kind == "disk" {
        disks.insert(
            o.id.clone(),
            DiskId { model: attr("model"), serial: attr("serial"), capacity: attr("capacity_bytes") },
        );
    }
    if o.state == "REPAIR"
        && let Some(ticket) = attr("ticket")
    {
        let status = attr("ticket-status").unwrap_or_else(|| "filed".into());
        current.push(CurrentTicket {
            object: o.id.clone(),
            ticket,
            status,
            repair_since_ms: o.state_since_ms,
        });
    }
    Ok(vec![
        Val::Str(o.id.clone()),
        Val::Str(kind),
        opt(host),
        Val::Str(o.state.clone()),
        Val::ms(o.state_since_ms),
        opt(attr("model")),
        opt(attr("firmware")),
        opt(attr("serial")),
        int(attr("capacity_bytes").as_deref()),
        Val::Str(serde_json::to_string(&o.labels)?),
        Val::Str(serde_json::to_string(&o.attributes)?),
    ])
}

/// Rows for a partition written as they come, the file created with the first of them.
fn push_rows<'t>(
    out: &mut Option<table::PartitionWriter<'t>>,
    dir: &Path,
    t: &'t Table,
    day: &str,
    format: Format,
    rows: &[Row],
) -> anyhow::Result<()> {
    let w = match out {
        Some(w) => w,
        None => out.insert(table::PartitionWriter::create(dir, t, day, format)?),
    };
    w.push(rows)
}

/// A ticket as the object shows it now (attributes `ticket`, `ticket-status` while in REPAIR).
struct CurrentTicket {
    object: String,
    ticket: String,
    status: String,
    repair_since_ms: u64,
}

fn write_tickets(
    cx: &mut Ctx<'_>,
    updates: &[TicketIn],
    transitions: &[TransitionIn],
    current: &[CurrentTicket],
) -> anyhow::Result<()> {
    // (object, ticket) -> (filed, updated, status)
    let mut tickets: BTreeMap<(String, String), (u64, u64, String)> = BTreeMap::new();
    for u in updates {
        let e = tickets.entry((u.object.clone(), u.ticket.clone())).or_insert((
            u.time_ms,
            u.time_ms,
            u.status.clone(),
        ));
        e.0 = e.0.min(u.time_ms);
        if u.time_ms >= e.1 {
            e.1 = u.time_ms;
            e.2 = u.status.clone();
        }
    }
    let mut by_object: BTreeMap<&str, Vec<&TransitionIn>> = BTreeMap::new();
    for t in transitions {
        by_object.entry(t.object.as_str()).or_default().push(t);
    }
    let tt = table::tickets();
    let mut by_day: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for ((object, ticket), (filed, updated, status)) in tickets {
        let ts = by_object.get(object.as_str()).map(Vec::as_slice).unwrap_or_default();
        // The REPAIR stay the ticket was filed in: the last entry into REPAIR at or before the filing.
        let entered =
            ts.iter().filter(|t| t.to_state == "REPAIR" && t.time_ms <= filed).map(|t| t.time_ms).max();
        let left = entered.and_then(|e| {
            ts.iter().filter(|t| t.from_state == "REPAIR" && t.time_ms >= e).map(|t| t.time_ms).min()
        });
        by_day.entry(day_of(filed)).or_default().push(vec![
            Val::Str(object),
            Val::Str(ticket),
            Val::ms(filed),
            Val::ms(updated),
            Val::Str(status),
            entered.map_or(Val::Null, Val::ms),
            left.map_or(Val::Null, Val::ms),
        ]);
    }
    // Tickets of objects now in REPAIR that no archived update mentions: from the object (filing time
    // unknown: NULL), partitioned by the day the object entered REPAIR.
    for c in current {
        if updates.iter().any(|u| u.object == c.object && u.ticket == c.ticket) {
            continue;
        }
        by_day.entry(day_of(c.repair_since_ms)).or_default().push(vec![
            Val::Str(c.object.clone()),
            Val::Str(c.ticket.clone()),
            Val::Null,
            Val::Null,
            Val::Str(c.status.clone()),
            Val::ms(c.repair_since_ms),
            Val::Null,
        ]);
    }
    for (day, rows) in &by_day {
        cx.write(&tt, day, rows)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations_parse() {
        let now = 1_780_000_000_000;
        assert_eq!(parse_time("30d", now).unwrap(), now - 30 * DAY_MS);
        assert_eq!(parse_time("12h", now).unwrap(), now - 12 * 3_600_000);
        assert_eq!(parse_time("1970-01-02", now).unwrap(), DAY_MS);
        assert_eq!(civil(days_from_civil(2026, 12, 3)), "2026-12-03");
        assert_eq!(day_of(parse_time("2024-02-29", now).unwrap()), "2024-02-29");
        for bad in ["", "30", "30x", "2026-02-31", "2026-13-01", "26-01-01", "-5d", "99999999999999999999d"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_non_empty_target_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_target(&dir.path().join("new"), false).is_ok());
        assert!(check_target(dir.path(), false).is_ok(), "empty is fine");
        std::fs::write(dir.path().join("x"), "x").unwrap();
        let e = check_target(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        assert!(check_target(dir.path(), true).is_ok());
        assert!(check_target(&dir.path().join("x"), true).is_err(), "a file is not a directory");
    }

    #[test]
    fn tickets_join_their_repair_stay_and_current_ones_fill_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut cx = Ctx { dir: dir.path(), format: Format::Csv, written: Written::default() };
        let tr = |t: u64, from: &str, to: &str| TransitionIn {
            time_ms: t,
            object: "disk/h/sda".into(),
            from_state: from.into(),
            to_state: to.into(),
            cause: "operator".into(),
            cause_detail: String::new(),
            checker: String::new(),
            checker_version: String::new(),
            finding_time_ms: None,
            revision: t,
        };
        let transitions = vec![tr(100, "ERROR", "REPAIR"), tr(500, "REPAIR", "NEWBIE")];
        let up = |t: u64, s: &str| TicketIn {
            time_ms: t,
            object: "disk/h/sda".into(),
            ticket: "T-1".into(),
            status: s.into(),
        };
        let updates = vec![up(200, "filed"), up(300, "part-replaced")];
        let current = vec![
            CurrentTicket {
                object: "disk/h/sda".into(),
                ticket: "T-1".into(),
                status: "x".into(),
                repair_since_ms: 1,
            },
            CurrentTicket {
                object: "disk/g/sdb".into(),
                ticket: "T-0".into(),
                status: "accepted".into(),
                repair_since_ms: 50,
            },
        ];
        write_tickets(&mut cx, &updates, &transitions, &current).unwrap();
        let rows = table::read_table(dir.path(), "tickets").unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let t1 = rows.iter().find(|r| r["ticket"] == "T-1").unwrap();
        assert_eq!((t1["filed_ms"].as_str(), t1["updated_ms"].as_str()), ("200", "300"));
        assert_eq!(t1["status"], "part-replaced");
        assert_eq!((t1["repair_entered_ms"].as_str(), t1["repair_left_ms"].as_str()), ("100", "500"));
        let t0 = rows.iter().find(|r| r["ticket"] == "T-0").unwrap();
        assert!(!t0.contains_key("filed_ms"), "filing time unknown: NULL");
        assert_eq!(t0["repair_entered_ms"], "50");
    }

    #[test]
    fn objects_split_into_kind_and_host() {
        assert_eq!(kind_host("disk/h1/sda"), ("disk".into(), Some("h1".into())));
        assert_eq!(kind_host("switch/tor-1"), ("switch".into(), None));
    }
}
