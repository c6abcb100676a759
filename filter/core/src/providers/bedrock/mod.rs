//! AWS Bedrock Runtime: egress to the Converse API (`POST /model/{modelId}/converse`) and
//! ConverseStream (`/converse-stream`, answered as a binary
//! `application/vnd.amazon.eventstream`).
//!
//! Wire format: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html>,
//! <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html>,
//! tool use <https://docs.aws.amazon.com/bedrock/latest/userguide/tool-use-inference-call.html>
//! (fixtures in `filter/core/tests/fixtures/bedrock/` note their source).
//!
//! One submodule per concern: [`request`] (canonical → Converse), [`response`] (a Converse
//! answer → canonical), [`stream`] (ConverseStream events → canonical events), [`error`]
//! (errors → gateway errors), [`eventstream`] (the binary framing) and [`sigv4`] (request
//! signing, with the time passed in).
//!
//! Credentials: SigV4 with an access key (and, for temporary credentials, a session token)
//! from named secrets (`aws.access_key_id_secret`, ...), or a Bedrock API key
//! (`api_key_secret`, sent as `Authorization: Bearer`). A request is signed for the time
//! its plan was made (`Plan` is built when the body arrives); AWS accepts signatures for
//! 5 minutes, which bounds `total_timeout_ms` for Bedrock deployments.
//!
//! Mapping choices worth knowing:
//! - canonical `system`/`developer` messages become Converse's top-level `system` blocks;
//!   `tool` messages become `toolResult` blocks of a user turn, and consecutive turns of one
//!   role merge, because Converse requires alternating roles.
//! - Converse takes images as bytes only: `data:` URLs are sent inline, an `https://` image
//!   is a 400 (the gateway fetches nothing).
//! - `tool_choice: "none"` has no Converse equivalent: tools stay declared (a conversation
//!   with tool blocks needs them) and no `toolChoice` is sent.
//! - A `json_schema` response format is Converse's native structured output
//!   (`outputConfig.textFormat`, the schema as a JSON string, enforced by Bedrock for the
//!   models that support it; others answer a `ValidationException`, passed on); `json_object`
//!   has no native mode and becomes an instruction in `system`.
//! - `inputTokens` excludes cache reads and writes; canonical input includes them.
//! - The stream's `Finish` is emitted at its last event, `metadata` (which carries usage),
//!   so a stream cut after `messageStop` still counts as truncated.

use serde::Deserialize;

use crate::canonical::{FinishReason, TokenUsage};

mod error;
pub mod eventstream;
mod request;
mod response;
pub mod sigv4;
mod stream;

pub use error::parse_error;
pub use request::{build_chat, request_body};
pub use response::parse_chat;
pub use stream::BedrockStreamDecoder;

/// SigV4 service name of Bedrock Runtime.
pub const SIGNING_SERVICE: &str = "bedrock";

/// A Bedrock provider's AWS settings (`"aws"` in the provider config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The region requests are signed for (and, without a `base_url`, sent to).
    pub region: String,
    /// Secret holding the access key id.
    #[serde(default)]
    pub access_key_id_secret: Option<String>,
    /// Secret holding the secret access key.
    #[serde(default)]
    pub secret_access_key_secret: Option<String>,
    /// Secret holding a session token (temporary credentials only).
    #[serde(default)]
    pub session_token_secret: Option<String>,
}

impl AwsConfig {
    /// The public endpoint of Bedrock Runtime in the region.
    pub fn default_base_url(&self) -> String {
        format!("https://bedrock-runtime.{}.amazonaws.com", self.region)
    }
}

/// The native path of a model's Converse (or ConverseStream) endpoint. Model ids and ARNs
/// carry `:` and `/`, which are percent-encoded to stay one path segment.
pub fn chat_path(upstream_model: &str, stream: bool) -> String {
    let model = crate::providers::encode_segment(upstream_model);
    if stream {
        format!("/model/{model}/converse-stream")
    } else {
        format!("/model/{model}/converse")
    }
}

/// Converse's `usage`.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl WireUsage {
    /// Canonical usage: `inputTokens` excludes cache reads and writes.
    fn canonical(self) -> TokenUsage {
        TokenUsage {
            input: self.input_tokens + self.cache_read_input_tokens + self.cache_write_input_tokens,
            output: self.output_tokens,
            cached_input: self.cache_read_input_tokens,
            // Converse's `usage` has no reasoning breakdown (a Claude model's thinking is
            // in `outputTokens`).
            reasoning: 0,
        }
    }
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}
