//! The SSE parser must never panic, and must give the same events however the input is
//! split (here: whole vs. at the offset the first byte picks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_core::sse::SseParser;

fuzz_target!(|data: &[u8]| {
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
});
