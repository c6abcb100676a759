//! Shared test helpers: where the real weights are, a generator for tiny random-weight
//! models in the same GGUF format, and an in-process server on a loopback port.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use gpu_backend::catalog;
use gpu_backend::engine::{Engine, EngineConfig, LoadHook};
use gpu_backend::llama::{argmax, Kernels, KvCache, QuantizedLlama, StepInput};
use gpu_backend::server::{router, Limits};

pub const CHAT_MODEL: &str = "smollm2-135m-instruct";
pub const EMBED_MODEL: &str = "all-minilm-l6-v2";
pub const TINY_MODEL: &str = "tiny-llama";

/// The directory `scripts/fetch-models.sh` fills. Panics, with the fix, if the weights are
/// missing: tests that need real weights must fail loudly rather than skip.
pub fn real_models_dir() -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".cache")
                .join("models")
        });
    let gguf = dir.join(CHAT_MODEL).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let minilm = dir.join(EMBED_MODEL).join("model.safetensors");
    assert!(
        gguf.is_file() && minilm.is_file(),
        "real model weights not found in {} (looked for {} and {}): run scripts/fetch-models.sh \
         (or point SWITCHYARD_MODELS_DIR at a directory it filled)",
        dir.display(),
        gguf.display(),
        minilm.display()
    );
    dir
}

fn fresh_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gpu-backend-test-{}-{}-{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes a tiny llama GGUF (2 layers, hidden 64, Q4_1 weights drawn from a seeded RNG, a
/// byte-level vocabulary with the ChatML control tokens) into a fresh models directory, so
/// scheduler tests exercise the real loading and forward code in milliseconds.
pub fn tiny_models_dir() -> PathBuf {
    let dir = fresh_dir("tiny");
    let model_dir = dir.join(TINY_MODEL);
    std::fs::create_dir_all(&model_dir).unwrap();
    let dev = Device::Cpu;
    let (hidden, ff, heads, kv_heads, layers) = (64usize, 128usize, 4u32, 2u32, 2usize);
    let head_dim = hidden / heads as usize;

    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let vocab = tokens.len();
    let types: Vec<gguf_file::Value> = (0..vocab)
        .map(|i| gguf_file::Value::I32(if i < 3 { 3 } else { 1 }))
        .collect();

    use gguf_file::Value as V;
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.block_count", V::U32(layers as u32)),
        ("llama.context_length", V::U32(16384)),
        ("llama.embedding_length", V::U32(hidden as u32)),
        ("llama.feed_forward_length", V::U32(ff as u32)),
        ("llama.attention.head_count", V::U32(heads)),
        ("llama.attention.head_count_kv", V::U32(kv_heads)),
        ("llama.rope.dimension_count", V::U32(head_dim as u32)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            V::Array(tokens.into_iter().map(V::String).collect()),
        ),
        ("tokenizer.ggml.merges", V::Array(Vec::new())),
        ("tokenizer.ggml.token_type", V::Array(types)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
    ];

    // A fixed seed keeps the model, hence its greedy outputs, identical across runs.
    use rand::{Rng, SeedableRng};
    let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(7));
    let q = |rows: usize, cols: usize, dtype: GgmlDType| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.borrow_mut().random_range(-1.0f32..1.0))
            .collect();
        let t = Tensor::from_vec(data, (rows, cols), &dev).unwrap();
        QTensor::quantize(&t, dtype).unwrap()
    };
    let ones = |n: usize| {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &dev).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(vocab, hidden, GgmlDType::Q8_0),
        ),
        ("output_norm.weight".into(), ones(hidden)),
    ];
    let kv = kv_heads as usize * head_dim;
    for l in 0..layers {
        let p = format!("blk.{l}");
        tensors.push((
            format!("{p}.attn_q.weight"),
            q(hidden, hidden, GgmlDType::Q4_1),
        ));
        tensors.push((format!("{p}.attn_k.weight"), q(kv, hidden, GgmlDType::Q4_1)));
        tensors.push((format!("{p}.attn_v.weight"), q(kv, hidden, GgmlDType::Q4_1)));
        tensors.push((
            format!("{p}.attn_output.weight"),
            q(hidden, hidden, GgmlDType::Q4_1),
        ));
        tensors.push((
            format!("{p}.ffn_gate.weight"),
            q(ff, hidden, GgmlDType::Q4_1),
        ));
        tensors.push((format!("{p}.ffn_up.weight"), q(ff, hidden, GgmlDType::Q4_1)));
        tensors.push((
            format!("{p}.ffn_down.weight"),
            q(hidden, ff, GgmlDType::Q4_1),
        ));
        tensors.push((format!("{p}.attn_norm.weight"), ones(hidden)));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(hidden)));
    }
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(model_dir.join("tiny.gguf")).unwrap();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
    dir
}

/// Engine settings for tests: one CPU worker, everything explicit.
pub fn config(pinned: &[&str], max_batch: usize, queue_capacity: usize) -> EngineConfig {
    EngineConfig {
        max_batch,
        queue_capacity,
        pinned: pinned.iter().map(|s| s.to_string()).collect(),
        memory_budget_bytes: 0,
        prefix_cache_bytes: 64 << 20,
        workers: 1,
        device: Device::Cpu,
        before_load: None,
    }
}

/// A running backend on a loopback port.
pub struct TestServer {
    pub base: String,
    pub engine: Arc<Engine>,
    pub client: reqwest::Client,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The Prometheus text `/metrics` answers.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (up to 60 s) for `/healthz` to answer 200.
    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if self.engine.ready() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("pinned models did not become warm within 60 s");
    }

    /// Posts JSON and returns status and parsed body.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let json = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}

/// Starts the API over the models in `dir` on 127.0.0.1 with an OS-chosen port.
pub async fn start_server(
    dir: &std::path::Path,
    mut config: EngineConfig,
    hook: Option<LoadHook>,
    limits: Limits,
) -> TestServer {
    config.before_load = hook;
    let specs = catalog::discover(dir).expect("discover models");
    let engine = Arc::new(Engine::start(specs, config).expect("start engine"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(engine.clone(), limits);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestServer {
        base: format!("http://{addr}"),
        engine,
        client: reqwest::Client::new(),
    }
}

/// Greedy decoding straight on the model: feeds `feed` after `cache`'s history, then each
/// chosen token; returns the `steps` tokens and the logits of the first step.
pub fn greedy_after(
    model: &QuantizedLlama,
    mut cache: KvCache,
    feed: &[u32],
    steps: usize,
) -> (Vec<u32>, Vec<f32>) {
    let mut next = feed.to_vec();
    let (mut out, mut first) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let logits = model
            .forward(&mut [StepInput {
                tokens: &next,
                cache: &mut cache,
            }])
            .unwrap()
            .get(0)
            .unwrap();
        if first.is_empty() {
            first = logits.to_vec1().unwrap();
        }
        let t = argmax(&logits).unwrap();
        out.push(t);
        next = vec![t];
    }
    (out, first)
}

/// A chat request body asking for greedy decoding.
pub fn greedy_chat(model: &str, prompt: &str, max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

/// The assistant text of a non-streamed chat completion.
pub fn content(body: &serde_json::Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {body}"))
        .to_owned()
}

/// The real SmolLM2 weights on the CPU with the given kernels.
pub fn load_smollm2(kernels: Kernels) -> QuantizedLlama {
    let path = real_models_dir()
        .join(CHAT_MODEL)
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let content = gguf_file::Content::read(&mut file).unwrap();
    let model = QuantizedLlama::from_gguf_with(&content, &mut file, &Device::Cpu, kernels).unwrap();
    assert_eq!(model.kernels(), kernels);
    model
}

/// Greedy tokens, and the logits of the prompt's last position.
pub fn greedy(model: &QuantizedLlama, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<f32>) {
    greedy_after(model, model.new_cache(), prompt, steps)
}

/// espeak-ng's WAV of `sentence` (installed by `scripts/install-espeak.sh`).
pub fn speak(sentence: &str) -> Vec<u8> {
    static SPOKEN: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "espeak-test-{}-{}.wav",
        std::process::id(),
        SPOKEN.fetch_add(1, Ordering::Relaxed)
    ));
    let status = std::process::Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(sentence)
        .status()
        .expect("espeak-ng is missing: install it with scripts/install-espeak.sh");
    assert!(status.success(), "espeak-ng failed: {status}");
    let bytes = std::fs::read(&path).expect("read the spoken WAV");
    let _ = std::fs::remove_file(&path);
    bytes
}
