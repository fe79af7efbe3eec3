//! The leader's periodic duties: announce where its APIs listen, mark agents silent whose heartbeats
//! stopped, step objects whose deadlines passed, seed the checker catalog and close canary windows. Followers
//! keep their heartbeat memory empty and count leader changes; every member keeps the followed indexes
//! (orders, deadlines) warm.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proto::error::ApiError;
use state_machines::ObjectId;

use super::{Service, now_ms, store_err};
use crate::model::{Command, MAX_TICK_OBJECTS, MemberRecord};
use crate::raft::Role;
use crate::store::Reader;

/// How often the duty loop runs (announce, liveness, ticks).
pub const DUTY_INTERVAL: Duration = Duration::from_millis(200);
/// How often the leader looks for agents gone silent: a pass over its heartbeat memory (100,000 entries at
/// fleet scale; every `DUTY_INTERVAL` it was 1.3% of a profiled machine), against silence periods of tens of
/// seconds.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the leader steps objects whose deadlines passed.
pub const TICK_EVERY: Duration = Duration::from_secs(5);
/// How often a leader whose binary knows newer command versions than the cluster enabled asks the members
/// whether they all know them too (each ask waits at most `MEMBER_VERSION_TIMEOUT` per member).
pub const AUTO_UPGRADE_EVERY: Duration = Duration::from_secs(10);

/// How often a leader of a cluster at command version 12 without a heartbeat secret tries to set one.
pub const BEAT_SECRET_RETRY: Duration = Duration::from_secs(5);

/// The duty loop: ends when told to stop, when the raft node stops, or when the service is gone.
pub(super) async fn run(svc: Weak<Service>, stop: impl std::future::Future<Output = ()> + Send) {
    tokio::pin!(stop);
    let mut interval = tokio::time::interval(DUTY_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since: Option<Instant> = None;
    let mut last_tick = Instant::now();
    let mut last_sweep = Instant::now();
    let mut last_upgrade_check: Option<Instant> = None;
    let mut last_secret_try: Option<Instant> = None;
    let mut last_leader: Option<u64> = None;
    let mut warming: Option<std::thread::JoinHandle<()>> = None;
    let mut last_warm: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = interval.tick() => {}
        }
        let Some(s) = svc.upgrade() else { return };
        let st = s.raft.status();
        // Every member, followers included, keeps the followed indexes warm (one warm at a time, off the
        // async workers), so a new leader answers heartbeats and ticks from them at once.
        if st.role != Role::Stopped
            && warming.as_ref().is_none_or(|w| w.is_finished())
            && last_warm.is_none_or(|t| t.elapsed() >= crate::follow::WARM_EVERY)
        {
            last_warm = Some(Instant::now());
            let (orders, deadlines, db) = (s.orders.clone(), s.deadlines.clone(), s.db.clone());
            // Background work at a lower CPU priority (see `follow::spawn_background`).
            let started = crate::follow::spawn_background("index-warm", move || {
                if let Err(e) = crate::follow::warm_pair(&orders, &deadlines, &db) {
                    tracing::debug!(error = %e, "warming the indexes failed; again next time");
                }
            });
            match started {
                Ok(t) => warming = Some(t),
                Err(e) => tracing::warn!(error = %e, "could not start a thread to warm the indexes"),
            }
        }
        // A member whose indexes are not built (a start, a snapshot restored) would answer heartbeats
        // without orders and build them while leading: it lets a ready member win an election first.
        s.raft.set_ready_to_lead(s.orders.revision().is_some() && s.deadlines.revision().is_some());
        if st.leader_id.is_some() && st.leader_id != last_leader {
            if last_leader.is_some() {
                s.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            last_leader = st.leader_id;
        }
        if st.role == Role::Stopped {
            return;
        }
        if st.role != Role::Leader {
            leader_since = None;
            last_upgrade_check = None;
            s.heartbeats.clear();
            continue;
        }
        if s.cfg.auto_upgrade
            && s.stats.min_command_version() < s.cfg.knows_command_version
            && last_upgrade_check.is_none_or(|t| t.elapsed() >= AUTO_UPGRADE_EVERY)
        {
            last_upgrade_check = Some(Instant::now());
            let knows = s.cfg.knows_command_version;
            let reason = format!("every member knows command versions up to {knows} (auto_upgrade)");
            let up = s.set_min_command_version(knows, "leader", &reason);
            tokio::select! {
                _ = &mut stop => return,
                r = up => match r {
                    Ok(_) => tracing::info!(version = knows, "min_command_version raised: every member knows it"),
                    // A member on an older binary (or not answering): asked again later.
                    Err(e) => tracing::debug!(error = %e, "min_command_version stays; asked again later"),
                },
            }
        }
        if s.stats.min_command_version() >= crate::model::BEAT_SECRET_VERSION
            && s.beat_secret().is_none()
            && last_secret_try.is_none_or(|t| t.elapsed() >= BEAT_SECRET_RETRY)
        {
            last_secret_try = Some(Instant::now());
            tokio::select! {
                _ = &mut stop => return,
                r = s.set_beat_secret() => match r {
                    Ok(()) => tracing::info!("heartbeat secret set: agents seal their datagrams with their own keys"),
                    Err(e) => tracing::warn!(error = %e, "setting the heartbeat secret failed; again later"),
                },
            }
        }
        if s.heartbeats.learned_term() != st.term {
            // A new term: learn which agents the replicated state records alive (once per term), so their
            // first beats to this leader propose nothing and the silent sweep reads only memory.
            tokio::select! {
                _ = &mut stop => return,
                r = s.learn_agents(st.term) => match r {
                    // `agents`: added by the pass; those that beat this leader before it ended were already
                    // in the memory (`tracked` counts both).
                    Ok(l) => tracing::info!(
                        agents = l.added,
                        tracked = s.heartbeat_memory_len(),
                        term = st.term,
                        barrier_ms = l.barrier_ms,
                        scan_ms = l.scan_ms,
                        insert_ms = l.insert_ms,
                        checked_beats = l.checks,
                        "leader learned the agents recorded alive"
                    ),
                    Err(e) => {
                        tracing::debug!(error = %e, "learning the alive agents failed; retrying next round");
                        continue;
                    }
                },
            }
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let work = leader_duties(&s, since, &mut last_tick, &mut last_sweep);
        tokio::select! {
            _ = &mut stop => return,
            r = work => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "leader duty failed; retrying next round");
                }
            }
        }
    }
}

async fn leader_duties(
    s: &Service,
    leader_since: Instant,
    last_tick: &mut Instant,
    last_sweep: &mut Instant,
) -> Result<(), ApiError> {
    let reader = Reader::new(&s.db).map_err(store_err)?;
    // 1. Announce where this leader's APIs listen, so followers can redirect clients here.
    let me = MemberRecord { grpc: s.cfg.grpc_addr.clone(), http: s.cfg.http_addr.clone() };
    let id = s.raft.id();
    if !reader.members().map_err(store_err)?.iter().any(|(m, r)| *m == id && *r == me) {
        s.submit(Command::Announce { id, grpc: me.grpc, http: me.http }).await?;
    }
    // 2. Agents that went silent, from memory only (the agents recorded alive were learned at the start of
    // the term). A new leader first waits a full period (its agents have had no chance to beat yet).
    if leader_since.elapsed() >= s.cfg.agent_silent_after
        && s.heartbeats.learned_term() != 0
        && last_sweep.elapsed() >= SWEEP_EVERY
    {
        *last_sweep = Instant::now();
        // A full round leaves more to mark: the next round comes at the next duty interval.
        if s.sweep_silent().await? >= super::heartbeats::MAX_SILENT_PER_ROUND {
            *last_sweep = last_sweep.checked_sub(SWEEP_EVERY).unwrap_or(*last_sweep);
        }
    }
    // 3. Step objects whose deadlines passed.
    if last_tick.elapsed() >= TICK_EVERY {
        *last_tick = Instant::now();
        let now = now_ms();
        // From the deadline index (followed from the change log), not a scan of every object.
        let due: Vec<ObjectId> =
            crate::deadlines::due(&s.deadlines, &s.db, s.current_revision(), now, MAX_TICK_OBJECTS)
                .await
                .map_err(store_err)?;
        if !due.is_empty() {
            s.submit(Command::Tick { objects: due }).await?;
        }
    }
    // 4. The checker catalog: seed a new cluster, close due canary windows (bounded per pass).
    s.catalog_duties(&reader).await?;
    Ok(())
}
