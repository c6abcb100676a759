//! The Google Gemini API ingress dialect: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse` (and `GET /v1beta/models`), so the official
//! `google-genai` SDK can call any model.
//!
//! Wire format: <https://ai.google.dev/api/generate-content>, function calling
//! <https://ai.google.dev/gemini-api/docs/function-calling>, errors
//! <https://ai.google.dev/gemini-api/docs/troubleshooting>; request field names as the
//! `google-genai` Python SDK (3.6) writes them (camelCase; snake_case is accepted too, as
//! Google's JSON parser does). Fixtures in `filter/core/tests/fixtures/gemini_ingress/`.
//!
//! Mapping choices worth knowing:
//! - The model comes from the path, streaming from the method; the body has neither.
//! - Gemini's function calls may carry no id. Calls without one get `call_<n>` (counting
//!   the conversation's calls), and a `functionResponse` without an id answers the earliest
//!   unanswered call of the same name, so providers that pair results by id see pairs.
//!   Answers carry the canonical call ids in `functionCall.id`, which the SDK echoes back.
//! - Schemas in Gemini's OpenAPI subset (`"type": "OBJECT"`) are lowered to JSON Schema
//!   (`"object"`); `parametersJsonSchema` / `responseJsonSchema` are JSON Schema already.
//! - Parts other providers cannot take are a 400 naming the part: non-image inline data,
//!   executable code, hosted tools (search, code execution, URL context), `cachedContent`
//!   (a stored object) and `candidateCount` above 1.
//! - Nothing is dropped: `safetySettings` and `generationConfig` fields without a canonical
//!   counterpart (`mediaResolution`, ...) are carried as the field matrix's
//!   `safety_settings` and `generation_config` rows, which the Gemini provider sends on and
//!   every other provider refuses by name; `responseLogprobs`/`logprobs` and
//!   `thinkingConfig` become the `logprobs`/`top_logprobs`, `thinking` and
//!   `reasoning_effort` rows. Fields asking for answers the gateway cannot return (audio,
//!   images, thought summaries without a thinking budget, other MIME types) and unknown
//!   top-level fields are a 400. Reasoning in an answer (Anthropic thinking, Gemini
//!   thoughts, `reasoning_content`) is written as thought parts (`thought: true`).
//! - A `functionResponse.response` of the form `{"result": "text"}` (or `output` /
//!   `content`) becomes the text `text`, which is how the Gemini provider sends a text
//!   result, so a round trip gives back what went in.
//! - A stream sends a chunk per text delta and each function call whole, in the chunk after
//!   its arguments end; the last chunk carries `finishReason` and the usage. An error in the
//!   stream is a `data: {"error": {...}}` chunk, which the SDK raises as `APIError`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, Content, ContentPart, FinishReason, FunctionDef, ImageUrl,
    JsonSchemaFormat, Message, NamedFunction, RawJson, Reasoning, ResponseFormat, Role, Stop,
    StreamOptions, TokenUsage, Tool, ToolCall, ToolChoice, GEMINI_REASONING,
};
use crate::error::{Dialect, GatewayError};
use crate::sse::write_event;
use crate::stream::{StreamEncoder, StreamEvent};

// ---------------------------------------------------------------------------------------------
// Routes.
// ---------------------------------------------------------------------------------------------

/// What a Gemini API path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `models/{model}:generateContent` (`stream: false`) or `:streamGenerateContent`.
    Generate {
        /// The model named by the path, percent-decoded.
        model: String,
        /// Whether the method is `streamGenerateContent`.
        stream: bool,
    },
    /// `models` (the model list).
    List,
}

/// Reads a Gemini API path (`/v1beta/...` or `/v1/...`, query removed).
pub fn route(path: &str) -> Option<Route> {
    if path == "/v1beta/models" {
        // (`/v1/models` is OpenAI's list.)
        return Some(Route::List);
    }
    let rest = path
        .strip_prefix("/v1beta/")
        .or_else(|| path.strip_prefix("/v1/"))?;
    let target = rest.strip_prefix("models/")?;
    let (model, method) = target.rsplit_once(':')?;
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    let model = percent_decode(model)?;
    (!model.is_empty() && !model.contains('/')).then_some(Route::Generate { model, stream })
}

/// Whether a path belongs to the Gemini API (its errors then take Google's shape).
pub fn is_gemini_path(path: &str) -> bool {
    path.starts_with("/v1beta/") || (path.starts_with("/v1/models/") && path.contains(':'))
}

/// Percent-decodes a path segment; `None` for broken escapes or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The API key in a `?key=` query parameter, as Google accepts it.
pub fn query_key(path_and_query: &str) -> Option<&str> {
    let (_, query) = path_and_query.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|k| !k.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Requests: Gemini → canonical.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    #[serde(default)]
    contents: Vec<WireContent>,
    #[serde(default, alias = "system_instruction")]
    system_instruction: Option<WireContent>,
    #[serde(default)]
    tools: Vec<Map<String, Value>>,
    #[serde(default, alias = "tool_config")]
    tool_config: Option<WireToolConfig>,
    #[serde(default, alias = "generation_config")]
    generation_config: Option<WireGenerationConfig>,
    #[serde(default, alias = "cached_content")]
    cached_content: Option<String>,
    #[serde(default, alias = "safety_settings")]
    safety_settings: Option<Vec<Value>>,
    /// Every other top-level field: a 400 naming it (as Google's own parser answers).
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolConfig {
    #[serde(default, alias = "function_calling_config")]
    function_calling_config: Option<WireFunctionCallingConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFunctionCallingConfig {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default, alias = "allowed_function_names")]
    allowed_function_names: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireGenerationConfig {
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default, alias = "top_p")]
    top_p: Option<f64>,
    #[serde(default, alias = "top_k")]
    top_k: Option<u32>,
    #[serde(default, alias = "max_output_tokens")]
    max_output_tokens: Option<u32>,
    #[serde(default, alias = "stop_sequences")]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default, alias = "candidate_count")]
    candidate_count: Option<u32>,
    #[serde(default, alias = "presence_penalty")]
    presence_penalty: Option<f64>,
    #[serde(default, alias = "frequency_penalty")]
    frequency_penalty: Option<f64>,
    #[serde(default, alias = "response_mime_type")]
    response_mime_type: Option<String>,
    #[serde(default, alias = "response_schema")]
    response_schema: Option<Value>,
    #[serde(default, alias = "response_json_schema")]
    response_json_schema: Option<Value>,
    #[serde(default, alias = "response_logprobs")]
    response_logprobs: Option<bool>,
    #[serde(default)]
    logprobs: Option<u32>,
    #[serde(default, alias = "thinking_config")]
    thinking_config: Option<WireThinkingConfig>,
    #[serde(default, alias = "response_modalities")]
    response_modalities: Option<Vec<String>>,
    /// Every other field: carried as the `generation_config` row of the field matrix, which
    /// the Gemini provider merges back and every other provider refuses by name.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireThinkingConfig {
    #[serde(default, alias = "include_thoughts")]
    include_thoughts: Option<bool>,
    #[serde(default, alias = "thinking_budget")]
    thinking_budget: Option<i64>,
    #[serde(default, alias = "thinking_level")]
    thinking_level: Option<String>,
}

/// `generationConfig` fields that shape the answer into something other than text and tool
/// calls, which the gateway cannot carry back from any provider.
const ANSWER_SHAPES: &[(&str, &str)] = &[
    ("speechConfig", "speech_config"),
    ("imageConfig", "image_config"),
    ("audioTimestamp", "audio_timestamp"),
];

/// A field of a part, by its camelCase or snake_case name.
fn field<'a>(part: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    part.get(camel).or_else(|| part.get(snake))
}

/// Lowers a schema in Gemini's OpenAPI subset to JSON Schema: type names lower-case,
/// `propertyOrdering` (Gemini-only) dropped, `nullable` folded into the type.
fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            let nullable = map.get("nullable") == Some(&Value::Bool(true));
            for (k, v) in map {
                match k.as_str() {
                    "propertyOrdering" | "property_ordering" | "nullable" => {}
                    "type" => {
                        let t = v
                            .as_str()
                            .map_or(v.clone(), |t| json!(t.to_ascii_lowercase()));
                        out.insert("type".into(), if nullable { json!([t, "null"]) } else { t });
                    }
                    "properties" => {
                        let props = v
                            .as_object()
                            .map(|p| p.iter().map(|(n, s)| (n.clone(), json_schema(s))).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), json_schema(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

/// A call made earlier in the conversation, still waiting for its result.
struct PendingCall {
    id: String,
    name: String,
}

/// The state of decoding a conversation: synthesised call ids and unanswered calls.
#[derive(Default)]
struct Calls {
    made: u32,
    pending: Vec<PendingCall>,
}

impl Calls {
    fn call(&mut self, part: &Map<String, Value>) -> Result<ToolCall, GatewayError> {
        let call = field(part, "functionCall", "function_call").and_then(Value::as_object);
        let name = call
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                GatewayError::invalid("`functionCall` needs a `name`").with_param("contents")
            })?;
        let id = call
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map_or_else(|| format!("call_{}", self.made), str::to_string);
        self.made += 1;
        let args = call.and_then(|c| c.get("args")).cloned();
        let arguments = match args {
            None | Some(Value::Null) => "{}".to_string(),
            Some(a) => a.to_string(),
        };
        self.pending.push(PendingCall {
            id: id.clone(),
            name: name.to_string(),
        });
        let mut call = ToolCall::function(id, name, arguments);
        // The signature Gemini put on this call, which Gemini 3 wants back on it.
        call.signature = field(part, "thoughtSignature", "thought_signature")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(call)
    }

    /// The tool message answering a call, paired by id, else by name (earliest first).
    fn result(&mut self, part: &Map<String, Value>) -> Result<Message, GatewayError> {
        let resp = field(part, "functionResponse", "function_response")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                GatewayError::invalid("`functionResponse` must be an object").with_param("contents")
            })?;
        let name = resp.get("name").and_then(Value::as_str).unwrap_or("");
        let id = resp
            .get("id")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty());
        let pos = match id {
            Some(id) => self.pending.iter().position(|c| c.id == id),
            None => self.pending.iter().position(|c| c.name == name),
        };
        let id = match (pos, id) {
            (Some(pos), _) => self.pending.remove(pos).id,
            // An id the conversation never showed is kept: the provider judges it.
            (None, Some(id)) => id.to_string(),
            (None, None) => {
                return Err(GatewayError::invalid(format!(
                    "`functionResponse` `{name}` answers no earlier `functionCall`"
                ))
                .with_param("contents"))
            }
        };
        let response = resp.get("response").cloned().unwrap_or(Value::Null);
        let text = match &response {
            Value::Object(map) if map.len() == 1 => match map.iter().next() {
                Some((k, Value::String(s)))
                    if matches!(k.as_str(), "result" | "output" | "content") =>
                {
                    s.clone()
                }
                _ => response.to_string(),
            },
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(Message {
            role: Role::Tool,
            content: Some(Content::Text(text)),
            name: (!name.is_empty()).then(|| name.to_string()),
            tool_calls: None,
            tool_call_id: Some(id),
            reasoning: Vec::new(),
        })
    }
}

/// A text or media part as canonical content, `None` for parts with no content to carry
/// (thoughts, thought signatures).
fn content_part(part: &Map<String, Value>) -> Result<Option<ContentPart>, GatewayError> {
    if part.get("thought") == Some(&Value::Bool(true)) {
        return Ok(None);
    }
    if let Some(text) = part.get("text").and_then(Value::as_str) {
        return Ok((!text.is_empty()).then(|| ContentPart::Text { text: text.into() }));
    }
    if let Some(data) = field(part, "inlineData", "inline_data").and_then(Value::as_object) {
        let mime = field(data, "mimeType", "mime_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let bytes = data.get("data").and_then(Value::as_str).unwrap_or("");
        if !mime.starts_with("image/") {
            return Err(GatewayError::invalid(format!(
                "inline data of type `{mime}` is not supported by this gateway; only images are"
            ))
            .with_param("contents"));
        }
        return Ok(Some(ContentPart::ImageUrl {
            image_url: ImageUrl {
                url: format!("data:{mime};base64,{bytes}"),
                detail: None,
            },
        }));
    }
    if let Some(file) = field(part, "fileData", "file_data").and_then(Value::as_object) {
        let uri = field(file, "fileUri", "file_uri")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Ok(Some(ContentPart::ImageUrl {
            image_url: ImageUrl {
                url: uri.into(),
                detail: None,
            },
        }));
    }
    if part
        .keys()
        .all(|k| matches!(k.as_str(), "thoughtSignature" | "thought_signature"))
    {
        return Ok(None);
    }
    let kind = part.keys().next().map_or("", String::as_str);
    Err(
        GatewayError::invalid(format!("`{kind}` parts are not supported by this gateway"))
            .with_param("contents"),
    )
}

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

fn plain(role: Role, parts: Vec<ContentPart>) -> Option<Message> {
    content_of(parts).map(|content| Message {
        role,
        content: Some(content),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning: Vec::new(),
    })
}

fn decode_tools(tools: Vec<Map<String, Value>>) -> Result<Vec<Tool>, GatewayError> {
    let mut out = Vec::new();
    for (i, tool) in tools.into_iter().enumerate() {
        for (kind, value) in tool {
            if !matches!(
                kind.as_str(),
                "functionDeclarations" | "function_declarations"
            ) {
                return Err(GatewayError::invalid(format!(
                    "the `{kind}` tool runs inside Google's service, which this gateway cannot \
                     do for other providers; only `functionDeclarations` are supported"
                ))
                .with_param(format!("tools[{i}]")));
            }
            for decl in value.as_array().into_iter().flatten() {
                let name = decl.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    return Err(
                        GatewayError::invalid("a function declaration needs a `name`")
                            .with_param(format!("tools[{i}]")),
                    );
                }
                let parameters = decl
                    .get("parametersJsonSchema")
                    .or_else(|| decl.get("parameters_json_schema"))
                    .cloned()
                    .or_else(|| decl.get("parameters").map(json_schema));
                out.push(Tool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: name.into(),
                        description: decl
                            .get("description")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        parameters: parameters.as_ref().map(RawJson::from_value),
                        strict: None,
                    },
                });
            }
        }
    }
    Ok(out)
}

fn decode_tool_choice(config: WireFunctionCallingConfig) -> Option<ToolChoice> {
    let mode = config
        .mode
        .as_deref()
        .unwrap_or("AUTO")
        .to_ascii_uppercase();
    Some(match mode.as_str() {
        "NONE" => ToolChoice::Mode("none".into()),
        "ANY" | "VALIDATED" if config.allowed_function_names.len() == 1 => ToolChoice::Named {
            kind: "function".into(),
            function: NamedFunction {
                name: config.allowed_function_names[0].clone(),
            },
        },
        "ANY" => ToolChoice::Mode("required".into()),
        _ => ToolChoice::Mode("auto".into()),
    })
}

/// Decodes a `generateContent` body for `model` (from the path) into canonical form.
pub fn decode_request(body: &[u8], model: &str, stream: bool) -> Result<ChatRequest, GatewayError> {
    let wire: WireRequest = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("invalid GenerateContentRequest: {e}")))?;
    if wire.cached_content.is_some() {
        return Err(GatewayError::invalid(
            "`cachedContent` refers to content cached inside Google's service, which this \
             gateway cannot reach for other providers; send the content itself",
        )
        .with_param("cachedContent"));
    }
    let mut messages = Vec::new();
    if let Some(system) = wire.system_instruction {
        let mut parts = Vec::new();
        for part in &system.parts {
            parts.extend(content_part(part)?);
        }
        messages.extend(plain(Role::System, parts));
    }
    let mut calls = Calls::default();
    for content in wire.contents {
        let model_turn = content.role.as_deref() == Some("model");
        let mut parts = Vec::new();
        let mut tool_calls = Vec::new();
        for part in &content.parts {
            if field(part, "functionCall", "function_call").is_some() {
                if !model_turn {
                    return Err(GatewayError::invalid(
                        "`functionCall` parts belong in `model` turns",
                    )
                    .with_param("contents"));
                }
                tool_calls.push(calls.call(part)?);
            } else if field(part, "functionResponse", "function_response").is_some() {
                // Text before the results is its own user message, in order.
                messages.extend(plain(Role::User, std::mem::take(&mut parts)));
                messages.push(calls.result(part)?);
            } else {
                parts.extend(content_part(part)?);
            }
        }
        if model_turn {
            if !parts.is_empty() || !tool_calls.is_empty() {
                messages.push(Message {
                    role: Role::Assistant,
                    content: content_of(parts),
                    name: None,
                    tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                    tool_call_id: None,
                    reasoning: Vec::new(),
                });
            }
        } else {
            messages.extend(plain(Role::User, parts));
        }
    }
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err(GatewayError::invalid("`contents` must not be empty").with_param("contents"));
    }
    let tools = decode_tools(wire.tools)?;
    let tool_choice = wire
        .tool_config
        .and_then(|c| c.function_calling_config)
        .and_then(decode_tool_choice);
    if let Some(name) = wire.rest.keys().next() {
        return Err(GatewayError::invalid(format!(
            "`{name}` is not a GenerateContentRequest field this gateway knows"
        ))
        .with_param(name.clone()));
    }
    let mut generation = wire.generation_config.unwrap_or_default();
    if generation.candidate_count.is_some_and(|n| n > 1) {
        return Err(GatewayError::invalid(
            "`candidateCount` above 1 is not supported by this gateway",
        )
        .with_param("generationConfig.candidateCount"));
    }
    let mut extra = generation_extras(&mut generation)?;
    if let Some(settings) = wire.safety_settings.filter(|s| !s.is_empty()) {
        extra.insert("safety_settings".into(), Value::Array(settings));
    }
    let json_mime = match generation.response_mime_type.as_deref() {
        None | Some("text/plain") => false,
        Some("application/json") => true,
        Some(other) => {
            return Err(GatewayError::invalid(format!(
                "`generationConfig.responseMimeType` `{other}` is not supported by this gateway; \
                 `text/plain` and `application/json` are"
            ))
            .with_param("generationConfig.responseMimeType"))
        }
    };
    let schema = generation
        .response_json_schema
        .or_else(|| generation.response_schema.as_ref().map(json_schema));
    if schema.is_some() && !json_mime {
        return Err(GatewayError::invalid(
            "a response schema needs `responseMimeType: application/json`",
        )
        .with_param("generationConfig.responseSchema"));
    }
    let response_format = match (json_mime, schema) {
        (true, Some(schema)) => Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: "response".into(),
                schema: Some(schema),
                strict: None,
                description: None,
            },
        }),
        (true, None) => Some(ResponseFormat::JsonObject),
        (false, _) => None,
    };
    if let Some(k) = generation.top_k {
        extra.insert("top_k".into(), json!(k));
    }
    if let Some(p) = generation.presence_penalty {
        extra.insert("presence_penalty".into(), json!(p));
    }
    if let Some(p) = generation.frequency_penalty {
        extra.insert("frequency_penalty".into(), json!(p));
    }
    Ok(ChatRequest {
        model: model.to_string(),
        messages,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        response_format,
        stream,
        stream_options: stream.then(|| StreamOptions {
            include_usage: Some(true),
            extra: Map::new(),
        }),
        temperature: generation.temperature,
        top_p: generation.top_p,
        stop: generation
            .stop_sequences
            .filter(|s| !s.is_empty())
            .map(Stop::Many),
        max_tokens: None,
        max_completion_tokens: generation.max_output_tokens,
        seed: generation.seed,
        user: None,
        extra,
    })
}

/// The `generationConfig` fields beyond sampling, limits and format, as canonical extras:
/// log-probabilities and thinking onto their matrix rows, the rest (Gemini-only tuning such
/// as `mediaResolution`) kept whole under `generation_config`. What would change the
/// answer's shape beyond text and tool calls is a 400.
fn generation_extras(
    generation: &mut WireGenerationConfig,
) -> Result<Map<String, Value>, GatewayError> {
    let refuse = |field: &str, why: &str| {
        GatewayError::invalid(format!("`generationConfig.{field}` {why}"))
            .with_param(format!("generationConfig.{field}"))
    };
    let mut extra = Map::new();
    if let Some(modalities) = &generation.response_modalities {
        if modalities.iter().any(|m| !m.eq_ignore_ascii_case("TEXT")) {
            return Err(refuse(
                "responseModalities",
                "asks for answers other than text, which this gateway does not return",
            ));
        }
    }
    for (camel, snake) in ANSWER_SHAPES {
        if generation.rest.contains_key(*camel) || generation.rest.contains_key(*snake) {
            return Err(refuse(
                camel,
                "asks for audio or image output, which this gateway does not return",
            ));
        }
    }
    if generation.response_logprobs == Some(true) {
        extra.insert("logprobs".into(), json!(true));
    }
    if let Some(n) = generation.logprobs {
        extra.insert("top_logprobs".into(), json!(n));
    }
    if let Some(thinking) = generation.thinking_config.take() {
        // Thoughts come back as thought parts when the model thinks with a budget (the
        // canonical `thinking`, which every provider that thinks returns); without one
        // there is nothing to ask every provider for.
        if thinking.include_thoughts == Some(true)
            && thinking.thinking_budget.is_none_or(|n| n <= 0)
        {
            return Err(refuse(
                "thinkingConfig.includeThoughts",
                "returns thought summaries only with a `thinkingBudget` above 0",
            ));
        }
        if let Some(level) = thinking.thinking_level {
            extra.insert("reasoning_effort".into(), json!(level.to_ascii_lowercase()));
        }
        match thinking.thinking_budget {
            // -1 is "dynamic", the models' own default: nothing to ask for.
            None | Some(-1) => {}
            Some(0) => {
                extra.insert("thinking".into(), json!({"type": "disabled"}));
            }
            Some(n) if n > 0 => {
                let mut value = json!({"type": "enabled", "budget_tokens": n});
                // Thinking asked Gemini's way returns no thoughts unless asked for; the
                // Gemini provider reads this, the others never send it.
                if thinking.include_thoughts != Some(true) {
                    value["include_thoughts"] = json!(false);
                }
                extra.insert("thinking".into(), value);
            }
            Some(_) => {
                return Err(refuse(
                    "thinkingConfig.thinkingBudget",
                    "must be -1 (dynamic), 0 (off) or a number of tokens",
                ))
            }
        }
    }
    let rest: Map<String, Value> = std::mem::take(&mut generation.rest)
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect();
    if !rest.is_empty() {
        extra.insert("generation_config".into(), Value::Object(rest));
    }
    Ok(extra)
}

/// The body with the model's defaults (OpenAI Chat names) added to `generationConfig` where
/// the client left them out, or `None` when nothing is missing.
pub fn apply_defaults(
    body: &[u8],
    defaults: &Map<String, Value>,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let mut request: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("request body is not a JSON object: {e}")))?;
    let key = if request.contains_key("generation_config") {
        "generation_config"
    } else {
        "generationConfig"
    };
    let config = request.entry(key).or_insert_with(|| json!({}));
    let Some(config) = config.as_object_mut() else {
        return Err(
            GatewayError::invalid("`generationConfig` must be an object")
                .with_param("generationConfig"),
        );
    };
    let mut changed = false;
    for (name, value) in defaults {
        let (camel, snake) = match name.as_str() {
            "temperature" => ("temperature", "temperature"),
            "top_p" => ("topP", "top_p"),
            "max_tokens" | "max_completion_tokens" => ("maxOutputTokens", "max_output_tokens"),
            "stop" => ("stopSequences", "stop_sequences"),
            "seed" => ("seed", "seed"),
            "presence_penalty" => ("presencePenalty", "presence_penalty"),
            "frequency_penalty" => ("frequencyPenalty", "frequency_penalty"),
            // No Gemini equivalent: nothing to default.
            _ => continue,
        };
        if config.contains_key(camel) || config.contains_key(snake) {
            continue;
        }
        let value = match (camel, value) {
            ("stopSequences", Value::String(s)) => json!([s]),
            (_, v) => v.clone(),
        };
        config.insert(camel.into(), value);
        changed = true;
    }
    if !changed {
        return Ok(None);
    }
    serde_json::to_vec(&request)
        .map(Some)
        .map_err(|e| GatewayError::invalid(format!("request body is not a JSON object: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Answers: canonical → Gemini.
// ---------------------------------------------------------------------------------------------

fn finish_str(reason: FinishReason) -> &'static str {
    match reason {
        // Gemini ends a function-calling turn with STOP too.
        FinishReason::Stop | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
    }
}

/// Gemini's `usageMetadata`: its `candidatesTokenCount` leaves thoughts out (they are
/// `thoughtsTokenCount`, present only when the model thought), the total counts both.
fn usage_json(u: &TokenUsage) -> Value {
    let reasoning = u.reasoning.min(u.output);
    let mut usage = json!({
        "promptTokenCount": u.input,
        "candidatesTokenCount": u.output - reasoning,
        "totalTokenCount": u.input + u.output,
    });
    if u.cached_input > 0 {
        usage["cachedContentTokenCount"] = json!(u.cached_input);
    }
    if reasoning > 0 {
        usage["thoughtsTokenCount"] = json!(reasoning);
    }
    usage
}

/// A `functionCall` part; arguments that are not a JSON object (a model's malformed output)
/// are kept under `_raw` rather than dropped.
fn call_part(call: &ToolCall) -> Value {
    let args = match serde_json::from_str::<Value>(&call.function.arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if call.function.arguments.trim().is_empty() => json!({}),
        _ => json!({"_raw": call.function.arguments}),
    };
    let mut part =
        json!({"functionCall": {"id": call.id, "name": call.function.name, "args": args}});
    if let Some(sig) = &call.signature {
        part["thoughtSignature"] = json!(sig);
    }
    part
}

fn chunk(
    parts: Vec<Value>,
    finish: Option<FinishReason>,
    usage: Option<&TokenUsage>,
    model: &str,
    id: &str,
) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = json!(finish_str(reason));
    }
    let mut body = json!({"candidates": [candidate], "modelVersion": model, "responseId": id});
    if let Some(u) = usage {
        body["usageMetadata"] = usage_json(u);
    }
    body
}

/// Encodes a complete answer as a `GenerateContentResponse`.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    let mut parts: Vec<Value> = resp.reasoning.iter().filter_map(thought_part).collect();
    if let Some(text) = resp.text.as_ref().filter(|t| !t.is_empty()) {
        parts.push(json!({"text": text}));
    }
    parts.extend(resp.tool_calls.iter().map(call_part));
    let body = chunk(
        parts,
        Some(resp.finish_reason.unwrap_or(FinishReason::Stop)),
        Some(&resp.usage),
        &resp.model,
        &resp.id,
    );
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Reasoning as a Gemini thought part (`thought: true`, the signature as
/// `thoughtSignature`). Encrypted reasoning (Anthropic `redacted_thinking`) has no Gemini
/// form and is not carried.
fn thought_part(reasoning: &Reasoning) -> Option<Value> {
    let Reasoning::Text {
        text,
        signature,
        format,
    } = reasoning
    else {
        return None;
    };
    let mut part = json!({"text": text, "thought": true});
    // Only Gemini's own signature is a `thoughtSignature` a Gemini client may send back.
    if let Some(s) = signature
        .as_ref()
        .filter(|_| format.as_deref() == Some(GEMINI_REASONING))
    {
        part["thoughtSignature"] = json!(s);
    }
    Some(part)
}

/// Encodes canonical stream events as Gemini `alt=sse` chunks (see the module docs).
pub struct GeminiStreamEncoder {
    id: String,
    model: String,
    /// A function call whose arguments may still grow: sent whole once they end.
    pending: Option<(u32, ToolCall)>,
    finish: Option<FinishReason>,
    usage: TokenUsage,
}

impl GeminiStreamEncoder {
    /// `id`/`model` are used until (unless) the upstream provides its own.
    pub fn new(id: String, model: String) -> Self {
        GeminiStreamEncoder {
            id,
            model,
            pending: None,
            finish: None,
            usage: TokenUsage::default(),
        }
    }

    fn send(&self, out: &mut Vec<u8>, parts: Vec<Value>, finish: Option<FinishReason>, last: bool) {
        let body = chunk(
            parts,
            finish,
            last.then_some(&self.usage),
            &self.model,
            &self.id,
        );
        write_event(out, None, &body.to_string());
    }

    fn flush_call(&mut self, out: &mut Vec<u8>) {
        if let Some((_, call)) = self.pending.take() {
            self.send(out, vec![call_part(&call)], None, false);
        }
    }
}

impl StreamEncoder for GeminiStreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { id, model } => {
                if !id.is_empty() {
                    self.id = id.clone();
                }
                if !model.is_empty() {
                    self.model = model.clone();
                }
            }
            StreamEvent::Text(text) => {
                self.flush_call(out);
                self.send(out, vec![json!({"text": text})], None, false);
            }
            StreamEvent::ToolCallStart {
                index,
                id,
                name,
                signature,
            } => {
                if self.pending.as_ref().is_some_and(|(i, _)| i == index) {
                    return;
                }
                self.flush_call(out);
                let mut call = ToolCall::function(id.clone(), name.clone(), String::new());
                call.signature.clone_from(signature);
                self.pending = Some((*index, call));
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                // Arguments of a call already sent (an upstream interleaving two calls)
                // cannot be added to it: Gemini sends every call whole.
                if let Some((i, call)) = &mut self.pending {
                    if i == index {
                        call.function.arguments.push_str(arguments);
                    }
                }
            }
            StreamEvent::Reasoning(text) => {
                self.flush_call(out);
                self.send(
                    out,
                    vec![json!({"text": text, "thought": true})],
                    None,
                    false,
                );
            }
            StreamEvent::ReasoningSignature { signature, format } => {
                if *format == GEMINI_REASONING {
                    let part = json!({"text": "", "thought": true, "thoughtSignature": signature});
                    self.send(out, vec![part], None, false);
                }
            }
            StreamEvent::Finish(reason) => self.finish = Some(*reason),
            StreamEvent::Usage(u) => self.usage.merge_max(*u),
            StreamEvent::ReasoningEncrypted { .. } | StreamEvent::Error(_) => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush_call(out);
        let finish = self.finish.unwrap_or(FinishReason::Stop);
        self.send(out, vec![json!({"text": ""})], Some(finish), true);
    }

    fn error(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        let body: Value = serde_json::from_slice(&err.body(Dialect::Gemini)).unwrap_or_default();
        write_event(out, None, &body.to_string());
    }
}
