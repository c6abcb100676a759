//! See `switchyard_core_fuzz::responses_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core_fuzz::responses_stream(data));
