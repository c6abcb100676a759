//! Stream translation under adversarial delivery: every fixture stream split at every byte
//! offset and in many random chunkings must give byte-identical client output; tool calls
//! must survive every provider → dialect pairing; truncation and garbage end in a
//! well-formed error event.

mod common;

use common::{
    accumulate_anthropic, accumulate_openai, fixture, random_chunks, translate_chunks, Final,
};
use switchyard_core::canonical::wire_id;
use switchyard_core::providers::ProviderKind;
use switchyard_core::stream::{ResponseStream, StreamEvent};
use switchyard_core::{Dialect, ErrorKind, GatewayError};

const STREAMS: &[(ProviderKind, &str)] = &[
    (ProviderKind::Anthropic, "anthropic/stream_text.sse"),
    (ProviderKind::Anthropic, "anthropic/stream_tools.sse"),
    (ProviderKind::Anthropic, "anthropic/stream_error.sse"),
    (ProviderKind::Gemini, "gemini/stream_text.sse"),
    (ProviderKind::Gemini, "gemini/stream_tools.sse"),
    (ProviderKind::Dashscope, "dashscope/stream_text.sse"),
    (ProviderKind::Dashscope, "dashscope/stream_tools.sse"),
    (ProviderKind::Openai, "openai/stream_tools.sse"),
    (ProviderKind::Bedrock, "bedrock/stream_text.eventstream"),
    (ProviderKind::Bedrock, "bedrock/stream_tools.eventstream"),
    (ProviderKind::Bedrock, "bedrock/stream_error.eventstream"),
    (ProviderKind::Azure, "azure/stream_tools.sse"),
    (ProviderKind::Cohere, "cohere/stream_text.sse"),
    (ProviderKind::Cohere, "cohere/stream_tools.sse"),
    (ProviderKind::Mistral, "mistral/stream_tools.sse"),
    (ProviderKind::Vertex, "vertex/stream_tools.sse"),
];

const DIALECTS: &[Dialect] = &Dialect::ALL;

#[test]
fn every_two_piece_split_gives_identical_output() {
    for &(kind, file) in STREAMS {
        let upstream = fixture(file);
        for &dialect in DIALECTS {
            let whole = translate_chunks(kind, dialect, true, &[&upstream]);
            for i in 0..=upstream.len() {
                let split =
                    translate_chunks(kind, dialect, true, &[&upstream[..i], &upstream[i..]]);
                assert!(
                    split == whole,
                    "{file} → {dialect:?} differs when split at byte {i}"
                );
            }
        }
    }
}

#[test]
fn random_chunkings_give_identical_output() {
    for &(kind, file) in STREAMS {
        let upstream = fixture(file);
        for &dialect in DIALECTS {
            let whole = translate_chunks(kind, dialect, true, &[&upstream]);
            for seed in 0..300u64 {
                let max = [1, 2, 3, 7, 16, 64][seed as usize % 6];
                let chunks = random_chunks(&upstream, seed, max);
                let got = translate_chunks(kind, dialect, true, &chunks);
                assert!(got == whole, "{file} → {dialect:?} differs for seed {seed}");
            }
        }
    }
}

fn call(id: &str, name: &str, args: &str) -> (String, String, String) {
    (id.into(), name.into(), args.into())
}

fn client_view(kind: ProviderKind, file: &str, dialect: Dialect) -> Final {
    let (out, _, failed) = translate_chunks(kind, dialect, true, &[&fixture(file)]);
    assert!(
        !failed,
        "{file} → {dialect:?}:\n{}",
        String::from_utf8_lossy(&out)
    );
    common::accumulate(dialect, &out)
}

/// Normalises argument JSON so `{"a": 1}` and `{"a":1}` compare equal.
fn args_value(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("arguments `{s}` are not JSON: {e}"))
}

fn assert_calls(got: &Final, want: &[(String, String, String)]) {
    assert_eq!(got.tool_calls.len(), want.len(), "{got:?}");
    for (g, w) in got.tool_calls.iter().zip(want) {
        assert_eq!((&g.0, &g.1), (&w.0, &w.1));
        assert_eq!(args_value(&g.2), args_value(&w.2));
    }
}

#[test]
fn openai_stream_tools_reach_anthropic_clients() {
    let f = client_view(
        ProviderKind::Openai,
        "openai/stream_tools.sse",
        Dialect::Anthropic,
    );
    assert_eq!(f.text, "Checking now.");
    assert_calls(
        &f,
        &[
            call("call_abc123", "get_weather", r#"{"location": "Paris"}"#),
            call("call_def456", "get_time", r#"{"tz": "Europe/Paris"}"#),
        ],
    );
    assert_eq!(f.finish.as_deref(), Some("tool_use"));
    // 82 prompt tokens of which 64 cached: Anthropic's input_tokens excludes cache reads.
    assert_eq!((f.input_tokens, f.output_tokens), (18, 41));
}

#[test]
fn anthropic_stream_tools_reach_openai_clients() {
    let f = client_view(
        ProviderKind::Anthropic,
        "anthropic/stream_tools.sse",
        Dialect::OpenAi,
    );
    assert_eq!(f.text, "Okay, let's check the weather:");
    let want = [
        call(
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "get_weather",
            r#"{"location": "San Francisco, CA"}"#,
        ),
        call(
            "toolu_02U2y2gK45rBnl3uUOsO8Vq7",
            "get_time",
            r#"{"timezone": "America/Los_Angeles"}"#,
        ),
    ];
    assert_calls(&f, &want);
    assert_eq!(f.finish.as_deref(), Some("tool_calls"));
    assert_eq!((f.input_tokens, f.output_tokens), (472, 89));
    // And Anthropic → Anthropic keeps them too.
    let f = client_view(
        ProviderKind::Anthropic,
        "anthropic/stream_tools.sse",
        Dialect::Anthropic,
    );
    assert_calls(&f, &want);
    assert_eq!(f.finish.as_deref(), Some("tool_use"));
}

#[test]
fn gemini_stream_tools_reach_both_clients() {
    let want = [
        call(
            "call_0",
            "get_weather",
            r#"{"location":"Paris","unit":"celsius"}"#,
        ),
        call("call_1", "get_time", r#"{"timezone":"Asia/Tokyo"}"#),
    ];
    let f = client_view(
        ProviderKind::Gemini,
        "gemini/stream_tools.sse",
        Dialect::OpenAi,
    );
    assert_eq!(f.text, "Let me look both up.");
    assert_calls(&f, &want);
    assert_eq!(f.finish.as_deref(), Some("tool_calls"));
    assert_eq!(
        (f.input_tokens, f.output_tokens),
        (60, 35),
        "thoughts count as output"
    );
    let f = client_view(
        ProviderKind::Gemini,
        "gemini/stream_tools.sse",
        Dialect::Anthropic,
    );
    assert_eq!(f.text, "Let me look both up.");
    // The first call's thought signature travels in its `tool_use` id.
    let mut want = want;
    want[0].0 = wire_id("call_0", Some("CiQBVKhc7nS/tr+eamSig=="));
    assert_calls(&f, &want);
    assert_eq!(f.finish.as_deref(), Some("tool_use"));
    assert_eq!((f.input_tokens, f.output_tokens), (60 - 32, 35));
}

#[test]
fn dashscope_stream_tools_reach_openai_clients() {
    let f = client_view(
        ProviderKind::Dashscope,
        "dashscope/stream_tools.sse",
        Dialect::OpenAi,
    );
    assert_eq!(f.text, "Let me check.");
    assert_calls(
        &f,
        &[
            call(
                "call_3f2a1b",
                "get_current_weather",
                r#"{"location": "Hangzhou"}"#,
            ),
            call("call_9c8d7e", "get_current_time", "{}"),
        ],
    );
    assert_eq!(f.finish.as_deref(), Some("tool_calls"));
    assert_eq!((f.input_tokens, f.output_tokens), (220, 28));
    let f = client_view(
        ProviderKind::Dashscope,
        "dashscope/stream_tools.sse",
        Dialect::Anthropic,
    );
    assert_eq!(f.tool_calls.len(), 2);
}

#[test]
fn text_streams_reach_both_clients() {
    for (kind, file, text) in [
        (
            ProviderKind::Anthropic,
            "anthropic/stream_text.sse",
            "Hello wörld — ✓",
        ),
        (
            ProviderKind::Gemini,
            "gemini/stream_text.sse",
            "The sky is blue because of Rayleigh scattering — ✓.",
        ),
        (
            ProviderKind::Dashscope,
            "dashscope/stream_text.sse",
            "Hello! I am 通义千问.",
        ),
    ] {
        for &dialect in DIALECTS {
            let f = client_view(kind, file, dialect);
            assert_eq!(f.text, text, "{file} → {dialect:?}");
            assert!(f.tool_calls.is_empty());
            assert!(f.output_tokens > 0);
        }
    }
}

#[test]
fn usage_is_metered_from_every_provider_stream() {
    for (kind, file, input, output, cached) in [
        (
            ProviderKind::Anthropic,
            "anthropic/stream_text.sse",
            30,
            15,
            5,
        ),
        (ProviderKind::Gemini, "gemini/stream_tools.sse", 60, 35, 32),
        (
            ProviderKind::Dashscope,
            "dashscope/stream_tools.sse",
            220,
            28,
            128,
        ),
    ] {
        let (_, usage, _) = translate_chunks(kind, Dialect::OpenAi, false, &[&fixture(file)]);
        assert_eq!(
            (usage.input, usage.output, usage.cached_input),
            (input, output, cached),
            "{file}"
        );
    }
}

#[test]
fn truncated_streams_end_in_a_well_formed_error() {
    for &(kind, file) in STREAMS {
        if file.contains("error") {
            continue;
        }
        let upstream = fixture(file);
        // Cut in the middle, and just before the final event.
        let cuts = [upstream.len() / 2, upstream.len() - 30];
        for cut in cuts {
            for &dialect in DIALECTS {
                let (out, _, failed) = translate_chunks(kind, dialect, true, &[&upstream[..cut]]);
                assert!(failed, "{file} cut at {cut} → {dialect:?} must fail");
                let f = common::accumulate(dialect, &out);
                let err = f
                    .error
                    .unwrap_or_else(|| panic!("{file} cut at {cut}: no error event"));
                // Cut between events: "ended before"; cut inside one: its JSON is incomplete.
                let msg = err["message"].as_str().unwrap();
                assert!(
                    msg.contains("ended before") || msg.contains("malformed"),
                    "{err}"
                );
                assert_eq!(common::error_type(dialect, &err), "bad_gateway", "{err}");
            }
        }
    }
}

#[test]
fn garbage_in_a_stream_ends_in_a_bad_gateway_error() {
    for &(kind, _) in STREAMS {
        for &dialect in DIALECTS {
            for garbage in [&b"data: {not json\n\n"[..], b"data: \xff\xfe\n\n"] {
                let (out, _, failed) = translate_chunks(kind, dialect, true, &[garbage]);
                assert!(failed);
                let f = common::accumulate(dialect, &out);
                let err = f.error.expect("error event");
                assert_eq!(
                    common::error_type(dialect, &err),
                    "bad_gateway",
                    "{kind:?} → {dialect:?}"
                );
            }
        }
    }
}

#[test]
fn host_failure_mid_stream_is_reported_once() {
    let upstream = fixture("gemini/stream_text.sse");
    let mut t = common::translator(ProviderKind::Gemini, Dialect::Anthropic, false);
    let mut out = t.push(&upstream[..upstream.len() / 2]);
    let err = switchyard_core::GatewayError::new(
        switchyard_core::ErrorKind::Timeout,
        "upstream timed out",
    );
    out.extend(t.fail(&err));
    out.extend(t.fail(&err));
    out.extend(t.push(&upstream[upstream.len() / 2..]));
    out.extend(t.finish());
    let f = accumulate_anthropic(&out);
    assert_eq!(f.error.unwrap()["type"], "timeout_error");
    assert!(t.failed());
}

/// What a client got from a pass-through stream: bytes, usage, failed, complete.
type PassedThrough = (Vec<u8>, switchyard_core::canonical::TokenUsage, bool, bool);

/// A constructor of fresh pass-through streams.
type MakeStream<'a> = &'a dyn Fn() -> Box<dyn ResponseStream>;

/// Drives a pass-through stream over `chunks`.
fn pass_through(mut stream: Box<dyn ResponseStream>, chunks: &[&[u8]]) -> PassedThrough {
    let mut out = Vec::new();
    for c in chunks {
        out.extend(stream.push(c));
    }
    out.extend(stream.finish());
    (out, stream.usage(), stream.failed(), stream.complete())
}

#[test]
fn pass_through_streams_forward_every_split_unchanged_and_end_cleanly() {
    use switchyard_core::providers::passthrough::PassthroughStream;
    use switchyard_core::providers::{anthropic, openai};
    let openai_stream = || -> Box<dyn ResponseStream> {
        Box::new(PassthroughStream::new(openai::OpenAiPassthrough::new(
            false,
        )))
    };
    let anthropic_stream = || -> Box<dyn ResponseStream> {
        Box::new(PassthroughStream::new(
            anthropic::AnthropicPassthrough::default(),
        ))
    };
    let cases: [(MakeStream, &str, u64, u64); 2] = [
        (&openai_stream, "openai/stream_tools.sse", 82, 41),
        (&anthropic_stream, "anthropic/stream_tools.sse", 472, 89),
    ];
    for (make, file, input, output) in cases {
        let upstream = fixture(file);
        let whole = pass_through(make(), &[&upstream]);
        assert!(!whole.2 && whole.3, "{file}: failed or incomplete");
        assert_eq!((whole.1.input, whole.1.output), (input, output), "{file}");
        for i in 0..=upstream.len() {
            let split = pass_through(make(), &[&upstream[..i], &upstream[i..]]);
            assert!(split == whole, "{file}: split at byte {i} differs");
        }
    }
    // The usage-only chunk the gateway forced is hidden from a client that did not ask.
    let (out, usage, _, _) = pass_through(openai_stream(), &[&fixture("openai/stream_tools.sse")]);
    let f = accumulate_openai(&out);
    assert_eq!((f.input_tokens, f.output_tokens), (0, 0));
    assert_eq!((usage.input, usage.cached_input), (82, 64));
    // An upstream error chunk is forwarded and ends the stream: nothing after it is sent.
    let errored = b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n\
data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"late\"}}]}\n\ndata: [DONE]\n\n";
    let (out, _, failed, complete) = pass_through(openai_stream(), &[errored]);
    assert!(failed && !complete);
    let f = accumulate_openai(&out);
    assert_eq!(f.text, "a");
    assert_eq!(f.error.unwrap()["message"], "overloaded");
    // Garbage and truncation end in the format's own error event.
    for (make, garbage) in [
        (
            &openai_stream as &dyn Fn() -> Box<dyn ResponseStream>,
            &b"data: {nope\n\n"[..],
        ),
        (&anthropic_stream, b"event: x\ndata: {nope\n\n"),
    ] {
        let (out, _, failed, _) = pass_through(make(), &[garbage]);
        assert!(failed, "{}", String::from_utf8_lossy(&out));
        assert!(String::from_utf8_lossy(&out).contains("malformed"));
    }
    let upstream = fixture("anthropic/stream_tools.sse");
    let (out, _, failed, _) = pass_through(anthropic_stream(), &[&upstream[..upstream.len() / 2]]);
    assert!(failed);
    assert_eq!(
        accumulate_anthropic(&out).error.unwrap()["type"],
        "api_error"
    );
}

/// The events one provider decodes from `sse` (pushed whole), or its error.
fn decode(kind: ProviderKind, sse: &str) -> Result<Vec<StreamEvent>, GatewayError> {
    let mut decoder = kind.stream_decoder();
    let mut events = Vec::new();
    decoder.push(sse.as_bytes(), &mut events)?;
    decoder.finish(&mut events)?;
    Ok(events)
}

/// The decoders read the usual event in one typed pass and everything else the general way:
/// events that pass does not take still decode as they always did.
#[test]
fn events_outside_the_typed_pass_decode_as_before() {
    // `error` present, even `null`, is an upstream error.
    let events = decode(ProviderKind::Openai, "data: {\"error\":null}\n\n").unwrap();
    assert!(
        matches!(&events[..], [StreamEvent::Error(e)] if e.kind == ErrorKind::BadGateway
            && e.message == "upstream error"),
        "{events:?}"
    );
    // A repeated key (which a typed read refuses) reads as the last one, as a `Value` does.
    let events = decode(
        ProviderKind::Openai,
        "data: {\"id\":\"a\",\"id\":\"b\",\"model\":\"m\",\"choices\":[{\"index\":0,\
         \"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
    )
    .unwrap();
    assert_eq!(
        events,
        vec![
            StreamEvent::Start {
                id: "b".into(),
                model: "m".into()
            },
            StreamEvent::Text("hi".into())
        ]
    );
    // A chunk that is not a chunk keeps its error.
    let err = decode(ProviderKind::Openai, "data: {\"choices\":3}\n\n").unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadGateway);
    assert!(err.message.contains("invalid type: integer `3`"), "{err:?}");
    // Anthropic: an escaped tag is still a text delta; one without `index` is malformed.
    let events = decode(
        ProviderKind::Anthropic,
        "data: {\"type\":\"content_block_delta\",\"index\":0,\
         \"delta\":{\"type\":\"text\\u005fdelta\",\"text\":\"hi\"}}\n\n",
    )
    .unwrap();
    assert_eq!(events, vec![StreamEvent::Text("hi".into())]);
    let err = decode(
        ProviderKind::Anthropic,
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
    )
    .unwrap_err();
    assert!(err.message.contains("missing field `index`"), "{err:?}");
}
