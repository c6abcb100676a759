//! Canonical request → Anthropic Messages request.

use serde_json::{json, Map, Value};

use super::{API_VERSION, DEFAULT_MAX_TOKENS, MESSAGES_PATH};
use crate::canonical::{
    ChatRequest, ContentPart, ImageUrl, Message, ResponseFormat, Role, ToolChoice,
};
use crate::error::{ErrorKind, GatewayError};
use crate::providers::{json_instruction, EgressRequest};

fn image_block(image: &ImageUrl) -> Value {
    match image.as_data() {
        Some((media_type, data)) => json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }),
        None => json!({"type": "image", "source": {"type": "url", "url": image.url}}),
    }
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

/// The extended-thinking budget (tokens) standing for an OpenAI `reasoning_effort`; `none`
/// and `minimal` mean no thinking.
pub fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

/// Claude's extended `thinking` for a request (its own, or one standing for
/// `reasoning_effort`), with the output limit to send beside it: Claude counts thinking in
/// the limit, so a budget from an effort is added to `limit`. Shared by the Anthropic API and
/// Claude on Bedrock (`additionalModelRequestFields.thinking`).
pub(crate) fn thinking(req: &ChatRequest, limit: u32) -> (Option<Value>, u32) {
    if let Some(thinking) = req.extra.get("thinking").filter(|v| !v.is_null()) {
        let mut thinking = thinking.clone();
        // The Gemini ingress's note that its client wants no thoughts back is not Claude's
        // to read (Claude returns its thinking either way).
        if let Some(t) = thinking.as_object_mut() {
            t.remove("include_thoughts");
        }
        return (Some(thinking), limit);
    }
    match req
        .extra
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .and_then(thinking_budget)
    {
        Some(budget) => (
            Some(json!({"type": "enabled", "budget_tokens": budget})),
            limit.saturating_add(budget),
        ),
        None => (None, limit),
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
                // Thinking comes first in an assistant turn, as Anthropic wrote it.
                let mut blocks = super::reasoning_blocks(&message.reasoning);
                blocks.extend(content_blocks(message));
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
    // A schema goes in Anthropic's native structured output (`output_config.format`), which
    // constrains the text of the answer; a schema-less JSON object can only be asked for.
    let mut output_format = None;
    match &req.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            output_format = Some(json!({
                "type": "json_schema",
                "schema": json_schema.schema.clone().unwrap_or_else(|| json!({"type": "object"})),
            }));
        }
        Some(format) => system.extend(json_instruction(format)),
        None => {}
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
    let (thinking, max_tokens) = thinking(req, req.output_limit().unwrap_or(DEFAULT_MAX_TOKENS));
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(k) = req.extra.get("top_k").filter(|v| !v.is_null()) {
        body.insert("top_k".into(), k.clone());
    }
    if let Some(thinking) = thinking {
        body.insert("thinking".into(), thinking);
    }
    if let Some(format) = output_format {
        body.insert("output_config".into(), json!({"format": format}));
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
