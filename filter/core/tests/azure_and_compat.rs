//! Azure OpenAI through the gateway (fast path for OpenAI clients, translation for the
//! others), and OpenAI-compatible servers' quirks as configuration (`compat`).

mod common;

use common::{accumulate_anthropic, accumulate_openai, fixture, header};
use serde_json::{json, Value};
use switchyard_core::keys::hash_key;
use switchyard_core::routing::NoHealth;
use switchyard_core::{Gateway, HeadOutcome, Plan, RequestHead};

fn gateway() -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "azure": {"kind": "azure", "base_url": "https://contoso.openai.azure.com",
                      "api_key_secret": "AZURE_KEY", "api_version": "2025-01-01-preview"},
            "deepseek": {"kind": "openai", "base_url": "https://api.deepseek.com",
                         "api_key_secret": "DEEPSEEK_KEY",
                         "compat": {"max_tokens_field": "max_tokens", "drop_params": ["seed", "logprobs"]}},
            "ollama": {"kind": "openai", "base_url": "http://127.0.0.1:11434",
                       "compat": {"stream_usage": false}}
        },
        "models": [
            {"name": "gpt", "deployments": [{"provider": "azure", "model": "gpt-4o-prod"}]},
            {"name": "deepseek", "deployments": [{"provider": "deepseek", "model": "deepseek-chat"}]},
            {"name": "llama", "deployments": [{"provider": "ollama", "model": "llama3.2"}]}
        ]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|name| Some(format!("secret-for-{name}")))
}

fn plan(gw: &Gateway, path: &str, body: Value) -> Plan {
    let head = RequestHead {
        method: "POST",
        path,
        authorization: Some("Bearer sk-gw-test"),
        anthropic_version: path.ends_with("messages").then_some("2023-06-01"),
        ..Default::default()
    };
    let HeadOutcome::ReadBody(admitted) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("rejected")
    };
    gw.plan(
        &admitted,
        &serde_json::to_vec(&body).unwrap(),
        3,
        1_700_000_000,
        &NoHealth,
    )
    .unwrap()
}

fn run(plan: &Plan, upstream: &[u8]) -> (Vec<u8>, switchyard_core::canonical::TokenUsage) {
    let mut s = plan.response_stream(0);
    let mut out = Vec::new();
    for c in upstream.chunks(13) {
        out.extend(s.push(c));
    }
    out.extend(s.finish());
    (out, s.usage())
}

#[test]
fn an_openai_client_reaches_azure_on_the_fast_path() {
    let gw = gateway();
    let body = json!({"model": "gpt", "stream": true, "logprobs": false,
                      "messages": [{"role": "user", "content": "hi"}]});
    let plan = plan(&gw, "/v1/chat/completions", body);
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.authority, "contoso.openai.azure.com");
    assert_eq!(
        up.path,
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2025-01-01-preview"
    );
    assert_eq!(header(&up.headers, "api-key"), Some("secret-for-AZURE_KEY"));
    assert!(header(&up.headers, "authorization").is_none());
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["model"], "gpt-4o-prod");
    assert_eq!(
        sent["logprobs"], false,
        "fields the canonical form does not model survive"
    );
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let upstream = fixture("azure/stream_tools.sse");
    let (out, usage) = run(&plan, &upstream);
    // Azure's chunks pass through as sent, but for the forced usage chunk and Azure's
    // prompt-filter chunk (no choices, empty `object`), which OpenAI never sends.
    let f = accumulate_openai(&out);
    assert_eq!(f.text, "Checking Seattle.");
    assert_eq!(f.tool_calls[0].1, "get_weather");
    assert_eq!((f.input_tokens, f.output_tokens), (0, 0));
    assert_eq!(
        (usage.input, usage.cached_input, usage.output),
        (95, 64, 21)
    );
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains("prompt_filter_results"));
    assert!(
        out.contains("content_filter_results"),
        "other chunks untouched"
    );
    let frames = common::sse_frames(out.as_bytes());
    assert_eq!(frames.last().unwrap().1, "[DONE]");
    for (_, chunk) in &frames[..frames.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
    }
}

#[test]
fn an_anthropic_client_reaches_azure_translated() {
    let gw = gateway();
    let body = json!({"model": "gpt", "max_tokens": 50, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let plan = plan(&gw, "/v1/messages", body);
    let up = plan.upstream_request(0).unwrap();
    assert!(up
        .path
        .starts_with("/openai/deployments/gpt-4o-prod/chat/completions?"));
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["max_tokens"], 50);
    let (out, _) = run(&plan, &fixture("azure/stream_tools.sse"));
    let f = accumulate_anthropic(&out);
    assert_eq!(f.tool_calls[0].0, "call_YzCrmHrQ8q2VJ6F8b0Lc3uNo");
    assert_eq!(f.finish.as_deref(), Some("tool_use"));
    let err = plan.translate_error(0, 400, &fixture("azure/error_content_filter.json"));
    let v: Value = serde_json::from_slice(&err.body(plan.dialect)).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("content management policy"));
}

#[test]
fn compat_quirks_apply_on_both_paths() {
    let gw = gateway();
    // Fast path (OpenAI client): the limit renamed, rejected fields dropped.
    let body = json!({"model": "deepseek", "max_completion_tokens": 99, "seed": 7,
                      "logprobs": true, "temperature": 0.2,
                      "messages": [{"role": "user", "content": "hi"}]});
    let sent: Value = serde_json::from_slice(
        &plan(&gw, "/v1/chat/completions", body)
            .upstream_request(0)
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(sent["max_tokens"], 99);
    assert!(sent.get("max_completion_tokens").is_none());
    assert!(sent.get("seed").is_none() && sent.get("logprobs").is_none());
    assert_eq!(sent["temperature"], 0.2);
    // Translated (Anthropic client): the same.
    let body = json!({"model": "deepseek", "max_tokens": 42,
                      "messages": [{"role": "user", "content": "hi"}]});
    let sent: Value = serde_json::from_slice(
        &plan(&gw, "/v1/messages", body)
            .upstream_request(0)
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(sent["max_tokens"], 42);
    // A server that rejects `stream_options` never gets it, on either path.
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let body = json!({"model": "llama", "stream": true, "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hi"}]});
        let plan = plan(&gw, path, body);
        let up = plan.upstream_request(0).unwrap();
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert!(sent.get("stream_options").is_none(), "{path}: {sent}");
        assert!(
            header(&up.headers, "authorization").is_none(),
            "no key configured"
        );
    }
    // Quirks only for providers that speak OpenAI's format.
    let bad = json!({"providers": {"c": {"kind": "anthropic", "compat": {"stream_usage": false}}},
                     "models": [{"name": "m", "deployments": [{"provider": "c", "model": "x"}]}]});
    let err = Gateway::from_json(&serde_json::to_vec(&bad).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`compat` is for"), "{err}");
    let bad = json!({"providers": {"c": {"kind": "azure"}},
                     "models": [{"name": "m", "deployments": [{"provider": "c", "model": "x"}]}]});
    let err = Gateway::from_json(&serde_json::to_vec(&bad).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("openai.azure.com"), "{err}");
}
