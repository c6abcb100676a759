//! Helpers shared by the integration tests: fixtures, golden files, stream drivers, a
//! deterministic PRNG and client-side stream accumulators.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use serde_json::Value;
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

/// The stream translator a plan would build, with fixed id/model/created.
pub fn translator(kind: ProviderKind, dialect: Dialect, include_usage: bool) -> TranslatingStream {
    let id = match dialect {
        Dialect::OpenAi => "chatcmpl-gw",
        Dialect::Anthropic => "msg_gw",
    };
    TranslatingStream::new(
        kind.stream_decoder(),
        ingress::stream_encoder(
            dialect,
            id.to_string(),
            "public-model".to_string(),
            1_700_000_000,
            include_usage,
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
