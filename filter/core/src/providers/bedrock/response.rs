//! A complete Converse answer → canonical response.

use serde::Deserialize;
use serde_json::Value;

use super::{finish_reason, WireUsage};
use crate::canonical::{ChatResponse, FunctionCall, ToolCall};
use crate::error::{ErrorKind, GatewayError};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    output: Option<WireOutput>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
struct WireOutput {
    #[serde(default)]
    message: Option<WireMessage>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Vec<WireBlock>,
}

/// One content block. Blocks the gateway does not carry (reasoning, citations, guard
/// content) are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<WireToolUse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUse {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input: Value,
}

/// Parses a complete Converse response.
pub fn parse_chat(body: &[u8]) -> Result<ChatResponse, GatewayError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::BadGateway,
            format!("upstream returned an invalid Converse response: {e}"),
        )
    })?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    let blocks = wire
        .output
        .and_then(|o| o.message)
        .map(|m| m.content)
        .unwrap_or_default();
    for block in blocks {
        if let Some(t) = block.text {
            text.get_or_insert_with(String::new).push_str(&t);
        } else if let Some(call) = block.tool_use {
            tool_calls.push(ToolCall {
                id: call.tool_use_id,
                kind: "function".into(),
                function: FunctionCall {
                    name: call.name,
                    arguments: match call.input {
                        Value::Null => "{}".to_string(),
                        v => v.to_string(),
                    },
                },
            });
        }
    }
    Ok(ChatResponse {
        // Converse answers carry no id or model: the gateway fills them in.
        id: String::new(),
        model: String::new(),
        created: 0,
        text,
        tool_calls,
        reasoning: Vec::new(),
        finish_reason: wire.stop_reason.as_deref().map(finish_reason),
        usage: wire.usage.canonical(),
    })
}
