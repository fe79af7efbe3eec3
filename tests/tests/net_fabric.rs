//! Network fault localisation on real packets (issue 16): the namespace fabric of `support/fabric.rs`
//! (12 hosts, 3 ToR bridges, 1 spine, nftables loss) and the tests on it.
//!
//! `fabric_carries_traffic_and_injected_loss_shows_where_it_is` is the harness's self-test: every host
//! reaches every other one; with 20% loss on one host's NIC, connect+echo probes from it fail far more often
//! than anyone else's; with 20% loss on one ToR uplink, only flows crossing that uplink suffer; and Drop
//! leaves no namespace behind.
//!
//! Needs root (namespaces, nftables); where `ip netns add` is not permitted each test says so and skips.
#![allow(clippy::unwrap_used)]

#[path = "support/fabric.rs"]
mod fabric;
#[path = "support/netns_util.rs"]
mod netns_util;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fabric::{Fabric, HOSTS, TORS, host_ip, host_name, hosts_of, tor_of};

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
/// 20%-per-packet loss (~40% of probes measured: TCP's own retransmits rescue some within the timeout) and
/// a clean path (0% measured) cannot be confused, while the lossy host's measurement stays under ~40 s (a
/// failed probe costs up to 2 x PROBE_TIMEOUT).
const ROUNDS: usize = 6;
/// A lossy path's measured probe loss must be at least this; a clean one at most `CLEAN_MAX`. With ~40%
/// expected, 20% of 66 probes is > 3 standard deviations below: a miss means a broken injection, not luck.
const LOSSY_MIN: f64 = 0.20;
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
