//! `huatuo bench master`: starts a 3-node master cluster on this machine (child processes of this binary,
//! temp dirs, free loopback ports, real fsync) and drives it with simulated agents. Prints committed
//! findings/s, submit->commit latency, commit->watcher latency at a fixed rate, and failover time (kill -9
//! of the leader until the first commit on the new leader, median over several kills).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use master::client::Client;
use master::cluster::{LocalCluster, READY_TIMEOUT};
use proto::api;
use tokio::sync::Mutex;

use crate::bench_common::{FAILOVER_ATTEMPT, FAILOVER_PAUSE, archive_line, now_ms, pct, sorted};

#[derive(Args, Debug)]
pub struct BenchMasterArgs {
    /// Simulated agents writing concurrently (each sends one batch at a time, like a real agent).
    #[arg(long, default_value_t = 32)]
    agents: u32,
    /// Findings per agent batch.
    #[arg(long, default_value_t = 500)]
    batch: u32,
    /// Disks per simulated host (the objects the findings are about).
    #[arg(long, default_value_t = 12)]
    disks: u32,
    /// Checkers the throughput phase's findings take turns as (`smart`, then `checker-1`, ...): each disk's
    /// record then carries that many checkers' evidence, as a fleet's disks do (1: one checker).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    checkers: u32,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Findings/s offered during the watch-latency phase.
    #[arg(long, default_value_t = 5000)]
    watch_rate: u32,
    /// Seconds of the watch-latency phase.
    #[arg(long, default_value_t = 10)]
    watch_seconds: u64,
    /// Leader kills for the failover figure (0: skip).
    #[arg(long, default_value_t = 5)]
    kills: u32,
    /// The members' `max_election_ticks` (0: the default, timeouts fixed by rank; N: a random range up to N), to
    /// compare them.
    #[arg(long, default_value_t = 0)]
    max_election_ticks: usize,
    /// HTTP/2 connections the throughput phase's agents share, to the leader (0: one per agent, each
    /// following the leader on its own). Like etcd's benchmark `--conns` beside `--clients`.
    #[arg(long, default_value_t = 0)]
    connections: u32,
    /// The throughput phase's batches as single `Ingest` calls, one HTTP/2 stream each (agents before
    /// ingest streams), instead of over each agent's long-lived `IngestStream`.
    #[arg(long)]
    ingest_calls: bool,
}

/// One agent batch of `n` GOOD findings about its host's `disks` disks, by `checkers` checkers in turn (by
/// the batch's sequence and the finding's place in it).
fn batch(agent: u32, seq: u64, n: u32, disks: u32, checkers: u32) -> api::IngestRequest {
    let host = format!("bench-{agent:04}");
    let findings = (0..n)
        .map(|i| api::Finding {
            object: format!("disk/{host}/d{}", i % disks.max(1)),
            severity: "GOOD".into(),
            checker: match (seq + u64::from(i / disks.max(1))) % u64::from(checkers.max(1)) {
                0 => "smart".into(),
                c => format!("checker-{c}"),
            },
            version: "1.0.0".into(),
            rule: "smart.overall".into(),
            evidence: "SMART overall-health self-assessment test result: PASSED".into(),
            readings: Default::default(),
            time_ms: now_ms(),
            shadow: false,
        })
        .collect();
    api::IngestRequest { agent: format!("bench-agent-{agent}"), seq, findings, epoch: 0 }
}

/// One batch over the agent's ingest stream on its shared connection `c` (opened if it has none), or as
/// one call when the stream cannot carry it (a retry then: a batch applied before its answer was lost is
/// answered `duplicate`).
/// Returns the answer and whether the stream carried it.
async fn shared_stream_send(
    stream: &mut Option<crate::bench_common::AgentStream<api::IngestRequest, api::IngestResponse>>,
    c: &proto::api::master_client::MasterClient<tonic::transport::Channel>,
    req: api::IngestRequest,
) -> Result<(api::IngestResponse, bool), tonic::Status> {
    let limit = proto::client::CALL_TIMEOUT;
    if stream.is_none() {
        let open =
            |mut c: proto::api::master_client::MasterClient<_>, rx| async move { c.ingest_stream(rx).await };
        *stream =
            crate::bench_common::AgentStream::open(0, c.clone(), limit, open).await.and_then(Result::ok);
    }
    if let Some(st) = stream.as_mut() {
        if let Ok(Some(r)) = st.exchange(req.clone(), limit).await {
            return Ok((r, true));
        }
        *stream = None;
    }
    c.clone().ingest(req).await.map(|r| (r.into_inner(), false))
}

pub fn run(a: BenchMasterArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(crate::bench_common::until_stopped(bench(a)))
}

async fn bench(a: BenchMasterArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    println!("{}", crate::bench_common::machine_line());
    let mut cluster = if a.max_election_ticks == 0 {
        LocalCluster::start(&exe, 3)
    } else {
        LocalCluster::start_with_config(&exe, 3, &format!("max_election_ticks = {}\n", a.max_election_ticks))
    }
    .context("start cluster")?;
    let leader = cluster
        .wait_leader(READY_TIMEOUT)
        .await
        .ok_or_else(|| anyhow!("no leader within {READY_TIMEOUT:?}"))?;
    println!(
        "cluster: 3 nodes, leader {leader}, data under {}",
        cluster.data_dir(1).parent().map(|p| p.display().to_string()).unwrap_or_default()
    );
    let addrs = cluster.grpc_addrs();
    let seqs: Arc<Vec<AtomicU64>> = Arc::new((0..a.agents).map(|_| AtomicU64::new(0)).collect());

    // Phase 1: throughput with fsync.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    // Batches answered on the agents' ingest streams (the rest went as calls).
    let streamed = Arc::new(AtomicU64::new(0));
    let mut shared = Vec::new();
    for _ in 0..a.connections {
        shared.push(crate::bench_common::connect(&cluster.nodes[&leader].grpc).await?);
    }
    let members: Vec<(u64, u32)> =
        cluster.running().into_iter().filter_map(|id| Some((id, cluster.pid(id)?))).collect();
    let cpu0 = crate::bench_common::cpu_mark(&members)?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for agent in 0..a.agents {
        let (stop, committed, lat, seqs, addrs, streamed) =
            (stop.clone(), committed.clone(), lat.clone(), seqs.clone(), addrs.clone(), streamed.clone());
        let (n, disks, checkers) = (a.batch, a.disks, a.checkers);
        let conn = (!shared.is_empty()).then(|| shared[agent as usize % shared.len()].clone());
        let calls = a.ingest_calls;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(master::client::parse_addrs(&addrs));
            // As an agent sends: over its own stream (on its shared connection, or where its client
            // follows the leader), a call for any batch the stream cannot carry.
            let mut ingests = proto::client::IngestStream::default();
            let mut on_conn: Option<crate::bench_common::AgentStream<_, _>> = None;
            let mut shared_streamed = 0u64;
            let mut local = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let seq = seqs[agent as usize].fetch_add(1, Ordering::Relaxed) + 1;
                let req = batch(agent, seq, n, disks, checkers);
                let t = Instant::now();
                let res = match &conn {
                    Some(c) if !calls => match shared_stream_send(&mut on_conn, c, req).await {
                        Ok((r, on_stream)) => {
                            shared_streamed += u64::from(on_stream);
                            Ok(r)
                        }
                        Err(e) => Err(proto::error::ApiError::from(e)),
                    },
                    Some(c) => c.clone().ingest(req).await.map(|r| r.into_inner()).map_err(Into::into),
                    None if !calls => ingests.send(&mut client, req).await,
                    None => client.call(req, |mut c, r| async move { c.ingest(r).await }).await,
                };
                match res {
                    Ok(r) => {
                        committed.fetch_add(u64::from(r.applied), Ordering::Relaxed);
                        local.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Err(e) => eprintln!("agent {agent}: {e}"),
                }
            }
            lat.lock().await.extend(local);
            streamed.fetch_add(shared_streamed + ingests.stats().streamed, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let done_in = t0.elapsed();
    let total = committed.load(Ordering::Relaxed);
    let cpu1 = crate::bench_common::cpu_mark(&members)?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let l = sorted(std::mem::take(&mut *lat.lock().await));
    let mut conns = match a.connections {
        0 => "one connection each".to_string(),
        n => format!("{n} shared connections"),
    };
    conns.push_str(if a.ingest_calls { ", single calls" } else { ", a stream each" });
    if a.checkers > 1 {
        conns.push_str(&format!(", {} checkers in turn", a.checkers));
    }
    println!(
        "throughput: {} agents x {} findings/batch ({conns}): {:.0} committed findings/s over {:.1} s (fsync on \
         every node)",
        a.agents,
        a.batch,
        total as f64 / done_in.as_secs_f64(),
        done_in.as_secs_f64()
    );
    println!(
        "{} (leader: member {leader})",
        crate::bench_common::cpu_between(&cpu0, &cpu1).per_op_line(
            total,
            "committed finding",
            "this bench's clients"
        )
    );
    println!(
        "submit->commit latency per batch: p50 {:.1} ms, p99 {:.1} ms ({} batches, {} answered on streams)",
        pct(&l, 0.5),
        pct(&l, 0.99),
        l.len(),
        streamed.load(Ordering::Relaxed)
    );
    println!("archive after the throughput phase: {}", archive_line(&cluster).await);

    // Phase 2: commit -> watcher latency at a fixed offered rate.
    watch_phase(&cluster, &a, &seqs).await?;

    // Phase 3: failover.
    if a.kills > 0 {
        failover(&mut cluster, &a).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch_phase(
    cluster: &LocalCluster,
    a: &BenchMasterArgs,
    seqs: &Arc<Vec<AtomicU64>>,
) -> anyhow::Result<()> {
    let leader = cluster.wait_leader(READY_TIMEOUT).await.ok_or_else(|| anyhow!("no leader"))?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).ok_or_else(|| anyhow!("no follower"))?;
    let start_rev = cluster.info(leader).await.map(|i| i.revision).unwrap_or(0);
    // Arrival time of every revision at a watcher on the leader and on a follower.
    let mut watchers = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    // One clock origin for watchers and writers, so arrival and ack times compare.
    let t0 = Instant::now();
    for id in [leader, follower] {
        let addr = cluster.nodes[&id].grpc.clone();
        let stop = stop.clone();
        watchers.push(tokio::spawn(async move {
            let mut arrivals: BTreeMap<u64, f64> = BTreeMap::new();
            let mut client = Client::new(vec![addr]);
            let req =
                api::WatchRequest { from_revision: start_rev + 1, kind: String::new(), host: String::new() };
            let Ok(mut s) = client.call(req, |mut c, r| async move { c.watch(r).await }).await else {
                return arrivals;
            };
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), s.message()).await {
                    Ok(Ok(Some(m))) => {
                        let at = t0.elapsed().as_secs_f64() * 1000.0;
                        for e in m.events {
                            arrivals.insert(e.revision, at);
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            arrivals
        }));
    }
    // Writers: enough agents to offer `watch_rate` findings/s in batches of 100 every `interval`.
    let per_batch = 100u32;
    let writers = 4u32;
    let interval = Duration::from_secs_f64(f64::from(per_batch * writers) / f64::from(a.watch_rate.max(1)));
    let acks = Arc::new(Mutex::new(Vec::<(u64, u32, f64, f64)>::new())); // (last rev, applied, sent ms, acked ms)
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (acks, seqs) = (acks.clone(), seqs.clone());
        let addrs = cluster.grpc_addrs();
        let (secs, disks) = (a.watch_seconds, a.disks);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(master::client::parse_addrs(&addrs));
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while t0.elapsed() < Duration::from_secs(secs) {
                tick.tick().await;
                let agent = w % seqs.len() as u32;
                let seq = seqs[agent as usize].fetch_add(1, Ordering::Relaxed) + 1;
                let sent = t0.elapsed().as_secs_f64() * 1000.0;
                if let Ok(r) = client
                    .call(batch(agent, seq, per_batch, disks, 1), |mut c, r| async move { c.ingest(r).await })
                    .await
                {
                    acks.lock().await.push((
                        r.revision,
                        r.applied,
                        sent,
                        t0.elapsed().as_secs_f64() * 1000.0,
                    ));
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut arrivals = Vec::new();
    for w in watchers {
        arrivals.push(w.await.unwrap_or_default());
    }
    let acks = acks.lock().await.clone();
    let offered: u64 = acks.iter().map(|a| u64::from(a.1)).sum();
    println!(
        "watch phase: {:.0} findings/s committed for {} s",
        offered as f64 / a.watch_seconds as f64,
        a.watch_seconds
    );
    for (name, arr) in [("leader", &arrivals[0]), ("follower", &arrivals[1])] {
        let mut commit_to_watch = Vec::new();
        let mut submit_to_watch = Vec::new();
        let mut missing = 0u64;
        for &(rev, applied, sent, acked) in &acks {
            for r in rev + 1 - u64::from(applied)..=rev {
                match arr.get(&r) {
                    Some(&at) => {
                        commit_to_watch.push((at - acked).max(0.0));
                        submit_to_watch.push((at - sent).max(0.0));
                    }
                    None => missing += 1,
                }
            }
        }
        let (c, s) = (sorted(commit_to_watch), sorted(submit_to_watch));
        println!(
            "commit->watcher on the {name}: p50 {:.1} ms, p99 {:.1} ms; submit->watcher p50 {:.1} ms, p99 {:.1} ms; \
             {} events, {missing} not seen",
            pct(&c, 0.5),
            pct(&c, 0.99),
            pct(&s, 0.5),
            pct(&s, 0.99),
            c.len()
        );
    }
    Ok(())
}

async fn failover(cluster: &mut LocalCluster, a: &BenchMasterArgs) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for k in 0..a.kills {
        let leader =
            cluster.wait_leader(READY_TIMEOUT).await.ok_or_else(|| anyhow!("no leader before kill {k}"))?;
        // Make sure every node is caught up so any survivor can win.
        let commit = cluster.info(leader).await.map(|i| i.commit_index).unwrap_or(0);
        for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
            if !cluster.wait_applied(id, commit, READY_TIMEOUT).await {
                bail!("node {id} did not catch up before kill {k}");
            }
        }
        let mut client = Client::new(master::client::parse_addrs(&cluster.grpc_addrs()));
        client.call_timeout = FAILOVER_ATTEMPT;
        client.max_attempts = 1;
        let killed_at = Instant::now();
        cluster.kill9(leader);
        let mut seq_agent = 0u64;
        let took = loop {
            seq_agent += 1;
            let req = api::IngestRequest {
                agent: String::new(),
                seq: 0,
                findings: batch(9999, seq_agent, 1, 1, 1).findings,
                epoch: 0,
            };
            if client.call(req, |mut c, r| async move { c.ingest(r).await }).await.is_ok() {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > READY_TIMEOUT {
                bail!("no commit within {READY_TIMEOUT:?} after killing leader {leader}");
            }
            tokio::time::sleep(FAILOVER_PAUSE).await;
        };
        println!(
            "kill {}: leader {leader} killed; first commit on the new leader after {:.0} ms",
            k + 1,
            took.as_secs_f64() * 1000.0
        );
        times.push(took.as_secs_f64() * 1000.0);
        cluster.spawn(leader, false).context("restart killed node")?;
    }
    let t = sorted(times);
    println!(
        "failover (kill -9 of the leader -> first commit on the new leader): median {:.0} ms over {} kills",
        pct(&t, 0.5),
        t.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkers(req: &api::IngestRequest) -> Vec<(&str, &str)> {
        req.findings.iter().map(|f| (f.object.as_str(), f.checker.as_str())).collect()
    }

    #[test]
    fn findings_take_the_checkers_in_turn_so_each_disk_carries_them_all() {
        // One finding per call: the agent's successive calls go round the checkers.
        let names: Vec<String> =
            (1..=4).map(|seq| batch(7, seq, 1, 12, 3).findings[0].checker.clone()).collect();
        assert_eq!(names, ["checker-1", "checker-2", "smart", "checker-1"]);
        // A batch of two rounds of its disks: each round by the next checker, so both reach every disk.
        let b = batch(7, 3, 4, 2, 3);
        assert_eq!(
            checkers(&b),
            [
                ("disk/bench-0007/d0", "smart"),
                ("disk/bench-0007/d1", "smart"),
                ("disk/bench-0007/d0", "checker-1"),
                ("disk/bench-0007/d1", "checker-1"),
            ]
        );
        // One checker: always `smart`, as before the option.
        assert!(batch(7, 5, 30, 12, 1).findings.iter().all(|f| f.checker == "smart"));
    }
}
