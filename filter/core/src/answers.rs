//! The answer-side field matrix: what each provider's answer fields become in the canonical
//! answer ([`PROVIDERS`]), and where each client dialect carries them ([`FIELDS`]).
//!
//! The request side ([`crate::fields`]) promises that no request field is dropped; this is
//! the same promise for answers. Both tables are data the tests check against the real
//! decoders and encoders (`tests/answers.rs` feeds recorded provider answers through every
//! provider's parser and a canonical answer through every dialect's encoder), and they render
//! the "Answers" part of `docs/fields.md`, so the doc cannot drift. What no dialect carries
//! is listed in [`NOT_CARRIED`] with the reason.

use crate::canonical::{
    ChatResponse, FinishReason, Reasoning, TokenUsage, ToolCall, ANTHROPIC_REASONING,
};
use crate::providers::ProviderKind;

/// Where one dialect carries an answer field: a JSON pointer into the complete answer and
/// the JSON value found there for the field's sample answer.
#[derive(Debug, Clone, Copy)]
pub struct Carried {
    /// JSON pointer into the dialect's complete (non-streamed) answer.
    pub at: &'static str,
    /// The value there, as JSON text.
    pub value: &'static str,
}

const fn at(at: &'static str, value: &'static str) -> Carried {
    Carried { at, value }
}

/// One canonical answer field (or one value of it) and where each dialect puts it.
#[derive(Debug, Clone, Copy)]
pub struct AnswerField {
    /// The canonical field (`finish_reason: length`, `usage.cached_input`, ...).
    pub name: &'static str,
    /// A canonical answer that shows the field (tests encode it; docs show the values).
    pub sample: fn() -> ChatResponse,
    /// OpenAI Chat Completions, Anthropic Messages, OpenAI Responses, Gemini, in the order
    /// of [`crate::Dialect::ALL`].
    pub carried: [Carried; 4],
}

fn answer(text: Option<&str>, finish: FinishReason) -> ChatResponse {
    ChatResponse {
        id: "resp-1".into(),
        model: "m".into(),
        created: 1_700_000_000,
        text: text.map(str::to_string),
        tool_calls: Vec::new(),
        reasoning: Vec::new(),
        finish_reason: Some(finish),
        usage: TokenUsage::default(),
    }
}

fn with_call() -> ChatResponse {
    let mut r = answer(None, FinishReason::ToolCalls);
    r.tool_calls.push(ToolCall::function(
        "call_1",
        "get_weather",
        r#"{"city":"Paris"}"#,
    ));
    r
}

fn with_signed_call() -> ChatResponse {
    let mut r = with_call();
    r.tool_calls[0].signature = Some("sig-1".into());
    r
}

fn with_usage() -> ChatResponse {
    let mut r = answer(Some("hi"), FinishReason::Stop);
    r.usage = TokenUsage {
        input: 100,
        output: 20,
        cached_input: 40,
        reasoning: 0,
    };
    r
}

fn with_thinking() -> ChatResponse {
    let mut r = answer(Some("Hello!"), FinishReason::Stop);
    r.reasoning = vec![Reasoning::Text {
        text: "The user greets me.".into(),
        signature: Some("sig-1".into()),
        format: Some(ANTHROPIC_REASONING.into()),
    }];
    r
}

fn with_reasoning() -> ChatResponse {
    let mut r = with_usage();
    r.usage.reasoning = 12;
    r
}

/// Every answer field a translated answer carries, and where.
pub const FIELDS: &[AnswerField] = &[
    AnswerField {
        name: "text",
        sample: || answer(Some("Hello!"), FinishReason::Stop),
        carried: [
            at("/choices/0/message/content", r#""Hello!""#),
            at("/content/0/text", r#""Hello!""#),
            at("/output/0/content/0/text", r#""Hello!""#),
            at("/candidates/0/content/parts/0/text", r#""Hello!""#),
        ],
    },
    AnswerField {
        name: "finish_reason: stop",
        sample: || answer(Some("Hello!"), FinishReason::Stop),
        carried: [
            at("/choices/0/finish_reason", r#""stop""#),
            at("/stop_reason", r#""end_turn""#),
            at("/status", r#""completed""#),
            at("/candidates/0/finishReason", r#""STOP""#),
        ],
    },
    AnswerField {
        name: "finish_reason: length",
        sample: || answer(Some("Hel"), FinishReason::Length),
        carried: [
            at("/choices/0/finish_reason", r#""length""#),
            at("/stop_reason", r#""max_tokens""#),
            at("/incomplete_details/reason", r#""max_output_tokens""#),
            at("/candidates/0/finishReason", r#""MAX_TOKENS""#),
        ],
    },
    AnswerField {
        name: "finish_reason: tool_calls",
        sample: with_call,
        carried: [
            at("/choices/0/finish_reason", r#""tool_calls""#),
            at("/stop_reason", r#""tool_use""#),
            at("/status", r#""completed""#),
            at("/candidates/0/finishReason", r#""STOP""#),
        ],
    },
    AnswerField {
        name: "finish_reason: content_filter",
        sample: || answer(Some("I can't help with that."), FinishReason::ContentFilter),
        carried: [
            at("/choices/0/finish_reason", r#""content_filter""#),
            at("/stop_reason", r#""refusal""#),
            at("/incomplete_details/reason", r#""content_filter""#),
            at("/candidates/0/finishReason", r#""SAFETY""#),
        ],
    },
    AnswerField {
        name: "tool call: id",
        sample: with_call,
        carried: [
            at("/choices/0/message/tool_calls/0/id", r#""call_1""#),
            at("/content/0/id", r#""call_1""#),
            at("/output/0/call_id", r#""call_1""#),
            at(
                "/candidates/0/content/parts/0/functionCall/id",
                r#""call_1""#,
            ),
        ],
    },
    AnswerField {
        name: "tool call: name",
        sample: with_call,
        carried: [
            at(
                "/choices/0/message/tool_calls/0/function/name",
                r#""get_weather""#,
            ),
            at("/content/0/name", r#""get_weather""#),
            at("/output/0/name", r#""get_weather""#),
            at(
                "/candidates/0/content/parts/0/functionCall/name",
                r#""get_weather""#,
            ),
        ],
    },
    AnswerField {
        name: "tool call: arguments",
        sample: with_call,
        carried: [
            at(
                "/choices/0/message/tool_calls/0/function/arguments",
                r#""{\"city\":\"Paris\"}""#,
            ),
            at("/content/0/input", r#"{"city":"Paris"}"#),
            at("/output/0/arguments", r#""{\"city\":\"Paris\"}""#),
            at(
                "/candidates/0/content/parts/0/functionCall/args",
                r#"{"city":"Paris"}"#,
            ),
        ],
    },
    AnswerField {
        // Gemini's `thoughtSignature` on a call (Gemini 3 wants it back); Anthropic and
        // Responses have no field for it, so it rides in the call id (`ToolCall::wire_id`:
        // base64url of `sig-1` is `c2lnLTE`), split again when the call comes back.
        name: "tool call: thought signature",
        sample: with_signed_call,
        carried: [
            at(
                "/choices/0/message/tool_calls/0/extra_content/google/thought_signature",
                r#""sig-1""#,
            ),
            at("/content/0/id", r#""call_1__thought_signature__c2lnLTE""#),
            at(
                "/output/0/call_id",
                r#""call_1__thought_signature__c2lnLTE""#,
            ),
            at(
                "/candidates/0/content/parts/0/thoughtSignature",
                r#""sig-1""#,
            ),
        ],
    },
    AnswerField {
        name: "reasoning text",
        sample: with_thinking,
        carried: [
            at(
                "/choices/0/message/reasoning_content",
                r#""The user greets me.""#,
            ),
            at("/content/0/thinking", r#""The user greets me.""#),
            at("/output/0/summary/0/text", r#""The user greets me.""#),
            at(
                "/candidates/0/content/parts/0/text",
                r#""The user greets me.""#,
            ),
        ],
    },
    AnswerField {
        name: "reasoning is marked as such",
        sample: with_thinking,
        carried: [
            at(
                "/choices/0/message/reasoning_details/0/type",
                r#""reasoning.text""#,
            ),
            at("/content/0/type", r#""thinking""#),
            at("/output/0/type", r#""reasoning""#),
            at("/candidates/0/content/parts/0/thought", "true"),
        ],
    },
    AnswerField {
        name: "usage.input (100, 40 of them cached)",
        sample: with_usage,
        carried: [
            at("/usage/prompt_tokens", "100"),
            // Anthropic counts cache reads apart from `input_tokens`.
            at("/usage/input_tokens", "60"),
            at("/usage/input_tokens", "100"),
            at("/usageMetadata/promptTokenCount", "100"),
        ],
    },
    AnswerField {
        name: "usage.cached_input",
        sample: with_usage,
        carried: [
            at("/usage/prompt_tokens_details/cached_tokens", "40"),
            at("/usage/cache_read_input_tokens", "40"),
            at("/usage/input_tokens_details/cached_tokens", "40"),
            at("/usageMetadata/cachedContentTokenCount", "40"),
        ],
    },
    AnswerField {
        name: "usage.output",
        sample: with_usage,
        carried: [
            at("/usage/completion_tokens", "20"),
            at("/usage/output_tokens", "20"),
            at("/usage/output_tokens", "20"),
            at("/usageMetadata/candidatesTokenCount", "20"),
        ],
    },
    AnswerField {
        name: "usage.reasoning (12 of the 20 output)",
        sample: with_reasoning,
        carried: [
            at("/usage/completion_tokens_details/reasoning_tokens", "12"),
            // Anthropic has no breakdown: thinking is counted in `output_tokens`.
            at("/usage/output_tokens", "20"),
            at("/usage/output_tokens_details/reasoning_tokens", "12"),
            // Gemini counts thoughts apart from the candidates (their sum is the output).
            at("/usageMetadata/thoughtsTokenCount", "12"),
        ],
    },
];

/// Answer content a translated answer does not carry, and why that is not a silent drop.
pub const NOT_CARRIED: &[(&str, &str)] = &[
    (
        "log-probabilities",
        "never asked for: `logprobs`/`top_logprobs` are refused before a translated request \
         is sent (request matrix)",
    ),
    (
        "several choices in a stream",
        "never asked for: `n` above 1 with `stream` is refused when translated (a complete \
         answer gets its `n` choices, asked one request each and merged), as is Gemini's \
         `candidateCount` above 1",
    ),
    (
        "reasoning tokens to an Anthropic client",
        "Anthropic's `usage` has no breakdown: they are in `output_tokens`, as Anthropic \
         itself reports them",
    ),
    (
        "reasoning signatures and encrypted reasoning to Gemini clients",
        "the reasoning text is carried (a thought part), and the signature only to clients \
         that can send it back (OpenAI Chat in `reasoning_details[].signature`, Anthropic in \
         the thinking block's `signature`, Responses in the reasoning item's \
         `encrypted_content`); a Gemini client's thoughts are not sent on (request matrix), \
         so another provider's signature would have nowhere to go; a Gemini client gets \
         Gemini's own `thoughtSignature`",
    ),
    (
        "reasoning from Cohere, DashScope and Mistral",
        "not read: their reasoning fields are not in the documented answers the gateway \
         follows; their reasoning tokens are counted in `usage.output` (Bedrock's Claude \
         thinking is read: `reasoningContent` blocks and stream deltas)",
    ),
    (
        "citations, annotations, grounding metadata",
        "not returned: the hosted tools that produce them (web search, file search, Google \
         Search grounding) are refused on request",
    ),
    (
        "OpenAI `message.refusal`",
        "carried as the answer's text with finish `content_filter` (Anthropic `refusal`, \
         Gemini `SAFETY`, Responses `incomplete`)",
    ),
];

/// How a provider's answer becomes canonical: the native value of each finish reason, where
/// usage is read from, and one recorded answer (a fixture) the test feeds through.
#[derive(Debug, Clone, Copy)]
pub struct ProviderAnswers {
    /// The provider kind.
    pub kind: ProviderKind,
    /// A recorded answer in the provider's wire format, relative to
    /// `filter/core/tests/fixtures/`.
    pub fixture: &'static str,
    /// JSON pointer to the finish reason in that answer.
    pub finish_at: &'static str,
    /// Native finish values and what they become (the first listed per canonical value is
    /// the usual one).
    pub finish: &'static [(&'static str, FinishReason)],
    /// Where `usage.input`, `usage.output`, `usage.cached_input` and `usage.reasoning` come
    /// from: JSON pointers joined by ` + ` (summed) or ` | ` (the first present); empty
    /// where the provider does not report the count.
    pub usage: [&'static str; 4],
}

const OPENAI_FINISH: &[(&str, FinishReason)] = &[
    ("stop", FinishReason::Stop),
    ("length", FinishReason::Length),
    ("tool_calls", FinishReason::ToolCalls),
    ("function_call", FinishReason::ToolCalls),
    ("content_filter", FinishReason::ContentFilter),
];
const OPENAI_USAGE: [&str; 4] = [
    "/usage/prompt_tokens",
    "/usage/completion_tokens",
    "/usage/prompt_tokens_details/cached_tokens",
    "/usage/completion_tokens_details/reasoning_tokens",
];
const GEMINI_FINISH: &[(&str, FinishReason)] = &[
    ("STOP", FinishReason::Stop),
    ("MAX_TOKENS", FinishReason::Length),
    ("SAFETY", FinishReason::ContentFilter),
    ("RECITATION", FinishReason::ContentFilter),
    ("BLOCKLIST", FinishReason::ContentFilter),
    ("PROHIBITED_CONTENT", FinishReason::ContentFilter),
    ("SPII", FinishReason::ContentFilter),
];
const GEMINI_USAGE: [&str; 4] = [
    "/usageMetadata/promptTokenCount",
    "/usageMetadata/candidatesTokenCount + /usageMetadata/thoughtsTokenCount",
    "/usageMetadata/cachedContentTokenCount",
    "/usageMetadata/thoughtsTokenCount",
];

/// Every provider kind's answer mapping.
pub const PROVIDERS: &[ProviderAnswers] = &[
    ProviderAnswers {
        kind: ProviderKind::Openai,
        fixture: "openai/response_text.json",
        finish_at: "/choices/0/finish_reason",
        finish: OPENAI_FINISH,
        usage: OPENAI_USAGE,
    },
    ProviderAnswers {
        kind: ProviderKind::Azure,
        fixture: "azure/response_tools.json",
        finish_at: "/choices/0/finish_reason",
        finish: OPENAI_FINISH,
        usage: OPENAI_USAGE,
    },
    ProviderAnswers {
        kind: ProviderKind::Mistral,
        fixture: "mistral/response_tools.json",
        finish_at: "/choices/0/finish_reason",
        finish: &[
            ("stop", FinishReason::Stop),
            ("length", FinishReason::Length),
            ("model_length", FinishReason::Length),
            ("tool_calls", FinishReason::ToolCalls),
            ("content_filter", FinishReason::ContentFilter),
        ],
        usage: OPENAI_USAGE,
    },
    ProviderAnswers {
        kind: ProviderKind::Anthropic,
        fixture: "anthropic/response_text.json",
        finish_at: "/stop_reason",
        finish: &[
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::ContentFilter),
        ],
        usage: [
            "/usage/input_tokens + /usage/cache_read_input_tokens + \
             /usage/cache_creation_input_tokens",
            "/usage/output_tokens",
            "/usage/cache_read_input_tokens",
            "",
        ],
    },
    ProviderAnswers {
        kind: ProviderKind::Bedrock,
        fixture: "bedrock/response_text.json",
        finish_at: "/stopReason",
        finish: &[
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("guardrail_intervened", FinishReason::ContentFilter),
            ("content_filtered", FinishReason::ContentFilter),
        ],
        usage: [
            "/usage/inputTokens + /usage/cacheReadInputTokens + /usage/cacheWriteInputTokens",
            "/usage/outputTokens",
            "/usage/cacheReadInputTokens",
            "",
        ],
    },
    ProviderAnswers {
        kind: ProviderKind::Gemini,
        fixture: "gemini/response_text.json",
        finish_at: "/candidates/0/finishReason",
        finish: GEMINI_FINISH,
        usage: GEMINI_USAGE,
    },
    ProviderAnswers {
        kind: ProviderKind::Vertex,
        fixture: "vertex/response_text.json",
        finish_at: "/candidates/0/finishReason",
        finish: GEMINI_FINISH,
        usage: GEMINI_USAGE,
    },
    ProviderAnswers {
        kind: ProviderKind::Cohere,
        fixture: "cohere/response_text.json",
        finish_at: "/finish_reason",
        finish: &[
            ("COMPLETE", FinishReason::Stop),
            ("STOP_SEQUENCE", FinishReason::Stop),
            ("MAX_TOKENS", FinishReason::Length),
            ("TOOL_CALL", FinishReason::ToolCalls),
            ("ERROR_TOXIC", FinishReason::ContentFilter),
        ],
        usage: [
            "/usage/billed_units/input_tokens | /usage/tokens/input_tokens",
            "/usage/billed_units/output_tokens | /usage/tokens/output_tokens",
            "/usage/cached_tokens",
            "",
        ],
    },
    ProviderAnswers {
        kind: ProviderKind::Dashscope,
        fixture: "dashscope/response_text.json",
        finish_at: "/output/choices/0/finish_reason",
        finish: &[
            ("stop", FinishReason::Stop),
            ("length", FinishReason::Length),
            ("tool_calls", FinishReason::ToolCalls),
            ("content_filter", FinishReason::ContentFilter),
            ("data_inspection_failed", FinishReason::ContentFilter),
        ],
        usage: [
            "/usage/input_tokens",
            "/usage/output_tokens",
            "/usage/prompt_tokens_details/cached_tokens",
            "",
        ],
    },
];

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// A pointer expression (` + ` sums, ` | ` falls back) as the dotted names users read.
fn dotted(expr: &str) -> String {
    if expr.is_empty() {
        return "— (not reported)".to_string();
    }
    let name = |p: &str| format!("`{}`", p.trim().trim_start_matches('/').replace('/', "."));
    match expr.split_once(" | ") {
        Some((first, rest)) => format!("{} (else {})", name(first), name(rest)),
        None => expr.split(" + ").map(name).collect::<Vec<_>>().join(" + "),
    }
}

/// The "Answers" part of `docs/fields.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "## Answers\n\n\
         Each provider's answer is read into one canonical answer, which each client dialect \
         encodes in its own terms. Both tables are checked by `tests/answers.rs`: recorded \
         provider answers go through every provider's parser, and the sample answer of each \
         row through every dialect's encoder (streams carry the same fields in each dialect's \
         stream events; the per-provider stream goldens check them). A provider's error keeps its status and its own message (anything \
         that looks like a credential is masked), rendered in the caller's error format.\n\n\
         ### From each provider\n\n\
         | provider | finish reasons (native → canonical) | `usage.input` | `usage.output` | \
         `usage.cached_input` | `usage.reasoning` |\n|---|---|---|---|---|---|\n",
    );
    for p in PROVIDERS {
        let finish = p
            .finish
            .iter()
            .map(|(native, f)| format!("`{native}` → `{}`", finish_name(*f)))
            .collect::<Vec<_>>()
            .join(", ");
        let extra = match p.kind {
            ProviderKind::Gemini | ProviderKind::Vertex => {
                " (`STOP` with function calls → `tool_calls`)"
            }
            ProviderKind::Openai | ProviderKind::Azure => {
                " (`stop` with a `refusal` → `content_filter`)"
            }
            _ => "",
        };
        out.push_str(&format!(
            "| {} | {finish}{extra}; others → `stop` | {} | {} | {} | {} |\n",
            p.kind.name(),
            dotted(p.usage[0]),
            dotted(p.usage[1]),
            dotted(p.usage[2]),
            dotted(p.usage[3]),
        ));
    }
    out.push_str(
        "\n### To each client dialect\n\n\
         The value each dialect's complete answer holds for a sample canonical answer \
         (usage: 100 input tokens, 40 of them cached, 20 output).\n\n\
         | canonical | OpenAI Chat | Anthropic Messages | OpenAI Responses | Gemini |\n\
         |---|---|---|---|---|\n",
    );
    for f in FIELDS {
        let cells: Vec<String> = f
            .carried
            .iter()
            .map(|c| {
                format!(
                    "`{}` = `{}`",
                    c.at.trim_start_matches('/').replace('/', "."),
                    c.value.replace('|', "\\|")
                )
            })
            .collect();
        out.push_str(&format!("| {} | {} |\n", f.name, cells.join(" | ")));
    }
    out.push_str("\n### Not in a translated answer\n\n| what | why |\n|---|---|\n");
    for (what, why) in NOT_CARRIED {
        out.push_str(&format!("| {what} | {why} |\n"));
    }
    out
}
