//! Cluster info (`huatuo status`, `GET /api/v1/cluster`, the gRPC `ClusterInfo` call): this node's Raft
//! view, the members' addresses, command versions and NOSPACE alarms, agent and object counts, and every
//! safety scope.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proto::error::ApiError;

pub use proto::view::{ClusterInfo, MemberInfo};

use super::safety::scope_views;
use super::{Service, lock, now_ms, store_err};
use crate::raft::TransportError;
use crate::store::Reader;

/// How long cluster info waits for the members to say which command versions they know (all asked at once
/// over the peer port): a member that does not answer in time shows 0, and status still answers promptly.
pub const MEMBER_VERSION_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long cluster info reuses the members' answers: the portal polls cluster info every few seconds, and
/// a binary changes only on a restart. Raising `min_command_version` always asks afresh.
pub const MEMBER_VERSION_TTL: Duration = Duration::from_secs(5);

/// What a member answered over the peer port (a member that did not answer: all zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberAnswer {
    pub knows_command_version: u32,
    /// Its NOSPACE alarm as (free bytes, floor) while raised.
    pub nospace: Option<(u64, u64)>,
}

impl MemberAnswer {
    fn of(reply: &proto::peer::ProbeReply) -> MemberAnswer {
        MemberAnswer {
            knows_command_version: reply.app_version,
            nospace: reply.nospace.then_some((reply.free_bytes, reply.min_free_bytes)),
        }
    }
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

    /// Ask every other member which command versions it knows (0: no answer, or a binary too old to say),
    /// and remember the answers for [`MEMBER_VERSION_TTL`].
    pub(super) async fn ask_member_versions(&self) -> BTreeMap<u64, Result<u32, TransportError>> {
        let answers = self.raft.peer_probes(MEMBER_VERSION_TIMEOUT).await;
        let known = answers
            .iter()
            .map(|(id, r)| (*id, r.as_ref().map(MemberAnswer::of).unwrap_or_default()))
            .collect();
        *lock(&self.member_versions) = Some((Instant::now(), known));
        answers.into_iter().map(|(id, r)| (id, r.map(|p| p.app_version))).collect()
    }

    /// The members' answers, asked afresh when older than [`MEMBER_VERSION_TTL`].
    async fn member_answers(&self) -> BTreeMap<u64, MemberAnswer> {
        let cached = lock(&self.member_versions)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < MEMBER_VERSION_TTL)
            .map(|(_, v)| v.clone());
        match cached {
            Some(v) => v,
            None => {
                self.ask_member_versions().await;
                lock(&self.member_versions).as_ref().map(|(_, v)| v.clone()).unwrap_or_default()
            }
        }
    }

    /// [`Service::cluster_info`] with every member's `knows_command_version` and NOSPACE alarm (asked over
    /// the peer port at most every [`MEMBER_VERSION_TTL`]).
    pub async fn cluster_status(&self) -> Result<ClusterInfo, ApiError> {
        let answers = self.member_answers().await;
        let mut info = self.cluster_info()?;
        for m in &mut info.members {
            if let Some(a) = answers.get(&m.id) {
                merge(m, *a);
            }
        }
        Ok(info)
    }

    /// The members' NOSPACE alarms for `/metrics`: this node's own, and the others' as last asked (at most
    /// [`MEMBER_VERSION_TTL`] old, asked afresh otherwise), by member id.
    pub async fn member_nospace(&self) -> BTreeMap<u64, bool> {
        let mut out: BTreeMap<u64, bool> =
            self.member_answers().await.into_iter().map(|(id, a)| (id, a.nospace.is_some())).collect();
        out.insert(self.raft.id(), self.raft.nospace().is_some());
        out
    }

    /// This node's view of the cluster (never a read-index: it must answer on a node without a leader).
    pub fn cluster_info(&self) -> Result<ClusterInfo, ApiError> {
        let st = self.raft.status();
        let r = Reader::new(&self.db).map_err(store_err)?;
        let members = r.members().map_err(store_err)?;
        let addr = |id: u64| members.iter().find(|(m, _)| *m == id).map(|(_, r)| r.clone());
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
                    // Others' versions and alarms are asked over the network: `cluster_status`.
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
        })
    }
}
