//! The canonical request/response model: OpenAI Chat Completions, typed.
//!
//! Every ingress format is decoded into these types and every provider is encoded from them,
//! so N ingress formats and M providers need N + M translators, not N × M. Fields the gateway
//! does not model are kept in `extra` so they reach providers that accept them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A chat request in canonical (OpenAI) form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The public model name the client asked for (rewritten per deployment on egress).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// Whether / which tool must be called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Structured-output constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Legacy output-token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output-token limit (newer name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Deterministic sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// End-user identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Fields the gateway does not model; forwarded where the provider speaks OpenAI.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ChatRequest {
    /// The effective output-token limit, whichever field the client used.
    pub fn output_limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Stop sequences as a list.
    pub fn stop_sequences(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    /// How many choices the client asked for (`n`, 1 when absent or not a positive number).
    pub fn choices(&self) -> u32 {
        self.extra
            .get("n")
            .and_then(serde_json::Value::as_u64)
            .map_or(1, |n| n.clamp(1, u64::from(u32::MAX)) as u32)
    }

    /// Whether the client asked for a usage chunk at the end of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop sequence.
    One(String),
    /// Several stop sequences.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk carrying usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other options, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt.
    System,
    /// Developer prompt (newer OpenAI name for system).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text or parts; may be null for an assistant message that only calls tools.
    #[serde(default)]
    pub content: Option<Content>,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For role `tool`: the call this result answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The model's reasoning in an earlier assistant turn, sent back so a provider that
    /// checks it (Anthropic's signed thinking) can continue the turn. OpenAI Chat clients
    /// write it as OpenRouter's `reasoning_details`; it is never sent in an OpenAI request
    /// (OpenAI has no such input, and DeepSeek answers 400 to reasoning sent back).
    #[serde(default, rename = "reasoning_details", skip_serializing)]
    pub reasoning: Vec<Reasoning>,
}

/// One piece of a model's reasoning, as OpenRouter's `reasoning_details` writes it (the
/// de-facto OpenAI Chat form that keeps signatures).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Reasoning {
    /// Reasoning text (Anthropic `thinking`, Gemini thought summaries, `reasoning_content`
    /// of DeepSeek-style servers), with the provider's signature over it when it has one.
    #[serde(rename = "reasoning.text")]
    Text {
        /// The reasoning text.
        #[serde(default)]
        text: String,
        /// The provider's opaque signature (Anthropic `signature`, Gemini
        /// `thoughtSignature`); the provider checks it when the turn is sent back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        /// Whose signature it is ([`ANTHROPIC_REASONING`], [`GEMINI_REASONING`]), so it is
        /// only sent back to a provider that can check it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
    },
    /// Reasoning the provider only returns encrypted (Anthropic `redacted_thinking`).
    #[serde(rename = "reasoning.encrypted")]
    Encrypted {
        /// The opaque data.
        data: String,
        /// Whose data it is, as for [`Reasoning::Text`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
    },
}

/// The `format` of reasoning signed by Anthropic (OpenRouter's name for it).
pub const ANTHROPIC_REASONING: &str = "anthropic-claude-v1";
/// The `format` of reasoning signed by Gemini.
pub const GEMINI_REASONING: &str = "google-gemini-v1";

impl Reasoning {
    /// Whose signature or data it carries, if known.
    pub fn format(&self) -> Option<&str> {
        match self {
            Reasoning::Text { format, .. } | Reasoning::Encrypted { format, .. } => {
                format.as_deref()
            }
        }
    }

    /// The reasoning text (empty for encrypted reasoning).
    pub fn text(&self) -> &str {
        match self {
            Reasoning::Text { text, .. } => text,
            Reasoning::Encrypted { .. } => "",
        }
    }
}

/// All reasoning text of `parts`, joined.
pub fn reasoning_text(parts: &[Reasoning]) -> String {
    parts.iter().map(Reasoning::text).collect()
}

impl Message {
    /// A plain text message.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            reasoning: Vec::new(),
        }
    }

    /// All text of the message joined (image parts skipped).
    pub fn text_content(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(""),
        }
    }

    /// The content as a list of parts (a text string becomes one text part).
    pub fn parts(&self) -> Vec<ContentPart> {
        match &self.content {
            None => Vec::new(),
            Some(Content::Text(t)) if t.is_empty() => Vec::new(),
            Some(Content::Text(t)) => vec![ContentPart::Text { text: t.clone() }],
            Some(Content::Parts(p)) => p.clone(),
        }
    }
}

/// Message content: a string or typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and image parts.
    Parts(Vec<ContentPart>),
}

/// One part of multi-part content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL or `data:` URL.
    ImageUrl {
        /// The image reference.
        image_url: ImageUrl,
    },
}

/// An image reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    /// `https://...` or `data:<mime>;base64,<data>`.
    pub url: String,
    /// `low` / `high` / `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ImageUrl {
    /// Splits a `data:` URL into (media type, base64 data).
    pub fn as_data(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("data:")?;
        let (meta, data) = rest.split_once(',')?;
        let media = meta.strip_suffix(";base64")?;
        Some((media, data))
    }
}

/// A tool call made by the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id, echoed by the tool result.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Which function, with what arguments.
    pub function: FunctionCall,
    /// Gemini's `thoughtSignature` on the `functionCall` part: opaque, and Gemini 3 answers
    /// 400 to a function-calling history whose calls come back without it
    /// (<https://ai.google.dev/gemini-api/docs/thought-signatures>). It belongs to the call,
    /// not to a reasoning part, because parallel calls carry it on the first call only and
    /// it must go back on that very part. Chat clients see it where Google's own
    /// OpenAI-compatible endpoint puts it, `extra_content.google.thought_signature`; the
    /// Anthropic and Responses dialects, which have no such field, carry it in the call id
    /// ([`ToolCall::wire_id`]). Only the Gemini provider sends it on.
    #[serde(
        default,
        rename = "extra_content",
        with = "google_extra",
        skip_serializing_if = "Option::is_none"
    )]
    pub signature: Option<String>,
}

/// Separates a call id from the thought signature [`ToolCall::wire_id`] appends to it.
/// Only characters Anthropic allows in a `tool_use` id (`[a-zA-Z0-9_-]`).
pub const SIGNATURE_IN_ID: &str = "__thought_signature__";

impl ToolCall {
    /// A function call without a signature.
    pub fn function(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            kind: function_type(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
            signature: None,
        }
    }

    /// The call id as the Anthropic and Responses dialects write it: the id itself, or with
    /// a signature, `<id>__thought_signature__<signature as unpadded base64url>` (base64url
    /// of the signature's bytes, so any signature survives and the id keeps to
    /// `[a-zA-Z0-9_-]`). [`split_wire_id`] reverses it.
    pub fn wire_id(&self) -> String {
        wire_id(&self.id, self.signature.as_deref())
    }
}

/// [`ToolCall::wire_id`] of an id and signature.
pub fn wire_id(id: &str, signature: Option<&str>) -> String {
    use base64::Engine as _;
    match signature {
        Some(sig) => format!(
            "{id}{SIGNATURE_IN_ID}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
        ),
        None => id.to_string(),
    }
}

/// Splits a call id written by [`ToolCall::wire_id`] into the id and the signature. An id
/// without the separator, or with a tail that is not such an encoding, is an id alone.
pub fn split_wire_id(wire: &str) -> (String, Option<String>) {
    use base64::Engine as _;
    if let Some((id, tail)) = wire.split_once(SIGNATURE_IN_ID) {
        if let Some(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tail)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            return (id.to_string(), Some(sig));
        }
    }
    (wire.to_string(), None)
}

/// `extra_content: {"google": {"thought_signature": ...}}`, the form of Google's
/// OpenAI-compatible endpoint, for [`ToolCall::signature`].
mod google_extra {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(sig: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({"google": {"thought_signature": sig}}).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let extra = Option::<Value>::deserialize(d)?;
        Ok(extra
            .as_ref()
            .and_then(|e| e.pointer("/google/thought_signature"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }
}

fn function_type() -> String {
    "function".to_string()
}

/// Function name and JSON-encoded arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON string (as OpenAI sends them).
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function's declaration.
    pub function: FunctionDef,
}

/// A function declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments, as the client wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<RawJson>,
    /// Strict schema adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A JSON value kept as the client wrote it: checked to be JSON, not parsed into a
/// `Value` tree. Tool schemas are copied through to most providers as they are, and building
/// and dropping a tree for each was a large share of translating a request with tools.
/// Equal when the texts are equal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value as a tree, for a provider that rewrites it.
    pub fn to_value(&self) -> Value {
        // The text was checked to be JSON when it was made.
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// The text of a value.
    pub fn from_value(value: &Value) -> Self {
        // Writing a `Value` as JSON cannot fail.
        RawJson(
            serde_json::value::to_raw_value(value)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// `tool_choice`: a mode string or a named function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// `{"type":"function","function":{"name":...}}`.
    Named {
        /// Always `function`.
        #[serde(rename = "type")]
        kind: String,
        /// The function to call.
        function: NamedFunction,
    },
}

/// The function named by a `tool_choice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedFunction {
    /// Function name.
    pub name: String,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// A named JSON schema for structured output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    /// Schema name.
    pub name: String,
    /// The schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Strict adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or stop sequence.
    Stop,
    /// Output-token limit.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Filtered.
    ContentFilter,
}

/// Token counts as the gateway meters them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens served from the provider's prompt cache (a subset of `input`).
    pub cached_input: u64,
    /// Output tokens the model spent reasoning (a subset of `output`, which is what is
    /// billed): reported by OpenAI, Gemini and the servers that copy them, 0 where the
    /// provider does not break it down (Anthropic counts thinking in `output_tokens` only).
    #[serde(default)]
    pub reasoning: u64,
}

impl TokenUsage {
    /// Takes the larger of each count, so repeated or partial reports never lose tokens.
    pub fn merge_max(&mut self, other: TokenUsage) {
        self.input = self.input.max(other.input);
        self.output = self.output.max(other.output);
        self.cached_input = self.cached_input.max(other.cached_input);
        self.reasoning = self.reasoning.max(other.reasoning);
    }
}

/// A complete (non-streamed) chat answer in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Response id.
    pub id: String,
    /// The model that answered (upstream name).
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// The answer's text, if any.
    pub text: Option<String>,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// The model's reasoning, in order (empty when the provider returned none).
    pub reasoning: Vec<Reasoning>,
    /// Why it stopped.
    pub finish_reason: Option<FinishReason>,
    /// Tokens used.
    pub usage: TokenUsage,
}

/// An embeddings request (OpenAI shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// Public model name.
    pub model: String,
    /// A string, a list of strings, or token arrays.
    pub input: Value,
    /// Fields kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An embeddings answer (OpenAI shape), for a server that computes embeddings itself (the
/// native backend) and answers in the same schema the gateway forwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: String,
    /// One vector per input, in input order.
    pub data: Vec<EmbeddingData>,
    /// The model that embedded the inputs.
    pub model: String,
    /// Tokens read.
    pub usage: EmbeddingsUsage,
}

impl EmbeddingsResponse {
    /// A response holding `vectors` in input order.
    pub fn new(model: String, vectors: Vec<EmbeddingVector>, prompt_tokens: u64) -> Self {
        EmbeddingsResponse {
            object: "list".into(),
            data: vectors
                .into_iter()
                .enumerate()
                .map(|(index, embedding)| EmbeddingData {
                    object: "embedding".into(),
                    index: index as u32,
                    embedding,
                })
                .collect(),
            model,
            usage: EmbeddingsUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }
}

/// One input's embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input in the request.
    pub index: u32,
    /// The vector, as the request's `encoding_format` asked.
    pub embedding: EmbeddingVector,
}

/// An embedding vector: floats, or base64 of little-endian f32s (`encoding_format: base64`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: float` (the default).
    Float(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// Token counts of an embeddings request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    /// Tokens read.
    pub prompt_tokens: u64,
    /// The same as `prompt_tokens` (embeddings produce no tokens).
    pub total_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_openai_request() {
        let body = r#"{
            "model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},
            "messages":[
              {"role":"developer","content":"be brief"},
              {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}]},
              {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
              {"role":"tool","tool_call_id":"c1","content":"42"}
            ],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"f"}},
            "response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":true}},
            "temperature":0.5,"top_p":0.9,"stop":"END","max_completion_tokens":10,"seed":7,"user":"u","logprobs":true
        }"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        assert!(req.stream && req.wants_stream_usage());
        assert_eq!(req.messages.len(), 4);
        assert_eq!(req.output_limit(), Some(10));
        assert_eq!(req.stop_sequences(), vec!["END"]);
        assert_eq!(req.extra.get("logprobs"), Some(&Value::Bool(true)));
        let ContentPart::ImageUrl { image_url } = &req.messages[1].parts()[1] else {
            panic!("expected image part")
        };
        assert_eq!(image_url.as_data(), Some(("image/png", "AAAA")));
        // Round trip keeps meaning.
        let again: ChatRequest =
            serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(again, req);
    }

    #[test]
    fn tool_parameters_keep_the_clients_text() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"f",
            "parameters": {"type": "object", "properties": {"b": {}, "a": {}}}}}]}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        let params = req.tools.as_ref().unwrap()[0]
            .function
            .parameters
            .clone()
            .unwrap();
        // As written (spacing and key order), and as a tree where a provider rewrites it.
        assert_eq!(
            params.get(),
            r#"{"type": "object", "properties": {"b": {}, "a": {}}}"#
        );
        assert_eq!(
            params.to_value(),
            serde_json::json!({"type": "object", "properties": {"a": {}, "b": {}}})
        );
        let out = serde_json::to_string(&req).unwrap();
        assert!(out.contains(r#""parameters":{"type": "object", "#), "{out}");
        // A tree's text is its compact JSON; `null` is no schema; anything else is refused.
        let value = serde_json::json!({"type": "object"});
        assert_eq!(RawJson::from_value(&value).get(), r#"{"type":"object"}"#);
        let none: FunctionDef = serde_json::from_str(r#"{"name":"f","parameters":null}"#).unwrap();
        assert_eq!(none.parameters, None);
        assert!(serde_json::from_str::<FunctionDef>(r#"{"name":"f","parameters":{]}"#).is_err());
    }

    #[test]
    fn embeddings_response_has_openai_shape() {
        let resp = EmbeddingsResponse::new(
            "m".into(),
            vec![
                EmbeddingVector::Float(vec![0.5, -1.0]),
                EmbeddingVector::Base64("AAAA".into()),
            ],
            7,
        );
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "object": "list", "model": "m",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
                    {"object": "embedding", "index": 1, "embedding": "AAAA"}
                ],
                "usage": {"prompt_tokens": 7, "total_tokens": 7}
            })
        );
    }

    #[test]
    fn wrong_types_are_rejected() {
        let err = serde_json::from_str::<ChatRequest>(
            r#"{"model":"m","messages":[],"temperature":"hot"}"#,
        );
        assert!(err.is_err());
        let err = serde_json::from_str::<ChatRequest>(
            r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
        );
        assert!(err.is_err());
    }
}
