//! Canonical request → Bedrock Converse request.

use serde_json::{json, Map, Value};

use super::chat_path;
use crate::canonical::{
    ChatRequest, ContentPart, Message, RawJson, ResponseFormat, Role, ToolChoice,
};
use crate::error::{ErrorKind, GatewayError};
use crate::providers::anthropic::{claude_thinking, DEFAULT_MAX_TOKENS};
use crate::providers::{json_instruction, EgressRequest};

/// Builds a Converse (or ConverseStream) request from canonical form.
pub fn build_chat(req: &ChatRequest, upstream_model: &str) -> Result<EgressRequest, GatewayError> {
    let body = request_body(req)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if req.stream {
        headers.push(("accept".into(), "application/vnd.amazon.eventstream".into()));
    } else {
        headers.push(("accept".into(), "application/json".into()));
    }
    Ok(EgressRequest {
        path: chat_path(upstream_model, req.stream),
        headers,
        body,
    })
}

/// The image formats Converse takes, by media type.
fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

/// The content blocks of a message's text and images (empty text is left out: Converse
/// rejects blank text blocks).
fn content_blocks(message: &Message) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = Vec::new();
    for part in message.parts() {
        match part {
            ContentPart::Text { text } if text.is_empty() => {}
            ContentPart::Text { text } => blocks.push(json!({"text": text})),
            ContentPart::ImageUrl { image_url } => {
                let (media_type, data) = image_url.as_data().ok_or_else(|| {
                    GatewayError::invalid(
                        "Bedrock takes images inline only: send them as `data:` URLs",
                    )
                    .with_param("messages")
                })?;
                let format = image_format(media_type).ok_or_else(|| {
                    GatewayError::invalid(format!(
                        "Bedrock takes png, jpeg, gif or webp images, not `{media_type}`"
                    ))
                    .with_param("messages")
                })?;
                blocks.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
            }
        }
    }
    Ok(blocks)
}

/// An assistant turn's earlier reasoning as Converse `reasoningContent` blocks: Claude's
/// signed thinking (`reasoningText` with its `signature`) and redacted thinking
/// (`redactedContent`), which Bedrock checks; unsigned reasoning and another provider's are
/// left out, as for the Anthropic API (`anthropic::reasoning_blocks`).
/// <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ReasoningContentBlock.html>
fn reasoning_blocks(message: &Message) -> Vec<Value> {
    use crate::providers::anthropic::Block;
    crate::providers::anthropic::reasoning_blocks(&message.reasoning)
        .filter_map(|block| match block {
            Block::Thinking(t) => Some(json!({"reasoningContent": {"reasoningText": {
                "text": t.thinking, "signature": t.signature,
            }}})),
            Block::RedactedThinking(r) => {
                Some(json!({"reasoningContent": {"redactedContent": r.data}}))
            }
            _ => None,
        })
        .collect()
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

/// Tool-call arguments as the object Converse wants as `input`.
fn tool_input(arguments: &str) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(GatewayError::invalid(
            "tool call arguments must be a JSON object to be sent to a Bedrock model",
        )
        .with_param("messages")),
    }
}

/// The Converse request body as JSON (exposed for tests and benchmarks).
pub fn request_body(req: &ChatRequest) -> Result<Value, GatewayError> {
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut has_tool_blocks = false;
    for message in &req.messages {
        match message.role {
            Role::System | Role::Developer => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            Role::User => push_blocks(&mut messages, "user", content_blocks(message)?),
            Role::Assistant => {
                // Claude's signed reasoning goes back first in the turn, as Claude wrote it.
                let mut blocks = reasoning_blocks(message);
                blocks.extend(content_blocks(message)?);
                for call in message.tool_calls.iter().flatten() {
                    has_tool_blocks = true;
                    blocks.push(json!({"toolUse": {
                        "toolUseId": call.id,
                        "name": call.function.name,
                        "input": tool_input(&call.function.arguments)?,
                    }}));
                }
                push_blocks(&mut messages, "assistant", blocks);
            }
            Role::Tool => {
                has_tool_blocks = true;
                let id = message.tool_call_id.clone().ok_or_else(|| {
                    GatewayError::invalid("a `tool` message needs `tool_call_id`")
                        .with_param("messages")
                })?;
                let mut content = content_blocks(message)?;
                if content.is_empty() {
                    // A result must carry content; an empty one is an empty text.
                    content.push(json!({"text": ""}));
                }
                push_blocks(
                    &mut messages,
                    "user",
                    vec![json!({"toolResult": {"toolUseId": id, "content": content}})],
                );
            }
        }
    }
    // A schema goes to Converse's own structured output (`outputConfig.textFormat`, the
    // schema as a JSON string); JSON without a schema has no native mode: an instruction.
    let mut output_config = None;
    match &req.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.clone().unwrap_or_else(|| json!({}));
            let mut definition = json!({"schema": schema.to_string(), "name": json_schema.name});
            if let Some(description) = &json_schema.description {
                definition["description"] = json!(description);
            }
            output_config = Some(json!({"textFormat": {
                "type": "json_schema",
                "structure": {"jsonSchema": definition}
            }}));
        }
        Some(format) => {
            if let Some(instruction) = json_instruction(format) {
                system.push(json!({"text": instruction}));
            }
        }
        None => {}
    }
    let mut body = Map::new();
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
        body.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    // Claude's extended thinking (or `reasoning_effort` as a budget) is a model field:
    // `additionalModelRequestFields.thinking`
    // (https://docs.aws.amazon.com/bedrock/latest/userguide/claude-messages-extended-thinking.html).
    // Other models answer Bedrock's own 400 for it.
    let (thinking, thinking_limit) =
        claude_thinking(req, req.output_limit().unwrap_or(DEFAULT_MAX_TOKENS));
    let limit = if thinking.is_some() {
        Some(thinking_limit)
    } else {
        req.output_limit()
    };
    if let Some(n) = limit {
        inference.insert("maxTokens".into(), json!(n));
    }
    if let Some(thinking) = thinking {
        body.insert(
            "additionalModelRequestFields".into(),
            json!({"thinking": thinking}),
        );
    }
    if let Some(t) = req.temperature {
        inference.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        inference.insert("topP".into(), json!(p));
    }
    let stops = req.stop_sequences();
    if !stops.is_empty() {
        inference.insert("stopSequences".into(), json!(stops));
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(config) = output_config {
        body.insert("outputConfig".into(), config);
    }
    let tools: Vec<Value> = req
        .tools
        .iter()
        .flatten()
        .map(|t| {
            let mut spec = json!({
                "name": t.function.name,
                "inputSchema": {"json": t.function.parameters.as_ref().map(RawJson::to_value)
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}))},
            });
            if let Some(d) = t.function.description.as_ref().filter(|d| !d.is_empty()) {
                spec["description"] = json!(d);
            }
            json!({"toolSpec": spec})
        })
        .collect();
    if !tools.is_empty() {
        let mut config = json!({"tools": tools});
        let choice = match &req.tool_choice {
            Some(ToolChoice::Mode(m)) if m == "required" => Some(json!({"any": {}})),
            Some(ToolChoice::Mode(m)) if m == "auto" => Some(json!({"auto": {}})),
            Some(ToolChoice::Named { function, .. }) => {
                Some(json!({"tool": {"name": function.name}}))
            }
            _ => None,
        };
        if let Some(choice) = choice {
            config["toolChoice"] = choice;
        }
        body.insert("toolConfig".into(), config);
    } else if has_tool_blocks {
        return Err(GatewayError::invalid(
            "Bedrock needs the `tools` declared when the conversation has tool calls or results",
        )
        .with_param("tools"));
    }
    Ok(Value::Object(body))
}
