//! The Spin component (`edge-worker`) under `serve-component`: what it imports and exports,
//! and the gateway behaviour through it against a real loopback OpenAI-compatible upstream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use host_runner::component::{
    start_component, ComponentConfig, ComponentError, InstanceReuse, RunningComponent,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The demo key (`sk-switchyard-demo`) and its hash, as in config/demo.json.
const KEY: &str = "sk-switchyard-demo";
const KEY_SHA256: &str = "37cbfc183c342e976476530bb738059047143238dbbee2003f91b27a3d546483";
/// The credential the upstream demands; the component gets it as a secret Spin variable.
const UPSTREAM_KEY: &str = "upstream-secret";

/// Builds the component once per test binary (release, `wasm32-wasip2`, in edge-worker's own
/// target directory) and returns its path.
fn component_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge-worker");
            let target = dir.join("target");
            // The repo's rust-toolchain.toml lists the target; this covers a toolchain
            // installed before it did (a no-op when present, ignored without rustup).
            let _ = Command::new("rustup")
                .current_dir(&dir)
                .args(["target", "add", "wasm32-wasip2"])
                .output();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&dir)
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .status()
                .expect("run cargo to build edge-worker");
            assert!(status.success(), "building edge-worker failed");
            target.join("wasm32-wasip2/release/edge_worker.wasm")
        })
        .clone()
}

/// Whether a released Spin (3.x/4.x) provides an import: WASI 0.2 (the `wasi:http/proxy`
/// world and the `wasi:cli` imports Rust's std uses), Spin's variables and key-value
/// interfaces, and `wasi:keyvalue` at the draft Spin 3+ serves over the same stores (whose
/// atomics give the limit counters their compare-and-swap).
fn spin_provides(name: &str) -> bool {
    if matches!(
        name,
        "fermyon:spin/variables@2.0.0"
            | "fermyon:spin/key-value@2.0.0"
            | "wasi:keyvalue/store@0.2.0-draft2"
            | "wasi:keyvalue/atomics@0.2.0-draft2"
    ) {
        return true;
    }
    let Some((interface, version)) = name.split_once('@') else {
        return false;
    };
    let known = [
        "wasi:cli/environment",
        "wasi:cli/exit",
        "wasi:cli/stdin",
        "wasi:cli/stdout",
        "wasi:cli/stderr",
        "wasi:cli/terminal-input",
        "wasi:cli/terminal-output",
        "wasi:cli/terminal-stdin",
        "wasi:cli/terminal-stdout",
        "wasi:cli/terminal-stderr",
        "wasi:clocks/monotonic-clock",
        "wasi:clocks/wall-clock",
        "wasi:filesystem/types",
        "wasi:filesystem/preopens",
        "wasi:io/error",
        "wasi:io/poll",
        "wasi:io/streams",
        "wasi:random/random",
        "wasi:random/insecure",
        "wasi:random/insecure-seed",
        "wasi:sockets/network",
        "wasi:sockets/instance-network",
        "wasi:sockets/tcp",
        "wasi:sockets/tcp-create-socket",
        "wasi:sockets/udp",
        "wasi:sockets/udp-create-socket",
        "wasi:sockets/ip-name-lookup",
        "wasi:http/types",
        "wasi:http/outgoing-handler",
    ];
    // Any WASI 0.2.x: Spin's wasmtime links imports by semver-compatible version (0.2), so a
    // component built against 0.2.6 WIT (what spin-sdk 5.2 and Rust's std use) links there.
    let version_ok = version.starts_with("0.2.");
    known.contains(&interface) && version_ok
}

#[test]
fn component_imports_only_what_spin_provides_and_exports_the_http_handler() {
    let engine = Engine::default();
    let component = Component::from_file(&engine, component_wasm()).expect("a valid component");
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(&engine).map(|(n, _)| n.to_string()).collect();
    let foreign: Vec<&String> = imports.iter().filter(|n| !spin_provides(n)).collect();
    assert!(
        foreign.is_empty(),
        "imports Spin does not provide: {foreign:?}"
    );
    for spin in [
        "fermyon:spin/variables@2.0.0",
        "fermyon:spin/key-value@2.0.0",
    ] {
        assert!(imports.iter().any(|n| n == spin), "{imports:?}");
    }
    assert!(
        imports
            .iter()
            .any(|n| n.starts_with("wasi:http/outgoing-handler@0.2.")),
        "{imports:?}"
    );
    let exports: Vec<String> = ty.exports(&engine).map(|(n, _)| n.to_string()).collect();
    assert!(
        exports
            .iter()
            .any(|n| n == "wasi:http/incoming-handler@0.2.0"),
        "{exports:?}"
    );
}

/// An OpenAI-compatible upstream: checks the credential, answers chat completions whole or
/// as an SSE stream sent in separate, spaced writes.
async fn upstream_handler(
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {UPSTREAM_KEY}").as_bytes());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let json = |status: u16, value: serde_json::Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(value.to_string())).boxed())
            .unwrap()
    };
    if !authorized {
        return Ok(json(
            401,
            serde_json::json!({"error": {"message": "bad upstream key", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
        ));
    }
    let model = request["model"].as_str().unwrap_or("?").to_string();
    if request["stream"].as_bool() != Some(true) {
        return Ok(json(
            200,
            serde_json::json!({
                "id": "chatcmpl-test", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from upstream"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            }),
        ));
    }
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let frames = vec![
        chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!({"content": "hel"}),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!({"content": "lo"}),
            serde_json::Value::Null,
        ),
        chunk(serde_json::json!({}), serde_json::json!("stop")),
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
        ),
        "data: [DONE]\n\n".to_string(),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for frame in frames {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if tx.send(Bytes::from(frame)).await.is_err() {
                return;
            }
        }
    });
    Ok(hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .body(ChannelBody(rx).boxed())
        .unwrap())
}

/// A response body fed chunk by chunk from a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

async fn start_upstream() -> SocketAddr {
    start_counting_upstream().await.0
}

/// The upstream, and how many connections it has accepted so far.
async fn start_counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(upstream_handler))
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A loopback port with nothing listening on it.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn gateway_config(live: SocketAddr) -> String {
    serde_json::json!({
        "keys": [{"id": "test", "sha256": KEY_SHA256, "models": ["*"]}],
        "providers": {
            "live": {"kind": "openai", "base_url": format!("http://{live}"), "api_key_secret": "LIVE_API_KEY"},
            "dead": {"kind": "openai", "base_url": format!("http://127.0.0.1:{}", dead_port()), "api_key_secret": "LIVE_API_KEY"},
            "flaky": {"kind": "openai", "base_url": format!("http://127.0.0.1:{}", dead_port()), "api_key_secret": "LIVE_API_KEY"}
        },
        "models": [
            {"name": "chat", "deployments": [{"provider": "live", "model": "up-chat"}]},
            {"name": "fallback", "strategy": "priority", "deployments": [
                {"provider": "dead", "model": "gone"},
                {"provider": "live", "model": "up-chat"}
            ]},
            {"name": "ejecting", "strategy": "priority",
             "fallback": {"eject_after_failures": 1, "cooldown_ms": 60000},
             "deployments": [
                {"provider": "flaky", "model": "gone"},
                {"provider": "live", "model": "up-chat"}
            ]}
        ]
    })
    .to_string()
}

async fn serve(reuse: InstanceReuse) -> RunningComponent {
    serve_with_pool(Some(4), reuse).await
}

async fn serve_with_pool(pooled_instances: Option<u32>, reuse: InstanceReuse) -> RunningComponent {
    let live = start_upstream().await;
    serve_config(
        gateway_config(live),
        pooled_instances,
        Some(OUTBOUND_IDLE),
        reuse,
    )
    .await
}

/// Instances that serve up to `max_requests` requests each, kept idle for up to 10 s.
fn reusing(max_requests: u32) -> InstanceReuse {
    InstanceReuse {
        max_requests,
        idle_timeout: Duration::from_secs(10),
    }
}

/// How long the tests' servers keep an idle outbound connection (as the CLI's default).
const OUTBOUND_IDLE: Duration = Duration::from_millis(30_000);

async fn serve_config(
    gateway_config: String,
    pooled_instances: Option<u32>,
    outbound_idle: Option<Duration>,
    reuse: InstanceReuse,
) -> RunningComponent {
    let variables = HashMap::from([
        ("gateway_config".to_string(), gateway_config),
        ("live_api_key".to_string(), UPSTREAM_KEY.to_string()),
    ]);
    start_component(ComponentConfig {
        component: component_wasm(),
        listen: "127.0.0.1:0".parse().unwrap(),
        variables,
        env: Vec::new(),
        allow_outbound: vec![
            "http://127.0.0.1:*".to_string(),
            "https://127.0.0.1:*".to_string(),
        ],
        pooled_instances,
        outbound_idle,
        reuse,
    })
    .await
    .expect("serve the component")
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    /// Body frames as they arrived.
    chunks: Vec<Bytes>,
}

impl Answer {
    fn text(&self) -> String {
        self.chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text()).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    fn attempts(&self) -> String {
        self.headers
            .get("x-switchyard-attempts")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

async fn post(addr: SocketAddr, key: &str, body: serde_json::Value) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("answer within 30 s")
        .expect("a response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            chunks.push(data);
        }
    }
    Answer {
        status,
        headers,
        chunks,
    }
}

fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_behaviour_through_the_component() {
    let server = gateway_behaviour(InstanceReuse::FRESH).await;
    assert_eq!(server.instantiations(), 7);
}

/// The same behaviour from instances that serve many requests each: what an instance keeps
/// between requests (its parsed config, its key-value handles) changes no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_behaviour_through_reused_instances() {
    let server = gateway_behaviour(reusing(100)).await;
    assert_eq!(server.instantiations(), 1);
}

async fn gateway_behaviour(reuse: InstanceReuse) -> RunningComponent {
    let server = serve(reuse).await;
    let addr = server.listen_addr;
    // With reuse, each request waits for the last one's instance to go idle, so all of them
    // run in the one instance.
    let post = |addr, key, body| {
        let server = &server;
        async move {
            let answer = post(addr, key, body).await;
            if reuse.max_requests > 1 {
                until_idle(server, 1).await;
            }
            answer
        }
    };

    // A chat completion, with the provider credential taken from a secret variable.
    let r = post(addr, KEY, chat("chat", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(
        body["choices"][0]["message"]["content"], "hello from upstream",
        "{body}"
    );
    assert!(
        r.attempts().starts_with("live/up-chat;200;"),
        "{}",
        r.attempts()
    );

    // A streamed completion arrives in several chunks, translated as they pass.
    let r = post(addr, KEY, chat("chat", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        r.headers
    );
    assert!(r.chunks.len() > 1, "one chunk only: {:?}", r.chunks);
    let text = r.text();
    assert!(
        text.contains("\"hel\"") && text.contains("\"lo\""),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // A bad gateway key is refused in the OpenAI dialect.
    let r = post(addr, "sk-wrong", chat("chat", false)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let body = r.json();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");

    // A dead first deployment (connection refused) falls back to the live one, invisibly.
    let r = post(addr, KEY, chat("fallback", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "hello from upstream"
    );
    let attempts = r.attempts();
    assert!(
        attempts.starts_with("dead/gone;connection-failed;")
            && attempts.contains("live/up-chat;200;"),
        "{attempts}"
    );

    // The same, streamed: the failure happens before the first byte, so it is invisible.
    let r = post(addr, KEY, chat("fallback", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().trim_end().ends_with("data: [DONE]"),
        "{}",
        r.text()
    );

    // Passive health outlives the instance: one failure ejects `flaky/gone`
    // (eject_after_failures = 1), and the next request, in a fresh instance, skips it, because
    // the record is in the key-value store every instance shares.
    let r = post(addr, KEY, chat("ejecting", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.attempts().starts_with("flaky/gone;connection-failed;"),
        "{}",
        r.attempts()
    );
    let r = post(addr, KEY, chat("ejecting", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.attempts().starts_with("live/up-chat;200;") && !r.attempts().contains("flaky"),
        "the ejected deployment was tried again: {}",
        r.attempts()
    );
    server
}

/// More requests at once than pooled instances: the extra ones wait for a slot to come back
/// (none fails to instantiate), and a server without a pool answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_instance_pool_wait_for_a_slot() {
    // With reuse an idle instance keeps its slot: a request waiting on the full pool takes
    // that instance instead of waiting for the slot.
    for reuse in [InstanceReuse::FRESH, reusing(3)] {
        let pooled = serve_with_pool(Some(2), reuse).await;
        let addr = pooled.listen_addr;
        let answers =
            futures_join_all((0..16).map(|i| post(addr, KEY, chat("chat", i % 2 == 0)))).await;
        for r in &answers {
            assert_eq!(r.status, 200, "{reuse:?}: {}", r.text());
            assert!(r.text().contains("hel"), "{reuse:?}: {}", r.text());
        }
    }
    let on_demand = serve_with_pool(None, reusing(3)).await;
    let r = post(on_demand.listen_addr, KEY, chat("chat", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "hello from upstream"
    );
}

/// Waits until `n` instances are idle (an instance goes idle just after its answer's last
/// byte, so a client can be faster).
async fn until_idle(server: &RunningComponent, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.idle_instances() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} instances idle, not {n}",
            server.idle_instances()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An instance serves up to `--max-instance-reuse-count` requests, then a fresh one takes
/// over; by default every request gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_up_to_its_reuse_count() {
    for (reuse, expected) in [(InstanceReuse::FRESH, 7), (reusing(3), 3)] {
        let server = serve(reuse).await;
        for i in 0..7 {
            let r = post(server.listen_addr, KEY, chat("chat", i % 2 == 1)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.text().contains("hel"), "{}", r.text());
            // The third request of an instance is its last: it is dropped, not kept.
            let kept = usize::from(reuse.max_requests > 1 && (i + 1) % 3 != 0);
            until_idle(&server, kept).await;
        }
        assert_eq!(server.instantiations(), expected, "{reuse:?}");
    }
}

/// An instance idle for longer than `--idle-instance-timeout-ms` is dropped (its memory and
/// slot freed), and the next request gets a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_dropped_after_its_timeout() {
    // Long enough that the test sees the instance idle before the sweeper (every half
    // timeout) drops it, even on a loaded machine.
    let reuse = InstanceReuse {
        max_requests: 100,
        idle_timeout: Duration::from_secs(2),
    };
    let server = serve(reuse).await;
    let r = post(server.listen_addr, KEY, chat("chat", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    until_idle(&server, 1).await;
    until_idle(&server, 0).await;
    let r = post(server.listen_addr, KEY, chat("chat", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.instantiations(), 2);
}

/// Runs the futures at once and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("request task"));
    }
    out
}

/// Requests from successive instances (each lives for one request) share the server's
/// outbound connections; with pooling off (`--outbound-idle-ms 0`) each opens its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_pooled_outbound_connections() {
    for (idle, expected) in [(Some(OUTBOUND_IDLE), 1), (None, 3)] {
        let (live, accepted) = start_counting_upstream().await;
        let server = serve_config(gateway_config(live), Some(4), idle, InstanceReuse::FRESH).await;
        for stream in [false, true, false] {
            let r = post(server.listen_addr, KEY, chat("chat", stream)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.text().contains("hel"), "{}", r.text());
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            expected,
            "upstream connections for 3 sequential requests, outbound idle {idle:?}"
        );
    }
}

/// An upstream that closes every connection 100 ms after answering on it, without saying so
/// (no `Connection: close`), as a server with a short keep-alive does; counts connections.
async fn start_closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as much body as it announces.
                let body_end = loop {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break head_end + 4 + length;
                    }
                };
                while request.len() < body_end {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let body = serde_json::json!({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 1, "model": "up-chat",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from upstream"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
                })
                .to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// A pooled connection the upstream has closed while it sat idle is not reused: every
/// request after the close gets a fresh connection and its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_not_reused() {
    let (live, accepted) = start_closing_upstream().await;
    let server = serve_config(
        gateway_config(live),
        Some(4),
        Some(OUTBOUND_IDLE),
        InstanceReuse::FRESH,
    )
    .await;
    for _ in 0..3 {
        let r = post(server.listen_addr, KEY, chat("chat", false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.attempts().starts_with("live/up-chat;200;"),
            "{}",
            r.attempts()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// An HTTPS deployment whose server does not speak TLS (a plain HTTP port): the pooled
/// client's handshake fails, the attempt counts as a connection failure and the request
/// falls back to the next deployment, as with wasmtime-wasi-http's own client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_is_a_connection_failure_that_falls_back() {
    let live = start_upstream().await;
    let config = serde_json::json!({
        "keys": [{"id": "test", "sha256": KEY_SHA256, "models": ["*"]}],
        "providers": {
            "not-tls": {"kind": "openai", "base_url": format!("https://{live}"), "api_key_secret": "LIVE_API_KEY"},
            "live": {"kind": "openai", "base_url": format!("http://{live}"), "api_key_secret": "LIVE_API_KEY"}
        },
        "models": [{"name": "chat", "strategy": "priority", "deployments": [
            {"provider": "not-tls", "model": "up-chat"},
            {"provider": "live", "model": "up-chat"}
        ]}]
    })
    .to_string();
    for idle in [Some(OUTBOUND_IDLE), None] {
        let server = serve_config(config.clone(), Some(4), idle, InstanceReuse::FRESH).await;
        let r = post(server.listen_addr, KEY, chat("chat", false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let attempts = r.attempts();
        assert!(
            attempts.starts_with("not-tls/up-chat;connection-failed;")
                && attempts.contains("live/up-chat;200;"),
            "outbound idle {idle:?}: {attempts}"
        );
    }
}

#[tokio::test]
async fn startup_errors_are_typed() {
    let config = |path: PathBuf| ComponentConfig {
        component: path,
        listen: "127.0.0.1:0".parse().unwrap(),
        variables: HashMap::new(),
        env: Vec::new(),
        allow_outbound: Vec::new(),
        pooled_instances: None,
        outbound_idle: None,
        reuse: InstanceReuse::FRESH,
    };
    let missing = start_component(config("/nonexistent/edge_worker.wasm".into())).await;
    assert!(matches!(missing, Err(ComponentError::Read { .. })));
    let garbage = std::env::temp_dir().join(format!("not-a-component-{}.wasm", std::process::id()));
    std::fs::write(&garbage, b"\0asm garbage").unwrap();
    let invalid = start_component(config(garbage.clone())).await;
    let _ = std::fs::remove_file(&garbage);
    assert!(matches!(invalid, Err(ComponentError::Invalid { .. })));
}

#[test]
fn serve_component_help_lists_its_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_host-runner"))
        .args(["serve-component", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--component",
        "--listen",
        "--var",
        "--env",
        "--allow-outbound",
        "--max-instances",
        "--no-pooling",
        "--outbound-idle-ms",
        "--max-instance-reuse-count",
        "--idle-instance-timeout-ms",
    ] {
        assert!(text.contains(flag), "help lacks {flag}:\n{text}");
    }
}

/// A `wasi:http/incoming-handler@0.2.0` component whose handler traps before it answers.
const TRAPPING_COMPONENT: &str = r#"
(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $out))
  (core module $guest
    (func (export "handle") (param i32 i32) unreachable))
  (core instance $guest (instantiate $guest))
  (func $handle (param "request" (own $request)) (param "response-out" (own $out))
    (canon lift (core func $guest "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))
"#;

/// An instance that trapped is dropped, never reused, whatever the reuse count: each
/// request gets a 500 from a fresh instance, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_trapped_is_never_reused() {
    let path = std::env::temp_dir().join(format!("trapping-{}.wat", std::process::id()));
    std::fs::write(&path, TRAPPING_COMPONENT).unwrap();
    let server = start_component(ComponentConfig {
        component: path.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        variables: HashMap::new(),
        env: Vec::new(),
        allow_outbound: Vec::new(),
        pooled_instances: Some(2),
        outbound_idle: None,
        reuse: reusing(100),
    })
    .await
    .expect("serve the trapping component");
    let _ = std::fs::remove_file(&path);
    for _ in 0..3 {
        let r = post(server.listen_addr, KEY, chat("chat", false)).await;
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.text(), "component failed to answer\n");
        assert_eq!(server.idle_instances(), 0);
    }
    assert_eq!(server.instantiations(), 3);
}

/// A request wasi-http cannot carry (HTTP/1.0 without a `Host`: no authority) is answered 500
/// before it reaches the component; the instance leased for it is dropped (its slot freed
/// after it), and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_authority_is_refused_and_serving_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = serve_with_pool(Some(1), reusing(100)).await;
    let r = post(server.listen_addr, KEY, chat("chat", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    until_idle(&server, 1).await;
    let mut stream = tokio::net::TcpStream::connect(server.listen_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /v1/models HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 500"), "{answer}");
    assert_eq!(server.idle_instances(), 0);
    // The one pool slot is free again: the next request gets a fresh instance in it.
    let r = post(server.listen_addr, KEY, chat("chat", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.instantiations(), 2);
}
