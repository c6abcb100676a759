//! Gemini's thought signatures on function calls (#19): Gemini 3 answers 400 to a
//! function-calling history whose calls come back without the `thoughtSignature` it put on
//! them (<https://ai.google.dev/gemini-api/docs/thought-signatures>). A client of any dialect
//! that echoes its tool calls back must get them to Gemini intact: Chat as Google's
//! OpenAI-compatible endpoint writes them (`extra_content.google.thought_signature`), Gemini
//! natively, Anthropic and Responses in the call id (`ToolCall::wire_id`).

mod common;

use common::fixture;
use proptest::prelude::*;
use serde_json::{json, Value};
use switchyard_core::canonical::{split_wire_id, wire_id, ChatRequest, ChatResponse};
use switchyard_core::ingress::{self, gemini as gemini_ingress, AnswerContext};
use switchyard_core::providers::{gemini, openai};
use switchyard_core::stream::StreamEvent;
use switchyard_core::Dialect;

/// The signature `gemini/response_tools.json` puts on its first call (of two).
const SIG: &str = "CiQBVKhc7pX/Tq3+ZsigA==";

fn answer() -> ChatResponse {
    gemini::parse_chat(&fixture("gemini/response_tools.json")).unwrap()
}

fn decode(dialect: Dialect, body: &Value) -> ChatRequest {
    ingress::decode_chat(dialect, &serde_json::to_vec(body).unwrap()).unwrap()
}

/// The `functionCall` parts of the Gemini request for `req`'s history.
fn sent_calls(req: &ChatRequest) -> Vec<Value> {
    let body = gemini::request_body(req).unwrap();
    body["contents"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["parts"].as_array().unwrap().clone())
        .filter(|p| p.get("functionCall").is_some())
        .collect()
}

/// What Gemini must get back: the signature on the first call only, as it came.
fn assert_signed_like_the_answer(calls: &[Value]) {
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["thoughtSignature"], json!(SIG), "{calls:?}");
    assert!(calls[1].get("thoughtSignature").is_none(), "{calls:?}");
}

#[test]
fn a_gemini_answer_keeps_the_signature_on_its_call() {
    let resp = answer();
    assert_eq!(resp.tool_calls[0].signature.as_deref(), Some(SIG));
    assert_eq!(resp.tool_calls[1].signature, None);
    // Not reasoning: it goes back on the call, not as a thought part.
    assert!(resp.reasoning.is_empty(), "{:?}", resp.reasoning);
}

#[test]
fn a_streamed_gemini_call_carries_its_signature() {
    use switchyard_core::stream::StreamDecoder as _;
    let mut decoder = gemini::GeminiStreamDecoder::default();
    let mut events = Vec::new();
    decoder
        .push(&fixture("gemini/stream_tools.sse"), &mut events)
        .unwrap();
    decoder.finish(&mut events).unwrap();
    let starts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStart { signature, .. } => Some(signature.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        starts,
        vec![Some("CiQBVKhc7nS/tr+eamSig==".to_string()), None]
    );
}

#[test]
fn an_openai_chat_client_round_trips_it_as_extra_content() {
    let resp = answer();
    let out: Value = serde_json::from_slice(&ingress::openai::encode_response(&resp)).unwrap();
    let message = &out["choices"][0]["message"];
    let calls = &message["tool_calls"];
    assert_eq!(
        calls[0]["extra_content"],
        json!({"google": {"thought_signature": SIG}})
    );
    assert!(calls[1].get("extra_content").is_none(), "{calls}");
    let mut assistant = message.clone();
    assistant.as_object_mut().unwrap().remove("refusal");
    let req = decode(
        Dialect::OpenAi,
        &json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather in Paris and Tokyo?"},
            assistant,
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"},
            {"role": "tool", "tool_call_id": calls[1]["id"], "content": "21C"},
        ]}),
    );
    assert_signed_like_the_answer(&sent_calls(&req));
    // An OpenAI-compatible server gets no `extra_content`.
    let body = openai::build_chat(&req, "gpt-4o", &openai::Compat::default()).unwrap();
    assert!(
        !String::from_utf8(body.body)
            .unwrap()
            .contains("extra_content"),
        "signature sent to OpenAI"
    );
}

#[test]
fn an_anthropic_client_round_trips_it_in_the_tool_use_id() {
    let resp = answer();
    let out: Value = serde_json::from_slice(&ingress::anthropic::encode_response(&resp)).unwrap();
    let uses: Vec<Value> = out["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .cloned()
        .collect();
    let first = uses[0]["id"].as_str().unwrap();
    // Anthropic's id pattern, so the client (and Anthropic, were it sent there) accepts it.
    assert!(
        first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "{first}"
    );
    assert_eq!(split_wire_id(first).1.as_deref(), Some(SIG));
    let req = decode(
        Dialect::Anthropic,
        &json!({"model": "m", "max_tokens": 100, "messages": [
            {"role": "user", "content": "Weather in Paris and Tokyo?"},
            {"role": "assistant", "content": out["content"]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "18C"},
                {"type": "tool_result", "tool_use_id": uses[1]["id"], "content": "21C"}
            ]}
        ]}),
    );
    assert_signed_like_the_answer(&sent_calls(&req));
    // The results answer the calls by their plain ids.
    assert_eq!(
        req.messages[2].tool_call_id.as_deref(),
        Some(req.messages[1].tool_calls.as_ref().unwrap()[0].id.as_str())
    );
    assert!(!req.messages[1].tool_calls.as_ref().unwrap()[0]
        .id
        .contains("thought_signature"));
}

#[test]
fn a_responses_client_round_trips_it_in_the_call_id() {
    let resp = answer();
    let out: Value = serde_json::from_slice(&ingress::encode_chat_response(
        Dialect::Responses,
        &resp,
        br#"{"model":"m","input":"hi"}"#,
    ))
    .unwrap();
    let calls: Vec<Value> = out["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .cloned()
        .collect();
    let mut input = vec![json!({"role": "user", "content": "Weather in Paris and Tokyo?"})];
    input.extend(calls.iter().cloned());
    for call in &calls {
        input.push(
            json!({"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}),
        );
    }
    let req = decode(Dialect::Responses, &json!({"model": "m", "input": input}));
    assert_signed_like_the_answer(&sent_calls(&req));
}

#[test]
fn a_gemini_client_round_trips_it_natively() {
    let resp = answer();
    let out: Value = serde_json::from_slice(&gemini_ingress::encode_response(&resp)).unwrap();
    let parts = out["candidates"][0]["content"]["parts"].clone();
    let calls: Vec<Value> = parts
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("functionCall").is_some())
        .cloned()
        .collect();
    assert_signed_like_the_answer(&calls);
    let results: Vec<Value> = calls
        .iter()
        .map(|c| json!({"functionResponse": {"id": c["functionCall"]["id"], "name": c["functionCall"]["name"], "response": {"t": "18C"}}}))
        .collect();
    let body = json!({"contents": [
        {"role": "user", "parts": [{"text": "Weather in Paris and Tokyo?"}]},
        {"role": "model", "parts": parts},
        {"role": "user", "parts": results}
    ]});
    let req =
        gemini_ingress::decode_request(&serde_json::to_vec(&body).unwrap(), "m", false).unwrap();
    assert_signed_like_the_answer(&sent_calls(&req));
}

#[test]
fn streamed_answers_carry_it_in_every_dialect() {
    let body = br#"{"model":"m","input":"hi","stream":true}"#;
    for dialect in [
        Dialect::OpenAi,
        Dialect::Anthropic,
        Dialect::Responses,
        Dialect::Gemini,
    ] {
        let ctx = AnswerContext {
            id: "id-1",
            model: "m",
            created: 0,
            include_usage: false,
            request: body,
        };
        let mut encoder = ingress::stream_encoder(dialect, &ctx);
        let mut out = Vec::new();
        encoder.encode(
            &StreamEvent::ToolCallStart {
                index: 0,
                id: "call_0".into(),
                name: "get_weather".into(),
                signature: Some(SIG.into()),
            },
            &mut out,
        );
        encoder.encode(
            &StreamEvent::ToolCallArgs {
                index: 0,
                arguments: "{}".into(),
            },
            &mut out,
        );
        encoder.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let expected = match dialect {
            Dialect::OpenAi => json!({"google": {"thought_signature": SIG}}).to_string(),
            Dialect::Gemini => format!("\"thoughtSignature\":\"{SIG}\""),
            _ => wire_id("call_0", Some(SIG)),
        };
        assert!(text.contains(&expected), "{dialect:?}: {text}");
    }
}

proptest! {
    #[test]
    fn any_signature_survives_the_id(id in "[a-zA-Z0-9_-]{0,40}", sig in ".{0,200}") {
        let wire = wire_id(&id, Some(&sig));
        prop_assert!(wire.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        prop_assert_eq!(split_wire_id(&wire), (id.clone(), Some(sig)));
        prop_assert_eq!(split_wire_id(&id), (id, None));
    }
}
