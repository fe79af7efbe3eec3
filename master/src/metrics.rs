//! `/metrics`: the node's raft and state-machine figures in Prometheus text format (prometheus-client),
//! built at scrape time from the live values so nothing has to be kept in sync: Raft (term, leader changes,
//! commit/apply index, fsync latency), ingest, transitions by kind and target state, the safety net (level
//! and quota use per scope, pending proposals), watchers and their lag, and the repair-ticket queue.
//! Dashboards and alert rules that use these: `deploy/grafana/`, `deploy/prometheus/`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use proto::error::ApiError;

use crate::api::Service;

/// The metrics text; `member_nospace` is every member's NOSPACE alarm by id ([`Service::member_nospace`]).
pub fn render(svc: &Service, member_nospace: &BTreeMap<u64, bool>) -> Result<String, ApiError> {
    let st = svc.raft().status();
    let info = svc.cluster_info()?;
    let mut reg = Registry::with_prefix("huatuo_master");
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register("term", "Current Raft term", gauge(st.term));
    reg.register("commit_index", "Raft commit index", gauge(st.commit_index));
    reg.register("applied_index", "Raft index applied to the state machine", gauge(st.applied_index));
    reg.register(
        "is_leader",
        "1 if this node is the Raft leader",
        gauge(u64::from(st.role == crate::raft::Role::Leader)),
    );
    reg.register(
        "nospace_alarm",
        "1 while this member's disk is below its floor (NOSPACE): as leader it refuses writes and hands over, as \
         follower it takes no new entries and redirects reads and watches",
        gauge(u64::from(st.nospace)),
    );
    let members: Family<[(&'static str, String); 1], Gauge> = Family::default();
    for (id, raised) in member_nospace {
        members.get_or_create(&[("member", id.to_string())]).set(i64::from(*raised));
    }
    reg.register(
        "member_nospace_alarm",
        "1 while that member's NOSPACE alarm is raised (its disk below its floor), as it answered over the \
         peer port (0 also when it did not answer)",
        members,
    );
    if let Some(a) = svc.archive() {
        let st = &a.stats;
        reg.register(
            "archive_entries",
            "Applied entries written to this member's archive (archive.redb)",
            ConstCounter::new(st.entries.load(Ordering::Relaxed)),
        );
        reg.register(
            "archive_dropped_entries",
            "Applied entries the archive dropped because its queue was full (the archive lags; Raft never waits)",
            ConstCounter::new(st.dropped_entries.load(Ordering::Relaxed)),
        );
        reg.register(
            "archive_slow_pushes",
            "Archive pushes on the apply path slower than 100 us",
            ConstCounter::new(st.slow_pushes.load(Ordering::Relaxed)),
        );
        reg.register(
            "archive_write_errors",
            "Archive writes that failed (their entries are missing from the archive)",
            ConstCounter::new(st.errors.load(Ordering::Relaxed)),
        );
        reg.register(
            "archive_pruned_rows",
            "Archive rows dropped by the [archive] days / max_mb bounds since start",
            ConstCounter::new(st.pruned.load(Ordering::Relaxed)),
        );
    }
    reg.register(
        "snapshot_chunks_refused",
        "Snapshot streams this process refused because a chunk or the whole failed its CRC-32C (re-sent)",
        ConstCounter::new(crate::raft::alarms::SNAPSHOT_CHUNKS_REFUSED.load(Ordering::Relaxed)),
    );
    {
        use crate::raft::peer_streams::{BATCHES_CALLED, BATCHES_STREAMED, STREAMS_OPENED};
        let batches: Family<[(&'static str, String); 1], Counter> = Family::default();
        for (how, n) in [("stream", &BATCHES_STREAMED), ("call", &BATCHES_CALLED)] {
            batches.get_or_create(&[("how", how.to_string())]).inc_by(n.load(Ordering::Relaxed));
        }
        reg.register(
            "peer_batches",
            "Batches of Raft messages this process sent to its peers, by transport",
            batches,
        );
        reg.register(
            "peer_streams_opened",
            "Peer streams (SendStream) this process opened: one per peer, and another after each failure",
            ConstCounter::new(STREAMS_OPENED.load(Ordering::Relaxed)),
        );
    }
    reg.register(
        "storage_corrupt",
        "1 if this node stopped because its Raft storage failed verification",
        gauge(u64::from(st.corrupt)),
    );
    reg.register(
        "storage_corruption_detected",
        "Times this process found damaged Raft storage (checksum, integrity check, storage panic)",
        ConstCounter::new(crate::raft::alarms::CORRUPTION_DETECTED.load(Ordering::Relaxed)),
    );
    reg.register("revision", "Global revision of the object store", gauge(info.revision));
    reg.register("objects", "Objects known", gauge(info.objects));
    reg.register("agents_alive", "Agents whose heartbeats are current", gauge(info.agents_alive));
    reg.register(
        "uptime_seconds",
        "Seconds since this process started",
        gauge(svc.started.elapsed().as_secs()),
    );
    let s = &svc.stats;
    let counter = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
    reg.register("entries_applied", "Raft entries applied by this node", counter(&s.entries));
    reg.register("findings_applied", "Findings applied by this node", counter(&s.findings));
    reg.register("duplicate_batches", "Resent agent batches recognised and skipped", counter(&s.duplicates));
    reg.register("rejected", "Inputs refused by the state machines", counter(&s.rejected));
    reg.register("undecodable_entries", "Committed entries skipped as undecodable", counter(&s.undecodable));
    reg.register(
        "incompatible_entries",
        "Committed entries this binary is too old to apply (each stops the node: upgrade it)",
        counter(&s.incompatible),
    );
    reg.register(
        "min_command_version",
        "The cluster-wide min_command_version as applied on this node",
        gauge(u64::from(s.min_command_version())),
    );
    reg.register("leader_changes", "Leader changes this node observed", counter(&svc.leader_changes));
    reg.register(
        "heartbeat_checks",
        "Heartbeats that read their agent's replicated record (first beats to a new leader, moved or silent agents)",
        ConstCounter::new(svc.heartbeat_checks()),
    );
    // Every member keeps these warm (followers included), so a new leader has them at once; 0: not built.
    reg.register(
        "order_index_revision",
        "Revision this node's heartbeat order index reached (0: not built yet)",
        gauge(svc.order_index().revision().unwrap_or(0)),
    );
    reg.register(
        "deadline_index_revision",
        "Revision this node's deadline index reached (0: not built yet)",
        gauge(svc.deadline_index().revision().unwrap_or(0)),
    );
    reg.register(
        "order_index_unbuilt_answers",
        "Heartbeats answered without orders while this node's order index was being built (orders come a beat later)",
        ConstCounter::new(svc.order_index().unbuilt_answers()),
    );
    reg.register(
        "deadline_index_unbuilt_answers",
        "Ticks that stepped nothing while this node's deadline index was being built",
        ConstCounter::new(svc.deadline_index().unbuilt_answers()),
    );
    reg.register(
        "state_listing_pages_indexed",
        "Pages of listings by state (other than GOOD) served from this node's index of the objects out of GOOD",
        ConstCounter::new(svc.state_pages_indexed.load(Ordering::Relaxed)),
    );
    reg.register(
        "state_listing_pages_scanned",
        "Pages of listings by state that scanned the objects (the index not built yet, or too far behind)",
        ConstCounter::new(svc.state_pages_scanned.load(Ordering::Relaxed)),
    );
    reg.register(
        "heartbeat_assignment_reads",
        "Heartbeats that read the store for their host's checker assignment (not cached, or the catalog moved)",
        ConstCounter::new(svc.assignment_store_reads()),
    );
    reg.register(
        "order_index_behind_answers",
        "Heartbeats answered from an order index still catching up (more than one step behind; orders come a beat later)",
        ConstCounter::new(svc.order_index().behind_answers()),
    );
    reg.register(
        "deadline_index_behind_answers",
        "Ticks answered from a deadline index still catching up (a deadline is stepped a tick later)",
        ConstCounter::new(svc.deadline_index().behind_answers()),
    );
    reg.register("held_transitions", "Transitions held by the safety net", counter(&s.held));
    let by_kind: Family<[(&'static str, String); 2], Counter> = Family::default();
    for ((kind, to), n) in s.transitions.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let c = by_kind.get_or_create(&[("kind", kind.to_string()), ("to", to.to_string())]);
        c.inc_by(*n);
    }
    reg.register("transitions", "Transitions applied by this node, by kind and target state", by_kind);
    let (watchers, lag) = svc.watcher_lag();
    reg.register("watchers", "Open watch streams on this node", gauge(watchers));
    reg.register(
        "watchers_max",
        "Most watch streams this node serves at once (max_watches)",
        gauge(svc.max_watches() as u64),
    );
    reg.register(
        "watches_refused",
        "Watch streams refused because this node served its limit (RESOURCE_EXHAUSTED / HTTP 429)",
        ConstCounter::new(svc.watches_refused()),
    );
    for (what, streams, max) in [
        ("heartbeat", svc.heartbeat_streams(), svc.max_heartbeat_streams()),
        ("ingest", svc.ingest_streams(), svc.max_ingest_streams()),
    ] {
        let cap = format!("{}{}", what[..1].to_uppercase(), &what[1..]);
        reg.register(
            format!("{what}_streams"),
            format!("Open {what} streams on this node"),
            gauge(streams.open as u64),
        );
        reg.register(
            format!("{what}_streams_max"),
            format!("Most {what} streams this node serves at once (max_{what}_streams)"),
            gauge(max as u64),
        );
        reg.register(
            format!("{what}_streams_opened"),
            format!("{cap} streams opened on this node"),
            ConstCounter::new(streams.opened),
        );
        reg.register(
            format!("{what}_streams_refused"),
            format!("{cap} streams refused because this node served its limit (RESOURCE_EXHAUSTED)"),
            ConstCounter::new(streams.refused),
        );
    }
    let datagrams: Family<[(&'static str, &'static str); 1], Counter> = Family::default();
    for (result, n) in svc.datagrams.results() {
        datagrams.get_or_create(&[("result", result)]).inc_by(n);
    }
    reg.register(
        "heartbeat_datagrams",
        "Heartbeat datagrams this node received, by what became of them (answered; refused: an error \
         answered; call_first: of those, beats that would change the replicated state; too_big: the answer \
         did not fit; malformed, unknown_key, bad_seal, stale, replayed: \
         dropped unanswered)",
        datagrams,
    );
    reg.register(
        "heartbeat_datagrams_waiting",
        format!(
            "Heartbeat datagrams whose beat waits as a task now (at most {}; one more is answered UNAVAILABLE)",
            crate::datagrams::MAX_WAITING_BEATS
        ),
        gauge(svc.datagrams.waiting.now() as u64),
    );
    if let Some(n) = crate::accept::open_files() {
        reg.register(
            "open_fds",
            "File descriptors this process holds (every agent connection is one)",
            gauge(n),
        );
    }
    if let Some(n) = crate::accept::open_files_limit() {
        reg.register("max_fds", "This process's open-files limit (soft RLIMIT_NOFILE)", gauge(n));
    }
    let accept_errors: Family<[(&'static str, &'static str); 1], Counter> = Family::default();
    for port in crate::accept::Port::ALL {
        accept_errors.get_or_create(&[("port", port.name())]).inc_by(crate::accept::accept_errors(port));
    }
    reg.register(
        "accept_errors",
        format!(
            "Connections a port could not accept for lack of a resource (open files, memory); each pauses the \
             port for {} ms",
            crate::accept::ACCEPT_PAUSE.as_millis()
        ),
        accept_errors,
    );
    reg.register(
        "knows_command_version",
        "The newest command version this node's binary knows",
        gauge(u64::from(svc.knows_command_version())),
    );
    reg.register(
        "watcher_lag_max",
        "Revisions the slowest watcher on this node has not read yet",
        gauge(lag),
    );
    let stats = crate::raft::fsync_stats::SNAPSHOTS
        .series()
        .into_iter()
        .chain(crate::raft::fsync_stats::TURNS.series())
        .chain(crate::stalls::RUNTIME.series());
    for (name, help, v, is_counter) in stats {
        if is_counter {
            reg.register(name, help, ConstCounter::new(v));
        } else {
            reg.register(name, help, gauge(v));
        }
    }
    // fsync latency of the Raft loop's write transactions.
    let (buckets, count, sum) = crate::raft::fsync_stats::FSYNC.snapshot();
    let out_hist = Some((buckets, count, sum));
    // Safety net and tickets, from this node's copy of the replicated state.
    let r = crate::store::Reader::new(svc.db()).map_err(|e| ApiError::internal(e.to_string()))?;
    let pending = r.pending_count().map_err(|e| ApiError::internal(e.to_string()))?;
    reg.register("proposals_pending", "Transitions held for an operator", gauge(pending));
    let level: Family<[(&'static str, String); 2], Gauge> = Family::default();
    let latched: Family<[(&'static str, String); 1], Gauge> = Family::default();
    let quota: Family<[(&'static str, String); 3], Gauge> = Family::default();
    let window: Family<[(&'static str, String); 3], Gauge> = Family::default();
    for sc in &info.scopes {
        for l in ["auto", "manual", "blind"] {
            level
                .get_or_create(&[("scope", sc.scope.clone()), ("level", l.to_string())])
                .set(i64::from(sc.level == l));
        }
        latched.get_or_create(&[("scope", sc.scope.clone())]).set(i64::from(sc.latched));
        for q in &sc.quotas {
            let set = |what: &str, v: u64| {
                quota
                    .get_or_create(&[
                        ("scope", sc.scope.clone()),
                        ("kind", q.kind.clone()),
                        ("what", what.to_string()),
                    ])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set("concurrent", q.concurrent);
            set("max_concurrent", q.max_concurrent);
            set("entries", q.entries);
            set("max_entries", q.max_entries);
        }
        for (name, w) in [("liveness", sc.liveness), ("spike", sc.spike)] {
            let Some(w) = w else { continue };
            for (what, v) in [("held", w.held), ("latch_at", w.latch_at)] {
                window
                    .get_or_create(&[
                        ("scope", sc.scope.clone()),
                        ("window", name.to_string()),
                        ("what", what.to_string()),
                    ])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }
    reg.register("scope_level", "1 for the operating level each scope is at", level);
    reg.register("scope_latched", "1 if the scope was switched to manual drive by the master", latched);
    reg.register("quota", "Quota use and limits per scope and kind", quota);
    reg.register(
        "scope_window",
        "What each scope's liveness window (agents gone silent) and a checker version's spike window (would-be \
         removals) hold, and the count that latches the scope",
        window,
    );
    // From the replicated counters (fsm/counts.rs): no scan of the objects.
    let unfiled = r.repair_queue_len().map_err(|e| ApiError::internal(e.to_string()))?;
    let by_state: Family<[(&'static str, String); 2], Gauge> = Family::default();
    for (key, n) in r.counts(crate::fsm::counts::FLEET).map_err(|e| ApiError::internal(e.to_string()))? {
        if let Some((None, kind, state)) = crate::fsm::counts::parse_key(&key) {
            by_state
                .get_or_create(&[("kind", kind.to_string()), ("state", state.to_string())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    reg.register("objects_by_state", "Objects per kind and state (the whole fleet)", by_state);
    reg.register(
        "tickets_unfiled",
        "Objects whose repair ticket is not filed yet (REPAIR, or a network device's incident)",
        gauge(unfiled),
    );
    let alerts = r.audit(true, 1).map_err(|e| ApiError::internal(e.to_string()))?;
    reg.register(
        "last_alert_id",
        "Id of the newest alert (increases with every alert)",
        gauge(alerts.first().map_or(0, |a| a.id)),
    );
    // Network localisation (issue 16): this node's figures while it leads (the window is the leader's memory).
    let n = &svc.net().stats;
    let c = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
    let g = |a: &std::sync::atomic::AtomicU64| gauge(a.load(Ordering::Relaxed));
    reg.register("net_reports_received", "Network reports counted into a window", c(&n.reports_received));
    reg.register(
        "net_reports_duplicate",
        "Network reports already counted (retried heartbeats)",
        c(&n.reports_duplicate),
    );
    reg.register("net_reports_refused", "Network reports refused by a full window", c(&n.reports_refused));
    reg.register("net_votes", "Votes in the counted network reports", c(&n.votes));
    reg.register("net_windows", "Network windows judged", c(&n.windows));
    reg.register(
        "net_windows_failed",
        "Network windows dropped unjudged (localisation failed or too slow)",
        c(&n.windows_failed),
    );
    reg.register("net_findings_proposed", "Findings proposed from network verdicts", c(&n.findings_proposed));
    reg.register(
        "net_peers_handed_out",
        "Probe peers handed out in heartbeat replies",
        c(&n.peers_handed_out),
    );
    reg.register("net_window_flows", "Flows (src, dst results) in the last judged window", g(&n.last_flows));
    reg.register("net_window_bad_flows", "Bad flows in the last judged window", g(&n.last_bad_flows));
    reg.register(
        "net_window_traced_flows",
        "Flows the last judged window placed on their traced route (path evidence)",
        g(&n.last_traced_flows),
    );
    reg.register(
        "net_paths_mapped",
        "Traced flows whose hops the topology's switch addresses named",
        c(&n.paths_mapped),
    );
    reg.register("net_suspects", "Suspects of the last judged window", g(&n.last_suspects));
    reg.register(
        "net_window_cpu_ms",
        "CPU (wall) milliseconds the last window's localisation took",
        g(&n.last_cpu_ms),
    );
    reg.register(
        "net_topology_loads",
        "Replicated topologies this node loaded, verified and parsed (once per change of its sha256)",
        c(&n.topology_loads),
    );
    reg.register(
        "net_topology_load_failures",
        "Replicated topologies not used: missing chunks, bytes not matching the sha256, or not parsing",
        c(&n.topology_load_failures),
    );
    reg.register(
        "net_probe_peers",
        "Agents in the leader's probe peer book",
        gauge(svc.net().peer_count() as u64),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some((buckets, count, sum)) = out_hist {
        // Written by hand: the histogram lives in atomics in the raft loop, not in a prometheus-client type.
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        let mut h = String::from(
            "# HELP huatuo_master_fsync_seconds Duration of the Raft loop's durable write (one fsync per batch).\n\
             # TYPE huatuo_master_fsync_seconds histogram\n",
        );
        for (le, c) in buckets {
            h.push_str(&format!("huatuo_master_fsync_seconds_bucket{{le=\"{le}\"}} {c}\n"));
        }
        h.push_str(&format!("huatuo_master_fsync_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
        h.push_str(&format!(
            "huatuo_master_fsync_seconds_sum {sum}\nhuatuo_master_fsync_seconds_count {count}\n"
        ));
        out.insert_str(eof, &h);
    }
    Ok(out)
}
