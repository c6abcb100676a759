//! The control plane's one error type, and how each variant answers over HTTP.

use crate::store::StoreError;

/// Why a control-plane operation failed; each variant has one HTTP status and error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or holds a value out of range (400).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, naming the field.
        message: String,
        /// Machine-readable reason, e.g. `invalid_json`, `missing_field`.
        code: &'static str,
    },
    /// No credential, or one that is not valid (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential whose role may not do this (403).
    #[error("{0}")]
    PermissionDenied(String),
    /// The named resource does not exist (404).
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
        /// e.g. `key_not_found`, `team_not_found`.
        code: &'static str,
    },
    /// The request conflicts with the current state: a duplicate name, a non-empty team (409).
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// e.g. `duplicate_id`, `team_not_empty`.
        code: &'static str,
    },
    /// The request body is larger than the endpoint accepts (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The operating system's random source failed (500).
    #[error("random source failed: {0}")]
    Random(String),
    /// The store failed (500; a unique-constraint race is a 409).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// A 400 naming what is wrong.
    pub fn invalid(message: impl Into<String>, code: &'static str) -> Self {
        Error::InvalidRequest {
            message: message.into(),
            code,
        }
    }

    /// A 404 for `what` (e.g. "key") with id `id`.
    pub fn not_found(what: &str, id: &str, code: &'static str) -> Self {
        Error::NotFound {
            message: format!("no {what} with id `{id}`"),
            code,
        }
    }

    /// A 409.
    pub fn conflict(message: impl Into<String>, code: &'static str) -> Self {
        Error::Conflict {
            message: message.into(),
            code,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest { .. } => 400,
            Error::Unauthenticated(_) => 401,
            Error::PermissionDenied(_) => 403,
            Error::NotFound { .. } => 404,
            Error::Conflict { .. } | Error::Store(StoreError::UniqueViolation(_)) => 409,
            Error::PayloadTooLarge(_) => 413,
            Error::Random(_) | Error::Store(_) => 500,
        }
    }

    /// The `type` of the error JSON (OpenAI's vocabulary).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. } | Error::PayloadTooLarge(_) => "invalid_request_error",
            Error::Unauthenticated(_) => "authentication_error",
            Error::PermissionDenied(_) => "permission_error",
            Error::NotFound { .. } => "not_found_error",
            Error::Conflict { .. } | Error::Store(StoreError::UniqueViolation(_)) => {
                "conflict_error"
            }
            Error::Random(_) | Error::Store(_) => "api_error",
        }
    }

    /// The `code` of the error JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. } => code,
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "insufficient_role",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::Store(StoreError::UniqueViolation(_)) => "duplicate",
            Error::Random(_) | Error::Store(_) => "internal_error",
        }
    }

    /// The message shown to the caller; internal failures say only that they happened (the
    /// detail goes to the server's log, never to the client).
    pub fn public_message(&self) -> String {
        match self {
            Error::Store(StoreError::UniqueViolation(_)) => {
                "a concurrent request created the same id or name".to_string()
            }
            Error::Random(_) | Error::Store(_) => "internal error in the control plane".to_string(),
            other => other.to_string(),
        }
    }

    /// `{"error":{"message","type","code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.public_message(),
                "type": self.kind(),
                "code": self.code(),
            }
        })
    }
}
