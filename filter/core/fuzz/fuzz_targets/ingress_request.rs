//! See `switchyard_core_fuzz::ingress_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core_fuzz::ingress_request(data));
