//! Huatuo master: the Raft-replicated object store (fsm over redb), its gRPC and REST APIs, and the master
//! process that wires them to the raft layer.

/// The leader-following client lives in `proto` so agents (which must not depend on the master) share it.
pub use proto::client;
pub mod actions;
pub mod auth;
pub mod checksum;
pub mod cluster;
pub mod config;
pub mod fsm;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod model;
pub mod portal;
pub mod raft;
pub mod safety;
pub mod safety_api;
pub mod server;
pub mod service;
pub mod sm_seam;
pub mod store;
pub mod ticket_source;
pub mod tickets;
pub mod tls;
