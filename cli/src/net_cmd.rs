//! `huatuo net suspects|matrix|path` (issue 16): what the leader's network localisation concluded from the
//! last closed window. Read role; the leader answers (the client follows a follower's NOT_LEADER).
//! `huatuo net topology set|show|clear`: the replicated fabric topology (set and clear need the operator
//! role and `--reason`; every check runs on the master, the same for gRPC and REST).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use proto::api;

use crate::ops_cmd::{MasterAddr, api_err, runtime, utc};
use crate::output::{self, Format, OutputArgs};
use crate::safety_cmd::Operator;

/// Largest file `net topology set` reads (the master refuses more than 8 MiB anyway; this bounds the read).
const MAX_TOPOLOGY_FILE: u64 = 16 << 20;

#[derive(Subcommand, Debug)]
pub enum NetCmd {
    /// The suspects of the last window, ranked, each with why and what the leader did.
    Suspects(SuspectsArgs),
    /// Loss and RTT between racks (ToRs) over the last window.
    Matrix(MatrixArgs),
    /// The equal-cost paths between two hosts with each hop's blame, and what they measured of each other.
    Path(PathArgs),
    /// The fabric topology the leader localises with: set (replicated to every master), show, clear.
    #[command(subcommand)]
    Topology(TopologyCmd),
}

#[derive(Subcommand, Debug)]
pub enum TopologyCmd {
    /// Store FILE (TOML or CSV host,tor,agg,spine; parsed by the master as its leader will) and make it the
    /// topology every leader uses. Needs --reason.
    Set(TopologySetArgs),
    /// The topology in use: replicated NAME@VERSION with its sha256, the leader's [topology] file, or the
    /// machines' labels; with its counts of hosts, switches and links.
    Show(TopologyShowArgs),
    /// Clear the replicated topology: leaders use their [topology] file, else the machines' labels.
    Clear(TopologyClearArgs),
}

#[derive(Args, Debug)]
pub struct TopologySetArgs {
    /// The topology file: TOML, or CSV rows host,tor,agg,spine.
    file: PathBuf,
    /// Catalog name of the topology (default: fabric).
    #[arg(long, default_value = "")]
    name: String,
    /// Version (default: sha- and the first 12 hex digits of the file's sha256, so the same file is the
    /// same version).
    #[arg(long, default_value = "")]
    version: String,
    #[command(flatten)]
    op: Operator,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct TopologyShowArgs {
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct TopologyClearArgs {
    #[command(flatten)]
    op: Operator,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

fn topology_json(r: &api::NetTopologyResponse) -> serde_json::Value {
    serde_json::json!({"source": r.source, "name": r.name, "version": r.version, "sha256": r.sha256,
        "size": r.size, "set_by": r.set_by, "set_ms": r.set_ms, "path": r.path, "hosts": r.hosts,
        "switches": r.switches, "links": r.links, "error": r.error, "file_path": r.file_path,
        "file_sha256": r.file_sha256, "revision": r.revision, "duplicate": r.duplicate})
}

fn print_topology(r: &api::NetTopologyResponse, out: &OutputArgs) -> anyhow::Result<()> {
    let f = out.format();
    if f.is_document() {
        return output::print_document(&topology_json(r), f);
    }
    let counts = format!("{} hosts, {} switches, {} switch links", r.hosts, r.switches, r.links);
    match r.source.as_str() {
        "replicated" => println!(
            "topology: replicated {}@{} (sha256 {}, {} bytes, set by {} at {}): {counts}",
            r.name,
            r.version,
            r.sha256,
            r.size,
            r.set_by,
            utc(r.set_ms)
        ),
        "file" => println!("topology: file {} of the leader: {counts}", r.path),
        "labels" => println!("topology: from the machines' switch/rack labels: {counts}"),
        _ => {
            println!("topology: none (no replicated topology, no [topology] file, no switch/rack labels yet)")
        }
    }
    if !r.error.is_empty() {
        println!("replicated {}@{} (sha256 {}) NOT in use: {}", r.name, r.version, r.sha256, r.error);
    }
    if !r.file_path.is_empty() && r.source == "replicated" && r.file_sha256 != r.sha256 {
        println!(
            "the leader's [topology] file {} differs (sha256 {}): the replicated topology wins",
            r.file_path, r.file_sha256
        );
    }
    if r.duplicate {
        println!("(nothing changed: it was so already)");
    }
    Ok(())
}

fn run_topology(c: TopologyCmd, rt: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let (r, out) = match c {
        TopologyCmd::Show(a) => {
            let mut client = a.master.client();
            let r = rt
                .block_on(
                    client
                        .call(api::NetTopologyRequest {}, |mut c, r| async move { c.net_topology(r).await }),
                )
                .map_err(api_err)?;
            (r, a.out)
        }
        TopologyCmd::Set(a) => {
            a.op.require_reason()?;
            let len = std::fs::metadata(&a.file).with_context(|| format!("{}", a.file.display()))?.len();
            anyhow::ensure!(
                len <= MAX_TOPOLOGY_FILE,
                "{}: {len} bytes; a topology is at most 8 MiB",
                a.file.display()
            );
            let content = std::fs::read(&a.file).with_context(|| format!("{}", a.file.display()))?;
            let req = api::SetNetTopologyRequest {
                content,
                name: a.name,
                version: a.version,
                clear: false,
                by: a.op.by,
                reason: a.op.reason,
            };
            let mut client = a.master.client();
            let r = rt
                .block_on(client.call(req, |mut c, r| async move { c.set_net_topology(r).await }))
                .map_err(api_err)?;
            (r, a.out)
        }
        TopologyCmd::Clear(a) => {
            a.op.require_reason()?;
            let req = api::SetNetTopologyRequest {
                clear: true,
                by: a.op.by,
                reason: a.op.reason,
                ..Default::default()
            };
            let mut client = a.master.client();
            let r = rt
                .block_on(client.call(req, |mut c, r| async move { c.set_net_topology(r).await }))
                .map_err(api_err)?;
            (r, a.out)
        }
    };
    print_topology(&r, &out)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct SuspectsArgs {
    /// How many (default 20, at most 1000).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Only rows and columns involving this ToR/rack.
    #[arg(long, default_value = "")]
    rack: String,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct PathArgs {
    /// One end: a host name.
    host_a: String,
    /// The other end: a host name.
    host_b: String,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    master: MasterAddr,
}

fn pct(lost: u64, sent: u64) -> String {
    if sent == 0 { "-".into() } else { format!("{:.2}%", lost as f64 * 100.0 / sent as f64) }
}

pub fn run(c: NetCmd) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match c {
        NetCmd::Topology(c) => return run_topology(c, &rt),
        NetCmd::Suspects(a) => {
            let mut client = a.master.client();
            let req = api::NetSuspectsRequest { limit: a.limit };
            let r = rt
                .block_on(client.call(req, |mut c, r| async move { c.net_suspects(r).await }))
                .map_err(api_err)?;
            let f = a.out.format();
            if f.is_document() {
                let s: Vec<_> = r
                    .suspects
                    .iter()
                    .map(|s| {
                        serde_json::json!({"rank": s.rank, "target": s.target, "kind": s.kind, "score": s.score,
                        "why": s.why, "voters": s.voters, "bad_flows": s.bad_flows, "flows": s.flows,
                        "loss": s.loss, "evidence": s.evidence, "decision": s.decision})
                    })
                    .collect();
                let v = serde_json::json!({"window_end_ms": r.window_end_ms, "window_ms": r.window_ms,
                    "reporters": r.reporters, "flows": r.flows, "bad_flows": r.bad_flows,
                    "topology": r.topology, "suspects": s});
                output::print_document(&v, f)?;
                return Ok(ExitCode::SUCCESS);
            }
            if r.window_end_ms == 0 {
                println!("no window closed yet on this leader");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "window of {} ms: {} reporters, {} flows, {} bad{}",
                r.window_ms,
                r.reporters,
                r.flows,
                r.bad_flows,
                if r.topology { "" } else { " (no topology: only hosts can be suspects)" }
            );
            if r.suspects.is_empty() {
                println!("no suspects");
            }
            for s in &r.suspects {
                let did = if s.decision.is_empty() { "ranked" } else { s.decision.as_str() };
                println!("{:>3}. {:<40} score {:.2}  {:<7} {}", s.rank, s.target, s.score, did, s.why);
                // Wide: the vote's figures and every piece of evidence, not the first 3.
                let shown = if f == Format::Wide {
                    println!(
                        "       {} ({} voters, {} of {} flows bad, loss {:.2}%)",
                        s.kind,
                        s.voters,
                        s.bad_flows,
                        s.flows,
                        s.loss * 100.0
                    );
                    s.evidence.len()
                } else {
                    3
                };
                for e in s.evidence.iter().take(shown) {
                    println!("       {e}");
                }
            }
        }
        NetCmd::Matrix(a) => {
            let mut client = a.master.client();
            let req = api::NetMatrixRequest { rack: a.rack };
            let r = rt
                .block_on(client.call(req, |mut c, r| async move { c.net_matrix(r).await }))
                .map_err(api_err)?;
            let f = a.out.format();
            if f.is_document() {
                let cells: Vec<_> = r
                    .cells
                    .iter()
                    .map(|c| {
                        serde_json::json!({"src": c.src, "dst": c.dst, "sent": c.sent, "lost": c.lost,
                        "rtt_p50_us": c.rtt_p50_us, "rtt_p99_us": c.rtt_p99_us, "flows": c.flows})
                    })
                    .collect();
                let v =
                    serde_json::json!({"window_end_ms": r.window_end_ms, "racks": r.racks, "cells": cells});
                output::print_document(&v, f)?;
                return Ok(ExitCode::SUCCESS);
            }
            let wide = f == Format::Wide;
            print!(
                "{:<20} {:<20} {:>8} {:>9} {:>9} {:>6}",
                "FROM", "TO", "LOSS", "P50 us", "P99 us", "FLOWS"
            );
            println!("{}", if wide { format!(" {:>10} {:>8}", "SENT", "LOST") } else { String::new() });
            for c in &r.cells {
                print!(
                    "{:<20} {:<20} {:>8} {:>9} {:>9} {:>6}",
                    c.src,
                    c.dst,
                    pct(c.lost, c.sent),
                    c.rtt_p50_us,
                    c.rtt_p99_us,
                    c.flows
                );
                println!("{}", if wide { format!(" {:>10} {:>8}", c.sent, c.lost) } else { String::new() });
            }
        }
        NetCmd::Path(a) => {
            let mut client = a.master.client();
            let req = api::NetPathRequest { a: a.host_a, b: a.host_b };
            let r = rt
                .block_on(client.call(req, |mut c, r| async move { c.net_path(r).await }))
                .map_err(api_err)?;
            let f = a.out.format();
            if f.is_document() {
                let routes: Vec<_> = r
                    .routes
                    .iter()
                    .map(|x| {
                        let hops: Vec<_> = x
                            .hops
                            .iter()
                            .map(|h| {
                                serde_json::json!({"link": h.link, "blame": h.blame,
                                "bad_flows": h.bad_flows, "flows": h.flows})
                            })
                            .collect();
                        serde_json::json!({"nodes": x.nodes, "hops": hops})
                    })
                    .collect();
                let measured: Vec<_> = r
                    .measured
                    .iter()
                    .map(|m| {
                        serde_json::json!({"flow": m.host, "sent": m.sent, "lost": m.lost,
                        "rtt_p50_us": m.rtt_p50_us, "rtt_p99_us": m.rtt_p99_us, "traced_path": m.hops})
                    })
                    .collect();
                output::print_document(&serde_json::json!({"routes": routes, "measured": measured}), f)?;
                return Ok(ExitCode::SUCCESS);
            }
            for (i, x) in r.routes.iter().enumerate() {
                println!("route {}: {}", i + 1, x.nodes.join(" -> "));
                // Wide: every hop, blamed or not.
                for h in x.hops.iter().filter(|h| f == Format::Wide || h.blame > 0.0) {
                    println!(
                        "    {} blame {:.2} ({} of {} flows bad)",
                        h.link, h.blame, h.bad_flows, h.flows
                    );
                }
            }
            for m in &r.measured {
                let traced = if m.hops.is_empty() {
                    String::new()
                } else {
                    format!(" traced via {}", m.hops.join(" -> "))
                };
                println!(
                    "measured {}: lost {}/{} p50 {} us p99 {} us{traced}",
                    m.host, m.lost, m.sent, m.rtt_p50_us, m.rtt_p99_us
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
