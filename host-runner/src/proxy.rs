//! The data plane: an HTTP server whose every stream runs through the filter with Envoy's
//! filter-chain semantics, then is routed by `x-switchyard-cluster` to an upstream cluster.
//!
//! Per stream, a *driver* task walks the phases Envoy walks:
//!
//! 1. request headers → `proxy_on_request_headers(eos)`; `Pause` holds the headers;
//! 2. request body chunks → appended to the buffer, `proxy_on_request_body(buffered, eos)`;
//!    `Continue` forwards the buffer (and releases held headers), `Pause` keeps buffering;
//!    `proxy_continue_stream` from another callback (e.g. an HTTP call response) releases too;
//! 3. upstream: headers are read back from the filter at release time (so `:path`,
//!    `:authority`, `:method` rewrites apply), `content-length` is recomputed when the whole
//!    body was buffered and dropped (chunked) when it streams, `x-switchyard-cluster` chooses
//!    and is stripped; unknown cluster 503, connect failure 503, timeout 504 — each a local
//!    reply that, as in Envoy, still passes through the filter's response callbacks;
//! 4. response headers/body the same way in the other direction; with `Continue` every
//!    rewritten chunk is written to the client immediately (SSE is never held back); an
//!    upstream reset after an event stream's head reached the client ends the body for the
//!    filter (`eos`) so it can close the stream well-formed — where Envoy would reset the
//!    client;
//! 5. `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
//!
//! A guest trap fails the stream with 500 (or aborts it if the response already started);
//! the worker replaced the instance, so the next stream is served normally.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::abi::Action;
use crate::body::{Chunk, ChunkSender, HostBody};
use crate::clusters::{Cluster, UpstreamError};
use crate::config::RunnerConfig;
use crate::context::{CallResponse, LocalReply, PendingCall, StreamInfo};
use crate::error::{HostError, VmError};
use crate::headers::Headers;
use crate::vm::{spawn_worker, Plugin, Step, StreamRef, Vm, VmHandle, World};

/// The routing header, as in Envoy's `cluster_header` route action.
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// Connection-level headers that never cross a proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// A started runner. Dropping it (or calling [`RunningServer::shutdown`]) stops it.
pub struct RunningServer {
    /// The bound data-plane address (useful with port 0).
    pub listen_addr: SocketAddr,
    /// The bound admin address, if an admin listener was requested.
    pub admin_addr: Option<SocketAddr>,
    /// Shared state: metrics, shared data, clusters.
    pub world: Arc<World>,
    shutdown: watch::Sender<bool>,
    workers: Vec<VmHandle>,
}

impl RunningServer {
    /// Stop accepting connections and stop the worker threads.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for w in &self.workers {
            w.stop();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Compile the filter, start the workers (each runs `proxy_on_vm_start` and
/// `proxy_on_configure`; a rejected configuration is an error), then bind the listeners.
/// Must be called inside a tokio runtime; I/O runs on that runtime.
pub async fn start(config: RunnerConfig) -> Result<RunningServer, HostError> {
    let workers_n = config.workers.max(1);
    let (listen, admin) = (config.listen, config.admin);
    // Bind first: a busy port is the most common startup error and needs no VM to report.
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| HostError::Bind {
            addr: listen,
            source,
        })?;
    let listen_addr = listener.local_addr().map_err(|source| HostError::Bind {
        addr: listen,
        source,
    })?;
    let admin_listener = match admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| HostError::Bind { addr, source })?,
        ),
        None => None,
    };
    let world = Arc::new(World::new(config, tokio::runtime::Handle::current())?);
    let plugin = {
        let world = world.clone();
        tokio::task::spawn_blocking(move || Plugin::compile(&world.config))
            .await
            .map_err(|e| HostError::Worker(e.to_string()))??
    };
    let plugin = Arc::new(plugin);
    let mut workers = Vec::with_capacity(workers_n);
    for i in 0..workers_n {
        workers.push(spawn_worker(i, plugin.clone(), world.clone()).await?);
    }
    drop(plugin);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let admin_addr = match admin_listener {
        Some(l) => {
            let bound = l.local_addr().ok();
            tokio::spawn(crate::admin::serve(l, world.clone(), shutdown_rx.clone()));
            bound
        }
        None => None,
    };
    tokio::spawn(accept_loop(
        listener,
        workers.clone(),
        world.clone(),
        shutdown_rx,
    ));
    Ok(RunningServer {
        listen_addr,
        admin_addr,
        world,
        shutdown,
        workers,
    })
}

/// Accept connections and pin each to a worker round-robin, as Envoy pins a connection to
/// the worker that accepted it.
async fn accept_loop(
    listener: TcpListener,
    workers: Vec<VmHandle>,
    world: Arc<World>,
    mut shutdown: watch::Receiver<bool>,
) {
    let next = AtomicUsize::new(0);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let vm = workers[next.fetch_add(1, Ordering::Relaxed) % workers.len()].clone();
        let world = world.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                handle(world.clone(), vm.clone(), peer, local, req)
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(error = %e, "downstream connection ended with an error");
            }
        });
    }
}

/// The stream was reset (client gone, `proxy_close_stream`, abort mid-response).
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub struct StreamReset(&'static str);

type HeadSender = oneshot::Sender<Result<Response<HostBody>, StreamReset>>;

async fn handle(
    world: Arc<World>,
    vm: VmHandle,
    peer: SocketAddr,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<HostBody>, StreamReset> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(drive(world, vm, peer, local, req, tx));
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(StreamReset("stream driver ended without a response")),
    }
}

fn plain(status: u16, text: &str) -> Response<HostBody> {
    let body = Bytes::from(format!("{text}\n"));
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("content-length", body.len())
        .body(HostBody::full(body))
        .expect("static response parts are valid")
}

/// The request header map as Envoy presents it to filters.
fn request_header_map(parts: &http::request::Parts) -> Headers {
    let mut h = Headers::new();
    let authority = parts
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
        })
        .unwrap_or_default();
    h.add(b":authority", &authority);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    h.add(b":path", path.as_bytes());
    h.add(b":method", parts.method.as_str().as_bytes());
    h.add(b":scheme", b"http");
    for (k, v) in &parts.headers {
        if k == http::header::HOST || HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        h.add(k.as_str().as_bytes(), v.as_bytes());
    }
    if h.get(b"x-forwarded-proto").is_none() {
        h.add(b"x-forwarded-proto", b"http");
    }
    if h.get(b"x-request-id").is_none() {
        h.add(b"x-request-id", new_request_id().as_bytes());
    }
    h
}

fn new_request_id() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u128;
    let x = nanos ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
    let hex = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The response header map as Envoy presents it: `:status` first.
fn response_header_map(parts: &http::response::Parts) -> Headers {
    let mut h = Headers::new();
    h.add(b":status", parts.status.as_str().as_bytes());
    for (k, v) in &parts.headers {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        h.add(k.as_str().as_bytes(), v.as_bytes());
    }
    h
}

/// Copy regular headers from the filter's map into an http builder's header map.
fn copy_headers(from: &Headers, to: &mut http::HeaderMap, skip: &[&str]) {
    for (k, v) in from.iter() {
        if k.first() == Some(&b':')
            || HOP_BY_HOP.iter().any(|h| h.as_bytes() == k)
            || skip.iter().any(|h| h.as_bytes() == k)
        {
            continue;
        }
        match (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            (Ok(name), Ok(value)) => {
                to.append(name, value);
            }
            _ => tracing::warn!(
                header = %String::from_utf8_lossy(k),
                "dropping a header the filter set that is not valid HTTP"
            ),
        }
    }
}

/// Build the upstream request from the filter's (possibly rewritten) headers.
fn upstream_request(
    headers: &Headers,
    body: HostBody,
    content_length: Option<usize>,
) -> Result<Request<HostBody>, String> {
    let method = headers.get_str(":method").unwrap_or("GET");
    let path = headers.get_str(":path").unwrap_or("/");
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|e| format!("bad :method: {e}"))?)
        .uri(path)
        .body(body)
        .map_err(|e| format!("bad :path {path:?}: {e}"))?;
    copy_headers(
        headers,
        req.headers_mut(),
        &[
            CLUSTER_HEADER,
            TIMEOUT_HEADER,
            PER_TRY_TIMEOUT_HEADER,
            "content-length",
            "host",
        ],
    );
    if let Some(authority) = headers.get(b":authority").filter(|a| !a.is_empty()) {
        let v = HeaderValue::from_bytes(authority).map_err(|e| format!("bad :authority: {e}"))?;
        req.headers_mut().insert(http::header::HOST, v);
    }
    if let Some(n) = content_length {
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, n.into());
    }
    Ok(req)
}

/// Build the downstream response head from the filter's (possibly rewritten) headers.
fn downstream_response(
    headers: &Headers,
    body: HostBody,
    content_length: ContentLength,
) -> Response<HostBody> {
    let status = headers
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let skip: &[&str] = match content_length {
        ContentLength::Keep => &[],
        _ => &["content-length"],
    };
    copy_headers(headers, resp.headers_mut(), skip);
    if let ContentLength::Set(n) = content_length {
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, n.into());
    }
    resp
}

#[derive(Clone, Copy)]
enum ContentLength {
    /// Keep whatever the headers say (bodiless responses: HEAD, 204, 304).
    Keep,
    /// The body is complete: its exact length.
    Set(usize),
    /// The body streams and may be rewritten: no length, chunked framing.
    Remove,
}

/// What ended forwarding in one direction early.
enum Stop {
    /// Answer with a local reply (through the filter's response callbacks).
    Local(LocalReply),
    /// The upstream could not answer (unknown cluster, connect failure, timeout): like
    /// Envoy's router, answer with a host-made error that the filter sees exactly as an
    /// upstream response — it may hold it and answer otherwise (e.g. fall back).
    Upstream(LocalReply),
    /// Reset the stream.
    Reset(&'static str),
    /// The VM failed (trap, or the instance was replaced under this stream).
    Vm(VmError),
}

impl From<VmError> for Stop {
    fn from(e: VmError) -> Self {
        Stop::Vm(e)
    }
}

/// Envoy's per-request upstream timeout header (milliseconds), honoured and not forwarded.
const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

/// Envoy's per-try timeout header (milliseconds): in Envoy it only runs until the response
/// starts, so it bounds a streamed attempt's time to first byte without cutting long streams.
/// Honoured (the shorter of the two wins) and not forwarded.
const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";

/// An upstream body that sent nothing for the cluster's idle timeout.
struct Stalled;

/// `next`, bounded by `idle` when there is one.
async fn idle_bounded<T>(
    idle: Option<std::time::Duration>,
    next: impl std::future::Future<Output = T>,
) -> Result<T, Stalled> {
    match idle {
        Some(limit) => tokio::time::timeout(limit, next).await.map_err(|_| Stalled),
        None => Ok(next.await),
    }
}

/// A host-made reply as an upstream response, for the filter's response callbacks.
fn reply_response(reply: LocalReply) -> Response<http_body_util::Full<Bytes>> {
    let mut resp = Response::new(http_body_util::Full::new(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    copy_headers(&reply.headers, resp.headers_mut(), &[]);
    if !resp.headers().contains_key(http::header::CONTENT_TYPE) {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    resp
}

fn text_reply(status: u16, body: &str) -> LocalReply {
    LocalReply {
        status,
        details: String::new(),
        headers: Headers::new(),
        body: Bytes::from(format!("{body}\n")),
    }
}

/// Resolves when the downstream client is gone.
async fn client_gone(head: &mut Option<HeadSender>, body: &Option<ChunkSender>) {
    match (head, body) {
        (Some(h), _) => h.closed().await,
        (None, Some(b)) => b.closed().await,
        _ => std::future::pending().await,
    }
}

/// The reset reason of a client that went away before its answer was complete.
const CLIENT_GONE: &str = "client went away";

/// Envoy's `response.flags` bit `DC` (downstream connection termination), which the filter
/// reads in `on_log` to tell a client that left from an upstream that failed.
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;

/// Per-stream state of the driver.
struct Stream {
    world: Arc<World>,
    vm: VmHandle,
    s: StreamRef,
    signals: mpsc::UnboundedReceiver<()>,
    head: Option<HeadSender>,
    client_body: Option<ChunkSender>,
    bodiless_response: bool,
    /// The chosen cluster's idle timeout between response body chunks.
    idle_timeout: Option<std::time::Duration>,
    /// Envoy-style response flags for the `response.flags` property.
    response_flags: u64,
}

async fn drive(
    world: Arc<World>,
    vm: VmHandle,
    peer: SocketAddr,
    local: SocketAddr,
    req: Request<Incoming>,
    head: HeadSender,
) {
    let (parts, body) = req.into_parts();
    let headers = request_header_map(&parts);
    let eos = body.is_end_stream();
    let info = StreamInfo {
        downstream: peer,
        local,
        protocol: match parts.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        start: SystemTime::now(),
    };
    let (sig_tx, signals) = mpsc::unbounded_channel();
    let w = world.clone();
    let created = vm
        .with(move |vm| {
            let s = vm.create_stream(info, headers, sig_tx)?;
            let step = vm.on_request_headers(s, eos)?;
            let ready = ready(vm, &w, s, Dir::Request, false, &step, Phase::Headers)?;
            Ok::<_, VmError>((s, step, ready))
        })
        .await
        .and_then(|r| r);
    let (s, step, ready) = match created {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "request failed in the filter");
            let _ = head.send(Ok(plain(500, "wasm filter failed")));
            return;
        }
    };
    let mut stream = Stream {
        world,
        vm: vm.clone(),
        s,
        signals,
        head: Some(head),
        client_body: None,
        bodiless_response: parts.method == Method::HEAD,
        idle_timeout: None,
        response_flags: 0,
    };
    stream.run(body, eos, step, ready).await;
    let flags = stream.response_flags;
    let _ = vm.with(move |vm| vm.finish_stream(s, flags)).await;
}

/// An upstream request in flight.
struct Upstream {
    body: Option<ChunkSender>,
    response: JoinHandle<Result<Response<Incoming>, UpstreamError>>,
}

impl Stream {
    async fn run(&mut self, body: Incoming, eos: bool, step: Step, ready: Option<Ready>) {
        let stop = match self.request_phase(body, eos, step, ready).await {
            Ok(upstream) => match self.await_upstream(upstream).await {
                Ok(resp) => match self.response_phase(resp).await {
                    Ok(()) => return,
                    Err(stop) => stop,
                },
                Err(stop) => stop,
            },
            Err(stop) => stop,
        };
        let stop = match stop {
            Stop::Upstream(reply) => match self.response_phase(reply_response(reply)).await {
                Ok(()) => return,
                // Already answered through the filter once: no second pass.
                Err(Stop::Upstream(reply)) | Err(Stop::Local(reply)) => {
                    return self.local_reply(reply, false).await
                }
                Err(stop) => stop,
            },
            stop => stop,
        };
        match stop {
            Stop::Local(reply) | Stop::Upstream(reply) => self.local_reply(reply, true).await,
            Stop::Reset(why) => self.reset(why).await,
            Stop::Vm(e) => {
                tracing::warn!(error = %e, "stream failed in the filter");
                if self.head.is_some() {
                    self.send_head(plain(500, "wasm filter failed"));
                } else {
                    self.reset("wasm filter failed").await;
                }
            }
        }
    }

    fn send_head(&mut self, resp: Response<HostBody>) {
        if let Some(h) = self.head.take() {
            let _ = h.send(Ok(resp));
        }
    }

    async fn reset(&mut self, why: &'static str) {
        if why == CLIENT_GONE {
            self.response_flags |= DOWNSTREAM_CONNECTION_TERMINATION;
        }
        if let Some(h) = self.head.take() {
            let _ = h.send(Err(StreamReset(why)));
        }
        if let Some(b) = self.client_body.take() {
            let _ = b.send(Chunk::Abort(why)).await;
        }
    }

    /// Run the request through the filter and start the upstream request.
    async fn request_phase(
        &mut self,
        mut body: Incoming,
        mut eos: bool,
        first: Step,
        first_ready: Option<Ready>,
    ) -> Result<Upstream, Stop> {
        let s = self.s;
        let max = self.world.config.max_buffer_bytes;
        let mut upstream: Option<Upstream> = None;
        let mut paused = false;
        let mut buffered = 0usize;
        let mut next = Some((first, Phase::Headers, first_ready));
        loop {
            if let Some((step, phase, ready)) = next.take() {
                if let Some(reply) = step.control.local_reply {
                    abort_upstream(upstream.take()).await;
                    return Err(Stop::Local(reply));
                }
                if step.control.close {
                    abort_upstream(upstream.take()).await;
                    return Err(Stop::Reset("closed by the filter"));
                }
                match phase {
                    Phase::Body => paused = step.action == Action::Pause,
                    Phase::Signal if step.control.continue_request => paused = false,
                    _ => {}
                }
                if let Some(ready) = ready {
                    match (ready, &mut upstream) {
                        (Ready::Request(release), None) => {
                            upstream = Some(self.release_request(eos, release).await?);
                        }
                        (Ready::Chunk(chunk), Some(up)) => {
                            send_chunk(&up.body, Chunk::Data(chunk)).await;
                        }
                        _ => unreachable!("ready() matches the release state"),
                    }
                    buffered = 0;
                    if eos {
                        if let Some(up) = upstream.as_mut() {
                            if let Some(tx) = up.body.take() {
                                let _ = tx.send(Chunk::End).await;
                            }
                        }
                    }
                }
            }
            if let Some(up) = upstream.take_if(|_| eos && !paused) {
                return Ok(up);
            }
            tokio::select! {
                frame = body.frame(), if !eos => {
                    let chunk = match frame {
                        // The body ended without a final data frame (chunked encoding):
                        // deliver an empty end-of-stream chunk, as Envoy does.
                        None => {
                            eos = true;
                            Bytes::new()
                        }
                        Some(Ok(f)) => match f.into_data() {
                            Ok(data) => data,
                            Err(_) => continue, // request trailers are not forwarded
                        },
                        Some(Err(_)) => {
                            abort_upstream(upstream.take()).await;
                            return Err(Stop::Reset("client aborted the request body"));
                        }
                    };
                    eos = eos || body.is_end_stream();
                    buffered += chunk.len();
                    if buffered > max {
                        abort_upstream(upstream.take()).await;
                        return Err(Stop::Local(text_reply(413, "Payload Too Large")));
                    }
                    let (world, released) = (self.world.clone(), upstream.is_some());
                    let (step, ready) = self
                        .vm
                        .with(move |vm| {
                            let step = vm.on_request_body(s, &chunk, eos)?;
                            let ready = ready(vm, &world, s, Dir::Request, released, &step, Phase::Body)?;
                            Ok::<_, VmError>((step, ready))
                        })
                        .await??;
                    next = Some((step, Phase::Body, ready));
                }
                sig = self.signals.recv() => {
                    let want = Some((Dir::Request, upstream.is_some()));
                    let (step, ready) = fetch_signal(sig, &self.vm, &self.world, self.s, want).await?;
                    next = Some((step, Phase::Signal, ready));
                }
                _ = client_gone(&mut self.head, &None) => {
                    abort_upstream(upstream.take()).await;
                    return Err(Stop::Reset(CLIENT_GONE));
                }
            }
        }
    }

    /// Headers are released: read them back from the filter, route, start the upstream
    /// request with whatever body is buffered.
    async fn release_request(&mut self, eos: bool, release: Release) -> Result<Upstream, Stop> {
        let Release {
            headers,
            body,
            cluster,
        } = release;
        let cluster = match cluster {
            Ok(c) => c,
            Err(name) => {
                let err = UpstreamError::UnknownCluster(name);
                tracing::warn!(error = %err, "no route for request");
                let (status, text) = err.local_reply();
                return Err(Stop::Upstream(text_reply(status, text)));
            }
        };
        let had_length = headers.get(b"content-length").is_some();
        let (req_body, tx, length) = if eos {
            let len = body.len();
            let length = (len > 0 || had_length).then_some(len);
            (HostBody::full(body), None, length)
        } else {
            let (tx, rx) = HostBody::channel();
            if !body.is_empty() {
                let _ = tx.send(Chunk::Data(body)).await;
            }
            (rx, Some(tx), None)
        };
        // Like Envoy's router: the filter may bound this request's wait for response headers.
        let header_ms = |name: &str| {
            headers
                .get_str(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms > 0)
        };
        let timeout = match (header_ms(TIMEOUT_HEADER), header_ms(PER_TRY_TIMEOUT_HEADER)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(std::time::Duration::from_millis);
        let req = upstream_request(&headers, req_body, length).map_err(|e| {
            tracing::warn!(error = e, "the filter left an invalid request");
            Stop::Local(text_reply(500, "invalid request after filter"))
        })?;
        self.idle_timeout = cluster.idle_timeout;
        let response = tokio::spawn(async move { cluster.send(req, timeout).await });
        Ok(Upstream { body: tx, response })
    }

    /// Wait for the upstream response headers (or a local reply from the filter meanwhile).
    async fn await_upstream(&mut self, mut up: Upstream) -> Result<Response<Incoming>, Stop> {
        loop {
            tokio::select! {
                r = &mut up.response => {
                    return match r {
                        Ok(Ok(resp)) => Ok(resp),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "upstream request failed");
                            let (status, text) = e.local_reply();
                            Err(Stop::Upstream(text_reply(status, text)))
                        }
                        Err(_) => Err(Stop::Upstream(text_reply(503, "upstream request failed"))),
                    };
                }
                sig = self.signals.recv() => {
                    let (step, _) = fetch_signal(sig, &self.vm, &self.world, self.s, None).await?;
                    if let Some(reply) = step.control.local_reply {
                        up.response.abort();
                        return Err(Stop::Local(reply));
                    }
                    if step.control.close {
                        up.response.abort();
                        return Err(Stop::Reset("closed by the filter"));
                    }
                }
                _ = client_gone(&mut self.head, &None) => {
                    up.response.abort();
                    return Err(Stop::Reset(CLIENT_GONE));
                }
            }
        }
    }

    /// Run the upstream response through the filter to the client, chunk by chunk.
    async fn response_phase<B>(&mut self, resp: Response<B>) -> Result<(), Stop>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
    {
        let s = self.s;
        let max = self.world.config.max_buffer_bytes;
        let (parts, mut body) = resp.into_parts();
        let event_stream = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let bodiless = self.bodiless_response
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        self.bodiless_response = bodiless;
        let mut eos = bodiless || body.is_end_stream();
        let headers = response_header_map(&parts);
        let world = self.world.clone();
        let (first, first_ready) = self
            .vm
            .with(move |vm| {
                let step = vm.on_response_headers(s, headers, eos)?;
                let ready = ready(vm, &world, s, Dir::Response, false, &step, Phase::Headers)?;
                Ok::<_, VmError>((step, ready))
            })
            .await??;
        let mut paused = false;
        let mut buffered = 0usize;
        let mut next = Some((first, Phase::Headers, first_ready));
        loop {
            if let Some((step, phase, ready)) = next.take() {
                if let Some(reply) = step.control.local_reply {
                    if self.head.is_some() {
                        // Replaces the upstream response; not run through the filter again.
                        self.local_reply(reply, false).await;
                        return Ok(());
                    }
                    return Err(Stop::Reset("local reply after the response started"));
                }
                if step.control.close {
                    return Err(Stop::Reset("closed by the filter"));
                }
                match phase {
                    Phase::Body => paused = step.action == Action::Pause,
                    Phase::Signal if step.control.continue_response => paused = false,
                    _ => {}
                }
                if let Some(ready) = ready {
                    match ready {
                        Ready::Response(headers, body) => {
                            self.release_response(eos, headers, body).await;
                        }
                        Ready::Chunk(chunk) => {
                            if !chunk.is_empty()
                                && !send_chunk(&self.client_body, Chunk::Data(chunk)).await
                            {
                                return Err(Stop::Reset(CLIENT_GONE));
                            }
                        }
                        Ready::Request(_) => unreachable!("ready() matches the direction"),
                    }
                    buffered = 0;
                    if eos {
                        if let Some(tx) = self.client_body.take() {
                            let _ = tx.send(Chunk::End).await;
                        }
                    }
                }
            }
            if eos && !paused && self.head.is_none() {
                return Ok(());
            }
            tokio::select! {
                frame = idle_bounded(self.idle_timeout, body.frame()), if !eos => {
                    let chunk = match frame {
                        // Silent past the cluster's idle timeout: like an upstream reset,
                        // except that a response still held from the client becomes a 504.
                        Err(Stalled) if self.head.is_none() && event_stream => {
                            tracing::warn!("upstream stalled mid-body; ending it for the filter");
                            eos = true;
                            Bytes::new()
                        }
                        Err(Stalled) => {
                            return Err(if self.head.is_some() {
                                Stop::Local(text_reply(504, "upstream request timeout"))
                            } else {
                                Stop::Reset("upstream stalled mid-body")
                            });
                        }
                        Ok(frame) => match frame {
                            // The body ended without a final data frame (chunked encoding):
                            // deliver an empty end-of-stream chunk, as Envoy does.
                            None => {
                                eos = true;
                                Bytes::new()
                            }
                            Some(Ok(f)) => match f.into_data() {
                                Ok(data) => data,
                                Err(_) => continue, // response trailers are not forwarded
                            },
                            // Once the client has the head of an event stream, an upstream
                            // reset ends the body for the filter instead of resetting the
                            // client: the filter then closes the stream with an error event in
                            // the caller's dialect. (Deliberately kinder than Envoy, whose router
                            // resets the client here and gives filters no last word.) Any other
                            // body is reset as in Envoy: a clean end would hide the truncation.
                            Some(Err(_)) if self.head.is_none() && event_stream => {
                                tracing::warn!("upstream reset mid-body; ending it for the filter");
                                eos = true;
                                Bytes::new()
                            }
                            Some(Err(_)) => return Err(Stop::Reset("upstream reset the response body")),
                        },
                    };
                    eos = eos || body.is_end_stream();
                    buffered += chunk.len();
                    if buffered > max {
                        return Err(if self.head.is_some() {
                            Stop::Local(text_reply(500, "Internal Server Error"))
                        } else {
                            Stop::Reset("response buffer limit exceeded")
                        });
                    }
                    let (world, released) = (self.world.clone(), self.head.is_none());
                    let (step, ready) = self
                        .vm
                        .with(move |vm| {
                            let step = vm.on_response_body(s, &chunk, eos)?;
                            let ready = ready(vm, &world, s, Dir::Response, released, &step, Phase::Body)?;
                            Ok::<_, VmError>((step, ready))
                        })
                        .await??;
                    next = Some((step, Phase::Body, ready));
                }
                sig = self.signals.recv() => {
                    let want = Some((Dir::Response, self.head.is_none()));
                    let (step, ready) = fetch_signal(sig, &self.vm, &self.world, self.s, want).await?;
                    next = Some((step, Phase::Signal, ready));
                }
                _ = client_gone(&mut self.head, &self.client_body) => {
                    return Err(Stop::Reset(CLIENT_GONE));
                }
            }
        }
    }

    /// Response headers are released: send them (and whatever body is buffered) downstream.
    async fn release_response(&mut self, eos: bool, headers: Headers, body: Bytes) {
        let resp = if self.bodiless_response {
            downstream_response(&headers, HostBody::empty(), ContentLength::Keep)
        } else if eos {
            let len = body.len();
            downstream_response(&headers, HostBody::full(body), ContentLength::Set(len))
        } else {
            let (tx, rx) = HostBody::channel();
            if !body.is_empty() {
                let _ = tx.send(Chunk::Data(body)).await;
            }
            self.client_body = Some(tx);
            downstream_response(&headers, rx, ContentLength::Remove)
        };
        self.send_head(resp);
    }

    /// Answer with a filter-made or host-made reply. With `run_filter`, the reply passes
    /// through the filter's response callbacks first, as Envoy's local replies do.
    async fn local_reply(&mut self, reply: LocalReply, run_filter: bool) {
        if self.head.is_none() {
            self.reset("local reply after the response started").await;
            return;
        }
        let mut headers = Headers::new();
        headers.add(b":status", reply.status.to_string().as_bytes());
        for (k, v) in reply.headers.iter() {
            if k != b":status" {
                headers.add(k, v);
            }
        }
        if !reply.body.is_empty() && headers.get(b"content-type").is_none() {
            headers.add(b"content-type", b"text/plain");
        }
        let (headers, body) = if run_filter {
            let s = self.s;
            let body = reply.body.clone();
            let result = self
                .vm
                .with(move |vm| {
                    let eos = body.is_empty();
                    vm.on_response_headers(s, headers, eos)?;
                    if !eos {
                        vm.on_response_body(s, &body, true)?;
                    }
                    Ok::<_, VmError>((vm.response_headers(s)?, vm.take_response_body(s)?))
                })
                .await
                .and_then(|r| r);
            match result {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "local reply failed in the filter");
                    self.send_head(plain(500, "wasm filter failed"));
                    return;
                }
            }
        } else {
            (headers, reply.body)
        };
        let len = body.len();
        let resp = if self.bodiless_response {
            downstream_response(&headers, HostBody::empty(), ContentLength::Set(len))
        } else {
            downstream_response(&headers, HostBody::full(body), ContentLength::Set(len))
        };
        self.send_head(resp);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    Body,
    Signal,
}

/// Fetch the control state a signal from the VM announces, plus what a `continue_stream`
/// releases (`want`: the direction and whether it was already released).
///
/// Called in a `select!` branch's *handler*, after `signals.recv()` won: the VM job that takes
/// the control state must never be cancelled halfway by another branch, or a reply the filter
/// made (e.g. its fallback answer) would be taken from the VM and dropped.
async fn fetch_signal(
    signal: Option<()>,
    vm: &VmHandle,
    world: &Arc<World>,
    s: StreamRef,
    want: Option<(Dir, bool)>,
) -> Result<(Step, Option<Ready>), Stop> {
    match signal {
        // The sender lives in the stream's context: gone means the instance was replaced.
        None => Err(Stop::Vm(VmError::ContextGone)),
        Some(()) => {
            let world = world.clone();
            Ok(vm
                .with(move |vm| {
                    let step = Step {
                        action: Action::Continue,
                        control: vm.take_control(s)?,
                    };
                    let ready = match want {
                        Some((dir, released)) => {
                            ready(vm, &world, s, dir, released, &step, Phase::Signal)?
                        }
                        None => None,
                    };
                    Ok::<_, VmError>((step, ready))
                })
                .await??)
        }
    }
}

/// A direction of the stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

/// The request as the filter left it when its headers are released, and its cluster.
struct Release {
    headers: Headers,
    body: Bytes,
    cluster: Result<Arc<Cluster>, String>,
}

/// What the driver needs when the filter lets data through. It is collected in the same VM
/// job as the callback that decided it, so passing data on costs no extra round trip.
enum Ready {
    /// Request headers released (with whatever body is buffered).
    Request(Release),
    /// Response headers released (with whatever body is buffered).
    Response(Headers, Bytes),
    /// More body in a direction whose headers are already released.
    Chunk(Bytes),
}

/// Runs on the worker thread right after a callback: if the filter let data through
/// (`Continue`, or `proxy_continue_stream` for signals) and asked for nothing else, take what
/// is to be forwarded.
fn ready(
    vm: &mut Vm,
    world: &World,
    s: StreamRef,
    dir: Dir,
    released: bool,
    step: &Step,
    phase: Phase,
) -> Result<Option<Ready>, VmError> {
    if step.control.local_reply.is_some() || step.control.close {
        return Ok(None);
    }
    let go = match phase {
        Phase::Headers | Phase::Body => step.action == Action::Continue,
        Phase::Signal => match dir {
            Dir::Request => step.control.continue_request,
            Dir::Response => step.control.continue_response,
        },
    };
    if !go {
        return Ok(None);
    }
    Ok(Some(match (dir, released) {
        (Dir::Request, false) => {
            let headers = vm.request_headers(s)?;
            let body = vm.take_request_body(s)?;
            let name = headers.get_str(CLUSTER_HEADER).unwrap_or("").to_string();
            let cluster = world.clusters.get(&name);
            if cluster.is_some() {
                vm.set_cluster(s, &name)?;
            }
            Ready::Request(Release {
                headers,
                body,
                cluster: cluster.ok_or(name),
            })
        }
        (Dir::Request, true) => Ready::Chunk(vm.take_request_body(s)?),
        (Dir::Response, false) => {
            Ready::Response(vm.response_headers(s)?, vm.take_response_body(s)?)
        }
        (Dir::Response, true) => Ready::Chunk(vm.take_response_body(s)?),
    }))
}

/// Send a chunk; false if the receiver is gone.
async fn send_chunk(tx: &Option<ChunkSender>, chunk: Chunk) -> bool {
    match (tx, &chunk) {
        (_, Chunk::Data(b)) if b.is_empty() => true,
        (Some(tx), _) => tx.send(chunk).await.is_ok(),
        (None, _) => false,
    }
}

async fn abort_upstream(up: Option<Upstream>) {
    if let Some(up) = up {
        if let Some(tx) = up.body {
            let _ = tx.send(Chunk::Abort("request aborted")).await;
        }
        up.response.abort();
    }
}

/// Perform an HTTP call dispatched by the guest. `None` is a failed call, which the guest
/// sees as a response without headers, body or trailers (as in Envoy).
pub(crate) async fn http_call(world: &World, call: &PendingCall) -> Option<CallResponse> {
    let cluster = world.clusters.get(&call.cluster)?;
    let length = (!call.body.is_empty()).then_some(call.body.len());
    let req = match upstream_request(&call.headers, HostBody::full(call.body.clone()), length) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = e, "invalid dispatch_http_call request");
            return None;
        }
    };
    let started = tokio::time::Instant::now();
    let resp = match cluster.send(req, Some(call.timeout)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cluster = call.cluster, error = %e, "dispatch_http_call failed");
            return None;
        }
    };
    let (parts, body) = resp.into_parts();
    let remaining = call.timeout.saturating_sub(started.elapsed());
    let collected = match tokio::time::timeout(remaining, body.collect()).await {
        Ok(Ok(c)) => c,
        _ => {
            tracing::warn!(
                cluster = call.cluster,
                "dispatch_http_call response body failed"
            );
            return None;
        }
    };
    let trailers = collected
        .trailers()
        .map(|t| t.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect())
        .unwrap_or_default();
    Some(CallResponse {
        headers: response_header_map(&parts),
        body: collected.to_bytes(),
        trailers,
    })
}
