//! Translation cost against the OpenAI → OpenAI fast path (a top-level `model` patch).
//!
//! Run: `cargo bench -p switchyard-core --bench translate -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard_core::json_patch::patch_top_level;
use switchyard_core::providers::ProviderKind;
use switchyard_core::stream::{ResponseStream, TranslatingStream};
use switchyard_core::{ingress, Dialect};

/// A ~1 KB chat request: system prompt, a short multi-turn history, one tool.
const REQUEST: &str = r#"{"model":"public-model","temperature":0.3,"max_tokens":512,"messages":[
{"role":"system","content":"You are a concise assistant for a travel company. Answer in two sentences at most and never invent prices."},
{"role":"user","content":"I am flying from Lisbon to Tokyo in March. Which airports should I consider, and how long is the trip?"},
{"role":"assistant","content":"Tokyo has two airports, Haneda (HND) and Narita (NRT); Haneda is closer to the city. Flights from Lisbon take about 17 to 20 hours with one stop."},
{"role":"user","content":"What is the weather like there in March? Please check before answering."}],
"tools":[{"type":"function","function":{"name":"get_weather","description":"Average weather for a city and month","parameters":{"type":"object","properties":{"city":{"type":"string"},"month":{"type":"string"}},"required":["city","month"]}}}],
"tool_choice":"auto","user":"customer-42"}"#;

const RESPONSE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"March in Tokyo is mild, around 10 to 14 °C, with cherry blossoms late in the month."},{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"city":"Tokyo","month":"March"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":310,"cache_read_input_tokens":128,"output_tokens":52}}"#;

/// An Anthropic stream of exactly 100 events, delivered one event per chunk.
fn anthropic_stream_chunks() -> Vec<Vec<u8>> {
    let mut events = vec![
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}

"#
        .to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
    ];
    for i in 0..95 {
        events.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} \"}}}}\n\n"
        ));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
    );
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
    events.insert(
        events.len() - 1,
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":95}}\n\n".into(),
    );
    events.into_iter().map(String::into_bytes).collect()
}

/// An OpenAI chunk stream of exactly 100 events (role, 96 text deltas, finish, usage,
/// `[DONE]`), delivered one event per chunk.
fn openai_stream_chunks() -> Vec<Vec<u8>> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut events = vec![chunk("{\"role\":\"assistant\",\"content\":\"\"}", "null")];
    for i in 0..96 {
        events.push(chunk(&format!("{{\"content\":\"token {i} \"}}"), "null"));
    }
    events.push(chunk("{}", "\"stop\""));
    events.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":25,\"completion_tokens\":96,\"total_tokens\":121}}\n\n".into());
    events.push("data: [DONE]\n\n".into());
    events.into_iter().map(String::into_bytes).collect()
}

/// The encoder context of a bench stream.
fn context(include_usage: bool) -> ingress::AnswerContext<'static> {
    ingress::AnswerContext {
        id: "id",
        model: "m",
        created: 0,
        include_usage,
        request: b"{}",
    }
}

fn benches(c: &mut Criterion) {
    let request = REQUEST.as_bytes();
    c.bench_function("fast_path_openai_patch", |b| {
        b.iter(|| {
            patch_top_level(
                black_box(request),
                &[("model", "\"gpt-4o-mini\"".to_string())],
            )
            .unwrap()
        })
    });
    c.bench_function("openai_to_anthropic_request", |b| {
        b.iter(|| {
            let req = ingress::decode_chat(Dialect::OpenAi, black_box(request)).unwrap();
            ProviderKind::Anthropic
                .build_chat(&req, "claude-sonnet-4-20250514")
                .unwrap()
        })
    });
    let response = RESPONSE.as_bytes();
    c.bench_function("anthropic_response_to_openai", |b| {
        b.iter(|| {
            let resp = ProviderKind::Anthropic
                .parse_chat(black_box(response))
                .unwrap();
            ingress::encode_chat_response(Dialect::OpenAi, &resp, b"{}")
        })
    });
    let chunks = anthropic_stream_chunks();
    assert_eq!(chunks.len(), 100);
    c.bench_function("anthropic_stream_100_chunks_to_openai", |b| {
        b.iter(|| {
            let mut s = TranslatingStream::new(
                ProviderKind::Anthropic.stream_decoder(),
                ingress::stream_encoder(Dialect::OpenAi, &context(true)),
            );
            let mut n = 0;
            for chunk in &chunks {
                n += s.push(black_box(chunk)).len();
            }
            n += s.finish().len();
            assert!(!s.failed());
            n
        })
    });
    let chunks = openai_stream_chunks();
    assert_eq!(chunks.len(), 100);
    c.bench_function("openai_stream_100_chunks_to_anthropic", |b| {
        b.iter(|| {
            let mut s = TranslatingStream::new(
                ProviderKind::Openai.stream_decoder(),
                ingress::stream_encoder(Dialect::Anthropic, &context(false)),
            );
            let mut n = 0;
            for chunk in &chunks {
                n += s.push(black_box(chunk)).len();
            }
            n += s.finish().len();
            assert!(!s.failed());
            n
        })
    });
}

criterion_group!(translate, benches);
criterion_main!(translate);
