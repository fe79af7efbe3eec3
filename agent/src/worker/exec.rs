//! Running the external programs of an action: template expansion (`{device}`, `{service}`, ...; one
//! argument stays one argument, never a shell), an action-wide deadline, and a log of steps for the
//! report. Each program runs in its own process group, killed as a whole at the deadline, with its output
//! capped (`checkers::probe::run_bounded`). In dry-run mode a step is recorded and not run.

use std::process::Command;
use std::time::{Duration, Instant};

use checkers::probe::{RunLimits, run_bounded};
use serde::Serialize;

/// Most stdout a program may write before its group is killed: the tools we run print a few lines;
/// megabytes mean a runaway.
pub const MAX_COMMAND_STDOUT: usize = 1024 * 1024;
/// Most stderr kept per program (the rest is drained and dropped).
pub const MAX_COMMAND_STDERR: usize = 64 * 1024;
/// Output of one step kept in the report (its tail is what explains a failure).
pub const MAX_STEP_OUTPUT: usize = 4 * 1024;
/// Time a cleanup step (unmount) gets even after the action's deadline has passed.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most steps one action records: every action is a short fixed sequence plus polling; more is a bug.
pub const MAX_STEPS: usize = 512;

/// One thing an action did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The command line or a description of the in-process work.
    pub what: String,
    /// Not run: dry run.
    pub planned: bool,
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub elapsed_ms: u64,
    /// The tail of stdout+stderr, capped at [`MAX_STEP_OUTPUT`].
    pub output: String,
}

/// Result of one program run.
#[derive(Debug, Clone)]
pub struct Ran {
    pub ok: bool,
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The deadline and step log shared by the steps of one action.
#[derive(Debug)]
pub struct Exec {
    pub dry_run: bool,
    deadline: Instant,
    pub steps: Vec<Step>,
    pub timed_out: bool,
}

/// Replace `{key}` placeholders in each argument. Values are inserted verbatim into one argument each.
pub fn expand(template: &[String], vars: &[(&str, &str)]) -> Vec<String> {
    template
        .iter()
        .map(|arg| {
            let mut a = arg.clone();
            for (k, v) in vars {
                a = a.replace(&format!("{{{k}}}"), v);
            }
            a
        })
        .collect()
}

/// Keep the last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+{}".contains(&b)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Exec {
    pub fn new(dry_run: bool, timeout: Duration) -> Self {
        Exec { dry_run, deadline: Instant::now() + timeout, steps: Vec::new(), timed_out: false }
    }

    /// Time left before the action's deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn push(&mut self, step: Step) {
        if self.steps.len() < MAX_STEPS {
            self.steps.push(step);
        }
    }

    /// Record in-process work (a file removed, a benchmark phase).
    pub fn note(&mut self, what: String, ok: bool, elapsed: Duration, output: String) {
        let planned = self.dry_run;
        self.push(Step {
            what,
            planned,
            ok,
            exit_code: None,
            timed_out: false,
            elapsed_ms: elapsed.as_millis() as u64,
            output: tail(&output, MAX_STEP_OUTPUT),
        });
    }

    /// Run a program that changes something; in a dry run only record it (and report success).
    pub fn change(&mut self, argv: &[String], limit: Option<Duration>) -> Ran {
        if self.dry_run {
            self.push(Step {
                what: shell_words(argv),
                planned: true,
                ok: true,
                exit_code: None,
                timed_out: false,
                elapsed_ms: 0,
                output: String::new(),
            });
            return Ran {
                ok: true,
                code: None,
                timed_out: false,
                stdout: String::new(),
                stderr: String::new(),
            };
        }
        self.run(argv, limit)
    }

    /// Run a program that only reads (blkid, smartctl -H): it runs in dry runs too.
    pub fn inspect(&mut self, argv: &[String], limit: Option<Duration>) -> Ran {
        self.run(argv, limit)
    }

    /// Undo a half-done step (unmount after a failed or timed-out TEST): runs even after the action's
    /// deadline, within [`CLEANUP_TIMEOUT`], so a timeout never leaves a disk mounted half-way.
    pub fn cleanup(&mut self, argv: &[String]) -> Ran {
        if self.dry_run {
            return self.change(argv, None);
        }
        self.run_for(argv, CLEANUP_TIMEOUT)
    }

    fn run(&mut self, argv: &[String], limit: Option<Duration>) -> Ran {
        let mut timeout = self.remaining();
        if let Some(l) = limit {
            timeout = timeout.min(l);
        }
        self.run_for(argv, timeout)
    }

    fn run_for(&mut self, argv: &[String], timeout: Duration) -> Ran {
        let shown = shell_words(argv);
        let fail =
            |msg: String| Ran { ok: false, code: None, timed_out: false, stdout: String::new(), stderr: msg };
        if timeout.is_zero() {
            self.timed_out = true;
            self.push(Step {
                what: shown,
                planned: false,
                ok: false,
                exit_code: None,
                timed_out: true,
                elapsed_ms: 0,
                output: "not started: the action's deadline has passed".into(),
            });
            let mut r = fail("deadline passed".into());
            r.timed_out = true;
            return r;
        }
        let Some((prog, args)) = argv.split_first() else {
            return fail("empty command".into());
        };
        let mut cmd = Command::new(prog);
        cmd.args(args).env("LC_ALL", "C");
        let limits = RunLimits { timeout, max_stdout: MAX_COMMAND_STDOUT, max_stderr: MAX_COMMAND_STDERR };
        let start = Instant::now();
        let ran = match run_bounded(cmd, limits) {
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                if out.stdout_overflow {
                    stderr.push_str(&format!("\n[killed: more than {MAX_COMMAND_STDOUT} bytes of output]"));
                }
                if out.timed_out {
                    stderr.push_str(&format!(
                        "\n[killed: process group killed after {} ms{}]",
                        timeout.as_millis(),
                        if out.unreaped { "; still not reaped (D state)" } else { "" }
                    ));
                }
                Ran {
                    ok: out.code == Some(0) && !out.timed_out && !out.stdout_overflow,
                    code: out.code,
                    timed_out: out.timed_out,
                    stdout,
                    stderr,
                }
            }
            Err(e) => fail(e.to_string()),
        };
        // A program cut short by the action's own deadline times the whole action out; one cut by its own
        // (shorter) limit is just a failed step.
        if ran.timed_out && self.remaining().is_zero() {
            self.timed_out = true;
        }
        let output = if ran.stderr.trim().is_empty() {
            ran.stdout.clone()
        } else {
            format!("{}\n{}", ran.stdout.trim_end(), ran.stderr.trim())
        };
        self.push(Step {
            what: shown,
            planned: false,
            ok: ran.ok,
            exit_code: ran.code,
            timed_out: ran.timed_out,
            elapsed_ms: start.elapsed().as_millis() as u64,
            output: tail(output.trim(), MAX_STEP_OUTPUT),
        });
        ran
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_keeps_one_argument_per_value() {
        let t = vec!["systemctl".to_string(), "restart".into(), "{service}".into(), "x{a}y".into()];
        let got = expand(&t, &[("service", "a b; rm -rf /"), ("a", "1")]);
        assert_eq!(got, ["systemctl", "restart", "a b; rm -rf /", "x1y"]);
        assert_eq!(shell_words(&got), "systemctl restart 'a b; rm -rf /' x1y");
    }

    #[test]
    fn tail_is_bounded_and_char_safe() {
        let s = "é".repeat(10);
        let t = tail(&s, 5);
        assert!(t.len() <= 8 && t.starts_with("..."), "{t}");
        assert_eq!(tail("abc", 5), "abc");
    }

    #[test]
    fn dry_run_records_and_does_not_run() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("m");
        let mut ex = Exec::new(true, Duration::from_secs(5));
        let r = ex.change(&["touch".into(), marker.display().to_string()], None);
        assert!(r.ok && ex.steps[0].planned);
        assert!(!marker.exists());
        let mut ex = Exec::new(false, Duration::from_secs(5));
        assert!(ex.change(&["touch".into(), marker.display().to_string()], None).ok);
        assert!(marker.exists());
    }

    #[test]
    fn step_log_is_capped() {
        let mut ex = Exec::new(false, Duration::from_secs(5));
        for i in 0..MAX_STEPS + 10 {
            ex.note(format!("poll {i}"), true, Duration::ZERO, "x".repeat(MAX_STEP_OUTPUT * 2));
        }
        assert_eq!(ex.steps.len(), MAX_STEPS);
        assert!(ex.steps[0].output.len() <= MAX_STEP_OUTPUT + 3);
    }

    #[test]
    fn deadline_passed_means_not_started() {
        let mut ex = Exec::new(false, Duration::ZERO);
        let r = ex.change(&["true".into()], None);
        assert!(!r.ok && r.timed_out && ex.timed_out);
        assert!(ex.steps[0].output.contains("not started"));
    }
}
