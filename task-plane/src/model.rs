//! What a task is: its states, the operation it performs, what it produced, and the JSON
//! object clients see.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_core::ingress::media::MediaKind;
use switchyard_core::{Dialect, Endpoint, GatewayError};

/// Where a task is in its life. `succeeded`, `failed` and `canceled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, not started.
    Queued,
    /// Submitted to a deployment (or being run), not finished.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished without one; `error` says why.
    Failed,
    /// Canceled by the client.
    Canceled,
}

impl TaskState {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Canceled => "canceled",
        }
    }

    /// Parses [`TaskState::as_str`]'s names.
    pub fn parse(text: &str) -> Option<TaskState> {
        Some(match text {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "canceled" => TaskState::Canceled,
            _ => return None,
        })
    }

    /// Whether the task is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Canceled
        )
    }
}

/// What a task does: the generic `input` of `POST /v1/tasks`, or one of the generation
/// endpoints' requests (submitted with `Prefer: respond-async`, or behind a synchronous
/// facade).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// A generation by a model served by asynchronous providers (images, video): the task's
    /// `input` is the provider's own request (see `crate::provider`).
    Generation,
    /// `POST /v1/images/generations`.
    ImagesGenerations,
    /// `POST /v1/images/edits` (its multipart body is kept base64 in the input, see
    /// [`MULTIPART_FIELD`]).
    ImagesEdits,
    /// `POST /v1/audio/speech` (its audio bytes come back as an inline output).
    AudioSpeech,
    /// `POST /v1/audio/transcriptions` (its multipart body is kept base64 in the input, see
    /// [`MULTIPART_FIELD`]).
    AudioTranscriptions,
}

/// The input field that holds a multipart request's body, base64: the endpoint's own bytes
/// (boundary, file and fields as the client sent them), so the task sends what the
/// synchronous endpoint would have.
pub const MULTIPART_FIELD: &str = "multipart_base64";

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 8] = [
        Operation::ChatCompletions,
        Operation::Messages,
        Operation::Embeddings,
        Operation::Generation,
        Operation::ImagesGenerations,
        Operation::ImagesEdits,
        Operation::AudioSpeech,
        Operation::AudioTranscriptions,
    ];

    /// The stored and shown name (also the `x-switchyard-operation` header's value).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat.completions",
            Operation::Messages => "messages",
            Operation::Embeddings => "embeddings",
            Operation::Generation => "generation",
            Operation::ImagesGenerations => "images.generations",
            Operation::ImagesEdits => "images.edits",
            Operation::AudioSpeech => "audio.speech",
            Operation::AudioTranscriptions => "audio.transcriptions",
        }
    }

    /// Parses [`Operation::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// The dialect its errors and results are rendered in.
    pub fn dialect(self) -> Dialect {
        match self {
            Operation::Messages => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// The core endpoint that plans it.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Operation::ChatCompletions => Endpoint::ChatCompletions,
            Operation::Messages => Endpoint::Messages,
            Operation::Embeddings => Endpoint::Embeddings,
            Operation::Generation => Endpoint::Media(MediaKind::Images),
            Operation::ImagesGenerations => Endpoint::Media(MediaKind::Images),
            Operation::ImagesEdits => Endpoint::Media(MediaKind::ImageEdit),
            Operation::AudioSpeech => Endpoint::Media(MediaKind::Speech),
            Operation::AudioTranscriptions => Endpoint::Media(MediaKind::Transcription),
        }
    }

    /// Whether its request is a multipart form (kept base64 under [`MULTIPART_FIELD`])
    /// rather than a JSON object.
    pub fn multipart(self) -> bool {
        matches!(
            self,
            Operation::AudioTranscriptions | Operation::ImagesEdits
        )
    }
}

/// What a task consumed: the units it is billed by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, cached included.
    #[serde(default)]
    pub input_tokens: u64,
    /// Cached input tokens.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Images produced.
    #[serde(default)]
    pub images: u64,
    /// Seconds of audio or video produced or transcribed.
    #[serde(default)]
    pub seconds: f64,
}

/// One thing a task produced: a URL to fetch, or the data inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// `image`, `video`, `audio`, `text` or `json`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where to fetch it (provider-hosted outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Base64 of the bytes, for binary outputs returned inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// Text, for text outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The media type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// One deployment a task was tried on, and how that went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptEntry {
    /// `provider/upstream-model`.
    pub deployment: String,
    /// `succeeded`, `timeout`, `status 503`, `connection failed`, …
    pub outcome: String,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// `task_…`.
    pub id: String,
    /// The key that submitted it (only it can see the task).
    pub key_id: String,
    /// The key's team.
    pub team: Option<String>,
    /// The public model name.
    pub model: String,
    /// What it does.
    pub operation: Operation,
    /// The request the operation runs: the endpoint's body, with `model` set.
    pub input: Value,
    /// The client's own metadata, returned as given.
    pub metadata: Option<Value>,
    /// Where the final webhook goes (the request's, else the key's default).
    pub webhook_url: Option<String>,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// SHA-256 of what was submitted, to tell a retry from a reused key.
    pub request_hash: String,
    /// Where it is in its life.
    pub state: TaskState,
    /// 0 to 1, when the provider reports it.
    pub progress: Option<f64>,
    /// Index of the current attempt (0 the primary; the fallback is 1).
    pub attempt: u32,
    /// The attempts so far.
    pub attempts_log: Vec<AttemptEntry>,
    /// The deployment ids in attempt order, fixed at the first attempt.
    pub deployments: Vec<String>,
    /// The provider's handle of the current attempt (its task id and URLs), while running.
    pub handle: Option<Value>,
    /// Polls of the current attempt (for backoff).
    pub polls: u32,
    /// The client asked to cancel.
    pub cancel_requested: bool,
    /// The endpoint-shaped answer (a chat completion, an embeddings list, …).
    pub result: Option<Value>,
    /// What it produced.
    pub outputs: Vec<Output>,
    /// Why it failed, in the operation's dialect.
    pub error: Option<GatewayError>,
    /// What it consumed.
    pub usage: Usage,
    /// What it cost, USD.
    pub cost: f64,
    /// Created, unix ms.
    pub created_at_ms: u64,
    /// First attempt started, unix ms.
    pub started_at_ms: Option<u64>,
    /// The current attempt started, unix ms.
    pub attempt_started_at_ms: Option<u64>,
    /// Finished, unix ms.
    pub completed_at_ms: Option<u64>,
    /// When it fails if not finished, unix ms.
    pub deadline_at_ms: u64,
    /// When a worker looks at it next, unix ms.
    pub next_run_at_ms: u64,
}

/// The error object of a task, in its dialect: OpenAI's `{"message","type","param","code"}`
/// or Anthropic's `{"type","message"}` (what sits under `error` in each dialect's body).
pub fn error_object(error: &GatewayError, dialect: Dialect) -> Value {
    let body: Value = serde_json::from_slice(&error.body(dialect)).unwrap_or(Value::Null);
    let mut object = body.get("error").cloned().unwrap_or(Value::Null);
    if let Some(map) = object.as_object_mut() {
        map.insert("status".into(), json!(error.status));
    }
    object
}

impl Task {
    /// The task as clients see it (`GET /v1/tasks/{id}`, webhooks).
    pub fn view(&self) -> Value {
        let secs = |ms: u64| ms / 1000;
        json!({
            "id": self.id,
            "object": "task",
            "model": self.model,
            "operation": self.operation.as_str(),
            "status": self.state.as_str(),
            "progress": self.progress,
            "created_at": secs(self.created_at_ms),
            "started_at": self.started_at_ms.map(secs),
            "completed_at": self.completed_at_ms.map(secs),
            "outputs": self.outputs,
            "result": self.result,
            "error": self.error.as_ref().map(|e| error_object(e, self.operation.dialect())),
            "usage": self.usage,
            "cost_usd": self.cost,
            "attempts": self.attempts_log,
            "webhook_url": self.webhook_url,
            "metadata": self.metadata,
        })
    }
}

/// Serializes a [`GatewayError`] for storage (kind by status, message, code, param).
pub(crate) fn store_error(error: &GatewayError) -> String {
    json!({
        "status": error.status,
        "message": error.message,
        "code": error.code,
        "param": error.param,
    })
    .to_string()
}

/// Reads [`store_error`]'s form back.
pub(crate) fn load_error(text: &str) -> Option<GatewayError> {
    let value: Value = serde_json::from_str(text).ok()?;
    let status = u16::try_from(value.get("status")?.as_u64()?).ok()?;
    let message = value.get("message")?.as_str()?.to_string();
    let mut error = GatewayError::new(switchyard_core::ErrorKind::from_status(status), message)
        .with_status(status);
    if let Some(code) = value.get("code").and_then(Value::as_str) {
        error = error.with_code(known_code(code));
    }
    if let Some(param) = value.get("param").and_then(Value::as_str) {
        error = error.with_param(param);
    }
    Some(error)
}

/// Error codes are `&'static str` in the core: a stored code maps back onto the known set
/// (anything else becomes `upstream_error`).
fn known_code(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "task_timeout",
        "task_canceled",
        "model_not_found",
        "model_not_allowed",
        "invalid_api_key",
        "provider_credential_missing",
        "request_too_large",
        "upstream_error",
        "all_attempts_failed",
        "rate_limit_exceeded",
        "invalid_request",
    ];
    CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("upstream_error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::ErrorKind;

    #[test]
    fn names_round_trip() {
        for state in [
            TaskState::Queued,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Canceled,
        ] {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
        }
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
        assert_eq!(TaskState::parse("done"), None);
    }

    #[test]
    fn errors_survive_storage_and_render_in_dialect() {
        let err = GatewayError::new(ErrorKind::Timeout, "too slow")
            .with_code("task_timeout")
            .with_param("model");
        let back = load_error(&store_error(&err)).unwrap();
        assert_eq!(back, err);
        let openai = error_object(&back, Dialect::OpenAi);
        assert_eq!(openai["type"], "timeout_error");
        assert_eq!(openai["code"], "task_timeout");
        assert_eq!(openai["status"], 504);
        let anthropic = error_object(&back, Dialect::Anthropic);
        assert_eq!(anthropic["type"], "timeout_error");
        assert_eq!(anthropic["message"], "too slow");
    }
}
