//! A complete Converse answer → canonical response.

use serde::Deserialize;
use serde_json::Value;

use super::{finish_reason, WireUsage};
use crate::canonical::{ChatResponse, FunctionCall, Reasoning, ToolCall, ANTHROPIC_REASONING};
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

/// One content block. Blocks the gateway does not carry (citations, guard content) are
/// skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<WireToolUse>,
    #[serde(default)]
    reasoning_content: Option<WireReasoning>,
}

/// A `reasoningContent` block (Claude's extended thinking):
/// <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ReasoningContentBlock.html>.
/// Also the shape of a streamed `reasoningContent` delta, where each piece comes alone.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireReasoning {
    /// Complete answers: the text with its signature.
    #[serde(default)]
    reasoning_text: Option<WireReasoningText>,
    /// Redacted (encrypted) reasoning, base64 in JSON.
    #[serde(default)]
    redacted_content: Option<String>,
    /// Stream deltas: a piece of the text ...
    #[serde(default)]
    text: Option<String>,
    /// ... or the signature closing it.
    #[serde(default)]
    signature: Option<String>,
}

#[derive(Deserialize)]
struct WireReasoningText {
    #[serde(default)]
    text: String,
    #[serde(default)]
    signature: Option<String>,
}

impl WireReasoning {
    /// As canonical reasoning: Claude's signature, whoever hosts Claude
    /// ([`ANTHROPIC_REASONING`]).
    pub(super) fn canonical(self) -> Option<Reasoning> {
        let format = Some(ANTHROPIC_REASONING.to_string());
        if let Some(data) = self.redacted_content.filter(|d| !d.is_empty()) {
            return Some(Reasoning::Encrypted { data, format });
        }
        let (text, signature) = match self.reasoning_text {
            Some(t) => (t.text, t.signature),
            None => (self.text.unwrap_or_default(), self.signature),
        };
        let signature = signature.filter(|s| !s.is_empty());
        (!text.is_empty() || signature.is_some()).then_some(Reasoning::Text {
            text,
            signature,
            format,
        })
    }
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
    let mut reasoning = Vec::new();
    let blocks = wire
        .output
        .and_then(|o| o.message)
        .map(|m| m.content)
        .unwrap_or_default();
    for block in blocks {
        if let Some(r) = block.reasoning_content.and_then(WireReasoning::canonical) {
            reasoning.push(r);
        } else if let Some(t) = block.text {
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
                signature: None,
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
        reasoning,
        finish_reason: wire.stop_reason.as_deref().map(finish_reason),
        usage: wire.usage.canonical(),
    })
}
