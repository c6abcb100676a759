//! The request phase of a stream: the client's body through the filter's request callbacks,
//! then routing and the upstream request, then the wait for the upstream's response head.
//!
//! Everything here ends either with an upstream response to run through
//! `super::response` or with a `Stop` saying how the stream ends instead.

use bytes::Bytes;
use http::Response;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::task::JoinHandle;

use super::convert::upstream_request;
use super::local_reply::text_reply;
use super::stream::{
    client_gone, fetch_signal, send_chunk, still_paused, Dir, Phase, Ready, Release, Stop, Stream,
    CLIENT_GONE,
};
use super::{PER_TRY_TIMEOUT_HEADER, TIMEOUT_HEADER};
use crate::body::{Chunk, ChunkSender, HostBody};
use crate::clusters::UpstreamError;
use crate::vm::Step;

/// An upstream request in flight.
pub(super) struct Upstream {
    body: Option<ChunkSender>,
    response: JoinHandle<Result<Response<Incoming>, UpstreamError>>,
}

impl Stream {
    /// Run the request through the filter and start the upstream request.
    pub(super) async fn request_phase(
        &mut self,
        mut body: Incoming,
        mut eos: bool,
        first: Step,
        first_ready: Option<Ready>,
    ) -> Result<Upstream, Stop> {
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
                paused = still_paused(paused, Dir::Request, phase, &step);
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
                    let (step, ready) = self.on_body(Dir::Request, chunk, eos, upstream.is_some()).await?;
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
    pub(super) async fn await_upstream(
        &mut self,
        mut up: Upstream,
    ) -> Result<Response<Incoming>, Stop> {
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
}

async fn abort_upstream(up: Option<Upstream>) {
    if let Some(up) = up {
        if let Some(tx) = up.body {
            let _ = tx.send(Chunk::Abort("request aborted")).await;
        }
        up.response.abort();
    }
}
