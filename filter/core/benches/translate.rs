//! Translation cost against the OpenAI → OpenAI fast path (a top-level `model` patch).
//!
//! Run: `cargo bench -p switchyard-core --bench translate -- --warm-up-time 1 --measurement-time 3`
//! (instruction counts of the same cases: `examples/translate_profile.rs`).

use criterion::{criterion_group, criterion_main, Criterion};

mod translate_cases;

fn benches(c: &mut Criterion) {
    for (name, mut run) in translate_cases::cases() {
        c.bench_function(name, |b| b.iter(&mut run));
    }
}

criterion_group!(translate, benches);
criterion_main!(translate);
