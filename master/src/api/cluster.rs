//! Cluster info (`huatuo status`, `GET /api/v1/cluster`, the gRPC `ClusterInfo` call): this node's Raft
//! view, the members' addresses, command versions and NOSPACE alarms, agent and object counts, and every
//! safety scope.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::error::ApiError;

pub use proto::view::{ClusterInfo, MemberInfo};

use super::safety::scope_views;
use super::{Service, now_ms, store_err};
use crate::raft::TransportError;
use crate::store::Reader;

/// How long raising `min_command_version` waits for the members to say which command versions they know
/// (all asked at once over the peer port): a member that does not answer in time refuses the raise.
pub const MEMBER_VERSION_TIMEOUT: Duration = Duration::from_millis(1500);

/// What a member answered over the peer port (a member not heard lately: all zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberAnswer {
    pub knows_command_version: u32,
    /// Its NOSPACE alarm as (free bytes, floor) while raised.
    pub nospace: Option<(u64, u64)>,
}

/// Fill a member's answer into its view.
fn merge(m: &mut MemberInfo, a: MemberAnswer) {
    m.knows_command_version = a.knows_command_version;
    m.nospace = a.nospace.is_some();
    (m.free_bytes, m.min_free_bytes) = a.nospace.unwrap_or((0, 0));
}

impl Service {
    /// The newest command version this node's binary knows.
    pub fn knows_command_version(&self) -> u32 {
        self.cfg.knows_command_version
    }

    /// Ask every other member afresh which command versions it knows (0: a binary too old to say), for a
    /// decision that must not rest on an answer seconds old (raising `min_command_version`).
    pub(super) async fn ask_member_versions(&self) -> BTreeMap<u64, Result<u32, TransportError>> {
        let answers = self.raft.peer_probes(MEMBER_VERSION_TIMEOUT).await;
        answers.into_iter().map(|(id, r)| (id, r.map(|p| p.app_version))).collect()
    }

    /// The members' answers as this node's Raft layer last heard them (it asks every second, and an answer
    /// counts for 5 s: `raft::alarms::PEER_ALARM_TTL`). Nothing is asked on the caller's time: a status or
    /// metrics call never waits on the network, so a client's short deadline cannot starve the answers
    /// (it did: a 500 ms caller cancelled every 1.5 s ask, and status never showed a leader).
    fn member_answers(&self) -> BTreeMap<u64, MemberAnswer> {
        self.raft
            .peer_answers()
            .into_iter()
            .map(|(id, p)| (id, MemberAnswer { knows_command_version: p.app_version, nospace: p.alarm }))
            .collect()
    }

    /// [`Service::cluster_info`] with every member's `knows_command_version` and NOSPACE alarm as last heard
    /// over the peer port ([`Service::member_answers`]).
    pub fn cluster_status(&self) -> Result<ClusterInfo, ApiError> {
        let answers = self.member_answers();
        let mut info = self.cluster_info()?;
        for m in &mut info.members {
            if let Some(a) = answers.get(&m.id) {
                merge(m, *a);
            }
        }
        Ok(info)
    }

    /// The members' NOSPACE alarms for `/metrics`: this node's own, and the others' as last heard (see
    /// [`Service::member_answers`]), by member id.
    pub fn member_nospace(&self) -> BTreeMap<u64, bool> {
        let mut out: BTreeMap<u64, bool> =
            self.member_answers().into_iter().map(|(id, a)| (id, a.nospace.is_some())).collect();
        out.insert(self.raft.id(), self.raft.nospace().is_some());
        out
    }

    /// This node's view of the cluster (never a read-index: it must answer on a node without a leader).
    pub fn cluster_info(&self) -> Result<ClusterInfo, ApiError> {
        let st = self.raft.status();
        let r = Reader::new(&self.db).map_err(store_err)?;
        let stored = r.members().map_err(store_err)?;
        let members = self.member_addrs(&stored);
        let addr = |id: u64| members.get(&id).cloned();
        let (_, scopes) = scope_views(&r, now_ms()).map_err(store_err)?;
        let level = scopes
            .iter()
            .find(|s| s.scope == crate::safety::CLUSTER)
            .map_or(crate::safety::Level::Auto.as_str().to_string(), |s| s.level.clone());
        // Agents known and alive from the cluster scope's counters (kept in the replicated state), not a
        // read of every agent record.
        let cluster = r.scope(crate::safety::CLUSTER).map_err(store_err)?.unwrap_or_default();
        Ok(ClusterInfo {
            id: st.id,
            leader_id: st.leader_id.unwrap_or(0),
            term: st.term,
            role: format!("{:?}", st.role).to_lowercase(),
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            revision: r.revision().map_err(store_err)?,
            level,
            leader_grpc: st.leader_id.and_then(addr).map(|m| m.grpc).unwrap_or_default(),
            members: st
                .peers
                .iter()
                .map(|(id, peer)| {
                    let m = addr(*id);
                    let announced =
                        m.as_ref().is_some_and(|shown| stored.iter().any(|(s, r)| s == id && r == shown));
                    // Others' versions and alarms as last heard over the peer port: `cluster_status`.
                    let me = *id == st.id;
                    let alarm = if me { self.raft.nospace() } else { None };
                    MemberInfo {
                        id: *id,
                        peer_addr: peer.clone(),
                        grpc_addr: m.as_ref().map(|m| m.grpc.clone()).unwrap_or_default(),
                        http_addr: m.map(|m| m.http).unwrap_or_default(),
                        knows_command_version: if me { self.cfg.knows_command_version } else { 0 },
                        nospace: alarm.is_some(),
                        free_bytes: alarm.map_or(0, |a| a.0),
                        min_free_bytes: alarm.map_or(0, |a| a.1),
                        announced,
                    }
                })
                .collect(),
            agents_alive: cluster.agents_alive,
            agents: cluster.agents,
            objects: r.object_count().map_err(store_err)?,
            last_error: st.last_error.unwrap_or_default(),
            pending_proposals: r.pending_count().map_err(store_err)?,
            scopes,
            min_command_version: self.stats.min_command_version(),
            knows_command_version: self.cfg.knows_command_version,
            open_fds: crate::accept::open_files().unwrap_or(0),
            max_fds: crate::accept::open_files_limit().unwrap_or(0),
        })
    }
}
