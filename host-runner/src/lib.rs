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

/// The environment variable that makes both hosts write a perf map
/// (`/tmp/perf-<pid>.map`) of the wasm code they compile, so `perf report` names the guest's
/// functions instead of bare JIT addresses. Off unless set to a non-empty value other than
/// `0`: the map costs a file write per compiled function at load and nothing per request.
pub const PERF_MAP_VARIABLE: &str = "HOST_RUNNER_PERF_MAP";

/// Turns on wasmtime's perf map in `cfg` when [`PERF_MAP_VARIABLE`] asks for it.
pub fn profile_if_asked(cfg: &mut wasmtime::Config) {
    let asked = std::env::var(PERF_MAP_VARIABLE).is_ok_and(|v| !v.is_empty() && v != "0");
    if asked {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
}
pub use error::HostError;
pub use proxy::{start, RunningServer};
