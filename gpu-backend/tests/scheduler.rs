//! Scheduler, admission and API-error behaviour, on a tiny random-weight llama written in
//! the real GGUF format (see `common::tiny_models_dir`), so these run in seconds.

mod common;

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{content, greedy_chat, start_server, TestServer, TINY_MODEL};
use futures_util::StreamExt;
use gpu_backend::engine::LoadHook;
use gpu_backend::server::Limits;
use serde_json::{json, Value};

/// A load hook that blocks every model load until the returned sender is dropped.
fn load_gate() -> (LoadHook, mpsc::Sender<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let hook: LoadHook = Arc::new(move |_model: &str| {
        if let Ok(rx) = rx.lock() {
            let _ = rx.recv();
        }
    });
    (hook, tx)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Posts every body at once; the answers' texts in order, each checked to be a 200.
async fn post_together(server: &Arc<TestServer>, bodies: Vec<Value>) -> Vec<String> {
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let server = server.clone();
            tokio::spawn(async move { server.post("/v1/chat/completions", body).await })
        })
        .collect();
    let mut texts = Vec::new();
    for h in handles {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        texts.push(content(&body));
    }
    texts
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

const PROMPTS: [&str; 6] = [
    "hello",
    "the quick brown fox jumps over the lazy dog",
    "1 2 3",
    "a much longer prompt, so that prefill and decode mix in one batch step, with commas",
    "zzz",
    "Ünïcödé ✓",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_requests_equal_sequential_ones() {
    let dir = common::tiny_models_dir();
    let server = start_server(
        &dir,
        common::config(&[TINY_MODEL], 8, 64),
        None,
        Limits::default(),
    )
    .await;
    server.wait_ready().await;
    let mut alone = Vec::new();
    for p in PROMPTS {
        let (status, body) = server
            .post("/v1/chat/completions", greedy_chat(TINY_MODEL, p, 48))
            .await;
        assert_eq!(status, 200, "{body}");
        alone.push(content(&body));
    }
    let steps_before = metric(&server.metrics().await, "gpu_backend_batch_steps_total");
    let tokens_before = metric(
        &server.metrics().await,
        "gpu_backend_tokens_generated_total",
    );
    let server = Arc::new(server);
    let bodies = PROMPTS.iter().map(|p| greedy_chat(TINY_MODEL, p, 48));
    let together = post_together(&server, bodies.collect()).await;
    assert_eq!(together, alone);
    // Batching really happened: fewer forward steps than tokens generated.
    let m = server.metrics().await;
    let steps = metric(&m, "gpu_backend_batch_steps_total") - steps_before;
    let tokens = metric(&m, "gpu_backend_tokens_generated_total") - tokens_before;
    assert!(
        steps < tokens,
        "{steps} steps for {tokens} tokens: no batching"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cancels_the_sequence_and_frees_its_slot() {
    let dir = common::tiny_models_dir();
    // One batch slot: if the cancelled sequence kept it, the next request could never run.
    let server = start_server(
        &dir,
        common::config(&[TINY_MODEL], 1, 8),
        None,
        Limits::default(),
    )
    .await;
    server.wait_ready().await;
    let mut long = greedy_chat(TINY_MODEL, "go on forever", 16000);
    long["stream"] = json!(true);
    let resp = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    stream.next().await.unwrap().unwrap();
    let engine = server.engine.clone();
    wait_for("the sequence to run", || engine.running() == 1).await;

    // A second request waits in the queue behind it; dropping that client frees its place.
    let queued = {
        let client = server.client.clone();
        let url = server.url("/v1/chat/completions");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&greedy_chat(TINY_MODEL, "x", 4))
                .send()
                .await
        })
    };
    wait_for("the second request to queue", || engine.queue_depth() == 1).await;
    queued.abort();
    wait_for("the queued request to be dropped", || {
        engine.queue_depth() == 0
    })
    .await;

    drop(stream);
    wait_for("the streaming sequence to be cancelled", || {
        engine.running() == 0
    })
    .await;
    let m = server.metrics().await;
    assert!(
        metric(&m, "gpu_backend_requests_cancelled_total") >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "gpu_backend_tokens_generated_total") < 4000.0,
        "the sequence ran to the end"
    );

    let started = Instant::now();
    let (status, body) = server
        .post("/v1/chat/completions", greedy_chat(TINY_MODEL, "next", 4))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after_and_recovers() {
    let dir = common::tiny_models_dir();
    let (hook, release) = load_gate();
    let server = Arc::new(
        start_server(
            &dir,
            common::config(&[TINY_MODEL], 1, 2),
            Some(hook),
            Limits::default(),
        )
        .await,
    );
    // The model is held loading, so admitted requests stay queued.
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .post(
                        "/v1/chat/completions",
                        greedy_chat(TINY_MODEL, &format!("q{i}"), 4),
                    )
                    .await
            })
        })
        .collect();
    let engine = server.engine.clone();
    wait_for("two queued requests", || engine.queue_depth() == 2).await;

    let resp = server
        .client
        .post(server.url("/v1/chat/completions"))
        .json(&greedy_chat(TINY_MODEL, "one too many", 4))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("queue"));
    assert_eq!(
        metric(
            &server.metrics().await,
            "gpu_backend_requests_rejected_total"
        ),
        1.0
    );

    drop(release);
    for h in waiting {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(server.engine.queue_depth(), 0);
    let (status, body) = server
        .post("/v1/chat/completions", greedy_chat(TINY_MODEL, "again", 4))
        .await;
    assert_eq!(status, 200, "after the burst: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_model_load_waits_and_succeeds() {
    let dir = common::tiny_models_dir();
    let (hook, release) = load_gate();
    let server = Arc::new(
        start_server(
            &dir,
            common::config(&[TINY_MODEL], 4, 16),
            Some(hook),
            Limits::default(),
        )
        .await,
    );
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let models: Value = server
        .client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["state"], "loading");

    let request = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .post(
                    "/v1/chat/completions",
                    greedy_chat(TINY_MODEL, "wait for me", 6),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !request.is_finished(),
        "answered before the model was loaded"
    );
    drop(release);
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 6);

    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let models: Value = server
        .client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["state"], "warm");
    assert!(models["data"][0]["load_time_ms"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_requests_all_succeed() {
    let dir = common::tiny_models_dir();
    let server = Arc::new(
        start_server(
            &dir,
            common::config(&[TINY_MODEL], 32, 4096),
            None,
            Limits::default(),
        )
        .await,
    );
    server.wait_ready().await;
    let n = 2000;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .post(
                        "/v1/chat/completions",
                        greedy_chat(TINY_MODEL, &format!("request {i}"), 2),
                    )
                    .await
                    .0
            })
        })
        .collect();
    let mut ok = 0;
    for h in handles {
        assert_eq!(h.await.unwrap(), 200);
        ok += 1;
    }
    assert_eq!(ok, n);
    assert_eq!(server.engine.queue_depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_models_load_on_demand_and_are_evicted_lru() {
    let dir = common::tiny_models_dir();
    let src = dir.join(TINY_MODEL).join("tiny.gguf");
    for id in ["tiny-b", "tiny-c"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        std::fs::copy(&src, dir.join(id).join("tiny.gguf")).unwrap();
    }
    let size = std::fs::metadata(&src).unwrap().len();
    let mut config = common::config(&[TINY_MODEL], 4, 16);
    // Room for the pinned model and one more.
    config.memory_budget_bytes = size * 2 + size / 2;
    let server = start_server(&dir, config, None, Limits::default()).await;
    server.wait_ready().await;
    let state = |models: &Value, id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    let list = || async {
        server
            .client
            .get(server.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert_eq!(state(&list().await, "tiny-b"), "cold");

    assert_eq!(
        server
            .post("/v1/chat/completions", greedy_chat("tiny-b", "b", 2))
            .await
            .0,
        200
    );
    assert_eq!(state(&list().await, "tiny-b"), "warm");
    assert_eq!(
        server
            .post("/v1/chat/completions", greedy_chat("tiny-c", "c", 2))
            .await
            .0,
        200
    );
    let models = list().await;
    assert_eq!(state(&models, "tiny-c"), "warm");
    assert_eq!(
        state(&models, "tiny-b"),
        "cold",
        "least recently used should be evicted"
    );
    assert_eq!(
        state(&models, TINY_MODEL),
        "warm",
        "pinned models are never evicted"
    );
    assert_eq!(
        server
            .post("/v1/chat/completions", greedy_chat("tiny-b", "b", 2))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_never_break_the_worker() {
    let dir = common::tiny_models_dir();
    let limits = Limits {
        max_body_bytes: 2048,
        max_embedding_inputs: 4,
        ..Limits::default()
    };
    let server = start_server(&dir, common::config(&[TINY_MODEL], 4, 16), None, limits).await;
    server.wait_ready().await;
    let raw = |path: &'static str, body: &'static str| {
        let req = server
            .client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let check = |(status, body): (u16, Value), want: u16, code: Value| {
        assert_eq!(status, want, "{body}");
        let e = &body["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(
            e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
            "{body}"
        );
        assert_eq!(e["code"], code, "{body}");
    };
    check(
        raw("/v1/chat/completions", "{not json").await,
        400,
        Value::Null,
    );
    check(
        raw(
            "/v1/chat/completions",
            r#"{"model":"tiny-llama","messages":"hi"}"#,
        )
        .await,
        400,
        Value::Null,
    );
    check(raw("/v1/chat/completions", r#"{"model":"tiny-llama","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}"#).await, 400, Value::Null);
    check(
        raw("/v1/embeddings", r#"{"model":"tiny-llama","input":42}"#).await,
        400,
        Value::Null,
    );
    let mut t = greedy_chat(TINY_MODEL, "x", 4);
    t["temperature"] = json!(7);
    let (status, body) = server.post("/v1/chat/completions", t).await;
    assert_eq!(body["error"]["param"], "temperature");
    check((status, body), 400, Value::Null);
    check(
        server
            .post("/v1/chat/completions", greedy_chat("gpt-9", "x", 4))
            .await,
        404,
        json!("model_not_found"),
    );
    check(
        server
            .post("/v1/embeddings", json!({"model": TINY_MODEL, "input": "x"}))
            .await,
        400,
        json!("model_not_supported"),
    );
    check(
        server
            .post(
                "/v1/embeddings",
                json!({"model": "nope", "input": ["a", "b", "c", "d", "e"]}),
            )
            .await,
        413,
        json!("request_too_large"),
    );
    check(
        server
            .post(
                "/v1/chat/completions",
                greedy_chat(TINY_MODEL, &"x".repeat(4096), 4),
            )
            .await,
        413,
        json!("request_too_large"),
    );
    check(
        server
            .post(
                "/v1/chat/completions",
                greedy_chat(TINY_MODEL, "x", 100_000),
            )
            .await,
        400,
        json!("context_length_exceeded"),
    );
    check(
        server
            .post(
                "/v1/chat/completions",
                json!({"model": TINY_MODEL, "messages": []}),
            )
            .await,
        400,
        Value::Null,
    );
    check(
        server
            .post(
                "/v1/chat/completions",
                json!({"model": TINY_MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
            )
            .await,
        400,
        Value::Null,
    );
    let resp = server
        .client
        .get(server.url("/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Stop strings end the completion and are not part of it.
    let (status, body) = server
        .post("/v1/chat/completions", greedy_chat(TINY_MODEL, "x", 40))
        .await;
    assert_eq!(status, 200);
    let full = content(&body);
    let mut stop_at = full.chars().skip(3).take(2).collect::<String>();
    if stop_at.is_empty() {
        stop_at = "unreachable".into();
    }
    let mut req = greedy_chat(TINY_MODEL, "x", 40);
    req["stop"] = json!(stop_at.clone());
    let (status, body) = server.post("/v1/chat/completions", req).await;
    assert_eq!(status, 200);
    let cut = content(&body);
    assert!(!cut.contains(&stop_at), "{cut:?} contains stop {stop_at:?}");
    assert!(full.starts_with(&cut), "{full:?} vs {cut:?}");

    // After all that, the worker still serves.
    let (status, _) = server
        .post(
            "/v1/chat/completions",
            greedy_chat(TINY_MODEL, "still alive?", 4),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_each_load_pinned_models_and_share_the_load() {
    let dir = common::tiny_models_dir();
    let mut config = common::config(&[TINY_MODEL], 4, 64);
    config.workers = 2;
    let server = Arc::new(start_server(&dir, config, None, Limits::default()).await);
    server.wait_ready().await;
    let alone = content(
        &server
            .post("/v1/chat/completions", greedy_chat(TINY_MODEL, "same", 16))
            .await
            .1,
    );
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .post("/v1/chat/completions", greedy_chat(TINY_MODEL, "same", 16))
                    .await
            })
        })
        .collect();
    for h in handles {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        // Every worker holds its own copy of the same weights: same greedy answer anywhere.
        assert_eq!(content(&body), alone);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_keeps_concurrent_greedy_output_and_its_memory_bound() {
    // Conversations that share heads of different lengths, sent one by one and then all at
    // once (prefills and decodes in the same steps, copies from running sequences).
    let head = "a long shared opening that every conversation repeats, like a system prompt; ";
    let prompts: Vec<String> = (0..8)
        .map(|i| match i % 3 {
            0 => format!("{head}question {i}"),
            1 => format!("{head}{head}question {i}"),
            _ => format!("different start {i}"),
        })
        .collect();
    // The tiny model's keys and values: 2 layers × (k, v) × 2 heads × 16 dims × 4 bytes.
    let per_token = 2 * 2 * 2 * 16 * 4;
    let budget = 300 * per_token;
    let mut runs: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for prefix_cache_bytes in [0, budget] {
        let dir = common::tiny_models_dir();
        let mut config = common::config(&[TINY_MODEL], 8, 64);
        config.prefix_cache_bytes = prefix_cache_bytes;
        let server = Arc::new(start_server(&dir, config, None, Limits::default()).await);
        server.wait_ready().await;
        let mut alone = Vec::new();
        for p in &prompts {
            let (status, body) = server
                .post("/v1/chat/completions", greedy_chat(TINY_MODEL, p, 24))
                .await;
            assert_eq!(status, 200, "{body}");
            alone.push(content(&body));
        }
        let bodies = prompts.iter().map(|p| greedy_chat(TINY_MODEL, p, 24));
        let together = post_together(&server, bodies.collect()).await;
        let m = server.metrics().await;
        let cached = metric(&m, "gpu_backend_prompt_tokens_cached_total");
        let held = metric(&m, "gpu_backend_prefix_cache_bytes");
        if prefix_cache_bytes == 0 {
            assert_eq!((cached, held), (0.0, 0.0));
        } else {
            assert!(cached > 0.0, "nothing reused");
            assert!(
                held > 0.0 && held <= budget as f64,
                "{held} bytes held, budget {budget}"
            );
        }
        runs.push((alone, together));
    }
    assert_eq!(runs[0].0, runs[0].1, "batching changed an answer");
    assert_eq!(runs[1], runs[0], "the prefix cache changed an answer");
}
