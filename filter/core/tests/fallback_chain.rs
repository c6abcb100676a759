//! One model served by Bedrock, then Azure, then Gemini: a request with tools falls back
//! through all three, each attempt re-translated for its provider with the tools in its
//! native form, as a host walks the plan (upstream request → status → next attempt).

mod common;

use common::{accumulate, fixture};
use serde_json::{json, Value};
use switchyard_core::keys::hash_key;
use switchyard_core::routing::NoHealth;
use switchyard_core::{Dialect, Gateway, HeadOutcome, Plan, RequestHead};

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

const TOOLS_REQUEST: &str = r#"{"model": "resilient", "stream": true,
  "messages": [{"role": "user", "content": "Weather in Paris and the time in Tokyo?"}],
  "tools": [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
      "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}}, "required": ["location"]}}},
    {"type": "function", "function": {"name": "get_time",
      "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}],
  "tool_choice": "auto"}"#;

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

fn plan_for(gw: &Gateway, path: &str) -> Plan {
    let head = RequestHead {
        method: "POST",
        path,
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    let HeadOutcome::ReadBody(admitted) = gw.on_request_head(&head, 1_700_000_000) else {
        panic!("rejected")
    };
    let body = if admitted.dialect == Dialect::Responses {
        let chat: Value = serde_json::from_str(TOOLS_REQUEST).unwrap();
        json!({"model": "resilient", "stream": true, "input": chat["messages"][0]["content"],
               "tools": chat["tools"].as_array().unwrap().iter().map(|t| {
                   let mut f = t["function"].clone();
                   f["type"] = json!("function");
                   f
               }).collect::<Vec<_>>()})
    } else {
        serde_json::from_str(TOOLS_REQUEST).unwrap()
    };
    gw.plan(
        &admitted,
        &serde_json::to_vec(&body).unwrap(),
        11,
        1_700_000_000,
        &NoHealth,
    )
    .unwrap()
}

#[test]
fn bedrock_then_azure_then_gemini_with_tools() {
    let gw = gateway();
    for (path, dialect) in [
        ("/v1/chat/completions", Dialect::OpenAi),
        ("/v1/responses", Dialect::Responses),
    ] {
        let plan = plan_for(&gw, path);
        assert_eq!(plan.attempts.len(), 3);
        // Each provider gets the tools in its own schema, its own path and credential.
        let failures: [(u16, &[u8]); 2] = [
            (503, br#"{"message":"Bedrock is unable to process your request."}"#),
            (
                429,
                br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded token rate limit."}}"#,
            ),
        ];
        let mut tried = Vec::new();
        let mut index = 0;
        loop {
            let up = plan.upstream_request(index).unwrap();
            let body: Value = serde_json::from_slice(&up.body).unwrap();
            assert_eq!(
                declared_tools(index, &body),
                ["get_weather", "get_time"],
                "{path} attempt {index}"
            );
            tried.push((up.authority.clone(), up.path.clone()));
            let Some((status, error)) = failures.get(index) else {
                break;
            };
            // The host asks the plan whether to move on; the error is rendered only if
            // the chain runs out.
            assert!(plan.should_retry_status(*status));
            let err = plan.translate_error(index, *status, error);
            assert_eq!(err.status, *status);
            assert!(err.is_retryable());
            index += 1;
        }
        assert_eq!(index, 2);
        assert_eq!(
            tried,
            [
                (
                    "bedrock-runtime.us-east-1.amazonaws.com".to_string(),
                    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream".to_string()
                ),
                (
                    "contoso.openai.azure.com".to_string(),
                    "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
                        .to_string()
                ),
                (
                    "generativelanguage.googleapis.com".to_string(),
                    "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse".to_string()
                ),
            ],
            "{path}"
        );
        // Gemini answers with two calls; the client gets them in its own dialect.
        let mut stream = plan.response_stream(2);
        let upstream = fixture("gemini/stream_tools.sse");
        let mut out = Vec::new();
        for chunk in upstream.chunks(9) {
            out.extend(stream.push(chunk));
        }
        out.extend(stream.finish());
        let f = accumulate(dialect, &out);
        let names: Vec<&str> = f.tool_calls.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"], "{path}");
        let record = plan.usage_record(2, stream.usage(), 200, 3, Some(1200));
        assert_eq!(
            (record.provider.as_str(), record.attempts, record.status),
            ("google", 3, 200)
        );
        assert_eq!(
            record.deployment, "google/gemini-2.5-flash",
            "metered against the deployment that answered"
        );
        assert!(record.cost > 0.0);
    }
}

/// When every attempt fails, the last error reaches the client in its dialect.
#[test]
fn the_last_failure_is_what_the_client_sees() {
    let gw = gateway();
    let plan = plan_for(&gw, "/v1/chat/completions");
    let err = plan.translate_error(
        2,
        429,
        br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
    );
    let v: Value = serde_json::from_slice(&err.body(plan.dialect)).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("(from google)"));
}
