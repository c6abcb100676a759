//! Parses one gateway config N times with `Gateway::from_json`: what a host pays each time it
//! builds the gateway from its config text. The Spin component pays it on every request (a
//! fresh instance each time), so this is on its hot path.
//!
//! `cargo build --release -p switchyard-core --example config_profile &&
//! valgrind --tool=callgrind target/release/examples/config_profile CONFIG.json 101`
//! (and `1`; the difference over 100 is the instructions per parse). Also prints the mean
//! wall time per parse.

use std::time::Instant;

use switchyard_core::gateway::Gateway;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: config_profile CONFIG.json [N]");
        std::process::exit(2);
    };
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(2);
    });
    let mut models = 0;
    let start = Instant::now();
    for _ in 0..n {
        match Gateway::from_json(std::hint::black_box(&text)) {
            Ok(gateway) => models += gateway.config().models.len(),
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{n} parses, {:.2} µs per parse ({models} models in all)",
        start.elapsed().as_secs_f64() * 1e6 / f64::from(n.max(1))
    );
}
