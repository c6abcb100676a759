//! Cohere v2 and Mistral: their function-calling differences through the gateway.

mod common;

use common::{accumulate, fixture, translate_chunks};
use serde_json::{json, Value};
use switchyard_core::canonical::ChatRequest;
use switchyard_core::providers::{cohere, mistral, ProviderKind};
use switchyard_core::Dialect;

fn request(body: Value) -> ChatRequest {
    serde_json::from_value(body).unwrap()
}

#[test]
fn mistral_gets_nine_character_ids_paired_and_only_its_own_fields() {
    let req = request(json!({
        "model": "m", "user": "u-42", "seed": 5, "max_completion_tokens": 64,
        "stream": true, "stream_options": {"include_usage": true}, "logprobs": true,
        "tool_choice": "required", "parallel_tool_calls": false,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "alice"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "D681PevKs", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "one"},
            {"role": "tool", "tool_call_id": "D681PevKs", "content": "two"}
        ]
    }));
    let body = mistral::request_body(&req, "mistral-large-latest").unwrap();
    let calls = body["messages"][2]["tool_calls"].as_array().unwrap();
    let mapped = calls[0]["id"].as_str().unwrap();
    assert_eq!(mapped.len(), 9);
    assert!(mapped.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        mapped,
        mistral::tool_call_id("toolu_01A09q90qw90lq917835lq9")
    );
    assert_eq!(calls[1]["id"], "D681PevKs", "valid ids are kept");
    assert_eq!(
        body["messages"][3]["tool_call_id"], mapped,
        "the result follows its call"
    );
    assert_eq!(body["messages"][3]["name"], "f");
    assert_eq!(body["messages"][4]["tool_call_id"], "D681PevKs");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(body["messages"][1].get("name").is_none());
    assert_eq!(body["messages"][2]["content"], "");
    assert_eq!(body["tool_choice"], "any");
    assert_eq!(body["random_seed"], 5);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["parallel_tool_calls"], false);
    for gone in [
        "user",
        "seed",
        "stream_options",
        "logprobs",
        "max_completion_tokens",
    ] {
        assert!(body.get(gone).is_none(), "{gone} sent to Mistral");
    }
    // Mistral's own ids come back to the client as they are, in any dialect.
    for dialect in Dialect::ALL {
        let (out, usage, failed) = translate_chunks(
            ProviderKind::Mistral,
            dialect,
            true,
            &[&fixture("mistral/stream_tools.sse")],
        );
        assert!(!failed);
        let f = accumulate(dialect, &out);
        let ids: Vec<&str> = f.tool_calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(ids, ["D681PevKs", "8Bd2Lg0rQ"], "{dialect:?}");
        assert_eq!((usage.input, usage.output), (167, 52));
    }
}

#[test]
fn cohere_gets_its_tool_plan_and_choice_rules() {
    let req = request(json!({
        "model": "m", "top_p": 0.5, "frequency_penalty": 0.2,
        "tool_choice": {"type": "function", "function": {"name": "g"}},
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "g", "description": "G", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Let me call g.", "tool_calls": [
                {"id": "g_1", "type": "function", "function": {"name": "g", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "g_1", "content": "done"}
        ]
    }));
    let body = cohere::request_body(&req, "command-a-03-2025").unwrap();
    let assistant = &body["messages"][1];
    assert_eq!(assistant["tool_plan"], "Let me call g.");
    assert!(assistant.get("content").is_none());
    assert_eq!(assistant["tool_calls"][0]["function"]["arguments"], "{}");
    assert_eq!(body["tool_choice"], "REQUIRED");
    let tools: Vec<&str> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["g"], "a named choice declares only that tool");
    assert_eq!(
        (body["p"].clone(), body["frequency_penalty"].clone()),
        (json!(0.5), json!(0.2))
    );
    // The streamed tool plan is the text every client sees; the calls keep Cohere's ids.
    for dialect in Dialect::ALL {
        let (out, usage, failed) = translate_chunks(
            ProviderKind::Cohere,
            dialect,
            true,
            &[&fixture("cohere/stream_tools.sse")],
        );
        assert!(!failed);
        let f = accumulate(dialect, &out);
        assert_eq!(f.text, "I will look up the weather.", "{dialect:?}");
        let calls: Vec<(&str, Value)> = f
            .tool_calls
            .iter()
            .map(|c| (c.0.as_str(), serde_json::from_str(&c.2).unwrap()))
            .collect();
        assert_eq!(
            calls,
            [
                ("get_weather_1byjy32y4hvq", json!({"location": "Madrid"})),
                ("get_weather_0xkvxbpmzdkc", json!({"location": "Brasilia"})),
            ],
            "{dialect:?}"
        );
        assert_eq!((usage.input, usage.output), (37, 28), "billed units");
    }
}

#[test]
fn a_cohere_stream_that_ends_in_error_fails_cleanly() {
    let stream = "event: message-start\ndata: {\"type\":\"message-start\",\"id\":\"x\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n\
event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hal\"}}}}\n\n\
event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"ERROR\"}}\n\n";
    for dialect in Dialect::ALL {
        let (out, _, failed) =
            translate_chunks(ProviderKind::Cohere, dialect, false, &[stream.as_bytes()]);
        assert!(failed, "{dialect:?}");
        let f = accumulate(dialect, &out);
        assert_eq!(f.text, "Hal");
        assert!(f.error.is_some());
    }
}
