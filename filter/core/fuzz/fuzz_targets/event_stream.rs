//! See `switchyard_core_fuzz::event_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core_fuzz::event_stream(data));
