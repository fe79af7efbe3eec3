//! Huatuo master: the Raft-replicated object store (fsm over redb), its API layer (`api`) with the gRPC
//! (`grpc`) and REST (`http`, portal included) adapters over it, and the master process (`server`) that
//! wires them to the raft layer.

/// The leader-following client lives in `proto` so agents (which must not depend on the master) share it.
pub use proto::client;
pub mod accept;
pub mod actions;
pub mod api;
pub mod archive;
pub mod auth;
pub mod by_state;
pub mod catalog;
pub mod checksum;
pub mod cluster;
pub mod config;
pub mod datagrams;
pub mod deadlines;
pub mod evidence;
pub mod follow;
pub mod fsm;
pub mod grpc;
pub mod grpc_date;
pub mod http;
pub mod metrics;
pub mod model;
pub mod net;
pub mod raft;
pub mod safety;
pub mod server;
pub mod sm_seam;
pub mod stalls;
pub mod store;
pub mod ticket_source;
pub mod tickets;
pub mod tls;
