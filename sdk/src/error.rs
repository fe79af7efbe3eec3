//! The SDK's error type: the master's closed code set (`proto::error::Code`) lifted into an enum a
//! subscriber can `match` on, plus the two failures only a client can see (bad local input, malformed
//! answers). Refused acknowledgements carry the object as the master sees it now, so the caller can tell
//! "already done" from "wrong object / role / kind" without parsing messages.

use proto::error::{ApiError, Code};

use crate::types::Object;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Bad input (checked locally before any call, or refused by the master): nothing was changed.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The object does not exist on the master.
    #[error("not found: {0}")]
    NotFound(String),
    /// The master refused the request in the object's current state (CONFLICT): e.g. an acknowledgement
    /// no transition waits for, or one from the wrong role or of the wrong kind. Nothing was changed.
    /// `current` is the object as the master sees it after the refusal (when it could be read).
    #[error("refused: {message}")]
    Refused { message: String, current: Option<Box<Object>> },
    /// The requested revision is older than the master's change log: relist and watch from there.
    #[error("compacted: {0}")]
    Compacted(String),
    /// No master answered within the bounded retries (no leader, all unreachable, timeouts).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or storage failure on the master.
    #[error("master internal error: {0}")]
    Internal(String),
    /// No token or an unknown one (UNAUTHENTICATED): nothing was changed.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token's roles do not allow the call (PERMISSION_DENIED): nothing was changed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The master answered with something this SDK cannot read (e.g. an unknown state name from a newer
    /// master). Nothing the answer said was used.
    #[error("malformed answer from the master: {0}")]
    Protocol(String),
}

impl Error {
    /// The wire code this error corresponds to (`Protocol` maps to INTERNAL).
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::Refused { .. } => Code::Conflict,
            Error::Compacted(_) => Code::Compacted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) | Error::Protocol(_) => Code::Internal,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
        }
    }

    /// Whether trying again later (unchanged) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Error {
        match e.code {
            Code::InvalidArgument => Error::Invalid(e.message),
            Code::NotFound => Error::NotFound(e.message),
            Code::Conflict => Error::Refused { message: e.message, current: None },
            Code::Compacted => Error::Compacted(e.message),
            // The client already followed redirects a bounded number of times; still no leader.
            // A node at its limit (e.g. open watches): another node, or later, may serve.
            Code::NotLeader | Code::Unavailable | Code::ResourceExhausted => Error::Unavailable(e.message),
            Code::Internal => Error::Internal(e.message),
            Code::Unauthenticated => Error::Unauthenticated(e.message),
            Code::PermissionDenied => Error::PermissionDenied(e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_code_maps_to_a_variant_with_the_same_code() {
        for code in Code::ALL {
            let e = Error::from(ApiError::new(code, "m"));
            // A redirect and a node at its limit (e.g. open watches) are both "try again, elsewhere or later".
            let want = if matches!(code, Code::NotLeader | Code::ResourceExhausted) {
                Code::Unavailable
            } else {
                code
            };
            assert_eq!(e.code(), want, "{code}");
            assert_eq!(e.is_retryable(), want == Code::Unavailable);
            assert!(e.to_string().contains('m'));
        }
        assert_eq!(Error::Protocol("x".into()).code(), Code::Internal);
    }
}
