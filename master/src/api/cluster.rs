//! Cluster info (`huatuo status`, `GET /api/v1/cluster`, the gRPC `ClusterInfo` call): this node's Raft
//! view, the members' addresses, agent and object counts, and every safety scope.

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

impl Service {
    /// The newest command version this node's binary knows.
    pub fn knows_command_version(&self) -> u32 {
        self.cfg.knows_command_version
    }

    /// Ask every other member which command versions it knows (0: no answer, or a binary too old to say),
    /// and remember the answers for [`MEMBER_VERSION_TTL`].
    pub(super) async fn ask_member_versions(&self) -> BTreeMap<u64, Result<u32, TransportError>> {
        let answers = self.raft.peer_app_versions(MEMBER_VERSION_TIMEOUT).await;
        let known = answers.iter().map(|(id, r)| (*id, r.as_ref().map_or(0, |v| *v))).collect();
        *lock(&self.member_versions) = Some((Instant::now(), known));
        answers
    }

    /// [`Service::cluster_info`] with every member's `knows_command_version` (asked over the peer port at
    /// most every [`MEMBER_VERSION_TTL`]).
    pub async fn cluster_status(&self) -> Result<ClusterInfo, ApiError> {
        let cached = lock(&self.member_versions)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < MEMBER_VERSION_TTL)
            .map(|(_, v)| v.clone());
        let versions = match cached {
            Some(v) => v,
            None => {
                self.ask_member_versions().await.into_iter().map(|(id, r)| (id, r.unwrap_or(0))).collect()
            }
        };
        let mut info = self.cluster_info()?;
        for m in &mut info.members {
            if let Some(v) = versions.get(&m.id) {
                m.knows_command_version = *v;
            }
        }
        Ok(info)
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
        let agents = r.agents().map_err(store_err)?;
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
                    MemberInfo {
                        id: *id,
                        peer_addr: peer.clone(),
                        grpc_addr: m.as_ref().map(|m| m.grpc.clone()).unwrap_or_default(),
                        http_addr: m.map(|m| m.http).unwrap_or_default(),
                        // Others' versions are asked over the network: `cluster_status`.
                        knows_command_version: if *id == st.id { self.cfg.knows_command_version } else { 0 },
                    }
                })
                .collect(),
            agents_alive: agents.iter().filter(|(_, a)| a.alive).count() as u64,
            agents: agents.len() as u64,
            objects: r.object_count().map_err(store_err)?,
            last_error: st.last_error.unwrap_or_default(),
            pending_proposals: r.pending_count().map_err(store_err)?,
            scopes,
            min_command_version: self.stats.min_command_version(),
            knows_command_version: self.cfg.knows_command_version,
        })
    }
}
