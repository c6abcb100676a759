//! The Anthropic Messages ingress dialect: requests decoded from Anthropic SDK clients, and
//! answers (complete and streamed) encoded for them.
//!
//! The wire types are shared with the Anthropic provider ([`crate::providers::anthropic`]).
//!
//! Mapping choices worth knowing:
//! - A `tool_result` with `is_error: true` has no canonical flag; its text is prefixed with
//!   `Error: ` so any upstream model still sees that the tool failed.
//! - The canonical finish reason does not say which stop sequence matched, so a translated
//!   answer reports `end_turn` with `stop_sequence: null` where Anthropic would have said
//!   `stop_sequence`; cache writes are reported as plain input tokens.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::canonical::{
    split_wire_id, wire_id, ChatRequest, ChatResponse, Content, ContentPart, FinishReason,
    FunctionDef, ImageUrl, JsonSchemaFormat, Message, NamedFunction, RawJson, Reasoning,
    ResponseFormat, Role, Stop, TokenUsage, Tool, ToolCall, ToolChoice, ANTHROPIC_REASONING,
};
use crate::error::{Dialect, GatewayError};
use crate::providers::anthropic::{arguments_string, WireBlock, WireContent, WireImageSource};
use crate::sse::write_event;
use crate::stream::{StreamEncoder, StreamEvent};

fn stop_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
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
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    thinking: Option<Value>,
    /// Structured output (`output_config.format`; the beta's `output_format` too).
    #[serde(default)]
    output_config: Option<IngressOutputConfig>,
    #[serde(default)]
    output_format: Option<IngressOutputFormat>,
    /// Every other field: kept, so the field matrix refuses what a provider cannot take
    /// instead of the gateway dropping it.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct IngressOutputConfig {
    #[serde(default)]
    format: Option<IngressOutputFormat>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum IngressOutputFormat {
    JsonSchema { schema: Value },
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
                parameters: tool.input_schema.as_ref().map(RawJson::from_value),
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
    extra.extend(wire.rest.into_iter().filter(|(_, v)| !v.is_null()));
    if let Some(k) = wire.top_k {
        extra.insert("top_k".into(), json!(k));
    }
    if let Some(thinking) = wire.thinking.filter(|t| !t.is_null()) {
        extra.insert("thinking".into(), thinking);
    }
    let response_format = wire
        .output_config
        .and_then(|c| c.format)
        .or(wire.output_format)
        .map(
            |IngressOutputFormat::JsonSchema { schema }| ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat {
                    name: "output".into(),
                    schema: Some(schema),
                    strict: Some(true),
                    description: None,
                },
            },
        );
    Ok(ChatRequest {
        model: wire.model,
        messages,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        response_format,
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
                reasoning: Vec::new(),
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
                    // The id as the call had it, less any thought signature in it.
                    tool_call_id: Some(split_wire_id(&tool_use_id).0),
                    reasoning: Vec::new(),
                });
            }
            // Thinking belongs to assistant turns; Anthropic refuses it in a user turn.
            _ => {}
        }
    }
    flush(&mut pending, messages);
}

/// An assistant turn. Several text blocks stay several text parts: Anthropic merges
/// consecutive assistant messages into one turn, and their boundaries are meaning.
fn decode_assistant(blocks: Vec<WireBlock>) -> Message {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    let mut reasoning = Vec::new();
    for block in blocks {
        match block {
            b @ (WireBlock::Thinking { .. } | WireBlock::RedactedThinking { .. }) => {
                reasoning.extend(b.reasoning())
            }
            WireBlock::Text { text } => texts.push(ContentPart::Text { text }),
            WireBlock::ToolUse { id, name, input } => {
                // Gemini's thought signature travels in the id (`ToolCall::wire_id`).
                let (id, signature) = split_wire_id(&id);
                let mut call = ToolCall::function(id, name, arguments_string(&input));
                call.signature = signature;
                calls.push(call);
            }
            _ => {}
        }
    }
    Message {
        role: Role::Assistant,
        content: parts_to_content(texts),
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        reasoning,
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

/// Anthropic's `usage` has no reasoning breakdown: thinking is in `output_tokens`.
fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cached_input),
        "output_tokens": u.output,
        "cache_read_input_tokens": u.cached_input,
        "cache_creation_input_tokens": 0,
    })
}

/// Reasoning as an Anthropic thinking block. Only Anthropic's own signature is one an
/// Anthropic client may send back: other reasoning is unsigned (an empty signature, which
/// the gateway does not send on), and another provider's encrypted reasoning is left out.
fn thinking_block(reasoning: &Reasoning) -> Option<Value> {
    let own = reasoning.format().is_none_or(|f| f == ANTHROPIC_REASONING);
    match reasoning {
        Reasoning::Text {
            text, signature, ..
        } => Some(json!({
            "type": "thinking", "thinking": text,
            "signature": signature.as_deref().filter(|_| own).unwrap_or(""),
        })),
        Reasoning::Encrypted { data, .. } => {
            own.then(|| json!({"type": "redacted_thinking", "data": data}))
        }
    }
}

/// Encodes a canonical response as an Anthropic `message` object.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    let mut content: Vec<Value> = resp.reasoning.iter().filter_map(thinking_block).collect();
    if let Some(text) = resp.text.as_ref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &resp.tool_calls {
        content.push(json!({
            "type": "tool_use",
            "id": call.wire_id(),
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
    Thinking(u32),
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
                OpenBlock::Text(i) | OpenBlock::Tool(i) | OpenBlock::Thinking(i) => i,
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

    /// The open thinking block's index, opening one if another kind is open.
    fn thinking_block(&mut self, out: &mut Vec<u8>) -> u32 {
        match self.open {
            Some(OpenBlock::Thinking(i)) => i,
            _ => {
                let i = self.open_block(
                    out,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                );
                self.open = Some(OpenBlock::Thinking(i));
                i
            }
        }
    }

    /// Deltas are most of a stream's events, so they are serialised from borrowed structs
    /// rather than built as `Value`s.
    fn delta(out: &mut Vec<u8>, index: u32, delta: Delta<'_>) {
        let event = DeltaEvent {
            kind: "content_block_delta",
            index,
            delta,
        };
        // Written straight into `out`: compact JSON has no line break, so the event is one
        // `data:` line, as `write_event` would write it.
        out.extend_from_slice(b"event: content_block_delta\ndata: ");
        // Serialising plain structs of strings and integers cannot fail.
        let _ = serde_json::to_writer(&mut *out, &event);
        out.extend_from_slice(b"\n\n");
    }
}

#[derive(Serialize)]
struct DeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: Delta<'a>,
}

/// A `content_block_delta`'s delta, by its `type`.
#[derive(Serialize)]
#[serde(tag = "type")]
enum Delta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
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
                Self::delta(out, index, Delta::Text { text });
            }
            StreamEvent::ToolCallStart {
                index,
                id,
                name,
                signature,
            } => {
                if self.tool_blocks.iter().any(|(t, _)| t == index) {
                    return;
                }
                self.ensure_started(out);
                let id = wire_id(id, signature.as_deref());
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
                        Delta::InputJson {
                            partial_json: arguments,
                        },
                    );
                }
            }
            StreamEvent::Reasoning(thinking) => {
                self.ensure_started(out);
                let index = self.thinking_block(out);
                Self::delta(out, index, Delta::Thinking { thinking });
            }
            StreamEvent::ReasoningSignature { signature, format } => {
                self.ensure_started(out);
                let index = self.thinking_block(out);
                if *format == ANTHROPIC_REASONING {
                    Self::delta(out, index, Delta::Signature { signature });
                }
                // A signature ends its thinking block.
                self.close_block(out);
            }
            StreamEvent::ReasoningEncrypted { data, format } => {
                if *format != ANTHROPIC_REASONING {
                    return;
                }
                self.ensure_started(out);
                self.open_block(out, json!({"type": "redacted_thinking", "data": data}));
                self.open = Some(OpenBlock::Thinking(self.next_block - 1));
                self.close_block(out);
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
