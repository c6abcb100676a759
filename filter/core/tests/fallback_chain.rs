//! One model served by Bedrock, then Azure, then Gemini: a request with tools falls back
//! through all three, driven through the request lifecycle ([`Exchange`]) as every host
//! drives it — each attempt re-translated for its provider with the tools in its native
//! form, each failure before the first byte invisible to the client, one usage record.

mod common;

use common::{accumulate, fixture};
use serde_json::{json, Value};
use switchyard_core::exchange::{Action, Ctx, Ending, Event, Exchange, Send, UpstreamHead};
use switchyard_core::health::MemoryHealthStore;
use switchyard_core::keys::hash_key;
use switchyard_core::limits::MemoryCounters;
use switchyard_core::{Dialect, Gateway, RequestHead};

fn gateway() -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "aws": {"kind": "bedrock",
                    "aws": {"region": "us-east-1", "access_key_id_secret": "AWS_ID",
                            "secret_access_key_secret": "AWS_SECRET"}},
            "azure": {"kind": "azure", "base_url": "https://contoso.openai.azure.com",
                      "api_key_secret": "AZURE_KEY"},
            "google": {"kind": "gemini", "api_key_secret": "GEMINI_KEY"}
        },
        "models": [{"name": "resilient", "strategy": "priority", "deployments": [
            {"provider": "aws", "model": "anthropic.claude-3-5-haiku-20241022-v1:0",
             "price": {"input": 0.8, "output": 4.0}},
            {"provider": "azure", "model": "gpt-4o-prod", "price": {"input": 2.5, "output": 10.0}},
            {"provider": "google", "model": "gemini-2.5-flash", "price": {"input": 0.3, "output": 2.5}}
        ]}]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|name| Some(format!("secret-for-{name}")))
}

/// The tools request, as the client of `path` writes it.
fn tools_request(path: &str) -> Value {
    let weather = json!({"type": "object", "properties": {
        "location": {"type": "string"}, "unit": {"type": "string"}}, "required": ["location"]});
    let time = json!({"type": "object", "properties": {"timezone": {"type": "string"}}});
    let prompt = "Weather in Paris and the time in Tokyo?";
    match path {
        "/v1/responses" => json!({"model": "resilient", "stream": true, "input": prompt,
            "tools": [{"type": "function", "name": "get_weather", "parameters": weather},
                      {"type": "function", "name": "get_time", "parameters": time}]}),
        "/v1/messages" => json!({"model": "resilient", "stream": true, "max_tokens": 200,
            "messages": [{"role": "user", "content": prompt}],
            "tools": [{"name": "get_weather", "input_schema": weather},
                      {"name": "get_time", "input_schema": time}]}),
        "/v1beta/models/resilient:streamGenerateContent" => json!({
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "tools": [{"functionDeclarations": [
                {"name": "get_weather", "parametersJsonSchema": weather},
                {"name": "get_time", "parametersJsonSchema": time}]}]}),
        _ => json!({"model": "resilient", "stream": true,
            "messages": [{"role": "user", "content": prompt}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": weather}},
                      {"type": "function", "function": {"name": "get_time", "parameters": time}}]}),
    }
}

/// The tool names an upstream request declares, read in each provider's own schema.
fn declared_tools(attempt: usize, body: &Value) -> Vec<String> {
    let names: Vec<&Value> = match attempt {
        0 => body["toolConfig"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["toolSpec"]["name"])
            .collect(),
        1 => body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["function"]["name"])
            .collect(),
        _ => body["tools"][0]["functionDeclarations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| &d["name"])
            .collect(),
    };
    names
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

fn the_send(actions: &[Action]) -> &Send {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send(s) => Some(&**s),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no send in {actions:?}"))
}

#[test]
fn bedrock_then_azure_then_gemini_with_tools_for_every_client() {
    let gw = gateway();
    for (path, dialect) in [
        ("/v1/chat/completions", Dialect::OpenAi),
        ("/v1/messages", Dialect::Anthropic),
        ("/v1/responses", Dialect::Responses),
        (
            "/v1beta/models/resilient:streamGenerateContent",
            Dialect::Gemini,
        ),
    ] {
        let health = MemoryHealthStore::default();
        let counters = MemoryCounters::default();
        let mut now_ms = 1_700_000_000_000u64;
        let mut ex = Exchange::new();
        let feed = |ex: &mut Exchange, event: Event<'_>, now_ms: u64| {
            ex.handle(
                &gw,
                event,
                &Ctx {
                    now_ms,
                    random: 7,
                    health: &health,
                    counters: &counters,
                },
            )
        };
        let query_path = if dialect == Dialect::Gemini {
            format!("{path}?alt=sse")
        } else {
            path.to_string()
        };
        let head = RequestHead {
            method: "POST",
            path: &query_path,
            authorization: Some("Bearer sk-gw-test"),
            ..Default::default()
        };
        let read = feed(&mut ex, Event::RequestHead(head), now_ms);
        assert!(
            matches!(read.as_slice(), [Action::ReadBody { .. }]),
            "{read:?}"
        );
        let body = serde_json::to_vec(&tools_request(path)).unwrap();
        let mut actions = feed(&mut ex, Event::RequestBody(&body), now_ms);
        // Bedrock (503), then Azure (429), before anything reaches the client.
        let failures = [
            (503, "Bedrock is unable to process your request."),
            (429, "exceeded token rate limit"),
        ];
        let mut tried = Vec::new();
        for (attempt, (status, _)) in failures.iter().enumerate() {
            let send = the_send(&actions);
            assert_eq!(send.attempt, attempt, "{path}");
            let sent: Value = serde_json::from_slice(&send.request.body).unwrap();
            assert_eq!(
                declared_tools(attempt, &sent),
                ["get_weather", "get_time"],
                "{path} attempt {attempt}"
            );
            tried.push(send.request.authority.clone());
            now_ms += 30;
            actions = feed(
                &mut ex,
                Event::UpstreamHead(UpstreamHead {
                    status: *status,
                    content_type: Some("application/json"),
                    ..Default::default()
                }),
                now_ms,
            );
            assert!(
                !actions
                    .iter()
                    .any(|a| matches!(a, Action::Reply(_) | Action::StartResponse(_))),
                "{path}: a failure before the first byte reached the client: {actions:?}"
            );
        }
        // Gemini answers with a stream of two calls.
        let send = the_send(&actions);
        assert_eq!(send.attempt, 2);
        let sent: Value = serde_json::from_slice(&send.request.body).unwrap();
        assert_eq!(declared_tools(2, &sent), ["get_weather", "get_time"]);
        tried.push(send.request.authority.clone());
        assert_eq!(
            tried,
            [
                "bedrock-runtime.us-east-1.amazonaws.com",
                "contoso.openai.azure.com",
                "generativelanguage.googleapis.com"
            ]
        );
        let started = feed(
            &mut ex,
            Event::UpstreamHead(UpstreamHead {
                status: 200,
                content_type: Some("text/event-stream"),
                ..Default::default()
            }),
            now_ms,
        );
        let attempts_header = started
            .iter()
            .find_map(|a| match a {
                Action::StartResponse(head) => head
                    .headers
                    .iter()
                    .find(|(k, _)| k == "x-switchyard-attempts")
                    .map(|(_, v)| v.clone()),
                _ => None,
            })
            .expect("the stream starts with the attempts header");
        assert!(
            attempts_header.starts_with("aws/anthropic.claude-3-5-haiku-20241022-v1:0;503"),
            "{attempts_header}"
        );
        assert!(attempts_header.contains("azure/gpt-4o-prod;429"));
        let mut out = Vec::new();
        for chunk in fixture("gemini/stream_tools.sse").chunks(9) {
            for action in feed(&mut ex, Event::UpstreamData(chunk), now_ms) {
                if let Action::Data(bytes) = action {
                    out.extend(bytes);
                }
            }
        }
        for action in feed(&mut ex, Event::UpstreamEnd, now_ms) {
            if let Action::Data(bytes) = action {
                out.extend(bytes);
            }
        }
        let f = accumulate(dialect, &out);
        let names: Vec<&str> = f.tool_calls.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"], "{path}");
        assert!(f.error.is_none(), "{path}");
        let end = Ctx {
            now_ms: now_ms + 5,
            random: 7,
            health: &health,
            counters: &counters,
        };
        let record = ex.finish(Ending::default(), &end).expect("one record");
        assert_eq!(
            (record.provider.as_str(), record.attempts, record.status),
            ("google", 3, 200),
            "{path}"
        );
        assert_eq!(record.deployment, "google/gemini-2.5-flash");
        assert_eq!(
            (record.input_tokens, record.output_tokens),
            (60, 35),
            "{path}"
        );
        assert!(record.cost > 0.0);
    }
}

/// A streamed Bedrock answer is recognised by its content type (the binary AWS event
/// stream, not SSE) and streamed to the client as it arrives.
#[test]
fn a_bedrock_event_stream_is_streamed_through_the_lifecycle() {
    let gw = gateway();
    let health = MemoryHealthStore::default();
    let counters = MemoryCounters::default();
    let cx = Ctx {
        now_ms: 1_700_000_000_000,
        random: 3,
        health: &health,
        counters: &counters,
    };
    let mut ex = Exchange::new();
    let head = RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    ex.handle(&gw, Event::RequestHead(head), &cx);
    let body = serde_json::to_vec(&tools_request("/v1/chat/completions")).unwrap();
    let actions = ex.handle(&gw, Event::RequestBody(&body), &cx);
    assert_eq!(the_send(&actions).attempt, 0);
    let started = ex.handle(
        &gw,
        Event::UpstreamHead(UpstreamHead {
            status: 200,
            content_type: Some("application/vnd.amazon.eventstream"),
            ..Default::default()
        }),
        &cx,
    );
    assert!(
        started
            .iter()
            .any(|a| matches!(a, Action::StartResponse(_))),
        "{started:?}"
    );
    let mut out = Vec::new();
    for chunk in fixture("bedrock/stream_tools.eventstream").chunks(100) {
        for action in ex.handle(&gw, Event::UpstreamData(chunk), &cx) {
            if let Action::Data(bytes) = action {
                out.extend(bytes);
            }
        }
    }
    for action in ex.handle(&gw, Event::UpstreamEnd, &cx) {
        if let Action::Data(bytes) = action {
            out.extend(bytes);
        }
    }
    let f = common::accumulate_openai(&out);
    assert_eq!(f.tool_calls.len(), 2);
    let record = ex.finish(Ending::default(), &cx).unwrap();
    assert_eq!((record.status, record.cached_input_tokens), (200, 2048));
}
