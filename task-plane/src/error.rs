//! The task plane's error type.
//!
//! What a client did wrong (or what an upstream answered) is a [`GatewayError`] from the
//! core, so it renders in the caller's dialect exactly as the edge renders it; the plane's
//! own failures (store, ledger, random source) answer a 500 that says only that it happened,
//! with the detail in the server's log.

use control_plane::store::StoreError;
use switchyard_core::{ErrorKind, GatewayError};

/// Why a task-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused, with the status and message the client gets.
    #[error(transparent)]
    Refused(#[from] GatewayError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The control plane's layer failed (the ledger, the key set, the random source).
    #[error("control plane: {0}")]
    ControlPlane(#[from] control_plane::Error),
    /// The plane could not start (an HTTP client could not be built).
    #[error("cannot start the task plane: {0}")]
    Start(String),
    /// A stored document could not be read back.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl Error {
    /// The error the client sees.
    pub fn client_error(&self) -> GatewayError {
        match self {
            Error::Refused(err) => err.clone(),
            Error::Store(StoreError::UniqueViolation(_)) => GatewayError::new(
                ErrorKind::Unavailable,
                "a concurrent request changed the same task; retry",
            )
            .with_status(409),
            _ => GatewayError::new(ErrorKind::Internal, "internal error in the task plane"),
        }
    }

    /// Whether this is the plane's own failure (logged), rather than a refusal.
    pub fn is_internal(&self) -> bool {
        !matches!(self, Error::Refused(_))
    }
}

/// A 400 naming the parameter at fault.
pub fn invalid(message: impl Into<String>, param: &str) -> Error {
    Error::Refused(GatewayError::invalid(message).with_param(param))
}

/// A 404 for a task this caller cannot see (unknown, or another key's: the same answer, so
/// existence does not leak).
pub fn task_not_found(id: &str) -> Error {
    let shown: String = id.chars().take(64).collect();
    Error::Refused(
        GatewayError::new(ErrorKind::NotFound, format!("no task with id `{shown}`"))
            .with_code("task_not_found"),
    )
}
