//! OpenAI Chat Completions: egress to OpenAI and every OpenAI-compatible server. (The OpenAI
//! ingress dialect, answers encoded for OpenAI SDK clients, is [`crate::ingress::openai`].)
//!
//! Wire format: <https://platform.openai.com/docs/api-reference/chat> (fixtures in
//! `filter/core/tests/fixtures/openai/` note their source).

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, FinishReason, Reasoning, TokenUsage, ToolCall, ANTHROPIC_REASONING,
    GEMINI_REASONING,
};
use crate::error::{ErrorKind, GatewayError};
use crate::ingress::openai::OpenAiStreamEncoder;
use crate::providers::passthrough::{FrameKind, PassthroughFormat};
use crate::providers::{error_message, EgressRequest};
use crate::stream::{malformed, SseFrameDecoder, SseStreamDecoder, StreamEncoder, StreamEvent};

/// Native path of chat completions (after the base URL prefix).
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// Native path of the Responses API, for providers that speak it (`responses_api`).
pub const RESPONSES_PATH: &str = "/v1/responses";
/// Native path of embeddings.
pub const EMBEDDINGS_PATH: &str = "/v1/embeddings";

/// How an OpenAI-compatible server departs from OpenAI's API, as configuration (`compat`
/// in a provider's config), so Groq, DeepSeek, Together, Fireworks, OpenRouter, xAI, Ollama
/// or vLLM need data, not code.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compat {
    /// The one name the server takes for the output-token limit; the other is renamed.
    #[serde(default)]
    pub max_tokens_field: Option<MaxTokensField>,
    /// Whether the server takes `stream_options.include_usage` (default: yes). Servers
    /// that reject it get no `stream_options`, and usage only if they send it anyway.
    #[serde(default = "default_true")]
    pub stream_usage: bool,
    /// Top-level request fields the server rejects, removed before sending.
    #[serde(default)]
    pub drop_params: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl Default for Compat {
    fn default() -> Self {
        Compat {
            max_tokens_field: None,
            stream_usage: true,
            drop_params: Vec::new(),
        }
    }
}

/// The output-token limit's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens` (older servers, DeepSeek, Ollama, Together, Fireworks, OpenRouter).
    MaxTokens,
    /// `max_completion_tokens` (OpenAI's current name).
    MaxCompletionTokens,
}

impl Compat {
    /// Whether the body needs adjusting at all (the fast path keeps the client's bytes
    /// when it does not).
    pub fn is_default(&self) -> bool {
        *self == Compat::default()
    }

    /// Applies the quirks to a request body.
    pub fn adjust(&self, body: &mut Map<String, Value>) {
        if let Some(field) = self.max_tokens_field {
            let (keep, other) = match field {
                MaxTokensField::MaxTokens => ("max_tokens", "max_completion_tokens"),
                MaxTokensField::MaxCompletionTokens => ("max_completion_tokens", "max_tokens"),
            };
            if let Some(limit) = body.remove(other) {
                body.entry(keep).or_insert(limit);
            }
        }
        if !self.stream_usage {
            body.remove("stream_options");
        }
        for name in &self.drop_params {
            body.remove(name);
        }
    }

    /// Applies the quirks to a serialised body (the fast path), leaving it untouched when
    /// there are none.
    pub fn adjust_bytes(&self, body: Vec<u8>) -> Result<Vec<u8>, GatewayError> {
        if self.is_default() {
            return Ok(body);
        }
        let mut map: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
            GatewayError::invalid(format!("request body is not a JSON object: {e}"))
        })?;
        self.adjust(&mut map);
        serde_json::to_vec(&map)
            .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))
    }
}

/// The JSON body of an OpenAI Chat request from canonical form, with usage asked for on
/// streams and the server's quirks applied.
pub(crate) fn chat_body(
    req: &ChatRequest,
    upstream_model: &str,
    compat: &Compat,
) -> Result<Vec<u8>, GatewayError> {
    let mut req = req.clone();
    req.model = upstream_model.to_string();
    // Gemini's thought signatures on tool calls mean nothing to an OpenAI-compatible server
    // (and `extra_content` is no OpenAI field): only the Gemini provider sends them on.
    for call in req
        .messages
        .iter_mut()
        .filter_map(|m| m.tool_calls.as_mut())
        .flatten()
    {
        call.signature = None;
    }
    // Gemini safety settings reach here only as a hint (thresholds that turn blocking off;
    // the field matrix refuses the others): OpenAI has no such field to send them in.
    req.extra.remove("safety_settings");
    // Anthropic-style thinking is OpenAI's `reasoning_effort` (`effort_for_thinking`).
    // A value that is neither form is sent as written, for the server to judge.
    if let Some(effort) = req.extra.get("thinking").and_then(effort_for_thinking) {
        req.extra.remove("thinking");
        req.extra
            .entry("reasoning_effort")
            .or_insert_with(|| Value::String(effort.into()));
    }
    if req.stream {
        let opts = req.stream_options.get_or_insert_with(Default::default);
        opts.include_usage = Some(true);
    }
    let encode = |e: serde_json::Error| {
        GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}"))
    };
    if compat.is_default() {
        return serde_json::to_vec(&req).map_err(encode);
    }
    let Value::Object(mut map) = serde_json::to_value(&req).map_err(encode)? else {
        return Err(GatewayError::new(
            ErrorKind::Internal,
            "a request encodes as an object",
        ));
    };
    compat.adjust(&mut map);
    serde_json::to_vec(&map).map_err(encode)
}

/// The `reasoning_effort` standing for an Anthropic-style `thinking` request: a budget up
/// to 1024 tokens is `low`, up to 8192 `medium`, more `high` (the inverse of the budgets
/// the Anthropic and Gemini providers give each effort); `disabled` is `minimal`, the
/// least OpenAI offers. `None` for a value that is neither.
pub fn effort_for_thinking(thinking: &Value) -> Option<&'static str> {
    match thinking.get("type").and_then(Value::as_str)? {
        "disabled" => Some("minimal"),
        "enabled" => match thinking.get("budget_tokens").and_then(Value::as_u64)? {
            0..=1024 => Some("low"),
            1025..=8192 => Some("medium"),
            _ => Some("high"),
        },
        _ => None,
    }
}

/// Builds an OpenAI request from canonical form (used when the ingress was not OpenAI).
pub fn build_chat(
    req: &ChatRequest,
    upstream_model: &str,
    compat: &Compat,
) -> Result<EgressRequest, GatewayError> {
    Ok(EgressRequest {
        path: CHAT_PATH.to_string(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: chat_body(req, upstream_model, compat)?,
    })
}

#[derive(Deserialize)]
struct WireResponse {
    /// An upstream error in a stream chunk, kept when the key is there at all (`null`
    /// included): such a chunk is read the slow way, see `OpenAiStreamFrames::decode_frame`.
    #[serde(default, deserialize_with = "present")]
    error: Option<IgnoredAny>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    delta: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    /// The model's refusal (structured outputs): carried as the answer's text with a
    /// `content_filter` finish, which every other dialect has a word for.
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    /// Reasoning text as DeepSeek, vLLM and other OpenAI-compatible servers return it
    /// (<https://api-docs.deepseek.com/guides/reasoning_model>); OpenRouter's `reasoning`
    /// too. OpenAI's own Chat API returns none.
    #[serde(default, alias = "reasoning")]
    reasoning_content: Option<String>,
    /// OpenRouter's typed reasoning, signatures included
    /// (<https://openrouter.ai/docs/use-cases/reasoning-tokens>).
    #[serde(default)]
    reasoning_details: Option<Vec<Value>>,
}

/// A `format` an OpenAI-compatible server (OpenRouter) names, as one the gateway knows.
fn known_format(format: Option<&str>) -> &'static str {
    match format {
        Some(GEMINI_REASONING) => GEMINI_REASONING,
        Some(ANTHROPIC_REASONING) => ANTHROPIC_REASONING,
        _ => "unknown",
    }
}

impl WireMessage {
    /// The message's reasoning: `reasoning_details` where given (it keeps signatures), else
    /// `reasoning_content` as unsigned text.
    fn reasoning(&mut self) -> Vec<Reasoning> {
        let details: Vec<Reasoning> = self
            .reasoning_details
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| serde_json::from_value(d).ok())
            .collect();
        let text = self.reasoning_content.take().filter(|t| !t.is_empty());
        match text {
            Some(text) if details.is_empty() => vec![Reasoning::Text {
                text,
                signature: None,
                format: None,
            }],
            _ => details,
        }
    }
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

/// OpenAI's `usage` object.
#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

/// `completion_tokens_details` (Chat) and `output_tokens_details` (Responses): the
/// reasoning part of the output tokens.
#[derive(Deserialize, Default)]
pub(crate) struct OutputDetails {
    #[serde(default)]
    pub(crate) reasoning_tokens: u64,
}

impl WireUsage {
    pub(crate) fn canonical(&self) -> TokenUsage {
        TokenUsage {
            input: self.prompt_tokens,
            output: self.completion_tokens,
            cached_input: self
                .prompt_tokens_details
                .as_ref()
                .map_or(0, |d| d.cached_tokens),
            reasoning: self
                .completion_tokens_details
                .as_ref()
                .map_or(0, |d| d.reasoning_tokens),
        }
    }
}

/// Extracts only `usage` from an OpenAI response body (the pass-through path).
pub fn usage_of(body: &[u8]) -> TokenUsage {
    #[derive(Deserialize)]
    struct OnlyUsage {
        #[serde(default)]
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<OnlyUsage>(body)
        .ok()
        .and_then(|u| u.usage)
        .map(|u| u.canonical())
        .unwrap_or_default()
}

/// The canonical finish for OpenAI's `finish_reason`; a refusal ends as `content_filter`
/// (OpenAI itself says `stop`, with the refusal in its own field).
fn finish_reason(s: &str, refused: bool) -> FinishReason {
    match s {
        "stop" if refused => FinishReason::ContentFilter,
        // Mistral's `model_length`: the model's context window ended the answer.
        "length" | "model_length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Parses a complete OpenAI chat response.
pub fn parse_chat(body: &[u8]) -> Result<ChatResponse, GatewayError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::BadGateway,
            format!("upstream returned an invalid chat response: {e}"),
        )
    })?;
    let choice = wire.choices.into_iter().next();
    let (mut message, finish) = match choice {
        Some(c) => (c.message.unwrap_or_default(), c.finish_reason),
        None => (WireMessage::default(), None),
    };
    let reasoning = message.reasoning();
    let refusal = message.refusal.take().filter(|r| !r.is_empty());
    let refused = refusal.is_some();
    if message.content.as_deref().is_none_or(str::is_empty) {
        if let Some(refusal) = refusal {
            message.content = Some(refusal);
        }
    }
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| {
            let f = t.function?;
            Some(ToolCall::function(
                t.id.unwrap_or_default(),
                f.name.unwrap_or_default(),
                f.arguments.unwrap_or_default(),
            ))
        })
        .collect();
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: wire.created,
        text: message.content,
        tool_calls,
        reasoning,
        finish_reason: finish.as_deref().map(|f| finish_reason(f, refused)),
        usage: wire.usage.map(|u| u.canonical()).unwrap_or_default(),
    })
}

/// Translates an OpenAI-format error response.
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    GatewayError::new(ErrorKind::from_status(status), error_message(body, status))
        .with_status(status)
}

/// Decodes an OpenAI chat-completion chunk stream.
#[derive(Default)]
pub struct OpenAiStreamFrames {
    started: bool,
    /// Whether the model refused (refusal deltas came instead of content).
    refused: bool,
}

/// The OpenAi stream decoder: SSE framing plus [`OpenAiStreamFrames`].
pub type OpenAiStreamDecoder = SseStreamDecoder<OpenAiStreamFrames>;

impl OpenAiStreamFrames {
    /// A chunk read as a `Value` first: an upstream `error` becomes an error event (`None`
    /// returned), anything else is read as a chunk, with `Value`'s error messages.
    fn decode_slow(
        &mut self,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<Option<WireResponse>, GatewayError> {
        let value: Value = serde_json::from_str(data).map_err(malformed)?;
        if let Some(err) = value.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            out.push(StreamEvent::Error(GatewayError::new(
                ErrorKind::BadGateway,
                crate::providers::redact(msg),
            )));
            return Ok(None);
        }
        serde_json::from_value(value).map(Some).map_err(malformed)
    }
}

/// Deserialises a field that is there at all, `null` included, as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IgnoredAny>, D::Error> {
    IgnoredAny::deserialize(d).map(Some)
}

impl SseFrameDecoder for OpenAiStreamFrames {
    fn decode_frame(
        &mut self,
        _event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        if data == "[DONE]" {
            return Ok(());
        }
        // One typed pass for the usual chunk; a chunk with `error`, or one that does not
        // read as a chunk, takes the `Value` path, so errors and their messages are as ever.
        let chunk = match serde_json::from_str::<WireResponse>(data) {
            Ok(chunk) if chunk.error.is_none() => chunk,
            _ => match self.decode_slow(data, out)? {
                Some(chunk) => chunk,
                None => return Ok(()),
            },
        };
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.id.clone(),
                model: chunk.model.clone(),
            });
        }
        for choice in chunk.choices.into_iter().take(1) {
            if let Some(mut delta) = choice.delta {
                for part in delta.reasoning() {
                    let format = known_format(part.format());
                    StreamEvent::push_reasoning(out, part, format);
                }
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::Text(text));
                }
                if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
                    self.refused = true;
                    out.push(StreamEvent::Text(text));
                }
                for (pos, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let index = call.index.unwrap_or(pos as u32);
                    let (name, args) = match call.function {
                        Some(f) => (f.name, f.arguments),
                        None => (None, None),
                    };
                    if call.id.is_some() || name.is_some() {
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: call.id.unwrap_or_default(),
                            name: name.unwrap_or_default(),
                            signature: None,
                        });
                    }
                    if let Some(arguments) = args.filter(|a| !a.is_empty()) {
                        out.push(StreamEvent::ToolCallArgs { index, arguments });
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                out.push(StreamEvent::Finish(finish_reason(&reason, self.refused)));
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(StreamEvent::Usage(usage.canonical()));
        }
        Ok(())
    }
}

/// The OpenAI → OpenAI stream fast path's view of chunks (for
/// [`crate::providers::passthrough::PassthroughStream`]): `[DONE]` is the terminal event, a
/// chunk with `error` an upstream error; usage is read on the way, the usage-only chunk is
/// hidden when the gateway (not the client) asked for it, and chunks with neither choices
/// nor usage (Azure's prompt-filter chunk) are hidden.
pub struct OpenAiPassthrough {
    usage: TokenUsage,
    hide_usage_chunk: bool,
}

impl OpenAiPassthrough {
    /// `client_wants_usage`: whether the client itself asked for `include_usage`.
    pub fn new(client_wants_usage: bool) -> Self {
        OpenAiPassthrough {
            usage: TokenUsage::default(),
            hide_usage_chunk: !client_wants_usage,
        }
    }
}

impl PassthroughFormat for OpenAiPassthrough {
    fn inspect(&mut self, _event: Option<&str>, data: &str) -> Result<FrameKind, GatewayError> {
        if data == "[DONE]" {
            return Ok(FrameKind::Terminal);
        }
        #[derive(Deserialize)]
        struct Peek {
            #[serde(default)]
            choices: Option<Vec<serde::de::IgnoredAny>>,
            #[serde(default)]
            usage: Option<WireUsage>,
            #[serde(default)]
            error: Option<serde::de::IgnoredAny>,
        }
        let peek: Peek = serde_json::from_str(data).map_err(malformed)?;
        if peek.error.is_some() {
            return Ok(FrameKind::Error);
        }
        let no_choices = peek.choices.as_ref().is_some_and(|c| c.is_empty());
        let Some(usage) = peek.usage else {
            // A chunk without choices or usage carries nothing OpenAI sends (Azure's
            // `prompt_filter_results` chunk, with an empty `object`): hidden, so every
            // OpenAI-compatible provider's stream reads as OpenAI's.
            return Ok(if no_choices {
                FrameKind::Hidden
            } else {
                FrameKind::Event
            });
        };
        self.usage.merge_max(usage.canonical());
        Ok(if no_choices && self.hide_usage_chunk {
            FrameKind::Hidden
        } else {
            FrameKind::Event
        })
    }

    fn usage(&self) -> TokenUsage {
        self.usage
    }

    fn write_error(&self, err: &GatewayError, out: &mut Vec<u8>) {
        OpenAiStreamEncoder::new(String::new(), String::new(), 0, false).error(err, out);
    }
}

/// The Responses API's `usage` object.
#[derive(Deserialize, Default)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

impl ResponsesUsage {
    fn canonical(&self) -> TokenUsage {
        TokenUsage {
            input: self.input_tokens,
            output: self.output_tokens,
            cached_input: self
                .input_tokens_details
                .as_ref()
                .map_or(0, |d| d.cached_tokens),
            reasoning: self
                .output_tokens_details
                .as_ref()
                .map_or(0, |d| d.reasoning_tokens),
        }
    }
}

/// Extracts only `usage` from a Responses API `response` body (the pass-through path).
pub fn responses_usage_of(body: &[u8]) -> TokenUsage {
    #[derive(Deserialize)]
    struct OnlyUsage {
        #[serde(default)]
        usage: Option<ResponsesUsage>,
    }
    serde_json::from_slice::<OnlyUsage>(body)
        .ok()
        .and_then(|u| u.usage)
        .map(|u| u.canonical())
        .unwrap_or_default()
}

/// The Responses → Responses stream fast path's view of events (for
/// [`crate::providers::passthrough::PassthroughStream`]), for providers that speak the
/// Responses API natively: `response.completed` and `response.incomplete` are terminal,
/// `response.failed` and `error` are upstream errors; usage is read from the final
/// `response`. The response's id is remembered so a stream that breaks ends with a
/// `response.failed` for the same response, as the SDK's accumulator requires.
#[derive(Default)]
pub struct ResponsesPassthrough {
    usage: TokenUsage,
    sequence: u64,
    response: Option<(String, Value)>,
}

impl PassthroughFormat for ResponsesPassthrough {
    fn inspect(&mut self, _event: Option<&str>, data: &str) -> Result<FrameKind, GatewayError> {
        #[derive(Deserialize)]
        struct Peek {
            #[serde(default, rename = "type")]
            kind: String,
            #[serde(default)]
            sequence_number: Option<u64>,
            #[serde(default)]
            response: Option<PeekResponse>,
        }
        #[derive(Deserialize)]
        struct PeekResponse {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            model: Value,
            #[serde(default)]
            usage: Option<ResponsesUsage>,
        }
        let peek: Peek = serde_json::from_str(data).map_err(malformed)?;
        if let Some(n) = peek.sequence_number {
            self.sequence = self.sequence.max(n.saturating_add(1));
        }
        if let Some(r) = peek.response {
            if let (None, Some(id)) = (&self.response, r.id) {
                self.response = Some((id, r.model));
            }
            if let Some(u) = r.usage {
                self.usage.merge_max(u.canonical());
            }
        }
        Ok(match peek.kind.as_str() {
            "response.completed" | "response.incomplete" => FrameKind::Terminal,
            "response.failed" | "error" => FrameKind::Error,
            _ => FrameKind::Event,
        })
    }

    fn usage(&self) -> TokenUsage {
        self.usage
    }

    fn write_error(&self, err: &GatewayError, out: &mut Vec<u8>) {
        let code = if err.kind == ErrorKind::RateLimited {
            "rate_limit_exceeded"
        } else {
            "server_error"
        };
        let Some((id, model)) = &self.response else {
            // Nothing reached the client yet that a `response.failed` could refer to.
            let body = serde_json::json!({
                "type": "error", "code": code, "message": err.message, "param": err.param,
                "sequence_number": self.sequence,
            });
            crate::sse::write_event(out, Some("error"), &body.to_string());
            return;
        };
        let body = serde_json::json!({
            "type": "response.failed",
            "sequence_number": self.sequence,
            "response": {
                "id": id, "object": "response", "model": model, "status": "failed",
                "error": {"code": code, "message": err.message},
            },
        });
        crate::sse::write_event(out, Some("response.failed"), &body.to_string());
    }
}
