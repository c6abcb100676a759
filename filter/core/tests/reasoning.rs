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
fn an_anthropic_answer_round_trips_through_a_responses_client() {
    // A Responses client gets the thinking as a reasoning item (summary, and the signed
    // parts in `encrypted_content`), complete or streamed, and sends its output back as
    // input; Anthropic gets its blocks back as it wrote them.
    let recorded: Value =
        serde_json::from_slice(&common::fixture("anthropic/response_thinking.json")).unwrap();
    let answer = ProviderKind::Anthropic
        .parse_chat(&common::fixture("anthropic/response_thinking.json"))
        .unwrap();
    let complete: Value = serde_json::from_slice(&ingress::encode_chat_response(
        Dialect::Responses,
        &answer,
        br#"{"model":"m","input":"hi"}"#,
    ))
    .unwrap();
    let streamed = {
        let body = br#"{"model":"m","input":"hi","stream":true}"#;
        let ctx = ingress::AnswerContext {
            id: "resp_1",
            model: "m",
            created: 0,
            include_usage: false,
            request: body,
        };
        let mut encoder = ingress::stream_encoder(Dialect::Responses, &ctx);
        let mut events = Vec::new();
        for part in answer.reasoning.clone() {
            switchyard_core::stream::StreamEvent::push_reasoning(
                &mut events,
                part,
                ANTHROPIC_REASONING,
            );
        }
        events.push(switchyard_core::stream::StreamEvent::Text(
            answer.text.clone().unwrap(),
        ));
        let mut out = Vec::new();
        for e in &events {
            encoder.encode(e, &mut out);
        }
        encoder.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let done: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|e| e["type"] == "response.output_item.done")
            .map(|e| e["item"].clone())
            .collect();
        json!({"output": done})
    };
    for out in [complete, streamed] {
        let mut input = vec![
            json!({"role": "user", "content": "Are there infinitely many primes n mod 4 = 3?"}),
        ];
        input.extend(out["output"].as_array().unwrap().iter().cloned());
        input.push(json!({"role": "user", "content": "Prove it."}));
        let req = decode(Dialect::Responses, &json!({"model": "m", "input": input}));
        let body = anthropic::request_body(&req, "claude").unwrap();
        assert_eq!(body["messages"][1]["content"], recorded["content"], "{out}");
    }
    // Another reasoning item's summary is unsigned text: not sent to Anthropic.
    let req = decode(
        Dialect::Responses,
        &json!({"model": "m", "input": [
            {"role": "user", "content": "hi"},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Greeting."}], "encrypted_content": "gAAAAABo"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "go on"}
        ]}),
    );
    assert_eq!(
        req.messages[1].reasoning,
        vec![Reasoning::Text {
            text: "Greeting.".into(),
            signature: None,
            format: None
        }]
    );
    let body = anthropic::request_body(&req, "claude").unwrap();
    assert_eq!(
        body["messages"][1]["content"],
        json!([{"type": "text", "text": "hello"}])
    );
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

/// Claude's thinking on Bedrock Converse: `reasoningContent` blocks
/// (<https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ReasoningContentBlock.html>),
/// streamed as `contentBlockDelta.delta.reasoningContent` (text pieces, then the signature;
/// <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ReasoningContentBlockDelta.html>).
mod bedrock_reasoning {
    use super::*;
    use switchyard_core::canonical::Reasoning;
    use switchyard_core::providers::bedrock::{self, eventstream};
    use switchyard_core::stream::{StreamDecoder, StreamEvent};

    #[test]
    fn converse_reasoning_blocks_are_read() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "97 has no divisor.", "signature": "EqoBCkgIARAB"}}},
                {"reasoningContent": {"redactedContent": "EmwKAhgBEgy3"}},
                {"text": "Yes."}
            ]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 10, "outputTokens": 20, "totalTokens": 30}
        });
        let resp = bedrock::parse_chat(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(resp.text.as_deref(), Some("Yes."));
        assert_eq!(
            resp.reasoning,
            vec![
                Reasoning::Text {
                    text: "97 has no divisor.".into(),
                    signature: Some("EqoBCkgIARAB".into()),
                    format: Some(ANTHROPIC_REASONING.into()),
                },
                Reasoning::Encrypted {
                    data: "EmwKAhgBEgy3".into(),
                    format: Some(ANTHROPIC_REASONING.into()),
                },
            ]
        );
    }

    #[test]
    fn converse_stream_reasoning_deltas_are_read() {
        let event = |kind: &str, payload: Value| {
            eventstream::encode(
                &[
                    (":message-type", "event"),
                    (":event-type", kind),
                    (":content-type", "application/json"),
                ],
                payload.to_string().as_bytes(),
            )
        };
        let mut bytes = event("messageStart", json!({"role": "assistant"}));
        for delta in [
            json!({"reasoningContent": {"text": "97 has "}}),
            json!({"reasoningContent": {"text": "no divisor."}}),
            json!({"reasoningContent": {"signature": "EqoBCkgIARAB"}}),
        ] {
            bytes.extend(event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": delta}),
            ));
        }
        bytes.extend(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"text": "Yes."}}),
        ));
        bytes.extend(event("messageStop", json!({"stopReason": "end_turn"})));
        let mut decoder = bedrock::BedrockStreamDecoder::default();
        let mut events = Vec::new();
        decoder.push(&bytes, &mut events).unwrap();
        decoder.finish(&mut events).unwrap();
        let reasoning: Vec<_> = events
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    StreamEvent::Reasoning(_)
                        | StreamEvent::ReasoningSignature { .. }
                        | StreamEvent::Text(_)
                )
            })
            .collect();
        assert_eq!(
            reasoning,
            vec![
                StreamEvent::Reasoning("97 has ".into()),
                StreamEvent::Reasoning("no divisor.".into()),
                StreamEvent::ReasoningSignature {
                    signature: "EqoBCkgIARAB".into(),
                    format: ANTHROPIC_REASONING,
                },
                StreamEvent::Text("Yes.".into()),
            ]
        );
    }

    #[test]
    fn claude_thinking_sent_back_and_asked_for_on_bedrock() {
        // An Anthropic client's second turn (signed + redacted thinking, a tool call).
        let req = decode(Dialect::Anthropic, &anthropic_turn());
        let body = bedrock::request_body(&req).unwrap();
        assert_eq!(
            body["messages"][1]["content"][0],
            json!({"reasoningContent": {"reasoningText": {
                "text": "I should call the weather tool.",
                "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrk"}}})
        );
        assert_eq!(
            body["messages"][1]["content"][1],
            json!({"reasoningContent": {"redactedContent": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rL"}})
        );
        assert!(body["messages"][1]["content"][2].get("toolUse").is_some());
        assert_eq!(
            body["additionalModelRequestFields"],
            json!({"thinking": {"type": "enabled", "budget_tokens": 2048}})
        );
        assert_eq!(body["inferenceConfig"]["maxTokens"], json!(4096));
    }

    #[test]
    fn reasoning_effort_is_a_claude_budget_on_bedrock() {
        let req = decode(
            Dialect::OpenAi,
            &json!({"model": "m", "max_tokens": 100, "reasoning_effort": "medium",
                    "messages": [{"role": "user", "content": "hi"}]}),
        );
        let body = bedrock::request_body(&req).unwrap();
        assert_eq!(
            body["additionalModelRequestFields"],
            json!({"thinking": {"type": "enabled", "budget_tokens": 4096}})
        );
        assert_eq!(body["inferenceConfig"]["maxTokens"], json!(4196));
        let plain = decode(
            Dialect::OpenAi,
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        );
        let body = bedrock::request_body(&plain).unwrap();
        assert!(body.get("additionalModelRequestFields").is_none(), "{body}");
        assert!(body.get("inferenceConfig").is_none(), "{body}");
    }
}
