//! `edge-worker`: the Switchyard gateway as a Fermyon Spin HTTP component.
//!
//! A thin adapter over `switchyard-core`, like the Envoy filter: every decision — key check,
//! parsing, routing, translation, usage — is the core's; this crate only performs the I/O the
//! core asks for with Spin's APIs (`wasi:http` in and out, Spin variables for configuration
//! and credentials, Spin key-value for passive health). Built for `wasm32-wasip2` with
//! spin-sdk 5.2, the component targets the `wasi:http/proxy@0.2.0` world plus
//! `fermyon:spin/variables@2.0.0` and `fermyon:spin/key-value@2.0.0`, which released Spin
//! (3.x, 4.x) and `host-runner serve-component` both provide.
//!
//! * [`settings`] — the gateway config (bundled or the `gateway_config` variable) and secrets;
//! * [`exchange`] — one request: the core's exchange driven over wasi-http;
//! * [`control`] — managed keys and usage shipping, when a control plane is configured;
//! * [`counters`] — rate-limit and budget counters in Spin's key-value store;
//! * [`outbound`] — outbound HTTP with deadlines;
//! * [`health`] — the core's health records in Spin's key-value store, shared by all instances;
//! * [`log`] — log lines written whole (usage records must never tear).

pub mod control;
pub mod counters;
pub mod exchange;
pub mod health;
pub mod log;
pub mod outbound;
pub mod settings;

use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;

/// The component's `wasi:http/incoming-handler` export.
#[http_component]
async fn handle(request: IncomingRequest, out: ResponseOutparam) {
    exchange::serve(request, out).await;
}
