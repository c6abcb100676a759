//! The OpenAI-compatible HTTP API over the [`Engine`].
//!
//! Bodies are parsed by hand from bytes (not axum's `Json` extractor) so that every failure,
//! including a body over the size limit, is answered in OpenAI's error JSON with OpenAI's
//! status, which is what the gateway and the OpenAI SDKs expect from a provider.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::catalog::ModelKind;
use crate::chat_model::ChatMessage;
use crate::engine::{ChatEvent, Engine, GenerateRequest, SamplingParams};
use crate::error::ApiError;

/// Request-size limits of the HTTP layer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most strings in one embeddings request; more gets 413.
    pub max_embedding_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_embedding_inputs: 2048,
        }
    }
}

struct AppState {
    engine: Arc<Engine>,
    limits: Limits,
    started: u64,
}

/// The API routes, ready for `axum::serve`.
pub fn router(engine: Arc<Engine>, limits: Limits) -> Router {
    let state = Arc::new(AppState {
        engine,
        limits,
        started: unix_now(),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error_response(&ApiError::invalid("Unknown endpoint.", None))
                .map_status(StatusCode::NOT_FOUND)
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

trait MapStatus {
    fn map_status(self, status: StatusCode) -> Response;
}

impl MapStatus for Response {
    fn map_status(mut self, status: StatusCode) -> Response {
        *self.status_mut() = status;
        self
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(error.to_json())).into_response();
    if let Some(secs) = error.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Reads and deserializes a JSON body, mapping every failure to the right OpenAI error.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("The request body is too large.".into())
        } else {
            ApiError::invalid(
                format!("Could not read the request body: {rejection}"),
                None,
            )
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "We could not parse the JSON body of your request"
        } else {
            "Invalid request body"
        };
        ApiError::invalid(format!("{what}: {e}"), None)
    })
}

#[derive(Deserialize)]
struct ChatCompletionRequest {
    model: String,
    messages: Vec<WireMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<StopField>,
    seed: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: Option<WireContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn flatten_message(m: WireMessage, index: usize) -> Result<ChatMessage, ApiError> {
    if !ROLES.contains(&m.role.as_str()) {
        return Err(ApiError::invalid(
            format!("Invalid value for 'messages[{index}].role': expected one of {ROLES:?}."),
            Some(&format!("messages[{index}].role")),
        ));
    }
    let content = match m.content {
        None => String::new(),
        Some(WireContent::Text(t)) => t,
        Some(WireContent::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("Content part type '{kind}' is not supported by this model."),
                            Some(&format!("messages[{index}].content")),
                        ))
                    }
                }
            }
            text
        }
    };
    // The template has one system role; `developer` is OpenAI's newer name for it.
    let role = if m.role == "developer" {
        "system".to_owned()
    } else {
        m.role
    };
    Ok(ChatMessage { role, content })
}

/// Checks the request and turns it into the engine's form.
fn to_generate(req: ChatCompletionRequest) -> Result<(GenerateRequest, bool, bool), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must not be empty.",
            Some("messages"),
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("Only n=1 is supported.", Some("n")));
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "'temperature' must be between 0 and 2.",
            Some("temperature"),
        ));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "'top_p' must be in (0, 1].",
            Some("top_p"),
        ));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        Some(0) => {
            return Err(ApiError::invalid(
                "'max_tokens' must be at least 1.",
                Some("max_tokens"),
            ))
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let stop = match req.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "'stop' takes up to 4 non-empty strings.",
            Some("stop"),
        ));
    }
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| flatten_message(m, i))
        .collect::<Result<Vec<_>, _>>()?;
    let seed = req.seed.map_or_else(rand::random::<u64>, |s| s as u64);
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok((
        GenerateRequest {
            model: req.model,
            messages,
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_p,
                seed,
            },
            stop,
        },
        stream,
        include_usage,
    ))
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat_inner(state, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn chat_inner(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = parse_body(body)?;
    let (request, stream, include_usage) = to_generate(req)?;
    let model = request.model.clone();
    let mut rx = state.engine.generate(request)?;
    // Wait until the sequence is admitted, so admission errors still get a proper status.
    let prompt_tokens = match rx.recv().await {
        Some(ChatEvent::Started { prompt_tokens }) => prompt_tokens,
        Some(ChatEvent::Failed(e)) => return Err(e),
        _ => return Err(ApiError::Internal("the worker dropped the request".into())),
    };
    let meta = CompletionMeta {
        id: format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32),
        created: unix_now(),
        model,
    };
    if stream {
        Ok(stream_response(rx, meta, prompt_tokens, include_usage))
    } else {
        collect_response(rx, meta).await
    }
}

struct CompletionMeta {
    id: String,
    created: u64,
    model: String,
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn collect_response(
    mut rx: UnboundedReceiver<ChatEvent>,
    meta: CompletionMeta,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(ChatEvent::Delta(d)) => text.push_str(&d),
            Some(ChatEvent::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                let body = json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": null},
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                    }],
                    "usage": usage(prompt_tokens, completion_tokens),
                    "system_fingerprint": null,
                });
                return Ok(axum::Json(body).into_response());
            }
            Some(ChatEvent::Failed(e)) => return Err(e),
            Some(ChatEvent::Started { .. }) => {}
            None => return Err(ApiError::Internal("the worker dropped the request".into())),
        }
    }
}

/// Where a streamed completion is: role chunk first, then content, then the end frames.
enum StreamPhase {
    Role,
    Content,
    Done,
}

struct StreamState {
    rx: UnboundedReceiver<ChatEvent>,
    meta: CompletionMeta,
    prompt_tokens: usize,
    include_usage: bool,
    phase: StreamPhase,
}

impl StreamState {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        format!("data: {chunk}\n\n")
    }
}

fn stream_response(
    rx: UnboundedReceiver<ChatEvent>,
    meta: CompletionMeta,
    prompt_tokens: usize,
    include_usage: bool,
) -> Response {
    let state = StreamState {
        rx,
        meta,
        prompt_tokens,
        include_usage,
        phase: StreamPhase::Role,
    };
    let frames = futures_util::stream::unfold(state, |mut st| async move {
        let frame = match st.phase {
            StreamPhase::Done => return None,
            StreamPhase::Role => {
                st.phase = StreamPhase::Content;
                st.chunk(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    None,
                )
            }
            StreamPhase::Content => match st.rx.recv().await {
                Some(ChatEvent::Delta(d)) => st.chunk(json!({"content": d}), None),
                Some(ChatEvent::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    st.phase = StreamPhase::Done;
                    let mut out = st.chunk(json!({}), Some(reason.as_str()));
                    if st.include_usage {
                        let last = json!({
                            "id": st.meta.id,
                            "object": "chat.completion.chunk",
                            "created": st.meta.created,
                            "model": st.meta.model,
                            "system_fingerprint": null,
                            "choices": [],
                            "usage": usage(prompt_tokens.max(st.prompt_tokens), completion_tokens),
                        });
                        out.push_str(&format!("data: {last}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                    out
                }
                Some(ChatEvent::Started { .. }) => String::new(),
                Some(ChatEvent::Failed(e)) => {
                    st.phase = StreamPhase::Done;
                    format!("data: {}\n\n", e.to_json())
                }
                None => {
                    st.phase = StreamPhase::Done;
                    let e = ApiError::Internal("the worker dropped the request".into());
                    format!("data: {}\n\n", e.to_json())
                }
            },
        };
        Some((Ok::<_, Infallible>(Bytes::from(frame)), st))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| error_response(&ApiError::Internal("building the stream".into())))
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: EmbeddingInput,
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<serde::de::IgnoredAny>),
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embeddings_inner(state, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn embeddings_inner(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = parse_body(body)?;
    let inputs = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
        EmbeddingInput::Tokens(items) => {
            return Err(ApiError::invalid(
                format!(
                    "'input' must be a string or an array of strings (got an array of {} non-string items; token arrays are not supported).",
                    items.len()
                ),
                Some("input"),
            ))
        }
    };
    if inputs.is_empty() || inputs.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "'input' must be a non-empty string or a non-empty array of non-empty strings.",
            Some("input"),
        ));
    }
    if inputs.len() > state.limits.max_embedding_inputs {
        return Err(ApiError::TooLarge(format!(
            "'input' has {} items; at most {} are accepted per request.",
            inputs.len(),
            state.limits.max_embedding_inputs
        )));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'encoding_format' must be 'float' or 'base64', not '{other}'."),
                Some("encoding_format"),
            ))
        }
    };
    let result = state.engine.embed(&req.model, inputs).await?;
    let data: Vec<Value> = result
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }))
    .into_response())
}

async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = state
        .engine
        .models()
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "created": state.started,
                "owned_by": "switchyard",
                "kind": match m.kind { ModelKind::Chat => "chat", ModelKind::Embedding => "embedding" },
                "state": m.state.as_str(),
                "load_time_ms": m.load_ms,
                "pinned": m.pinned,
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.engine.ready();
    let models: Value = state
        .engine
        .models()
        .into_iter()
        .filter(|m| m.pinned)
        .map(|m| (m.id, Value::from(m.state.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ready { "ok" } else { "loading" }, "pinned": models});
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.render_metrics(),
    )
        .into_response()
}
