//! Azure OpenAI: the OpenAI Chat Completions wire format behind deployment-scoped URLs
//! (`/openai/deployments/{deployment}/chat/completions?api-version=...`) and an `api-key`
//! header.
//!
//! Wire format: <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/reference> (API
//! version `2024-10-21`, GA), errors and content filtering
//! <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/concepts/content-filter>
//! (fixtures in `filter/core/tests/fixtures/azure/` note their source).
//!
//! Mapping choices worth knowing:
//! - A deployment's upstream model name is the *deployment* name; the body's `model` is set
//!   to it too (Azure ignores it).
//! - Bodies, answers and streams are OpenAI's, so the OpenAI translators serve them; an
//!   OpenAI Chat client takes the fast path (body patched, stream passed through). Azure's
//!   extra stream chunk with `prompt_filter_results`, no choices and an empty `object` is
//!   not OpenAI's: the pass-through hides it, so a client sees OpenAI's stream whichever of
//!   the two serves it.
//! - Errors carry their code as a string (`"429"`, `"content_filter"`,
//!   `"DeploymentNotFound"`); the HTTP status decides their kind, and a content-filter 400
//!   keeps saying so in its message.

use crate::canonical::ChatRequest;
use crate::error::{ErrorKind, GatewayError};
use crate::providers::openai::{chat_body, Compat};
use crate::providers::{encode_segment, error_message, EgressRequest};

/// The API version used when the provider config names none.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The deployment-scoped chat path.
pub fn chat_path(deployment: &str, api_version: &str) -> String {
    format!(
        "/openai/deployments/{}/chat/completions?api-version={}",
        encode_segment(deployment),
        encode_segment(api_version)
    )
}

/// Builds an Azure OpenAI request from canonical form.
pub fn build_chat(
    req: &ChatRequest,
    deployment: &str,
    api_version: &str,
    compat: &Compat,
) -> Result<EgressRequest, GatewayError> {
    Ok(EgressRequest {
        path: chat_path(deployment, api_version),
        headers: vec![("content-type".into(), "application/json".into())],
        body: chat_body(req, deployment, compat)?,
    })
}

/// Translates an Azure OpenAI error (`{"error":{"code","message",...}}`), keeping its
/// status.
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut message = error_message(body, status);
    if value.pointer("/error/code").and_then(|c| c.as_str()) == Some("content_filter")
        && !message.contains("content")
    {
        message = format!("blocked by Azure's content filter: {message}");
    }
    GatewayError::new(ErrorKind::from_status(status), message).with_status(status)
}
