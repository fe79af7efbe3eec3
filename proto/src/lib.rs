//! Huatuo wire types: generated gRPC code from proto/*.proto and the one place that converts wire types to
//! domain types and back.

pub mod client;
pub mod convert;
pub mod error;
pub mod shutdown;
pub mod tls;
pub mod view;

/// The master's client API (agents, SDK, CLI): generated from proto/api.proto.
pub mod api {
    tonic::include_proto!("huatuo.api.v1");
}

/// Raft peer transport between masters (`proto/peer.proto`), owned by master::raft.
pub mod peer {
    tonic::include_proto!("huatuo.peer.v1");
}
