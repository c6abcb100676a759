//! Loopback benchmark: requests/s and p50/p99 latency through host-runner with the
//! passthrough guest, against the same upstream hit directly, with `wrk` as the load
//! generator (the tool the Envoy section of BENCHMARKS.md uses, so rows are comparable).
//!
//! ```sh
//! cargo run --release -p host-runner --example bench -- --duration 10 --conns 1,64,512
//! ```
//!
//! Everything binds 127.0.0.1 on ephemeral ports; every run is bounded by `--duration`
//! (at most 60 s per measurement) and `--conns` (at most 1024).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use host_runner::body::HostBody;
use host_runner::{ClusterConfig, RunnerConfig};
use http::Response;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A fixed OpenAI chat completion, about the size of a short real answer.
const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;

struct Args {
    duration: u64,
    conns: Vec<u32>,
    workers: usize,
    filter: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        duration: 10,
        conns: vec![1, 64, 512],
        workers: 2,
        filter: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => args.duration = value()?.parse()?,
            "--conns" => {
                args.conns = value()?
                    .split(',')
                    .map(|c| c.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--workers" => args.workers = value()?.parse()?,
            "--filter" => args.filter = Some(PathBuf::from(value()?)),
            "--help" | "-h" => {
                println!(
                    "bench [--duration SECS] [--conns 1,64,512] [--workers N] [--filter passthrough.wasm]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if !(1..=60).contains(&args.duration) {
        bail!("--duration must be 1..=60 seconds");
    }
    if args.conns.iter().any(|c| !(1..=1024).contains(c)) {
        bail!("--conns values must be 1..=1024");
    }
    Ok(args)
}

/// Build the passthrough guest (release, wasm32-wasip1) unless a path was given.
fn passthrough(filter: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(f) = filter {
        return Ok(f);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-guests");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            "passthrough",
        ])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .context("run cargo to build the passthrough guest")?;
    if !status.success() {
        bail!("building the passthrough guest failed");
    }
    Ok(root.join("target/wasm32-wasip1/release/passthrough.wasm"))
}

async fn upstream() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(HostBody::full(Bytes::from_static(COMPLETION.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct WrkResult {
    rps: f64,
    p50: String,
    p99: String,
    errors: String,
}

fn wrk(addr: SocketAddr, conns: u32, duration: u64) -> Result<WrkResult> {
    let out = Command::new("wrk")
        .args(["-t", if conns == 1 { "1" } else { "2" }])
        .args([
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{duration}s"),
            "--latency",
        ])
        .args(["-H", "x-switchyard-cluster: upstream"])
        .arg(format!("http://{addr}/v1/chat/completions"))
        .output()
        .context("run wrk (install it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    let rps = field("Requests/sec:")
        .context("no Requests/sec in wrk output")?
        .parse()?;
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Ok(WrkResult {
        rps,
        p50: field("50%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
        errors,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let filter = passthrough(args.filter.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?;
    let (up, server) = runtime.block_on(async {
        let up = upstream().await?;
        let mut config = RunnerConfig::new(std::fs::read(&filter)?, Vec::new());
        config.clusters = vec![ClusterConfig::new("upstream", up.to_string())];
        config.workers = args.workers;
        let server = host_runner::start(config).await?;
        anyhow::Ok((up, server))
    })?;
    println!(
        "| conns | upstream direct req/s | p50 | p99 | host-runner + passthrough req/s | p50 | p99 | throughput ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &c in &args.conns {
        let direct = wrk(up, c, args.duration)?;
        std::thread::sleep(Duration::from_millis(500));
        let through = wrk(server.listen_addr, c, args.duration)?;
        std::thread::sleep(Duration::from_millis(500));
        println!(
            "| {c} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2}× |",
            direct.rps,
            direct.p50,
            direct.p99,
            through.rps,
            through.p50,
            through.p99,
            through.rps / direct.rps
        );
        for (what, r) in [("direct", &direct), ("host-runner", &through)] {
            if !r.errors.is_empty() {
                eprintln!("  {what} at {c} conns: {}", r.errors);
            }
        }
    }
    server.shutdown();
    Ok(())
}
