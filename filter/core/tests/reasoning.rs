//! Reasoning across dialects (#19): a client sending back the thinking of an earlier turn,
//! and the thinking options that ask for it. Answers are checked by the goldens
//! (`*_thinking`, `*_thoughts`, `*_reasoning_content` fixtures) and the answer matrix.

mod common;

use serde_json::{json, Value};
use switchyard_core::canonical::{ChatRequest, Reasoning, ANTHROPIC_REASONING};
use switchyard_core::ingress;
use switchyard_core::providers::{anthropic, gemini, ProviderKind};
use switchyard_core::Dialect;

/// An Anthropic client's second turn: its first answer (signed thinking, redacted
/// thinking, a tool call) sent back as Anthropic wrote it.
/// Shapes: <https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking>.
fn anthropic_turn() -> Value {
    json!({
        "model": "m",
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call the weather tool.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrk"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rL"},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C"}
            ]}
        ],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]
    })
}

fn decode(dialect: Dialect, body: &Value) -> ChatRequest {
    ingress::decode_chat(dialect, &serde_json::to_vec(body).unwrap()).unwrap()
}

#[test]
fn anthropic_thinking_blocks_go_back_to_anthropic_unchanged() {
    let turn = anthropic_turn();
    let req = decode(Dialect::Anthropic, &turn);
    let body = anthropic::request_body(&req, "claude-sonnet-4-20250514").unwrap();
    assert_eq!(
        body["messages"][1]["content"], turn["messages"][1]["content"],
        "{body}"
    );
    assert_eq!(body["thinking"], turn["thinking"]);
}

#[test]
fn thinking_is_left_out_where_the_provider_cannot_check_it() {
    let req = decode(Dialect::Anthropic, &anthropic_turn());
    // Gemini: no thought parts, and the thinking text is not turned into an answer's text.
    let body = gemini::request_body(&req).unwrap();
    let text = body.to_string();
    assert!(!text.contains("I should call"), "{body}");
    assert!(!text.contains("EqQBCgIYAhIM"), "{body}");
    assert_eq!(
        body["contents"][1]["parts"],
        json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}])
    );
    // OpenAI: no reasoning in the message at all.
    let egress = ProviderKind::Openai.build_chat(&req, "gpt-4o").unwrap();
    let body: Value = serde_json::from_slice(&egress.body).unwrap();
    let assistant = &body["messages"][1];
    assert_eq!(assistant["role"], "assistant");
    assert!(assistant.get("reasoning_details").is_none(), "{assistant}");
    assert!(!body.to_string().contains("EqQBCgIYAhIM"), "{body}");
}

#[test]
fn an_openai_chat_client_sends_back_reasoning_details_to_anthropic() {
    let signed = |format: &str| {
        json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!", "reasoning_details": [
                    {"type": "reasoning.text", "text": "The user greets me.", "signature": "sig-1", "format": format}
                ]},
                {"role": "user", "content": "go on"}
            ]
        })
    };
    let req = decode(Dialect::OpenAi, &signed(ANTHROPIC_REASONING));
    assert_eq!(
        req.messages[1].reasoning,
        [Reasoning::Text {
            text: "The user greets me.".into(),
            signature: Some("sig-1".into()),
            format: Some(ANTHROPIC_REASONING.into()),
        }]
    );
    let body = anthropic::request_body(&req, "claude").unwrap();
    assert_eq!(
        body["messages"][1]["content"],
        json!([
            {"type": "thinking", "thinking": "The user greets me.", "signature": "sig-1"},
            {"type": "text", "text": "Hello!"}
        ])
    );
    // Gemini's signature means nothing to Anthropic, which would reject the turn.
    let req = decode(Dialect::OpenAi, &signed("google-gemini-v1"));
    let body = anthropic::request_body(&req, "claude").unwrap();
    assert_eq!(
        body["messages"][1]["content"],
        json!([{"type": "text", "text": "Hello!"}])
    );
}

#[test]
fn anthropic_thinking_asks_gemini_for_its_thoughts() {
    let req = decode(Dialect::Anthropic, &anthropic_turn());
    let body = gemini::request_body(&req).unwrap();
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 2048, "includeThoughts": true})
    );
    // `reasoning_effort` sets a budget only, as Google's OpenAI-compatible endpoint does.
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"
    }))
    .unwrap();
    let body = gemini::request_body(&req).unwrap();
    assert_eq!(
        body["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024})
    );
}

#[test]
fn an_anthropic_answer_round_trips_through_an_openai_chat_client() {
    // Anthropic answers with thinking; an OpenAI Chat client gets `reasoning_details` and
    // sends its message back; Anthropic gets its blocks back as it wrote them.
    let answer = ProviderKind::Anthropic
        .parse_chat(&common::fixture("anthropic/response_thinking.json"))
        .unwrap();
    let openai: Value = serde_json::from_slice(&ingress::encode_chat_response(
        Dialect::OpenAi,
        &answer,
        b"{}",
    ))
    .unwrap();
    let message = openai["choices"][0]["message"].clone();
    let req = decode(
        Dialect::OpenAi,
        &json!({"model": "m", "messages": [
            {"role": "user", "content": "Are there infinitely many primes n mod 4 = 3?"},
            message,
            {"role": "user", "content": "Prove it."}
        ]}),
    );
    let body = anthropic::request_body(&req, "claude").unwrap();
    let recorded: Value =
        serde_json::from_slice(&common::fixture("anthropic/response_thinking.json")).unwrap();
    assert_eq!(body["messages"][1]["content"], recorded["content"]);
}

#[test]
fn gemini_include_thoughts_needs_a_budget() {
    let decode = |config: Value| {
        ingress::gemini::decode_request(
            &serde_json::to_vec(&json!({
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"thinkingConfig": config}
            }))
            .unwrap(),
            "gemini-2.5-flash",
            false,
        )
    };
    let req = decode(json!({"includeThoughts": true, "thinkingBudget": 512})).unwrap();
    assert_eq!(
        req.extra["thinking"],
        json!({"type": "enabled", "budget_tokens": 512})
    );
    assert!(decode(json!({"includeThoughts": true})).is_err());
}

#[test]
fn anthropic_thinking_is_openai_reasoning_effort() {
    let effort = |thinking: Value| {
        let req = decode(
            Dialect::Anthropic,
            &json!({"model": "m", "max_tokens": 20000, "thinking": thinking,
                    "messages": [{"role": "user", "content": "hi"}]}),
        );
        let egress = ProviderKind::Openai.build_chat(&req, "o4-mini").unwrap();
        let body: Value = serde_json::from_slice(&egress.body).unwrap();
        assert!(body.get("thinking").is_none(), "{body}");
        body["reasoning_effort"].clone()
    };
    assert_eq!(
        effort(json!({"type": "enabled", "budget_tokens": 1024})),
        "low"
    );
    assert_eq!(
        effort(json!({"type": "enabled", "budget_tokens": 4096})),
        "medium"
    );
    assert_eq!(
        effort(json!({"type": "enabled", "budget_tokens": 16384})),
        "high"
    );
    assert_eq!(effort(json!({"type": "disabled"})), "minimal");
}
