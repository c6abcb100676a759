//! Ingress request decoding (anthropic dialect) must never panic, and whatever it accepts must
//! re-encode for every provider without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_core::providers::ProviderKind;
use switchyard_core::{ingress, Dialect};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = ingress::decode_chat(Dialect::Anthropic, data) {
        for kind in [
            ProviderKind::Openai,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
            ProviderKind::Dashscope,
        ] {
            let _ = kind.build_chat(&req, "m");
        }
    }
});
