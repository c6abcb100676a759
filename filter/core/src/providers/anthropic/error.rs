//! Anthropic error bodies (`{"type":"error","error":{"type","message"}}`) → gateway errors.

use crate::error::{ErrorKind, GatewayError};
use crate::providers::error_message;

/// The canonical kind of an Anthropic error `type`, for errors that arrive inside a stream
/// (where there is no HTTP status to go by).
pub(super) fn kind_of_error_type(t: &str) -> ErrorKind {
    match t {
        "invalid_request_error" => ErrorKind::InvalidRequest,
        "authentication_error" => ErrorKind::Authentication,
        "permission_error" => ErrorKind::PermissionDenied,
        "not_found_error" => ErrorKind::NotFound,
        "request_too_large" => ErrorKind::RequestTooLarge,
        "rate_limit_error" => ErrorKind::RateLimited,
        "timeout_error" => ErrorKind::Timeout,
        "overloaded_error" => ErrorKind::Unavailable,
        _ => ErrorKind::BadGateway,
    }
}

/// Translates an Anthropic error response (`{"type":"error","error":{...}}`), keeping its
/// status (529 `overloaded_error` included, which is retryable).
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    GatewayError::new(ErrorKind::from_status(status), error_message(body, status))
        .with_status(status)
}
