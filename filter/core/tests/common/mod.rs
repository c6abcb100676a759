//! Helpers shared by the integration tests: fixtures, golden files, stream drivers, a
//! deterministic PRNG and client-side stream accumulators.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use serde_json::Value;
use switchyard_core::exchange::Action;
use switchyard_core::ingress;
use switchyard_core::providers::ProviderKind;
use switchyard_core::stream::{ResponseStream, StreamEvent, TranslatingStream};
use switchyard_core::Dialect;

/// Path of a fixture file.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Bytes of a fixture file.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Compares `actual` with the golden file `name`; `SWITCHYARD_BLESS=1` rewrites it.
pub fn golden(name: &str, actual: &[u8]) {
    let path = fixture_path(name);
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("golden {name} missing ({e}); run with SWITCHYARD_BLESS=1"));
    // JSON is compared as values, SSE event by event: key order is not meaning, and a
    // workspace build that unifies serde_json's `preserve_order` feature changes it.
    let same = if name.ends_with(".json") {
        serde_json::from_slice::<Value>(&expected).ok()
            == Some(serde_json::from_slice::<Value>(actual).expect("actual is JSON"))
    } else if name.ends_with(".sse") {
        sse_frames(&expected) == sse_frames(actual)
    } else {
        expected == actual
    };
    if !same {
        panic!(
            "golden {name} differs.\n--- expected\n{}\n--- actual\n{}",
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(actual)
        );
    }
}

/// Pretty JSON with a trailing newline, for readable golden diffs.
pub fn pretty(bytes: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(bytes).expect("valid JSON");
    let mut out = serde_json::to_vec_pretty(&v).unwrap();
    out.push(b'\n');
    out
}

/// Golden for a JSON value.
pub fn golden_json(name: &str, value: &Value) {
    golden(name, &pretty(&serde_json::to_vec(value).unwrap()));
}

/// The id a plan gives an answer in `dialect`, fixed for goldens.
pub fn gateway_id(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::OpenAi => "chatcmpl-gw",
        Dialect::Anthropic => "msg_gw",
        Dialect::Responses => "resp_gw",
        Dialect::Gemini => "gw-response-id",
    }
}

/// The client request whose settings Responses answers echo in the goldens.
pub const RESPONSES_REQUEST: &[u8] = br#"{"model":"public-model","input":"hi","instructions":"Be brief.","tools":[{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}},"strict":null}],"temperature":0.2}"#;

/// The stream translator a plan would build, with fixed id/model/created.
pub fn translator(kind: ProviderKind, dialect: Dialect, include_usage: bool) -> TranslatingStream {
    TranslatingStream::new(
        kind.stream_decoder(),
        ingress::stream_encoder(
            dialect,
            &ingress::AnswerContext {
                id: gateway_id(dialect),
                model: "public-model",
                created: 1_700_000_000,
                include_usage,
                request: RESPONSES_REQUEST,
            },
        ),
    )
}

/// Translates an upstream stream delivered in `chunks`; returns the client bytes.
pub fn translate_chunks(
    kind: ProviderKind,
    dialect: Dialect,
    include_usage: bool,
    chunks: &[&[u8]],
) -> (Vec<u8>, switchyard_core::canonical::TokenUsage, bool) {
    let mut t = translator(kind, dialect, include_usage);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(t.push(c));
    }
    out.extend(t.finish());
    (out, t.usage(), t.failed())
}

/// Canonical events of a whole upstream stream.
pub fn decode_events(kind: ProviderKind, bytes: &[u8]) -> Vec<StreamEvent> {
    let mut d = kind.stream_decoder();
    let mut out = Vec::new();
    d.push(bytes, &mut out).expect("decodes");
    d.finish(&mut out).expect("finishes");
    out
}

/// xorshift64*: a tiny deterministic PRNG so chunkings are reproducible by seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Splits `bytes` into random chunks (1..=max bytes each, some empty).
pub fn random_chunks(bytes: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
    let mut rng = Rng::new(seed);
    let mut chunks = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = if rng.below(10) == 0 {
            0
        } else {
            1 + rng.below(max.min(rest.len()))
        };
        let (head, tail) = rest.split_at(n);
        chunks.push(head);
        rest = tail;
    }
    chunks
}

/// Parses client SSE bytes into (event name, JSON data) pairs; `[DONE]` becomes a string.
pub fn sse_frames(bytes: &[u8]) -> Vec<(Option<String>, Value)> {
    let mut parser = switchyard_core::sse::SseParser::new();
    let mut events = Vec::new();
    parser.push(bytes, &mut events).unwrap();
    parser.finish(&mut events).unwrap();
    events
        .into_iter()
        .map(|e| {
            let v = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone()));
            (e.event, v)
        })
        .collect()
}

/// What a client ends up with after consuming a stream.
#[derive(Debug, Default, PartialEq)]
pub struct Final {
    pub text: String,
    /// (id, name, arguments JSON text) in order.
    pub tool_calls: Vec<(String, String, String)>,
    pub finish: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub error: Option<Value>,
}

/// Accumulates an OpenAI chunk stream as the OpenAI SDK does, checking its framing.
pub fn accumulate_openai(bytes: &[u8]) -> Final {
    let mut f = Final::default();
    let frames = sse_frames(bytes);
    for (i, (_, v)) in frames.iter().enumerate() {
        if v == "[DONE]" {
            assert_eq!(i, frames.len() - 1, "[DONE] must be last");
            continue;
        }
        if let Some(err) = v.get("error") {
            f.error = Some(err.clone());
            continue;
        }
        if v["object"] == "" && v["choices"] == serde_json::json!([]) {
            // Azure's first chunk: the prompt filter's verdict, nothing for the SDK.
            assert!(v.get("prompt_filter_results").is_some(), "{v}");
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            f.input_tokens = u["prompt_tokens"].as_u64().unwrap();
            f.output_tokens = u["completion_tokens"].as_u64().unwrap();
        }
        let Some(choice) = v["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str() {
            f.text.push_str(t);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if f.tool_calls.len() <= index {
                f.tool_calls.resize(index + 1, Default::default());
            }
            let entry = &mut f.tool_calls[index];
            if let Some(id) = call["id"].as_str() {
                entry.0 = id.to_string();
            }
            if let Some(name) = call["function"]["name"].as_str() {
                entry.1.push_str(name);
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                entry.2.push_str(args);
            }
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            f.finish = Some(r.to_string());
        }
    }
    f
}

/// Accumulates an Anthropic event stream as the Anthropic SDK does, asserting the protocol:
/// `message_start` first, blocks opened and closed in order, deltas only to open blocks,
/// one `message_delta`, `message_stop` last; or an `error` event that ends it.
pub fn accumulate_anthropic(bytes: &[u8]) -> Final {
    let mut f = Final::default();
    let frames = sse_frames(bytes);
    let mut open: Option<u64> = None;
    let mut next_index = 0u64;
    let mut started = false;
    let mut stopped = false;
    let mut kinds: Vec<String> = Vec::new();
    for (i, (name, v)) in frames.iter().enumerate() {
        let t = v["type"].as_str().expect("every event has a type");
        assert_eq!(name.as_deref(), Some(t), "event name matches data type");
        assert!(!stopped, "nothing after message_stop");
        if t == "error" {
            assert_eq!(i, frames.len() - 1, "error ends the stream");
            f.error = Some(v["error"].clone());
            continue;
        }
        if t != "ping" {
            assert_eq!(
                started,
                t != "message_start",
                "message_start comes first, once"
            );
        }
        match t {
            "message_start" => {
                started = true;
                let m = &v["message"];
                assert_eq!(m["type"], "message");
                assert_eq!(m["role"], "assistant");
                f.input_tokens = m["usage"]["input_tokens"].as_u64().unwrap();
            }
            "content_block_start" => {
                assert!(open.is_none(), "previous block closed first");
                let index = v["index"].as_u64().unwrap();
                assert_eq!(index, next_index, "blocks are numbered in order");
                next_index += 1;
                open = Some(index);
                let block = &v["content_block"];
                let kind = block["type"].as_str().unwrap().to_string();
                if kind == "tool_use" {
                    f.tool_calls.push((
                        block["id"].as_str().unwrap().to_string(),
                        block["name"].as_str().unwrap().to_string(),
                        String::new(),
                    ));
                }
                kinds.push(kind);
            }
            "content_block_delta" => {
                let index = v["index"].as_u64().unwrap();
                assert_eq!(open, Some(index), "delta to the open block");
                let d = &v["delta"];
                match d["type"].as_str().unwrap() {
                    "text_delta" => {
                        assert_eq!(kinds[index as usize], "text");
                        f.text.push_str(d["text"].as_str().unwrap());
                    }
                    "input_json_delta" => {
                        assert_eq!(kinds[index as usize], "tool_use");
                        f.tool_calls
                            .last_mut()
                            .unwrap()
                            .2
                            .push_str(d["partial_json"].as_str().unwrap());
                    }
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                assert_eq!(
                    open.take(),
                    v["index"].as_u64(),
                    "stop closes the open block"
                );
            }
            "message_delta" => {
                assert!(open.is_none(), "blocks closed before message_delta");
                assert!(f.finish.is_none(), "one message_delta");
                f.finish = v["delta"]["stop_reason"].as_str().map(str::to_string);
                f.output_tokens = v["usage"]["output_tokens"].as_u64().unwrap();
                if let Some(n) = v["usage"]["input_tokens"].as_u64() {
                    f.input_tokens = n;
                }
            }
            "message_stop" => {
                assert!(f.finish.is_some(), "message_delta before message_stop");
                stopped = true;
            }
            "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    if f.error.is_none() {
        assert!(stopped, "a successful stream ends with message_stop");
    }
    f
}

/// Accumulates a Responses event stream as the official SDK's `ResponseStreamState` does,
/// asserting its protocol: `response.created` first, `sequence_number`s counting from 0,
/// event name = data `type`, the same response id on every lifecycle event, output items
/// added once in `output_index` order, text deltas only to an added message's added part,
/// argument deltas only to an added function call, every added item done (with the same
/// identity) before `response.completed` / `response.incomplete`, which end the stream; or
/// `response.failed`, which ends it with an error.
pub fn accumulate_responses(bytes: &[u8]) -> Final {
    let mut f = Final::default();
    let frames = sse_frames(bytes);
    let mut id: Option<String> = None;
    // output_index → (type, item id, call id, accumulated text/arguments, done)
    let mut items: Vec<(String, String, String, String, bool)> = Vec::new();
    let mut ended = false;
    for (seq, (name, v)) in frames.iter().enumerate() {
        assert!(!ended, "nothing after the terminal event: {v}");
        let t = v["type"].as_str().expect("every event has a type");
        assert_eq!(name.as_deref(), Some(t), "event name matches data type");
        assert_eq!(v["sequence_number"].as_u64(), Some(seq as u64), "{t}");
        if seq == 0 {
            assert_eq!(t, "response.created", "response.created comes first");
        }
        if let Some(r) = v.get("response") {
            let rid = r["id"].as_str().expect("response id").to_string();
            assert!(rid.starts_with("resp_"), "{rid}");
            assert_eq!(id.get_or_insert(rid.clone()), &rid, "lifecycle id changed");
            assert_eq!(r["object"], "response");
        }
        let index = v["output_index"].as_u64().map(|i| i as usize);
        match t {
            "response.created" | "response.in_progress" => {
                assert_eq!(v["response"]["status"], "in_progress");
                assert_eq!(v["response"]["output"], serde_json::json!([]));
            }
            "response.output_item.added" => {
                let index = index.unwrap();
                assert_eq!(index, items.len(), "items added in output order");
                let item = &v["item"];
                let kind = item["type"].as_str().unwrap().to_string();
                assert_eq!(item["status"], "in_progress");
                let item_id = item["id"].as_str().unwrap().to_string();
                let call_id = item["call_id"].as_str().unwrap_or("").to_string();
                if kind == "function_call" {
                    f.tool_calls.push((
                        call_id.clone(),
                        item["name"].as_str().unwrap().to_string(),
                        String::new(),
                    ));
                } else {
                    assert_eq!(kind, "message");
                    assert_eq!(item["content"], serde_json::json!([]));
                }
                items.push((kind, item_id, call_id, String::new(), false));
            }
            "response.content_part.added" => {
                let item = &items[index.unwrap()];
                assert_eq!(
                    (item.0.as_str(), v["item_id"].as_str()),
                    ("message", Some(item.1.as_str()))
                );
                assert_eq!(v["content_index"], 0);
                assert_eq!(v["part"]["type"], "output_text");
            }
            "response.output_text.delta" => {
                let item = &mut items[index.unwrap()];
                assert!(!item.4, "delta to a done item");
                assert_eq!(v["item_id"].as_str(), Some(item.1.as_str()));
                let d = v["delta"].as_str().unwrap();
                item.3.push_str(d);
                f.text.push_str(d);
            }
            "response.output_text.done" | "response.content_part.done" => {
                let item = &items[index.unwrap()];
                let text = v["text"].as_str().or(v["part"]["text"].as_str()).unwrap();
                assert_eq!(text, item.3, "{t} repeats the whole text");
            }
            "response.function_call_arguments.delta" => {
                let index = index.unwrap();
                let item = &mut items[index];
                assert_eq!(item.0, "function_call");
                assert!(!item.4, "delta to a done item");
                item.3.push_str(v["delta"].as_str().unwrap());
                let pos = items[..index]
                    .iter()
                    .filter(|i| i.0 == "function_call")
                    .count();
                f.tool_calls[pos].2.push_str(v["delta"].as_str().unwrap());
            }
            "response.function_call_arguments.done" => {
                let item = &items[index.unwrap()];
                assert_eq!(v["arguments"].as_str(), Some(item.3.as_str()));
            }
            "response.output_item.done" => {
                let item = &mut items[index.unwrap()];
                let done = &v["item"];
                assert_eq!(done["type"].as_str(), Some(item.0.as_str()), "same type");
                assert_eq!(done["id"].as_str(), Some(item.1.as_str()), "same id");
                assert_eq!(done["status"], "completed");
                if item.0 == "function_call" {
                    assert_eq!(done["call_id"].as_str(), Some(item.2.as_str()));
                    assert_eq!(done["arguments"].as_str(), Some(item.3.as_str()));
                } else {
                    assert_eq!(done["content"][0]["text"].as_str(), Some(item.3.as_str()));
                }
                item.4 = true;
            }
            "response.completed" | "response.incomplete" => {
                assert!(items.iter().all(|i| i.4), "every item done before {t}");
                let r = &v["response"];
                assert_eq!(r["output"].as_array().unwrap().len(), items.len());
                let status = r["status"].as_str().unwrap();
                assert_eq!(format!("response.{status}"), t);
                f.finish = Some(match r["incomplete_details"]["reason"].as_str() {
                    Some(reason) => reason.to_string(),
                    None if f.tool_calls.is_empty() => "completed".into(),
                    None => "tool_calls".into(),
                });
                f.input_tokens = r["usage"]["input_tokens"].as_u64().unwrap();
                f.output_tokens = r["usage"]["output_tokens"].as_u64().unwrap();
                ended = true;
            }
            "response.failed" => {
                assert_eq!(v["response"]["status"], "failed");
                f.error = Some(v["response"]["error"].clone());
                ended = true;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(ended, "a Responses stream ends with a terminal event");
    f
}

/// Accumulates a client stream in `dialect`'s protocol.
pub fn accumulate(dialect: Dialect, bytes: &[u8]) -> Final {
    match dialect {
        Dialect::OpenAi => accumulate_openai(bytes),
        Dialect::Anthropic => accumulate_anthropic(bytes),
        Dialect::Responses => accumulate_responses(bytes),
        Dialect::Gemini => accumulate_gemini(bytes),
    }
}

/// What kind of failure a client's error object reports, read the way its SDK reads it:
/// `bad_gateway` for an upstream failure (OpenAI and Anthropic `api_error`, Responses
/// `server_error`), else the dialect's own type or code.
pub fn error_type(dialect: Dialect, err: &Value) -> String {
    let raw = match dialect {
        Dialect::OpenAi | Dialect::Anthropic => err["type"].as_str(),
        Dialect::Responses => err["code"].as_str(),
        Dialect::Gemini => err["status"].as_str(),
    };
    match raw {
        Some("api_error" | "server_error" | "UNAVAILABLE") => "bad_gateway".to_string(),
        Some(other) => other.to_string(),
        None => format!("(no type in {err})"),
    }
}

/// Accumulates a Gemini `alt=sse` stream as the `google-genai` SDK does, asserting its
/// shape: no `event:` names, every chunk a `GenerateContentResponse` with one candidate
/// whose content is a `model` turn, every function call whole (arguments an object), the
/// same `responseId` throughout, `finishReason` only on the last chunk; or a chunk with
/// `error`, which ends the stream (the SDK raises it).
pub fn accumulate_gemini(bytes: &[u8]) -> Final {
    let mut f = Final::default();
    let frames = sse_frames(bytes);
    let mut id: Option<String> = None;
    for (i, (name, v)) in frames.iter().enumerate() {
        assert!(name.is_none(), "Gemini streams have no event names");
        assert!(
            f.finish.is_none(),
            "nothing after the chunk with finishReason"
        );
        if let Some(err) = v.get("error") {
            assert_eq!(i, frames.len() - 1, "an error ends the stream");
            assert!(err["code"].is_u64() && err["status"].is_string(), "{err}");
            f.error = Some(err.clone());
            continue;
        }
        let rid = v["responseId"].as_str().expect("responseId").to_string();
        assert_eq!(id.get_or_insert(rid.clone()), &rid, "responseId changed");
        let candidates = v["candidates"].as_array().expect("candidates");
        assert_eq!(candidates.len(), 1);
        let c = &candidates[0];
        assert_eq!(c["content"]["role"], "model");
        for part in c["content"]["parts"].as_array().expect("parts") {
            if let Some(t) = part["text"].as_str() {
                f.text.push_str(t);
            } else if let Some(call) = part.get("functionCall") {
                assert!(call["args"].is_object(), "arguments arrive whole: {call}");
                f.tool_calls.push((
                    call["id"].as_str().unwrap_or("").to_string(),
                    call["name"].as_str().unwrap().to_string(),
                    call["args"].to_string(),
                ));
            } else {
                panic!("unexpected part {part}");
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            f.input_tokens = u["promptTokenCount"].as_u64().unwrap();
            f.output_tokens = u["candidatesTokenCount"].as_u64().unwrap();
        }
        if let Some(reason) = c["finishReason"].as_str() {
            f.finish = Some(reason.to_string());
        }
    }
    if f.error.is_none() {
        assert!(
            f.finish.is_some(),
            "a successful stream ends with finishReason"
        );
    }
    f
}

/// The first value of header `name` in a header list.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The local reply among a host's actions: status, JSON body (null when not JSON), headers.
pub fn reply(actions: &[Action]) -> (u16, Value, Vec<(String, String)>) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Reply(r) => Some((
                r.status,
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                r.headers.clone(),
            )),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no reply in {actions:?}"))
}
