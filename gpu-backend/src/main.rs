//! `gpu-backend` command: serve the models in a directory over an OpenAI-compatible API.
//!
//! Fetch the weights once with `scripts/fetch-models.sh`, then run
//! `gpu-backend --listen 127.0.0.1:8100`. See `gpu-backend --help` for every option.
//! The same binary mounts the control plane (`control-plane` crate) beside the models.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Parser;

use gpu_backend::catalog;
use gpu_backend::engine::{Engine, EngineConfig};
use gpu_backend::server::{router, Limits};
use gpu_backend::whisper::api::AudioLimits;

/// Switchyard's native inference service.
///
/// Serves every model found in --models-dir (one sub-directory per model id, as laid out by
/// scripts/fetch-models.sh) through an OpenAI-compatible API:
///   POST /v1/chat/completions   chat, streaming (SSE) or not
///   POST /v1/embeddings         sentence embeddings
///   POST /v1/audio/transcriptions   speech to text (Whisper; multipart WAV upload)
///   GET  /v1/models             models with their load state (cold/loading/warm)
///   GET  /healthz               200 once every pinned model is warm, else 503
///   GET  /metrics               Prometheus metrics
///
/// and the control plane (unless --no-control-plane; --no-models serves only it):
///   /admin/v1/...               keys, teams, usage, invoices (admin key)
///   /edge/v1/keys, /edge/v1/usage   key snapshot and usage ledger for edges (edge token)
///   GET  /dashboard             the web dashboard
///
/// and, with --gateway-config, the task plane (async tasks, signed webhooks):
///   /v1/tasks, /v1/tasks/{id}, /v1/tasks/{id}/cancel, /v1/webhook-settings
///
/// Example:
///   scripts/fetch-models.sh
///   gpu-backend --listen 127.0.0.1:8100 --pin smollm2-135m-instruct
///   curl -s localhost:8100/v1/chat/completions -H 'content-type: application/json' \
///     -d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}]}'
#[derive(Parser, Debug)]
#[command(name = "gpu-backend", version, verbatim_doc_comment)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8100")]
    listen: SocketAddr,

    /// Directory holding one sub-directory per model (see scripts/fetch-models.sh).
    /// Defaults to $SWITCHYARD_MODELS_DIR, else .cache/models.
    #[arg(long, env = "SWITCHYARD_MODELS_DIR", default_value = ".cache/models")]
    models_dir: PathBuf,

    /// Most sequences a worker decodes together in one batch step.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,

    /// Most requests waiting for a batch slot; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 8192)]
    queue_capacity: usize,

    /// Model id to load at start and never evict (repeatable). Without any --pin, every
    /// model in --models-dir is pinned.
    #[arg(long = "pin", value_name = "MODEL")]
    pins: Vec<String>,

    /// Memory budget per worker for loaded weights, in MiB; unpinned models are evicted
    /// least-recently-used to stay under it. 0 means no limit.
    #[arg(long, default_value_t = 0)]
    memory_budget_mib: u64,

    /// Memory per worker and chat model for the prefix cache, in MiB: keys and values of
    /// finished sequences, reused by prompts that start the same way (a shared system
    /// prompt, the earlier turns of a conversation), least-recently-used out.
    #[arg(long, default_value_t = 256)]
    prefix_cache_mib: u64,

    /// Prefill every prompt from scratch: no prefix cache (for like-for-like benchmarks).
    #[arg(long)]
    no_prefix_cache: bool,

    /// Worker threads; each owns its device and its own copy of the models it serves.
    #[arg(long, default_value_t = 1)]
    workers: usize,

    /// Largest request body accepted, in bytes (larger gets 413).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,

    /// Largest audio upload to /v1/audio/transcriptions, in bytes (larger gets 413).
    #[arg(long, default_value_t = 25 * 1024 * 1024)]
    max_audio_bytes: usize,

    /// Longest audio one transcription request may carry, in seconds (longer gets 400).
    #[arg(long, default_value_t = 120.0)]
    max_audio_seconds: f64,

    /// Run the models on CUDA device N instead of the CPU (needs a `cuda` build:
    /// scripts/cuda-build.sh; at run time the NVIDIA driver and CUDA 13's cuBLAS and cuRAND
    /// libraries on LD_LIBRARY_PATH). Without it the models run on the CPU.
    #[arg(long, value_name = "N", env = "SWITCHYARD_CUDA_DEVICE")]
    cuda_device: Option<usize>,

    /// Load no models: serve only the control plane.
    #[arg(long)]
    no_models: bool,

    #[command(flatten)]
    control_plane: control_plane::cli::ControlPlaneArgs,

    #[command(flatten)]
    task_plane: task_plane::cli::TaskPlaneArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.no_models
        && cli.control_plane.no_control_plane
        && cli.task_plane.gateway_config.is_none()
    {
        bail!("--no-models and --no-control-plane together (without --gateway-config) leave nothing to serve");
    }
    let mut app = axum::Router::new();
    let mut served = Vec::new();
    if !cli.no_models {
        let device = gpu_backend::device::open(cli.cuda_device)?;
        let on = gpu_backend::device::describe(&device);
        let (inference, ids) = inference_router(&cli, device)?;
        app = app.merge(inference);
        served.push(format!(
            "models: {}; pinned models load in the background, /healthz turns 200 when they are warm; device: {on}",
            ids.join(", "),
        ));
    }
    let wants_tasks = !cli.task_plane.no_task_plane && cli.task_plane.gateway_config.is_some();
    if !cli.control_plane.no_control_plane || wants_tasks {
        let store = cli
            .control_plane
            .open_store()
            .await
            .context("opening the store")?;
        if let Some(control) = cli
            .control_plane
            .mount(store.clone())
            .await
            .context("starting the control plane")?
        {
            app = app.merge(control);
            served.push("control plane: /admin/v1, /edge/v1, /dashboard".to_string());
        }
        if let Some(tasks) = cli
            .task_plane
            .start(store, &cli.control_plane.edge_token_sha256)
            .context("starting the task plane")?
        {
            app = app.merge(tasks);
            served.push("task plane: /v1/tasks, /v1/webhook-settings".to_string());
        }
    }
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "gpu-backend listening on http://{addr} ({})",
        served.join("; ")
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
}

/// Starts the worker pool over the models in --models-dir; returns its router and model ids.
fn inference_router(cli: &Cli, device: Device) -> anyhow::Result<(axum::Router, Vec<String>)> {
    let specs = catalog::discover(&cli.models_dir).with_context(|| {
        format!(
            "reading models from {} (run scripts/fetch-models.sh first)",
            cli.models_dir.display()
        )
    })?;
    if specs.is_empty() {
        bail!(
            "no models in {}; run scripts/fetch-models.sh",
            cli.models_dir.display()
        );
    }
    let pinned = if cli.pins.is_empty() {
        specs.iter().map(|s| s.id.clone()).collect()
    } else {
        cli.pins.clone()
    };
    let config = EngineConfig {
        max_batch: cli.max_batch,
        queue_capacity: cli.queue_capacity,
        pinned,
        memory_budget_bytes: cli.memory_budget_mib * 1024 * 1024,
        prefix_cache_bytes: match cli.no_prefix_cache {
            true => 0,
            false => cli.prefix_cache_mib * 1024 * 1024,
        },
        workers: cli.workers,
        device,
        before_load: None,
    };
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let engine = Arc::new(Engine::start(specs, config).context("starting the worker pool")?);
    let limits = Limits {
        max_body_bytes: cli.max_body_bytes,
        audio: AudioLimits {
            max_bytes: cli.max_audio_bytes,
            max_seconds: cli.max_audio_seconds,
        },
        ..Limits::default()
    };
    Ok((router(engine, limits), ids))
}
