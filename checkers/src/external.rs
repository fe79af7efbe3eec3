//! External checkers: a script or binary that prints findings as JSON lines on stdout.
//!
//! The runner never trusts it: the executable's sha256 can be verified before it runs; it runs with stdin
//! closed, a timeout, in its own process group (the whole group is SIGKILLed on timeout, on output
//! overflow, and after it exits, so forked children cannot outlive it; PR_SET_PDEATHSIG is per thread and
//! is not relied on), with caps on output bytes and lines. Each line must be one JSON object:
//!
//! ```json
//! {"object": "disk/HOST/sda", "severity": "WARNING", "rule": "vendor.raid-degraded",
//!  "evidence": "free text", "readings": {"key": "value"}}
//! ```
//!
//! `checker` and `version` are filled in by the runner (a script cannot speak for another checker) and
//! `time_ms` by the caller's clock. Anything wrong (bad hash, timeout, crash, malformed lines, too much
//! output, a finding about another host or about a `checker/` object) becomes ONE finding about the checker
//! itself, `checker/HOST/NAME` with rule `checker.broken`: never a crash and never a fault on the host's
//! hardware. Valid lines printed before a problem are kept.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use state_machines::{Finding, Kind, ObjectId, Severity};

use crate::probe::{self, RunLimits};
use crate::{CheckContext, CheckError, Checker};

/// Default wall time for one run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on stdout bytes (a checker reports a handful of findings; 1 MiB is generous).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Default cap on stdout lines (findings) per run.
pub const DEFAULT_MAX_LINES: usize = 1000;
/// Largest executable we hash (bigger is not a checker; reading it would stall the agent).
pub const MAX_EXECUTABLE_BYTES: u64 = 256 * 1024 * 1024;
/// How many individual problems are quoted in a `checker.broken` finding (the count covers the rest).
const MAX_QUOTED_PROBLEMS: usize = 5;

/// How to run one external checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSpec {
    /// Checker name: also the NAME of its `checker/HOST/NAME` object.
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
    pub max_bytes: usize,
    pub max_lines: usize,
    /// Expected sha256 of the executable (hex); checked before every run when set.
    pub sha256: Option<String>,
    /// RLIMIT_AS of the process (bytes of address space): an allocation past it fails in the child.
    pub max_memory_bytes: Option<u64>,
    /// RLIMIT_CPU of the process, rounded up to whole seconds (the kernel's unit): SIGXCPU at the limit,
    /// SIGKILL one second later.
    pub max_cpu: Option<Duration>,
    /// Run as this user instead of the agent's (set when the agent runs as root; see [`lookup_user`]).
    pub run_as: Option<RunAs>,
}

/// An unprivileged identity to run an external checker as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Smallest RLIMIT_AS accepted: below this a dynamically linked program cannot even start, which would
/// look like a broken checker rather than a limit.
pub const MIN_MEMORY_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest /etc/passwd read when looking a user up (a passwd file is a few KiB).
const MAX_PASSWD_BYTES: u64 = 4 * 1024 * 1024;

/// Why a user name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("user {0:?} is not in {1}")]
    Unknown(String, PathBuf),
    #[error("user {0:?} is root: an external checker never runs as root when a user is configured")]
    Root(String),
}

/// Look `name` up in `passwd` (the format of /etc/passwd: `name:x:uid:gid:...`). Root (uid 0) is refused.
pub fn lookup_user(name: &str, passwd: &std::path::Path) -> Result<RunAs, UserError> {
    let f = std::fs::File::open(passwd).map_err(|err| UserError::Io { path: passwd.to_path_buf(), err })?;
    let mut text = String::new();
    f.take(MAX_PASSWD_BYTES)
        .read_to_string(&mut text)
        .map_err(|err| UserError::Io { path: passwd.to_path_buf(), err })?;
    for line in text.lines() {
        let mut parts = line.split(':');
        if parts.next() != Some(name) {
            continue;
        }
        let _password = parts.next();
        let uid = parts.next().and_then(|u| u.parse::<u32>().ok());
        let gid = parts.next().and_then(|g| g.parse::<u32>().ok());
        if let (Some(uid), Some(gid)) = (uid, gid) {
            if uid == 0 {
                return Err(UserError::Root(name.to_string()));
            }
            return Ok(RunAs { uid, gid });
        }
    }
    Err(UserError::Unknown(name.to_string(), passwd.to_path_buf()))
}

/// Whether this process runs as root (the owner of /proc/self is its effective uid).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Apply the resource limits and identity of `spec` to `cmd` (in the child, between fork and exec).
fn confine(cmd: &mut Command, spec: &ExternalSpec) {
    use std::os::unix::process::CommandExt;
    if let Some(u) = spec.run_as {
        // std drops supplementary groups (setgroups(0)) when it changes the uid as root.
        cmd.uid(u.uid).gid(u.gid);
    }
    let mem = spec.max_memory_bytes.map(|m| m.max(MIN_MEMORY_LIMIT));
    let cpu = spec.max_cpu.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)).map(|s| s.max(1));
    if mem.is_none() && cpu.is_none() {
        return;
    }
    set_limits_in_child(cmd, mem, cpu);
}

/// The one unsafe call of this crate outside tests: `pre_exec` runs the closure in the forked child. It
/// only calls setrlimit(2), which is async-signal-safe, allocates nothing and touches no lock, as the
/// contract of `pre_exec` requires.
#[allow(unsafe_code)]
fn set_limits_in_child(cmd: &mut Command, mem: Option<u64>, cpu: Option<u64>) {
    use nix::sys::resource::{Resource, setrlimit};
    use std::os::unix::process::CommandExt;
    let limits = move || -> std::io::Result<()> {
        if let Some(m) = mem {
            setrlimit(Resource::RLIMIT_AS, m, m).map_err(std::io::Error::from)?;
        }
        if let Some(c) = cpu {
            // Soft limit: SIGXCPU; the hard limit one second later is SIGKILL for a program that ignores it.
            setrlimit(Resource::RLIMIT_CPU, c, c + 1).map_err(std::io::Error::from)?;
        }
        Ok(())
    };
    // SAFETY: see the function's comment; the closure owns plain integers only.
    unsafe {
        cmd.pre_exec(limits);
    }
}

impl ExternalSpec {
    pub fn new(name: &str, version: &str, path: PathBuf) -> Self {
        ExternalSpec {
            name: name.to_string(),
            version: version.to_string(),
            path,
            args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
            max_lines: DEFAULT_MAX_LINES,
            sha256: None,
            max_memory_bytes: None,
            max_cpu: None,
            run_as: None,
        }
    }
}

/// Why the executable could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: larger than {MAX_EXECUTABLE_BYTES} bytes")]
    TooLarge { path: PathBuf },
}

/// Why one output line was rejected (quoted in the `checker.broken` finding).
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not a finding: {0}")]
    NotAFinding(#[from] serde_json::Error),
    #[error("bad object: {0}")]
    BadObject(state_machines::IdError),
    #[error("object {object} is on another host (this is {host}): rejected")]
    OtherHost { object: ObjectId, host: String },
    #[error("object {0}: an external checker may not report about checkers")]
    CheckerObject(ObjectId),
    #[error("{0}")]
    BadSeverity(state_machines::finding::SeverityError),
    #[error("rule must be 1-128 characters without spaces or control characters")]
    BadRule,
    /// Anything else the master would refuse (a reading name or value with control characters or too
    /// long, NUL in the evidence): refused here, so one bad line never makes a whole batch invalid.
    #[error("{0}")]
    Invalid(state_machines::finding::FindingError),
}

/// One line as an external checker prints it. Unknown fields are ignored (newer checkers may add some).
#[derive(Debug, Deserialize)]
struct Line {
    object: String,
    severity: String,
    rule: String,
    #[serde(default)]
    evidence: String,
    #[serde(default)]
    readings: BTreeMap<String, Value>,
}

/// sha256 of a file, hex, reading at most [`MAX_EXECUTABLE_BYTES`].
/// The sha256 of `bytes`, hex in lower case (the catalog's form).
pub fn sha256_bytes(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    hex::encode(h.finalize())
}

pub fn sha256_file(path: &std::path::Path) -> Result<String, HashError> {
    let io = |err| HashError::Io { path: path.to_path_buf(), err };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut r = f.take(MAX_EXECUTABLE_BYTES + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_EXECUTABLE_BYTES {
            return Err(HashError::TooLarge { path: path.to_path_buf() });
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Parse an external checker's stdout into findings plus a list of problems (pure).
pub fn parse_output(
    spec: &ExternalSpec,
    ctx: &CheckContext,
    stdout: &[u8],
) -> (Vec<Finding>, Vec<String>, usize) {
    let mut findings = Vec::new();
    let mut problems = Vec::new();
    let mut rejected = 0;
    let text = String::from_utf8_lossy(stdout);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if findings.len() + rejected >= spec.max_lines {
            problems.push(format!("more than {} lines; the rest was ignored", spec.max_lines));
            break;
        }
        match parse_line(spec, ctx, line) {
            Ok(f) => findings.push(f),
            Err(e) => {
                rejected += 1;
                problems.push(format!("line {}: {e}", i + 1));
            }
        }
    }
    (findings, problems, rejected)
}

fn parse_line(spec: &ExternalSpec, ctx: &CheckContext, line: &str) -> Result<Finding, LineError> {
    let l: Line = serde_json::from_str(line)?;
    let object: ObjectId = l.object.parse().map_err(LineError::BadObject)?;
    if object.host() != ctx.host {
        return Err(LineError::OtherHost { object, host: ctx.host.clone() });
    }
    if object.kind() == Kind::Checker {
        return Err(LineError::CheckerObject(object));
    }
    let severity: Severity = l.severity.parse().map_err(LineError::BadSeverity)?;
    if l.rule.is_empty() || l.rule.len() > 128 || l.rule.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(LineError::BadRule);
    }
    let readings = l
        .readings
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect();
    let finding = Finding {
        object,
        severity,
        checker: spec.name.clone(),
        version: spec.version.clone(),
        rule: l.rule,
        evidence: l.evidence,
        readings,
        time_ms: ctx.now_ms,
        shadow: false,
    }
    .bounded();
    finding.validate().map_err(LineError::Invalid)?;
    Ok(finding)
}

/// Run an external checker once. Returns its valid findings, plus one `checker.broken` finding when
/// anything went wrong. `Err` only for a spec that cannot name an object (bad checker name or host).
pub fn run(spec: &ExternalSpec, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
    let me = ObjectId::new(Kind::Checker, &ctx.host, Some(&spec.name))
        .map_err(|e| CheckError::Config(format!("external checker name: {e}")))?;
    let broken = |problems: Vec<String>, readings: BTreeMap<String, String>| -> Finding {
        let mut ev = format!("external checker {} {} is broken: ", spec.name, spec.version);
        ev.push_str(&problems.iter().take(MAX_QUOTED_PROBLEMS).cloned().collect::<Vec<_>>().join("; "));
        if problems.len() > MAX_QUOTED_PROBLEMS {
            ev.push_str(&format!("; and {} more", problems.len() - MAX_QUOTED_PROBLEMS));
        }
        Finding {
            object: me.clone(),
            severity: Severity::Warning,
            checker: spec.name.clone(),
            version: spec.version.clone(),
            rule: "checker.broken".into(),
            evidence: ev,
            readings,
            time_ms: ctx.now_ms,
            shadow: false,
        }
        .bounded()
    };
    if let Some(want) = &spec.sha256 {
        match sha256_file(&spec.path) {
            Ok(got) if got.eq_ignore_ascii_case(want.trim()) => {}
            Ok(got) => {
                return Ok(vec![broken(
                    vec![format!("sha256 mismatch: expected {want}, file has {got}; not run")],
                    BTreeMap::from([("sha256".into(), got)]),
                )]);
            }
            Err(e) => return Ok(vec![broken(vec![format!("cannot verify: {e}; not run")], BTreeMap::new())]),
        }
    }
    let mut cmd = Command::new(&spec.path);
    cmd.args(&spec.args).env("HUATUO_HOST", &ctx.host).env("HUATUO_ROOT", &ctx.root);
    confine(&mut cmd, spec);
    let limits = RunLimits { timeout: spec.timeout, max_stdout: spec.max_bytes, max_stderr: 16 * 1024 };
    let out = match probe::run_bounded(cmd, limits) {
        Ok(o) => o,
        Err(e) => return Ok(vec![broken(vec![e.to_string()], BTreeMap::new())]),
    };
    let (mut findings, mut problems, rejected) = parse_output(spec, ctx, &out.stdout);
    if out.timed_out {
        problems.insert(0, format!("timed out after {:?}; process group killed", spec.timeout));
    }
    if out.stdout_overflow {
        problems.insert(0, format!("wrote more than {} bytes; process group killed", spec.max_bytes));
    }
    if !out.timed_out && !out.stdout_overflow && out.code != Some(0) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String =
            stderr.trim().chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
        let how = match out.signal {
            Some(s)
                if s == libc::SIGXCPU
                    || (s == libc::SIGKILL && spec.max_cpu.is_some_and(|c| out.elapsed >= c)) =>
            {
                format!("killed by signal {s} at its CPU limit ({:?})", spec.max_cpu.unwrap_or_default())
            }
            Some(s) => format!("killed by signal {s}"),
            None => format!("exited with {:?}", out.code),
        };
        let mem = spec.max_memory_bytes.map(|m| format!(" (memory limit {m} bytes)")).unwrap_or_default();
        problems.insert(0, format!("{how}{mem}; stderr: {tail}"));
    }
    if !problems.is_empty() {
        let readings = BTreeMap::from([
            ("accepted".into(), findings.len().to_string()),
            ("rejected".into(), rejected.to_string()),
            ("exit_code".into(), out.code.map(|c| c.to_string()).unwrap_or_else(|| "none".into())),
            ("signal".into(), out.signal.map(|c| c.to_string()).unwrap_or_else(|| "none".into())),
            ("elapsed_ms".into(), out.elapsed.as_millis().to_string()),
        ]);
        findings.push(broken(problems, readings));
    }
    Ok(findings)
}

/// An external checker as a [`Checker`]: its name and version come from configuration (or, later, the
/// catalog), so it sits in the same registry and schedule as the built-in checkers.
pub struct ExternalChecker {
    spec: ExternalSpec,
    kinds: Vec<Kind>,
    interval: Duration,
}

impl ExternalChecker {
    pub fn new(spec: ExternalSpec, kinds: Vec<Kind>, interval: Duration) -> Self {
        ExternalChecker { spec, kinds, interval }
    }

    pub fn spec(&self) -> &ExternalSpec {
        &self.spec
    }
}

impl Checker for ExternalChecker {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn version(&self) -> &str {
        &self.spec.version
    }
    fn kinds(&self) -> &[Kind] {
        &self.kinds
    }
    fn default_interval(&self) -> Duration {
        self.interval
    }
    fn run(&mut self, ctx: &CheckContext) -> Result<Vec<Finding>, CheckError> {
        run(&self.spec, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Instant;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("check.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn ctx() -> CheckContext {
        CheckContext { root: "/".into(), host: "h1".into(), now_ms: 7, profile: "online".into() }
    }

    fn broken(f: &[Finding]) -> Option<&Finding> {
        f.iter().find(|x| x.rule == "checker.broken")
    }

    const GOOD: &str = r#"{"object":"disk/h1/sda","severity":"WARNING","rule":"raid.degraded","evidence":"md0 [U_]","readings":{"n":2,"s":"x"}}"#;

    #[test]
    fn good_output_becomes_findings() {
        let d = tempfile::tempdir().unwrap();
        let spec = ExternalSpec::new(
            "raidcheck",
            "1.2.0",
            script(d.path(), &format!("echo '{GOOD}'; echo; echo '{GOOD}'")),
        );
        let f = run(&spec, &ctx()).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!((f[0].checker.as_str(), f[0].version.as_str(), f[0].time_ms), ("raidcheck", "1.2.0", 7));
        assert_eq!(f[0].readings["n"], "2");
        assert_eq!(f[0].object.to_string(), "disk/h1/sda");
    }

    #[test]
    fn garbage_is_a_finding_about_the_checker() {
        let d = tempfile::tempdir().unwrap();
        let body = format!(
            "echo '{GOOD}'; printf '\\001\\002\\377 garbage\\n'; echo '{{\"object\":\"disk/h2/sda\",\"severity\":\"FATAL\",\"rule\":\"x\"}}'; \
             echo '{{\"object\":\"checker/h1/other\",\"severity\":\"FATAL\",\"rule\":\"x\"}}'; echo '{{\"object\":\"disk/h1/sda\",\"severity\":\"DEAD\",\"rule\":\"x\"}}'"
        );
        let spec = ExternalSpec::new("c1", "1", script(d.path(), &body));
        let f = run(&spec, &ctx()).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        let b = broken(&f).unwrap();
        assert_eq!(b.object.to_string(), "checker/h1/c1");
        assert_eq!(b.readings["rejected"], "4");
        assert!(b.evidence.contains("another host"), "{}", b.evidence);
        assert!(f.iter().all(|x| x.object.host() == "h1"));
        assert!(!f.iter().any(|x| x.severity == Severity::Fatal), "nothing from rejected lines got through");
    }

    #[test]
    fn a_line_the_master_would_refuse_is_rejected_alone() {
        // Found by the property test: a reading name with DEL passed the parser and would have made the
        // agent's whole batch invalid at the master.
        let spec = ExternalSpec::new("c1", "1", PathBuf::from("/bin/true"));
        let long = "v".repeat(state_machines::finding::MAX_LABEL_LEN + 1);
        let out = format!(
            "{{\"object\":\"nic/h1/eth0\",\"severity\":\"WARNING\",\"rule\":\"ext.link\",\"readings\":{{\"u\\u007f\":1}}}}\n\
             {{\"object\":\"nic/h1/eth0\",\"severity\":\"WARNING\",\"rule\":\"ext.link\",\"readings\":{{\"n\":\"{long}\"}}}}\n\
             {{\"object\":\"nic/h1/eth0\",\"severity\":\"WARNING\",\"rule\":\"ext.link\",\"evidence\":\"a\\u0000b\"}}\n{GOOD}"
        );
        let (findings, problems, rejected) = parse_output(&spec, &ctx(), out.as_bytes());
        assert_eq!((findings.len(), rejected), (1, 3), "{findings:?} {problems:?}");
        assert!(findings[0].validate().is_ok());
        assert!(problems[0].contains("control characters"), "{problems:?}");
        assert!(problems[2].contains("NUL"), "{problems:?}");
    }

    #[test]
    fn too_many_bytes_or_lines() {
        let d = tempfile::tempdir().unwrap();
        let mut spec = ExternalSpec::new("spew", "1", script(d.path(), "yes garbage-garbage"));
        spec.max_bytes = 4096;
        let f = run(&spec, &ctx()).unwrap();
        assert!(broken(&f).unwrap().evidence.contains("more than 4096 bytes"), "{f:?}");
        let mut spec = ExternalSpec::new(
            "lines",
            "1",
            script(d.path(), &format!("for i in 1 2 3 4 5; do echo '{GOOD}'; done")),
        );
        spec.max_lines = 3;
        let f = run(&spec, &ctx()).unwrap();
        assert_eq!(f.len(), 4);
        assert!(broken(&f).unwrap().evidence.contains("more than 3 lines"));
    }

    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => crate::diskstats::parse_stat_state(&s).is_some_and(|(_, st)| st == 'Z'),
        }
    }

    fn wait_gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if gone(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn forked_child_is_killed_with_the_group() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("child.pid");
        // The script exits at once but leaves a child holding stdout open.
        let body = format!("sleep 600 & echo $! > {}; echo '{GOOD}'; exit 0", pidfile.display());
        let spec = ExternalSpec::new("forker", "1", script(d.path(), &body));
        let start = Instant::now();
        let f = run(&spec, &ctx()).unwrap();
        assert!(start.elapsed() < Duration::from_secs(20));
        assert_eq!(f.len(), 1, "{f:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(wait_gone(pid), "child {pid} survived the group kill");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("child.pid");
        let body = format!("sleep 600 & echo $! > {}; echo '{GOOD}'; sleep 600", pidfile.display());
        let mut spec = ExternalSpec::new("hang", "1", script(d.path(), &body));
        spec.timeout = Duration::from_millis(500);
        let f = run(&spec, &ctx()).unwrap();
        assert!(broken(&f).unwrap().evidence.contains("timed out"), "{f:?}");
        assert_eq!(f.len(), 2, "the line printed before the hang is kept");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(wait_gone(pid), "child {pid} survived the timeout kill");
    }

    #[test]
    fn sha256_is_verified_before_running() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("ran");
        let path = script(d.path(), &format!("touch {}; echo '{GOOD}'", marker.display()));
        let good = sha256_file(&path).unwrap();
        let mut spec = ExternalSpec::new("verified", "1", path);
        spec.sha256 = Some("00".repeat(32));
        let f = run(&spec, &ctx()).unwrap();
        assert!(broken(&f).unwrap().evidence.contains("sha256 mismatch"));
        assert!(!marker.exists(), "a mismatching executable must not run");
        spec.sha256 = Some(good.to_uppercase());
        let f = run(&spec, &ctx()).unwrap();
        assert_eq!(f.len(), 1);
        assert!(marker.exists());
    }

    #[test]
    fn crash_and_missing_binary_and_bad_name() {
        let d = tempfile::tempdir().unwrap();
        let spec = ExternalSpec::new("crash", "1", script(d.path(), "echo boom >&2; exit 3"));
        let f = run(&spec, &ctx()).unwrap();
        assert!(broken(&f).unwrap().evidence.contains("boom"));
        let spec = ExternalSpec::new("missing", "1", "/nonexistent/x".into());
        assert!(broken(&run(&spec, &ctx()).unwrap()).is_some());
        let spec = ExternalSpec::new("bad name", "1", "/bin/true".into());
        assert!(matches!(run(&spec, &ctx()), Err(CheckError::Config(_))));
    }

    #[test]
    fn a_memory_hog_is_stopped_by_its_address_space_limit() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("survived");
        // Builds a 256 MiB shell string: impossible under a 64 MiB address space.
        let body = format!(
            "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo ${{#x}}; touch {}",
            marker.display()
        );
        let mut spec = ExternalSpec::new("hog", "1", script(d.path(), &body));
        spec.max_memory_bytes = Some(64 * 1024 * 1024);
        spec.timeout = Duration::from_secs(60);
        let start = Instant::now();
        let f = run(&spec, &ctx()).unwrap();
        let b = broken(&f).unwrap_or_else(|| panic!("a hog is reported: {f:?}"));
        assert!(b.evidence.contains("memory limit 67108864"), "{}", b.evidence);
        assert!(!marker.exists(), "the hog never got its memory");
        assert!(start.elapsed() < Duration::from_secs(60), "stopped by the limit, not the timeout");
        assert!(!b.evidence.contains("timed out"), "{}", b.evidence);
    }

    #[test]
    fn a_cpu_spinner_is_killed_at_its_cpu_limit() {
        let d = tempfile::tempdir().unwrap();
        let mut spec = ExternalSpec::new("spin", "1", script(d.path(), "while :; do :; done"));
        spec.max_cpu = Some(Duration::from_millis(1500)); // rounded up to 2 s of CPU
        spec.timeout = Duration::from_secs(120);
        let f = run(&spec, &ctx()).unwrap();
        let b = broken(&f).unwrap_or_else(|| panic!("a spinner is reported: {f:?}"));
        assert!(b.evidence.contains("CPU limit"), "{}", b.evidence);
        assert_eq!(b.readings["signal"], libc::SIGXCPU.to_string(), "{b:?}");
        assert!(
            !b.evidence.contains("timed out"),
            "killed by the CPU limit, not the wall clock: {}",
            b.evidence
        );
    }

    #[test]
    fn users_are_looked_up_and_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let passwd = d.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65533:n:/:/bin/false\nbad:x:z:1::/:\n",
        )
        .unwrap();
        assert_eq!(lookup_user("nobody", &passwd).unwrap(), RunAs { uid: 65534, gid: 65533 });
        assert!(matches!(lookup_user("root", &passwd), Err(UserError::Root(_))));
        assert!(matches!(lookup_user("bad", &passwd), Err(UserError::Unknown(..))));
        assert!(matches!(lookup_user("ghost", &passwd), Err(UserError::Unknown(..))));
        assert!(matches!(lookup_user("nobody", &d.path().join("none")), Err(UserError::Io { .. })));
    }

    /// As root, the checker runs as the configured user (skipped when the tests do not run as root: only
    /// root can change its uid).
    #[test]
    fn as_root_the_checker_runs_as_the_configured_user() {
        if !running_as_root() {
            eprintln!("not root: cannot test the uid switch");
            return;
        }
        let run_as = lookup_user("nobody", std::path::Path::new("/etc/passwd")).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let body = r#"echo "{\"object\":\"disk/h1/sda\",\"severity\":\"GOOD\",\"rule\":\"whoami\",\"evidence\":\"$(id -u):$(id -g):$(id -G)\"}""#;
        let mut spec = ExternalSpec::new("who", "1", script(d.path(), body));
        spec.run_as = Some(run_as);
        let f = run(&spec, &ctx()).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].evidence, format!("{0}:{1}:{1}", run_as.uid, run_as.gid), "no root, no extra groups");
    }
}
