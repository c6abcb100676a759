//! Anthropic Messages: egress to `POST /v1/messages`.
//!
//! The wire types shared with the Anthropic ingress dialect ([`crate::ingress::anthropic`])
//! live here, because the blocks an Anthropic SDK sends are the blocks Anthropic's API
//! accepts. One submodule per direction: [`request`] (canonical → Anthropic), [`response`]
//! (a complete message → canonical), [`stream`] (the event stream → canonical events, and the
//! Anthropic → Anthropic pass-through), [`error`] (error bodies → gateway errors).
//!
//! Wire format: <https://docs.anthropic.com/en/api/messages> and
//! <https://docs.anthropic.com/en/docs/build-with-claude/streaming> (fixtures in
//! `filter/core/tests/fixtures/anthropic/` note their source).
//!
//! Mapping choices worth knowing:
//! - canonical `system` and `developer` messages, wherever they appear, merge (in order) into
//!   Anthropic's single top-level `system`, because Anthropic has no system role in `messages`.
//! - canonical `tool` messages become `tool_result` blocks in a `user` message, and consecutive
//!   messages of the same Anthropic role merge, because Anthropic requires alternating roles
//!   and all results of one assistant turn in the next user turn.
//! - `response_format` has no native equivalent: `json_object`/`json_schema` become an
//!   instruction appended to `system` (with the schema). A forced tool would be stricter but
//!   would turn the answer into a `tool_use` block the client did not ask for.
//! - Anthropic's `input_tokens` excludes cache reads and writes; canonical `input` includes
//!   them, so they are added on the way in and subtracted on the way out.
//! - Anthropic-only request fields the canonical form cannot carry (`top_k`, `thinking`,
//!   `cache_control`) are dropped when translating to another provider; the Anthropic →
//!   Anthropic fast path ([`AnthropicPassthrough`], `Plan`'s body patch) keeps them.

use serde::Deserialize;
use serde_json::Value;

use crate::canonical::{FinishReason, TokenUsage};

mod error;
mod request;
mod response;
mod stream;

pub use error::parse_error;
pub(crate) use request::thinking as claude_thinking;
pub use request::{build_chat, request_body};
pub(crate) use request::{reasoning_blocks, Block};
pub use response::{parse_chat, usage_of};
pub use stream::{AnthropicPassthrough, AnthropicStreamDecoder, AnthropicStreamFrames};

/// Native path of the Messages API (after the base URL prefix).
pub const MESSAGES_PATH: &str = "/v1/messages";
/// The API version this module speaks (sent as `anthropic-version`).
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; used when the client set no limit.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// One content block as Anthropic writes it. Unknown block types (documents, server tool
/// results) are skipped rather than rejected, so new API features do not break old
/// gateways.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WireBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    Image {
        source: WireImageSource,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        #[serde(default)]
        tool_use_id: String,
        #[serde(default)]
        content: Option<WireContent>,
        #[serde(default)]
        is_error: bool,
    },
    /// Extended thinking: <https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking>.
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    #[serde(other)]
    Other,
}

impl WireBlock {
    /// The canonical reasoning a thinking block holds, if it is one.
    pub(crate) fn reasoning(self) -> Option<crate::canonical::Reasoning> {
        use crate::canonical::{Reasoning, ANTHROPIC_REASONING};
        match self {
            WireBlock::Thinking {
                thinking,
                signature,
            } => Some(Reasoning::Text {
                text: thinking,
                signature: signature.filter(|s| !s.is_empty()),
                format: Some(ANTHROPIC_REASONING.to_string()),
            }),
            WireBlock::RedactedThinking { data } => Some(Reasoning::Encrypted {
                data,
                format: Some(ANTHROPIC_REASONING.to_string()),
            }),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WireImageSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    #[serde(other)]
    Other,
}

/// Message content, `tool_result` content and `system`: a string or blocks.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum WireContent {
    Text(String),
    Blocks(Vec<WireBlock>),
}

#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    #[serde(default)]
    pub(crate) input_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) output_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Takes the counts `newer` reports; a stream reports each count once or repeats it.
    pub(crate) fn merge(&mut self, newer: WireUsage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
    }

    /// Canonical usage: Anthropic's `input_tokens` excludes cache reads and writes.
    pub(crate) fn canonical(&self) -> TokenUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        TokenUsage {
            input: self.input_tokens.unwrap_or(0)
                + cached
                + self.cache_creation_input_tokens.unwrap_or(0),
            output: self.output_tokens.unwrap_or(0),
            cached_input: cached,
            // Anthropic counts thinking in `output_tokens` and reports no breakdown.
            reasoning: 0,
        }
    }
}

pub(crate) fn finish_reason(s: &str) -> FinishReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Tool-use `input` as canonical arguments text (`null` reads as no arguments).
pub(crate) fn arguments_string(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_string(),
        v => v.to_string(),
    }
}
