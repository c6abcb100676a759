//! The response phase of a stream: the upstream's (or a host-made) response through the
//! filter's response callbacks to the client, chunk by chunk, with the cluster's idle timeout
//! between chunks and Envoy's rules for bodies cut short.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::convert::{downstream_response, response_header_map, ContentLength};
use super::local_reply::text_reply;
use super::stream::{
    client_gone, fetch_signal, ready, send_chunk, still_paused, Dir, Phase, Ready, Stop, Stream,
    CLIENT_GONE,
};
use crate::body::{Chunk, HostBody};
use crate::error::VmError;
use crate::headers::Headers;

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

impl Stream {
    /// Run the upstream response through the filter to the client, chunk by chunk.
    pub(super) async fn response_phase<B>(&mut self, resp: Response<B>) -> Result<(), Stop>
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
                paused = still_paused(paused, Dir::Response, phase, &step);
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
                    let released = self.head.is_none();
                    let (step, ready) = self.on_body(Dir::Response, chunk, eos, released).await?;
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
}
