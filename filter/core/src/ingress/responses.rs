//! The OpenAI Responses ingress dialect (`POST /v1/responses`): requests decoded from
//! `client.responses.create(...)`, answers (complete and streamed) encoded for it.
//!
//! Wire format: <https://platform.openai.com/docs/api-reference/responses> and its streaming
//! events <https://platform.openai.com/docs/api-reference/responses-streaming>, cross-checked
//! with the types and the stream accumulator of the official Python SDK (`openai` 3.57,
//! `openai/types/responses/`, `openai/lib/streaming/responses/_responses.py`). Fixtures in
//! `filter/core/tests/fixtures/responses/` note their source.
//!
//! Mapping choices worth knowing:
//! - The gateway keeps no store, so everything that refers to a stored object is a 400 that
//!   names its field: `previous_response_id`, `conversation`, `prompt`, `background`,
//!   `item_reference` input items and files by `file_id`. Clients send the whole
//!   conversation in `input` instead.
//! - Hosted tools (web search, file search, code interpreter, computer use, MCP, ...) run
//!   inside OpenAI; the gateway cannot run them for other providers, so they are a 400 too.
//! - `instructions` become the first system message; `input` items become canonical
//!   messages in order (consecutive `function_call` items join one assistant turn, each
//!   `function_call_output` becomes a `tool` message). `reasoning` items become the
//!   reasoning of the assistant turn that follows them: answers write the canonical parts
//!   (signatures, encrypted reasoning) into the item's `encrypted_content`, so an item sent
//!   back reaches the provider that can check it; another item's summary is unsigned text.
//! - `metadata` becomes the field matrix's `metadata` row (sent to OpenAI, a hint
//!   elsewhere); `include` asking for log-probabilities becomes its `logprobs` row, and
//!   the other `include` values extend items a translated answer never holds;
//!   `truncation: auto` becomes its `truncation:auto` row (refused when translated: the
//!   gateway cannot trim input to another provider's context window).
//! - Answers echo the request's settings (`instructions`, `tools`, `tool_choice`, `text`,
//!   sampling, `max_output_tokens`, `metadata`, ...) as the API does; `store` is reported
//!   `false`, which is the truth for a translated answer.
//! - A stream emits `response.created` and `response.in_progress`, then one output item per
//!   message or function call with their part, delta and done events, each with a
//!   `sequence_number`, and ends with `response.completed` (or `response.incomplete` when
//!   the output-token limit or a filter cut it) carrying usage with cached tokens. Function
//!   calls stay open until the end, so arguments that arrive interleaved still land in the
//!   right call. A failure ends the stream with `response.failed`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::canonical::{
    reasoning_text, split_wire_id, ChatRequest, ChatResponse, Content, ContentPart, FinishReason,
    FunctionDef, ImageUrl, JsonSchemaFormat, Message, NamedFunction, RawJson, Reasoning,
    ResponseFormat, Role, StreamOptions, TokenUsage, Tool, ToolCall, ToolChoice,
};
use crate::error::{ErrorKind, GatewayError};
use crate::sse::write_event;
use crate::stream::{StreamEncoder, StreamEvent};

/// The tuning parameters (OpenAI Chat names) a Responses request also has under the same
/// name, so a model's configured defaults apply to it.
pub const TUNABLE: [&str; 4] = ["temperature", "top_p", "parallel_tool_calls", "user"];

// ---------------------------------------------------------------------------------------------
// Requests: Responses → canonical.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    #[serde(default)]
    input: Option<WireInput>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    text: Option<WireText>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    reasoning: Option<WireReasoning>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    conversation: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    background: Option<bool>,
    /// Every other field: kept (bar the ones only the answer echoes), so the field matrix
    /// refuses what a provider cannot take instead of the gateway dropping it.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Responses fields that shape only the Responses answer (storage the gateway does not
/// keep, reported as `store: false`; stream obfuscation it does not add), not what the
/// model is asked, or that [`decode_request`] reads itself.
const ANSWER_ONLY: &[&str] = &["store", "stream_options", "include", "truncation"];

/// `include` values with nothing to add to a translated answer: the items they extend are
/// never in one (hosted-tool calls are refused, reasoning items are not returned, input
/// items are not echoed).
const INCLUDE_NOTHING: &[&str] = &[
    "reasoning.encrypted_content",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
];

/// Reads `include`: log-probabilities become the `logprobs` row of the field matrix (which
/// decides per provider), values extending items a translated answer never has are
/// accepted, anything else is a 400 as the API answers it.
fn decode_include(include: &Value, extra: &mut Map<String, Value>) -> Result<(), GatewayError> {
    let values = match include {
        Value::Null => return Ok(()),
        Value::Array(values) => values,
        _ => {
            return Err(
                GatewayError::invalid("`include` must be an array of strings")
                    .with_param("include"),
            )
        }
    };
    for value in values {
        match value.as_str() {
            Some("message.output_text.logprobs") => {
                extra.insert("logprobs".into(), json!(true));
            }
            Some(v) if INCLUDE_NOTHING.contains(&v) => {}
            _ => {
                return Err(GatewayError::invalid(format!(
                    "`include` value {value} is not supported by this gateway; supported: \
                     `message.output_text.logprobs`, {}",
                    INCLUDE_NOTHING
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .with_param("include"))
            }
        }
    }
    Ok(())
}

/// Reads `truncation`: `disabled` (the default) is what every provider does when the input
/// is too long (a 400), so it asks for nothing; `auto` (drop earlier items to fit the
/// context window) becomes the field matrix's `truncation:auto` row, which only a Responses
/// provider passed the request as written can honour.
fn decode_truncation(
    truncation: &Value,
    extra: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    match truncation {
        Value::Null => Ok(()),
        Value::String(s) if s == "disabled" => Ok(()),
        Value::String(s) if s == "auto" => {
            extra.insert("truncation".into(), json!("auto"));
            Ok(())
        }
        _ => Err(
            GatewayError::invalid("`truncation` must be `auto` or `disabled`")
                .with_param("truncation"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireInput {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Deserialize)]
struct WireText {
    #[serde(default)]
    format: Option<WireFormat>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        #[serde(default)]
        schema: Option<Value>,
        #[serde(default)]
        strict: Option<bool>,
        #[serde(default)]
        description: Option<String>,
    },
}

#[derive(Deserialize)]
struct WireReasoning {
    #[serde(default)]
    effort: Option<String>,
}

/// One input item. Messages may leave out `type`; everything else names it.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireItem {
    Message {
        role: WireRole,
        content: WireMessageContent,
    },
    FunctionCall {
        call_id: String,
        name: String,
        #[serde(default)]
        arguments: String,
    },
    FunctionCallOutput {
        call_id: String,
        output: WireMessageContent,
    },
    Reasoning {
        #[serde(default)]
        summary: Vec<WireSummary>,
        #[serde(default)]
        encrypted_content: Option<String>,
    },
    ItemReference {},
}

/// One `summary_text` of a `reasoning` item.
#[derive(Deserialize)]
struct WireSummary {
    #[serde(default)]
    text: String,
}

/// Marks `encrypted_content` the gateway wrote ([`encrypted_content`]).
const REASONING_PREFIX: &str = "swy1.";

/// The `encrypted_content` of a reasoning output item: the canonical reasoning parts (text,
/// signatures, encrypted data, whose they are) as unpadded base64url JSON after
/// [`REASONING_PREFIX`]. A Responses client sends the item back as is, and the parts go on
/// to the provider that can check them (Anthropic's signed thinking); `None` when there is
/// nothing a provider checks (no signature, nothing encrypted).
fn encrypted_content(parts: &[Reasoning]) -> Option<String> {
    use base64::Engine as _;
    let checked = parts.iter().any(|p| match p {
        Reasoning::Text { signature, .. } => signature.is_some(),
        Reasoning::Encrypted { .. } => true,
    });
    let json = serde_json::to_vec(parts).ok().filter(|_| checked)?;
    Some(format!(
        "{REASONING_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    ))
}

/// The reasoning parts of a reasoning input item: those the gateway wrote into
/// `encrypted_content`, else the summary as unsigned text (OpenAI's own encrypted content
/// means nothing to another provider).
fn reasoning_input(summary: Vec<WireSummary>, encrypted: Option<&str>) -> Vec<Reasoning> {
    use base64::Engine as _;
    let parts = encrypted
        .and_then(|e| e.strip_prefix(REASONING_PREFIX))
        .and_then(|b| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Vec<Reasoning>>(&json).ok())
        .unwrap_or_default();
    if !parts.is_empty() {
        return parts;
    }
    let text: Vec<String> = summary.into_iter().map(|s| s.text).collect();
    let text = text.join("\n\n");
    if text.is_empty() {
        return Vec::new();
    }
    vec![Reasoning::Text {
        text,
        signature: None,
        format: None,
    }]
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    User,
    Assistant,
    System,
    Developer,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireMessageContent {
    Text(String),
    Parts(Vec<WirePart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
    },
    Refusal {
        refusal: String,
    },
    InputImage {
        #[serde(default)]
        image_url: Option<String>,
        #[serde(default)]
        file_id: Option<String>,
        #[serde(default)]
        detail: Option<String>,
    },
    InputFile {},
}

/// Reads a request field that needs a stored object: present and meaningful means 400.
fn refuse_stored(field: &str, why: &str) -> GatewayError {
    GatewayError::invalid(format!(
        "`{field}` {why}; this gateway keeps no stored responses, conversations or files — \
         send the whole conversation in `input` instead"
    ))
    .with_param(field)
}

fn parts(content: WireMessageContent, param: &str) -> Result<Vec<ContentPart>, GatewayError> {
    let parts = match content {
        WireMessageContent::Text(text) => vec![ContentPart::Text { text }],
        WireMessageContent::Parts(parts) => parts
            .into_iter()
            .map(|part| match part {
                WirePart::InputText { text }
                | WirePart::OutputText { text }
                | WirePart::Refusal { refusal: text } => Ok(ContentPart::Text { text }),
                WirePart::InputImage {
                    image_url: Some(url),
                    detail,
                    ..
                } => Ok(ContentPart::ImageUrl {
                    image_url: ImageUrl { url, detail },
                }),
                WirePart::InputImage { file_id, .. } => Err(if file_id.is_some() {
                    refuse_stored(param, "refers to an uploaded file (`file_id`)")
                } else {
                    GatewayError::invalid("`input_image` needs `image_url`").with_param(param)
                }),
                WirePart::InputFile {} => Err(GatewayError::invalid(
                    "`input_file` parts are not supported by this gateway; send text or images",
                )
                .with_param(param)),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(parts)
}

/// One text part stays a plain string (the common case); anything else stays parts.
fn content_of(mut parts: Vec<ContentPart>) -> Option<Content> {
    match parts.as_slice() {
        [] => None,
        [ContentPart::Text { .. }] => match parts.pop() {
            Some(ContentPart::Text { text }) => Some(Content::Text(text)),
            _ => None,
        },
        _ => Some(Content::Parts(parts)),
    }
}

fn message(role: Role, content: Option<Content>) -> Message {
    Message {
        role,
        content,
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning: Vec::new(),
    }
}

/// Appends the input items to `messages`.
fn decode_items(items: Vec<Value>, messages: &mut Vec<Message>) -> Result<(), GatewayError> {
    // Reasoning items precede the assistant turn they belong to.
    let mut reasoning: Vec<Reasoning> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        // A message may leave out `type` (an "easy input message").
        let item = match item {
            Value::Object(mut map) if !map.contains_key("type") && map.contains_key("role") => {
                map.insert("type".into(), json!("message"));
                Value::Object(map)
            }
            other => other,
        };
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let item: WireItem = serde_json::from_value(item).map_err(|e| {
            let what = match kind.as_str() {
                "message" | "function_call" | "function_call_output" | "reasoning" => {
                    format!("invalid `{kind}` input item: {e}")
                }
                "" => "every input item needs a `type` (or a `role`)".to_string(),
                other => format!(
                    "input items of type `{other}` belong to hosted tools, which this gateway \
                     cannot run"
                ),
            };
            GatewayError::invalid(what).with_param(format!("input[{i}]"))
        })?;
        let param = format!("input[{i}]");
        match item {
            WireItem::Message { role, content } => {
                let role = match role {
                    WireRole::User => Role::User,
                    WireRole::Assistant => Role::Assistant,
                    WireRole::System => Role::System,
                    WireRole::Developer => Role::Developer,
                };
                let content = content_of(parts(content, &param)?);
                if content.is_some() {
                    messages.push(message(role, content));
                }
            }
            WireItem::FunctionCall {
                call_id,
                name,
                arguments,
            } => {
                // Gemini's thought signature travels in the call id (`ToolCall::wire_id`).
                let (call_id, signature) = split_wire_id(&call_id);
                let mut call = ToolCall::function(call_id, name, arguments);
                call.signature = signature;
                // Consecutive calls (and the text before them) are one assistant turn.
                match messages.last_mut() {
                    Some(last) if last.role == Role::Assistant => {
                        last.tool_calls.get_or_insert_with(Vec::new).push(call)
                    }
                    _ => {
                        let mut m = message(Role::Assistant, None);
                        m.tool_calls = Some(vec![call]);
                        messages.push(m);
                    }
                }
            }
            WireItem::FunctionCallOutput { call_id, output } => {
                let mut m = message(
                    Role::Tool,
                    Some(
                        content_of(parts(output, &param)?).unwrap_or(Content::Text(String::new())),
                    ),
                );
                m.tool_call_id = Some(split_wire_id(&call_id).0);
                messages.push(m);
            }
            WireItem::Reasoning {
                summary,
                encrypted_content,
            } => {
                reasoning.extend(reasoning_input(summary, encrypted_content.as_deref()));
                // Attached to the next assistant message (below, on the next item).
                continue;
            }
            WireItem::ItemReference {} => {
                return Err(refuse_stored(
                    &param,
                    "is an `item_reference` to a stored item",
                ))
            }
        }
        if let Some(last) = messages
            .last_mut()
            .filter(|m| m.role == Role::Assistant && !reasoning.is_empty())
        {
            last.reasoning.append(&mut reasoning);
        }
    }
    Ok(())
}

fn decode_tools(tools: Vec<Value>) -> Result<Vec<Tool>, GatewayError> {
    #[derive(Deserialize)]
    struct WireFunctionTool {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        parameters: Option<Value>,
        #[serde(default)]
        strict: Option<bool>,
    }
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "function" {
                return Err(GatewayError::invalid(format!(
                    "tool of type `{kind}` is a hosted tool, which this gateway cannot run; \
                     only `function` tools are supported"
                ))
                .with_param(format!("tools[{i}]")));
            }
            let t: WireFunctionTool = serde_json::from_value(tool).map_err(|e| {
                GatewayError::invalid(format!("invalid function tool: {e}"))
                    .with_param(format!("tools[{i}]"))
            })?;
            Ok(Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: t.name,
                    description: t.description,
                    parameters: t.parameters.as_ref().map(RawJson::from_value),
                    strict: t.strict,
                },
            })
        })
        .collect()
}

fn decode_tool_choice(choice: Value) -> Result<ToolChoice, GatewayError> {
    match &choice {
        Value::String(mode) if matches!(mode.as_str(), "none" | "auto" | "required") => {
            Ok(ToolChoice::Mode(mode.clone()))
        }
        Value::Object(map) if map.get("type") == Some(&json!("function")) => {
            match map.get("name").and_then(Value::as_str) {
                Some(name) => Ok(ToolChoice::Named {
                    kind: "function".into(),
                    function: NamedFunction { name: name.into() },
                }),
                None => Err(
                    GatewayError::invalid("`tool_choice` of type `function` needs `name`")
                        .with_param("tool_choice"),
                ),
            }
        }
        _ => Err(GatewayError::invalid(
            "`tool_choice` must be `none`, `auto`, `required` or a named function; hosted-tool \
             and `allowed_tools` choices are not supported by this gateway",
        )
        .with_param("tool_choice")),
    }
}

/// Decodes a Responses `create` request into canonical form.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, GatewayError> {
    let wire: WireRequest = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("invalid Responses request: {e}")))?;
    if wire.previous_response_id.is_some() {
        return Err(refuse_stored(
            "previous_response_id",
            "continues a stored response",
        ));
    }
    if wire.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(refuse_stored(
            "conversation",
            "refers to a stored conversation",
        ));
    }
    if wire.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(refuse_stored(
            "prompt",
            "refers to a stored prompt template",
        ));
    }
    if wire.background == Some(true) {
        return Err(refuse_stored(
            "background",
            "asks for a stored response to poll later",
        ));
    }
    let mut messages = Vec::new();
    if let Some(text) = wire.instructions.filter(|t| !t.is_empty()) {
        messages.push(Message::text(Role::System, text));
    }
    match wire.input {
        Some(WireInput::Text(text)) => messages.push(Message::text(Role::User, text)),
        Some(WireInput::Items(items)) => decode_items(items, &mut messages)?,
        None => {}
    }
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err(GatewayError::invalid("`input` must not be empty").with_param("input"));
    }
    let tools = decode_tools(wire.tools.unwrap_or_default())?;
    let tool_choice = wire.tool_choice.map(decode_tool_choice).transpose()?;
    let response_format = wire.text.and_then(|t| t.format).map(|f| match f {
        WireFormat::Text => ResponseFormat::Text,
        WireFormat::JsonObject => ResponseFormat::JsonObject,
        WireFormat::JsonSchema {
            name,
            schema,
            strict,
            description,
        } => ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name,
                schema,
                strict,
                description,
            },
        },
    });
    let stream = wire.stream.unwrap_or(false);
    let mut extra: Map<String, Value> = Map::new();
    decode_truncation(
        wire.rest.get("truncation").unwrap_or(&Value::Null),
        &mut extra,
    )?;
    decode_include(wire.rest.get("include").unwrap_or(&Value::Null), &mut extra)?;
    extra.extend(
        wire.rest
            .into_iter()
            .filter(|(k, v)| !v.is_null() && !ANSWER_ONLY.contains(&k.as_str())),
    );
    if let Some(parallel) = wire.parallel_tool_calls {
        extra.insert("parallel_tool_calls".into(), json!(parallel));
    }
    if let Some(effort) = wire.reasoning.and_then(|r| r.effort) {
        extra.insert("reasoning_effort".into(), json!(effort));
    }
    Ok(ChatRequest {
        model: wire.model,
        messages,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        response_format,
        stream,
        // A Responses stream always ends with usage, so ask upstreams for it.
        stream_options: stream.then(|| StreamOptions {
            include_usage: Some(true),
            extra: Map::new(),
        }),
        temperature: wire.temperature,
        top_p: wire.top_p,
        stop: None,
        max_tokens: None,
        max_completion_tokens: wire.max_output_tokens,
        seed: None,
        user: wire.user,
        extra,
    })
}

// ---------------------------------------------------------------------------------------------
// Answers: canonical → Responses.
// ---------------------------------------------------------------------------------------------

/// The request settings an answer echoes, as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    fields: Map<String, Value>,
}

/// Echoed fields and (as JSON) what the API reports when the client left them out.
const ECHOED: [(&str, &str); 12] = [
    ("instructions", "null"),
    ("max_output_tokens", "null"),
    ("metadata", "{}"),
    ("parallel_tool_calls", "true"),
    ("reasoning", r#"{"effort": null, "summary": null}"#),
    ("temperature", "null"),
    ("text", r#"{"format": {"type": "text"}}"#),
    ("tool_choice", r#""auto""#),
    ("tools", "[]"),
    ("top_p", "null"),
    ("truncation", r#""disabled""#),
    ("user", "null"),
];

impl Echo {
    /// Picks the echoed fields out of the client's request body (a body that is not a JSON
    /// object echoes the defaults).
    pub fn from_request(body: &[u8]) -> Self {
        let request: Map<String, Value> = serde_json::from_slice(body).unwrap_or_default();
        let fields = ECHOED
            .iter()
            .map(|(name, default)| {
                let value = request
                    .get(*name)
                    .filter(|v| !v.is_null())
                    .cloned()
                    .unwrap_or_else(|| serde_json::from_str(default).unwrap_or(Value::Null));
                (name.to_string(), value)
            })
            .collect();
        Echo { fields }
    }
}

/// A Responses `usage` object.
fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.input,
        "input_tokens_details": {"cached_tokens": u.cached_input, "cache_write_tokens": 0},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input + u.output,
    })
}

/// What every `response` object of one answer shares.
struct Identity<'a> {
    id: &'a str,
    model: &'a str,
    created: u64,
    echo: &'a Echo,
}

/// A `response` object's state at one point of its lifecycle.
struct State<'a> {
    status: &'a str,
    output: &'a [Value],
    finish: Option<FinishReason>,
    usage: Option<&'a TokenUsage>,
    error: Option<&'a GatewayError>,
}

/// The `response` object: lifecycle status, output items, usage and the echoed settings.
fn response_object(who: &Identity, state: &State) -> Value {
    let State {
        status,
        output,
        finish,
        usage,
        error,
    } = *state;
    let mut r = Map::new();
    r.insert("id".into(), json!(who.id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(who.created));
    r.insert("status".into(), json!(status));
    r.insert(
        "error".into(),
        error.map_or(
            Value::Null,
            |e| json!({"code": error_code(e), "message": e.message}),
        ),
    );
    let incomplete = match finish {
        Some(FinishReason::Length) if status == "incomplete" => {
            json!({"reason": "max_output_tokens"})
        }
        Some(FinishReason::ContentFilter) if status == "incomplete" => {
            json!({"reason": "content_filter"})
        }
        _ => Value::Null,
    };
    r.insert("incomplete_details".into(), incomplete);
    r.insert("model".into(), json!(who.model));
    r.insert("output".into(), Value::Array(output.to_vec()));
    r.insert("previous_response_id".into(), Value::Null);
    r.insert("store".into(), json!(false));
    for (k, v) in &who.echo.fields {
        r.insert(k.clone(), v.clone());
    }
    r.insert("usage".into(), usage.map_or(Value::Null, usage_json));
    Value::Object(r)
}

/// The Responses `error.code` closest to a gateway error.
fn error_code(err: &GatewayError) -> &'static str {
    match err.kind {
        ErrorKind::RateLimited => "rate_limit_exceeded",
        ErrorKind::InvalidRequest | ErrorKind::Unprocessable => "invalid_prompt",
        _ => "server_error",
    }
}

/// The status a finished answer reports: cut short by the limit or a filter is `incomplete`.
fn final_status(finish: Option<FinishReason>) -> &'static str {
    match finish {
        Some(FinishReason::Length | FinishReason::ContentFilter) => "incomplete",
        _ => "completed",
    }
}

/// The hex part of a gateway response id, for item ids.
fn id_stem(id: &str) -> &str {
    id.strip_prefix("resp_").unwrap_or(id)
}

fn message_item(id: &str, status: &str, text: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": if status == "in_progress" {
            json!([])
        } else {
            json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
        },
    })
}

/// A `reasoning` output item: the reasoning text as its summary (the Responses form a
/// client can read; signatures and encrypted reasoning have no place a client could send
/// back through a translated request).
fn reasoning_item(id: &str, text: &str, parts: &[Reasoning]) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    let mut item = json!({"id": id, "type": "reasoning", "summary": summary});
    if let Some(content) = encrypted_content(parts) {
        item["encrypted_content"] = json!(content);
    }
    item
}

fn function_item(id: &str, status: &str, call: &ToolCall) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call.wire_id(),
        "name": call.function.name,
        "arguments": call.function.arguments,
    })
}

/// Encodes a complete answer as a Responses `response` object.
pub fn encode_response(resp: &ChatResponse, echo: &Echo) -> Vec<u8> {
    let id = if resp.id.starts_with("resp_") {
        resp.id.clone()
    } else {
        format!("resp_{}", resp.id)
    };
    let stem = id_stem(&id);
    let mut output = Vec::new();
    let reasoning = reasoning_text(&resp.reasoning);
    if !resp.reasoning.is_empty() {
        output.push(reasoning_item(
            &format!("rs_{stem}_r"),
            &reasoning,
            &resp.reasoning,
        ));
    }
    if let Some(text) = resp.text.as_deref().filter(|t| !t.is_empty()) {
        output.push(message_item(&format!("msg_{stem}_0"), "completed", text));
    }
    for (i, call) in resp.tool_calls.iter().enumerate() {
        output.push(function_item(&format!("fc_{stem}_{i}"), "completed", call));
    }
    let body = response_object(
        &Identity {
            id: &id,
            model: &resp.model,
            created: resp.created,
            echo,
        },
        &State {
            status: final_status(resp.finish_reason),
            output: &output,
            finish: resp.finish_reason,
            usage: Some(&resp.usage),
            error: None,
        },
    );
    serde_json::to_vec(&body).unwrap_or_default()
}

/// An output item being streamed.
enum OpenItem {
    Message {
        output_index: usize,
        text: String,
    },
    Reasoning {
        output_index: usize,
        text: String,
        /// The reasoning so far as canonical parts (text closed by a signature, encrypted
        /// data), for the item's `encrypted_content`.
        parts: Vec<Reasoning>,
        /// Text since the last signature.
        unsigned: String,
    },
    Call {
        output_index: usize,
        tool_index: u32,
        call: ToolCall,
    },
}

/// Encodes canonical stream events as the Responses event sequence (see the module docs).
pub struct ResponsesStreamEncoder {
    id: String,
    model: String,
    created: u64,
    echo: Echo,
    sequence: u64,
    started: bool,
    /// Every output item so far, in `output_index` order: finished ones as their final JSON,
    /// the ones still open as `None` (their state is in `open`).
    output: Vec<Option<Value>>,
    open: Vec<OpenItem>,
    finish: Option<FinishReason>,
    usage: TokenUsage,
}

impl ResponsesStreamEncoder {
    /// `id` is the gateway's `resp_...` id; `model` is replaced by the upstream's, if it
    /// names one before the stream starts.
    pub fn new(id: String, model: String, created: u64, echo: Echo) -> Self {
        ResponsesStreamEncoder {
            id,
            model,
            created,
            echo,
            sequence: 0,
            started: false,
            output: Vec::new(),
            open: Vec::new(),
            finish: None,
            usage: TokenUsage::default(),
        }
    }

    /// Writes one event; `body` gets its `type` and `sequence_number`.
    fn event(&mut self, out: &mut Vec<u8>, kind: &str, mut body: Map<String, Value>) {
        body.insert("type".into(), json!(kind));
        body.insert("sequence_number".into(), json!(self.sequence));
        self.sequence += 1;
        write_event(out, Some(kind), &Value::Object(body).to_string());
    }

    fn lifecycle(
        &mut self,
        out: &mut Vec<u8>,
        kind: &str,
        status: &str,
        err: Option<&GatewayError>,
    ) {
        let output: Vec<Value> = self.output.iter().flatten().cloned().collect();
        let terminal = matches!(kind, "response.completed" | "response.incomplete");
        let response = response_object(
            &Identity {
                id: &self.id,
                model: &self.model,
                created: self.created,
                echo: &self.echo,
            },
            &State {
                status,
                output: &output,
                finish: self.finish,
                usage: terminal.then_some(&self.usage),
                error: err,
            },
        );
        let mut body = Map::new();
        body.insert("response".into(), response);
        self.event(out, kind, body);
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.lifecycle(out, "response.created", "in_progress", None);
            self.lifecycle(out, "response.in_progress", "in_progress", None);
        }
    }

    fn item_id(&self, output_index: usize, call: bool) -> String {
        let stem = id_stem(&self.id);
        if call {
            format!("fc_{stem}_{output_index}")
        } else {
            format!("msg_{stem}_{output_index}")
        }
    }

    fn add_item(&mut self, out: &mut Vec<u8>, item: Value) -> usize {
        let output_index = self.output.len();
        self.output.push(None);
        let mut body = Map::new();
        body.insert("output_index".into(), json!(output_index));
        body.insert("item".into(), item);
        self.event(out, "response.output_item.added", body);
        output_index
    }

    fn item_done(&mut self, out: &mut Vec<u8>, output_index: usize, item: Value) {
        if let Some(slot) = self.output.get_mut(output_index) {
            *slot = Some(item.clone());
        }
        let mut body = Map::new();
        body.insert("output_index".into(), json!(output_index));
        body.insert("item".into(), item);
        self.event(out, "response.output_item.done", body);
    }

    /// The message item being written, opened if needed.
    fn open_message(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(OpenItem::Message { output_index, .. }) = self
            .open
            .iter()
            .find(|i| matches!(i, OpenItem::Message { .. }))
        {
            return *output_index;
        }
        let output_index = self.output.len();
        let item_id = self.item_id(output_index, false);
        self.add_item(out, message_item(&item_id, "in_progress", ""));
        let mut body = Map::new();
        body.insert("item_id".into(), json!(item_id));
        body.insert("output_index".into(), json!(output_index));
        body.insert("content_index".into(), json!(0));
        body.insert(
            "part".into(),
            json!({"type": "output_text", "text": "", "annotations": []}),
        );
        self.event(out, "response.content_part.added", body);
        self.open.push(OpenItem::Message {
            output_index,
            text: String::new(),
        });
        output_index
    }

    /// Closes the open message item, if any: text done, part done, item done.
    fn close_message(&mut self, out: &mut Vec<u8>) {
        let Some(pos) = self
            .open
            .iter()
            .position(|i| matches!(i, OpenItem::Message { .. }))
        else {
            return;
        };
        let OpenItem::Message { output_index, text } = self.open.remove(pos) else {
            return;
        };
        let item_id = self.item_id(output_index, false);
        let mut body = Map::new();
        body.insert("item_id".into(), json!(item_id));
        body.insert("output_index".into(), json!(output_index));
        body.insert("content_index".into(), json!(0));
        body.insert("text".into(), json!(text));
        body.insert("logprobs".into(), json!([]));
        self.event(out, "response.output_text.done", body);
        let mut body = Map::new();
        body.insert("item_id".into(), json!(item_id));
        body.insert("output_index".into(), json!(output_index));
        body.insert("content_index".into(), json!(0));
        body.insert(
            "part".into(),
            json!({"type": "output_text", "text": text, "annotations": []}),
        );
        self.event(out, "response.content_part.done", body);
        self.item_done(
            out,
            output_index,
            message_item(&item_id, "completed", &text),
        );
    }

    /// The reasoning item being written, opened (with its summary part) if needed.
    fn open_reasoning(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(OpenItem::Reasoning { output_index, .. }) = self
            .open
            .iter()
            .find(|i| matches!(i, OpenItem::Reasoning { .. }))
        {
            return *output_index;
        }
        let output_index = self.output.len();
        let item_id = self.reasoning_id(output_index);
        self.add_item(out, reasoning_item(&item_id, "", &[]));
        let mut body = Map::new();
        body.insert("item_id".into(), json!(item_id));
        body.insert("output_index".into(), json!(output_index));
        body.insert("summary_index".into(), json!(0));
        body.insert("part".into(), json!({"type": "summary_text", "text": ""}));
        self.event(out, "response.reasoning_summary_part.added", body);
        self.open.push(OpenItem::Reasoning {
            output_index,
            text: String::new(),
            parts: Vec::new(),
            unsigned: String::new(),
        });
        output_index
    }

    fn reasoning_id(&self, output_index: usize) -> String {
        format!("rs_{}_{output_index}", id_stem(&self.id))
    }

    /// Closes the open reasoning item, if any: summary text done, part done, item done.
    fn close_reasoning(&mut self, out: &mut Vec<u8>) {
        let Some(pos) = self
            .open
            .iter()
            .position(|i| matches!(i, OpenItem::Reasoning { .. }))
        else {
            return;
        };
        let OpenItem::Reasoning {
            output_index,
            text,
            mut parts,
            unsigned,
        } = self.open.remove(pos)
        else {
            return;
        };
        if !unsigned.is_empty() {
            parts.push(Reasoning::Text {
                text: unsigned,
                signature: None,
                format: None,
            });
        }
        let item_id = self.reasoning_id(output_index);
        let mut body = Map::new();
        body.insert("item_id".into(), json!(item_id));
        body.insert("output_index".into(), json!(output_index));
        body.insert("summary_index".into(), json!(0));
        body.insert("text".into(), json!(text));
        self.event(out, "response.reasoning_summary_text.done", body);
        let mut body = Map::new();
        body.insert("item_id".into(), json!(item_id));
        body.insert("output_index".into(), json!(output_index));
        body.insert("summary_index".into(), json!(0));
        body.insert("part".into(), json!({"type": "summary_text", "text": text}));
        self.event(out, "response.reasoning_summary_part.done", body);
        self.item_done(out, output_index, reasoning_item(&item_id, &text, &parts));
    }

    /// Closes every open item, in output order.
    fn close_all(&mut self, out: &mut Vec<u8>) {
        self.close_reasoning(out);
        self.close_message(out);
        for item in std::mem::take(&mut self.open) {
            if let OpenItem::Call {
                output_index, call, ..
            } = item
            {
                let item_id = self.item_id(output_index, true);
                let mut body = Map::new();
                body.insert("item_id".into(), json!(item_id));
                body.insert("output_index".into(), json!(output_index));
                body.insert("arguments".into(), json!(call.function.arguments));
                self.event(out, "response.function_call_arguments.done", body);
                self.item_done(
                    out,
                    output_index,
                    function_item(&item_id, "completed", &call),
                );
            }
        }
    }
}

impl StreamEncoder for ResponsesStreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { model, .. } => {
                if !model.is_empty() && !self.started {
                    self.model = model.clone();
                }
                self.ensure_started(out);
            }
            StreamEvent::Reasoning(text) => {
                self.ensure_started(out);
                let output_index = self.open_reasoning(out);
                if let Some(OpenItem::Reasoning {
                    text: so_far,
                    unsigned,
                    ..
                }) = self
                    .open
                    .iter_mut()
                    .find(|i| matches!(i, OpenItem::Reasoning { .. }))
                {
                    so_far.push_str(text);
                    unsigned.push_str(text);
                }
                let mut body = Map::new();
                body.insert("item_id".into(), json!(self.reasoning_id(output_index)));
                body.insert("output_index".into(), json!(output_index));
                body.insert("summary_index".into(), json!(0));
                body.insert("delta".into(), json!(text));
                self.event(out, "response.reasoning_summary_text.delta", body);
            }
            StreamEvent::Text(text) => {
                self.ensure_started(out);
                self.close_reasoning(out);
                let output_index = self.open_message(out);
                if let Some(OpenItem::Message { text: so_far, .. }) = self
                    .open
                    .iter_mut()
                    .find(|i| matches!(i, OpenItem::Message { .. }))
                {
                    so_far.push_str(text);
                }
                let mut body = Map::new();
                body.insert("item_id".into(), json!(self.item_id(output_index, false)));
                body.insert("output_index".into(), json!(output_index));
                body.insert("content_index".into(), json!(0));
                body.insert("delta".into(), json!(text));
                body.insert("logprobs".into(), json!([]));
                self.event(out, "response.output_text.delta", body);
            }
            StreamEvent::ToolCallStart {
                index,
                id,
                name,
                signature,
            } => {
                let known = self
                    .open
                    .iter()
                    .any(|i| matches!(i, OpenItem::Call { tool_index, .. } if tool_index == index));
                if known {
                    return;
                }
                self.ensure_started(out);
                // Text written after a call is a new message item.
                self.close_reasoning(out);
                self.close_message(out);
                let output_index = self.output.len();
                let mut call = ToolCall::function(id.clone(), name.clone(), String::new());
                call.signature.clone_from(signature);
                let item_id = self.item_id(output_index, true);
                self.add_item(out, function_item(&item_id, "in_progress", &call));
                self.open.push(OpenItem::Call {
                    output_index,
                    tool_index: *index,
                    call,
                });
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                let Some(output_index) = self.open.iter_mut().find_map(|i| match i {
                    OpenItem::Call {
                        output_index,
                        tool_index,
                        call,
                    } if tool_index == index => {
                        call.function.arguments.push_str(arguments);
                        Some(*output_index)
                    }
                    _ => None,
                }) else {
                    // Arguments for a call whose start was never seen cannot be attributed.
                    return;
                };
                let mut body = Map::new();
                body.insert("item_id".into(), json!(self.item_id(output_index, true)));
                body.insert("output_index".into(), json!(output_index));
                body.insert("delta".into(), json!(arguments));
                self.event(out, "response.function_call_arguments.delta", body);
            }
            StreamEvent::Finish(reason) => self.finish = Some(*reason),
            StreamEvent::Usage(u) => self.usage.merge_max(*u),
            // Signatures and encrypted reasoning reach the client in the item's
            // `encrypted_content` (see `encrypted_content`), written when the item is done.
            StreamEvent::ReasoningSignature { signature, format } => {
                self.ensure_started(out);
                self.open_reasoning(out);
                if let Some(OpenItem::Reasoning {
                    parts, unsigned, ..
                }) = self
                    .open
                    .iter_mut()
                    .find(|i| matches!(i, OpenItem::Reasoning { .. }))
                {
                    parts.push(Reasoning::Text {
                        text: std::mem::take(unsigned),
                        signature: Some(signature.clone()),
                        format: Some(format.to_string()),
                    });
                }
            }
            StreamEvent::ReasoningEncrypted { data, format } => {
                self.ensure_started(out);
                self.open_reasoning(out);
                if let Some(OpenItem::Reasoning { parts, .. }) = self
                    .open
                    .iter_mut()
                    .find(|i| matches!(i, OpenItem::Reasoning { .. }))
                {
                    parts.push(Reasoning::Encrypted {
                        data: data.clone(),
                        format: Some(format.to_string()),
                    });
                }
            }
            StreamEvent::Error(_) => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.ensure_started(out);
        self.close_all(out);
        let status = final_status(self.finish);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.lifecycle(out, kind, status, None);
    }

    fn error(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        self.ensure_started(out);
        self.lifecycle(out, "response.failed", "failed", Some(err));
    }
}
