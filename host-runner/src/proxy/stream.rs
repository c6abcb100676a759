//! The per-stream driver: one task per HTTP request that walks Envoy's filter-chain phases
//! (request, upstream, response, end), calling into the stream's VM and performing the I/O
//! the filter's verdicts call for.
//!
//! This module holds what every phase shares — the stream's state, how the filter's verdicts
//! are read back (`ready`, `fetch_signal`), how a stream ends (answer, reset, VM failure)
//! — while the phases themselves live in `super::request` and `super::response`, and
//! local replies in `super::local_reply`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::convert::request_header_map;
use super::local_reply::{plain, reply_response};
use super::CLUSTER_HEADER;
use crate::abi::Action;
use crate::body::{Chunk, ChunkSender, HostBody};
use crate::clusters::Cluster;
use crate::context::{LocalReply, StreamInfo};
use crate::error::VmError;
use crate::headers::Headers;
use crate::vm::{Step, StreamRef, Vm, VmHandle, World};

/// The stream was reset (client gone, `proxy_close_stream`, abort mid-response).
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub struct StreamReset(&'static str);

pub(super) type HeadSender = oneshot::Sender<Result<Response<HostBody>, StreamReset>>;

/// Serve one request: spawn its driver and wait for the response head it sends back.
pub(super) async fn handle(
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

/// What ended forwarding in one direction early.
pub(super) enum Stop {
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

/// Resolves when the downstream client is gone.
pub(super) async fn client_gone(head: &mut Option<HeadSender>, body: &Option<ChunkSender>) {
    match (head, body) {
        (Some(h), _) => h.closed().await,
        (None, Some(b)) => b.closed().await,
        _ => std::future::pending().await,
    }
}

/// The reset reason of a client that went away before its answer was complete.
pub(super) const CLIENT_GONE: &str = "client went away";

/// Envoy's `response.flags` bit `DC` (downstream connection termination), which the filter
/// reads in `on_log` to tell a client that left from an upstream that failed.
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;

/// Per-stream state of the driver.
pub(super) struct Stream {
    pub(super) world: Arc<World>,
    pub(super) vm: VmHandle,
    pub(super) s: StreamRef,
    pub(super) signals: mpsc::UnboundedReceiver<()>,
    pub(super) head: Option<HeadSender>,
    pub(super) client_body: Option<ChunkSender>,
    pub(super) bodiless_response: bool,
    /// The chosen cluster's idle timeout between response body chunks.
    pub(super) idle_timeout: Option<std::time::Duration>,
    /// Envoy-style response flags for the `response.flags` property.
    pub(super) response_flags: u64,
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

    pub(super) fn send_head(&mut self, resp: Response<HostBody>) {
        if let Some(h) = self.head.take() {
            let _ = h.send(Ok(resp));
        }
    }

    /// Append a body chunk in `dir` and run the filter's body callback, collecting in the same
    /// VM job what it lets through (`released`: whether that direction's headers already went).
    pub(super) async fn on_body(
        &self,
        dir: Dir,
        chunk: Bytes,
        eos: bool,
        released: bool,
    ) -> Result<(Step, Option<Ready>), Stop> {
        let (s, world) = (self.s, self.world.clone());
        Ok(self
            .vm
            .with(move |vm| {
                let step = match dir {
                    Dir::Request => vm.on_request_body(s, &chunk, eos)?,
                    Dir::Response => vm.on_response_body(s, &chunk, eos)?,
                };
                let ready = ready(vm, &world, s, dir, released, &step, Phase::Body)?;
                Ok::<_, VmError>((step, ready))
            })
            .await??)
    }

    pub(super) async fn reset(&mut self, why: &'static str) {
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
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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
pub(super) async fn fetch_signal(
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
pub(super) enum Dir {
    Request,
    Response,
}

/// The request as the filter left it when its headers are released, and its cluster.
pub(super) struct Release {
    pub(super) headers: Headers,
    pub(super) body: Bytes,
    pub(super) cluster: Result<Arc<Cluster>, String>,
}

/// What the driver needs when the filter lets data through. It is collected in the same VM
/// job as the callback that decided it, so passing data on costs no extra round trip.
pub(super) enum Ready {
    /// Request headers released (with whatever body is buffered).
    Request(Release),
    /// Response headers released (with whatever body is buffered).
    Response(Headers, Bytes),
    /// More body in a direction whose headers are already released.
    Chunk(Bytes),
}

/// Whether a direction stays paused after `step`: a body callback decides anew (`Pause` keeps
/// buffering), `proxy_continue_stream` for this direction lifts the pause, anything else
/// leaves it as it was.
pub(super) fn still_paused(paused: bool, dir: Dir, phase: Phase, step: &Step) -> bool {
    let continued = match dir {
        Dir::Request => step.control.continue_request,
        Dir::Response => step.control.continue_response,
    };
    match phase {
        Phase::Body => step.action == Action::Pause,
        Phase::Signal if continued => false,
        _ => paused,
    }
}

/// Runs on the worker thread right after a callback: if the filter let data through
/// (`Continue`, or `proxy_continue_stream` for signals) and asked for nothing else, take what
/// is to be forwarded.
pub(super) fn ready(
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
pub(super) async fn send_chunk(tx: &Option<ChunkSender>, chunk: Chunk) -> bool {
    match (tx, &chunk) {
        (_, Chunk::Data(b)) if b.is_empty() => true,
        (Some(tx), _) => tx.send(chunk).await.is_ok(),
        (None, _) => false,
    }
}
