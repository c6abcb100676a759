//! Egress providers: one module per wire format.
//!
//! Each module translates the canonical request into the provider's native request, and the
//! provider's response, stream and error back into canonical form. Nothing else in the core
//! knows a provider's schema.

use serde::Deserialize;
use serde_json::Value;

use crate::canonical::{ChatRequest, ChatResponse, Message, ResponseFormat};
use crate::config::ProviderConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::stream::StreamDecoder;

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod cohere;
pub mod dashscope;
pub mod gemini;
pub mod mistral;
pub mod openai;
pub mod passthrough;
pub mod vertex;

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
    /// AWS Bedrock Runtime Converse / ConverseStream.
    Bedrock,
    /// Azure OpenAI (deployment-scoped OpenAI Chat Completions).
    Azure,
    /// Cohere Chat API v2.
    Cohere,
    /// Mistral AI chat completions (OpenAI's shape, Mistral's function-calling rules).
    Mistral,
    /// Google Vertex AI (Gemini's format, project- and region-scoped, OAuth token).
    Vertex,
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
    pub const ALL: [ProviderKind; 9] = [
        ProviderKind::Openai,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Dashscope,
        ProviderKind::Bedrock,
        ProviderKind::Azure,
        ProviderKind::Cohere,
        ProviderKind::Mistral,
        ProviderKind::Vertex,
    ];

    /// The kind's name as a config writes it (`kind: anthropic`).
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Dashscope => "dashscope",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Azure => "azure",
            ProviderKind::Cohere => "cohere",
            ProviderKind::Mistral => "mistral",
            ProviderKind::Vertex => "vertex",
        }
    }

    /// The public endpoint used when the config gives no `base_url`, for providers with
    /// one fixed endpoint (a regional one comes from [`ProviderConfig::base_url`]).
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::Dashscope => Some("https://dashscope.aliyuncs.com"),
            ProviderKind::Cohere => Some("https://api.cohere.com"),
            ProviderKind::Mistral => Some("https://api.mistral.ai"),
            ProviderKind::Bedrock | ProviderKind::Azure | ProviderKind::Vertex => None,
        }
    }

    /// Whether an answer of `content_type` is this provider's stream format: SSE for most,
    /// the binary AWS event stream for Bedrock.
    pub fn is_stream_content_type(self, content_type: &str) -> bool {
        let ct = content_type.trim_start();
        match self {
            ProviderKind::Bedrock => ct.starts_with("application/vnd.amazon.eventstream"),
            _ => ct.starts_with("text/event-stream"),
        }
    }

    /// Whether the provider serves OpenAI's media endpoints (`/v1/images/generations`,
    /// `/v1/audio/speech`, `/v1/audio/transcriptions`) in OpenAI's shape: OpenAI and every
    /// OpenAI-compatible server (gpu-backend's Whisper), and Azure OpenAI under its
    /// deployments.
    pub fn supports_media(self) -> bool {
        matches!(self, ProviderKind::Openai | ProviderKind::Azure)
    }

    /// Whether the provider serves `/v1/embeddings` in OpenAI shape.
    pub fn supports_embeddings(self) -> bool {
        matches!(self, ProviderKind::Openai)
    }

    /// The provider's native chat request for `req`, addressed to `upstream_model`, with
    /// every provider option at its default (see [`ProviderConfig::build_chat`]).
    pub fn build_chat(
        self,
        req: &ChatRequest,
        upstream_model: &str,
    ) -> Result<EgressRequest, GatewayError> {
        ProviderConfig::of_kind(self).build_chat(req, upstream_model)
    }

    /// The credential headers for an API key.
    pub fn auth_headers(self, api_key: &str) -> Vec<(String, String)> {
        match self {
            ProviderKind::Openai
            | ProviderKind::Dashscope
            | ProviderKind::Bedrock
            | ProviderKind::Cohere
            | ProviderKind::Mistral
            | ProviderKind::Vertex => {
                vec![("authorization".into(), format!("Bearer {api_key}"))]
            }
            ProviderKind::Anthropic => vec![("x-api-key".into(), api_key.to_string())],
            ProviderKind::Azure => vec![("api-key".into(), api_key.to_string())],
            ProviderKind::Gemini => vec![("x-goog-api-key".into(), api_key.to_string())],
        }
    }

    /// Parses a complete (non-streamed) chat response.
    pub fn parse_chat(self, body: &[u8]) -> Result<ChatResponse, GatewayError> {
        match self {
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Mistral => {
                openai::parse_chat(body)
            }
            ProviderKind::Cohere => cohere::parse_chat(body),
            ProviderKind::Anthropic => anthropic::parse_chat(body),
            ProviderKind::Gemini | ProviderKind::Vertex => gemini::parse_chat(body),
            ProviderKind::Dashscope => dashscope::parse_chat(body),
            ProviderKind::Bedrock => bedrock::parse_chat(body),
        }
    }

    /// A fresh decoder for one streamed response.
    pub fn stream_decoder(self) -> Box<dyn StreamDecoder> {
        match self {
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Mistral => {
                Box::new(openai::OpenAiStreamDecoder::default())
            }
            ProviderKind::Cohere => Box::new(cohere::CohereStreamDecoder::default()),
            ProviderKind::Anthropic => Box::new(anthropic::AnthropicStreamDecoder::default()),
            ProviderKind::Gemini | ProviderKind::Vertex => {
                Box::new(gemini::GeminiStreamDecoder::default())
            }
            ProviderKind::Dashscope => Box::new(dashscope::DashscopeStreamDecoder::default()),
            ProviderKind::Bedrock => Box::new(bedrock::BedrockStreamDecoder::default()),
        }
    }

    /// Translates an upstream error response, keeping its status and message.
    pub fn parse_error(self, status: u16, body: &[u8]) -> GatewayError {
        match self {
            ProviderKind::Openai => openai::parse_error(status, body),
            ProviderKind::Anthropic => anthropic::parse_error(status, body),
            ProviderKind::Gemini | ProviderKind::Vertex => gemini::parse_error(status, body),
            ProviderKind::Dashscope => dashscope::parse_error(status, body),
            ProviderKind::Bedrock => bedrock::parse_error(status, body),
            ProviderKind::Azure => azure::parse_error(status, body),
            ProviderKind::Cohere => cohere::parse_error(status, body),
            ProviderKind::Mistral => mistral::parse_error(status, body),
        }
    }
}

/// Provider response headers that identify the provider account behind the gateway.
pub const ACCOUNT_HEADERS: &[&str] = &[
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
];

/// Prefixes of provider response headers about the account's quotas (not the client's:
/// the gateway's own limits are what a client is held to).
pub const ACCOUNT_HEADER_PREFIXES: &[&str] =
    &["x-ratelimit-", "anthropic-ratelimit-", "x-ms-ratelimit-"];

/// What a provider's configuration decides about its wire format: endpoint, credentials,
/// request shape. Kept next to the providers so that a new option and its use sit together.
impl ProviderConfig {
    /// A provider of `kind` with every option at its default.
    pub fn of_kind(kind: ProviderKind) -> Self {
        ProviderConfig {
            kind,
            base_url: None,
            cluster: None,
            api_key_secret: None,
            headers: Default::default(),
            responses_api: false,
            aws: None,
            api_version: None,
            compat: None,
            vertex: None,
            catalog: None,
            expose_catalog: false,
            pass_response_headers: Vec::new(),
        }
    }

    /// Whether a response header of this provider must not reach the client: it names or
    /// describes the provider account the gateway holds (organisation, project, the
    /// account's rate limits), unless the config passes it (`pass_response_headers`).
    pub fn strips_response_header(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let account = ACCOUNT_HEADERS.contains(&name.as_str())
            || ACCOUNT_HEADER_PREFIXES.iter().any(|p| name.starts_with(p));
        account
            && !self
                .pass_response_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&name))
    }

    /// The OpenAI-compatible quirks in force (none by default).
    pub fn compat(&self) -> openai::Compat {
        self.compat.clone().unwrap_or_default()
    }

    /// Where the provider lives: the configured `base_url`, else the kind's public (or
    /// regional) endpoint.
    pub fn base_url(&self) -> Result<String, String> {
        if let Some(url) = &self.base_url {
            return Ok(url.clone());
        }
        if let Some(url) = self.kind.default_base_url() {
            return Ok(url.to_string());
        }
        match (self.kind, &self.aws) {
            (ProviderKind::Bedrock, Some(aws)) => Ok(aws.default_base_url()),
            (ProviderKind::Vertex, _) => self
                .vertex
                .as_ref()
                .map(vertex::VertexConfig::default_base_url)
                .ok_or_else(|| {
                    "a `vertex` provider needs `vertex.project` and `vertex.location`".to_string()
                }),
            (ProviderKind::Azure, _) => Err("an `azure` provider needs its resource's `base_url` \
                 (`https://<resource>.openai.azure.com`)"
                .to_string()),
            (_, _) => Err("this provider needs a `base_url`".to_string()),
        }
    }

    /// Every secret the provider names, required or not.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.api_key_secret.iter().map(String::as_str).collect();
        if let Some(aws) = &self.aws {
            names.extend(
                [
                    &aws.access_key_id_secret,
                    &aws.secret_access_key_secret,
                    &aws.session_token_secret,
                ]
                .into_iter()
                .flatten()
                .map(String::as_str),
            );
        }
        names
    }

    /// The secrets without which the provider cannot be called (a session token is
    /// optional: only temporary credentials have one).
    pub fn required_secrets(&self) -> Vec<&str> {
        let session = self
            .aws
            .as_ref()
            .and_then(|a| a.session_token_secret.as_deref());
        self.secret_names()
            .into_iter()
            .filter(|name| Some(*name) != session)
            .collect()
    }

    /// The provider's native chat request for `req`, addressed to `upstream_model`.
    pub fn build_chat(
        &self,
        req: &ChatRequest,
        upstream_model: &str,
    ) -> Result<EgressRequest, GatewayError> {
        match self.kind {
            ProviderKind::Openai => openai::build_chat(req, upstream_model, &self.compat()),
            ProviderKind::Anthropic => anthropic::build_chat(req, upstream_model),
            ProviderKind::Gemini => gemini::build_chat(req, upstream_model),
            ProviderKind::Dashscope => dashscope::build_chat(req, upstream_model),
            ProviderKind::Bedrock => bedrock::build_chat(req, upstream_model),
            ProviderKind::Azure => {
                azure::build_chat(req, upstream_model, self.api_version(), &self.compat())
            }
            ProviderKind::Cohere => cohere::build_chat(req, upstream_model),
            ProviderKind::Mistral => mistral::build_chat(req, upstream_model),
            ProviderKind::Vertex => vertex::build_chat(req, upstream_model, self.vertex.as_ref()),
        }
    }

    /// Azure's API version in force.
    pub fn api_version(&self) -> &str {
        self.api_version
            .as_deref()
            .unwrap_or(azure::DEFAULT_API_VERSION)
    }

    /// The native chat path of a fast-path (pass-through) request to this provider.
    pub fn chat_path(&self, upstream_model: &str) -> String {
        match self.kind {
            ProviderKind::Azure => azure::chat_path(upstream_model, self.api_version()),
            _ => openai::CHAT_PATH.to_string(),
        }
    }

    /// Credentials resolved from the host's secrets (`secret` looks a name up) for the
    /// providers that sign requests: AWS SigV4 for Bedrock.
    pub fn signing_credentials(
        &self,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Option<bedrock::sigv4::Credentials> {
        let aws = self.aws.as_ref()?;
        Some(bedrock::sigv4::Credentials {
            access_key_id: secret(aws.access_key_id_secret.as_deref()?)?,
            secret_access_key: secret(aws.secret_access_key_secret.as_deref()?)?,
            session_token: aws.session_token_secret.as_deref().and_then(secret),
        })
    }
}

/// Signs a request for AWS (SigV4), adding `x-amz-date`, `x-amz-security-token` and
/// `authorization` to `headers`. `authority` is the `Host` the request is sent with,
/// `path` its full path; `now_unix` is the signing time.
pub fn sign_aws(
    provider: &ProviderConfig,
    credentials: &bedrock::sigv4::Credentials,
    authority: &str,
    path: &str,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    now_unix: u64,
) -> Result<(), GatewayError> {
    let region = provider
        .aws
        .as_ref()
        .map(|a| a.region.as_str())
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::Internal,
                "an AWS-signed provider needs `aws.region`",
            )
        })?;
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut signed: Vec<(&str, &str)> = vec![("host", authority)];
    signed.extend(
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let signature = bedrock::sigv4::sign(
        &bedrock::sigv4::Request {
            method: "POST",
            path,
            query,
            headers: &signed,
            body,
        },
        credentials,
        region,
        bedrock::SIGNING_SERVICE,
        now_unix,
    );
    headers.extend(signature.headers);
    Ok(())
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

/// Percent-encodes `s` as one path segment: everything but unreserved characters
/// (`A-Z a-z 0-9 - _ . ~`) as `%XX`. Model and deployment names carry `:` and `/`.
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

/// Structured-output constraints as an instruction, for providers without a native JSON
/// mode (Anthropic, Bedrock Converse). A forced tool would be stricter but would turn the
/// answer into a tool call the client did not ask for.
pub(crate) fn json_instruction(format: &ResponseFormat) -> Option<String> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => {
            Some("Respond with a single JSON object and nothing else.".to_string())
        }
        ResponseFormat::JsonSchema { json_schema } => {
            let schema = json_schema
                .schema
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".to_string());
            Some(format!(
                "Respond with a single JSON value and nothing else. It must conform to the JSON \
                 schema named `{}`: {schema}",
                json_schema.name
            ))
        }
    }
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
