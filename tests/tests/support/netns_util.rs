//! What the network-namespace harnesses share (`faults_netns.rs`: masters partitioned by nftables;
//! `fabric.rs`: the 12-host Clos fabric of issue 16): running `ip`/`nft` commands, the "are namespaces
//! permitted here" check both skip on, and entering a namespace on the calling thread.
#![allow(dead_code)]

use std::os::fd::AsFd;
use std::process::Command;

/// Run a command; its stderr is the error when it fails.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Run a command and return its stdout.
pub fn sh_out(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether this process may create network namespaces: `Err` carries why not (the callers print it and
/// skip). Creates and deletes `{prefix}probe`.
pub fn permitted(prefix: &str) -> Result<(), String> {
    let probe = format!("{prefix}probe");
    sh(&["ip", "netns", "add", &probe])?;
    sh(&["ip", "netns", "del", &probe])
}

/// `nft` must be there wherever namespaces are: its absence is a broken setup, not a reason to skip.
pub fn require_nft(what: &str) {
    if Command::new("nft").arg("--version").output().is_err() {
        panic!("[{what}] nft is missing: install nftables (.ci/run does)");
    }
}

/// The named namespaces that exist now (`ip netns list`, names only).
pub fn list() -> Result<Vec<String>, String> {
    let out = sh_out(&["ip", "netns", "list"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// Enter namespace `ns` on this thread only (sockets it then creates live in `ns`).
pub fn enter(ns: &str) -> Result<(), String> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {ns}: {e}"))
}
