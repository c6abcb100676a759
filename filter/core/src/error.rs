//! Gateway errors and their rendering in the caller's API dialect.
//!
//! Every failure the gateway reports — bad key, bad JSON, unknown model, an upstream's own
//! error — is a [`GatewayError`]. Hosts never build error bodies themselves: they ask the error
//! for its status and for its body in the ingress [`Dialect`], so an OpenAI SDK always sees
//! `{"error":{...}}` and an Anthropic SDK always sees `{"type":"error","error":{...}}`.

use serde_json::json;

/// The API dialect a client speaks; errors and responses are rendered in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI Chat Completions / Embeddings / Models.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Responses (errors as OpenAI's).
    Responses,
    /// Google Gemini API (`generateContent`; errors as Google's).
    Gemini,
}

impl Dialect {
    /// Every dialect, for tests and fuzzing that must cover them all.
    pub const ALL: [Dialect; 4] = [
        Dialect::OpenAi,
        Dialect::Anthropic,
        Dialect::Responses,
        Dialect::Gemini,
    ];
}

/// What went wrong, independent of dialect; decides the status code and error type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed JSON, wrong types, missing fields, unsupported parameters (400).
    InvalidRequest,
    /// Missing, unknown or expired gateway key (401).
    Authentication,
    /// The key may not use this model (403).
    PermissionDenied,
    /// Unknown model or endpoint (404).
    NotFound,
    /// Wrong HTTP method for the endpoint (405).
    MethodNotAllowed,
    /// Body larger than the configured limit (413).
    RequestTooLarge,
    /// Unprocessable by the upstream (422).
    Unprocessable,
    /// Rate limited, by the gateway or the upstream (429).
    RateLimited,
    /// The gateway itself failed (500).
    Internal,
    /// The upstream answered with an error or garbage (502).
    BadGateway,
    /// No deployment could take the request (503).
    Unavailable,
    /// The upstream did not answer in time (504).
    Timeout,
}

impl ErrorKind {
    /// The HTTP status for this kind of failure.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::Unprocessable => 422,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// Maps an upstream HTTP status onto a kind, so provider errors keep their meaning.
    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            400 => ErrorKind::InvalidRequest,
            401 => ErrorKind::Authentication,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            405 => ErrorKind::MethodNotAllowed,
            408 | 504 => ErrorKind::Timeout,
            413 => ErrorKind::RequestTooLarge,
            422 => ErrorKind::Unprocessable,
            429 => ErrorKind::RateLimited,
            503 | 529 => ErrorKind::Unavailable,
            500 => ErrorKind::BadGateway,
            s if (400..500).contains(&s) => ErrorKind::InvalidRequest,
            _ => ErrorKind::BadGateway,
        }
    }

    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTooLarge
            | ErrorKind::Unprocessable => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Internal | ErrorKind::BadGateway | ErrorKind::Unavailable => "api_error",
        }
    }

    /// Google's canonical status name (`google.rpc.Code`) for this kind of failure.
    fn google_status(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTooLarge
            | ErrorKind::Unprocessable => "INVALID_ARGUMENT",
            ErrorKind::Authentication => "UNAUTHENTICATED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::RateLimited => "RESOURCE_EXHAUSTED",
            ErrorKind::Internal => "INTERNAL",
            ErrorKind::BadGateway | ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "DEADLINE_EXCEEDED",
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::MethodNotAllowed | ErrorKind::Unprocessable => {
                "invalid_request_error"
            }
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::Internal | ErrorKind::BadGateway => "api_error",
        }
    }
}

/// A failure to report to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} ({status}): {message}")]
pub struct GatewayError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// HTTP status; usually `kind.status()`, but an upstream's own status is kept when forwarded.
    pub status: u16,
    /// Human-readable message. Never contains secrets.
    pub message: String,
    /// OpenAI-style machine code (`invalid_api_key`, `model_not_found`, ...), when one fits.
    pub code: Option<&'static str>,
    /// The request field at fault, when known.
    pub param: Option<String>,
    /// Seconds the client should wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl GatewayError {
    /// An error of `kind` with its default status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            status: kind.status(),
            message: message.into(),
            code: None,
            param: None,
            retry_after: None,
        }
    }

    /// Shorthand for a 400.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// Attaches an OpenAI-style error code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Attaches the offending parameter name.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Overrides the status (used to forward an upstream's exact status).
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The error body in `dialect`'s JSON shape.
    pub fn body(&self, dialect: Dialect) -> Vec<u8> {
        let value = match dialect {
            Dialect::OpenAi | Dialect::Responses => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind.openai_type(),
                    "param": self.param,
                    "code": self.code,
                }
            }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": {"type": self.kind.anthropic_type(), "message": self.message},
            }),
            Dialect::Gemini => json!({
                "error": {
                    "code": self.status,
                    "message": self.message,
                    "status": self.kind.google_status(),
                }
            }),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// Response headers that belong with this error (content type, `Retry-After`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(secs) = self.retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        headers
    }

    /// Whether the fallback chain should try the next deployment after this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 408 | 429 | 500..=599)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_shape() {
        let err =
            GatewayError::new(ErrorKind::Authentication, "bad key").with_code("invalid_api_key");
        let v: serde_json::Value = serde_json::from_slice(&err.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["message"], "bad key");
        assert_eq!(err.status, 401);
    }

    #[test]
    fn anthropic_error_shape() {
        let err = GatewayError::new(ErrorKind::NotFound, "no such model");
        let v: serde_json::Value = serde_json::from_slice(&err.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(err.status, 404);
    }

    #[test]
    fn gemini_error_shape() {
        let err = GatewayError::new(ErrorKind::RateLimited, "slow down");
        let v: serde_json::Value = serde_json::from_slice(&err.body(Dialect::Gemini)).unwrap();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["error"]["message"], "slow down");
    }

    #[test]
    fn upstream_statuses_keep_meaning() {
        assert_eq!(ErrorKind::from_status(429), ErrorKind::RateLimited);
        assert_eq!(ErrorKind::from_status(529), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::from_status(408), ErrorKind::Timeout);
        assert_eq!(ErrorKind::from_status(418), ErrorKind::InvalidRequest);
    }
}
