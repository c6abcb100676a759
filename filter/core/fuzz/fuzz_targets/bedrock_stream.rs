//! See `switchyard_core_fuzz::bedrock_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core_fuzz::bedrock_stream(data));
