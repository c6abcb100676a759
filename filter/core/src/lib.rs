//! Switchyard gateway core: host-agnostic and sans-I/O.
//!
//! Bytes and configuration go in; decisions and bytes come out. Key checks, parsing, routing,
//! schema translation (requests, responses, streams, errors) and usage metering all live here,
//! so the Envoy filter, the Spin component and the host runner are thin adapters that only do
//! I/O. The crate builds for native, `wasm32-wasip1`, `wasm32-wasip2` and
//! `wasm32-unknown-unknown`, and depends on no host SDK.

#![warn(missing_docs)]

pub mod answers;
pub mod attempts;
pub mod canonical;
pub mod catalog;
pub mod config;
pub mod control;
pub mod error;
pub mod exchange;
pub mod fields;
pub mod gateway;
pub mod health;
pub mod ingress;
pub mod json_patch;
pub mod keys;
pub mod limits;
pub mod providers;
pub mod queue;
pub mod relay;
pub mod routing;
pub mod sse;
pub mod stream;
pub mod tasks;
pub mod usage;

pub use config::{ConfigError, GatewayConfig};
pub use error::{Dialect, ErrorKind, GatewayError};
pub use exchange::{Action, Ctx, Ending, Event, Exchange, Failure, UpstreamHead};
pub use gateway::{
    Admitted, Attempt, Endpoint, Gateway, HeadOutcome, LocalReply, Plan, RequestHead,
    UpstreamRequest,
};
pub use stream::ResponseStream;
