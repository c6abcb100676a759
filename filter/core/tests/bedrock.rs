//! AWS Bedrock: SigV4 against AWS's published test suite, the binary event-stream framing
//! against the fixtures (written by the Python double, read back by botocore in the
//! doubles' self-test), ConverseStream through every client dialect, and a Bedrock
//! deployment through the gateway facade, signed.

mod common;

use common::{accumulate, fixture, header, translate_chunks};
use serde_json::{json, Value};
use switchyard_core::keys::hash_key;
use switchyard_core::providers::bedrock::eventstream::{self, Decoder};
use switchyard_core::providers::bedrock::sigv4::{self, Credentials, Request};
use switchyard_core::providers::ProviderKind;
use switchyard_core::routing::NoHealth;
use switchyard_core::{Dialect, Gateway, HeadOutcome, RequestHead};

/// The test suite's credentials and instant (2015-08-30T12:36:00Z).
fn suite_credentials(token: Option<&str>) -> Credentials {
    Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: token.map(str::to_string),
    }
}
const SUITE_TIME: u64 = 1_440_938_160;

/// One published vector: name, method, path, query, extra headers, body, session token,
/// signature.
type Vector<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [u8],
    Option<&'a str>,
    &'a str,
);

/// Vectors of AWS's SigV4 test suite
/// (<https://docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html>; the same
/// cases ship in awslabs/aws-c-auth `tests/aws-signing-test-suite/v4/`): name, method,
/// path, query, extra headers, body, published signature.
#[test]
fn signatures_match_aws_published_test_suite() {
    let cases: &[Vector] = &[
        (
            "get-vanilla",
            "GET",
            "/",
            "",
            &[],
            b"",
            None,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            &[],
            b"",
            None,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "get-utf8",
            "GET",
            "/ሴ",
            "",
            &[],
            b"",
            None,
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        ),
        (
            "post-vanilla",
            "POST",
            "/",
            "",
            &[],
            b"",
            None,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "post-x-www-form-urlencoded",
            "POST",
            "/",
            "",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"Param1=value1",
            None,
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
        (
            "get-vanilla-with-session-token",
            "GET",
            "/",
            "",
            &[],
            b"",
            Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"),
            "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
        ),
    ];
    for (name, method, path, query, extra, body, token, want) in cases {
        let mut headers = vec![("Host", "example.amazonaws.com")];
        headers.extend_from_slice(extra);
        let signed = sigv4::sign(
            &Request {
                method,
                path,
                query,
                headers: &headers,
                body,
            },
            &suite_credentials(*token),
            "us-east-1",
            "service",
            SUITE_TIME,
        );
        assert_eq!(signed.signature, *want, "{name}");
        let auth = &signed.headers.last().unwrap().1;
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders="),
            "{name}: {auth}"
        );
        assert!(auth.ends_with(&format!("Signature={want}")), "{name}");
    }
    // get-vanilla's published canonical request and string to sign, step by step.
    let signed = sigv4::sign(
        &Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &[("Host", "example.amazonaws.com")],
            body: b"",
        },
        &suite_credentials(None),
        "us-east-1",
        "service",
        SUITE_TIME,
    );
    assert_eq!(
        signed.canonical_request,
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        signed.string_to_sign,
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
}

/// The binary fixtures decode to exactly the events their JSON descriptions list, at
/// every split of the bytes.
#[test]
fn event_stream_fixtures_decode_as_described_at_every_split() {
    for name in ["stream_text", "stream_tools", "stream_error"] {
        let described: Vec<(serde_json::Map<String, Value>, Value)> =
            serde_json::from_slice(&fixture(&format!("bedrock/{name}.events.json"))).unwrap();
        let bytes = fixture(&format!("bedrock/{name}.eventstream"));
        let decode = |chunks: &[&[u8]]| {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for c in chunks {
                d.push(c, &mut out).unwrap();
            }
            d.finish().unwrap();
            out
        };
        let whole = decode(&[&bytes]);
        assert_eq!(whole.len(), described.len(), "{name}");
        for (message, (headers, payload)) in whole.iter().zip(&described) {
            for (k, v) in headers {
                assert_eq!(message.header(k), v.as_str(), "{name} {k}");
            }
            assert_eq!(
                &serde_json::from_slice::<Value>(&message.payload).unwrap(),
                payload
            );
        }
        for i in 0..=bytes.len() {
            assert!(
                decode(&[&bytes[..i], &bytes[i..]]) == whole,
                "{name} split at {i}"
            );
        }
    }
}

#[test]
fn converse_streams_reach_every_client() {
    for dialect in Dialect::ALL {
        let (out, usage, failed) = translate_chunks(
            ProviderKind::Bedrock,
            dialect,
            true,
            &[&fixture("bedrock/stream_tools.eventstream")],
        );
        assert!(!failed, "{dialect:?}: {}", String::from_utf8_lossy(&out));
        let f = accumulate(dialect, &out);
        assert_eq!(f.text, "Let me check both — ✓.", "{dialect:?}");
        let calls: Vec<(&str, &str)> = f
            .tool_calls
            .iter()
            .map(|(id, name, _)| (id.as_str(), name.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "get_weather"),
                ("tooluse_Fe8zL0hKS9eWIt3oFT7sfw", "get_time"),
            ],
            "{dialect:?}"
        );
        let args: Value = serde_json::from_str(&f.tool_calls[0].2).unwrap();
        assert_eq!(args, json!({"location": "Seattle, WA"}), "{dialect:?}");
        assert_eq!(
            (usage.input, usage.cached_input, usage.output),
            (410 + 2048, 2048, 98)
        );
    }
    // An exception inside the stream ends it with an error event in the client's dialect.
    for dialect in Dialect::ALL {
        let (out, _, failed) = translate_chunks(
            ProviderKind::Bedrock,
            dialect,
            false,
            &[&fixture("bedrock/stream_error.eventstream")],
        );
        assert!(failed);
        let f = accumulate(dialect, &out);
        assert_eq!(f.text, "Partial", "{dialect:?}");
        let err = f.error.expect("error event");
        assert_eq!(common::error_type(dialect, &err), "bad_gateway", "{err}");
    }
    // A stream cut after messageStop, before its metadata, is truncated.
    let bytes = fixture("bedrock/stream_text.eventstream");
    let metadata_start = bytes.len()
        - eventstream::encode(
            &[
                (":event-type", "metadata"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            br#"{"usage":{"inputTokens":25,"outputTokens":15,"totalTokens":45,"cacheReadInputTokens":5},"metrics":{"latencyMs":402},"p":"abcdefghijk"}"#,
        )
        .len();
    let (_, _, failed) = translate_chunks(
        ProviderKind::Bedrock,
        Dialect::OpenAi,
        false,
        &[&bytes[..metadata_start]],
    );
    assert!(failed);
}

fn gateway(aws: Value) -> Gateway {
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {"aws": {"kind": "bedrock", "aws": aws}},
        "models": [{"name": "haiku", "deployments": [
            {"provider": "aws", "model": "anthropic.claude-3-5-haiku-20241022-v1:0"}]}]
    });
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|name| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            "AWS_SESSION_TOKEN" => Some("FQoGZXIvYXdzEXAMPLE".into()),
            _ => None,
        })
}

#[test]
fn a_bedrock_deployment_is_signed_for_the_plan_time() {
    let gw = gateway(json!({"region": "eu-west-3",
        "access_key_id_secret": "AWS_ACCESS_KEY_ID",
        "secret_access_key_secret": "AWS_SECRET_ACCESS_KEY",
        "session_token_secret": "AWS_SESSION_TOKEN"}));
    let head = RequestHead {
        method: "POST",
        path: "/v1/chat/completions",
        authorization: Some("Bearer sk-gw-test"),
        ..Default::default()
    };
    let HeadOutcome::ReadBody(admitted) = gw.on_request_head(&head, SUITE_TIME) else {
        panic!("rejected")
    };
    let body = json!({"model": "haiku", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let plan = gw
        .plan(
            &admitted,
            &serde_json::to_vec(&body).unwrap(),
            1,
            SUITE_TIME,
            &NoHealth,
        )
        .unwrap();
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(up.authority, "bedrock-runtime.eu-west-3.amazonaws.com");
    assert_eq!(
        up.path,
        "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    );
    assert_eq!(header(&up.headers, "x-amz-date"), Some("20150830T123600Z"));
    assert_eq!(
        header(&up.headers, "x-amz-security-token"),
        Some("FQoGZXIvYXdzEXAMPLE")
    );
    // The signature is the one SigV4 gives for exactly these bytes, path and host; the
    // double re-checks it with botocore in the e2e suite.
    let expected = sigv4::sign(
        &Request {
            method: "POST",
            path: &up.path,
            query: "",
            headers: &[
                ("host", "bedrock-runtime.eu-west-3.amazonaws.com"),
                ("content-type", "application/json"),
            ],
            body: &up.body,
        },
        &Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("FQoGZXIvYXdzEXAMPLE".into()),
        },
        "eu-west-3",
        "bedrock",
        SUITE_TIME,
    );
    let auth = header(&up.headers, "authorization").unwrap();
    assert!(
        auth.contains("/20150830/eu-west-3/bedrock/aws4_request"),
        "{auth}"
    );
    assert!(
        auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
        "{auth}"
    );
    assert!(auth.ends_with(&expected.signature), "{auth}");
    assert!(expected
        .canonical_request
        .contains("/anthropic.claude-3-5-haiku-20241022-v1%253A0/"));
    // The streamed answer comes back as OpenAI chunks, usage metered.
    let mut s = plan.response_stream(0);
    let upstream = fixture("bedrock/stream_text.eventstream");
    let mut out = Vec::new();
    for c in upstream.chunks(5) {
        out.extend(s.push(c));
    }
    out.extend(s.finish());
    let f = common::accumulate_openai(&out);
    assert_eq!(f.text, "Hello wörld — ✓");
    assert_eq!((s.usage().input, s.usage().cached_input), (30, 5));
    // A Bedrock API key instead of SigV4 is a bearer token.
    let config = json!({
        "keys": [{"id": "k1", "sha256": hash_key("sk-gw-test"), "models": ["*"]}],
        "providers": {"aws": {"kind": "bedrock", "aws": {"region": "us-west-2"},
                              "api_key_secret": "BEDROCK_API_KEY"}},
        "models": [{"name": "haiku", "deployments": [{"provider": "aws", "model": "m"}]}]
    });
    let gw = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| Some("bedrock-key".into()));
    let plan = gw
        .plan(
            &admitted,
            &serde_json::to_vec(&body).unwrap(),
            1,
            SUITE_TIME,
            &NoHealth,
        )
        .unwrap();
    let up = plan.upstream_request(0).unwrap();
    assert_eq!(
        header(&up.headers, "authorization"),
        Some("Bearer bedrock-key")
    );
    assert!(header(&up.headers, "x-amz-date").is_none());
}

#[test]
fn bedrock_configs_are_checked_at_load() {
    for (aws, why) in [
        (None, "needs `aws`"),
        (
            Some(json!({"region": "us-east-1", "access_key_id_secret": "A"})),
            "needs both",
        ),
    ] {
        let mut provider = json!({"kind": "bedrock"});
        if let Some(aws) = aws {
            provider["aws"] = aws;
        }
        let config = json!({"providers": {"aws": provider},
            "models": [{"name": "m", "deployments": [{"provider": "aws", "model": "x"}]}]});
        let err = Gateway::from_json(&serde_json::to_vec(&config).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
    }
    // A missing credential names the secret (the lead's 503 path covers every provider).
    let gw = gateway(json!({"region": "us-east-1",
        "access_key_id_secret": "AWS_ACCESS_KEY_ID",
        "secret_access_key_secret": "NOT_SET"}));
    let models = gw.unservable_models();
    assert_eq!(models.len(), 1);
    assert!(models[0].reason.contains("NOT_SET"), "{}", models[0].reason);
}

#[test]
fn a_json_schema_is_converse_structured_output_and_json_mode_an_instruction() {
    let req: switchyard_core::canonical::ChatRequest = serde_json::from_value(json!({
        "model": "m", "messages": [{"role": "user", "content": "Trip?"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "trip", "description": "a trip",
            "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    }))
    .unwrap();
    let body = switchyard_core::providers::bedrock::request_body(&req).unwrap();
    let definition = &body["outputConfig"]["textFormat"]["structure"]["jsonSchema"];
    assert_eq!(body["outputConfig"]["textFormat"]["type"], "json_schema");
    // Converse takes the schema as a JSON string.
    let schema: Value = serde_json::from_str(definition["schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema["properties"]["city"], json!({"type": "string"}));
    assert_eq!(definition["name"], "trip");
    assert_eq!(definition["description"], "a trip");
    assert!(
        body.get("system").is_none(),
        "no instruction beside it: {body}"
    );
}
