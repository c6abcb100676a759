//! The body type the host sends to clients and upstreams.
//!
//! Bodies either are complete (the filter buffered them, so the length is known and a
//! `content-length` can be set) or stream chunk by chunk through a bounded channel from the
//! stream driver, which gives backpressure towards the producer. A streamed body must end
//! with an explicit [`Chunk::End`]: if the driver goes away without it, the body errors so
//! the peer sees an aborted message rather than a silently truncated one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A body that was cut off (client gone, upstream reset, VM trap mid-stream).
#[derive(Debug, thiserror::Error)]
#[error("body aborted: {0}")]
pub struct BodyAborted(pub &'static str);

/// One item of a streamed body.
#[derive(Debug)]
pub enum Chunk {
    /// More of the body.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The body is cut off, for this reason; the peer sees an error, not a clean end.
    Abort(&'static str),
}

/// Sending half of a streamed body.
pub type ChunkSender = mpsc::Sender<Chunk>;

/// A request or response body produced by the host.
#[derive(Debug)]
pub enum HostBody {
    /// A complete body (possibly empty).
    Full(Option<Bytes>),
    /// A body streamed from the driver.
    Stream {
        /// Where the driver's chunks arrive.
        rx: mpsc::Receiver<Chunk>,
        /// Whether the end (or an abort) was seen: nothing more is read after it.
        done: bool,
    },
}

impl HostBody {
    /// A complete body; empty bytes make an empty body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// A streamed body and its sender. The channel is small on purpose: chunks must flow,
    /// not pile up.
    pub fn channel() -> (ChunkSender, Self) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Self::Stream { rx, done: false })
    }
}

impl Body for HostBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        match self.get_mut() {
            HostBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            HostBody::Stream { rx, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                loop {
                    return match rx.poll_recv(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Some(Chunk::Data(b))) if b.is_empty() => continue,
                        Poll::Ready(Some(Chunk::Data(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                        Poll::Ready(Some(Chunk::End)) => {
                            *done = true;
                            Poll::Ready(None)
                        }
                        Poll::Ready(Some(Chunk::Abort(why))) => {
                            *done = true;
                            Poll::Ready(Some(Err(BodyAborted(why))))
                        }
                        Poll::Ready(None) => {
                            *done = true;
                            Poll::Ready(Some(Err(BodyAborted("producer went away"))))
                        }
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            HostBody::Full(b) => b.is_none(),
            HostBody::Stream { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            HostBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            HostBody::Stream { .. } => SizeHint::default(),
        }
    }
}
