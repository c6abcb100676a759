//! Google Gemini API: egress to `models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`.
//!
//! Wire format: <https://ai.google.dev/api/generate-content> and
//! <https://ai.google.dev/gemini-api/docs/function-calling> (fixtures in
//! `filter/core/tests/fixtures/gemini/` note their source).
//!
//! Mapping choices worth knowing:
//! - Gemini's `functionResponse` names the function, not the call; the name is looked up
//!   from the latest earlier assistant tool call with the result's `tool_call_id`.
//! - Gemini function calls carry no id (newer models may): missing ids are synthesised as
//!   `call_<n>`, counting calls within the response, so the same answer always gets the same
//!   ids and the lookup above finds them when the client echoes them back.
//! - Tool and response schemas go through a sanitiser that drops the JSON-Schema keywords
//!   Gemini's OpenAPI subset rejects (`additionalProperties`, `$schema`, `strict`).
//! - `thoughtsTokenCount` is billed as output, so it counts as output (and as reasoning).
//! - Thought summaries (`thought: true` parts) and thought signatures become canonical
//!   reasoning. Reasoning of earlier turns is not sent back: a signature is bound to the
//!   part it came on, which the canonical form does not keep (the field matrix says so).
//! - Thinking: Anthropic-style `thinking` gives `thinkingConfig.thinkingBudget` as written,
//!   `reasoning_effort` the budgets Google's OpenAI-compatible endpoint uses for it. A
//!   Gemini client's `safetySettings` and other `generationConfig` fields (the matrix's
//!   `safety_settings` and `generation_config` rows) go back where they came from.
//! - Gemini ends a function-calling turn with `STOP`; it becomes `tool_calls` when the answer
//!   holds function calls, as OpenAI clients expect.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, Message, Reasoning, ResponseFormat, Role,
    TokenUsage, ToolCall, ToolChoice, GEMINI_REASONING,
};
use crate::error::{ErrorKind, GatewayError};
use crate::providers::{encode_segment, error_message, redact, tool_name_for, EgressRequest};
use crate::stream::{malformed, SseFrameDecoder, SseStreamDecoder, StreamEvent};

/// The native path for a model, streaming or not.
pub fn chat_path(upstream_model: &str, stream: bool) -> String {
    let model = upstream_model
        .strip_prefix("models/")
        .unwrap_or(upstream_model);
    let model = encode_segment(model);
    if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    }
}

/// Keywords of Gemini's `Schema` (an OpenAPI 3.0 subset) kept as they are.
const SCHEMA_KEYWORDS: &[&str] = &[
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "default",
    "example",
    "propertyOrdering",
];

/// Keywords JSON Schema has and Gemini's subset has not, which change nothing Gemini can
/// enforce (annotations and the closed-object flag Gemini's objects already behave as).
const SCHEMA_IGNORED: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "additionalProperties",
    "strict",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
];

/// Converts a JSON Schema into Gemini's OpenAPI subset: `$ref`s into `$defs`/`definitions`
/// inlined (a recursive one is refused), `const` as a one-value `enum`, `oneOf` as `anyOf`,
/// a type list with `null` as `nullable` (several types as `anyOf`), `allOf` of one schema
/// unwrapped. A keyword Gemini cannot enforce and that is not a mere annotation
/// (`not`, `if`, `patternProperties`, ...) is refused with a 400 rather than dropped.
/// `param` names the request field the schema came from, for the error.
pub fn openapi_schema(schema: &Value, param: &'static str) -> Result<Value, GatewayError> {
    convert_schema(schema, schema, 0).map_err(|e| e.with_param(param))
}

fn schema_error(message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(message)
}

fn convert_schema(schema: &Value, root: &Value, depth: usize) -> Result<Value, GatewayError> {
    if depth > 32 {
        return Err(schema_error(
            "the JSON schema nests too deeply (or refers to itself) for Gemini's schema subset",
        ));
    }
    let map = match schema {
        Value::Object(map) => map,
        Value::Bool(true) => return Ok(json!({})),
        _ => return Err(schema_error("a JSON schema must be an object")),
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .ok_or_else(|| schema_error(format!("unresolvable `$ref` `{reference}`")))?;
        return convert_schema(target, root, depth + 1);
    }
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" => {
                let types: Vec<&str> = match value {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
                if non_null.len() < types.len() {
                    out.insert("nullable".into(), json!(true));
                }
                match non_null.as_slice() {
                    [t] => {
                        out.insert("type".into(), json!(t));
                    }
                    [] => {}
                    many => {
                        let any: Vec<Value> = many.iter().map(|t| json!({"type": t})).collect();
                        out.insert("anyOf".into(), Value::Array(any));
                    }
                }
            }
            "properties" => {
                let Value::Object(props) = value else {
                    return Err(schema_error("`properties` must be an object"));
                };
                let mut converted = Map::new();
                for (name, prop) in props {
                    converted.insert(name.clone(), convert_schema(prop, root, depth + 1)?);
                }
                out.insert("properties".into(), Value::Object(converted));
            }
            "items" => {
                out.insert("items".into(), convert_schema(value, root, depth + 1)?);
            }
            "anyOf" | "oneOf" => {
                let Value::Array(list) = value else {
                    return Err(schema_error(format!("`{key}` must be a list")));
                };
                let converted = list
                    .iter()
                    .map(|s| convert_schema(s, root, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert("anyOf".into(), Value::Array(converted));
            }
            "allOf" => match value.as_array().map(Vec::as_slice) {
                Some([one]) => {
                    if let Value::Object(inner) = convert_schema(one, root, depth + 1)? {
                        out.extend(inner);
                    }
                }
                _ => {
                    return Err(schema_error(
                        "Gemini's schema subset has no `allOf` of several schemas",
                    ))
                }
            },
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "required" => {
                out.insert(key.clone(), value.clone());
            }
            "exclusiveMinimum" | "exclusiveMaximum" if value.is_number() => {
                // Gemini has inclusive bounds only; an exclusive bound is refused below
                // unless it is redundant, which cannot be known here.
                return Err(schema_error(format!(
                    "Gemini's schema subset has no `{key}`; use `minimum`/`maximum`"
                )));
            }
            k if SCHEMA_KEYWORDS.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            k if SCHEMA_IGNORED.contains(&k) => {}
            k => {
                return Err(schema_error(format!(
                    "Gemini's schema subset has no `{k}`; the gateway refuses rather than drop \
                     the constraint"
                )))
            }
        }
    }
    Ok(Value::Object(out))
}

fn media_type_for_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else if path.ends_with(".pdf") {
        "application/pdf"
    } else {
        "image/jpeg"
    }
}

fn content_parts(message: &Message) -> Vec<Value> {
    message
        .parts()
        .into_iter()
        .filter_map(|part| match part {
            ContentPart::Text { text } if text.is_empty() => None,
            ContentPart::Text { text } => Some(json!({"text": text})),
            ContentPart::ImageUrl { image_url } => Some(match image_url.as_data() {
                Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
                None => json!({"fileData": {
                    "mimeType": media_type_for_url(&image_url.url),
                    "fileUri": image_url.url,
                }}),
            }),
        })
        .collect()
}

fn push_parts(
    contents: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    parts: Vec<Value>,
) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(parts),
        _ => contents.push((role, parts)),
    }
}

/// Builds a Gemini request from canonical form.
pub fn build_chat(req: &ChatRequest, upstream_model: &str) -> Result<EgressRequest, GatewayError> {
    let body = request_body(req)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    Ok(EgressRequest {
        path: chat_path(upstream_model, req.stream),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    })
}

/// The Gemini request body as JSON (exposed for tests).
pub fn request_body(req: &ChatRequest) -> Result<Value, GatewayError> {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in req.messages.iter().enumerate() {
        match message.role {
            Role::System | Role::Developer => system.extend(content_parts(message)),
            Role::User => push_parts(&mut contents, "user", content_parts(message)),
            Role::Assistant => {
                let mut parts = content_parts(message);
                for call in message.tool_calls.iter().flatten() {
                    let args = match call.function.arguments.trim() {
                        "" => json!({}),
                        a => serde_json::from_str::<Value>(a)
                            .ok()
                            .filter(Value::is_object)
                            .ok_or_else(|| {
                                GatewayError::invalid(
                                    "tool call arguments must be a JSON object to be sent to a \
                                     Gemini model",
                                )
                                .with_param("messages")
                            })?,
                    };
                    let mut part =
                        json!({"functionCall": {"name": call.function.name, "args": args}});
                    // Back on the very part it came on: Gemini 3 answers 400 without it
                    // (only the first of parallel calls has one).
                    if let Some(sig) = &call.signature {
                        part["thoughtSignature"] = json!(sig);
                    }
                    parts.push(part);
                }
                push_parts(&mut contents, "model", parts);
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or("");
                let name = tool_name_for(&req.messages[..i], id)
                    .or_else(|| message.name.clone())
                    .ok_or_else(|| {
                        GatewayError::invalid(format!(
                            "tool result `{id}` answers no earlier assistant tool call"
                        ))
                        .with_param("messages")
                    })?;
                let text = message.text_content();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"result": text}),
                };
                push_parts(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
        }
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let declarations: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.function.name});
                if let Some(desc) = &t.function.description {
                    d["description"] = json!(desc);
                }
                if let Some(p) = &t.function.parameters {
                    d["parameters"] = openapi_schema(&p.to_value(), "tools")?;
                }
                Ok(d)
            })
            .collect::<Result<_, GatewayError>>()?;
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if let Some(choice) = &req.tool_choice {
        let config = match choice {
            ToolChoice::Mode(m) if m == "none" => json!({"mode": "NONE"}),
            ToolChoice::Mode(m) if m == "required" => json!({"mode": "ANY"}),
            ToolChoice::Mode(_) => json!({"mode": "AUTO"}),
            ToolChoice::Named { function, .. } => {
                json!({"mode": "ANY", "allowedFunctionNames": [function.name]})
            }
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    let mut generation = Map::new();
    if let Some(t) = req.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        generation.insert("topP".into(), json!(p));
    }
    for (field, native) in [
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = req.extra.get(field).filter(|v| !v.is_null()) {
            generation.insert(native.into(), v.clone());
        }
    }
    if let Some(n) = req.output_limit() {
        generation.insert("maxOutputTokens".into(), json!(n));
    }
    let stops = req.stop_sequences();
    if !stops.is_empty() {
        generation.insert("stopSequences".into(), json!(stops));
    }
    if let Some(seed) = req.seed {
        generation.insert("seed".into(), json!(seed));
    }
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = &json_schema.schema {
                generation.insert(
                    "responseSchema".into(),
                    openapi_schema(schema, "response_format")?,
                );
            }
        }
        Some(ResponseFormat::Text) | None => {}
    }
    if let Some(budget) = thinking_budget(req)? {
        // Thinking asked for Anthropic's way returns the thinking (Anthropic always does):
        // Gemini returns thought summaries only when asked. A Gemini client that did not
        // ask says so (`include_thoughts: false`, from the Gemini ingress).
        let include = budget > 0
            && req
                .extra
                .get("thinking")
                .is_some_and(|t| t.get("include_thoughts") != Some(&Value::Bool(false)));
        let mut config = json!({"thinkingBudget": budget});
        if include {
            config["includeThoughts"] = json!(true);
        }
        generation.insert("thinkingConfig".into(), config);
    }
    // Gemini's own generation fields a Gemini client sent, as it wrote them.
    if let Some(Value::Object(own)) = req.extra.get("generation_config") {
        for (k, v) in own {
            generation.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    if let Some(settings) = req.extra.get("safety_settings").filter(|v| !v.is_null()) {
        body.insert("safetySettings".into(), settings.clone());
    }
    Ok(Value::Object(body))
}

/// The thinking budget a request asks for: Anthropic-style `thinking` as written, else
/// `reasoning_effort` as the budgets Google's OpenAI-compatible endpoint documents for it
/// (`none` 0, `minimal`/`low` 1024, `medium` 8192, `high` 24576).
fn thinking_budget(req: &ChatRequest) -> Result<Option<i64>, GatewayError> {
    if let Some(thinking) = req.extra.get("thinking").filter(|v| !v.is_null()) {
        return match thinking.get("type").and_then(Value::as_str) {
            Some("disabled") => Ok(Some(0)),
            Some("enabled") => thinking
                .get("budget_tokens")
                .and_then(Value::as_i64)
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| {
                    GatewayError::invalid("`thinking.budget_tokens` must be a positive integer")
                        .with_param("thinking")
                }),
            _ => Err(GatewayError::invalid(
                "`thinking.type` must be `enabled` or `disabled` for a Gemini model",
            )
            .with_param("thinking")),
        };
    }
    let Some(effort) = req.extra.get("reasoning_effort").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match effort.as_str() {
        Some("none") => Ok(Some(0)),
        Some("minimal" | "low") => Ok(Some(1024)),
        Some("medium") => Ok(Some(8192)),
        Some("high") => Ok(Some(24576)),
        _ => Err(GatewayError::invalid(
            "`reasoning_effort` must be `none`, `minimal`, `low`, `medium` or `high`",
        )
        .with_param("reasoning_effort")),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: String,
    #[serde(default)]
    response_id: String,
    #[serde(default)]
    prompt_feedback: Option<WirePromptFeedback>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    /// <https://ai.google.dev/gemini-api/docs/thinking#signatures>
    #[serde(default)]
    thought_signature: Option<String>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl WireUsage {
    fn canonical(&self) -> TokenUsage {
        TokenUsage {
            input: self.prompt_token_count,
            output: self.candidates_token_count + self.thoughts_token_count,
            cached_input: self.cached_content_token_count,
            reasoning: self.thoughts_token_count,
        }
    }
}

fn finish_reason(s: &str, has_tool_calls: bool) -> FinishReason {
    match s {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => FinishReason::ContentFilter,
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// A `functionCall` part as a canonical call, with the part's thought signature.
fn tool_call(call: WireFunctionCall, signature: Option<String>, index: u32) -> ToolCall {
    let mut out = ToolCall::function(
        call.id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("call_{index}")),
        call.name,
        call.args
            .map_or_else(|| "{}".to_string(), |a| a.to_string()),
    );
    out.signature = signature.filter(|s| !s.is_empty());
    out
}

impl WirePart {
    /// The reasoning a part holds: a thought summary (`thought: true`), or the thought
    /// signature Gemini puts on another part. A `functionCall` part's signature belongs to
    /// its call ([`ToolCall::signature`]) and is not reasoning.
    fn reasoning(&mut self) -> Option<Reasoning> {
        if self.function_call.is_some() {
            return None;
        }
        let signature = self.thought_signature.take().filter(|s| !s.is_empty());
        let text = if self.thought {
            self.text.take().unwrap_or_default()
        } else {
            String::new()
        };
        (self.thought || signature.is_some()).then(|| Reasoning::Text {
            text,
            signature,
            format: Some(GEMINI_REASONING.to_string()),
        })
    }
}

/// Parses a complete Gemini `GenerateContentResponse`.
pub fn parse_chat(body: &[u8]) -> Result<ChatResponse, GatewayError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::BadGateway,
            format!("upstream returned an invalid Gemini response: {e}"),
        )
    })?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    let mut reasoning = Vec::new();
    let mut finish = None;
    if let Some(candidate) = wire.candidates.into_iter().next() {
        for mut part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            reasoning.extend(part.reasoning());
            if let Some(call) = part.function_call {
                let index = tool_calls.len() as u32;
                tool_calls.push(tool_call(call, part.thought_signature, index));
            } else if let Some(t) = part.text.filter(|_| !part.thought) {
                text.get_or_insert_with(String::new).push_str(&t);
            }
        }
        finish = candidate
            .finish_reason
            .map(|r| finish_reason(&r, !tool_calls.is_empty()));
    } else if wire.prompt_feedback.and_then(|f| f.block_reason).is_some() {
        finish = Some(FinishReason::ContentFilter);
    }
    Ok(ChatResponse {
        id: wire.response_id,
        model: wire.model_version,
        created: 0,
        text,
        tool_calls,
        reasoning,
        finish_reason: finish,
        usage: wire
            .usage_metadata
            .map(|u| u.canonical())
            .unwrap_or_default(),
    })
}

/// Translates a Gemini error (`{"error":{"code","message","status"}}`). Gemini answers a bad
/// API key with 400 `API_KEY_INVALID`; that becomes a 401 so clients see an auth failure.
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    let value: Value = serde_json::from_slice(body).unwrap_or_default();
    let bad_key = value
        .pointer("/error/details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        });
    let message = error_message(body, status);
    if bad_key {
        return GatewayError::new(ErrorKind::Authentication, message);
    }
    GatewayError::new(ErrorKind::from_status(status), message).with_status(status)
}

/// Decodes a Gemini `alt=sse` stream: every event is a whole `GenerateContentResponse`,
/// and each function call arrives whole in one of them.
#[derive(Default)]
pub struct GeminiStreamFrames {
    started: bool,
    next_tool: u32,
    finished: bool,
}

/// The Gemini stream decoder: SSE framing plus [`GeminiStreamFrames`].
pub type GeminiStreamDecoder = SseStreamDecoder<GeminiStreamFrames>;

impl SseFrameDecoder for GeminiStreamFrames {
    fn decode_frame(
        &mut self,
        _event: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), GatewayError> {
        let value: Value = serde_json::from_str(data).map_err(malformed)?;
        if let Some(err) = value.get("error") {
            let status = err.get("code").and_then(Value::as_u64).unwrap_or(502);
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            let kind = u16::try_from(status).map_or(ErrorKind::BadGateway, ErrorKind::from_status);
            out.push(StreamEvent::Error(GatewayError::new(kind, redact(msg))));
            return Ok(());
        }
        let chunk: WireResponse = serde_json::from_value(value).map_err(malformed)?;
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.response_id.clone(),
                model: chunk.model_version.clone(),
            });
        }
        let mut finish = None;
        if let Some(candidate) = chunk.candidates.into_iter().next() {
            for mut part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(reasoning) = part.reasoning() {
                    StreamEvent::push_reasoning(out, reasoning, GEMINI_REASONING);
                }
                if let Some(call) = part.function_call {
                    let index = self.next_tool;
                    self.next_tool += 1;
                    let call = tool_call(call, part.thought_signature, index);
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: call.id,
                        name: call.function.name,
                        signature: call.signature,
                    });
                    out.push(StreamEvent::ToolCallArgs {
                        index,
                        arguments: call.function.arguments,
                    });
                } else if let Some(t) = part.text.filter(|t| !part.thought && !t.is_empty()) {
                    out.push(StreamEvent::Text(t));
                }
            }
            finish = candidate
                .finish_reason
                .map(|r| finish_reason(&r, self.next_tool > 0));
        } else if chunk.prompt_feedback.and_then(|f| f.block_reason).is_some() {
            finish = Some(FinishReason::ContentFilter);
        }
        if let Some(u) = chunk.usage_metadata {
            out.push(StreamEvent::Usage(u.canonical()));
        }
        if let Some(reason) = finish.filter(|_| !self.finished) {
            self.finished = true;
            out.push(StreamEvent::Finish(reason));
        }
        Ok(())
    }
}
