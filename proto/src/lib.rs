//! Huatuo wire types: generated gRPC code from proto/*.proto and the one place that converts wire types to
//! domain types and back.

pub mod client;
pub mod codec;
pub mod convert;
pub mod datagram;
pub mod error;
pub mod shutdown;
pub mod tls;
pub mod view;

/// The master's client API (agents, SDK, CLI): generated from proto/api.proto.
pub mod api {
    tonic::include_proto!("huatuo.api.v1");

    impl ClusterInfoResponse {
        /// A leader is known and its addresses are in the replicated member table (its first entries as
        /// leader committed).
        pub fn leader_announced(&self) -> bool {
            self.leader_id != 0 && self.members.iter().any(|m| m.id == self.leader_id && m.announced)
        }
    }
}

/// The binary encoding of the master's Raft log entries (`proto/entry.proto`), owned by master::model.
pub use entry_tree::huatuo::entry::v1 as entry;

/// The package tree prost's generated code for `huatuo.entry.v1` expects: it names `huatuo.api.v1` types by
/// a relative path (`super::...::api::v1`), which lands here on [`api`].
#[doc(hidden)]
pub mod entry_tree {
    pub mod huatuo {
        pub mod api {
            pub use crate::api as v1;
        }
        pub mod entry {
            pub mod v1 {
                tonic::include_proto!("huatuo.entry.v1");
            }
        }
    }
}

/// Raft peer transport between masters (`proto/peer.proto`), owned by master::raft.
pub mod peer {
    tonic::include_proto!("huatuo.peer.v1");
}
