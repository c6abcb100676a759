//! Cohere Chat API v2: egress to `POST /v2/chat` (streamed as typed SSE events).
//!
//! Wire format: <https://docs.cohere.com/reference/chat>, streaming
//! <https://docs.cohere.com/v2/docs/streaming> and tool use
//! <https://docs.cohere.com/v2/docs/tool-use-streaming> (fixtures in
//! `filter/core/tests/fixtures/cohere/` note their source).
//!
//! Mapping choices worth knowing:
//! - An assistant turn that calls tools carries its text as `tool_plan` (Cohere's place for
//!   the reasoning before a call), and its calls as `tool_calls`.
//! - `tool_choice` is `REQUIRED` or `NONE` (Cohere has no `auto`: it is the default, and no
//!   named choice): a named function becomes `REQUIRED` with only that tool declared.
//! - `top_p` is `p`; `seed`, penalties and `stop_sequences` keep their meaning; both JSON
//!   response formats become `{"type": "json_object"}` (with the schema when there is one).
//! - Usage is metered from `billed_units` (what Cohere charges), falling back to `tokens`;
//!   `cached_tokens` are cached input.
//! - Stream events (`message-start`, `content-delta`, `tool-plan-delta`, `tool-call-start`,
//!   `tool-call-delta`, `tool-call-end`, `message-end`) map one to one; `Finish` comes with
//!   `message-end`, the last event, which also carries the usage.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, RawJson, ResponseFormat, Role,
    TokenUsage, ToolCall, ToolChoice,
};
use crate::error::{ErrorKind, GatewayError};
use crate::providers::{error_message, redact, EgressRequest};
use crate::stream::{malformed, SseFrameDecoder, SseStreamDecoder, StreamEvent};

/// Native path of Chat v2 (after the base URL prefix).
pub const CHAT_PATH: &str = "/v2/chat";

fn role_str(role: Role) -> &'static str {
    match role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn content(parts: Vec<ContentPart>) -> Value {
    match parts.as_slice() {
        [ContentPart::Text { text }] => json!(text),
        _ => Value::Array(
            parts
                .into_iter()
                .map(|p| match p {
                    ContentPart::Text { text } => json!({"type": "text", "text": text}),
                    ContentPart::ImageUrl { image_url } => {
                        json!({"type": "image_url", "image_url": {"url": image_url.url}})
                    }
                })
                .collect(),
        ),
    }
}

/// Builds a Cohere v2 chat request from canonical form.
pub fn build_chat(req: &ChatRequest, upstream_model: &str) -> Result<EgressRequest, GatewayError> {
    let body = request_body(req, upstream_model)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    Ok(EgressRequest {
        path: CHAT_PATH.to_string(),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    })
}

/// The Cohere request body as JSON (exposed for tests).
pub fn request_body(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    let mut messages = Vec::with_capacity(req.messages.len());
    for message in &req.messages {
        let parts: Vec<ContentPart> = message
            .parts()
            .into_iter()
            .filter(|p| !matches!(p, ContentPart::Text { text } if text.is_empty()))
            .collect();
        let mut m = json!({"role": role_str(message.role)});
        match message.role {
            Role::Assistant if message.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) => {
                let calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|c| {
                        json!({"id": c.id, "type": "function", "function": {
                            "name": c.function.name,
                            "arguments": if c.function.arguments.trim().is_empty() {
                                "{}"
                            } else {
                                c.function.arguments.as_str()
                            },
                        }})
                    })
                    .collect();
                m["tool_calls"] = Value::Array(calls);
                let text = message.text_content();
                if !text.is_empty() {
                    m["tool_plan"] = json!(text);
                }
            }
            Role::Tool => {
                let id = message.tool_call_id.clone().ok_or_else(|| {
                    GatewayError::invalid("a `tool` message needs `tool_call_id`")
                        .with_param("messages")
                })?;
                m["tool_call_id"] = json!(id);
                m["content"] = json!(message.text_content());
            }
            _ => {
                if parts.is_empty() {
                    continue;
                }
                m["content"] = content(parts);
            }
        }
        messages.push(m);
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("messages".into(), Value::Array(messages));
    let mut tools: Vec<&crate::canonical::Tool> = req.tools.iter().flatten().collect();
    match &req.tool_choice {
        Some(ToolChoice::Mode(m)) if m == "required" => {
            body.insert("tool_choice".into(), json!("REQUIRED"));
        }
        Some(ToolChoice::Mode(m)) if m == "none" => {
            body.insert("tool_choice".into(), json!("NONE"));
        }
        Some(ToolChoice::Named { function, .. }) => {
            tools.retain(|t| t.function.name == function.name);
            body.insert("tool_choice".into(), json!("REQUIRED"));
        }
        _ => {}
    }
    if !tools.is_empty() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({
                    "name": t.function.name,
                    "parameters": t.function.parameters.as_ref().map(RawJson::to_value)
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = &t.function.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if req.stream {
        body.insert("stream".into(), json!(true));
    }
    if let Some(n) = req.output_limit() {
        body.insert("max_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("p".into(), json!(p));
    }
    if let Some(k) = req.extra.get("top_k").filter(|v| !v.is_null()) {
        body.insert("k".into(), k.clone());
    }
    let stops = req.stop_sequences();
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), json!(stops));
    }
    if let Some(seed) = req.seed {
        body.insert("seed".into(), json!(seed));
    }
    for penalty in ["frequency_penalty", "presence_penalty"] {
        if let Some(v) = req.extra.get(penalty) {
            body.insert(penalty.into(), v.clone());
        }
    }
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let mut format = json!({"type": "json_object"});
            if let Some(schema) = &json_schema.schema {
                format["json_schema"] = schema.clone();
            }
            body.insert("response_format".into(), format);
        }
        Some(ResponseFormat::Text) | None => {}
    }
    Ok(Value::Object(body))
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    billed_units: Option<WireCounts>,
    #[serde(default)]
    tokens: Option<WireCounts>,
    #[serde(default)]
    cached_tokens: Option<f64>,
}

/// Cohere reports counts as numbers that may be written as floats (`12.0`).
#[derive(Deserialize, Default)]
struct WireCounts {
    #[serde(default)]
    input_tokens: Option<f64>,
    #[serde(default)]
    output_tokens: Option<f64>,
}

fn count(n: Option<f64>) -> u64 {
    n.filter(|n| n.is_finite() && *n > 0.0)
        .map_or(0, |n| n as u64)
}

impl WireUsage {
    fn canonical(&self) -> TokenUsage {
        let billed = self.billed_units.as_ref();
        let tokens = self.tokens.as_ref();
        let pick =
            |f: fn(&WireCounts) -> Option<f64>| billed.and_then(f).or_else(|| tokens.and_then(f));
        TokenUsage {
            input: count(pick(|c| c.input_tokens)),
            output: count(pick(|c| c.output_tokens)),
            cached_input: count(self.cached_tokens),
            // Cohere reports no reasoning breakdown.
            reasoning: 0,
        }
    }
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "MAX_TOKENS" => FinishReason::Length,
        "TOOL_CALL" => FinishReason::ToolCalls,
        // Cohere's content filter stopped the answer.
        "ERROR_TOXIC" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    #[serde(default)]
    content: Option<Vec<WireContent>>,
    #[serde(default)]
    tool_plan: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: String,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Parses a complete Cohere v2 chat response.
pub fn parse_chat(body: &[u8]) -> Result<ChatResponse, GatewayError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::BadGateway,
            format!("upstream returned an invalid Cohere chat response: {e}"),
        )
    })?;
    let message = wire.message.unwrap_or_default();
    let mut text: Option<String> = None;
    for c in message.content.unwrap_or_default() {
        if let Some(t) = c.text.filter(|_| c.kind == "text") {
            text.get_or_insert_with(String::new).push_str(&t);
        }
    }
    let tool_calls: Vec<ToolCall> = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| {
            let f = c.function?;
            Some(ToolCall::function(
                c.id,
                f.name.unwrap_or_default(),
                f.arguments.unwrap_or_else(|| "{}".into()),
            ))
        })
        .collect();
    // The tool plan is the text of a turn that calls tools.
    if text.is_none() && !tool_calls.is_empty() {
        text = message.tool_plan.filter(|p| !p.is_empty());
    }
    Ok(ChatResponse {
        id: wire.id,
        model: String::new(),
        created: 0,
        text,
        tool_calls,
        reasoning: Vec::new(),
        finish_reason: wire.finish_reason.as_deref().map(finish_reason),
        usage: wire.usage.map(|u| u.canonical()).unwrap_or_default(),
    })
}

/// Translates a Cohere error (`{"id": ..., "message": ...}`), keeping its status.
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    GatewayError::new(ErrorKind::from_status(status), error_message(body, status))
        .with_status(status)
}

/// Decodes a Cohere v2 chat stream.
#[derive(Default)]
pub struct CohereStreamFrames {
    started: bool,
    /// Event `index` → tool-call index, for the tool calls started so far.
    tool_calls: Vec<(u64, u32)>,
    finished: bool,
}

/// The Cohere stream decoder: SSE framing plus [`CohereStreamFrames`].
pub type CohereStreamDecoder = SseStreamDecoder<CohereStreamFrames>;

#[derive(Deserialize)]
struct WireEvent {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    message: Option<WireDeltaMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireDeltaMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_plan: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

impl SseFrameDecoder for CohereStreamFrames {
    fn decode_frame(
        &mut self,
        event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        let wire: WireEvent = serde_json::from_str(data).map_err(malformed)?;
        let kind = if wire.kind.is_empty() {
            event.unwrap_or("")
        } else {
            wire.kind.as_str()
        };
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: wire.id.clone().unwrap_or_default(),
                model: String::new(),
            });
        }
        let message = wire.delta.as_ref().and_then(|d| d.message.as_ref());
        match kind {
            "content-delta" => {
                let text = message
                    .and_then(|m| m.content.as_ref())
                    .and_then(|c| c.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !text.is_empty() {
                    out.push(StreamEvent::Text(text.to_string()));
                }
            }
            "tool-plan-delta" => {
                // The plan is the text of a turn that calls tools.
                if let Some(plan) = message.and_then(|m| m.tool_plan.as_ref()) {
                    if !plan.is_empty() {
                        out.push(StreamEvent::Text(plan.clone()));
                    }
                }
            }
            "tool-call-start" => {
                let call = message.and_then(|m| m.tool_calls.as_ref());
                let index = self.tool_calls.len() as u32;
                self.tool_calls.push((wire.index.unwrap_or(0), index));
                let id = call.and_then(|c| c.get("id")).and_then(Value::as_str);
                let name = call
                    .and_then(|c| c.pointer("/function/name"))
                    .and_then(Value::as_str);
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: id.unwrap_or_default().to_string(),
                    name: name.unwrap_or_default().to_string(),
                    signature: None,
                });
                let args = call
                    .and_then(|c| c.pointer("/function/arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !args.is_empty() {
                    out.push(StreamEvent::ToolCallArgs {
                        index,
                        arguments: args.to_string(),
                    });
                }
            }
            "tool-call-delta" => {
                let args = message
                    .and_then(|m| m.tool_calls.as_ref())
                    .and_then(|c| c.pointer("/function/arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let at = wire.index.unwrap_or(0);
                if let Some(&(_, index)) = self.tool_calls.iter().rev().find(|(i, _)| *i == at) {
                    if !args.is_empty() {
                        out.push(StreamEvent::ToolCallArgs {
                            index,
                            arguments: args.to_string(),
                        });
                    }
                }
            }
            "message-end" => {
                let delta = wire.delta.as_ref();
                if let Some(u) = delta.and_then(|d| d.usage.as_ref()) {
                    out.push(StreamEvent::Usage(u.canonical()));
                }
                let reason = delta.and_then(|d| d.finish_reason.as_deref());
                if reason == Some("ERROR") {
                    out.push(StreamEvent::Error(GatewayError::new(
                        ErrorKind::BadGateway,
                        "the upstream model stopped with an error",
                    )));
                } else if !self.finished {
                    self.finished = true;
                    out.push(StreamEvent::Finish(
                        reason.map_or(FinishReason::Stop, finish_reason),
                    ));
                }
            }
            // An error inside the stream (Cohere sends `{"message": ...}` there).
            _ if wire.message.is_some() && wire.delta.is_none() => {
                out.push(StreamEvent::Error(GatewayError::new(
                    ErrorKind::BadGateway,
                    redact(wire.message.as_deref().unwrap_or("upstream error")),
                )));
            }
            // `message-start`, `content-start`, `content-end`, `tool-call-end`,
            // `citation-start`/`-end` and `debug` carry nothing the canonical stream needs.
            _ => {}
        }
        Ok(())
    }
}
