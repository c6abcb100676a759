//! OpenAI's media endpoints through the request lifecycle: images, speech and
//! transcriptions routed to OpenAI-shaped and Azure deployments, the multipart body forwarded
//! with its boundary and audio intact, audio bytes and their content type passed back, media
//! units metered, and every refusal in OpenAI's error shape.

mod common;

use common::{header, reply};
use serde_json::{json, Value};
use switchyard_core::exchange::{Action, Ctx, Ending, Event, Exchange, UpstreamHead};
use switchyard_core::health::MemoryHealthStore;
use switchyard_core::keys::hash_key;
use switchyard_core::limits::MemoryCounters;
use switchyard_core::usage::UsageRecord;
use switchyard_core::{Gateway, RequestHead};

const KEY: &str = "sk-media-test";
const BOUNDARY: &str = "sy-boundary-7d1f";

fn gateway() -> Gateway {
    gateway_with(|_| {})
}

fn gateway_with(change: impl FnOnce(&mut Value)) -> Gateway {
    let mut config = json!({
        "keys": [{"id": "k1", "sha256": hash_key(KEY), "models": ["*"]}],
        "providers": {
            "openai": {"kind": "openai", "base_url": "http://oa.test"},
            "az": {"kind": "azure", "base_url": "https://az.test", "api_key_secret": "AZ_KEY"},
            "anthropic": {"kind": "anthropic", "base_url": "http://an.test", "api_key_secret": "AN_KEY"}
        },
        "models": [
            {"name": "img", "deployments": [
                {"provider": "openai", "model": "gpt-image-1", "price": {"image": 0.04}}]},
            {"name": "tts", "deployments": [{"catalog": "openai/gpt-4o-mini-tts"}]},
            {"name": "stt", "deployments": [
                {"provider": "az", "model": "whisper-deploy", "price": {"second": 0.0001}}]},
            {"name": "chat", "deployments": [{"catalog": "openai/gpt-4.1"}]},
            {"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-x"}]}
        ],
        "limits": {"max_request_bytes": 12000}
    });
    change(&mut config);
    Gateway::from_json(&serde_json::to_vec(&config).unwrap())
        .unwrap()
        .resolve_secrets(&|_| Some("secret".to_string()))
}

struct Host {
    gw: Gateway,
    health: MemoryHealthStore,
    counters: MemoryCounters,
    ex: Exchange,
}

impl Host {
    fn new() -> Self {
        Host {
            gw: gateway(),
            health: MemoryHealthStore::default(),
            counters: MemoryCounters::default(),
            ex: Exchange::new(),
        }
    }

    fn feed(&mut self, event: Event<'_>) -> Vec<Action> {
        let cx = Ctx {
            now_ms: 1_700_000_000_000,
            random: 7,
            health: &self.health,
            counters: &self.counters,
        };
        self.ex.handle(&self.gw, event, &cx)
    }

    fn request(&mut self, path: &str, body: &[u8]) -> Vec<Action> {
        let auth = format!("Bearer {KEY}");
        let actions = self.feed(Event::RequestHead(RequestHead {
            method: "POST",
            path,
            authorization: Some(&auth),
            content_length: Some(body.len() as u64),
            ..Default::default()
        }));
        if !matches!(actions.as_slice(), [Action::ReadBody { .. }]) {
            return actions;
        }
        self.feed(Event::RequestBody(body))
    }

    fn answer(&mut self, content_type: &str, body: &[u8]) -> Vec<Action> {
        let actions = self.feed(Event::UpstreamHead(UpstreamHead {
            status: 200,
            content_type: Some(content_type),
            ..Default::default()
        }));
        assert_eq!(actions, [Action::ReadUpstreamBody]);
        self.feed(Event::UpstreamBody(body))
    }

    fn finish(&mut self) -> UsageRecord {
        let cx = Ctx {
            now_ms: 1_700_000_000_500,
            random: 7,
            health: &self.health,
            counters: &self.counters,
        };
        self.ex.finish(Ending::default(), &cx).expect("one record")
    }
}

fn sent(actions: &[Action]) -> &switchyard_core::gateway::UpstreamRequest {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send(s) => Some(&s.request),
            _ => None,
        })
        .unwrap_or_else(|| panic!("nothing sent: {actions:?}"))
}

fn raw_reply(actions: &[Action]) -> &switchyard_core::LocalReply {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Reply(r) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no reply: {actions:?}"))
}

/// A 0.25 s, 16 kHz mono 16-bit PCM WAV file.
fn wav() -> Vec<u8> {
    let samples = 4000u32;
    let mut w = b"RIFF".to_vec();
    w.extend_from_slice(&(36 + samples * 2).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&[1, 0, 1, 0]);
    w.extend_from_slice(&16_000u32.to_le_bytes());
    w.extend_from_slice(&32_000u32.to_le_bytes());
    w.extend_from_slice(&[2, 0, 16, 0]);
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(samples * 2).to_le_bytes());
    w.extend((0..samples).flat_map(|i| ((i as i16).wrapping_mul(37)).to_le_bytes()));
    w
}

fn multipart(fields: &[(&str, &[u8])], file: Option<&[u8]>) -> Vec<u8> {
    let files: Vec<_> = file
        .map(|f| ("file", "speech.wav", "audio/wav", f))
        .into_iter()
        .collect();
    form(fields, &files)
}

/// A multipart form: text fields, then files as (name, filename, content type, bytes).
fn form(fields: &[(&str, &[u8])], files: &[(&str, &str, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, filename, content_type, data) in files {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

#[test]
fn images_go_to_openai_and_are_metered_per_image() {
    let mut h = Host::new();
    let actions = h.request(
        "/v1/images/generations",
        br#"{"model":"img","prompt":"a lighthouse","n":2,"response_format":"b64_json"}"#,
    );
    let req = sent(&actions);
    assert_eq!(
        (req.authority.as_str(), req.path.as_str()),
        ("oa.test", "/v1/images/generations")
    );
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["model"], "gpt-image-1");
    assert_eq!(body["prompt"], "a lighthouse");
    let answer = br#"{"created":1713833628,"data":[{"b64_json":"iVBORw0KGgo="},{"b64_json":"iVBORw0KGgo="}],"usage":{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40}}}"#;
    let (status, json, headers) = reply(&h.answer("application/json", answer));
    assert_eq!(status, 200);
    assert_eq!(json["data"].as_array().unwrap().len(), 2);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let record = h.finish();
    assert_eq!(
        (record.images, record.input_tokens, record.output_tokens),
        (2, 50, 50)
    );
    assert!((record.cost - 0.08).abs() < 1e-9, "{}", record.cost);
}

#[test]
fn speech_bytes_and_their_content_type_pass_through() {
    let mut h = Host::new();
    let actions = h.request(
        "/v1/audio/speech",
        br#"{"model":"tts","input":"hello there","voice":"alloy","response_format":"wav"}"#,
    );
    let req = sent(&actions);
    assert_eq!(req.path, "/v1/audio/speech");
    assert_eq!(
        serde_json::from_slice::<Value>(&req.body).unwrap()["model"],
        "gpt-4o-mini-tts"
    );
    let audio = wav();
    let actions = h.answer("audio/wav", &audio);
    let r = raw_reply(&actions);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, audio, "audio bytes unchanged");
    assert_eq!(header(&r.headers, "content-type"), Some("audio/wav"));
    let record = h.finish();
    assert_eq!(record.media_seconds, 0.25);
    // The catalog's per-second price.
    assert!(
        (record.cost - 0.25 * 0.00025).abs() < 1e-12,
        "{}",
        record.cost
    );
}

#[test]
fn a_transcription_reaches_azure_with_its_multipart_body_intact() {
    let mut h = Host::new();
    let audio = wav();
    let body = multipart(
        &[("model", b"stt"), ("response_format", b"verbose_json")],
        Some(&audio),
    );
    let actions = h.request("/v1/audio/transcriptions", &body);
    let req = sent(&actions);
    assert_eq!(req.authority, "az.test");
    assert_eq!(
        req.path,
        "/openai/deployments/whisper-deploy/audio/transcriptions?api-version=2024-10-21"
    );
    assert_eq!(
        header(&req.headers, "content-type"),
        Some(format!("multipart/form-data; boundary={BOUNDARY}").as_str())
    );
    assert_eq!(header(&req.headers, "api-key"), Some("secret"));
    // Only the model's value changed: the audio and the boundaries are the client's bytes.
    let expected = multipart(
        &[
            ("model", b"whisper-deploy"),
            ("response_format", b"verbose_json"),
        ],
        Some(&audio),
    );
    assert_eq!(req.body, expected);
    let answer = br#"{"task":"transcribe","language":"english","duration":0.25,"text":"Hello there.","segments":[]}"#;
    let (status, json, _) = reply(&h.answer("application/json", answer));
    assert_eq!((status, json["text"].as_str()), (200, Some("Hello there.")));
    let record = h.finish();
    assert_eq!(record.media_seconds, 0.25);
    assert!(
        (record.cost - 0.25 * 0.0001).abs() < 1e-12,
        "{}",
        record.cost
    );
}

#[test]
fn a_text_transcription_answer_is_text() {
    let mut h = Host::new();
    let body = multipart(
        &[("model", b"stt"), ("response_format", b"text")],
        Some(b"RIFF"),
    );
    h.request("/v1/audio/transcriptions", &body);
    let actions = h.answer("text/plain; charset=utf-8", b"Hello there.\n");
    let r = raw_reply(&actions);
    assert_eq!(r.body, b"Hello there.\n");
    assert_eq!(
        header(&r.headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn bad_media_requests_are_refused_in_openai_shape() {
    let audio = wav();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/images/generations",
            br#"{"model":"nope","prompt":"x"}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (
            "/v1/images/generations",
            br#"{"model":"chat","prompt":"x"}"#.to_vec(),
            400,
            "unsupported_by_model",
        ),
        (
            "/v1/images/generations",
            br#"{"model":"claude","prompt":"x"}"#.to_vec(),
            400,
            "unsupported_by_model",
        ),
        (
            "/v1/audio/speech",
            br#"{"model":"tts","input":"x"}"#.to_vec(),
            400,
            "",
        ),
        (
            "/v1/audio/transcriptions",
            b"--sy-boundary-7d1f\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nstt"
                .to_vec(),
            400,
            "",
        ),
        (
            "/v1/audio/transcriptions",
            multipart(&[("model", b"stt")], Some(&[audio.as_slice(); 2].concat())),
            413,
            "request_too_large",
        ),
    ];
    for (path, body, status, code) in cases {
        let mut h = Host::new();
        let actions = h.request(path, &body);
        let (got, json, _) = reply(&actions);
        assert_eq!(got, status, "{path}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        if !code.is_empty() {
            assert_eq!(json["error"]["code"], code, "{json}");
        }
    }
}

#[test]
fn an_async_transcription_goes_to_the_task_plane_with_its_form_intact() {
    let mut h = Host::new();
    h.gw = gateway_with(|c| {
        c["tasks"] = json!({"base_url": "http://tasks.test", "token_secret": "EDGE_TOKEN"});
    });
    let body = multipart(&[("model", b"stt")], Some(&wav()));
    let auth = format!("Bearer {KEY}");
    let forwarded = [
        ("prefer", "respond-async"),
        (
            "content-type",
            "multipart/form-data; boundary=sy-boundary-7d1f",
        ),
    ];
    let head = |forwarded| RequestHead {
        method: "POST",
        path: "/v1/audio/transcriptions",
        authorization: Some(&auth),
        forwarded,
        ..Default::default()
    };
    let actions = h.feed(Event::RequestHead(head(&forwarded)));
    assert!(
        matches!(actions.as_slice(), [Action::ReadBody { .. }]),
        "{actions:?}"
    );
    let actions = h.feed(Event::RequestBody(&body));
    let req = sent(&actions);
    assert_eq!(req.authority, "tasks.test");
    assert_eq!(
        header(&req.headers, "x-switchyard-operation"),
        Some("audio.transcriptions")
    );
    assert_eq!(
        header(&req.headers, "content-type"),
        Some("multipart/form-data; boundary=sy-boundary-7d1f")
    );
    assert_eq!(
        req.body, body,
        "the form reaches the task plane byte for byte"
    );

    // The model is checked at the edge, read from the form.
    let mut h2 = Host::new();
    h2.gw = h.gw.clone();
    h2.feed(Event::RequestHead(head(&forwarded)));
    let unknown = multipart(&[("model", b"no-such")], Some(b"RIFF"));
    let (status, json, _) = reply(&h2.feed(Event::RequestBody(&unknown)));
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

/// A gateway whose `flux` model is served by an asynchronous provider, with a task plane.
fn facade_gateway() -> Gateway {
    gateway_with(|c| {
        c["providers"]["ws"] = json!({"kind": "wavespeed", "api_key_secret": "WS_KEY"});
        c["providers"]["veo"] = json!({"kind": "veo", "api_key_secret": "VEO_KEY"});
        c["models"].as_array_mut().unwrap().extend([
            json!({"name": "flux", "fallback": {"total_timeout_ms": 45000},
                   "deployments": [{"provider": "ws", "model": "wavespeed-ai/flux-dev"}]}),
            json!({"name": "veo-3",
                   "deployments": [{"provider": "veo", "model": "veo-3.0-generate-001"}]}),
        ]);
        c["tasks"] = json!({"base_url": "http://tasks.test", "token_secret": "EDGE_TOKEN",
                            "call_timeout_ms": 5000});
    })
}

#[test]
fn images_of_an_async_provider_model_wait_on_the_task_plane() {
    let mut h = Host::new();
    h.gw = facade_gateway();
    let body = br#"{"model":"flux","prompt":"a cat","n":2,"size":"1024x1024"}"#;
    let actions = h.request("/v1/images/generations", body);
    let send = actions
        .iter()
        .find_map(|a| match a {
            Action::Send(s) => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| panic!("nothing sent: {actions:?}"));
    let req = &send.request;
    assert_eq!(
        (req.authority.as_str(), req.path.as_str()),
        ("tasks.test", "/v1/tasks")
    );
    assert_eq!(
        header(&req.headers, "x-switchyard-operation"),
        Some("images.generations")
    );
    assert_eq!(header(&req.headers, "prefer"), None, "synchronous");
    assert_eq!(header(&req.headers, "x-switchyard-wait-ms"), Some("45000"));
    // The task plane answers by itself at the end of the wait; the call outlives it.
    assert_eq!(req.timeout_ms, 45000 + 5000);
    let task_id = header(&req.headers, "x-switchyard-task-id")
        .expect("the edge names the task")
        .to_string();
    assert!(task_id.starts_with("task_") && task_id.len() == 29);
    assert_eq!(req.body, body.to_vec(), "the endpoint's request as sent");

    let answer = br#"{"created":1,"data":[{"url":"https://p.test/0.png"}]}"#;
    let out = raw_reply(&h.answer("application/json", answer)).clone();
    assert_eq!(out.status, 200);
    assert_eq!(out.body, answer.to_vec());
    assert_eq!(
        header(&out.headers, "x-switchyard-task-id"),
        Some(task_id.as_str())
    );
    let record = h.finish();
    assert_eq!((record.status, record.model.as_str()), (200, "flux"));
    assert_eq!(record.cost, 0.0, "the task plane meters the task");
}

#[test]
fn what_async_provider_models_cannot_answer_is_a_400() {
    for (path, body, needle) in [
        (
            "/v1/audio/speech",
            &br#"{"model":"flux","input":"hi","voice":"alloy"}"#[..],
            "/v1/audio/speech",
        ),
        (
            "/v1/images/generations",
            br#"{"model":"flux","prompt":"x","response_format":"b64_json"}"#,
            "response_format",
        ),
        (
            "/v1/images/generations",
            br#"{"model":"veo-3","prompt":"x"}"#,
            "makes video",
        ),
    ] {
        let mut h = Host::new();
        h.gw = facade_gateway();
        let (status, json, _) = reply(&h.request(path, body));
        assert_eq!(status, 400, "{path}: {json}");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
}

/// An image edit's form: fields, then each image as an `image[]` file.
fn edit_form(fields: &[(&str, &[u8])], images: &[&[u8]]) -> Vec<u8> {
    let files: Vec<_> = images
        .iter()
        .map(|data| ("image[]", "in.png", "image/png", *data))
        .collect();
    form(fields, &files)
}

#[test]
fn image_edits_reach_openai_with_their_form_intact_and_are_metered_per_image() {
    let mut h = Host::new();
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\x00\xff--sy-boundary-7d1f\r\n";
    let body = edit_form(
        &[("model", b"img"), ("prompt", b"add a hat"), ("n", b"2")],
        &[png, png],
    );
    let actions = h.request("/v1/images/edits", &body);
    let req = sent(&actions);
    assert_eq!(
        (req.authority.as_str(), req.path.as_str()),
        ("oa.test", "/v1/images/edits")
    );
    assert_eq!(
        header(&req.headers, "content-type"),
        Some(format!("multipart/form-data; boundary={BOUNDARY}").as_str())
    );
    let expected = edit_form(
        &[
            ("model", b"gpt-image-1"),
            ("prompt", b"add a hat"),
            ("n", b"2"),
        ],
        &[png, png],
    );
    assert_eq!(req.body, expected, "only the model is rewritten");
    let answer = br#"{"created":1,"data":[{"b64_json":"AA=="},{"b64_json":"AA=="}]}"#;
    let out = raw_reply(&h.answer("application/json", answer)).clone();
    assert_eq!(out.status, 200);
    let record = h.finish();
    assert_eq!(record.images, 2);
    assert!((record.cost - 2.0 * 0.04).abs() < 1e-9, "{}", record.cost);

    // No image, or a model of asynchronous providers: a 400 naming what is wrong.
    let mut h = Host::new();
    let (status, json, _) = reply(&h.request(
        "/v1/images/edits",
        &multipart(&[("model", b"img"), ("prompt", b"x")], None),
    ));
    assert_eq!(
        (status, json["error"]["param"].as_str()),
        (400, Some("image"))
    );
    let mut h = Host::new();
    h.gw = facade_gateway();
    let (status, json, _) = reply(&h.request(
        "/v1/images/edits",
        &edit_form(&[("model", b"veo-3"), ("prompt", b"x")], &[png]),
    ));
    assert_eq!(status, 400, "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("`veo-3` cannot edit images"), "{message}");

    // An edit for a model of asynchronous providers waits on the task plane, form intact.
    let mut h = Host::new();
    h.gw = facade_gateway();
    let form = edit_form(&[("model", b"flux"), ("prompt", b"x")], &[png]);
    let actions = h.request("/v1/images/edits", &form);
    let req = sent(&actions);
    assert_eq!(req.authority, "tasks.test");
    assert_eq!(
        header(&req.headers, "x-switchyard-operation"),
        Some("images.edits")
    );
    assert_eq!(
        header(&req.headers, "content-type"),
        Some(format!("multipart/form-data; boundary={BOUNDARY}").as_str())
    );
    assert_eq!(req.body, form);
}
