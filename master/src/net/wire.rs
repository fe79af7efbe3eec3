//! The network RPCs' answers (issue 16): the leader's last verdict as the proto messages gRPC sends and REST
//! serialises (REST answers the same messages as JSON, proto field names), built in one place.

use proto::api;
use proto::error::ApiError;

use super::{Closed, DEFAULT_SUSPECTS, MAX_SUSPECTS, Peer};

/// The peers of a heartbeat reply.
pub fn peers_to_wire(peers: Vec<Peer>) -> Vec<api::ProbePeer> {
    peers.into_iter().map(|p| api::ProbePeer { host: p.host, addr: p.addr, tor: p.tor }).collect()
}

fn kind_of(t: &netvote::Target) -> &'static str {
    match t {
        netvote::Target::Host { .. } => "nic",
        netvote::Target::Link { .. } => "link",
        netvote::Target::Switch(_) => "switch",
    }
}

fn decision(d: netvote::Decision) -> &'static str {
    match d {
        netvote::Decision::Rank => "",
        netvote::Decision::Warning => "WARNING",
        netvote::Decision::Error => "ERROR",
    }
}

/// NetSuspects: `limit` 0 means [`DEFAULT_SUSPECTS`]; more than [`MAX_SUSPECTS`] is refused.
pub fn suspects(last: Option<&Closed>, limit: u32) -> Result<api::NetSuspectsResponse, ApiError> {
    if limit > MAX_SUSPECTS {
        return Err(ApiError::invalid(format!("limit {limit} (at most {MAX_SUSPECTS})")));
    }
    let limit = if limit == 0 { DEFAULT_SUSPECTS } else { limit } as usize;
    let Some(c) = last else { return Ok(api::NetSuspectsResponse::default()) };
    let suspects = c
        .verdict
        .suspects
        .iter()
        .take(limit)
        .enumerate()
        .map(|(i, s)| api::NetSuspect {
            target: s.target.object_id(),
            kind: kind_of(&s.target).into(),
            score: s.score,
            rank: i as u32 + 1,
            why: s.why.clone(),
            voters: s.voters,
            bad_flows: s.bad_flows,
            flows: s.flows,
            loss: s.loss,
            evidence: s.evidence.iter().take(10).cloned().collect(),
            decision: decision(s.decision).into(),
        })
        .collect();
    Ok(api::NetSuspectsResponse {
        window_end_ms: c.window_end_ms,
        window_ms: c.window_ms,
        reporters: c.reporters,
        flows: c.flows,
        bad_flows: c.bad_flows,
        topology: c.topology.is_some(),
        suspects,
    })
}

/// NetMatrix: the rack-to-rack cells, only those involving `rack` when it is not empty.
pub fn matrix(last: Option<&Closed>, rack: &str) -> Result<api::NetMatrixResponse, ApiError> {
    if !rack.is_empty() {
        state_machines::id::validate_host(rack).map_err(|e| ApiError::invalid(format!("rack: {e}")))?;
    }
    let Some(c) = last else { return Ok(api::NetMatrixResponse::default()) };
    let cells: Vec<api::NetMatrixCell> = c
        .verdict
        .matrix
        .iter()
        .filter(|m| rack.is_empty() || m.src_tor == rack || m.dst_tor == rack)
        .map(|m| api::NetMatrixCell {
            src: m.src_tor.clone(),
            dst: m.dst_tor.clone(),
            sent: m.sent,
            lost: m.lost,
            rtt_p50_us: m.rtt_p50_us,
            rtt_p99_us: m.rtt_p99_us,
            flows: m.flows,
        })
        .collect();
    let mut racks: Vec<String> = cells.iter().flat_map(|c| [c.src.clone(), c.dst.clone()]).collect();
    racks.sort();
    racks.dedup();
    Ok(api::NetMatrixResponse { window_end_ms: c.window_end_ms, racks, cells })
}

/// NetPath: every equal-cost route with each hop's blame in the last window, and what the two hosts
/// measured of each other.
pub fn path(routes: Vec<netvote::Route>, last: Option<&Closed>, a: &str, b: &str) -> api::NetPathResponse {
    let blame = |x: &str, y: &str| {
        let t = netvote::Target::link(x, y);
        last.and_then(|c| c.verdict.suspects.iter().find(|s| s.target == t))
            .map_or((0.0, 0, 0), |s| (s.score, s.bad_flows, s.flows))
    };
    let routes = routes
        .into_iter()
        .map(|r| api::NetRoute {
            hops: r
                .links
                .iter()
                .map(|(x, y)| {
                    let (score, bad, flows) = blame(x, y);
                    api::NetHop {
                        link: format!("link/{}", netvote::link_id(x, y)),
                        blame: score,
                        bad_flows: bad,
                        flows,
                    }
                })
                .collect(),
            nodes: r.nodes,
        })
        .collect();
    let mut measured = Vec::new();
    // Every flow between the two in the windows the last verdict judged, newest window first.
    for w in last.iter().flat_map(|c| c.windows.iter()) {
        let (Some(ia), Some(ib)) = (w.host_id(a), w.host_id(b)) else { continue };
        for f in w.flows().iter().filter(|f| (f.src, f.dst) == (ia, ib) || (f.src, f.dst) == (ib, ia)) {
            measured.push(api::PeerResult {
                host: format!("{}->{}", w.host_name(f.src), w.host_name(f.dst)),
                sent: f.sent,
                lost: f.lost,
                connect_failures: f.connect_failures,
                rtt_p50_us: f.rtt_p50_us,
                rtt_p99_us: f.rtt_p99_us,
                // The switches the window placed it on when it was traced (names, "*" for an unknown hop).
                hops: w.path(f.path).to_vec(),
            });
        }
    }
    api::NetPathResponse { routes, measured }
}
