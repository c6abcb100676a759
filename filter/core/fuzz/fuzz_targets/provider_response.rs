//! See `switchyard_core_fuzz::provider_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core_fuzz::provider_response(data));
