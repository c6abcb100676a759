//! Serving benchmark over the real models, through the HTTP API on loopback.
//!
//! Measures what the backend is for: aggregate decode throughput as concurrent streams grow
//! (continuous batching), time to first token on a warm model against the model's cold
//! load, and a burst of 5,000 concurrent open requests held in the queue without an error
//! (embedding requests: same queue and worker, without 5,000 chat prefills).
//!
//! Run: `scripts/fetch-models.sh && cargo bench -p gpu-backend --bench serving`
//! (`BENCH_TOKENS`, `BENCH_BURST` override the tokens per stream and the burst size). The
//! client shares the machine with the server, as the gateway would on a one-box deploy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use futures_util::StreamExt;
use gpu_backend::catalog;
use gpu_backend::engine::{Engine, EngineConfig};
use gpu_backend::server::{router, Limits};
use serde_json::{json, Value};

mod common;
use common::cpu_seconds;

const MODEL: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"));
    assert!(
        dir.join(MODEL).is_dir(),
        "no {MODEL} in {}: run scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    base: String,
    engine: Arc<Engine>,
    client: reqwest::Client,
}

async fn start(pinned: &[&str], max_batch: usize, queue_capacity: usize) -> Server {
    let specs = catalog::discover(&models_dir()).expect("models dir");
    let config = EngineConfig {
        max_batch,
        queue_capacity,
        pinned: pinned.iter().map(|s| s.to_string()).collect(),
        memory_budget_bytes: 0,
        prefix_cache_bytes: 64 << 20,
        workers: 1,
        device: Device::Cpu,
        before_load: None,
    };
    let engine = Arc::new(Engine::start(specs, config).expect("engine"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(engine.clone(), Limits::default());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        base,
        engine,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    }
}

fn chat(prompt: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// Streams one completion; returns (time to first content, completion tokens).
async fn stream_one(server: &Server, body: Value) -> (Duration, u64) {
    let started = Instant::now();
    let resp = server
        .client
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let mut first = None;
    let mut tokens = 0;
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        while let Some(end) = buf.find("\n\n") {
            let frame = buf[..end].trim_start_matches("data: ").to_owned();
            buf.drain(..end + 2);
            if frame == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&frame).expect("chunk json");
            if first.is_none()
                && v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            {
                first = Some(started.elapsed());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n;
            }
        }
    }
    (first.expect("no content streamed"), tokens)
}

async fn wait_warm(server: &Server) -> Duration {
    let started = Instant::now();
    while !server.engine.ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

const PROMPTS: [&str; 8] = [
    "Write a short story about a lighthouse keeper.",
    "Explain how rainbows form.",
    "List some tips for learning to cook.",
    "Describe the water cycle.",
    "What makes a good friend?",
    "Write a poem about autumn leaves.",
    "Explain what a computer program is.",
    "Describe a busy city market.",
];

#[tokio::main]
async fn main() {
    let tokens = env_usize("BENCH_TOKENS", 32);
    let burst = env_usize("BENCH_BURST", 5000);
    println!("gpu-backend serving benchmark: {MODEL}, CPU, greedy, {tokens} tokens per stream");

    // Cold start: a fresh engine, the model loading off the request path, first request
    // waiting for it.
    let server = start(&[], 64, 8192).await;
    let (cold_ttft, _) = stream_one(&server, chat(PROMPTS[0], 8, true)).await;
    let models: Value = server
        .client
        .get(format!("{}/v1/models", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let load_ms = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MODEL)
        .and_then(|m| m["load_time_ms"].as_u64())
        .expect("load time");
    drop(server);

    let server = start(&[MODEL], 64, 8192).await;
    let pinned_warm_after = wait_warm(&server).await;
    // Warm-up, then warm time to first token (median of 5, one stream at a time).
    stream_one(&server, chat(PROMPTS[1], 4, true)).await;
    let mut ttfts = Vec::new();
    for p in PROMPTS.iter().take(5) {
        ttfts.push(stream_one(&server, chat(p, 4, true)).await.0);
    }
    let warm_ttft = median(ttfts);
    println!(
        "cold load {load_ms} ms (pinned model warm {:.0} ms after start); cold first token {:.0} ms; warm first token (median of 5) {:.0} ms",
        pinned_warm_after.as_secs_f64() * 1e3,
        cold_ttft.as_secs_f64() * 1e3,
        warm_ttft.as_secs_f64() * 1e3
    );

    let server = Arc::new(server);
    let mut baseline = 0.0;
    let mut cpu_baseline = 0.0;
    println!("| concurrent streams | tokens | wall s | aggregate tok/s | vs 1 stream | tok per CPU-s | vs 1 stream | median TTFT ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for streams in [1usize, 4, 16, 64] {
        let cpu_start = cpu_seconds();
        let started = Instant::now();
        let handles: Vec<_> = (0..streams)
            .map(|i| {
                let server = server.clone();
                let body = chat(PROMPTS[i % PROMPTS.len()], tokens, true);
                tokio::spawn(async move { stream_one(&server, body).await })
            })
            .collect();
        let mut total = 0;
        let mut ttfts = Vec::new();
        for h in handles {
            let (ttft, n) = h.await.unwrap();
            total += n;
            ttfts.push(ttft);
        }
        let wall = started.elapsed().as_secs_f64();
        let rate = total as f64 / wall;
        let cpu_rate = total as f64 / (cpu_seconds() - cpu_start).max(0.01);
        if streams == 1 {
            baseline = rate;
            cpu_baseline = cpu_rate;
        }
        println!(
            "| {streams} | {total} | {wall:.2} | {rate:.1} | {:.2}x | {cpu_rate:.1} | {:.2}x | {:.0} |",
            rate / baseline,
            cpu_rate / cpu_baseline,
            median(ttfts).as_secs_f64() * 1e3
        );
    }

    // Burst: every request open at once, queued (no 429/503 while there is room). It uses
    // the embedding model, which shares the admission queue and worker with chat, so the
    // run measures holding connections, not thousands of chat prefills.
    drop(server);
    let server = Arc::new(start(&[EMBED], 64, 8192).await);
    wait_warm(&server).await;
    let started = Instant::now();
    let handles: Vec<_> = (0..burst)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .client
                    .post(format!("{}/v1/embeddings", server.base))
                    .json(&json!({"model": EMBED, "input": PROMPTS[i % PROMPTS.len()]}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut peak_queue = 0;
    let mut statuses = std::collections::BTreeMap::new();
    for h in handles {
        peak_queue = peak_queue.max(server.engine.queue_depth());
        let status = match h.await.unwrap() {
            Ok(s) => s.to_string(),
            Err(e) => format!("transport error: {e}"),
        };
        *statuses.entry(status).or_insert(0usize) += 1;
    }
    println!(
        "burst of {burst} concurrent requests: {:.1} s, outcomes {statuses:?}, peak queue depth seen {peak_queue}",
        started.elapsed().as_secs_f64()
    );
}
