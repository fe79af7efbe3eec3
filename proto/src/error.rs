//! The closed set of error codes every master API answers with, on gRPC and REST alike. A code is carried in
//! the `huatuo-code` gRPC metadata (with a matching gRPC status code) and as `{"code", "message"}` JSON with a
//! matching HTTP status on REST, so clients branch on the code, never on message text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// gRPC metadata key carrying the [`Code`].
pub const CODE_METADATA: &str = "huatuo-code";
/// gRPC metadata key carrying the leader's gRPC address with [`Code::NotLeader`], when known.
pub const LEADER_METADATA: &str = "huatuo-leader";

/// Every error a master API can answer with. Adding a code is a protocol change: clients match on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// Malformed input: bad JSON, bad ids, bad severities, oversized batches. Nothing was changed.
    InvalidArgument,
    /// The object (or route) does not exist.
    NotFound,
    /// This node is not the leader; retry on the leader (its address is attached when known).
    NotLeader,
    /// No leader, shutting down, overloaded or timed out: retry later, possibly elsewhere.
    Unavailable,
    /// The requested revision is older than the compacted change log: resync from a snapshot (list, then
    /// watch from the listed revision + 1).
    Compacted,
    /// The request conflicts with the current state (e.g. an ack no transition waits for).
    Conflict,
    /// A bug or a storage failure on the server.
    Internal,
    /// No bearer token, or one the cluster does not know (HTTP 401). Nothing was changed.
    Unauthenticated,
    /// The token is valid but its roles do not allow this call (HTTP 403). Nothing was changed.
    PermissionDenied,
    /// A per-node limit is reached (e.g. open watch streams, HTTP 429): retry later or on another node.
    ResourceExhausted,
}

impl Code {
    pub const ALL: [Code; 10] = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::NotLeader,
        Code::Unavailable,
        Code::Compacted,
        Code::Conflict,
        Code::Internal,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::ResourceExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            Code::NotLeader => "NOT_LEADER",
            Code::Unavailable => "UNAVAILABLE",
            Code::Compacted => "COMPACTED",
            Code::Conflict => "CONFLICT",
            Code::Internal => "INTERNAL",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        }
    }

    /// The HTTP status REST answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument => 400,
            Code::NotFound => 404,
            Code::NotLeader => 421,
            Code::Unavailable => 503,
            Code::Compacted => 410,
            Code::Conflict => 409,
            Code::Internal => 500,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
        }
    }

    /// The gRPC status code that goes with it.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Code::InvalidArgument => tonic::Code::InvalidArgument,
            Code::NotFound => tonic::Code::NotFound,
            Code::NotLeader => tonic::Code::FailedPrecondition,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::Compacted => tonic::Code::OutOfRange,
            Code::Conflict => tonic::Code::Aborted,
            Code::Internal => tonic::Code::Internal,
            Code::Unauthenticated => tonic::Code::Unauthenticated,
            Code::PermissionDenied => tonic::Code::PermissionDenied,
            Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        }
    }

    /// Best guess for a status without our metadata (e.g. produced by the transport itself).
    fn from_grpc(code: tonic::Code) -> Code {
        match code {
            tonic::Code::InvalidArgument => Code::InvalidArgument,
            tonic::Code::NotFound => Code::NotFound,
            tonic::Code::FailedPrecondition => Code::NotLeader,
            tonic::Code::OutOfRange => Code::Compacted,
            tonic::Code::Aborted | tonic::Code::AlreadyExists => Code::Conflict,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Code::Unavailable
            }
            tonic::Code::ResourceExhausted => Code::ResourceExhausted,
            tonic::Code::Unauthenticated => Code::Unauthenticated,
            tonic::Code::PermissionDenied => Code::PermissionDenied,
            _ => Code::Internal,
        }
    }

    /// Whether a client may retry the same call (elsewhere or later) without changing it.
    pub fn is_retryable(self) -> bool {
        matches!(self, Code::NotLeader | Code::Unavailable | Code::ResourceExhausted)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Code {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Code::ALL.into_iter().find(|c| c.as_str() == s).ok_or(())
    }
}

/// An API error: a code, a message for people, and the leader's address with NOT_LEADER. This is also the
/// REST error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), leader: None }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, message)
    }
    pub fn not_leader(leader: Option<String>) -> Self {
        let message = match &leader {
            Some(l) => format!("not the leader; the leader is at {l}"),
            None => "not the leader; no leader known yet".to_string(),
        };
        ApiError { code: Code::NotLeader, message, leader }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let mut status = tonic::Status::new(e.code.grpc_code(), e.message);
        let md = status.metadata_mut();
        if let Ok(v) = e.code.as_str().parse() {
            md.insert(CODE_METADATA, v);
        }
        if let Some(Ok(v)) = e.leader.as_deref().map(str::parse) {
            md.insert(LEADER_METADATA, v);
        }
        status
    }
}

impl From<&tonic::Status> for ApiError {
    fn from(s: &tonic::Status) -> ApiError {
        let md = s.metadata();
        let code = md
            .get(CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| Code::from_grpc(s.code()));
        let leader = md.get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string);
        ApiError { code, message: s.message().to_string(), leader }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        ApiError::from(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_grpc_and_text() {
        for code in Code::ALL {
            assert_eq!(code.as_str().parse::<Code>(), Ok(code));
            let leader = (code == Code::NotLeader).then(|| "127.0.0.1:7700".to_string());
            let e = ApiError { code, message: format!("m {code}"), leader: leader.clone() };
            let status: tonic::Status = e.clone().into();
            assert_eq!(status.code(), code.grpc_code());
            assert_eq!(ApiError::from(&status), e);
            let json = serde_json::to_string(&e).expect("serialize");
            assert!(json.contains(&format!("\"code\":\"{code}\"")), "{json}");
            assert_eq!(serde_json::from_str::<ApiError>(&json).expect("parse"), e);
        }
        assert!("nope".parse::<Code>().is_err());
    }

    #[test]
    fn status_without_metadata_maps_by_grpc_code() {
        let e = ApiError::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.code.is_retryable());
    }
}
