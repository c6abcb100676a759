//! Mistral AI: `POST /v1/chat/completions`, OpenAI's shape with Mistral's function-calling
//! rules. Answers and streams are OpenAI's, so the OpenAI translators read them.
//!
//! Wire format: <https://docs.mistral.ai/api/#tag/chat/operation/chat_completion_v1_chat_completions_post>,
//! function calling <https://docs.mistral.ai/capabilities/function_calling/> (fixtures in
//! `filter/core/tests/fixtures/mistral/` note their source).
//!
//! Mapping choices worth knowing:
//! - Tool call ids must be 9 characters of `[a-zA-Z0-9]`. Ids that are not (`call_…`,
//!   `toolu_…`) are mapped to 9-character ids derived from their SHA-256, the same way for a
//!   call and for its result, so pairs stay pairs and the mapping needs no state.
//! - `tool_choice: "required"` is Mistral's `"any"`; `seed` is `random_seed`;
//!   `max_completion_tokens` is `max_tokens`.
//! - Mistral refuses fields it does not know (HTTP 422), so only its own fields are sent
//!   (`user`, `stream_options`, `logprobs`, `store`, ... are left out); its streams report
//!   usage in the last chunk without being asked, cache hits (prompt caching, keyed by
//!   `prompt_cache_key`) in `usage.prompt_tokens_details.cached_tokens` as OpenAI does.
//! - A tool result names its function (`name`), as Mistral's examples do.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::canonical::{ChatRequest, ToolChoice};
use crate::error::{ErrorKind, GatewayError};
use crate::providers::{error_message, tool_name_for, EgressRequest};

/// Native path of chat completions (after the base URL prefix).
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// The request fields Mistral's chat completion takes.
pub(crate) const FIELDS: [&str; 19] = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "prediction",
    "parallel_tool_calls",
    "safe_prompt",
    "prompt_mode",
    "prompt_cache_key",
];

/// A tool call id as Mistral accepts it: the id itself when it is 9 alphanumerics, else 9
/// alphanumerics derived from it.
pub fn tool_call_id(id: &str) -> String {
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return id.to_string();
    }
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    Sha256::digest(id.as_bytes())
        .iter()
        .take(9)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Builds a Mistral request from canonical form.
pub fn build_chat(req: &ChatRequest, upstream_model: &str) -> Result<EgressRequest, GatewayError> {
    let body = request_body(req, upstream_model)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}")))?;
    Ok(EgressRequest {
        path: CHAT_PATH.to_string(),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    })
}

/// The Mistral request body as JSON (exposed for tests).
pub fn request_body(req: &ChatRequest, upstream_model: &str) -> Result<Value, GatewayError> {
    let encode = |e: serde_json::Error| {
        GatewayError::new(ErrorKind::Internal, format!("encoding request: {e}"))
    };
    let mut canonical = req.clone();
    canonical.model = upstream_model.to_string();
    let Value::Object(mut body) = serde_json::to_value(&canonical).map_err(encode)? else {
        return Err(GatewayError::new(
            ErrorKind::Internal,
            "a request encodes as an object",
        ));
    };
    if let Some(limit) = body.remove("max_completion_tokens") {
        body.entry("max_tokens").or_insert(limit);
    }
    if let Some(seed) = body.remove("seed") {
        body.insert("random_seed".into(), seed);
    }
    if matches!(&req.tool_choice, Some(ToolChoice::Mode(m)) if m == "required") {
        body.insert("tool_choice".into(), json!("any"));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let Value::Object(mut m) = serde_json::to_value(message).map_err(encode)? else {
                return Err(GatewayError::new(
                    ErrorKind::Internal,
                    "a message encodes as an object",
                ));
            };
            m.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "role" | "content" | "tool_calls" | "tool_call_id"
                )
            });
            if m.get("role") == Some(&json!("developer")) {
                m.insert("role".into(), json!("system"));
            }
            if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                for call in calls {
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        call["id"] = json!(tool_call_id(id));
                    }
                    // Gemini's thought signature: nothing Mistral takes.
                    if let Some(call) = call.as_object_mut() {
                        call.remove("extra_content");
                    }
                }
                // An assistant turn with calls and no text has empty content, not null.
                m.entry("content").or_insert(json!(""));
                if m["content"].is_null() {
                    m["content"] = json!("");
                }
            }
            if let Some(id) = message.tool_call_id.as_deref() {
                m.insert("tool_call_id".into(), json!(tool_call_id(id)));
                if let Some(name) = tool_name_for(&req.messages[..i], id).or(message.name.clone()) {
                    m.insert("name".into(), json!(name));
                }
            }
            Ok(Value::Object(m))
        })
        .collect::<Result<Vec<Value>, GatewayError>>()?;
    body.insert("messages".into(), Value::Array(messages));
    body.retain(|k, _| FIELDS.contains(&k.as_str()));
    Ok(Value::Object(body))
}

/// Translates a Mistral error, keeping its status. Validation errors (422) carry their
/// details as a list under `message.detail`; the first one's text is the message.
pub fn parse_error(status: u16, body: &[u8]) -> GatewayError {
    let value: Value = serde_json::from_slice(body).unwrap_or_default();
    let detail = value
        .pointer("/message/detail/0/msg")
        .or_else(|| value.pointer("/detail/0/msg"))
        .and_then(Value::as_str);
    let message = match detail {
        Some(d) => crate::providers::redact(d),
        None => error_message(body, status),
    };
    GatewayError::new(ErrorKind::from_status(status), message).with_status(status)
}
