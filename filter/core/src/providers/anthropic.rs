//! Anthropic Messages: egress to `POST /v1/messages`, and the Anthropic ingress dialect
//! (requests decoded from, responses and streams encoded for, Anthropic SDK clients).
//!
//! Both directions live in one module because they share one wire schema: the blocks an
//! Anthropic SDK sends are the blocks Anthropic's API accepts.
//!
//! Wire format: <https://docs.anthropic.com/en/api/messages> and
//! <https://docs.anthropic.com/en/docs/build-with-claude/streaming> (fixtures in
//! `filter/core/tests/fixtures/anthropic/` note their source).
//!
//! Mapping choices worth knowing:
//! - canonical `system` and `developer` messages, wherever they appear, merge (in order) into
//!   Anthropic's single top-level `system`, because Anthropic has no system role in `messages`.
//! - canonical `tool` messages become `tool_result` blocks in a `user` message, and consecutive
//!   messages of the same Anthropic role merge, because Anthropic requires alternating roles
//!   and all results of one assistant turn in the next user turn.
//! - `response_format` has no native equivalent: `json_object`/`json_schema` become an
//!   instruction appended to `system` (with the schema). A forced tool would be stricter but
//!   would turn the answer into a `tool_use` block the client did not ask for.
//! - Anthropic's `input_tokens` excludes cache reads and writes; canonical `input` includes
//!   them, so they are added on the way in and subtracted on the way out.
//! - A `tool_result` with `is_error: true` has no canonical flag; its text is prefixed with
//!   `Error: ` so any upstream model still sees that the tool failed.
//! - Anthropic-only request fields the canonical form cannot carry (`top_k`, `thinking`,
//!   `cache_control`) are dropped when translating to another provider; the Anthropic →
//!   Anthropic fast path ([`AnthropicPassthroughStream`], `Plan`'s body patch) keeps them.
//! - The canonical finish reason does not say which stop sequence matched, so a translated
//!   answer reports `end_turn` with `stop_sequence: null` where Anthropic would have said
//!   `stop_sequence`; cache writes are reported as plain input tokens.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, Content, ContentPart, FinishReason, FunctionCall, FunctionDef,
    ImageUrl, Message, NamedFunction, ResponseFormat, Role, Stop, TokenUsage, Tool, ToolCall,
    ToolChoice,
};
use crate::error::{Dialect, ErrorKind, GatewayError};
use crate::providers::{error_message, redact, EgressRequest};
use crate::sse::{write_event, SseEvent, SseParser};
use crate::stream::{malformed, SseFrameDecoder, SseStreamDecoder, StreamEncoder, StreamEvent};

/// Native path of the Messages API (after the base URL prefix).
pub const MESSAGES_PATH: &str = "/v1/messages";
/// The API version this module speaks (sent as `anthropic-version`).
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; used when the client set no limit.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

// ---------------------------------------------------------------------------------------------
// Wire types shared by both directions.
// ---------------------------------------------------------------------------------------------

/// One content block as Anthropic writes it. Unknown block types (thinking, documents,
/// server tool results) are skipped rather than rejected, so new API features do not break
/// old gateways.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    Image {
        source: WireImageSource,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        #[serde(default)]
        tool_use_id: String,
        #[serde(default)]
        content: Option<WireContent>,
        #[serde(default)]
        is_error: bool,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireImageSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    #[serde(other)]
    Other,
}

/// Message content, `tool_result` content and `system`: a string or blocks.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Blocks(Vec<WireBlock>),
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn stop_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

fn image_block(image: &ImageUrl) -> Value {
    match image.as_data() {
        Some((media_type, data)) => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }),
        None => json!({"type": "image", "source": {"type": "url", "url": image.url}}),
    }
}

fn image_part(source: WireImageSource) -> Option<ContentPart> {
    let url = match source {
        WireImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        WireImageSource::Url { url } => url,
        WireImageSource::Other => return None,
    };
    Some(ContentPart::ImageUrl {
        image_url: ImageUrl { url, detail: None },
    })
}

/// Parses tool-call arguments (a JSON string) into the object Anthropic wants as `input`.
fn parse_arguments(arguments: &str) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(GatewayError::invalid(
            "tool call arguments must be a JSON object to be sent to an Anthropic model",
        )
        .with_param("messages")),
    }
}

// ---------------------------------------------------------------------------------------------
// Egress: canonical request → Anthropic request.
// ---------------------------------------------------------------------------------------------

/// Appends blocks to the last message if it has the same role, else starts a new message.
fn push_blocks(
    messages: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    blocks: Vec<Value>,
) {
    if blocks.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(blocks),
        _ => messages.push((role, blocks)),
    }
}

fn content_blocks(message: &Message) -> Vec<Value> {
    message
        .parts()
        .into_iter()
        .map(|part| match part {
            ContentPart::Text { text } => json!({"type": "text", "text": text}),
            ContentPart::ImageUrl { image_url } => image_block(&image_url),
        })
        .filter(|b| b.get("text").and_then(Value::as_str) != Some(""))
        .collect()
}

fn json_instruction(format: &ResponseFormat) -> Option<String> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => {
            Some("Respond with a single JSON object and nothing else.".to_string())
        }
        ResponseFormat::JsonSchema { json_schema } => {
            let schema = json_schema
                .schema
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".to_string());
            Some(format!(
                "Respond with a single JSON value and nothing else. It must conform to the JSON \
                 schema named `{}`: {schema}",
                json_schema.name
            ))
        }
    }
}

/// Builds an Anthropic Messages request from canonical form.
pub fn build_chat(req: &ChatRequest, upstream_model: &str) -> Result<EgressRequest, GatewayError> {
    let body = request_body(req, upstream_model)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    Ok(EgressRequest {
        path: MESSAGES_PATH.to_string(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("anthropic-version".into(), API_VERSION.into()),
        ],
        body,
    })
}

/// The Anthropic request body as JSON (exposed for tests and benchmarks).
pub fn request_body(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &req.messages {
        match message.role {
            Role::System | Role::Developer => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(text);
                }
            }
            Role::User => push_blocks(&mut messages, "user", content_blocks(message)),
            Role::Assistant => {
                let mut blocks = content_blocks(message);
                for call in message.tool_calls.iter().flatten() {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.function.name,
                        "input": parse_arguments(&call.function.arguments)?,
                    }));
                }
                push_blocks(&mut messages, "assistant", blocks);
            }
            Role::Tool => {
                let id = message.tool_call_id.clone().ok_or_else(|| {
                    GatewayError::invalid("a `tool` message needs `tool_call_id`")
                        .with_param("messages")
                })?;
                let content: Vec<Value> = content_blocks(message);
                let block = if content.is_empty() {
                    json!({"type": "tool_result", "tool_use_id": id})
                } else {
                    json!({"type": "tool_result", "tool_use_id": id, "content": content})
                };
                push_blocks(&mut messages, "user", vec![block]);
            }
        }
    }
    if let Some(instruction) = req.response_format.as_ref().and_then(json_instruction) {
        system.push(instruction);
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert(
        "max_tokens".into(),
        json!(req.output_limit().unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    let stops = req.stop_sequences();
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), json!(stops));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut tool = json!({
                    "name": t.function.name,
                    "input_schema": t.function.parameters.clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = &t.function.description {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let parallel_off = req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let choice = match &req.tool_choice {
        None if parallel_off => Some(json!({"type": "auto"})),
        None => None,
        Some(ToolChoice::Mode(m)) => Some(match m.as_str() {
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            _ => json!({"type": "auto"}),
        }),
        Some(ToolChoice::Named { function, .. }) => {
            Some(json!({"type": "tool", "name": function.name}))
        }
    };
    if let Some(mut choice) = choice {
        if parallel_off && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        body.insert("tool_choice".into(), choice);
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

// ---------------------------------------------------------------------------------------------
// Egress: Anthropic response / stream / error → canonical.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

impl WireUsage {
    /// Canonical usage: Anthropic's `input_tokens` excludes cache reads and writes.
    fn canonical(&self) -> TokenUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        TokenUsage {
            input: self.input_tokens.unwrap_or(0)
                + cached
                + self.cache_creation_input_tokens.unwrap_or(0),
            output: self.output_tokens.unwrap_or(0),
            cached_input: cached,
        }
    }
}

/// Parses a complete Anthropic `message`.
pub fn parse_chat(body: &[u8]) -> Result<ChatResponse, GatewayError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::BadGateway,
            format!("upstream returned an invalid Anthropic message: {e}"),
        )
    })?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in wire.content {
        match block {
            WireBlock::Text { text: t } => text.get_or_insert_with(String::new).push_str(&t),
            WireBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: arguments_string(&input),
                },
            }),
            _ => {}
        }
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: 0,
        text,
        tool_calls,
        finish_reason: wire.stop_reason.as_deref().map(finish_reason),
        usage: wire.usage.canonical(),
    })
}

fn arguments_string(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_string(),
        v => v.to_string(),
    }
}

/// The canonical kind of an Anthropic error `type`, for errors that arrive inside a stream
/// (where there is no HTTP status to go by).
fn kind_of_error_type(t: &str) -> ErrorKind {
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

/// Decodes an Anthropic Messages event stream.
///
/// `Finish` is emitted at `message_stop` (with the `stop_reason` remembered from
/// `message_delta`), so a stream cut after `message_delta` still counts as truncated.
#[derive(Default)]
pub struct AnthropicStreamFrames {
    /// Content-block index → tool-call index, for the blocks that are `tool_use`.
    tool_blocks: Vec<(u64, u32)>,
    next_tool: u32,
    stop_reason: Option<FinishReason>,
    usage: WireUsage,
    finished: bool,
}

/// The Anthropic stream decoder: SSE framing plus [`AnthropicStreamFrames`].
pub type AnthropicStreamDecoder = SseStreamDecoder<AnthropicStreamFrames>;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireStreamEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: WireDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        #[serde(default)]
        error: WireErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireStartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireErrorBody {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

impl AnthropicStreamFrames {
    fn merge_usage(&mut self, u: WireUsage) {
        let mine = &mut self.usage;
        mine.input_tokens = u.input_tokens.or(mine.input_tokens);
        mine.output_tokens = u.output_tokens.or(mine.output_tokens);
        mine.cache_read_input_tokens = u.cache_read_input_tokens.or(mine.cache_read_input_tokens);
        mine.cache_creation_input_tokens = u
            .cache_creation_input_tokens
            .or(mine.cache_creation_input_tokens);
    }
}

impl SseFrameDecoder for AnthropicStreamFrames {
    fn decode_frame(
        &mut self,
        _event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        let event: WireStreamEvent = serde_json::from_str(data).map_err(malformed)?;
        match event {
            WireStreamEvent::MessageStart { message } => {
                out.push(StreamEvent::Start {
                    id: message.id,
                    model: message.model,
                });
                if let Some(u) = message.usage {
                    self.merge_usage(u);
                    out.push(StreamEvent::Usage(self.usage.canonical()));
                }
            }
            WireStreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                WireBlock::ToolUse { id, name, input } => {
                    let tool = self.next_tool;
                    self.next_tool += 1;
                    self.tool_blocks.push((index, tool));
                    out.push(StreamEvent::ToolCallStart {
                        index: tool,
                        id,
                        name,
                    });
                    // The start block's `input` is `{}` by convention; anything else is a
                    // complete input sent up front.
                    if input.as_object().is_some_and(|o| !o.is_empty()) {
                        out.push(StreamEvent::ToolCallArgs {
                            index: tool,
                            arguments: input.to_string(),
                        });
                    }
                }
                WireBlock::Text { text } if !text.is_empty() => out.push(StreamEvent::Text(text)),
                _ => {}
            },
            WireStreamEvent::ContentBlockDelta { index, delta } => match delta {
                WireDelta::TextDelta { text } if !text.is_empty() => {
                    out.push(StreamEvent::Text(text))
                }
                WireDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    if let Some(&(_, tool)) = self.tool_blocks.iter().find(|(b, _)| *b == index) {
                        out.push(StreamEvent::ToolCallArgs {
                            index: tool,
                            arguments: partial_json,
                        });
                    }
                }
                _ => {}
            },
            WireStreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(finish_reason(&reason));
                }
                if let Some(u) = usage {
                    self.merge_usage(u);
                    out.push(StreamEvent::Usage(self.usage.canonical()));
                }
            }
            WireStreamEvent::MessageStop {} => {
                if !self.finished {
                    self.finished = true;
                    out.push(StreamEvent::Finish(
                        self.stop_reason.unwrap_or(FinishReason::Stop),
                    ));
                }
            }
            WireStreamEvent::Error { error } => {
                out.push(StreamEvent::Error(GatewayError::new(
                    kind_of_error_type(&error.kind),
                    if error.message.is_empty() {
                        "upstream reported an error".to_string()
                    } else {
                        redact(&error.message)
                    },
                )));
            }
            WireStreamEvent::ContentBlockStop {}
            | WireStreamEvent::Ping {}
            | WireStreamEvent::Other => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Ingress: Anthropic request → canonical request.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct IngressRequest {
    model: String,
    messages: Vec<IngressMessage>,
    #[serde(default)]
    system: Option<WireContent>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<IngressTool>>,
    #[serde(default)]
    tool_choice: Option<IngressToolChoice>,
    #[serde(default)]
    metadata: Option<IngressMetadata>,
}

#[derive(Deserialize)]
struct IngressMessage {
    role: IngressRole,
    content: WireContent,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum IngressRole {
    User,
    Assistant,
}

#[derive(Deserialize)]
struct IngressTool {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum IngressToolChoice {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    None {},
}

#[derive(Deserialize)]
struct IngressMetadata {
    #[serde(default)]
    user_id: Option<String>,
}

/// One text part stays a plain string (the common case); anything else stays parts.
fn parts_to_content(mut parts: Vec<ContentPart>) -> Option<Content> {
    match parts.len() {
        0 => None,
        1 if matches!(parts[0], ContentPart::Text { .. }) => match parts.pop() {
            Some(ContentPart::Text { text }) => Some(Content::Text(text)),
            _ => None,
        },
        _ => Some(Content::Parts(parts)),
    }
}

fn tool_result_content(content: Option<WireContent>, is_error: bool) -> Option<Content> {
    let mut parts = match content {
        None => Vec::new(),
        Some(WireContent::Text(t)) if t.is_empty() => Vec::new(),
        Some(WireContent::Text(t)) => vec![ContentPart::Text { text: t }],
        Some(WireContent::Blocks(blocks)) => blocks
            .into_iter()
            .filter_map(|b| match b {
                WireBlock::Text { text } => Some(ContentPart::Text { text }),
                WireBlock::Image { source } => image_part(source),
                _ => None,
            })
            .collect(),
    };
    if is_error {
        match parts.first_mut() {
            Some(ContentPart::Text { text }) => text.insert_str(0, "Error: "),
            _ => parts.insert(
                0,
                ContentPart::Text {
                    text: "Error".to_string(),
                },
            ),
        }
    }
    parts_to_content(parts)
}

/// Decodes an Anthropic Messages request into canonical form.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, GatewayError> {
    let wire: IngressRequest = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("invalid Messages request: {e}")))?;
    let mut messages = Vec::new();
    match wire.system {
        Some(WireContent::Text(t)) if !t.is_empty() => {
            messages.push(Message::text(Role::System, t))
        }
        Some(WireContent::Blocks(blocks)) => {
            let text: Vec<String> = blocks
                .into_iter()
                .filter_map(|b| match b {
                    WireBlock::Text { text } => Some(text),
                    _ => None,
                })
                .collect();
            if !text.is_empty() {
                messages.push(Message::text(Role::System, text.join("\n")));
            }
        }
        _ => {}
    }
    for message in wire.messages {
        let blocks = match message.content {
            WireContent::Text(t) => vec![WireBlock::Text { text: t }],
            WireContent::Blocks(b) => b,
        };
        match message.role {
            IngressRole::User => decode_user(blocks, &mut messages),
            IngressRole::Assistant => messages.push(decode_assistant(blocks)),
        }
    }
    let mut tools = Vec::new();
    for tool in wire.tools.unwrap_or_default() {
        if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "custom") {
            return Err(GatewayError::invalid(format!(
                "tool `{}` of type `{kind}` is an Anthropic server tool, which the gateway cannot run",
                tool.name
            ))
            .with_param("tools"));
        }
        tools.push(Tool {
            kind: "function".into(),
            function: FunctionDef {
                name: tool.name,
                description: tool.description,
                parameters: tool.input_schema,
                strict: None,
            },
        });
    }
    let mut extra = Map::new();
    let tool_choice = wire.tool_choice.map(|choice| {
        let (choice, no_parallel) = match choice {
            IngressToolChoice::Auto {
                disable_parallel_tool_use,
            } => (ToolChoice::Mode("auto".into()), disable_parallel_tool_use),
            IngressToolChoice::Any {
                disable_parallel_tool_use,
            } => (
                ToolChoice::Mode("required".into()),
                disable_parallel_tool_use,
            ),
            IngressToolChoice::Tool {
                name,
                disable_parallel_tool_use,
            } => (
                ToolChoice::Named {
                    kind: "function".into(),
                    function: NamedFunction { name },
                },
                disable_parallel_tool_use,
            ),
            IngressToolChoice::None {} => (ToolChoice::Mode("none".into()), false),
        };
        if no_parallel {
            extra.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
        choice
    });
    Ok(ChatRequest {
        model: wire.model,
        messages,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        response_format: None,
        stream: wire.stream.unwrap_or(false),
        stream_options: None,
        temperature: wire.temperature,
        top_p: wire.top_p,
        stop: wire
            .stop_sequences
            .filter(|s| !s.is_empty())
            .map(Stop::Many),
        max_tokens: wire.max_tokens,
        max_completion_tokens: None,
        seed: None,
        user: wire.metadata.and_then(|m| m.user_id),
        extra,
    })
}

/// A user turn: `tool_result` blocks become `tool` messages, other blocks user messages,
/// in the order written.
fn decode_user(blocks: Vec<WireBlock>, messages: &mut Vec<Message>) {
    let mut pending: Vec<ContentPart> = Vec::new();
    let flush = |pending: &mut Vec<ContentPart>, messages: &mut Vec<Message>| {
        if let Some(content) = parts_to_content(std::mem::take(pending)) {
            messages.push(Message {
                role: Role::User,
                content: Some(content),
                name: None,
                tool_calls: None,
                tool_call_id: None,
            });
        }
    };
    for block in blocks {
        match block {
            WireBlock::Text { text } => pending.push(ContentPart::Text { text }),
            WireBlock::Image { source } => pending.extend(image_part(source)),
            WireBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                flush(&mut pending, messages);
                messages.push(Message {
                    role: Role::Tool,
                    content: Some(
                        tool_result_content(content, is_error)
                            .unwrap_or_else(|| Content::Text(String::new())),
                    ),
                    name: None,
                    tool_calls: None,
                    tool_call_id: Some(tool_use_id),
                });
            }
            WireBlock::ToolUse { .. } | WireBlock::Other => {}
        }
    }
    flush(&mut pending, messages);
}

/// An assistant turn. Several text blocks stay several text parts: Anthropic merges
/// consecutive assistant messages into one turn, and their boundaries are meaning.
fn decode_assistant(blocks: Vec<WireBlock>) -> Message {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block {
            WireBlock::Text { text } => texts.push(ContentPart::Text { text }),
            WireBlock::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: arguments_string(&input),
                },
            }),
            _ => {}
        }
    }
    Message {
        role: Role::Assistant,
        content: parts_to_content(texts),
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Ingress: canonical response / stream → Anthropic client.
// ---------------------------------------------------------------------------------------------

/// Tool-call arguments as the `input` object an Anthropic client expects. Arguments that are
/// not a JSON object (a model's malformed output) are kept under `_raw` rather than dropped.
fn input_object(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw": arguments}),
    }
}

fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cached_input),
        "output_tokens": u.output,
        "cache_read_input_tokens": u.cached_input,
        "cache_creation_input_tokens": 0,
    })
}

/// Encodes a canonical response as an Anthropic `message` object.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    let mut content = Vec::new();
    if let Some(text) = resp.text.as_ref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &resp.tool_calls {
        content.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.function.name,
            "input": input_object(&call.function.arguments),
        }));
    }
    let body = json!({
        "id": resp.id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": resp.finish_reason.map(stop_reason_str),
        "stop_sequence": null,
        "usage": usage_json(&resp.usage),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq)]
enum OpenBlock {
    Text(u32),
    Tool(u32),
}

/// Encodes canonical stream events as the Anthropic Messages event sequence.
///
/// `message_start` is written lazily, on the first content (or the end), so the input-token
/// count an upstream reports right after its own start can ride in it. `message_delta`
/// waits for the end of the stream because OpenAI-style upstreams report usage after the
/// finish reason.
pub struct AnthropicStreamEncoder {
    id: String,
    model: String,
    started: bool,
    open: Option<OpenBlock>,
    next_block: u32,
    /// Tool-call index → content-block index.
    tool_blocks: Vec<(u32, u32)>,
    finish: Option<FinishReason>,
    usage: TokenUsage,
}

impl AnthropicStreamEncoder {
    /// `id`/`model` are used until (unless) the upstream provides its own.
    pub fn new(id: String, model: String) -> Self {
        AnthropicStreamEncoder {
            id,
            model,
            started: false,
            open: None,
            next_block: 0,
            tool_blocks: Vec::new(),
            finish: None,
            usage: TokenUsage::default(),
        }
    }

    fn event(out: &mut Vec<u8>, name: &str, body: &Value) {
        write_event(out, Some(name), &body.to_string());
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = usage_json(&self.usage);
        Self::event(
            out,
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": usage,
                },
            }),
        );
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.open.take() {
            let index = match block {
                OpenBlock::Text(i) | OpenBlock::Tool(i) => i,
            };
            Self::event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, content_block: Value) -> u32 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        Self::event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        );
        index
    }

    /// Deltas are most of a stream's events, so they are serialised from borrowed structs
    /// rather than built as `Value`s.
    fn delta(out: &mut Vec<u8>, index: u32, delta: Delta<'_>) {
        let event = DeltaEvent {
            kind: "content_block_delta",
            index,
            delta,
        };
        let data = serde_json::to_string(&event).unwrap_or_default();
        write_event(out, Some("content_block_delta"), &data);
    }
}

#[derive(Serialize)]
struct DeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: Delta<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

impl StreamEncoder for AnthropicStreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { id, model } => {
                if !id.is_empty() && !self.started {
                    self.id = id.clone();
                }
                if !model.is_empty() && !self.started {
                    self.model = model.clone();
                }
            }
            StreamEvent::Usage(u) => self.usage.merge_max(*u),
            StreamEvent::Text(text) => {
                self.ensure_started(out);
                let index = match self.open {
                    Some(OpenBlock::Text(i)) => i,
                    _ => {
                        let i = self.open_block(out, json!({"type": "text", "text": ""}));
                        self.open = Some(OpenBlock::Text(i));
                        i
                    }
                };
                Self::delta(out, index, Delta::TextDelta { text });
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                if self.tool_blocks.iter().any(|(t, _)| t == index) {
                    return;
                }
                self.ensure_started(out);
                let block = self.open_block(
                    out,
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                );
                self.open = Some(OpenBlock::Tool(block));
                self.tool_blocks.push((*index, block));
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                // Arguments for a call whose start was never seen cannot be attributed. An
                // upstream that interleaves two calls' arguments gets them sent to the earlier
                // block's index: the SDK accumulators index blocks by `index`.
                if let Some(&(_, block)) = self.tool_blocks.iter().find(|(t, _)| t == index) {
                    self.ensure_started(out);
                    Self::delta(
                        out,
                        block,
                        Delta::InputJsonDelta {
                            partial_json: arguments,
                        },
                    );
                }
            }
            StreamEvent::Finish(reason) => self.finish = Some(*reason),
            StreamEvent::Error(_) => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.ensure_started(out);
        self.close_block(out);
        let mut usage = usage_json(&self.usage);
        if let Some(map) = usage.as_object_mut() {
            map.remove("cache_creation_input_tokens");
        }
        Self::event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason_str(self.finish.unwrap_or(FinishReason::Stop)),
                    "stop_sequence": null,
                },
                "usage": usage,
            }),
        );
        Self::event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn error(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        let body: Value = serde_json::from_slice(&err.body(Dialect::Anthropic)).unwrap_or_default();
        Self::event(out, "error", &body);
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic → Anthropic fast path.
// ---------------------------------------------------------------------------------------------

/// Extracts only `usage` from an Anthropic message body (the pass-through path).
pub fn usage_of(body: &[u8]) -> TokenUsage {
    #[derive(Deserialize)]
    struct OnlyUsage {
        #[serde(default)]
        usage: WireUsage,
    }
    serde_json::from_slice::<OnlyUsage>(body)
        .map(|u| u.usage.canonical())
        .unwrap_or_default()
}

/// The Anthropic → Anthropic stream fast path: events pass through as the upstream wrote
/// them (re-framed, not re-encoded); usage is read on the way, a stream cut before
/// `message_stop` ends in an `error` event, and an upstream `error` event ends the stream.
pub struct AnthropicPassthroughStream {
    sse: SseParser,
    frames: Vec<SseEvent>,
    usage: WireUsage,
    saw_stop: bool,
    done: bool,
    failed: bool,
}

impl Default for AnthropicPassthroughStream {
    fn default() -> Self {
        Self::new()
    }
}

impl AnthropicPassthroughStream {
    /// A pass-through stream at its start.
    pub fn new() -> Self {
        AnthropicPassthroughStream {
            sse: SseParser::new(),
            frames: Vec::new(),
            usage: WireUsage::default(),
            saw_stop: false,
            done: false,
            failed: false,
        }
    }

    fn forward(&mut self, out: &mut Vec<u8>) {
        #[derive(Deserialize)]
        struct Peek {
            #[serde(default, rename = "type")]
            kind: String,
            #[serde(default)]
            message: Option<PeekMessage>,
            #[serde(default)]
            usage: Option<WireUsage>,
        }
        #[derive(Deserialize)]
        struct PeekMessage {
            #[serde(default)]
            usage: Option<WireUsage>,
        }
        for frame in std::mem::take(&mut self.frames) {
            if self.done {
                break;
            }
            match serde_json::from_str::<Peek>(frame.data.trim()) {
                Ok(peek) => {
                    let usage = peek.usage.or(peek.message.and_then(|m| m.usage));
                    if let Some(u) = usage {
                        let mine = &mut self.usage;
                        mine.input_tokens = u.input_tokens.or(mine.input_tokens);
                        mine.output_tokens = u.output_tokens.or(mine.output_tokens);
                        mine.cache_read_input_tokens =
                            u.cache_read_input_tokens.or(mine.cache_read_input_tokens);
                        mine.cache_creation_input_tokens = u
                            .cache_creation_input_tokens
                            .or(mine.cache_creation_input_tokens);
                    }
                    write_event(out, frame.event.as_deref(), &frame.data);
                    match peek.kind.as_str() {
                        "message_stop" => {
                            self.saw_stop = true;
                            self.done = true;
                        }
                        "error" => {
                            self.failed = true;
                            self.done = true;
                        }
                        _ => {}
                    }
                }
                Err(e) => self.fail_into(&malformed(e), out),
            }
        }
    }

    fn fail_into(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        if self.saw_stop {
            // The client already has the whole answer: a failure after `message_stop` loses
            // nothing, and an error event would follow the stream's own end.
            self.done = true;
            return;
        }
        if !self.done {
            AnthropicStreamEncoder::new(String::new(), String::new()).error(err, out);
            self.done = true;
            self.failed = true;
        }
    }
}

impl crate::stream::ResponseStream for AnthropicPassthroughStream {
    fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let result = self.sse.push(bytes, &mut self.frames);
        self.forward(&mut out);
        if let Err(e) = result {
            self.fail_into(&malformed(e), &mut out);
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let result = self.sse.finish(&mut self.frames);
        self.forward(&mut out);
        match result {
            Err(e) => self.fail_into(&malformed(e), &mut out),
            Ok(()) if !self.saw_stop => self.fail_into(&crate::stream::truncated(), &mut out),
            Ok(()) => self.done = true,
        }
        out
    }

    fn fail(&mut self, err: &GatewayError) -> Vec<u8> {
        let mut out = Vec::new();
        self.fail_into(err, &mut out);
        out
    }

    fn usage(&self) -> TokenUsage {
        self.usage.canonical()
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn complete(&self) -> bool {
        // `message_stop`, the last event, is forwarded as soon as it arrives.
        self.saw_stop && !self.failed
    }
}
