#![warn(missing_docs)]

//! `host-runner`: a native [wasmtime] host that runs a proxy-wasm `filter.wasm` the way
//! Envoy does, and the Spin `edge-worker` component the way Spin does, so the Switchyard
//! gateway can be run and tested locally without Envoy or Spin.
//!
//! The crate is a library with a thin CLI on top (`src/main.rs`), so integration tests can
//! start a real server in-process. One concern per module:
//!
//! * [`abi`] — the proxy-wasm ABI 0.2.1 host functions (what the guest imports);
//! * [`memory`] — bounds-checked access to guest memory and guest allocation;
//! * [`headers`] — header maps and their proxy-wasm wire encoding;
//! * [`vm`] — one VM instance per worker thread: lifecycle, callbacks, trap recovery;
//! * [`shared`] — shared data (with CAS) and shared queues, common to all VMs;
//! * [`metrics`] — guest-defined metrics, rendered as Prometheus text;
//! * [`clusters`] — upstream clusters (name → address, timeouts) and the HTTP client;
//! * [`body`] — the streaming body type used towards clients and upstreams;
//! * [`context`] — per-VM store data and per-stream context state;
//! * [`proxy`] — `serve`: the HTTP server and the per-stream driver (Envoy's filter-chain
//!   semantics);
//! * [`component`] — `serve-component`: a Spin HTTP component over wasi-http, as Spin runs it;
//! * [`admin`] — the admin listener (`/metrics`, `/ready`);
//! * [`listener`] — binding client-facing listeners with a deep accept queue;
//! * [`config`] — the runner configuration;
//! * [`error`] — typed errors.

pub mod abi;
pub mod admin;
pub mod body;
pub mod clusters;
pub mod component;
pub mod config;
pub mod context;
pub mod error;
pub mod headers;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod shared;
pub mod vm;

pub use config::{ClusterConfig, RunnerConfig};
pub use error::HostError;
pub use proxy::{start, RunningServer};
