//! The field matrix: what happens to every request field on the way to every provider.
//!
//! A gateway must never accept a parameter and quietly ignore it, or changing the `model`
//! string would change more than the model. So each canonical request field, for each
//! provider kind, is one [`Treatment`]: mapped to a native field, emulated (and how),
//! accepted as a documented hint, or refused with a 400 naming the field before any provider
//! is called ([`refusal`], used by the planner the same way as the catalog's capability
//! checks). Ingress dialects map their own fields onto these ([`INGRESS`]).
//!
//! The same tables render `docs/fields.md` ([`render_markdown`]); a test fails when the doc
//! is stale, and another encodes a request with each field for each provider and checks the
//! native body carries it (or that the request is refused), so the doc cannot drift from the
//! code.

use serde_json::Value;

use crate::canonical::{ChatRequest, Content, ContentPart, ResponseFormat, ToolChoice};
use crate::error::Dialect;
use crate::providers::{mistral, ProviderKind};

/// What the gateway does with one request field for one provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Sent as the provider's own field. The string locates it in the native request: a JSON
    /// pointer into the body (`/generationConfig/topP`) or `path:` and a part of the path.
    Mapped(&'static str),
    /// Achieved another way. `how` says how; `trace` locates the trace in the native request
    /// as for [`Treatment::Mapped`], or is empty when the emulation happens on the answer.
    Emulated {
        /// How, for users.
        how: &'static str,
        /// Where the emulation shows in the native request (may be empty).
        trace: &'static str,
    },
    /// Accepted without effect on the answer; the string says why that is honest.
    Hint(&'static str),
    /// Answered with a 400 before the provider is called; the string says why.
    Refused(&'static str),
}

/// One canonical request field (or one form of it) the matrix covers.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Name as written in OpenAI Chat Completions (`response_format:json_schema` for one
    /// form of a field).
    pub name: &'static str,
    /// What it asks for.
    pub about: &'static str,
    /// JSON merged into a minimal chat request to exercise the field (tests and docs).
    pub probe: &'static str,
    /// Whether a request uses the field.
    pub present: fn(&ChatRequest) -> bool,
}

fn extra(req: &ChatRequest, name: &str) -> bool {
    req.extra.get(name).is_some_and(|v| !v.is_null())
}

fn images(req: &ChatRequest, data: bool) -> bool {
    req.messages.iter().any(|m| match &m.content {
        Some(Content::Parts(parts)) => parts.iter().any(|p| match p {
            ContentPart::ImageUrl { image_url } => image_url.as_data().is_some() == data,
            ContentPart::Text { .. } => false,
        }),
        _ => false,
    })
}

/// Whether the request has Gemini safety settings that block (`blocking`) or only ones
/// that turn blocking off (`!blocking`).
fn safety_settings(req: &ChatRequest, blocking: bool) -> bool {
    let Some(settings) = req.extra.get("safety_settings").filter(|v| !v.is_null()) else {
        return false;
    };
    let blocks = settings.as_array().is_none_or(|all| {
        all.iter().any(|s| {
            !matches!(
                s.get("threshold").and_then(Value::as_str),
                Some("BLOCK_NONE" | "OFF" | "HARM_BLOCK_THRESHOLD_UNSPECIFIED")
            )
        })
    });
    blocks == blocking
}

fn tool_choice_mode(req: &ChatRequest, mode: &str) -> bool {
    matches!(&req.tool_choice, Some(ToolChoice::Mode(m)) if m == mode)
}

/// Every field the matrix names, in the order the doc lists them. Fields not named here
/// fall under the last row, `other`.
pub const FIELDS: &[Field] = &[
    Field {
        name: "temperature",
        about: "sampling temperature",
        probe: r#"{"temperature":0.5}"#,
        present: |r| r.temperature.is_some(),
    },
    Field {
        name: "top_p",
        about: "nucleus sampling",
        probe: r#"{"top_p":0.9}"#,
        present: |r| r.top_p.is_some(),
    },
    Field {
        name: "top_k",
        about: "top-k sampling (Anthropic, Gemini, Cohere, DashScope)",
        probe: r#"{"top_k":40}"#,
        present: |r| extra(r, "top_k"),
    },
    Field {
        name: "max_tokens",
        about: "output-token limit (`max_completion_tokens` too)",
        probe: r#"{"max_tokens":64}"#,
        present: |r| r.output_limit().is_some(),
    },
    Field {
        name: "stop",
        about: "stop sequences",
        probe: r#"{"stop":["END"]}"#,
        present: |r| !r.stop_sequences().is_empty(),
    },
    Field {
        name: "seed",
        about: "reproducible sampling",
        probe: r#"{"seed":7}"#,
        present: |r| r.seed.is_some(),
    },
    Field {
        name: "presence_penalty",
        about: "penalty on tokens already present",
        probe: r#"{"presence_penalty":0.5}"#,
        present: |r| extra(r, "presence_penalty"),
    },
    Field {
        name: "frequency_penalty",
        about: "penalty by token frequency",
        probe: r#"{"frequency_penalty":0.5}"#,
        present: |r| extra(r, "frequency_penalty"),
    },
    Field {
        name: "logit_bias",
        about: "per-token bias",
        probe: r#"{"logit_bias":{"50256":-100}}"#,
        present: |r| extra(r, "logit_bias"),
    },
    Field {
        name: "n",
        about: "several choices (above 1) of a complete answer",
        probe: r#"{"n":2}"#,
        present: |r| !r.stream && r.choices() > 1,
    },
    Field {
        name: "n:stream",
        about: "several choices of a stream",
        probe: r#"{"n":2,"stream":true}"#,
        present: |r| r.stream && r.choices() > 1,
    },
    Field {
        name: "logprobs",
        about: "token log-probabilities in the answer",
        probe: r#"{"logprobs":true}"#,
        present: |r| r.extra.get("logprobs") == Some(&Value::Bool(true)),
    },
    Field {
        name: "top_logprobs",
        about: "alternatives per token",
        probe: r#"{"top_logprobs":2}"#,
        present: |r| extra(r, "top_logprobs"),
    },
    Field {
        name: "response_format:json_object",
        about: "any JSON object",
        probe: r#"{"response_format":{"type":"json_object"}}"#,
        present: |r| matches!(r.response_format, Some(ResponseFormat::JsonObject)),
    },
    Field {
        name: "response_format:json_schema",
        about: "JSON matching a schema (`strict` included)",
        probe: r#"{"response_format":{"type":"json_schema","json_schema":{"name":"city","strict":true,"schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}}}"#,
        present: |r| matches!(r.response_format, Some(ResponseFormat::JsonSchema { .. })),
    },
    Field {
        name: "tools",
        about: "functions the model may call",
        probe: r#"{"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}"#,
        present: |r| r.tools.as_ref().is_some_and(|t| !t.is_empty()),
    },
    Field {
        name: "tool_choice:required",
        about: "a tool must be called (`auto` is every provider's default)",
        probe: r#"{"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"tool_choice":"required"}"#,
        present: |r| tool_choice_mode(r, "required"),
    },
    Field {
        name: "tool_choice:none",
        about: "no tool may be called",
        probe: r#"{"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"tool_choice":"none"}"#,
        present: |r| tool_choice_mode(r, "none"),
    },
    Field {
        name: "tool_choice:function",
        about: "this tool must be called",
        probe: r#"{"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},{"type":"function","function":{"name":"get_time","parameters":{"type":"object"}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}}}"#,
        present: |r| matches!(r.tool_choice, Some(ToolChoice::Named { .. })),
    },
    Field {
        name: "parallel_tool_calls:false",
        about: "at most one tool call per turn",
        probe: r#"{"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"parallel_tool_calls":false}"#,
        present: |r| r.extra.get("parallel_tool_calls") == Some(&Value::Bool(false)),
    },
    Field {
        name: "image:data",
        about: "an image as a `data:` URL",
        probe: r#"{"messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}"#,
        present: |r| images(r, true),
    },
    Field {
        name: "image:https",
        about: "an image by `https:` URL",
        probe: r#"{"messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]}]}"#,
        present: |r| images(r, false),
    },
    Field {
        name: "user",
        about: "end-user id",
        probe: r#"{"user":"user-42"}"#,
        present: |r| r.user.is_some(),
    },
    Field {
        name: "metadata",
        about: "key-value tags",
        probe: r#"{"metadata":{"team":"search"}}"#,
        present: |r| extra(r, "metadata"),
    },
    Field {
        name: "reasoning_effort",
        about: "how hard a reasoning model thinks",
        probe: r#"{"reasoning_effort":"low"}"#,
        present: |r| extra(r, "reasoning_effort"),
    },
    Field {
        name: "thinking",
        about: "Anthropic's extended thinking (budget in tokens)",
        probe: r#"{"max_tokens":4096,"thinking":{"type":"enabled","budget_tokens":1024}}"#,
        present: |r| extra(r, "thinking"),
    },
    Field {
        name: "reasoning:earlier_turns",
        about: "the model's reasoning in an earlier assistant turn, sent back: OpenRouter's \
                `reasoning_details` on an assistant message (Anthropic `thinking` blocks map \
                to it; DeepSeek-style `reasoning_content` on a message is not read, as \
                DeepSeek asks clients not to send it)",
        probe: r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"ok","reasoning_details":[{"type":"reasoning.text","text":"The user greets me.","signature":"sig-1","format":"anthropic-claude-v1"}]},{"role":"user","content":"go on"}]}"#,
        present: |r| r.messages.iter().any(|m| !m.reasoning.is_empty()),
    },
    Field {
        name: "tool_calls:signature",
        about: "Gemini's thought signature on an earlier turn's tool call, sent back as Google's \
                OpenAI-compatible endpoint writes it (`tool_calls[].extra_content.google.\
                thought_signature`); Gemini 3 answers 400 to a function-calling turn without it",
        probe: r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"},"extra_content":{"google":{"thought_signature":"sig-1"}}}]},{"role":"tool","tool_call_id":"call_1","content":"18C"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#,
        present: |r| {
            r.messages
                .iter()
                .filter_map(|m| m.tool_calls.as_ref())
                .flatten()
                .any(|c| c.signature.is_some())
        },
    },
    Field {
        name: "safety_settings:block",
        about: "Gemini's `safetySettings` with a threshold that blocks (`BLOCK_ONLY_HIGH`, \
                `BLOCK_*_AND_ABOVE`)",
        probe: r#"{"safety_settings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_ONLY_HIGH"}]}"#,
        present: |r| safety_settings(r, true),
    },
    Field {
        name: "safety_settings:off",
        about: "Gemini's `safetySettings` that only turn blocking off (`BLOCK_NONE`, `OFF`)",
        probe: r#"{"safety_settings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_NONE"}]}"#,
        present: |r| safety_settings(r, false),
    },
    Field {
        name: "generation_config",
        about: "Gemini's other `generationConfig` fields (`mediaResolution`, ...), as a Gemini \
                client wrote them",
        probe: r#"{"generation_config":{"mediaResolution":"MEDIA_RESOLUTION_LOW"}}"#,
        present: |r| extra(r, "generation_config"),
    },
    Field {
        name: "truncation:auto",
        about: "Responses' `truncation: auto`: drop earlier input to fit the context window",
        probe: r#"{"truncation":"auto"}"#,
        present: |r| r.extra.get("truncation").and_then(Value::as_str) == Some("auto"),
    },
    Field {
        name: "stream",
        about: "server-sent events",
        probe: r#"{"stream":true}"#,
        present: |r| r.stream,
    },
    Field {
        name: "stream_options.include_usage",
        about: "a usage chunk at the end of a stream",
        probe: r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
        present: |r| r.wants_stream_usage(),
    },
    Field {
        name: "other",
        about: "any field not named above (e.g. `service_tier`, `store`)",
        probe: r#"{"service_tier":"flex"}"#,
        present: |r| other_fields(r).next().is_some(),
    },
];

/// Keys of `extra` the rows above name; any other key falls under `other`.
const NAMED_EXTRAS: &[&str] = &[
    "top_k",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "n",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "metadata",
    "reasoning_effort",
    "thinking",
    "safety_settings",
    "generation_config",
    "truncation",
];

/// The request's fields that no row names.
fn other_fields(req: &ChatRequest) -> impl Iterator<Item = &str> {
    req.extra
        .iter()
        .filter(|(k, v)| !v.is_null() && !NAMED_EXTRAS.contains(&k.as_str()))
        .map(|(k, _)| k.as_str())
}

const SEED_HINT: &str =
    "no seed: sampling is not reproducible (OpenAI documents `seed` as best effort too)";
const USER_HINT: &str = "an abuse-monitoring id; it does not change the answer";
const METADATA_HINT: &str = "tags for OpenAI's stored completions; they do not change the answer";
const FAN_OUT: Treatment = Treatment::Emulated {
    how: "`n` requests to the deployment, one choice each, merged into `choices` (index in \
          order) with their usage summed (each request pays its prompt)",
    trace: "",
};
const NO_N_STREAM: &str = "a stream carries one choice; `n` is emulated for complete answers only";
const NO_LOGPROBS: &str = "its answers carry no log-probabilities the gateway can return";
const NO_LOGIT_BIAS: &str = "no per-token bias";
const NO_PENALTIES: &str = "no presence or frequency penalty";
const NO_PARALLEL_SWITCH: &str = "no way to limit a turn to one tool call";
const NO_THINKING: &str =
    "Anthropic's `thinking` has no counterpart here; use `reasoning_effort` where it is mapped";
const NO_EFFORT: &str = "no reasoning-effort setting the gateway maps";
const NO_REASONING_INPUT: &str = "the provider takes no reasoning in its input: earlier turns' \
     reasoning is context only the model that wrote it can check (signatures), so it is not \
     sent";
const OPENAI_REASONING_INPUT: &str = "OpenAI's Chat API takes no reasoning input and \
     DeepSeek-style servers answer 400 to reasoning sent back, so it is not sent";
const NO_OTHER: &str = "the provider has no such field; the gateway refuses rather than drop it";
const NOT_GEMINI_SIGNATURE: &str = "Gemini's own signature, which only Gemini can check: not \
     sent (the call itself is)";
const NO_SAFETY: &str = "no per-category safety thresholds to block with";
const SAFETY_OFF: &str = "asks Gemini's filter to block less; there is no such filter here to \
     turn off (the provider's own moderation still applies)";
const NO_TRUNCATION: &str = "the gateway cannot trim input to the provider's context window; \
     trim `input` and send `disabled` (the default)";
const NO_GEMINI_CONFIG: &str = "a Gemini generation setting with no counterpart here";
const USAGE_ALWAYS: &str =
    "the provider reports usage on every stream; the gateway adds the usage chunk";

/// What the gateway does with `field` (a [`Field::name`]) for `kind`.
pub fn treatment(kind: ProviderKind, field: &str) -> Treatment {
    use Treatment::*;
    match kind {
        ProviderKind::Openai | ProviderKind::Azure => match field {
            "response_format:json_object" | "response_format:json_schema" => {
                Mapped("/response_format")
            }
            "tool_choice:required" | "tool_choice:none" | "tool_choice:function" => {
                Mapped("/tool_choice")
            }
            "parallel_tool_calls:false" => Mapped("/parallel_tool_calls"),
            "image:data" | "image:https" => Mapped("/messages/0/content/1/image_url/url"),
            "stream_options.include_usage" => Mapped("/stream_options/include_usage"),
            "thinking" => Emulated {
                how: "`reasoning_effort` from the budget: up to 1024 tokens `low`, up to 8192 \
                      `medium`, more `high`; `disabled` is `minimal` (a model without \
                      reasoning answers the provider's own 400)",
                trace: "/reasoning_effort",
            },
            "other" => Mapped("/service_tier"),
            "temperature" => Mapped("/temperature"),
            "top_p" => Mapped("/top_p"),
            "top_k" => Mapped("/top_k"),
            "max_tokens" => Mapped("/max_tokens"),
            "stop" => Mapped("/stop"),
            "seed" => Mapped("/seed"),
            "presence_penalty" => Mapped("/presence_penalty"),
            "frequency_penalty" => Mapped("/frequency_penalty"),
            "logit_bias" => Mapped("/logit_bias"),
            "n" | "n:stream" | "logprobs" | "top_logprobs" => Refused(
                "a translated answer has one choice and no log-probabilities; OpenAI Chat \
                 clients get them, their requests pass through as written",
            ),
            "tools" => Mapped("/tools"),
            "user" => Mapped("/user"),
            "metadata" => Mapped("/metadata"),
            "reasoning_effort" => Mapped("/reasoning_effort"),
            "reasoning:earlier_turns" => Hint(OPENAI_REASONING_INPUT),
            "stream" => Mapped("/stream"),
            "tool_calls:signature" => Hint(NOT_GEMINI_SIGNATURE),
            "safety_settings:block" => Refused(NO_SAFETY),
            "safety_settings:off" => Hint(SAFETY_OFF),
            "generation_config" => Refused(NO_GEMINI_CONFIG),
            "truncation:auto" => Refused(NO_TRUNCATION),
            _ => Refused(NO_OTHER),
        },
        ProviderKind::Mistral => match field {
            "temperature" => Mapped("/temperature"),
            "top_p" => Mapped("/top_p"),
            "max_tokens" => Mapped("/max_tokens"),
            "stop" => Mapped("/stop"),
            "seed" => Mapped("/random_seed"),
            "presence_penalty" => Mapped("/presence_penalty"),
            "frequency_penalty" => Mapped("/frequency_penalty"),
            "response_format:json_object" | "response_format:json_schema" => {
                Mapped("/response_format")
            }
            "tools" => Mapped("/tools"),
            "tool_choice:required" | "tool_choice:none" | "tool_choice:function" => {
                Mapped("/tool_choice")
            }
            "parallel_tool_calls:false" => Mapped("/parallel_tool_calls"),
            "image:data" | "image:https" => Mapped("/messages/0/content/1/image_url"),
            "stream" => Mapped("/stream"),
            "stream_options.include_usage" => Emulated {
                how: USAGE_ALWAYS,
                trace: "",
            },
            "user" => Hint(USER_HINT),
            "metadata" => Hint(METADATA_HINT),
            "n" => FAN_OUT,
            "n:stream" => Refused(NO_N_STREAM),
            "logprobs" | "top_logprobs" => Refused(NO_LOGPROBS),
            "logit_bias" => Refused(NO_LOGIT_BIAS),
            "top_k" => Refused("Mistral has no top-k sampling"),
            "thinking" => Refused(NO_THINKING),
            "reasoning_effort" => Refused(NO_EFFORT),
            "reasoning:earlier_turns" => Hint(NO_REASONING_INPUT),
            "tool_calls:signature" => Hint(NOT_GEMINI_SIGNATURE),
            "safety_settings:block" => Refused(NO_SAFETY),
            "safety_settings:off" => Hint(SAFETY_OFF),
            "generation_config" => Refused(NO_GEMINI_CONFIG),
            "truncation:auto" => Refused(NO_TRUNCATION),
            _ => Refused(
                "Mistral answers 422 to fields it does not know (its own `safe_prompt`, \
                 `prediction`, `prompt_mode` and `prompt_cache_key` pass)",
            ),
        },
        ProviderKind::Anthropic => match field {
            "temperature" => Mapped("/temperature"),
            "top_p" => Mapped("/top_p"),
            "top_k" => Mapped("/top_k"),
            "max_tokens" => Mapped("/max_tokens"),
            "stop" => Mapped("/stop_sequences"),
            "seed" => Hint(SEED_HINT),
            "response_format:json_object" => Emulated {
                how: "an instruction in the system prompt (Anthropic has no schema-less JSON mode)",
                trace: "/system",
            },
            "response_format:json_schema" => Mapped("/output_config/format/schema"),
            "tools" => Mapped("/tools"),
            "tool_choice:required" | "tool_choice:none" => Mapped("/tool_choice/type"),
            "tool_choice:function" => Mapped("/tool_choice/name"),
            "parallel_tool_calls:false" => Mapped("/tool_choice/disable_parallel_tool_use"),
            "image:data" => Mapped("/messages/0/content/1/source/data"),
            "image:https" => Mapped("/messages/0/content/1/source/url"),
            "user" => Mapped("/metadata/user_id"),
            "metadata" => Hint(METADATA_HINT),
            "thinking" => Mapped("/thinking"),
            "reasoning:earlier_turns" => Emulated {
                how: "Anthropic's own signed thinking goes back as `thinking` / \
                      `redacted_thinking` blocks, unchanged, first in the assistant turn; \
                      unsigned reasoning and another provider's (a `format` not \
                      `anthropic-claude-v1`) are left out, as Anthropic rejects thinking it \
                      cannot verify",
                trace: "/messages/1/content/0/signature",
            },
            "stream" => Mapped("/stream"),
            "stream_options.include_usage" => Emulated {
                how: USAGE_ALWAYS,
                trace: "",
            },
            "presence_penalty" | "frequency_penalty" => Refused(NO_PENALTIES),
            "logit_bias" => Refused(NO_LOGIT_BIAS),
            "n" => FAN_OUT,
            "n:stream" => Refused(NO_N_STREAM),
            "logprobs" | "top_logprobs" => Refused(NO_LOGPROBS),
            "reasoning_effort" => Emulated {
                how: "extended thinking with a budget of 1024 (`low`), 4096 (`medium`) or \
                      16384 (`high`) tokens, added to `max_tokens`; `minimal`/`none` think not",
                trace: "/thinking/budget_tokens",
            },
            "tool_calls:signature" => Hint(NOT_GEMINI_SIGNATURE),
            "safety_settings:block" => Refused(NO_SAFETY),
            "safety_settings:off" => Hint(SAFETY_OFF),
            "generation_config" => Refused(NO_GEMINI_CONFIG),
            "truncation:auto" => Refused(NO_TRUNCATION),
            _ => Refused(NO_OTHER),
        },
        ProviderKind::Bedrock => match field {
            "temperature" => Mapped("/inferenceConfig/temperature"),
            "top_p" => Mapped("/inferenceConfig/topP"),
            "max_tokens" => Mapped("/inferenceConfig/maxTokens"),
            "stop" => Mapped("/inferenceConfig/stopSequences"),
            "seed" => Hint(SEED_HINT),
            "response_format:json_object" => Emulated {
                how: "an instruction in the system prompt (Converse has no JSON mode)",
                trace: "/system",
            },
            "response_format:json_schema" => {
                Mapped("/outputConfig/textFormat/structure/jsonSchema/schema")
            }
            "tools" => Mapped("/toolConfig/tools"),
            "tool_choice:required" => Mapped("/toolConfig/toolChoice/any"),
            "tool_choice:function" => Mapped("/toolConfig/toolChoice/tool/name"),
            "tool_choice:none" => Refused("Converse has no `none` tool choice"),
            "image:data" => Mapped("/messages/0/content/1/image/source/bytes"),
            "image:https" => Refused("Converse takes images inline only: send a `data:` URL"),
            "user" => Hint(USER_HINT),
            "metadata" => Hint(METADATA_HINT),
            "stream" => Mapped("path:converse-stream"),
            "stream_options.include_usage" => Emulated {
                how: USAGE_ALWAYS,
                trace: "",
            },
            "top_k" => Refused("top-k is model-specific on Bedrock; Converse has no field for it"),
            "presence_penalty" | "frequency_penalty" => Refused(NO_PENALTIES),
            "logit_bias" => Refused(NO_LOGIT_BIAS),
            "n" => FAN_OUT,
            "n:stream" => Refused(NO_N_STREAM),
            "logprobs" | "top_logprobs" => Refused(NO_LOGPROBS),
            "parallel_tool_calls:false" => Refused(NO_PARALLEL_SWITCH),
            // https://docs.aws.amazon.com/bedrock/latest/userguide/claude-messages-extended-thinking.html
            "thinking" => Emulated {
                how: "Claude's own field through Converse's model-specific \
                      `additionalModelRequestFields` (Claude models; others answer Bedrock's \
                      own 400)",
                trace: "/additionalModelRequestFields/thinking",
            },
            "reasoning_effort" => Emulated {
                how: "Claude's extended thinking in `additionalModelRequestFields`, with a \
                      budget of 1024 (`low`), 4096 (`medium`) or 16384 (`high`) tokens added \
                      to `maxTokens`; `minimal`/`none` think not",
                trace: "/additionalModelRequestFields/thinking/budget_tokens",
            },
            "reasoning:earlier_turns" => Emulated {
                how: "Claude's signed thinking goes back as `reasoningContent` blocks \
                      (`reasoningText` with its `signature`, `redactedContent`), first in the \
                      assistant turn; unsigned reasoning and another provider's are left out",
                trace: "/messages/1/content/0/reasoningContent/reasoningText/signature",
            },
            "tool_calls:signature" => Hint(NOT_GEMINI_SIGNATURE),
            "safety_settings:block" => Refused(NO_SAFETY),
            "safety_settings:off" => Hint(SAFETY_OFF),
            "generation_config" => Refused(NO_GEMINI_CONFIG),
            "truncation:auto" => Refused(NO_TRUNCATION),
            _ => Refused(NO_OTHER),
        },
        ProviderKind::Gemini | ProviderKind::Vertex => match field {
            "temperature" => Mapped("/generationConfig/temperature"),
            "top_p" => Mapped("/generationConfig/topP"),
            "top_k" => Mapped("/generationConfig/topK"),
            "max_tokens" => Mapped("/generationConfig/maxOutputTokens"),
            "stop" => Mapped("/generationConfig/stopSequences"),
            "seed" => Mapped("/generationConfig/seed"),
            "presence_penalty" => Mapped("/generationConfig/presencePenalty"),
            "frequency_penalty" => Mapped("/generationConfig/frequencyPenalty"),
            "response_format:json_object" => Mapped("/generationConfig/responseMimeType"),
            "response_format:json_schema" => Emulated {
                how: "JSON Schema converted to Gemini's OpenAPI subset (`responseSchema`): \
                      `$ref` inlined, `const` as `enum`, `oneOf` as `anyOf`, a `null` type \
                      as `nullable`; a schema that cannot be converted is refused",
                trace: "/generationConfig/responseSchema",
            },
            "tools" => Mapped("/tools/0/functionDeclarations"),
            "tool_choice:required" | "tool_choice:none" => {
                Mapped("/toolConfig/functionCallingConfig/mode")
            }
            "tool_choice:function" => {
                Mapped("/toolConfig/functionCallingConfig/allowedFunctionNames")
            }
            "image:data" => Mapped("/contents/0/parts/1/inlineData/data"),
            "image:https" => Mapped("/contents/0/parts/1/fileData/fileUri"),
            "user" => Hint(USER_HINT),
            "metadata" => Hint(METADATA_HINT),
            "stream" => Mapped("path:streamGenerateContent"),
            "stream_options.include_usage" => Emulated {
                how: USAGE_ALWAYS,
                trace: "",
            },
            "logit_bias" => Refused(NO_LOGIT_BIAS),
            "n" => FAN_OUT,
            "n:stream" => Refused(NO_N_STREAM),
            "logprobs" | "top_logprobs" => Refused(NO_LOGPROBS),
            "parallel_tool_calls:false" => Refused(NO_PARALLEL_SWITCH),
            "thinking" => Mapped("/generationConfig/thinkingConfig/thinkingBudget"),
            "reasoning_effort" => Emulated {
                how: "a thinking budget, as Google's OpenAI-compatible endpoint sets it: 0 \
                      (`none`), 1024 (`minimal`, `low`), 8192 (`medium`), 24576 (`high`)",
                trace: "/generationConfig/thinkingConfig/thinkingBudget",
            },
            "reasoning:earlier_turns" => Hint(
                "not sent: thought summaries are not model input, and a thought signature \
                 belongs to the part it came on, which the canonical form keeps for tool \
                 calls only (`tool_calls:signature`, what Gemini 3 requires)",
            ),
            "tool_calls:signature" => Mapped("/contents/1/parts/0/thoughtSignature"),
            "safety_settings:block" | "safety_settings:off" => Mapped("/safetySettings"),
            "generation_config" => Mapped("/generationConfig/mediaResolution"),
            "truncation:auto" => Refused(NO_TRUNCATION),
            _ => Refused(NO_OTHER),
        },
        ProviderKind::Cohere => match field {
            "temperature" => Mapped("/temperature"),
            "top_p" => Mapped("/p"),
            "top_k" => Mapped("/k"),
            "max_tokens" => Mapped("/max_tokens"),
            "stop" => Mapped("/stop_sequences"),
            "seed" => Mapped("/seed"),
            "presence_penalty" => Mapped("/presence_penalty"),
            "frequency_penalty" => Mapped("/frequency_penalty"),
            "response_format:json_object" => Mapped("/response_format"),
            "response_format:json_schema" => Mapped("/response_format/json_schema"),
            "tools" => Mapped("/tools"),
            "tool_choice:required" | "tool_choice:none" => Mapped("/tool_choice"),
            "tool_choice:function" => Emulated {
                how: "only the named tool is declared, with `tool_choice: REQUIRED`",
                trace: "/tool_choice",
            },
            "image:data" | "image:https" => Mapped("/messages/0/content/1/image_url/url"),
            "user" => Hint(USER_HINT),
            "metadata" => Hint(METADATA_HINT),
            "stream" => Mapped("/stream"),
            "stream_options.include_usage" => Emulated {
                how: USAGE_ALWAYS,
                trace: "",
            },
            "logit_bias" => Refused(NO_LOGIT_BIAS),
            "n" => FAN_OUT,
            "n:stream" => Refused(NO_N_STREAM),
            "logprobs" | "top_logprobs" => Refused(NO_LOGPROBS),
            "parallel_tool_calls:false" => Refused(NO_PARALLEL_SWITCH),
            "thinking" => Refused(NO_THINKING),
            "reasoning_effort" => Refused(NO_EFFORT),
            "reasoning:earlier_turns" => Hint(NO_REASONING_INPUT),
            "tool_calls:signature" => Hint(NOT_GEMINI_SIGNATURE),
            "safety_settings:block" => Refused(NO_SAFETY),
            "safety_settings:off" => Hint(SAFETY_OFF),
            "generation_config" => Refused(NO_GEMINI_CONFIG),
            "truncation:auto" => Refused(NO_TRUNCATION),
            _ => Refused(NO_OTHER),
        },
        ProviderKind::Dashscope => match field {
            "temperature" => Mapped("/parameters/temperature"),
            "top_p" => Mapped("/parameters/top_p"),
            "top_k" => Mapped("/parameters/top_k"),
            "max_tokens" => Mapped("/parameters/max_tokens"),
            "stop" => Mapped("/parameters/stop"),
            "seed" => Mapped("/parameters/seed"),
            "presence_penalty" => Mapped("/parameters/presence_penalty"),
            "response_format:json_object" => Mapped("/parameters/response_format"),
            "response_format:json_schema" => Emulated {
                how:
                    "JSON mode plus the schema as a system instruction (DashScope takes no schema)",
                trace: "/parameters/response_format",
            },
            "tools" => Mapped("/parameters/tools"),
            "tool_choice:none" => Mapped("/parameters/tool_choice"),
            "tool_choice:function" => Mapped("/parameters/tool_choice/function/name"),
            "tool_choice:required" => {
                Refused("DashScope's `tool_choice` has no `required`; name the tool instead")
            }
            "parallel_tool_calls:false" => Mapped("/parameters/parallel_tool_calls"),
            "user" => Hint(USER_HINT),
            "metadata" => Hint(METADATA_HINT),
            "stream" => Mapped("/parameters/incremental_output"),
            "stream_options.include_usage" => Emulated {
                how: USAGE_ALWAYS,
                trace: "",
            },
            "image:data" | "image:https" => {
                Refused("DashScope text generation takes text only; use a vision model endpoint")
            }
            "frequency_penalty" => Refused("DashScope has a presence penalty only"),
            "logit_bias" => Refused(NO_LOGIT_BIAS),
            "n" => FAN_OUT,
            "n:stream" => Refused(NO_N_STREAM),
            "logprobs" | "top_logprobs" => Refused(NO_LOGPROBS),
            "thinking" => Refused(NO_THINKING),
            "reasoning_effort" => Refused(NO_EFFORT),
            "reasoning:earlier_turns" => Hint(NO_REASONING_INPUT),
            "tool_calls:signature" => Hint(NOT_GEMINI_SIGNATURE),
            "safety_settings:block" => Refused(NO_SAFETY),
            "safety_settings:off" => Hint(SAFETY_OFF),
            "generation_config" => Refused(NO_GEMINI_CONFIG),
            "truncation:auto" => Refused(NO_TRUNCATION),
            _ => Refused(NO_OTHER),
        },
    }
}

/// Why a provider cannot take a request: a field its matrix cell refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {provider} provider cannot take `{field}`: {why}")]
pub struct Refusal {
    /// The request field (for `other`, the field's own name).
    pub field: String,
    /// The provider kind, as configured (`anthropic`, `gemini`, ...).
    pub provider: &'static str,
    /// Why.
    pub why: &'static str,
}

/// The first field of `req` that `kind` refuses, if any. Called for each deployment before
/// any provider is called; a request no deployment can take is answered with a 400.
pub fn refusal(kind: ProviderKind, req: &ChatRequest) -> Option<Refusal> {
    for field in FIELDS {
        if !(field.present)(req) {
            continue;
        }
        let Treatment::Refused(why) = treatment(kind, field.name) else {
            continue;
        };
        let name = if field.name == "generation_config" {
            let own = req
                .extra
                .get("generation_config")
                .and_then(Value::as_object);
            match own.and_then(|o| o.keys().next()) {
                Some(k) => format!("generationConfig.{k}"),
                None => continue,
            }
        } else if field.name == "other" {
            let mut others = other_fields(req)
                .filter(|k| kind != ProviderKind::Mistral || !mistral::FIELDS.contains(k));
            match others.next() {
                Some(k) => k.to_string(),
                None => continue,
            }
        } else {
            field
                .name
                .split(':')
                .next()
                .unwrap_or(field.name)
                .to_string()
        };
        return Some(Refusal {
            field: name,
            provider: kind.name(),
            why,
        });
    }
    None
}

/// How an ingress dialect's field reaches the canonical request.
#[derive(Debug, Clone, Copy)]
pub struct IngressField {
    /// The client's dialect.
    pub dialect: Dialect,
    /// The field as the client writes it.
    pub name: &'static str,
    /// The matrix row it becomes ([`Field::name`]), or empty when the ingress itself
    /// handles it (see `note`).
    pub canonical: &'static str,
    /// JSON merged into a minimal request of the dialect to exercise the field.
    pub probe: &'static str,
    /// How, when it is not a plain rename.
    pub note: &'static str,
}

const fn ingress(
    dialect: Dialect,
    name: &'static str,
    canonical: &'static str,
    probe: &'static str,
    note: &'static str,
) -> IngressField {
    IngressField {
        dialect,
        name,
        canonical,
        probe,
        note,
    }
}

/// Every request field of the Anthropic, Responses and Gemini dialects that carries a
/// choice (OpenAI Chat fields are the matrix rows themselves). Fields the ingress refuses
/// are listed with an empty `canonical`.
pub const INGRESS: &[IngressField] = &[
    ingress(
        Dialect::Anthropic,
        "temperature",
        "temperature",
        r#"{"temperature":0.5}"#,
        "",
    ),
    ingress(Dialect::Anthropic, "top_p", "top_p", r#"{"top_p":0.9}"#, ""),
    ingress(Dialect::Anthropic, "top_k", "top_k", r#"{"top_k":40}"#, ""),
    ingress(
        Dialect::Anthropic,
        "max_tokens",
        "max_tokens",
        r#"{"max_tokens":64}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "stop_sequences",
        "stop",
        r#"{"stop_sequences":["END"]}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "tools",
        "tools",
        r#"{"tools":[{"name":"get_weather","input_schema":{"type":"object"}}]}"#,
        "server tools (`web_search`, ...) are refused: the gateway cannot run them",
    ),
    ingress(
        Dialect::Anthropic,
        "tool_choice: any",
        "tool_choice:required",
        r#"{"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"tool_choice":{"type":"any"}}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "tool_choice: none",
        "tool_choice:none",
        r#"{"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"tool_choice":{"type":"none"}}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "tool_choice: tool",
        "tool_choice:function",
        r#"{"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"tool_choice":{"type":"tool","name":"get_weather"}}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "disable_parallel_tool_use",
        "parallel_tool_calls:false",
        r#"{"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"tool_choice":{"type":"auto","disable_parallel_tool_use":true}}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "output_config.format",
        "response_format:json_schema",
        r#"{"output_config":{"format":{"type":"json_schema","schema":{"type":"object"}}}}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "image (base64)",
        "image:data",
        r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "image (url)",
        "image:https",
        r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://example.com/cat.png"}}]}]}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "metadata.user_id",
        "user",
        r#"{"metadata":{"user_id":"user-42"}}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "thinking",
        "thinking",
        r#"{"max_tokens":4096,"thinking":{"type":"enabled","budget_tokens":1024}}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "thinking / redacted_thinking blocks",
        "reasoning:earlier_turns",
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"thinking","thinking":"The user greets me.","signature":"sig-1"},{"type":"text","text":"ok"}]},{"role":"user","content":"go on"}]}"#,
        "in assistant turns, with their signature (`format` `anthropic-claude-v1`)",
    ),
    ingress(
        Dialect::Anthropic,
        "tool_use.id with a thought signature",
        "tool_calls:signature",
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"call_1__thought_signature__c2lnLTE","name":"get_weather","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"call_1__thought_signature__c2lnLTE","content":"18C"}]}],"tools":[{"name":"get_weather","input_schema":{"type":"object"}}]}"#,
        "Anthropic has no field for Gemini's signature: answers from Gemini write it into the \
         `tool_use` id as `<id>__thought_signature__<base64url of the signature>` (still \
         `[a-zA-Z0-9_-]`), and the id sent back is split again (the `tool_result`'s too)",
    ),
    ingress(
        Dialect::Anthropic,
        "stream",
        "stream",
        r#"{"stream":true}"#,
        "",
    ),
    ingress(
        Dialect::Anthropic,
        "tool_result.is_error",
        "",
        "",
        "the result's text is prefixed with `Error: ` (no provider but Anthropic has the flag)",
    ),
    ingress(
        Dialect::Responses,
        "temperature",
        "temperature",
        r#"{"temperature":0.5}"#,
        "",
    ),
    ingress(Dialect::Responses, "top_p", "top_p", r#"{"top_p":0.9}"#, ""),
    ingress(
        Dialect::Responses,
        "max_output_tokens",
        "max_tokens",
        r#"{"max_output_tokens":64}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "text.format json_object",
        "response_format:json_object",
        r#"{"text":{"format":{"type":"json_object"}}}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "text.format json_schema",
        "response_format:json_schema",
        r#"{"text":{"format":{"type":"json_schema","name":"city","schema":{"type":"object"}}}}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "tools",
        "tools",
        r#"{"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}]}"#,
        "built-in tools (`web_search`, ...) are refused",
    ),
    ingress(
        Dialect::Responses,
        "tool_choice: required",
        "tool_choice:required",
        r#"{"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}],"tool_choice":"required"}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "parallel_tool_calls",
        "parallel_tool_calls:false",
        r#"{"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}],"parallel_tool_calls":false}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "reasoning.effort",
        "reasoning_effort",
        r#"{"reasoning":{"effort":"low"}}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "user",
        "user",
        r#"{"user":"user-42"}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "function_call.call_id with a thought signature",
        "tool_calls:signature",
        r#"{"input":[{"role":"user","content":"hi"},{"type":"function_call","call_id":"call_1__thought_signature__c2lnLTE","name":"get_weather","arguments":"{}"},{"type":"function_call_output","call_id":"call_1__thought_signature__c2lnLTE","output":"18C"}],"tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}]}"#,
        "Responses has no field for Gemini's signature: answers from Gemini write it into \
         `call_id` as `<id>__thought_signature__<base64url of the signature>`, split again \
         when the item (and its `function_call_output`) comes back",
    ),
    ingress(
        Dialect::Responses,
        "stream",
        "stream",
        r#"{"stream":true}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "metadata",
        "metadata",
        r#"{"metadata":{"team":"search"}}"#,
        "also echoed in the answer",
    ),
    ingress(
        Dialect::Responses,
        "include: message.output_text.logprobs",
        "logprobs",
        r#"{"include":["message.output_text.logprobs"]}"#,
        "",
    ),
    ingress(
        Dialect::Responses,
        "include: other values",
        "",
        "",
        "accepted: they extend items a translated answer never holds (hosted-tool calls are \
         refused, input is not echoed; reasoning items carry `encrypted_content` whenever \
         there is something to check, asked or not); unknown values are a 400",
    ),
    ingress(
        Dialect::Responses,
        "reasoning items",
        "reasoning:earlier_turns",
        r#"{"input":[{"role":"user","content":"hi"},{"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"The user greets me."}],"encrypted_content":"swy1.W3sidHlwZSI6InJlYXNvbmluZy50ZXh0IiwidGV4dCI6IlRoZSB1c2VyIGdyZWV0cyBtZS4iLCJzaWduYXR1cmUiOiJzaWctMSIsImZvcm1hdCI6ImFudGhyb3BpYy1jbGF1ZGUtdjEifV0"},{"role":"assistant","content":"ok"},{"role":"user","content":"go on"}]}"#,
        "the reasoning of the assistant turn after them: answers write the canonical parts \
         (text, signature, whose) into `encrypted_content` as `swy1.<base64url JSON>`, so an \
         item sent back reaches the provider that checks it (Anthropic's signed thinking); \
         another item's summary is unsigned text and its `encrypted_content` (OpenAI's own) \
         is not sent on",
    ),
    ingress(
        Dialect::Responses,
        "truncation: auto",
        "truncation:auto",
        r#"{"truncation":"auto"}"#,
        "`disabled` (the default) is what every provider does and asks for nothing",
    ),
    ingress(
        Dialect::Responses,
        "input items of type reasoning",
        "",
        "",
        "not sent on: they only mean something to OpenAI, whose Responses clients are passed \
         through as written",
    ),
    ingress(
        Dialect::Responses,
        "store",
        "",
        "",
        "the gateway keeps no responses; answers say `store: false`",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.temperature",
        "temperature",
        r#"{"generationConfig":{"temperature":0.5}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.topP",
        "top_p",
        r#"{"generationConfig":{"topP":0.9}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.topK",
        "top_k",
        r#"{"generationConfig":{"topK":40}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.maxOutputTokens",
        "max_tokens",
        r#"{"generationConfig":{"maxOutputTokens":64}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.stopSequences",
        "stop",
        r#"{"generationConfig":{"stopSequences":["END"]}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.seed",
        "seed",
        r#"{"generationConfig":{"seed":7}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.presencePenalty",
        "presence_penalty",
        r#"{"generationConfig":{"presencePenalty":0.5}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.frequencyPenalty",
        "frequency_penalty",
        r#"{"generationConfig":{"frequencyPenalty":0.5}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.responseMimeType",
        "response_format:json_object",
        r#"{"generationConfig":{"responseMimeType":"application/json"}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.responseSchema",
        "response_format:json_schema",
        r#"{"generationConfig":{"responseMimeType":"application/json","responseSchema":{"type":"OBJECT"}}}"#,
        "OpenAPI subset lowered to JSON Schema",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.candidateCount",
        "",
        "",
        "above 1 refused with a 400 (one candidate per answer)",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.responseLogprobs",
        "logprobs",
        r#"{"generationConfig":{"responseLogprobs":true}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.logprobs",
        "top_logprobs",
        r#"{"generationConfig":{"responseLogprobs":true,"logprobs":2}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.thinkingConfig.thinkingBudget",
        "thinking",
        r#"{"generationConfig":{"thinkingConfig":{"thinkingBudget":1024}}}"#,
        "0 is `{\"type\": \"disabled\"}`; -1 (dynamic) is every model's default and asks for nothing",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.thinkingConfig.thinkingLevel",
        "reasoning_effort",
        r#"{"generationConfig":{"thinkingConfig":{"thinkingLevel":"LOW"}}}"#,
        "lower-cased",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.thinkingConfig.includeThoughts",
        "",
        "",
        "with a `thinkingBudget` above 0, thoughts come back as thought parts (from Gemini only \
         when asked; Anthropic returns its thinking either way); `true` without a budget is a \
         400",
    ),
    ingress(
        Dialect::Gemini,
        "thoughtSignature on a functionCall part",
        "tool_calls:signature",
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]},{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{}},"thoughtSignature":"sig-1"}]},{"role":"user","parts":[{"functionResponse":{"name":"get_weather","response":{"t":"18C"}}}]}],"tools":[{"functionDeclarations":[{"name":"get_weather","parameters":{"type":"object"}}]}]}"#,
        "kept with its call",
    ),
    ingress(
        Dialect::Gemini,
        "thought parts in model turns",
        "",
        "",
        "not sent on (the `reasoning:earlier_turns` row's Gemini cell says why)",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig.responseModalities",
        "",
        "",
        "`[\"TEXT\"]` is every answer; anything else refused with a 400, as are `speechConfig`, \
         `imageConfig` and `audioTimestamp`",
    ),
    ingress(
        Dialect::Gemini,
        "generationConfig (other fields)",
        "generation_config",
        r#"{"generationConfig":{"mediaResolution":"MEDIA_RESOLUTION_LOW"}}"#,
        "kept as written; refused by name (`generationConfig.mediaResolution`) where the \
         provider is not Gemini",
    ),
    ingress(
        Dialect::Gemini,
        "safetySettings",
        "safety_settings:block",
        r#"{"safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_ONLY_HIGH"}]}"#,
        "as written; only `BLOCK_NONE`/`OFF` thresholds become `safety_settings:off`",
    ),
    ingress(
        Dialect::Gemini,
        "other top-level fields",
        "",
        "",
        "refused with a 400 naming the field (as Google's parser answers)",
    ),
    ingress(
        Dialect::Gemini,
        "toolConfig ANY",
        "tool_choice:required",
        r#"{"tools":[{"functionDeclarations":[{"name":"get_weather"}]}],"toolConfig":{"functionCallingConfig":{"mode":"ANY"}}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "toolConfig NONE",
        "tool_choice:none",
        r#"{"tools":[{"functionDeclarations":[{"name":"get_weather"}]}],"toolConfig":{"functionCallingConfig":{"mode":"NONE"}}}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "inlineData",
        "image:data",
        r#"{"contents":[{"role":"user","parts":[{"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}}]}]}"#,
        "",
    ),
    ingress(
        Dialect::Gemini,
        "fileData",
        "image:https",
        r#"{"contents":[{"role":"user","parts":[{"fileData":{"mimeType":"image/png","fileUri":"https://example.com/cat.png"}}]}]}"#,
        "",
    ),
];

fn cell_text(field: &str, t: Treatment) -> String {
    let native = |at: &str| match at.strip_prefix("path:") {
        Some(p) => format!("path `{p}`"),
        None => format!("`{}`", at.trim_start_matches('/').replace('/', ".")),
    };
    match t {
        Treatment::Mapped(_) if field == "other" => {
            "mapped: forwarded under its own name (an operator may remove fields a server \
             rejects with `compat.drop_params`)"
                .to_string()
        }
        Treatment::Mapped(at) => format!("mapped: {}", native(at)),
        Treatment::Emulated { how, .. } => format!("**emulated**: {how}"),
        Treatment::Hint(why) => format!("hint: {why}"),
        Treatment::Refused(why) => format!("**refused** (400): {why}"),
    }
}

fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::OpenAi => "OpenAI Chat Completions",
        Dialect::Anthropic => "Anthropic Messages",
        Dialect::Responses => "OpenAI Responses",
        Dialect::Gemini => "Gemini generateContent",
    }
}

/// The matrix as Markdown: `docs/fields.md` is exactly this text.
pub fn render_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "# Request fields × providers\n\n\
         Generated from `filter/core/src/fields.rs` by `cargo test -p switchyard-core --test \
         fields` with `SWITCHYARD_BLESS=1`; a test fails when this file is stale, and another \
         sends every field to every provider's request encoder and checks the cell.\n\n\
         Every request field is **mapped** to a native field, **emulated** (how is said), \
         accepted as a documented **hint**, or **refused** with a 400 in the caller's dialect \
         that names the field and the model, before any provider is called. Nothing is \
         dropped. When a model has several deployments, one that refuses a field is skipped \
         and the request goes to one that can take it.\n\n\
         The matrix applies when the gateway translates. A client speaking the provider's own \
         format (OpenAI Chat to OpenAI-compatible and Azure, Anthropic Messages to Anthropic, \
         Responses to a `responses_api` provider) is passed through as written.\n\n\
         ## Fields, by provider kind\n\n\
         Rows are OpenAI Chat Completions fields; the other dialects' fields map onto them \
         (next section). `vertex` is `gemini`'s format; `azure` is `openai`'s.\n\n",
    );
    let kinds = [
        ProviderKind::Openai,
        ProviderKind::Azure,
        ProviderKind::Anthropic,
        ProviderKind::Bedrock,
        ProviderKind::Gemini,
        ProviderKind::Vertex,
        ProviderKind::Mistral,
        ProviderKind::Cohere,
        ProviderKind::Dashscope,
    ];
    for kind in kinds {
        out.push_str(&format!(
            "### {}\n\n| field | what | treatment |\n|---|---|---|\n",
            kind.name()
        ));
        for field in FIELDS {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                field.name,
                field.about,
                cell_text(field.name, treatment(kind, field.name))
            ));
        }
        out.push('\n');
    }
    out.push_str("## Ingress fields\n\n");
    for dialect in [Dialect::Anthropic, Dialect::Responses, Dialect::Gemini] {
        out.push_str(&format!(
            "### {}\n\n| field | becomes | note |\n|---|---|---|\n",
            dialect_name(dialect)
        ));
        for f in INGRESS.iter().filter(|f| f.dialect == dialect) {
            let becomes = if f.canonical.is_empty() {
                "—".to_string()
            } else {
                format!("`{}`", f.canonical)
            };
            out.push_str(&format!("| `{}` | {} | {} |\n", f.name, becomes, f.note));
        }
        out.push('\n');
    }
    out.push_str(&crate::answers::render_markdown());
    out
}
