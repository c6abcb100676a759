//! The translation cases shared by the criterion bench (`benches/translate.rs`) and the
//! callgrind/wasm example (`examples/translate_profile.rs`): the same inputs and the same
//! per-iteration work, so criterion times, instruction counts and wasm times are comparable.

use std::hint::black_box;

use switchyard_core::json_patch::patch_top_level;
use switchyard_core::providers::bedrock::eventstream;
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

/// The same conversation as `REQUEST`, as an OpenAI Responses API request.
const RESPONSES_REQUEST: &str = r#"{"model":"public-model","temperature":0.3,"max_output_tokens":512,
"instructions":"You are a concise assistant for a travel company. Answer in two sentences at most and never invent prices.",
"input":[
{"type":"message","role":"user","content":[{"type":"input_text","text":"I am flying from Lisbon to Tokyo in March. Which airports should I consider, and how long is the trip?"}]},
{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Tokyo has two airports, Haneda (HND) and Narita (NRT); Haneda is closer to the city. Flights from Lisbon take about 17 to 20 hours with one stop."}]},
{"type":"message","role":"user","content":[{"type":"input_text","text":"What is the weather like there in March? Please check before answering."}]}],
"tools":[{"type":"function","name":"get_weather","description":"Average weather for a city and month","parameters":{"type":"object","properties":{"city":{"type":"string"},"month":{"type":"string"}},"required":["city","month"]},"strict":false}],
"tool_choice":"auto","user":"customer-42"}"#;

/// A Bedrock ConverseStream answer of exactly 100 event-stream messages (messageStart, 95
/// text deltas, contentBlockStop, messageStop, metadata... as AWS frames them), one message
/// per chunk.
fn bedrock_stream_chunks() -> Vec<Vec<u8>> {
    let event = |kind: &str, payload: String| {
        eventstream::encode(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    };
    let mut events = vec![
        event(
            "messageStart",
            r#"{"role":"assistant","p":"abcdefgh"}"#.into(),
        ),
        event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":""},"p":"abcd"}"#.into(),
        ),
    ];
    for i in 0..95 {
        events.push(event(
            "contentBlockDelta",
            format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":"token {i} "}},"p":"abcdefghijk"}}"#
            ),
        ));
    }
    events.push(event(
        "contentBlockStop",
        r#"{"contentBlockIndex":0,"p":"ab"}"#.into(),
    ));
    events.push(event(
        "messageStop",
        r#"{"stopReason":"end_turn","p":"abcdef"}"#.into(),
    ));
    events.push(event(
        "metadata",
        r#"{"usage":{"inputTokens":25,"outputTokens":96,"totalTokens":121},"metrics":{"latencyMs":812},"p":"abc"}"#.into(),
    ));
    events
}

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

/// One benchmark case: its name and one iteration of it (returning a size, so the work is
/// not optimised away).
pub type Case = (&'static str, Box<dyn FnMut() -> usize>);

/// Every translation case, in the bench's order. The criterion bench (`benches/translate.rs`)
/// and the instruction-count example (`examples/translate_profile.rs`) run these very
/// closures, so their figures describe the same work.
pub fn cases() -> Vec<Case> {
    let request = REQUEST.as_bytes();
    let responses_request = RESPONSES_REQUEST.as_bytes();
    let response = RESPONSE.as_bytes();
    let anthropic_chunks = anthropic_stream_chunks();
    assert_eq!(anthropic_chunks.len(), 100);
    let openai_chunks = openai_stream_chunks();
    assert_eq!(openai_chunks.len(), 100);
    let bedrock_chunks = bedrock_stream_chunks();
    assert_eq!(bedrock_chunks.len(), 100);
    let bedrock_chunks2 = bedrock_chunks.clone();
    let req = ingress::decode_chat(Dialect::OpenAi, request).unwrap();
    let converse = ProviderKind::Bedrock
        .build_chat(&req, "anthropic.claude-sonnet-4-6")
        .unwrap();
    let provider: switchyard_core::config::ProviderConfig =
        serde_json::from_str(r#"{"kind":"bedrock","aws":{"region":"us-east-1"}}"#).unwrap();
    let credentials = switchyard_core::providers::bedrock::sigv4::Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
    };
    vec![
        (
            "fast_path_openai_patch",
            Box::new(move || {
                patch_top_level(
                    black_box(request),
                    &[("model", "\"gpt-4o-mini\"".to_string())],
                )
                .unwrap()
                .len()
            }),
        ),
        (
            "openai_to_anthropic_request",
            Box::new(move || {
                let req = ingress::decode_chat(Dialect::OpenAi, black_box(request)).unwrap();
                ProviderKind::Anthropic
                    .build_chat(&req, "claude-sonnet-4-20250514")
                    .unwrap()
                    .body
                    .len()
            }),
        ),
        (
            "responses_to_anthropic_request",
            Box::new(move || {
                let req =
                    ingress::decode_chat(Dialect::Responses, black_box(responses_request)).unwrap();
                ProviderKind::Anthropic
                    .build_chat(&req, "claude-sonnet-4-20250514")
                    .unwrap()
                    .body
                    .len()
            }),
        ),
        (
            "anthropic_response_to_openai",
            Box::new(move || {
                let resp = ProviderKind::Anthropic
                    .parse_chat(black_box(response))
                    .unwrap();
                ingress::encode_chat_response(Dialect::OpenAi, &resp, b"{}").len()
            }),
        ),
        (
            "anthropic_stream_100_chunks_to_openai",
            Box::new(move || {
                translate_stream(
                    ProviderKind::Anthropic,
                    Dialect::OpenAi,
                    true,
                    &anthropic_chunks,
                )
            }),
        ),
        (
            "openai_stream_100_chunks_to_anthropic",
            Box::new(move || {
                translate_stream(
                    ProviderKind::Openai,
                    Dialect::Anthropic,
                    false,
                    &openai_chunks,
                )
            }),
        ),
        (
            "sigv4_sign_converse_request",
            Box::new(move || {
                let mut headers = converse.headers.clone();
                switchyard_core::providers::sign_aws(
                    &provider,
                    &credentials,
                    "bedrock-runtime.us-east-1.amazonaws.com",
                    black_box(&converse.path),
                    &mut headers,
                    black_box(&converse.body),
                    1_764_806_400,
                )
                .unwrap();
                headers.len()
            }),
        ),
        (
            "eventstream_decode_100_messages",
            Box::new(move || {
                let mut decoder = eventstream::Decoder::new();
                let mut out = Vec::new();
                for chunk in &bedrock_chunks {
                    decoder.push(black_box(chunk), &mut out).unwrap();
                }
                decoder.finish().unwrap();
                assert_eq!(out.len(), 100);
                out.len()
            }),
        ),
        (
            "bedrock_stream_100_messages_to_openai",
            Box::new(move || {
                translate_stream(
                    ProviderKind::Bedrock,
                    Dialect::OpenAi,
                    true,
                    &bedrock_chunks2,
                )
            }),
        ),
    ]
}

/// Streams `chunks` from `provider` through to a `dialect` client, one chunk per push.
fn translate_stream(
    provider: ProviderKind,
    dialect: Dialect,
    include_usage: bool,
    chunks: &[Vec<u8>],
) -> usize {
    let mut s = TranslatingStream::new(
        provider.stream_decoder(),
        ingress::stream_encoder(dialect, &context(include_usage)),
    );
    let mut n = 0;
    for chunk in chunks {
        n += s.push(black_box(chunk)).len();
    }
    n += s.finish().len();
    assert!(!s.failed());
    n
}
