//! Shared test fixtures: the purpose-built guests (built for wasm32-wasip1 on first use), a
//! real upstream HTTP server on an ephemeral loopback port, and a small HTTP client.
#![allow(dead_code)] // each test binary uses a different subset

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use host_runner::body::{Chunk, HostBody};
use host_runner::{ClusterConfig, RunnerConfig};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Path of a test guest's `.wasm`, building the guest workspace once per test binary.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-guests");
        let target = root.join("target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip1"])
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run cargo to build the test guests");
        assert!(status.success(), "building the test guests failed");
        target.join("wasm32-wasip1").join("release")
    });
    dir.join(format!("{name}.wasm"))
}

/// A runtime that outlives individual tests, for servers shared by several tests.
pub fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Run a future to completion on the shared runtime, from any context (tests are async
/// themselves, and a runtime cannot block inside another one).
pub fn on_shared_runtime<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || shared_runtime().block_on(fut))
        .join()
        .expect("shared runtime task panicked")
}

/// The upstream used by all tests (on the shared runtime).
pub fn upstream() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| on_shared_runtime(start_upstream()))
}

/// A loopback port with nothing listening on it (connect fails fast).
pub fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

async fn upstream_handler(req: Request<Incoming>) -> Result<Response<HostBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut out = format!("{} {}\n", req.method(), path);
    for (k, v) in req.headers() {
        out.push_str(&format!(
            "{}: {}\n",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let echo = req.headers().get("x-echo").cloned();
    let cl = req
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    // One piece of body, then a stall (2 s of silence, then the end) or a reset (the
    // connection torn down mid-body); `/stream-*` as an event stream, `/plain-*` as text.
    let broken_body = match path.split('?').next().unwrap_or_default() {
        "/stream-stall" | "/plain-stall" => Some((Duration::from_secs(2), Chunk::End)),
        "/stream-reset" | "/plain-reset" => Some((
            Duration::from_millis(50),
            Chunk::Abort("test upstream resets"),
        )),
        _ => None,
    };
    if let Some((pause, last)) = broken_body {
        let (tx, rx) = HostBody::channel();
        tokio::spawn(async move {
            let _ = tx.send(Chunk::Data(Bytes::from("data: one\n\n"))).await;
            tokio::time::sleep(pause).await;
            let _ = tx.send(last).await;
        });
        let content_type = if path.starts_with("/stream") {
            "text/event-stream"
        } else {
            "text/plain"
        };
        return Ok(Response::builder()
            .header("content-type", content_type)
            .body(rx)
            .unwrap());
    }
    if path.contains("/stream") {
        let (tx, rx) = HostBody::channel();
        tokio::spawn(async move {
            for (i, chunk) in ["data: one\n\n", "data: two\n\n", "data: three\n\n"]
                .iter()
                .enumerate()
            {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if tx.send(Chunk::Data(Bytes::from(*chunk))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Chunk::End).await;
        });
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(rx)
            .unwrap());
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if path.starts_with("/callout") {
        let mut b = b"pong:".to_vec();
        b.extend_from_slice(&body);
        let mut resp = Response::builder().status(200);
        if let Some(e) = echo {
            resp = resp.header("x-echo", e);
        }
        return Ok(resp.body(HostBody::full(b)).unwrap());
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return Ok(Response::builder()
            .status(code.parse::<u16>().unwrap())
            .body(HostBody::full("status page"))
            .unwrap());
    }
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(&body));
    Ok(Response::builder()
        .header(
            "x-upstream-content-length",
            cl.unwrap_or_else(|| "none".into()),
        )
        .body(HostBody::full(out))
        .unwrap())
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(upstream_handler))
                    .await;
            });
        }
    });
    addr
}

/// A runner config for the probe guest with the standard clusters:
/// `upstream` (the test upstream), `dead` (refuses connections), `slow` (300 ms timeout),
/// `idle` (200 ms idle timeout between body chunks).
pub fn probe_config(plugin_config: &str) -> RunnerConfig {
    let wasm = std::fs::read(guest("probe")).unwrap();
    let mut config = RunnerConfig::new(wasm, plugin_config.as_bytes().to_vec());
    let up = upstream().to_string();
    let mut slow = ClusterConfig::new("slow", up.clone());
    slow.request_timeout_ms = 300;
    let mut idle = ClusterConfig::new("idle", up.clone());
    idle.idle_timeout_ms = 200;
    let mut dead = ClusterConfig::new("dead", dead_address());
    dead.connect_timeout_ms = 500;
    config.clusters = vec![ClusterConfig::new("upstream", up), dead, slow, idle];
    config.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.vm_config = b"vm-config-bytes".to_vec();
    config
}

/// A server on the shared runtime, for tests that do not disturb each other.
pub fn shared_probe() -> &'static host_runner::RunningServer {
    static SERVER: OnceLock<host_runner::RunningServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let config = probe_config("");
        on_shared_runtime(async move { host_runner::start(config).await })
            .expect("start the shared probe server")
    })
}

/// A response, fully read.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<HttpConnector, HostBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Send a request and read the whole response.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: HostBody,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(body).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// GET with headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", path, headers, HostBody::empty()).await
}

/// Poll `f` until it returns `Some`, for up to five seconds.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met within 5s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
