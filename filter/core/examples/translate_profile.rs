//! Runs one translation case of `benches/translate.rs` N times: for `valgrind
//! --tool=callgrind` (instruction counts repeat on a busy machine where wall time does not)
//! and, built for `wasm32-wasip1`, for timing the same work in a wasm engine.
//!
//! Instructions per iteration: run with N = 1 and N = 1001 under callgrind and divide the
//! difference by 1000 (setup cancels out):
//! `cargo build --release -p switchyard-core --example translate_profile &&
//! valgrind --tool=callgrind target/release/examples/translate_profile openai_to_anthropic_request 1001`.
//! In wasm (`--target wasm32-wasip1`, run by `wasmtime`), the example also prints the mean
//! time per iteration measured with the WASI clock; `all` runs every case.

use std::time::Instant;

#[path = "../benches/translate_cases/mod.rs"]
mod translate_cases;

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "all".into());
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mut ran = false;
    for (name, mut run) in translate_cases::cases() {
        if which != "all" && which != name {
            continue;
        }
        ran = true;
        // One untimed iteration first (allocator and lazy state warm, as criterion's warm-up).
        let mut total = run();
        let start = Instant::now();
        for _ in 0..n {
            total = total.wrapping_add(run());
        }
        let elapsed = start.elapsed();
        println!(
            "{name}: {n} iterations, {:.2} µs per iteration (checksum {total})",
            elapsed.as_secs_f64() * 1e6 / f64::from(n.max(1))
        );
    }
    if !ran {
        eprintln!("no case named {which}");
        std::process::exit(2);
    }
}
