//! Outbound HTTP through the host (Spin's outbound HTTP / `wasi:http/outgoing-handler`), with
//! deadlines.
//!
//! Deadlines are enforced here rather than through wasi-http `request-options`, because hosts
//! may ignore those options (they are optional in the WIT) and the fallback chain depends on a
//! stalled deployment being abandoned on time. A deadline is a monotonic-clock pollable
//! registered with spin-sdk's executor, raced against the I/O it bounds; losing the race drops
//! the I/O future, which cancels the outbound request.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use futures::future::{self, Either};
use futures::{Stream, StreamExt};
use spin_executor::CancelOnDropToken;
use spin_sdk::http::{ErrorCode, IncomingResponse, Method, Request, SendError};
use switchyard_core::UpstreamRequest;
use wasi::clocks::monotonic_clock;

/// A point on the host's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(monotonic_clock::Instant);

impl Deadline {
    /// The instant `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Deadline(monotonic_clock::now().saturating_add(ms.saturating_mul(1_000_000)))
    }

    /// Completes once the deadline has passed.
    fn expired(self) -> Expiry {
        Expiry {
            at: self.0,
            registration: None,
        }
    }

    /// Completes once the deadline has passed (a sleep on the host's monotonic clock).
    pub async fn reached(self) {
        self.expired().await
    }

    /// Runs `work` unless the deadline passes first (`None`).
    pub async fn run<F: Future>(self, work: F) -> Option<F::Output> {
        match future::select(pin!(work), pin!(self.expired())).await {
            Either::Left((output, _)) => Some(output),
            Either::Right(((), _)) => None,
        }
    }
}

/// The future of [`Deadline::expired`].
struct Expiry {
    at: monotonic_clock::Instant,
    /// Keeps the clock pollable registered with the executor; dropping it unregisters.
    registration: Option<CancelOnDropToken>,
}

impl Future for Expiry {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if monotonic_clock::now() >= self.at {
            self.registration = None;
            return Poll::Ready(());
        }
        // The executor consumes the pollable when it fires, so register a fresh one on every
        // poll; replacing the token cancels the previous registration.
        let pollable = monotonic_clock::subscribe_instant(self.at);
        self.registration =
            Some(spin_executor::push_waker_and_get_token(pollable, cx.waker().clone()).into());
        Poll::Pending
    }
}

/// Why an attempt got no usable answer, as this host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundFailure {
    /// The deadline passed.
    Timeout,
    /// The host refused the destination (Spin's `allowed_outbound_hosts`).
    Denied(String),
    /// Connection, DNS, TLS or protocol failure before a response head.
    Connection(String),
    /// The connection broke while the body was being read.
    Reset(String),
}

impl OutboundFailure {
    /// Detail for the log (never contains credentials).
    pub fn detail(&self) -> &str {
        match self {
            OutboundFailure::Timeout => "deadline passed",
            OutboundFailure::Denied(d)
            | OutboundFailure::Connection(d)
            | OutboundFailure::Reset(d) => d,
        }
    }

    fn from_send(err: SendError) -> OutboundFailure {
        match err {
            SendError::Http(
                ErrorCode::ConnectionTimeout
                | ErrorCode::ConnectionReadTimeout
                | ErrorCode::ConnectionWriteTimeout
                | ErrorCode::HttpResponseTimeout
                | ErrorCode::DnsTimeout,
            ) => OutboundFailure::Timeout,
            SendError::Http(ErrorCode::HttpRequestDenied) => {
                OutboundFailure::Denied("denied: destination not allowed by the host".into())
            }
            other => OutboundFailure::Connection(other.to_string()),
        }
    }
}

/// Sends `upstream` and waits for the response head until `deadline`.
pub async fn send(
    upstream: &UpstreamRequest,
    deadline: Deadline,
) -> Result<IncomingResponse, OutboundFailure> {
    let url = format!(
        "{}://{}{}",
        upstream.scheme, upstream.authority, upstream.path
    );
    let method = match upstream.method {
        "GET" => Method::Get,
        _ => Method::Post,
    };
    let mut request = Request::new(method, url);
    for (name, value) in &upstream.headers {
        request.set_header(name.as_str(), value.as_str());
    }
    // A declared length rather than chunked transfer: some provider front ends refuse
    // chunked request bodies, and the body is complete anyway.
    if !upstream.body.is_empty() || upstream.method == "POST" {
        request.set_header("content-length", upstream.body.len().to_string());
    }
    *request.body_mut() = upstream.body.clone();
    match deadline
        .run(spin_sdk::http::send::<_, IncomingResponse>(request))
        .await
    {
        None => Err(OutboundFailure::Timeout),
        Some(Ok(response)) => Ok(response),
        Some(Err(err)) => Err(OutboundFailure::from_send(err)),
    }
}

/// A response header, as text.
pub fn response_header(response: &IncomingResponse, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .into_iter()
        .next()
        .and_then(|v| String::from_utf8(v).ok())
}

/// The next chunk of a body: `Ok(None)` at its end.
pub async fn next_chunk<S>(
    body: &mut S,
    deadline: Deadline,
) -> Result<Option<Vec<u8>>, OutboundFailure>
where
    S: Stream<Item = Result<Vec<u8>, wasi::io::error::Error>> + Unpin,
{
    match deadline.run(body.next()).await {
        None => Err(OutboundFailure::Timeout),
        Some(None) => Ok(None),
        Some(Some(Ok(chunk))) => Ok(Some(chunk)),
        Some(Some(Err(err))) => Err(OutboundFailure::Reset(err.to_debug_string())),
    }
}

/// Reads a whole (small, non-streamed) body until `deadline`.
pub async fn read_to_end(
    response: &IncomingResponse,
    deadline: Deadline,
) -> Result<Vec<u8>, OutboundFailure> {
    let mut body = pin!(response.take_body_stream());
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(&mut body, deadline).await? {
        out.extend(chunk);
    }
    Ok(out)
}
