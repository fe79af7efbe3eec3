//! Commands about the binary itself: `huatuo version` (package version, git revision, the versions of every
//! built-in checker and seeded rule set / profile), `huatuo completions SHELL` and the hidden
//! `huatuo generate-man DIR` the packages run at build time. Completions and man pages come from the clap
//! definitions, so they always describe the binary that printed them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};
use sha2::Digest;

use crate::output::{Format, OutputArgs};

/// The git revision this binary was built from (`cli/build.rs`), "unknown" outside a git checkout.
pub const GIT_REV: &str = env!("HUATUO_GIT_REV");
/// Package version plus git revision, as `huatuo --version` prints it.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("HUATUO_GIT_REV"), ")");
/// Most man pages written by `generate-man`: one per command and subcommand (about 60 today); a command
/// tree beyond this is a bug in the definitions, not a reason to fill a disk.
pub const MAX_MAN_PAGES: usize = 512;

#[derive(Args, Debug)]
pub struct VersionArgs {
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct GenerateManArgs {
    /// Directory to write huatuo.1 and one huatuo-COMMAND.1 per (sub)command into (created if missing).
    dir: PathBuf,
}

fn short_sha(text: &str) -> String {
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// What `huatuo version` reports, as one JSON value (the table is rendered from it): the checkers compiled
/// into the agent (`rulesets::BUILTIN_CHECKERS`, which `checkers`' tests hold to the registry) and the rule
/// set and profiles embedded in this binary and seeded into a new cluster's catalog (`rulesets::seeds`),
/// each with its content version and a short sha256 to tell two builds' copies apart.
pub fn version_json() -> anyhow::Result<serde_json::Value> {
    let checkers: Vec<serde_json::Value> = rulesets::BUILTIN_CHECKERS
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "version": c.version, "kinds": c.kinds}))
        .collect();
    let mut rule_sets = Vec::new();
    for seed in rulesets::seeds::SEEDS {
        let version = match seed.kind {
            "rules" => {
                let r = rulesets::rules::RuleSet::from_sources(&[(
                    rulesets::rules::DEFAULT_RULES_NAME.to_string(),
                    seed.content.to_string(),
                )])
                .map_err(|e| anyhow::anyhow!("the embedded rule set {} does not compile: {e}", seed.name))?;
                serde_json::json!({"name": seed.name, "type": seed.kind, "version": r.version(),
                    "rules": r.len(), "sha256": short_sha(seed.content)})
            }
            _ => serde_json::json!({"name": seed.name, "type": seed.kind, "version": "format 1",
                "sha256": short_sha(seed.content)}),
        };
        rule_sets.push(version);
    }
    Ok(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git": GIT_REV,
        "checkers": checkers,
        "rule_sets": rule_sets,
        "seeded_catalog_version": rulesets::seeds::SEED_VERSION,
    }))
}

pub fn version(a: VersionArgs) -> anyhow::Result<ExitCode> {
    let v = version_json()?;
    let f = a.out.format();
    if f.is_document() {
        crate::output::print_document(&v, f)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "huatuo {LONG_VERSION}")?;
    writeln!(out, "built-in checkers:")?;
    for c in v["checkers"].as_array().into_iter().flatten() {
        let kinds =
            c["kinds"].as_array().map(|k| k.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","));
        if f == Format::Wide {
            writeln!(
                out,
                "  {:<12} {:<8} {}",
                str_of(&c["name"]),
                str_of(&c["version"]),
                kinds.unwrap_or_default()
            )?;
        } else {
            writeln!(out, "  {:<12} {}", str_of(&c["name"]), str_of(&c["version"]))?;
        }
    }
    writeln!(
        out,
        "embedded rule sets and profiles (seeded into a new cluster's catalog as version {}):",
        str_of(&v["seeded_catalog_version"])
    )?;
    for r in v["rule_sets"].as_array().into_iter().flatten() {
        let extra = match r["rules"].as_u64() {
            Some(n) => format!(" ({n} rules)"),
            None => String::new(),
        };
        writeln!(
            out,
            "  {:<12} {:<8} {}  sha256 {}{extra}",
            str_of(&r["name"]),
            str_of(&r["type"]),
            str_of(&r["version"]),
            str_of(&r["sha256"])
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn str_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "huatuo", &mut out);
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn generate_man(a: GenerateManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = crate::Cli::command();
    cmd.build();
    let mut written = 0usize;
    write_pages(&cmd, "huatuo", &a.dir, &mut written, MAX_MAN_PAGES)?;
    println!("{written} man pages in {}", a.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Write `name`.1 for `cmd` and recurse into its visible subcommands (`huatuo-ticket-list.1`), at most
/// `limit` pages in all.
fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut usize,
    limit: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(*written < limit, "more than {limit} man pages: refusing to go on");
    // clap names are `&'static str` without its `string` feature; a page generator runs once and writes at
    // most MAX_MAN_PAGES pages, so leaking their names is bounded.
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    let page = cmd.clone().name(leaked).bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf).with_context(|| format!("rendering {name}"))?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written, limit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_stop_at_their_limit() {
        let mut cmd = crate::Cli::command();
        cmd.build();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut n = 0;
        write_pages(&cmd, "huatuo", dir.path(), &mut n, MAX_MAN_PAGES).expect("all pages");
        assert!(n > 40 && n < MAX_MAN_PAGES, "{n} pages");
        // Exactly at the limit is fine; one page fewer allowed is refused.
        let mut at = 0;
        write_pages(&cmd, "huatuo", dir.path(), &mut at, n).expect("at the limit");
        assert_eq!(at, n);
        let mut over = 0;
        let e = write_pages(&cmd, "huatuo", dir.path(), &mut over, n - 1).expect_err("over the limit");
        assert!(e.to_string().contains(&format!("more than {} man pages", n - 1)), "{e}");
    }

    #[test]
    fn version_lists_every_builtin_checker_and_seed() {
        let v = version_json().expect("version");
        assert_eq!(v["checkers"].as_array().map(Vec::len), Some(rulesets::BUILTIN_CHECKERS.len()));
        assert_eq!(v["rule_sets"].as_array().map(Vec::len), Some(rulesets::seeds::SEEDS.len()));
        assert_eq!(v["git"], GIT_REV);
    }
}
