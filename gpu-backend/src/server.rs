//! The OpenAI-compatible HTTP API over the [`Engine`].
//!
//! The OpenAI schema is not declared here: requests parse into `switchyard-core`'s canonical
//! types and answers (responses, stream chunks, embeddings) are encoded with the core's
//! OpenAI types and encoders, the code the gateway uses, so the gateway and this backend
//! cannot drift apart on the wire (the hermesllm pattern).
//!
//! Bodies are parsed by hand from bytes (not axum's `Json` extractor) so that every failure,
//! including a body over the size limit, is answered in OpenAI's error JSON with OpenAI's
//! status, which is what the gateway and the OpenAI SDKs expect from a provider.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use switchyard_core::canonical::{
    ChatRequest, ChatResponse, Content, ContentPart, EmbeddingVector, EmbeddingsRequest,
    EmbeddingsResponse, Message, Role,
};
use switchyard_core::ingress::openai::{self, OpenAiStreamEncoder};
use switchyard_core::stream::{StreamEncoder, StreamEvent};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::chat_model::ChatMessage;
use crate::engine::{ChatEvent, Engine, GenerateRequest, SamplingParams};
use crate::error::ApiError;
use crate::whisper::api::AudioLimits;

/// Request-size limits of the HTTP layer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most strings in one embeddings request; more gets 413.
    pub max_embedding_inputs: usize,
    /// Upload size and audio length bounds of `/v1/audio/transcriptions` (its body limit is
    /// `audio.max_bytes`, not `max_body_bytes`).
    pub audio: AudioLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_embedding_inputs: 2048,
            audio: AudioLimits::default(),
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
        .route(
            "/v1/audio/transcriptions",
            // Its own body limit: reading a larger upload fails with 413 in the handler.
            post(transcriptions).layer(DefaultBodyLimit::max(limits.audio.max_bytes)),
        )
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

/// Flattens one message to the text the chat template renders. The template has one system
/// role; `developer` is OpenAI's newer name for it.
fn flatten_message(m: Message, index: usize) -> Result<ChatMessage, ApiError> {
    let role = match m.role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part {
                    ContentPart::Text { text: t } => text.push_str(&t),
                    ContentPart::ImageUrl { .. } => {
                        return Err(ApiError::invalid(
                            "Content part type 'image_url' is not supported by this model.",
                            Some(&format!("messages[{index}].content")),
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
    })
}

/// The parts of a chat request the HTTP layer needs after handing it to the engine.
struct ChatOptions {
    stream: bool,
    include_usage: bool,
}

/// Checks the request and turns it into the engine's form.
fn to_generate(req: ChatRequest) -> Result<(GenerateRequest, ChatOptions), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must not be empty.",
            Some("messages"),
        ));
    }
    if req.extra.get("n").is_some_and(|n| n.as_u64() != Some(1)) {
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
    let max_tokens = match req.output_limit() {
        Some(0) => {
            return Err(ApiError::invalid(
                "'max_tokens' must be at least 1.",
                Some("max_tokens"),
            ))
        }
        limit => limit.map(|n| n as usize),
    };
    let stop = req.stop_sequences();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "'stop' takes up to 4 non-empty strings.",
            Some("stop"),
        ));
    }
    let options = ChatOptions {
        stream: req.stream,
        include_usage: req.wants_stream_usage(),
    };
    let seed = req.seed.map_or_else(rand::random::<u64>, |s| s as u64);
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| flatten_message(m, i))
        .collect::<Result<Vec<_>, _>>()?;
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
        options,
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
    let req: ChatRequest = parse_body(body)?;
    let (request, options) = to_generate(req)?;
    let model = request.model.clone();
    let mut rx = state.engine.generate(request)?;
    // Wait until the sequence is admitted, so admission errors still get a proper status.
    match rx.recv().await {
        Some(ChatEvent::Started) => {}
        Some(ChatEvent::Failed(e)) => return Err(e),
        _ => return Err(ApiError::Internal("the worker dropped the request".into())),
    }
    let id = format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32);
    let created = unix_now();
    if options.stream {
        let encoder = OpenAiStreamEncoder::new(id, model, created, options.include_usage);
        Ok(stream_response(rx, encoder))
    } else {
        collect_response(rx, id, model, created).await
    }
}

async fn collect_response(
    mut rx: UnboundedReceiver<ChatEvent>,
    id: String,
    model: String,
    created: u64,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(ChatEvent::Delta(d)) => text.push_str(&d),
            Some(ChatEvent::Finished { reason, usage }) => {
                let response = ChatResponse {
                    id,
                    model,
                    created,
                    text: Some(text),
                    tool_calls: Vec::new(),
                    reasoning: Vec::new(),
                    finish_reason: Some(reason),
                    usage,
                };
                let body = openai::encode_response(&response);
                return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
            }
            Some(ChatEvent::Failed(e)) => return Err(e),
            Some(ChatEvent::Started) => {}
            None => return Err(ApiError::Internal("the worker dropped the request".into())),
        }
    }
}

/// Streams the engine's events as OpenAI chunks through the core's encoder: the role chunk
/// at once, a chunk per delta, then the finish chunk, the usage chunk when asked for, and
/// `[DONE]`. A failure ends the stream with an OpenAI error frame.
fn stream_response(rx: UnboundedReceiver<ChatEvent>, encoder: OpenAiStreamEncoder) -> Response {
    let frames = futures_util::stream::unfold(Some((rx, encoder, true)), |state| async move {
        let (mut rx, mut enc, first) = state?;
        let mut out = Vec::new();
        if first {
            // Empty id and model keep the encoder's own.
            let start = StreamEvent::Start {
                id: String::new(),
                model: String::new(),
            };
            enc.encode(&start, &mut out);
            return Some((
                Ok::<_, Infallible>(Bytes::from(out)),
                Some((rx, enc, false)),
            ));
        }
        let go_on = match rx.recv().await {
            Some(ChatEvent::Delta(d)) => {
                enc.encode(&StreamEvent::Text(d), &mut out);
                true
            }
            Some(ChatEvent::Started) => true,
            Some(ChatEvent::Finished { reason, usage }) => {
                enc.encode(&StreamEvent::Finish(reason), &mut out);
                enc.encode(&StreamEvent::Usage(usage), &mut out);
                enc.finish(&mut out);
                false
            }
            Some(ChatEvent::Failed(e)) => {
                error_frame(&e, &mut out);
                false
            }
            None => {
                let e = ApiError::Internal("the worker dropped the request".into());
                error_frame(&e, &mut out);
                false
            }
        };
        Some((Ok(Bytes::from(out)), go_on.then_some((rx, enc, false))))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| error_response(&ApiError::Internal("building the stream".into())))
}

/// An error inside a stream: one `data:` frame with the OpenAI error body, which the
/// OpenAI SDKs raise as an `APIError`.
fn error_frame(e: &ApiError, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("data: {}\n\n", e.to_json()).as_bytes());
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
    let req: EmbeddingsRequest = parse_body(body)?;
    let inputs: Vec<String> = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::Array(items) => {
            return Err(ApiError::invalid(
                format!(
                    "'input' must be a string or an array of strings (got an array of {} non-string items; token arrays are not supported).",
                    items.len()
                ),
                Some("input"),
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "'input' must be a string or an array of strings.",
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
    let base64 = match req.extra.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'encoding_format' must be 'float' or 'base64', not {other}."),
                Some("encoding_format"),
            ))
        }
    };
    let result = state.engine.embed(&req.model, inputs).await?;
    let vectors = result
        .vectors
        .into_iter()
        .map(|v| match base64 {
            true => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            false => EmbeddingVector::Float(v),
        })
        .collect();
    let response = EmbeddingsResponse::new(req.model, vectors, result.prompt_tokens as u64);
    Ok(axum::Json(response).into_response())
}

async fn transcriptions(
    State(state): State<Arc<AppState>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    crate::whisper::api::transcribe(&state.engine, state.limits.audio, multipart)
        .await
        .unwrap_or_else(|e| error_response(&e))
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
                "kind": m.kind.as_str(),
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
