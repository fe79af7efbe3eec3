//! Paginated list + watch across page boundaries while writes happen (issue 17, item 2), on a real
//! in-process 3-node cluster (`master::server::serve` three times, real gRPC and REST on loopback ports).
//!
//! A seeded writer keeps changing disks (on pages already served and on pages not served yet), creating new
//! disks whose ids sort before and after the page boundaries, and touching machines (outside the filter),
//! while SDK subscribers list the disks in pages of 7 (`list_and_watch`) and follow the watch. Each consumer
//! must end with exactly the master's state of every disk, and must have been handed exactly the changes
//! the listing did not show: compared with the reference change log (a plain watch of every disk change),
//! every change after the listing's revision whose revision is above the listed object's own revision, each
//! once, nothing else. The run must have exercised both boundary cases (an object listed with a revision past
//! the listing's, and an object created after the listing reaching the consumer only through the watch), or
//! it fails.
//!
//! The same cluster checks the front ends: REST and gRPC pages agree; bad page tokens (garbage, cut, another
//! filter, another listing) are INVALID_ARGUMENT on both and change nothing; ListAgents (gRPC and REST)
//! pages agents in id order. The CLI (`huatuo objects`) follows pages past the master's default page and
//! stops at `--limit N`, saying more match.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use huatuo_sdk::{Change, Config, Filter, Listing, Subscriber, WatchItem};
use master::cluster::free_port;
use master::config::{MasterConfig, Resolved};
use proto::api;
use proto::client::Client;
use proto::error::Code;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use state_machines::{Kind, Severity, State};
use tests::wait_until;

/// How long three in-process masters may take to elect a leader that announced its addresses.
const READY: Duration = Duration::from_secs(60);
/// Bound on every other wait (a consumer catching up, the writer making progress).
const WAIT: Duration = Duration::from_secs(60);
/// The subscribers' page size: small, so 70+ disks take a dozen pages.
const PAGE: u32 = 7;
/// Consumers started one after another while the writer runs, until both boundary cases were seen.
const MAX_CONSUMERS: usize = 8;
/// Writes the writer makes at most (it stops earlier when told to).
const MAX_WRITES: u64 = 2_000;
/// Writes that must land after the last consumer listed, so every watch carries changes too.
const WRITES_AFTER: u64 = 20;
/// Longest an in-process node may take to stop.
const STOP: Duration = Duration::from_secs(30);
/// Seed of the writer (printed; set HUATUO_PAGES_SEED to replay).
const DEFAULT_SEED: u64 = 0x9a6e_5eed;

struct Node {
    grpc: String,
    http: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<(master::server::Stopped, anyhow::Result<()>)>>,
}

fn config(dir: &std::path::Path, id: u64, ports: &[(u16, u16, u16)]) -> Resolved {
    let (grpc, http, _) = ports[id as usize - 1];
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, (_, _, peer))| format!("{} = \"127.0.0.1:{peer}\"\n", i + 1))
        .collect();
    let toml = format!(
        "id = {id}\ndata_dir = {:?}\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\ninsecure = true\n\
         tick_ms = 20\n[peers]\n{peers}",
        dir.join(format!("node{id}")),
    );
    MasterConfig::from_toml(&toml).and_then(|c| c.resolve()).expect("valid config")
}

async fn start_cluster(dir: &std::path::Path) -> Vec<Node> {
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port().expect("port"), free_port().expect("port"), free_port().expect("port")))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cfg = config(dir, id, &ports);
        let task = tokio::spawn(master::server::serve(cfg, async move {
            stopped.await.ok();
        }));
        let (g, h, _) = ports[id as usize - 1];
        nodes.push(Node { grpc: format!("127.0.0.1:{g}"), http: format!("127.0.0.1:{h}"), stop, task });
    }
    let all: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let ready = wait_until(READY, || {
        let all = all.clone();
        async move {
            let mut c = Client::new(all);
            c.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
                .await
                .is_ok_and(|i| i.leader_announced() && i.members.len() == 3)
        }
    })
    .await;
    assert!(ready, "three in-process masters never elected a leader that announced itself");
    nodes
}

fn finding(object: &str, severity: &str) -> api::Finding {
    api::Finding {
        object: object.into(),
        severity: severity.into(),
        checker: "smart".into(),
        version: "1.0.0".into(),
        rule: "smart.pages".into(),
        evidence: format!("pages test says {severity}"),
        readings: Default::default(),
        time_ms: tests::now_ms(),
        shadow: false,
    }
}

async fn ingest(client: &mut Client, findings: Vec<api::Finding>) -> u64 {
    let req = api::IngestRequest { agent: String::new(), seq: 0, findings, epoch: 0 };
    client.call(req, |mut c, r| async move { c.ingest(r).await }).await.expect("ingest").revision
}

/// The seeded writer: each write changes 1-3 objects (existing disks anywhere in id order, new disks that
/// sort first or last, machines outside the filter). Counts its acknowledged writes.
async fn writer(addrs: Vec<String>, seed: u64, stop: Arc<AtomicBool>, writes: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = Client::new(addrs);
    let mut created = 0u64;
    for _ in 0..MAX_WRITES {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let severity = ["GOOD", "WARNING", "ERROR"][rng.random_range(0..3)];
            let object = match rng.random_range(0..10) {
                0 => {
                    created += 1;
                    // New disks whose ids sort before every seeded one (h00..) or after (hzz).
                    let host = if created.is_multiple_of(2) { "h00" } else { "hzz" };
                    format!("disk/{host}/new{created:04}")
                }
                1 => format!("machine/h{:02}", rng.random_range(0..10)),
                _ => format!("disk/h{:02}/sd{}", rng.random_range(0..10), rng.random_range(0..7)),
            };
            batch.push(finding(&object, severity));
        }
        ingest(&mut client, batch).await;
        writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one consumer got: its listing, then every change its watch delivered, and how far it covered.
#[derive(Default)]
struct Consumed {
    listing_revision: u64,
    /// id -> (state, grade, revision) as listed.
    listed: BTreeMap<String, (State, Option<Severity>, u64)>,
    changes: Vec<Change>,
    covered: u64,
    error: Option<String>,
}

type ObjectState = BTreeMap<String, (State, Option<Severity>, u64)>;

fn listed_state(l: &Listing) -> ObjectState {
    l.objects.iter().map(|o| (o.id.to_string(), (o.state, o.grade, o.revision))).collect()
}

/// The consumer's state: its listing with every delivered change applied in order.
fn replay(c: &Consumed) -> ObjectState {
    let mut s = c.listed.clone();
    for ch in &c.changes {
        let (Some(id), Some(state)) = (&ch.object, ch.state) else { continue };
        s.insert(id.to_string(), (state, ch.grade, ch.revision));
    }
    s
}

async fn consume(mut w: huatuo_sdk::Watch, into: Arc<std::sync::Mutex<Consumed>>) {
    while let Some(item) = w.next().await {
        let mut c = into.lock().expect("lock");
        match item {
            Ok(WatchItem::Events { events, revision }) => {
                c.changes.extend(events);
                c.covered = revision;
            }
            Ok(WatchItem::Progress { revision }) => c.covered = revision,
            Ok(WatchItem::Reconnecting { .. }) => {}
            Ok(WatchItem::Resync { .. }) => {
                c.error = Some("unexpected resync (the change log is far longer than this test)".into());
                return;
            }
            Err(e) => {
                c.error = Some(e.to_string());
                return;
            }
        }
    }
}

/// One HTTP/1.1 GET on a fresh connection; returns (status, JSON body).
fn http_get(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) =
        tests::http_answer(addr, path).unwrap_or_else(|| panic!("GET {path} from {addr}: no answer"));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paged_list_and_watch_is_gap_free_while_writes_go_on() {
    let seed = std::env::var("HUATUO_PAGES_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    println!("writer seed {seed} (HUATUO_PAGES_SEED to replay)");
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = start_cluster(dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let mut client = Client::new(addrs.clone());

    // 70 disks on 10 hosts and 10 machines.
    for h in 0..10 {
        let mut batch: Vec<api::Finding> =
            (0..7).map(|d| finding(&format!("disk/h{h:02}/sd{d}"), "GOOD")).collect();
        batch.push(finding(&format!("machine/h{h:02}"), "GOOD"));
        ingest(&mut client, batch).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer_task = tokio::spawn(writer(addrs.clone(), seed, stop.clone(), writes.clone()));
    assert!(wait_until(WAIT, || async { writes.load(Ordering::Relaxed) >= 5 }).await, "the writer runs");

    let disks = Filter::kind(Kind::Disk);
    let mut cfg = Config::new(addrs.clone(), "pages-test");
    cfg.list_limit = PAGE;
    let mut consumers: Vec<Arc<std::sync::Mutex<Consumed>>> = Vec::new();
    let mut tasks = Vec::new();
    let (mut listed_past, mut created_after) = (false, false);
    for _ in 0..MAX_CONSUMERS {
        let mut sub = Subscriber::connect_with(cfg.clone()).await.expect("connect");
        let (listing, watch) = sub.list_and_watch(&disks).await.expect("list and watch");
        assert!(
            listing.pages >= 10,
            "{} disks in pages of {PAGE}: {} pages",
            listing.objects.len(),
            listing.pages
        );
        let c = Consumed {
            listing_revision: listing.revision,
            listed: listed_state(&listing),
            ..Default::default()
        };
        listed_past |= c.listed.values().any(|(_, _, rev)| *rev > listing.revision);
        let c = Arc::new(std::sync::Mutex::new(c));
        tasks.push(tokio::spawn(consume(watch, c.clone())));
        consumers.push(c);
        // Did an object created after some earlier listing reach that consumer only through its watch?
        created_after = consumers.iter().any(|c| {
            let c = c.lock().expect("lock");
            c.changes
                .iter()
                .any(|ch| ch.object.as_ref().is_some_and(|id| !c.listed.contains_key(&id.to_string())))
        });
        if listed_past && created_after && consumers.len() >= 2 {
            break;
        }
    }
    let after = writes.load(Ordering::Relaxed);
    assert!(
        wait_until(WAIT, || async { writes.load(Ordering::Relaxed) >= after + WRITES_AFTER }).await,
        "the writer kept writing after the last listing"
    );
    stop.store(true, Ordering::Relaxed);
    writer_task.await.expect("writer");

    // The master's state of every disk, linearizable, in pages of the maximum size.
    let master = tests::list_all(
        &mut client,
        api::ListObjectsRequest { kind: "disk".into(), limit: 10_000, ..Default::default() },
    )
    .await
    .expect("final listing");
    let final_rev = master.revision;
    let truth: ObjectState = master
        .objects
        .iter()
        .map(|o| {
            let grade =
                if o.grade.is_empty() { None } else { Some(o.grade.parse::<Severity>().expect("grade")) };
            (o.id.clone(), (o.state.parse::<State>().expect("state"), grade, o.revision))
        })
        .collect();

    // The reference change log: every disk change from the first listing on (a plain watch, no dedupe).
    let first = consumers.iter().map(|c| c.lock().expect("lock").listing_revision).min().expect("a consumer");
    let sub = Subscriber::connect_with(cfg.clone()).await.expect("connect");
    let reference = Arc::new(std::sync::Mutex::new(Consumed::default()));
    let reference_task =
        tokio::spawn(consume(sub.watch(&disks, first + 1).expect("watch"), reference.clone()));
    for c in consumers.iter().chain(std::iter::once(&reference)) {
        let done = wait_until(WAIT, || async {
            let c = c.lock().expect("lock");
            c.covered >= final_rev || c.error.is_some()
        })
        .await;
        let c = c.lock().expect("lock");
        assert!(
            done && c.error.is_none(),
            "a watch stopped at {} (want {final_rev}): {:?}",
            c.covered,
            c.error
        );
    }
    let log: Vec<Change> =
        reference.lock().expect("lock").changes.iter().filter(|c| c.revision <= final_rev).cloned().collect();
    let log_revs: Vec<u64> = log.iter().map(|c| c.revision).collect();
    assert!(log_revs.windows(2).all(|w| w[0] < w[1]), "the reference log is in order, each revision once");

    let mut total_delivered = 0;
    for (i, c) in consumers.iter().enumerate() {
        let c = c.lock().expect("lock");
        let delivered: Vec<u64> =
            c.changes.iter().map(|ch| ch.revision).filter(|r| *r <= final_rev).collect();
        let expected: Vec<u64> = log
            .iter()
            .filter(|e| e.revision > c.listing_revision)
            .filter(|e| {
                let listed =
                    e.object.as_ref().and_then(|id| c.listed.get(&id.to_string())).map_or(0, |x| x.2);
                e.revision > listed
            })
            .map(|e| e.revision)
            .collect();
        assert_eq!(
            delivered, expected,
            "consumer {i}: exactly the changes its listing did not show, each once"
        );
        let state = replay(&c);
        assert_eq!(state, truth, "consumer {i} ends with the master's state of every disk");
        total_delivered += delivered.len();
        println!(
            "consumer {i}: listing at revision {} ({} disks, {} listed past it), {} changes delivered, {} dropped \
             as already listed",
            c.listing_revision,
            c.listed.len(),
            c.listed.values().filter(|x| x.2 > c.listing_revision).count(),
            delivered.len(),
            log.iter().filter(|e| e.revision > c.listing_revision).count() - delivered.len()
        );
    }
    assert!(
        listed_past,
        "no listing saw an object changed on a page it had not served yet: the run proves nothing"
    );
    let created_after = created_after
        || consumers.iter().any(|c| {
            let c = c.lock().expect("lock");
            c.changes
                .iter()
                .any(|ch| ch.object.as_ref().is_some_and(|id| !c.listed.contains_key(&id.to_string())))
        });
    assert!(created_after, "no object created after a listing came through a watch: the run proves nothing");
    assert!(total_delivered > 0);
    for t in tasks {
        t.abort();
    }
    reference_task.abort();

    fronts_agree_and_refuse_bad_tokens(&nodes, &mut client).await;
    cli_follows_pages(&addrs, &mut client).await;

    for n in nodes {
        n.stop.send(()).ok();
        let _stopped = tokio::time::timeout(STOP, n.task).await.expect("a node stops within its limits");
    }
}

/// REST and gRPC pages agree; bad tokens are INVALID_ARGUMENT on both and change nothing; agents page in
/// id order on both.
async fn fronts_agree_and_refuse_bad_tokens(nodes: &[Node], client: &mut Client) {
    let info = client
        .call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
        .await
        .expect("info");
    let leader = nodes.iter().find(|n| n.grpc == info.leader_grpc).expect("leader is one of ours");
    let rest = leader.http.clone();

    // gRPC pages of 7 and REST pages of 7 list the same disks at the same revision when nothing is written.
    let grpc = tests::list_all(
        client,
        api::ListObjectsRequest { kind: "disk".into(), limit: 7, ..Default::default() },
    )
    .await
    .expect("grpc listing");
    let (mut rest_ids, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let (st, v) = http_get(&rest, &format!("/api/v1/objects?kind=disk&limit=7&page_token={token}"));
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["revision"].as_u64(),
            Some(grpc.revision),
            "every REST page answers the listing's revision"
        );
        let objs = v["objects"].as_array().expect("objects");
        assert!(objs.len() <= 7);
        rest_ids.extend(objs.iter().map(|o| o["id"].as_str().expect("id").to_string()));
        pages += 1;
        token = v["next_page_token"].as_str().expect("next_page_token is always present").to_string();
        if token.is_empty() {
            break;
        }
        assert!(pages < 1_000, "the REST listing never ended");
    }
    let grpc_ids: Vec<String> = grpc.objects.iter().map(|o| o.id.clone()).collect();
    assert_eq!(rest_ids, grpc_ids, "REST and gRPC pages agree");
    assert_eq!(pages, grpc_ids.len().div_ceil(7));

    // Bad tokens, the same on both front ends.
    let first = client
        .call(
            api::ListObjectsRequest { kind: "disk".into(), limit: 7, ..Default::default() },
            |mut c, r| async move { c.list_objects(r).await },
        )
        .await
        .expect("first page");
    let good = first.next_page_token.clone();
    assert!(!good.is_empty());
    let agents_first = client
        .call(api::ListAgentsRequest { limit: 1, page_token: String::new() }, |mut c, r| async move {
            c.list_agents(r).await
        })
        .await
        .expect("agents");
    let before = client
        .call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
        .await
        .expect("info")
        .revision;
    let mut cases = vec![
        ("garbage", "kind=disk", "not-a-token-at-all".to_string()),
        ("cut in half", "kind=disk", good[..good.len() / 2].to_string()),
        ("one character changed", "kind=disk", flip_one_character(&good)),
        ("another filter", "kind=disk&host=h01", good.clone()),
        ("another kind", "kind=machine", good.clone()),
        ("too long", "kind=disk", "A".repeat(master::api::validate::MAX_PAGE_TOKEN_LEN + 1)),
    ];
    if !agents_first.next_page_token.is_empty() {
        cases.push(("an agents token", "kind=disk", agents_first.next_page_token.clone()));
    }
    for (what, query, token) in cases {
        let (st, v) = http_get(&rest, &format!("/api/v1/objects?{query}&limit=7&page_token={token}"));
        assert_eq!((st, v["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{what}: REST {v}");
        assert!(v["message"].as_str().unwrap_or("").contains("page_token"), "{what}: {v}");
        let mut req = api::ListObjectsRequest { limit: 7, page_token: token.clone(), ..Default::default() };
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("kind", k)) => req.kind = k.into(),
                Some(("host", h)) => req.host = h.into(),
                _ => {}
            }
        }
        let e = client
            .call(req, |mut c, r| async move { c.list_objects(r).await })
            .await
            .expect_err(&format!("{what}: gRPC accepted it"));
        assert_eq!(e.code, Code::InvalidArgument, "{what}: gRPC {e}");
        assert!(e.message.contains("page_token"), "{what}: {e}");
    }
    let e = client
        .call(api::ListAgentsRequest { limit: 7, page_token: good.clone() }, |mut c, r| async move {
            c.list_agents(r).await
        })
        .await
        .expect_err("an objects token for agents");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    let (st, v) = http_get(&rest, &format!("/api/v1/agents?limit=7&page_token={good}"));
    assert_eq!((st, v["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "REST agents {v}");
    let after = client
        .call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await })
        .await
        .expect("info")
        .revision;
    assert_eq!(after, before, "bad tokens change nothing");

    // Agents: 12 heard by heartbeats, paged by 5 in id order through gRPC and REST.
    let names: Vec<String> = (0..12).map(|i| format!("pager-{i:02}")).collect();
    for a in &names {
        let req = api::HeartbeatRequest {
            agent: a.clone(),
            host: format!("host-{a}"),
            version: "1.0.0".into(),
            started_ms: 1,
            ..Default::default()
        };
        client.call(req, |mut c, r| async move { c.heartbeat(r).await }).await.expect("heartbeat");
    }
    let (mut grpc_agents, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let req = api::ListAgentsRequest { limit: 5, page_token: token.clone() };
        let page =
            client.call(req, |mut c, r| async move { c.list_agents(r).await }).await.expect("agents page");
        assert!(page.agents.len() <= 5);
        grpc_agents.extend(page.agents.into_iter().map(|a| (a.agent, a.alive, a.heard, a.version)));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 1_000);
    }
    let ids: Vec<&String> = grpc_agents.iter().map(|a| &a.0).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "agents in id order, each once");
    let pagers: BTreeSet<&String> = ids.iter().copied().filter(|a| a.starts_with("pager-")).collect();
    assert_eq!(pagers, names.iter().collect(), "every agent listed");
    assert!(grpc_agents.iter().filter(|a| a.0.starts_with("pager-")).all(|a| a.1 && a.2 && a.3 == "1.0.0"));
    let (mut rest_agents, mut token) = (Vec::new(), String::new());
    loop {
        let (st, v) = http_get(&rest, &format!("/api/v1/agents?limit=5&page_token={token}"));
        assert_eq!(st, 200, "{v}");
        let page = v["agents"].as_array().expect("agents");
        assert!(page.len() <= 5);
        rest_agents.extend(page.iter().map(|a| a["agent"].as_str().expect("agent").to_string()));
        token = v["next_page_token"].as_str().expect("token field").to_string();
        if token.is_empty() {
            break;
        }
        assert!(rest_agents.len() < 100_000);
    }
    assert_eq!(rest_agents.iter().collect::<Vec<_>>(), ids, "REST agents pages agree with gRPC");
}

/// `huatuo objects` against the cluster, run off the runtime's threads: (success, stdout, stderr).
async fn huatuo(args: &[&str], master: &str) -> (bool, String, String) {
    let (bin, args, master) =
        (tests::huatuo_bin(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), master.to_string());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(bin)
            .args(&args)
            .env("HUATUO_MASTER", master)
            .output()
            .expect("run huatuo");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// 1,100 disks on one host: more than the master's default page (1,000), so a whole listing takes 2 pages.
async fn cli_follows_pages(addrs: &[String], client: &mut Client) {
    const BULK: usize = 1_100;
    let findings: Vec<api::Finding> =
        (0..BULK).map(|i| finding(&format!("disk/bulk/d{i:04}"), "GOOD")).collect();
    ingest(client, findings).await;
    let master = addrs.join(",");
    let (ok, out, err) = huatuo(&["objects", "--kind", "disk", "--host", "bulk", "--json"], &master).await;
    assert!(ok, "huatuo objects: {err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let ids: Vec<&str> =
        v["objects"].as_array().expect("objects").iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(ids.len(), BULK, "every page followed");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order, each once");
    assert_eq!(v["more"], false);
    let (ok, out, err) =
        huatuo(&["objects", "--kind", "disk", "--host", "bulk", "--json", "--limit", "1050"], &master).await;
    assert!(ok, "huatuo objects --limit: {err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["objects"].as_array().map(Vec::len), Some(1050), "the first N, across a page boundary");
    assert_eq!(v["more"], true);
    let (ok, out, err) = huatuo(&["objects", "--host", "bulk", "--limit", "3"], &master).await;
    assert!(ok, "{err}");
    assert!(out.trim_end().ends_with("(the first 3: more match)"), "{out}");
    // `huatuo objects -o json | head -c 100`: the listing (over 300 KB) is cut, and the CLI ends quietly.
    let bin = tests::huatuo_bin();
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut child = std::process::Command::new(bin)
            .args(["objects", "--host", "bulk", "-o", "json"])
            .env("HUATUO_MASTER", master)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run huatuo");
        let mut head = [0u8; 100];
        child.stdout.take().expect("stdout").read_exact(&mut head).expect("the listing's first bytes");
        // The read end is closed here; the rest of the listing does not fit in the pipe.
        let out = child.wait_with_output().expect("wait");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .expect("join");
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// The token with its middle character replaced by a different one (never the same character, which would
/// leave the token valid and make the check pass or fail by luck of the token's bytes).
fn flip_one_character(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let flipped: String = chars.into_iter().collect();
    assert_ne!(flipped, token);
    flipped
}
