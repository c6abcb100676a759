//! `serve-component`: serves a wasi-http component — the Spin `edge-worker` — the way Spin
//! does, so the edge deployment can be run and tested without Spin.
//!
//! What a released Spin (3.x, 4.x) gives an HTTP component, this host gives too: the
//! `wasi:http/proxy@0.2` world (incoming handler, outbound HTTP, clocks, random, stdio), the
//! rest of WASI 0.2 that Rust's std imports, `fermyon:spin/variables@2.0.0`, answered from
//! `--var` values, and `fermyon:spin/key-value@2.0.0` with the `default` store (what spin.toml's
//! `key_value_stores = ["default"]` grants), kept in memory for as long as the server runs.
//! As in Spin, every request gets a fresh instance of a pre-instantiated component
//! ([`ProxyPre`]) by default: nothing leaks between requests but what the component puts in
//! the key-value store, and instantiation costs microseconds. Like Spin and `wasmtime serve`,
//! `--max-instance-reuse-count` lets one instance serve several requests in turn instead
//! ([`InstanceReuse`]), which saves the instantiation and whatever the component rebuilds in a
//! fresh instance. Outbound HTTP (loopback included)
//! goes through one connection pool the instances share (`--outbound-idle-ms`), optionally
//! limited to `--allow-outbound` origins like Spin's `allowed_outbound_hosts`.
//!
//! One module per concern: `server` (listener, per-request instances, the store data),
//! `outbound` (outbound HTTP and its origin policy), `variables` and `key_value` (Spin's
//! interfaces, over the `bindings` generated from Spin's WIT), `config` (flags and
//! configuration).
//!
//! [`ProxyPre`]: wasmtime_wasi_http::p2::bindings::ProxyPre

use std::net::SocketAddr;
use std::path::PathBuf;

mod bindings;
mod config;
mod key_value;
mod outbound;
mod server;
mod variables;

pub use config::{ComponentConfig, InstanceReuse, ServeComponentArgs};
pub use server::{start_component, RunningComponent};

/// Why the component could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid component (a core module, a WASI 0.3 component, garbage).
    #[error("invalid component {path}: {message}")]
    Invalid {
        /// The path given.
        path: PathBuf,
        /// Wasmtime's explanation.
        message: String,
    },
    /// The component needs something this host does not provide, or does not export
    /// `wasi:http/incoming-handler@0.2.x`.
    #[error("cannot run component {path} as a Spin HTTP component: {message}")]
    Link {
        /// The path given.
        path: PathBuf,
        /// Wasmtime's explanation.
        message: String,
    },
    /// A `--var` or `--env` flag is malformed.
    #[error("invalid {flag} {value:?}: {reason}")]
    InvalidFlag {
        /// The flag (`--var`, `--env`).
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A `--allow-outbound` entry is not an origin.
    #[error("invalid outbound origin {0:?} (expected SCHEME://HOST[:PORT] or *)")]
    InvalidOrigin(String),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine could not be set up.
    #[error("cannot set up wasmtime: {0}")]
    Engine(String),
}
