//! Network fault localisation on real packets (issue 16): the namespace fabric of `support/fabric.rs`
//! (12 hosts, 3 ToR bridges, 1 spine, nftables loss) and the tests on it.
//!
//! Harness tests (no Huatuo process): `fabric_carries_traffic_and_injected_loss_shows_where_it_is` (every
//! host reaches every other one; with 20% loss on one host's NIC, connect+echo probes from it fail far more
//! often than anyone else's; with 20% loss on one ToR uplink only flows crossing that uplink suffer; Drop
//! leaves no namespace behind) and `a_panicking_test_leaves_no_namespace_and_no_process`.
//!
//! End to end (3 `huatuo master` in the control namespace with the fabric's topology and `[net] window_s =
//! 2`, a `huatuo agent` with `[net_probe]` on in each of the 12 host namespaces): 20% loss on one host ->
//! its NIC tops the suspects within `LOCALISE_WINDOWS` and goes to ERROR, nobody else's does; 20% loss on
//! one ToR uplink -> the link (or ToR) is named and no host goes to ERROR; a healthy fabric for 5 minutes
//! -> no suspect in any window.
//! Failures print the windows seen (suspects, reporters, flows) and the processes' log tails.
//!
//! Needs root (namespaces, nftables) and the `huatuo` binary (`tests::huatuo_bin`); where `ip netns add` is
//! not permitted each test says so and skips.
#![allow(clippy::unwrap_used)]

#[path = "support/fabric.rs"]
mod fabric;
#[path = "support/netns_util.rs"]
mod netns_util;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fabric::{Fabric, HOSTS, TORS, host_ip, host_name, hosts_of, tor_name, tor_of};

/// The self-test's echo port inside every host namespace.
const ECHO_PORT: u16 = 7799;
/// Share of packets the injected faults drop (the figure).
const LOSS_PCT: u32 = 20;
/// Connect timeout and reply timeout of one probe: under a lost SYN (retransmitted after 1 s) so a dropped
/// packet counts as a loss, far over a veth's RTT so a busy machine does not.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Attempts per pair in the reachability check (no loss injected; one retry covers a busy machine).
const REACH_ATTEMPTS: usize = 3;
/// Probes per ordered pair in a loss measurement: 11 peers x 6 = 66 probes per source host, enough that a
/// 20%-per-packet loss (~33-41% of probes measured: TCP's own retransmits rescue some in time) and
/// a clean path (0% measured) cannot be confused, while the lossy host's measurement stays under ~40 s (a
/// failed probe costs up to 2 x PROBE_TIMEOUT).
const ROUNDS: usize = 6;
/// A lossy path's measured probe loss must be at least this; a clean one at most `CLEAN_MAX`. Measured
/// 33-41% for 20% packet loss (0% on clean paths): 15% of 66 probes is > 3.5 standard deviations below, so a
/// miss means a broken injection, not bad luck.
const LOSSY_MIN: f64 = 0.15;
const CLEAN_MAX: f64 = 0.10;

/// (sent, lost) per ordered pair of hosts.
type Counts = BTreeMap<(usize, usize), (u32, u32)>;

/// Probe each pair `rounds` times, one thread per source host in its namespace (a source's pairs one after
/// the other, round-robin over its targets).
fn measure(f: &Fabric, pairs: &[(usize, usize)], rounds: usize) -> Counts {
    let mut by_src: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(s, d) in pairs {
        by_src.entry(s).or_default().push(d);
    }
    let threads: Vec<_> = by_src
        .into_iter()
        .map(|(s, targets)| {
            f.in_ns(&f.host_ns(s), move || {
                let mut c = Counts::new();
                for r in 0..rounds {
                    for &d in &targets {
                        let payload = format!("probe {s}->{d} #{r}");
                        let ok = fabric::probe(
                            SocketAddr::from((host_ip(d), ECHO_PORT)),
                            PROBE_TIMEOUT,
                            payload.as_bytes(),
                        );
                        let e = c.entry((s, d)).or_insert((0, 0));
                        e.0 += 1;
                        e.1 += u32::from(!ok);
                    }
                }
                c
            })
        })
        .collect();
    let mut all = Counts::new();
    for t in threads {
        all.extend(t.join().expect("probe thread").expect("enter host namespace"));
    }
    all
}

/// Loss over the pairs `keep` selects: (lost / sent, sent).
fn loss(c: &Counts, keep: impl Fn(usize, usize) -> bool) -> (f64, u32) {
    let (sent, lost) =
        c.iter().filter(|((s, d), _)| keep(*s, *d)).fold((0, 0), |(a, b), (_, (s, l))| (a + s, b + l));
    (if sent == 0 { 0.0 } else { f64::from(lost) / f64::from(sent) }, sent)
}

fn all_pairs() -> Vec<(usize, usize)> {
    (1..=HOSTS).flat_map(|s| (1..=HOSTS).filter(move |&d| d != s).map(move |d| (s, d))).collect()
}

#[test]
fn fabric_carries_traffic_and_injected_loss_shows_where_it_is() {
    let started = Instant::now();
    let Some(f) = Fabric::up("fabric").unwrap_or_else(|e| panic!("[fabric] setup: {e}")) else { return };
    let names = f.namespaces();
    let prefix = f.prefix.clone();
    let echo = f.echo(ECHO_PORT).unwrap_or_else(|e| panic!("[fabric] echo servers: {e}"));
    println!("[fabric] {} namespaces up in {:?}", names.len(), started.elapsed());

    // Every host reaches every other one, under its own ToR and across the spine.
    let c = measure(&f, &all_pairs(), REACH_ATTEMPTS);
    let unreachable: Vec<_> = c.iter().filter(|(_, (sent, lost))| lost == sent).map(|(p, _)| *p).collect();
    assert!(unreachable.is_empty(), "[fabric] pairs with no probe answered: {unreachable:?}");
    let (clean, sent) = loss(&c, |_, _| true);
    println!("[fabric] reachability: {} pairs, {sent} probes, {:.1}% lost", c.len(), clean * 100.0);

    // 20% loss on one host's NIC: its probes fail, nobody else's do.
    let bad = 6;
    f.host_loss(bad, LOSS_PCT).unwrap();
    let c = measure(&f, &all_pairs(), ROUNDS);
    f.host_loss(bad, 0).unwrap();
    let (from_bad, n_bad) = loss(&c, |s, _| s == bad);
    println!(
        "[fabric] {LOSS_PCT}% loss on {}: its probes {:.1}% lost of {n_bad}",
        host_name(bad),
        from_bad * 100.0
    );
    assert!(from_bad >= LOSSY_MIN, "[fabric] probes from the lossy host lost only {:.1}%", from_bad * 100.0);
    for s in (1..=HOSTS).filter(|&s| s != bad) {
        let (l, n) = loss(&c, |a, b| a == s && b != bad);
        println!("[fabric]   {}: {:.1}% lost of {n} (peers but the lossy host)", host_name(s), l * 100.0);
        assert!(l <= CLEAN_MAX, "[fabric] {} lost {:.1}% with no loss on its paths", host_name(s), l * 100.0);
    }

    // 20% loss on ToR 1's uplink: flows crossing it suffer, flows under one ToR and between the others not.
    let t = 1;
    f.uplink_loss(t, LOSS_PCT).unwrap();
    let c = measure(&f, &all_pairs(), ROUNDS);
    f.uplink_loss(t, 0).unwrap();
    let crosses = |s: usize, d: usize| (tor_of(s) == t) != (tor_of(d) == t);
    let (across, n_across) = loss(&c, crosses);
    let (rest, n_rest) = loss(&c, |s, d| !crosses(s, d));
    let (inside, n_inside) = loss(&c, |s, d| tor_of(s) == t && tor_of(d) == t);
    println!(
        "[fabric] {LOSS_PCT}% loss on tor{t}'s uplink: flows across it {:.1}% lost of {n_across}, the others {:.1}% \
         of {n_rest} (under tor{t} alone {:.1}% of {n_inside})",
        across * 100.0,
        rest * 100.0,
        inside * 100.0
    );
    assert!(across >= LOSSY_MIN, "[fabric] flows across the lossy uplink lost only {:.1}%", across * 100.0);
    assert!(rest <= CLEAN_MAX, "[fabric] flows not crossing the lossy uplink lost {:.1}%", rest * 100.0);
    assert_eq!(hosts_of(t).len() * TORS, HOSTS);

    // The topology the masters get describes this fabric: a host's ToR, and one route between hosts under
    // different ToRs, through the spine, crossing both ToRs' uplinks.
    let topo = netvote::Topology::parse_toml(&fabric::topology_toml()).unwrap();
    assert_eq!(topo.host_count(), HOSTS);
    for i in 1..=HOSTS {
        assert_eq!(topo.tor_of(&host_name(i)), Some(tor_name(tor_of(i)).as_str()));
    }
    let routes = topo.routes(&host_name(1), &host_name(bad)).unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].nodes, [&host_name(1), "tor1", fabric::SPINE, "tor2", &host_name(bad)]);
    assert!(routes[0].links.contains(&(fabric::SPINE.to_string(), "tor1".to_string())), "{routes:?}");

    echo.stop();
    drop(f);
    let left: Vec<String> = netns_util::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix) || names.contains(n))
        .collect();
    assert!(left.is_empty(), "[fabric] namespaces left after Drop: {left:?}");
    println!("[fabric] torn down, no namespace left; wall time {:?}", started.elapsed());
}

/// A panic half-way through a test still removes the whole fabric and kills what ran in it.
#[test]
fn a_panicking_test_leaves_no_namespace_and_no_process() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut f) = Fabric::up("fabric-drop").unwrap_or_else(|e| panic!("[fabric-drop] setup: {e}")) else {
        return;
    };
    let names = f.namespaces();
    let ns = f.host_ns(1);
    f.spawn("sleeper", &ns, std::path::Path::new("sleep"), &["600"]).unwrap();
    let pid = f.pid("sleeper").unwrap();
    f.host_loss(1, LOSS_PCT).unwrap();
    f.uplink_loss(1, LOSS_PCT).unwrap();
    let r = std::thread::spawn(move || {
        let _f = f;
        panic!("[fabric-drop] a test failing with its fabric up");
    })
    .join();
    assert!(r.is_err());
    let left: Vec<String> = netns_util::list().unwrap().into_iter().filter(|n| names.contains(n)).collect();
    assert!(left.is_empty(), "[fabric-drop] namespaces left after a panic: {left:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "[fabric-drop] process {pid} still runs"
    );
    println!("[fabric-drop] {} namespaces and process {pid} gone after a panic", names.len());
}

/// The end-to-end scenarios of issue 16 on the fabric: 3 `huatuo master` processes in the control
/// namespace with the fabric's topology, and a `huatuo agent` with `[net_probe]` on in every host namespace.
mod e2e {
    use std::time::{Duration, Instant};

    use master::client::Client;
    use proto::api;

    use super::fabric::{self, CTL_IP, Fabric, HOST_IFACE, HOSTS, host_ip, host_name, tor_name, tor_of};

    /// The probe and vote window of the masters (`[net] window_s`) and the agents (`[net_probe] window_s`).
    pub const WINDOW: Duration = Duration::from_secs(2);
    /// Windows without suspicion before a switch, link or NIC returns to GOOD (`[net] clear_windows`).
    const CLEAR_WINDOWS: u32 = 3;
    /// Agent heartbeat period: reports ride the heartbeats.
    const HEARTBEAT_S: u64 = 1;
    /// Master ports on the control address: member N listens on BASE + N.
    const GRPC_BASE: u16 = 7700;
    const PEER_BASE: u16 = 7710;
    const HTTP_BASE: u16 = 7780;
    /// The agents' probe port (PRODUCT.md's default).
    const PROBE_PORT: u16 = 7791;
    /// Bound on the start: a leader, and every agent's reports in one closed window (15 debug processes
    /// starting on a shared 2-core machine).
    pub const START: Duration = Duration::from_secs(90);
    /// How often the scenarios poll the masters.
    pub const POLL: Duration = Duration::from_millis(500);
    /// Bound on one gRPC call of the test's client.
    const CALL: Duration = Duration::from_secs(5);

    pub fn grpc(id: u16) -> String {
        format!("{CTL_IP}:{}", GRPC_BASE + id)
    }
    pub fn masters() -> Vec<String> {
        (1..=3).map(grpc).collect()
    }

    pub fn client() -> Client {
        let mut c = Client::new(masters());
        c.call_timeout = CALL;
        c
    }

    /// The masters and agents on a fresh fabric; `None` where namespaces are not permitted.
    pub fn start(what: &str) -> Option<Fabric> {
        let mut f = Fabric::up(what).unwrap_or_else(|e| panic!("[{what}] fabric: {e}"))?;
        let bin = tests::huatuo_bin();
        let topo = f.write("topology.toml", &fabric::topology_toml()).unwrap();
        let peers: Vec<String> =
            (1..=3u16).map(|i| format!("\"{i}\" = \"{CTL_IP}:{}\"", PEER_BASE + i)).collect();
        for id in 1..=3u16 {
            let data = f.dir.path().join(format!("master-{id}"));
            let cfg = format!(
                "id = {id}\ninsecure = true\ngrpc = \"{}\"\nhttp = \"{CTL_IP}:{}\"\npeer_listen = \"{CTL_IP}:{}\"\n\
                 data_dir = {:?}\n[peers]\n{}\n[topology]\nfile = {:?}\n[net]\nwindow_s = {}\nclear_windows = \
                 {CLEAR_WINDOWS}\n",
                grpc(id),
                HTTP_BASE + id,
                PEER_BASE + id,
                data.display().to_string(),
                peers.join("\n"),
                topo.display().to_string(),
                WINDOW.as_secs(),
            );
            let path = f.write(&format!("master-{id}.toml"), &cfg).unwrap();
            let ns = f.ctl_ns();
            f.spawn(&format!("master-{id}"), &ns, &bin, &["master", "--config", &path.display().to_string()])
                .unwrap();
        }
        let masters: Vec<String> = masters().iter().map(|m| format!("{m:?}")).collect();
        for i in 1..=HOSTS {
            let host = host_name(i);
            let data = f.dir.path().join(format!("agent-{host}"));
            let addr = format!("{}:{PROBE_PORT}", host_ip(i));
            // Only the probe checker and the machine and NIC checkers run: the others would read this
            // machine's real disks and kernel log twelve times over.
            let cfg = format!(
                "version = 1\nhost = {host:?}\ndata_dir = {:?}\nmasters = [{}]\ninsecure = true\n\
                 http_listen = \"127.0.0.1:7790\"\n[labels]\nswitch = {:?}\n[report]\nheartbeat_s = {HEARTBEAT_S}\n\
                 backoff_max_s = 1\n[checkers.disk]\nenabled = false\n[checkers.edac]\nenabled = false\n\
                 [checkers.rasdaemon]\nenabled = false\n[checkers.kernel-log]\nenabled = false\n\
                 [net_probe]\nenabled = true\nlisten = {addr:?}\nadvertise = {addr:?}\nwindow_s = {}\n\
                 peers_per_window = {}\n",
                data.display().to_string(),
                masters.join(", "),
                tor_name(tor_of(i)),
                WINDOW.as_secs(),
                HOSTS - 1,
            );
            let path = f.write(&format!("agent-{host}.toml"), &cfg).unwrap();
            let ns = f.host_ns(i);
            f.spawn(&format!("agent-{host}"), &ns, &bin, &["agent", "--config", &path.display().to_string()])
                .unwrap();
        }
        Some(f)
    }

    /// What a failing scenario prints: processes that exited and the logs' tails.
    pub fn dump(f: &mut Fabric) -> String {
        let mut s = format!("exited: {:?}\n", f.exited());
        for id in 1..=3 {
            s += &format!("--- master-{id}\n{}\n", f.log_tail(&format!("master-{id}")));
        }
        for i in [1, 6] {
            let n = format!("agent-{}", host_name(i));
            s += &format!("--- {n}\n{}\n", f.log_tail(&n));
        }
        s
    }

    pub async fn suspects(c: &mut Client) -> Option<api::NetSuspectsResponse> {
        c.call(api::NetSuspectsRequest { limit: 20 }, |mut g, r| async move { g.net_suspects(r).await })
            .await
            .ok()
    }

    pub fn show(r: &api::NetSuspectsResponse) -> String {
        let mut s = format!(
            "window end {} ({} ms): {} reporters, {} flows, {} bad; topology {}",
            r.window_end_ms, r.window_ms, r.reporters, r.flows, r.bad_flows, r.topology
        );
        for x in &r.suspects {
            s += &format!(
                "\n  #{} {} ({}) score {:.3} voters {} bad {}/{} loss {:.3} decision {:?}: {}",
                x.rank, x.target, x.kind, x.score, x.voters, x.bad_flows, x.flows, x.loss, x.decision, x.why
            );
        }
        s
    }

    /// Wait until a closed window holds every agent's report: the fabric and the agents are up.
    pub async fn all_reporting(c: &mut Client) -> Result<api::NetSuspectsResponse, String> {
        let deadline = Instant::now() + START;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(r) = suspects(c).await {
                if r.reporters as usize >= HOSTS {
                    return Ok(r);
                }
                last = Some(r);
            }
            tokio::time::sleep(POLL).await;
        }
        Err(format!(
            "not every agent reported within {START:?}; last: {}",
            last.as_ref().map_or("none".into(), show)
        ))
    }

    pub async fn state(c: &mut Client, id: &str) -> Option<String> {
        let req = api::GetObjectRequest { id: id.into(), stale: false };
        c.call(req, |mut g, r| async move { g.get_object(r).await }).await.ok()?.object.map(|o| o.state)
    }

    /// Every `nic` and `machine` object in ERROR.
    pub async fn hosts_in_error(c: &mut Client) -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        for kind in ["nic", "machine"] {
            let req =
                api::ListObjectsRequest { kind: kind.into(), state: "ERROR".into(), ..Default::default() };
            let r = tests::list_all(c, req).await.map_err(|e| format!("list {kind}: {e}"))?;
            v.extend(r.objects.into_iter().map(|o| o.id));
        }
        Ok(v)
    }

    /// `huatuo net suspects --json` from the control namespace, parsed.
    pub fn cli_suspects(f: &Fabric) -> Result<serde_json::Value, String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &f.ctl_ns()])
            .arg(tests::huatuo_bin())
            .args(["net", "suspects", "--json", "--insecure", "--master", &masters().join(",")])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("huatuo net suspects: {}", String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn nic(i: usize) -> String {
        format!("nic/{}/{HOST_IFACE}", host_name(i))
    }
}

/// The fault scenarios and the self-test take turns (2 shared cores: their probes time out under load);
/// the 5-minute healthy run goes beside them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Master windows from the fault until the culprit tops the suspects: the partial window the fault began
/// in, one window for the agents' reports to reach the leader (agent and master windows are not aligned),
/// and the 2.
const LOCALISE_WINDOWS: usize = 4;
/// Bound on the wait for localisation and for the ERROR that follows (generous: a loaded machine may delay
/// windows; the window count above is what is asserted).
const LOCALISE_WAIT: Duration = Duration::from_secs(60);
/// Windows watched after an uplink is named, in which no host may go to ERROR.
const WATCH_WINDOWS: usize = 5;
/// The healthy run (the issue: 5 minutes).
const HEALTHY: Duration = Duration::from_secs(300);

/// Start the masters and agents on a fresh fabric and run `scenario` on a thread in the control namespace
/// (where the masters' addresses are), with the fabric to inject faults; Drop removes everything after.
fn on_fabric<F, Fut>(what: &'static str, scenario: F)
where
    F: FnOnce(Fabric) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Fabric>,
{
    let started = Instant::now();
    let Some(f) = e2e::start(what) else { return };
    let ctl = f.ctl_ns();
    let r = std::thread::spawn(move || {
        netns_util::enter(&ctl).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(scenario(f))
    })
    .join();
    match r {
        Ok(f) => {
            drop(f);
            println!("[{what}] wall time {:?}", started.elapsed());
        }
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Poll the suspects until `done` holds, counting the master windows that closed meanwhile; panics with what
/// it saw after `LOCALISE_WAIT`. Returns the answer that satisfied it and the windows counted.
async fn wait_suspects(
    f: &mut Fabric,
    c: &mut master::client::Client,
    what: &str,
    since_ms: u64,
    done: impl Fn(&proto::api::NetSuspectsResponse) -> bool,
) -> (proto::api::NetSuspectsResponse, usize) {
    let deadline = Instant::now() + LOCALISE_WAIT;
    let mut windows = std::collections::BTreeSet::new();
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(r) = e2e::suspects(c).await {
            if r.window_end_ms > since_ms {
                windows.insert(r.window_end_ms);
            }
            if done(&r) {
                return (r, windows.len());
            }
            if seen.last().is_none_or(|(end, _)| *end != r.window_end_ms) {
                seen.push((r.window_end_ms, e2e::show(&r)));
            }
        }
        tokio::time::sleep(e2e::POLL).await;
    }
    let seen: Vec<String> = seen.into_iter().map(|(_, s)| s).collect();
    panic!("[{what}] not within {LOCALISE_WAIT:?}; windows seen:\n{}\n{}", seen.join("\n"), e2e::dump(f));
}

#[test]
fn loss_on_one_host_names_its_nic_and_moves_it_to_error() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    on_fabric("net-nic", |mut f| async move {
        let what = "net-nic";
        let mut c = e2e::client();
        let first = e2e::all_reporting(&mut c)
            .await
            .unwrap_or_else(|e| panic!("[{what}] {e}\n{}", e2e::dump(&mut f)));
        assert!(first.topology, "[{what}] the masters did not load the topology: {}", e2e::show(&first));
        println!("[{what}] every agent reporting: {}", e2e::show(&first));
        let bad = 6;
        let nic = e2e::nic(bad);
        f.host_loss(bad, LOSS_PCT).unwrap();
        let at = tests::now_ms();
        let t = Instant::now();
        let (r, windows) = wait_suspects(&mut f, &mut c, what, at, |r| {
            r.suspects
                .first()
                .is_some_and(|s| s.target == nic || s.target == format!("machine/{}", host_name(bad)))
        })
        .await;
        println!(
            "[{what}] {LOSS_PCT}% loss on {}: top suspect after {windows} windows ({:?}): {}",
            host_name(bad),
            t.elapsed(),
            e2e::show(&r)
        );
        assert!(
            windows <= LOCALISE_WINDOWS,
            "[{what}] localised only after {windows} windows (at most {LOCALISE_WINDOWS}): {}",
            e2e::show(&r)
        );
        // The leader's findings move the NIC and its machine to ERROR through the state machines.
        let machine = format!("machine/{}", host_name(bad));
        for id in [&nic, &machine] {
            let mut state = None;
            let deadline = Instant::now() + LOCALISE_WAIT;
            while state.as_deref() != Some("ERROR") && Instant::now() < deadline {
                state = e2e::state(&mut c, id).await;
                if state.as_deref() != Some("ERROR") {
                    tokio::time::sleep(e2e::POLL).await;
                }
            }
            let r = e2e::suspects(&mut c).await;
            assert!(
                state.as_deref() == Some("ERROR"),
                "[{what}] {id} is {state:?} after {LOCALISE_WAIT:?}, not ERROR; suspects: {}\n{}",
                r.as_ref().map_or("none".into(), e2e::show),
                e2e::dump(&mut f)
            );
            println!("[{what}] {id} in ERROR {:?} after the loss began", t.elapsed());
        }
        // Nobody else's NIC or machine went with it.
        let errors = e2e::hosts_in_error(&mut c).await.unwrap();
        let others: Vec<&String> = errors.iter().filter(|id| !id.contains(&host_name(bad))).collect();
        assert!(others.is_empty(), "[{what}] other hosts in ERROR: {others:?}");
        let cli = e2e::cli_suspects(&f).unwrap_or_else(|e| panic!("[{what}] {e}"));
        println!("[{what}] huatuo net suspects --json: {cli}");
        let cli_top = cli["suspects"][0]["target"].as_str().unwrap_or_default().to_string();
        assert!(
            cli_top == nic || cli_top == format!("machine/{}", host_name(bad)),
            "[{what}] the CLI's top suspect is {cli_top:?}, not {nic}: {cli}"
        );
        f.host_loss(bad, 0).unwrap();
        f
    });
}

#[test]
fn loss_on_a_tor_uplink_names_the_link_and_no_host_goes_to_error() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    on_fabric("net-uplink", |mut f| async move {
        let what = "net-uplink";
        let mut c = e2e::client();
        let first = e2e::all_reporting(&mut c)
            .await
            .unwrap_or_else(|e| panic!("[{what}] {e}\n{}", e2e::dump(&mut f)));
        assert!(first.topology, "[{what}] the masters did not load the topology: {}", e2e::show(&first));
        let t = 1;
        let link = format!("link/{}--{}", fabric::SPINE.min(&tor_name(t)), fabric::SPINE.max(&tor_name(t)));
        let switch = format!("switch/{}", tor_name(t));
        f.uplink_loss(t, LOSS_PCT).unwrap();
        let at = tests::now_ms();
        let started = Instant::now();
        let (r, windows) = wait_suspects(&mut f, &mut c, what, at, |r| {
            r.suspects.first().is_some_and(|s| s.target == link || s.target == switch)
        })
        .await;
        println!(
            "[{what}] {LOSS_PCT}% loss on {}'s uplink: top suspect after {windows} windows ({:?}): {}",
            tor_name(t),
            started.elapsed(),
            e2e::show(&r)
        );
        assert!(
            windows <= LOCALISE_WINDOWS,
            "[{what}] localised only after {windows} windows (at most {LOCALISE_WINDOWS}): {}",
            e2e::show(&r)
        );
        // For WATCH_WINDOWS more windows: no host suspect is given ERROR and no NIC or machine is in ERROR.
        let mut watched = std::collections::BTreeSet::new();
        let deadline = Instant::now() + LOCALISE_WAIT;
        while watched.len() < WATCH_WINDOWS && Instant::now() < deadline {
            if let Some(r) = e2e::suspects(&mut c).await {
                watched.insert(r.window_end_ms);
                let host_errors: Vec<&str> = r
                    .suspects
                    .iter()
                    .filter(|s| (s.kind == "nic" || s.kind == "host") && s.decision == "ERROR")
                    .map(|s| s.target.as_str())
                    .collect();
                assert!(
                    host_errors.is_empty(),
                    "[{what}] hosts given ERROR for an uplink fault: {}",
                    e2e::show(&r)
                );
            }
            let errors = e2e::hosts_in_error(&mut c).await.unwrap();
            assert!(errors.is_empty(), "[{what}] hosts in ERROR for an uplink fault: {errors:?}");
            tokio::time::sleep(e2e::POLL).await;
        }
        assert!(
            watched.len() >= WATCH_WINDOWS,
            "[{what}] only {} windows closed in {LOCALISE_WAIT:?}",
            watched.len()
        );
        let cli = e2e::cli_suspects(&f).unwrap_or_else(|e| panic!("[{what}] {e}"));
        println!(
            "[{what}] {WATCH_WINDOWS} more windows, no host in ERROR; huatuo net suspects --json: {cli}"
        );
        f.uplink_loss(t, 0).unwrap();
        f
    });
}

#[test]
fn a_healthy_fabric_has_no_suspects_for_five_minutes() {
    on_fabric("net-healthy", |mut f| async move {
        let what = "net-healthy";
        let mut c = e2e::client();
        let first = e2e::all_reporting(&mut c)
            .await
            .unwrap_or_else(|e| panic!("[{what}] {e}\n{}", e2e::dump(&mut f)));
        let end = Instant::now() + HEALTHY;
        let mut windows = std::collections::BTreeMap::new();
        windows.insert(first.window_end_ms, (first.reporters, first.flows));
        let mut bad = Vec::new();
        while Instant::now() < end {
            if let Some(r) = e2e::suspects(&mut c).await {
                windows.insert(r.window_end_ms, (r.reporters, r.flows));
                if !r.suspects.is_empty() && bad.last().is_none_or(|(end, _)| *end != r.window_end_ms) {
                    bad.push((r.window_end_ms, e2e::show(&r)));
                }
            }
            tokio::time::sleep(e2e::WINDOW).await;
        }
        let errors = e2e::hosts_in_error(&mut c).await.unwrap();
        let flows: u64 = windows.values().map(|(_, f)| f).sum();
        let thin = windows.values().filter(|(r, _)| (*r as usize) < HOSTS).count();
        println!(
            "[{what}] {:?} healthy: {} windows seen, {flows} flows, {thin} windows with fewer than {HOSTS} reporters, \
             {} with suspects",
            HEALTHY,
            windows.len(),
            bad.len()
        );
        let bad: Vec<String> = bad.into_iter().map(|(_, s)| s).collect();
        assert!(bad.is_empty(), "[{what}] suspects on a healthy fabric:\n{}", bad.join("\n"));
        assert!(errors.is_empty(), "[{what}] hosts in ERROR on a healthy fabric: {errors:?}");
        f
    });
}
