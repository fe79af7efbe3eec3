//! `huatuo bench list`: paginated listings at fleet size (issue 17). Starts a master cluster on this machine
//! (child processes of this binary, temp dirs, loopback ports, real fsync), registers `--hosts` hosts with
//! `--objects-per-host` objects each (a machine, disks, NICs: the 15-object host), then lists every
//! object through gRPC a page at a time, linearizable from the leader and stale from a follower. Prints the
//! time per page (p50/p99/max), the whole listing's time, and the leader's RSS before and after (and its
//! peak, VmHWM), so the cost of listing a big fleet can be compared with the cost of holding it.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use master::client::Client;
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;

#[derive(Args, Debug)]
pub struct BenchListArgs {
    /// Hosts registered (each with --objects-per-host objects).
    #[arg(long, default_value_t = 6_667)]
    hosts: u32,
    /// Objects per host: one machine, two NICs, the rest disks (at least 3).
    #[arg(long, default_value_t = 15)]
    objects_per_host: u32,
    /// Page size asked for (0: the master's default page).
    #[arg(long, default_value_t = 0)]
    page: u32,
    /// Concurrent registration clients.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Masters in the cluster.
    #[arg(long, default_value_t = 3)]
    masters: u64,
}

/// Most pages one measured listing follows (1.5 M objects at the default page take 1,500).
const MAX_PAGES: usize = 1_000_000;

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn registration(host: u32, per_host: u32) -> api::RegisterRequest {
    let h = format!("list-{host:06}");
    let mut objects = vec![format!("machine/{h}"), format!("nic/{h}/eth0"), format!("nic/{h}/eth1")];
    objects.extend((0..per_host.saturating_sub(3)).map(|d| format!("disk/{h}/sd{d:02}")));
    api::RegisterRequest {
        agent: format!("agent-{h}"),
        host: h,
        objects: objects
            .into_iter()
            .map(|id| api::RegisteredObject {
                id,
                attributes: [("model".to_string(), "ST4000NM0035".to_string())].into_iter().collect(),
                labels: [("rack".to_string(), format!("r{}", host % 40))].into_iter().collect(),
            })
            .collect(),
    }
}

/// One listing, every page: (objects, per-page latencies, total).
async fn list_all(
    client: &mut Client,
    page: u32,
    stale: bool,
) -> anyhow::Result<(usize, Vec<Duration>, Duration)> {
    let mut req = api::ListObjectsRequest { limit: page, stale, ..Default::default() };
    let (mut n, mut lat) = (0usize, Vec::new());
    let start = Instant::now();
    for _ in 0..MAX_PAGES {
        let t = Instant::now();
        let resp = client
            .call(req.clone(), |mut c, r| async move { c.list_objects(r).await })
            .await
            .context("list page")?;
        lat.push(t.elapsed());
        n += resp.objects.len();
        if resp.next_page_token.is_empty() {
            return Ok((n, lat, start.elapsed()));
        }
        req.page_token = resp.next_page_token;
    }
    bail!("the listing did not end after {MAX_PAGES} pages")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(what: &str, n: usize, mut lat: Vec<Duration>, total: Duration) {
    lat.sort();
    println!(
        "{what}: {n} objects in {} pages, {:.2} s ({:.0} objects/s); per page p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64().max(1e-9),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
}

pub fn run(a: BenchListArgs) -> anyhow::Result<ExitCode> {
    if a.objects_per_host < 3 || a.hosts == 0 || a.clients == 0 || a.masters == 0 {
        bail!("--hosts, --clients and --masters must be at least 1, --objects-per-host at least 3");
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let cluster = LocalCluster::start(&exe, a.masters).context("starting the masters")?;
    let rt = crate::ops_cmd::runtime()?;
    // A signal ends the run; `cluster` is dropped on the way out, which kills the masters.
    rt.block_on(crate::bench_common::until_stopped(async {
        let leader = cluster.wait_leader(READY_TIMEOUT).await.context("no leader")?;
        let pid = cluster.pid(leader).context("leader pid")?;
        println!(
            "{} masters, leader {leader}; registering {} hosts x {} objects with {} clients",
            a.masters, a.hosts, a.objects_per_host, a.clients
        );
        let next = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..a.clients {
            let (next, mut client, hosts, per) =
                (next.clone(), cluster.client(), a.hosts, a.objects_per_host);
            workers.push(tokio::spawn(async move {
                loop {
                    let h = next.fetch_add(1, Ordering::Relaxed);
                    if h >= hosts {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let req = registration(h, per);
                    client
                        .call(req, |mut c, r| async move { c.register(r).await })
                        .await
                        .with_context(|| format!("register host {h}"))?;
                }
            }));
        }
        for w in workers {
            w.await.context("registration worker")??;
        }
        let reg = started.elapsed();
        let objects = u64::from(a.hosts) * u64::from(a.objects_per_host);
        println!(
            "registered {objects} objects in {:.1} s ({:.0} hosts/s)",
            reg.as_secs_f64(),
            f64::from(a.hosts) / reg.as_secs_f64().max(1e-9)
        );
        let before = status_kib(pid, "VmRSS:");
        println!(
            "leader RSS before listing {:.1} MiB (peak so far {:.1} MiB)",
            mib(before),
            mib(status_kib(pid, "VmHWM:"))
        );
        let mut client = cluster.client();
        let (n, lat, total) = list_all(&mut client, a.page, false).await?;
        report("linearizable listing from the leader", n, lat, total);
        let after = status_kib(pid, "VmRSS:");
        println!(
            "leader RSS after listing {:.1} MiB ({:+.1} MiB), peak {:.1} MiB",
            mib(after),
            mib(after) - mib(before),
            mib(status_kib(pid, "VmHWM:"))
        );
        if let Some(f) = cluster.nodes.keys().copied().find(|id| *id != leader) {
            let mut on_follower = Client::new(vec![cluster.nodes[&f].grpc.clone()]);
            let (n, lat, total) = list_all(&mut on_follower, a.page, true).await?;
            report(&format!("stale listing from follower {f}"), n, lat, total);
        }
        let (n, lat, total) = list_all(&mut client, 10_000, false).await?;
        report("linearizable listing, pages of 10,000 (the maximum)", n, lat, total);
        println!(
            "leader RSS at the end {:.1} MiB, peak {:.1} MiB",
            mib(status_kib(pid, "VmRSS:")),
            mib(status_kib(pid, "VmHWM:"))
        );
        if n as u64 != objects {
            bail!("listed {n} objects, registered {objects}");
        }
        Ok::<(), anyhow::Error>(())
    }))?;
    Ok(ExitCode::SUCCESS)
}
