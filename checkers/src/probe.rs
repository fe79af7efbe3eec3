//! Probes: the only IO the host checkers do. Two kinds:
//!
//! * reading small text files below [`CheckContext::root`](crate::CheckContext) (`/` live, a recorded
//!   `/proc` + `/sys` tree in tests) with a size cap, path checks and clear errors for missing files;
//! * running an external program (smartctl, an external checker) with a timeout, in its own process group
//!   that is killed as a whole on timeout, and with caps on the output it may produce.
//!
//! Everything above this module (parsers, scoring) is pure: input + `now` -> value.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::CheckError;

/// Largest file a probe reads. sysfs/procfs attributes are a few bytes; /proc/self/mountinfo on a busy
/// container host and /proc/diskstats with thousands of devices are the big ones (~100s of KiB).
pub const MAX_PROBE_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most entries a directory listing returns (thousands of PIDs in /proc are normal; more is suspect and
/// would make one check run unbounded).
pub const MAX_DIR_ENTRIES: usize = 65_536;
/// How often a running child is polled for exit. Bounds the extra latency of a probe, not its duration.
const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// After killing a timed-out process group, how long we wait for the child to be reaped and for its
/// output pipes to close. A task in D state cannot die, so this must stay bounded: we give up and report.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why a probe could not read what it wanted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}: file missing")]
    Missing(String),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{path}: larger than the probe limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{0:?}: path must be relative to the probe root, without '..'")]
    BadPath(String),
    #[error("{path}: cannot parse {what}: {got:?}")]
    Parse { path: String, what: &'static str, got: String },
    #[error("{program}: cannot start: {msg}")]
    Spawn { program: String, msg: String },
}

impl From<ProbeError> for CheckError {
    fn from(e: ProbeError) -> Self {
        CheckError::Probe(e.to_string())
    }
}

/// Join `rel` below `root`, refusing absolute paths and `..` so a hostile name (an interface or device
/// name read from a directory) cannot walk out of the tree.
pub fn join(root: &Path, rel: &str) -> Result<PathBuf, ProbeError> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(ProbeError::BadPath(rel.chars().take(120).collect()));
    }
    Ok(root.join(p))
}

/// Read a text file below `root` (at most [`MAX_PROBE_FILE_BYTES`]). Invalid UTF-8 is replaced, not
/// rejected: parsers decide what they accept.
pub fn read_file(root: &Path, rel: &str) -> Result<String, ProbeError> {
    read_file_capped(root, rel, MAX_PROBE_FILE_BYTES)
}

/// [`read_file`] with an explicit cap (tests use a small one to exercise the limit).
pub fn read_file_capped(root: &Path, rel: &str, cap: u64) -> Result<String, ProbeError> {
    let path = join(root, rel)?;
    let shown = path.display().to_string();
    let f = std::fs::File::open(&path).map_err(|e| io_err(&shown, &e))?;
    let mut buf = Vec::new();
    // sysfs/procfs report size 0, so the cap is enforced on the bytes actually read.
    f.take(cap + 1).read_to_end(&mut buf).map_err(|e| io_err(&shown, &e))?;
    if buf.len() as u64 > cap {
        return Err(ProbeError::TooLarge { path: shown, limit: cap });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Read a file holding one unsigned integer (sysfs counters).
pub fn read_u64(root: &Path, rel: &str) -> Result<u64, ProbeError> {
    let text = read_file_capped(root, rel, 4096)?;
    let t = text.trim();
    t.parse::<u64>().map_err(|_| ProbeError::Parse {
        path: root.join(rel).display().to_string(),
        what: "an unsigned integer",
        got: t.chars().take(40).collect(),
    })
}

/// Read a file holding one short line (sysfs labels and states), trimmed.
pub fn read_line(root: &Path, rel: &str) -> Result<String, ProbeError> {
    Ok(read_file_capped(root, rel, 4096)?.trim().to_string())
}

/// Whether `rel` exists below `root` (a dangling symlink counts as existing: recorded trees keep links
/// whose targets were never captured).
pub fn exists(root: &Path, rel: &str) -> bool {
    join(root, rel).map(|p| p.symlink_metadata().is_ok()).unwrap_or(false)
}

/// Names in a directory below `root`, sorted (determinism), at most [`MAX_DIR_ENTRIES`].
pub fn list_dir(root: &Path, rel: &str) -> Result<Vec<String>, ProbeError> {
    let path = join(root, rel)?;
    let shown = path.display().to_string();
    let rd = std::fs::read_dir(&path).map_err(|e| io_err(&shown, &e))?;
    let mut out = Vec::new();
    for entry in rd.take(MAX_DIR_ENTRIES) {
        let entry = entry.map_err(|e| io_err(&shown, &e))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn io_err(path: &str, e: &std::io::Error) -> ProbeError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ProbeError::Missing(path.to_string())
    } else {
        ProbeError::Io { path: path.to_string(), msg: e.to_string() }
    }
}

/// Limits for [`run_bounded`].
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// Wall time allowed from spawn to exit.
    pub timeout: Duration,
    /// Most stdout bytes kept; more output kills the group (a runaway program).
    pub max_stdout: usize,
    /// Most stderr bytes kept (extra stderr is drained and dropped, never a reason to kill).
    pub max_stderr: usize,
}

/// What a bounded run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code when the program exited normally (None: killed by a signal or never reaped).
    pub code: Option<i32>,
    /// The signal that ended the program (None: it exited, or was never reaped).
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The program wrote more than `max_stdout` bytes; it was killed and the output cut.
    pub stdout_overflow: bool,
    /// The program did not exit within the timeout; its process group was killed.
    pub timed_out: bool,
    /// After the kill the child could not be reaped within [`KILL_GRACE`] (a task stuck in D state).
    pub unreaped: bool,
    /// When `unreaped`: fires (or disconnects) once the stuck child is finally reaped, so callers can keep
    /// the device reserved until then.
    pub reaped: Option<mpsc::Receiver<()>>,
    pub elapsed: Duration,
}

/// Run `cmd` in a new process group with stdin closed, capture bounded output, kill the whole group on
/// timeout or stdout overflow. Never blocks longer than `timeout + 3 * KILL_GRACE`, even when the
/// program hangs in D state or leaves a child holding the pipes open.
pub fn run_bounded(mut cmd: Command, limits: RunLimits) -> Result<RunOutput, ProbeError> {
    use std::os::unix::process::CommandExt;
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let start = Instant::now();
    let mut child =
        cmd.spawn().map_err(|e| ProbeError::Spawn { program: program.clone(), msg: e.to_string() })?;
    let pgid = child.id() as i32;

    // Readers run on their own threads and report through channels, so a pipe held open by an escaped
    // grandchild can never block us: we stop waiting for them after the grace period.
    let (out_tx, out_rx) = mpsc::channel::<(Vec<u8>, bool)>();
    let (overflow_tx, overflow_rx) = mpsc::channel::<()>();
    if let Some(mut out) = child.stdout.take() {
        let max = limits.max_stdout;
        std::thread::spawn(move || {
            let (buf, over) = read_capped(&mut out, max);
            if over {
                let _ = overflow_tx.send(());
            }
            let _ = out_tx.send((buf, over));
        });
    }
    let (err_tx, err_rx) = mpsc::channel::<(Vec<u8>, bool)>();
    if let Some(mut err) = child.stderr.take() {
        let max = limits.max_stderr;
        std::thread::spawn(move || {
            let (buf, _) = read_capped(&mut err, max);
            // Drain the rest so the program never blocks on a full stderr pipe.
            let _ = std::io::copy(&mut err, &mut std::io::sink());
            let _ = err_tx.send((buf, false));
        });
    }

    let deadline = start + limits.timeout;
    let mut timed_out = false;
    let mut overflow = false;
    let mut status = None;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                break;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        if overflow_rx.try_recv().is_ok() {
            overflow = true;
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(CHILD_POLL_INTERVAL);
    }
    // Kill the group in every case: a program that exited may have left children behind in its group
    // (an external checker that forks a daemon), and those must not outlive the run.
    kill_group(pgid);
    let mut unreaped = false;
    let mut reaped = None;
    if status.is_none() {
        let grace = Instant::now() + KILL_GRACE;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                break;
            }
            if Instant::now() >= grace {
                unreaped = true;
                // Reap it later if it ever leaves D state, so no zombie stays behind.
                let (tx, rx) = mpsc::channel();
                reaped = Some(rx);
                std::thread::spawn(move || {
                    let _ = child.wait();
                    let _ = tx.send(());
                });
                break;
            }
            std::thread::sleep(CHILD_POLL_INTERVAL);
        }
    }
    let (stdout, over2) = out_rx.recv_timeout(KILL_GRACE).unwrap_or_default();
    let (stderr, _) = err_rx.recv_timeout(KILL_GRACE).unwrap_or_default();
    Ok(RunOutput {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        stdout,
        stderr,
        stdout_overflow: overflow || over2,
        timed_out,
        unreaped,
        reaped,
        elapsed: start.elapsed(),
    })
}

/// SIGKILL a whole process group; an already-empty group (ESRCH) is fine.
fn kill_group(pgid: i32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Read up to `max` bytes; report whether more was available.
fn read_capped(r: &mut impl Read, max: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return (buf, false),
            Ok(n) => {
                if buf.len() + n > max {
                    let room = max - buf.len();
                    buf.extend_from_slice(&chunk[..room]);
                    return (buf, true);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (buf, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn limits(ms: u64) -> RunLimits {
        RunLimits { timeout: Duration::from_millis(ms), max_stdout: 1024, max_stderr: 1024 }
    }

    #[test]
    fn reads_and_rejects_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(d.path().join("proc/x"), "42\n").unwrap();
        assert_eq!(read_u64(d.path(), "proc/x").unwrap(), 42);
        assert!(matches!(read_file(d.path(), "proc/missing"), Err(ProbeError::Missing(_))));
        assert!(read_file(d.path(), "proc/missing").unwrap_err().to_string().contains("file missing"));
        assert!(matches!(read_file(d.path(), "../etc/passwd"), Err(ProbeError::BadPath(_))));
        assert!(matches!(read_file(d.path(), "/etc/passwd"), Err(ProbeError::BadPath(_))));
        std::fs::write(d.path().join("proc/y"), "abc").unwrap();
        assert!(matches!(read_u64(d.path(), "proc/y"), Err(ProbeError::Parse { .. })));
    }

    #[test]
    fn size_cap_is_enforced_at_the_limit() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x".repeat(100)).unwrap();
        assert!(read_file_capped(d.path(), "f", 100).is_ok());
        assert!(matches!(read_file_capped(d.path(), "f", 99), Err(ProbeError::TooLarge { .. })));
    }

    #[test]
    fn run_captures_output_and_code() {
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "ok.sh", "echo hello; echo oops >&2; exit 3");
        let out = run_bounded(Command::new(&s), limits(5000)).unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"oops\n");
        assert!(!out.timed_out && !out.stdout_overflow);
    }

    #[test]
    fn hanging_program_is_killed_at_timeout() {
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "hang.sh", "echo started; sleep 600");
        let out = run_bounded(Command::new(&s), limits(300)).unwrap();
        assert!(out.timed_out);
        assert_eq!(out.code, None);
        assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    }

    #[test]
    fn stdout_overflow_kills_and_cuts() {
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "spew.sh", "yes xxxxxxxxxxxxxxxx");
        let out = run_bounded(Command::new(&s), limits(10_000)).unwrap();
        assert!(out.stdout_overflow);
        assert_eq!(out.stdout.len(), 1024);
        assert!(!out.timed_out);
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run_bounded(Command::new("/nonexistent/smartctl"), limits(100)).unwrap_err();
        assert!(matches!(err, ProbeError::Spawn { .. }), "{err}");
    }
}
