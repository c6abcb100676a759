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
//!
//! One module per concern: `server` (listeners, workers, accept loop), `stream` (the
//! per-stream driver and what its phases share), `request` and `response` (the two
//! directions), `local_reply` (filter- and host-made answers), `http_call`
//! (`dispatch_http_call`), `convert` (hyper messages ↔ the filter's header maps).

mod convert;
mod http_call;
mod local_reply;
mod request;
mod response;
mod server;
mod stream;

pub(crate) use http_call::http_call;
pub use server::{start, RunningServer};
pub use stream::StreamReset;

/// The routing header, as in Envoy's `cluster_header` route action.
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// Envoy's per-request upstream timeout header (milliseconds), honoured and not forwarded.
const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

/// Envoy's per-try timeout header (milliseconds): in Envoy it only runs until the response
/// starts, so it bounds a streamed attempt's time to first byte without cutting long streams.
/// Honoured (the shorter of the two wins) and not forwarded.
const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
