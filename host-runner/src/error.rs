//! Typed errors for the library. The binary wraps them in `anyhow` for reporting.

use std::path::PathBuf;

/// Everything that can go wrong while loading, configuring or running the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The wasm file could not be read from disk.
    #[error("cannot read wasm module {path}: {source}")]
    ReadWasm {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A configuration file could not be read from disk.
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        /// Which file (e.g. `plugin config`).
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The wasm bytes are not a valid module, or compilation failed.
    #[error("invalid wasm module: {0}")]
    InvalidWasm(String),
    /// The module does not look like a proxy-wasm 0.2.x filter.
    #[error("not a proxy-wasm ABI 0.2.x module: {0}")]
    NotProxyWasm(String),
    /// Instantiation (linking, start function, `_initialize`) failed.
    #[error("cannot instantiate the wasm module: {0}")]
    Instantiate(String),
    /// `proxy_on_vm_start` returned false.
    #[error("the filter rejected the VM configuration (proxy_on_vm_start returned false)")]
    VmStartRejected,
    /// `proxy_on_configure` returned false: Envoy would refuse the listener, so do we.
    #[error(
        "the filter rejected the plugin configuration (proxy_on_configure returned false); \
         see the filter's log lines above for the reason"
    )]
    ConfigureRejected,
    /// A cluster definition is invalid.
    #[error("invalid cluster configuration: {0}")]
    InvalidCluster(String),
    /// A configuration document could not be parsed.
    #[error("invalid {what}: {message}")]
    InvalidConfig {
        /// Which document (e.g. `cluster config`).
        what: &'static str,
        /// The parser's explanation.
        message: String,
    },
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A worker thread could not be started or died during startup.
    #[error("worker startup failed: {0}")]
    Worker(String),
}

/// Why a call into a VM did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VmError {
    /// The guest trapped; the VM has been replaced by a fresh instance.
    #[error("wasm guest trapped: {0}")]
    Trap(String),
    /// The stream's context belonged to an instance that has since been replaced.
    #[error("the stream's VM instance was replaced after a trap")]
    ContextGone,
    /// No healthy instance is available (re-instantiation after a trap failed).
    #[error("no wasm VM instance available: {0}")]
    Unavailable(String),
    /// The worker thread is gone (shutdown).
    #[error("the VM worker thread stopped")]
    Stopped,
}
