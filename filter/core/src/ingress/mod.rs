//! Ingress dialects: decoding client requests into canonical form and encoding answers back.
//!
//! OpenAI clients speak the canonical form already; each other dialect has one module here
//! that decodes its requests and encodes answers (complete and streamed) for its clients.

use crate::canonical::{ChatRequest, ChatResponse};
use crate::error::{Dialect, GatewayError};
use crate::stream::StreamEncoder;

pub mod anthropic;
pub mod openai;

/// Decodes and validates a chat request in `dialect`.
pub fn decode_chat(dialect: Dialect, body: &[u8]) -> Result<ChatRequest, GatewayError> {
    let req = match dialect {
        Dialect::OpenAi => serde_json::from_slice::<ChatRequest>(body)
            .map_err(|e| GatewayError::invalid(format!("invalid chat completion request: {e}")))?,
        Dialect::Anthropic => anthropic::decode_request(body)?,
    };
    if req.model.is_empty() {
        return Err(GatewayError::invalid("`model` must not be empty").with_param("model"));
    }
    if req.messages.is_empty() {
        return Err(GatewayError::invalid("`messages` must not be empty").with_param("messages"));
    }
    Ok(req)
}

/// Encodes a complete answer for `dialect`.
pub fn encode_chat_response(dialect: Dialect, resp: &ChatResponse) -> Vec<u8> {
    match dialect {
        Dialect::OpenAi => openai::encode_response(resp),
        Dialect::Anthropic => anthropic::encode_response(resp),
    }
}

/// A stream encoder for `dialect`. Anthropic streams always carry usage, so
/// `include_usage` only matters to OpenAI clients.
pub fn stream_encoder(
    dialect: Dialect,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
) -> Box<dyn StreamEncoder> {
    match dialect {
        Dialect::OpenAi => Box::new(openai::OpenAiStreamEncoder::new(
            id,
            model,
            created,
            include_usage,
        )),
        Dialect::Anthropic => Box::new(anthropic::AnthropicStreamEncoder::new(id, model)),
    }
}
