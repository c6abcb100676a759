//! The OpenAI Responses ingress: request decoding (golden), what needs a store is refused
//! with the field named, answers and streams for Responses clients from every provider, and
//! the pass-through to providers that speak the Responses API natively.

mod common;

use common::{accumulate_responses, fixture, golden, pretty, translate_chunks};
use serde_json::{json, Value};
use switchyard_core::keys::hash_key;
use switchyard_core::providers::passthrough::PassthroughStream;
use switchyard_core::providers::{openai, ProviderKind};
use switchyard_core::routing::NoHealth;
use switchyard_core::stream::ResponseStream;
use switchyard_core::{ingress, Dialect, Gateway, HeadOutcome, Plan, RequestHead};

#[test]
fn request_decodes_to_canonical_golden() {
    let req =
        ingress::decode_chat(Dialect::Responses, &fixture("responses/request_tools.json")).unwrap();
    golden(
        "responses/request_tools.expected.json",
        &pretty(&serde_json::to_vec(&req).unwrap()),
    );
    // The meaning, spelled out: instructions first, the two calls one assistant turn after
    // its text, each output a tool message, the reasoning item gone.
    let roles: Vec<&str> = req
        .messages
        .iter()
        .map(|m| match m.role {
            switchyard_core::canonical::Role::System => "system",
            switchyard_core::canonical::Role::Developer => "developer",
            switchyard_core::canonical::Role::User => "user",
            switchyard_core::canonical::Role::Assistant => "assistant",
            switchyard_core::canonical::Role::Tool => "tool",
        })
        .collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "user",
            "assistant",
            "tool",
            "tool",
            "developer"
        ]
    );
    let calls = req.messages[3].tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(req.messages[3].text_content(), "Let me check.");
    assert_eq!(req.messages[5].text_content(), "09:41");
    assert_eq!(req.max_completion_tokens, Some(300));
    assert!(
        req.wants_stream_usage(),
        "a Responses stream always ends with usage"
    );
    assert_eq!(req.extra["parallel_tool_calls"], json!(false));
}

#[test]
fn metadata_include_and_truncation_are_carried_or_answered_never_dropped() {
    let body = json!({"model": "m", "input": "hi", "metadata": {"team": "search"},
                      "include": ["message.output_text.logprobs", "reasoning.encrypted_content"],
                      "truncation": "disabled", "store": false});
    let req =
        ingress::decode_chat(Dialect::Responses, &serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(req.extra["metadata"], json!({"team": "search"}));
    assert_eq!(req.extra["logprobs"], json!(true));
    let mut names: Vec<&str> = req.extra.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["logprobs", "metadata"]);
}

#[test]
fn what_needs_a_store_or_a_hosted_tool_is_a_400_naming_the_field() {
    let base = json!({"model": "m", "input": "hi"});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let cases = [
        (
            with("previous_response_id", json!("resp_123")),
            "previous_response_id",
        ),
        (with("conversation", json!("conv_123")), "conversation"),
        (with("prompt", json!({"id": "pmpt_123"})), "prompt"),
        (with("background", json!(true)), "background"),
        (
            with("input", json!([{"type": "item_reference", "id": "msg_1"}])),
            "input[0]",
        ),
        (
            with(
                "input",
                json!([{"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]),
            ),
            "input[0]",
        ),
        (
            with(
                "input",
                json!([{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]),
            ),
            "input[0]",
        ),
        (
            with("input", json!([{"type": "web_search_call", "id": "ws_1"}])),
            "input[0]",
        ),
        (with("tools", json!([{"type": "web_search"}])), "tools[0]"),
        (
            with("tool_choice", json!({"type": "file_search"})),
            "tool_choice",
        ),
        (with("input", json!([])), "input"),
        (with("truncation", json!("sometimes")), "truncation"),
        (
            with("include", json!(["message.output_text.tokens"])),
            "include",
        ),
    ];
    for (body, param) in cases {
        let err = ingress::decode_chat(Dialect::Responses, &serde_json::to_vec(&body).unwrap())
            .unwrap_err();
        assert_eq!(
            (err.status, err.param.as_deref()),
            (400, Some(param)),
            "{body}: {}",
            err.message
        );
        assert!(err.message.contains('`'), "{}", err.message);
        // In the Responses dialect: OpenAI's error shape.
        let v: Value = serde_json::from_slice(&err.body(Dialect::Responses)).unwrap();
        assert_eq!(v["error"]["param"], param);
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // A null `previous_response_id` (as some SDKs send) is no reference at all.
    let ok = with("previous_response_id", Value::Null);
    assert!(ingress::decode_chat(Dialect::Responses, &serde_json::to_vec(&ok).unwrap()).is_ok());
}

#[test]
fn every_provider_stream_reaches_a_responses_client_with_tools_and_usage() {
    for (kind, file, text, calls, usage) in [
        (
            ProviderKind::Anthropic,
            "anthropic/stream_tools.sse",
            "Okay, let's check the weather:",
            2,
            (472, 89),
        ),
        (
            ProviderKind::Gemini,
            "gemini/stream_tools.sse",
            "Let me look both up.",
            2,
            (60, 35),
        ),
        (
            ProviderKind::Openai,
            "openai/stream_tools.sse",
            "Checking now.",
            2,
            (82, 41),
        ),
        (
            ProviderKind::Dashscope,
            "dashscope/stream_tools.sse",
            "Let me check.",
            2,
            (220, 28),
        ),
    ] {
        let (out, metered, failed) =
            translate_chunks(kind, Dialect::Responses, false, &[&fixture(file)]);
        assert!(!failed, "{file}");
        let f = accumulate_responses(&out);
        assert_eq!(f.text, text, "{file}");
        assert_eq!(f.tool_calls.len(), calls, "{file}");
        for (id, name, args) in &f.tool_calls {
            assert!(!id.is_empty() && !name.is_empty(), "{file}");
            serde_json::from_str::<Value>(args).unwrap_or_else(|e| panic!("{file}: {args}: {e}"));
        }
        assert_eq!(f.finish.as_deref(), Some("tool_calls"), "{file}");
        assert_eq!((f.input_tokens, f.output_tokens), usage, "{file}");
        assert_eq!((metered.input, metered.output), usage, "{file}");
    }
    // Cached tokens reach `input_tokens_details`.
    let (out, _, _) = translate_chunks(
        ProviderKind::Openai,
        Dialect::Responses,
        false,
        &[&fixture("openai/stream_tools.sse")],
    );
    let last = common::sse_frames(&out).pop().unwrap().1;
    assert_eq!(last["type"], "response.completed");
    assert_eq!(
        last["response"]["usage"]["input_tokens_details"]["cached_tokens"],
        64
    );
}

#[test]
fn an_answer_cut_by_the_token_limit_is_incomplete() {
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Once upon\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":2}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (out, _, failed) = translate_chunks(
        ProviderKind::Anthropic,
        Dialect::Responses,
        false,
        &[stream.as_bytes()],
    );
    assert!(!failed);
    let f = accumulate_responses(&out);
    assert_eq!(f.finish.as_deref(), Some("max_output_tokens"));
    assert_eq!(f.text, "Once upon");
}

fn gateway() -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "openai": {"kind": "openai", "api_key_secret": "OPENAI_KEY", "responses_api": true},
            "compat": {"kind": "openai", "base_url": "https://api.groq.com/openai", "api_key_secret": "GROQ_KEY"},
            "claude": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"}
        },
        "models": [
            {"name": "gpt", "deployments": [{"provider": "openai", "model": "gpt-4.1"}]},
            {"name": "llama", "deployments": [{"provider": "compat", "model": "llama-3.3-70b-versatile"}]},
            {"name": "claude", "deployments": [{"provider": "claude", "model": "claude-sonnet-4-5"}]}
        ]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|name| Some(format!("secret-for-{name}")))
}

fn plan(gw: &Gateway, body: Value) -> Plan {
    let head = RequestHead {
        method: "POST",
        path: "/v1/responses",
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    let HeadOutcome::ReadBody(admitted) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("rejected")
    };
    assert_eq!(admitted.dialect, Dialect::Responses);
    gw.plan(
        &admitted,
        &serde_json::to_vec(&body).unwrap(),
        7,
        1_700_000_000,
        &NoHealth,
    )
    .unwrap()
}

#[test]
fn a_responses_native_provider_gets_the_body_untouched_but_for_model() {
    let gw = gateway();
    let body = json!({"model": "gpt", "input": "hi", "stream": true, "store": true,
                      "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "low"}});
    let plan = plan(&gw, body);
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.path, "/v1/responses");
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["model"], "gpt-4.1");
    assert_eq!(sent["include"], json!(["reasoning.encrypted_content"]));
    assert!(
        sent.get("stream_options").is_none(),
        "Responses streams carry usage anyway"
    );
    // The stream passes through at every split, usage metered from `response.completed`.
    let upstream = fixture("responses/stream_tools.sse");
    let run = |chunks: &[&[u8]]| {
        let mut s = plan.response_stream(0);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        (out, s.usage(), s.failed(), s.complete())
    };
    let whole = run(&[&upstream]);
    assert_eq!(whole.0, upstream, "forwarded byte for byte");
    assert_eq!((whole.1.input, whole.1.output), (37, 11));
    assert!(!whole.2 && whole.3);
    for i in 0..=upstream.len() {
        assert!(
            run(&[&upstream[..i], &upstream[i..]]) == whole,
            "split at {i}"
        );
    }
    let f = accumulate_responses(&whole.0);
    assert_eq!(f.text, "Hi there! Checking Paris.");
    assert_eq!(f.tool_calls[0].2, r#"{"location":"Paris, France"}"#);
    // Cut short: the client gets a `response.failed` for the same response.
    let cut = run(&[&upstream[..upstream.len() / 2]]);
    assert!(cut.2 && !cut.3);
    let f = accumulate_responses(&cut.0);
    assert_eq!(
        common::error_type(Dialect::Responses, &f.error.unwrap()),
        "bad_gateway"
    );
    // Non-streamed answers pass through byte for byte, usage with cached tokens metered.
    let answer = fixture("responses/response_tools.json");
    let (client, usage) = plan.translate_response(0, &answer).unwrap();
    assert_eq!(client, answer);
    assert_eq!(
        (usage.input, usage.cached_input, usage.output),
        (291, 256, 23)
    );
}

#[test]
fn other_providers_get_a_translated_request_and_answer() {
    let gw = gateway();
    let plan = plan(
        &gw,
        serde_json::from_slice(&fixture("responses/request_tools.json"))
            .map(|mut v: Value| {
                v["model"] = json!("claude");
                v["stream"] = json!(false);
                v
            })
            .unwrap(),
    );
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.path, "/v1/messages");
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    // `reasoning.effort: low` is extended thinking with a 1024-token budget, which Anthropic
    // counts in `max_tokens` on top of the 300 the client asked for.
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert_eq!(sent["max_tokens"], 300 + 1024);
    assert!(sent["system"]
        .as_str()
        .unwrap()
        .starts_with("You are a weather assistant."));
    let tool_results: Vec<&Value> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(tool_results.len(), 2);
    let (client, usage) = plan
        .translate_response(0, &fixture("anthropic/response_tools.json"))
        .unwrap();
    let r: Value = serde_json::from_slice(&client).unwrap();
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"][1]["type"], "function_call");
    assert_eq!(r["output"][1]["call_id"], "toolu_01A09q90qw90lq917835lq9");
    // The request's settings are echoed as sent.
    assert_eq!(
        r["instructions"],
        "You are a weather assistant. Answer briefly."
    );
    assert_eq!(r["max_output_tokens"], 300);
    assert_eq!(r["text"]["format"]["name"], "weather_report");
    assert_eq!(r["metadata"]["ticket"], "42");
    assert_eq!(
        r["usage"]["input_tokens_details"]["cached_tokens"],
        usage.cached_input
    );
    // An OpenAI-compatible provider without `responses_api` gets Chat Completions.
    let plan = self::plan(
        &gw,
        json!({"model": "llama", "input": "hi", "stream": true}),
    );
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.path, "/openai/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let mut s = plan.response_stream(0);
    let mut out = s.push(&fixture("openai/stream_tools.sse"));
    out.extend(s.finish());
    let f = accumulate_responses(&out);
    assert_eq!(f.tool_calls.len(), 2);
    // Errors reach the client in OpenAI's shape.
    let err = plan.translate_error(
        0,
        429,
        br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
    );
    let v: Value = serde_json::from_slice(&err.body(plan.dialect)).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[test]
fn the_responses_pass_through_survives_garbage_and_upstream_failures() {
    let failed_upstream = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[]}}\n\n\
event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":1,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed.\"}}}\n\n";
    let mut s = PassthroughStream::new(openai::ResponsesPassthrough::default());
    let mut out = s.push(failed_upstream.as_bytes());
    out.extend(s.finish());
    assert!(s.failed() && !s.complete());
    assert_eq!(
        out,
        failed_upstream.as_bytes(),
        "the upstream's own failure is forwarded"
    );
    let mut s = PassthroughStream::new(openai::ResponsesPassthrough::default());
    let mut out = s.push(b"event: response.created\ndata: {not json\n\n");
    out.extend(s.finish());
    assert!(s.failed());
    let last = common::sse_frames(&out).pop().unwrap();
    assert_eq!(
        last.0.as_deref(),
        Some("error"),
        "no response yet: an `error` event"
    );
}
