//! The Gemini API ingress: routes and keys, request decoding (golden), call/result pairing
//! without ids, refusals in Google's error shape, and any provider answering a Gemini
//! client, streamed or not.

mod common;

use common::{accumulate_gemini, fixture, golden, pretty};
use serde_json::{json, Value};
use switchyard_core::canonical::Role;
use switchyard_core::ingress::gemini::{self, Route};
use switchyard_core::keys::hash_key;
use switchyard_core::routing::NoHealth;
use switchyard_core::{Dialect, Endpoint, Gateway, HeadOutcome, RequestHead};

#[test]
fn routes_and_query_keys() {
    assert_eq!(
        gemini::route("/v1beta/models/gemini-2.5-flash:generateContent"),
        Some(Route::Generate {
            model: "gemini-2.5-flash".into(),
            stream: false
        })
    );
    assert_eq!(
        gemini::route("/v1/models/my%2Dmodel:streamGenerateContent"),
        Some(Route::Generate {
            model: "my-model".into(),
            stream: true
        })
    );
    assert_eq!(gemini::route("/v1beta/models"), Some(Route::List));
    assert_eq!(gemini::route("/v1/models"), None, "OpenAI's list");
    for bad in [
        "/v1beta/models/m:countTokens",
        "/v1beta/models/:generateContent",
        "/v1beta/models/a/b:generateContent",
        "/v1beta/models/%zz:generateContent",
        "/v1beta/tunedModels/x:generateContent",
        "/v1/chat/completions",
    ] {
        assert_eq!(gemini::route(bad), None, "{bad}");
    }
    assert_eq!(
        gemini::query_key("/v1beta/models/m:streamGenerateContent?alt=sse&key=abc"),
        Some("abc")
    );
    assert_eq!(
        gemini::query_key("/v1beta/models/m:generateContent?key="),
        None
    );
}

#[test]
fn request_decodes_to_canonical_golden() {
    let req = gemini::decode_request(
        &fixture("gemini_ingress/request_tools.json"),
        "gemini-2.5-flash",
        true,
    )
    .unwrap();
    golden(
        "gemini_ingress/request_tools.expected.json",
        &pretty(&serde_json::to_vec(&req).unwrap()),
    );
    // Calls without ids get call_<n>; results without ids answer the earliest unanswered
    // call of their name; ids that are sent are kept.
    let assistant = &req.messages[2];
    assert_eq!(assistant.role, Role::Assistant);
    let ids: Vec<&str> = assistant
        .tool_calls
        .iter()
        .flatten()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, ["call_0", "call_1"]);
    let results: Vec<(&str, String)> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| (m.tool_call_id.as_deref().unwrap(), m.text_content()))
        .collect();
    assert_eq!(
        results,
        [
            ("call_0", "14°C, overcast".to_string()),
            ("call_1", r#"{"sky":"clear","temperature":21}"#.to_string()),
            ("call-time-1", "22:10".to_string()),
        ]
    );
    // Gemini's schema subset becomes JSON Schema.
    let params = req.tools.as_ref().unwrap()[0]
        .function
        .parameters
        .as_ref()
        .unwrap()
        .to_value();
    assert_eq!(params["type"], "object");
    assert_eq!(
        params["properties"]["unit"]["type"],
        json!(["string", "null"])
    );
    assert!(params.get("propertyOrdering").is_none());
    assert!(req.wants_stream_usage());
}

#[test]
fn gemini_only_settings_are_carried_not_dropped() {
    let body = json!({
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "generationConfig": {
            "responseModalities": ["TEXT"],
            "mediaResolution": "MEDIA_RESOLUTION_LOW",
            "responseLogprobs": true,
            "logprobs": 3,
            "thinkingConfig": {"thinkingBudget": 0, "thinkingLevel": "HIGH"}
        }
    });
    let req = gemini::decode_request(&serde_json::to_vec(&body).unwrap(), "m", false).unwrap();
    assert_eq!(req.extra["safety_settings"], body["safetySettings"]);
    assert_eq!(
        req.extra["generation_config"],
        json!({"mediaResolution": "MEDIA_RESOLUTION_LOW"})
    );
    assert_eq!(req.extra["logprobs"], json!(true));
    assert_eq!(req.extra["top_logprobs"], json!(3));
    assert_eq!(req.extra["thinking"], json!({"type": "disabled"}));
    assert_eq!(req.extra["reasoning_effort"], json!("high"));
    // Back to a Gemini provider they land where the client put them.
    let native = switchyard_core::providers::gemini::request_body(&req).unwrap();
    assert_eq!(native["safetySettings"], body["safetySettings"]);
    assert_eq!(
        native["generationConfig"]["mediaResolution"],
        "MEDIA_RESOLUTION_LOW"
    );
    assert_eq!(
        native["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 0})
    );
    // A dynamic budget (-1) is the default: nothing is asked for.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                      "generationConfig": {"thinkingConfig": {"thinkingBudget": -1}}});
    let req = gemini::decode_request(&serde_json::to_vec(&body).unwrap(), "m", false).unwrap();
    assert!(req.extra.is_empty(), "{:?}", req.extra);
}

#[test]
fn what_other_providers_cannot_take_is_a_400_naming_the_field() {
    let base = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let cases = [
        (
            with("cachedContent", json!("cachedContents/abc")),
            "cachedContent",
        ),
        (with("tools", json!([{"googleSearch": {}}])), "tools[0]"),
        (with("tools", json!([{"codeExecution": {}}])), "tools[0]"),
        (
            with("generationConfig", json!({"candidateCount": 2})),
            "generationConfig.candidateCount",
        ),
        (
            with(
                "contents",
                json!([{"role": "user", "parts": [{"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}}]}]),
            ),
            "contents",
        ),
        (
            with(
                "contents",
                json!([{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]),
            ),
            "contents",
        ),
        (
            with(
                "contents",
                json!([{"role": "user", "parts": [{"functionCall": {"name": "f", "args": {}}}]}]),
            ),
            "contents",
        ),
        (with("contents", json!([])), "contents"),
        (
            with(
                "generationConfig",
                json!({"thinkingConfig": {"includeThoughts": true}}),
            ),
            "generationConfig.thinkingConfig.includeThoughts",
        ),
        (
            with(
                "generationConfig",
                json!({"responseModalities": ["TEXT", "IMAGE"]}),
            ),
            "generationConfig.responseModalities",
        ),
        (
            with("generationConfig", json!({"speechConfig": {}})),
            "generationConfig.speechConfig",
        ),
        (
            with(
                "generationConfig",
                json!({"responseMimeType": "text/x.enum"}),
            ),
            "generationConfig.responseMimeType",
        ),
        (
            with(
                "generationConfig",
                json!({"responseSchema": {"type": "STRING"}}),
            ),
            "generationConfig.responseSchema",
        ),
        (with("labels", json!({"team": "search"})), "labels"),
    ];
    for (body, param) in cases {
        let err =
            gemini::decode_request(&serde_json::to_vec(&body).unwrap(), "m", false).unwrap_err();
        assert_eq!(
            (err.status, err.param.as_deref()),
            (400, Some(param)),
            "{body}: {}",
            err.message
        );
        let v: Value = serde_json::from_slice(&err.body(Dialect::Gemini)).unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    }
}

fn gateway() -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["claude", "gpt"]}],
        "providers": {
            "claude": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"},
            "oa": {"kind": "openai", "api_key_secret": "OPENAI_KEY"}
        },
        "models": [
            {"name": "claude", "deployments": [{"provider": "claude", "model": "claude-sonnet-4-5"}],
             "defaults": {"temperature": 0, "max_tokens": 77}},
            {"name": "gpt", "deployments": [{"provider": "oa", "model": "gpt-4.1-mini"}]},
            {"name": "hidden", "deployments": [{"provider": "oa", "model": "gpt-4.1"}]}
        ]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|name| Some(format!("secret-for-{name}")))
}

fn head<'a>(method: &'a str, path: &'a str, key: Option<&'a str>) -> RequestHead<'a> {
    RequestHead {
        method,
        path,
        x_goog_api_key: key,
        ..Default::default()
    }
}

#[test]
fn keys_errors_and_the_model_list_speak_google() {
    let gw = gateway();
    let path = "/v1beta/models/claude:generateContent";
    // The SDK's header, or Google's `?key=`.
    for head in [
        head("POST", path, Some("sk-gw-test")),
        head(
            "POST",
            "/v1beta/models/claude:generateContent?key=sk-gw-test",
            None,
        ),
    ] {
        let HeadOutcome::ReadBody(admitted) = gw.on_request_head(&head, 1_700_000_000) else {
            panic!("rejected {}", head.path)
        };
        assert_eq!(admitted.dialect, Dialect::Gemini);
        assert_eq!(
            admitted.endpoint,
            Endpoint::GenerateContent { stream: false }
        );
        assert_eq!(admitted.path_model.as_deref(), Some("claude"));
    }
    // Bad key, unknown method, wrong verb: Google's error shape.
    for (head, status, google) in [
        (head("POST", path, Some("nope")), 401, "UNAUTHENTICATED"),
        (head("POST", path, None), 401, "UNAUTHENTICATED"),
        (
            head(
                "POST",
                "/v1beta/models/claude:countTokens",
                Some("sk-gw-test"),
            ),
            404,
            "NOT_FOUND",
        ),
        (
            head("GET", path, Some("sk-gw-test")),
            405,
            "INVALID_ARGUMENT",
        ),
    ] {
        let HeadOutcome::Reply(reply) = gw.on_request_head(&head, 1_700_000_000) else {
            panic!("admitted {}", head.path)
        };
        assert_eq!(reply.status, status, "{}", head.path);
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["error"]["status"], google, "{v}");
        assert_eq!(v["error"]["code"], status);
    }
    // `?key=` only counts on Google's own paths.
    let HeadOutcome::Reply(reply) =
        gw.on_request_head(&head("GET", "/v1/models?key=sk-gw-test", None), 0)
    else {
        panic!("a query key was accepted on an OpenAI path")
    };
    assert_eq!(reply.status, 401);
    // The list: Google's shape, only what the key may use.
    let HeadOutcome::Reply(reply) =
        gw.on_request_head(&head("GET", "/v1beta/models", Some("sk-gw-test")), 0)
    else {
        panic!("no model list")
    };
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["models/claude", "models/gpt"]);
}

#[test]
fn a_gemini_client_reaches_any_provider() {
    let gw = gateway();
    let plan = |path: &str, body: &Value| {
        let HeadOutcome::ReadBody(admitted) =
            gw.on_request_head(&head("POST", path, Some("sk-gw-test")), 1_700_000_000)
        else {
            panic!("rejected")
        };
        gw.plan(
            &admitted,
            &serde_json::to_vec(body).unwrap(),
            7,
            1_700_000_000,
            &NoHealth,
        )
    };
    let body: Value =
        serde_json::from_slice(&fixture("gemini_ingress/request_tools.json")).unwrap();
    // Streamed, to Anthropic: tools and results translated, the answer streamed back.
    let p = plan("/v1beta/models/claude:streamGenerateContent?alt=sse", &body).unwrap();
    assert!(p.stream);
    let up = p.upstream_request(0).unwrap();
    assert_eq!(up.path, "/v1/messages");
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(
        sent["max_tokens"], 512,
        "the client's own limit beats the default"
    );
    assert_eq!(sent["temperature"], 0.4);
    let uses: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_use" || b["type"] == "tool_result")
        .map(|b| b["id"].as_str().or(b["tool_use_id"].as_str()).unwrap())
        .collect();
    assert_eq!(
        uses,
        [
            "call_0",
            "call_1",
            "call_0",
            "call_1",
            "call-time-1",
            "call-time-1"
        ]
    );
    let mut s = p.response_stream(0);
    let upstream = fixture("anthropic/stream_tools.sse");
    let mut out = Vec::new();
    for c in upstream.chunks(11) {
        out.extend(s.push(c));
    }
    out.extend(s.finish());
    let f = accumulate_gemini(&out);
    assert_eq!(f.tool_calls.len(), 2);
    assert_eq!(f.tool_calls[0].0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!((f.input_tokens, f.output_tokens), (472, 89));
    assert_eq!(f.finish.as_deref(), Some("STOP"));
    // The model's defaults land in `generationConfig` where the client is silent.
    let p = plan(
        "/v1beta/models/claude:generateContent",
        &json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    )
    .unwrap();
    let sent: Value = serde_json::from_slice(&p.upstream_request(0).unwrap().body).unwrap();
    assert_eq!(sent["temperature"].as_f64(), Some(0.0));
    assert_eq!(sent["max_tokens"], 77);
    // Not streamed, to OpenAI: the answer is a GenerateContentResponse.
    let p = plan(
        "/v1beta/models/gpt:generateContent",
        &json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    )
    .unwrap();
    let up = p.upstream_request(0).unwrap();
    assert_eq!(up.path, "/v1/chat/completions");
    let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
    let (client, usage) = p.translate_response(0, answer).unwrap();
    let v: Value = serde_json::from_slice(&client).unwrap();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "Hello!");
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 5);
    assert_eq!(usage.input, 3);
    // Upstream errors reach the client in Google's shape, status kept.
    let err = p.translate_error(
        0,
        429,
        br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
    );
    let v: Value = serde_json::from_slice(&err.body(p.dialect)).unwrap();
    assert_eq!(
        (v["error"]["code"].clone(), v["error"]["status"].clone()),
        (json!(429), json!("RESOURCE_EXHAUSTED"))
    );
    // A model the key may not use, or that does not exist: 403 / 404, Google's shape.
    for (model, status) in [("hidden", 403), ("nope", 404)] {
        let err = plan(
            &format!("/v1beta/models/{model}:generateContent"),
            &json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        )
        .unwrap_err();
        assert_eq!(err.status, status);
        let v: Value = serde_json::from_slice(&err.body(Dialect::Gemini)).unwrap();
        assert_eq!(v["error"]["code"], status);
    }
}
