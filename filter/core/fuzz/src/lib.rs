//! The fuzz harness shared by every target in `fuzz_targets/`: each target is one call into
//! this library, so a new dialect or provider joins every target by joining the lists in
//! `switchyard-core` (`Dialect::ALL`, `ProviderKind::ALL`), not by copying a target.
//!
//! The invariants checked: nothing panics on any input; whatever a decoder accepts encodes
//! again; translated streams and answers are well-formed in every client dialect; the SSE
//! parser gives the same events however its input is split.

use switchyard_core::providers::bedrock::eventstream;
use switchyard_core::providers::passthrough::PassthroughStream;
use switchyard_core::providers::{anthropic, openai, ProviderKind};
use switchyard_core::sse::SseParser;
use switchyard_core::stream::{ResponseStream, TranslatingStream};
use switchyard_core::{ingress, Dialect};

/// Picks an element of `items` with `byte`.
fn pick<T: Copy>(items: &[T], byte: u8) -> T {
    items[usize::from(byte) % items.len()]
}

/// Client request decoding in the dialect the first byte picks; an accepted request must
/// translate for every provider without panicking.
pub fn ingress_request(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let decoded = match pick(&Dialect::ALL, first) {
        Dialect::Gemini => ingress::gemini::decode_request(body, "m", first % 2 == 0),
        dialect => ingress::decode_chat(dialect, body),
    };
    if let Ok(req) = decoded {
        for kind in ProviderKind::ALL {
            let _ = kind.build_chat(&req, "m");
        }
    }
}

/// A complete provider answer and an error body, for the provider the first byte picks: an
/// answer that parses must encode as JSON for every client dialect.
pub fn provider_response(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let kind = pick(&ProviderKind::ALL, first);
    if let Ok(resp) = kind.parse_chat(body) {
        for dialect in Dialect::ALL {
            let out = ingress::encode_chat_response(dialect, &resp, body);
            assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        }
    }
    let _ = kind.parse_error(400 + u16::from(first), body);
}

/// A provider stream (the provider picked by the first byte, the chunk size by the second)
/// through its decoder and every client encoder, and through the pass-through streams; the
/// client bytes must always parse as SSE.
pub fn provider_stream(data: &[u8]) {
    let [first, second, rest @ ..] = data else {
        return;
    };
    let kind = pick(&ProviderKind::ALL, *first);
    let size = usize::from(*second % 64) + 1;
    let mut streams: Vec<Box<dyn ResponseStream>> = Dialect::ALL
        .iter()
        .map(|&dialect| -> Box<dyn ResponseStream> {
            Box::new(TranslatingStream::new(
                kind.stream_decoder(),
                ingress::stream_encoder(
                    dialect,
                    &ingress::AnswerContext {
                        id: "id",
                        model: "m",
                        created: 0,
                        include_usage: true,
                        request: rest,
                    },
                ),
            ))
        })
        .collect();
    streams.push(Box::new(PassthroughStream::new(
        openai::OpenAiPassthrough::new(first % 2 == 0),
    )));
    streams.push(Box::new(PassthroughStream::new(
        anthropic::AnthropicPassthrough::default(),
    )));
    streams.push(Box::new(PassthroughStream::new(
        openai::ResponsesPassthrough::default(),
    )));
    for stream in &mut streams {
        let mut out = Vec::new();
        for chunk in rest.chunks(size) {
            out.extend(stream.push(chunk));
        }
        out.extend(stream.finish());
        let _ = stream.usage();
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        assert!(parser.push(&out, &mut events).is_ok());
        assert!(parser.finish(&mut events).is_ok());
    }
}

/// Every client encoder after `kind`'s decoder, fed `bytes` in `size`-byte chunks; the
/// client bytes must parse as SSE (every dialect streams SSE).
fn through_every_dialect(kind: ProviderKind, bytes: &[u8], size: usize) {
    for dialect in Dialect::ALL {
        let mut stream = TranslatingStream::new(
            kind.stream_decoder(),
            ingress::stream_encoder(
                dialect,
                &ingress::AnswerContext {
                    id: "id",
                    model: "m",
                    created: 0,
                    include_usage: true,
                    request: b"{}",
                },
            ),
        );
        let mut out = Vec::new();
        for chunk in bytes.chunks(size) {
            out.extend(stream.push(chunk));
        }
        out.extend(stream.finish());
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        assert!(parser.push(&out, &mut events).is_ok());
    }
}

/// The AWS event-stream framing alone: any bytes, the same messages whole as split at the
/// offset the first byte picks, never a panic.
pub fn event_stream(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(first).min(rest.len());
    let run = |chunks: &[&[u8]]| {
        let mut d = eventstream::Decoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out).ok()?;
        }
        d.finish().ok().map(|_| out)
    };
    if let (Some(a), Some(b)) = (run(&[rest]), run(&[&rest[..cut], &rest[cut..]])) {
        assert_eq!(a, b);
    }
}

/// ConverseStream with valid framing (random bytes almost never pass two CRC32 checks):
/// the input, split at `\n`, becomes event payloads whose `:event-type` (or exception) the
/// first byte of each piece picks; then Bedrock's decoder and every client encoder.
pub fn bedrock_stream(data: &[u8]) {
    const TYPES: [&str; 8] = [
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
        "throttlingException",
        "unknownEvent",
    ];
    let mut bytes = Vec::new();
    for piece in data.split(|&b| b == b'\n') {
        let Some((&first, payload)) = piece.split_first() else {
            continue;
        };
        let kind = pick(&TYPES, first);
        let headers: &[(&str, &str)] = if kind.ends_with("Exception") {
            &[(":message-type", "exception"), (":exception-type", kind)]
        } else {
            &[(":message-type", "event"), (":event-type", kind)]
        };
        bytes.extend(eventstream::encode(headers, payload));
    }
    let size = data.first().map_or(1, |b| usize::from(b % 32) + 1);
    through_every_dialect(ProviderKind::Bedrock, &bytes, size);
}

/// The Responses pass-through's event inspection: the input, split at `\n`, becomes SSE
/// frames whose event name the first byte of each line picks.
pub fn responses_stream(data: &[u8]) {
    const EVENTS: [&str; 6] = [
        "response.created",
        "response.output_text.delta",
        "response.completed",
        "response.failed",
        "error",
        "response.in_progress",
    ];
    let mut sse = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&first, json)) = line.split_first() else {
            continue;
        };
        sse.extend_from_slice(b"event: ");
        sse.extend_from_slice(pick(&EVENTS, first).as_bytes());
        sse.extend_from_slice(b"\ndata: ");
        sse.extend_from_slice(json);
        sse.extend_from_slice(b"\n\n");
    }
    let mut stream = PassthroughStream::new(openai::ResponsesPassthrough::default());
    let mut out = Vec::new();
    for chunk in sse.chunks(7) {
        out.extend(stream.push(chunk));
    }
    out.extend(stream.finish());
    let _ = stream.usage();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    assert!(parser.push(&out, &mut events).is_ok());
}

/// The SSE parser: the same events whole as split at the offset the first byte picks.
pub fn sse_parser(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(first).min(rest.len());
    let run = |chunks: &[&[u8]]| {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            if p.push(c, &mut out).is_err() {
                return None;
            }
        }
        p.finish(&mut out).ok().map(|_| out)
    };
    let whole = run(&[rest]);
    let split = run(&[&rest[..cut], &rest[cut..]]);
    if let (Some(a), Some(b)) = (whole, split) {
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod tests {
    //! Replays the core's golden fixtures through every harness (each with every selector
    //! byte), so `cargo test` here checks the harness and the invariants on stable, without
    //! libFuzzer.

    use std::path::Path;

    fn fixtures() -> Vec<Vec<u8>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut out = Vec::new();
        for dir in std::fs::read_dir(root).expect("fixtures dir") {
            let dir = dir.expect("entry").path();
            if dir.is_dir() {
                for file in std::fs::read_dir(dir).expect("fixture dir") {
                    out.push(std::fs::read(file.expect("entry").path()).expect("fixture"));
                }
            }
        }
        assert!(out.len() > 20, "found only {} fixtures", out.len());
        out
    }

    #[test]
    fn every_fixture_through_every_harness() {
        for bytes in fixtures() {
            for selector in 0..=15u8 {
                let mut input = vec![selector, selector.wrapping_mul(7)];
                input.extend_from_slice(&bytes);
                super::ingress_request(&input[1..]);
                super::provider_response(&input[1..]);
                super::provider_stream(&input);
                super::sse_parser(&input[1..]);
                super::event_stream(&input[1..]);
                super::bedrock_stream(&input[1..]);
                super::responses_stream(&input[1..]);
            }
        }
    }
}
