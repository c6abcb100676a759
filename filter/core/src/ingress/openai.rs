//! The OpenAI Chat Completions ingress dialect: answers (complete and streamed) encoded for
//! OpenAI SDK clients. Requests need no decoding beyond serde: the canonical form is the
//! OpenAI request.
//!
//! Wire format: <https://platform.openai.com/docs/api-reference/chat> (golden outputs in
//! `filter/core/tests/fixtures/*/*.openai.expected.*`).

use serde::Serialize;
use serde_json::{json, Value};

use crate::canonical::{reasoning_text, ChatResponse, FinishReason, Reasoning, TokenUsage};
use crate::error::{Dialect, GatewayError};
use crate::sse::write_event;
use crate::stream::{StreamEncoder, StreamEvent};

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// Encodes a canonical response for an OpenAI client.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    let tool_calls: Vec<Value> = resp.tool_calls.iter().map(|t| json!(t)).collect();
    let mut message = json!({"role": "assistant", "content": resp.text, "refusal": null});
    if !resp.reasoning.is_empty() {
        // OpenAI's Chat API has no reasoning field: the de-facto ones of DeepSeek/vLLM
        // (`reasoning_content`, the text) and OpenRouter (`reasoning_details`, typed and
        // signed, which a client sends back on its assistant message).
        message["reasoning_content"] = json!(reasoning_text(&resp.reasoning));
        message["reasoning_details"] = json!(resp.reasoning);
    }
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let u = resp.usage;
    let body = json!({
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": resp.finish_reason.map(finish_str),
        }],
        "usage": usage_json(&u),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// One answer holding every choice of `answers` (each an encoded one-choice answer, as
/// [`encode_response`] writes them), indexed in order, with `usage` (the sum of theirs):
/// how the gateway answers `n` from a provider that gives one choice per request.
pub fn merge_choices(answers: &[Vec<u8>], usage: &TokenUsage) -> Vec<u8> {
    let mut merged: Option<Value> = None;
    let mut choices = Vec::with_capacity(answers.len());
    for answer in answers {
        let Ok(mut value) = serde_json::from_slice::<Value>(answer) else {
            continue;
        };
        if let Some(Value::Array(list)) = value.get_mut("choices").map(Value::take) {
            for mut choice in list {
                choice["index"] = json!(choices.len());
                choices.push(choice);
            }
        }
        merged.get_or_insert(value);
    }
    let mut merged = merged.unwrap_or_else(|| json!({"object": "chat.completion"}));
    merged["choices"] = Value::Array(choices);
    merged["usage"] = usage_json(usage);
    serde_json::to_vec(&merged).unwrap_or_default()
}

fn usage_json(u: &TokenUsage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached_input},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

/// Encodes canonical stream events as OpenAI `chat.completion.chunk` SSE.
pub struct OpenAiStreamEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    usage: Option<TokenUsage>,
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":[`, written once per
    /// id and model (empty until then).
    head: Vec<u8>,
}

impl OpenAiStreamEncoder {
    /// `id`/`model`/`created` are used until (unless) the upstream provides its own.
    pub fn new(id: String, model: String, created: u64, include_usage: bool) -> Self {
        OpenAiStreamEncoder {
            id,
            model,
            created,
            include_usage,
            started: false,
            usage: None,
            head: Vec::new(),
        }
    }

    /// Writes one chunk, serialised straight from borrowed data (no `Value` tree per event:
    /// this runs once per streamed token). The part before the choice (id, object, created,
    /// model) is the same in every chunk, so it is serialised once per stream.
    fn chunk(&mut self, out: &mut Vec<u8>, delta: DeltaOut<'_>, finish: Option<&str>) {
        if self.head.is_empty() {
            let head = ChunkHead {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
            };
            self.head.extend_from_slice(b"data: ");
            // Serialising plain structs of strings and integers cannot fail.
            let _ = serde_json::to_writer(&mut self.head, &head);
            // `{...}` becomes `{...,"choices":[`, which the choice and `]}` complete.
            self.head.pop();
            self.head.extend_from_slice(b",\"choices\":[");
        }
        let choice = ChoiceOut {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        };
        out.extend_from_slice(&self.head);
        let _ = serde_json::to_writer(&mut *out, &choice);
        out.extend_from_slice(b"]}\n\n");
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let delta = DeltaOut {
                role: Some("assistant"),
                content: Some(""),
                ..DeltaOut::default()
            };
            self.chunk(out, delta, None);
        }
    }
}

impl StreamEncoder for OpenAiStreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { id, model } => {
                if !id.is_empty() {
                    self.id = id.clone();
                    self.head.clear();
                }
                if !model.is_empty() {
                    self.model = model.clone();
                    self.head.clear();
                }
                self.ensure_started(out);
            }
            StreamEvent::Text(text) => {
                self.ensure_started(out);
                let delta = DeltaOut {
                    content: Some(text),
                    ..DeltaOut::default()
                };
                self.chunk(out, delta, None);
            }
            StreamEvent::ToolCallStart {
                index,
                id,
                name,
                signature,
            } => {
                self.ensure_started(out);
                let call = ToolDeltaOut {
                    index: *index,
                    id: Some(id),
                    kind: Some("function"),
                    function: FunctionDeltaOut {
                        name: Some(name),
                        arguments: "",
                    },
                    extra_content: signature.as_deref().map(GoogleExtra::new),
                };
                let delta = DeltaOut {
                    tool_calls: Some([call]),
                    ..DeltaOut::default()
                };
                self.chunk(out, delta, None);
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                self.ensure_started(out);
                let call = ToolDeltaOut {
                    index: *index,
                    id: None,
                    kind: None,
                    function: FunctionDeltaOut {
                        name: None,
                        arguments,
                    },
                    extra_content: None,
                };
                let delta = DeltaOut {
                    tool_calls: Some([call]),
                    ..DeltaOut::default()
                };
                self.chunk(out, delta, None);
            }
            StreamEvent::Reasoning(text) => {
                self.ensure_started(out);
                let delta = DeltaOut {
                    reasoning_content: Some(text),
                    ..DeltaOut::default()
                };
                self.chunk(out, delta, None);
            }
            StreamEvent::ReasoningSignature { signature, format } => {
                self.ensure_started(out);
                let detail = Reasoning::Text {
                    text: String::new(),
                    signature: Some(signature.clone()),
                    format: Some(format.to_string()),
                };
                let delta = DeltaOut {
                    reasoning_details: Some([&detail]),
                    ..DeltaOut::default()
                };
                self.chunk(out, delta, None);
            }
            StreamEvent::ReasoningEncrypted { data, format } => {
                self.ensure_started(out);
                let detail = Reasoning::Encrypted {
                    data: data.clone(),
                    format: Some(format.to_string()),
                };
                let delta = DeltaOut {
                    reasoning_details: Some([&detail]),
                    ..DeltaOut::default()
                };
                self.chunk(out, delta, None);
            }
            StreamEvent::Finish(reason) => {
                self.ensure_started(out);
                self.chunk(out, DeltaOut::default(), Some(finish_str(*reason)));
            }
            StreamEvent::Usage(u) => {
                let mut total = self.usage.unwrap_or_default();
                total.merge_max(*u);
                self.usage = Some(total);
            }
            StreamEvent::Error(_) => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.ensure_started(out);
        if self.include_usage {
            let body = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_json(&self.usage.unwrap_or_default()),
            });
            write_event(out, None, &body.to_string());
        }
        write_event(out, None, "[DONE]");
    }

    fn error(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        // The OpenAI SDKs raise an APIError for a chunk carrying `error`.
        let body: Value = serde_json::from_slice(&err.body(Dialect::OpenAi)).unwrap_or_default();
        write_event(out, None, &body.to_string());
    }
}

/// A chunk's fields before `choices`, in the order OpenAI writes them.
#[derive(Serialize)]
struct ChunkHead<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_details: Option<[&'a Reasoning; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolDeltaOut<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolDeltaOut<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDeltaOut<'a>,
    /// Gemini's thought signature, where Google's OpenAI-compatible endpoint puts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_content: Option<GoogleExtra<'a>>,
}

/// `{"google": {"thought_signature": ...}}`.
#[derive(Serialize)]
struct GoogleExtra<'a> {
    google: GoogleSignature<'a>,
}

#[derive(Serialize)]
struct GoogleSignature<'a> {
    thought_signature: &'a str,
}

impl<'a> GoogleExtra<'a> {
    fn new(signature: &'a str) -> Self {
        GoogleExtra {
            google: GoogleSignature {
                thought_signature: signature,
            },
        }
    }
}

#[derive(Serialize)]
struct FunctionDeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}
