//! One whole request through the core's lifecycle, as a host drives it: head, body (plan,
//! admission), the attempt's head and body, the reply, the usage record — the per-request work
//! of every edge host, without the host.
//!
//! Run: `cargo bench -p switchyard-core --bench exchange -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
mod common;

use common::{gateway, one, ANTHROPIC_ANSWER, OPENAI_ANSWER, REQUEST};

fn bench(c: &mut Criterion) {
    let gw = gateway();
    let fast = REQUEST.replace("MODEL", "fast").into_bytes();
    let translated = REQUEST.replace("MODEL", "translated").into_bytes();
    assert!(one(&gw, &fast, OPENAI_ANSWER.as_bytes()) > 0);
    assert!(one(&gw, &translated, ANTHROPIC_ANSWER.as_bytes()) > 0);
    c.bench_function("exchange: 1 KB chat, OpenAI → OpenAI (fast path)", |b| {
        b.iter(|| one(&gw, black_box(&fast), black_box(OPENAI_ANSWER.as_bytes())))
    });
    c.bench_function("exchange: 1 KB chat, OpenAI → Anthropic", |b| {
        b.iter(|| {
            one(
                &gw,
                black_box(&translated),
                black_box(ANTHROPIC_ANSWER.as_bytes()),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
