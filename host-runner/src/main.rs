//! `host-runner`: run a proxy-wasm `filter.wasm` locally the way Envoy runs it.
//!
//! The library does the work; this binary parses flags, reads files and reports errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use host_runner::config::{ClusterFile, WasmLogLevel};
use host_runner::{ClusterConfig, RunnerConfig};

/// mimalloc instead of glibc's malloc: every request allocates and frees on whichever tokio
/// worker runs it, and glibc's arena locks were a visible share of `serve-component`'s
/// profile (`__lll_lock_wait_private`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run a proxy-wasm filter (filter.wasm) the way Envoy does, without Envoy.
///
/// host-runner loads the filter into wasmtime (one VM per worker thread), gives it the
/// plugin configuration, serves HTTP on --listen, runs every request through the filter,
/// and forwards it to the cluster the filter names in the `x-switchyard-cluster` header.
#[derive(Parser)]
#[command(name = "host-runner", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup; size is irrelevant
enum Command {
    /// Serve HTTP through a proxy-wasm filter (filter.wasm built for wasm32-wasip1).
    ///
    /// Example:
    ///
    ///   host-runner serve --filter target/wasm32-wasip1/release/switchyard_filter.wasm \
    ///     --plugin-config gateway.json --cluster openai=127.0.0.1:9001 \
    ///     --env OPENAI_API_KEY --listen 127.0.0.1:8080 --admin 127.0.0.1:9901
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Serve HTTP through a Spin HTTP component (edge-worker, wasm32-wasip2), as Spin does.
    ///
    /// Example:
    ///
    ///   host-runner serve-component \
    ///     --component edge-worker/target/wasm32-wasip2/release/edge_worker.wasm \
    ///     --listen 127.0.0.1:3000 --var gateway_config="$(cat config/demo.json)" \
    ///     --var openai_api_key="$OPENAI_API_KEY"
    ServeComponent(host_runner::component::ServeComponentArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// The proxy-wasm module (ABI 0.2.x) to run.
    #[arg(long, value_name = "FILE")]
    filter: PathBuf,

    /// Plugin configuration passed to proxy_on_configure (the gateway config file). If the
    /// filter rejects it, host-runner exits with an error instead of serving.
    #[arg(long, value_name = "FILE")]
    plugin_config: Option<PathBuf>,

    /// VM configuration passed to proxy_on_vm_start (Envoy's vm_config.configuration).
    #[arg(long, value_name = "FILE")]
    vm_config: Option<PathBuf>,

    /// Address of the data-plane listener (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Address of the admin listener serving /metrics (Prometheus) and /ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    admin: SocketAddr,

    /// Disable the admin listener.
    #[arg(long, conflicts_with = "admin")]
    no_admin: bool,

    /// An upstream cluster, NAME=HOST:PORT (plain HTTP/1.1), the target of
    /// `x-switchyard-cluster: NAME`. Repeatable. Timeouts: connect 5s, no response timeout
    /// (as the project's envoy.yaml route `timeout: 0s`); use --cluster-config for others.
    #[arg(long = "cluster", value_name = "NAME=HOST:PORT")]
    clusters: Vec<String>,

    /// A JSON or YAML file with clusters and timeouts:
    /// `clusters: [{name, address, connect_timeout_ms, request_timeout_ms, idle_timeout_ms,
    /// pool_idle_timeout_ms}]`
    /// (0 disables a timeout). Combined with --cluster.
    #[arg(long, value_name = "FILE")]
    cluster_config: Option<PathBuf>,

    /// Environment variable for the VM (Envoy's vm_config.environment_variables): NAME
    /// forwards the host's NAME (skipped with a warning if unset, like host_env_keys),
    /// NAME=VALUE sets it. Repeatable. Nothing else from the host environment is visible to
    /// the filter.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,

    /// Worker threads, each with its own VM instance (Envoy's --concurrency).
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// Host log level (trace, debug, info, warn, error); also the level reported to the
    /// filter by proxy_get_log_level. RUST_LOG-style filters are not supported.
    #[arg(long, default_value = "info")]
    log_level: String,

    /// Longest a single filter callback may run before it is interrupted (the request then
    /// fails with 500 and the VM is replaced).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    guest_timeout_ms: u64,

    /// Largest body the filter may buffer (413 for requests, 500 for responses beyond it).
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024 * 1024)]
    max_buffer_bytes: usize,

    /// Do not cache compiled modules (by default they are cached in $HOST_RUNNER_CACHE_DIR or
    /// the temp directory's host-runner-cache, keyed by the wasm's SHA-256).
    #[arg(long)]
    no_compile_cache: bool,

    /// Value of the plugin_name property.
    #[arg(long, default_value = "switchyard")]
    plugin_name: String,

    /// Value of the plugin_root_id property (Envoy's config.root_id).
    #[arg(long, default_value = "switchyard")]
    root_id: String,

    /// Value of the plugin_vm_id property (Envoy's vm_config.vm_id); shared queues are
    /// registered under it.
    #[arg(long, default_value = "switchyard")]
    vm_id: String,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn parse_env(specs: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for spec in specs {
        let (name, value) = match spec.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => match std::env::var(spec) {
                Ok(v) => (spec.clone(), v),
                // Like Envoy's `host_env_keys`: an unset variable is simply absent in the VM.
                Err(_) => {
                    tracing::warn!("--env {spec}: not set in host-runner's environment; the filter will not see it");
                    continue;
                }
            },
        };
        if name.is_empty() {
            bail!("--env {spec:?}: empty variable name");
        }
        out.push((name, value));
    }
    Ok(out)
}

fn wasm_level(level: &str) -> Result<(tracing::Level, WasmLogLevel)> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => (tracing::Level::TRACE, WasmLogLevel::Trace),
        "debug" => (tracing::Level::DEBUG, WasmLogLevel::Debug),
        "info" => (tracing::Level::INFO, WasmLogLevel::Info),
        "warn" | "warning" => (tracing::Level::WARN, WasmLogLevel::Warn),
        "error" => (tracing::Level::ERROR, WasmLogLevel::Error),
        other => bail!("unknown --log-level {other:?} (trace, debug, info, warn, error)"),
    })
}

async fn serve(args: ServeArgs) -> Result<()> {
    let (level, wasm_log_level) = wasm_level(&args.log_level)?;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();

    let wasm = std::fs::read(&args.filter).map_err(|source| host_runner::HostError::ReadWasm {
        path: args.filter.clone(),
        source,
    })?;
    let plugin_config = match &args.plugin_config {
        Some(p) => read("plugin config", p)?,
        None => Vec::new(),
    };
    let vm_config = match &args.vm_config {
        Some(p) => read("vm config", p)?,
        None => Vec::new(),
    };
    let mut clusters = Vec::new();
    if let Some(path) = &args.cluster_config {
        clusters.extend(ClusterFile::load(path)?.clusters);
    }
    for flag in &args.clusters {
        clusters.push(ClusterConfig::parse_flag(flag)?);
    }
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }

    let mut config = RunnerConfig::new(wasm, plugin_config);
    config.vm_config = vm_config;
    config.clusters = clusters;
    config.env = parse_env(&args.env)?;
    config.workers = args.workers;
    config.listen = args.listen;
    config.admin = (!args.no_admin).then_some(args.admin);
    config.guest_timeout = Duration::from_millis(args.guest_timeout_ms);
    config.max_buffer_bytes = args.max_buffer_bytes;
    config.wasm_log_level = wasm_log_level;
    config.plugin_name = args.plugin_name.clone();
    config.root_id = args.root_id.clone();
    if args.no_compile_cache {
        config.cache_dir = None;
    }
    config.vm_id = args.vm_id.clone();

    let server = host_runner::start(config)
        .await
        .with_context(|| format!("cannot start {}", args.filter.display()))?;
    let clusters = server.world.clusters.describe();
    println!(
        "host-runner: serving {} on http://{} (admin: {}; {} worker{}; clusters: {})",
        args.filter.display(),
        server.listen_addr,
        server
            .admin_addr
            .map_or("off".to_string(), |a| format!("http://{a}")),
        args.workers,
        if args.workers == 1 { "" } else { "s" },
        if clusters.is_empty() {
            "none".to_string()
        } else {
            clusters.join(", ")
        },
    );
    shutdown_signal().await?;
    server.shutdown();
    Ok(())
}

async fn serve_component(args: host_runner::component::ServeComponentArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    let path = args.component.clone();
    let server = host_runner::component::start_component(args.into_config()?)
        .await
        .with_context(|| format!("cannot serve {}", path.display()))?;
    println!(
        "host-runner: serving component {} on http://{}",
        path.display(),
        server.listen_addr
    );
    shutdown_signal().await?;
    server.shutdown();
    Ok(())
}

/// Ctrl-C or SIGTERM (what process managers and test harnesses send).
async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::ServeComponent(args) => runtime.block_on(serve_component(args)),
    }
}
