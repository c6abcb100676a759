//! The anthropic stream decoder, behind the SSE parser and in front of both client encoders,
//! must never panic, whatever the bytes and wherever they are split. The first byte picks
//! the chunk size. The Anthropic pass-through stream gets the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_core::providers::{anthropic, ProviderKind};
use switchyard_core::stream::{ResponseStream, TranslatingStream};
use switchyard_core::{ingress, Dialect};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let size = usize::from(first % 64) + 1;
    for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
        let mut stream = TranslatingStream::new(
            ProviderKind::Anthropic.stream_decoder(),
            ingress::stream_encoder(dialect, "id".into(), "m".into(), 0, true),
        );
        for chunk in rest.chunks(size) {
            let _ = stream.push(chunk);
        }
        let _ = stream.finish();
        let _ = stream.usage();
    }
    // The Anthropic → Anthropic pass-through stream too.
    let mut passthrough = anthropic::AnthropicPassthroughStream::new();
    for chunk in rest.chunks(size) {
        let _ = passthrough.push(chunk);
    }
    let _ = passthrough.finish();
});
