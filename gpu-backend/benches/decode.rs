//! Single-stream decode, in process: the forward step and greedy pick of one sequence, with
//! no HTTP, scheduler or tokenizer around it, so a profiler (`perf record`) or an
//! instruction counter (`valgrind --tool=cachegrind`; the VM hides hardware counters from
//! `perf stat`) sees only the per-token work. Also times each matmul shape of the model
//! alone, hot in cache and streamed from memory, so a slow weight format shows up as a
//! kernel or a bandwidth problem.
//!
//! Run: `cargo bench -p gpu-backend --bench decode -- GGUF [TOKENS] [kernels] [batch=N]`
//! (default: the fetched SmolLM2 Q4_1, 64 tokens; `kernels` adds the per-matmul timings,
//! lone and for 16 and 64 activation rows at once; `batch=N` decodes N copies of the
//! sequence in one step, as N streams batched by the scheduler do). It prints the prompt's
//! prefill time (all N prompts in one step) and the greedy tokens, so two builds can be
//! checked for the same output.

use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use gpu_backend::kernels::{self, QMatrix};
use gpu_backend::llama::{argmax, QuantizedLlama, StepInput};

mod common;
use common::cpu_seconds;

/// The prompt: the greedy fixture's (a chat-templated question, SmolLM2's token ids).
fn prompt() -> Vec<u32> {
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../tests/fixtures/smollm2_reference_greedy.json"
    ))
    .expect("fixture");
    serde_json::from_value(fixture["prompt_ids"].clone()).expect("prompt ids")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let path = args.first().cloned().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.cache/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        .into()
    });
    let tokens: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(64);
    let batch: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("batch=")?.parse().ok())
        .unwrap_or(1);
    let mut file = std::io::BufReader::new(std::fs::File::open(&path).expect("open GGUF"));
    let content = gguf_file::Content::read(&mut file).expect("read GGUF");
    let model = QuantizedLlama::from_gguf(&content, &mut file, &Device::Cpu).expect("load");
    println!(
        "model {path}: {:?} kernels, matmul {}",
        model.kernels(),
        kernels::kernel_name()
    );

    // `batch` copies of one sequence: each row of a batched step is computed on its own, so
    // every copy yields the same tokens as a lone sequence.
    let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
    let prompt = prompt();
    let mut inputs: Vec<StepInput> = caches
        .iter_mut()
        .map(|cache| StepInput {
            tokens: &prompt,
            cache,
        })
        .collect();
    let (prefill_wall, prefill_cpu) = (Instant::now(), cpu_seconds());
    let logits = model.forward(&mut inputs).expect("prefill");
    drop(inputs);
    let (prefill_wall, prefill_cpu) = (
        prefill_wall.elapsed().as_secs_f64(),
        cpu_seconds() - prefill_cpu,
    );
    let prompt_rows = (prompt.len() * batch) as f64;
    println!(
        "prefill x{batch}: {} prompt tokens each, {:.2} ms wall ({:.1} tok/s), {:.3} ms CPU/token",
        prompt.len(),
        prefill_wall * 1e3,
        prompt_rows / prefill_wall,
        prefill_cpu * 1e3 / prompt_rows
    );
    let mut next = argmax(&logits.get(0).unwrap()).unwrap();
    let mut out = vec![next];
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    let mut steps_ms = Vec::with_capacity(tokens);
    for _ in 1..tokens {
        let step = Instant::now();
        let fed = [next];
        let mut inputs: Vec<StepInput> = caches
            .iter_mut()
            .map(|cache| StepInput {
                tokens: &fed,
                cache,
            })
            .collect();
        let logits = model.forward(&mut inputs).expect("step");
        let picks: Vec<u32> = (0..batch)
            .map(|i| argmax(&logits.get(i).unwrap()).unwrap())
            .collect();
        assert!(
            picks.iter().all(|&p| p == picks[0]),
            "a batched row differs from its copies: {picks:?}"
        );
        next = picks[0];
        out.push(next);
        steps_ms.push(step.elapsed().as_secs_f64() * 1e3);
    }
    steps_ms.sort_by(f64::total_cmp);
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let steps = (tokens - 1).max(1) as f64;
    let generated = steps * batch as f64;
    // The fastest and the median step: on a shared box the mean mostly measures the others.
    println!(
        "decode x{batch}: {} steps, {:.2} ms/step wall ({:.1} tok/s), step min {:.2} ms, median {:.2} ms, {:.3} ms CPU/token",
        tokens - 1,
        wall * 1e3 / steps,
        generated / wall,
        steps_ms.first().unwrap_or(&0.0),
        steps_ms.get(steps_ms.len() / 2).unwrap_or(&0.0),
        cpu * 1e3 / generated
    );
    println!("tokens: {out:?}");

    if args.iter().any(|a| a == "kernels") {
        matmul_timings(&content, &mut file);
    }
}

/// Each distinct matmul shape of the file, alone: one matrix reused (hot in cache) and a
/// ring of copies larger than the last-level cache (streamed from memory, as in a step).
fn matmul_timings<R: std::io::Read + std::io::Seek>(ct: &gguf_file::Content, file: &mut R) {
    use candle_core::quantized::GgmlDType;
    let mut seen = Vec::new();
    for name in [
        "blk.0.attn_q.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_down.weight",
        // The tied output projection (no `output.weight` in SmolLM2's files): the largest.
        "token_embd.weight",
    ] {
        let info = &ct.tensor_infos[name];
        let format = match info.ggml_dtype {
            GgmlDType::Q4_1 => kernels::WeightFormat::Q4_1,
            GgmlDType::Q8_0 => kernels::WeightFormat::Q8_0,
            other => panic!("{name} is {other:?}"),
        };
        let (rows, cols) = info.shape.dims2().unwrap();
        let t = ct.tensor(file, name, &Device::Cpu).unwrap();
        let data = t.data().unwrap().to_vec();
        seen.push((name, QMatrix::new(format, rows, cols, data).unwrap()));
    }
    for (name, w) in &seen {
        let x: Vec<f32> = (0..w.cols()).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0f32; w.rows()];
        let bytes = w.rows() * w.cols() / kernels::BLOCK * w.format().block_bytes();
        // The best of many short rounds: other tenants of a shared box only ever slow a
        // round, and a short one often runs untouched.
        let reps = 16;
        let ring: Vec<QMatrix> = (0..(256 << 20) / bytes + 1).map(|_| w.clone()).collect();
        let (mut hot, mut cold) = (f64::MAX, f64::MAX);
        for _ in 0..200 {
            let start = Instant::now();
            for _ in 0..reps {
                kernels::matmul(w, &x, &mut out);
            }
            hot = hot.min(start.elapsed().as_secs_f64() / reps as f64);
            let start = Instant::now();
            for m in ring.iter().cycle().take(reps) {
                kernels::matmul(m, &x, &mut out);
            }
            cold = cold.min(start.elapsed().as_secs_f64() / reps as f64);
        }
        println!(
            "{name} {:?} {}x{}: hot {:.1} us ({:.1} GB/s), streamed {:.1} us ({:.1} GB/s)",
            w.format(),
            w.rows(),
            w.cols(),
            hot * 1e6,
            bytes as f64 / hot / 1e9,
            cold * 1e6,
            bytes as f64 / cold / 1e9
        );
        // Batched: the weights are read once for all rows, so the arithmetic is what costs.
        for t in [16, 64] {
            let x: Vec<f32> = (0..w.cols() * t).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![0f32; w.rows() * t];
            let (mut hot, mut cold) = (f64::MAX, f64::MAX);
            for _ in 0..40 {
                let start = Instant::now();
                for _ in 0..4 {
                    kernels::matmul(w, &x, &mut out);
                }
                hot = hot.min(start.elapsed().as_secs_f64() / 4.0);
                let start = Instant::now();
                for m in ring.iter().cycle().take(4) {
                    kernels::matmul(m, &x, &mut out);
                }
                cold = cold.min(start.elapsed().as_secs_f64() / 4.0);
            }
            println!(
                "{name} {:?} {}x{} x {t} rows: hot {:.1} us ({:.2} us per row), streamed {:.1} us ({:.2} us per row)",
                w.format(),
                w.rows(),
                w.cols(),
                hot * 1e6,
                hot * 1e6 / t as f64,
                cold * 1e6,
                cold * 1e6 / t as f64
            );
        }
    }
}
