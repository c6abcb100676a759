//! The new providers and the Anthropic dialect through the gateway facade, phase by phase,
//! as a host drives them: head → plan → upstream request → answer / stream / error.

mod common;

use common::{accumulate_anthropic, accumulate_openai, fixture, header};
use serde_json::{json, Value};
use switchyard_core::keys::hash_key;
use switchyard_core::routing::NoHealth;
use switchyard_core::{Admitted, ErrorKind, Gateway, GatewayError, HeadOutcome, Plan, RequestHead};

fn gateway() -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "claude": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"},
            "google": {"kind": "gemini", "api_key_secret": "GEMINI_KEY"},
            "qwen": {"kind": "dashscope", "base_url": "https://dashscope-intl.aliyuncs.com", "api_key_secret": "DASHSCOPE_KEY"}
        },
        "models": [
            {"name": "claude", "deployments": [{"provider": "claude", "model": "claude-sonnet-4-20250514"}]},
            {"name": "gemini", "deployments": [{"provider": "google", "model": "gemini-2.5-flash"}]},
            {"name": "qwen", "deployments": [{"provider": "qwen", "model": "qwen-plus"}]}
        ]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&secret)
}

fn admit(gw: &Gateway, path: &str) -> Admitted {
    let head = RequestHead {
        method: "POST",
        path,
        x_api_key: Some("sk-gw-test"),
        anthropic_version: Some("2023-06-01"),
        ..Default::default()
    };
    match gw.on_request_head(&head, 1_700_000_000) {
        HeadOutcome::ReadBody(a) => a,
        HeadOutcome::Reply(r) => panic!("rejected: {}", String::from_utf8_lossy(&r.body)),
    }
}

fn plan(gw: &Gateway, path: &str, body: Value) -> Plan {
    gw.plan(
        &admit(gw, path),
        &serde_json::to_vec(&body).unwrap(),
        7,
        1_700_000_000,
        &NoHealth,
    )
    .unwrap()
}

fn secret(name: &str) -> Option<String> {
    Some(format!("secret-for-{name}"))
}

#[test]
fn anthropic_client_to_gemini_stream() {
    let gw = gateway();
    let plan = plan(
        &gw,
        "/v1/messages",
        json!({"model": "gemini", "max_tokens": 100, "stream": true,
               "messages": [{"role": "user", "content": "weather?"}]}),
    );
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.authority, "generativelanguage.googleapis.com");
    assert_eq!(
        up.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        header(&up.headers, "x-goog-api-key"),
        Some("secret-for-GEMINI_KEY")
    );
    assert!(header(&up.headers, "authorization").is_none());
    let mut stream = plan.response_stream(0);
    let upstream = fixture("gemini/stream_tools.sse");
    let mut out = Vec::new();
    for chunk in upstream.chunks(17) {
        out.extend(stream.push(chunk));
    }
    out.extend(stream.finish());
    let f = accumulate_anthropic(&out);
    assert_eq!(f.tool_calls.len(), 2);
    assert_eq!(f.finish.as_deref(), Some("tool_use"));
    let usage = stream.usage();
    assert_eq!(
        (usage.input, usage.output, usage.cached_input),
        (60, 35, 32)
    );
    let record = plan.usage_record(0, usage, 200, 1, None);
    assert_eq!(record.provider, "google");
}

#[test]
fn anthropic_client_to_anthropic_provider() {
    let gw = gateway();
    let plan = plan(
        &gw,
        "/v1/messages",
        json!({"model": "claude", "max_tokens": 100,
               "system": "be brief",
               "messages": [{"role": "user", "content": "hi"}]}),
    );
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(
        header(&up.headers, "x-api-key"),
        Some("secret-for-ANTHROPIC_KEY")
    );
    assert_eq!(header(&up.headers, "anthropic-version"), Some("2023-06-01"));
    let body: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(body["model"], "claude-sonnet-4-20250514");
    assert_eq!(body["system"], "be brief");
    assert_eq!(body["max_tokens"], 100);
    let (client, usage) = plan
        .translate_response(0, &fixture("anthropic/response_tools.json"))
        .unwrap();
    let msg: Value = serde_json::from_slice(&client).unwrap();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["stop_reason"], "tool_use");
    assert_eq!(msg["content"][1]["input"]["location"], "San Francisco, CA");
    assert_eq!(usage.cached_input, 2048);
    // Overloaded (529) is retryable and reaches the client in its own dialect.
    let err = plan.translate_error(0, 529, &fixture("anthropic/error_overloaded.json"));
    assert!(err.is_retryable());
    let body: Value =
        serde_json::from_slice(&err.body(switchyard_core::Dialect::Anthropic)).unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
    // Garbage from the upstream is a clean 502.
    let err = plan.translate_response(0, b"<html>").unwrap_err();
    assert_eq!(err.status, 502);
}

#[test]
fn openai_client_to_dashscope_stream() {
    let gw = gateway();
    let head = RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    let HeadOutcome::ReadBody(admitted) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("rejected")
    };
    let body = json!({"model": "qwen", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let plan = gw
        .plan(
            &admitted,
            &serde_json::to_vec(&body).unwrap(),
            1,
            1_700_000_000,
            &NoHealth,
        )
        .unwrap();
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.authority, "dashscope-intl.aliyuncs.com");
    assert_eq!(up.path, "/api/v1/services/aigc/text-generation/generation");
    assert_eq!(header(&up.headers, "x-dashscope-sse"), Some("enable"));
    assert_eq!(
        header(&up.headers, "authorization"),
        Some("Bearer secret-for-DASHSCOPE_KEY")
    );
    let mut stream = plan.response_stream(0);
    let mut out = stream.push(&fixture("dashscope/stream_tools.sse"));
    out.extend(stream.finish());
    let f = accumulate_openai(&out);
    assert_eq!(f.tool_calls.len(), 2);
    assert_eq!((f.input_tokens, f.output_tokens), (220, 28));
}

#[test]
fn invalid_anthropic_requests_are_answered_in_anthropic_dialect() {
    let gw = gateway();
    let admitted = admit(&gw, "/v1/messages");
    for body in [
        &b"{not json"[..],
        br#"{"model":"claude","max_tokens":5,"messages":"nope"}"#,
        br#"{"model":"claude","max_tokens":5,"messages":[]}"#,
        br#"{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#,
    ] {
        let err = gw.plan(&admitted, body, 1, 0, &NoHealth).unwrap_err();
        assert_eq!(err.status, 400, "{}", err.message);
        let v: Value = serde_json::from_slice(&err.body(admitted.dialect)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}

#[test]
fn anthropic_to_anthropic_takes_the_fast_path() {
    let gw = gateway();
    let raw = json!({"model": "claude", "max_tokens": 64, "stream": true, "top_k": 5,
                     "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]});
    let plan = plan(&gw, "/v1/messages", raw);
    let up = plan.upstream_request(0).unwrap();
    let body: Value = serde_json::from_slice(&up.body).unwrap();
    // Only `model` changes: fields the canonical form does not model survive.
    assert_eq!(body["model"], "claude-sonnet-4-20250514");
    assert_eq!(body["top_k"], 5);
    assert_eq!(
        body["messages"][0]["content"][0]["cache_control"]["type"],
        "ephemeral"
    );
    assert!(body.get("stream_options").is_none());

    let upstream = fixture("anthropic/stream_tools.sse");
    let run = |chunks: &[&[u8]]| {
        let mut s = plan.response_stream(0);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        (out, s.usage(), s.failed())
    };
    let (whole, usage, failed) = run(&[&upstream]);
    assert!(!failed);
    let f = accumulate_anthropic(&whole);
    assert_eq!(f.tool_calls.len(), 2);
    assert_eq!((usage.input, usage.output), (472, 89));
    for i in 0..=upstream.len() {
        assert!(
            run(&[&upstream[..i], &upstream[i..]]) == (whole.clone(), usage, false),
            "split at {i}"
        );
    }
    // Cut before message_stop: a well-formed error ends it.
    let cut = upstream.len() - 40;
    let (out, _, failed) = run(&[&upstream[..cut]]);
    assert!(failed);
    assert!(accumulate_anthropic(&out).error.is_some());
    // An upstream error event passes through and ends the stream.
    let (out, _, failed) = run(&[&fixture("anthropic/stream_error.sse")]);
    assert!(failed);
    assert_eq!(
        accumulate_anthropic(&out).error.unwrap()["type"],
        "overloaded_error"
    );
    // Non-streamed answers pass through byte for byte, usage metered.
    let answer = fixture("anthropic/response_tools.json");
    let (client, usage) = plan.translate_response(0, &answer).unwrap();
    assert_eq!(client, answer);
    assert_eq!((usage.input, usage.cached_input), (472 + 100 + 2048, 2048));
}

/// A client may hang up once it has the terminal event (SDKs stop reading at `[DONE]`); the
/// host then never sees the end of the upstream body, and the stream's `complete` is what
/// keeps that request a success.
#[test]
fn a_stream_is_complete_once_the_client_has_its_terminal_event() {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "oa": {"kind": "openai", "api_key_secret": "OPENAI_KEY"},
            "claude": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"}
        },
        "models": [
            {"name": "gpt", "deployments": [{"provider": "oa", "model": "gpt-4o-mini"}]},
            {"name": "claude", "deployments": [{"provider": "claude", "model": "claude-sonnet-4-20250514"}]}
        ]
    });
    let gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&secret);
    let chat = |model: &str| {
        json!({"model": model, "stream": true, "max_tokens": 64,
                                    "messages": [{"role": "user", "content": "hi"}]})
    };
    let cases = [
        // OpenAI → OpenAI and Anthropic → Anthropic pass through: the terminal event reaches
        // the client as soon as it arrives, before the upstream body ends.
        (
            "/v1/chat/completions",
            "gpt",
            "openai/stream_tools.sse",
            true,
        ),
        ("/v1/messages", "claude", "anthropic/stream_tools.sse", true),
        // Translated: the client's closing frames are written only at the end of the body.
        (
            "/v1/chat/completions",
            "claude",
            "anthropic/stream_tools.sse",
            false,
        ),
    ];
    for (path, model, upstream, complete_before_end) in cases {
        let plan = plan(&gw, path, chat(model));
        let upstream = fixture(upstream);
        let mut stream = plan.response_stream(0);
        let cut = upstream.len() - 40;
        stream.push(&upstream[..cut]);
        assert!(
            !stream.complete(),
            "{path} {model}: complete before its terminal event"
        );
        stream.push(&upstream[cut..]);
        assert_eq!(stream.complete(), complete_before_end, "{path} {model}");
        stream.finish();
        assert!(
            stream.complete(),
            "{path} {model}: not complete after the end"
        );
        // A failure after the client has the terminal event (a stall or reset before the
        // upstream body ends) neither adds bytes nor fails the request.
        let mut late_failure = plan.response_stream(0);
        late_failure.push(&upstream);
        let after = late_failure.fail(&GatewayError::new(
            ErrorKind::BadGateway,
            "upstream stalled",
        ));
        assert_eq!(
            (
                after.is_empty(),
                late_failure.failed(),
                late_failure.complete()
            ),
            (
                complete_before_end,
                !complete_before_end,
                complete_before_end
            ),
            "{path} {model}"
        );
        // A stream that ends early never is.
        let mut cut_short = plan.response_stream(0);
        cut_short.push(&upstream[..cut]);
        cut_short.finish();
        assert!(
            !cut_short.complete() && cut_short.failed(),
            "{path} {model}"
        );
    }
}

/// A model's `defaults` fill in what the client left out, in the client's own dialect, and
/// never override what it sent.
#[test]
fn model_defaults_apply_only_where_the_client_is_silent() {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "local": {"kind": "openai", "base_url": "http://127.0.0.1:8100"},
            "claude": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"}
        },
        "models": [
            {"name": "tiny", "defaults": {"temperature": 0, "stop": ["\n\n"], "seed": 7},
             "deployments": [{"provider": "local", "model": "smollm2"}]},
            {"name": "claude", "defaults": {"temperature": 0.2, "stop": ["END"]},
             "deployments": [{"provider": "claude", "model": "claude-sonnet-4-20250514"}]}
        ]
    });
    let gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&secret);
    let sent = |path: &str, body: Value| -> Value {
        let up = plan(&gw, path, body).upstream_request(0).unwrap();
        serde_json::from_slice(&up.body).unwrap()
    };
    // OpenAI → OpenAI (the patching fast path): missing fields added, given ones kept.
    let body = sent(
        "/v1/chat/completions",
        json!({"model": "tiny", "temperature": 0.9, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(body["temperature"], 0.9);
    assert_eq!(body["stop"], json!(["\n\n"]));
    assert_eq!(body["seed"], 7);
    // Anthropic → Anthropic: `stop` arrives under Anthropic's own name.
    let body = sent(
        "/v1/messages",
        json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert!(body.get("stop").is_none(), "{body}");
    // OpenAI → Anthropic (translated): the default travels through the canonical form.
    let body = sent(
        "/v1/chat/completions",
        json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["stop_sequences"], json!(["END"]));
}

/// A provider whose credential the host does not have is not an internal error: its
/// deployments leave the attempt chain, `/v1/models` hides models left with none, and a
/// request for such a model gets a 503 naming the secret and where to set it.
#[test]
fn a_missing_credential_is_a_clear_503_and_hides_the_model() {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "local": {"kind": "openai", "base_url": "http://127.0.0.1:8100"},
            "oa": {"kind": "openai", "api_key_secret": "OPENAI_API_KEY"},
            "claude": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_API_KEY"}
        },
        "models": [
            {"name": "tiny", "deployments": [{"provider": "local", "model": "smollm2"}]},
            {"name": "gpt", "deployments": [{"provider": "oa", "model": "gpt-4o-mini"}]},
            {"name": "mixed", "deployments": [
                {"provider": "oa", "model": "gpt-4o-mini"},
                {"provider": "claude", "model": "claude-sonnet-4-20250514"}]}
        ]
    });
    let only_anthropic = |name: &str| (name == "ANTHROPIC_API_KEY").then(|| "sk-ant".to_string());
    let gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&only_anthropic);
    let unservable = gw.unservable_models();
    assert_eq!(unservable.len(), 1, "{unservable:?}");
    assert_eq!(unservable[0].model, "gpt");
    assert!(unservable[0].reason.contains("OPENAI_API_KEY"));

    let head = RequestHead {
        method: "GET",
        path: "/v1/models",
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    let HeadOutcome::Reply(models) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("/v1/models is answered locally");
    };
    let ids: Vec<String> = serde_json::from_slice::<Value>(&models.body).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["tiny", "mixed"]);

    let chat = |model: &str| {
        serde_json::to_vec(
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap()
    };
    let admitted = admit(&gw, "/v1/chat/completions");
    let err = gw
        .plan(&admitted, &chat("gpt"), 1, 1_700_000_000, &NoHealth)
        .unwrap_err();
    assert_eq!(
        (err.status, err.code),
        (503, Some("provider_credential_missing"))
    );
    for needle in ["OPENAI_API_KEY", "--env", "vm_config", "openai_api_key"] {
        assert!(err.message.contains(needle), "{needle} in {}", err.message);
    }
    // A model with one servable deployment keeps only that one in its chain.
    let plan = gw
        .plan(&admitted, &chat("mixed"), 1, 1_700_000_000, &NoHealth)
        .unwrap();
    let chain: Vec<&str> = plan.attempts.iter().map(|a| a.provider.as_str()).collect();
    assert_eq!(chain, ["claude"]);
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(header(&up.headers, "x-api-key"), Some("sk-ant"));
    assert!(
        !format!("{:?}", plan.attempts).contains("sk-ant"),
        "secrets are never printed"
    );
}

#[test]
fn a_credential_from_the_key_sync_makes_its_provider_servable_and_is_sent() {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "vx": {"kind": "vertex", "api_key_secret": "VERTEX_SA_TOKEN",
                   "vertex": {"project": "p", "location": "us-central1"}}
        },
        "models": [{"name": "gem", "deployments": [{"provider": "vx", "model": "gemini-2.5-flash"}]}]
    });
    let gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| None);
    assert_eq!(gw.unservable_models().len(), 1);
    let body = serde_json::to_vec(
        &json!({"model": "gem", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let admitted = admit(&gw, "/v1/chat/completions");
    let err = gw
        .plan(&admitted, &body, 1, 1_700_000_000, &NoHealth)
        .unwrap_err();
    assert_eq!(err.code, Some("provider_credential_missing"));

    let synced = |token: &str| {
        let snapshot = format!(
            r#"{{"version": 3, "keys": [], "credentials": {{"VERTEX_SA_TOKEN": "{token}"}}}}"#
        );
        gw.with_managed_keys(
            switchyard_core::control::KeySnapshot::parse(snapshot.as_bytes()).unwrap(),
        )
    };
    let with_token = synced("ya29.first");
    assert!(with_token.unservable_models().is_empty());
    // The snapshot's Debug never shows the token.
    let snapshot = switchyard_core::control::KeySnapshot::parse(
        br#"{"version": 1, "keys": [], "credentials": {"VERTEX_SA_TOKEN": "ya29.first"}}"#,
    )
    .unwrap();
    assert!(!format!("{snapshot:?}").contains("ya29"));
    let sent = |gw: &Gateway| authorization_sent(gw, &admitted, &body);
    assert_eq!(sent(&with_token).as_deref(), Some("Bearer ya29.first"));
    // A later snapshot replaces it (a refreshed token).
    assert_eq!(
        sent(&synced("ya29.second")).as_deref(),
        Some("Bearer ya29.second")
    );
    // Also when applied to the gateway that already planned with the first token (which
    // resolved its deployments with that token once, for every later request).
    let third = switchyard_core::control::KeySnapshot::parse(
        br#"{"version": 4, "keys": [], "credentials": {"VERTEX_SA_TOKEN": "ya29.third"}}"#,
    )
    .unwrap();
    assert_eq!(
        sent(&with_token.with_managed_keys(third)).as_deref(),
        Some("Bearer ya29.third")
    );
}

/// The credentials `gw`'s first attempt for `body` sends.
fn authorization_sent(gw: &Gateway, admitted: &Admitted, body: &[u8]) -> Option<String> {
    let plan = gw
        .plan(admitted, body, 1, 1_700_000_000, &NoHealth)
        .unwrap();
    let up = plan.upstream_request(0).unwrap();
    header(&up.headers, "authorization").map(str::to_string)
}

#[test]
fn secrets_resolved_again_replace_those_earlier_plans_used() {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {"oa": {"kind": "openai", "base_url": "http://oa.test",
                             "api_key_secret": "OPENAI_API_KEY"}},
        "models": [{"name": "gpt", "deployments": [{"provider": "oa", "model": "gpt-4o"}]}]
    });
    let first = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| Some("sk-first".into()));
    let body = serde_json::to_vec(
        &json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let admitted = admit(&first, "/v1/chat/completions");
    let sent = |gw: &Gateway| authorization_sent(gw, &admitted, &body);
    assert_eq!(sent(&first).as_deref(), Some("Bearer sk-first"));
    assert_eq!(sent(&first).as_deref(), Some("Bearer sk-first"));
    let second = first.clone().resolve_secrets(&|_| Some("sk-second".into()));
    assert_eq!(sent(&second).as_deref(), Some("Bearer sk-second"));
    assert_eq!(sent(&first).as_deref(), Some("Bearer sk-first"));
    // Resolved to nothing, the provider leaves the chain (the model then names the secret).
    let err = first
        .resolve_secrets(&|_| None)
        .plan(&admitted, &body, 1, 1_700_000_000, &NoHealth)
        .unwrap_err();
    assert_eq!(err.code, Some("provider_credential_missing"));
}

// ---- /v1/models ---------------------------------------------------------------------------

/// A gateway with chat, embedding, image, speech and transcription models, and models of
/// asynchronous providers (served when a task plane is configured: `tasks`).
fn listing_gateway(tasks: bool) -> Gateway {
    let mut config = json!({
        "keys": [
            {"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]},
            {"id": "k2", "sha256": hash_key("sk-gw-flux"), "models": ["flux*"]}
        ],
        "providers": {
            "oa": {"kind": "openai", "base_url": "http://oa.test"},
            "ws": {"kind": "wavespeed", "base_url": "http://ws.test", "api_key_secret": "WS"},
            "veo": {"kind": "veo", "base_url": "http://veo.test", "api_key_secret": "VEO"}
        },
        "models": [
            {"name": "chatty", "aliases": ["fast"], "deployments": [{"provider": "oa", "model": "gpt"}]},
            {"name": "embed", "mode": "embedding", "deployments": [{"provider": "oa", "model": "e"}]},
            {"name": "painter", "deployments": [
                {"provider": "oa", "model": "dall-e", "price": {"image": 0.04}}]},
            {"name": "voice", "mode": "speech", "deployments": [{"provider": "oa", "model": "tts"}]},
            {"name": "ears", "mode": "transcription", "deployments": [{"provider": "oa", "model": "w"}]},
            {"name": "flux", "deployments": [
                {"provider": "ws", "model": "wavespeed-ai/flux-dev", "price": {"image": 0.02}}]},
            {"name": "veo-3", "deployments": [{"provider": "veo", "model": "veo-3.0-generate-001"}]},
            {"name": "clip", "mode": "video", "deployments": [
                {"provider": "ws", "model": "wavespeed-ai/wan-t2v", "price": {"task": 0.2}}]}
        ]
    });
    if tasks {
        config["tasks"] = json!({"base_url": "http://tasks.test", "token_secret": "EDGE"});
    }
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| Some("s".to_string()))
}

/// The local answer to `GET path` with `key` (Anthropic's headers when `anthropic`).
fn get_models(gw: &Gateway, path: &str, key: &str, anthropic: bool) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let head = RequestHead {
        method: "GET",
        path,
        authorization: (!anthropic).then_some(auth.as_str()),
        x_api_key: anthropic.then_some(key),
        anthropic_version: anthropic.then_some("2023-06-01"),
        ..Default::default()
    };
    let HeadOutcome::Reply(reply) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("{path} is answered locally");
    };
    (reply.status, serde_json::from_slice(&reply.body).unwrap())
}

#[test]
fn models_lists_every_routable_model_with_its_mode_in_openais_shape() {
    let (status, list) = get_models(&listing_gateway(true), "/v1/models", "sk-gw-test", false);
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let modes: Vec<(&str, &str, bool)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            // OpenAI's model object, as its SDK reads it.
            assert_eq!(m["object"], "model", "{m}");
            assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{m}");
            (
                m["id"].as_str().unwrap(),
                m["mode"].as_str().unwrap(),
                m["tasks_only"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("chatty", "chat", false),
            ("fast", "chat", false),
            ("embed", "embedding", false),
            ("painter", "image", false),
            ("voice", "speech", false),
            ("ears", "transcription", false),
            ("flux", "image", true),
            ("veo-3", "video", true),
            ("clip", "video", true),
        ]
    );
    // A key's globs hold for task models too.
    let (_, list) = get_models(&listing_gateway(true), "/v1/models", "sk-gw-flux", false);
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    // Without a task plane, the task models cannot be reached: not listed.
    let (_, list) = get_models(&listing_gateway(false), "/v1/models", "sk-gw-test", false);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["tasks_only"] == false),
        "{list}"
    );
}

#[test]
fn one_model_is_its_listing_entry_and_an_unknown_one_a_404_in_dialect() {
    let gw = listing_gateway(true);
    let (status, model) = get_models(&gw, "/v1/models/veo-3", "sk-gw-test", false);
    assert_eq!(status, 200);
    assert_eq!(
        (&model["id"], &model["object"], &model["mode"]),
        (&json!("veo-3"), &json!("model"), &json!("video"))
    );
    let (status, model) = get_models(&gw, "/v1/models/fast", "sk-gw-test", true);
    assert_eq!(status, 200);
    assert_eq!(
        (&model["type"], &model["id"]),
        (&json!("model"), &json!("fast"))
    );
    // Unknown, and not allowed for the key: the same 404 (no existence leak).
    for (path, key) in [
        ("/v1/models/nope", "sk-gw-test"),
        ("/v1/models/chatty", "sk-gw-flux"),
    ] {
        let (status, err) = get_models(&gw, path, key, false);
        assert_eq!(status, 404, "{path}");
        assert_eq!(err["error"]["code"], "model_not_found", "{err}");
    }
    // Google's SDK may send generateContent under /v1/models/: still a generation request.
    let head = RequestHead {
        method: "POST",
        path: "/v1/models/chatty:generateContent",
        x_goog_api_key: Some("sk-gw-test"),
        ..Default::default()
    };
    assert!(matches!(
        gw.on_request_head(&head, 1_700_000_000),
        HeadOutcome::ReadBody(_)
    ));
    let (status, err) = get_models(&gw, "/v1/models/nope", "sk-gw-test", true);
    assert_eq!((status, &err["type"]), (404, &json!("error")));
    assert_eq!(err["error"]["type"], "not_found_error");
}

#[test]
fn a_mode_is_checked_at_load() {
    let with_model = |model: Value| {
        let config = json!({
            "providers": {"oa": {"kind": "openai", "base_url": "http://oa.test"}},
            "models": [model]
        });
        Gateway::from_json(&serde_json::to_vec(&config).unwrap())
            .err()
            .map(|e| e.to_string())
    };
    let err = with_model(json!({"name": "m", "mode": "hologram",
                                "deployments": [{"provider": "oa", "model": "x"}]}))
    .unwrap();
    assert!(err.contains("unknown mode `hologram`"), "{err}");
    // A mode that contradicts the model's catalog entry is refused.
    let chat_entry = switchyard_core::catalog::models()
        .iter()
        .find(|m| m.namespace() == "openai" && m.mode == switchyard_core::catalog::Mode::Chat)
        .unwrap();
    let err = with_model(json!({"name": "m", "mode": "image",
                                "deployments": [{"provider": "oa", "catalog": chat_entry.id}]}))
    .unwrap();
    assert!(err.contains("is a chat model"), "{err}");
}
