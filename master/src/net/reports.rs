//! Validation of the `net` reports a heartbeat carries (issue 16), once, in the API layer, before anything
//! is touched: a heartbeat with a bad report is refused whole with INVALID_ARGUMENT and changes nothing (no
//! liveness, no peer book, no window). What passes becomes a `netvote::Report` with the reporter's host.

use std::collections::HashSet;
use std::net::IpAddr;

use proto::api;
use proto::error::ApiError;
use state_machines::{Kind, ObjectId};

/// Most reports in one heartbeat (the agent keeps at most this many closed windows unsent).
pub const MAX_NET_REPORTS_PER_HEARTBEAT: usize = 4;
/// Most peers in one report (an agent probes 32 per window by default; 256 leaves room for configuration).
pub const MAX_PEERS_PER_REPORT: usize = 256;
/// Most votes in one report (the voted peers plus the reporter itself).
pub const MAX_VOTES_PER_REPORT: usize = 256;
/// Most probes to one peer in one window: a probe every 10 ms over a 60 s window; more is not a prober.
pub const MAX_PROBES_PER_PEER: u32 = 6_000;
/// Longest window a report may claim (the master's windows are seconds; an hour is plainly wrong).
pub const MAX_REPORT_WINDOW_MS: u64 = 3_600_000;
/// Longest checker version string.
pub const MAX_NET_VERSION_LEN: usize = 64;

fn bad(i: usize, msg: String) -> ApiError {
    ApiError::invalid(format!("net report {i}: {msg}"))
}

/// Check every report of one heartbeat from `host` (whose agent started at `started_ms`) and convert them.
pub fn check_reports(
    host: &str,
    started_ms: u64,
    net: &[api::NetReport],
) -> Result<Vec<netvote::Report>, ApiError> {
    if net.len() > MAX_NET_REPORTS_PER_HEARTBEAT {
        return Err(ApiError::invalid(format!(
            "{} net reports in one heartbeat (limit {MAX_NET_REPORTS_PER_HEARTBEAT})",
            net.len()
        )));
    }
    if !net.is_empty() && state_machines::id::validate_host(host).is_err() {
        return Err(ApiError::invalid("net reports from a heartbeat without a valid host"));
    }
    let mut seqs = HashSet::new();
    net.iter()
        .enumerate()
        .map(|(i, r)| {
            if !seqs.insert(r.window_seq) {
                return Err(bad(i, format!("window_seq {} twice in one heartbeat", r.window_seq)));
            }
            check_one(i, host, started_ms, r)
        })
        .collect()
}

fn check_one(i: usize, host: &str, started_ms: u64, r: &api::NetReport) -> Result<netvote::Report, ApiError> {
    if r.window_ms == 0 || r.window_ms > MAX_REPORT_WINDOW_MS {
        return Err(bad(i, format!("window_ms {} (1..={MAX_REPORT_WINDOW_MS})", r.window_ms)));
    }
    if r.checker_version.len() > MAX_NET_VERSION_LEN {
        return Err(bad(i, format!("checker_version longer than {MAX_NET_VERSION_LEN} bytes")));
    }
    // The interface names the NIC object the host's suspicion lands on.
    ObjectId::new(Kind::Nic, host, Some(&r.iface))
        .map_err(|e| bad(i, format!("iface {:?}: {e}", r.iface.chars().take(40).collect::<String>())))?;
    if r.peers.len() > MAX_PEERS_PER_REPORT {
        return Err(bad(i, format!("{} peers (limit {MAX_PEERS_PER_REPORT})", r.peers.len())));
    }
    if r.votes.len() > MAX_VOTES_PER_REPORT {
        return Err(bad(i, format!("{} votes (limit {MAX_VOTES_PER_REPORT})", r.votes.len())));
    }
    let mut probed = HashSet::with_capacity(r.peers.len());
    let mut peers = Vec::with_capacity(r.peers.len());
    for (j, p) in r.peers.iter().enumerate() {
        state_machines::id::validate_host(&p.host).map_err(|e| bad(i, format!("peer {j}: {e}")))?;
        if p.host == host {
            return Err(bad(i, format!("peer {j} is the reporter itself")));
        }
        if !probed.insert(p.host.as_str()) {
            return Err(bad(i, format!("peer {j}: {} listed twice", p.host)));
        }
        if p.sent == 0 || p.sent > MAX_PROBES_PER_PEER {
            return Err(bad(i, format!("peer {j}: sent {} (1..={MAX_PROBES_PER_PEER})", p.sent)));
        }
        if p.lost > p.sent || p.connect_failures > p.lost {
            return Err(bad(
                i,
                format!(
                    "peer {j}: needs connect_failures <= lost <= sent ({} / {} / {})",
                    p.connect_failures, p.lost, p.sent
                ),
            ));
        }
        if p.rtt_p50_us > p.rtt_p99_us {
            return Err(bad(
                i,
                format!("peer {j}: rtt p50 {} us above p99 {} us", p.rtt_p50_us, p.rtt_p99_us),
            ));
        }
        if p.hops.len() > netvote::MAX_PATH_HOPS {
            return Err(bad(
                i,
                format!("peer {j}: {} traced hops (limit {})", p.hops.len(), netvote::MAX_PATH_HOPS),
            ));
        }
        if let Some(h) = p.hops.iter().find(|h| *h != netvote::UNKNOWN_HOP && h.parse::<IpAddr>().is_err()) {
            return Err(bad(
                i,
                format!(
                    "peer {j}: traced hop {:?} is neither an IP address nor \"*\"",
                    h.chars().take(64).collect::<String>()
                ),
            ));
        }
        peers.push(netvote::PeerResult {
            host: p.host.clone(),
            sent: p.sent,
            lost: p.lost,
            connect_failures: p.connect_failures,
            rtt_p50_us: p.rtt_p50_us,
            rtt_p99_us: p.rtt_p99_us,
            // Addresses here; `Net::add_reports` maps them to switch names with the topology.
            path: p.hops.clone(),
        });
    }
    let mut voted = HashSet::with_capacity(r.votes.len());
    for (j, v) in r.votes.iter().enumerate() {
        // A vote is for a peer this report measured, or for the reporter itself; anything else would let one
        // agent blame hosts it never probed.
        if v != host && !probed.contains(v.as_str()) {
            return Err(bad(
                i,
                format!(
                    "vote {j} for {:?}, which this report did not probe",
                    v.chars().take(80).collect::<String>()
                ),
            ));
        }
        if !voted.insert(v.as_str()) {
            return Err(bad(i, format!("vote {j}: {v} twice")));
        }
    }
    if r.tcp_retrans_segs > r.tcp_out_segs.max(1).saturating_mul(1_000) {
        return Err(bad(
            i,
            format!(
                "tcp_retrans_segs {} out of proportion to tcp_out_segs {}",
                r.tcp_retrans_segs, r.tcp_out_segs
            ),
        ));
    }
    Ok(netvote::Report {
        reporter: host.to_string(),
        started_ms,
        window_seq: r.window_seq,
        iface: r.iface.clone(),
        peers,
        votes: r.votes.clone(),
        tcp_retrans_segs: r.tcp_retrans_segs,
        tcp_out_segs: r.tcp_out_segs,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn good(seq: u64) -> api::NetReport {
        api::NetReport {
            window_seq: seq,
            window_end_ms: 1_000,
            window_ms: 10_000,
            checker_version: "1".into(),
            iface: "eth0".into(),
            peers: vec![api::PeerResult {
                host: "h2".into(),
                sent: 10,
                lost: 2,
                connect_failures: 1,
                rtt_p50_us: 100,
                rtt_p99_us: 300,
                hops: Vec::new(),
            }],
            votes: vec!["h2".into(), "h1".into()],
            tcp_retrans_segs: 3,
            tcp_out_segs: 1000,
            probe_bytes: 640,
        }
    }

    fn check(edit: impl Fn(&mut Vec<api::NetReport>), want: &str) {
        let mut net = vec![good(1)];
        edit(&mut net);
        let e = check_reports("h1", 5, &net).expect_err(want);
        assert_eq!(e.code, proto::error::Code::InvalidArgument, "{want}: {e:?}");
        assert!(e.message.contains(want), "want {want:?} in {:?}", e.message);
    }

    #[test]
    fn a_good_report_converts_with_the_reporters_identity() {
        let r = check_reports("h1", 5, &[good(1), good(2)]).expect("valid");
        assert_eq!((r[0].reporter.as_str(), r[0].started_ms, r[1].window_seq), ("h1", 5, 2));
        assert_eq!(r[0].peers[0].lost, 2);
        let mut traced = good(1);
        traced.peers[0].hops = vec!["10.0.0.1".into(), "*".into(), "fd00::2".into()];
        let r2 = check_reports("h1", 5, &[traced]).expect("traced hops are addresses or *");
        assert_eq!(r2[0].peers[0].path, ["10.0.0.1", "*", "fd00::2"]);
        assert!(check_reports("", 5, &[]).expect("no reports, no host needed").is_empty());
    }

    #[test]
    fn hostile_reports_are_refused_with_a_clear_error() {
        check(|n| n.extend((2..=5).map(good)), "5 net reports in one heartbeat (limit 4)");
        check(|n| n.push(good(1)), "window_seq 1 twice");
        check(|n| n[0].window_ms = 0, "window_ms 0");
        check(|n| n[0].iface = "eth/0".into(), "iface");
        check(|n| n[0].iface = String::new(), "iface");
        check(|n| n[0].peers[0].host = "bad host".into(), "peer 0: invalid host");
        check(|n| n[0].peers[0].host = "h1".into(), "reporter itself");
        check(
            |n| {
                let p = n[0].peers[0].clone();
                n[0].peers.push(p)
            },
            "listed twice",
        );
        check(|n| n[0].peers[0].lost = 11, "connect_failures <= lost <= sent");
        check(|n| n[0].peers[0].connect_failures = 3, "connect_failures <= lost <= sent");
        check(|n| n[0].peers[0].sent = 0, "sent 0");
        check(|n| n[0].peers[0].sent = MAX_PROBES_PER_PEER + 1, "sent 6001");
        check(|n| n[0].peers[0].rtt_p50_us = 400, "above p99");
        check(|n| n[0].votes.push("h9".into()), "did not probe");
        check(|n| n[0].votes.push("h2".into()), "twice");
        check(
            |n| {
                n[0].peers = (0..=MAX_PEERS_PER_REPORT)
                    .map(|k| api::PeerResult { host: format!("p{k}"), sent: 1, ..Default::default() })
                    .collect()
            },
            "257 peers (limit 256)",
        );
        check(
            |n| n[0].votes = (0..=MAX_VOTES_PER_REPORT).map(|k| format!("v{k}")).collect(),
            "257 votes (limit 256)",
        );
        check(|n| n[0].checker_version = "x".repeat(65), "checker_version");
        check(|n| n[0].tcp_retrans_segs = u64::MAX, "out of proportion");
        check(|n| n[0].peers[0].hops = vec!["10.0.0.1".into(); 17], "17 traced hops (limit 16)");
        check(|n| n[0].peers[0].hops = vec!["10.0.0.1".into(), "tor1".into()], "traced hop \"tor1\"");
        let e = check_reports("bad host", 5, &[good(1)]).expect_err("bad reporter");
        assert!(e.message.contains("valid host"), "{e:?}");
    }
}
