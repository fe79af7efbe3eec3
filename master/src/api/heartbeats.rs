//! Agent heartbeats: the leader keeps what each agent last said in memory ([`Memory`]); only a change of
//! liveness goes through Raft (ENGINEERING.md section 3: heartbeats from 100k agents must not).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::error::ApiError;
pub use proto::view::{AgentListing, HeartbeatInfo};

use super::validate::{self, MAX_HEARTBEAT_CHECKERS, MAX_VERSION_LEN};
use super::{Service, lock, store_err};
use crate::model::{AgentRecord, Command, MAX_TEXT_LEN};
use crate::store::Reader;

/// Most agents tracked in the leader's heartbeat memory (a datacenter has ~10-100k hosts).
pub const MAX_TRACKED_AGENTS: usize = 200_000;

/// One agent as the leader's heartbeat memory sees it (`GET /api/v1/agents`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentView {
    pub agent: String,
    pub host: String,
    pub alive: bool,
    pub last_heartbeat_ms_ago: u64,
    /// Times this agent's start time changed while this leader watched it.
    pub restarts: u64,
    #[serde(flatten)]
    pub info: HeartbeatInfo,
}

struct Seen {
    host: String,
    info: HeartbeatInfo,
    restarts: u64,
    last: Instant,
    /// Whether the replicated state says alive (as far as this leader knows).
    alive: bool,
}

/// The leader's heartbeat memory: agent id -> what it said last and when.
#[derive(Default)]
pub(super) struct Memory {
    agents: Mutex<BTreeMap<String, Seen>>,
}

impl Memory {
    /// Record a heartbeat; returns whether liveness must be replicated (not known alive, or moved host).
    fn record(&self, agent: &str, host: &str, info: HeartbeatInfo) -> Result<bool, ApiError> {
        let mut hb = lock(&self.agents);
        if !hb.contains_key(agent) && hb.len() >= MAX_TRACKED_AGENTS {
            return Err(ApiError::unavailable("too many agents tracked by this leader"));
        }
        let seen = hb.entry(agent.to_string()).or_insert_with(|| Seen {
            host: host.to_string(),
            info: info.clone(),
            restarts: 0,
            last: Instant::now(),
            alive: false,
        });
        seen.last = Instant::now();
        if seen.info.started_ms != info.started_ms {
            seen.restarts += 1;
        }
        seen.info = info;
        let moved = seen.host != host;
        seen.host = host.to_string();
        Ok(!seen.alive || moved)
    }

    pub(super) fn set_alive(&self, agent: &str, alive: bool) {
        if let Some(s) = lock(&self.agents).get_mut(agent) {
            s.alive = alive;
        }
    }

    /// Forget everything (this node is not the leader).
    pub(super) fn clear(&self) {
        lock(&self.agents).clear();
    }

    /// Agents the replicated state says are alive but this leader has not heard from for `after`.
    pub(super) fn silent(&self, known: Vec<(String, AgentRecord)>, after: Duration) -> Vec<(String, String)> {
        let hb = lock(&self.agents);
        known
            .into_iter()
            .filter(|(id, a)| a.alive && hb.get(id).is_none_or(|seen| seen.last.elapsed() >= after))
            .map(|(id, a)| (id, a.host))
            .collect()
    }

    pub(super) fn views(&self) -> Vec<AgentView> {
        lock(&self.agents)
            .iter()
            .map(|(agent, s)| AgentView {
                agent: agent.clone(),
                host: s.host.clone(),
                alive: s.alive,
                last_heartbeat_ms_ago: u64::try_from(s.last.elapsed().as_millis()).unwrap_or(u64::MAX),
                restarts: s.restarts,
                info: s.info.clone(),
            })
            .collect()
    }
}

/// A heartbeat's fields, checked before the memory is touched.
fn check_heartbeat(agent: &str, host: &str, info: &HeartbeatInfo) -> Result<(), ApiError> {
    if agent.is_empty() {
        return Err(ApiError::invalid("heartbeat without an agent id"));
    }
    validate::name("agent", agent, MAX_TEXT_LEN)?;
    if info.checkers.len() > MAX_HEARTBEAT_CHECKERS {
        return Err(ApiError::invalid(format!(
            "heartbeat lists more than {MAX_HEARTBEAT_CHECKERS} checkers"
        )));
    }
    if info.version.len() > MAX_VERSION_LEN
        || info.checkers.iter().any(|(k, v)| k.len() > MAX_VERSION_LEN || v.len() > MAX_VERSION_LEN)
    {
        return Err(ApiError::invalid(format!(
            "heartbeat names and versions are limited to {MAX_VERSION_LEN} bytes"
        )));
    }
    validate::name("version", &info.version, MAX_VERSION_LEN)?;
    if info.runs.len() > MAX_HEARTBEAT_CHECKERS {
        return Err(ApiError::invalid(format!(
            "heartbeat lists more than {MAX_HEARTBEAT_CHECKERS} checker runs"
        )));
    }
    for r in &info.runs {
        validate::name("checker run name", &r.name, MAX_VERSION_LEN)?;
        validate::name("checker run version", &r.version, MAX_VERSION_LEN)?;
        validate::name("checker run sha256", &r.sha256, MAX_VERSION_LEN)?;
        validate::name("checker run status", &r.status, MAX_VERSION_LEN)?;
        validate::text("checker run error", &r.last_error, super::catalog::MAX_RUN_ERROR_LEN)?;
    }
    validate::name("assignment hash", &info.assignment_hash, MAX_VERSION_LEN)?;
    for (k, v) in &info.checkers {
        validate::name("checker", k, MAX_VERSION_LEN)?;
        validate::name("checker version", v, MAX_VERSION_LEN)?;
    }
    validate::host(host)
}

impl Service {
    /// Record a heartbeat in the leader's memory; only a change of liveness is replicated.
    pub async fn heartbeat(&self, agent: String, host: String, info: HeartbeatInfo) -> Result<u64, ApiError> {
        self.leader_gate()?;
        check_heartbeat(&agent, &host, &info)?;
        if self.heartbeats.record(&agent, &host, info)? {
            let replicated_alive = Reader::new(&self.db)
                .and_then(|r| r.agents())
                .map(|a| a.iter().any(|(id, r)| *id == agent && r.alive && r.host == host))
                .map_err(store_err)?;
            if !replicated_alive {
                self.submit(Command::AgentLiveness { agent: agent.clone(), host, alive: true }).await?;
            }
            self.heartbeats.set_alive(&agent, true);
        }
        Ok(self.current_revision())
    }

    /// The leader's heartbeat memory: every agent it has heard from, with what it said last.
    pub fn agents(&self) -> Result<Vec<AgentView>, ApiError> {
        self.leader_gate()?;
        Ok(self.heartbeats.views())
    }

    /// One page of the agents in the replicated state (in id order, `limit` at most: 0 is the default
    /// page, capped at the maximum page), with the leader's heartbeat memory where it has any, continuing
    /// the listing of `page_token` (empty: a first page). A bad token is INVALID_ARGUMENT.
    pub async fn agent_list(&self, limit: usize, page_token: &str) -> Result<super::AgentPage, ApiError> {
        use super::pages::{self, Listing, PageToken};
        let digest = pages::agents_digest();
        let token = pages::request_token(page_token, Listing::Agents, digest)?;
        let views = self.agents()?;
        let r = self.read_view(false).await?;
        let revision = match &token {
            Some(t) => t.revision,
            None => r.revision().map_err(store_err)?,
        };
        let (page, next) = r
            .agents_page(token.as_ref().map(|t| t.after.as_str()), pages::page_size(limit))
            .map_err(store_err)?;
        let wanted: std::collections::BTreeSet<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
        let heard: BTreeMap<String, AgentView> = views
            .into_iter()
            .filter(|a| wanted.contains(a.agent.as_str()))
            .map(|a| (a.agent.clone(), a))
            .collect();
        let agents = page
            .into_iter()
            .map(|(id, rec)| {
                let h = heard.get(&id);
                AgentListing {
                    agent: id.clone(),
                    host: rec.host,
                    alive: rec.alive,
                    since_ms: rec.since_ms,
                    heard: h.is_some(),
                    last_heartbeat_ms_ago: h.map_or(0, |h| h.last_heartbeat_ms_ago),
                    restarts: h.map_or(0, |h| h.restarts),
                    info: h.map(|h| h.info.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let next_page_token = next
            .map(|after| PageToken { listing: Listing::Agents, revision, digest, after }.encode())
            .unwrap_or_default();
        Ok(super::AgentPage { agents, next_page_token })
    }

    /// The actions waiting to run on `host` (handed out with heartbeats; this node's copy, which on the
    /// leader includes everything it acknowledged).
    pub fn actions_for(&self, host: &str) -> Result<Vec<crate::actions::ActionOrder>, ApiError> {
        let r = Reader::new(&self.db).map_err(store_err)?;
        crate::actions::orders_for(&r, host).map_err(store_err)
    }
}
