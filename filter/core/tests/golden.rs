//! Golden-fixture tests, per provider and per direction:
//! canonical → native request; native response → canonical → OpenAI and Anthropic bodies;
//! native stream → OpenAI and Anthropic client streams; native errors → gateway errors.

mod common;

use common::{fixture, golden, golden_json, pretty, translate_chunks};
use serde_json::Value;
use switchyard_core::canonical::ChatRequest;
use switchyard_core::providers::{anthropic, bedrock, dashscope, gemini, ProviderKind};
use switchyard_core::{ingress, Dialect, ErrorKind};

fn canonical(name: &str) -> ChatRequest {
    serde_json::from_slice(&fixture(name)).expect("canonical request fixture")
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("request body is JSON")
}

// ---- requests ---------------------------------------------------------------------------

#[test]
fn anthropic_request_golden() {
    let req = canonical("openai/request_full.json");
    let egress = ProviderKind::Anthropic
        .build_chat(&req, "claude-sonnet-4-20250514")
        .unwrap();
    assert_eq!(egress.path, "/v1/messages");
    assert!(egress
        .headers
        .contains(&("anthropic-version".into(), "2023-06-01".into())));
    golden_json(
        "anthropic/request_full.expected.json",
        &body_json(&egress.body),
    );
    let egress = ProviderKind::Anthropic
        .build_chat(
            &canonical("openai/request_text_tools.json"),
            "claude-3-5-haiku-latest",
        )
        .unwrap();
    golden_json(
        "anthropic/request_text_tools.expected.json",
        &body_json(&egress.body),
    );
}

#[test]
fn gemini_request_golden() {
    let req = canonical("openai/request_full.json");
    let egress = ProviderKind::Gemini
        .build_chat(&req, "gemini-2.5-flash")
        .unwrap();
    assert_eq!(
        egress.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    golden_json(
        "gemini/request_full.expected.json",
        &body_json(&egress.body),
    );
    let mut req = canonical("openai/request_text_tools.json");
    req.stream = false;
    let egress = ProviderKind::Gemini
        .build_chat(&req, "models/gemini-2.0-flash")
        .unwrap();
    assert_eq!(
        egress.path,
        "/v1beta/models/gemini-2.0-flash:generateContent"
    );
    golden_json(
        "gemini/request_text_tools.expected.json",
        &body_json(&egress.body),
    );
}

#[test]
fn dashscope_request_golden() {
    let req = canonical("openai/request_text_tools.json");
    let egress = ProviderKind::Dashscope
        .build_chat(&req, "qwen-plus")
        .unwrap();
    assert_eq!(
        egress.path,
        "/api/v1/services/aigc/text-generation/generation"
    );
    assert!(egress
        .headers
        .contains(&("x-dashscope-sse".into(), "enable".into())));
    golden_json(
        "dashscope/request_text_tools.expected.json",
        &body_json(&egress.body),
    );
    // Images are refused, not silently dropped.
    let err = ProviderKind::Dashscope
        .build_chat(&canonical("openai/request_full.json"), "qwen-plus")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[test]
fn auth_headers_per_provider() {
    assert_eq!(
        ProviderKind::Anthropic.auth_headers("k"),
        vec![("x-api-key".to_string(), "k".to_string())]
    );
    assert_eq!(
        ProviderKind::Gemini.auth_headers("k"),
        vec![("x-goog-api-key".to_string(), "k".to_string())]
    );
    assert_eq!(
        ProviderKind::Dashscope.auth_headers("k"),
        vec![("authorization".to_string(), "Bearer k".to_string())]
    );
    let kinds: Vec<ProviderKind> =
        serde_json::from_str(r#"["anthropic","gemini","dashscope","openai"]"#).unwrap();
    assert_eq!(kinds[2], ProviderKind::Dashscope);
    assert_eq!(
        ProviderKind::Gemini.default_base_url(),
        Some("https://generativelanguage.googleapis.com")
    );
}

#[test]
fn anthropic_ingress_request_golden() {
    let req = ingress::decode_chat(
        Dialect::Anthropic,
        &fixture("ingress/anthropic_request.json"),
    )
    .unwrap();
    golden(
        "ingress/anthropic_request.expected.json",
        &pretty(&serde_json::to_vec(&req).unwrap()),
    );
}

// ---- responses --------------------------------------------------------------------------

fn response_goldens(kind: ProviderKind, dir: &str, name: &str) {
    let mut resp = kind
        .parse_chat(&fixture(&format!("{dir}/{name}.json")))
        .unwrap();
    // What the gateway fills in when the upstream leaves it out.
    if resp.id.is_empty() {
        resp.id = "gw-id".into();
    }
    if resp.model.is_empty() {
        resp.model = "public-model".into();
    }
    resp.created = 1_700_000_000;
    golden(
        &format!("{dir}/{name}.openai.expected.json"),
        &pretty(&ingress::encode_chat_response(
            Dialect::OpenAi,
            &resp,
            b"{}",
        )),
    );
    golden(
        &format!("{dir}/{name}.anthropic.expected.json"),
        &pretty(&ingress::encode_chat_response(
            Dialect::Anthropic,
            &resp,
            b"{}",
        )),
    );
    golden(
        &format!("{dir}/{name}.gemini.expected.json"),
        &pretty(&ingress::encode_chat_response(
            Dialect::Gemini,
            &resp,
            b"{}",
        )),
    );
    golden(
        &format!("{dir}/{name}.responses.expected.json"),
        &pretty(&ingress::encode_chat_response(
            Dialect::Responses,
            &resp,
            common::RESPONSES_REQUEST,
        )),
    );
}

#[test]
fn anthropic_response_goldens() {
    response_goldens(ProviderKind::Anthropic, "anthropic", "response_text");
    response_goldens(ProviderKind::Anthropic, "anthropic", "response_tools");
    response_goldens(ProviderKind::Anthropic, "anthropic", "response_thinking");
    response_goldens(ProviderKind::Gemini, "gemini", "response_thoughts");
    response_goldens(ProviderKind::Openai, "openai", "response_reasoning_content");
    let resp = anthropic::parse_chat(&fixture("anthropic/response_tools.json")).unwrap();
    // input_tokens excludes cache reads and writes; canonical input includes them.
    assert_eq!(resp.usage.input, 472 + 100 + 2048);
    assert_eq!(resp.usage.cached_input, 2048);
    assert_eq!(resp.tool_calls.len(), 2);
}

#[test]
fn gemini_response_goldens() {
    response_goldens(ProviderKind::Gemini, "gemini", "response_text");
    response_goldens(ProviderKind::Gemini, "gemini", "response_tools");
    response_goldens(ProviderKind::Gemini, "gemini", "response_blocked");
    let resp = gemini::parse_chat(&fixture("gemini/response_text.json")).unwrap();
    assert_eq!(resp.usage.output, 9 + 26, "thoughts count as output");
    let resp = gemini::parse_chat(&fixture("gemini/response_tools.json")).unwrap();
    let ids: Vec<&str> = resp.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["call_0", "call_1"]);
}

#[test]
fn bedrock_request_and_response_goldens() {
    let req = canonical("openai/request_text_tools.json");
    let egress = ProviderKind::Bedrock
        .build_chat(&req, "anthropic.claude-3-5-haiku-20241022-v1:0")
        .unwrap();
    assert_eq!(
        egress.path,
        "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    );
    assert!(egress
        .headers
        .contains(&("accept".into(), "application/vnd.amazon.eventstream".into())));
    golden_json(
        "bedrock/request_text_tools.expected.json",
        &body_json(&egress.body),
    );
    // An image by https URL cannot be sent: Converse takes bytes only.
    let err = ProviderKind::Bedrock
        .build_chat(&canonical("openai/request_full.json"), "m")
        .unwrap_err();
    assert_eq!((err.status, err.param.as_deref()), (400, Some("messages")));
    response_goldens(ProviderKind::Bedrock, "bedrock", "response_text");
    response_goldens(ProviderKind::Bedrock, "bedrock", "response_tools");
    let resp = bedrock::parse_chat(&fixture("bedrock/response_tools.json")).unwrap();
    // inputTokens excludes cache reads and writes; canonical input includes them.
    assert_eq!(
        (resp.usage.input, resp.usage.cached_input, resp.usage.output),
        (410 + 2048, 2048, 98)
    );
    assert_eq!(resp.tool_calls[1].id, "tooluse_Fe8zL0hKS9eWIt3oFT7sfw");
}

#[test]
fn azure_request_and_response_goldens() {
    let req = canonical("openai/request_text_tools.json");
    let egress = ProviderKind::Azure.build_chat(&req, "gpt-4o-prod").unwrap();
    assert_eq!(
        egress.path,
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    );
    let body = body_json(&egress.body);
    assert_eq!(body["model"], "gpt-4o-prod");
    assert_eq!(body["stream_options"]["include_usage"], true);
    response_goldens(ProviderKind::Azure, "azure", "response_tools");
}

#[test]
fn cohere_request_and_response_goldens() {
    let req = canonical("openai/request_text_tools.json");
    let egress = ProviderKind::Cohere
        .build_chat(&req, "command-a-03-2025")
        .unwrap();
    assert_eq!(egress.path, "/v2/chat");
    golden_json(
        "cohere/request_text_tools.expected.json",
        &body_json(&egress.body),
    );
    response_goldens(ProviderKind::Cohere, "cohere", "response_text");
    response_goldens(ProviderKind::Cohere, "cohere", "response_tools");
    let resp = ProviderKind::Cohere
        .parse_chat(&fixture("cohere/response_tools.json"))
        .unwrap();
    // Billed units are what Cohere charges; the tool plan is the turn's text.
    assert_eq!(
        (resp.usage.input, resp.usage.output, resp.usage.cached_input),
        (37, 28, 512)
    );
    assert_eq!(
        resp.text.as_deref(),
        Some("I will search the weather for Madrid and Brasilia.")
    );
}

#[test]
fn mistral_request_and_response_goldens() {
    let req = canonical("openai/request_text_tools.json");
    let egress = ProviderKind::Mistral
        .build_chat(&req, "mistral-large-latest")
        .unwrap();
    assert_eq!(egress.path, "/v1/chat/completions");
    golden_json(
        "mistral/request_text_tools.expected.json",
        &body_json(&egress.body),
    );
    response_goldens(ProviderKind::Mistral, "mistral", "response_tools");
}

#[test]
fn vertex_request_and_response_goldens() {
    let provider: switchyard_core::config::ProviderConfig = serde_json::from_value(
        serde_json::json!({"kind": "vertex", "api_key_secret": "VERTEX_TOKEN",
                           "vertex": {"project": "my-project", "location": "europe-west4"}}),
    )
    .unwrap();
    assert_eq!(
        provider.base_url().unwrap(),
        "https://europe-west4-aiplatform.googleapis.com"
    );
    let req = canonical("openai/request_text_tools.json");
    let egress = provider.build_chat(&req, "gemini-2.5-flash").unwrap();
    assert_eq!(
        egress.path,
        "/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    // The body is the Gemini API's.
    assert_eq!(body_json(&egress.body), gemini::request_body(&req).unwrap());
    assert_eq!(
        ProviderKind::Vertex.auth_headers("ya29.token"),
        vec![("authorization".to_string(), "Bearer ya29.token".to_string())]
    );
    response_goldens(ProviderKind::Vertex, "vertex", "response_text");
}

#[test]
fn dashscope_response_goldens() {
    response_goldens(ProviderKind::Dashscope, "dashscope", "response_text");
    response_goldens(ProviderKind::Dashscope, "dashscope", "response_tools");
    let resp = dashscope::parse_chat(&fixture("dashscope/response_text.json")).unwrap();
    assert_eq!(resp.usage.cached_input, 16);
}

// ---- streams ----------------------------------------------------------------------------

/// The file a provider's upstream stream fixture is in: SSE, or AWS's binary event stream.
fn stream_fixture(kind: ProviderKind, dir: &str, name: &str) -> Vec<u8> {
    match kind {
        ProviderKind::Bedrock => fixture(&format!("{dir}/{name}.eventstream")),
        _ => fixture(&format!("{dir}/{name}.sse")),
    }
}

fn stream_goldens(kind: ProviderKind, dir: &str, name: &str) {
    let upstream = stream_fixture(kind, dir, name);
    let (openai, _, failed) = translate_chunks(kind, Dialect::OpenAi, true, &[&upstream]);
    assert!(
        !failed,
        "{dir}/{name} → OpenAI failed:\n{}",
        String::from_utf8_lossy(&openai)
    );
    golden(&format!("{dir}/{name}.openai.expected.sse"), &openai);
    let (anthropic, _, failed) = translate_chunks(kind, Dialect::Anthropic, false, &[&upstream]);
    assert!(!failed, "{dir}/{name} → Anthropic failed");
    golden(&format!("{dir}/{name}.anthropic.expected.sse"), &anthropic);
    let (responses, _, failed) = translate_chunks(kind, Dialect::Responses, false, &[&upstream]);
    assert!(!failed, "{dir}/{name} → Responses failed");
    golden(&format!("{dir}/{name}.responses.expected.sse"), &responses);
    let (gemini, _, failed) = translate_chunks(kind, Dialect::Gemini, false, &[&upstream]);
    assert!(!failed, "{dir}/{name} → Gemini failed");
    golden(&format!("{dir}/{name}.gemini.expected.sse"), &gemini);
}

#[test]
fn stream_goldens_all_providers() {
    stream_goldens(ProviderKind::Anthropic, "anthropic", "stream_text");
    stream_goldens(ProviderKind::Anthropic, "anthropic", "stream_tools");
    stream_goldens(ProviderKind::Gemini, "gemini", "stream_text");
    stream_goldens(ProviderKind::Gemini, "gemini", "stream_tools");
    stream_goldens(ProviderKind::Dashscope, "dashscope", "stream_text");
    stream_goldens(ProviderKind::Dashscope, "dashscope", "stream_tools");
    stream_goldens(ProviderKind::Openai, "openai", "stream_tools");
    stream_goldens(ProviderKind::Bedrock, "bedrock", "stream_text");
    stream_goldens(ProviderKind::Bedrock, "bedrock", "stream_tools");
    stream_goldens(ProviderKind::Azure, "azure", "stream_tools");
    stream_goldens(ProviderKind::Cohere, "cohere", "stream_text");
    stream_goldens(ProviderKind::Cohere, "cohere", "stream_tools");
    stream_goldens(ProviderKind::Mistral, "mistral", "stream_tools");
    stream_goldens(ProviderKind::Vertex, "vertex", "stream_tools");
    // Reasoning (#19): Anthropic thinking with its signature, Gemini thought summaries and
    // signatures, DeepSeek-style `reasoning_content`.
    stream_goldens(ProviderKind::Anthropic, "anthropic", "stream_thinking");
    stream_goldens(ProviderKind::Gemini, "gemini", "stream_thoughts");
    stream_goldens(ProviderKind::Openai, "openai", "stream_reasoning_content");
}

#[test]
fn upstream_error_event_becomes_client_error_event() {
    let upstream = fixture("anthropic/stream_error.sse");
    let (out, _, failed) = translate_chunks(
        ProviderKind::Anthropic,
        Dialect::Anthropic,
        false,
        &[&upstream],
    );
    assert!(failed);
    golden("anthropic/stream_error.anthropic.expected.sse", &out);
    let f = common::accumulate_anthropic(&out);
    assert_eq!(f.error.unwrap()["type"], "overloaded_error");
    let (out, _, failed) = translate_chunks(
        ProviderKind::Anthropic,
        Dialect::OpenAi,
        false,
        &[&upstream],
    );
    assert!(failed);
    golden("anthropic/stream_error.openai.expected.sse", &out);
    let (out, _, failed) = translate_chunks(
        ProviderKind::Anthropic,
        Dialect::Responses,
        false,
        &[&upstream],
    );
    assert!(failed);
    golden("anthropic/stream_error.responses.expected.sse", &out);
    let (gemini, _, failed) = translate_chunks(
        ProviderKind::Anthropic,
        Dialect::Gemini,
        false,
        &[&upstream],
    );
    assert!(failed);
    golden("anthropic/stream_error.gemini.expected.sse", &gemini);
    assert_eq!(
        common::accumulate_gemini(&gemini).error.unwrap()["status"],
        "UNAVAILABLE"
    );
    let f = common::accumulate_responses(&out);
    assert_eq!(f.error.unwrap()["message"], "Overloaded");
}

// ---- errors -----------------------------------------------------------------------------

#[test]
fn provider_errors_keep_status_and_meaning() {
    let cases: &[(ProviderKind, &str, u16, ErrorKind, u16, &str)] = &[
        (
            ProviderKind::Anthropic,
            "anthropic/error_overloaded.json",
            529,
            ErrorKind::Unavailable,
            529,
            "Overloaded",
        ),
        (
            ProviderKind::Anthropic,
            "anthropic/error_auth.json",
            401,
            ErrorKind::Authentication,
            401,
            "invalid x-api-key",
        ),
        (
            ProviderKind::Anthropic,
            "anthropic/error_rate_limit.json",
            429,
            ErrorKind::RateLimited,
            429,
            "rate limit",
        ),
        (
            ProviderKind::Gemini,
            "gemini/error_bad_key.json",
            400,
            ErrorKind::Authentication,
            401,
            "API key not valid",
        ),
        (
            ProviderKind::Gemini,
            "gemini/error_quota.json",
            429,
            ErrorKind::RateLimited,
            429,
            "exhausted",
        ),
        (
            ProviderKind::Dashscope,
            "dashscope/error_bad_key.json",
            401,
            ErrorKind::Authentication,
            401,
            "Invalid API-key",
        ),
        (
            ProviderKind::Dashscope,
            "dashscope/error_throttled.json",
            429,
            ErrorKind::RateLimited,
            429,
            "rate limit",
        ),
        (
            ProviderKind::Bedrock,
            "bedrock/error_throttling.json",
            429,
            ErrorKind::RateLimited,
            429,
            "Too many requests",
        ),
        (
            ProviderKind::Bedrock,
            "bedrock/error_validation.json",
            400,
            ErrorKind::InvalidRequest,
            400,
            "alternate between user and assistant",
        ),
        (
            ProviderKind::Azure,
            "azure/error_rate_limit.json",
            429,
            ErrorKind::RateLimited,
            429,
            "exceeded token rate limit",
        ),
        (
            ProviderKind::Azure,
            "azure/error_content_filter.json",
            400,
            ErrorKind::InvalidRequest,
            400,
            "content management policy",
        ),
        (
            ProviderKind::Azure,
            "azure/error_deployment.json",
            404,
            ErrorKind::NotFound,
            404,
            "deployment for this resource does not exist",
        ),
        (
            ProviderKind::Cohere,
            "cohere/error_auth.json",
            401,
            ErrorKind::Authentication,
            401,
            "invalid api token",
        ),
        (
            ProviderKind::Cohere,
            "cohere/error_rate_limit.json",
            429,
            ErrorKind::RateLimited,
            429,
            "limited to 10 API calls",
        ),
        (
            ProviderKind::Mistral,
            "mistral/error_validation.json",
            422,
            ErrorKind::Unprocessable,
            422,
            "Extra inputs are not permitted",
        ),
        (
            ProviderKind::Mistral,
            "mistral/error_rate_limit.json",
            429,
            ErrorKind::RateLimited,
            429,
            "rate limit exceeded",
        ),
        (
            ProviderKind::Vertex,
            "vertex/error_auth.json",
            401,
            ErrorKind::Authentication,
            401,
            "invalid authentication credentials",
        ),
        (
            ProviderKind::Vertex,
            "vertex/error_quota.json",
            429,
            ErrorKind::RateLimited,
            429,
            "Resource exhausted",
        ),
        // The model failed while answering: the upstream's failure, and retryable.
        (
            ProviderKind::Bedrock,
            "bedrock/error_model.json",
            424,
            ErrorKind::BadGateway,
            502,
            "unexpected error",
        ),
    ];
    for (kind, file, status, want_kind, want_status, text) in cases {
        let err = kind.parse_error(*status, &fixture(file));
        assert_eq!(err.kind, *want_kind, "{file}");
        assert_eq!(err.status, *want_status, "{file}");
        assert!(err.message.contains(text), "{file}: {}", err.message);
        // Rendered in both dialects.
        let a: Value = serde_json::from_slice(&err.body(Dialect::Anthropic)).unwrap();
        assert_eq!(a["type"], "error");
        let o: Value = serde_json::from_slice(&err.body(Dialect::OpenAi)).unwrap();
        assert!(o["error"]["message"].is_string());
    }
    for kind in ProviderKind::ALL {
        for (status, want) in [
            (400, ErrorKind::InvalidRequest),
            (401, ErrorKind::Authentication),
            (403, ErrorKind::PermissionDenied),
            (404, ErrorKind::NotFound),
            (408, ErrorKind::Timeout),
            (413, ErrorKind::RequestTooLarge),
            (429, ErrorKind::RateLimited),
            (500, ErrorKind::BadGateway),
            (502, ErrorKind::BadGateway),
            (503, ErrorKind::Unavailable),
            (504, ErrorKind::Timeout),
        ] {
            let err = kind.parse_error(status, b"<html>upstream down</html>");
            assert_eq!((err.kind, err.status), (want, status), "{kind:?} {status}");
            assert_eq!(err.is_retryable(), matches!(status, 408 | 429 | 500..=599));
        }
    }
}

#[test]
fn secrets_in_upstream_errors_are_not_echoed() {
    let body = br#"{"error":{"code":400,"message":"API key AIzaSyA1234567890abcdefghijklmnop is invalid","status":"INVALID_ARGUMENT"}}"#;
    let err = ProviderKind::Gemini.parse_error(400, body);
    assert!(!err.message.contains("AIzaSy"), "{}", err.message);
    let body = br#"{"type":"error","error":{"type":"authentication_error","message":"bad key sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123"}}"#;
    let err = ProviderKind::Anthropic.parse_error(401, body);
    assert!(!err.message.contains("abcdefghijklmnop"), "{}", err.message);
}

#[test]
fn malformed_upstream_json_is_a_bad_gateway() {
    for kind in ProviderKind::ALL {
        for body in [&b"{not json"[..], b"", b"[1,2]", b"{\"content\": 7}"] {
            let err = kind.parse_chat(body);
            if let Err(err) = err {
                assert_eq!(
                    (err.kind, err.status),
                    (ErrorKind::BadGateway, 502),
                    "{kind:?}"
                );
                let a: Value = serde_json::from_slice(&err.body(Dialect::Anthropic)).unwrap();
                assert_eq!(a["error"]["type"], "api_error");
            } else {
                // Shapes that parse (`{}`-like) must at least yield an empty answer.
                assert!(body.starts_with(b"{"), "{kind:?} accepted {body:?}");
            }
        }
    }
}

#[test]
fn untranslatable_requests_are_400s_not_panics() {
    let with = |messages: Value| -> ChatRequest {
        serde_json::from_value(serde_json::json!({"model": "m", "messages": messages})).unwrap()
    };
    // Arguments that are not a JSON object cannot become Anthropic `input` / Gemini `args`.
    let bad_args = with(serde_json::json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1,2"}}]}
    ]));
    for kind in [
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Bedrock,
    ] {
        let err = kind.build_chat(&bad_args, "m").unwrap_err();
        assert_eq!(
            (err.status, err.param.as_deref()),
            (400, Some("messages")),
            "{kind:?}"
        );
    }
    // A tool result answering no call: Gemini needs the function name, Anthropic the id.
    let orphan = with(serde_json::json!([
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "nope", "content": "42"}
    ]));
    assert_eq!(
        ProviderKind::Gemini
            .build_chat(&orphan, "m")
            .unwrap_err()
            .status,
        400
    );
    let no_id = with(serde_json::json!([{"role": "tool", "content": "42"}]));
    assert_eq!(
        ProviderKind::Anthropic
            .build_chat(&no_id, "m")
            .unwrap_err()
            .status,
        400
    );
    // Empty arguments are an empty object, not an error.
    let empty_args = with(serde_json::json!([
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    ]));
    for kind in [
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Dashscope,
    ] {
        assert!(kind.build_chat(&empty_args, "m").is_ok(), "{kind:?}");
    }
    // Converse refuses tool blocks without declared tools; the gateway says so first.
    let err = ProviderKind::Bedrock
        .build_chat(&empty_args, "m")
        .unwrap_err();
    assert_eq!((err.status, err.param.as_deref()), (400, Some("tools")));
    // `max_tokens` is required by Anthropic: a default is filled in.
    let body = anthropic::request_body(
        &with(serde_json::json!([{"role": "user", "content": "hi"}])),
        "m",
    )
    .unwrap();
    assert_eq!(body["max_tokens"], anthropic::DEFAULT_MAX_TOKENS);
}
