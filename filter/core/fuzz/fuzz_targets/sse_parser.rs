//! See `switchyard_core_fuzz::sse_parser`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core_fuzz::sse_parser(data));
