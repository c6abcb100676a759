//! Egress providers: one module per wire format.
//!
//! Each module translates the canonical request into the provider's native request, and the
//! provider's response, stream and error back into canonical form. Nothing else in the core
//! knows a provider's schema.

use serde::Deserialize;

use crate::canonical::{ChatRequest, ChatResponse, Message};
use crate::error::GatewayError;
use crate::stream::StreamDecoder;

pub mod anthropic;
pub mod dashscope;
pub mod gemini;
pub mod openai;
pub mod passthrough;

/// The wire formats Switchyard speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server (vLLM, Groq, Ollama, our gpu-backend...).
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini API (`generateContent`).
    Gemini,
    /// Alibaba DashScope native text-generation API (Qwen).
    Dashscope,
}

/// A request body and the path/headers it needs, before host-specific routing.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressRequest {
    /// Path after the base URL's prefix, with query.
    pub path: String,
    /// Provider-specific headers (not credentials).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl ProviderKind {
    /// Every wire format, for tests and fuzzing that must cover them all.
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Openai,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Dashscope,
    ];

    /// The public endpoint used when the config gives no `base_url`.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
            ProviderKind::Dashscope => "https://dashscope.aliyuncs.com",
        }
    }

    /// Whether the provider serves `/v1/embeddings` in OpenAI shape.
    pub fn supports_embeddings(self) -> bool {
        matches!(self, ProviderKind::Openai)
    }

    /// The provider's native chat request for `req`, addressed to `upstream_model`.
    pub fn build_chat(
        self,
        req: &ChatRequest,
        upstream_model: &str,
    ) -> Result<EgressRequest, GatewayError> {
        match self {
            ProviderKind::Openai => openai::build_chat(req, upstream_model),
            ProviderKind::Anthropic => anthropic::build_chat(req, upstream_model),
            ProviderKind::Gemini => gemini::build_chat(req, upstream_model),
            ProviderKind::Dashscope => dashscope::build_chat(req, upstream_model),
        }
    }

    /// The credential headers for an API key.
    pub fn auth_headers(self, api_key: &str) -> Vec<(String, String)> {
        match self {
            ProviderKind::Openai | ProviderKind::Dashscope => {
                vec![("authorization".into(), format!("Bearer {api_key}"))]
            }
            ProviderKind::Anthropic => vec![("x-api-key".into(), api_key.to_string())],
            ProviderKind::Gemini => vec![("x-goog-api-key".into(), api_key.to_string())],
        }
    }

    /// Parses a complete (non-streamed) chat response.
    pub fn parse_chat(self, body: &[u8]) -> Result<ChatResponse, GatewayError> {
        match self {
            ProviderKind::Openai => openai::parse_chat(body),
            ProviderKind::Anthropic => anthropic::parse_chat(body),
            ProviderKind::Gemini => gemini::parse_chat(body),
            ProviderKind::Dashscope => dashscope::parse_chat(body),
        }
    }

    /// A fresh decoder for one streamed response.
    pub fn stream_decoder(self) -> Box<dyn StreamDecoder> {
        match self {
            ProviderKind::Openai => Box::new(openai::OpenAiStreamDecoder::default()),
            ProviderKind::Anthropic => Box::new(anthropic::AnthropicStreamDecoder::default()),
            ProviderKind::Gemini => Box::new(gemini::GeminiStreamDecoder::default()),
            ProviderKind::Dashscope => Box::new(dashscope::DashscopeStreamDecoder::default()),
        }
    }

    /// Translates an upstream error response, keeping its status and message.
    pub fn parse_error(self, status: u16, body: &[u8]) -> GatewayError {
        match self {
            ProviderKind::Openai => openai::parse_error(status, body),
            ProviderKind::Anthropic => anthropic::parse_error(status, body),
            ProviderKind::Gemini => gemini::parse_error(status, body),
            ProviderKind::Dashscope => dashscope::parse_error(status, body),
        }
    }
}

/// A parsed `base_url`: scheme, authority and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`, sent as `:authority`/`Host`.
    pub authority: String,
    /// Path prefix without trailing slash (may be empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `http(s)://authority[/prefix]`.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("base_url `{url}` must start with http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("base_url `{url}`: scheme must be http or https"));
        }
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['?', '#', '@', ' ']) {
            return Err(format!("base_url `{url}` has no valid host"));
        }
        Ok(BaseUrl {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// The function name of the latest tool call with `id` among `earlier` messages: providers
/// whose tool results name the function, not the call (Gemini, DashScope), need it.
pub(crate) fn tool_name_for(earlier: &[Message], id: &str) -> Option<String> {
    earlier.iter().rev().find_map(|m| {
        m.tool_calls
            .iter()
            .flatten()
            .find(|c| c.id == id)
            .map(|c| c.function.name.clone())
    })
}

/// Extracts a human message from common error JSON shapes, never echoing unknown content
/// wholesale (which could carry secrets).
pub(crate) fn error_message(body: &[u8], fallback_status: u16) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let msg = v
        .pointer("/error/message")
        .or_else(|| v.pointer("/message"))
        .or_else(|| v.pointer("/error"))
        .and_then(|m| m.as_str());
    match msg {
        Some(m) => redact(m),
        None => format!("upstream returned HTTP {fallback_status}"),
    }
}

/// Masks anything that looks like a credential in upstream text.
pub(crate) fn redact(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let looks_secret = w.len() >= 20
                && (w.starts_with("sk-")
                    || w.starts_with("AIza")
                    || w.starts_with("key-")
                    || w.chars().filter(|c| c.is_ascii_digit()).count() >= 6);
            if looks_secret {
                "[redacted]".to_string()
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = BaseUrl::parse("https://api.groq.com/openai/").unwrap();
        assert_eq!(
            (b.scheme.as_str(), b.authority.as_str(), b.prefix.as_str()),
            ("https", "api.groq.com", "/openai")
        );
        assert_eq!(BaseUrl::parse("http://127.0.0.1:8100").unwrap().prefix, "");
        assert!(BaseUrl::parse("ftp://x").is_err());
        assert!(BaseUrl::parse("http://").is_err());
    }

    #[test]
    fn redacts_keys_in_messages() {
        let m = redact("Incorrect API key provided: sk-abcdefghijklmnopqrstuvwxyz123456.");
        assert!(!m.contains("sk-abc"), "{m}");
        assert!(m.contains("Incorrect API key provided"));
    }
}
