//! The dashscope response and error parsers must never panic, and a parsed answer must encode
//! for both client dialects.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_core::providers::ProviderKind;
use switchyard_core::{ingress, Dialect};

fuzz_target!(|data: &[u8]| {
    let kind = ProviderKind::Dashscope;
    if let Ok(resp) = kind.parse_chat(data) {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let body = ingress::encode_chat_response(dialect, &resp);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
    }
    let status = data.first().map_or(500, |b| 400 + u16::from(*b));
    let _ = kind.parse_error(status, data);
});
