//! One whole request through the core's lifecycle, as a host drives it: head, body (plan,
//! admission), the attempt's head and body, the reply, the usage record — the per-request work
//! of every edge host, without the host.
//!
//! Profile: `cargo build --release -p switchyard-core --example exchange_profile && valgrind --tool=callgrind target/release/examples/exchange_profile 1000 fast`
//! (kinds: `fast`, `relayed` — the fast path with `edge.route_complete_answers`, its answer
//! relayed — and `translated`).

use std::hint::black_box;

#[path = "../benches/common/mod.rs"]
mod common;

use common::{gateway, one, routed_gateway, ANTHROPIC_ANSWER, OPENAI_ANSWER, REQUEST};

/// Runs N exchanges of each kind, for `valgrind --tool=callgrind` (instruction counts are
/// repeatable on a busy machine where wall time is not).
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let kind = std::env::args().nth(2).unwrap_or_else(|| "fast".into());
    let gw = if kind == "relayed" {
        routed_gateway()
    } else {
        gateway()
    };
    let (body, answer) = match kind.as_str() {
        "translated" => (REQUEST.replace("MODEL", "translated"), ANTHROPIC_ANSWER),
        _ => (REQUEST.replace("MODEL", "fast"), OPENAI_ANSWER),
    };
    let mut total = 0;
    for _ in 0..n {
        total += one(
            &gw,
            black_box(body.as_bytes()),
            black_box(answer.as_bytes()),
        );
    }
    println!("{total}");
}
