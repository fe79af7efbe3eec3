//! The agent's side of the checker catalog (issue 15, PRODUCT.md section 7): follow the assignment the
//! master sends with heartbeats, fetch the artifacts it names, verify them, and run them.
//!
//! * [`Catalog`] holds the assignment (persisted atomically as `DATA/assignment.json`, so an agent that
//!   cannot reach the master after a restart keeps running its last verified versions) and the `runs`
//!   table every heartbeat carries (what each checker actually runs, with its status and counts).
//! * Artifacts are stored content-addressed as `DATA/artifacts/<sha256>`. A missing one is fetched over
//!   gRPC `FetchArtifact` in chunks into `<sha256>.part`, resumed from the bytes already there after a cut
//!   or a crash, with bounded retries and backoff; its sha256 is checked before it is renamed into place.
//! * [`Supervisor`] applies the assignment between runs, never restarting the agent: kernel-log rule sets
//!   through [`checkers::kernel_log::RulesSwap`] (the kmsg cursor is kept), disk profiles through
//!   [`checkers::scoring::ProfileOverrides`], external checkers as run loops of their own (the existing
//!   sandboxed runner plus RLIMIT_AS / RLIMIT_CPU and an unprivileged user). A shadow entry runs beside
//!   the current version; its findings carry `shadow = true` and never drive anything locally.
//! * Every artifact is verified before it is used: an external checker's file before EVERY run, rule sets
//!   and profiles when loaded and again every [`VERIFY_EVERY`]. A mismatch is never run: a
//!   `checker.unverified` finding about `checker/HOST/NAME`, status `unverified`, the file deleted and
//!   fetched again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkers::external::{ExternalChecker, ExternalSpec, RunAs};
use checkers::kernel_log::{RuleSet, RulesSwap, VersionedRules};
use checkers::scoring::ProfileOverrides;
use checkers::scoring::history::{AssignedModel, ModelSwap};
use checkers::{CheckContext, CheckError, Checker};
use proto::api;
use proto::client::Client;
use serde::{Deserialize, Serialize};
use state_machines::{Finding, Kind, ObjectId, Severity};
use tokio::sync::{Notify, mpsc, watch};

use crate::scheduler::{MIN_INTERVAL, RunReport, RunStatus, Scheduled, now_ms, run_loop};

/// The persisted assignment, in the data dir.
pub const ASSIGNMENT_FILE: &str = "assignment.json";
/// Where artifacts live, in the data dir: one file per sha256.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// Largest artifact the agent accepts (the master refuses pushes above 8 MiB; twice that leaves room for
/// a raised master limit without letting a bad assignment fill the disk).
pub const MAX_ARTIFACT_BYTES: u64 = 16 * 1024 * 1024;
/// Most entries in one assignment: a host runs a handful of catalog checkers; thousands is a master bug.
pub const MAX_ASSIGNMENT_ENTRIES: usize = 256;
/// Bytes asked per FetchArtifact call: well under the gRPC message limit, and a cut loses at most this.
pub const FETCH_CHUNK: u32 = 256 * 1024;
/// Attempts per artifact per supervisor pass; the next pass (at most [`VERIFY_EVERY`] later, or at the
/// next assignment change) tries again, resuming from what is on disk.
pub const FETCH_ATTEMPTS: u32 = 5;
/// Calls the gRPC client makes for one chunk (it follows redirects and retries once); the fetch loop owns
/// the retries beyond that, with its own backoff.
pub const FETCH_CALL_ATTEMPTS: u32 = 2;
/// First wait between fetch attempts; doubles up to [`FETCH_BACKOFF_MAX`].
pub const FETCH_BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between two fetch attempts (a master failover takes a few seconds).
pub const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often stored artifacts are verified again (rule sets and profiles run from memory; this catches
/// a file altered on disk) and failed fetches retried.
pub const VERIFY_EVERY: Duration = Duration::from_secs(10);
/// Extra wait for a replaced external checker's loop to end after its current run (whose own timeout
/// bounds it) before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Most files looked at per garbage pass of the artifact store (a few per assigned checker are expected;
/// the rest goes at the next pass).
pub const MAX_STORE_FILES: usize = 4 * MAX_ASSIGNMENT_ENTRIES;
/// Longest `last_error` kept in the runs table (it travels in every heartbeat).
pub const MAX_LAST_ERROR: usize = 512;
/// The rule that reports an artifact whose bytes do not match the catalog's sha256.
pub const UNVERIFIED_RULE: &str = "checker.unverified";
/// Slack added to an external checker's timeout for the scheduler's own timeout (as for config ones).
pub const EXTERNAL_TIMEOUT_SLACK: Duration = Duration::from_secs(5);
/// Timeout of a catalog external checker whose spec says none.
pub const DEFAULT_EXTERNAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of a catalog external checker whose spec says none.
pub const DEFAULT_EXTERNAL_INTERVAL: Duration = Duration::from_secs(60);
/// Longest timeout a catalog spec may ask for (as for configured checkers).
pub const MAX_EXTERNAL_TIMEOUT: Duration = crate::config::MAX_CHECKER_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("assignment refused: {0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |err| CatalogError::Io { path: path.to_path_buf(), err }
}

/// What an external checker needs (from the catalog's ArtifactSpec; zero = the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
    pub kinds: Vec<String>,
    pub max_memory_bytes: u64,
    pub max_cpu_ms: u64,
}

/// One assigned artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub version: String,
    /// external | rules | profile | model
    pub kind: String,
    pub sha256: String,
    pub size: u64,
    pub shadow: bool,
    pub spec: Spec,
}

impl Entry {
    fn key(&self) -> (String, bool) {
        (self.name.clone(), self.shadow)
    }
}

/// The assignment as the master sent it (hash + entries), as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub hash: String,
    pub entries: Vec<Entry>,
}

fn valid_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

fn valid_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Check an assignment from the wire. Everything or nothing: one bad entry refuses the whole of it (the
/// agent keeps what it runs).
pub fn from_wire(hash: &str, wire: &[api::Assignment]) -> Result<Assignment, CatalogError> {
    let bad = |m: String| Err(CatalogError::Invalid(m));
    // An empty hash stands for "no assignment" (a master without a catalog): only with no entries.
    if (hash.is_empty() && !wire.is_empty()) || hash.len() > 128 {
        return bad("assignment hash must be 1-128 characters".into());
    }
    if wire.len() > MAX_ASSIGNMENT_ENTRIES {
        return bad(format!("{} entries; at most {MAX_ASSIGNMENT_ENTRIES}", wire.len()));
    }
    let mut seen = BTreeSet::new();
    let mut entries = Vec::with_capacity(wire.len());
    for a in wire {
        // Built-in checkers are compiled into the agent: nothing to fetch or swap (the catalog lists them
        // read-only; should a master assign one, it is not an error).
        if a.r#type == "builtin" {
            continue;
        }
        let n = &a.name;
        if let Err(e) = checkers::registry::validate_name(n) {
            return bad(format!("name {n:?}: {e}"));
        }
        if !valid_version(&a.version) {
            return bad(format!(
                "{n}: version {:?} must be 1-64 characters of A-Z a-z 0-9 . _ - +",
                a.version
            ));
        }
        if !["external", "rules", "profile", "model"].contains(&a.r#type.as_str()) {
            return bad(format!(
                "{n}@{}: type {:?} is not external, rules, profile or model",
                a.version, a.r#type
            ));
        }
        if !valid_sha(&a.sha256) {
            return bad(format!("{n}@{}: sha256 must be 64 lower-case hex digits", a.version));
        }
        if a.size == 0 || a.size > MAX_ARTIFACT_BYTES {
            return bad(format!("{n}@{}: size {} not within 1..={MAX_ARTIFACT_BYTES}", a.version, a.size));
        }
        if !seen.insert((n.clone(), a.shadow)) {
            return bad(format!("{n}: assigned twice (shadow={})", a.shadow));
        }
        let s = a.spec.clone().unwrap_or_default();
        let spec = Spec {
            interval_ms: s.interval_ms,
            timeout_ms: s.timeout_ms,
            max_output_bytes: s.max_output_bytes,
            kinds: s.kinds,
            max_memory_bytes: s.max_memory_bytes,
            max_cpu_ms: s.max_cpu_ms,
        };
        let e = Entry {
            name: n.clone(),
            version: a.version.clone(),
            kind: a.r#type.clone(),
            sha256: a.sha256.clone(),
            size: a.size,
            shadow: a.shadow,
            spec,
        };
        if e.kind == "external" {
            external_kinds(&e)?;
            if Duration::from_millis(e.spec.timeout_ms) > MAX_EXTERNAL_TIMEOUT {
                return bad(format!("{n}@{}: timeout above {MAX_EXTERNAL_TIMEOUT:?}", e.version));
            }
            if e.spec.max_output_bytes > crate::config::MAX_EXTERNAL_OUTPUT_BYTES as u64 {
                return bad(format!("{n}@{}: output limit above the agent's", e.version));
            }
        }
        entries.push(e);
    }
    Ok(Assignment { hash: hash.to_string(), entries })
}

fn external_kinds(e: &Entry) -> Result<Vec<Kind>, CatalogError> {
    // No kinds pushed: it may report on any hardware kind (the runner checks each line's object anyway).
    if e.spec.kinds.is_empty() {
        return Ok(vec![Kind::Machine, Kind::Disk, Kind::Dimm, Kind::Nic]);
    }
    e.spec
        .kinds
        .iter()
        .map(|k| match k.parse::<Kind>() {
            Ok(Kind::Checker) | Err(_) => Err(CatalogError::Invalid(format!(
                "{}@{}: kind {k:?} is not one of disk, dimm, nic, machine",
                e.name, e.version
            ))),
            Ok(kind) => Ok(kind),
        })
        .collect()
}

/// What one checker (name, shadow) runs, for the heartbeat's `runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunState {
    pub version: String,
    pub sha256: String,
    /// running | fetching | unverified | failed | fallback
    pub status: String,
    pub runs: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub last_error: String,
    pub last_run_ms: u64,
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_LAST_ERROR {
        return s.to_string();
    }
    let mut end = MAX_LAST_ERROR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[derive(Default)]
struct Inner {
    assignment: Option<Assignment>,
    runs: BTreeMap<(String, bool), RunState>,
}

/// The assignment and the runs table, shared by the reporter (heartbeats) and the supervisor.
pub struct Catalog {
    data_dir: PathBuf,
    inner: Mutex<Inner>,
    /// Notified when a new assignment was stored or an artifact must be fetched again.
    pub changed: Notify,
}

impl Catalog {
    /// Open the catalog state under `data_dir`: the persisted assignment, if any, is loaded (a corrupt
    /// file is an error: the agent does not guess what it was told to run).
    pub fn open(data_dir: &Path) -> Result<Arc<Catalog>, CatalogError> {
        let dir = data_dir.join(ARTIFACTS_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = data_dir.join(ASSIGNMENT_FILE);
        let assignment = match std::fs::read(&path) {
            Ok(raw) => Some(
                serde_json::from_slice::<Assignment>(&raw)
                    .map_err(|e| CatalogError::Corrupt { path: path.clone(), msg: e.to_string() })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(CatalogError::Io { path, err: e }),
        };
        Ok(Arc::new(Catalog {
            data_dir: data_dir.to_path_buf(),
            inner: Mutex::new(Inner { assignment, runs: BTreeMap::new() }),
            changed: Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The hash of the assignment held (empty: none yet).
    pub fn hash(&self) -> String {
        self.lock().assignment.as_ref().map(|a| a.hash.clone()).unwrap_or_default()
    }

    pub fn assignment(&self) -> Option<Assignment> {
        self.lock().assignment.clone()
    }

    /// The path of the stored artifact with this sha256.
    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.data_dir.join(ARTIFACTS_DIR).join(sha256)
    }

    /// Take the assignment of a heartbeat reply. Unchanged: nothing happens. Invalid: refused, nothing
    /// changes. Otherwise it is persisted atomically (temp file, fsync, rename, fsync of the directory)
    /// before it is acted on. Returns whether it changed.
    pub fn offer(&self, hash: &str, wire: &[api::Assignment]) -> Result<bool, CatalogError> {
        if hash == self.hash() {
            return Ok(false);
        }
        let a = from_wire(hash, wire)?;
        let path = self.data_dir.join(ASSIGNMENT_FILE);
        let tmp = self.data_dir.join(format!("{ASSIGNMENT_FILE}.tmp"));
        // Plain data with string keys: serializing cannot fail.
        let bytes = serde_json::to_vec_pretty(&a).unwrap_or_default();
        write_atomically(&tmp, &path, &bytes)?;
        self.lock().assignment = Some(a);
        self.changed.notify_one();
        Ok(true)
    }

    /// Update the runs-table row of (name, shadow), creating it.
    pub fn record(&self, name: &str, shadow: bool, f: impl FnOnce(&mut RunState)) {
        let mut inner = self.lock();
        f(inner.runs.entry((name.to_string(), shadow)).or_default());
    }

    /// Keep only the rows in `keep`.
    fn retain(&self, keep: &BTreeSet<(String, bool)>) {
        self.lock().runs.retain(|k, _| keep.contains(k));
    }

    /// A copy of the runs table.
    pub fn runs(&self) -> BTreeMap<(String, bool), RunState> {
        self.lock().runs.clone()
    }

    /// The runs table as the heartbeat carries it.
    pub fn runs_wire(&self) -> Vec<api::CheckerRun> {
        self.lock()
            .runs
            .iter()
            .map(|((name, shadow), r)| api::CheckerRun {
                name: name.clone(),
                version: r.version.clone(),
                sha256: r.sha256.clone(),
                shadow: *shadow,
                status: r.status.clone(),
                runs: r.runs,
                failures: r.failures,
                timeouts: r.timeouts,
                last_error: r.last_error.clone(),
                last_run_ms: r.last_run_ms,
            })
            .collect()
    }
}

fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let mut f = std::fs::File::create(tmp).map_err(io(tmp))?;
    f.write_all(bytes).map_err(io(tmp))?;
    f.sync_all().map_err(io(tmp))?;
    drop(f);
    std::fs::rename(tmp, path).map_err(io(path))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), CatalogError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetch {name}@{version}: {err}")]
    Rpc { name: String, version: String, err: proto::error::ApiError },
    #[error("fetch {0}: the master answered out of order (offset {1}, expected {2})")]
    Protocol(String, u64, u64),
    #[error("fetch {0}: the master made no progress (empty chunk at offset {1} of {2})")]
    NoProgress(String, u64, u64),
    #[error("fetch {0}: sha256 mismatch after download: expected {1}, got {2}")]
    Mismatch(String, String, String),
    #[error(transparent)]
    Local(#[from] CatalogError),
}

impl FetchError {
    /// Whether another attempt may succeed (a refusal for good is not retried in this pass).
    fn retryable(&self) -> bool {
        match self {
            FetchError::Rpc { err, .. } => !matches!(
                err.code,
                proto::error::Code::PermissionDenied
                    | proto::error::Code::NotFound
                    | proto::error::Code::InvalidArgument
                    | proto::error::Code::Unauthenticated
            ),
            FetchError::Protocol(..) | FetchError::NoProgress(..) | FetchError::Mismatch(..) => true,
            FetchError::Local(_) => false,
        }
    }
}

/// Fetches artifacts from the masters into the artifact store.
pub struct Fetcher {
    pub client: Client,
    pub agent: String,
    pub host: String,
    /// Bytes received so far (for tests and metrics).
    pub received: u64,
}

impl Fetcher {
    pub fn new(
        masters: Vec<String>,
        security: proto::client::ClientSecurity,
        agent: &str,
        host: &str,
    ) -> Self {
        let mut client = Client::with_security(masters, security);
        client.max_attempts = FETCH_CALL_ATTEMPTS;
        Fetcher { client, agent: agent.to_string(), host: host.to_string(), received: 0 }
    }

    /// Make sure `e` is stored under `dest` (`<sha256>`), fetching it (resuming from `<sha256>.part`)
    /// with up to [`FETCH_ATTEMPTS`] attempts and backoff; the bytes are verified before the rename.
    pub async fn fetch(&mut self, e: &Entry, dest: &Path) -> Result<(), FetchError> {
        let part = dest.with_extension("part");
        let mut backoff = FETCH_BACKOFF_START;
        let mut last = None;
        for attempt in 0..FETCH_ATTEMPTS {
            if attempt > 0 {
                // Jittered: a fleet's agents that failed one fetch together do not retry together.
                tokio::time::sleep(proto::client::jittered(backoff)).await;
                backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
            }
            match self.fetch_once(e, &part).await {
                Ok(()) => {
                    let (p, want) = (part.clone(), e.sha256.clone());
                    let got = tokio::task::spawn_blocking(move || checkers::external::sha256_file(&p))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    if got != want {
                        // Bad bytes cannot be resumed: start over.
                        remove_if_there(&part)?;
                        let err = FetchError::Mismatch(format!("{}@{}", e.name, e.version), want, got);
                        tracing::warn!(error = %err, "artifact fetch");
                        last = Some(err);
                        continue;
                    }
                    let mode = if e.kind == "external" { 0o755 } else { 0o644 };
                    set_mode(&part, mode)?;
                    std::fs::rename(&part, dest).map_err(io(dest))?;
                    sync_dir(dest)?;
                    return Ok(());
                }
                Err(err) if err.retryable() => {
                    tracing::warn!(error = %err, attempt, "artifact fetch failed; retrying");
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Protocol(e.name.clone(), 0, 0)))
    }

    /// One pass over the missing bytes, from the length of the `.part` file on.
    async fn fetch_once(&mut self, e: &Entry, part: &Path) -> Result<(), FetchError> {
        let label = format!("{}@{}", e.name, e.version);
        let mut offset = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if offset > e.size {
            remove_if_there(part)?;
            offset = 0;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(io(part))
            .map_err(FetchError::from)?;
        // Each call must move the offset forward (checked below), so this loop ends within `size` calls.
        while offset < e.size {
            let req = api::FetchArtifactRequest {
                agent: self.agent.clone(),
                host: self.host.clone(),
                name: e.name.clone(),
                version: e.version.clone(),
                sha256: e.sha256.clone(),
                offset,
                max_bytes: FETCH_CHUNK,
            };
            let resp =
                self.client.call(req, |mut c, r| async move { c.fetch_artifact(r).await }).await.map_err(
                    |err| FetchError::Rpc { name: e.name.clone(), version: e.version.clone(), err },
                )?;
            if resp.offset != offset || (resp.size != 0 && resp.size != e.size) {
                return Err(FetchError::Protocol(label, resp.offset, offset));
            }
            let n = resp.data.len() as u64;
            if n == 0 || offset + n > e.size {
                return Err(FetchError::NoProgress(label, offset, e.size));
            }
            f.write_all(&resp.data).map_err(io(part)).map_err(FetchError::from)?;
            offset += n;
            self.received += n;
        }
        f.sync_all().map_err(io(part)).map_err(FetchError::from)?;
        Ok(())
    }
}

fn remove_if_there(p: &Path) -> Result<(), CatalogError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CatalogError::Io { path: p.to_path_buf(), err: e }),
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), CatalogError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
}

/// The `checker.unverified` finding: the artifact's bytes are not what the catalog says.
pub fn unverified_finding(host: &str, e: &Entry, found: &str, path: &Path) -> Option<Finding> {
    let object = ObjectId::new(Kind::Checker, host, Some(&e.name)).ok()?;
    Some(
        Finding {
            object,
            severity: Severity::Warning,
            checker: e.name.clone(),
            version: e.version.clone(),
            rule: UNVERIFIED_RULE.into(),
            evidence: format!(
                "{}@{} at {}: expected sha256 {}, found {found}; not run, deleted, fetching it again",
                e.name,
                e.version,
                path.display(),
                e.sha256
            ),
            readings: [
                ("expected_sha256".to_string(), e.sha256.clone()),
                ("found_sha256".to_string(), found.to_string()),
                ("path".to_string(), path.display().to_string()),
            ]
            .into(),
            time_ms: now_ms(),
            shadow: e.shadow,
        }
        .bounded(),
    )
}

/// Hash the stored file; `Err(found)` names what is there instead ("missing: ..." when it is gone).
fn verify(path: &Path, want: &str) -> Result<(), String> {
    match checkers::external::sha256_file(path) {
        Ok(got) if got == want => Ok(()),
        Ok(got) => Err(got),
        Err(e) => Err(format!("unreadable ({e})")),
    }
}

/// A catalog external checker: verifies its file before every run, runs it through the sandboxed runner,
/// marks shadow findings, and keeps its row of the runs table.
pub struct CatalogExternal {
    inner: ExternalChecker,
    entry: Entry,
    catalog: Arc<Catalog>,
}

impl Checker for CatalogExternal {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn kinds(&self) -> &[Kind] {
        self.inner.kinds()
    }
    fn default_interval(&self) -> Duration {
        self.inner.default_interval()
    }
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        let e = &self.entry;
        let path = self.inner.spec().path.clone();
        if let Err(found) = verify(&path, &e.sha256) {
            // Never run it: report, delete, and have the supervisor fetch it again.
            if let Err(err) = remove_if_there(&path) {
                tracing::error!(error = %err, "cannot delete an unverified artifact");
            }
            self.catalog.record(&e.name, e.shadow, |r| {
                r.status = "unverified".into();
                r.last_error = cut(&format!("sha256 mismatch: expected {}, found {found}", e.sha256));
            });
            self.catalog.changed.notify_one();
            return Ok(unverified_finding(&ctx.host, e, &found, &path).into_iter().collect());
        }
        let mut findings = self.inner.run(ctx)?;
        let broken = findings.iter().find(|f| f.rule == "checker.broken").map(|f| f.evidence.clone());
        self.catalog.record(&e.name, e.shadow, |r| {
            r.runs += 1;
            r.last_run_ms = ctx.now_ms;
            match &broken {
                Some(ev) => {
                    if ev.contains("timed out") {
                        r.timeouts += 1;
                    } else {
                        r.failures += 1;
                    }
                    r.status = "failed".into();
                    r.last_error = cut(ev);
                }
                None => r.status = "running".into(),
            }
        });
        if e.shadow {
            for f in &mut findings {
                f.shadow = true;
            }
        }
        Ok(findings)
    }
}

/// How the supervisor runs external checkers.
#[derive(Debug, Clone)]
pub struct ExternalPolicy {
    /// The user to run them as (agent running as root), or why there is none (then they are not run).
    pub run_as: Result<Option<RunAs>, String>,
}

struct Running {
    entry: Entry,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

/// Applies the assignment: fetches, verifies, swaps rule sets and profiles, runs external checkers.
pub struct Supervisor {
    pub catalog: Arc<Catalog>,
    pub fetcher: Fetcher,
    pub reports: mpsc::Sender<RunReport>,
    pub ctx: CheckContext,
    pub rules: Arc<RulesSwap>,
    pub profiles: Arc<ProfileOverrides>,
    /// The built-in kernel-log version (reported as `fallback` while no rule set is assigned).
    pub builtin_rules_version: String,
    pub policy: ExternalPolicy,
    externals: BTreeMap<(String, bool), Running>,
    /// The (name, version, sha256, shadow) of the rule sets / profiles last applied.
    applied_rules: Option<Vec<(String, String, String, bool)>>,
    applied_profiles: Option<Vec<(String, String, String, bool)>>,
    /// The disk checker's failure model (issue 20) and the (name, version, sha256) last applied to it.
    model: Arc<ModelSwap>,
    applied_model: Option<Option<(String, String, String)>>,
    seed: u64,
    /// The agent's built-in rule set and the sha256 of its source: an assigned rule set with the same bytes
    /// (the seeded version 1) runs on this compiled copy instead of a second one (a compiled default set
    /// holds a few MiB of automata; `huatuo bench agent` saw the idle agent grow 20 -> 30 MiB with two).
    builtin_rules: Option<(String, Arc<RuleSet>)>,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Arc<Catalog>,
        fetcher: Fetcher,
        reports: mpsc::Sender<RunReport>,
        ctx: CheckContext,
        rules: Arc<RulesSwap>,
        profiles: Arc<ProfileOverrides>,
        builtin_rules_version: String,
        policy: ExternalPolicy,
    ) -> Self {
        Supervisor {
            catalog,
            fetcher,
            reports,
            ctx,
            rules,
            profiles,
            builtin_rules_version,
            policy,
            externals: BTreeMap::new(),
            applied_rules: None,
            applied_profiles: None,
            model: Arc::new(ModelSwap::default()),
            applied_model: None,
            seed: now_ms() | 1,
            builtin_rules: None,
        }
    }

    /// Hand assigned `model` artifacts to the disk checker through `swap` (read at each scoring pass).
    pub fn with_model_swap(mut self, swap: Arc<ModelSwap>) -> Self {
        self.model = swap;
        self
    }

    /// Share the agent's built-in compiled rule set (built from source bytes of sha256 `sha256`) with any
    /// assigned rule set of exactly those bytes.
    pub fn with_builtin_rules(mut self, sha256: String, rules: Arc<RuleSet>) -> Self {
        self.builtin_rules = Some((sha256, rules));
        self
    }

    /// Run until `shutdown`: a pass at start (the persisted assignment runs without the master), then one
    /// at every assignment change or refetch request and every [`VERIFY_EVERY`].
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let catalog = Arc::clone(&self.catalog);
        loop {
            tokio::select! {
                _ = self.pass() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = catalog.changed.notified() => {}
                _ = tokio::time::sleep(VERIFY_EVERY) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.stop_all().await;
    }

    async fn report(&self, e: &Entry, findings: Vec<Finding>, why: &str) {
        let report = RunReport {
            checker: e.name.clone(),
            version: e.version.clone(),
            findings,
            checkpoint: None,
            status: RunStatus::Failed(why.to_string()),
            elapsed: Duration::ZERO,
        };
        if self.reports.send(report).await.is_err() {
            tracing::debug!("sink gone; supervisor report dropped");
        }
    }

    /// Make the artifact of `e` present and verified. Returns its path, or None (status says why).
    async fn ensure(&mut self, e: &Entry) -> Option<PathBuf> {
        let path = self.catalog.artifact_path(&e.sha256);
        if path.exists() {
            let (p, want) = (path.clone(), e.sha256.clone());
            let checked = tokio::task::spawn_blocking(move || verify(&p, &want)).await;
            match checked {
                Ok(Ok(())) => return Some(path),
                Ok(Err(found)) => {
                    tracing::error!(artifact = %path.display(), expected = e.sha256, found, "artifact altered on disk");
                    let f = unverified_finding(&self.ctx.host, e, &found, &path);
                    self.report(e, f.into_iter().collect(), "unverified").await;
                    if let Err(err) = remove_if_there(&path) {
                        tracing::error!(error = %err, "cannot delete an unverified artifact");
                        return None;
                    }
                    self.catalog.record(&e.name, e.shadow, |r| {
                        r.status = "unverified".into();
                        r.last_error = cut(&format!("sha256 mismatch: expected {}, found {found}", e.sha256));
                    });
                }
                Err(_) => return None,
            }
        }
        let running_other = self.catalog.runs().get(&e.key()).is_some_and(|r| r.status == "running");
        if !running_other {
            self.catalog.record(&e.name, e.shadow, |r| {
                r.status = "fetching".into();
                r.version = e.version.clone();
                r.sha256 = e.sha256.clone();
            });
        }
        match self.fetcher.fetch(e, &path).await {
            Ok(()) => Some(path),
            Err(err) => {
                tracing::warn!(error = %err, "artifact not fetched; keeping what runs");
                self.catalog.record(&e.name, e.shadow, |r| {
                    if r.status != "running" {
                        r.status = "fetching".into();
                    }
                    r.last_error = cut(&err.to_string());
                });
                None
            }
        }
    }

    /// One pass over the assignment.
    pub async fn pass(&mut self) {
        let entries = self.catalog.assignment().map(|a| a.entries).unwrap_or_default();
        let mut ready: BTreeMap<(String, bool), PathBuf> = BTreeMap::new();
        // What is on disk first (verified and applied at once, even with the master out of reach), then
        // what must be fetched (a slow or failing fetch does not hold up the rest), then apply again.
        let (present, missing): (Vec<&Entry>, Vec<&Entry>) =
            entries.iter().partition(|e| self.catalog.artifact_path(&e.sha256).exists());
        for e in present {
            if let Some(p) = self.ensure(e).await {
                ready.insert(e.key(), p);
            }
        }
        self.apply(&entries, &ready).await;
        let mut fetched = false;
        for e in missing {
            if let Some(p) = self.ensure(e).await {
                ready.insert(e.key(), p);
                fetched = true;
            }
        }
        if fetched {
            self.apply(&entries, &ready).await;
        }
        let mut keep: BTreeSet<(String, bool)> = entries.iter().map(Entry::key).collect();
        if !entries.iter().any(|e| e.kind == "rules" && !e.shadow) {
            keep.insert((checkers::kernel_log::CHECKER_NAME.to_string(), false));
        }
        self.catalog.retain(&keep);
        let mut used: BTreeSet<String> = entries.iter().map(|e| e.sha256.clone()).collect();
        used.extend(self.externals.values().map(|r| r.entry.sha256.clone()));
        self.collect_garbage(&used);
    }

    async fn apply(&mut self, entries: &[Entry], ready: &BTreeMap<(String, bool), PathBuf>) {
        self.apply_rules(entries, ready);
        self.apply_profiles(entries, ready);
        self.apply_model(entries, ready);
        self.apply_externals(entries, ready).await;
    }

    /// Delete stored artifacts (and partial downloads) nothing assigned or running uses: the store holds
    /// what this host runs, not every version it ever ran (a rollback fetches the old one again).
    fn collect_garbage(&self, used: &BTreeSet<String>) {
        let dir = self.catalog.data_dir.join(ARTIFACTS_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        for entry in rd.take(MAX_STORE_FILES).flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let sha = name.strip_suffix(".part").unwrap_or(&name);
            if !used.contains(sha)
                && let Err(e) = remove_if_there(&entry.path())
            {
                tracing::warn!(error = %e, "cannot delete an unused artifact");
            }
        }
    }

    fn apply_rules(&mut self, entries: &[Entry], ready: &BTreeMap<(String, bool), PathBuf>) {
        let rules: Vec<&Entry> = entries.iter().filter(|e| e.kind == "rules").collect();
        if rules.is_empty() {
            self.catalog.record(checkers::kernel_log::CHECKER_NAME, false, |r| {
                *r = RunState {
                    version: self.builtin_rules_version.clone(),
                    status: "fallback".into(),
                    ..Default::default()
                };
            });
            if self.applied_rules.take().is_some() {
                self.rules.set(None, None);
            }
            return;
        }
        // Swap only when every assigned rule set is here: until then the current one keeps running.
        if rules.iter().any(|e| !ready.contains_key(&e.key())) {
            return;
        }
        let key: Vec<_> =
            rules.iter().map(|e| (e.name.clone(), e.version.clone(), e.sha256.clone(), e.shadow)).collect();
        if self.applied_rules.as_ref() == Some(&key) {
            self.still_running(&rules);
            return;
        }
        let read = |e: &Entry| -> Result<(String, String), String> {
            let p = &ready[&e.key()];
            let text = std::fs::read_to_string(p).map_err(|err| format!("{}: {err}", p.display()))?;
            Ok((format!("{}@{}", e.name, e.version), text))
        };
        let main: Vec<&Entry> = rules.iter().copied().filter(|e| !e.shadow).collect();
        let shadows: Vec<&Entry> = rules.iter().copied().filter(|e| e.shadow).collect();
        let builtin = self.builtin_rules.clone();
        let compile = |set: &[&Entry], version: String| -> Result<VersionedRules, String> {
            if let ([one], Some((sha, rs))) = (set, &builtin)
                && one.sha256 == *sha
            {
                return Ok(VersionedRules { rules: Arc::clone(rs), version: Some(version) });
            }
            let sources = set.iter().map(|e| read(e)).collect::<Result<Vec<_>, _>>()?;
            let rs = RuleSet::from_sources(&sources).map_err(|e| e.to_string())?;
            Ok(VersionedRules { rules: Arc::new(rs), version: Some(version) })
        };
        let label = |set: &[&Entry]| match set {
            [one] => one.version.clone(),
            many => many.iter().map(|e| format!("{}@{}", e.name, e.version)).collect::<Vec<_>>().join("+"),
        };
        let main_set = if main.is_empty() { Ok(None) } else { compile(&main, label(&main)).map(Some) };
        let main_set = match main_set {
            Ok(m) => m,
            Err(err) => {
                for e in &main {
                    self.catalog.record(&e.name, false, |r| {
                        r.status = "failed".into();
                        r.version = e.version.clone();
                        r.sha256 = e.sha256.clone();
                        r.last_error = cut(&format!("rule set does not compile: {err}"));
                    });
                }
                return;
            }
        };
        let mut shadow_set = None;
        for (i, s) in shadows.iter().enumerate() {
            // The shadow set replaces the main set of the same name; the other main sets stay in.
            let mut set: Vec<&Entry> = main.iter().copied().filter(|m| m.name != s.name).collect();
            set.push(s);
            let res = if i > 0 {
                Err("only one shadow rule set runs at a time".to_string())
            } else {
                compile(&set, s.version.clone())
            };
            match res {
                Ok(v) => {
                    shadow_set = Some(v);
                    self.catalog.record(&s.name, true, |r| {
                        r.status = "running".into();
                        r.version = s.version.clone();
                        r.sha256 = s.sha256.clone();
                        r.last_error.clear();
                    });
                }
                Err(err) => self.catalog.record(&s.name, true, |r| {
                    r.status = "failed".into();
                    r.version = s.version.clone();
                    r.sha256 = s.sha256.clone();
                    r.last_error = cut(&err);
                }),
            }
        }
        for e in &main {
            self.catalog.record(&e.name, false, |r| {
                r.status = "running".into();
                r.version = e.version.clone();
                r.sha256 = e.sha256.clone();
                r.last_error.clear();
            });
        }
        tracing::info!(rules = ?key, "kernel-log rule sets swapped");
        self.rules.set(main_set, shadow_set);
        self.applied_rules = Some(key);
    }

    /// Entries applied earlier whose file was refetched (after a tamper or a loss) run again from the
    /// verified copy in memory: their row says so.
    fn still_running(&self, entries: &[&Entry]) {
        for e in entries {
            self.catalog.record(&e.name, e.shadow, |r| {
                if r.status == "unverified" || r.status == "fetching" {
                    r.status = "running".into();
                }
            });
        }
    }

    fn apply_profiles(&mut self, entries: &[Entry], ready: &BTreeMap<(String, bool), PathBuf>) {
        let profiles: Vec<&Entry> = entries.iter().filter(|e| e.kind == "profile").collect();
        for e in profiles.iter().filter(|e| e.shadow) {
            self.catalog.record(&e.name, true, |r| {
                r.status = "failed".into();
                r.version = e.version.clone();
                r.sha256 = e.sha256.clone();
                r.last_error = "shadow runs of scoring profiles are not supported by this agent".into();
            });
        }
        let live: Vec<&Entry> = profiles.into_iter().filter(|e| !e.shadow).collect();
        if live.iter().any(|e| !ready.contains_key(&e.key())) {
            return;
        }
        let key: Vec<_> =
            live.iter().map(|e| (e.name.clone(), e.version.clone(), e.sha256.clone(), e.shadow)).collect();
        if self.applied_profiles.as_ref() == Some(&key) {
            self.still_running(&live);
            return;
        }
        let mut set = BTreeMap::new();
        for e in &live {
            let p = &ready[&e.key()];
            let parsed =
                std::fs::read_to_string(p).map_err(|err| format!("{}: {err}", p.display())).and_then(|t| {
                    ProfileOverrides::parse(&e.name, &t, &e.version).map_err(|err| err.to_string())
                });
            match parsed {
                Ok(profile) => {
                    set.insert(e.name.clone(), (profile, e.version.clone()));
                    self.catalog.record(&e.name, false, |r| {
                        r.status = "running".into();
                        r.version = e.version.clone();
                        r.sha256 = e.sha256.clone();
                        r.last_error.clear();
                    });
                }
                Err(err) => self.catalog.record(&e.name, false, |r| {
                    r.status = "failed".into();
                    r.version = e.version.clone();
                    r.sha256 = e.sha256.clone();
                    r.last_error = cut(&format!("profile refused: {err}"));
                }),
            }
        }
        self.profiles.set(set);
        self.applied_profiles = Some(key);
    }

    /// The disk-failure model: one live model at a time (the first by name; others are reported failed),
    /// verified like every artifact, parsed with every check of `predict::Model::from_json`. A model that
    /// does not parse is never used (no predictions: the disk checker grades as without a model) and says
    /// why in its row; no model assigned: no predictions.
    fn apply_model(&mut self, entries: &[Entry], ready: &BTreeMap<(String, bool), PathBuf>) {
        let mut models: Vec<&Entry> = entries.iter().filter(|e| e.kind == "model").collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let failed = |catalog: &Catalog, e: &Entry, why: String| {
            catalog.record(&e.name, e.shadow, |r| {
                r.status = "failed".into();
                r.version = e.version.clone();
                r.sha256 = e.sha256.clone();
                r.last_error = cut(&why);
            });
        };
        for e in models.iter().filter(|e| e.shadow) {
            failed(&self.catalog, e, "shadow runs of failure models are not supported by this agent".into());
        }
        let live: Vec<&Entry> = models.into_iter().filter(|e| !e.shadow).collect();
        for e in live.iter().skip(1) {
            failed(
                &self.catalog,
                e,
                format!("only one failure model runs at a time ({} does)", live[0].name),
            );
        }
        let Some(e) = live.first().copied() else {
            if self.applied_model.take().is_some_and(|m| m.is_some()) {
                tracing::info!("failure model unassigned; no more predictions");
            }
            self.model.set(None);
            self.applied_model = Some(None);
            return;
        };
        // Until the new model is here (fetching), the one applied keeps scoring.
        let Some(path) = ready.get(&e.key()) else { return };
        let key = Some((e.name.clone(), e.version.clone(), e.sha256.clone()));
        if self.applied_model.as_ref() == Some(&key) {
            self.still_running(&[e]);
            return;
        }
        let parsed = std::fs::read(path)
            .map_err(|err| format!("{}: {err}", path.display()))
            .and_then(|b| AssignedModel::parse(&e.name, &e.version, &b).map_err(|err| err.to_string()));
        match parsed {
            Ok(m) => {
                tracing::info!(model = m.label(), "failure model swapped");
                self.model.set(Some(m));
                self.catalog.record(&e.name, false, |r| {
                    r.status = "running".into();
                    r.version = e.version.clone();
                    r.sha256 = e.sha256.clone();
                    r.last_error.clear();
                });
            }
            Err(err) => {
                tracing::error!(name = e.name, version = e.version, error = err, "failure model refused");
                self.model.set(None);
                failed(&self.catalog, e, format!("model refused: {err}"));
            }
        }
        self.applied_model = Some(key);
    }

    async fn apply_externals(&mut self, entries: &[Entry], ready: &BTreeMap<(String, bool), PathBuf>) {
        let wanted: BTreeMap<(String, bool), &Entry> =
            entries.iter().filter(|e| e.kind == "external").map(|e| (e.key(), e)).collect();
        // Gone from the assignment: stop.
        let gone: Vec<_> = self.externals.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for k in gone {
            if let Some(r) = self.externals.remove(&k) {
                stop(r).await;
            }
        }
        for (k, e) in wanted {
            // Already running this version (a loop that ended, e.g. after a panic, is started again).
            if self.externals.get(&k).is_some_and(|r| r.entry == *e && !r.task.is_finished()) {
                continue;
            }
            let Some(path) = ready.get(&k) else { continue }; // the old version (if any) keeps running
            let run_as = match &self.policy.run_as {
                Ok(u) => *u,
                Err(why) => {
                    self.catalog.record(&e.name, e.shadow, |r| {
                        r.status = "failed".into();
                        r.version = e.version.clone();
                        r.sha256 = e.sha256.clone();
                        r.last_error = cut(why);
                    });
                    continue;
                }
            };
            let kinds = match external_kinds(e) {
                Ok(k) => k,
                Err(err) => {
                    self.catalog.record(&e.name, e.shadow, |r| r.last_error = cut(&err.to_string()));
                    continue;
                }
            };
            if let Some(old) = self.externals.remove(&k) {
                stop(old).await; // between runs: the old version's current run finishes first
            }
            let mut spec = ExternalSpec::new(&e.name, &e.version, path.clone());
            spec.sha256 = Some(e.sha256.clone());
            if e.spec.timeout_ms > 0 {
                spec.timeout = Duration::from_millis(e.spec.timeout_ms);
            } else {
                spec.timeout = DEFAULT_EXTERNAL_TIMEOUT;
            }
            if e.spec.max_output_bytes > 0 {
                spec.max_bytes = e.spec.max_output_bytes as usize;
            }
            spec.max_memory_bytes = (e.spec.max_memory_bytes > 0).then_some(e.spec.max_memory_bytes);
            spec.max_cpu = (e.spec.max_cpu_ms > 0).then(|| Duration::from_millis(e.spec.max_cpu_ms));
            spec.run_as = run_as;
            let interval = if e.spec.interval_ms > 0 {
                Duration::from_millis(e.spec.interval_ms).max(MIN_INTERVAL)
            } else {
                DEFAULT_EXTERNAL_INTERVAL
            };
            let timeout = spec.timeout + EXTERNAL_TIMEOUT_SLACK;
            let checker = CatalogExternal {
                inner: ExternalChecker::new(spec, kinds, interval),
                entry: e.clone(),
                catalog: Arc::clone(&self.catalog),
            };
            self.catalog.record(&e.name, e.shadow, |r| {
                *r = RunState {
                    version: e.version.clone(),
                    sha256: e.sha256.clone(),
                    status: "running".into(),
                    ..Default::default()
                };
            });
            let s = Scheduled { checker: Box::new(checker), interval, timeout, jitter: 0.1, wake: None };
            let (stop_tx, stop_rx) = watch::channel(false);
            self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let task = tokio::spawn(run_loop(s, self.ctx.clone(), self.reports.clone(), stop_rx, self.seed));
            tracing::info!(name = e.name, version = e.version, shadow = e.shadow, "external checker started");
            self.externals.insert(k, Running { entry: e.clone(), stop: stop_tx, task, timeout });
        }
    }

    async fn stop_all(&mut self) {
        let all = std::mem::take(&mut self.externals);
        // Tell every loop first, then wait: the waits overlap instead of adding up.
        for r in all.values() {
            r.stop.send_replace(true);
        }
        for (_, r) in all {
            stop(r).await;
        }
    }
}

/// Stop one external checker's loop: after its current run (bounded by its timeout), else aborted.
async fn stop(r: Running) {
    r.stop.send_replace(true);
    let mut task = r.task;
    if tokio::time::timeout(r.timeout + STOP_GRACE, &mut task).await.is_err() {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str, shadow: bool) -> api::Assignment {
        api::Assignment {
            name: name.into(),
            version: "1".into(),
            r#type: "external".into(),
            sha256: "ab".repeat(32),
            size: 10,
            shadow,
            spec: Some(api::ArtifactSpec { kinds: vec!["disk".into()], ..Default::default() }),
        }
    }

    #[test]
    fn bad_assignments_are_refused_whole_and_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path()).unwrap();
        assert!(c.offer("h1", &[wire("raid", false), wire("raid", true)]).unwrap());
        type Mutation = Box<dyn Fn(&mut api::Assignment)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|a| a.name = "bad name".into())),
            ("version", Box::new(|a| a.version = "1 2".into())),
            ("type", Box::new(|a| a.r#type = "binary".into())),
            ("sha256", Box::new(|a| a.sha256 = "AB".repeat(32))),
            ("size", Box::new(|a| a.size = MAX_ARTIFACT_BYTES + 1)),
            (
                "kinds",
                Box::new(|a| {
                    a.spec = Some(api::ArtifactSpec { kinds: vec!["checker".into()], ..Default::default() })
                }),
            ),
            (
                "timeout",
                Box::new(|a| {
                    a.spec = Some(api::ArtifactSpec {
                        kinds: vec!["disk".into()],
                        timeout_ms: 3_600_000,
                        ..Default::default()
                    })
                }),
            ),
        ];
        for (what, f) in cases {
            let mut a = wire("raid2", false);
            f(&mut a);
            let err = c.offer("h2", &[wire("ok", false), a]);
            assert!(matches!(err, Err(CatalogError::Invalid(_))), "{what}: {err:?}");
            assert_eq!(c.hash(), "h1", "{what}: nothing changed");
        }
        assert!(c.offer("h3", &[wire("a", false), wire("a", false)]).is_err(), "duplicate");
        let many: Vec<_> = (0..=MAX_ASSIGNMENT_ENTRIES).map(|i| wire(&format!("c{i}"), false)).collect();
        assert!(c.offer("h4", &many).is_err(), "too many entries");
        assert!(!c.offer("h1", &[]).unwrap(), "the same hash is not taken again");
        assert!(c.offer("", &[wire("x", false)]).is_err(), "an empty hash carries no entries");
        let mut builtin = wire("smart", false);
        builtin.r#type = "builtin".into();
        builtin.sha256.clear();
        let a = from_wire("h5", &[builtin, wire("raid", false)]).unwrap();
        assert_eq!(a.entries.len(), 1, "built-ins are skipped, not refused");
        let mut no_kinds = wire("any", false);
        no_kinds.spec = None;
        let a = from_wire("h6", &[no_kinds]).unwrap();
        assert_eq!(external_kinds(&a.entries[0]).unwrap().len(), 4, "no kinds: any hardware kind");
        // Persisted: a reopened catalog holds the same assignment.
        let again = Catalog::open(d.path()).unwrap();
        assert_eq!(again.assignment(), c.assignment());
        assert_eq!(again.assignment().unwrap().entries.len(), 2);
    }

    #[test]
    fn a_corrupt_assignment_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(ASSIGNMENT_FILE), b"{not json").unwrap();
        assert!(matches!(Catalog::open(d.path()), Err(CatalogError::Corrupt { .. })));
    }

    #[test]
    fn last_error_is_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_LAST_ERROR);
        let c = cut(&long);
        assert!(c.len() <= MAX_LAST_ERROR && c.chars().all(|ch| ch == 'é'));
    }
}
