//! The field matrix against the code: every cell of `fields::treatment` is checked by
//! encoding a request with the field for the provider (mapped and emulated cells must leave
//! their trace in the native request, refused ones must be refused before any provider is
//! called, hints must be accepted), every ingress row by decoding a client request, the
//! refusal through the gateway in every dialect, and `docs/fields.md` against the table.

use std::path::PathBuf;

use serde_json::{json, Value};
use switchyard_core::canonical::ChatRequest;
use switchyard_core::config::ProviderConfig;
use switchyard_core::fields::{self, Treatment, FIELDS, INGRESS};
use switchyard_core::ingress;
use switchyard_core::keys::hash_key;
use switchyard_core::providers::vertex::VertexConfig;
use switchyard_core::providers::{EgressRequest, ProviderKind};
use switchyard_core::routing::NoHealth;
use switchyard_core::{Dialect, Gateway, HeadOutcome, RequestHead};

/// `base` with `probe`'s top-level fields written over it.
fn merged(base: Value, probe: &str) -> Value {
    let mut out = base;
    if probe.is_empty() {
        return out;
    }
    let probe: Value = serde_json::from_str(probe).expect("probe is JSON");
    for (k, v) in probe.as_object().expect("probe is an object") {
        out[k.as_str()] = v.clone();
    }
    out
}

fn chat_request(probe: &str) -> ChatRequest {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    serde_json::from_value(merged(base, probe)).expect("probe makes a valid request")
}

fn provider(kind: ProviderKind) -> ProviderConfig {
    let mut config = ProviderConfig::of_kind(kind);
    if kind == ProviderKind::Vertex {
        config.vertex = Some(VertexConfig {
            project: "p".into(),
            location: "us-central1".into(),
        });
    }
    config
}

fn encode(kind: ProviderKind, req: &ChatRequest) -> EgressRequest {
    provider(kind)
        .build_chat(req, "upstream-model")
        .unwrap_or_else(|e| panic!("{kind:?} could not encode {req:?}: {e}"))
}

/// The value a trace locates in a native request (`path:` traces give the path).
fn at(egress: &EgressRequest, trace: &str) -> Option<Value> {
    if let Some(part) = trace.strip_prefix("path:") {
        return egress.path.contains(part).then(|| json!(part));
    }
    let body: Value = serde_json::from_slice(&egress.body).expect("native body is JSON");
    body.pointer(trace).filter(|v| !v.is_null()).cloned()
}

#[test]
fn every_cell_holds_for_every_provider() {
    let mut checked = 0;
    for kind in ProviderKind::ALL {
        let plain = encode(kind, &chat_request(""));
        for field in FIELDS {
            let req = chat_request(field.probe);
            assert!(
                (field.present)(&req),
                "probe of `{}` does not use it",
                field.name
            );
            let cell = fields::treatment(kind, field.name);
            let refusal = fields::refusal(kind, &req);
            let context = format!("{kind:?} × `{}` ({cell:?})", field.name);
            match cell {
                Treatment::Refused(_) => {
                    let refusal = refusal.unwrap_or_else(|| panic!("{context}: not refused"));
                    let expected = match field.name {
                        "other" => "service_tier",
                        "generation_config" => "generationConfig.mediaResolution",
                        name => name.split(':').next().unwrap(),
                    };
                    assert_eq!(refusal.field, expected, "{context}");
                }
                Treatment::Mapped(trace) | Treatment::Emulated { trace, .. } => {
                    assert_eq!(refusal, None, "{context}: refused");
                    if trace.is_empty() {
                        encode(kind, &req);
                    } else {
                        let with = at(&encode(kind, &req), trace);
                        assert!(with.is_some(), "{context}: nothing at `{trace}`");
                        assert_ne!(
                            with,
                            at(&plain, trace),
                            "{context}: `{trace}` is there without the field too"
                        );
                    }
                }
                Treatment::Hint(_) => {
                    assert_eq!(refusal, None, "{context}: refused");
                    encode(kind, &req);
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, FIELDS.len() * ProviderKind::ALL.len());
}

#[test]
fn no_field_is_refused_where_none_is_set() {
    for kind in ProviderKind::ALL {
        assert_eq!(fields::refusal(kind, &chat_request("")), None);
    }
}

#[test]
fn mistral_own_fields_pass_and_others_are_refused() {
    let req = chat_request(r#"{"safe_prompt":true}"#);
    assert_eq!(fields::refusal(ProviderKind::Mistral, &req), None);
    let body = at(&encode(ProviderKind::Mistral, &req), "/safe_prompt");
    assert_eq!(body, Some(json!(true)));
    let req = chat_request(r#"{"store":true}"#);
    let refusal = fields::refusal(ProviderKind::Mistral, &req).expect("refused");
    assert_eq!(refusal.field, "store");
}

#[test]
fn every_ingress_field_reaches_its_row() {
    for row in INGRESS.iter().filter(|r| !r.canonical.is_empty()) {
        let req = match row.dialect {
            Dialect::Anthropic => {
                let base = json!({"model": "m", "max_tokens": 16,
                                  "messages": [{"role": "user", "content": "hi"}]});
                let body = serde_json::to_vec(&merged(base, row.probe)).unwrap();
                ingress::decode_chat(Dialect::Anthropic, &body)
            }
            Dialect::Responses => {
                let body =
                    serde_json::to_vec(&merged(json!({"model": "m", "input": "hi"}), row.probe))
                        .unwrap();
                ingress::decode_chat(Dialect::Responses, &body)
            }
            Dialect::Gemini => {
                let base = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
                let body = serde_json::to_vec(&merged(base, row.probe)).unwrap();
                ingress::gemini::decode_request(&body, "m", false)
            }
            Dialect::OpenAi => unreachable!("OpenAI fields are the rows themselves"),
        }
        .unwrap_or_else(|e| panic!("{:?} `{}`: {e}", row.dialect, row.name));
        let field = FIELDS
            .iter()
            .find(|f| f.name == row.canonical)
            .unwrap_or_else(|| panic!("no row `{}`", row.canonical));
        assert!(
            (field.present)(&req),
            "{:?} `{}` does not reach `{}`: {req:?}",
            row.dialect,
            row.name,
            row.canonical
        );
    }
}

fn gateway() -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {
            "claude": {"kind": "anthropic", "api_key_secret": "ANTHROPIC_KEY"},
            "gpt": {"kind": "openai", "api_key_secret": "OPENAI_KEY"}
        },
        "models": [
            {"name": "claude", "deployments": [{"provider": "claude", "model": "claude-sonnet-4-5"}]},
            {"name": "mixed", "deployments": [
                {"provider": "claude", "model": "claude-sonnet-4-5", "weight": 1},
                {"provider": "gpt", "model": "gpt-4o", "weight": 0}
            ]}
        ]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|name: &str| Some(format!("secret-for-{name}")))
}

fn plan_error(gw: &Gateway, path: &str, body: Value) -> Result<Vec<String>, (u16, Value)> {
    let head = RequestHead {
        method: "POST",
        path,
        x_api_key: Some("sk-gw-test"),
        anthropic_version: path.contains("messages").then_some("2023-06-01"),
        ..Default::default()
    };
    let admitted = match gw.on_request_head(&head, 1_700_000_000) {
        HeadOutcome::ReadBody(a) => a,
        HeadOutcome::Reply(r) => panic!("rejected: {}", String::from_utf8_lossy(&r.body)),
    };
    let dialect = admitted.dialect;
    gw.plan(
        &admitted,
        &serde_json::to_vec(&body).unwrap(),
        7,
        1_700_000_000,
        &NoHealth,
    )
    .map(|p| p.attempts.iter().map(|a| a.provider.clone()).collect())
    .map_err(|e| (e.status, serde_json::from_slice(&e.body(dialect)).unwrap()))
}

#[test]
fn a_refused_field_is_a_400_in_every_dialect_naming_field_and_model() {
    let gw = gateway();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "n": 2,
                   "stream": true}),
            "/error/message",
        ),
        (
            "/v1/responses",
            json!({"model": "claude", "input": "hi", "text": {"format": {"type": "json_object"}},
                   "top_logprobs": 2}),
            "/error/message",
        ),
        (
            "/v1beta/models/claude:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                   "generationConfig": {"presencePenalty": 0.5}}),
            "/error/message",
        ),
    ];
    for (path, body, pointer) in cases {
        let (status, err) = plan_error(&gw, path, body).expect_err("refused");
        assert_eq!(status, 400, "{path}: {err}");
        let message = err.pointer(pointer).and_then(Value::as_str).unwrap();
        assert!(message.contains("`claude`"), "{path}: {message}");
        assert!(message.contains("anthropic provider"), "{path}: {message}");
    }
    let (_, err) = plan_error(
        &gw,
        "/v1/chat/completions",
        json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "n": 2,
                   "stream": true}),
    )
    .unwrap_err();
    assert_eq!(err["error"]["param"], "n");
    assert_eq!(err["error"]["code"], "unsupported_by_model");
}

#[test]
fn a_deployment_that_refuses_a_field_is_skipped_for_one_that_takes_it() {
    let gw = gateway();
    let body = json!({"model": "mixed", "messages": [{"role": "user", "content": "hi"}],
                      "logit_bias": {"50256": -100}});
    assert_eq!(
        plan_error(&gw, "/v1/chat/completions", body).unwrap(),
        vec!["gpt".to_string()]
    );
    // An Anthropic client's own fields pass through to Anthropic untouched (same format).
    let body = json!({"model": "claude", "max_tokens": 16, "service_tier": "auto",
                      "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        plan_error(&gw, "/v1/messages", body).unwrap(),
        vec!["claude".to_string()]
    );
}

#[test]
fn fields_doc_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/fields.md");
    let rendered = fields::render_markdown();
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/fields.md is stale: run `SWITCHYARD_BLESS=1 cargo test -p switchyard-core --test fields`"
    );
}

/// A provider's own error body in its documented shape, carrying `message`.
fn native_error(kind: ProviderKind, status: u16, message: &str) -> Value {
    match kind {
        ProviderKind::Openai | ProviderKind::Azure => json!({"error": {
            "message": message, "type": "invalid_request_error", "param": null, "code": null}}),
        ProviderKind::Mistral if status == 422 => {
            json!({"object": "error", "type": "invalid_request_error",
            "message": {"detail": [{"type": "extra_forbidden", "loc": ["body", "x"], "msg": message}]}})
        }
        ProviderKind::Mistral => json!({"object": "error", "message": message,
            "type": "invalid_request_error", "param": null, "code": null}),
        ProviderKind::Anthropic => json!({"type": "error",
            "error": {"type": "invalid_request_error", "message": message}}),
        ProviderKind::Gemini | ProviderKind::Vertex => json!({"error": {
            "code": status, "message": message, "status": "INVALID_ARGUMENT"}}),
        ProviderKind::Bedrock => json!({"message": message}),
        ProviderKind::Cohere => json!({"id": "e-1", "message": message}),
        ProviderKind::Dashscope => json!({"code": "InvalidParameter", "message": message,
            "request_id": "r-1"}),
    }
}

#[test]
fn provider_errors_pass_through_with_status_and_own_message_in_every_dialect() {
    let statuses = [400, 401, 403, 404, 408, 413, 422, 429, 500, 502, 503, 504];
    for kind in ProviderKind::ALL {
        for status in statuses {
            let message = format!("the provider's own words for {status}");
            let secret = "sk-abcdefghijklmnopqrstuvwxyz0123456789";
            let body = native_error(kind, status, &format!("{message} (key {secret})"));
            let err = kind.parse_error(status, &serde_json::to_vec(&body).unwrap());
            let context = format!("{kind:?} {status}");
            assert_eq!(err.status, status, "{context}: {err:?}");
            assert!(err.message.contains(&message), "{context}: {err:?}");
            assert!(!err.message.contains(secret), "{context}: secret leaked");
            for dialect in Dialect::ALL {
                let rendered: Value = serde_json::from_slice(&err.body(dialect)).unwrap();
                let text = rendered.to_string();
                assert!(text.contains(&message), "{context} {dialect:?}: {text}");
                assert!(
                    !text.contains(secret),
                    "{context} {dialect:?}: secret leaked"
                );
            }
        }
    }
}

#[test]
fn json_schema_is_converted_to_geminis_openapi_subset() {
    use switchyard_core::providers::gemini::openapi_schema;
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "city": {"$ref": "#/$defs/City"},
            "kind": {"const": "forecast"},
            "note": {"type": ["string", "null"], "description": "optional"},
            "temp": {"oneOf": [{"type": "number"}, {"type": "string"}]},
            "days": {"type": "array", "items": {"allOf": [{"type": "integer", "minimum": 1}]}}
        },
        "required": ["city", "kind"],
        "$defs": {"City": {"type": "object", "properties": {"name": {"type": "string"}}}}
    });
    let converted = openapi_schema(&schema, "response_format").unwrap();
    assert_eq!(
        converted,
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "object", "properties": {"name": {"type": "string"}}},
                "kind": {"enum": ["forecast"]},
                "note": {"type": "string", "nullable": true, "description": "optional"},
                "temp": {"anyOf": [{"type": "number"}, {"type": "string"}]},
                "days": {"type": "array", "items": {"type": "integer", "minimum": 1}}
            },
            "required": ["city", "kind"]
        })
    );
    // A constraint Gemini cannot express is refused, naming the field, never dropped.
    for bad in [
        json!({"type": "object", "not": {"required": ["x"]}}),
        json!({"type": "string", "if": {"minLength": 2}, "then": {}}),
        json!({"type": "object", "patternProperties": {"^x": {"type": "string"}}}),
        json!({"$ref": "#/$defs/Missing"}),
        json!({"$ref": "#"}),
    ] {
        let err = openapi_schema(&bad, "response_format").unwrap_err();
        assert_eq!(err.status, 400, "{bad}");
        assert_eq!(err.param.as_deref(), Some("response_format"), "{bad}");
    }
    // Through the encoder: the response schema and tool parameters are converted.
    let req = chat_request(
        r#"{"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":["integer","null"]}}}}},
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"b":{"const":1}}}}}]}"#,
    );
    let egress = encode(ProviderKind::Gemini, &req);
    assert_eq!(
        at(&egress, "/generationConfig/responseSchema/properties/a"),
        Some(json!({"type": "integer", "nullable": true}))
    );
    assert_eq!(
        at(
            &egress,
            "/tools/0/functionDeclarations/0/parameters/properties/b"
        ),
        Some(json!({"enum": [1]}))
    );
}
