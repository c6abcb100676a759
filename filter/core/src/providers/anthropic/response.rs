//! A complete Anthropic `message` → canonical response.

use serde::Deserialize;

use super::{arguments_string, finish_reason, WireBlock, WireUsage};
use crate::canonical::{ChatResponse, TokenUsage, ToolCall};
use crate::error::{ErrorKind, GatewayError};

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
    let mut reasoning = Vec::new();
    for block in wire.content {
        match block {
            b @ (WireBlock::Thinking { .. } | WireBlock::RedactedThinking { .. }) => {
                reasoning.extend(b.reasoning())
            }
            WireBlock::Text { text: t } => text.get_or_insert_with(String::new).push_str(&t),
            WireBlock::ToolUse { id, name, input } => {
                tool_calls.push(ToolCall::function(id, name, arguments_string(&input)))
            }
            _ => {}
        }
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        created: 0,
        text,
        tool_calls,
        reasoning,
        finish_reason: wire.stop_reason.as_deref().map(finish_reason),
        usage: wire.usage.canonical(),
    })
}

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
