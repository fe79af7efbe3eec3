//! Records the git revision the binary is built from (`huatuo version`, `huatuo --version`, and
//! `huatuo-agent --version`: `agent-bin/Cargo.toml` names this file as its build script) as
//! `HUATUO_GIT_REV`: `git rev-parse --short=10 HEAD`, or "unknown" outside a git checkout (a source tarball,
//! a packaging chroot without git; `HUATUO_GIT_REV=...` in the environment overrides both). Cargo reruns this when HEAD moves (a commit,
//! a checkout), not on every edit: the revision names the commit, not the working tree.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    // No rerun-if-changed for this file: cargo rebuilds, and so reruns, a build script whose source changed
    // (and the path would be relative to each package using it).
    println!("cargo:rerun-if-env-changed=HUATUO_GIT_REV");
    // A packager without git may pass the revision in.
    let rev = std::env::var("HUATUO_GIT_REV")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| git(&["rev-parse", "--short=10", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // HEAD itself (a checkout), the branch it points to (a commit) and packed refs (a gc). In a worktree
    // `--git-path` resolves each to the right directory.
    for p in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", p]) {
            println!("cargo:rerun-if-changed={}", PathBuf::from(path).display());
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={}", PathBuf::from(path).display());
    }
    println!("cargo:rustc-env=HUATUO_GIT_REV={rev}");
}
