//! Alibaba DashScope native text generation (Qwen):
//! `POST /api/v1/services/aigc/text-generation/generation`.
//!
//! Wire format: <https://www.alibabacloud.com/help/en/model-studio/use-qwen-by-calling-api>
//! (fixtures in `filter/core/tests/fixtures/dashscope/` note their source).
//!
//! Mapping choices worth knowing:
//! - Streams are asked for with `X-DashScope-SSE: enable` and `incremental_output: true`, so
//!   every event carries only new text (without it DashScope repeats the whole answer so far).
//! - Messages keep the OpenAI shape DashScope accepts; `developer` becomes `system`, and tool
//!   results carry both `tool_call_id` and the function `name`, which older models need.
//! - `tool_choice: "required"` has no DashScope equivalent and is sent as `auto`; both
//!   `json_object` and `json_schema` response formats become `{"type":"json_object"}`.
//! - This endpoint takes text only: image parts are refused with a 400 rather than dropped.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, FunctionCall, Message, ResponseFormat,
    Role, TokenUsage, ToolCall, ToolChoice,
};
use crate::error::{ErrorKind, GatewayError};
use crate::providers::{error_message, json_instruction, redact, tool_name_for, EgressRequest};
use crate::stream::{malformed, SseFrameDecoder, SseStreamDecoder, StreamEvent};

/// Native path of text generation (after the base URL prefix).
pub const GENERATION_PATH: &str = "/api/v1/services/aigc/text-generation/generation";

fn role_str(role: Role) -> &'static str {
    match role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn text_of(message: &Message) -> Result<String, GatewayError> {
    if message
        .parts()
        .iter()
        .any(|p| matches!(p, ContentPart::ImageUrl { .. }))
    {
        return Err(GatewayError::invalid(
            "DashScope text generation accepts text only; use a vision model endpoint for images",
        )
        .with_param("messages"));
    }
    Ok(message.text_content())
}

/// Builds a DashScope request from canonical form.
pub fn build_chat(req: &ChatRequest, upstream_model: &str) -> Result<EgressRequest, GatewayError> {
    let body = request_body(req, upstream_model)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if req.stream {
        headers.push(("x-dashscope-sse".into(), "enable".into()));
        headers.push(("accept".into(), "text/event-stream".into()));
    }
    Ok(EgressRequest {
        path: GENERATION_PATH.to_string(),
        headers,
        body,
    })
}

/// The DashScope request body as JSON (exposed for tests).
pub fn request_body(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, message) in req.messages.iter().enumerate() {
        let mut m = json!({"role": role_str(message.role), "content": text_of(message)?});
        if let Some(calls) = message.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            m["tool_calls"] = Value::Array(
                calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.function.name, "arguments": c.function.arguments}})
                    })
                    .collect(),
            );
        }
        if message.role == Role::Tool {
            if let Some(id) = &message.tool_call_id {
                m["tool_call_id"] = json!(id);
                if let Some(name) =
                    tool_name_for(&req.messages[..i], id).or_else(|| message.name.clone())
                {
                    m["name"] = json!(name);
                }
            }
        }
        messages.push(m);
    }
    // DashScope's JSON mode takes no schema: the schema goes in as an instruction.
    if let Some(instruction) = req
        .response_format
        .as_ref()
        .filter(|f| matches!(f, ResponseFormat::JsonSchema { .. }))
        .and_then(json_instruction)
    {
        match messages.first_mut() {
            Some(first) if first["role"] == "system" => {
                let text = format!(
                    "{}\n\n{instruction}",
                    first["content"].as_str().unwrap_or("")
                );
                first["content"] = json!(text);
            }
            _ => messages.insert(0, json!({"role": "system", "content": instruction})),
        }
    }
    let mut parameters = Map::new();
    parameters.insert("result_format".into(), json!("message"));
    if req.stream {
        parameters.insert("incremental_output".into(), json!(true));
    }
    if let Some(t) = req.temperature {
        parameters.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        parameters.insert("top_p".into(), json!(p));
    }
    for field in ["top_k", "presence_penalty"] {
        if let Some(v) = req.extra.get(field).filter(|v| !v.is_null()) {
            parameters.insert(field.into(), v.clone());
        }
    }
    if let Some(n) = req.output_limit() {
        parameters.insert("max_tokens".into(), json!(n));
    }
    let stops = req.stop_sequences();
    if !stops.is_empty() {
        parameters.insert("stop".into(), json!(stops));
    }
    if let Some(seed) = req.seed {
        parameters.insert("seed".into(), json!(seed));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        parameters.insert(
            "tools".into(),
            serde_json::to_value(tools).map_err(|e| {
                GatewayError::new(ErrorKind::Internal, format!("encoding tools: {e}"))
            })?,
        );
    }
    match &req.tool_choice {
        Some(ToolChoice::Mode(m)) if m == "none" => {
            parameters.insert("tool_choice".into(), json!("none"));
        }
        Some(ToolChoice::Mode(_)) => {
            parameters.insert("tool_choice".into(), json!("auto"));
        }
        Some(ToolChoice::Named { function, .. }) => {
            parameters.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": function.name}}),
            );
        }
        None => {}
    }
    if let Some(parallel) = req
        .extra
        .get("parallel_tool_calls")
        .filter(|v| v.is_boolean())
    {
        parameters.insert("parallel_tool_calls".into(), parallel.clone());
    }
    if matches!(
        req.response_format,
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
    ) {
        parameters.insert("response_format".into(), json!({"type": "json_object"}));
    }
    Ok(json!({
        "model": upstream_model,
        "input": {"messages": messages},
        "parameters": parameters,
    }))
}

#[derive(Deserialize, Default)]
struct WireResponse {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    output: Option<WireOutput>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// Present on errors (also inside streams).
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireOutput {
    #[serde(default)]
    choices: Vec<WireChoice>,
    /// `result_format: "text"` answers (older models ignore `message`).
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
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

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize, Default)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl WireUsage {
    fn canonical(&self) -> TokenUsage {
        TokenUsage {
            input: self.input_tokens,
            output: self.output_tokens,
            cached_input: self
                .prompt_tokens_details
                .as_ref()
                .map_or(0, |d| d.cached_tokens),
            // Not read: the reasoning breakdown is not in the documented answer the
            // double and the fixtures follow.
            reasoning: 0,
        }
    }
}

/// DashScope writes the string `"null"` while a stream is still running.
fn finish_reason(s: &str) -> Option<FinishReason> {
    match s {
        "" | "null" => None,
        "length" => Some(FinishReason::Length),
        "tool_calls" => Some(FinishReason::ToolCalls),
        "content_filter" | "data_inspection_failed" => Some(FinishReason::ContentFilter),
        _ => Some(FinishReason::Stop),
    }
}

/// Message content is a string, or (for some models) a list of `{"text": ...}` items.
fn content_text(content: Option<Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.get("text").and_then(Value::as_str))
                .collect(),
        ),
        _ => None,
    }
}

fn bad_gateway(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::new(
        ErrorKind::BadGateway,
        format!("upstream returned an invalid DashScope response: {e}"),
    )
}

/// Parses a complete DashScope response.
pub fn parse_chat(body: &[u8]) -> Result<ChatResponse, GatewayError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(bad_gateway)?;
    let output = wire
        .output
        .ok_or_else(|| bad_gateway("the response has no `output`"))?;
    let (text, tool_calls, finish) = match output.choices.into_iter().next() {
        Some(choice) => {
            let message = choice.message.unwrap_or_default();
            let calls = message
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    let f = t.function?;
                    Some(ToolCall {
                        id: t
                            .id
                            .filter(|id| !id.is_empty())
                            .unwrap_or_else(|| format!("call_{i}")),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: f.name.unwrap_or_default(),
                            arguments: f.arguments.unwrap_or_default(),
                        },
                        signature: None,
                    })
                })
                .collect();
            (content_text(message.content), calls, choice.finish_reason)
        }
        None => (output.text, Vec::new(), output.finish_reason),
    };
    Ok(ChatResponse {
        id: wire.request_id,
        model: String::new(),
        created: 0,
        text: text.filter(|t| !t.is_empty()),
        tool_calls,
        reasoning: Vec::new(),
        finish_reason: finish.as_deref().and_then(finish_reason),
        usage: wire.usage.map(|u| u.canonical()).unwrap_or_default(),
    })
}

/// Translates a DashScope error (`{"code","message","request_id"}`).
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    GatewayError::new(ErrorKind::from_status(status), error_message(body, status))
        .with_status(status)
}

/// Decodes a DashScope SSE stream (`id:`/`event:result`/`:HTTP_STATUS/200` lines and `data:`
/// JSON, one incremental response per event).
#[derive(Default)]
pub struct DashscopeStreamFrames {
    started: bool,
    /// Tool-call indices already announced with `ToolCallStart`.
    tools_started: Vec<u32>,
    finished: bool,
}

/// The Dashscope stream decoder: SSE framing plus [`DashscopeStreamFrames`].
pub type DashscopeStreamDecoder = SseStreamDecoder<DashscopeStreamFrames>;

impl SseFrameDecoder for DashscopeStreamFrames {
    fn decode_frame(
        &mut self,
        event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        let chunk: WireResponse = serde_json::from_str(data).map_err(malformed)?;
        if event == Some("error") || (chunk.output.is_none() && chunk.code.is_some()) {
            out.push(StreamEvent::Error(GatewayError::new(
                error_kind_of_code(chunk.code.as_deref().unwrap_or("")),
                redact(chunk.message.as_deref().unwrap_or("upstream error")),
            )));
            return Ok(());
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.request_id.clone(),
                model: String::new(),
            });
        }
        let mut finish = None;
        if let Some(output) = chunk.output {
            if let Some(choice) = output.choices.into_iter().next() {
                let message = choice.message.unwrap_or_default();
                if let Some(text) = content_text(message.content).filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::Text(text));
                }
                for (pos, call) in message
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    let index = call.index.unwrap_or(pos as u32);
                    let (name, args) = match call.function {
                        Some(f) => (f.name.unwrap_or_default(), f.arguments.unwrap_or_default()),
                        None => (String::new(), String::new()),
                    };
                    let id = call.id.unwrap_or_default();
                    let named = !id.is_empty() || !name.is_empty();
                    if named && !self.tools_started.contains(&index) {
                        self.tools_started.push(index);
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: if id.is_empty() {
                                format!("call_{index}")
                            } else {
                                id
                            },
                            name,
                            signature: None,
                        });
                    }
                    if !args.is_empty() {
                        out.push(StreamEvent::ToolCallArgs {
                            index,
                            arguments: args,
                        });
                    }
                }
                finish = choice.finish_reason.as_deref().and_then(finish_reason);
            } else if let Some(text) = output.text.filter(|t| !t.is_empty()) {
                out.push(StreamEvent::Text(text));
                finish = output.finish_reason.as_deref().and_then(finish_reason);
            }
        }
        if let Some(u) = chunk.usage {
            out.push(StreamEvent::Usage(u.canonical()));
        }
        if let Some(reason) = finish.filter(|_| !self.finished) {
            self.finished = true;
            out.push(StreamEvent::Finish(reason));
        }
        Ok(())
    }
}

/// Maps DashScope's error codes (seen inside streams, without an HTTP status).
fn error_kind_of_code(code: &str) -> ErrorKind {
    match code {
        "InvalidApiKey" => ErrorKind::Authentication,
        "AccessDenied" | "Arrearage" => ErrorKind::PermissionDenied,
        "ModelNotFound" => ErrorKind::NotFound,
        "DataInspectionFailed" | "InvalidParameter" => ErrorKind::InvalidRequest,
        c if c.starts_with("Throttling") => ErrorKind::RateLimited,
        "RequestTimeOut" => ErrorKind::Timeout,
        _ => ErrorKind::BadGateway,
    }
}
