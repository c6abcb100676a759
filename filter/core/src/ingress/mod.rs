//! Ingress dialects: decoding client requests into canonical form and encoding answers back.
//!
//! OpenAI clients speak the canonical form already; each other dialect has one module here
//! that decodes its requests and encodes answers (complete and streamed) for its clients.

use crate::canonical::{ChatRequest, ChatResponse};
use crate::error::{Dialect, GatewayError};
use crate::stream::StreamEncoder;

pub mod anthropic;
pub mod gemini;
pub mod media;
pub mod openai;
pub mod responses;

/// What an answer's encoder knows about the request it answers.
#[derive(Debug, Clone, Copy)]
pub struct AnswerContext<'a> {
    /// The gateway's id for the answer, already in the dialect's shape (`chatcmpl-…`,
    /// `msg_…`, `resp_…`); used until (unless) the upstream provides its own.
    pub id: &'a str,
    /// The model name to report until (unless) the upstream names its own.
    pub model: &'a str,
    /// Unix seconds.
    pub created: u64,
    /// Whether an OpenAI Chat client asked for a final usage chunk (other dialects always
    /// carry usage).
    pub include_usage: bool,
    /// The client's request body: Responses answers echo its settings.
    pub request: &'a [u8],
}

/// Decodes and validates a chat request in `dialect`. A Gemini request names its model and
/// whether it streams in the path: decode it with [`gemini::decode_request`].
pub fn decode_chat(dialect: Dialect, body: &[u8]) -> Result<ChatRequest, GatewayError> {
    let req = match dialect {
        Dialect::Gemini => {
            return Err(GatewayError::invalid(
                "a Gemini API request names its model in the path \
                 (`models/{model}:generateContent`)",
            ))
        }
        Dialect::OpenAi => {
            // A body checked as UTF-8 once is read without checking each string again (the
            // same parser, so the same errors); one that is not UTF-8 gets the byte reader's.
            match std::str::from_utf8(body) {
                Ok(text) => serde_json::from_str::<ChatRequest>(text),
                Err(_) => serde_json::from_slice::<ChatRequest>(body),
            }
            .map_err(|e| GatewayError::invalid(format!("invalid chat completion request: {e}")))?
        }
        Dialect::Anthropic => anthropic::decode_request(body)?,
        Dialect::Responses => responses::decode_request(body)?,
    };
    if req.model.is_empty() {
        return Err(GatewayError::invalid("`model` must not be empty").with_param("model"));
    }
    if req.messages.is_empty() {
        return Err(GatewayError::invalid("`messages` must not be empty").with_param("messages"));
    }
    Ok(req)
}

/// Encodes a complete answer for `dialect`; `request` is the client's request body.
pub fn encode_chat_response(dialect: Dialect, resp: &ChatResponse, request: &[u8]) -> Vec<u8> {
    match dialect {
        Dialect::OpenAi => openai::encode_response(resp),
        Dialect::Anthropic => anthropic::encode_response(resp),
        Dialect::Responses => {
            responses::encode_response(resp, &responses::Echo::from_request(request))
        }
        Dialect::Gemini => gemini::encode_response(resp),
    }
}

/// A stream encoder for `dialect`.
pub fn stream_encoder(dialect: Dialect, ctx: &AnswerContext) -> Box<dyn StreamEncoder> {
    let (id, model) = (ctx.id.to_string(), ctx.model.to_string());
    match dialect {
        Dialect::OpenAi => Box::new(openai::OpenAiStreamEncoder::new(
            id,
            model,
            ctx.created,
            ctx.include_usage,
        )),
        Dialect::Anthropic => Box::new(anthropic::AnthropicStreamEncoder::new(id, model)),
        Dialect::Responses => Box::new(responses::ResponsesStreamEncoder::new(
            id,
            model,
            ctx.created,
            responses::Echo::from_request(ctx.request),
        )),
        Dialect::Gemini => Box::new(gemini::GeminiStreamEncoder::new(id, model)),
    }
}
