//! Machine FIX by cause and machine NEWBIE/TEST environment checks.
//!
//! * restart-service: the configured command template with an allow-listed, validated service name.
//! * clean-fs: configured rules (root, file-name globs, minimum age): regular files only, symlinks never
//!   followed or removed, never outside the rule's root nor across a mount point below it; counts files
//!   and bytes freed. Age is judged against the request's `now_ms`, not the wall clock.
//! * reboot: the configured command, a dry run unless the config turns that off (a dry-run reboot reports
//!   failure: the machine was not fixed, so the ladder moves on).
//! * NEWBIE/TEST: every configured check of the stage must exit 0 within its timeout.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::config::{CleanRule, WorkerConfig, valid_service_name};
use super::exec::{Exec, expand};
use super::{ActionRequest, Finish, Outcome};

/// Most directory entries one clean-fs run looks at: bounds the walk on a filesystem with millions of
/// small files (the rest waits for the next run).
pub const MAX_CLEAN_VISITS: usize = 1_000_000;
/// Most files one clean-fs run removes.
pub const MAX_CLEAN_REMOVALS: usize = 100_000;
/// Most removed paths named in the report (the counts cover all of them).
const MAX_NAMED: usize = 50;

/// Shell-style match of a file name: `*` any run, `?` one character, everything else literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Restart an allow-listed service.
pub(crate) fn restart(cfg: &WorkerConfig, ex: &mut Exec, req: &ActionRequest) -> Finish {
    let m = &cfg.machine;
    let Some(service) = req.params.get("service").or(m.default_service.as_ref()) else {
        return Finish::refused(
            "restart-service: the request names no service and no default_service is configured",
        );
    };
    if !valid_service_name(service) {
        return Finish::refused(format!("restart-service: {service:?} is not a valid service name"));
    }
    if !m.services.contains(service) {
        return Finish::refused(format!(
            "restart-service: {service:?} is not in worker.machine.services (allowed: {})",
            if m.services.is_empty() { "none".to_string() } else { m.services.join(", ") }
        ));
    }
    let argv = expand(&m.restart_command, &[("service", service)]);
    let r = ex.change(&argv, None);
    if r.ok {
        Finish::new(Outcome::Done, format!("restarted {service}"))
    } else if r.timed_out {
        Finish::new(
            Outcome::TimedOut,
            format!("restarting {service} did not finish before the deadline; its process group was killed"),
        )
    } else {
        Finish::failed(format!(
            "restarting {service} failed (exit {:?}): {}",
            r.code,
            super::exec::tail(r.stderr.trim(), 300)
        ))
    }
}

/// Reboot: the last rung.
pub(crate) fn reboot(cfg: &WorkerConfig, ex: &mut Exec) -> Finish {
    let m = &cfg.machine;
    if m.reboot_dry_run {
        ex.note(
            format!("{} (not run: worker.machine.reboot_dry_run)", m.reboot_command.join(" ")),
            true,
            Duration::ZERO,
            String::new(),
        );
        return Finish::failed(format!(
            "reboot is a dry run in config (worker.machine.reboot_dry_run); would run: {}; the machine was not rebooted",
            m.reboot_command.join(" ")
        ));
    }
    let r = ex.change(&m.reboot_command, None);
    if r.ok {
        Finish::new(Outcome::Done, "reboot requested")
    } else {
        Finish::failed(format!(
            "reboot command failed (exit {:?}): {}",
            r.code,
            super::exec::tail(r.stderr.trim(), 300)
        ))
    }
}

/// Environment checks of a stage (`provision` or `test`).
pub(crate) fn env_checks(cfg: &WorkerConfig, ex: &mut Exec, stage: &str) -> Finish {
    let checks: Vec<_> = cfg.machine.checks.iter().filter(|c| c.stages.iter().any(|s| s == stage)).collect();
    if checks.is_empty() {
        return Finish::new(Outcome::Done, format!("no {stage} environment checks configured"));
    }
    let mut failed = Vec::new();
    for c in &checks {
        // Checks only read the machine: they run in dry runs too.
        let r = ex.inspect(&c.command, Some(Duration::from_secs(c.timeout_s)));
        if !r.ok {
            failed.push(if r.timed_out {
                format!("{} (timed out after {} s)", c.name, c.timeout_s)
            } else {
                format!("{} (exit {:?})", c.name, r.code)
            });
        }
    }
    if failed.is_empty() {
        Finish::new(Outcome::Done, format!("all {} {stage} checks passed", checks.len()))
    } else {
        Finish::failed(format!(
            "{} of {} {stage} checks failed: {}",
            failed.len(),
            checks.len(),
            failed.join(", ")
        ))
    }
}

/// Totals of one clean-fs run.
#[derive(Debug, Default)]
struct Clean {
    files: u64,
    bytes: u64,
    visited: usize,
    errors: Vec<String>,
    named: Vec<String>,
    limit_hit: Option<&'static str>,
}

fn mtime_ms(meta: &std::fs::Metadata) -> Option<u64> {
    meta.modified().ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

/// What one rule's walk needs besides the directory it is in.
struct Walk<'a> {
    rule: &'a CleanRule,
    /// The root's filesystem: the walk never crosses into another one.
    root_dev: u64,
    now_ms: u64,
    dry_run: bool,
    deadline: Instant,
}

fn walk(w: &Walk<'_>, dir: &Path, depth: usize, out: &mut Clean) {
    let (rule, root_dev, now_ms, deadline) = (w.rule, w.root_dev, w.now_ms, w.deadline);
    let Ok(rd) = std::fs::read_dir(dir) else {
        out.errors.push(format!("cannot list {}", dir.display()));
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if out.visited >= MAX_CLEAN_VISITS {
            out.limit_hit = Some("MAX_CLEAN_VISITS");
            return;
        }
        if out.files as usize >= MAX_CLEAN_REMOVALS {
            out.limit_hit = Some("MAX_CLEAN_REMOVALS");
            return;
        }
        if Instant::now() >= deadline {
            out.limit_hit = Some("deadline");
            return;
        }
        out.visited += 1;
        // symlink_metadata: a symlink is seen as a symlink, never followed.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != root_dev {
            continue; // another filesystem mounted below the root: not ours to clean
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            if depth < rule.max_depth {
                walk(w, &path, depth + 1, out);
            }
            continue;
        }
        if !ft.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if !rule.globs.iter().any(|g| glob_match(g, name)) {
            continue;
        }
        let Some(mt) = mtime_ms(&meta) else { continue };
        if now_ms.saturating_sub(mt) < rule.min_age_s.saturating_mul(1000) {
            continue;
        }
        let ok = w.dry_run || std::fs::remove_file(&path).is_ok();
        if ok {
            out.files += 1;
            out.bytes += meta.len();
            if out.named.len() < MAX_NAMED {
                out.named.push(path.display().to_string());
            }
        } else {
            out.errors.push(format!("cannot remove {}", path.display()));
        }
    }
}

/// Clean a full filesystem by the configured rules.
pub(crate) fn clean(cfg: &WorkerConfig, ex: &mut Exec, req: &ActionRequest) -> Finish {
    let rules = &cfg.machine.clean;
    if rules.is_empty() {
        return Finish::refused("clean-fs: no rules configured (worker.machine.clean)");
    }
    let only = req.params.get("mount").map(PathBuf::from);
    let mut out = Clean::default();
    let mut used = 0;
    let deadline = ex.deadline();
    for rule in rules {
        if let Some(m) = &only
            && !rule.root.starts_with(m)
        {
            continue;
        }
        used += 1;
        let Ok(meta) = std::fs::symlink_metadata(&rule.root) else {
            out.errors.push(format!("{}: missing", rule.root.display()));
            continue;
        };
        if !meta.is_dir() {
            out.errors
                .push(format!("{}: not a directory (symlinked roots are not followed)", rule.root.display()));
            continue;
        }
        let t = Instant::now();
        let before = (out.files, out.bytes);
        let w = Walk { rule, root_dev: meta.dev(), now_ms: req.now_ms, dry_run: ex.dry_run, deadline };
        walk(&w, &rule.root, 0, &mut out);
        ex.note(
            format!("clean {} {:?} older than {} s", rule.root.display(), rule.globs, rule.min_age_s),
            true,
            t.elapsed(),
            format!("{} files, {} bytes", out.files - before.0, out.bytes - before.1),
        );
    }
    if used == 0 {
        return Finish::refused(format!(
            "clean-fs: no configured rule is under {}",
            only.map(|p| p.display().to_string()).unwrap_or_default()
        ));
    }
    let verb = if ex.dry_run { "would remove" } else { "removed" };
    let mut detail = format!("{verb} {} files, {} bytes", out.files, out.bytes);
    if !out.named.is_empty() {
        detail.push_str(&format!(
            " ({}{})",
            out.named.join(", "),
            if out.files as usize > out.named.len() { ", ..." } else { "" }
        ));
    }
    if let Some(l) = out.limit_hit {
        detail.push_str(&format!("; stopped at {l}"));
    }
    let mut fin = if out.errors.is_empty() {
        Finish::new(Outcome::Done, detail)
    } else {
        Finish::failed(format!(
            "{detail}; errors: {}",
            out.errors.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        ))
    };
    fin.figures.insert("files_removed".into(), out.files as f64);
    fin.figures.insert("bytes_freed".into(), out.bytes as f64);
    fin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("*.gz", "syslog.1.gz", true),
            ("*.gz", "syslog.gz.tmp", false),
            ("core.*", "core.1234", true),
            ("?.log", "a.log", true),
            ("?.log", "ab.log", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} {n}");
        }
    }
}
