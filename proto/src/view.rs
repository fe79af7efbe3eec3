//! The one domain shape of an object that every API answers with: REST serializes it as JSON (this is the
//! `GET /api/v1/objects` shape), gRPC converts it to `api::Object` in [`crate::convert`], and the SDK's
//! typed `Object` is built from it. The master builds it from its stored record; nothing else does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use state_machines::Finding;

/// One object as the APIs show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectView {
    pub id: String,
    pub kind: String,
    pub host: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grade: String,
    pub state_since_ms: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Inventory attributes merged with the state machine's own (serials, ticket ids, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub revision: u64,
    /// The latest finding of each checker about this object.
    #[serde(default)]
    pub evidence: Vec<Finding>,
    pub history_len: u64,
    pub history_compacted: u64,
    pub created_ms: u64,
    /// Consent: what the object waits for, from whom, until when (empty when it waits for nothing).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_ack: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_role: String,
    #[serde(default)]
    pub ack_deadline_ms: u64,
    #[serde(default)]
    pub ack_escalated: bool,
    /// The action an agent should run on this object (empty when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pending_action: String,
    #[serde(default)]
    pub action_deadline_ms: u64,
}
