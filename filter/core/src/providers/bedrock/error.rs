//! Bedrock errors → gateway errors: HTTP error bodies (`{"message": "..."}`, the kind in
//! the `x-amzn-ErrorType` header) and exceptions inside an event stream (the kind in the
//! `:exception-type` header).
//!
//! Reference: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors>.

use crate::error::{ErrorKind, GatewayError};
use crate::providers::redact;

/// The message of an AWS error body (`message`, or `Message` as some services write it).
pub(super) fn message_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("message")
        .or_else(|| v.get("Message"))
        .and_then(|m| m.as_str())
        .map(redact)
}

/// Translates a Bedrock error response, keeping its status. `424 ModelErrorException` (the
/// model failed while answering) becomes a 502: it is the upstream's failure, and one the
/// fallback chain should route around.
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    let message = message_of(body).unwrap_or_else(|| format!("upstream returned HTTP {status}"));
    if status == 424 {
        return GatewayError::new(ErrorKind::BadGateway, message);
    }
    GatewayError::new(ErrorKind::from_status(status), message).with_status(status)
}

/// The gateway error for an exception inside a ConverseStream.
pub(super) fn stream_exception(kind: &str, payload: &[u8]) -> GatewayError {
    let message = message_of(payload).unwrap_or_else(|| format!("upstream reported {kind}"));
    let kind = match kind {
        "throttlingException" => ErrorKind::RateLimited,
        "validationException" => ErrorKind::InvalidRequest,
        "serviceUnavailableException" => ErrorKind::Unavailable,
        "modelTimeoutException" => ErrorKind::Timeout,
        _ => ErrorKind::BadGateway,
    };
    GatewayError::new(kind, message)
}
