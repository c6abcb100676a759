//! Asynchronous media providers (`switchyard_core::tasks::providers`): each provider's
//! documented answers read into the one task model, the calls built in its wire format, and
//! its inbound webhooks verified (genuine accepted; forged, tampered and stale refused).
//!
//! Fixtures are written after each provider's API reference (ids and URLs illustrative); the
//! source of each is in the comment above it.

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use switchyard_core::tasks::providers::{
    fal, wavespeed, AsyncProvider, Headers, InboundError, Method, PollAnswer, ProviderError,
    ProviderState, SubmitSpec, WebhookKey,
};
use switchyard_core::tasks::webhook::{WebhookError, WebhookSecret};

const NOW: u64 = 1_758_798_328;

fn body_of(call: &switchyard_core::tasks::providers::ProviderCall) -> Value {
    serde_json::from_slice(&call.body).unwrap()
}

// ---------------------------------------------------------------- WaveSpeed

// Submit answer, after https://wavespeed.ai/docs/docs-api/submit-task (HTTP 200, envelope).
const WS_SUBMITTED: &str = r#"{"code":200,"message":"success","data":{
  "id":"0c8ecb1bd5a04cb2a0ba1b0e26e1d4a7","model":"wavespeed-ai/flux-dev","outputs":[],
  "urls":{"get":"https://api.wavespeed.ai/api/v3/predictions/0c8ecb1bd5a04cb2a0ba1b0e26e1d4a7/result"},
  "has_nsfw_contents":[],"status":"created","created_at":"2025-09-25T11:05:28.111Z",
  "error":"","timings":{"inference":0}}}"#;

// Poll answer of a finished task, after https://wavespeed.ai/docs/docs-api/get-result.
const WS_COMPLETED: &str = r#"{"code":200,"message":"success","data":{
  "id":"0c8ecb1bd5a04cb2a0ba1b0e26e1d4a7","model":"wavespeed-ai/flux-dev",
  "outputs":["https://d1q70pf5vjeyhc.cloudfront.net/predictions/0c8e/1.png",
             "https://d1q70pf5vjeyhc.cloudfront.net/predictions/0c8e/2.png"],
  "urls":{"get":"https://api.wavespeed.ai/api/v3/predictions/0c8ecb1bd5a04cb2a0ba1b0e26e1d4a7/result"},
  "has_nsfw_contents":[false,false],"status":"completed","created_at":"2025-09-25T11:05:28.111Z",
  "error":"","timings":{"inference":2105}}}"#;

// A failed task is still HTTP 200 with code 200 in the envelope (same page).
const WS_FAILED: &str = r#"{"code":200,"message":"success","data":{
  "id":"0c8ecb1bd5a04cb2a0ba1b0e26e1d4a7","model":"wavespeed-ai/flux-dev","outputs":[],
  "urls":{"get":"https://api.wavespeed.ai/api/v3/predictions/0c8ecb1bd5a04cb2a0ba1b0e26e1d4a7/result"},
  "has_nsfw_contents":[],"status":"failed","created_at":"2025-09-25T11:05:28.111Z",
  "error":"prompt violates the content policy","timings":{"inference":0}}}"#;

// A refused call: HTTP 200, a non-200 numeric `code` and no data.
const WS_REFUSED: &str = r#"{"code":401,"message":"Unauthorized: invalid API key","data":null}"#;

#[test]
fn wavespeed_submit_puts_the_webhook_in_the_query() {
    let input = json!({"prompt": "a lighthouse at dawn", "size": "1024*1024"});
    let call = AsyncProvider::Wavespeed.submit(&SubmitSpec {
        model: "wavespeed-ai/flux-dev",
        input: &input,
        webhook_url: Some("https://gw.example/v1/provider-webhooks/wavespeed/t_1?x=1"),
    });
    assert_eq!(call.method, Method::Post);
    assert_eq!(
        call.path,
        "/api/v3/wavespeed-ai/flux-dev?webhook=https%3A%2F%2Fgw.example%2Fv1%2Fprovider-webhooks%2Fwavespeed%2Ft_1%3Fx%3D1"
    );
    assert_eq!(body_of(&call), input);
    assert_eq!(
        AsyncProvider::Wavespeed.poll("m", "abc").path,
        "/api/v3/predictions/abc/result"
    );
    assert!(AsyncProvider::Wavespeed.cancel("m", "abc").is_none());
}

#[test]
fn wavespeed_envelope_states_and_failures() {
    let p = AsyncProvider::Wavespeed;
    let submitted = p.read_submit(200, WS_SUBMITTED.as_bytes()).unwrap();
    assert_eq!(submitted.id, "0c8ecb1bd5a04cb2a0ba1b0e26e1d4a7");
    assert_eq!(submitted.state, ProviderState::Queued);

    let PollAnswer::Task(done) = p
        .read_poll("m", &submitted.id, &json!({}), 200, WS_COMPLETED.as_bytes())
        .unwrap()
    else {
        panic!("WaveSpeed answers the task itself")
    };
    assert_eq!(done.state, ProviderState::Succeeded);
    assert_eq!(done.outputs.len(), 2);
    assert_eq!(done.usage.images, 2);

    let PollAnswer::Task(failed) = p
        .read_poll("m", &submitted.id, &json!({}), 200, WS_FAILED.as_bytes())
        .unwrap()
    else {
        panic!("WaveSpeed answers the task itself")
    };
    assert_eq!(failed.state, ProviderState::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, "200");
    assert_eq!(error.message, "prompt violates the content policy");

    match p.read_submit(200, WS_REFUSED.as_bytes()) {
        Err(ProviderError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 401);
            assert!(message.contains("invalid API key"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// The scheme of https://wavespeed.ai/docs/docs-api/verifying_webhook (headers as its example): hex HMAC,
// keyed with the secret's text after `whsec_`, over `{id}.{timestamp}.{body}`.
#[test]
fn wavespeed_webhook_v3_hex_signature() {
    let secret = "whsec_5f0c1a7e9b2d4c6e8a0b1c2d3e4f5a6b";
    let body = WS_COMPLETED.as_bytes();
    let hook: Value = serde_json::from_slice(body).unwrap();
    let hook = serde_json::to_vec(&hook["data"]).unwrap();
    let signature = wavespeed::sign_webhook(secret, "45b392b22c3b449fa935bd4dc", NOW, &hook);
    assert!(signature.starts_with("v3,"));
    assert_eq!(signature.len(), 3 + 64, "hex, not base64");
    let ts = NOW.to_string();
    let headers = [
        ("Webhook-Id", "45b392b22c3b449fa935bd4dc"),
        ("Webhook-Timestamp", ts.as_str()),
        ("Webhook-Signature", signature.as_str()),
    ];
    let key = WebhookKey::Secret(secret.into());
    let p = AsyncProvider::Wavespeed;
    p.verify_webhook(Some(&key), Headers(&headers), &hook, NOW + 10)
        .unwrap();
    let task = p.read_webhook(&hook).unwrap();
    assert_eq!(task.state, ProviderState::Succeeded);

    // Tampered body, wrong key, a Standard Webhooks (v1, base64) signature, stale timestamp.
    let mut tampered = hook.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        p.verify_webhook(Some(&key), Headers(&headers), &tampered, NOW),
        Err(InboundError::Signature(WebhookError::NoMatchingSignature))
    );
    let other = WebhookKey::Secret("whsec_other".into());
    assert!(p
        .verify_webhook(Some(&other), Headers(&headers), &hook, NOW)
        .is_err());
    let v1 = WebhookSecret::from_bytes(b"5f0c1a7e9b2d4c6e8a0b1c2d3e4f5a6b").sign(
        "45b392b22c3b449fa935bd4dc",
        NOW,
        &hook,
    );
    let v1_headers = [headers[0], headers[1], ("webhook-signature", v1.as_str())];
    assert!(p
        .verify_webhook(Some(&key), Headers(&v1_headers), &hook, NOW)
        .is_err());
    assert!(matches!(
        p.verify_webhook(Some(&key), Headers(&headers), &hook, NOW + 301),
        Err(InboundError::Signature(WebhookError::Stale { .. }))
    ));
    assert_eq!(
        p.verify_webhook(None, Headers(&headers), &hook, NOW),
        Err(InboundError::NoKey)
    );
}

// ---------------------------------------------------------------- Replicate

// Create answer (201), after https://replicate.com/docs/reference/http#predictions.create.
const REPLICATE_STARTING: &str = r#"{"id":"gm3qorzdhgbfurvjtvhg6dckhu",
  "model":"black-forest-labs/flux-schnell","version":"dp-4d0bcc010b3049749a251855f12800be",
  "input":{"prompt":"a lighthouse at dawn","num_outputs":2},"logs":"","output":null,
  "data_removed":false,"error":null,"status":"starting","created_at":"2025-01-01T12:00:00.000Z",
  "urls":{"cancel":"https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
          "get":"https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
          "stream":"https://stream.replicate.com/v1/files/bcwr-3okdfv3o2wehstv5f2okyftwxy57hhypqsi6osiim5iuhjjd4lmm"}}"#;

// Finished and failed predictions, after https://replicate.com/docs/topics/predictions/lifecycle.
const REPLICATE_SUCCEEDED: &str = r#"{"id":"gm3qorzdhgbfurvjtvhg6dckhu",
  "model":"black-forest-labs/flux-schnell","version":"dp-4d0bcc010b3049749a251855f12800be",
  "input":{"prompt":"a lighthouse at dawn","num_outputs":2},"logs":"",
  "output":["https://replicate.delivery/xezq/a/out-0.webp","https://replicate.delivery/xezq/b/out-1.webp"],
  "data_removed":false,"error":null,"status":"succeeded","created_at":"2025-01-01T12:00:00.000Z",
  "started_at":"2025-01-01T12:00:00.200Z","completed_at":"2025-01-01T12:00:01.300Z",
  "metrics":{"image_count":2,"predict_time":1.1,"total_time":1.3},
  "urls":{"get":"https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu"}}"#;

const REPLICATE_FAILED: &str = r#"{"id":"gm3qorzdhgbfurvjtvhg6dckhu","status":"failed",
  "input":{"prompt":""},"output":null,"error":"prompt must not be empty","logs":"",
  "urls":{"get":"https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu"}}"#;

#[test]
fn replicate_calls_for_official_models_and_versions() {
    let input = json!({"prompt": "a lighthouse at dawn"});
    let p = AsyncProvider::Replicate;
    let call = p.submit(&SubmitSpec {
        model: "black-forest-labs/flux-schnell",
        input: &input,
        webhook_url: Some("https://gw.example/hook"),
    });
    assert_eq!(
        call.path,
        "/v1/models/black-forest-labs/flux-schnell/predictions"
    );
    assert_eq!(
        body_of(&call),
        json!({"input": input, "webhook": "https://gw.example/hook",
               "webhook_events_filter": ["completed"]})
    );
    let call = p.submit(&SubmitSpec {
        model: "stability-ai/sdxl:7762fd07",
        input: &input,
        webhook_url: None,
    });
    assert_eq!(call.path, "/v1/predictions");
    assert_eq!(
        body_of(&call),
        json!({"input": input, "version": "7762fd07"})
    );
    let cancel = p.cancel("m", "gm3q").unwrap();
    assert_eq!(
        (cancel.method, cancel.path.as_str()),
        (Method::Post, "/v1/predictions/gm3q/cancel")
    );
}

#[test]
fn replicate_states_outputs_and_failure() {
    let p = AsyncProvider::Replicate;
    let started = p.read_submit(201, REPLICATE_STARTING.as_bytes()).unwrap();
    assert_eq!(started.state, ProviderState::Queued);
    let done = p.read_webhook(REPLICATE_SUCCEEDED.as_bytes()).unwrap();
    assert_eq!(done.state, ProviderState::Succeeded);
    assert_eq!(done.usage.images, 2);
    assert_eq!(
        done.outputs[1],
        "https://replicate.delivery/xezq/b/out-1.webp"
    );
    let failed = p.read_webhook(REPLICATE_FAILED.as_bytes()).unwrap();
    assert_eq!(failed.state, ProviderState::Failed);
    assert_eq!(failed.error.unwrap().message, "prompt must not be empty");
    // https://replicate.com/docs/reference/http#authentication: a bad token is 401 + detail.
    let refused = p
        .read_submit(401, br#"{"title":"Unauthenticated","detail":"You did not pass a valid authentication token","status":401}"#)
        .unwrap_err();
    assert!(refused.to_string().contains("valid authentication token"));
    assert!(!refused.is_retryable());
}

// Standard Webhooks, as https://replicate.com/docs/topics/webhooks/verify-webhook describes.
#[test]
fn replicate_webhook_standard_signature() {
    let secret = WebhookSecret::from_bytes(b"replicate-test-secret-32-bytes!!");
    let key = WebhookKey::Secret(secret.encode());
    let body = REPLICATE_SUCCEEDED.as_bytes();
    let [(_, id), (_, ts), (_, sig)] = secret.headers("msg_2a7N5", NOW, body);
    let headers = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let p = AsyncProvider::Replicate;
    p.verify_webhook(Some(&key), Headers(&headers), body, NOW)
        .unwrap();
    assert!(p
        .verify_webhook(
            Some(&key),
            Headers(&headers),
            REPLICATE_FAILED.as_bytes(),
            NOW
        )
        .is_err());
    assert!(matches!(
        p.verify_webhook(Some(&key), Headers(&headers), body, NOW - 600),
        Err(InboundError::Signature(WebhookError::Stale { .. }))
    ));
    assert_eq!(
        p.verify_webhook(Some(&key), Headers(&headers[..2]), body, NOW),
        Err(InboundError::Signature(WebhookError::MissingHeader(
            "webhook-signature"
        )))
    );
}

// ---------------------------------------------------------------- fal

// Queue answers, after https://docs.fal.ai/model-endpoints/queue.
const FAL_SUBMITTED: &str = r#"{"request_id":"764cabcf-b745-4b3e-ae38-1200304cf45b",
  "response_url":"https://queue.fal.run/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b",
  "status_url":"https://queue.fal.run/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b/status",
  "cancel_url":"https://queue.fal.run/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b/cancel",
  "queue_position":0}"#;
const FAL_IN_QUEUE: &str = r#"{"status":"IN_QUEUE","queue_position":2,
  "response_url":"https://queue.fal.run/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b"}"#;
const FAL_IN_PROGRESS: &str = r#"{"status":"IN_PROGRESS","logs":[{"message":"step 1/28","timestamp":"2025-01-01T12:00:00.123Z"}],
  "response_url":"https://queue.fal.run/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b"}"#;
const FAL_COMPLETED: &str = r#"{"status":"COMPLETED","logs":null,"metrics":{"inference_time":1.9},
  "response_url":"https://queue.fal.run/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b"}"#;
const FAL_RESULT: &str = r#"{"images":[{"url":"https://v3.fal.media/files/rabbit/out.jpeg",
  "width":1024,"height":768,"content_type":"image/jpeg"}],"timings":{"inference":1.9},
  "seed":196619188014358660,"has_nsfw_concepts":[false],"prompt":"a lighthouse at dawn"}"#;

// Webhook bodies, after https://docs.fal.ai/model-endpoints/webhooks.
const FAL_HOOK_OK: &str = r#"{"request_id":"764cabcf-b745-4b3e-ae38-1200304cf45b",
  "gateway_request_id":"764cabcf-b745-4b3e-ae38-1200304cf45b","status":"OK",
  "payload":{"images":[{"url":"https://url.to/image.png","content_type":"image/png",
  "file_name":"image.png","file_size":1824075,"width":1024,"height":1024}],"seed":196619188014358660}}"#;
const FAL_HOOK_ERROR: &str = r#"{"request_id":"764cabcf-b745-4b3e-ae38-1200304cf45b",
  "gateway_request_id":"764cabcf-b745-4b3e-ae38-1200304cf45b","status":"ERROR",
  "error":"Invalid status code: 422","payload":{"detail":[{"loc":["body","prompt"],
  "msg":"field required","type":"value_error.missing"}]}}"#;

#[test]
fn fal_queue_status_then_result() {
    let p = AsyncProvider::Fal;
    let model = "fal-ai/flux/dev";
    let input = json!({"prompt": "a lighthouse at dawn"});
    let call = p.submit(&SubmitSpec {
        model,
        input: &input,
        webhook_url: Some("https://gw.example/hook"),
    });
    assert_eq!(
        call.path,
        "/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fgw.example%2Fhook"
    );
    let task = p.read_submit(200, FAL_SUBMITTED.as_bytes()).unwrap();
    assert_eq!(task.id, "764cabcf-b745-4b3e-ae38-1200304cf45b");
    let poll = p.poll(model, &task.id);
    assert_eq!(
        poll.path,
        "/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b/status"
    );
    for (status, body, state) in [
        (202, FAL_IN_QUEUE, ProviderState::Queued),
        (202, FAL_IN_PROGRESS, ProviderState::Running),
    ] {
        assert_eq!(
            p.read_poll(model, &task.id, &input, status, body.as_bytes())
                .unwrap(),
            PollAnswer::Task(switchyard_core::tasks::providers::ProviderTask {
                id: task.id.clone(),
                state,
                progress: None,
                outputs: vec![],
                error: None,
                usage: Default::default(),
            })
        );
    }
    let PollAnswer::FetchResult(fetch) = p
        .read_poll(model, &task.id, &input, 200, FAL_COMPLETED.as_bytes())
        .unwrap()
    else {
        panic!("COMPLETED asks for the result")
    };
    assert_eq!(
        fetch.path,
        "/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b"
    );
    let done = p.read_result(&task.id, 200, FAL_RESULT.as_bytes()).unwrap();
    assert_eq!(done.state, ProviderState::Succeeded);
    assert_eq!(done.outputs, ["https://v3.fal.media/files/rabbit/out.jpeg"]);
    assert_eq!(done.usage.images, 1);
    let failed = p
        .read_result(&task.id, 422, br#"{"detail":[{"loc":["body","prompt"],"msg":"field required","type":"value_error.missing"}]}"#)
        .unwrap();
    assert_eq!(failed.state, ProviderState::Failed);
    assert!(failed.error.unwrap().message.contains("field required"));
    let cancel = p.cancel(model, &task.id).unwrap();
    assert_eq!(cancel.method, Method::Put);
    assert!(cancel.path.ends_with("/cancel"));
}

fn fal_keys() -> (SigningKey, fal::Jwks) {
    let signer = SigningKey::from_bytes(&[7u8; 32]);
    let x = base64_url(signer.verifying_key().as_bytes());
    // fal's live JWKS pads `x`; both forms are accepted.
    let doc = json!({"keys": [
        {"kty": "RSA", "n": "ignored", "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "x": format!("{x}="), "kid": "fal-1"}
    ]});
    let jwks = fal::Jwks::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
    (signer, jwks)
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// Verification as https://docs.fal.ai/model-endpoints/webhooks#verifying-your-webhook says.
#[test]
fn fal_webhook_ed25519_from_jwks() {
    let (signer, jwks) = fal_keys();
    let key = WebhookKey::Jwks(jwks);
    let body = FAL_HOOK_OK.as_bytes();
    let ts = NOW.to_string();
    let request_id = "764cabcf-b745-4b3e-ae38-1200304cf45b";
    let message = fal::signed_message(request_id, "user_42", &ts, body);
    let signature: String = signer
        .sign(&message)
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let headers = [
        ("X-Fal-Webhook-Request-Id", request_id),
        ("X-Fal-Webhook-User-Id", "user_42"),
        ("X-Fal-Webhook-Timestamp", ts.as_str()),
        ("X-Fal-Webhook-Signature", signature.as_str()),
    ];
    let p = AsyncProvider::Fal;
    p.verify_webhook(Some(&key), Headers(&headers), body, NOW + 5)
        .unwrap();
    let done = p.read_webhook(body).unwrap();
    assert_eq!(done.outputs, ["https://url.to/image.png"]);
    let failed = p.read_webhook(FAL_HOOK_ERROR.as_bytes()).unwrap();
    assert_eq!(failed.error.unwrap().message, "Invalid status code: 422");

    // Another body, another user id, a key not in the JWKS, a stale timestamp.
    assert!(p
        .verify_webhook(
            Some(&key),
            Headers(&headers),
            FAL_HOOK_ERROR.as_bytes(),
            NOW
        )
        .is_err());
    let other_user = [
        headers[0],
        ("x-fal-webhook-user-id", "user_43"),
        headers[2],
        headers[3],
    ];
    assert!(p
        .verify_webhook(Some(&key), Headers(&other_user), body, NOW)
        .is_err());
    let forger = SigningKey::from_bytes(&[9u8; 32]);
    let forged: String = forger
        .sign(&message)
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let forged_headers = [
        headers[0],
        headers[1],
        headers[2],
        ("x-fal-webhook-signature", forged.as_str()),
    ];
    assert_eq!(
        p.verify_webhook(Some(&key), Headers(&forged_headers), body, NOW),
        Err(InboundError::Signature(WebhookError::NoMatchingSignature))
    );
    assert!(matches!(
        p.verify_webhook(Some(&key), Headers(&headers), body, NOW + 301),
        Err(InboundError::Signature(WebhookError::Stale { .. }))
    ));
    // A shared secret is no key for fal.
    assert_eq!(
        p.verify_webhook(
            Some(&WebhookKey::Secret("whsec_x".into())),
            Headers(&headers),
            body,
            NOW
        ),
        Err(InboundError::NoKey)
    );
    assert!(matches!(
        fal::Jwks::parse(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#),
        Err(InboundError::Malformed(_))
    ));
}

// ---------------------------------------------------------------- DashScope

// After https://www.alibabacloud.com/help/en/model-studio/text-to-image-v2-api-reference.
const DS_SUBMITTED: &str = r#"{"output":{"task_status":"PENDING","task_id":"0385dc79-5ff8-4d82-bcb6-xxxxxx"},
  "request_id":"4909100c-7b5a-9f92-bfe5-xxxxxx"}"#;
const DS_RUNNING: &str = r#"{"request_id":"f767d108-7d50-908b-a6d9-xxxxxx","output":{
  "task_id":"0385dc79-5ff8-4d82-bcb6-xxxxxx","task_status":"RUNNING",
  "submit_time":"2025-01-08 16:03:59.840","scheduled_time":"2025-01-08 16:03:59.863",
  "task_metrics":{"TOTAL":2,"SUCCEEDED":0,"FAILED":0}}}"#;
const DS_IMAGES: &str = r#"{"request_id":"f767d108-7d50-908b-a6d9-xxxxxx","output":{
  "task_id":"0385dc79-5ff8-4d82-bcb6-xxxxxx","task_status":"SUCCEEDED",
  "submit_time":"2025-01-08 16:03:59.840","scheduled_time":"2025-01-08 16:03:59.863",
  "end_time":"2025-01-08 16:04:10.660",
  "results":[{"orig_prompt":"a lighthouse","actual_prompt":"a lighthouse at dawn","url":"https://dashscope-result-wlcb.oss-cn-wulanchabu.aliyuncs.com/1.png"},
             {"code":"InternalError.Timeout","message":"An internal timeout error has occured during execution."}],
  "task_metrics":{"TOTAL":2,"SUCCEEDED":1,"FAILED":1}},"usage":{"image_count":1}}"#;
// After https://www.alibabacloud.com/help/en/model-studio/text-to-video-api-reference.
const DS_VIDEO: &str = r#"{"request_id":"caa62a12-8841-41a6-8af2-xxxxxx","output":{
  "task_id":"eff1443c-ccab-4676-aad3-xxxxxx","task_status":"SUCCEEDED",
  "submit_time":"2025-09-29 14:18:52.331","scheduled_time":"2025-09-29 14:18:59.290",
  "end_time":"2025-09-29 14:23:39.407","orig_prompt":"a kitten running in the moonlight",
  "video_url":"https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/xxx.mp4"},
  "usage":{"video_count":1,"video_duration":5,"video_ratio":"1920*1080"}}"#;
const DS_FAILED: &str = r#"{"request_id":"e5d70b02-ebd3-98ce-9fe8-759d7d7b107d","output":{
  "task_id":"86ecf553-d340-4e21-af6e-xxxxxx","task_status":"FAILED",
  "code":"InvalidParameter","message":"The size is not match xxxxxx"}}"#;
const DS_UNKNOWN: &str =
    r#"{"request_id":"e5d70b02","output":{"task_id":"86ecf553","task_status":"UNKNOWN"}}"#;

#[test]
fn dashscope_async_header_paths_and_states() {
    let p = AsyncProvider::Dashscope;
    let input = json!({"prompt": "a lighthouse", "parameters": {"size": "1024*1024", "n": 2}});
    let call = p.submit(&SubmitSpec {
        model: "wan2.2-t2i-flash",
        input: &input,
        webhook_url: Some("https://ignored.example"),
    });
    assert_eq!(
        call.path,
        "/api/v1/services/aigc/text2image/image-synthesis"
    );
    assert!(call
        .headers
        .contains(&("x-dashscope-async".to_string(), "enable".to_string())));
    assert_eq!(
        body_of(&call),
        json!({"model": "wan2.2-t2i-flash", "input": {"prompt": "a lighthouse"},
               "parameters": {"size": "1024*1024", "n": 2}})
    );
    let video = p.submit(&SubmitSpec {
        model: "wan2.5-t2v-preview",
        input: &json!({"prompt": "a kitten"}),
        webhook_url: None,
    });
    assert_eq!(
        video.path,
        "/api/v1/services/aigc/video-generation/video-synthesis"
    );
    assert_eq!(p.poll("m", "t1").path, "/api/v1/tasks/t1");
    assert_eq!(p.cancel("m", "t1").unwrap().path, "/api/v1/tasks/t1/cancel");
    assert!(!p.has_webhooks());

    let read = |body: &str| match p.read_poll("m", "t", &json!({}), 200, body.as_bytes()) {
        Ok(PollAnswer::Task(task)) => task,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        p.read_submit(200, DS_SUBMITTED.as_bytes()).unwrap().state,
        ProviderState::Queued
    );
    assert_eq!(read(DS_RUNNING).state, ProviderState::Running);
    let images = read(DS_IMAGES);
    assert_eq!(
        images.outputs.len(),
        1,
        "the failed result entry carries no URL"
    );
    assert_eq!(images.usage.images, 1);
    let video = read(DS_VIDEO);
    assert_eq!(video.usage.seconds, Some(5.0));
    assert_eq!(video.usage.images, 0);
    let failed = read(DS_FAILED).error.unwrap();
    assert_eq!(failed.code, "InvalidParameter");
    assert_eq!(read(DS_UNKNOWN).state, ProviderState::Failed);
    // https://www.alibabacloud.com/help/en/model-studio/error-code
    let refused = p
        .read_submit(401, br#"{"code":"InvalidApiKey","message":"Invalid API-key provided.","request_id":"fb53c4ec"}"#)
        .unwrap_err();
    assert!(refused.to_string().contains("Invalid API-key"));
    assert!(matches!(
        p.verify_webhook(None, Headers(&[]), b"{}", NOW),
        Err(InboundError::NoWebhooks("dashscope"))
    ));
}

// ---------------------------------------------------------------- Veo

// After https://ai.google.dev/gemini-api/docs/video (REST tab) and
// https://ai.google.dev/api/models#method:-models.predictlongrunning.
const VEO_STARTED: &str = r#"{"name":"models/veo-3.0-generate-001/operations/3k8gw9g1bcz2"}"#;
const VEO_DONE: &str = r#"{"name":"models/veo-3.0-generate-001/operations/3k8gw9g1bcz2","done":true,
  "response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
  "generateVideoResponse":{"generatedSamples":[{"video":{"uri":"https://generativelanguage.googleapis.com/v1beta/files/3k8gw9g1bcz2:download?alt=media"}}]}}}"#;
const VEO_FILTERED: &str = r#"{"name":"models/veo-3.0-generate-001/operations/3k8gw9g1bcz2","done":true,
  "response":{"@type":"type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
  "generateVideoResponse":{"raiMediaFilteredCount":1,"raiMediaFilteredReasons":["The prompt could not be submitted."]}}}"#;
const VEO_ERROR: &str = r#"{"name":"models/veo-3.0-generate-001/operations/3k8gw9g1bcz2","done":true,
  "error":{"code":3,"message":"Unsupported aspect ratio: 4:3"}}"#;

#[test]
fn veo_long_running_operation() {
    let p = AsyncProvider::Veo;
    let input = json!({"prompt": "a lighthouse at dawn", "parameters": {"aspectRatio": "16:9", "durationSeconds": 6}});
    let call = p.submit(&SubmitSpec {
        model: "veo-3.0-generate-001",
        input: &input,
        webhook_url: None,
    });
    assert_eq!(
        call.path,
        "/v1beta/models/veo-3.0-generate-001:predictLongRunning"
    );
    assert_eq!(
        body_of(&call),
        json!({"instances": [{"prompt": "a lighthouse at dawn"}],
               "parameters": {"aspectRatio": "16:9", "durationSeconds": 6}})
    );
    let started = p.read_submit(200, VEO_STARTED.as_bytes()).unwrap();
    assert_eq!(
        started.id,
        "models/veo-3.0-generate-001/operations/3k8gw9g1bcz2"
    );
    assert_eq!(started.state, ProviderState::Queued);
    assert_eq!(
        p.poll("m", &started.id).path,
        "/v1beta/models/veo-3.0-generate-001/operations/3k8gw9g1bcz2"
    );
    assert!(p
        .cancel("m", &started.id)
        .unwrap()
        .path
        .ends_with(":cancel"));
    let read = |body: &str, input: &Value| match p.read_poll(
        "m",
        &started.id,
        input,
        200,
        body.as_bytes(),
    ) {
        Ok(PollAnswer::Task(task)) => task,
        other => panic!("unexpected {other:?}"),
    };
    let done = read(VEO_DONE, &input);
    assert_eq!(done.state, ProviderState::Succeeded);
    assert_eq!(done.usage.seconds, Some(6.0));
    assert_eq!(
        read(VEO_DONE, &json!({"prompt": "x"})).usage.seconds,
        Some(8.0)
    );
    let filtered = read(VEO_FILTERED, &input).error.unwrap();
    assert_eq!(filtered.message, "The prompt could not be submitted.");
    let error = read(VEO_ERROR, &input).error.unwrap();
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("3", "Unsupported aspect ratio: 4:3")
    );
    // https://ai.google.dev/gemini-api/docs/troubleshooting: 429 RESOURCE_EXHAUSTED is retryable.
    let limited = p
        .read_submit(429, br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#)
        .unwrap_err();
    assert!(limited.is_retryable());
    assert!(limited.to_string().contains("Resource has been exhausted"));
}

#[test]
fn every_provider_reads_garbage_as_malformed_not_a_panic() {
    for p in AsyncProvider::ALL {
        assert_eq!(AsyncProvider::from_name(p.name()), Some(p));
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            b"{\"code\":200,\"data\":{}}",
        ] {
            assert!(
                matches!(
                    p.read_submit(200, body),
                    Err(ProviderError::Malformed { .. })
                ),
                "{} {:?}",
                p.name(),
                String::from_utf8_lossy(body)
            );
        }
    }
}

// ---------------------------------------------------------------- the doubles' own webhooks

/// Webhooks signed by the e2e doubles' code (`tests/doubles/async_fixtures.py` writes them):
/// the core's verifiers and the doubles' signers are two implementations of each scheme, held
/// against each other here.
#[test]
fn webhooks_signed_by_the_doubles_verify_and_read() {
    let folder =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/async_webhooks");
    let mut seen = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let fixture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let provider = AsyncProvider::from_name(fixture["provider"].as_str().unwrap()).unwrap();
        let key = match &fixture["key"] {
            Value::String(secret) => WebhookKey::Secret(secret.clone()),
            jwks => WebhookKey::Jwks(fal::Jwks::parse(jwks.to_string().as_bytes()).unwrap()),
        };
        let headers: Vec<(&str, &str)> = fixture["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let body = fixture["body"].as_str().unwrap().as_bytes();
        let now = fixture["timestamp"].as_u64().unwrap();
        provider
            .verify_webhook(Some(&key), Headers(&headers), body, now)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let task = provider.read_webhook(body).unwrap();
        let expected = if name.contains(".succeeded.") {
            ProviderState::Succeeded
        } else {
            ProviderState::Failed
        };
        assert_eq!(task.state, expected, "{name}");
        assert_eq!(
            task.outputs.is_empty(),
            expected == ProviderState::Failed,
            "{name}"
        );

        let mut forged = body.to_vec();
        forged.insert(1, b' ');
        assert!(
            provider
                .verify_webhook(Some(&key), Headers(&headers), &forged, now)
                .is_err(),
            "{name}: a changed body must not verify"
        );
        assert!(
            matches!(
                provider.verify_webhook(Some(&key), Headers(&headers), body, now + 301),
                Err(InboundError::Signature(WebhookError::Stale { .. }))
            ),
            "{name}: a replay after the tolerance must be refused"
        );
        seen += 1;
    }
    assert_eq!(
        seen, 6,
        "a succeeded and a failed webhook per provider that sends them"
    );
}
