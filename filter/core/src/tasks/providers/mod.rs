//! Asynchronous (submit-then-poll) media providers, normalised into one task model, sans-I/O.
//!
//! Image and video models are mostly served by queue APIs: a submit answers at once with the
//! provider's own task id, and the result arrives later, by polling a status URL or by the
//! provider's webhook. Every provider names its states, wraps its answers and signs its
//! webhooks differently; one module per provider translates to and from the types here, so
//! the task plane (which performs the I/O) drives all of them the same way:
//!
//! 1. [`AsyncProvider::submit`] → a [`ProviderCall`] to send; [`AsyncProvider::read_submit`]
//!    reads the answer into a [`ProviderTask`] (the provider's task id, or a failure at once).
//! 2. [`AsyncProvider::poll`] / [`AsyncProvider::read_poll`] until the task is terminal
//!    (fal answers [`PollAnswer::FetchResult`] first: its status and its result are two calls).
//! 3. [`AsyncProvider::verify_webhook`] and [`AsyncProvider::read_webhook`] for a provider
//!    that calls back (WaveSpeed, Replicate, fal); DashScope and Veo are polled only.
//! 4. [`AsyncProvider::cancel`] where the provider can cancel.
//!
//! The webhook schemes differ on purpose and are easy to confuse: Replicate follows Standard
//! Webhooks (base64 HMAC, key = base64-decoded `whsec_` secret), WaveSpeed uses the same
//! headers and signed content but `v3,` + **hex** HMAC keyed with the secret's text after
//! `whsec_` (not decoded), and fal signs with Ed25519 under keys published as a JWKS. The
//! Ed25519 check lives here rather than in the task plane so that every "is this genuine"
//! decision stays in the core; `ed25519-dalek` is pure Rust and builds for the wasm targets.

use serde_json::Value;

use crate::tasks::webhook::WebhookError;

pub mod dashscope;
pub mod deployments;
pub mod fal;
pub mod replicate;
pub mod veo;
pub mod wavespeed;

/// The asynchronous providers Switchyard drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsyncProvider {
    /// WaveSpeedAI (`POST /api/v3/{model}`).
    Wavespeed,
    /// Replicate predictions.
    Replicate,
    /// fal queue API (`queue.fal.run`).
    Fal,
    /// Alibaba DashScope asynchronous tasks (`X-DashScope-Async: enable`).
    Dashscope,
    /// Google Veo on the Gemini API (`:predictLongRunning`).
    Veo,
}

/// An HTTP method of a provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT (fal's cancel).
    Put,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// One request to a provider, relative to its base URL (credentials not included: the host
/// adds [`AsyncProvider::auth_headers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderCall {
    /// Method.
    pub method: Method,
    /// Path and query after the base URL.
    pub path: String,
    /// Provider headers (not credentials).
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty for GET).
    pub body: Vec<u8>,
}

impl ProviderCall {
    fn get(path: String) -> Self {
        ProviderCall {
            method: Method::Get,
            path,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A POST without a body (the cancel calls).
    fn post(path: String) -> Self {
        ProviderCall {
            method: Method::Post,
            path,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn post_json(path: String, body: &Value) -> Self {
        ProviderCall {
            method: Method::Post,
            path,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }
}

/// What a client's task asks of a provider.
#[derive(Debug, Clone, Copy)]
pub struct SubmitSpec<'a> {
    /// The provider's model name (the deployment's upstream model).
    pub model: &'a str,
    /// The task's `input`, in the provider's own vocabulary (prompt, size, duration...).
    pub input: &'a Value,
    /// Where the provider should call back, for providers that do.
    pub webhook_url: Option<&'a str>,
}

/// A provider task's state, mapped onto the task plane's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderState {
    /// Accepted, not started.
    Queued,
    /// Running.
    Running,
    /// Finished with outputs.
    Succeeded,
    /// Finished without outputs; [`ProviderTask::error`] says why.
    Failed,
    /// Canceled.
    Canceled,
}

impl ProviderState {
    /// Whether the task will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ProviderState::Succeeded | ProviderState::Failed | ProviderState::Canceled
        )
    }
}

/// Why a provider task failed, as the provider said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    /// The provider's code (numeric codes as text), or a stable name of ours.
    pub code: String,
    /// The provider's message.
    pub message: String,
}

impl ProviderFailure {
    fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderFailure {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a finished task is billed by.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MediaUsage {
    /// Images produced.
    pub images: u32,
    /// Seconds of video or audio produced, when the provider or the request says.
    pub seconds: Option<f64>,
}

/// A provider task as one answer (submit, poll or webhook) describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderTask {
    /// The provider's id of the task (what poll and cancel take).
    pub id: String,
    /// Its state.
    pub state: ProviderState,
    /// Progress in 0..=1, when the provider reports one.
    pub progress: Option<f64>,
    /// Output URLs (or data URIs) of a succeeded task.
    pub outputs: Vec<String>,
    /// Why it failed.
    pub error: Option<ProviderFailure>,
    /// Billing units of a succeeded task.
    pub usage: MediaUsage,
}

impl ProviderTask {
    fn new(id: impl Into<String>, state: ProviderState) -> Self {
        ProviderTask {
            id: id.into(),
            state,
            progress: None,
            outputs: Vec::new(),
            error: None,
            usage: MediaUsage::default(),
        }
    }

    fn failed(id: impl Into<String>, failure: ProviderFailure) -> Self {
        let mut task = ProviderTask::new(id, ProviderState::Failed);
        task.error = Some(failure);
        task
    }
}

/// What a poll answer means.
#[derive(Debug, Clone, PartialEq)]
pub enum PollAnswer {
    /// The task as it stands.
    Task(ProviderTask),
    /// The task finished; its result is fetched with this call and read with
    /// [`AsyncProvider::read_result`] (fal).
    FetchResult(ProviderCall),
}

/// An answer a provider module could not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the call (bad input, bad key, rate limit, outage): the task
    /// fails with this, and 429/5xx are worth another deployment.
    #[error("{provider} answered {status}: {message}")]
    Refused {
        /// The provider's name.
        provider: &'static str,
        /// HTTP status (or the envelope's code for WaveSpeed).
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The answer is not what the provider documents.
    #[error("{provider} sent an unreadable answer: {detail}")]
    Malformed {
        /// The provider's name.
        provider: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl ProviderError {
    /// Whether the same task may succeed on another deployment (rate limits, outages).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Refused { status, .. } => *status == 429 || *status >= 500,
            ProviderError::Malformed { .. } => true,
        }
    }
}

/// Why an inbound provider webhook was refused (the task plane answers 401 and counts it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The provider does not send webhooks.
    #[error("{0} does not send webhooks")]
    NoWebhooks(&'static str),
    /// The deployment has no key configured to verify this provider's webhooks with.
    #[error("no webhook verification key is configured")]
    NoKey,
    /// Headers, timestamp or signature wrong (Standard Webhooks' reasons).
    #[error(transparent)]
    Signature(#[from] WebhookError),
    /// The signature is not valid hex / the key is not a valid Ed25519 key.
    #[error("malformed signature or key: {0}")]
    Malformed(String),
}

/// What a provider's webhooks are verified with.
#[derive(Debug, Clone)]
pub enum WebhookKey {
    /// A `whsec_…` shared secret (Replicate, WaveSpeed: each reads it its own way).
    Secret(String),
    /// fal's public keys, from its JWKS document.
    Jwks(fal::Jwks),
}

/// The headers of an inbound request, looked up case-insensitively.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a [(&'a str, &'a str)]);

impl<'a> Headers<'a> {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The trimmed value of a header a signature scheme requires.
    fn required(&self, name: &'static str) -> Result<&'a str, WebhookError> {
        crate::tasks::webhook::required(self.get(name), name)
    }
}

impl AsyncProvider {
    /// Every provider, for tests that must cover them all.
    pub const ALL: [AsyncProvider; 5] = [
        AsyncProvider::Wavespeed,
        AsyncProvider::Replicate,
        AsyncProvider::Fal,
        AsyncProvider::Dashscope,
        AsyncProvider::Veo,
    ];

    /// The name a config writes (`kind: wavespeed`) and URLs carry.
    pub fn name(self) -> &'static str {
        match self {
            AsyncProvider::Wavespeed => "wavespeed",
            AsyncProvider::Replicate => "replicate",
            AsyncProvider::Fal => "fal",
            AsyncProvider::Dashscope => "dashscope",
            AsyncProvider::Veo => "veo",
        }
    }

    /// The provider named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The public base URL (tests point deployments at their doubles instead).
    pub fn default_base_url(self) -> &'static str {
        match self {
            AsyncProvider::Wavespeed => "https://api.wavespeed.ai",
            AsyncProvider::Replicate => "https://api.replicate.com",
            AsyncProvider::Fal => "https://queue.fal.run",
            AsyncProvider::Dashscope => "https://dashscope-intl.aliyuncs.com",
            AsyncProvider::Veo => "https://generativelanguage.googleapis.com",
        }
    }

    /// Whether the provider calls back; the others are only polled.
    pub fn has_webhooks(self) -> bool {
        matches!(
            self,
            AsyncProvider::Wavespeed | AsyncProvider::Replicate | AsyncProvider::Fal
        )
    }

    /// The credential headers for an API key.
    pub fn auth_headers(self, api_key: &str) -> Vec<(String, String)> {
        match self {
            AsyncProvider::Wavespeed | AsyncProvider::Replicate | AsyncProvider::Dashscope => {
                vec![("authorization".into(), format!("Bearer {api_key}"))]
            }
            AsyncProvider::Fal => vec![("authorization".into(), format!("Key {api_key}"))],
            AsyncProvider::Veo => vec![("x-goog-api-key".into(), api_key.to_string())],
        }
    }

    /// The call that submits a task.
    pub fn submit(self, spec: &SubmitSpec<'_>) -> ProviderCall {
        match self {
            AsyncProvider::Wavespeed => wavespeed::submit(spec),
            AsyncProvider::Replicate => replicate::submit(spec),
            AsyncProvider::Fal => fal::submit(spec),
            AsyncProvider::Dashscope => dashscope::submit(spec),
            AsyncProvider::Veo => veo::submit(spec),
        }
    }

    /// Reads the submit answer: the provider's task (its id, possibly failed already).
    pub fn read_submit(self, status: u16, body: &[u8]) -> Result<ProviderTask, ProviderError> {
        match self {
            AsyncProvider::Wavespeed => wavespeed::read_task(status, body),
            AsyncProvider::Replicate => replicate::read_task(status, body),
            AsyncProvider::Fal => fal::read_submit(status, body),
            AsyncProvider::Dashscope => dashscope::read_task(status, body),
            AsyncProvider::Veo => veo::read_operation(status, body, None),
        }
    }

    /// The call that asks for a task's state. `model` is the upstream model (fal's paths
    /// carry it).
    pub fn poll(self, model: &str, task_id: &str) -> ProviderCall {
        match self {
            AsyncProvider::Wavespeed => wavespeed::poll(task_id),
            AsyncProvider::Replicate => replicate::poll(task_id),
            AsyncProvider::Fal => fal::poll(model, task_id),
            AsyncProvider::Dashscope => dashscope::poll(task_id),
            AsyncProvider::Veo => veo::poll(task_id),
        }
    }

    /// Reads a poll answer. `input` is the task's input (Veo bills the duration asked for).
    pub fn read_poll(
        self,
        model: &str,
        task_id: &str,
        input: &Value,
        status: u16,
        body: &[u8],
    ) -> Result<PollAnswer, ProviderError> {
        match self {
            AsyncProvider::Wavespeed => wavespeed::read_task(status, body).map(PollAnswer::Task),
            AsyncProvider::Replicate => replicate::read_task(status, body).map(PollAnswer::Task),
            AsyncProvider::Fal => fal::read_status(model, task_id, status, body),
            AsyncProvider::Dashscope => dashscope::read_task(status, body).map(PollAnswer::Task),
            AsyncProvider::Veo => {
                veo::read_operation(status, body, Some(input)).map(PollAnswer::Task)
            }
        }
    }

    /// Reads the answer to a [`PollAnswer::FetchResult`] call.
    pub fn read_result(
        self,
        task_id: &str,
        status: u16,
        body: &[u8],
    ) -> Result<ProviderTask, ProviderError> {
        match self {
            AsyncProvider::Fal => fal::read_result(task_id, status, body),
            other => Err(ProviderError::Malformed {
                provider: other.name(),
                detail: "this provider has no separate result call".into(),
            }),
        }
    }

    /// The call that cancels a task, where the provider can.
    pub fn cancel(self, model: &str, task_id: &str) -> Option<ProviderCall> {
        match self {
            AsyncProvider::Wavespeed => None,
            AsyncProvider::Replicate => Some(replicate::cancel(task_id)),
            AsyncProvider::Fal => Some(fal::cancel(model, task_id)),
            AsyncProvider::Dashscope => Some(dashscope::cancel(task_id)),
            AsyncProvider::Veo => Some(veo::cancel(task_id)),
        }
    }

    /// Checks that an inbound webhook is genuine and fresh (`now_s`: unix seconds).
    pub fn verify_webhook(
        self,
        key: Option<&WebhookKey>,
        headers: Headers<'_>,
        body: &[u8],
        now_s: u64,
    ) -> Result<(), InboundError> {
        if !self.has_webhooks() {
            return Err(InboundError::NoWebhooks(self.name()));
        }
        match (self, key) {
            (AsyncProvider::Wavespeed, Some(WebhookKey::Secret(secret))) => {
                wavespeed::verify_webhook(secret, headers, body, now_s)
            }
            (AsyncProvider::Replicate, Some(WebhookKey::Secret(secret))) => {
                replicate::verify_webhook(secret, headers, body, now_s)
            }
            (AsyncProvider::Fal, Some(WebhookKey::Jwks(jwks))) => {
                fal::verify_webhook(jwks, headers, body, now_s)
            }
            _ => Err(InboundError::NoKey),
        }
    }

    /// Reads a verified webhook's body into the task it reports.
    pub fn read_webhook(self, body: &[u8]) -> Result<ProviderTask, ProviderError> {
        match self {
            AsyncProvider::Wavespeed => wavespeed::read_webhook(body),
            AsyncProvider::Replicate => replicate::read_task(200, body),
            AsyncProvider::Fal => fal::read_webhook(body),
            other => Err(ProviderError::Malformed {
                provider: other.name(),
                detail: "this provider does not send webhooks".into(),
            }),
        }
    }
}

/// Parses a JSON body or says which provider sent garbage.
fn parse_json(provider: &'static str, body: &[u8]) -> Result<Value, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::Malformed {
        provider,
        detail: format!("not JSON: {e}"),
    })
}

/// A 2xx answer's JSON, or the refusal a non-2xx answer is.
fn json_answer(provider: &'static str, status: u16, body: &[u8]) -> Result<Value, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(refused(provider, status, body));
    }
    parse_json(provider, body)
}

fn malformed(provider: &'static str, detail: impl Into<String>) -> ProviderError {
    ProviderError::Malformed {
        provider,
        detail: detail.into(),
    }
}

/// A non-2xx answer as a refusal, with the provider's message.
fn refused(provider: &'static str, status: u16, body: &[u8]) -> ProviderError {
    ProviderError::Refused {
        provider,
        status,
        message: error_message(body),
    }
}

/// The message of an error body: the usual fields (`detail`, `message`, `error` as text or
/// an object with `message`), else the body's start.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            ["detail", "message", "error"]
                .iter()
                .find_map(|k| match &v[*k] {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("message").and_then(Value::as_str).map(String::from),
                    Value::Array(items) if !items.is_empty() => {
                        Some(Value::Array(items.clone()).to_string())
                    }
                    _ => None,
                })
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// Output URLs from a value that is a URL, a list of URLs, or objects with a `url` field
/// (every provider here uses one of these shapes).
fn urls_in(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(urls_in).collect(),
        Value::Object(o) => o
            .get("url")
            .and_then(Value::as_str)
            .map(|u| vec![u.to_string()])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A succeeded task: its outputs are the URLs in `output`, billed per [`usage_of`] by the
/// duration `input` asked for.
fn completed(id: &str, output: &Value, input: &Value) -> ProviderTask {
    let mut task = ProviderTask::new(id, ProviderState::Succeeded);
    task.outputs = urls_in(output);
    task.usage = usage_of(&task.outputs, requested_seconds(input));
    task.progress = Some(1.0);
    task
}

/// Billing units from outputs: video/audio outputs are billed by the seconds asked for
/// (`duration` or `durationSeconds` in the input), everything else per image.
fn usage_of(outputs: &[String], seconds: Option<f64>) -> MediaUsage {
    match seconds {
        Some(s) => MediaUsage {
            images: 0,
            seconds: Some(s),
        },
        None => MediaUsage {
            images: outputs.len() as u32,
            seconds: None,
        },
    }
}

/// The duration a task's input asks for, in seconds (`duration`, `durationSeconds`, as a
/// number or a string such as fal's `"5"`).
pub fn requested_seconds(input: &Value) -> Option<f64> {
    let find = |v: &Value| {
        ["duration", "durationSeconds", "duration_seconds"]
            .iter()
            .find_map(|k| match &v[*k] {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim_end_matches('s').parse().ok(),
                _ => None,
            })
    };
    find(input).or_else(|| find(&input["parameters"]))
}

/// Percent-encodes a query parameter's value (RFC 3986 unreserved characters kept).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
