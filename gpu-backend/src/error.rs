//! Errors, and how each one is answered on the wire.
//!
//! Every failure a client can cause or observe maps to one [`ApiError`] variant, which knows
//! its HTTP status and its OpenAI error `type`/`code`, so the gateway in front of us can pass
//! it through (or fall back to another deployment on 503) without guessing.

use serde_json::json;

/// A failure reported to an API client, rendered as OpenAI error JSON.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or a field has the wrong type or an out-of-range value.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, for a human.
        message: String,
        /// The request field at fault, when there is one.
        param: Option<String>,
    },
    /// The prompt plus requested completion does not fit the model's context window.
    #[error("{0}")]
    ContextLengthExceeded(String),
    /// The `model` field names a model this backend does not serve.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// The model exists but serves the other endpoint (chat vs embeddings).
    #[error("The model `{model}` does not support {endpoint}.")]
    WrongEndpoint {
        /// The model asked for.
        model: String,
        /// The endpoint it was asked on.
        endpoint: &'static str,
    },
    /// The request body or input list is larger than this backend accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The admission queue is full; the client should retry after `retry_after_s`.
    #[error("The server is overloaded: the request queue is full. Retry after {retry_after_s}s.")]
    QueueFull {
        /// Seconds for `Retry-After`.
        retry_after_s: u64,
    },
    /// The model could not be loaded (missing or corrupt weights).
    #[error("The model `{model}` failed to load: {reason}")]
    ModelUnavailable {
        /// The model asked for.
        model: String,
        /// Why it failed to load.
        reason: String,
    },
    /// Inference failed inside the engine; the request is dropped, the worker keeps running.
    #[error("Inference failed: {0}")]
    Internal(String),
}

impl ApiError {
    /// Shorthand for a 400 about one request field.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    /// HTTP status code, as OpenAI uses them.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::ContextLengthExceeded(_)
            | ApiError::WrongEndpoint { .. } => 400,
            ApiError::ModelNotFound(_) => 404,
            ApiError::TooLarge(_) => 413,
            ApiError::QueueFull { .. } | ApiError::ModelUnavailable { .. } => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// Seconds for a `Retry-After` header, when the client should retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::QueueFull { retry_after_s } => Some(*retry_after_s),
            _ => None,
        }
    }

    /// The OpenAI error body: `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (kind, code, param) = match self {
            ApiError::InvalidRequest { param, .. } => {
                ("invalid_request_error", None, param.clone())
            }
            ApiError::ContextLengthExceeded(_) => (
                "invalid_request_error",
                Some("context_length_exceeded"),
                Some("messages".to_owned()),
            ),
            ApiError::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model_not_found"),
                Some("model".to_owned()),
            ),
            ApiError::WrongEndpoint { .. } => (
                "invalid_request_error",
                Some("model_not_supported"),
                Some("model".to_owned()),
            ),
            ApiError::TooLarge(_) => ("invalid_request_error", Some("request_too_large"), None),
            ApiError::QueueFull { .. } => ("server_error", Some("queue_full"), None),
            ApiError::ModelUnavailable { .. } => ("server_error", Some("model_unavailable"), None),
            ApiError::Internal(_) => ("server_error", None, None),
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

/// Failures while loading or running a model, inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// candle failed (loading tensors, or a forward pass on the candle path).
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer could not be built or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A pinned model id that is not in the models directory.
    #[error("model `{0}` is not in the models directory")]
    UnknownModel(String),
    /// The file's contents do not fit what the engine supports, or a step was malformed.
    #[error("model file: {0}")]
    Format(String),
}

impl ModelError {
    /// An I/O failure on `path`, for `map_err`: every model loader names the file it failed on.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
        move |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Reads `name` from a model directory (the safetensors models' `config.json`,
    /// `model.safetensors`, `tokenizer.json`).
    pub fn read_model_file(dir: &std::path::Path, name: &str) -> Result<Vec<u8>, ModelError> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(ModelError::io(&path))
    }
}

impl From<tokenizers::Error> for ModelError {
    fn from(e: tokenizers::Error) -> Self {
        ModelError::Tokenizer(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_full_is_a_retryable_503_in_openai_shape() {
        let e = ApiError::QueueFull { retry_after_s: 1 };
        assert_eq!(e.status(), 503);
        assert_eq!(e.retry_after(), Some(1));
        let body = e.to_json();
        let err = &body["error"];
        assert_eq!(err["type"], "server_error");
        assert_eq!(err["code"], "queue_full");
        assert!(err["param"].is_null());
        assert!(err["message"].as_str().unwrap().contains("Retry"));
    }

    #[test]
    fn statuses_follow_openai() {
        assert_eq!(ApiError::invalid("x", Some("n")).status(), 400);
        assert_eq!(ApiError::ModelNotFound("m".into()).status(), 404);
        assert_eq!(ApiError::TooLarge("x".into()).status(), 413);
        assert_eq!(
            ApiError::invalid("x", Some("n")).to_json()["error"]["param"],
            "n"
        );
    }
}
